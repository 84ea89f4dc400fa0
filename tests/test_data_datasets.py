"""Tests for alphavae.data.datasets: crops, blend and translucency augmentation, opaque views, determinism, sampler."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alphavae.data.datasets import (
    RGBADataset,
    StepBatchSampler,
    SubstituteUnreadable,
    crop_square,
    item_generator,
    readable_files,
    scale_alpha,
)
from alphavae.data.manifest import data_folder
from alphavae.io import ImageLoadError


def _write_rgba(path, width, height, seed):
    """A random straight-RGBA PNG with a horizontal alpha ramp from 0 to 255."""
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(path)
    return path


@pytest.fixture
def files(tmp_path):
    sizes = [(40, 24), (24, 40), (32, 32), (50, 30)]
    return [_write_rgba(tmp_path / f"img{i}.png", w, h, i) for i, (w, h) in enumerate(sizes)]


def test_items_are_square_rgba_in_range(files):
    dataset = RGBADataset(files, size=16)
    for i in range(len(dataset)):
        item = dataset[i]
        assert item.shape == (4, 16, 16) and item.dtype == torch.float32
        assert item.min() >= -1 and item.max() <= 1


def test_item_depends_only_on_seed_epoch_index(files):
    dataset = RGBADataset(files, size=16, blend_prob=0.5, seed=3)
    other = RGBADataset(files, size=16, blend_prob=0.5, seed=3)
    assert torch.equal(dataset[(2, 1)], other[(2, 1)])
    dataset.set_epoch(2)
    assert torch.equal(dataset[1], other[(2, 1)])
    epochs = torch.stack([other[(e, 3)] for e in range(6)])
    assert not all(torch.equal(epochs[0], e) for e in epochs[1:])


def test_center_crop_of_resized_short_side(files):
    item = RGBADataset(files[:1], size=12, crop="center")[0]
    # 40x24 -> short side 12 -> 20x12; alpha ramps left to right, centre crop keeps the middle
    alpha = (item[3] + 1) / 2
    assert torch.all(alpha[:, 1:] >= alpha[:, :-1] - 1e-6)
    assert 0.1 < alpha.mean() < 0.9


def test_crop_none_keeps_aspect(files):
    assert RGBADataset(files[:1], size=12, crop="none")[0].shape == (4, 12, 20)


def test_small_images_are_padded_transparent_without_resize(files):
    item = RGBADataset(files[2:3], size=48, crop="center", resize_short_side=False)[0]
    assert item.shape == (4, 48, 48)
    assert torch.all(item[:, :8] == -1) and torch.all(item[:, -8:] == -1)


def test_blend_prob_one_gives_opaque_palette_composites(files):
    dataset = RGBADataset(files, size=16, blend_prob=1.0)
    for i in range(len(dataset)):
        item = dataset[i]
        assert torch.all(item[3] == 1)
    # a fully transparent column shows the solid background colour, one of {-1, 0, 1} per channel
    item = RGBADataset(files[:1], size=16, crop="none", resize_short_side=False, blend_prob=1.0)[0]
    assert set(item[:3, :, 0].unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_blend_prob_zero_keeps_alpha(files):
    assert (RGBADataset(files, size=16)[0][3] < 1).any()


def test_scale_alpha_scales_alpha_in_unit_space_and_keeps_colour():
    pixels = torch.tensor([0.2, -0.4, 0.9, 1.0, 0.1, 0.3, -1.0, -1.0]).view(2, 4).T.reshape(4, 1, 2)
    scaled = scale_alpha(pixels, 0.5)
    assert torch.equal(scaled[:3], pixels[:3])
    assert torch.allclose((scaled[3] + 1) / 2, torch.tensor([[0.5, 0.0]]))  # opaque -> 0.5, transparent stays 0
    assert torch.equal(pixels[3], torch.tensor([[1.0, -1.0]]))  # input untouched


def test_alpha_scale_augmentation_makes_translucent_crops(files):
    plain = RGBADataset(files, size=16, seed=5)
    scaled = RGBADataset(files, size=16, seed=5, alpha_scale_prob=1.0, alpha_scale_min=0.3)
    factors = []
    for i in range(len(plain)):
        before, after = (plain[i][3] + 1) / 2, (scaled[i][3] + 1) / 2
        assert torch.equal(scaled[i][:3], plain[i][:3])  # same crop (the augmentation draws after it)
        factors.append(float(after.max() / before.max()))
        assert 0.3 - 1e-6 <= factors[-1] <= 1
        assert torch.allclose(after, before * factors[-1], atol=1e-6)
    assert len(set(factors)) == len(factors)  # one factor drawn per item
    # blended crops are opaque composites, never made translucent
    blended = RGBADataset(files, size=16, seed=5, blend_prob=1.0, alpha_scale_prob=1.0)
    assert all(torch.all(blended[i][3] == 1) for i in range(len(files)))


@pytest.mark.parametrize("background", ["solid", "palette", "image"])
def test_opaque_items_are_rgb(files, background):
    dataset = RGBADataset(files, size=16, opaque=True, opaque_background=background)
    item = dataset[(1, 2)]
    assert item.shape == (3, 16, 16)
    assert item.min() >= -1 and item.max() <= 1
    assert torch.equal(item, dataset[(1, 2)])


def test_manifest_split_selection(tmp_path, files):
    lines = [{"file": f.name, "split": s} for f, s in zip(files, ["train", "val", "train", "test"])]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    dataset = RGBADataset(tmp_path / "manifest.jsonl", split="train", size=8)
    assert [p.name for p in dataset.files] == ["img0.png", "img2.png"]
    with pytest.raises(ValueError, match="no images"):
        RGBADataset(tmp_path / "manifest.jsonl", split="nope")


def test_folder_source(tmp_path, files):
    dataset = RGBADataset(tmp_path, size=8, crop="center")
    assert dataset.files == sorted(files)
    assert torch.equal(dataset[2], RGBADataset(files, size=8, crop="center")[2])


def test_data_folder_is_the_folder_or_the_manifests_folder(tmp_path):
    (tmp_path / "set").mkdir()
    assert data_folder(tmp_path / "set") == tmp_path / "set"
    assert data_folder(str(tmp_path / "set" / "manifest.jsonl")) == tmp_path / "set"


def test_bad_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match="broken.png"):
        RGBADataset([bad], size=8)[0]


def test_a_strip_too_thin_to_resize_is_an_unreadable_image_not_a_crash(tmp_path):
    """A 2000x1 PNG resized to a short side of 512 would take 512x1,024,000 pixels (gigabytes): skipped as
    unreadable, as the training commands skip any bad image, instead of crashing the run."""
    strip = tmp_path / "strip.png"
    Image.new("RGBA", (2000, 1), (255, 0, 0, 255)).save(strip)
    with pytest.raises(ImageLoadError, match=r"strip\.png: 2000x1 px resized to a short side of 512 would be "
                                             r"524288000 pixels, above max_pixels=67108864"):
        RGBADataset([strip], size=512)[0]
    assert RGBADataset([strip], size=8)[0].shape == (4, 8, 8)  # 16000x8: within the limit


def test_bad_arguments():
    with pytest.raises(ValueError, match="crop"):
        RGBADataset(["x.png"], crop="diagonal")
    with pytest.raises(ValueError, match="blend_prob"):
        RGBADataset(["x.png"], blend_prob=2)
    with pytest.raises(ValueError, match="alpha_scale"):
        RGBADataset(["x.png"], alpha_scale_min=-0.1)


def test_crop_square_random_within_bounds():
    pixels = torch.arange(4 * 10 * 12, dtype=torch.float32).view(4, 10, 12) / 480 * 2 - 1
    crop = crop_square(pixels, 6, "random", item_generator(0, 0, 0))
    assert crop.shape == (4, 6, 6)
    assert torch.equal(crop, crop_square(pixels, 6, "random", item_generator(0, 0, 0)))


def test_sampler_shards_reproduce_single_process_batches():
    single = StepBatchSampler(20, 4, 12, seed=1)
    ranks = [StepBatchSampler(20, 4, 12, seed=1, rank=r, world_size=2) for r in range(2)]
    for step, batch in enumerate(single):
        assert ranks[0].batch(step) + ranks[1].batch(step) == batch
    # every item once per epoch (5 steps of 4 out of 20)
    first_epoch = [key for step in range(5) for key in single.batch(step)]
    assert sorted(i for _, i in first_epoch) == list(range(20)) and {e for e, _ in first_epoch} == {0}
    assert single.batch(5)[0][0] == 1


def test_sampler_resumes_at_step():
    full = list(StepBatchSampler(10, 2, 9, seed=4))
    resumed = StepBatchSampler(10, 2, 9, seed=4, start_step=6)
    assert len(resumed) == 3 and list(resumed) == full[6:]


def test_sampler_rejects_uneven_world_size():
    with pytest.raises(ValueError, match="multiple"):
        StepBatchSampler(10, 3, 5, world_size=2)


def test_dataloader_with_workers_matches_direct_access(files):
    dataset = RGBADataset(files, size=8, blend_prob=0.3, seed=7)
    sampler = StepBatchSampler(len(dataset), 2, 3, seed=7)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=2)
    for step, batch in enumerate(loader):
        assert torch.equal(batch, torch.stack([dataset[key] for key in sampler.batch(step)]))


def test_an_image_unreadable_mid_run_is_replaced_by_the_next_across_workers(files):
    """torch re-raised a worker's ImageLoadError as a RuntimeError holding the worker's traceback; the item is
    now the next readable image's (with that image's randomness) and the failure comes with the batch."""
    dataset = RGBADataset(files, size=8, seed=7)
    files[1].write_bytes(b"damaged since the start")
    wrapped = SubstituteUnreadable(dataset)
    sampler = StepBatchSampler(len(dataset), 2, 2, seed=7)
    loader = torch.utils.data.DataLoader(wrapped, batch_sampler=sampler, num_workers=1,
                                         collate_fn=SubstituteUnreadable.collate)
    failures = []
    for step, (batch, unreadable) in enumerate(loader):
        keys = [(epoch, index + (index == 1)) for epoch, index in sampler.batch(step)]
        assert torch.equal(batch, torch.stack([dataset[key] for key in keys]))
        failures += unreadable
    assert failures == [f"{files[1]}: not a readable image (Pillow recognises no image format in it)"]  # 4 items: img1 once
    for path in files:
        path.unlink()
    assert SubstituteUnreadable.collate([wrapped[(0, 0)]]) == (None, [f"{p}: file not found" for p in files])


def test_readable_files_checks_images_as_items_load_them(tmp_path, files):
    """One scan for both trainers: an image too thin to resize (found by train-vae's decode-only scan only when
    training met it) and an undecodable file are left out, named."""
    strip = tmp_path / "strip.png"
    Image.new("RGBA", (2000, 1), (255, 0, 0, 255)).save(strip)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    good, failed = readable_files(RGBADataset([*files, strip, tmp_path / "broken.png"], size=512), show_progress=False)
    assert good == files
    assert [message.split(":")[0] for message in failed] == [str(strip), str(tmp_path / "broken.png")]
