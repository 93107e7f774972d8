"""Centroid table of the clustering unit: per cluster the exact key sum, ``|S|^2`` and the count."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from model.dre.cluster import ClusterWidths
from model.dre.config import ConfigError, DREConfig, require_config

#: Cycles from a ``cand_meta`` read's address to its data (:class:`CentroidTable`).
META_READ_LATENCY = 2


def registered_read(m: Module, mem: Memory, addr, name: str) -> Signal:
    """A *registered* read port of ``mem`` at ``addr``: the read data straight into a register
    without reset, which the FPGA flow folds into the block RAM's output register (0.96 ns clock
    to out instead of 5.83).  Returns that register: two cycles after the address it holds the
    row as written up to the cycle before the address cycle; a read of a row written in its
    address cycle is undefined where ``mem`` carries ``no_rw_check`` (simulation gives the old
    row).  Nothing may sit between the memory and the register, or the flow cannot fold it."""
    rp = mem.read_port(transparent_for=())
    data_q = Signal(mem.shape, name=name, reset_less=True)
    m.d.comb += rp.addr.eq(addr)
    m.d.sync += data_q.eq(rp.data)
    return data_q


def chunk_shape(cfg: DREConfig) -> range:
    """Shape of a chunk index ``0 .. G-1`` (at least one bit, so that no port is 0 bits wide)."""
    return range(max(2, cfg.cl_groups))


def sum_chunk_layout(cfg: DREConfig) -> data.ArrayLayout:
    """``cl_lanes`` signed sum elements: one row of the sum memory."""
    return data.ArrayLayout(signed(ClusterWidths.of(cfg).sum), cfg.cl_lanes)


def meta_layout(cfg: DREConfig) -> data.StructLayout:
    """``|S|^2`` and member count of one cluster."""
    wd = ClusterWidths.of(cfg)
    return data.StructLayout({"norm": unsigned(wd.sum_norm), "count": unsigned(cfg.count_bits)})


class SumReadSignature(wiring.Signature):
    """A read port of the sum memory, from the reader's side.

    ``id``, ``chunk`` (Out) -> ``data`` (In): one cycle (a candidate port of
    :class:`CentroidTable`) or two (its registered ``upd`` and ``wb`` ports) after
    ``id``/``chunk`` are presented, ``data`` holds elements ``chunk*cl_lanes ..
    chunk*cl_lanes + cl_lanes-1`` of ``S_id``.  Always enabled.
    """

    def __init__(self, cfg: DREConfig):
        super().__init__(
            {
                "id": Out(range(cfg.n_max)),
                "chunk": Out(chunk_shape(cfg)),
                "data": In(sum_chunk_layout(cfg)),
            }
        )


class MetaReadSignature(wiring.Signature):
    """A read port of the meta memory: ``id`` (Out) -> ``data`` (In, ``norm``, ``count``), one
    cycle (:class:`CentroidTable`'s ``wb_meta``) or :data:`META_READ_LATENCY` (its registered
    ``cand_meta`` ports) of latency, always enabled."""

    def __init__(self, cfg: DREConfig):
        super().__init__({"id": Out(range(cfg.n_max)), "data": In(meta_layout(cfg))})


class SumWriteSignature(wiring.Signature):
    """Write of one chunk of ``S_id`` in a cycle with ``en`` high (from the writer's side)."""

    def __init__(self, cfg: DREConfig):
        super().__init__(
            {
                "en": Out(1),
                "id": Out(range(cfg.n_max)),
                "chunk": Out(chunk_shape(cfg)),
                "data": Out(sum_chunk_layout(cfg)),
            }
        )


class SumRowSignature(wiring.Signature):
    """A row of the sum memory that a write will change (from the writer's side): ``en``,
    ``id``, ``chunk``; announced ahead of the write (``SumUpdate.ahead``)."""

    def __init__(self, cfg: DREConfig):
        super().__init__(
            {"en": Out(1), "id": Out(range(cfg.n_max)), "chunk": Out(chunk_shape(cfg))}
        )


class MetaWriteSignature(wiring.Signature):
    """Write of ``|S_id|^2`` and ``n_id`` in a cycle with ``en`` high."""

    def __init__(self, cfg: DREConfig):
        super().__init__({"en": Out(1), "id": Out(range(cfg.n_max)), "data": Out(meta_layout(cfg))})


class CentroidTable(wiring.Component):
    """``n_max`` clusters: exact key sum ``S`` (``d`` x ``bk + count_bits`` signed), ``|S|^2`` and
    the member count ``n``, in two :class:`amaranth.lib.memory.Memory`.

    Organisation: the *sum memory* has ``n_max * G`` rows (``G = d / cl_lanes``) of ``cl_lanes``
    elements; row ``id * G + chunk`` holds elements ``chunk*cl_lanes ..`` of ``S_id``.  The *meta
    memory* has ``n_max`` rows of ``(norm, count)``.  The quantised centroid is not stored here: it
    is computed from ``S`` and ``n`` by the write-back engine and kept by the retrieval datapath's
    plane store.  Contents after reset are zero, but the clustering unit never relies on it (it
    writes a new cluster's row before reading it).

    Interface (all read ports synchronous and always enabled)
    ---------------------------------------------------------
    cand : In(SumReadSignature) x ``ports``
        The candidates' sum reads of the cosine test; one cycle of latency, transparent.
    cand_meta : In(MetaReadSignature) x ``meta_ports``
        The candidates' meta reads (``meta_ports`` defaults to ``ports``): *registered*,
        :data:`META_READ_LATENCY` (2) cycles of latency, not transparent (below).
    upd : In(SumReadSignature)
        Read half of the read-modify-write that adds a key to a sum: *registered*, two cycles
        of latency, not transparent (below).
    wb : In(SumReadSignature), wb_meta : In(MetaReadSignature)
        The write-back engine's reads (``wb`` only with ``wb_port=True``; without it, the user
        shares ``upd`` between the sum update and the write-back, saving a replica of the sum
        memory).  ``wb`` is registered like ``upd``; ``wb_meta`` has one cycle of latency and
        is transparent.
    wr : In(SumWriteSignature), wr_meta : In(MetaWriteSignature)
        One chunk and one meta row per cycle; no backpressure.

    The candidate sum ports and ``wb_meta`` are transparent: a read of a row written in the
    same cycle returns the new contents (the clustering unit relies on it for the sums: a sum
    update that writes its first chunk in the cycle a dot product starts reading is seen by
    all its chunks).  On an FPGA or ASIC this is a bypass multiplexer per read port; here it is
    written out (both memories carry Yosys's ``no_rw_check``): the write's row is compared with
    each read's row in the read's address cycle, registered, and the write data is registered
    once (``wr_last``, and its meta counterpart).

    The registered ports ``upd``, ``wb`` and ``cand_meta`` put the memory's read data straight
    into a register (no reset), which the FPGA flow folds into the block RAM's output register
    (0.96 ns clock to out instead of 5.83, "Fmax, tenth round" of ``docs/cluster.md``):
    ``data`` two cycles after the address holds the row as written up to the cycle before the
    address cycle.  A write in the cycle after the address cycle is not seen; a read of a row
    written *in* its address cycle is undefined (``no_rw_check``: no collision logic behind the
    block RAM; simulation gives the old contents).  The sum update never reads a row written so
    recently (``hw.cluster_update.SumUpdate``); the write-back engine is given the id again by
    any update that overlaps its reads; the clustering unit's meta reads may collide only with
    the last decision's write, whose values it takes from the decision's own registers
    (``hw.cluster_resolve.CandidateResolve``).

    ``bypass_out=True`` leaves that multiplexer of the ``cand`` ports to the reader: their
    ``data`` is then the memory's raw read data (the contents before a write in the read's
    address cycle), ``cand_hit[i][0]`` (Out, in the data cycle) says that the row was written in
    the address cycle, and the transparent value is ``Mux(cand_hit[i][0], wr_last,
    cand[i].data)``.  A reader that registers ``data`` directly (no reset) lets the FPGA flow
    fold that register into the block RAM's output register (``synth.ecp5_flow``: 0.96 ns
    clock-to-out instead of 5.83) and applies the multiplexer after it.  With it the table also
    *forwards*: ``wr_ahead[n]`` (In) names the row written ``n + 1`` cycles after this one, and
    ``cand_hit[i][n + 1]`` says that the read's row is written ``n + 1`` cycles after its
    address cycle, so that a reader that waits for that write (``ClusterDots``' q2, two cycles
    after the address) takes its data instead: the contents after the writes of the address
    cycle and the two after it.
    """

    def __init__(
        self,
        cfg: DREConfig,
        ports: int = 3,
        meta_ports: int | None = None,
        wb_port: bool = True,
        bypass_out: bool = False,
    ):
        require_config(cfg)
        if not isinstance(ports, int) or ports < 1:
            raise ConfigError(f"ports={ports!r} must be an integer >= 1")
        meta_ports = ports if meta_ports is None else meta_ports
        if not isinstance(meta_ports, int) or meta_ports < 1:
            raise ConfigError(f"meta_ports={meta_ports!r} must be an integer >= 1")
        self.cfg = cfg
        self.ports, self.meta_ports, self.wb_port = ports, meta_ports, bool(wb_port)
        self.bypass_out = bool(bypass_out)
        members = {
            "cand": In(SumReadSignature(cfg)).array(ports),
            "cand_meta": In(MetaReadSignature(cfg)).array(meta_ports),
            "upd": In(SumReadSignature(cfg)),
            "wb": In(SumReadSignature(cfg)),
            "wb_meta": In(MetaReadSignature(cfg)),
            "wr": In(SumWriteSignature(cfg)),
            "wr_meta": In(MetaWriteSignature(cfg)),
        }
        if not self.wb_port:
            del members["wb"]
        if self.bypass_out:
            members["cand_hit"] = Out(3).array(ports)
            members["wr_last"] = Out(sum_chunk_layout(cfg))
            members["wr_ahead"] = In(SumRowSignature(cfg)).array(2)
        super().__init__(members)

    def elaborate(self, platform):
        cfg = self.cfg
        G = cfg.cl_groups
        m = Module()
        # no_rw_check: every sum read port's read-during-write bypass is explicit (below)
        m.submodules.sums = sums = Memory(
            shape=sum_chunk_layout(cfg), depth=cfg.n_max * G, init=[], attrs={"no_rw_check": 1}
        )
        # no_rw_check: wb_meta's bypass is explicit (below), cand_meta's reads are registered
        m.submodules.meta = meta = Memory(
            shape=meta_layout(cfg), depth=cfg.n_max, init=[], attrs={"no_rw_check": 1}
        )

        def row(port):
            if G == 1:
                return port.id
            if G & (G - 1) == 0:  # a power of two: the row is the bits side by side, no adder
                return Cat(port.chunk[: G.bit_length() - 1], port.id)
            # id * G as shifts and adds of the constant's bits (no multiplier cell)
            return sum(port.id << b for b in range(G.bit_length()) if G >> b & 1) + port.chunk

        wp = sums.write_port()
        m.d.comb += [wp.en.eq(self.wr.en), wp.addr.eq(row(self.wr)), wp.data.eq(self.wr.data)]
        mw = meta.write_port()
        m.d.comb += [
            mw.en.eq(self.wr_meta.en),
            mw.addr.eq(self.wr_meta.id),
            mw.data.eq(self.wr_meta.data),
        ]
        wr_last = Signal(sum_chunk_layout(cfg))  # the data written in the previous cycle
        m.d.sync += wr_last.eq(self.wr.data)
        if self.bypass_out:
            m.d.comb += self.wr_last.eq(wr_last)
        # the writes of the address cycle and, with bypass_out, of the two after it
        writes = (self.wr, *self.wr_ahead) if self.bypass_out else (self.wr,)
        for k, port in enumerate(self.cand):
            rp = sums.read_port(transparent_for=())
            # hit[n]: the row read is written n cycles after the address cycle
            hit = Signal(len(writes), name=f"sum_hit{k}")
            m.d.comb += rp.addr.eq(row(port))
            m.d.sync += hit.eq(Cat(*[w.en & (row(w) == row(port)) for w in writes]))
            if self.bypass_out:
                m.d.comb += [port.data.eq(rp.data), self.cand_hit[k].eq(hit)]
            else:
                m.d.comb += port.data.eq(Mux(hit[0], wr_last, rp.data))
        # the registered ports (registered_read)
        for k, port in enumerate((self.upd, *((self.wb,) if self.wb_port else ()))):
            m.d.comb += port.data.eq(registered_read(m, sums, row(port), f"sum_q{k}"))
        for k, port in enumerate(self.cand_meta):
            m.d.comb += port.data.eq(registered_read(m, meta, port.id, f"meta_q{k}"))
        # wb_meta: transparent, the bypass written out like the sum ports'
        rp = meta.read_port(transparent_for=())
        meta_hit = Signal()
        meta_last = Signal(meta_layout(cfg), reset_less=True)
        m.d.comb += rp.addr.eq(self.wb_meta.id)
        m.d.sync += [
            meta_hit.eq(self.wr_meta.en & (self.wr_meta.id == self.wb_meta.id)),
            meta_last.eq(self.wr_meta.data),
        ]
        m.d.comb += self.wb_meta.data.eq(Mux(meta_hit, meta_last, rp.data))
        return m
