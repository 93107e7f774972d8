"""Early-exit selector core: bit-plane passes over the candidates of a :class:`PlaneStore`."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.bitplane_dot import BitplaneDot, dot_shape
from hw.layouts import (
    CYCLES_BITS,
    SELECT_ERROR_LAYOUT,
    Kind,
    score_shape,
    select_query_layout,
    select_result_layout,
)
from hw.plane_store import PlaneReadSignature
from hw.topk import TopK
from model.dre.config import ConfigError, DREConfig


class SelectCore(wiring.Component):
    """Bit-plane early-exit selection over candidates ``0 .. N-1`` of a plane store.

    Interface
    ---------
    query : In(stream.Signature(select_query_layout(cfg)))
        Accepted only when idle (``ready`` high in the idle state).  The runtime values are
        checked at the handshake; an out-of-range value (N = 0, N > n_max, k_max = 0,
        k_max > k_cap, k_min = 0, k_min > k_max) skips the retrieval: the output is just a
        trailer with the matching ``error`` flags set and ``planes_read = 0``.
    result : Out(stream.Signature(select_result_layout(cfg)))
        The selected candidates as ``RECORD`` beats (``index``, exact ``score``), score
        descending, ties to the lower index, then one ``TRAILER`` beat (``planes_read``,
        ``cycles``, ``error``).  ``result.ready`` may be low at any time; nothing is lost.
    store : Out(PlaneReadSignature(cfg))
        The only way keys are read: one plane of one candidate per read, one cycle latency.
    busy : Out(1)
        A retrieval is under way (from the query handshake to the trailer's handshake).  Keys
        must not be written while busy.

    Schedule (exactly the reference ``model.dre.select.select``)
    ----------------------------------------------------------
    * ``init``: ``2 * groups`` cycles; the dot-product unit computes ``Qpos`` (``q`` against the
      mask of its positive elements) and ``Qneg``.
    * one pass per plane ``p = bk-1 .. 0``, over the list of alive candidates (``0 .. N-1`` in
      the first pass, then a compacted list, increasing index order).  A 4-stage pipeline:
      S0 reads the alive list, S1 reads the plane, bias or partial score of candidate ``j``,
      S2 tests the drop rule ``U_j < T`` (1 cycle for a dropped candidate) or runs the
      ``groups`` cycles of the dot product, S3 writes the new partial score, appends ``j`` to the
      next alive list and inserts ``(L_j, j)`` into the top-``k_cap`` structure.  A dropped
      candidate leaves the list and is never visited again.
    * after the pipeline drains (4 cycles) the threshold ``T`` of the next pass is computed from
      the top-K structure (``L_(1)``, ``L_(k_min)``, ``L_(k_max)``), plus one set-up cycle.
    * after plane 0 the top-K structure holds the survivors' exact scores in output order; the
      records are shifted out of it while they qualify.

    Cycles per retrieval: ``1 + 2*groups + sum_p (alive_p * groups + dropped_p + 5 - x_p)`` for
    the compute part (``alive_p``: candidates that read plane ``p``; ``dropped_p``: candidates
    found dropped at the start of pass ``p``, one cycle each; ``x_p = 1`` if the last candidate
    of the pass's list is a dropped one, as the write-back stage is then not needed), then one
    beat per cycle of output while ``ready`` is high.  ``cycles`` in the trailer counts from the
    query handshake (cycle c0) to the first output beat (cycle c1): ``c1 - c0``.
    """

    def __init__(self, cfg: DREConfig):
        if not isinstance(cfg, DREConfig):
            raise TypeError(f"SelectCore needs a DREConfig, got {cfg!r}")
        if cfg.n_max < 2:
            raise ConfigError(
                f"SelectCore: n_max={cfg.n_max} must be >= 2 (a 1-entry memory has no address)"
            )
        self.cfg = cfg
        super().__init__(
            {
                "query": In(stream.Signature(select_query_layout(cfg))),
                "result": Out(stream.Signature(select_result_layout(cfg))),
                "store": Out(PlaneReadSignature(cfg)),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        n_max, bk, groups = cfg.n_max, cfg.bk, cfg.groups
        sshape = score_shape(cfg)
        tshape = signed(sshape.width + 1)  # T and maxL - margin

        dot = m.submodules.dot = BitplaneDot(cfg.d, cfg.lanes, cfg.bq)
        topk = m.submodules.topk = TopK(cfg.k_cap, sshape, cfg.index_bits)
        part_mem = m.submodules.partial = Memory(shape=sshape, depth=n_max, init=[])
        part_rd, part_wr = part_mem.read_port(), part_mem.write_port()
        # Two alive lists (ping-pong banks) in one memory: read bank `bank`, write `~bank`.
        list_mem = m.submodules.alive = Memory(shape=cfg.index_bits, depth=2 * n_max, init=[])
        list_rd, list_wr = list_mem.read_port(), list_mem.write_port()

        # ---- query registers --------------------------------------------------------------
        qy = Signal(select_query_layout(cfg))
        kmin_i = Signal(range(max(2, cfg.k_cap)))  # k_min - 1, valid after the checks
        kmax_i = Signal(range(max(2, cfg.k_cap)))
        q_pos = Signal(dot_shape(cfg.d, cfg.bq))
        q_neg = Signal(dot_shape(cfg.d, cfg.bq))
        err = Signal(SELECT_ERROR_LAYOUT)
        planes_read = Signal(select_result_layout(cfg).members["planes_read"])
        cycles = Signal(CYCLES_BITS)

        # ---- pass state ---------------------------------------------------------------------
        p = Signal(range(bk), init=bk - 1)
        first = Signal()  # the sign plane: p == bk-1
        m.d.comb += first.eq(p == bk - 1)
        bank = Signal()
        n_cur = Signal(range(n_max + 1))
        n_next = Signal(range(n_max + 1))
        rq_pos_prev = Signal(sshape)  # (2^(p+1) - 1) * Qpos: U of the previous pass
        rq_neg = Signal(sshape)  # (2^p - 1) * Qneg: L of this pass
        thr = Signal(tshape)  # T, then (in emit) max(score) - margin
        thr_valid = Signal()
        g = Signal(range(max(2, groups)))  # lane group (1 bit, always 0, if groups == 1)
        init_neg = Signal()

        # pipeline registers
        e = Signal(range(n_max + 1))
        s1_valid, s1_e = Signal(), Signal(cfg.index_bits)
        s2_valid, s2_j = Signal(), Signal(cfg.index_bits)
        s3_valid, s3_j = Signal(), Signal(cfg.index_bits)
        s3_p, s3_l = Signal(sshape), Signal(sshape)
        emitted = Signal(range(cfg.k_cap + 1))

        # ---- S0 .. S3 datapath (active in the PASS state; idle elsewhere) -------------------
        s0_valid = Signal()
        advance = Signal()
        s1_j = Signal(cfg.index_bits)
        s2_p = Signal(sshape)
        upper = Signal(tshape)
        drop = Signal()
        last_group = Signal()
        s2_done = Signal()
        m.d.comb += [
            s1_j.eq(Mux(first, s1_e, list_rd.data)),
            s2_p.eq(Mux(first, self.store.bias, part_rd.data)),
            upper.eq(s2_p + rq_pos_prev),
            drop.eq(~first & thr_valid & (upper < thr)),
            last_group.eq(g == groups - 1),
            s2_done.eq(s2_valid & (drop | last_group)),
            advance.eq(~s2_valid | s2_done),
            list_rd.addr.eq(Mux(bank, n_max, 0) + e),
            list_rd.en.eq(advance),
            self.store.addr.eq(s1_j),
            self.store.plane.eq(p),
            self.store.en.eq(advance),
            self.store.bias_addr.eq(s1_j),
            self.store.bias_en.eq(advance),
            part_rd.addr.eq(s1_j),
            part_rd.en.eq(advance),
        ]
        with m.If(advance):
            m.d.sync += [s1_valid.eq(s0_valid), s1_e.eq(e), s2_valid.eq(s1_valid), s2_j.eq(s1_j)]
            with m.If(s0_valid):
                m.d.sync += e.eq(e + 1)

        # S2: the dot product over `groups` cycles (or the init sums, which share the unit)
        pos_mask = Cat(qy.q[i] > 0 for i in range(cfg.d))
        neg_mask = Cat(qy.q[i] < 0 for i in range(cfg.d))
        m.d.comb += [
            dot.q.eq(qy.q),
            dot.group.eq(g),
            dot.first.eq(g == 0),
        ]
        shifted = dot.total << p
        new_p = Signal(sshape)
        m.d.comb += new_p.eq(Mux(first, s2_p - shifted, s2_p + shifted))
        m.d.sync += s3_valid.eq(0)

        # S3: write back, append to the next alive list, rank the lower bound
        m.d.comb += [
            part_wr.addr.eq(s3_j),
            part_wr.data.eq(s3_p),
            list_wr.addr.eq(Mux(bank, 0, n_max) + n_next),
            list_wr.data.eq(s3_j),
            topk.key.eq(s3_l),
            topk.index.eq(s3_j),
        ]
        with m.If(s3_valid):
            m.d.comb += [part_wr.en.eq(1), list_wr.en.eq(1), topk.insert.eq(1)]
            m.d.sync += [n_next.eq(n_next + 1), planes_read.eq(planes_read + 1)]

        # ---- thresholds from the top-K structure ------------------------------------------
        top = topk.entries[0]
        at_kmin = topk.entries[kmin_i]
        at_kmax = topk.entries[kmax_i]
        best_minus_m = Signal(tshape)
        inner = Signal(tshape)
        m.d.comb += [
            best_minus_m.eq(top.key - qy.margin),
            inner.eq(Mux(at_kmin.key < best_minus_m, at_kmin.key, best_minus_m)),
        ]

        # ---- output ---------------------------------------------------------------------------
        head = topk.entries[0]
        qualifies = Signal()
        m.d.comb += qualifies.eq(
            head.valid & (emitted < qy.k_max) & ((emitted < qy.k_min) | (head.key >= thr))
        )

        # ---- control ----------------------------------------------------------------------
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.query.ready.eq(1)
                pl = self.query.payload
                checks = Signal(SELECT_ERROR_LAYOUT)
                m.d.comb += [
                    checks.n_zero.eq(pl.n == 0),
                    checks.n_over.eq(pl.n > n_max),
                    checks.k_max_zero.eq(pl.k_max == 0),
                    checks.k_max_over.eq(pl.k_max > cfg.k_cap),
                    checks.k_min_bad.eq((pl.k_min == 0) | (pl.k_min > pl.k_max)),
                ]
                with m.If(self.query.valid):
                    m.d.sync += [
                        qy.eq(pl),
                        kmin_i.eq(pl.k_min - 1),
                        kmax_i.eq(pl.k_max - 1),
                        err.eq(checks),
                        cycles.eq(1),
                        planes_read.eq(0),
                        p.eq(bk - 1),
                        bank.eq(0),
                        n_cur.eq(pl.n),
                        g.eq(0),
                        init_neg.eq(0),
                        thr_valid.eq(0),
                    ]
                    with m.If(checks.as_value().any()):
                        m.next = "TRAILER"
                    with m.Else():
                        m.next = "INIT"

            with m.State("INIT"):
                m.d.sync += cycles.eq(cycles + 1)
                m.d.comb += [dot.word.eq(Mux(init_neg, neg_mask, pos_mask)), dot.en.eq(1)]
                m.d.sync += g.eq(Mux(last_group, 0, g + 1))
                with m.If(last_group):
                    with m.If(init_neg):
                        m.d.sync += q_neg.eq(dot.total)
                        m.next = "SETUP"
                    with m.Else():
                        m.d.sync += [q_pos.eq(dot.total), init_neg.eq(1)]

            with m.State("SETUP"):  # start of the pass over plane p
                m.d.sync += cycles.eq(cycles + 1)
                m.d.comb += topk.clear.eq(1)
                m.d.sync += [
                    e.eq(0),
                    n_next.eq(0),
                    rq_neg.eq((q_neg << p) - q_neg),
                    rq_pos_prev.eq((q_pos << (p + 1)) - q_pos),
                ]
                m.next = "PASS"

            with m.State("PASS"):
                m.d.sync += cycles.eq(cycles + 1)
                m.d.comb += [s0_valid.eq(e < n_cur), dot.word.eq(self.store.word)]
                with m.If(s2_valid & ~drop):
                    m.d.comb += dot.en.eq(1)
                    m.d.sync += g.eq(Mux(last_group, 0, g + 1))
                    with m.If(last_group):
                        m.d.sync += [
                            s3_valid.eq(1),
                            s3_j.eq(s2_j),
                            s3_p.eq(new_p),
                            s3_l.eq(new_p + rq_neg),
                        ]
                drained = ~s0_valid & ~s1_valid & ~s2_valid & ~s3_valid
                with m.If(drained):  # the top-K structure now ranks every alive candidate
                    m.d.sync += [bank.eq(~bank), n_cur.eq(n_next)]
                    with m.If(p == 0):
                        m.d.sync += [thr.eq(best_minus_m), emitted.eq(0)]
                        m.next = "EMIT"
                    with m.Else():
                        m.d.sync += [
                            p.eq(p - 1),
                            thr.eq(Mux(at_kmax.valid & (at_kmax.key > inner), at_kmax.key, inner)),
                            thr_valid.eq(at_kmin.valid & ~qy.no_exit),
                        ]
                        m.next = "SETUP"

            with m.State("EMIT"):
                rec = self.result.payload
                m.d.comb += [
                    self.result.valid.eq(qualifies),
                    rec.kind.eq(Kind.RECORD),
                    rec.index.eq(head.index),
                    rec.score.eq(head.key),
                ]
                with m.If(qualifies & self.result.ready):
                    m.d.comb += topk.shift.eq(1)
                    m.d.sync += emitted.eq(emitted + 1)
                with m.If(~qualifies):
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
