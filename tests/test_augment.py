"""Photometric augmentation of the registration inputs (models.augment)."""

from __future__ import annotations

import pytest
import torch

from busref.models.augment import PhotometricConfig, photometric_jitter


def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(16, 1, 24, 32)


def test_off_by_default_and_at_probability_zero() -> None:
    x = images()
    assert photometric_jitter(x, PhotometricConfig(), allow_invert=True) is x


def test_changes_every_sample_within_range_reproducibly() -> None:
    x = images()
    config = PhotometricConfig(probability=1.0)
    a = photometric_jitter(x, config, allow_invert=True, generator=torch.Generator().manual_seed(1))
    b = photometric_jitter(x, config, allow_invert=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert ((a - x).abs().mean(dim=(1, 2, 3)) > 1e-3).all()


def test_inversion_only_where_allowed() -> None:
    """Inverting a sample turns its correlation with the original negative: never for the visible input."""
    x = images()
    config = PhotometricConfig(probability=1.0, invert=1.0, max_blur_sigma=0.0, max_noise=0.0)

    def correlations(allow: bool) -> torch.Tensor:
        y = photometric_jitter(x, config, allow_invert=allow, generator=torch.Generator().manual_seed(2))
        xc, yc = x - x.mean(dim=(2, 3), keepdim=True), y - y.mean(dim=(2, 3), keepdim=True)
        return (xc * yc).sum(dim=(1, 2, 3))

    assert (correlations(True) < 0).all() and (correlations(False) > 0).all()


def test_refuses_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        photometric_jitter(torch.rand(2, 3, 8, 8), PhotometricConfig(probability=1.0), allow_invert=False)
