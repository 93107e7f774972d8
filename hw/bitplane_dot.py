"""Bit-plane dot product: a query against one bit-plane of one key, ``lanes`` elements a cycle."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import tree_sum
from model.dre.config import ConfigError


def dot_shape(d: int, bq: int):
    """Signed shape that holds any ``q . plane`` for d lanes of bq bits: |x| <= d * 2^(bq-1)."""
    return signed(bq + d.bit_length())


def tree_depth(n: int) -> int:
    """Levels of :func:`hw.arith.tree_level` that reduce ``n`` terms to one: ``ceil(log2(n))``."""
    return (n - 1).bit_length()


class BitplaneDot(wiring.Component):
    """``q . plane`` for a ``d``-element query and a ``d``-bit plane, ``lanes`` lanes per cycle.

    Each lane is an AND of one plane bit with one ``bq``-bit query element (a mux to zero); the
    ``lanes`` products of the selected lane group go through a balanced adder tree.  There is no
    multiplier.  A dot product over all ``d`` elements takes ``groups = d // lanes`` cycles:

    Interface
    ---------
    q : In(ArrayLayout(signed(bq), d))
        Query; must be held stable while a dot product is under way.
    word : In(d)
        The bit-plane (bit ``i`` multiplies ``q[i]``); held stable for the ``groups`` cycles.
    group : In(range(max(2, groups)))
        Lane group served this cycle: elements ``group*lanes .. group*lanes + lanes - 1``
        (values ``>= groups`` select nothing; 1 bit wide, always 0, when ``groups == 1``).
    en : In(1)
        A group is presented this cycle: the accumulator takes ``total`` at the clock edge.
    first : In(1)
        The group is the first of a dot product: ``total`` ignores the accumulator.
    partial : Out(signed)
        Combinational sum of the current group's lanes.
    total : Out(dot_shape(d, bq))
        Combinational ``(first ? 0 : acc) + partial``.  In the cycle that presents the last group
        (``group == groups-1``) it is the full dot product: latency 0 from the last group,
        throughput one dot product per ``groups`` cycles, back to back.
    """

    def __init__(self, d: int, lanes: int, bq: int):
        for name, v, lo in (("d", d, 1), ("lanes", lanes, 1), ("bq", bq, 2)):
            if not isinstance(v, int) or v < lo:
                raise ConfigError(f"BitplaneDot: {name}={v!r} must be an integer >= {lo}")
        if d % lanes:
            raise ConfigError(f"BitplaneDot: lanes={lanes} must divide d={d}")
        self.d, self.lanes, self.bq = d, lanes, bq
        self.groups = d // lanes
        super().__init__(
            {
                "q": In(data.ArrayLayout(signed(bq), d)),
                "word": In(d),
                "group": In(range(max(2, self.groups))),  # at least 1 bit wide
                "en": In(1),
                "first": In(1),
                "partial": Out(signed(bq + lanes.bit_length())),
                "total": Out(dot_shape(d, bq)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        # Lane-group select: a groups-way mux of `lanes` plane bits and `lanes` query elements.
        bits = Signal(lanes)
        qs = Signal(data.ArrayLayout(signed(self.bq), lanes))
        with m.Switch(self.group):
            for g in range(self.groups):
                with m.Case(g):
                    m.d.comb += bits.eq(self.word[g * lanes : (g + 1) * lanes])
                    m.d.comb += qs.eq(
                        self.q.as_value()[g * lanes * self.bq : (g + 1) * lanes * self.bq]
                    )
        products = [Mux(bits[i], qs[i], 0) for i in range(lanes)]  # AND, no multiplier
        m.d.comb += self.partial.eq(tree_sum(products))

        acc = Signal(dot_shape(self.d, self.bq))
        m.d.comb += self.total.eq(Mux(self.first, 0, acc) + self.partial)
        with m.If(self.en):
            m.d.sync += acc.eq(self.total)
        return m
