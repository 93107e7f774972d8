"""Owner map of the clustering unit: per grid position, the cluster of its last token."""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.centroid_table import registered_read
from model.dre.config import DREConfig, require_config

#: Cycles from a read's address to its data.
READ_LATENCY = 2


def owner_layout(cfg: DREConfig) -> data.StructLayout:
    """One owner-map row: whether the position's last token joined or opened a cluster
    (``valid``: it was not dropped) and that cluster."""
    return data.StructLayout({"valid": 1, "id": range(cfg.n_max)})


class OwnerMap(wiring.Component):
    """``grid_max`` rows of :func:`owner_layout`, one write port and ``ports`` registered read
    ports.

    Interface
    ---------
    rd_addr : In(range(grid_max)).array(ports)
        Read addresses.
    rd_data : Out(owner_layout).array(ports)
        The row at ``rd_addr`` of :data:`READ_LATENCY` (2) cycles before, as written up to the
        cycle before that address cycle: a write in the cycle after the address cycle is not
        seen, and a read whose address cycle writes the same row is undefined (the memory
        carries Yosys's ``no_rw_check``: no collision logic behind the block RAM; simulation
        gives the old row).  The clustering unit never uses a read of a row written so
        recently (``docs/cluster.md``, "Fmax, eleventh round").  Undefined for rows never
        written.
    wr_en : In(1), wr_addr : In(range(grid_max)), wr_data : In(owner_layout)
        Write ``wr_data`` to row ``wr_addr`` at the end of a cycle with ``wr_en``.

    Structure: one memory (block RAM at the default sizes), each read port's data straight into
    a register without reset, which the FPGA flow folds into the block RAM's output register:
    no logic between the memory and the register, and none after it.
    """

    def __init__(self, cfg: DREConfig, ports: int = 2):
        require_config(cfg)
        if not isinstance(ports, int) or ports < 1:
            raise ValueError(f"OwnerMap: ports must be a positive integer, got {ports!r}")
        self.cfg = cfg
        self.ports = ports
        layout = owner_layout(cfg)
        super().__init__(
            {
                "rd_addr": In(range(cfg.grid_max)).array(ports),
                "rd_data": Out(layout).array(ports),
                "wr_en": In(1),
                "wr_addr": In(range(cfg.grid_max)),
                "wr_data": In(layout),
            }
        )

    def elaborate(self, platform):
        cfg = self.cfg
        layout = owner_layout(cfg)
        m = Module()
        # no_rw_check: see rd_data (without it Yosys puts a collision multiplexer between the
        # block RAM and the register, and the register cannot be folded into it)
        m.submodules.mem = mem = Memory(
            shape=layout, depth=cfg.grid_max, init=[], attrs={"no_rw_check": 1}
        )
        wp = mem.write_port()
        m.d.comb += [wp.en.eq(self.wr_en), wp.addr.eq(self.wr_addr), wp.data.eq(self.wr_data)]
        for k in range(self.ports):
            m.d.comb += self.rd_data[k].eq(registered_read(m, mem, self.rd_addr[k], f"own_q{k}"))
        return m
