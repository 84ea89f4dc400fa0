import pytest
import torch
from fixtures_io import assert_default_permissions
from safetensors.torch import load_file, save_file

from alphavae.diffusion.lora import LORA_FILE, add_lora, canonical_safetensors, lora_config, restore_lora, save_lora
from alphavae.testing_flux import tiny_flux_pipeline

KW = dict(height=32, width=32, num_inference_steps=2, output_type="latent", max_sequence_length=16)


def _perturb(params):
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for p in params:
            p.add_(torch.randn_like(p) * 0.2)


def _run(pipe):
    return pipe("a glass cup", generator=torch.Generator().manual_seed(0), **KW).images


def test_paper_targets():
    transformer = tiny_flux_pipeline().transformer
    add_lora(transformer, lora_config(4, 4))
    wrapped = {n.removesuffix(".lora_A") for n, _ in transformer.named_modules() if n.endswith(".lora_A")}
    double = {f"transformer_blocks.0.{m}" for m in (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
        "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
        "ff_context.net.2")}
    single = {f"single_transformer_blocks.0.{m}"
              for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")}
    assert wrapped == double | single  # never the final proj_out, norms or embedders
    trainable = [n for n, p in transformer.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    attention = tiny_flux_pipeline().transformer
    add_lora(attention, lora_config(4, 4, targets="attention"))
    assert not any("ff" in n or "proj_mlp" in n for n, _ in attention.named_modules() if n.endswith(".lora_A"))


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
    """An 'attention' LoRA restored into a 'paper' adapter left the feed-forward LoRA layers as they were, silently."""
    pipe = tiny_flux_pipeline()
    add_lora(pipe.transformer, lora_config(4, 8, targets="attention"))
    save_lora(pipe.transformer, tmp_path)
    other = tiny_flux_pipeline().transformer
    add_lora(other, lora_config(4, 8))
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
