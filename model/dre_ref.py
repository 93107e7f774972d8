"""Bit-exact integer reference of every DRE unit: the contract the RTL is checked against.

* :func:`select` (``model/dre_select.py``): bit-plane scoring with early-exit top-K selection.
* :class:`ClusterRef` (``model/dre_cluster.py``): temporal/spatial clustering with the
  centroid table the hardware keeps.
"""

from model.dre_cluster import ClusterRef
from model.dre_select import Selection, select

__all__ = ["ClusterRef", "Selection", "select"]
