"""``python -m hw.export --fusesoc DIR``: a FuseSoC core whose lint target FuseSoC runs, offline.

FuseSoC (pinned in pyproject.toml) reads only the core written here (``--cores-root``), with
``HOME`` in a temporary folder so that no user configuration or library is read and nothing is
fetched.  The lint target runs Verilator (``--lint-only -Wall`` with verif/waivers.vlt) through
edalize; the same core without the waiver file must fail, so the target really lints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hw import export as hw_export
from verif import toolenv

SETS = ["d=16", "lanes=4", "n_max=16", "k_cap=4", "grid_max=16"]


def fusesoc(cores: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "fusesoc"
    assert exe.exists(), "fusesoc is not installed in the venv: run `make setup`"
    env = toolenv.tool_env()
    env["HOME"] = str(work)
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("XDG_DATA_HOME", None)
    return subprocess.run(
        [str(exe), "--cores-root", str(cores), "run", "--build-root", str(work / "build"), *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def core_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fusesoc")
    args = ["--out", str(d / "out" / "vrex_dre.v"), "--fusesoc", str(d / "core")]
    for s in SETS:
        args += ["--set", s]
    assert hw_export.main(args) == 0
    return d / "core"


def test_core_contents(core_dir):
    names = sorted(p.name for p in core_dir.iterdir())
    assert names == ["vrex_dre.core", "vrex_dre.json", "vrex_dre.rdl", "vrex_dre.v", "waivers.vlt"]
    core = (core_dir / "vrex_dre.core").read_text()
    assert core.startswith("CAPI=2:\n") and "name: vrex:ip:vrex_dre:" in core
    assert (core_dir / "waivers.vlt").read_bytes() == hw_export.WAIVERS.read_bytes()


def test_fusesoc_lint_target_runs_offline(core_dir, tmp_path):
    proc = fusesoc(core_dir, tmp_path, "--target", "lint", "vrex:ip:vrex_dre")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    vc = next((tmp_path / "build").rglob("*.vc")).read_text()
    assert "waivers.vlt" in vc and "vrex_dre.v" in vc and "--top-module vrex_dre" in vc


def test_fusesoc_lint_fails_without_the_waivers(core_dir, tmp_path):
    """The lint target can fail: Amaranth's output has warnings the waivers explain."""
    bare = tmp_path / "bare"
    shutil.copytree(core_dir, bare)
    core = bare / "vrex_dre.core"
    core.write_text(core.read_text().replace("filesets: [waivers, rtl]", "filesets: [rtl]"))
    work = tmp_path / "work"
    work.mkdir()
    proc = fusesoc(bare, work, "--target", "lint", "vrex:ip:vrex_dre")
    assert proc.returncode != 0
    assert "%Warning" in proc.stdout + proc.stderr


def test_fusesoc_dir_under_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    out = tmp_path / "x.v"
    assert hw_export.main(["--out", str(out), "--fusesoc", str(tmp_path / "f" / "core")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --fusesoc") and "is a file" in err and not out.exists()
    assert os.listdir(tmp_path) == ["f"]
