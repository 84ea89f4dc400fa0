"""Composites for the ALPHA benchmark: an RGBA image over the canonical solid backgrounds
(optionally a checkerboard), and the reference pipeline's uint8 + JPEG round trip (in memory).

Source: AlphaVAE (arXiv 2507.09308) evaluation protocol; backgrounds and the composite formula from
``alphavae.io`` (the project's single definition).
"""

from __future__ import annotations

import io as _bytes_io

import numpy as np
import torch
from PIL import Image

from alphavae.io import BACKGROUNDS, composite

BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)
"""The 9 canonical background names, in report order (black, gray, white, red, green, blue, yellow, cyan, magenta)."""

CHECKERBOARD = "checkerboard"
"""Name of the optional checkerboard background in reports."""

JPEG_MAX_SIDE = 65500
"""The longest image side in px that JPEG (libjpeg's ``JPEG_MAX_DIMENSION``) can hold."""


def composites(pixels: torch.Tensor, names: tuple[str, ...] = BACKGROUND_NAMES) -> torch.Tensor:
    """Composite straight-alpha RGBA images over each named background.

    Args:
        pixels: ``(B, 4, H, W)`` straight RGBA in [-1, 1].
        names: background names from ``alphavae.io.BACKGROUNDS`` or ``"checkerboard"``
            (``alphavae.io.checkerboard`` at the image size).
    Returns:
        ``(B, K, 3, H, W)`` float32 RGB in [0, 1], K = ``len(names)``.
    Raises:
        ValueError: ``pixels`` is not ``(B, 4, H, W)``, or a name is neither a canonical background nor
            ``"checkerboard"`` (raised by ``alphavae.io.composite``).
    """
    if pixels.ndim != 4 or pixels.shape[1] != 4:
        raise ValueError(f"composites needs pixels shaped (B, 4, H, W), got {tuple(pixels.shape)}")
    stacked = torch.stack([composite(pixels.float(), name) for name in names], 1)
    return stacked.add_(1).mul_(0.5).clamp_(0, 1)  # alphavae.io.to_unit, in place


def quantise(rgb: torch.Tensor) -> torch.Tensor:
    """Quantise [0, 1] floats to uint8 by rounding half away from zero on ``x * 255`` (clamped).

    Args:
        rgb: any shape, float in [0, 1].
    Returns:
        uint8 tensor of the same shape.
    """
    return (rgb * 255.0).add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)


def jpeg_roundtrip(images: torch.Tensor) -> torch.Tensor:
    """Encode and decode RGB uint8 images as JPEG with Pillow's defaults (quality 75, 4:2:0), in memory.

    Reproduces the reference pipeline, which saved every composite with ``Image.save(path)`` under a
    ``.jpg`` name and scored the decoded files; no temporary files are written here.

    Args:
        images: ``(N, 3, H, W)`` uint8 RGB.
    Returns:
        ``(N, 3, H, W)`` uint8 RGB after the JPEG round trip.
    Raises:
        ValueError: not ``(N, 3, H, W)`` uint8, N = 0 (from numpy), or a side longer than :data:`JPEG_MAX_SIDE`
            px (one line giving the size, before any encoding).
    Source: Pillow ``JpegImagePlugin`` (default quality 75).
    """
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"jpeg_roundtrip needs (N, 3, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
    height, width = images.shape[-2:]
    if max(height, width) > JPEG_MAX_SIDE:
        raise ValueError(f"the reference protocol's JPEG step holds at most {JPEG_MAX_SIDE:,} px a side (got "
                         f"{width} x {height}, width x height); --protocol clean scores it")
    out = []
    for hwc in images.permute(0, 2, 3, 1).cpu().numpy():
        buffer = _bytes_io.BytesIO()
        Image.fromarray(hwc, "RGB").save(buffer, format="JPEG")
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out.append(np.asarray(decoded.convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
