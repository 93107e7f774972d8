"""Small arithmetic building blocks shared by the clustering datapath (no components here).

* :func:`lut_mul`: a product written as shift-and-add, so that FPGA flows build it from LUTs
  and carry chains instead of a DSP block (Yosys maps every ``$mul`` of 2 x 2 bits or more to a
  MULT18X18D on the ECP5; the small products of the clustering unit must not use them).
* :func:`tree_sum`: a balanced adder tree (:func:`tree_level`, :func:`tree_reduce`: one level,
  and any operator).
* :func:`one_hot_select`: a multiplexer with one-hot selects, as AND-OR.
* :func:`normalise_terms`: leading-one normalisation of an unsigned value to an ``M``-bit
  mantissa and an exponent, the front end of the mantissa compares of
  ``hw/cluster_cosine.py``, as an AND-OR over groups of bits; :func:`group_nonzero` the first
  level of its leading-one search, which a stage before can form and register
  (:func:`bit_length_grouped` uses it too).
* :func:`normalise_by_onehot`: the same normalisation when the bit length is known one-hot a
  stage ahead, as for a square from its root (:func:`square_bitlen_onehot`).
"""

from __future__ import annotations

import math
import operator

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed


def tree_level(terms: list, op=operator.add) -> list:
    """One level of a balanced tree of ``op`` (the sum by default: Amaranth widens each sum by
    one bit): adjacent pairs combined, an odd last term passed through."""
    pairs = [op(terms[i], terms[i + 1]) for i in range(0, len(terms) - 1, 2)]
    return pairs + ([terms[-1]] if len(terms) % 2 else [])


def tree_reduce(terms: list, op):
    """``op`` over the (non-empty) ``terms`` as a balanced tree, ``ceil(log2(len))`` levels of
    :func:`tree_level` deep."""
    while len(terms) > 1:
        terms = tree_level(terms, op)
    return terms[0]


def tree_sum(terms: list):
    """Balanced adder tree (depth ceil(log2(len))); Amaranth widens each sum by one bit."""
    if not terms:
        return Value.cast(0)
    return tree_reduce(terms, operator.add)


def one_hot_select(pairs: list):
    """The value of the ``(condition, value)`` pair whose condition holds, 0 if none does; the
    conditions must be exclusive.  AND-OR: each value gated by its condition, then a balanced OR
    tree, ``ceil(log2(len))`` levels deep, with no priority chain."""
    return tree_reduce([Mux(c, v, 0) for c, v in pairs], operator.or_)


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


def _suffix_or(bits: list) -> list:
    """``s[j]`` = the OR of ``bits[j:]``, as a parallel-prefix tree (``ceil(log2(n))`` levels of
    2-input ORs, shared between the ``j``)."""
    s, k = list(bits), 1
    while k < len(s):
        s = [s[j] | s[j + k] if j + k < len(s) else s[j] for j in range(len(s))]
        k *= 2
    return s


def leading_one_onehot(v) -> list:
    """One-hot leading one of an unsigned value: element ``j`` is ``v[j]`` and no bit above it
    (none set for ``v = 0``)."""
    v = Value.cast(v)
    bits = [v[j] for j in range(len(v))]
    above = [*_suffix_or(bits)[1:], Const(0, 1)]
    return [b & ~a for b, a in zip(bits, above, strict=True)]


def leading_one(v) -> Value:
    """Position of the leading one of an unsigned value (``bitlen(v) - 1``; 0 for ``v = 0``),
    carry-free like :func:`bit_length`."""
    pairs = [(lj, j) for j, lj in enumerate(leading_one_onehot(v)) if j]
    return one_hot_select(pairs) if pairs else Const(0, 1)


def bit_length(v) -> Value:
    """``bitlen(v)`` of an unsigned value (0 for 0), carry-free: the constant ``j + 1`` selected
    by the one-hot leading one ``j`` (:func:`leading_one_onehot`, its ORs a parallel-prefix
    tree), by AND-OR.  Written as ``h + bitlen(high part)`` in a multiplexer tree, as it was
    until the twenty-second Fmax round of ``docs/cluster.md``, each constant sum became an
    ``$add`` cell, which Yosys maps onto a carry chain between LUTs: a routed path went through
    one."""
    return one_hot_select([(lj, j + 1) for j, lj in enumerate(leading_one_onehot(v))])


def exp_shape(width: int, mant: int):
    """Signed shape of a normalisation exponent ``bitlen(v) - M`` for ``v < 2^width`` (and of
    sums of a few of them): generous, so that no exponent sum in the datapath overflows."""
    return signed(max(width, mant).bit_length() + 4)


def square_bitlen_onehot(t) -> list:
    """One-hot ``bitlen(t^2)`` of an unsigned value ``t`` (``w`` bits) from ``t``'s own bits,
    with no product in front: element ``k`` (``0 .. 2 w``) is set iff ``bitlen(t^2) = k``;
    element 0 (``t = 0``) is ``Const(0)``, so an OR over the list is ``t != 0``.

    For ``bitlen(t) = b >= 1`` (``t[b-1]`` is the leading one: ``lead_b``), ``2^(2b-2) <= t^2 <
    2^(2b)``, and ``bitlen(t^2) = 2b`` iff ``t^2 >= 2^(2b-1)``, i.e. ``t >= c_b`` with ``c_b =
    ceil(2^(b-1) sqrt 2)`` (an integer constant; with ``lead_b`` only ``t``'s bits below ``b-1``
    need comparing): element ``2b`` is ``lead_b & hi_b``, element ``2b-1`` is ``lead_b &
    ~hi_b``.  A few LUT levels from ``t``, fewer than the product ``t^2`` itself, so a stage that
    registers ``t^2`` can register these beside it."""
    t = Value.cast(t)
    w = len(t)
    hot = [Const(0, 1)] * (2 * w + 1)
    for b in range(1, w + 1):
        lead = t[b - 1] & ~t[b:].any() if b < w else t[b - 1]
        c = math.isqrt((1 << (2 * b - 1)) - 1) + 1  # least integer with c^2 >= 2^(2b-1)
        hi = t[: b - 1] >= c - (1 << (b - 1)) if c < (1 << b) else Const(0, 1)
        hot[2 * b] = lead & hi
        hot[2 * b - 1] = lead & ~hi
    return hot


def normalise_by_onehot(v, hot: list, mant: int):
    """``(mantissa, exponent)`` of an unsigned value ``v`` whose bit length is given one-hot
    (``hot[k]`` set iff ``bitlen(v) = k``, ``k = 0 .. len(v)``, as from
    :func:`square_bitlen_onehot`), as values: for ``b = bitlen(v) > 0``, ``mantissa = floor(v
    2^(M - b))`` (``M = mant``; ``2^(M-1) <= mantissa < 2^M``) and ``exponent = b - M``, so
    ``mantissa 2^exponent <= v < (mantissa + 1) 2^exponent``; ``v = 0`` gives 0, ``-M``.

    Each mantissa bit ``i`` is ``v[b - M + i]`` (0 below bit 0), an AND-OR over the one-hot
    (:func:`one_hot_select`), and the exponent the constant ``k - M`` selected the same way:
    about three LUT levels for ``len(v)`` up to 34, against ten or more for a leading-one
    search and a shift by its result (``docs/cluster.md``, "Fmax, twenty-second round")."""
    v = Value.cast(v)
    width = len(v)
    if len(hot) != width + 1:
        raise ValueError(f"normalise_by_onehot: {len(hot)} one-hot bits for a {width}-bit value")
    esh = exp_shape(width, mant)

    def bit(i):
        return v[i] if 0 <= i < width else Const(0, 1)

    mantissa = Cat(
        *(
            one_hot_select([(hot[k], bit(k - mant + i)) for k in range(1, width + 1)])
            for i in range(mant)
        )
    )
    zero = ~Cat(*hot[1:]).any()
    exponent = one_hot_select(
        [(hot[k], Const(k - mant, esh)) for k in range(1, width + 1)] + [(zero, Const(-mant, esh))]
    )
    return mantissa, exponent.as_signed()


#: Bits per group of :func:`normalise_terms` and :func:`group_nonzero`.
NORM_GROUP = 5


def nonzero_groups(width: int, group: int = NORM_GROUP) -> int:
    """Number of ``group``-bit groups of a ``width``-bit value (the last one may be short)."""
    return max(1, -(-width // group))


def group_nonzero(v, group: int = NORM_GROUP) -> Value:
    """Bit ``g``: group ``g`` of ``v`` (bits ``group g`` .. ``group (g + 1) - 1``) is not zero;
    :func:`nonzero_groups` bits.  Formed and registered a stage ahead (where ``v``'s own
    register is loaded), it takes the first level of the leading-one search of
    :func:`normalise_terms` and :func:`bit_length_grouped` out of their stage."""
    v = Value.cast(v)
    n = nonzero_groups(len(v), group)
    return Cat(*(v[group * g : group * (g + 1)].any() for g in range(n)))


def _lead_groups(m: Module, nz, name: str) -> list:
    """One-hot: ``lead[g]`` is set for the highest set bit ``g`` of ``nz``
    (:func:`group_nonzero`); none for ``nz = 0``."""
    nz = Value.cast(nz)
    lead = []
    for g in range(len(nz)):
        above = nz[g + 1 :].any() if g < len(nz) - 1 else Const(0, 1)
        s = Signal(name=f"{name}_lead{g}")
        m.d.comb += s.eq(nz[g] & ~above)
        lead.append(s)
    return lead


def bit_length_grouped(m: Module, v, nz, name: str, group: int = NORM_GROUP) -> Signal:
    """``bitlen(v)`` (0 for 0) from ``nz = group_nonzero(v, group)`` (registered in the stage
    before): the group of the leading one (:func:`_lead_groups`) selects ``group g +
    bitlen(group g)`` by AND-OR, so no OR tree over ``v`` lies in front of the selection, as
    :func:`bit_length`'s suffix ORs do."""
    return _bitlen_from_lead(m, v, _lead_groups(m, nz, name), name, group)


def _bitlen_from_lead(m: Module, v, lead: list, name: str, group: int) -> Signal:
    """``bitlen(v)`` as ``OR_g lead[g] ? group g + bitlen(group g) : 0`` (``lead`` one-hot), with
    the constant ``group g + j + 1`` selected by ``lead[g]`` and the group's own leading one
    ``j``: AND-OR, no adder (:func:`bit_length`)."""
    v = Value.cast(v)
    width = len(v)
    bl = Signal(range(width + 1), name=f"{name}_bitlen")
    pairs = []
    for g, lg in enumerate(lead):
        grp = v[group * g : min(group * (g + 1), width)]
        pairs += [(lg & lj, group * g + j + 1) for j, lj in enumerate(leading_one_onehot(grp))]
    m.d.comb += bl.eq(one_hot_select(pairs))
    return bl


def normalise_terms(m: Module, v, mant: int, name: str, group: int = NORM_GROUP, nonzero=None):
    """``(mantissa, exponent)`` of an unsigned value ``v`` (as :func:`normalise_by_onehot`
    defines them) in two halves, with the mantissa built as an AND-OR over ``group``-bit groups
    of ``v`` instead of a shift by the bit length; returns ``(terms, bitlen)``: ``mantissa[t] =
    terms[t].any()`` (``terms`` may be registered in between; each ``terms[t]`` has
    ``ceil(groups / 2)`` bits) and ``exponent = bitlen - M`` (left to the caller, which may fold
    the constant into its exponent sums).

    Finding ``bitlen(v)`` (a multiplexer tree) and then shifting by it (one multiplexer level
    per bit of the shift) takes about 11 LUT4 levels for 21 .. 52 bits.  Here,
    with ``v`` cut into groups ``g`` (from bit 0), ``lead_g`` = group ``g`` holds the leading
    one (it is not zero and every group above it is: :func:`_lead_groups` on the groups'
    nonzero flags); within group
    ``g`` the mantissa bit ``t`` is ``v[p - M + 1 + t]`` for the group's own leading one ``p``
    (a priority multiplexer on the group's bits), and ``mantissa[t]`` is the OR over the groups
    of ``lead_g`` and that bit (one-hot).  ``terms[t]`` holds the ORs of pairs of groups' ANDs:
    with 5-bit groups, about 4 LUT4 levels from ``v`` (``lead_g`` 3, the pair 1), and the OR of
    the ``terms[t]`` is one more level up to 8 groups (40 bits).  More LUTs than the shift (each
    mantissa bit is an AND-OR over all groups).  ``bitlen`` is :func:`bit_length_grouped`'s,
    from the same ``lead_g``.

    ``nonzero``: ``group_nonzero(v, group)``, formed and registered in the stage before (an
    input that disagrees with ``v`` gives undefined results), so that ``lead_g`` is one or two
    LUT levels from registers instead of three from ``v``; without it the flags are formed
    here from ``v``."""
    v = Value.cast(v)
    width = len(v)
    groups = nonzero_groups(width, group)
    vp = Cat(v, Const(0, group * groups - width))
    if nonzero is None:
        nonzero = group_nonzero(v, group)
    nonzero = Value.cast(nonzero)
    if len(nonzero) != groups:
        raise ValueError(
            f"normalise_terms: nonzero has {len(nonzero)} bits, "
            f"{groups} groups of {group} in {width} bits"
        )
    lead = _lead_groups(m, nonzero, name)
    bl = _bitlen_from_lead(m, v, lead, name, group)

    def bit(i):  # v[i], 0 below bit 0
        return vp[i] if i >= 0 else Const(0, 1)

    def prio(vs, ds):  # ds[j] for the highest set vs[j] (vs, ds from bit 0 up)
        if len(vs) == 1:
            return ds[0]
        h = len(vs) // 2
        return Mux(Cat(*vs[h:]).any(), prio(vs[h:], ds[h:]), prio(vs[:h], ds[:h]))

    terms = []
    for t in range(mant):
        if t == mant - 1:  # the leading one itself
            ands = [lead[g] for g in range(groups)]
        else:
            ands = []
            for g in range(groups):
                vs = [vp[group * g + j] for j in range(group)]
                ds = [bit(group * g + j - mant + 1 + t) for j in range(group)]  # lead at j
                ands.append(lead[g] & prio(vs, ds))
        pairs = [
            ands[i] | ands[i + 1] if i + 1 < len(ands) else ands[i] for i in range(0, len(ands), 2)
        ]
        s = Signal(len(pairs), name=f"{name}_terms{t}")
        m.d.comb += s.eq(Cat(*pairs))
        terms.append(s)
    return terms, bl
