"""ClusterRef (model/dre/cluster.py) against independent brute-force evaluations of its rules.

The brute force recomputes everything from member lists with exact rationals (``Fraction``) and
real square roots where that is exact enough, never from the reference's incremental state.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from model.dre.cluster import (
    DROPPED,
    FORCED,
    JOINED,
    NEW,
    ClusterRef,
    ClusterWidths,
    cosine_passes,
    log2_fixed,
    more_similar,
    quantise_centroid,
    round_div,
    size_bias,
    tau_fixed,
)
from model.dre.config import ConfigError, DREConfig

CFG = DREConfig(d=8, lanes=2, bk=4, n_max=16, grid_max=36, count_bits=6)


def _cos2_signed(k, s):
    """cos(k, s) as a signed square: sign(k.s) * (k.s)^2 / (|k|^2 |s|^2), a Fraction; 0 if zero."""
    dot = sum(a * b for a, b in zip(k, s, strict=True))
    k2, s2 = sum(a * a for a in k), sum(b * b for b in s)
    if k2 == 0 or s2 == 0:
        return Fraction(0)
    return Fraction(dot * abs(dot), k2 * s2)


def _brute_frames(cfg, frames, h, w, table_size, T_t, T_s):
    """Independent implementation of docs/clustering.md with exact rationals."""
    tau_t2 = Fraction(T_t, 1 << cfg.tau_frac_bits) ** 2
    tau_s2 = Fraction(T_s, 1 << cfg.tau_frac_bits) ** 2
    members: list[list[list[int]]] = []
    owner = None
    out = []
    for keys in frames:
        joined = [None] * (h * w)
        ids, st = [], []
        for p, k in enumerate(keys):
            i, j = divmod(p, w)
            cands = []
            if owner is not None:
                cands.append((owner[p], tau_t2))
            if j > 0:
                cands.append((joined[p - 1], tau_s2))
            if i > 0:
                cands.append((joined[p - w], tau_s2))
            cands = [c for c in cands if c[0] is not None and len(members[c[0]]) < cfg.count_max]
            sums = {c: [sum(col) for col in zip(*members[c], strict=True)] for c, _ in cands}
            choice, how = None, None
            for c, t2 in cands:
                cs = _cos2_signed(k, sums[c])
                zero = not any(k) or not any(sums[c])
                if (t2 == 0) if zero else (cs >= 0 and cs >= t2):
                    choice, how = c, JOINED
                    break
            if choice is None and len(members) < table_size:
                choice, how = len(members), NEW
                members.append([])
            elif choice is None and cands:
                how = FORCED
                choice = cands[0][0]
                for c, _ in cands[1:]:
                    if _cos2_signed(k, sums[c]) > _cos2_signed(k, sums[choice]):
                        choice = c
            elif choice is None:
                how = DROPPED
            if choice is not None:
                members[choice].append(list(k))
            joined[p] = choice
            ids.append(0 if choice is None else choice)
            st.append(how)
        owner = joined
        out.append((ids, st))
    return out, members


def _random_keys(rng, cfg, n, lo=None, hi=None):
    lo = -(1 << (cfg.bk - 1)) if lo is None else lo
    hi = (1 << (cfg.bk - 1)) - 1 if hi is None else hi
    return [[rng.randint(lo, hi) for _ in range(cfg.d)] for _ in range(n)]


# ---- primitives ------------------------------------------------------------------------------
def test_cosine_passes_matches_rational_cosine(seed):
    rng = random.Random(seed)
    F = 8
    for _ in range(3000):
        d = rng.randint(1, 6)
        k = [rng.randint(-8, 7) for _ in range(d)]
        s = [rng.randint(-40, 40) * rng.choice([0, 1]) for _ in range(d)]
        T = rng.choice([0, 1, 128, 181, 255, 256, rng.randint(0, 256)])
        dot = sum(a * b for a, b in zip(k, s, strict=True))
        k2, s2 = sum(a * a for a in k), sum(b * b for b in s)
        if k2 == 0 or s2 == 0:
            want = T == 0
        else:
            # cos >= T/2^F, with cos = dot / sqrt(k2 s2): compare signs first, then squares.
            want = dot >= 0 and Fraction(dot * dot, k2 * s2) >= Fraction(T * T, 1 << (2 * F))
        assert cosine_passes(dot, k2, s2, T, F) == want, (k, s, T)


def test_parallel_keys_pass_tau_one_and_orthogonal_pass_only_zero():
    F = 8
    k, s = [3, -1, 2], [6, -2, 4]
    dot = 28
    assert cosine_passes(dot, 14, 56, 1 << F, F)
    assert cosine_passes(0, 14, 5, 0, F) and not cosine_passes(0, 14, 5, 1, F)
    assert cosine_passes(0, 0, 56, 0, F) and not cosine_passes(0, 0, 56, 1, F)
    assert sum(a * b for a, b in zip(k, s, strict=True)) == dot


def test_more_similar_matches_float_cosine(seed):
    rng = random.Random(seed)
    for _ in range(3000):
        k = [rng.randint(-8, 7) for _ in range(4)]
        a = [rng.randint(-30, 30) for _ in range(4)]
        b = [rng.randint(-30, 30) for _ in range(4)]
        dot = [sum(x * y for x, y in zip(k, v, strict=True)) for v in (a, b)]
        nrm = [sum(x * x for x in v) for v in (a, b)]
        want = _cos2_signed(k, a) > _cos2_signed(k, b)
        assert more_similar(dot[0], nrm[0], dot[1], nrm[1]) == want


def test_log2_fixed_is_mitchell():
    for lf in (0, 1, 4, 8):
        for n in range(1, 3000):
            m = math.floor(math.log2(n))
            frac = Fraction(n - 2**m, 2**m)  # Mitchell: log2(2^m (1 + f)) ~ m + f
            assert log2_fixed(n, lf) == math.floor((m + frac) * 2**lf)
        assert log2_fixed(1 << 20, lf) == 20 << lf
    with pytest.raises(ValueError):
        log2_fixed(0, 4)


def test_round_div_is_half_away_from_zero():
    for s in range(-300, 301):
        for n in range(1, 40):
            x = Fraction(s, n)
            want = math.floor(abs(x) + Fraction(1, 2)) * (1 if x >= 0 else -1)
            assert round_div(s, n) == want


def test_quantised_centroid_fits_bk(seed):
    rng = random.Random(seed)
    cfg = CFG
    lo, hi = -(1 << (cfg.bk - 1)), (1 << (cfg.bk - 1)) - 1
    for _ in range(500):
        n = rng.randint(1, cfg.count_max)
        keys = _random_keys(rng, cfg, n)
        if rng.random() < 0.2:
            keys = [[rng.choice([lo, hi])] * cfg.d for _ in range(n)]
        s = [sum(col) for col in zip(*keys, strict=True)]
        c = quantise_centroid(s, n)
        assert all(lo <= x <= hi for x in c)
        assert all(abs(Fraction(si, n) - ci) <= Fraction(1, 2) for si, ci in zip(s, c, strict=True))


def test_size_bias_is_ln_n_in_score_units():
    cfg = DREConfig(log_frac_bits=8, bias_bits=24)
    scale = 1000
    for n in (1, 2, 4, 8, 1024):  # exact at powers of two: b = floor(log2(n) * scale)
        assert size_bias(n, scale, cfg) == int(math.log2(n)) * scale
    for n in (3, 100, 999):  # Mitchell is within 0.086 of log2
        assert abs(size_bias(n, scale, cfg) / scale - math.log2(n)) < 0.09
    small = DREConfig(bias_bits=8, log_frac_bits=4)
    assert size_bias(60000, 127, small) == 127  # saturates at 2^(bias_bits-1) - 1


def test_tau_fixed():
    assert tau_fixed(1.0, 8) == 256 and tau_fixed(0.0, 8) == 0 and tau_fixed(0.5, 4) == 8
    assert tau_fixed(0.8, 8) == 205  # 204.8 rounds up
    with pytest.raises(ConfigError):
        tau_fixed(1.5, 8)


def test_widths_hold_extremes():
    cfg = CFG
    wd = ClusterWidths.of(cfg)
    kmin = -(1 << (cfg.bk - 1))
    smin = cfg.count_max * kmin
    assert -(1 << (wd.sum - 1)) <= smin
    assert cfg.d * kmin * smin < 1 << (wd.dot - 1)
    assert cfg.d * smin * smin < 1 << wd.sum_norm
    assert cfg.d * kmin * kmin < 1 << wd.key_norm


# ---- whole frames against the brute force ----------------------------------------------------
@pytest.mark.parametrize("table_size", [3, 16])
@pytest.mark.parametrize("taus", [(0.9, 0.8), (0.5, 0.5), (0.0, 1.0), (1.0, 0.0)])
def test_frames_match_brute_force(seed, table_size, taus):
    rng = random.Random(seed)
    cfg = CFG
    h, w = 3, 4
    T_t, T_s = (tau_fixed(t, cfg.tau_frac_bits) for t in taus)
    base = _random_keys(rng, cfg, h * w)
    frames = []
    for _ in range(6):  # a slowly changing scene with some zero and extreme keys
        f = [[max(-8, min(7, x + rng.randint(-1, 1))) for x in k] for k in base]
        f[rng.randrange(h * w)] = [0] * cfg.d
        f[rng.randrange(h * w)] = [-8] * cfg.d
        frames.append(f)
    ref = ClusterRef(cfg, table_size=table_size, tau_t=T_t, tau_s=T_s)
    got = [ref.add_frame(f, h, w) for f in frames]
    want, members = _brute_frames(cfg, frames, h, w, table_size, T_t, T_s)
    assert got == want
    assert ref.counts == [len(m) for m in members]
    for c, m in enumerate(members):
        s = [sum(col) for col in zip(*m, strict=True)]
        assert ref.sums[c] == s
        assert ref.norms[c] == sum(x * x for x in s)


def test_saturated_clusters_stop_accepting_and_tokens_drop_when_nothing_is_left():
    cfg = DREConfig(d=2, lanes=1, bk=4, n_max=2, k_cap=1, grid_max=4, count_bits=2)  # count_max 3
    ref = ClusterRef(cfg, table_size=2, tau_t=0, tau_s=0)  # tau 0: everything joins
    ids, st = ref.add_frame([[1, 1]] * 4, 1, 4)
    # 3 tokens fill cluster 0; the 4th finds it saturated and opens cluster 1.
    assert (ids, st) == ([0, 0, 0, 1], [NEW, JOINED, JOINED, NEW])
    ids, st = ref.add_frame([[1, 1]] * 4, 1, 4)
    # Position 0: temporal 0 is saturated; table full; no other candidate -> dropped.
    # Positions 1, 2: temporal 0 saturated, left dropped -> dropped.
    # Position 3: temporal is cluster 1, which accepts a member.
    assert (ids, st) == ([0, 0, 0, 1], [DROPPED, DROPPED, DROPPED, JOINED])
    assert ref.counts == [3, 2] and ref.dropped == 3
    _, st = ref.add_frame([[1, 1]] * 4, 1, 4)
    assert st == [DROPPED, DROPPED, DROPPED, JOINED]
    assert ref.counts == [3, 3]
    wd = ClusterWidths.of(cfg)
    assert max(abs(x) for s in ref.sums for x in s) < 1 << (wd.sum - 1)


def test_table_full_forces_merge_into_most_similar_candidate():
    cfg = DREConfig(d=2, lanes=1, bk=4, n_max=4, k_cap=1, grid_max=4, count_bits=8)
    ref = ClusterRef(cfg, table_size=2, tau_t=256, tau_s=256)  # tau 1: only parallel keys join
    ids, st = ref.add_frame([[4, 0], [0, 4], [4, 1], [1, 4]], 2, 2)
    # p0 new 0; p1 new 1; p2 (up = 0, table full): only candidate 0 -> forced 0;
    # p3: left = 0 (cos with (8,1) ~ 0.35), up = 1 (cos with (0,4) ~ 0.97) -> forced 1.
    assert ids == [0, 1, 0, 1] and st == [NEW, NEW, FORCED, FORCED]
    assert ref.forced == 2


def test_identical_frames_join_temporally_and_equal_keys_make_one_cluster():
    cfg = CFG
    rng = random.Random(1)
    keys = _random_keys(rng, cfg, 12)
    ref = ClusterRef(cfg, table_size=16, tau_t=256, tau_s=256)
    ids0, _ = ref.add_frame(keys, 3, 4)
    ids1, st1 = ref.add_frame(keys, 3, 4)
    assert ids1 == ids0 and st1 == [JOINED] * 12  # each key is parallel to its own sum
    ref = ClusterRef(cfg, table_size=16, tau_t=256, tau_s=256)
    ids, st = ref.add_frame([[3] * cfg.d] * 12, 3, 4)
    assert ids == [0] * 12 and st == [NEW] + [JOINED] * 11


def test_runtime_errors_drop_tokens_until_clear():
    cfg = CFG
    keys = [[1] * cfg.d] * 4
    for kwargs, grid in (
        ({"table_size": 0}, (2, 2)),
        ({"table_size": 17}, (2, 2)),
        ({"tau_t": 257}, (2, 2)),
        ({}, (0, 5)),
        ({}, (37, 1)),
    ):
        ref = ClusterRef(cfg, **kwargs)
        n = grid[0] * grid[1]
        ids, st = ref.add_frame([[1] * cfg.d] * n, *grid)
        assert ref.error and st == [DROPPED] * n and ids == [0] * n
        ref.table_size, ref.tau_t = 4, 0
        assert ref.add_frame(keys, 2, 2)[1] == [DROPPED] * 4  # sticky
        ref.clear()
        assert ref.add_frame(keys, 2, 2)[1] == [NEW] + [JOINED] * 3
    with pytest.raises(ConfigError):
        ClusterRef(cfg, bias_scale=-1).add_frame(keys, 2, 2)
    with pytest.raises(ValueError):
        ClusterRef(cfg).add_frame([[8] * cfg.d] * 4, 2, 2)  # 8 does not fit bk=4


def test_grid_change_drops_the_temporal_candidate():
    cfg = CFG
    ref = ClusterRef(cfg, table_size=16, tau_t=256, tau_s=256)
    a, b = [1, 0] * 4, [0, 1] * 4
    ref.add_frame([a, b, a, b], 2, 2)  # 0 1 / 0 1 with up joins -> ids 0,1,0,1
    ids, st = ref.add_frame([b, a, b, a], 1, 4)  # new grid: no temporal candidate
    assert st == [NEW, NEW, NEW, NEW] and ids == [2, 3, 4, 5]
