"""The two ALPHA evaluation protocols and the per-image scorer.

``reference`` reproduces the AlphaVAE reference scripts' numerics: optional short-side bilinear
resize + centre crop of the ground truth, predictions rounded to 8 bits (as saved PNGs are), each
composite rounded to uint8 and JPEG-encoded with Pillow's default quality (in memory), pyiqa's metric
defaults (PSNR on RGB, SSIM on rounded luma), and the raw ``rgba`` group, which scores the colour
channels of the RGBA files as a loader that drops alpha sees them (alpha-blind: hidden colour under
alpha = 0 counts; kept only for comparison with published numbers).

``clean`` scores float composites (no rounding, no JPEG), SSIM on RGB, and adds the alpha metrics of
:mod:`alphavae.eval.metrics`.

Source: AlphaVAE (arXiv 2507.09308) Sec. 5 and its public evaluation scripts; pyiqa 0.1.x defaults.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from alphavae.eval import metrics
from alphavae.eval.backgrounds import BACKGROUND_NAMES, CHECKERBOARD, composites, jpeg_roundtrip, quantise
from alphavae.eval.networks import LPIPS_MIN_SIZE, Networks, inception_features, lpips_distance
from alphavae.io import DEFAULT_MAX_PIXELS, alpha_unit, from_unit, resize_short_side, to_unit

RGBA_GROUP = "rgba"
"""Group name of the raw, alpha-blind score (colour channels of the RGBA file, alpha dropped)."""

ALPHA_GROUP = "alpha"
"""Group name of the alpha-matte metrics (clean protocol)."""

VIEW_PIXELS = 2**24
"""Most pixels per side (GT, prediction) that :func:`score_pair` composites and scores in one batch: 2^24 px
(one 4096x4096 image, 200 MB of float32 RGB); larger batches only add memory, smaller ones lose little speed."""


@dataclass(frozen=True)
class Protocol:
    """Settings of one evaluation protocol.

    Attributes:
        name: ``"reference"``, ``"clean"`` (:func:`make_protocol`) or ``"t2i"`` (generation reports).
        jpeg: round composites to uint8 and JPEG round-trip them (Pillow default quality 75).
        ssim_y: SSIM on rounded luma (pyiqa default) instead of RGB.
        raw_group: also score the alpha-blind ``rgba`` group.
        alpha_metrics: also compute the alpha-matte metrics.
        backgrounds: background names (the 9 canonical colours, optionally ``"checkerboard"``).
        resize: short side in px for the GT's bilinear resize + centre crop to a square, or None.
    """

    name: str
    jpeg: bool
    ssim_y: bool
    raw_group: bool
    alpha_metrics: bool
    backgrounds: tuple[str, ...] = BACKGROUND_NAMES
    resize: int | None = None

    def as_dict(self) -> dict:
        """Plain-dict form for reports."""
        return asdict(self)


def make_protocol(name: str, *, resize: int | None = None, checkerboard: bool = False) -> Protocol:
    """Build the ``reference`` or ``clean`` protocol.

    Args:
        name: ``"reference"`` or ``"clean"``.
        resize: optional short side (px, >= 1) for the GT resize + centre crop; ``resize x resize`` may
            not exceed ``alphavae.io.DEFAULT_MAX_PIXELS`` (8192 x 8192), the largest image loaded.
        checkerboard: add the checkerboard background (``alphavae.io.checkerboard``) to the 9 colours.
    Raises:
        ValueError: unknown name or bad ``resize`` (below 1, or too large).
    """
    if resize is not None and resize < 1:
        raise ValueError(f"resize must be >= 1 px, got {resize}")
    if resize is not None and resize * resize > DEFAULT_MAX_PIXELS:
        raise ValueError(f"resize {resize} px is too large: a {resize}x{resize} image has more than "
                         f"{DEFAULT_MAX_PIXELS} pixels (the limit for loaded images, 8192x8192)")
    backgrounds = BACKGROUND_NAMES + ((CHECKERBOARD,) if checkerboard else ())
    if name == "reference":
        return Protocol(name, True, True, True, False, backgrounds, resize)
    if name == "clean":
        return Protocol(name, False, False, False, True, backgrounds, resize)
    raise ValueError(f"unknown protocol {name!r}; use 'reference' or 'clean'")


def centre_crop(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Central ``size x size`` window of an image or batch; offsets round down.

    Args:
        pixels: ``(..., H, W)``, any values (here straight RGBA in [-1, 1]); both sides >= ``size``.
        size: side of the window in pixels.
    Returns:
        ``(..., size, size)``, a view of ``pixels`` (values unchanged).
    Raises:
        ValueError: ``H`` or ``W`` is smaller than ``size``.
    """
    h, w = pixels.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"cannot centre-crop {h}x{w} to {size}x{size}")
    top, left = (h - size) // 2, (w - size) // 2
    return pixels[..., top : top + size, left : left + size]


def prepare_gt(pixels: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """Apply the protocol's GT preprocessing: bilinear short-side resize + centre crop when ``resize`` is set.

    Args:
        pixels: ``(4, H, W)`` or ``(B, 4, H, W)`` straight RGBA in [-1, 1].
    Returns:
        Straight RGBA in [-1, 1], ``resize x resize`` or unchanged. Resampling is premultiplied
        (``alphavae.io.resize_short_side``).
    Raises:
        ValueError: the image resized to that short side (before the crop) would have more than
            ``alphavae.io.DEFAULT_MAX_PIXELS`` pixels (a very long, thin image); gives both sizes.
        TypeError, ValueError: with ``resize`` set, ``pixels`` is not float RGBA (``alphavae.io.check_pixels``).
    """
    if protocol.resize is None:
        return pixels
    height, width = pixels.shape[-2:]
    scale = protocol.resize / min(height, width)
    if round(height * scale) * round(width * scale) > DEFAULT_MAX_PIXELS:
        raise ValueError(f"cannot resize {width}x{height} (width x height) to a short side of {protocol.resize} "
                         f"px: {round(width * scale)}x{round(height * scale)} is more than {DEFAULT_MAX_PIXELS} pixels")
    return centre_crop(resize_short_side(pixels, protocol.resize, mode="bilinear"), protocol.resize)


def round_to_8bit(pixels: torch.Tensor) -> torch.Tensor:
    """Round straight RGBA in [-1, 1] to the 8-bit grid (what saving a PNG does); same shape and range."""
    return from_unit(quantise(to_unit(pixels)).float() / 255.0)


@dataclass
class ImageScore:
    """Scores of one image pair.

    Attributes:
        groups: group name (a background, ``rgba``, ``alpha``) -> metric name -> value, None where the
            metric does not apply to this image (:func:`score_pair`).
        features: group -> ``(gt, pred)`` Inception features, each ``(1, 2048)`` (for FID; not reported).
    """

    groups: dict[str, dict[str, float | None]] = field(default_factory=dict)
    features: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _view(pixels: torch.Tensor, name: str, protocol: Protocol) -> torch.Tensor:
    """The ``(3, H, W)`` [0, 1] image scored for group ``name`` (a background or :data:`RGBA_GROUP`) of one
    ``(4, H, W)`` straight RGBA image in [-1, 1]: the composite (uint8 + JPEG round trip with ``jpeg``) or the
    raw colour channels (uint8 with ``jpeg``, no JPEG)."""
    if name == RGBA_GROUP:
        rgb = to_unit(pixels[:3]).clamp(0, 1)
        return quantise(rgb).float() / 255.0 if protocol.jpeg else rgb
    rgb = composites(pixels[None], (name,))[0]  # (1, 3, H, W)
    return jpeg_roundtrip(quantise(rgb))[0].float() / 255.0 if protocol.jpeg else rgb[0]


def _views(gt: torch.Tensor, pred: torch.Tensor, names: list[str],
           protocol: Protocol) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(K, 3, H, W)`` [0, 1] images scored for the K groups ``names`` (GT side, prediction side)."""
    return tuple(torch.stack([_view(pixels, name, protocol) for name in names]) for pixels in (gt, pred))


def _score_views(gt: torch.Tensor, pred: torch.Tensor, names: list[str], protocol: Protocol,
                 networks: Networks) -> ImageScore:
    """Pixel and network scores of the groups ``names`` (all scored as one batch); see :func:`score_pair`."""
    x, y = _views(gt, pred, names, protocol)
    side = min(gt.shape[-2:])
    values = {"psnr": metrics.psnr(y, x),
              "ssim": metrics.ssim(y, x, y_channel=protocol.ssim_y) if side >= metrics.SSIM_WINDOW else None}
    if networks.lpips is not None:
        values["lpips"] = lpips_distance(networks.lpips, y, x) if side >= LPIPS_MIN_SIZE else None
    if networks.aesthetic is not None:
        values["input_laion_score"] = networks.aesthetic(quantise(x))
        values["output_laion_score"] = networks.aesthetic(quantise(y))
    score = ImageScore({name: {m: None if v is None else float(v[i]) for m, v in values.items()}
                        for i, name in enumerate(names)})
    if networks.inception is not None:
        feats = inception_features(networks.inception, quantise(torch.cat([x, y])))
        k = len(names)
        score.features = {name: (feats[i : i + 1], feats[k + i : k + i + 1]) for i, name in enumerate(names)}
    return score


def score_pair(gt: torch.Tensor, pred: torch.Tensor, protocol: Protocol, networks: Networks) -> ImageScore:
    """Score one prediction against its ground truth under ``protocol``.

    Any image size is scored (up to JPEG's :data:`~alphavae.eval.backgrounds.JPEG_MAX_SIDE` px a side under a
    protocol with ``jpeg``, the reference one). Metrics that do not apply to an image are None: ``ssim`` below 11 px on
    a side (``metrics.SSIM_WINDOW``), ``lpips`` below 31 px (``networks.LPIPS_MIN_SIZE``), and the
    alpha metrics of ``metrics.NOT_APPLICABLE`` (leakage without fully transparent GT pixels, edge-band
    error without an edge band). Averages skip None (``alphavae.eval.aggregate.mean_scores``).
    The groups are composited and scored in batches of at most :data:`VIEW_PIXELS` pixels per side (the 9
    backgrounds at once up to 1365x1365 px, one at a time from 2897x2897 px): memory does not grow with
    their number.

    Args:
        gt, pred: ``(4, H, W)`` straight RGBA in [-1, 1], same size (``gt`` already through :func:`prepare_gt`).
        protocol: from :func:`make_protocol`; sets the backgrounds (one group each), 8-bit rounding of
            ``pred`` and JPEG round trip of the composites (``jpeg``), luma vs RGB SSIM (``ssim_y``), the
            alpha-blind ``rgba`` group (``raw_group``) and the ``alpha`` group (``alpha_metrics``).
        networks: optional LPIPS / Inception / aesthetic networks (None members are skipped).
    Returns:
        :class:`ImageScore` with per-group ``psnr`` (dB), ``ssim`` or None (and ``lpips`` or None,
        ``input_laion_score``, ``output_laion_score`` when the networks are loaded; Inception features in
        ``features``), plus the ``rgba`` group (``reference``) or the ``alpha`` group (``clean``).
    Raises:
        ValueError: shapes differ or are not ``(4, H, W)``, or a side exceeds JPEG's limit under a ``jpeg``
            protocol (:func:`~alphavae.eval.backgrounds.jpeg_roundtrip`).
    """
    if gt.shape != pred.shape or gt.ndim != 3 or gt.shape[0] != 4:
        raise ValueError(f"score_pair needs two (4, H, W) images of one size, got {tuple(gt.shape)} and {tuple(pred.shape)}")
    if protocol.jpeg:
        pred = round_to_8bit(pred)
    gt, pred = gt.float(), pred.float()
    names = list(protocol.backgrounds) + ([RGBA_GROUP] if protocol.raw_group else [])
    batch = max(1, VIEW_PIXELS // (gt.shape[-2] * gt.shape[-1]))
    score = ImageScore()
    for start in range(0, len(names), batch):
        part = _score_views(gt, pred, names[start : start + batch], protocol, networks)
        score.groups.update(part.groups)
        score.features.update(part.features)
    if protocol.alpha_metrics:
        alpha = metrics.alpha_metrics(alpha_unit(gt[None]), alpha_unit(pred[None]))
        score.groups[ALPHA_GROUP] = {m: None if m in metrics.NOT_APPLICABLE and math.isnan(v[0]) else float(v[0])
                                     for m, v in alpha.items()}
    return score
