"""DRE selection v2: a token budget over entries with member counts, several query vectors.

Bit-exact with :func:`model.dre.ref.select_tokens` (``k_cap = cfg.k_cap``); the rule, the early
exit and its proof are in ``docs/select.md``.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.bitplane_dot import BitplaneDot, dot_shape
from hw.layouts import (
    CYCLES_BITS,
    TOKEN_ERROR_LAYOUT,
    Kind,
    budget_bits,
    token_query_layout,
    token_result_layout,
)
from hw.plane_store import PlaneReadSignature
from hw.topk import TopK
from model.dre.config import ConfigError, DREConfig


def value_shape(cfg: DREConfig):
    """Signed shape of every partial, bound and normalised bound (``P``, ``L``, ``U``, ``SL``,
    ``SU``, ``MU0``, ``T``).

    ``|P| <= d * 2^(bq+bk-2)``; ``|L|, |U| < d * 2^(bq+bk-1)`` (``r < 2^(bk-1)`` and
    ``|Qpos|, |Qneg| <= d * 2^(bq-1)``); ``MU0 < d * 2^(bq+bk-2)``; so ``|SL|, |SU| < d *
    2^(bq+bk)``, which ``bq + bk + bitlen(d) + 1`` signed bits hold; one more bit of slack.
    """
    return signed(cfg.bq + cfg.bk + cfg.d.bit_length() + 2)


def _masked_max(m: Module, values: list, n_q, shape, name: str):
    """``max(values[0 .. n_q-1])`` (``n_q >= 1``) as a chain of compare-selects."""
    acc = values[0]
    for c in range(1, len(values)):
        nxt = Signal(shape, name=f"{name}{c}")
        m.d.comb += nxt.eq(Mux((c < n_q) & (values[c] > acc), values[c], acc))
        acc = nxt
    return acc


class SelectTokensCore(wiring.Component):
    """v2 retrieval over entries ``0 .. N-1`` of a plane store and a count memory.

    Interface
    ---------
    query : In(stream.Signature(hw.layouts.token_query_layout(cfg)))
        ``queries`` (the first ``n_q`` of ``q_max``), ``budget``, ``n``, ``no_exit``,
        ``raw_max``.  Accepted only when idle.  ``n = 0``, ``n > n_max``, ``n_q = 0`` or
        ``n_q > q_max`` skip the retrieval: only a trailer with the ``error`` flags, ``cycles =
        1``.  ``budget = 0`` with early exit gives a trailer at once too (no error, no plane read).
    result : Out(stream.Signature(hw.layouts.token_result_layout(cfg)))
        ``RECORD`` beats (``id``, ``take``) in selection order, then one ``TRAILER``
        (``planes_read``, ``cycles``, ``error``).  ``ready`` may be low at any time.
    store : Out(PlaneReadSignature(cfg))
        Plane reads (one plane of one entry) and member counts, 1 cycle latency each; the bias
        port is not used.  Connect to a :class:`PlaneStore` built with ``counts=True``.
    busy : Out(1)
        From the query handshake to the trailer's handshake; keys and counts must not change.

    Schedule
    --------
    * ``init``: ``2 * n_q * groups`` cycles: ``Qpos_c`` and ``Qneg_c`` on the dot unit.
    * one pass per plane ``p = bk-1 .. 0`` over the alive list (entries ``0 .. N-1`` in the
      first pass, then the compacted list) through a 4-stage pipeline: S0 list read, S1 plane,
      partials and count read, S2 one cycle for an entry that is empty (first pass) or dropped
      (``SU_j < T``), else ``n_q * groups`` cycles of dot products (the plane word is read once
      and held; the queries take turns on one :class:`BitplaneDot`), S3 partials written back,
      entry appended to the next list, ``(SL_j, j, count_j)`` inserted into the ``k_cap``-slot
      ranking.  One set-up cycle before each pass, 4 cycles of drain after it.
    * after every pass but the last, the threshold walk: the ranking is shifted out, summing
      counts, until the sum reaches ``budget`` (``T`` = that entry's ``SL``) or the slots run
      out (no drop): ``1 + w`` cycles, ``w <= k_cap`` the entries shifted; skipped with
      ``no_exit``.
    * output rounds: one sweep over the survivors ranks their exact scores (``A + 3`` cycles,
      ``A`` survivors, plus one set-up cycle), then records are shifted out of the ranking while
      the budget is not met, one per cycle while ``ready``.  If the ranking overflowed and the
      budget is still not met another round ranks the survivors after the last one emitted.

    ``cycles`` in the trailer: from the query handshake (cycle c0) to the first cycle the
    trailer is valid (c1), ``c1 - c0``, less the cycles in which a record waited for ``ready``.
    """

    def __init__(self, cfg: DREConfig):
        if not isinstance(cfg, DREConfig):
            raise TypeError(f"SelectTokensCore needs a DREConfig, got {cfg!r}")
        if cfg.n_max < 2:
            raise ConfigError(
                f"SelectTokensCore: n_max={cfg.n_max} must be >= 2 (a 1-entry memory has no "
                f"address)"
            )
        self.cfg = cfg
        super().__init__(
            {
                "query": In(stream.Signature(token_query_layout(cfg))),
                "result": Out(stream.Signature(token_result_layout(cfg))),
                "store": Out(PlaneReadSignature(cfg)),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        n_max, bk, groups, qm = cfg.n_max, cfg.bk, cfg.groups, cfg.q_max
        vs = value_shape(cfg)
        vec = data.ArrayLayout(vs, qm)
        dshape = dot_shape(cfg.d, cfg.bq)
        cshape = unsigned(cfg.count_bits)
        bshape = unsigned(budget_bits(cfg) + 1)

        dot = m.submodules.dot = BitplaneDot(cfg.d, cfg.lanes, cfg.bq)
        topk = m.submodules.topk = TopK(cfg.k_cap, vs, cfg.index_bits, cshape)
        part_mem = m.submodules.partial = Memory(shape=vec, depth=n_max, init=[])
        part_rd, part_wr = part_mem.read_port(), part_mem.write_port()
        list_mem = m.submodules.alive = Memory(shape=cfg.index_bits, depth=2 * n_max, init=[])
        list_rd, list_wr = list_mem.read_port(), list_mem.write_port()

        # ---- retrieval registers --------------------------------------------------------------
        qy = Signal(token_query_layout(cfg))
        err = Signal(TOKEN_ERROR_LAYOUT)
        q_pos = Signal(data.ArrayLayout(dshape, qm))
        q_neg = Signal(data.ArrayLayout(dshape, qm))
        planes_read = Signal(token_result_layout(cfg).members["planes_read"])
        cycles = Signal(CYCLES_BITS)
        n_q = qy.n_q

        # ---- pass state -----------------------------------------------------------------------
        p = Signal(range(bk), init=bk - 1)
        first = Signal()
        m.d.comb += first.eq(p == bk - 1)
        bank = Signal()
        n_cur = Signal(range(n_max + 1))
        n_next = Signal(range(n_max + 1))
        rqp_prev = Signal(vec)  # (2^(p+1) - 1) * Qpos_c: U of the previous pass
        rqn = Signal(vec)  # (2^p - 1) * Qneg_c: L of this pass
        rqp = Signal(vec)  # (2^p - 1) * Qpos_c: U of this pass
        ml = Signal(vec)  # ML_c of the previous pass (for SU)
        mu_prev = Signal(vec)  # MU_c of the previous pass (MU0 before the first; for SL)
        ml_new = Signal(vec)  # ML_c, MU_c of this pass, accumulating
        mu_new = Signal(vec)
        mlmu_valid = Signal()
        thr = Signal(vs)
        thr_valid = Signal()
        cum = Signal(bshape)
        c = Signal(range(max(2, qm)))
        g = Signal(range(max(2, groups)))
        init_neg = Signal()
        newp = Signal(vec)
        sl_acc = Signal(vs)

        # ---- output state ---------------------------------------------------------------------
        taken = Signal(bshape)
        last_valid = Signal()
        last_key = Signal(vs)
        last_id = Signal(cfg.index_bits)
        overflow = Signal()

        # ---- S0 .. S3 (PASS and SCORE) --------------------------------------------------------
        e = Signal(range(n_max + 1))
        s0_valid = Signal()
        s1_valid, s1_e = Signal(), Signal(cfg.index_bits)
        s2_valid, s2_j = Signal(), Signal(cfg.index_bits)
        s3_valid, s3_j, s3_count = Signal(), Signal(cfg.index_bits), Signal(cshape)
        in_pass = Signal()
        advance = Signal()
        s1_j = Signal(cfg.index_bits)
        s2_done = Signal()
        last_group = Signal()
        last_c = Signal()
        m.d.comb += [
            s1_j.eq(Mux(in_pass & first, s1_e, list_rd.data)),
            last_group.eq(g == groups - 1),
            last_c.eq(c == n_q - 1),
            advance.eq(~s2_valid | s2_done),
            list_rd.addr.eq(Mux(bank, n_max, 0) + e),
            list_rd.en.eq(advance),
            self.store.addr.eq(s1_j),
            self.store.plane.eq(p),
            self.store.en.eq(advance & in_pass),
            self.store.count_addr.eq(s1_j),
            self.store.count_en.eq(advance),
            part_rd.addr.eq(s1_j),
            part_rd.en.eq(advance),
        ]
        with m.If(advance):
            m.d.sync += [s1_valid.eq(s0_valid), s1_e.eq(e), s2_valid.eq(s1_valid), s2_j.eq(s1_j)]
            with m.If(s0_valid):
                m.d.sync += e.eq(e + 1)

        # S2, PASS: empty / dropped entries (one cycle) or the n_q * groups dot-product cycles
        s2_part = part_rd.data
        s2_count = self.store.count
        raw = qy.raw_max
        su_terms = []
        for k in range(qm):
            t = Signal(vs, name=f"su_term{k}")
            m.d.comb += t.eq(s2_part[k] + rqp_prev[k] - Mux(raw, 0, ml[k]))
            su_terms.append(t)
        su = _masked_max(m, su_terms, n_q, vs, "su_max")
        dead = Signal()
        drop = Signal()
        m.d.comb += [
            dead.eq(first & (s2_count == 0)),
            drop.eq(~first & thr_valid & (su < thr)),
        ]
        q_sel = qy.queries[c]
        pos_mask = Cat(q_sel[i] > 0 for i in range(cfg.d))
        neg_mask = Cat(q_sel[i] < 0 for i in range(cfg.d))
        m.d.comb += [dot.q.eq(q_sel), dot.group.eq(g), dot.first.eq(g == 0)]
        base = Signal(vs)
        shifted = Signal(vs)
        new_c = Signal(vs)
        lo_c, hi_c, sl_c = Signal(vs), Signal(vs), Signal(vs)
        m.d.comb += [
            base.eq(Mux(first, 0, s2_part[c])),
            shifted.eq(dot.total << p),
            new_c.eq(Mux(first, base - shifted, base + shifted)),
            lo_c.eq(new_c + rqn[c]),
            hi_c.eq(new_c + rqp[c]),
            sl_c.eq(lo_c - Mux(raw, 0, mu_prev[c])),
        ]
        sl_max = Signal(vs)
        m.d.comb += sl_max.eq(Mux((c == 0) | (sl_c > sl_acc), sl_c, sl_acc))
        m.d.sync += s3_valid.eq(0)

        # S2, SCORE: exact score of a survivor, ranked if it comes after the last one emitted
        sc_terms = []
        for k in range(qm):
            t = Signal(vs, name=f"score_term{k}")
            m.d.comb += t.eq(s2_part[k] - Mux(raw, 0, mu_new[k]))
            sc_terms.append(t)
        score = _masked_max(m, sc_terms, n_q, vs, "score_max")
        after_last = Signal()
        m.d.comb += after_last.eq(
            ~last_valid | (score < last_key) | ((score == last_key) & (s2_j > last_id))
        )

        # S3, PASS: write back, append, rank SL
        m.d.comb += [
            part_wr.addr.eq(s3_j),
            part_wr.data.eq(newp),
            list_wr.addr.eq(Mux(bank, 0, n_max) + n_next),
            list_wr.data.eq(s3_j),
        ]
        with m.If(s3_valid):
            m.d.comb += [
                part_wr.en.eq(1),
                list_wr.en.eq(1),
                topk.insert.eq(1),
                topk.key.eq(sl_acc),
                topk.index.eq(s3_j),
                topk.payload.eq(s3_count),
            ]
            m.d.sync += [n_next.eq(n_next + 1), planes_read.eq(planes_read + n_q)]

        drained = Signal()
        m.d.comb += drained.eq(~s0_valid & ~s1_valid & ~s2_valid & ~s3_valid)
        head = topk.entries[0]
        full = topk.entries[cfg.k_cap - 1].valid
        left = Signal(bshape)
        take = Signal(cshape)
        m.d.comb += [
            left.eq(qy.budget - taken),
            take.eq(Mux(head.payload < left, head.payload, left)),
        ]

        # ---- control ----------------------------------------------------------------------
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.query.ready.eq(1)
                pl = self.query.payload
                checks = Signal(TOKEN_ERROR_LAYOUT)
                m.d.comb += [
                    checks.n_zero.eq(pl.n == 0),
                    checks.n_over.eq(pl.n > n_max),
                    checks.q_zero.eq(pl.n_q == 0),
                    checks.q_over.eq(pl.n_q > qm),
                ]
                with m.If(self.query.valid):
                    m.d.sync += [
                        qy.eq(pl),
                        err.eq(checks),
                        cycles.eq(1),
                        planes_read.eq(0),
                        p.eq(bk - 1),
                        bank.eq(0),
                        n_cur.eq(pl.n),
                        c.eq(0),
                        g.eq(0),
                        init_neg.eq(0),
                        thr_valid.eq(0),
                        taken.eq(0),
                        last_valid.eq(0),
                    ]
                    with m.If(checks.as_value().any() | ((pl.budget == 0) & ~pl.no_exit)):
                        m.next = "TRAILER"
                    with m.Else():
                        m.next = "INIT"

            with m.State("INIT"):  # Qpos_c, Qneg_c for c = 0 .. n_q-1
                m.d.sync += cycles.eq(cycles + 1)
                m.d.comb += [dot.word.eq(Mux(init_neg, neg_mask, pos_mask)), dot.en.eq(1)]
                m.d.sync += g.eq(Mux(last_group, 0, g + 1))
                with m.If(last_group):
                    m.d.sync += init_neg.eq(~init_neg)
                    with m.If(init_neg):
                        m.d.sync += [q_neg[c].eq(dot.total), c.eq(c + 1)]
                        with m.If(last_c):
                            m.d.sync += c.eq(0)
                            m.next = "SETUP"
                    with m.Else():
                        m.d.sync += q_pos[c].eq(dot.total)

            with m.State("SETUP"):  # start of the pass over plane p
                m.d.sync += cycles.eq(cycles + 1)
                m.d.comb += topk.clear.eq(1)
                m.d.sync += [e.eq(0), n_next.eq(0), mlmu_valid.eq(0)]
                for k in range(qm):
                    qp, qn = q_pos[k], q_neg[k]
                    m.d.sync += [
                        rqn[k].eq((qn << p) - qn),
                        rqp[k].eq((qp << p) - qp),
                        rqp_prev[k].eq((qp << (p + 1)) - qp),
                    ]
                    with m.If(first):  # MU0 = (2^(bk-1) - 1) Qpos - 2^(bk-1) Qneg
                        m.d.sync += mu_prev[k].eq((qp << (bk - 1)) - qp - (qn << (bk - 1)))
                m.next = "PASS"

            with m.State("PASS"):
                m.d.sync += cycles.eq(cycles + 1)
                m.d.comb += [
                    in_pass.eq(1),
                    s0_valid.eq(e < n_cur),
                    dot.word.eq(self.store.word),
                    s2_done.eq(s2_valid & (dead | drop | (last_group & last_c))),
                ]
                with m.If(s2_valid & ~dead & ~drop):
                    m.d.comb += dot.en.eq(1)
                    m.d.sync += g.eq(Mux(last_group, 0, g + 1))
                    with m.If(last_group):
                        m.d.sync += [newp[c].eq(new_c), sl_acc.eq(sl_max)]
                        with m.If(mlmu_valid):
                            with m.If(lo_c > ml_new[c]):
                                m.d.sync += ml_new[c].eq(lo_c)
                            with m.If(hi_c > mu_new[c]):
                                m.d.sync += mu_new[c].eq(hi_c)
                        with m.Else():
                            m.d.sync += [ml_new[c].eq(lo_c), mu_new[c].eq(hi_c)]
                        m.d.sync += c.eq(c + 1)
                        with m.If(last_c):
                            m.d.sync += [
                                c.eq(0),
                                mlmu_valid.eq(1),
                                s3_valid.eq(1),
                                s3_j.eq(s2_j),
                                s3_count.eq(s2_count),
                            ]
                with m.If(drained):
                    m.d.sync += [bank.eq(~bank), n_cur.eq(n_next), e.eq(0)]
                    with m.If(p == 0):
                        m.d.sync += [overflow.eq(0)]
                        m.next = "SCORE_SETUP"
                    with m.Else():
                        m.d.sync += [
                            ml.eq(ml_new),
                            mu_prev.eq(mu_new),
                            p.eq(p - 1),
                            cum.eq(0),
                            thr_valid.eq(0),
                        ]
                        with m.If(qy.no_exit):
                            m.next = "SETUP"
                        with m.Else():
                            m.next = "THRESH"

            with m.State("THRESH"):  # walk the ranking until the counts reach the budget
                m.d.sync += cycles.eq(cycles + 1)
                cum_next = Signal(bshape)
                m.d.comb += cum_next.eq(cum + head.payload)
                with m.If(~head.valid):
                    m.next = "SETUP"
                with m.Elif(cum_next >= qy.budget):
                    m.d.sync += [thr.eq(head.key), thr_valid.eq(1)]
                    m.next = "SETUP"
                with m.Else():
                    m.d.comb += topk.shift.eq(1)
                    m.d.sync += cum.eq(cum_next)

            with m.State("SCORE_SETUP"):
                m.d.sync += cycles.eq(cycles + 1)
                m.d.comb += topk.clear.eq(1)
                m.d.sync += [e.eq(0), overflow.eq(0)]
                m.next = "SCORE"

            with m.State("SCORE"):  # rank the survivors' exact scores
                m.d.sync += cycles.eq(cycles + 1)
                m.d.comb += [s0_valid.eq(e < n_cur), s2_done.eq(s2_valid)]
                with m.If(s2_valid & after_last):
                    m.d.comb += [
                        topk.insert.eq(1),
                        topk.key.eq(score),
                        topk.index.eq(s2_j),
                        topk.payload.eq(s2_count),
                    ]
                    with m.If(full):
                        m.d.sync += overflow.eq(1)
                with m.If(drained):
                    m.next = "OUT"

            with m.State("OUT"):
                rec = self.result.payload
                want = Signal()
                m.d.comb += [
                    want.eq(head.valid & (taken < qy.budget)),
                    self.result.valid.eq(want),
                    rec.kind.eq(Kind.RECORD),
                    rec.id.eq(head.index),
                    rec.take.eq(take),
                ]
                with m.If(~want | self.result.ready):
                    m.d.sync += cycles.eq(cycles + 1)
                with m.If(want & self.result.ready):
                    m.d.comb += topk.shift.eq(1)
                    m.d.sync += [
                        taken.eq(taken + take),
                        last_valid.eq(1),
                        last_key.eq(head.key),
                        last_id.eq(head.index),
                    ]
                with m.If(~want):
                    with m.If(overflow & (taken < qy.budget)):
                        m.next = "SCORE_SETUP"
                    with m.Else():
                        m.next = "TRAILER"

            with m.State("TRAILER"):
                rec = self.result.payload
                m.d.comb += [
                    self.result.valid.eq(1),
                    rec.kind.eq(Kind.TRAILER),
                    rec.planes_read.eq(planes_read),
                    rec.cycles.eq(cycles),
                    rec.error.eq(err),
                ]
                with m.If(self.result.ready):
                    m.next = "IDLE"

        m.d.comb += self.busy.eq(~self.query.ready)
        return m


__all__ = ["SelectTokensCore", "value_shape"]
