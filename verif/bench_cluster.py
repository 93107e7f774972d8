"""Clustering-unit benchmark: ``python -m verif.bench_cluster [--frames 64] [--grids 14x14 27x27]``.

Streams ``--frames`` frames of synthetic video keys (layer 0, KV head 0 of model.llm.TinyLLM on
model.video.SyntheticVideo, quantised to ``bk`` bits; ``verif.tb_cluster.video_keys``) through
:class:`hw.cluster_unit.ClusterUnit` in Verilator, scored token by token against
:class:`model.dre.cluster.ClusterRef` (a mismatch fails the run), with tau_t = 0.9, tau_s = 0.8
and the whole table in use.  No backpressure and no input gaps in this run
(``"bench": true`` in the testbench spec), so the cycles are the unit's own.

Printed per grid: cycles per token and per frame (RTL, from the first token of a frame to its
last result), new clusters per frame and the table occupancy after the stream (from the
reference, with the RTL's own counts of new / forced / dropped results next to the reference's),
the exact recomputes (decisions the mantissa screen left to the exact unit), and mismatches.
``--set NAME=VALUE`` changes the DREConfig (default: DREConfig() with grid_max large enough for
the largest grid).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from hw.cluster_unit import ClusterUnit, token_period
from model.bench import parse_grid
from model.dre.config import ConfigError, DREConfig
from verif.runner import SimulationFailed, run


def run_bench(cfg: DREConfig, spec: dict) -> dict | None:
    """Run ``verif.tb_cluster`` on :class:`ClusterUnit` with ``spec`` (plus the config and
    ``"bench": true``) and return the summary it writes; None (with the error printed) if the
    simulation failed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        spec = {"cfg": cfg.to_dict(), **spec, "bench": True, "out": str(out)}
        try:
            run(
                ClusterUnit(cfg),
                "cluster_unit",
                "verif.tb_cluster",
                extra_env={"VREX_CLUSTER": json.dumps(spec)},
            )
        except SimulationFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return None
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--grids", type=parse_grid, nargs="+", default=[(14, 14), (27, 27)])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument(
        "--frame-time",
        type=int,
        nargs="+",
        metavar="U",
        help="instead: frame time (clustering + write-back) of one 14x14 frame per U clusters "
        "updated, e.g. --frame-time 35 196",
    )
    args = ap.parse_args(argv)
    if args.frame_time:
        return frame_time(args)
    try:
        base = DREConfig(grid_max=max(h * w for h, w in args.grids))
        cfg = DREConfig.from_overrides(args.set, base=base)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[bench_cluster] DREConfig {cfg.to_dict()}")
    print(
        f"[bench_cluster] {args.frames} frames of synthetic video, tau_t 0.9, tau_s 0.8, "
        f"table_size {cfg.n_max}, G = d/cl_lanes = {cfg.cl_groups}"
    )
    rows = []
    for h, w in args.grids:
        s = run_bench(
            cfg,
            {
                "seed": args.seed,
                "scenarios": ["video"],
                "video_frames": args.frames,
                "video_grid": [h, w],
                "video_seed": args.seed,
            },
        )
        if s is None:
            return 1
        v = s["scenarios"]["video"]
        P = h * w
        rows.append(
            {
                "grid": f"{h}x{w}",
                "tokens": v["tokens"],
                "cyc/token": sum(v["cycles"]) / v["tokens"],
                "cyc/frame": statistics.mean(v["cycles"]),
                "new/frame": statistics.mean(v["clusters"]),
                "new/frame (f>0)": statistics.mean(v["clusters"][1:])
                if len(v["clusters"]) > 1
                else float("nan"),
                "occupancy": v["occupancy"],
                "forced": v["forced"],
                "dropped": v["dropped"],
                "rtl new/forced/dropped": "{new}/{forced}/{dropped}".format(
                    **v["rtl_status_counts"]
                ),
                "exact recomputes": s["exact_recomputes"],
                "mismatches": s["mismatches"],
                "P": P,
            }
        )
    head = [
        "grid",
        "tokens",
        "cyc/token",
        "cyc/frame",
        "new/frame",
        "new/frame (f>0)",
        "occupancy",
        "forced",
        "dropped",
        "rtl new/forced/dropped",
        "exact recomputes",
        "mismatches",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = []
        for k in head:
            x = r[k]
            cells.append(f"{x:.2f}" if isinstance(x, float) else str(x))
        print("| " + " | ".join(cells) + " |")
    print(
        f"[bench_cluster] documented throughput: token_period = max(G, (G + 15) / 2, 9) "
        f"= {token_period(cfg)} cycles per token"
    )
    return 0 if all(r["mismatches"] == 0 for r in rows) else 1


def frame_time(args) -> int:
    """One 14 x 14 frame after a clear per ``U``: cycles from its first token to its last result
    (clustering) and to ``idle`` (every write-back done), scored against ClusterRef."""
    try:
        cfg = DREConfig.from_overrides(args.set, base=DREConfig())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[bench_cluster] frame time, DREConfig {cfg.to_dict()}")
    s = run_bench(
        cfg, {"seed": args.seed, "scenarios": ["frametime"], "frametime": args.frame_time}
    )
    if s is None:
        return 1
    v = s["scenarios"]["frametime"]
    head = ["clusters updated", "tokens", "clustering cycles", "frame time (to idle)"]
    print("| " + " | ".join([*head, "write-back tail"]) + " |")
    print("|---|---|---|---|---|")
    n = v["tokens"] // max(1, v["frames"])
    for u, c, t in zip(v["clusters"], v["cycles"], v["to_idle"], strict=True):
        print(f"| {u} | {n} | {c} | {t} | {t - c} |")
    print(f"[bench_cluster] mismatches {s['mismatches']}, exact recomputes {s['exact_recomputes']}")
    return 0 if s["mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
