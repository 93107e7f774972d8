"""Host driver of the board build: speaks the UART bridge protocol (``hw/uart_bridge.py``,
``docs/board.md``) to a DRE on a ULX3S.

The framing (:func:`encode_write`, :func:`encode_read`, :func:`encode_key`,
:func:`encode_query`, :class:`Decoder`) is plain Python on bytes and integers; :class:`DREDriver`
puts it on any object with ``write(bytes)`` and ``read(n) -> bytes`` (a ``serial.Serial``, or a
test double).  ``pyserial`` is imported only by :meth:`DREDriver.open`, to open a real port.

Example::

    drv = DREDriver.open("/dev/ttyUSB0", DREConfig())
    assert drv.read_reg("ID") == 0x56524558
    drv.program(grid_w=14, grid_h=14, tau_t=230, tau_s=205)
    ids = drv.cluster_frame(keys)            # [(id, status, last), ...] per key
    records, trailer = drv.retrieve(q)       # [(index, score), ...], trailer fields
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from model.dre.config import DREConfig

OP_WRITE, OP_READ, OP_KEY, OP_QUERY = 0x57, 0x52, 0x4B, 0x51
OP_ASSIGNMENT, OP_SELECTION = 0x41, 0x53


class ProtocolError(RuntimeError):
    """The byte stream from the board does not follow the protocol."""


def _nbytes(bits: int) -> int:
    return (bits + 7) // 8


def _pack_signed(values: Sequence[int], bits: int) -> int:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    out = 0
    for i, v in enumerate(values):
        v = int(v)
        if not lo <= v <= hi:
            raise ValueError(f"element {i} = {v} does not fit {bits} bits signed")
        out |= (v & ((1 << bits) - 1)) << (i * bits)
    return out


@dataclass(frozen=True)
class Widths:
    """Payload bits of the DRE's streams for one configuration (what the bridge is built with)."""

    key: int
    query: int
    assignment: int
    selection: int

    @classmethod
    def of(cls, cfg: DREConfig) -> Widths:
        from amaranth import Shape

        from hw.cluster_unit import result_layout
        from hw.layouts import select_result_layout as selection_layout

        return cls(
            key=cfg.d * cfg.bk,
            query=cfg.d * cfg.bq,
            assignment=Shape.cast(result_layout(cfg)).width,
            selection=Shape.cast(selection_layout(cfg)).width,
        )


def encode_write(addr: int, value: int) -> bytes:
    if not 0 <= addr < 256 or not 0 <= value < 1 << 32:
        raise ValueError(f"write of {value!r} to word {addr!r}: address 0..255, value 32 bits")
    return bytes([OP_WRITE, addr]) + value.to_bytes(4, "little")


def encode_read(addr: int) -> bytes:
    if not 0 <= addr < 256:
        raise ValueError(f"read of word {addr!r}: address 0..255")
    return bytes([OP_READ, addr])


def encode_key(cfg: DREConfig, key: Sequence[int]) -> bytes:
    if len(key) != cfg.d:
        raise ValueError(f"a key has d = {cfg.d} elements, got {len(key)}")
    raw = _pack_signed(key, cfg.bk)
    return bytes([OP_KEY]) + raw.to_bytes(_nbytes(cfg.d * cfg.bk), "little")


def encode_query(cfg: DREConfig, q: Sequence[int]) -> bytes:
    if len(q) != cfg.d:
        raise ValueError(f"a query has d = {cfg.d} elements, got {len(q)}")
    raw = _pack_signed(q, cfg.bq)
    return bytes([OP_QUERY]) + raw.to_bytes(_nbytes(cfg.d * cfg.bq), "little")


@dataclass(frozen=True)
class Message:
    """One message from the board: ``kind`` 'R', 'A' or 'S' and its payload as an integer."""

    kind: str
    payload: int


class Decoder:
    """Splits the board's byte stream into :class:`Message` s (keeps a partial message)."""

    def __init__(self, widths: Widths):
        self.lengths = {
            OP_READ: ("R", 4),
            OP_ASSIGNMENT: ("A", _nbytes(widths.assignment)),
            OP_SELECTION: ("S", _nbytes(widths.selection)),
        }
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self.buf += data
        out = []
        while self.buf:
            op = self.buf[0]
            if op not in self.lengths:
                raise ProtocolError(f"unknown message opcode {op:#04x} from the board")
            kind, n = self.lengths[op]
            if len(self.buf) < 1 + n:
                break
            out.append(Message(kind, int.from_bytes(self.buf[1 : 1 + n], "little")))
            del self.buf[: 1 + n]
        return out


def unpack_assignment(cfg: DREConfig, raw: int) -> tuple[int, int, int]:
    """``(id, status, last)`` of an 'A' payload (``hw.cluster_unit.result_layout``)."""
    id_bits = max(1, (cfg.n_max - 1).bit_length())
    return raw & ((1 << id_bits) - 1), (raw >> id_bits) & 3, (raw >> (id_bits + 2)) & 1


def unpack_selection(cfg: DREConfig, raw: int) -> dict:
    """Fields of an 'S' payload (``hw.layouts.select_result_layout``, the v1 selector's beats),
    signed ones sign-extended."""
    from hw.layouts import select_result_layout as result_layout

    out = {}
    for name, field in result_layout(cfg):
        v = (raw >> field.offset) & ((1 << field.width) - 1)
        shape = field.shape
        if getattr(shape, "signed", False) and v >> (field.width - 1):
            v -= 1 << field.width
        out[name] = v
    return out


class DREDriver:
    """Blocking host API over a byte port (``write(bytes)``, ``read(n) -> bytes``; ``read`` may
    return fewer bytes on a timeout, which raises :class:`TimeoutError` here)."""

    def __init__(self, port, cfg: DREConfig):
        from hw.dre_regs import register_map

        self.port, self.cfg = port, cfg
        self.widths = Widths.of(cfg)
        self.regmap = {r.name: r for r in register_map(cfg)}
        self.decoder = Decoder(self.widths)
        self.pending: list[Message] = []

    @classmethod
    def open(cls, device: str, cfg: DREConfig, baud: int = 115200, timeout: float = 2.0):
        """Open a real serial port (needs ``pyserial``)."""
        try:
            import serial
        except ImportError as exc:
            raise RuntimeError("DREDriver.open needs pyserial: pip install pyserial") from exc
        return cls(serial.Serial(device, baud, timeout=timeout), cfg)

    # ---- messages ----------------------------------------------------------------------------
    def _next(self, kind: str) -> Message:
        while True:
            for i, msg in enumerate(self.pending):
                if msg.kind == kind:
                    return self.pending.pop(i)
            data = self.port.read(1)
            if not data:
                raise TimeoutError(f"no {kind!r} message from the board")
            self.pending += self.decoder.feed(data)

    # ---- registers ---------------------------------------------------------------------------
    def write_reg(self, name: str, value: int) -> None:
        r = self.regmap[name]
        for w in range(r.words):
            self.port.write(encode_write(r.addr + w, (value >> (32 * w)) & 0xFFFFFFFF))

    def read_reg(self, name: str) -> int:
        r = self.regmap[name]
        value = 0
        for w in range(r.words):  # low word first: it latches the high word
            self.port.write(encode_read(r.addr + w))
            value |= self._next("R").payload << (32 * w)
        return value

    def program(self, **regs: int) -> None:
        """Write registers by lower-case name (``grid_w=14, tau_t=230, ...``)."""
        for name, value in regs.items():
            self.write_reg(name.upper(), value)

    # ---- streams -----------------------------------------------------------------------------
    def send_keys(self, keys: Sequence[Sequence[int]]) -> None:
        for k in keys:
            self.port.write(encode_key(self.cfg, k))

    def assignments(self, n: int) -> list[tuple[int, int, int]]:
        return [unpack_assignment(self.cfg, self._next("A").payload) for _ in range(n)]

    def cluster_frame(self, keys: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
        """Send one frame's keys and return their ``(id, status, last)``."""
        self.send_keys(keys)
        return self.assignments(len(keys))

    def retrieve(self, q: Sequence[int]) -> tuple[list[tuple[int, int]], dict]:
        """One query: the ``(index, score)`` records in selection order and the trailer."""
        from hw.layouts import Kind

        self.port.write(encode_query(self.cfg, q))
        records = []
        while True:
            beat = unpack_selection(self.cfg, self._next("S").payload)
            if beat["kind"] != Kind.RECORD.value:
                return records, beat
            records.append((beat["index"], beat["score"]))
