"""The soft score of DRE selection v2 (``score="soft"`` of ``model.dre_tokens``), pipelined.

Given the exact dot products ``s[c, j]`` of ``n_q`` query vectors with the live entries and the
entries' member counts, it computes, bit for bit as :func:`model.dre_tokens.soft_scores`::

    M_c      = max_j s[c, j]
    u[c, j]  = min(((M_c - s[c, j]) * gain) >> GAIN_SHIFT, UCAP)
    S_c      = sum_j counts[j] * EXP2(u[c, j])
    Z_c      = LOG2(S_c) - E * 2^FB
    score_j  = sum_c EXP2(min(u[c, j] + Z_c, UCAP))

``UCAP = (E + 1) * 2^FB``: ``EXP2`` of anything at or above it is 0 (the table holds values
below ``2^(E+1)``), so saturating there changes no result and bounds every width.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from model.dre_config import ConfigError
from model.dre_tokens import (
    GAIN_BITS,
    GAIN_SHIFT,
    SOFT_E,
    SOFT_FB,
    SOFT_M,
    exp2_table,
    log2_table,
)

#: ``entries.payload.sweep`` values
SWEEP_MAX, SWEEP_SUM, SWEEP_SCORE = 0, 1, 2
#: ``EXP2(x) = 0`` for every ``x >= UCAP``
UCAP = (SOFT_E + 1) << SOFT_FB
#: output FIFO depth (bounds the entries in flight in the score sweep)
OUT_DEPTH = 16


class SoftScore(wiring.Component):
    """Soft scores of ``N`` entries for ``n_q`` query vectors, in three sweeps over the entries.

    Parameters
    ----------
    q_max       most query vectors (``1 .. 16``)
    s_bits      signed width of the dot products ``s``
    count_bits  width of a member count
    n_max       most entries per retrieval (sizes the sum ``S_c``)

    Interface
    ---------
    n_q : In(range(q_max + 1))
        Query vectors in use; held for the whole retrieval.  ``1 <= n_q <= q_max`` is the
        contract; 0 is served as 1 and larger values as ``q_max`` (never a hang).
    gain : In(GAIN_BITS)
        ``model.dre_tokens.soft_gain``; held for the whole retrieval.
    entries : In(stream.Signature(entry_layout))
        One beat per entry and sweep: ``sweep`` (MAX, SUM, SCORE, in that order, each over the
        same entries in the same order), ``first`` / ``last`` (first / last entry of the sweep),
        ``count`` (read in the SUM sweep), ``s`` (``q_max`` dot products; lanes ``>= n_q``
        are ignored).
    scores : Out(stream.Signature(score_layout))
        One beat per SCORE-sweep entry, in order: ``score`` and ``last``.
    busy : Out(1)
        Work is in flight (an accepted beat has not yet had all of its effect).

    Timing
    ------
    MAX beats: one per cycle.  SUM and SCORE beats: ``n_q`` cycles each (the queries are served
    in turn through one multiplier and one ``2^x`` table; ``ready`` rises in the cycle of the
    last query).  The SUM sweep's last beat is followed by the pipeline drain (``LATENCY``
    cycles) and ``Z_c`` (``Z_CYCLES`` per query), during which SCORE beats wait.  A score leaves
    ``LATENCY`` cycles after its entry's last query entered.  So a retrieval of ``N`` entries
    takes ``N * (1 + 2 * n_q) + 2 * LATENCY + Z_CYCLES * n_q`` cycles plus stalls of
    ``scores.ready``; the output FIFO (``OUT_DEPTH``) absorbs short stalls.
    """

    #: pipeline stages from an issued (entry, query) pair to its effect
    LATENCY = 9
    #: cycles per query of the ``Z_c`` sequencer
    Z_CYCLES = 5

    def __init__(self, *, q_max: int, s_bits: int, count_bits: int, n_max: int):
        for name, v, lo, hi in (
            ("q_max", q_max, 1, 16),
            ("s_bits", s_bits, 2, 48),
            ("count_bits", count_bits, 1, 40),
            ("n_max", n_max, 1, 1 << 20),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ConfigError(f"SoftScore: {name}={v!r} must be an integer in [{lo}, {hi}]")
        self.q_max, self.s_bits, self.count_bits, self.n_max = q_max, s_bits, count_bits, n_max
        #: S_c <= n_max * (2^count_bits - 1) * 2^E
        self.sum_bits = count_bits + SOFT_E + n_max.bit_length()
        #: score <= q_max * 2^E
        self.score_bits = SOFT_E + 1 + q_max.bit_length()
        #: Z_c <= LOG2(S_c) - E * 2^FB < (sum_bits - E) * 2^FB
        self.z_bits = ((self.sum_bits - SOFT_E) << SOFT_FB).bit_length()
        self.entry_layout = data.StructLayout(
            {
                "sweep": 2,
                "first": 1,
                "last": 1,
                "count": unsigned(count_bits),
                "s": data.ArrayLayout(signed(s_bits), q_max),
            }
        )
        self.score_layout = data.StructLayout({"score": unsigned(self.score_bits), "last": 1})
        super().__init__(
            {
                "n_q": In(range(q_max + 1)),
                "gain": In(GAIN_BITS),
                "entries": In(stream.Signature(self.entry_layout)),
                "scores": Out(stream.Signature(self.score_layout)),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        qm, sb, E, FB = self.q_max, self.s_bits, SOFT_E, SOFT_FB
        beat = self.entries.payload
        diff_bits = sb + 1
        u_bits = UCAP.bit_length()

        m.submodules.out = out = fifo.SyncFIFOBuffered(
            width=self.score_layout.size, depth=OUT_DEPTH
        )
        m.d.comb += [
            self.scores.valid.eq(out.r_rdy),
            self.scores.payload.eq(out.r_data),
            out.r_en.eq(self.scores.ready),
        ]

        # Effective n_q in 1 .. q_max, registered (a held input).
        n_q = Signal(range(qm + 1))
        m.d.sync += n_q.eq(Mux(self.n_q == 0, 1, Mux(self.n_q > qm, qm, self.n_q)))
        last_q = Signal(range(qm))
        m.d.comb += last_q.eq(Mux(n_q == 0, 0, n_q - 1))

        M = [Signal(signed(sb), name=f"M{c}") for c in range(qm)]
        S = [Signal(self.sum_bits, name=f"S{c}") for c in range(qm)]
        Z = [Signal(self.z_bits, name=f"Z{c}") for c in range(qm)]

        # ---- issue: MAX beats in one cycle, SUM / SCORE beats one query per cycle ----
        c = Signal(range(qm))
        z_pending = Signal()  # the SUM sweep's last beat was issued, Z not yet computed
        z_busy = Signal()
        inflight = Signal(range(OUT_DEPTH + 1))  # SCORE entries accepted, not yet in the FIFO
        credit = Signal()
        m.d.comb += credit.eq(inflight + out.level < OUT_DEPTH)
        is_max = beat.sweep == SWEEP_MAX
        is_sum = beat.sweep == SWEEP_SUM
        is_score = beat.sweep == SWEEP_SCORE
        issue = Signal()
        m.d.comb += issue.eq(
            self.entries.valid
            & ~z_busy
            & ~is_max
            & ((is_sum & ~z_pending) | (is_score & ~z_pending & credit))
        )
        with m.If(self.entries.valid & is_max & ~z_busy & ~z_pending):
            m.d.comb += self.entries.ready.eq(1)
            for q in range(qm):
                with m.If(beat.first | (beat.s[q] > M[q])):
                    m.d.sync += M[q].eq(beat.s[q])
            with m.If(beat.first):
                m.d.sync += [s.eq(0) for s in S]
        with m.Elif(issue):
            with m.If(c == last_q):
                m.d.comb += self.entries.ready.eq(1)
                m.d.sync += c.eq(0)
                with m.If(is_sum & beat.last):
                    m.d.sync += z_pending.eq(1)
            with m.Else():
                m.d.sync += c.eq(c + 1)
        with m.If(self.entries.valid & (beat.sweep == 3)):  # not a sweep: consume, no effect
            m.d.comb += self.entries.ready.eq(1)

        # ---- the (entry, query) pipeline ----
        def stage(name, shape, value=None):
            sig = Signal(shape, name=name)
            if value is not None:
                m.d.sync += sig.eq(value)
            return sig

        # st1: select the query's operands
        v1 = stage("v1", 1, issue)
        score1 = stage("score1", 1, is_score)
        c1 = stage("c1", range(qm), c)
        lastc1 = stage("lastc1", 1, c == last_q)
        last1 = stage("last1", 1, beat.last)
        cnt1 = stage("cnt1", self.count_bits, beat.count)
        s1 = stage("s1", signed(sb))
        m1 = stage("m1", signed(sb))
        z1 = stage("z1", self.z_bits)
        with m.Switch(c):
            for q in range(qm):
                with m.Case(q):
                    m.d.sync += [s1.eq(beat.s[q]), m1.eq(M[q]), z1.eq(Z[q])]
        # st2: M - s >= 0
        v2, score2, c2, lastc2, last2, cnt2, z2 = (
            stage(f"{n}2", x.shape(), x)
            for n, x in (
                ("v", v1),
                ("score", score1),
                ("c", c1),
                ("lastc", lastc1),
                ("last", last1),
                ("cnt", cnt1),
                ("z", z1),
            )
        )
        diff2 = stage("diff2", diff_bits, m1 - s1)
        # st3: the product with the gain
        v3, score3, c3, lastc3, last3, cnt3, z3 = (
            stage(f"{n}3", x.shape(), x)
            for n, x in (
                ("v", v2),
                ("score", score2),
                ("c", c2),
                ("lastc", lastc2),
                ("last", last2),
                ("cnt", cnt2),
                ("z", z2),
            )
        )
        prod3 = stage("prod3", diff_bits + GAIN_BITS, diff2 * self.gain)
        # st4: u = min(prod >> GAIN_SHIFT, UCAP)
        v4, score4, c4, lastc4, last4, cnt4, z4 = (
            stage(f"{n}4", x.shape(), x)
            for n, x in (
                ("v", v3),
                ("score", score3),
                ("c", c3),
                ("lastc", lastc3),
                ("last", last3),
                ("cnt", cnt3),
                ("z", z3),
            )
        )
        shifted = prod3 >> GAIN_SHIFT
        u4 = stage("u4", u_bits, Mux(shifted >= UCAP, UCAP, shifted))
        # st5: x = min(u (+ Z in the SCORE sweep), UCAP)
        v5, score5, c5, lastc5, last5, cnt5 = (
            stage(f"{n}5", x.shape(), x)
            for n, x in (
                ("v", v4),
                ("score", score4),
                ("c", c4),
                ("lastc", lastc4),
                ("last", last4),
                ("cnt", cnt4),
            )
        )
        x_sum = u4 + Mux(score4, z4, 0)
        x5 = stage("x5", u_bits, Mux(x_sum >= UCAP, UCAP, x_sum))
        # st6: 2^-frac from the table (a ROM read), the shift from the integer part
        v6, score6, c6, lastc6, last6, cnt6 = (
            stage(f"{n}6", x.shape(), x)
            for n, x in (
                ("v", v5),
                ("score", score5),
                ("c", c5),
                ("lastc", lastc5),
                ("last", last5),
                ("cnt", cnt5),
            )
        )
        m.submodules.exp2 = exp2 = memory.Memory(
            shape=unsigned(E + 1), depth=1 << FB, init=exp2_table()
        )
        rd = exp2.read_port(domain="sync")
        m.d.comb += rd.addr.eq(x5[:FB])
        i6 = stage("i6", range(E + 2), x5[FB:])  # x5 <= UCAP: at most E + 1
        # st7: e = T >> i
        v7, score7, c7, lastc7, last7, cnt7 = (
            stage(f"{n}7", x.shape(), x)
            for n, x in (
                ("v", v6),
                ("score", score6),
                ("c", c6),
                ("lastc", lastc6),
                ("last", last6),
                ("cnt", cnt6),
            )
        )
        e7 = stage("e7", E + 1, rd.data >> i6)
        # st8: SUM: count * e; SCORE: the running sum over the entry's queries
        v8 = stage("v8", 1, v7)
        sum8 = stage("sum8", 1, v7 & ~score7)
        c8 = stage("c8", range(qm), c7)
        last8 = stage("last8", 1, last7 & lastc7 & ~score7)
        ne8 = stage("ne8", self.count_bits + E + 1, cnt7 * e7)
        acc8 = stage("acc8", self.score_bits)
        emit8 = stage("emit8", 1, v7 & score7 & lastc7)
        elast8 = stage("elast8", 1, last7)
        with m.If(v7 & score7):
            m.d.sync += acc8.eq(Mux(c7 == 0, e7, acc8 + e7))
        # st9: S_c += count * e (one adder per query: no read multiplexer in the loop)
        for q in range(qm):
            with m.If(sum8 & (c8 == q)):
                m.d.sync += S[q].eq(S[q] + ne8)
        z_start = stage("z_start", 1, v8 & last8)
        # SCORE: into the output FIFO
        w = Signal(self.score_layout)
        m.d.comb += [w.score.eq(acc8), w.last.eq(elast8), out.w_data.eq(w), out.w_en.eq(emit8)]
        accepted_score = self.entries.valid & self.entries.ready & is_score
        m.d.sync += inflight.eq(inflight + accepted_score - emit8)

        # ---- Z_c = LOG2(S_c) - E * 2^FB, one query at a time, Z_CYCLES each ----
        zc = Signal(range(qm))
        zstep = Signal(range(self.Z_CYCLES))
        zs = Signal(self.sum_bits)
        zp = Signal(range(self.sum_bits))
        znorm = Signal(self.sum_bits)
        m.submodules.log2 = log2 = memory.Memory(
            shape=unsigned(FB + 1), depth=1 << SOFT_M, init=log2_table()
        )
        lrd = log2.read_port(domain="sync")
        m.d.comb += lrd.addr.eq(znorm[self.sum_bits - 1 - SOFT_M : self.sum_bits - 1])
        with m.If(z_start):
            m.d.sync += [z_busy.eq(1), zc.eq(0), zstep.eq(0)]
        with m.If(z_busy):
            m.d.sync += zstep.eq(zstep + 1)
            with m.Switch(zstep):
                with m.Case(0):  # the query's sum
                    for q in range(qm):
                        with m.If(zc == q):
                            m.d.sync += zs.eq(S[q])
                with m.Case(1):  # p = floor(log2 S): S >= 2^E, so the top one exists
                    for b in range(self.sum_bits):
                        with m.If(zs[b]):
                            m.d.sync += zp.eq(b)
                with m.Case(2):  # the leading one moved to the top bit
                    m.d.sync += znorm.eq(zs << (self.sum_bits - 1 - zp).as_unsigned())
                # Case 3: the LOG2 table reads the M bits below the leading one
                with m.Case(4):
                    zval = (zp << FB) + lrd.data - (E << FB)
                    with m.Switch(zc):
                        for q in range(qm):
                            with m.Case(q):
                                m.d.sync += Z[q].eq(zval)
                    m.d.sync += zstep.eq(0)
                    with m.If(zc == last_q):
                        m.d.sync += [z_busy.eq(0), z_pending.eq(0)]
                    with m.Else():
                        m.d.sync += zc.eq(zc + 1)

        m.d.comb += self.busy.eq(
            z_busy | z_pending | (inflight != 0) | v1 | v2 | v3 | v4 | v5 | v6 | v7 | v8 | z_start
        )
        return m
