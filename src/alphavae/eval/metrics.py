"""Pixel metrics (PSNR, SSIM) and alpha-matte metrics, vectorised over a batch.

Pixel metrics take RGB tensors ``(B, 3, H, W)`` in [0, 1] (the value range of the reference metric
library, pyiqa 0.1.x, which loads images with ``PIL.Image.convert("RGB")`` and ``to_tensor``).
Alpha metrics take alpha mattes ``(B, 1, H, W)`` in [0, 1] (not the [-1, 1] pixel convention: callers
convert with ``alphavae.io.to_unit``).

Every metric returns one value per image, shape ``(B,)``, float64, finite for every input in range,
including all-transparent (alpha = 0 everywhere) and all-opaque (alpha = 1) mattes, with two
exceptions that are NaN where the metric does not apply (:data:`NOT_APPLICABLE`): the leakage of an
image without fully transparent GT pixels and the edge-band error of an image without an edge band.
Reports turn that NaN into null, and averages skip it (``alphavae.eval.aggregate.mean_scores``).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

PSNR_EPS = 1e-8
"""Added to the MSE before the log, as pyiqa's ``psnr`` does: identical images score 80 dB, not inf."""

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""Y row of the RGB -> YIQ matrix pyiqa uses for ``test_y_channel`` (``color_space='yiq'``)."""

SSIM_WINDOW = 11
"""Side of the SSIM Gaussian window in px: SSIM needs images at least this large on both sides."""

SSIM_TILE = 128
"""Side in px of the SSIM map tiles computed at once (:func:`ssim`): bounds SSIM's working memory
(about 9 * 15 * 138^2 float32, 10 MB, for 9 backgrounds) and cost (2 * 138 multiply-adds per pixel
and moment instead of H + W); 64 to 256 px time alike on CPU."""

NOT_APPLICABLE = {
    "alpha_leakage": "the GT has no fully transparent pixel",
    "alpha_edge_mae": "the GT has no edge band (no alpha strictly between 0.05 and 0.95)",
}
"""Alpha metrics that are NaN (not applicable) for some mattes -> when, in words (used in report notes)."""

GRADIENT_SIGMA = 1.4
"""Gaussian-derivative scale (pixels) of the matting gradient error (Rhemann et al. 2009; the
Deep Image Matting evaluation code)."""


def _check_pair(x: torch.Tensor, y: torch.Tensor, channels: int) -> None:
    if x.shape != y.shape or x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(
            f"expected two tensors shaped (B, {channels}, H, W) of equal shape, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB, on all channels (pyiqa ``psnr`` defaults).

    ``10 * log10(1 / (mean((x - y)^2) + 1e-8))`` with data range 1, the mean over channels and
    pixels computed in float32 like pyiqa; identical images give 80 dB.

    Args:
        x, y: ``(B, C, H, W)`` float tensors in [0, 1].
    Returns:
        ``(B,)`` float64 PSNR in dB.
    Raises:
        ValueError: shapes differ or are not 4-D.
    Source: pyiqa ``archs/psnr_arch.py`` (``test_y_channel=False``, ``data_range=1``, ``eps=1e-8``).
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"psnr needs two equal (B, C, H, W) tensors, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = torch.mean((x.float() - y.float()) ** 2, dim=(1, 2, 3))
    return (10 * torch.log10(1.0 / (mse + PSNR_EPS))).double()


def gaussian_kernel_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian, shape ``(size,)`` float64; its outer product is MATLAB's
    ``fspecial('gaussian', size, sigma)`` (no tap falls below the eps cut for size 11, sigma 1.5)."""
    half = (size - 1) / 2.0
    taps = torch.arange(size, dtype=torch.float64) - half
    kernel = torch.exp(-(taps**2) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


@functools.lru_cache(maxsize=16)
def _band(length: int, size: int, sigma: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    """``(length - size + 1, length)`` matrix whose row i holds the Gaussian taps at columns i .. i+size-1."""
    kernel = gaussian_kernel_1d(size, sigma).to(dtype)
    band = torch.zeros(length - size + 1, length, dtype=dtype)
    for offset in range(size):
        band.diagonal(offset).fill_(kernel[offset])
    return band.to(device)


def _gaussian_valid(x: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """'Valid' separable Gaussian filtering of ``(B, C, H, W)`` as two banded matrix products (BLAS is
    several times faster than PyTorch's depthwise convolution on CPU); output ``(B, C, H-size+1, W-size+1)``.
    The products cost ``H + W`` multiply-adds per pixel: :func:`ssim` calls this on tiles."""
    rows = _band(x.shape[-2], size, sigma, x.dtype, str(x.device))
    cols = _band(x.shape[-1], size, sigma, x.dtype, str(x.device))
    return torch.matmul(torch.matmul(rows, x), cols.T)


def luma255(x: torch.Tensor) -> torch.Tensor:
    """Rounded luma in 0..255: ``round(255 * (0.299 R + 0.587 G + 0.114 B))``.

    Args:
        x: ``(B, 3, H, W)`` RGB in [0, 1].
    Returns:
        ``(B, 1, H, W)`` float32 integers in [0, 255].
    Source: pyiqa ``to_y_channel(img, 255, 'yiq')`` as used by its ``SSIM`` (MATLAB-style rounding).
    """
    w = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x.float() * w).sum(1, keepdim=True).mul(255.0).round()


def _tiles(length: int, tile: int) -> list[slice]:
    """Consecutive slices of at most ``tile`` covering ``range(length)``."""
    return [slice(start, min(start + tile, length)) for start in range(0, length, tile)]


def _ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float) -> torch.Tensor:
    """SSIM map of one block: ``(B, C, h, w)`` float32 in [0, data_range] -> ``(B, C, h - 10, w - 10)`` float32
    in [0, 1] ('valid' 11x11 window, contrast-structure term clamped at 0 as pyiqa's, both terms at 1)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    c = x.shape[1]
    # float32 on values centred at mid-range: the E[x^2] - E[x]^2 cancellation error stays far below
    # C2 (agreement with pyiqa's float64 within 1e-4, tested).
    x, y = x - data_range / 2, y - data_range / 2
    moments = _gaussian_valid(torch.cat([x, y, x * x, y * y, x * y], 1))
    mu_x, mu_y, xx, yy, xy = moments.split(c, dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    mu_x, mu_y = mu_x + data_range / 2, mu_y + data_range / 2
    # both terms are <= 1 in exact arithmetic; float32 rounding of near-equal flat blocks (a variance slightly
    # below 0) could lift them above it, so they are clamped to [0, 1].
    cs = ((2 * cov + c2) / (var_x + var_y + c2)).clamp(0, 1)
    lum = ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)).clamp(max=1)
    return lum * cs


def ssim(x: torch.Tensor, y: torch.Tensor, *, y_channel: bool, tile: int = SSIM_TILE) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004), 11x11 Gaussian window, sigma 1.5.

    ``y_channel=True`` reproduces pyiqa's default ``ssim`` metric: luma rounded to 0..255
    (:func:`luma255`), data range 255, 'valid' window, the contrast-structure term clamped
    at 0, mean over the map. ``y_channel=False`` is SSIM on the three RGB channels in [0, 1]
    (data range 1, no rounding; same window and clamp), averaged over channels and pixels (the clean
    protocol).
    Images smaller than :data:`SSIM_WINDOW` (11) px on a side raise (``score_pair`` leaves SSIM out for them).
    The map is computed in ``tile x tile`` px tiles (each from its input block plus the 10 px window
    overlap, so every map value is the whole-image one up to float rounding) and summed in float64: working
    memory is about ``B * 15 * (tile + 10)^2`` floats, whatever the image size.

    Args:
        x, y: ``(B, 3, H, W)`` float RGB in [0, 1].
        y_channel: score the rounded luma (reference) instead of RGB (clean).
        tile: side in px of the map tiles, >= 1 (default :data:`SSIM_TILE`).
    Returns:
        ``(B,)`` float64 SSIM in [0, 1].
    Raises:
        ValueError: shapes differ, are not RGB, or a side is below 11 px.
    Source: pyiqa ``archs/ssim_arch.py`` (``downsample=False``), which works in float64; here float32
    on centred values with the separable window as banded matrix products (agreement within 1e-4, tested).
    """
    _check_pair(x, y, 3)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} px, got "
                         f"{x.shape[-1]}x{x.shape[-2]} (width x height)")
    if y_channel:
        x, y, data_range = luma255(x), luma255(y), 255.0
    else:
        x, y, data_range = x.float(), y.float(), 1.0
    halo = SSIM_WINDOW - 1
    height, width = x.shape[-2] - halo, x.shape[-1] - halo  # size of the SSIM map
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for rows in _tiles(height, tile):
        for cols in _tiles(width, tile):
            block = (..., slice(rows.start, rows.stop + halo), slice(cols.start, cols.stop + halo))
            total += _ssim_map(x[block], y[block], data_range).double().sum(dim=(1, 2, 3))
    return total / (x.shape[1] * height * width)


def _check_alpha(gt: torch.Tensor, pred: torch.Tensor) -> None:
    _check_pair(gt, pred, 1)


def alpha_mae(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean absolute alpha error per image, ``(B,)`` float64 in [0, 1]; inputs ``(B, 1, H, W)`` in [0, 1].

    Raises:
        ValueError: shapes differ or are not ``(B, 1, H, W)``.
    """
    _check_alpha(gt, pred)
    return (gt.double() - pred.double()).abs().mean(dim=(1, 2, 3))


def alpha_mse(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean squared alpha error per image, ``(B,)`` float64 in [0, 1]; inputs ``(B, 1, H, W)`` in [0, 1].

    Raises:
        ValueError: shapes differ or are not ``(B, 1, H, W)``.
    """
    _check_alpha(gt, pred)
    return ((gt.double() - pred.double()) ** 2).mean(dim=(1, 2, 3))


def alpha_sad(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Sum of absolute alpha differences divided by 1000, per image (``(B,)`` float64, >= 0).

    The /1000 follows the matting literature's reporting convention (Rhemann et al. 2009; Deep Image
    Matting), with alpha in [0, 1]; unlike MAE it grows with the image area.
    Inputs ``(B, 1, H, W)`` in [0, 1].

    Raises:
        ValueError: shapes differ or are not ``(B, 1, H, W)``.
    """
    _check_alpha(gt, pred)
    return (gt.double() - pred.double()).abs().sum(dim=(1, 2, 3)) / 1000.0


def _correlate_valid(x: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """'Valid' 1-D correlation along ``dim``: ``out[i] = sum_k taps[k] * x[i + k]``; that side shrinks by
    ``len(taps) - 1``. Shifted multiply-adds: one output-sized buffer, no im2col copy per tap."""
    length = x.shape[dim] - len(taps) + 1
    out = x.narrow(dim, 0, length) * taps[0].item()
    for k in range(1, len(taps)):
        out.add_(x.narrow(dim, k, length), alpha=taps[k].item())
    return out


def _gradient_magnitude(alpha: torch.Tensor, sigma: float) -> torch.Tensor:
    """Magnitude of the Gaussian-derivative gradient (scale ``sigma`` px) of ``(B, 1, H, W)``, replicate-padded;
    same shape and dtype. The 2-D kernels are separable (Gaussian across, derivative along), filtered as
    two 1-D passes each."""
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    gauss = torch.exp(-(taps**2) / (2 * sigma**2))
    gauss = gauss / gauss.sum()
    deriv = -taps / sigma**2 * gauss
    deriv = (deriv / deriv.mul(taps).abs().sum()).flip(0)  # unit response to a unit-slope ramp; flipped: correlation
    padded = F.pad(alpha, (radius,) * 4, mode="replicate")
    gx = _correlate_valid(_correlate_valid(padded, gauss, -2), deriv, -1)
    gy = _correlate_valid(_correlate_valid(padded, deriv, -2), gauss, -1)
    return gx.square_().add_(gy.square_()).sqrt_()


def alpha_gradient_error(gt: torch.Tensor, pred: torch.Tensor, sigma: float = GRADIENT_SIGMA) -> torch.Tensor:
    """Matting gradient error: ``sum((|grad pred| - |grad gt|)^2) / 1000`` per image.

    Gradients are Gaussian first derivatives at scale ``sigma`` (1.4 px, the matting benchmark
    standard), normalised so a ramp of slope 1 per pixel has magnitude 1; borders replicate-padded;
    alpha in [0, 1]. Constant mattes (all transparent, all opaque) have zero gradient.

    Args:
        gt, pred: ``(B, 1, H, W)`` alpha in [0, 1].
        sigma: derivative scale in pixels.
    Returns:
        ``(B,)`` float64, >= 0.
    Raises:
        ValueError: shapes differ or are not ``(B, 1, H, W)``.
    Source: Rhemann et al., CVPR 2009 (alphamatting.com); Deep Image Matting evaluation code.
    """
    _check_alpha(gt, pred)
    g = _gradient_magnitude(gt.double(), sigma)
    p = _gradient_magnitude(pred.double(), sigma)
    return ((p - g) ** 2).sum(dim=(1, 2, 3)) / 1000.0


def soft_iou(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Soft (fuzzy) IoU ``sum(min(gt, pred)) / sum(max(gt, pred))`` per image, ``(B,)`` float64 in [0, 1].

    Two all-transparent mattes (empty union) score 1.0 (perfect agreement), never NaN.
    Inputs ``(B, 1, H, W)`` alpha in [0, 1].

    Raises:
        ValueError: shapes differ or are not ``(B, 1, H, W)``.
    """
    _check_alpha(gt, pred)
    gt, pred = gt.double(), pred.double()
    inter = torch.minimum(gt, pred).sum(dim=(1, 2, 3))
    union = torch.maximum(gt, pred).sum(dim=(1, 2, 3))
    return torch.where(union > 0, inter / union.clamp_min(1e-300), torch.ones_like(union))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` per image; NaN (not applicable) where the mask is empty."""
    count = mask.sum(dim=(1, 2, 3))
    total = (values * mask).sum(dim=(1, 2, 3))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


def alpha_leakage(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean predicted alpha over pixels whose ground-truth alpha is exactly 0 (``(B,)`` float64 in [0, 1]).

    Measures content leaking into the transparent background. NaN (not applicable) for images
    without fully transparent GT pixels (e.g. all-opaque): there is no background to leak into, and
    a 0 would flatter the average. Inputs ``(B, 1, H, W)`` alpha in [0, 1].

    Raises:
        ValueError: shapes differ or are not ``(B, 1, H, W)``.
    """
    _check_alpha(gt, pred)
    return _masked_mean(pred.double(), (gt == 0).double())


def edge_band(gt: torch.Tensor, low: float = 0.05, high: float = 0.95, radius: int = 3) -> torch.Tensor:
    """Edge band of a matte: pixels with ``low < alpha < high``, dilated by ``radius`` px (square).

    Args:
        gt: ``(B, 1, H, W)`` float alpha in [0, 1] (not shape-checked).
        low, high: open interval of alpha values that count as soft.
        radius: dilation radius in px (``2 * radius + 1`` square max-pool); <= 0 means no dilation.
    Returns:
        ``(B, 1, H, W)`` float64 mask of 0/1.
    """
    soft = ((gt > low) & (gt < high)).double()
    if radius <= 0:
        return soft
    return F.max_pool2d(soft, 2 * radius + 1, stride=1, padding=radius)


def edge_band_error(gt: torch.Tensor, pred: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Mean absolute alpha error inside the edge band (:func:`edge_band`), ``(B,)`` float64 in [0, 1].

    Pitfall 7 (halos on soft edges) is reported here separately from the whole-image error.
    Images without soft pixels (binary or constant mattes) have an empty band: NaN (not applicable),
    whatever the prediction (a 0 would score a completely wrong prediction as perfect).
    Inputs ``(B, 1, H, W)`` alpha in [0, 1].

    Raises:
        ValueError: shapes differ or are not ``(B, 1, H, W)``.
    """
    _check_alpha(gt, pred)
    return _masked_mean((gt.double() - pred.double()).abs(), edge_band(gt.double(), radius=radius))


ALPHA_METRICS = {
    "alpha_mae": alpha_mae,
    "alpha_mse": alpha_mse,
    "alpha_sad": alpha_sad,
    "alpha_grad": alpha_gradient_error,
    "alpha_iou": soft_iou,
    "alpha_leakage": alpha_leakage,
    "alpha_edge_mae": edge_band_error,
}
"""Name -> function for every alpha metric; each maps ``(gt, pred)`` ``(B, 1, H, W)`` in [0, 1] to ``(B,)``
(NaN where not applicable: :data:`NOT_APPLICABLE`)."""


def alpha_metrics(gt: torch.Tensor, pred: torch.Tensor) -> dict[str, torch.Tensor]:
    """All :data:`ALPHA_METRICS` for a batch of mattes ``(B, 1, H, W)`` in [0, 1]; name -> ``(B,)`` float64,
    NaN for the :data:`NOT_APPLICABLE` metrics where they do not apply.

    Raises:
        ValueError: shapes differ or are not ``(B, 1, H, W)``.
    """
    return {name: fn(gt, pred) for name, fn in ALPHA_METRICS.items()}
