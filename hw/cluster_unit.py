"""DRE clustering unit: temporal/spatial clustering of streamed keys with the centroid table."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.centroid_table import CentroidTable, chunk_shape
from hw.cluster_cosine import CosineTest
from hw.cluster_similarity import MostSimilar
from hw.cluster_writeback import ClusterWriteback
from hw.plane_store import PlaneWriteSignature
from model.dre_cluster import DROPPED, FORCED, JOINED, NEW, ClusterWidths
from model.dre_config import ConfigError, DREConfig

#: Candidates in test order: temporal, left, up.
TEMPORAL, LEFT, UP = 0, 1, 2


def key_layout(cfg: DREConfig) -> data.ArrayLayout:
    return data.ArrayLayout(signed(cfg.bk), cfg.d)


def result_layout(cfg: DREConfig) -> data.StructLayout:
    """Per token: cluster ``id``, 2-bit ``status`` (``model.dre_cluster``: 0 joined, 1 new,
    2 forced, 3 dropped) and ``last`` (last token of its frame)."""
    return data.StructLayout({"id": range(cfg.n_max), "status": 2, "last": 1})


class ClusterUnit(wiring.Component):
    """Temporal and spatial clustering of one KV head's keys, bit-exact with
    :class:`model.dre_cluster.ClusterRef` (the rule: ``docs/clustering.md``; the design:
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

    Timing
    ------
    A token takes ``G + 6`` cycles (``G = d / lanes``) from its acceptance to its decision, and
    the next token is accepted in the cycle after: throughput one token per ``G + 6`` cycles.
    ``accept (1) | owner-map read (1) | G chunk reads, 3 dot products of lanes each | last
    accumulate (1) | cosine test and most-similar, 2 stages | decide (1)``.  The three candidates
    are tested in parallel (three read ports), but the next token cannot start its dot products
    before this token's decision: its *left* candidate is this token's cluster (a loop-carried
    dependence).  The sum update of a token (``S += k``, ``G`` read-modify-write cycles) overlaps
    the next token's owner read and dot products and always stays at least one chunk ahead of
    them, so they read updated sums.  ``|S|^2`` and ``n`` are written at the decision.
    Write-backs run in the background from a queue of updated clusters (each id at most once).
    """

    def __init__(self, cfg: DREConfig):
        if not isinstance(cfg, DREConfig):
            raise ConfigError(f"cfg must be a DREConfig, got {type(cfg).__name__}")
        self.cfg = cfg
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
            }
        )

    def elaborate(self, platform):
        cfg, wd = self.cfg, self.widths
        G, L = cfg.groups, cfg.lanes
        m = Module()

        m.submodules.table = table = CentroidTable(cfg, ports=3)
        m.submodules.writeback = wb = ClusterWriteback(cfg)
        m.submodules.queue = queue = SyncFIFOBuffered(width=cfg.index_bits, depth=cfg.n_max)
        cos = [CosineTest(cfg) for _ in range(3)]
        for i, c in enumerate(cos):
            m.submodules[f"cosine{i}"] = c
        m.submodules.similar = similar = MostSimilar(cfg, 3)

        # ---- owner map: per grid position, (valid, cluster) of the last visit ---------------
        owner_layout = data.StructLayout({"valid": 1, "id": range(cfg.n_max)})
        m.submodules.owner = owner = Memory(shape=owner_layout, depth=cfg.grid_max, init=[])
        own_wr = owner.write_port()
        own_t = owner.read_port()  # temporal: this position, previous frame
        own_u = owner.read_port()  # up: the position one row above, this frame

        # ---- registers ------------------------------------------------------------------------
        key = Signal(key_layout(cfg))
        pos, col, row = Signal(16), Signal(16), Signal(16)  # next token's position
        tok_pos, tok_col, tok_row = Signal(16), Signal(16), Signal(16)  # current token's
        tok_last = Signal()
        f_w, f_h, f_size = Signal(16), Signal(16), Signal(32)  # sampled at the frame start
        f_tau_t, f_tau_s = Signal(wd.tau), Signal(wd.tau)
        f_table = Signal(range(cfg.n_max + 1))
        f_temporal = Signal()  # this frame has a temporal candidate
        temporal_ok, prev_w, prev_h = Signal(), Signal(16), Signal(16)
        last_id, last_valid = Signal(range(cfg.n_max)), Signal()  # the left candidate
        n_used = Signal(range(cfg.n_max + 1))
        clear_pending = Signal()
        cand_id = [Signal(range(cfg.n_max), name=f"cand{i}_id") for i in range(3)]
        cand_ex = Signal(3)  # candidate exists
        dot = [Signal(signed(wd.dot), name=f"dot{i}") for i in range(3)]
        key_norm = Signal(unsigned(wd.key_norm))
        chunk = Signal(chunk_shape(cfg))
        acc_en = Signal()  # a chunk's sums arrive this cycle
        acc_chunk = Signal(chunk_shape(cfg))

        m.d.comb += self.n_clusters.eq(n_used)
        with m.If(self.clear):
            m.d.sync += clear_pending.eq(1)

        # ---- result register ------------------------------------------------------------------
        with m.If(self.result.ready):
            m.d.sync += self.result.valid.eq(0)
        result_free = ~self.result.valid | self.result.ready

        # ---- frame configuration at a frame start (combinational view) -------------------------
        start = pos == 0
        cur_w = Mux(start, self.grid_w, f_w)
        cur_size = Mux(start, self.grid_w * self.grid_h, f_size)
        one = 1 << cfg.tau_frac_bits
        bad = (
            (self.grid_w * self.grid_h == 0)
            | (self.grid_w * self.grid_h > cfg.grid_max)
            | (self.table_size == 0)
            | (self.table_size > cfg.n_max)
            | (self.tau_t > one)
            | (self.tau_s > one)
        )
        error_now = self.error | (start & bad)

        # ---- owner map reads (addresses presented at acceptance) -----------------------------
        m.d.comb += [own_t.addr.eq(pos), own_u.addr.eq(pos - cur_w)]

        # ---- table reads of the candidates ---------------------------------------------------
        for i in range(3):
            m.d.comb += [
                table.cand[i].id.eq(cand_id[i]),
                table.cand[i].chunk.eq(chunk),
                table.cand_meta[i].id.eq(cand_id[i]),
            ]
        meta = [table.cand_meta[i].data for i in range(3)]
        eligible = Signal(3)  # exists and not saturated
        m.d.comb += eligible.eq(
            Cat(cand_ex[i] & (meta[i].count != cfg.count_max) for i in range(3))
        )

        # ---- dot products: one chunk of lanes per cycle --------------------------------------
        key_chunk = Signal(data.ArrayLayout(signed(cfg.bk), L))
        if G > 1:
            m.d.comb += key_chunk.eq(key.as_value().word_select(acc_chunk, L * cfg.bk))
        else:
            m.d.comb += key_chunk.eq(key)
        with m.If(acc_en):
            for i in range(3):
                s = table.cand[i].data
                m.d.sync += dot[i].eq(dot[i] + sum(key_chunk[l] * s[l] for l in range(L)))
            m.d.sync += key_norm.eq(key_norm + sum(key_chunk[l] * key_chunk[l] for l in range(L)))
        m.d.sync += acc_en.eq(0)

        # ---- cosine tests and the most similar candidate (2-stage pipelines) ----------------
        for i, c in enumerate(cos):
            m.d.comb += [
                c.dot.eq(dot[i]),
                c.key_norm.eq(key_norm),
                c.sum_norm.eq(meta[i].norm),
                c.tau.eq(f_tau_t if i == TEMPORAL else f_tau_s),
            ]
            m.d.comb += [similar.dot[i].eq(dot[i]), similar.norm[i].eq(meta[i].norm)]
        m.d.comb += similar.valid.eq(eligible)
        passed = Cat(eligible[i] & cos[i].passed for i in range(3))

        # ---- sum update engine: S += k over G chunks, read-modify-write --------------------
        upd_rd, upd_wr = Signal(), Signal()
        upd_chunk, upd_wchunk = Signal(chunk_shape(cfg)), Signal(chunk_shape(cfg))
        upd_id, upd_new = Signal(range(cfg.n_max)), Signal()
        upd_key = Signal(key_layout(cfg))
        m.d.comb += [table.upd.id.eq(upd_id), table.upd.chunk.eq(upd_chunk)]
        m.d.sync += [upd_wr.eq(upd_rd), upd_wchunk.eq(upd_chunk)]
        with m.If(upd_rd):
            m.d.sync += upd_chunk.eq(upd_chunk + 1)
            with m.If(upd_chunk == G - 1):
                m.d.sync += [upd_rd.eq(0), upd_chunk.eq(0)]
        upd_key_chunk = Signal(data.ArrayLayout(signed(cfg.bk), L))
        if G > 1:
            m.d.comb += upd_key_chunk.eq(upd_key.as_value().word_select(upd_wchunk, L * cfg.bk))
        else:
            m.d.comb += upd_key_chunk.eq(upd_key)
        m.d.comb += [
            table.wr.en.eq(upd_wr),
            table.wr.id.eq(upd_id),
            table.wr.chunk.eq(upd_wchunk),
        ]
        for l in range(L):
            old = Mux(upd_new, 0, table.upd.data[l])
            m.d.comb += table.wr.data[l].eq(old + upd_key_chunk[l])

        # ---- write-back queue: each cluster at most once (dirty bits) ------------------------
        dirty = Signal(cfg.n_max)
        push = upd_wr & (upd_wchunk == G - 1) & ~dirty.bit_select(upd_id, 1)
        m.d.comb += [
            queue.w_en.eq(push),
            queue.w_data.eq(upd_id),
            wb.ids.valid.eq(queue.r_rdy),
            wb.ids.payload.eq(queue.r_data),
            queue.r_en.eq(wb.ids.ready),
        ]
        popping = queue.r_rdy & wb.ids.ready
        for j in range(cfg.n_max):
            with m.If(push & (upd_id == j)):
                m.d.sync += dirty[j].eq(1)
            with m.Elif(popping & (queue.r_data == j)):
                m.d.sync += dirty[j].eq(0)
        m.d.comb += [
            table.wb.id.eq(wb.sum.id),
            table.wb.chunk.eq(wb.sum.chunk),
            wb.sum.data.eq(table.wb.data),
            table.wb_meta.id.eq(wb.meta.id),
            wb.meta.data.eq(table.wb_meta.data),
            wb.bias_scale.eq(self.bias_scale),
        ]
        wiring.connect(m, wiring.flipped(self.writeback), wb.write)

        drained = ~upd_rd & ~upd_wr & (queue.level == 0) & ~wb.busy

        # ---- the token controller ------------------------------------------------------------
        with m.FSM():
            with m.State("ACCEPT"):
                m.d.comb += [self.idle.eq(drained), self.keys.ready.eq(~clear_pending)]
                with m.If(clear_pending & drained):  # carry out a clear request
                    m.d.sync += [
                        clear_pending.eq(self.clear),
                        n_used.eq(0),
                        temporal_ok.eq(0),
                        self.error.eq(0),
                        pos.eq(0),
                        col.eq(0),
                        row.eq(0),
                        last_valid.eq(0),
                    ]
                with m.If(self.keys.valid & ~clear_pending):
                    m.d.sync += [
                        key.eq(self.keys.payload),
                        tok_pos.eq(pos),
                        tok_col.eq(col),
                        tok_row.eq(row),
                        tok_last.eq(pos + 1 == cur_size),
                    ]
                    with m.If(start):
                        m.d.sync += [
                            f_w.eq(self.grid_w),
                            f_h.eq(self.grid_h),
                            f_size.eq(self.grid_w * self.grid_h),
                            f_tau_t.eq(self.tau_t),
                            f_tau_s.eq(self.tau_s),
                            f_table.eq(self.table_size),
                            f_temporal.eq(
                                temporal_ok & (self.grid_w == prev_w) & (self.grid_h == prev_h)
                            ),
                            self.error.eq(error_now),
                        ]
                    # Advance the position.
                    with m.If(pos + 1 == cur_size):
                        m.d.sync += [pos.eq(0), col.eq(0), row.eq(0)]
                    with m.Elif(col + 1 == cur_w):
                        m.d.sync += [pos.eq(pos + 1), col.eq(0), row.eq(row + 1)]
                    with m.Else():
                        m.d.sync += [pos.eq(pos + 1), col.eq(col + 1)]
                    with m.If(error_now):
                        m.next = "DROP"
                    with m.Else():
                        m.next = "CANDIDATES"

            with m.State("DROP"), m.If(result_free):
                m.d.sync += [
                    self.result.valid.eq(1),
                    self.result.payload.id.eq(0),
                    self.result.payload.status.eq(DROPPED),
                    self.result.payload.last.eq(0),
                ]
                m.next = "ACCEPT"

            with m.State("CANDIDATES"):  # owner map data arrives
                m.d.sync += [
                    cand_id[TEMPORAL].eq(own_t.data.id),
                    cand_id[LEFT].eq(last_id),
                    cand_id[UP].eq(own_u.data.id),
                    cand_ex.eq(
                        Cat(
                            f_temporal & own_t.data.valid,
                            (tok_col != 0) & last_valid,
                            (tok_row != 0) & own_u.data.valid,
                        )
                    ),
                    chunk.eq(0),
                    key_norm.eq(0),
                    *(d.eq(0) for d in dot),
                ]
                m.next = "DOT"

            with m.State("DOT"):  # present chunk reads; the sums arrive one cycle later
                m.d.sync += [acc_en.eq(1), acc_chunk.eq(chunk), chunk.eq(chunk + 1)]
                with m.If(chunk == G - 1):
                    m.d.sync += chunk.eq(0)
                    m.next = "LAST"
            with m.State("LAST"):  # the last chunk is accumulated
                m.next = "TEST1"
            with m.State("TEST1"):  # dot products final: cosine stage 1
                m.next = "TEST2"
            with m.State("TEST2"):  # cosine stage 2
                m.next = "DECIDE"

            with m.State("DECIDE"):
                status = Signal(2)
                choice = Signal(range(cfg.n_max))
                full = n_used >= f_table
                with m.If(passed[TEMPORAL]):
                    m.d.comb += [status.eq(JOINED), choice.eq(cand_id[TEMPORAL])]
                with m.Elif(passed[LEFT]):
                    m.d.comb += [status.eq(JOINED), choice.eq(cand_id[LEFT])]
                with m.Elif(passed[UP]):
                    m.d.comb += [status.eq(JOINED), choice.eq(cand_id[UP])]
                with m.Elif(~full):
                    m.d.comb += [status.eq(NEW), choice.eq(n_used)]
                with m.Elif(eligible != 0):
                    m.d.comb += status.eq(FORCED)
                    with m.Switch(similar.best):
                        for i in range(3):
                            with m.Case(i):
                                m.d.comb += choice.eq(cand_id[i])
                with m.Else():
                    m.d.comb += [status.eq(DROPPED), choice.eq(0)]
                which = Signal(range(3))  # the candidate joined (JOINED / FORCED)
                with m.If(status == FORCED):
                    m.d.comb += which.eq(similar.best)
                with m.Elif(passed[TEMPORAL]):
                    m.d.comb += which.eq(TEMPORAL)
                with m.Elif(passed[LEFT]):
                    m.d.comb += which.eq(LEFT)
                with m.Else():
                    m.d.comb += which.eq(UP)
                dot_w = Signal(signed(wd.dot))
                meta_w = Signal.like(meta[0])
                with m.Switch(which):
                    for i in range(3):
                        with m.Case(i):
                            m.d.comb += [dot_w.eq(dot[i]), meta_w.eq(meta[i])]
                dropped = status == DROPPED
                new = status == NEW
                with m.If(result_free):
                    m.d.sync += [
                        self.result.valid.eq(1),
                        self.result.payload.id.eq(choice),
                        self.result.payload.status.eq(status),
                        self.result.payload.last.eq(tok_last),
                        last_id.eq(choice),
                        last_valid.eq(~dropped & ~tok_last),
                    ]
                    m.d.comb += [
                        own_wr.en.eq(1),
                        own_wr.addr.eq(tok_pos),
                        own_wr.data.valid.eq(~dropped),
                        own_wr.data.id.eq(choice),
                        table.wr_meta.en.eq(~dropped),
                        table.wr_meta.id.eq(choice),
                        table.wr_meta.data.norm.eq(
                            Mux(new, key_norm, meta_w.norm + 2 * dot_w + key_norm)
                        ),
                        table.wr_meta.data.count.eq(Mux(new, 1, meta_w.count + 1)),
                    ]
                    with m.If(~dropped):
                        m.d.sync += [
                            upd_rd.eq(1),
                            upd_chunk.eq(0),
                            upd_id.eq(choice),
                            upd_new.eq(new),
                            upd_key.eq(key),
                        ]
                    with m.If(new):
                        m.d.sync += n_used.eq(n_used + 1)
                    with m.If(tok_last):
                        m.d.sync += [temporal_ok.eq(1), prev_w.eq(f_w), prev_h.eq(f_h)]
                    m.next = "ACCEPT"
        return m
