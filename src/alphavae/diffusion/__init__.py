"""Diffusion on RGBA latents: FLUX LoRA fine-tuning and transparent text-to-image generation."""
