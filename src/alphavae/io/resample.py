"""Alpha-correct resizing, padding to a multiple and cropping back for RGBA pixel tensors.

Inputs are straight RGBA ``(B, 4, H, W)`` or ``(4, H, W)`` in [-1, 1]; outputs keep the same layout,
dtype and device. Resampling wraps ``torch.nn.functional.interpolate``; padding wraps
``torch.nn.functional.pad``.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from alphavae.io.alpha import check_pixels, premultiply, unpremultiply

RESIZE_MODES = ("nearest", "bilinear", "bicubic", "area")
"""Interpolation modes of :func:`resize_rgba` (``torch.nn.functional.interpolate`` names)."""
PAD_MODES = ("replicate", "reflect", "transparent")
"""Padding modes of :func:`pad_to_multiple`."""
ROUND_OFF_ALPHA = 0.5 / 65535
"""Unit alpha below half a 16-bit step after resampling is float round-off of a transparent area (e.g. 3e-8):
:func:`resize_rgba` snaps it to 0, else its colour (noise divided by noise) would be arbitrary."""


def _batched(pixels: torch.Tensor) -> torch.Tensor:
    """View ``(4, H, W)`` as ``(1, 4, H, W)``; leave ``(B, 4, H, W)`` as is."""
    return pixels if pixels.ndim == 4 else pixels.unsqueeze(0)


def _like_input(result: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Drop the batch dimension again if ``pixels`` had none, and restore its dtype."""
    result = result.to(pixels.dtype)
    return result if pixels.ndim == 4 else result.squeeze(0)


def _check_count(name: str, value: int) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an integer >= 1 (a bool is not taken for one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_size(size: tuple[int, int], what: str) -> tuple[int, int]:
    """Validate an ``(h, w)`` pair of positive ints (bools refused, as by ``_check_count``)."""
    try:
        if any(isinstance(s, bool) for s in size):
            raise TypeError("bool")
        height, width = (operator.index(s) for s in size)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be (height, width) integers, got {size!r}") from err
    if height < 1 or width < 1:
        raise ValueError(f"{what} must be >= 1 on both sides, got {size!r}")
    return height, width


def resize_rgba(pixels: torch.Tensor, size: tuple[int, int], *, mode: str = "bicubic",
                antialias: bool = True) -> torch.Tensor:
    """Resize straight RGBA without colour bleeding.

    Premultiplies colour by alpha, resamples all four channels with
    ``torch.nn.functional.interpolate`` (computed in float32), clamps alpha to [0, 1] (bicubic
    overshoot), snaps alpha below :data:`ROUND_OFF_ALPHA` to 0, un-premultiplies
    (:func:`~alphavae.io.alpha.unpremultiply`: colour clamped to [0, 1], colour -1 where the new alpha
    is 0) and returns straight RGBA. Hidden colour under alpha = 0 therefore never smears into edges.

    Args:
        pixels: ``(B, 4, H, W)`` or ``(4, H, W)`` straight RGBA in [-1, 1], any float dtype.
        size: output ``(height, width)`` in pixels, each >= 1.
        mode: one of :data:`RESIZE_MODES`.
        antialias: low-pass when downscaling (only used by ``bilinear`` and ``bicubic``).

    Returns:
        ``(B, 4, height, width)`` (or unbatched) straight RGBA in [-1, 1], dtype of ``pixels``. A copy
        of the input (values untouched, not clamped) when the size is unchanged.

    Raises:
        TypeError, ValueError: bad pixels, size or mode.
    """
    check_pixels(pixels)
    height, width = _check_size(size, "size")
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")
    if (height, width) == tuple(pixels.shape[-2:]):
        return pixels.clone()
    extra = {"antialias": antialias, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
    resized = F.interpolate(premultiply(_batched(pixels).float()), size=(height, width), mode=mode, **extra)
    resized = resized.clamp(-1, 1)
    round_off = resized[:, 3:4] < ROUND_OFF_ALPHA * 2 - 1
    resized = torch.where(round_off, -1.0, resized)  # transparent, colour -1 (as unpremultiply sets for alpha 0)
    return _like_input(unpremultiply(resized), pixels)


def resize_short_side(pixels: torch.Tensor, short_side: int, *, mode: str = "bicubic") -> torch.Tensor:
    """Resize so the shorter side equals ``short_side``, keeping the aspect ratio (see :func:`resize_rgba`).

    The longer side is ``round(long * short_side / short)``, at least 1.

    Args:
        pixels: ``(B, 4, H, W)`` or ``(4, H, W)`` straight RGBA in [-1, 1].
        short_side: target length of the shorter side in pixels, >= 1.
        mode: one of :data:`RESIZE_MODES`; antialiasing is on.

    Returns:
        Straight RGBA in [-1, 1] with the new size.

    Raises:
        TypeError, ValueError: bad pixels, ``short_side`` or mode.
    """
    check_pixels(pixels)
    _check_count("short_side", short_side)
    height, width = pixels.shape[-2:]
    scale = short_side / min(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return resize_rgba(pixels, size, mode=mode)


def pad_to_multiple(pixels: torch.Tensor, multiple: int, *,
                    mode: str = "replicate") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad bottom and right so both sides are multiples of ``multiple``.

    Use :func:`crop_to` with the returned size to undo it; the original pixels are untouched
    (they stay at the top-left).

    Args:
        pixels: ``(B, 4, H, W)`` or ``(4, H, W)`` straight RGBA in [-1, 1].
        multiple: required divisor of both sides in pixels, >= 1 (e.g. 8 for the SD and FLUX VAEs; 16
            for FLUX generation, whose transformer packs 2x2 latents).
        mode: ``"replicate"`` (repeat the edge pixels, alpha included), ``"reflect"`` (mirror; the
            padding on a side must be smaller than that side) or ``"transparent"`` (all four channels
            -1: transparent black).

    Returns:
        ``(padded, (H, W))``: the padded tensor (same layout, dtype, device; the input itself when
        both sides are already multiples) and the original size.

    Raises:
        TypeError, ValueError: bad pixels, ``multiple`` or mode, or ``reflect`` on too small an image.
    """
    check_pixels(pixels)
    _check_count("multiple", multiple)
    if mode not in PAD_MODES:
        raise ValueError(f"unknown pad mode {mode!r}; use one of {', '.join(PAD_MODES)}")
    height, width = pixels.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return pixels, (height, width)
    if mode == "reflect" and (pad_h >= height or pad_w >= width):
        raise ValueError(f"reflect padding of {height}x{width} to a multiple of {multiple} needs "
                         "padding smaller than the image; use mode='replicate'")
    if mode == "transparent":
        padded = F.pad(_batched(pixels), (0, pad_w, 0, pad_h), mode="constant", value=-1.0)
    else:
        padded = F.pad(_batched(pixels), (0, pad_w, 0, pad_h), mode=mode)
    return _like_input(padded, pixels), (height, width)


def pad_to_canvas(pixels: torch.Tensor, min_side: int, *,
                  multiple: int = 1) -> tuple[torch.Tensor, tuple[int, int]]:
    """Centre an image on a transparent canvas at least ``min_side`` pixels high and wide (sides already that
    long are not padded); the content is not resized. Undo with ``padded[..., top:top + H, left:left + W]``.

    A side that gets a canvas is first extended to a multiple of ``multiple`` by repeating its edge pixels, half
    on each side (the smaller half above / to the left), so the content spans a whole number of latent cells' width
    of a VAE that downsamples by ``multiple`` (it is centred on the canvas, not aligned to the latent grid): a 1 px
    image alone in an 8 px cell of transparency is a detail an 8x VAE cannot keep (alphavae-mini on a 64 px canvas
    returned an opaque red pixel at alpha 4/255; extended, 254/255).

    Args:
        pixels: ``(B, 4, H, W)`` or ``(4, H, W)`` straight RGBA in [-1, 1].
        min_side: smallest canvas side in pixels, >= 1.
        multiple: the VAE's downsampling factor in pixels (``RGBAVAE.multiple``, 8 for SD/FLUX), >= 1; 1: no
            edge extension, transparent margins only.

    Returns:
        ``(padded, (top, left))``: ``(..., 4, max(H', min_side), max(W', min_side))`` straight RGBA in [-1, 1],
        ``H'`` being ``H`` rounded up to ``multiple`` where ``H < min_side`` (else ``H``), likewise ``W'``; the
        margins beyond the extended content transparent black (all four channels -1; the input itself when
        nothing is padded), and the offset of the original pixels in it (the smaller half of each margin goes
        above / to the left).

    Raises:
        TypeError, ValueError: bad pixels, or ``min_side`` or ``multiple`` not an integer >= 1 (a bool is not
            taken for one).
    """
    check_pixels(pixels)
    _check_count("min_side", min_side)
    _check_count("multiple", multiple)
    height, width = pixels.shape[-2:]
    if height >= min_side and width >= min_side:
        return pixels, (0, 0)
    grow_h, grow_w = (-side % multiple if side < min_side else 0 for side in (height, width))
    inner_top, inner_left = grow_h // 2, grow_w // 2
    content = F.pad(_batched(pixels), (inner_left, grow_w - inner_left, inner_top, grow_h - inner_top),
                    mode="replicate")
    pad_h, pad_w = max(min_side - height - grow_h, 0), max(min_side - width - grow_w, 0)
    top, left = pad_h // 2, pad_w // 2
    padded = F.pad(content, (left, pad_w - left, top, pad_h - top), mode="constant", value=-1.0)
    return _like_input(padded, pixels), (top + inner_top, left + inner_left)


def crop_to(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the top-left ``(H, W)`` region: the inverse of :func:`pad_to_multiple`.

    Args:
        pixels: tensor shaped ``(..., C, H', W')`` (RGBA pixels, or a decoded/composited image).
        size: ``(H, W)`` in pixels with ``H <= H'`` and ``W <= W'``.

    Returns:
        View of shape ``(..., C, H, W)``.

    Raises:
        ValueError: ``size`` not positive or larger than the tensor.
    """
    height, width = _check_size(size, "size")
    if pixels.ndim < 2 or height > pixels.shape[-2] or width > pixels.shape[-1]:
        raise ValueError(f"cannot crop {tuple(pixels.shape)} to {height}x{width}")
    return pixels[..., :height, :width]
