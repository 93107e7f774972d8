"""Sum update engine of the clustering unit: ``S_j += k`` over the chunks of a key."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.centroid_table import SumReadSignature, SumRowSignature, SumWriteSignature, chunk_shape
from hw.cluster_dots import key_chunk_layout, key_layout
from model.dre.config import DREConfig, require_config

#: Cycles from a chunk's read address to its write: the table's registered read (2, the block
#: RAM's output register folded, :class:`hw.centroid_table.CentroidTable`) and the registered
#: sum (1).
WRITE_DELAY = 3


class SumUpdate(wiring.Component):
    """Read-modify-write of one cluster's sum, ``S_id := (opened ? 0 : S_id) + key``, one chunk of
    ``cl_lanes`` elements per cycle, through the centroid table's registered ``upd`` read port
    and its write port; the write-back engine's reads share the read port.

    Interface
    ---------
    start : In(1)
        Begin an update with ``id``, ``opened`` and ``key`` of this cycle.  Only while not
        ``busy``, and at least ``WRITE_DELAY + 1 = 4`` cycles after the previous ``start`` (the
        clustering unit's commits are 8 or more cycles apart).
    id : In(range(n_max)), opened : In(1), key : In(ArrayLayout(signed(bk), d))
        The cluster, whether it is opened by this key (its old sum is ignored), the key.  Read
        in the ``start`` cycle only.
    busy : Out(1)
        Chunk reads ``1 .. G-1`` of the update are pending (a new ``start`` must wait).
    free_next : Out(1)
        A ``start`` is allowed in the next cycle: no ``start`` in this one, and none of the
        update's chunk reads is pending after this cycle's.
    writing : Out(1)
        A chunk is written in this cycle.
    idle : Out(1)
        No update is under way: no chunk read pending, none in flight, none written in this
        cycle.  From registers only: a ``start`` in this cycle is not counted (the clustering
        unit starts an update only while it has a token in flight, so its own ``idle`` is low
        then; "Fmax, twelfth round" in ``docs/cluster.md``).
    updated : Out(1), updated_id : Out(range(n_max))
        The update's last chunk is written in this cycle (the cluster is complete in the table
        from the next cycle on; it goes to the write-back queue).
    read : Out(SumReadSignature)
        To the table's ``upd`` read port (registered: data two cycles after the address).
    write : Out(SumWriteSignature)
        To the table's ``wr`` port.
    ahead : Out(SumRowSignature) x 2
        ``ahead[n]``: the row ``write`` writes ``n + 1`` cycles later (to the table's
        ``wr_ahead``, which forwards the data to a candidate read of that row).
    wb_read : In(SumReadSignature), wb_grant : Out(1)
        The write-back engine's sum reads: served through ``read`` in cycles with ``wb_grant``
        (no update reads then), its data is ``read``'s (two cycles later).

    Timing
    ------
    Chunk ``g`` is read in cycle ``start + g``, its data arrive registered in ``start + 2 + g``,
    old + key chunk is registered there and written in ``start + 3 + g`` (:data:`WRITE_DELAY`):
    ``G`` cycles of reads (``busy`` in the last ``G - 1``), the last write in ``start + G + 2``
    (``updated``).  ``wb_grant = ~start & ~busy``; ``free_next`` in the cycle of the last read.
    The id, ``opened`` and the key chunk travel with each chunk, so a new update may start
    while the last chunks of the previous one are still in flight.  The read is not
    transparent: a write of the row read in its address cycle or the next is not seen; an
    update never meets one (the previous update wrote that row ``4`` or more cycles earlier),
    and the write-back engine is given the id again by any update that overlaps its reads.
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
                "idle": Out(1),
                "updated": Out(1),
                "updated_id": Out(range(cfg.n_max)),
                "read": Out(SumReadSignature(cfg)),
                "write": Out(SumWriteSignature(cfg)),
                "ahead": Out(SumRowSignature(cfg)).array(2),
                "wb_read": In(SumReadSignature(cfg)),
                "wb_grant": Out(1),
            }
        )

    def elaborate(self, platform):
        cfg = self.cfg
        G, L = cfg.cl_groups, cfg.cl_lanes
        m = Module()

        rd = self.busy
        chunk = Signal(chunk_shape(cfg))  # the next chunk to read while ``rd``
        # the update's id, opened flag and key, kept for its reads 1 .. G-1 (loaded at start;
        # no reset: read only while ``rd``)
        upd_id = Signal(range(cfg.n_max), reset_less=True)
        upd_new = Signal(reset_less=True)
        key = Signal(key_layout(cfg), reset_less=True)
        reading = self.start | rd
        rd_chunk = Mux(self.start, 0, chunk)
        m.d.comb += [
            self.read.id.eq(Mux(self.start, self.id, Mux(rd, upd_id, self.wb_read.id))),
            self.read.chunk.eq(Mux(reading, rd_chunk, self.wb_read.chunk)),
            self.wb_read.data.eq(self.read.data),
            self.wb_grant.eq(~reading),
            self.free_next.eq(~self.start & (~rd | (chunk == G - 1))),
        ]
        with m.If(rd):
            m.d.sync += chunk.eq(chunk + 1)
            with m.If(chunk == G - 1):
                m.d.sync += rd.eq(0)
        with m.If(self.start):
            m.d.sync += [
                rd.eq(G > 1),
                chunk.eq(1 % max(2, G)),
                upd_id.eq(self.id),
                upd_new.eq(self.opened),
                key.eq(self.key),
            ]

        # The chunk's pipeline: address (a) | block RAM (a + 1) | data registered, add (a + 2) |
        # write (a + 3).  Each stage carries its chunk's id, chunk index, opened flag and key
        # chunk (valid bits reset, the rest not: read only where the valid bit says so).
        def kchunk(k, c):
            return Value.cast(k).word_select(c, L * cfg.bk) if G > 1 else Value.cast(k)

        v = [Signal(name=f"v{n}") for n in range(3)]
        ids = [Signal(range(cfg.n_max), name=f"id{n}", reset_less=True) for n in range(3)]
        chunks = [Signal(chunk_shape(cfg), name=f"chunk{n}", reset_less=True) for n in range(3)]
        news = [Signal(name=f"new{n}", reset_less=True) for n in range(2)]
        kcs = [Signal(key_chunk_layout(cfg), name=f"kc{n}", reset_less=True) for n in range(2)]
        wdata = Signal.like(self.write.data, name="wdata", reset_less=True)
        m.d.sync += [
            v[0].eq(reading),
            ids[0].eq(Mux(self.start, self.id, upd_id)),
            chunks[0].eq(rd_chunk),
            news[0].eq(Mux(self.start, self.opened, upd_new)),
            kcs[0].eq(Mux(self.start, kchunk(self.key, 0), kchunk(key, chunk))),
            v[1].eq(v[0]),
            ids[1].eq(ids[0]),
            chunks[1].eq(chunks[0]),
            news[1].eq(news[0]),
            kcs[1].eq(kcs[0]),
            v[2].eq(v[1]),
            ids[2].eq(ids[1]),
            chunks[2].eq(chunks[1]),
        ]
        for l in range(L):
            old = Mux(news[1], 0, self.read.data[l])
            m.d.sync += wdata[l].eq(old + kcs[1][l])
        m.d.comb += [
            self.writing.eq(v[2]),
            self.write.en.eq(v[2]),
            self.write.id.eq(ids[2]),
            self.write.chunk.eq(chunks[2]),
            self.write.data.eq(wdata),
            self.updated.eq(v[2] & (chunks[2] == G - 1)),
            self.updated_id.eq(ids[2]),
            self.idle.eq(~rd & ~v[0] & ~v[1] & ~v[2]),
        ]
        for n in range(2):  # the rows of the writes one and two cycles later
            m.d.comb += [
                self.ahead[n].en.eq(v[1 - n]),
                self.ahead[n].id.eq(ids[1 - n]),
                self.ahead[n].chunk.eq(chunks[1 - n]),
            ]
        return m
