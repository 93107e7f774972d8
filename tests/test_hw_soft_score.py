"""hw.soft_score.SoftScore in amaranth.sim against model.dre.tokens.soft_scores, bit for bit.

The reference itself is pinned against an independent brute force in
``tests/test_dre_soft_ref.py``.  Random problems cover extreme dot products (the saturation at
``UCAP``), counts of 0 .. count_max, ties, gains 1 .. 2^GAIN_BITS - 1, ``n_q`` 1 .. q_max
(and the out-of-contract 0 and q_max + 1), back-to-back retrievals and output backpressure.
"""

from __future__ import annotations

import random

import pytest
import torch
from amaranth.sim import Simulator

from hw.soft_score import SWEEP_MAX, SWEEP_SCORE, SWEEP_SUM, SoftScore
from model.dre.config import ConfigError
from model.dre.tokens import GAIN_BITS, soft_scores


def rand_problem(rng: random.Random, unit: SoftScore):
    n = rng.randint(1, unit.n_max)
    n_q = rng.randint(1, unit.q_max)
    hi = (1 << (unit.s_bits - 1)) - 1
    style = rng.choice(["full", "narrow", "ties", "extreme"])
    if style == "full":
        s = [[rng.randint(-hi - 1, hi) for _ in range(n)] for _ in range(n_q)]
    elif style == "narrow":
        s = [[rng.randint(-40, 40) for _ in range(n)] for _ in range(n_q)]
    elif style == "ties":
        lv = [rng.randint(-hi, hi) for _ in range(2)]
        s = [[rng.choice(lv) for _ in range(n)] for _ in range(n_q)]
    else:
        s = [[rng.choice([-hi - 1, hi, 0]) for _ in range(n)] for _ in range(n_q)]
    cmax = (1 << unit.count_bits) - 1
    counts = [rng.choice([0, 1, 2, rng.randint(0, cmax), cmax]) for _ in range(n)]
    counts[rng.randrange(n)] = max(1, counts[0])  # at least one live entry
    gain = rng.choice([1, 2, rng.randint(1, 4000), rng.randint(1, (1 << GAIN_BITS) - 1)])
    gain = rng.choice([gain, (1 << GAIN_BITS) - 1])
    return dict(s=s, counts=counts, gain=gain, n_q=n_q)


def reference(pr) -> list[int]:
    """Scores of the live entries (the unit sees only live entries: counts > 0)."""
    live = [j for j, c in enumerate(pr["counts"]) if c > 0]
    s = torch.tensor(pr["s"], dtype=torch.int64)[:, live]
    return soft_scores(s, [pr["counts"][j] for j in live], pr["gain"])


def run(
    unit: SoftScore,
    problems,
    rng: random.Random,
    stall=0.0,
    n_q_override=None,
    credit=False,
    idle=0.0,
):
    """``stall``: probability of ``scores.ready`` low in a cycle; ``idle``: probability of a gap
    of 1 .. 3 cycles before a beat (the input FIFO runs empty in mid-sweep and shows stale
    entries); ``credit``: offer a beat only while ``in_level < in_depth - 1`` (a producer with
    no beats in flight: the unit counts an accepted beat a cycle late), and then expect
    ``ready`` in the same cycle, as a credit-counting producer does."""
    lay = unit.entry_layout
    results, cycles = [], []

    async def drive(ctx):
        for pr in problems:
            live = [j for j, c in enumerate(pr["counts"]) if c > 0]
            ctx.set(unit.n_q, pr["n_q"] if n_q_override is None else n_q_override)
            ctx.set(unit.gain, pr["gain"])
            await ctx.tick()
            for sweep in (SWEEP_MAX, SWEEP_SUM, SWEEP_SCORE):
                for i, j in enumerate(live):
                    col = [pr["s"][c][j] for c in range(pr["n_q"])]
                    col += [0] * (unit.q_max - len(col))
                    fields = dict(
                        sweep=sweep,
                        first=int(i == 0),
                        last=int(i == len(live) - 1),
                        count=pr["counts"][j],
                        s=col,
                    )
                    if rng.random() < idle:
                        ctx.set(unit.entries.valid, 0)
                        await ctx.tick().repeat(rng.randint(1, 3))
                    ctx.set(unit.entries.payload, lay.const(fields))
                    if credit:
                        while ctx.get(unit.in_level) >= unit.in_depth - 1:
                            ctx.set(unit.entries.valid, 0)
                            await ctx.tick()
                        ctx.set(unit.entries.valid, 1)
                        assert ctx.get(unit.entries.ready), "in_level < in_depth - 1, not ready"
                        await ctx.tick()
                    else:
                        ctx.set(unit.entries.valid, 1)
                        await ctx.tick().until(unit.entries.ready)
            ctx.set(unit.entries.valid, 0)
            await ctx.tick().until(~unit.busy)

    async def collect(ctx):
        for _ in problems:
            got, t = [], 0
            while True:
                ctx.set(unit.scores.ready, int(rng.random() >= stall))
                _, _, valid, ready, payload = await ctx.tick().sample(
                    unit.scores.valid, unit.scores.ready, unit.scores.payload
                )
                t += 1
                assert t < 100_000, f"no last score after {t} cycles (lost or stuck output)"
                if valid and ready:
                    got.append(payload.score)
                    if payload.last:
                        break
            results.append(got)
            cycles.append(t)

    sim = Simulator(unit)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.add_testbench(collect)
    sim.run()
    return results


@pytest.mark.parametrize(
    "params,seed,stall,idle",
    [
        (dict(q_max=4, s_bits=12, count_bits=6, n_max=12), 1, 0.0, 0.0),
        (dict(q_max=4, s_bits=12, count_bits=6, n_max=12), 2, 0.5, 0.0),
        (dict(q_max=1, s_bits=25, count_bits=16, n_max=9), 3, 0.3, 0.0),
        (dict(q_max=3, s_bits=25, count_bits=16, n_max=20), 4, 0.0, 0.0),
        # one query: an entry a cycle into an output taken 1 cycle in 10, the FIFO fills
        (dict(q_max=1, s_bits=12, count_bits=6, n_max=40), 6, 0.9, 0.0),
        # gaps on the input: the FIFO runs empty in mid-sweep
        (dict(q_max=2, s_bits=12, count_bits=6, n_max=16), 7, 0.0, 0.3),
        (dict(q_max=3, s_bits=25, count_bits=16, n_max=12), 8, 0.3, 0.5),
    ],
)
def test_soft_score_matches_reference(params, seed, stall, idle):
    rng = random.Random(seed)
    unit = SoftScore(**params)
    problems = [rand_problem(rng, unit) for _ in range(12)]
    got = run(unit, problems, rng, stall=stall, idle=idle)
    for i, (pr, g) in enumerate(zip(problems, got, strict=True)):
        assert g == reference(pr), f"seed {seed} problem {i}: {pr}"


@pytest.mark.parametrize("in_depth", [2, 3, 16])
def test_input_fifo_depth_and_level_credit(in_depth):
    """The input FIFO at other depths (3: pointers that do not wrap by themselves; 16: the
    selector's), fed by a producer that looks at ``in_level`` instead of ``ready``."""
    rng = random.Random(100 + in_depth)
    unit = SoftScore(q_max=3, s_bits=12, count_bits=6, n_max=10, in_depth=in_depth)
    problems = [rand_problem(rng, unit) for _ in range(8)]
    got = run(unit, problems, rng, stall=0.3, credit=True)
    for i, (pr, g) in enumerate(zip(problems, got, strict=True)):
        assert g == reference(pr), f"in_depth {in_depth} problem {i}: {pr}"


def test_busy_from_the_cycle_after_a_beat_is_accepted():
    """``busy`` is high from the cycle after an idle unit accepts a beat (the beat is then in
    the input buffer, not yet in the head register) until its effect is complete."""
    unit = SoftScore(q_max=2, s_bits=10, count_bits=4, n_max=6)
    lay = unit.entry_layout

    async def bench(ctx):
        ctx.set(unit.n_q, 1)
        ctx.set(unit.gain, 100)
        ctx.set(unit.scores.ready, 1)
        await ctx.tick().repeat(3)
        assert not ctx.get(unit.busy)
        fields = dict(sweep=SWEEP_MAX, first=1, last=1, count=1, s=[5, 0])
        ctx.set(unit.entries.payload, lay.const(fields))
        ctx.set(unit.entries.valid, 1)
        await ctx.tick().until(unit.entries.ready)
        ctx.set(unit.entries.valid, 0)
        for cycle in range(3):  # buffer, head, MAX register
            assert ctx.get(unit.busy), f"busy low {cycle} cycles after the beat was accepted"
            await ctx.tick()

    sim = Simulator(unit)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_out_of_contract_n_q_does_not_hang():
    rng = random.Random(5)
    unit = SoftScore(q_max=2, s_bits=10, count_bits=4, n_max=6)
    pr = rand_problem(rng, unit)
    pr["n_q"], pr["s"] = 1, pr["s"][:1]
    (got,) = run(unit, [pr], rng, n_q_override=0)  # served as 1
    assert got == reference(pr)
    pr2 = rand_problem(rng, unit)
    while pr2["n_q"] != 2:
        pr2 = rand_problem(rng, unit)
    (got2,) = run(unit, [pr2], rng, n_q_override=3)  # served as q_max
    assert got2 == reference(pr2)


def test_cycles_follow_the_documented_formula():
    """``N * (1 + 2 n_q) + Z_CYCLES * n_q + FIXED_CYCLES`` (SoftScore docstring)."""
    unit = SoftScore(q_max=4, s_bits=12, count_bits=6, n_max=32)
    lay = unit.entry_layout
    measured = {}

    def bench(n, n_q):
        async def drive(ctx):
            ctx.set(unit.n_q, n_q)
            ctx.set(unit.gain, 1000)
            ctx.set(unit.scores.ready, 1)
            await ctx.tick()
            beats = [(sw, i) for sw in (SWEEP_MAX, SWEEP_SUM, SWEEP_SCORE) for i in range(n)]
            sent = got = cycles = 0
            while got < n:
                if sent < len(beats):
                    sw, i = beats[sent]
                    fields = dict(sweep=sw, first=int(i == 0), last=int(i == n - 1), count=1)
                    ctx.set(unit.entries.payload, lay.const({**fields, "s": [i, -i, 2 * i, 3]}))
                ctx.set(unit.entries.valid, int(sent < len(beats)))
                _, _, v, r, out = await ctx.tick().sample(
                    unit.entries.valid, unit.entries.ready, unit.scores.valid
                )
                cycles += 1
                sent += int(v and r)
                got += int(out)
            measured[(n, n_q)] = cycles

        return drive

    # the documented figures (docs/soft.md, model/system.py): 9 cycles per query for Z_c, 27
    # fixed (the SUM and SCORE pipeline drains and the output FIFO)
    assert (unit.Z_CYCLES, unit.FIXED_CYCLES) == (9, 29)
    for n, n_q in ((1, 1), (5, 2), (17, 4), (9, 3)):
        sim = Simulator(unit)
        sim.add_clock(1e-6)
        sim.add_testbench(bench(n, n_q))
        sim.run()
        want = n * (1 + 2 * n_q) + unit.Z_CYCLES * n_q + unit.FIXED_CYCLES
        assert measured[(n, n_q)] == want, (n, n_q, measured[(n, n_q)], want)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(q_max=0, s_bits=10, count_bits=4, n_max=6), "q_max=0"),
        (dict(q_max=17, s_bits=10, count_bits=4, n_max=6), "q_max=17"),
        (dict(q_max=2, s_bits=1, count_bits=4, n_max=6), "s_bits=1"),
        (dict(q_max=2, s_bits=10, count_bits=0, n_max=6), "count_bits=0"),
        (dict(q_max=2, s_bits=10, count_bits=4, n_max=0), "n_max=0"),
        (dict(q_max=2.0, s_bits=10, count_bits=4, n_max=6), "q_max must be an integer"),
        (dict(q_max=2, s_bits=10, count_bits=4, n_max=6, in_depth=1), "in_depth=1"),
    ],
)
def test_parameters_are_checked(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        SoftScore(**kw)
