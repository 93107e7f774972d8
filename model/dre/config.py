"""One configuration object for the DRE, shared by the golden model and the RTL.

Every size of the hardware is an elaboration parameter collected here, so that the bit-exact
reference (``model/dre/ref.py``) and the Amaranth components (``hw/``) are always built from the
same numbers.  Values are checked in ``__post_init__``; a bad value raises :class:`ConfigError`
with one readable message naming the parameter, its value and what is allowed.

Runtime values (tau_t, tau_s, margin, k_min, k_max, ...) are *not* here: they live in the
register block and are checked where they are used.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar


class ConfigError(ValueError):
    """A configuration value is out of range; the message says which and why."""


def check_int(name: str, value, lo: int | None = None, hi: int | None = None, *, error=ConfigError):
    """``value`` if it is an integer (``bool`` is not) in ``lo .. hi`` (either bound may be
    None); otherwise ``error`` with one message naming ``name``.  The one type-and-range check
    of every configuration object in ``model/`` and ``hw/``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise error(f"{name} must be an integer, got {value!r}")
    if hi is None:
        if lo is not None and value < lo:
            raise error(f"{name}={value} must be >= {lo}")
    elif (lo is not None and value < lo) or value > hi:
        raise error(f"{name}={value} is out of range; allowed {lo} <= {name} <= {hi}")
    return value


def clustering_lanes(cluster_lanes: int, lanes: int) -> int:
    """Lanes the clustering unit runs: ``cluster_lanes`` capped by the DRE's ``lanes`` (the rule
    of :attr:`DREConfig.cl_lanes`, shared with the system model's ``Setup``)."""
    return min(cluster_lanes, lanes)


def _clog2(n: int) -> int:
    """Bits needed to hold the values 0 .. n-1 (at least 1)."""
    return max(1, (n - 1).bit_length())


@dataclass(frozen=True)
class DREConfig:
    """Elaboration parameters of the DRE (all integers).

    d             key/query length (head dimension), lanes of the dot products
    lanes         lanes processed per cycle; one plane of one key takes ceil(d/lanes) cycles
    cluster_lanes most lanes of the clustering unit's dot products: it uses
                  ``min(cluster_lanes, lanes)`` (:attr:`cl_lanes`), which must divide d.  8 by
                  default, the widest clustering datapath that routes on an ECP5-85k
                  (``docs/cluster.md``, "Clustering lanes"); the selector keeps ``lanes``
    bq            query width, signed two's complement
    bk            key / quantised-centroid width, signed two's complement
    n_max         centroid-table entries = most candidates one retrieval scores
    k_cap         largest K_max the selector supports (size of its top-K structure)
    grid_max      most tokens per frame (h*w), size of the per-position owner table
    count_bits    width of a cluster's member count
    tau_frac_bits F: tau_t and tau_s are unsigned fixed point with F fraction bits, 0 <= tau <= 1
    log_frac_bits fraction bits of the fixed-point log2(n) used for the size bias
    bias_bits     width of a signed bias b_j and of the margin M
    q_max         most query vectors per retrieval of the v2 selector (token budget rule)
    """

    d: int = 64
    lanes: int = 16
    bq: int = 8
    bk: int = 8
    n_max: int = 256
    k_cap: int = 16
    grid_max: int = 196
    count_bits: int = 16
    tau_frac_bits: int = 8
    log_frac_bits: int = 8
    bias_bits: int = 24
    q_max: int = 4
    cluster_lanes: int = 8

    # ---- validation -------------------------------------------------------------------------
    _RANGES: ClassVar[dict[str, tuple[int, int]]] = {
        "d": (1, 4096),
        "lanes": (1, 4096),
        "bq": (2, 16),
        "bk": (2, 16),
        "n_max": (1, 65536),
        "k_cap": (1, 256),
        "grid_max": (1, 65536),
        "count_bits": (1, 32),
        "tau_frac_bits": (1, 16),
        "log_frac_bits": (0, 16),
        "bias_bits": (2, 48),
        "q_max": (1, 16),
        "cluster_lanes": (1, 4096),
    }

    def __post_init__(self):
        for f in fields(self):
            check_int(f.name, getattr(self, f.name), *self._RANGES[f.name])
        if self.lanes > self.d:
            raise ConfigError(f"lanes={self.lanes} exceeds d={self.d}; need 1 <= lanes <= d")
        if self.d % self.lanes:
            raise ConfigError(
                f"d={self.d} is not a multiple of lanes={self.lanes}; "
                f"choose lanes from the divisors of d"
            )
        if self.d % self.cl_lanes:
            raise ConfigError(
                f"d={self.d} is not a multiple of the clustering unit's lanes "
                f"min(cluster_lanes={self.cluster_lanes}, lanes={self.lanes}) = {self.cl_lanes}; "
                f"choose cluster_lanes from the divisors of d"
            )
        if self.k_cap > self.n_max:
            raise ConfigError(f"k_cap={self.k_cap} exceeds n_max={self.n_max}")

    # ---- derived sizes ----------------------------------------------------------------------
    @property
    def groups(self) -> int:
        """Cycles one plane (or one dot product) of one key takes: d / lanes."""
        return self.d // self.lanes

    @property
    def cl_lanes(self) -> int:
        """Lanes of the clustering unit's dot products, sum memory rows and write-back:
        ``min(cluster_lanes, lanes)`` (:func:`clustering_lanes`)."""
        return clustering_lanes(self.cluster_lanes, self.lanes)

    @property
    def cl_groups(self) -> int:
        """Cycles one dot product (or one sum update) of one key takes in the clustering unit:
        ``d / cl_lanes``."""
        return self.d // self.cl_lanes

    @property
    def index_bits(self) -> int:
        """Width of a centroid-table index (cluster id)."""
        return _clog2(self.n_max)

    @property
    def count_max(self) -> int:
        return (1 << self.count_bits) - 1

    # ---- construction from text -------------------------------------------------------------
    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def replace(self, **changes) -> DREConfig:
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(self.names())}"
            )
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_overrides(cls, items: list[str] | None = None, base: DREConfig | None = None):
        """Build from ``["d=128", "lanes=16"]`` (the CLI's ``--set``)."""
        base = base or cls()
        changes = {}
        for item in items or []:
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or not name:
                raise ConfigError(f"--set expects NAME=VALUE, got {item!r}")
            try:
                changes[name] = int(value, 0)
            except ValueError:
                raise ConfigError(f"{name} must be an integer, got {value.strip()!r}") from None
        return base.replace(**changes)

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> DREConfig:
        """Read ``{"d": 64, ...}`` or an export's ``{"config": {...}, ...}``."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read DRE config {path}: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            data = data["config"]  # the JSON python -m hw.export writes beside the Verilog
        if not isinstance(data, dict):
            raise ConfigError(f"DRE config {path} must hold a JSON object")
        return cls().replace(**data)


#: Named configurations (``python -m hw.export --preset NAME``, ``verif.sim_dre --preset``,
#: ``synth.report --configs NAME``).  ``video7b``: a 7B-class video LLM's KV head (d = 128), a
#: 1024-entry centroid table, a 14 x 14 token grid per frame, 4 query vectors per retrieval.
PRESETS: dict[str, DREConfig] = {
    "default": DREConfig(),
    "video7b": DREConfig(d=128, lanes=16, n_max=1024, k_cap=16, grid_max=196, q_max=4),
}


def preset(name: str) -> DREConfig:
    """The named configuration; :class:`ConfigError` naming the choices otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def require_config(cfg) -> DREConfig:
    """``cfg`` itself when it is a :class:`DREConfig`; one :class:`ConfigError` otherwise (the
    first check of every unit built from a configuration)."""
    if not isinstance(cfg, DREConfig):
        raise ConfigError(f"cfg must be a DREConfig, got {type(cfg).__name__}")
    return cfg
