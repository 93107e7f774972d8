"""Candidate resolution of the clustering unit (T1): a token's three candidates, from its dot
products, the table's meta data and the decision of the token before it."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.arith import group_nonzero, nonzero_groups, one_hot_select
from hw.centroid_table import meta_layout
from hw.cluster_decide import LEFT, TEMPORAL
from hw.cluster_dots import N_SUMS
from model.dre.cluster import ClusterWidths
from model.dre.config import DREConfig, require_config


class CandidateResolve(wiring.Component):
    """Resolves the three candidates (temporal, left, up) of the token whose dot products are
    done, once the token before it is decided, and registers them for the decision screen.

    The dot products were started speculatively (``docs/cluster.md``, "How the loop-carried
    dependence is broken"): ``acc[0]``, ``acc[1]`` are ``k.S`` of the token's own temporal and
    up candidates, ``acc[2 + j]`` of the token before's candidate ``j``, ``kk = k.k_prev``.  The
    *previous-token* candidate (always the left one; the temporal / up one where ``prev`` says
    so) is the cluster the token before joined (``last_*``): its dot product is
    ``acc[2 + j] + kk`` if that token joined or was forced into its candidate ``j``, ``kk`` if
    it opened a cluster, ``acc[2]`` if it was decided before this token started (``pend`` low:
    then port 2 read its own cluster).  An own candidate equal to that cluster gets ``+ kk``
    when ``pend`` (its sum update was not seen).  ``|S|^2`` and counts come from the table's
    meta reads, or the previous decision's own registers (also for an own candidate equal to its
    cluster).

    Interface
    ---------
    load : In(1)
        T1: register the candidates of this cycle's inputs.
    pend : In(1), ex : In(3), prev : In(3)
        The token's per-token bank: the token before was undecided when this one started; each
        candidate slot exists; it names the token just before.
    own_id : In(range(n_max)) x 2
        The ids of the own temporal and up candidates (owner map or decision history).
    meta : In(StructLayout(norm, count)) x 2
        The table's meta data of ``own_id`` (read after the token's start and kept in its bank).
        It holds every decision's write but the last one's, which it may lack (the last
        decision may commit after that read): an own candidate equal to ``last_id``
        (``last_ok``) takes ``last_norm`` and ``last_count`` instead, the values that write
        stores.
    last_id, last_ok, last_new, last_merge, last_sel, last_norm, last_count : In
        The last decision: its cluster, whether it joined or opened one (not dropped), opened,
        joined / forced, into which candidate slot (``last_sel``, one-hot: bit ``j`` for its
        candidate ``j``; read only where ``last_new`` is low), and the ``|S|^2`` and count it
        wrote.  ``pend``, ``prev`` and ``last_*`` are registers in the unit, so that the
        conditions which pick each candidate's option are one LUT of registers ("Fmax,
        eighteenth round" in ``docs/cluster.md``).
    acc : In(signed(dot)) x 5, kk : In(signed(key_norm + 1)), kn : In(unsigned(key_norm))
        The token's dot products (:class:`hw.cluster_dots.ClusterDots`).
    acc_neg, acc_kk, acc_kk_neg : In(signed(dot)) x 5, kk_neg : In(signed(key_norm + 2))
        ``-acc[i]``, ``acc[i] + kk``, ``-(acc[i] + kk)`` (modulo ``2^dot``) and ``-kk``, each
        from a register of ``ClusterDots``: every option above is a register and its negation
        another, so a candidate's magnitude is a multiplexer on the option's sign bit, with no
        adder in T1 ("Fmax, thirteenth round" in ``docs/cluster.md``).  ``acc[3]``, ``acc[4]``
        and ``acc_neg[3]``, ``acc_neg[4]`` are not used.
    id, dot, mag, norm, count : Out x 3; elig : Out(3); key_norm : Out
        Registered at ``load``: per candidate its cluster, ``k.S``, ``|k.S|``, ``|S|^2``,
        count, and whether it is eligible (exists and is not saturated); ``|k|^2``.  ``mag``
        is formed here, before the register, so that the screen's first stage starts its
        normalisation from a register, not behind a negation's carry chain
        (``docs/cluster.md``, "Fmax, eighth round").
    screen_dot, screen_mag, screen_norm : Out x 3; screen_key_norm : Out
        Copies of ``dot``, ``mag``, ``norm`` and ``key_norm`` for the decision screen
        (:class:`hw.cluster_cosine.ClusterCompare`), registered at the same ``load``.  They
        are registers of their own so that placement can put them beside the screen while
        the originals stay beside the decision and the update (the thirteenth round's
        critical path was one route between the two; "Fmax, fourteenth round" in
        ``docs/cluster.md``).  Unlike the originals they have a synchronous reset (to 0),
        only so that synthesis keeps them apart: Yosys merges identical registers, even
        ones marked ``keep``.
    screen_mag_nz, screen_norm_nz : Out x 3; screen_key_norm_nz : Out
        :func:`hw.arith.group_nonzero` of ``screen_mag``, ``screen_norm`` and
        ``screen_key_norm``, registered with them (and reset with them), so that the screen's
        first stage finds each operand's leading group from registers ("Fmax, twenty-first
        round" in ``docs/cluster.md``).  Formed per option (from its magnitude, one
        multiplexer behind the option's registers) and selected with it by the same one-hot
        conditions, so the groups' ORs lie in front of the selection, not behind it.
    new_norm, new_count : Out x 3
        Registered one cycle after ``load``: per candidate ``|S + k|^2`` and ``n + 1`` (what the
        decision writes when the token joins it).

    Timing
    ------
    ``id`` .. ``key_norm`` from the cycle after ``load``, ``new_norm``/``new_count`` from the
    cycle after that; all held until the next ``load``.  No output register but the screen's
    copies has a reset: each is loaded (or, ``new_*``, formed from those) for a token at its
    ``load``, and read for that token only, after it (so the copies' reset, which makes them
    differ from the originals until the first ``load``, is never seen).
    """

    def __init__(self, cfg: DREConfig):
        require_config(cfg)
        self.cfg = cfg
        wd = self.widths = ClusterWidths.of(cfg)
        ids = range(cfg.n_max)
        super().__init__(
            {
                "load": In(1),
                "pend": In(1),
                "ex": In(3),
                "prev": In(3),
                "own_id": In(ids).array(2),
                "meta": In(meta_layout(cfg)).array(2),
                "last_id": In(ids),
                "last_ok": In(1),
                "last_new": In(1),
                "last_merge": In(1),
                "last_sel": In(3),
                "last_norm": In(unsigned(wd.sum_norm)),
                "last_count": In(unsigned(cfg.count_bits)),
                "acc": In(signed(wd.dot)).array(N_SUMS),
                "acc_neg": In(signed(wd.dot)).array(N_SUMS),
                "acc_kk": In(signed(wd.dot)).array(N_SUMS),
                "acc_kk_neg": In(signed(wd.dot)).array(N_SUMS),
                "kk": In(signed(wd.key_norm + 1)),
                "kk_neg": In(signed(wd.key_norm + 2)),
                "kn": In(unsigned(wd.key_norm)),
                "id": Out(ids).array(3),
                "dot": Out(signed(wd.dot)).array(3),
                "mag": Out(unsigned(wd.dot)).array(3),
                "norm": Out(unsigned(wd.sum_norm)).array(3),
                "count": Out(unsigned(cfg.count_bits)).array(3),
                "elig": Out(3),
                "key_norm": Out(unsigned(wd.key_norm)),
                "screen_dot": Out(signed(wd.dot)).array(3),
                "screen_mag": Out(unsigned(wd.dot)).array(3),
                "screen_norm": Out(unsigned(wd.sum_norm)).array(3),
                "screen_key_norm": Out(unsigned(wd.key_norm)),
                "screen_mag_nz": Out(nonzero_groups(wd.dot)).array(3),
                "screen_norm_nz": Out(nonzero_groups(wd.sum_norm)).array(3),
                "screen_key_norm_nz": Out(nonzero_groups(wd.key_norm)),
                "new_norm": Out(unsigned(wd.sum_norm)).array(3),
                "new_count": Out(unsigned(cfg.count_bits)).array(3),
            }
        )

    def elaborate(self, platform):
        cfg, wd = self.cfg, self.widths
        m = Module()
        acc, spec, spec_neg = self.acc, self.acc_kk, self.acc_kk_neg

        def out_reg(port, name, reset=False):  # the output's register (see Timing)
            r = Signal.like(port, name=name, reset_less=not reset)
            m.d.comb += port.eq(r)
            return r

        o_id = [out_reg(self.id[i], f"r_id{i}") for i in range(3)]
        o_dot = [out_reg(self.dot[i], f"r_dot{i}") for i in range(3)]
        o_mag = [out_reg(self.mag[i], f"r_mag{i}") for i in range(3)]
        o_norm = [out_reg(self.norm[i], f"r_norm{i}") for i in range(3)]
        o_count = [out_reg(self.count[i], f"r_count{i}") for i in range(3)]
        o_new_norm = [out_reg(self.new_norm[i], f"r_new_norm{i}") for i in range(3)]
        o_new_count = [out_reg(self.new_count[i], f"r_new_count{i}") for i in range(3)]
        o_elig = out_reg(self.elig, "r_elig")
        o_kn = out_reg(self.key_norm, "r_key_norm")
        # the screen's copies: with a reset, so that synthesis never merges them (see Interface)
        s_dot = [out_reg(self.screen_dot[i], f"s_dot{i}", True) for i in range(3)]
        s_mag = [out_reg(self.screen_mag[i], f"s_mag{i}", True) for i in range(3)]
        s_norm = [out_reg(self.screen_norm[i], f"s_norm{i}", True) for i in range(3)]
        s_kn = out_reg(self.screen_key_norm, "s_key_norm", True)
        s_mag_nz = [out_reg(self.screen_mag_nz[i], f"s_mag_nz{i}", True) for i in range(3)]
        s_norm_nz = [out_reg(self.screen_norm_nz[i], f"s_norm_nz{i}", True) for i in range(3)]
        s_kn_nz = out_reg(self.screen_key_norm_nz, "s_key_norm_nz", True)

        # Every candidate dot product is one of a few sums of the accumulators; ClusterDots
        # accumulates each of them, and its negation, in registers of their own ("Fmax,
        # thirteenth round" in docs/cluster.md), so the magnitude is a multiplexer behind a
        # register's sign bit, with no carry chain.  The candidate's value and magnitude are
        # then picked from those options by one-hot conditions (AND-OR), formed from the
        # control inputs ("Fmax, ninth round").
        w = wd.dot

        def option(name, p, n):  # (p, |p|, group_nonzero(|p|)) for p and n = -p
            mag = Signal(unsigned(w), name=f"{name}_m")
            m.d.comb += mag.eq(Mux(p < 0, n, p))
            return p, mag, group_nonzero(mag)

        def one_hot(choices):  # [(condition, (value, magnitude, flags))], exclusive conditions
            # balanced ORs, log2(len) levels deep
            return tuple(one_hot_select([(c, o[j]) for c, o in choices]) for j in range(3))

        # the previous-token candidate: its dot product and when each form applies
        pend, new = self.pend, self.last_new
        which = self.last_sel
        kk = Signal(signed(w), name="kk_p")  # k.k_prev at the dot width
        m.d.comb += kk.eq(self.kk)
        prev_choices = [
            (~pend, option("acc2", acc[2], self.acc_neg[2])),
            (pend & new, option("kk", kk, self.kk_neg)),
            *(
                (pend & ~new & which[j], option(f"spec{j}", spec[2 + j], spec_neg[2 + j]))
                for j in range(3)
            ),
        ]
        eligible = []
        for i in range(3):
            is_prev = self.prev[i]
            ex = self.ex[i] & (~is_prev | self.last_ok)
            if i == LEFT:  # always the token before
                cid, dot = self.last_id, one_hot(prev_choices)
                norm, count = self.last_norm, self.last_count
                norm_nz = group_nonzero(self.last_norm)
            else:
                k = 0 if i == TEMPORAL else 1
                own = self.own_id[k]
                meta = self.meta[k]
                corr = self.pend & self.last_merge & self.last_ok & (self.last_id == own)
                cid = Mux(is_prev, self.last_id, own)
                dot = one_hot(
                    [
                        (~is_prev & ~corr, option(f"own{k}", acc[k], self.acc_neg[k])),
                        (~is_prev & corr, option(f"own{k}kk", spec[k], spec_neg[k])),
                        *((is_prev & c, v) for c, v in prev_choices),
                    ]
                )
                # The last decision's meta write may come after the meta read (made after this
                # token's start): its own registers stand in for the table.
                last = is_prev | (self.last_ok & (self.last_id == own))
                norm = Mux(last, self.last_norm, meta.norm)
                count = Mux(last, self.last_count, meta.count)
                norm_nz = Mux(last, group_nonzero(self.last_norm), group_nonzero(meta.norm))
            el = Signal(name=f"t1_elig{i}")
            m.d.comb += el.eq(ex & (count != cfg.count_max))
            eligible.append(el)
            with m.If(self.load):
                m.d.sync += [
                    o_id[i].eq(cid),
                    o_dot[i].eq(dot[0]),
                    o_mag[i].eq(dot[1]),
                    o_norm[i].eq(norm),
                    o_count[i].eq(count),
                    s_dot[i].eq(dot[0]),
                    s_mag[i].eq(dot[1]),
                    s_norm[i].eq(norm),
                    s_mag_nz[i].eq(dot[2]),
                    s_norm_nz[i].eq(norm_nz),
                ]
            m.d.sync += [
                o_new_norm[i].eq(o_norm[i] + 2 * o_dot[i] + o_kn),
                o_new_count[i].eq(o_count[i] + 1),
            ]
        with m.If(self.load):
            m.d.sync += [
                o_elig.eq(Cat(*eligible)),
                o_kn.eq(self.kn),
                s_kn.eq(self.kn),
                s_kn_nz.eq(group_nonzero(self.kn)),
            ]
        return m
