"""UART receiver (8N1) of the board bridge."""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from model.dre.config import ConfigError


class UartRx(wiring.Component):
    """8 data bits, no parity, 1 stop bit, LSB first; ``divisor`` clock cycles per bit.

    Interface
    ---------
    rx : In(1)        the line (idle high); synchronised here by two flip-flops.
    data : Out(8)     the byte received, valid in the cycle ``valid`` is high.
    valid : Out(1)    one cycle per byte with a good stop bit (no backpressure: a consumer
                      that cannot take it at once needs a FIFO).
    error : Out(1)    one cycle when a stop bit is low (framing error; the byte is dropped).

    Timing: a falling edge on the synchronised line starts a byte; the start bit is checked half
    a bit later, each data bit and the stop bit sampled one bit time apart, in their middle.
    ``valid`` comes 9.5 bit times (+ 2 synchroniser cycles) after the start edge.
    """

    def __init__(self, divisor: int):
        if not isinstance(divisor, int) or divisor < 4:
            raise ConfigError(f"UartRx: divisor={divisor!r} must be an integer >= 4")
        self.divisor = divisor
        super().__init__(
            {"rx": wiring.In(1, init=1), "data": Out(8), "valid": Out(1), "error": Out(1)}
        )

    def elaborate(self, platform):
        m = Module()
        s1, line = Signal(init=1), Signal(init=1)
        m.d.sync += [s1.eq(self.rx), line.eq(s1)]
        timer = Signal(range(self.divisor))
        bit = Signal(range(9))
        shift = Signal(8)
        with m.FSM():
            with m.State("IDLE"), m.If(~line):
                m.d.sync += timer.eq(self.divisor // 2 - 1)
                m.next = "START"
            with m.State("START"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                    m.next = "DATA"
                    with m.If(line):  # a glitch, not a start bit
                        m.next = "IDLE"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(bit + 1)]
                    m.d.sync += shift.eq(Cat(shift[1:], line))  # LSB first
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.comb += [self.data.eq(shift), self.valid.eq(line), self.error.eq(~line)]
                    m.next = "IDLE"
        return m
