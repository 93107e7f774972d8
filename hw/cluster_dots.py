"""Dot-product pipeline of the clustering unit: five ``k.S`` sums, ``k.k_prev`` and ``|k|^2``."""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import lut_mul, tree_sum
from hw.centroid_table import sum_chunk_layout
from model.dre.cluster import ClusterWidths
from model.dre.config import DREConfig, require_config

#: Sum inputs (read ports of the centroid table) of the pipeline.
N_SUMS = 5


def key_sum_terms(k, s, lanes: int) -> list:
    """The DSP products of ``sum_l k[l] * s[l]`` over ``lanes`` key and sum elements (both
    signed), each fitting one 18 x 18 signed multiplier.  For sums of 18 bits or fewer they are
    the whole products.  For wider sums, ``s = s_hi 2^18 + s_lo`` with ``s_lo = s[0:18]``
    unsigned, and ``s_lo - 2^17`` is ``s[0:18]`` with bit 17 inverted, read as signed 18 bits;
    so ``k s = k (s_lo - 2^17) + 2^18 k s_hi + 2^17 k``: the products returned are
    ``k (s_lo - 2^17)``; ``k s_hi`` is summed over the lanes bit-sliced in LUTs
    (:func:`high_slices`, :func:`high_sum`), and ``2^17 sum(k)``, the same for every sum, is
    added once (in the accumulate stage's adder tree).  Written as one product per lane, a
    synthesis tool spends two DSP blocks on every ``bk x (bk + count_bits)`` product."""
    if len(Value.cast(s[0])) <= 18:
        return [k[l] * s[l] for l in range(lanes)]
    return [k[l] * offset_low(s[l]) for l in range(lanes)]


def high_slices(k, s, lanes: int) -> list[list]:
    """``sum_l k[l] s_hi[l]`` (``s_hi = s[18:]``, signed) bit-sliced over the lanes: slice ``j``
    is the list ``[s_hi[l][j] ? k[l] : 0 for l]``; the sum is :func:`high_sum` of the slices'
    sums (``sum_l k[l] s_hi[l]`` with narrow adders: each slice is summed at ``bk`` bits and
    shifted once)."""
    n = len(Value.cast(s[0])) - 18
    return [[Mux(Value.cast(s[l])[18 + j], k[l], 0) for l in range(lanes)] for j in range(n)]


def high_terms(slice_sums: list) -> list:
    """``sum_j w_j 2^j slice_sums[j]`` (``w_j = -1`` for the top (sign) bit, else 1) as a list of
    terms to add, with no negation: ``-t = ~t + 1``, so the top slice is ``~t`` and the ``+1``
    a constant term ``2^(n-1)``."""
    n = len(slice_sums)
    terms = [t << j for j, t in enumerate(slice_sums[:-1])]
    return [*terms, (~slice_sums[-1]) << (n - 1), Const(1 << (n - 1))]


def high_sum(slice_sums: list) -> Value:
    """``sum_j w_j 2^j slice_sums[j]``, ``w_j = -1`` for the top (sign) bit, else 1."""
    return tree_sum(high_terms(slice_sums))


def offset_low(s) -> Value:
    """``s[0:18] - 2^17`` (``s[0:18]`` unsigned) as a signed 18-bit value: bit 17 inverted."""
    s = Value.cast(s)
    return Cat(s[:17], ~s[17]).as_signed()


def lut_square(k) -> Value:
    """``k * k`` of a signed ``k`` in LUTs, as the partial products of a squarer: with
    ``x = |k|`` (unsigned), ``x^2 = sum_i x_i 4^i + sum_{i<j} x_i x_j 2^(i+j+1)``, i.e. row ``i`` is
    ``x_i ? 4^i (1 + 4 (x >> (i + 1))) : 0``; about half the bits of the ``lut_mul(k, k)`` rows."""
    k = Value.cast(k)
    x = Mux(k < 0, -k, k)[: len(k)].as_unsigned()  # |k| <= 2^(bk-1) fits bk unsigned bits
    n = len(x)
    rows = [Mux(x[i], Cat(Const(1, 2), x[i + 1 :]) << (2 * i), 0) for i in range(n)]
    return tree_sum(rows)


def offset_sum(terms: list, width: int) -> Value:
    """``sum(terms) mod 2^width`` (unsigned, ``width`` bits) with no sign extension: a signed term
    ``t`` of ``w`` bits enters as ``t + 2^(w-1)`` (``t`` with its top bit inverted, read as
    unsigned) and the offsets are subtracted once, as one constant term.  Equal to the signed sum
    read as ``signed(width)`` whenever that sum fits ``width`` bits.

    Why: Yosys merges an adder tree into one ``$macc`` cell and maps it (``maccmap``) to a
    carry-save tree of full adders in LUTs, extending every signed operand to the output width
    first; each sign-extension bit costs a full adder (two LUTs and six input pins).  With
    unsigned operands only the operands' own bits (and the constant's ones) enter the tree."""
    ops, offset = [], 0
    for t in terms:
        t = Value.cast(t)
        w = len(t)
        if t.shape().signed and w > 0:
            ops.append(Cat(t[: w - 1], ~t[w - 1]))
            offset += 1 << (w - 1)
        else:
            ops.append(t)
    const = -offset % (1 << width)
    if const:
        ops.append(Const(const, width))
    return tree_sum(ops)[:width]


def tree_levels(terms: list, levels: int) -> list:
    """``levels`` levels of a balanced adder tree (as :func:`hw.arith.tree_sum`): the partial
    sums, ``ceil(len / 2^levels)`` of them, for a pipeline register between levels."""
    terms = list(terms)
    for _ in range(levels):
        if len(terms) <= 1:
            break
        pairs = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        terms = pairs + ([terms[-1]] if len(terms) % 2 else [])
    return terms


def key_layout(cfg: DREConfig) -> data.ArrayLayout:
    """``d`` signed key elements: one token's key."""
    return data.ArrayLayout(signed(cfg.bk), cfg.d)


def key_chunk_layout(cfg: DREConfig) -> data.ArrayLayout:
    """``cl_lanes`` signed key elements: one chunk of a key."""
    return data.ArrayLayout(signed(cfg.bk), cfg.cl_lanes)


def _slice_sum(terms: list) -> Value:
    """``tree_sum(terms)`` of signed terms (same width and value), summed by :func:`offset_sum`."""
    width = len(tree_sum(terms))
    return offset_sum(terms, width).as_signed()


class ClusterDots(wiring.Component):
    """The dot products of one token, one chunk of ``cl_lanes`` elements per cycle: ``k.S_i`` for
    the ``N_SUMS = 5`` sums read from the centroid table, ``k.k_prev`` (the key of the token
    before) and ``|k|^2``, accumulated over the ``G = d / cl_lanes`` chunks of the token.

    Interface
    ---------
    en, first, last : In(1)
        A chunk is presented in this cycle (``D``); it is the token's first / last chunk.
    tag : In(1)
        Carried with the chunk to ``done_tag`` (the unit's bank of the token).
    key, key_prev : In(ArrayLayout(signed(bk), cl_lanes))
        The chunk of the token's key and of the key of the token before (for ``k.k_prev``).
    sums : In(ArrayLayout(signed(sum), cl_lanes)) x 5, hit : In(5), fwd : In(ArrayLayout)
        The chunk of each sum: the table's raw read data of this cycle, replaced by ``fwd`` where
        ``hit[i]`` (the row was written in the read's address cycle,
        :class:`hw.centroid_table.CentroidTable` with ``bypass_out``).  The raw data is
        registered first (no reset: the FPGA flow folds it into the block RAM's output
        register), the replacement made after that register.
    dot : Out(signed(dot)) x 5, kk : Out(signed(key_norm + 1)), kn : Out(unsigned(key_norm))
        The accumulators: ``k.S_i``, ``k.k_prev``, ``|k|^2`` of the last token whose last chunk
        has gone through; they change only while chunks go through.  Undefined after reset
        until a token's chunks went through (no reset, see Timing).
    done, done_tag : Out(1)
        ``done``: the token's last chunk is in the accumulate stage in this cycle, so the
        accumulators hold the token's results from the next cycle on.  ``done_tag`` is the tag
        of the chunk in the accumulate stage (valid in every cycle with a chunk there).

    Timing
    ------
    Three stages: ``q1`` registers the chunk data and key chunks (cycle ``D``), ``q2`` the
    bypass multiplexer, the products (``k x (S[0:18] - 2^17)`` in DSP blocks, ``k x S[18:]``
    and the key products in LUTs, ``sum(k)``), the first two adder-tree levels of the DSP and key
    products and the whole lane sums of ``k x S[18:]``'s slices and of ``sum(k)`` (``D + 1``),
    the accumulate stage
    ``A`` the rest of the trees and the accumulators (``D + 2``): a token whose last chunk is
    presented in cycle ``D`` has ``done`` in ``D + 2`` and its results in ``dot``/``kk``/``kn``
    from ``D + 3`` on.  One chunk per cycle, back to back across tokens (``first`` restarts the
    accumulators).

    Only the control bits (``en``, ``first``, ``last``, ``tag`` through q1 and A) have a
    synchronous reset.  The data registers of q1 and q2 are loaded in every cycle from this
    cycle's inputs and reach the accumulators only under the control bits, and the accumulators
    are loaded without their old value with a token's first chunk (``first``) before ``done``
    reports it: no data register is read before it is written, so none needs a reset ("Fmax,
    sixth round" in ``docs/cluster.md``: fewer reset sinks, freer flip-flop packing)."""

    def __init__(self, cfg: DREConfig):
        require_config(cfg)
        self.cfg = cfg
        wd = self.widths = ClusterWidths.of(cfg)
        super().__init__(
            {
                "en": In(1),
                "first": In(1),
                "last": In(1),
                "tag": In(1),
                "key": In(key_chunk_layout(cfg)),
                "key_prev": In(key_chunk_layout(cfg)),
                "sums": In(sum_chunk_layout(cfg)).array(N_SUMS),
                "hit": In(N_SUMS),
                "fwd": In(sum_chunk_layout(cfg)),
                "dot": Out(signed(wd.dot)).array(N_SUMS),
                "kk": Out(signed(wd.key_norm + 1)),
                "kn": Out(unsigned(wd.key_norm)),
                "done": Out(1),
                "done_tag": Out(1),
            }
        )

    def elaborate(self, platform):
        L = self.cfg.cl_lanes
        m = Module()

        def stage(values, name, reset_less=True):  # one register per value, same shape
            out = []
            for k, v in enumerate(values):
                v = Value.cast(v)
                r = Signal(v.shape(), name=f"{name}{k}", reset_less=reset_less)
                m.d.sync += r.eq(v)
                out.append(r)
            return out

        # q1: data and key chunks
        q1_kc = stage([self.key[l] for l in range(L)], "q1_kc")
        q1_kp = stage([self.key_prev[l] for l in range(L)], "q1_kp")
        q1_raw = [stage([self.sums[i][l] for l in range(L)], f"q1_s{i}_") for i in range(N_SUMS)]
        q1_hit = stage([self.hit[i] for i in range(N_SUMS)], "q1_hit")
        q1_fwd = stage([self.fwd[l] for l in range(L)], "q1_fwd")
        q1_s = [[Mux(q1_hit[i], q1_fwd[l], q1_raw[i][l]) for l in range(L)] for i in range(N_SUMS)]
        q1_ctl = stage([self.en, self.first, self.last, self.tag], "q1_ctl", reset_less=False)
        # q2: products and two tree levels (the bk-bit slice and sum(k) trees whole)
        wide = len(Value.cast(q1_s[0][0])) > 18
        q2_lo, q2_hi = [], []
        for i in range(N_SUMS):
            lo = key_sum_terms(q1_kc, q1_s[i], L)
            q2_lo.append(stage(tree_levels(lo, 2), f"q2_lo{i}_"))
            # k x s_hi bit-sliced over the lanes (high_slices): each slice summed over the
            # lanes here (bk-bit adders, short next to the DSP path), one register per slice
            slices = high_slices(q1_kc, q1_s[i], L) if wide else []
            q2_hi.append(stage([_slice_sum(t) for t in slices], f"q2_hi{i}_"))
        # sum(k) over the chunk, shared by the five dot products (see key_sum_terms), whole
        q2_ks = stage([_slice_sum(q1_kc)], "q2_ks") if wide else []
        # The key x key products are small (bk x bk): shift-and-add in LUTs, no DSP blocks.
        q2_kk = stage(tree_levels([lut_mul(q1_kc[l], q1_kp[l]) for l in range(L)], 2), "q2_kk")
        q2_kn = stage(tree_levels([lut_square(q1_kc[l]) for l in range(L)], 2), "q2_kn")
        a_en, a_first, a_last, a_tag = stage(q1_ctl, "a_ctl", reset_less=False)
        # the accumulators, without reset (loaded from 0 with a token's first chunk)
        acc = [Signal.like(self.dot[i], name=f"acc{i}", reset_less=True) for i in range(N_SUMS)]
        acc_kk = Signal.like(self.kk, name="acc_kk", reset_less=True)
        acc_kn = Signal.like(self.kn, name="acc_kn", reset_less=True)
        m.d.comb += [
            *(self.dot[i].eq(acc[i]) for i in range(N_SUMS)),
            self.kk.eq(acc_kk),
            self.kn.eq(acc_kn),
        ]
        # A: the rest of the trees, accumulate
        m.d.comb += [self.done.eq(a_en & a_last), self.done_tag.eq(a_tag)]
        if wide:
            k_sum = q2_ks[0]
        with m.If(a_en):
            for i in range(N_SUMS):
                # DSP sum, slice sums (high_terms), 2^17 sum(k) and the accumulator: one tree
                # (4 adder levels for 24-bit sums, not 3 + 2 + 1 in a row)
                terms = [Mux(a_first, 0, acc[i]), *q2_lo[i]]
                if wide:
                    terms += [t << 18 for t in high_terms(q2_hi[i])] + [k_sum << 17]
                m.d.sync += acc[i].eq(offset_sum(terms, len(acc[i])))
            kk_terms = [Mux(a_first, 0, acc_kk), *q2_kk]
            m.d.sync += [
                acc_kk.eq(offset_sum(kk_terms, len(acc_kk))),
                acc_kn.eq(Mux(a_first, 0, acc_kn) + tree_sum(q2_kn)),
            ]
        return m
