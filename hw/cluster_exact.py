"""Exact, time-multiplexed comparison of two triple products: the clustering unit's fallback for
decisions that fall inside the mantissa screen's guard band (``docs/cluster.md``)."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
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
    """Cycles from ``start`` to ``done`` (both included), ``n = ceil(operand / digit_bits)``:
    ``1 + 4 n + 1`` with 1-bit digits (ripple accumulate); ``1 + 4 (n + 2) + 2`` with wider
    digits (carry-save accumulate: each product is resolved in two cycles, and the final
    comparison takes one more)."""
    operand, _ = exact_widths(cfg)
    n = -(-operand // digit_bits)
    return 2 + 4 * n if digit_bits == 1 else 3 + 4 * (n + 2)


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
    With 1-bit digits (ClusterUnit's, :data:`hw.cluster_decide.EXACT_DIGIT_BITS`) ``acc`` is
    one register and each step one carry chain: 210 cycles at the default configuration
    (52-bit factors).  With wider digits ``acc`` is kept in carry-save form (two registers; a
    step is a tree of carry-save adders, no carry chain), each product is resolved into
    ``base`` in two cycles of half-width carry chains, and the comparison of ``L`` and ``R`` is
    registered in halves before ``done``: 63 cycles at the default with 4-bit digits
    (``1 + 4 x (13 + 2) + 2``).
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
        nxt = Signal(W)  # base * factor, at the end of a product

        def next_product():  # nxt is complete: load base (or lhs), go on with the next factor
            m.d.sync += [dig.eq(ndig - 1), step.eq(step + 1), factor.eq(following)]
            with m.Switch(step):
                with m.Case(0, 2):
                    m.d.sync += base.eq(nxt)
                with m.Case(1):
                    m.d.sync += [lhs.eq(nxt), base.eq(self.y[0])]
                with m.Case(3):
                    m.d.sync += base.eq(nxt)

        # acc = base * (the digits of the factor seen so far): one register (r = 1) or two
        acc = [Signal(W)] if r == 1 else [Signal(W), Signal(W)]

        with m.FSM(name="exact"):
            with m.State("IDLE"), m.If(self.start):
                m.d.sync += [base.eq(self.x[0]), step.eq(0), dig.eq(ndig - 1)]
                m.d.sync += [factor.eq(self.x[1]), *(a.eq(0) for a in acc)]
                m.next = "MULTIPLY"
            if r == 1:
                # one carry chain a step
                (acc,) = acc
                m.d.comb += nxt.eq((acc << r) + lut_mul(base, digit))
                with m.State("MULTIPLY"):
                    m.d.comb += self.busy.eq(1)
                    m.d.sync += [acc.eq(nxt), dig.eq(dig - 1), factor.eq(factor << r)]
                    with m.If(dig == 0):
                        m.d.sync += acc.eq(0)
                        next_product()
                        with m.If(step == 3):
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
            else:
                # acc = sum + carry (modulo 2^W): a step compresses (sum << r), (carry << r) and
                # the digit's r partial products (digit bit j ? base << j : 0) to two with
                # carry-save adders; RESOLVE_LO / RESOLVE_HI add them in two halves of k bits.
                k = W // 2
                acc_s, acc_c = acc
                lo = Signal(k + 1)  # the low half of sum + carry, with its carry out
                terms = [(acc_s << r)[:W], (acc_c << r)[:W]]
                terms += [Mux(digit[j], base << j, 0)[:W] for j in range(r)]
                while len(terms) > 2:
                    reduced = []
                    for i in range(0, len(terms) - 2, 3):
                        a, b, c = terms[i : i + 3]
                        reduced += [a ^ b ^ c, (((a & b) | (a & c) | (b & c)) << 1)[:W]]
                    terms = reduced + terms[len(terms) - len(terms) % 3 :]
                m.d.comb += nxt.eq(Cat(lo[:k], acc_s[k:] + acc_c[k:] + lo[k]))
                # the comparison of L and R, registered in halves (each one carry chain)
                gt_hi, lt_hi, gt_lo, lt_lo = Signal(), Signal(), Signal(), Signal()
                with m.State("MULTIPLY"):
                    m.d.comb += self.busy.eq(1)
                    m.d.sync += [acc_s.eq(terms[0]), acc_c.eq(terms[1])]
                    m.d.sync += [dig.eq(dig - 1), factor.eq(factor << r)]
                    with m.If(dig == 0):
                        m.next = "RESOLVE_LO"
                with m.State("RESOLVE_LO"):
                    m.d.comb += self.busy.eq(1)
                    m.d.sync += lo.eq(acc_s[:k] + acc_c[:k])
                    m.next = "RESOLVE_HI"
                with m.State("RESOLVE_HI"):
                    m.d.comb += self.busy.eq(1)
                    m.d.sync += [acc_s.eq(0), acc_c.eq(0)]
                    next_product()
                    m.next = "MULTIPLY"
                    with m.If(step == 3):
                        m.next = "COMPARE"
                with m.State("COMPARE"):
                    m.d.comb += self.busy.eq(1)
                    m.d.sync += [
                        gt_hi.eq(lhs[k:] > base[k:]),
                        lt_hi.eq(lhs[k:] < base[k:]),
                        gt_lo.eq(lhs[:k] > base[:k]),
                        lt_lo.eq(lhs[:k] < base[:k]),
                    ]
                    m.next = "DONE"
                with m.State("DONE"):
                    eq_hi = ~gt_hi & ~lt_hi
                    m.d.comb += [
                        self.busy.eq(1),
                        self.done.eq(1),
                        self.gt.eq(gt_hi | (eq_hi & gt_lo)),
                        self.lt.eq(lt_hi | (eq_hi & lt_lo)),
                        self.ge.eq(~self.lt),
                    ]
                    m.next = "IDLE"
        return m
