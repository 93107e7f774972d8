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
        The unit's key stream; ``ready`` while the token register is empty and not ``hold``.
    grid_w, grid_h, tau_t, tau_s, table_size : In
        Runtime registers, sampled with the first token of a frame (``pos == 0``).
    hold : In(1)
        Accept nothing (a clear is pending).
    clear : In(1)
        Restart framing at position 0, forget the previous frame (no temporal candidate) and
        reset ``error``; only while the token register is empty.
    valid : Out(1), token : Out(token_layout)
        The accepted token (held until ``take``).
    aged : Out(1)
        ``valid`` and the token was accepted before this cycle: memory reads addressed by
        ``token.pos`` / ``token.upos`` (one cycle of latency) return its data.
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
    temporal candidate if the grid is unchanged.
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

        # The frame configuration at a frame start (combinational view).
        start = pos == 0
        grid_size = Signal(32)  # one 16 x 16 product (one DSP block)
        m.d.comb += grid_size.eq(self.grid_w * self.grid_h)
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
            (grid_size == 0)
            | (grid_size > cfg.grid_max)
            | (self.table_size == 0)
            | (self.table_size > cfg.n_max)
            | (self.tau_t > one)
            | (self.tau_s > one)
        )
        error_now = self.error | (start & bad)

        accept = Signal()
        m.d.comb += [
            self.keys.ready.eq(~self.valid & ~self.hold),
            accept.eq(self.keys.valid & self.keys.ready),
        ]
        with m.If(accept):
            m.d.sync += [
                self.valid.eq(1),
                aged.eq(0),
                tok.err.eq(error_now),
                tok.key.eq(self.keys.payload),
                tok.pos.eq(pos),
                tok.upos.eq(pos - cur_w),
                tok.last.eq(pos + 1 == cur_size),
                tok.tau_t.eq(cur_tau_t),
                tok.tau_s.eq(cur_tau_s),
                tok.table.eq(cur_table),
                tok.ex.eq(Cat(cur_temporal, col != 0, row != 0)),
                tok.d1.eq(Cat(cur_size == 1, 1, cur_w == 1)),
                tok.d2.eq(Cat(cur_size == 2, 0, cur_w == 2)),
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
                    self.error.eq(error_now),
                ]
            # Advance the position; a complete frame without error gives the next one a
            # temporal candidate (every accepted token is decided, nothing aborts a frame).
            with m.If(pos + 1 == cur_size):
                m.d.sync += [pos.eq(0), col.eq(0), row.eq(0)]
                with m.If(~error_now):
                    m.d.sync += [temporal_ok.eq(1), prev_w.eq(cur_w), prev_h.eq(cur_h)]
            with m.Elif(col + 1 == cur_w):
                m.d.sync += [pos.eq(pos + 1), col.eq(0), row.eq(row + 1)]
            with m.Else():
                m.d.sync += [pos.eq(pos + 1), col.eq(col + 1)]
        with m.Elif(self.valid):
            m.d.sync += aged.eq(1)
        with m.If(self.take):
            m.d.sync += self.valid.eq(0)
        with m.If(self.clear):
            m.d.sync += [
                temporal_ok.eq(0),
                self.error.eq(0),
                pos.eq(0),
                col.eq(0),
                row.eq(0),
            ]
        return m
