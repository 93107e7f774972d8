"""Register map of the DRE top level (:class:`hw.dre.DRE`) and its register bus.

Pure Python (no hardware here): the map is the one description that the RTL, the testbenches,
``python -m hw.export`` (JSON beside the Verilog, ``--regmap`` for a Markdown table) and
``docs/dre.md`` all use, so that host software and documentation cannot drift from the RTL.

Bus
---
:class:`RegisterBusSignature` (directions from the host's side): ``addr`` (word address),
``w_en`` / ``w_data`` (32 bits) write in the cycle they are high; ``r_en`` reads, and ``r_data``
holds the word one cycle later (and keeps it until the next read).  Writes to read-only or
unmapped words are ignored; reads of unmapped words return 0.  No wait states, no errors.

Map
---
Word addresses are fixed, independent of the configuration (a host driver needs no per-config
table).  A register of ``words = 2`` occupies ``addr`` (bits 31..0) and ``addr + 1`` (bits 63..32).
Reading the low word of a two-word register latches its high word; a following read of the high
word returns the latched value, so a 48-bit counter is read consistently low word first.
Fields are exactly as wide as the RTL needs for the configuration (:func:`register_map`); bits
above a field's width read as 0 and are ignored on writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from model.dre.cluster import ClusterWidths
from model.dre.config import DREConfig
from model.dre.tokens import GAIN_BITS
from model.dre.top import DEFAULT_GAIN

DATA_BITS = 32
ADDR_BITS = 6
#: value of the ID register: ASCII "VREX"
ID_VALUE = 0x56524558
#: width of every performance counter (wraps around; at 1 GHz it lasts 3 days)
COUNTER_BITS = 48

#: CMD register bits (write 1 to act; reads as 0)
CMD_CLEAR_TABLE = 1 << 0  # empty the centroid table and owner map, reset the cluster error
CMD_CLEAR_COUNTERS = 1 << 1  # zero every performance counter
CMD_CLEAR_ERRORS = 1 << 2  # zero the sticky retrieval error flags in STATUS

#: STATUS register bits
STATUS_CLUSTER_IDLE = 0  # every accepted key is clustered and written back
STATUS_SELECT_BUSY = 1  # a retrieval is under way
STATUS_CLUSTER_ERROR = 2  # sticky runtime error of the clustering unit (bad grid/table/tau)
STATUS_SELECT_ERROR = 3  # bits 3..7: sticky OR of the retrieval error flags of every trailer
#: names of the retrieval error flags, in bit order from STATUS_SELECT_ERROR (v1 selection)
SELECT_ERROR_NAMES = ("n_zero", "n_over", "k_max_zero", "k_max_over", "k_min_bad")
#: the same for v2 (token budget) selection: bits 3..7 (gain_zero: CTRL.soft with GAIN = 0)
TOKEN_ERROR_NAMES = ("n_zero", "n_over", "q_zero", "q_over", "gain_zero")
#: CTRL register bits
CTRL_NO_EXIT = 1 << 0  # retrieval reads every plane (early exit off)
CTRL_RAW_MAX = 1 << 1  # v2: score = max over queries of the raw dot product (no normalisation)
CTRL_SOFT = 1 << 2  # v2: the soft score with gain GAIN (overrides raw_max; reads every plane)
#: CTRL at reset: the soft score (with GAIN at its reset value), the rule the product stands
#: for; a host that never writes CTRL gets it (docs/dre.md, "The v2 score")
CTRL_RESET = CTRL_SOFT
#: GAIN at reset: the order of the gain of 8-bit codes at d = 64 (``make sim``'s streams give
#: 3,600 .. 4,800); a host should write ``model.dre.tokens.soft_gain(q_scale, k_scale, d)``
GAIN_RESET = DEFAULT_GAIN


def ctrl_word(no_exit: int = 0, raw_max: int = 0, soft: int = 0) -> int:
    """The CTRL value for these bits (each 0 or 1), as a host writes it."""
    bits = {"no_exit": no_exit, "raw_max": raw_max, "soft": soft}
    for name, v in bits.items():
        if v not in (0, 1):
            raise ValueError(f"CTRL.{name}={v!r} must be 0 or 1")
    return no_exit * CTRL_NO_EXIT + raw_max * CTRL_RAW_MAX + soft * CTRL_SOFT


class RegisterBusSignature(wiring.Signature):
    """The DRE's register port, seen from the host (see the module docstring)."""

    def __init__(self):
        super().__init__(
            {
                "addr": Out(ADDR_BITS),
                "w_en": Out(1),
                "w_data": Out(DATA_BITS),
                "r_en": Out(1),
                "r_data": In(DATA_BITS),
            }
        )


@dataclass(frozen=True)
class Register:
    """One register: ``name``, word ``addr``, ``words`` (1 or 2), field ``width`` in bits,
    ``access`` ("ro" read-only, "rw" read-write, "w1" write-one-to-act, reads 0), ``reset``
    value and a one-line ``doc``."""

    name: str
    addr: int
    words: int
    width: int
    access: str
    reset: int
    doc: str

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "addr": self.addr,
            "words": self.words,
            "width": self.width,
            "access": self.access,
            "reset": self.reset,
            "doc": self.doc,
        }


#: counters in address order, with what they count
COUNTERS = (
    ("TOKENS", "keys accepted on the keys stream"),
    ("CLUSTERS", "assignments with status new (clusters created)"),
    ("FORCED", "assignments with status forced (table full)"),
    ("DROPPED", "assignments with status dropped"),
    ("QUERIES", "queries accepted on the queries stream"),
    ("PLANES_READ", "sum of planes_read over the retrieval trailers"),
    ("SELECT_CYCLES", "sum of cycles over the retrieval trailers"),
    ("BUSY_CYCLES", "cycles in which clustering or retrieval was busy"),
)


#: width of GRID_W and GRID_H (the clustering unit's grid ports)
GRID_BITS = 16


def reset_grid(cfg: DREConfig) -> tuple[int, int]:
    """Reset values of (GRID_W, GRID_H): one row of ``grid_max`` tokens, or for a ``grid_max``
    that GRID_W cannot hold (65536) the fewest equal rows that fit (32768 x 2)."""
    h = 1
    while cfg.grid_max % h or cfg.grid_max // h >= 1 << GRID_BITS:
        h += 1
    return cfg.grid_max // h, h


def register_map(cfg: DREConfig) -> list[Register]:
    """The registers of :class:`hw.dre.DRE` for ``cfg``, in address order."""
    wd = ClusterWidths.of(cfg)
    grid_w, grid_h = reset_grid(cfg)
    one = 1 << cfg.tau_frac_bits
    kb = cfg.k_cap.bit_length() + 1
    regs = [
        Register("ID", 0x00, 1, 32, "ro", ID_VALUE, 'constant 0x56524558, ASCII "VREX"'),
        Register("D", 0x01, 1, 16, "ro", cfg.d, "parameter d (key and query length)"),
        Register("LANES", 0x02, 1, 16, "ro", cfg.lanes, "parameter lanes"),
        Register("BQ", 0x03, 1, 8, "ro", cfg.bq, "parameter bq (query bits)"),
        Register("BK", 0x04, 1, 8, "ro", cfg.bk, "parameter bk (key bits)"),
        Register("N_MAX", 0x05, 1, 17, "ro", cfg.n_max, "parameter n_max (table entries)"),
        Register("K_CAP", 0x06, 1, 9, "ro", cfg.k_cap, "parameter k_cap (largest k_max)"),
        Register("GRID_MAX", 0x07, 1, 17, "ro", cfg.grid_max, "parameter grid_max"),
        Register(
            "CTRL",
            0x08,
            1,
            3,
            "rw",
            CTRL_RESET,
            "bit 0 no_exit: retrieval reads every plane; bit 1 raw_max (v2): no normalisation; "
            "bit 2 soft (v2): the soft score with GAIN (overrides bits 0 and 1)",
        ),
        Register("CMD", 0x09, 1, 3, "w1", 0, "bit 0 clear table, 1 clear counters, 2 clear errors"),
        Register(
            "STATUS",
            0x0A,
            1,
            8,
            "ro",
            1,
            "0 cluster idle, 1 select busy, 2 cluster error, 3..7 sticky retrieval errors",
        ),
        Register(
            "N_CLUSTERS",
            0x0B,
            1,
            cfg.n_max.bit_length(),
            "ro",
            0,
            "clusters allocated since the last clear (the N of every retrieval)",
        ),
        Register("GRID_W", 0x0C, 1, GRID_BITS, "rw", grid_w, "frame width in tokens"),
        Register("GRID_H", 0x0D, 1, GRID_BITS, "rw", grid_h, "frame height in tokens"),
        Register(
            "TAU_T",
            0x0E,
            1,
            wd.tau,
            "rw",
            one,
            f"temporal threshold, round(tau_t * 2^{cfg.tau_frac_bits})",
        ),
        Register(
            "TAU_S",
            0x0F,
            1,
            wd.tau,
            "rw",
            one,
            f"spatial threshold, round(tau_s * 2^{cfg.tau_frac_bits})",
        ),
        Register(
            "TABLE_SIZE",
            0x10,
            1,
            cfg.n_max.bit_length(),
            "rw",
            cfg.n_max,
            "centroid-table entries in use (1 .. n_max)",
        ),
        Register(
            "BIAS_SCALE",
            0x11,
            2,
            wd.bias_scale,
            "rw",
            0,
            "size-bias scale: bias = log2(n) * BIAS_SCALE",
        ),
        Register("MARGIN", 0x13, 2, cfg.bias_bits, "rw", 0, "retrieval margin, in score units"),
        Register("K_MIN", 0x15, 1, kb, "rw", 1, "retrieval k_min (1 .. k_max)"),
        Register("K_MAX", 0x16, 1, kb, "rw", cfg.k_cap, "retrieval k_max (1 .. k_cap)"),
        Register(
            "BUDGET",
            0x17,
            2,
            cfg.count_bits + cfg.n_max.bit_length(),
            "rw",
            0,
            "v2 retrieval: tokens to select (0: none)",
        ),
        Register("Q_MAX", 0x19, 1, 8, "ro", cfg.q_max, "parameter q_max (v2 query vectors)"),
        Register(
            "GAIN",
            0x1A,
            1,
            GAIN_BITS,
            "rw",
            GAIN_RESET,
            "v2 soft score: gain, soft_gain(q_scale, k_scale, d) (1 .. 2^18 - 1)",
        ),
    ]
    for i, (name, doc) in enumerate(COUNTERS):
        regs.append(Register(name, 0x20 + 2 * i, 2, COUNTER_BITS, "ro", 0, doc))
    for r in regs:  # the fixed map holds every configuration DREConfig accepts
        assert r.width <= DATA_BITS * r.words and r.addr + r.words <= 1 << ADDR_BITS, r
        assert 0 <= r.reset < 1 << r.width, r  # a reset value the register can hold
    return regs


#: registers read-only to software whose value the hardware changes (the rest of the "ro" ones
#: are constants: ID and the elaboration parameters)
LIVE = frozenset({"STATUS", "N_CLUSTERS", *(name for name, _ in COUNTERS)})


def fields_of(reg: Register) -> list[tuple[str, int, int, str]]:
    """The bit fields of ``reg``: (name, lsb, width, doc), low bits first.  Registers without
    named bits have one field ``value`` as wide as the register."""
    named = {
        "CTRL": [
            ("no_exit", 0, 1, "retrieval reads every plane (early exit off)"),
            ("raw_max", 1, 1, "v2: score = max of the raw dot products (no normalisation)"),
            ("soft", 2, 1, "v2: the soft score with GAIN; overrides no_exit and raw_max"),
        ],
        "CMD": [
            ("clear_table", 0, 1, "write 1: empty the centroid table and owner map"),
            ("clear_counters", 1, 1, "write 1: zero every performance counter"),
            ("clear_errors", 2, 1, "write 1: zero the sticky retrieval error flags"),
        ],
        "STATUS": [
            ("cluster_idle", STATUS_CLUSTER_IDLE, 1, "every accepted key is clustered"),
            ("select_busy", STATUS_SELECT_BUSY, 1, "a retrieval is under way"),
            ("cluster_error", STATUS_CLUSTER_ERROR, 1, "sticky clustering runtime error"),
            (
                "select_error",
                STATUS_SELECT_ERROR,
                len(SELECT_ERROR_NAMES),
                "sticky retrieval error flags, v1: "
                + ", ".join(SELECT_ERROR_NAMES)
                + "; v2: "
                + ", ".join(TOKEN_ERROR_NAMES),
            ),
        ],
    }
    if reg.name in named:
        out = named[reg.name]
        assert sum(w for _, _, w, _ in out) == reg.width, reg.name
        return out
    return [("value", 0, reg.width, reg.doc)]


def _rdl_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemrdl(cfg: DREConfig, name: str = "dre", rule: str = "v2") -> str:
    """The register map as a SystemRDL 2.0 ``addrmap`` (``python -m hw.export --regmap``).

    Byte addresses are word addresses times 4 (32-bit bus).  A two-word register is one
    64-bit register with ``accesswidth = 32`` (low word at the lower address).  Access: "rw" is
    ``sw = rw; hw = r``; "w1" is ``sw = w; singlepulse``; a constant "ro" (ID, parameters) is
    ``sw = r; hw = na`` with its value as reset; a live "ro" (status, counters) ``sw = r; hw = w``.
    """
    lines = [
        f"// Register map of the V-Rex DRE ({rule} rule), generated by python -m hw.export",
        f"// from hw/dre_regs.py for DREConfig {cfg.to_dict()}.  Do not edit.",
        f"addrmap {name} {{",
        f"    name = {_rdl_str('V-Rex dynamic KV-cache retrieval engine')};",
        f"    desc = {_rdl_str('Runtime registers, status and performance counters')};",
        f"    default regwidth = {DATA_BITS};",
        f"    default accesswidth = {DATA_BITS};",
    ]
    for r in register_map(cfg):
        if r.access == "rw":
            acc = "sw = rw; hw = r;"
        elif r.access == "w1":
            acc = "sw = w; hw = r; singlepulse;"
        elif r.name in LIVE:
            acc = "sw = r; hw = w;"
        else:
            acc = "sw = r; hw = na;"
        lines.append("    reg {")
        lines.append(f"        name = {_rdl_str(r.name)};")
        lines.append(f"        desc = {_rdl_str(r.doc)};")
        if r.words == 2:
            lines.append(f"        regwidth = {DATA_BITS * r.words};")
        for fname, lsb, width, doc in fields_of(r):
            reset = (r.reset >> lsb) & ((1 << width) - 1)
            lines.append(
                f"        field {{ desc = {_rdl_str(doc)}; {acc} }} "
                f"{fname}[{lsb + width - 1}:{lsb}] = {reset:#x};"
            )
        lines.append(f"    }} {r.name} @ {4 * r.addr:#x};")
    lines.append("};")
    return "\n".join(lines) + "\n"


def by_name(cfg: DREConfig) -> dict[str, Register]:
    return {r.name: r for r in register_map(cfg)}


def markdown(cfg: DREConfig) -> str:
    """The register map as a Markdown table (``python -m hw.export --regmap``)."""
    lines = [
        "| addr | name | words | width | access | reset | description |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in register_map(cfg):
        lines.append(
            f"| 0x{r.addr:02x} | {r.name} | {r.words} | {r.width} | {r.access} | "
            f"{r.reset:#x} | {r.doc} |"
        )
    return "\n".join(lines) + "\n"
