"""Bit-exact reference of DRE retrieval: bit-plane scoring with early-exit top-K selection.

This is the contract that the RTL (``hw/selector.py``) is checked against, bit for bit.  It is
written to be read first; the per-plane dot products are vectorised with torch (int64, exact).

Exact rule
----------
For a query ``q`` (``d`` elements, ``bq``-bit two's complement), ``N`` candidate keys
``keys[j]`` (``bk``-bit two's complement) and integer biases ``bias[j]``::

    score_j = sum_i q_i * keys[j, i] + bias[j]

Order the candidates by (score descending, index ascending).  ``C`` = the number of candidates
with ``score_j >= max(score) - margin``.  The selection is the first
``n_sel = min(k_max, max(k_min, C), N)`` candidates in that order: those within the margin of the
best, topped up to ``k_min`` and cut to ``k_max``.

Bit-plane schedule and early exit
---------------------------------
``keys[j] = -2^(bk-1) * plane_{bk-1}(keys[j]) + sum_{p<bk-1} 2^p * plane_p(keys[j])`` with
``plane_p`` the 0/1 vector of bit ``p``, so ``q . keys[j] = sum_p w_p * (q . plane_p)``.  Planes
are processed from ``p = bk-1`` (the sign plane, ``w = -2^(bk-1)``) down to ``0``.  A pass over the
candidates still *alive* adds ``w_p * (q . plane_p(keys[j]))`` to the partial score ``P_j``
(which starts at ``bias[j]``).  After the pass the planes left are ``p-1 .. 0`` with weights summing
to ``r = 2^p - 1``, and each ``q . plane`` lies in ``[Qneg, Qpos]`` (``Qpos = sum max(q_i, 0)``,
``Qneg = sum min(q_i, 0)``), so::

    L_j = P_j + r * Qneg  <=  score_j  <=  U_j = P_j + r * Qpos

With ``L_(k)`` the k-th largest ``L`` among the alive candidates (minus infinity if fewer than
``k`` are alive) the threshold is ``T = max(min(maxL - margin, L_(k_min)), L_(k_max))`` and every
alive candidate with ``U_j < T`` is dropped: its remaining planes are never read.

Why each drop is safe (a dropped candidate is never in the exact selection).  Candidate ``j`` is
selected iff its rank (0-based position in the order) is below ``k_max`` and
(``score_j >= max(score) - margin`` or its rank is below ``k_min``).  Suppose ``U_j < T``:

* ``T = L_(k_max)`` (the outer max picked it): ``k_max`` alive candidates ``i != j`` have
  ``score_i >= L_i >= L_(k_max) > U_j >= score_j``, all *strictly* above ``j``, so they precede
  ``j`` whatever the indices: ``rank(j) >= k_max``, not selected.
* ``T = min(maxL - margin, L_(k_min))``: then ``score_j <= U_j < maxL - margin <=
  max(score) - margin`` (``maxL`` is the lower bound of a real candidate), so ``j`` is outside
  the margin, and ``k_min`` candidates score strictly above it, so ``rank(j) >= k_min``: not
  selected.

Strictness matters: a candidate with ``U_j == T`` may end exactly equal to the ``k_max``-th and
win the tie on its lower index; ``U_j < T`` keeps it.  ``-inf`` entries only make ``T`` smaller
(never drop more).  The best candidate is never dropped (``U_best >= max(score) >= maxL >= T``).

Why the survivors give the same selection.  Every selected candidate survives, and the selected
ones are a prefix of the order, so they are also the first ``n_sel`` survivors in order; the
maximum score is a survivor's; every candidate within the margin is in that prefix when
``C <= k_max`` and at least ``k_max`` survivors are within the margin otherwise.  Hence
``min(k_max, max(k_min, C_survivors), N_survivors) == n_sel`` and the selection over survivors is
identical.  ``docs/select.md`` repeats this with the corner cases that the tests pin down.

``planes_read`` = sum over passes of the number of candidates alive at the start of the pass
(``N * bk`` without early exit); it is what the hardware reads from the plane memories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model.dre.config import check_int

#: widths accepted for q and keys (as in model.dre.config.DREConfig)
WIDTH_RANGE = (2, 16)


def _check_widths(bq, bk) -> None:
    """``bq`` and ``bk`` are ints in :data:`WIDTH_RANGE`, else :class:`SelectError`."""
    for name, bits in (("bq", bq), ("bk", bk)):
        if not isinstance(bits, int) or not WIDTH_RANGE[0] <= bits <= WIDTH_RANGE[1]:
            raise SelectError(f"{name}={bits!r}; allowed {WIDTH_RANGE[0]} <= {name} <= 16")


#: bias magnitude accepted, so that every intermediate value stays far inside int64
BIAS_LIMIT = 1 << 60


class SelectError(ValueError):
    """An input of :func:`select` is malformed or out of range; the message says which."""


@dataclass(frozen=True)
class Selection:
    """Result of one retrieval.

    indices      selected candidate indices, score descending, ties to the lower index
    scores       their exact integer scores, same order
    planes_read  bit-plane reads (one plane of one candidate each) over all passes
    alive        candidates alive at the start of each pass, sign plane first (len == bk)
    """

    indices: tuple[int, ...]
    scores: tuple[int, ...]
    planes_read: int
    alive: tuple[int, ...]


def _as_int_tensor(x, name: str, dims: int) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    bad_dtype = t.dtype == torch.bool or t.is_floating_point() or t.is_complex()
    if bad_dtype and t.numel():  # an empty list becomes float32: only its shape matters
        raise SelectError(f"{name} must hold integers, got dtype {t.dtype}")
    if t.dim() != dims:
        raise SelectError(f"{name} must be {dims}-dimensional, got shape {tuple(t.shape)}")
    return t.to(torch.int64)


def _check_range(t: torch.Tensor, name: str, bits: int) -> None:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
        bad = t[(t < lo) | (t > hi)][0]
        raise SelectError(
            f"{name} holds {int(bad)}, outside the {bits}-bit two's complement range [{lo}, {hi}]"
        )


def _kth_largest(values: list[int], k: int) -> int | None:
    """The k-th largest of ``values`` (1-based), or None (minus infinity) if there are fewer."""
    return sorted(values, reverse=True)[k - 1] if k <= len(values) else None


def drop_threshold(lower: list[int], margin: int, k_min: int, k_max: int) -> int | None:
    """``T = max(min(maxL - margin, L_(k_min)), L_(k_max))``; None stands for minus infinity."""
    max_l = max(lower)
    l_kmin = _kth_largest(lower, k_min)
    l_kmax = _kth_largest(lower, k_max)
    inner = None if l_kmin is None else min(max_l - margin, l_kmin)
    candidates = [t for t in (inner, l_kmax) if t is not None]
    return max(candidates) if candidates else None


def select(
    q: Sequence[int] | torch.Tensor,
    keys: Sequence[Sequence[int]] | torch.Tensor,
    bias: Sequence[int] | torch.Tensor,
    margin: int,
    k_max: int,
    k_min: int = 1,
    bq: int = 8,
    bk: int = 8,
    early_exit: bool = True,
) -> Selection:
    """Select the candidates of ``keys`` for query ``q`` (see the module docstring for the rule).

    ``q``: (d,) ints in ``bq``-bit two's complement; ``keys``: (N, d) ints in ``bk``-bit two's
    complement; ``bias``: (N,) ints; ``margin >= 0``; ``1 <= k_min <= k_max``.  ``early_exit``
    only changes ``planes_read`` and ``alive``, never the selection.  Raises :class:`SelectError`.
    """
    _check_widths(bq, bk)
    q = _as_int_tensor(q, "q", 1)
    keys = _as_int_tensor(keys, "keys", 2)
    bias = _as_int_tensor(bias, "bias", 1)
    n, d = keys.shape
    if n < 1:
        raise SelectError("keys must hold at least one candidate (N >= 1)")
    if d != q.shape[0] or d < 1:
        raise SelectError(f"keys have d={d} columns but q has {q.shape[0]} elements")
    if bias.shape[0] != n:
        raise SelectError(f"bias has {bias.shape[0]} entries for N={n} candidates")
    _check_range(q, "q", bq)
    _check_range(keys, "keys", bk)
    if int(bias.abs().max()) >= BIAS_LIMIT:
        raise SelectError(f"|bias| must be below 2^60, got {int(bias.abs().max())}")
    for name, v in (("margin", margin), ("k_min", k_min), ("k_max", k_max)):
        check_int(name, v, error=SelectError)
    if margin < 0:
        raise SelectError(f"margin={margin} must be >= 0")
    if not 1 <= k_min <= k_max:
        raise SelectError(f"need 1 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")

    q_pos = int(q.clamp(min=0).sum())
    q_neg = int(q.clamp(max=0).sum())
    partial = bias.clone()  # P_j, exact
    alive = torch.arange(n)  # increasing index order, kept that way
    alive_per_pass = []
    for p in range(bk - 1, -1, -1):
        alive_per_pass.append(len(alive))
        plane = (keys[alive] >> p) & 1  # bit p of the two's complement code
        weight = -(1 << p) if p == bk - 1 else 1 << p
        partial[alive] += weight * (plane @ q)
        if early_exit:
            r = (1 << p) - 1
            lower = (partial[alive] + r * q_neg).tolist()
            upper = partial[alive] + r * q_pos
            t = drop_threshold(lower, margin, k_min, k_max)
            if t is not None:
                alive = alive[upper >= max(min(t, 1 << 62), -(1 << 62))]

    # After plane 0 the survivors' partial scores are exact: select among them.
    scores = {int(j): int(partial[j]) for j in alive}
    order = sorted(scores, key=lambda j: (-scores[j], j))
    best = scores[order[0]]
    within = sum(1 for j in order if scores[j] >= best - margin)
    n_sel = min(k_max, max(k_min, within), len(order))
    chosen = order[:n_sel]
    return Selection(
        indices=tuple(chosen),
        scores=tuple(scores[j] for j in chosen),
        planes_read=sum(alive_per_pass),
        alive=tuple(alive_per_pass),
    )


__all__ = ["SelectError", "Selection", "drop_threshold", "select"]
