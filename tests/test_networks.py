from __future__ import annotations

import pytest
import torch

from busref.models.config import ModelConfig
from busref.models.networks import BusReF
from busref.models.networks.busref import normalised_base
from busref.models.networks.gaf import GAF, laplacian_pyramid, pyramid_up
from busref.models.networks.layers import DynamicConv2d, cells_to_normalised, correlation, cost_logits, expected_offset


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


def test_registration_output_shapes(model):
    vis, ir = torch.rand(2, 1, 64, 80), torch.rand(2, 1, 64, 80)
    with torch.no_grad():
        reg = model.register(vis, ir)
    assert reg.theta.shape == (2, 2, 3) and torch.isfinite(reg.theta).all()
    assert reg.grid.shape == reg.coarse_grid.shape == normalised_base(vis).shape
    assert reg.displacements[0].shape == (2, 2, 64, 80) and torch.isfinite(reg.grid).all()


def test_expected_offset_reads_the_best_match():
    """A sharp cost peak at offset (dx, dy) = (2, -1) gives that displacement, in cells."""
    radius = 2
    cost = torch.zeros(1, 25, 3, 4)
    cost[:, (-1 + radius) * 5 + (2 + radius)] = 50.0
    flow = expected_offset(cost, radius)
    assert torch.allclose(flow[:, 0], torch.full((1, 3, 4), 2.0), atol=1e-4)
    assert torch.allclose(flow[:, 1], torch.full((1, 3, 4), -1.0), atol=1e-4)
    # One cell of a 4-wide grid is 2/3 of the normalised range.
    assert torch.allclose(cells_to_normalised(flow)[:, 0], torch.full((1, 3, 4), 4 / 3), atol=1e-4)


def test_soft_argmax_of_a_cost_volume_reads_a_shift():
    """Features that match exactly (a shifted copy): the soft-argmax of their cost volume reads
    the shift, in the direction reference -> moving."""
    a = torch.randn(1, 64, 12, 16)
    shifted = torch.roll(a, shifts=(1, 2), dims=(2, 3))  # b(p + (2, 1)) = a(p): match at offset (2, 1)
    cost = correlation(torch.nn.functional.normalize(shifted, dim=1), torch.nn.functional.normalize(a, dim=1), 2)
    flow = expected_offset(cost * 64 * 50, 2)[:, :, 2:-2, 2:-2]
    assert torch.allclose(flow, torch.tensor([-2.0, -1.0]).view(1, 2, 1, 1).expand_as(flow), atol=1e-2)


def test_gaf_shape_range_and_guard(model):
    with torch.no_grad():
        out = model.fuse(torch.rand(1, 1, 64, 80), torch.rand(1, 1, 64, 80))
    assert out.shape == (1, 1, 64, 80) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="GAF expects"):
        model.fuse(torch.rand(1, 1, 64, 80), torch.rand(1, 1, 32, 80))


def test_laplacian_pyramid_collapses_back_exactly():
    """Any size (odd ones too): the bands added back from the base give the image."""
    x = torch.rand(2, 1, 45, 71)
    bands, lowpass = laplacian_pyramid(x, 4)
    assert [b.shape[-2:] for b in bands] == [(45, 71), (23, 36), (12, 18), (6, 9), (3, 5)]
    assert [g.shape for g in lowpass[1:]] == [b.shape for b in bands[1:]]
    image = bands[-1]
    for band in bands[-2::-1]:
        image = pyramid_up(image, band) + band
    assert torch.allclose(image, x, atol=1e-6)


def test_fresh_gaf_is_max_abs_pyramid_fusion():
    """Before training: the same source twice gives it back, and each half of the frame takes
    the detail of the source that has it there (max-abs on the bands), over the mean base."""
    torch.manual_seed(0)
    gaf = GAF().eval()
    x = 0.2 + 0.6 * torch.rand(1, 1, 64, 96)
    texture = 0.3 * torch.randn(1, 1, 64, 48).clamp(-1, 1)
    vis = 0.5 + torch.cat((texture, torch.zeros_like(texture)), dim=3)
    ir = 0.5 + torch.cat((torch.zeros_like(texture), texture), dim=3)
    with torch.no_grad():
        assert torch.allclose(gaf(x, x), x, atol=1e-5)
        fused = gaf(vis, ir)
    assert (fused - vis)[..., 8:-8, 4:40].abs().mean() < 0.02
    assert (fused - ir)[..., 8:-8, 56:92].abs().mean() < 0.02


def test_gaf_takes_multiples_of_8_and_refuses_other_sizes(model):
    """72x88 is no multiple of the pyramid's 32: its coarse levels are rounded up."""
    with torch.no_grad():
        out = model.fuse(torch.rand(1, 1, 72, 88), torch.rand(1, 1, 72, 88))
    assert out.shape == (1, 1, 72, 88) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="multiples of 8"):
        model.fuse(torch.rand(1, 1, 60, 80), torch.rand(1, 1, 60, 80))


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


def test_cost_logits_find_a_shift_among_nearly_equal_cosines():
    """Smooth features: every neighbour's cosine is within a few hundredths of the best one. The
    standardised logits still read the shift; the raw cosines times 10 (the scale an earlier design
    learned) shrink it towards zero."""
    g = torch.Generator().manual_seed(0)
    common = torch.randn(1, 32, 1, 1, generator=g)
    detail = 0.15 * torch.randn(1, 32, 12, 16, generator=g)
    a = common + detail
    moved = torch.roll(a, shifts=(1, 2), dims=(2, 3))  # b(p + (2, 1)) = a(p)
    na, nb = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(moved, dim=1)
    cost = correlation(na, nb, 2)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    spread = (cost.amax(1) - cost.amin(1))[inner[0], inner[2], inner[3]]
    assert spread.max() < 0.15  # nearly equal cosines (correlation averages over the 32 channels)
    truth = torch.tensor([2.0, 1.0]).view(1, 2, 1, 1)
    standardised = expected_offset(cost_logits(cost, torch.tensor(4.0)), 2)[inner]
    raw = expected_offset(cost * 32 * 10.0, 2)[inner]
    assert (standardised - truth).abs().mean() < 0.35
    assert (raw - truth).abs().mean() > 1.0
    varied = torch.randn(2, 25, 4, 5, generator=g)
    logits = cost_logits(varied, torch.tensor(1.0))
    assert logits.mean(1).abs().max() < 1e-5 and (logits.pow(2).mean(1) - 1).abs().max() < 1e-4
    assert torch.allclose(cost_logits(3.0 * varied + 0.5, torch.tensor(2.0)), 2.0 * logits, atol=1e-4)
