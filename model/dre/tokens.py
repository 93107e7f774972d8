"""Bit-exact reference of DRE selection v2: a token budget and several query vectors.

This is the contract the v2 RTL (``hw/select_tokens.py``) is checked against, bit for bit.
``docs/select.md`` carries the proof of the early-exit rule; this docstring states the rule.

Exact rule
----------
``queries`` ``[Q, d]`` (``bq``-bit two's complement), ``keys`` ``[N, d]`` (``bk``-bit),
``counts`` ``[N]`` (members per entry, 0 = empty), ``budget`` (tokens to retrieve, >= 0)::

    s[c, j]  = queries[c] . keys[j]                       (exact integers)
    live     = { j : counts[j] > 0 }
    M_c      = max_{i in live} s[c, i]
    score_j  = max_c (s[c, j] - M_c)        normalize=True  (every query's best scores 0)
    score_j  = max_c  s[c, j]               normalize=False

Live entries are ordered by (score descending, index ascending) and walked in that order taking
``take_j = min(counts[j], budget - taken)`` until ``taken == budget`` or the entries run out.
``ids`` / ``take`` list the entries with ``take_j > 0`` in walk order, so
``sum(take) == min(budget, sum(counts))``; the selected entries are a prefix of the order.

The soft score (``score="soft"``)
---------------------------------
The fixed-point form of the golden model's default score (``ReSVConfig.score = "soft"``:
``log sum_c exp(s_cj - log sum_i n_i exp(s_ci))``), in base 2 with ``FB`` fractional bits.
A per-retrieval ``gain`` ``g`` (``1 <= g < 2^GAIN_BITS``) folds the quantisation scales, ``log2 e``
and ``1/sqrt(d)`` into one integer (:func:`soft_gain`)::

    u[c, j]  = ((M_c - s[c, j]) * g) >> GAIN_SHIFT        (>= 0; log2 units / 2^FB)
    e[c, j]  = EXP2(u[c, j])                              (2^E at u = 0)
    S_c      = sum_{i in live} counts[i] * e[c, i]        (exact; >= 2^E)
    Z_c      = LOG2(S_c) - E * 2^FB                       (>= 0)
    score_j  = sum_c EXP2(u[c, j] + Z_c)                  (integer, ~ 2^E * sum_c p_cj)

    EXP2(x)  = T[x mod 2^FB] >> (x >> FB)     T[f] = round(2^E * 2^(-f / 2^FB))
    LOG2(x)  = p * 2^FB + LT[m]               p = floor(log2 x), m = the M bits below the
                                              leading one (truncated), LT[m] = round(2^FB *
                                              log2(1 + m / 2^M))

``score_j / 2^E`` approximates the attention one member of entry ``j`` is predicted to receive,
summed over the queries; ranking by it equals ranking by the golden model's log score up to the
tables' rounding.  The soft score has no early exit (its normaliser ``S_c`` depends on every
entry): ``planes_read = Q * live * bk``, or 0 for ``budget == 0``.

Bit-plane schedule and early exit
---------------------------------
Planes ``p = bk-1 .. 0`` (sign plane first, weight ``-2^(bk-1)``).  In the pass over plane ``p``
every *alive* entry ``j`` reads plane ``p`` once per query and adds ``w_p * (q_c . plane_p)`` to
its partial ``P[c, j]``.  After the pass, with ``r = 2^p - 1`` and ``Qpos_c`` / ``Qneg_c`` the
sums of the positive / negative elements of query ``c``::

    L[c, j] = P[c, j] + r * Qneg_c  <=  s[c, j]  <=  U[c, j] = P[c, j] + r * Qpos_c
    ML_c    = max_{j alive} L[c, j]                      (this pass; a lower bound on M_c)
    MU_c    = max_{j alive} U[c, j]                      (this pass; an upper bound on M_c)
    SL_j    = max_c (L[c, j] - MU'_c)    SU_j = max_c (U[c, j] - ML_c)     (normalize=True)
    SL_j    = max_c  L[c, j]             SU_j = max_c  U[c, j]             (normalize=False)

``MU'`` is the upper bound of the *previous* pass (the hardware inserts ``SL_j`` into its ranking
while the pass is still running, before this pass's ``MU`` is complete); before the first pass
it is the static bound ``MU0_c = (2^(bk-1) - 1) * Qpos_c - 2^(bk-1) * Qneg_c``.

Threshold ``T`` (after every pass but the last): the alive entries ordered by (``SL``
descending, index ascending), of which only the first ``k_cap`` are kept (the hardware's ranking
has ``k_cap`` slots; ``None``: all), are walked accumulating ``counts``; ``T`` is the ``SL`` of
the entry at which the sum first reaches ``budget``, or minus infinity if it never does.  Every
alive entry with ``SU_j < T`` is dropped: it reads no further plane.

Special cases: ``budget == 0`` with early exit reads nothing (``planes_read = 0``); empty entries
never read a plane.  ``planes_read`` counts plane reads per query: ``Q * sum_p alive_p``, which is
``Q * live * bk`` without early exit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch

from model.dre.config import check_int
from model.dre.select import SelectError, _as_int_tensor, _check_range, _check_widths

#: largest member count accepted (keeps every sum far inside int64)
COUNT_LIMIT = 1 << 40

#: the scores :func:`select_tokens` implements
SCORES = ("norm", "max", "soft")
#: soft score: fractional bits of the base-2 log domain
SOFT_FB = 8
#: soft score: ``EXP2(0) = 2^SOFT_E``
SOFT_E = 20
#: soft score: mantissa bits below the leading one that index the LOG2 table
SOFT_M = 10
#: soft score: ``u = ((M_c - s) * gain) >> GAIN_SHIFT``
GAIN_SHIFT = 16
#: soft score: ``1 <= gain < 2^GAIN_BITS``
GAIN_BITS = 18


@cache
def exp2_table() -> tuple[int, ...]:
    """``T[f] = round(2^E * 2^(-f / 2^FB))`` for ``f < 2^FB`` (``T[0] = 2^E``, all < 2^(E+1))."""
    return tuple(
        math.floor(2.0**SOFT_E * 2.0 ** (-f / (1 << SOFT_FB)) + 0.5) for f in range(1 << SOFT_FB)
    )


@cache
def log2_table() -> tuple[int, ...]:
    """``LT[m] = round(2^FB * log2(1 + m / 2^M))`` for ``m < 2^M`` (all in ``[0, 2^FB]``)."""
    return tuple(
        math.floor((1 << SOFT_FB) * math.log2(1 + m / (1 << SOFT_M)) + 0.5)
        for m in range(1 << SOFT_M)
    )


def exp2_fixed(x: torch.Tensor) -> torch.Tensor:
    """``EXP2`` of int64 ``x >= 0`` (elementwise): ``T[x mod 2^FB] >> (x >> FB)``."""
    table = torch.tensor(exp2_table(), dtype=torch.int64)
    shift = torch.clamp(x >> SOFT_FB, max=SOFT_E + 1)  # T < 2^(E+1): larger shifts give 0
    return table[x & ((1 << SOFT_FB) - 1)] >> shift


def log2_fixed(x: int) -> int:
    """``LOG2`` of an integer ``x >= 1``: ``p * 2^FB + LT[m]`` (``m`` truncated)."""
    p = x.bit_length() - 1
    m = ((x << SOFT_M) >> p) & ((1 << SOFT_M) - 1)
    return (p << SOFT_FB) + log2_table()[m]


def soft_gain(q_scale: float, k_scale: float, d: int) -> int:
    """The ``gain`` that turns ``q_int . k_int`` into base-2 logits of ``q . k / sqrt(d)``.

    ``q = q_int * q_scale``, ``k = k_int * k_scale``; ``round(q_scale * k_scale * log2(e) /
    sqrt(d) * 2^(FB + GAIN_SHIFT))``, checked to lie in ``[1, 2^GAIN_BITS)``.
    """
    g = round(q_scale * k_scale * math.log2(math.e) / math.sqrt(d) * 2 ** (SOFT_FB + GAIN_SHIFT))
    if not 1 <= g < 1 << GAIN_BITS:
        raise SelectError(
            f"soft gain {g} (q_scale={q_scale:g}, k_scale={k_scale:g}, d={d}) is outside "
            f"[1, 2^{GAIN_BITS}); rescale the queries or keys"
        )
    return g


def soft_scores(s: torch.Tensor, counts: list[int], gain: int) -> list[int]:
    """``score_j`` of the soft rule for exact dot products ``s`` ``[Q, A]`` of live entries."""
    m = s.max(dim=1, keepdim=True).values
    u = ((m - s) * gain) >> GAIN_SHIFT  # [Q, A], >= 0
    e = exp2_fixed(u)
    z = []
    for row in e.tolist():  # S_c can exceed int64: sum in Python integers
        total = sum(a * b for a, b in zip(counts, row, strict=True))
        z.append(log2_fixed(total) - (SOFT_E << SOFT_FB))
    w = exp2_fixed(u + torch.tensor(z, dtype=torch.int64)[:, None])
    return w.sum(dim=0).tolist()


@dataclass(frozen=True)
class TokenSelection:
    """Result of one v2 retrieval.

    ids          selected entry ids in walk order (score descending, ties to the lower index)
    take         tokens taken from each, same length; ``sum(take) == min(budget, sum(counts))``
    planes_read  plane reads summed over queries and passes (``Q * sum(alive)``)
    alive        entries that read plane ``p``, per pass, sign plane first (``len == bk``)
    scores       the exact ``score_j`` of the listed entries (diagnostics)
    """

    ids: tuple[int, ...]
    take: tuple[int, ...]
    planes_read: int
    alive: tuple[int, ...] = ()
    scores: tuple[int, ...] = ()


def budget_threshold(
    sl: list[int], ids: list[int], counts: list[int], budget: int, k_cap: int | None
) -> int | None:
    """``T``: the ``SL`` at which the counts, walked by (SL desc, id asc), reach ``budget``.

    Only the first ``k_cap`` entries of that order take part (``None``: all).  Returns None
    (minus infinity) when they do not reach ``budget``.  ``budget >= 1``.
    """
    order = sorted(range(len(ids)), key=lambda i: (-sl[i], ids[i]))
    if k_cap is not None:
        order = order[:k_cap]
    total = 0
    for i in order:
        total += counts[i]
        if total >= budget:
            return sl[i]
    return None


def _check_int(name: str, v, lo: int | None = 0) -> int:
    return check_int(name, v, lo, error=SelectError)


def select_tokens(
    queries,
    keys,
    counts,
    budget: int,
    *,
    bq: int = 8,
    bk: int = 8,
    normalize: bool = True,
    early_exit: bool = True,
    k_cap: int | None = None,
    strict: bool = True,
    score: str | None = None,
    gain: int | None = None,
) -> TokenSelection:
    """Select up to ``budget`` tokens from the entries of ``keys`` (see the module docstring).

    ``queries``: ``[Q, d]`` ints, ``Q >= 1``; ``keys``: ``[N, d]`` ints (``N >= 0``);
    ``counts``: ``[N]`` ints >= 0; ``budget >= 0``.  ``early_exit`` only changes
    ``planes_read`` / ``alive``, never ``ids`` / ``take``.  ``k_cap``: slots of the hardware's
    ranking (changes only ``planes_read``).  ``strict=False`` replaces the drop test
    ``SU < T`` by ``SU <= T`` (wrong; kept so that a test can show it).  ``score``: one of
    :data:`SCORES`; ``None`` means ``"norm"`` if ``normalize`` else ``"max"``.  ``"soft"`` needs
    ``gain`` (:func:`soft_gain`) and has no early exit.  Raises :class:`SelectError` on malformed
    or out-of-range input.
    """
    _check_widths(bq, bk)
    qs = _as_int_tensor(queries, "queries", 2)
    keys_t = _as_int_tensor(keys, "keys", 2)
    counts_t = _as_int_tensor(counts, "counts", 1)
    n_q, d = qs.shape
    if n_q < 1 or d < 1:
        raise SelectError(f"queries must be [Q, d] with Q >= 1 and d >= 1, got {tuple(qs.shape)}")
    n = keys_t.shape[0]
    if n and keys_t.shape[1] != d:
        raise SelectError(f"keys have d={keys_t.shape[1]} columns but queries have d={d}")
    if counts_t.shape[0] != n:
        raise SelectError(f"counts has {counts_t.shape[0]} entries for N={n} keys")
    _check_range(qs, "queries", bq)
    _check_range(keys_t, "keys", bk)
    if n and int(counts_t.min()) < 0:
        raise SelectError(f"counts holds {int(counts_t.min())}; counts must be >= 0")
    if n and int(counts_t.max()) >= COUNT_LIMIT:
        raise SelectError(f"counts holds {int(counts_t.max())}; counts must be below 2^40")
    _check_int("budget", budget)
    if k_cap is not None:
        _check_int("k_cap", k_cap, 1)
    for name, v in (("normalize", normalize), ("early_exit", early_exit), ("strict", strict)):
        if not isinstance(v, bool):
            raise SelectError(f"{name} must be a bool, got {v!r}")
    if score is None:
        score = "norm" if normalize else "max"
    if score not in SCORES:
        raise SelectError(f"score={score!r} must be one of {', '.join(SCORES)}")
    normalize = score == "norm"
    if score == "soft":
        if gain is None:
            raise SelectError("score='soft' needs a gain (model.dre.tokens.soft_gain)")
        _check_int("gain", gain, 1)
        if gain >= 1 << GAIN_BITS:
            raise SelectError(f"gain={gain} must be below 2^{GAIN_BITS}")
    elif gain is not None:
        raise SelectError(f"gain is only used by score='soft', not score={score!r}")

    cnt = counts_t.tolist()
    live = [j for j in range(n) if cnt[j] > 0]
    if (budget == 0 and (early_exit or score == "soft")) or not live:
        return TokenSelection((), (), 0, (0,) * bk, ())
    if score == "soft":  # no early exit: every live entry reads every plane
        exact = qs @ keys_t[live].T  # [Q, live]
        ranked = soft_scores(exact, [cnt[j] for j in live], gain)
        return _walk(live, ranked, cnt, budget, n_q * len(live) * bk, (len(live),) * bk)

    q_pos = qs.clamp(min=0).sum(dim=1)  # [Q]
    q_neg = qs.clamp(max=0).sum(dim=1)
    mu_prev = ((1 << (bk - 1)) - 1) * q_pos - (1 << (bk - 1)) * q_neg  # MU0, static bound
    partial = torch.zeros(n_q, n, dtype=torch.int64)
    alive = torch.tensor(live, dtype=torch.int64)
    alive_per_pass = []
    for p in range(bk - 1, -1, -1):
        alive_per_pass.append(len(alive))
        plane = (keys_t[alive] >> p) & 1  # [A, d], bit p of the two's complement code
        weight = -(1 << p) if p == bk - 1 else 1 << p
        partial[:, alive] += weight * (qs @ plane.T)
        if p == 0 or not early_exit:
            continue
        r = (1 << p) - 1
        lo = partial[:, alive] + r * q_neg[:, None]  # L[c, j], [Q, A]
        hi = partial[:, alive] + r * q_pos[:, None]  # U[c, j]
        ml, mu = lo.max(dim=1).values, hi.max(dim=1).values
        if normalize:
            sl = (lo - mu_prev[:, None]).max(dim=0).values
            su = (hi - ml[:, None]).max(dim=0).values
        else:
            sl, su = lo.max(dim=0).values, hi.max(dim=0).values
        mu_prev = mu
        ids = alive.tolist()
        t = budget_threshold(sl.tolist(), ids, [cnt[j] for j in ids], budget, k_cap)
        if t is not None:
            keep = su >= t if strict else su > t
            alive = alive[keep]

    # After plane 0 the survivors' partials are exact; every query's maximum is a survivor's.
    exact = partial[:, alive]
    if normalize and len(alive):  # never empty with the strict test (docs/select.md)
        exact = exact - exact.max(dim=1, keepdim=True).values
    score_v = exact.max(dim=0).values.tolist() if len(alive) else []
    return _walk(
        alive.tolist(), score_v, cnt, budget, n_q * sum(alive_per_pass), tuple(alive_per_pass)
    )


def _walk(
    entries: list[int], score: list[int], cnt: list[int], budget: int, planes: int, alive: tuple
) -> TokenSelection:
    """The budget walk over ``entries`` in (score descending, index ascending) order."""
    order = sorted(range(len(entries)), key=lambda i: (-score[i], entries[i]))
    ids, take, scores, taken = [], [], [], 0
    for i in order:
        if taken == budget:
            break
        j = entries[i]
        t_j = min(cnt[j], budget - taken)
        ids.append(j)
        take.append(t_j)
        scores.append(score[i])
        taken += t_j
    return TokenSelection(tuple(ids), tuple(take), planes, alive, tuple(scores))


__all__ = [
    "COUNT_LIMIT",
    "GAIN_BITS",
    "GAIN_SHIFT",
    "SCORES",
    "SOFT_E",
    "SOFT_FB",
    "SOFT_M",
    "TokenSelection",
    "budget_threshold",
    "exp2_fixed",
    "log2_fixed",
    "select_tokens",
    "soft_gain",
    "soft_scores",
]
