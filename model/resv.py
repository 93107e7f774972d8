"""ReSV, the retrieval algorithm of V-Rex, in floating point: SPEC.md steps 1-5, per layer and head.

:class:`HeadClusters` is the clustering of ONE KV head (temporal, then spatial, then a new cluster
or a forced merge), exactly as ``docs/clustering.md`` states it; the integer reference
(``model/dre_cluster.py``) is checked against it.  :class:`ReSVCache` runs one
:class:`HeadClusters` per KV head of a layer and adds dynamic retrieval (SPEC step 4) and the
memory accounting of the hierarchical KV memory (step 5); it follows the
:class:`model.baselines.KVPolicy` protocol.

The cosine test ``cos(k, S) >= tau`` with ``cos = k.S / (|k| |S|)`` (``S`` the cluster's key sum,
the same direction as its centroid) is evaluated in its division-free form

    ``k.S >= 0  and  (k.S)^2 >= tau^2 * |k|^2 * |S|^2``

which is the same predicate in exact arithmetic (``tau >= 0``).  In float64 it avoids the
rounding of a square root and a division: for integer-valued keys (the integer reference's
inputs) every term is an exact integer while it stays below 2^53, so the float and integer models
decide identically, and two parallel keys pass ``tau = 1``.  A zero key or a zero sum has cosine 0
(it passes only ``tau = 0``).  The forced merge compares cosines exactly too, by
``k.S_a |k.S_a| |S_b|^2 > k.S_b |k.S_b| |S_a|^2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from model.baselines import StreamLedger, check_count
from model.dre_config import ConfigError
from model.metrics import MemoryUse


def _check_tau(name: str, value) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={value} must lie in [0, 1]")
    return float(value)


@dataclass(frozen=True)
class ReSVConfig:
    """Runtime knobs of ReSV (one set for every layer and head).

    tau_t, tau_s   cosine thresholds of temporal and spatial clustering, in [0, 1]
    margin         retrieval keeps clusters scoring within ``margin`` of the best (>= 0)
    k_min, k_max   at least / at most this many clusters per head (0 <= k_min <= k_max, k_max >= 1)
    n_sink         attention sinks: the first n_sink tokens of the stream, always attended
    window_frames  local window: every token of the last window_frames frames, always attended
    table_size     centroid-table entries per head; when full, tokens are merged (forced)
    """

    tau_t: float = 0.8
    tau_s: float = 0.8
    margin: float = 3.0
    k_min: int = 1
    k_max: int = 64
    n_sink: int = 4
    window_frames: int = 1
    table_size: int = 1024

    def __post_init__(self):
        _check_tau("tau_t", self.tau_t)
        _check_tau("tau_s", self.tau_s)
        m = self.margin
        if not isinstance(m, int | float) or isinstance(m, bool) or not math.isfinite(m):
            raise ConfigError(f"margin={m!r} must be a finite number >= 0")
        if m < 0:
            raise ConfigError(f"margin={m} must be >= 0")
        check_count("k_max", self.k_max, 1)
        check_count("k_min", self.k_min, 0)
        if self.k_min > self.k_max:
            raise ConfigError(f"k_min={self.k_min} exceeds k_max={self.k_max}")
        check_count("n_sink", self.n_sink, 0)
        check_count("window_frames", self.window_frames, 0)
        check_count("table_size", self.table_size, 1)

    def replace(self, **changes) -> ReSVConfig:
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown ReSV parameter(s) {', '.join(unknown)}")
        return ReSVConfig(**{**{n: getattr(self, n) for n in names}, **changes})


class HeadClusters:
    """Temporal and spatial clustering of one KV head's keys (``docs/clustering.md``).

    State, inspectable after every frame (``n`` clusters so far, ids ``0 .. n-1`` in creation
    order):

    * ``sums``: float64 ``[n, d]``, exact key sum per cluster;
    * ``counts``: int64 ``[n]``, members per cluster;
    * ``members``: list of ``n`` lists of token ids, in the order they joined;
    * ``owner``: int64 ``[h * w]``, the cluster each grid position joined in the previous frame
      (None before the first frame).

    :meth:`add_frame` clusters one frame's keys in raster order and returns, per token, the
    cluster it joined and how: ``"joined"`` (passed a candidate's test), ``"new"`` (opened a
    cluster) or ``"forced"`` (table full: merged into the most similar candidate).
    """

    def __init__(self, table_size: int, tau_t: float, tau_s: float):
        self.table_size = check_count("table_size", table_size, 1)
        self.tau_t = _check_tau("tau_t", tau_t)
        self.tau_s = _check_tau("tau_s", tau_s)
        self.members: list[list[int]] = []
        self.owner: torch.Tensor | None = None
        self._sums: np.ndarray | None = None  # [table_size, d], float64
        self._norm2 = np.zeros(table_size)  # |S|^2 per cluster
        self._counts = np.zeros(table_size, dtype=np.int64)

    @property
    def n_clusters(self) -> int:
        return len(self.members)

    @property
    def sums(self) -> torch.Tensor:
        n = self.n_clusters
        if self._sums is None:
            return torch.zeros(0, 0, dtype=torch.float64)
        return torch.from_numpy(self._sums[:n].copy())

    @property
    def counts(self) -> torch.Tensor:
        return torch.from_numpy(self._counts[: self.n_clusters].copy())

    @property
    def centroids(self) -> torch.Tensor:
        """``sums / counts``, float64 ``[n, d]``."""
        return self.sums / self.counts[:, None].double()

    # ---- the cosine test and comparison, division free (see the module docstring) ------------
    def _passes(self, k2: float, dot: float, j: int, tau: float) -> bool:
        s2 = self._norm2[j]
        if k2 == 0.0 or s2 == 0.0:
            return tau <= 0.0  # no direction: cos = 0
        return dot >= 0.0 and dot * dot >= (tau * tau) * (k2 * s2)

    def _more_similar(self, dot_a: float, j_a: int, dot_b: float, j_b: int) -> bool:
        """cos(k, S_a) > cos(k, S_b) for the same key k != 0 (zero sums have cos 0)."""
        s2_a, s2_b = self._norm2[j_a], self._norm2[j_b]
        if s2_a == 0.0:
            dot_a, s2_a = 0.0, 1.0
        if s2_b == 0.0:
            dot_b, s2_b = 0.0, 1.0
        return dot_a * abs(dot_a) * s2_b > dot_b * abs(dot_b) * s2_a

    # ---- one frame -----------------------------------------------------------------------------
    def add_frame(
        self, keys: torch.Tensor, h: int, w: int, token_ids: torch.Tensor
    ) -> tuple[torch.Tensor, list[str]]:
        p_total = h * w
        if keys.ndim != 2 or keys.shape[0] != p_total:
            raise ValueError(f"keys must be [h*w={p_total}, d], got {list(keys.shape)}")
        if tuple(token_ids.shape) != (p_total,):
            raise ValueError(f"token_ids must be [{p_total}], got {list(token_ids.shape)}")
        if self.owner is not None and self.owner.shape[0] != p_total:
            raise ValueError(
                f"grid has {p_total} positions, the previous frame had {self.owner.shape[0]}"
            )
        k_all = keys.detach().to(torch.float64).numpy()
        d = k_all.shape[1]
        if self._sums is None:
            self._sums = np.zeros((self.table_size, d))
        elif self._sums.shape[1] != d:
            raise ValueError(f"key length changed from {self._sums.shape[1]} to {d}")
        ids = token_ids.tolist()
        owner = None if self.owner is None else self.owner.tolist()
        joined = [0] * p_total
        status = []
        sums, norm2, counts = self._sums, self._norm2, self._counts
        for p in range(p_total):
            i, j = divmod(p, w)
            cands = []
            if owner is not None:
                cands.append((owner[p], self.tau_t))
            if j > 0:
                cands.append((joined[p - 1], self.tau_s))
            if i > 0:
                cands.append((joined[p - w], self.tau_s))
            k = k_all[p]
            k2 = float(k @ k)
            choice, how, dots = None, "joined", []
            for c, tau in cands:
                dot = float(k @ sums[c])
                dots.append(dot)
                if self._passes(k2, dot, c, tau):
                    choice = c
                    break
            if choice is None:
                if self.n_clusters < self.table_size:
                    choice, how = self.n_clusters, "new"
                    self.members.append([])
                else:
                    if not cands:  # impossible: a full table means an earlier token exists
                        raise RuntimeError("table full with no candidate")
                    how = "forced"
                    best = 0
                    for n in range(1, len(cands)):
                        if k2 != 0.0 and self._more_similar(
                            dots[n], cands[n][0], dots[best], cands[best][0]
                        ):
                            best = n
                    choice = cands[best][0]
            sums[choice] += k
            norm2[choice] = float(sums[choice] @ sums[choice])
            counts[choice] += 1
            self.members[choice].append(ids[p])
            joined[p] = choice
            status.append(how)
        self.owner = torch.tensor(joined, dtype=torch.int64)
        return self.owner.clone(), status


class ReSVCache:
    """ReSV for one layer: clustering per KV head, dynamic retrieval, memory accounting.

    ``add_frame(keys, values, grid)`` clusters the frame's keys ``[H, P, d]`` per head (values are
    not needed by the index: they stay in the off-chip store).  ``retrieve(query [H, d])`` scores
    every cluster of head ``h`` with ``s_j = q_h . c_j / sqrt(d) + ln(n_j)`` and selects the
    clusters with ``s_j >= max(s) - margin``, at most ``k_max``, at least ``k_min`` (as many as
    exist), highest first, ties to the lower cluster index; it returns the members of the selected
    clusters plus the sinks and the local window, deduplicated and sorted.  The selected clusters
    of the last call are in ``last_selection``.
    """

    name = "resv"

    def __init__(self, cfg: ReSVConfig, kv_heads: int, head_dim: int):
        self.cfg = cfg
        self.ledger = StreamLedger(kv_heads, head_dim, cfg.n_sink, cfg.window_frames)
        self.heads = [HeadClusters(cfg.table_size, cfg.tau_t, cfg.tau_s) for _ in range(kv_heads)]
        self.last_selection: list[list[int]] = [[] for _ in range(kv_heads)]
        self.last_status: list[list[str]] = [[] for _ in range(kv_heads)]

    def add_frame(self, keys: torch.Tensor, values: torch.Tensor, grid: tuple[int, int]) -> None:
        self.ledger.check_frame(keys, values, grid)
        ids = self.ledger.push(grid)
        for h, head in enumerate(self.heads):
            _, self.last_status[h] = head.add_frame(keys[h], grid[0], grid[1], ids)

    def scores(self, h: int, query: torch.Tensor) -> torch.Tensor:
        """``s_j`` of every cluster of head ``h`` for the query ``[d]`` (float64)."""
        head = self.heads[h]
        if head.n_clusters == 0:
            return torch.zeros(0, dtype=torch.float64)
        d = self.ledger.head_dim
        counts = head.counts.double()
        return head.centroids @ query.double() / math.sqrt(d) + torch.log(counts)

    def select(self, h: int, query: torch.Tensor) -> list[int]:
        """Selected cluster ids of head ``h``, highest score first (SPEC step 4)."""
        s = self.scores(h, query)
        if s.numel() == 0:
            return []
        order = torch.sort(s, descending=True, stable=True).indices  # ties: lower index first
        keep = int((s >= s.max() - self.cfg.margin).sum())
        n = max(min(keep, self.cfg.k_max), min(self.cfg.k_min, s.numel()))
        return order[:n].tolist()

    def retrieve(self, query: torch.Tensor) -> list[torch.Tensor]:
        picked = []
        for h, head in enumerate(self.heads):
            sel = self.select(h, query[h])
            self.last_selection[h] = sel
            ids = [t for c in sel for t in head.members[c]]
            picked.append(torch.tensor(ids, dtype=torch.long))
        return self.ledger.finish(picked)

    def memory(self) -> MemoryUse:
        return self.ledger.memory(sum(head.n_clusters for head in self.heads))
