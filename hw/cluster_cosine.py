"""Mantissa screen of the clustering unit's decisions: the three cosine tests and the three
most-similar comparisons, each answered "sure" or sent to the exact unit (``docs/cluster.md``)."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arith import bit_length_grouped, exp_shape, nonzero_groups, normalise_terms
from model.dre.cluster import ClusterWidths
from model.dre.config import ConfigError, DREConfig, require_config

#: The most-similar comparisons the screen makes, as (a, b): ``more[j]`` is
#: ``more_similar(a, b)``, i.e. ``cos(k, S_a) > cos(k, S_b)``.
PAIRS = ((1, 0), (2, 0), (2, 1))
#: Threshold of each candidate (temporal, left, up): 0 ``tau_t``, 1 ``tau_s``.
TAU_OF = (0, 1, 1)
#: Cycles from ``dot`` / ``mag`` / ``norm`` / ``key_norm`` to the outputs (the threshold
#: operands one cycle earlier); :class:`ClusterCompare`'s docstring lists the stages.
LATENCY = 7


def check_mantissa_bits(mantissa_bits) -> None:
    """The screen's mantissa width ``M`` (6 .. 32 bits), for every unit built around it."""
    if not isinstance(mantissa_bits, int) or not 6 <= mantissa_bits <= 32:
        raise ConfigError(f"mantissa_bits={mantissa_bits!r} must be an integer in 6 .. 32")


def screen_exp_shape(wd: ClusterWidths, mantissa_bits: int) -> Shape:
    """Signed shape of every exponent inside :class:`ClusterCompare` (and of its ``t_exp``
    inputs): wide enough for every exponent sum of the screen."""
    return exp_shape(max(wd.sum_norm, wd.dot, 2 * wd.tau) + 2 * mantissa_bits, mantissa_bits)


def band_exponents(m: Module, delta, name: str) -> dict:
    """The first part of :func:`band_compare`, from the exponent difference ``delta = ea - eb``
    alone: ``dgt`` / ``dlt`` (the difference decides alone) and the alignment shifts ``sa``,
    ``sb`` (2 bits each), as combinational signals; registered before :func:`band_align` in
    :class:`ClusterCompare`."""
    out = {
        "dgt": Signal(name=f"{name}_dgt"),
        "dlt": Signal(name=f"{name}_dlt"),
        "sa": Signal(2, name=f"{name}_sa"),
        "sb": Signal(2, name=f"{name}_sb"),
    }
    m.d.comb += [
        out["dgt"].eq(delta >= 3),
        out["dlt"].eq(delta <= -3),
        out["sa"].eq(Mux(delta > 0, delta, 0)[:2]),
        out["sb"].eq(Mux(delta < 0, -delta, 0)[:2]),
    ]
    return out


def band_align(m: Module, am, bm, sh: dict, guard: int, name: str) -> dict:
    """The second part of :func:`band_compare`: the mantissas aligned by
    :func:`band_exponents`' shifts ``sh`` and the two guard-band sums, as combinational signals
    (``a``, ``b``, ``ag``, ``bg``), registered before :func:`band_decide` in
    :class:`ClusterCompare`."""
    w = len(am) + 2
    out = {
        "a": Signal(w, name=f"{name}_a"),
        "b": Signal(w, name=f"{name}_b"),
        "ag": Signal(w + 2, name=f"{name}_ag"),
        "bg": Signal(w + 2, name=f"{name}_bg"),
    }
    m.d.comb += [
        out["a"].eq(am << sh["sa"]),
        out["b"].eq(bm << sh["sb"]),
    ]
    m.d.comb += [
        out["ag"].eq(out["a"] + (out["a"] >> guard) + 1),
        out["bg"].eq(out["b"] + (out["b"] >> guard)),
    ]
    return out


def band_decide(x: dict):
    """The last part of :func:`band_compare`: ``(gt, lt)`` from :func:`band_exponents`' and
    :func:`band_align`'s values (``dgt``, ``dlt``, ``a``, ``b``, ``ag``, ``bg``)."""
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
    alone (the mantissa products differ by less than a factor 4).  Combinational, in three
    parts (:func:`band_exponents`, :func:`band_align`, :func:`band_decide`) that
    :class:`ClusterCompare` spreads over two stages and its outputs."""
    delta = Signal(signed(max(len(ea), len(eb)) + 1), name=f"{name}_delta")
    m.d.comb += delta.eq(ea - eb)
    sh = band_exponents(m, delta, name)
    return band_decide({**sh, **band_align(m, am, bm, sh, guard, name)})


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


def screen_nonzero(wd: ClusterWidths) -> dict:
    """The ports of :class:`ClusterCompare`'s group flags: ``group_nonzero`` of ``mag``,
    ``norm`` and ``key_norm`` (:func:`hw.arith.group_nonzero`)."""
    return {
        "mag_nz": In(nonzero_groups(wd.dot)).array(3),
        "norm_nz": In(nonzero_groups(wd.sum_norm)).array(3),
        "key_norm_nz": In(nonzero_groups(wd.key_norm)),
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
    Otherwise the products are formed from normalised mantissas (:func:`hw.arith.normalise_terms`,
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
    mag_nz, norm_nz : In x 3, key_norm_nz : In
        :func:`hw.arith.group_nonzero` of ``mag``, ``norm`` and ``key_norm`` (bit ``g``: bits
        ``5 g`` .. ``5 g + 4`` are not all zero), registered with them by
        :class:`hw.cluster_resolve.CandidateResolve`: stage 1 finds each operand's leading
        group from these registers, not from an OR tree over the operand ("Fmax, twenty-first
        round" in ``docs/cluster.md``).  Flags that disagree with their operand give undefined
        results.
    t_mant : In(M) x 2, t_exp : In(screen_exp_shape) x 2, t_zero : In(2)
        The thresholds (0 ``tau_t``, 1 ``tau_s``; ``T`` with ``F = tau_frac_bits`` fraction
        bits) as :class:`hw.cluster_threshold.ThresholdSquare` forms them: ``normalise(T^2)``
        and ``T == 0``, **one cycle ahead** of the other inputs.
    passed, sure : Out(3)
        Per candidate: the test's result, valid where ``sure`` is set.
    more, more_sure : Out(3)
        Per pair of :data:`PAIRS`: ``more_similar(a, b)``, valid where ``more_sure`` is set.

    Timing: free-running, no handshake; the outputs answer the ``dot``, ``mag``, ``norm`` and
    ``key_norm`` of :data:`LATENCY` = 7 cycles before and the ``t_*`` of 8 cycles before.
    Every multiplier has registers straight in front of both inputs and straight behind its
    product (no logic between), so that the ECP5 flow folds them into the MULT18X18D's own
    input and output registers; operand logic and compares sit in the stages around them.

    * Stage 0 (the cycle before): the threshold operands registered (no logic: ``T^2`` and its
      normalisation are formed outside the token loop,
      :class:`hw.cluster_threshold.ThresholdSquare`).
    * Stage 1: first half of the normalisation of ``|dot_i|`` and ``|k|^2``
      (:func:`hw.arith.normalise_terms`: leading-one groups, found from the group flags
      ``*_nz``, and their pair terms) and the bit lengths of all seven operands (from the same
      flags, :func:`hw.arith.bit_length_grouped`); ``|S_i|^2`` registered as it is; the zero /
      sign / identity flags.
    * Stage 2: the mantissas of ``|dot_i|`` and ``|k|^2`` (the OR of the terms; the first
      multipliers' inputs) and of ``|S_i|^2`` (the shift by its bit length); the exponent
      differences of the six compares but for the products' top bits.
    * Stage 3: multipliers only: ``T^2 |k|^2`` once per threshold, ``(k.S_i)^2`` per candidate.
    * Stage 4: the top ``M`` bits of those products (the second multipliers' inputs); the
      exponent differences completed with the products' top bits.
    * Stage 5: multipliers: ``T^2 |k|^2 |S_i|^2`` per candidate, the cross products
      ``(k.S_a)^2 |S_b|^2`` and ``(k.S_b)^2 |S_a|^2`` of the pairs; beside them the exponent
      decisions and alignment shifts of the six compares (:func:`band_exponents`).
    * Stage 6: the six compares' mantissas aligned and their guard sums (:func:`band_align`).
    * Stage 7, the outputs: ``passed``/``sure`` and ``more``/``more_sure``, one compare of
      stage 6's registers each (:func:`band_decide` and the exact decisions for signs, zeros,
      ``T = 0`` and identical candidates), registered (until the tenth Fmax round of
      ``docs/cluster.md`` they were combinational, and the compare's carry chains lay in the
      same cycle as the decision).

    DSP-sized products (``M x M``): 2 + 3 + 3 + 6 = 14.  The stage registers have no reset:
    each is loaded in every cycle from the stage before, so after :data:`LATENCY` cycles every
    output answers inputs of the current run (the unit reads the outputs only for a token whose
    inputs were loaded :data:`LATENCY` cycles earlier).
    """

    def __init__(self, cfg: DREConfig, mantissa_bits: int = 17):
        require_config(cfg)
        check_mantissa_bits(mantissa_bits)
        self.cfg, self.mant = cfg, mantissa_bits
        wd = self.widths = ClusterWidths.of(cfg)
        super().__init__(
            {
                **screen_operands(wd),
                **screen_nonzero(wd),
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

        def stage(n: int, prev: dict, carry: str, **new) -> dict:
            """The registers of stage ``n``: the values of ``prev`` named in ``carry`` (by name
            less the candidate / threshold / pair digits) carried on, and the ``new`` ones (a
            value, or ``(shape, value)``), by name."""
            regs = {}
            kept = {k: v for k, v in prev.items() if k.rstrip("0123456789") in carry.split()}
            for k, v in {**kept, **new}.items():
                shape, v = v if isinstance(v, tuple) else (Value.cast(v).shape(), v)
                regs[k] = reg(shape, f"s{n}_{k}")
                m.d.sync += regs[k].eq(v)
            return regs

        def top_bits(v, name):  # top M bits of a 2M-bit mantissa product (its exponent + M - 1
            t = Signal(M, name=name)  # + the product's top bit, folded into the differences)
            m.d.comb += t.eq(Mux(v[2 * M - 1], v >> M, v >> (M - 1)))
            return t

        # ---- stage 0: the threshold operands (normalised T^2, T == 0), one cycle ahead -----
        s0 = stage(
            0,
            {},
            "",
            **{f"mt{j}": self.t_mant[j] for j in range(2)},
            **{f"et{j}": (es, self.t_exp[j]) for j in range(2)},
            **{f"tz{j}": self.t_zero[j] for j in range(2)},
        )

        # ---- stage 1: normalise |dot_i| and |k|^2, first half; bitlen |S_i|^2 -------------
        # (exponents as bit lengths here: exponent = bitlen - M, the constants folded below)
        # (the leading groups from the group flags registered in T1, see Interface)
        kt, kbl = normalise_terms(m, self.key_norm, M, "kn", nonzero=self.key_norm_nz)
        new = {"kbl": kbl, "kz": ~self.key_norm_nz.any()}
        new |= {f"kt{t}": v for t, v in enumerate(kt)}
        for i in range(3):
            at, abl = normalise_terms(m, self.mag[i], M, f"dot{i}", nonzero=self.mag_nz[i])
            new |= {f"at{i}_{t}": v for t, v in enumerate(at)}
            norm = self.norm[i]
            nbl = bit_length_grouped(m, norm, self.norm_nz[i], f"norm{i}")
            new |= {
                f"abl{i}": abl,
                f"nv{i}": norm,
                f"nbl{i}": nbl,
                f"pos{i}": self.dot[i] > 0,
                f"neg{i}": self.dot[i] < 0,
                f"nz{i}": ~self.norm_nz[i].any(),  # |S|^2 == 0
            }
        for a, b in PAIRS:
            new[f"eq{a}{b}"] = (self.dot[a] == self.dot[b]) & (self.norm[a] == self.norm[b])
        s1 = stage(1, s0, "mt et tz", **new)

        # ---- stage 2: the mantissas (|dot_i|, |k|^2 into the multipliers' inputs; |S_i|^2);
        # the exponent differences but for the products' top bits -------------------------
        ds = signed(es.width + 2)  # exponent differences
        new = {"mk": (M, Cat(*(s1[f"kt{t}"].any() for t in range(M))))}
        for i in range(3):
            j = TAU_OF[i]
            new[f"ma{i}"] = (M, Cat(*(s1[f"at{i}_{t}"].any() for t in range(M))))
            new[f"mn{i}"] = (M, ((s1[f"nv{i}"] << M) >> s1[f"nbl{i}"])[:M])  # as normalise
            new[f"zero{i}"] = s1["kz"] | s1[f"nz{i}"]  # |k|^2 == 0 or |S|^2 == 0
            new[f"tc{i}"] = s1[f"tz{j}"]  # T == 0, per candidate
            # (k.S)^2 2^(2F) vs T^2 |k|^2 |S|^2: 2 ea + 2F - (et + ek + M - 1 + top + en), with
            # ea, ek, en = bitlen - M: 2 abl + 2F + 1 - M - nbl - (et + kbl) - top
            e = 2 * s1[f"abl{i}"] + (2 * F + 1 - M) - s1[f"nbl{i}"]
            new[f"gc{i}"] = (ds, e - (s1[f"et{j}"] + s1["kbl"]))
        for a, b in PAIRS:  # (2 ea_a + M - 1 + top_a + en_b) - (2 ea_b + M - 1 + top_b + en_a)
            e = (2 * s1[f"abl{a}"] + s1[f"nbl{b}"]) - (2 * s1[f"abl{b}"] + s1[f"nbl{a}"])
            new[f"gs{a}{b}"] = (ds, e)
        s2 = stage(2, s1, "mt pos neg eq", **new)

        # ---- stage 3: T^2 |k|^2 per threshold, (k.S_i)^2 per candidate (multipliers only) ---
        new = {}
        for j in range(2):
            new[f"z{j}"] = (2 * M, s2[f"mt{j}"] * s2["mk"])
        for i in range(3):
            new[f"p{i}"] = (2 * M, s2[f"ma{i}"] * s2[f"ma{i}"])
        s3 = stage(3, s2, "mn gc gs pos neg zero tc eq", **new)

        # ---- stage 4: the top M bits of those products (the next multipliers' inputs), and the
        # exponent differences with the products' top bits ---------------------------------
        new, top = {}, {}
        for j in range(2):
            new[f"mtk{j}"] = top_bits(s3[f"z{j}"], f"mtk{j}")
            top[f"z{j}"] = s3[f"z{j}"][2 * M - 1]
        for i in range(3):
            new[f"p1_{i}"] = top_bits(s3[f"p{i}"], f"p1_{i}")
            top[f"p{i}"] = s3[f"p{i}"][2 * M - 1]
            new[f"cos{i}_delta"] = (ds, s3[f"gc{i}"] - top[f"z{TAU_OF[i]}"])
        for a, b in PAIRS:
            new[f"sim{a}{b}_delta"] = (ds, s3[f"gs{a}{b}"] + top[f"p{a}"] - top[f"p{b}"])
        s4 = stage(4, s3, "p mn pos neg zero tc eq", **new)

        # ---- stage 5: T^2 |k|^2 |S_i|^2 and the pairs' cross products (multipliers); the
        # exponent decisions and shifts of all six compares -----------------------------------
        new = {}
        for i in range(3):
            new[f"q{i}"] = (2 * M, s4[f"mtk{TAU_OF[i]}"] * s4[f"mn{i}"])
            sh = band_exponents(m, s4[f"cos{i}_delta"], f"cos{i}")
            new |= {f"cos{i}_{k}": v for k, v in sh.items()}
        for a, b in PAIRS:
            new[f"la{a}{b}"] = (2 * M, s4[f"p1_{a}"] * s4[f"mn{b}"])  # ~ (k.S_a)^2 |S_b|^2
            new[f"lb{a}{b}"] = (2 * M, s4[f"p1_{b}"] * s4[f"mn{a}"])  # ~ (k.S_b)^2 |S_a|^2
            sh = band_exponents(m, s4[f"sim{a}{b}_delta"], f"sim{a}{b}")
            new |= {f"sim{a}{b}_{k}": v for k, v in sh.items()}
        s5 = stage(5, s4, "p pos neg zero tc eq", **new)

        # ---- stage 6: all six compares aligned, with their guard sums ------------------------
        new = {}
        for i in range(3):
            sh = {k: s5[f"cos{i}_{k}"] for k in ("sa", "sb")}
            x = band_align(m, s5[f"p{i}"], s5[f"q{i}"], sh, guard, f"cos{i}")
            new |= {f"cos{i}_{k}": v for k, v in x.items()}
        for a, b in PAIRS:
            sh = {k: s5[f"sim{a}{b}_{k}"] for k in ("sa", "sb")}
            x = band_align(m, s5[f"la{a}{b}"], s5[f"lb{a}{b}"], sh, guard, f"sim{a}{b}")
            new |= {f"sim{a}{b}_{k}": v for k, v in x.items()}
        names = [f"cos{i}" for i in range(3)] + [f"sim{a}{b}" for a, b in PAIRS]
        flags = " ".join(f"{n}_{k}" for n in names for k in ("dgt", "dlt"))
        s6 = stage(6, s5, "pos neg zero tc eq " + flags, **new)

        # ---- stage 7 (the outputs): one compare of stage 6's registers each, registered -------
        passed, sure, more, more_sure = (
            Signal(3, name=n) for n in ("passed", "sure", "more", "more_sure")
        )

        def decide(name):
            return band_decide({k: s6[f"{name}_{k}"] for k in ("dgt", "dlt", "a", "b", "ag", "bg")})

        for i in range(3):
            gt, lt = decide(f"cos{i}")
            with m.If(s6[f"zero{i}"]):
                m.d.comb += [passed[i].eq(s6[f"tc{i}"]), sure[i].eq(1)]
            with m.Elif(s6[f"neg{i}"]):
                m.d.comb += [passed[i].eq(0), sure[i].eq(1)]
            with m.Elif(s6[f"tc{i}"]):
                m.d.comb += [passed[i].eq(1), sure[i].eq(1)]
            with m.Elif(~s6[f"pos{i}"]):  # k.S == 0 < T^2 |k|^2 |S|^2
                m.d.comb += [passed[i].eq(0), sure[i].eq(1)]
            with m.Else():
                m.d.comb += [passed[i].eq(gt), sure[i].eq(gt | lt)]
        for j, (a, b) in enumerate(PAIRS):
            gt, lt = decide(f"sim{a}{b}")
            sa_pos, sa_neg = s6[f"pos{a}"], s6[f"neg{a}"]
            sb_pos, sb_neg = s6[f"pos{b}"], s6[f"neg{b}"]
            with m.If(s6[f"eq{a}{b}"] | (~sa_pos & ~sa_neg & ~sb_pos & ~sb_neg)):  # equal
                m.d.comb += [more[j].eq(0), more_sure[j].eq(1)]
            with m.Elif(sa_pos & sb_pos):
                m.d.comb += [more[j].eq(gt), more_sure[j].eq(gt | lt)]
            with m.Elif(sa_neg & sb_neg):  # -La > -Lb <=> Lb > La
                m.d.comb += [more[j].eq(lt), more_sure[j].eq(gt | lt)]
            with m.Else():  # signs differ: the sign decides
                m.d.comb += [
                    more[j].eq(sa_pos | (~sa_neg & sb_neg)),
                    more_sure[j].eq(1),
                ]
        m.d.sync += [
            self.passed.eq(passed),
            self.sure.eq(sure),
            self.more.eq(more),
            self.more_sure.eq(more_sure),
        ]
        return m
