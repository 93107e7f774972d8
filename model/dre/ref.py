"""Bit-exact integer reference of every DRE unit: the contract the RTL is checked against.

* :func:`select` (``model/dre/select.py``): v1 retrieval, bit-plane scoring with early-exit
  top-K selection (one query, bias, margin, k_min / k_max).
* :func:`select_tokens` (``model/dre/tokens.py``): v2 retrieval, a token budget over entries
  with member counts and several query vectors, ranked by the soft score (``score="soft"``
  with a ``gain`` from :func:`soft_gain`), the normalised max (bit-plane early exit) or the
  raw max.
* :class:`ClusterRef` (``model/dre/cluster.py``): temporal/spatial clustering with the
  centroid table the hardware keeps.
* :class:`DRERef` (``model/dre/top.py``): the whole DRE (clustering, plane store, retrieval)
  with its :class:`Registers`.
"""

from model.dre.cluster import ClusterRef
from model.dre.select import SelectError, Selection, select
from model.dre.tokens import SCORES, TokenSelection, select_tokens, soft_gain
from model.dre.top import DRERef, Registers

__all__ = [
    "SCORES",
    "ClusterRef",
    "DRERef",
    "Registers",
    "SelectError",
    "Selection",
    "TokenSelection",
    "select",
    "select_tokens",
    "soft_gain",
]
