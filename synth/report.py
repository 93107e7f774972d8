"""Area and Fmax report of the DRE: ``python -m synth.report --out docs/synth.md``.

For every configuration (``--configs``, default :data:`synth.designs.DEFAULT_CONFIGS`) and every
design (``--designs``; default: the whole DRE if ``hw/dre.py`` exists, else each unit that
exists), it runs

* the generic Yosys flow (:mod:`synth.yosys_flow`): cells, flip-flops, memory bits and NAND2
  gate equivalents, total and per unit (direct submodules);
* unless ``--quick``, the ECP5 flow (:mod:`synth.ecp5_flow`): LUT4, FF, DSP, BRAM and Fmax
  after nextpnr place-and-route (``--no-route``: placed figures and nextpnr's estimate only; a
  route still running after ``--timeout`` seconds is stopped and reported the same way, with
  the arcs it had left, so a congested design gives its placed figures in bounded time;
  ``--seed`` sets nextpnr's placement seed, 1 by default, ``--speed`` the device's speed grade,
  6 by default);

(``--jobs N``: N of these runs at a time, each in its own work folder; the figures do not
depend on N) and writes one Markdown page; a hand-written part at the end of an existing page
(from the line :data:`KEEP_MARKER` on) is kept.  Progress is printed as each step runs.  A design
that exists but fails to import or elaborate, or a tool that fails, makes the command exit
non-zero (after the page is written, with the failure in it), so ``make synth`` never reports a
partial result as complete.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from model.dre.config import ConfigError, DREConfig
from synth import designs as registry
from synth import gates
from synth.ecp5_flow import (
    ELABORATION,
    RESOURCES,
    SPEED_GRADES,
    Ecp5Result,
    nextpnr_version,
    synth_ecp5,
)
from synth.yosys_flow import (
    ABC_SCRIPT,
    Area,
    GenericResult,
    ToolError,
    env_summary,
    synth_generic,
)

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """Results of one design in one configuration."""

    config: str
    cfg: DREConfig
    design: str
    generic: GenericResult | None = None
    ecp5: Ecp5Result | None = None
    errors: list[str] = field(default_factory=list)


def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def _util(e: Ecp5Result, key: str) -> str:
    return f"{e.used[key]:,}"


def _commit() -> str:
    """The git commit the RTL came from (``+dirty`` if hw/ has uncommitted changes)."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "hw", "model"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"`{head}`" + (" +dirty" if dirty else "")


def _summary_table(rows: list[Row], quick: bool) -> list[str]:
    head = [
        "config",
        "design",
        "cells",
        "FF",
        "logic GE",
        "memory bits",
        "memory GE (SRAM)",
        "total GE (SRAM)",
        "total GE (flop memories)",
    ]
    if not quick:
        head += [RESOURCES[k] for k in RESOURCES] + ["target MHz", "Fmax MHz"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in rows:
        cells = [r.config, f"`{r.design}`"]
        if r.generic is not None:
            a = r.generic.total
            cells += [
                _fmt(a.n_cells),
                _fmt(a.n_ff),
                _fmt(a.ge_logic),
                _fmt(a.mem_bits),
                _fmt(a.ge_mem_sram),
                _fmt(a.ge_total_sram),
                _fmt(a.ge_total_flops),
            ]
        else:
            cells += ["failed"] + ["-"] * 6
        if not quick:
            if r.ecp5 is not None and not r.ecp5.placed:
                cells += [f"{_util(r.ecp5, k)}*" for k in RESOURCES]
                cells += [f"{r.ecp5.target_mhz:g}", "does not fit*"]
            elif r.ecp5 is not None and not r.ecp5.routed:
                cells += [_util(r.ecp5, k) for k in RESOURCES]
                f = r.ecp5.fmax_estimate
                est = "" if f is None else f"placed, est. {f:.1f}, "
                cells += [f"{r.ecp5.target_mhz:g}", f"{est}not routed\u2020"]
            elif r.ecp5 is not None:
                cells += [_util(r.ecp5, k) for k in RESOURCES]
                f = r.ecp5.fmax_mhz
                cells += [f"{r.ecp5.target_mhz:g}", "no clock" if f is None else f"{f:.1f}"]
            else:
                cells += ["failed" if r.errors else "-"] + ["-"] * (len(RESOURCES) + 1)
        out.append("| " + " | ".join(cells) + " |")
    return out


def _unit_table(g: GenericResult) -> list[str]:
    total = g.total.ge_total_sram or 1.0
    out = [
        "| unit | cells | FF | FF GE | logic GE (incl. FF) | memory bits | memory GE (SRAM) "
        "| total GE (SRAM) | share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, a in g.units():
        out.append(
            f"| `{label}` | {_fmt(a.n_cells)} | {_fmt(a.n_ff)} | {_fmt(a.ge_ff)} | "
            f"{_fmt(a.ge_logic)} | {_fmt(a.mem_bits)} | {_fmt(a.ge_mem_sram)} | "
            f"{_fmt(a.ge_total_sram)} | {100 * a.ge_total_sram / total:.1f} % |"
        )
    return out


def _memory_table(a: Area) -> list[str]:
    out = [
        "| module | memory | depth x width | bits | read ports (clocked) | write ports "
        "| GE as SRAM | GE as flops |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for m in a.memories:
        out.append(
            f"| `{m.module}` | `{m.name}` | {m.depth} x {m.width} | {_fmt(m.bits)} | "
            f"{m.rd_ports} ({m.rd_clocked}) | {m.wr_ports} | {_fmt(m.ge_sram)} | "
            f"{_fmt(m.ge_flops)} |"
        )
    return out


#: A line in the page from which on the text is hand-written: :func:`main` regenerates the page
#: above it and keeps everything from it on (tables of runs made by hand, before/after notes).
KEEP_MARKER = (
    "<!-- Hand-written from here on: synth/report.py keeps this part when it rewrites the page. -->"
)


def kept_part(path: Path) -> str:
    """The hand-written tail of an existing page (from :data:`KEEP_MARKER` on), else ``""``."""
    old = path.read_text() if path.exists() else ""
    at = old.find(KEEP_MARKER)
    return "" if at < 0 else "\n" + old[at:]


def _folded(e: Ecp5Result) -> list[str]:
    """What the flow moved into the hard blocks
    (:func:`synth.ecp5_flow.absorb_bram_output_registers`,
    :func:`synth.ecp5_flow.absorb_dsp_registers`): a combinational MULT18X18D costs ~3.9 ns of
    every path through it, so the count of those left is the first thing to read when a design
    misses its clock."""
    parts = []
    if e.synth_cells.get("DP16KD"):
        parts.append(f"block-RAM output registers: {e.bram_outregs:,}")
    n = e.synth_cells.get("MULT18X18D", 0)
    if n:
        parts.append(
            f"MULT18X18D with their own input and output registers: {e.dsp_regs:,} of {n:,} "
            f"({n - e.dsp_regs:,} combinational)"
        )
    return [f"Folded into the hard blocks by the flow: {'; '.join(parts)}."] if parts else []


def render(rows: list[Row], meta: dict[str, str], quick: bool) -> str:
    """The Markdown page for ``rows`` (pure: no tool is run here)."""
    lines = [
        "# DRE synthesis: area and Fmax",
        "",
        "<!-- Generated by synth/report.py; do not edit by hand. -->",
        f"Generated by `{meta['command']}` on {meta['date']}, "
        f"from commit {meta.get('commit', 'unknown')}.",
        "",
        f"Tools: {meta['yosys']}; nextpnr-ecp5 {meta.get('nextpnr', 'not run')}; "
        f"Amaranth {meta['amaranth']}; host with {meta['cpus']} CPUs.",
        "",
        "## Summary",
        "",
        "Generic synthesis: Yosys `synth -booth`, flip-flops legalised to plain DFF "
        "(enable and sync reset become gates), `abc -g " + gates.ABC_GATES + "` with the "
        "light script `" + ABC_SCRIPT + "`, hierarchy "
        "kept.  GE = NAND2 gate equivalents from the Nangate 45 nm X1 cell areas "
        "(table below and `synth/gates.py`).  Memories are kept out of the gate count and "
        f"reported in bits; *SRAM* counts {gates.SRAM_GE_PER_BIT:.3f} GE/bit, *flop memories* "
        "counts each table as a flip-flop array (DFF + MUX2 per bit + read MUX trees).",
    ]
    if not quick:
        done = [r.ecp5 for r in rows if r.ecp5 is not None]
        if done:
            e = done[0]
            targets = sorted({x.target_mhz for x in done})
            one = len(targets) == 1
            lines.append(
                f"ECP5: `synth_ecp5`, then nextpnr-ecp5 `--{e.device} --package {e.package} "
                f"--speed {e.speed} --out-of-context "
                f"--freq {f'{targets[0]:g}' if one else 'F'} --seed {e.seed}`"
                + ("" if one else " (F: the row's clock target, the *target MHz* column)")
                + "; resources as placed "
                "(LUT4 = TRELLIS_COMB slices incl. carry and LUT-RAM logic, DSP = MULT18X18D, "
                "BRAM = DP16KD, LUTRAM = TRELLIS_RAMW write ports), Fmax of the slowest clock, "
                "register to register."
            )
    lines += ["", *_summary_table(rows, quick), ""]
    if any(r.ecp5 is not None and not r.ecp5.placed for r in rows):
        lines += [
            "\\* does not fit the device: nextpnr ran out of a resource (see the design's "
            "section); the figures are Yosys's `synth_ecp5` mapping before placement.",
            "",
        ]
    if any(r.ecp5 is not None and r.ecp5.placed and not r.ecp5.routed for r in rows):
        lines += [
            "\u2020 placed but not routed: nextpnr was stopped after placement (`--no-route`) "
            "or its route did not finish within the time limit (`--timeout`; see the "
            "design's section for the arcs left).  Resources are as placed; *est.* is "
            "nextpnr's Fmax estimate after placement, which routing usually lowers.",
            "",
        ]
    failures = [(r, e) for r in rows for e in r.errors]
    if failures:
        lines += ["## Failures", ""]
        lines += [f"- {r.config} / `{r.design}`: {e}" for r, e in failures]
        lines.append("")
    lines += ["## Configurations", "", "| config | " + " | ".join(DREConfig.names()) + " |"]
    lines.append("|---|" + "---:|" * len(DREConfig.names()))
    seen = []
    for r in rows:
        if r.config not in seen:
            seen.append(r.config)
            vals = " | ".join(str(v) for v in r.cfg.to_dict().values())
            lines.append(f"| {r.config} | {vals} |")
    lines.append("")
    for r in rows:
        if r.generic is None:
            continue
        g = r.generic
        lines += [f"## {r.config} / `{r.design}`", ""]
        lines += [
            "Area per unit (direct submodules of the top; GE of a unit includes its "
            "own submodules):",
            "",
        ]
        lines += [*_unit_table(g), ""]
        if g.total.memories:
            lines += ["Memories:", "", *_memory_table(g.total), ""]
        by_type = ", ".join(f"`{c}` {n:,}" for c, n in sorted(g.total.cells.items()))
        lines += [f"Generic cells: {by_type}.", ""]
        if r.ecp5 is not None and not r.ecp5.placed:
            e = r.ecp5
            synth = ", ".join(f"{c} {n:,}" for c, n in sorted(e.synth_cells.items()))
            lines += [
                f"ECP5 ({e.device}): **does not fit**; nextpnr: `{e.pnr_error.strip()}`.  "
                f"Yosys `synth_ecp5`{'' if e.abc9 else ' (LUTs by classic ABC)'} "
                f"mapped it to: {synth}.",
                "",
            ]
        elif r.ecp5 is not None:
            e = r.ecp5
            synth = ", ".join(f"{c} {n:,}" for c, n in sorted(e.synth_cells.items()))
            avail = ", ".join(f"{RESOURCES[k]} {e.used[k]:,}/{e.available[k]:,}" for k in RESOURCES)
            lines += [f"ECP5 ({e.device}) placed: {avail}.  Yosys cells: {synth}."]
            lines += _folded(e)
            if not e.routed:
                if e.arcs is None:
                    how = "nextpnr stopped after placement"
                else:
                    how = (
                        f"the route did not finish in the time limit: {e.arcs[1]:,} of "
                        f"{e.arcs[0]:,} arcs unrouted when it was stopped"
                    )
                est = "none" if e.fmax_estimate is None else f"{e.fmax_estimate:.1f} MHz"
                lines.append(
                    f"**Not routed** ({how}); nextpnr's Fmax estimate after placement: {est}."
                )
            if not e.abc9:
                lines.append(
                    "LUTs mapped with classic `abc -lut 4` (`--no-abc9`, or ABC9 crashed on this "
                    "design)."
                )
            clocks = ", ".join(f"`{c}` {f:.1f} MHz" for c, f in sorted(e.fmax.items()))
            if clocks:
                lines.append(f"Fmax: {clocks}.")
            if e.critical_path:
                lines.append(f"Critical path: `{e.critical_path[0]}` -> `{e.critical_path[1]}`.")
            lines.append("")
        secs = f"generic {g.seconds:.1f} s"
        if r.ecp5 is not None:
            secs += f", synth_ecp5 {r.ecp5.seconds_synth:.1f} s, nextpnr {r.ecp5.seconds_pnr:.1f} s"
        lines += [f"Run time: {secs}.", ""]
    lines += [
        "## Area table (NAND2 equivalents)",
        "",
        "Source: Nangate 45 nm Open Cell Library (FreePDK45), "
        "`NangateOpenCellLibrary_typical.lib`, X1 cell areas; 1 GE = NAND2_X1 = 0.798 um^2.  "
        "SRAM: 6T bitcell 0.346 um^2 (Intel 45 nm, "
        f"IEDM 2007) at an assumed {gates.SRAM_ARRAY_EFFICIENCY:.0%} array efficiency.  "
        "Not counted: wiring, clock tree, fan-out buffering, placement utilisation.  Details and "
        "assumptions: `synth/gates.py`.",
        "",
        gates.table_markdown(),
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class FlowOptions:
    """The tool arguments shared by every run of one report (the command line's)."""

    quick: bool
    workdir: Path
    freq: float | None
    device: str
    package: str
    timeout: float
    abc9: bool = True
    route: bool = True
    seed: int = 1
    speed: int = 6


def _run_one(label: str, cfg: DREConfig, design: registry.Design, o: FlowOptions) -> Row:
    """One design in one configuration: its :class:`Row` (tool failures recorded in it)."""
    row = Row(config=label, cfg=cfg, design=design.name)
    where = o.workdir / label.replace("=", "").replace(",", "_") / design.name
    tag = f"[synth] {label} / {design.name}"
    try:
        print(f"{tag}: elaborating", flush=True)
        with ELABORATION:
            text = design.verilog(cfg)
            component = None if o.quick else design.build(cfg)
        print(f"{tag}: generic Yosys flow ...", flush=True)
        row.generic = synth_generic(text, design.name, where / "generic", o.timeout)
        a = row.generic.total
        print(
            f"{tag}: generic done in {row.generic.seconds:.1f} s: {a.n_cells:,} cells, "
            f"{a.n_ff:,} FF, {a.ge_logic:,.0f} GE logic, {a.mem_bits:,} memory bits",
            flush=True,
        )
        if not o.quick:
            print(f"{tag}: synth_ecp5 + nextpnr-ecp5 ...", flush=True)
            row.ecp5 = e = synth_ecp5(
                component,
                design.name,
                where / "ecp5",
                device=o.device,
                package=o.package,
                freq_mhz=registry.target_mhz(design.name) if o.freq is None else o.freq,
                timeout=o.timeout,
                abc9=o.abc9,
                route=o.route,
                seed=o.seed,
                speed=o.speed,
            )
            f = e.fmax_mhz if e.routed else e.fmax_estimate
            if not e.placed:
                print(f"{tag}: ECP5: does not fit ({e.pnr_error.strip()})", flush=True)
            print(
                f"{tag}: ECP5 done in {e.seconds_synth + e.seconds_pnr:.1f} s: "
                + ", ".join(f"{RESOURCES[k]} {e.used[k]:,}" for k in RESOURCES)
                + (", no clock" if f is None else f", Fmax {f:.1f} MHz")
                + ("" if e.routed else " (estimate after placement; not routed)"),
                flush=True,
            )
    except (registry.DesignError, ToolError, ConfigError, gates.UnknownCell) as exc:
        print(f"{tag}: FAILED: {exc}", file=sys.stderr, flush=True)
        row.errors.append(str(exc).replace("\n", " / "))
    return row


def run(
    configs: list[tuple[str, DREConfig]],
    names: list[str] | None,
    options: FlowOptions,
    jobs: int = 1,
) -> list[Row]:
    """The rows of every configuration x design, in that order.  ``jobs > 1`` runs that many
    (configuration, design) pairs at once: the tools are subprocesses, so threads suffice (the
    Amaranth conversions take turns, :data:`synth.ecp5_flow.ELABORATION`).  Each pair has its
    own work folder and the same tool arguments, so the figures do not depend on ``jobs``; only
    the tools' run times do (they share the cores)."""
    found = registry.designs()
    chosen = registry.default_selection(found) if names is None else registry.select(found, names)
    if not chosen:
        print("[synth] no hw design exists yet: nothing to synthesise")
    pairs = [(label, cfg, design) for label, cfg in configs for design in chosen]
    if jobs <= 1 or len(pairs) <= 1:
        return [_run_one(*p, options) for p in pairs]
    print(f"[synth] {len(pairs)} runs, {jobs} at a time", flush=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda p: _run_one(*p, options), pairs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "synth.md")
    ap.add_argument("--quick", action="store_true", help="generic synthesis only (no ECP5)")
    ap.add_argument(
        "--configs",
        nargs="+",
        default=list(registry.DEFAULT_CONFIGS),
        help=f"named ({', '.join(registry.CONFIGS)}) or NAME=VALUE[,NAME=VALUE...] configs",
    )
    ap.add_argument(
        "--designs", nargs="+", default=None, help="design names (default: dre, or all units)"
    )
    ap.add_argument(
        "--freq",
        type=float,
        default=None,
        help="ECP5 clock target, MHz, for every design (default: each design's own, "
        "synth.designs.TARGET_MHZ: token_selector 150, the others 100)",
    )
    ap.add_argument("--device", default="85k", help="nextpnr-ecp5 device flag, e.g. 25k, 85k")
    ap.add_argument("--package", default="CABGA381")
    ap.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="seconds per tool run; a route still running then is stopped and its design "
        "reported as placed, not routed",
    )
    ap.add_argument(
        "--no-route",
        action="store_true",
        help="stop nextpnr after placement (placed resources and Fmax estimate only)",
    )
    ap.add_argument(
        "--no-abc9",
        action="store_true",
        help="map ECP5 LUTs with classic abc (faster on the big designs than ABC9)",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=1,
        help="nextpnr-ecp5 placement seed (default 1); on the congested units the routed Fmax "
        "moves by up to 14 %% between seeds (docs/cluster.md), so compare changes at equal "
        "seeds, or over several",
    )
    ap.add_argument(
        "--speed",
        type=int,
        default=6,
        choices=SPEED_GRADES,
        help="the ECP5's speed grade (default 6, the slowest: the ULX3S's part; 8 the fastest)",
    )
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "synth")
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="(configuration, design) runs at a time (default 1); each nextpnr run uses one "
        "core, so at most the machine's cores; the figures do not depend on it",
    )
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error(f"--seed must be 0 or more, not {args.seed}")
    if args.jobs < 1:
        ap.error(f"--jobs must be 1 or more, not {args.jobs}")
    argv_used = sys.argv[1:] if argv is None else argv
    try:
        configs = [registry.parse_config(s) for s in args.configs]
        t0 = time.monotonic()
        print(
            "[synth] tool versions (the first YoWASP call compiles WebAssembly, ~40 s) ...",
            flush=True,
        )
        meta = env_summary()
        # the commit the RTL is elaborated from: read now, not when the report is written
        # (a whole-DRE route takes an hour, and the checkout may move on meanwhile)
        meta["commit"] = _commit()
        if not args.quick:
            meta["nextpnr"] = nextpnr_version()
        options = FlowOptions(
            quick=args.quick,
            workdir=args.workdir,
            freq=args.freq,
            device=args.device,
            package=args.package,
            timeout=args.timeout,
            abc9=not args.no_abc9,
            route=not args.no_route,
            seed=args.seed,
            speed=args.speed,
        )
        rows = run(configs, args.designs, options, jobs=args.jobs)
    except (ConfigError, registry.DesignError, ToolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    meta["command"] = " ".join(["python -m synth.report", *map(shlex.quote, argv_used)])
    meta["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    page = render(rows, meta, args.quick)
    args.out.write_text(page + kept_part(args.out))
    n_fail = sum(bool(r.errors) for r in rows)
    print(
        f"[synth] wrote {args.out} ({len(rows)} runs, {n_fail} failed) "
        f"in {time.monotonic() - t0:.0f} s"
    )
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
