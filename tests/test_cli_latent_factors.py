"""Tests for the ``alphavae latent-factors`` command (tiny converted VAE on disk)."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from alphavae.cli import main
from alphavae.vae import RGBAVAE


def test_fits_writes_and_reports_bad_files(tmp_path, tiny_rgba_dir, capsys):
    vae_dir = tmp_path / "vae"
    shutil.copytree(tiny_rgba_dir, vae_dir)
    rng = np.random.default_rng(0)
    for index in range(4):
        values = rng.integers(0, 256, (16 + 8 * index, 24, 4), dtype=np.uint8)
        Image.fromarray(values, "RGBA").save(tmp_path / f"img{index}.png")
    assert main(["latent-factors", str(vae_dir), str(tmp_path), "--limit", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == 3 and printed["scaling_factor"] > 0
    assert RGBAVAE.from_pretrained(vae_dir).scaling_factor == 0.3611  # not written without --write

    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert main(["latent-factors", str(vae_dir), str(tmp_path), "--write"]) == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "1 of 5 inputs failed" in captured.err
    written = json.loads((vae_dir / "config.json").read_text())
    factors = json.loads(captured.out)
    assert factors["images"] == 4
    assert (written["scaling_factor"], written["shift_factor"]) == (factors["scaling_factor"], factors["shift_factor"])
    assert RGBAVAE.from_pretrained(vae_dir).shift_factor == factors["shift_factor"]


def test_missing_vae_is_a_clear_error(tmp_path, capsys):
    assert main(["latent-factors", str(tmp_path / "absent"), str(tmp_path)]) == 1
    assert "absent" in capsys.readouterr().err
