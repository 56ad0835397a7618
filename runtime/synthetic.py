"""A synthetic street scene rendered in both modalities, with a known IR misalignment.

The scene (buildings, road, moving people and cars) is laid out once in normalised
coordinates from a seed, so an IR renderer and an RGB renderer built from the same
:class:`Scene` show the same objects at the same time, whatever their resolutions.

* RGB (uint8 BGR): texture everywhere (sky gradient, building edges and windows, road
  markings); the moving objects are low-contrast.
* IR (uint16, simulated 14-bit counts), in the IR camera's modality. Thermal: the moving
  objects are warm and bright; the texture shows only weakly, blurred. Near-infrared: reflected
  light, so the street looks much like the visible image in grey, except that the sky is dark
  and sunlit facades bright, and people and cars differ from their surroundings by reflectance
  only (a little, either way). The IR frame is the reference view warped by a rig-like
  misalignment (:class:`Misalignment`: rotation, scale, shift, a smooth elastic term), so
  registration has real work; :class:`IRMisalignment` gives the exact answer.

Speed: static layers and object sprites are rendered once; a frame is a copy, a few small
sprite pastes; IR warps the static street once and only the object patches per frame.
About 1 ms per modality at 640x512.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from busref.rig_config.schema import Misalignment, RigConfig, SyntheticSource

#: Object sizes and ``speed_px_s`` are given for a view this many pixels wide.
REFERENCE_WIDTH = 640
HORIZON = 0.42  # normalised y where buildings meet the street
SIDEWALK = (0.60, 0.68)  # people walk here
ROAD = (0.68, 0.98)  # cars drive here
_MAX_COUNT = 16383  # 14-bit radiometric counts
_NOISE_FRAMES = 4  # cycled sensor-noise frames: fresh noise per frame costs more than the render


@dataclass(frozen=True)
class Track:
    """One moving object, in normalised coordinates (x right, y down, [0, 1] = the view)."""

    kind: Literal["person", "car"]
    x0: float
    y: float
    vx: float  # normalised widths per second, signed
    heat: float  # IR counts above the background
    colour: tuple[int, int, int]  # BGR, close to the street's so the object is faint in RGB


@dataclass(frozen=True)
class Building:
    x0: float
    x1: float
    top: float  # normalised y of the roof; the bottom is HORIZON
    shade: float  # 0..1, picks the facade colour and temperature


class Scene:
    """Layout and motion of the synthetic street, shared by both renderers."""

    def __init__(self, seed: int = 0, objects: int = 5, speed_px_s: float = 40.0) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.buildings: list[Building] = []
        x = -0.05
        while x < 1.05:
            width = float(rng.uniform(0.10, 0.22))
            self.buildings.append(Building(x, x + width - 0.01, float(rng.uniform(0.08, 0.30)),
                                           float(rng.uniform(0, 1))))
            x += width
        speed = speed_px_s / REFERENCE_WIDTH
        self.tracks: list[Track] = []
        for i in range(objects):
            person = i % 2 == 0
            lo, hi = SIDEWALK if person else ROAD
            direction = 1.0 if rng.uniform() < 0.5 else -1.0
            grey = int(rng.integers(70, 120))
            self.tracks.append(Track(
                kind="person" if person else "car",
                x0=float(rng.uniform(0, 1)),
                y=float(rng.uniform(lo + 0.02, hi - 0.04)),
                vx=direction * speed * float(rng.uniform(0.5, 1.0) if person else rng.uniform(1.0, 2.0)),
                heat=float(rng.uniform(1800, 2600) if person else rng.uniform(900, 1400)),
                colour=(grey + int(rng.integers(-15, 15)), grey, grey + int(rng.integers(-15, 15))),
            ))

    def positions(self, t: float) -> list[tuple[Track, float, float]]:
        """Object centres at scene time ``t`` seconds, normalised; objects wrap around the view."""
        span = 1.3  # leave the view fully before reappearing on the other side
        return [(tr, (tr.x0 + tr.vx * t + 0.15) % span - 0.15, tr.y) for tr in self.tracks]


# --------------------------------------------------------------------------- rasterising


def _smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field, (h, w) float32."""
    field = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma)
    return field / max(float(field.std()), 1e-6)


def _rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, value: float | tuple,
          geo: tuple[int, int, int], thickness: int = -1) -> None:
    """Draw a normalised rectangle on a canvas of view size (w, h) with margin ``m``."""
    w, h, m = geo
    cv2.rectangle(img, (round(m + x0 * w), round(m + y0 * h)), (round(m + x1 * w), round(m + y1 * h)),
                  value, thickness)


def _street_layers(scene: Scene, w: int, h: int, m: int) -> dict[str, np.ndarray]:
    """Masks (float32, (h + 2m, w + 2m)) of the static street, one per material."""
    shape = (h + 2 * m, w + 2 * m)
    geo = (w, h, m)
    ys = (np.arange(shape[0], dtype=np.float32) - m) / h
    layers = {name: np.zeros(shape, np.float32) for name in
              ("sky", "facade", "edge", "window", "sidewalk", "road", "marking")}
    layers["sky"][ys < HORIZON] = 1.0
    layers["sidewalk"][(ys >= HORIZON) & (ys < ROAD[0])] = 1.0
    layers["road"][ys >= ROAD[0]] = 1.0
    line = max(1, round(w / 320))
    for b in scene.buildings:
        _rect(layers["facade"], b.x0, b.top, b.x1, HORIZON, 0.4 + 0.6 * b.shade, geo)
        _rect(layers["sky"], b.x0, b.top, b.x1, HORIZON, 0.0, geo)
        _rect(layers["edge"], b.x0, b.top, b.x1, HORIZON, 1.0, geo, thickness=line)
        rows = np.arange(b.top + 0.03, HORIZON - 0.04, 0.06)
        cols = np.arange(b.x0 + 0.015, b.x1 - 0.02, 0.035)
        for wy in rows:
            for wx in cols:
                _rect(layers["window"], wx, wy, wx + 0.018, wy + 0.03, 1.0, geo)
    dash, gap = 0.06, 0.05
    for y in (0.83,):
        x = -0.1
        while x < 1.1:
            _rect(layers["marking"], x, y, x + dash, y + 0.008, 1.0, geo)
            x += dash + gap
    _rect(layers["marking"], -0.1, ROAD[0], 1.1, ROAD[0] + 0.006, 1.0, geo)  # kerb
    return layers


def _sprite_mask(kind: str, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks (float32 in [0, 1]) of an object at view width ``w``: body and hot spot."""
    s = w / REFERENCE_WIDTH
    if kind == "person":
        bw, bh = max(4, round(16 * s)), max(8, round(52 * s))
        body = np.zeros((bh, bw), np.float32)
        cv2.ellipse(body, (bw // 2, bh * 5 // 8), (bw // 2, bh * 3 // 8), 0, 0, 360, 1.0, -1)
        hot = np.zeros_like(body)
        cv2.circle(hot, (bw // 2, bh // 8), max(2, bw // 3), 1.0, -1)  # the head: warmest
        body = np.maximum(body, hot)
    else:
        bw, bh = max(8, round(84 * s)), max(4, round(34 * s))
        body = np.zeros((bh, bw), np.float32)
        cv2.rectangle(body, (0, bh // 4), (bw - 1, bh - 1), 1.0, -1)
        cv2.rectangle(body, (bw // 4, 0), (bw * 3 // 4, bh // 4), 1.0, -1)
        hot = np.zeros_like(body)
        cv2.rectangle(hot, (0, bh // 3), (bw // 5, bh * 5 // 6), 1.0, -1)  # the engine
        for cx in (bw // 5, bw * 4 // 5):
            cv2.circle(hot, (cx, bh - 1), max(2, bh // 6), 0.8, -1)  # tyres
    sigma = max(0.6, 1.0 * s)
    return cv2.GaussianBlur(body, (0, 0), sigma), cv2.GaussianBlur(hot, (0, 0), sigma)


def _place(shape: tuple[int, ...], sprite: tuple[int, ...], x0: int, y0: int
           ) -> tuple[slice, slice, slice, slice] | None:
    """Canvas and sprite slices of a sprite with top-left pixel (x0, y0), clipped; None if off-canvas."""
    sh, sw = sprite[:2]
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + sw, shape[1]), min(y0 + sh, shape[0])
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    return slice(cy0, cy1), slice(cx0, cx1), slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0)


# --------------------------------------------------------------------------- misalignment


def _pixel_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) float64 pixel-centre coordinates, each (height, width)."""
    return np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))


@dataclass(frozen=True)
class IRMisalignment:
    """The IR camera's known misalignment relative to the reference (RGB) view.

    Coordinates are IR pixels (x right, y down, pixel centres at integers) of a ``width`` x
    ``height`` view. The affine part ``F`` maps a reference pixel ``p`` to the IR pixel that
    sees the same point: ``F(p) = c + scale * R(rotation) (p - c) + shift``, ``c`` the image
    centre. The elastic term perturbs the IR->reference map: ``M(y) = F^-1(y) + e(y)``,
    ``|e| <= elastic_px``.
    """

    width: int
    height: int
    rotation_deg: float
    scale: float
    shift_px: tuple[float, float]
    elastic_px: float

    @classmethod
    def from_config(cls, config: Misalignment, width: int, height: int) -> IRMisalignment:
        return cls(width, height, config.rotation_deg, config.scale, config.shift_px, config.elastic_px)

    def affine_ref_to_ir(self) -> np.ndarray:
        """``F`` as a (2, 3) float64 matrix on pixel coordinates (reference -> IR)."""
        a = math.radians(self.rotation_deg)
        lin = self.scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        c = np.array([(self.width - 1) / 2, (self.height - 1) / 2])
        return np.hstack([lin, (c - lin @ c + np.asarray(self.shift_px))[:, None]])

    def _elastic(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u, v = x / self.width, y / self.height
        return (self.elastic_px * np.sin(2 * np.pi * (0.7 * u + 0.3 * v) + 0.5),
                self.elastic_px * np.cos(2 * np.pi * (0.4 * u - 0.8 * v) + 1.3))

    def ir_to_ref(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``M``: IR pixel -> reference pixel it shows (arrays of any matching shape, float)."""
        inv = cv2.invertAffineTransform(self.affine_ref_to_ir())
        ex, ey = self._elastic(x, y)
        return (inv[0, 0] * x + inv[0, 1] * y + inv[0, 2] + ex,
                inv[1, 0] * x + inv[1, 1] * y + inv[1, 2] + ey)

    def ref_to_ir_grid(self, iterations: int = 8) -> np.ndarray:
        """The exact registration answer: (H, W, 2) float32, ``[y, x] = (x_ir, y_ir)``.

        For every reference pixel, the IR pixel showing the same point (``M^-1``, found by
        fixed-point iteration ``y <- F(p - e(y))``, which converges because ``e`` is small and
        smooth). ``cv2.remap(ir, grid[..., 0], grid[..., 1], ...)`` registers an IR frame.
        """
        fwd = self.affine_ref_to_ir()
        px, py = _pixel_grid(self.width, self.height)
        x, y = px, py
        for _ in range(iterations):
            ex, ey = self._elastic(x, y)
            qx, qy = px - ex, py - ey
            x = fwd[0, 0] * qx + fwd[0, 1] * qy + fwd[0, 2]
            y = fwd[1, 0] * qx + fwd[1, 1] * qy + fwd[1, 2]
        return np.stack([x, y], axis=-1).astype(np.float32)

    def ir_to_rgb_homography(self, rgb_width: int, rgb_height: int) -> np.ndarray:
        """(3, 3) IR pixel -> RGB pixel homography of the affine part (a calibration's answer)."""
        inv = np.vstack([cv2.invertAffineTransform(self.affine_ref_to_ir()), [0.0, 0.0, 1.0]])
        to_rgb = np.diag([(rgb_width - 1) / (self.width - 1), (rgb_height - 1) / (self.height - 1), 1.0])
        return to_rgb @ inv

    def margin(self) -> int:
        """Pixels beyond the reference view that the IR view can see (with a safety border)."""
        x = np.array([0, self.width - 1, 0, self.width - 1], np.float64)
        y = np.array([0, 0, self.height - 1, self.height - 1], np.float64)
        rx, ry = self.ir_to_ref(x, y)
        out = max(float(np.max(-rx)), float(np.max(rx - (self.width - 1))),
                  float(np.max(-ry)), float(np.max(ry - (self.height - 1))), 0.0)
        return math.ceil(out + self.elastic_px) + 4


# --------------------------------------------------------------------------- renderers


class RGBRenderer:
    """Renders the scene as the RGB (reference) camera sees it: (height, width, 3) uint8 BGR."""

    def __init__(self, scene: Scene, width: int, height: int) -> None:
        self.scene, self.width, self.height = scene, width, height
        rng = np.random.default_rng(scene.seed + 1)
        layers = _street_layers(scene, width, height, 0)
        lay = {name: mask[..., None] for name, mask in layers.items()}
        ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None] / HORIZON
        img = lay["sky"] * (np.array([235, 190, 140], np.float32) * (1 - ys) + np.array([250, 232, 215]) * ys)
        img += (lay["facade"] > 0) * (np.array([90, 110, 150], np.float32) + lay["facade"] * [120, 100, 70])
        img += lay["sidewalk"] * np.array([165, 168, 170]) + lay["road"] * np.array([88, 88, 92])
        for name, colour in (("window", (70, 60, 55)), ("edge", (40, 40, 45)), ("marking", (235, 240, 240))):
            img = img * (1 - lay[name]) + lay[name] * np.array(colour, np.float32)
        img += 12.0 * _smooth_noise(rng, height, width, 1.5)[..., None]  # asphalt / plaster grain
        self._background = np.clip(img, 0, 255).astype(np.uint8)
        self._sprites = {kind: _sprite_mask(kind, width)[0] for kind in ("person", "car")}
        noise = rng.normal(0, 3, (_NOISE_FRAMES, height, width, 3))
        self._noise_pos = np.clip(noise, 0, 255).astype(np.uint8)
        self._noise_neg = np.clip(-noise, 0, 255).astype(np.uint8)

    def render(self, t: float, frame_index: int = 0) -> np.ndarray:
        """The view at scene time ``t`` seconds; ``frame_index`` picks the sensor-noise frame."""
        img = self._background.copy()
        for track, cx, cy in self.scene.positions(t):
            mask = self._sprites[track.kind]
            x0, y0 = round(cx * self.width) - mask.shape[1] // 2, round(cy * self.height) - mask.shape[0] // 2
            where = _place(img.shape, mask.shape, x0, y0)
            if where is None:
                continue
            ys, xs, ms, mx = where
            alpha = 0.45 * mask[ms, mx, None]  # faint: the object is barely visible in RGB
            roi = img[ys, xs].astype(np.float32)
            img[ys, xs] = (roi * (1 - alpha) + alpha * np.array(track.colour, np.float32)).astype(np.uint8)
        k = frame_index % _NOISE_FRAMES
        cv2.add(img, self._noise_pos[k], dst=img)
        cv2.subtract(img, self._noise_neg[k], dst=img)
        return img


class IRRenderer:
    """Renders the scene as the misaligned IR camera sees it: (height, width) uint16 counts.

    ``modality`` ``thermal`` (emitted heat) or ``nir`` (reflected near-infrared light).
    """

    def __init__(self, scene: Scene, width: int, height: int, misalignment: Misalignment | None,
                 modality: Literal["thermal", "nir"] = "thermal") -> None:
        self.scene, self.width, self.height = scene, width, height
        self.modality = modality
        self.misalignment = IRMisalignment.from_config(misalignment or Misalignment(
            rotation_deg=0, scale=1.0, shift_px=(0, 0), elastic_px=0), width, height)
        m = self._margin = self.misalignment.margin()
        rng = np.random.default_rng(scene.seed + 2)
        layers = _street_layers(scene, width, height, m)
        shape = layers["sky"].shape
        ys = ((np.arange(shape[0], dtype=np.float32) - m) / height)[:, None]
        if modality == "nir":
            # Reflectance in NIR: a dark sky, bright facades and pavement, dark glass, painted
            # outlines and markings as in the visible image; grain as sharp as the visible's.
            counts = layers["sky"] * (2500 + 1200 * np.clip(ys / HORIZON, 0, 1))
            counts += (layers["facade"] > 0) * (7000 + 4000 * layers["facade"])
            counts += 7500 * layers["sidewalk"] + 4200 * layers["road"]
            for name, value in (("window", 1800.0), ("edge", 1500.0), ("marking", 11000.0)):
                counts = counts * (1 - layers[name]) + value * layers[name]
            counts += 350 * _smooth_noise(rng, *shape, 1.5)
            blur = 0.6
        else:
            counts = layers["sky"] * (6200 + 600 * np.clip(ys / HORIZON, 0, 1))  # cold sky, warmer low
            counts += (layers["facade"] > 0) * (7300 + 300 * layers["facade"])
            counts += 90 * layers["edge"] - 220 * layers["window"]  # thermal bridges; glass mirrors the sky
            counts += 7650 * layers["sidewalk"] + 7900 * layers["road"] - 110 * layers["marking"]
            counts += 25 * _smooth_noise(rng, *shape, 2.0)
            # Thermal optics and heat diffusion blur the scene: texture is weak and soft in IR.
            blur = 1.2
        self._background = cv2.GaussianBlur(np.clip(counts, 0, _MAX_COUNT), (0, 0), blur).astype(np.uint16)
        self._sprites = {kind: _sprite_mask(kind, width) for kind in ("person", "car")}
        self._noise = rng.normal(20, 6, (_NOISE_FRAMES, height, width)).clip(0, 65535).astype(np.uint16)
        rx, ry = self.misalignment.ir_to_ref(*_pixel_grid(width, height))
        self._map_x, self._map_y = rx.astype(np.float32), ry.astype(np.float32)
        # Warping is linear, so the static street is warped once and each frame only warps the
        # small object patches: a full-frame uint16 remap costs more than the whole render budget.
        self._background_ir = cv2.remap(self._background, self._map_x + m, self._map_y + m, cv2.INTER_LINEAR)
        self._fwd = self.misalignment.affine_ref_to_ir()

    def _patches(self, t: float) -> list[tuple[np.ndarray, int, int]]:
        """Heat patches (float32 counts) of the objects at time ``t`` with their top-left
        reference-view pixel (may be negative or beyond the view)."""
        out = []
        for track, cx, cy in self.scene.positions(t):
            body, hot = self._sprites[track.kind]
            x0 = round(cx * self.width) - body.shape[1] // 2
            y0 = round(cy * self.height) - body.shape[0] // 2
            if self.modality == "nir":  # reflectance, not heat: a small difference, no hot spots
                out.append((0.6 * track.heat * body, x0, y0))
            else:
                out.append((track.heat * (body + 1.6 * hot), x0, y0))
        return out

    def _ir_box(self, x0: int, y0: int, w: int, h: int) -> tuple[slice, slice] | None:
        """IR-view slices covering the reference rectangle (x0, y0, w, h), or None if outside."""
        corners = np.array([[x0, y0, 1], [x0 + w, y0, 1], [x0, y0 + h, 1], [x0 + w, y0 + h, 1]], np.float64)
        ir = corners @ self._fwd.T
        pad = self.misalignment.elastic_px * self.misalignment.scale + 2
        bx0, by0 = (max(0, math.floor(v - pad)) for v in ir.min(axis=0))
        bx1 = min(self.width, math.ceil(ir[:, 0].max() + pad))
        by1 = min(self.height, math.ceil(ir[:, 1].max() + pad))
        if bx1 <= bx0 or by1 <= by0:
            return None
        return slice(by0, by1), slice(bx0, bx1)

    def render_aligned(self, t: float) -> np.ndarray:
        """What a perfectly aligned IR camera would see at time ``t`` (no misalignment, no noise)."""
        m = self._margin
        view = self._background[m:m + self.height, m:m + self.width].copy()
        for patch, x0, y0 in self._patches(t):
            where = _place(view.shape, patch.shape, x0, y0)
            if where is not None:
                ys, xs, ps, px = where
                view[ys, xs] = cv2.add(view[ys, xs], patch[ps, px].astype(np.uint16))
        return self._finish(view, t)

    def render(self, t: float, frame_index: int = 0) -> np.ndarray:
        """The misaligned IR view at scene time ``t``; ``frame_index`` picks the noise frame."""
        ir = self._background_ir.copy()
        for patch, x0, y0 in self._patches(t):
            box = self._ir_box(x0, y0, patch.shape[1], patch.shape[0])
            if box is None:
                continue
            ys, xs = box
            warped = cv2.remap(patch, self._map_x[ys, xs] - x0, self._map_y[ys, xs] - y0, cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            ir[ys, xs] = cv2.add(ir[ys, xs], warped.astype(np.uint16))
        cv2.add(ir, self._noise[frame_index % _NOISE_FRAMES], dst=ir)
        return self._finish(ir, t)

    def _finish(self, ir: np.ndarray, t: float) -> np.ndarray:
        """Add the ambient drift and clip to the sensor's 14-bit range, in place."""
        # A real scene warms and cools slowly; the drift exercises the smoothed thermal window.
        cv2.add(ir, int(120 + 120 * math.sin(2 * math.pi * t / 20.0)), dst=ir)
        np.minimum(ir, _MAX_COUNT, out=ir)
        return ir


def true_ir_pixels(config: RigConfig, out_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Where each pixel of the published frame truly sees the IR image, on a synthetic rig.

    ``out_size`` (width, height) of the published frame, which covers the RGB frame's extent
    (``cv2.resize``'s half-pixel convention between the two). Returns the IR pixel coordinates
    ``(x, y)``, two (H_out, W_out) float32 arrays, the same convention as
    :func:`busref.runtime.registration.geometry.ir_pixels` gives for an estimate; None when the IR
    camera is not synthetic (no known truth). The RGB frame and the IR camera's reference view show
    the same extent: RGB pixel ``x`` is reference pixel ``x (W_ir - 1) / (W_rgb - 1)``, as in
    :meth:`IRMisalignment.ir_to_rgb_homography`.
    """
    ir_cam, rgb_cam = config.cameras.ir, config.cameras.rgb
    if not isinstance(ir_cam.source, SyntheticSource):
        return None
    truth = IRMisalignment.from_config(ir_cam.source.misalignment, ir_cam.width, ir_cam.height).ref_to_ir_grid()
    w_out, h_out = out_size
    xs = (np.arange(w_out, dtype=np.float64) + 0.5) * rgb_cam.width / w_out - 0.5
    ys = (np.arange(h_out, dtype=np.float64) + 0.5) * rgb_cam.height / h_out - 0.5
    ref_x = np.broadcast_to(xs * (ir_cam.width - 1) / (rgb_cam.width - 1), (h_out, w_out)).astype(np.float32)
    ref_y = np.broadcast_to((ys * (ir_cam.height - 1) / (rgb_cam.height - 1))[:, None], (h_out, w_out))
    ref_y = ref_y.astype(np.float32)
    x = cv2.remap(np.ascontiguousarray(truth[..., 0]), ref_x, ref_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    y = cv2.remap(np.ascontiguousarray(truth[..., 1]), ref_x, ref_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return x, y
