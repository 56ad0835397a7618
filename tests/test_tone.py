"""The nets' tone normalisation: a per-image gamma to a target mean, and where the register path uses it."""

from __future__ import annotations

import pytest
import torch

from busref.models.config import ModelConfig
from busref.models.networks import BusReF
from busref.models.networks.tone import GAMMA_RANGE, match_mean_tone


def scene(seed: int = 0, size: tuple[int, int] = (64, 80)) -> torch.Tensor:
    """A smooth, structured image in (0, 1): blurred noise stretched to its range."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 1, size[0] + 8, size[1] + 8, generator=g), 9, stride=1)
    return 0.05 + 0.9 * (x - x.min()) / (x.max() - x.min())


def test_brings_each_image_s_mean_to_the_target() -> None:
    images = torch.cat([scene(0) ** 2.5, scene(1) ** 0.4])  # a dark and a bright one
    out = match_mean_tone(images, 0.6)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    for i in range(2):
        assert abs(float(out[i].mean()) - 0.6) < 0.01


def test_undoes_a_power_law_tone_curve() -> None:
    x = scene(2)
    assert torch.allclose(match_mean_tone(x ** 2, 0.6), match_mean_tone(x, 0.6), atol=2e-3)


def test_keeps_the_order_of_brightness_and_the_polarity() -> None:
    x = scene(3)
    out = match_mean_tone(x, 0.3)
    order = torch.argsort(x.flatten())
    assert bool((out.flatten()[order].diff() >= 0).all())


def test_leaves_the_padding_out_and_at_zero() -> None:
    x = scene(4) ** 2
    padded = x.clone()
    padded[..., :, :30] = 0  # a protocol pair's out-of-view area
    out = match_mean_tone(padded, 0.6)
    assert bool((out[..., :, :30] == 0).all())
    inside = out[..., :, 30:]
    assert abs(float(inside.mean()) - 0.6) < 0.01


def test_a_flat_or_black_image_stays_finite_with_a_bounded_gamma() -> None:
    flat = torch.full((1, 1, 16, 16), 0.999)
    flat[..., 0, 0] = 0.5
    out = match_mean_tone(flat, 0.6)
    assert torch.isfinite(out).all()
    assert float(out[..., 0, 0]) >= 0.5 ** GAMMA_RANGE[1] - 1e-6
    black = torch.zeros(1, 1, 16, 16)
    assert torch.equal(match_mean_tone(black, 0.6), black)


@pytest.mark.parametrize(("shape", "target", "match"), [((1, 2, 8, 8), 0.5, "B, 1, H, W"),
                                                        ((1, 1, 8, 8), 1.0, "target"),
                                                        ((1, 1, 8, 8), 0.0, "target")])
def test_refuses_bad_input(shape: tuple[int, ...], target: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        match_mean_tone(torch.rand(shape), target)


def test_the_nets_see_the_re_toned_ir_and_a_darker_copy_gets_their_answer() -> None:
    """With ``net_ir_tone_mean`` the nets' answer for ``ir ** 2`` is their answer for ``ir`` (no
    Lucas-Kanade stage here, so the grid is the nets' alone); without it the two differ."""
    torch.manual_seed(0)
    vis, ir = scene(5, (64, 64)), scene(6, (64, 64))
    toned = BusReF(ModelConfig(registration_size=(64, 64), net_ir_tone_mean=0.6)).eval()
    plain = BusReF(ModelConfig(registration_size=(64, 64))).eval()
    plain.load_state_dict(toned.state_dict())
    with torch.no_grad():
        same = (toned.register(vis, ir).grid - toned.register(vis, ir ** 2).grid).abs().max()
        moved = (plain.register(vis, ir).grid - plain.register(vis, ir ** 2).grid).abs().max()
    assert float(same) < 1e-3 < float(moved)


def test_the_config_refuses_a_target_outside_0_1() -> None:
    with pytest.raises(ValueError, match="net_ir_tone_mean"):
        ModelConfig(net_ir_tone_mean=1.5)
