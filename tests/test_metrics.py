"""Metrics against hand-computed cases, and the benchmark end to end on its --quick setting."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from model import bench
from model.metrics import (
    ByteModel,
    attention_recall,
    output_error_per_head,
    past_recall_per_head,
    relative_l2,
)


def test_attention_recall_hand_cases():
    assert float(attention_recall(torch.tensor([0.5, 0.3, 0.2]), torch.tensor([1, 0, 1]))) == (
        pytest.approx(0.7)
    )
    # unnormalised rows: only the ratio matters; two queries are averaged
    probs = torch.tensor([[1.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
    sel = torch.tensor([False, False, True])
    assert float(attention_recall(probs, sel)) == pytest.approx((0.5 + 0.25) / 2)
    assert float(attention_recall(probs, torch.ones(3, dtype=torch.bool))) == 1.0
    assert float(attention_recall(probs, torch.zeros(3, dtype=torch.bool))) == 0.0
    # a query with no mass counts as fully recalled
    assert float(attention_recall(torch.zeros(1, 3), sel)) == 1.0


def test_relative_l2_hand_cases():
    assert relative_l2(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])) == pytest.approx(4 / 3)
    assert relative_l2(torch.ones(2, 2), torch.ones(2, 2)) == 0.0
    assert relative_l2(torch.zeros(3), torch.zeros(3)) == 0.0
    assert relative_l2(torch.ones(3), torch.zeros(3)) == float("inf")


def test_byte_model():
    b = ByteModel(head_dim=64)
    assert b.token_bytes == 256  # 64 fp16 keys + 64 fp16 values
    assert b.index_entry_bytes == 132  # 64 fp16 centroid + 4-byte count
    assert ByteModel(8, elem_bytes=1, count_bytes=2).index_entry_bytes == 10


def test_per_head_recall_and_error():
    # 2 KV heads, 1 query head each, 1 new token; 3 past tokens + 1 new
    probs = torch.tensor([[[0.1, 0.2, 0.3, 0.4]], [[0.25, 0.25, 0.0, 0.5]]])
    got = past_recall_per_head(probs, 3, [torch.tensor([2]), torch.tensor([0, 2])], 1)
    assert got == pytest.approx([0.3 / 0.6, 0.25 / 0.5])
    out = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])
    ref = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert output_error_per_head(out, ref, 1) == pytest.approx([0.0, 1.0])
    assert output_error_per_head(out, ref, 2) == pytest.approx([1 / 2**0.5])


def test_bench_quick_end_to_end(capsys):
    assert bench.main(["--quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [ln.split() for ln in lines if ln and not ln.startswith(("#", "-", "policy"))]
    rows = {row[0]: row for row in table}
    assert len(rows) == 5  # full, window, rekv, resv, oracle
    full = rows["full"]
    assert float(full[1]) == 1.0 and float(full[2]) == 0.0  # exact attention: recall 1, error 0
    for name, row in rows.items():
        assert 0.0 <= float(row[1]) <= 1.0, name
        assert int(row[3]) <= int(full[3]), name  # nobody attends more than everything


def test_bench_sweep_writes_csv_and_png(tmp_path, capsys):
    assert bench.main(["--quick", "--frames", "4", "--sweep", "--out", str(tmp_path)]) == 0
    with (tmp_path / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["policy"] for r in rows} == {"resv", "rekv", "window", "oracle", "resv-margin"}
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    # a larger window never attends fewer tokens
    win = sorted((float(r["value"]), float(r["tokens"])) for r in rows if r["policy"] == "window")
    assert [t for _, t in win] == sorted(t for _, t in win)
    # the oracle bounds ReSV at each budget
    best = {r["value"]: float(r["recall"]) for r in rows if r["policy"] == "oracle"}
    for r in rows:
        if r["policy"] == "resv":
            assert float(r["recall"]) <= best[r["value"]] + 1e-9


def test_bench_reports_bad_arguments(capsys):
    assert bench.main(["--quick", "--tau-t", "1.5"]) == 2
    assert "tau_t=1.5 must lie in [0, 1]" in capsys.readouterr().err
    assert bench.main(["--quick", "--video", "/nonexistent/frames"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_bench_matched_budgets_table_and_csv(tmp_path, capsys):
    out = tmp_path / "b.csv"
    assert bench.main(["--quick", "--frames", "4", "--budgets", "64,128", "--csv", str(out)]) == 0
    text = capsys.readouterr().out
    assert "## budget 64 tokens" in text and "## budget 128 tokens" in text
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    cols = ["policy", "budget", "recall", "out_err", "tokens", "fetched_kb", "onchip_kb"]
    assert {*cols, "oracle_frac"} <= set(rows[0])
    assert {r["policy"] for r in rows} == {"full", "window", "rekv", "resv", "resv2", "oracle"}
    for b in ("64", "128"):
        at = {r["policy"]: r for r in rows if r["budget"] == b}
        # every policy at the budget attends the same number of past tokens (64 | budget) ...
        assert len({at[p]["tokens"] for p in ("window", "rekv", "oracle")}) == 1
        # ... but ReSV, whose clusters also hold the 4 sink tokens (attended anyway)
        tokens = float(at["rekv"]["tokens"])
        assert tokens - 4 <= float(at["resv"]["tokens"]) <= tokens
        assert float(at["oracle"]["oracle_frac"]) == 1.0
        for p in ("window", "rekv", "resv", "resv2"):  # nothing beats the bound
            assert float(at[p]["recall"]) <= float(at["oracle"]["recall"]) + 1e-9, p


def test_bench_quick_keeps_explicit_options(capsys):
    assert bench.main(["--quick", "--frames", "3"]) == 0
    assert "# frames=3 grid=8x8" in capsys.readouterr().out


def test_bench_refuses_more_frames_than_the_source_has(tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.zeros((4, 16, 16), dtype=np.uint8))
    assert bench.main(["--quick", "--frames", "100", "--video", str(tmp_path / "v.npy")]) == 2
    assert "--frames=100 but" in capsys.readouterr().err
    assert bench.main(["--quick", "--csv", str(tmp_path / "x.csv")]) == 2
    assert "give --budgets" in capsys.readouterr().err
