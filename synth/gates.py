"""NAND2 gate equivalents (GE) for the generic Yosys gate set, and for memories.

No open standard-cell Liberty file is installable here (no PyPI package checked carries one),
so ASIC area is estimated the classic way: the design is mapped by Yosys/ABC to a small set of
generic gates and flip-flops (:mod:`synth.yosys_flow`), and each cell is given the area of the
matching cell of a real, public library, expressed in NAND2 equivalents (1 GE = the area of a
2-input NAND).

Source of the areas
-------------------
Nangate 45 nm Open Cell Library (FreePDK45), ``NangateOpenCellLibrary_typical.lib``, cell
``area`` attribute of the X1 (smallest) drive strength, in um^2.  1 GE = NAND2_X1 = 0.798 um^2,
the usual definition of a gate equivalent for this library.  Cells are 1.4 um high; widths are
multiples of the 0.19 um placement grid, so every area below is a multiple of 0.266 um^2.

==============  =================  =========  =======
Yosys cell      library cell       um^2       GE
==============  =================  =========  =======
``$_NOT_``      INV_X1             0.532      0.667
``$_BUF_``      BUF_X1             0.798      1.000
``$_NAND_``     NAND2_X1           0.798      1.000
``$_NOR_``      NOR2_X1            0.798      1.000
``$_AND_``      AND2_X1            1.064      1.333
``$_OR_``       OR2_X1             1.064      1.333
``$_AOI3_``     AOI21_X1           1.064      1.333
``$_OAI3_``     OAI21_X1           1.064      1.333
``$_AOI4_``     AOI22_X1           1.330      1.667
``$_OAI4_``     OAI22_X1           1.330      1.667
``$_XOR_``      XOR2_X1            1.596      2.000
``$_XNOR_``     XNOR2_X1           1.596      2.000
``$_MUX_``      MUX2_X1            1.862      2.333
``$_DFF_[NP]_`` DFF_X1             4.522      5.667
``..._[NP]0_``  DFFR_X1            5.320      6.667
``..._[NP]1_``  DFFS_X1            5.320      6.667
==============  =================  =========  =======

Simplifications, all small against the totals: a negative-edge clock or an active-high async
reset costs one inverter per *net* in the library (Nangate flops are rising-edge, active-low
reset), which is not counted; clock-enable and synchronous reset are not flop features in this
library, so the flow turns them into gates (a MUX2 or an AND per bit) that *are* counted; wiring,
clock tree, buffering for fan-out and placement utilisation are not counted (multiply by
~1/0.7 for a placed-and-routed block).

Memories
--------
On-chip tables (``amaranth.lib.memory.Memory``) are kept out of the gate netlist and reported as
bits, then converted two ways, because which one a designer picks depends on the size:

* **SRAM macro**: ``SRAM_GE_PER_BIT`` = 6T bitcell 0.346 um^2 (Intel 45 nm high-k/metal-gate,
  Mistry et al., IEDM 2007) divided by an *assumed* 50 % array efficiency (decoders, sense
  amplifiers and I/O of a small macro) and by 0.798 um^2: 0.867 GE/bit.  Ports beyond one read
  and one write are not modelled (a multi-port macro is larger).
* **flip-flop array** (what a small table becomes without a memory compiler): per bit one DFF_X1
  plus one MUX2_X1 per write port (hold/load), plus per read port a MUX2 tree of ``depth - 1``
  MUX2 per bit of the word, plus a DFF_X1 per bit for each clocked read port.  Address decoding
  is not counted.  See :func:`flop_memory_ge`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: Area of NAND2_X1 in um^2: the unit of a gate equivalent.
NAND2_UM2 = 0.798

#: Yosys fine-grained cell type -> (library cell it stands for, area in um^2).
CELL_AREA_UM2: dict[str, tuple[str, float]] = {
    "$_NOT_": ("INV_X1", 0.532),
    "$_BUF_": ("BUF_X1", 0.798),
    "$_NAND_": ("NAND2_X1", 0.798),
    "$_NOR_": ("NOR2_X1", 0.798),
    "$_AND_": ("AND2_X1", 1.064),
    "$_OR_": ("OR2_X1", 1.064),
    "$_AOI3_": ("AOI21_X1", 1.064),
    "$_OAI3_": ("OAI21_X1", 1.064),
    "$_AOI4_": ("AOI22_X1", 1.330),
    "$_OAI4_": ("OAI22_X1", 1.330),
    "$_XOR_": ("XOR2_X1", 1.596),
    "$_XNOR_": ("XNOR2_X1", 1.596),
    "$_MUX_": ("MUX2_X1", 1.862),
    "$_DFF_P_": ("DFF_X1", 4.522),
    "$_DFF_N_": ("DFF_X1", 4.522),
    **{f"$_DFF_{c}{r}0_": ("DFFR_X1", 5.320) for c in "NP" for r in "NP"},
    **{f"$_DFF_{c}{r}1_": ("DFFS_X1", 5.320) for c in "NP" for r in "NP"},
}

#: Yosys cell type -> area in NAND2 gate equivalents.
GE: dict[str, float] = {cell: um2 / NAND2_UM2 for cell, (_, um2) in CELL_AREA_UM2.items()}

#: The gate set handed to ``abc -g`` (NOT is always added by ABC).  Every gate it can emit has
#: an entry in :data:`CELL_AREA_UM2`.
ABC_GATES = "AND,NAND,OR,NOR,XOR,XNOR,MUX,AOI3,OAI3,AOI4,OAI4"

#: The flip-flops ``dfflegalize`` may leave (enable and sync reset become gates).
DFF_CELLS = ("$_DFF_?_", "$_DFF_??0_", "$_DFF_??1_")

SRAM_BITCELL_UM2 = 0.346
SRAM_ARRAY_EFFICIENCY = 0.5
SRAM_GE_PER_BIT = SRAM_BITCELL_UM2 / SRAM_ARRAY_EFFICIENCY / NAND2_UM2

_FF = re.compile(r"^\$_(DFF|DFFE|SDFF|SDFFE|SDFFCE|DFFSR|DFFSRE|ALDFF|ALDFFE|DLATCH|SR)_")


class UnknownCell(KeyError):
    """A cell type has no area entry: the gate mapping emitted something the table lacks."""

    def __str__(self):
        return (
            f"no NAND2-equivalent area for Yosys cell type {self.args[0]!r}; "
            f"known: {', '.join(sorted(CELL_AREA_UM2))} (see synth/gates.py)"
        )


def is_flipflop(cell: str) -> bool:
    """True for a Yosys fine-grained storage cell (flip-flop or latch)."""
    return bool(_FF.match(cell))


def ge_of(counts: Mapping[str, int]) -> float:
    """Total GE of ``{cell_type: count}``.  Raises :class:`UnknownCell` for a type not in the
    table, rather than silently counting it as zero."""
    total = 0.0
    for cell, n in counts.items():
        if cell not in GE:
            raise UnknownCell(cell)
        total += n * GE[cell]
    return total


def flop_memory_ge(depth: int, width: int, rd_ports: int, wr_ports: int, rd_clocked: int) -> float:
    """GE of a ``depth`` x ``width`` memory built from flip-flops and multiplexers.

    Per stored bit: one DFF_X1 and one MUX2_X1 per write port.  Per read port: a multiplexer tree
    of ``depth - 1`` MUX2_X1 per output bit; a clocked read port adds one DFF_X1 per output bit.
    """
    dff, mux = GE["$_DFF_P_"], GE["$_MUX_"]
    bits = depth * width
    return (
        bits * (dff + wr_ports * mux)
        + rd_ports * (depth - 1) * width * mux
        + rd_clocked * width * dff
    )


def table_markdown() -> str:
    """The area table above as Markdown rows (for the generated report)."""
    rows = ["| Yosys cell | library cell (Nangate 45 nm, X1) | um^2 | GE |", "|---|---|---:|---:|"]
    for cell, (lib, um2) in CELL_AREA_UM2.items():
        rows.append(f"| `{cell}` | {lib} | {um2:.3f} | {um2 / NAND2_UM2:.3f} |")
    return "\n".join(rows)
