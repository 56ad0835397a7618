"""The keypoint start: one registration run that also tries the SIFT + RANSAC affine as its start.

For register graphs exported with ``keypoint_start`` (artifact metadata; both shipped weights), a run
with the search (the scheduler's first, then every :data:`KEYPOINT_EVERY`-th) finds the affine of
:mod:`busref.keypoints` between the full-size visible luminance and IR frame. Where it aligns the
pair's edges better than the run's own start does (the registration in force, or before any the
prior), it becomes a second start: the estimate handed on is the best, by
:meth:`PairView.agreement`, of the graph's answer from the usual start, the keypoint affine alone
and the graph's answer from the affine. The same three candidates and the same measure make the
``busref`` method of ``busref eval registration`` (``busref.models.inference.BusReFRegistration``),
so the evaluation scores what the daemon's first run computes.

Why: the register graph's capture range is a few degrees; keypoints have none where the two
images share local structure (NIR and visible do). Once the registration in force is better than
the affine (the affine has no elastic part), a run with the search costs the search plus one graph
call.
The filter (:mod:`.plausibility`) judges the chosen estimate like any other.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from busref.conventions import affine_grid
from busref.keypoints import keypoint_affine
from busref.runtime.backends.base import InferenceBackend
from busref.runtime.registration.geometry import Estimate, RegistrationGeometry, run_register

log = logging.getLogger(__name__)

#: The scheduler searches keypoints on the first register-graph run and every this many register-graph
#: runs after it (the track graph's runs between do not count). Why: a run with the search costs the
#: search and a second graph call (with the register graph of 192x256, the NIR demo's register stage
#: went from ~156 to ~306 ms p50 and its capture-to-publish p99 from 37 to 76 ms, the two cores shared
#: with the fuse graph); a still rig needs it once, and a bumped one is searched again within this
#: many register-graph runs (~30 s at the NIR rigs' 2 Hz with ``register_every`` 10; the filter still
#: judges the answer against the registration in force, so a bump beyond its jump limit is taken
#: by the re-lock rule of :mod:`.plausibility`, not at once).
KEYPOINT_EVERY = 5


def register_with_keypoints(backend: InferenceBackend, geometry: RegistrationGeometry, vis_y: np.ndarray,
                            ir: np.ndarray, t_capture: float, start: np.ndarray | None,
                            start_grid: np.ndarray) -> Estimate:
    """:func:`run_register` from ``start``, and from the keypoint affine where that agrees better.

    ``vis_y`` (H_rgb, W_rgb) uint8 luminance, ``ir`` (H_ir, W_ir) float32 [0, 1] normalised IR;
    ``start`` (2, 3) normalised or None (the prior's canvas as is); ``start_grid`` (H_reg, W_reg, 2)
    normalised, the grid ``start`` stands for (the registration in force, or the prior's identity).
    The returned estimate always carries its pair (``view``).
    """
    estimate = run_register(backend, geometry, vis_y, ir, t_capture, start, with_view=True)
    view = estimate.view
    assert view is not None
    found = keypoint_affine(vis_y, ir)
    if found is None:
        return estimate
    theta = geometry.theta_from_frame_to_ir(found.matrix)
    keypoint = Estimate(theta, affine_grid(theta, *geometry.reg_hw, coordinates="normalised").astype(np.float32),
                        t_capture, view)
    if view.agreement(keypoint.grid) <= view.agreement(start_grid):
        return estimate
    refined = dataclasses.replace(run_register(backend, geometry, vis_y, ir, t_capture, theta), view=view)
    candidates = {"network": estimate, "keypoints": keypoint, "keypoints + network": refined}
    scores = {name: view.agreement(c.grid) for name, c in candidates.items()}
    best = max(scores, key=scores.__getitem__)
    log.debug("keypoint start (%d inliers): agreement %s; %s kept", found.inliers,
              {k: round(v, 4) for k, v in scores.items()}, best)
    return candidates[best]
