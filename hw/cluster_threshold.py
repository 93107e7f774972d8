"""Squares of the clustering unit's thresholds, exact and normalised, formed outside the token
loop (``docs/cluster.md``, "Fmax, seventh round")."""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arith import lut_mul, normalise_by_onehot, square_bitlen_onehot
from hw.cluster_cosine import check_mantissa_bits, screen_exp_shape
from model.dre.cluster import ClusterWidths
from model.dre.config import DREConfig, require_config

#: Cycles from :class:`ThresholdSquare`'s ``tau`` to its ``t_sq`` (exact ``T^2``) ...
SQUARE_LATENCY = 1
#: ... and to its ``t_mant``, ``t_exp``, ``t_zero`` (the screen's threshold operands).
NORMALISE_LATENCY = 2


class ThresholdSquare(wiring.Component):
    """``T^2`` of the two thresholds (0 ``tau_t``, 1 ``tau_s``), exact and normalised, in a
    free-running two-stage pipeline: the clustering unit forms them from the token in its IN
    register, so that the token loop (the screen's stage 0, the exact recompute's operands)
    reads registers instead of a LUT product and a normalisation (``docs/cluster.md``, "Fmax,
    seventh round").

    Interface
    ---------
    tau : In(unsigned(tau)) x 2
        The thresholds ``T`` (``F = tau_frac_bits`` fraction bits).
    t_sq : Out(unsigned(2 tau)) x 2
        ``T^2`` (a LUT product, :func:`hw.arith.lut_mul`), registered: the ``tau`` of
        :data:`SQUARE_LATENCY` = 1 cycle before.
    t_mant : Out(M) x 2, t_exp : Out(screen_exp_shape) x 2, t_zero : Out(2)
        ``normalise(T^2)`` (:func:`hw.arith.normalise_by_onehot`: ``M``-bit mantissa, exponent;
        0, -M for ``T = 0``) and ``T == 0``, registered: the ``tau`` of
        :data:`NORMALISE_LATENCY` = 2 cycles before (``t_sq`` of the cycle before): the
        threshold inputs of :class:`hw.cluster_cosine.ClusterCompare`.

    Timing: no handshake; a ``tau`` present from cycle ``c`` on is answered by ``t_sq`` from
    ``c + 1`` and by ``t_mant`` .. ``t_zero`` from ``c + 2`` (the clustering unit's IN register
    holds a token from the cycle before its start at the latest; the start loads ``t_sq`` into
    the token's bank, the cycle after it ``t_mant`` .. ``t_zero``).  Stage 1: the LUT product
    and, beside it, ``bitlen(T^2)`` one-hot from ``T``'s bits
    (:func:`hw.arith.square_bitlen_onehot`, a few LUT levels: no leading-one search over the
    product); stage 2: the normalisation by that one-hot (:func:`hw.arith.normalise_by_onehot`,
    an AND-OR per mantissa and exponent bit).  Registers without reset (loaded in every cycle).
    No DSP block (the product is shift-and-add).
    """

    def __init__(self, cfg: DREConfig, mantissa_bits: int = 17):
        require_config(cfg)
        check_mantissa_bits(mantissa_bits)
        self.cfg, self.mant = cfg, mantissa_bits
        wd = self.widths = ClusterWidths.of(cfg)
        super().__init__(
            {
                "tau": In(unsigned(wd.tau)).array(2),
                "t_sq": Out(unsigned(2 * wd.tau)).array(2),
                "t_mant": Out(mantissa_bits).array(2),
                "t_exp": Out(screen_exp_shape(wd, mantissa_bits)).array(2),
                "t_zero": Out(2),
            }
        )

    def elaborate(self, platform):
        M = self.mant
        m = Module()
        for j in range(2):
            sq = Signal.like(self.t_sq[j], name=f"sq{j}", reset_less=True)
            z = Signal(name=f"z{j}", reset_less=True)  # T == 0, registered with sq
            hot = Signal(len(sq), name=f"hot{j}", reset_less=True)  # bit k-1: bitlen(T^2) = k
            m.d.sync += [
                sq.eq(lut_mul(self.tau[j], self.tau[j])),
                z.eq(self.tau[j] == 0),
                hot.eq(Cat(*square_bitlen_onehot(self.tau[j])[1:])),
            ]
            mt, et = normalise_by_onehot(sq, [Const(0, 1), *hot], M)
            mr = Signal(M, name=f"mt{j}", reset_less=True)
            er = Signal.like(self.t_exp[j], name=f"et{j}", reset_less=True)
            zr = Signal(name=f"tz{j}", reset_less=True)
            m.d.sync += [mr.eq(mt), er.eq(et), zr.eq(z)]
            m.d.comb += [
                self.t_sq[j].eq(sq),
                self.t_mant[j].eq(mr),
                self.t_exp[j].eq(er),
                self.t_zero[j].eq(zr),
            ]
        return m
