"""The model card's edge-ring numbers: how an anti-aliased edge comes back, composited over black and white.

    python models/alphavae-mini/edge_ring.py [VAE_DIR]    # default: the shipped alphavae-mini

A white and a black disk (radius 40 px, a 1-px anti-aliased edge) on a transparent 128² image are reconstructed
(posterior mode, float32); prints the mean signed composite error, reconstruction minus input, in 1/255 units,
inside the edge band (``alphavae.eval.metrics.edge_band``: 0.05 < alpha < 0.95, dilated 3 px) and in the
interior (radius < 30 px), over black and over white. Negative over white = a dark ring.
"""

import sys

import torch

from alphavae.eval.metrics import edge_band
from alphavae.io import composite
from alphavae.vae import RGBAVAE

SIDE, RADIUS = 128, 40


def disk(colour: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, 4, SIDE, SIDE)`` straight RGBA in [-1, 1], a disk of grey level ``colour`` on transparency, and the
    ``(SIDE, SIDE)`` bool mask of its interior."""
    yy, xx = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    distance = ((yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2).sqrt()
    alpha = (RADIUS - distance).clamp(0, 1)
    pixels = torch.full((1, 4, SIDE, SIDE), float(colour))
    pixels[0, 3] = alpha * 2 - 1
    return pixels, distance < RADIUS - 10


if __name__ == "__main__":
    vae = RGBAVAE.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else None, dtype="float32")
    for colour, name in ((1.0, "white"), (-1.0, "black")):
        pixels, interior = disk(colour)
        reconstruction = vae.reconstruct(pixels)
        band = edge_band((pixels[:, 3:] + 1) / 2)[0, 0].bool()
        for background in ("black", "white"):
            error = (composite(reconstruction, background) - composite(pixels, background))[0].mean(0) * 127.5
            print(f"{name} disk over {background}: edge band {error[band].mean():+.2f}/255, "
                  f"interior {error[interior].mean():+.2f}/255")
