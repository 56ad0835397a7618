"""Registration: geometry conventions, warp maps, plausibility/EMA/hold, and the scheduler thread."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from rigs import demo_rig
from tiny_graphs import metadata, write_register, write_track

from busref.conventions import affine_grid
from busref.rig_config import DEMO_RIG, RigConfig, load_rig
from busref.rig_config.schema import Plausibility, RegistrationConfig
from busref.runtime.backends.onnxruntime import OnnxRuntimeBackend
from busref.runtime.registration.geometry import (
    Estimate,
    RegistrationGeometry,
    identity_theta,
    pixels_to_theta,
    rgb_to_norm,
    run_register,
)
from busref.runtime.registration.plausibility import RELOCK_AFTER, RegistrationFilter, grid_quality
from busref.runtime.registration.scheduler import RegistrationScheduler

RGB = (160, 128)
REG = (64, 80)


def geometry(prior: np.ndarray | None = None, ir_size: tuple[int, int] = RGB) -> RegistrationGeometry:
    return RegistrationGeometry(rgb_size=RGB, ir_size=ir_size, reg_hw=REG, out_size=RGB,
                                prior=np.eye(3) if prior is None else prior)


def float_maps(g: RegistrationGeometry, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m1, m2 = g.maps(grid)
    return cv2.convertMaps(m1, m2, cv2.CV_32FC1)


def translation_theta(dx_px: float, dy_px: float, g: RegistrationGeometry) -> np.ndarray:
    """theta that samples the canvas ``(dx, dy)`` RGB pixels away from each reference pixel."""
    return pixels_to_theta(np.array([[1, 0, dx_px], [0, 1, dy_px], [0, 0, 1.0]]), g.rgb_size, g.reg_hw)


def texture(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.random((size[1] // 8, size[0] // 8)).astype(np.float32)
    return cv2.resize(noise, size, interpolation=cv2.INTER_CUBIC)


# --------------------------------------------------------------------------- geometry


def test_norm_convention_matches_cv2_resize_and_align_corners() -> None:
    n = rgb_to_norm((REG[1], REG[0]), REG)  # registration size = frame size: plain align_corners
    corners = n @ np.array([[0, 0, 1], [REG[1] - 1, REG[0] - 1, 1]], dtype=float).T
    np.testing.assert_allclose(corners[:2].T, [[-1, -1], [1, 1]])
    # at half size, RGB pixel 0.5 is the centre of registration pixel 0 (cv2.resize's convention)
    half = rgb_to_norm((2 * REG[1], 2 * REG[0]), REG) @ np.array([0.5, 0.5, 1.0])
    np.testing.assert_allclose(half[:2], [-1, -1], atol=1e-12)


def test_affine_grid_matches_theta_at_the_corners() -> None:
    theta = np.array([[0.9, 0.1, 0.05], [-0.1, 1.1, -0.2]])
    grid = affine_grid(theta, *REG, coordinates="normalised")
    for (y, x), (gx, gy) in {(0, 0): (-1, -1), (0, REG[1] - 1): (1, -1), (REG[0] - 1, 0): (-1, 1)}.items():
        np.testing.assert_allclose(grid[y, x], theta @ [gx, gy, 1], atol=1e-6)


def test_identity_maps_are_the_identity() -> None:
    g = geometry()
    x, y = float_maps(g, affine_grid(identity_theta(), *REG, coordinates="normalised"))
    gx, gy = np.meshgrid(np.arange(RGB[0]), np.arange(RGB[1]))
    # exact inside; the outermost half registration pixel is clamped by bilinear upsampling
    np.testing.assert_allclose(x[2:-2, 2:-2], gx[2:-2, 2:-2], atol=1 / 32)
    np.testing.assert_allclose(y[2:-2, 2:-2], gy[2:-2, 2:-2], atol=1 / 32)


def test_prior_is_applied_first_and_theta_on_top() -> None:
    prior = np.array([[1, 0, 10.0], [0, 1, 5.0], [0, 0, 1]])  # IR pixel (0, 0) is RGB pixel (10, 5)
    g = geometry(prior)
    theta = translation_theta(3.0, -2.0, g)
    x, y = float_maps(g, affine_grid(theta, *REG, coordinates="normalised"))
    # RGB (50, 40) -> canvas (53, 38) -> IR (43, 33)
    assert x[40, 50] == pytest.approx(43.0, abs=0.05) and y[40, 50] == pytest.approx(33.0, abs=0.05)
    np.testing.assert_allclose(g.frame_to_ir(theta) @ [50, 40, 1], [43, 33, 1], atol=1e-9)


def test_an_unset_prior_maps_a_smaller_ir_frame_onto_the_rgb_frame() -> None:
    ir_size = (RGB[0] // 2, RGB[1] // 2)
    camera = {"source": {"kind": "synthetic"}, "fps": 30}
    config = RigConfig.model_validate({
        "rig_id": "t",
        "cameras": {"ir": {**camera, "width": ir_size[0], "height": ir_size[1]},
                    "rgb": {**camera, "width": RGB[0], "height": RGB[1]}},
        "registration": {"size": REG},
    })
    g = RegistrationGeometry.from_config(config, out_size=RGB)
    x, y = float_maps(g, affine_grid(identity_theta(), *REG, coordinates="normalised"))
    # Pixel centres: RGB pixel x shows IR pixel (x + 0.5) * W_ir / W_rgb - 0.5.
    assert x[64, 100] == pytest.approx((100 + 0.5) * ir_size[0] / RGB[0] - 0.5, abs=0.05)
    assert y[64, 100] == pytest.approx((64 + 0.5) * ir_size[1] / RGB[1] - 0.5, abs=0.05)


def test_network_inputs_and_warp_realign_a_shifted_ir() -> None:
    """IR content sits 6 px right, 4 px down of the RGB content; the right theta realigns it."""
    g = geometry()
    scene = texture((RGB[0] + 20, RGB[1] + 20))
    rgb = scene[10:10 + RGB[1], 10:10 + RGB[0]]
    ir = scene[6:6 + RGB[1], 4:4 + RGB[0]]  # IR pixel (x, y) shows scene (x + 4, y + 6) = RGB (x - 6, y - 4)
    inputs = g.network_inputs((rgb * 255).astype(np.uint8), ir)
    assert inputs["vis"].shape == inputs["ir"].shape == (1, 1, *REG)
    m1, m2 = g.maps(affine_grid(translation_theta(6.0, 4.0, g), *REG, coordinates="normalised"))
    warped = cv2.remap(ir, m1, m2, cv2.INTER_LINEAR)
    inner = np.s_[8:-8, 8:-8]
    assert np.abs(warped[inner] - rgb[inner]).max() < 0.02
    assert np.abs(ir[inner] - rgb[inner]).mean() > 5 * np.abs(warped[inner] - rgb[inner]).mean()


def test_grid_quality_flags_folds_and_nans() -> None:
    good = affine_grid(identity_theta(), *REG, coordinates="normalised")
    assert grid_quality(good) == (0.0, 1.0)
    assert grid_quality(good[:, ::-1])[0] == 1.0  # mirrored: every cell folded
    bad = good.copy()
    bad[3, 3] = np.nan
    assert grid_quality(bad) == (1.0, 0.0)


# --------------------------------------------------------------------------- filter


def config(**overrides: object) -> RegistrationConfig:
    return RegistrationConfig(**{"size": REG, "every_n_pairs": 1, **overrides})


def estimate(g: RegistrationGeometry, dx: float = 0.0, t: float = 0.0, rotation_deg: float = 0.0) -> Estimate:
    c, s = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    cx, cy = (RGB[0] - 1) / 2, (RGB[1] - 1) / 2
    rot = np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0, 0, 1]])
    pixels = rot @ np.array([[1, 0, dx], [0, 1, 0], [0, 0, 1.0]])
    theta = pixels_to_theta(pixels, RGB, REG)
    return Estimate(theta=theta, grid=affine_grid(theta, *REG, coordinates="normalised"), t_capture=t)


def test_first_estimate_accepted_then_smoothed() -> None:
    g = geometry()
    f = RegistrationFilter(config(smoothing=0.5), g)
    first = f.update(estimate(g, dx=4.0, t=1.0))
    assert first is not None and first.source == "fine" and first.confidence == pytest.approx(1.0)
    second = f.update(estimate(g, dx=8.0, t=2.0))
    assert second is not None and second.version == first.version + 1 and second.t_capture == 2.0
    assert g.theta_pixels(second.theta)[0, 2] == pytest.approx(6.0)  # EMA: half way
    np.testing.assert_allclose(second.frame_to_ir @ [10, 10, 1], [16, 10, 1], atol=1e-9)


class ScoredView:
    """Stands in for a :class:`PairView`: each grid's edge agreement is looked up by its mean x."""

    def __init__(self, scores: dict[float, float]) -> None:
        self.scores = scores

    def agreement(self, grid: np.ndarray) -> float:
        return self.scores[round(float(grid[..., 0].mean()), 4)]


@pytest.mark.parametrize("gain, taken", [(0.03, [True, False, True]), (0.0, [True, True, True])])
def test_an_estimate_replaces_the_registration_in_force_only_where_it_agrees_clearly_better(
        gain: float, taken: list[bool]) -> None:
    """On a still rig, estimates that agree only a little better drifted the error back up
    (rig_config.schema.Plausibility.agree_gain); the prior is left at any gain."""
    g = geometry()
    f = RegistrationFilter(config(smoothing=1.0, plausibility=Plausibility(agree_gain=gain)), g)
    shifts = [2.0, 2.5, 3.0]
    candidates = [estimate(g, dx=dx, t=float(i)) for i, dx in enumerate(shifts)]
    key = {dx: round(float(c.grid[..., 0].mean()), 4) for dx, c in zip(shifts, candidates, strict=True)}
    prior = round(float(f.prior_grid[..., 0].mean()), 4)
    # 1 % over the prior, then 2 % and 4 % over the first estimate.
    view = ScoredView({prior: 0.0500, key[2.0]: 0.0505, key[2.5]: 0.0515, key[3.0]: 0.0525})
    for candidate, expected in zip(candidates, taken, strict=True):
        before = f.state
        state = f.update(dataclasses.replace(candidate, view=view))
        assert (state is not before) == expected, (gain, candidate.t_capture)
    assert f.not_better == taken.count(False)


def test_implausible_jump_is_rejected_and_the_last_good_held() -> None:
    g = geometry()
    f = RegistrationFilter(config(plausibility=Plausibility(max_jump_px=10)), g)
    good = f.update(estimate(g, dx=2.0, t=1.0))
    assert good is not None
    held = f.update(estimate(g, dx=30.0, t=2.0))
    assert held is not None and held.source == "held" and f.rejected == 1
    np.testing.assert_array_equal(held.theta, good.theta)
    assert held.t_capture == 1.0 and held.map1 is good.map1  # maps not rebuilt
    again = f.update(estimate(g, dx=-25.0, t=3.0))
    assert again is not None and again.confidence < held.confidence < good.confidence


def test_rotation_and_folds_are_rejected() -> None:
    g = geometry()
    f = RegistrationFilter(config(plausibility=Plausibility(max_rotation_deg=5)), g)
    assert f.update(estimate(g, rotation_deg=8.0)) is None  # nothing good to hold yet
    assert "rotation" in f.judge(estimate(g, rotation_deg=8.0)).reason
    folded = estimate(g)
    folded = Estimate(folded.theta, folded.grid[:, ::-1].copy(), 0.0)
    assert not f.judge(folded).accepted and "folded" in f.judge(folded).reason
    assert f.update(estimate(g, rotation_deg=3.0)) is not None


def test_consistent_rejections_relock() -> None:
    g = geometry()
    f = RegistrationFilter(config(smoothing=0.5, plausibility=Plausibility(max_jump_px=10)), g)
    f.update(estimate(g, dx=0.0))
    states = [f.update(estimate(g, dx=25.0, t=float(i))) for i in range(RELOCK_AFTER)]
    assert [s.source for s in states[:-1]] == ["held"] * (RELOCK_AFTER - 1)
    assert states[-1].source == "fine"
    assert g.theta_pixels(states[-1].theta)[0, 2] == pytest.approx(25.0)  # taken as is, not averaged


def test_without_hold_last_good_implausible_estimates_are_used() -> None:
    g = geometry()
    f = RegistrationFilter(config(smoothing=1.0, hold_last_good=False,
                                  plausibility=Plausibility(max_jump_px=10)), g)
    f.update(estimate(g))
    state = f.update(estimate(g, dx=30.0))
    assert state is not None and state.source == "fine" and state.confidence == 0.0
    assert g.theta_pixels(state.theta)[0, 2] == pytest.approx(30.0)


def test_coarse_mode_uses_the_affine_only() -> None:
    g = geometry()
    f = RegistrationFilter(config(deformable=False), g)
    e = estimate(g, dx=3.0)
    wobbly = e.grid + 0.01 * np.sin(np.arange(REG[1]))[None, :, None].astype(np.float32)
    state = f.update(Estimate(e.theta, wobbly, 0.0))
    assert state is not None and state.source == "coarse"
    np.testing.assert_allclose(state.grid, affine_grid(e.theta, *REG, coordinates="normalised"), atol=1e-6)


# --------------------------------------------------------------------------- scheduler


@pytest.fixture
def register_backend(tmp_path: Path) -> OnnxRuntimeBackend:
    g = geometry()
    path = write_register(tmp_path / "register.onnx", translation_theta(2.0, 1.0, g), REG)
    return OnnxRuntimeBackend(path, graph="register", threads=1)


def drive(scheduler: RegistrationScheduler, offers: int, advance: Callable[[], None] | None = None) -> int:
    """Offer ``offers`` pairs, waiting for each scheduled run to finish; returns scheduled count."""
    y = np.zeros((RGB[1], RGB[0]), np.uint8)
    ir = np.zeros((RGB[1], RGB[0]), np.float32)
    scheduled = 0
    for i in range(offers):
        if advance is not None:
            advance()
        runs = scheduler.runs
        if scheduler.offer(y, ir, float(i)):
            scheduled += 1
            deadline = time.monotonic() + 5
            while scheduler.runs == runs and time.monotonic() < deadline:
                time.sleep(0.002)
    return scheduled


def test_every_n_pairs(register_backend: OnnxRuntimeBackend) -> None:
    # Without the warm start: this graph asks for the same shift whatever it sees.
    s = RegistrationScheduler(register_backend, config(every_n_pairs=3, warm_start=False), geometry())
    s.start()
    try:
        assert drive(s, 9) == 3 and s.runs == 3
    finally:
        s.stop()
    state = s.state
    assert state is not None and state.t_capture in (2.0, 5.0, 8.0)
    np.testing.assert_allclose(state.frame_to_ir @ [20, 20, 1], [22, 21, 1], atol=1e-4)


def test_rate_hz_on_a_steady_schedule(register_backend: OnnxRuntimeBackend) -> None:
    now = [0.0]

    def advance() -> None:
        now[0] += 1 / 30  # pairs at 30 Hz on a simulated clock

    s = RegistrationScheduler(register_backend, RegistrationConfig(size=REG, rate_hz=6.0), geometry(),
                              clock=lambda: now[0])
    s.start()
    try:
        scheduled = drive(s, 90, advance)  # 3 s of pairs
    finally:
        s.stop()
    assert scheduled in (18, 19)  # 6 Hz, not the 5 Hz that waiting a full period after each late start gives


def test_a_failing_run_keeps_the_current_state(tmp_path: Path) -> None:
    g = geometry()
    path = write_register(tmp_path / "small.onnx", identity_theta(), (32, 40))  # wrong fixed size
    backend = OnnxRuntimeBackend(path, graph="register")
    s = RegistrationScheduler(backend, config(), g)
    assert s.register_now(np.zeros((RGB[1], RGB[0]), np.uint8), np.zeros((RGB[1], RGB[0]), np.float32), 0.0) is None
    assert s.errors == 1 and s.runs == 1


# --------------------------------------------------------------------------- warm start and agreement


def textured_pair(shift_px: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """A visible luminance (uint8) and an IR (float32, inverted polarity) of one blurred random
    scene at the RGB size; the IR's content moved by ``shift_px``: IR pixel p shows visible p - shift."""
    rng = np.random.default_rng(3)
    scene = cv2.GaussianBlur(rng.random((RGB[1], RGB[0])).astype(np.float32), (0, 0), 2.5)
    scene = (scene - scene.min()) / np.ptp(scene)
    m = np.array([[1, 0, shift_px[0]], [0, 1, shift_px[1]]], np.float64)
    ir = cv2.warpAffine(1 - scene, m, RGB, borderMode=cv2.BORDER_REFLECT)
    return (scene * 255).astype(np.uint8), ir


def test_a_warm_start_composes_the_answer_onto_the_registration_in_force(register_backend) -> None:
    g = geometry()
    y, ir = textured_pair()
    start = translation_theta(5.0, -3.0, g)
    cold = run_register(register_backend, g, y, ir, 0.0)
    warm = run_register(register_backend, g, y, ir, 0.0, start)
    # The graph asks for (2, 1) px whatever it sees: from the start that is (7, -2) px in all.
    np.testing.assert_allclose(g.theta_pixels(cold.theta) @ [40, 30, 1], [42, 31, 1], atol=1e-4)
    np.testing.assert_allclose(g.theta_pixels(warm.theta) @ [40, 30, 1], [47, 28, 1], atol=1e-4)
    np.testing.assert_allclose(warm.grid, affine_grid(warm.theta, *REG, coordinates="normalised"), atol=1e-5)
    # The network saw the canvas sampled at the start's grid.
    inputs = g.network_inputs(y, ir, start)["ir"][0, 0]
    canvas = g.network_inputs(y, ir)["ir"][0, 0]
    px = (affine_grid(start, *REG, coordinates="normalised") + 1) / 2 * np.array([REG[1] - 1, REG[0] - 1])
    expected = cv2.remap(canvas, px[..., 0].astype(np.float32), px[..., 1].astype(np.float32), cv2.INTER_LINEAR)
    inverse = cv2.remap(canvas, (2 * np.arange(REG[1], dtype=np.float32)[None] - px[..., 0]).astype(np.float32),
                        (2 * np.arange(REG[0], dtype=np.float32)[:, None] - px[..., 1]).astype(np.float32),
                        cv2.INTER_LINEAR)
    inner = (slice(4, -4), slice(4, -4))
    # Two interpolations against one: close, and far closer than the opposite warp.
    assert np.abs(inputs - expected)[inner].mean() < 0.01 < 0.03 < np.abs(inputs - inverse)[inner].mean()


def test_an_estimate_that_aligns_its_pair_worse_is_not_taken_and_the_prior_stays(tmp_path: Path) -> None:
    """A network confidently wrong on this scene: it asks for 6 px while the pair is aligned. Its
    estimate passes every plausibility limit, but the pair itself says it is worse than the prior."""
    g = geometry()
    y, ir = textured_pair()
    wrong = OnnxRuntimeBackend(write_register(tmp_path / "wrong.onnx", translation_theta(6.0, 0.0, g), REG),
                               graph="register", threads=1)
    s = RegistrationScheduler(wrong, config(), g)
    state = s.register_now(y, ir, 0.0)
    assert state is not None and state.source == "prior" and state.confidence == 0.0
    np.testing.assert_allclose(state.theta, identity_theta())
    assert s.filter.not_better == 1 and s.filter.accepted == 0
    # Without the check the wrong estimate is what the rig publishes.
    blind = RegistrationScheduler(wrong, config(plausibility=Plausibility(must_agree=False)), g)
    assert blind.register_now(y, ir, 0.0).source == "fine"


def test_an_estimate_that_aligns_its_pair_better_is_taken() -> None:
    """The IR is 4 px off; a graph that asks for exactly that beats the prior, and from then on
    (warm start) each run confirms it and nothing drifts."""
    g = geometry()
    y, ir = textured_pair((4.0, 0.0))
    path = write_register(Path(__import__("tempfile").mkdtemp()) / "right.onnx", translation_theta(4.0, 0.0, g), REG)
    right = OnnxRuntimeBackend(path, graph="register", threads=1)
    s = RegistrationScheduler(right, config(), g)
    state = s.register_now(y, ir, 0.0)
    assert state is not None and state.source == "fine"
    np.testing.assert_allclose(g.theta_pixels(state.theta) @ [40, 30, 1], [44, 30, 1], atol=1e-3)
    # Warm-started, the same graph now proposes 8 px: worse on the pair, so 4 px stays.
    again = s.register_now(y, ir, 1.0)
    np.testing.assert_allclose(g.theta_pixels(again.theta) @ [40, 30, 1], [44, 30, 1], atol=1e-3)
    assert s.filter.not_better == 1


# --------------------------------------------------------------------------- keypoint start


def rotated_pair(degrees: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured visible luminance (uint8, RGB size) and its IR rotated by ``degrees`` about the
    centre (same polarity: NIR-like), with the true RGB pixel -> IR pixel affine (2, 3)."""
    rng = np.random.default_rng(5)
    scene = cv2.GaussianBlur(rng.random((RGB[1], RGB[0])).astype(np.float32), (0, 0), 1.5)
    scene = (scene - scene.min()) / np.ptp(scene)
    truth = cv2.getRotationMatrix2D(((RGB[0] - 1) / 2, (RGB[1] - 1) / 2), degrees, 1.0)
    ir = cv2.warpAffine(scene, truth, RGB, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return (scene * 255).astype(np.uint8), ir, truth


@pytest.mark.parametrize("keypoint_start", [True, False])
def test_a_graph_exported_with_the_keypoint_start_takes_the_keypoint_affine_beyond_its_range(
        tmp_path: Path, keypoint_start: bool) -> None:
    """The graph proposes nothing (identity) on a pair rotated by 12 degrees. With ``keypoint_start``
    in its metadata the run also tries the SIFT + RANSAC affine, which aligns the pair's edges
    better, and that is what the rig publishes; without it the graph's answer, no correction, stays."""
    g = geometry()
    y, ir, truth = rotated_pair(12.0)
    meta = metadata("register", registration_size=REG, keypoint_start=keypoint_start)
    backend = OnnxRuntimeBackend(write_register(tmp_path / "still.onnx", identity_theta(), REG, meta=meta),
                                 graph="register", threads=1)
    state = RegistrationScheduler(backend, config(), g).register_now(y, ir, 0.0)
    corners = np.array([[0, 0, 1], [RGB[0] - 1, 0, 1], [0, RGB[1] - 1, 1], [RGB[0] - 1, RGB[1] - 1, 1]], float).T
    assert state is not None
    found = g.frame_to_ir(state.theta)[:2] @ corners
    error = np.abs(found - truth @ corners).max()
    assert error < 1.0 if keypoint_start else error > 10.0


def test_theta_from_frame_to_ir_inverts_frame_to_ir() -> None:
    prior = np.array([[1.02, 0.01, 3.0], [-0.01, 0.98, -2.0], [0, 0, 1.0]])
    g = geometry(prior)
    matrix = np.array([[0.97, -0.2, 14.0], [0.2, 0.97, -9.0]])
    np.testing.assert_allclose(g.frame_to_ir(g.theta_from_frame_to_ir(matrix))[:2], matrix, atol=1e-9)


def test_the_keypoint_search_runs_on_the_first_run_and_then_every_keypoint_every_runs(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    from busref.runtime.registration import scheduler as scheduler_module

    calls = []
    real = scheduler_module.register_with_keypoints

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scheduler_module, "register_with_keypoints", counting)
    g = geometry()
    y, ir, _ = rotated_pair(0.0)
    meta = metadata("register", registration_size=REG, keypoint_start=True)
    backend = OnnxRuntimeBackend(write_register(tmp_path / "still.onnx", identity_theta(), REG, meta=meta),
                                 graph="register", threads=1)
    s = RegistrationScheduler(backend, config(), g)
    for i in range(scheduler_module.KEYPOINT_EVERY + 1):
        s.register_now(y, ir, float(i))
    assert len(calls) == 2 and s.runs == scheduler_module.KEYPOINT_EVERY + 1


# --------------------------------------------------------------------------- the track graph


def test_with_a_track_graph_every_register_every_th_run_is_a_register_run(register_backend, tmp_path: Path) -> None:
    """Run 0 (nothing in force) and every ``register_every``-th run use the register graph, the runs
    between the track graph, which starts from the whole registration in force; the estimate's theta
    follows the change of the grid's affine part."""
    g = geometry()
    shift = translation_theta(0.5, 0.0, g)[:, 2]  # half an RGB pixel to the right, normalised
    track = OnnxRuntimeBackend(write_track(tmp_path / "track.onnx", tuple(shift), REG), graph="track", threads=1)
    stages: list[str] = []
    s = RegistrationScheduler(register_backend, config(register_every=3, smoothing=1.0,
                                                       plausibility=Plausibility(must_agree=False)),
                              g, track=track, observe=lambda stage, _: stages.append(stage))
    y, ir = np.zeros((RGB[1], RGB[0]), np.uint8), np.zeros((RGB[1], RGB[0]), np.float32)
    first = s.register_now(y, ir, 0.0)
    tracked = s.register_now(y, ir, 1.0)
    assert first is not None and tracked is not None
    np.testing.assert_allclose(tracked.grid, first.grid + shift.astype(np.float32), atol=1e-6)
    np.testing.assert_allclose(tracked.frame_to_ir @ [20, 20, 1], first.frame_to_ir @ [20, 20, 1] + [0.5, 0, 0],
                               atol=1e-4)
    for t in range(2, 7):
        s.register_now(y, ir, float(t))
    assert stages == ["register", "track", "track", "register", "track", "track", "register"]
    assert s.register_runs == 3 and s.runs == 7


def test_with_a_track_graph_its_estimates_are_smoothed_and_a_register_estimate_is_taken_whole(
        register_backend, tmp_path: Path) -> None:
    """``smoothing`` weighs the track graph's estimates; a register-graph estimate between them
    replaces the registration in force (the register graph here adds (2, 1) px to its warm start)."""
    g = geometry()
    shift = translation_theta(0.5, 0.0, g)[:, 2]
    track = OnnxRuntimeBackend(write_track(tmp_path / "track.onnx", tuple(shift), REG), graph="track", threads=1)
    s = RegistrationScheduler(register_backend, config(register_every=2, smoothing=0.5,
                                                       plausibility=Plausibility(must_agree=False)), g, track=track)
    y, ir = np.zeros((RGB[1], RGB[0]), np.uint8), np.zeros((RGB[1], RGB[0]), np.float32)
    moved = [s.register_now(y, ir, float(t)) for t in range(3)]  # register, track, register
    shifts_px = [g.theta_pixels(state.theta)[:2, 2] for state in moved if state is not None]
    np.testing.assert_allclose(shifts_px, [[2.0, 1.0], [2.25, 1.0], [4.25, 2.0]], atol=1e-4)


def test_a_smoothing_weight_outside_0_to_1_is_refused() -> None:
    g = geometry()
    f = RegistrationFilter(config(), g)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="smoothing must be in"):
            f.update(estimate(g, dx=1.0), smoothing=bad)


def test_without_the_warm_start_the_track_graph_is_not_used(register_backend, tmp_path: Path) -> None:
    track = OnnxRuntimeBackend(write_track(tmp_path / "track.onnx", (0.01, 0.0), REG), graph="track", threads=1)
    stages: list[str] = []
    s = RegistrationScheduler(register_backend, config(warm_start=False), geometry(), track=track,
                              observe=lambda stage, _: stages.append(stage))
    for t in range(3):
        s.register_now(np.zeros((RGB[1], RGB[0]), np.uint8), np.zeros((RGB[1], RGB[0]), np.float32), float(t))
    assert stages == ["register"] * 3


def test_the_daemon_uses_a_track_graph_only_beside_its_own_register_graph(tmp_path: Path, caplog) -> None:
    """A missing track graph is no error (every run is a register run); one exported from another
    checkpoint or at another size than the register graph is not used, and the log says why."""
    from busref.runtime.daemon import open_graph, open_track_graph

    size = tuple(load_rig(DEMO_RIG).registration.size)
    graphs = {"register": write_register(tmp_path / "register.onnx", identity_theta(), size),
              "fuse": tmp_path / "fuse.onnx"}

    def rig(track: Path, **registration: object) -> RigConfig:
        path = demo_rig(tmp_path, graphs, inference={"track_model": str(track)}, registration=registration)
        return load_rig(path)

    register = open_graph(rig(tmp_path / "none.onnx"), "register")
    assert open_track_graph(rig(tmp_path / "none.onnx"), register) is None
    twin = write_track(tmp_path / "track.onnx", (0.0, 0.0), size)
    assert open_track_graph(rig(twin), register) is not None
    assert open_track_graph(rig(twin, register_every=1), register) is None
    other = write_track(tmp_path / "other.onnx", (0.0, 0.0), size,
                        meta=metadata("track", registration_size=size, checkpoint_sha256="1" * 64,
                                      model_id="tiny-track-111111111111"))
    with caplog.at_level("WARNING"):
        assert open_track_graph(rig(other), register) is None
    assert "tiny-track-111111111111" in caplog.text and "export both from one checkpoint" in caplog.text
