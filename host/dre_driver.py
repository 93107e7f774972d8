"""Host driver of the board build: speaks the UART bridge protocol (``hw/uart_bridge.py``,
``docs/board.md``) to a DRE on a ULX3S.

The framing (:func:`encode_write`, :func:`encode_read`, :func:`encode_key`,
:func:`encode_queries` (v2), :func:`encode_query` (v1), :class:`Decoder`,
:func:`unpack_token_result` (v2), :func:`unpack_selection` (v1)) is plain Python on bytes and
integers; the stream payloads are packed and unpacked by walking the Amaranth layouts of the DRE's
ports (``hw.layouts``, ``hw.dre.queries_stream_layout`` / ``selections_layout``), so they follow
the RTL.  :class:`DREDriver` puts the framing on any object with ``write(bytes)`` and
``read(n) -> bytes`` (a ``serial.Serial``, or a test double).  ``pyserial`` is imported only by
:meth:`DREDriver.open`, to open a real port.

The bridge is built for one retrieval rule (``python -m hw.board --rule``, default ``v2``); the
driver must be made for the same one (``DREDriver(port, cfg, rule=...)``).

Example (v2, the default)::

    drv = DREDriver.open("/dev/ttyUSB0", DREConfig())
    assert drv.read_reg("ID") == 0x56524558
    drv.program(grid_w=14, grid_h=14, tau_t=230, tau_s=205, budget=256, gain=3951)
    ids = drv.cluster_frame(keys)                    # [(id, status, last), ...] per key
    records, trailer = drv.retrieve_tokens([q0, q1]) # [(id, take), ...], trailer fields
    trailer["flags"]                                 # names of the error flags set, () if none

With ``rule="v1"``: ``records, trailer = drv.retrieve(q)`` gives ``[(index, score), ...]``.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from model.dre.config import ConfigError, DREConfig

OP_WRITE, OP_READ, OP_KEY, OP_QUERY = 0x57, 0x52, 0x4B, 0x51
OP_ASSIGNMENT, OP_SELECTION = 0x41, 0x53
#: retrieval rules a bridge (and so a driver) can be built for; the first is the default
RULES = ("v2", "v1")


class ProtocolError(RuntimeError):
    """The byte stream from the board does not follow the protocol."""


def check_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`RULES`, else :class:`ConfigError` (a ValueError)."""
    if rule not in RULES:
        raise ConfigError(f"rule={rule!r}: choose one of {', '.join(RULES)}")
    return rule


def _nbytes(bits: int) -> int:
    return (bits + 7) // 8


def _integer(v, what: str) -> int:
    """``v`` as an int; floats, bools and other non-integers are a ValueError (never rounded)."""
    if isinstance(v, bool):
        raise ValueError(f"{what} = {v!r} must be an integer, not a bool")
    try:
        return operator.index(v)
    except TypeError:
        raise ValueError(f"{what} = {v!r} must be an integer") from None


def _pack(shape, value, what: str) -> int:
    """``value`` as the bits of ``shape`` (an Amaranth shape or ``data`` layout): struct fields
    from a dict (missing ones are 0), array elements from a sequence of the array's length, each
    placed at its field's offset in the layout.  Out-of-range values raise ValueError."""
    from amaranth import Shape
    from amaranth.lib import data

    if isinstance(shape, data.ArrayLayout):
        n = len(value) if hasattr(value, "__len__") and not isinstance(value, str | bytes) else None
        if n != shape.length:
            got = f"{n} elements" if n is not None else f"a {type(value).__name__}"
            raise ValueError(f"{what} must have {shape.length} elements, got {got}")
        return sum(
            _pack(field.shape, value[i], f"{what}[{i}]") << field.offset for i, field in shape
        )
    if isinstance(shape, data.Layout):
        if not isinstance(value, Mapping):
            raise ValueError(f"{what} must be a dict of its fields, got {value!r}")
        names = {name for name, _ in shape}
        if set(value) - names:
            raise ValueError(f"{what}: no field {sorted(set(value) - names)} in its layout")
        return sum(
            _pack(field.shape, value[name], f"{what}.{name}") << field.offset
            for name, field in shape
            if name in value
        )
    s = Shape.cast(shape)
    v = _integer(value, what)
    lo, hi = (
        (-(1 << (s.width - 1)), (1 << (s.width - 1)) - 1) if s.signed else (0, (1 << s.width) - 1)
    )
    if not lo <= v <= hi:
        sign = "signed" if s.signed else "unsigned"
        raise ValueError(f"{what} = {v} does not fit {s.width} bits {sign} ({lo} .. {hi})")
    return v & ((1 << s.width) - 1)


def _unpack(layout, raw: int) -> dict:
    """Top-level fields of ``layout`` from the integer ``raw``; signed fields sign-extended,
    nested layouts (the error flags) as their raw bits."""
    from amaranth import Shape
    from amaranth.lib import data

    out = {}
    for name, field in layout:
        v = (raw >> field.offset) & ((1 << field.width) - 1)
        shape = field.shape
        if (
            not isinstance(shape, data.Layout)
            and Shape.cast(shape).signed
            and v >> (field.width - 1)
        ):
            v -= 1 << field.width
        out[name] = v
    return out


def _width(layout) -> int:
    from amaranth import Shape

    return Shape.cast(layout).width


@dataclass(frozen=True)
class Widths:
    """Payload bits of the DRE's streams for one configuration and retrieval rule (what the bridge
    is built with)."""

    key: int
    query: int
    assignment: int
    selection: int

    @classmethod
    def of(cls, cfg: DREConfig, rule: str = "v2") -> Widths:
        from hw.cluster_unit import result_layout
        from hw.dre import queries_stream_layout, selections_layout
        from hw.layouts import key_layout

        check_rule(rule)
        return cls(
            key=_width(key_layout(cfg)),
            query=_width(queries_stream_layout(cfg, rule)),
            assignment=_width(result_layout(cfg)),
            selection=_width(selections_layout(cfg, rule)),
        )


def encode_write(addr: int, value: int) -> bytes:
    if not 0 <= addr < 256 or not 0 <= value < 1 << 32:
        raise ValueError(f"write of {value!r} to word {addr!r}: address 0..255, value 32 bits")
    return bytes([OP_WRITE, addr]) + value.to_bytes(4, "little")


def encode_read(addr: int) -> bytes:
    if not 0 <= addr < 256:
        raise ValueError(f"read of word {addr!r}: address 0..255")
    return bytes([OP_READ, addr])


def _vector(cfg: DREConfig, v, what: str) -> list:
    n = len(v) if hasattr(v, "__len__") and not isinstance(v, str | bytes) else None
    if n != cfg.d:
        got = f"{n} elements" if n is not None else f"a {type(v).__name__}"
        raise ValueError(f"{what} must have d = {cfg.d} elements, got {got}")
    return list(v)


def encode_key(cfg: DREConfig, key: Sequence[int]) -> bytes:
    """A 'K' message: one key (``hw.layouts.key_layout``)."""
    from hw.layouts import key_layout

    raw = _pack(key_layout(cfg), _vector(cfg, key, "a key"), "key")
    return bytes([OP_KEY]) + raw.to_bytes(_nbytes(_width(key_layout(cfg))), "little")


def encode_query(cfg: DREConfig, q: Sequence[int]) -> bytes:
    """A v1 'Q' message: one query vector (``hw.layouts.query_layout``)."""
    from hw.layouts import query_layout

    raw = _pack(query_layout(cfg), _vector(cfg, q, "a query"), "query")
    return bytes([OP_QUERY]) + raw.to_bytes(_nbytes(_width(query_layout(cfg))), "little")


def encode_queries(cfg: DREConfig, qs: Sequence[Sequence[int]]) -> bytes:
    """A v2 'Q' message: ``n_q = len(qs)`` query vectors (``1 .. q_max``, each ``d`` signed
    ``bq``-bit integers), padded with zero vectors to ``q_max``, and ``n_q``
    (``hw.layouts.queries_layout``).  Bad input is a ValueError."""
    from hw.layouts import queries_layout

    if isinstance(qs, str | bytes) or not hasattr(qs, "__len__"):
        raise ValueError(f"queries must be a sequence of 1 .. q_max query vectors, got {qs!r}")
    n_q = len(qs)
    if not 1 <= n_q <= cfg.q_max:
        raise ValueError(f"a retrieval has 1 .. q_max = {cfg.q_max} query vectors, got {n_q}")
    vecs = [_vector(cfg, q, f"query {i}") for i, q in enumerate(qs)]
    vecs += [[0] * cfg.d] * (cfg.q_max - n_q)
    layout = queries_layout(cfg)
    raw = _pack(layout, {"q": vecs, "n_q": n_q}, "queries")
    return bytes([OP_QUERY]) + raw.to_bytes(_nbytes(_width(layout)), "little")


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
    from hw.cluster_unit import result_layout

    f = _unpack(result_layout(cfg), raw)
    return f["id"], f["status"], f["last"]


def unpack_selection(cfg: DREConfig, raw: int) -> dict:
    """Fields of a v1 'S' payload (``hw.layouts.select_result_layout``, the v1 selector's beats),
    signed ones sign-extended, ``error`` as its bits (``model.dre.top.ERROR_FLAGS`` order)."""
    from hw.layouts import select_result_layout

    return _unpack(select_result_layout(cfg), raw)


def unpack_token_result(cfg: DREConfig, raw: int) -> dict:
    """Fields of a v2 'S' payload (``hw.layouts.token_result_layout``): ``kind`` (0 record,
    1 trailer), ``id``, ``take``, ``planes_read``, ``cycles``, ``error`` as its bits
    (``hw.layouts.TOKEN_ERROR_LAYOUT`` order, as ``model.dre.top.TOKEN_ERROR_FLAGS``)."""
    from hw.layouts import token_result_layout

    return _unpack(token_result_layout(cfg), raw)


def error_flags(error: int, rule: str = "v2") -> tuple[str, ...]:
    """Names of the flags set in a trailer's ``error`` bits, in bit order."""
    from hw.layouts import SELECT_ERROR_LAYOUT, TOKEN_ERROR_LAYOUT

    layout = TOKEN_ERROR_LAYOUT if check_rule(rule) == "v2" else SELECT_ERROR_LAYOUT
    return tuple(name for name, f in layout if (error >> f.offset) & 1)


class DREDriver:
    """Blocking host API over a byte port (``write(bytes)``, ``read(n) -> bytes``; ``read`` may
    return fewer bytes on a timeout, which raises :class:`TimeoutError` here).  ``rule`` must be
    the one the bridge was built with (``v2`` by default)."""

    def __init__(self, port, cfg: DREConfig, rule: str = "v2"):
        from hw.dre_regs import register_map

        self.port, self.cfg, self.rule = port, cfg, check_rule(rule)
        self.widths = Widths.of(cfg, rule)
        self.regmap = {r.name: r for r in register_map(cfg)}
        self.decoder = Decoder(self.widths)
        self.pending: list[Message] = []

    @classmethod
    def open(
        cls,
        device: str,
        cfg: DREConfig,
        baud: int = 115200,
        timeout: float = 2.0,
        rule: str = "v2",
    ):
        """Open a real serial port (needs ``pyserial``)."""
        try:
            import serial
        except ImportError as exc:
            raise RuntimeError("DREDriver.open needs pyserial: pip install pyserial") from exc
        return cls(serial.Serial(device, baud, timeout=timeout), cfg, rule)

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
    def _reg(self, name: str):
        if name not in self.regmap:
            raise ValueError(f"no register {name!r}; registers: {', '.join(self.regmap)}")
        return self.regmap[name]

    def write_reg(self, name: str, value: int) -> None:
        r = self._reg(name)
        value = _integer(value, name)
        if not 0 <= value < 1 << r.width:
            raise ValueError(f"{name} = {value} does not fit its {r.width} bits")
        for w in range(r.words):
            self.port.write(encode_write(r.addr + w, (value >> (32 * w)) & 0xFFFFFFFF))

    def read_reg(self, name: str) -> int:
        r = self._reg(name)
        value = 0
        for w in range(r.words):  # low word first: it latches the high word
            self.port.write(encode_read(r.addr + w))
            value |= self._next("R").payload << (32 * w)
        return value

    def program(self, **regs: int) -> None:
        """Write registers by lower-case name (``grid_w=14, tau_t=230, budget=256, ...``)."""
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

    def _need(self, rule: str, method: str, other: str) -> None:
        if self.rule != rule:
            raise ValueError(
                f"{method} is the {rule} rule's; this driver (and its bridge) speak {self.rule}: "
                f"use {other}"
            )

    def retrieve_tokens(
        self, queries: Sequence[Sequence[int]]
    ) -> tuple[list[tuple[int, int]], dict]:
        """v2: one retrieval for ``queries`` (``1 .. q_max`` vectors of ``d`` integers) with the
        BUDGET, CTRL and GAIN the registers hold: the ``(id, take)`` records in selection order
        and the trailer (``planes_read``, ``cycles``, ``error`` bits, ``flags``: their names)."""
        self._need("v2", "retrieve_tokens", "retrieve")
        self.port.write(encode_queries(self.cfg, queries))
        return self._records(unpack_token_result, "v2", ("id", "take"))

    def retrieve(self, q: Sequence[int]) -> tuple[list[tuple[int, int]], dict]:
        """v1: one query: the ``(index, score)`` records in selection order and the trailer
        (``planes_read``, ``cycles``, ``error`` bits, ``flags``: their names)."""
        self._need("v1", "retrieve", "retrieve_tokens")
        self.port.write(encode_query(self.cfg, q))
        return self._records(unpack_selection, "v1", ("index", "score"))

    def _records(self, unpack, rule: str, fields: tuple[str, str]):
        """The 'S' beats of one retrieval: its records' two ``fields`` and the trailer."""
        from hw.layouts import Kind

        records = []
        while True:
            beat = unpack(self.cfg, self._next("S").payload)
            if beat["kind"] != Kind.RECORD.value:
                return records, {**beat, "flags": error_flags(beat["error"], rule)}
            records.append((beat[fields[0]], beat[fields[1]]))
