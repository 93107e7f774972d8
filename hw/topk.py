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
    w = len(a)
    assert len(b) == w
    x = Cat(a[: w - 1], ~a[w - 1], 1)
    y = Cat(b[: w - 1], ~b[w - 1], b_valid)
    return (y - x)[-1]


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
    busy : Out(1)     an insert is in one of the two stages
    overflow : Out(1) an insert found the structure full (an entry was lost) since ``clear``
    """

    def __init__(self, k: int, key_shape, index_bits: int, payload_shape):
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"TopKPipe: k={k!r} must be an integer >= 1")
        if not isinstance(index_bits, int) or index_bits < 1:
            raise ConfigError(f"TopKPipe: index_bits={index_bits!r} must be an integer >= 1")
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
        m.d.comb += [cur[i].eq(_gt_or_empty(self.key, e[i].key, e[i].valid)) for i in range(k)]
        beats_new = Signal()
        m.d.comb += beats_new.eq(_gt(self.key, new.key))
        m.d.sync += ins.eq(0)
        with m.If(self.insert & ~self.clear):
            m.d.sync += [
                ins.eq(1),
                new.valid.eq(1),
                new.key.eq(self.key),
                new.index.eq(self.index),
                new.payload.eq(self.payload),
            ]
            for i in range(k):
                above = beats_new if i == 0 else Mux(gb[i - 1], cur[i - 1], beats_new)
                m.d.sync += gb[i].eq(Mux(ins & gb[i], above, cur[i]))
        m.d.comb += self.busy.eq(ins | self.insert)

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
