import json

import pytest
import torch
from PIL import Image

from alphavae.diffusion.pipeline import (center_crop, contact_sheet, generate_folder, generate_images, generate_rgba,
                                         load_flux_pipeline, round_size)
from alphavae.vae import RGBAVAE
from flux_tiny import model_folders

GEN = dict(steps=2, max_sequence_length=16)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    flux, vae_dir = model_folders(tmp_path_factory.mktemp("models"))
    vae = RGBAVAE.from_pretrained(vae_dir, dtype="float32")
    pipe = load_flux_pipeline(flux, vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe, vae


def test_rgba_of_requested_size_never_through_rgb_postprocessing(loaded, monkeypatch):
    pipe, vae = loaded
    monkeypatch.setattr(pipe.image_processor, "postprocess", lambda *a, **k: pytest.fail("RGB post-processing used"))
    pixels = generate_rgba(pipe, vae, ["a red ball", "glass"], [3, 4], height=40, width=24, **GEN)
    assert pixels.shape == (2, 4, 40, 24) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert pixels[:, 3].std() > 0  # alpha comes from the RGBA decoder, not a constant


def test_deterministic_per_seed(loaded):
    pipe, vae = loaded
    first = generate_rgba(pipe, vae, ["a cat"], [7], height=32, width=32, **GEN)
    second = generate_rgba(pipe, vae, ["a cat"], [7], height=32, width=32, **GEN)
    other = generate_rgba(pipe, vae, ["a cat"], [8], height=32, width=32, **GEN)
    assert torch.equal(first, second) and not torch.equal(first, other)
    (image,) = generate_images(pipe, vae, ["a cat"], [7], height=32, width=32, **GEN)
    assert image.mode == "RGBA" and image.size == (32, 32)


def test_off_multiple_size_is_centre_crop_of_rounded_generation(loaded):
    pipe, vae = loaded
    full = generate_rgba(pipe, vae, ["a cat"], [1], height=48, width=32, **GEN)
    cropped = generate_rgba(pipe, vae, ["a cat"], [1], height=41, width=30, **GEN)
    torch.testing.assert_close(cropped, center_crop(full, 41, 30))
    assert round_size(41, 30) == (48, 32) and round_size(16, 1024) == (16, 1024)
    with pytest.raises(ValueError, match="at least 1x1"):
        round_size(0, 16)


def test_input_errors(loaded):
    pipe, vae = loaded
    with pytest.raises(ValueError, match="equally many"):
        generate_rgba(pipe, vae, ["a", "b"], [1], **GEN)
    with pytest.raises(ValueError, match="steps"):
        generate_rgba(pipe, vae, ["a"], [1], steps=0)
    with pytest.raises(ValueError, match="offload"):
        load_flux_pipeline("unused", vae, offload="disk")


def test_generate_folder_writes_rgba_pngs_and_skips_existing(loaded, tmp_path):
    pipe, vae = loaded
    kwargs = dict(n=2, seed=5, height=24, width=40, steps=2, batch_size=3, progress=False)
    report = generate_folder(pipe, vae, ["a cat", "a cup"], tmp_path, **kwargs)
    assert [p.rsplit("/", 1)[1] for p in report.written] == ["p0000-s5.png", "p0000-s6.png", "p0001-s5.png",
                                                             "p0001-s6.png"]
    assert not report.failed and report.generated_size == (32, 48)
    with Image.open(report.written[0]) as image:
        assert image.mode == "RGBA" and image.size == (40, 24)
    records = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert records[3] == {"file": "p0001-s6.png", "prompt": "a cup", "seed": 6, "width": 40, "height": 24}
    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        assert sheet.mode == "RGBA" and sheet.size[0] > 3 * 40
    again = generate_folder(pipe, vae, ["a cat", "a cup"], tmp_path, **kwargs)
    assert not again.written and len(again.skipped) == 4


def test_contact_sheet_shows_checkerboard_under_transparency():
    pixels = -torch.ones(2, 4, 32, 32)
    sheet = contact_sheet(pixels, columns=2)
    assert sheet.shape == (4, 36, 70) and torch.all(sheet[3] == 1)
    assert len(torch.unique(sheet[:3, 2:34, 2:34])) == 2  # the two checkerboard greys
