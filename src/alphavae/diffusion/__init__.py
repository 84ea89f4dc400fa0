"""Diffusion on RGBA latents: FLUX LoRA fine-tuning and transparent text-to-image generation.

Submodules: ``captions`` (caption tables, sidecar files, fallback prompt, prompt files), ``flow``
(rectified-flow objective, latent packing, noise-level sampling), ``lora`` (target layers, peft adapter,
save/restore as diffusers LoRA folders), ``pipeline`` (FluxPipeline with the RGBA VAE, RGBA generation,
contact sheets), ``train`` (the accelerate LoRA training loop). Recipe: docs/flux-recipe.md.
"""
