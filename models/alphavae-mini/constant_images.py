"""The model card's limitation numbers: reconstruct constant images unlike the training data and print alpha.

    python models/alphavae-mini/constant_images.py [VAE_DIR]    # default: the shipped alphavae-mini

Fully transparent 128² and 16² images, flat opaque grey and red 128² images, and flat semi-transparent red 128²
images (alpha 180/255 and 64/255) are reconstructed (posterior mode, float32); prints the max / mean / min
reconstructed alpha of each in 1/255 units (0 = transparent) and, for the images that are not transparent, the mean
reconstructed straight colour (r, g, b) in 1/255 units next to the input's.
"""

import sys

import torch

from alphavae.vae import RGBAVAE


def constant_image(side: int, rgba: tuple[float, float, float, float]) -> torch.Tensor:
    """``(1, 4, side, side)`` straight RGBA in [-1, 1], every pixel ``rgba``."""
    return torch.tensor(rgba, dtype=torch.float32).view(1, 4, 1, 1).expand(1, 4, side, side).clone()


CASES = {"transparent 128²": constant_image(128, (-1, -1, -1, -1)),
         "transparent 16²": constant_image(16, (-1, -1, -1, -1)),
         "opaque grey 128²": constant_image(128, (0, 0, 0, 1)),
         "opaque red 128²": constant_image(128, (0.6, -0.8, -0.8, 1)),
         "red at alpha 180/255, 128²": constant_image(128, (0.6, -0.8, -0.8, 180 / 127.5 - 1)),
         "red at alpha 64/255, 128²": constant_image(128, (0.6, -0.8, -0.8, 64 / 127.5 - 1))}

if __name__ == "__main__":
    vae = RGBAVAE.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else None, dtype="float32")
    with torch.inference_mode():
        for name, pixels in CASES.items():
            output = (vae.reconstruct(pixels) + 1) * 127.5
            alpha = output[:, 3]
            line = f"{name}: alpha max {alpha.max():.0f}/255, mean {alpha.mean():.0f}/255, min {alpha.min():.0f}/255"
            if pixels[0, 3, 0, 0] > -1:
                colour = ", ".join(f"{v:.0f}" for v in output[0, :3].mean(dim=(1, 2)))
                given = ", ".join(f"{v:.0f}" for v in (pixels[0, :3, 0, 0] + 1) * 127.5)
                line += f"; colour ({colour})/255, input ({given})/255"
            print(line)
