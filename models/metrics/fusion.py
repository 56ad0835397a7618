"""No-reference fusion-quality metrics for infrared-visible fusion (Table 2 of the paper), numpy/OpenCV only.

Conventions:

* Every image is 2-D luminance ``(H, W)`` on the 8-bit scale: any real dtype, values in [0, 255]
  (fused ``F``, visible ``V``, infrared ``R``, all of one shape). Pass ``255 * y`` for networks'
  [0, 1] output. Histogram-based metrics (EN, CE, MI) truncate fractional values to grey levels,
  as VIFB's EN does; the others use the values as given. :func:`fusion_metrics` truncates all
  three images first by default, which is how the project's RoadScene references were produced.
* Definitions follow the MATLAB code of the VIFB benchmark (Zhang et al., "VIFB: A Visible and
  Infrared Image Fusion Benchmark", CVPRW 2020), on which the project's reference numbers are
  calibrated; FMI_w follows Haghighat's fast-FMI code and VIF the LIVE ``vifp_mscale`` code, which
  VIFB does not ship. Each function's docstring names its paper and any deliberate deviation.
* ``FUSION_METRICS`` lists every metric with its direction (higher or lower is better) in the
  order of the paper's table first; :func:`fusion_metrics` computes them all for one pair.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

GREY_LEVELS = 256


def check_images(low: float, high: float, min_side: int = 1, **images: np.ndarray) -> list[np.ndarray]:
    """Validate named images and return them as float64 arrays, in the order given.

    Each must be a 2-D ``(H, W)`` array, all of one shape with both sides >= ``min_side``, holding
    finite values in [low, high]. Raises ValueError naming the offending argument.
    """
    out: list[np.ndarray] = []
    first_name, first_shape = "", (0, 0)
    for name, image in images.items():
        if not isinstance(image, np.ndarray) or image.ndim != 2:
            got = f"shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"{name} must be a 2-D (H, W) numpy array, got {got}")
        if not out:
            first_name, first_shape = name, image.shape
            if min(image.shape) < min_side:
                raise ValueError(f"{name} has shape {image.shape}: both sides must be >= {min_side}")
        elif image.shape != first_shape:
            raise ValueError(f"{name} has shape {image.shape} but {first_name} has shape {first_shape}")
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        # NaN fails both comparisons, so it lands here too.
        if not (low <= lo and hi <= high):
            raise ValueError(f"{name} must hold finite values in [{low}, {high}], got min {lo}, max {hi}")
        out.append(array)
    return out


# Values this close below an integer count as that integer: 255 * y can land on 127.99999999999997.
_LEVEL_TOLERANCE = 1e-6


def _grey_levels(image: np.ndarray) -> np.ndarray:
    """Integer grey levels 0..255, fractional values truncated (VIFB's EN uses ``floor``)."""
    return np.clip(np.floor(image + _LEVEL_TOLERANCE), 0, GREY_LEVELS - 1).astype(np.intp)


def _histogram(levels: np.ndarray) -> np.ndarray:
    return np.bincount(levels.ravel(), minlength=GREY_LEVELS) / levels.size


def _entropy_bits(p: np.ndarray, axis: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Entropy in bits, ``-sum p log2 p`` over ``axis``, of probabilities ``p >= 0`` (0 log 0 = 0)."""
    logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logs).sum(axis=axis)


def _filter_valid(image: np.ndarray, kernel_1d: np.ndarray) -> np.ndarray:
    """Separable correlation keeping only fully-overlapping positions (MATLAB ``filter2(..., 'valid')``)."""
    half = kernel_1d.size // 2
    full = cv2.sepFilter2D(image, cv2.CV_64F, kernel_1d, kernel_1d, borderType=cv2.BORDER_REFLECT)
    return full[half : image.shape[0] - half, half : image.shape[1] - half]


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """1-D factor of MATLAB ``fspecial('gaussian', size, sigma)`` (unit sum)."""
    return cv2.getGaussianKernel(size, sigma, cv2.CV_64F).ravel()


# ----------------------------------------------------------------------------------------------
# Single-image metrics
# ----------------------------------------------------------------------------------------------


def edge_intensity(fused: np.ndarray) -> float:
    """EI: mean Sobel gradient magnitude of F, replicate borders.

    ``EI = mean(sqrt(Sx^2 + Sy^2))`` with the 3x3 Sobel pair of ``fspecial('sobel')`` (Rajalingam &
    Priya 2018; VIFB ``metricsEdge_intensity``). Higher is better.
    """
    (f,) = check_images(0.0, 255.0, fused=fused)
    gx = cv2.Sobel(f, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(f, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    return float(np.sqrt(gx * gx + gy * gy).mean())


def spatial_frequency(fused: np.ndarray) -> float:
    """SF: ``sqrt(RF^2 + CF^2)`` (Eskicioglu & Fisher 1995; VIFB ``metricsSpatial_frequency``).

    ``RF^2 = sum (F[i, j] - F[i, j-1])^2 / (M N)`` over horizontal neighbours and ``CF^2`` likewise
    over vertical ones; VIFB divides both by the pixel count ``M N``. Higher is better.
    """
    (f,) = check_images(0.0, 255.0, fused=fused)
    rf2 = np.square(np.diff(f, axis=1)).sum() / f.size
    cf2 = np.square(np.diff(f, axis=0)).sum() / f.size
    return float(math.sqrt(rf2 + cf2))


def entropy(fused: np.ndarray) -> float:
    """EN: Shannon entropy in bits of F's 256-bin grey-level histogram (VIFB ``metricsEntropy``).

    Higher is better.
    """
    (f,) = check_images(0.0, 255.0, fused=fused)
    return float(_entropy_bits(_histogram(_grey_levels(f))))


def standard_deviation(fused: np.ndarray) -> float:
    """SD: population standard deviation of F (VIFB ``metricsVariance``, which reports SD). Higher is better."""
    (f,) = check_images(0.0, 255.0, fused=fused)
    return float(f.std())


# ----------------------------------------------------------------------------------------------
# Information-theoretic metrics against the sources
# ----------------------------------------------------------------------------------------------


def cross_entropy(fused: np.ndarray, vis: np.ndarray, ir: np.ndarray) -> float:
    """CE: mean over the sources S of ``sum_k P_S(k) log2(P_S(k) / P_F(k))``; lower is better.

    256-bin grey-level histograms, bins empty in either image skipped (Bulanon et al. 2009; VIFB
    ``metricsCross_entropy``, which averages the V->F and R->F terms). The skipping is VIFB's and
    lets a fused image that lacks most of the sources' grey levels (e.g. a constant) score <= 0,
    so read CE next to the other metrics.
    """
    f, v, r = check_images(0.0, 255.0, fused=fused, vis=vis, ir=ir)
    p_f = _histogram(_grey_levels(f))
    terms = []
    for source in (v, r):
        p_s = _histogram(_grey_levels(source))
        both = (p_s > 0) & (p_f > 0)
        terms.append(float(np.sum(p_s[both] * np.log2(p_s[both] / p_f[both]))))
    return (terms[0] + terms[1]) / 2.0


def _mutual_information_bits(a: np.ndarray, b: np.ndarray) -> float:
    la, lb = _grey_levels(a).ravel(), _grey_levels(b).ravel()
    joint = np.bincount(la * GREY_LEVELS + lb, minlength=GREY_LEVELS * GREY_LEVELS) / la.size
    joint = joint.reshape(GREY_LEVELS, GREY_LEVELS)
    return float(_entropy_bits(joint.sum(1)) + _entropy_bits(joint.sum(0)) - _entropy_bits(joint))


def mutual_information(fused: np.ndarray, vis: np.ndarray, ir: np.ndarray) -> float:
    """MI: ``MI(F, V) + MI(F, R)`` in bits from 256x256 joint grey-level histograms; higher is better.

    Qu et al. 2002 as in VIFB ``metricsMutinf``. Deviation: VIFB's code uses the natural log (its
    MI = ours x ln 2) and min-max stretches each image first, which cannot change MI of 8-bit images
    (an injective relabelling of grey levels); bits keep MI(x, x) = EN(x).
    """
    f, v, r = check_images(0.0, 255.0, fused=fused, vis=vis, ir=ir)
    return _mutual_information_bits(f, v) + _mutual_information_bits(f, r)


# ----------------------------------------------------------------------------------------------
# FMI_w: fast feature mutual information on discrete-Meyer wavelet features
# ----------------------------------------------------------------------------------------------

# Discrete Meyer ("dmey") reconstruction low-pass filter, first 31 of its 62 taps; the filter is
# symmetric about tap 30 and its last tap is 0 (MATLAB's dmey.mat, also shipped by PyWavelets).
_DMEY_HALF = np.array(
    [
        -1.009999956941423e-12, 8.519459636796214e-09, -1.111944952595278e-08, -1.0798819539621958e-08,
        6.066975741351135e-08, -1.0866516536735883e-07, 8.200680650386481e-08, 1.1783004497663934e-07,
        -5.506340565252278e-07, 1.1307947017916706e-06, -1.489549216497156e-06, 7.367572885903746e-07,
        3.20544191334478e-06, -1.6312699734552807e-05, 6.554305930575149e-05, -0.0006011502343516092,
        -0.002704672124643725, 0.002202534100911002, 0.006045814097323304, -0.006387718318497156,
        -0.011061496392513451, 0.015270015130934803, 0.017423434103729693, -0.03213079399021176,
        -0.024348745906078023, 0.0637390243228016, 0.030655091960824263, -0.13284520043622938,
        -0.035087555656258346, 0.44459300275757724, 0.7445855923188063,
    ]
)  # fmt: skip
_DMEY_REC_LO = np.concatenate([_DMEY_HALF, _DMEY_HALF[-2::-1], [0.0]])
# Analysis bank as correlation kernels, low-pass then high-pass column. Orthogonal filter bank
# (MATLAB orthfilt): decomposition low-pass = reversed rec_lo, dec_hi[k] = (-1)^(k+1) rec_lo[k];
# correlating with the reversed decomposition filters is the convolution that ``dwt`` applies.
_DMEY_BANK = np.stack([_DMEY_REC_LO, (-((-1.0) ** np.arange(_DMEY_REC_LO.size)) * _DMEY_REC_LO)[::-1]], axis=1)


def _analysis(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Low- and high-pass DWT analysis along ``axis`` (MATLAB ``dwt``, 'sym' extension mode).

    ``out[k] = sum_t dec[t] x[2k + 1 - t]`` with half-sample symmetric extension of ``x``; each
    output has ``floor((n + L - 1) / 2)`` samples for a length-``n`` axis and ``L`` = 62 taps.
    """
    taps = _DMEY_BANK.shape[0]
    pad = [(0, 0), (0, 0)]
    pad[axis] = (taps - 1, taps - 1)
    windows = sliding_window_view(np.pad(x, pad, mode="symmetric"), taps, axis=axis)
    index = [slice(None), slice(None)]
    index[axis] = slice(1, None, 2)
    both = windows[tuple(index)] @ _DMEY_BANK
    return both[..., 0], both[..., 1]


def wavelet_feature(image: np.ndarray) -> np.ndarray:
    """Single-level dmey DWT mosaic ``[cA, cH; cV, cD]`` rescaled to [0, 1] (the fast-FMI 'wavelet' feature).

    Matches MATLAB ``dwt2(I, 'dmey')`` (symmetric extension; cH is high-pass along rows). Each
    sub-band has ``floor((n + 61) / 2)`` samples per axis. A constant mosaic maps to all ones.
    """
    low, high = _analysis(image, axis=1)
    mosaic = np.block([list(_analysis(low, axis=0)), list(_analysis(high, axis=0))])
    lo, hi = mosaic.min(), mosaic.max()
    return np.ones_like(mosaic) if hi == lo else (mosaic - lo) / (hi - lo)


_TINY = np.finfo(np.float64).tiny


def _log2_square(x: np.ndarray) -> np.ndarray:
    """``log2(x^2) = 2 log2|x|``, finite (about -1022) at 0 so that ``0 * log`` terms vanish.

    Squaring is cheaper than ``abs`` and takes the sign off the joint-pdf cells that can be negative.
    """
    return np.log2(x * x + _TINY)


@dataclass(frozen=True)
class _Windows:
    """Per-window quantities of fast-FMI for ``N`` windows of ``l`` feature values."""

    pdf: np.ndarray  # (N, l) min-max normalised values over their sum; uniform for a constant window
    log_pdf: np.ndarray  # (N, l) log2(pdf), finite where pdf == 0 (only ever multiplied by 0 there)
    entropy: np.ndarray  # (N,) bits
    mean: np.ndarray  # (N,) mean window position, positions numbered 1..l
    std: np.ndarray  # (N,) population standard deviation of the position

    @classmethod
    def of(cls, raw: np.ndarray, lo: np.ndarray, flat: np.ndarray) -> _Windows:
        """From the windows ``raw`` with their minima ``lo`` and constant-window flags ``flat`` (both ``(N,)``)."""
        ones = np.ones(raw.shape[1])
        shifted = raw - lo[:, None]
        shifted[flat] = 1.0
        # Dividing by the span before normalising, as MATLAB does, cancels out.
        pdf = shifted / (shifted @ ones)[:, None]
        log_pdf = np.log2(pdf + _TINY)
        positions = np.cumsum(ones)
        mean = pdf @ positions
        variance = pdf @ np.square(positions) - mean * mean
        entropy = -np.einsum("ij,ij->i", pdf, log_pdf)
        return cls(pdf, log_pdf, entropy, mean, np.sqrt(np.maximum(variance, 0.0)))


def _fmi_windows(a: _Windows, f: _Windows, same: np.ndarray) -> np.ndarray:
    """Normalised feature MI of each pair of windows (rows of ``a`` and ``f``); returns ``(N,)``.

    Haghighat & Razian 2014 (fast-FMI): each window is a pdf over its m positions; the joint pdf is
    Nelsen's mixture ``phi * H + (1 - phi) * p_f p_a^T`` where ``H`` is the Frechet upper bound
    (comonotone coupling) when the Pearson correlation ``c`` of the two pdfs is >= 0 and the lower
    bound (countermonotone) when ``c < 0``, and ``phi = c / corr(H)``, the correlation of positions
    under ``H``. FMI = ``2 MI / (H_a + H_f)``; windows flagged ``same`` (identical raw values) score
    1 and ``MI == 0`` scores 0.

    Same value as the reference loops (to rounding), computed without ``m x m`` arrays: the lower
    bound is the upper bound with ``a``'s positions reversed (same entropy, correlation negated);
    the comonotone coupling puts mass only on the <= 2m - 1 cells where the steps of the two CDFs
    overlap, found by merging the CDFs; and the product part's entropy over all cells has the
    closed form ``h(1 - phi) + (1 - phi)(H_a + H_f)``, so only the overlap cells need correcting.
    """
    n, m = a.pdf.shape
    average = np.full(m, 1.0 / m)
    da, df = a.pdf - (a.pdf @ average)[:, None], f.pdf - (f.pdf @ average)[:, None]
    num = np.einsum("ij,ij->i", da, df)
    den = np.sqrt(np.einsum("ij,ij->i", da, da) * np.einsum("ij,ij->i", df, df))
    c = np.divide(num, den, out=np.zeros_like(num), where=num != 0)

    flip = c < 0
    pa = np.where(flip[:, None], a.pdf[:, ::-1], a.pdf)
    log_pa = np.where(flip[:, None], a.log_pdf[:, ::-1], a.log_pdf)
    mean_a = np.where(flip, m + 1.0 - a.mean, a.mean)

    # Merge the CDFs, f first at ties. Breakpoint k closes the interval ``mass[k]`` that lies in the
    # f-step ``cell_f[k]`` (f breakpoints before k) and the a-step ``cell_a[k]`` (a breakpoints before k).
    # Products with a triangular matrix: row-wise cumsum is several times slower on short rows.
    cumulative = np.triu(np.ones((m, m)))
    merged = np.concatenate([f.pdf @ cumulative, pa @ cumulative], axis=1)
    order = np.argsort(merged, axis=1, kind="stable")
    breakpoints = np.take(merged, order + np.arange(0, n * 2 * m, 2 * m)[:, None])
    mass = np.empty_like(breakpoints)
    mass[:, 0] = breakpoints[:, 0]
    np.subtract(breakpoints[:, 1:], breakpoints[:, :-1], out=mass[:, 1:])
    # Step indices stay in int8 (m <= 9, products <= 81) until they index: several times faster.
    from_f = (order < m).view(np.int8)
    cell_f = np.add.accumulate(from_f, axis=1, dtype=np.int8) - from_f
    cell_a = np.arange(2 * m, dtype=np.int8) - cell_f
    # Breakpoints past the last step of one CDF close empty intervals (both CDFs end at 1).
    np.minimum(cell_f, m - 1, out=cell_f)
    np.minimum(cell_a, m - 1, out=cell_a)

    positions = ((cell_f + 1) * (cell_a + 1)).astype(np.float64)
    cov = np.einsum("ij,ij->i", mass, positions) - f.mean * mean_a
    scale = f.std * a.std
    phi = np.divide(np.abs(c) * scale, cov, out=np.zeros_like(c), where=(c != 0) & (scale > 0) & (cov > 0))
    rest = 1.0 - phi
    log_rest = 0.5 * _log2_square(rest)

    rows = np.arange(0, n * m, m)[:, None]
    cell_f = cell_f + rows
    cell_a = cell_a + rows
    independent = (rest[:, None] * np.take(f.pdf, cell_f)) * np.take(pa, cell_a)
    joint = phi[:, None] * mass + independent
    # Entropy of the independent part over all m x m cells, then swap in the overlap cells' true
    # summands: -joint log2|joint| instead of -independent (log2 rest + log2 p_f + log2 p_a).
    ones = np.ones(2 * m)
    log_product = np.take(f.log_pdf, cell_f) + np.take(log_pa, cell_a)
    joint_entropy = (
        rest * (a.entropy + f.entropy - log_rest)
        + (independent * log_product) @ ones
        + log_rest * (independent @ ones)
        - 0.5 * ((joint * _log2_square(joint)) @ ones)
    )

    marginal = a.entropy + f.entropy
    mi = marginal - joint_entropy
    fmi = np.divide(2.0 * mi, marginal, out=np.zeros_like(mi), where=(mi != 0) & (marginal > 0))
    return np.where(same, 1.0, fmi)


class _WindowTable:
    """All ``window x window`` patches of a feature map, enumerated column by column.

    The map is stored transposed so that a run of consecutive patches comes from a contiguous band
    and each patch flattens row-major into MATLAB's column-major ``(:)`` order; the patch order does
    not matter for a mean. ``lo`` and ``flat`` (patch minimum, constant patch) are ``(N,)``.
    """

    def __init__(self, feature: np.ndarray, window: int) -> None:
        self.window = window
        self.columns = np.ascontiguousarray(feature.T)
        self.per_column = self.columns.shape[1] - window + 1
        kernel = np.ones((window, window), np.uint8)
        valid = (slice(0, self.columns.shape[0] - window + 1), slice(0, self.per_column))
        lo = cv2.erode(self.columns, kernel, anchor=(0, 0))[valid]
        self.flat = (cv2.dilate(self.columns, kernel, anchor=(0, 0))[valid] == lo).ravel()
        self.lo = lo.ravel()
        self.n_columns = lo.shape[0]

    def __len__(self) -> int:
        return self.lo.size

    def same_as(self, other: _WindowTable) -> np.ndarray:
        """``(N,)`` flags of patches identical in both maps."""
        equal = (self.columns == other.columns).astype(np.uint8)
        kernel = np.ones((self.window, self.window), np.uint8)
        return cv2.erode(equal, kernel, anchor=(0, 0))[: self.n_columns, : self.per_column].ravel() == 1

    def windows(self, first_column: int, stop_column: int) -> _Windows:
        """Stats of the patches starting in map columns ``[first_column, stop_column)``."""
        band = self.columns[first_column : stop_column + self.window - 1]
        raw = sliding_window_view(band, (self.window, self.window)).reshape(-1, self.window * self.window)
        rows = slice(first_column * self.per_column, stop_column * self.per_column)
        return _Windows.of(raw, self.lo[rows], self.flat[rows])


# Patches per block: small enough for the ``(N, 2 window^2)`` temporaries to stay in cache.
_FMI_BLOCK = 2048


def fmi_wavelet(fused: np.ndarray, vis: np.ndarray, ir: np.ndarray, window: int = 3) -> float:
    """FMI_w: mean over sliding windows of ``(FMI(V, F) + FMI(R, F)) / 2`` on dmey wavelet features.

    Haghighat & Razian 2014 "Fast-FMI" with feature 'wavelet' and ``window`` = 3 (their
    ``fmi(V, R, F, 'wavelet', 3)``; 2 is also accepted): the features are :func:`wavelet_feature`
    mosaics, every ``window x window`` position of the mosaic is scored by :func:`_fmi_windows`,
    and the scores are averaged. Normally in [0, 1] (the joint-pdf model is not a true pdf at the
    extremes); higher is better.
    """
    if window not in (2, 3):
        raise ValueError(f"window must be 2 or 3, got {window}")
    f, v, r = check_images(0.0, 255.0, fused=fused, vis=vis, ir=ir)
    fused_table, *source_tables = (_WindowTable(wavelet_feature(image), window) for image in (f, v, r))
    same = [table.same_as(fused_table) for table in source_tables]
    step = max(1, _FMI_BLOCK // fused_table.per_column)
    total = 0.0
    for first in range(0, fused_table.n_columns, step):
        stop = min(first + step, fused_table.n_columns)
        rows = slice(first * fused_table.per_column, stop * fused_table.per_column)
        fused_windows = fused_table.windows(first, stop)
        for table, same_windows in zip(source_tables, same, strict=True):
            total += float(_fmi_windows(table.windows(first, stop), fused_windows, same_windows[rows]).sum())
    return total / (2 * len(fused_table))


# ----------------------------------------------------------------------------------------------
# Edge- and perception-based metrics
# ----------------------------------------------------------------------------------------------

_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = _SOBEL_X.T.copy()


def _sobel_zero_padded(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel responses with zero padding (MATLAB ``filter2``/``conv2`` 'same'): the frame counts as an edge.

    ``conv2`` flips both kernels, negating both responses, which changes neither magnitude nor
    ``atan(Sy / Sx)``; so plain correlation serves both MATLAB codes.
    """
    return (
        cv2.filter2D(image, cv2.CV_64F, _SOBEL_X, borderType=cv2.BORDER_CONSTANT),
        cv2.filter2D(image, cv2.CV_64F, _SOBEL_Y, borderType=cv2.BORDER_CONSTANT),
    )


# Xydeas-Petrovic sigmoid parameters for edge strength (g) and orientation (a).
_QABF_TG, _QABF_KG, _QABF_DG = 0.9994, -15.0, 0.5
_QABF_TA, _QABF_KA, _QABF_DA = 0.9879, -22.0, 0.8


def _edge_strength_orientation(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx, sy = _sobel_zero_padded(image)
    angle = np.full_like(sx, math.pi / 2)
    nonzero = sx != 0
    angle[nonzero] = np.arctan(sy[nonzero] / sx[nonzero])
    return np.hypot(sx, sy), angle


def _edge_preservation(g_s: np.ndarray, a_s: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """Per-pixel ``Q^{SF} = Q_g Q_a`` of how well F preserves a source's edges."""
    strong, weak = np.maximum(g_s, g_f), np.minimum(g_s, g_f)
    ratio = np.divide(weak, strong, out=np.ones_like(strong), where=strong > 0)
    alignment = 1.0 - np.abs(a_s - a_f) / (math.pi / 2)
    q_g = _QABF_TG / (1.0 + np.exp(_QABF_KG * (ratio - _QABF_DG)))
    q_a = _QABF_TA / (1.0 + np.exp(_QABF_KA * (alignment - _QABF_DA)))
    return q_g * q_a


def qabf(fused: np.ndarray, vis: np.ndarray, ir: np.ndarray) -> float:
    """Qabf: gradient-based edge preservation (Xydeas & Petrovic 2000; VIFB ``metricsQabf``).

    Zero-padded 3x3 Sobel strength ``g`` and orientation ``atan(Sy / Sx)`` (pi/2 where Sx = 0);
    ``Q = sum(Q^{VF} g_V + Q^{RF} g_R) / sum(g_V + g_R)`` with sigmoids (Tg, kg, Dg) = (0.9994, -15,
    0.5), (Ta, ka, Da) = (0.9879, -22, 0.8). Deviation: the strength ratio is ``min/max`` and 1 where
    both strengths are equal; VIFB's code puts the raw strength there (a quirk that moves the score
    by < 1e-3). Higher is better; F = V = R scores ``Q_g(1) Q_a(1) ~= 0.9748``.
    """
    f, v, r = check_images(0.0, 255.0, fused=fused, vis=vis, ir=ir)
    g_f, a_f = _edge_strength_orientation(f)
    num = den = 0.0
    for source in (v, r):
        g_s, a_s = _edge_strength_orientation(source)
        num += float(np.sum(_edge_preservation(g_s, a_s, g_f, a_f) * g_s))
        den += float(g_s.sum())
    return num / den if den > 0 else float("nan")


_SSIM_WINDOW = _gaussian_1d(11, 1.5)
_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2


def _ssim_pair(x: np.ndarray, y: np.ndarray) -> float:
    mu_x, mu_y = _filter_valid(x, _SSIM_WINDOW), _filter_valid(y, _SSIM_WINDOW)
    var_x = _filter_valid(x * x, _SSIM_WINDOW) - mu_x * mu_x
    var_y = _filter_valid(y * y, _SSIM_WINDOW) - mu_y * mu_y
    cov = _filter_valid(x * y, _SSIM_WINDOW) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _SSIM_C1) * (2 * cov + _SSIM_C2)) / (
        (mu_x * mu_x + mu_y * mu_y + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
    )
    return float(ssim_map.mean())


def ssim(fused: np.ndarray, vis: np.ndarray, ir: np.ndarray) -> float:
    """SSIM: ``(SSIM(V, F) + SSIM(R, F)) / 2`` (Wang et al. 2004); higher is better.

    11x11 Gaussian window, sigma 1.5, 'valid' positions only, K = (0.01, 0.03), L = 255, as VIFB
    ``metricsSsim``. Deviation: VIFB reports the sum of the two terms; we report their mean so the
    score stays in [-1, 1]. Images need both sides >= 11.
    """
    f, v, r = check_images(0.0, 255.0, min_side=11, fused=fused, vis=vis, ir=ir)
    return (_ssim_pair(v, f) + _ssim_pair(r, f)) / 2.0


_VIF_NOISE_VAR = 2.0
_VIF_EPS = 1e-10


def _vif_pair_terms(ref: np.ndarray, dist: np.ndarray) -> tuple[float, float]:
    """Numerator and denominator of pixel-domain VIF summed over its four scales (LIVE ``vifp_mscale``)."""
    num = den = 0.0
    for scale in range(1, 5):
        size = 2 ** (4 - scale + 1) + 1
        window = _gaussian_1d(size, size / 5.0)
        if scale > 1:
            if min(ref.shape) < size:
                break
            ref = _filter_valid(ref, window)[::2, ::2]
            dist = _filter_valid(dist, window)[::2, ::2]
        if min(ref.shape) < size:
            break
        mu1, mu2 = _filter_valid(ref, window), _filter_valid(dist, window)
        s1 = np.maximum(_filter_valid(ref * ref, window) - mu1 * mu1, 0.0)
        s2 = np.maximum(_filter_valid(dist * dist, window) - mu2 * mu2, 0.0)
        s12 = _filter_valid(ref * dist, window) - mu1 * mu2
        # Gain g and residual variance sv of the model dist = g * ref + v, with LIVE's clean-ups.
        g = s12 / (s1 + _VIF_EPS)
        sv = s2 - g * s12
        flat_ref = s1 < _VIF_EPS
        g[flat_ref] = 0.0
        sv[flat_ref] = s2[flat_ref]
        s1[flat_ref] = 0.0
        flat_dist = s2 < _VIF_EPS
        g[flat_dist] = 0.0
        sv[flat_dist] = 0.0
        negative = g < 0
        sv[negative] = s2[negative]
        g[negative] = 0.0
        sv = np.maximum(sv, _VIF_EPS)
        num += float(np.log10(1.0 + g * g * s1 / (sv + _VIF_NOISE_VAR)).sum())
        den += float(np.log10(1.0 + s1 / _VIF_NOISE_VAR).sum())
    return num, den


def vif(fused: np.ndarray, vis: np.ndarray, ir: np.ndarray) -> float:
    """VIF: ``(VIF(V -> F) + VIF(R -> F)) / 2``, multi-scale pixel-domain VIF; higher is better.

    Sheikh & Bovik 2006 ("Image information and visual quality"), LIVE ``vifp_mscale``: four scales
    with Gaussian windows of 17, 9, 5, 3 taps (sigma = taps / 5), noise variance 2, each source as
    the reference and F as the distorted image. This is not Han et al.'s VIFF (the fusion-specific
    variant) that some fusion papers report. Evaluators that report ``VIF(V, F) + VIF(R, F)`` give
    twice this value: the project's RoadScene reference of 0.66 for Laplacian-pyramid fusion is that
    sum (this mean gives 0.33). Scales too small for their window are skipped; a source with no
    texture at all (zero denominator) gives NaN.
    """
    f, v, r = check_images(0.0, 255.0, min_side=17, fused=fused, vis=vis, ir=ir)
    scores = []
    for source in (v, r):
        num, den = _vif_pair_terms(source, f)
        scores.append(num / den if den > 0 else float("nan"))
    return (scores[0] + scores[1]) / 2.0


def _normalise_0_255(image: np.ndarray) -> np.ndarray:
    """Min-max stretch to integer levels 0..255 (Liu's ``normalize1``); a constant image maps to zeros."""
    lo, hi = image.min(), image.max()
    if hi == lo:
        return np.zeros_like(image)
    return np.floor((image - lo) / (hi - lo) * 255.0 + 0.5)


def _block_sums(values: np.ndarray, block: int) -> np.ndarray:
    """Sums over ``block x block`` tiles, the last partial tiles zero-padded (MATLAB ``blkproc``)."""
    h, w = values.shape
    padded = np.pad(values, ((0, -h % block), (0, -w % block)))
    return padded.reshape(padded.shape[0] // block, block, padded.shape[1] // block, block).sum(axis=(1, 3))


def _mannos_sakrison_csf(shape: tuple[int, int]) -> np.ndarray:
    """Mannos-Sakrison CSF on the ``rfft2`` grid of ``shape``, radial frequency in (cycles/image) / 4.

    Reproduces ``freqspace`` scaled by ``size / 8`` in Liu's ``metricChen`` code.
    """
    ky = np.fft.fftfreq(shape[0]) * shape[0] / 4.0
    kx = np.fft.rfftfreq(shape[1]) * shape[1] / 4.0
    radius = np.hypot(ky[:, None], kx[None, :])
    return 2.6 * (0.0192 + 0.144 * radius) * np.exp(-((0.144 * radius) ** 1.1))


def chen_varshney(
    fused: np.ndarray, vis: np.ndarray, ir: np.ndarray, window: int = 16, alpha: float = 5.0
) -> float:
    """Q_cv: Chen-Varshney perceptual distortion, lower is better (0 when F = V = R).

    Chen & Varshney 2007 as Liu's ``metricChen`` in VIFB ``metricsQcv``: each image is min-max
    stretched to integer levels 0..255; per ``window x window`` tile (partial tiles at the right and
    bottom are zero-padded), the saliency of source S is ``lambda_S = sum g_S^alpha`` over the tile's
    zero-padded Sobel magnitudes, and the distortion ``D_S`` is the tile mean of the square of
    ``S - F`` filtered by the Mannos-Sakrison CSF in the frequency domain. ``Q_cv = sum(lambda_V D_V + lambda_R D_R) /
    sum(lambda_V + lambda_R)``. ``alpha`` = 5 as in the VIFB file (it matches the project's RoadScene
    reference numbers; alpha = 1 roughly halves the score). NaN when neither source has an edge.
    """
    f, v, r = check_images(0.0, 255.0, fused=fused, vis=vis, ir=ir)
    f = _normalise_0_255(f)
    csf = _mannos_sakrison_csf(f.shape)
    num = den = 0.0
    for source in (v, r):
        s = _normalise_0_255(source)
        sx, sy = _sobel_zero_padded(s)
        saliency = _block_sums(np.hypot(sx, sy) ** alpha, window)
        filtered = np.fft.irfft2(np.fft.rfft2(s - f) * csf, s=f.shape)
        distortion = _block_sums(filtered * filtered, window) / (window * window)
        num += float(np.sum(saliency * distortion))
        den += float(saliency.sum())
    return num / den if den > 0 else float("nan")


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusionMetric:
    """One fusion metric: table key, direction, and ``compute(fused, vis, ir) -> float``."""

    key: str
    description: str
    higher_is_better: bool
    compute: Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def _fused_only(metric: Callable[[np.ndarray], float]) -> Callable[[np.ndarray, np.ndarray, np.ndarray], float]:
    def compute(fused: np.ndarray, vis: np.ndarray, ir: np.ndarray) -> float:
        return metric(fused)

    return compute


# Table 2 of the paper first (EI, CE, SF, FMI_w, Q_cv), then the usual VIFB extras.
FUSION_METRICS: dict[str, FusionMetric] = {
    m.key: m
    for m in (
        FusionMetric("EI", "edge intensity", True, _fused_only(edge_intensity)),
        FusionMetric("CE", "cross entropy to the sources", False, cross_entropy),
        FusionMetric("SF", "spatial frequency", True, _fused_only(spatial_frequency)),
        FusionMetric("FMI_w", "wavelet feature mutual information", True, fmi_wavelet),
        FusionMetric("Q_cv", "Chen-Varshney perceptual distortion", False, chen_varshney),
        FusionMetric("EN", "entropy (bits)", True, _fused_only(entropy)),
        FusionMetric("SD", "standard deviation", True, _fused_only(standard_deviation)),
        FusionMetric("MI", "mutual information with the sources (bits)", True, mutual_information),
        FusionMetric("Qabf", "gradient edge preservation", True, qabf),
        FusionMetric("SSIM", "mean SSIM to the sources", True, ssim),
        FusionMetric("VIF", "mean pixel-domain VIF of the sources", True, vif),
    )
}


def fusion_metrics(
    fused: np.ndarray, vis: np.ndarray, ir: np.ndarray, *, quantise: bool = True
) -> dict[str, float]:
    """Every metric of ``FUSION_METRICS`` for one fused image, keyed and ordered as the registry.

    Inputs: 2-D luminance ``(H, W)`` of one shape, values in [0, 255], both sides >= 17. With
    ``quantise`` (the default) all three are first truncated to integer grey levels, as saving a
    float fused image with ``astype(uint8)`` does: the project's RoadScene reference numbers were
    produced that way (with truncation every reference is met within 1%; unquantised float input
    moves FMI_w of the plain average by +10% and rounding moves its CE by +13%).
    """
    images = check_images(0.0, 255.0, min_side=17, fused=fused, vis=vis, ir=ir)
    if quantise:
        images = [_grey_levels(image).astype(np.float64) for image in images]
    return {key: metric.compute(*images) for key, metric in FUSION_METRICS.items()}
