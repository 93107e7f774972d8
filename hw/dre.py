"""The V-Rex dynamic KV-cache retrieval engine (DRE): the IP block's top level."""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw import dre_regs
from hw.cluster_unit import ClusterUnit
from hw.cluster_unit import result_layout as assignment_layout
from hw.layouts import (
    Kind,
    key_layout,
    queries_layout,
    query_layout,
    select_result_layout,
    token_result_layout,
)
from hw.plane_store import PlaneStore
from hw.select_core import SelectCore
from hw.select_tokens import SelectTokensCore
from model.dre.cluster import DROPPED, FORCED, NEW
from model.dre.config import ConfigError, DREConfig, require_config

#: retrieval rules the top level can be built with (``DRE(cfg, rule=...)``)
RULES = ("v1", "v2")


def selections_layout(cfg: DREConfig, rule: str = "v2"):
    """Payload of the ``selections`` stream for ``rule``."""
    return token_result_layout(cfg) if rule == "v2" else select_result_layout(cfg)


def queries_stream_layout(cfg: DREConfig, rule: str = "v2"):
    """Payload of the ``queries`` stream for ``rule`` (v2: up to q_max vectors and ``n_q``)."""
    return queries_layout(cfg) if rule == "v2" else query_layout(cfg)


class DRE(wiring.Component):
    """One KV head's dynamic retrieval engine: clustering, the shared centroid table, retrieval.

    The keys of each new frame are clustered into the centroid table (:class:`ClusterUnit`,
    bit-exact with :class:`model.dre.cluster.ClusterRef`); the clustering unit writes each updated
    cluster's quantised centroid and size bias into the plane store (:class:`PlaneStore`) that
    the early-exit selector scores queries against: with ``rule="v2"`` (default)
    :class:`hw.select_tokens.SelectTokensCore` (token budget, several query vectors, bit-exact with
    ``model.dre.tokens.select_tokens``), with ``rule="v1"`` :class:`SelectCore` (bias, margin,
    k_min / k_max, bit-exact with ``model.dre.select.select``).  The whole block is bit-exact with
    :class:`model.dre.top.DRERef` (``retrieve_tokens`` / ``retrieve``).
    Design and timing: ``docs/dre.md``; register map: :mod:`hw.dre_regs`.

    Interface
    ---------
    keys : In(stream.Signature(key_layout(cfg)))
        The keys of each frame in raster order, ``GRID_W * GRID_H`` per frame.
    assignments : Out(stream.Signature(hw.cluster_unit.result_layout(cfg)))
        Per key, in order: cluster ``id``, ``status`` (0 joined, 1 new, 2 forced, 3 dropped),
        ``last`` (last key of its frame).
    queries : In(stream.Signature(queries_stream_layout(cfg, rule)))
        One retrieval per beat, over the ``N_CLUSTERS`` clusters that exist when it starts.
        v2: ``q`` (``q_max`` vectors) and ``n_q`` (how many count), with ``BUDGET``,
        ``CTRL.no_exit``, ``CTRL.raw_max``, ``CTRL.soft`` (the soft score, which overrides the
        other two) and ``GAIN`` from the registers; v1: one vector, with ``MARGIN``,
        ``K_MIN``, ``K_MAX`` and ``CTRL.no_exit``.
    selections : Out(stream.Signature(selections_layout(cfg, rule)))
        Per query: ``RECORD`` beats in selection order (v2: cluster ``id`` and ``take``, tokens
        taken from it; v1: cluster ``index``, exact ``score``), then one ``TRAILER``
        (``planes_read``, ``cycles``, ``error`` flags).
    regs : In(hw.dre_regs.RegisterBusSignature())
        Runtime registers, status and performance counters (:func:`hw.dre_regs.register_map`).
        A counter includes an event one cycle after it (the increments are registered).
    busy : Out(1)
        Clustering or retrieval under way (``~STATUS.cluster_idle | STATUS.select_busy``).

    Ordering
    --------
    A query is a barrier: while a query is offered (``queries.valid``) or a retrieval runs, no
    key is accepted; the query starts once every key accepted before it is clustered and its
    cluster written back, so a retrieval always sees the table as of the keys before it.
    Retrieval never overlaps a write into the plane store.  Register writes take effect at the
    next frame start (grid, thresholds, table size), the next query (margin, k, budget, CTRL,
    GAIN: sampled when the selector takes the query) or immediately (bias scale, commands).
    ``CMD.clear_table`` waits for work in flight.

    Timing: keys are clustered at the clustering unit's rate (``docs/cluster.md``); a retrieval
    takes the cycles its trailer reports (``docs/select.md``) plus one cycle to start.
    """

    @staticmethod
    def check_config(cfg: DREConfig) -> None:
        """Raise :class:`ConfigError` if ``cfg`` cannot be built (before anything is built)."""
        require_config(cfg)
        if cfg.n_max < 2:
            raise ConfigError(f"DRE: n_max={cfg.n_max} must be >= 2 (the table needs an address)")

    def __init__(self, cfg: DREConfig, *, rule: str = "v2"):
        try:
            self.check_config(cfg)
            if rule not in RULES:
                raise ConfigError(f"DRE: rule={rule!r}; allowed {', '.join(RULES)}")
        except ConfigError:
            self._MustUse__silence = True  # a rejected component is not an unused one
            raise
        self.cfg, self.rule = cfg, rule
        self.register_map = dre_regs.register_map(cfg)
        super().__init__(
            {
                "keys": In(stream.Signature(key_layout(cfg))),
                "assignments": Out(stream.Signature(assignment_layout(cfg))),
                "queries": In(stream.Signature(queries_stream_layout(cfg, rule))),
                "selections": Out(stream.Signature(selections_layout(cfg, rule))),
                "regs": In(dre_regs.RegisterBusSignature()),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.cluster = cu = ClusterUnit(cfg)
        v2 = self.rule == "v2"
        m.submodules.store = store = PlaneStore(cfg, counts=v2, out_reg=v2, biases=not v2)
        m.submodules.select = core = SelectTokensCore(cfg) if v2 else SelectCore(cfg)
        wiring.connect(m, cu.writeback, store.write)
        wiring.connect(m, core.store, store.read)

        # ---- registers ---------------------------------------------------------------------
        regs = {r.name: r for r in self.register_map}
        rw = {
            name: Signal(r.width, init=r.reset, name=f"reg_{name.lower()}")
            for name, r in regs.items()
            if r.access == "rw"
        }
        counters = {
            name: Signal(dre_regs.COUNTER_BITS, name=f"cnt_{name.lower()}")
            for name, _ in dre_regs.COUNTERS
        }
        sel_err = Signal(len(dre_regs.SELECT_ERROR_NAMES))
        bus = self.regs
        cmd = Signal(regs["CMD"].width)
        with m.If(bus.w_en & (bus.addr == regs["CMD"].addr)):
            m.d.comb += cmd.eq(bus.w_data)

        cluster_idle = Signal()
        # idle and no clear request pending: nothing left.  (Not cu.keys.ready, which is also low
        # while the framer waits for new grid registers to settle, with no work in flight.)
        m.d.comb += cluster_idle.eq(cu.idle & ~cu.clearing)
        status = Signal(regs["STATUS"].width)
        m.d.comb += status.eq(Cat(cluster_idle, core.busy, cu.error, sel_err))

        ro_values = {
            "STATUS": status,
            "N_CLUSTERS": cu.n_clusters,
            **counters,
        }
        for name, r in regs.items():
            if r.access == "ro" and name not in ro_values:
                ro_values[name] = Const(r.reset, r.width)  # ID and the parameters

        # Writes: each word of a read-write register writes its 32-bit slice.
        for name, sig in rw.items():
            r = regs[name]
            for w in range(r.words):
                lo = w * dre_regs.DATA_BITS
                if lo >= r.width:
                    continue
                hi = min(r.width, lo + dre_regs.DATA_BITS)
                with m.If(bus.w_en & (bus.addr == r.addr + w)):
                    m.d.sync += sig[lo:hi].eq(bus.w_data[: hi - lo])

        # Reads: registered; the low word of a two-word register latches its high word.
        shadow = Signal(dre_regs.DATA_BITS)
        values = {**ro_values, **rw}
        with m.If(bus.r_en):
            m.d.sync += bus.r_data.eq(0)
            with m.Switch(bus.addr):
                for name, r in regs.items():
                    if r.access == "w1":
                        continue
                    v = values[name]
                    with m.Case(r.addr):
                        m.d.sync += bus.r_data.eq(v[: min(r.width, dre_regs.DATA_BITS)])
                        if r.words == 2:
                            m.d.sync += shadow.eq(v[dre_regs.DATA_BITS :])
                    if r.words == 2:
                        with m.Case(r.addr + 1):
                            m.d.sync += bus.r_data.eq(shadow)

        # ---- clustering ------------------------------------------------------------------------
        hold_keys = self.queries.valid | core.busy
        m.d.comb += [
            cu.keys.payload.eq(self.keys.payload),
            cu.keys.valid.eq(self.keys.valid & ~hold_keys),
            self.keys.ready.eq(cu.keys.ready & ~hold_keys),
            cu.grid_w.eq(rw["GRID_W"]),
            cu.grid_h.eq(rw["GRID_H"]),
            cu.tau_t.eq(rw["TAU_T"]),
            cu.tau_s.eq(rw["TAU_S"]),
            cu.table_size.eq(rw["TABLE_SIZE"]),
            cu.bias_scale.eq(rw["BIAS_SCALE"]),
            cu.clear.eq(cmd[0]),
        ]
        wiring.connect(m, cu.result, wiring.flipped(self.assignments))

        # ---- retrieval -------------------------------------------------------------------------
        start_ok = cluster_idle & ~cmd[0]
        cq = core.query.payload
        if v2:
            m.d.comb += [
                cq.queries.eq(self.queries.payload.q),
                cq.n_q.eq(self.queries.payload.n_q),
                cq.budget.eq(rw["BUDGET"]),
                cq.raw_max.eq(rw["CTRL"][1]),
                cq.soft.eq(rw["CTRL"][2]),
                cq.gain.eq(rw["GAIN"]),
            ]
        else:
            m.d.comb += [
                cq.q.eq(self.queries.payload),
                cq.margin.eq(rw["MARGIN"]),
                cq.k_min.eq(rw["K_MIN"]),
                cq.k_max.eq(rw["K_MAX"]),
            ]
        m.d.comb += [
            cq.n.eq(cu.n_clusters),
            cq.no_exit.eq(rw["CTRL"][0]),
            core.query.valid.eq(self.queries.valid & start_ok),
            self.queries.ready.eq(core.query.ready & start_ok),
        ]
        wiring.connect(m, core.result, wiring.flipped(self.selections))
        m.d.comb += self.busy.eq(~cluster_idle | core.busy)

        # ---- status and performance counters ---------------------------------------------------
        key_taken = self.keys.valid & self.keys.ready
        a = self.assignments
        a_taken = a.valid & a.ready
        s = self.selections
        trailer = s.valid & s.ready & (s.payload.kind == Kind.TRAILER)
        increments = {
            "TOKENS": key_taken,
            "CLUSTERS": a_taken & (a.payload.status == NEW),
            "FORCED": a_taken & (a.payload.status == FORCED),
            "DROPPED": a_taken & (a.payload.status == DROPPED),
            "QUERIES": self.queries.valid & self.queries.ready,
            "PLANES_READ": Mux(trailer, s.payload.planes_read, 0),
            "SELECT_CYCLES": Mux(trailer, s.payload.cycles, 0),
            "BUSY_CYCLES": self.busy,
        }
        # Each counter adds its increment of the cycle before (registered, so that the stream
        # handshakes and the idle flags that form it do not run into a 48-bit carry chain in the
        # same cycle): the counts lag the events by one cycle.  A clear drops the increments of
        # its own cycle and of the one before, as the unregistered form did.
        for name, sig in counters.items():
            inc = Signal.like(increments[name], name=f"inc_{name.lower()}")
            with m.If(cmd[1]):
                m.d.sync += [sig.eq(0), inc.eq(0)]
            with m.Else():
                m.d.sync += [sig.eq(sig + inc), inc.eq(increments[name])]
        with m.If(cmd[2]):
            m.d.sync += sel_err.eq(0)
        with m.Elif(trailer):
            m.d.sync += sel_err.eq(sel_err | s.payload.error.as_value())  # v2: 5 flags, v1: 5
        return m


__all__ = [
    "DRE",
    "RULES",
    "key_layout",
    "queries_stream_layout",
    "query_layout",
    "selections_layout",
]
