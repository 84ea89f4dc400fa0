"""Tests for the ``alphavae latent-factors`` command (tiny converted VAE on disk)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from alphavae.cli import main
from alphavae.cli.latent_factors import FEW_IMAGES
from alphavae.vae import RGBAVAE


def test_fits_writes_and_reports_bad_files(tmp_path, tiny_rgba_dir, capsys):
    vae_dir = tmp_path / "vae"
    shutil.copytree(tiny_rgba_dir, vae_dir)
    rng = np.random.default_rng(0)
    for index in range(4):
        values = rng.integers(0, 256, (16 + 8 * index, 24, 4), dtype=np.uint8)
        Image.fromarray(values, "RGBA").save(tmp_path / f"img{index}.png")
    assert main(["latent-factors", str(vae_dir), str(tmp_path), "--limit", "3"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["images"] == 3 and printed["scaling_factor"] > 0
    assert "warning: fitted on only 3 images;" in captured.err  # too few to represent a dataset
    assert main(["latent-factors", str(vae_dir), str(tmp_path), "--limit", "3", "--tile-size", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3
    assert main(["latent-factors", str(vae_dir), str(tmp_path), "--limit", "3", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out) == printed  # the same seeded fit on an explicit device
    assert RGBAVAE.from_pretrained(vae_dir).scaling_factor == 0.3611  # not written without --write

    assert main(["latent-factors", str(vae_dir), str(tmp_path), "--write", "--force"]) == 0
    captured = capsys.readouterr()
    written = json.loads((vae_dir / "config.json").read_text())
    factors = json.loads(captured.out)
    assert factors["images"] == 4
    assert (written["scaling_factor"], written["shift_factor"]) == (factors["scaling_factor"], factors["shift_factor"])
    assert RGBAVAE.from_pretrained(vae_dir).shift_factor == factors["shift_factor"]
    assert f"scaling_factor 0.3611 -> {factors['scaling_factor']}" in captured.err  # the old values, to restore


def _vae_and_images(tmp_path, tiny_rgba_dir, count):
    """A copy of the tiny RGBA VAE and ``count`` random 16 x 16 RGBA images in ``tmp_path / "images"``."""
    vae_dir = tmp_path / "vae"
    shutil.copytree(tiny_rgba_dir, vae_dir)
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA").save(
            tmp_path / "images" / f"img{index}.png")
    return vae_dir, tmp_path / "images"


def test_write_refused_when_an_input_failed(tmp_path, tiny_rgba_dir, capsys):
    """Finding 3: with a failed input the config was rewritten anyway (exit 1, but the factors changed)."""
    vae_dir, images = _vae_and_images(tmp_path, tiny_rgba_dir, FEW_IMAGES)
    (images / "broken.png").write_bytes(b"not a png")
    before = (vae_dir / "config.json").read_bytes()
    assert main(["latent-factors", str(vae_dir), str(images), "--write"]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and f"1 of {FEW_IMAGES + 1} inputs failed" in err
    assert f"{vae_dir / 'config.json'} was left unchanged" in err
    assert (vae_dir / "config.json").read_bytes() == before


def test_write_of_a_small_fit_needs_force(tmp_path, tiny_rgba_dir, capsys):
    """Finding 3: a fit on one image overwrote the factors with only a warning."""
    vae_dir, images = _vae_and_images(tmp_path, tiny_rgba_dir, 1)
    before = (vae_dir / "config.json").read_bytes()
    assert main(["latent-factors", str(vae_dir), str(images), "--write"]) == 1
    err = capsys.readouterr().err
    assert "refused: not writing factors fitted on only 1 image (fewer than 16)" in err and "pass --force" in err
    assert "was left unchanged" in err
    assert (vae_dir / "config.json").read_bytes() == before
    assert main(["latent-factors", str(vae_dir), str(images), "--write", "--force"]) == 0
    assert "scaling_factor 0.3611 -> " in capsys.readouterr().err
    assert RGBAVAE.from_pretrained(vae_dir).scaling_factor != 0.3611


def test_enough_images_are_written_without_force(tmp_path, tiny_rgba_dir, capsys):
    vae_dir, images = _vae_and_images(tmp_path, tiny_rgba_dir, FEW_IMAGES)
    assert main(["latent-factors", str(vae_dir), str(images), "--write"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "shift_factor 0.1159 -> " in captured.err
    assert RGBAVAE.from_pretrained(vae_dir).scaling_factor == json.loads(captured.out)["scaling_factor"]


def test_missing_vae_is_a_clear_error(tmp_path, capsys):
    assert main(["latent-factors", str(tmp_path / "absent"), str(tmp_path)]) == 2
    assert "absent" in capsys.readouterr().err


def test_unusable_device_is_a_clear_error(tmp_path, tiny_rgba_dir, capsys):
    assert main(["latent-factors", str(tiny_rgba_dir), str(tmp_path), "--device", "nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_failures_are_listed_and_factors_survive_a_failed_write(tmp_path, tiny_rgba_dir, capsys, monkeypatch):
    """Only unusable inputs: each is named (not just "needs at least one image"); an empty folder is named;
    a failing --write (e.g. read-only folder) still prints the fitted factors before the error."""
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((40, 40, 4), np.uint8), "RGBA").save(tmp_path / "big.png")
    assert main(["latent-factors", str(tiny_rgba_dir), str(tmp_path), "--max-pixels", "1000"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "big.png" in err and "2 of 2 inputs failed" in err

    (tmp_path / "empty").mkdir()
    assert main(["latent-factors", str(tiny_rgba_dir), str(tmp_path / "empty")]) == 2
    assert "no image files in" in capsys.readouterr().err

    def refuse(path, *args, **kwargs):
        raise PermissionError(f"[Errno 13] Permission denied: '{path}'")

    monkeypatch.setattr("alphavae.cli.latent_factors.atomic_write_text", refuse)
    assert main(["latent-factors", str(tiny_rgba_dir), str(tmp_path / "big.png"), "--write", "--force"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["images"] == 1 and "Permission denied" in captured.err
    assert "config.json was left unchanged" in captured.err  # the rewrite is atomic


def test_out_of_range_seed_is_refused_before_the_model_loads(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["latent-factors", str(tmp_path / "no-such-vae"), str(tmp_path), "--seed", str(2**64)])
    assert exit_info.value.code == 2 and f"{2**64} is above {2**64 - 1}" in capsys.readouterr().err


def test_write_refuses_the_shipped_model_and_a_read_only_config(tmp_path, tiny_rgba_dir, capsys):
    from alphavae.vae import DEFAULT_MODEL_DIR

    Image.fromarray(np.zeros((16, 16, 4), np.uint8), "RGBA").save(tmp_path / "img.png")
    shipped = (DEFAULT_MODEL_DIR / "config.json").read_bytes()
    assert main(["latent-factors", str(DEFAULT_MODEL_DIR), str(tmp_path / "img.png"), "--write", "--force"]) == 2
    assert "not writing factors into the model shipped with alphavae" in capsys.readouterr().err
    assert (DEFAULT_MODEL_DIR / "config.json").read_bytes() == shipped
    linked = tmp_path / "linked"  # a copy whose config.json is a symlink to the shipped one
    linked.mkdir()
    shutil.copy(DEFAULT_MODEL_DIR / "diffusion_pytorch_model.safetensors", linked)
    (linked / "config.json").symlink_to(DEFAULT_MODEL_DIR / "config.json")
    assert main(["latent-factors", str(linked), str(tmp_path / "img.png"), "--write", "--force"]) == 2
    assert "through the symlink" in capsys.readouterr().err
    assert (DEFAULT_MODEL_DIR / "config.json").read_bytes() == shipped

    vae_dir = tmp_path / "vae"
    shutil.copytree(tiny_rgba_dir, vae_dir)
    (vae_dir / "config.json").chmod(0o444)  # root may write it anyway: the mode is what the user set
    before = (vae_dir / "config.json").read_bytes()
    assert main(["latent-factors", str(vae_dir), str(tmp_path / "img.png"), "--write", "--force"]) == 2
    captured = capsys.readouterr()
    assert "config.json is read-only; make it writable" in captured.err
    assert captured.out == ""  # refused before the fit
    assert (vae_dir / "config.json").read_bytes() == before
    (vae_dir / "config.json").chmod(0o600)  # a private config stays private after the rewrite
    assert main(["latent-factors", str(vae_dir), str(tmp_path / "img.png"), "--write", "--force"]) == 0
    assert (vae_dir / "config.json").stat().st_mode & 0o777 == 0o600
    assert (vae_dir / "config.json").read_bytes() != before


def test_write_through_a_symlinked_config_keeps_the_link(tmp_path, tiny_rgba_dir, capsys):
    vae_dir, shared = tmp_path / "vae", tmp_path / "shared-config.json"
    shutil.copytree(tiny_rgba_dir, vae_dir)
    (vae_dir / "config.json").rename(shared)
    (vae_dir / "config.json").symlink_to(shared)
    Image.fromarray(np.zeros((16, 16, 4), np.uint8), "RGBA").save(tmp_path / "img.png")
    assert main(["latent-factors", str(vae_dir), str(tmp_path / "img.png"), "--write", "--force"]) == 0
    factors = json.loads(capsys.readouterr().out)
    assert (vae_dir / "config.json").is_symlink()
    assert json.loads(shared.read_text())["scaling_factor"] == factors["scaling_factor"]


def test_a_missing_input_among_several_is_skipped(tmp_path, tiny_rgba_dir, capsys):
    Image.fromarray(np.zeros((16, 16, 4), np.uint8), "RGBA").save(tmp_path / "img.png")
    assert main(["latent-factors", str(tiny_rgba_dir), str(tmp_path / "missing"), str(tmp_path / "img.png")]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["images"] == 1
    assert f"skipped: {tmp_path / 'missing'}: input does not exist" in captured.err
    assert "1 of 2 inputs failed" in captured.err


@pytest.mark.parametrize("shift_factor", [None, 0.1159])
def test_per_channel_latent_statistics_are_refused(tmp_path, tiny_rgba_dir, capsys, shift_factor):
    """Review defect 1: --write stored scalar factors into a config whose per-channel latents_mean/latents_std
    (SDXL-style) normalise the diffusion latents instead; with a shift as well the config is ambiguous at load."""
    vae_dir, images = _vae_and_images(tmp_path, tiny_rgba_dir, 1)
    config = json.loads((vae_dir / "config.json").read_text())
    config.update(latents_mean=[0.1] * 16, latents_std=[2.0] * 16, shift_factor=shift_factor)
    (vae_dir / "config.json").write_text(json.dumps(config))
    before = (vae_dir / "config.json").read_bytes()
    assert main(["latent-factors", str(vae_dir), str(images), "--write", "--force"]) == 2
    captured = capsys.readouterr()
    reason = "per-channel latents_mean/latents_std" if shift_factor is None else \
        f"{vae_dir}: config sets both latents_mean/latents_std and shift_factor 0.1159"
    assert reason in captured.err and "was left unchanged" in captured.err and captured.out == ""
    assert (vae_dir / "config.json").read_bytes() == before
