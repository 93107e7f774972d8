"""Stream a Hugging Face Qwen2-VL model frame by frame, with any KV retrieval policy.

:class:`StreamSession` drives a ``transformers`` Qwen2-VL-family model (``model_type``
``qwen2_vl`` or ``qwen2_5_vl``: the M-RoPE models; ``transformers==5.24.0``, the ``[hf]``
extra) as a streaming video LLM:

* :meth:`StreamSession.push_frame` takes one frame step of pixels (``[3, H, W]`` or up to
  ``temporal_patch_size`` frames ``[T, 3, H, W]``, values in [0, 1]), resizes it to the token
  grid, patchifies and normalises it as Qwen2-VL's video processor does, and runs the model's own
  vision tower; :meth:`StreamSession.push_embeddings` takes precomputed visual tokens instead.
  Either way the frame's ``h * w`` tokens are prefilled into the model's KV cache (iterative
  prefill: one forward per frame), with M-RoPE positions ``(start + t, start + row, start +
  col)`` for frame ``t`` of the video (the layout of ``get_vision_position_ids``, one video whose
  temporal grid grows by one per frame step; Qwen2.5-VL spaces ``t`` by ``tokens_per_second *
  temporal_patch_size / fps``);
* a retrieval policy (:class:`model.baselines.KVPolicy`: ``full``, ``window``, ``rekv``,
  ``resv``, ``oracle`` or any object following the protocol, one per layer) decides, per layer
  and per KV head, which past visual tokens each new token attends to.  Text tokens (the prompt
  before the video, the question) are always attended.  ReSV's cluster summaries (merged
  tokens) are attended when the policy keeps them, as in :mod:`model.bench`;
* :meth:`StreamSession.ask` appends a question at any point, greedily decodes an answer with the
  same policy restricting every decoding step, then drops question and answer from the cache
  (the stream goes on as if unasked).

How it hooks into the library, without copying model code: the text model's attention
implementation is set to :data:`ATTENTION` (registered in ``transformers.AttentionInterface``,
with ``sdpa``'s mask function in ``AttentionMaskInterface``).  The model's own attention module
projects, applies M-RoPE and appends the new keys and values to the cache (a
:class:`StreamCache`, a ``DynamicCache`` that also records which cached positions are visual
tokens and the next M-RoPE position); then, instead of ``sdpa``, :func:`stream_attention` asks
the session (passed through the forward's keyword arguments) for each KV head's selection and
computes attention over it with :func:`model.llm.frame_attention`.  Without a session in the
keyword arguments it *is* ``sdpa``, so the same model object still runs ordinary forwards.

Token ids seen by the policies count visual tokens only, in stream order (frame ``t`` of ``P``
tokens holds ``t*P .. t*P + P - 1``), as in the golden model; the session maps them to cache
positions.  Batch size 1; the new tokens attend causally to each other (raster order within a
frame); attention is computed in float32 whatever the model's dtype.

Text after the video takes the M-RoPE position ``max(all positions so far) + 1`` (Qwen2-VL's
own convention, also what the library's ``rope_deltas`` assume during generation).  The pinned
library's ``get_rope_index`` starts text after a video at ``start + max(h, w)`` instead, which
differs only when the video has more frame steps than its grid has rows or columns.
"""

from __future__ import annotations

import json
import math
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from model.baselines import FullAttention, KVPolicy, OracleTopB, ReKVFrames, SlidingWindow
from model.llm import LayerTrace, Merged, frame_attention
from model.resv import ReSVCache, ReSVConfig

try:
    import transformers
    from transformers import AttentionInterface, DynamicCache
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
except ImportError as exc:  # pragma: no cover - the [hf] extra is part of `make setup`
    raise ImportError(
        f"model.hf needs transformers==5.24.0 ({exc}); install it with pip install -e '.[hf]'"
    ) from None

#: the attention implementation name registered with ``transformers``
ATTENTION = "vrex_stream"
#: the keyword argument that carries the session's step through the model's forward
STEP_KW = "vrex_step"
#: ``model_type`` values this module streams, and their model classes in ``transformers``
SUPPORTED = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}
TRANSFORMERS_VERSION = "5.24.0"
#: Qwen2-VL's image normalisation (OpenAI CLIP), used when the model folder has no
#: preprocessor_config.json
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
POLICIES = ("full", "window", "rekv", "resv", "oracle")


class HFError(ValueError):
    """A model folder, model family or input that cannot be streamed (one readable line)."""


# ---- the registered attention function -----------------------------------------------------------
def stream_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
    """``AttentionInterface`` function: restricted attention when a session step is in the
    keyword arguments, else exactly ``sdpa``.  ``query [1, Hq, Q, d]``, ``key``/``value``
    ``[1, H, N + Q, d]`` (the cache after this step's update); returns ``[1, Q, Hq, d]``."""
    step = kw.pop(STEP_KW, None)
    if step is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw
        )
    return step.attend(module.layer_idx, query, key, value, scaling), None


AttentionInterface.register(ATTENTION, stream_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


# ---- the cache -----------------------------------------------------------------------------------
class StreamCache(DynamicCache):
    """A ``DynamicCache`` (the full KV store, every token of every layer) that also knows the
    stream: which cached positions hold visual tokens (``visual``, in policy id order), the
    next M-RoPE text position, the video's start position, frames and grid."""

    def __init__(self, config):
        super().__init__(config=config)
        self.visual = torch.zeros(0, dtype=torch.long)
        self.next_position = 0
        self.max_position = -1
        self.video_start: int | None = None
        self.frames = 0
        self.grid: tuple[int, int] | None = None

    @property
    def n_tokens(self) -> int:
        return self.get_seq_length()

    def text_positions(self, n: int) -> torch.Tensor:
        """The first ``n`` cached positions that are not visual tokens (always attended)."""
        mask = torch.ones(n, dtype=torch.bool)
        mask[self.visual[self.visual < n]] = False
        return torch.nonzero(mask).flatten()

    def append(self, positions: torch.Tensor, visual: bool) -> None:
        """Bookkeeping after a forward that cached ``positions.shape[1]`` new tokens."""
        n = positions.shape[1]
        start = self.n_tokens - n
        if visual:
            self.visual = torch.cat([self.visual, torch.arange(start, start + n)])
        self.max_position = max(self.max_position, int(positions.max()))
        self.next_position = self.max_position + 1

    def snapshot(self) -> dict:
        keep = ("visual", "next_position", "max_position", "video_start", "frames", "grid")
        return {"n_tokens": self.n_tokens, **{k: getattr(self, k) for k in keep}}

    def restore(self, snap: dict) -> None:
        """Drop every token cached after ``snap`` (question and answer) and its bookkeeping."""
        extra = self.n_tokens - snap["n_tokens"]
        if extra:
            self.crop(-extra)
        for k, v in snap.items():
            if k != "n_tokens":
                setattr(self, k, v)


# ---- one forward of the session ------------------------------------------------------------------
@dataclass
class StepTrace(LayerTrace):
    """What one layer saw in one forward step (:class:`model.llm.LayerTrace`; ``past_ids`` are
    cache positions per KV head, None for all) plus the merged tokens it attended."""

    merged: Merged | None = None


class _Step:
    """One forward of the session: a frame (visual tokens) or text; called by every layer."""

    def __init__(self, session: StreamSession, kind: str, grid: tuple[int, int] | None):
        self.session, self.kind, self.grid = session, kind, grid
        self.traces: list[StepTrace | None] = [None] * session.layers

    def attend(self, layer: int, query, key, value, scaling) -> torch.Tensor:
        s = self.session
        if query.shape[0] != 1:
            raise HFError(f"the stream runs batch size 1, got {query.shape[0]}")
        d = query.shape[-1]
        q = query[0].float()
        if scaling is not None and not math.isclose(scaling * math.sqrt(d), 1.0):
            q = q * (scaling * math.sqrt(d))  # frame_attention scales by 1/sqrt(d)
        k, v = key[0].float(), value[0].float()
        n_new = q.shape[1]
        n_past = k.shape[1] - n_new
        k_past, v_past, k_new, v_new = k[:, :n_past], v[:, :n_past], k[:, n_past:], v[:, n_past:]
        ids, merged = s._select(layer, q, n_past)
        out = frame_attention(q, k_past, v_past, k_new, v_new, ids, merged=merged)
        if self.kind == "frame":
            s._add_frame(layer, k_new, v_new, self.grid)
        if s.record:
            self.traces[layer] = StepTrace(q, k_new, v_new, k_past, v_past, ids, out, merged)
        return out.to(query.dtype).transpose(0, 1)[None].contiguous()


@dataclass
class Answer:
    """What :meth:`StreamSession.ask` returns: the generated token ids (the stop token
    excluded), their text (None without a tokenizer) and the logits of the first answer token."""

    ids: list[int]
    text: str | None
    first_logits: torch.Tensor = field(repr=False)


PolicyFactory = Callable[[int, int], KVPolicy]


def policy_factory(
    name: str,
    *,
    budget: int = 980,
    tokens_per_frame: int | None = None,
    n_sink: int = 4,
    window_frames: int = 1,
    resv: ReSVConfig | None = None,
) -> PolicyFactory:
    """``factory(kv_heads, head_dim) -> KVPolicy`` for a named policy at ``budget`` past tokens
    per head and frame besides sinks and window, as ``model.bench --budgets`` matches them:
    ReSV and the oracle select exactly ``budget`` tokens, ReKV ``k = round(budget / P)`` whole
    frames, the window baseline ``window_frames + k`` frames (``P = tokens_per_frame``)."""
    if name not in POLICIES:
        raise HFError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    if name == "full":
        return FullAttention
    k = max(1, round(budget / tokens_per_frame)) if tokens_per_frame else 4
    if name == "window":
        return lambda h, d: SlidingWindow(h, d, n_sink, window_frames + k)
    if name == "rekv":
        return lambda h, d: ReKVFrames(h, d, k, n_sink, window_frames)
    if name == "oracle":
        return lambda h, d: OracleTopB(h, d, budget, n_sink, window_frames)
    cfg = (resv or ReSVConfig()).replace(
        rule="budget", budget=budget, n_sink=n_sink, window_frames=window_frames
    )
    return lambda h, d: ReSVCache(cfg, h, d)


# ---- the session ---------------------------------------------------------------------------------
class StreamSession:
    """A streaming session over a Qwen2-VL model (see the module docstring).

    model: a loaded ``Qwen2VLForConditionalGeneration`` (:func:`load_model`).
    policy: a name of :data:`POLICIES` (built with :func:`policy_factory` and ``budget`` at the
        first frame, when the tokens per frame are known), a factory
        ``(kv_heads, head_dim) -> KVPolicy``, or a list of one policy per layer.
    tokenizer: for text questions and answers (None: questions as token ids, no answer text).
    fps: video frames per second (Qwen2.5-VL's temporal positions advance by
        ``tokens_per_second * temporal_patch_size / fps`` per frame step; Qwen2-VL's by 1).
    prompt: the text before the video: a string, token ids, or None for the chat prompt
        ``<|im_start|>system ... <|im_start|>user\\n<|vision_start|>`` (with a tokenizer) or
        ``<|vision_start|>`` alone (without).
    record: keep :attr:`last_traces` (per layer :class:`StepTrace` of the last forward) and
        call :attr:`on_step` ``(kind, traces)`` after every forward (``"frame"`` or ``"text"``;
        :meth:`ask` runs one forward for the question and one per decoded token).
    """

    def __init__(
        self,
        model,
        policy: str | PolicyFactory | list[KVPolicy] = "full",
        *,
        tokenizer=None,
        budget: int = 980,
        prompt: str | Sequence[int] | None = None,
        record: bool = False,
        fps: float = 2.0,
    ):
        check_family(model.config)
        self.model, self.tokenizer, self.record = model, tokenizer, record
        cfg = model.config
        text = cfg.text_config
        self.layers = text.num_hidden_layers
        self.kv_heads = text.num_key_value_heads
        self.q_heads = text.num_attention_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // self.q_heads
        vis = cfg.vision_config
        self.patch, self.merge = vis.patch_size, vis.spatial_merge_size
        self.temporal = vis.temporal_patch_size
        self.mean, self.std = image_normalisation(model)
        if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
            raise HFError(f"fps={fps!r} must be a number > 0")
        self.time_interval = 1.0
        if cfg.model_type == "qwen2_5_vl":
            self.time_interval = vis.tokens_per_second * self.temporal / fps
        if text._attn_implementation != ATTENTION:
            model.set_attn_implementation({"text_config": ATTENTION})
        self.lm = model.model.language_model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._policy_spec, self.budget = policy, budget
        self.policies: list[KVPolicy] | None = None
        if isinstance(policy, list):
            if len(policy) != self.layers:
                raise HFError(f"{len(policy)} policies given for {self.layers} layers")
            self.policies = policy
        self.policy_seconds = 0.0
        self.cache = StreamCache(model.config)
        self.last_traces: list[StepTrace | None] = []
        self.on_step: Callable[[str, list[StepTrace]], None] | None = None
        self.stop_ids = stop_token_ids(model, tokenizer)
        if prompt is None:
            prompt = self.prompt_ids()
        if prompt:
            self.push_text(prompt)

    # -- policies
    def _make_policies(self, grid: tuple[int, int]) -> None:
        spec = self._policy_spec
        if isinstance(spec, str):
            spec = policy_factory(spec, budget=self.budget, tokens_per_frame=grid[0] * grid[1])
        self.policies = [spec(self.kv_heads, self.head_dim) for _ in range(self.layers)]

    def _select(self, layer: int, q: torch.Tensor, n_past: int):
        """Per KV head the cache positions ``layer`` attends to (None: all), merged tokens."""
        c = self.cache
        if self.policies is None or len(c.visual) == 0:
            return None, None
        pol = self.policies[layer]
        t0 = time.perf_counter()
        vids = pol.retrieve(q.detach().cpu())
        self.policy_seconds += time.perf_counter() - t0
        cfg = getattr(pol, "cfg", None)
        merged = (
            pol.last_summaries if cfg is not None and getattr(cfg, "summaries", False) else None
        )
        text = c.text_positions(n_past)
        ids = [torch.sort(torch.cat([c.visual[v.long()], text])).values.to(q.device) for v in vids]
        if merged is not None:
            merged = [None if m is None else tuple(x.to(q.device) for x in m) for m in merged]
        return ids, merged

    def _add_frame(self, layer: int, k_new, v_new, grid) -> None:
        t0 = time.perf_counter()
        self.policies[layer].add_frame(k_new.detach().cpu(), v_new.detach().cpu(), grid)
        self.policy_seconds += time.perf_counter() - t0

    # -- forwards
    def _forward(self, embeds: torch.Tensor, positions: torch.Tensor, kind: str, grid=None):
        step = _Step(self, kind, grid)
        with torch.no_grad():
            out = self.lm(
                inputs_embeds=embeds[None].to(self.device, self.dtype),
                position_ids=positions[:, None, :].to(self.device),
                cache=self.cache,
                use_cache=True,
                **{STEP_KW: step},
            )
        self.cache.append(positions, visual=kind == "frame")
        if self.record:
            self.last_traces = step.traces
            if self.on_step is not None:
                self.on_step(kind, step.traces)
        return out.last_hidden_state[0]

    def text_positions(self, n: int) -> torch.Tensor:
        """M-RoPE positions ``[3, n]`` of ``n`` text tokens appended now."""
        start = self.cache.next_position
        return torch.arange(start, start + n).expand(3, n)

    def frame_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """M-RoPE positions ``[3, h*w]`` of the next frame (the library's vision layout)."""
        c = self.cache
        start = c.next_position if c.video_start is None else c.video_start
        thw = torch.tensor([1, grid[0], grid[1]])
        pos = self.model.model.get_vision_position_ids(start, thw, 1, 1)
        pos[0] += int(c.frames * self.time_interval)
        return pos

    def push_text(self, text: str | Sequence[int]) -> torch.Tensor:
        """Prefill text tokens into the stream (kept); returns their hidden states."""
        ids = self.encode(text)
        emb = self.model.get_input_embeddings()(torch.tensor(ids, device=self.device))
        return self._forward(emb, self.text_positions(len(ids)), "text")

    def push_embeddings(self, embeds: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Prefill one frame of precomputed visual tokens ``[h*w, hidden]`` (raster order on
        ``grid``, the merged token grid); returns the frame's final hidden states."""
        grid = (int(grid[0]), int(grid[1]))
        hidden = self.model.config.text_config.hidden_size
        if embeds.ndim != 2 or tuple(embeds.shape) != (grid[0] * grid[1], hidden):
            raise HFError(
                f"visual tokens must be [{grid[0] * grid[1]}, {hidden}] for grid "
                f"{grid[0]}x{grid[1]}, got {list(embeds.shape)}"
            )
        c = self.cache
        if c.grid is not None and c.grid != grid:
            raise HFError(f"grid changed from {c.grid} to {grid} mid-stream")
        if self.policies is None:
            self._make_policies(grid)
        positions = self.frame_positions(grid)
        if c.video_start is None:
            c.video_start = c.next_position
        c.grid = grid
        out = self._forward(embeds, positions, "frame", grid)
        c.frames += 1
        return out

    def frame_embeddings(self, frames: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Visual tokens ``[h*w, hidden]`` of one frame step through the model's vision tower."""
        patches = frames_to_patches(
            frames, grid, self.patch, self.merge, self.temporal, self.mean, self.std
        )
        thw = torch.tensor([[1, grid[0] * self.merge, grid[1] * self.merge]], device=self.device)
        with torch.no_grad():
            out = self.model.model.get_video_features(
                pixel_values_videos=patches.to(self.device), video_grid_thw=thw
            )
        return out.pooler_output[0]

    def push_frame(self, frames: torch.Tensor, grid: tuple[int, int] | None = None):
        """One frame step of pixels (``[3, H, W]`` or ``[T, 3, H, W]``, ``T`` at most
        ``temporal_patch_size``, values in [0, 1]) resized to ``grid`` (merged tokens; default:
        the stream's grid, or the frame's size in units of ``patch * merge`` pixels).  Returns the
        frame's final hidden states ``[h*w, hidden]``."""
        if grid is None:
            grid = self.cache.grid
        if grid is None:
            unit = self.patch * self.merge
            grid = (max(1, round(frames.shape[-2] / unit)), max(1, round(frames.shape[-1] / unit)))
        return self.push_embeddings(self.frame_embeddings(frames, grid), grid)

    # -- questions
    @property
    def chat(self) -> bool:
        """Whether the tokenizer knows Qwen's chat tokens (``<|im_start|>`` ...)."""
        tok = self.tokenizer
        return tok is not None and tok.convert_tokens_to_ids("<|im_start|>") not in (
            None,
            tok.unk_token_id,
        )

    def prompt_ids(self) -> list[int]:
        """The default text before the video: the chat prompt up to ``<|vision_start|>`` (with a
        chat tokenizer), else ``<|vision_start|>`` alone."""
        start = self.model.config.vision_start_token_id
        if not self.chat:
            return [start]
        text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        return [*self.tokenizer.encode(text, add_special_tokens=False), start]

    def encode(self, text: str | Sequence[int]) -> list[int]:
        if isinstance(text, str):
            if self.tokenizer is None:
                raise HFError("text needs a tokenizer (the model folder has none): pass token ids")
            return self.tokenizer.encode(text, add_special_tokens=False)
        ids = [int(i) for i in text]
        vocab = self.model.config.text_config.vocab_size
        if not ids or not all(0 <= i < vocab for i in ids):
            raise HFError(f"token ids must be a non-empty list in [0, {vocab})")
        return ids

    def question_ids(self, question: str | Sequence[int]) -> list[int]:
        """The tokens appended for a question: ``<|vision_end|>``, the question, and (with a
        chat tokenizer) ``<|im_end|>\\n<|im_start|>assistant\\n``.  Token ids are used as given."""
        if not isinstance(question, str):
            return self.encode(question)
        tail = "<|im_end|>\n<|im_start|>assistant\n" if self.chat else ""
        return [self.model.config.vision_end_token_id, *self.encode(question + tail)]

    def ask(self, question: str | Sequence[int], max_new_tokens: int = 32) -> Answer:
        """Greedy answer to ``question`` with the session's policy restricting every step; the
        question and answer are dropped from the cache afterwards."""
        if max_new_tokens < 1:
            raise HFError(f"max_new_tokens={max_new_tokens} must be >= 1")
        snap = self.cache.snapshot()
        head = self.model.lm_head
        try:
            hidden = self.push_text(self.question_ids(question))
            with torch.no_grad():
                logits = head(hidden[-1:]).float()[0]
            first, ids = logits, []
            for _ in range(max_new_tokens):
                tok = int(logits.argmax())
                if tok in self.stop_ids:
                    break
                ids.append(tok)
                if len(ids) == max_new_tokens:
                    break
                with torch.no_grad():
                    logits = head(self.push_text([tok])[-1:]).float()[0]
        finally:
            self.cache.restore(snap)
        text = self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer else None
        return Answer(ids, text, first)


# ---- pixels --------------------------------------------------------------------------------------
def frames_to_patches(
    frames: torch.Tensor,
    grid: tuple[int, int],
    patch: int,
    merge: int,
    temporal: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """Qwen2-VL's ``pixel_values_videos`` of one frame step: ``[g_h*g_w*m*m, 3*T*p*p]``.

    ``frames [3, H, W]`` or ``[T, 3, H, W]`` (``1 <= T <= temporal``; fewer frames are padded by
    repeating the last, as the video processor does), values in [0, 1], are resized (bicubic,
    antialiased) to ``(g_h*m*p, g_w*m*p)`` unless already that size, normalised with
    ``mean``/``std``, and cut into patches in the processor's order: merge blocks in raster
    order, the ``m x m`` patches of a block, each patch flattened as ``(channel, time, row,
    col)``.
    """
    if not isinstance(frames, torch.Tensor):
        raise HFError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[1] != 3 or not 1 <= frames.shape[0] <= temporal:
        raise HFError(
            f"a frame step must be [3, H, W] or [T, 3, H, W] with T <= {temporal}, got "
            f"{list(frames.shape)}"
        )
    gh, gw = grid
    if gh < 1 or gw < 1:
        raise HFError(f"grid {gh}x{gw} must be at least 1x1")
    size = (gh * merge * patch, gw * merge * patch)
    x = frames.float()
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0.0, 1.0)
    m = torch.tensor(mean, dtype=x.dtype)[None, :, None, None]
    s = torch.tensor(std, dtype=x.dtype)[None, :, None, None]
    x = (x - m) / s
    if x.shape[0] < temporal:
        x = torch.cat([x, x[-1:].expand(temporal - x.shape[0], -1, -1, -1)])
    x = x.reshape(temporal, 3, gh, merge, patch, gw, merge, patch)
    x = x.permute(2, 5, 3, 6, 1, 0, 4, 7)  # (gh, gw, mh, mw, C, T, ph, pw)
    return x.reshape(gh * gw * merge * merge, 3 * temporal * patch * patch).contiguous()


def image_normalisation(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` from the model folder's preprocessor_config.json, else OpenAI CLIP's."""
    path = getattr(model, "name_or_path", "") or ""
    f = Path(path) / "preprocessor_config.json"
    if f.is_file():
        try:
            p = json.loads(f.read_text())
            return tuple(p["image_mean"]), tuple(p["image_std"])
        except (ValueError, KeyError):
            pass
    return CLIP_MEAN, CLIP_STD


def stop_token_ids(model, tokenizer) -> set[int]:
    """Token ids that end an answer: the generation config's EOS and ``<|im_end|>``."""
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config.text_config):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if eos is not None:
            ids.update([eos] if isinstance(eos, int) else eos)
    if tokenizer is not None:
        if tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if end is not None and end != tokenizer.unk_token_id:
            ids.add(end)
    return ids


# ---- loading -------------------------------------------------------------------------------------
def check_family(config) -> None:
    mt = getattr(config, "model_type", None)
    if mt not in SUPPORTED:
        raise HFError(
            f"model_type {mt!r} is not streamed here; model.hf streams the Qwen2-VL family "
            f"(model_type {' or '.join(SUPPORTED)})"
        )


def load_model(path, *, dtype: str = "auto", device: str = "cpu"):
    """``(model, tokenizer or None)`` from a local folder (``save_pretrained`` layout: config.json
    and weights; a tokenizer is loaded when the folder has one).  Raises :class:`HFError` with
    one line for a missing folder, another model family or unreadable weights."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise HFError(f"{folder}: no such model folder")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise HFError(f"{folder}: no config.json (expected a save_pretrained model folder)")
    try:
        raw = json.loads(cfg_file.read_text())
    except ValueError as exc:
        raise HFError(f"{cfg_file}: not valid JSON ({exc})") from None
    model_type = raw.get("model_type")
    check_family(type("C", (), {"model_type": model_type}))
    transformers.utils.logging.disable_progress_bar()
    dtypes = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}
    torch_dtype = {**dtypes, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise HFError(f"dtype {dtype!r}; choose auto, float32, bfloat16 or float16")
    try:
        cls = getattr(transformers, SUPPORTED[model_type])
        model = cls.from_pretrained(folder, dtype=torch_dtype)
    except Exception as exc:  # the library raises many kinds (safetensors, OSError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HFError(f"{folder}: cannot load the model ({first})") from None
    try:
        model = model.to(device).eval()
    except Exception as exc:  # an unknown device string, no CUDA build, ...
        raise HFError(f"cannot put the model on device {device!r} ({exc})") from None
    tokenizer = None
    if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise HFError(f"{folder}: cannot load the tokenizer ({exc})") from None
    return model, tokenizer


# ---- a tiny random model (tests, trying the tools without weights) -------------------------------
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def tiny_tokenizer():
    """A character-level tokenizer with Qwen2-VL's special tokens (ids 0..6, then printable
    ASCII), built locally with ``tokenizers``: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


def tiny_qwen2vl(
    seed: int = 0,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vision_depth: int = 1,
    vision_dim: int = 32,
    patch: int = 14,
    family: str = "qwen2_vl",
):
    """A randomly initialised Qwen2-VL (``family="qwen2_5_vl"``: Qwen2.5-VL) built from a config
    (no download), its vocabulary and special token ids those of :func:`tiny_tokenizer`.
    Returns ``(model, tokenizer)``."""
    if family not in SUPPORTED:
        raise HFError(f"family {family!r}; choose from {', '.join(SUPPORTED)}")
    tokenizer = tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = hidden // heads
    half = head_dim // 2
    t_sec = max(1, half // 4)
    h_sec = (half - t_sec) // 2
    text = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=32768,
        rope_scaling={"type": "mrope", "mrope_section": [t_sec, h_sec, half - t_sec - h_sec]},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=vision_depth,
        embed_dim=vision_dim,
        num_heads=2,
        hidden_size=hidden,
        patch_size=patch,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    if family == "qwen2_5_vl":  # window attention in the vision tower, SiLU MLP, own output size
        vision.update(
            out_hidden_size=hidden,
            hidden_size=vision_dim,
            intermediate_size=2 * vision_dim,
            window_size=2 * 2 * patch,
            fullatt_block_indexes=[vision_depth - 1],
            tokens_per_second=2,
        )
    config_cls = (
        transformers.Qwen2VLConfig if family == "qwen2_vl" else transformers.Qwen2_5_VLConfig
    )
    cfg = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = getattr(transformers, SUPPORTED[family])(cfg).eval()
    return model, tokenizer


def save_tiny(folder, seed: int = 0, **sizes) -> Path:
    """Write :func:`tiny_qwen2vl` with its tokenizer to ``folder`` (``save_pretrained``)."""
    transformers.utils.logging.disable_progress_bar()
    model, tok = tiny_qwen2vl(seed, **sizes)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
