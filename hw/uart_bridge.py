"""UART bridge of the board build: the DRE's register bus and streams over one serial line.

The protocol (``docs/board.md``; the host side is :mod:`host.dre_driver`): every message is one
opcode byte and a fixed number of payload bytes, little endian, payloads padded to whole bytes.

host -> board::

    'W' (0x57) addr:1 data:4     register write
    'R' (0x52) addr:1            register read; answered by an 'R' message
    'K' (0x4B) key:KB            one beat on the DRE's ``keys`` stream
    'Q' (0x51) query:QB          one beat on the DRE's ``queries`` stream

board -> host::

    'R' (0x52) data:4            the word a read returned
    'A' (0x41) assignment:AB     one beat of the DRE's ``assignments`` stream
    'S' (0x53) selection:SB      one beat of the DRE's ``selections`` stream

Any other opcode byte is dropped (the parser waits for the next opcode).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hw.dre_regs import RegisterBusSignature
from hw.uart_rx import UartRx
from hw.uart_tx import UartTx
from model.dre.config import ConfigError

OP_WRITE, OP_READ, OP_KEY, OP_QUERY = 0x57, 0x52, 0x4B, 0x51
OP_ASSIGNMENT, OP_SELECTION = 0x41, 0x53


def payload_bytes(width: int) -> int:
    return (width + 7) // 8


class UartBridge(wiring.Component):
    """Serial line <-> the DRE's ports (:class:`hw.dre.DRE` seen from the host side).

    Parameters: ``key_width``, ``query_width``, ``assignment_width``, ``selection_width``
    (payload bits of the DRE's streams), ``divisor`` (clock cycles per bit), ``rx_depth``
    (bytes the receive FIFO holds while a stream beat waits for ``ready``).

    Interface
    ---------
    rx : In(1), tx : Out(1)
        The serial line, 8N1.
    keys, queries : Out(stream.Signature(width))
        Beats of 'K' / 'Q' messages; the parser waits for ``ready`` (bytes arriving meanwhile
        wait in the receive FIFO; a host must not send more than ``rx_depth`` bytes ahead of
        what the DRE takes, see ``docs/board.md``).
    assignments, selections : In(stream.Signature(width))
        Each beat is sent as an 'A' / 'S' message; register read data ('R') goes first, then
        assignments, then selections, one whole message at a time.
    regs : Out(RegisterBusSignature)
        'W' drives ``w_en`` for one cycle; 'R' drives ``r_en`` and sends ``r_data`` of the
        next cycle.
    overrun : Out(1)
        Sticky: a received byte found the receive FIFO full and was lost.

    Timing: one byte per ``10 * divisor`` cycles each way; the parser takes a byte per cycle.
    """

    def __init__(
        self,
        *,
        key_width: int,
        query_width: int,
        assignment_width: int,
        selection_width: int,
        divisor: int,
        rx_depth: int = 512,
    ):
        for name, v in (
            ("key_width", key_width),
            ("query_width", query_width),
            ("assignment_width", assignment_width),
            ("selection_width", selection_width),
            ("rx_depth", rx_depth),
        ):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"UartBridge: {name}={v!r} must be an integer >= 1")
        if not isinstance(divisor, int) or divisor < 4:
            raise ConfigError(f"UartBridge: divisor={divisor!r} must be an integer >= 4")
        self.divisor, self.rx_depth = divisor, rx_depth
        self.widths = dict(
            key=key_width, query=query_width, assignment=assignment_width, selection=selection_width
        )
        super().__init__(
            {
                "rx": In(1, init=1),
                "tx": Out(1, init=1),
                "keys": Out(stream.Signature(key_width)),
                "queries": Out(stream.Signature(query_width)),
                "assignments": In(stream.Signature(assignment_width)),
                "selections": In(stream.Signature(selection_width)),
                "regs": Out(RegisterBusSignature()),
                "overrun": Out(1),
            }
        )

    def elaborate(self, platform):
        w = self.widths
        m = Module()
        m.submodules.urx = urx = UartRx(self.divisor)
        m.submodules.utx = utx = UartTx(self.divisor)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8, depth=self.rx_depth)
        m.d.comb += [
            urx.rx.eq(self.rx),
            self.tx.eq(utx.tx),
            fifo.w_data.eq(urx.data),
            fifo.w_en.eq(urx.valid),
        ]
        with m.If(urx.valid & ~fifo.w_rdy):
            m.d.sync += self.overrun.eq(1)

        # ---- receive: opcode, payload bytes, then the action --------------------------------
        nbytes = max(5, payload_bytes(w["key"]), payload_bytes(w["query"]))
        buf = Signal(8 * nbytes)  # payload bytes shift in at the top
        op = Signal(8)
        idx = Signal(range(nbytes + 1))
        need = Signal(range(nbytes + 1))
        rd_data = Signal(32)
        rd_pending = Signal()  # read data waits to be sent
        send_rd = Signal()  # the transmitter takes rd_data this cycle

        def field(n, width, at=0):  # a message of n payload bytes is in the top n bytes of buf
            lo = 8 * (nbytes - n + at)
            return buf[lo : lo + width]

        # The stream payloads are the buffer itself, in every cycle (only ``valid`` depends on the
        # state: gating the 2,052 query bits with the state took a LUT4 each).
        m.d.comb += [
            self.keys.payload.eq(field(payload_bytes(w["key"]), w["key"])),
            self.queries.payload.eq(field(payload_bytes(w["query"]), w["query"])),
        ]
        with m.FSM(name="rx"):
            with m.State("OPCODE"):
                m.d.comb += fifo.r_en.eq(1)
                with m.If(fifo.r_rdy):
                    m.d.sync += [op.eq(fifo.r_data), idx.eq(0)]
                    with m.Switch(fifo.r_data):
                        for code, n in (
                            (OP_WRITE, 5),
                            (OP_READ, 1),
                            (OP_KEY, payload_bytes(w["key"])),
                            (OP_QUERY, payload_bytes(w["query"])),
                        ):
                            with m.Case(code):
                                m.d.sync += need.eq(n)
                                m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                m.d.comb += fifo.r_en.eq(1)
                with m.If(fifo.r_rdy):  # a shift register: no per-byte write decoder
                    m.d.sync += [buf.eq(Cat(buf[8:], fifo.r_data)), idx.eq(idx + 1)]
                    with m.If(idx + 1 == need):
                        m.next = "ACT"
            with m.State("ACT"):
                m.d.comb += [
                    self.regs.addr.eq(Mux(op == OP_READ, field(1, 8), field(5, 8))),
                    self.regs.w_data.eq(field(5, 32, at=1)),
                ]
                with m.Switch(op):
                    with m.Case(OP_WRITE):
                        m.d.comb += self.regs.w_en.eq(1)
                        m.next = "OPCODE"
                    with m.Case(OP_READ), m.If(~rd_pending):  # one read in flight at a time
                        m.d.comb += self.regs.r_en.eq(1)
                        m.next = "READ"
                    with m.Case(OP_KEY):
                        m.d.comb += self.keys.valid.eq(1)
                        with m.If(self.keys.ready):
                            m.next = "OPCODE"
                    with m.Case(OP_QUERY):
                        m.d.comb += self.queries.valid.eq(1)
                        with m.If(self.queries.ready):
                            m.next = "OPCODE"
            with m.State("READ"):  # r_data holds the word now
                m.d.sync += [rd_data.eq(self.regs.r_data), rd_pending.eq(1)]
                m.next = "OPCODE"
        with m.If(send_rd):
            m.d.sync += rd_pending.eq(0)

        # ---- transmit: one whole message at a time -----------------------------------------
        obytes = 1 + max(4, payload_bytes(w["assignment"]), payload_bytes(w["selection"]))
        msg = Signal(8 * obytes)
        left = Signal(range(obytes + 1))
        m.d.comb += utx.bytes.payload.eq(msg[:8])
        with m.If(left == 0):
            with m.If(rd_pending):
                m.d.comb += send_rd.eq(1)
                m.d.sync += [msg.eq(OP_READ | (rd_data << 8)), left.eq(5)]
            with m.Elif(self.assignments.valid):
                m.d.comb += self.assignments.ready.eq(1)
                a = Value.cast(self.assignments.payload)
                m.d.sync += [
                    msg.eq(OP_ASSIGNMENT | (a << 8)),
                    left.eq(1 + payload_bytes(w["assignment"])),
                ]
            with m.Elif(self.selections.valid):
                m.d.comb += self.selections.ready.eq(1)
                s = Value.cast(self.selections.payload)
                m.d.sync += [
                    msg.eq(OP_SELECTION | (s << 8)),
                    left.eq(1 + payload_bytes(w["selection"])),
                ]
        with m.Else():
            m.d.comb += utx.bytes.valid.eq(1)
            with m.If(utx.bytes.ready):
                m.d.sync += [msg.eq(msg >> 8), left.eq(left - 1)]
        return m
