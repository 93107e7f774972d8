"""Baselines: selections and memory accounting against arithmetic from their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from model.baselines import FullAttention, KVPolicy, ReKVFrames, SlidingWindow
from model.dre_config import ConfigError
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
