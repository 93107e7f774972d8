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
from model.dre_config import DREConfig
from model.dre_select import select
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
    queries_per_head=1,
    lanes=4,
    bq=8,
    bk=8,
    count_bits=16,
    bias_bits=24,
    k_cap=4,
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


def test_select_phase_rekv():
    sel = sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "rekv", T).phases["select"]
    # index entry 4 x 2 B + 4 B count = 12 B; read 3 frame means and write 1, in 2 pairs
    assert sel.dram == 2 * 4 * 12 == 96
    assert sel.fp16 == 2 * 2 * 4 * 3 == 48  # one query . 3 means of 4 elements, 2 pairs
    assert sel.seconds == pytest.approx(max(48 / 1000, 96 / 1000) + 3 * 2 * 0.001)
    c = sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "rekv", T)
    assert c.index_bytes == 2 * 4 * 12 and not c.index_onchip  # 4 frame means in DRAM


def test_select_phase_resv_gpu():
    sel = sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "resv", T).phases["select"]
    # clusters min(8, 3 x 3) = 8.  Bytes, 2 pairs: member addresses 6 x 4 B; the table 8 x 12 B;
    # clustering 4 tokens x (3 candidates read + 1 write) x (4 x 4 B sums + 4 B count);
    # 2 updated centroids re-quantised, 12 B each
    assert sel.dram == 2 * (6 * 4 + 8 * 12 + 4 * 4 * 20 + 2 * 12) == 928
    assert sel.fp16 == 2 * (2 * 4 * 8 + 4 * 8 * 4) == 384
    # sequential clustering: 2 layers x 4 tokens x 0.01 s, plus 4 kernels x 2 layers
    assert sel.seconds == pytest.approx(928 / 1000 + 0.08 + 0.008)
    # index in DRAM: 8 clusters x (12 B centroid and count + 4 x 4 B exact sums), 2 pairs
    assert sysm.frame_cost(TOY_LLM, TOY_GPU, TOY_SETUP, "resv", T).index_bytes == 2 * 8 * 28


def test_select_phase_resv_dre_and_energy():
    c = sysm.frame_cost(TOY_LLM, TOY_ACC, TOY_SETUP, "resv", T)
    sel = c.phases["select"]
    # retrieval over 8 clusters, G = 4/4 = 1, bk 8: 1 + 2G + G x (0.5 x 8 x 8 = 32 planes)
    # + (8 - 2 survivors) dropped + 5 x 8 = 81 cycles per layer, at 1000 Hz, 2 layers
    assert sel.seconds == pytest.approx(2 * 81 / 1000 + 2 * 6 * 4 / 1000)
    assert sel.dram == 2 * 6 * 4
    # DRE busy: 2 tables x (81 + max(clustering 3 x (4-1) + 1 + 8 = 18, write-back 2 x (1 x 11 + 3)
    # = 28)) = 218 cycles
    assert c.dre_seconds == pytest.approx(218 / 1000)
    # tables on chip, per pair: owner 4 x (3 + 1) + meta 8 x (16 + 48) + sums 8 x 4 x 24
    # + bias 8 x 24 + planes 8 x 8 x 4 = 1744 bits
    assert c.index_onchip and c.index_bytes == 2 * 1744 / 8
    # frame: linear (no spill) max(9216 / 1e4, 1152 / 1000) = 1.152; attention 2176 / 1000
    assert c.phases["linear"].seconds == pytest.approx(1.152)
    assert c.seconds == pytest.approx(1.152 + 2.176 + sel.seconds)
    # DRE energy: logic 218 cycles x 1000 GE x 0.1 x 1 fJ; SRAM bits per table: retrieval 32
    # planes x (4 + 2 x 26 score + 2 x 3 index) = 1984, clustering 4 x (6 x 4 x 24 + 3 x 64 meta)
    # = 3072, write-back 2 x (4 x 24 + 4 x 8 + 24) = 304; 2 tables, 1 pJ/bit; no leakage
    dre = 218 * 1000 * 0.1 * 1e-15 + 2 * (1984 + 3072 + 304) * 1e-12
    assert c.dre_energy == pytest.approx(dre)
    dram = 1152 + 2 * (6 + 4) * 16 + 2 * 6 * 4
    energy = dram * 10e-12 + 9216 * 1e-12 + 2176 * 2e-12 + 1.0 * c.seconds + dre
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


def test_expected_cycles_near_make_sim():
    """make sim (docs/dre.md): N = 256, d 64, 16 lanes, bk 8, work fraction 0.528, 4514 cycles
    per retrieval (mean incl. one 1-cycle error check and the first frames' smaller tables)."""
    s = replace(TOY_SETUP, lanes=16, bk=8, work_fraction=0.528, survivors=16)
    got = sysm.dre_expected_retrieval_cycles(256, 64, s)
    assert abs(got - 4514) / 4514 < 0.05


def test_token_period_matches_hardware():
    from hw.cluster_unit import token_period
    from model.dre_config import DREConfig as C

    for d, lanes in ((64, 16), (128, 16), (64, 8), (16, 16), (128, 4)):
        assert sysm.token_period(d, lanes) == token_period(C(d=d, lanes=lanes))


# ---- memories against make synth --------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg,total",
    [  # docs/synth.md, memory bits of the whole dre (make synth)
        (dict(d=64, n_max=256, grid=196), 562_396),
        (dict(d=32, n_max=64, grid=64), 74_618),
    ],
)
def test_memory_bits_against_synth(cfg, total):
    assert sum(sysm.dre_memory_bits(**cfg).values()) == total


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
