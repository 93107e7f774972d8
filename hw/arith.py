"""Small arithmetic building blocks shared by the clustering datapath (no components here).

* :func:`lut_mul`: a product written as shift-and-add, so that FPGA flows build it from LUTs
  and carry chains instead of a DSP block (Yosys maps every ``$mul`` of 2 x 2 bits or more to a
  MULT18X18D on the ECP5; the small products of the clustering unit must not use them).
* :func:`tree_sum`: a balanced adder tree.
* :func:`normalise`: leading-one normalisation of an unsigned value to an ``M``-bit mantissa
  and an exponent, the front end of the mantissa compares of ``hw/cluster_cosine.py``.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, Value, signed


def tree_sum(terms: list):
    """Balanced adder tree (depth ceil(log2(len))); Amaranth widens each sum by one bit."""
    if not terms:
        return Value.cast(0)
    while len(terms) > 1:
        pairs = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        terms = pairs + ([terms[-1]] if len(terms) % 2 else [])
    return terms[0]


def mul_rows(a, b) -> list:
    """The partial products of ``a * b`` (either may be signed): ``b[j] ? a << j : 0``, the top
    one negated when ``b`` is signed (two's complement weight); their sum is ``a * b``."""
    a, b = Value.cast(a), Value.cast(b)
    n = len(b)
    terms = []
    for j in range(n):
        t = Mux(b[j], a << j, 0)
        terms.append(-t if (j == n - 1 and b.shape().signed) else t)
    return terms


def lut_mul(a, b) -> Value:
    """``a * b`` (either may be signed) as the sum of its partial products (:func:`mul_rows`).
    Same value as ``a * b``, with no ``$mul`` cell for a synthesis tool to put into a DSP
    block."""
    return tree_sum(mul_rows(a, b))


def bit_length(v) -> Value:
    """``bitlen(v)`` of an unsigned value (0 for 0), as a balanced tree: the vector is split at a
    power of two ``h``, ``bitlen = h + bitlen(high part)`` if the high part is not zero, else
    ``bitlen(low part)``; depth ``ceil(log2(width))`` multiplexers (a priority chain of
    ``with m.If(v[b])`` statements is ``width`` multiplexers deep after synthesis)."""
    v = Value.cast(v)
    n = len(v)
    if n == 1:
        return v[0]
    h = 1 << ((n - 1).bit_length() - 1)  # largest power of two below n
    lo, hi = v[:h], v[h:]
    return Mux(hi.any(), h + bit_length(hi), bit_length(lo))


def exp_shape(width: int, mant: int):
    """Signed shape of a :func:`normalise` exponent ``bitlen(v) - M`` for ``v < 2^width`` (and of
    sums of a few of them): generous, so that no exponent sum in the datapath overflows."""
    return signed(max(width, mant).bit_length() + 4)


def normalise(m: Module, v, mant: int, name: str):
    """``(mantissa, exponent)`` of an unsigned value ``v``, combinationally.

    For ``v > 0`` with ``b = bitlen(v)``: ``mantissa = floor(v * 2^(M - b))`` (the top ``M = mant``
    bits of ``v``, shifted left when ``v`` has fewer), so ``2^(M-1) <= mantissa < 2^M``, and
    ``exponent = b - M``: ``mantissa * 2^exponent <= v < (mantissa + 1) * 2^exponent``, a
    relative truncation error below ``2^-(M-1)`` (none when ``b <= M``).  ``v = 0`` gives 0, -M.
    """
    v = Value.cast(v)
    width = len(v)
    bl = Signal(range(width + 1), name=f"{name}_bitlen")
    m.d.comb += bl.eq(bit_length(v))
    mantissa = Signal(mant, name=f"{name}_m")
    exponent = Signal(exp_shape(width, mant), name=f"{name}_e")
    m.d.comb += [mantissa.eq(((v << mant) >> bl)[:mant]), exponent.eq(bl - mant)]
    return mantissa, exponent
