"""Model and training configuration: pydantic v2 data, validated once at the edge."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from busref.models.augment import PhotometricConfig

ModelT = TypeVar("ModelT", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BusConfig(_Strict):
    """Reconstructor widths: F1 has ``width`` channels, F2 ``2 width``, F3/F4 ``4 width``."""

    width: int = Field(16, ge=4, le=128)


class AffineConfig(_Strict):
    width: int = Field(32, ge=8, le=256)
    kernels: int = Field(4, ge=1, le=8, description="K kernels of each dynamic convolution")


class DeformableConfig(_Strict):
    width: int = Field(24, ge=4, le=256, description="channels of the descriptor towers and heads of both levels")
    refinements: int = Field(1, ge=1, le=3, description="deformable passes (each re-encodes the warped IR)")


class DescriptorConfig(BaseModel):
    """Architecture and training of :class:`CrossModalDescriptor`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: int = Field(16, ge=1, description="width of each tower")
    dims: int = Field(8, ge=2, description="length of the per-pixel descriptor")
    crop: int = Field(80, ge=16, description="square training crop, pixels")
    batch: int = Field(8, ge=1)
    radius: int = Field(5, ge=1, description="the softmax window: offsets -radius..radius in x and y")
    temperature: float = Field(0.1, gt=0)
    label_sigma: float = Field(1.0, gt=0, description="Gaussian soft label around the true offset, pixels")
    structure_quantile: float = Field(0.6, ge=0, lt=1,
                                      description="only anchors above this quantile of local visible gradient count")
    max_rotation: float = Field(10.0, ge=0, description="degrees of the random affine the IR crop sees")
    max_log_scale: float = Field(0.1, ge=0)
    max_log_gamma: float = Field(0.4, ge=0, description="random gamma exp(U(-g, g)) per image")
    max_log_resize: float = Field(0.0, ge=0, le=1, description="both crops resized by exp(U(-r, r)) per axis "
                                  "(0: none; the towers then learn one scale)")
    learning_rate: float = Field(2e-3, gt=0)
    steps: int = Field(8000, ge=1, description="the shipped recipe's length (the loss only starts to fall after ~1500)")
    seed: int = 0
    objective: Literal["window", "iterations"] = Field(
        "window", description="window: the cross-entropy of a local-window softmax at the true offset; iterations: "
        "the end-point error of every iterate of the Lucas-Kanade stage's learned-descriptor iterations, run from "
        "starts up to start_error pixels off the truth (a fine-tune of towers that already match)")
    start_error: float = Field(6.0, gt=0, description="iterations objective: the largest start error, pixels of "
                               "the towers' input (the registration size; the refinement's: the pairs' own)")
    unrolled: int = Field(0, ge=0, description="iterations objective: the loss runs this many of the stage's "
                          "iterations (0: all of them; unrolling 64 of the offline refinement's costs "
                          "four times 16's time a step)")
    size: tuple[int, int] | None = Field(
        None, description="(H, W): every pair resized (area) to it before cropping, the registration size of the "
        "graphs whose Lucas-Kanade stage runs the towers; None: the pairs' own size (the offline refinement's)")


class LucasKanadeConfig(_Strict):
    """The register graph's last stage (models.networks.lucas_kanade): iterative Lucas-Kanade on
    MIND descriptors. Its only weights are the towers of the learned-descriptor iterations
    (``descriptor_iterations``, off by default); an empty ``schedule`` (the default, and what checkpoints
    made before it was added read as) leaves it out of the graph.

    The first schedule, 8 iterations at half size on descriptors blurred by 1 px, 8 at full size
    blurred by 1 px and 16 unblurred (:data:`LK_SCHEDULE` before it was shortened for speed), was
    chosen on the 8 held-out NIR *train* pairs (moderate level), started
    from the NIR nets' grids (12.64 px mean EPE, MNCC 0.748): 3.07 px (MNCC 0.941) with
    ``rest_prior`` 0, then ``rest_prior`` 0.1 / 0.3 / 1 / 3 / 10: 2.99 / 2.92 / 2.79 / 2.85 /
    4.32 px. Around it: ``field_window`` 3 / 6: 3.16 / 3.19 px, ``window`` 3: 3.19 px, ``damping``
    0.003: 3.08 px (``rest_prior`` 0). Every
    iteration at full size: 2.98 px, but 1.5x the time; 12 of the first 16 at half size 3.37 px;
    quarter size 5.5-6.2 px; starting the smoothing at 4 px (full size) 4.14 px; 20 unsmoothed
    iterations 5.98 px: the descriptors must be blurred while the error is larger than their
    support. An affine-only update stalled at 7.16 px: the protocol's elastic term is most of what
    the nets leave. With the keypoint start (``ModelConfig.keypoint_start``) in front, 12 more
    unblurred full-size iterations took those pairs from 2.64 to 2.37 px and 8 field train pairs
    from 5.91 to 5.36 px (24 more: 2.30 px; 12 more at half size instead: 2.83 px; ``rest_prior``
    0.5 or 0.25, or ``damping`` 0.001, instead: within 0.05 px of 2.64): at 12 + 4 the stage was
    still converging. On the thermal held-out pairs the same stage took 6.41 to 5.51 px (MNCC
    0.851 -> 0.892) before the border fixes below, 4.59 px (0.896) after them. Three border fixes,
    on 20 held-out NIR train pairs (field and oldbuilding, every other one; moderate; keypoint
    start): 4.93 px (MNCC 0.943) -> 4.01 px (0.950)
    with the IR's exactly-0 padding left out of the normal equations (``content_mask``), 3.92 px
    with the update composed on the displacement (the grid itself, clamped at the frame's border,
    froze the outer cells), 3.13 px (0.949) with a 6 px band along both frames' edges left out
    too, where replicate padding makes the MIND descriptors of the two images disagree (a band of
    3 / 9 / 12 px: 3.53 / 3.21 / 3.33 px, visible band only); judged per cell at its centre
    instead of per pixel (shipped, ~60 ms a call less): 3.14 px (0.948). A multi-scale fill of the
    non-affine rest (sigma 12 cells beside 4) did not help: 4.04 against 4.01 px.
    """

    schedule: tuple[tuple[int, float], ...] = Field(
        (),
        description="one iteration per entry: (factor, sigma), the stage's resolution (the registration size "
        "/ factor) and the Gaussian sigma of the descriptors it compares, in pixels of that resolution; "
        "() = no stage")
    pool: int = Field(4, ge=1, le=16, description="the update is solved on a grid pool times coarser than the stage")
    window: float = Field(2.0, gt=0, description="Gaussian sigma of the normal equations' window, coarse cells")
    field_window: float = Field(4.0, gt=0, description="Gaussian sigma of the non-affine update's smoothing, "
                                "coarse cells")
    rest_prior: float = Field(1.0, ge=0, description="the non-affine update is shrunk towards zero where the "
                              "smoothed cell weights are below this multiple of their mean")
    damping: float = Field(0.01, gt=0, description="Tikhonov term, a fraction of the mean gradient energy")
    mind_radius: int = Field(2, ge=1, le=3, description="the MIND descriptors compare each pixel's patch with "
                             "those of its four axial neighbours at this distance (pixels of the iteration's size)")
    mind_diagonal: int = Field(0, ge=0, le=3, description="0: the axial neighbours only (4 channels); d > 0: also "
                               "the four diagonal ones at (+-d, +-d) (8 channels), at most mind_radius")
    both_starts: bool = Field(
        False, description="also refine from the graph's own start (the identity: in the daemon, the "
        "registration in force) and keep, per pair, whichever of the two results' MIND descriptors agree "
        "better with the visible image's; the stage then takes about twice the time")
    select_after: int | None = Field(
        None, ge=0, description="with both_starts, the first select_after schedule entries run from both starts "
        "and the rest from the chosen result alone (None: every entry from both)")
    select_factor: int = Field(
        1, description="with both_starts, the two results are judged at the registration size / this factor "
        "(1, 2 or 4)")
    blurred_prefix: tuple[tuple[int, float], ...] = Field(
        (),
        description="entries as schedule's: from the given start alone, a second variant runs these iterations, "
        "then the schedule's first blurred_select_after entries beside the first variant's (one batch); per pair "
        "the variant's result is kept where its edge-orientation agreement with the visible image "
        "(lucas_kanade.edge_agreement) exceeds blurred_margin times the first's, and the kept one runs the "
        "rest; () = no variant")
    blurred_margin: float = Field(
        1.07, ge=1, description="how much better the blurred_prefix variant's agreement must be to be kept")
    blurred_select_after: int | None = Field(
        None, ge=0, description="with blurred_prefix, the schedule entries both variants run before the choice "
        "(None: all of them); at least select_after")
    track_schedule: tuple[tuple[int, float], ...] = Field(
        (),
        description="the track graph's iterations, as schedule: the stage run from the registration in force "
        "(the daemon's runs between two register-graph runs on a rig that keeps its registration); () = no "
        "track graph")
    track_linearisation: Literal["warped", "reference"] = Field(
        "warped", description="what the track graph's MIND iterations linearise on: the gradients of the warped IR's "
        "descriptors, recomputed every iteration (warped; what checkpoints made before this field read as), or "
        "those of the visible image's, computed once a call (reference, as in inverse-compositional Lucas-Kanade; "
        "see LK_TRACK_LINEARISATION)")
    descriptor_iterations: int = Field(
        0, ge=0, description="after the MIND iterations, this many Gauss-Newton iterations on the learned "
        "descriptor of the stage's towers (its matcher), at the registration size / descriptor_factor; 0 = none, "
        "and no towers")
    descriptor_track_iterations: int = Field(
        0, ge=0, description="the same in the track graph, after its MIND iterations")
    descriptor_factor: int = Field(
        1, description="those iterations run at the registration size / this factor (1 or 2), on the towers' "
        "descriptors of the registration-size images average-pooled by it")
    descriptor_pool: int = Field(4, ge=1, le=16, description="those iterations solve on cells of this many pixels "
                                 "of their size")
    descriptor_gain: float = Field(1.5, gt=0, lt=2, description="each of those updates times this")
    descriptor_guard: float = Field(
        1.03, ge=1, description="keep the MIND iterations' grid where the learned-descriptor iterations raise the "
        "axial MIND residual (lucas_kanade.paired_residuals) by more than this factor")
    descriptor_min_detail: float = Field(
        0.0, ge=0, description="keep the MIND iterations' grid where the IR's share of fine detail "
        "(lucas_kanade.fine_detail) is below this: a blurrier or lower-resolution IR than the towers learned "
        "(0: never, what older checkpoints read as)")
    descriptor: DescriptorConfig = Field(
        DescriptorConfig(), description="the towers' architecture and how they were trained (models.descriptor)")

    @property
    def uses_towers(self) -> bool:
        """Whether the register or the track graph runs learned-descriptor iterations, so that the
        stage holds the towers."""
        return bool(self.descriptor_iterations or self.descriptor_track_iterations)

    @field_validator("schedule", "blurred_prefix", "track_schedule")
    @classmethod
    def _valid_steps(cls, v: tuple[tuple[int, float], ...]) -> tuple[tuple[int, float], ...]:
        if any(f not in (1, 2, 4) or s < 0 for f, s in v):
            raise ValueError(f"schedule entries need a factor of 1, 2 or 4 and a sigma >= 0, got {v}")
        return v

    @model_validator(mode="after")
    def _cells_fit_every_factor(self) -> LucasKanadeConfig:
        # Every iteration solves on the same cells (pool pixels of the registration size), so the
        # pool must be a whole number of pixels at each factor's resolution.
        factors = {f for f, _ in (*self.schedule, *self.blurred_prefix, *self.track_schedule)}
        if any(self.pool % f for f in factors):
            raise ValueError(f"pool {self.pool} must be a multiple of every schedule factor ({sorted(factors)})")
        if self.select_factor not in (1, 2, 4) or self.pool % self.select_factor:
            raise ValueError(f"select_factor must be 1, 2 or 4 and divide pool {self.pool}, got {self.select_factor}")
        if self.descriptor_factor not in (1, 2):
            raise ValueError(f"descriptor_factor must be 1 or 2, got {self.descriptor_factor}")
        if self.mind_diagonal > self.mind_radius:
            raise ValueError(f"mind_diagonal {self.mind_diagonal} must be at most mind_radius {self.mind_radius}")
        if self.select_after is not None and (not self.both_starts or self.select_after > len(self.schedule)):
            raise ValueError(f"select_after {self.select_after} needs both_starts and at most the schedule's "
                             f"{len(self.schedule)} entries")
        if self.blurred_prefix and not self.schedule:
            raise ValueError("blurred_prefix runs before the schedule: it needs a schedule")
        if self.blurred_select_after is not None and (
                not self.blurred_prefix or self.blurred_select_after > len(self.schedule)
                or (self.both_starts and self.blurred_select_after < (self.select_after or 0))):
            raise ValueError(f"blurred_select_after {self.blurred_select_after} needs a blurred_prefix and lies "
                             f"between select_after ({self.select_after}) and the schedule's {len(self.schedule)} "
                             f"entries")
        return self


#: The thermal weights' schedule (see :class:`LucasKanadeConfig`): 8 iterations at half size on
#: descriptors blurred by 1 px, 24 at full size blurred by 1 px, 16 unblurred. On the 8 held-out
#: RoadScene train pairs (moderate / hard mean EPE): 8 + 24 + 16 4.20 / 10.47 px, 8 + 24 + 32 4.18 /
#: 10.40, 8 + 16 + 24 4.18 / 10.59, 8 + 8 + 32 4.19 / 10.72, 8 + 16 + 16 4.22 / 10.63, 8 + 8 + 16
#: 4.29 / 10.82, 8 + 16 + 4 4.32 / 10.70, 8 + 14 + 2 4.37 / 10.77, 8 + 12 + 4 4.37 / 10.81, 8 + 8 + 8
#: 4.39 / 10.89, 12 + 8 + 8 4.61 / 10.72. A full-size iteration costs ~5 ms of the register graph
#: (one thread). 8 + 14 + 2 was shipped while the daemon ran the register graph on every
#: registration run (the demo rig at 5.9 Hz with it, 5.2 Hz with 8 + 16 + 4); with the track graph
#: carrying 9 of 10 runs (``RegistrationConfig.register_every``) the longer schedule's call costs the
#: daemon ~10 ms a run on average.
LK_SCHEDULE: tuple[tuple[int, float], ...] = ((2, 1.0),) * 8 + ((1, 1.0),) * 24 + ((1, 0.0),) * 16

#: The MIND neighbourhood of the shipped stages (``LucasKanadeConfig.mind_radius`` and
#: ``mind_diagonal``): the four axial neighbours and the four diagonal ones at (+-1, +-1), 8 channels;
#: the axial ones at 1 px of the nets' size, i.e. radius 1 in the thermal stage (:data:`LK_SCHEDULE`, at
#: the nets' 192x256) and :data:`LK_MIND_RADIUS_FINE` 2 in the NIR one (:data:`LK_SCHEDULE_FINE`, at twice
#: that size). Before, both used the four axial neighbours at radius 2. On the 8 held-out RoadScene train
#: pairs (thermal nets and schedule; mean EPE moderate / hard / wide): axial at radius 2 4.20 / 10.47 /
#: 15.46 px (MNCC 0.907 / 0.794 / 0.708); radius 1 with diagonals 3.83 / 9.50 / 15.08 (0.919 / 0.805 /
#: 0.714); radius 2 with diagonals at 1 3.76 / 10.09 / 15.60; at 2 3.79 / 11.02; radius 1 axial only
#: 4.46 / 9.45; radius 3 with diagonals at 1 3.87 / 10.66; radius 1 with diagonals and 5x5 patches 4.39
#: / 8.48 (the wider patches widen the capture range and blur the optimum; in the first 32 iterations
#: only 4.30 / 8.51). With the diagonals, 8 + 16 + 16 iterations 3.79 / 10.30 (radius 2), 8 + 8 + 8 4.05
#: / 10.60. Other features beside the axial MIND did less (moderate): the gradient's doubled-angle
#: orientation (2 channels) 4.01-4.16 px, MIND of radius 1 and 2 together 4.22. On 20 held-out NIR train
#: pairs (NIR nets and schedule, moderate): axial at radius 2 1.90 px (MNCC 0.966); radius 2 with
#: diagonals 1.82 (0.967); radius 1 with diagonals 1.90 (0.968). Cost: 8 channels instead of 4 in
#: every iteration (thermal register graph 189 -> 346 ms, track graph 14 -> 24 ms; NIR 2005 ms and 72
#: ms; ONNX Runtime, one thread).
LK_MIND_DIAGONAL = 1
LK_MIND_RADIUS = 1
LK_MIND_RADIUS_FINE = 2

#: With ``both_starts``, the thermal stage chooses its start after :data:`LK_SCHEDULE`'s 8 half-size
#: iterations, so the full-size ones run once: with the 8 + 8 + 16 schedule the register graph took
#: 223 instead of 477 ms (one thread, back to back) and the demo rig's registration ran at 4.2
#: instead of 1.8 Hz, 1.54 px from the truth. On the 8 held-out RoadScene train pairs every result
#: stayed the same (moderate 4.29 px, hard 10.82, wide 15.76: the nets' start is kept on each), as
#: it did choosing before any iteration; but choosing before any iteration kept the nets' start on
#: the demo rig (27.3 px from the truth against 1.7). The NIR stage chooses after 32
#: (:data:`LK_SCHEDULE_FINE`): after 8 it took the wrong start on 4 of its 20 held-out pairs (2.34
#: -> 2.53 px).
LK_SELECT_AFTER = 8

#: The NIR weights' schedule, the stage at twice the nets' size (``ModelConfig.net_pool`` 2, a
#: 384x512 registration size, ``pool`` 8 so that a cell is 8 px of 384x512 as :data:`LK_SCHEDULE`'s
#: are of 192x256 with ``pool`` 4): the thermal stage's first 8 + 8 + 16 at factors 4 and 2, then,
#: from the chosen start alone (``select_after`` 32), 16 iterations at the full 384x512 on descriptors blurred by
#: 1 px and 32 unblurred, with ``window`` :data:`LK_WINDOW`. On 20 held-out NIR train pairs (field and
#: oldbuilding, every other one; moderate): 2.34 px, MNCC 0.961 (ngf-mind 2.42 px, 0.949). The
#: steps to it: the stage at the nets' size 3.14 px (MNCC 0.948); with 32 unblurred iterations at
#: 384x512 2.59 px (0.960); 48 instead 2.50, window 3 2.50, both (the 16 blurred first) 2.39
#: (0.963); window 4 2.34, 5 2.41, 6 2.67. Worse: ``field_window`` 8 / 12 3.10 / 4.80,
#: ``rest_prior`` 0.3 / 3 2.96 / 2.82, ``pool`` 4 (cells half as wide) 4.20 px; a residual-weighted
#: (Cauchy) solve 2.62-2.95; one global affine + 6x8 bicubic lattice update instead of the
#: per-cell one 4.46 px on 6 of the pairs where the shipped stage gave 2.43 (docs/experiments.md).
LK_SCHEDULE_FINE: tuple[tuple[int, float], ...] = (((4, 1.0),) * 8 + ((2, 1.0),) * 8 + ((2, 0.0),) * 16
                                                   + ((1, 1.0),) * 16 + ((1, 0.0),) * 32)
#: The thermal weights' ``track_schedule``: 4 unblurred iterations at the registration size. On the 8
#: held-out RoadScene train pairs, each run from the previous one's grid on the same pair, starting from
#: the answer of the register graph of then (8 + 14 + 2 iterations; moderate / hard mean EPE, px, after
#: 0, 1, 2, 4 and 8 calls): 4.37, 4.32,
#: 4.27, 4.22, 4.17 / 10.77, 10.74, 10.71, 10.66, 10.59; 2 blurred (1 px) + 2 unblurred: 4.37, 4.32, 4.29,
#: 4.25, 4.24 / 10.77, 10.70, 10.64, 10.53, 10.39. A call (ONNX Runtime, one thread, 192x256): 2 / 4 / 6
#: unblurred iterations 10.3 / 18.5 / 27.5 ms, 2 + 2 22.3 ms.
LK_TRACK: tuple[tuple[int, float], ...] = ((1, 0.0),) * 4
#: The NIR weights' ``track_schedule``: 2 unblurred iterations at their 384x512 registration size
#: (38-47 ms a call, one thread; 4 took 74 ms).
LK_TRACK_FINE: tuple[tuple[int, float], ...] = ((1, 0.0),) * 2
#: Both shipped weights' ``track_linearisation``: the track graph's iterations linearise on the visible
#: image's MIND gradients, computed once a call, instead of the warped IR's every iteration (three of
#: the five per-pixel products and the gradients leave the loop). Thermal track graph (4 iterations at
#: 192x256; ONNX Runtime, one thread, a RoadScene pair near its truth, the two graphs alternating,
#: CPU ms median of 20 calls): 47.4 -> 38.1 ms (3 iterations 31.4). On the 8 held-out RoadScene
#: train pairs (``scripts/eval_still_rig.py``, moderate, the register graph on runs 1 and 11) the
#: iterations walk the registration less far from the register graph's answer: after runs 2, 4, 6,
#: 10, 11, 12: 3.48, 3.61, 3.70, 3.74, 3.38, 3.39 px -> 3.47, 3.55, 3.62, 3.66, 3.31, 3.32. Demo rig
#: (``busref bench``, 20 s, 4 runs each, alternating): end error 1.82, 2.36, 2.04, 2.28 px -> 2.40,
#: 2.29, 1.92, 1.81 (means 2.13 / 2.11), the track call in the daemon 77-90 -> 66-75 ms p50. NIR
#: track graph 129.7 -> 112.4 ms; NIR still rig (last 8 NIR train pairs) identical to 1e-4 px.
LK_TRACK_LINEARISATION = "reference"

#: ``LucasKanadeConfig.window`` (cells) of both shipped stages, :data:`LK_SCHEDULE` and
#: :data:`LK_SCHEDULE_FINE`. The thermal stage on the 8 held-out RoadScene train pairs (moderate),
#: ``window`` 2 / 3 / 4 / 5 / 6: 4.59 / 4.40 / 4.29 / 4.26 / 4.30 px (MNCC 0.896 / 0.901 / 0.904 /
#: 0.906 / 0.904); the NIR one as above. Widening the field's own smoothing (``field_window``)
#: instead was worse on the NIR pairs (6 / 8 / 12: 2.51 / 3.10 / 4.80 px against 2.59).
LK_WINDOW = 4.0
#: The thermal weights' stage (``--lucas-kanade standard-2x``): :data:`LK_SCHEDULE` and :data:`LK_TRACK`
#: at the same 192x256 of a registration size twice as large (factors doubled,
#: ``ModelConfig.net_pool`` 2), so that a stage with towers has them see 384x512 and their
#: descriptors, pooled by :data:`LK_DESCRIPTOR_FACTOR`, drive the iterations at 192x256.
LK_SCHEDULE_2X: tuple[tuple[int, float], ...] = tuple((2 * f, s) for f, s in LK_SCHEDULE)
LK_TRACK_2X: tuple[tuple[int, float], ...] = tuple((2 * f, s) for f, s in LK_TRACK)
LK_DESCRIPTOR_FACTOR = 2
#: Learned-descriptor iterations for a stage with towers (``--descriptor-iterations``; the shipped
#: weights run none: on RoadScene the towers' gain came from its JPEG files' shared block grid,
#: docs/experiments.md), their cells
#: (``descriptor_pool``, pixels of 192x256) and guard, chosen on the 8 held-out RoadScene train pairs
#: (moderate mean EPE, unguarded; the MIND stage alone 3.83 px): 16 iterations on 4 px cells 3.03,
#: on 2 px cells 2.83, on 8 px 3.68 (the refinement's native-size descriptor: 3.52 / 3.44 / 3.68);
#: 32 on 2 px cells 2.80. Guard 1.03 / 1.05 / 1.1: 3.25 / 3.00 / 2.83 px there, and with the thermal
#: weights on the 20 NIR check pairs (a modality the towers never saw; 4.30 px without the
#: iterations, 4.70 unguarded) 4.39 / 4.48 px.
LK_DESCRIPTOR_ITERATIONS = 16
LK_DESCRIPTOR_POOL = 2
LK_DESCRIPTOR_GUARD = 1.1
#: The floor on the IR's share of fine detail for the towers' result, with towers
#: (``--descriptor-min-detail``; ``LucasKanadeConfig.descriptor_min_detail``,
#: ``lucas_kanade.fine_detail``). On the 8 held-out RoadScene train pairs (moderate, network alone)
#: an IR blurred by 2 px or at a quarter of the resolution scores 0.043-0.084 and there the towers'
#: result lies 0.25 px behind the MIND iterations' (4.40 against 4.13 px, 4.50 against 4.25);
#: the protocol's moving images of all 176 RoadScene train pairs score 0.117 or more (moderate and
#: hard), the 60 NIR train pairs 0.152 or more. With the floor: blurred 4.13 px, quarter resolution
#: 4.25 px, the pairs as they are and their inverted and gamma copies unchanged (docs/experiments.md).
LK_DESCRIPTOR_MIN_DETAIL = 0.1
#: The thermal weights' tone target for the nets' IR (``ModelConfig.net_ir_tone_mean``,
#: ``--net-ir-tone-mean``). On the 8 held-out RoadScene train pairs (moderate, network alone; PyTorch)
#: the IR under ``x ** 1.5 / 2 / 2.5`` cost 3.20 / 5.27 / 9.46 px against 2.66 as it is, nearly all of
#: it in the nets (6.41 -> 12.04 px for ``x ** 2``). With the nets' IR re-toned to a mean of 0.5 / 0.6 /
#: 0.7: as it is 2.68 / 2.65 / 2.64 px, ``x ** 2`` 2.74 / 2.69 / 2.72, ``x ** 2.5`` 3.00 / 2.91 / 2.94
#: (docs/experiments.md). 0.6 lies inside RoadScene train's IR means (0.37-0.73).
NET_IR_TONE_MEAN = 0.6

#: The thermal stage's second variant (``scripts/set_inference_stages.py --blurred-variant on``, in the thermal weights;
#: ``LucasKanadeConfig.blurred_prefix``, ``blurred_margin``, ``blurred_select_after``): 4 iterations at
#: a quarter of the registration size on descriptors blurred by 2 px from the nets' grid, then
#: :data:`LK_SCHEDULE_2X`'s 32 blurred entries beside the first variant's; kept per pair where its
#: edge-orientation agreement beats the first result's by 7 %, the kept one running the 16 unblurred
#: entries. On the 8 held-out RoadScene train pairs (mean EPE, network alone, PyTorch): the variant
#: always hard 9.03 -> 8.04 px, wide 14.81 -> 12.74, moderate 2.66 -> 3.51; 8 such iterations hard
#: 8.27, moderate 4.48; blurred by 3 px then 1.5 px hard 12.54. Judged at margin 1.00 / 1.05 / 1.07 /
#: 1.10: hard 8.04 / 8.04 / 7.78 / 7.75 px, wide 12.82 / 12.82 / 13.03 / 13.03, moderate 2.66 with no
#: pair switched (ratios 0.94-1.01 there). Judged after the whole schedule instead: the same at 1.07
#: (hard 7.78, wide 13.03), so the cheaper choice was taken; after the variant's 8 quarter-size entries
#: it took moderate pairs (3.25 px at 1.07). The variant from both starts gave the same (8.04 px
#: always). On the last 24 train pairs (16 of them seen by the nets): hard 8.84 -> 7.38 px at 1.07
#: (MNCC 0.848 -> 0.873; 7.46-7.50 at 1.00-1.05, 7.45 at 1.10), moderate unchanged at 1.07 (1 pair
#: switched at 1.03-1.05: 2.68 px; 3 at 1.00: 2.73). With the nets' IR re-toned (:data:`NET_IR_TONE_MEAN`)
#: on the 8 held-out pairs: hard 9.10 -> 7.68 px, moderate 2.649 unchanged; in the thermal weights since
#: then, at ~1.4x the register call (983.1 against 711.2 ms back to back with the graphs that ran towers,
#: docs/experiments.md).
LK_BLURRED_PREFIX_2X: tuple[tuple[int, float], ...] = ((4, 2.0),) * 4
LK_BLURRED_MARGIN = 1.07
LK_BLURRED_SELECT_AFTER = 32


class GafConfig(_Strict):
    """The pyramid GAF (models.networks.gaf): attention channels, its resolution, pyramid depth."""

    width: int = Field(16, ge=4, le=64)
    pool: int = Field(8, ge=2, le=32, description="attention weights are computed at 1/pool resolution")
    levels: int = Field(5, ge=2, le=8, description="Laplacian band-pass levels (the base is at 1/2**levels)")


class ModelConfig(_Strict):
    """The whole BusReF model. ``registration_size`` is (H, W), multiples of 8."""

    bus: BusConfig = BusConfig()
    affine: AffineConfig = AffineConfig()
    deformable: DeformableConfig = DeformableConfig()
    gaf: GafConfig = GafConfig()
    lucas_kanade: LucasKanadeConfig = LucasKanadeConfig()
    keypoint_start: bool = Field(False, description=(
        "also start the register graph from the SIFT + RANSAC affine of busref.keypoints where it aligns "
        "the pair's edges better (busref eval, busref register and the daemon alike); recorded in the "
        "exported graphs' metadata"))
    registration_size: tuple[int, int] = (192, 256)
    net_pool: int = Field(1, description=(
        "the learned stages see the registration-size images average-pooled by this factor (1 or 2); the "
        "Lucas-Kanade stage refines their grid at the full registration size"))
    net_ir_tone_mean: float | None = Field(None, gt=0, lt=1, description=(
        "the learned stages see the IR re-toned by a per-image gamma to this mean (models.networks.tone; "
        "the Lucas-Kanade stage sees it as it is); None: as it is. The thermal weights': NET_IR_TONE_MEAN"))

    @field_validator("registration_size")
    @classmethod
    def _multiple_of_8(cls, v: tuple[int, int]) -> tuple[int, int]:
        if any(s % 8 or s < 32 for s in v):
            raise ValueError(f"registration_size {v} must be multiples of 8 and >= 32")
        return v

    @model_validator(mode="after")
    def _nets_size(self) -> ModelConfig:
        if self.net_pool not in (1, 2) or any((s // self.net_pool) % 8 for s in self.registration_size):
            raise ValueError(f"net_pool {self.net_pool} must be 1 or 2 and leave the registration_size "
                             f"{self.registration_size} multiples of 8")
        stage = self.lucas_kanade
        towers_size = stage.descriptor.size
        if stage.uses_towers and towers_size is not None and tuple(towers_size) != tuple(self.registration_size):
            # The towers' matches hold at the scale they were trained at (docs/experiments.md: the
            # native-size descriptor at 192x256 made the held-out pairs worse, 3.83 -> 4.10 px).
            raise ValueError(f"the Lucas-Kanade stage's towers were trained at {tuple(towers_size)}, not at the "
                             f"registration_size {tuple(self.registration_size)}")
        return self


class StageConfig(_Strict):
    """One training stage's schedule."""

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    crop: tuple[int, int] = (128, 160)
    validate_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(500, ge=1)


class LossWeights(_Strict):
    """Weights of the loss terms (paper symbols in the field descriptions)."""

    ssim_re: float = Field(1.0, description="lambda of eq. 4")
    ssim_fuse: float = Field(1.0, description="sigma of eq. 8")
    grad_fuse: float = Field(10.0, description="weight of L_grad (eq. 6-7)")
    gamma: float = Field(0.7, description="gradient enhancement exponent of eq. 7")
    max_grad_fuse: float = Field(0.0, description="weight of the Sobel max-gradient term (losses.max_gradient_loss); "
                                 "raises EI, SF and Qabf")
    hist_fuse: float = Field(0.0, description="weight of the histogram term (losses.histogram_loss); lowers CE")
    salfid_fuse: float = Field(0.0, description="weight of the saliency-weighted source fidelity term "
                               "(losses.saliency_fidelity_loss); lowers Q_cv")
    qcv_fuse: float = Field(0.0, description="weight of the perceptual distortion term "
                            "(losses.perceptual_distortion_loss, Q_cv / 255^2); lowers Q_cv")
    mncc: float = Field(1.0, description="epsilon of eq. 13")
    mg: float = Field(1000.0, description="weight of L_MG (eq. 12); Laplacian differences are ~1e-3")
    smooth: float = Field(0.01, description="smoothness of the displacement field; the field is in normalised "
                          "units, its squared differences are ~1e-6, so weights below ~1e3 do next to nothing "
                          "(the shipped registration fine-tunes used 1e4-1e5)")
    supervised: float = Field(0.1, description="masked end-point error against the synthetic truth")
    affine_supervised: float = Field(0.1, description="the same for the coarse (affine) grid alone")
    match: float = Field(0.0, description="the same for each matching level's own estimate (losses.match_loss)")


class TrainConfig(_Strict):
    model: ModelConfig = ModelConfig()
    losses: LossWeights = LossWeights()
    bus: StageConfig = StageConfig(steps=2000, batch_size=8, lr=2e-3, crop=(128, 128))
    fusion: StageConfig = StageConfig(steps=2000, batch_size=8, lr=2e-3, crop=(128, 128))
    registration: StageConfig = StageConfig(steps=4000, batch_size=8, lr=1e-3, crop=(192, 256))
    photometric: PhotometricConfig = Field(PhotometricConfig(), description="registration inputs' augmentation")
    max_level: Literal["moderate", "hard"] = "hard"
    level_margin: float = Field(1.15, ge=1.0, le=2.0, description="train slightly beyond max_level")
    seed: int = 0
    workers: int = Field(0, ge=0)


def load_yaml_model(path: str | Path, model: type[ModelT], what: str) -> ModelT:
    """Read a YAML file into the pydantic ``model``; errors (``ValueError``) name the file, ``what``
    it should be, and the field. An empty file is an empty mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read {what}: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid {what}:\n{exc}") from exc


def load_train_config(path: str | Path | None) -> TrainConfig:
    """Read a YAML training config (None: the defaults); errors name the file and field."""
    return TrainConfig() if path is None else load_yaml_model(path, TrainConfig, "training config")
