"""Most similar of the clustering unit's candidates, for a forced merge (table full)."""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from model.dre_cluster import ClusterWidths
from model.dre_config import ConfigError, DREConfig


class MostSimilar(wiring.Component):
    """Index of the candidate of highest ``cos(k, S_i)`` among the valid ones (ties: lowest index),
    exactly as :meth:`model.dre_cluster.ClusterRef._decide` picks it: the first valid candidate,
    replaced by each later valid one that is strictly more similar
    (:func:`model.dre_cluster.more_similar`: ``dot_a |dot_a| |S_b|^2 > dot_b |dot_b| |S_a|^2``,
    a zero ``|S|^2`` counting as 1).

    Interface
    ---------
    dot : In(signed) x n, norm : In(unsigned) x n, valid : In(n)
        ``k.S_i``, ``|S_i|^2`` and whether candidate ``i`` takes part.
    best : Out(range(n))
        The choice for the inputs of two cycles before (0 if none is valid).

    Timing: free-running two-stage pipeline, latency 2, one decision per cycle.  Stage 1 registers
    ``dot_i |dot_i|``; stage 2 does the ``n (n-1)`` cross products and the choice.
    """

    def __init__(self, cfg: DREConfig, n: int = 3):
        if not isinstance(cfg, DREConfig):
            raise ConfigError(f"cfg must be a DREConfig, got {type(cfg).__name__}")
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"n={n!r} must be an integer >= 1")
        self.cfg, self.n = cfg, n
        wd = ClusterWidths.of(cfg)
        self._wd = wd
        super().__init__(
            {
                "dot": In(signed(wd.dot)).array(n),
                "norm": In(unsigned(wd.sum_norm)).array(n),
                "valid": In(n),
                "best": Out(range(n)),
            }
        )

    def elaborate(self, platform):
        wd, n = self._wd, self.n
        m = Module()
        sq = [Signal(signed(2 * wd.dot), name=f"sq{i}") for i in range(n)]
        nrm = [Signal(unsigned(wd.sum_norm), name=f"nrm{i}") for i in range(n)]
        valid = Signal(n)
        for i in range(n):
            dot = self.dot[i]
            m.d.sync += [
                sq[i].eq(dot * Mux(dot < 0, -dot, dot)),
                nrm[i].eq(Mux(self.norm[i] == 0, 1, self.norm[i])),
            ]
        m.d.sync += valid.eq(self.valid)

        def more(a, b):
            return sq[a] * nrm[b] > sq[b] * nrm[a]

        # Walk the candidates in order, as the reference does.
        best = Const(0, range(n))
        seen = Const(0)  # a valid candidate came before
        for a in range(n):
            take = valid[a] if a == 0 else valid[a] & (~seen | more_than(best, a, more))
            best = Mux(take, a, best)
            seen = seen | valid[a]
        m.d.sync += self.best.eq(best)
        return m


def more_than(best, a, more):
    """``more(a, best)`` for a ``best`` that is an Amaranth value over ``0 .. a-1``."""
    result = more(a, 0)
    for b in range(1, a):
        result = Mux(best == b, more(a, b), result)
    return result
