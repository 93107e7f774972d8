"""cocotb testbench of hw.selector.Selector, scored bit for bit against model.dre.ref.select.

Configuration arrives in the environment variable ``VREX_SELECT``: JSON, or ``@path`` of a JSON
file (an environment string is limited to 128 KiB)::

    {"cfg": {...DREConfig fields...}, "seed": 1, "random": 200, "n_hi": 64,
     "bench": null | [{"keys": [[...]], "bias": [...], "queries": [{...}]}, ...],
     "out": "path/to/summary.json"}

``random``: random retrievals after the adversarial set (skipped when ``bench`` is given);
``n_hi``: largest N drawn at random.  The summary JSON holds the number of retrievals compared
and, per retrieval, ``cycles`` and ``planes_read`` (the benchmark reads those).

Structure (in the style of cocotbext-axi): a ``TB`` owns the clock, the reset, a source per input
stream (random idle gaps), a sink on the output stream (``ready`` random every cycle) and the
scoreboard.  Each retrieval's expected records come from the reference when the query is sent;
the sink pops them in order.  The trailer's ``cycles`` is checked against the latency measured
on the bus and against the schedule documented in :class:`hw.select_core.SelectCore`.
"""

from __future__ import annotations

import json
import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from hw.layouts import (
    SELECT_ERROR_LAYOUT,
    Kind,
    select_key_load_layout,
    select_query_layout,
    select_result_layout,
)
from model.dre.config import DREConfig
from model.dre.ref import select
from verif.streams import StreamSink, StreamSource, pack, reset, spec_from_env, unpack

PERIOD_NS = 10


class TB:
    def __init__(self, dut, cfg: DREConfig, rng: random.Random):
        self.dut, self.cfg, self.rng = dut, cfg, rng
        self.klay = select_key_load_layout(cfg)
        self.qlay, self.rlay = select_query_layout(cfg), select_result_layout(cfg)
        idle = rng.choice([0.0, 0.3])
        self.keys = StreamSource(dut, "keys", rng, idle)
        self.query = StreamSource(dut, "query", rng, idle)
        self.result = StreamSink(dut, "result", rng, rng.choice([0.0, 0.3, 0.7]))
        self.expected: deque = deque()
        self.compared = 0
        self.log: list[dict] = []
        cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())

    async def reset(self):
        await reset(self.dut)

    def schedule_cycles(self, alive: tuple[int, ...]) -> tuple[int, int]:
        """Bounds on compute cycles of one retrieval from the schedule in SelectCore's docstring.

        Exact but for one cycle per pass that drops candidates: the pass is one cycle shorter
        when its last listed candidate is the one dropped, which the alive counts do not tell.
        """
        g = self.cfg.groups
        total = 1 + 2 * g
        passes_with_drops = 0
        for i, a in enumerate(alive):
            dropped = alive[i - 1] - a if i else 0
            passes_with_drops += dropped > 0
            total += a * g + dropped + 5
        return total - passes_with_drops, total

    async def load(self, keys, bias):
        for j, (k, b) in enumerate(zip(keys, bias, strict=True)):
            await self.keys.send(pack(self.klay, {"index": j, "key": k, "bias": b}))

    async def ask(self, keys, bias, q, margin, k_min, k_max, n, no_exit=0, tag=""):
        """Send one query and queue what the reference says must come out."""
        cfg = self.cfg
        err = {
            "n_zero": n == 0,
            "n_over": n > cfg.n_max,
            "k_max_zero": k_max == 0,
            "k_max_over": k_max > cfg.k_cap,
            "k_min_bad": k_min == 0 or k_min > k_max,
        }
        if any(err.values()):
            ref = None
        else:
            ref = select(
                q,
                keys[:n],
                bias[:n],
                margin,
                k_max,
                k_min,
                bq=cfg.bq,
                bk=cfg.bk,
                early_exit=not no_exit,
            )
        fields = dict(q=q, margin=margin, k_min=k_min, k_max=k_max, n=n, no_exit=no_exit)
        entry = {"ref": ref, "err": pack(SELECT_ERROR_LAYOUT, err), "tag": tag, "n": n}
        self.expected.append(entry)
        entry["t_query"] = await self.query.send(pack(self.qlay, fields))

    async def sink(self):
        """Scoreboard: pop expected retrievals in order and compare every beat."""
        while True:
            raw, t0 = await self.result.recv()
            assert self.expected, "output beat with no retrieval outstanding"
            exp = self.expected[0]
            ref, got = exp["ref"], []
            first_valid = t0
            beat = unpack(self.rlay, raw)
            while beat["kind"] == Kind.RECORD.value:
                got.append((beat["index"], beat["score"]))
                raw, _ = await self.result.recv()
                beat = unpack(self.rlay, raw)
            self.expected.popleft()
            where = f"retrieval #{self.compared} ({exp['tag']}, N={exp['n']})"
            assert beat["error"] == exp["err"], f"{where}: error flags {beat['error']:#x}"
            if ref is None:
                assert got == [] and beat["planes_read"] == 0, f"{where}: output on error"
                assert beat["cycles"] == 1, f"{where}: error trailer cycles {beat['cycles']}"
            else:
                want = list(zip(ref.indices, ref.scores, strict=True))
                assert got == want, f"{where}: records {got} != reference {want}"
                assert beat["planes_read"] == ref.planes_read, (
                    f"{where}: planes_read {beat['planes_read']} != {ref.planes_read}"
                )
                # latency on the bus: handshake cycle c0 .. first valid cycle c1
                bus = round((first_valid - exp["t_query"]) / PERIOD_NS) + 1
                assert beat["cycles"] == bus, f"{where}: cycles {beat['cycles']} != bus {bus}"
                lo, hi = self.schedule_cycles(ref.alive)
                assert lo <= beat["cycles"] <= hi, (
                    f"{where}: cycles {beat['cycles']} not in [{lo}, {hi}] (documented schedule)"
                )
                self.log.append(
                    {"tag": exp["tag"], "cycles": beat["cycles"], "planes_read": ref.planes_read}
                )
            self.compared += 1

    async def drain(self):
        while self.expected:
            await RisingEdge(self.dut.clk)


# ---- stimulus ---------------------------------------------------------------------------------
def rand_vec(rng, n, bits, style="full"):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if style == "full":
        return [rng.randint(lo, hi) for _ in range(n)]
    if style == "small":
        return [rng.randint(max(lo, -1), min(hi, 1)) for _ in range(n)]
    if style == "min":
        return [lo] * n
    raise ValueError(style)


def rand_query(rng, cfg, n):
    k_max = rng.choice([1, 2, rng.randint(1, cfg.k_cap), cfg.k_cap])
    k_min = rng.choice([1, k_max, rng.randint(1, k_max)])
    margin = rng.choice([0, rng.randint(0, 64), rng.randint(0, 4096), (1 << cfg.bias_bits) - 1])
    margin = min(margin, (1 << cfg.bias_bits) - 1)
    q = rand_vec(rng, cfg.d, cfg.bq, rng.choice(["full", "full", "small", "min"]))
    return dict(q=q, margin=margin, k_min=k_min, k_max=k_max, no_exit=int(rng.random() < 0.15))


def rand_bias(rng, cfg, n):
    hi = 1 << (cfg.bias_bits - 1)
    style = rng.choice(["zero", "small", "wide", "extreme"])
    if style == "zero":
        return [0] * n
    if style == "small":
        return [rng.randint(-4, 4) for _ in range(n)]
    if style == "wide":
        return [rng.randint(-min(hi, 1 << 12), min(hi, 1 << 12) - 1) for _ in range(n)]
    return [rng.choice([-hi, hi - 1, 0]) for _ in range(n)]


def adversarial(rng, cfg, n_hi):
    """(tag, keys, bias, [queries]) scenarios; each query dict has every field but n."""
    d, bk, bq = cfg.d, cfg.bk, cfg.bq
    n = min(n_hi, cfg.n_max)
    kmin_lo = -(1 << (bk - 1))
    yield (
        "all-equal",
        [[3 % (1 << (bk - 1))] * d] * n,
        [7] * n,
        [
            dict(q=rand_vec(rng, d, bq), margin=0, k_min=1, k_max=k, no_exit=0)
            for k in (1, cfg.k_cap)
        ],
    )
    base = [rng.choice([-1, 0, 1]) for _ in range(d)]
    keys = [base if j % 3 else [-x for x in base] for j in range(n)]  # long runs of ties
    yield (
        "ties-at-cut",
        keys,
        [0] * n,
        [
            dict(q=rand_vec(rng, d, bq, "small"), margin=m, k_min=1, k_max=k, no_exit=0)
            for k in (1, 2, cfg.k_cap)
            for m in (0, 1)
        ],
    )
    yield (
        "extreme",
        [[kmin_lo] * d] * n,
        [0] * n,
        [
            dict(q=rand_vec(rng, d, bq, "min"), margin=m, k_min=km, k_max=cfg.k_cap, no_exit=ne)
            for m in (0, (1 << cfg.bias_bits) - 1)
            for km in (1, cfg.k_cap)
            for ne in (0, 1)
        ],
    )
    hi = 1 << (cfg.bias_bits - 1)
    yield (
        "extreme-bias",
        [rand_vec(rng, d, bk, "min") for _ in range(n)],
        [rng.choice([-hi, hi - 1]) for _ in range(n)],
        [dict(q=rand_vec(rng, d, bq, "min"), margin=0, k_min=1, k_max=2, no_exit=0)],
    )
    yield (
        "N=1",
        [rand_vec(rng, d, bk)],
        [5],
        [dict(q=rand_vec(rng, d, bq), margin=0, k_min=k, k_max=k, no_exit=0) for k in (1, 2)],
    )
    m = min(n, max(1, cfg.k_cap - 1))
    yield (
        "k_max>=N",
        [rand_vec(rng, d, bk) for _ in range(m)],
        [0] * m,
        [
            dict(q=rand_vec(rng, d, bq), margin=mg, k_min=1, k_max=cfg.k_cap, no_exit=0)
            for mg in (0, (1 << cfg.bias_bits) - 1)
        ],
    )


async def error_queries(tb, keys, bias):
    cfg = tb.cfg
    kmax_field = (1 << (cfg.k_cap.bit_length() + 1)) - 1
    nmax_field = (1 << (cfg.n_max.bit_length() + 1)) - 1
    q = [0] * cfg.d
    for n, k_min, k_max in [
        (0, 1, 1),
        (cfg.n_max + 1, 1, 1),
        (nmax_field, 1, 1),
        (1, 1, 0),
        (1, 1, cfg.k_cap + 1),
        (1, 1, kmax_field),
        (1, 0, 1),
        (1, 2, 1),
    ]:
        await tb.ask(keys, bias, q, 0, k_min, k_max, n, tag="error")


@cocotb.test()
async def run_select(dut):
    spec = spec_from_env("VREX_SELECT")
    cfg = DREConfig().replace(**spec["cfg"])
    seed = spec.get("seed", 1)
    rng = random.Random(seed)
    dut._log.info(f"seed={seed} cfg={cfg.to_dict()}")
    tb = TB(dut, cfg, rng)
    await tb.reset()
    cocotb.start_soon(tb.sink())

    if spec.get("bench"):
        for case in spec["bench"]:
            await tb.drain()
            await tb.load(case["keys"], case["bias"])
            for qd in case["queries"]:
                await tb.ask(
                    case["keys"], case["bias"], n=len(case["keys"]), tag=qd.pop("tag", ""), **qd
                )
    else:
        n_hi = spec.get("n_hi", cfg.n_max)
        for tag, keys, bias, queries in adversarial(rng, cfg, n_hi):
            await tb.drain()  # keys wait for idle anyway; this keeps expectations simple
            await tb.load(keys, bias)
            for qd in queries:  # back to back, no wait for the results
                await tb.ask(keys, bias, n=len(keys), tag=tag, **qd)
        await error_queries(tb, keys, bias)
        left = spec.get("random", 100)
        while left > 0:
            n = rng.choice([1, 2, rng.randint(1, n_hi), rng.randint(1, n_hi), n_hi])
            style = rng.choice(["full", "full", "small"])
            keys = [rand_vec(rng, cfg.d, cfg.bk, style) for _ in range(n)]
            bias = rand_bias(rng, cfg, n)
            await tb.drain()
            await tb.load(keys, bias)
            for _ in range(min(left, rng.randint(1, 6))):
                await tb.ask(keys, bias, n=n, tag="random", **rand_query(rng, cfg, n))
                left -= 1
    await tb.drain()
    for _ in range(5):
        await RisingEdge(dut.clk)
    dut._log.info(f"compared {tb.compared} retrievals, 0 mismatches")
    if spec.get("out"):
        with open(spec["out"], "w") as f:
            json.dump({"compared": tb.compared, "seed": seed, "log": tb.log}, f)
