"""No-reference fusion-quality metrics for infrared-visible fusion (Table 2 of the paper), numpy/OpenCV only.

Conventions:

* Every image is 2-D luminance ``(H, W)`` on the 8-bit scale: any real dtype, values in [0, 255]
  (fused ``F``, visible ``V``, infrared ``R``, all of one shape). Pass ``255 * y`` for networks'
  [0, 1] output; histogram-based metrics round to the nearest grey level first.
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


def _grey_levels(image: np.ndarray) -> np.ndarray:
    """Integer grey levels 0..255 (round half up, as MATLAB's ``round`` on non-negative values)."""
    return np.clip(np.floor(image + 0.5), 0, GREY_LEVELS - 1).astype(np.intp)


def _histogram(levels: np.ndarray) -> np.ndarray:
    return np.bincount(levels.ravel(), minlength=GREY_LEVELS) / levels.size


def _entropy_bits(p: np.ndarray, axis: int | tuple[int, ...] | None = None) -> np.ndarray:
    """``-sum p log2|p|`` over ``axis``, zero cells contributing 0.

    ``|p|`` reproduces MATLAB's ``real(-p .* log2(p))`` for the slightly negative cells that the
    fast-FMI joint-pdf model can produce.
    """
    magnitude = np.abs(p)
    logs = np.log2(magnitude, out=np.zeros_like(magnitude), where=magnitude > 0)
    return -(p * logs).sum(axis=axis)


def _filter(image: np.ndarray, kernel: np.ndarray, border: int) -> np.ndarray:
    """2-D correlation (MATLAB ``filter2``/``imfilter``), output the same size as ``image``."""
    return cv2.filter2D(image, cv2.CV_64F, kernel, borderType=border)


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
    ``metricsCross_entropy``, which averages the V->F and R->F terms).
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
_DMEY_DEC_LO = _DMEY_REC_LO[::-1].copy()
# Orthogonal filter bank (MATLAB orthfilt): dec_hi[k] = (-1)^(k+1) rec_lo[k].
_DMEY_DEC_HI = _DMEY_REC_LO * -((-1.0) ** np.arange(_DMEY_REC_LO.size))


def _analysis_1d(x: np.ndarray, dec: np.ndarray, axis: int) -> np.ndarray:
    """One DWT analysis branch along ``axis``: filter then keep odd samples (MATLAB ``dwt`` 'sym' mode).

    ``out[k] = sum_t dec[t] x[2k + 1 - t]`` with half-sample symmetric extension; the output has
    ``floor((n + L - 1) / 2)`` samples for a length-``n`` axis and ``L`` taps.
    """
    taps = dec.size
    pad = [(0, 0), (0, 0)]
    pad[axis] = (taps - 1, taps - 1)
    padded = np.pad(x, pad, mode="symmetric")
    windows = sliding_window_view(padded, taps, axis=axis)
    index = [slice(None), slice(None)]
    index[axis] = slice(1, None, 2)
    return windows[tuple(index)] @ dec[::-1]


def wavelet_feature(image: np.ndarray) -> np.ndarray:
    """Single-level dmey DWT mosaic ``[cA, cH; cV, cD]`` rescaled to [0, 1] (the fast-FMI 'wavelet' feature).

    Matches MATLAB ``dwt2(I, 'dmey')`` (symmetric extension; cH is high-pass along rows). Each
    sub-band has ``floor((n + 61) / 2)`` samples per axis. A constant mosaic maps to all ones.
    """
    low = _analysis_1d(image, _DMEY_DEC_LO, axis=1)
    high = _analysis_1d(image, _DMEY_DEC_HI, axis=1)
    mosaic = np.block(
        [
            [_analysis_1d(low, _DMEY_DEC_LO, axis=0), _analysis_1d(low, _DMEY_DEC_HI, axis=0)],
            [_analysis_1d(high, _DMEY_DEC_LO, axis=0), _analysis_1d(high, _DMEY_DEC_HI, axis=0)],
        ]
    )
    lo, hi = mosaic.min(), mosaic.max()
    return np.ones_like(mosaic) if hi == lo else (mosaic - lo) / (hi - lo)


def _window_pdfs(windows: np.ndarray) -> np.ndarray:
    """Each row min-max normalised then divided by its sum; a constant row becomes uniform."""
    lo = windows.min(axis=1, keepdims=True)
    span = windows.max(axis=1, keepdims=True) - lo
    flat = span == 0
    norm = np.where(flat, 1.0, (windows - lo) / np.where(flat, 1.0, span))
    return norm / norm.sum(axis=1, keepdims=True)


_POSITIONS = np.arange(1.0, 10.0)


def _index_std(pdf: np.ndarray) -> np.ndarray:
    """Population standard deviation of the window position (1..l) distributed as ``pdf``."""
    mean = pdf @ _POSITIONS[: pdf.shape[1]]
    second = pdf @ np.square(_POSITIONS[: pdf.shape[1]])
    return np.sqrt(np.maximum(second - mean * mean, 0.0))


def _fmi_windows(a: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Normalised feature MI of each pair of rows of ``a`` and ``f`` (``(N, l)``, l <= 9); returns ``(N,)``.

    Haghighat & Razian 2014 (fast-FMI): each window becomes a pdf over its l positions (column-major
    order); the joint pdf is Nelsen's mixture ``phi * H + (1 - phi) * p_f p_a^T`` where ``H`` is the
    Frechet upper bound (comonotone coupling) when the Pearson correlation ``c`` of the two pdfs is
    >= 0 and the lower bound (countermonotone) when ``c < 0``, and ``phi = c / corr(H)``. FMI =
    ``2 MI / (H_a + H_f)``; identical windows score 1, ``MI == 0`` scores 0.

    The lower bound is evaluated as the upper bound with ``a``'s positions reversed (same entropy,
    ``corr`` negated), so each window needs one ``l x l`` coupling, built as interval overlaps of the
    two CDFs instead of MATLAB's second differences of ``min(F_i, A_j)`` (equal up to rounding).
    """
    same = np.all(a == f, axis=1)
    pa, pf = _window_pdfs(a), _window_pdfs(f)
    da = pa - pa.mean(axis=1, keepdims=True)
    df = pf - pf.mean(axis=1, keepdims=True)
    num = np.einsum("ij,ij->i", da, df)
    den = np.sqrt(np.einsum("ij,ij->i", da, da) * np.einsum("ij,ij->i", df, df))
    c = np.divide(num, den, out=np.zeros_like(num), where=num != 0)
    sd = _index_std(pa) * _index_std(pf)

    pa = np.where((c < 0)[:, None], pa[:, ::-1], pa)
    ca, cf = np.cumsum(pa, axis=1), np.cumsum(pf, axis=1)
    upper = np.minimum(cf[:, :, None], ca[:, None, :])
    n, l = pa.shape
    cov = upper.sum(axis=(1, 2)) - cf.sum(axis=1) * ca.sum(axis=1)
    usable = (c != 0) & (sd > 0) & (cov != 0)
    phi = np.divide(np.abs(c) * sd, cov, out=np.zeros_like(c), where=usable)

    zero = np.zeros((n, 1))
    ca_prev = np.concatenate([zero, ca[:, :-1]], axis=1)
    cf_prev = np.concatenate([zero, cf[:, :-1]], axis=1)
    joint = upper
    joint -= np.maximum(cf_prev[:, :, None], ca_prev[:, None, :])
    np.maximum(joint, 0.0, out=joint)
    joint *= phi[:, None, None]
    joint += ((1.0 - phi)[:, None] * pf)[:, :, None] * pa[:, None, :]

    h_a, h_f = _entropy_bits(pa, axis=1), _entropy_bits(pf, axis=1)
    mi = h_a + h_f - _entropy_bits(joint.reshape(n, l * l), axis=1)
    fmi = np.divide(2.0 * mi, h_a + h_f, out=np.zeros_like(mi), where=(mi != 0) & (h_a + h_f > 0))
    return np.where(same, 1.0, fmi)


def _column_major_windows(feature: np.ndarray, window: int) -> np.ndarray:
    """All ``window x window`` patches as rows ``(N, window^2)``, each in MATLAB's ``(:)`` order."""
    patches = sliding_window_view(feature, (window, window)).transpose(0, 1, 3, 2)
    return patches.reshape(-1, window * window)


_FMI_CHUNK = 16384


def fmi_wavelet(fused: np.ndarray, vis: np.ndarray, ir: np.ndarray, window: int = 3) -> float:
    """FMI_w: mean over sliding windows of ``(FMI(V, F) + FMI(R, F)) / 2`` on dmey wavelet features.

    Haghighat & Razian 2014 "Fast-FMI" with feature 'wavelet' and ``window`` = 3 (their
    ``fmi(V, R, F, 'wavelet', 3)``): the features are :func:`wavelet_feature` mosaics, every
    ``window x window`` position of the mosaic is scored by :func:`_fmi_windows`, and the scores are
    averaged. In [0, 1]; higher is better.
    """
    if window < 2 or window > 3:
        # Windows larger than 3x3 would need a longer position table; the metric is defined for 3.
        raise ValueError(f"window must be 2 or 3, got {window}")
    f, v, r = check_images(0.0, 255.0, fused=fused, vis=vis, ir=ir)
    feat_f = _column_major_windows(wavelet_feature(f), window)
    total = 0.0
    for source in (v, r):
        feat_s = _column_major_windows(wavelet_feature(source), window)
        for start in range(0, feat_f.shape[0], _FMI_CHUNK):
            stop = start + _FMI_CHUNK
            total += float(_fmi_windows(feat_s[start:stop], feat_f[start:stop]).sum())
    return total / (2 * feat_f.shape[0])


# ----------------------------------------------------------------------------------------------
# Edge- and perception-based metrics
# ----------------------------------------------------------------------------------------------

_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = _SOBEL_X.T.copy()


def _sobel_zero_padded(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel responses with zero padding (MATLAB ``filter2``/``conv2`` 'same'): the frame counts as an edge."""
    return (
        _filter(image, _SOBEL_X, cv2.BORDER_CONSTANT),
        _filter(image, _SOBEL_Y, cv2.BORDER_CONSTANT),
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


def _edge_preservation(
    g_s: np.ndarray, a_s: np.ndarray, g_f: np.ndarray, a_f: np.ndarray
) -> np.ndarray:
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
    variant) that some fusion papers report. Scales too small for their window are skipped; a
    source with no texture at all (zero denominator) gives NaN.
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
    fused: np.ndarray, vis: np.ndarray, ir: np.ndarray, window: int = 16, alpha: float = 1.0
) -> float:
    """Q_cv: Chen-Varshney perceptual distortion, lower is better (0 when F = V = R).

    Chen & Varshney 2007 as Liu's ``metricChen`` in VIFB ``metricsQcv``: each image is min-max
    stretched to integer levels 0..255; per ``window x window`` tile (partial tiles at the right and
    bottom are zero-padded), the saliency of source S is ``lambda_S = sum g_S^alpha`` over the tile's
    zero-padded Sobel magnitudes, and the distortion ``D_S`` is the tile mean of ``(S - F)`` filtered
    by the Mannos-Sakrison CSF in the frequency domain. ``Q_cv = sum(lambda_V D_V + lambda_R D_R) /
    sum(lambda_V + lambda_R)``. ``alpha`` = 1 is the project's calibration (the VIFB file sets 5);
    NaN when neither source has an edge.
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


def fusion_metrics(fused: np.ndarray, vis: np.ndarray, ir: np.ndarray) -> dict[str, float]:
    """Every metric of ``FUSION_METRICS`` for one fused image, keyed and ordered as the registry.

    Inputs: 2-D luminance ``(H, W)`` of one shape, values in [0, 255], both sides >= 17.
    """
    check_images(0.0, 255.0, min_side=17, fused=fused, vis=vis, ir=ir)
    return {key: metric.compute(fused, vis, ir) for key, metric in FUSION_METRICS.items()}
