"""TinyLLM: restricted attention against a brute-force per-query softmax, RoPE properties."""

from __future__ import annotations

import math

import pytest
import torch

from model.dre.config import ConfigError
from model.llm import KVStore, LLMConfig, TinyLLM, frame_attention, group_mean_query


def brute_attention(q, k_past, v_past, k_new, v_new, past_ids, merged=None):
    """One query at a time, explicit key list, softmax by hand (merged tokens: key, value and
    a logit bias each)."""
    hq, p, d = q.shape
    h = k_new.shape[0]
    out = torch.zeros(hq, p, d, dtype=torch.float64)
    for g in range(hq):
        kh = g // (hq // h)
        for i in range(p):
            keys = [k_past[kh, t] for t in past_ids[kh]] + [k_new[kh, j] for j in range(i + 1)]
            vals = [v_past[kh, t] for t in past_ids[kh]] + [v_new[kh, j] for j in range(i + 1)]
            logits = [float(q[g, i] @ key) / math.sqrt(d) for key in keys]
            if merged is not None and merged[kh] is not None:
                mk, mv, bias = merged[kh]
                keys += list(mk)
                vals += list(mv)
                logits += [
                    float(q[g, i] @ k) / math.sqrt(d) + float(b)
                    for k, b in zip(mk, bias, strict=True)
                ]
            m = max(logits)
            e = [math.exp(x - m) for x in logits]
            z = sum(e)
            out[g, i] = sum((ei / z) * v.double() for ei, v in zip(e, vals, strict=True))
    return out


def random_frame(gen, hq=4, h=2, p=5, n=7, d=8):
    q = torch.randn(hq, p, d, generator=gen)
    return (
        q,
        torch.randn(h, n, d, generator=gen),
        torch.randn(h, n, d, generator=gen),
        torch.randn(h, p, d, generator=gen),
        torch.randn(h, p, d, generator=gen),
    )


def test_full_set_through_restricted_path_equals_full_attention(seed):
    gen = torch.Generator().manual_seed(seed)
    q, kp, vp, kn, vn = random_frame(gen)
    all_ids = [torch.arange(kp.shape[1])] * 2
    full = frame_attention(q, kp, vp, kn, vn, None)
    restricted = frame_attention(q, kp, vp, kn, vn, all_ids)
    torch.testing.assert_close(restricted, full, rtol=0, atol=0)
    torch.testing.assert_close(
        full.double(), brute_attention(q, kp, vp, kn, vn, all_ids), rtol=1e-5, atol=1e-6
    )


def test_restricted_attention_equals_brute_force_on_a_subset(seed):
    gen = torch.Generator().manual_seed(seed)
    q, kp, vp, kn, vn = random_frame(gen, n=9)
    ids = [torch.tensor([0, 3, 8]), torch.tensor([], dtype=torch.long)]
    got = frame_attention(q, kp, vp, kn, vn, ids)
    torch.testing.assert_close(
        got.double(), brute_attention(q, kp, vp, kn, vn, ids), rtol=1e-5, atol=1e-6
    )


def test_merged_tokens_join_the_softmax_with_their_bias(seed):
    gen = torch.Generator().manual_seed(seed)
    q, kp, vp, kn, vn = random_frame(gen, n=9)
    ids = [torch.tensor([1, 4]), torch.tensor([0, 2, 5])]
    merged = [
        (torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen), torch.rand(3) * 3),
        None,
    ]
    got = frame_attention(q, kp, vp, kn, vn, ids, merged=merged)
    want = brute_attention(q, kp, vp, kn, vn, ids, merged)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # head 1 has no merged tokens: as without
    plain = frame_attention(q, kp, vp, kn, vn, ids)
    torch.testing.assert_close(got[2:], plain[2:], rtol=0, atol=0)
    assert not torch.allclose(got[:2], plain[:2])


def test_probs_cover_past_and_causal_frame(seed):
    gen = torch.Generator().manual_seed(seed)
    q, kp, vp, kn, vn = random_frame(gen)
    _, probs = frame_attention(q, kp, vp, kn, vn, None, return_probs=True)
    n, p = kp.shape[1], kn.shape[1]
    assert probs.shape == (4, p, n + p)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, p))
    future = torch.ones(p, p, dtype=torch.bool).triu(1)
    assert (probs[:, :, n:][:, future] == 0).all()


def test_prefill_with_select_all_equals_prefill_without(seed):
    cfg = LLMConfig(layers=2, head_dim=16, d_model=64, mlp_hidden=64, seed=seed % 1000)
    llm = TinyLLM(cfg)
    gen = torch.Generator().manual_seed(seed)
    frames = [torch.randn(6, 64, generator=gen) for _ in range(3)]
    s1, s2 = KVStore(cfg), KVStore(cfg)
    calls = []

    def everything(layer, q, k, v):
        calls.append(layer)
        return [torch.arange(s2.k[layer].shape[1])] * cfg.kv_heads

    for x in frames:
        a, ta = llm.prefill_frame(x, (2, 3), s1)
        b, tb = llm.prefill_frame(x, (2, 3), s2, everything)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert ta[1].q.shape == (cfg.q_heads, 6, 16) and tb[0].k.shape == (cfg.kv_heads, 6, 16)
    assert calls == [0, 1] * 3
    assert s1.n_tokens == 18 and s1.frames == 3
    # a real restriction changes the output
    s3 = KVStore(cfg)
    for x in frames:
        c, _ = llm.prefill_frame(x, (2, 3), s3, lambda *_: [torch.zeros(0, dtype=torch.long)] * 2)
    assert not torch.allclose(c, a)


@pytest.mark.parametrize("rope", ["mrope", "1d"])
def test_rope_is_a_rotation_with_relative_positions(rope):
    llm = TinyLLM(LLMConfig(head_dim=16, d_model=64, rope=rope))
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(16, generator=gen, dtype=torch.float64), torch.randn(16, generator=gen)
    k = k.double()
    a1 = llm.rope_angles(frame=2, start=40, grid=(3, 4))
    a2 = llm.rope_angles(frame=7, start=100, grid=(3, 4))
    r1q, r1k = (
        llm.apply_rope(q[None].expand(12, 16), a1),
        llm.apply_rope(k[None].expand(12, 16), a1),
    )
    torch.testing.assert_close(r1q.norm(dim=-1), q.norm().expand(12))
    # q at token i of frame 2 against k at token j of frame 2 equals the same pair shifted
    r2q, r2k = (
        llm.apply_rope(q[None].expand(12, 16), a2),
        llm.apply_rope(k[None].expand(12, 16), a2),
    )
    torch.testing.assert_close(r1q @ r1k.T, r2q @ r2k.T)


def test_group_mean_query():
    q = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4, 3, 2)
    got = group_mean_query(q, 2)
    want = torch.stack([q[0:2].reshape(-1, 2).mean(0), q[2:4].reshape(-1, 2).mean(0)])
    torch.testing.assert_close(got, want)


def test_weights_are_seeded():
    a, b = TinyLLM(LLMConfig(seed=3)), TinyLLM(LLMConfig(seed=3))
    c = TinyLLM(LLMConfig(seed=4))
    assert torch.equal(a.layers[0]["wq"], b.layers[0]["wq"])
    assert not torch.equal(a.layers[0]["wq"], c.layers[0]["wq"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layers": 0}, "layers=0 must be >= 1"),
        ({"head_dim": 7}, "head_dim=7 must be even"),
        ({"rope": "2d"}, "rope='2d' must be"),
        ({"qk_gain": -1.0}, "qk_gain=-1.0 must be a finite number >= 0"),
        ({"kv_heads": 1.5}, "kv_heads must be an integer"),
    ],
)
def test_bad_llm_config(changes, message):
    with pytest.raises(ConfigError, match=message):
        LLMConfig(**changes)
