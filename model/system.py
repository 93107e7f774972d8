"""System performance model: frames per second, DRAM bytes and energy of streaming prefill.

``python -m model.system`` turns the repository's measured pieces (the DRE's cycle schedules,
its synthesised gate count and memory bits, the golden model's byte model) and the profiles in
``model/profiles/*.toml`` (devices, LLMs, stream, precision, policies; every number with its
source or marked as an assumption) into a per-frame cost of *iterative prefill*: each incoming
frame's ``P`` visual tokens run through every layer, attending to the past (all of it, or a
retrieved budget) and to themselves.

ReSV is modelled as retrieval version 2, the golden model's defaults (``model.resv.ReSVConfig``):
a 2048-entry table, ``Q = 16`` query vectors per KV head and frame, the soft cluster score, a
token budget, and cluster summaries (every unselected cluster attended as one merged token:
centroid key, mean value).  The ReKV-style baseline scores frame means with one mean query, as
``model.baselines.ReKV`` does.

Per frame and phase (all layers summed; ``docs/system.md`` derives every term):

* ``linear``: weight bytes (every linear layer read once per frame), INT8 ops
  ``2 * params * P``, activation bytes where the device spills them to DRAM;
* ``attention``: KV bytes fetched (full: the whole past; ReKV / ReSV: ``min(budget, past)``
  tokens per KV head; ReSV's summary tokens from DRAM on a GPU, from the DRE on the
  accelerator) plus the new frame's KV written, FP16 FLOPs
  ``4 * Hq * d * P * (attended + summaries + (P + 1) / 2)``;
* ``select``: what deciding the fetch costs.  ReKV: the frame-mean-key index read from DRAM and
  scored.  ReSV on a GPU: the centroid table read and scored by ``Q`` queries (plus the soft
  score's exponentials), plus clustering, whose raster-order dependence makes it ``P``
  sequential steps per layer.  ReSV on the accelerator: the DRE's v2 retrieval cycles (bit-plane
  selector serving the ``Q`` queries in turn, then the soft-score unit; on the critical path);
  clustering and write-back run in the DRE's background and only bound the frame time if they
  exceed it.

Time per phase is a roofline ``max(compute / (peak * util), bytes / (bw * util))`` plus fixed
per-kernel overheads; phases run one after the other.  Energy = DRAM bytes x pJ/B + ops x pJ/op +
static power x time + the DRE's activity-based energy.  Outputs: one table (FPS, ms by phase,
GB, mJ per frame at the end of streams of 1, 5, 10, 30, 60 minutes, and the ratios against full
attention on the Orin-class device), ``system.csv`` and ``system.png`` under ``--out``, then the
DRE's area and power share and the table-state figures.  ``--calibrate`` times attention with
torch on whatever device is present (never run by the tests).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path

from model.dre.config import clustering_lanes

ROOT = Path(__file__).resolve().parent.parent
PROFILES = Path(__file__).resolve().parent / "profiles"
POLICIES = ("full", "rekv", "resv")
PHASES = ("vision", "linear", "attention", "select")
MINUTES = (1, 5, 10, 30, 60)
#: fixed kernels per layer on a GPU (each costs ``kernel_overhead``): linear phase (norm, fused
#: QKV, RoPE, O, norm, gate/up, activation, down), attention (one fused kernel), selection
#: (ReKV: score, top-k, gather; ReSV: score, budget fill, gather, one persistent clustering kernel)
KERNELS = {"linear": 8, "attention": 1, "rekv": 3, "resv": 4, "full": 0}
#: ReSV's cluster scores: ``soft`` (the golden model's default; no early exit) or ``norm``
SCORES = ("soft", "norm")
#: profile fields whose value is a word, and the words allowed
WORDS = {"score": SCORES}
#: query vectors per KV head of the ReKV-style baseline (``model.baselines.ReKV``: the mean query)
REKV_QUERIES = 1
#: the soft-score unit (``hw/soft_score.py``, ``SoftScore.Z_CYCLES`` / ``FIXED_CYCLES``)
SOFT_Z_CYCLES, SOFT_FIXED_CYCLES = 9, 29
#: FP16 operations per (query vector, cluster) of the soft score on a GPU besides the dot product:
#: subtract the maximum and exponentiate, weight by the count and sum (the softmax's denominator),
#: then subtract its log, exponentiate and sum over the queries
SOFT_FLOPS = 6


class ProfileError(ValueError):
    """A profile file or value is malformed; the message names the file, entry and field."""


# ---- profiles ---------------------------------------------------------------------------------
def load_profiles(path: Path) -> tuple[dict[str, dict], dict[str, dict[str, str]]]:
    """Read a profile file: ``{section: {field: value}}`` and ``{section: {field: source}}``.

    Every field other than ``name`` / ``kind`` must be ``{ value = <number>, unit = "...",
    source = "..." }`` with a non-empty source."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from None
    values: dict[str, dict] = {}
    sources: dict[str, dict[str, str]] = {}
    for sec, body in raw.items():
        if not isinstance(body, dict):
            raise ProfileError(f"{path}: [{sec}] must be a table")
        values[sec], sources[sec] = {}, {}
        for key, item in body.items():
            if key in ("name", "kind"):
                values[sec][key] = item
                continue
            if key in WORDS:
                v = item.get("value") if isinstance(item, dict) else None
                if v not in WORDS[key] or not str(item.get("source", "")).strip():
                    raise ProfileError(
                        f"{path}: [{sec}] {key} must be {{ value = one of {list(WORDS[key])}, "
                        f"source = ... }}, got {item!r}"
                    )
                values[sec][key], sources[sec][key] = v, str(item["source"])
                continue
            ok = isinstance(item, dict) and set(item) >= {"value", "source"}
            v = item.get("value") if isinstance(item, dict) else None
            if not ok or isinstance(v, bool) or not isinstance(v, int | float):
                raise ProfileError(
                    f"{path}: [{sec}] {key} must be {{ value = <number>, unit = ..., "
                    f"source = ... }}, got {item!r}"
                )
            if not str(item["source"]).strip():
                raise ProfileError(f"{path}: [{sec}] {key} has an empty source")
            values[sec][key] = v
            sources[sec][key] = str(item["source"])
    return values, sources


def _build(cls, sec: str, data: dict, path: Path):
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING} - {"key"}
    missing = sorted(required - set(data))
    unknown = sorted(set(data) - names)
    if missing or unknown:
        raise ProfileError(f"{path}: [{sec}] missing {missing} / unknown {unknown}")
    obj = cls(key=sec, **data)
    for f in fields(cls):
        v = getattr(obj, f.name)
        if isinstance(v, int | float) and not isinstance(v, bool) and v < 0:
            raise ProfileError(f"{path}: [{sec}] {f.name}={v} must be >= 0")
    return obj


@dataclass(frozen=True)
class Device:
    key: str
    name: str
    kind: str  # "gpu" or "accelerator"
    dram_bw: float
    dram_capacity: float
    peak_int8: float
    peak_fp16: float
    board_power: float
    static_power: float
    compute_util: float
    bw_util: float
    pj_per_op_int8: float
    pj_per_flop_fp16: float
    dram_pj_per_byte: float
    activation_spill: int
    serial_step: float
    kernel_overhead: float
    npu_mac_units: float = 0
    npu_clock: float = 0
    npu_ge_per_mac: float = 0
    npu_sram_bytes: float = 0
    dre_instances: int = 0
    dre_clock: float = 0
    dre_table_state: int = 1

    @property
    def has_dre(self) -> bool:
        return self.dre_instances > 0


@dataclass(frozen=True)
class LLM:
    key: str
    name: str
    layers: int
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    vocab: int
    tied_embeddings: int
    vision_layers: int
    vision_hidden: int
    vision_mlp: int
    vision_merge: int

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def linear_params_per_layer(self) -> int:
        """Q and O (hidden x Hq d), K and V (hidden x Hkv d), gate, up, down (hidden x mlp)."""
        h, qd = self.hidden, self.q_heads * self.head_dim
        return 2 * h * qd + 2 * h * self.kv_dim + 3 * h * self.mlp

    @property
    def vision_params(self) -> int:
        """ViT blocks (QKV + O ``4 h^2``, MLP ``2 h m``) and the patch merger (``4h x 4h`` and
        ``4h x hidden``, for 2 x 2 merging); patch embedding and norms left out."""
        h, mg = self.vision_hidden, self.vision_merge
        blocks = self.vision_layers * (4 * h * h + 2 * h * self.vision_mlp)
        return blocks + (mg * h) ** 2 + mg * h * self.hidden

    @property
    def params(self) -> int:
        """Linear layers + embedding (+ LM head when untied); norms and biases left out."""
        emb = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.linear_params_per_layer + emb


@dataclass(frozen=True)
class Setup:
    """Stream, precision, policy and DRE parameters (``system.toml``), flattened."""

    tokens_per_frame: int
    fps: float
    weight_bytes: float
    kv_bytes: float
    act_bytes: float
    index_bytes: float
    count_bytes: float
    addr_bytes: float
    budget_rekv: int
    budget_resv: int
    table_size: int
    new_clusters_per_frame: float
    updated_clusters_per_frame: float
    queries_per_head: int
    score: str
    parallel_queries: int
    summaries: int
    mean_value_bits: int
    lanes: int
    cluster_lanes: int
    bq: int
    bk: int
    count_bits: int
    bias_bits: int
    k_cap: int
    pass_latency: int
    work_fraction: float
    survivors: float
    logic_ge: float
    logic_ge_growth: float
    sram_ge_per_bit: float
    nand2_um2: float
    activity: float
    fj_per_ge_toggle: float
    pj_per_sram_bit: float
    leak_nw_per_ge: float
    leak_nw_per_sram_bit: float

    def budget(self, policy: str) -> int | None:
        return {"rekv": self.budget_rekv, "resv": self.budget_resv}.get(policy)

    @property
    def soft(self) -> bool:
        return self.score == "soft"

    @property
    def cl_lanes(self) -> int:
        """Lanes of the clustering unit, ``min(cluster_lanes, lanes)`` (``DREConfig.cl_lanes``)."""
        return clustering_lanes(self.cluster_lanes, self.lanes)


@dataclass
class Profiles:
    devices: dict[str, Device]
    models: dict[str, LLM]
    setup: Setup
    sources: dict[str, dict[str, str]] = field(default_factory=dict)


def load_all(folder: Path = PROFILES) -> Profiles:
    dv, ds = load_profiles(folder / "devices.toml")
    mv, ms = load_profiles(folder / "models.toml")
    sv, ss = load_profiles(folder / "system.toml")
    ints = {
        "dre_instances",
        "activation_spill",
        "dre_table_state",
        "layers",
        "hidden",
        "q_heads",
        "kv_heads",
        "head_dim",
        "mlp",
        "vocab",
        "tied_embeddings",
        "vision_layers",
        "vision_hidden",
        "vision_mlp",
        "vision_merge",
    }

    def cast(d):
        return {k: int(v) if k in ints else v for k, v in d.items()}

    devices = {k: _build(Device, k, cast(v), folder / "devices.toml") for k, v in dv.items()}
    models = {k: _build(LLM, k, cast(v), folder / "models.toml") for k, v in mv.items()}
    flat = {k: v for sec in sv.values() for k, v in sec.items()}
    int_setup = {"tokens_per_frame", "budget_rekv", "budget_resv", "table_size"}
    int_setup |= {
        "queries_per_head",
        "lanes",
        "cluster_lanes",
        "bq",
        "bk",
        "count_bits",
        "bias_bits",
        "k_cap",
    }
    int_setup |= {"parallel_queries", "summaries", "mean_value_bits", "pass_latency"}
    flat = {k: int(v) if k in int_setup else v for k, v in flat.items()}
    try:
        setup = Setup(**flat)
    except TypeError as exc:
        raise ProfileError(f"{folder / 'system.toml'}: {exc}") from None
    check_setup(setup, folder / "system.toml")
    for m in models.values():
        if m.q_heads % m.kv_heads or m.head_dim % setup.lanes or m.head_dim % setup.cl_lanes:
            raise ProfileError(
                f"model {m.key}: q_heads % kv_heads, head_dim % lanes and "
                f"head_dim % min(cluster_lanes, lanes) must be 0"
            )
    sources = {}
    for part in (ds, ms, ss):
        sources.update(part)
    return Profiles(devices, models, setup, sources)


def check_setup(s: Setup, where) -> None:
    """The setup's words and switches: one clear error."""
    if s.score not in SCORES:
        raise ProfileError(f"{where}: score={s.score!r}; choose from {', '.join(SCORES)}")
    for name in ("parallel_queries", "summaries"):
        if getattr(s, name) not in (0, 1):
            raise ProfileError(f"{where}: {name}={getattr(s, name)} must be 0 or 1")
    for name in ("queries_per_head", "table_size", "lanes", "cluster_lanes", "bk", "k_cap"):
        if getattr(s, name) < 1:
            raise ProfileError(f"{where}: {name}={getattr(s, name)} must be >= 1")


# ---- the DRE: cycles, memories, energy --------------------------------------------------------
def dre_retrieval_cycles(n: float, d: int, lanes: int, bk: int, planes_read: float, survivors):
    """Version 1 (``DRE(cfg, rule="v1")``, ``hw/select_core.py``): compute cycles of one
    one-query retrieval over ``n`` entries, kept for comparison (the model runs version 2,
    :func:`dre_v2_retrieval_cycles`).

    ``1 + 2G + sum_p (alive_p G + dropped_p + 5 - x_p)`` with ``G = d / lanes``; the alive counts
    sum to ``planes_read`` and the drops to ``n - survivors`` (alive at the last pass).  ``x_p``
    (at most one cycle per pass with drops) is left out: this is the schedule's upper bound."""
    g = d // lanes
    return 1 + 2 * g + g * planes_read + (n - survivors) + 5 * bk


def soft_score_cycles(n: float, q: int) -> float:
    """Cycles of the soft-score unit (``hw/soft_score.py``) over ``n`` live entries and ``q``
    query vectors: ``N (1 + 2Q) + 9Q + 29`` (MAX sweep one entry per cycle, SUM and SCORE sweeps
    ``Q`` cycles per entry, ``Z_c`` 9 cycles per query, 28 of pipeline fill and drain and the
    unit's two FIFOs)."""
    if n <= 0:
        return 0.0
    return n * (1 + 2 * q) + SOFT_Z_CYCLES * q + SOFT_FIXED_CYCLES


def dre_v2_retrieval_cycles(
    n: float,
    d: int,
    s: Setup,
    records: float | None = None,
) -> float:
    """Cycles of one version-2 retrieval (``DRE(cfg, rule="v2")``: ``hw/select_tokens.py``, then
    the soft-score unit when ``s.score == "soft"``) over ``n`` table entries for ``Q =
    s.queries_per_head`` query vectors, the budget reaching ``records`` entries (all ``n`` when
    None).

    Selector (``docs/select.md``, "v2 hardware"; without early exit, every entry live and the
    budget taking all of them it is exactly ``1 + 2QG + bk (NQG + 5) + R (N + 5) + N``, ``G =
    d / lanes``, ``R = ceil(N / k_cap)``, the unpipelined RTL's formula; the pipelined RTL
    (``hw.select_tokens.cycle_formula``) adds ``10 + bk (LA + 12) + R (LA + 2)`` cycles, and
    ``2 LA + 7`` with the soft score, ``LA`` ~ 9: under 1 % at N >= 256; ``pass_latency`` models
    the per-pass part)::

        1 + 2 Q' G                                   set-up (Qpos, Qneg on the dot unit)
        + w N bk Q' G + (N - A) + bk (5 + lat)       the bk plane passes
        + [soft] N (1 + 2Q) + 9Q + 29                the soft-score unit (soft_score_cycles)
        + R (A + 5) + records                        output: R = ceil(records / k_cap) rounds

    ``Q' = Q`` (one dot unit serves the queries in turn) or 1 with ``s.parallel_queries`` (``Q``
    accumulators on the same plane word: the dot-product cycles divided by ``Q``).  ``w`` is the
    work fraction (planes read / (N bk)): 1 for the soft score, which has no early exit; for
    ``norm`` the profile's ``work_fraction``, ``A = min(N, survivors)`` alive after the last pass
    when ``w < 1`` (else ``A = N``).  ``lat = s.pass_latency``: extra cycles per pass a
    pipelined selector adds (0 for the RTL as built).  The threshold walk of early exit (at
    most ``1 + k_cap`` cycles per pass) is left out."""
    if n <= 0:
        return 0.0
    g, q = d // s.lanes, s.queries_per_head
    qd = 1 if s.parallel_queries else q
    records = n if records is None else min(max(records, 1), n)
    if s.soft or s.work_fraction >= 1:
        w, alive = 1.0, n
    else:
        w, alive = s.work_fraction, min(n, s.survivors)
    passes = w * n * s.bk * qd * g + (n - alive) + s.bk * (5 + s.pass_latency)
    soft = soft_score_cycles(n, q) if s.soft else 0.0
    rounds = math.ceil(records / s.k_cap)
    return 1 + 2 * qd * g + passes + soft + rounds * (alive + 5) + records


def token_period(d: int, lanes: int) -> float:
    """Clustering cycles per token on average, ``max(G, (G + 15) / 2, 9)`` with ``G = d / lanes``
    (``hw/cluster_unit.py`` since the screen's registered outputs, ``docs/cluster.md`` "Fmax,
    tenth round"; ``max(G, (G + 14) / 2, 8)`` after the dot products' and the screen's
    DSP-register stages of the ninth round, ``max(G, (G + 9) / 2, 5)`` before them, before the
    commit stage ``max(G, ceil((G + 8) / 2), 5)``, before that ``max(G, ceil((G + 4) / 2),
    3)``)."""
    g = d // lanes
    return max(2 * g, g + 15, 18) / 2


def token_latency(d: int, lanes: int) -> int:
    """Clustering cycles from a token's acceptance to its result, ``G + 16``
    (``hw/cluster_unit.py`` ``token_latency``; ``tests/test_system.py`` checks they agree)."""
    return d // lanes + 16


def writeback_cycles(d: int, lanes: int, bk: int) -> int:
    """Write-back cycles per updated cluster, ``2 + G + R (bk + 2)`` with ``R = G / 2`` rounds
    when ``G`` is even, else ``G`` (``hw/cluster_writeback.py``; ``bk + 1`` before its sum reads
    were registered)."""
    g = d // lanes
    rounds = g // (2 if g % 2 == 0 else 1)
    return 2 + g + rounds * (bk + 2)


def dre_cluster_cycles(p: int, d: int, s: Setup) -> float:
    """Busy cycles of one frame's clustering in one table: ``token_period (P - 1) +
    token_latency`` to the last token's result, or the write-back of the updated clusters,
    ``writeback_cycles`` each, whichever is longer: since the clustering pipelining the token
    period leaves free cycles on the update engine's port and the write-back overlaps the frame
    (``docs/cluster.md``, "Frame time": 2,787 cycles for 35 updated clusters and 10,147 for 196
    at the default, 8 clustering lanes, measured)."""
    cluster = token_period(d, s.cl_lanes) * (p - 1) + token_latency(d, s.cl_lanes)
    return max(cluster, s.updated_clusters_per_frame * writeback_cycles(d, s.cl_lanes, s.bk))


def value_width(d: int, bq: int, bk: int) -> int:
    """Signed width of the v2 selector's partials and scores, ``bq + bk + bitlen(d) + 2``
    (``hw/select_tokens.py`` ``value_shape``)."""
    return bq + bk + d.bit_length() + 2


#: ROM bits of the soft-score unit: EXP2 256 x 21, LOG2 1024 x 9 (``hw/soft_score.py``)
SOFT_ROM_BITS = 256 * 21 + 1024 * 9


def dre_memory_bits(
    d: int,
    n_max: int,
    grid: int,
    bk: int = 8,
    bq: int = 8,
    count_bits: int = 16,
    bias_bits: int = 24,
    q_max: int = 0,
    mean_value_bits: int = 0,
    soft: bool = False,
) -> dict[str, int]:
    """Bits of every DRE memory; ``state`` memories hold one (layer, head) table, ``scratch``
    ones are per engine.

    ``q_max = 0``: version 1 (``make synth``'s memory table of the v1 dre, ``docs/synth.md``).
    ``q_max >= 1``: version 2: the plane store's count memory instead of its bias memory (the v2
    selector never reads the bias: synthesis removes it, as in the ``token_selector`` figure of
    ``docs/select.md``), partials of ``q_max`` queries side by side, the soft-score unit's ROMs
    (``soft``), and the cluster summaries' mean-value table, ``d x mean_value_bits`` per entry
    (not in the RTL yet)."""
    idx = max(1, (n_max - 1).bit_length())
    k_max = 1 << (bk - 1)
    s_max = ((1 << count_bits) - 1) * k_max
    sum_norm = (d * s_max * s_max).bit_length()
    bits = {
        "owner": grid * (idx + 1),  # state
        "meta": n_max * (count_bits + sum_norm),  # state: count, |S|^2
        "sums": n_max * d * (bk + count_bits),  # state: exact key sums
        "planes": bk * n_max * d,  # state (plane store)
        "queue": (n_max - 1) * idx,  # scratch: write-back queue
        "alive": 2 * n_max * idx,  # scratch: ping-pong alive lists
    }
    if q_max:
        bits["counts"] = n_max * count_bits  # state (plane store, v2)
        bits["means"] = n_max * d * mean_value_bits  # state: summaries' mean values
        bits["partial"] = n_max * q_max * value_width(d, bq, bk)  # scratch
        bits["soft_rom"] = SOFT_ROM_BITS if soft else 0  # scratch
    else:
        bits["bias"] = n_max * bias_bits  # state (plane store, v1)
        bits["partial"] = n_max * (max(bias_bits, bq + bk + d.bit_length()) + 2)  # scratch
    return bits


STATE_MEMORIES = ("owner", "meta", "sums", "bias", "planes", "counts", "means")


def _setup_bits(d: int, s: Setup, grid: int) -> dict[str, int]:
    mv = s.mean_value_bits if s.summaries else 0
    return dre_memory_bits(d, s.table_size, grid, s.bk, s.bq, s.count_bits, s.bias_bits,
                           s.queries_per_head, mv, s.soft)  # fmt: skip


def dre_state_bits(d: int, s: Setup, grid: int) -> int:
    """Bits of one (layer, KV head) table: what must be on chip or swapped."""
    return sum(v for k, v in _setup_bits(d, s, grid).items() if k in STATE_MEMORIES)


def dre_scratch_bits(d: int, s: Setup, grid: int) -> int:
    return sum(v for k, v in _setup_bits(d, s, grid).items() if k not in STATE_MEMORIES)


def dre_frame_sram_bits(n: float, p: int, d: int, s: Setup, records: float | None = None) -> float:
    """SRAM bits read and written by one DRE table per frame (version 2).

    Retrieval: per plane word read (``w N bk``; held while the queries take turns) its ``d``
    bits, the entry's ``Q`` partials read and written, an alive-list entry read and written;
    the soft score's three sweeps read the partials (and the counts once) and write the score
    back; each output round reads the survivors' scores; with summaries every unselected
    cluster's mean value is read.  Clustering: per token 5 sum reads and one sum write of ``d``
    elements, 3 meta reads, and (summaries) the joined cluster's mean value read and written.
    Write-back: per updated cluster a sum read and a plane-store and count write."""
    q = s.queries_per_head
    records = n if records is None else min(records, n)
    idx = max(1, (s.table_size - 1).bit_length())
    sb = s.bk + s.count_bits
    width = value_width(d, s.bq, s.bk)
    meta = s.count_bits + (d * ((1 << s.count_bits) - 1) ** 2 * (1 << (s.bk - 1)) ** 2).bit_length()
    w = 1.0 if s.soft else s.work_fraction
    retrieval = w * n * s.bk * (d + 2 * q * width + 2 * idx)
    if s.soft:
        retrieval += n * (3 * q * width + s.count_bits + width)
    retrieval += math.ceil(max(records, 1) / s.k_cap) * n * width if n > 0 else 0.0
    mv = s.mean_value_bits * d if s.summaries else 0
    retrieval += (n - records) * mv
    cluster = p * (6 * d * sb + 3 * meta + 2 * mv)
    writeback = s.updated_clusters_per_frame * (d * sb + d * s.bk + s.count_bits)
    return retrieval + cluster + writeback


# ---- per-frame cost ---------------------------------------------------------------------------
@dataclass
class Phase:
    """One phase of a frame: DRAM bytes, INT8 ops, FP16 FLOPs, fixed seconds, and its time."""

    dram: float = 0.0
    int8: float = 0.0
    fp16: float = 0.0
    fixed: float = 0.0
    seconds: float = 0.0


@dataclass
class FrameCost:
    phases: dict[str, Phase]
    seconds: float  # frame time (serial phases, or the DRE's busy time if longer)
    energy: float  # joules
    dre_seconds: float = 0.0  # DRE busy time per frame (per instance, the busiest)
    dre_energy: float = 0.0  # joules, dynamic + leakage
    dre_leakage: float = 0.0  # joules, the leakage part
    attended: int = 0  # past tokens per KV head and layer
    index_bytes: float = 0.0  # the policy's index (all layers and heads)
    index_onchip: bool = False  # held on chip (else in DRAM, read as the select phase says)
    summaries: float = 0.0  # ReSV's merged tokens per KV head and layer (unselected clusters)

    @property
    def dram(self) -> float:
        return sum(p.dram for p in self.phases.values())


def roofline(ph: Phase, dev: Device) -> float:
    compute = ph.int8 / (dev.peak_int8 * dev.compute_util) + ph.fp16 / (
        dev.peak_fp16 * dev.compute_util
    )
    memory = ph.dram / (dev.dram_bw * dev.bw_util)
    return max(compute, memory) + ph.fixed


def resv_clusters(t: int, s: Setup) -> float:
    """Clusters per table after ``t`` frames: ``min(table, new_per_frame * t)``."""
    return min(float(s.table_size), s.new_clusters_per_frame * t)


def resv_records(t: int, s: Setup) -> float:
    """Clusters the budget reaches at frame ``t``: all ``C`` while the past fits the budget,
    else ``ceil(B C / past)`` (clusters of the mean size, ``past / C`` tokens)."""
    n, past = resv_clusters(t, s), t * s.tokens_per_frame
    if n <= 0 or past <= s.budget_resv:
        return n
    return min(n, float(math.ceil(s.budget_resv * n / past)))


def resv_summaries(t: int, s: Setup) -> float:
    """Summary tokens per head at frame ``t``: one per unselected cluster (0 without
    ``summaries``)."""
    return resv_clusters(t, s) - resv_records(t, s) if s.summaries else 0.0


def frame_cost(
    m: LLM, dev: Device, s: Setup, policy: str, t: int, vision: bool = False
) -> FrameCost:
    """Cost of prefilling frame ``t`` (0-based; ``t * P`` past tokens) with ``policy``;
    ``vision`` adds the vision encoder's phase (``P * vision_merge`` patches)."""
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r}; choose from {', '.join(POLICIES)}")
    p, L, H, d = s.tokens_per_frame, m.layers, m.kv_heads, m.head_dim
    past = t * p
    heads = L * H  # (layer, KV head) pairs
    kv_tok = 2 * d * s.kv_bytes  # one token's K and V in one head
    entry = d * s.index_bytes + s.count_bytes
    spill = dev.activation_spill
    ph = {name: Phase() for name in PHASES}
    fp16_weights = s.weight_bytes >= 2  # linear layers then run on the FP16 peak

    if vision:
        vis, vh, patches = ph["vision"], m.vision_hidden, p * m.vision_merge
        vis.dram = m.vision_params * s.weight_bytes
        vis.dram += spill * patches * m.vision_layers * (9 * vh + 4 * m.vision_mlp) * s.act_bytes
        ops = 2 * m.vision_params * patches  # the merger runs on P tokens: counted as patches
        setattr(vis, "fp16" if fp16_weights else "int8", ops)
        vis.fp16 += 4 * vh * patches * patches * m.vision_layers  # full attention in the frame
        vis.fixed = (KERNELS["linear"] + 1) * m.vision_layers * dev.kernel_overhead

    lin = ph["linear"]
    lin.dram = L * m.linear_params_per_layer * s.weight_bytes
    lin.dram += spill * p * L * (13 * m.hidden + 2 * m.kv_dim + 6 * m.mlp) * s.act_bytes
    setattr(lin, "fp16" if fp16_weights else "int8", 2 * L * m.linear_params_per_layer * p)
    lin.fixed = KERNELS["linear"] * L * dev.kernel_overhead

    budget = s.budget(policy)
    attended = past if budget is None else min(budget, past)
    summary = resv_summaries(t, s) if policy == "resv" else 0.0  # merged tokens per head
    att = ph["attention"]
    att.dram = heads * (attended + p) * kv_tok  # fetch the attended past, write the new frame
    if not dev.has_dre:  # summaries: centroid key (FP16) + mean value (FP16) from DRAM
        att.dram += heads * summary * d * (s.index_bytes + s.mean_value_bits / 8)
    att.fp16 = 4 * m.q_heads * d * p * (attended + summary + (p + 1) / 2) * L
    att.fixed = KERNELS["attention"] * L * dev.kernel_overhead

    sel = ph["select"]
    q = s.queries_per_head
    dre_busy = dre_energy = index = 0.0
    onchip = False
    if policy == "rekv":
        index = heads * (t + 1) * entry  # grows with the stream: kept in DRAM
        sel.dram = heads * (t + 1) * entry  # read t frame means, write the new one
        sel.fp16 = heads * REKV_QUERIES * 2 * d * t
        sel.fixed = KERNELS["rekv"] * L * dev.kernel_overhead
    elif policy == "resv":
        n, records = resv_clusters(t, s), resv_records(t, s)
        mv = s.mean_value_bits / 8 * d if s.summaries else 0.0  # bytes of one mean value
        sel.dram = heads * attended * s.addr_bytes  # member lists of the selected clusters
        if dev.has_dre:
            onchip = bool(dev.dre_table_state)
            index = heads * dre_state_bits(d, s, p) / 8
            per_dre = math.ceil(H / dev.dre_instances)  # heads of one layer on one DRE
            ret = dre_v2_retrieval_cycles(n, d, s, records)  # all Q queries
            sel.fixed = L * per_dre * ret / dev.dre_clock
            tables = math.ceil(heads / dev.dre_instances)
            busy = tables * (ret + dre_cluster_cycles(p, d, s))
            dre_busy = busy / dev.dre_clock
            if not dev.dre_table_state:  # swap each table in and out once per frame
                sel.dram += heads * 2 * dre_state_bits(d, s, p) / 8
            logic = s.logic_ge * s.logic_ge_growth
            cycles_all = heads * (ret + dre_cluster_cycles(p, d, s))  # summed over the DREs
            bits_all = heads * dre_frame_sram_bits(n, p, d, s, records)
            dre_energy = (
                cycles_all * logic * s.activity * s.fj_per_ge_toggle * 1e-15
                + bits_all * s.pj_per_sram_bit * 1e-12
            )
        else:
            # centroids and exact FP32 sums (+ FP16 mean values), in DRAM
            index = heads * n * (entry + 4 * d + mv)
            sel.dram += heads * (n * entry)  # read the centroid table to score it
            sel.dram += heads * p * (3 + 1) * (d * 4 + s.count_bytes)  # 3 candidates read, 1 write
            sel.dram += heads * p * 2 * mv  # the joined cluster's mean value read and written
            sel.dram += heads * s.updated_clusters_per_frame * entry  # re-quantised centroids
            soft = SOFT_FLOPS * q * n if s.soft else 0.0
            sel.fp16 = heads * (q * 2 * d * n + soft + p * 8 * d)
            sel.fixed = L * p * dev.serial_step + KERNELS["resv"] * L * dev.kernel_overhead
    for phase in ph.values():
        phase.seconds = roofline(phase, dev)
    serial = sum(phase.seconds for phase in ph.values())
    seconds = max(serial, dre_busy)
    dre_leak = 0.0
    if dev.has_dre and policy == "resv":
        area = dre_area_ge(m, dev, s)
        sram_bits = (area["scratch"] + area["tables"]) / s.sram_ge_per_bit
        leak_w = (area["logic"] * s.leak_nw_per_ge + sram_bits * s.leak_nw_per_sram_bit) * 1e-9
        dre_leak = leak_w * seconds
        dre_energy += dre_leak
    dram = sum(phase.dram for phase in ph.values())
    int8 = sum(phase.int8 for phase in ph.values())
    fp16 = sum(phase.fp16 for phase in ph.values())
    energy = (
        dram * dev.dram_pj_per_byte * 1e-12
        + int8 * dev.pj_per_op_int8 * 1e-12
        + fp16 * dev.pj_per_flop_fp16 * 1e-12
        + dev.static_power * seconds
        + dre_energy
    )
    return FrameCost(
        ph, seconds, energy, dre_busy, dre_energy, dre_leak, attended, index, onchip, summary
    )


def frame_at(minutes: float, s: Setup) -> int:
    """Index of the frame that arrives at the end of a stream of ``minutes``."""
    return round(minutes * 60 * s.fps)


def kv_store_bytes(m: LLM, s: Setup, t: int) -> float:
    return t * s.tokens_per_frame * m.layers * m.kv_heads * 2 * m.head_dim * s.kv_bytes


# ---- area and power share ---------------------------------------------------------------------
def dre_area_ge(m: LLM, dev: Device, s: Setup) -> dict[str, float]:
    """GE of all DRE instances: logic, per-engine scratch memories, and the tables they hold on
    chip (all of their (layer, head) tables when ``dre_table_state`` is 1, one otherwise)."""
    n = dev.dre_instances
    p = s.tokens_per_frame
    tables = math.ceil(m.layers * m.kv_heads / n) if dev.dre_table_state else 1
    logic = n * s.logic_ge * s.logic_ge_growth
    scratch = n * dre_scratch_bits(m.head_dim, s, p) * s.sram_ge_per_bit
    state = n * tables * dre_state_bits(m.head_dim, s, p) * s.sram_ge_per_bit
    return {"logic": logic, "scratch": scratch, "tables": state, "total": logic + scratch + state}


def npu_area_ge(dev: Device, s: Setup) -> float:
    return dev.npu_mac_units * dev.npu_ge_per_mac + dev.npu_sram_bytes * 8 * s.sram_ge_per_bit


# ---- report -----------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    device: str
    policy: str
    minutes: float
    frame: int
    cost: FrameCost
    mean_fps: float
    kv_gb: float
    fits: bool
    speedup: float = float("nan")
    efficiency: float = float("nan")


def evaluate(
    prof: Profiles, models, devices, minutes=MINUTES, baseline="orin", vision=False
) -> list[Row]:
    s = prof.setup
    rows = []
    last = frame_at(max(minutes), s)
    for mk in models:
        m = prof.models[mk]
        for dk in devices:
            dev = prof.devices[dk]
            for pol in POLICIES:
                # mean FPS over the stream: frames / total time, summed frame by frame
                elapsed, cum = 0.0, {}
                for t in range(last + 1):
                    elapsed += frame_cost(m, dev, s, pol, t, vision).seconds
                    cum[t] = elapsed
                for mins in minutes:
                    t = frame_at(mins, s)
                    kv = kv_store_bytes(m, s, t)
                    fits = kv + m.params * s.weight_bytes <= dev.dram_capacity
                    cost = frame_cost(m, dev, s, pol, t, vision)
                    rows.append(Row(mk, dk, pol, mins, t, cost, (t + 1) / cum[t], kv / 1e9, fits))
    base = {(r.model, r.minutes): r for r in rows if r.device == baseline and r.policy == "full"}
    for r in rows:
        b = base.get((r.model, r.minutes))
        if b is not None:
            r.speedup = b.cost.seconds / r.cost.seconds
            r.efficiency = b.cost.energy / r.cost.energy
    return rows


def format_table(rows: list[Row], s: Setup) -> str:
    vision = any(r.cost.phases["vision"].seconds for r in rows)
    head = (
        f"{'model':<11} {'device':<6} {'policy':<6} {'min':>3} {'past tok':>9} {'att tok':>7} "
        f"{'FPS':>6} "
        + (f"{'vis ms':>7} " if vision else "")
        + f"{'lin ms':>7} {'attn ms':>8} {'sel ms':>7} {'ms/fr':>8} {'GB/fr':>7} {'mJ/fr':>8} "
        f"{'speedup':>8} {'energy x':>8} {'RT':>3} {'KV GB':>6} {'idx MB':>7}"
    )
    lines = [head, "-" * len(head)]
    prev = None
    for r in rows:
        key = (r.model, r.device)
        if prev is not None and key != prev:
            lines.append("")
        prev = key
        c = r.cost
        rt = "yes" if 1 / c.seconds >= s.fps else "no"
        lines.append(
            f"{r.model:<11} {r.device:<6} {r.policy:<6} {r.minutes:>3g} "
            f"{r.frame * s.tokens_per_frame:>9,} {round(c.attended + c.summaries):>7,} "
            f"{1 / c.seconds:>6.2f} "
            + (f"{1e3 * c.phases['vision'].seconds:>7.1f} " if vision else "")
            + f"{1e3 * c.phases['linear'].seconds:>7.1f} "
            f"{1e3 * c.phases['attention'].seconds:>8.1f} "
            f"{1e3 * c.phases['select'].seconds:>7.2f} {1e3 * c.seconds:>8.1f} "
            f"{c.dram / 1e9:>7.2f} {1e3 * c.energy:>8.0f} {r.speedup:>7.2f}x "
            f"{r.efficiency:>7.2f}x {rt:>3} {r.kv_gb:>5.1f}{'' if r.fits else '!'} "
            f"{c.index_bytes / 1e6:>6.1f}{'*' if c.index_onchip else ''}".rstrip()
        )
    return "\n".join(lines)


CSV_FIELDS = [
    *("model", "device", "policy", "minutes", "frame", "past_tokens", "attended"),
    *("summary_tokens", "fps"),
    *("mean_fps", "ms_vision", "ms_linear", "ms_attention", "ms_select", "ms_frame"),
    *("dre_busy_ms", "gb_frame", "gb_vision", "gb_linear", "gb_attention", "gb_select"),
    *("mj_frame", "dre_mj", "speedup_vs_orin_full", "energy_eff_vs_orin_full", "kv_store_gb"),
    *("fits_dram", "index_mb", "index_onchip"),
]


def write_csv(rows: list[Row], s: Setup, path: Path):
    with path.open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(CSV_FIELDS)
        for r in rows:
            c, ph = r.cost, r.cost.phases
            vals = [
                r.model,
                r.device,
                r.policy,
                r.minutes,
                r.frame,
                r.frame * s.tokens_per_frame,
                c.attended,
                f"{c.summaries:.4g}",
                f"{1 / c.seconds:.4g}",
                f"{r.mean_fps:.4g}",
                *(f"{1e3 * ph[k].seconds:.4g}" for k in PHASES),
                f"{1e3 * c.seconds:.4g}",
                f"{1e3 * c.dre_seconds:.4g}",
                f"{c.dram / 1e9:.4g}",
                *(f"{ph[k].dram / 1e9:.4g}" for k in PHASES),
                f"{1e3 * c.energy:.4g}",
                f"{1e3 * c.dre_energy:.4g}",
                f"{r.speedup:.4g}",
                f"{r.efficiency:.4g}",
                f"{r.kv_gb:.4g}",
                int(r.fits),
                f"{c.index_bytes / 1e6:.4g}",
                int(c.index_onchip),
            ]
            wr.writerow(vals)


def plot(rows: list[Row], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    styles = {"full": "o-", "rekv": "s--", "resv": "^-."}  # policy: marker and line style
    devices = list(dict.fromkeys(r.device for r in rows))
    colors = {dk: f"C{i}" for i, dk in enumerate(devices)}  # device: colour
    for i, mk in enumerate(models):
        mine = [r for r in rows if r.model == mk]
        for dk in dict.fromkeys(r.device for r in mine):
            for pol in POLICIES:
                pts = [r for r in mine if r.device == dk and r.policy == pol]
                xs = [r.minutes for r in pts]
                label = f"{dk} {pol}"
                kw = dict(color=colors[dk], label=label)
                axes[i][0].plot(xs, [1 / r.cost.seconds for r in pts], styles[pol], **kw)
                axes[i][1].plot(xs, [1e3 * r.cost.energy for r in pts], styles[pol], **kw)
        for ax, ylab in zip(axes[i], ("frames per second", "mJ per frame"), strict=True):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(MINUTES, [str(x) for x in MINUTES])
            ax.set_xlabel("stream length (minutes)")
            ax.set_ylabel(ylab)
            ax.set_title(mk)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Iterative prefill, frame at the end of the stream (python -m model.system)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def share_report(prof: Profiles, model: str, device: str, minutes: float) -> str:
    """DRE area and power share against the NPU, and the table-state figures."""
    s, m, dev = prof.setup, prof.models[model], prof.devices[device]
    if not dev.has_dre:
        return f"# {device} has no DRE"
    um2 = s.nand2_um2 * 1e-6  # mm^2 per GE
    npu = npu_area_ge(dev, s)
    lines = [f"# DRE area and power share ({m.name}, {dev.dre_instances} DREs, 45 nm GE basis)"]
    area_on = dre_area_ge(m, dev, s)
    area_swap = dre_area_ge(m, replace(dev, dre_table_state=0), s)
    lines.append(f"NPU: {npu / 1e6:.1f} M GE = {npu * um2:.1f} mm^2 (MACs + SRAM buffers)")
    for label, ge in (
        ("DRE logic only", area_on["logic"]),
        ("DRE logic + scratch + one table each (swap)", area_swap["total"]),
        ("DRE logic + scratch + every table on chip", area_on["total"]),
    ):
        lines.append(
            f"{label:<46} {ge / 1e6:>7.2f} M GE = {ge * um2:>7.2f} mm^2, "
            f"{100 * ge / (ge + npu):5.1f} % of NPU + DRE   (paper: 2.0 %)"
        )
    t = frame_at(minutes, s)
    cost = frame_cost(m, dev, s, "resv", t)
    p_dre = cost.dre_energy / cost.seconds
    npu_energy = (
        cost.energy
        - cost.dram * dev.dram_pj_per_byte * 1e-12
        - cost.dre_energy
        - dev.static_power * cost.seconds
    )
    p_npu = npu_energy / cost.seconds + dev.static_power
    p_leak = cost.dre_leakage / cost.seconds
    lines.append(
        f"power at {minutes:g} min, ReSV: DRE {1e3 * p_dre:.0f} mW = {1e3 * (p_dre - p_leak):.0f} "
        f"dynamic + {1e3 * p_leak:.0f} leakage (activity {s.activity}, busy "
        f"{1e3 * cost.dre_seconds:.2f} of {1e3 * cost.seconds:.1f} ms), NPU {p_npu:.1f} W "
        f"(ops + static, DRAM excluded): {100 * p_dre / (p_dre + p_npu):.1f} % (paper: 2.2 %)"
    )
    state = dre_state_bits(m.head_dim, s, s.tokens_per_frame) / 8
    heads = m.layers * m.kv_heads
    mem = _setup_bits(m.head_dim, s, s.tokens_per_frame)
    lines.append(
        f"# table state: one (layer, KV head) table of {s.table_size} entries, d {m.head_dim}: "
        f"{state / 1024:.0f} KiB on chip (sums {mem['sums'] / 8192:.0f} KiB, mean values "
        f"{mem['means'] / 8192:.0f} KiB, plane store + counts "
        f"{(mem['planes'] + mem['counts']) / 8192:.0f} KiB, counts and |S|^2 "
        f"{mem['meta'] / 8192:.0f} KiB, owner map {mem['owner'] / 8192:.1f} KiB); scratch per "
        f"DRE {dre_scratch_bits(m.head_dim, s, s.tokens_per_frame) / 8192:.0f} KiB"
    )
    swap = replace(dev, dre_table_state=0)
    sw = frame_cost(m, swap, s, "resv", t)
    lines.append(
        f"profile assumes {'every table on chip' if dev.dre_table_state else 'swapping'}: "
        f"{heads} tables = {heads * state / 2**20:.1f} MiB on chip; swapping them in and out "
        f"each frame instead costs {heads * 2 * state / 1e9:.3f} GB/frame of DRAM "
        f"(ReSV frame at {minutes:g} min: {1e3 * cost.seconds:.1f} -> {1e3 * sw.seconds:.1f} ms, "
        f"{1e3 * cost.energy:.0f} -> {1e3 * sw.energy:.0f} mJ)"
    )
    return "\n".join(lines)


# ---- calibration ------------------------------------------------------------------------------
def calibrate(prof: Profiles, model: str, minutes, device_profile: str | None, reps: int) -> str:
    """Time one layer's attention (full and gathered budget) with torch; compare to the model."""
    import torch

    s, m = prof.setup, prof.models[model]
    dev_name = "cuda" if torch.cuda.is_available() else "cpu"
    tdev = torch.device(dev_name)
    dtype = torch.float16 if dev_name == "cuda" else torch.float32
    if device_profile is None and dev_name == "cuda":
        device_profile = "h100"
    prof_dev = prof.devices.get(device_profile) if device_profile else None
    p, h, g, d = s.tokens_per_frame, m.kv_heads, m.q_heads // m.kv_heads, m.head_dim
    gen = torch.Generator(device="cpu").manual_seed(0)
    where = torch.cuda.get_device_name() if dev_name == "cuda" else "host CPU"
    lines = [
        f"# calibration on {dev_name} ({where}), {dtype}, one layer of {m.name}: {p} new tokens, "
        f"{m.q_heads} q / {h} KV heads, times x {m.layers} layers; "
        f"prediction for profile {device_profile or '(none)'}",
        f"{'min':>4} {'past tok':>9} {'policy':<6} {'measured ms':>12} {'model ms':>9} "
        f"{'error':>7}",
    ]

    def sync():
        if dev_name == "cuda":
            torch.cuda.synchronize()

    if dev_name == "cpu" and prof_dev is not None:
        lines.insert(
            1, "# (the host CPU is not the profiled device: the error column only shows it runs)"
        )
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def gathered(qq, k, v, sel):
        idx = sel.unsqueeze(-1).expand(-1, -1, d)
        return sdpa(qq, torch.gather(k, 1, idx), torch.gather(v, 1, idx))

    for mins in minutes:
        t = frame_at(mins, s)
        n = t * p
        k = torch.randn(h, n + p, d, generator=gen).to(tdev, dtype)
        v = torch.randn(h, n + p, d, generator=gen).to(tdev, dtype)
        qq = torch.randn(h, g * p, d, generator=gen).to(tdev, dtype)
        budget = min(n, min(s.budget_resv, n) + round(resv_summaries(t, s)))  # + merged tokens
        ids = torch.stack([torch.randperm(n, generator=gen)[:budget] for _ in range(h)])
        own = torch.arange(n, n + p).expand(h, p)
        sel = torch.cat([ids, own], dim=1).to(tdev)
        cases = (("full", sdpa, (qq, k, v)), ("resv", gathered, (qq, k, v, sel)))
        for pol, fn, fargs in cases:
            fn(*fargs)
            sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn(*fargs)
            sync()
            meas = (time.perf_counter() - t0) / reps * m.layers
            if prof_dev is not None:
                pred = frame_cost(m, prof_dev, s, pol, t).phases["attention"].seconds
                err = f"{100 * (meas - pred) / pred:+6.0f}%"
                pred_s = f"{1e3 * pred:9.2f}"
            else:
                pred_s, err = f"{'-':>9}", f"{'-':>7}"
            lines.append(f"{mins:>4g} {n:>9,} {pol:<6} {1e3 * meas:>12.2f} {pred_s} {err}")
    return "\n".join(lines)


# ---- command line -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m model.system", description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["qwen2vl-7b", "qwen2vl-2b"])
    ap.add_argument("--devices", nargs="+", default=["orin", "vrex"])
    ap.add_argument("--minutes", nargs="+", type=float, default=list(MINUTES))
    ap.add_argument("--budget", type=int, help="matched budget for ReKV and ReSV (tokens/head)")
    ap.add_argument("--budget-rekv", type=int, help="ReKV budget, tokens per head and frame")
    ap.add_argument("--budget-resv", type=int, help="ReSV budget, tokens per head and frame")
    ap.add_argument("--tokens-per-frame", type=int, help="stream: visual tokens per frame")
    ap.add_argument("--fps", type=float, help="stream: frames per second sampled")
    ap.add_argument("--table-size", type=int, help="ReSV centroid-table entries")
    ap.add_argument("--queries", type=int, help="ReSV query vectors Q per KV head and frame")
    ap.add_argument("--score", choices=SCORES, help="ReSV cluster score (soft: no early exit)")
    ap.add_argument(
        "--parallel-queries",
        choices=("on", "off"),
        help="DRE: Q dot-product accumulators in parallel (on) or the queries in turn (off)",
    )
    ap.add_argument("--pass-latency", type=int, help="DRE selector: extra cycles per plane pass")
    ap.add_argument("--summaries", choices=("on", "off"), help="ReSV cluster summaries")
    ap.add_argument("--weight-bytes", type=float, help="bytes per weight (1 INT8, 2 FP16)")
    ap.add_argument("--dre-instances", type=int, help="DREs on the accelerator")
    ap.add_argument("--dre-clock", type=float, help="DRE clock, Hz")
    ap.add_argument("--table-state", choices=("onchip", "swap"), help="where the tables live")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="WHERE.FIELD=VALUE",
        help="override one profile number: WHERE is a device key (orin, vrex, h100), a model key "
        "or 'setup' (stream, precision, policy, dre); e.g. --set vrex.peak_int8=20e12",
    )
    ap.add_argument("--vision", action="store_true", help="add the vision encoder's phase")
    ap.add_argument("--profiles", type=Path, default=PROFILES, help="folder of the .toml files")
    ap.add_argument("--out", type=Path, default=ROOT / "build", help="CSV/PNG folder (build/)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    ap.add_argument("--sources", action="store_true", help="print every number's source")
    ap.add_argument("--calibrate", action="store_true", help="time attention with torch")
    ap.add_argument("--calib-minutes", nargs="+", type=float, default=[1, 5, 10])
    ap.add_argument("--calib-profile", help="device profile to compare with (h100 on CUDA)")
    ap.add_argument("--calib-reps", type=int, default=5)
    return ap


def apply_overrides(prof: Profiles, args) -> Profiles:
    s = prof.setup
    ch = {}
    if args.budget is not None:
        ch["budget_rekv"] = ch["budget_resv"] = args.budget
    names = ("budget_rekv", "budget_resv", "tokens_per_frame", "fps", "table_size", "weight_bytes")
    for name in names:
        v = getattr(args, name)
        if v is not None:
            ch[name] = v
    if args.queries is not None:
        ch["queries_per_head"] = args.queries
    for name, v in ch.items():
        if v <= 0:
            opt = "queries" if name == "queries_per_head" else name.replace("_", "-")
            raise ProfileError(f"--{opt}={v} must be > 0")
    if args.pass_latency is not None:
        if args.pass_latency < 0:
            raise ProfileError(f"--pass-latency={args.pass_latency} must be >= 0")
        ch["pass_latency"] = args.pass_latency
    if args.score is not None:
        ch["score"] = args.score
    if args.parallel_queries is not None:
        ch["parallel_queries"] = int(args.parallel_queries == "on")
    if args.summaries is not None:
        ch["summaries"] = int(args.summaries == "on")
    prof.setup = replace(s, **ch)
    dch = {}
    if args.dre_instances is not None:
        if args.dre_instances < 1:
            raise ProfileError(f"--dre-instances={args.dre_instances} must be >= 1")
        dch["dre_instances"] = args.dre_instances
    if args.dre_clock is not None:
        if args.dre_clock <= 0:
            raise ProfileError(f"--dre-clock={args.dre_clock} must be > 0")
        dch["dre_clock"] = args.dre_clock
    if args.table_state is not None:
        dch["dre_table_state"] = int(args.table_state == "onchip")
    if dch:
        prof.devices = {k: replace(d, **dch) if d.has_dre else d for k, d in prof.devices.items()}
    for item in args.set:
        where, sep, value = item.partition("=")
        sec, dot, name = where.strip().partition(".")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not dot or number is None or not math.isfinite(number) or number < 0:
            raise ProfileError(f"--set expects WHERE.FIELD=<number >= 0>, got {item!r}")
        if sec == "setup":
            table, obj = None, prof.setup
        elif sec in prof.devices:
            table, obj = prof.devices, prof.devices[sec]
        elif sec in prof.models:
            table, obj = prof.models, prof.models[sec]
        else:
            known = ", ".join(["setup", *prof.devices, *prof.models])
            raise ProfileError(f"--set {item}: unknown {sec!r}; choose from {known}")
        types_ = {f.name: f.type for f in fields(obj)}
        if name not in types_ or name in ("key", "name", "kind"):
            raise ProfileError(f"--set {item}: {sec} has no number {name!r}")
        number = int(number) if types_[name] == "int" else number
        if types_[name] == "str":
            raise ProfileError(f"--set {item}: {name} is a word; use its own option (--{name})")
        if table is None:
            prof.setup = replace(obj, **{name: number})
        else:
            table[sec] = replace(obj, **{name: number})
    check_setup(prof.setup, "command line")
    return prof


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prof = apply_overrides(load_all(args.profiles), args)
        for mk in args.models:
            if mk not in prof.models:
                raise ProfileError(f"unknown model {mk!r}; profiles: {', '.join(prof.models)}")
        for dk in args.devices + ([args.calib_profile] if args.calib_profile else []):
            if dk not in prof.devices:
                raise ProfileError(f"unknown device {dk!r}; profiles: {', '.join(prof.devices)}")
        if any(x <= 0 for x in args.minutes + args.calib_minutes):
            raise ProfileError("stream lengths (--minutes, --calib-minutes) must be > 0")
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = prof.setup
    if args.sources:
        for sec, items in prof.sources.items():
            for k, src in items.items():
                print(f"[{sec}] {k}: {src}")
        return 0
    if args.calibrate:
        print(
            calibrate(prof, args.models[0], args.calib_minutes, args.calib_profile, args.calib_reps)
        )
        return 0
    t0 = time.perf_counter()
    rows = evaluate(prof, args.models, args.devices, tuple(args.minutes), vision=args.vision)
    print(
        f"# python -m model.system: {s.tokens_per_frame} tokens/frame at {s.fps:g} fps; budgets "
        f"ReKV {s.budget_rekv}, ReSV {s.budget_resv} tokens/head/frame; ReSV v2: table "
        f"{s.table_size}, Q {s.queries_per_head}, score {s.score}, summaries "
        f"{'on' if s.summaries else 'off'}; "
        f"weights {s.weight_bytes:g} B, KV {s.kv_bytes:g} B; frame at the end of each stream; "
        f"ratios vs orin full attention"
    )
    print(format_table(rows, s))
    if "vrex" in prof.devices:
        dev = prof.devices["vrex"]
        print(
            f"# vrex: {dev.dre_instances} DREs at {dev.dre_clock / 1e6:g} MHz, lanes {s.lanes}, "
            f"bk {s.bk}, k_cap {s.k_cap}, queries "
            f"{'in parallel' if s.parallel_queries else 'in turn'}, +{s.pass_latency} cycles/pass, "
            f"work fraction {1.0 if s.soft else s.work_fraction}; RT = FPS >= {s.fps:g}; "
            f"KV GB with '!' = KV store + weights exceed DRAM; idx MB = the policy's index "
            f"(ReKV frame means, ReSV centroid tables), '*' = on chip"
        )
        for mk in args.models:
            print(share_report(prof, mk, "vrex", 10 if 10 in args.minutes else args.minutes[0]))
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, s, args.out / "system.csv")
    wrote = [str(args.out / "system.csv")]
    if not args.no_plot:
        plot(rows, args.out / "system.png")
        wrote.append(str(args.out / "system.png"))
    print(f"# wrote {' and '.join(wrote)} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
