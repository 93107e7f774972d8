"""The AXI-wrapped DRE (``hw/axi_dre.py``, ``python -m hw.export --bus axi``).

A short co-simulation in Verilator: cocotbext-axi (AxiLiteMaster, AxiStreamSource / Sink, with
random pauses on every stream) drives the golden model's integer stream into the wrapper and
checks every assignment, selection, trailer and counter against :class:`model.dre.top.DRERef`
(``verif/tb_axi.py``); a deliberately wrong expectation must make it fail.
"""

from __future__ import annotations

import json

import pytest

from hw import export as hw_export
from hw.axi_dre import AXIDRE, stream_ports
from model.dre.config import ConfigError, DREConfig
from verif import sim_dre, toolenv
from verif.runner import SimulationFailed, run

SMALL = DREConfig(d=16, lanes=4, bq=6, bk=6, n_max=16, k_cap=4, grid_max=36)


def spec_for(tmp_path, seed, *extra) -> dict:
    """The spec of a short run; the normalised max (``--score norm``), so that `make test`
    co-simulates it as well as the soft score (the default, ``tests/test_dre.py``)."""
    args = sim_dre.parse_args(
        [
            *("--frames", "3", "--grid", "5x6", "--queries", "3", "--budget", "20"),
            *("--score", "norm"),
            *("--table-size", "12", "--clear-at", "2", "--seed", str(seed), *extra),
        ]
    )
    sim_dre.check_args(SMALL, args)
    spec, _ = sim_dre.build_spec(SMALL, args, log=lambda _: None)
    spec["stall"], spec["gap"] = 0.3, 0.2
    return spec


def simulate(tmp_path, spec, testcase=None):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    toolenv.apply()
    run(
        AXIDRE(SMALL),
        "axi_dre",
        "verif.tb_axi",
        extra_env={"VREX_AXI": f"@{path}"},
        testcase=testcase,
        seed=spec["seed"],
    )


@pytest.mark.cocotb
def test_axi_dre_against_dreref(tmp_path, seed):
    """Registers, keys, retrievals over AXI; every beat and counter as DRERef; AXI4-Lite
    corner cases (partial write refused with SLVERR, addresses beyond the map)."""
    spec = spec_for(tmp_path, seed)
    assert any(q["records"] for f in spec["frames"] for q in f["queries"])
    simulate(tmp_path, spec)
    # the comparison can fail: one wrong expected take in the last frame
    q = spec["frames"][-1]["queries"][0]
    q["records"][0] = [q["records"][0][0], q["records"][0][1] + 1]
    with pytest.raises(SimulationFailed):
        simulate(tmp_path, spec, testcase="axi_stream")


def test_export_bus_axi_ports_and_json(tmp_path):
    out = tmp_path / "axi_dre.v"
    sets = [x for k, v in SMALL.to_dict().items() for x in ("--set", f"{k}={v}")]
    assert hw_export.main(["--bus", "axi", "--out", str(out), *sets]) == 0
    text = out.read_text()
    ports = stream_ports(SMALL)
    for prefix, _, _, tw in ports.values():
        for sig in ("tdata", "tvalid", "tready", "tlast"):
            assert f"{prefix}_{sig}" in text
        assert f"[{tw - 1}:0] {prefix}_tdata;" in text
        assert tw % 8 == 0
    for sig in ("awaddr", "wdata", "wstrb", "bresp", "araddr", "rdata", "rresp"):
        assert f"s_axil_{sig}" in text
    from verif.lint_verilog import lint_file

    res = lint_file(out, "axi_dre")  # verilator --lint-only -Wall with the project waivers
    assert res.ok, res.messages
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["bus"] == "axi"
    axis = meta["axi"]["axi4_stream"]
    for name, doc in meta["streams"].items():
        assert axis[name]["payload_bits"] == [0, doc["payload"]["width"] - 1]
        assert axis[name]["tdata_bits"] >= doc["payload"]["width"]


def test_axi_dre_rejects_bad_configs():
    with pytest.raises(ConfigError, match="n_max=1 must be >= 2"):
        AXIDRE(DREConfig(n_max=1, k_cap=1))
