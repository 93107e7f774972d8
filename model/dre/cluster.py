"""Bit-exact integer reference of the DRE clustering unit, the contract of ``hw/cluster_unit.py``.

:class:`ClusterRef` clusters integer keys (``bk``-bit signed, ``d`` lanes) one frame at a time in
raster order by the rule of ``docs/clustering.md``, and keeps the table the hardware keeps: per
cluster the exact key sum ``S``, the member count ``n`` and ``|S|^2``; per grid position the
cluster that position joined in the previous frame.  Every integer detail is defined here and in
``docs/clustering.md`` ("Integer form"); the RTL is checked against this module token by token.

Integer details
---------------
* **Thresholds.**  ``tau_t`` and ``tau_s`` are unsigned fixed point with ``F = tau_frac_bits``
  fraction bits, ``T = round(tau * 2^F)`` (:func:`tau_fixed`), ``0 <= T <= 2^F``.
* **Cosine test** (:func:`cosine_passes`), against the exact sum ``S`` (same direction as the
  centroid, so no rounding enters clustering)::

      pass <=> k.S >= 0 and (k.S)^2 * 2^(2F) >= T^2 * |k|^2 * |S|^2        if k != 0 and S != 0
      pass <=> T == 0                                                      otherwise (cos := 0)

* ``|S|^2`` is updated as ``|S|^2 + 2 k.S + |k|^2`` with the dot product the test computed.
* **Candidates**, in this order: temporal (``owner[p]``, ``tau_t``), left, up (``tau_s``).  A
  candidate that does not exist is skipped; a *saturated* cluster (``n == 2^count_bits - 1``) is
  treated as not existing (it accepts no more members, so ``S`` never overflows its
  ``bk + count_bits`` bits).
* **Outcome** (2-bit status code): ``JOINED`` (0) the first candidate that passes; else ``NEW``
  (1) a new cluster ``S = k, n = 1`` if fewer than ``table_size`` clusters exist; else ``FORCED``
  (2) the candidate of highest cosine, ties to the earlier one (:func:`more_similar`, exact by
  cross multiplication); else, when no usable candidate exists at all, ``DROPPED`` (3): the token
  joins nothing, its id is reported as 0, and it is no candidate for its neighbours or for the
  next frame.  Without saturation ``DROPPED`` never happens (a full table means an earlier token).
* **Owner map.**  The temporal candidate exists only if the previous frame since the last
  :meth:`ClusterRef.clear` was complete and had the same grid (``h``, ``w``).
* **Quantised centroid** (:func:`quantise_centroid`): per lane ``round(S / n)``, half away from
  zero, computed as ``sign(S) * floor((2|S| // n + 1) / 2)``; it always fits ``bk`` bits.
* **Size bias** (:func:`size_bias`): ``b = min((log2_fixed(n) * bias_scale) >> LF, 2^(BB-1)-1)``
  with ``LF = log_frac_bits``, ``BB = bias_bits`` and :func:`log2_fixed` Mitchell's approximation
  (``msb(n)`` plus the next ``LF`` bits of ``n`` below its msb as the fraction, truncated).
  ``bias_scale`` (unsigned, ``bias_bits - 1`` bits) is set by the host to
  ``round(ln 2 * sqrt(d) / (s_q * s_k))`` so that ``b`` is ``ln n`` in score units.
* **Runtime errors.**  A frame whose grid is empty or larger than ``grid_max``, a table size of 0
  or above ``n_max``, or a threshold above ``2^F`` sets the sticky :attr:`ClusterRef.error` flag
  (checked at each frame start).  While it is set every token is answered ``DROPPED`` with id 0
  and nothing changes; :meth:`ClusterRef.clear` resets it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from model.dre.config import ConfigError, DREConfig, require_config

JOINED, NEW, FORCED, DROPPED = 0, 1, 2, 3
STATUS_NAMES = ("joined", "new", "forced", "dropped")


# ---- widths shared with the RTL ---------------------------------------------------------------
@dataclass(frozen=True)
class ClusterWidths:
    """Bit widths of every quantity of the clustering datapath, derived from a DREConfig.

    sum        signed width of a key sum ``S_i`` (``bk + count_bits``)
    dot        signed width of ``k.S``
    key_norm   unsigned width of ``|k|^2``
    sum_norm   unsigned width of ``|S|^2``
    tau        unsigned width of a threshold register (``F + 1``: ``T <= 2^F``)
    log        unsigned width of ``log2_fixed(n)``
    bias_scale unsigned width of the ``bias_scale`` register (``bias_bits - 1``)
    """

    sum: int
    dot: int
    key_norm: int
    sum_norm: int
    tau: int
    log: int
    bias_scale: int

    @classmethod
    def of(cls, cfg: DREConfig) -> ClusterWidths:
        k_max = 1 << (cfg.bk - 1)  # largest |k_i| (the most negative code)
        s_max = cfg.count_max * k_max  # largest |S_i| (a saturated cluster of extreme keys)
        return cls(
            sum=cfg.bk + cfg.count_bits,
            dot=(cfg.d * k_max * s_max).bit_length() + 1,
            key_norm=(cfg.d * k_max * k_max).bit_length(),
            sum_norm=(cfg.d * s_max * s_max).bit_length(),
            tau=cfg.tau_frac_bits + 1,
            log=max(1, (cfg.count_bits - 1).bit_length()) + cfg.log_frac_bits,
            bias_scale=cfg.bias_bits - 1,
        )


# ---- the integer primitives (each one a hardware block) ---------------------------------------
def tau_fixed(tau: float, frac_bits: int) -> int:
    """``T = round(tau * 2^F)`` (half up; tau >= 0) for a threshold ``0 <= tau <= 1``."""
    if not isinstance(tau, int | float) or not math.isfinite(tau) or not 0 <= tau <= 1:
        raise ConfigError(f"tau={tau!r} must be a number in [0, 1]")
    return math.floor(tau * (1 << frac_bits) + 0.5)


def cosine_passes(dot: int, key_norm: int, sum_norm: int, tau: int, frac_bits: int) -> bool:
    """``cos(k, S) >= T / 2^F`` without sqrt or divide (zero vectors have cosine 0)."""
    if key_norm == 0 or sum_norm == 0:
        return tau == 0
    return dot >= 0 and (dot * dot) << (2 * frac_bits) >= tau * tau * key_norm * sum_norm


def more_similar(dot_a: int, norm_a: int, dot_b: int, norm_b: int) -> bool:
    """``cos(k, S_a) > cos(k, S_b)`` for one key ``k``, exactly: compare
    ``dot_a |dot_a| / |S_a|^2`` with ``dot_b |dot_b| / |S_b|^2`` by cross multiplication.
    A zero sum has cosine 0 (``dot`` is then 0 as well; its norm counts as 1)."""
    norm_a, norm_b = max(norm_a, 1), max(norm_b, 1)
    return dot_a * abs(dot_a) * norm_b > dot_b * abs(dot_b) * norm_a


def log2_fixed(n: int, frac_bits: int) -> int:
    """Mitchell's log2 of ``n >= 1`` in fixed point with ``frac_bits`` fraction bits:
    ``msb(n) * 2^LF + floor((n - 2^msb) * 2^LF / 2^msb)`` (exact at powers of two)."""
    if n < 1:
        raise ValueError(f"log2_fixed needs n >= 1, got {n}")
    m = n.bit_length() - 1
    return (m << frac_bits) + (((n - (1 << m)) << frac_bits) >> m)


def size_bias(n: int, bias_scale: int, cfg: DREConfig) -> int:
    """``b = (log2_fixed(n) * bias_scale) >> LF``, saturated to the largest ``bias_bits`` value."""
    b = (log2_fixed(n, cfg.log_frac_bits) * bias_scale) >> cfg.log_frac_bits
    return min(b, (1 << (cfg.bias_bits - 1)) - 1)


def round_div(s: int, n: int) -> int:
    """``round(s / n)`` half away from zero, for ``n >= 1``, as the divider computes it."""
    q = ((2 * abs(s)) // n + 1) >> 1
    return -q if s < 0 else q


def quantise_centroid(sum_: Sequence[int], n: int) -> list[int]:
    """The ``bk``-bit centroid retrieval reads: ``round(S_i / n)`` per lane."""
    return [round_div(s, n) for s in sum_]


# ---- the reference -------------------------------------------------------------------------
class ClusterRef:
    """Integer temporal/spatial clustering with the hardware's centroid table.

    Runtime registers (attributes, read at each frame start like the RTL samples them):
    ``table_size`` (clusters in use, default ``n_max``), ``tau_t``, ``tau_s`` (fixed point
    ``T``, see :func:`tau_fixed`) and ``bias_scale``.

    :meth:`add_frame` takes ``h*w`` keys (sequences of ``d`` ints) in raster order and returns
    ``(ids, status)``: per token the cluster id and the status code (``JOINED``, ``NEW``,
    ``FORCED``, ``DROPPED``).  State after any frame: ``sums``, ``counts``, ``norms`` (per
    cluster), ``owner`` (per position, ``None`` where no cluster), ``error``, and the counters
    ``forced`` and ``dropped``.  :meth:`writebacks` gives the final quantised centroid and bias of
    every cluster, i.e. what the RTL's write-back port has written last per entry.
    """

    def __init__(
        self,
        cfg: DREConfig,
        *,
        table_size: int | None = None,
        tau_t: int = 0,
        tau_s: int = 0,
        bias_scale: int = 0,
    ):
        require_config(cfg)
        self.cfg = cfg
        self.widths = ClusterWidths.of(cfg)
        self.table_size = cfg.n_max if table_size is None else table_size
        self.tau_t, self.tau_s = tau_t, tau_s
        self.bias_scale = bias_scale
        self.clear()

    def clear(self) -> None:
        """Empty the table and the owner map, reset the error flag (the RTL's ``clear``)."""
        self.sums: list[list[int]] = []
        self.counts: list[int] = []
        self.norms: list[int] = []
        self.owner: list[int | None] = []
        self.prev_grid: tuple[int, int] | None = None
        self.error = False
        self.forced = 0
        self.dropped = 0

    @property
    def n_clusters(self) -> int:
        return len(self.counts)

    # ---- registers ------------------------------------------------------------------------
    def _check_registers(self) -> None:
        """Values that do not fit their register cannot be written: a usage error."""
        cfg, wd = self.cfg, self.widths
        limits = {
            "table_size": (self.table_size, (1 << (cfg.n_max.bit_length())) - 1),
            "tau_t": (self.tau_t, (1 << wd.tau) - 1),
            "tau_s": (self.tau_s, (1 << wd.tau) - 1),
            "bias_scale": (self.bias_scale, (1 << wd.bias_scale) - 1),
        }
        for name, (value, top) in limits.items():
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
                raise ConfigError(f"{name}={value!r} does not fit its register (0 .. {top})")

    def runtime_error(self, h: int, w: int) -> bool:
        """The RTL's error condition, checked at a frame start."""
        one = 1 << self.cfg.tau_frac_bits
        return (
            h * w == 0
            or h * w > self.cfg.grid_max
            or not 1 <= self.table_size <= self.cfg.n_max
            or self.tau_t > one
            or self.tau_s > one
        )

    # ---- one frame ----------------------------------------------------------------------------
    def add_frame(self, keys: Sequence[Sequence[int]], h: int, w: int):
        cfg = self.cfg
        self._check_registers()
        for name, v in (("h", h), ("w", w)):
            if not isinstance(v, int) or not 0 <= v < (1 << 16):
                raise ValueError(f"grid {name}={v!r} must be an integer in 0 .. 65535")
        keys = [[int(x) for x in k] for k in keys]
        if len(keys) != h * w:
            raise ValueError(f"a {h}x{w} frame has {h * w} keys, got {len(keys)}")
        lo, hi = -(1 << (cfg.bk - 1)), (1 << (cfg.bk - 1)) - 1
        for k in keys:
            if len(k) != cfg.d or not all(lo <= x <= hi for x in k):
                raise ValueError(f"a key must be {cfg.d} integers in {lo} .. {hi}")

        self.error = self.error or self.runtime_error(h, w)
        if self.error:
            return [0] * len(keys), [DROPPED] * len(keys)

        temporal = self.prev_grid == (h, w)
        owner_prev = self.owner if temporal else [None] * (h * w)
        joined: list[int | None] = [None] * (h * w)
        ids, status = [], []
        for p, k in enumerate(keys):
            i, j = divmod(p, w)
            cands = [(owner_prev[p], self.tau_t)]
            if j > 0:
                cands.append((joined[p - 1], self.tau_s))
            if i > 0:
                cands.append((joined[p - w], self.tau_s))
            cands = [(c, t) for c, t in cands if c is not None and self.counts[c] < cfg.count_max]
            choice, how = self._decide(k, cands)
            if choice is not None:
                self._add(choice, k, new=how == NEW)
            joined[p] = choice
            ids.append(0 if choice is None else choice)
            status.append(how)
        self.owner = joined
        self.prev_grid = (h, w)
        return ids, status

    def _decide(self, k: list[int], cands: list[tuple[int, int]]) -> tuple[int | None, int]:
        F = self.cfg.tau_frac_bits
        k2 = _dot(k, k)
        dots = []
        for c, tau in cands:
            dot = _dot(k, self.sums[c])
            dots.append(dot)
            if cosine_passes(dot, k2, self.norms[c], tau, F):
                return c, JOINED
        if self.n_clusters < self.table_size:
            return self.n_clusters, NEW
        if not cands:
            self.dropped += 1
            return None, DROPPED
        norms = [self.norms[c] for c, _ in cands]
        best = 0
        for a in range(1, len(cands)):
            if more_similar(dots[a], norms[a], dots[best], norms[best]):
                best = a
        self.forced += 1
        return cands[best][0], FORCED

    def _add(self, c: int, k: list[int], new: bool) -> None:
        if new:
            self.sums.append(list(k))
            self.counts.append(1)
            self.norms.append(_dot(k, k))
            return
        s = self.sums[c]
        self.norms[c] += 2 * _dot(k, s) + _dot(k, k)
        self.sums[c] = [a + b for a, b in zip(s, k, strict=True)]
        self.counts[c] += 1

    # ---- what retrieval reads -------------------------------------------------------------
    def centroid(self, c: int) -> list[int]:
        return quantise_centroid(self.sums[c], self.counts[c])

    def bias(self, c: int) -> int:
        return size_bias(self.counts[c], self.bias_scale, self.cfg)

    def writebacks(self) -> dict[int, tuple[list[int], int]]:
        """Final ``(quantised centroid, bias)`` of every cluster, by cluster id."""
        return {c: (self.centroid(c), self.bias(c)) for c in range(self.n_clusters)}


def _dot(a: Sequence[int], b: Sequence[int]) -> int:
    return sum(x * y for x, y in zip(a, b, strict=True))
