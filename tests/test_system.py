"""System performance model (``model/system.py``): the arithmetic of every phase on a hand-computed
case, the DRE cycle formula against the integer reference and the Verilator measurements, the
DRE memory formula against ``make synth``, the profiles and the command line.

The expected numbers of the hand-computed case are worked out in the comments from the formulas
of ``docs/system.md``, not taken from the program's output."""

from __future__ import annotations

import csv
import random
import types
from dataclasses import replace

import pytest

from model import system as sysm
from model.dre.config import DREConfig
from model.dre.select import select
from verif.tb_select import TB

# ---- a toy case small enough to compute by hand -----------------------------------------------
TOY_LLM = sysm.LLM(
    key="toy",
    name="toy",
    layers=2,
    hidden=8,
    q_heads=2,
    kv_heads=1,
    head_dim=4,
    mlp=16,
    vocab=10,
    tied_embeddings=1,
    vision_layers=1,
    vision_hidden=4,
    vision_mlp=8,
    vision_merge=4,
)
TOY_GPU = sysm.Device(
    key="g",
    name="toy gpu",
    kind="gpu",
    dram_bw=1000.0,
    dram_capacity=1e6,
    peak_int8=1e4,
    peak_fp16=1e3,
    board_power=10.0,
    static_power=1.0,
    compute_util=1.0,
    bw_util=1.0,
    pj_per_op_int8=1.0,
    pj_per_flop_fp16=2.0,
    dram_pj_per_byte=10.0,
    activation_spill=1,
    serial_step=0.01,
    kernel_overhead=0.001,
)
TOY_ACC = replace(
    TOY_GPU,
    key="a",
    kind="accelerator",
    activation_spill=0,
    serial_step=0.0,
    kernel_overhead=0.0,
    dre_instances=1,
    dre_clock=1000.0,
    dre_table_state=1,
)
TOY_SETUP = sysm.Setup(
    tokens_per_frame=4,
    fps=1.0,
    weight_bytes=1,
    kv_bytes=2,
    act_bytes=2,
    index_bytes=2,
    count_bytes=4,
    addr_bytes=4,
    budget_rekv=6,
    budget_resv=6,
    table_size=8,
    new_clusters_per_frame=3,
    updated_clusters_per_frame=2,
    queries_per_head=2,
    score="soft",
    parallel_queries=0,
    summaries=1,
    mean_value_bits=16,
    lanes=4,
    cluster_lanes=4,
    bq=8,
    bk=8,
    count_bits=16,
    bias_bits=24,
    k_cap=4,
    pass_latency=0,
    work_fraction=0.5,
    survivors=2,
    logic_ge=1000,
    logic_ge_growth=1.0,
    sram_ge_per_bit=1.0,
    nand2_um2=1.0,
    activity=0.1,
    fj_per_ge_toggle=1.0,
    pj_per_sram_bit=1.0,
    leak_nw_per_ge=0.0,
    leak_nw_per_sram_bit=0.0,
)
T = 3  # frame index: 3 frames of 4 tokens in the past, 12 tokens
# ReSV at frame 3: clusters min(8, 3 x 3) = 8; the budget 6 < 12 past tokens reaches clusters of
# the mean size 12 / 8 = 1.5 tokens: ceil(6 x 8 / 12) = 4 records; 8 - 4 = 4 summary tokens


def test_resv_records_and_summaries():
    assert sysm.resv_clusters(T, TOY_SETUP) == 8
    assert sysm.resv_records(T, TOY_SETUP) == 4
    assert sysm.resv_summaries(T, TOY_SETUP) == 4
    # frame 1: 3 clusters, 4 past tokens within the budget: every cluster is a record
    assert sysm.resv_records(1, TOY_SETUP) == 3 and sysm.resv_summaries(1, TOY_SETUP) == 0
    # frame 100: table full (8); ceil(6 x 8 / 400) = 1 record, 7 summaries; none when off
    assert sysm.resv_records(100, TOY_SETUP) == 1
    assert sysm.resv_summaries(100, replace(TOY_SETUP, summaries=0)) == 0


def test_toy_params():
    # per layer: Q, O 8x8 = 64 each; K, V 8x4 = 32 each; gate, up, down 8x16 = 128 each
    assert TOY_LLM.linear_params_per_layer == 64 + 64 + 32 + 32 + 3 * 128 == 576
    # 2 layers + tied embedding 10 x 8
    assert TOY_LLM.params == 2 * 576 + 80


def test_linear_phase_gpu():
    c = sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "full", T)
    lin = c.phases["linear"]
    # weights 2 layers x 576 x 1 B = 1152; activations P 4 x L 2 x (13*8 + 2*4 + 6*16 = 208) x 2 B
    assert lin.dram == 1152 + 4 * 2 * 208 * 2 == 4480
    assert lin.int8 == 2 * 2 * 576 * 4 == 9216
    # roofline: compute 9216 / 1e4 = 0.9216 s, memory 4480 / 1000 = 4.48 s; 8 kernels x 2 layers
    assert lin.seconds == pytest.approx(4.48 + 16 * 0.001)


def test_attention_phase_full_and_budget():
    full = sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "full", T).phases["attention"]
    # token = K and V, 4 elements of 2 B each: 16 B; 2 (layer, head) pairs; fetch 12 past + write 4
    assert full.dram == 2 * (12 + 4) * 16 == 512
    # 4 x Hq 2 x d 4 x P 4 = 128 FLOPs per attended token and layer; own tokens (4 + 1) / 2
    assert full.fp16 == 128 * (12 + 2.5) * 2 == 3712
    assert full.seconds == pytest.approx(3712 / 1000 + 2 * 0.001)
    rekv = sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "rekv", T)
    assert rekv.attended == 6
    assert rekv.phases["attention"].dram == 2 * (6 + 4) * 16 == 320
    assert rekv.phases["attention"].fp16 == 128 * (6 + 2.5) * 2 == 2176
    # ReSV: 6 budget tokens + 4 summary tokens attended; on the GPU the summaries' centroid key
    # (4 x 2 B) and mean value (4 x 16 bit) come from DRAM: 2 pairs x 4 x 16 B = 128 B
    resv = sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "resv", T)
    assert resv.attended == 6 and resv.summaries == 4
    assert resv.phases["attention"].dram == 320 + 128
    assert resv.phases["attention"].fp16 == 128 * (6 + 4 + 2.5) * 2 == 3200
    # on the accelerator the summaries are on chip: the same FLOPs, no DRAM bytes
    acc = sysm.frame_cost(TOY_LLM, TOY_ACC, TOY_SETUP, "resv", T).phases["attention"]
    assert acc.dram == 320 and acc.fp16 == 3200
    off = sysm.frame_cost(TOY_LLM, TOY_GPU, replace(TOY_SETUP, summaries=0), "resv", T)
    assert off.phases["attention"].fp16 == 2176 and off.phases["attention"].dram == 320


def test_select_phase_rekv():
    sel = sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "rekv", T).phases["select"]
    # index entry 4 x 2 B + 4 B count = 12 B; read 3 frame means and write 1, in 2 pairs
    assert sel.dram == 2 * 4 * 12 == 96
    # one mean query (ReKV, whatever ReSV's Q) . 3 means of 4 elements, 2 pairs
    assert sel.fp16 == 2 * 2 * 4 * 3 == 48
    assert sel.seconds == pytest.approx(max(48 / 1000, 96 / 1000) + 3 * 2 * 0.001)
    c = sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "rekv", T)
    assert c.index_bytes == 2 * 4 * 12 and not c.index_onchip  # 4 frame means in DRAM


def test_select_phase_resv_gpu():
    sel = sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "resv", T).phases["select"]
    # 8 clusters.  Bytes, 2 pairs: member addresses 6 x 4 B; the table 8 x 12 B; clustering
    # 4 tokens x (3 candidates read + 1 write) x (4 x 4 B sums + 4 B count); the joined
    # cluster's mean value (4 x 2 B) read and written per token, 4 x 2 x 8; 2 updated centroids
    # re-quantised, 12 B each
    assert sel.dram == 2 * (6 * 4 + 8 * 12 + 4 * 4 * 20 + 4 * 2 * 8 + 2 * 12) == 1056
    # Q 2 queries . 8 centroids of 4 (2 FLOPs per MAC) = 128; soft score 6 x 2 x 8 = 96;
    # clustering 4 tokens x 8 x 4 = 128; 2 pairs
    assert sel.fp16 == 2 * (128 + 96 + 128) == 704
    # sequential clustering: 2 layers x 4 tokens x 0.01 s, plus 4 kernels x 2 layers
    assert sel.seconds == pytest.approx(1056 / 1000 + 0.08 + 0.008)
    # norm score: no soft FLOPs
    norm = sysm.frame_cost(TOY_LLM, TOY_GPU, replace(TOY_SETUP, score="norm"), "resv", T)
    assert norm.phases["select"].fp16 == 2 * (128 + 128)
    # index in DRAM: 8 clusters x (12 B centroid and count + 4 x 4 B exact sums + 8 B mean
    # value), 2 pairs
    assert sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "resv", T).index_bytes == 2 * 8 * 36


def test_select_phase_resv_dre_and_energy():
    c = sysm.frame_cost(TOY_LLM, TOY_ACC, TOY_SETUP, "resv", T)
    sel = c.phases["select"]
    # v2 retrieval over 8 clusters, G = 4/4 = 1, bk 8, Q 2 in turn, soft (no early exit):
    # set-up 1 + 2 x 2 x 1 = 5; passes 8 x (8 x 2 x 1 + 5) = 168; soft unit 8 x (1 + 4) + 9 x 2
    # + 29 = 87; output: 4 records in ceil(4 / 4) = 1 round of 8 + 5 cycles, + 4 = 17.
    # 5 + 168 + 87 + 17 = 277 cycles per layer, at 1000 Hz, 2 layers; member addresses 48 B
    assert sel.seconds == pytest.approx(2 * 277 / 1000 + 2 * 6 * 4 / 1000)
    assert sel.dram == 2 * 6 * 4
    # clustering: token period max(1, 16 / 2, 9) = 9: 9 x 3 + latency (1 + 16) = 44; the
    # 2 write-backs of 2 + 1 + 1 x 10 = 13 cycles overlap it: max(44, 26) = 44.  DRE busy
    # 2 tables x (277 + 44) = 642
    assert c.dre_seconds == pytest.approx(642 / 1000)
    # tables on chip, per pair (v2): owner 4 x (3 + 1) + meta 8 x (16 + 48) + sums 8 x 4 x 24
    # + planes 8 x 8 x 4 + counts 8 x 16 + mean values 8 x 4 x 16 = 2192 bits (no bias memory)
    assert c.index_onchip and c.index_bytes == 2 * 2192 / 8
    # frame: linear (no spill) max(9216 / 1e4, 1152 / 1000) = 1.152; attention 3200 / 1000
    assert c.phases["linear"].seconds == pytest.approx(1.152)
    assert c.seconds == pytest.approx(1.152 + 3.2 + sel.seconds)
    # DRE energy: logic 642 cycles (the busy count above) x 1000 GE x 0.1 x 1 fJ.  SRAM bits
    # per table (partials 8 + 8 + 3 + 2 = 21 bits): passes 64 plane reads x (4 + 2 x 2 x 21
    # + 2 x 3) = 6016; soft sweeps 8 x (3 x 2 x 21 + 16 + 21) = 1304; one output round 8 x 21
    # = 168; 4 unselected mean values x 64 = 256; clustering 4 x (6 x 4 x 24 + 3 x 64 + 2 x
    # 64) = 3584; write-back 2 x (4 x 24 + 4 x 8 + 16) = 288: 11616; 2 tables, 1 pJ/bit; no
    # leakage
    dre = 642 * 1000 * 0.1 * 1e-15 + 2 * 11616 * 1e-12
    # (relative only: approx's default absolute 1e-12 J would hide a few cycles here)
    assert c.dre_energy == pytest.approx(dre, rel=1e-9, abs=0)
    dram = 1152 + 2 * (6 + 4) * 16 + 2 * 6 * 4
    energy = dram * 10e-12 + 9216 * 1e-12 + 3200 * 2e-12 + 1.0 * c.seconds + dre
    assert c.energy == pytest.approx(energy)


def test_vision_phase():
    c = sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "full", T, vision=True)
    vis = c.phases["vision"]
    # ViT: 1 layer x (4 x 4^2 + 2 x 4 x 8) = 128; merger (4 x 4)^2 + 16 x 8 = 384 -> 512 params
    assert TOY_LLM.vision_params == 512
    patches = 4 * 4
    assert vis.int8 == 2 * 512 * patches
    assert vis.fp16 == 4 * 4 * patches * patches * 1
    assert vis.dram == 512 + patches * 1 * (9 * 4 + 4 * 8) * 2
    off = sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "full", T)
    assert c.seconds == pytest.approx(off.seconds + vis.seconds)


def test_fp16_weights_use_the_fp16_peak():
    s = replace(TOY_SETUP, weight_bytes=2)
    lin = sysm.frame_cost(TOY_LLM, TOY_GPU, s, "full", T).phases["linear"]
    assert lin.int8 == 0 and lin.fp16 == 9216
    assert lin.dram == 2304 + 3328


def test_budget_is_an_input():
    fetched = []
    for b in (98, 490, 980, 1960):
        s = replace(TOY_SETUP, budget_resv=b, budget_rekv=b)
        c = sysm.frame_cost(TOY_LLM, TOY_GPU, s, "rekv", 1000)
        assert c.attended == b
        fetched.append(c.phases["attention"].dram)
    assert fetched == sorted(fetched) and len(set(fetched)) == 4
    # a budget above the past fetches the past, as full attention does
    s = replace(TOY_SETUP, budget_rekv=10**6)
    a = sysm.frame_cost(TOY_LLM, TOY_GPU, s, "rekv", T).phases["attention"]
    f = sysm.frame_cost(TOY_LLM, TOY_GPU, s, "full", T).phases["attention"]
    assert a.dram == f.dram and a.fp16 == f.fp16


# ---- the DRE cycle formula --------------------------------------------------------------------
@pytest.mark.parametrize("d,lanes,bk", [(16, 4, 8), (32, 16, 4), (12, 3, 6)])
def test_retrieval_cycles_against_reference_schedule(seed, d, lanes, bk):
    """On integer-reference retrievals the formula is the schedule's upper bound (the Verilator
    testbench checks the RTL's cycles lie in [lo, hi] of ``TB.schedule_cycles``)."""
    rng = random.Random(seed)
    cfg = DREConfig(d=d, lanes=lanes, bk=bk, n_max=64, k_cap=8)
    hi_k = (1 << (bk - 1)) - 1
    for _ in range(20):
        n = rng.randint(1, 64)
        keys = [[rng.randint(-hi_k - 1, hi_k) for _ in range(d)] for _ in range(n)]
        q = [rng.randint(-128, 127) for _ in range(d)]
        bias = [rng.randint(-50, 50) for _ in range(n)]
        k_max = rng.randint(1, 8)
        for early in (True, False):
            sel = select(q, keys, bias, rng.choice([0, 5, 100]), k_max, 1, 8, bk, early)
            lo, hi = TB.schedule_cycles(types.SimpleNamespace(cfg=cfg), sel.alive)
            got = sysm.dre_retrieval_cycles(n, d, lanes, bk, sel.planes_read, sel.alive[-1])
            assert got == hi, (seed, n, sel.alive)
            assert hi - lo <= bk - 1
            if not early:
                assert got == lo  # no drops: exact


@pytest.mark.parametrize(
    "d,lanes,bk,floor,cycles",
    [  # verif.bench_select (Verilator), docs/select.md: "floor N*bk*d/lanes", "cycles, no exit"
        (64, 16, 8, 2048, 2097),
        (64, 16, 8, 6088, 6137),
        (64, 16, 4, 3044, 3073),
        (128, 16, 8, 11536, 11593),
        (128, 4, 8, 46144, 46249),
    ],
)
def test_retrieval_cycles_against_verilator_without_exit(d, lanes, bk, floor, cycles):
    """Means over 8 retrievals whose N differ (the table was filling): the formula is linear in
    N, so the mean N (floor / (bk * d / lanes), e.g. 190.25) gives the mean cycles exactly."""
    n = floor / (bk * (d // lanes))
    assert sysm.dre_retrieval_cycles(n, d, lanes, bk, n * bk, n) == cycles


def _rtl_no_exit(n, d, lanes, bk, q, k_cap):
    """docs/select.md / tests/test_hw_tokens.py: early exit off, every entry live, the budget
    taking all: ``1 + 2*Q*g + bk*(N*Q*g + 5) + R*(N + 5) + N``, ``R = ceil(N / k_cap)``."""
    g = d // lanes
    r = -(-n // k_cap)
    return 1 + 2 * q * g + bk * (n * q * g + 5) + r * (n + 5) + n


@pytest.mark.parametrize(
    "n,d,lanes,bk,q,k_cap",
    [(1, 16, 4, 4, 1, 4), (3, 16, 4, 4, 2, 4), (32, 16, 4, 4, 4, 4), (2048, 128, 16, 8, 16, 16)],
)
def test_v2_cycles_norm_without_exit_follow_the_rtl_formula(n, d, lanes, bk, q, k_cap):
    s = replace(TOY_SETUP, score="norm", work_fraction=1.0, lanes=lanes, bk=bk, k_cap=k_cap,
                queries_per_head=q)  # fmt: skip
    assert sysm.dre_v2_retrieval_cycles(n, d, s) == _rtl_no_exit(n, d, lanes, bk, q, k_cap)


def test_v2_cycles_at_the_defaults_by_hand():
    """d 128, 16 lanes (G 8), bk 8, Q 16, N 2048, k_cap 16, every entry a record."""
    s = replace(TOY_SETUP, lanes=16, bk=8, k_cap=16, queries_per_head=16)
    # norm, no exit: 1 + 256 + 8 x (2048 x 128 + 5) + 128 x 2053 + 2048
    norm = 1 + 256 + 2_097_192 + 262_784 + 2048
    assert norm == 2_362_281
    no_exit = replace(s, score="norm", work_fraction=1)
    assert sysm.dre_v2_retrieval_cycles(2048, 128, no_exit) == norm
    # soft: + 2048 x 33 + 9 x 16 + 29 = 67,757 (soft also ignores the norm rule's work fraction)
    assert sysm.dre_v2_retrieval_cycles(2048, 128, s) == norm + 67_757 == 2_430_038
    # 17 records (the budget reaches 17 clusters): 2 output rounds of 2053, + 17
    assert sysm.dre_v2_retrieval_cycles(2048, 128, s, records=17) == (
        1 + 256 + 2_097_192 + 67_757 + 2 * 2053 + 17
    )
    # Q accumulators in parallel: set-up 1 + 2 x 8, passes 8 x (2048 x 8 + 5); soft unchanged
    par = replace(s, parallel_queries=1)
    assert sysm.dre_v2_retrieval_cycles(2048, 128, par) == (
        1 + 16 + 131_112 + 67_757 + 262_784 + 2048
    )
    # a pipelined selector: + bk x pass_latency
    lat = replace(s, pass_latency=6)
    assert sysm.dre_v2_retrieval_cycles(2048, 128, lat) == 2_430_038 + 48
    # norm with early exit (work fraction 0.5, 16 alive at the end): passes 0.5 x 2048 x 8 x 128
    # + 2032 dropped + 40; output 128 rounds over the 16 alive
    ee = replace(s, score="norm", work_fraction=0.5, survivors=16)
    assert sysm.dre_v2_retrieval_cycles(2048, 128, ee) == (
        1 + 256 + 1_048_576 + 2032 + 40 + 128 * 21 + 2048
    )
    assert sysm.dre_v2_retrieval_cycles(0, 128, s) == 0


def test_soft_score_cycles_match_the_unit():
    from hw.soft_score import SoftScore

    # N (1 + 2Q) + 9Q + 29, the unit's docstring; its constants
    assert (SoftScore.Z_CYCLES, SoftScore.FIXED_CYCLES) == (9, 29)
    assert sysm.soft_score_cycles(10, 3) == 10 * 7 + 27 + 29 == 126
    assert sysm.soft_score_cycles(0, 3) == 0


def test_token_period_new_formula_by_hand():
    """``max(G, (G + 15) / 2, 9)`` (hw/cluster_unit.py with the screen's registered outputs)."""
    for g, want in ((1, 9), (2, 9), (3, 9), (4, 9.5), (8, 11.5), (14, 14.5), (15, 15), (32, 32)):
        assert sysm.token_period(16 * g, 16) == want, g
    assert sysm.token_latency(128, 16) == 24


def test_token_period_matches_hardware():
    from hw import cluster_unit
    from model.dre.config import DREConfig as C

    cases = ((64, 16), (128, 16), (64, 8), (16, 16), (128, 4), (48, 16))
    for d, lanes in cases:
        cfg = C(d=d, lanes=lanes, cluster_lanes=lanes)
        assert sysm.token_period(d, lanes) == cluster_unit.token_period(cfg)
        assert sysm.token_latency(d, lanes) == cluster_unit.token_latency(cfg)


def test_cluster_cycles_use_the_clustering_lanes():
    """The frame's clustering runs on ``min(cluster_lanes, lanes)`` lanes, as the RTL does:
    the default DREConfig (16 lanes, 8 clustering) against the hardware's own formulas."""
    from hw import cluster_unit
    from hw.cluster_writeback import writeback_cycles
    from model.dre.config import DREConfig as C

    cfg = C()
    s = replace(TOY_SETUP, lanes=cfg.lanes, cluster_lanes=cfg.cluster_lanes, bk=cfg.bk)
    p = 196
    want = cluster_unit.token_period(cfg) * (p - 1) + cluster_unit.token_latency(cfg)
    assert want == 11.5 * 195 + 24  # G = 64 / 8 = 8
    s = replace(s, updated_clusters_per_frame=0)
    assert sysm.dre_cluster_cycles(p, cfg.d, s) == want
    s = replace(s, updated_clusters_per_frame=196)
    assert sysm.dre_cluster_cycles(p, cfg.d, s) == 196 * writeback_cycles(cfg) == 196 * 50


def test_writeback_cycles_match_hardware():
    from hw.cluster_writeback import writeback_cycles
    from model.dre.config import DREConfig as C

    # by hand: d 128 / 16 lanes: G 8, 4 rounds: 2 + 8 + 4 x 10 = 50; G 3: 2 + 3 + 3 x 10 = 35
    assert sysm.writeback_cycles(128, 16, 8) == 50 and sysm.writeback_cycles(48, 16, 8) == 35
    # G 1 (one chunk per key): 2 + 1 + 1 x 6 = 9
    assert sysm.writeback_cycles(8, 8, 4) == 9
    for d, lanes, bk in ((64, 16, 8), (128, 16, 8), (48, 16, 8), (32, 8, 4), (8, 8, 4)):
        cfg = C(d=d, lanes=lanes, bk=bk, cluster_lanes=lanes)
        assert sysm.writeback_cycles(d, lanes, bk) == writeback_cycles(cfg)


# ---- memories against make synth --------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg,total",
    [  # make synth's memory bits of the whole version-1 dre (docs/synth.md before the v2 rule)
        (dict(d=64, n_max=256, grid=196), 562_396),
        (dict(d=32, n_max=64, grid=64), 74_618),
    ],
)
def test_memory_bits_against_synth(cfg, total):
    assert sum(sysm.dre_memory_bits(**cfg).values()) == total


def test_memory_bits_v2_against_make_synth():
    """docs/synth.md (``make synth`` at ``c3a20a8``), default ``dre``: 602,379 memory bits.  The
    model counts every state memory and the large scratch ones; what it leaves out is listed
    here from the page's memory table, so a memory added to the RTL or the model shows up."""
    m = sysm.dre_memory_bits(d=64, n_max=256, grid=196, q_max=4, soft=True)
    left_out = {
        "queue FIFO: one entry of 8 bits more than the model's n_max - 1": 8,
        "select soft_scores 256 x 24": 256 * 24,
        "soft unit FIFOs in_ctl 16 x 6, in_dat 16 x 116, out 15 x 25": 16 * 6 + 16 * 116 + 15 * 25,
        "write-back ROMs 2 x 8 x 1": 16,
    }
    assert sum(m.values()) + sum(left_out.values()) == 602_379


def test_memory_bits_v2_against_token_selector_synth():
    """docs/select.md: ``token_selector`` (default, q_max 4) has 164,864 memory bits: the plane
    store (planes and counts, no bias) with the core's partials and alive lists."""
    m = sysm.dre_memory_bits(d=64, n_max=256, grid=196, q_max=4)
    assert m["planes"] + m["counts"] + m["partial"] + m["alive"] == 164_864
    assert m["partial"] == 256 * 4 * 25 and "bias" not in m
    # summaries: d x 16 bits per entry; the soft unit's ROMs 256 x 21 + 1024 x 9
    m = sysm.dre_memory_bits(d=128, n_max=2048, grid=196, q_max=16, mean_value_bits=16, soft=True)
    assert m["means"] == 2048 * 128 * 16 and m["soft_rom"] == 14_592


def test_memory_bits_per_memory():
    m = sysm.dre_memory_bits(d=64, n_max=256, grid=196)
    # docs/synth.md, default dre: depth x width of each memory
    assert m["sums"] == 1024 * 384 and m["meta"] == 256 * 68 and m["owner"] == 196 * 9
    assert m["planes"] == 8 * 256 * 64 and m["alive"] == 512 * 8 and m["partial"] == 256 * 26


# ---- profiles ---------------------------------------------------------------------------------
def test_profiles_load_and_model_sizes():
    prof = sysm.load_all()
    m7, m2 = prof.models["qwen2vl-7b"], prof.models["qwen2vl-2b"]
    assert (m7.layers, m7.q_heads, m7.kv_heads, m7.head_dim, m7.mlp) == (28, 28, 4, 128, 18944)
    assert (m2.hidden, m2.q_heads, m2.kv_heads, m2.head_dim, m2.mlp) == (1536, 12, 2, 128, 8960)
    # the published LLM sizes: ~7.6 B (7B: 8.3 B with the 675 M ViT) and ~1.5 B (2B: 2.2 B)
    assert 7.5e9 < m7.params < 7.7e9 and 1.5e9 < m2.params < 1.6e9
    assert 0.6e9 < m7.vision_params < 0.7e9
    assert prof.devices["orin"].dram_bw == 204.8e9
    # the setup models what the golden model defaults to (retrieval version 2)
    from model.resv import ReSVConfig

    g, st = ReSVConfig(), prof.setup
    assert (st.table_size, st.queries_per_head) == (g.table_size, g.query_vectors)
    assert st.score == g.score
    assert (st.budget_resv, bool(st.summaries)) == (g.budget, g.summaries)
    for sec, items in prof.sources.items():
        for k, src in items.items():
            assert len(src) > 10, (sec, k)


def test_profile_needs_a_source(tmp_path):
    bad = tmp_path / "devices.toml"
    bad.write_text('[x]\nname = "x"\ndram_bw = 1.0\n')
    with pytest.raises(sysm.ProfileError, match="dram_bw"):
        sysm.load_profiles(bad)
    bad.write_text('[x]\ndram_bw = { value = 1.0, unit = "B/s", source = " " }\n')
    with pytest.raises(sysm.ProfileError, match="empty source"):
        sysm.load_profiles(bad)
    # the score is a word from a fixed list
    bad.write_text('[p]\nscore = { value = "hard", unit = "", source = "a source" }\n')
    with pytest.raises(sysm.ProfileError, match="score must be"):
        sysm.load_profiles(bad)
    bad.write_text('[p]\nscore = { value = "norm", unit = "", source = "a source" }\n')
    assert sysm.load_profiles(bad)[0] == {"p": {"score": "norm"}}


# ---- command line -----------------------------------------------------------------------------
def test_cli_table_csv_png(tmp_path, capsys):
    assert sysm.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for word in ("qwen2vl-7b", "qwen2vl-2b", "orin", "vrex", "table state", "paper: 2.0 %"):
        assert word in out
    rows = list(csv.DictReader((tmp_path / "system.csv").open()))
    assert len(rows) == 2 * 2 * 3 * 5
    assert (tmp_path / "system.png").stat().st_size > 10_000
    for r in rows:
        if r["device"] == "orin" and r["policy"] == "full":
            assert float(r["speedup_vs_orin_full"]) == 1.0
        # phases add up to the frame time on the GPU (no DRE background work)
        if r["device"] == "orin":
            phases = sum(float(r[f"ms_{k}"]) for k in sysm.PHASES)
            assert phases == pytest.approx(float(r["ms_frame"]), rel=1e-3)
    # full attention on the Orin-class device slows down as the stream grows
    fps = [float(r["fps"]) for r in rows if r["device"] == "orin" and r["policy"] == "full"]
    assert fps[:5] == sorted(fps[:5], reverse=True)


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--budget", "0"], "--budget-rekv=0"),
        (["--models", "nope"], "unknown model"),
        (["--devices", "nope"], "unknown device"),
        (["--minutes", "0"], "stream lengths"),
        (["--dre-instances", "0"], "--dre-instances"),
        (["--set", "foo.x=1"], "unknown 'foo'"),
        (["--set", "vrex.zz=1"], "no number 'zz'"),
        (["--set", "vrex.peak_int8=fast"], "--set expects"),
        (["--queries", "0"], "--queries=0"),
        (["--pass-latency", "-1"], "--pass-latency=-1"),
        (["--set", "setup.summaries=2"], "summaries=2 must be 0 or 1"),
        (["--set", "setup.score=1"], "score is a word"),
    ],
)
def test_cli_errors(tmp_path, capsys, argv, msg):
    assert sysm.main([*argv, "--out", str(tmp_path), "--no-plot"]) == 2
    assert msg in capsys.readouterr().err


def test_cli_set_overrides_a_profile_number(tmp_path):
    def vrex_linear_ms(extra):
        assert sysm.main(["--out", str(tmp_path), "--no-plot", "--minutes", "1", *extra]) == 0
        rows = csv.DictReader((tmp_path / "system.csv").open())
        return {
            float(r["ms_linear"])
            for r in rows
            if r["device"] == "vrex" and r["model"] == "qwen2vl-7b"
        }

    base = vrex_linear_ms([])
    half = vrex_linear_ms(["--set", "vrex.peak_int8=42.5e12"])
    # the accelerator's linear phase is compute-bound at INT8: half the peak, twice the time
    assert len(base) == len(half) == 1
    assert half.pop() == pytest.approx(2 * base.pop(), rel=1e-3)


def test_cli_v2_options(tmp_path, capsys):
    """The v2 setup is printed, and the DRE's retrieval (the accelerator's ReSV select phase)
    follows --queries / --parallel-queries: 28 layers x one retrieval per DRE at 1 GHz."""

    def select_ms(extra):
        argv = ["--out", str(tmp_path), "--no-plot", "--minutes", "60", "--devices", "vrex"]
        assert sysm.main([*argv, "--models", "qwen2vl-7b", *extra]) == 0
        rows = csv.DictReader((tmp_path / "system.csv").open())
        return next(float(r["ms_select"]) for r in rows if r["policy"] == "resv")

    base = select_ms([])
    out = capsys.readouterr().out
    assert "table 2048, Q 16, score soft, summaries on" in out and "queries in turn" in out
    # at 60 min the table is full (2048) and the budget reaches ceil(980 x 2048 / 705,600) = 3
    # clusters: one output round; member lists 980 x 4 B x 112 tables are 0.44 MB of DRAM
    # (2.7 us at 163.84 GB/s), 1 DRE per head
    cyc = 1 + 256 + 2_097_192 + 67_757 + 1 * 2053 + 3
    assert base == pytest.approx(28 * cyc / 1e6 + 112 * 980 * 4 / 163.84e9 * 1e3, rel=1e-3)
    par = select_ms(["--parallel-queries", "on"])
    cyc_par = 1 + 16 + 131_112 + 67_757 + 2053 + 3
    assert par == pytest.approx(28 * cyc_par / 1e6 + 112 * 980 * 4 / 163.84e9 * 1e3, rel=1e-3)
    # Q 1 in turn: set-up 1 + 16, passes 8 x (2048 x 8 + 5), soft 2048 x 3 + 38
    one = select_ms(["--queries", "1"])
    cyc_one = 1 + 16 + 131_112 + 2048 * 3 + 38 + 2053 + 3
    assert one == pytest.approx(28 * cyc_one / 1e6 + 112 * 980 * 4 / 163.84e9 * 1e3, rel=1e-3)
