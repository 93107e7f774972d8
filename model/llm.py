"""A small decoder-only attention stack with RoPE and grouped-query attention, for video prefill.

No video-LLM weights can be downloaded here, so the model under test is a seeded random stack
whose attention is made *content-addressed* and peaked, as trained attention is (see
:class:`LLMConfig`).  What matters for KV-cache retrieval is exposed: per layer and per KV head,
the queries, keys and values of each frame as it is prefilled, and a way to restrict each layer's
attention over the past to a given token subset per KV head.

Shapes (``P`` tokens in the new frame, ``N`` tokens already in the cache):

* queries ``q``: ``[Hq, P, d]`` with ``Hq = kv_heads * q_per_kv``; query head ``g`` reads KV head
  ``g // q_per_kv`` (grouped-query attention);
* keys and values ``k, v``: ``[H, P, d]`` for the new frame, ``[H, N, d]`` in the cache;
* keys and queries are stored *after* RoPE (what attention and retrieval read).

One prefill step (:meth:`TinyLLM.prefill_frame`), per layer: RMSNorm, project to q/k/v, apply
RoPE, ask ``select(layer, q, k, v)`` for the past tokens each KV head may attend to (``None``:
all of them), attend (new tokens see the selected past tokens plus the new frame's tokens
causally, in raster order), append the new k/v to the cache, add the output projection to the
residual stream, then a GELU MLP.  The restricted output is what propagates to the next layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from model.dre.config import ConfigError, check_int


@dataclass(frozen=True)
class LLMConfig:
    """Sizes and the seed of :class:`TinyLLM`.

    layers, kv_heads, q_per_kv, head_dim: L, H, query heads per KV head, d.
    d_model: residual width (``kv_heads * q_per_kv * head_dim`` by default).
    mlp_hidden: hidden width of the per-layer MLP.
    rope: ``"mrope"`` (multimodal RoPE as in Qwen2-VL: the rotary frequency pairs are split into
        a temporal section rotated by the frame index and two spatial sections rotated by the grid
        row and column) or ``"1d"`` (plain RoPE over the token index of the stream).
    rope_base: RoPE base (10000).
    qk_gain: scale of the query and key projections.  Keys use a random projection ``A`` per KV
        head and its queries ``A + q_noise * noise``: ``q.k`` then tracks the similarity of the two
        tokens' hidden states, so attention is content-addressed; ``qk_gain`` sets how peaked.
    q_noise: how far each query head's projection departs from its KV head's key projection.
    seed: all weights derive from it.
    """

    layers: int = 2
    kv_heads: int = 2
    q_per_kv: int = 2
    head_dim: int = 64
    d_model: int = 256
    mlp_hidden: int = 512
    rope: str = "mrope"
    rope_base: float = 10000.0
    qk_gain: float = 1.4
    q_noise: float = 0.5
    seed: int = 0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "rope":
                if v not in ("mrope", "1d"):
                    raise ConfigError(f"rope={v!r} must be 'mrope' or '1d'")
            elif f.type in ("int", int):
                check_int(f.name, v, None if f.name == "seed" else 1)
            elif not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{f.name}={v!r} must be a finite number >= 0")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even (RoPE rotates pairs)")
        if self.rope == "mrope" and self.head_dim < 8:
            raise ConfigError(f"head_dim={self.head_dim} must be >= 8 for rope='mrope'")

    @property
    def q_heads(self) -> int:
        return self.kv_heads * self.q_per_kv


class KVStore:
    """The full KV cache (the off-chip store): per layer ``k[l], v[l]`` of shape ``[H, N, d]``."""

    def __init__(self, cfg: LLMConfig):
        shape = (cfg.kv_heads, 0, cfg.head_dim)
        self.k = [torch.zeros(shape) for _ in range(cfg.layers)]
        self.v = [torch.zeros(shape) for _ in range(cfg.layers)]
        self.frames = 0

    @property
    def n_tokens(self) -> int:
        return self.k[0].shape[1]


@dataclass
class LayerTrace:
    """What one layer saw and did for one frame.

    q ``[Hq, P, d]``, k and v ``[H, P, d]`` (after RoPE; k/v are the new frame's), k_past and
    v_past ``[H, N, d]`` (the cache before this frame), past_ids (the selection per KV head, or
    None for all), out ``[Hq, P, d]`` (attention output, before the output projection).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_past: torch.Tensor
    v_past: torch.Tensor
    past_ids: list[torch.Tensor] | None
    out: torch.Tensor


# Per KV head: merged tokens (keys [M, d], values [M, d], logit bias [M]) or None.
Merged = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]
# select(layer, q, k, v) -> per-KV-head past ids (None: all), optionally with merged tokens.
Selector = Callable[
    [int, torch.Tensor, torch.Tensor, torch.Tensor],
    list[torch.Tensor] | tuple[list[torch.Tensor], Merged | None] | None,
]


def frame_attention(
    q: torch.Tensor,
    k_past: torch.Tensor,
    v_past: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    past_ids: list[torch.Tensor] | None = None,
    return_probs: bool = False,
    merged: Merged | None = None,
):
    """Attention of a new frame's queries over (selected) past tokens and the frame itself.

    Query head ``g`` uses KV head ``g // (Hq // H)``.  New token ``i`` sees the past tokens
    ``past_ids[h]`` (all past tokens if ``past_ids`` is None) and new tokens ``0..i`` (causal).
    ``merged[h]``, when given and not None, is ``(keys [M, d], values [M, d], bias [M])``: ``M``
    merged tokens that every new token of head ``h`` also sees, with ``bias`` added to their
    logits (ReSV's cluster summaries: centroid key, mean value, ``ln n``).
    Returns ``out [Hq, P, d]``, and with ``return_probs`` also the attention probabilities
    ``[Hq, P, M + P]`` (``M`` = number of past tokens attended by that head; with different
    ``M`` per head, a list; merged tokens are not included).
    """
    hq, p, d = q.shape
    h = k_new.shape[0]
    group = hq // h
    future = torch.ones(p, p, dtype=torch.bool, device=q.device).triu(1)
    scale = 1.0 / math.sqrt(d)
    outs, probs = [], []
    for head in range(h):
        if past_ids is None:
            kp, vp = k_past[head], v_past[head]
        else:
            ids = past_ids[head]
            kp, vp = k_past[head].index_select(0, ids), v_past[head].index_select(0, ids)
        qg = q[head * group : (head + 1) * group]
        # One softmax over the blocks of logits (past, new causal, merged): the logits are
        # concatenated, the keys and values are not.
        blocks = [
            (qg @ kp.T * scale, vp),
            ((qg @ k_new[head].T * scale).masked_fill(future, float("-inf")), v_new[head]),
        ]
        extra = merged[head] if merged is not None else None
        if extra is not None:
            mk, mv, bias = extra
            blocks.append((qg @ mk.T.to(qg.dtype) * scale + bias.to(qg.dtype), mv.to(qg.dtype)))
        a = torch.softmax(torch.cat([x for x, _ in blocks], dim=-1), dim=-1)
        weights = a.split([x.shape[-1] for x, _ in blocks], dim=-1)
        outs.append(sum(w @ v for w, (_, v) in zip(weights, blocks, strict=True)))
        probs.append(a[..., : kp.shape[0] + p] if return_probs else None)
    out = torch.cat(outs)
    if not return_probs:
        return out
    if past_ids is None or len({t.shape[1] for t in probs}) == 1:
        return out, torch.cat(probs)
    return out, probs


def group_mean_query(q: torch.Tensor, q_per_kv: int) -> torch.Tensor:
    """Per KV head, the mean query over the new frame's tokens and the group's query heads:
    ``[Hq, P, d] -> [H, d]`` (the retrieval query during prefill, SPEC step 4)."""
    hq, p, d = q.shape
    return q.reshape(hq // q_per_kv, q_per_kv * p, d).mean(dim=1)


class TinyLLM:
    """Seeded random decoder-only attention stack (see the module docstring)."""

    def __init__(self, cfg: LLMConfig | None = None):
        self.cfg = cfg = cfg or LLMConfig()
        gen = torch.Generator().manual_seed(cfg.seed)
        dm, d, hq, h = cfg.d_model, cfg.head_dim, cfg.q_heads, cfg.kv_heads

        def randn(*shape, fan_in):
            return torch.randn(*shape, generator=gen) / math.sqrt(fan_in)

        self.layers = []
        for _ in range(cfg.layers):
            a = randn(h, dm, d, fan_in=dm)  # shared content subspace per KV head
            wk = a * cfg.qk_gain
            noise = randn(h, cfg.q_per_kv, dm, d, fan_in=dm)
            wq = (a[:, None] + cfg.q_noise * noise) * cfg.qk_gain / math.sqrt(1 + cfg.q_noise**2)
            self.layers.append(
                {
                    "wq": wq.reshape(hq, dm, d),
                    "wk": wk,
                    "wv": randn(h, dm, d, fan_in=dm),
                    "wo": randn(hq * d, dm, fan_in=hq * d),
                    "w1": randn(dm, cfg.mlp_hidden, fan_in=dm),
                    "w2": randn(cfg.mlp_hidden, dm, fan_in=cfg.mlp_hidden) * 0.5,
                }
            )
        self.inv_freq = cfg.rope_base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        # M-RoPE sections over the d/2 frequency pairs: temporal, row, column.
        half = d // 2
        t_sec = half // 4
        h_sec = (half - t_sec) // 2
        self.mrope_sections = (t_sec, h_sec, half - t_sec - h_sec)

    # ---- positions -----------------------------------------------------------------------------
    def rope_angles(self, frame: int, start: int, grid: tuple[int, int]) -> torch.Tensor:
        """Rotation angle ``[P, d/2]`` of each new token and frequency pair."""
        gh, gw = grid
        p = gh * gw
        if self.cfg.rope == "1d":
            pos = torch.arange(start, start + p, dtype=torch.float64)
            return pos[:, None] * self.inv_freq[None]
        rows = torch.arange(gh, dtype=torch.float64).repeat_interleave(gw)
        cols = torch.arange(gw, dtype=torch.float64).repeat(gh)
        t_sec, h_sec, w_sec = self.mrope_sections
        pos = torch.cat(
            [
                torch.full((p, t_sec), float(frame), dtype=torch.float64),
                rows[:, None].expand(p, h_sec),
                cols[:, None].expand(p, w_sec),
            ],
            dim=1,
        )
        return pos * self.inv_freq[None]

    @staticmethod
    def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Rotate pairs ``(x[..., i], x[..., i + d/2])`` by ``angles[:, i]`` (rotate-half form)."""
        cos = torch.cos(angles).to(x.dtype)
        sin = torch.sin(angles).to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    # ---- one frame ------------------------------------------------------------------------------
    def prefill_frame(
        self,
        x: torch.Tensor,
        grid: tuple[int, int],
        store: KVStore,
        select: Selector | None = None,
    ) -> tuple[torch.Tensor, list[LayerTrace]]:
        """Prefill one frame's tokens ``x [P, d_model]`` (raster order on ``grid``).

        ``select(layer, q, k, v)`` returns, per KV head, the past token ids (LongTensor, into the
        cache) this layer may attend to, or None for all; or a pair ``(ids, merged)`` with merged
        tokens as :func:`frame_attention` takes them.  Appends the frame's keys and values to
        ``store`` and returns the final hidden states ``[P, d_model]`` and one
        :class:`LayerTrace` per layer.
        """
        cfg = self.cfg
        p = grid[0] * grid[1]
        if x.shape != (p, cfg.d_model):
            raise ValueError(f"tokens must be [{p}, {cfg.d_model}], got {tuple(x.shape)}")
        angles = self.rope_angles(store.frames, store.n_tokens, grid)
        traces = []
        for li, w in enumerate(self.layers):
            hidden = F.rms_norm(x, (cfg.d_model,))
            q = self.apply_rope(torch.einsum("pm,gmd->gpd", hidden, w["wq"]), angles)
            k = self.apply_rope(torch.einsum("pm,hmd->hpd", hidden, w["wk"]), angles)
            v = torch.einsum("pm,hmd->hpd", hidden, w["wv"])
            k_past, v_past = store.k[li], store.v[li]
            ids = select(li, q, k, v) if select is not None else None
            merged = None
            if isinstance(ids, tuple):
                ids, merged = ids
            out = frame_attention(q, k_past, v_past, k, v, ids, merged=merged)
            store.k[li] = torch.cat([k_past, k], dim=1)
            store.v[li] = torch.cat([v_past, v], dim=1)
            traces.append(LayerTrace(q, k, v, k_past, v_past, ids, out))
            x = x + out.permute(1, 0, 2).reshape(p, -1) @ w["wo"]
            x = x + F.gelu(F.rms_norm(x, (cfg.d_model,)) @ w["w1"]) @ w["w2"]
        store.frames += 1
        return x, traces
