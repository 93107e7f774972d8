"""DRE selection v2: a token budget over entries with member counts, several query vectors.

Bit-exact with :func:`model.dre.ref.select_tokens` (``k_cap = cfg.k_cap``); the rule, the early
exit and its proof are in ``docs/select.md``.  Pipelined for the ECP5 (``docs/select.md``,
"v2 pipeline"): every memory output is registered, and each stage holds at most one carry chain
(an add, a compare) plus a few LUT levels of selection.
"""

from __future__ import annotations

from contextlib import contextmanager

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.arith import tree_level
from hw.bitplane_dot import dot_shape, tree_depth
from hw.layouts import (
    CYCLES_BITS,
    TOKEN_ERROR_LAYOUT,
    Kind,
    budget_bits,
    token_query_layout,
    token_result_layout,
)
from hw.plane_store import PlaneReadSignature
from hw.soft_score import SWEEP_MAX, SWEEP_SCORE, SoftScore
from hw.topk import TopKPipe
from model.dre.config import ConfigError, DREConfig
from model.dre.tokens import SOFT_E

#: Cycles a plane/count read of the store takes (``PlaneStore(..., out_reg=True)``).
STORE_LATENCY = 2
#: Register copies of the ranking's input key (``TopKPipe(key_copies=...)``): it drives
#: ``k_cap + 1`` carry chains, and its route to them limited the clock (docs/select.md)
TOPK_KEY_COPIES = 4
#: Entries the look-ahead may have in flight to the soft-score unit: the depth of the unit's
#: input FIFO, into which the issue stage writes directly (``SoftScore(in_depth=...)``)
SOFT_FEED_DEPTH = 16
#: The control states, one flip-flop each (``IDLE`` set at reset)
STATES = (
    "IDLE",
    "START",
    "INIT",
    "INIT_WAIT",
    "PREP",
    "SETUP",
    "PASS",
    "PASS_END",
    "THRESH",
    "SOFT_SETUP",
    "SOFT_SWEEP",
    "SOFT_WAIT",
    "SCORE_SETUP",
    "SCORE",
    "OUT",
    "TRAILER",
)


def value_shape(cfg: DREConfig):
    """Signed shape of every partial, bound and normalised bound (``P``, ``L``, ``U``, ``SL``,
    ``SU``, ``MU0``, ``T``).

    ``|P| <= d * 2^(bq+bk-2)``; ``|L|, |U| < d * 2^(bq+bk-1)`` (``r < 2^(bk-1)`` and
    ``|Qpos|, |Qneg| <= d * 2^(bq-1)``); ``MU0 < d * 2^(bq+bk-2)``; so ``|SL|, |SU| < d *
    2^(bq+bk)``, which ``bq + bk + bitlen(d) + 1`` signed bits hold; one more bit of slack.
    The ranking also holds soft scores (``< q_max * 2^(SOFT_E+1)``, :class:`hw.soft_score.
    SoftScore`'s ``score_bits``), so the shape is at least one bit wider than those.
    """
    soft_bits = SOFT_E + 1 + cfg.q_max.bit_length()
    return signed(max(cfg.bq + cfg.bk + cfg.d.bit_length() + 2, soft_bits + 1))


def lookahead_stages(cfg: DREConfig) -> int:
    """Register stages from the list read to the issue stage (see :class:`SelectTokensCore`)."""
    return 6 + tree_depth(cfg.q_max) + 1


def dot_stages() -> int:
    """Register stages from the issue stage to the write-back (D0, D0b, D1 .. D9, W)."""
    return 12


def cycle_formula(cfg: DREConfig, n: int, n_q: int, *, soft: bool = False) -> int:
    """Cycles of a retrieval without early exit, every one of the ``n`` entries live and the
    budget taking all of them (``tests/test_hw_tokens.py`` pins it; docs/select.md derives it):
    ``11 + 2*Q*g + bk*(N*Q*g + LA + 17) + R*(N + LA + 7) + N`` with ``LA`` the look-ahead depth
    (:func:`lookahead_stages`) and ``R = ceil(N / k_cap)`` output rounds.  ``soft``: the soft
    score adds its three sweeps, ``N*(1 + 2*Q) + Z*Q + F + 2*LA + 7`` (``Z``, ``F``:
    :class:`SoftScore`'s ``Z_CYCLES`` and ``FIXED_CYCLES``; ``2*LA + 7``: two sweep changes that
    wait for the look-ahead to drain, the set-up cycles and the registered end of the wait);
    with ``soft`` and ``n_q = 1`` on more than 12 entries the unit may wait 1 or 2 cycles more
    for the feed's credit loop (docs/select.md, "The soft score in the selector"))."""
    g, la = cfg.groups, lookahead_stages(cfg)
    rounds = -(-n // cfg.k_cap)
    total = 11 + 2 * n_q * g + cfg.bk * (n * n_q * g + la + 17) + rounds * (n + la + 7) + n
    if soft:
        z, f = SoftScore.Z_CYCLES, SoftScore.FIXED_CYCLES
        total += n * (1 + 2 * n_q) + z * n_q + f + 2 * la + 7
    return total


def _lt(a, b):
    """``a < b`` as the sign of ``a - b`` computed one bit wider (Amaranth widens the
    difference, so it never overflows): on ECP5 a plain carry chain whose last sum output is
    the result, with no overflow logic behind it (Yosys maps a signed compare to a subtract
    plus ``N ^ V`` logic after the chain's carry-out)."""
    return (a - b)[-1]


def _pick(m: Module, values, idx, n: int, shape, name: str):
    """``values[idx]`` for ``idx < n`` as a named combinational signal (a switch, no array)."""
    out = Signal(shape, name=name)
    with m.Switch(idx):
        for k in range(n):
            with m.Case(k):
                m.d.comb += out.eq(values[k])
    return out


class SelectTokensCore(wiring.Component):
    """v2 retrieval over entries ``0 .. N-1`` of a plane store and a count memory.

    Interface
    ---------
    query : In(stream.Signature(hw.layouts.token_query_layout(cfg)))
        ``queries`` (the first ``n_q`` of ``q_max``), ``budget``, ``n``, ``no_exit``,
        ``raw_max``.  Accepted only when idle.  ``n = 0``, ``n > n_max``, ``n_q = 0`` or
        ``n_q > q_max`` skip the retrieval: only a trailer with the ``error`` flags, ``cycles =
        2``.  ``budget = 0`` with early exit gives a trailer at once too (no error, no plane read).
    result : Out(stream.Signature(hw.layouts.token_result_layout(cfg)))
        ``RECORD`` beats (``id``, ``take``) in selection order, then one ``TRAILER``
        (``planes_read``, ``cycles``, ``error``).  ``ready`` may be low at any time.
    store : Out(PlaneReadSignature(cfg))
        Plane reads (one plane of one entry) and member counts with **two** cycles of latency,
        both stages advancing with ``en`` / ``count_en``; the bias port is not used.  Connect to
        a :class:`PlaneStore` built with ``counts=True, out_reg=True``.
    busy : Out(1)
        From the query handshake to the trailer's handshake; keys and counts must not change.

    Pipeline
    --------
    *Look-ahead* (stalls as one, ``adv``): A0 list read (entry ``e`` of the alive list; the
    first pass takes ``e`` itself), A1 list data (memory register), A1' registered, A2 entry
    ``j`` registered and the store / count / partial reads issued, A3 memory registers, A4
    memory output registers (block RAM output registers on ECP5), A5 plane multiplexer and the
    per-query terms ``P[c, j] + addend_c`` (``addend_c = r'*Qpos_c - ML_c`` in a pass,
    ``-MU_c`` in the score sweep), ``ceil(log2 q_max)`` stages of a pairwise maximum tree that
    also ANDs ``term < T``, then the issue stage I, which registers the skip (``SU_j < T``, or
    empty in the first pass) and ranking (after the last emitted record) decisions.  I holds
    an entry for ``n_q * groups`` cycles, issuing one (query, lane group) micro-op per cycle,
    or for one cycle if skipped.  ``adv = ~I.valid | skip | last micro-op | score sweep`` is a
    register (computed from the next values), replicated per register group.
    *Dot and bounds* (never stalls): D0 query ``c`` (with its elements' ``x > 0``) and the plane
    bits of group ``g``, D0b the lane group of the query and each lane's select (the plane bit,
    or in init the element's sign test), D1 lane products, D2 / D3 the two halves of the lane
    adder tree, D4 accumulator, D5 shift by ``p``, D6 partial ``P +- (dot << p)``, D7 ``L``,
    ``U`` and ``SL_c = L - MU'_c`` (one add: ``r*Qneg_c - MU'_c`` is a per-pass constant), D8 their
    compares with the ``ML``, ``MU`` maxima and the running maximum of ``SL`` over the queries
    (bypassed: the same maximum can be updated back to back), D9 the updates and the new
    partials, W write-back (partial memory, next alive list), then :class:`TopKPipe` (T0 its
    input register, the key in ``TOPK_KEY_COPIES`` copies; T1 compare, T2 insert).  The
    output's record ``valid`` is a register.

    Control
    -------
    One flip-flop per state of :data:`STATES` (one-hot, ``IDLE`` at reset).  A state's
    actions are enabled by its own flop; a transition clears it and sets the next state's, so
    no encoded state is decoded in front of the next-state logic.  Conditions that come from
    far units are registered first (``drained_r``, ``e_zero``, ``soft_go``, ``no_walk``), and
    the flags that leave the core (``idle``: ``query.ready``; ``OUT`` / ``TRAILER``: the
    result beat) are state flops.

    Schedule
    --------
    * ``init``: ``2 * n_q * groups`` micro-ops (``Qpos_c``, ``Qneg_c`` on the dot pipeline),
      drain, one cycle to form ``(2^(bk-1) - 1) * Qpos_c`` and ``... * Qneg_c``.
    * one pass per plane ``p = bk-1 .. 0``: one set-up cycle, the pass (``n_q * groups``
      cycles per entry that reads the plane, one per entry dropped or empty), the pipeline
      drain and one cycle for the next pass's constants (:func:`cycle_formula`).  After every
      pass but the last with early exit, the threshold walk: the ranking is shifted out one
      entry a cycle while a registered copy of the head is summed (``T`` is the ``SL`` of the
      entry at which the counts reach the budget; no drop if the slots run out): ``3 + w``
      cycles, ``w <= k_cap``.
    * output rounds: one set-up cycle, one sweep over the survivors ranking their exact scores
      (one entry a cycle plus the drain), then records shifted out of the ranking while the
      budget is not met, one per cycle while ``ready``.  If the ranking overflowed and the
      budget is still not met another round ranks the survivors after the last one emitted.

    ``cycles`` in the trailer: from the query handshake (cycle c0) to the first cycle the
    trailer is valid (c1), ``c1 - c0``, less the cycles in which a record waited for ``ready``.
    """

    def __init__(self, cfg: DREConfig):
        if not isinstance(cfg, DREConfig):
            raise TypeError(f"SelectTokensCore needs a DREConfig, got {cfg!r}")
        if cfg.n_max < 2:
            raise ConfigError(
                f"SelectTokensCore: n_max={cfg.n_max} must be >= 2 (a 1-entry memory has no "
                f"address)"
            )
        self.cfg = cfg
        super().__init__(
            {
                "query": In(stream.Signature(token_query_layout(cfg))),
                "result": Out(stream.Signature(token_result_layout(cfg))),
                "store": Out(PlaneReadSignature(cfg)),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        n_max, bk, groups, qm, lanes = cfg.n_max, cfg.bk, cfg.groups, cfg.q_max, cfg.lanes
        d, bq, ib = cfg.d, cfg.bq, cfg.index_bits
        vs = value_shape(cfg)
        vec = data.ArrayLayout(vs, qm)
        dshape = dot_shape(d, bq)
        cshape = unsigned(cfg.count_bits)
        bshape = unsigned(budget_bits(cfg) + 1)
        qrange = range(max(2, qm))
        grange = range(max(2, groups))

        topk = m.submodules.topk = TopKPipe(
            cfg.k_cap, vs, ib, cshape, in_reg=True, key_copies=min(TOPK_KEY_COPIES, cfg.k_cap)
        )
        # no_rw_check: no entry is read and written in the same cycle (an entry's partials are
        # read once per pass, written after its micro-ops; passes are separated by the drain;
        # the alive lists read one bank and write the other), so synthesis adds no bypass logic
        rw = {"no_rw_check": 1}
        part_mem = m.submodules.partial = Memory(shape=vec, depth=n_max, init=[], attrs=rw)
        part_rd, part_wr = part_mem.read_port(), part_mem.write_port()
        # two alive lists, addressed {bank, position}
        list_mem = m.submodules.alive = Memory(shape=ib, depth=2 << ib, init=[], attrs=rw)
        list_rd, list_wr = list_mem.read_port(), list_mem.write_port()
        # the soft score (``qy.soft``): the unit, whose input FIFO the issue stage writes
        # directly, and the scores by alive-list position (written in its SCORE sweep, read to
        # rank)
        soft = m.submodules.soft = SoftScore(
            q_max=qm,
            s_bits=vs.width,
            count_bits=cfg.count_bits,
            n_max=n_max,
            in_depth=SOFT_FEED_DEPTH,
        )
        sc_mem = m.submodules.soft_scores = Memory(
            shape=unsigned(soft.score_bits), depth=n_max, init=[], attrs=rw
        )
        sc_rd, sc_wr = sc_mem.read_port(), sc_mem.write_port()

        # ---- retrieval registers --------------------------------------------------------------
        qy = Signal(token_query_layout(cfg))
        err = Signal(TOKEN_ERROR_LAYOUT)
        q_pos = Signal(data.ArrayLayout(dshape, qm))
        q_neg = Signal(data.ArrayLayout(dshape, qm))
        planes_read = Signal(token_result_layout(cfg).members["planes_read"])
        cycles = Signal(CYCLES_BITS)
        qmask = Signal(qm)  # query k counts (k < n_q)
        nq_m1 = Signal(qrange)  # n_q - 1
        # raw_max, a copy registered every cycle (the query register is held from the cycle
        # after IDLE, and the first use is in SETUP, cycles later): placed by the ~200 bound
        # bits it selects rather than by the query register
        raw = Signal()
        m.d.sync += raw.eq(qy.raw_max)
        m.d.comb += [soft.n_q.eq(qy.n_q), soft.gain.eq(qy.gain)]
        skip_all = Signal()  # the query has an error flag or nothing to select
        # the control states, one-hot: one flop each, a transition clears the current state's
        # flop and sets the next one's, so a flop's next value is an OR of (predecessor and
        # condition) terms with no decode of an encoded state in front (``docs/select.md``)
        st = {s: Signal(init=int(s == "IDLE"), name=f"st_{s.lower()}") for s in STATES}
        idle = st["IDLE"]  # it also enables the query capture
        # per query and element: x > 0 (the init micro-ops sum the positive elements), captured
        # with the query so that the lane products' select is a register two stages later
        q_gt = Signal(data.ArrayLayout(d, qm))
        with m.If(idle):
            m.d.sync += qy.eq(self.query.payload)
            for k in range(qm):
                x = self.query.payload.queries[k]
                m.d.sync += q_gt[k].eq(Cat(x[i] > 0 for i in range(d)))

        # ---- pass state -----------------------------------------------------------------------
        p = Signal(range(bk), init=bk - 1)
        first = Signal()  # p == bk - 1 (a register)
        bank = Signal()
        n_cur = Signal(range(n_max + 1))
        n_next = Signal(range(n_max + 1))
        score_mode = Signal()  # the look-ahead feeds the ranking (score sweep), not the dot unit
        rqn = Signal(vec)  # (2^p - 1) * Qneg_c: L of this pass
        rqp = Signal(vec)  # (2^p - 1) * Qpos_c: U of this pass
        rqp_prev = Signal(vec)  # (2^(p+1) - 1) * Qpos_c: U of the previous pass
        ml = Signal(vec)  # ML_c of the previous pass (0 with raw_max)
        mu_sub = Signal(vec)  # MU'_c (MU0 before the first pass), 0 with raw_max
        ml_new = Signal(vec)  # ML_c, MU_c of this pass, accumulating
        mu_new = Signal(vec)
        addend = Signal(vec)  # look-ahead term: P[c, j] + addend[c]
        thr = Signal(vs)
        thr_valid = Signal()
        rem = Signal(bshape)  # budget less the counts walked (threshold walk)
        next_pass = Signal()  # PASS_END with p > 0 (a register: the per-pass updates' enable)
        tphase = Signal(2)  # THRESH: h valid (bit 0), h_end / h_ge valid (bit 1)
        h = Signal(topk.layout)  # registered head of the ranking (threshold walk)
        h_end, h_ge, h_key = Signal(), Signal(), Signal(vs)  # h's end-of-walk tests, registered

        # ---- soft-score state -------------------------------------------------------------------
        soft_feed = Signal()  # the look-ahead feeds the soft unit (its three sweeps)
        soft_rank = Signal()  # the score sweeps rank the stored soft scores
        kind = Signal(2)  # the sweep being fed: SWEEP_MAX, SWEEP_SUM, SWEEP_SCORE
        # issued at A0 before the last cycle, not yet in the unit (the last cycle's issue is
        # ``feed_issued``: counted a cycle late, so A0's decision reaches one flop)
        feed_inflight = Signal(range(SOFT_FEED_DEPTH + 1))
        feed_issued = Signal()
        feed_credit = Signal()
        fcount = Signal(range(n_max + 1))  # beats of this sweep handed to the unit
        n_m1 = Signal(range(n_max))  # n_cur - 1: the sweep's last beat
        wpos = Signal(range(n_max + 1))  # soft scores written

        # ---- output state ---------------------------------------------------------------------
        left = Signal(bshape)  # budget - taken
        met = Signal()  # taken == budget
        last_valid = Signal()
        last_key = Signal(vs)
        last_id = Signal(ib)

        # ---- look-ahead: A0 .. A5, max tree, issue stage I ------------------------------------
        look = data.StructLayout(
            {
                "valid": 1,
                "j": unsigned(ib),
                "word": unsigned(d),
                "count": cshape,
                "zero": 1,
                "part": vec,
            }
        )
        # the FSM is in PASS, SCORE or SOFT_SWEEP: a register set by the state before and cleared
        # with the transition out (a state decode here reached A0's enables through ~2 LUTs)
        sweep = Signal()
        adv = Signal(init=1)
        adv_load, adv_hold = Signal(), Signal()  # next adv after loading / holding an entry
        advs = []

        def adv_copy(name):
            """A copy of ``adv`` for one group of registers (fan-out): it follows the same
            next-state function from its own value, so synthesis keeps it separate."""
            a = Signal(init=1, name=name)
            m.d.sync += a.eq(Mux(a, adv_load, adv_hold))
            advs.append(a)
            return a

        adv_a5 = adv_copy("adv_a5")
        e = Signal(range(n_max + 1))
        e_left = Signal(range(n_max + 1))  # n_cur - e
        # e_left == 0, a register kept from the next value (an OR over e_left in front of
        # A0's valid and the sweep's end reached the FSM through four LUTs)
        e_zero = Signal(init=1)
        a0_valid = Signal()
        a1_valid, a1_e = Signal(), Signal(ib)
        # memory read data registers have no reset (ECP5: block RAM output registers)
        a1r_valid, a1r_e, a1r_data = Signal(), Signal(ib), Signal(ib, reset_less=True)
        a2_valid, a2_j, a2_e = Signal(), Signal(ib), Signal(ib)
        a3_valid, a3_j = Signal(), Signal(ib)
        a4_valid, a4_j = Signal(), Signal(ib)
        part4 = Signal(vec, reset_less=True)
        score4 = Signal(soft.score_bits, reset_less=True)
        a5 = Signal(look)
        use_e = Signal()
        m.d.comb += [
            a0_valid.eq(sweep & ~e_zero & (~soft_feed | feed_credit)),
            use_e.eq(first & ~score_mode),
            list_rd.addr.eq(Cat(e[:ib], bank)),
            list_rd.en.eq(adv),
            self.store.addr.eq(a2_j),
            self.store.plane.eq(p),
            self.store.en.eq(adv),
            self.store.count_addr.eq(a2_j),
            self.store.count_en.eq(adv),
            part_rd.addr.eq(a2_j),
            part_rd.en.eq(adv),
            sc_rd.addr.eq(a2_e),
            sc_rd.en.eq(adv),
        ]
        terms = []
        for k in range(qm):
            t = Signal(vs, name=f"term{k}")
            terms.append(t)
        with m.If(adv):
            m.d.sync += [
                a1_valid.eq(a0_valid),
                a1_e.eq(e[:ib]),
                a1r_valid.eq(a1_valid),
                a1r_e.eq(a1_e),
                a1r_data.eq(list_rd.data),
                a2_valid.eq(a1r_valid),
                a2_j.eq(Mux(use_e, a1r_e, a1r_data)),
                a2_e.eq(a1r_e),
                a3_valid.eq(a2_valid),
                a3_j.eq(a2_j),
                a4_valid.eq(a3_valid),
                a4_j.eq(a3_j),
                part4.eq(part_rd.data),
                score4.eq(sc_rd.data),
            ]
            with m.If(a0_valid):
                m.d.sync += [e.eq(e + 1), e_left.eq(e_left - 1), e_zero.eq(e_left == 1)]
        with m.If(adv_a5):
            m.d.sync += [
                a5.valid.eq(a4_valid),
                a5.j.eq(a4_j),
                a5.word.eq(self.store.word),
                a5.count.eq(self.store.count),
                a5.zero.eq(self.store.count == 0),
                a5.part.eq(part4),
            ]
            # queries k >= n_q repeat query 0 (the maximum is unchanged): their partials are
            # query 0's (written so at W) and so are their addends (the per-pass constants ML,
            # U and the score sweep's MU copy query 0's), so the adder reads the block RAM's
            # data with no multiplexer on either side but the soft-rank one
            for k in range(qm):
                m.d.sync += terms[k].eq(Mux(soft_rank, score4, part4[k] + addend[k]))
        stage, level = a5, 0
        tree_stages = []
        # below[i]: terms[i] < T, computed beside the maximum (max(a, b) < T iff a < T and
        # b < T), so that the drop decision reaches the issue stage without a carry chain
        below = [None] * len(terms)

        # lt_last[i] / le_last[i]: terms[i] < / <= the last emitted record's key, likewise beside
        # the maximum (max(a, b) < x iff a < x and b < x; the same for <=), so that the issue
        # stage's "after the last record" test is LUT logic on registers
        lt_last = [None] * len(terms)
        j_gt = None
        le_last = [None] * len(terms)

        def lt_thr(k):
            return _lt(terms[k], thr) if below[k] is None else below[k]

        def lt_lk(k):
            return _lt(terms[k], last_key) if lt_last[k] is None else lt_last[k]

        def le_lk(k):
            return ~_lt(last_key, terms[k]) if le_last[k] is None else le_last[k]

        while len(terms) > 1:  # pairwise maximum, one level per stage
            level += 1
            adv_t = adv_copy(f"adv_mx{level}")
            nxt = Signal(look, name=f"mx{level}")
            new_terms, new_below, new_lt, new_le = [], [], [], []
            for i in range(0, len(terms), 2):
                pair = [i, i + 1] if i + 1 < len(terms) else [i]
                t = Signal(vs, name=f"mx{level}_{i // 2}")
                b = Signal(name=f"mx{level}_{i // 2}_below")
                lt = Signal(name=f"mx{level}_{i // 2}_ltlast")
                le = Signal(name=f"mx{level}_{i // 2}_lelast")
                with m.If(adv_t):
                    m.d.sync += [
                        b.eq(Cat(lt_thr(x) for x in pair).all()),
                        lt.eq(Cat(lt_lk(x) for x in pair).all()),
                        le.eq(Cat(le_lk(x) for x in pair).all()),
                    ]
                    if len(pair) == 2:
                        m.d.sync += t.eq(Mux(_lt(terms[i], terms[i + 1]), terms[i + 1], terms[i]))
                    else:
                        m.d.sync += t.eq(terms[i])
                new_terms.append(t)
                new_below.append(b)
                new_lt.append(lt)
                new_le.append(le)
            jg = Signal(name=f"mx{level}_jgt")  # j > last_id, for the issue stage
            with m.If(adv_t):
                m.d.sync += [nxt.eq(stage), jg.eq(_lt(last_id, stage.j))]
            j_gt = jg
            stage, terms, below = nxt, new_terms, new_below
            lt_last, le_last = new_lt, new_le
            tree_stages.append(nxt)
        mx = terms[0]

        ci = Signal(look)  # issue stage I
        ci_mx = Signal(vs)
        ci_skip, ci_after = Signal(), Signal()  # skip: dropped (SU < T) or empty (first pass)
        skip_in = Signal()
        m.d.comb += skip_in.eq(Mux(first, stage.zero, thr_valid & lt_thr(0)))
        jgt_ci = _lt(last_id, stage.j) if j_gt is None else j_gt
        adv_ci = adv_copy("adv_ci")
        with m.If(adv_ci):
            m.d.sync += [
                ci.eq(stage),
                ci_mx.eq(mx),
                ci_skip.eq(skip_in),
                # mx == last_key iff mx <= last_key and not mx < last_key
                ci_after.eq(~last_valid | lt_lk(0) | (le_lk(0) & jgt_ci)),
            ]

        # micro-op counters of the issue stage (also the init sweep)
        qc = Signal(qrange)
        g = Signal(grange)
        init_neg = Signal()
        in_init = st["INIT"]  # issues the init sweep (a skipped retrieval never enters INIT)
        last_g, last_c, issue = Signal(), Signal(), Signal()
        fin = Signal()  # registered: (g, qc) is the last micro-op of an entry
        fin0 = Signal()  # fin at (0, 0): one micro-op per entry
        fin_next = Signal()
        g_next, qc_next = Signal.like(g), Signal.like(qc)
        m.d.comb += [
            last_g.eq(g == groups - 1),
            last_c.eq(qc == nq_m1),
            issue.eq(in_init | (ci.valid & ~ci_skip & ~score_mode)),
            g_next.eq(Mux(last_g, 0, g + 1)),
            qc_next.eq(Mux(last_g, Mux(last_c, 0, qc + 1), qc)),
            fin_next.eq((g_next == groups - 1) & (qc_next == nq_m1)),
        ]
        with m.If(issue):
            m.d.sync += [g.eq(g_next), qc.eq(qc_next), fin.eq(fin_next)]
        qc_q = Signal(qrange)  # a copy of qc for the 512-bit query multiplexer (fan-out)
        with m.If(issue & last_g):
            m.d.sync += qc_q.eq(Mux(qc_q == nq_m1, 0, qc_q + 1))
        # adv = ~I.valid | skip | fin | score_mode, kept in a register (it enables ~1000 flops
        # and every memory read): its next value from the next values of those four.  Loading
        # an entry resets the counters to (0, 0) (fin0); holding one issues (fin_next).
        m.d.comb += [
            adv_load.eq(~stage.valid | skip_in | fin0 | score_mode),
            adv_hold.eq(fin_next | score_mode),
        ]
        m.d.sync += adv.eq(Mux(adv, adv_load, adv_hold))

        # ---- dot and bounds: D0 .. D9, W -------------------------------------------------------
        meta = data.StructLayout(
            {
                "valid": 1,
                "init": 1,
                "neg": 1,
                "c": unsigned(len(Signal(qrange))),
                "g": unsigned(len(Signal(grange))),
                "first_g": 1,
                "last_g": 1,
                "first_c": 1,
                "last_c": 1,
                "j": unsigned(ib),
                "count": cshape,
                "base": vs,
            }
        )
        dm = [Signal(meta, name=f"d{i}") for i in range(11)]
        d0 = dm[0]
        qword = Signal(data.ArrayLayout(signed(bq), d))  # D0: query c
        qword_gt = Signal(d)  # D0: its elements > 0
        bits0 = Signal(lanes)
        qlanes = Signal(data.ArrayLayout(signed(bq), lanes))  # D0b: its lane group g
        lane_on = Signal(lanes)  # D0b: lane i's product is x (else 0)
        m.d.sync += [
            d0.valid.eq(issue),
            d0.init.eq(in_init),
            d0.neg.eq(init_neg),
            d0.c.eq(qc),
            d0.g.eq(g),
            d0.first_g.eq(g == 0),
            d0.last_g.eq(last_g),
            d0.first_c.eq(qc == 0),
            d0.last_c.eq(last_c),
            d0.j.eq(ci.j),
            d0.count.eq(ci.count),
            d0.base.eq(Mux(first, 0, _pick(m, ci.part, qc, qm, vs, "base_sel"))),
        ]
        with m.Switch(qc_q):
            for k in range(qm):
                with m.Case(k):
                    m.d.sync += [qword.eq(qy.queries[k]), qword_gt.eq(q_gt[k])]
        with m.Switch(g):
            for gg in range(groups):
                with m.Case(gg):
                    m.d.sync += bits0.eq(ci.word[gg * lanes : (gg + 1) * lanes])
        with m.Switch(d0.g):
            for gg in range(groups):
                with m.Case(gg):
                    lo = gg * lanes * bq
                    m.d.sync += qlanes.eq(qword.as_value()[lo : lo + lanes * bq])
                    for i in range(lanes):  # init: the positive / negative elements
                        e_i = gg * lanes + i
                        sign = qword[e_i][-1]
                        init_on = Mux(d0.neg, sign, qword_gt[e_i])
                        m.d.sync += lane_on[i].eq(Mux(d0.init, init_on, bits0[i]))
        for i in range(1, 11):
            m.d.sync += dm[i].eq(dm[i - 1])

        # D1: lane products (init: the query's positive / negative elements)
        prods = Signal(data.ArrayLayout(signed(bq), lanes))
        for i in range(lanes):
            m.d.sync += prods[i].eq(Mux(lane_on[i], qlanes[i], 0))
        # D2, D3: the adder tree in two halves
        levels = tree_depth(lanes)
        sums = [prods[i] for i in range(lanes)]
        for _ in range((levels + 1) // 2):
            sums = tree_level(sums)
        regs = []
        for i, s in enumerate(sums):
            r = Signal(s.shape(), name=f"sum2_{i}")
            m.d.sync += r.eq(s)
            regs.append(r)
        while len(regs) > 1:
            regs = tree_level(regs)
        partial = Signal(regs[0].shape())
        m.d.sync += partial.eq(regs[0])
        # D4: accumulator over the lane groups
        acc = Signal(dshape)
        d3, d4 = dm[4], dm[5]
        with m.If(d3.valid):
            m.d.sync += acc.eq(Mux(d3.first_g, 0, acc) + partial)
        # D5: init: Qpos_c / Qneg_c; pass: shift by p (dot products of the last group only)
        d5 = dm[6]
        m.d.sync += d5.valid.eq(d4.valid & d4.last_g & ~d4.init)
        for k in range(qm):
            with m.If(d4.valid & d4.last_g & d4.init & (d4.c == k)):
                with m.If(d4.neg):
                    m.d.sync += q_neg[k].eq(acc)
                with m.Else():
                    m.d.sync += q_pos[k].eq(acc)
        sh = Signal(vs)
        m.d.sync += sh.eq(acc << p)
        # rqs_c = (2^p - 1)*Qneg_c - MU'_c, a per-pass constant (registered from rqn and mu_sub,
        # which are set at least LA cycles before a pass's first micro-op reaches D7), so that
        # SL = P' + rqs_c is one add at D7 and D8 is free for the compare of the running maximum
        rqs = Signal(vec)
        m.d.sync += [rqs[k].eq(rqn[k] - mu_sub[k]) for k in range(qm)]
        rqn_sel, rqp_sel, rqs_sel = Signal(vs), Signal(vs), Signal(vs)
        m.d.sync += [
            rqn_sel.eq(_pick(m, rqn, d5.c, qm, vs, "rqn_pick")),
            rqp_sel.eq(_pick(m, rqp, d5.c, qm, vs, "rqp_pick")),
            rqs_sel.eq(_pick(m, rqs, d5.c, qm, vs, "rqs_pick")),
        ]
        # D6: the new partial (the sign plane subtracts)
        new6 = Signal(vs)
        m.d.sync += new6.eq(Mux(first, d5.base - sh, d5.base + sh))
        # D7: L, U and SL_c = L - MU'_c (SL of an invalid slot is the minimum: never taken)
        d6, d8 = dm[7], dm[9]
        vmin = -(1 << (vs.width - 1))  # below every bound (|SL|, |L|, |U| < 2^(width-2))
        lo7, hi7, sl7, new7 = Signal(vs), Signal(vs), Signal(vs), Signal(vs)
        first7 = Signal()  # D7 holds a valid first query of an entry
        m.d.sync += [
            lo7.eq(new6 + rqn_sel),
            hi7.eq(new6 + rqp_sel),
            sl7.eq(Mux(d6.valid, new6 + rqs_sel, vmin)),
            new7.eq(new6),
            first7.eq(d6.valid & d6.first_c),
        ]
        # D8, D9: the running maxima (ML_c, MU_c per query, SL over the queries of an entry).
        # Each update is split in two cycles: at D8 the value is registered together with the
        # decision to take it, its compare against the maximum as it will be when the value
        # reaches D9 (the value at D8 if that one is taken, else the register: a bypass, since
        # updates of the same maximum can come back to back); at D9 that registered decision
        # is the enable.  Every compare is the sign of a subtract one bit wider (``_lt``: the
        # carry chain's last sum output, no overflow logic), and one LUT4 follows it.
        lo8, hi8, sl8, new8 = Signal(vs), Signal(vs), Signal(vs), Signal(vs)
        m.d.sync += [lo8.eq(lo7), hi8.eq(hi7), sl8.eq(sl7), new8.eq(new7)]
        sel7, sel8 = Signal(qm), Signal(qm)  # one-hot query of D7 / D8 (valid), registered
        m.d.sync += [
            sel7.eq(Cat(d6.valid & (d6.c == k) for k in range(qm))),
            sel8.eq(sel7),
        ]
        # ML_c, MU_c start at the minimum in every pass (SETUP), so the first value is taken
        # by the compare itself
        take_l, take_u = Signal(qm), Signal(qm)  # D9 takes lo8 / hi8 into ML_c / MU_c
        gtl_by, gtu_by = Signal(), Signal()  # lo7 > lo8, hi7 > hi8
        m.d.comb += [gtl_by.eq(_lt(lo8, lo7)), gtu_by.eq(_lt(hi8, hi7))]
        for k in range(qm):
            m.d.sync += [
                take_l[k].eq(sel7[k] & Mux(take_l[k], gtl_by, _lt(ml_new[k], lo7))),
                take_u[k].eq(sel7[k] & Mux(take_u[k], gtu_by, _lt(mu_new[k], hi7))),
            ]
            with m.If(take_l[k]):
                m.d.sync += ml_new[k].eq(lo8)
            with m.If(take_u[k]):
                m.d.sync += mu_new[k].eq(hi8)
        # SL_j = max over the queries (valid at D8 once per query: after its last lane group)
        sl_acc = Signal(vs)
        take_s = Signal()  # D9 takes sl8 into sl_acc
        m.d.sync += take_s.eq(first7 | Mux(take_s, _lt(sl8, sl7), _lt(sl_acc, sl7)))
        with m.If(take_s):
            m.d.sync += sl_acc.eq(sl8)
        # D9: the new partials
        newp = Signal(vec)
        w_valid, w_j, w_count = Signal(), Signal(ib), Signal(cshape)
        for k in range(qm):  # a query k >= n_q holds a copy of query 0's (see A5)
            with m.If(sel8[k] | (sel8[0] & ~qmask[k])):
                m.d.sync += newp[k].eq(new8)
        m.d.sync += [w_valid.eq(d8.valid & d8.last_c), w_j.eq(d8.j), w_count.eq(d8.count)]
        # W: write back, append, rank SL (score sweep: rank the exact score from the issue stage)
        m.d.comb += [
            part_wr.addr.eq(w_j),
            part_wr.data.eq(newp),
            part_wr.en.eq(w_valid),
            list_wr.addr.eq(Cat(n_next[:ib], ~bank)),
            list_wr.data.eq(w_j),
            list_wr.en.eq(w_valid),
        ]
        # the ranking's inputs are registered (T0, in TopKPipe: ``in_reg``, the key in
        # TOPK_KEY_COPIES copies), then TopKPipe compares (T1) and inserts (T2)
        m.d.comb += [
            topk.insert.eq(Mux(score_mode, ci.valid & ci_after & ~soft_feed, w_valid)),
            topk.key.eq(Mux(score_mode, ci_mx, sl_acc)),
            topk.index.eq(Mux(score_mode, ci.j, w_j)),
            topk.payload.eq(Mux(score_mode, ci.count, w_count)),
        ]
        with m.If(w_valid):
            m.d.sync += [n_next.eq(n_next + 1), planes_read.eq(planes_read + qy.n_q)]

        # soft feed: the issue stage writes each entry's exact dot products and count into the
        # unit's input buffer; A0 issues an entry only with room for it there, so
        # ``entries.ready`` (``in_level < DEPTH - 1``) is high whenever ``valid`` is and is not
        # looked at.  X, the entries issued and not yet taken as ``in_level`` counts them, is
        # what has to stay small: a beat is written with ``in_level <= X - 1``, so X <= DEPTH - 1
        # keeps ``ready`` high.  The credit for an issue in cycle t is registered from
        # S = ``feed_inflight + in_level`` of cycle t-1, which misses at most two of X there
        # (the issue of t-2, reaching ``feed_inflight`` through ``feed_issued``, and the write
        # of t-2, reaching ``in_level`` through the unit's own late count): X(t-1) <= S + 2
        # <= DEPTH - 3 with S < DEPTH - 4, and with the issues of t-1 and t, X <= DEPTH - 1.
        # The beat is a register of its own (``fb``), loaded with the issue stage ``ci`` from
        # the same input, so the unit's write and occupancy logic start from flops placed by
        # the unit, not from ``ci`` (placed by the issue stage, far across the die); no cycle is
        # added.  The two sides meet only in registers: ``fb`` into the unit's write, its level
        # into the credit.
        fb_valid = Signal()
        fb = Signal.like(soft.entries.payload, reset_less=True)
        nxt_valid = Mux(adv_ci, stage.valid, ci.valid)  # ci.valid of the next cycle
        m.d.sync += fb_valid.eq(nxt_valid & soft_feed)
        with m.If(adv_ci):
            m.d.sync += [
                fb.sweep.eq(kind),
                fb.first.eq(fcount == 0),
                fb.last.eq(fcount == n_m1),
                fb.count.eq(stage.count),
                fb.s.eq(stage.part),
            ]
            with m.If(stage.valid & soft_feed):
                m.d.sync += fcount.eq(fcount + 1)
        m.d.comb += [soft.entries.valid.eq(fb_valid), soft.entries.payload.eq(fb)]
        m.d.sync += [
            feed_issued.eq(a0_valid & adv & soft_feed),
            feed_inflight.eq(feed_inflight + feed_issued - fb_valid),
            feed_credit.eq(feed_inflight + soft.in_level < SOFT_FEED_DEPTH - 4),
        ]
        # the scores, in alive-list order, into the score memory
        m.d.comb += [
            soft.scores.ready.eq(1),
            sc_wr.addr.eq(wpos),
            sc_wr.data.eq(soft.scores.payload.score),
            sc_wr.en.eq(soft.scores.valid),
        ]
        with m.If(soft.scores.valid):
            m.d.sync += wpos.eq(wpos + 1)

        ci_valid_d = Signal(2)  # T0, T1 of a score entry, inserted or not (a fixed drain)
        m.d.sync += ci_valid_d.eq(Cat(ci.valid, ci_valid_d[0]))
        busy_bits = [
            ci_valid_d.any(),
            a1_valid,
            a1r_valid,
            a2_valid,
            a3_valid,
            a4_valid,
            ci.valid,
            w_valid,
        ]
        busy_bits += [a5.valid, topk.busy] + [x.valid for x in dm + tree_stages]
        drained = Signal()  # the look-ahead and the pipeline empty (A0: see e_zero in the states)
        m.d.comb += drained.eq(~Cat(*busy_bits).any())
        # what the FSM waits on, registered: empty in the cycle before, and neither A0 nor the
        # init sweep put anything in then, so empty now (nothing else fills the pipeline).  One
        # cycle per wait (INIT_WAIT, each pass, each soft sweep, each output round's score
        # sweep), so that the NOR over valid bits spread along the pipeline reaches one flop,
        # not the FSM's next-state logic
        drained_r = Signal()
        m.d.sync += drained_r.eq(drained & ~(a0_valid & adv) & ~in_init)
        head = topk.entries[0]
        # the ranking's controls from registers, not from the state decode (fan-out ~800):
        # do_clear is 1 exactly in SETUP / SCORE_SETUP, in_thresh in THRESH, in_out in OUT
        do_clear = Signal()
        in_thresh, in_out, in_trailer = st["THRESH"], st["OUT"], st["TRAILER"]
        # OUT: the record's valid is a register, rec_ok = in_out & head.valid & ~met, kept from
        # the next values (a pop moves entries[1] to the head), so that ``ready`` reaches the
        # ranking's ~800 enables through one LUT; it is 0 in the first cycle of an output round
        # (one cycle per round).  The head's compare with the budget left (``lg``: count <
        # left, the budget not met by this record) and the difference are registers kept for
        # the head of the next cycle: after a pop, entries[1] against the difference (the
        # popped record's ``left - count``, what ``left`` becomes), else the head against
        # ``left``.  So a pop's ``met``, ``left``, the record's ``take`` and the next ``rec_ok``
        # are register -> LUT -> register, and a count's carry chain ends in ``lg`` / ``diff``
        # (small fan-out, placed by the chain), never in the ranking's controls.
        rec_ok = Signal()
        lg = Signal()  # the head's count < left
        diff = Signal(len(left))  # left - the head's count (used only when lg)
        pop = rec_ok & self.result.ready
        if cfg.k_cap > 1:
            nxt = topk.entries[1]
            next_valid, next_lg, next_diff = nxt.valid, _lt(nxt.payload, diff), diff - nxt.payload
        else:
            next_valid, next_lg, next_diff = 0, 0, 0
        m.d.sync += [
            lg.eq(Mux(pop, next_lg, _lt(head.payload, left))),
            diff.eq(Mux(pop, next_diff, left - head.payload)),
            rec_ok.eq(in_out & Mux(pop, next_valid & lg, head.valid & ~met)),
        ]
        m.d.sync += do_clear.eq(0)
        m.d.comb += [
            topk.clear.eq(do_clear),
            topk.shift.eq(in_thresh | (rec_ok & self.result.ready)),
        ]

        # ---- control ----------------------------------------------------------------------
        # MU_c for the score sweep's addend (0 with raw_max; a query k >= n_q takes query 0's),
        # registered every cycle: MU is final a cycle before SCORE_SETUP (PASS_END between)
        mu_fin = Signal(vec)
        for k in range(qm):
            m.d.sync += mu_fin[k].eq(Mux(raw, 0, Mux(qmask[k], mu_new[k], mu_new[0])))
        # PASS_END's per-pass constants (~5 * q_max * value_shape flops), enabled by a register
        # set with the transition into PASS_END (p > 0) rather than by the state decode
        # (ML and U of a query k >= n_q are query 0's, for the look-ahead's addend: see A5)
        with m.If(next_pass):
            m.d.sync += next_pass.eq(0)
            for k in range(qm):
                m.d.sync += [
                    ml[k].eq(Mux(raw, 0, Mux(qmask[k], ml_new[k], ml_new[0]))),
                    mu_sub[k].eq(Mux(raw, 0, mu_new[k])),
                    rqp_prev[k].eq(Mux(qmask[k], rqp[k], rqp[0])),
                    rqp[k].eq((rqp[k] - q_pos[k]) >> 1),
                    rqn[k].eq((rqn[k] - q_neg[k]) >> 1),
                ]

        pl = self.query.payload
        checks = Signal(TOKEN_ERROR_LAYOUT)
        m.d.comb += [
            checks.n_zero.eq(pl.n == 0),
            checks.n_over.eq(pl.n > n_max),
            checks.q_zero.eq(pl.n_q == 0),
            checks.q_over.eq(pl.n_q > qm),
            checks.gain_zero.eq(pl.soft & (pl.gain == 0)),
        ]
        # the checks reach err / skip_all in every idle cycle (the last is the handshake's):
        # err is read in the trailer only, skip_all in START only
        empty = (pl.budget == 0) & (~pl.no_exit | pl.soft)  # nothing to select
        skip_next = Signal()
        m.d.comb += skip_next.eq(checks.as_value().any() | empty)
        with m.If(idle):
            m.d.sync += [err.eq(checks), skip_all.eq(skip_next)]

        # PASS_END's two choices, registered every cycle (the query register is held, and
        # n_next is final in the cycle before PASS_END): local flops instead of the query
        # register's, placed by the dot pipeline
        soft_go, no_walk = Signal(), Signal()
        m.d.sync += [soft_go.eq(qy.soft & n_next.any()), no_walk.eq(qy.no_exit | qy.soft)]

        cur = []  # the state whose block is being described

        @contextmanager
        def state(name):
            with m.If(st[name]):
                cur.append(name)
                yield
                cur.pop()

        def goto(name):
            m.d.sync += [st[cur[-1]].eq(0), st[name].eq(1)]

        # from the query handshake to the trailer, less the cycles a record waits for ready
        with m.If(~idle & ~in_trailer & ~(in_out & rec_ok & ~self.result.ready)):
            m.d.sync += cycles.eq(cycles + 1)

        with state("IDLE"):
            # a retrieval's initial values, loaded in every idle cycle (the last load is the
            # handshake's; nothing reads them while idle): only the state flops wait for
            # query.valid, which comes from outside the core
            m.d.sync += [
                planes_read.eq(0),
                cycles.eq(1),
                p.eq(bk - 1),
                first.eq(1),
                bank.eq(0),
                n_cur.eq(pl.n),
                qc.eq(0),
                qc_q.eq(0),
                g.eq(0),
                fin.eq((groups == 1) & (pl.n_q == 1)),
                fin0.eq((groups == 1) & (pl.n_q == 1)),
                init_neg.eq(0),
                score_mode.eq(0),
                thr_valid.eq(0),
                left.eq(pl.budget),
                met.eq(pl.budget == 0),
                last_valid.eq(0),
                nq_m1.eq(pl.n_q - 1),
                qmask.eq(Cat(pl.n_q > k for k in range(qm))),
                soft_feed.eq(0),
                soft_rank.eq(0),
                wpos.eq(0),
            ]
            with m.If(self.query.valid):
                goto("START")

        # one cycle for the query checks (registered in the handshake's cycle, from the
        # payload as it arrives: their path ends in skip_all, not in the init sweep's issue)
        with state("START"):
            with m.If(skip_all):  # an error or nothing to select: the trailer only
                goto("TRAILER")
            with m.Else():
                goto("INIT")

        # Qpos_c, Qneg_c for c = 0 .. n_q-1 on the dot pipeline
        with state("INIT"), m.If(fin):
            m.d.sync += init_neg.eq(1)
            with m.If(init_neg):
                goto("INIT_WAIT")

        with state("INIT_WAIT"), m.If(drained_r):
            goto("PREP")

        with state("PREP"):  # (2^(bk-1) - 1) * Qpos_c, Qneg_c: U, L of the first pass
            for k in range(qm):
                qp, qn = q_pos[k], q_neg[k]
                m.d.sync += [rqn[k].eq((qn << (bk - 1)) - qn), rqp[k].eq((qp << (bk - 1)) - qp)]
            m.d.sync += do_clear.eq(1)
            goto("SETUP")

        with state("SETUP"):  # start of the pass over plane p
            m.d.sync += [e.eq(0), e_left.eq(n_cur), e_zero.eq(n_cur == 0), n_next.eq(0)]
            m.d.sync += [x.eq(vmin) for x in (*ml_new, *mu_new)]  # running maxima
            for k in range(qm):
                m.d.sync += addend[k].eq(rqp_prev[k] - ml[k])
                with m.If(first):  # MU0 = (2^(bk-1) - 1) Qpos - 2^(bk-1) Qneg
                    m.d.sync += mu_sub[k].eq(Mux(raw, 0, rqp[k] - (q_neg[k] << (bk - 1))))
            m.d.sync += sweep.eq(1)
            goto("PASS")

        with state("PASS"), m.If(drained_r & e_zero):
            m.d.sync += [sweep.eq(0), next_pass.eq(p != 0)]
            goto("PASS_END")

        with state("PASS_END"):  # the per-pass constants, from registers only
            m.d.sync += [bank.eq(~bank), n_cur.eq(n_next), e.eq(0)]
            with m.If(p == 0):
                m.d.sync += do_clear.eq(1)
                with m.If(soft_go):
                    m.d.sync += kind.eq(SWEEP_MAX)
                    goto("SOFT_SETUP")
                with m.Else():
                    goto("SCORE_SETUP")
            with m.Else():
                m.d.sync += [
                    p.eq(p - 1),
                    first.eq(0),
                    rem.eq(qy.budget),
                    thr_valid.eq(0),
                    tphase.eq(0),
                ]
                # ML, MU', the bounds' constants: below, enabled by ``next_pass``
                with m.If(no_walk):  # the soft score has no early exit
                    m.d.sync += do_clear.eq(1)
                    goto("SETUP")
                with m.Else():
                    goto("THRESH")

        with state("THRESH"):  # shift the ranking out, sum the counts of its copy h
            # three registers deep: the head (h), then h's end-of-walk tests against the
            # counts walked before it (h_end, h_ge, beside h_key), then the decision on
            # those registers; rem is updated on speculation (the walk ends anyway)
            m.d.sync += [h.eq(head), tphase.eq(Cat(1, tphase[0]))]
            with m.If(tphase[0]):
                m.d.sync += [
                    h_end.eq(~h.valid),
                    h_ge.eq(~_lt(h.payload, rem)),  # h.payload >= rem
                    h_key.eq(h.key),
                    rem.eq(rem - h.payload),
                ]
            with m.If(tphase[1]):
                with m.If(h_end):
                    m.d.sync += do_clear.eq(1)
                    goto("SETUP")
                with m.Elif(h_ge):
                    m.d.sync += [thr.eq(h_key), thr_valid.eq(1)]
                    m.d.sync += do_clear.eq(1)
                    goto("SETUP")

        with state("SOFT_SETUP"):  # one sweep of the soft unit over the alive list
            m.d.sync += [
                e.eq(0),
                e_left.eq(n_cur),
                e_zero.eq(n_cur == 0),
                fcount.eq(0),
                n_m1.eq(n_cur - 1),
                score_mode.eq(1),
                soft_feed.eq(1),
            ]
            m.d.sync += sweep.eq(1)
            goto("SOFT_SWEEP")

        with state("SOFT_SWEEP"), m.If(drained_r & e_zero):  # the sweep's last beat is in
            m.d.sync += sweep.eq(0)
            with m.If(kind == SWEEP_SCORE):
                goto("SOFT_WAIT")
            with m.Else():
                m.d.sync += kind.eq(kind + 1)
                goto("SOFT_SETUP")

        # every score in the memory, the unit idle (registered: the unit's busy comes from its
        # state across the die; one cycle late, and it stays true once true)
        soft_done = Signal()
        m.d.sync += soft_done.eq((wpos == n_cur) & ~soft.busy)
        with state("SOFT_WAIT"), m.If(soft_done):
            m.d.sync += [soft_feed.eq(0), soft_rank.eq(1), do_clear.eq(1)]
            goto("SCORE_SETUP")

        with state("SCORE_SETUP"):
            m.d.sync += [e.eq(0), e_left.eq(n_cur), e_zero.eq(n_cur == 0), score_mode.eq(1)]
            for k in range(qm):
                m.d.sync += addend[k].eq(-mu_fin[k])
            m.d.sync += sweep.eq(1)
            goto("SCORE")

        with state("SCORE"), m.If(drained_r & e_zero):  # rank the survivors' exact scores
            m.d.sync += sweep.eq(0)
            goto("OUT")

        with state("OUT"):
            want = Signal()
            m.d.comb += want.eq(head.valid & ~met)
            with m.If(pop):
                m.d.sync += [
                    left.eq(Mux(lg, diff, 0)),
                    met.eq(~lg),
                    last_valid.eq(1),
                    last_key.eq(head.key),
                    last_id.eq(head.index),
                ]
            with m.If(~want):
                with m.If(topk.overflow & ~met):
                    m.d.sync += do_clear.eq(1)
                    goto("SCORE_SETUP")
                with m.Else():
                    goto("TRAILER")

        with state("TRAILER"), m.If(self.result.ready):
            goto("IDLE")

        # the result beat from the OUT and TRAILER states' flops
        rec = self.result.payload
        m.d.comb += [
            self.result.valid.eq(rec_ok | in_trailer),
            rec.kind.eq(Mux(in_trailer, Kind.TRAILER, Kind.RECORD)),
            rec.id.eq(Mux(in_out, head.index, 0)),
            rec.take.eq(Mux(in_out, Mux(lg, head.payload, left), 0)),
            rec.planes_read.eq(Mux(in_trailer, planes_read, 0)),
            rec.cycles.eq(Mux(in_trailer, cycles, 0)),
            rec.error.eq(Mux(in_trailer, err, 0)),
            self.query.ready.eq(idle),
            self.busy.eq(~idle),
        ]
        return m


__all__ = [
    "STORE_LATENCY",
    "SelectTokensCore",
    "cycle_formula",
    "dot_stages",
    "lookahead_stages",
    "value_shape",
]
