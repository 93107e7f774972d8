"""model/hf.py and model/hf_stream.py: streaming a transformers Qwen2-VL with retrieval policies.

Every model is a tiny random Qwen2-VL built from a config (no download), seeded by ``seed``.
References are computed independently of the streaming code: the library's own non-streamed
forward (its vision tower, placeholder merge and ``get_rope_index`` positions), and a
brute-force masked attention recomputed from each attention module's captured input.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
)
from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb

from model import hf_stream
from model.dre.config import ConfigError, DREConfig
from model.dre.quant import quantize, symmetric_scale
from model.dre.top import integer_stream
from model.hf import (
    HFError,
    StreamSession,
    frames_to_patches,
    policy_factory,
    save_tiny,
    tiny_qwen2vl,
)
from model.kv_trace import load_head
from model.video import SyntheticVideo

GRID = (3, 4)  # merged tokens per frame step: 12
SMALL = DREConfig(d=16, lanes=4, bq=6, bk=6, n_max=16, k_cap=4, grid_max=36)  # as test_dre


def frame_steps(seed: int, steps: int, size=(84, 112)) -> list[torch.Tensor]:
    video = SyntheticVideo(frames=2 * steps, height=size[0], width=size[1], seed=seed)
    return [torch.stack([video.frame(2 * t), video.frame(2 * t + 1)]) for t in range(steps)]


def library_forward(model, prompt: list[int], steps, grid, tail: list[int] = ()):
    """One non-streamed forward of the library over prompt + video + tail (hidden, logits);
    Qwen2.5-VL at 1 second per frame step (2 frames at the session's default 2 fps)."""
    cfg = model.config
    p = grid[0] * grid[1]
    ids = torch.tensor([[*prompt, *[cfg.video_token_id] * (p * len(steps)), *tail]])
    m = cfg.vision_config.spatial_merge_size
    pix = torch.cat([frames_to_patches(s, grid, cfg.vision_config.patch_size, m, 2) for s in steps])
    thw = torch.tensor([[len(steps), grid[0] * m, grid[1] * m]])
    extra = {"second_per_grid_ts": torch.tensor([1.0])} if cfg.model_type == "qwen2_5_vl" else {}
    with torch.no_grad():
        out = model.model(
            input_ids=ids,
            pixel_values_videos=pix,
            video_grid_thw=thw,
            mm_token_type_ids=(ids == cfg.video_token_id).int() * 2,
            **extra,
        )
        hidden = out.last_hidden_state[0]
        return hidden, model.lm_head(hidden).float()


def test_patches_match_the_library_image_processor(seed):
    """frames_to_patches lays pixels out as the library's Qwen2-VL image processor does."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)  # 2x3 merged tokens of 28 px
    ref = Qwen2VLImageProcessorPil(do_resize=False)(images=[img], return_tensors="pt")
    assert ref["image_grid_thw"].tolist() == [[1, 4, 6]]
    ours = frames_to_patches(torch.from_numpy(img).permute(2, 0, 1) / 255.0, (2, 3), 14, 2, 2)
    assert ours.shape == ref["pixel_values"].shape
    torch.testing.assert_close(ours, ref["pixel_values"].float(), atol=1e-5, rtol=1e-5)


# Qwen2.5-VL's temporal positions step by 2 per frame step: a grid 6 wide keeps the library's
# text position after the video (start + max(h, w)) equal to Qwen's max + 1 (model/hf.py).
@pytest.mark.parametrize(("family", "grid"), [("qwen2_vl", GRID), ("qwen2_5_vl", (3, 6))])
def test_full_stream_equals_one_forward(family, grid, seed):
    """With `full`, streaming frame by frame (pixels through the vision tower, or precomputed
    visual tokens) gives the hidden states of one library forward over the same inputs (with
    the library's own M-RoPE positions), and a question's first-token logits equal the
    library's over prompt + video + question."""
    model, tok = tiny_qwen2vl(seed, family=family)
    steps = frame_steps(seed, 3, size=(84, 168))
    s = StreamSession(model, "full", tokenizer=tok)
    prompt = s.prompt_ids()
    hidden = [s.push_frame(steps[0], grid), s.push_frame(steps[1], grid)]
    hidden.append(s.push_embeddings(s.frame_embeddings(steps[2], grid), grid))
    ref, _ = library_forward(model, prompt, steps, grid)
    torch.testing.assert_close(torch.cat(hidden), ref[len(prompt) :], atol=2e-5, rtol=1e-4)

    question = s.question_ids("What moves?")
    ans = s.ask("What moves?", max_new_tokens=3)
    _, logits = library_forward(model, prompt, steps, grid, question)
    torch.testing.assert_close(ans.first_logits, logits[-1], atol=2e-5, rtol=1e-4)
    first = int(logits[-1].argmax())  # a random tiny model may predict a stop token first
    assert ans.ids[:1] == ([] if first in s.stop_ids else [first])
    assert isinstance(ans.text, str) and len(ans.ids) <= 3 and not set(ans.ids) & s.stop_ids


def brute_force_layer(attn, h_in, cos, sin, k_all, v_all, select):
    """Attention of one module recomputed from its input: projections, the library's M-RoPE,
    a dense boolean mask (per KV head the past positions ``select(q, k, v)`` returns, causal
    over the new tokens) and merged tokens as extra logits.  Returns (output after o_proj,
    new keys, new values, selection)."""
    n, hq = h_in.shape[0], attn.config.num_attention_heads
    h, d = attn.config.num_key_value_heads, attn.head_dim
    q = attn.q_proj(h_in).view(n, hq, d).transpose(0, 1)
    k = attn.k_proj(h_in).view(n, h, d).transpose(0, 1)
    v = attn.v_proj(h_in).view(n, h, d).transpose(0, 1)
    q, k = apply_rotary_pos_emb(q[None], k[None], cos, sin)
    q, k = q[0], k[0]
    past_ids, merged = select(q, k, v)
    keys, values = torch.cat([k_all, k], dim=1), torch.cat([v_all, v], dim=1)
    n_past, g = k_all.shape[1], hq // h
    outs = []
    for head in range(hq):
        kv = head // g
        allowed = torch.zeros(n, n_past + n, dtype=torch.bool)
        allowed[:, past_ids[kv]] = True
        allowed[:, n_past:] = torch.ones(n, n, dtype=torch.bool).tril()
        logits = (q[head] @ keys[kv].T / math.sqrt(d)).masked_fill(~allowed, -math.inf)
        vals = values[kv]
        extra = merged[kv] if merged is not None else None
        if extra is not None:
            mk, mv, bias = extra
            logits = torch.cat([logits, q[head] @ mk.T / math.sqrt(d) + bias], dim=1)
            vals = torch.cat([vals, mv])
        outs.append(torch.softmax(logits, dim=-1) @ vals)
    out = torch.stack(outs, dim=1).reshape(n, hq * d)
    return attn.o_proj(out), k, v, past_ids


@pytest.mark.parametrize("policy", ["window", "rekv", "resv", "oracle"])
def test_restricted_layers_equal_brute_force(policy, seed):
    """Every layer's output, at every frame step, question and decoding step, equals a brute-force
    masked attention over the tokens a shadow copy of the policy selects (fed the brute-force
    queries and keys; text positions always attended); the selections do restrict."""
    model, tok = tiny_qwen2vl(seed)
    layers = model.model.language_model.layers
    captured = []

    def hook(module, args, kwargs, output):
        cos, sin = kwargs["position_embeddings"]
        captured.append((module, kwargs["hidden_states"][0], cos, sin, output[0][0]))

    handles = [m.self_attn.register_forward_hook(hook, with_kwargs=True) for m in layers]
    factory = policy_factory(policy, budget=8, tokens_per_frame=12, n_sink=2, window_frames=1)
    s = StreamSession(model, factory, tokenizer=tok, record=True)
    shadow = [factory(2, 16) for _ in layers]
    state = {"cache": [(torch.zeros(2, 0, 16), torch.zeros(2, 0, 16)) for _ in layers],
             "visual": []}  # fmt: skip
    checked, restricted = [0], [0]

    def on_step(kind, traces):
        assert len(captured) == len(layers)
        for (attn, h_in, cos, sin, out), trace in zip(captured, traces, strict=True):
            li = attn.layer_idx
            k_all, v_all = state["cache"][li]
            n_past = k_all.shape[1]
            text = [i for i in range(n_past) if i not in set(state["visual"])]

            def select(q, k, v, li=li, n_past=n_past, text=text):
                if not state["visual"]:
                    return [torch.arange(n_past)] * 2, None
                vids = shadow[li].retrieve(q)
                vis = torch.tensor(state["visual"])
                ids = [torch.sort(torch.cat([vis[x], torch.tensor(text, dtype=torch.long)]))[0]
                       for x in vids]  # fmt: skip
                pol = shadow[li]
                merged = pol.last_summaries if policy == "resv" else None
                return ids, merged

            with torch.no_grad():
                ref, k, v, ids = brute_force_layer(attn, h_in, cos, sin, k_all, v_all, select)
            torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
            if trace.past_ids is not None:
                for got, want in zip(trace.past_ids, ids, strict=True):
                    assert got.tolist() == want.tolist()
                restricted[0] += sum(len(x) < n_past for x in ids)
            if kind == "frame":
                shadow[li].add_frame(k, v, GRID)
            state["cache"][li] = (torch.cat([k_all, k], 1), torch.cat([v_all, v], 1))
            checked[0] += 1
        if kind == "frame":
            n = state["cache"][0][0].shape[1]
            state["visual"] += list(range(n - 12, n))
        captured.clear()

    s.on_step = on_step
    try:
        on_step("text", s.last_traces)  # the prompt's forward, before on_step was set
        for step in frame_steps(seed, 5):
            s.push_frame(step, GRID)
        saved = {"cache": list(state["cache"]), "visual": list(state["visual"])}
        ans = s.ask("Why?", max_new_tokens=3)
        state.update(saved)  # ask drops question and answer from the stream
        s.push_frame(frame_steps(seed + 1, 1)[0], GRID)
    finally:
        for hnd in handles:
            hnd.remove()
    decode_forwards = len(ans.ids) - (len(ans.ids) == 3)  # the last token is not fed back
    assert checked[0] == len(layers) * (1 + 5 + 1 + decode_forwards + 1)
    assert restricted[0] > 0, "the policy never restricted attention: the test proves nothing"


def test_ask_drops_question_and_answer(seed):
    """After ask() the stream continues exactly as if no question had been asked."""
    model, tok = tiny_qwen2vl(seed)
    steps = frame_steps(seed, 3)
    a = StreamSession(model, "resv", tokenizer=tok, budget=8)
    b = StreamSession(model, "resv", tokenizer=tok, budget=8)
    for step in steps[:2]:
        a.push_frame(step, GRID)
        b.push_frame(step, GRID)
    n = a.cache.n_tokens
    a.ask("And now?", max_new_tokens=4)
    assert a.cache.n_tokens == n
    torch.testing.assert_close(a.push_frame(steps[2], GRID), b.push_frame(steps[2], GRID))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "qwen2vl", seed=7)


def run_cli(capsys, *argv):
    rc = hf_stream.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_prints_the_bench_table_and_answers(tiny_dir, tmp_path, capsys, seed):
    rng = np.random.default_rng(seed)
    video = tmp_path / "clip.npy"
    np.save(video, rng.integers(0, 256, (8, 40, 50, 3), dtype=np.uint8))
    rc, out, err = run_cli(
        capsys, "--model", tiny_dir, "--video", video, "--grid", "3x4", "--policy",
        "resv,window", "--budget", "12", "--question", "What is it?", "--max-new-tokens", "3",
    )  # fmt: skip
    assert rc == 0, err
    assert "recall" in out and "fetch KB/fr" in out and "drift" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("full", "resv", "wind"))]
    assert [r[0].split("(")[0] for r in rows] == ["full", "resv", "window"]  # --policy order
    assert float(rows[0][1]) == 1.0 and float(rows[0][2]) == 0.0  # full: recall 1, error 0
    assert all(0.0 < float(r[1]) <= 1.0 for r in rows)
    assert "answer resv" in out and "answer window" in out


def test_trace_holds_the_models_keys(tiny_dir, tmp_path, capsys, seed):
    """--dump-trace writes each layer's and KV head's visual keys as the model cached them, and
    integer_stream reads them for verif.sim_dre."""
    trace = tmp_path / "trace"
    rc, _, err = run_cli(
        capsys, "--model", tiny_dir, "--grid", "4x6", "--frames", "6", "--policy", "full",
        "--seed", seed, "--dump-trace", trace,
    )  # fmt: skip
    assert rc == 0, err
    from model.hf import load_model
    from model.video import open_video

    model, tok = load_model(tiny_dir)
    video = open_video(None, frames=6, seed=seed)
    s = StreamSession(model, "full", tokenizer=tok)
    for t in range(3):
        s.push_frame(torch.stack([video.frame(2 * t), video.frame(2 * t + 1)]), (4, 6))
    vis = s.cache.visual
    for li in range(2):
        for h in range(2):
            meta, keys, queries = load_head(trace, li, h)
            cached = s.cache.layers[li].keys[0, h, vis].reshape(3, 24, 16).double()
            torch.testing.assert_close(keys, cached, atol=1e-6, rtol=1e-6)
            assert queries.shape == (3, 4, 16)
    assert meta["grid"] == [4, 6] and meta["frames"] == 3
    stream = integer_stream(SMALL, frames=64, grid=(4, 6), source=str(trace), layer=1, head=1,
                            queries_per_frame=3)  # fmt: skip
    _, keys, queries = load_head(trace, 1, 1)
    sk = symmetric_scale(keys[0], SMALL.bk)
    assert len(stream.frames) == 3
    assert stream.frames[2].keys == quantize(keys[2], SMALL.bk, sk).tolist()
    with pytest.raises(ConfigError, match="pass --grid 4x6"):
        integer_stream(SMALL, grid=(4, 4), source=str(trace))
    with pytest.raises(ConfigError, match="d=16"):
        integer_stream(DREConfig(d=32, grid_max=36), grid=(4, 6), source=str(trace))


@pytest.mark.cocotb
def test_trace_runs_through_sim_dre(tiny_dir, tmp_path, capsys, seed):
    """A real model's keys through the DRE RTL (verif.sim_dre, the SMALL configuration of
    tests/test_dre.py, v2 rule): every assignment and selection bit-exact."""
    from verif import sim_dre, toolenv

    trace = tmp_path / "trace"
    rc, _, err = run_cli(
        capsys, "--model", tiny_dir, "--grid", "4x6", "--frames", "8", "--policy", "resv",
        "--budget", "24", "--seed", seed, "--dump-trace", trace,
    )  # fmt: skip
    assert rc == 0, err
    toolenv.apply()
    args = ["--frames-folder", trace, "--frames", "4", "--grid", "4x6", "--budget", "12"]
    args += ["--queries", "3"]
    for k, v in SMALL.to_dict().items():
        args += ["--set", f"{k}={v}"]
    summary = tmp_path / "summary.json"
    rc = sim_dre.main([str(a) for a in [*args, "--seed", seed, "--out", summary]])
    assert rc == 0, capsys.readouterr().err
    s = json.loads(summary.read_text())
    assert s["mismatches"] == 0
    assert s["assignments"] == 4 * 24 and s["retrievals"] == 1 + 4 * 2


def test_bad_inputs_give_one_error_line(tiny_dir, tmp_path, capsys):
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "notes.txt").write_text("not a video")
    cases = [
        (["--model", tmp_path / "nowhere"], "no such model folder"),
        (["--model", tmp_path], "no config.json"),
        (["--model", llama], "model_type 'llama' is not streamed here"),
        (["--model", tiny_dir, "--video", tmp_path / "missing.npy"], "no such file"),
        (["--model", tiny_dir, "--video", tmp_path / "notes.txt"], "expected a folder of PNG"),
        (["--model", tiny_dir, "--frames", "2"], "need >= 2"),
    ]
    for argv, message in cases:
        rc, out, err = run_cli(capsys, *argv)
        assert rc == 2, (argv, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_without_a_tokenizer_questions_are_token_ids(seed):
    model, _ = tiny_qwen2vl(seed)
    s = StreamSession(model, "rekv", budget=12)
    assert s.prompt_ids() == [model.config.vision_start_token_id]
    for step in frame_steps(seed, 2):
        s.push_frame(step, GRID)
    question = [model.config.vision_end_token_id, 20, 21, 22]
    ans = s.ask(question, max_new_tokens=2)
    # A random tiny model may predict a stop token first (seed 1889880390 does): then no ids.
    first = int(ans.first_logits.argmax())
    assert ans.text is None and len(ans.ids) <= 2 and not set(ans.ids) & s.stop_ids
    assert ans.ids[:1] == ([] if first in s.stop_ids else [first])
    s.stop_ids = set()  # nothing stops the answer now: exactly max_new_tokens ids
    again = s.ask(question, max_new_tokens=2)
    assert again.text is None and len(again.ids) == 2 and again.ids[0] == first
    with pytest.raises(HFError, match="needs a tokenizer"):
        s.ask("Why?")
    with pytest.raises(HFError, match="grid changed"):
        s.push_frame(frame_steps(seed, 1)[0], (4, 4))
