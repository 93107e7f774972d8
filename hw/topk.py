"""Sorted top-K insertion structure: the K largest (key, index) pairs seen, one insert a cycle."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from model.dre.config import ConfigError


def _gt(a, b):
    """``a > b`` as the sign of ``b - a`` one bit wider (never overflows): on ECP5 the carry
    chain's last sum output, without the overflow logic Yosys puts behind a signed compare."""
    return (b - a)[-1]


def _gt_or_empty(a, b, b_valid):
    """``~b_valid | a > b`` as one carry chain, for signed ``a``, ``b`` of one width ``w``: the
    keys with their sign bits flipped are ordered as unsigned numbers; above them ``a`` gets a 1
    and ``b`` its valid bit, so ``{1, a'} > {v, b'}`` iff ``v = 0`` or ``a > b``; the compare
    is the sign of the difference (:func:`_gt`).  The valid bit is then no LUT behind the
    chain."""
    assert len(b) == len(a)
    return _gt_or_empty_ord(_ordered(a), b, b_valid)


#: The register copies :class:`TopKPipe` can keep of its input key (``key_copies``): each a
#: different (stored polarity, reset value) pair, so that no two are the same flip-flop to
#: Yosys (``opt_merge`` merges flip-flops with the same data input, enable, reset and reset
#: value, ``keep`` attribute or not)
KEY_COPY_VARIANTS = ((False, 0), (True, 0), (False, 1), (True, 1))


def _ordered(a):
    """``a`` (signed) with its sign bit flipped: the same order, as an unsigned number."""
    w = len(a)
    return Cat(a[: w - 1], ~a[w - 1])


def _gt_or_empty_ord(ua, b, b_valid):
    """:func:`_gt_or_empty` with ``a`` given as ``ua = _ordered(a)`` (a register copy)."""
    return (Cat(_ordered(b), b_valid) - Cat(ua, 1))[-1]


def _gt_or_empty_inv(na, b, b_valid):
    """:func:`_gt_or_empty` with ``a`` given as ``na = ~_ordered(a)`` (an inverted register
    copy), as one carry chain of an addition with no inverter in front of it.  With ``x =
    {1, ua}`` and ``y = {v, b'}`` (``w + 1`` bits), ``~x = {0, na}`` and ``y + ~x + 1 = y - x +
    2^(w+1)``; the ``+ 1`` is a 1 below both operands, so ``{1, y} + {1, 0, na, 1} = 2 (y - x)
    + 2^(w+3)``, whose bit ``w + 2`` is 1 exactly when ``y < x``."""
    y = Cat(_ordered(b), b_valid)
    return (Cat(1, y) + Cat(1, na, 0, 1))[len(na) + 2]


def entry_layout(key_shape, index_bits: int, payload_shape=None) -> data.StructLayout:
    fields = {"valid": 1, "key": key_shape, "index": unsigned(index_bits)}
    if payload_shape is not None:
        fields["payload"] = payload_shape
    return data.StructLayout(fields)


def insert_sorted(m: Module, e, goes_before, new) -> None:
    """Insert ``new`` into the sorted slots ``e`` (synchronously).  ``goes_before[i]``: ``new``
    goes before slot ``i``; it is monotone over sorted entries, so slot ``i`` takes its upper
    neighbour if ``new`` also goes before that one, else ``new`` itself."""
    for i in range(len(e)):
        with m.If(goes_before[i]):
            if i == 0:
                m.d.sync += e[i].eq(new)
            else:
                with m.If(goes_before[i - 1]):
                    m.d.sync += e[i].eq(e[i - 1])
                with m.Else():
                    m.d.sync += e[i].eq(new)


def pop_front(m: Module, e) -> None:
    """Drop slot 0 (synchronously): every entry moves up one place, the last becomes empty."""
    for i in range(len(e)):
        if i + 1 < len(e):
            m.d.sync += e[i].eq(e[i + 1])
        else:
            m.d.sync += e[i].valid.eq(0)


class TopK(wiring.Component):
    """The ``k`` largest keys inserted since the last ``clear``, sorted, as a shift register.

    Order: ``entries[0]`` is the largest.  Equal keys keep their insertion order (a new key is
    placed *after* every entry with an equal key): when indices are inserted in increasing order,
    ties are therefore broken towards the lower index.  Once full, a key that is not strictly
    larger than ``entries[k-1]`` is discarded.

    Interface
    ---------
    clear : In(1)     empty the structure (wins over everything else)
    insert : In(1)    insert ``(key, index)`` (one per cycle, any rate)
    key, index : In   the pair to insert
    payload : In      (only with ``payload_shape``) carried along with the pair, not compared
    shift : In(1)     pop ``entries[0]``: every entry moves up one place (do not combine with
                      ``insert``; ``insert`` wins)
    entries : Out(ArrayLayout(entry_layout, k))   the registered contents

    Timing: every operation takes effect at the clock edge; ``entries`` shows it the next cycle.
    Each slot compares the new key with its own entry (``k`` comparators in parallel) and takes
    the new key, its upper neighbour's entry, or keeps its own: no search loop, one insert a
    cycle at any ``k``.
    """

    def __init__(self, k: int, key_shape, index_bits: int, payload_shape=None):
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"TopK: k={k!r} must be an integer >= 1")
        if not isinstance(index_bits, int) or index_bits < 1:
            raise ConfigError(f"TopK: index_bits={index_bits!r} must be an integer >= 1")
        self.k = k
        self.layout = entry_layout(key_shape, index_bits, payload_shape)
        members = {
            "clear": In(1),
            "insert": In(1),
            "key": In(key_shape),
            "index": In(index_bits),
            "shift": In(1),
            "entries": Out(data.ArrayLayout(self.layout, k)),
        }
        if payload_shape is not None:
            members["payload"] = In(payload_shape)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        k, e = self.k, self.entries
        # goes_before[i]: the new key belongs in front of entry i (strictly larger, or i is empty)
        goes_before = Signal(k)
        for i in range(k):
            m.d.comb += goes_before[i].eq(~e[i].valid | (self.key > e[i].key))
        new = Signal(self.layout)
        m.d.comb += [new.valid.eq(1), new.key.eq(self.key), new.index.eq(self.index)]
        if "payload" in self.layout.members:
            m.d.comb += new.payload.eq(self.payload)

        with m.If(self.clear):
            for i in range(k):
                m.d.sync += e[i].valid.eq(0)
        with m.Elif(self.insert):
            insert_sorted(m, e, goes_before, new)
        with m.Elif(self.shift):
            pop_front(m, e)
        return m


class TopKPipe(wiring.Component):
    """:class:`TopK` with the insert split into a compare stage and an insert stage.

    Same ordering rules as :class:`TopK` (``entries[0]`` the largest; a key equal to an entry's
    goes after it; once full, a key not strictly larger than ``entries[k-1]`` is lost), but an
    ``insert`` presented in cycle ``t`` is compared in cycle ``t`` (``k`` comparators against the
    registered entries, one against the insert in flight) and written in cycle ``t+1``: the
    entries show it in cycle ``t+2``.  One insert per cycle, back to back: the compare stage
    applies the insert in the insert stage to its comparisons (slot ``i`` after that insert
    holds its old entry, the inserted pair or the old entry ``i-1``, so its comparison is one
    of the three, chosen by that insert's registered placement), so no comparison reaches
    across two cycles and the insert stage's selects and enables come straight from registers.

    Interface
    ---------
    clear : In(1)     empty the structure and ``overflow`` (immediate; no insert may be in flight)
    insert : In(1)    insert ``(key, index, payload)`` (pipelined, see above)
    key, index, payload : In
    shift : In(1)     pop ``entries[0]`` (immediate; no insert may be in flight: wait for ``busy``)
    entries : Out(ArrayLayout(entry_layout, k))   the registered contents
    busy : Out(1)     an insert is in one of the two stages (``in_reg``: in the input register
                      or one of the two stages; an ``insert`` presented in this cycle is not
                      counted)
    overflow : Out(1) an insert found the structure full (an entry was lost) since ``clear``

    ``in_reg=True`` registers ``insert``, ``key``, ``index`` and ``payload`` first (one more
    cycle: an insert presented in cycle ``t`` is compared in ``t+1`` and shown in ``t+3``),
    in ``key_copies`` copies of the key register (1 to 4, :data:`KEY_COPY_VARIANTS`), each
    feeding the comparators of one group of consecutive slots: the key drives ``k + 1`` carry
    chains, and its route to them, not the chains, was the compare stage's longest delay.
    """

    def __init__(
        self,
        k: int,
        key_shape,
        index_bits: int,
        payload_shape,
        *,
        in_reg: bool = False,
        key_copies: int = 1,
    ):
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"TopKPipe: k={k!r} must be an integer >= 1")
        if not isinstance(index_bits, int) or index_bits < 1:
            raise ConfigError(f"TopKPipe: index_bits={index_bits!r} must be an integer >= 1")
        nv = len(KEY_COPY_VARIANTS)
        if not isinstance(key_copies, int) or not 1 <= key_copies <= nv:
            raise ConfigError(f"TopKPipe: key_copies={key_copies!r} must be an integer 1 .. {nv}")
        if key_copies > 1 and not in_reg:
            raise ConfigError("TopKPipe: key_copies > 1 needs in_reg=True (copies are registers)")
        self.in_reg = bool(in_reg)
        self.key_copies = key_copies
        self.k = k
        self.layout = entry_layout(key_shape, index_bits, payload_shape)
        super().__init__(
            {
                "clear": In(1),
                "insert": In(1),
                "key": In(key_shape),
                "index": In(index_bits),
                "payload": In(payload_shape),
                "shift": In(1),
                "entries": Out(data.ArrayLayout(self.layout, k)),
                "busy": Out(1),
                "overflow": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        k, e = self.k, self.entries
        # compare stage (registered): the new pair and ``gb``, its comparisons with the entries
        # as they will be when it reaches the insert stage, that is with the insert now in that
        # stage already applied: slot ``i`` then holds its old entry, the inserted pair or its
        # upper neighbour's old entry, so its comparison is one of ``key > e[i]``,
        # ``key > new`` or ``key > e[i-1]``, chosen by the insert stage's own (registered) ``gb``.
        # The insert stage's selects and enables are then registers, not logic.
        ins = Signal()
        new = Signal(self.layout)
        gb = Signal(k)  # goes_before: key > entries[i].key or entries[i] empty
        cur = Signal(k)  # against the entries of this cycle
        if self.in_reg:
            # the input register; copy c of the key feeds the compares of slots
            # [c * k / copies, (c + 1) * k / copies) (the last one also ``beats_new``), stored
            # in the sign-flipped order of ``_gt_or_empty`` (the flip is a LUT on the input
            # side), inverted in the odd copies (``_gt_or_empty_inv``)
            i_ins = Signal()
            i_index = Signal.like(self.index, name="i_index")
            i_payload = Signal.like(self.payload, name="i_payload")
            m.d.sync += [
                i_ins.eq(self.insert),
                i_index.eq(self.index),
                i_payload.eq(self.payload),
            ]
            w = len(self.key)
            kin = _ordered(self.key)
            copies = []
            for c in range(self.key_copies):
                inv, ones = KEY_COPY_VARIANTS[c]
                r = Signal(w, init=(1 << w) - 1 if ones else 0, name=f"i_key{c}")
                m.d.sync += r.eq(~kin if inv else kin)
                copies.append((r, inv))

            def gt_copy(c, b, b_valid):
                r, inv = copies[c]
                return (_gt_or_empty_inv if inv else _gt_or_empty_ord)(r, b, b_valid)

            def copy_of(i):
                return min(i * self.key_copies // k, self.key_copies - 1)

            m.d.comb += [cur[i].eq(gt_copy(copy_of(i), e[i].key, e[i].valid)) for i in range(k)]
            # the key itself (for ``new``): the first copy, back in signed form
            in_key = _ordered(copies[0][0])
            beats_new = gt_copy(self.key_copies - 1, new.key, 1)
            in_insert, in_index, in_payload = i_ins, i_index, i_payload
        else:
            m.d.comb += [cur[i].eq(_gt_or_empty(self.key, e[i].key, e[i].valid)) for i in range(k)]
            beats_new = _gt(self.key, new.key)
            in_insert, in_key, in_index, in_payload = (
                self.insert,
                self.key,
                self.index,
                self.payload,
            )
        m.d.sync += ins.eq(0)
        with m.If(in_insert & ~self.clear):
            m.d.sync += [
                ins.eq(1),
                new.valid.eq(1),
                new.key.eq(in_key),
                new.index.eq(in_index),
                new.payload.eq(in_payload),
            ]
            for i in range(k):
                above = beats_new if i == 0 else Mux(gb[i - 1], cur[i - 1], beats_new)
                m.d.sync += gb[i].eq(Mux(ins & gb[i], above, cur[i]))
        m.d.comb += self.busy.eq(ins | (i_ins if self.in_reg else self.insert))

        # ``clear`` only empties the valid bits (the data of an empty slot is never used), so
        # the data bits' enables do not wait for it: ``ins ? gb[i] : shift``
        with m.If(ins):
            with m.If(e[k - 1].valid):
                m.d.sync += self.overflow.eq(1)
            insert_sorted(m, e, gb, new)
        with m.Elif(self.shift):
            pop_front(m, e)
        with m.If(self.clear):  # wins over the above (the later assignment)
            for i in range(k):
                m.d.sync += e[i].valid.eq(0)
            m.d.sync += self.overflow.eq(0)
        return m
