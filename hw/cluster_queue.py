"""Write-back queue of the clustering unit: updated cluster ids, each waiting at most once."""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from model.dre.config import DREConfig, require_config


class WritebackQueue(wiring.Component):
    """The ids of clusters whose sums changed, in order of their first change, each at most once.

    Interface
    ---------
    update : In(1), update_id : In(range(n_max))
        Cluster ``update_id`` was updated (one cycle).  It is queued unless it is waiting
        already (one dirty bit per entry); no backpressure: ``n_max`` entries always suffice.
    ids : Out(stream.Signature(range(n_max)))
        The queue, to :class:`hw.cluster_writeback.ClusterWriteback`.  An id taken from it may
        be queued again by a later update (the write-back then runs again with the final sums).
    empty : Out(1)
        Nothing is waiting.

    Timing: an update is visible at ``ids`` two cycles later at the earliest
    (``SyncFIFOBuffered``); the dirty bit of an id clears in the cycle it is taken.
    """

    def __init__(self, cfg: DREConfig):
        require_config(cfg)
        self.cfg = cfg
        super().__init__(
            {
                "update": In(1),
                "update_id": In(range(cfg.n_max)),
                "ids": Out(stream.Signature(range(cfg.n_max))),
                "empty": Out(1),
            }
        )

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=cfg.index_bits, depth=cfg.n_max)
        dirty = Signal(cfg.n_max)
        push = self.update & ~dirty.bit_select(self.update_id, 1)
        m.d.comb += [
            fifo.w_en.eq(push),
            fifo.w_data.eq(self.update_id),
            self.ids.valid.eq(fifo.r_rdy),
            self.ids.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.ids.ready),
            self.empty.eq(fifo.level == 0),
        ]
        popping = fifo.r_rdy & self.ids.ready
        for j in range(cfg.n_max):
            with m.If(push & (self.update_id == j)):
                m.d.sync += dirty[j].eq(1)
            with m.Elif(popping & (fifo.r_data == j)):
                m.d.sync += dirty[j].eq(0)
        return m
