"""Write-back queue of the clustering unit: updated cluster ids, each waiting at most once."""

from __future__ import annotations

from amaranth import C, Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from model.dre.config import DREConfig, require_config

#: The waiting lookup's second half selects among 2^GROUP_BITS dirty bits.
GROUP_BITS = 3


class WritebackQueue(wiring.Component):
    """The ids of clusters whose sums changed, in order of their first change, each at most once.

    Interface
    ---------
    update : In(1), update_id : In(range(n_max))
        Cluster ``update_id`` was updated (one cycle).  It is queued unless it is waiting
        already (one dirty bit per entry); no backpressure: ``n_max`` entries always suffice.
    ids : Out(stream.Signature(range(n_max)))
        The queue, to :class:`hw.cluster_writeback.ClusterWriteback`.  An id taken from it may
        be queued again by a later update (the write-back then runs again with the final sums).
    empty : Out(1)
        Nothing is waiting.

    Timing: an update is visible at ``ids`` two cycles later at the earliest.  The dirty bit
    of an id clears in the cycle it is taken, as the queue sees it: an update of the id in that
    cycle is not queued (the id is still waiting), one in any later cycle is.

    Structure: whether the updated id is waiting is looked up in two halves (the word of
    ``2^GROUP_BITS`` dirty bits holding its bit is registered, masked to that bit; the next
    cycle ORs it), and the id is written in that next cycle into a first-word-fall-through
    ``SyncFIFO`` (LUT RAM), which shows it one cycle later: two cycles after the update, as a
    ``SyncFIFOBuffered`` written in the cycle of the update would.  The taken id is registered
    and its dirty bit register clears one cycle late; in that cycle an update of the id counts
    as not waiting.  The queue's outputs are the same, cycle for cycle, as those of one dirty
    bit per id read and cleared in the cycle of the update and of the take
    (``tests/test_hw_cluster.py::test_writeback_queue_against_model``); neither the block RAM's
    output nor the lookup reaches the bits' enables.
    """

    def __init__(self, cfg: DREConfig):
        require_config(cfg)
        self.cfg = cfg
        super().__init__(
            {
                "update": In(1),
                "update_id": In(range(cfg.n_max)),
                "ids": Out(stream.Signature(range(cfg.n_max))),
                "empty": Out(1),
            }
        )

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        # A first-word-fall-through FIFO (read combinationally from LUT RAM) written one cycle
        # after the update: its output shows an id two cycles after the update, as a
        # SyncFIFOBuffered written in the cycle of the update would.  n_max entries suffice:
        # the FIFO and the pending write hold distinct waiting ids.
        m.submodules.fifo = fifo = SyncFIFO(width=cfg.index_bits, depth=cfg.n_max)
        dirty = Signal(cfg.n_max)
        # The id taken in the previous cycle: its dirty bit clears now (one cycle late), and an
        # update of it in this cycle sees it as not waiting (as the bit would read had it
        # cleared in the cycle of the take).
        popped, popped_id = Signal(), Signal(range(cfg.n_max))
        # Whether the updated id is waiting, in two halves: the word of GROUP bits that holds
        # its dirty bit now, masked by the one-hot of the id's low bits (and whether it is the
        # id taken in the previous cycle), is registered; the next cycle ORs the word, which
        # decides the write (two LUT levels to the FIFO's write enable with the update and the
        # clear, instead of a multiplexer on a register: "Fmax, twenty-second round").
        lo = min(GROUP_BITS, cfg.index_bits)
        words = Cat(dirty, C(0, (1 << cfg.index_bits) - cfg.n_max))
        word = Signal(1 << lo, reset_less=True)
        upd_q, clr_q = Signal(), Signal(reset_less=True)
        uid_q = Signal(range(cfg.n_max), reset_less=True)
        low = Cat(self.update_id[:lo] == j for j in range(1 << lo))
        m.d.sync += [
            upd_q.eq(self.update),
            uid_q.eq(self.update_id),
            word.eq(words.word_select(self.update_id[lo:], 1 << lo) & low),
            clr_q.eq(popped & (popped_id == self.update_id)),
        ]
        push = upd_q & ~(word.any() & ~clr_q)
        m.d.comb += [
            fifo.w_en.eq(push),
            fifo.w_data.eq(uid_q),
            self.ids.valid.eq(fifo.r_rdy),
            self.ids.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.ids.ready),
            self.empty.eq((fifo.level == 0) & ~push),
        ]
        m.d.sync += [popped.eq(fifo.r_rdy & self.ids.ready), popped_id.eq(fifo.r_data)]
        # An update sets its id's bit whether it is queued or not (when not, the bit is set and
        # not clearing): the bits do not wait for the lookup.
        for j in range(cfg.n_max):
            with m.If(self.update & (self.update_id == j)):
                m.d.sync += dirty[j].eq(1)
            with m.Elif(popped & (popped_id == j)):
                m.d.sync += dirty[j].eq(0)
        return m
