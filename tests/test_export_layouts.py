"""The stream payload layouts in the exported JSON, checked bit for bit against Amaranth.

``hw.export.stream_docs`` describes every payload of hw/layouts.py as offsets and widths.  Here
random field values are placed into an integer by following only the JSON, and the result must
equal what Amaranth's own ``layout.const(...)`` packs for the same values.
"""

from __future__ import annotations

import json
import random

import pytest

from hw import export as hw_export
from hw import layouts
from hw.cluster_unit import result_layout
from hw.dre import queries_stream_layout, selections_layout
from model.dre.config import DREConfig

SMALL = DREConfig(d=8, lanes=4, bq=5, bk=6, n_max=16, k_cap=4, grid_max=36, q_max=3)


def draw(doc, rng):
    """(value for layout.const, the integer the JSON says it packs to)."""
    if "fields" in doc:
        value, raw = {}, 0
        for f in doc["fields"]:
            v, r = draw(f, rng)
            value[f["name"]], raw = v, raw | (r << f["offset"])
        return value, raw
    if "count" in doc:
        value, raw = [], 0
        for i in range(doc["count"]):
            v, r = draw(doc["element"], rng)
            value.append(v)
            raw |= r << (i * doc["stride"])
        return value, raw
    w = doc["width"]
    if "enum" in doc:
        v = rng.choice(list(doc["enum"].values()))
        return v, v
    lo = -(1 << (w - 1)) if doc["signed"] else 0
    v = rng.randrange(lo, lo + (1 << w))
    return v, v & ((1 << w) - 1)


@pytest.mark.parametrize("rule", ["v1", "v2"])
def test_stream_layouts_match_amaranth(seed, rule):
    rng = random.Random(seed)
    docs = hw_export.stream_docs(SMALL, rule)
    actual = {
        "keys": layouts.key_layout(SMALL),
        "assignments": result_layout(SMALL),
        "queries": queries_stream_layout(SMALL, rule),
        "selections": selections_layout(SMALL, rule),
    }
    assert set(docs["streams"]) == set(actual)
    others = {n: getattr(layouts, n)(SMALL) for n in layouts.__all__ if n.endswith("_layout")}
    others = {n: lay for n, lay in others.items() if n != "key_layout"}
    assert set(docs["layouts"]) >= set(others)
    pairs = [(docs["streams"][n]["payload"], lay) for n, lay in actual.items()]
    pairs += [(docs["layouts"][n], lay) for n, lay in others.items()]
    for doc, lay in pairs:
        assert doc["width"] == lay.size
        for _ in range(20):
            value, raw = draw(doc, rng)
            assert lay.const(value).as_value().value == raw, (doc, value)


def test_exported_json_documents_streams(tmp_path):
    out = tmp_path / "j.v"
    sets = [x for k, v in SMALL.to_dict().items() for x in ("--set", f"{k}={v}")]
    assert hw_export.main(["--out", str(out), *sets]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert set(meta["streams"]) == {"keys", "assignments", "queries", "selections"}
    sel = {f["name"]: f for f in meta["streams"]["selections"]["payload"]["fields"]}
    assert sel["kind"]["enum"] == {"RECORD": 0, "TRAILER": 1} and sel["kind"]["offset"] == 0
    status = {f["name"]: f for f in meta["register_map"]}["STATUS"]
    assert [f["name"] for f in status["fields"]][:2] == ["cluster_idle", "select_busy"]
