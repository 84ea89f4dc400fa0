"""Tests for alphavae.convert and the ``alphavae convert`` command (tiny random-weight VAEs)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from alphavae.cli import main
from alphavae.convert import (
    PROVENANCE_FILE,
    check_invariant,
    convert_pretrained,
    convert_to_rgba,
    parse_dtype,
)
from alphavae.testing import SHAPES, tiny_rgb_vae


@pytest.mark.parametrize("shape", SHAPES)
def test_invariant_bitwise_for_every_vae_shape(shape):
    source = tiny_rgb_vae(shape)
    before = {k: v.clone() for k, v in source.state_dict().items()}
    rgba = convert_to_rgba(source)
    report = check_invariant(source, rgba, sizes=((32, 32), (24, 40)))
    assert report.bitwise and report.atol == 0.0
    assert (rgba.config.in_channels, rgba.config.out_channels) == (4, 4)
    assert rgba.config.latent_channels == source.config.latent_channels
    assert (rgba.quant_conv is None) == (source.quant_conv is None)
    assert rgba.encoder.conv_in.weight[:, 3].abs().sum() == 0
    assert rgba.decoder.conv_out.bias[3] == 1.0
    assert all(torch.equal(before[k], v) for k, v in source.state_dict().items())


def test_reload_gives_identical_outputs(tmp_path):
    rgba = convert_to_rgba(tiny_rgb_vae("sd1"))
    rgba.save_pretrained(tmp_path)
    reloaded = AutoencoderKL.from_pretrained(tmp_path).eval()
    pixels = torch.rand(1, 4, 32, 40) * 2 - 1
    with torch.no_grad():
        assert torch.equal(rgba(pixels).sample, reloaded(pixels).sample)


def test_refusals():
    rgba = convert_to_rgba(tiny_rgb_vae("flux"))
    with pytest.raises(ValueError, match="already converted"):
        convert_to_rgba(rgba)
    with pytest.raises(ValueError, match="AutoencoderKL"):
        convert_to_rgba(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="multiple of 8"):
        check_invariant(tiny_rgb_vae("flux"), rgba, sizes=((20, 20),))
    with pytest.raises(ValueError, match="unsupported dtype"):
        parse_dtype("float64")


def test_invariant_violation_raises():
    source = tiny_rgb_vae("sd3")
    rgba = convert_to_rgba(source)
    with torch.no_grad():
        rgba.encoder.conv_in.weight[:, 3] += 0.1
    with pytest.raises(AssertionError, match="mean_diff"):
        check_invariant(source, rgba, sizes=((16, 16),))


def test_cli_convert_roundtrip(tmp_path, tiny_rgb_dir, capsys):
    dst = tmp_path / "rgba"
    assert main(["convert", str(tiny_rgb_dir), str(dst)]) == 0
    assert "invariant" in capsys.readouterr().out
    provenance = json.loads((dst / PROVENANCE_FILE).read_text())
    assert provenance["invariant"]["bitwise"] is True
    assert {"source", "subfolder", "date", "versions"} <= provenance.keys()
    assert (dst / "diffusion_pytorch_model.safetensors").is_file()
    reloaded = AutoencoderKL.from_pretrained(dst).eval()
    expected = convert_to_rgba(AutoencoderKL.from_pretrained(tiny_rgb_dir).eval())
    pixels = torch.rand(2, 4, 16, 24) * 2 - 1
    with torch.no_grad():
        assert torch.equal(reloaded(pixels).sample, expected(pixels).sample)
    assert main(["convert", str(tiny_rgb_dir), str(dst)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["convert", str(tiny_rgb_dir), str(dst), "--overwrite", "--dtype", "bfloat16"]) == 0
    weights = load_file(dst / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}


def test_convert_pretrained_subfolder_and_errors(tmp_path, tiny_rgb_dir, capsys):
    pipeline = tmp_path / "pipeline"
    tiny_rgb_vae("sdxl").save_pretrained(pipeline / "vae")
    out = convert_pretrained(pipeline, tmp_path / "out", subfolder="vae")
    assert json.loads((out / PROVENANCE_FILE).read_text())["subfolder"] == "vae"
    with pytest.raises(ValueError):
        convert_pretrained(pipeline, pipeline / "inside", subfolder="vae")
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 1
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["convert", str(out), str(tmp_path / "y")]) == 1
    assert "already converted" in capsys.readouterr().err


def _no_loading(*args, **kwargs):
    raise AssertionError("from_pretrained must not be reached (no network look-up for local paths)")


def test_bad_local_sources_fail_fast_with_one_line(tmp_path, capsys, monkeypatch):
    """Missing folders, non-VAE folders and folders without weights: one clear line, no hub look-up."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(AutoencoderKL, "from_pretrained", _no_loading)
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (tmp_path / "empty").mkdir()
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    for src, words in [("missing", "does not exist"), ("./a/b/c", "does not exist"), ("unet", "UNet2DModel"),
                       ("empty", "config.json"), ("noweights", "weights"), ("pipe", "--subfolder")]:
        assert main(["convert", src, "out"]) == 1
        err = capsys.readouterr().err.strip()
        assert words in err and src.strip("./") in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()
