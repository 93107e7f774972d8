"""Verilog of the DRE: ``python -m hw.export --out build/dre.v [--set d=128 --set lanes=16 ...]``.

Writes the Verilog of :class:`hw.dre.DRE` (top module ``--name``, default the file's stem, so
that file and module names agree) and, beside it, ``<out>.json`` with the configuration, the
register map (:mod:`hw.dre_regs`) and the bit layout of every stream payload
(:mod:`hw.layouts`), and ``<out>.rdl``, the register map in SystemRDL, so that host software
is generated from the same numbers as the RTL (``docs/ecosystem.md``).  Each file is written
to a temporary name and renamed, so an interrupted export leaves no half-written file.
``--config`` starts from a JSON written by an earlier export (or any ``DREConfig`` JSON);
``--set NAME=VALUE`` overrides.
``--regmap`` prints the register map as Markdown instead (and writes ``<out>.rdl``).
``--bus axi`` exports :class:`hw.axi_dre.AXIDRE` (AXI4-Lite and AXI4-Stream ports) instead.
``--fusesoc DIR`` also writes a FuseSoC core there (:func:`write_fusesoc`).  ``--icarus`` adds
the time-zero nudge that Icarus Verilog 11 needs (:func:`icarus_nudge`).

A bad parameter name or value, an ``--out`` that is not a ``.v``/``.sv`` file name or cannot be
written, prints one line naming it, exit status 2, before any elaboration (nothing is written).
Elaboration prints one line per stage with its time; configurations beyond the measured range
(``n_max`` above :data:`LARGE`) are refused unless ``--allow-large`` is given,
because their export takes tens of minutes and gigabytes (see ``docs/ecosystem.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from model.dre.config import ConfigError, DREConfig

#: Verilog file names --out accepts (the sidecars take the same stem with other suffixes)
VERILOG_SUFFIXES = (".v", ".sv")
WAIVERS = Path(__file__).resolve().parent.parent / "verif" / "waivers.vlt"
#: largest n_max exported without --allow-large.  Measured on the 2-core CI machine (default
#: d=64): n_max 512 takes 35 s and 0.28 GB, 2048 76 s and 0.54 GB, 4096 126 s and 1.07 GB, so
#: about 31 ms and 0.26 MB per entry: n_max 65536 would take some 35 minutes and 17 GB.
#: (grid_max 65536 takes 42 s.)
LARGE = 8192


def export_cost(cfg: DREConfig) -> tuple[float, float]:
    """Rough (seconds, GB) of an export of ``cfg``, from the measurements above."""
    return 20 + 0.031 * cfg.n_max, 0.15 + 0.00026 * cfg.n_max


#: the register Yosys' write_verilog puts into the sensitivity of every ``always @*`` block
_YOSYS_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\S*)\s*= 0;$", re.M)


def icarus_nudge(text: str) -> str:
    """Verilog for Icarus Verilog 11: give every ``always @*`` block its time-zero run.

    Yosys emits ``reg \\$auto$verilog_backend...$N = 0;`` and reads it in every combinational
    ``always @*`` block so that simulators evaluate the block once at time zero.  Icarus 11 does
    not treat the declaration's initialiser as an event, so a combinational output whose inputs
    never change (an idle ``ready``, a constant register read) stays X forever.  One
    ``initial #0 <reg> = 1'b1;`` per module makes that event; the register drives nothing else.
    """
    return _YOSYS_TRIGGER.sub(
        lambda m: f"{m.group(0)}\n{m.group(1)}initial #0 {m.group(2)} = 1'b1;", text
    )


def write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def check_output_path(path, flag: str = "--out") -> Path:
    """Make sure ``path`` can be written (creating its parent folders), before any long work.

    Raises :class:`ConfigError` with one line naming the path and the reason.  A file that did
    not exist before is removed again, so a later failure leaves nothing half-written."""
    p = Path(path)
    if str(path).endswith(os.sep) or p.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory; give a file name")
    anc = p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise ConfigError(f"{flag} {path}: {anc} is a file, not a directory")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot create {p.parent}: {exc.strerror}") from None
    existed = p.exists()
    try:
        with open(p, "a"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write: {exc.strerror}") from None
    if not existed:
        p.unlink()
    return p


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
        "--bus",
        choices=("native", "axi"),
        default="native",
        help="native: the DRE's own streams and register bus (default); axi: AXI4-Lite "
        "registers and AXI4-Stream ports (hw/axi_dre.py)",
    )
    ap.add_argument(
        "--fusesoc",
        default=None,
        metavar="DIR",
        help="also write a FuseSoC core (Verilog, waivers, lint target) into DIR",
    )
    ap.add_argument(
        "--icarus",
        action="store_true",
        help="add the time-zero nudge Icarus Verilog 11 needs (docs/ecosystem.md)",
    )
    ap.add_argument(
        "--allow-large",
        action="store_true",
        help=f"export n_max above {LARGE} (tens of minutes, gigabytes)",
    )
    ap.add_argument(
        "--rule",
        choices=("v1", "v2"),
        default="v2",
        help="retrieval rule of the selector: v2 token budget (default), v1 margin / k",
    )
    return ap.parse_args(argv)


def config_from(args) -> DREConfig:
    """The configuration of ``--config`` or ``--preset`` (not both), then ``--set``."""
    if args.config and args.preset:
        raise ConfigError("--config and --preset both name a starting configuration; give one")
    base = DREConfig.from_json(args.config) if args.config else DREConfig()
    if args.preset:
        from model.dre.config import preset

        base = preset(args.preset)
    return DREConfig.from_overrides(args.set, base=base)


def check_export(cfg: DREConfig, out: Path, name: str, *, allow_large: bool = False) -> None:
    """Every check of an export that needs no elaboration; :class:`ConfigError` on the first."""
    from hw.dre import DRE

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"top module name {name!r} is not a Verilog identifier (use --name)")
    if Path(out).suffix not in VERILOG_SUFFIXES:
        raise ConfigError(
            f"--out {out}: the Verilog file must end in {' or '.join(VERILOG_SUFFIXES)} "
            f"(the JSON and other sidecars are written beside it with the same stem)"
        )
    DRE.check_config(cfg)
    if cfg.n_max > LARGE and not allow_large:
        sec, gb = export_cost(cfg)
        raise ConfigError(
            f"n_max={cfg.n_max} is above {LARGE}: the export would take about "
            f"{sec / 60:.0f} minutes and {gb:.0f} GB; pass --allow-large to run it"
        )
    check_output_path(out)


def to_verilog(component, name: str, log=None) -> str:
    """Verilog of ``component`` (as ``amaranth.back.verilog.convert``), one line per stage."""
    from amaranth.back import rtlil, verilog

    log = log or (lambda _: None)
    t0 = time.perf_counter()
    log("[export] elaborating and lowering to RTLIL ...")
    il = rtlil.convert(component, name=name, emit_src=False)
    t1 = time.perf_counter()
    log(f"[export] RTLIL done ({len(il) // 1024} KiB, {t1 - t0:.1f} s); Yosys write_verilog ...")
    # the second half of verilog.convert(), so that each stage reports
    text = verilog._convert_rtlil_text(il)
    log(f"[export] Verilog done ({time.perf_counter() - t1:.1f} s)")
    return text


def shape_doc(shape) -> dict:
    """Bit layout of an Amaranth shape or ``data`` layout as plain JSON, recursively.

    ``{"width": w, "signed": bool}`` for a number; ``{"width", "enum": {name: value}}`` for an
    enum; ``{"width", "fields": [{"name", "offset", ...}]}`` for a struct (offsets in bits from
    the least significant bit); ``{"width", "count", "stride", "element": {...}}`` for an array,
    element ``i`` at bits ``i * stride`` and up."""
    import enum as py_enum

    from amaranth import Shape
    from amaranth.lib import data

    if isinstance(shape, data.ArrayLayout):
        elem = shape_doc(shape.elem_shape)
        return {
            "width": shape.size,
            "count": shape.length,
            "stride": elem["width"],
            "element": elem,
        }
    if isinstance(shape, data.Layout):
        fields = []
        for fname, field in shape:
            fields.append({"name": fname, "offset": field.offset, **shape_doc(field.shape)})
        return {"width": shape.size, "fields": fields}
    if isinstance(shape, type) and issubclass(shape, py_enum.Enum):
        return {
            "width": Shape.cast(shape).width,
            "enum": {m.name: m.value for m in shape},
        }
    s = Shape.cast(shape)
    return {"width": s.width, "signed": s.signed}


def stream_docs(cfg: DREConfig, rule: str = "v2") -> dict:
    """Every stream of :class:`hw.dre.DRE` with its payload's bit layout (from hw/layouts.py),
    and the other payload layouts hw/layouts.py defines (standalone selectors)."""
    from hw import layouts
    from hw.cluster_unit import result_layout
    from hw.dre import queries_stream_layout, selections_layout

    dre = {
        "keys": ("in", layouts.key_layout(cfg), "one key, d signed bk-bit elements"),
        "assignments": (
            "out",
            result_layout(cfg),
            "per key in order: cluster id, status (0 joined, 1 new, 2 forced, 3 dropped), last",
        ),
        "queries": (
            "in",
            queries_stream_layout(cfg, rule),
            "v2: q_max query vectors and n_q, how many count"
            if rule == "v2"
            else "v1: one query vector",
        ),
        "selections": (
            "out",
            selections_layout(cfg, rule),
            "RECORD beats in selection order, then one TRAILER per retrieval",
        ),
    }
    streams = {
        sname: {"direction": d, "doc": doc, "payload": shape_doc(lay)}
        for sname, (d, lay, doc) in dre.items()
    }
    others = {}
    for lname in layouts.__all__:
        fn = getattr(layouts, lname)
        if lname.endswith("_layout") and callable(fn) and lname != "key_layout":
            others[lname] = shape_doc(fn(cfg))
        elif lname.endswith("_LAYOUT"):
            others[lname.lower()] = shape_doc(fn)
    return {"streams": streams, "layouts": others}


def export(
    cfg: DREConfig,
    out: Path,
    name: str = "dre",
    rule: str = "v2",
    *,
    bus: str = "native",
    allow_large: bool = False,
    icarus: bool = False,
    log=None,
) -> dict[str, Path]:
    """Write ``out`` (Verilog), ``<out>.json`` (configuration, register map, stream layouts) and
    ``<out>.rdl`` (SystemRDL register map); return them by kind ("verilog", "json", "rdl")."""
    from hw import dre_regs
    from hw.dre import DRE

    out = Path(out)
    check_export(cfg, out, name, allow_large=allow_large)
    if cfg.n_max > 1024 and log:
        sec, gb = export_cost(cfg)
        log(f"[export] n_max={cfg.n_max}: expect about {sec:.0f} s and {gb:.1f} GB of memory")
    if bus == "axi":
        from hw.axi_dre import AXIDRE, AXIL_ADDR_BITS, stream_ports

        top = AXIDRE(cfg, rule=rule)
        extra = {
            "bus": "axi",
            "axi": {
                "axi4_lite": {
                    "prefix": "s_axil",
                    "addr_bits": AXIL_ADDR_BITS,
                    "data_bits": dre_regs.DATA_BITS,
                    "register_byte_address": "4 * addr",
                },
                "axi4_stream": {
                    n: {
                        "prefix": prefix,
                        "direction": d,
                        "tdata_bits": tw,
                        "payload_bits": (0, w - 1),
                        "tlast": {
                            "keys": "optional, ignored (frames are GRID_W * GRID_H keys)",
                            "queries": "ignored (one retrieval per beat)",
                            "assignments": "payload field last: last key of the frame",
                            "selections": "the TRAILER beat: end of one retrieval",
                        }[n],
                    }
                    for n, (prefix, d, w, tw) in stream_ports(cfg, rule).items()
                },
            },
        }
    elif bus == "native":
        top, extra = DRE(cfg, rule=rule), {"bus": "native"}
    else:
        raise ConfigError(f"bus={bus!r}; choose native or axi")
    text = to_verilog(top, name, log)
    write_text(out, icarus_nudge(text) if icarus else text)
    files = {"verilog": out, "json": write_json(cfg, out, name, rule, extra)}
    files["rdl"] = out.with_suffix(".rdl")
    write_text(files["rdl"], dre_regs.systemrdl(cfg, name, rule))
    return files


def write_json(cfg: DREConfig, out: Path, name: str, rule: str, extra: dict | None = None) -> Path:
    from hw import dre_regs

    meta = Path(out).with_suffix(".json")
    doc = {
        "top": name,
        "config": cfg.to_dict(),
        "rule": rule,
        "register_map": [
            {
                **r.to_dict(),
                "fields": [
                    dict(zip(("name", "lsb", "width", "doc"), f, strict=True))
                    for f in dre_regs.fields_of(r)
                ],
            }
            for r in dre_regs.register_map(cfg)
        ],
        "register_bus": {
            "addr_bits": dre_regs.ADDR_BITS,
            "data_bits": dre_regs.DATA_BITS,
        },
        **stream_docs(cfg, rule),
        **(extra or {}),
    }
    write_text(meta, json.dumps(doc, indent=2) + "\n")
    return meta


CORE_VERSION = "0.1.0"


def write_fusesoc(folder, files: dict[str, Path], name: str, rule: str) -> Path:
    """A FuseSoC (CAPI2) core in ``folder``: the Verilog, its sidecars, the Verilator waivers.

    Targets: ``default`` (the RTL, top ``name``) and ``lint`` (Verilator ``--lint-only -Wall``
    with ``waivers.vlt``), e.g. ``fusesoc --cores-root DIR run --target lint vrex:ip:NAME``."""
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ("verilog", "json", "rdl"):
        if files[kind].resolve().parent != folder.resolve():
            shutil.copyfile(files[kind], folder / files[kind].name)
    shutil.copyfile(WAIVERS, folder / WAIVERS.name)
    v, rdl, meta = files["verilog"].name, files["rdl"].name, files["json"].name
    core = folder / f"{name}.core"
    core.write_text(
        f"""CAPI=2:
# Generated by python -m hw.export --fusesoc ({rule} rule); see docs/ecosystem.md.
name: vrex:ip:{name}:{CORE_VERSION}
description: V-Rex dynamic KV-cache retrieval engine (DRE), Verilog generated from Amaranth

filesets:
  rtl:
    files:
      - {v}
    file_type: verilogSource
  waivers:
    files:
      - {WAIVERS.name}
    file_type: vlt
  docs:
    files:
      - {rdl}: {{file_type: systemRDLSource}}
      - {meta}: {{file_type: user}}

targets:
  default:
    filesets: [rtl, docs]
    toplevel: {name}
  lint:
    description: Verilator lint-only -Wall with the project's waivers
    default_tool: verilator
    filesets: [waivers, rtl]
    toplevel: {name}
    tools:
      verilator:
        mode: lint-only
        verilator_options: [-Wall]
"""
    )
    return core


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_from(args)
        name = args.name or Path(args.out).stem
        if args.fusesoc:
            check_output_path(Path(args.fusesoc) / f"{name}.core", "--fusesoc")
        if args.regmap:
            from hw import dre_regs

            extra = [f for f, on in (("--fusesoc", args.fusesoc), ("--icarus", args.icarus)) if on]
            if args.bus != "native":
                extra.append("--bus")
            if extra:
                raise ConfigError(
                    f"--regmap writes only the register map; {', '.join(extra)} need(s) a "
                    f"Verilog export (drop --regmap)"
                )

            rdl = Path(args.out).with_suffix(".rdl")
            check_output_path(rdl)
            write_text(rdl, dre_regs.systemrdl(cfg, name, args.rule))
            print(dre_regs.markdown(cfg), end="")
            print(f"[export] {rdl} (SystemRDL register map)", file=sys.stderr)
            return 0
        files = export(
            cfg,
            Path(args.out),
            name,
            args.rule,
            bus=args.bus,
            allow_large=args.allow_large,
            icarus=args.icarus,
            log=print,
        )
        core = write_fusesoc(args.fusesoc, files, name, args.rule) if args.fusesoc else None
    except (ConfigError, json.JSONDecodeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    v = files["verilog"]
    print(f"[export] {v} ({v.stat().st_size // 1024} KiB, top module {name})")
    print(f"[export] {files['json']} (configuration, register map, stream payload layouts)")
    print(f"[export] {files['rdl']} (SystemRDL register map)")
    if core:
        print(
            f"[export] {core} (FuseSoC core vrex:ip:{name}:{CORE_VERSION}, targets default, lint)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
