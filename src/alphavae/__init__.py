"""alphavae: transparent (RGBA) latent diffusion.

Implements AlphaVAE (Wang, Yu, Zhan, Yuan 2025, arXiv 2507.09308). The data path, one module a stage:

    io (files <-> straight RGBA tensors (B, 4, H, W) in [-1, 1])
    -> convert (RGB AutoencoderKL -> RGBA, opaque initialisation)
    -> vae (encode / decode at any size, tiling, dtype policy)
    -> losses (ABMSE, composite LPIPS, KL, Ref-KL, PatchGAN)
    -> train (accelerate loop) -> eval (ALPHA protocol) -> diffusion (FLUX LoRA, generation)

Pixel convention everywhere inside the library: straight (non-premultiplied) alpha, float tensors
shaped (B, 4, H, W) with all four channels in [-1, 1]; alpha in [0, 1] is (a + 1) / 2.
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (pulled in by the test-only pyiqa) logs an irrelevant optional-kernel warning whenever
# diffusers/transformers import it; nothing in alphavae uses bitsandbytes.
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
