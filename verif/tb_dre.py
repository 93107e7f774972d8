"""cocotb testbench of the DRE top level (hw.dre.DRE), scored bit for bit against the golden model.

The stimulus and its expected responses are computed outside the simulator by
``verif/sim_dre.py`` (``model.dre.top.DRERef`` on the golden model's integer stream) and arrive
as a JSON file named by the environment variable ``VREX_DRE``::

    {"cfg": {...DREConfig...}, "seed": 1, "stall": 0.0, "gap": 0.0,
     "regs": {...model.dre.top.Registers...},
     "frames": [{"keys": [[...]], "ids": [...], "status": [...], "error": false, "clear": false,
                 "queries": [{"q": [...], "records": [[index, score], ...],
                              "planes_read": 0, "error": 0}]}],
     "rule": "v2" | "v1",
     "pre_queries": [...queries before the first frame...],
     "totals": {"TOKENS": ..., ...}, "out": "summary.json"}

Structure (cocotbext-axi style): a :class:`TB` owns the clock, the reset, the register bus, a
source per input stream and a sink per output stream; two scoreboard coroutines pop the expected
assignments and selections in order and record every mismatch (the run goes on, so one report
gives the count).  Per frame it prints one progress line; at the end it checks the performance
counters against the expected totals and writes a summary JSON (cycles, mismatches, wall time).

A second test, :func:`dre_registers`, checks the register block against ``hw.dre_regs``: reset
values, read-back of every read-write register, read-only and unmapped words, the two-word latch
and the commands.
"""

from __future__ import annotations

import json
import random
import time
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

from hw import dre_regs
from hw.cluster_unit import result_layout as assignment_layout
from hw.dre import queries_stream_layout, selections_layout
from hw.layouts import Kind
from model.dre.cluster import STATUS_NAMES
from model.dre.config import DREConfig
from verif.streams import StreamSink, StreamSource, pack, pack_signed, reset, spec_from_env, unpack

PERIOD_NS = 10
MAX_REPORTED = 20  # mismatch messages printed in full; the rest are counted


class TB:
    def __init__(
        self,
        dut,
        cfg: DREConfig,
        rng: random.Random,
        stall: float = 0.0,
        gap: float = 0.0,
        rule: str = "v2",
    ):
        self.dut, self.cfg, self.rng, self.rule = dut, cfg, rng, rule
        self.regmap = dre_regs.by_name(cfg)
        self.alay, self.slay = assignment_layout(cfg), selections_layout(cfg, rule)
        self.qlay = queries_stream_layout(cfg, rule)
        self.keys = StreamSource(dut, "keys", rng, gap)
        self.queries = StreamSource(dut, "queries", rng, gap)
        self.assignments = StreamSink(dut, "assignments", rng, stall)
        self.selections = StreamSink(dut, "selections", rng, stall)
        self.exp_assign: deque = deque()  # (id, status, last, frame)
        self.exp_select: deque = deque()  # dict(records, planes_read, error, tag)
        self.mismatches: list[str] = []
        self.n_assign = 0
        self.n_select = 0
        self.retrieval_cycles: list[int] = []
        self.last_trailer_ns = 0
        dut.regs__w_en.value = 0
        dut.regs__r_en.value = 0
        dut.regs__addr.value = 0
        dut.regs__w_data.value = 0
        cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())

    def now_cycles(self) -> int:
        return int(cocotb.utils.get_sim_time("ns")) // PERIOD_NS

    def mismatch(self, text: str):
        if len(self.mismatches) < MAX_REPORTED:
            self.dut._log.error(f"MISMATCH {text}")
        self.mismatches.append(text)

    async def reset(self):
        await reset(self.dut)

    # ---- register bus -------------------------------------------------------------------------
    async def write_word(self, addr: int, value: int):
        d = self.dut
        await FallingEdge(d.clk)
        d.regs__addr.value, d.regs__w_data.value, d.regs__w_en.value = addr, value, 1
        await FallingEdge(d.clk)
        d.regs__w_en.value = 0

    async def read_word(self, addr: int) -> int:
        d = self.dut
        await FallingEdge(d.clk)
        d.regs__addr.value, d.regs__r_en.value = addr, 1
        await FallingEdge(d.clk)
        d.regs__r_en.value = 0
        return d.regs__r_data.value.to_unsigned()

    async def write(self, name: str, value: int):
        r = self.regmap[name]
        for w in range(r.words):
            await self.write_word(r.addr + w, (value >> (32 * w)) & 0xFFFFFFFF)

    async def read(self, name: str) -> int:
        r = self.regmap[name]
        value = 0
        for w in range(r.words):  # low word first: it latches the high word
            value |= await self.read_word(r.addr + w) << (32 * w)
        return value

    async def program(self, regs: dict):
        for name in (
            "grid_w",
            "grid_h",
            "tau_t",
            "tau_s",
            "table_size",
            "bias_scale",
            "margin",
            "k_min",
            "k_max",
        ):
            await self.write(name.upper(), regs[name])
        await self.write("BUDGET", regs.get("budget", 0))
        await self.write("GAIN", regs.get("gain", dre_regs.GAIN_RESET))
        bits = ("no_exit", "raw_max", "soft")  # soft: the soft score with GAIN
        await self.write("CTRL", dre_regs.ctrl_word(*(regs.get(b, 0) for b in bits)))

    # ---- scoreboards --------------------------------------------------------------------------
    async def assignment_monitor(self):
        while True:
            raw, _ = await self.assignments.recv()
            got = unpack(self.alay, raw)
            if not self.exp_assign:
                self.mismatch(f"unexpected assignment {got}")
                continue
            want_id, want_status, want_last, where = self.exp_assign.popleft()
            if (got["id"], got["status"], got["last"]) != (want_id, want_status, want_last):
                self.mismatch(
                    f"{where}: got cluster {got['id']} {STATUS_NAMES[got['status']]} "
                    f"last {got['last']}, want {want_id} {STATUS_NAMES[want_status]} "
                    f"last {want_last}"
                )
            self.n_assign += 1

    async def selection_monitor(self):
        while True:
            raw, _ = await self.selections.recv()
            beat, records = unpack(self.slay, raw), []
            fields = ("id", "take") if self.rule == "v2" else ("index", "score")
            while beat["kind"] == Kind.RECORD.value:
                records.append([beat[fields[0]], beat[fields[1]]])
                raw, _ = await self.selections.recv()
                beat = unpack(self.slay, raw)
            self.last_trailer_ns = int(cocotb.utils.get_sim_time("ns"))
            if not self.exp_select:
                self.mismatch(f"unexpected retrieval output {records}")
                continue
            want = self.exp_select.popleft()
            where = want["tag"]
            if records != want["records"]:
                self.mismatch(f"{where}: selection {records} != golden {want['records']}")
            if beat["planes_read"] != want["planes_read"]:
                self.mismatch(
                    f"{where}: planes_read {beat['planes_read']} != golden {want['planes_read']}"
                )
            if beat["error"] != want["error"]:
                self.mismatch(f"{where}: error flags {beat['error']:#x} != {want['error']:#x}")
            self.retrieval_cycles.append(beat["cycles"])
            self.n_select += 1

    async def drain(self, limit_cycles: int):
        start = self.now_cycles()
        while self.exp_assign or self.exp_select:
            await RisingEdge(self.dut.clk)
            if self.now_cycles() - start > limit_cycles:
                self.mismatch(
                    f"timeout: {len(self.exp_assign)} assignments and {len(self.exp_select)} "
                    f"retrievals outstanding after {limit_cycles} cycles"
                )
                self.exp_assign.clear()
                self.exp_select.clear()
                return

    # ---- traffic ------------------------------------------------------------------------------
    async def send_keys(self, keys):
        for k in keys:
            await self.keys.send(pack_signed(k, self.cfg.bk))

    async def ask(self, queries, tag: str):
        for i, qd in enumerate(queries):
            self.exp_select.append(
                {
                    "records": qd["records"],
                    "planes_read": qd["planes_read"],
                    "error": qd["error"],
                    "tag": f"{tag} query {i}",
                }
            )
            await self.queries.send(self.pack_query(qd["q"]))

    def pack_query(self, q) -> int:
        """v1: one vector; v2: ``q_max`` vectors (zero-padded) and their number."""
        if self.rule != "v2":
            return pack_signed(q, self.cfg.bq)
        padded = list(q) + [[0] * self.cfg.d] * (self.cfg.q_max - len(q))
        return pack(self.qlay, {"q": padded, "n_q": len(q)})

    def budget(self, tokens: int, queries: int) -> int:
        """Generous cycle limit for a frame (a hang must end the run, not stall it)."""
        cfg = self.cfg
        per_query = 4 * cfg.n_max * cfg.bk * (cfg.q_max * cfg.groups + 2) + 64
        per_query += 2 * cfg.n_max * (cfg.n_max // cfg.k_cap + 1)  # v2 output rounds
        return 50 * (tokens * (cfg.groups + 8) + 64) + queries * per_query + 10_000


@cocotb.test()
async def dre_stream(dut):
    spec = spec_from_env("VREX_DRE")
    cfg = DREConfig().replace(**spec["cfg"])
    seed = spec.get("seed", 1)
    rng = random.Random(seed)
    tb = TB(dut, cfg, rng, spec.get("stall", 0.0), spec.get("gap", 0.0), spec.get("rule", "v1"))
    dut._log.info(f"seed={seed} (VREX_SEED replays it) cfg={cfg.to_dict()}")
    await tb.reset()
    await tb.program(spec["regs"])
    cocotb.start_soon(tb.assignment_monitor())
    cocotb.start_soon(tb.selection_monitor())
    wall0, cyc0 = time.perf_counter(), tb.now_cycles()

    if spec.get("pre_queries"):
        await tb.ask(spec["pre_queries"], "before the first frame")
        await tb.drain(tb.budget(0, len(spec["pre_queries"])))

    frames, rows = spec["frames"], []
    for t, fr in enumerate(frames):
        if fr.get("clear"):
            await tb.write("CMD", dre_regs.CMD_CLEAR_TABLE)
        start = tb.now_cycles()
        n = len(fr["keys"])
        for i, (cid, st) in enumerate(zip(fr["ids"], fr["status"], strict=True)):
            last = int(i == n - 1 and not fr["error"])  # an erroring frame has no last
            tb.exp_assign.append((cid, st, last, f"frame {t} token {i}"))
        before = len(tb.mismatches)
        await tb.send_keys(fr["keys"])
        await tb.ask(fr["queries"], f"frame {t}")
        await tb.drain(tb.budget(n, len(fr["queries"])))
        cycles = tb.now_cycles() - start
        sel = sum(len(q["records"]) for q in fr["queries"])
        rows.append({"cycles": cycles, "tokens": n, "queries": len(fr["queries"])})
        dut._log.info(
            f"frame {t + 1}/{len(frames)}: {n} tokens, {fr['status'].count(1)} new, "
            f"{fr['status'].count(2)} forced, {len(fr['queries'])} queries, {sel} selected, "
            f"{cycles} cycles, {len(tb.mismatches) - before} mismatches"
        )

    # performance counters against the golden totals
    for name, want in spec.get("totals", {}).items():
        got = await tb.read(name)
        if got != want:
            tb.mismatch(f"counter {name} = {got}, golden {want}")
    sim_cycles = tb.now_cycles() - cyc0
    wall = time.perf_counter() - wall0
    summary = {
        "seed": seed,
        "frames": rows,
        "assignments": tb.n_assign,
        "retrievals": tb.n_select,
        "retrieval_cycles": tb.retrieval_cycles,
        "mismatches": len(tb.mismatches),
        "first_mismatches": tb.mismatches[:MAX_REPORTED],
        "sim_cycles": sim_cycles,
        "wall_s": wall,
        "busy_cycles": await tb.read("BUSY_CYCLES"),
    }
    if spec.get("out"):
        with open(spec["out"], "w") as f:
            json.dump(summary, f)
    assert not tb.mismatches, (
        f"{len(tb.mismatches)} mismatches against the golden model (seed {seed}); first: "
        f"{tb.mismatches[0]}"
    )


@cocotb.test()
async def dre_registers(dut):
    spec = spec_from_env("VREX_DRE")
    cfg = DREConfig().replace(**spec["cfg"])
    seed = spec.get("seed", 1)
    rng = random.Random(seed)
    tb = TB(dut, cfg, rng)
    dut._log.info(f"seed={seed}")
    await tb.reset()
    regmap = dre_regs.register_map(cfg)
    # reset values (the map is the specification of the register block)
    for r in regmap:
        if r.access == "w1":
            continue
        got = await tb.read(r.name)
        assert got == r.reset, f"{r.name} resets to {got:#x}, map says {r.reset:#x}"
    # every read-write register holds exactly its width; read-only ones ignore writes
    for r in regmap:
        if r.access == "ro":
            if r.name in ("ID", "D", "LANES", "BQ", "BK", "N_MAX", "K_CAP", "GRID_MAX", "Q_MAX"):
                await tb.write(r.name, ~r.reset & ((1 << (32 * r.words)) - 1))
                assert await tb.read(r.name) == r.reset, f"{r.name} is read-only"
            continue
        if r.access != "rw":
            continue
        for _ in range(3):
            v = rng.getrandbits(32 * r.words)
            await tb.write(r.name, v)
            got = await tb.read(r.name)
            assert got == v & ((1 << r.width) - 1), f"{r.name}: wrote {v:#x}, read {got:#x}"
    used = {r.addr + w for r in regmap for w in range(r.words)}
    for addr in range(1 << dre_regs.ADDR_BITS):
        if addr not in used:
            await tb.write_word(addr, 0xFFFFFFFF)
            assert await tb.read_word(addr) == 0, f"unmapped word {addr:#x} reads non-zero"
    assert await tb.read_word(tb.regmap["CMD"].addr) == 0, "CMD reads as 0"
    # the two-word latch: the high word read is the one latched by the low word read
    mr = tb.regmap["MARGIN"]
    if mr.width > 32:
        await tb.write("MARGIN", (5 << 32) | 7)
        assert await tb.read_word(mr.addr) == 7
        await tb.write_word(mr.addr + 1, 9)  # changes the register, not the latch
        assert await tb.read_word(mr.addr + 1) == 5, "high word must come from the latch"
        assert await tb.read("MARGIN") == (9 << 32) | 7
    # BUSY_CYCLES stays 0 while idle; CLEAR_COUNTERS and CLEAR_ERRORS act
    assert await tb.read("BUSY_CYCLES") == 0, "busy cycles counted while idle"
    status = await tb.read("STATUS")
    assert status & 1 and not status & 2, f"STATUS {status:#x}: want cluster idle, select idle"
