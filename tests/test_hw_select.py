"""amaranth.sim unit tests of the selector's small pieces, each against an independent model.

* BitplaneDot: every lane group's sum and the full dot product against numpy.
* PlaneStore: whole-key writes, (entry, plane) reads with one cycle of latency, hold on en = 0,
  old data on read-during-write, bias port.
* TopK: random inserts with many equal keys against a stable sort in Python; shift and clear.
* TopKPipe: the same against a stable sort with inserts back to back and with gaps, then pops;
  `overflow`.
* SelectCore + PlaneStore (the Selector) on a few retrievals against model.dre.ref.select.
"""

from __future__ import annotations

import gc
import itertools
import random
import re

import numpy as np
import pytest
from amaranth import Module, Signal, signed, unsigned
from amaranth.back import verilog
from amaranth.sim import Simulator

from hw.bitplane_dot import BitplaneDot
from hw.layouts import Kind, score_shape, select_key_load_layout, select_query_layout
from hw.plane_store import PlaneStore
from hw.selector import Selector
from hw.topk import TopK, TopKPipe, _gt_or_empty, _gt_or_empty_inv, _gt_or_empty_ord, _ordered
from model.dre.config import ConfigError, DREConfig
from model.dre.ref import select


def run_sim(dut, bench, *, vcd=None):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("d, lanes, bq", [(16, 4, 8), (16, 16, 4), (12, 3, 5), (8, 1, 2)])
def test_bitplane_dot_against_numpy(seed, d, lanes, bq):
    rng = np.random.default_rng(seed)
    dut = BitplaneDot(d, lanes, bq)
    groups = d // lanes
    lo, hi = -(1 << (bq - 1)), (1 << (bq - 1)) - 1

    async def bench(ctx):
        for trial in range(40):
            q = rng.integers(lo, hi + 1, d)
            if trial == 0:
                q[:] = lo  # extreme: every lane at the most negative code
            bits = rng.integers(0, 2, d) if trial else np.ones(d, dtype=np.int64)
            ctx.set(dut.q, [int(x) for x in q])
            ctx.set(dut.word, int(sum(int(b) << i for i, b in enumerate(bits))))
            ctx.set(dut.en, 1)
            for g in range(groups):
                ctx.set(dut.group, g)
                ctx.set(dut.first, g == 0)
                sl = slice(g * lanes, (g + 1) * lanes)
                assert ctx.get(dut.partial) == int(np.dot(q[sl], bits[sl]))
                if g == groups - 1:
                    assert ctx.get(dut.total) == int(np.dot(q, bits))
                await ctx.tick()

    run_sim(dut, bench)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bitplane_dot_rejects_bad_lanes():
    with pytest.raises(ConfigError, match="lanes=5 must divide d=16"):
        BitplaneDot(16, 5, 8)
    gc.collect()  # the half-built object warns when collected: let that happen here


@pytest.mark.parametrize("biases", [True, False], ids=["biases", "no-biases"])
def test_plane_store_timing(seed, biases):
    """Plane and bias reads against the keys written; ``biases=False`` (the v2 selectors) keeps
    no bias memory (none in the Verilog) and reads a bias of 0 whatever was written."""
    rng = random.Random(seed)
    cfg = DREConfig(d=8, lanes=4, bk=4, n_max=16, k_cap=4, bias_bits=10)
    dut = PlaneStore(cfg, biases=biases)
    v = verilog.convert(PlaneStore(cfg, biases=biases), emit_src=False)
    assert bool(re.search(r"reg \[9:0\] bias \[15:0\]", v)) == biases
    lo, hi = -(1 << (cfg.bk - 1)), (1 << (cfg.bk - 1)) - 1
    keys = [[rng.randint(lo, hi) for _ in range(cfg.d)] for _ in range(cfg.n_max)]
    bias = [rng.randint(-512, 511) for _ in range(cfg.n_max)]
    read_bias = bias if biases else [0] * cfg.n_max

    def plane_word(key, p):  # bit p of each element's two's complement code
        return sum((((x & ((1 << cfg.bk) - 1)) >> p) & 1) << i for i, x in enumerate(key))

    async def bench(ctx):
        for j in range(cfg.n_max):  # one whole key (all planes) and its bias per cycle
            ctx.set(dut.write.en, 1)
            ctx.set(dut.write.addr, j)
            ctx.set(dut.write.key, keys[j])
            ctx.set(dut.write.bias, bias[j])
            await ctx.tick()
        ctx.set(dut.write.en, 0)
        for _ in range(100):
            j, p = rng.randrange(cfg.n_max), rng.randrange(cfg.bk)
            ctx.set(dut.read.en, 1)
            ctx.set(dut.read.addr, j)
            ctx.set(dut.read.plane, p)
            ctx.set(dut.read.bias_en, 1)
            ctx.set(dut.read.bias_addr, j)
            await ctx.tick()
            assert ctx.get(dut.read.word) == plane_word(keys[j], p)  # one cycle of latency
            assert ctx.get(dut.read.bias) == read_bias[j]
            # en low: the outputs hold whatever the address/plane does
            ctx.set(dut.read.en, 0)
            ctx.set(dut.read.bias_en, 0)
            ctx.set(dut.read.addr, (j + 1) % cfg.n_max)
            ctx.set(dut.read.plane, (p + 1) % cfg.bk)
            await ctx.tick()
            assert ctx.get(dut.read.word) == plane_word(keys[j], p)
            assert ctx.get(dut.read.bias) == read_bias[j]
        # read-during-write of the same entry returns the old key; the next read the new one
        new = [lo] * cfg.d
        ctx.set(dut.write.en, 1)
        ctx.set(dut.write.addr, 3)
        ctx.set(dut.write.key, new)
        ctx.set(dut.write.bias, -512)
        ctx.set(dut.read.en, 1)
        ctx.set(dut.read.addr, 3)
        ctx.set(dut.read.plane, cfg.bk - 1)
        ctx.set(dut.read.bias_en, 1)
        ctx.set(dut.read.bias_addr, 3)
        await ctx.tick()
        ctx.set(dut.write.en, 0)
        assert ctx.get(dut.read.word) == plane_word(keys[3], cfg.bk - 1)
        assert ctx.get(dut.read.bias) == read_bias[3]
        await ctx.tick()
        assert ctx.get(dut.read.word) == plane_word(new, cfg.bk - 1)
        assert ctx.get(dut.read.bias) == (-512 if biases else 0)

    run_sim(dut, bench)


def topk_contents(ctx, dut, fields=("key", "index")):
    """The valid entries of a TopK / TopKPipe, top first, as tuples of ``fields``."""
    entries = (ctx.get(dut.entries[i]) for i in range(dut.k))
    return [tuple(getattr(e, f) for f in fields) for e in entries if e.valid]


@pytest.mark.parametrize("k", [1, 4, 7])
def test_topk_against_stable_sort(seed, k):
    rng = random.Random(seed)
    dut = TopK(k, signed(6), 5)

    def contents(ctx):
        return topk_contents(ctx, dut)

    async def bench(ctx):
        for _ in range(30):
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            model = []  # (key, index) in insertion order
            for index in range(rng.randint(0, 20)):
                key = rng.choice([rng.randint(-32, 31), rng.randint(-2, 2)])
                model.append((key, index))
                ctx.set(dut.insert, 1)
                ctx.set(dut.key, key)
                ctx.set(dut.index, index)
                await ctx.tick()
                want = sorted(model, key=lambda t: -t[0])[:k]  # stable: earlier first on ties
                ctx.set(dut.insert, 0)
                assert contents(ctx) == want
            pops = rng.randint(0, k)
            for _ in range(pops):
                ctx.set(dut.shift, 1)
                await ctx.tick()
            ctx.set(dut.shift, 0)
            assert contents(ctx) == sorted(model, key=lambda t: -t[0])[:k][pops:]

    run_sim(dut, bench)


@pytest.mark.parametrize("form", ["signed", "ordered", "inverted"])
@pytest.mark.parametrize("w", [2, 4])
def test_gt_or_empty_exhaustive(w, form):
    """TopKPipe's compare ``~valid | a > b`` as one carry chain, on every pair of ``w``-bit
    signed keys and both valid values, against Python integers: from the signed key, from its
    sign-flipped register copy and from the inverted copy (``key_copies``)."""
    a, b, v, out = Signal(signed(w)), Signal(signed(w)), Signal(), Signal()
    m = Module()
    if form == "signed":
        m.d.comb += out.eq(_gt_or_empty(a, b, v))
    elif form == "ordered":
        m.d.comb += out.eq(_gt_or_empty_ord(_ordered(a), b, v))
    else:
        m.d.comb += out.eq(_gt_or_empty_inv(~_ordered(a), b, v))
    sim = Simulator(m)
    lo, hi = -(1 << (w - 1)), 1 << (w - 1)
    wrong = []

    async def bench(ctx):
        for x, y, valid in itertools.product(range(lo, hi), range(lo, hi), (0, 1)):
            ctx.set(a, x)
            ctx.set(b, y)
            ctx.set(v, valid)
            await ctx.delay(1e-9)
            if ctx.get(out) != int(not valid or x > y):
                wrong.append((x, y, valid))

    sim.add_testbench(bench)
    sim.run()
    assert wrong == []


@pytest.mark.parametrize(
    "k, in_reg, copies",
    [
        (1, False, 1),
        (2, False, 1),
        (5, False, 1),
        (1, True, 1),
        (5, True, 4),
        (6, True, 3),
        (2, True, 2),
    ],
)
def test_topk_pipe_against_stable_sort(seed, k, in_reg, copies):
    """TopKPipe: inserts back to back and with gaps (the compare stage applies the insert in
    the insert stage to its comparisons), then pops; ``overflow`` once an insert met a full
    structure.  Keys from a small range: many ties (equal keys keep insertion order).  With
    ``in_reg``, the input register and ``copies`` key copies (each feeding a group of slots)."""
    rng = random.Random(seed)
    dut = TopKPipe(k, signed(6), 5, unsigned(4), in_reg=in_reg, key_copies=copies)

    def contents(ctx):
        return topk_contents(ctx, dut, ("key", "index", "payload"))

    async def bench(ctx):
        for trial in range(40):
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            model = []
            for index in range(rng.randint(0, 3 * k + 3)):
                key = rng.choice([rng.randint(-32, 31), rng.randint(-2, 2)])
                model.append((key, index, (key * 7 + index) & 15))
                ctx.set(dut.insert, 1)
                ctx.set(dut.key, key)
                ctx.set(dut.index, index)
                ctx.set(dut.payload, model[-1][2])
                await ctx.tick()
                ctx.set(dut.insert, 0)
                for _ in range(rng.choice([0, 0, 0, 1, 2])):
                    await ctx.tick()
            while ctx.get(dut.busy):
                await ctx.tick()
            want = sorted(model, key=lambda t: -t[0])[:k]  # stable: earlier first on ties
            assert contents(ctx) == want, (seed, trial)
            assert ctx.get(dut.overflow) == (len(model) > k), (seed, trial)
            pops = rng.randint(0, k)
            for _ in range(pops):
                ctx.set(dut.shift, 1)
                await ctx.tick()
            ctx.set(dut.shift, 0)
            assert contents(ctx) == want[pops:], (seed, trial)

    run_sim(dut, bench)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_topk_pipe_key_copies_checked():
    """Bad ``key_copies`` give one ConfigError, before elaboration."""
    with pytest.raises(ConfigError, match="key_copies=5"):
        TopKPipe(4, signed(6), 5, unsigned(4), in_reg=True, key_copies=5)
    with pytest.raises(ConfigError, match="needs in_reg"):
        TopKPipe(4, signed(6), 5, unsigned(4), key_copies=2)


def test_selector_small_retrievals(seed):
    """The whole Selector in amaranth.sim on a few retrievals (the Verilator TB does the rest)."""
    rng = random.Random(seed)
    cfg = DREConfig(d=8, lanes=4, bq=4, bk=4, n_max=8, k_cap=4, bias_bits=8)
    dut = Selector(cfg)
    klay, qlay = select_key_load_layout(cfg), select_query_layout(cfg)
    assert score_shape(cfg).signed

    async def bench(ctx):
        ctx.set(dut.result.ready, 1)
        for _ in range(6):
            n = rng.randint(1, cfg.n_max)
            keys = [[rng.randint(-8, 7) for _ in range(cfg.d)] for _ in range(n)]
            bias = [rng.randint(-20, 20) for _ in range(n)]
            for j in range(n):
                ctx.set(dut.keys.valid, 1)
                ctx.set(dut.keys.payload, klay.const({"index": j, "key": keys[j], "bias": bias[j]}))
                await ctx.tick()
            ctx.set(dut.keys.valid, 0)
            q = [rng.randint(-8, 7) for _ in range(cfg.d)]
            k_max = rng.randint(1, cfg.k_cap)
            k_min = rng.randint(1, k_max)
            margin = rng.randint(0, 40)
            fields = dict(q=q, margin=margin, k_min=k_min, k_max=k_max, n=n, no_exit=0)
            ctx.set(dut.query.valid, 1)
            ctx.set(dut.query.payload, qlay.const(fields))
            await ctx.tick().until(dut.query.ready)
            ctx.set(dut.query.valid, 0)
            got = []
            while True:
                _, _, valid, payload = await ctx.tick().sample(dut.result.valid, dut.result.payload)
                if valid:
                    if payload.kind == Kind.TRAILER:
                        trailer = payload
                        break
                    got.append((payload.index, payload.score))
            ref = select(q, keys, bias, margin, k_max, k_min, bq=cfg.bq, bk=cfg.bk)
            assert got == list(zip(ref.indices, ref.scores, strict=True))
            assert trailer.planes_read == ref.planes_read
            assert trailer.error.as_value().value == 0

    run_sim(dut, bench)


# ---- Verilator co-simulation (cocotb, verif/tb_select.py) ---------------------------------------
SHORT = [
    # (config, random retrievals, largest N)
    (dict(d=16, lanes=4, bk=4, n_max=32, k_cap=8), 200, 32),
    (dict(d=64, lanes=16, bk=8, n_max=64, k_cap=16), 80, 64),
]
LONG = [
    (dict(d=16, lanes=16, bk=4, n_max=64, k_cap=8), 10000, 24),  # the 10k-retrieval soak
    (dict(d=64, lanes=4, bk=8, n_max=256, k_cap=16), 150, 256),
    (dict(d=128, lanes=16, bk=8, n_max=256, k_cap=16), 150, 256),
    (dict(d=128, lanes=4, bk=4, n_max=128, k_cap=32), 150, 128),
    (dict(d=16, lanes=4, bk=8, n_max=256, k_cap=4), 400, 256),
    (dict(d=48, lanes=16, bq=5, bk=3, n_max=100, k_cap=5, bias_bits=10), 1000, 100),
]


def cosim(seed, cfg_fields, n_random, n_hi, tmp_path):
    import json

    from verif.runner import run

    cfg = DREConfig(**cfg_fields)
    out = tmp_path / "summary.json"
    spec = {"cfg": cfg.to_dict(), "seed": seed, "random": n_random, "n_hi": n_hi, "out": str(out)}
    run(Selector(cfg), "selector", "verif.tb_select", extra_env={"VREX_SELECT": json.dumps(spec)})
    summary = json.loads(out.read_text())
    print(
        f"[select cosim] {cfg_fields} seed={seed}: {summary['compared']} retrievals, 0 mismatches"
    )
    assert summary["compared"] >= n_random


def _id(case):
    c = case[0]
    return f"d{c['d']}-l{c['lanes']}-bk{c['bk']}-n{c['n_max']}-k{c['k_cap']}-r{case[1]}"


@pytest.mark.cocotb
@pytest.mark.parametrize("case", SHORT, ids=_id)
def test_selector_verilator(seed, case, tmp_path):
    cosim(seed, *case, tmp_path)


@pytest.mark.cocotb
@pytest.mark.regress
@pytest.mark.parametrize("case", LONG, ids=_id)
def test_selector_verilator_long(seed, case, tmp_path):
    cosim(seed, *case, tmp_path)
