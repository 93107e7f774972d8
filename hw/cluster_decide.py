"""Decision of the clustering unit: which candidate a token joins, from the screen's results,
with exact recomputes of the results the screen left inside its guard band."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.cluster_cosine import PAIRS, screen_operands
from hw.cluster_exact import ExactCompare
from model.dre.cluster import DROPPED, FORCED, JOINED, NEW, ClusterWidths
from model.dre.config import DREConfig, require_config

#: Digit width of the exact unit's shift-and-add multiplier (cycles against LUTs).
EXACT_DIGIT_BITS = 1

#: Candidates in test order: temporal, left, up.
TEMPORAL, LEFT, UP = 0, 1, 2


class ClusterDecide(wiring.Component):
    """The decision of one token among its three candidates (temporal, left, up), bit-exact
    with :class:`model.dre.cluster.ClusterRef`: the first eligible candidate whose cosine test
    passes is joined; if none and the table is not full a cluster is opened; if it is full, the
    most similar eligible candidate is joined (the walk ``best = 0; if more(1, best): best = 1;
    if more(2, best): best = 2``); with no eligible candidate the token is dropped.

    The test and comparison results come from :class:`hw.cluster_cosine.ClusterCompare` (the
    mantissa screen) with a *sure* flag each.  A result the decision needs that the screen left
    unsure is recomputed exactly by :class:`hw.cluster_exact.ExactCompare` (shared, one at a
    time) from the operands below, and replaces the screen's result; the decision waits.

    Interface
    ---------
    fresh : In(1)
        The screen's outputs (``passed`` .. ``more_sure``) are the token's in this cycle (the
        cycle after the screen's stage 3); they are kept (and overridden by recomputes) until
        the next ``fresh``.
    passed, sure, more, more_sure : In(3)
        The screen's outputs (``ClusterCompare``; ``more[j]`` compares ``PAIRS[j]``).
    active : In(1)
        A token waits for its decision (the unit's DEC state); recomputes start only then.
    elig : In(3)
        Candidate ``i`` exists and is not saturated.
    full : In(1)
        The table holds ``table_size`` clusters (no new one can be opened).
    dot : In(signed(dot)) x 3, mag : In(unsigned(dot)) x 3, norm : In(unsigned(sum_norm)) x 3,
    key_norm : In(unsigned)
        ``k.S_i``, ``|k.S_i|``, ``|S_i|^2``, ``|k|^2`` of the token (stable while ``active``):
        the exact unit's operands (``dot`` for the signs).
    t_sq : In(unsigned(2 tau)) x 2
        ``T^2`` of the token's thresholds (0 ``tau_t``, 1 ``tau_s``; stable while ``active``):
        the exact unit's operand, from registers (:class:`hw.cluster_threshold.ThresholdSquare`
        forms it outside the token loop).
    ready : Out(1)
        ``status`` .. ``new`` are final (no recompute needed or pending); meaningful while
        ``active`` (and from the cycle after ``fresh`` on).
    status : Out(2)
        ``JOINED`` / ``NEW`` / ``FORCED`` / ``DROPPED`` (``model.dre.cluster``).
    sel : Out(3)
        The candidate joined, one-hot: bit ``i`` is set if the token joins candidate ``i``
        (``JOINED``, ``FORCED``); 0 for ``NEW`` and ``DROPPED``.
    new : Out(1)
        ``status`` is ``NEW``.
    exact_count : Out(32)
        Recomputes started since reset (wraps).

    Timing
    ------
    ``ready`` .. ``new`` are combinational from the inputs and the kept results.  ``status`` ..
    ``new`` are formed as if every result were sure, so only while ``ready`` do they follow
    the rule (they are then, since every result the rule reads is sure).  A
    needed unsure result found in an ``active`` cycle is registered in that cycle, the exact
    unit starts in the next one and its result replaces the screen's when it is done:
    ``exact_cycles + 1`` cycles per recompute (:func:`hw.cluster_exact.exact_cycles`; 211 at
    the default), one recompute per needed unsure result.
    """

    def __init__(self, cfg: DREConfig):
        require_config(cfg)
        self.cfg = cfg
        wd = self.widths = ClusterWidths.of(cfg)
        super().__init__(
            {
                "fresh": In(1),
                "passed": In(3),
                "sure": In(3),
                "more": In(3),
                "more_sure": In(3),
                "active": In(1),
                "elig": In(3),
                "full": In(1),
                **screen_operands(wd),
                "t_sq": In(unsigned(2 * wd.tau)).array(2),
                "ready": Out(1),
                "status": Out(2),
                "sel": Out(3),
                "new": Out(1),
                "exact_count": Out(32),
            }
        )

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.exact = exact = ExactCompare(cfg, EXACT_DIGIT_BITS)

        # The screen's results of the token, kept while the decision waits (a recompute
        # overrides the one it recomputed, below).
        live = (self.passed, self.sure, self.more, self.more_sure)
        held = [Signal(3, name=f"held_{n}") for n in ("pass", "sure", "more", "msure")]
        c_pass, c_sure, c_more, c_msure = cur = [
            Signal(3, name=f"cur_{n}") for n in ("pass", "sure", "more", "msure")
        ]
        for c, lv, h in zip(cur, live, held, strict=True):
            m.d.comb += c.eq(Mux(self.fresh, lv, h))
            m.d.sync += h.eq(c)

        # Resolution: the first eligible candidate whose test passes; if none and the table is
        # full, the most similar (walk 0 -> 1 -> 2: more(1, 0), then more(2, best)).
        #
        # The outcome is formed without the sure flags, one-hot: when ready, every result the
        # walk reads is sure, and then this is the walk ("Fmax, seventeenth round" in
        # docs/cluster.md: the sure flags and the priority encoding of `which` were on the
        # routed worst path, from the screen to the decision's registers).
        el = self.elig
        ok = [el[i] & c_pass[i] for i in range(3)]
        none = ~(ok[0] | ok[1] | ok[2])
        joins = [ok[0], ~ok[0] & ok[1], ~ok[0] & ~ok[1] & ok[2]]
        j10, j20, j21 = (PAIRS.index(p) for p in ((1, 0), (2, 0), (2, 1)))
        top1 = el[1] & (~el[0] | c_more[j10])  # 1 is the best of 0 and 1
        top2 = el[2] & (~(el[0] | el[1]) | Mux(top1, c_more[j21], c_more[j20]))
        tops = [el[0] & ~top1 & ~top2, top1 & ~top2, top2]
        force = none & self.full
        m.d.comb += [
            self.sel.eq(Cat(*(joins[i] | (force & tops[i]) for i in range(3)))),
            self.new.eq(none & ~self.full),
        ]
        with m.If(~none):
            m.d.comb += self.status.eq(JOINED)
        with m.Elif(~self.full):
            m.d.comb += self.status.eq(NEW)
        with m.Elif(el != 0):
            m.d.comb += self.status.eq(FORCED)
        with m.Else():
            m.d.comb += self.status.eq(DROPPED)

        # A result the walk needs that the screen left unsure is recomputed exactly (`need`,
        # item 0-2: cosine test i; 3-5: the comparison PAIRS[item - 3]): a test up to the first
        # eligible candidate that passes surely; if none passes and the table is full, the
        # comparisons the walk makes.
        cos_need = Signal()
        cos_item = Signal(range(3))
        walk = m.If
        for i in range(3):  # the walk stops at the first eligible unsure test or pass
            with walk(el[i] & ~c_sure[i]):
                m.d.comb += [cos_need.eq(1), cos_item.eq(i)]
            with m.Elif(el[i] & c_pass[i]):
                pass  # a sure pass: no test after it is needed
            walk = m.Elif
        need10 = el[0] & el[1] & ~c_msure[j10]  # the first comparison is unsure
        need2 = (  # the second one is (against the best of 0 and 1)
            el[2] & (el[0] | el[1]) & ~Mux(top1, c_msure[j21], c_msure[j20])
        )
        item2 = Mux(top1, 3 + j21, 3 + j20)
        # Without a needed test, every eligible test is sure, and no pass means `none`.
        forced = ~cos_need & force & (el != 0)
        need = Signal()
        need_item = Signal(range(6))
        m.d.comb += [
            need.eq(cos_need | (forced & (need10 | need2))),
            need_item.eq(Mux(cos_need, cos_item, Mux(need10, 3 + j10, item2))),
            self.ready.eq(~need),
        ]

        # ---- exact recompute of one unsure result (shared, time-multiplexed) ----------------
        # A result found unsure while active is registered (``rc_item``) and the exact unit
        # starts in the next cycle (``rc_pend``), so that its operands come from registers.
        rc_item = Signal(range(6))
        rc_neg = Signal()  # a comparison of two negative dot products: more <=> L < R
        rc_pend = Signal()
        rc_req = Signal()
        m.d.comb += [
            rc_req.eq(self.active & need & ~exact.busy & ~rc_pend),
            exact.start.eq(rc_pend),
        ]
        dot, mag, norm = self.dot, self.mag, self.norm
        with m.Switch(rc_item):
            for i in range(3):  # (k.S)^2 2^(2F) >= T^2 |k|^2 |S|^2
                with m.Case(i):
                    m.d.comb += [
                        exact.x[0].eq(mag[i]),
                        exact.x[1].eq(mag[i]),
                        exact.x[2].eq(1 << (2 * cfg.tau_frac_bits)),
                        exact.y[0].eq(self.t_sq[0 if i == TEMPORAL else 1]),
                        exact.y[1].eq(self.key_norm),
                        exact.y[2].eq(norm[i]),
                    ]
            for j, (a, b) in enumerate(PAIRS):  # (k.S_a)^2 |S_b|^2 vs (k.S_b)^2 |S_a|^2
                with m.Case(3 + j):
                    m.d.comb += [
                        exact.x[0].eq(mag[a]),
                        exact.x[1].eq(mag[a]),
                        exact.x[2].eq(norm[b]),
                        exact.y[0].eq(mag[b]),
                        exact.y[1].eq(mag[b]),
                        exact.y[2].eq(norm[a]),
                    ]
        with m.If(rc_req):
            neg = Signal()
            with m.Switch(need_item):
                for j, (a, _) in enumerate(PAIRS):
                    with m.Case(3 + j):
                        m.d.comb += neg.eq(dot[a] < 0)
            m.d.sync += [rc_item.eq(need_item), rc_neg.eq(neg), rc_pend.eq(1)]
        with m.If(rc_pend):
            m.d.sync += [rc_pend.eq(0), self.exact_count.eq(self.exact_count + 1)]
        with m.If(exact.done), m.Switch(rc_item):  # overrides the hold above
            for i in range(3):
                with m.Case(i):
                    m.d.sync += [held[0][i].eq(exact.ge), held[1][i].eq(1)]
            for j in range(3):
                with m.Case(3 + j):
                    m.d.sync += [
                        held[2][j].eq(Mux(rc_neg, exact.lt, exact.gt)),
                        held[3][j].eq(1),
                    ]
        return m
