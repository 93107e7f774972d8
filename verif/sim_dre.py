"""The RTL regression of the whole DRE against the golden model: ``python -m verif.sim_dre``.

``make sim`` runs this.  It streams a video (synthetic by default, or ``--frames-folder`` with
PNG/JPEG frames or a ``.npy`` array) through the golden model's LLM slice
(:class:`model.llm.TinyLLM`, one layer and KV head, ``--layer`` / ``--head``), quantises keys
and queries as the reference does (:func:`model.dre.top.integer_stream`), computes every
expected assignment and selection with :class:`model.dre.top.DRERef`, then drives the keys and
queries through the Verilated top level :class:`hw.dre.DRE` with cocotb
(``verif/tb_dre.py``), which checks every assignment, every selected (index, score), every
``planes_read`` and error flag, and at the end the performance counters, bit for bit.
With the v2 rule ``--score`` picks what ranks the clusters: ``soft`` (the soft score of
``docs/soft.md``: ``CTRL.soft`` and ``GAIN = soft_gain(query scale, key scale, d)``, one gain
per stream since the scales are fixed per stream), ``norm`` (normalised max) or ``max`` (raw
max; ``--raw-max`` is an alias).  The summary table names the rule and score.

Prints one progress line per frame and a final table; the exit status is non-zero on any
mismatch.  A bad option (out of range, meaningless for the rule, an ``--out`` that cannot be
written, a bad ``VREX_SEED`` or ``SIM``, a missing simulator) prints one ``error:`` line and
exits with status 2 before the golden model or the simulator starts.  ``WAVES=1`` (or
``--waves``) dumps an FST waveform, ``SIM=icarus`` (or ``--sim icarus``) runs Icarus Verilog
instead of Verilator.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from model.bench import parse_grid
from model.dre.config import ConfigError, DREConfig

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MARGIN = 3.0
#: waveform size per simulated cycle of the default DRE configuration, measured with
#: ``python -m verif.sim_dre --frames 2 --waves`` (Verilator VCD, as written without the lz4
#: headers FST needs): 835 MB for 48,306 cycles.  FST compresses this; not measured here.
VCD_BYTES_PER_CYCLE = 17_295
#: simulated cycles per frame of the default configuration at 14 x 14 (docs/dre.md, make sim)
CYCLES_PER_FRAME = 37_893
#: Icarus Verilog 11 on the default configuration, measured with
#: ``python -m verif.sim_dre --frames 1 --sim icarus``: 21,475 cycles in 17.7 s
ICARUS_CYCLES_PER_S = 1_217
#: more frames than this with waveforms on is a "long run": warn of the size first
WAVES_SHORT_FRAMES = 4
SIMULATORS = ("verilator", "icarus")
#: the v2 scores (``--score``), and the one a run uses unless told otherwise
SCORES = ("soft", "norm", "max")
DEFAULT_SCORE = "soft"
OUT_DIR = ROOT / "build" / "sim_dre"


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="python -m verif.sim_dre", description=__doc__.split("\n\n")[0].strip("`")
    )
    ap.add_argument("--frames", type=int, default=64, help="frames to stream (default 64)")
    ap.add_argument("--grid", type=parse_grid, default=(14, 14), help="token grid HxW (14x14)")
    ap.add_argument(
        "--frames-folder",
        default=None,
        metavar="PATH",
        help="real frames: a folder of PNG/JPEG files or a .npy array (or 'photos')",
    )
    ap.add_argument(
        "--config",
        default=None,
        metavar="JSON",
        help="DREConfig JSON (as written by python -m hw.export)",
    )
    ap.add_argument("--preset", default=None, help="start from a named DREConfig (video7b, ...)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one DREConfig parameter (repeatable)",
    )
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--head", type=int, default=0)
    ap.add_argument(
        "--rule",
        choices=("v1", "v2"),
        default="v2",
        help="retrieval rule: v2 token budget, several query vectors (default); v1 margin/k",
    )
    ap.add_argument(
        "--queries",
        type=int,
        default=None,
        help="query vectors per frame (default: q_max for v2, 2 for v1); v2 retrieves twice per "
        "frame, with all of them and with the first alone",
    )
    ap.add_argument("--budget", type=int, default=256, help="v2: tokens per retrieval (256)")
    ap.add_argument(
        "--score",
        default=None,
        metavar="{soft,norm,max}",
        help=f"v2: what ranks the clusters: soft (the soft score, CTRL.soft, GAIN from the "
        f"quantisation scales), norm (normalised max) or max (raw max, CTRL.raw_max); "
        f"default {DEFAULT_SCORE}",
    )
    ap.add_argument(
        "--raw-max",
        action="store_true",
        help="v2: the same as --score max (kept for old command lines)",
    )
    ap.add_argument("--tau-t", type=float, default=0.9, help="temporal threshold in [0, 1] (0.9)")
    ap.add_argument("--tau-s", type=float, default=0.8, help="spatial threshold in [0, 1] (0.8)")
    ap.add_argument(
        "--margin",
        type=float,
        default=None,
        help=f"v1: ReSV margin in attention logits, >= 0 (default {DEFAULT_MARGIN})",
    )
    ap.add_argument("--k-min", type=int, default=None, help="v1: 1 .. k_max (default 1)")
    ap.add_argument("--k-max", type=int, default=None, help="v1: k_min .. k_cap (default k_cap)")
    ap.add_argument("--table-size", type=int, default=None, help="1 .. n_max (default n_max)")
    ap.add_argument(
        "--clear-at",
        type=int,
        action="append",
        default=[],
        metavar="FRAME",
        help="write CMD.clear_table before this frame (repeatable)",
    )
    ap.add_argument(
        "--no-exit",
        action="store_true",
        help="disable early exit (CTRL.no_exit; v1, or v2 with --score norm or max)",
    )
    ap.add_argument(
        "--stall",
        type=float,
        default=0.0,
        help="probability of ready low on the output streams (default 0)",
    )
    ap.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="probability of an idle cycle before an input beat (default 0)",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the video, weights and query picks (default $VREX_SEED or 1)",
    )
    ap.add_argument(
        "--sim", choices=SIMULATORS, default=None, help="simulator (default $SIM or verilator)"
    )
    ap.add_argument("--waves", action="store_true", help="dump waveforms (same as WAVES=1)")
    ap.add_argument("--out", default=None, metavar="JSON", help="write the summary here")
    return ap.parse_args(argv)


def score_of(args) -> str | None:
    """The v2 score of a run (``--score``, ``--raw-max``, else :data:`DEFAULT_SCORE`); None
    for v1."""
    if args.rule != "v2":
        return None
    return args.score or ("max" if args.raw_max else DEFAULT_SCORE)


def build_spec(cfg: DREConfig, args, log=print) -> tuple[dict, dict]:
    """The stimulus with every expected response, and golden-model totals for the table."""
    from model.dre.top import DRERef, integer_stream

    t0 = time.perf_counter()

    def progress(t):
        if (t + 1) % 16 == 0 or t + 1 == args.frames:
            log(f"[sim_dre] golden model: frame {t + 1}/{args.frames} prefilled")

    stream = integer_stream(
        cfg,
        frames=args.frames,
        grid=args.grid,
        source=args.frames_folder,
        layer=args.layer,
        head=args.head,
        queries_per_frame=args.queries or (cfg.q_max if args.rule == "v2" else 2),
        tau_t=args.tau_t,
        tau_s=args.tau_s,
        margin=DEFAULT_MARGIN if args.margin is None else args.margin,
        k_min=1 if args.k_min is None else args.k_min,
        k_max=args.k_max,
        table_size=args.table_size,
        seed=args.seed,
        progress=progress,
        score=score_of(args) or "norm",  # v1 ignores it
    )
    stream.regs.no_exit = int(args.no_exit)
    stream.regs.budget = args.budget
    ref = DRERef(cfg, stream.regs)
    v2 = args.rule == "v2"
    totals = dict.fromkeys(("TOKENS", "CLUSTERS", "FORCED", "DROPPED", "QUERIES", "PLANES_READ"), 0)
    work = [0, 0]  # planes read, planes in the candidates scored

    def answer(q):
        r = ref.retrieve_tokens(q) if v2 else ref.retrieve(q)
        totals["QUERIES"] += 1
        totals["PLANES_READ"] += r.planes_read
        if r.selection is not None:
            work[0] += r.planes_read
            work[1] += r.n * cfg.bk * (len(q) if v2 else 1)
        return {"q": q, "records": r.records, "planes_read": r.planes_read, "error": r.error}

    def retrievals(queries):
        """v1: one retrieval per query vector; v2: all vectors together, then the first alone."""
        return [queries, queries[:1]] if v2 else queries

    # N = 0 before the first frame: the error trailer, no selection
    pre = [answer(retrievals(stream.frames[0].queries)[0])]
    frames = []
    for t, fr in enumerate(stream.frames):
        if t in args.clear_at:
            ref.clear()
        ids, status = ref.add_frame(fr.keys)
        totals["TOKENS"] += len(ids)
        for name, code in (("CLUSTERS", 1), ("FORCED", 2), ("DROPPED", 3)):
            totals[name] += status.count(code)
        frames.append(
            {
                "keys": fr.keys,
                "ids": ids,
                "status": status,
                "error": ref.cluster.error,
                "clear": t in args.clear_at,
                "queries": [answer(q) for q in retrievals(fr.queries)],
            }
        )
    regs = vars(stream.regs).copy()
    spec = {
        "cfg": cfg.to_dict(),
        "rule": args.rule,
        "score": score_of(args),
        "seed": args.seed,
        "stall": args.stall,
        "gap": args.gap,
        "regs": regs,
        "pre_queries": pre,
        "frames": frames,
        "totals": totals,
    }
    golden = {
        "clusters": ref.n_clusters,
        "work": work,
        "seconds": time.perf_counter() - t0,
        "key_scale": stream.key_scale,
        "query_scale": stream.query_scale,
        "gain": stream.gain,
    }
    return spec, golden


def rule_name(args, gain: int | None = None) -> str:
    """The rule and score of a run in words: ``v2, soft score (gain 3951)``, ``v1``."""
    score = score_of(args)
    if score is None:
        return "v1 (margin, k_min / k_max)"
    words = {"soft": "soft score", "norm": "normalised max", "max": "raw max"}[score]
    return f"v2, {words}" + (f" (gain {gain})" if score == "soft" and gain is not None else "")


def ctrl_text(regs: dict) -> str:
    """CTRL as written: its set bits by name (``soft``, ``no_exit``, ...) or ``0``."""
    bits = [b for b in ("no_exit", "raw_max", "soft") if regs.get(b)]
    return "+".join(bits) or "0"


def table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    v = max(len(x) for _, x in rows)
    lines = [
        f"| {'quantity'.ljust(w)} | {'value'.rjust(v)} |",
        f"|{'-' * (w + 2)}|{'-' * (v + 2)}|",
    ]
    lines += [f"| {k.ljust(w)} | {x.rjust(v)} |" for k, x in rows]
    return "\n".join(lines)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def waves_warning(args, cfg: DREConfig) -> str:
    """One line: the expected waveform size of this run, from the measured bytes per cycle."""
    h, w = args.grid
    cycles = args.frames * CYCLES_PER_FRAME * (h * w) / 196
    scale = max(1.0, (cfg.d * cfg.n_max) / (64 * 256))  # more state, more signals (rough)
    gb = cycles * VCD_BYTES_PER_CYCLE * scale / 1e9
    from verif.runner import _have_lz4

    what = f"an FST dump (up to {gb:.1f} GB as VCD)" if _have_lz4() else f"a {gb:.1f} GB VCD"
    return (
        f"[sim_dre] warning: WAVES=1 on {args.frames} frames (~{cycles / 1e6:.1f} M cycles) "
        f"writes roughly {what} and runs several times slower; for the waveform of a failure rerun "
        f"with --frames {WAVES_SHORT_FRAMES} and the same --seed"
    )


def seed_from_env(default: int = 1) -> int:
    """``VREX_SEED`` as an integer (``default`` when unset); :class:`ConfigError` otherwise."""
    text = os.environ.get("VREX_SEED", "").strip()
    if not text:
        return default
    try:
        return int(text, 0)
    except ValueError:
        raise ConfigError(f"VREX_SEED={text!r} is not an integer") from None


def check_args(cfg: DREConfig, args) -> None:
    """Every option against ``cfg`` and the rule, before any work; resolves the defaults."""
    from model.dre.cluster import tau_fixed

    h, w = args.grid
    if args.frames < 1:
        raise ConfigError(f"--frames={args.frames} must be >= 1")
    if h * w > cfg.grid_max:
        raise ConfigError(
            f"--grid {h}x{w} has {h * w} tokens, more than grid_max={cfg.grid_max}; "
            f"use --set grid_max={h * w}"
        )
    for name in ("stall", "gap"):
        if not 0 <= getattr(args, name) < 1:
            raise ConfigError(f"--{name}={getattr(args, name)} must be in [0, 1)")
    for name in ("tau_t", "tau_s"):
        try:
            tau_fixed(getattr(args, name), cfg.tau_frac_bits)
        except ConfigError:
            raise ConfigError(
                f"--{name.replace('_', '-')}={getattr(args, name)} must be in [0, 1]"
            ) from None
    v1_only = [f"--{n}" for n in ("margin", "k_min", "k_max") if getattr(args, n) is not None]
    if args.rule == "v2" and v1_only:
        raise ConfigError(
            f"{', '.join(x.replace('_', '-') for x in v1_only)} apply to --rule v1 only "
            f"(v2 selects --budget tokens)"
        )
    if args.rule == "v2":
        if args.score is not None and args.score not in SCORES:
            raise ConfigError(f"--score {args.score!r}: choose soft, norm or max")
        if args.raw_max and args.score not in (None, "max"):
            raise ConfigError(
                f"--raw-max is --score max; it contradicts --score {args.score} (give one)"
            )
        args.score = score_of(args)
        args.raw_max = args.score == "max"
        if args.score == "soft" and args.no_exit:
            raise ConfigError(
                "--no-exit does nothing with --score soft (the soft score reads every plane); "
                "use it with --score norm or max"
            )
    elif args.score is not None or args.raw_max:
        what = "--score" if args.score is not None else "--raw-max"
        raise ConfigError(f"{what} applies to --rule v2 only (v1 ranks by bias and margin)")
    if args.rule == "v1":  # v2 leaves them unset (build_spec programs the defaults)
        args.margin = DEFAULT_MARGIN if args.margin is None else args.margin
        args.k_min = 1 if args.k_min is None else args.k_min
        args.k_max = cfg.k_cap if args.k_max is None else args.k_max
        if not (args.margin >= 0 and args.margin < float("inf")):
            raise ConfigError(f"--margin={args.margin} must be a finite number >= 0")
        if not 1 <= args.k_max <= cfg.k_cap:
            raise ConfigError(f"--k-max={args.k_max} must be in 1 .. k_cap={cfg.k_cap}")
        if not 1 <= args.k_min <= args.k_max:
            raise ConfigError(f"--k-min={args.k_min} must be in 1 .. k_max={args.k_max}")
    if args.table_size is not None and not 1 <= args.table_size <= cfg.n_max:
        raise ConfigError(f"--table-size={args.table_size} must be in 1 .. n_max={cfg.n_max}")
    bad = [t for t in args.clear_at if not 0 <= t < args.frames]
    if bad:
        raise ConfigError(
            f"--clear-at {bad[0]}: frames are numbered 0 .. {args.frames - 1} (--frames)"
        )
    if args.queries is None:
        args.queries = cfg.q_max if args.rule == "v2" else 2
    if args.rule == "v2" and not 1 <= args.queries <= cfg.q_max:
        raise ConfigError(f"--queries={args.queries}; v2 takes 1 .. q_max={cfg.q_max}")
    if args.queries < 1:
        raise ConfigError(f"--queries={args.queries} must be >= 1")
    if args.rule == "v2" and not 1 <= args.budget < 1 << (cfg.count_bits + cfg.n_max.bit_length()):
        raise ConfigError(
            f"--budget={args.budget} must be >= 1 and fit the BUDGET register "
            f"({cfg.count_bits + cfg.n_max.bit_length()} bits)"
        )
    if args.frames_folder is not None:
        from model.kv_trace import TraceError, is_trace, read_meta
        from model.video import VideoError, open_video

        try:
            if is_trace(args.frames_folder):  # a model's keys and queries (model.kv_trace)
                held = read_meta(args.frames_folder)["frames"]
            else:
                held = len(open_video(args.frames_folder, frames=args.frames, seed=args.seed or 0))
        except (VideoError, TraceError) as exc:
            raise ConfigError(f"--frames-folder: {exc}") from None
        if held < args.frames:  # the stream would silently be shorter
            raise ConfigError(
                f"--frames={args.frames} but --frames-folder {args.frames_folder} holds only "
                f"{held} frames"
            )


def check_simulator(name: str | None) -> str:
    """The simulator to run (``--sim``, else ``$SIM``, else verilator), present on this machine."""
    from verif import toolenv

    sim = name or os.environ.get("SIM", "").strip() or "verilator"
    if sim not in SIMULATORS:
        raise ConfigError(f"SIM={sim!r} is not a simulator here; choose {' or '.join(SIMULATORS)}")
    from verif.runner import sim_opt

    try:
        sim_opt()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        toolenv.require("verilator" if sim == "verilator" else "iverilog")
    except toolenv.ToolMissing as exc:
        raise ConfigError(str(exc)) from None
    return sim


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.seed is None:
            args.seed = seed_from_env()
        from hw.export import config_from

        cfg = config_from(args)
        from hw.dre import DRE
        from hw.export import check_output_path

        DRE.check_config(cfg)
        check_args(cfg, args)
        args.sim = check_simulator(args.sim)
        if args.out:
            check_output_path(args.out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from model.video import VideoError
    from verif.runner import SimulationFailed, run

    h, w = args.grid

    print(f"[sim_dre] DREConfig {cfg.to_dict()}, retrieval rule {rule_name(args)}")
    print(
        f"[sim_dre] {args.frames} frames {h}x{w} from "
        f"{args.frames_folder or 'the synthetic video'}, TinyLLM layer {args.layer} KV head "
        f"{args.head}, {args.queries} queries per frame, seed {args.seed}"
    )
    try:
        spec, golden = build_spec(cfg, args)
    except (ConfigError, VideoError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    regs = spec["regs"]
    print(
        f"[sim_dre] registers: tau_t {regs['tau_t']} tau_s {regs['tau_s']} (/2^"
        f"{cfg.tau_frac_bits}), table {regs['table_size']}, bias_scale {regs['bias_scale']}, "
        + (
            f"budget {regs['budget']} tokens, CTRL {ctrl_text(regs)}, gain {regs['gain']}"
            if args.rule == "v2"
            else f"margin {regs['margin']}, k {regs['k_min']}..{regs['k_max']}"
        )
        + "; golden model "
        f"{golden['seconds']:.1f} s"
    )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    spec_path = OUT_DIR / f"spec-{os.getpid()}.json"
    out_path = Path(args.out) if args.out else OUT_DIR / f"summary-{os.getpid()}.json"
    spec["out"] = str(out_path.resolve())
    spec_path.write_text(json.dumps(spec))
    tool = {"verilator": "Verilator", "icarus": "Icarus Verilog"}[args.sim]
    if (args.waves or _flag("WAVES")) and args.frames > WAVES_SHORT_FRAMES:
        print(waves_warning(args, cfg))
    if args.sim == "icarus" and args.frames > WAVES_SHORT_FRAMES:
        cycles = args.frames * CYCLES_PER_FRAME * (h * w) / 196
        print(
            f"[sim_dre] note: Icarus simulates about {ICARUS_CYCLES_PER_S} cycles/s on the default "
            f"configuration: ~{cycles / ICARUS_CYCLES_PER_S / 60:.0f} min for {args.frames} frames"
        )
    print(f"[sim_dre] RTL: building and running the DRE in {tool} (progress per frame below)")
    t0 = time.perf_counter()
    failed = None
    try:
        run(
            DRE(cfg, rule=args.rule),
            "dre",
            "verif.tb_dre",
            extra_env={"VREX_DRE": f"@{spec_path}"},
            sim=args.sim,
            waves=True if args.waves else None,
            testcase="dre_stream",
            seed=args.seed,
        )
    except SimulationFailed as exc:
        failed = str(exc)
    finally:
        spec_path.unlink(missing_ok=True)
    total_s = time.perf_counter() - t0
    if not out_path.exists():
        print(f"error: the simulation ended without a summary: {failed}", file=sys.stderr)
        return 1
    s = json.loads(out_path.read_text())
    if not args.out:
        out_path.unlink()

    frames = s["frames"]
    tokens = sum(f["tokens"] for f in frames)
    n_queries = sum(f["queries"] for f in frames)
    cyc = [f["cycles"] for f in frames]
    t = spec["totals"]
    rc = s["retrieval_cycles"][1:]  # the first is the N = 0 error trailer
    selected = sum(len(q["records"]) for f in spec["frames"] for q in f["queries"])
    work = golden["work"]
    errors = sum(q["error"] != 0 for q in spec["pre_queries"]) + sum(
        q["error"] != 0 for f in spec["frames"] for q in f["queries"]
    )
    rows = [
        ("retrieval rule", rule_name(args, golden["gain"])),
        ("frames", f"{len(frames)}"),
        ("tokens", f"{tokens}"),
        ("clusters (in table at end)", f"{golden['clusters']}"),
        ("new / forced / dropped", f"{t['CLUSTERS']} / {t['FORCED']} / {t['DROPPED']}"),
        (f"retrievals (incl. {errors} error check{'s' * (errors != 1)})", f"{s['retrievals']}"),
        (
            "mean selected per retrieval",
            f"{selected / n_queries:.2f}",
        ),
        ("mismatches", f"{s['mismatches']}"),
        ("cycles per frame (mean)", f"{sum(cyc) / len(cyc):.0f}"),
        ("cycles per retrieval (mean)", f"{sum(rc) / max(1, len(rc)):.0f}"),
        ("work fraction (planes read / Q*N*bk)", f"{work[0] / max(1, work[1]):.3f}"),
        ("simulated cycles", f"{s['sim_cycles']}"),
        ("simulated cycles per wall second", f"{s['sim_cycles'] / max(1e-9, s['wall_s']):.0f}"),
        ("wall time, RTL run incl. build (s)", f"{total_s:.1f}"),
    ]
    print()
    print(table(rows))
    for m in s.get("first_mismatches", []):
        print(f"  mismatch: {m}")
    if not failed and not s["mismatches"] and errors > len(spec["pre_queries"]):
        # only the deliberate N = 0 check may end in an error trailer: otherwise the run would
        # pass while checking nothing but error flags
        failed = f"{errors - len(spec['pre_queries'])} retrievals ended in an error trailer"
    if failed or s["mismatches"]:
        print(
            f"[sim_dre] FAILED (seed {args.seed}; rerun with --seed {args.seed} WAVES=1 "
            f"for a waveform): {failed or ''}",
            file=sys.stderr,
        )
        return 1
    print(
        f"[sim_dre] PASS: {s['assignments']} assignments and {s['retrievals']} retrievals "
        f"bit-exact with the golden model"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
