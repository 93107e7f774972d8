"""The soft score of DRE selection v2 (``score="soft"`` of ``model.dre.tokens``), pipelined.

Given the exact dot products ``s[c, j]`` of ``n_q`` query vectors with the live entries and the
entries' member counts, it computes, bit for bit as :func:`model.dre.tokens.soft_scores`::

    M_c      = max_j s[c, j]
    u[c, j]  = min(((M_c - s[c, j]) * gain) >> GAIN_SHIFT, UCAP)
    S_c      = sum_j counts[j] * EXP2(u[c, j])
    Z_c      = LOG2(S_c) - E * 2^FB
    score_j  = sum_c EXP2(min(u[c, j] + Z_c, UCAP))

``UCAP = (E + 1) * 2^FB``: ``EXP2`` of anything at or above it is 0 (the table holds values
below ``2^(E+1)``), so saturating there changes no result and bounds every width.
"""

from __future__ import annotations

from amaranth import C, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from model.dre.config import check_int
from model.dre.tokens import (
    GAIN_BITS,
    GAIN_SHIFT,
    SOFT_E,
    SOFT_FB,
    SOFT_M,
    exp2_table,
    log2_table,
)

#: ``entries.payload.sweep`` values
SWEEP_MAX, SWEEP_SUM, SWEEP_SCORE = 0, 1, 2
#: ``EXP2(x) = 0`` for every ``x >= UCAP``
UCAP = (SOFT_E + 1) << SOFT_FB
#: output FIFO depth (bounds the entries in flight in the score sweep)
OUT_DEPTH = 16
#: default input buffer depth: ``entries.ready`` is its "not full", a register
IN_DEPTH = 4


class SoftScore(wiring.Component):
    """Soft scores of ``N`` entries for ``n_q`` query vectors, in three sweeps over the entries.

    Parameters
    ----------
    q_max       most query vectors (``1 .. 16``)
    s_bits      signed width of the dot products ``s``
    count_bits  width of a member count
    n_max       most entries per retrieval (sizes the sum ``S_c``)
    in_depth    input buffer depth (``2 .. 64``, default ``IN_DEPTH``)

    Interface
    ---------
    n_q : In(range(q_max + 1))
        Query vectors in use; held for the whole retrieval.  ``1 <= n_q <= q_max`` is the
        contract; 0 is served as 1 and larger values as ``q_max`` (never a hang).
    gain : In(GAIN_BITS)
        ``model.dre.tokens.soft_gain``; held for the whole retrieval.
    entries : In(stream.Signature(entry_layout))
        One beat per entry and sweep: ``sweep`` (MAX, SUM, SCORE, in that order, each over the
        same entries in the same order), ``first`` / ``last`` (first / last entry of the sweep),
        ``count`` (read in the SUM sweep), ``s`` (``q_max`` dot products; lanes ``>= n_q``
        are ignored).
    scores : Out(stream.Signature(score_layout))
        One beat per SCORE-sweep entry, in order: ``score`` and ``last``.
    busy : Out(1)
        Work is in flight (an accepted beat has not yet had all of its effect, or a score
        waits in the output FIFO).
    in_level : Out(range(in_depth + 1))
        The input buffer's level, a register: beats accepted and not yet taken by the issue
        logic, each write and each take counted a cycle late.  ``entries.ready`` is high
        exactly when ``in_level < in_depth - 1``.  A producer that counts the beats it has in
        flight towards the unit (a beat stays "in flight" until the cycle after it is
        accepted) can keep ``in_level + in flight < in_depth - 1`` (a credit) and then offer
        each beat without looking at ``entries.ready``
        (:class:`hw.select_tokens.SelectTokensCore` does: its issue stage writes here directly).

    Timing
    ------
    ``entries.ready`` is a register (room in the input buffer), never a function of
    ``entries.valid`` or the beat of the same cycle.  Beats land in an ``in_depth``-entry LUT
    RAM and reach the issue logic through a head register, two cycles after they are accepted
    (then one per cycle while the buffer holds more), so the issue decision reads registers
    only, and the producer's handshake logic and the unit's issue logic meet only in registers,
    wherever the two are placed.
    MAX beats: one per cycle (the first SUM beat waits one cycle for the last maximum).  SUM
    and SCORE beats: ``n_q`` cycles each (the queries are served in turn through one multiplier
    and one ``2^x`` table).  The SUM sweep's
    last beat is followed by the pipeline drain (13
    cycles) and ``Z_c`` (``Z_CYCLES`` per query), during which SCORE beats wait.  A retrieval of
    ``N`` entries, offered back to back with ``scores.ready`` high, takes
    ``N * (1 + 2 * n_q) + Z_CYCLES * n_q + FIXED_CYCLES`` cycles from the cycle its first beat
    is offered to the cycle its last score is valid (inclusive), plus any stalls of
    ``scores.ready``; the output FIFO (``OUT_DEPTH`` scores) absorbs short stalls.
    """

    #: the fixed part of a retrieval's cycles: the SUM sweep's drain into ``S_c``, the SCORE
    #: sweep's drain into the output FIFO, the input buffer's head register and the output FIFO
    FIXED_CYCLES = 29
    #: cycles per query of the ``Z_c`` sequencer
    Z_CYCLES = 9

    def __init__(
        self, *, q_max: int, s_bits: int, count_bits: int, n_max: int, in_depth: int = IN_DEPTH
    ):
        for name, v, lo, hi in (
            ("q_max", q_max, 1, 16),
            ("s_bits", s_bits, 2, 48),
            ("count_bits", count_bits, 1, 40),
            ("n_max", n_max, 1, 1 << 20),
            ("in_depth", in_depth, 2, 64),
        ):
            check_int(f"SoftScore {name}", v, lo, hi)
        self.q_max, self.s_bits, self.count_bits, self.n_max = q_max, s_bits, count_bits, n_max
        self.in_depth = in_depth
        #: S_c <= n_max * (2^count_bits - 1) * 2^E
        self.sum_bits = count_bits + SOFT_E + n_max.bit_length()
        #: score <= q_max * 2^E
        self.score_bits = SOFT_E + 1 + q_max.bit_length()
        #: Z_c <= LOG2(S_c) - E * 2^FB < (sum_bits - E) * 2^FB
        self.z_bits = ((self.sum_bits - SOFT_E) << SOFT_FB).bit_length()
        self.entry_layout = data.StructLayout(
            {
                "sweep": 2,
                "first": 1,
                "last": 1,
                "count": unsigned(count_bits),
                "s": data.ArrayLayout(signed(s_bits), q_max),
            }
        )
        self.score_layout = data.StructLayout({"score": unsigned(self.score_bits), "last": 1})
        super().__init__(
            {
                "n_q": In(range(q_max + 1)),
                "gain": In(GAIN_BITS),
                "entries": In(stream.Signature(self.entry_layout)),
                "scores": Out(stream.Signature(self.score_layout)),
                "busy": Out(1),
                "in_level": Out(range(in_depth + 1)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        qm, sb, E, FB = self.q_max, self.s_bits, SOFT_E, SOFT_FB
        diff_bits = sb + 1
        u_bits = UCAP.bit_length()

        m.submodules.out = out = fifo.SyncFIFOBuffered(
            width=self.score_layout.size, depth=OUT_DEPTH
        )
        m.d.comb += [
            self.scores.valid.eq(out.r_rdy),
            self.scores.payload.eq(out.r_data),
            out.r_en.eq(self.scores.ready),
        ]

        # The input buffer: ``in_depth`` beats in two LUT RAMs (written synchronously, read
        # asynchronously), the control fields (sweep one-hot, first, last) in one, the data (the
        # dot products, the count) in the other, and in front of the issue logic a small head
        # register with the head beat's control fields and its slot.  The issue decision reads
        # registers only; the data is read at the head's slot (a register), so the decision
        # reaches a handful of flops (the head, the pointers), never the wide data.  A slot is
        # free again once its beat is taken.
        #   level   beats accepted and not yet taken (the head's included), a write and a take
        #           each counted a cycle late (``w_d``, ``take_d``: neither the producer's
        #           ``valid`` nor the issue decision reaches the adder and the compare behind
        #           it); ``ready`` = ``level < in_depth - 1``, registered from the next level:
        #           the beats in the buffer are at most ``level`` + 1 (last cycle's write), so
        #           one more fits
        #   stored  beats not yet in the head, thermometer-coded (``stored[i]``: more than
        #           ``i``), so "not empty" is a flop and each bit's update one LUT after ``load``
        ctl_layout = data.StructLayout({"kind": 4, "first": 1, "last": 1})
        dat_layout = data.StructLayout(
            {"count": unsigned(self.count_bits), "s": data.ArrayLayout(signed(sb), qm)}
        )
        m.submodules.in_ctl = in_ctl = memory.Memory(shape=ctl_layout, depth=self.in_depth, init=[])
        m.submodules.in_dat = in_dat = memory.Memory(shape=dat_layout, depth=self.in_depth, init=[])
        ctl_wr, ctl_rd = in_ctl.write_port(), in_ctl.read_port(domain="comb")
        dat_wr, dat_rd = in_dat.write_port(), in_dat.read_port(domain="comb")
        w_ptr = Signal(range(self.in_depth))
        r_ptr = Signal(range(self.in_depth))
        h_slot = Signal(range(self.in_depth))
        level = Signal(range(self.in_depth + 1))
        take_d, w_d = Signal(), Signal()
        stored = Signal(self.in_depth)
        rdy = Signal(init=1)
        head = Signal(ctl_layout)
        in_valid, in_take = Signal(), Signal()  # head valid; the issue logic takes the head
        do_write, load = Signal(), Signal()
        m.d.comb += [
            ctl_wr.data.kind.eq(1 << self.entries.payload.sweep),
            ctl_wr.data.first.eq(self.entries.payload.first),
            ctl_wr.data.last.eq(self.entries.payload.last),
            dat_wr.data.count.eq(self.entries.payload.count),
            dat_wr.data.s.eq(self.entries.payload.s),
            self.entries.ready.eq(rdy),
            do_write.eq(self.entries.valid & rdy),
            ctl_wr.addr.eq(w_ptr),
            ctl_wr.en.eq(do_write),
            dat_wr.addr.eq(w_ptr),
            dat_wr.en.eq(do_write),
            ctl_rd.addr.eq(r_ptr),
            dat_rd.addr.eq(h_slot),
            load.eq(stored[0] & (~in_valid | in_take)),
            self.in_level.eq(level),
        ]

        def wrap_inc(ptr):
            return Mux(ptr == self.in_depth - 1, 0, ptr + 1)

        with m.If(do_write):
            m.d.sync += w_ptr.eq(wrap_inc(w_ptr))
        with m.If(load):
            m.d.sync += [
                head.eq(ctl_rd.data),
                h_slot.eq(r_ptr),
                r_ptr.eq(wrap_inc(r_ptr)),
                in_valid.eq(1),
            ]
        with m.Elif(in_take):  # the kind bits are 0 while the head is empty
            m.d.sync += [in_valid.eq(0), head.kind.eq(0)]
        level_next = Signal.like(level)
        m.d.comb += level_next.eq(level + w_d - take_d)
        m.d.sync += [
            w_d.eq(do_write),
            take_d.eq(in_take),
            level.eq(level_next),
            # level_next < in_depth - 1, with the compares on the level register, so that the
            # late counts reach ``ready`` through one multiplexer, not the adder and a compare
            rdy.eq(
                Mux(
                    w_d == take_d,
                    level < self.in_depth - 1,
                    Mux(w_d, level < self.in_depth - 2, level < self.in_depth),
                )
            ),
        ]
        with m.If(do_write & ~load):
            m.d.sync += stored.eq(Cat(1, stored[:-1]))
        with m.Elif(load & ~do_write):
            m.d.sync += stored.eq(stored[1:])
        beat = Signal(self.entry_layout)  # the head beat: control from the head, data from RAM
        m.d.comb += [
            beat.first.eq(head.first),
            beat.last.eq(head.last),
            beat.count.eq(dat_rd.data.count),
            beat.s.eq(dat_rd.data.s),
        ]

        # The last query index, from n_q served in 1 .. q_max, registered (a held input).
        last_q, last_q_next = Signal(range(qm)), Signal(range(qm))
        m.d.comb += last_q_next.eq(Mux(self.n_q == 0, 0, Mux(self.n_q > qm, qm - 1, self.n_q - 1)))
        m.d.sync += last_q.eq(last_q_next)

        M = [Signal(signed(sb), name=f"M{c}") for c in range(qm)]
        S = [Signal(self.sum_bits, name=f"S{c}") for c in range(qm)]
        Z = [Signal(self.z_bits, name=f"Z{c}") for c in range(qm)]

        # ---- issue: MAX beats in one cycle, SUM / SCORE beats one query per cycle ----
        c = Signal(range(qm))
        z_pending = Signal()  # the SUM sweep's last beat was issued, Z not yet computed
        z_busy = Signal()
        # SCORE entries accepted and not yet read out of the output FIFO: ``used`` counts them
        # but an accept a cycle late (``acc_d``), so ``used + acc_d <= used + 1``, and
        # ``used < OUT_DEPTH - 1`` leaves room for one more; ``credit`` is that compare,
        # registered from ``used``'s next value, and the issue decision ends in a register
        used = Signal(range(OUT_DEPTH + 1))
        acc_d = Signal()
        credit = Signal(init=1)
        is_max = head.kind[SWEEP_MAX]
        is_sum = head.kind[SWEEP_SUM]
        is_score = head.kind[SWEEP_SCORE]
        # The issue decision from registers, few of them: the head's kind bits (0 while it is
        # empty), ``sgate`` (no Z pending and no MAX beat in its compare register; registered
        # from their next values), ``credit`` and ``c_last`` (``c`` is the last query).
        # ``z_busy`` implies ``z_pending`` (both end together), so only the latter is looked at.
        issue, max_take, z_done = Signal(), Signal(), Signal()
        mx_v = Signal()
        sgate = Signal(init=1)
        c_last = Signal(init=1)
        m.d.comb += [
            issue.eq(sgate & (is_sum | (is_score & credit))),
            max_take.eq(is_max & ~z_pending),
        ]
        z_pending_next = Signal()
        m.d.comb += z_pending_next.eq(
            Mux(z_done, 0, z_pending | (issue & c_last & is_sum & beat.last))
        )
        m.d.sync += [
            z_pending.eq(z_pending_next),
            sgate.eq(~z_pending_next & ~max_take),
            c_last.eq(Mux(issue, Mux(c_last, 0, c + 1), c) == last_q_next),
        ]
        # A MAX beat is registered, then compared in the next cycle (the compare-and-update
        # loop alone in its cycle); SUM beats wait while one is in that register.  The register
        # takes whatever beat the FIFO shows, every cycle; its valid bit gates the update.
        mx_first = Signal()
        mx_s = Signal(data.ArrayLayout(signed(sb), qm), reset_less=True)
        m.d.sync += [mx_v.eq(0), mx_first.eq(0)]
        # the beat's dot products every cycle (no enable: the take decision reaches only the
        # two valid bits, not ~q_max * s_bits flops)
        m.d.sync += mx_s.eq(beat.s)
        for q in range(qm):
            # mx_s > M as the sign of M - mx_s one bit wider: a plain carry chain on ECP5
            with m.If(mx_v & (mx_first | (M[q] - mx_s[q])[-1])):
                m.d.sync += M[q].eq(mx_s[q])
        with m.If(mx_first):
            m.d.sync += [s.eq(0) for s in S]
        with m.If(max_take):
            m.d.comb += in_take.eq(1)
            m.d.sync += [mx_v.eq(1), mx_first.eq(beat.first)]
        with m.Elif(issue):
            with m.If(c_last):
                m.d.comb += in_take.eq(1)
                m.d.sync += c.eq(0)
            with m.Else():
                m.d.sync += c.eq(c + 1)
        with m.If(head.kind[3]):  # not a sweep: consume, no effect
            m.d.comb += in_take.eq(1)

        # ---- the (entry, query) pipeline ----
        # Control fields travel with each (entry, query) pair: after every registered data
        # step, ``ctl`` is advanced so that it is visible in the same cycle as the data.
        valids = []

        def reg(name, shape, value, reset_less=True):
            # data registers have no reset (only the valid bits do): the ECP5 flow can then
            # fold those around a multiplier into the block's own registers
            sig = Signal(shape, name=name, reset_less=reset_less)
            m.d.sync += sig.eq(value)
            return sig

        def advance(ctl: dict, tag: str) -> dict:
            ctl = {k: reg(f"{k}_{tag}", v.shape(), v, reset_less=k != "v") for k, v in ctl.items()}
            valids.append(ctl["v"])
            return ctl

        ctl = {
            "v": issue,
            "score": is_score,
            "c": c,
            "lastc": c_last,
            "last": beat.last,
            "cnt": beat.count,
        }
        # st1: the query's operands
        s1, m1, z1 = Signal(signed(sb)), Signal(signed(sb)), Signal(self.z_bits)
        with m.Switch(c):
            for q in range(qm):
                with m.Case(q):
                    m.d.sync += [s1.eq(beat.s[q]), m1.eq(M[q]), z1.eq(Z[q])]
        ctl = advance(ctl, "1")
        # st2: M - s >= 0
        diff = reg("diff2", diff_bits, m1 - s1)
        ctl, z = advance(ctl, "2"), reg("z2", self.z_bits, z1)
        # st3, st4: (M - s) * gain, as block-multiplier-sized products, then their sum (the
        # operands and the products registered, each register a multiplier's own on ECP5)
        gain = reg("gain_q", GAIN_BITS, self.gain)  # a held input
        prod = _mul(reg, diff, gain, "gain")
        for tag in ("3", "4"):
            ctl, z = advance(ctl, tag), reg(f"z{tag}", self.z_bits, z)
        # st5: u = min(prod >> GAIN_SHIFT, UCAP), and the Z to add (SCORE sweep only)
        shifted = prod >> GAIN_SHIFT
        u = reg("u5", u_bits, Mux(shifted >= UCAP, UCAP, shifted))
        z = reg("zsel5", self.z_bits, Mux(ctl["score"], z, 0))
        ctl = advance(ctl, "5")
        # st6: u + Z; st6b: saturated at UCAP
        x_sum = reg("xsum6", max(u_bits, self.z_bits) + 1, u + z)
        ctl = advance(ctl, "6")
        x = reg("x6b", u_bits, Mux(x_sum >= UCAP, UCAP, x_sum))
        ctl = advance(ctl, "6b")
        # st7: 2^-frac from the table (a block-RAM ROM), the shift from the integer part
        m.submodules.exp2 = exp2 = memory.Memory(
            shape=unsigned(E + 1), depth=1 << FB, init=exp2_table()
        )
        rd = exp2.read_port(domain="sync")
        m.d.comb += rd.addr.eq(x[:FB])
        i = reg("i7", range(E + 2), x[FB:])  # x <= UCAP: at most E + 1
        ctl = advance(ctl, "7")
        # st8: the block RAM's slow output, registered
        t, i = reg("t8", E + 1, rd.data), reg("i8", range(E + 2), i)
        ctl = advance(ctl, "8")
        # st9, st9b: e = T >> i in two steps (whole bytes, then bits), so that the block RAM's
        # output routing and the shifter do not share a cycle
        tc = reg("tc9", E + 1, t >> Cat(C(0, 3), i[3:]))
        i = reg("i9", 3, i[:3])
        ctl = advance(ctl, "9")
        e = reg("e9b", E + 1, tc >> i)
        ctl = advance(ctl, "9b")
        # st10: SCORE: the running sum over the entry's queries, written to the FIFO (its
        # memory is the register) at the last one
        acc = Signal(self.score_bits)
        total = Signal(self.score_bits)
        m.d.comb += total.eq(Mux(ctl["c"] == 0, e, acc + e))
        with m.If(ctl["v"] & ctl["score"]):
            m.d.sync += acc.eq(total)
        emit = Signal()
        w = Signal(self.score_layout)
        m.d.comb += [
            emit.eq(ctl["v"] & ctl["score"] & ctl["lastc"]),
            w.score.eq(total),
            w.last.eq(ctl["last"]),
            out.w_data.eq(w),
            out.w_en.eq(emit),
        ]
        accepted_score = in_take & is_score
        read_out = out.r_rdy & out.r_en
        # an up/down counter whose carry chains start at ``used`` alone: ``used + 1``,
        # ``used - 1`` and the credit compare of each of the three next values are formed from
        # the register, and the read (``ready`` from the consumer, far away) and ``acc_d`` only
        # choose among them (one LUT level, no carry chain behind the consumer's ``ready``)
        up, down = Signal(), Signal()
        m.d.comb += [up.eq(acc_d & ~read_out), down.eq(read_out & ~acc_d)]
        m.d.sync += [
            acc_d.eq(accepted_score),
            used.eq(Mux(up, used + 1, Mux(down, used - 1, used))),
            credit.eq(
                Mux(up, used < OUT_DEPTH - 2, Mux(down, used < OUT_DEPTH, used < OUT_DEPTH - 1))
            ),
        ]
        # st10, st11: SUM: count * e
        ne = _mul(reg, ctl["cnt"], e, "count")
        for tag in ("10", "11"):
            ctl = advance(ctl, tag)
        # st12: S_c += count * e (one adder per query: no read multiplexer in the loop)
        sum_v = ctl["v"] & ~ctl["score"]
        for q in range(qm):
            with m.If(sum_v & (ctl["c"] == q)):
                m.d.sync += S[q].eq(S[q] + ne)
        # the sequencer starts in the cycle of the last S_c update (it reads S_c a cycle later)
        z_start = Signal()
        m.d.comb += z_start.eq(sum_v & ctl["last"] & ctl["lastc"])

        # ---- Z_c = LOG2(S_c) - E * 2^FB, one query at a time, Z_CYCLES each ----
        zc = Signal(range(qm))
        zstep = Signal(range(self.Z_CYCLES))
        zs = Signal(self.sum_bits)
        zp = Signal(range(self.sum_bits))
        znorm = Signal(self.sum_bits)
        chunks = (self.sum_bits + 7) // 8
        nz = Signal(chunks)
        zlt = Signal(FB + 1, reset_less=True)  # the LOG2 read, registered every cycle
        zsh = Signal(range(self.sum_bits))
        zcoarse = Signal(self.sum_bits)
        lp = [Signal(3, name=f"lp{k}") for k in range(chunks)]
        m.submodules.log2 = log2 = memory.Memory(
            shape=unsigned(FB + 1), depth=1 << SOFT_M, init=log2_table()
        )
        lrd = log2.read_port(domain="sync")
        m.d.sync += zlt.eq(lrd.data)
        m.d.comb += lrd.addr.eq(znorm[self.sum_bits - 1 - SOFT_M : self.sum_bits - 1])
        with m.If(z_start):
            m.d.sync += [z_busy.eq(1), zc.eq(0), zstep.eq(0)]
        with m.If(z_busy):
            m.d.sync += zstep.eq(zstep + 1)
            with m.Switch(zstep):
                with m.Case(0):  # the query's sum
                    for q in range(qm):
                        with m.If(zc == q):
                            m.d.sync += zs.eq(S[q])
                with m.Case(1):  # per 8-bit chunk: any one, and the top one's position
                    for k in range(chunks):
                        part = zs[8 * k : 8 * k + 8]
                        m.d.sync += nz[k].eq(part.any())
                        for b in range(len(part)):
                            with m.If(part[b]):
                                m.d.sync += lp[k].eq(b)
                with m.Case(2):  # p = floor(log2 S): S >= 2^E, so the top one exists
                    for k in range(chunks):
                        with m.If(nz[k]):
                            m.d.sync += zp.eq(8 * k + lp[k])
                with m.Case(3):  # the left shift that moves the leading one to the top bit
                    m.d.sync += zsh.eq(self.sum_bits - 1 - zp)
                with m.Case(4):  # shifted in two steps: whole bytes, then bits
                    m.d.sync += zcoarse.eq(zs << Cat(C(0, 3), zsh[3:]))
                with m.Case(5):
                    m.d.sync += znorm.eq(zcoarse << zsh[:3])
                # Case 6: the LOG2 table reads the M bits below the leading one; case 7: its
                # output registered (``zlt``, every cycle: the block RAM's output register on
                # ECP5, ``synth.ecp5_flow.absorb_bram_output_registers``)
                with m.Case(8):
                    zval = (zp << FB) + zlt - (E << FB)
                    with m.Switch(zc):
                        for q in range(qm):
                            with m.Case(q):
                                m.d.sync += Z[q].eq(zval)
                    m.d.sync += zstep.eq(0)
                    with m.If(zc == last_q):
                        m.d.comb += z_done.eq(1)
                        m.d.sync += z_busy.eq(0)
                    with m.Else():
                        m.d.sync += zc.eq(zc + 1)

        m.d.comb += self.busy.eq(
            in_valid
            | stored[0]
            | z_busy
            | z_pending
            | acc_d
            | (used != 0)
            | z_start
            | mx_v
            | Cat(*valids).any()
        )
        return m


def _pieces(x):
    """``x`` as (offset, piece) with pieces of at most 18 bits (17 when cut)."""
    if len(x) <= 18:
        return [(0, x)]
    return [(k, x[k : k + 17]) for k in range(0, len(x), 17)]


def _mul(reg, a, b, name: str):
    """``a * b`` (unsigned) two registers later: the operands cut into pieces of block-multiplier
    size (at most 18 x 18 bits), one registered product per pair of pieces, then their sum."""
    prods = [
        (oa + ob, reg(f"{name}_p{oa}_{ob}", len(pa) + len(pb), pa * pb))
        for oa, pa in _pieces(a)
        for ob, pb in _pieces(b)
    ]
    total = 0
    for off, p in prods:
        total = total + (p << off)
    return reg(f"{name}_sum", len(a) + len(b), total)
