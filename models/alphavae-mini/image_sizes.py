"""The model card's image-size numbers: the same test images reconstructed at several sizes.

    python models/alphavae-mini/image_sizes.py TEST_SPLIT [VAE_DIR] [N]

Arguments as in `probe_images.py` (N default 10). Each image is resized (alpha-correct) to each short side of
`CASES` and reconstructed whole (posterior mode, float32, no tiling), as it is or on a transparent canvas
(`RGBAVAE.reconstruct(min_side=...)`, `alphavae reconstruct --min-side`); prints per source and case the mean
9-background PSNR (dB, over `alphavae.eval.backgrounds.composites`, as `alphavae eval` scores them), the mean
absolute alpha error,
and the mean reconstructed alpha where the input is transparent (alpha 0) and where it is opaque (alpha 1), in
1/255 units.
"""

import torch
from probe_images import parse_args, source_images

from alphavae.eval.backgrounds import composites
from alphavae.eval.metrics import psnr
from alphavae.io import alpha_unit

CASES = ((128, None), (128, 256), (256, None), (512, None), (1024, None))
"""(short side in px, ``min_side`` or None)."""


def scores(pixels: torch.Tensor, reconstruction: torch.Tensor) -> dict[str, float]:
    """PSNR (dB), alpha error and the alpha over transparent / opaque input pixels (1/255) of one
    ``(1, 4, H, W)`` image in [-1, 1] and its reconstruction."""
    alpha, recon_alpha = alpha_unit(pixels), alpha_unit(reconstruction)
    return {"psnr": psnr(composites(pixels)[0], composites(reconstruction)[0]).mean().item(),  # one per background
            "alpha error": (recon_alpha - alpha).abs().mean().item() * 255,
            "alpha where transparent": recon_alpha[alpha == 0].mean().item() * 255,
            "alpha where opaque": recon_alpha[alpha == 1].mean().item() * 255}


if __name__ == "__main__":
    split, vae, count = parse_args(10)
    for side, min_side in CASES:
        for name, images in source_images(split, count, short_side=side):
            rows = []
            for pixels in images:
                with torch.inference_mode():
                    rows.append(scores(pixels[None], vae.reconstruct(pixels[None], min_side=min_side)))
            means = {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}
            canvas = f" on a {min_side} px canvas" if min_side else ""
            print(f"{side} px{canvas} {name}: 9-bg PSNR {means['psnr']:.2f} dB, alpha error {means['alpha error']:.1f}/255, "
                  f"alpha where transparent {means['alpha where transparent']:.1f}/255, "
                  f"where opaque {means['alpha where opaque']:.1f}/255", flush=True)
