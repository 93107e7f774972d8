"""Bit-exact integer reference of every DRE unit: the contract the RTL is checked against.

* :func:`select` (``model/dre/select.py``): v1 retrieval, bit-plane scoring with early-exit
  top-K selection (one query, bias, margin, k_min / k_max).
* :func:`select_tokens` (``model/dre/tokens.py``): v2 retrieval, a token budget over entries
  with member counts and several query vectors (normalised max), bit-plane early exit.
* :class:`ClusterRef` (``model/dre/cluster.py``): temporal/spatial clustering with the
  centroid table the hardware keeps.
"""

from model.dre.cluster import ClusterRef
from model.dre.select import SelectError, Selection, select
from model.dre.tokens import TokenSelection, select_tokens

__all__ = ["ClusterRef", "SelectError", "Selection", "TokenSelection", "select", "select_tokens"]
