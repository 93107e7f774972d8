"""Sum update engine of the clustering unit: ``S_j += k`` over the chunks of a key."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.centroid_table import SumReadSignature, SumWriteSignature, chunk_shape
from hw.cluster_dots import key_chunk_layout, key_layout
from model.dre.config import DREConfig, require_config


class SumUpdate(wiring.Component):
    """Read-modify-write of one cluster's sum, ``S_id := (opened ? 0 : S_id) + key``, one chunk of
    ``cl_lanes`` elements per cycle, through one read port and the write port of the centroid
    table; the write-back engine's reads share the read port.

    Interface
    ---------
    start : In(1)
        Begin an update with ``id``, ``opened`` and ``key`` of this cycle.  Only while not
        ``busy``.
    id : In(range(n_max)), opened : In(1), key : In(ArrayLayout(signed(bk), d))
        The cluster, whether it is opened by this key (its old sum is ignored), the key.
    busy : Out(1)
        Chunk reads ``1 .. G-1`` of the update are pending (a new ``start`` must wait).
    free_next : Out(1)
        A ``start`` is allowed in the next cycle: no ``start`` in this one, and none of the
        update's chunk reads is pending after this cycle's.
    writing : Out(1)
        A chunk is written in this cycle.
    updated : Out(1), updated_id : Out(range(n_max))
        The update's last chunk is written in this cycle (the cluster is complete in the table
        from the next cycle on; it goes to the write-back queue).
    read : Out(SumReadSignature)
        To the table's ``upd`` read port.
    write : Out(SumWriteSignature)
        To the table's ``wr`` port.
    wb_read : In(SumReadSignature), wb_grant : Out(1)
        The write-back engine's sum reads: served through ``read`` in cycles with ``wb_grant``
        (no update reads then), its data is ``read``'s.

    Timing
    ------
    Chunk ``g`` is read in cycle ``start + g`` and written (old + key chunk) in ``start + 1 +
    g``: ``G`` cycles of reads (``busy`` in the last ``G - 1``), the last write in ``start + G``
    (``updated``).  ``wb_grant = ~start & ~busy``; ``free_next`` in the cycle of the last read.
    """

    def __init__(self, cfg: DREConfig):
        require_config(cfg)
        self.cfg = cfg
        super().__init__(
            {
                "start": In(1),
                "id": In(range(cfg.n_max)),
                "opened": In(1),
                "key": In(key_layout(cfg)),
                "busy": Out(1),
                "free_next": Out(1),
                "writing": Out(1),
                "updated": Out(1),
                "updated_id": Out(range(cfg.n_max)),
                "read": Out(SumReadSignature(cfg)),
                "write": Out(SumWriteSignature(cfg)),
                "wb_read": In(SumReadSignature(cfg)),
                "wb_grant": Out(1),
            }
        )

    def elaborate(self, platform):
        cfg = self.cfg
        G, L = cfg.cl_groups, cfg.cl_lanes
        m = Module()

        rd = self.busy
        # No reset on the update's data (loaded at start, read only while the update reads or
        # writes: ``busy``, ``writing`` have theirs).
        chunk = Signal(chunk_shape(cfg))
        wchunk = Signal(chunk_shape(cfg), reset_less=True)
        upd_id = Signal(range(cfg.n_max), reset_less=True)
        upd_new = Signal(reset_less=True)
        key = Signal(key_layout(cfg), reset_less=True)
        rd_chunk = Mux(self.start, 0, chunk)
        m.d.comb += [
            self.read.id.eq(Mux(self.start, self.id, Mux(rd, upd_id, self.wb_read.id))),
            self.read.chunk.eq(Mux(self.start | rd, rd_chunk, self.wb_read.chunk)),
            self.wb_read.data.eq(self.read.data),
            self.wb_grant.eq(~self.start & ~rd),
            self.free_next.eq(~self.start & (~rd | (chunk == G - 1))),
        ]
        m.d.sync += [self.writing.eq(self.start | rd), wchunk.eq(rd_chunk)]
        with m.If(rd):
            m.d.sync += chunk.eq(chunk + 1)
            with m.If(chunk == G - 1):
                m.d.sync += rd.eq(0)
        key_chunk = Signal(key_chunk_layout(cfg))
        if G > 1:
            m.d.comb += key_chunk.eq(Value.cast(key).word_select(wchunk, L * cfg.bk))
        else:
            m.d.comb += key_chunk.eq(key)
        m.d.comb += [
            self.write.en.eq(self.writing),
            self.write.id.eq(upd_id),
            self.write.chunk.eq(wchunk),
            self.updated.eq(self.writing & (wchunk == G - 1)),
            self.updated_id.eq(upd_id),
        ]
        for l in range(L):
            old = Mux(upd_new, 0, self.read.data[l])
            m.d.comb += self.write.data[l].eq(old + key_chunk[l])
        with m.If(self.start):
            m.d.sync += [
                rd.eq(G > 1),
                chunk.eq(1 % max(2, G)),
                upd_id.eq(self.id),
                upd_new.eq(self.opened),
                key.eq(self.key),
            ]
        return m
