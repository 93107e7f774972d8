"""Streaming benchmark of ReSV against the baselines: ``python -m model.bench [--sweep]``.

Streams ``--frames`` frames of a video (synthetic by default, or ``--video PATH`` for a folder of
PNG/JPEG frames or a ``.npy`` array) through the patch embedding and :class:`model.llm.TinyLLM`.
At every layer each policy (one :class:`model.baselines.KVPolicy` per layer) retrieves past
tokens for the frame's mean query (per KV head), the frame's attention is computed over that
selection, and it is compared with exact attention on the same queries, keys and values
(metrics of :mod:`model.metrics`).  The first frame has no past and is left out of the averages.

Modes:

* default (*teacher-forced*): one exact (full-attention) stream; every policy sees the same keys,
  values and queries, so the figures measure retrieval alone, layer by layer;
* ``--free-running``: each policy runs its own stream in which its restricted attention feeds the
  next layer and frame (deployment); adds ``drift``, the relative L2 error of the final hidden
  states against the full-attention stream;
* ``--sweep``: teacher-forced, each policy's budget knob varied (ReSV margin, ReKV k frames,
  window frames): recall and output error against tokens attended, to compare at equal budgets.
  Writes ``build/sweep.csv`` and ``build/sweep.png``.

Printed columns: recall (mean over frames, layers, heads), output error (relative L2), tokens
attended per head and frame (mean, and the min..max over layers and heads of the per-head mean),
KB fetched per frame and KB held on chip at the end (all layers and heads, byte model of
:mod:`model.metrics`), clusters per head at the end (ReSV) and ms per frame spent in the policy
(retrieve + add_frame, all layers).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.baselines import FullAttention, KVPolicy, ReKVFrames, SlidingWindow
from model.llm import KVStore, LLMConfig, TinyLLM, frame_attention, group_mean_query
from model.metrics import output_error_per_head, past_recall_per_head, relative_l2
from model.resv import ReSVCache, ReSVConfig
from model.video import PatchEmbedding, VideoError, open_video

ROOT = Path(__file__).resolve().parent.parent

PolicyFactory = Callable[[], KVPolicy]


@dataclass
class Stats:
    """Per-policy accumulators over frames >= 1."""

    recall: list[list[float]] = field(default_factory=list)  # [layer*head] lists over frames
    error: list[list[float]] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    fetched: list[int] = field(default_factory=list)  # bytes per frame, all layers
    onchip: int = 0
    clusters: float | None = None
    seconds: float = 0.0
    frames: int = 0
    drift: list[float] = field(default_factory=list)

    def add(self, slot: int, recall: float, error: float, tokens: int):
        while len(self.recall) <= slot:
            self.recall.append([])
            self.error.append([])
            self.tokens.append([])
        self.recall[slot].append(recall)
        self.error[slot].append(error)
        self.tokens[slot].append(tokens)

    def row(self) -> dict:
        def mean(xs):
            return sum(xs) / len(xs) if xs else float("nan")

        per_head_tokens = [mean(t) for t in self.tokens]
        return {
            "recall": mean([x for r in self.recall for x in r]),
            "error": mean([x for r in self.error for x in r]),
            "tokens": mean(per_head_tokens),
            "tokens_min": min(per_head_tokens, default=float("nan")),
            "tokens_max": max(per_head_tokens, default=float("nan")),
            "fetched_kb": mean(self.fetched) / 1024,
            "onchip_kb": self.onchip / 1024,
            "clusters": self.clusters,
            "ms": 1000 * self.seconds / max(self.frames, 1),
            "drift": mean(self.drift) if self.drift else None,
        }


def evaluate_layer(
    stats: Stats, policy: KVPolicy, layer: int, trace, ids, out, ref_probs, ref_out, q_per_kv
):
    """Metrics of one layer's selection ``ids`` (per KV head) and restricted output ``out``."""
    n_past = trace.k_past.shape[1]
    if n_past == 0:
        return 0
    recalls = past_recall_per_head(ref_probs, n_past, ids, q_per_kv)
    errors = output_error_per_head(out, ref_out, q_per_kv)
    h = len(ids)
    for head in range(h):
        stats.add(layer * h + head, recalls[head], errors[head], len(ids[head]))
    return policy.memory().fetched_bytes


def finish_policy(stats: Stats, policies: list[KVPolicy]):
    stats.onchip = sum(p.memory().onchip_bytes for p in policies)
    if isinstance(policies[0], ReSVCache):
        heads = [h.n_clusters for p in policies for h in p.heads]
        stats.clusters = sum(heads) / len(heads)


def progress(t: int, n: int, what: str):
    """Per-frame counter on stderr (one updating line on a terminal, else every 16 frames)."""
    if sys.stderr.isatty():
        end = "" if t + 1 < n else "\n"
        print(f"\r[bench] {what}: frame {t + 1}/{n}", end=end, file=sys.stderr, flush=True)
    elif (t + 1) % 16 == 0 or t + 1 == n:
        print(f"[bench] {what}: frame {t + 1}/{n}", file=sys.stderr, flush=True)


def run_teacher_forced(llm, embed, video, grid, factories: dict[str, PolicyFactory]):
    """One exact stream; every policy evaluated on it.  Returns {name: Stats}."""
    cfg = llm.cfg
    store = KVStore(cfg)
    policies = {name: [f() for _ in range(cfg.layers)] for name, f in factories.items()}
    stats = {name: Stats() for name in factories}
    n = len(video)
    for t in range(n):
        progress(t, n, "teacher-forced")
        _, traces = llm.prefill_frame(embed(video.frame(t)), grid, store)
        fetched = dict.fromkeys(factories, 0)
        for li, tr in enumerate(traces):
            ref_out, ref_probs = frame_attention(tr.q, tr.k_past, tr.v_past, tr.k, tr.v, None, True)
            query = group_mean_query(tr.q, cfg.q_per_kv)
            for name, layer_policies in policies.items():
                pol, st = layer_policies[li], stats[name]
                t0 = time.perf_counter()
                ids = pol.retrieve(query)
                st.seconds += time.perf_counter() - t0
                out = frame_attention(tr.q, tr.k_past, tr.v_past, tr.k, tr.v, ids)
                fetched[name] += evaluate_layer(
                    st, pol, li, tr, ids, out, ref_probs, ref_out, cfg.q_per_kv
                )
                t0 = time.perf_counter()
                pol.add_frame(tr.k, tr.v, grid)
                st.seconds += time.perf_counter() - t0
        for name, st in stats.items():
            st.frames += 1
            if t > 0:
                st.fetched.append(fetched[name])
    for name, st in stats.items():
        finish_policy(st, policies[name])
    return stats


def run_free_running(llm, embed, video, grid, factories: dict[str, PolicyFactory]):
    """One stream per policy, its restricted attention feeding forward.  Returns {name: Stats}."""
    cfg = llm.cfg
    tokens = [embed(video.frame(t)) for t in range(len(video))]
    reference: list[torch.Tensor] = []
    stats = {}
    full_store = KVStore(cfg)
    for t, x in enumerate(tokens):
        progress(t, len(tokens), "free-running: full attention reference")
        reference.append(llm.prefill_frame(x, grid, full_store)[0])
    for name, factory in factories.items():
        st = stats[name] = Stats()
        policies = [factory() for _ in range(cfg.layers)]
        store = KVStore(cfg)

        def select(li, q, k, v, policies=policies, st=st):
            t0 = time.perf_counter()
            ids = policies[li].retrieve(group_mean_query(q, cfg.q_per_kv))
            st.seconds += time.perf_counter() - t0
            return ids

        for t, x in enumerate(tokens):
            progress(t, len(tokens), f"free-running: {name}")
            hidden, traces = llm.prefill_frame(x, grid, store, select)
            fetched = 0
            for li, tr in enumerate(traces):
                ref_out, ref_probs = frame_attention(
                    tr.q, tr.k_past, tr.v_past, tr.k, tr.v, None, True
                )
                fetched += evaluate_layer(
                    st, policies[li], li, tr, tr.past_ids, tr.out, ref_probs, ref_out, cfg.q_per_kv
                )
                t0 = time.perf_counter()
                policies[li].add_frame(tr.k, tr.v, grid)
                st.seconds += time.perf_counter() - t0
            st.frames += 1
            if t > 0:
                st.fetched.append(fetched)
                st.drift.append(relative_l2(hidden, reference[t]))
        finish_policy(st, policies)
    return stats


def format_table(rows: list[tuple[str, dict]]) -> str:
    drift = any(r["drift"] is not None for _, r in rows)
    head = (
        f"{'policy':<28} {'recall':>7} {'out err':>8} {'tokens/head':>11} {'head spread':>13} "
        f"{'fetch KB/fr':>11} {'on-chip KB':>10} {'clusters':>8} {'ms/frame':>8}"
        + (f" {'drift':>7}" if drift else "")
    )
    lines = [head, "-" * len(head)]
    for name, r in rows:
        clusters = f"{r['clusters']:.0f}" if r["clusters"] is not None else "-"
        spread = f"{r['tokens_min']:.0f}..{r['tokens_max']:.0f}"
        line = (
            f"{name:<28} {r['recall']:>7.4f} {r['error']:>8.4f} {r['tokens']:>11.0f} "
            f"{spread:>13} {r['fetched_kb']:>11.1f} {r['onchip_kb']:>10.1f} {clusters:>8} "
            f"{r['ms']:>8.1f}"
        )
        if drift:
            line += f" {r['drift']:>7.4f}" if r["drift"] is not None else f" {'-':>7}"
        lines.append(line)
    return "\n".join(lines)


def parse_grid(text: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grid expects HxW, e.g. 14x14; got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"--grid {text}: both sides must be >= 1")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m model.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--grid", type=parse_grid, default=(14, 14), help="token grid HxW (14x14)")
    ap.add_argument("--seed", type=int, default=0, help="video, embedding and weights seed")
    ap.add_argument("--video", default=None, help="folder of PNG/JPEG frames or .npy (synthetic)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--q-per-kv", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rope", choices=("mrope", "1d"), default="mrope")
    ap.add_argument("--qk-gain", type=float, default=LLMConfig.qk_gain)
    d = ReSVConfig()
    ap.add_argument("--tau-t", type=float, default=d.tau_t)
    ap.add_argument("--tau-s", type=float, default=d.tau_s)
    ap.add_argument("--margin", type=float, default=d.margin)
    ap.add_argument("--k-min", type=int, default=d.k_min)
    ap.add_argument("--k-max", type=int, default=d.k_max)
    ap.add_argument("--table-size", type=int, default=d.table_size)
    ap.add_argument("--sinks", type=int, default=d.n_sink, help="attention sinks (all policies)")
    ap.add_argument("--window", type=int, default=d.window_frames, help="ReSV/ReKV window frames")
    ap.add_argument("--sw-window", type=int, default=4, help="sliding-window baseline frames")
    ap.add_argument("--rekv-k", type=int, default=4, help="ReKV frames retrieved")
    ap.add_argument("--free-running", action="store_true", help="see the module docstring")
    ap.add_argument("--sweep", action="store_true", help="recall vs tokens at equal budgets")
    ap.add_argument("--quick", action="store_true", help="8 frames, 8x8 grid, small model")
    ap.add_argument("--out", type=Path, default=ROOT / "build", help="sweep CSV/PNG folder")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.frames, args.grid, args.head_dim = 8, (8, 8), 32
    try:
        llm_cfg = LLMConfig(
            layers=args.layers,
            kv_heads=args.kv_heads,
            q_per_kv=args.q_per_kv,
            head_dim=args.head_dim,
            d_model=args.kv_heads * args.q_per_kv * args.head_dim,
            mlp_hidden=2 * args.kv_heads * args.q_per_kv * args.head_dim,
            rope=args.rope,
            qk_gain=args.qk_gain,
            seed=args.seed,
        )
        resv_cfg = ReSVConfig(
            tau_t=args.tau_t,
            tau_s=args.tau_s,
            margin=args.margin,
            k_min=args.k_min,
            k_max=args.k_max,
            n_sink=args.sinks,
            window_frames=args.window,
            table_size=args.table_size,
        )
        if args.frames < 2:
            raise ValueError(f"--frames={args.frames} must be >= 2 (frame 0 has no past)")
        video = open_video(args.video, frames=args.frames, seed=args.seed)
    except (ValueError, VideoError) as exc:  # ConfigError and VideoError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    llm = TinyLLM(llm_cfg)
    embed = PatchEmbedding(args.grid, llm_cfg.d_model, patch=8, seed=args.seed)
    h, dh = llm_cfg.kv_heads, llm_cfg.head_dim
    print(
        f"# frames={len(video)} grid={args.grid[0]}x{args.grid[1]} seed={args.seed} "
        f"video={args.video or 'synthetic'} | LLM layers={llm_cfg.layers} kv_heads={h} "
        f"q_per_kv={llm_cfg.q_per_kv} head_dim={dh} rope={llm_cfg.rope} "
        f"qk_gain={llm_cfg.qk_gain} | ReSV {resv_cfg}"
    )
    if args.sweep:
        return sweep(args, llm, embed, video, resv_cfg)
    s, w = args.sinks, args.window
    factories = {
        "full": lambda: FullAttention(h, dh),
        f"window(sink={s},W={args.sw_window})": lambda: SlidingWindow(h, dh, s, args.sw_window),
        f"rekv(k={args.rekv_k},W={w})": lambda: ReKVFrames(h, dh, args.rekv_k, s, w),
        f"resv(m={resv_cfg.margin:g},W={w})": lambda: ReSVCache(resv_cfg, h, dh),
    }
    t0 = time.perf_counter()
    run = run_free_running if args.free_running else run_teacher_forced
    stats = run(llm, embed, video, args.grid, factories)
    mode = "free-running" if args.free_running else "teacher-forced"
    print(f"# mode={mode}, wall {time.perf_counter() - t0:.1f} s")
    print(format_table([(name, st.row()) for name, st in stats.items()]))
    return 0


SWEEP_MARGINS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
SWEEP_REKV_K = (1, 2, 4, 8, 16, 32)
SWEEP_WINDOW = (1, 2, 4, 8, 16, 32)


def sweep(args, llm, embed, video, resv_cfg: ReSVConfig) -> int:
    h, dh, s, w = llm.cfg.kv_heads, llm.cfg.head_dim, args.sinks, args.window
    factories: dict[str, PolicyFactory] = {}
    knobs: dict[str, tuple[str, str, float]] = {}
    for m in SWEEP_MARGINS:
        cfg = resv_cfg.replace(margin=m)
        factories[f"resv(m={m:g})"] = lambda cfg=cfg: ReSVCache(cfg, h, dh)
        knobs[f"resv(m={m:g})"] = ("resv", "margin", m)
    for k in SWEEP_REKV_K:
        factories[f"rekv(k={k})"] = lambda k=k: ReKVFrames(h, dh, k, s, w)
        knobs[f"rekv(k={k})"] = ("rekv", "k", k)
    for wf in SWEEP_WINDOW:
        factories[f"window(W={wf})"] = lambda wf=wf: SlidingWindow(h, dh, s, wf)
        knobs[f"window(W={wf})"] = ("window", "window_frames", wf)
    t0 = time.perf_counter()
    stats = run_teacher_forced(llm, embed, video, args.grid, factories)
    print(f"# sweep, teacher-forced, wall {time.perf_counter() - t0:.1f} s")
    rows = [(name, st.row()) for name, st in stats.items()]
    print(format_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = args.out / "sweep.csv", args.out / "sweep.png"
    with csv_path.open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["policy", "knob", "value", "tokens", "recall", "error", "fetched_kb"])
        for name, r in rows:
            pol, knob, value = knobs[name]
            figures = (r["tokens"], r["recall"], r["error"], r["fetched_kb"])
            wr.writerow([pol, knob, value, *(f"{x:.5g}" for x in figures)])
    plot(rows, knobs, png_path, f"{len(video)} frames, grid {args.grid[0]}x{args.grid[1]}")
    print(f"# wrote {csv_path} and {png_path}")
    return 0


def plot(rows, knobs, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for pol, marker in (("resv", "o"), ("rekv", "s"), ("window", "^")):
        pts = sorted((r["tokens"], r["recall"], r["error"]) for n, r in rows if knobs[n][0] == pol)
        xs = [p[0] for p in pts]
        axes[0].plot(xs, [p[1] for p in pts], marker=marker, label=pol)
        axes[1].plot(xs, [p[2] for p in pts], marker=marker, label=pol)
    for ax, ylabel in zip(axes, ("attention recall", "relative L2 output error"), strict=True):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("past tokens attended per head and frame")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"Recall and error at equal token budgets ({title})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
