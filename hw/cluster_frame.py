"""Token acceptance and framing of the clustering unit: positions, frame registers, errors."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.cluster_dots import key_layout
from model.dre.cluster import ClusterWidths
from model.dre.config import DREConfig, require_config


def token_layout(cfg: DREConfig) -> data.StructLayout:
    """One accepted token with what the clustering unit needs of its frame.

    ``key``; ``pos`` (raster position) and ``upos`` (the position one row above, meaningful
    when ``ex[2]``); ``last`` (last token of its frame); the frame's ``tau_t``, ``tau_s`` and
    ``table`` (size); per candidate slot (bit 0 temporal, 1 left, 2 up): ``ex`` the slot exists
    by position (and, for temporal, the previous frame was complete with the same grid), ``d1``
    it names the token just before, ``d2`` the token two before; ``err``: the unit is in error
    (the token is answered ``dropped``)."""
    wd = ClusterWidths.of(cfg)
    return data.StructLayout(
        {
            "key": key_layout(cfg),
            "pos": 16,
            "upos": 16,
            "last": 1,
            "tau_t": wd.tau,
            "tau_s": wd.tau,
            "table": range(cfg.n_max + 1),
            "ex": 3,
            "d1": 3,
            "d2": 3,
            "err": 1,
        }
    )


class TokenFramer(wiring.Component):
    """Accepts keys one at a time into a one-token register, counting positions in frames of
    ``grid_w * grid_h`` tokens (raster order) and sampling the runtime registers at each frame
    start; checks them (the sticky ``error``).

    Interface
    ---------
    keys : In(stream.Signature(ArrayLayout(signed(bk), d)))
        The unit's key stream; ``ready`` while the token register is empty and not ``hold``
        and, at a frame start (``pos == 0``), ``grid_w`` and ``grid_h`` equal their values of
        the three cycles before (see Timing).
    grid_w, grid_h, tau_t, tau_s, table_size : In
        Runtime registers, sampled with the first token of a frame (``pos == 0``).
    hold : In(1)
        Accept nothing (a clear is pending).
    clear : In(1)
        Restart framing at position 0, forget the previous frame (no temporal candidate) and
        reset ``error``; only while the token register is empty.
    valid : Out(1), token : Out(token_layout)
        The accepted token (held until ``take``; undefined while not ``valid``).
    aged : Out(1)
        ``valid`` and the token was accepted before this cycle: memory reads addressed by
        ``rd_pos`` / ``rd_upos`` with two cycles of latency return its data.
    rd_pos, rd_upos : Out(16)
        ``token.pos`` / ``token.upos`` while ``valid``; before, the position (and the position
        one row above) that the next token accepted gets, so that a read addressed by them in
        the cycle of acceptance and after has the token's data in every ``aged`` cycle (reads
        of two cycles of latency: the owner map's, "Fmax, eleventh round").
    take : In(1)
        The token leaves the register in this cycle (only while ``valid``).
    error : Out(1)
        Sticky: set at a frame start if ``grid_w * grid_h`` is 0 or above ``grid_max``,
        ``table_size`` is 0 or above ``n_max``, or a tau is above ``2^F``; then every token has
        ``err`` set.  Reset by ``clear``.

    Timing
    ------
    A key is accepted in a cycle with ``keys.valid & keys.ready`` and is in ``token`` from the
    next cycle (``valid``), ``aged`` one cycle later; after ``take`` the next key can be
    accepted in the following cycle.  A frame that ends without error gives the next one a
    temporal candidate if the grid is unchanged.  The frame size ``grid_w * grid_h`` and its
    checks are registered (a DSP block with its own input and output registers, then the
    checks), so a frame's first token is accepted only while ``grid_w`` and ``grid_h`` equal
    their values of the three cycles before: not in the 3 cycles from a change of either, nor
    in the first 2 cycles after reset.  The registers sampled are still those of the cycle of
    acceptance.  The frame start, the end of a frame and ``col + 1`` are registered too; the
    token and frame registers load in every cycle the token register is empty (only the last
    such load, in the cycle of acceptance, is ever read).
    """

    def __init__(self, cfg: DREConfig):
        require_config(cfg)
        self.cfg = cfg
        wd = ClusterWidths.of(cfg)
        super().__init__(
            {
                "keys": In(stream.Signature(key_layout(cfg))),
                "grid_w": In(16),
                "grid_h": In(16),
                "tau_t": In(wd.tau),
                "tau_s": In(wd.tau),
                "table_size": In(range(cfg.n_max + 1)),
                "hold": In(1),
                "clear": In(1),
                "valid": Out(1),
                "token": Out(token_layout(cfg)),
                "aged": Out(1),
                "rd_pos": Out(16),
                "rd_upos": Out(16),
                "take": In(1),
                "error": Out(1),
            }
        )

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        # No reset on the token register (read only while ``valid``) nor on the frame registers
        # (read only at positions after the frame start that loaded them, ``pos != 0``; pos
        # is reset) and the previous frame's size (read only with ``temporal_ok``).
        tok = Signal(token_layout(cfg), reset_less=True)
        m.d.comb += self.token.eq(tok)

        def kept(shape):
            return Signal(shape, reset_less=True)

        pos, col, row = Signal(16), Signal(16), Signal(16)  # next token's position
        f_w, f_h, f_size = kept(16), kept(16), kept(32)  # sampled at the frame start
        f_tau_t, f_tau_s = kept(len(self.tau_t)), kept(len(self.tau_s))
        f_table = kept(range(cfg.n_max + 1))
        f_temporal = kept(1)  # this frame has a temporal candidate
        temporal_ok, prev_w, prev_h = Signal(), kept(16), kept(16)
        aged = Signal()
        m.d.comb += self.aged.eq(self.valid & aged)

        # The frame size, registered: grid_w / grid_h -> (w1, h1) -> their product (one DSP
        # block with its own input and output registers) -> its check.  ``steady`` says that
        # grid_w and grid_h equal (w1, h1) now and did in the two previous cycles: then
        # ``grid_size`` is the product of the current inputs and ``size_bad`` their check, and
        # only then is a frame's first token accepted.
        start = Signal(init=1)  # pos == 0, registered
        last_q = Signal()  # pos + 1 == f_size, registered (meaningful when not ``start``)
        col_p1 = Signal(17, init=1)  # col + 1, registered
        w1, h1 = kept(16), kept(16)
        grid_size = kept(32)  # (w1 x h1) of the previous cycle
        size_bad = kept(1)  # grid_size of the previous cycle is 0 or above grid_max
        size_one, size_two = kept(1), kept(1)  # it is 1, 2
        same = Signal()  # grid_w, grid_h equal w1, h1
        same_1, same_2 = Signal(), Signal()  # ``same`` one and two cycles ago
        m.d.comb += same.eq((self.grid_w == w1) & (self.grid_h == h1))
        m.d.sync += [
            w1.eq(self.grid_w),
            h1.eq(self.grid_h),
            grid_size.eq(w1 * h1),
            size_bad.eq((grid_size == 0) | (grid_size > cfg.grid_max)),
            size_one.eq(grid_size == 1),
            size_two.eq(grid_size == 2),
            same_1.eq(same),
            same_2.eq(same_1),
        ]
        steady = same & same_1 & same_2
        cur_w = Mux(start, self.grid_w, f_w)
        cur_h = Mux(start, self.grid_h, f_h)
        cur_size = Mux(start, grid_size, f_size)
        cur_tau_t = Mux(start, self.tau_t, f_tau_t)
        cur_tau_s = Mux(start, self.tau_s, f_tau_s)
        cur_table = Mux(start, self.table_size, f_table)
        cur_temporal = Mux(
            start, temporal_ok & (self.grid_w == prev_w) & (self.grid_h == prev_h), f_temporal
        )
        one = 1 << cfg.tau_frac_bits
        bad = (
            size_bad
            | (self.table_size == 0)
            | (self.table_size > cfg.n_max)
            | (self.tau_t > one)
            | (self.tau_s > one)
        )
        error_now = self.error | (start & bad)
        last = Mux(start, size_one, last_q)  # the token at ``pos`` ends its frame
        pos_next = Signal(16)
        m.d.comb += pos_next.eq(pos + 1)

        upos = Signal(16)
        m.d.comb += [
            upos.eq(pos - cur_w),
            self.rd_pos.eq(Mux(self.valid, tok.pos, pos)),
            self.rd_upos.eq(Mux(self.valid, tok.upos, upos)),
        ]
        accept = Signal()
        m.d.comb += [
            self.keys.ready.eq(~self.valid & ~self.hold & (~start | steady)),
            accept.eq(self.keys.valid & self.keys.ready),
        ]
        # The token register loads in every cycle it is empty, and the frame registers in every
        # such cycle at a frame start (both are read only after an acceptance, which is such a
        # cycle and the last of them before the read): their enables do not wait for
        # ``accept``, whose fan-out is the state below.
        with m.If(~self.valid):
            m.d.sync += [
                tok.err.eq(error_now),
                tok.key.eq(self.keys.payload),
                tok.pos.eq(pos),
                tok.upos.eq(upos),
                tok.last.eq(last),
                tok.tau_t.eq(cur_tau_t),
                tok.tau_s.eq(cur_tau_s),
                tok.table.eq(cur_table),
                tok.ex.eq(Cat(cur_temporal, col != 0, row != 0)),
                tok.d1.eq(Cat(Mux(start, size_one, f_size == 1), 1, cur_w == 1)),
                tok.d2.eq(Cat(Mux(start, size_two, f_size == 2), 0, cur_w == 2)),
            ]
            with m.If(start):
                m.d.sync += [
                    f_w.eq(self.grid_w),
                    f_h.eq(self.grid_h),
                    f_size.eq(grid_size),
                    f_tau_t.eq(self.tau_t),
                    f_tau_s.eq(self.tau_s),
                    f_table.eq(self.table_size),
                    f_temporal.eq(cur_temporal),
                ]
        with m.If(accept):
            m.d.sync += [self.valid.eq(1), aged.eq(0)]
            with m.If(start):
                m.d.sync += self.error.eq(error_now)
            # Advance the position; a complete frame without error gives the next one a
            # temporal candidate (every accepted token is decided, nothing aborts a frame).
            with m.If(last):
                m.d.sync += [pos.eq(0), col.eq(0), col_p1.eq(1), row.eq(0), start.eq(1)]
                with m.If(~error_now):
                    m.d.sync += [temporal_ok.eq(1), prev_w.eq(cur_w), prev_h.eq(cur_h)]
            with m.Else():
                m.d.sync += [
                    pos.eq(pos_next),
                    start.eq(pos.all()),  # pos_next wraps to 0
                    # (pos + 2 is pos_next + 1 except at the wrap, where ``start`` follows)
                    last_q.eq(pos + 2 == cur_size),
                ]
                with m.If(col_p1 == cur_w):
                    m.d.sync += [col.eq(0), col_p1.eq(1), row.eq(row + 1)]
                with m.Else():
                    m.d.sync += [col.eq(col_p1[:16]), col_p1.eq(col_p1[:16] + 1)]
        with m.Elif(self.valid):
            m.d.sync += aged.eq(1)
        with m.If(self.take):
            m.d.sync += self.valid.eq(0)
        with m.If(self.clear):
            m.d.sync += [
                temporal_ok.eq(0),
                self.error.eq(0),
                pos.eq(0),
                start.eq(1),
                col.eq(0),
                col_p1.eq(1),
                row.eq(0),
            ]
        return m
