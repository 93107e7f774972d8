"""Verilog of the DRE: ``python -m hw.export --out build/dre.v [--set d=128 --set lanes=16 ...]``.

Writes the Verilog of :class:`hw.dre.DRE` (top module ``--name``, default the file's stem, so
that file and module names agree) and,
beside it, ``<out>.json`` with the configuration and the register map (:mod:`hw.dre_regs`), so
that host software is generated from the same numbers as the RTL.  ``--config`` starts from a
JSON written by an earlier export (or any ``DREConfig`` JSON); ``--set NAME=VALUE`` overrides.
``--regmap`` prints the register map as Markdown instead.

A bad parameter name or value prints one line naming it and the valid ones, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from model.dre_config import ConfigError, DREConfig


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m hw.export", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/dre.v", help="Verilog file (default build/dre.v)")
    ap.add_argument("--name", default=None, help="top module name (default: the --out file's stem)")
    ap.add_argument("--config", default=None, metavar="JSON", help="start from this DREConfig")
    ap.add_argument("--preset", default=None, help="start from a named DREConfig (video7b, ...)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"override a parameter ({', '.join(DREConfig.names())}); repeatable",
    )
    ap.add_argument("--regmap", action="store_true", help="print the register map (Markdown)")
    ap.add_argument(
        "--rule",
        choices=("v1", "v2"),
        default="v2",
        help="retrieval rule of the selector: v2 token budget (default), v1 margin / k",
    )
    return ap.parse_args(argv)


def config_from(args) -> DREConfig:
    base = DREConfig.from_json(args.config) if args.config else DREConfig()
    if args.preset:
        from model.dre_config import preset

        base = preset(args.preset)
    return DREConfig.from_overrides(args.set, base=base)


def export(cfg: DREConfig, out: Path, name: str = "dre", rule: str = "v2") -> tuple[Path, Path]:
    """Write ``out`` (Verilog) and ``out.with_suffix('.json')``; return both paths."""
    from amaranth.back import verilog

    from hw import dre_regs
    from hw.dre import DRE

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"top module name {name!r} is not a Verilog identifier (use --name)")
    DRE.check_config(cfg)
    dre = DRE(cfg, rule=rule)
    text = verilog.convert(dre, name=name, emit_src=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    meta = out.with_suffix(".json")
    meta.write_text(
        json.dumps(
            {
                "top": name,
                "config": cfg.to_dict(),
                "rule": rule,
                "register_map": [r.to_dict() for r in dre_regs.register_map(cfg)],
                "register_bus": {
                    "addr_bits": dre_regs.ADDR_BITS,
                    "data_bits": dre_regs.DATA_BITS,
                },
            },
            indent=2,
        )
        + "\n"
    )
    return out, meta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_from(args)
        if args.regmap:
            from hw import dre_regs

            print(dre_regs.markdown(cfg), end="")
            return 0
        name = args.name or Path(args.out).stem
        v, meta = export(cfg, Path(args.out), name, args.rule)
    except (ConfigError, json.JSONDecodeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[export] {v} ({v.stat().st_size // 1024} KiB, top module {name})")
    print(f"[export] {meta} (configuration and register map)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
