"""Stream a video through a local Qwen2-VL model with retrieval policies, print model.bench's table.

``python -m model.hf_stream --model DIR --video PATH --policy resv --budget 980 [--question T]``

Loads a ``save_pretrained`` Qwen2-VL folder (weights on disk; ``--make-tiny DIR`` writes a tiny
random one to try it), reads ``--frames`` video frames (what ``model.bench --video`` takes: a
folder of PNG/JPEG frames, a ``.npy`` array, ``synthetic`` or ``photos``), and streams them with
:class:`model.hf.StreamSession`: every ``temporal_patch_size`` consecutive frames (2 for Qwen2-VL)
form one frame step of ``h x w`` tokens (``--grid``), pushed through the model's vision tower and
prefilled into its KV cache.

Each policy of ``--policy`` runs its own stream (free-running: its restricted attention feeds
the next layer and frame step), after a full-attention stream that is the reference.  At every
layer and frame step the policy's selection is scored against exact attention on the same
queries, keys and values (:mod:`model.metrics`), as in ``python -m model.bench --free-running``;
the table has model.bench's columns (recall, output error, tokens attended per head, KB fetched
per frame, KB on chip, clusters, ms per frame in the policy, drift of the final hidden states
against the full stream).  The first frame step has no visual past and is left out.  Policies
are matched at ``--budget`` past tokens per head and frame besides sinks and window
(:func:`model.hf.policy_factory`).  Past text tokens (the prompt) are always attended and count
in ``tokens``; the byte columns count visual tokens only.

``--question TEXT`` asks every stream the question after the last frame and prints each greedy
answer.  ``--dump-trace DIR`` writes the keys and retrieval queries of the first policy's stream,
per layer and KV head, as a KV trace (:mod:`model.kv_trace`) that ``python -m verif.sim_dre
--frames-folder DIR --grid HxW --set d=HEAD_DIM`` drives through the DRE RTL.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from model.bench import Stats, evaluate_layer, finish_policy, format_table, parse_grid
from model.llm import frame_attention
from model.metrics import relative_l2
from model.resv import ReSVConfig
from model.video import open_video


def parse_policy_list(text: str) -> tuple[str, ...]:
    from model.hf import POLICIES

    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = sorted(set(names) - set(POLICIES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--policy {text!r}: choose from {','.join(POLICIES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m model.hf_stream", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--model", type=Path, help="a local Qwen2-VL folder (save_pretrained)")
    ap.add_argument(
        "--video",
        default=None,
        help="folder of PNG/JPEG frames, .npy array, 'synthetic' (default) or 'photos'",
    )
    ap.add_argument("--frames", type=int, default=16, help="video frames to read (default 16)")
    ap.add_argument(
        "--fps", type=float, default=2.0, help="video frame rate (Qwen2.5-VL temporal positions)"
    )
    ap.add_argument("--grid", type=parse_grid, default=(14, 14), help="tokens per frame HxW")
    ap.add_argument(
        "--policy",
        type=parse_policy_list,
        default=("full", "window", "rekv", "resv", "oracle"),
        help="comma-separated: full,window,rekv,resv,oracle (default all)",
    )
    ap.add_argument("--budget", type=int, default=980, help="past tokens per head and frame")
    ap.add_argument("--sinks", type=int, default=4, help="attention sinks (visual tokens)")
    ap.add_argument("--window", type=int, default=1, help="local window frames")
    ap.add_argument("--tau-t", type=float, default=ReSVConfig.tau_t, help="ReSV temporal tau")
    ap.add_argument("--tau-s", type=float, default=ReSVConfig.tau_s, help="ReSV spatial tau")
    ap.add_argument("--table-size", type=int, default=ReSVConfig.table_size)
    ap.add_argument(
        "--summaries",
        action=argparse.BooleanOptionalAction,
        default=ReSVConfig.summaries,
        help="ReSV: attend unselected clusters through merged tokens",
    )
    ap.add_argument("--question", default=None, help="ask each stream this after the last frame")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--dump-trace", type=Path, default=None, metavar="DIR", help="KV trace out")
    ap.add_argument("--trace-queries", type=int, default=4, help="retrieval queries per frame")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--seed", type=int, default=0, help="synthetic video and trace query picks")
    ap.add_argument(
        "--make-tiny",
        type=Path,
        default=None,
        metavar="DIR",
        help="write a tiny random Qwen2-VL with a tokenizer to DIR and exit",
    )
    return ap


def head_dim(text_config) -> int:
    hd = getattr(text_config, "head_dim", None)
    return hd or text_config.hidden_size // text_config.num_attention_heads


def row_name(name: str, session, args, resv_cfg: ReSVConfig) -> str:
    pol = session.policies[0]
    if name == "window":
        return f"window(sink={args.sinks},W={pol.ledger.window_frames})"
    if name == "rekv":
        return f"rekv(k={pol.k},W={args.window})"
    if name == "resv":
        return f"{pol.cfg.label()}@{args.budget}"
    if name == "oracle":
        return f"oracle(B={args.budget})"
    return name


def stream_policy(model, tok, steps, args, name, resv_cfg, reference, writer=None):
    """Run one policy's stream; returns (Stats, session, final hidden states per step)."""
    from model.hf import StreamSession, policy_factory

    per_frame = args.grid[0] * args.grid[1]
    factory = policy_factory(
        name,
        budget=args.budget,
        tokens_per_frame=per_frame,
        n_sink=args.sinks,
        window_frames=args.window,
        resv=resv_cfg,
    )
    session = StreamSession(model, factory, tokenizer=tok, record=True, fps=args.fps)
    st, hidden = Stats(), []
    g = session.q_heads // session.kv_heads
    for t, frames in enumerate(steps):
        h = session.push_frame(frames, args.grid).float().cpu()
        hidden.append(h)
        traces = [on_cpu(tr) for tr in session.last_traces]  # the metrics index on the CPU
        if writer is not None:
            writer.add_frame([tr.k for tr in traces], [tr.q for tr in traces], args.grid)
        if t == 0:
            continue
        fetched = 0
        for li, tr in enumerate(traces):
            ref_out, ref_probs = frame_attention(tr.q, tr.k_past, tr.v_past, tr.k, tr.v, None, True)
            fetched += evaluate_layer(
                st, session.policies[li], li, tr, tr.past_ids, tr.out, ref_probs, ref_out, g
            )
        st.fetched.append(fetched)
        if reference is not None:
            st.drift.append(relative_l2(h, reference[t]))
        progress(t, len(steps), name)
    st.frames = len(steps)
    st.seconds = session.policy_seconds
    finish_policy(st, session.policies)
    return st, session, hidden


def on_cpu(trace):
    """A CPU copy of a :class:`model.hf.StepTrace` (the model may run on a GPU)."""
    from dataclasses import fields, replace

    def cpu(x):
        if isinstance(x, torch.Tensor):
            return x.detach().cpu()
        if isinstance(x, list | tuple):
            return type(x)(cpu(y) for y in x)
        return x

    return replace(trace, **{f.name: cpu(getattr(trace, f.name)) for f in fields(trace)})


def progress(t: int, n: int, what: str):
    if sys.stderr.isatty():
        end = "" if t + 1 < n else "\n"
        print(f"\r[hf_stream] {what}: frame step {t + 1}/{n}", end=end, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from model.hf import HFError, load_model, save_tiny
        from model.kv_trace import TraceError, TraceWriter
        from model.video import VideoError

        if args.make_tiny is not None:
            save_tiny(args.make_tiny, seed=args.seed)
            print(f"# wrote a tiny random Qwen2-VL and its tokenizer to {args.make_tiny}")
            return 0
        if args.model is None:
            raise HFError("--model DIR is required (a local Qwen2-VL folder)")
        for name in ("frames", "max_new_tokens", "trace_queries"):
            if getattr(args, name) < 1:
                raise HFError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
        if args.budget < 0:
            raise HFError(f"--budget={args.budget} must be >= 0")
        if not args.fps > 0:
            raise HFError(f"--fps={args.fps} must be > 0")
        resv_cfg = ReSVConfig(
            tau_t=args.tau_t,
            tau_s=args.tau_s,
            table_size=args.table_size,
            summaries=args.summaries,
            n_sink=args.sinks,
            window_frames=args.window,
            budget=args.budget,
        )
        model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
        tp = model.config.vision_config.temporal_patch_size
        video = open_video(args.video, frames=args.frames, seed=args.seed)
        n = min(args.frames, len(video))
        steps = [
            torch.stack([video.frame(i) for i in range(s, min(s + tp, n))]) for s in range(0, n, tp)
        ]
        if len(steps) < 2:
            raise HFError(
                f"{n} video frames make {len(steps)} frame step(s) of {tp} frames; "
                f"need >= 2 (frame step 0 has no visual past)"
            )
        if args.question is not None and tok is None:
            raise HFError(f"{args.model}: --question needs a tokenizer in the model folder")
        writer = None
        if args.dump_trace is not None:
            text = model.config.text_config
            writer = TraceWriter(
                args.dump_trace,
                layers=text.num_hidden_layers,
                kv_heads=text.num_key_value_heads,
                head_dim=head_dim(text),
                queries=args.trace_queries,
                seed=args.seed,
                source={
                    "model": str(args.model),
                    "video": str(args.video or "synthetic"),
                    "policy": args.policy[0],
                    "budget": args.budget,
                },
            )
    except (HFError, VideoError, TraceError, ValueError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    text = model.config.text_config
    print(
        f"# model={args.model} ({model.config.model_type}: layers={text.num_hidden_layers} "
        f"kv_heads={text.num_key_value_heads} q_heads={text.num_attention_heads} "
        f"head_dim={head_dim(text)} dtype={model.dtype} "
        f"device={args.device}) | video={args.video or 'synthetic'} frames={n} "
        f"steps={len(steps)} x {tp} frames grid={args.grid[0]}x{args.grid[1]} | "
        f"budget={args.budget} sinks={args.sinks} window={args.window} | ReSV {resv_cfg}"
    )
    t0 = time.perf_counter()
    names = ["full", *[p for p in args.policy if p != "full"]]
    rows, sessions, reference = [], {}, None
    for name in names:
        dump = writer if name == args.policy[0] else None
        st, session, hidden = stream_policy(
            model, tok, steps, args, name, resv_cfg, reference, dump
        )
        if name == "full":
            reference = hidden
            st.drift = [0.0] * (len(steps) - 1)
        sessions[name] = session
        if name in args.policy or name == "full":
            rows.append((row_name(name, session, args, resv_cfg), st.row()))
    print(f"# mode=free-running (model.hf), wall {time.perf_counter() - t0:.1f} s")
    print(format_table(rows))
    if writer is not None:
        path = writer.close()
        print(
            f"# wrote the KV trace of the {args.policy[0]} stream to {path} ({writer.frames} "
            f"frames): python -m verif.sim_dre --frames-folder {path} --grid "
            f"{args.grid[0]}x{args.grid[1]} --set d={writer.head_dim}"
        )
    if args.question is not None:
        print(f"# question: {args.question!r} (greedy, at most {args.max_new_tokens} tokens)")
        for name in names:
            ans = sessions[name].ask(args.question, args.max_new_tokens)
            print(f"answer {name:<7} ({len(ans.ids)} tokens): {ans.text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
