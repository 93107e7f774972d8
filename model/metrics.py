"""Quality and cost metrics of a KV-cache retrieval policy, measured on the model's own attention.

Quality (per layer and KV head, per frame, against exact attention on the same q, k, v):

* :func:`attention_recall`: the share of the full-attention probability mass over the *past*
  tokens that lands on the past tokens the policy selected.  The new frame's own tokens are
  always attended (causally) and are left out, so 1.0 means nothing of the past was missed and
  the figure is not inflated by the frame attending to itself.  Averaged over the new tokens and
  the query heads of the group.
* :func:`relative_l2`: ``|out - ref| / |ref|`` (Frobenius norms) of the attention output with the
  selection against the exact attention output.

Cost, with the byte model of :class:`ByteModel` (per KV head; a layer's figure sums its heads):

* **token**: key and value, ``d`` elements each, ``elem_bytes`` each (fp16: 2), so
  ``2 * d * elem_bytes`` bytes;
* **index entry**: what a policy keeps on chip to decide what to fetch: one ``d``-element vector
  (a ReSV centroid, a ReKV frame-mean key) plus a ``count_bytes`` member count;
* **on-chip** (held) = index entries + *resident* tokens (attention sinks and the local window,
  kept on chip in full);
* **fetched** per frame = selected past tokens that are not resident, times the token size (they
  come from the off-chip KV store).  The member lists (token addresses) of ReSV clusters and
  ReKV frames are off-chip metadata whose reads are not counted;
* **off-chip** = the whole KV store (every past token), the same for every policy.

Full attention holds nothing on chip and fetches the whole past every frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ByteModel:
    """Bytes of the KV cache objects (see the module docstring)."""

    head_dim: int
    elem_bytes: int = 2
    count_bytes: int = 4

    @property
    def token_bytes(self) -> int:
        """One token's key and value in one KV head."""
        return 2 * self.head_dim * self.elem_bytes

    @property
    def index_entry_bytes(self) -> int:
        """One centroid (or frame-mean key) and its member count, in one KV head."""
        return self.head_dim * self.elem_bytes + self.count_bytes


@dataclass(frozen=True)
class MemoryUse:
    """A policy's memory after its last ``retrieve`` (one layer, all KV heads summed)."""

    onchip_bytes: int
    offchip_bytes: int
    fetched_bytes: int


def attention_recall(probs: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Share of attention mass on the selected tokens, per query, averaged over queries.

    ``probs [..., Q, N]``: attention probabilities of ``Q`` queries over the ``N`` tokens
    considered (they need not sum to 1: only the ratio matters).  ``selected``: bool ``[N]`` (or
    broadcastable to ``probs``).  Returns a scalar tensor: the mean over all queries (and leading
    dims) of ``sum(probs * selected) / sum(probs)``; a query with no mass at all counts as 1.
    """
    total = probs.sum(dim=-1)
    hit = (probs * selected.to(probs.dtype)).sum(dim=-1)
    ratio = torch.where(total > 0, hit / total.clamp_min(1e-300), torch.ones_like(total))
    return ratio.mean()


def relative_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``|out - ref| / |ref|`` over all elements (0 when both are zero)."""
    num = torch.linalg.vector_norm((out - ref).double())
    den = torch.linalg.vector_norm(ref.double())
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


def past_recall_per_head(
    probs: torch.Tensor, n_past: int, past_ids: list[torch.Tensor], q_per_kv: int
) -> list[float]:
    """Per KV head, :func:`attention_recall` of full-attention ``probs [Hq, P, N + P]`` over the
    ``N = n_past`` past tokens, for the selection ``past_ids[h]``."""
    recalls = []
    for h, ids in enumerate(past_ids):
        if n_past == 0:
            recalls.append(1.0)
            continue
        mask = torch.zeros(n_past, dtype=torch.bool)
        mask[ids] = True
        group = probs[h * q_per_kv : (h + 1) * q_per_kv, :, :n_past]
        recalls.append(float(attention_recall(group, mask)))
    return recalls


def output_error_per_head(out: torch.Tensor, ref: torch.Tensor, q_per_kv: int) -> list[float]:
    """Per KV head, :func:`relative_l2` over the query heads of its group: ``[Hq, P, d]``."""
    h = out.shape[0] // q_per_kv
    return [
        relative_l2(out[i * q_per_kv : (i + 1) * q_per_kv], ref[i * q_per_kv : (i + 1) * q_per_kv])
        for i in range(h)
    ]
