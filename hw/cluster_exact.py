"""Exact, time-multiplexed comparison of two triple products: the clustering unit's fallback for
decisions that fall inside the mantissa screen's guard band (``docs/cluster.md``)."""

from __future__ import annotations

from amaranth import Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arith import lut_mul
from model.dre.cluster import ClusterWidths
from model.dre.config import ConfigError, DREConfig, require_config


def exact_widths(cfg: DREConfig) -> tuple[int, int]:
    """``(operand, product)`` widths: every factor of a cosine test (``|k.S|``, ``2^(2F)``,
    ``T^2``, ``|k|^2``, ``|S|^2``) or a most-similar comparison fits ``operand`` bits, every
    product of three of them ``product`` bits."""
    wd = ClusterWidths.of(cfg)
    F = cfg.tau_frac_bits
    operand = max(wd.dot, wd.sum_norm, wd.key_norm, 2 * wd.tau, 2 * F + 1)
    product = max(
        2 * wd.dot + wd.sum_norm,
        2 * wd.dot + 2 * F + 1,
        2 * wd.tau + wd.key_norm + wd.sum_norm,
    )
    return operand, product


def exact_cycles(cfg: DREConfig, digit_bits: int = 4) -> int:
    """Cycles from ``start`` to ``done`` (both included): 1 + 4 ceil(operand / digit_bits) + 1."""
    operand, _ = exact_widths(cfg)
    return 2 + 4 * -(-operand // digit_bits)


class ExactCompare(wiring.Component):
    """Compares ``L = x0 x1 x2`` with ``R = y0 y1 y2`` (unsigned) exactly, with one shared
    shift-and-add multiplier that takes ``digit_bits`` bits of a factor per cycle (built from
    LUTs and carry chains, no DSP block).  Each product must fit the ``product`` bits of
    :func:`exact_widths`, as every product of a cosine test does; a wider one wraps.

    Interface
    ---------
    x, y : In(unsigned(operand)) x 3
        The factors (:func:`exact_widths`); sampled while ``busy``: hold them from ``start``
        until ``done``.
    start : In(1)
        Begin a comparison (ignored while ``busy``).
    busy : Out(1)
        From the cycle after ``start`` to the cycle of ``done``, both included.
    done : Out(1)
        One cycle; ``ge``, ``gt`` and ``lt`` hold ``L >= R``, ``L > R``, ``L < R`` then.

    Timing: :func:`exact_cycles` from ``start`` to ``done`` (both included): ``L`` and ``R``
    are each built as ``(x0 x1) x2`` by MSB-first digit steps ``acc = (acc << r) + base * digit``.
    54 cycles at the default configuration with 4-bit digits (52-bit factors); 106 with the
    2-bit digits ClusterUnit uses.
    """

    def __init__(self, cfg: DREConfig, digit_bits: int = 4):
        require_config(cfg)
        if not isinstance(digit_bits, int) or not 1 <= digit_bits <= 8:
            raise ConfigError(f"digit_bits={digit_bits!r} must be an integer in 1 .. 8")
        self.cfg, self.r = cfg, digit_bits
        self.operand, self.product = exact_widths(cfg)
        super().__init__(
            {
                "x": In(unsigned(self.operand)).array(3),
                "y": In(unsigned(self.operand)).array(3),
                "start": In(1),
                "busy": Out(1),
                "done": Out(1),
                "ge": Out(1),
                "gt": Out(1),
                "lt": Out(1),
            }
        )

    def elaborate(self, platform):
        r, W = self.r, self.product
        ndig = -(-self.operand // r)
        m = Module()
        base = Signal(W)  # the product so far (x0, then x0 x1)
        acc = Signal(W)  # base * (the digits of the factor seen so far)
        lhs = Signal(W)
        step = Signal(range(4))  # 0: x1, 1: x2, 2: y1, 3: y2
        dig = Signal(range(ndig))  # digit index, MSB first
        # The factor of the current step, shifted left one digit per cycle (MSB-first digits
        # from a register, not a multiplexer on the inputs).
        factor = Signal(ndig * r)
        following = Signal(ndig * r)  # the next step's factor (y[2] after it: unused)
        with m.Switch(step):
            for s, f in enumerate((self.x[2], self.y[1], self.y[2], self.y[2])):
                with m.Case(s):
                    m.d.comb += following.eq(f)
        digit = factor[-r:]
        nxt = Signal(W)
        m.d.comb += nxt.eq((acc << r) + lut_mul(base, digit))

        with m.FSM(name="exact"):
            with m.State("IDLE"), m.If(self.start):
                m.d.sync += [base.eq(self.x[0]), acc.eq(0), step.eq(0), dig.eq(ndig - 1)]
                m.d.sync += factor.eq(self.x[1])
                m.next = "MULTIPLY"
            with m.State("MULTIPLY"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [acc.eq(nxt), dig.eq(dig - 1), factor.eq(factor << r)]
                with m.If(dig == 0):
                    m.d.sync += [acc.eq(0), dig.eq(ndig - 1), step.eq(step + 1)]
                    m.d.sync += factor.eq(following)
                    with m.Switch(step):
                        with m.Case(0, 2):
                            m.d.sync += base.eq(nxt)
                        with m.Case(1):
                            m.d.sync += [lhs.eq(nxt), base.eq(self.y[0])]
                        with m.Case(3):
                            m.d.sync += base.eq(nxt)
                            m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [
                    self.busy.eq(1),
                    self.done.eq(1),
                    self.ge.eq(lhs >= base),
                    self.gt.eq(lhs > base),
                    self.lt.eq(lhs < base),
                ]
                m.next = "IDLE"
        return m
