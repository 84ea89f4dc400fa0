"""Value-range conversion, compositing, premultiplication and mask conventions for RGBA tensors.

Convention (docs/architecture.md): straight (non-premultiplied) alpha, float tensors shaped
``(B, 4, H, W)`` (or ``(4, H, W)``), channels R, G, B, A, all four in [-1, 1]; alpha in [0, 1] is
``(a + 1) / 2``. Colours are sRGB-encoded values; no linearisation is applied anywhere here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "white": (255, 255, 255),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
}
"""The 9 canonical solid backgrounds of the ALPHA evaluation protocol (AlphaVAE, arXiv 2507.09308,
ALPHA benchmark), in this order, as 0-255 sRGB triples."""

CHECKER_LIGHT = 204
"""Light square of :func:`checkerboard`, 0-255 sRGB grey (the usual image-editor value)."""
CHECKER_DARK = 153
"""Dark square of :func:`checkerboard`, 0-255 sRGB grey."""
PREVIEW_BACKGROUNDS = ("checkerboard", "black", "white")
"""Backgrounds of the preview grids (reconstruction grids, training validation grids), as :func:`composite`
names, in column order."""


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Map values from [-1, 1] to [0, 1]: ``(x + 1) / 2``.

    Args:
        x: tensor of any shape and float dtype, nominally in [-1, 1] (not clamped).

    Returns:
        Tensor of the same shape and dtype, nominally in [0, 1].
    """
    return (x + 1) / 2


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """Map values from [0, 1] to [-1, 1]: ``2 x - 1`` (inverse of :func:`to_unit`).

    Args:
        x: tensor of any shape and float dtype, nominally in [0, 1] (not clamped).

    Returns:
        Tensor of the same shape and dtype, nominally in [-1, 1].
    """
    return x * 2 - 1


def check_float_tensor(value, name: str) -> None:
    """Check that ``value`` (pixels, latents, any shape) is a floating-point ``torch.Tensor``.

    Args:
        value: the object to check.
        name: argument name used in the error message.

    Raises:
        TypeError: not a ``torch.Tensor`` (e.g. a numpy array) or not floating point (e.g. int64); names ``name``
            and the type or dtype given.
    """
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(value).__name__}"
                        + (f" of dtype {value.dtype}" if isinstance(value, torch.Tensor) else ""))


def check_pixels(pixels: torch.Tensor, name: str = "pixels") -> None:
    """Validate an RGBA pixel tensor: float, shaped ``(4, H, W)`` or ``(B, 4, H, W)``.

    Pixels and latents are never told apart by channel count (a 4-channel tensor can be either); this only
    checks that a tensor passed *as pixels* has the pixel layout.

    Args:
        pixels: the tensor to check.
        name: argument name used in the error message.

    Raises:
        TypeError: not a floating-point ``torch.Tensor``.
        ValueError: wrong number of dimensions, not 4 channels in dim -3, or an empty side.
    """
    check_float_tensor(pixels, name)
    if pixels.ndim not in (3, 4) or pixels.shape[-3] != 4:
        raise ValueError(f"{name} must be RGBA shaped (4, H, W) or (B, 4, H, W), got {tuple(pixels.shape)}")
    if pixels.shape[-1] == 0 or pixels.shape[-2] == 0:
        raise ValueError(f"{name} has an empty side: {tuple(pixels.shape)}")


def alpha_unit(pixels: torch.Tensor) -> torch.Tensor:
    """Alpha channel in [0, 1] from RGBA pixels in [-1, 1].

    Args:
        pixels: ``(B, 4, H, W)`` or ``(4, H, W)`` straight RGBA in [-1, 1].

    Returns:
        ``(B, 1, H, W)`` (or ``(1, H, W)``) alpha ``(a + 1) / 2``; not clamped, so gradients flow and
        out-of-range inputs stay visible.

    Raises:
        TypeError, ValueError: see :func:`check_pixels`.
    """
    check_pixels(pixels)
    return to_unit(pixels[..., 3:4, :, :])


def checkerboard(height: int, width: int, *, square: int = 16) -> torch.Tensor:
    """Light/dark grey checkerboard used to display transparency.

    Args:
        height, width: size in pixels, >= 1.
        square: side of one square in pixels, >= 1. The top-left square is light.

    Returns:
        ``(3, height, width)`` float32 in [-1, 1]: light squares are sRGB grey
        :data:`CHECKER_LIGHT` (204), dark squares :data:`CHECKER_DARK` (153).

    Raises:
        ValueError: a size or ``square`` below 1.
    """
    if height < 1 or width < 1 or square < 1:
        raise ValueError(f"checkerboard needs height, width, square >= 1, got {height}, {width}, {square}")
    rows = torch.arange(height) // square
    cols = torch.arange(width) // square
    dark = (rows[:, None] + cols[None, :]) % 2 == 1
    grey = torch.where(dark, CHECKER_DARK / 255.0, CHECKER_LIGHT / 255.0).to(torch.float32)
    return from_unit(grey).expand(3, height, width).clone()


def _background_tensor(background: str | Sequence[float] | torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Background as a tensor in [-1, 1] broadcastable to ``pixels[..., :3, :, :]``."""
    height, width = pixels.shape[-2:]
    if isinstance(background, str):
        if background == "checkerboard":
            return checkerboard(height, width).to(pixels)
        if background not in BACKGROUNDS:
            raise ValueError(f"unknown background {background!r}; use one of {', '.join(BACKGROUNDS)}, "
                             "'checkerboard', an (r, g, b) 0-255 triple or a (3, H, W) tensor")
        background = BACKGROUNDS[background]
    if isinstance(background, torch.Tensor):
        if background.ndim not in (3, 4) or background.shape[-3] != 3:
            raise ValueError(f"background tensor must be (3, H, W) or (B, 3, H, W), got {tuple(background.shape)}")
        try:
            torch.broadcast_shapes(background.shape, pixels[..., :3, :, :].shape)
        except RuntimeError as err:
            raise ValueError(f"background {tuple(background.shape)} does not match pixels "
                             f"{tuple(pixels.shape)}") from err
        return background.to(pixels)
    rgb = tuple(background)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"background colour must be three 0-255 values, got {background!r}")
    return from_unit(torch.tensor(rgb, dtype=pixels.dtype, device=pixels.device) / 255).view(3, 1, 1)


def composite(pixels: torch.Tensor, background: str | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Composite straight RGBA over an opaque background: ``C * alpha + b * (1 - alpha)``.

    Source: the compositing used throughout AlphaVAE (arXiv 2507.09308; docs/architecture.md,
    "Composite"), i.e. Porter-Duff *over* with an opaque backdrop. Colour under alpha = 0 is multiplied by exactly 0,
    so hidden (finite) colour never reaches the result; NaN or inf anywhere in ``pixels`` propagates (0 x inf is
    NaN), as in any arithmetic: :func:`alphavae.io.load_rgba` never returns them. Differentiable; nothing is
    clamped.

    Args:
        pixels: ``(B, 4, H, W)`` or ``(4, H, W)`` straight RGBA in [-1, 1].
        background: one of :data:`BACKGROUNDS` by name, ``"checkerboard"`` (see :func:`checkerboard`),
            an ``(r, g, b)`` triple in 0-255 sRGB, or an RGB tensor in [-1, 1] shaped ``(3, H, W)`` or
            ``(B, 3, H, W)`` that broadcasts against ``pixels[..., :3, :, :]`` (a side or B may be 1, e.g.
            ``(B, 3, 1, 1)`` for one solid colour per image); it is cast to the dtype/device of ``pixels``.

    Returns:
        ``(B, 3, H, W)`` (or ``(3, H, W)``) composite in [-1, 1], dtype/device of ``pixels``; a 4-D
        background with ``(4, H, W)`` pixels gives the broadcast ``(B, 3, H, W)``.

    Raises:
        TypeError, ValueError: bad ``pixels`` (see :func:`check_pixels`); TypeError also for a background
            of none of the accepted kinds (e.g. a number).
        ValueError: an unknown background name, a colour triple that is not three 0-255 values, or a
            background tensor that is not 3-D/4-D with 3 channels or does not broadcast against ``pixels``.
    """
    check_pixels(pixels)
    back = _background_tensor(background, pixels)
    alpha = to_unit(pixels[..., 3:4, :, :])
    return pixels[..., :3, :, :] * alpha + back * (1 - alpha)


def clear_hidden_colour(pixels: torch.Tensor) -> torch.Tensor:
    """Set the colour of fully transparent pixels to -1 (black); everything else is unchanged.

    Two files that differ only under alpha = 0 look identical, so every model input must be made
    identical too: the VAE encoder would otherwise see the hidden colour.

    Args:
        pixels: ``(B, 4, H, W)`` or ``(4, H, W)`` straight RGBA in [-1, 1].

    Returns:
        Same shape, dtype and device; colour -1 wherever alpha <= -1 (alpha 0 in [0, 1] space; values
        below -1 count as transparent too).

    Raises:
        TypeError, ValueError: bad ``pixels`` (see :func:`check_pixels`).
    """
    check_pixels(pixels)
    colour, alpha = pixels[..., :3, :, :], pixels[..., 3:4, :, :]
    colour = torch.where(alpha > -1, colour, torch.full_like(colour, -1.0))
    return torch.cat([colour, alpha], dim=-3)


def premultiply(pixels: torch.Tensor) -> torch.Tensor:
    """Premultiply colour by alpha (in [0, 1] space), keeping the [-1, 1] convention.

    Args:
        pixels: ``(..., 4, H, W)`` straight RGBA in [-1, 1].

    Returns:
        Same shape: colour channels ``from_unit(to_unit(C) * alpha01)``, alpha unchanged. Every
        pixel with alpha = 0 gets colour -1 (black), whatever colour was hidden there.
    """
    alpha = to_unit(pixels[..., 3:4, :, :])
    colour = from_unit(to_unit(pixels[..., :3, :, :]) * alpha)
    return torch.cat([colour, pixels[..., 3:4, :, :]], dim=-3)


def unpremultiply(pixels: torch.Tensor) -> torch.Tensor:
    """Undo :func:`premultiply`: divide unit colour by unit alpha, finite everywhere.

    Args:
        pixels: ``(..., 4, H, W)`` premultiplied RGBA in [-1, 1] (colour in unit space <= alpha).

    Returns:
        Same shape, straight RGBA in [-1, 1]. Where alpha <= 0 (or below zero after resampling) the
        colour is defined as -1 (black, since nothing can be recovered); elsewhere the quotient is
        clamped to [0, 1] in unit space, so alpha = 1/255 and resampling overshoot stay finite and in
        range. Alpha is returned unchanged.
    """
    alpha = to_unit(pixels[..., 3:4, :, :])
    colour = to_unit(pixels[..., :3, :, :])
    visible = alpha > 0
    straight = torch.where(visible, colour / torch.where(visible, alpha, torch.ones_like(alpha)), 0.0)
    return torch.cat([from_unit(straight.clamp(0, 1)), pixels[..., 3:4, :, :]], dim=-3)


def _check_unit(x: torch.Tensor, name: str) -> None:
    """Raise ValueError unless every value of ``x`` lies in [0, 1]."""
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name} must be in [0, 1] (got [{x.min().item():.4g}, {x.max().item():.4g}]); "
                         "convert [-1, 1] alpha with alpha_unit() first")


def alpha_to_mask(alpha: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK from alpha: ``mask = 1 - alpha`` (ComfyUI masks mark what is transparent).

    Args:
        alpha: alpha in [0, 1], any shape (e.g. ``(B, H, W)`` or ``(B, 1, H, W)``; use
            :func:`alpha_unit` to get it from [-1, 1] pixels).

    Returns:
        Same shape: mask in [0, 1], 1 where fully transparent (ComfyUI convention).

    Raises:
        ValueError: values outside [0, 1] (usually [-1, 1] alpha passed by mistake).
    """
    _check_unit(alpha, "alpha")
    return 1 - alpha


def mask_to_alpha(mask: torch.Tensor) -> torch.Tensor:
    """Alpha from a ComfyUI MASK: ``alpha = 1 - mask`` (inverse of :func:`alpha_to_mask`).

    Args:
        mask: ComfyUI mask in [0, 1], any shape (ComfyUI uses ``(B, H, W)``); 1 = transparent.

    Returns:
        Same shape: alpha in [0, 1] (use :func:`from_unit` for the [-1, 1] pixel convention).

    Raises:
        ValueError: values outside [0, 1].
    """
    _check_unit(mask, "mask")
    return 1 - mask
