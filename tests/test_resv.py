"""ReSV golden model: clustering (docs/clustering.md) and retrieval (SPEC step 4) against
independent brute-force evaluations of the written rules."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from model.baselines import KVPolicy
from model.dre.config import ConfigError
from model.resv import HeadClusters, ReSVCache, ReSVConfig, query_vectors

# ---- helpers -------------------------------------------------------------------------------


def smooth_stream(gen, frames, h, w, d, levels=3, step=0.3):
    """Integer-valued keys with spatial and temporal correlation (so every path is exercised)."""
    base = torch.randint(-levels, levels + 1, (h * w, d), generator=gen).double()
    out = []
    for _ in range(frames):
        flip = torch.rand(h * w, d, generator=gen) < step
        base = torch.where(
            flip, torch.randint(-levels, levels + 1, (h * w, d), generator=gen).double(), base
        )
        out.append(base.clone())
    return out


def brute_clusters(frames, h, w, table_size, tau_t, tau_s):
    """The clustering rule of docs/clustering.md in exact rational arithmetic, sums recomputed
    from the member lists every time (no incremental state)."""
    keys = {}  # token id -> tuple of ints
    members: list[list[int]] = []
    owner = None
    results = []

    def cos_sq_signed(k, c):  # sign(cos) * cos^2 as a Fraction, cos = 0 for zero vectors
        s = [sum(keys[t][i] for t in members[c]) for i in range(len(k))]
        dot = sum(a * b for a, b in zip(k, s, strict=True))
        kk = sum(a * a for a in k)
        ss = sum(a * a for a in s)
        if kk == 0 or ss == 0:
            return Fraction(0)
        return Fraction(dot * abs(dot), kk * ss)

    tid = 0
    for keys_f in frames:
        joined, status = [], []
        for p in range(h * w):
            k = tuple(int(x) for x in keys_f[p].tolist())
            i, j = divmod(p, w)
            cands = []
            if owner is not None:
                cands.append((owner[p], tau_t))
            if j > 0:
                cands.append((joined[p - 1], tau_s))
            if i > 0:
                cands.append((joined[p - w], tau_s))
            cos = [cos_sq_signed(k, c) for c, _ in cands]
            choice = None
            for (c, tau), cs in zip(cands, cos, strict=True):
                t2 = Fraction(tau) ** 2
                if (cs >= 0 and cs >= t2) if tau > 0 else cs >= 0:
                    choice, how = c, "joined"
                    break
            if choice is None and len(members) < table_size:
                members.append([])
                choice, how = len(members) - 1, "new"
            elif choice is None:
                best = max(range(len(cands)), key=lambda n: (cos[n], -n))
                choice, how = cands[best][0], "forced"
            keys[tid] = k
            members[choice].append(tid)
            tid += 1
            joined.append(choice)
            status.append(how)
        owner = joined
        results.append((joined, status))
    return results, members, keys


# ---- clustering ----------------------------------------------------------------------------


@pytest.mark.parametrize("table_size", [1, 5, 40, 1000])
@pytest.mark.parametrize("tau", [(0.0, 0.0), (0.5, 0.6), (0.8, 0.7), (1.0, 1.0)])
def test_clustering_matches_brute_force_rule(seed, table_size, tau):
    gen = torch.Generator().manual_seed(seed)
    h, w, d = 4, 5, 6
    frames = smooth_stream(gen, 5, h, w, d, levels=2)
    frames[2][3] = 0.0  # a zero key
    hc = HeadClusters(table_size, *tau)
    got = []
    for f, keys in enumerate(frames):
        ids, status = hc.add_frame(keys, h, w, torch.arange(f * h * w, (f + 1) * h * w))
        got.append((ids.tolist(), status))
    want, members, _ = brute_clusters(frames, h, w, table_size, *tau)
    assert got == want
    assert hc.members == members


def test_every_past_token_in_exactly_one_cluster_and_centroid_is_mean(seed):
    gen = torch.Generator().manual_seed(seed)
    h, w, d, n = 6, 7, 16, 8
    hc = HeadClusters(60, 0.6, 0.6)
    all_keys = []
    for f in range(n):
        keys = torch.randn(h * w, d, generator=gen, dtype=torch.float64) + (f % 3)
        all_keys.append(keys)
        ids, _ = hc.add_frame(keys, h, w, torch.arange(f * h * w, (f + 1) * h * w))
        for p, c in enumerate(ids.tolist()):
            assert f * h * w + p in hc.members[c]
    flat = [t for m in hc.members for t in m]
    assert sorted(flat) == list(range(n * h * w))  # each token once, none missing
    keys = torch.cat(all_keys)
    for c, m in enumerate(hc.members):
        assert hc.counts[c] == len(m)
        torch.testing.assert_close(hc.sums[c], keys[m].sum(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(hc.centroids[c], keys[m].mean(0), rtol=1e-12, atol=1e-12)


def test_tau_one_merges_only_parallel_keys(seed):
    gen = torch.Generator().manual_seed(seed)
    h, w, d = 5, 5, 4
    hc = HeadClusters(10_000, 1.0, 1.0)
    base = torch.randint(-3, 4, (3, d), generator=gen).double()
    keys_seen = {}
    for f in range(4):
        # keys drawn from three directions, scaled by 1..3: parallel copies are common
        pick = torch.randint(0, 3, (h * w,), generator=gen)
        scale = torch.randint(1, 4, (h * w, 1), generator=gen).double()
        keys = base[pick] * scale
        keys[torch.rand(h * w, generator=gen) < 0.3] += 1.0  # some non-parallel keys
        ids = torch.arange(f * h * w, (f + 1) * h * w)
        hc.add_frame(keys, h, w, ids)
        keys_seen.update(zip(ids.tolist(), keys, strict=True))
    for m in hc.members:
        a = keys_seen[m[0]]
        for t in m[1:]:
            b = keys_seen[t]
            dot = float(a @ b)
            assert dot > 0 and dot * dot == float(a @ a) * float(b @ b), (m[0], t)
    # and parallel neighbours do merge: a frame of copies of one key is one cluster
    hc2 = HeadClusters(100, 1.0, 1.0)
    k = torch.tensor([3.0, -1.0, 2.0, 5.0])
    ids, status = hc2.add_frame(k.repeat(h * w, 1), h, w, torch.arange(h * w))
    assert hc2.n_clusters == 1 and status.count("new") == 1


def test_identical_frames_add_no_clusters_after_the_first(seed):
    gen = torch.Generator().manual_seed(seed)
    h, w, d = 7, 6, 32
    frame = torch.randn(h * w, d, generator=gen)
    hc = HeadClusters(1000, 0.9, 0.9)
    hc.add_frame(frame, h, w, torch.arange(h * w))
    n1 = hc.n_clusters
    for f in range(1, 5):
        ids, status = hc.add_frame(frame, h, w, torch.arange(f * h * w, (f + 1) * h * w))
        assert hc.n_clusters == n1
        assert status == ["joined"] * (h * w)
        assert torch.equal(ids, hc.owner)


def unit(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def two_by_two(k11, table_size=3, tau=0.5):
    """2x2 frame: (0,0)=e1, (0,1)=e2, (1,0)=e3 open clusters 0, 1, 2; (1,1)=k11 has left
    candidate cluster 2 and up candidate cluster 1."""
    hc = HeadClusters(table_size, tau, tau)
    keys = torch.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1), k11])
    ids, status = hc.add_frame(keys, 2, 2, torch.arange(4))
    assert ids.tolist()[:3] == [0, 1, 2]
    return hc, ids.tolist()[3], status[3]


def test_left_before_up_when_both_pass():
    # cos with left (e3) = 0.6 passes tau 0.5; cos with up (e2) = 0.8 is higher: left wins
    _, c, how = two_by_two(unit(0, 0.8, 0.6), table_size=10, tau=0.5)
    assert (c, how) == (2, "joined")
    # a key passing only the up test joins up
    _, c, how = two_by_two(unit(0, 0.95, 0.3), table_size=10, tau=0.5)
    assert (c, how) == (1, "joined")


def test_temporal_before_spatial():
    hc = HeadClusters(10, 0.5, 0.5)
    hc.add_frame(torch.stack([unit(1, 0), unit(0, 1)]), 1, 2, torch.arange(2))
    # position 1: temporal candidate = cluster 1 (e2), left = cluster 0 (this frame, e1)
    ids, status = hc.add_frame(torch.stack([unit(1, 0), unit(0.8, 0.6)]), 1, 2, torch.arange(2, 4))
    assert ids.tolist() == [0, 1] and status == ["joined", "joined"]


def test_forced_merge_picks_most_similar_candidate_ties_to_earlier():
    # table full (3 clusters), tau 0.99: nobody passes.  cos(up=e2)=0.9/|k| > cos(left=e3)
    hc, c, how = two_by_two(unit(0, 0.9, 0.2), table_size=3, tau=0.99)
    assert (c, how) == (1, "forced")
    hc, c, how = two_by_two(unit(0, 0.2, 0.9), table_size=3, tau=0.99)
    assert (c, how) == (2, "forced")
    # equally similar: the earlier candidate (left) wins
    hc, c, how = two_by_two(unit(0, 1, 1), table_size=3, tau=0.99)
    assert (c, how) == (2, "forced")
    assert hc.counts.tolist() == [1, 1, 2]


def test_zero_vectors_have_cosine_zero():
    hc = HeadClusters(10, 0.0, 0.0)  # tau 0: cos 0 passes
    _, status = hc.add_frame(torch.stack([unit(1, 0), unit(0, 0)]), 1, 2, torch.arange(2))
    assert status == ["new", "joined"]
    hc = HeadClusters(10, 0.1, 0.1)
    _, status = hc.add_frame(torch.stack([unit(1, 0), unit(0, 0)]), 1, 2, torch.arange(2))
    assert status == ["new", "new"]
    # a zero key against a zero-sum cluster: still cos 0, passes tau 0 only
    _, status = hc.add_frame(torch.stack([unit(0, 0), unit(1, 1)]), 1, 2, torch.arange(2, 4))
    assert status[0] == "new"


def test_headclusters_rejects_bad_shapes():
    hc = HeadClusters(4, 0.5, 0.5)
    with pytest.raises(ValueError, match="keys must be"):
        hc.add_frame(torch.zeros(5, 3), 2, 2, torch.arange(4))
    hc.add_frame(torch.ones(4, 3), 2, 2, torch.arange(4))
    with pytest.raises(ValueError, match="grid"):
        hc.add_frame(torch.ones(6, 3), 2, 3, torch.arange(6))


# ---- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"k_max": 0}, "k_max=0 must be >= 1"),
        ({"k_min": 5, "k_max": 3}, "k_min=5 exceeds k_max=3"),
        ({"tau_t": 1.5}, r"tau_t=1.5 must lie in \[0, 1\]"),
        ({"tau_s": -0.1}, r"tau_s=-0.1 must lie in \[0, 1\]"),
        ({"tau_t": float("nan")}, "tau_t=nan must be a number"),
        ({"margin": -1.0}, "margin=-1.0 must be >= 0"),
        ({"table_size": 0}, "table_size=0 must be >= 1"),
        ({"n_sink": -1}, "n_sink=-1 must be >= 0"),
        ({"window_frames": 1.5}, "window_frames must be an integer"),
        ({"k_min": True}, "k_min must be an integer"),
    ],
)
def test_bad_config_raises_one_readable_error(changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        ReSVConfig(**changes)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


# ---- retrieval -----------------------------------------------------------------------------


def brute_retrieve(keys_by_token, members, query, d, cfg, n_tokens, frame_len):
    """SPEC step 4 from the definitions: centroid = mean of member keys."""
    scores = []
    for j, m in enumerate(members):
        c = torch.stack([keys_by_token[t] for t in m]).mean(0)
        scores.append((float(c @ query) / math.sqrt(d) + math.log(len(m)), j))
    ranked = sorted(scores, key=lambda sj: (-sj[0], sj[1]))
    best = ranked[0][0] if ranked else 0.0
    chosen = [j for s, j in ranked if s >= best - cfg.margin][: cfg.k_max]
    if len(chosen) < cfg.k_min:
        chosen = [j for _, j in ranked[: cfg.k_min]]
    ids = {t for j in chosen for t in members[j]}
    ids |= set(range(min(cfg.n_sink, n_tokens)))
    ids |= set(range(max(0, n_tokens - cfg.window_frames * frame_len), n_tokens))
    return chosen, sorted(ids)


@pytest.mark.parametrize(
    ("margin", "k_min", "k_max", "window"),
    [(0.0, 1, 8, 1), (2.0, 1, 4, 0), (5.0, 3, 6, 2), (0.0, 5, 5, 1), (100.0, 0, 1000, 3)],
)
def test_retrieve_equals_brute_force_selection(seed, margin, k_min, k_max, window):
    gen = torch.Generator().manual_seed(seed)
    h, w, d, heads, n = 4, 4, 8, 2, 6
    cfg = ReSVConfig(
        tau_t=0.6,
        tau_s=0.6,
        rule="margin",
        margin=margin,
        k_min=k_min,
        k_max=k_max,
        n_sink=3,
        window_frames=window,
        table_size=30,
    )
    cache = ReSVCache(cfg, heads, d)
    assert isinstance(cache, KVPolicy)
    keys_by_token = [{} for _ in range(heads)]
    base = torch.randn(heads, h * w, d, generator=gen)
    for f in range(n):
        keys = base + 0.6 * torch.randn(heads, h * w, d, generator=gen)
        cache.add_frame(keys, keys.clone(), (h, w))
        for hd in range(heads):
            keys_by_token[hd].update(enumerate(keys[hd].double(), start=f * h * w))
        query = 2.0 * torch.randn(heads, d, generator=gen)
        got = cache.retrieve(query)
        for hd in range(heads):
            chosen, want = brute_retrieve(
                keys_by_token[hd],
                cache.heads[hd].members,
                query[hd].double(),
                d,
                cfg,
                (f + 1) * h * w,
                h * w,
            )
            assert cache.last_selection[hd] == chosen
            assert got[hd].tolist() == want


def test_retrieve_ties_go_to_lower_cluster_index():
    cfg = ReSVConfig(
        tau_t=1.0,
        tau_s=1.0,
        rule="margin",
        margin=10.0,
        k_min=1,
        k_max=2,
        n_sink=0,
        window_frames=0,
    )
    cache = ReSVCache(cfg, 1, 2)
    keys = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]])
    cache.add_frame(keys, keys, (1, 4))  # tau 1, no parallel neighbours: 4 single clusters
    assert len(cache.heads[0].members) == 4
    q = torch.tensor([[0.0, 1.0]])  # every score equal: q is orthogonal to all keys
    cache.retrieve(q)
    assert cache.last_selection[0] == [0, 1]
    # margin 0 keeps every cluster tied at the maximum (s >= max - margin), up to k_max
    cache.cfg = cfg.replace(margin=0.0, k_max=3)
    assert cache.retrieve(q)[0].tolist() == [0, 1, 2]
    assert cache.last_selection[0] == [0, 1, 2]


# ---- the token-budget rule (version 2) ------------------------------------------------------


def brute_vectors(q_head, h, w, n_vec):
    """Block means from the definition: block (r, c) holds grid cells with
    floor(i R / h) = r and floor(j C / w) = c; R the largest divisor of Q with R*R <= Q."""
    rows = max(r for r in range(1, n_vec + 1) if n_vec % r == 0 and r * r <= n_vec)
    cols = n_vec // rows
    out = []
    for r in range(rows):
        for c in range(cols):
            cells = [
                i * w + j
                for i in range(h)
                for j in range(w)
                if (i * rows) // h == r and (j * cols) // w == c
            ]
            if cells:
                out.append(q_head[:, cells].double().mean(dim=(0, 1)))
    return out


def brute_budget_selection(members, keys_by_token, vectors, d, budget, score):
    """Scores from the written formulas with Python floats, then the greedy walk."""
    cents = [torch.stack([keys_by_token[t] for t in m]).double().mean(0).tolist() for m in members]
    counts = [len(m) for m in members]
    s = [[sum(a * b for a, b in zip(v.tolist(), c, strict=True)) for c in cents] for v in vectors]
    if score == "max":
        sc = [max(row[j] for row in s) for j in range(len(cents))]
    elif score == "norm":
        sc = [max(row[j] - max(row) for row in s) for j in range(len(cents))]
    else:
        sc = []
        for j in range(len(cents)):
            total = 0.0
            for row in s:
                z = sum(
                    n * math.exp((x - max(row)) / math.sqrt(d))
                    for n, x in zip(counts, row, strict=True)
                )
                total += math.exp((row[j] - max(row)) / math.sqrt(d)) / z
            sc.append(math.log(total))
    order = sorted(range(len(cents)), key=lambda j: (-sc[j], j))
    picks, taken = [], 0
    for j in order:
        if taken == budget:
            break
        take = min(counts[j], budget - taken)
        picks.append((j, take))
        taken += take
    ids = [t for j, take in picks for t in members[j][::-1][:take]]
    return picks, ids, sc


@pytest.mark.parametrize(
    ("score", "n_vec", "budget", "window"),
    [
        ("soft", 4, 20, 1),
        ("norm", 2, 7, 0),
        ("max", 1, 0, 2),
        ("soft", 16, 1000, 1),
        ("soft", 3, 9, 1),
    ],
)
def test_budget_rule_equals_brute_force(seed, score, n_vec, budget, window):
    gen = torch.Generator().manual_seed(seed)
    h, w, d, heads, g, frames = 3, 4, 8, 2, 2, 5
    cfg = ReSVConfig(
        tau_t=0.7,
        tau_s=0.7,
        table_size=24,
        n_sink=2,
        window_frames=window,
        budget=budget,
        query_vectors=n_vec,
        score=score,
        summaries=False,
    )
    cache = ReSVCache(cfg, heads, d)
    keys_by_token = [{} for _ in range(heads)]
    base = torch.randn(heads, h * w, d, generator=gen)
    for f in range(frames):
        q = torch.randn(heads * g, h * w, d, generator=gen)
        got = cache.retrieve(q)
        n = f * h * w
        resident = set(range(min(2, n))) | set(range(max(0, n - window * h * w), n))
        for hd in range(heads):
            members = cache.heads[hd].members
            # the index holds exactly the tokens that have left the window
            assert sorted(t for m in members for t in m) == list(range(max(0, n - window * h * w)))
            vectors = brute_vectors(q[hd * g : (hd + 1) * g], h, w, n_vec)
            if not members:
                assert got[hd].tolist() == sorted(resident)
                continue
            picks, ids, _ = brute_budget_selection(
                members, keys_by_token[hd], vectors, d, budget, score
            )
            assert cache.last_selection[hd] == picks
            total = sum(len(m) for m in members)
            assert sum(t for _, t in picks) == min(budget, total)
            assert got[hd].tolist() == sorted(set(ids) | resident)
        keys = base + 0.5 * torch.randn(heads, h * w, d, generator=gen)
        cache.add_frame(keys, keys.clone(), (h, w))
        for hd in range(heads):
            keys_by_token[hd].update(enumerate(keys[hd].double(), start=f * h * w))


def test_budget_truncates_the_last_cluster_to_its_newest_members():
    cfg = ReSVConfig(tau_t=0.5, tau_s=0.5, n_sink=0, window_frames=0, budget=3, summaries=False)
    cache = ReSVCache(cfg, 1, 2)
    for _ in range(5):  # one grid cell, parallel keys: one cluster of 5 members
        cache.add_frame(torch.ones(1, 1, 2), torch.ones(1, 1, 2), (1, 1))
    assert cache.heads[0].members == [[0, 1, 2, 3, 4]]
    assert cache.retrieve(torch.ones(1, 2))[0].tolist() == [2, 3, 4]
    assert cache.last_selection[0] == [(0, 3)]


def test_budget_ties_go_to_the_lower_cluster_index():
    cfg = ReSVConfig(tau_t=1.0, tau_s=1.0, n_sink=0, window_frames=0, budget=2, summaries=False)
    cache = ReSVCache(cfg, 1, 2)
    keys = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]])
    cache.add_frame(keys, keys, (1, 4))  # four single-member clusters
    for score in ("soft", "norm", "max"):
        cache.cfg = cfg.replace(score=score)
        # q orthogonal to every key: all scores equal, the two lowest indices win
        assert cache.retrieve(torch.tensor([[0.0, 1.0]]))[0].tolist() == [0, 1], score


def test_query_vectors_blocks_by_hand():
    # one query head, a 2x4 grid, token p holds the value p in every element
    q = torch.arange(8.0)[None, :, None].expand(1, 8, 3)
    got = query_vectors(q, (2, 4), 4, "blocks", 1, 0)
    # Q = 4 -> 2x2 blocks: {0,1,4,5}, {2,3,6,7} above ... rows split 0 | 1, columns 01 | 23
    assert got[:, 0].tolist() == [0.5, 2.5, 4.5, 6.5]
    assert query_vectors(q, (2, 4), 1, "blocks", 1, 0)[:, 0].tolist() == [3.5]
    # more blocks than cells: the empty ones are skipped
    assert query_vectors(q, (2, 4), 16, "blocks", 1, 0).shape == (8, 3)


def test_query_vectors_kmeans_is_seeded_and_finds_separated_groups():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0]])
    pts = centres.repeat_interleave(20, 0) + 0.1 * torch.randn(60, 2, generator=gen)
    q = pts[None]
    a = query_vectors(q, None, 3, "kmeans", 10, 0)
    assert torch.equal(a, query_vectors(q, None, 3, "kmeans", 10, 0))
    dist = torch.cdist(a.float(), centres).min(dim=1).values
    assert (dist < 0.5).all()


def test_rerank_keeps_budget_tokens_of_the_preselection_and_counts_their_keys():
    gen = torch.Generator().manual_seed(3)
    d = 8
    cfg = ReSVConfig(table_size=16, n_sink=0, window_frames=1, budget=10, summaries=False)
    plain, two = ReSVCache(cfg.replace(budget=20), 1, d), ReSVCache(cfg.replace(rerank=2.0), 1, d)
    for _ in range(6):
        k = torch.randn(1, 16, d, generator=gen)
        plain.add_frame(k, k, (4, 4))
        two.add_frame(k, k, (4, 4))
    q = torch.randn(1, 16, d, generator=gen)
    window = set(range(80, 96))
    pre = set(plain.retrieve(q)[0].tolist()) - window
    got = set(two.retrieve(q)[0].tolist()) - window
    assert len(got) == 10 and got <= pre
    key_bytes = 20 * (d * 4 // 8 + 2)
    assert two.memory().fetched_bytes == 10 * 2 * d * 2 + key_bytes


def test_summaries_are_the_unselected_clusters_centroids_and_mean_values():
    cfg = ReSVConfig(tau_t=1.0, tau_s=1.0, n_sink=0, window_frames=0, budget=1)
    cache = ReSVCache(cfg, 1, 2)
    # frame 0 opens clusters 0 and 1, frame 1 joins them temporally: {0, 2} and {1, 3}
    keys = [torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])]
    values = [torch.tensor([[[1.0, 2.0], [5.0, 6.0]]]), torch.tensor([[[3.0, 4.0], [7.0, 8.0]]])]
    for k, v in zip(keys, values, strict=True):
        cache.add_frame(k, v, (1, 2))
    assert cache.heads[0].members == [[0, 2], [1, 3]]
    cache.retrieve(torch.tensor([[1.0, 0.0]]))  # cluster 0 wins, its newest member is taken
    assert cache.last_selection[0] == [(0, 1)]
    mk, mv, bias = cache.last_summaries[0]
    assert mk.tolist() == [[0.0, 2.0]] and mv.tolist() == [[6.0, 7.0]]
    assert bias.tolist() == pytest.approx([math.log(2)])
    # on chip: per cluster a centroid + count and a mean value
    assert cache.memory().onchip_bytes == 2 * (2 * 2 + 4) + 2 * 2 * 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rule": "topk"}, "rule='topk' must be one of budget, margin"),
        ({"budget": -1}, "budget=-1 must be >= 0"),
        ({"query_vectors": 0}, "query_vectors=0 must be >= 1"),
        ({"query_mode": "grid"}, "query_mode='grid' must be one of blocks, kmeans"),
        ({"score": "mean"}, "score='mean' must be one of soft, norm, max"),
        ({"rerank": 0.5}, "rerank=0.5 must be 0 .off. or >= 1"),
        ({"summaries": 1}, "summaries must be True or False"),
    ],
)
def test_bad_v2_config_raises_one_readable_error(changes, message):
    with pytest.raises(ConfigError, match=message):
        ReSVConfig(**changes)


def test_bad_frames_and_queries_give_one_readable_error():
    cache = ReSVCache(ReSVConfig(), 1, 2)
    bad = torch.tensor([[[float("nan"), 0.0]]])
    with pytest.raises(ValueError, match="must be finite"):
        cache.add_frame(bad, torch.zeros(1, 1, 2), (1, 1))
    import numpy as np

    with pytest.raises(ValueError, match="keys and values must be torch tensors"):
        cache.add_frame(np.zeros((1, 1, 2)), np.zeros((1, 1, 2)), (1, 1))
    with pytest.raises(ValueError, match=r"queries must be \[Hq, P, 2\]"):
        cache.retrieve(torch.zeros(3, 5))
