"""Centroid write-back engine: quantised centroid and size bias of updated clusters."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import leading_one
from hw.centroid_table import MetaReadSignature, SumReadSignature, chunk_shape
from hw.plane_store import PlaneWriteSignature
from model.dre.cluster import ClusterWidths
from model.dre.config import DREConfig, require_config


def log2_fixed(m: Module, n, frac_bits: int, name: str = "log2"):
    """Mitchell's fixed-point ``log2(n)`` of an unsigned value ``n >= 1`` (combinational).

    ``msb(n) * 2^LF + ((n << LF) >> msb(n)) - 2^LF``: the integer part is the position of the
    leading one, the fraction the ``LF`` bits below it (truncated), as
    :func:`model.dre.cluster.log2_fixed`.  Returns a Signal; ``n = 0`` gives 0.
    """
    width = len(n)
    msb = Signal(range(max(2, width)), name=f"{name}_msb")
    m.d.comb += msb.eq(leading_one(n))  # the highest set bit (no adder); n = 0: unused
    out = Signal(max(1, (width - 1).bit_length()) + frac_bits, name=name)
    # n in [2^msb, 2^(msb+1)), so (n << LF) >> msb lies in [2^LF, 2^(LF+1)): minus 2^LF it is its
    # low LF bits, and adding msb 2^LF places msb above them, with no adder
    shifted = (n << frac_bits) >> msb
    with m.If(n != 0):
        m.d.comb += out.eq(Cat(shifted[:frac_bits], msb))
    return out


def chunks_per_round(cfg: DREConfig) -> int:
    """Chunks of ``cl_lanes`` elements the write-back engine divides at once: 2 (``2 cl_lanes``
    dividers) when ``G = d / cl_lanes`` is even, else 1."""
    return 2 if cfg.cl_groups % 2 == 0 else 1


def writeback_cycles(cfg: DREConfig) -> int:
    """Cycles per cluster of :class:`ClusterWriteback` with every sum read granted, from the
    cycle that takes the id to the cycle of the write, both included:
    ``2 + G + R (bk + 2)`` with ``R = G / chunks_per_round`` rounds (50 at the default's
    ``G = 8``, 26 at ``G = 4``)."""
    rounds = cfg.cl_groups // chunks_per_round(cfg)
    return 2 + cfg.cl_groups + rounds * (cfg.bk + 2)


class ClusterWriteback(wiring.Component):
    """Computes, for each cluster id it is given, the quantised centroid and the size bias, and
    writes them to the retrieval datapath's plane store.

    * centroid: per element ``round(S_i / n)`` half away from zero
      (:func:`model.dre.cluster.quantise_centroid`: ``sign(S_i) floor((floor(2|S_i|/n) + 1)/2)``,
      which equals ``sign(S_i) floor((2|S_i| + n) / (2n))``), by non-restoring dividers that
      produce the ``bk`` bits of that quotient (``|S_i| <= n 2^(bk-1)``, so it has no more),
      then the sign: ``chunks_per_round * cl_lanes`` dividers (16 at the default), used in
      ``R = G / chunks_per_round`` rounds;
    * bias: ``min((log2_fixed(n) * bias_scale) >> LF, 2^(bias_bits-1) - 1)``
      (:func:`model.dre.cluster.size_bias`).

    Interface
    ---------
    ids : In(stream.Signature(range(n_max)))
        Clusters to write back.  Taken (``ready``) only while the engine is idle, and not in
        the first cycle of ``valid``: the engine addresses the meta memory with a registered
        copy of ``payload``, which is valid from the second cycle on (the payload must stay
        fixed while ``valid`` is high and the id is not taken, as a FIFO's head does).
    sum : Out(SumReadSignature), meta : Out(MetaReadSignature)
        Reads of the centroid table: ``sum`` from a registered port (two cycles of latency,
        :class:`hw.centroid_table.CentroidTable`'s ``upd`` or ``wb``), ``meta`` one cycle.
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

    Timing: :func:`writeback_cycles` ``= 2 + G + R (bk + 2)`` cycles per cluster (``G = d /
    cl_lanes``; 50 at the default, ``G = 8``, ``R = 4``) from the cycle that takes the id to
    the cycle of the write, both included, plus one cycle per sum read not granted: take the
    id (IDLE; one cycle after it appears if the engine was idle, at once if it was waiting
    already), read the count and chunk 0 (COUNT); per round, the round's chunks (FETCH), a
    cycle of the port's latency (WAIT), its last chunk arrives (LAST), ``bk`` division steps
    on the round's elements (DIVIDE), the
    results kept and the next round's first chunk read (NEXT); sign and write (WRITE).  A chunk
    is loaded as it arrives: ``cl_lanes`` magnitudes ``2|S_i| + n`` are formed per cycle and
    routed to their dividers.  The next
    id is taken in the cycle after the write.  The sums and the count are read while the
    cluster is processed: if the clustering unit updates it meanwhile, it queues the id again,
    so the last write of an entry always carries its final value.
    """

    def __init__(self, cfg: DREConfig):
        require_config(cfg)
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
        G, L, bk, d = cfg.cl_groups, cfg.cl_lanes, cfg.bk, cfg.d
        per = chunks_per_round(cfg)
        rounds = G // per
        D = per * L  # dividers
        m = Module()

        # No reset on the data registers (cluster id, count, remainders, quotients, signs, the
        # centroid, the divisor, the bias pipeline): each cluster's walk IDLE .. WRITE loads
        # every one of them before reading it (cid in IDLE, count in COUNT, rem / neg when its
        # chunk arrives, the divisor in LAST, quo by bk shifts, cen by R - 1 rounds, the bias
        # pipeline >= 4 cycles before WRITE); the FSM, chunk, step and the load flags keep theirs.
        def kept(shape, name):
            return Signal(shape, name=name, reset_less=True)

        cid = kept(range(cfg.n_max), "cid")
        count = kept(cfg.count_bits, "count")
        count2 = kept(cfg.count_bits + 1, "count2")  # count + 2, for the dividends of negative sums
        chunk = Signal(chunk_shape(cfg))  # the next sum chunk to read
        last_round = Signal()
        step = Signal(range(bk))  # division step: quotient bit ``step`` is decided
        # Signed partial remainder: R0 = 2|S| + n < 2^(sum + 1) + 2^count_bits; |R| < 2n 2^bk after.
        rw = max(wd.sum + 2, cfg.count_bits + 1 + bk) + 1
        rem = [kept(signed(rw), f"rem{i}") for i in range(D)]
        quo = [kept(unsigned(bk), f"quo{i}") for i in range(D)]
        neg = kept(D, "neg")
        cen = kept(d * bk, "cen")  # the centroid, filled one round (D elements) at a time
        bias = Signal(signed(cfg.bias_bits))
        # a granted read's data arrive two cycles later (ld1, then ld), with its slot
        ld1, ld1_slot = Signal(), Signal(range(max(2, per)))
        ld, ld_slot = Signal(), Signal(range(max(2, per)))

        # Read addresses: the data of a sum address presented in a cycle arrive two cycles
        # later, a meta address's in the next cycle.
        m.d.comb += [self.sum.id.eq(cid), self.sum.chunk.eq(chunk), self.meta.id.eq(cid)]

        # Bias of the count being processed: a free-running 3-register pipeline from ``count``
        # (a copy of the count, log2, product; the saturation after the last register):
        # ``count`` is loaded at the end of COUNT, ``bias`` follows 3 cycles later; the write
        # comes at least ``bk + 2 >= 4`` cycles after COUNT.  The copy keeps the log2 off the
        # meta memory's read data (synthesis may merge ``count`` into the memory's read port).
        count_q = kept(len(count), "count_q")
        log_c = log2_fixed(m, count_q, cfg.log_frac_bits)
        log = kept(len(log_c), "log_q")
        scaled = kept(len(log) + wd.bias_scale, "scaled")
        m.d.sync += [
            count_q.eq(count),
            log.eq(log_c),
            scaled.eq((log * self.bias_scale) >> cfg.log_frac_bits),
        ]
        top = (1 << (cfg.bias_bits - 1)) - 1
        m.d.comb += bias.eq(Mux(scaled > top, top, scaled))

        # Non-restoring division of 2|S| + n by 2n, quotient bits MSB first: one shared shifted
        # divisor ``2n << step`` and its negation; per element one adder, the operand chosen by
        # the sign of its partial remainder.  Both are registers, loaded in LAST (``step = bk -
        # 1``: ``n << bk``) and halved in every DIVIDE step (exact: ``n << (step + 1)`` is even),
        # so that the dividers' adders start at registers, not at the meta memory's read data
        # (``count``) through a shifter and a negation.
        shifted = kept(signed(rw), "shifted")
        minus = kept(signed(rw), "minus")

        # ``count + 2`` follows ``count`` one cycle later, free-running, so that no adder sits
        # on the meta memory's read data (unregistered block RAM output): ``count`` is loaded at
        # the end of COUNT and the first chunk arrives (``ld``) two cycles after COUNT at the
        # earliest, when ``count2`` already holds the new count's value.
        m.d.sync += count2.eq(count + 2)

        # Loading: the chunk read two cycles before (granted): ``cl_lanes`` dividends formed
        # once, routed to the dividers of its slot in the round.
        m.d.sync += [ld1.eq(0), ld.eq(ld1), ld_slot.eq(ld1_slot)]
        dividend = [Signal(signed(rw), name=f"dividend{i}") for i in range(L)]
        for i in range(L):
            s_i = self.sum.data[i]
            # 2|s| + n, both signs formed side by side (2 (-s) = 2 ~s + 2), so no negation's
            # carry chain precedes the sum's: the read data go through one adder
            m.d.comb += dividend[i].eq(Mux(s_i < 0, (~s_i << 1) + count2, (s_i << 1) + count))
        with m.If(ld):
            for j in range(per):
                with m.If(ld_slot == j):
                    for i in range(L):
                        e = j * L + i
                        m.d.sync += [neg[e].eq(self.sum.data[i] < 0), rem[e].eq(dividend[i])]
        results = Signal(D * bk)  # this round's signed quotients
        for i in range(D):
            m.d.comb += results[i * bk : (i + 1) * bk].eq(Mux(neg[i], -quo[i], quo[i]))

        def fetch():  # present chunk ``chunk``; on a grant its data arrive two cycles later
            with m.If(self.sum_grant):
                m.d.sync += [ld1.eq(1), ld1_slot.eq(chunk % per if per > 1 else 0)]
                with m.If(chunk != G - 1):
                    m.d.sync += chunk.eq(chunk + 1)
                m.d.sync += last_round.eq(chunk == G - 1)
                with m.If((chunk % per == per - 1) if per > 1 else 1):
                    m.next = "WAIT"
                with m.Else():
                    m.next = "FETCH"

        # The id stream's payload, registered: the meta read of the id taken in IDLE is
        # addressed from this register, not from the queue's LUT-RAM read and output
        # multiplexer (the queue lies far from the table).  ``head_ok``: ``head`` holds the
        # payload of this cycle (valid in the previous cycle and not taken then).
        head = kept(range(cfg.n_max), "head")
        head_ok = Signal()
        m.d.sync += [
            head.eq(self.ids.payload),
            head_ok.eq(self.ids.valid & ~self.ids.ready),
        ]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.ids.ready.eq(head_ok), self.meta.id.eq(head)]
                with m.If(self.ids.valid & head_ok):
                    m.d.sync += [cid.eq(head), chunk.eq(0)]
                    m.next = "COUNT"
            with m.State("COUNT"):  # the meta read was presented in IDLE; chunk 0 now
                m.d.comb += self.busy.eq(1)
                m.d.sync += count.eq(self.meta.data.count)
                m.next = "FETCH"
                fetch()
            with m.State("FETCH"):
                m.d.comb += self.busy.eq(1)
                fetch()
            with m.State("WAIT"):  # the round's last chunk is in the table's output register
                m.d.comb += self.busy.eq(1)
                m.next = "LAST"
            with m.State("LAST"):  # the round's last chunk is loaded at this cycle's edge
                m.d.comb += self.busy.eq(1)
                m.d.sync += [
                    step.eq(bk - 1),
                    shifted.eq(count << bk),
                    minus.eq(-(count << bk)),
                ]
                m.next = "DIVIDE"
            with m.State("DIVIDE"):
                m.d.comb += self.busy.eq(1)
                for i in range(D):  # quotient bit = sign of the new partial remainder
                    nxt = rem[i] + Mux(rem[i] < 0, shifted, minus)
                    m.d.sync += [rem[i].eq(nxt), quo[i].eq(Cat(nxt >= 0, quo[i][:-1]))]
                m.d.sync += [step.eq(step - 1), shifted.eq(shifted >> 1), minus.eq(minus >> 1)]
                with m.If(step == 0):
                    m.next = "NEXT"
                    with m.If(last_round):
                        m.next = "WRITE"
            with m.State("NEXT"):  # keep this round's results; read the next round's first chunk
                m.d.comb += self.busy.eq(1)
                if rounds > 1:
                    m.d.sync += cen.eq(Cat(cen[D * bk :], results))
                m.next = "FETCH"
                fetch()
            with m.State("WRITE"):
                m.d.comb += [
                    self.busy.eq(1),
                    self.write.en.eq(1),
                    self.write.addr.eq(cid),
                    self.write.bias.eq(bias),
                    self.write.key.eq(Cat(cen[D * bk :], results) if rounds > 1 else results),
                    self.write.count.eq(count),
                ]
                m.next = "IDLE"
        return m
