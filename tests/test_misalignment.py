from __future__ import annotations

import numpy as np
import pytest

from busref.models.misalignment import N_DRAWS, protocol_draws, protocol_pair


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(0, 255, size=(40, 56))) / 255.0


def test_protocol_is_bit_for_bit_deterministic():
    a = protocol_pair(7, _image(), "hard")
    b = protocol_pair(7, _image(), "hard")
    assert a.moving.tobytes() == b.moving.tobytes()
    assert a.inverse.tobytes() == b.inverse.tobytes()
    assert a.mask.tobytes() == b.mask.tobytes()


def test_pair_zero_known_draws_and_8bit_lattice():
    u = protocol_draws(0)
    assert u.shape == (N_DRAWS,) == (56,)
    np.testing.assert_allclose(u[:6], [0.27392337, -0.46042657, -0.91805295, -0.96694473, 0.62654048, 0.82551115],
                               atol=1e-8)
    p = protocol_pair(0, _image(), "moderate")
    assert np.array_equal(np.round(p.moving * 255), p.moving * 255)  # stored as 8-bit
    assert p.inverse.shape == (40, 56, 2) and p.mask.dtype == bool


def test_same_seed_at_both_levels_hard_moves_more():
    img = _image()
    mod, hard = protocol_pair(0, img, "moderate"), protocol_pair(0, img, "hard")
    assert np.array_equal(mod.draws, hard.draws)
    ys, xs = np.mgrid[0:40, 0:56]
    ident = np.stack((xs, ys), -1)
    assert np.abs(hard.inverse - ident).mean() > np.abs(mod.inverse - ident).mean()


def test_pair_zero_translation_value():
    # tx = u[4] * TRANS * W: the inverse map moves the centre by about -tx (small rotation/elastic aside).
    p = protocol_pair(0, _image(), "moderate")
    tx = 0.62654048 * 0.05 * 56
    centre = p.inverse[20, 28]
    assert abs((centre[0] - 27.5) + tx) < 1.5


def test_unknown_level_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown misalignment level 'extreme'"):
        protocol_pair(0, _image(), "extreme")


def test_the_wide_level_keeps_the_draws_and_reaches_an_uncalibrated_rigs_range():
    from busref.models.misalignment import LEVELS

    img = _image()
    hard, wide = protocol_pair(3, img, "hard"), protocol_pair(3, img, "wide")
    assert np.array_equal(hard.draws, wide.draws)
    assert (LEVELS["wide"].rot_deg, LEVELS["wide"].scale, LEVELS["wide"].trans) == (15.0, 0.10, 0.15)
    # The protocol's own levels are unchanged.
    assert LEVELS["moderate"] == type(LEVELS["moderate"])(5.0, 0.05, 0.03, 0.05, 0.02)
    assert LEVELS["hard"] == type(LEVELS["hard"])(10.0, 0.10, 0.05, 0.10, 0.04)
