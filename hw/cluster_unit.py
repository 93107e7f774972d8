"""DRE clustering unit: temporal/spatial clustering of streamed keys with the centroid table."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import one_hot_select
from hw.centroid_table import META_READ_LATENCY, CentroidTable, chunk_shape, meta_layout
from hw.cluster_cosine import LATENCY as COMPARE_LATENCY
from hw.cluster_cosine import ClusterCompare, check_mantissa_bits
from hw.cluster_decide import TEMPORAL, UP, ClusterDecide
from hw.cluster_dots import LATENCY as DOTS_LATENCY
from hw.cluster_dots import ClusterDots, key_chunk_layout, key_layout
from hw.cluster_frame import TokenFramer
from hw.cluster_owner import READ_LATENCY as OWNER_READ_LATENCY
from hw.cluster_owner import OwnerMap
from hw.cluster_queue import WritebackQueue
from hw.cluster_resolve import CandidateResolve
from hw.cluster_threshold import ThresholdSquare
from hw.cluster_update import WRITE_DELAY, SumUpdate
from hw.cluster_writeback import ClusterWriteback
from hw.plane_store import PlaneWriteSignature
from model.dre.cluster import DROPPED, ClusterWidths
from model.dre.config import DREConfig, require_config

__all__ = ["ClusterUnit", "key_layout", "result_layout", "token_latency", "token_period"]


# A commit's sum update writes its chunk ``g`` in ``commit + WRITE_DELAY + g``
# (:data:`hw.cluster_update.WRITE_DELAY`), and a token that starts in ``s`` reads chunk ``g`` in
# ``s + g``: the table forwards the writes of the read's address cycle and the two after it
# (``CentroidTable`` ``wr_ahead``, ``ClusterDots``' q2), so the token sees the whole update iff
# ``s >= commit + 1``, none of it iff ``s <= commit``.
assert WRITE_DELAY <= 3
# Commits are at least the test section's COMPARE_LATENCY + 2 cycles apart (T1, the screen,
# DEC); SumUpdate needs WRITE_DELAY + 1 between its starts.
assert COMPARE_LATENCY + 2 > WRITE_DELAY
# The owner map's reads for a token starting in ``s`` were addressed in ``s - READ_LATENCY``
# and see the commits up to ``s - READ_LATENCY - 1``.  Candidates one and two tokens back
# come from the history; the youngest read from the owner map, ``t - 3``, committed at least
# one commit spacing before ``t - 2``, which committed by ``s - 1`` (``n_undec <= 1``).
assert COMPARE_LATENCY + 2 >= OWNER_READ_LATENCY
# The meta reads of a token starting in ``s`` (its own candidates' |S|^2 and count) are
# addressed in ``s + 1`` and go into its bank in ``s + 1 + META_READ_LATENCY``; its T1 is in
# ``s + G + DOTS_LATENCY + 1`` or later (the last chunk's data in ``s + G``, done DOTS_LATENCY
# later), so the bank is loaded before T1 for every G >= 1.
assert META_READ_LATENCY <= DOTS_LATENCY


def _loop(cfg: DREConfig) -> int:
    """Cycles from a token's start to the earliest start of the token two after it: ``G`` chunk
    reads, the dot products' :data:`hw.cluster_dots.LATENCY`, T1, the screen's
    :data:`hw.cluster_cosine.LATENCY`, DEC, the commit (``docs/cluster.md``, "Where `P` comes
    from")."""
    return cfg.cl_groups + DOTS_LATENCY + COMPARE_LATENCY + 4


def token_period(cfg: DREConfig) -> float:
    """Cycles per token at full rate (no input gaps, no backpressure), on average:
    ``max(G, loop / 2, S)`` with ``G = d / cl_lanes``, ``loop = G + 15`` (the token loop, which
    two tokens share) and ``S = 9`` (the test section: T1, 7 screen stages, DEC), i.e. ``G``
    for ``G >= 15``, 11.5 at the default ``G = 64 / 8`` (the starts alternate 8 and 15 cycles
    apart; ``docs/cluster.md`` derives it).  A float: half a cycle where ``loop`` is odd and
    binds."""
    G = cfg.cl_groups
    return max(2 * G, _loop(cfg), 2 * (COMPARE_LATENCY + 2)) / 2


def token_latency(cfg: DREConfig) -> int:
    """Cycles from a token's acceptance to its result with the pipeline empty (no exact
    recompute, no backpressure): ``G + 16`` (``docs/cluster.md``): acceptance, the IN stage,
    ``G`` chunk reads, the dot products, T1, the screen and DEC."""
    return cfg.cl_groups + DOTS_LATENCY + COMPARE_LATENCY + 5


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
        a complete frame starts a new one.  A frame's first token is taken only while
        ``grid_w`` and ``grid_h`` equal their values of the three cycles before
        (:class:`hw.cluster_frame.TokenFramer`).
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
    clearing : Out(1)
        A ``clear`` is pending (registered, not carried out yet): with ``idle`` low, the table
        is about to be emptied.  (``keys.ready`` is also low for a few cycles after reset and
        after a grid change, :class:`hw.cluster_frame.TokenFramer`, without work in flight.)
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
    Throughput one token per ``token_period(cfg) = max(G, (G + 15) / 2, 9)`` cycles on average
    (without exact recomputes) (``G = d / cl_lanes``; ``G`` for ``G >= 15``, 11.5 at the
    default d = 64 on 8 clustering lanes), latency ``token_latency(cfg) = G + 16`` cycles from
    acceptance to the result.  Stages: ``accept | IN: owner-map reads (two cycles of latency,
    addressed from the acceptance on), T^2 of the thresholds | G chunk reads (5 sums) | q1:
    data registered |
    q2: bypass, DSP operands | q3: DSP products | q4: adder-tree levels | A: accumulate (5
    sums, k.k_prev, |k|^2) | T1: resolve | T2 .. T8: screen stages 1-7 | DEC | commit``
    (:data:`hw.cluster_dots.LATENCY` and :data:`hw.cluster_cosine.LATENCY` set the counts);
    the decision is registered in DEC (the result, the history) and applied one cycle later
    (commit: owner map, meta memory, start of the sum update).
    Token ``t+1`` starts its dot products as soon as the read ports
    are free and token ``t-1`` is committed, i.e. while token ``t`` is still being decided.  Its
    *left* candidate (and its up / temporal candidate on a grid 1 wide / of 1 token) is ``t``'s
    cluster, not known yet: ``t+1`` reads the sums of all three of ``t``'s candidates and
    computes ``k_{t+1}.k_t``; at T1, once ``t`` is decided, it takes ``k_{t+1}.S_c + k_{t+1}.k_t``
    for the candidate ``c`` that ``t`` joined, or ``k_{t+1}.k_t`` if ``t`` opened a cluster.
    If ``t`` is not committed before ``t+1`` starts, ``t``'s sum update starts writing after
    ``t+1``'s reads began, so ``t+1`` never sees it and corrects any of its own candidates
    equal to ``t``'s cluster by ``k_{t+1}.k_t``; every earlier update is complete in time
    (transparent table ports).  ``|S|^2`` and counts come from the table (registered reads in
    the cycle after the start, kept in the token's bank; they see every commit but ``t``'s) or,
    for ``t``'s cluster, from the decision's own registers.  Candidates two tokens back (grid
    width 2, frames of 2 tokens) come from the decision history instead of the owner map.  The
    decision waits for a free ``result`` register and a sum-update engine free in the commit
    cycle (``G`` cycles per update), and for the exact unit when the mantissa screen left a
    result it needs inside its guard band (:func:`hw.cluster_exact.exact_cycles` per
    recomputed result plus one, 211 at the default; rare).
    Write-backs run in the background from a queue of updated clusters (each id at most once).
    ``docs/cluster.md`` has the schedule and the hazard argument.

    Structure: :class:`hw.cluster_frame.TokenFramer` (acceptance, IN stage),
    :class:`hw.cluster_threshold.ThresholdSquare` (``T^2`` of the token's thresholds, exact and
    normalised, formed in IN and kept in its bank: the token loop reads them from registers),
    :class:`hw.cluster_dots.ClusterDots` (q1 .. q4, A), :class:`hw.cluster_resolve.CandidateResolve`
    (T1), :class:`hw.cluster_cosine.ClusterCompare` (T2 .. T8),
    :class:`hw.cluster_decide.ClusterDecide` (DEC, exact recomputes),
    :class:`hw.cluster_update.SumUpdate`, :class:`hw.cluster_queue.WritebackQueue`,
    :class:`hw.cluster_writeback.ClusterWriteback`, :class:`hw.centroid_table.CentroidTable`
    and :class:`hw.cluster_owner.OwnerMap`; this module holds the start of the dot products
    (candidate ids, the two per-token banks), the test section's ``m.FSM`` (IDLE / T2 .. T8 /
    DEC), the decision history, the result register and the clear.
    """

    def __init__(self, cfg: DREConfig, mantissa_bits: int = 17):
        require_config(cfg)
        check_mantissa_bits(mantissa_bits)
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
                "clearing": Out(1),
                "n_clusters": Out(range(cfg.n_max + 1)),
                "exact_count": Out(32),
            }
        )

    def elaborate(self, platform):
        cfg, wd = self.cfg, self.widths
        G, L = cfg.cl_groups, cfg.cl_lanes
        m = Module()

        # Sum read ports: 0 own temporal, 1 own up, 2..4 the previous token's three candidates.
        # The write-back engine reads the sums through the update engine's port when it is free.
        m.submodules.table = table = CentroidTable(
            cfg, ports=5, meta_ports=2, wb_port=False, bypass_out=True
        )
        m.submodules.framer = framer = TokenFramer(cfg)
        m.submodules.dots = dots = ClusterDots(cfg)
        m.submodules.compare = cmp = ClusterCompare(cfg, self.mantissa_bits)
        m.submodules.tsq = tsq = ThresholdSquare(cfg, self.mantissa_bits)
        m.submodules.resolve = res = CandidateResolve(cfg)
        m.submodules.decide = dcd = ClusterDecide(cfg)
        m.submodules.update = upd = SumUpdate(cfg)
        m.submodules.queue = queue = WritebackQueue(cfg)
        m.submodules.writeback = wb = ClusterWriteback(cfg)

        def pick(pair, bit):  # one of two banks by a parity bit
            return Mux(bit, pair[1], pair[0])

        # ---- owner map: per grid position, (valid, cluster) of the last visit ---------------
        # Read ports: 0 temporal (this position, previous frame), 1 up (the position one row
        # above, this frame); two cycles of latency, addressed from the token's acceptance on.
        m.submodules.owner = owner = OwnerMap(cfg, ports=2)
        own_t, own_u = owner.rd_data

        # ---- acceptance: the IN stage (one token, its owner-map reads under way) -------------
        n_used = Signal(range(cfg.n_max + 1))
        clear_pending = Signal()
        m.d.comb += self.n_clusters.eq(n_used)
        with m.If(self.clear):
            m.d.sync += clear_pending.eq(1)
        wiring.connect(m, wiring.flipped(self.keys), framer.keys)
        m.d.comb += [
            framer.grid_w.eq(self.grid_w),
            framer.grid_h.eq(self.grid_h),
            framer.tau_t.eq(self.tau_t),
            framer.tau_s.eq(self.tau_s),
            framer.table_size.eq(self.table_size),
            framer.hold.eq(clear_pending),
            self.error.eq(framer.error),
        ]
        tok, in_valid = framer.token, framer.valid
        m.d.comb += [owner.rd_addr[0].eq(framer.rd_pos), owner.rd_addr[1].eq(framer.rd_upos)]
        # T^2 of the token's thresholds, exact and normalised (ThresholdSquare, "Fmax, seventh
        # round"), formed while it waits in IN: a token starts only once aged (in IN since the
        # cycle before), so in its start cycle t_sq is its own, and t_mant .. t_zero are in the
        # cycle after; both go into its bank, and nothing in the token loop forms them.
        m.d.comb += [tsq.tau[0].eq(tok.tau_t), tsq.tau[1].eq(tok.tau_s)]

        # ---- result register ------------------------------------------------------------------
        with m.If(self.result.ready):
            m.d.sync += self.result.valid.eq(0)
        result_free = ~self.result.valid | self.result.ready

        # ---- decision history -----------------------------------------------------------------
        # pd_*: the last decision, registered in its cycle (the commit stage, below, applies it
        # one cycle later).  dec0: the last committed token (its cluster, whether it joined
        # one), dec1 the one before.
        # No reset on the data (ids, values, position, bank): each is read only where its valid
        # bit (dec0_ok, dec1_ok, pd_ok: reset, and cleared by a clear) or the commit says so.
        dec0_id = Signal(range(cfg.n_max), reset_less=True)
        dec1_id = Signal(range(cfg.n_max), reset_less=True)
        dec0_ok, dec1_ok = Signal(), Signal()
        pd_id = Signal(range(cfg.n_max), reset_less=True)  # its cluster
        pd_ok = Signal()  # not dropped
        # the last decision opened / joined a cluster, its candidate slot (joined / forced)
        pd_new, pd_merge = Signal(reset_less=True), Signal(reset_less=True)
        pd_sel = Signal(3, reset_less=True)  # one-hot ("Fmax, eighteenth round")
        pd_norm = Signal(unsigned(wd.sum_norm), reset_less=True)  # |S|^2 and count it writes
        pd_count = Signal(unsigned(cfg.count_bits), reset_less=True)
        pd_pos = Signal(16, reset_less=True)  # its grid position (owner map)
        pd_par = Signal(reset_less=True)  # its bank (key)
        commit = Signal()  # the decision of the previous cycle is applied in this one
        # commit & pd_ok, a register of its own ("Fmax, nineteenth round"): it starts the sum
        # update and enables the meta write, so the update's read address and `free_next` do not
        # begin with an AND of the two
        commit_ok = Signal()
        n_undec = Signal(range(3))  # tokens whose dot products started, not yet committed
        par_next = Signal()  # bank of the next token to start

        # ---- per-token banks (two tokens between start and decision at most) ----------------
        # No reset: a bank is loaded when its token starts (the normalised T^2 one cycle later,
        # at least G + 2 cycles before T1 reads it) and read for that token only (and as the
        # key of the token before by the next one, whose k.k_prev is used only when it started
        # with that token undecided, i.e. after it loaded the bank).
        def bank(shape, name):
            return [Signal(shape, name=f"{name}{b}", reset_less=True) for b in range(2)]

        b_key = bank(key_layout(cfg), "b_key")
        b_pos, b_last = bank(16, "b_pos"), bank(1, "b_last")
        # per threshold (0 tau_t, 1 tau_s): T^2 (the exact recompute's operand), loaded at the
        # start; its normalised mantissa, exponent and T == 0 (the screen's), one cycle later
        b_tsq = [bank(unsigned(2 * wd.tau), f"b_tsq{j}_") for j in range(2)]
        b_tm = [bank(self.mantissa_bits, f"b_tm{j}_") for j in range(2)]
        b_te = [bank(tsq.t_exp[j].shape(), f"b_te{j}_") for j in range(2)]
        b_tz = [bank(1, f"b_tz{j}_") for j in range(2)]
        b_table = bank(range(cfg.n_max + 1), "b_table")
        b_ex, b_prev, b_pend = bank(3, "b_ex"), bank(3, "b_prev"), bank(1, "b_pend")
        b_id = [bank(range(cfg.n_max), f"b_id{i}_") for i in range(3)]

        # ---- start of a token's dot products ----------------------------------------------------
        rd_busy = Signal()  # chunk reads 1 .. G-1 of the started token pending
        rd_chunk = Signal(chunk_shape(cfg))
        go = Signal()
        m.d.comb += go.eq(framer.aged & ~tok.err & ~rd_busy & (n_undec <= 1))
        # the token before is not committed: its sum update is not seen.  `n_undec == 1` as a
        # register of its own (twenty-second round): it selects the read ids of the history
        # candidates, whose addresses fan out to the sum memory's block RAMs
        pend = Signal()
        hist_id = Mux(pend, dec0_id, dec1_id)
        hist_ok = Mux(pend, dec0_ok, dec1_ok)
        go_ids = [
            Mux(tok.d2[0], hist_id, own_t.id),
            Mux(tok.d2[2], hist_id, own_u.id),
        ]
        ok_t = Mux(tok.d2[0], hist_ok, own_t.valid)
        ok_u = Mux(tok.d2[2], hist_ok, own_u.valid)
        pb = ~par_next  # bank of the token before
        for j in range(3):
            spec = Mux(pick(b_prev, pb)[j], dec0_id, pick(b_id[j], pb))
            go_ids.append(Mux(pend, spec, dec0_id))
        rd_ids = [Signal(range(cfg.n_max), name=f"rd_id{i}", reset_less=True) for i in range(5)]
        # The read address is the started token's unless chunk reads are pending: the ports
        # read in every cycle and a read is used only at a start or while rd_busy (go needs
        # ~rd_busy), so `go`'s logic is not before the address ("Fmax, eighteenth round").
        for i in range(5):
            m.d.comb += [
                table.cand[i].id.eq(Mux(rd_busy, rd_ids[i], go_ids[i])),
                table.cand[i].chunk.eq(Mux(rd_busy, rd_chunk, 0)),
            ]
        with m.If(go):
            m.d.sync += [
                par_next.eq(~par_next),
                rd_busy.eq(G > 1),
                rd_chunk.eq(1 % max(2, G)),
                *(r.eq(v) for r, v in zip(rd_ids, go_ids, strict=True)),
            ]
            for b in range(2):
                with m.If(par_next == b):
                    m.d.sync += [
                        b_key[b].eq(tok.key),
                        b_pos[b].eq(tok.pos),
                        b_last[b].eq(tok.last),
                        *(b_tsq[j][b].eq(tsq.t_sq[j]) for j in range(2)),
                        b_table[b].eq(tok.table),
                        b_ex[b].eq(
                            Cat(
                                tok.ex[0] & (tok.d1[0] | ok_t),
                                tok.ex[1],
                                tok.ex[2] & (tok.d1[2] | ok_u),
                            )
                        ),
                        b_prev[b].eq(tok.d1),
                        b_pend[b].eq(pend),
                        b_id[0][b].eq(go_ids[0]),
                        b_id[2][b].eq(go_ids[1]),
                    ]
        with m.If(rd_busy):
            m.d.sync += rd_chunk.eq(rd_chunk + 1)
            with m.If(rd_chunk == G - 1):
                m.d.sync += rd_busy.eq(0)

        # ---- dot products (ClusterDots): D, the cycle a chunk's data arrive ------------------
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
        # the cycle after the start (d_first): the normalised T^2 of the started token (T1 is
        # G + 3 cycles or more after the start)
        for b in range(2):
            with m.If(d_first & (d_par == b)):
                for j in range(2):
                    m.d.sync += [
                        b_tm[j][b].eq(tsq.t_mant[j]),
                        b_te[j][b].eq(tsq.t_exp[j]),
                        b_tz[j][b].eq(tsq.t_zero[j]),
                    ]

        # Meta reads of the own candidates (|S|^2 and count; "Fmax, twelfth round"): addressed
        # in the cycle after the start, from the bank's registered ids, registered
        # (META_READ_LATENCY), then loaded into the token's bank for T1.  A read in s + 1 sees
        # the commits up to s, so every decision before the token before (committed by s - 1:
        # n_undec <= 1 at the start); the token before's own write it may miss or collide
        # with, and CandidateResolve takes that decision's registers instead.
        b_meta = [bank(meta_layout(cfg), f"b_meta{k}_") for k in range(2)]
        m_load = [Signal(name=f"meta_load{n}") for n in range(META_READ_LATENCY)]
        m_par = [Signal(name=f"meta_par{n}", reset_less=True) for n in range(META_READ_LATENCY)]
        m.d.sync += [m_load[0].eq(d_first), m_par[0].eq(d_par)]
        for n in range(1, META_READ_LATENCY):
            m.d.sync += [m_load[n].eq(m_load[n - 1]), m_par[n].eq(m_par[n - 1])]
        for k, i in enumerate((TEMPORAL, UP)):
            m.d.comb += table.cand_meta[k].id.eq(pick(b_id[i], d_par))
            for b in range(2):
                with m.If(m_load[-1] & (m_par[-1] == b)):
                    m.d.sync += b_meta[k][b].eq(table.cand_meta[k].data)

        def key_chunk(key, chunk, name):
            kc = Signal(key_chunk_layout(cfg), name=name)
            if G > 1:
                m.d.comb += kc.eq(Value.cast(key).word_select(chunk, L * cfg.bk))
            else:
                m.d.comb += kc.eq(key)
            return kc

        # (the previous token's key bank may be refilled after D: the pipeline registers it)
        m.d.comb += [
            dots.en.eq(d_en),
            dots.first.eq(d_first),
            dots.last.eq(d_last),
            dots.tag.eq(d_par),
            dots.key.eq(key_chunk(pick(b_key, d_par), d_chunk, "kc")),
            dots.key_prev.eq(key_chunk(pick(b_key, ~d_par), d_chunk, "kp")),
            *(dots.sums[i].eq(table.cand[i].data) for i in range(5)),
            *(dots.hit[i].eq(table.cand_hit[i]) for i in range(5)),
            dots.fwd.eq(table.wr_last),
            dots.wdata.eq(upd.write.data),
        ]

        # ---- test section: T1 (resolve) | T2 .. T8 (screen stages 1-7) | DEC -------------------
        tst_par = Signal()  # bank of the token in T2 .. DEC
        full_par, acc_full = Signal(), Signal()  # a token's dot products wait for T1
        t1 = Signal()
        decide = Signal()
        # the screen's stages: T2 .. T(COMPARE_LATENCY + 1), then DEC
        screen = [f"T{n + 2}" for n in range(COMPARE_LATENCY)]
        with m.FSM(name="test") as test_fsm:
            with m.State("IDLE"), m.If(t1):  # T1 is this state's last cycle
                m.next = screen[0]
            for n, name in enumerate(screen):
                with m.State(name):  # screen stage n + 1
                    m.next = screen[n + 1] if n + 1 < len(screen) else "DEC"
            with m.State("DEC"), m.If(decide):  # until the decision (exact unit, backpressure)
                m.next = "IDLE"
        in_last, in_dec = test_fsm.ongoing(screen[-1]), test_fsm.ongoing("DEC")
        m.d.comb += t1.eq(acc_full & test_fsm.ongoing("IDLE"))
        # The bank values that pick T1's options (pend, prev, ex, the own ids) are copied into
        # registers of their own when the token's dot products are done ("Fmax, eighteenth
        # round"), so that no bank multiplexer lies before those conditions.  The bank is not
        # reloaded before T1: the token two after it starts only once it is committed.
        t1_pend = Signal(reset_less=True)
        t1_ex, t1_prev = Signal(3, reset_less=True), Signal(3, reset_less=True)
        t1_own = [Signal(range(cfg.n_max), name=f"t1_own{k}", reset_less=True) for k in range(2)]
        with m.If(dots.done):
            done = dots.done_tag
            m.d.sync += [
                acc_full.eq(1),
                full_par.eq(done),
                t1_pend.eq(pick(b_pend, done)),
                t1_ex.eq(pick(b_ex, done)),
                t1_prev.eq(pick(b_prev, done)),
                t1_own[0].eq(pick(b_id[TEMPORAL], done)),
                t1_own[1].eq(pick(b_id[UP], done)),
            ]
        with m.Elif(t1):
            m.d.sync += acc_full.eq(0)

        # T1 (CandidateResolve): the candidates of the token in bank B, registered for T2.
        B = full_par
        m.d.comb += [
            res.load.eq(t1),
            res.pend.eq(t1_pend),
            res.ex.eq(t1_ex),
            res.prev.eq(t1_prev),
            res.own_id[0].eq(t1_own[0]),
            res.own_id[1].eq(t1_own[1]),
            res.meta[0].eq(pick(b_meta[0], B)),
            res.meta[1].eq(pick(b_meta[1], B)),
            res.last_id.eq(pd_id),
            res.last_ok.eq(pd_ok),
            res.last_new.eq(pd_new),
            res.last_merge.eq(pd_merge),
            res.last_sel.eq(pd_sel),
            res.last_norm.eq(pd_norm),
            res.last_count.eq(pd_count),
            *(res.acc[i].eq(dots.dot[i]) for i in range(5)),
            *(res.acc_neg[i].eq(dots.dot_neg[i]) for i in range(5)),
            *(res.acc_kk[i].eq(dots.dot_kk[i]) for i in range(5)),
            *(res.acc_kk_neg[i].eq(dots.dot_kk_neg[i]) for i in range(5)),
            res.kk.eq(dots.kk),
            res.kk_neg.eq(dots.kk_neg),
            res.kn.eq(dots.kn),
        ]
        r_id, r_dot, r_norm, r_kn = res.id, res.dot, res.norm, res.key_norm
        for i in range(3):
            m.d.comb += [
                cmp.dot[i].eq(res.screen_dot[i]),
                cmp.mag[i].eq(res.screen_mag[i]),
                cmp.norm[i].eq(res.screen_norm[i]),
                cmp.mag_nz[i].eq(res.screen_mag_nz[i]),
                cmp.norm_nz[i].eq(res.screen_norm_nz[i]),
                dcd.dot[i].eq(r_dot[i]),
                dcd.mag[i].eq(res.mag[i]),
                dcd.norm[i].eq(r_norm[i]),
            ]
        # The screen takes the registered T1 results (stage 1 in T2: T1's copies for it, which
        # placement puts beside it, "Fmax, fourteenth round"), its threshold operands one cycle
        # ahead (stage 0 registers them: the bank's, loaded before T1).
        m.d.comb += [
            cmp.key_norm.eq(res.screen_key_norm),
            cmp.key_norm_nz.eq(res.screen_key_norm_nz),
        ]
        for j in range(2):
            m.d.comb += [
                cmp.t_mant[j].eq(pick(b_tm[j], B)),
                cmp.t_exp[j].eq(pick(b_te[j], B)),
                cmp.t_zero[j].eq(pick(b_tz[j], B)),
            ]
        with m.If(t1):
            m.d.sync += tst_par.eq(B)

        # ---- the decision (ClusterDecide): the screen runs freely, its DEC-cycle outputs are
        # kept while the decision waits (exact recompute, result backpressure, busy update).
        # full: registered ("Fmax, eleventh round"); in DEC it is the value of the cycle before,
        # which is final: tst_par is set at T1, and n_used changed at the latest in the cycle
        # after the previous decision, before this token's T1 (one token in T1 .. DEC at a time)
        full = Signal()
        dec_fresh = Signal()
        m.d.sync += [dec_fresh.eq(in_last), full.eq(n_used >= pick(b_table, tst_par))]
        m.d.comb += [
            dcd.fresh.eq(dec_fresh),
            dcd.passed.eq(cmp.passed),
            dcd.sure.eq(cmp.sure),
            dcd.more.eq(cmp.more),
            dcd.more_sure.eq(cmp.more_sure),
            dcd.active.eq(in_dec),
            dcd.elig.eq(res.elig),
            dcd.full.eq(full),
            dcd.key_norm.eq(r_kn),
            *(dcd.t_sq[j].eq(pick(b_tsq[j], tst_par)) for j in range(2)),
            self.exact_count.eq(dcd.exact_count),
        ]
        # The decided id, |S|^2 and count as AND-OR of the decision's one-hot outcome ("Fmax,
        # seventeenth round"): the ids, sums and counts are registers of T1, only the
        # selects come from the screen's results.
        status, sel, new = dcd.status, dcd.sel, dcd.new

        def decided(values, opened):  # the joined candidate's value, or `opened` if NEW
            return one_hot_select([*zip(sel, values, strict=True), (new, opened)])

        choice = Signal(range(cfg.n_max))
        new_norm = Signal(unsigned(wd.sum_norm))
        new_count = Signal(unsigned(cfg.count_bits))
        m.d.comb += [
            choice.eq(decided(r_id, n_used)),
            new_norm.eq(decided(res.new_norm, r_kn)),
            new_count.eq(decided(res.new_count, 1)),
        ]
        merge = sel != 0
        # The decision waits until the sum update engine can start in the next cycle (commit).
        m.d.comb += decide.eq(in_dec & dcd.ready & result_free & upd.free_next)
        m.d.sync += [commit.eq(decide), commit_ok.eq(decide & (merge | new))]
        # The decision's registers are loaded in every DEC cycle, not only at the decision
        # ("Fmax, twelfth round"): the last load is the decision's, and nothing reads the
        # previous decision's pd_* once this token is in DEC (its commit and this token's T1,
        # which do, come before).  The result's payload likewise, whenever the result register
        # is free; its valid bit is set at the decision only.  So the walk that forms `decide`
        # reaches the data of these registers, not the enables of about a hundred of them.
        with m.If(in_dec):
            m.d.sync += [
                pd_id.eq(choice),
                pd_ok.eq(merge | new),
                pd_new.eq(new),
                pd_merge.eq(merge),
                pd_sel.eq(sel),
                pd_norm.eq(new_norm),
                pd_count.eq(new_count),
                pd_pos.eq(pick(b_pos, tst_par)),
                pd_par.eq(tst_par),
            ]
            with m.If(result_free):
                m.d.sync += [
                    self.result.payload.id.eq(choice),
                    self.result.payload.status.eq(status),
                    self.result.payload.last.eq(pick(b_last, tst_par)),
                ]
        with m.If(decide):
            m.d.sync += self.result.valid.eq(1)
            with m.If(new):
                m.d.sync += n_used.eq(n_used + 1)

        # ---- commit: the registered decision goes to the owner map, the meta memory, the sum
        # update engine and the history one cycle after it ("Fmax, sixth round"), so the
        # decision's logic does not fan out across the device in its own cycle.
        with m.If(commit):
            m.d.sync += [
                dec0_id.eq(pd_id),
                dec0_ok.eq(pd_ok),
                dec1_id.eq(dec0_id),
                dec1_ok.eq(dec0_ok),
            ]
            m.d.comb += owner.wr_en.eq(1)
        m.d.comb += table.wr_meta.en.eq(commit_ok)
        m.d.comb += [
            owner.wr_addr.eq(pd_pos),
            owner.wr_data.valid.eq(pd_ok),
            owner.wr_data.id.eq(pd_id),
            table.wr_meta.id.eq(pd_id),
            table.wr_meta.data.norm.eq(pd_norm),
            table.wr_meta.data.count.eq(pd_count),
        ]
        n_undec_next = n_undec + go - commit
        m.d.sync += [n_undec.eq(n_undec_next), pend.eq(n_undec_next == 1)]

        # ---- sum update (SumUpdate) and write-back (WritebackQueue, ClusterWriteback) --------
        m.d.comb += [
            upd.start.eq(commit_ok),
            upd.id.eq(pd_id),
            upd.opened.eq(pd_new),
            upd.key.eq(pick(b_key, pd_par)),
        ]
        wiring.connect(m, upd.read, table.upd)
        wiring.connect(m, upd.write, table.wr)
        for n in range(2):
            wiring.connect(m, upd.ahead[n], table.wr_ahead[n])
        wiring.connect(m, wb.sum, upd.wb_read)
        m.d.comb += [
            wb.sum_grant.eq(upd.wb_grant),
            queue.update.eq(upd.updated),
            queue.update_id.eq(upd.updated_id),
        ]
        wiring.connect(m, queue.ids, wb.ids)
        m.d.comb += [
            table.wb_meta.id.eq(wb.meta.id),
            wb.meta.data.eq(table.wb_meta.data),
            wb.bias_scale.eq(self.bias_scale),
        ]
        wiring.connect(m, wiring.flipped(self.writeback), wb.write)

        # upd.idle does not count a start in this cycle: a start is a commit, when n_undec >= 1
        # and `empty` is low ("Fmax, twelfth round": the commit -> start -> idle -> the top's
        # query ready path)
        drained = upd.idle & queue.empty & ~wb.busy
        empty = ~in_valid & (n_undec == 0)
        m.d.comb += [self.idle.eq(empty & drained), self.clearing.eq(clear_pending)]

        # ---- error tokens: answered once everything before them is decided -------------------
        err_answer = Signal()
        m.d.comb += [
            err_answer.eq(in_valid & tok.err & (n_undec == 0) & result_free),
            framer.take.eq(go | err_answer),
        ]
        with m.If(err_answer):
            m.d.sync += [
                self.result.valid.eq(1),
                self.result.payload.id.eq(0),
                self.result.payload.status.eq(DROPPED),
                self.result.payload.last.eq(0),
            ]

        # ---- clear: once every accepted token is finished and written back ------------------
        with m.If(clear_pending & empty & drained):
            m.d.comb += framer.clear.eq(1)
            m.d.sync += [
                clear_pending.eq(self.clear),
                n_used.eq(0),
                pd_ok.eq(0),
                dec0_ok.eq(0),
                dec1_ok.eq(0),
            ]
        return m
