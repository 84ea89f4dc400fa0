"""Model builders for tests and benchmarks: real VAE configs and tiny random-weight look-alikes.

No weights are downloaded: the real configs (SD1.x, SDXL, SD3, FLUX.1 VAEs, as published in their
diffusers ``vae/config.json``) build models with random weights, and the tiny variants keep each
real model's structure (4 resolution levels = 8x downsampling, latent channels 4 or 16, quant convs
on or off, scaling/shift factors, mid-block attention) at widths small enough for CPU unit tests.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from alphavae.convert import convert_to_rgba

SHAPES: tuple[str, ...] = ("sd1", "sdxl", "sd3", "flux")

_COMMON = {
    "in_channels": 3,
    "out_channels": 3,
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "force_upcast": True,
    "mid_block_add_attention": True,
    "latents_mean": None,
    "latents_std": None,
}
_SPECIFIC = {
    "sd1": {"latent_channels": 4, "sample_size": 512, "scaling_factor": 0.18215, "shift_factor": None,
            "use_quant_conv": True, "use_post_quant_conv": True},
    "sdxl": {"latent_channels": 4, "sample_size": 1024, "scaling_factor": 0.13025, "shift_factor": None,
             "use_quant_conv": True, "use_post_quant_conv": True},
    "sd3": {"latent_channels": 16, "sample_size": 1024, "scaling_factor": 1.5305, "shift_factor": 0.0609,
            "use_quant_conv": False, "use_post_quant_conv": False},
    "flux": {"latent_channels": 16, "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
             "use_quant_conv": False, "use_post_quant_conv": False},
}
_TINY = {"block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 64}


def real_vae_config(shape: str) -> dict:
    """Return the published diffusers ``AutoencoderKL`` config of a real RGB VAE.

    Args:
        shape: one of ``SHAPES``: "sd1" (SD 1.x), "sdxl", "sd3" (SD 3.x), "flux" (FLUX.1).
    Returns:
        A fresh dict for ``AutoencoderKL.from_config`` (3 input/output channels, 8x downsampling).
    Raises:
        ValueError: unknown shape.
    Source: the models' ``vae/config.json`` files.
    """
    if shape not in _SPECIFIC:
        raise ValueError(f"unknown VAE shape {shape!r}; choose one of {SHAPES}")
    return {**_COMMON, **_SPECIFIC[shape]}


def tiny_vae_config(shape: str) -> dict:
    """Return a tiny config with the structure of a real VAE (see ``real_vae_config``).

    Widths [8, 16, 16, 16], one layer per block, 4 norm groups, sample_size 64; latent channels,
    quant convs and scaling/shift factors as in the real model. Downsampling stays 8x.
    Raises:
        ValueError: unknown shape.
    """
    return {**real_vae_config(shape), **_TINY}


def tiny_rgb_vae(shape: str, *, seed: int = 0) -> AutoencoderKL:
    """Build a tiny RGB ``AutoencoderKL`` (3 channels, float32, eval mode) with seeded random weights.

    Args:
        shape: one of ``SHAPES``.
        seed: torch seed for the weight initialisation (same seed, same weights; the global RNG is untouched).
    Raises:
        ValueError: unknown shape.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL.from_config(tiny_vae_config(shape)).eval()


def tiny_rgba_vae(shape: str, *, seed: int = 0, random_alpha: bool = False) -> AutoencoderKL:
    """Build a tiny converted RGBA ``AutoencoderKL`` (4 channels in and out, float32, eval mode).

    Args:
        shape: one of ``SHAPES``.
        seed: torch seed for the weights.
        random_alpha: if False the model is exactly the opaque initialisation (alpha output = 1
            for every input, ``alphavae.convert``); if True the alpha input weights of
            ``encoder.conv_in`` and the alpha output row of ``decoder.conv_out`` are random, as
            after training, so alpha output depends on the content (for tiling/metric tests).
    Raises:
        ValueError: unknown shape.
    """
    model = convert_to_rgba(tiny_rgb_vae(shape, seed=seed))
    if random_alpha:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            conv_in, conv_out = model.encoder.conv_in.weight, model.decoder.conv_out.weight
            conv_in[:, 3].copy_(torch.randn_like(conv_in[:, 3]) * conv_in[:, :3].std())
            conv_out[3].copy_(torch.randn_like(conv_out[3]) * conv_out[:3].std())
            model.decoder.conv_out.bias[3] = 0.0
    return model
