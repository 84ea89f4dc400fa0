"""Fixtures for the diffusion tests: a tiny FLUX pipeline folder, a tiny RGBA VAE folder, RGBA images."""

from __future__ import annotations

from pathlib import Path

import torch

from alphavae import io
from alphavae.testing import tiny_rgba_vae
from alphavae.testing_flux import save_tiny_flux


def sticker(size: int, seed: int) -> torch.Tensor:
    """A sticker-like straight RGBA image ``(4, size, size)`` in [-1, 1].

    An anti-aliased coloured disc with a gradient, a soft semi-transparent drop shadow (alpha ~0.35)
    and fully transparent surroundings with random hidden colour under alpha = 0.
    """
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    cx, cy, radius = (torch.rand(3, generator=gen) * torch.tensor([0.4, 0.4, 0.25]) + torch.tensor([-0.2, -0.2, 0.4]))
    disc = (radius - ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()).mul(size / 2).clamp(0, 1)
    shadow = (radius - ((xx - cx - 0.1) ** 2 + (yy - cy - 0.1) ** 2).sqrt()).mul(size / 6).clamp(0, 1) * 0.35
    alpha = disc + shadow * (1 - disc)
    base = torch.rand(3, 1, 1, generator=gen) * 1.6 - 0.8
    colour = (base + 0.3 * xx).clamp(-1, 1) * disc + (-1.0) * (1 - disc)
    hidden = torch.rand(3, size, size, generator=gen) * 2 - 1
    colour = torch.where(alpha > 0, colour, hidden)
    return torch.cat([colour, alpha[None] * 2 - 1]).float()


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def write_real_images(folder: Path, count: int = 2, size: int = 40) -> list[Path]:
    """Save ``count`` bundled real RGBA samples (Fluent Emoji 3D, MIT), shrunk alpha-correctly to
    ``size`` x ``size``, as ``s0.png ...`` into ``folder``; return their paths."""
    sources = sorted(EXAMPLES.glob("emoji3d/*/*.png"))[:count]
    return [io.save_rgba(io.resize_rgba(io.load_rgba(src)[None], (size, size))[0], folder / f"s{k}.png")
            for k, src in enumerate(sources)]


def model_folders(root: Path) -> tuple[Path, Path]:
    """Write the tiny FLUX pipeline (``root/flux``) and a tiny RGBA VAE with content-dependent alpha
    (``root/vae``, :func:`alphavae.testing.tiny_rgba_vae` ``random_alpha=True``); return both paths."""
    flux = save_tiny_flux(root / "flux")
    vae = root / "vae"
    tiny_rgba_vae("flux", random_alpha=True).save_pretrained(vae)
    return flux, vae
