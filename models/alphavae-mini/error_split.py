"""The model card's split of the 9-background composite error into its colour and alpha parts.

    python models/alphavae-mini/error_split.py TEST_SPLIT [VAE_DIR] [N]

Arguments as in `probe_images.py` (N default 20). Each image, at a 256 px short side, is reconstructed (posterior
mode, float32). With P = alpha * colour - alpha' * colour' (premultiplied difference) and D = alpha - alpha', the
expected squared composite error over backgrounds b is P^2 - 2 E[b] P D + E[b^2] D^2 per pixel and channel (ABMSE,
paper Sec. 4.2; the terms come from `alphavae.losses.abmse_terms`). Prints, per source, the mean colour (P^2), cross and alpha (E[b^2] D^2) terms and the alpha term's
share, for the moments of the 9 evaluation backgrounds (`alphavae.io.BACKGROUNDS`, measured with
`alphavae.losses.background_moments` as `alphavae background-moments` does) and for the reference ImageNet moments.
"""

import torch
from probe_images import parse_args, source_images

from alphavae.io import BACKGROUNDS
from alphavae.losses import (
    REFERENCE_BACKGROUND_MEAN,
    REFERENCE_BACKGROUND_SQUARE,
    abmse_terms,
    background_moments,
)

if __name__ == "__main__":
    split, vae, count = parse_args(20)
    solids = (torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 127.5 - 1 for rgb in BACKGROUNDS.values())
    protocol_mean, protocol_square, _ = background_moments(solids)
    moments = {"9 backgrounds": (protocol_mean, protocol_square),
               "reference": (REFERENCE_BACKGROUND_MEAN, REFERENCE_BACKGROUND_SQUARE)}
    for name, images in source_images(split, count):
        terms, counted = {kind: torch.zeros(3, dtype=torch.float64) for kind in moments}, 0
        for pixels in images:
            counted += 1
            with torch.inference_mode():
                reconstruction = vae.reconstruct(pixels[None])
            for kind, (mean, square) in moments.items():
                parts = abmse_terms(pixels[None], reconstruction, mean, square)
                terms[kind] += torch.stack([part.mean() for part in parts]).double()
        for kind, total in terms.items():
            colour, cross, alpha_term = total / counted
            share = alpha_term / (colour + cross + alpha_term)
            print(f"{name} ({kind} moments): colour {colour:.5f}, cross {cross:+.5f}, alpha {alpha_term:.5f}, "
                  f"alpha share {share:.0%}")
