"""model.dre.quant: symmetric rounding checked against hand-computed values."""

import pytest
import torch

from model.dre.quant import dequantize, qmax, quantize, round_half_away, symmetric_scale


def test_round_half_away_from_zero():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, -0.51])
    assert round_half_away(x).tolist() == [-3, -2, -1, 1, 2, 3, 0, -1]


def test_quantize_saturates_symmetric():
    x = torch.tensor([-10.0, -1.0, 0.0, 0.26, 1.0, 10.0])
    q = quantize(x, 8, 1.0 / 127)
    assert q.tolist() == [-127, -127, 0, 33, 127, 127]


def test_scale_maps_max_to_qmax():
    x = torch.tensor([[0.5, -2.0], [1.0, 0.25]])
    s = symmetric_scale(x, 4)
    assert quantize(x, 4, s).abs().max().item() == qmax(4) == 7
    assert torch.allclose(dequantize(quantize(x, 4, s), s), x.double(), atol=float(s) / 2)


def test_bits_checked():
    with pytest.raises(ValueError, match="at least 2 bits"):
        qmax(1)
