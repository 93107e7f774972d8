"""model.dre.ref.select_tokens (v2: token budget, several queries) against a brute force.

The brute force shares no code with the reference: plain Python integers, every score computed,
one full sort, the walk.  Random cases use tiny value ranges so that ties, equal scores and
budget cuts inside runs of equal scores happen often.  Every case also runs with early exit off
and with a small ``k_cap`` (the hardware's ranking slots): ``ids`` / ``take`` must not change.
"""

from __future__ import annotations

import random

import pytest
import torch

from model.dre.ref import SelectError, TokenSelection, select_tokens


def brute_force(queries, keys, counts, budget, normalize=True):
    live = [j for j in range(len(keys)) if counts[j] > 0]
    if not live:
        return [], []
    s = [[sum(a * b for a, b in zip(q, k, strict=True)) for k in keys] for q in queries]
    best = [max(row[j] for j in live) for row in s]
    if normalize:
        score = {j: max(s[c][j] - best[c] for c in range(len(queries))) for j in live}
    else:
        score = {j: max(s[c][j] for c in range(len(queries))) for j in live}
    order = sorted(live, key=lambda j: (-score[j], j))
    ids, take, taken = [], [], 0
    for j in order:
        if taken >= budget:
            break
        t = min(counts[j], budget - taken)
        ids.append(j)
        take.append(t)
        taken += t
    return ids, take


def rand_case(rng: random.Random, **fixed):
    bq = fixed.get("bq") or rng.choice([2, 3, 4, 8])
    bk = fixed.get("bk") or rng.choice([2, 3, 4, 8])
    d = fixed.get("d") or rng.choice([1, 2, 3, 5, 16])
    n = fixed.get("n") if "n" in fixed else rng.randint(1, 24)
    n_q = fixed.get("n_q") or rng.choice([1, 1, 2, 3, 4])
    narrow = rng.random() < 0.5  # narrow value ranges make ties likely
    qhi, khi = 1 << (bq - 1), 1 << (bk - 1)
    qr = (-min(qhi, 2), min(qhi, 2) - 1) if narrow else (-qhi, qhi - 1)
    kr = (-min(khi, 2), min(khi, 2) - 1) if narrow else (-khi, khi - 1)
    queries = [[rng.randint(*qr) for _ in range(d)] for _ in range(n_q)]
    keys = [[rng.randint(*kr) for _ in range(d)] for _ in range(n)]
    style = rng.choice(["ones", "small", "wide", "sparse"])
    if style == "ones":
        counts = [1] * n
    elif style == "small":
        counts = [rng.randint(0, 3) for _ in range(n)]
    elif style == "wide":
        counts = [rng.randint(1, 200) for _ in range(n)]
    else:
        counts = [rng.choice([0, 0, 1, rng.randint(1, 50)]) for _ in range(n)]
    total = sum(counts)
    budget = rng.choice([0, 1, 2, rng.randint(0, total + 3), total, total + 1, 1 << 30])
    return dict(
        queries=queries,
        keys=keys,
        counts=counts,
        budget=budget,
        bq=bq,
        bk=bk,
        normalize=fixed.get("normalize", rng.random() < 0.7),
    )


def check(case, k_caps=(None, 1, 3)) -> TokenSelection:
    """ids / take against the brute force, for early exit off and on and several k_cap."""
    want_ids, want_take = brute_force(
        case["queries"], case["keys"], case["counts"], case["budget"], case["normalize"]
    )
    live = sum(c > 0 for c in case["counts"])
    n_q, bk = len(case["queries"]), case["bk"]
    full = select_tokens(**case, early_exit=False)
    assert list(full.ids) == want_ids and list(full.take) == want_take, case
    assert full.planes_read == n_q * live * bk
    assert sum(full.take) == min(case["budget"], sum(case["counts"]))
    got = None
    for k_cap in k_caps:
        ee = select_tokens(**case, k_cap=k_cap)
        assert (list(ee.ids), list(ee.take)) == (want_ids, want_take), (k_cap, case)
        assert ee.planes_read <= full.planes_read
        assert ee.planes_read == n_q * sum(ee.alive)
        assert all(a >= b for a, b in zip(ee.alive, ee.alive[1:], strict=False))
        if case["budget"] and live:  # every listed entry read every plane
            assert ee.alive[-1] >= len(want_ids) and ee.alive[0] == live
        got = got or ee
    return got


def test_random_against_brute_force(seed):
    rng = random.Random(seed)
    saved = 0
    for _ in range(1500):
        got = check(rand_case(rng))
        saved += len(got.alive) * got.alive[0] - sum(got.alive)
    assert saved > 0, "early exit never dropped anything: the random cases are too weak"


def test_tiny_values_many_ties(seed):
    """d <= 2, 2-bit keys and queries: scores collide constantly, budget cuts fall in ties."""
    rng = random.Random(seed)
    for _ in range(1500):
        check(rand_case(rng, bq=2, bk=2, d=rng.choice([1, 2])))


def test_q1_matches_single_query(seed):
    """Q = 1, normalised or not, is the same order (a constant shift of every score)."""
    rng = random.Random(seed)
    for _ in range(300):
        case = rand_case(rng, n_q=1)
        a = select_tokens(**{**case, "normalize": True})
        b = select_tokens(**{**case, "normalize": False})
        assert (a.ids, a.take) == (b.ids, b.take)
        check(case)


@pytest.mark.parametrize("normalize", [True, False])
def test_all_keys_equal(normalize):
    n = 9
    for budget in (0, 1, 4, 5, 12, 45, 46, 100):
        case = dict(
            queries=[[3, 2, -1, 1], [-2, 0, 1, 1]],
            keys=[[1, -1, 0, 1]] * n,
            counts=[5] * n,
            budget=budget,
            bq=4,
            bk=4,
            normalize=normalize,
        )
        got = check(case)
        m = min(n, -(-budget // 5))
        assert got.ids == tuple(range(m))  # ties: lower index first
        assert sum(got.take) == min(budget, 45)


def test_budget_zero_and_beyond_total():
    case = dict(
        queries=[[1, 2]], keys=[[3, -4], [1, 1], [0, 0]], counts=[2, 3, 4], budget=0, bq=4, bk=4
    )
    got = select_tokens(**case)
    assert got == TokenSelection((), (), 0, (0,) * 4, ())
    assert select_tokens(**case, early_exit=False).planes_read == 3 * 4
    case["budget"] = 1000
    got = check({**case, "normalize": True})
    assert got.ids == (1, 2, 0) and got.take == (3, 4, 2)  # s = -5, 3, 0
    assert got.planes_read == 3 * 4  # nothing can be dropped when everything is taken


def test_one_live_entry_and_empty_entries():
    case = dict(
        queries=[[1, -1], [-2, 2]],
        keys=[[1, 1], [-2, 1], [0, 0]],
        counts=[0, 7, 0],
        budget=3,
        bq=4,
        bk=4,
        normalize=True,
    )
    got = check(case)
    assert got.ids == (1,) and got.take == (3,) and got.planes_read == 2 * 4
    case["counts"] = [0, 0, 0]
    assert check(case).planes_read == 0


@pytest.mark.parametrize("bk", [2, 4, 8])
def test_extreme_values(bk):
    lo_k, lo_q = -(1 << (bk - 1)), -128
    n, d = 6, 16
    for keys in (
        [[lo_k] * d] * n,
        [[lo_k if (i + j) % 2 else -lo_k - 1 for i in range(d)] for j in range(n)],
    ):
        for qs in ([[lo_q] * d], [[127] * d, [lo_q] * d], [[lo_q, 127] * (d // 2)] * 4):
            for counts in ([1] * n, [(1 << 39)] * n, [0, 1, 0, 1 << 20, 3, 0]):
                for normalize in (True, False):
                    check(
                        dict(
                            queries=qs,
                            keys=keys,
                            counts=counts,
                            budget=2,
                            bq=8,
                            bk=bk,
                            normalize=normalize,
                        )
                    )


def test_early_exit_drops_on_separated_scores():
    """One clear winner per query and a budget one entry covers: most entries stop early."""
    n, d = 64, 32
    keys = [[-100 + j] * d for j in range(n)]
    case = dict(
        queries=[[100] * d, [-100] * d],
        keys=keys,
        counts=[4] * n,
        budget=3,
        bq=8,
        bk=8,
        normalize=True,
    )
    got = check(case)
    # normalised scores: entries 0 and n-1 both score 0 (each is one query's best): 0 wins
    assert got.ids == (0,) and got.take == (3,)
    assert got.planes_read < 2 * n * 8 * 3 // 4


def test_strict_drop_is_needed(seed):
    """Dropping on SU <= T (instead of <) loses entries the exact walk takes."""
    rng = random.Random(seed)
    broken = 0
    for _ in range(3000):
        case = rand_case(rng, bq=2, bk=2, d=1)
        want = brute_force(
            case["queries"], case["keys"], case["counts"], case["budget"], case["normalize"]
        )
        got = select_tokens(**case, strict=False)
        broken += (list(got.ids), list(got.take)) != want
    assert broken > 0, "the non-strict drop never broke a result: strictness is not pinned"
    # The smallest such case: one entry, q = 0, so after the sign plane SL == SU == T == 0 and
    # the budget is reached at the entry itself; the strict rule keeps it (SL_j <= SU_j < T
    # would put j outside the entries that reach the budget), the non-strict one drops it.
    case = dict(queries=[[0]], keys=[[0]], counts=[1], budget=1, bq=2, bk=2)
    assert select_tokens(**case).ids == (0,)
    assert select_tokens(**case, strict=False).ids == ()


def test_normalisation_changes_the_order():
    """Query 1's scores are all larger: without normalisation it alone decides."""
    case = dict(
        queries=[[1, 0], [0, 7]],
        keys=[[7, 0], [0, 1], [0, 3]],
        counts=[1, 1, 1],
        budget=1,
        bq=4,
        bk=4,
    )
    # s = [[7, 0, 0], [0, 7, 21]]: normalised scores 0, -14, 0 -> entry 0 (lower index);
    # raw max over queries 7, 7, 21 -> entry 2
    assert check({**case, "normalize": True}).ids == (0,)
    assert check({**case, "normalize": False}).ids == (2,)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(queries=[[2, 0]]), "queries holds 2"),
        (dict(keys=[[0, -3]]), "keys holds -3"),
        (dict(keys=[[0, 0, 0]]), "d=3"),
        (dict(queries=torch.zeros(0, 2, dtype=torch.int64)), "Q >= 1"),
        (dict(queries=[1, 0]), "2-dimensional"),
        (dict(counts=[1, 1]), "counts has 2"),
        (dict(counts=[-1]), "counts must be >= 0"),
        (dict(budget=-1), "budget=-1"),
        (dict(budget=1.5), "budget must be an integer"),
        (dict(budget=True), "budget must be an integer"),
        (dict(queries=[[0.5, 0.0]]), "integers"),
        (dict(normalize=1), "normalize must be a bool"),
        (dict(k_cap=0), "k_cap=0"),
        (dict(bk=1), "bk=1"),
        (dict(bq=17), "bq=17"),
    ],
)
def test_input_validation(change, match):
    case = dict(queries=[[1, -2]], keys=[[1, -2]], counts=[1], budget=1, bq=2, bk=2)
    case.update(change)
    with pytest.raises(SelectError, match=match):
        select_tokens(**case)


def test_empty_table():
    got = select_tokens([[1]], torch.zeros(0, 1, dtype=torch.int64), [], 5, bq=2, bk=2)
    assert got.ids == () and got.planes_read == 0


# ---- the top-level reference and the float computation ------------------------------------
def test_dreref_retrieve_tokens_uses_the_table(seed):
    """DRERef.retrieve_tokens == select_tokens over the written-back centroids and the table's
    counts, and == a float64 computation of the rule on the same quantised values."""
    from model.dre.config import DREConfig
    from model.dre.top import DRERef, Registers

    rng = random.Random(seed)
    cfg = DREConfig(d=16, lanes=4, bq=6, bk=6, n_max=16, k_cap=4, grid_max=36, q_max=3)
    regs = Registers(grid_w=5, grid_h=4, tau_t=200, tau_s=180, table_size=12, budget=7)
    ref = DRERef(cfg, regs)
    assert ref.retrieve_tokens([[0] * cfg.d]).error == 0b0001  # N = 0
    protos = [[rng.randint(-32, 31) for _ in range(cfg.d)] for _ in range(6)]
    for _ in range(4):
        frame = [
            [max(-32, min(31, x + rng.randint(-3, 3))) for x in rng.choice(protos)]
            for _ in range(20)
        ]
        ref.add_frame(frame)
    n = ref.n_clusters
    keys = [ref.store[j][0] for j in range(n)]
    counts = ref.cluster.counts[:n]
    for raw_max in (0, 1):
        for n_q in (1, 2, 3):
            regs.raw_max = raw_max
            qs = [[rng.randint(-32, 31) for _ in range(cfg.d)] for _ in range(n_q)]
            got = ref.retrieve_tokens(qs)
            assert got.error == 0 and got.n == n
            want = select_tokens(qs, keys, counts, 7, bq=6, bk=6, normalize=not raw_max)
            assert (got.selection.ids, got.selection.take) == (want.ids, want.take)
            # the float model of the rule on the quantised values (exact in float64 here)
            s = torch.tensor(qs, dtype=torch.float64) @ torch.tensor(keys, dtype=torch.float64).T
            if not raw_max:
                s = s - s.max(dim=1, keepdim=True).values
            score = s.max(dim=0).values
            order = sorted(range(n), key=lambda j: (-float(score[j]), j))
            ids, take, left = [], [], 7
            for j in order:
                if left == 0:
                    break
                ids.append(j)
                take.append(min(counts[j], left))
                left -= take[-1]
            assert got.records == list(zip(ids, take, strict=True))
    assert ref.retrieve_tokens([]).error == 0b0100  # Q = 0
    assert ref.retrieve_tokens([[0] * cfg.d] * 4).error == 0b1000  # Q > q_max


def test_dreref_retrieve_tokens_soft(seed):
    """CTRL.soft: DRERef.retrieve_tokens == an independent select_tokens(score="soft") over the
    written-back centroids and the table's counts, for the register's gain; raw_max and no_exit
    change nothing; every plane is read; the selection does depend on the gain and differs from
    the normalised max (so a reference that ignored soft or gain would fail here); gain 0 is
    refused."""
    from model.dre.config import DREConfig
    from model.dre.tokens import GAIN_BITS
    from model.dre.top import DEFAULT_GAIN, DRERef, Registers

    rng = random.Random(seed)
    cfg = DREConfig(d=16, lanes=4, bq=6, bk=6, n_max=16, k_cap=4, grid_max=36, q_max=3)
    regs = Registers(grid_w=5, grid_h=4, tau_t=200, tau_s=180, table_size=12, budget=9)
    assert (regs.soft, regs.gain, regs.score) == (0, DEFAULT_GAIN, "norm")
    ref = DRERef(cfg, regs)
    protos = [[rng.randint(-32, 31) for _ in range(cfg.d)] for _ in range(6)]
    for _ in range(4):
        ref.add_frame(
            [
                [max(-32, min(31, x + rng.randint(-3, 3))) for x in rng.choice(protos)]
                for _ in range(20)
            ]
        )
    n = ref.n_clusters
    keys = [ref.store[j][0] for j in range(n)]
    counts = ref.cluster.counts[:n]
    live = sum(c > 0 for c in counts)
    differs_from_norm = differs_by_gain = 0
    for trial in range(12):
        n_q = rng.randint(1, 3)
        qs = [[rng.randint(-32, 31) for _ in range(cfg.d)] for _ in range(n_q)]
        gain = rng.choice([1, 2, 777, DEFAULT_GAIN, rng.randrange(1, 1 << GAIN_BITS)])
        if trial == 0:
            gain = (1 << GAIN_BITS) - 1
        regs.set_score("soft")
        regs.gain = gain
        assert (regs.soft, regs.raw_max, regs.score) == (1, 0, "soft")
        want = select_tokens(qs, keys, counts, 9, bq=6, bk=6, score="soft", gain=gain)
        for raw_max, no_exit in ((0, 0), (1, 0), (0, 1), (1, 1)):
            regs.raw_max, regs.no_exit = raw_max, no_exit  # overridden by soft
            got = ref.retrieve_tokens(qs)
            assert got.error == 0 and got.n == n
            assert (got.selection.ids, got.selection.take) == (want.ids, want.take)
            assert got.planes_read == n_q * live * cfg.bk
        other = select_tokens(
            qs, keys, counts, 9, bq=6, bk=6, score="soft", gain=gain * 97 % 4001 + 1
        )
        differs_by_gain += other.ids != want.ids
        regs.set_score("norm")
        differs_from_norm += ref.retrieve_tokens(qs).selection.ids != want.ids
    assert differs_by_gain and differs_from_norm, (differs_by_gain, differs_from_norm)
    regs.set_score("soft")
    regs.gain = 0  # the gain_zero error flag (bit 4), no selection, as the hardware
    got = ref.retrieve_tokens([[1] * cfg.d])
    assert (got.error, got.selection, got.planes_read) == (0b10000, None, 0)
    assert ref.retrieve_tokens([]).error == 0b10100  # every flag that holds
    regs.set_score("norm")
    assert ref.retrieve_tokens([[1] * cfg.d]).error == 0  # the gain matters to soft only
    regs.set_score("soft")
    regs.gain = 1 << GAIN_BITS  # more than the register holds
    with pytest.raises(SelectError, match="gain"):
        ref.retrieve_tokens([[1] * cfg.d])
    with pytest.raises(ValueError, match="choose one of soft, norm, max"):
        regs.set_score("hard")
