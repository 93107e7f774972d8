"""Board build: UART, bridge protocol, host driver framing (no board needed), and a simulation of
bridge + DRE + driver framing on the serial line against model.dre.top.DRERef."""

from __future__ import annotations

import random

import pytest
from amaranth import Elaboratable, Module
from amaranth.sim import Simulator

from host.dre_driver import (
    OP_ASSIGNMENT,
    OP_READ,
    OP_SELECTION,
    Decoder,
    DREDriver,
    Message,
    ProtocolError,
    Widths,
    encode_key,
    encode_query,
    encode_read,
    encode_write,
    unpack_assignment,
    unpack_selection,
)
from hw.board import OSC_HZ, PLL_SETTINGS, BridgedDRE, ULX3STop, check_clock
from hw.dre_regs import ID_VALUE, register_map
from hw.uart_rx import UartRx
from hw.uart_tx import UartTx
from model.dre.config import ConfigError, DREConfig
from model.dre.top import DRERef, Registers

TINY = DREConfig(d=8, lanes=4, bq=4, bk=4, n_max=8, k_cap=4, grid_max=16, count_bits=5)
DIV = 4  # clock cycles per bit in simulation


# ---- framing, independent of the driver's own packing ------------------------------------------
def _twos(v, bits):
    return v + (1 << bits) if v < 0 else v


def test_encode_messages():
    cfg = TINY
    assert encode_write(0x0B, 0x12345678) == bytes([0x57, 0x0B, 0x78, 0x56, 0x34, 0x12])
    assert encode_read(3) == bytes([0x52, 3])
    key = [-8, 7, -1, 0, 1, 2, -3, 4]
    raw = sum(_twos(v, 4) << (4 * i) for i, v in enumerate(key))
    assert encode_key(cfg, key) == bytes([0x4B]) + raw.to_bytes(4, "little")
    q = [7, -8, 0, 0, 0, 0, 0, -1]
    raw = sum(_twos(v, 4) << (4 * i) for i, v in enumerate(q))
    assert encode_query(cfg, q) == bytes([0x51]) + raw.to_bytes(4, "little")
    with pytest.raises(ValueError):
        encode_key(cfg, [8] + [0] * 7)  # does not fit 4 bits
    with pytest.raises(ValueError):
        encode_key(cfg, [0] * 7)
    with pytest.raises(ValueError):
        encode_write(256, 0)


def test_decoder_splits_partial_messages():
    w = Widths.of(TINY)
    na, ns = (w.assignment + 7) // 8, (w.selection + 7) // 8
    stream = (
        bytes([OP_READ, 1, 2, 3, 4])
        + bytes([OP_ASSIGNMENT]) + (0x25).to_bytes(na, "little")
        + bytes([OP_SELECTION]) + (1 << (w.selection - 1)).to_bytes(ns, "little")
    )  # fmt: skip
    dec, got = Decoder(w), []
    for b in stream:  # one byte at a time
        got += dec.feed(bytes([b]))
    assert got == [
        Message("R", 0x04030201),
        Message("A", 0x25),
        Message("S", 1 << (w.selection - 1)),
    ]
    with pytest.raises(ProtocolError):
        Decoder(w).feed(b"\x00")


class _FakePort:
    """Answers register reads from a dict; records every byte written."""

    def __init__(self, words):
        self.words, self.out, self.written = words, bytearray(), bytearray()

    def write(self, data):
        self.written += data
        if data[0] == OP_READ:
            self.out += bytes([OP_READ]) + self.words[data[1]].to_bytes(4, "little")

    def read(self, n):
        data, self.out = bytes(self.out[:n]), self.out[n:]
        return data


def test_driver_registers_over_a_fake_port():
    cfg = TINY
    regs = {r.name: r for r in register_map(cfg)}
    two = next(r for r in regs.values() if r.words == 2)
    port = _FakePort({regs["ID"].addr: ID_VALUE, two.addr: 0x89ABCDEF, two.addr + 1: 0x1234})
    drv = DREDriver(port, cfg)
    assert drv.read_reg("ID") == ID_VALUE
    assert drv.read_reg(two.name) == 0x1234_89ABCDEF  # low word first
    drv.program(grid_w=3)
    assert port.written.endswith(encode_write(regs["GRID_W"].addr, 3))
    with pytest.raises(TimeoutError):
        drv.assignments(1)


def test_bridge_rejects_bad_parameters():
    with pytest.raises(ConfigError):
        BridgedDRE(TINY, divisor=2)
    with pytest.raises(ConfigError):
        UartRx(3)


def test_pll_settings_give_their_frequency():
    """Each EHXPLLL setting: output = 25 MHz * CLKFB_DIV / CLKI_DIV exactly, phase-detector input
    >= 3.125 MHz and VCO (output * CLKOP_DIV) in 400 .. 800 MHz (ECP5 data sheet, FPGA-DS-02012)."""
    for mhz, (ref, fb, div, cphase) in PLL_SETTINGS.items():
        assert OSC_HZ * fb == mhz * 1e6 * ref, mhz
        assert OSC_HZ / ref >= 3.125e6
        assert 400 <= mhz * div <= 800, mhz
        assert 0 <= cphase < div


def test_board_top_instantiates_the_pll():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    top = ULX3STop(TINY, 115200, 20_000_000)
    assert top.core.divisor == 174  # round(20e6 / 115200)
    il = ULX3S_85F_Platform().prepare(top, name="top").files["top.il"]
    il = il if isinstance(il, str) else il.decode()
    assert "EHXPLLL" in il and "CLKFB_DIV" in il
    check_clock(25_000_000)
    with pytest.raises(ConfigError):
        check_clock(33_000_000)


# ---- UART loopback -------------------------------------------------------------------------------
class _Loop(Elaboratable):
    def __init__(self):
        self.tx, self.rx = UartTx(DIV), UartRx(DIV)

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx, m.submodules.rx = self.tx, self.rx
        m.d.comb += self.rx.rx.eq(self.tx.tx)
        return m


def test_uart_loopback_back_to_back(seed):
    rng = random.Random(seed)
    data = [rng.randrange(256) for _ in range(40)] + [0x00, 0xFF, 0x55]
    dut = _Loop()
    got = []

    async def send(ctx):
        for b in data:
            ctx.set(dut.tx.bytes.payload, b)
            ctx.set(dut.tx.bytes.valid, 1)
            await ctx.tick().until(dut.tx.bytes.ready)
        ctx.set(dut.tx.bytes.valid, 0)

    async def receive(ctx):
        for _ in range(12 * DIV * (len(data) + 2)):
            await ctx.tick()
            assert not ctx.get(dut.rx.error)
            if ctx.get(dut.rx.valid):
                got.append(ctx.get(dut.rx.data))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(send)
    sim.add_testbench(receive)
    sim.run()
    assert got == data


# ---- bridge + DRE + driver framing, on the serial line -------------------------------------------
def test_bridge_dre_driver_against_reference(seed):
    """Registers, two frames of keys and three queries through the serial line of a BridgedDRE;
    every assignment and every retrieval (records, planes read, error flags) equals DRERef's."""
    cfg = TINY
    rng = random.Random(seed)
    dut = BridgedDRE(cfg, DIV)
    widths = Widths.of(cfg)
    regmap = {r.name: r for r in register_map(cfg)}
    one = 1 << cfg.tau_frac_bits
    regs = Registers(
        grid_w=2,
        grid_h=2,
        tau_t=rng.randint(one // 2, one),
        tau_s=rng.randint(one // 2, one),
        table_size=cfg.n_max,
        bias_scale=rng.randrange(1, 50),
        margin=rng.randrange(0, 40),
        k_min=1,
        k_max=cfg.k_cap,
    )
    ref = DRERef(cfg, regs)
    lo, hi = -(1 << (cfg.bk - 1)), (1 << (cfg.bk - 1)) - 1
    base = [rng.randint(lo, hi) for _ in range(cfg.d)]
    frames = [
        [
            [min(hi, max(lo, x + rng.randint(-1, 1))) for x in base]
            if rng.random() < 0.6
            else [rng.randint(lo, hi) for _ in range(cfg.d)]
            for _ in range(4)
        ]
        for _ in range(2)
    ]
    qlo, qhi = -(1 << (cfg.bq - 1)), (1 << (cfg.bq - 1)) - 1
    queries = [[rng.randint(qlo, qhi) for _ in range(cfg.d)] for _ in range(3)]

    # What the host sends, message by message, and what it must get back.
    script = []  # (bytes to send, messages to wait for)
    for name in ("GRID_W", "GRID_H", "TAU_T", "TAU_S", "TABLE_SIZE", "BIAS_SCALE"):
        script.append((encode_write(regmap[name].addr, getattr(regs, name.lower())), []))
    for name in ("MARGIN", "K_MIN", "K_MAX"):
        script.append((encode_write(regmap[name].addr, getattr(regs, name.lower())), []))
    script.append((encode_read(regmap["ID"].addr), [("R", ID_VALUE)]))
    for keys in frames:
        ids, status = ref.add_frame(keys)
        want = [
            ("A", (i, s, int(n == 3))) for n, (i, s) in enumerate(zip(ids, status, strict=True))
        ]
        script.append((b"".join(encode_key(cfg, k) for k in keys), want))
    for q in queries:
        r = ref.retrieve(q)
        script.append((encode_query(cfg, q), [("S", (r.records, r.planes_read, r.error))]))
    script.append((encode_read(regmap["N_CLUSTERS"].addr), [("R", ref.n_clusters)]))

    received: list[Message] = []
    failures: list[str] = []

    async def host(ctx):
        ctx.set(dut.rx, 1)
        for _ in range(4):
            await ctx.tick()
        for data, want in script:
            for byte in data:
                for bit in [0, *((byte >> i) & 1 for i in range(8)), 1]:
                    ctx.set(dut.rx, bit)
                    for _ in range(DIV):
                        await ctx.tick()
            for kind, value in want:
                got = await _next(ctx, kind)
                if kind == "A":
                    got = unpack_assignment(cfg, got.payload)
                elif kind == "S":
                    records = []
                    beat = unpack_selection(cfg, got.payload)
                    while beat["kind"] == 0:
                        records.append((beat["index"], beat["score"]))
                        beat = unpack_selection(cfg, (await _next(ctx, "S")).payload)
                    got = (records, beat["planes_read"], beat["error"])
                else:
                    got = got.payload
                if got != value:
                    failures.append(f"{kind}: got {got}, want {value} (seed {seed})")
        assert not ctx.get(dut.overrun)

    async def _next(ctx, kind):
        for _ in range(200_000):
            for i, msg in enumerate(received):
                if msg.kind == kind:
                    return received.pop(i)
            await ctx.tick()
        raise AssertionError(f"no {kind!r} message")

    async def line(ctx):  # the host's UART receiver: bytes from tx, into the driver's decoder
        dec = Decoder(widths)
        while True:
            await ctx.tick()
            if ctx.get(dut.tx):
                continue
            for _ in range(DIV + DIV // 2):  # to the middle of data bit 0
                await ctx.tick()
            byte = 0
            for i in range(8):
                byte |= ctx.get(dut.tx) << i
                for _ in range(DIV):
                    await ctx.tick()
            assert ctx.get(dut.tx) == 1, "stop bit"
            received.extend(dec.feed(bytes([byte])))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.add_testbench(line, background=True)
    sim.run()
    assert not failures, failures
    assert script, "nothing was checked"
