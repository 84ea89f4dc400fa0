import pytest
import torch
from diffusers import FluxTransformer2DModel
from fixtures_io import assert_default_permissions
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from alphavae.diffusion.lora import (
    LORA_FILE,
    TARGET_PRESETS,
    add_lora,
    canonical_safetensors,
    lora_config,
    restore_lora,
    save_lora,
    saved_target_modules,
)
from alphavae.diffusion.pipeline import apply_lora, read_lora
from alphavae.testing_flux import tiny_flux_pipeline

KW = dict(height=32, width=32, num_inference_steps=2, output_type="latent", max_sequence_length=16)


def _perturb(params):
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for p in params:
            p.add_(torch.randn_like(p) * 0.2)


def _run(pipe):
    return pipe("a glass cup", generator=torch.Generator().manual_seed(0), **KW).images


REFERENCE_TARGETS = ["attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                     "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                     "ff_context.net.2"]
"""peft target_modules of the reference implementation (o0o0o00o0/AlphaVAE train/train_diffusion_lora.py)."""
DOUBLE = REFERENCE_TARGETS  # the layers of a double-stream block it wraps: all twelve
SINGLE_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")  # of a single-stream block: no to_out, ff or ff_context there
FLUX1_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                 axes_dims_rope=[16, 56, 56])
"""FLUX.1-dev's transformer config (black-forest-labs/FLUX.1-dev transformer/config.json): width 24 x 128 = 3072."""


def _wrapped(transformer):
    return {n.removesuffix(".lora_A") for n, _ in transformer.named_modules() if n.endswith(".lora_A")}


def _flux1_dev_lora(config):
    """(LoRA layer names, LoRA parameter count) of ``config`` on FLUX.1-dev's transformer, built without weights."""
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX1_DEV)
        params = add_lora(transformer, config)
    return _wrapped(transformer), sum(p.numel() for p in params)


@pytest.mark.parametrize("targets, single", [("paper", SINGLE_QKV), ("wide", (*SINGLE_QKV, "proj_mlp", "proj_out")),
                                             ("attention", (*SINGLE_QKV, "proj_out"))])
def test_preset_targets(targets, single):
    """The exact layers of each preset; 'paper' wrapped the single-stream blocks' proj_mlp and proj_out too (now
    'wide'), where the reference does not."""
    transformer = tiny_flux_pipeline().transformer
    add_lora(transformer, lora_config(4, 4, targets=targets))
    double = DOUBLE[:8] if targets == "attention" else DOUBLE
    expected = {f"transformer_blocks.0.{m}" for m in double} | {f"single_transformer_blocks.0.{m}" for m in single}
    assert _wrapped(transformer) == expected  # never the final proj_out, norms or embedders
    trainable = [n for n, p in transformer.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_paper_targets_are_the_reference_implementations():
    """On FLUX.1-dev's transformer, 'paper' wraps exactly the layers peft picks for the reference's target_modules
    (a list: names or name suffixes): 342 layers, 179,306,496 parameters at rank 64 (it wrapped 418 / 261,488,640)."""
    reference = LoraConfig(r=64, lora_alpha=64, init_lora_weights="gaussian", target_modules=REFERENCE_TARGETS)
    names, count = _flux1_dev_lora(lora_config(64, 64))
    assert (names, count) == _flux1_dev_lora(reference)
    assert (len(names), count) == (342, 179_306_496)


@pytest.mark.parametrize("targets, layers, units", [
    ("paper", 19 * 12 + 38 * 3, 19 * 36 + 38 * 6),  # double block: 8 d->d and 4 d<->4d layers = 36 d; single: 3 x 2d
    ("wide", 19 * 12 + 38 * 5, 19 * 36 + 38 * (6 + 5 + 6)),  # + proj_mlp d->4d (5d), proj_out 5d->d (6d)
    ("attention", 19 * 8 + 38 * 4, 19 * 16 + 38 * (6 + 6)),
])
def test_preset_sizes_on_flux1_dev(targets, layers, units):
    """A rank-r LoRA layer on an in -> out linear has r (in + out) parameters: r x width x ``units`` per preset."""
    names, count = _flux1_dev_lora(lora_config(64, 64, targets=targets))
    width = FLUX1_DEV["num_attention_heads"] * FLUX1_DEV["attention_head_dim"]
    assert (len(names), count) == (layers, 64 * width * units)


def test_save_load_identical_with_alpha_not_rank(tmp_path):
    pipe = tiny_flux_pipeline()
    _perturb(add_lora(pipe.transformer, lora_config(rank=4, alpha=16.0)))
    trained = _run(pipe)
    (tmp_path / "lora").mkdir(mode=0o700)  # the caller's folder: its mode is left alone
    save_lora(pipe.transformer, tmp_path / "lora")
    assert (tmp_path / "lora").stat().st_mode & 0o777 == 0o700
    assert_default_permissions(tmp_path / "lora" / LORA_FILE)
    fresh = tiny_flux_pipeline()
    base = _run(fresh)
    fresh.load_lora_weights(tmp_path / "lora")  # diffusers' own loader accepts the folder
    reloaded = _run(fresh)
    assert torch.equal(reloaded, trained) and not torch.allclose(base, trained)


@pytest.mark.parametrize("targets", ["paper", "wide"])
def test_a_lora_loads_on_the_layers_it_was_trained_on(tmp_path, targets):
    """Loading for generation uses the LoRA's own layers, whatever 'paper' names now: one trained with the former
    'paper' (now 'wide') keeps its single-stream proj_mlp and proj_out, through diffusers' loader (the folder, with
    the adapter metadata recording its target_modules) and through apply_lora (generate's: the weights alone)."""
    pipe = tiny_flux_pipeline()
    _perturb(add_lora(pipe.transformer, lora_config(4, 4, targets=targets)))
    trained = _run(pipe)
    save_lora(pipe.transformer, tmp_path)
    assert saved_target_modules(tmp_path) == TARGET_PRESETS[targets]
    by_folder, by_weights = tiny_flux_pipeline(), tiny_flux_pipeline()
    by_folder.load_lora_weights(tmp_path)
    apply_lora(by_weights, read_lora(tmp_path), 1.0, name=str(tmp_path))
    for loaded in (by_folder, by_weights):
        assert _wrapped(loaded.transformer) == _wrapped(pipe.transformer)
        assert torch.equal(_run(loaded), trained)


def test_restore_lora_copies_weights(tmp_path):
    pipe = tiny_flux_pipeline()
    params = add_lora(pipe.transformer, lora_config(4, 8))
    _perturb(params)
    save_lora(pipe.transformer, tmp_path)
    other = tiny_flux_pipeline().transformer
    restored = add_lora(other, lora_config(4, 8))
    restore_lora(other, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(params, restored, strict=True))
    save_file({"text_encoder.x.lora_A.weight": torch.zeros(1)}, tmp_path / "te.safetensors")
    with pytest.raises(ValueError, match="no transformer LoRA weights"):
        restore_lora(other, tmp_path / "te.safetensors")


def test_restore_lora_refuses_a_lora_that_leaves_adapter_layers_unset(tmp_path):
    """An 'attention' LoRA restored into a 'wide' adapter left the feed-forward LoRA layers as they were, silently."""
    pipe = tiny_flux_pipeline()
    add_lora(pipe.transformer, lora_config(4, 8, targets="attention"))
    save_lora(pipe.transformer, tmp_path)
    other = tiny_flux_pipeline().transformer
    add_lora(other, lora_config(4, 8, targets="wide"))
    with pytest.raises(ValueError, match=r"holds no weights for \d+ LoRA layers of the adapter \(saved with other "
                                         r"targets\?\), e\.g\. \['transformer_blocks\.0\.ff\.net\.0\.proj\.lora_A"):
        restore_lora(other, tmp_path)


@pytest.mark.parametrize("kwargs", [dict(rank=0), dict(alpha=0), dict(dropout=1.0), dict(targets="everything")])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        lora_config(**kwargs)


def test_canonical_safetensors_gives_one_byte_string_and_refuses_other_files(tmp_path):
    """Equal tensors and metadata give equal bytes whatever order they were written in; the tensors load
    unchanged. A header that is JSON but not safetensors' layout is a ValueError naming the file (it raised
    AttributeError/KeyError)."""
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.bfloat16)}
    metadata = {"z": "1", "a": "2", "m": "3"}
    first, second = tmp_path / "1.safetensors", tmp_path / "2.safetensors"
    save_file(tensors, first, metadata=metadata)
    save_file(dict(reversed(tensors.items())), second, metadata=dict(reversed(metadata.items())))
    for path in (first, second):
        canonical_safetensors(path)
    assert first.read_bytes() == second.read_bytes()
    loaded = load_file(first)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in tensors.items())
    for header in (b"[]", b'{"a": {}}', b'{"a": 1}', b'{"__metadata__": [1]}', b"{"):
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(len(header).to_bytes(8, "little") + header)
        with pytest.raises(ValueError, match=f"^{bad}: not a safetensors file"):
            canonical_safetensors(bad)
