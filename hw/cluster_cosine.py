"""Division-free cosine threshold test of the clustering unit (``docs/clustering.md``)."""

from __future__ import annotations

from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from model.dre_cluster import ClusterWidths
from model.dre_config import ConfigError, DREConfig


class CosineTest(wiring.Component):
    """``cos(k, S) >= T / 2^F`` for a key ``k`` and a key sum ``S``, as ``model.dre_cluster``
    defines it (:func:`model.dre_cluster.cosine_passes`)::

        passed = (T == 0)                                        if |k|^2 == 0 or |S|^2 == 0
        passed = k.S >= 0 and (k.S)^2 2^(2F) >= T^2 |k|^2 |S|^2  otherwise

    Interface
    ---------
    dot : In(signed)         ``k.S``
    key_norm : In(unsigned)  ``|k|^2``
    sum_norm : In(unsigned)  ``|S|^2``
    tau : In(unsigned)       ``T``, fixed point with ``F = tau_frac_bits`` fraction bits
    passed : Out(1)          the result for the inputs of two cycles before

    Timing: a free-running two-stage pipeline, no handshake; one test per cycle, latency 2.
    Stage 1 registers ``(k.S)^2`` and ``T^2 |k|^2``; stage 2 multiplies by ``|S|^2`` and compares.
    Multipliers are sized to their operands (``ClusterWidths``): ``dot x dot``, ``tau x tau``,
    ``tau^2 x key_norm`` and ``(tau^2 key_norm) x sum_norm``.
    """

    def __init__(self, cfg: DREConfig):
        if not isinstance(cfg, DREConfig):
            raise ConfigError(f"cfg must be a DREConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        wd = self.widths = ClusterWidths.of(cfg)
        super().__init__(
            {
                "dot": In(signed(wd.dot)),
                "key_norm": In(unsigned(wd.key_norm)),
                "sum_norm": In(unsigned(wd.sum_norm)),
                "tau": In(unsigned(wd.tau)),
                "passed": Out(1),
            }
        )

    def elaborate(self, platform):
        F = self.cfg.tau_frac_bits
        wd = self.widths
        m = Module()
        # Stage 1.
        dot2 = Signal(unsigned(2 * wd.dot))
        tk = Signal(unsigned(2 * wd.tau + wd.key_norm))
        s_norm = Signal.like(self.sum_norm)
        nonneg = Signal()
        zero = Signal()
        tau_zero = Signal()
        m.d.sync += [
            dot2.eq(self.dot * self.dot),
            tk.eq(self.tau * self.tau * self.key_norm),
            s_norm.eq(self.sum_norm),
            nonneg.eq(self.dot >= 0),
            zero.eq((self.key_norm == 0) | (self.sum_norm == 0)),
            tau_zero.eq(self.tau == 0),
        ]
        # Stage 2.
        with m.If(zero):
            m.d.sync += self.passed.eq(tau_zero)
        with m.Else():
            m.d.sync += self.passed.eq(nonneg & ((dot2 << (2 * F)) >= tk * s_norm))
        return m
