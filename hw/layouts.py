"""Payload layouts of the DRE's streams, in one place.

Every stream payload a testbench or a host packs is defined here, once, with the name of the
stream it travels on.  ``amaranth.lib.data`` layouts put the first field in the low bits.

v1 retrieval (``hw.select_core`` / ``hw.selector``): ``select_query_layout``,
``select_result_layout``, ``select_key_load_layout``.
v2 retrieval (``hw.select_tokens``): ``token_query_layout``, ``token_result_layout``,
``token_key_load_layout``, ``TOKEN_ERROR_LAYOUT``.
DRE top level (``hw.dre``): ``key_layout`` (one key), ``query_layout`` (one query vector),
``queries_layout`` (v2: up to ``q_max`` query vectors and their number).
"""

from __future__ import annotations

from amaranth import signed, unsigned
from amaranth.lib import data, enum

from model.dre.config import DREConfig
from model.dre.tokens import GAIN_BITS

CYCLES_BITS = 32


class Kind(enum.Enum, shape=1):
    """What an output beat of a selector is."""

    RECORD = 0  #: one selected entry
    TRAILER = 1  #: end of a retrieval: ``planes_read``, ``cycles``, ``error``


# ---- the DRE top level ---------------------------------------------------------------------
def key_layout(cfg: DREConfig) -> data.ArrayLayout:
    """One key: ``d`` signed ``bk``-bit elements (the DRE's ``keys`` stream)."""
    return data.ArrayLayout(signed(cfg.bk), cfg.d)


def query_layout(cfg: DREConfig) -> data.ArrayLayout:
    """One query vector: ``d`` signed ``bq``-bit elements (the v1 DRE's ``queries`` stream)."""
    return data.ArrayLayout(signed(cfg.bq), cfg.d)


def n_q_bits(cfg: DREConfig) -> int:
    """Width of a query-count field: one bit more than q_max needs (Q > q_max is representable)."""
    return cfg.q_max.bit_length() + 1


def queries_layout(cfg: DREConfig) -> data.StructLayout:
    """``q_max`` query vectors and ``n_q``, how many of them count (the v2 DRE's ``queries``)."""
    return data.StructLayout(
        {"q": data.ArrayLayout(query_layout(cfg), cfg.q_max), "n_q": unsigned(n_q_bits(cfg))}
    )


# ---- v1 retrieval ----------------------------------------------------------------------------
def k_field_bits(cfg: DREConfig) -> int:
    """Width of the k_min / k_max query fields: one bit more than k_cap needs (k_max > k_cap)."""
    return cfg.k_cap.bit_length() + 1


def score_shape(cfg: DREConfig):
    """Signed shape holding every v1 partial score and bound ``P``, ``L``, ``U`` exactly.

    ``|bias| < 2^(bias_bits-1)``; the planes done so far add less than ``d * 2^(bq+bk-1)`` in
    magnitude and ``r * |Q|`` is below ``d * 2^(bq+bk-2)``: the sum is below
    ``2^(bias_bits-1) + 2^(bq+bk+bitlen(d))``, which ``max(bias_bits, bq+bk+bitlen(d)) + 2``
    signed bits hold.
    """
    return signed(max(cfg.bias_bits, cfg.bq + cfg.bk + cfg.d.bit_length()) + 2)


def select_query_layout(cfg: DREConfig) -> data.StructLayout:
    """One v1 query beat: ``q``, the margin, k_min, k_max, the candidate count N and ``no_exit``.

    ``no_exit = 1`` disables early exit (every candidate reads every plane); the selection is the
    same, only ``planes_read`` and the cycle count change.
    """
    kb = k_field_bits(cfg)
    return data.StructLayout(
        {
            "q": query_layout(cfg),
            "margin": unsigned(cfg.bias_bits),
            "k_min": unsigned(kb),
            "k_max": unsigned(kb),
            "n": unsigned(n_field_bits(cfg)),
            "no_exit": 1,
        }
    )


SELECT_ERROR_LAYOUT = data.StructLayout(
    {
        "n_zero": 1,  # N == 0
        "n_over": 1,  # N > n_max
        "k_max_zero": 1,  # k_max == 0
        "k_max_over": 1,  # k_max > k_cap
        "k_min_bad": 1,  # k_min == 0 or k_min > k_max
    }
)


def select_result_layout(cfg: DREConfig) -> data.StructLayout:
    """One v1 output beat: RECORD (``index``, ``score``) or TRAILER (``planes_read``,
    ``cycles``, ``error``).  Fields not used by a ``kind`` are zero."""
    return data.StructLayout(
        {
            "kind": Kind,
            "index": unsigned(cfg.index_bits),
            "score": score_shape(cfg),
            "planes_read": unsigned((cfg.n_max * cfg.bk).bit_length()),
            "cycles": unsigned(CYCLES_BITS),
            "error": SELECT_ERROR_LAYOUT,
        }
    )


def select_key_load_layout(cfg: DREConfig) -> data.StructLayout:
    """One key-load beat of the standalone v1 selector: entry ``index`` takes ``key`` and
    ``bias``."""
    return data.StructLayout(
        {
            "index": unsigned(cfg.index_bits),
            "key": key_layout(cfg),
            "bias": signed(cfg.bias_bits),
        }
    )


# ---- v2 retrieval ----------------------------------------------------------------------------
def budget_bits(cfg: DREConfig) -> int:
    """Width of a token budget: any sum of ``n_max`` counts fits (a larger budget takes all)."""
    return cfg.count_bits + cfg.n_max.bit_length()


def n_field_bits(cfg: DREConfig) -> int:
    """Width of the N field: one bit more than n_max needs (N > n_max is representable)."""
    return cfg.n_max.bit_length() + 1


def planes_read_bits(cfg: DREConfig) -> int:
    return (cfg.q_max * cfg.n_max * cfg.bk).bit_length()


TOKEN_ERROR_LAYOUT = data.StructLayout(
    {
        "n_zero": 1,  # N == 0
        "n_over": 1,  # N > n_max
        "q_zero": 1,  # n_q == 0
        "q_over": 1,  # n_q > q_max
        "gain_zero": 1,  # soft score with gain == 0
    }
)


def token_query_layout(cfg: DREConfig) -> data.StructLayout:
    """One v2 retrieval request (the ``query`` stream of ``hw.select_tokens``).

    ``queries`` (q_max vectors, the first ``n_q`` used), ``budget`` (tokens), ``n`` (entries
    ``0 .. n-1`` take part), ``no_exit`` (1: read every plane of every live entry), ``raw_max``
    (1: ``score_j = max_c s[c, j]``, 0: the normalised maximum), ``soft`` (1: the soft score of
    ``model.dre.tokens``, which ignores ``no_exit`` and ``raw_max``: every plane is read) and its
    ``gain`` (``model.dre.tokens.soft_gain``, ``1 .. 2^GAIN_BITS - 1``).
    """
    return data.StructLayout(
        {
            "queries": data.ArrayLayout(query_layout(cfg), cfg.q_max),
            "n_q": unsigned(n_q_bits(cfg)),
            "budget": unsigned(budget_bits(cfg)),
            "n": unsigned(n_field_bits(cfg)),
            "no_exit": 1,
            "raw_max": 1,
            "soft": 1,
            "gain": unsigned(GAIN_BITS),
        }
    )


def token_result_layout(cfg: DREConfig) -> data.StructLayout:
    """One v2 output beat: RECORD (``id``, ``take``) or TRAILER (``planes_read``, ``cycles``,
    ``error``).  Fields not used by a ``kind`` are zero."""
    return data.StructLayout(
        {
            "kind": Kind,
            "id": unsigned(cfg.index_bits),
            "take": unsigned(cfg.count_bits),
            "planes_read": unsigned(planes_read_bits(cfg)),
            "cycles": unsigned(CYCLES_BITS),
            "error": TOKEN_ERROR_LAYOUT,
        }
    )


def token_key_load_layout(cfg: DREConfig) -> data.StructLayout:
    """One key-load beat of the standalone v2 selector: entry ``index`` takes ``key``, ``count``."""
    return data.StructLayout(
        {
            "index": unsigned(cfg.index_bits),
            "key": key_layout(cfg),
            "count": unsigned(cfg.count_bits),
        }
    )


__all__ = [
    "CYCLES_BITS",
    "SELECT_ERROR_LAYOUT",
    "TOKEN_ERROR_LAYOUT",
    "Kind",
    "budget_bits",
    "k_field_bits",
    "key_layout",
    "n_field_bits",
    "n_q_bits",
    "planes_read_bits",
    "queries_layout",
    "query_layout",
    "score_shape",
    "select_key_load_layout",
    "select_query_layout",
    "select_result_layout",
    "token_key_load_layout",
    "token_query_layout",
    "token_result_layout",
]
