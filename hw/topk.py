"""Sorted top-K insertion structure: the K largest (key, index) pairs seen, one insert a cycle."""

from __future__ import annotations

from amaranth import Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from model.dre.config import ConfigError


def entry_layout(key_shape, index_bits: int, payload_shape=None) -> data.StructLayout:
    fields = {"valid": 1, "key": key_shape, "index": unsigned(index_bits)}
    if payload_shape is not None:
        fields["payload"] = payload_shape
    return data.StructLayout(fields)


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
            for i in range(k):
                # goes_before is monotone (sorted entries): slot i takes its upper neighbour if
                # the new key also goes before that one, else the new key itself.
                with m.If(goes_before[i]):
                    if i == 0:
                        m.d.sync += e[i].eq(new)
                    else:
                        with m.If(goes_before[i - 1]):
                            m.d.sync += e[i].eq(e[i - 1])
                        with m.Else():
                            m.d.sync += e[i].eq(new)
        with m.Elif(self.shift):
            for i in range(k):
                if i + 1 < k:
                    m.d.sync += e[i].eq(e[i + 1])
                else:
                    m.d.sync += e[i].valid.eq(0)
        return m
