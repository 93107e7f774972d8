"""Standalone DRE selector: a :class:`PlaneStore`, its key-load stream and a :class:`SelectCore`."""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.layouts import select_key_load_layout, select_query_layout, select_result_layout
from hw.plane_store import PlaneStore
from hw.select_core import SelectCore
from model.dre.config import DREConfig


class Selector(wiring.Component):
    """Early-exit bit-plane retrieval over up to ``n_max`` stored candidate keys.

    Interface
    ---------
    keys : In(stream.Signature(select_key_load_layout(cfg)))
        Writes one whole key and its bias per beat into the plane store.  ``ready`` is high
        while no retrieval is under way (``busy`` low), so a key write never changes the keys
        of a retrieval in flight.
    query : In(stream.Signature(select_query_layout(cfg)))
        Starts a retrieval over entries ``0 .. N-1`` (see :class:`hw.select_core.SelectCore`).
        A key beat offered in the same cycle goes first: ``query.ready`` is low while
        ``keys.valid`` is high, so keys sent before a query are always written before it runs.
    result : Out(stream.Signature(select_result_layout(cfg)))
        ``RECORD`` beats (index, score) of the selection in output order, then one ``TRAILER``
        (planes_read, cycles, error flags).
    busy : Out(1)

    Timing: a key beat is written at its handshake (one per cycle).  A retrieval's compute
    latency is reported in its trailer's ``cycles``; see :class:`SelectCore` for the schedule.
    """

    def __init__(self, cfg: DREConfig):
        if not isinstance(cfg, DREConfig):
            raise TypeError(f"Selector needs a DREConfig, got {cfg!r}")
        self.cfg = cfg
        super().__init__(
            {
                "keys": In(stream.Signature(select_key_load_layout(cfg))),
                "query": In(stream.Signature(select_query_layout(cfg))),
                "result": Out(stream.Signature(select_result_layout(cfg))),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        store = m.submodules.store = PlaneStore(self.cfg)
        core = m.submodules.core = SelectCore(self.cfg)
        wiring.connect(m, core.store, store.read)

        m.d.comb += [
            self.keys.ready.eq(~core.busy),
            store.write.en.eq(self.keys.valid & self.keys.ready),
            store.write.addr.eq(self.keys.payload.index),
            store.write.key.eq(self.keys.payload.key),
            store.write.bias.eq(self.keys.payload.bias),
            core.query.payload.eq(self.query.payload),
            core.query.valid.eq(self.query.valid & ~self.keys.valid),
            self.query.ready.eq(core.query.ready & ~self.keys.valid),
            self.busy.eq(core.busy),
        ]
        wiring.connect(m, core.result, wiring.flipped(self.result))
        return m


__all__ = ["Selector"]
