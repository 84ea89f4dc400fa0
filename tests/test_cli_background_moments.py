"""Tests for the ``alphavae background-moments`` command and ``alphavae.losses.background_moments``."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

from alphavae.cli import main
from alphavae.losses import background_moments, estimate_background_moments
from alphavae.train import load_config


def test_moments_of_known_pixels():
    red_half_transparent = torch.tensor([1.0, -1.0, -1.0, 0.0])[:, None, None].expand(4, 2, 2)  # alpha 0.5
    grey = torch.zeros(1, 3, 2, 6)  # RGB, three times the pixels
    mean, square, count = background_moments(iter([red_half_transparent, grey]))
    # over black, 50 % red is (0, -1, -1); a quarter of the pixels are that, the rest 0
    assert count == 2 and mean == pytest.approx((0.0, -0.25, -0.25)) and square == pytest.approx((0.0, 0.25, 0.25))
    with pytest.raises(ValueError, match="no background images"):
        background_moments([])
    with pytest.raises(ValueError, match=r"image 1: expected .* got \(2, 3, 2, 2\)"):
        background_moments([torch.zeros(2, 3, 2, 2)])  # a batch: only (1, C, H, W) is one image


def test_command_prints_moments_usable_by_train_vae_and_skips_bad_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (8 + index, 12, 3), dtype=np.uint8), "RGB").save(tmp_path / f"bg{index}.png")
    expected_mean, expected_square = estimate_background_moments(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")

    assert main(["background-moments", str(tmp_path)]) == 1  # the broken file is skipped, named, and fails the run
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["images"] == 3
    assert printed["background_mean"] == pytest.approx(expected_mean)
    assert printed["background_square"] == pytest.approx(expected_square)
    assert f"skipped: {tmp_path / 'broken.png'}" in captured.err
    words = shlex.split(captured.err.split("for train-vae: ")[1].splitlines()[0])  # as a shell reads the hint
    loss = load_config("vae_main", words[1::2]).loss
    assert loss.background_mean == pytest.approx(expected_mean, rel=1e-5)  # the hint keeps 6 significant digits
    assert loss.background_square == pytest.approx(expected_square, rel=1e-5)

    (tmp_path / "broken.png").unlink()
    assert main(["background-moments", str(tmp_path), "--limit", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 2
    assert main(["background-moments", str(tmp_path / "missing")]) == 2
    assert "missing: input does not exist" in capsys.readouterr().err


def test_missing_inputs_and_empty_folders_are_skipped(tmp_path, capsys):
    """A missing path or a folder without images among the inputs is listed with the other failures; the
    moments come from the rest (exit 1). With nothing usable left: one error line."""
    Image.new("RGB", (4, 4), (255, 255, 255)).save(tmp_path / "white.png")
    (tmp_path / "empty").mkdir()
    inputs = [tmp_path / "missing", tmp_path / "white.png", tmp_path / "empty"]
    assert main(["background-moments", *map(str, inputs)]) == 1
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["images"] == 1 and printed["background_mean"] == pytest.approx([1.0, 1.0, 1.0])
    assert f"skipped: {tmp_path / 'missing'}: input does not exist" in captured.err
    assert f"skipped: {tmp_path / 'empty'}: no image files in this folder" in captured.err
    assert "2 of 3 inputs failed" in captured.err
    assert main(["background-moments", str(tmp_path / "missing"), str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err == ("alphavae background-moments: error: no images "
                                       f"({tmp_path / 'missing'}: input does not exist; "
                                       f"{tmp_path / 'empty'}: no image files in this folder)\n")


def test_warnings_are_one_line(tmp_path, capsys):
    """Python warnings of any command print as one line (``alphavae.cli.main``), here an animated GIF."""
    frames = [Image.new("RGBA", (8, 8), (60 * i, 0, 0, 128)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert main(["background-moments", str(tmp_path / "anim.gif")]) == 0
    err = capsys.readouterr().err
    assert "alphavae background-moments: warning:" in err and "3 frames" in err
    assert "UserWarning" not in err and "warnings.warn" not in err
