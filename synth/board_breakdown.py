"""Per-unit ECP5 resources of the bridged DRE (``hw.board.BridgedDRE``), Yosys only.

``python -m synth.board_breakdown [--rule v2] [--depth 3] [--workdir build/breakdown]``

The board flow of ``make bitstream`` (:func:`hw.board.script_after_synth`: ``synth_ecp5`` up to LUT
mapping, classic ``abc -lut 4``, the rest of ``synth_ecp5``), with ``-noflatten``: every Amaranth
submodule stays a Verilog module, so its cells can be counted. Without flattening Yosys cannot
optimise across unit boundaries, so the total is somewhat above the flattened board build's; the
split between units is what this is for. Prints one Markdown row per unit down to ``--depth`` (LUT4,
CCU2C, flip-flops, MULT18X18D, DP16KD, TRELLIS_DPR16X4 LUT RAM, and LUT4 + 2 CCU2C, the TRELLIS_COMB
cells they pack into), each row the unit's whole subtree. ``--flow unmap``: the board flow with
``maccmap -unmap`` (:func:`hw.board.script_after_synth`), for the comparison in ``docs/board.md``.
No place and route: nextpnr packs LUT4s and CCU2Cs (2 LUTs each) into TRELLIS_COMB.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from amaranth.back import verilog

from model.dre.config import DREConfig
from synth.yosys_flow import yosys

TOP = "bridged_dre"
COLUMNS = ("LUT4", "CCU2C", "FF", "MULT18X18D", "DP16KD", "TRELLIS_DPR16X4")


def _ff(kind: str) -> bool:
    return kind in ("TRELLIS_FF",) or kind.startswith("$_DFF") or kind.startswith("$_SDFF")


def script(top: str, flow: str = "board") -> str:
    """``flow="board"``: the flow of ``hw.board`` (:func:`hw.board.script_after_synth`);
    ``"unmap"``: the same with ``maccmap -unmap`` (adder chains on CCU2C carry chains)."""
    from hw.board import SYNTH_OPTS, script_after_synth

    unmap = flow == "unmap"
    opts = "-run begin:map_gates" if unmap else SYNTH_OPTS
    return (
        f"read_verilog -sv {top}.v\n"
        f"synth_ecp5 -noflatten -top {top} {opts}\n"
        f"{script_after_synth(top, '-noflatten', unmap_macc=unmap)}\n"
        f"tee -o {top}.stat stat\n"
        f"tee -q -o {top}.stat.json stat -json\n"
    )


def own_cells(stat: dict) -> dict[str, Counter]:
    """Cells of each module (its own, submodule instances excluded later)."""
    return {name: Counter(m.get("num_cells_by_type", {})) for name, m in stat["modules"].items()}


def subtree(cells: dict[str, Counter], mod: str, memo: dict) -> Counter:
    if mod in memo:
        return memo[mod]
    total = Counter()
    for kind, n in cells.get(mod, {}).items():
        key = kind[1:] if kind.startswith("\\") else kind
        child = next((c for c in (key, "\\" + key) if c in cells), None)
        if child is None:  # a cell, not a submodule instance
            total["FF" if _ff(key) else key] += n
            continue
        for k, v in subtree(cells, child, memo).items():
            total[k] += v * n
    memo[mod] = total
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rule", default="v2", choices=("v1", "v2"))
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--divisor", type=int, default=130)
    ap.add_argument("--workdir", default="build/breakdown")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument(
        "--flow",
        choices=("board", "unmap"),
        default="board",
        help="board: the flow of `make bitstream`; unmap: with `maccmap -unmap` (an experiment)",
    )
    args = ap.parse_args(argv)
    from hw.board import BridgedDRE

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    top = BridgedDRE(DREConfig(), args.divisor, rule=args.rule)
    (work / f"{TOP}.v").write_text(verilog.convert(top, name=TOP))
    t1 = time.monotonic()
    yosys(script(TOP, args.flow), work, TOP, args.timeout)
    t2 = time.monotonic()
    stat = json.loads((work / f"{TOP}.stat.json").read_text())
    cells = own_cells(stat)
    memo: dict = {}
    names = sorted(n.lstrip("\\") for n in cells)
    print(f"export {t1 - t0:.0f} s, yosys {t2 - t1:.0f} s")
    print("| unit | " + " | ".join(COLUMNS) + " | LUT4 + 2 CCU2C |")
    print("|---|" + "---:|" * (len(COLUMNS) + 1))
    for name in names:
        if name.count(".") > args.depth - 1:
            continue
        key = name if name in cells else "\\" + name
        c = subtree(cells, key, memo)
        comb = c.get("LUT4", 0) + 2 * c.get("CCU2C", 0)
        cols = " | ".join(f"{c.get(k, 0):,}" for k in COLUMNS)
        print(f"| `{name}` | {cols} | {comb:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
