"""The retrieval-policy protocol and the baselines ReSV is compared with.

A *policy* manages one layer's KV cache index, for all its KV heads, during streaming prefill:

* ``add_frame(keys, values, grid)``: the new frame's keys and values ``[H, P, d]`` (after RoPE),
  ``P = h * w`` tokens in raster order, appended to the stream after the previous frames.  Token
  ids are positions in the stream: frame ``t`` of ``P`` tokens holds ids ``t*P .. t*P + P - 1``
  (the same ids the off-chip store uses).
* ``retrieve(queries) -> list[LongTensor]``: for the new frame's queries ``[Hq, P, d]`` (after
  RoPE; query head ``g`` reads KV head ``g // (Hq // H)``), the past token ids each KV head
  attends to, sorted, no duplicates.  A ``[H, d]`` tensor is one query per KV head
  (:func:`per_head_queries`).  Each policy reduces the queries as it needs: ReKV and ReSV's
  margin rule use the mean per KV head, ReSV's budget rule a few query vectors, the oracle all.
* ``memory() -> MemoryUse``: on-chip, off-chip and last-fetched bytes (byte model in
  :mod:`model.metrics`).

The caller retrieves *before* adding the frame whose query it is (the frame attends to the past
and, causally, to itself).  Policies here:

* :class:`FullAttention`: every past token (exact).
* :class:`SlidingWindow`: attention sinks (the first ``n_sink`` tokens of the stream) plus the
  local window (every token of the last ``window_frames`` frames), as in StreamingLLM.
* :class:`ReKVFrames`: ReKV-style frame-block retrieval: one mean key per frame and head;
  the ``k`` frames outside the window whose mean key scores highest (``q . m / sqrt(d)`` for the
  frame's mean query; ties to the earlier frame) are fetched whole, plus sinks and window.
* :class:`OracleTopB`: the ``budget`` past tokens outside sinks and window with the most
  attention mass of the frame's queries (the bound for any selection of that many tokens).
* :class:`model.resv.ReSVCache` (ReSV) follows the same protocol.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch

from model.dre.config import check_int
from model.metrics import ByteModel, MemoryUse


@runtime_checkable
class KVPolicy(Protocol):
    """What the benchmark needs of a retrieval policy (one layer, all its KV heads)."""

    name: str

    def add_frame(
        self, keys: torch.Tensor, values: torch.Tensor, grid: tuple[int, int]
    ) -> None: ...

    def retrieve(self, queries: torch.Tensor) -> list[torch.Tensor]: ...

    def memory(self) -> MemoryUse: ...


def check_count(name: str, value, lo: int) -> int:
    """``value``, an integer ``>= lo`` (:func:`model.dre.config.check_int`)."""
    return check_int(name, value, lo)


def per_head_queries(queries: torch.Tensor, kv_heads: int, head_dim: int) -> torch.Tensor:
    """The frame's queries grouped per KV head: ``[Hq, P, d] -> [H, Hq // H * P, d]``.

    Query head ``g`` belongs to KV head ``g // (Hq // H)``; the rows of head ``h`` are its group's
    query heads in order, each with its ``P`` tokens in raster order.  A ``[H, d]`` tensor is one
    query per KV head (``[H, 1, d]``).  Anything else raises ``ValueError``.
    """
    if not isinstance(queries, torch.Tensor):
        raise ValueError(f"queries must be a torch.Tensor, got {type(queries).__name__}")
    if queries.ndim == 2:
        queries = queries[:, None]
    if queries.ndim != 3 or queries.shape[2] != head_dim or queries.shape[0] % kv_heads:
        raise ValueError(
            f"queries must be [Hq, P, {head_dim}] with Hq a multiple of {kv_heads} KV heads "
            f"(or [{kv_heads}, {head_dim}]), got {list(queries.shape)}"
        )
    hq, p, d = queries.shape
    return queries.reshape(kv_heads, hq // kv_heads * p, d)


class StreamLedger:
    """Token bookkeeping shared by the policies: frame boundaries, sinks and the local window."""

    def __init__(self, kv_heads: int, head_dim: int, n_sink: int, window_frames: int):
        self.kv_heads = check_count("kv_heads", kv_heads, 1)
        self.head_dim = check_count("head_dim", head_dim, 1)
        self.n_sink = check_count("n_sink", n_sink, 0)
        self.window_frames = check_count("window_frames", window_frames, 0)
        self.bytes = ByteModel(head_dim)
        self.frame_starts: list[int] = []
        self.n_tokens = 0
        self.grid: tuple[int, int] | None = None
        self.last_fetched_tokens = 0
        self.last_extra_bytes = 0  # bytes a policy fetched besides whole tokens (e.g. rerank keys)

    def check_frame(self, keys: torch.Tensor, values: torch.Tensor, grid: tuple[int, int]):
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise ValueError(
                f"keys and values must be torch tensors, got {type(keys).__name__} and "
                f"{type(values).__name__} (use torch.from_numpy)"
            )
        h, w = grid
        shape = (self.kv_heads, h * w, self.head_dim)
        if tuple(keys.shape) != shape or tuple(values.shape) != shape:
            raise ValueError(
                f"keys and values must be {list(shape)} for grid {h}x{w}, got "
                f"{list(keys.shape)} and {list(values.shape)}"
            )
        if self.grid is not None and self.grid != (h, w):
            raise ValueError(f"grid changed from {self.grid} to {(h, w)} mid-stream")

    def push(self, grid: tuple[int, int]) -> torch.Tensor:
        """Record a new frame; return its token ids."""
        self.grid = grid
        p = grid[0] * grid[1]
        self.frame_starts.append(self.n_tokens)
        ids = torch.arange(self.n_tokens, self.n_tokens + p)
        self.n_tokens += p
        return ids

    def frame_ids(self, f: int) -> torch.Tensor:
        end = self.frame_starts[f + 1] if f + 1 < len(self.frame_starts) else self.n_tokens
        return torch.arange(self.frame_starts[f], end)

    def resident(self) -> torch.Tensor:
        """Sorted ids held on chip in full: sinks and the last ``window_frames`` frames."""
        sinks = torch.arange(min(self.n_sink, self.n_tokens))
        nf = len(self.frame_starts)
        first = self.frame_starts[nf - self.window_frames] if 0 < self.window_frames <= nf else 0
        window = torch.arange(first if self.window_frames else self.n_tokens, self.n_tokens)
        return torch.unique(torch.cat([sinks, window]))

    def finish(self, picked: list[torch.Tensor]) -> list[torch.Tensor]:
        """Add the resident tokens to each head's picked ids; dedupe, sort, count the fetch."""
        res = self.resident()
        out = [torch.unique(torch.cat([p.long(), res])) for p in picked]
        self.last_fetched_tokens = sum(len(o) for o in out) - len(res) * len(out)
        return out

    def memory(self, index_entries: int, extra_onchip: int = 0) -> MemoryUse:
        """``index_entries``: on-chip index vectors summed over heads; ``extra_onchip``: other
        on-chip bytes of the policy."""
        b = self.bytes
        resident = len(self.resident()) * self.kv_heads
        return MemoryUse(
            onchip_bytes=index_entries * b.index_entry_bytes
            + resident * b.token_bytes
            + extra_onchip,
            offchip_bytes=self.n_tokens * self.kv_heads * b.token_bytes,
            fetched_bytes=self.last_fetched_tokens * b.token_bytes + self.last_extra_bytes,
        )


class FullAttention:
    """Every past token, every frame: exact attention; nothing on chip, everything fetched."""

    name = "full"

    def __init__(self, kv_heads: int, head_dim: int):
        self.ledger = StreamLedger(kv_heads, head_dim, n_sink=0, window_frames=0)

    def add_frame(self, keys, values, grid):
        self.ledger.check_frame(keys, values, grid)
        self.ledger.push(grid)

    def retrieve(self, queries: torch.Tensor) -> list[torch.Tensor]:
        led = self.ledger
        per_head_queries(queries, led.kv_heads, led.head_dim)
        return led.finish([torch.arange(led.n_tokens) for _ in range(led.kv_heads)])

    def memory(self) -> MemoryUse:
        return self.ledger.memory(0)


class SlidingWindow:
    """Attention sinks plus the local window of the last ``window_frames`` frames."""

    name = "window"

    def __init__(self, kv_heads: int, head_dim: int, n_sink: int = 4, window_frames: int = 4):
        self.ledger = StreamLedger(kv_heads, head_dim, n_sink, window_frames)

    def add_frame(self, keys, values, grid):
        self.ledger.check_frame(keys, values, grid)
        self.ledger.push(grid)

    def retrieve(self, queries: torch.Tensor) -> list[torch.Tensor]:
        led = self.ledger
        per_head_queries(queries, led.kv_heads, led.head_dim)
        return led.finish([torch.zeros(0, dtype=torch.long)] * led.kv_heads)

    def memory(self) -> MemoryUse:
        return self.ledger.memory(0)


class ReKVFrames:
    """ReKV-style retrieval: top-``k`` frames by mean key, plus sinks and the local window."""

    name = "rekv"

    def __init__(
        self, kv_heads: int, head_dim: int, k: int = 4, n_sink: int = 4, window_frames: int = 1
    ):
        self.k = check_count("k", k, 1)
        self.ledger = StreamLedger(kv_heads, head_dim, n_sink, window_frames)
        self.frame_means = torch.zeros(kv_heads, 0, head_dim, dtype=torch.float64)

    def add_frame(self, keys, values, grid):
        self.ledger.check_frame(keys, values, grid)
        self.ledger.push(grid)
        mean = keys.double().mean(dim=1, keepdim=True)
        self.frame_means = torch.cat([self.frame_means, mean], dim=1)

    def select_frames(self, queries: torch.Tensor) -> list[list[int]]:
        """Per head, the selected frame indices (highest score first)."""
        led = self.ledger
        query = per_head_queries(queries, led.kv_heads, led.head_dim).mean(dim=1)
        nf = len(led.frame_starts)
        candidates = nf - min(led.window_frames, nf)  # frames outside the window
        picked = []
        for h in range(led.kv_heads):
            s = self.frame_means[h, :candidates] @ query[h].double() / math.sqrt(led.head_dim)
            order = torch.sort(s, descending=True, stable=True).indices
            picked.append(order[: self.k].tolist())
        return picked

    def retrieve(self, queries: torch.Tensor) -> list[torch.Tensor]:
        led = self.ledger
        picked = []
        for frames in self.select_frames(queries):
            ids = [led.frame_ids(f) for f in frames]
            picked.append(torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long))
        return led.finish(picked)

    def memory(self) -> MemoryUse:
        return self.ledger.memory(self.frame_means.shape[0] * self.frame_means.shape[1])


class OracleTopB:
    """The upper bound for any selection of ``budget`` tokens per KV head and frame.

    Keeps every past key.  For the frame's queries of KV head ``h`` (its group's query heads x
    the frame's tokens) it takes the attention probabilities over the past tokens only (softmax
    of ``q . k / sqrt(d)``), sums them over the queries, and selects the ``budget`` past tokens
    outside sinks and window with the largest sum (ties to the lower token id), plus sinks and
    window.  Renormalising over the past does not change what :func:`model.metrics.
    past_recall_per_head` measures (it divides each query's hits by its past mass), so this
    selection maximises the mean recall among all selections of ``budget`` non-resident tokens.
    Not a deployable policy: it reads every past key.  Holds nothing on chip but sinks and window.
    """

    name = "oracle"

    def __init__(
        self, kv_heads: int, head_dim: int, budget: int, n_sink: int = 4, window_frames: int = 1
    ):
        self.budget = check_count("budget", budget, 0)
        self.ledger = StreamLedger(kv_heads, head_dim, n_sink, window_frames)
        self.keys = torch.zeros(kv_heads, 0, head_dim)

    def add_frame(self, keys, values, grid):
        self.ledger.check_frame(keys, values, grid)
        self.ledger.push(grid)
        self.keys = torch.cat([self.keys, keys.float()], dim=1)

    def mass(self, queries: torch.Tensor) -> torch.Tensor:
        """``[H, N]``: per KV head, the past-renormalised attention mass of each past token,
        summed over the head's queries."""
        led = self.ledger
        q = per_head_queries(queries, led.kv_heads, led.head_dim).float()
        if self.keys.shape[1] == 0:
            return torch.zeros(led.kv_heads, 0, dtype=torch.float64)
        return torch.stack(
            [
                torch.softmax(q[h] @ self.keys[h].T / math.sqrt(led.head_dim), dim=-1)
                .double()
                .sum(dim=0)
                for h in range(led.kv_heads)
            ]
        )

    def retrieve(self, queries: torch.Tensor) -> list[torch.Tensor]:
        led = self.ledger
        mass = self.mass(queries)
        free = torch.ones(led.n_tokens, dtype=torch.bool)
        free[led.resident()] = False
        picked = []
        for h in range(led.kv_heads):
            cand = torch.nonzero(free).flatten()
            order = torch.sort(mass[h, cand], descending=True, stable=True).indices
            picked.append(cand[order[: self.budget]])
        return led.finish(picked)

    def memory(self) -> MemoryUse:
        return self.ledger.memory(0)
