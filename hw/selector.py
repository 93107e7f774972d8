"""Standalone DRE selector: a :class:`PlaneStore`, its key-load stream and a :class:`SelectCore`."""

from __future__ import annotations

from amaranth import Module, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.plane_store import PlaneStore
from hw.select_core import (
    ERROR_LAYOUT,
    Kind,
    SelectCore,
    query_layout,
    result_layout,
    score_shape,
)
from model.dre_config import DREConfig


def key_layout(cfg: DREConfig) -> data.StructLayout:
    """One key-load beat: entry ``index`` takes ``key`` (d signed bk-bit elements) and ``bias``."""
    return data.StructLayout(
        {
            "index": unsigned(cfg.index_bits),
            "key": data.ArrayLayout(signed(cfg.bk), cfg.d),
            "bias": signed(cfg.bias_bits),
        }
    )


class Selector(wiring.Component):
    """Early-exit bit-plane retrieval over up to ``n_max`` stored candidate keys.

    Interface
    ---------
    keys : In(stream.Signature(key_layout(cfg)))
        Writes one whole key and its bias per beat into the plane store.  ``ready`` is high
        while no retrieval is under way (``busy`` low), so a key write never changes the keys
        of a retrieval in flight.
    query : In(stream.Signature(query_layout(cfg)))
        Starts a retrieval over entries ``0 .. N-1`` (see :class:`hw.select_core.SelectCore`).
        A key beat offered in the same cycle goes first: ``query.ready`` is low while
        ``keys.valid`` is high, so keys sent before a query are always written before it runs.
    result : Out(stream.Signature(result_layout(cfg)))
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
                "keys": In(stream.Signature(key_layout(cfg))),
                "query": In(stream.Signature(query_layout(cfg))),
                "result": Out(stream.Signature(result_layout(cfg))),
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


__all__ = [
    "ERROR_LAYOUT",
    "Kind",
    "Selector",
    "key_layout",
    "query_layout",
    "result_layout",
    "score_shape",
]
