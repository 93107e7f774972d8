"""cocotb testbench of hw.cluster_unit.ClusterUnit, scored token by token against ClusterRef.

Configuration arrives in the environment variable ``VREX_CLUSTER`` (JSON)::

    {"cfg": {...DREConfig fields...}, "seed": 1, "scenarios": ["random", "video", ...],
     "frames": 6, "grid": [4, 4], "video_frames": 64, "video_grid": [14, 14],
     "bench": false, "out": "path/to/summary.json" | null}

``bench``: no input gaps and no backpressure (the benchmark's cycle counts); a new grid is set
three cycles ahead of its frame.

Scenarios (each block of frames starts with a ``clear`` or, half of the time outside ``bench``,
a synchronous reset of the idle unit, drawn from a stream of its own, so that registers without
reset start from the previous block's values; every one runs with random input gaps and random
``ready`` on the result stream):

``random``      random keys, random grid, random taus and table size
``video``       keys of layer 0, head 0 of model.llm.TinyLLM on model.video.SyntheticVideo,
                quantised with model.dre.quant (``video_frames`` frames of ``video_grid``)
``identical``   one random frame repeated (everything joins temporally at tau 1)
``equal``       every key equal (one cluster)
``opposite``    alternating opposite keys, in space and in time (sums cancel to zero)
``full``        a small table that fills up: forced merges, and saturated counts (drops)
``extreme``     the most negative code, zero keys and tau 0 / 1
``errors``      each runtime error (grid above grid_max, table size 0 or > n_max, tau > 1):
                every token dropped, ``error`` set until ``clear``
``grid``        the grid changes between frames (no temporal candidate after a change)
``narrow``      grids 1x1, Nx1, 1xN, 2xN, Nx2 (the temporal, left or up candidate is the token
                just before or two before: the pipeline's read-after-write cases), near-equal
                keys (consecutive tokens join the same cluster), also with a full table
``throughput``  random near-equal frames without input gaps or backpressure (whatever the
                spec says), a new grid set three cycles ahead of the frame; its cycles per
                frame are what the tests pin
``taus``        near-equal frames whose thresholds (and table size) change from frame to frame
                without a clear: sent frame by frame, then back to back (the registers change
                as a frame's first key is offered, while the previous frame's last tokens are
                still in the pipeline): each token must use its own frame's values

Checked: every result (id, status, ``last``) against the reference as it arrives; after each
scenario (once ``idle``) the last write-back of every cluster (quantised centroid and bias)
against ``ClusterRef.writebacks()``, that no write-back names an unallocated entry, and
``n_clusters``.  The summary JSON has per scenario the tokens, frames, cycles per frame and
the reference's clusters, forced merges and drops (the benchmark reads it).

Structure (in the style of cocotbext-axi): a ``TB`` owns the clock, the reset, a source on
``keys`` (random idle gaps), a sink on ``result`` (random ``ready``), a monitor on ``writeback``
and the scoreboard.  The three are advanced by one clocked loop (one pair of edge waits per
cycle instead of one per coroutine: several times faster under Verilator).  Handshakes are
sampled at the falling edge, where every signal is settled, and inputs change after the rising
edge.
"""

from __future__ import annotations

import json
import random
from collections import deque
from pathlib import Path

import cocotb
import torch
from amaranth.hdl import Shape
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

from model.dre.cluster import STATUS_NAMES, ClusterRef, ClusterWidths
from model.dre.config import DREConfig
from verif.streams import pack_signed, spec_from_env, unpack_signed

PERIOD_NS = 10
ROOT = Path(__file__).resolve().parent.parent


# ---- stimulus ----------------------------------------------------------------------------------
def video_keys(frames: int, grid: tuple[int, int], d: int, bk: int, seed: int = 0) -> torch.Tensor:
    """Integer keys ``[frames, h*w, d]`` of a synthetic video stream: layer 0, KV head 0 of
    :class:`model.llm.TinyLLM` (after RoPE), quantised to ``bk`` bits with one symmetric scale
    taken from the first frame (later frames saturate where they exceed it).  Cached in build/."""
    h, w = grid
    cache = ROOT / "build" / "cluster_keys" / f"video-{frames}-{h}x{w}-d{d}-b{bk}-s{seed}.pt"
    if cache.exists():
        return torch.load(cache)
    from model.dre.quant import quantize, symmetric_scale
    from model.llm import KVStore, LLMConfig, TinyLLM
    from model.video import PatchEmbedding, SyntheticVideo

    llm_cfg = LLMConfig(layers=1, kv_heads=1, q_per_kv=1, head_dim=d, d_model=4 * d, seed=seed)
    llm, store = TinyLLM(llm_cfg), KVStore(llm_cfg)
    embed = PatchEmbedding(grid=grid, dim=llm_cfg.d_model, seed=seed)
    keys, scale = [], None
    for frame in SyntheticVideo(frames=frames, seed=seed):
        _, traces = llm.prefill_frame(embed(frame), grid, store)
        k = traces[0].k[0].detach()
        scale = symmetric_scale(k, bk) if scale is None else scale
        keys.append(quantize(k, bk, scale))
    out = torch.stack(keys)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


# ---- bit packing -------------------------------------------------------------------------------
# ---- the testbench -----------------------------------------------------------------------------
class TB:
    def __init__(self, dut, cfg: DREConfig, rng: random.Random):
        self.dut, self.cfg, self.rng = dut, cfg, rng
        self.id_bits = Shape.cast(range(cfg.n_max)).width
        self.gap = 0.0  # probability of an idle cycle on keys before a token
        self.stall = 0.0  # probability of ready low on result
        # Set a frame's registers ahead of its first key: a new grid_w / grid_h is taken only
        # once held for three cycles (TokenFramer), not counted in the frame's cycles then.
        self.settle = False
        self.pending: deque = deque()  # (key, registers to set when it is offered, or None)
        self.expected: deque = deque()  # (id, status, last) per token sent
        self.writebacks: dict[int, tuple[list[int], int]] = {}
        self.mismatches: list[str] = []
        self.results = 0
        self.tally = [0, 0, 0, 0]  # results seen per status code (the RTL's own counts)
        self.cycle = 0
        self.exact_base = 0  # exact recomputes counted before the last restart
        self._valid = False
        dut.keys__valid.value = 0
        dut.result__ready.value = 0
        dut.clear.value = 0
        cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())

    async def reset(self):
        self.dut.rst.value = 1
        for _ in range(3):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    def registers(self, ref: ClusterRef, h: int, w: int):
        d = self.dut
        d.grid_w.value, d.grid_h.value = w, h
        d.tau_t.value, d.tau_s.value = ref.tau_t, ref.tau_s
        d.table_size.value, d.bias_scale.value = ref.table_size, ref.bias_scale

    def frame_registers(self, ref: ClusterRef, h: int, w: int) -> dict:
        """What :meth:`registers` sets, as a dict for :meth:`stream`'s first key of a frame."""
        return dict(grid_w=w, grid_h=h, tau_t=ref.tau_t, tau_s=ref.tau_s, table_size=ref.table_size)

    # One clock cycle of source, sink and monitor.
    async def tick(self):
        d = self.dut
        await FallingEdge(d.clk)
        if self._valid and d.keys__ready.value == 1:
            self.pending.popleft()
            self._valid = False
        if d.result__valid.value == 1 and d.result__ready.value == 1:
            self._check_result(d.result__payload.value.to_unsigned())
        if d.writeback__en.value == 1:
            addr = d.writeback__addr.value.to_unsigned()
            key = unpack_signed(d.writeback__key.value.to_unsigned(), self.cfg.bk, self.cfg.d)
            self.writebacks[addr] = (key, d.writeback__bias.value.to_signed())
        await RisingEdge(d.clk)
        self.cycle += 1
        if not self._valid and self.pending and self.rng.random() >= self.gap:
            key, regs = self.pending[0]
            for name, v in (regs or {}).items():  # a frame's first key, sent back to back
                getattr(d, name).value = v
            d.keys__payload.value = pack_signed(key, self.cfg.bk)
            self._valid = True
        d.keys__valid.value = int(self._valid)
        d.result__ready.value = int(self.rng.random() >= self.stall)

    def _check_result(self, raw: int):
        got = (
            raw & ((1 << self.id_bits) - 1),
            (raw >> self.id_bits) & 3,
            (raw >> (self.id_bits + 2)) & 1,
        )
        if not self.expected:
            self.mismatches.append(f"unexpected result {got}")
            return
        want = self.expected.popleft()
        self.results += 1
        self.tally[got[1]] += 1
        if got != want:
            self.mismatches.append(
                f"token {self.results - 1}: got id {got[0]} {STATUS_NAMES[got[1]]} last {got[2]}, "
                f"want id {want[0]} {STATUS_NAMES[want[1]]} last {want[2]}"
            )

    async def frame(self, ref: ClusterRef, keys: list[list[int]], h: int, w: int) -> int:
        """Send one frame, its expectation from ``ref``; return the cycles until its last result."""
        d = self.dut
        changed = (int(d.grid_w.value), int(d.grid_h.value)) != (w, h)
        self.registers(ref, h, w)
        if self.settle and changed:
            for _ in range(3):
                await self.tick()
        ids, status = ref.add_frame(keys, h, w)
        error = ref.error
        for n, (i, s) in enumerate(zip(ids, status, strict=True)):
            last = int(n == len(ids) - 1 and not error)
            self.expected.append((i, s, last))
        self.pending.extend((k, None) for k in keys)
        return await self._results(len(keys))

    async def stream(self, ref: ClusterRef, frames: list) -> int:
        """Send frames ``(keys, h, w, ref settings)`` back to back, each frame's registers set as
        its first key is offered (the previous frame's keys all taken by then); return the
        cycles until the last result."""
        n = 0
        self.dut.bias_scale.value = ref.bias_scale
        for keys, h, w, regs in frames:
            for k, v in regs.items():
                setattr(ref, k, v)
            ids, status = ref.add_frame(keys, h, w)
            for i, (c, st) in enumerate(zip(ids, status, strict=True)):
                self.expected.append((c, st, int(i == len(ids) - 1 and not ref.error)))
            first = self.frame_registers(ref, h, w)
            self.pending.extend((k, first if i == 0 else None) for i, k in enumerate(keys))
            n += len(keys)
        return await self._results(n)

    async def _results(self, n: int) -> int:
        start = self.cycle
        while self.expected:
            await self.tick()
            if self.cycle - start > 200 * (n + 10) * (self.cfg.cl_groups + 8):
                self.mismatches.append("timeout waiting for results")
                self.expected.clear()
                self.pending.clear()
                self._valid = False
                break
        return self.cycle - start

    async def wait_idle(self):
        for _ in range(8):  # let the write-back queue start
            await self.tick()
        limit = self.cycle + 100 * self.cfg.n_max * (self.cfg.cl_groups * (self.cfg.bk + 2) + 4)
        while self.dut.idle.value != 1:
            await self.tick()
            if self.cycle > limit:
                self.mismatches.append("timeout waiting for idle")
                return

    async def clear(self):
        self.dut.clear.value = 1
        await self.tick()
        self.dut.clear.value = 0
        await self.tick()
        await self.wait_idle()
        self.writebacks.clear()
        if self.dut.error.value != 0 or self.dut.n_clusters.value != 0:
            self.mismatches.append("clear left error or n_clusters set")

    async def restart(self):
        """A synchronous reset in place of a clear (the unit is idle): the registers without a
        reset keep the previous scenario's values, which the unit must never read before
        writing them ("Fmax, sixth round" in docs/cluster.md)."""
        self.exact_base += int(self.dut.exact_count.value)
        await self.reset()
        await self.tick()
        await self.wait_idle()
        self.writebacks.clear()
        if self.dut.error.value != 0 or self.dut.n_clusters.value != 0:
            self.mismatches.append("reset left error or n_clusters set")

    def check_table(self, ref: ClusterRef, name: str):
        want = ref.writebacks()
        for c, (cen, bias) in want.items():
            got = self.writebacks.get(c)
            if got != (cen, bias):
                self.mismatches.append(
                    f"{name}: write-back of cluster {c}: got {got}, want {(cen, bias)}"
                )
        extra = sorted(set(self.writebacks) - set(want))
        if extra:
            self.mismatches.append(f"{name}: write-backs of unallocated entries {extra}")
        if self.dut.n_clusters.value.to_unsigned() != ref.n_clusters:
            self.mismatches.append(
                f"{name}: n_clusters {self.dut.n_clusters.value.to_unsigned()} != {ref.n_clusters}"
            )


# ---- scenarios -----------------------------------------------------------------------------------
def _rand_key(rng, cfg, lo=None, hi=None):
    lo = -(1 << (cfg.bk - 1)) if lo is None else lo
    hi = (1 << (cfg.bk - 1)) - 1 if hi is None else hi
    return [rng.randint(lo, hi) for _ in range(cfg.d)]


def _grid(rng, cfg, want):
    h, w = want
    while h * w > cfg.grid_max:
        h, w = max(1, h - 1), max(1, w - 1)
    return h, w


def _scale(cfg: DREConfig) -> int:
    return min((1 << (cfg.bias_bits - 1)) - 1, 177)  # ~ ln2 * sqrt(d) / (s_q s_k) for a demo


def scenario_frames(name: str, cfg: DREConfig, rng: random.Random, spec: dict):
    """Yield ``(ref settings dict, [(keys, h, w), ...])`` per phase of scenario ``name``."""
    one = 1 << cfg.tau_frac_bits
    frames = spec.get("frames", 6)
    h, w = _grid(rng, cfg, spec.get("grid", (4, 4)))
    P = h * w
    if name == "random":
        for _ in range(2):
            hh, ww = rng.randint(1, h), rng.randint(1, w)
            regs = dict(
                table_size=rng.randint(1, cfg.n_max),
                tau_t=rng.randint(0, one),
                tau_s=rng.randint(0, one),
            )
            base = [_rand_key(rng, cfg) for _ in range(hh * ww)]
            fr = []
            for _ in range(frames):
                fr.append(
                    [
                        [
                            max(
                                -(1 << (cfg.bk - 1)),
                                min((1 << (cfg.bk - 1)) - 1, x + rng.randint(-2, 2)),
                            )
                            for x in k
                        ]
                        if rng.random() < 0.8
                        else _rand_key(rng, cfg)
                        for k in base
                    ]
                )
            yield regs, [(f, hh, ww) for f in fr]
    elif name == "video":
        vh, vw = spec.get("video_grid", (4, 4))
        n = spec.get("video_frames", 8)
        keys = video_keys(n, (vh, vw), cfg.d, cfg.bk, seed=spec.get("video_seed", 0))
        regs = dict(table_size=cfg.n_max, tau_t=round(0.9 * one), tau_s=round(0.8 * one))
        yield regs, [(keys[t].tolist(), vh, vw) for t in range(n)]
    elif name == "identical":
        f = [_rand_key(rng, cfg) for _ in range(P)]
        yield dict(table_size=cfg.n_max, tau_t=one, tau_s=one), [(f, h, w)] * 3
    elif name == "equal":
        k = _rand_key(rng, cfg)
        regs = dict(table_size=cfg.n_max, tau_t=rng.randint(0, one), tau_s=rng.randint(0, one))
        yield regs, [([k] * P, h, w)] * 3
    elif name == "opposite":
        k = _rand_key(rng, cfg, -(1 << (cfg.bk - 1)) + 1)
        neg = [-x for x in k]
        fr = []
        for t in range(4):
            fr.append([(k if (p + t) % 2 == 0 else neg) for p in range(P)])
        yield dict(table_size=cfg.n_max, tau_t=0, tau_s=0), [(f, h, w) for f in fr]
        yield dict(table_size=cfg.n_max, tau_t=one // 2, tau_s=one), [(f, h, w) for f in fr]
    elif name == "full":
        fr = [[_rand_key(rng, cfg) for _ in range(P)] for _ in range(frames)]
        size = max(1, min(cfg.n_max, 3))
        yield dict(table_size=size, tau_t=one, tau_s=one), [(f, h, w) for f in fr]
        # Few entries, low thresholds: counts run into count_max (drops if count_bits is small).
        yield dict(table_size=1, tau_t=0, tau_s=0), [(f, h, w) for f in fr]
    elif name == "extreme":
        lo, hi = -(1 << (cfg.bk - 1)), (1 << (cfg.bk - 1)) - 1
        choices = [
            [lo] * cfg.d,
            [hi] * cfg.d,
            [0] * cfg.d,
            [lo, hi] * (cfg.d // 2) + [lo] * (cfg.d % 2),
        ]
        fr = [[rng.choice(choices) for _ in range(P)] for _ in range(frames)]
        for tt, ts in ((0, 0), (one, one), (one, 0)):
            yield dict(table_size=cfg.n_max, tau_t=tt, tau_s=ts), [(f, h, w) for f in fr]
    elif name == "errors":
        f = [_rand_key(rng, cfg) for _ in range(P)]
        bad = [
            (dict(table_size=0, tau_t=0, tau_s=0), (h, w)),
            (dict(table_size=cfg.n_max + 1, tau_t=0, tau_s=0), (h, w))
            if cfg.n_max + 1 < (1 << cfg.n_max.bit_length())
            else None,
            (dict(table_size=1, tau_t=one + 1, tau_s=0), (h, w)),
            (dict(table_size=1, tau_t=0, tau_s=one + 1), (h, w)),
            (dict(table_size=1, tau_t=0, tau_s=0), (cfg.grid_max + 1, 1)),
        ]
        for item in bad:
            if item is None:
                continue
            regs, (eh, ew) = item
            keys = [_rand_key(rng, cfg) for _ in range(min(eh * ew, 2 * cfg.grid_max + 2))]
            yield dict(regs, error_frame=(keys, eh, ew)), [(f, h, w)]
    elif name == "narrow":
        lo, hi = -(1 << (cfg.bk - 1)), (1 << (cfg.bk - 1)) - 1
        base = _rand_key(rng, cfg, lo + 2, hi - 2)
        shapes = [(1, 1), (4, 1), (1, 4), (2, 1), (1, 2), (3, 2), (2, 3), (2, 2)]
        for nh, nw in shapes:
            if nh * nw > cfg.grid_max:
                continue

            def key():
                r = rng.random()
                if r < 0.15:
                    return _rand_key(rng, cfg)
                if r < 0.25:
                    return [-x for x in base]
                return [min(hi, max(lo, x + rng.randint(-1, 1))) for x in base]

            fr = [[key() for _ in range(nh * nw)] for _ in range(frames)]
            taus = dict(
                tau_t=rng.choice([one, rng.randint(one // 2, one)]), tau_s=rng.randint(0, one)
            )
            yield dict(table_size=cfg.n_max, **taus), [(f, nh, nw) for f in fr]
            yield dict(table_size=2, tau_t=one, tau_s=one), [(f, nh, nw) for f in fr]
    elif name == "throughput":
        base = _rand_key(rng, cfg)
        fr = [
            [
                _rand_key(rng, cfg)
                if rng.random() < 0.2
                else [x + rng.randint(-1, 1) for x in base]
                for _ in range(P)
            ]
            for _ in range(frames)
        ]
        lo, hi = -(1 << (cfg.bk - 1)), (1 << (cfg.bk - 1)) - 1
        fr = [[[min(hi, max(lo, x)) for x in k] for k in f] for f in fr]
        yield (
            dict(table_size=cfg.n_max, tau_t=round(0.9 * one), tau_s=round(0.7 * one)),
            [(f, h, w) for f in fr],
        )
    elif name == "frametime":
        # One frame after a clear per entry of spec["frametime"]: U segments of consecutive
        # tokens within rows (row r holds floor((r+1)U/h) - floor(rU/h) of them), each with its
        # own random key, tau 0.5: a segment's tokens join its first token's cluster (left
        # neighbour, same key), segments' keys are nearly orthogonal, so U clusters are updated
        # (the count printed is ClusterRef's).
        fh, fw = _grid(rng, cfg, spec.get("frametime_grid", (14, 14)))
        n = fh * fw
        half = one // 2
        for u in spec.get("frametime", [35]):
            u = max(fh, min(u, n, cfg.n_max))
            keys = []
            for r in range(fh):
                segs = (r + 1) * u // fh - r * u // fh
                protos = [_rand_key(rng, cfg) for _ in range(segs)]
                keys += [protos[j * segs // fw] for j in range(fw)]
            yield dict(table_size=cfg.n_max, tau_t=half, tau_s=half), [(keys, fh, fw)]
    elif name == "taus":
        lo, hi = -(1 << (cfg.bk - 1)), (1 << (cfg.bk - 1)) - 1
        base = [_rand_key(rng, cfg) for _ in range(P)]
        settings = [
            dict(tau_t=one, tau_s=0),
            dict(tau_t=0, tau_s=one),
            dict(tau_t=one, tau_s=one),
            dict(tau_t=0, tau_s=0),
            dict(tau_t=one // 2, tau_s=one // 4, table_size=max(1, cfg.n_max // 4)),
            dict(tau_t=one, tau_s=one // 2, table_size=cfg.n_max),
            dict(tau_t=rng.randint(0, one), tau_s=rng.randint(0, one)),
            dict(tau_t=0, tau_s=one),
        ]

        def frame(regs):  # the base frame with noise: the cosines fall between the taus
            keys = [[min(hi, max(lo, x + rng.randint(-2, 2))) for x in k] for k in base]
            return (keys, h, w, regs)

        start = dict(table_size=cfg.n_max, tau_t=0, tau_s=0)
        yield start, [frame(r) for r in settings]
        yield dict(start, stream=True), [frame(r) for r in settings[::-1] + settings]
    elif name == "grid":
        f1 = [_rand_key(rng, cfg, -1, 1) for _ in range(P)]
        h2, w2 = (w, h) if h != w else (h, max(1, w - 1))
        f2 = [_rand_key(rng, cfg, -1, 1) for _ in range(h2 * w2)]
        regs = dict(table_size=cfg.n_max, tau_t=one // 2, tau_s=one // 2)
        yield regs, [(f1, h, w), (f1, h, w), (f2, h2, w2), (f2, h2, w2), (f1, h, w)]
    else:
        raise ValueError(f"unknown scenario {name!r}")


@cocotb.test()
async def cluster_scenarios(dut):
    spec = spec_from_env("VREX_CLUSTER")
    cfg = DREConfig(**spec["cfg"])
    seed = spec.get("seed", 0)
    rng = random.Random(seed)
    dut._log.info(f"seed {seed}, cfg {cfg.to_dict()}, widths {ClusterWidths.of(cfg)}")
    tb = TB(dut, cfg, rng)
    rst_rng = random.Random(f"{seed}-restart")  # its own stream: rng's draws stay as they were
    await tb.reset()
    summary = {"cfg": cfg.to_dict(), "seed": seed, "scenarios": {}}
    for name in spec["scenarios"]:
        stats = {
            "tokens": 0,
            "frames": 0,
            "cycles": [],
            "clusters": [],
            "forced": 0,
            "dropped": 0,
            "grid": None,
        }
        tb.tally = [0, 0, 0, 0]
        for regs, frames in scenario_frames(name, cfg, rng, spec):
            if not spec.get("bench") and rst_rng.random() < 0.5:
                await tb.restart()  # a reset instead of a clear, half of the time
            else:
                await tb.clear()
            tb.settle = bool(spec.get("bench") or name == "throughput")
            if tb.settle:  # the unit's own cycles
                tb.gap = tb.stall = 0.0
            else:
                tb.gap = rng.choice([0.0, 0.0, 0.2, 0.5])
                tb.stall = rng.choice([0.0, 0.0, 0.3, 0.7])
            ref = ClusterRef(cfg, bias_scale=_scale(cfg))
            err = regs.pop("error_frame", None)
            stream = regs.pop("stream", False)
            for k, v in regs.items():
                setattr(ref, k, v)
            if err is not None:  # a bad frame first: everything after it is dropped too
                await tb.frame(ref, *err)
                stats["tokens"] += len(err[0])
                if dut.error.value != 1 or not ref.error:
                    tb.mismatches.append(f"{name}: error flag not set by {regs}")
                ref.table_size, ref.tau_t, ref.tau_s = 1, 0, 0
            t0 = tb.cycle
            if stream:  # the frames back to back, each with its own settings
                before = ref.n_clusters
                rc0 = int(dut.exact_count.value)
                stats["cycles"].append(await tb.stream(ref, frames))
                stats["tokens"] += sum(len(f[0]) for f in frames)
                stats["frames"] += len(frames)
                stats.setdefault("recomputes", []).append(int(dut.exact_count.value) - rc0)
                stats["clusters"].append(ref.n_clusters - before)
                stats["grid"] = list(frames[-1][1:3])
                frames = []
            for keys, h, w, *more in frames:
                for k, v in (more[0] if more else {}).items():  # this frame's settings
                    setattr(ref, k, v)
                before = ref.n_clusters
                rc0 = int(dut.exact_count.value)
                cycles = await tb.frame(ref, keys, h, w)
                stats["tokens"] += len(keys)
                stats["frames"] += 1
                stats["cycles"].append(cycles)
                stats.setdefault("recomputes", []).append(int(dut.exact_count.value) - rc0)
                stats["clusters"].append(ref.n_clusters - before)
                stats["grid"] = [h, w]
            await tb.wait_idle()
            stats.setdefault("to_idle", []).append(tb.cycle - t0)  # first token to idle
            tb.check_table(ref, name)
            stats["forced"] += ref.forced
            stats["dropped"] += ref.dropped
            stats["occupancy"] = ref.n_clusters
        stats["rtl_status_counts"] = dict(zip(STATUS_NAMES, tb.tally, strict=True))
        summary["scenarios"][name] = stats
        dut._log.info(
            f"{name}: {stats['frames']} frames, {stats['tokens']} tokens, "
            f"{sum(stats['cycles'])} cycles, forced {stats['forced']}, dropped {stats['dropped']}, "
            f"mismatches so far {len(tb.mismatches)}"
        )
    summary["mismatches"] = len(tb.mismatches)
    summary["exact_recomputes"] = tb.exact_base + int(dut.exact_count.value)
    summary["results"] = tb.results
    if spec.get("out"):
        Path(spec["out"]).write_text(json.dumps(summary))
    for line in tb.mismatches[:20]:
        dut._log.error(line)
    assert not tb.mismatches, f"{len(tb.mismatches)} mismatches (seed {seed})"
    assert tb.results > 0
