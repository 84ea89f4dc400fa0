"""The model card's translucency numbers: real images made half transparent, reconstructed; alpha error.

    python models/alphavae-mini/translucent_images.py TEST_SPLIT [VAE_DIR] [N]

TEST_SPLIT: a folder with one subfolder per source (`alphavae data export ... --split test -o RUNS/test-split`).
VAE_DIR: default the shipped alphavae-mini. N: the first N images of each source, by path (default 30).
Each image is resized to a 256 px short side (alpha-correct), then reconstructed (posterior mode, float32) as it
is and with its alpha multiplied by 0.5 (`alphavae.data.datasets.scale_alpha`); prints the mean absolute alpha
error per source in 1/255 units for both.
"""

import sys
from pathlib import Path

import torch

from alphavae.data.datasets import scale_alpha
from alphavae.io import list_images, load_rgba, resize_short_side
from alphavae.vae import RGBAVAE

FACTORS = (1.0, 0.5)

if __name__ == "__main__":
    split = Path(sys.argv[1])
    vae = RGBAVAE.from_pretrained(sys.argv[2] if len(sys.argv) > 2 else None, dtype="float32")
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    for source in sorted(p for p in split.iterdir() if p.is_dir()):
        errors = {factor: [] for factor in FACTORS}
        for path, _ in sorted(list_images([source]))[:count]:
            pixels = resize_short_side(load_rgba(path), 256)
            for factor in FACTORS:
                scaled = scale_alpha(pixels, factor)[None]
                with torch.inference_mode():
                    alpha = vae.reconstruct(scaled)[:, 3]
                errors[factor].append(((alpha - scaled[:, 3]).abs().mean() * 127.5).item())
        print(source.name, ", ".join(f"alpha x{factor}: {sum(e) / len(e):.1f}/255" for factor, e in errors.items()))
