"""Clustering RTL: amaranth.sim unit tests of its pieces, and cocotb co-simulation of the whole unit
in Verilator against model.dre_cluster.ClusterRef (verif/tb_cluster.py)."""

from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest
from amaranth import Elaboratable, Module, Signal
from amaranth.sim import Simulator

from hw.centroid_table import CentroidTable
from hw.cluster_cosine import CosineTest
from hw.cluster_similarity import MostSimilar
from hw.cluster_unit import ClusterUnit, token_period
from hw.cluster_writeback import ClusterWriteback, log2_fixed
from model.dre_cluster import ClusterWidths, quantise_centroid, size_bias
from model.dre_cluster import log2_fixed as log2_model
from model.dre_config import ConfigError, DREConfig
from verif.runner import run

SMALL = DREConfig(d=8, lanes=4, bk=4, n_max=16, k_cap=4, grid_max=16, count_bits=5)
ONE_CHUNK = DREConfig(d=6, lanes=6, bk=6, n_max=8, k_cap=4, grid_max=12, count_bits=4)
ALL = [
    "random",
    "identical",
    "equal",
    "opposite",
    "full",
    "extreme",
    "errors",
    "grid",
    "narrow",
    "throughput",
    "video",
]


def _simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


# ---- log2_fixed ----------------------------------------------------------------------------------
class _Log2(Elaboratable):
    def __init__(self, width, frac):
        self.n, self.frac = Signal(width), frac
        self.out = None

    def elaborate(self, platform):
        m = Module()
        self.out = log2_fixed(m, self.n, self.frac)
        return m


@pytest.mark.parametrize("frac", [0, 3, 8])
def test_log2_fixed_matches_mitchell(frac):
    dut = _Log2(10, frac)
    sim = Simulator(dut)  # elaborates ``dut``, which creates ``dut.out``

    async def bench(ctx):
        for n in range(1, 1 << 10):
            ctx.set(dut.n, n)
            assert ctx.get(dut.out) == log2_model(n, frac), n

    sim.add_testbench(bench)
    sim.run()


# ---- cosine test -----------------------------------------------------------------------------
def _cos_brute(dot, k2, s2, T, F):
    if k2 == 0 or s2 == 0:
        return T == 0
    # cos = dot / sqrt(k2 s2) >= T / 2^F, compared as rationals.
    return dot >= 0 and Fraction(dot * dot, k2 * s2) >= Fraction(T * T, 1 << (2 * F))


def test_cosine_test_against_brute_force(seed):
    cfg = SMALL
    wd = ClusterWidths.of(cfg)
    rng = random.Random(seed)
    F = cfg.tau_frac_bits
    dut = CosineTest(cfg)
    cases = []
    for _ in range(2000):
        k = [rng.randint(-8, 7) for _ in range(cfg.d)]
        n = rng.randint(1, cfg.count_max)
        s = [rng.randint(-8 * n, 7 * n) for _ in range(cfg.d)]
        if rng.random() < 0.3:  # (anti)parallel and zero vectors, thresholds at the edges
            f = rng.choice([-2, -1, 0, 1, 3])
            s = [f * x for x in k]
        dot = sum(a * b for a, b in zip(k, s, strict=True))
        cases.append(
            (dot, sum(a * a for a in k), sum(b * b for b in s), rng.choice([0, 1, 128, 256, 255]))
        )
    # extremes of the widths
    kmin, smin = -8, -8 * cfg.count_max
    cases.append((cfg.d * kmin * smin, cfg.d * 64, cfg.d * smin * smin, 256))
    cases.append((-cfg.d * kmin * -smin, cfg.d * 64, cfg.d * smin * smin, 0))
    assert all(abs(c[0]) < 1 << (wd.dot - 1) for c in cases)

    async def bench(ctx):
        got = []
        for i in range(len(cases) + 2):
            if i < len(cases):
                dot, k2, s2, T = cases[i]
                ctx.set(dut.dot, dot)
                ctx.set(dut.key_norm, k2)
                ctx.set(dut.sum_norm, s2)
                ctx.set(dut.tau, T)
            await ctx.tick()
            if i >= 1:
                got.append(ctx.get(dut.passed))
        # Inputs set before tick i+1 give ``passed`` after tick i+2, i.e. ``got[i]``.
        for (dot, k2, s2, T), p in zip(cases, got, strict=False):
            assert p == _cos_brute(dot, k2, s2, T, F), (dot, k2, s2, T)

    _simulate(dut, bench)


# ---- most similar -----------------------------------------------------------------------------
def _best_brute(dots, norms, valid):
    """The valid candidate of highest signed cos^2 (= dot|dot|/|S|^2), ties to the lowest index."""
    best = None
    for i in range(3):
        if not valid[i]:
            continue
        c = Fraction(dots[i] * abs(dots[i]), max(norms[i], 1))
        if best is None or c > best[0]:
            best = (c, i)
    return 0 if best is None else best[1]


def test_most_similar_against_brute_force(seed):
    cfg = SMALL
    rng = random.Random(seed)
    dut = MostSimilar(cfg, 3)
    cases = []
    for _ in range(1500):
        k = [rng.randint(-8, 7) for _ in range(cfg.d)]
        sums = [[rng.randint(-20, 20) for _ in range(cfg.d)] for _ in range(3)]
        if rng.random() < 0.3:
            sums[rng.randrange(3)] = list(sums[rng.randrange(3)])  # exact ties
        if rng.random() < 0.2:
            sums[rng.randrange(3)] = [0] * cfg.d
        dots = [sum(a * b for a, b in zip(k, s, strict=True)) for s in sums]
        norms = [sum(b * b for b in s) for s in sums]
        cases.append((dots, norms, [rng.random() < 0.7 for _ in range(3)]))

    async def bench(ctx):
        got = []
        for i in range(len(cases) + 2):
            if i < len(cases):
                dots, norms, valid = cases[i]
                for j in range(3):
                    ctx.set(dut.dot[j], dots[j])
                    ctx.set(dut.norm[j], norms[j])
                ctx.set(dut.valid, sum(v << j for j, v in enumerate(valid)))
            await ctx.tick()
            if i >= 1:
                got.append(ctx.get(dut.best))
        for case, b in zip(cases, got, strict=False):  # latency 2, as above
            assert b == _best_brute(*case), case

    _simulate(dut, bench)


# ---- centroid table ---------------------------------------------------------------------------
def test_centroid_table_read_write_timing(seed):
    cfg = SMALL
    rng = random.Random(seed)
    dut = CentroidTable(cfg, ports=3, meta_ports=2)
    G, L = cfg.groups, cfg.lanes
    smax = (1 << (ClusterWidths.of(cfg).sum - 1)) - 1

    async def bench(ctx):
        model = {}
        for _ in range(300):
            # a write, and reads on every port of random rows (possibly the row written)
            cid, ch = rng.randrange(cfg.n_max), rng.randrange(G)
            data = [rng.randint(-smax - 1, smax) for _ in range(L)]
            we = rng.random() < 0.6
            ctx.set(dut.wr.en, we)
            ctx.set(dut.wr.id, cid)
            ctx.set(dut.wr.chunk, ch)
            ctx.set(dut.wr.data, data)
            meta = {
                "norm": rng.randrange(1 << ClusterWidths.of(cfg).sum_norm),
                "count": rng.randrange(cfg.count_max + 1),
            }
            ctx.set(dut.wr_meta.en, we)
            ctx.set(dut.wr_meta.id, cid)
            ctx.set(dut.wr_meta.data, meta)
            reads = []
            for port in (*dut.cand, dut.upd, dut.wb):
                r = (
                    (cid, ch)
                    if rng.random() < 0.5
                    else (rng.randrange(cfg.n_max), rng.randrange(G))
                )
                ctx.set(port.id, r[0])
                ctx.set(port.chunk, r[1])
                reads.append((port, (r, None)))
            mreads = []
            for port in (*dut.cand_meta, dut.wb_meta):
                r = cid if rng.random() < 0.5 else rng.randrange(cfg.n_max)
                ctx.set(port.id, r)
                mreads.append((port, (r, None)))
            await ctx.tick()
            if we:
                model[(cid, ch)] = data
                model[("m", cid)] = meta
            # One cycle later, the contents *after* a write in the cycle of the read: every port
            # is transparent (the clustering unit's pipeline relies on it).
            for port, (r, _) in reads:
                if r in model:
                    assert [ctx.get(port.data[i]) for i in range(L)] == model[r]
            for port, (r, _) in mreads:
                if ("m", r) in model:
                    got = ctx.get(port.data)
                    assert {"norm": got.norm, "count": got.count} == model[("m", r)]

    _simulate(dut, bench)


# ---- write-back engine ------------------------------------------------------------------------
class _WritebackHarness(Elaboratable):
    def __init__(self, cfg):
        self.table = CentroidTable(cfg, ports=1)
        self.wb = ClusterWriteback(cfg)

    def elaborate(self, platform):
        m = Module()
        m.submodules.table, m.submodules.wb = self.table, self.wb
        t, w = self.table, self.wb
        m.d.comb += [
            t.wb.id.eq(w.sum.id),
            t.wb.chunk.eq(w.sum.chunk),
            w.sum.data.eq(t.wb.data),
            t.wb_meta.id.eq(w.meta.id),
            w.meta.data.eq(t.wb_meta.data),
        ]
        return m


@pytest.mark.parametrize("cfg", [SMALL, ONE_CHUNK], ids=["G2", "G1"])
def test_writeback_engine_rounds_and_biases(seed, cfg):
    rng = random.Random(seed)
    h = _WritebackHarness(cfg)
    t, wb = h.table, h.wb
    G, L = cfg.groups, cfg.lanes
    lo, hi = -(1 << (cfg.bk - 1)), (1 << (cfg.bk - 1)) - 1
    clusters = {}
    for cid in range(cfg.n_max):
        n = rng.choice([1, 2, 3, cfg.count_max, rng.randint(1, cfg.count_max)])
        keys = [[rng.choice([lo, hi, rng.randint(lo, hi)]) for _ in range(cfg.d)] for _ in range(n)]
        clusters[cid] = ([sum(c) for c in zip(*keys, strict=True)], n)
    scale = rng.randrange(1 << ClusterWidths.of(cfg).bias_scale)
    period = G * (cfg.bk + 3) + 3  # documented in ClusterWriteback

    async def bench(ctx):
        for cid, (s, n) in clusters.items():
            ctx.set(t.wr_meta.en, 1)
            ctx.set(t.wr_meta.id, cid)
            ctx.set(t.wr_meta.data, {"norm": 0, "count": n})
            for g in range(G):
                ctx.set(t.wr.en, 1)
                ctx.set(t.wr.id, cid)
                ctx.set(t.wr.chunk, g)
                ctx.set(t.wr.data, s[g * L : (g + 1) * L])
                await ctx.tick()
                ctx.set(t.wr_meta.en, 0)
        ctx.set(t.wr.en, 0)
        ctx.set(wb.bias_scale, scale)
        order = list(clusters)
        rng.shuffle(order)
        for cid in order:
            ctx.set(wb.ids.valid, 1)
            ctx.set(wb.ids.payload, cid)
            assert ctx.get(wb.ids.ready)
            start = 0
            await ctx.tick()
            ctx.set(wb.ids.valid, 0)
            while not ctx.get(wb.write.en):
                assert ctx.get(wb.busy)
                await ctx.tick()
                start += 1
            s, n = clusters[cid]
            assert ctx.get(wb.write.addr) == cid
            key = ctx.get(wb.write.key)
            assert [key[i] for i in range(cfg.d)] == quantise_centroid(s, n)
            assert ctx.get(wb.write.bias) == size_bias(n, scale, cfg)
            assert start + 2 == period  # from the accepting cycle to the write's, inclusive
            await ctx.tick()
            assert not ctx.get(wb.write.en) and not ctx.get(wb.busy)

    _simulate(h, bench)


def test_components_reject_bad_parameters():
    with pytest.raises(ConfigError):
        ClusterUnit("d=8")


# ---- Verilator co-simulation --------------------------------------------------------------------
def _cosim(cfg, seed, scenarios, tmp_path, **spec):
    out = tmp_path / "summary.json"
    env = {"cfg": cfg.to_dict(), "seed": seed, "scenarios": scenarios, "out": str(out), **spec}
    run(
        ClusterUnit(cfg),
        "cluster_unit",
        "verif.tb_cluster",
        extra_env={"VREX_CLUSTER": json.dumps(env)},
    )
    summary = json.loads(out.read_text())
    assert summary["mismatches"] == 0
    if "throughput" in summary["scenarios"]:
        _check_throughput(cfg, summary["scenarios"]["throughput"])
    return summary


def _check_throughput(cfg, stats):
    """Pin the documented timing: without gaps or backpressure a frame of ``n`` tokens takes
    ``token_period * (n - 1) + G + 8`` cycles from its first token offered to its last result
    (``G + 8`` is the latency of one token through the testbench's source and sink)."""
    h, w = stats["grid"]
    n = h * w
    want = token_period(cfg) * (n - 1) + cfg.groups + 8
    assert stats["cycles"] == [want] * stats["frames"], (stats["cycles"], want)


@pytest.mark.parametrize(
    "cfg,period",
    [(SMALL, 3), (ONE_CHUNK, 3), (DREConfig(), 4), (DREConfig(d=24, lanes=8), 4)],
    ids=["G2", "G1", "G4", "G3"],
)
def test_token_period(cfg, period):
    assert token_period(cfg) == period
    assert token_period(DREConfig(d=64, lanes=8)) == 8  # G >= 4: one token per G cycles


@pytest.mark.cocotb
def test_cluster_unit_small(seed, tmp_path):
    s = _cosim(SMALL, seed, ALL, tmp_path, frames=5, grid=[4, 4], video_frames=8, video_grid=[4, 4])
    assert s["results"] == sum(v["tokens"] for v in s["scenarios"].values())
    assert s["scenarios"]["full"]["forced"] > 0 and s["scenarios"]["full"]["dropped"] > 0


@pytest.mark.regress
@pytest.mark.cocotb
def test_cluster_unit_one_chunk_per_key(seed, tmp_path):
    _cosim(
        ONE_CHUNK,
        seed,
        ["random", "full", "opposite", "grid", "narrow", "throughput"],
        tmp_path,
        grid=[3, 4],
    )


REGRESS = [
    DREConfig(grid_max=196),  # the default: d 64, lanes 16, bk 8, n_max 256, count_bits 16
    DREConfig(d=32, lanes=8, bk=6, n_max=64, k_cap=8, grid_max=64, count_bits=6),
    DREConfig(d=24, lanes=3, bk=5, n_max=12, k_cap=4, grid_max=30, count_bits=4),
]


@pytest.mark.regress
@pytest.mark.cocotb
@pytest.mark.parametrize("cfg", REGRESS, ids=["default", "d32", "d24-tiny"])
def test_cluster_unit_regress(seed, tmp_path, cfg):
    side = min(14, int(cfg.grid_max**0.5))
    _cosim(
        cfg,
        seed,
        ALL,
        tmp_path,
        frames=8,
        grid=[side, side],
        video_frames=64,
        video_grid=[side, side],
    )
