"""The registry of hardware designs that synthesis and lint run on.

:func:`designs` returns one :class:`Design` per ``hw`` module listed in :data:`REGISTRY` that
exists.  The rules, so that the flows can run while ``hw/`` is still being written:

* a listed module that does **not exist** is skipped, with a printed note;
* a module that exists but **fails to import**, has no (or more than one) component class, or
  whose component fails to **construct or elaborate** is an error (:class:`DesignError`), never
  a skip.

Each module holds one ``wiring.Component`` (the project's one-component-per-file rule); it is
found automatically and constructed as ``Cls(cfg)``.  A unit whose constructor needs more than
the :class:`~model.dre.config.DREConfig` gets an entry in :data:`FACTORIES`.  To add a unit, add a
line to :data:`REGISTRY`.

:data:`CONFIGS` names the configurations the reports are made for; :func:`parse_config` also
takes ``NAME=VALUE[,NAME=VALUE...]`` overrides of the default.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from amaranth.back import verilog
from amaranth.lib import wiring

from model.dre.config import PRESETS, ConfigError, DREConfig

#: (design name, module, kind).  ``kind``: "top" (the whole DRE), "unit" (a subsystem the DRE
#: is built from: retrieval, clustering), or "part" (a component inside a unit: linted, and
#: synthesised only when named with ``--designs``; its area is in its unit's per-module split).
REGISTRY: list[tuple[str, str, str]] = [
    ("dre", "hw.dre", "top"),
    ("selector", "hw.selector", "unit"),
    ("token_selector", "hw.token_selector", "unit"),
    ("cluster_unit", "hw.cluster_unit", "unit"),
    ("plane_store", "hw.plane_store", "part"),
    ("select_core", "hw.select_core", "part"),
    ("select_tokens", "hw.select_tokens", "part"),
    ("bitplane_dot", "hw.bitplane_dot", "part"),
    ("topk", "hw.topk", "part"),
    ("soft_score", "hw.soft_score", "part"),
    ("centroid_table", "hw.centroid_table", "part"),
    ("cluster_cosine", "hw.cluster_cosine", "part"),
    ("cluster_threshold", "hw.cluster_threshold", "part"),
    ("cluster_exact", "hw.cluster_exact", "part"),
    ("cluster_queue", "hw.cluster_queue", "part"),
    ("cluster_writeback", "hw.cluster_writeback", "part"),
    ("cluster_frame", "hw.cluster_frame", "part"),
    ("cluster_owner", "hw.cluster_owner", "part"),
    ("cluster_dots", "hw.cluster_dots", "part"),
    ("cluster_resolve", "hw.cluster_resolve", "part"),
    ("cluster_decide", "hw.cluster_decide", "part"),
    ("cluster_update", "hw.cluster_update", "part"),
    ("board", "hw.board", "part"),
    ("uart_bridge", "hw.uart_bridge", "part"),
    ("uart_rx", "hw.uart_rx", "part"),
    ("uart_tx", "hw.uart_tx", "part"),
]


def _bitplane_dot(cfg: DREConfig) -> wiring.Component:
    from hw.bitplane_dot import BitplaneDot

    return BitplaneDot(cfg.d, cfg.lanes, cfg.bq)


def _topk(cfg: DREConfig) -> wiring.Component:
    from hw.layouts import score_shape
    from hw.topk import TopK

    return TopK(cfg.k_cap, score_shape(cfg), cfg.index_bits)


def _soft_score(cfg: DREConfig) -> wiring.Component:
    from hw.select_tokens import SOFT_FEED_DEPTH
    from hw.soft_score import SoftScore

    # s_bits: the selector's partial width (hw.select_tokens.value_shape); in_depth as there
    s_bits = cfg.bq + cfg.bk + cfg.d.bit_length() + 2
    return SoftScore(
        q_max=cfg.q_max,
        s_bits=s_bits,
        count_bits=cfg.count_bits,
        n_max=cfg.n_max,
        in_depth=SOFT_FEED_DEPTH,
    )


def _board(cfg: DREConfig) -> wiring.Component:
    from hw.board import CLOCK_HZ, BridgedDRE

    return BridgedDRE(cfg, round(CLOCK_HZ / 115200))


def _uart_bridge(cfg: DREConfig) -> wiring.Component:
    from host.dre_driver import Widths
    from hw.uart_bridge import UartBridge

    w = Widths.of(cfg)
    return UartBridge(
        key_width=w.key,
        query_width=w.query,
        assignment_width=w.assignment,
        selection_width=w.selection,
        divisor=217,
    )


def _uart_rx(cfg: DREConfig) -> wiring.Component:
    from hw.uart_rx import UartRx

    return UartRx(217)


def _uart_tx(cfg: DREConfig) -> wiring.Component:
    from hw.uart_tx import UartTx

    return UartTx(217)


#: Module -> factory ``cfg -> component``, for components not built as ``Cls(cfg)`` (with the
#: parameters their parent unit gives them).
FACTORIES: dict[str, Callable[[DREConfig], wiring.Component]] = {
    "hw.bitplane_dot": _bitplane_dot,
    "hw.topk": _topk,
    "hw.soft_score": _soft_score,
    "hw.board": _board,
    "hw.uart_bridge": _uart_bridge,
    "hw.uart_rx": _uart_rx,
    "hw.uart_tx": _uart_tx,
}

#: Named configurations.  Modest on purpose: nextpnr on two cores must finish in minutes.
CONFIGS: dict[str, DREConfig] = {
    "small": DREConfig(d=32, lanes=8, n_max=64, k_cap=8, grid_max=64),
    "default": DREConfig(),
    "lanes32": DREConfig(lanes=32),  # the selector's lanes; the clustering unit keeps its 8
    "video7b": PRESETS["video7b"],  # not in DEFAULT_CONFIGS: name it with --configs
}
DEFAULT_CONFIGS = ("small", "default", "lanes32")


#: The ECP5 clock target (MHz) each design is placed and routed for when ``synth.report`` is not
#: given ``--freq``: the token selector's is its issue's 150 MHz, every other design's the
#: DRE's 100 MHz.  nextpnr's placement and routing are timing-driven, so the target changes
#: the result, not only the pass / fail verdict.
TARGET_MHZ: dict[str, float] = {"token_selector": 150.0}
DEFAULT_TARGET_MHZ = 100.0


def target_mhz(name: str) -> float:
    """The clock target of design ``name`` (:data:`TARGET_MHZ`, else :data:`DEFAULT_TARGET_MHZ`)."""
    return TARGET_MHZ.get(name, DEFAULT_TARGET_MHZ)


class DesignError(RuntimeError):
    """A design module exists but cannot be imported, constructed or elaborated."""


@dataclass(frozen=True)
class Design:
    """A synthesisable unit: ``factory(cfg)`` builds the component, top module ``name``."""

    name: str
    module: str
    kind: str
    factory: Callable[[DREConfig], wiring.Component]

    def build(self, cfg: DREConfig) -> wiring.Component:
        try:
            return self.factory(cfg)
        except Exception as exc:
            raise DesignError(
                f"{self.module}: constructing {self.name} failed for {cfg}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def verilog(self, cfg: DREConfig) -> str:
        """Verilog of this design for ``cfg``, top module named :attr:`name`."""
        component = self.build(cfg)
        try:
            return verilog.convert(component, name=self.name, emit_src=False)
        except Exception as exc:
            raise DesignError(
                f"{self.module}: elaborating {self.name} failed for {cfg}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def _component_class(module) -> type:
    """The one ``wiring.Component`` subclass defined in ``module``."""
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, wiring.Component)
        and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = ", ".join(sorted(c.__name__ for c in found)) or "none"
        raise DesignError(
            f"{module.__name__}: expected exactly one wiring.Component class, found {names}; "
            f"add an entry for it to synth.designs.FACTORIES"
        )
    return found[0]


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def load(name: str, module: str, kind: str = "unit") -> Design | None:
    """The :class:`Design` in ``module``, or None if the module does not exist."""
    if not _exists(module):
        return None
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        raise DesignError(
            f"{module} exists but failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    factory = FACTORIES.get(module)
    if factory is None:
        factory = _component_class(mod)
    return Design(name=name, module=module, kind=kind, factory=factory)


def designs(
    cfg: DREConfig | None = None,
    *,
    registry: Iterable[tuple[str, str, str]] | None = None,
    log: Callable[[str], None] = print,
) -> list[Design]:
    """Every registered design whose module exists, in registry order.

    With ``cfg`` each one is also constructed and elaborated once, so that a broken design is
    reported here (as :class:`DesignError`) rather than halfway through a long flow.
    """
    found = []
    for name, module, kind in REGISTRY if registry is None else registry:
        design = load(name, module, kind)
        if design is None:
            log(f"[designs] note: {module} does not exist yet; skipping {name}")
            continue
        if cfg is not None:
            design.verilog(cfg)
        found.append(design)
    return found


def default_selection(found: list[Design]) -> list[Design]:
    """The whole DRE when it exists (its hierarchy gives the per-unit split), else the units
    (else, while no unit exists, the parts)."""
    for kind in ("top", "unit", "part"):
        chosen = [d for d in found if d.kind == kind]
        if chosen:
            return chosen
    return []


def select(found: list[Design], names: Iterable[str] | None) -> list[Design]:
    """The designs named in ``names`` (all of ``found`` when None); unknown names are errors."""
    if names is None:
        return list(found)
    by_name = {d.name: d for d in found}
    wanted = list(names)
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise DesignError(
            f"unknown or missing design(s) {', '.join(missing)}; available: "
            f"{', '.join(by_name) or 'none'}"
        )
    return [by_name[n] for n in wanted]


def parse_config(spec: str) -> tuple[str, DREConfig]:
    """``"default"`` / ``"small"`` / ... or ``"d=128,lanes=32"`` -> (label, config)."""
    spec = spec.strip()
    if spec in CONFIGS:
        return spec, CONFIGS[spec]
    if "=" not in spec:
        raise ConfigError(
            f"unknown configuration {spec!r}; use one of {', '.join(CONFIGS)} "
            f"or NAME=VALUE[,NAME=VALUE...]"
        )
    return spec, DREConfig.from_overrides([s for s in spec.split(",") if s.strip()])
