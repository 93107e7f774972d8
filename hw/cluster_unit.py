"""DRE clustering unit: temporal/spatial clustering of streamed keys with the centroid table."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.arith import lut_mul, tree_sum
from hw.centroid_table import CentroidTable, chunk_shape
from hw.cluster_cosine import PAIRS, ClusterCompare
from hw.cluster_exact import ExactCompare
from hw.cluster_queue import WritebackQueue
from hw.cluster_writeback import ClusterWriteback
from hw.plane_store import PlaneWriteSignature
from model.dre.cluster import DROPPED, FORCED, JOINED, NEW, ClusterWidths
from model.dre.config import ConfigError, DREConfig

#: Digit width of the exact unit's shift-and-add multiplier (cycles against LUTs).
EXACT_DIGIT_BITS = 1

#: Candidates in test order: temporal, left, up.
TEMPORAL, LEFT, UP = 0, 1, 2


def token_period(cfg: DREConfig) -> int:
    """Cycles between tokens at full rate (no input gaps, no backpressure):
    ``max(G, ceil((G + 8) / 2), 5)`` with ``G = d / lanes``, i.e. ``G`` for ``G >= 8`` and 6 at
    the default ``G = 4`` (``docs/cluster.md`` derives it)."""
    G = cfg.groups
    return max(G, (G + 9) // 2, 5)


def token_latency(cfg: DREConfig) -> int:
    """Cycles from a token's acceptance to its result with the pipeline empty (no exact
    recompute, no backpressure): ``G + 10`` (``docs/cluster.md``)."""
    return cfg.groups + 10


def key_sum_terms(k, s, lanes: int):
    """The products of ``sum_l k[l] * s[l]`` over ``lanes`` key and sum elements (both signed),
    as ``(lo, hi)`` lists whose sums give ``sum(lo) + (sum(hi) << 17)``, each product fitting
    one 18 x 18 DSP multiplier: for sums wider than 18 bits, ``k`` times the low 17 bits of
    ``s`` (zero-extended) in the DSP blocks (``lo``), ``k`` times the high bits in LUTs
    (:func:`hw.arith.lut_mul`, ``hi``); the two partial dot products are summed by separate
    adder trees and added once.  Written as one product per lane, a synthesis tool spends two
    DSP blocks on every ``bk x (bk + count_bits)`` product.  ``hi`` is empty for sums of 18 bits
    or fewer."""
    if len(Value.cast(s[0])) <= 18:
        return [k[l] * s[l] for l in range(lanes)], []
    lo = [k[l] * Value.cast(s[l])[:17] for l in range(lanes)]
    hi = [lut_mul(k[l], Value.cast(s[l])[17:].as_signed()) for l in range(lanes)]
    return lo, hi


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
    return data.ArrayLayout(signed(cfg.bk), cfg.d)


def result_layout(cfg: DREConfig) -> data.StructLayout:
    """Per token: cluster ``id``, 2-bit ``status`` (``model.dre.cluster``: 0 joined, 1 new,
    2 forced, 3 dropped) and ``last`` (last token of its frame)."""
    return data.StructLayout({"id": range(cfg.n_max), "status": 2, "last": 1})


class ClusterUnit(wiring.Component):
    """Temporal and spatial clustering of one KV head's keys, bit-exact with
    :class:`model.dre.cluster.ClusterRef` (the rule: ``docs/clustering.md``; the design:
    ``docs/cluster.md``).

    Interface
    ---------
    keys : In(stream.Signature(ArrayLayout(signed(bk), d)))
        One token per transfer, frames back to back in raster order.  Framing is by count: a
        frame is ``grid_w * grid_h`` tokens; the first token after reset, after ``clear`` or after
        a complete frame starts a new one.
    result : Out(stream.Signature(result_layout))
        One result per token, in order: ``id``, ``status`` (0 joined, 1 new, 2 forced, 3 dropped;
        a dropped token reports id 0) and ``last``.  Held until taken (``ready``).
    writeback : Out(PlaneWriteSignature)
        Per updated cluster ``j``: ``en`` for one cycle with ``addr = j``, the quantised centroid
        and the bias; connects to :class:`hw.plane_store.PlaneStore`'s write port.
    grid_w, grid_h, tau_t, tau_s, table_size : In
        Runtime registers, sampled when the first token of a frame is taken.  ``tau_*`` are
        fixed point ``T = round(tau * 2^F)``; ``table_size`` is the number of entries in use.
    bias_scale : In
        Runtime register of the write-back engine (keep it stable while not ``idle``).
    clear : In(1)
        Request to empty the table and owner map and reset ``error``.  Registered; carried out
        once every accepted token is finished and written back, new tokens waiting meanwhile.
    error : Out(1)
        Sticky runtime error, set at a frame start if ``grid_w * grid_h`` is 0 or above
        ``grid_max``, ``table_size`` is 0 or above ``n_max``, or a tau is above ``2^F``.  While it
        is set every token is answered ``dropped`` (id 0, ``last`` 0) and nothing changes.
    idle : Out(1)
        Every accepted token is decided and every write-back it caused is done (the condition a
        top level waits for before a retrieval).
    n_clusters : Out
        Clusters allocated since the last clear.
    exact_count : Out(32)
        Decisions recomputed by the exact unit since reset (wraps); a performance counter.

    Parameters
    ----------
    cfg : DREConfig
    mantissa_bits : int
        ``M`` of the decision screen (:class:`hw.cluster_cosine.ClusterCompare`), 6 .. 32;
        17 (the default) keeps every screen product within one 18 x 18 DSP multiplier.  Smaller
        values widen the guard band (tests use 6 to send many decisions to the exact unit).

    Timing
    ------
    Throughput one token per ``token_period(cfg) = max(G, ceil((G + 8) / 2), 5)`` cycles
    (without exact recomputes)
    (``G = d / lanes``; ``G`` for ``G >= 8``, 6 at the default d = 64, lanes = 16), latency
    ``token_latency(cfg) = G + 10`` cycles from acceptance to the result.  Stages: ``accept |
    IN: owner-map reads | G chunk reads (5 sums) | q1: data registered | q2: products, two
    adder-tree levels | A: accumulate (5 sums, k.k_prev, |k|^2) | T1: resolve | T2 .. T4: screen
    stages 1-3 | DEC``.  Token ``t+1`` starts its dot products as soon as the read ports
    are free and token ``t-1`` is decided, i.e. while token ``t`` is still being decided.  Its
    *left* candidate (and its up / temporal candidate on a grid 1 wide / of 1 token) is ``t``'s
    cluster, not known yet: ``t+1`` reads the sums of all three of ``t``'s candidates and
    computes ``k_{t+1}.k_t``; at T1, once ``t`` is decided, it takes ``k_{t+1}.S_c + k_{t+1}.k_t``
    for the candidate ``c`` that ``t`` joined, or ``k_{t+1}.k_t`` if ``t`` opened a cluster.
    ``t``'s sum update starts writing after ``t+1``'s reads began, so ``t+1`` never sees it and
    corrects any of its own candidates equal to ``t``'s cluster by ``k_{t+1}.k_t``; every
    earlier update is complete in time (transparent table ports).  ``|S|^2`` and counts come from
    the table (transparent reads, written at the decision) or, for ``t``'s cluster, from the
    decision's own registers.  Candidates two tokens back (grid width 2, frames of 2 tokens)
    come from the decision history instead of the owner map.  The decision waits for a free
    ``result`` register and a free sum-update engine (``G`` cycles per update), and for the
    exact unit when the mantissa screen left a result it needs inside its guard band
    (:func:`hw.cluster_exact.exact_cycles` per recomputed result plus one, 211 at the default;
    rare).
    Write-backs run in the background from a queue of updated clusters (each id at most once).
    ``docs/cluster.md`` has the schedule and the hazard argument.
    """

    def __init__(self, cfg: DREConfig, mantissa_bits: int = 17):
        if not isinstance(cfg, DREConfig):
            raise ConfigError(f"cfg must be a DREConfig, got {type(cfg).__name__}")
        if not isinstance(mantissa_bits, int) or not 6 <= mantissa_bits <= 32:
            raise ConfigError(f"mantissa_bits={mantissa_bits!r} must be an integer in 6 .. 32")
        self.cfg = cfg
        self.mantissa_bits = mantissa_bits
        wd = self.widths = ClusterWidths.of(cfg)
        super().__init__(
            {
                "keys": In(stream.Signature(key_layout(cfg))),
                "result": Out(stream.Signature(result_layout(cfg))),
                "writeback": Out(PlaneWriteSignature(cfg)),
                "grid_w": In(16),
                "grid_h": In(16),
                "tau_t": In(wd.tau),
                "tau_s": In(wd.tau),
                "table_size": In(range(cfg.n_max + 1)),
                "bias_scale": In(wd.bias_scale),
                "clear": In(1),
                "error": Out(1),
                "idle": Out(1),
                "n_clusters": Out(range(cfg.n_max + 1)),
                "exact_count": Out(32),
            }
        )

    def elaborate(self, platform):
        cfg, wd = self.cfg, self.widths
        G, L = cfg.groups, cfg.lanes
        m = Module()

        # Sum read ports: 0 own temporal, 1 own up, 2..4 the previous token's three candidates.
        # The write-back engine reads the sums through the update engine's port when it is free.
        m.submodules.table = table = CentroidTable(cfg, ports=5, meta_ports=2, wb_port=False)
        m.submodules.writeback = wb = ClusterWriteback(cfg)
        m.submodules.queue = queue = WritebackQueue(cfg)
        m.submodules.compare = cmp = ClusterCompare(cfg, self.mantissa_bits)
        m.submodules.exact = exact = ExactCompare(cfg, EXACT_DIGIT_BITS)

        def pick(pair, bit):  # one of two banks by a parity bit
            return Mux(bit, pair[1], pair[0])

        # ---- owner map: per grid position, (valid, cluster) of the last visit ---------------
        owner_layout = data.StructLayout({"valid": 1, "id": range(cfg.n_max)})
        m.submodules.owner = owner = Memory(shape=owner_layout, depth=cfg.grid_max, init=[])
        own_wr = owner.write_port()
        own_t = owner.read_port()  # temporal: this position, previous frame
        own_u = owner.read_port()  # up: the position one row above, this frame

        # ---- acceptance and frame registers ---------------------------------------------------
        pos, col, row = Signal(16), Signal(16), Signal(16)  # next token's position
        f_w, f_h, f_size = Signal(16), Signal(16), Signal(32)  # sampled at the frame start
        f_tau_t, f_tau_s = Signal(wd.tau), Signal(wd.tau)
        f_table = Signal(range(cfg.n_max + 1))
        f_temporal = Signal()  # this frame has a temporal candidate
        temporal_ok, prev_w, prev_h = Signal(), Signal(16), Signal(16)
        n_used = Signal(range(cfg.n_max + 1))
        clear_pending = Signal()

        m.d.comb += self.n_clusters.eq(n_used)
        with m.If(self.clear):
            m.d.sync += clear_pending.eq(1)

        # ---- result register ------------------------------------------------------------------
        with m.If(self.result.ready):
            m.d.sync += self.result.valid.eq(0)
        result_free = ~self.result.valid | self.result.ready

        # ---- frame configuration at a frame start (combinational view) -------------------------
        start = pos == 0
        grid_size = Signal(32)  # one 16 x 16 product (one DSP block)
        m.d.comb += grid_size.eq(self.grid_w * self.grid_h)
        cur_w = Mux(start, self.grid_w, f_w)
        cur_h = Mux(start, self.grid_h, f_h)
        cur_size = Mux(start, grid_size, f_size)
        cur_tau_t = Mux(start, self.tau_t, f_tau_t)
        cur_tau_s = Mux(start, self.tau_s, f_tau_s)
        cur_table = Mux(start, self.table_size, f_table)
        cur_temporal = Mux(
            start, temporal_ok & (self.grid_w == prev_w) & (self.grid_h == prev_h), f_temporal
        )
        one = 1 << cfg.tau_frac_bits
        bad = (
            (grid_size == 0)
            | (grid_size > cfg.grid_max)
            | (self.table_size == 0)
            | (self.table_size > cfg.n_max)
            | (self.tau_t > one)
            | (self.tau_s > one)
        )
        error_now = self.error | (start & bad)

        # ---- IN stage: one accepted token, its owner-map reads under way --------------------
        in_valid, in_aged, in_err = Signal(), Signal(), Signal()
        in_key = Signal(key_layout(cfg))
        in_pos, in_upos, in_last = Signal(16), Signal(16), Signal()
        in_tau_t, in_tau_s = Signal(wd.tau), Signal(wd.tau)
        in_table = Signal(range(cfg.n_max + 1))
        in_ex = Signal(3)  # candidate slot exists by position (temporal, left, up)
        in_d1 = Signal(3)  # the slot names the token just before (distance 1)
        in_d2 = Signal(3)  # the slot names the token two before (distance 2)
        m.d.comb += [own_t.addr.eq(in_pos), own_u.addr.eq(in_upos)]

        accept = Signal()
        m.d.comb += [
            self.keys.ready.eq(~in_valid & ~clear_pending),
            accept.eq(self.keys.valid & self.keys.ready),
        ]
        with m.If(accept):
            m.d.sync += [
                in_valid.eq(1),
                in_aged.eq(0),
                in_err.eq(error_now),
                in_key.eq(self.keys.payload),
                in_pos.eq(pos),
                in_upos.eq(pos - cur_w),
                in_last.eq(pos + 1 == cur_size),
                in_tau_t.eq(cur_tau_t),
                in_tau_s.eq(cur_tau_s),
                in_table.eq(cur_table),
                in_ex.eq(Cat(cur_temporal, col != 0, row != 0)),
                in_d1.eq(Cat(cur_size == 1, 1, cur_w == 1)),
                in_d2.eq(Cat(cur_size == 2, 0, cur_w == 2)),
            ]
            with m.If(start):
                m.d.sync += [
                    f_w.eq(self.grid_w),
                    f_h.eq(self.grid_h),
                    f_size.eq(grid_size),
                    f_tau_t.eq(self.tau_t),
                    f_tau_s.eq(self.tau_s),
                    f_table.eq(self.table_size),
                    f_temporal.eq(cur_temporal),
                    self.error.eq(error_now),
                ]
            # Advance the position; a complete frame without error gives the next one a
            # temporal candidate (every accepted token is decided, nothing aborts a frame).
            with m.If(pos + 1 == cur_size):
                m.d.sync += [pos.eq(0), col.eq(0), row.eq(0)]
                with m.If(~error_now):
                    m.d.sync += [temporal_ok.eq(1), prev_w.eq(cur_w), prev_h.eq(cur_h)]
            with m.Elif(col + 1 == cur_w):
                m.d.sync += [pos.eq(pos + 1), col.eq(0), row.eq(row + 1)]
            with m.Else():
                m.d.sync += [pos.eq(pos + 1), col.eq(col + 1)]
        with m.Elif(in_valid):
            m.d.sync += in_aged.eq(1)  # the owner data of in_pos / in_upos is valid from now on

        # ---- decision history -----------------------------------------------------------------
        # dec0: the last decided token (its cluster, whether it joined one), dec1 the one before.
        dec0_id, dec1_id = Signal(range(cfg.n_max)), Signal(range(cfg.n_max))
        dec0_ok, dec1_ok = Signal(), Signal()
        pd_new, pd_merge = Signal(), Signal()  # the last decision opened / joined a cluster
        pd_which = Signal(range(3))  # its candidate slot (joined / forced)
        pd_norm = Signal(unsigned(wd.sum_norm))  # |S|^2 and count it wrote
        pd_count = Signal(unsigned(cfg.count_bits))
        n_undec = Signal(range(3))  # tokens whose dot products started, not yet decided
        par_next = Signal()  # bank of the next token to start

        # ---- per-token banks (two tokens between start and decision at most) ----------------
        def bank(shape, name):
            return [Signal(shape, name=f"{name}{b}") for b in range(2)]

        b_key = bank(key_layout(cfg), "b_key")
        b_pos, b_last = bank(16, "b_pos"), bank(1, "b_last")
        b_tau_t, b_tau_s = bank(wd.tau, "b_tau_t"), bank(wd.tau, "b_tau_s")
        b_table = bank(range(cfg.n_max + 1), "b_table")
        b_ex, b_prev, b_pend = bank(3, "b_ex"), bank(3, "b_prev"), bank(1, "b_pend")
        b_id = [bank(range(cfg.n_max), f"b_id{i}_") for i in range(3)]

        # ---- start of a token's dot products ----------------------------------------------------
        rd_busy = Signal()  # chunk reads 1 .. G-1 of the started token pending
        rd_chunk = Signal(chunk_shape(cfg))
        go = Signal()
        m.d.comb += go.eq(in_valid & in_aged & ~in_err & ~rd_busy & (n_undec <= 1))
        pend = n_undec == 1  # the token before is not decided: its sum update is not seen
        hist_id = Mux(pend, dec0_id, dec1_id)
        hist_ok = Mux(pend, dec0_ok, dec1_ok)
        go_ids = [
            Mux(in_d2[0], hist_id, own_t.data.id),
            Mux(in_d2[2], hist_id, own_u.data.id),
        ]
        ok_t = Mux(in_d2[0], hist_ok, own_t.data.valid)
        ok_u = Mux(in_d2[2], hist_ok, own_u.data.valid)
        pb = ~par_next  # bank of the token before
        for j in range(3):
            spec = Mux(pick(b_prev, pb)[j], dec0_id, pick(b_id[j], pb))
            go_ids.append(Mux(pend, spec, dec0_id))
        rd_ids = [Signal(range(cfg.n_max), name=f"rd_id{i}") for i in range(5)]
        for i in range(5):
            m.d.comb += [
                table.cand[i].id.eq(Mux(go, go_ids[i], rd_ids[i])),
                table.cand[i].chunk.eq(Mux(go, 0, rd_chunk)),
            ]
        with m.If(go):
            m.d.sync += [
                in_valid.eq(0),
                par_next.eq(~par_next),
                rd_busy.eq(G > 1),
                rd_chunk.eq(1 % max(2, G)),
                *(r.eq(v) for r, v in zip(rd_ids, go_ids, strict=True)),
            ]
            for b in range(2):
                with m.If(par_next == b):
                    m.d.sync += [
                        b_key[b].eq(in_key),
                        b_pos[b].eq(in_pos),
                        b_last[b].eq(in_last),
                        b_tau_t[b].eq(in_tau_t),
                        b_tau_s[b].eq(in_tau_s),
                        b_table[b].eq(in_table),
                        b_ex[b].eq(
                            Cat(
                                in_ex[0] & (in_d1[0] | ok_t),
                                in_ex[1],
                                in_ex[2] & (in_d1[2] | ok_u),
                            )
                        ),
                        b_prev[b].eq(in_d1),
                        b_pend[b].eq(pend),
                        b_id[0][b].eq(go_ids[0]),
                        b_id[2][b].eq(go_ids[1]),
                    ]
        with m.If(rd_busy):
            m.d.sync += rd_chunk.eq(rd_chunk + 1)
            with m.If(rd_chunk == G - 1):
                m.d.sync += rd_busy.eq(0)

        # ---- dot products: one chunk of lanes per cycle, 5 sums + k.k_prev + |k|^2 ---------
        # Pipelined (MAC_STAGES = 2 registers before the accumulator): D, the cycle a chunk's
        # data arrive: the key chunks are selected and registered with the data (q1); P: the
        # products (DSP blocks, LUT products) and the first two adder-tree levels, registered
        # (q2); A: the rest of the trees and the accumulation.
        d_en, d_first, d_last, d_par = Signal(), Signal(), Signal(), Signal()
        d_chunk = Signal(chunk_shape(cfg))
        m.d.sync += [
            d_en.eq(go | rd_busy),
            d_first.eq(go),
            d_last.eq(Mux(go, G == 1, rd_chunk == G - 1)),
            d_chunk.eq(Mux(go, 0, rd_chunk)),
        ]
        with m.If(go):
            m.d.sync += d_par.eq(par_next)

        def key_chunk(key, chunk, name):
            kc = Signal(data.ArrayLayout(signed(cfg.bk), L), name=name)
            if G > 1:
                m.d.comb += kc.eq(Value.cast(key).word_select(chunk, L * cfg.bk))
            else:
                m.d.comb += kc.eq(key)
            return kc

        def stage(values, name):  # one register per value, same shape
            out = []
            for k, v in enumerate(values):
                v = Value.cast(v)
                r = Signal(v.shape(), name=f"{name}{k}")
                m.d.sync += r.eq(v)
                out.append(r)
            return out

        # q1: data and key chunks (the previous token's key bank may be refilled after D)
        kc_d = key_chunk(pick(b_key, d_par), d_chunk, "kc")
        kp_d = key_chunk(pick(b_key, ~d_par), d_chunk, "kp")
        q1_kc = stage([kc_d[l] for l in range(L)], "q1_kc")
        q1_kp = stage([kp_d[l] for l in range(L)], "q1_kp")
        q1_s = [stage([table.cand[i].data[l] for l in range(L)], f"q1_s{i}_") for i in range(5)]
        q1_en, q1_first, q1_last, q1_par = stage([d_en, d_first, d_last, d_par], "q1_ctl")
        # q2: products and two tree levels
        q2_lo, q2_hi = [], []
        for i in range(5):
            lo, hi = key_sum_terms(q1_kc, q1_s[i], L)
            q2_lo.append(stage(tree_levels(lo, 2), f"q2_lo{i}_"))
            q2_hi.append(stage(tree_levels(hi, 2), f"q2_hi{i}_") if hi else [])
        # The key x key products are small (bk x bk): shift-and-add in LUTs, no DSP blocks.
        q2_kk = stage(tree_levels([lut_mul(q1_kc[l], q1_kp[l]) for l in range(L)], 2), "q2_kk")
        q2_kn = stage(tree_levels([lut_mul(q1_kc[l], q1_kc[l]) for l in range(L)], 2), "q2_kn")
        acc_en, acc_first, acc_last, acc_par = stage([q1_en, q1_first, q1_last, q1_par], "acc")
        # A: accumulate
        full_par, acc_full = Signal(), Signal()
        acc = [Signal(signed(wd.dot), name=f"acc{i}") for i in range(5)]
        acc_kk = Signal(signed(wd.key_norm + 1))  # k . k_prev
        acc_kn = Signal(unsigned(wd.key_norm))  # |k|^2
        with m.If(acc_en):
            for i in range(5):
                part = tree_sum(q2_lo[i])
                if q2_hi[i]:
                    part = part + (tree_sum(q2_hi[i]) << 17)
                m.d.sync += acc[i].eq(Mux(acc_first, 0, acc[i]) + part)
            m.d.sync += [
                acc_kk.eq(Mux(acc_first, 0, acc_kk) + tree_sum(q2_kk)),
                acc_kn.eq(Mux(acc_first, 0, acc_kn) + tree_sum(q2_kn)),
            ]

        # ---- test section: T1 (resolve) | T2 .. T4 (screen stages 1-3) | DEC -------------------
        tst_par = Signal()  # bank of the token in T2 .. DEC
        t1 = Signal()
        decide = Signal()
        with m.FSM(name="test") as test_fsm:
            with m.State("IDLE"), m.If(t1):  # T1 is this state's last cycle
                m.next = "T2"
            with m.State("T2"):  # screen stage 1 (normalise)
                m.next = "T3"
            with m.State("T3"):  # screen stage 2 (squares, threshold products)
                m.next = "T4"
            with m.State("T4"):  # screen stage 3 (cosine compares, similarity products)
                m.next = "DEC"
            with m.State("DEC"), m.If(decide):  # until the decision (exact unit, backpressure)
                m.next = "IDLE"
        in_t4, in_dec = test_fsm.ongoing("T4"), test_fsm.ongoing("DEC")
        m.d.comb += t1.eq(acc_full & test_fsm.ongoing("IDLE"))
        with m.If(acc_en & acc_last):
            m.d.sync += [acc_full.eq(1), full_par.eq(acc_par)]
        with m.Elif(t1):
            m.d.sync += acc_full.eq(0)

        # meta reads of the own candidates: addresses one cycle before T1 (the token waiting
        # with its dot products done, else the one finishing them: the token that reaches T1
        # next), transparent, so the last decision's write is seen.
        next_par = Mux(acc_full, full_par, acc_par)
        for k, i in enumerate((TEMPORAL, UP)):
            m.d.comb += table.cand_meta[k].id.eq(pick(b_id[i], next_par))
        B = full_par
        t_pend = pick(b_pend, B)
        t_ex, t_prev = pick(b_ex, B), pick(b_prev, B)
        kk = acc_kk
        spec_sel = Signal(signed(wd.dot))
        with m.Switch(pd_which):
            for j in range(3):
                with m.Case(j):
                    m.d.comb += spec_sel.eq(acc[2 + j])
        prev_dot = Signal(signed(wd.dot))
        m.d.comb += prev_dot.eq(Mux(t_pend, Mux(pd_new, kk, spec_sel + kk), acc[2]))
        r_id = [Signal(range(cfg.n_max), name=f"r_id{i}") for i in range(3)]
        r_dot = [Signal(signed(wd.dot), name=f"r_dot{i}") for i in range(3)]
        r_norm = [Signal(unsigned(wd.sum_norm), name=f"r_norm{i}") for i in range(3)]
        r_count = [Signal(unsigned(cfg.count_bits), name=f"r_count{i}") for i in range(3)]
        r_elig = Signal(3)
        r_kn = Signal(unsigned(wd.key_norm))
        eligible = []
        for i in range(3):
            is_prev = t_prev[i]
            ex = t_ex[i] & (~is_prev | dec0_ok)
            if i == LEFT:  # always the token before
                cid, dot, norm, count = dec0_id, prev_dot, pd_norm, pd_count
            else:
                own = pick(b_id[i], B)
                meta = table.cand_meta[0 if i == TEMPORAL else 1].data
                corr = t_pend & pd_merge & dec0_ok & (dec0_id == own)
                own_dot = acc[0 if i == TEMPORAL else 1] + Mux(corr, kk, 0)
                cid = Mux(is_prev, dec0_id, own)
                dot = Signal(signed(wd.dot), name=f"t1_dot{i}")
                m.d.comb += dot.eq(Mux(is_prev, prev_dot, own_dot))
                norm = Mux(is_prev, pd_norm, meta.norm)
                count = Mux(is_prev, pd_count, meta.count)
            el = Signal(name=f"t1_elig{i}")
            m.d.comb += el.eq(ex & (count != cfg.count_max))
            eligible.append(el)
            m.d.comb += [cmp.dot[i].eq(r_dot[i]), cmp.norm[i].eq(r_norm[i])]
            with m.If(t1):
                m.d.sync += [r_id[i].eq(cid), r_dot[i].eq(dot), r_norm[i].eq(norm)]
                m.d.sync += r_count[i].eq(count)
        # The screen takes the registered T1 results (stage 1 in T2), its taus one cycle ahead.
        m.d.comb += [
            cmp.key_norm.eq(r_kn),
            cmp.tau_t.eq(pick(b_tau_t, B)),
            cmp.tau_s.eq(pick(b_tau_s, B)),
        ]
        with m.If(t1):
            m.d.sync += [r_elig.eq(Cat(*eligible)), r_kn.eq(acc_kn), tst_par.eq(B)]

        # The mantissa screen runs freely: keep its DEC-cycle outputs while the decision waits
        # (an exact recompute, result backpressure, or the sum update engine still busy).
        dec_fresh = Signal()
        m.d.sync += dec_fresh.eq(in_t4)
        live = (cmp.passed, cmp.sure, cmp.more, cmp.more_sure)
        held = [Signal(3, name=f"held_{n}") for n in ("pass", "sure", "more", "msure")]
        c_pass, c_sure, c_more, c_msure = cur = [
            Signal(3, name=f"cur_{n}") for n in ("pass", "sure", "more", "msure")
        ]
        for c, lv, h in zip(cur, live, held, strict=True):
            m.d.comb += c.eq(Mux(dec_fresh, lv, h))
            m.d.sync += h.eq(c)

        # Resolution: the first eligible candidate whose test passes; if none and the table is
        # full, the most similar (walk 0 -> 1 -> 2: more(1, 0), then more(2, best)).  A result
        # the walk needs that the screen left unsure is recomputed exactly (`need`, item 0-2:
        # cosine test i; 3-5: the comparison PAIRS[item - 3]); the decision waits for it.
        el = r_elig
        cos_need = Signal()
        cos_item = Signal(range(3))
        joined = Signal()
        join_idx = Signal(range(3))
        with m.If(el[0] & ~c_sure[0]):
            m.d.comb += [cos_need.eq(1), cos_item.eq(0)]
        with m.Elif(el[0] & c_pass[0]):
            m.d.comb += [joined.eq(1), join_idx.eq(0)]
        with m.Elif(el[1] & ~c_sure[1]):
            m.d.comb += [cos_need.eq(1), cos_item.eq(1)]
        with m.Elif(el[1] & c_pass[1]):
            m.d.comb += [joined.eq(1), join_idx.eq(1)]
        with m.Elif(el[2] & ~c_sure[2]):
            m.d.comb += [cos_need.eq(1), cos_item.eq(2)]
        with m.Elif(el[2] & c_pass[2]):
            m.d.comb += [joined.eq(1), join_idx.eq(2)]
        full = n_used >= pick(b_table, tst_par)
        best01 = Signal(range(3))  # best of candidates 0 and 1 (0 if neither is eligible)
        best = Signal(range(3))
        need10 = Signal()  # the first comparison is unsure
        need2 = Signal()  # the second one is
        item2 = Signal(range(6))
        j10, j20, j21 = (3 + PAIRS.index(p) for p in ((1, 0), (2, 0), (2, 1)))
        with m.If(el[0] & el[1]):
            m.d.comb += [
                need10.eq(~c_msure[j10 - 3]),
                best01.eq(Mux(c_more[j10 - 3], 1, 0)),
            ]
        with m.Elif(el[1]):
            m.d.comb += best01.eq(1)
        with m.If(el[2] & (el[0] | el[1])):
            vs1 = best01 == 1
            more2 = Mux(vs1, c_more[j21 - 3], c_more[j20 - 3])
            sure2 = Mux(vs1, c_msure[j21 - 3], c_msure[j20 - 3])
            m.d.comb += [
                need2.eq(~sure2),
                item2.eq(Mux(vs1, j21, j20)),
                best.eq(Mux(more2, 2, best01)),
            ]
        with m.Elif(el[2]):
            m.d.comb += best.eq(2)
        with m.Else():
            m.d.comb += best.eq(best01)
        forced = ~cos_need & ~joined & full & (el != 0)
        need = Signal()
        need_item = Signal(range(6))
        m.d.comb += [
            need.eq(cos_need | (forced & (need10 | need2))),
            need_item.eq(Mux(cos_need, cos_item, Mux(need10, j10, item2))),
        ]

        # ---- exact recompute of one unsure result (shared, time-multiplexed) ----------------
        # A result found unsure in DEC is registered (``rc_item``) and the exact unit starts in
        # the next cycle (``rc_pend``), so that its operands come from registers.
        rc_item = Signal(range(6))
        rc_neg = Signal()  # a comparison of two negative dot products: more <=> L < R
        rc_pend = Signal()
        rc_req = Signal()
        m.d.comb += [rc_req.eq(in_dec & need & ~exact.busy & ~rc_pend), exact.start.eq(rc_pend)]
        op = exact.operand

        def mag(v):
            return Mux(v < 0, -v, v)[:op]

        t_sq = [lut_mul(pick(b_tau_t, tst_par), pick(b_tau_t, tst_par))]
        t_sq.append(lut_mul(pick(b_tau_s, tst_par), pick(b_tau_s, tst_par)))
        with m.Switch(rc_item):
            for i in range(3):  # (k.S)^2 2^(2F) >= T^2 |k|^2 |S|^2
                with m.Case(i):
                    m.d.comb += [
                        exact.x[0].eq(mag(r_dot[i])),
                        exact.x[1].eq(mag(r_dot[i])),
                        exact.x[2].eq(1 << (2 * cfg.tau_frac_bits)),
                        exact.y[0].eq(t_sq[0 if i == TEMPORAL else 1]),
                        exact.y[1].eq(r_kn),
                        exact.y[2].eq(r_norm[i]),
                    ]
            for j, (a, b) in enumerate(PAIRS):  # (k.S_a)^2 |S_b|^2 vs (k.S_b)^2 |S_a|^2
                with m.Case(3 + j):
                    m.d.comb += [
                        exact.x[0].eq(mag(r_dot[a])),
                        exact.x[1].eq(mag(r_dot[a])),
                        exact.x[2].eq(r_norm[b]),
                        exact.y[0].eq(mag(r_dot[b])),
                        exact.y[1].eq(mag(r_dot[b])),
                        exact.y[2].eq(r_norm[a]),
                    ]
        with m.If(rc_req):
            neg = Signal()
            with m.Switch(need_item):
                for j, (a, _) in enumerate(PAIRS):
                    with m.Case(3 + j):
                        m.d.comb += neg.eq(r_dot[a] < 0)
            m.d.sync += [rc_item.eq(need_item), rc_neg.eq(neg), rc_pend.eq(1)]
        with m.If(rc_pend):
            m.d.sync += [rc_pend.eq(0), self.exact_count.eq(self.exact_count + 1)]
        with m.If(exact.done), m.Switch(rc_item):  # overrides the hold above
            for i in range(3):
                with m.Case(i):
                    m.d.sync += [held[0][i].eq(exact.ge), held[1][i].eq(1)]
            for j in range(3):
                with m.Case(3 + j):
                    m.d.sync += [
                        held[2][j].eq(Mux(rc_neg, exact.lt, exact.gt)),
                        held[3][j].eq(1),
                    ]

        # ---- sum update engine: S += k over G chunks, read-modify-write --------------------
        upd_rd, upd_wr = Signal(), Signal()
        upd_chunk, upd_wchunk = Signal(chunk_shape(cfg)), Signal(chunk_shape(cfg))
        upd_id, upd_new = Signal(range(cfg.n_max)), Signal()
        upd_key = Signal(key_layout(cfg))
        upd_start = Signal()
        choice = Signal(range(cfg.n_max))
        rd_upd_chunk = Mux(upd_start, 0, upd_chunk)
        m.d.comb += [
            table.upd.id.eq(Mux(upd_start, choice, Mux(upd_rd, upd_id, wb.sum.id))),
            table.upd.chunk.eq(Mux(upd_start | upd_rd, rd_upd_chunk, wb.sum.chunk)),
            wb.sum_grant.eq(~upd_start & ~upd_rd),
        ]
        m.d.sync += [upd_wr.eq(upd_start | upd_rd), upd_wchunk.eq(rd_upd_chunk)]
        with m.If(upd_rd):
            m.d.sync += upd_chunk.eq(upd_chunk + 1)
            with m.If(upd_chunk == G - 1):
                m.d.sync += upd_rd.eq(0)
        upd_key_chunk = key_chunk(upd_key, upd_wchunk, "upd_key_chunk")
        m.d.comb += [
            table.wr.en.eq(upd_wr),
            table.wr.id.eq(upd_id),
            table.wr.chunk.eq(upd_wchunk),
        ]
        for l in range(L):
            old = Mux(upd_new, 0, table.upd.data[l])
            m.d.comb += table.wr.data[l].eq(old + upd_key_chunk[l])

        # ---- write-back queue: each cluster at most once (dirty bits) ------------------------
        m.d.comb += [
            queue.update.eq(upd_wr & (upd_wchunk == G - 1)),
            queue.update_id.eq(upd_id),
        ]
        wiring.connect(m, queue.ids, wb.ids)
        m.d.comb += [
            wb.sum.data.eq(table.upd.data),
            table.wb_meta.id.eq(wb.meta.id),
            wb.meta.data.eq(table.wb_meta.data),
            wb.bias_scale.eq(self.bias_scale),
        ]
        wiring.connect(m, wiring.flipped(self.writeback), wb.write)

        drained = ~upd_rd & ~upd_wr & queue.empty & ~wb.busy
        empty = ~in_valid & (n_undec == 0)
        m.d.comb += self.idle.eq(empty & drained)

        # ---- the decision -------------------------------------------------------------------
        status = Signal(2)
        which = Signal(range(3))  # the candidate joined (JOINED / FORCED)
        with m.If(joined):
            m.d.comb += [status.eq(JOINED), which.eq(join_idx)]
        with m.Elif(~full):
            m.d.comb += status.eq(NEW)
        with m.Elif(el != 0):
            m.d.comb += [status.eq(FORCED), which.eq(best)]
        with m.Else():
            m.d.comb += status.eq(DROPPED)
        with m.Switch(status):
            with m.Case(NEW):
                m.d.comb += choice.eq(n_used)
            with m.Case(DROPPED):
                m.d.comb += choice.eq(0)
            with m.Default(), m.Switch(which):
                for i in range(3):
                    with m.Case(i):
                        m.d.comb += choice.eq(r_id[i])
        # Each candidate's |S + k|^2 and n + 1, formed in T2 (r_* are set in T1) and kept.
        nn = [Signal(unsigned(wd.sum_norm), name=f"nn{i}") for i in range(3)]
        nc = [Signal(unsigned(cfg.count_bits), name=f"nc{i}") for i in range(3)]
        for i in range(3):
            m.d.sync += [nn[i].eq(r_norm[i] + 2 * r_dot[i] + r_kn), nc[i].eq(r_count[i] + 1)]
        norm_w = Signal(unsigned(wd.sum_norm))
        count_w = Signal(unsigned(cfg.count_bits))
        with m.Switch(which):
            for i in range(3):
                with m.Case(i):
                    m.d.comb += [norm_w.eq(nn[i]), count_w.eq(nc[i])]
        dropped = status == DROPPED
        new = status == NEW
        new_norm = Signal(unsigned(wd.sum_norm))
        new_count = Signal(unsigned(cfg.count_bits))
        m.d.comb += [
            new_norm.eq(Mux(new, r_kn, norm_w)),
            new_count.eq(Mux(new, 1, count_w)),
        ]
        m.d.comb += [
            decide.eq(in_dec & ~need & result_free & ~upd_rd),
            upd_start.eq(decide & ~dropped),
        ]
        with m.If(decide):
            m.d.sync += [
                self.result.valid.eq(1),
                self.result.payload.id.eq(choice),
                self.result.payload.status.eq(status),
                self.result.payload.last.eq(pick(b_last, tst_par)),
                dec0_id.eq(choice),
                dec0_ok.eq(~dropped),
                dec1_id.eq(dec0_id),
                dec1_ok.eq(dec0_ok),
                pd_new.eq(new),
                pd_merge.eq((status == JOINED) | (status == FORCED)),
                pd_which.eq(which),
                pd_norm.eq(new_norm),
                pd_count.eq(new_count),
            ]
            m.d.comb += [
                own_wr.en.eq(1),
                own_wr.addr.eq(pick(b_pos, tst_par)),
                own_wr.data.valid.eq(~dropped),
                own_wr.data.id.eq(choice),
                table.wr_meta.en.eq(~dropped),
                table.wr_meta.id.eq(choice),
                table.wr_meta.data.norm.eq(new_norm),
                table.wr_meta.data.count.eq(new_count),
            ]
            with m.If(new):
                m.d.sync += n_used.eq(n_used + 1)
        with m.If(upd_start):
            m.d.sync += [
                upd_rd.eq(G > 1),
                upd_chunk.eq(1 % max(2, G)),
                upd_id.eq(choice),
                upd_new.eq(new),
                upd_key.eq(pick(b_key, tst_par)),
            ]
        m.d.sync += n_undec.eq(n_undec + go - decide)

        # ---- error tokens: answered once everything before them is decided -------------------
        with m.If(in_valid & in_err & (n_undec == 0) & result_free):
            m.d.sync += [
                in_valid.eq(0),
                self.result.valid.eq(1),
                self.result.payload.id.eq(0),
                self.result.payload.status.eq(DROPPED),
                self.result.payload.last.eq(0),
            ]

        # ---- clear: once every accepted token is finished and written back ------------------
        with m.If(clear_pending & empty & drained):
            m.d.sync += [
                clear_pending.eq(self.clear),
                n_used.eq(0),
                temporal_ok.eq(0),
                self.error.eq(0),
                pos.eq(0),
                col.eq(0),
                row.eq(0),
                dec0_ok.eq(0),
                dec1_ok.eq(0),
            ]
        return m
