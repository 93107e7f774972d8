"""KV traces on disk: per layer and KV head, the keys and retrieval queries of a streamed video.

Written by ``python -m model.hf_stream --dump-trace DIR`` (a real model's keys) and read by
:func:`model.dre.top.integer_stream`, so ``python -m verif.sim_dre --frames-folder DIR`` drives
the DRE RTL with them instead of the TinyLLM's.  No dependency beyond NumPy.

A trace is a folder holding ``trace.json`` and two ``float32`` ``.npy`` arrays per layer ``L``
and KV head ``H`` (both counted from 0, written ``keys-l{L:02d}-h{H:02d}.npy``):

* ``keys-lLL-hHH.npy`` ``[T, P, d]``: the keys of each frame's ``P = h * w`` visual tokens in
  raster order, after RoPE (what attention and retrieval read);
* ``queries-lLL-hHH.npy`` ``[T, Q, d]``: ``Q`` retrieval queries per frame, after RoPE: row 0 is
  the group-mean query (the mean over the KV head's query heads and the frame's tokens), rows
  ``1 .. Q-1`` single query tokens of the group's first query head (tokens drawn by a seeded
  generator) -- the same queries :func:`model.dre.top.integer_stream` forms from the TinyLLM.

``trace.json``: ``{"format": "vrex-kv-trace", "version": 1, "frames": T, "grid": [h, w],
"layers": L, "kv_heads": H, "head_dim": d, "queries": Q, "source": {...}}`` (``source``: free-form
provenance: model, video, policy).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

FORMAT = "vrex-kv-trace"
VERSION = 1
MANIFEST = "trace.json"


class TraceError(ValueError):
    """A trace folder is missing, malformed, or does not fit the request (one readable line)."""


def _name(kind: str, layer: int, head: int) -> str:
    return f"{kind}-l{layer:02d}-h{head:02d}.npy"


def is_trace(path) -> bool:
    """Whether ``path`` is a trace folder (holds ``trace.json``) or a ``trace.json`` file."""
    if path is None:
        return False
    p = Path(path)
    return (p.is_dir() and (p / MANIFEST).is_file()) or (p.is_file() and p.name == MANIFEST)


def group_queries(
    q: torch.Tensor, kv_heads: int, n_queries: int, gen: torch.Generator
) -> torch.Tensor:
    """Retrieval queries ``[H, Q, d]`` of one frame from its queries ``[Hq, P, d]`` (see the
    module docstring); the token picks are drawn once for all heads from ``gen``."""
    hq, p, d = q.shape
    g = hq // kv_heads
    picks = torch.randint(0, p, (n_queries - 1,), generator=gen)
    qg = q.reshape(kv_heads, g, p, d)
    mean = qg.reshape(kv_heads, g * p, d).mean(dim=1, keepdim=True)
    return torch.cat([mean, qg[:, 0, picks]], dim=1)


class TraceWriter:
    """Collects frames, writes the trace folder on :meth:`close`."""

    def __init__(
        self,
        folder,
        *,
        layers: int,
        kv_heads: int,
        head_dim: int,
        queries: int = 4,
        seed: int = 0,
        source: dict | None = None,
    ):
        if queries < 1:
            raise TraceError(f"queries={queries} must be >= 1")
        self.folder = Path(folder)
        self.layers, self.kv_heads, self.head_dim, self.queries = (
            layers,
            kv_heads,
            head_dim,
            queries,
        )
        self.source = source or {}
        self.grid: tuple[int, int] | None = None
        self.gen = torch.Generator().manual_seed(seed)
        self.keys: list[list[np.ndarray]] = [[] for _ in range(layers)]  # per layer: [H, P, d]
        self.qs: list[list[np.ndarray]] = [[] for _ in range(layers)]  # per layer: [H, Q, d]

    def add_frame(self, keys: list[torch.Tensor], queries: list[torch.Tensor], grid) -> None:
        """One frame: per layer, keys ``[H, P, d]`` and queries ``[Hq, P, d]`` (after RoPE)."""
        grid = (int(grid[0]), int(grid[1]))
        if self.grid is not None and grid != self.grid:
            raise TraceError(f"grid changed from {self.grid} to {grid} mid-stream")
        self.grid = grid
        picks_gen = self.gen  # one draw per frame, shared by all layers
        state = picks_gen.get_state()
        for li in range(self.layers):
            picks_gen.set_state(state)
            qs = group_queries(
                queries[li].detach().float().cpu(), self.kv_heads, self.queries, picks_gen
            )
            self.keys[li].append(keys[li].detach().float().cpu().numpy())
            self.qs[li].append(qs.numpy())

    @property
    def frames(self) -> int:
        return len(self.keys[0])

    def close(self) -> Path:
        if self.frames == 0:
            raise TraceError("no frames to write")
        self.folder.mkdir(parents=True, exist_ok=True)
        for li in range(self.layers):
            k = np.stack(self.keys[li], axis=1)  # [H, T, P, d]
            q = np.stack(self.qs[li], axis=1)  # [H, T, Q, d]
            for h in range(self.kv_heads):
                np.save(self.folder / _name("keys", li, h), np.ascontiguousarray(k[h]))
                np.save(self.folder / _name("queries", li, h), np.ascontiguousarray(q[h]))
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "frames": self.frames,
            "grid": list(self.grid),
            "layers": self.layers,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "queries": self.queries,
            "source": self.source,
        }
        (self.folder / MANIFEST).write_text(json.dumps(meta, indent=1) + "\n")
        return self.folder


def read_meta(path) -> dict:
    p = Path(path)
    folder = p.parent if p.name == MANIFEST and p.is_file() else p
    try:
        meta = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise TraceError(f"{folder}: not a readable KV trace ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise TraceError(
            f"{folder}: trace format {meta.get('format')!r} version {meta.get('version')!r}; "
            f"expected {FORMAT!r} version {VERSION}"
        )
    meta["folder"] = str(folder)
    return meta


def load_head(path, layer: int, head: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """``(meta, keys [T, P, d], queries [T, Q, d])`` (float64) of one layer and KV head."""
    meta = read_meta(path)
    if not 0 <= layer < meta["layers"]:
        raise TraceError(f"layer={layer}; the trace has layers 0 .. {meta['layers'] - 1}")
    if not 0 <= head < meta["kv_heads"]:
        raise TraceError(f"head={head}; the trace has KV heads 0 .. {meta['kv_heads'] - 1}")
    folder = Path(meta["folder"])
    out = []
    for kind in ("keys", "queries"):
        f = folder / _name(kind, layer, head)
        try:
            arr = np.load(f, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise TraceError(f"{f}: not a readable .npy array ({exc})") from None
        out.append(torch.from_numpy(arr).double())
    keys, queries = out
    t, (gh, gw), d = meta["frames"], meta["grid"], meta["head_dim"]
    if keys.shape != (t, gh * gw, d) or queries.shape != (t, meta["queries"], d):
        raise TraceError(
            f"{folder}: arrays {tuple(keys.shape)} / {tuple(queries.shape)} do not match "
            f"trace.json ({t} frames of {gh}x{gw} tokens, head_dim {d}, {meta['queries']} queries)"
        )
    return meta, keys, queries
