"""Standalone v2 selector: plane store with counts + key-load stream + SelectTokensCore."""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.layouts import token_key_load_layout, token_query_layout, token_result_layout
from hw.plane_store import PlaneStore
from hw.select_tokens import SelectTokensCore
from model.dre.config import DREConfig


class TokenSelector(wiring.Component):
    """Standalone v2 selector: a :class:`PlaneStore` with counts, a key-load stream and a
    :class:`SelectTokensCore`.

    Interface
    ---------
    keys : In(stream.Signature(hw.layouts.token_key_load_layout(cfg)))
        Writes one key (all planes) and its member count per beat.  ``ready`` is low while a
        retrieval runs, so a write never changes a retrieval in flight.
    query : In(stream.Signature(hw.layouts.token_query_layout(cfg)))
        Starts a retrieval (see :class:`SelectTokensCore`).  A key beat offered in the same cycle
        goes first (``query.ready`` is low while ``keys.valid`` is high).
    result : Out(stream.Signature(hw.layouts.token_result_layout(cfg)))
    busy : Out(1)
    """

    def __init__(self, cfg: DREConfig):
        if not isinstance(cfg, DREConfig):
            raise TypeError(f"TokenSelector needs a DREConfig, got {cfg!r}")
        self.cfg = cfg
        super().__init__(
            {
                "keys": In(stream.Signature(token_key_load_layout(cfg))),
                "query": In(stream.Signature(token_query_layout(cfg))),
                "result": Out(stream.Signature(token_result_layout(cfg))),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        store = m.submodules.store = PlaneStore(cfg, counts=True, out_reg=True, biases=False)
        core = m.submodules.core = SelectTokensCore(cfg)
        wiring.connect(m, core.store, store.read)
        write = self.keys.valid & self.keys.ready
        m.d.comb += [
            self.keys.ready.eq(~core.busy),
            store.write.en.eq(write),
            store.write.addr.eq(self.keys.payload.index),
            store.write.key.eq(self.keys.payload.key),
            store.write.bias.eq(0),
            store.write.count.eq(self.keys.payload.count),
            core.query.payload.eq(self.query.payload),
            core.query.valid.eq(self.query.valid & ~self.keys.valid),
            self.query.ready.eq(core.query.ready & ~self.keys.valid),
            self.busy.eq(core.busy),
        ]
        wiring.connect(m, core.result, wiring.flipped(self.result))
        return m


__all__ = ["TokenSelector"]
