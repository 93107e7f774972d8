"""Synthesis flows: Yosys generic cells with NAND2 gate equivalents, ECP5 via nextpnr."""
