"""Candidate-key storage of the DRE, organised by bit-plane: one plane of one key is one read."""

from __future__ import annotations

from amaranth import Cat, Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from model.dre.config import ConfigError, DREConfig


class PlaneReadSignature(wiring.Signature):
    """Read side of a :class:`PlaneStore`, as seen by its user (the selector core).

    Members (directions from the reader's side):

    ``en``, ``addr``, ``plane`` (Out) -> ``word`` (In, ``d`` bits): one cycle after a cycle with
    ``en`` high, ``word`` holds bit ``plane`` of every element of key ``addr`` (bit ``i`` = element
    ``i``).  While ``en`` is low ``word`` holds its value.

    ``bias_en``, ``bias_addr`` (Out) -> ``bias`` (In, signed ``bias_bits``): the same, for the bias.

    ``count_en``, ``count_addr`` (Out) -> ``count`` (In, ``count_bits``): the same, for the member
    count (read by the v2 selector; 0 when the store keeps no counts).
    """

    def __init__(self, cfg: DREConfig):
        self.cfg = cfg
        super().__init__(
            {
                "en": Out(1),
                "addr": Out(range(cfg.n_max)),
                "plane": Out(range(cfg.bk)),
                "word": In(cfg.d),
                "bias_en": Out(1),
                "bias_addr": Out(range(cfg.n_max)),
                "bias": In(signed(cfg.bias_bits)),
                "count_en": Out(1),
                "count_addr": Out(range(cfg.n_max)),
                "count": In(unsigned(cfg.count_bits)),
            }
        )


class PlaneWriteSignature(wiring.Signature):
    """Write side of a :class:`PlaneStore` (directions from the writer's side).

    In a cycle with ``en`` high, entry ``addr`` takes the whole key ``key`` (``d`` elements,
    signed ``bk`` bits each: every plane at once), its ``bias`` and its member ``count``.
    """

    def __init__(self, cfg: DREConfig):
        self.cfg = cfg
        super().__init__(
            {
                "en": Out(1),
                "addr": Out(range(cfg.n_max)),
                "key": Out(data.ArrayLayout(signed(cfg.bk), cfg.d)),
                "bias": Out(signed(cfg.bias_bits)),
                "count": Out(unsigned(cfg.count_bits)),
            }
        )


class PlaneStore(wiring.Component):
    """``n_max`` candidate keys and biases, stored as ``bk`` bit-plane memories.

    Storage: memory ``p`` (``p = 0 .. bk-1``) has ``n_max`` words of ``d`` bits; bit ``i`` of word
    ``j`` is bit ``p`` of ``key[j][i]`` in two's complement (``p = bk-1`` is the sign plane).  A
    separate ``n_max x bias_bits`` memory holds the signed biases (with ``biases=True``, the
    default) and, with ``counts=True``, an ``n_max x count_bits`` memory the member counts (v2
    selection).  All are
    :class:`amaranth.lib.memory.Memory` (block RAM / SRAM macros after synthesis).

    Interface
    ---------
    write : In(PlaneWriteSignature(cfg))
        One whole key (all ``bk`` planes), its bias and count per cycle; no backpressure.
    read : In(PlaneReadSignature(cfg))
        Plane read with one cycle of latency, one read per cycle; only the addressed plane's
        memory is enabled.  Bias and count reads on their own ports, same timing.

    Read-during-write of the same entry returns the *old* contents (ports are not transparent).
    Contents after reset are zero.

    ``out_reg=True`` (the pipelined v2 selector) registers every memory output in the fabric
    before the plane multiplexer: plane and count reads take **two** cycles, and the data of a
    read appears after two cycles with ``en`` (``count_en``) high; while ``en`` is low both
    stages hold, so a stalled reader keeps its data (a two-stage pipeline advanced by ``en``).
    The bias port keeps one cycle.  Nothing but timing changes.  These registers have no reset
    (their contents after reset are whatever the memory held), and the memories carry Yosys's
    ``no_rw_check`` (a read in the cycle of a write to the same entry is undefined: the reader
    must not use it), so that the ECP5 flow can fold the registers into the block RAMs' output
    registers (``synth.ecp5_flow``).

    ``biases=False`` (the v2 selectors, which read no bias) keeps no bias memory: ``write.bias``
    is ignored and ``read.bias`` is 0.  (Kept with its read port never enabled, the memory's
    read register has no driver in the Verilog, which Yosys reports.)
    """

    def __init__(
        self, cfg: DREConfig, *, counts: bool = False, out_reg: bool = False, biases: bool = True
    ):
        if not isinstance(cfg, DREConfig):
            raise TypeError(f"PlaneStore needs a DREConfig, got {cfg!r}")
        self.counts = bool(counts)
        self.biases = bool(biases)
        self.out_reg = bool(out_reg)
        # out_reg: reads that matter never meet a write (the reader is idle while keys load), so
        # synthesis needs no read-during-write logic between the memory and its output register
        self._attrs = {"no_rw_check": 1} if self.out_reg else None
        if cfg.n_max < 2:
            raise ConfigError(
                f"PlaneStore: n_max={cfg.n_max} must be >= 2 (a 1-entry memory has no address)"
            )
        self.cfg = cfg
        super().__init__(
            {"write": In(PlaneWriteSignature(cfg)), "read": In(PlaneReadSignature(cfg))}
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        words = []
        for p in range(cfg.bk):
            mem = m.submodules[f"plane{p}"] = Memory(
                shape=cfg.d, depth=cfg.n_max, init=[], attrs=self._attrs
            )
            wr = mem.write_port()
            rd = mem.read_port()
            m.d.comb += [
                wr.en.eq(self.write.en),
                wr.addr.eq(self.write.addr),
                wr.data.eq(Cat(self.write.key[i][p] for i in range(cfg.d))),
                rd.addr.eq(self.read.addr),
            ]
            if self.out_reg:  # every plane's two stages advance with the reader's pipeline
                m.d.comb += rd.en.eq(self.read.en)
                # no reset: the synthesis flow can fold it into the block RAM's output register
                word = Signal(cfg.d, name=f"word{p}", reset_less=True)
                with m.If(self.read.en):
                    m.d.sync += word.eq(rd.data)
                words.append(word)
            else:
                m.d.comb += rd.en.eq(self.read.en & (self.read.plane == p))
                words.append(rd.data)
        # The output mux follows the plane of the last enabled read, registered like the data.
        plane_q = Signal(range(cfg.bk))
        with m.If(self.read.en):
            m.d.sync += plane_q.eq(self.read.plane)
        if self.out_reg:
            # the second stage's select is one-hot, so the multiplexer is an AND-OR, which two
            # LUT levels can form behind the block RAM's output register (a binary select took
            # three; ABC may still map three: docs/select.md, seventh round)
            sel = Signal(cfg.bk, init=1)
            with m.If(self.read.en):
                m.d.sync += sel.eq(Cat(plane_q == p for p in range(cfg.bk)))
            m.d.comb += self.read.word.eq(
                Cat(Cat(words[p][i] & sel[p] for p in range(cfg.bk)).any() for i in range(cfg.d))
            )
        else:
            with m.Switch(plane_q):
                for p in range(cfg.bk):
                    with m.Case(p):
                        m.d.comb += self.read.word.eq(words[p])

        def side_memory(name, field, shape, attrs=None):  # one value per entry, own ports
            mem = m.submodules[name] = Memory(shape=shape, depth=cfg.n_max, init=[], attrs=attrs)
            wr = mem.write_port()
            rd = mem.read_port()
            m.d.comb += [
                wr.en.eq(self.write.en),
                wr.addr.eq(self.write.addr),
                wr.data.eq(getattr(self.write, field)),
                rd.en.eq(getattr(self.read, f"{field}_en")),
                rd.addr.eq(getattr(self.read, f"{field}_addr")),
            ]
            return rd.data

        if self.biases:
            m.d.comb += self.read.bias.eq(side_memory("bias", "bias", signed(cfg.bias_bits)))
        if self.counts:
            count = side_memory("counts", "count", unsigned(cfg.count_bits), self._attrs)
            if self.out_reg:
                count_q = Signal(cfg.count_bits, reset_less=True)
                with m.If(self.read.count_en):
                    m.d.sync += count_q.eq(count)
                m.d.comb += self.read.count.eq(count_q)
            else:
                m.d.comb += self.read.count.eq(count)
        return m
