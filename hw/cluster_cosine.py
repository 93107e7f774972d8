"""Mantissa screen of the clustering unit's decisions: the three cosine tests and the three
most-similar comparisons, each answered "sure" or sent to the exact unit (``docs/cluster.md``)."""

from __future__ import annotations

from amaranth import Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arith import exp_shape, normalise
from model.dre.cluster import ClusterWidths
from model.dre.config import ConfigError, DREConfig, require_config

#: The most-similar comparisons the screen makes, as (a, b): ``more[j]`` is
#: ``more_similar(a, b)``, i.e. ``cos(k, S_a) > cos(k, S_b)``.
PAIRS = ((1, 0), (2, 0), (2, 1))
#: Threshold of each candidate (temporal, left, up): 0 ``tau_t``, 1 ``tau_s``.
TAU_OF = (0, 1, 1)
#: Cycles from ``dot`` / ``norm`` / ``key_norm`` to the outputs (the threshold operands one
#: cycle earlier).
LATENCY = 3


def check_mantissa_bits(mantissa_bits) -> None:
    """The screen's mantissa width ``M`` (6 .. 32 bits), for every unit built around it."""
    if not isinstance(mantissa_bits, int) or not 6 <= mantissa_bits <= 32:
        raise ConfigError(f"mantissa_bits={mantissa_bits!r} must be an integer in 6 .. 32")


def screen_exp_shape(wd: ClusterWidths, mantissa_bits: int) -> Shape:
    """Signed shape of every exponent inside :class:`ClusterCompare` (and of its ``t_exp``
    inputs): wide enough for every exponent sum of the screen."""
    return exp_shape(max(wd.sum_norm, wd.dot, 2 * wd.tau) + 2 * mantissa_bits, mantissa_bits)


def band_align(m: Module, am, ea, bm, eb, guard: int, name: str) -> dict:
    """The first half of :func:`band_compare`: exponent difference, alignment and the two
    guard-band sums, as combinational signals (``dgt``, ``dlt``, ``a``, ``b``, ``ag``, ``bg``),
    to be registered before :func:`band_decide` when the whole compare does not fit a cycle."""
    delta = Signal(signed(max(len(ea), len(eb)) + 1), name=f"{name}_delta")
    m.d.comb += delta.eq(ea - eb)
    w = len(am) + 2
    out = {
        "dgt": Signal(name=f"{name}_dgt"),
        "dlt": Signal(name=f"{name}_dlt"),
        "a": Signal(w, name=f"{name}_a"),
        "b": Signal(w, name=f"{name}_b"),
        "ag": Signal(w + 2, name=f"{name}_ag"),
        "bg": Signal(w + 2, name=f"{name}_bg"),
    }
    sh_a = Mux(delta > 0, delta, 0)[:2]
    sh_b = Mux(delta < 0, -delta, 0)[:2]
    m.d.comb += [
        out["dgt"].eq(delta >= 3),
        out["dlt"].eq(delta <= -3),
        out["a"].eq(am << sh_a),
        out["b"].eq(bm << sh_b),
    ]
    m.d.comb += [
        out["ag"].eq(out["a"] + (out["a"] >> guard) + 1),
        out["bg"].eq(out["b"] + (out["b"] >> guard)),
    ]
    return out


def band_decide(x: dict):
    """The second half of :func:`band_compare`: ``(gt, lt)`` from :func:`band_align`'s values."""
    gt = x["dgt"] | (~x["dlt"] & (x["a"] > x["bg"]))
    lt = x["dlt"] | (~x["dgt"] & (x["ag"] <= x["b"]))
    return gt, lt


def band_compare(m: Module, am, ea, bm, eb, guard: int, name: str):
    """Compare ``X = am 2^ea`` with ``Y = bm 2^eb`` knowing only that the true values lie in
    ``[X, X (1 + 2^-guard))`` and ``[Y, Y (1 + 2^-guard))``, with ``am``, ``bm`` both in
    ``[2^(w-2), 2^w)`` (``w = len(am)``).  Returns ``(gt, lt)``: ``gt`` the true left value is
    certainly above the true right one, ``lt`` certainly below; neither: inside the guard band.

    ``gt``: ``A > B + floor(B / 2^guard)`` implies ``A > B (1 + 2^-guard)``; ``lt``:
    ``A + floor(A / 2^guard) + 1 <= B`` implies ``A (1 + 2^-guard) < B``, with ``A``, ``B`` the
    two values aligned to the smaller exponent.  An exponent difference of 3 or more decides
    alone (the mantissa products differ by less than a factor 4)."""
    return band_decide(band_align(m, am, ea, bm, eb, guard, name))


def screen_operands(wd: ClusterWidths) -> dict:
    """The ports of a cosine test's token operands (the three candidates' ``dot``, its
    magnitude ``mag = |dot|`` and ``norm``, the key's norm): :class:`ClusterCompare` screens
    them, and
    :class:`hw.cluster_decide.ClusterDecide` recomputes unsure results from the same values.
    The thresholds come in as :class:`hw.cluster_threshold.ThresholdSquare` forms them:
    normalised for the screen, exact ``T^2`` for the recompute."""
    return {
        "dot": In(signed(wd.dot)).array(3),
        "mag": In(unsigned(wd.dot)).array(3),
        "norm": In(unsigned(wd.sum_norm)).array(3),
        "key_norm": In(unsigned(wd.key_norm)),
    }


class ClusterCompare(wiring.Component):
    """The decisions of one token against its three candidates, on ``M``-bit mantissas.

    For each candidate ``i`` (0 temporal with ``T = tau_t``, 1 left and 2 up with ``tau_s``) the
    cosine test of :func:`model.dre.cluster.cosine_passes`::

        pass <=> T == 0                                          if |k|^2 == 0 or |S_i|^2 == 0
        pass <=> k.S_i >= 0 and (k.S_i)^2 2^(2F) >= T^2 |k|^2 |S_i|^2               otherwise

    and for each pair ``(a, b)`` of :data:`PAIRS` the forced-merge comparison
    :func:`model.dre.cluster.more_similar` (``dot_a |dot_a| |S_b|^2 > dot_b |dot_b| |S_a|^2``).
    Signs, zeros, ``T = 0`` and identical candidates (same dot and norm) are decided exactly.
    Otherwise the products are formed from normalised mantissas (:func:`hw.arith.normalise`,
    ``M = mantissa_bits``); each true product lies in ``[p, p (1 + 2^-(M-1))^4)`` of its
    mantissa estimate ``p`` (at most four truncations per side), so with the guard
    ``2^-(M-4) >= (1 + 2^-(M-1))^4 - 1`` a comparison outside the band is exact
    (:func:`band_compare`), and one inside it is reported not ``sure``: the clustering unit then
    recomputes it with :class:`hw.cluster_exact.ExactCompare`.

    Interface
    ---------
    dot : In(signed) x 3, mag : In(unsigned) x 3, norm : In(unsigned) x 3
        ``k.S_i``, ``|k.S_i|`` and ``|S_i|^2`` of the three candidates (``mag`` is an input,
        registered with ``dot`` by :class:`hw.cluster_resolve.CandidateResolve`, so that no
        negation precedes the normalisation in stage 1).
    key_norm : In(unsigned)
        ``|k|^2``.
    t_mant : In(M) x 2, t_exp : In(screen_exp_shape) x 2, t_zero : In(2)
        The thresholds (0 ``tau_t``, 1 ``tau_s``; ``T`` with ``F = tau_frac_bits`` fraction
        bits) as :class:`hw.cluster_threshold.ThresholdSquare` forms them: ``normalise(T^2)``
        and ``T == 0``, **one cycle ahead** of the other inputs.
    passed, sure : Out(3)
        Per candidate: the test's result, valid where ``sure`` is set.
    more, more_sure : Out(3)
        Per pair of :data:`PAIRS`: ``more_similar(a, b)``, valid where ``more_sure`` is set.

    Timing: free-running, no handshake; the outputs answer the ``dot``, ``mag``, ``norm`` and
    ``key_norm`` of :data:`LATENCY` = 3 cycles before and the ``t_*`` of 4 cycles before.
    Stage 0 (the cycle before): the threshold operands registered (no logic: ``T^2`` and its
    normalisation are formed outside the token loop,
    :class:`hw.cluster_threshold.ThresholdSquare`).  Stage 1: normalise ``|dot_i|``,
    ``|S_i|^2``, ``|k|^2``; ``T^2 |k|^2`` once per threshold.  Stage 2: ``(k.S_i)^2`` and
    ``T^2 |k|^2 |S_i|^2`` per candidate.  Stage 3: the cosine band compares (registered),
    the cross products ``(k.S_a)^2 |S_b|^2`` of the pairs (reusing stage 2's squares), aligned
    and with their guard sums (registered).  Outputs: ``passed``/``sure`` are registers,
    ``more``/``more_sure`` one compare of registers.  DSP-sized products (``M x M``):
    2 + 3 + 3 + 6 = 14.  The stage registers have no reset: each is loaded in every cycle from
    the stage before, so after :data:`LATENCY` cycles every output answers inputs of the
    current run (the unit reads the outputs only for a token whose inputs were loaded
    :data:`LATENCY` cycles earlier); ``passed`` and ``sure`` keep theirs.
    """

    def __init__(self, cfg: DREConfig, mantissa_bits: int = 17):
        require_config(cfg)
        check_mantissa_bits(mantissa_bits)
        self.cfg, self.mant = cfg, mantissa_bits
        wd = self.widths = ClusterWidths.of(cfg)
        super().__init__(
            {
                **screen_operands(wd),
                "t_mant": In(mantissa_bits).array(2),
                "t_exp": In(screen_exp_shape(wd, mantissa_bits)).array(2),
                "t_zero": In(2),
                "passed": Out(3),
                "sure": Out(3),
                "more": Out(3),
                "more_sure": Out(3),
            }
        )

    def elaborate(self, platform):
        cfg, wd, M = self.cfg, self.widths, self.mant
        F = cfg.tau_frac_bits
        guard = M - 4
        es = screen_exp_shape(wd, M)
        m = Module()

        def reg(shape, name):  # stage registers: loaded in every cycle, no reset (Timing)
            return Signal(shape, name=name, reset_less=True)

        def top_bits(m, v, name):  # top M bits of a 2M-bit mantissa product, and the shift
            top = v[2 * M - 1]
            t = Signal(M, name=name)
            m.d.comb += t.eq(Mux(top, v >> M, v >> (M - 1)))
            return t, Mux(top, M, M - 1)

        # ---- stage 0: the threshold operands (normalised T^2, T == 0), one cycle ahead -----
        s0_mt, s0_et, s0_tz = [], [], []
        for j in range(2):
            r = [reg(M, f"s0_mt{j}"), reg(es, f"s0_et{j}"), reg(1, f"s0_tz{j}")]
            m.d.sync += [r[0].eq(self.t_mant[j]), r[1].eq(self.t_exp[j]), r[2].eq(self.t_zero[j])]
            s0_mt.append(r[0])
            s0_et.append(r[1])
            s0_tz.append(r[2])

        # ---- stage 1: normalise; T^2 |k|^2 per threshold ------------------------------------
        mk, ek = normalise(m, self.key_norm, M, "kn")
        s1_kz = reg(1, "s1_kz")  # |k|^2 == 0
        m.d.sync += s1_kz.eq(self.key_norm == 0)
        s1_z, s1_ez, s1_tz = [], [], []
        for j in range(2):
            z, ez, tz = reg(2 * M, f"s1_z{j}"), reg(es, f"s1_ez{j}"), reg(1, f"s1_tz{j}")
            m.d.sync += [z.eq(s0_mt[j] * mk), ez.eq(s0_et[j] + ek), tz.eq(s0_tz[j])]
            s1_z.append(z)
            s1_ez.append(ez)
            s1_tz.append(tz)
        s1 = []
        for i in range(3):
            dot, norm = self.dot[i], self.norm[i]
            ma, ea = normalise(m, self.mag[i], M, f"dot{i}")
            mn, en = normalise(m, norm, M, f"norm{i}")
            r = {
                "ma": reg(M, f"s1_ma{i}"),
                "ea": reg(es, f"s1_ea{i}"),
                "mn": reg(M, f"s1_mn{i}"),
                "en": reg(es, f"s1_en{i}"),
                "pos": reg(1, f"s1_pos{i}"),
                "neg": reg(1, f"s1_neg{i}"),
                "nz": reg(1, f"s1_nz{i}"),  # |S|^2 == 0
            }
            m.d.sync += [
                r["ma"].eq(ma),
                r["ea"].eq(ea),
                r["mn"].eq(mn),
                r["en"].eq(en),
                r["pos"].eq(dot > 0),
                r["neg"].eq(dot < 0),
                r["nz"].eq(norm == 0),
            ]
            s1.append(r)
        s1_eq = []
        for a, b in PAIRS:
            e = reg(1, f"s1_eq{a}{b}")
            m.d.sync += e.eq((self.dot[a] == self.dot[b]) & (self.norm[a] == self.norm[b]))
            s1_eq.append(e)

        # ---- stage 2: (k.S)^2 and T^2 |k|^2 |S|^2 ---------------------------------------------
        mtk, etk = [], []
        for j in range(2):
            v, sh = top_bits(m, s1_z[j], f"mtk{j}")
            e = Signal(es, name=f"etk{j}")
            m.d.comb += e.eq(s1_ez[j] + sh)
            mtk.append(v)
            etk.append(e)
        s2 = []
        for i in range(3):
            r1, j = s1[i], TAU_OF[i]
            r = {
                "p": reg(2 * M, f"s2_p{i}"),
                "ex": reg(es, f"s2_ex{i}"),
                "q": reg(2 * M, f"s2_q{i}"),
                "ey": reg(es, f"s2_ey{i}"),
                "mn": reg(M, f"s2_mn{i}"),
                "ea": reg(es, f"s2_ea{i}"),
                "en": reg(es, f"s2_en{i}"),
                "pos": reg(1, f"s2_pos{i}"),
                "neg": reg(1, f"s2_neg{i}"),
                "zero": reg(1, f"s2_zero{i}"),  # |k|^2 == 0 or |S|^2 == 0
                "tz": reg(1, f"s2_tz{i}"),
            }
            m.d.sync += [
                r["p"].eq(r1["ma"] * r1["ma"]),
                r["ex"].eq(2 * r1["ea"] + 2 * F),
                r["q"].eq(mtk[j] * r1["mn"]),
                r["ey"].eq(etk[j] + r1["en"]),
                r["mn"].eq(r1["mn"]),
                r["ea"].eq(r1["ea"]),
                r["en"].eq(r1["en"]),
                r["pos"].eq(r1["pos"]),
                r["neg"].eq(r1["neg"]),
                r["zero"].eq(s1_kz | r1["nz"]),
                r["tz"].eq(s1_tz[j]),
            ]
            s2.append(r)
        s2_eq = [reg(1, f"s2_eq{a}{b}") for a, b in PAIRS]
        m.d.sync += [d.eq(s) for d, s in zip(s2_eq, s1_eq, strict=True)]

        # ---- stage 3: the cosine tests (registered) --------------------------------------------
        for i, r in enumerate(s2):
            gt, lt = band_compare(m, r["p"], r["ex"], r["q"], r["ey"], guard, f"cos{i}")
            with m.If(r["zero"]):
                m.d.sync += [self.passed[i].eq(r["tz"]), self.sure[i].eq(1)]
            with m.Elif(r["neg"]):
                m.d.sync += [self.passed[i].eq(0), self.sure[i].eq(1)]
            with m.Elif(r["tz"]):
                m.d.sync += [self.passed[i].eq(1), self.sure[i].eq(1)]
            with m.Elif(~r["pos"]):  # k.S == 0 < T^2 |k|^2 |S|^2
                m.d.sync += [self.passed[i].eq(0), self.sure[i].eq(1)]
            with m.Else():
                m.d.sync += [self.passed[i].eq(gt), self.sure[i].eq(gt | lt)]

        # ---- stage 3: the most-similar cross products, aligned (registered); outputs ---------
        p1, ep1 = [], []
        for i, r in enumerate(s2):  # top M bits of (k.S)^2's mantissa product
            v, sh = top_bits(m, r["p"], f"p1_{i}")
            e = Signal(es, name=f"ep1_{i}")
            m.d.comb += e.eq(2 * r["ea"] + sh)
            p1.append(v)
            ep1.append(e)
        for j, (a, b) in enumerate(PAIRS):
            ra, rb = s2[a], s2[b]
            la = Signal(2 * M, name=f"sim{a}{b}_la")  # ~ (k.S_a)^2 |S_b|^2
            lb = Signal(2 * M, name=f"sim{a}{b}_lb")  # ~ (k.S_b)^2 |S_a|^2
            ela = Signal(es, name=f"sim{a}{b}_ela")
            elb = Signal(es, name=f"sim{a}{b}_elb")
            m.d.comb += [
                la.eq(p1[a] * rb["mn"]),
                lb.eq(p1[b] * ra["mn"]),
                ela.eq(ep1[a] + rb["en"]),
                elb.eq(ep1[b] + ra["en"]),
            ]
            comb = band_align(m, la, ela, lb, elb, guard, f"sim{a}{b}")
            x = {k: reg(len(v), f"s3_sim{a}{b}_{k}") for k, v in comb.items()}
            m.d.sync += [x[k].eq(v) for k, v in comb.items()]
            flags = {
                "eq": reg(1, f"s3_eq{a}{b}"),
                "apos": reg(1, f"s3_apos{a}{b}"),
                "aneg": reg(1, f"s3_aneg{a}{b}"),
                "bpos": reg(1, f"s3_bpos{a}{b}"),
                "bneg": reg(1, f"s3_bneg{a}{b}"),
            }
            m.d.sync += [
                flags["eq"].eq(s2_eq[j]),
                flags["apos"].eq(ra["pos"]),
                flags["aneg"].eq(ra["neg"]),
                flags["bpos"].eq(rb["pos"]),
                flags["bneg"].eq(rb["neg"]),
            ]
            gt, lt = band_decide(x)
            sa_pos, sa_neg = flags["apos"], flags["aneg"]
            sb_pos, sb_neg = flags["bpos"], flags["bneg"]
            with m.If(flags["eq"] | (~sa_pos & ~sa_neg & ~sb_pos & ~sb_neg)):  # equal: not more
                m.d.comb += [self.more[j].eq(0), self.more_sure[j].eq(1)]
            with m.Elif(sa_pos & sb_pos):
                m.d.comb += [self.more[j].eq(gt), self.more_sure[j].eq(gt | lt)]
            with m.Elif(sa_neg & sb_neg):  # -La > -Lb <=> Lb > La
                m.d.comb += [self.more[j].eq(lt), self.more_sure[j].eq(gt | lt)]
            with m.Else():  # signs differ: the sign decides
                m.d.comb += [
                    self.more[j].eq(sa_pos | (~sa_neg & sb_neg)),
                    self.more_sure[j].eq(1),
                ]
        return m
