"""cocotb testbench of hw.select_tokens.TokenSelector, scored bit for bit against
model.dre.ref.select_tokens.

Configuration arrives in ``VREX_TOKENS``: JSON, or ``@path`` of a JSON file::

    {"cfg": {...DREConfig fields...}, "seed": 1, "random": 200, "n_hi": 64,
     "bench": null | [{"keys": [[...]], "counts": [...], "queries": [{...}]}, ...],
     "out": "path/to/summary.json"}

``random``: random retrievals after the adversarial set (skipped when ``bench`` is given);
``n_hi``: largest N drawn at random.  Each query dict of ``bench`` holds ``queries`` (the Q
vectors), ``budget``, ``no_exit``, ``raw_max``, ``soft`` with its ``gain`` and an optional
``tag``.  The summary JSON holds the number of retrievals compared and, per retrieval,
``cycles`` and ``planes_read``.

As ``verif/tb_select.py``: sources with random idle gaps, a sink with random ``ready``, and a
scoreboard that pops each retrieval's expected ``(id, take)`` records, ``planes_read`` and error
flags, computed by the reference when the query is sent.  ``cycles`` in the trailer is checked
against the latency measured on the bus when the sink never stalls.  A watchdog fails the
test (with the seed) when retrievals are outstanding and none completes within a bound well
above the longest retrieval's cycles: a lost beat or a stuck handshake ends the run instead of
hanging it.
"""

from __future__ import annotations

import json
import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from hw.layouts import (
    TOKEN_ERROR_LAYOUT,
    Kind,
    token_key_load_layout,
    token_query_layout,
    token_result_layout,
)
from hw.select_tokens import cycle_formula
from model.dre.config import DREConfig
from model.dre.ref import select_tokens
from model.dre.tokens import GAIN_BITS
from verif.streams import StreamSink, StreamSource, pack, reset, spec_from_env, unpack

PERIOD_NS = 10


class TB:
    def __init__(self, dut, cfg: DREConfig, rng: random.Random, stall: float | None = None):
        self.dut, self.cfg, self.rng = dut, cfg, rng
        self.klay = token_key_load_layout(cfg)
        self.qlay = token_query_layout(cfg)
        self.rlay = token_result_layout(cfg)
        idle = rng.choice([0.0, 0.3])
        self.stall = rng.choice([0.0, 0.3, 0.7]) if stall is None else stall
        self.keys = StreamSource(dut, "keys", rng, idle)
        self.query = StreamSource(dut, "query", rng, idle)
        self.result = StreamSink(dut, "result", rng, self.stall)
        self.expected: deque = deque()
        self.compared = 0
        self.log: list[dict] = []
        cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())

    async def load(self, keys, counts):
        for j, (k, c) in enumerate(zip(keys, counts, strict=True)):
            await self.send_key(j, k, c)

    async def send_key(self, j, k, c):
        await self.keys.send(pack(self.klay, {"index": j, "key": k, "count": c}))

    async def ask(
        self,
        keys,
        counts,
        queries,
        budget,
        n,
        no_exit=0,
        raw_max=0,
        n_q=None,
        tag="",
        soft=0,
        gain=0,
    ):
        """Send one query and queue what the reference says must come out (``soft``: the soft
        score with ``gain``)."""
        cfg = self.cfg
        n_q = len(queries) if n_q is None else n_q
        err = {"n_zero": n == 0, "n_over": n > cfg.n_max, "q_zero": n_q == 0}
        err["q_over"] = n_q > cfg.q_max
        err["gain_zero"] = bool(soft) and gain == 0
        ref = None
        if not any(err.values()):
            ref = select_tokens(
                queries[:n_q],
                keys[:n],
                counts[:n],
                budget,
                bq=cfg.bq,
                bk=cfg.bk,
                normalize=not raw_max,
                early_exit=not no_exit,
                k_cap=cfg.k_cap,
                score="soft" if soft else None,
                gain=gain if soft else None,
            )
        padded = list(queries[: cfg.q_max]) + [[0] * cfg.d] * (cfg.q_max - len(queries))
        fields = dict(
            queries=padded[: cfg.q_max],
            n_q=n_q,
            budget=budget,
            n=n,
            no_exit=no_exit,
            raw_max=raw_max,
            soft=soft,
            gain=gain,
        )
        entry = {"ref": ref, "err": pack(TOKEN_ERROR_LAYOUT, err), "tag": tag, "n": n}
        self.expected.append(entry)
        entry["t_query"] = await self.query.send(pack(self.qlay, fields))

    async def sink(self):
        """Scoreboard: pop expected retrievals in order and compare every beat."""
        while True:
            raw, t_first = await self.result.recv()
            assert self.expected, "output beat with no retrieval outstanding"
            exp = self.expected[0]
            ref, got = exp["ref"], []
            beat = unpack(self.rlay, raw)
            t_trailer = None
            while beat["kind"] == Kind.RECORD.value:
                got.append((beat["id"], beat["take"]))
                raw, t_trailer = await self.result.recv()
                beat = unpack(self.rlay, raw)
            if t_trailer is None:  # the trailer was the first beat
                t_trailer = t_first
            self.expected.popleft()
            where = f"retrieval #{self.compared} ({exp['tag']}, N={exp['n']})"
            assert beat["error"] == exp["err"], f"{where}: error flags {beat['error']:#x}"
            if ref is None:
                assert got == [] and beat["planes_read"] == 0, f"{where}: output on error"
                assert beat["cycles"] == 2, f"{where}: error trailer cycles {beat['cycles']}"
            else:
                want = list(zip(ref.ids, ref.take, strict=True))
                assert got == want, f"{where}: records {got} != reference {want}"
                assert beat["planes_read"] == ref.planes_read, (
                    f"{where}: planes_read {beat['planes_read']} != {ref.planes_read}"
                )
                if self.stall == 0:  # latency on the bus: handshake c0 .. trailer valid c1
                    bus = round((t_trailer - exp["t_query"]) / PERIOD_NS) + 1
                    assert beat["cycles"] == bus, f"{where}: cycles {beat['cycles']} != bus {bus}"
                self.log.append(
                    {"tag": exp["tag"], "cycles": beat["cycles"], "planes_read": ref.planes_read}
                )
            self.compared += 1

    async def drain(self):
        while self.expected:
            await RisingEdge(self.dut.clk)

    async def watchdog(self, seed):
        """Fail when retrievals are outstanding and none completes for ``limit`` cycles: four
        times the longest retrieval (no early exit, the soft score, ``n_max`` entries,
        ``q_max`` queries), stretched by the sink's stalls."""
        cfg = self.cfg
        longest = cycle_formula(cfg, cfg.n_max, cfg.q_max, soft=True)
        limit = int((4 * longest + 1000) / (1.0 - min(self.stall, 0.9)))
        step = max(limit // 16, 1)  # checked every ``step`` cycles: no Python per cycle
        last, quiet = self.compared, 0
        while True:
            await ClockCycles(self.dut.clk, step)
            if self.compared != last or not self.expected:
                last, quiet = self.compared, 0
                continue
            quiet += step
            assert quiet < limit, (
                f"seed={seed}: no retrieval completed in {limit} cycles with "
                f"{len(self.expected)} outstanding (a lost beat or a stuck handshake)"
            )


# ---- stimulus ---------------------------------------------------------------------------------
def rand_problem(rng, cfg, n_hi):
    """(keys, counts, [query dicts]) of one random key set."""
    n = rng.choice([1, 2, rng.randint(1, n_hi), rng.randint(1, n_hi), n_hi])
    lo_k, hi_k = -(1 << (cfg.bk - 1)), (1 << (cfg.bk - 1)) - 1
    lo_q, hi_q = -(1 << (cfg.bq - 1)), (1 << (cfg.bq - 1)) - 1
    style = rng.choice(["full", "narrow", "equal", "spread", "spread", "extreme"])
    if style == "equal":
        keys = [[rng.randint(lo_k, hi_k) for _ in range(cfg.d)]] * n
    elif style == "spread":  # scores far apart and in ties: early exit drops, cuts fall in ties
        levels = [rng.randint(lo_k, hi_k) for _ in range(rng.choice([2, 3, n]))]
        keys = [[rng.choice(levels)] * cfg.d for _ in range(n)]
    elif style == "extreme":
        keys = [[rng.choice([lo_k, hi_k])] * cfg.d for _ in range(n)]
    else:
        r = (lo_k, hi_k) if style == "full" else (-1, 1)
        keys = [[rng.randint(*r) for _ in range(cfg.d)] for _ in range(n)]
    cmax = (1 << cfg.count_bits) - 1
    cstyle = rng.choice(["ones", "small", "wide", "sparse"])
    if cstyle == "ones":
        counts = [1] * n
    elif cstyle == "small":
        counts = [rng.randint(0, 3) for _ in range(n)]
    elif cstyle == "wide":
        counts = [rng.randint(1, cmax) for _ in range(n)]
    else:
        counts = [rng.choice([0, 0, 1, cmax]) for _ in range(n)]
    total = sum(counts)
    bmax = (1 << (cfg.count_bits + cfg.n_max.bit_length())) - 1
    queries = []
    for _ in range(rng.randint(1, 6)):
        n_q = rng.choice([1, cfg.q_max, rng.randint(1, cfg.q_max)])
        if style in ("spread", "extreme"):
            qs = [[rng.choice([lo_q, hi_q])] * cfg.d for _ in range(n_q)]
        else:
            qs = [[rng.randint(lo_q, hi_q) for _ in range(cfg.d)] for _ in range(n_q)]
        budget = rng.choice([0, 1, 1, 2, rng.randint(0, total + 2), total, min(bmax, total + 1)])
        soft = int(rng.random() < 0.4)
        queries.append(
            dict(
                queries=qs,
                budget=min(budget, bmax),
                no_exit=int(rng.random() < 0.15),
                raw_max=int(rng.random() < 0.3),
                soft=soft,
                gain=rand_gain(rng) if soft else 0,
            )
        )
    return keys, counts, queries


def rand_gain(rng):
    """A soft-score gain: the extremes, and log-uniform between (sharp and flat scores)."""
    top = (1 << GAIN_BITS) - 1
    return rng.choice([1, top, max(1, int(2 ** rng.uniform(4, GAIN_BITS)))])


async def error_queries(tb, keys, counts):
    cfg = tb.cfg
    q = [[0] * cfg.d]
    nmax_field = (1 << (cfg.n_max.bit_length() + 1)) - 1
    nq_field = (1 << (cfg.q_max.bit_length() + 1)) - 1
    for n, n_q in [(0, 1), (cfg.n_max + 1, 1), (nmax_field, 1), (1, 0), (1, cfg.q_max + 1)]:
        await tb.ask(keys, counts, q * cfg.q_max, 1, n, n_q=n_q, tag="error")
    await tb.ask(keys, counts, q * cfg.q_max, 1, 0, n_q=nq_field, tag="error")
    await tb.ask(keys, counts, q * cfg.q_max, 1, 1, n_q=1, soft=1, gain=0, tag="error")


@cocotb.test()
async def run_tokens(dut):
    spec = spec_from_env("VREX_TOKENS")
    cfg = DREConfig().replace(**spec["cfg"])
    seed = spec.get("seed", 1)
    rng = random.Random(seed)
    dut._log.info(f"seed={seed} cfg={cfg.to_dict()}")
    tb = TB(dut, cfg, rng, spec.get("stall"))
    await reset(dut)
    cocotb.start_soon(tb.sink())
    cocotb.start_soon(tb.watchdog(seed))

    if spec.get("bench"):
        for case in spec["bench"]:
            await tb.drain()
            await tb.load(case["keys"], case["counts"])
            for qd in case["queries"]:
                await tb.ask(case["keys"], case["counts"], n=len(case["keys"]), **qd)
    else:
        n_hi = min(spec.get("n_hi", cfg.n_max), cfg.n_max)
        keys, counts = [[0] * cfg.d], [1]
        await tb.load(keys, counts)
        await error_queries(tb, keys, counts)
        left = spec.get("random", 100)
        while left > 0:
            keys, counts, queries = rand_problem(rng, cfg, n_hi)
            await tb.drain()  # keys wait for idle anyway; this keeps expectations simple
            await tb.load(keys, counts)
            for qd in queries[:left]:  # back to back, no wait for the results
                await tb.ask(keys, counts, n=len(keys), tag="random", **qd)
                left -= 1
    await tb.drain()
    for _ in range(5):
        await RisingEdge(dut.clk)
    dut._log.info(f"compared {tb.compared} retrievals, 0 mismatches")
    if spec.get("out"):
        with open(spec["out"], "w") as f:
            json.dump({"compared": tb.compared, "seed": seed, "log": tb.log}, f)
