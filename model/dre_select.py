"""Placeholder: bit-plane early-exit selection reference (issue: DRE retrieval datapath)."""


class Selection:  # pragma: no cover - replaced by the real implementation
    pass


def select(*args, **kwargs):  # pragma: no cover
    raise NotImplementedError("model.dre_select.select is not written yet")
