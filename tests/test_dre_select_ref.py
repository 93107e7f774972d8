"""model.dre.select.select against an independent brute force (score everything, sort, cut).

The brute force below shares no code with the reference: plain Python integers, one multiply per
element, a full sort.  Random cases use tiny value ranges so that ties, equal scores and cuts
inside a run of equal scores happen often.
"""

from __future__ import annotations

import random

import pytest
import torch

import model.dre.select as dre_select
from model.dre.ref import Selection, select
from model.dre.select import SelectError


def brute_force(q, keys, bias, margin, k_max, k_min):
    scores = [
        sum(a * b for a, b in zip(q, k, strict=True)) + c for k, c in zip(keys, bias, strict=True)
    ]
    order = sorted(range(len(keys)), key=lambda j: (-scores[j], j))
    best = scores[order[0]]
    within = sum(s >= best - margin for s in scores)
    n_sel = min(k_max, max(k_min, within), len(keys))
    return [order[i] for i in range(n_sel)], [scores[order[i]] for i in range(n_sel)]


def rand_case(rng: random.Random, *, n=None, d=None, bq=None, bk=None):
    bq = bq or rng.choice([2, 3, 4, 8])
    bk = bk or rng.choice([2, 3, 4, 8])
    d = d or rng.choice([1, 2, 3, 5, 16])
    n = n or rng.randint(1, 24)
    narrow = rng.random() < 0.5  # narrow value ranges make ties likely
    qhi, khi = 1 << (bq - 1), 1 << (bk - 1)
    qr = (-min(qhi, 2), min(qhi, 2) - 1) if narrow else (-qhi, qhi - 1)
    kr = (-min(khi, 2), min(khi, 2) - 1) if narrow else (-khi, khi - 1)
    q = [rng.randint(*qr) for _ in range(d)]
    keys = [[rng.randint(*kr) for _ in range(d)] for _ in range(n)]
    bias = [rng.choice([0, 0, rng.randint(-3, 3), rng.randint(-300, 300)]) for _ in range(n)]
    k_max = rng.randint(1, n + 2)
    k_min = rng.randint(1, k_max)
    margin = rng.choice([0, 0, 1, 2, rng.randint(0, 50), 1 << 40])
    return dict(q=q, keys=keys, bias=bias, margin=margin, k_max=k_max, k_min=k_min, bq=bq, bk=bk)


def check(case):
    got = select(**case)
    want_idx, want_scores = brute_force(
        case["q"], case["keys"], case["bias"], case["margin"], case["k_max"], case.get("k_min", 1)
    )
    assert list(got.indices) == want_idx, case
    assert list(got.scores) == want_scores, case
    n, bk = len(case["keys"]), case.get("bk", 8)
    # planes_read bounds: the best candidate reads every plane, nobody reads more than bk
    assert len(got.alive) == bk and got.alive[0] == n
    assert all(a >= b for a, b in zip(got.alive, got.alive[1:], strict=False)), (
        "alive must not grow"
    )
    assert got.planes_read == sum(got.alive)
    assert bk * max(1, len(want_idx)) <= got.planes_read <= n * bk
    full = select(**case, early_exit=False) if "early_exit" not in case else None
    if full is not None:
        assert (full.indices, full.scores) == (got.indices, got.scores)
        assert full.planes_read == n * bk and full.alive == (n,) * bk
    return got


def test_random_against_brute_force(seed):
    rng = random.Random(seed)
    saved = 0
    for _ in range(1500):
        got = check(rand_case(rng))
        saved += got.alive[0] * len(got.alive) - got.planes_read
    assert saved > 0, "early exit never dropped anything: the random cases are too weak"


def test_tiny_values_many_ties(seed):
    """d <= 2, 2-bit keys and queries: scores collide constantly, cuts fall inside ties."""
    rng = random.Random(seed)
    for _ in range(1500):
        check(rand_case(rng, bq=2, bk=2, d=rng.choice([1, 2])))


@pytest.mark.parametrize("bk", [2, 4, 8])
def test_all_scores_equal(bk):
    n = 9
    keys = [[1, -1, 0, 1]] * n
    for k_max in (1, 3, n, n + 5):
        for k_min in range(1, k_max + 1, 2):
            for margin in (0, 7):
                case = dict(
                    q=[3, 2, -1, 1],
                    keys=keys,
                    bias=[5] * n,
                    margin=margin,
                    k_max=k_max,
                    k_min=k_min,
                    bq=4,
                    bk=bk,
                )
                got = check(case)
                assert got.indices == tuple(range(min(k_max, n)))  # ties: lower index first


def test_tie_at_the_cut_is_won_by_lower_index():
    # scores 12, 7, 12, 7, -3: candidates 1 and 3 tie for the third place; 1 must win
    keys = [[3, 0], [7, 7], [3, 0], [7, 7], [0, 1]]
    case = dict(q=[4, -3], keys=keys, bias=[0] * 5, margin=1 << 20, k_max=3, k_min=1, bq=4, bk=4)
    assert check(case).indices == (0, 2, 1)
    case["k_max"] = 1  # 0 and 2 tie for the first place
    assert check(case).indices == (0,)


@pytest.mark.parametrize("bk", [2, 4, 8])
def test_extreme_values(bk):
    lo_k, lo_q = -(1 << (bk - 1)), -128
    n, d = 6, 16
    for keys in (
        [[lo_k] * d] * n,
        [[lo_k if (i + j) % 2 else -lo_k - 1 for i in range(d)] for j in range(n)],
    ):
        for q in ([lo_q] * d, [127] * d, [lo_q, 127] * (d // 2)):
            check(
                dict(
                    q=q,
                    keys=keys,
                    bias=[0, -1, 1, 0, 1 << 20, -(1 << 20)],
                    margin=0,
                    k_max=3,
                    k_min=1,
                    bq=8,
                    bk=bk,
                )
            )


def test_single_candidate_and_k_max_beyond_n():
    got = check(dict(q=[1, 2], keys=[[3, -4]], bias=[10], margin=0, k_max=4, k_min=2))
    assert got.indices == (0,) and got.scores == (1 * 3 + 2 * -4 + 10,)
    assert got.planes_read == 8


def test_margin_zero_and_huge(seed):
    rng = random.Random(seed)
    for margin in (0, 1 << 50):
        for _ in range(200):
            case = rand_case(rng)
            case["margin"] = margin
            got = check(case)
            if margin == 1 << 50:  # everything is within the margin: exactly min(k_max, N)
                assert len(got.indices) == min(case["k_max"], len(case["keys"]))


def test_early_exit_drops_a_lot_on_separated_scores():
    """One clear winner, k_max = 1: after the sign plane almost everyone is gone."""
    n, d = 64, 32
    q = [100] * d
    keys = [[-100 + j] * d for j in range(n)]
    got = check(dict(q=q, keys=keys, bias=[0] * n, margin=0, k_max=1, bq=8, bk=8))
    assert got.indices == (n - 1,)
    assert got.planes_read < n * 8 // 2


def test_strict_drop_is_needed(monkeypatch):
    """Dropping on U_j <= T (instead of <) loses a candidate that ties and wins on index."""
    # Two identical candidates, k_max = 1: in the last pass L == U == T for both; the strict rule
    # keeps both and candidate 0 wins on its index, the non-strict one drops the winner.
    case = dict(q=[1], keys=[[1], [1]], bias=[0, 0], margin=0, k_max=1, k_min=1, bq=2, bk=2)
    assert select(**case).indices == (0,)
    real = dre_select.drop_threshold
    # bump T by one: equivalent to the non-strict rule U <= T on integers
    monkeypatch.setattr(
        dre_select, "drop_threshold", lambda *a: None if real(*a) is None else real(*a) + 1
    )
    with pytest.raises((AssertionError, IndexError)):
        check(case)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(q=[2, 0]), "q holds 2"),
        (dict(keys=[[0, -3]]), "keys holds -3"),
        (dict(keys=[[0, 0, 0]]), "d=3"),
        (dict(keys=torch.zeros(0, 2, dtype=torch.int64), bias=[]), "N >= 1"),
        (dict(bias=[0, 1]), "bias has 2"),
        (dict(margin=-1), "margin=-1"),
        (dict(k_min=0), "k_min=0"),
        (dict(k_min=3, k_max=2), "k_min=3"),
        (dict(k_max=1.5), "k_max must be an integer"),
        (dict(q=[0.5, 0.0]), "integers"),
        (dict(bk=1), "bk=1"),
        (dict(bq=17), "bq=17"),
    ],
)
def test_input_validation(change, match):
    case = dict(q=[1, -2], keys=[[1, -2]], bias=[0], margin=0, k_max=1, bq=2, bk=2)
    case.update(change)
    with pytest.raises(SelectError, match=match):
        select(**case)


def test_selection_type():
    got = select([1], [[1]], [0], 0, 1, bq=2, bk=2)
    assert isinstance(got, Selection)
    assert got == Selection(indices=(0,), scores=(1,), planes_read=2, alive=(1, 1))
