"""Placeholder: clustering-unit reference (issue: DRE clustering datapath)."""


class ClusterRef:  # pragma: no cover - replaced by the real implementation
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("model.dre_cluster.ClusterRef is not written yet")
