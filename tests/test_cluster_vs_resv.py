"""The integer reference (ClusterRef) and the float ReSV (model.resv.HeadClusters) agree.

Keys are small integers and the thresholds are multiples of 2^-F, so both models see exactly the
same numbers.  Every product of the float model's cosine *test* stays below 2^53 (checked), so
that arithmetic is exact and a disagreement there is a rule mismatch, not rounding.  The forced
merge's cross products (``dot |dot| |S_b|^2``) can exceed 2^53 once clusters are large (the
table of 4 entries); there the float model may round, and agreement is observed, not implied.
"""

from __future__ import annotations

import random

import pytest
import torch

from model.dre.cluster import STATUS_NAMES, ClusterRef
from model.dre.config import DREConfig
from model.resv import HeadClusters

CFG = DREConfig(d=16, lanes=4, bk=4, n_max=64, k_cap=4, grid_max=64, count_bits=16)


def _frames(rng, n, h, w, d, kind):
    base = [[rng.randint(-3, 3) for _ in range(d)] for _ in range(h * w)]
    out = []
    for t in range(n):
        if kind == "drift":
            f = [[max(-8, min(7, x + rng.randint(-1, 1))) for x in k] for k in base]
        elif kind == "random":
            f = [[rng.randint(-8, 7) for _ in range(d)] for _ in range(h * w)]
        else:  # "opposite": alternating opposite keys, flipping every frame, some zero keys
            f = [[x if (p + t) % 2 else -x for x in base[0]] for p in range(h * w)]
            f[rng.randrange(h * w)] = [0] * d
        out.append(f)
    return out


@pytest.mark.parametrize("kind", ["drift", "random", "opposite"])
@pytest.mark.parametrize("table_size", [4, 64])
def test_integer_and_float_models_agree(seed, kind, table_size):
    rng = random.Random(seed)
    F = CFG.tau_frac_bits
    h, w = 4, 5
    for _ in range(3):
        T_t, T_s = rng.randint(0, 1 << F), rng.randint(0, 1 << F)
        if rng.random() < 0.3:
            T_t, T_s = rng.choice([(0, 0), (1 << F, 1 << F), (0, 1 << F)])
        ref = ClusterRef(CFG, table_size=table_size, tau_t=T_t, tau_s=T_s)
        flt = HeadClusters(table_size, T_t / (1 << F), T_s / (1 << F))
        frames = _frames(rng, 6, h, w, CFG.d, kind)
        for t, keys in enumerate(frames):
            ids_i, st_i = ref.add_frame(keys, h, w)
            ids_f, st_f = flt.add_frame(
                torch.tensor(keys, dtype=torch.float64), h, w, torch.arange(h * w) + t * h * w
            )
            assert ids_i == ids_f.tolist(), (t, T_t, T_s)
            assert [STATUS_NAMES[s] for s in st_i] == st_f, (t, T_t, T_s)
        # Exactness guard: the float model's largest product is below 2^53.
        k2 = max(sum(x * x for x in k) for f in frames for k in f)
        assert (1 << (2 * F)) * k2 * max(ref.norms) < 1 << 53
        assert ref.counts == flt.counts.tolist()
        assert ref.sums == flt.sums.to(torch.int64).tolist()
        if table_size == 4:
            assert ref.forced > 0
