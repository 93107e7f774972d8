"""The DRE top level: reference composition, export CLI, lint, and short Verilator co-simulations
of hw.dre.DRE against the golden model (verif/sim_dre.py + verif/tb_dre.py)."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess

import pytest

from hw import dre_regs
from hw.dre import DRE
from hw.export import main as export_main
from model.dre.cluster import ClusterRef, size_bias
from model.dre.config import ConfigError, DREConfig
from model.dre.select import select
from model.dre.top import DRERef, Registers, integer_stream
from verif import sim_dre, toolenv
from verif.runner import SimulationFailed, run

#: small enough to build in Verilator in about a minute, big enough for forced merges
SMALL = DREConfig(d=16, lanes=4, bq=6, bk=6, n_max=16, k_cap=4, grid_max=36)


# ---- the reference composition -------------------------------------------------------------
def _rand_frames(rng, cfg, n, h, w, palette=6):
    """Keys drawn from a few prototypes with noise, so clusters form and the table fills."""
    lo, hi = -(1 << (cfg.bk - 1)), (1 << (cfg.bk - 1)) - 1
    protos = [[rng.randint(lo, hi) for _ in range(cfg.d)] for _ in range(palette)]
    frames = []
    for _ in range(n):
        frame = []
        for _ in range(h * w):
            p = rng.choice(protos)
            frame.append([min(hi, max(lo, x + rng.randint(-3, 3))) for x in p])
        frames.append(frame)
    return frames


def test_dreref_store_is_clusterref_writeback_and_selection_is_select(seed):
    """Two routes to what retrieval reads: the per-frame write-backs of DRERef and ClusterRef's
    final table; the retrieval must equal select() over that table."""
    rng = random.Random(seed)
    cfg = SMALL
    regs = Registers(
        grid_w=5,
        grid_h=4,
        tau_t=200,
        tau_s=180,
        table_size=10,
        bias_scale=300,
        margin=500,
        k_min=2,
        k_max=4,
    )
    ref = DRERef(cfg, regs)
    plain = ClusterRef(cfg, table_size=10, tau_t=200, tau_s=180, bias_scale=300)
    for keys in _rand_frames(rng, cfg, 5, 4, 5):
        assert ref.add_frame(keys) == plain.add_frame(keys, 4, 5)
    assert ref.store == plain.writebacks()
    q = [rng.randint(-32, 31) for _ in range(cfg.d)]
    want = select(
        q,
        [c for c, _ in ref.store.values()],
        [b for _, b in ref.store.values()],
        500,
        4,
        2,
        bq=cfg.bq,
        bk=cfg.bk,
    )
    got = ref.retrieve(q)
    assert got.error == 0 and got.selection == want and got.n == plain.n_clusters


def test_dreref_keeps_the_bias_of_untouched_clusters(seed):
    """A cluster not updated in a frame keeps the bias written with the scale of its last
    update (the hardware writes back updated clusters only)."""
    rng = random.Random(seed)
    cfg = SMALL
    ref = DRERef(cfg, Registers(grid_w=4, grid_h=1, tau_t=256, tau_s=256, bias_scale=100))
    a = [rng.randint(1, 31) for _ in range(cfg.d)]
    b = [-x for x in a]
    ref.add_frame([a, a, a, a])  # tau 1: identical keys merge; one cluster of 4
    ref.regs.bias_scale = 900
    ref.regs.grid_w = 2
    ref.add_frame([b, b])  # a new grid: no temporal candidate, a new cluster
    assert ref.store[0][1] == size_bias(4, 100, cfg)
    assert ref.store[1][1] == size_bias(2, 900, cfg)


def test_dreref_error_flags():
    cfg = SMALL
    ref = DRERef(cfg, Registers(grid_w=1, grid_h=1, k_max=cfg.k_cap))
    q = [0] * cfg.d
    assert ref.retrieve(q).error == 0b00001  # N = 0
    ref.add_frame([[1] * cfg.d])
    for k_min, k_max, flags in [
        (1, 0, 0b10100),
        (1, cfg.k_cap + 1, 0b01000),
        (0, 1, 0b10000),
        (3, 2, 0b10000),
        (1, 1, 0),
    ]:
        ref.regs.k_min, ref.regs.k_max = k_min, k_max
        r = ref.retrieve(q)
        assert r.error == flags, (k_min, k_max)
        assert (r.selection is None) == bool(flags)


def test_integer_stream_units():
    """Keys and queries fit their widths; the bias is ln(n) attention logits in score units."""
    cfg = SMALL
    s = integer_stream(cfg, frames=2, grid=(3, 4), queries_per_frame=3, margin=2.0)
    assert len(s.frames) == 2
    for fr in s.frames:
        assert len(fr.keys) == 12 and len(fr.queries) == 3
        assert all(abs(x) < 2 ** (cfg.bk - 1) for k in fr.keys for x in k)
        assert all(abs(x) < 2 ** (cfg.bq - 1) for q in fr.queries for x in q)
    unit = math.sqrt(cfg.d) / (s.key_scale * s.query_scale)
    assert s.regs.margin == round(2.0 * unit)
    # Mitchell's log2 is exact at powers of two: bias(8) = 3 * ln 2 * unit (to rounding)
    assert abs(size_bias(8, s.regs.bias_scale, cfg) - math.log(8) * unit) <= 3
    with pytest.raises(ConfigError, match="grid_max"):
        integer_stream(cfg, frames=1, grid=(7, 7))
    with pytest.raises(ConfigError, match="layer"):
        integer_stream(cfg, frames=1, grid=(2, 2), layer=9)


def test_integer_stream_soft_gain():
    """The soft score's gain: one per stream (the scales are fixed per stream), from the two
    quantisation scales, log2(e) / sqrt(d) and 2^(SOFT_FB + GAIN_SHIFT) = 2^24, computed here
    from the formula of docs/soft.md; ``score`` sets CTRL.soft / CTRL.raw_max; a gain GAIN
    cannot hold is an error only for the soft score."""
    cfg = SMALL
    s = integer_stream(cfg, frames=2, grid=(3, 4), queries_per_frame=2, score="soft")
    want = round(s.query_scale * s.key_scale * math.log2(math.e) / math.sqrt(cfg.d) * 2**24)
    assert s.gain == s.regs.gain == want and 1 <= want < 1 << 18
    assert (s.regs.soft, s.regs.raw_max, s.regs.score) == (1, 0, "soft")
    # the scales map the largest magnitude of the first frame to the largest code
    assert max(abs(x) for k in s.frames[0].keys for x in k) == (1 << (cfg.bk - 1)) - 1
    assert max(abs(x) for q in s.frames[0].queries for x in q) == (1 << (cfg.bq - 1)) - 1
    for score, bits in (("norm", (0, 0)), ("max", (0, 1))):
        t = integer_stream(cfg, frames=2, grid=(3, 4), queries_per_frame=2, score=score)
        assert (t.regs.soft, t.regs.raw_max) == bits and t.regs.gain == want  # same scales
    with pytest.raises(ConfigError, match="score='hard'"):
        integer_stream(cfg, frames=1, grid=(2, 2), score="hard")
    tiny = DREConfig(d=16, lanes=4, bq=2, bk=2, n_max=16, k_cap=4, grid_max=36)
    with pytest.raises(ConfigError, match=r"soft gain .* is outside"):
        integer_stream(tiny, frames=1, grid=(2, 3), score="soft")
    t = integer_stream(tiny, frames=1, grid=(2, 3), score="norm")
    assert t.gain is None and t.regs.gain == dre_regs.GAIN_RESET


def test_soft_stream_selections_depend_on_gain_and_score(seed):
    """On the stream the co-simulation runs, the soft selections change with GAIN and differ
    from the normalised max: a DRE that ignored CTRL.soft or GAIN would mismatch."""
    s = integer_stream(SMALL, frames=5, grid=(5, 6), queries_per_frame=3, score="soft", seed=seed)
    s.regs.budget = 20
    variants = {"soft": {}, "soft/8": {"gain": max(1, s.gain // 8)}, "norm": {"soft": 0}}
    got = {}
    for name, change in variants.items():
        ref = DRERef(SMALL, Registers(**{**vars(s.regs), **change}))
        got[name] = []
        for fr in s.frames:
            ref.add_frame(fr.keys)
            got[name] += [ref.retrieve_tokens(q).records for q in (fr.queries, fr.queries[:1])]
    assert got["soft"] != got["soft/8"] and got["soft"] != got["norm"]


# ---- construction and export ---------------------------------------------------------------
def test_dre_rejects_bad_configs():
    with pytest.raises(ConfigError, match="DREConfig"):
        DRE({"d": 64})
    with pytest.raises(ConfigError, match="n_max=1"):
        DRE(DREConfig(n_max=1, k_cap=1))


def test_score_registers():
    """CTRL.soft (bit 2) and GAIN (word 0x1a, GAIN_BITS wide) as hw/dre.py and the hosts use
    them; the reset values a host that never writes them gets."""
    from model.dre.tokens import GAIN_BITS

    regs = dre_regs.by_name(DREConfig())
    fields = {f: (lsb, w) for f, lsb, w, _ in dre_regs.fields_of(regs["CTRL"])}
    assert fields == {"no_exit": (0, 1), "raw_max": (1, 1), "soft": (2, 1)}
    assert dre_regs.CTRL_SOFT == 1 << 2 and regs["CTRL"].reset == dre_regs.CTRL_RESET
    g = regs["GAIN"]
    assert (g.addr, g.words, g.width, g.access) == (0x1A, 1, GAIN_BITS, "rw")
    assert 1 <= g.reset == dre_regs.GAIN_RESET < 1 << GAIN_BITS
    assert dre_regs.ctrl_word(no_exit=1, soft=1) == 0b101 and dre_regs.ctrl_word() == 0
    with pytest.raises(ValueError, match="soft=2"):
        dre_regs.ctrl_word(soft=2)


def test_register_map_is_fixed_and_disjoint():
    """Addresses do not move with the configuration, and no two registers overlap."""
    maps = [dre_regs.register_map(c) for c in (DREConfig(), SMALL, DREConfig(bias_bits=48))]
    assert len({tuple((r.name, r.addr, r.words) for r in m) for m in maps}) == 1
    words = [r.addr + w for r in maps[0] for w in range(r.words)]
    assert len(words) == len(set(words))


def test_export_writes_verilog_and_json(tmp_path, capsys):
    out = tmp_path / "dre_small.v"
    assert (
        export_main(
            [
                "--out",
                str(out),
                "--set",
                "d=16",
                "--set",
                "lanes=4",
                "--set",
                "n_max=16",
                "--set",
                "k_cap=4",
            ]
        )
        == 0
    )
    text = out.read_text()
    assert "module dre_small(" in text
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["config"]["d"] == 16 and meta["top"] == "dre_small"
    assert [r["name"] for r in meta["register_map"]][:2] == ["ID", "D"]
    # the JSON configures a later export or simulation
    assert DREConfig.from_json(out.with_suffix(".json")).n_max == 16
    assert export_main(["--regmap"]) == 0
    assert "| 0x0a | STATUS |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "dd=3"], "unknown parameter(s) dd; valid: d, lanes"),
        (["--set", "d=100"], "not a multiple of lanes"),
        (["--set", "lanes=x"], "lanes must be an integer"),
        (["--set", "d"], "NAME=VALUE"),
        (["--set", "n_max=1", "--set", "k_cap=1"], "n_max=1 must be >= 2"),
        (["--name", "1x"], "not a Verilog identifier"),
    ],
)
def test_export_errors_are_one_readable_line(tmp_path, capsys, args, message):
    assert export_main(["--out", str(tmp_path / "x.v"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1


@pytest.mark.regress
def test_export_video7b_preset(tmp_path, capsys):
    """The video7b configuration exports (d 128, table 1024, grid 196, q_max 4, v2 rule).
    About 2 minutes of elaboration on two cores: behind the regress marker."""
    out = tmp_path / "video7b.v"
    assert export_main(["--preset", "video7b", "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    c = meta["config"]
    assert (c["d"], c["n_max"], c["grid_max"], c["q_max"], meta["rule"]) == (
        128,
        1024,
        196,
        4,
        "v2",
    )
    assert "module video7b" in out.read_text()


def test_export_unknown_preset(tmp_path, capsys):
    assert export_main(["--preset", "video9z", "--out", str(tmp_path / "x.v")]) == 2
    assert "unknown preset 'video9z'; choose from default, video7b" in capsys.readouterr().err


def test_export_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert export_main(["--config", str(bad), "--out", str(tmp_path / "x.v")]) == 2
    assert "cannot read DRE config" in capsys.readouterr().err


def test_exported_verilog_lints_clean(tmp_path):
    """The default DRE as users get it: verilator --lint-only -Wall with the project waivers."""
    from verif.lint_verilog import lint_file

    out = tmp_path / "dre.v"
    assert export_main(["--out", str(out)]) == 0
    res = lint_file(out, "dre")
    assert res.ok, res.messages


@pytest.mark.regress
def test_exported_verilog_elaborates_in_icarus(tmp_path):
    """Icarus is an optional extra (apt-get install iverilog); `make regress` requires it."""
    iverilog = shutil.which("iverilog")
    assert iverilog, "iverilog not found: apt-get install iverilog (needed by make regress)"
    out = tmp_path / "dre.v"
    assert export_main(["--out", str(out)]) == 0
    proc = subprocess.run(
        [iverilog, "-g2012", "-s", "dre", "-o", str(tmp_path / "dre.vvp"), str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


# ---- co-simulation -----------------------------------------------------------------------------
def _sim_args(tmp_path, *extra):
    cfg_args = []
    for k, v in SMALL.to_dict().items():
        cfg_args += ["--set", f"{k}={v}"]
    return [*cfg_args, "--out", str(tmp_path / "summary.json"), *extra]


def _run_tb(spec_path, testcase: str, rule: str = "v2"):
    """One cocotb test of verif/tb_dre.py on the SMALL DRE, with the spec in a file."""
    toolenv.apply()
    run(
        DRE(SMALL, rule=rule),
        "dre",
        "verif.tb_dre",
        extra_env={"VREX_DRE": f"@{spec_path}"},
        testcase=testcase,
    )


@pytest.mark.cocotb
def test_make_sim_short_with_backpressure(tmp_path, seed):
    """The `make sim` flow (v2 rule, soft score: the defaults) on a small configuration: random
    gaps and backpressure on every stream, a table that fills (forced merges), table_size below
    n_max, a clear mid-stream and the N = 0 error query; zero mismatches and every counter as
    golden.  (tests/test_axi_dre.py co-simulates the normalised max.)"""
    toolenv.apply()
    rc = sim_dre.main(
        _sim_args(
            tmp_path,
            "--frames",
            "5",
            "--grid",
            "5x6",
            "--queries",
            "3",
            "--budget",
            "20",
            "--table-size",
            "12",
            "--clear-at",
            "3",
            "--stall",
            "0.3",
            "--gap",
            "0.2",
            "--seed",
            str(seed),
        )
    )
    s = json.loads((tmp_path / "summary.json").read_text())
    assert rc == 0 and s["mismatches"] == 0
    assert s["assignments"] == 5 * 30 and s["retrievals"] == 1 + 5 * 2  # all 3 vectors, then 1


@pytest.mark.cocotb
def test_scoreboard_catches_a_wrong_expectation(tmp_path, seed):
    """The comparison can fail: one expected score off by one gives exactly one mismatch.  This
    runs the v1 rule (``--rule v1``), so that `make test` builds and checks v1 too."""
    toolenv.apply()
    args = sim_dre.parse_args(
        _sim_args(tmp_path, "--frames", "2", "--grid", "3x4", "--rule", "v1", "--queries", "2")
    )
    args.seed = seed
    spec, _ = sim_dre.build_spec(SMALL, args, log=lambda _: None)
    q = spec["frames"][1]["queries"][0]
    assert q["records"], "the query must select something"
    index, score = q["records"][0]
    q["records"][0] = (index, score + 1)
    spec["out"] = str(tmp_path / "summary.json")
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(SimulationFailed):
        _run_tb(path, "dre_stream", rule="v1")
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["mismatches"] == 1 and "selection" in s["first_mismatches"][0]


@pytest.mark.cocotb
def test_register_block(tmp_path, seed):
    toolenv.apply()
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"cfg": SMALL.to_dict(), "seed": seed}))
    _run_tb(path, "dre_registers")


@pytest.mark.regress
@pytest.mark.cocotb
def test_make_sim_default_config_64_frames(tmp_path):
    """What `make sim` runs: the default configuration, 64 frames of 14 x 14."""
    toolenv.apply()
    assert sim_dre.main(["--out", str(tmp_path / "summary.json")]) == 0


def test_docs_register_map_matches_the_code():
    """docs/dre.md quotes the register map generated from hw/dre_regs.py, unchanged."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "dre.md").read_text()
    assert dre_regs.markdown(DREConfig()) in doc, "regenerate with python -m hw.export --regmap"
