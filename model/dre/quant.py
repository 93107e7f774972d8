"""Symmetric integer quantisation shared by the golden model, the benchmarks and ``make sim``.

A tensor ``x`` becomes ``q = clamp(round_half_away(x / scale), -(2^(b-1)-1), 2^(b-1)-1)`` with one
positive ``scale`` per head (symmetric: zero maps to zero, the range is mirrored, and the most
negative code ``-2^(b-1)`` is never produced by quantisation so that negation cannot overflow;
the DRE itself accepts the full two's complement range).
"""

from __future__ import annotations

import torch


def qmax(bits: int) -> int:
    if bits < 2:
        raise ValueError(f"quantisation needs at least 2 bits, got {bits}")
    return (1 << (bits - 1)) - 1


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties away from zero (torch.round rounds ties to even)."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def symmetric_scale(x: torch.Tensor, bits: int, dim: int | None = None) -> torch.Tensor:
    """Scale so that max |x| (over ``dim`` reduced, or all) maps to the largest code."""
    amax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    return torch.clamp(amax.to(torch.float64), min=1e-12) / qmax(bits)


def quantize(x: torch.Tensor, bits: int, scale: torch.Tensor | float) -> torch.Tensor:
    """Integer codes (int64) of ``x`` at ``scale``; values beyond the range saturate."""
    m = qmax(bits)
    q = round_half_away(x.to(torch.float64) / scale)
    return torch.clamp(q, -m, m).to(torch.int64)


def dequantize(q: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    return q.to(torch.float64) * scale
