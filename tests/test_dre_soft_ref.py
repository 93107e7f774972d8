"""The soft score of ``model.dre.ref.select_tokens`` (``score="soft"``).

Three independent checks:

* a brute force in plain Python integers whose tables are computed with ``decimal`` at 40
  digits (no code shared with the reference), bit for bit on random and adversarial cases;
* the integer score against the float soft score of the golden model (``ReSVCache``) on the same
  dequantised inputs: the integer score approximates ``2^E * exp(score_float)`` and selects
  (almost) the same clusters;
* input validation.
"""

from __future__ import annotations

import itertools
import math
import random
from decimal import ROUND_FLOOR, Decimal, getcontext

import pytest
import torch

from model.dre.quant import quantize, symmetric_scale
from model.dre.ref import SelectError, select_tokens
from model.dre.tokens import (
    GAIN_BITS,
    GAIN_SHIFT,
    SOFT_E,
    SOFT_FB,
    SOFT_M,
    exp2_table,
    log2_table,
    soft_gain,
)
from model.resv import cluster_scores

getcontext().prec = 40


def _round(x: Decimal) -> int:
    return int((x + Decimal("0.5")).to_integral_value(rounding=ROUND_FLOOR))


def dec_exp2_table() -> list[int]:
    ln2 = Decimal(2).ln()
    return [
        _round(Decimal(2) ** SOFT_E * (-(Decimal(f) / (1 << SOFT_FB)) * ln2).exp())
        for f in range(1 << SOFT_FB)
    ]


def dec_log2_table() -> list[int]:
    ln2 = Decimal(2).ln()
    return [
        _round(Decimal(1 << SOFT_FB) * (1 + Decimal(m) / (1 << SOFT_M)).ln() / ln2)
        for m in range(1 << SOFT_M)
    ]


EXP2 = dec_exp2_table()
LOG2 = dec_log2_table()


def brute_exp2(x: int) -> int:
    return EXP2[x % (1 << SOFT_FB)] // (1 << (x // (1 << SOFT_FB)))


def brute_log2(x: int) -> int:
    p = 0
    while (2 << p) <= x:
        p += 1
    m = (x * (1 << SOFT_M) // (1 << p)) - (1 << SOFT_M)  # the M bits below the leading one
    return p * (1 << SOFT_FB) + LOG2[m]


def brute_soft(queries, keys, counts, budget, gain):
    live = [j for j in range(len(keys)) if counts[j] > 0]
    if not live or budget == 0:
        return [], []
    s = [[sum(a * b for a, b in zip(q, k, strict=True)) for k in keys] for q in queries]
    score = dict.fromkeys(live, 0)
    for row in s:
        best = max(row[j] for j in live)
        u = {j: (best - row[j]) * gain // (1 << GAIN_SHIFT) for j in live}
        total = sum(counts[j] * brute_exp2(u[j]) for j in live)
        z = brute_log2(total) - SOFT_E * (1 << SOFT_FB)
        assert z >= 0
        for j in live:
            score[j] += brute_exp2(u[j] + z)
    ids, take, taken = [], [], 0
    for j in sorted(live, key=lambda j: (-score[j], j)):
        if taken >= budget:
            break
        ids.append(j)
        take.append(min(counts[j], budget - taken))
        taken += take[-1]
    return ids, take


def test_tables_match_an_independent_computation():
    assert list(exp2_table()) == EXP2
    assert list(log2_table()) == LOG2
    assert EXP2[0] == 1 << SOFT_E and all(a > b for a, b in itertools.pairwise(EXP2))
    assert LOG2[0] == 0 and all(a <= b for a, b in itertools.pairwise(LOG2))
    assert max(LOG2) <= 1 << SOFT_FB


def _rand_case(rng: random.Random):
    bq, bk = rng.choice([2, 3, 4, 8]), rng.choice([2, 3, 4, 8])
    d, n, n_q = rng.choice([1, 2, 5, 16]), rng.randint(1, 20), rng.choice([1, 2, 3, 4, 16])
    narrow = rng.random() < 0.4  # ties
    qhi, khi = 1 << (bq - 1), 1 << (bk - 1)
    qr = (-min(qhi, 2), min(qhi, 2) - 1) if narrow else (-qhi, qhi - 1)
    kr = (-min(khi, 2), min(khi, 2) - 1) if narrow else (-khi, khi - 1)
    counts = rng.choice(
        [
            [1] * n,
            [rng.randint(0, 3) for _ in range(n)],
            [rng.randint(1, 200) for _ in range(n)],
            [rng.choice([0, 1, (1 << 40) - 1]) for _ in range(n)],
        ]
    )
    total = sum(counts)
    return dict(
        queries=[[rng.randint(*qr) for _ in range(d)] for _ in range(n_q)],
        keys=[[rng.randint(*kr) for _ in range(d)] for _ in range(n)],
        counts=counts,
        budget=rng.choice([0, 1, 2, rng.randint(0, total + 3), total, 1 << 30]),
        bq=bq,
        bk=bk,
        gain=rng.choice([1, 2, 77, rng.randint(1, (1 << GAIN_BITS) - 1), (1 << GAIN_BITS) - 1]),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_matches_brute_force(seed):
    rng = random.Random(seed)
    for i in range(300):
        case = _rand_case(rng)
        got = select_tokens(**case, score="soft")
        want = brute_soft(
            case["queries"], case["keys"], case["counts"], case["budget"], case["gain"]
        )
        assert (list(got.ids), list(got.take)) == want, f"seed {seed} case {i}: {case}"
        live = sum(c > 0 for c in case["counts"])
        reads = 0 if case["budget"] == 0 else len(case["queries"]) * live * case["bk"]
        assert got.planes_read == reads, f"seed {seed} case {i}"
        # early_exit does not apply to the soft score
        again = select_tokens(**case, score="soft", early_exit=False)
        assert (again.ids, again.take) == (got.ids, got.take)


def test_soft_adversarial_cases():
    # all keys equal: every entry scores the same, ties go to the lower index
    sel = select_tokens([[3, -1]], [[1, 1]] * 5, [2, 0, 2, 2, 2], 5, score="soft", gain=100)
    assert (sel.ids, sel.take) == ((0, 2, 3), (2, 2, 1))
    # a query of zeros: all s equal, same as above
    sel = select_tokens([[0, 0], [0, 0]], [[5, -3], [-7, 2]], [1, 1], 2, score="soft", gain=9)
    assert (sel.ids, sel.take) == ((0, 1), (1, 1))
    # extreme values and counts: S_c far beyond int64 is summed exactly
    big = (1 << 40) - 1
    keys = [[-128] * 16, [127] * 16, [-128] * 16]
    sel = select_tokens(
        [[-128] * 16], keys, [big, big, big], 1 << 50, score="soft", gain=(1 << 18) - 1
    )
    # every member's share (2^-41) is below the score's resolution 2^-E: all scores are 0 and
    # the order falls back to the index
    assert sel.ids == (0, 1, 2) and sel.scores == (0, 0, 0)
    sel = select_tokens([[-128] * 16], keys, [1, 1, 1], 3, score="soft", gain=(1 << 18) - 1)
    assert sel.ids == (0, 2, 1) and sel.scores == (1 << (SOFT_E - 1),) * 2 + (0,)
    # one live entry
    sel = select_tokens([[1]], [[4], [5]], [0, 7], 3, score="soft", gain=5)
    assert (sel.ids, sel.take) == ((1,), (3,))


def test_soft_prefers_what_every_query_wants_over_one_query_outlier():
    """What the soft score adds over the normalised maximum: it sums the queries' evidence."""
    queries = [[4, 0], [0, 4], [3, 3]]
    keys = [[5, 0], [0, 5], [3, 3]]
    counts = [1, 1, 1]
    norm = select_tokens(queries, keys, counts, 1, score="norm")
    soft = select_tokens(queries, keys, counts, 1, score="soft", gain=30000)
    assert norm.ids == (0,)  # every entry is some query's best: ties to the lower index
    assert soft.ids == (2,)  # entry 2 is near the best of all three queries


def test_soft_agrees_with_the_float_golden_model():
    """Integer soft score vs the golden model's (``model.resv.cluster_scores``, the score
    ``ReSVCache`` ranks by) on the same dequantised inputs.

    Measured with seeds 0-3 (N 1200, d 64, Q 16): the integer score is within 3.1 % of
    ``2^E * exp(float score)`` for every entry above ``2^(E-12)``, and the selections share
    100 % of their tokens at 392 and >= 99.5 % at 2940.
    """
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        d, n, q = 64, 1200, 16
        cent = torch.randn(n, d, generator=g) * 1.5
        vec = (
            torch.randn(q, d, generator=g) * 1.5
            + 0.8 * cent[torch.randint(0, n, (q,), generator=g)]
        )
        counts = torch.randint(1, 8, (n,), generator=g)
        sk, sq = float(symmetric_scale(cent, 8)), float(symmetric_scale(vec, 8))
        kq, qq = quantize(cent, 8, sk), quantize(vec, 8, sq)
        fl = cluster_scores("soft", qq.double() * sq, kq.double() * sk, counts)
        gain = soft_gain(sq, sk, d)
        for budget, need in ((392, 1.0), (2940, 0.995)):
            sel = select_tokens(qq, kq, counts, budget, score="soft", gain=gain)
            order = torch.sort(fl, descending=True, stable=True).indices.tolist()
            want, taken = {}, 0
            for j in order:
                if taken == budget:
                    break
                want[j] = min(int(counts[j]), budget - taken)
                taken += want[j]
            got = dict(zip(sel.ids, sel.take, strict=True))
            shared = sum(min(t, want.get(j, 0)) for j, t in got.items())
            assert shared >= need * budget, f"seed {seed} budget {budget}: {shared}/{budget}"
            ref = torch.exp(fl[list(got)]) * 2**SOFT_E
            approx = torch.tensor(sel.scores, dtype=torch.float64)
            big = ref > 2 ** (SOFT_E - 12)
            rel = ((approx - ref).abs() / ref)[big]
            assert rel.max() < 0.05, f"seed {seed}: relative error {rel.max():.4f}"


def test_soft_gain_and_validation():
    assert soft_gain(0.01, 0.02, 64) == round(
        0.01 * 0.02 * math.log2(math.e) / 8 * 2 ** (SOFT_FB + GAIN_SHIFT)
    )
    with pytest.raises(SelectError, match="outside"):
        soft_gain(1.0, 1.0, 64)
    with pytest.raises(SelectError, match="outside"):
        soft_gain(1e-9, 1e-9, 64)
    with pytest.raises(SelectError, match="needs a gain"):
        select_tokens([[1]], [[1]], [1], 1, score="soft")
    with pytest.raises(SelectError, match="gain=0"):
        select_tokens([[1]], [[1]], [1], 1, score="soft", gain=0)
    with pytest.raises(SelectError, match="below 2"):
        select_tokens([[1]], [[1]], [1], 1, score="soft", gain=1 << GAIN_BITS)
    with pytest.raises(SelectError, match="only used"):
        select_tokens([[1]], [[1]], [1], 1, score="norm", gain=3)
    with pytest.raises(SelectError, match="must be one of"):
        select_tokens([[1]], [[1]], [1], 1, score="mean")


def test_norm_rule_equals_the_float_model_on_quantised_inputs():
    """``score="norm"``: the integer rule and the golden model's float ``norm`` score rank the
    same dequantised inputs identically (a positive scale does not change the order), so the
    selections are equal, cluster for cluster and count for count.  Exact integer ties come out
    of float64 a few ulps apart (seed 0 has one at rank 105), so the float scores are rounded to
    1e-6 (distinct integer scores are about 1e-3 apart here) before the walk breaks ties by
    index, as both models specify."""
    for seed in range(4):
        g = torch.Generator().manual_seed(100 + seed)
        d, n, q = 64, 600, 4
        cent = torch.randn(n, d, generator=g)
        vec = torch.randn(q, d, generator=g)
        counts = torch.randint(1, 6, (n,), generator=g)
        sk, sq = float(symmetric_scale(cent, 8)), float(symmetric_scale(vec, 8))
        kq, qq = quantize(cent, 8, sk), quantize(vec, 8, sq)
        fl = cluster_scores("norm", qq.double() * sq, kq.double() * sk, counts)
        fl = torch.round(fl * 1e6) / 1e6
        for budget in (1, 97, 392, 2000):
            sel = select_tokens(qq, kq, counts, budget, score="norm")
            want, taken = [], 0
            for j in torch.sort(fl, descending=True, stable=True).indices.tolist():
                if taken == budget:
                    break
                want.append((j, min(int(counts[j]), budget - taken)))
                taken += want[-1][1]
            assert list(zip(sel.ids, sel.take, strict=True)) == want, f"seed {seed} B {budget}"
