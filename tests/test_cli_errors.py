"""Bad inputs to the command-line tools and the integer reference: one clear error, no traceback.

Each case is one an engineer trying the tools met (issue 12, bad inputs 1-10, and more of the same
kind found afterwards).  A CLI must print exactly one ``error: ...`` line, exit with status 2 and
do so *before* any long work: the tests make the long work (the golden model, the simulator, the
elaboration) raise if it is reached, so a check that came too late fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw import dre_regs
from hw import export as hw_export
from model.dre.config import DREConfig
from model.dre.top import DRERef, Registers
from verif import sim_dre, toolenv

SMALL = ["--set", "d=16", "--set", "lanes=4", "--set", "n_max=16", "--set", "k_cap=4"]


def one_error_line(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert err.count("\n") == 1, f"want one line, got:\n{err}"
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, f"{f!r} not in {err!r}"
    return err


@pytest.fixture
def no_long_work(monkeypatch):
    """Elaboration, the golden model and the simulator all raise if reached."""

    def boom(*_a, **_k):
        raise AssertionError("long work started before the bad input was reported")

    monkeypatch.setattr(hw_export, "to_verilog", boom)
    monkeypatch.setattr(sim_dre, "build_spec", boom)
    import verif.runner

    monkeypatch.setattr(verif.runner, "run", boom)


class _Tiny(wiring.Component):
    """A one-adder component for the runner's tests (its build never reaches a simulator)."""

    def __init__(self):
        super().__init__({"a": In(4), "y": Out(4)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.y.eq(self.a + 1)
        return m


# ---- python -m hw.export ---------------------------------------------------------------------
def test_export_out_json_would_clobber_the_verilog(tmp_path, capsys, no_long_work):
    """1: --out x.json used to write the Verilog, then the JSON sidecar over it."""
    out = tmp_path / "x.json"
    assert hw_export.main(["--out", str(out), *SMALL]) == 2
    one_error_line(capsys, "must end in .v or .sv")
    assert not out.exists()


def test_export_grid_max_65536_fits_its_registers():
    """2: grid_max=65536 gave GRID_W (16 bits) a reset of 0x10000, truncated with a warning.
    Now every reset value fits its register, and the reset grid covers grid_max tokens."""
    for g in (1, 196, 65535, 65536):
        cfg = DREConfig(grid_max=g)
        regs = dre_regs.by_name(cfg)
        for r in regs.values():
            assert 0 <= r.reset < 1 << r.width, r
        assert regs["GRID_W"].reset * regs["GRID_H"].reset == g
    assert dre_regs.reset_grid(DREConfig(grid_max=65536)) == (32768, 2)


@pytest.mark.regress
def test_export_grid_max_65536_without_warning(tmp_path, recwarn):
    """2, end to end (42 s of elaboration): no truncation warning from Amaranth."""
    assert hw_export.main(["--out", str(tmp_path / "g.v"), "--set", "grid_max=65536"]) == 0
    assert not [w for w in recwarn if "truncated" in str(w.message)]


@pytest.mark.parametrize("n_max", [16384, 65536])
def test_export_huge_n_max_is_refused_with_a_bound(tmp_path, capsys, no_long_work, n_max):
    """3: n_max=65536 ran for many minutes and >1 GB without a word; above LARGE it is refused
    unless --allow-large, with the expected cost in the message."""
    out = tmp_path / "x.v"
    assert hw_export.main(["--out", str(out), "--set", f"n_max={n_max}"]) == 2
    one_error_line(capsys, f"n_max={n_max} is above {hw_export.LARGE}", "--allow-large")
    assert not out.exists()


def test_export_reports_each_stage(tmp_path, capsys):
    """3: an export prints a line per stage (what runs, and how long each took); the early
    write check does not stop a good export (into a folder that does not exist yet)."""
    out = tmp_path / "a" / "s.v"
    assert hw_export.main(["--out", str(out), *SMALL, "--set", "grid_max=16"]) == 0
    text = capsys.readouterr().out
    for stage in ("elaborating", "RTLIL done", "Verilog done"):
        assert stage in text, text
    assert "module s(" in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text())["top"] == "s"


def test_export_out_under_a_file(tmp_path, capsys, no_long_work):
    """4: --out below a path whose parent is a file gave `[Errno 17] File exists`."""
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    assert hw_export.main(["--out", str(tmp_path / "run.sh" / "sub" / "x.v"), *SMALL]) == 2
    one_error_line(capsys, "run.sh is a file, not a directory")


def test_export_out_is_a_directory(tmp_path, capsys, no_long_work):
    (tmp_path / "d.v").mkdir()
    assert hw_export.main(["--out", str(tmp_path / "d.v"), *SMALL]) == 2
    one_error_line(capsys, "is a directory")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--regmap", "--fusesoc", "x"], "--fusesoc need(s) a Verilog export"),
        (["--regmap", "--bus", "axi"], "--bus need(s) a Verilog export"),
        (["--preset", "video7b", "--config", "c.json"], "give one"),
    ],
)
def test_export_options_that_would_be_ignored(tmp_path, capsys, no_long_work, args, fragment):
    """--regmap used to drop --fusesoc/--bus silently, --preset to override --config."""
    assert hw_export.main(["--out", str(tmp_path / "x.v"), *args]) == 2
    one_error_line(capsys, fragment)


def test_export_out_unwritable(capsys, no_long_work):
    assert hw_export.main(["--out", "/proc/nope/x.v", *SMALL]) == 2
    one_error_line(capsys, "/proc/nope", "cannot")


# ---- python -m verif.sim_dre ----------------------------------------------------------------
def sim_err(capsys, args, *fragments):
    assert sim_dre.main([*SMALL, "--grid", "2x3", "--frames", "4", *args]) == 2
    return one_error_line(capsys, *fragments)


@pytest.mark.parametrize(
    "args, fragments",
    [
        # 5: every retrieval was an error trailer, yet PASS
        (["--rule", "v1", "--k-max", "999"], ("--k-max=999", "k_cap=4")),
        (["--rule", "v1", "--k-max", "0"], ("--k-max=0",)),
        (["--rule", "v1", "--k-min", "3", "--k-max", "2"], ("--k-min=3", "k_max=2")),
        (["--k-max", "2"], ("--k-max", "--rule v1 only")),  # v2 has no k: it was ignored
        (["--margin", "2"], ("--margin", "--rule v1 only")),
        (["--rule", "v1", "--margin", "-1"], ("--margin=-1",)),
        # 6: silently replaced or ignored
        (["--table-size", "0"], ("--table-size=0", "1 .. n_max=16")),
        (["--table-size", "17"], ("--table-size=17",)),
        (["--clear-at", "999"], ("--clear-at 999", "0 .. 3")),
        (["--clear-at", "-1"], ("--clear-at -1",)),
        # more of the kind
        (["--tau-t", "1.5"], ("--tau-t=1.5", "[0, 1]")),
        (["--tau-s", "nan"], ("--tau-s=nan",)),
        (["--budget", "0"], ("--budget=0",)),
        (["--queries", "9"], ("--queries=9", "q_max")),
        (["--rule", "v1", "--queries", "0"], ("--queries=0",)),
        (["--frames", "0"], ("--frames=0",)),
        (["--grid", "20x20"], ("--grid 20x20", "grid_max=196")),
        (["--stall", "1"], ("--stall=1",)),
        (["--frames-folder", "/nonexistent/frames"], ("--frames-folder", "no such")),
        (["--set", "n_max=1", "--set", "k_cap=1"], ("n_max=1 must be >= 2",)),
        (["--preset", "nope"], ("unknown preset",)),
        (["--preset", "default", "--config", "x.json"], ("give one",)),
        # the v2 score
        (["--score", "hard"], ("--score 'hard'", "choose soft, norm or max")),
        (["--score", ""], ("--score ''", "choose soft, norm or max")),
        (["--score", "SOFT"], ("--score 'SOFT'",)),
        (["--rule", "v1", "--score", "soft"], ("--score", "--rule v2 only")),
        (["--rule", "v1", "--raw-max"], ("--raw-max", "--rule v2 only")),
        (["--raw-max", "--score", "soft"], ("--raw-max is --score max", "--score soft")),
        (["--score", "soft", "--no-exit"], ("--no-exit", "--score soft", "--score norm")),
    ],
)
def test_sim_dre_bad_options(capsys, no_long_work, args, fragments):
    sim_err(capsys, args, *fragments)


def test_sim_dre_frames_folder_too_short(tmp_path, capsys, no_long_work):
    """A 3-frame .npy with --frames 4 used to run 3 frames without a word."""
    import numpy as np

    npy = tmp_path / "three.npy"
    np.save(npy, np.zeros((3, 16, 16, 3), dtype=np.uint8))
    sim_err(capsys, ["--frames-folder", str(npy)], "--frames=4", "holds only 3 frames")


def test_sim_dre_out_unwritable_fails_first(capsys, no_long_work):
    """7: --out /proc/nope/x.json ran the whole simulation, then failed in cocotb."""
    sim_err(capsys, ["--out", "/proc/nope/x.json"], "--out /proc/nope/x.json", "cannot")


def test_sim_dre_bad_vrex_seed(capsys, monkeypatch, no_long_work):
    """8: VREX_SEED=abc gave a ValueError traceback."""
    monkeypatch.setenv("VREX_SEED", "abc")
    sim_err(capsys, [], "VREX_SEED='abc' is not an integer")


def test_sim_dre_vrex_seed_is_read(monkeypatch):
    monkeypatch.setenv("VREX_SEED", "0x10")
    assert sim_dre.seed_from_env() == 16
    monkeypatch.delenv("VREX_SEED")
    assert sim_dre.seed_from_env() == 1


def test_sim_dre_simulator_missing(capsys, monkeypatch, no_long_work):
    """9: SIM=icarus without iverilog ended in a ToolMissing traceback after the golden model."""
    real = toolenv.require

    def require(tool):
        if tool == "iverilog":
            raise toolenv.ToolMissing("required tool 'iverilog' not found; install: apt-get")
        return real(tool)

    monkeypatch.setattr(toolenv, "require", require)
    monkeypatch.setenv("SIM", "icarus")
    sim_err(capsys, [], "iverilog", "not found")


def test_sim_dre_unknown_simulator(capsys, monkeypatch, no_long_work):
    monkeypatch.setenv("SIM", "questa")
    sim_err(capsys, [], "SIM='questa'", "verilator")


@pytest.mark.parametrize("value", ["fast", "-O2", "4"])
def test_sim_dre_bad_sim_opt(capsys, monkeypatch, no_long_work, value):
    monkeypatch.setenv("SIM_OPT", value)
    sim_err(capsys, [], f"SIM_OPT={value!r}", "0, 1, 2, 3, s")


def test_runner_sim_opt_names_the_build_and_the_make_flag(tmp_path, monkeypatch):
    """Each optimisation level builds in its own directory (a stale object of another level is
    never linked) and reaches Verilator's makefile as OPT_FAST; an earlier level's flag is
    replaced, not appended to."""
    import verif.runner as runner

    class Stop(Exception):
        pass

    flags = []

    def get_runner(sim):
        flags.append(os.environ["MAKEFLAGS"])
        raise Stop

    monkeypatch.setattr(runner, "get_runner", get_runner)
    monkeypatch.setattr(runner.toolenv, "require", lambda tool: None)
    monkeypatch.setenv("MAKEFLAGS", "-j2 OPT_FAST=-O3")
    for level in ("s", "0"):
        monkeypatch.setenv("SIM_OPT", level)
        with pytest.raises(Stop):
            runner.run(_Tiny(), "tiny", "verif.tb_dre", sim="verilator", build_root=tmp_path)
    dir_s, dir_0 = sorted(p.name for p in tmp_path.iterdir())
    assert dir_s.startswith("tiny-verilator-") and dir_0 == f"{dir_s}-O0"
    flags_s, flags_0 = flags
    assert flags_s.split().count("OPT_FAST=-Os") == 1 and "OPT_FAST=-O3" not in flags_s
    assert flags_0.split().count("OPT_FAST=-O0") == 1 and "-Os" not in flags_0


def test_sim_dre_good_options_reach_the_golden_model(tmp_path, monkeypatch):
    """The checks do not reject what the regression runs (and fill in the defaults)."""
    seen = {}

    def stop(cfg, args, log=print):
        seen.update(vars(args))
        raise sim_dre.ConfigError("stop here")

    monkeypatch.setattr(sim_dre, "build_spec", stop)
    out = tmp_path / "deep" / "s.json"
    rc = sim_dre.main([*SMALL, "--grid", "2x3", "--rule", "v1", "--out", str(out)])
    assert rc == 2 and seen["k_max"] == 4 and seen["k_min"] == 1 and seen["margin"] == 3.0
    assert not out.exists()  # the early write check leaves nothing behind


@pytest.mark.parametrize(
    "args, score, raw_max",
    [
        ([], sim_dre.DEFAULT_SCORE, sim_dre.DEFAULT_SCORE == "max"),
        (["--score", "soft"], "soft", False),
        (["--score", "norm", "--no-exit"], "norm", False),
        (["--score", "max"], "max", True),
        (["--raw-max"], "max", True),  # the old spelling of --score max
        (["--raw-max", "--score", "max"], "max", True),
    ],
)
def test_sim_dre_score_reaches_the_golden_model(monkeypatch, args, score, raw_max):
    """--score (and its alias --raw-max) resolve to one score before the golden model runs."""
    seen = {}

    def stop(cfg, args, log=print):
        seen.update(vars(args), rule_name=sim_dre.rule_name(args, 123))
        raise sim_dre.ConfigError("stop here")

    monkeypatch.setattr(sim_dre, "build_spec", stop)
    assert sim_dre.main([*SMALL, "--grid", "2x3", *args]) == 2
    assert (seen["score"], seen["raw_max"]) == (score, raw_max)
    words = {"soft": "soft score (gain 123)", "norm": "normalised max", "max": "raw max"}
    assert seen["rule_name"] == f"v2, {words[score]}"


# ---- the integer reference ----------------------------------------------------------------
def test_dreref_rejects_float_keys():
    """10: DRERef.add_frame truncated float keys (0.5 -> 0) while retrieve rejected floats."""
    import numpy as np

    cfg = DREConfig(d=4, lanes=4, n_max=8, k_cap=2, grid_max=4)
    regs = Registers(grid_w=2, grid_h=1, tau_t=128, tau_s=128, table_size=8, k_max=2)
    ref = DRERef(cfg, regs)
    for bad in ([[0.5, 2, 3, 4], [0, 1, 0, 1]], np.zeros((2, 4))):
        with pytest.raises(ValueError, match="keys must hold integers"):
            ref.add_frame(bad)
    assert ref.n_clusters == 0  # nothing was clustered
    ids, _status = ref.add_frame(np.array([[1, 2, 3, 4], [0, 1, 0, 1]]))
    assert len(ids) == 2 and ref.n_clusters >= 1


# ---- make sim output: compile lines hidden, waveforms announced ----------------------------
def test_long_run_with_waves_warns_first(capsys, monkeypatch):
    """WAVES=1 on a long run prints the expected dump size before the build starts."""
    import verif.runner

    def stop(component, *_a, **_k):
        component._MustUse__silence = True  # built, deliberately not simulated
        raise verif.runner.SimulationFailed("stopped by the test")

    monkeypatch.setattr(verif.runner, "run", stop)
    monkeypatch.setenv("WAVES", "1")
    sim_dre.main([*SMALL, "--grid", "2x3", "--frames", "5"])
    out = capsys.readouterr().out
    warn = out.index("warning: WAVES=1 on 5 frames")
    assert "GB" in out[warn:] and warn < out.index("building and running")
    monkeypatch.setenv("WAVES", "0")
    sim_dre.main([*SMALL, "--grid", "2x3", "--frames", "5"])
    assert "warning: WAVES" not in capsys.readouterr().out


def test_runner_hides_compile_output_unless_verbose(tmp_path, monkeypatch):
    """The simulator build writes to build.log (VERBOSE=1: to the terminal); a failed build
    raises SimulationFailed with the end of that log."""
    import logging

    import verif.runner as runner

    seen = {}

    class FakeRunner:
        log = logging.getLogger("fake-runner")

        def build(self, **kw):
            seen.update(kw)
            if kw["log_file"]:
                kw["log_file"].write_text("c++ -O3 ...\nerror: the compiler failed here\n")
            raise RuntimeError("Command failed with return code: 2")

    monkeypatch.setattr(runner, "get_runner", lambda sim: FakeRunner())
    monkeypatch.delenv("VERBOSE", raising=False)
    with pytest.raises(runner.SimulationFailed, match="build failed") as exc:
        runner.run(_Tiny(), "tiny", "verif.tb_dre", build_root=tmp_path)
    assert seen["verbose"] is False and seen["log_file"].name == "build.log"
    assert "the compiler failed here" in str(exc.value)
    monkeypatch.setenv("VERBOSE", "1")
    with pytest.raises(runner.SimulationFailed):
        runner.run(_Tiny(), "tiny", "verif.tb_dre", build_root=tmp_path)
    assert seen["verbose"] is True and seen["log_file"] is None


def test_error_trailers_never_pass(tmp_path, capsys, monkeypatch):
    """5: a run whose retrievals (other than the N = 0 check) all end in error trailers is
    FAILED even when the RTL matches the reference bit for bit."""
    import verif.runner

    real_build_spec = sim_dre.build_spec

    def build_spec(cfg, args, log=print):
        spec, golden = real_build_spec(cfg, args, log)
        for f in spec["frames"]:
            for q in f["queries"]:
                q["records"], q["planes_read"], q["error"] = [], 0, 1 << 3  # as k_max > k_cap
        return spec, golden

    def fake_run(component, name, module, *, extra_env, **_k):
        """The RTL 'agrees' with every expectation: a summary with no mismatch."""
        component._MustUse__silence = True
        spec = json.loads(Path(extra_env["VREX_DRE"][1:]).read_text())
        n = 1 + sum(len(f["queries"]) for f in spec["frames"])
        frames = [{"cycles": 10, "tokens": len(f["keys"]), "queries": 2} for f in spec["frames"]]
        summary = {"frames": frames, "assignments": 6, "retrievals": n, "mismatches": 0}
        summary |= {"retrieval_cycles": [1] * n, "sim_cycles": 100, "wall_s": 1.0}
        with open(spec["out"], "w") as fh:
            json.dump(summary, fh)

    monkeypatch.setattr(sim_dre, "build_spec", build_spec)
    monkeypatch.setattr(verif.runner, "run", fake_run)
    args = [*SMALL, "--grid", "2x3", "--frames", "2", "--out", str(tmp_path / "s.json")]
    assert sim_dre.main(args) == 1
    cap = capsys.readouterr()
    assert "PASS" not in cap.out and "4 retrievals ended in an error trailer" in cap.err
    assert "retrievals (incl. 5 error checks)" in cap.out


def test_pytest_rejects_a_malformed_vrex_seed():
    """``VREX_SEED=abc make test``: one usage error, no traceback, before any test runs."""
    env = {**os.environ, "VREX_SEED": "abc"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_quant.py"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "VREX_SEED='abc' must be a non-negative integer" in out
    assert "Traceback" not in out
