"""Centroid write-back engine: quantised centroid and size bias of updated clusters."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import lut_mul
from hw.centroid_table import MetaReadSignature, SumReadSignature, chunk_shape
from hw.plane_store import PlaneWriteSignature
from model.dre_cluster import ClusterWidths
from model.dre_config import ConfigError, DREConfig


def log2_fixed(m: Module, n, frac_bits: int, name: str = "log2"):
    """Mitchell's fixed-point ``log2(n)`` of an unsigned value ``n >= 1`` (combinational).

    ``msb(n) * 2^LF + ((n << LF) >> msb(n)) - 2^LF``: the integer part is the position of the
    leading one, the fraction the ``LF`` bits below it (truncated), as
    :func:`model.dre_cluster.log2_fixed`.  Returns a Signal; ``n = 0`` gives 0.
    """
    width = len(n)
    msb = Signal(range(max(2, width)), name=f"{name}_msb")
    for b in range(width):  # the last assignment wins: the highest set bit
        with m.If(n[b]):
            m.d.comb += msb.eq(b)
    out = Signal(max(1, (width - 1).bit_length()) + frac_bits, name=name)
    shifted = (n << frac_bits) >> msb
    with m.If(n != 0):
        m.d.comb += out.eq((msb << frac_bits) + shifted - (1 << frac_bits))
    return out


def writeback_cycles(cfg: DREConfig) -> int:
    """Cycles per cluster of :class:`ClusterWriteback` with every sum read granted, from the
    cycle that takes the id to the cycle of the write, both included: ``G + bk + 4``."""
    return cfg.groups + cfg.bk + 4


class ClusterWriteback(wiring.Component):
    """Computes, for each cluster id it is given, the quantised centroid and the size bias, and
    writes them to the retrieval datapath's plane store.

    * centroid: per element ``round(S_i / n)`` half away from zero
      (:func:`model.dre_cluster.quantise_centroid`), by ``d`` restoring dividers (one per
      element) that produce the ``bk + 1`` bits of ``floor(2|S_i| / n)`` (``|S_i| <= n 2^(bk-1)``,
      so that is all the quotient has), then ``(q + 1) >> 1`` and the sign;
    * bias: ``min((log2_fixed(n) * bias_scale) >> LF, 2^(bias_bits-1) - 1)``
      (:func:`model.dre_cluster.size_bias`).

    Interface
    ---------
    ids : In(stream.Signature(range(n_max)))
        Clusters to write back.  Taken (``ready``) only while the engine is idle.
    sum : Out(SumReadSignature), meta : Out(MetaReadSignature)
        Reads of the centroid table (one cycle of latency).
    write : Out(PlaneWriteSignature)
        ``en`` for one cycle with ``addr`` = the cluster, ``key`` = its quantised centroid and
        ``bias``; connects to :class:`hw.plane_store.PlaneStore`'s write port (no backpressure).
    bias_scale : In(unsigned(bias_bits - 1))
        Runtime register, read while a cluster is processed.
    sum_grant : In(1)
        The sum read port is free this cycle.  A sum read presented in a cycle without
        ``sum_grant`` is not performed and is presented again in the next cycle (the port is
        shared with the clustering unit's sum update, which has priority).
    busy : Out(1)
        An id was taken and its write has not happened yet (high in the write's cycle too).

    Timing: :func:`writeback_cycles` ``= G + bk + 4`` cycles per cluster (``G = d / lanes``;
    16 at the default) from the cycle that takes the id to the cycle of the write, both
    included, plus one cycle per sum read not granted: take the id (IDLE), read the count and
    chunk 0 (COUNT), chunks 1 .. G-1 (FETCH), the last chunk arrives (LAST), ``bk + 1``
    division steps on all ``d`` elements at once (DIVIDE), round and write (WRITE).  The next
    id is taken in the cycle after the write.  The sums and the count are read while the
    cluster is processed: if the clustering unit updates it meanwhile, it queues the id again,
    so the last write of an entry always carries its final value.
    """

    def __init__(self, cfg: DREConfig):
        if not isinstance(cfg, DREConfig):
            raise ConfigError(f"cfg must be a DREConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.widths = ClusterWidths.of(cfg)
        super().__init__(
            {
                "ids": In(stream.Signature(range(cfg.n_max))),
                "sum": Out(SumReadSignature(cfg)),
                "meta": Out(MetaReadSignature(cfg)),
                "write": Out(PlaneWriteSignature(cfg)),
                "bias_scale": In(unsigned(self.widths.bias_scale)),
                "sum_grant": In(1),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        cfg, wd = self.cfg, self.widths
        G, L, bk, d = cfg.groups, cfg.lanes, cfg.bk, cfg.d
        m = Module()

        cid = Signal(range(cfg.n_max))
        count = Signal(cfg.count_bits)
        chunk = Signal(chunk_shape(cfg))  # the next sum chunk to read
        step = Signal(range(bk + 1))  # division step: quotient bit ``step`` is decided
        rem = [Signal(unsigned(wd.sum + 1), name=f"rem{i}") for i in range(d)]
        quo = [Signal(unsigned(bk + 1), name=f"quo{i}") for i in range(d)]
        neg = Signal(d)
        bias = Signal(signed(cfg.bias_bits))
        ld, ld_chunk = Signal(), Signal(chunk_shape(cfg))  # a granted read's data arrives

        # Read addresses: the data of the address presented in a cycle arrives in the next one.
        m.d.comb += [self.sum.id.eq(cid), self.sum.chunk.eq(chunk), self.meta.id.eq(cid)]

        # Bias of the count being processed (combinational from ``count``).
        log = log2_fixed(m, count, cfg.log_frac_bits)
        scaled = Signal(len(log) + wd.bias_scale)
        m.d.comb += scaled.eq(lut_mul(log, self.bias_scale) >> cfg.log_frac_bits)  # LUTs, no DSP
        top = (1 << (cfg.bias_bits - 1)) - 1
        bias_sat = Mux(scaled > top, top, scaled)

        divisor = Signal(unsigned(cfg.count_bits + bk + 1))
        m.d.comb += divisor.eq(count << step)

        # Loading: the chunk read in the previous (granted) cycle goes to its elements.
        m.d.sync += ld.eq(0)
        with m.If(ld):
            for g in range(G):
                with m.If(ld_chunk == g):
                    for i in range(L):
                        s = self.sum.data[i]
                        e = g * L + i
                        m.d.sync += [
                            neg[e].eq(s < 0),
                            rem[e].eq(Mux(s < 0, -s, s) << 1),
                            quo[e].eq(0),
                        ]

        def fetch():  # present chunk ``chunk``; on a grant its data arrives next cycle
            with m.If(self.sum_grant):
                m.d.sync += [ld.eq(1), ld_chunk.eq(chunk)]
                with m.If(chunk == G - 1):
                    m.next = "LAST"
                with m.Else():
                    m.d.sync += chunk.eq(chunk + 1)
                    m.next = "FETCH"

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.ids.ready.eq(1), self.meta.id.eq(self.ids.payload)]
                with m.If(self.ids.valid):
                    m.d.sync += [cid.eq(self.ids.payload), chunk.eq(0)]
                    m.next = "COUNT"
            with m.State("COUNT"):  # the meta read was presented in IDLE; chunk 0 now
                m.d.comb += self.busy.eq(1)
                m.d.sync += count.eq(self.meta.data.count)
                m.next = "FETCH"
                fetch()
            with m.State("FETCH"):
                m.d.comb += self.busy.eq(1)
                fetch()
            with m.State("LAST"):  # the last chunk is loaded at this cycle's edge
                m.d.comb += self.busy.eq(1)
                m.d.sync += [bias.eq(bias_sat), step.eq(bk)]
                m.next = "DIVIDE"
            with m.State("DIVIDE"):
                m.d.comb += self.busy.eq(1)
                for i in range(d):  # quotient bits MSB first: shift them in
                    fits = rem[i] >= divisor
                    m.d.sync += quo[i].eq(Cat(fits, quo[i][:-1]))
                    with m.If(fits):
                        m.d.sync += rem[i].eq(rem[i] - divisor)
                m.d.sync += step.eq(step - 1)
                with m.If(step == 0):
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += [
                    self.busy.eq(1),
                    self.write.en.eq(1),
                    self.write.addr.eq(cid),
                    self.write.bias.eq(bias),
                ]
                for i in range(d):
                    mag = (quo[i] + 1) >> 1
                    m.d.comb += self.write.key[i].eq(Mux(neg[i], -mag, mag))
                m.next = "IDLE"
        return m
