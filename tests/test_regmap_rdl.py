"""The register map as SystemRDL, and what the PeakRDL tools make of it.

``hw.dre_regs.systemrdl`` writes the map of ``hw/dre_regs.py`` as SystemRDL; here it is compiled
with ``systemrdl-compiler``, turned into a C header (``peakrdl-cheader``), HTML
(``peakrdl-html``) and IP-XACT (``peakrdl-ipxact``).  The C header is compiled with ``cc`` into a
program that prints every register's offset and size and every field's position, width and
reset value, which must equal the Python map; the IP-XACT XML is read back and checked the same
way.  The tools are pinned in pyproject.toml (``make setup`` installs them).
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from peakrdl_cheader.exporter import CHeaderExporter
from peakrdl_html import HTMLExporter
from peakrdl_ipxact import IPXACTExporter
from systemrdl import RDLCompiler

from hw import dre_regs
from hw import export as hw_export
from model.dre.config import DREConfig

CONFIGS = {
    "default": DREConfig(),
    "small": DREConfig(d=16, lanes=4, bq=6, bk=6, n_max=16, k_cap=4, grid_max=36),
    "wide": DREConfig(bias_bits=48, n_max=65536, grid_max=65536, count_bits=32),
}


def compile_rdl(path):
    rdlc = RDLCompiler()
    rdlc.compile_file(str(path))
    return rdlc.elaborate()


def expected(cfg):
    """(offset, bytes, {field: (lsb, width, reset)}) per register, from the Python map."""
    out = {}
    for r in dre_regs.register_map(cfg):
        fields = {
            f.upper(): (lsb, w, (r.reset >> lsb) & ((1 << w) - 1))
            for f, lsb, w, _ in dre_regs.fields_of(r)
        }
        out[r.name] = (4 * r.addr, 4 * r.words, fields)
    return out


@pytest.mark.parametrize("cname", list(CONFIGS))
def test_c_header_matches_the_python_map(tmp_path, cname):
    cfg = CONFIGS[cname]
    rdl = tmp_path / "dre.rdl"
    rdl.write_text(dre_regs.systemrdl(cfg))
    root = compile_rdl(rdl)
    CHeaderExporter().export(root, str(tmp_path / "dre.h"))
    want = expected(cfg)
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "dre.h"', "int main(void) {"]
    for name, (_, _, fields) in want.items():
        size = f"sizeof(((dre_t *)0)->{name})"
        lines.append(f'    printf("R {name} %zu %zu\\n", offsetof(dre_t, {name}), {size});')
        for f in fields:
            m = f"DRE__{name}__{f}"
            lines.append(
                f'    printf("F {name} {f} %d %d %llu\\n", (int){m}_bp, (int){m}_bw, '
                f"(unsigned long long){m}_reset);"
            )
    lines += ["    return 0;", "}"]
    (tmp_path / "check.c").write_text("\n".join(lines) + "\n")
    cc = shutil.which("cc")
    assert cc, "a C compiler (cc) is needed to check the generated header"
    exe = tmp_path / "check"
    proc = subprocess.run(
        [cc, "-std=c11", "-Wall", "-Werror", "-o", str(exe), str(tmp_path / "check.c")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    got_regs, got_fields = {}, {}
    for ln in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split(
        "\n"
    ):
        if ln.startswith("R "):
            _, name, off, size = ln.split()
            got_regs[name] = (int(off), int(size))
        elif ln.startswith("F "):
            _, name, f, lsb, w, reset = ln.split()
            got_fields.setdefault(name, {})[f] = (int(lsb), int(w), int(reset))
    assert got_regs == {n: (o, b) for n, (o, b, _) in want.items()}
    assert got_fields == {n: f for n, (_, _, f) in want.items()}
    # the header defines no field the Python map lacks
    header = (tmp_path / "dre.h").read_text()
    n_fields = sum(len(f) for _, _, f in want.values())
    assert header.count("_bp ") == n_fields


def vnum(text: str) -> int:
    """An IP-XACT number: Verilog style (``'h1c``, ``8'd12``) or plain."""
    text = text.strip().replace("_", "")
    if "'" in text:
        digits = text.split("'")[1]
        return int(digits[1:], {"h": 16, "d": 10, "b": 2, "o": 8}[digits[0].lower()])
    return int(text, 0)


def test_ipxact_and_html(tmp_path):
    cfg = CONFIGS["default"]
    rdl = tmp_path / "dre.rdl"
    rdl.write_text(dre_regs.systemrdl(cfg))
    root = compile_rdl(rdl)
    HTMLExporter().export(root, str(tmp_path / "html"))
    assert (tmp_path / "html" / "index.html").exists()
    ral = "".join(p.read_text() for p in (tmp_path / "html" / "data").glob("ral-data-*.json"))
    assert all(f'"{r.name}"' in ral for r in dre_regs.register_map(cfg))
    IPXACTExporter().export(root, str(tmp_path / "dre.xml"))
    tree = ET.parse(tmp_path / "dre.xml")
    regs = {}
    for el in tree.iter():
        if el.tag.endswith("}register"):
            kids = {c.tag.split("}")[1]: c for c in el}
            fields = {}
            for fe in el:
                if fe.tag.endswith("}field"):
                    fk = {c.tag.split("}")[1]: c.text for c in fe}
                    fields[fk["name"].upper()] = (vnum(fk["bitOffset"]), vnum(fk["bitWidth"]))
            off, size = vnum(kids["addressOffset"].text), vnum(kids["size"].text)
            regs[kids["name"].text] = (off, size // 8, fields)
    want = expected(cfg)
    assert set(regs) == set(want)
    for name, (off, size, fields) in want.items():
        assert regs[name][:2] == (off, size), name
        assert regs[name][2] == {f: v[:2] for f, v in fields.items()}, name


def test_export_regmap_writes_rdl(tmp_path, capsys):
    """`python -m hw.export --regmap` prints the Markdown table and writes <out>.rdl."""
    out = tmp_path / "m.v"
    assert hw_export.main(["--regmap", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "| 0x0a | STATUS |" in cap.out and "m.rdl" in cap.err
    root = compile_rdl(out.with_suffix(".rdl"))
    assert root.top.inst_name == "m"
    assert not out.exists()  # --regmap writes no Verilog
