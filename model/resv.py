"""ReSV, the retrieval algorithm of V-Rex, in floating point: SPEC.md steps 1-5, per layer and head.

:class:`HeadClusters` is the clustering of ONE KV head (temporal, then spatial, then a new cluster
or a forced merge), exactly as ``docs/clustering.md`` states it; the integer reference
(``model/dre/cluster.py``) is checked against it.  :class:`ReSVCache` runs one
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

from model.baselines import StreamLedger, check_count, per_head_queries
from model.dre.config import ConfigError
from model.dre.quant import quantize, symmetric_scale
from model.dre.tokens import select_tokens, soft_gain
from model.metrics import MemoryUse


def _check_tau(name: str, value) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={value} must lie in [0, 1]")
    return float(value)


RULES = ("budget", "margin")
QUERY_MODES = ("blocks", "kmeans")
SCORES = ("soft", "norm", "max", "soft-int")


@dataclass(frozen=True)
class ReSVConfig:
    """Runtime knobs of ReSV (one set for every layer and head).

    Clustering (``docs/clustering.md``):

    tau_t, tau_s   cosine thresholds of temporal and spatial clustering, in [0, 1]
    table_size     centroid-table entries per head; when full, tokens are merged (forced)

    Always attended: n_sink (the first n_sink tokens of the stream) and window_frames (every
    token of the last window_frames frames).  The centroid table indexes the tokens that have
    left the window: a frame is clustered when it leaves the window, so the budget below is
    spent on tokens that would otherwise not be attended.

    Dynamic retrieval, ``rule="budget"`` (the default; ``docs/model.md``, "Retrieval"):

    budget         tokens per head and frame, besides sinks and window (>= 0)
    query_vectors  Q query vectors per KV head and frame (>= 1), formed by query_mode:
                   ``"blocks"`` (the frame's grid cut into Q blocks, mean of the group's queries
                   in each) or ``"kmeans"`` (k-means of the group's queries, kmeans_iters
                   Lloyd iterations from a seeded start)
    score          how cluster ``j`` is scored from the Q scores ``s_cj = q_c . c_j / sqrt(d)``
                   (``c_j`` the centroid, ``n_j`` its member count):
                   ``"soft"`` (default): ``log sum_c exp(s_cj - log sum_i n_i exp(s_ci))``, the
                   log of the attention one member token of ``j`` is predicted to get, summed
                   over the query vectors (each query's softmax over the table, every member
                   standing in for its centroid); ``"norm"``: ``max_c (s_cj - max_i s_ci)``
                   (each query against its own best cluster, the issue's ``normalize``);
                   ``"max"``: ``max_c s_cj``; ``"soft-int"``: what the DRE computes, the
                   fixed-point soft score of ``model.dre.tokens`` on 8-bit codes of the query
                   vectors and centroids (``docs/select.md``)
    rerank         0 (off) or alpha >= 1: clusters are taken for ``round(alpha * budget)``
                   tokens, whose keys are then read in ``rerank_bits``-bit form (per-token
                   scale) and re-ranked by ``max_c q_c.k``; the best ``budget`` are kept
    summaries      also attend every cluster not selected through one merged token (its
                   centroid key with logit bias ``ln n``, its mean value); recall counts exact
                   tokens only, so this shows in the output error

    Dynamic retrieval, ``rule="margin"`` (version 1, what the DRE RTL implements today):
    one mean query per head, score ``q.c_j / sqrt(d) + ln n_j``, keep the clusters within
    ``margin`` of the best, at least k_min and at most k_max of them.
    """

    tau_t: float = 0.9
    tau_s: float = 0.9
    table_size: int = 2048
    n_sink: int = 4
    window_frames: int = 1
    rule: str = "budget"
    budget: int = 980
    query_vectors: int = 16
    query_mode: str = "blocks"
    score: str = "soft"
    kmeans_iters: int = 8
    rerank: float = 0.0
    rerank_bits: int = 4
    summaries: bool = True
    margin: float = 3.0
    k_min: int = 1
    k_max: int = 64

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
        if self.rule not in RULES:
            raise ConfigError(f"rule={self.rule!r} must be one of {', '.join(RULES)}")
        check_count("budget", self.budget, 0)
        check_count("query_vectors", self.query_vectors, 1)
        if self.query_mode not in QUERY_MODES:
            raise ConfigError(
                f"query_mode={self.query_mode!r} must be one of {', '.join(QUERY_MODES)}"
            )
        if self.score not in SCORES:
            raise ConfigError(f"score={self.score!r} must be one of {', '.join(SCORES)}")
        for flag in ("summaries",):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        check_count("kmeans_iters", self.kmeans_iters, 1)
        a = self.rerank
        if not isinstance(a, int | float) or isinstance(a, bool) or not math.isfinite(a):
            raise ConfigError(f"rerank={a!r} must be 0 (off) or a number >= 1")
        if a != 0 and a < 1:
            raise ConfigError(f"rerank={a} must be 0 (off) or >= 1")
        check_count("rerank_bits", self.rerank_bits, 2)

    def replace(self, **changes) -> ReSVConfig:
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown ReSV parameter(s) {', '.join(unknown)}")
        return ReSVConfig(**{**{n: getattr(self, n) for n in names}, **changes})

    def label(self) -> str:
        """A short name of the retrieval rule, for tables."""
        if self.rule == "margin":
            return f"resv-margin(m={self.margin:g})"
        parts = [f"Q={self.query_vectors}{'k' if self.query_mode == 'kmeans' else ''}"]
        parts.append(self.score)
        if self.rerank:
            parts.append(f"rerank={self.rerank:g}")
        if self.summaries:
            parts.append("summ")
        return f"resv({','.join(parts)})"


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


def query_vectors(
    queries: torch.Tensor, grid: tuple[int, int] | None, q: int, mode: str, iters: int, seed: int
) -> torch.Tensor:
    """``Q <= q`` query vectors ``[Q, d]`` from one KV head's queries ``[g, P, d]`` (its group's
    query heads, each with the frame's ``P`` tokens in raster order).

    ``"blocks"``: the grid ``(h, w)`` (``h * w == P``; otherwise the ``P`` tokens in order) is cut
    into ``R x C`` blocks, ``R`` the largest divisor of ``q`` with ``R <= sqrt(q)``, block row
    ``r`` covering grid rows ``floor(r h / R) .. floor((r+1) h / R) - 1`` (columns alike); each
    vector is the mean of the group's queries in one block, blocks in raster order; empty blocks
    (grids smaller than ``R x C``) are skipped.  ``"kmeans"``: Lloyd's k-means of the ``g * P``
    queries, started from ``q`` distinct queries drawn with ``seed``, ``iters`` iterations,
    squared L2 distance, ties to the lower centroid; a centroid left without queries keeps its
    place.  ``q >= g * P`` gives every query as its own vector.
    """
    g, p, d = queries.shape
    if mode == "kmeans":
        pts = queries.reshape(g * p, d).double()
        if q >= pts.shape[0]:
            return pts
        gen = torch.Generator().manual_seed(seed)
        cent = pts[torch.randperm(pts.shape[0], generator=gen)[:q]].clone()
        for _ in range(iters):
            assign = torch.cdist(pts, cent).argmin(dim=1)
            for c in range(q):
                mine = pts[assign == c]
                if mine.shape[0]:
                    cent[c] = mine.mean(dim=0)
        return cent
    rows = max(r for r in range(1, math.isqrt(q) + 1) if q % r == 0)
    cols = q // rows
    if grid is None or grid[0] * grid[1] != p:
        grid = (1, p)
    h, w = grid
    r_of = torch.arange(h) * rows // h  # block row of each grid row
    c_of = torch.arange(w) * cols // w
    block = (r_of[:, None] * cols + c_of[None, :]).reshape(p)
    out = []
    for b in range(rows * cols):
        sel = block == b
        if sel.any():
            out.append(queries[:, sel].double().mean(dim=(0, 1)))
    return torch.stack(out)


def cluster_scores(
    score: str, vectors: torch.Tensor, centroids: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """Score ``[n]`` of clusters ``centroids`` ``[n, d]`` with ``counts`` ``[n]`` for the query
    vectors ``[Q, d]`` (float64), by ``score`` (``ReSVConfig.score``)."""
    s = vectors.double() @ centroids.double().T  # [Q, n]
    if score == "max":
        return s.max(dim=0).values
    if score == "norm":
        return (s - s.max(dim=1, keepdim=True).values).max(dim=0).values
    s = s / math.sqrt(centroids.shape[1])
    lse = torch.logsumexp(s + torch.log(counts.double()), dim=1, keepdim=True)
    return torch.logsumexp(s - lse, dim=0)


def _quantize_rows(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-row quantisation to ``bits`` bits, returned dequantised (float64)."""
    top = 2 ** (bits - 1) - 1
    scale = x.abs().amax(dim=-1, keepdim=True).double() / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.clamp(torch.round(x.double() / scale), -top, top) * scale


class ReSVCache:
    """ReSV for one layer: clustering per KV head, dynamic retrieval, memory accounting.

    ``add_frame(keys, values, grid)`` records a frame ``[H, P, d]``; the frame that leaves the
    local window (or the frame itself, with ``window_frames = 0``) is clustered per head.  Values
    stay in the off-chip store (their per-cluster sums are kept only for ``summaries``).

    ``retrieve(queries)`` takes the frame's queries ``[Hq, P, d]`` (or ``[H, d]``) and returns,
    per KV head, the selected past tokens plus the sinks and the local window, deduplicated and
    sorted.  With ``rule="budget"`` (:meth:`select_budget`): per head, ``Q`` query vectors
    (:func:`query_vectors`) score every cluster (:meth:`cluster_scores`, ``ReSVConfig.score``);
    clusters are taken in descending score, ties to the
    lower index, each contributing ``min(n_j, budget - taken)`` tokens, until ``budget`` tokens
    are taken or the clusters run out.  A truncated cluster gives its newest members (members in
    reverse order of joining).  With ``rule="margin"`` (:meth:`select`): SPEC version 1.
    ``last_selection[h]`` holds the ``(cluster, tokens taken)`` pairs (budget rule) or the
    cluster ids (margin rule) of the last call.
    """

    name = "resv"

    def __init__(self, cfg: ReSVConfig, kv_heads: int, head_dim: int):
        self.cfg = cfg
        self.ledger = StreamLedger(kv_heads, head_dim, cfg.n_sink, cfg.window_frames)
        self.heads = [HeadClusters(cfg.table_size, cfg.tau_t, cfg.tau_s) for _ in range(kv_heads)]
        self.last_selection: list[list] = [[] for _ in range(kv_heads)]
        self.last_status: list[list[str]] = [[] for _ in range(kv_heads)]
        self._pending: list[tuple[torch.Tensor, torch.Tensor, tuple[int, int], torch.Tensor]] = []
        self._keys4 = torch.zeros(kv_heads, 0, head_dim)  # rerank: quantised keys [H, N, d]
        self._value_sums: list[np.ndarray | None] = [None] * kv_heads  # summaries
        self.last_summaries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = [
            None
        ] * kv_heads

    # ---- the index --------------------------------------------------------------------------
    def add_frame(self, keys: torch.Tensor, values: torch.Tensor, grid: tuple[int, int]) -> None:
        self.ledger.check_frame(keys, values, grid)
        if not torch.isfinite(keys).all() or not torch.isfinite(values).all():
            raise ValueError("keys and values must be finite (found NaN or infinity)")
        ids = self.ledger.push(grid)
        if self.cfg.rule == "budget" and self.cfg.rerank:
            k4 = _quantize_rows(keys.detach(), self.cfg.rerank_bits).float()
            self._keys4 = torch.cat([self._keys4, k4], dim=1)
        self._pending.append((keys.detach(), values.detach(), grid, ids))
        while len(self._pending) > self.cfg.window_frames:
            self._cluster(*self._pending.pop(0))

    def _cluster(self, keys, values, grid, ids) -> None:
        for h, head in enumerate(self.heads):
            owner, self.last_status[h] = head.add_frame(keys[h], grid[0], grid[1], ids)
            if self.cfg.summaries:
                vs = self._value_sums[h]
                if vs is None:
                    vs = self._value_sums[h] = np.zeros((self.cfg.table_size, values.shape[2]))
                np.add.at(vs, owner.numpy(), values[h].double().numpy())

    # ---- version 1: margin rule ---------------------------------------------------------------
    def scores(self, h: int, query: torch.Tensor) -> torch.Tensor:
        """``s_j = q . c_j / sqrt(d) + ln n_j`` of every cluster of head ``h``, query ``[d]``."""
        head = self.heads[h]
        if head.n_clusters == 0:
            return torch.zeros(0, dtype=torch.float64)
        d = self.ledger.head_dim
        counts = head.counts.double()
        return head.centroids @ query.double() / math.sqrt(d) + torch.log(counts)

    def select(self, h: int, query: torch.Tensor) -> list[int]:
        """Margin rule: selected cluster ids of head ``h``, highest score first (SPEC step 4)."""
        s = self.scores(h, query)
        if s.numel() == 0:
            return []
        order = torch.sort(s, descending=True, stable=True).indices  # ties: lower index first
        keep = int((s >= s.max() - self.cfg.margin).sum())
        n = max(min(keep, self.cfg.k_max), min(self.cfg.k_min, s.numel()))
        return order[:n].tolist()

    # ---- version 2: token budget, several query vectors ---------------------------------------
    def cluster_scores(self, h: int, vectors: torch.Tensor) -> torch.Tensor:
        """Combined score of every cluster of head ``h`` for the query vectors ``[Q, d]``."""
        head = self.heads[h]
        if head.n_clusters == 0:
            return torch.zeros(0, dtype=torch.float64)
        return cluster_scores(self.cfg.score, vectors, head.centroids, head.counts)

    def select_budget(self, h: int, vectors: torch.Tensor, budget: int) -> list[tuple[int, int]]:
        """``(cluster, tokens taken)`` in selection order; the takes sum to
        ``min(budget, members)``."""
        if self.cfg.score == "soft-int":
            return self._select_int(h, vectors, budget)
        s = self.cluster_scores(h, vectors)
        if s.numel() == 0:
            return []
        counts = self.heads[h].counts.tolist()
        picks, taken = [], 0
        for j in torch.sort(s, descending=True, stable=True).indices.tolist():
            if taken == budget:
                break
            take = min(counts[j], budget - taken)
            picks.append((j, take))
            taken += take
        return picks

    def _select_int(self, h: int, vectors: torch.Tensor, budget: int) -> list[tuple[int, int]]:
        """``score="soft-int"``: the DRE's integer soft rule (``model.dre.tokens``) on 8-bit
        codes of the query vectors (one scale per retrieval) and of the centroids (one scale
        per head and retrieval)."""
        head = self.heads[h]
        if head.n_clusters == 0:
            return []
        cent = head.centroids
        sq, sk = float(symmetric_scale(vectors, 8)), float(symmetric_scale(cent, 8))
        sel = select_tokens(
            quantize(vectors, 8, sq),
            quantize(cent, 8, sk),
            head.counts,
            budget,
            score="soft",
            gain=soft_gain(sq, sk, self.ledger.head_dim),
        )
        return list(zip(sel.ids, sel.take, strict=True))

    def _vectors(self, q_head: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        return query_vectors(
            q_head, self.ledger.grid, cfg.query_vectors, cfg.query_mode, cfg.kmeans_iters, 0
        )

    def retrieve(self, queries: torch.Tensor) -> list[torch.Tensor]:
        led, cfg = self.ledger, self.cfg
        q = per_head_queries(queries, led.kv_heads, led.head_dim)
        g = q.shape[1] // (queries.shape[1] if queries.ndim == 3 else 1)
        picked = []
        led.last_extra_bytes = 0
        for h, head in enumerate(self.heads):
            if cfg.rule == "margin":
                sel = self.select(h, q[h].mean(dim=0))
                ids = [t for c in sel for t in head.members[c]]
            else:
                vectors = self._vectors(q[h].reshape(g, -1, led.head_dim))
                if cfg.rerank:
                    sel, ids = self._rerank(h, vectors)
                else:
                    sel = self.select_budget(h, vectors, cfg.budget)
                    ids = [t for c, take in sel for t in reversed(head.members[c][-take:])]
                if cfg.summaries:
                    self.last_summaries[h] = self._summaries(h, {c for c, _ in sel})
            self.last_selection[h] = sel
            picked.append(torch.tensor(ids, dtype=torch.long))
        return led.finish(picked)

    def _rerank(self, h: int, vectors: torch.Tensor):
        """Two-stage selection: clusters for ``alpha * budget`` tokens, then the ``budget`` of
        them whose ``rerank_bits``-bit keys score best (the ``"soft"`` score with every candidate
        a cluster of one, ties to the lower id); counts the quantised keys read (``d *
        rerank_bits / 8`` bytes and a 2-byte scale each) as extra fetched bytes."""
        cfg, led, head = self.cfg, self.ledger, self.heads[h]
        sel = self.select_budget(h, vectors, round(cfg.rerank * cfg.budget))
        cand = [t for c, take in sel for t in reversed(head.members[c][-take:])]
        if len(cand) <= cfg.budget:
            return sel, cand
        cand_t = torch.tensor(sorted(cand))
        s = vectors.double() @ self._keys4[h, cand_t].double().T / math.sqrt(led.head_dim)
        s = torch.logsumexp(s - torch.logsumexp(s, dim=1, keepdim=True), dim=0)
        order = torch.sort(s, descending=True, stable=True).indices
        led.last_extra_bytes += len(cand) * (math.ceil(led.head_dim * cfg.rerank_bits / 8) + 2)
        return sel, cand_t[order[: cfg.budget]].tolist()

    def _summaries(self, h: int, selected: set[int]):
        """Centroid keys, mean values and ``ln n`` of the clusters of head ``h`` not selected."""
        head = self.heads[h]
        rest = [j for j in range(head.n_clusters) if j not in selected]
        if not rest:
            return None
        idx = torch.tensor(rest)
        counts = head.counts[idx].double()
        keys = head.sums[idx] / counts[:, None]
        values = torch.from_numpy(self._value_sums[h][rest]) / counts[:, None]
        return keys.float(), values.float(), torch.log(counts).float()

    def memory(self) -> MemoryUse:
        """Index entries: one centroid and count per cluster; ``summaries`` adds a mean value
        (``d`` elements) per cluster on chip."""
        entries = sum(head.n_clusters for head in self.heads)
        values = entries * self.ledger.head_dim * self.ledger.bytes.elem_bytes
        return self.ledger.memory(entries, values if self.cfg.summaries else 0)
