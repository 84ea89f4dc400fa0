"""The model card's translucency numbers: real images made half transparent, reconstructed; alpha error.

    python models/alphavae-mini/translucent_images.py TEST_SPLIT [VAE_DIR] [N]

Arguments as in `probe_images.py` (N default 30). Each image, at a 256 px short side, is reconstructed (posterior
mode, float32) as it is and with its alpha multiplied by 0.5 (`alphavae.data.datasets.scale_alpha`); prints the
mean absolute alpha error per source in 1/255 units for both.
"""

import torch
from probe_images import parse_args, source_images

from alphavae.data.datasets import scale_alpha

FACTORS = (1.0, 0.5)

if __name__ == "__main__":
    split, vae, count = parse_args(30)
    for name, images in source_images(split, count):
        errors = {factor: [] for factor in FACTORS}
        for pixels in images:
            for factor in FACTORS:
                scaled = scale_alpha(pixels, factor)[None]
                with torch.inference_mode():
                    alpha = vae.reconstruct(scaled)[:, 3]
                errors[factor].append(((alpha - scaled[:, 3]).abs().mean() * 127.5).item())
        print(name, ", ".join(f"alpha x{factor}: {sum(e) / len(e):.1f}/255" for factor, e in errors.items()))
