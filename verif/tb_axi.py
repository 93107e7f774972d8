"""cocotb testbench of the AXI-wrapped DRE (:class:`hw.axi_dre.AXIDRE`), driven by cocotbext-axi.

The stimulus and expected responses are those of ``verif/sim_dre.py`` (``build_spec``: the
golden model's integer stream through :class:`model.dre.top.DRERef`), in a JSON file named by
``VREX_AXI`` (``@path``), in the format ``verif/tb_dre.py`` documents.

:func:`axi_stream`: an ``AxiLiteMaster`` programs the registers over AXI4-Lite; per frame an
``AxiStreamSource`` sends the keys as one packet (``tlast`` on the last key) and, once they are
all taken, the retrievals (one beat each); ``AxiStreamSink`` s take the assignments (one packet
per frame, ``tlast`` on the last key) and the selections (one packet per retrieval, ``tlast`` on
its trailer).  Every beat is compared with the golden model, and at the end the performance
counters are read over AXI4-Lite.  ``stall`` / ``gap`` in the spec pause the sinks / sources.

:func:`axi_lite_registers`: ID and a read-write register over AXI4-Lite, a partial write
(``SLVERR``, not performed), an address beyond the map (reads 0).
"""

from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from cocotbext.axi import (
    AxiLiteBus,
    AxiLiteMaster,
    AxiResp,
    AxiStreamBus,
    AxiStreamFrame,
    AxiStreamSink,
    AxiStreamSource,
)

from hw import dre_regs
from hw.cluster_unit import result_layout as assignment_layout
from hw.dre import queries_stream_layout, selections_layout
from hw.layouts import Kind
from model.dre.config import DREConfig
from verif.streams import pack, pack_signed, reset, spec_from_env, unpack

PERIOD_NS = 10


def pauses(rng: random.Random, p: float):
    """A cocotbext-axi pause generator: paused with probability ``p`` each cycle."""
    while True:
        yield int(rng.random() < p)


class TB:
    def __init__(self, dut, spec: dict):
        self.dut, self.spec = dut, spec
        self.cfg = DREConfig().replace(**spec["cfg"])
        self.rule = spec.get("rule", "v2")
        self.rng = random.Random(spec.get("seed", 1))
        self.regmap = dre_regs.by_name(self.cfg)
        cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)

        def bus(prefix):
            return AxiStreamBus.from_prefix(dut, prefix)

        self.keys = AxiStreamSource(bus("s_axis_keys"), dut.clk, dut.rst, byte_lanes=1)
        self.queries = AxiStreamSource(bus("s_axis_queries"), dut.clk, dut.rst, byte_lanes=1)
        self.assignments = AxiStreamSink(bus("m_axis_assignments"), dut.clk, dut.rst, byte_lanes=1)
        self.selections = AxiStreamSink(bus("m_axis_selections"), dut.clk, dut.rst, byte_lanes=1)
        stall, gap = spec.get("stall", 0.0), spec.get("gap", 0.0)
        if stall:
            self.assignments.set_pause_generator(pauses(self.rng, stall))
            self.selections.set_pause_generator(pauses(self.rng, stall))
        if gap:
            self.keys.set_pause_generator(pauses(self.rng, gap))
            self.queries.set_pause_generator(pauses(self.rng, gap))
        self.alay = assignment_layout(self.cfg)
        self.slay = selections_layout(self.cfg, self.rule)
        self.qlay = queries_stream_layout(self.cfg, self.rule)
        self.mismatches: list[str] = []

    def mismatch(self, text: str):
        if len(self.mismatches) < 20:
            self.dut._log.error(f"MISMATCH {text}")
        self.mismatches.append(text)

    async def write(self, name: str, value: int):
        r = self.regmap[name]
        for w in range(r.words):
            await self.axil.write_dword(4 * (r.addr + w), (value >> (32 * w)) & 0xFFFFFFFF)

    async def read(self, name: str) -> int:
        r = self.regmap[name]
        value = 0
        for w in range(r.words):  # low word first: it latches the high word
            value |= await self.axil.read_dword(4 * (r.addr + w)) << (32 * w)
        return value

    async def program(self, regs: dict):
        for name in ("grid_w", "grid_h", "tau_t", "tau_s", "table_size", "bias_scale"):
            await self.write(name.upper(), regs[name])
        for name in ("margin", "k_min", "k_max", "budget"):
            await self.write(name.upper(), regs.get(name, 0))
        await self.write("GAIN", regs.get("gain", dre_regs.GAIN_RESET))
        bits = ("no_exit", "raw_max", "soft")  # soft: the soft score with GAIN
        await self.write("CTRL", dre_regs.ctrl_word(*(regs.get(b, 0) for b in bits)))

    def pack_query(self, q) -> int:
        if self.rule != "v2":
            return pack_signed(q, self.cfg.bq)
        padded = list(q) + [[0] * self.cfg.d] * (self.cfg.q_max - len(q))
        return pack(self.qlay, {"q": padded, "n_q": len(q)})

    async def ask(self, queries: list[dict], where: str):
        """Send each retrieval as a one-beat packet, then check one selections packet each."""
        for qd in queries:
            await self.queries.send(AxiStreamFrame([self.pack_query(qd["q"])]))
        for i, qd in enumerate(queries):
            pkt = await self.selections.recv()
            beats = [unpack(self.slay, raw) for raw in pkt.tdata]
            tag = f"{where} query {i}"
            if not beats or beats[-1]["kind"] != Kind.TRAILER.value:
                self.mismatch(f"{tag}: packet does not end in a trailer: {beats}")
                continue
            if any(b["kind"] != Kind.RECORD.value for b in beats[:-1]):
                self.mismatch(f"{tag}: a trailer before tlast")
            fields = ("id", "take") if self.rule == "v2" else ("index", "score")
            records = [[b[fields[0]], b[fields[1]]] for b in beats[:-1]]
            if records != [list(r) for r in qd["records"]]:
                self.mismatch(f"{tag}: selection {records} != golden {qd['records']}")
            t = beats[-1]
            if (t["planes_read"], t["error"]) != (qd["planes_read"], qd["error"]):
                self.mismatch(
                    f"{tag}: trailer planes_read {t['planes_read']} error {t['error']:#x}, "
                    f"golden {qd['planes_read']} {qd['error']:#x}"
                )

    async def frame(self, t: int, fr: dict):
        if fr.get("clear"):
            await self.write("CMD", dre_regs.CMD_CLEAR_TABLE)
        await self.keys.send(AxiStreamFrame([pack_signed(k, self.cfg.bk) for k in fr["keys"]]))
        await self.keys.wait()  # a retrieval is a barrier: offer it after the frame's keys
        pkt = await self.assignments.recv()
        got = [unpack(self.alay, raw) for raw in pkt.tdata]
        n = len(fr["keys"])
        want = [
            {"id": i, "status": s, "last": int(j == n - 1)}
            for j, (i, s) in enumerate(zip(fr["ids"], fr["status"], strict=True))
        ]
        if got != want:
            bad = next((j for j, (g, w) in enumerate(zip(got, want, strict=False)) if g != w), None)
            self.mismatch(
                f"frame {t}: {len(got)} assignments in the packet, want {n}; first difference "
                f"at key {bad}: {got[bad] if bad is not None else None} != "
                f"{want[bad] if bad is not None else None}"
            )
        await self.ask(fr["queries"], f"frame {t}")


@cocotb.test()
async def axi_stream(dut):
    spec = spec_from_env("VREX_AXI")
    tb = TB(dut, spec)
    dut._log.info(f"seed={spec.get('seed')} cfg={tb.cfg.to_dict()} rule={tb.rule}")
    await reset(dut)
    assert await tb.read("ID") == dre_regs.ID_VALUE, "ID over AXI4-Lite"
    await tb.program(spec["regs"])
    if spec.get("pre_queries"):
        await tb.ask(spec["pre_queries"], "before the first frame")
    for t, fr in enumerate(spec["frames"]):
        await tb.frame(t, fr)
        dut._log.info(f"frame {t + 1}/{len(spec['frames'])}: {len(tb.mismatches)} mismatches")
    for name, want in spec.get("totals", {}).items():
        got = await tb.read(name)
        if got != want:
            tb.mismatch(f"counter {name} = {got}, golden {want}")
    assert not tb.mismatches, f"{len(tb.mismatches)} mismatches; first: {tb.mismatches[0]}"


@cocotb.test()
async def axi_lite_registers(dut):
    spec = spec_from_env("VREX_AXI")
    tb = TB(dut, spec)
    await reset(dut)
    r = tb.regmap["TABLE_SIZE"]
    assert await tb.read("ID") == dre_regs.ID_VALUE
    assert await tb.read("TABLE_SIZE") == r.reset
    await tb.write("TABLE_SIZE", 5)
    assert await tb.read("TABLE_SIZE") == 5
    # a partial write is refused with SLVERR and changes nothing
    resp = await tb.axil.write(4 * r.addr, b"\x07")
    assert resp.resp == AxiResp.SLVERR, resp
    assert await tb.read("TABLE_SIZE") == 5
    # beyond the 64-word map: reads 0, writes ignored (no alias onto word 0x10)
    far = 4 * (r.addr + (1 << dre_regs.ADDR_BITS))
    await tb.axil.write_dword(far, 9)
    assert await tb.axil.read_dword(far) == 0
    assert await tb.read("TABLE_SIZE") == 5
    for _ in range(3):
        await RisingEdge(dut.clk)
