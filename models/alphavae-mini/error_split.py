"""The model card's split of the 9-background composite error into its colour and alpha parts.

    python models/alphavae-mini/error_split.py TEST_SPLIT [VAE_DIR] [N]

TEST_SPLIT: a folder with one subfolder per source (`alphavae data export ... --split test -o RUNS/test-split`).
VAE_DIR: default the shipped alphavae-mini. N: the first N images of each source, by path (default 20).
Each image is resized to a 256 px short side (alpha-correct) and reconstructed (posterior mode, float32). With
P = alpha * colour - alpha' * colour' (premultiplied difference) and D = alpha - alpha', the expected squared
composite error over backgrounds b is P^2 - 2 E[b] P D + E[b^2] D^2 per pixel and channel (ABMSE, paper Sec. 4.2).
Prints, per source, the mean colour (P^2), cross and alpha (E[b^2] D^2) terms and the alpha term's share, for the
moments of the 9 evaluation backgrounds (`alphavae.io.BACKGROUNDS`) and for the reference ImageNet moments.
"""

import sys
from pathlib import Path

import torch

from alphavae.io import BACKGROUNDS, list_images, load_rgba, resize_short_side
from alphavae.losses import REFERENCE_BACKGROUND_MEAN, REFERENCE_BACKGROUND_SQUARE
from alphavae.vae import RGBAVAE


def protocol_moments() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel E[b], E[b^2] of the 9 evaluation backgrounds, each ``(3,)`` in [-1, 1] units."""
    colours = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float64) / 127.5 - 1
    return colours.mean(0).float(), colours.square().mean(0).float()


if __name__ == "__main__":
    split = Path(sys.argv[1])
    vae = RGBAVAE.from_pretrained(sys.argv[2] if len(sys.argv) > 2 else None, dtype="float32")
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    moments = {"9 backgrounds": protocol_moments(),
               "reference": (torch.tensor(REFERENCE_BACKGROUND_MEAN), torch.tensor(REFERENCE_BACKGROUND_SQUARE))}
    for source in sorted(p for p in split.iterdir() if p.is_dir()):
        terms = {name: torch.zeros(3, dtype=torch.float64) for name in moments}
        for path, _ in sorted(list_images([source]))[:count]:
            pixels = resize_short_side(load_rgba(path), 256)[None]
            with torch.inference_mode():
                reconstruction = vae.reconstruct(pixels)
            alpha, alpha_hat = (pixels[:, 3:] + 1) / 2, (reconstruction[:, 3:] + 1) / 2
            premultiplied = pixels[:, :3] * alpha - reconstruction[:, :3] * alpha_hat  # P, (1, 3, H, W)
            difference = alpha - alpha_hat  # D, (1, 1, H, W)
            for name, (mean, square) in moments.items():
                mean, square = mean.view(1, 3, 1, 1), square.view(1, 3, 1, 1)
                terms[name] += torch.stack([premultiplied.square().mean(),
                                            (-2 * mean * premultiplied * difference).mean(),
                                            (square * difference.square()).mean()]).double() / count
        for name, (colour, cross, alpha_term) in terms.items():
            share = alpha_term / (colour + cross + alpha_term)
            print(f"{source.name} ({name} moments): colour {colour:.5f}, cross {cross:+.5f}, alpha {alpha_term:.5f}, "
                  f"alpha share {share:.0%}")
