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

from model.baselines import FullAttention, KVPolicy, OracleTopB, ReKVFrames, SlidingWindow
from model.llm import KVStore, LLMConfig, TinyLLM, frame_attention
from model.metrics import output_error_per_head, past_recall_per_head, relative_l2
from model.resv import SCORES, ReSVCache, ReSVConfig
from model.video import PatchEmbedding, open_video

ROOT = Path(__file__).resolve().parent.parent

PolicyFactory = Callable[[], KVPolicy]

# The policies of the matched-budget table (--budgets), in the order they are printed.
BUDGET_POLICIES = ("full", "window", "rekv", "resv", "resv2", "oracle")


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


def merged_tokens(policy: KVPolicy):
    """ReSV's cluster summaries of its last retrieval, when it keeps them (else None)."""
    cfg = getattr(policy, "cfg", None)
    return policy.last_summaries if cfg is not None and cfg.summaries else None


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
            for name, layer_policies in policies.items():
                pol, st = layer_policies[li], stats[name]
                t0 = time.perf_counter()
                ids = pol.retrieve(tr.q)
                st.seconds += time.perf_counter() - t0
                merged = merged_tokens(pol)
                if merged is None and all(len(x) == tr.k_past.shape[1] for x in ids):
                    out = ref_out  # every past token: exact attention, already computed
                else:
                    out = frame_attention(
                        tr.q, tr.k_past, tr.v_past, tr.k, tr.v, ids, merged=merged
                    )
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
            ids = policies[li].retrieve(q)
            st.seconds += time.perf_counter() - t0
            return ids, merged_tokens(policies[li])

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


def parse_policies(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = sorted(set(names) - set(BUDGET_POLICIES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--policies {text!r}: choose from {','.join(BUDGET_POLICIES)}"
        )
    return tuple(p for p in BUDGET_POLICIES if p in names)


def parse_budgets(text: str) -> list[int]:
    try:
        budgets = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--budgets expects comma-separated token counts, e.g. 392,980,2940; got {text!r}"
        ) from None
    if not budgets or min(budgets) < 1:
        raise argparse.ArgumentTypeError(f"--budgets {text}: each budget must be >= 1 token")
    return budgets


QUICK = {"frames": 8, "grid": (8, 8), "head_dim": 32}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m model.bench",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--frames", type=int, default=64, help="frames to stream")
    ap.add_argument("--grid", type=parse_grid, default=(14, 14), help="token grid HxW")
    ap.add_argument("--seed", type=int, default=0, help="video, embedding and weights seed")
    ap.add_argument(
        "--video",
        default="synthetic",
        help="'synthetic', 'photos' (scikit-image's bundled photographs), a folder of "
        "PNG/JPEG frames or a .npy array",
    )
    ap.add_argument("--layers", type=int, default=2, help="LLM layers")
    ap.add_argument("--kv-heads", type=int, default=2, help="KV heads per layer")
    ap.add_argument("--q-per-kv", type=int, default=2, help="query heads per KV head")
    ap.add_argument("--head-dim", type=int, default=64, help="head dimension d")
    ap.add_argument("--rope", choices=("mrope", "1d"), default="mrope", help="rotary embedding")
    ap.add_argument("--qk-gain", type=float, default=LLMConfig.qk_gain, help="attention peaking")
    d = ReSVConfig()
    g = ap.add_argument_group("ReSV (see model/resv.py ReSVConfig)")
    g.add_argument("--tau-t", type=float, default=d.tau_t, help="temporal cosine threshold")
    g.add_argument("--tau-s", type=float, default=d.tau_s, help="spatial cosine threshold")
    g.add_argument("--table-size", type=int, default=d.table_size, help="centroid table entries")
    g.add_argument("--rule", choices=("budget", "margin"), default=d.rule, help="retrieval rule")
    g.add_argument("--budget", type=int, default=d.budget, help="tokens per head and frame")
    g.add_argument("--query-vectors", type=int, default=d.query_vectors, help="Q per head")
    g.add_argument("--query-mode", choices=("blocks", "kmeans"), default=d.query_mode)
    g.add_argument("--score", choices=SCORES, default=d.score)
    g.add_argument("--rerank", type=float, default=d.rerank, help="two-stage alpha (0: off)")
    g.add_argument(
        "--summaries",
        action=argparse.BooleanOptionalAction,
        default=d.summaries,
        help="attend unselected clusters through their centroid and mean value",
    )
    g.add_argument("--margin", type=float, default=d.margin, help="margin rule: margin")
    g.add_argument("--k-min", type=int, default=d.k_min, help="margin rule: clusters at least")
    g.add_argument("--k-max", type=int, default=d.k_max, help="margin rule: clusters at most")
    ap.add_argument("--sinks", type=int, default=d.n_sink, help="attention sinks (all policies)")
    ap.add_argument(
        "--window", type=int, default=d.window_frames, help="local window frames (ReSV, ReKV)"
    )
    ap.add_argument("--sw-window", type=int, default=4, help="sliding-window baseline frames")
    ap.add_argument("--rekv-k", type=int, default=4, help="ReKV frames retrieved")
    m = ap.add_argument_group("modes (default: one teacher-forced table)")
    m.add_argument("--free-running", action="store_true", help="see the module docstring")
    m.add_argument(
        "--budgets",
        type=parse_budgets,
        default=None,
        help="matched budgets, e.g. 392,980,2940: every policy at each budget",
    )
    m.add_argument("--sweep", action="store_true", help="recall vs tokens at equal budgets")
    m.add_argument("--quick", action="store_true", help="defaults of 8 frames, 8x8 grid, d 32")
    ap.add_argument("--out", type=Path, default=ROOT / "build", help="sweep CSV/PNG folder")
    ap.add_argument("--csv", type=Path, default=None, help="--budgets: write one row per policy")
    ap.add_argument(
        "--policies",
        type=parse_policies,
        default=BUDGET_POLICIES,
        help="--budgets: the policies to run, comma-separated",
    )
    return ap


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse; ``--quick`` changes the defaults of --frames, --grid and --head-dim only."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.quick:
        ap.set_defaults(**QUICK)
        args = ap.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
            table_size=args.table_size,
            n_sink=args.sinks,
            window_frames=args.window,
            rule=args.rule,
            budget=args.budget,
            query_vectors=args.query_vectors,
            query_mode=args.query_mode,
            score=args.score,
            rerank=args.rerank,
            summaries=args.summaries,
            margin=args.margin,
            k_min=args.k_min,
            k_max=args.k_max,
        )
        if args.frames < 2:
            raise ValueError(f"--frames={args.frames} must be >= 2 (frame 0 has no past)")
        if args.csv is not None and args.budgets is None:
            raise ValueError("--csv writes the --budgets table: give --budgets too")
        video = open_video(args.video, frames=args.frames, seed=args.seed)
        if len(video) < args.frames:
            raise ValueError(
                f"--frames={args.frames} but {args.video} holds only {len(video)} frames"
            )
        for path in [args.csv] if args.csv is not None else []:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.open("a").close()  # fail now, not after the run, if it cannot be written
    except (ValueError, OSError) as exc:  # ConfigError and VideoError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    llm = TinyLLM(llm_cfg)
    embed = PatchEmbedding(args.grid, llm_cfg.d_model, patch=8, seed=args.seed)
    h, dh = llm_cfg.kv_heads, llm_cfg.head_dim
    print(
        f"# frames={len(video)} grid={args.grid[0]}x{args.grid[1]} seed={args.seed} "
        f"video={args.video} | LLM layers={llm_cfg.layers} kv_heads={h} "
        f"q_per_kv={llm_cfg.q_per_kv} head_dim={dh} rope={llm_cfg.rope} "
        f"qk_gain={llm_cfg.qk_gain} | ReSV {resv_cfg}"
    )
    if args.sweep:
        return sweep(args, llm, embed, video, resv_cfg)
    if args.budgets is not None:
        return matched_budgets(args, llm, embed, video, resv_cfg)
    s, w = args.sinks, args.window
    factories = {
        "full": lambda: FullAttention(h, dh),
        f"window(sink={s},W={args.sw_window})": lambda: SlidingWindow(h, dh, s, args.sw_window),
        f"rekv(k={args.rekv_k},W={w})": lambda: ReKVFrames(h, dh, args.rekv_k, s, w),
        f"{resv_cfg.label()}": lambda: ReSVCache(resv_cfg, h, dh),
    }
    if resv_cfg.rule == "budget":
        factories[f"oracle(B={resv_cfg.budget})"] = lambda: OracleTopB(h, dh, resv_cfg.budget, s, w)
    t0 = time.perf_counter()
    run = run_free_running if args.free_running else run_teacher_forced
    stats = run(llm, embed, video, args.grid, factories)
    mode = "free-running" if args.free_running else "teacher-forced"
    print(f"# mode={mode}, wall {time.perf_counter() - t0:.1f} s")
    print(format_table([(name, st.row()) for name, st in stats.items()]))
    return 0


# ---- matched budgets --------------------------------------------------------------------------

RESV2_ALPHA = 2.0  # the two-stage variant pre-selects this many times the budget


def budget_factories(args, h: int, dh: int, per_frame: int, budgets, resv_cfg: ReSVConfig):
    """``{(policy, budget): factory}``: every policy at exactly each budget of past tokens
    besides sinks and window.  ReKV takes ``k = round(B / P)`` whole frames and the window
    baseline ``W = window + k`` frames (exactly ``B`` when ``P`` divides ``B``)."""
    s, w = args.sinks, args.window
    out: dict[tuple[str, int], PolicyFactory] = {("full", 0): lambda: FullAttention(h, dh)}
    for b in budgets:
        k = max(1, round(b / per_frame))
        cfg = resv_cfg.replace(rule="budget", budget=b)
        cfg2 = cfg.replace(rerank=RESV2_ALPHA)
        out["window", b] = lambda k=k: SlidingWindow(h, dh, s, w + k)
        out["rekv", b] = lambda k=k: ReKVFrames(h, dh, k, s, w)
        out["resv", b] = lambda cfg=cfg: ReSVCache(cfg, h, dh)
        out["resv2", b] = lambda cfg=cfg2: ReSVCache(cfg, h, dh)
        out["oracle", b] = lambda b=b: OracleTopB(h, dh, b, s, w)
    return out


def matched_budgets(args, llm, embed, video, resv_cfg: ReSVConfig) -> int:
    h, dh = llm.cfg.kv_heads, llm.cfg.head_dim
    per_frame = args.grid[0] * args.grid[1]
    inexact = [b for b in args.budgets if b % per_frame]
    if inexact:
        print(
            f"# note: ReKV and the window take whole frames of {per_frame} tokens; at "
            f"{', '.join(map(str, inexact))} they attend round(B/{per_frame}) frames (see tokens)"
        )
    factories = budget_factories(args, h, dh, per_frame, args.budgets, resv_cfg)
    factories = {key: f for key, f in factories.items() if key[0] in args.policies}
    named = {f"{p}@{b}": f for (p, b), f in factories.items()}
    t0 = time.perf_counter()
    stats = run_teacher_forced(llm, embed, video, args.grid, named)
    print(f"# matched budgets, teacher-forced, wall {time.perf_counter() - t0:.1f} s")
    rows = {key: stats[f"{key[0]}@{key[1]}"].row() for key in factories}
    nan = {"recall": float("nan"), "error": float("nan")}
    table = []
    for b in args.budgets:
        oracle = rows.get(("oracle", b), nan)["recall"]
        rekv = rows.get(("rekv", b), nan)
        print(f"\n## budget {b} tokens per head and frame (besides sinks and window)")
        lines = [
            f"{'policy':<8} {'recall':>7} {'of oracle':>9} {'out err':>8} {'tokens':>7} "
            f"{'fetch KB/fr':>11} {'on-chip KB':>10} {'vs rekv':>8}"
        ]
        lines.append("-" * len(lines[0]))
        for pol in args.policies:
            r = rows["full", 0] if pol == "full" else rows[pol, b]
            frac = r["recall"] / oracle if oracle > 0 else float("nan")
            diff = r["recall"] - rekv["recall"]
            lines.append(
                f"{pol:<8} {r['recall']:>7.4f} {frac:>9.3f} {r['error']:>8.4f} "
                f"{r['tokens']:>7.0f} {r['fetched_kb']:>11.1f} {r['onchip_kb']:>10.1f} "
                f"{diff:>+8.4f}"
            )
            table.append({"policy": pol, "budget": b, "oracle_frac": frac, **r})
        print("\n".join(lines))
        res = rows.get(("resv", b), nan)
        print(
            f"resv - rekv at {b}: recall {res['recall'] - rekv['recall']:+.4f}, "
            f"output error {res['error'] - rekv['error']:+.4f}"
        )
    if args.csv is not None:
        write_budget_csv(args.csv, table, args)
        print(f"# wrote {args.csv}")
    return 0


CSV_COLUMNS = (
    "policy",
    "budget",
    "recall",
    "out_err",
    "tokens",
    "fetched_kb",
    "onchip_kb",
    "oracle_frac",
    "video",
    "seed",
    "frames",
)


def write_budget_csv(path: Path, table: list[dict], args) -> None:
    with path.open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(CSV_COLUMNS)
        for r in table:
            figures = (r["recall"], r["error"], r["tokens"], r["fetched_kb"], r["onchip_kb"])
            wr.writerow(
                [
                    r["policy"],
                    r["budget"],
                    *(f"{x:.6g}" for x in figures),
                    f"{r['oracle_frac']:.6g}",
                    args.video,
                    args.seed,
                    args.frames,
                ]
            )


# ---- sweep --------------------------------------------------------------------------------------

SWEEP_FRAMES = (1, 2, 4, 8, 16, 32)  # ReKV k, window W; ReSV and oracle at k x P tokens
SWEEP_MARGINS = (0.0, 1.0, 3.0, 6.0)  # ReSV version 1 (margin rule), for reference


def sweep(args, llm, embed, video, resv_cfg: ReSVConfig) -> int:
    h, dh, s, w = llm.cfg.kv_heads, llm.cfg.head_dim, args.sinks, args.window
    per_frame = args.grid[0] * args.grid[1]
    factories: dict[str, PolicyFactory] = {}
    knobs: dict[str, tuple[str, str, float]] = {}
    for k in SWEEP_FRAMES:
        b = k * per_frame
        cfg = resv_cfg.replace(rule="budget", budget=b)
        factories[f"resv(B={b})"] = lambda cfg=cfg: ReSVCache(cfg, h, dh)
        knobs[f"resv(B={b})"] = ("resv", "budget", b)
        factories[f"oracle(B={b})"] = lambda b=b: OracleTopB(h, dh, b, s, w)
        knobs[f"oracle(B={b})"] = ("oracle", "budget", b)
        factories[f"rekv(k={k})"] = lambda k=k: ReKVFrames(h, dh, k, s, w)
        knobs[f"rekv(k={k})"] = ("rekv", "k", k)
        factories[f"window(W={k})"] = lambda k=k: SlidingWindow(h, dh, s, k)
        knobs[f"window(W={k})"] = ("window", "window_frames", k)
    for m in SWEEP_MARGINS:
        cfg = resv_cfg.replace(rule="margin", margin=m)
        factories[f"resv-margin(m={m:g})"] = lambda cfg=cfg: ReSVCache(cfg, h, dh)
        knobs[f"resv-margin(m={m:g})"] = ("resv-margin", "margin", m)
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
    styles = (
        ("oracle", "*", ":"),
        ("resv", "o", "-"),
        ("rekv", "s", "-"),
        ("window", "^", "-"),
        ("resv-margin", "x", "--"),
    )
    for pol, marker, line in styles:
        pts = sorted((r["tokens"], r["recall"], r["error"]) for n, r in rows if knobs[n][0] == pol)
        xs = [p[0] for p in pts]
        axes[0].plot(xs, [p[1] for p in pts], marker=marker, linestyle=line, label=pol)
        axes[1].plot(xs, [p[2] for p in pts], marker=marker, linestyle=line, label=pol)
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
