"""The README's figures are what the current commit prints (``make regress``).

* the ``make sim`` table (every row but the two that measure this machine's speed) against a
  fresh ``python -m verif.sim_dre`` run with the README's defaults;
* the golden-model row "synthetic, seed 0" (recall of ReSV / ReKV / oracle at three budgets and
  the output errors at 980) against a fresh ``python -m model.bench`` run.

Both are long (minutes), hence the ``regress`` marker.  The default run checks only that the
README still has the blocks these tests read, so that an edit cannot silently disable them.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SIM_MARK = "<!-- make-sim-table: python -m verif.sim_dre -->"
BENCH_ROW = "| synthetic, seed 0 |"
#: rows that measure the machine, not the design
MACHINE_ROWS = ("simulated cycles per wall second", "wall time")


def readme_sim_table() -> list[str]:
    text = README.read_text()
    assert SIM_MARK in text, f"README.md lost the marker {SIM_MARK!r}"
    block = text.split(SIM_MARK, 1)[1].split("```", 2)[1]
    return table_rows(block)


def table_rows(text: str) -> list[str]:
    rows = []
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| quantity"):
            continue
        if any(line[2:].startswith(m) for m in MACHINE_ROWS):
            continue
        rows.append(" ".join(line.split()))
    return rows


def readme_bench_row() -> list[float]:
    line = next((x for x in README.read_text().splitlines() if x.startswith(BENCH_ROW)), None)
    assert line is not None, f"README.md lost the row {BENCH_ROW!r}"
    return [float(x) for x in re.findall(r"\d+\.\d+", line)]


def test_readme_has_the_checked_blocks():
    assert len(readme_sim_table()) >= 10
    assert len(readme_bench_row()) == 11  # 3 budgets x 3 policies + 2 errors


@pytest.mark.regress
def test_readme_make_sim_table_is_current():
    run = subprocess.run(
        [sys.executable, "-m", "verif.sim_dre"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert table_rows(run.stdout) == readme_sim_table()


@pytest.mark.regress
def test_readme_golden_model_row_is_current(tmp_path):
    out = tmp_path / "bench.csv"
    cmd = [sys.executable, "-m", "model.bench", "--budgets", "392,980,2940"]
    cmd += ["--video", "synthetic", "--seed", "0", "--policies", "rekv,resv,oracle"]
    run = subprocess.run(
        [*cmd, "--csv", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=3600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {(r["policy"], int(r["budget"])): r for r in csv.DictReader(out.open())}
    want = []
    for budget in (392, 980, 2940):
        want += [round(float(rows[(p, budget)]["recall"]), 3) for p in ("resv", "rekv", "oracle")]
    want += [round(float(rows[(p, 980)]["out_err"]), 3) for p in ("resv", "rekv")]
    assert readme_bench_row() == want


def test_links_resolve_inside_the_repository():
    """Every relative Markdown link of README.md and docs/ names a file of the repository (a
    clone has nothing outside it), and no page points outside the repository."""
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    bad = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://|mailto:|#", target):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists() or (ROOT not in path.parents and path != ROOT):
                bad.append(f"{page.relative_to(ROOT)}: {target}")
    assert not bad, "links that do not resolve inside the repository:\n" + "\n".join(bad)
