"""Tiny, random, offline FLUX pipelines for tests and smoke runs (no downloads, built in memory).

The components have the shapes and wiring of FLUX.1 (16 latent channels, 2x2 packing, CLIP pooled +
T5 sequence conditioning, guidance embedding) but only a few thousand parameters, so a full
generation at 32-64 px takes milliseconds on a CPU. Weights are random: outputs are noise with the
right shapes, which is what the tests need. Library: diffusers ``FluxPipeline`` and transformers.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

from alphavae.testing import tiny_rgb_vae

TEXT_DIM = 32
"""Width of both tiny text encoders (CLIP pooled output and T5 hidden states)."""


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer built in memory (lower-case letters, digits, space)."""
    symbols = list(string.ascii_lowercase + string.digits)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in symbols + [s + "</w>" for s in symbols]:
        vocab[piece] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A unigram T5 tokenizer built in memory (special tokens, letters and digits, no extra ids)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in string.ascii_letters + string.digits]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def tiny_flux_pipeline(seed: int = 0, vae: AutoencoderKL | None = None) -> FluxPipeline:
    """Build a random FLUX pipeline: 1 double-stream + 1 single-stream block, tiny text encoders.

    Args:
        seed: torch seed for the random weights (same seed, same weights; the global RNG is untouched).
        vae: the pipeline's VAE, used as given (its device and dtype are kept; it is put in eval mode)
            and expected to have 16 latent channels to fit the transformer; default
            :func:`alphavae.testing.tiny_rgb_vae` ``("flux", seed)`` (CPU float32, 16 latent channels, 8x
            downsampling, FLUX scaling/shift factors), whose RGBA conversion is
            :func:`alphavae.testing.tiny_rgba_vae` ``("flux", seed)``.

    Returns:
        A ``FluxPipeline`` whose transformer and text encoders are on the CPU in float32 (so is the
        default VAE), with ``transformer.config.in_channels`` 64 (16 latent channels x 2x2 patch) and
        ``guidance_embeds=True`` like FLUX.1-dev.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
            guidance_embeds=True, axes_dims_rope=[4, 6, 6],
        )
        clip_tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(clip_tok), hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_DIM,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ))
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(t5_tok), d_model=TEXT_DIM, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        ))
    vae = tiny_rgb_vae("flux", seed=seed) if vae is None else vae
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler, vae=vae.eval(), text_encoder=clip.eval(), tokenizer=clip_tok,
        text_encoder_2=t5.eval(), tokenizer_2=t5_tok, transformer=transformer.eval(),
    )


def save_tiny_flux(path: str | Path, seed: int = 0) -> Path:
    """Write :func:`tiny_flux_pipeline` as a diffusers folder (``save_pretrained``) and return its path."""
    path = Path(path)
    tiny_flux_pipeline(seed).save_pretrained(path)
    return path
