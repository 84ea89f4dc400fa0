"""The FLUX rectified-flow training objective on (RGBA-VAE) latents.

Follows diffusers' FLUX DreamBooth-LoRA training example (``train_dreambooth_lora_flux.py``) and
SD3 (Esser et al. 2024, §3.1, §5.1 for the timestep densities): for clean diffusion latents x0 and
noise e ~ N(0, I), x_s = (1 - s) x0 + s e, and the transformer predicts the velocity e - x0.
Latents here are the VAE's *diffusion* latents, ``(z - shift_factor) * scaling_factor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # diffusers is imported where it is used, so the CLI's --help does not load it
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")
"""Timestep density (logit_normal, mode) or loss weighting (sigma_sqrt, cosmap); 'none' is uniform."""


@dataclass(frozen=True)
class TimestepSampling:
    """How training noise levels are drawn (diffusers' FLUX example flags of the same names).

    Attributes:
        weighting_scheme: one of :data:`WEIGHTING_SCHEMES`.
        logit_mean, logit_std: mean and std of the normal behind 'logit_normal'.
        mode_scale: scale of the 'mode' density.

    Raises:
        ValueError: ``weighting_scheme`` is not in :data:`WEIGHTING_SCHEMES`, or ``logit_std`` is not > 0.
    """

    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    def __post_init__(self) -> None:
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(f"weighting_scheme must be one of {WEIGHTING_SCHEMES}, got {self.weighting_scheme!r}")
        if not self.logit_std > 0:
            raise ValueError(f"logit_std must be > 0, got {self.logit_std!r}")


def pack_latents(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack ``(B, C, h, w)`` latents into FLUX tokens; h and w (latent pixels) must be even.

    Returns:
        ``(tokens, image_ids)``: tokens ``(B, h*w/4, 4C)`` (2x2 patches) and the 2-D RoPE position
        ids ``(h*w/4, 3)`` FLUX expects as ``img_ids``. Wraps ``FluxPipeline._pack_latents`` and
        ``_prepare_latent_image_ids``.

    Raises:
        ValueError: odd latent height or width.
    """
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent height and width must be even for 2x2 packing, got {h}x{w}")
    from diffusers import FluxPipeline

    tokens = FluxPipeline._pack_latents(latents, b, c, h, w)
    ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)
    return tokens, ids


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: ``(B, h*w/4, 4C)`` -> ``(B, C, h, w)`` for latent sizes h, w (even).

    ``FluxPipeline._unpack_latents`` takes pixel sizes and a VAE factor; latent sizes with a factor
    of 1 give the same arrangement. An odd ``height`` or ``width`` is rounded down to even.

    Raises:
        RuntimeError: (from ``torch.Tensor.view``) ``tokens`` is not ``(B, (height // 2) * (width // 2), 4C)``.
    """
    from diffusers import FluxPipeline

    return FluxPipeline._unpack_latents(tokens, height, width, 1)


def sample_sigmas(
    batch: int, scheduler: FlowMatchEulerDiscreteScheduler, sampling: TimestepSampling,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``batch`` noise levels sigma in (0, 1] from the scheduler's training grid: ``(batch,)`` float32.

    u ~ density(sampling) in [0, 1) picks index ``floor(u * num_train_timesteps)`` of
    ``scheduler.sigmas`` (diffusers' FLUX example; the transformer receives sigma, i.e. t/1000).
    ``scheduler`` must hold its training grid (``num_train_timesteps`` sigmas, on the CPU): a scheduler
    never passed to ``set_timesteps``, which replaces the grid with the sampling steps (keep a copy for
    training, as :mod:`alphavae.diffusion.train` does).

    Raises:
        IndexError: ``scheduler.sigmas`` is shorter than the training grid (``set_timesteps`` was called).
    """
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(
        sampling.weighting_scheme, batch, sampling.logit_mean, sampling.logit_std, sampling.mode_scale,
        generator=generator,
    )
    n = scheduler.config.num_train_timesteps
    index = (u * n).long().clamp(0, n - 1)
    return scheduler.sigmas[index].float()


def flow_matching_loss(
    transformer: FluxTransformer2DModel, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
    prompt_embeds: torch.Tensor, pooled_embeds: torch.Tensor, text_ids: torch.Tensor,
    guidance: float | None, weighting_scheme: str = "none",
) -> torch.Tensor:
    """Rectified-flow loss of one batch; a scalar float32 tensor.

    Args:
        transformer: the FLUX transformer (with or without LoRA layers; may be wrapped, e.g. DDP).
        latents: clean diffusion latents ``(B, C, h, w)`` (h, w even), e.g. 16 channels for FLUX.
        noise: standard normal, same shape as ``latents``.
        sigmas: ``(B,)`` noise levels in [0, 1] (see :func:`sample_sigmas`).
        prompt_embeds: T5 states ``(B, L, D)``; pooled_embeds: CLIP pooled ``(B, D')``;
            text_ids: ``(L, 3)`` zeros, as returned by ``FluxPipeline.encode_prompt``.
        guidance: embedded guidance value (paper §5.1: 1); None for transformers without a
            guidance embedding (``config.guidance_embeds`` False, e.g. FLUX.1-schnell).
        weighting_scheme: see :data:`WEIGHTING_SCHEMES` (only sigma_sqrt/cosmap change the weights).

    Returns:
        ``mean_b mean_{c,h,w} w(s_b) (v_pred - (noise - latents))^2``.

    Raises:
        ValueError: odd latent height or width (from :func:`pack_latents`).
    """
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    b = latents.shape[0]
    s = sigmas.to(latents.device, latents.dtype).view(b, 1, 1, 1)
    noisy = (1.0 - s) * latents + s * noise
    tokens, image_ids = pack_latents(noisy)
    guidance_vec = None if guidance is None else torch.full((b,), float(guidance), device=latents.device)
    pred = transformer(
        hidden_states=tokens, timestep=sigmas.to(latents.device, latents.dtype), guidance=guidance_vec,
        pooled_projections=pooled_embeds, encoder_hidden_states=prompt_embeds, txt_ids=text_ids,
        img_ids=image_ids, return_dict=False,
    )[0]
    pred = unpack_latents(pred, latents.shape[2], latents.shape[3]).float()
    weights = compute_loss_weighting_for_sd3(weighting_scheme, sigmas.float()).to(pred.device).view(b, 1, 1, 1)
    target = (noise - latents).float()
    return (weights * (pred - target) ** 2).reshape(b, -1).mean(dim=1).mean()
