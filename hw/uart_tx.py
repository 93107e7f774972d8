"""UART transmitter (8N1) of the board bridge."""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from model.dre.config import ConfigError


class UartTx(wiring.Component):
    """8 data bits, no parity, 1 stop bit, LSB first; ``divisor`` clock cycles per bit.

    Interface
    ---------
    bytes : In(stream.Signature(8))   the bytes to send; one is taken when the line is idle.
    tx : Out(1)                       the line (idle high).

    Timing: a byte taken in cycle ``c`` puts its start bit on ``tx`` from ``c + 1`` for
    ``divisor`` cycles, then 8 data bits and the stop bit; the next byte is taken in the stop
    bit's last cycle, so bytes go back to back (10 bit times each).
    """

    def __init__(self, divisor: int):
        if not isinstance(divisor, int) or divisor < 4:
            raise ConfigError(f"UartTx: divisor={divisor!r} must be an integer >= 4")
        self.divisor = divisor
        super().__init__({"bytes": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        bits = Signal(10, init=0x3FF)  # start, 8 data, stop; shifted out LSB first
        left = Signal(range(11))  # bits still to send, the current one included
        m.d.comb += self.tx.eq(bits[0])
        last = (left <= 1) & (timer == 0)
        m.d.comb += self.bytes.ready.eq((left == 0) | last)
        with m.If(self.bytes.valid & self.bytes.ready):
            m.d.sync += [
                bits.eq(Cat(0, self.bytes.payload, 1)),
                left.eq(10),
                timer.eq(self.divisor - 1),
            ]
        with m.Elif(left != 0):
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [
                    timer.eq(self.divisor - 1),
                    left.eq(left - 1),
                    bits.eq(Cat(bits[1:], 1)),
                ]
        return m
