"""The DRE on standard buses: an AXI4-Lite register port and AXI4-Stream data ports.

:class:`AXIDRE` wraps :class:`hw.dre.DRE` without changing what it computes (``python -m
hw.export --bus axi``).  Port names follow the usual ``s_axil_*`` / ``s_axis_<name>_*`` /
``m_axis_<name>_*`` convention, so that vendor tools and cocotbext-axi find the interfaces by
prefix.  The payload of each stream travels in the low bits of ``tdata`` with the layout of the
native DRE (bit by bit in the JSON ``python -m hw.export`` writes); ``tdata`` is the payload
width rounded up to whole bytes, the pad bits are 0 on outputs and ignored on inputs.

AXI4-Lite (``s_axil``, 32-bit data, :data:`AXIL_ADDR_BITS`-bit byte address)
    Register ``k`` of :mod:`hw.dre_regs` (a word address) is at byte address ``4 * k``; the
    low two address bits are ignored.  A write needs its address and data together (``awready``
    and ``wready`` rise in the same cycle, when both ``awvalid`` and ``wvalid`` are high and no
    response is pending) and is answered ``OKAY``; a write with ``wstrb != 0xF`` is not
    performed and answered ``SLVERR`` (registers are whole words).  A read takes two cycles
    (``arready`` then ``rvalid``) and is always ``OKAY``.  Addresses beyond the 64-word map read 0
    and ignore writes, as unmapped words of the map do.  A write wins over a read offered in the
    same cycle.  ``*prot`` is accepted and ignored.

AXI4-Stream
    ``s_axis_keys``: one key per beat; ``tlast`` may mark the last key of a frame but is not
    needed (the DRE frames by ``GRID_W * GRID_H``).  ``s_axis_queries``: one retrieval per beat
    (``tlast`` ignored).  ``m_axis_assignments``: one assignment per key, ``tlast`` = the
    payload's ``last`` (last key of the frame).  ``m_axis_selections``: the RECORD beats of one
    retrieval, then its TRAILER with ``tlast`` high, so one AXI-Stream packet is one retrieval.

Timing: the streams are the DRE's own (no added latency, ``tready`` straight through).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw import dre_regs
from hw.cluster_unit import result_layout as assignment_layout
from hw.dre import DRE, queries_stream_layout, selections_layout
from hw.layouts import Kind, key_layout
from model.dre.config import ConfigError, DREConfig

#: byte-address width of the AXI4-Lite port (a 4 KiB window; the map uses the first 256 bytes)
AXIL_ADDR_BITS = 12
#: AXI response codes
OKAY, SLVERR = 0, 2


def tdata_bits(width: int) -> int:
    """``tdata`` width for a payload of ``width`` bits: whole bytes."""
    return -(-width // 8) * 8


def stream_ports(cfg: DREConfig, rule: str = "v2") -> dict[str, tuple[str, str, int, int]]:
    """Per stream: (AXI prefix, direction "in"/"out", payload bits, tdata bits)."""
    widths = {
        "keys": key_layout(cfg).size,
        "queries": queries_stream_layout(cfg, rule).size,
        "assignments": assignment_layout(cfg).size,
        "selections": selections_layout(cfg, rule).size,
    }
    out = {}
    for name, w in widths.items():
        d = "in" if name in ("keys", "queries") else "out"
        prefix = f"{'s' if d == 'in' else 'm'}_axis_{name}"
        out[name] = (prefix, d, w, tdata_bits(w))
    return out


def axil_members() -> dict:
    a = AXIL_ADDR_BITS
    return {
        "s_axil_awaddr": In(a),
        "s_axil_awprot": In(3),
        "s_axil_awvalid": In(1),
        "s_axil_awready": Out(1),
        "s_axil_wdata": In(dre_regs.DATA_BITS),
        "s_axil_wstrb": In(dre_regs.DATA_BITS // 8),
        "s_axil_wvalid": In(1),
        "s_axil_wready": Out(1),
        "s_axil_bresp": Out(2),
        "s_axil_bvalid": Out(1),
        "s_axil_bready": In(1),
        "s_axil_araddr": In(a),
        "s_axil_arprot": In(3),
        "s_axil_arvalid": In(1),
        "s_axil_arready": Out(1),
        "s_axil_rdata": Out(dre_regs.DATA_BITS),
        "s_axil_rresp": Out(2),
        "s_axil_rvalid": Out(1),
        "s_axil_rready": In(1),
    }


class AXIDRE(wiring.Component):
    """:class:`hw.dre.DRE` with an AXI4-Lite register port and AXI4-Stream ports.

    Interface (see the module docstring for the protocol details)
    ---------
    s_axil_* : AXI4-Lite slave, the register map of :mod:`hw.dre_regs` at byte address 4 * word.
    s_axis_keys_{tdata,tvalid,tready,tlast} : keys in (payload ``hw.layouts.key_layout``).
    s_axis_queries_{tdata,tvalid,tready,tlast} : retrievals in (``queries_stream_layout``).
    m_axis_assignments_{tdata,tvalid,tready,tlast} : assignments out, ``tlast`` = end of frame.
    m_axis_selections_{tdata,tvalid,tready,tlast} : selections out, ``tlast`` = trailer.
    busy : Out(1), as :class:`hw.dre.DRE`.
    """

    def __init__(self, cfg: DREConfig, *, rule: str = "v2"):
        try:
            DRE.check_config(cfg)
            self.dre = DRE(cfg, rule=rule)
        except ConfigError:
            self._MustUse__silence = True
            raise
        self.cfg, self.rule = cfg, rule
        self.ports = stream_ports(cfg, rule)
        members = axil_members()
        for prefix, d, _, tw in self.ports.values():
            i, o = (In, Out) if d == "in" else (Out, In)
            members[f"{prefix}_tdata"] = i(tw)
            members[f"{prefix}_tvalid"] = i(1)
            members[f"{prefix}_tready"] = o(1)
            members[f"{prefix}_tlast"] = i(1)
        members["busy"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dre = dre = self.dre
        regs = dre.regs
        lo = 2  # byte address -> word address
        hi = lo + dre_regs.ADDR_BITS

        # ---- AXI4-Lite writes ----------------------------------------------------------------
        bvalid = Signal()
        bresp = Signal(2)
        w_fire = Signal()
        m.d.comb += [
            w_fire.eq(self.s_axil_awvalid & self.s_axil_wvalid & ~bvalid),
            self.s_axil_awready.eq(w_fire),
            self.s_axil_wready.eq(w_fire),
            self.s_axil_bvalid.eq(bvalid),
            self.s_axil_bresp.eq(bresp),
        ]
        full = self.s_axil_wstrb == (1 << len(self.s_axil_wstrb)) - 1
        in_map_w = self.s_axil_awaddr[hi:] == 0
        with m.If(w_fire):
            m.d.sync += [bvalid.eq(1), bresp.eq(Mux(full, OKAY, SLVERR))]
        with m.Elif(self.s_axil_bready):
            m.d.sync += bvalid.eq(0)

        # ---- AXI4-Lite reads -----------------------------------------------------------------
        rvalid = Signal()
        r_zero = Signal()  # the read was outside the map: data 0
        r_fire = Signal()
        m.d.comb += [
            r_fire.eq(self.s_axil_arvalid & ~rvalid & ~w_fire),
            self.s_axil_arready.eq(r_fire),
            self.s_axil_rvalid.eq(rvalid),
            self.s_axil_rresp.eq(OKAY),
            self.s_axil_rdata.eq(Mux(r_zero, 0, regs.r_data)),
        ]
        in_map_r = self.s_axil_araddr[hi:] == 0
        with m.If(r_fire):
            m.d.sync += [rvalid.eq(1), r_zero.eq(~in_map_r)]
        with m.Elif(self.s_axil_rready):
            m.d.sync += rvalid.eq(0)

        # ---- the DRE's register bus (one access per cycle, the write first) -------------------
        m.d.comb += [
            regs.addr.eq(Mux(w_fire, self.s_axil_awaddr[lo:hi], self.s_axil_araddr[lo:hi])),
            regs.w_en.eq(w_fire & full & in_map_w),
            regs.w_data.eq(self.s_axil_wdata),
            regs.r_en.eq(r_fire & in_map_r),
        ]

        # ---- AXI4-Stream ---------------------------------------------------------------------
        for name, (prefix, d, w, _) in self.ports.items():
            st = getattr(dre, name)
            tdata = getattr(self, f"{prefix}_tdata")
            tvalid = getattr(self, f"{prefix}_tvalid")
            tready = getattr(self, f"{prefix}_tready")
            tlast = getattr(self, f"{prefix}_tlast")
            if d == "in":
                m.d.comb += [
                    st.payload.eq(tdata[:w]),
                    st.valid.eq(tvalid),
                    tready.eq(st.ready),
                ]
            else:
                last = st.payload.last if name == "assignments" else st.payload.kind == Kind.TRAILER
                m.d.comb += [
                    tdata.eq(st.payload.as_value()),
                    tvalid.eq(st.valid),
                    st.ready.eq(tready),
                    tlast.eq(last),
                ]
        m.d.comb += self.busy.eq(dre.busy)
        return m


__all__ = ["AXIDRE", "AXIL_ADDR_BITS", "axil_members", "stream_ports", "tdata_bits"]
