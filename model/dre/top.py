"""Bit-exact reference of the whole DRE (``hw/dre.py``) and the integer stream that drives it.

:class:`DRERef` composes the unit references exactly as the top level composes the units:
:class:`model.dre.cluster.ClusterRef` clusters each frame's keys; every cluster a frame touched
gets its quantised centroid and size bias written into the *plane store* (the entries retrieval
reads); a query is scored by :func:`model.dre.select.select` over entries ``0 .. N-1`` with
``N`` the clusters allocated so far and ``margin``, ``k_min``, ``k_max``, ``no_exit`` from the
registers (the v1 rule, :meth:`DRERef.retrieve`); with the v2 rule
(:meth:`DRERef.retrieve_tokens`) by :func:`model.dre.tokens.select_tokens` with ``budget`` and
the score the registers select: the soft score with ``gain`` (``CTRL.soft``), the normalised
maximum, or the raw maximum (``CTRL.raw_max``).  Out-of-range runtime values give the
selector's error flags and no selection.

:func:`integer_stream` turns the golden model's streaming run into what the DRE sees: the keys of
one layer and one KV head of :class:`model.llm.TinyLLM` for each frame of a video (synthetic or a
folder of real frames), and a few queries per frame, quantised with :mod:`model.dre.quant` (one
symmetric scale per stream, taken from the first frame) and the ReSV knobs converted to the
DRE's fixed-point registers, and the soft score's gain from the two scales.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from model.dre.cluster import DROPPED, ClusterRef, tau_fixed
from model.dre.config import ConfigError, DREConfig, require_config
from model.dre.select import SelectError, Selection, select
from model.dre.tokens import TokenSelection, select_tokens, soft_gain

#: retrieval error flags in bit order (``hw.select_core.ERROR_LAYOUT``)
ERROR_FLAGS = ("n_zero", "n_over", "k_max_zero", "k_max_over", "k_min_bad")
#: v2 (token budget) retrieval error flags in bit order (``hw.select_tokens.ERROR_LAYOUT``)
TOKEN_ERROR_FLAGS = ("n_zero", "n_over", "q_zero", "q_over", "gain_zero")
#: the v2 scores a retrieval can rank by (``Registers.score``): the soft score, the normalised
#: maximum, the raw maximum (``model.dre.tokens``)
V2_SCORES = ("soft", "norm", "max")
#: GAIN when nobody writes it (the register's reset value, ``hw.dre_regs.GAIN_RESET``): the
#: order of the soft gain of 8-bit codes at d = 64 (``integer_stream``'s streams: 3,600 ..
#: 4,800); the right value is ``soft_gain(q_scale, k_scale, d)`` of the host's quantisation
DEFAULT_GAIN = 4096


@dataclass
class Registers:
    """The runtime registers of the DRE (integers, as written into the register block)."""

    grid_w: int = 14
    grid_h: int = 14
    tau_t: int = 0
    tau_s: int = 0
    table_size: int = 0  # 0: n_max
    bias_scale: int = 0
    margin: int = 0
    k_min: int = 1
    k_max: int = 16
    no_exit: int = 0
    budget: int = 0  # v2: tokens per retrieval
    raw_max: int = 0  # v2: 1 = score_j = max_c s[c, j] (no per-query normalisation)
    soft: int = 0  # v2: 1 = the soft score with ``gain`` (CTRL.soft; overrides raw_max, no_exit)
    gain: int = DEFAULT_GAIN  # v2 soft score: GAIN, model.dre.tokens.soft_gain(...)

    @property
    def score(self) -> str:
        """The v2 score these registers select: ``soft``, ``norm`` or ``max``."""
        return "soft" if self.soft else "max" if self.raw_max else "norm"

    def set_score(self, score: str) -> None:
        """Set ``soft`` / ``raw_max`` for ``score`` (one of :data:`V2_SCORES`)."""
        if score not in V2_SCORES:
            raise ConfigError(f"score={score!r}; choose one of {', '.join(V2_SCORES)}")
        self.soft, self.raw_max = int(score == "soft"), int(score == "max")


@dataclass(frozen=True)
class Retrieval:
    """What the DRE answers to one query: the selection (None on an error) and the flags."""

    selection: Selection | None
    error: int  # bit i: ERROR_FLAGS[i]
    n: int  # candidates scored (N_CLUSTERS at the query)

    @property
    def records(self) -> list[tuple[int, int]]:
        s = self.selection
        return [] if s is None else list(zip(s.indices, s.scores, strict=True))

    @property
    def planes_read(self) -> int:
        return 0 if self.selection is None else self.selection.planes_read


@dataclass(frozen=True)
class TokenRetrieval:
    """What the v2 DRE answers to one retrieval: the selection (None on an error), the flags."""

    selection: TokenSelection | None
    error: int  # bit i: TOKEN_ERROR_FLAGS[i]
    n: int  # entries scored (N_CLUSTERS at the query)

    @property
    def records(self) -> list[tuple[int, int]]:
        s = self.selection
        return [] if s is None else list(zip(s.ids, s.take, strict=True))

    @property
    def planes_read(self) -> int:
        return 0 if self.selection is None else self.selection.planes_read


def _is_int_dtype(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex())


class DRERef:
    """The DRE top level in integers: clustering, the plane store, retrieval.

    :meth:`retrieve` is the v1 rule (one query, bias, margin, k_min / k_max);
    :meth:`retrieve_tokens` the v2 rule (``1 .. q_max`` queries, member counts from the table,
    ``budget`` tokens, ranked by the soft score with ``gain`` if ``soft``, else by the
    normalised maximum, or the raw maximum with ``raw_max``).
    """

    def __init__(self, cfg: DREConfig, regs: Registers | None = None):
        require_config(cfg)
        self.cfg = cfg
        self.regs = regs or Registers(k_max=cfg.k_cap)
        self.cluster = ClusterRef(cfg)
        self.store: dict[int, tuple[list[int], int]] = {}  # entry -> (centroid, bias)

    def clear(self) -> None:
        self.cluster.clear()  # the plane store keeps its contents; N = 0 hides them

    def add_frame(self, keys: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
        """Cluster one frame (``GRID_H * GRID_W`` keys); returns per key (ids, status).

        ``keys`` must hold integers (as :meth:`retrieve` requires of a query): float keys are
        rejected with ValueError, never truncated."""
        try:
            t = keys if isinstance(keys, torch.Tensor) else torch.as_tensor(keys)
        except (TypeError, ValueError, RuntimeError):
            t = None  # ragged or odd input: ClusterRef.add_frame names what is wrong
        if t is not None and t.numel() and (t.dtype == torch.bool or not _is_int_dtype(t)):
            raise ValueError(f"keys must hold integers (quantised), got dtype {t.dtype}")
        r, c = self.regs, self.cluster
        c.table_size = r.table_size or self.cfg.n_max
        c.tau_t, c.tau_s, c.bias_scale = r.tau_t, r.tau_s, r.bias_scale
        ids, status = c.add_frame(keys, r.grid_h, r.grid_w)
        for i in sorted({i for i, s in zip(ids, status, strict=True) if s != DROPPED}):
            self.store[i] = (c.centroid(i), c.bias(i))  # the write-back of a touched cluster
        return ids, status

    @property
    def n_clusters(self) -> int:
        return self.cluster.n_clusters

    def retrieve(self, q: Sequence[int]) -> Retrieval:
        cfg, r, n = self.cfg, self.regs, self.n_clusters
        flags = (
            n == 0,
            n > cfg.n_max,
            r.k_max == 0,
            r.k_max > cfg.k_cap,
            r.k_min == 0 or r.k_min > r.k_max,
        )
        error = sum(int(f) << i for i, f in enumerate(flags))
        if error:
            return Retrieval(None, error, n)
        keys = [self.store[j][0] for j in range(n)]
        bias = [self.store[j][1] for j in range(n)]
        sel = select(
            q,
            keys,
            bias,
            r.margin,
            r.k_max,
            r.k_min,
            bq=cfg.bq,
            bk=cfg.bk,
            early_exit=not r.no_exit,
        )
        return Retrieval(sel, 0, n)

    def retrieve_tokens(self, queries: Sequence[Sequence[int]]) -> TokenRetrieval:
        """v2: select ``budget`` tokens from the table's clusters for ``queries`` ``[Q][d]``.

        With ``soft`` set: ``select_tokens(..., score="soft", gain=gain)`` (``raw_max`` and
        ``no_exit`` do not matter; every plane is read).  ``gain == 0`` with ``soft`` is the
        ``gain_zero`` error (no selection), as in the hardware; a gain of ``2^GAIN_BITS`` or
        more, which the 18-bit register cannot hold, is a :class:`SelectError`.
        """
        cfg, r, n = self.cfg, self.regs, self.n_clusters
        n_q = len(queries)
        score = r.score
        gain_zero = score == "soft" and r.gain == 0
        flags = (n == 0, n > cfg.n_max, n_q == 0, n_q > cfg.q_max, gain_zero)
        error = sum(int(f) << i for i, f in enumerate(flags))
        if error:
            return TokenRetrieval(None, error, n)
        sel = select_tokens(
            queries,
            [self.store[j][0] for j in range(n)],
            self.cluster.counts[:n],
            r.budget,
            bq=cfg.bq,
            bk=cfg.bk,
            early_exit=not r.no_exit,
            k_cap=cfg.k_cap,
            score=score,
            gain=r.gain if score == "soft" else None,
        )
        return TokenRetrieval(sel, 0, n)


# ---- the integer stream from the golden model -----------------------------------------------
@dataclass
class StreamFrame:
    """One frame as the DRE sees it: ``keys [P][d]`` and ``queries [Q][d]`` (integers)."""

    keys: list[list[int]]
    queries: list[list[int]]


@dataclass
class IntegerStream:
    """Registers derived from the float ReSV knobs and the scales, and the frames."""

    regs: Registers
    key_scale: float
    query_scale: float
    frames: list[StreamFrame] = field(default_factory=list)
    #: ``soft_gain(query_scale, key_scale, d)``, also in ``regs.gain``; None if it lies outside
    #: ``1 .. 2^GAIN_BITS - 1`` (possible only for a score other than soft)
    gain: int | None = None


def integer_stream(
    cfg: DREConfig,
    *,
    frames: int = 64,
    grid: tuple[int, int] = (14, 14),
    source: str | None = None,
    layer: int = 0,
    head: int = 0,
    queries_per_frame: int = 2,
    tau_t: float = 0.9,
    tau_s: float = 0.8,
    margin: float = 3.0,
    k_min: int = 1,
    k_max: int | None = None,
    table_size: int | None = None,
    seed: int = 0,
    progress=None,
    score: str = "norm",
) -> IntegerStream:
    """Quantised keys and queries of one layer / KV head of a TinyLLM streaming run.

    Per frame: the head's ``h*w`` keys (after RoPE) and ``queries_per_frame`` queries: the
    group-mean query of the frame (the retrieval query of SPEC step 4), then single query
    tokens of the frame (query head 0 of the group, tokens chosen by a seeded generator).
    Keys use ``bk`` bits and queries ``bq`` bits, each with one symmetric scale from the first
    frame (later values saturate).  ``bias_scale = round(ln 2 * unit)`` and
    ``margin = round(margin * unit)`` with ``unit = sqrt(d) / (s_q * s_k)`` (one attention
    logit in integer score units), so the size bias is ``ln n`` in logits as in ReSV.
    ``score`` (:data:`V2_SCORES`) sets ``regs.soft`` / ``regs.raw_max``.  The soft score's
    ``gain = soft_gain(s_q, s_k, d)`` (:func:`model.dre.tokens.soft_gain`) goes into
    ``regs.gain`` and ``IntegerStream.gain``: the scales are fixed per stream (taken from the
    first frame, :func:`model.dre.quant.symmetric_scale`), so one gain, written once into
    ``GAIN``, serves every retrieval of the stream.  A gain outside ``1 .. 2^GAIN_BITS - 1``
    is a :class:`ConfigError` with ``score="soft"`` and leaves ``regs.gain`` at its default
    otherwise.
    When ``source`` is a KV trace folder (:mod:`model.kv_trace`, e.g. a Hugging Face model's
    keys from ``python -m model.hf_stream --dump-trace``), the keys and queries of ``layer`` and
    ``head`` come from it instead (its grid and head_dim must match ``grid`` and ``cfg.d``).
    """
    from model.dre.quant import quantize, symmetric_scale

    if score not in V2_SCORES:
        raise ConfigError(f"score={score!r}; choose one of {', '.join(V2_SCORES)}")
    h, w = grid
    if h * w > cfg.grid_max:
        raise ConfigError(f"grid {h}x{w} has {h * w} tokens; grid_max={cfg.grid_max}")
    if queries_per_frame < 1:
        raise ConfigError(f"queries_per_frame={queries_per_frame} must be >= 1")
    from model.kv_trace import is_trace

    if is_trace(source):
        pairs = _trace_pairs(cfg, source, grid, layer, head, queries_per_frame)
    else:
        pairs = _tinyllm_pairs(cfg, frames, grid, source, layer, head, queries_per_frame, seed)
    out, sk, sq = [], None, None
    for t, (k, qs) in enumerate(pairs):
        if t >= frames:
            break
        if sk is None:
            sk, sq = symmetric_scale(k, cfg.bk), symmetric_scale(qs, cfg.bq)
        out.append(StreamFrame(quantize(k, cfg.bk, sk).tolist(), quantize(qs, cfg.bq, sq).tolist()))
        if progress is not None:
            progress(t)
    if not out:
        raise ConfigError("the video source gave no frames")
    unit = math.sqrt(cfg.d) / float(sq * sk)
    bias_hi = (1 << (cfg.bias_bits - 1)) - 1
    regs = Registers(
        grid_w=w,
        grid_h=h,
        tau_t=tau_fixed(tau_t, cfg.tau_frac_bits),
        tau_s=tau_fixed(tau_s, cfg.tau_frac_bits),
        table_size=table_size or cfg.n_max,
        bias_scale=min(bias_hi, round(math.log(2) * unit)),
        margin=min((1 << cfg.bias_bits) - 1, round(margin * unit)),
        k_min=k_min,
        k_max=cfg.k_cap if k_max is None else k_max,
    )
    regs.set_score(score)
    try:
        gain = soft_gain(float(sq), float(sk), cfg.d)
    except SelectError as exc:
        if score == "soft":
            raise ConfigError(f"the stream's soft gain does not fit GAIN: {exc}") from None
        gain = None
    else:
        regs.gain = gain
    return IntegerStream(regs, float(sk), float(sq), out, gain)


def _trace_pairs(cfg: DREConfig, source, grid, layer: int, head: int, queries: int):
    """Per frame ``(keys [P, d], queries [Q, d])`` of a KV trace (:mod:`model.kv_trace`)."""
    from model.kv_trace import TraceError, load_head

    try:
        meta, keys, qs = load_head(source, layer, head)
    except TraceError as exc:
        raise ConfigError(str(exc)) from None
    if tuple(meta["grid"]) != tuple(grid):
        gh, gw = meta["grid"]
        raise ConfigError(f"the trace's frames are {gh}x{gw} tokens: pass --grid {gh}x{gw}")
    if meta["head_dim"] != cfg.d:
        raise ConfigError(
            f"the trace's head_dim is {meta['head_dim']}: use --set d={meta['head_dim']}"
        )
    if queries > meta["queries"]:
        raise ConfigError(f"{queries} queries per frame asked; the trace holds {meta['queries']}")
    return [(keys[t], qs[t, :queries]) for t in range(meta["frames"])]


def _tinyllm_pairs(cfg: DREConfig, frames, grid, source, layer, head, queries_per_frame, seed):
    """Per frame ``(keys [P, d], queries [Q, d])`` of one layer / KV head of a TinyLLM run."""
    from model.llm import KVStore, LLMConfig, TinyLLM
    from model.video import PatchEmbedding, open_video

    h, w = grid
    llm_cfg = LLMConfig(head_dim=cfg.d, d_model=4 * cfg.d, mlp_hidden=8 * cfg.d, seed=seed)
    if not 0 <= layer < llm_cfg.layers:
        raise ConfigError(f"layer={layer}; the LLM slice has layers 0 .. {llm_cfg.layers - 1}")
    if not 0 <= head < llm_cfg.kv_heads:
        raise ConfigError(f"head={head}; the LLM slice has KV heads 0 .. {llm_cfg.kv_heads - 1}")
    llm, store = TinyLLM(llm_cfg), KVStore(llm_cfg)
    embed = PatchEmbedding(grid, llm_cfg.d_model, seed=seed)
    video = open_video(source, frames=frames, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    g = llm_cfg.q_per_kv
    for t, frame in enumerate(video):
        if t >= frames:
            break
        _, traces = llm.prefill_frame(embed(frame), grid, store)
        tr = traces[layer]
        k = tr.k[head].detach().double()
        qg = tr.q[head * g : (head + 1) * g].detach().double()  # [g, P, d]
        mean_q = qg.reshape(-1, cfg.d).mean(dim=0)
        picks = torch.randint(0, h * w, (queries_per_frame - 1,), generator=gen)
        yield k, torch.stack([mean_q, *[qg[0, int(p)] for p in picks]])


__all__ = [
    "DEFAULT_GAIN",
    "ERROR_FLAGS",
    "TOKEN_ERROR_FLAGS",
    "V2_SCORES",
    "DRERef",
    "IntegerStream",
    "Registers",
    "Retrieval",
    "StreamFrame",
    "TokenRetrieval",
    "integer_stream",
]
