from __future__ import annotations

import pytest
import torch

from models.config import ModelConfig
from models.networks import BusReF
from models.networks.busref import normalised_base
from models.networks.layers import DynamicConv2d, correlation


@pytest.fixture(scope="module")
def model() -> BusReF:
    torch.manual_seed(0)
    return BusReF(ModelConfig(registration_size=(64, 80))).eval()


def test_feature_shapes(model):
    f = model.bus.encode(torch.rand(2, 1, 64, 80))
    c = model.config.bus.width
    assert f.f1.shape == (2, c, 32, 40) and f.f2.shape == (2, 2 * c, 16, 20)
    assert f.f3.shape == f.f4.shape == (2, 4 * c, 8, 10)
    assert model.bus(torch.rand(1, 1, 64, 80)).shape == (1, 1, 64, 80)


def test_untrained_registration_is_the_identity(model):
    vis, ir = torch.rand(2, 1, 64, 80), torch.rand(2, 1, 64, 80)
    with torch.no_grad():
        reg = model.register(vis, ir)
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    assert torch.allclose(reg.theta, eye, atol=1e-5)
    assert torch.allclose(reg.grid, normalised_base(vis), atol=1e-5)


def test_gaf_shape_range_and_guard(model):
    with torch.no_grad():
        out = model.fuse(torch.rand(1, 1, 64, 80), torch.rand(1, 1, 64, 80))
    assert out.shape == (1, 1, 64, 80) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="GAF expects"):
        model.fuse(torch.rand(1, 1, 64, 80), torch.rand(1, 1, 32, 80))


def test_encoder_rejects_sizes_not_multiple_of_8(model):
    with pytest.raises(ValueError, match="multiples of 8"):
        model.bus.encode(torch.rand(1, 1, 60, 80))


def test_dynamic_conv_is_per_sample():
    conv = DynamicConv2d(4, 4, kernels=3).eval()
    a, b = torch.rand(1, 4, 6, 6), torch.rand(1, 4, 6, 6)
    both = conv(torch.cat((a, b)))
    assert torch.allclose(both[0], conv(a)[0], atol=1e-6) and torch.allclose(both[1], conv(b)[0], atol=1e-6)


def test_correlation_peaks_at_the_true_shift():
    fa = torch.randn(1, 64, 12, 12, generator=torch.Generator().manual_seed(0))
    fb = torch.roll(fa, shifts=(1, 2), dims=(2, 3))  # content of fa at (y, x) sits at (y+1, x+2) in fb
    cost = correlation(fa, fb, radius=2)[0, :, 5, 5]
    assert int(cost.argmax()) == (1 + 2) * 5 + (2 + 2)
