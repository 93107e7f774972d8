"""The second simulator: the DRE co-simulations under Icarus Verilog 11 (``SIM=icarus``).

Icarus is an optional extra (Debian: ``apt-get install iverilog``); the co-simulations here are
skipped when ``iverilog`` is absent, with that reason in pytest's summary (``-ra``).  They need
:func:`hw.export.icarus_nudge` (see ``docs/ecosystem.md``): without it the idle combinational
outputs of Yosys' ``always @*`` blocks stay X in Icarus 11 and the run hangs.
"""

from __future__ import annotations

import json

import pytest

from hw import export as hw_export
from verif import sim_dre, toolenv

SMALL = {"d": 16, "lanes": 4, "bq": 6, "bk": 6, "n_max": 16, "k_cap": 4, "grid_max": 36}
needs_iverilog = pytest.mark.skipif(
    not toolenv.have("iverilog"),
    reason="iverilog not installed (optional second simulator: apt-get install iverilog)",
)


def small_args(tmp_path, *extra):
    args = []
    for k, v in SMALL.items():
        args += ["--set", f"{k}={v}"]
    return [*args, "--out", str(tmp_path / "summary.json"), "--sim", "icarus", *extra]


def test_icarus_nudge_finds_every_yosys_trigger(tmp_path):
    """The nudge depends on the text Yosys writes: if that changes, this fails (not a hang)."""
    out = tmp_path / "n.v"
    sets = [x for k, v in SMALL.items() for x in ("--set", f"{k}={v}")]
    assert hw_export.main(["--out", str(out), *sets, "--icarus"]) == 0
    text = out.read_text()
    modules = text.count("\nmodule ")
    triggers = text.count("reg \\$auto$verilog_backend")
    assert triggers >= 1 and text.count("initial #0 \\$auto$verilog_backend") == triggers
    assert triggers <= modules
    assert hw_export.icarus_nudge("  reg x = 0;\n") == "  reg x = 0;\n"  # nothing else touched


@needs_iverilog
@pytest.mark.cocotb
def test_icarus_short_stream_v2_with_backpressure(tmp_path, seed):
    """`make sim SIMARGS=--sim icarus` on a small DRE: gaps, stalls, a table that fills, a
    clear, table_size below n_max; every assignment, selection and counter as golden."""
    toolenv.apply()
    rc = sim_dre.main(
        small_args(
            tmp_path,
            *("--frames", "3", "--grid", "5x6", "--queries", "3", "--budget", "20"),
            *("--table-size", "12", "--clear-at", "2", "--stall", "0.3", "--gap", "0.2"),
            *("--seed", str(seed)),
        )
    )
    s = json.loads((tmp_path / "summary.json").read_text())
    assert rc == 0 and s["mismatches"] == 0
    assert s["assignments"] == 3 * 30 and s["retrievals"] == 1 + 3 * 2


@needs_iverilog
@pytest.mark.cocotb
def test_icarus_short_stream_v1(tmp_path, seed):
    toolenv.apply()
    rc = sim_dre.main(
        small_args(tmp_path, "--frames", "2", "--grid", "3x4", "--rule", "v1", "--seed", str(seed))
    )
    s = json.loads((tmp_path / "summary.json").read_text())
    assert rc == 0 and s["mismatches"] == 0 and s["retrievals"] == 1 + 2 * 2
