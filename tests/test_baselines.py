"""Baselines: selections and memory accounting against arithmetic from their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from model.baselines import FullAttention, KVPolicy, OracleTopB, ReKVFrames, SlidingWindow
from model.dre.config import ConfigError
from model.resv import ReSVCache, ReSVConfig

H, D, GRID = 2, 4, (2, 3)
P = GRID[0] * GRID[1]


def stream(policy, gen, frames):
    keys = []
    for _ in range(frames):
        k = torch.randn(H, P, D, generator=gen)
        keys.append(k)
        policy.add_frame(k, torch.zeros(H, P, D), GRID)
    return keys


def test_every_policy_follows_the_protocol():
    for pol in (
        FullAttention(H, D),
        SlidingWindow(H, D),
        ReKVFrames(H, D),
        ReSVCache(ReSVConfig(), H, D),
    ):
        assert isinstance(pol, KVPolicy)
        # before any frame: nothing to retrieve, nothing held
        assert [len(x) for x in pol.retrieve(torch.zeros(H, D))] == [0] * H
        assert pol.memory().onchip_bytes == pol.memory().offchip_bytes == 0


def test_full_attention(seed):
    gen = torch.Generator().manual_seed(seed)
    pol = FullAttention(H, D)
    stream(pol, gen, 3)
    ids = pol.retrieve(torch.randn(H, D, generator=gen))
    assert [x.tolist() for x in ids] == [list(range(3 * P))] * H
    mem = pol.memory()
    token = 2 * D * 2  # fp16 key + value
    assert mem.onchip_bytes == 0
    assert mem.fetched_bytes == mem.offchip_bytes == 3 * P * H * token


@pytest.mark.parametrize(
    ("sinks", "window", "frames"), [(0, 1, 4), (2, 2, 4), (8, 3, 2), (3, 0, 3)]
)
def test_sliding_window(seed, sinks, window, frames):
    gen = torch.Generator().manual_seed(seed)
    pol = SlidingWindow(H, D, n_sink=sinks, window_frames=window)
    stream(pol, gen, frames)
    n = frames * P
    want = sorted(set(range(min(sinks, n))) | set(range(max(0, n - window * P), n)))
    assert [x.tolist() for x in pol.retrieve(torch.zeros(H, D))] == [want] * H
    mem = pol.memory()
    assert mem.fetched_bytes == 0
    assert mem.onchip_bytes == len(want) * H * 2 * D * 2


@pytest.mark.parametrize(("k", "window"), [(1, 1), (2, 0), (3, 2), (10, 1)])
def test_rekv_top_k_frames(seed, k, window):
    gen = torch.Generator().manual_seed(seed)
    frames, sinks = 6, 2
    pol = ReKVFrames(H, D, k=k, n_sink=sinks, window_frames=window)
    keys = stream(pol, gen, frames)
    q = torch.randn(H, D, generator=gen)
    got = pol.retrieve(q)
    n = frames * P
    resident = set(range(sinks)) | set(range(n - window * P, n))
    for h in range(H):
        scores = [
            (float(keys[f][h].double().mean(0) @ q[h].double()) / math.sqrt(D), f)
            for f in range(frames - window)
        ]
        top = [f for _, f in sorted(scores, key=lambda sf: (-sf[0], sf[1]))[:k]]
        want = set(resident)
        for f in top:
            want |= set(range(f * P, (f + 1) * P))
        assert got[h].tolist() == sorted(want)
    mem = pol.memory()
    fetched = sum(len(set(x.tolist()) - resident) for x in got)
    assert mem.fetched_bytes == fetched * 2 * D * 2
    assert mem.onchip_bytes == frames * H * (D * 2 + 4) + len(resident) * H * 2 * D * 2


def test_rekv_ties_go_to_the_earlier_frame():
    pol = ReKVFrames(1, 2, k=1, n_sink=0, window_frames=0)
    for _ in range(3):
        pol.add_frame(torch.ones(1, 2, 2), torch.ones(1, 2, 2), (1, 2))
    assert pol.retrieve(torch.ones(1, 2))[0].tolist() == [0, 1]


def test_bad_baseline_arguments():
    with pytest.raises(ConfigError, match="k=0 must be >= 1"):
        ReKVFrames(H, D, k=0)
    with pytest.raises(ConfigError, match="window_frames=-1 must be >= 0"):
        SlidingWindow(H, D, window_frames=-1)
    pol = FullAttention(H, D)
    with pytest.raises(ValueError, match="keys and values must be"):
        pol.add_frame(torch.zeros(H, P + 1, D), torch.zeros(H, P + 1, D), GRID)


def test_oracle_hand_checked_case():
    """One head, d = 1, no sinks, no window: past keys 0, 1, 2, 3 (ids 0..3), and two queries.

    Logits are q * k (sqrt(d) = 1).  Query +1 over the past: softmax(0, 1, 2, 3), query -1:
    softmax(0, -1, -2, -3).  With Z = 1 + e + e^2 + e^3 the summed mass of token k is
    e^k / Z + e^-k / Z' -- token 3 gets 0.644 + 0.032, token 0 gets 0.032 + 0.644, token 2 gets
    0.237 + 0.087, token 1 gets 0.087 + 0.237: 3 and 0 tie on top (0.676, lower id first), then
    2 and 1 (0.324).  Budget 1 -> {0}; budget 2 -> {0, 3}; budget 3 -> {0, 1, 3}."""
    for budget, want in ((0, []), (1, [0]), (2, [0, 3]), (3, [0, 1, 3]), (9, [0, 1, 2, 3])):
        pol = OracleTopB(1, 1, budget, n_sink=0, window_frames=0)
        pol.add_frame(torch.tensor([[[0.0], [1.0]]]), torch.zeros(1, 2, 1), (1, 2))
        pol.add_frame(torch.tensor([[[2.0], [3.0]]]), torch.zeros(1, 2, 1), (1, 2))
        q = torch.tensor([[[1.0], [-1.0]]])  # one query head, two tokens
        assert pol.retrieve(q)[0].tolist() == want, budget
        z = sum(math.exp(k) for k in range(4))
        mass = pol.mass(q)[0].tolist()
        assert mass == pytest.approx([(math.exp(k) + math.exp(3 - k)) / z for k in range(4)])


def test_oracle_never_spends_budget_on_resident_tokens(seed):
    gen = torch.Generator().manual_seed(seed)
    pol = OracleTopB(H, D, budget=P, n_sink=2, window_frames=1)
    stream(pol, gen, 4)
    got = pol.retrieve(torch.randn(H * 2, P, D, generator=gen))
    resident = set(range(2)) | set(range(3 * P, 4 * P))
    for ids in got:
        assert len(set(ids.tolist()) - resident) == P
    assert pol.memory().fetched_bytes == H * P * 2 * D * 2


def test_rekv_uses_the_mean_of_the_frames_queries(seed):
    gen = torch.Generator().manual_seed(seed)
    a, b = ReKVFrames(H, D, k=2, n_sink=0), ReKVFrames(H, D, k=2, n_sink=0)
    g = torch.Generator().manual_seed(seed)
    stream(a, gen, 5)
    stream(b, g, 5)
    q = torch.randn(2 * H, P, D, generator=gen)  # two query heads per KV head
    mean = q.reshape(H, 2 * P, D).mean(dim=1)
    assert [x.tolist() for x in a.retrieve(q)] == [x.tolist() for x in b.retrieve(mean)]
