"""Dot-product pipeline of the clustering unit: five ``k.S`` sums, ``k.k_prev`` and ``|k|^2``."""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import mul_rows, tree_level, tree_sum
from hw.centroid_table import sum_chunk_layout
from model.dre.cluster import ClusterWidths
from model.dre.config import DREConfig, require_config

#: Sum inputs (read ports of the centroid table) of the pipeline.
N_SUMS = 5


#: Cycles from a chunk presented (``D``) to ``done`` for a token's last chunk: the stages q1 ..
#: q4 (:class:`ClusterDots`, Timing); the token's results are in the accumulators one cycle
#: later.
LATENCY = 4


def dsp_operand(s) -> Value:
    """The sum element ``s`` as the operand of one 18 x 18 signed DSP multiplier: ``s`` itself
    when it has 18 bits or fewer, else ``s_lo - 2^17`` (:func:`offset_low`).  For wider sums,
    ``s = s_hi 2^18 + s_lo`` with ``s_lo = s[0:18]`` unsigned and ``s_hi = s[18:]`` signed, so
    ``k s = k (s_lo - 2^17) + 2^18 k s_hi + 2^17 k``: the DSP forms ``k (s_lo - 2^17)``;
    ``k s_hi`` is summed over the lanes bit-sliced in LUTs (:func:`high_slices`,
    :func:`high_terms`), and ``2^17 sum(k)``, the same for every sum, is added once (in the
    accumulate stage's adder tree).  Written as one product per lane, a synthesis tool spends
    two DSP blocks on every ``bk x (bk + count_bits)`` product."""
    if len(Value.cast(s)) <= 18:
        return Value.cast(s)
    return offset_low(s)


def high_slices(k, s_hi, lanes: int) -> list[list]:
    """``sum_l k[l] s_hi[l]`` (``s_hi[l]`` signed, the bits 18 and up of a wide sum) bit-sliced
    over the lanes: slice ``j`` is the list ``[s_hi[l][j] ? k[l] : 0 for l]``; the sum is
    ``sum_j w_j 2^j`` of the slices' sums (:func:`high_terms`: narrow adders, each slice summed
    at ``bk`` bits and shifted once)."""
    n = len(Value.cast(s_hi[0]))
    return [[Mux(Value.cast(s_hi[l])[j], k[l], 0) for l in range(lanes)] for j in range(n)]


def high_terms(slice_sums: list) -> list:
    """``sum_j w_j 2^j slice_sums[j]`` (``w_j = -1`` for the top (sign) bit, else 1) as a list of
    terms to add, with no negation: ``-t = ~t + 1``, so the top slice is ``~t`` and the ``+1``
    a constant term ``2^(n-1)``."""
    n = len(slice_sums)
    terms = [t << j for j, t in enumerate(slice_sums[:-1])]
    return [*terms, (~slice_sums[-1]) << (n - 1), Const(1 << (n - 1))]


def offset_low(s) -> Value:
    """``s[0:18] - 2^17`` (``s[0:18]`` unsigned) as a signed 18-bit value: bit 17 inverted."""
    s = Value.cast(s)
    return Cat(s[:17], ~s[17]).as_signed()


def magnitude(k) -> Value:
    """``|k|`` of a signed ``k`` as an unsigned value of the same width (``|k| <= 2^(bk-1)``)."""
    k = Value.cast(k)
    return Mux(k < 0, -k, k)[: len(k)].as_unsigned()


def square_rows(x) -> list:
    """The partial products of ``x * x`` for an unsigned ``x``, as a squarer forms them:
    ``x^2 = sum_i x_i 4^i + sum_{i<j} x_i x_j 2^(i+j+1)``, i.e. row ``i`` is ``x_i ? 4^i (1 + 4
    (x >> (i + 1))) : 0``; about half the bits of the :func:`hw.arith.mul_rows` of ``x x``."""
    x = Value.cast(x)
    n = len(x)
    return [Mux(x[i], Cat(Const(1, 2), x[i + 1 :]) << (2 * i), 0) for i in range(n)]


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


def negated(terms: list) -> list:
    """Terms whose sum is ``-sum(terms)``, with no negation's carry chain: ``-t = ~t + 1`` for a
    signed ``t`` (exact), so each term is inverted and ``len(terms)`` added as one constant.  An
    unsigned term is first made signed with one more (zero) bit."""
    out = []
    for t in terms:
        t = Value.cast(t)
        if not t.shape().signed:
            t = Cat(t, Const(0, 1)).as_signed()
        out.append(~t)
    return [*out, Const(len(terms))]


def tree_levels(terms: list, levels: int) -> list:
    """``levels`` levels of a balanced adder tree (:func:`hw.arith.tree_level`): the partial
    sums, ``ceil(len / 2^levels)`` of them, for a pipeline register between levels."""
    terms = list(terms)
    for _ in range(levels):
        if len(terms) <= 1:
            break
        terms = tree_level(terms)
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
    sums : In(ArrayLayout(signed(sum), cl_lanes)) x 5, hit : In(3) x 5
        The chunk of each sum: the table's raw read data of this cycle, replaced where
        ``hit[i][n]`` says the row is written ``n`` cycles after the read's address cycle
        (:class:`hw.centroid_table.CentroidTable` with ``bypass_out``) by that write's data:
        ``fwd`` one cycle after it, ``wdata`` in its cycle, the newest write first.  The raw
        data is registered first (no reset: the FPGA flow folds it into the block RAM's output
        register), the replacement made after that register, in q2 (two cycles after the
        address: the write of ``n = 2`` is ``wdata`` then, that of ``n = 1`` is ``fwd``, that
        of ``n = 0`` ``fwd`` registered in q1).
    fwd : In(ArrayLayout(signed(sum), cl_lanes)), wdata : In(ArrayLayout(...))
        The table's ``wr_last`` (the data written in the previous cycle) and the data written
        in this cycle.
    dot : Out(signed(dot)) x 5, kk : Out(signed(key_norm + 1)), kn : Out(unsigned(key_norm))
        The accumulators: ``k.S_i``, ``k.k_prev``, ``|k|^2`` of the last token whose last chunk
        has gone through; they change only while chunks go through.  Undefined after reset
        until a token's chunks went through (no reset, see Timing).
    dot_neg, dot_kk, dot_kk_neg : Out(signed(dot)) x 5, kk_neg : Out(signed(key_norm + 2))
        More accumulators, with the same timing: ``-k.S_i``, ``k.S_i + k.k_prev`` and
        ``-(k.S_i + k.k_prev)`` modulo ``2^dot`` (as signed values), and ``-k.k_prev``.  These
        are the candidate options of :class:`hw.cluster_resolve.CandidateResolve` and their
        negations, each accumulated by a tree of its own from the same stage registers, so
        that T1 forms a magnitude without an adder ("Fmax, thirteenth round" in
        ``docs/cluster.md``).  An unused one (``dot_neg[3]``, ``dot_neg[4]`` in the unit) is
        removed by synthesis.
    done, done_tag : Out(1)
        ``done``: the token's last chunk is in the accumulate stage in this cycle, so the
        accumulators hold the token's results from the next cycle on.  ``done_tag`` is the tag
        of the chunk in the accumulate stage (valid in every cycle with a chunk there).

    Timing
    ------
    Five stages, each named after the registers it loads: ``q1`` registers the chunk data and
    key chunks (in cycle ``D``, no logic); ``q2`` (``D + 1``) the bypass multiplexer and the
    DSP operands (``S`` itself, or ``S[0:18] - 2^17`` and ``S[18:]`` for wide sums,
    :func:`dsp_operand`), and the rows of ``k x k_prev`` with two levels of their adder tree;
    ``q3`` (``D + 2``) the DSP products alone (``k x S`` or ``k x (S[0:18] - 2^17)``: register
    -> multiplier -> register, so the FPGA flow folds both into the block's own registers), and
    in LUTs the rows of ``|k|^2`` and two adder-tree levels of them, of ``k x k_prev``'s and of
    ``k x S[18:]``'s slices and ``sum(k)``; ``q4`` (``D + 3``) two adder-tree levels of the DSP
    and key products (``k.k_prev``'s chunk whole at the default) and the whole slice and
    ``sum(k)`` sums; the accumulate stage ``A`` (``D + 4``) the rest of the trees and the
    accumulators, one tree of full adders and one carry chain each.  A
    token whose last chunk is presented in cycle ``D`` has ``done`` in ``D + LATENCY = D + 4``
    and its results in ``dot``/``kk``/``kn`` from ``D + 5`` on.  One chunk per cycle, back to
    back across tokens (``first`` restarts the accumulators).  (Until the ninth Fmax round,
    ``docs/cluster.md``, q2 was the multiplexer, the products and two tree levels at once, and
    ``LATENCY`` 2.)

    Only the control bits (``en``, ``first``, ``last``, ``tag`` through q1 .. q4) have a
    synchronous reset.  The data registers of q1 .. q4 are loaded in every cycle from this
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
                "hit": In(3).array(N_SUMS),
                "fwd": In(sum_chunk_layout(cfg)),
                "wdata": In(sum_chunk_layout(cfg)),
                "dot": Out(signed(wd.dot)).array(N_SUMS),
                "dot_neg": Out(signed(wd.dot)).array(N_SUMS),
                "dot_kk": Out(signed(wd.dot)).array(N_SUMS),
                "dot_kk_neg": Out(signed(wd.dot)).array(N_SUMS),
                "kk": Out(signed(wd.key_norm + 1)),
                "kk_neg": Out(signed(wd.key_norm + 2)),
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

        # q1: data and key chunks, straight from the inputs (the raw sum data from the block
        # RAMs: the FPGA flow folds these registers into the block RAMs' output registers)
        q1_kc = stage([self.key[l] for l in range(L)], "q1_kc")
        q1_kp = stage([self.key_prev[l] for l in range(L)], "q1_kp")
        q1_raw = [stage([self.sums[i][l] for l in range(L)], f"q1_s{i}_") for i in range(N_SUMS)]
        q1_hit = stage([self.hit[i] for i in range(N_SUMS)], "q1_hit")  # (no reset: data)
        q1_any = stage([self.hit[i].any() for i in range(N_SUMS)], "q1_any")  # some hit[n]
        q1_fwd = stage([self.fwd[l] for l in range(L)], "q1_fwd")
        q1_ctl = stage([self.en, self.first, self.last, self.tag], "q1_ctl", reset_less=False)
        # q2: the operands.  The bypass multiplexer, and for wide sums the DSP operand
        # ``S[0:18] - 2^17`` (offset_low) apart from the high bits: every DSP multiplier input
        # comes straight from a register (the flow folds them into the block's input registers).
        wide = len(Value.cast(q1_raw[0][0])) > 18

        # the newest write of the row up to two cycles after the read's address cycle (this
        # one), else the block RAM's data: the writes' data and the hits are registers a cycle
        # old, the block RAM's output arrives late (a route across the die), so it passes one
        # two-way multiplexer under one registered bit, not the three of the priority chain
        def bypass(i, l):
            h = q1_hit[i]
            newest = Mux(h[2], self.wdata[l], Mux(h[1], self.fwd[l], q1_fwd[l]))
            return Mux(q1_any[i], newest, q1_raw[i][l])

        q1_s = [[bypass(i, l) for l in range(L)] for i in range(N_SUMS)]
        q2_kc = stage(q1_kc, "q2_kc")
        # the key x key products (bk x bk shift-and-add, no DSP blocks) one stage ahead of the
        # sums' products, from the q1 key chunks: the rows of all lanes in one tree, two levels
        # in each of q2, q3 and q4, so that k.k_prev's chunk enters the accumulate stage whole
        # (one term of the speculated sums ``k.S_i + k.k_prev``)
        q2_kk = stage(
            tree_levels([r for l in range(L) for r in mul_rows(q1_kc[l], q1_kp[l])], 2), "q2_kk"
        )
        q2_ka = stage([magnitude(k) for k in q1_kc], "q2_ka")  # |k| for the squarer's rows
        if wide:
            q2_lo = [stage([dsp_operand(s) for s in q1_s[i]], f"q2_lo{i}_") for i in range(N_SUMS)]
            q2_hi = [
                stage([Value.cast(s)[18:].as_signed() for s in q1_s[i]], f"q2_hi{i}_")
                for i in range(N_SUMS)
            ]
        else:
            q2_lo = [stage(q1_s[i], f"q2_s{i}_") for i in range(N_SUMS)]
        q2_ctl = stage(q1_ctl, "q2_ctl", reset_less=False)
        # q3: the DSP products alone, registered (the block's output register); in LUTs the
        # first two adder-tree levels of k x S[18:]'s slices and of sum(k), and of |k|^2's rows
        q3_p = [
            stage([q2_kc[l] * q2_lo[i][l] for l in range(L)], f"q3_p{i}_") for i in range(N_SUMS)
        ]
        q3_hi = []
        if wide:
            for i in range(N_SUMS):
                slices = high_slices(q2_kc, q2_hi[i], L)
                q3_hi.append(stage([_slice_sum(t) for t in slices], f"q3_hi{i}_"))
        q3_ks = stage([_slice_sum(q2_kc)], "q3_ks") if wide else []
        # (the rows of all lanes in one tree: two levels here, two in q4, the rest in A)
        q3_kk = stage(tree_levels(q2_kk, 2), "q3_kk")
        q3_kn = stage(tree_levels([r for l in range(L) for r in square_rows(q2_ka[l])], 2), "q3_kn")
        q3_ctl = stage(q2_ctl, "q3_ctl", reset_less=False)
        # q4: two adder-tree levels of the DSP and key products, the slice and sum(k) sums whole
        q4_lo = [stage(tree_levels(q3_p[i], 2), f"q4_lo{i}_") for i in range(N_SUMS)]
        # the high part of each sum and 2^17 sum(k) in one term: 2^17 (2 sum_j w_j 2^j
        # slice_j + sum(k)), its low 17 bits zero (not stored), modulo the accumulator's width
        wh = len(self.dot[0]) - 17
        q4_h = [
            stage(
                [offset_sum([t << 1 for t in high_terms(q3_hi[i])] + [q3_ks[0]], wh)], f"q4_h{i}_"
            )
            for i in range(len(q3_hi))
        ]
        q4_kk = stage(tree_levels(q3_kk, 2), "q4_kk")
        q4_kn = stage(tree_levels(q3_kn, 2), "q4_kn")
        a_en, a_first, a_last, a_tag = stage(q3_ctl, "a_ctl", reset_less=False)

        # the accumulators, without reset (loaded from 0 with a token's first chunk): per sum
        # k.S_i, its negation, k.S_i + k.k_prev and that sum's negation, each a tree of its own
        # over the same registers; k.k_prev and its negation; |k|^2
        def accs(port, name):
            regs = [Signal.like(port[i], name=f"{name}{i}", reset_less=True) for i in range(N_SUMS)]
            m.d.comb += [port[i].eq(regs[i]) for i in range(N_SUMS)]
            return regs

        acc = accs(self.dot, "acc")
        acc_neg = accs(self.dot_neg, "acc_neg")
        acc_spec = accs(self.dot_kk, "acc_spec")
        acc_spec_neg = accs(self.dot_kk_neg, "acc_spec_neg")
        acc_kk = Signal.like(self.kk, name="acc_kk", reset_less=True)
        acc_kk_neg = Signal.like(self.kk_neg, name="acc_kk_neg", reset_less=True)
        acc_kn = Signal.like(self.kn, name="acc_kn", reset_less=True)
        m.d.comb += [
            self.kk.eq(acc_kk),
            self.kk_neg.eq(acc_kk_neg),
            self.kn.eq(acc_kn),
        ]

        def accumulate(reg, terms, high=None, neg=False):
            # reg (or 0 with the first chunk) + terms (+ 2^17 high), or - (terms + 2^17 high):
            # one tree of full adders and one carry chain, modulo reg's width; -2^17 high is
            # 2^17 ~high + 2^17 modulo 2^(17 + len(high)), the accumulator's width
            terms = negated(terms) if neg else list(terms)
            if high is not None:
                terms += [(~high) << 17, Const(1 << 17)] if neg else [high << 17]
            m.d.sync += reg.eq(offset_sum([Mux(a_first, 0, reg), *terms], len(reg)))

        # A: the rest of the trees, accumulate
        m.d.comb += [self.done.eq(a_en & a_last), self.done_tag.eq(a_tag)]
        with m.If(a_en):
            for i in range(N_SUMS):
                # DSP sum, slice sums (high_terms), 2^17 sum(k) and the accumulator: one tree
                # (4 adder levels for 24-bit sums, not 3 + 2 + 1 in a row)
                high = q4_h[i][0] if wide else None
                accumulate(acc[i], q4_lo[i], high)
                accumulate(acc_neg[i], q4_lo[i], high, neg=True)
                accumulate(acc_spec[i], [*q4_lo[i], *q4_kk], high)
                accumulate(acc_spec_neg[i], [*q4_lo[i], *q4_kk], high, neg=True)
            accumulate(acc_kk, q4_kk)
            accumulate(acc_kk_neg, q4_kk, neg=True)
            m.d.sync += acc_kn.eq(Mux(a_first, 0, acc_kn) + tree_sum(q4_kn))
        return m
