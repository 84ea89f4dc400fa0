"""Tests for alphavae.accel: policy resolution, mixed bf16 / float32 layout, input casting, RGBAVAE use."""

import copy

import pytest
import torch

from alphavae import accel
from alphavae.accel import FLOAT32_ISLANDS, apply_policy, compute_dtype, resolve_policy
from alphavae.testing import tiny_rgba_vae
from alphavae.vae import RGBAVAE


@pytest.fixture(scope="module")
def model():
    return tiny_rgba_vae("flux", random_alpha=True)


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(0)
    return torch.rand(2, 4, 40, 48) * 2 - 1


def _reconstruct(vae, pixels):
    with torch.inference_mode():
        return vae.decode(vae.encode(pixels).latent_dist.mode()).sample


@pytest.mark.parametrize("fast", [True, False])
def test_auto_on_cpu_follows_bf16_support(monkeypatch, fast):
    monkeypatch.setattr(accel, "cpu_has_fast_bf16", lambda: fast)
    policy = resolve_policy("auto", "cpu")
    assert policy.name == ("mixed-bf16" if fast else "float32")
    assert policy.dtype == (torch.bfloat16 if fast else torch.float32)
    assert policy.islands == (FLOAT32_ISLANDS if fast else ())


@pytest.mark.parametrize("fast", [True, False])
def test_training_autocast_auto_follows_the_same_test(monkeypatch, fast):
    monkeypatch.setattr(accel, "cpu_has_fast_bf16", lambda: fast)
    assert accel.autocast_precision("auto", "cpu") == ("bf16" if fast else "no")
    for explicit in ("no", "bf16", "fp16"):
        assert accel.autocast_precision(explicit, "cpu") == explicit
    with pytest.raises(ValueError, match="mixed_precision"):
        accel.autocast_precision("fp8", "cpu")


def test_explicit_policies_and_unknown_name():
    assert resolve_policy("float32") == accel.SpeedPolicy("float32", torch.float32)
    assert resolve_policy("bfloat16").islands == ()
    assert resolve_policy("mixed-bf16", "cpu").channels_last
    with pytest.raises(ValueError, match="unknown dtype policy 'fp8'"):
        resolve_policy("fp8")


def test_parse_dtype_names_and_dtypes():
    assert accel.parse_dtype("bfloat16") is torch.bfloat16
    assert accel.parse_dtype(torch.float16) is torch.float16
    for bad in ("float64", torch.float64, "auto"):
        with pytest.raises(ValueError, match="unsupported dtype"):
            accel.parse_dtype(bad)


def test_mixed_layout_runs_and_outputs_float32(model, pixels):
    vae = apply_policy(copy.deepcopy(model), resolve_policy("mixed-bf16", "cpu"))
    modules = dict(vae.named_modules())
    assert "quant_conv" not in modules  # a FLUX-shaped VAE has no quant convs: those islands are skipped
    for name in set(FLOAT32_ISLANDS) - accel.OPTIONAL_ISLANDS:
        assert modules[name].weight.dtype == torch.float32, name
    conv = vae.decoder.up_blocks[0].resnets[0].conv1
    assert conv.weight.dtype == torch.bfloat16
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert compute_dtype(vae) == torch.bfloat16
    with torch.inference_mode():
        posterior = vae.encode(pixels).latent_dist
        out = vae.decode(posterior.mode()).sample
    assert posterior.mean.dtype == torch.float32 and out.dtype == torch.float32
    assert out.shape == (2, 4, 40, 48) and torch.isfinite(out).all()
    # same network, bf16 arithmetic: close to float32 on average (random tiny weights amplify rounding)
    assert (out - _reconstruct(model, pixels)).abs().mean() < 0.05


def test_reapplying_float32_restores_a_plain_float32_model(model, pixels):
    vae = apply_policy(copy.deepcopy(model), resolve_policy("mixed-bf16", "cpu"))
    hooks = len(getattr(vae, "_alphavae_cast_hooks"))
    apply_policy(vae, resolve_policy("float32"))
    assert {p.dtype for p in vae.parameters()} == {torch.float32}
    assert len(getattr(vae, "_alphavae_cast_hooks")) == hooks
    assert vae.decoder.conv_in.weight.is_contiguous()
    # weights were rounded to bf16 once: float32 again runs exactly what a bf16-rounded copy computes
    rounded = apply_policy(copy.deepcopy(model), resolve_policy("bfloat16"))
    rounded = apply_policy(rounded, resolve_policy("float32"))
    torch.testing.assert_close(_reconstruct(vae, pixels), _reconstruct(rounded, pixels), rtol=0, atol=0)


def test_mixed_policy_keeps_quant_convs_in_float32():
    """Review defect 2: an SD1.x-style VAE's quant_conv / post_quant_conv ran in bf16 under "mixed-bf16", so the
    posterior moments and the decoder's input latents were rounded to bf16."""
    vae = RGBAVAE(apply_policy(tiny_rgba_vae("sd1"), resolve_policy("mixed-bf16", "cpu")))
    assert vae.model.quant_conv.weight.dtype == vae.model.post_quant_conv.weight.dtype == torch.float32
    latents = torch.randn(1, 4, 4, 4) * 0.3 + 0.01  # not bf16-representable
    seen = []
    handle = vae.model.decoder.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        vae.decode(latents)
    finally:
        handle.remove()
    assert seen[0].dtype == torch.float32
    torch.testing.assert_close(seen[0], vae.model.post_quant_conv(latents), rtol=0, atol=0)
    mean = vae.encode(torch.rand(1, 4, 32, 32) * 2 - 1).mean
    assert not torch.equal(mean, mean.bfloat16().float())


def test_bad_island_name_is_refused(model):
    policy = accel.SpeedPolicy("mixed-bf16", torch.bfloat16, ("decoder.nope",))
    with pytest.raises(ValueError, match="decoder.nope"):
        apply_policy(copy.deepcopy(model), policy)


def test_compute_dtype_without_parameters():
    with pytest.raises(ValueError, match="no parameters"):
        compute_dtype(torch.nn.SiLU())


def test_rgbavae_with_mixed_policy_keeps_size_and_range(model):
    vae = RGBAVAE(apply_policy(copy.deepcopy(model), resolve_policy("mixed-bf16", "cpu")))
    image = torch.rand(1, 4, 30, 21) * 2 - 1
    out = vae.reconstruct(image)
    assert out.shape == image.shape and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1


def test_float32_call_leaves_the_mixed_layout_untouched(model, pixels):
    vae = apply_policy(copy.deepcopy(model), resolve_policy("mixed-bf16", "cpu"))
    before = {name: (p.dtype, p.stride()) for name, p in vae.named_parameters()}

    def run():
        assert {p.dtype for p in vae.parameters()} == {torch.float32}
        assert vae.decoder.up_blocks[0].resnets[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
        return vae.decode(vae.encode(pixels).latent_dist.mode()).sample

    with torch.inference_mode():
        out = accel.float32_call(vae, run)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert {name: (p.dtype, p.stride()) for name, p in vae.named_parameters()} == before


@pytest.mark.parametrize(("name", "expected"), [(None, torch.bfloat16), ("float32", torch.float32)])
def test_from_pretrained_defaults_to_the_auto_policy(model, tmp_path, monkeypatch, name, expected):
    monkeypatch.setattr(accel, "cpu_has_fast_bf16", lambda: True)
    model.save_pretrained(tmp_path)
    vae = RGBAVAE.from_pretrained(tmp_path) if name is None else RGBAVAE.from_pretrained(tmp_path, dtype=name)
    assert vae.dtype == expected
    assert vae.model.decoder.conv_out.weight.dtype == torch.float32
    out = vae.reconstruct(torch.rand(1, 4, 16, 16) * 2 - 1)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("device, reason", [("bogus", "Expected one of"), ("meta", "it holds no data"),
                                            ("cpu:", "Invalid device string")])
def test_usable_device_refuses_with_one_line(device, reason):
    from alphavae.accel import usable_device

    with pytest.raises(ValueError, match=f"device '{device}' is not usable here: .*{reason}"):
        usable_device(device)
    assert usable_device("cpu") == torch.device("cpu")
