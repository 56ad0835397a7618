"""The register graph's Lucas-Kanade stage: its solver pieces, that it recovers a known
misalignment across a contrast inversion, that it is off by default, and that it exports."""

from __future__ import annotations

import io
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from busref.export.onnx_fp16 import convolutions_to_fp16, in_fp32_scope
from busref.models.config import LK_SCHEDULE, DescriptorConfig, LucasKanadeConfig, ModelConfig
from busref.models.geometry import apply_affine, warp_normalised
from busref.models.local_structure import mind_descriptor
from busref.models.networks.busref import normalised_base
from busref.models.networks.layers import coordinates
from busref.models.networks.lucas_kanade import (
    LucasKanade,
    affine_basis,
    affine_part,
    content_mask,
    descriptor_phase,
    edge_agreement,
    edge_orientation,
    fine_detail,
    gaussian_blur,
    solve_symmetric3,
)
from busref.orientation import agreement, orientation_field

H, W = 96, 128
SCHEDULE = ((2, 1.0),) * 4 + ((1, 1.0),) * 4 + ((1, 0.0),) * 2


def texture(seed: int = 0) -> torch.Tensor:
    """A (1, 1, H, W) image with structure at several scales, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(1, 1, H, W)
    for sigma in (1.5, 4.0):
        out += gaussian_blur(torch.randn(1, 1, H, W, generator=g), sigma) * sigma
    return (out - out.min()) / (out.max() - out.min())


def rotation_shift(angle_deg: float, shift: tuple[float, float]) -> torch.Tensor:
    """(1, 2, 3) normalised affine (reference -> moving) of a rotation and a shift in pixels."""
    a = math.radians(angle_deg)
    return torch.tensor([[[math.cos(a), -math.sin(a) * H / W, 2 * shift[0] / (W - 1)],
                          [math.sin(a) * W / H, math.cos(a), 2 * shift[1] / (H - 1)]]])


def misaligned_pair(affine: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(vis, ir, base, truth)``: a texture, its contrast-inverted copy sampled so that warping it by
    ``truth`` (the grid of the normalised ``affine`` (1, 2, 3)) gives back the texture, and the identity grid."""
    vis = texture(seed)
    base = normalised_base(vis)
    inverse = torch.linalg.inv(torch.cat((affine[0], torch.tensor([[0.0, 0, 1]]))))[None, :2]
    ir = 1.0 - warp_normalised(vis, apply_affine(inverse, base), padding_mode="border")
    return vis, ir, base, apply_affine(affine, base)


def pixel_error(grid: torch.Tensor, truth: torch.Tensor, margin: int = 12) -> float:
    """Mean distance (pixels) between two normalised grids, away from the borders."""
    scale = torch.tensor([(W - 1) / 2, (H - 1) / 2])
    diff = ((grid - truth) * scale)[:, margin:-margin, margin:-margin]
    return float(diff.norm(dim=-1).mean())


def test_the_adjugate_solver_matches_a_linear_solve():
    g = torch.Generator().manual_seed(1)
    m = torch.randn(4, 3, 3, generator=g)
    a = m @ m.transpose(1, 2) + 0.5 * torch.eye(3)
    b = torch.randn(4, 3, 2, generator=g)
    assert torch.allclose(solve_symmetric3(a, b), torch.linalg.solve(a, b), atol=1e-4)


def test_the_affine_part_of_an_affine_field_is_the_field_itself():
    linear = torch.tensor([[1.5, -0.5], [0.25, 2.0]])
    field = torch.einsum("ij,bjhw->bihw", linear, coordinates(torch.zeros(1, 2, 12, 16)))
    field = field + torch.tensor([0.3, -1.2]).view(1, 2, 1, 1)
    weight = torch.rand(1, 1, 12, 16, generator=torch.Generator().manual_seed(2)) + 0.1
    assert torch.allclose(affine_part(field, weight, affine_basis(field)), field, atol=1e-4)


def test_the_stage_is_off_by_default_and_returns_the_grid_unchanged():
    assert ModelConfig().lucas_kanade.schedule == ()
    grid = normalised_base(torch.zeros(1, 1, H, W)) * 0.9
    assert LucasKanade(LucasKanadeConfig())(texture(), texture(1), grid) is grid


def test_mismatched_inputs_are_refused_with_their_shapes():
    stage = LucasKanade(LucasKanadeConfig(schedule=SCHEDULE))
    vis = texture()
    with pytest.raises(ValueError, match=r"\(1, 1, 96, 128\).*\(1, 96, 64, 2\)"):
        stage(vis, vis, normalised_base(vis)[:, :, :64])


def test_a_bad_schedule_names_the_field():
    with pytest.raises(ValueError, match="schedule"):
        LucasKanadeConfig(schedule=((3, 1.0),))
    with pytest.raises(ValueError, match="schedule"):
        LucasKanadeConfig(schedule=((1, -1.0),))
    with pytest.raises(ValueError, match="pool 6 must be a multiple of every schedule factor"):
        LucasKanadeConfig(schedule=((4, 1.0), (1, 0.0)), pool=6)
    with pytest.raises(ValueError, match="mind_diagonal 2 must be at most mind_radius 1"):
        LucasKanadeConfig(mind_radius=1, mind_diagonal=2)


def test_towers_trained_at_another_size_than_the_registration_size_are_refused():
    stage = LucasKanadeConfig(schedule=SCHEDULE, descriptor_iterations=4,
                              descriptor=DescriptorConfig(size=(384, 512)))
    with pytest.raises(ValueError, match=r"towers were trained at \(384, 512\), not at the registration_size "
                                         r"\(192, 256\)"):
        ModelConfig(lucas_kanade=stage)
    assert ModelConfig(lucas_kanade=stage, registration_size=(384, 512)).lucas_kanade.descriptor_iterations == 4


@pytest.mark.parametrize("radius, diagonal", [(2, 0), (1, 1)], ids=["axial", "axial+diagonal"])
def test_it_recovers_a_rotation_and_shift_across_inverted_contrast(radius: int, diagonal: int):
    """The IR shows the scene with inverted contrast (a hot road on a cool background), rotated by
    2 degrees and shifted by (3, -2) px; started from the identity, most of it is recovered, with the
    four axial MIND neighbours and with the eight of the shipped stages."""
    vis, ir, start, truth = misaligned_pair(rotation_shift(2.0, (3.0, -2.0)))
    before = pixel_error(start, truth)
    stage = LucasKanade(LucasKanadeConfig(schedule=SCHEDULE, mind_radius=radius, mind_diagonal=diagonal))
    after = pixel_error(stage(vis, ir, start), truth)
    assert before > 3.0
    assert after < 0.25 * before, (before, after)


@pytest.mark.parametrize("linearisation", ["warped", "reference"])
def test_track_refines_the_given_start_with_its_own_schedule_alone(linearisation: str):
    """The track graph's stage: ``track_schedule`` from the grid it is given (the registration in force),
    one start even where the register graph's stage runs two; the register schedule is not run. Both
    linearisations converge; the one on the visible image's gradients is not the other under a new
    name, and it leaves the register graph's stage as it was."""
    vis, ir, base, truth = misaligned_pair(rotation_shift(0.0, (1.5, -1.0)), seed=5)
    # Half-way there: what a register run left in force.
    start = 0.5 * (base + truth)
    config = LucasKanadeConfig(schedule=SCHEDULE, both_starts=True, track_schedule=((1, 0.0),) * 4,
                               track_linearisation=linearisation)
    stage = LucasKanade(config)
    tracked = stage.track(vis, ir, start)
    assert tracked.shape == start.shape
    assert pixel_error(tracked, truth) < 0.3 * pixel_error(start, truth), (pixel_error(start, truth),
                                                                            pixel_error(tracked, truth))
    other = LucasKanade(config.model_copy(update={"track_linearisation": "warped"}))
    if linearisation == "reference":
        assert not torch.allclose(tracked, other.track(vis, ir, start), atol=1e-5)
        assert torch.equal(stage(vis, ir, start), other(vis, ir, start))
    # Without a track schedule the start comes back as it is, whatever the register stage's schedule.
    assert torch.equal(LucasKanade(LucasKanadeConfig(schedule=SCHEDULE)).track(vis, ir, start), start)


def test_an_unknown_track_linearisation_names_the_field():
    with pytest.raises(ValueError, match="track_linearisation"):
        LucasKanadeConfig(track_linearisation="template")


PHASE = dict(cells=4, gain=1.5, window=4.0, field_window=4.0, rest_prior=1.0, damping=0.01)


def test_the_descriptor_phase_converges_on_informative_features_and_its_guard_refuses_misleading_ones():
    """Features that describe the pair (here the eight-neighbour MIND of both images, which agree
    at the truth across the inverted contrast) take a half-way start most of the way; features of
    the IR shifted by 3 px pull the grid off, the axial MIND residual rises and the start is kept
    bit for bit."""
    vis, ir, base, truth = misaligned_pair(rotation_shift(1.0, (2.0, -1.5)), seed=3)
    start = 0.5 * (base + truth)
    informative = (mind_descriptor(vis, 1, diagonal=1), mind_descriptor(ir, 1, diagonal=1))
    phased = descriptor_phase(vis, ir, start, informative, iterations=8, guard=1.03, **PHASE)
    assert pixel_error(phased, truth) < 0.4 * pixel_error(start, truth)

    misleading = (informative[0], torch.roll(informative[1], shifts=(3, 3), dims=(-2, -1)))
    unguarded = descriptor_phase(vis, ir, start, misleading, iterations=8, guard=100.0, **PHASE)
    assert pixel_error(unguarded, truth) > pixel_error(start, truth)
    assert torch.equal(descriptor_phase(vis, ir, start, misleading, iterations=8, guard=1.03, **PHASE), start)


def test_the_stage_with_towers_runs_them_after_its_mind_iterations_in_both_graphs():
    """A stage with learned-descriptor iterations holds the towers (frozen: they stay in eval mode when
    the model trains) and runs them in forward and in track; without them it has none."""
    assert LucasKanade(LucasKanadeConfig(schedule=SCHEDULE)).matcher is None
    stage = LucasKanade(LucasKanadeConfig(schedule=SCHEDULE, track_schedule=((1, 0.0),), descriptor_iterations=2,
                                          descriptor_track_iterations=1, descriptor_guard=100.0))
    assert stage.matcher is not None and not stage.train().matcher.training
    stage.eval()
    vis, ir, base, _ = misaligned_pair(rotation_shift(0.0, (1.0, 0.5)), seed=2)
    without = LucasKanade(stage.config.model_copy(update={"descriptor_iterations": 0,
                                                          "descriptor_track_iterations": 0}))
    with torch.no_grad():
        assert not torch.equal(stage(vis, ir, base), without(vis, ir, base))
        assert not torch.equal(stage.track(vis, ir, base), without.track(vis, ir, base))


def test_fine_detail_tells_a_blurred_or_coarse_ir_from_a_sharp_one_whatever_its_tone_curve():
    """The share of fine detail drops when the IR is blurred or loses resolution and does not move with
    the intensity scale; zero padding (a pre-warped frame's border) is left out."""
    sharp = texture(4)
    coarse = F.interpolate(F.interpolate(sharp, scale_factor=0.25, mode="area"), size=(H, W), mode="bilinear")
    value = fine_detail(torch.cat((sharp, 0.5 * sharp, gaussian_blur(sharp, 2.0), coarse)))
    assert value.shape == (4,)
    assert value[1].item() == pytest.approx(value[0].item(), rel=1e-4)
    assert value[2] < 0.5 * value[0] and value[3] < 0.5 * value[0]
    padded = sharp.clone()
    padded[..., :, :20] = 0.0
    assert fine_detail(padded).item() == pytest.approx(fine_detail(sharp[..., :, 20:]).item(), rel=0.2)


def test_below_the_detail_floor_the_towers_result_is_left_out():
    """With ``descriptor_min_detail`` the stage returns its MIND result where the IR's fine detail is
    below the floor, and the towers' result where it is above; 0 (the default) never leaves it out."""
    config = LucasKanadeConfig(schedule=SCHEDULE, descriptor_iterations=2, descriptor_guard=100.0)
    stage = LucasKanade(config).eval()
    mind_only = LucasKanade(config.model_copy(update={"descriptor_iterations": 0})).eval()
    vis, ir, base, _ = misaligned_pair(rotation_shift(0.0, (1.0, 0.5)), seed=2)
    level = fine_detail(ir).item()
    below = LucasKanade(config.model_copy(update={"descriptor_min_detail": 2 * level})).eval()
    above = LucasKanade(config.model_copy(update={"descriptor_min_detail": 0.5 * level})).eval()
    for other in (below, above):
        other.load_state_dict(stage.state_dict())
    with torch.no_grad():
        towers, mind = stage(vis, ir, base), mind_only(vis, ir, base)
        assert not torch.equal(towers, mind)
        assert torch.equal(below(vis, ir, base), mind) and torch.equal(above(vis, ir, base), towers)


def test_a_negative_detail_floor_names_the_field():
    with pytest.raises(ValueError, match="descriptor_min_detail"):
        LucasKanadeConfig(descriptor_min_detail=-0.1)


def test_flat_images_leave_the_grid_where_it_was():
    """A lens cap or a blank start-up frame has no structure: the update is zero, never NaN."""
    flat = torch.full((1, 1, H, W), 0.5)
    start = normalised_base(flat) * 0.95
    refined = LucasKanade(LucasKanadeConfig(schedule=SCHEDULE))(flat, torch.zeros_like(flat), start)
    assert torch.isfinite(refined).all() and pixel_error(refined, start) < 1e-3


def test_an_aligned_pair_stays_aligned():
    vis = texture(3)
    start = normalised_base(vis)
    refined = LucasKanade(LucasKanadeConfig(schedule=SCHEDULE))(vis, 1.0 - vis, start)
    assert pixel_error(refined, start) < 0.2


def test_the_content_mask_drops_padding_and_the_frame_edge_with_a_margin():
    ir = torch.rand(1, 1, 40, 50) + 0.1
    ir[..., :, :10] = 0.0  # a zero-padded band, as a protocol pair's moving image has
    mask = content_mask(ir, margin=3)
    assert mask.shape == ir.shape
    assert (mask[..., 3:-3, 13:-3] == 1).all()
    assert (mask[..., :, :13] == 0).all() and (mask[..., :3, :] == 0).all() and (mask[..., :, -3:] == 0).all()


def test_a_zero_padded_band_does_not_pull_the_field():
    """The moving image's black band has an edge the visible image lacks: it must not attract the
    grid. A shift of the IR content by 3 px with 12 px of zero padding is recovered beside the band
    (0.008 px mean error in the 18 columns next to it; 0.29 px with the content mask off)."""
    vis = texture(5)
    start = normalised_base(vis)
    truth = apply_affine(rotation_shift(0.0, (3.0, 0.0)), start)
    inverse = rotation_shift(0.0, (-3.0, 0.0))
    ir = warp_normalised(vis, apply_affine(inverse, start), padding_mode="border")
    ir[..., :, :12] = 0.0
    refined = LucasKanade(LucasKanadeConfig(schedule=SCHEDULE))(vis, ir, start)
    scale = torch.tensor([(W - 1) / 2, (H - 1) / 2])
    beside = float(((refined - truth) * scale).norm(dim=-1)[:, 12:-12, 12:30].mean())
    assert beside < 0.05, beside


def test_with_both_starts_a_wrong_start_loses_to_the_identity_and_a_good_one_is_kept():
    """``both_starts``: started 25 px off (the nets' answer on a scene they do not know), the stage
    alone stays off; refined from the identity too, the result that agrees best is kept. Started
    near the truth instead, that start's result is kept (the identity's is worse)."""
    vis, ir, start, truth = misaligned_pair(rotation_shift(2.0, (3.0, -2.0)), seed=7)
    wrong = apply_affine(rotation_shift(0.0, (25.0, 0.0)), start)
    one = LucasKanade(LucasKanadeConfig(schedule=SCHEDULE))
    both = LucasKanade(LucasKanadeConfig(schedule=SCHEDULE, both_starts=True))
    assert pixel_error(one(vis, ir, wrong), truth) > 10.0
    # Batched, the two runs differ from single ones by rounding only.
    assert torch.allclose(both(vis, ir, wrong), one(vis, ir, start), atol=1e-5)
    near = apply_affine(rotation_shift(2.0, (3.5, -2.0)), start)
    assert torch.allclose(both(vis, ir, near), one(vis, ir, near), atol=1e-5)
    assert pixel_error(one(vis, ir, near), truth) < pixel_error(one(vis, ir, start), truth)


class _Graph(torch.nn.Module):
    """The stage under the attribute name BusReF gives it, so its ONNX nodes carry its scope."""

    def __init__(self) -> None:
        super().__init__()
        self.lucas_kanade = LucasKanade(LucasKanadeConfig(schedule=LK_SCHEDULE[::4], both_starts=True,
                                                          blurred_prefix=((2, 2.0),), blurred_margin=1.0))

    def forward(self, vis: torch.Tensor, ir: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return self.lucas_kanade(vis, ir, grid)


def test_the_stage_exports_matches_pytorch_and_stays_fp32_in_the_mixed_precision_copy():
    graph = _Graph().eval()
    vis, ir = texture(4), 1.0 - texture(5)
    grid = normalised_base(vis) * 0.98
    buffer = io.BytesIO()
    torch.onnx.export(graph, (vis, ir, grid), buffer, opset_version=17, dynamo=False,
                      input_names=["vis", "ir", "grid"], output_names=["out"])
    feed = {"vis": vis.numpy(), "ir": ir.numpy(), "grid": grid.numpy()}
    with torch.no_grad():
        want = graph(vis, ir, grid).numpy()
    model = onnx.load_from_string(buffer.getvalue())
    convolutions = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert convolutions and all(in_fp32_scope(name) for name in convolutions)
    for candidate in (model, convolutions_to_fp16(model)):
        session = ort.InferenceSession(candidate.SerializeToString(), providers=["CPUExecutionProvider"])
        assert np.abs(session.run(None, feed)[0] - want).max() < 1e-4


def test_gaussian_blur_keeps_a_constant_and_the_mean():
    x = torch.full((1, 3, 20, 24), 0.7)
    assert torch.allclose(gaussian_blur(x, 1.5), x, atol=1e-6)
    noise = torch.rand(1, 2, 40, 48, generator=torch.Generator().manual_seed(6))
    blurred = gaussian_blur(noise, 2.0)
    assert blurred.std() < 0.5 * noise.std()
    assert abs(float(blurred.mean() - noise.mean())) < 0.02
    assert F.mse_loss(gaussian_blur(noise, 0.0), noise) == 0


def test_select_after_chooses_the_start_then_refines_the_chosen_one_alone():
    """``select_after``: the two starts run the first entries, the chosen result the rest. With a
    25 px wrong start that equals refining the identity's result on its own; an entry past the
    schedule, or the option without both starts, is refused naming the field."""
    vis = texture(7)
    start = normalised_base(vis)
    affine = rotation_shift(2.0, (3.0, -2.0))
    inverse = torch.linalg.inv(torch.cat((affine[0], torch.tensor([[0.0, 0, 1]]))))[None, :2]
    ir = 1.0 - warp_normalised(vis, apply_affine(inverse, start), padding_mode="border")
    wrong = apply_affine(rotation_shift(0.0, (25.0, 0.0)), start)
    head, tail = SCHEDULE[:len(SCHEDULE) // 2], SCHEDULE[len(SCHEDULE) // 2:]
    staged = LucasKanade(LucasKanadeConfig(schedule=SCHEDULE, both_starts=True, select_after=len(head)))
    first = LucasKanade(LucasKanadeConfig(schedule=head))(vis, ir, start)
    expected = LucasKanade(LucasKanadeConfig(schedule=tail))(vis, ir, first)
    assert torch.allclose(staged(vis, ir, wrong), expected, atol=1e-5)
    for bad in ({"select_after": len(SCHEDULE) + 1, "both_starts": True}, {"select_after": 1}):
        with pytest.raises(ValueError, match="select_after"):
            LucasKanadeConfig(schedule=SCHEDULE, **bad)


def test_net_pool_runs_the_nets_at_half_size_and_the_stage_at_the_full_one():
    """``net_pool`` 2: the grid comes back at the input's size, the affine alone too, and a size that
    halves to other than multiples of 8 is refused naming the field."""
    from busref.models.networks.busref import BusReF

    config = ModelConfig(registration_size=(64, 96), net_pool=2,
                         lucas_kanade=LucasKanadeConfig(schedule=((2, 1.0), (1, 0.0)), pool=8))
    vis = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        reg = BusReF(config).eval().register(vis, vis)
    assert reg.grid.shape == reg.coarse_grid.shape == (1, 64, 96, 2)
    assert reg.displacements[0].shape[-2:] == (32, 48)
    with pytest.raises(ValueError, match="net_pool"):
        ModelConfig(registration_size=(72, 96), net_pool=2)


def test_the_graphs_edge_orientation_is_the_daemons_measure():
    """``edge_orientation`` / ``edge_agreement`` compute :mod:`busref.orientation`'s measure in the
    graph: the same field away from the borders (their blurs pad differently), and an agreement
    that ranks an aligned grid far above a misaligned one, as the numpy measure does."""
    vis = texture(3)
    re, im = edge_orientation(vis)
    z = orientation_field(vis[0, 0].numpy())
    inner = (slice(6, -6), slice(6, -6))
    assert np.abs(re[0, 0].numpy()[inner] - z.real[inner]).max() < 5e-3
    assert np.abs(im[0, 0].numpy()[inner] - z.imag[inner]).max() < 5e-3
    vis, ir, base, truth = misaligned_pair(rotation_shift(2.0, (3.0, -2.0)), seed=7)
    graph = edge_agreement(vis, ir, torch.cat((base, truth))).tolist()
    numpy_measure = [agreement(vis[0, 0].numpy(), warp_normalised(ir, g)[0, 0].numpy()) for g in (base, truth)]
    assert graph[1] > 5 * graph[0] and numpy_measure[1] > 5 * numpy_measure[0]
    assert graph[1] == pytest.approx(numpy_measure[1], rel=0.1)


def test_the_blurred_variant_is_kept_only_where_its_edges_agree_better_by_the_margin():
    """``blurred_prefix``: the stage also runs the prefix then the schedule, and keeps that result
    where its edge agreement beats the schedule's own by ``blurred_margin``. A margin no result can
    meet gives the schedule's result alone; at 1 the better-agreeing of the two, each as it comes
    out of a stage that runs it alone."""
    vis, ir, start, _ = misaligned_pair(rotation_shift(3.0, (6.0, -4.0)), seed=2)
    prefix = ((2, 2.0),) * 3
    plain = LucasKanade(LucasKanadeConfig(schedule=SCHEDULE))(vis, ir, start)
    variant = LucasKanade(LucasKanadeConfig(schedule=prefix + SCHEDULE))(vis, ir, start)
    assert not torch.allclose(plain, variant, atol=1e-3)

    def staged(margin: float) -> torch.Tensor:
        config = LucasKanadeConfig(schedule=SCHEDULE, blurred_prefix=prefix, blurred_margin=margin)
        return LucasKanade(config)(vis, ir, start)

    assert torch.allclose(staged(1e6), plain, atol=1e-5)
    first, second = edge_agreement(vis, ir, torch.cat((plain, variant))).tolist()
    assert torch.allclose(staged(1.0), variant if second > first else plain, atol=1e-5)
    # blurred_select_after: the choice after the head of the schedule, the kept result runs the tail.
    head, tail = SCHEDULE[:5], SCHEDULE[5:]
    plain = LucasKanade(LucasKanadeConfig(schedule=head))(vis, ir, start)
    variant = LucasKanade(LucasKanadeConfig(schedule=prefix + head))(vis, ir, start)
    first, second = edge_agreement(vis, ir, torch.cat((plain, variant))).tolist()
    expected = LucasKanade(LucasKanadeConfig(schedule=tail))(vis, ir, variant if second > first else plain)
    early = LucasKanadeConfig(schedule=SCHEDULE, blurred_prefix=prefix, blurred_margin=1.0,
                              blurred_select_after=len(head))
    assert torch.allclose(LucasKanade(early)(vis, ir, start), expected, atol=1e-5)


def test_a_blurred_prefix_needs_a_schedule_and_valid_entries():
    with pytest.raises(ValueError, match="blurred_prefix"):
        LucasKanadeConfig(blurred_prefix=((2, 2.0),))
    with pytest.raises(ValueError, match="factor of 1, 2 or 4"):
        LucasKanadeConfig(schedule=SCHEDULE, blurred_prefix=((3, 2.0),))
    with pytest.raises(ValueError, match="blurred_margin"):
        LucasKanadeConfig(schedule=SCHEDULE, blurred_prefix=((2, 2.0),), blurred_margin=0.9)
    for bad in ({"blurred_select_after": 2}, {"blurred_prefix": ((2, 2.0),), "blurred_select_after": 99},
                {"blurred_prefix": ((2, 2.0),), "blurred_select_after": 2, "both_starts": True, "select_after": 4}):
        with pytest.raises(ValueError, match="blurred_select_after"):
            LucasKanadeConfig(schedule=SCHEDULE, **bad)
