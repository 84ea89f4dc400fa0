"""Tests for alphavae.reconstruct and the ``alphavae reconstruct`` command (tiny converted VAE on disk)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alphavae.cli import main
from alphavae.io import composite, load_rgba
from alphavae.reconstruct import comparison_grid, reconstruct_files
from alphavae.vae import RGBAVAE
from fixtures_io import palette_image, write_png16


def _rgba_png(path, height, width, seed=0):
    values = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values, "RGBA").save(path)
    return path


def _run(*args) -> int:
    return main(["reconstruct", *map(str, args), "--quiet"])


def test_min_side_reconstructs_small_images_on_a_canvas_at_their_own_size(tmp_path, tiny_rgba_dir):
    """--min-side 32: the 17x33 image runs on a 32x33 transparent canvas (RGBAVAE.reconstruct(min_side=32)) and is
    written at 17x33; the 1x1 one on 32x32."""
    for height, width in [(17, 33), (1, 1)]:
        _rgba_png(tmp_path / "in" / f"{height}x{width}.png", height, width)
    assert _run(tmp_path / "in", "-o", tmp_path / "out", "--vae", tiny_rgba_dir, "--min-side", "32") == 0
    vae = RGBAVAE.from_pretrained(tiny_rgba_dir)
    for height, width in [(17, 33), (1, 1)]:
        pixels = load_rgba(tmp_path / "in" / f"{height}x{width}.png")
        written = load_rgba(tmp_path / "out" / f"{height}x{width}.png")
        assert written.shape == pixels.shape
        expected = vae.reconstruct(pixels[None], min_side=32)[0]
        for background in ("black", "white"):  # composites: colour under alpha 0 is stored as 0 in the PNG
            assert torch.allclose(composite(written, background), composite(expected, background), atol=3 / 127.5)
    with pytest.raises(SystemExit) as exit_info:  # an argparse error
        main(["reconstruct", str(tmp_path / "in"), "-o", str(tmp_path / "x"), "--min-side", "0"])
    assert exit_info.value.code == 2


def test_min_side_keeps_images_thinner_than_a_latent_cell(tmp_path, capsys):
    """A 1x1 opaque red image reconstructed by the shipped model with --min-side 64 came back at alpha 4/255
    (1x5: 37/255, 5x1: 26/255): alone on the transparent canvas it is a detail below the VAE's 8 px latent cell.
    Its sides are now extended to 8 px by repeating its edge pixels before the canvas (io.pad_to_canvas)."""
    sizes = [(1, 1), (1, 5), (5, 1)]
    for height, width in sizes:
        (tmp_path / "in").mkdir(exist_ok=True)
        Image.new("RGBA", (width, height), (255, 0, 0, 255)).save(tmp_path / "in" / f"{height}x{width}.png")
    assert _run(tmp_path / "in", "-o", tmp_path / "out", "--min-side", "64", "--dtype", "float32") == 0
    for height, width in sizes:
        values = np.asarray(Image.open(tmp_path / "out" / f"{height}x{width}.png")).astype(int)
        assert values.shape == (height, width, 4)
        assert values[..., 3].min() >= 220 and values[..., 0].min() >= 200, values  # opaque and red ...
        assert values[..., 1:3].max() <= 60, values  # ... not some other colour


def test_input_folders_are_listed_once(tmp_path, tiny_rgba_dir, monkeypatch):
    """reconstruct walked every input folder twice: once to refuse inputs without images before the model
    loads, again to reconstruct (a big tree costs twice, and one that changes in between gives two lists)."""
    import alphavae.io.files as files

    walked, walk = [], files._folder_images
    monkeypatch.setattr(files, "_folder_images", lambda root, *rest: walked.append(root) or walk(root, *rest))
    _rgba_png(tmp_path / "in" / "sub" / "a.png", 8, 8)
    assert _run(tmp_path / "in", tmp_path / "missing", "-o", tmp_path / "out", "--vae", tiny_rgba_dir) == 1
    assert walked == [tmp_path / "in"] and (tmp_path / "out" / "sub" / "a.png").is_file()


def test_a_listing_that_would_write_outside_the_output_folder_is_refused(tmp_path, tiny_rgba_dir):
    """reconstruct_files(listing=...) wrote each listed image to output_dir / its relative path: an absolute or
    ``..`` relative path put a reconstruction outside the output folder."""
    from alphavae.io import list_images_reporting

    source = _rgba_png(tmp_path / "in" / "sub" / "a.png", 8, 8)
    vae, out = RGBAVAE.from_pretrained(tiny_rgba_dir), tmp_path / "out"
    for relative in (tmp_path / "elsewhere" / "a.png", Path("..") / "escaped.png", Path("sub") / ".." / ".." / "x.png"):
        with pytest.raises(ValueError, match=rf"^listing: {source} has the relative path '{re.escape(str(relative))}', "
                                             "which would write outside the output folder"):
            reconstruct_files([tmp_path / "in"], out, vae=vae, progress=False, listing=([(source, relative)], []))
    assert not list(tmp_path.rglob("*escaped*")) and not (tmp_path / "elsewhere").exists() and not out.exists()
    for inputs in ([tmp_path / "in"], [source], [os.path.relpath(source)]):  # folder, file, relative file path
        listing = list_images_reporting(inputs)
        report = reconstruct_files(inputs, out, vae=vae, progress=False, overwrite=True, listing=listing)
        assert report.ok and len(report.written) == 1


def test_sizes_come_back_exactly(tmp_path, tiny_rgba_dir):
    sizes = [(1, 1), (17, 33), (200, 7)]
    for height, width in sizes:
        _rgba_png(tmp_path / "in" / "sub" / f"{height}x{width}.png", height, width)
    assert _run(tmp_path / "in", "-o", tmp_path / "out", "--vae", tiny_rgba_dir, "--grid", tmp_path / "grids") == 0
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == sorted(["sub"] + [f"{h}x{w}.png" for h, w in sizes])
    assert _run(tmp_path / "in", "-o", tmp_path / "out2", "--vae", tiny_rgba_dir, "--grid", tmp_path / "in" / "g") == 2
    for height, width in sizes:
        output = Image.open(tmp_path / "out" / "sub" / f"{height}x{width}.png")
        assert output.mode == "RGBA" and output.size == (width, height)
        grid = load_rgba(tmp_path / "grids" / "sub" / f"{height}x{width}.grid.png")
        expected = comparison_grid(load_rgba(tmp_path / "in" / "sub" / f"{height}x{width}.png"),
                                   load_rgba(tmp_path / "out" / "sub" / f"{height}x{width}.png"))
        assert grid.shape[1] >= 2 * height and grid.shape[2] >= 3 * width
        assert grid.shape == expected.shape  # the labelled grid of the input and the written output, within
        assert torch.allclose(grid, expected, atol=4 / 255)  # 8-bit rounding of output and grid (2 levels)
    tiled = ["--tile-size", "24", "--tile-overlap", "8", "--tile-mode", "exact"]
    (tmp_path / "in" / "sub" / "200x7.png").unlink()  # 25 tiles x one pass per GroupNorm: slow for a unit test
    assert _run(tmp_path / "in", "-o", tmp_path / "tiled", "--vae", tiny_rgba_dir, *tiled) == 0
    assert Image.open(tmp_path / "tiled" / "sub" / "17x33.png").size == (33, 17)


def test_bad_files_are_reported_and_skipped(tmp_path, tiny_rgba_dir, capsys):
    folder = tmp_path / "in"
    good = _rgba_png(folder / "good.png", 12, 20)
    (folder / "broken.png").write_bytes(good.read_bytes()[:60])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image\n")
    palette_image(bytes([0, 128, 255, 255])).save(folder / "palette.png")
    write_png16(folder / "deep.png", np.full((9, 5, 4), 40000, dtype=np.uint16), greyscale=False, alpha=True)
    Image.new("RGB", (10, 6), (200, 30, 40)).save(folder / "photo.jpg")
    assert _run(folder, "-o", tmp_path / "out", "--vae", tiny_rgba_dir, "--batch-size", "2") == 1
    err = capsys.readouterr().err
    assert "4 written, 0 skipped (exist), 3 failed" in err
    for name in ("broken.png", "empty.png", "text.png"):
        assert name in err
        assert not (tmp_path / "out" / name).exists()
    for name, size in [("good.png", (20, 12)), ("palette.png", (4, 4)), ("deep.png", (5, 9)), ("photo.png", (10, 6))]:
        output = Image.open(tmp_path / "out" / name)
        assert output.mode == "RGBA" and output.size == size


def test_a_failure_stays_one_line_whatever_the_file_name_holds(tmp_path, tiny_rgba_dir, capsys):
    """A newline in a file name split its failure line in two, the second looking like another failure."""
    folder = tmp_path / "in"
    _rgba_png(folder / "good.png", 12, 20)
    (folder / "evil\nFAILED fake.png").write_text("not an image\n")
    assert _run(folder, "-o", tmp_path / "out", "--vae", tiny_rgba_dir) == 1
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if "FAILED" in line] == [
        f"  FAILED {folder}/evil\\nFAILED fake.png: not a readable image (Pillow recognises no image format in it)"]
    assert main(["background-moments", str(folder)]) == 1
    skipped = [line for line in capsys.readouterr().err.splitlines() if "skipped:" in line]
    assert len(skipped) == 1 and "evil\\nFAILED fake.png" in skipped[0]


def test_skip_existing_and_overwrite(tmp_path, tiny_rgba_dir):
    image = _rgba_png(tmp_path / "in" / "a.png", 8, 8)
    out = tmp_path / "out"
    vae = RGBAVAE.from_pretrained(tiny_rgba_dir)
    first = reconstruct_files(image, out, vae=vae, progress=False)
    assert [p.name for p in first.written] == ["a.png"]
    (out / "a.png").write_bytes(b"sentinel")
    second = reconstruct_files(image, out, vae=vae, progress=False)
    assert second.skipped == [out / "a.png"] and (out / "a.png").read_bytes() == b"sentinel"
    third = reconstruct_files(image, out, vae=vae, overwrite=True, progress=False)
    assert third.written == [out / "a.png"] and load_rgba(out / "a.png").shape == (4, 8, 8)


def test_an_output_made_meanwhile_by_another_run_is_skipped_not_failed(tmp_path, tiny_rgba_dir):
    """Two runs into one folder: the one that lost the race reported "FAILED ... (pass overwrite=True ...)"."""
    image = _rgba_png(tmp_path / "in" / "a.png", 8, 8)
    out = tmp_path / "out"
    vae = RGBAVAE.from_pretrained(tiny_rgba_dir)
    reconstruct_images = vae.reconstruct_images

    def racing(*args, **kwargs):  # the other run writes a.png while this one reconstructs it
        out.mkdir(exist_ok=True)
        (out / "a.png").write_bytes(b"the other run's")
        return reconstruct_images(*args, **kwargs)

    vae.reconstruct_images = racing
    report = reconstruct_files(image, out, vae=vae, progress=False)
    assert report.skipped == [out / "a.png"] and not report.failed and not report.written
    assert (out / "a.png").read_bytes() == b"the other run's"


def test_name_collision_is_a_failure(tmp_path, tiny_rgba_dir):
    _rgba_png(tmp_path / "in" / "a.png", 8, 8)
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.jpg")
    report = reconstruct_files(tmp_path / "in", tmp_path / "out", vae=RGBAVAE.from_pretrained(tiny_rgba_dir),
                               progress=False)
    assert len(report.written) == 1 and len(report.failed) == 1
    assert "is also the output of" in report.failed[0][1] and "same name with another extension" in report.failed[0][1]
    _rgba_png(tmp_path / "other" / "a.png", 8, 8)
    report = reconstruct_files([tmp_path / "in" / "a.png", tmp_path / "other"], tmp_path / "out2",
                               vae=RGBAVAE.from_pretrained(tiny_rgba_dir), progress=False)
    reason = (f"output {tmp_path / 'out2' / 'a.png'} is also the output of {tmp_path / 'in' / 'a.png'} "
              "(same path inside another input folder); rename one of them")
    assert report.failed == [(tmp_path / "other" / "a.png", reason)]


def test_unreadable_input_does_not_take_the_output_name(tmp_path, tiny_rgba_dir):
    """Three truncated a.gif/a.jpg/a.webp each report their own decode error; a readable a.png after a
    truncated a.jpg is written (only a loaded or skipped input claims out/a.png)."""
    good = _rgba_png(tmp_path / "good.png", 8, 8)
    for suffix, fmt in ((".gif", "GIF"), (".jpg", "JPEG"), (".webp", "WEBP")):
        Image.open(good).convert("RGB").save(tmp_path / "full", format=fmt)
        (tmp_path / "trunc" / f"a{suffix}").parent.mkdir(exist_ok=True)
        (tmp_path / "trunc" / f"a{suffix}").write_bytes((tmp_path / "full").read_bytes()[:40])
    vae = RGBAVAE.from_pretrained(tiny_rgba_dir)
    report = reconstruct_files(tmp_path / "trunc", tmp_path / "out", vae=vae, progress=False)
    assert [path.name for path, _ in report.failed] == ["a.gif", "a.jpg", "a.webp"]
    assert not any("output" in reason for _, reason in report.failed)  # each its own load error
    (tmp_path / "trunc" / "a.gif").unlink()
    (tmp_path / "trunc" / "a.webp").unlink()
    good.rename(tmp_path / "trunc" / "a.png")  # sorted after a.jpg
    report = reconstruct_files(tmp_path / "trunc", tmp_path / "out", vae=vae, progress=False)
    assert report.written == [tmp_path / "out" / "a.png"] and [p.name for p, _ in report.failed] == ["a.jpg"]


def test_refuses_output_inside_input(tmp_path, tiny_rgba_dir, capsys):
    _rgba_png(tmp_path / "in" / "a.png", 8, 8)
    assert _run(tmp_path / "in", "-o", tmp_path / "in" / "out", "--vae", tiny_rgba_dir) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "in" / "out").exists()
    with pytest.raises(ValueError):
        reconstruct_files(tmp_path / "in", tmp_path / "in", vae=RGBAVAE.from_pretrained(tiny_rgba_dir))


def test_missing_default_model_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import alphavae.vae

    monkeypatch.setattr(alphavae.vae, "DEFAULT_MODEL_DIR", tmp_path / "absent")
    _rgba_png(tmp_path / "in" / "a.png", 8, 8)
    assert _run(tmp_path / "in", "-o", tmp_path / "out") == 2
    assert "pass a VAE path" in capsys.readouterr().err


def test_never_overwrites_an_input_file(tmp_path, tiny_rgba_dir, capsys):
    """A file input whose output path is the input itself fails (even with --overwrite); a file as OUT is refused."""
    image = _rgba_png(tmp_path / "a.png", 8, 8)
    before = image.read_bytes()
    assert _run(image, "-o", tmp_path, "--vae", tiny_rgba_dir, "--overwrite") == 1
    assert "overwrite its input" in capsys.readouterr().err and image.read_bytes() == before
    assert _run(image, "-o", image, "--vae", tiny_rgba_dir) == 2
    assert "not a folder" in capsys.readouterr().err


def test_symlinked_files_keep_their_own_names(tmp_path, tiny_rgba_dir):
    """A symlink beside its target gives an output under each name; a dangling link is a reported failure."""
    image = _rgba_png(tmp_path / "in" / "real.png", 8, 8)
    (tmp_path / "in" / "alias.png").symlink_to(image)
    (tmp_path / "in" / "dangling.png").symlink_to(tmp_path / "gone.png")
    report = reconstruct_files(tmp_path / "in", tmp_path / "out", vae=RGBAVAE.from_pretrained(tiny_rgba_dir),
                               progress=False)
    assert sorted(p.name for p in report.written) == ["alias.png", "real.png"]
    assert [(p.name, "not found" in reason) for p, reason in report.failed] == [("dangling.png", True)]


def test_unusable_device_is_one_line(tmp_path, tiny_rgba_dir, capsys):
    _rgba_png(tmp_path / "a.png", 8, 8)
    assert _run(tmp_path / "a.png", "-o", tmp_path / "out", "--vae", tiny_rgba_dir, "--device", "cuda:7") == 2
    err = capsys.readouterr().err.strip()
    assert "device" in err and "\n" not in err and "Traceback" not in err


def test_warnings_are_one_line(tmp_path, tiny_rgba_dir, capsys):
    frames = [Image.new("RGBA", (8, 8), (60 * i, 0, 0, 128)) for i in range(3)]
    (tmp_path / "in").mkdir()
    frames[0].save(tmp_path / "in" / "anim.gif", save_all=True, append_images=frames[1:])
    assert _run(tmp_path / "in" / "anim.gif", "-o", tmp_path / "out", "--vae", tiny_rgba_dir) == 0
    err = capsys.readouterr().err
    assert "alphavae reconstruct: warning:" in err and "3 frames" in err and "UserWarning" not in err


def test_failed_batch_is_retried_image_by_image(tmp_path, tiny_rgba_dir, monkeypatch):
    """One image the model cannot process fails alone; the other image of its batch is written."""
    _rgba_png(tmp_path / "in" / "bad.png", 1, 1)
    _rgba_png(tmp_path / "in" / "good.png", 8, 8)
    vae = RGBAVAE.from_pretrained(tiny_rgba_dir)
    real = vae.reconstruct

    def picky(pixels, **kwargs):
        if pixels.shape[-1] == 1:
            raise RuntimeError("too small for this model")
        return real(pixels, **kwargs)

    monkeypatch.setattr(vae, "reconstruct", picky)
    report = reconstruct_files(tmp_path / "in", tmp_path / "out", vae=vae, batch_size=2, progress=False)
    assert [p.name for p in report.written] == ["good.png"]
    assert [(p.name, "too small" in reason) for p, reason in report.failed] == [("bad.png", True)]


def test_missing_input_is_a_failure_and_the_rest_run(tmp_path, tiny_rgba_dir, capsys):
    _rgba_png(tmp_path / "small" / "a.png", 8, 8)
    assert _run(tmp_path / "small", tmp_path / "nope.png", "-o", tmp_path / "out", "--vae", tiny_rgba_dir) == 1
    err = capsys.readouterr().err
    assert "1 written, 0 skipped (exist), 1 failed (1 input path unusable)\n" in err
    assert "nope.png: input does not exist" in err
    assert (tmp_path / "out" / "a.png").is_file()


def test_folder_at_an_output_path_is_a_failure(tmp_path, tiny_rgba_dir, capsys):
    _rgba_png(tmp_path / "in" / "normal.png", 8, 8)
    _rgba_png(tmp_path / "in" / "other.png", 8, 8)
    (tmp_path / "out" / "normal.png").mkdir(parents=True)
    for extra in ((), ("--overwrite",)):
        assert _run(tmp_path / "in", "-o", tmp_path / "out", "--vae", tiny_rgba_dir, *extra) == 1
        err = capsys.readouterr().err
        assert "normal.png is a directory" in err and "1 failed" in err
        assert (tmp_path / "out" / "normal.png").is_dir() and (tmp_path / "out" / "other.png").is_file()


def test_longest_file_names_are_written(tmp_path, tiny_rgba_dir):
    """A 250-byte input name gives a 250-byte output and a 255-byte grid name (the temporary names are shorter)."""
    name = "n" * 246 + ".png"
    _rgba_png(tmp_path / "in" / name, 8, 8)
    assert _run(tmp_path / "in", "-o", tmp_path / "out", "--vae", tiny_rgba_dir, "--grid", tmp_path / "grids") == 0
    assert load_rgba(tmp_path / "out" / name).shape == (4, 8, 8)
    assert (tmp_path / "grids" / name.replace(".png", ".grid.png")).is_file()


def test_non_regular_inputs_and_empty_folders_fail(tmp_path, tiny_rgba_dir, capsys):
    """A FIFO (never opened: that would block; given directly or inside an input folder), a device and a
    folder without images are failures by name."""
    good = _rgba_png(tmp_path / "in" / "good.png", 8, 8)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    os.mkfifo(tmp_path / "in" / "pipe.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here\n")
    args = [good.parent, fifo, os.devnull, tmp_path / "empty", "-o", tmp_path / "out", "--vae", tiny_rgba_dir]
    assert _run(*args) == 1
    err = capsys.readouterr().err
    # the count said "4 failed" for 3 input paths given and 1 image found in a folder given
    assert "1 written, 0 skipped (exist), 4 failed (3 input paths unusable, 1 image)\n" in err
    assert f"{tmp_path / 'in' / 'pipe.png'}: is a FIFO (named pipe)" in err
    assert f"{fifo}: input is a FIFO" in err and f"{os.devnull}: input is a character device" in err
    assert f"{tmp_path / 'empty'}: no image files in this folder" in err
    assert _run(tmp_path / "empty", "-o", tmp_path / "out2", "--vae", tiny_rgba_dir) == 2
    assert "no image files" in capsys.readouterr().err


def test_grid_failure_is_reported_apart_and_made_on_rerun(tmp_path, tiny_rgba_dir, capsys):
    """A grid that cannot be written leaves the reconstruction counted as written; a rerun makes the grid."""
    _rgba_png(tmp_path / "in" / "a.png", 6, 10)
    blocker = tmp_path / "grids" / "a.grid.png"
    blocker.mkdir(parents=True)
    args = [tmp_path / "in", "-o", tmp_path / "out", "--vae", tiny_rgba_dir, "--grid", tmp_path / "grids"]
    assert _run(*args) == 1
    err = capsys.readouterr().err
    assert "1 written, 0 skipped (exist), 0 failed; grids: 0 written, 0 skipped (exist), 1 failed" in err
    assert f"GRID FAILED {blocker}: grid path is a directory" in err
    assert (tmp_path / "out" / "a.png").is_file()
    blocker.rmdir()
    assert _run(*args) == 0
    assert "0 written, 1 skipped (exist), 0 failed; grids: 1 written, 0 skipped (exist), 0 failed" in (
        capsys.readouterr().out)
    expected = comparison_grid(load_rgba(tmp_path / "in" / "a.png"), load_rgba(tmp_path / "out" / "a.png"))
    assert torch.equal(load_rgba(blocker), expected)  # made from the input and the existing output


@pytest.mark.parametrize(("option", "value", "message"), [("--batch-size", "0", "0 is below 1"),
                                                           ("--tile-size", "-64", "-64 is below 1"),
                                                           ("--tile-overlap", "x", "'x' is not an integer")])
def test_bad_numbers_are_refused_before_the_model_loads(tmp_path, capsys, option, value, message):
    missing_model = tmp_path / "no-such-vae"  # loading it would fail with a different error
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path / "in.png", "-o", tmp_path / "out", "--vae", missing_model, option, value)
    assert exit_info.value.code == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tile_overlap_without_tile_size_is_refused(tmp_path, capsys):
    """--tile-overlap alone would be ignored (no tiling without --tile-size): refused before the model loads."""
    assert _run(tmp_path / "in.png", "-o", tmp_path / "out", "--vae", tmp_path / "no-such-vae",
                "--tile-overlap", "64") == 2
    assert "--tile-overlap needs --tile-size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_grid_never_replaces_an_input_file(tmp_path, tiny_rgba_dir, capsys):
    """Input files a.png and a.grid.png with --grid in their own folder: the grid of a.png would be a.grid.png,
    an input; it is refused, even with --overwrite (a.grid.png's own reconstruction is still written)."""
    image = _rgba_png(tmp_path / "in" / "a.png", 8, 8)
    other = _rgba_png(tmp_path / "in" / "a.grid.png", 6, 6, seed=1)
    before = other.read_bytes()
    assert _run(image, other, "-o", tmp_path / "out", "--vae", tiny_rgba_dir, "--grid", tmp_path / "in",
                "--overwrite") == 1
    err = capsys.readouterr().err
    assert f"GRID FAILED {other}: would overwrite an input file" in err and other.read_bytes() == before
    assert "2 written, 0 skipped (exist), 0 failed; grids: 1 written, 0 skipped (exist), 1 failed" in err
    assert load_rgba(tmp_path / "out" / "a.grid.png").shape == (4, 6, 6)  # a reconstruction, not a grid


@pytest.mark.parametrize("grids, relation",
                         [(".", "is the same folder as"), ("grids", "is inside"), ("..", "contains")])
def test_grid_folder_apart_from_the_output_folder(tmp_path, tiny_rgba_dir, capsys, grids, relation):
    """A grid folder equal to, inside or containing OUT could replace a reconstruction: refused up front."""
    _rgba_png(tmp_path / "in" / "a.png", 8, 8)
    out = tmp_path / "work" / "out"
    assert _run(tmp_path / "in", "-o", out, "--vae", tiny_rgba_dir, "--grid", out / grids) == 2
    err = capsys.readouterr().err.strip()
    assert f"grid folder {out / grids} {relation} the output folder {out}" in err and "\n" not in err
    assert not out.exists()


def test_grid_folder_inside_an_input_folder_is_called_the_grid_folder(tmp_path, tiny_rgba_dir, capsys):
    _rgba_png(tmp_path / "in" / "a.png", 8, 8)
    grids = tmp_path / "in" / "grids"
    assert _run(tmp_path / "in", "-o", tmp_path / "out", "--vae", tiny_rgba_dir, "--grid", grids) == 2
    assert capsys.readouterr().err == (f"alphavae reconstruct: error: grid folder {grids} is inside input folder "
                                       f"{tmp_path / 'in'}; choose one outside the inputs\n")
    assert not grids.exists() and not (tmp_path / "out").exists()


def test_existing_grids_are_kept_unless_overwrite(tmp_path, tiny_rgba_dir, capsys):
    _rgba_png(tmp_path / "in" / "a.png", 8, 8)
    precious = tmp_path / "grids" / "a.grid.png"
    precious.parent.mkdir()
    precious.write_bytes(b"precious")
    args = [tmp_path / "in", "-o", tmp_path / "out", "--vae", tiny_rgba_dir, "--grid", tmp_path / "grids"]
    assert _run(*args) == 0
    assert "1 written, 0 skipped (exist), 0 failed; grids: 0 written, 1 skipped (exist), 0 failed" in (
        capsys.readouterr().out)
    assert precious.read_bytes() == b"precious"
    assert _run(*args, "--overwrite") == 0
    assert "grids: 1 written, 0 skipped (exist), 0 failed" in capsys.readouterr().out
    expected = comparison_grid(load_rgba(tmp_path / "in" / "a.png"), load_rgba(tmp_path / "out" / "a.png"))
    assert torch.allclose(load_rgba(precious), expected, atol=4 / 255)


def test_unwritable_output_folder_is_refused_before_the_model(tmp_path, monkeypatch, capsys):
    """The write probe runs before the model loads (here a missing model that would fail otherwise)."""
    import tempfile

    _rgba_png(tmp_path / "in" / "a.png", 8, 8)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    for extra in ((), ("--grid", tmp_path / "grids")):
        assert _run(tmp_path / "in", "-o", tmp_path / "ro", "--vae", tmp_path / "no-such-vae", *extra) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"alphavae reconstruct: error: {tmp_path / 'ro'}: cannot write outputs there (Permission denied)"
    monkeypatch.undo()
    (tmp_path / "file.txt").write_text("x")
    assert _run(tmp_path / "in", "-o", tmp_path / "out", "--vae", tmp_path / "no-such-vae",
                "--grid", tmp_path / "file.txt" / "grids") == 2
    assert "cannot write grids there" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_write_failures_name_the_final_path_and_a_full_disk_stops(tmp_path, tiny_rgba_dir, monkeypatch, capsys):
    """A failed write names out/<name>.png, not atomic_write's hidden temporary file; other errors continue,
    the first "no space left on device" stops the run with the summary (no temporary file is left)."""
    for name in "abcde":
        _rgba_png(tmp_path / "in" / f"{name}.png", 8, 8)
    real_save = Image.Image.save
    errors = {"b": (13, "Permission denied"), "c": (28, "No space left on device")}

    def failing_save(self, target, *args, **kwargs):
        error = errors.get(Path(target).name[1])  # temporary names are .<name>.png.<random>.tmp
        if error:
            raise OSError(*error, str(target))
        return real_save(self, target, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    assert _run(tmp_path / "in", "-o", tmp_path / "out", "--vae", tiny_rgba_dir, "--batch-size", "2") == 1
    err = capsys.readouterr().err
    out = tmp_path / "out"
    assert "1 written, 0 skipped (exist), 2 failed" in err
    assert f"FAILED {tmp_path / 'in' / 'b.png'}: cannot write {out / 'b.png'} (Permission denied)" in err
    assert f"FAILED {tmp_path / 'in' / 'c.png'}: cannot write {out / 'c.png'} (No space left on device)" in err
    assert f"STOPPED: no space left on device (writing {out / 'c.png'}); 2 more input(s) not processed" in err
    assert ".tmp" not in err and sorted(p.name for p in out.iterdir()) == ["a.png"]


def test_outputs_and_grids_never_land_inside_an_input_folder(tmp_path, tiny_rgba_dir, capsys):
    """An output (or grid) folder that contains an input folder: P/in/in/a.png read from P/in would be written
    as P/in/a.png, inside the input tree (a later run over P/in would read it as an input)."""
    inputs = tmp_path / "P" / "in"
    _rgba_png(inputs / "in" / "a.png", 8, 8)
    _rgba_png(inputs / "b.png", 8, 8, seed=1)
    before = sorted(p.relative_to(inputs) for p in inputs.rglob("*"))
    assert _run(inputs, "-o", tmp_path / "P", "--vae", tiny_rgba_dir) == 1
    err = capsys.readouterr().err
    assert f"FAILED {inputs / 'in' / 'a.png'}: output {inputs / 'a.png'} would land inside input folder {inputs}" in err
    assert (tmp_path / "P" / "b.png").is_file() and sorted(p.relative_to(inputs) for p in inputs.rglob("*")) == before
    assert _run(inputs, "-o", tmp_path / "out", "--vae", tiny_rgba_dir, "--grid", tmp_path / "P") == 1
    err = capsys.readouterr().err
    assert f"GRID FAILED {inputs / 'a.grid.png'}: would land inside input folder {inputs}" in err
    assert (tmp_path / "P" / "b.grid.png").is_file()
    assert sorted(p.relative_to(inputs) for p in inputs.rglob("*")) == before


def test_readme_main_job_prints_the_documented_numbers(tmp_path, monkeypatch, capsys):
    """The README's first command (reconstruct + eval on the bundled samples with the shipped model), run as
    written from a folder holding ``examples``, prints the headline numbers the README quotes, digit for digit:
    a change in numerics (model, resampling, metrics) fails here until the documentation is updated."""
    import re
    import shlex

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    command = readme.split("```bash\n", 1)[1].split("\n", 1)[0]
    jobs = [shlex.split(part) for part in command.split("&&") if "bin/alphavae " in part]
    assert [job[1] for job in jobs] == ["reconstruct", "eval"]
    quoted = re.search(r"`(9-background PSNR [^`]+ \(micro / macro\))`", readme).group(1)
    (tmp_path / "examples").symlink_to(root / "examples")
    monkeypatch.chdir(tmp_path)
    for job in jobs:
        assert main([*job[1:], "--quiet"] if job[1] == "reconstruct" else job[1:]) == 0
    assert quoted in capsys.readouterr().out.splitlines()


def test_one_folder_given_twice_through_a_symlink(tmp_path, tiny_rgba_dir):
    """``reconstruct DIR DIRLINK``: the second copy of each file is named as the same file given twice, not
    as a name clash to rename; its output is made once."""
    _rgba_png(tmp_path / "in" / "a.png", 8, 8)
    (tmp_path / "link").symlink_to(tmp_path / "in")
    report = reconstruct_files([tmp_path / "in", tmp_path / "link"], tmp_path / "out",
                               vae=RGBAVAE.from_pretrained(tiny_rgba_dir), progress=False)
    assert report.written == [tmp_path / "out" / "a.png"]
    reason = (f"the same file as {tmp_path / 'in' / 'a.png'}, given twice (through a symlink or overlapping "
              f"inputs); its output {tmp_path / 'out' / 'a.png'} is made once")
    assert report.failed == [(tmp_path / "link" / "a.png", reason)]


@pytest.mark.filterwarnings("ignore:IM image format is deprecated")
def test_an_output_or_grid_name_too_long_fails_alone(tmp_path, tiny_rgba_dir, capsys):
    """A 254-byte IM input gives a 256-byte output name, a 252-byte PNG a 257-byte grid name: each fails alone
    (``Path.is_dir`` raised ENAMETOOLONG and stopped the batch with exit 2); the other inputs are written."""
    long_output, long_grid = "x" * 252 + ".im", "y" * 248 + ".png"
    for name in ("a.png", long_output, long_grid, "z.png"):
        (tmp_path / "in").mkdir(exist_ok=True)
        Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(tmp_path / "in" / name)
    out, grids = tmp_path / "out", tmp_path / "grids"
    assert _run(tmp_path / "in", "-o", out, "--vae", tiny_rgba_dir, "--grid", grids) == 1
    err = capsys.readouterr().err
    assert f"FAILED {tmp_path / 'in' / long_output}: output name too long: {out / ('x' * 252 + '.png')}\n" in err
    assert f"GRID FAILED {grids / ('y' * 248 + '.grid.png')}: grid name too long: {grids / ('y' * 248)}" in err
    assert "3 written, 0 skipped (exist), 1 failed (1 image); grids: 2 written, 0 skipped (exist), 1 failed" in err
    assert sorted(path.name for path in out.iterdir()) == ["a.png", long_grid, "z.png"]


def test_symlink_loops_are_failures_or_one_line_errors(tmp_path, tiny_rgba_dir, capsys):
    """An input that is a symlink loop fails alone; an output, grid folder or output path that is one is named in
    one line (``Path.resolve`` raised RuntimeError: a traceback)."""
    _rgba_png(tmp_path / "in" / "x.png", 8, 8)
    (tmp_path / "in" / "a.png").symlink_to("b.png")
    (tmp_path / "in" / "b.png").symlink_to("a.png")
    assert _run(tmp_path / "in", "-o", tmp_path / "out", "--vae", tiny_rgba_dir) == 1
    err = capsys.readouterr().err
    assert all(f"FAILED {tmp_path / 'in' / name}: input is a symlink loop\n" in err for name in ("a.png", "b.png"))
    assert (tmp_path / "out" / "x.png").is_file()
    assert _run(tmp_path / "in" / "a.png", tmp_path / "in" / "x.png", "-o", tmp_path / "o2",
                "--vae", tiny_rgba_dir) == 1
    assert f"FAILED {tmp_path / 'in' / 'a.png'}: input is a symlink loop\n" in capsys.readouterr().err
    assert (tmp_path / "o2" / "x.png").is_file()
    loop = tmp_path / "in" / "a.png"
    for extra in (("-o", loop), ("-o", tmp_path / "o3", "--grid", loop)):
        assert _run(tmp_path / "in" / "x.png", *extra, "--vae", tiny_rgba_dir) == 2
        assert capsys.readouterr().err == f"alphavae reconstruct: error: {loop} is a symlink loop\n"
    (tmp_path / "o4").mkdir()
    (tmp_path / "o4" / "x.png").symlink_to("y.png")
    (tmp_path / "o4" / "y.png").symlink_to("x.png")
    assert _run(tmp_path / "in" / "x.png", "-o", tmp_path / "o4", "--vae", tiny_rgba_dir) == 1
    assert f"output {tmp_path / 'o4' / 'x.png'} is a symlink loop" in capsys.readouterr().err
    assert (tmp_path / "o4" / "x.png").is_symlink()
