"""Stream drivers and bit packing shared by the cocotb testbenches.

In the style of cocotbext-axi: a :class:`StreamSource` drives ``<name>__valid`` /
``<name>__payload`` of an ``amaranth.lib.stream`` input (random idle gaps between beats), a
:class:`StreamSink` takes beats from an output with ``ready`` random every cycle (or held high
when ``stall`` is 0, so that a beat can be taken every cycle).  :func:`pack` / :func:`unpack`
convert between Amaranth layouts and the integers cocotb sees on a port; :func:`reset` is the
reset sequence every testbench uses.
"""

from __future__ import annotations

import json
import os
import random

from cocotb.triggers import ReadOnly, RisingEdge
from cocotb.utils import get_sim_time


async def reset(dut, cycles: int = 3) -> None:
    """Hold ``dut.rst`` high for ``cycles`` clock edges, then release it for one more edge."""
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


def pack(layout, fields: dict) -> int:
    """The integer a port of ``layout`` carries for ``fields`` (nested dicts/lists allowed)."""
    return layout.const(fields).as_value().value


def unpack(layout, raw: int) -> dict:
    """Top-level fields of ``layout`` from the integer ``raw`` (signed fields sign-extended)."""
    out = {}
    for name, field in layout:
        v = (raw >> field.offset) & ((1 << field.width) - 1)
        shape = field.shape
        if hasattr(shape, "signed") and shape.signed and v >> (field.width - 1):
            v -= 1 << field.width
        out[name] = v
    return out


def pack_signed(values, bits: int) -> int:
    """``values[i]`` as ``bits``-bit two's complement at bit ``i * bits`` (an ArrayLayout)."""
    mask = (1 << bits) - 1
    return sum((int(v) & mask) << (i * bits) for i, v in enumerate(values))


def unpack_signed(raw: int, bits: int, n: int) -> list[int]:
    out = []
    for i in range(n):
        v = (raw >> (i * bits)) & ((1 << bits) - 1)
        out.append(v - (1 << bits) if v >> (bits - 1) else v)
    return out


class StreamSource:
    """Drives ``<name>__valid/payload``; a beat is sent when valid and ready meet at an edge."""

    def __init__(self, dut, name: str, rng: random.Random, idle: float):
        self.clk = dut.clk
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.rng, self.idle = rng, idle
        self.valid.value = 0

    async def send(self, value: int) -> int:
        """Send one beat; return the sim time (ns) of the clock edge that took it."""
        while self.rng.random() < self.idle:
            await RisingEdge(self.clk)
        self.payload.value = value
        self.valid.value = 1
        while True:
            await ReadOnly()
            if self.ready.value == 1:
                await RisingEdge(self.clk)
                break
            await RisingEdge(self.ready)  # ready is low for long stretches: skip them
        self.valid.value = 0
        return get_sim_time("ns")


class StreamSink:
    """Takes beats from ``<name>__valid/payload``.

    ``stall`` is the probability of ``ready`` low in a cycle; with ``stall == 0`` ``ready`` is
    held high and a beat is taken at every edge where ``valid`` is high.
    """

    def __init__(self, dut, name: str, rng: random.Random, stall: float):
        self.clk = dut.clk
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.rng, self.stall = rng, stall
        self.ready.value = int(stall == 0)

    async def recv(self) -> tuple[int, int]:
        """Next beat: (payload, sim time in ns of the first cycle it was valid)."""
        await ReadOnly()
        if self.valid.value != 1:
            await RisingEdge(self.valid)
            await ReadOnly()
        first_valid = get_sim_time("ns")
        if self.stall == 0:
            raw = self.payload.value.to_unsigned()
            await RisingEdge(self.clk)
            return raw, first_valid
        while True:
            await RisingEdge(self.clk)
            self.ready.value = int(self.rng.random() >= self.stall)
            await ReadOnly()
            if self.ready.value == 1 and self.valid.value == 1:
                raw = self.payload.value.to_unsigned()
                await RisingEdge(self.clk)
                self.ready.value = 0
                return raw, first_valid


def spec_from_env(name: str) -> dict:
    """The JSON run spec a testbench gets in environment variable ``name``; ``@path`` names a
    file holding it (large specs, such as the benchmarks' keys)."""
    text = os.environ[name]
    if text.startswith("@"):
        with open(text[1:]) as f:
            text = f.read()
    return json.loads(text)
