"""Tests for alphavae.io: the known RGBA I/O, resize and compositing pitfalls on synthetic fixtures."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import png
import pytest
import torch
import torch.nn.functional as F
from fixtures_io import palette_image, png_header_only, random_rgba, soft_disc, write_png16
from PIL import Image, ImageOps

from alphavae import io as aio


def unit(t: torch.Tensor) -> np.ndarray:
    """[-1, 1] tensor -> [0, 1] numpy, channels last."""
    return aio.to_unit(t).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("bit_depth", [8, 16])
def test_save_load_round_trip_is_exact(tmp_path, bit_depth):
    levels = 2**bit_depth - 1
    pixels = random_rgba(9, 13, levels=levels)
    path = aio.save_rgba(pixels, tmp_path / "a.png", bit_depth=bit_depth)
    loaded = aio.load_rgba(path)
    assert loaded.dtype == torch.float32 and loaded.shape == (4, 9, 13)
    assert torch.equal(torch.round(aio.to_unit(loaded) * levels), torch.round(aio.to_unit(pixels) * levels))
    again = aio.save_rgba(loaded, tmp_path / "b.png", bit_depth=bit_depth)
    assert again.read_bytes() == path.read_bytes()


def test_saved_files_are_always_four_channel(tmp_path):
    opaque = torch.ones(4, 3, 5)
    with Image.open(aio.save_rgba(opaque, tmp_path / "o8.png")) as image:
        assert image.mode == "RGBA"
    reader = png.Reader(filename=str(aio.save_rgba(opaque, tmp_path / "o16.png", bit_depth=16)))
    _, _, _, info = reader.read()
    assert info["planes"] == 4 and info["alpha"] and info["bitdepth"] == 16


def test_save_rejects_bad_requests(tmp_path):
    pixels = random_rgba(4, 4)
    with pytest.raises(ValueError, match="png"):
        aio.save_rgba(pixels, tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="bit_depth"):
        aio.save_rgba(pixels, tmp_path / "a.png", bit_depth=12)
    with pytest.raises(ValueError, match="NaN"):
        aio.save_rgba(torch.full((4, 2, 2), float("nan")), tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"\(4, H, W\)"):
        aio.save_rgba(pixels[None], tmp_path / "a.png")
    aio.save_rgba(pixels, tmp_path / "a.png")
    with pytest.raises(FileExistsError, match="a.png"):
        aio.save_rgba(pixels, tmp_path / "a.png")
    aio.save_rgba(-pixels, tmp_path / "a.png", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_to_pil_and_from_pil_match_save_and_load(tmp_path):
    pixels = random_rgba(6, 5)
    image = aio.to_pil(pixels)
    assert image.mode == "RGBA" and image.size == (5, 6)
    assert torch.allclose(aio.from_pil(image), pixels, atol=1e-6)
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(aio.save_rgba(pixels, tmp_path / "a.png"))))


# ---------------------------------------------------------------- mode handling

def test_palette_with_transparent_index(tmp_path):
    path = tmp_path / "p.png"
    palette_image(1).save(path)
    pixels = unit(aio.load_rgba(path))
    assert np.array_equal(pixels[..., 3], np.repeat([[1.0], [0.0], [1.0], [1.0]], 4, axis=1))
    assert np.allclose(pixels[0, 0, :3], [1, 0, 0]) and np.allclose(pixels[3, 0, :3], [10 / 255, 20 / 255, 30 / 255])


def test_palette_with_per_entry_alpha(tmp_path):
    path = tmp_path / "p.png"
    palette_image(bytes([0, 1, 128, 255])).save(path)
    alpha = np.round(unit(aio.load_rgba(path))[..., 3] * 255)
    assert np.array_equal(alpha[:, 0], [0, 1, 128, 255])


def test_grey_alpha_and_grey_with_transparent_value(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(np.dstack([grey, 255 - grey])).save(tmp_path / "la.png")
    la = np.round(unit(aio.load_rgba(tmp_path / "la.png")) * 255)
    assert all(np.array_equal(la[..., c], grey) for c in range(3))
    assert np.array_equal(la[..., 3], 255 - grey)
    Image.fromarray(grey).save(tmp_path / "l.png", transparency=40)
    alpha = unit(aio.load_rgba(tmp_path / "l.png"))[..., 3]
    assert np.array_equal(alpha, (grey != 40).astype(np.float32))


@pytest.mark.parametrize("bit_depth", [1, 2, 4, 8])
def test_low_bit_grey_png_with_transparent_value(tmp_path, bit_depth):
    """Pillow scales 2- and 4-bit grey samples to 0-255 but kept the tRNS value at the file's depth (3, 15): no
    pixel matched it and the image loaded opaque."""
    top = 2**bit_depth - 1
    samples = [[0, 1, top, top], [top, 0, 1, 0]]
    with open(tmp_path / "g.png", "wb") as handle:
        png.Writer(4, 2, greyscale=True, bitdepth=bit_depth, transparent=top).write(handle, samples)
    expected_alpha = (np.array(samples) != top).astype(np.float32)
    for pixels in (aio.load_rgba(tmp_path / "g.png"), aio.from_pil(Image.open(tmp_path / "g.png"))):
        assert np.array_equal(unit(pixels)[..., 3], expected_alpha)
        visible = expected_alpha == 1
        assert np.allclose(unit(pixels)[..., 0][visible], (np.array(samples) / top)[visible], atol=1e-6)


def test_rgb_with_transparent_colour_and_opaque_modes(tmp_path):
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "rgb.png", transparency=(1, 2, 3))
    assert np.array_equal(unit(aio.load_rgba(tmp_path / "rgb.png"))[..., 3], [[0, 1, 1], [1, 1, 1]])
    Image.fromarray(rgb).save(tmp_path / "plain.jpg")
    assert torch.all(aio.load_rgba(tmp_path / "plain.jpg")[3] == 1)
    rgbx = Image.frombytes("RGBX", (2, 1), bytes([10, 20, 30, 0, 40, 50, 60, 7]))
    pixels = np.round(unit(aio.from_pil(rgbx)) * 255)
    assert np.array_equal(pixels[0], [[10, 20, 30, 255], [40, 50, 60, 255]])
    Image.new("CMYK", (2, 2), (0, 0, 0, 0)).save(tmp_path / "cmyk.tif")
    assert torch.all(aio.load_rgba(tmp_path / "cmyk.tif") == 1)
    Image.new("1", (2, 2), 1).save(tmp_path / "bw.png")
    assert torch.all(aio.load_rgba(tmp_path / "bw.png") == 1)


def test_premultiplied_pillow_mode_and_lossless_webp(tmp_path):
    pixels = np.round(unit(aio.from_pil(Image.frombytes("RGBa", (1, 1), bytes([64, 32, 0, 128])))) * 255)
    assert np.array_equal(pixels[0, 0], [127, 63, 0, 128])  # Pillow un-premultiplies (64 * 255 // 128)
    grey = np.round(unit(aio.from_pil(Image.frombytes("La", (1, 1), bytes([64, 128])))) * 255)
    assert np.array_equal(grey[0, 0], [127, 127, 127, 128])
    rgba_palette = Image.new("P", (1, 1))
    rgba_palette.putpalette([10, 20, 30, 40], "RGBA")
    assert np.array_equal(np.round(unit(aio.from_pil(rgba_palette)) * 255)[0, 0], [10, 20, 30, 40])
    original = random_rgba(5, 7)
    aio.to_pil(original).save(tmp_path / "a.webp", lossless=True, exact=True)
    assert torch.allclose(aio.load_rgba(tmp_path / "a.webp"), original, atol=1e-6)


@pytest.mark.parametrize(("greyscale", "alpha"), [(False, True), (False, False), (True, True), (True, False)])
def test_sixteen_bit_png_keeps_full_precision_and_channel_order(tmp_path, greyscale, alpha):
    planes = (1 if greyscale else 3) + alpha
    values = (np.arange(2 * 5 * planes).reshape(2, 5, planes) * 4099 + 3) % 65536
    values = values.astype(np.uint16)
    path = write_png16(tmp_path / "a.png", values, greyscale=greyscale, alpha=alpha)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pixels = unit(aio.load_rgba(path)).astype(np.float64)
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]  # file closed, not left to the GC
    expected_colour = np.repeat(values[..., :1], 3, axis=2) if greyscale else values[..., :3]
    assert np.allclose(pixels[..., :3] * 65535, expected_colour, atol=0.02)
    expected_alpha = values[..., -1] if alpha else np.full(values.shape[:2], 65535)
    assert np.allclose(pixels[..., 3] * 65535, expected_alpha, atol=0.02)


def test_sixteen_bit_interlaced_png(tmp_path):
    values = (np.arange(9 * 7 * 4).reshape(9, 7, 4) * 977 % 65536).astype(np.uint16)
    path = write_png16(tmp_path / "i.png", values, greyscale=False, alpha=True, interlace=True)
    assert np.allclose(unit(aio.load_rgba(path)) * 65535, values, atol=0.02)


def test_sixteen_bit_tiff_reduced_by_pillow_is_warned(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    values = np.full((2, 3, 4), 0x1234, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", values, photometric="rgb", extrasamples=["unassalpha"])
    with pytest.warns(UserWarning, match="a.tif: 16-bit TIFF RGBA .* 8 bits"):
        pixels = aio.load_rgba(tmp_path / "a.tif")
    assert np.allclose(unit(pixels) * 255, 0x12, atol=1e-4)  # Pillow keeps the high byte


def test_single_line_escapes_what_would_break_a_line_and_keeps_printable_text():
    assert aio.single_line("plain name ü 猫.png") == "plain name ü 猫.png"
    assert aio.single_line("a\nb\rc\td\x00e\u2028f") == "a\\nb\\rc\\td\\x00e\\u2028f"
    assert aio.single_line(os.fsdecode(b"bad\xff.png")) == "bad\\xff.png"


@pytest.mark.parametrize("maxval", [1023, 65535])
def test_ppm_of_more_than_eight_bits_reduced_by_pillow_is_warned(tmp_path, maxval):
    """Pillow decodes a P6 PPM whose maxval is above 255 at 8 bits; that went silently (only ';16' raw modes were
    recognised). A 16-bit PGM keeps its precision (mode I) and a PPM of maxval 255 or less loses nothing."""
    values = np.array([[[1000, 32, 1], [maxval, 257, 400]]], dtype=">u2")
    (tmp_path / "c.ppm").write_bytes(b"P6\n2 1\n%d\n" % maxval + values.tobytes())
    with pytest.warns(UserWarning, match=rf"c\.ppm: {maxval.bit_length()}-bit PPM RGB image is decoded by Pillow at 8"):
        pixels = aio.load_rgba(tmp_path / "c.ppm")
    assert np.allclose(unit(pixels)[..., :3], values / maxval, atol=0.5 / 255 + 1e-6)
    (tmp_path / "g.pgm").write_bytes(b"P5\n2 1\n65535\n" + np.array([1000, 40000], dtype=">u2").tobytes())
    (tmp_path / "c15.ppm").write_bytes(b"P6\n1 1\n15\n" + bytes([1, 2, 15]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.allclose(unit(aio.load_rgba(tmp_path / "g.pgm"))[0, :, 0] * 65535, [1000, 40000], atol=0.02)
        assert np.allclose(unit(aio.load_rgba(tmp_path / "c15.ppm"))[0, 0, :3], [1 / 15, 2 / 15, 1], atol=1e-6)


def test_a_tiff_whose_extra_sample_is_unspecified_is_warned(tmp_path):
    """Pillow reads a TIFF with ExtraSamples 0 (unspecified) as RGB; its fourth sample, often alpha, was dropped
    silently and the colour hidden under it showed. Straight (2) and premultiplied (1) alpha load as alpha."""
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 100
    Image.fromarray(rgba, "RGBA").save(tmp_path / "straight.tif")  # Pillow writes ExtraSamples 2
    data = (tmp_path / "straight.tif").read_bytes()
    entry = (338).to_bytes(2, "little") + (3).to_bytes(2, "little") + (1).to_bytes(4, "little")  # SHORT, count 1
    assert data.count(entry + (2).to_bytes(2, "little")) == 1
    (tmp_path / "unspecified.tif").write_bytes(data.replace(entry + (2).to_bytes(2, "little"),
                                                            entry + (0).to_bytes(2, "little")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert unit(aio.load_rgba(tmp_path / "straight.tif"))[..., 3].max() == pytest.approx(100 / 255, abs=1e-6)
    with pytest.warns(UserWarning, match=r"unspecified\.tif: TIFF with an extra sample marked unspecified "
                                         r"\(ExtraSamples 0\), not alpha: it is ignored \(loaded as opaque\)"):
        pixels = aio.load_rgba(tmp_path / "unspecified.tif")
    assert torch.equal(pixels[3], torch.ones(3, 4))


def test_a_32_bit_bmp_whose_fourth_byte_is_padding_is_warned(tmp_path):
    """Pillow reads a plain (BI_RGB) 32-bit BMP as RGB; the fourth byte some tools use as alpha was dropped
    silently. A 24-bit BMP has no such byte and loads without a warning."""
    Image.new("RGBA", (4, 3), (255, 0, 0, 100)).save(tmp_path / "a.bmp")  # Pillow writes the alpha bytes
    with pytest.warns(UserWarning, match=r"a\.bmp: 32-bit BMP without an alpha mask: its 4th byte is padding"):
        pixels = aio.load_rgba(tmp_path / "a.bmp")
    assert torch.equal(pixels[3], torch.ones(3, 4))
    Image.new("RGB", (4, 3), (255, 0, 0)).save(tmp_path / "b.bmp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aio.load_rgba(tmp_path / "b.bmp")


def test_unreadable_exif_is_ignored_with_warning(tmp_path, monkeypatch):
    path = aio.save_rgba(random_rgba(3, 2), tmp_path / "a.png")
    def broken_exif(self):
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr(Image.Image, "getexif", broken_exif)
    with pytest.warns(UserWarning, match="a.png: unreadable EXIF"):
        assert torch.equal(aio.load_rgba(path), random_rgba(3, 2))


def test_sixteen_bit_grey_with_transparent_value(tmp_path):
    values = np.array([[[0], [300], [65535]]], dtype=np.uint16)
    path = write_png16(tmp_path / "g.png", values, greyscale=True, alpha=False, transparent=300)
    assert np.array_equal(unit(aio.load_rgba(path))[0, :, 3], [1, 0, 1])


def test_pillow_sixteen_and_float_modes(tmp_path):
    values = np.array([[0, 257, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "i16.tif")
    assert np.allclose(unit(aio.load_rgba(tmp_path / "i16.tif"))[0, :, 0] * 65535, values[0], atol=0.02)
    Image.fromarray(np.array([[0, 32768, 70000, -5]], dtype=np.int32)).save(tmp_path / "i32.tif")
    assert np.allclose(unit(aio.load_rgba(tmp_path / "i32.tif"))[0, :, 2], [0, 32768 / 65535, 1, 0])
    Image.fromarray(np.array([[0.25, -1.0, 2.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert np.allclose(unit(aio.load_rgba(tmp_path / "f.tif"))[0, :, 1], [0.25, 0, 1])
    Image.fromarray(np.array([[np.nan]], dtype=np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(aio.ImageLoadError, match="nan.tif.*NaN"):
        aio.load_rgba(tmp_path / "nan.tif")


def test_from_pil_warns_about_pillow_reduced_sixteen_bit(tmp_path):
    values = np.full((2, 2, 4), 1000, dtype=np.uint16)
    path = write_png16(tmp_path / "a.png", values, greyscale=False, alpha=True)
    with Image.open(path) as image, pytest.warns(UserWarning, match="16-bit"):
        aio.from_pil(image)


def test_multi_frame_uses_first_frame_with_warning(tmp_path):
    frames = [Image.new("RGB", (3, 3), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match="anim.gif: 2 frames"):
        pixels = aio.load_rgba(tmp_path / "anim.gif")
    assert np.allclose(unit(pixels)[0, 0], [1, 0, 0, 1])
    with Image.open(tmp_path / "anim.gif") as image, pytest.warns(UserWarning, match="2 frames, using frame 2 only"):
        image.seek(1)  # from_pil uses the frame the caller chose, and says so (it said "the first")
        assert np.allclose(unit(aio.from_pil(image))[0, 0], [0, 0, 1, 1])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10 + 5
    image = Image.fromarray(data)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(tmp_path / "o.png", exif=exif)
    with Image.open(tmp_path / "o.png") as reopened:
        expected = np.asarray(ImageOps.exif_transpose(reopened))
    assert np.array_equal(np.round(unit(aio.load_rgba(tmp_path / "o.png")) * 255), expected)


# ---------------------------------------------------------------- bad files and size guard (pitfall 14)

def test_bad_files_raise_image_load_error_naming_the_file(tmp_path):
    good = aio.save_rgba(random_rgba(32, 32), tmp_path / "good.png")
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:-40])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    sixteen = aio.save_rgba(random_rgba(32, 32), tmp_path / "s.png", bit_depth=16)
    (tmp_path / "truncated16.png").write_bytes(sixteen.read_bytes()[:-40])
    frames = [Image.new("RGB", (64, 64), (i, 0, 0)) for i in range(0, 250, 25)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    (tmp_path / "truncated.gif").write_bytes((tmp_path / "anim.gif").read_bytes()[:300])
    for name in ("truncated.png", "empty.png", "text.png", "folder.png", "missing.png", "truncated16.png",
                 "truncated.gif"):
        with pytest.raises(aio.ImageLoadError) as info:
            aio.load_rgba(tmp_path / name)
        assert name in str(info.value) and info.value.path == tmp_path / name and info.value.reason
    with pytest.raises(aio.ImageLoadError, match=r"empty\.png: empty file \(0 bytes\)$"):
        aio.load_rgba(tmp_path / "empty.png")
    webp = tmp_path / "truncated.webp"
    aio.to_pil(random_rgba(32, 32)).save(webp, "WEBP", lossless=True)
    webp.write_bytes(webp.read_bytes()[:-40])
    with pytest.raises(aio.ImageLoadError, match=r"truncated\.webp: corrupt or truncated image file \(OSError: "):
        aio.load_rgba(webp)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.path, copy.reason, str(copy)) == (info.value.path, info.value.reason, str(info.value))


def test_pixel_limit_is_configurable_and_checked_before_decoding(tmp_path):
    path = aio.save_rgba(random_rgba(10, 10), tmp_path / "a.png")
    with pytest.raises(aio.ImageLoadError, match="max_pixels=99"):
        aio.load_rgba(path, max_pixels=99)
    assert aio.load_rgba(path, max_pixels=100).shape == (4, 10, 10)
    assert aio.load_rgba(path, max_pixels=None).shape == (4, 10, 10)
    with pytest.raises(ValueError, match="max_pixels must be"):
        aio.load_rgba(path, max_pixels=0)
    bomb = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(aio.ImageLoadError, match="bomb.png: 10000000000 pixels exceeds max_pixels=67108864 "):
        aio.load_rgba(bomb)
    with pytest.raises(aio.ImageLoadError, match="bomb.png: 72000000 pixels exceeds max_pixels=64000000 "):
        aio.load_rgba(png_header_only(tmp_path / "bomb.png", 9000, 8000), max_pixels=8000 * 8000)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's own guard is restored


# ---------------------------------------------------------------- hidden colour (pitfall 5)

def test_hidden_colour_changes_nothing_visible(tmp_path):
    first, second = soft_disc(24, hidden=(1.0, -1.0, 1.0)), soft_disc(24, hidden=(-1.0, 1.0, -0.5))
    assert not torch.equal(first, second)
    for name in aio.BACKGROUNDS:
        assert torch.equal(aio.composite(first, name), aio.composite(second, name))
    assert torch.equal(aio.resize_rgba(first, (10, 10)), aio.resize_rgba(second, (10, 10)))
    assert torch.equal(aio.premultiply(first), aio.premultiply(second))
    a, b = aio.save_rgba(first, tmp_path / "a.png"), aio.save_rgba(second, tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()
    a16, b16 = (aio.save_rgba(x, tmp_path / f"{n}16.png", bit_depth=16) for n, x in (("a", first), ("b", second)))
    assert a16.read_bytes() == b16.read_bytes()


# ---------------------------------------------------------------- compositing (pitfall 7)

def test_composite_backgrounds_and_formula():
    pixels = random_rgba(5, 6)[None]
    alpha = aio.alpha_unit(pixels)
    assert list(aio.BACKGROUNDS) == ["black", "gray", "white", "red", "green", "blue", "yellow", "cyan", "magenta"]
    for name, rgb in aio.BACKGROUNDS.items():
        back = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1) / 255 * 2 - 1
        expected = pixels[:, :3] * alpha + back * (1 - alpha)
        assert torch.allclose(aio.composite(pixels, name), expected, atol=1e-6)
        assert torch.allclose(aio.composite(pixels, rgb), expected, atol=1e-6)
    image = torch.rand(3, 5, 6) * 2 - 1
    transparent = torch.full((4, 5, 6), -1.0)
    assert torch.equal(aio.composite(transparent, image), image)
    board = aio.composite(transparent, "checkerboard")
    assert torch.equal(board, aio.checkerboard(5, 6))
    with pytest.raises(ValueError, match="unknown background 'grey'"):
        aio.composite(pixels, "grey")
    with pytest.raises(ValueError, match="0-255"):
        aio.composite(pixels, (300, 0, 0))
    with pytest.raises(ValueError, match="does not match"):
        aio.composite(pixels, torch.zeros(3, 4, 4))


def test_soft_edge_composites_without_halo():
    disc = soft_disc(32)
    alpha = aio.alpha_unit(disc)
    over_black = aio.to_unit(aio.composite(disc, "black"))
    over_white = aio.to_unit(aio.composite(disc, "white"))
    assert torch.allclose(over_black, alpha.expand(3, -1, -1), atol=1e-6)  # white object: no dark ring
    assert torch.allclose(over_white, torch.ones_like(over_white), atol=1e-6)  # no light/dark ring


def test_checkerboard_values():
    board = aio.checkerboard(3, 5, square=2)
    assert board.shape == (3, 3, 5)
    light, dark = (aio.CHECKER_LIGHT / 255 * 2 - 1), (aio.CHECKER_DARK / 255 * 2 - 1)
    assert board[0, 0, 0] == pytest.approx(light) and board[0, 0, 2] == pytest.approx(dark)
    assert board[0, 2, 0] == pytest.approx(dark) and board[0, 2, 2] == pytest.approx(light)
    with pytest.raises(ValueError):
        aio.checkerboard(0, 5)


# ---------------------------------------------------------------- premultiply (pitfall 11)

def test_premultiply_round_trip_is_finite_at_zero_and_tiny_alpha():
    colour = torch.tensor([0.2, 0.6, 1.0])
    for alpha01 in (0.0, 1 / 255, 0.5, 1.0):
        pixels = torch.cat([colour * 2 - 1, torch.tensor([alpha01 * 2 - 1])]).view(4, 1, 1).expand(4, 3, 3)
        back = aio.unpremultiply(aio.premultiply(pixels))
        assert torch.isfinite(back).all()
        expected = colour if alpha01 > 0 else torch.zeros(3)
        assert torch.allclose(aio.to_unit(back[:3, 0, 0]), expected, atol=1e-5)
    assert torch.equal(aio.premultiply(torch.ones(2, 4, 3, 3)), torch.ones(2, 4, 3, 3))


# ---------------------------------------------------------------- resize (pitfall 6)

@pytest.mark.parametrize("mode", aio.RESIZE_MODES)
def test_resize_stays_in_range_and_keeps_layout(mode):
    sharp = soft_disc(16)
    sharp[3] = torch.where(sharp[3] > -1, 1.0, -1.0)
    for size in ((7, 5), (40, 33), (1, 1)):
        out = aio.resize_rgba(sharp[None], size, mode=mode)
        assert out.shape == (1, 4, *size) and out.min() >= -1 and out.max() <= 1
    assert aio.resize_rgba(sharp.bfloat16(), (8, 8), mode=mode).dtype == torch.bfloat16
    assert torch.equal(aio.resize_rgba(sharp, (16, 16), mode=mode), sharp)


def test_resize_commutes_with_compositing_so_no_fringes():
    disc = soft_disc(24, hidden=(-1.0, -1.0, -1.0))  # black hidden colour: straight resize gives dark fringes
    for name in ("black", "white", "magenta"):
        expected = F.interpolate(aio.composite(disc, name)[None], size=(11, 11), mode="bilinear", antialias=True)
        ours = aio.composite(aio.resize_rgba(disc, (11, 11), mode="bilinear"), name)[None]
        assert torch.allclose(ours, expected, atol=1e-5)
    straight = F.interpolate(disc[None], size=(11, 11), mode="bilinear", antialias=True)
    fringe = (aio.composite(straight, "white") - F.interpolate(aio.composite(disc, "white")[None], size=(11, 11),
                                                             mode="bilinear", antialias=True)).abs().max()
    assert fringe > 0.05  # the naive straight-alpha resize this test guards against


def test_resize_leaves_no_colour_under_round_off_alpha():
    """Bilinear 16 -> 7 px of an opaque square on transparency left alpha ~3e-8 (float round-off) with a saturated
    colour (noise / noise) that reached the encoder; such alpha is now 0 with colour -1."""
    square = torch.full((4, 16, 16), -1.0)
    square[1] = 1.0  # hidden green
    square[:, 4:12, 4:12] = torch.tensor([1.0, -1.0, -1.0, 1.0])[:, None, None]  # opaque red
    out = aio.resize_rgba(square, (7, 7), mode="bilinear")
    faint = (aio.to_unit(out[3]) > 0) & (aio.to_unit(out[3]) < aio.ROUND_OFF_ALPHA)
    assert not faint.any()
    hidden = aio.to_unit(out[3]) == 0
    assert hidden.any() and torch.equal(out[:3][:, hidden], torch.full((3, int(hidden.sum())), -1.0))


def test_resize_short_side_keeps_aspect():
    assert aio.resize_short_side(random_rgba(10, 30), 5).shape == (4, 5, 15)
    assert aio.resize_short_side(random_rgba(30, 10)[None], 20).shape == (1, 4, 60, 20)
    with pytest.raises(ValueError, match="short_side"):
        aio.resize_short_side(random_rgba(4, 4), 0)
    with pytest.raises(ValueError, match="mode"):
        aio.resize_rgba(random_rgba(4, 4), (2, 2), mode="lanczos")


# ---------------------------------------------------------------- pad and crop (pitfall 8)

@pytest.mark.parametrize("shape", [(1, 1), (1, 3000), (3000, 1), (7, 13), (64, 64)])
@pytest.mark.parametrize("multiple", [8, 64])
def test_pad_and_crop_back_keeps_size_and_borders(shape, multiple):
    pixels = random_rgba(*shape)
    padded, size = aio.pad_to_multiple(pixels, multiple)
    assert size == shape and padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    assert torch.equal(padded[:, -1, : shape[1]], pixels[:, -1])  # bottom row replicated
    assert torch.equal(padded[:, : shape[0], -1], pixels[:, :, -1])  # right column replicated
    assert torch.equal(aio.crop_to(padded, size), pixels)


def test_pad_modes():
    pixels = random_rgba(5, 6)[None]
    padded, _ = aio.pad_to_multiple(pixels, 4, mode="transparent")
    assert padded.shape == (1, 4, 8, 8) and torch.all(padded[..., 5:, :] == -1)
    reflected, _ = aio.pad_to_multiple(pixels, 4, mode="reflect")
    assert torch.equal(reflected[..., 5, :6], pixels[..., 3, :])
    with pytest.raises(ValueError, match="replicate"):
        aio.pad_to_multiple(random_rgba(1, 1), 8, mode="reflect")
    with pytest.raises(ValueError, match="crop"):
        aio.crop_to(pixels, (9, 2))


@pytest.mark.parametrize("shape", [(5, 6), (1, 9), (12, 3), (10, 10)])
def test_pad_to_canvas_centres_the_image_on_transparent_margins(shape):
    pixels = random_rgba(*shape)
    padded, (top, left) = aio.pad_to_canvas(pixels, 10)
    height, width = shape
    assert padded.shape == (4, max(height, 10), max(width, 10))
    assert (top, left) == ((max(10 - height, 0)) // 2, (max(10 - width, 0)) // 2)
    assert torch.equal(padded[:, top: top + height, left: left + width], pixels)
    margin = torch.ones(padded.shape[-2:], dtype=torch.bool)
    margin[top: top + height, left: left + width] = False
    assert torch.all(padded[:, margin] == -1)  # transparent black, all four channels
    batched, _ = aio.pad_to_canvas(pixels[None], 10)
    assert torch.equal(batched[0], padded)
    assert aio.pad_to_canvas(pixels, 1)[0] is pixels  # nothing to pad: the input itself
    with pytest.raises(ValueError, match="min_side must be an integer >= 1, got 0"):
        aio.pad_to_canvas(pixels, 0)


@pytest.mark.parametrize(("shape", "canvas", "block", "offset"), [
    ((1, 1), (16, 16), (4, 4, 12, 12), (7, 7)),     # 1 px: an 8 x 8 block of it, the pixel at (3, 3) inside
    ((1, 5), (16, 16), (4, 4, 12, 12), (7, 5)),
    ((5, 1), (16, 16), (4, 4, 12, 12), (5, 7)),
    ((1, 20), (16, 20), (4, 0, 12, 20), (7, 0)),    # a side already 16 long is neither extended nor padded
])
def test_pad_to_canvas_extends_short_sides_to_the_vae_multiple(shape, canvas, block, offset):
    """A 1x1 image reconstructed with --min-side lost its pixel (alpha 4/255 with alphavae-mini): alone on a
    transparent canvas it is a detail an 8x VAE cannot keep. Short sides are extended to the multiple by
    repeating the edge pixels, then centred on the transparent canvas."""
    pixels = random_rgba(*shape)
    padded, (top, left) = aio.pad_to_canvas(pixels, 16, multiple=8)
    assert padded.shape == (4, *canvas) and (top, left) == offset
    assert torch.equal(padded[:, top: top + shape[0], left: left + shape[1]], pixels)
    first_row, first_col, end_row, end_col = block
    inside = padded[:, first_row:end_row, first_col:end_col]
    edges = F.pad(pixels[None], (left - first_col, end_col - left - shape[1], top - first_row,
                                 end_row - top - shape[0]), mode="replicate")[0]
    assert torch.equal(inside, edges)  # the block repeats the edge pixels
    margin = torch.ones(canvas, dtype=torch.bool)
    margin[first_row:end_row, first_col:end_col] = False
    assert torch.all(padded[:, margin] == -1)  # transparent black around the block
    with pytest.raises(ValueError, match="multiple must be an integer >= 1, got 0"):
        aio.pad_to_canvas(pixels, 16, multiple=0)


@pytest.mark.parametrize("call, name", [
    (lambda x: aio.pad_to_canvas(x, True), "min_side"),
    (lambda x: aio.pad_to_canvas(x, 16, multiple=True), "multiple"),
    (lambda x: aio.pad_to_multiple(x, True), "multiple"),
    (lambda x: aio.resize_short_side(x, True), "short_side"),
    (lambda x: aio.resize_rgba(x, (True, 4)), "size"),
    (lambda x: aio.crop_to(x, (1, True)), "size"),
])
def test_sizes_refuse_booleans(call, name):
    """A bool is an int in Python: `multiple=True` was taken as 1, `min_side=True` as a 1 px canvas."""
    with pytest.raises(ValueError, match=rf"{name} must be (an integer >= 1|\(height, width\) integers), got .*True"):
        call(random_rgba(1, 1))


# ---------------------------------------------------------------- masks and ranges

def test_mask_conventions_invert_both_ways():
    alpha = torch.tensor([[0.0, 0.25, 1.0]])
    assert torch.equal(aio.alpha_to_mask(alpha), torch.tensor([[1.0, 0.75, 0.0]]))
    assert torch.equal(aio.mask_to_alpha(aio.alpha_to_mask(alpha)), alpha)
    with pytest.raises(ValueError, match="alpha_unit"):
        aio.alpha_to_mask(torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match="mask"):
        aio.mask_to_alpha(torch.tensor([1.5]))


def test_ranges_and_pixel_validation():
    x = torch.linspace(-1, 1, 5)
    assert torch.equal(aio.from_unit(aio.to_unit(x)), x)
    assert aio.alpha_unit(random_rgba(3, 4)).shape == (1, 3, 4)
    assert aio.alpha_unit(random_rgba(3, 4)[None]).shape == (1, 1, 3, 4)
    with pytest.raises(ValueError, match=r"\(4, H, W\)"):
        aio.alpha_unit(torch.zeros(1, 3, 4, 4))
    with pytest.raises(TypeError, match="floating"):
        aio.composite(torch.zeros(4, 2, 2, dtype=torch.uint8), "black")


# ---------------------------------------------------------------- files and folders

def test_list_images_is_sorted_relative_and_skips_hidden(tmp_path):
    pixels = random_rgba(2, 2)
    for rel in ("b.png", "a/z.PNG", "a/c.webp", ".hidden/x.png", "a/.tmp.png", "notes.txt", "a/deep/d.gif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    single = aio.save_rgba(pixels, tmp_path.parent / f"{tmp_path.name}-single.png", overwrite=True)
    listed = aio.list_images([tmp_path, single, tmp_path / "b.png"])
    assert [r.as_posix() for _, r in listed] == ["a/c.webp", "a/deep/d.gif", "a/z.PNG", "b.png", single.name]
    assert all(a.is_absolute() and a.is_file() for a, _ in listed)
    assert [r.as_posix() for _, r in aio.list_images(tmp_path, recursive=False)] == ["b.png"]
    with pytest.raises(FileNotFoundError, match="nope"):
        aio.list_images(tmp_path / "nope")


def test_special_files_in_a_folder_are_listed_and_loading_refuses_them_unopened(tmp_path):
    """A FIFO named like an image is listed (not silently skipped) and load_rgba names it without opening
    it (opening a FIFO with no writer would block forever)."""
    aio.save_rgba(random_rgba(2, 2), tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.png")
    assert [r.as_posix() for _, r in aio.list_images(tmp_path)] == ["a.png", "pipe.png"]
    assert aio.list_images(tmp_path / "pipe.png") == [(tmp_path / "pipe.png", Path("pipe.png"))]  # given directly
    assert aio.special_file_kind(tmp_path / "pipe.png") == "a FIFO (named pipe)"
    assert aio.special_file_kind(tmp_path / "a.png") is None and aio.special_file_kind(tmp_path / "no") is None
    with pytest.raises(aio.ImageLoadError, match=r"pipe\.png: is a FIFO \(named pipe\), not an image file"):
        aio.load_rgba(tmp_path / "pipe.png")
    with pytest.raises(aio.ImageLoadError, match="character device"):
        aio.load_rgba(os.devnull)


def test_output_must_be_outside_inputs(tmp_path):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(inputs / "sub")
    for bad in (inputs, inputs / "sub" / "new", tmp_path / "link" / "out"):
        with pytest.raises(ValueError, match="inside input folder"):
            aio.check_output_outside_inputs(bad, [inputs])
    aio.check_output_outside_inputs(tmp_path / "out", [inputs, tmp_path / "file.png"])


def test_run_folder_must_not_hold_inputs(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (tmp_path / "link").symlink_to(run)
    for held in (run, run / "final", run / "config.json", tmp_path / "link" / "data"):
        with pytest.raises(ValueError, match=f"run folder {run} contains input {held}; choose a run folder apart"):
            aio.check_inputs_outside_output(run, [tmp_path / "data", held])
    aio.check_inputs_outside_output(run, [tmp_path / "data", tmp_path / "runx", tmp_path])


def test_output_folder_must_be_a_folder_outside_inputs(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match=r"file\.txt exists and is not a folder"):
        aio.check_output_folder(tmp_path / "file.txt", [inputs])
    with pytest.raises(ValueError, match="inside input folder"):
        aio.check_output_folder(inputs / "out", [inputs])
    aio.check_output_folder(tmp_path / "out", [inputs])


def test_list_images_reporting_returns_bad_inputs_instead_of_raising(tmp_path):
    image = aio.save_rgba(random_rgba(2, 2), tmp_path / "in" / "a.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    os.mkfifo(tmp_path / "fifo.png")
    given = [tmp_path / "missing", tmp_path / "in", tmp_path / "empty", tmp_path / "dangling.png",
             tmp_path / "fifo.png", image]
    images, failures = aio.list_images_reporting(given)
    assert images == [(image, Path("a.png"))]  # listed once, also when reached twice
    assert failures == [(tmp_path / "missing", "input does not exist"),
                        (tmp_path / "empty", "no image files in this folder"),
                        (tmp_path / "dangling.png", "input is a dangling symlink"),
                        (tmp_path / "fifo.png", "input is a FIFO (named pipe), not an image file or folder")]


def test_check_writable_folder_probes_without_creating(tmp_path, monkeypatch):
    aio.check_writable_folder(tmp_path / "new" / "deeper", "outputs")
    assert list(tmp_path.iterdir()) == []  # nothing created, the probe removed
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"out: cannot write outputs there \(.*file.txt is not a folder\)"):
        aio.check_writable_folder(tmp_path / "file.txt" / "out", "outputs")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError, match="dangling symlink"):
        aio.check_writable_folder(tmp_path / "dangling")

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(aio.files.tempfile, "mkstemp", read_only)
    with pytest.raises(OSError, match=r"^.*ro: cannot write grids there \(Permission denied\)$"):
        aio.check_writable_folder(tmp_path / "ro", "grids")



def test_atomic_write_cleans_up_and_sets_permissions(tmp_path):
    def failing(target: Path) -> None:
        target.write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        aio.atomic_write(tmp_path / "x.txt", failing)
    assert list(tmp_path.iterdir()) == []
    written = aio.atomic_write(tmp_path / "deep" / "x.txt", lambda p: p.write_text("ok"))
    assert written.read_text() == "ok" and not any(p.name.startswith(".") for p in written.parent.iterdir())
    umask = os.umask(0)
    os.umask(umask)
    assert written.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(FileExistsError):
        aio.atomic_write(written, lambda p: p.write_text("again"))
    with pytest.raises(IsADirectoryError, match=r"deep: is a folder; a file cannot replace it$"):
        aio.atomic_write(tmp_path / "deep", lambda p: p.write_text("x"), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["x.txt"]  # no temporary file left


def test_atomic_write_text_writes_utf8(tmp_path):
    written = aio.atomic_write_text(tmp_path / "deep" / "t.txt", "caf\u00e9\n")
    assert written.read_bytes() == "caf\u00e9\n".encode("utf-8")
    with pytest.raises(FileExistsError):
        aio.atomic_write_text(written, "again")
    assert aio.atomic_write_text(written, "again", overwrite=True).read_text(encoding="utf-8") == "again"


@pytest.mark.parametrize("name", ["n" * 251 + ".txt", "\u00e9" * 125 + ".txt"])
def test_atomic_write_accepts_the_longest_names(tmp_path, name):
    """A name of up to 255 bytes (here 255 and 254, the second cut mid-character) gets a shorter temporary name."""
    assert len(os.fsencode(name)) in (254, 255)
    written = aio.atomic_write(tmp_path / name, lambda p: p.write_text("ok"))
    assert written.read_text() == "ok" and [p.name for p in tmp_path.iterdir()] == [name]


# ---------------------------------------------------------------- real fixture

def test_matplotlib_rgba_fixture(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    path = Path(matplotlib.get_data_path()) / "sample_data" / "Minduka_Present_Blue_Pack.png"
    if not path.is_file():
        pytest.skip(f"{path} not shipped by this matplotlib")
    pixels = aio.load_rgba(path)
    alpha = aio.alpha_unit(pixels)
    assert pixels.shape[0] == 4 and ((alpha > 0) & (alpha < 1)).float().mean() > 0.01
    assert torch.equal(aio.load_rgba(aio.save_rgba(pixels, tmp_path / "m.png")), aio.load_rgba(path) * (alpha > 0)
                       + (alpha == 0) * torch.tensor([-1.0, -1, -1, -1]).view(4, 1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = aio.resize_rgba(pixels, (40, 40))
    assert small.min() >= -1 and small.max() <= 1


def test_public_api_documents_ranges_and_errors():
    for name in aio.__all__:
        member = getattr(aio, name)
        if callable(member) and not isinstance(member, type):
            doc = member.__doc__ or ""
            assert "Returns" in doc or "Raises" in doc, f"{name} docstring lacks Returns/Raises"
            if any(word in name for word in ("rgba", "pil", "composite", "premultiply", "resize", "pad", "alpha")):
                assert "[-1, 1]" in doc or "[0, 1]" in doc, f"{name} docstring states no value range"


def test_clear_hidden_colour_only_touches_fully_transparent_pixels():
    pixels = torch.tensor([[0.5, 0.2], [0.1, -0.3], [0.9, 1.0], [-1.0, -0.99]]).view(1, 4, 1, 2)
    cleared = aio.clear_hidden_colour(pixels)
    assert cleared[0, :, 0, 0].tolist() == [-1, -1, -1, -1]
    assert torch.equal(cleared[..., 1], pixels[..., 1])


# ---------------------------------------------------------------- labelled preview sheets

def _panels(rows: int, columns: int, height: int, width: int) -> torch.Tensor:
    """``(R, C, 3, H, W)`` random 8-bit colours in [-1, 1]."""
    values = torch.randint(0, 256, (rows, columns, 3, height, width), generator=torch.Generator().manual_seed(0))
    return aio.from_unit(values / 255)


def test_labelled_sheet_keeps_every_panel_exactly():
    """Panels wider than their labels sit at the documented offsets (from the bottom: header height is the font's)."""
    panels = _panels(2, 3, 40, 120)
    sheet = aio.labelled_sheet(panels, ["", ""], ["a", "b", "c"])
    assert sheet.shape[0] == 4 and torch.equal(sheet[3], torch.ones_like(sheet[3]))
    assert sheet.shape[2] == aio.sheets.GUTTER + 3 * (120 + aio.sheets.GUTTER)  # no row labels: no label column
    for row in range(2):
        y = sheet.shape[1] - (2 - row) * (40 + aio.sheets.GUTTER)
        for column in range(3):
            x = aio.sheets.GUTTER + column * (120 + aio.sheets.GUTTER)
            assert torch.allclose(sheet[:3, y:y + 40, x:x + 120], panels[row, column], atol=1e-6)
    header = aio.to_unit(sheet[:3, :sheet.shape[1] - 2 * (40 + aio.sheets.GUTTER)])
    for column in range(3):  # each column label is drawn (dark pixels) above its own column
        x = aio.sheets.GUTTER + column * (120 + aio.sheets.GUTTER)
        assert (header[:, :, x:x + 120] < 0.5).any()


def test_labelled_sheet_widens_cells_for_labels_of_tiny_images():
    panels = _panels(2, 3, 1, 1)
    sheet = aio.labelled_sheet(panels, ["input", "reconstruction"], ["checkerboard", "black", "white"])
    assert sheet.shape[1] > 2 * 12 and sheet.shape[2] > 3 * 40  # one text line per row, labels fit in the cells
    unit = aio.to_unit(sheet[:3])
    assert ((unit - aio.to_unit(panels[1, 2]).view(3, 1, 1)).abs() < 1e-6).all(0).any()  # the 1-px panel is there
    with pytest.raises(ValueError, match="2 row labels and 3 column labels"):
        aio.labelled_sheet(panels, ["input"], ["checkerboard", "black", "white"])
    with pytest.raises(ValueError, match=r"\(R, C, 3, H, W\)"):
        aio.labelled_sheet(panels[0], ["input"], ["checkerboard", "black", "white"])
    with pytest.raises(ValueError, match="NaN or infinite"):
        aio.labelled_sheet(panels * float("nan"), ["input", "reconstruction"], ["checkerboard", "black", "white"])


def test_read_text_file_and_read_jsonl_errors_name_the_file(tmp_path):
    """Missing file, folder, non-UTF-8 bytes and a non-JSON line: one-line errors naming the file (and line)."""
    from alphavae.io import read_jsonl, read_text_file
    with pytest.raises(FileNotFoundError, match="nope.txt: notes not found"):
        read_text_file(tmp_path / "nope.txt", "notes")
    with pytest.raises(ValueError, match="is a folder, not a notes"):
        read_text_file(tmp_path, "notes")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match=r"latin1.txt: not UTF-8 text \(unexpected end of data at byte 3\)"):
        read_text_file(tmp_path / "latin1.txt", "notes")
    (tmp_path / "a.jsonl").write_text('{"a": 1}\n\n[2]\n{oops\n')
    with pytest.raises(ValueError, match=r"a.jsonl:4: not JSON"):
        read_jsonl(tmp_path / "a.jsonl", "table")
    (tmp_path / "b.jsonl").write_text('{"a": 1}\n\n[2]\n')
    assert read_jsonl(tmp_path / "b.jsonl", "table") == [(1, {"a": 1}), (3, [2])]


def test_folder_relation_resolves_symlinks(tmp_path):
    from alphavae.io import folder_relation

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a", target_is_directory=True)
    assert folder_relation(tmp_path / "a", tmp_path / "link") == "is the same folder as"
    assert folder_relation(tmp_path / "link" / "b" / "new", tmp_path / "a") == "is inside"  # need not exist
    assert folder_relation(tmp_path, tmp_path / "link" / "b") == "contains"
    assert folder_relation(tmp_path / "a" / "b", tmp_path / "ab") is None


def test_a_symlink_loop_is_named_in_one_line(tmp_path):
    """``Path.resolve`` raised RuntimeError for a loop (a traceback in every command): an output loop is now an
    OSError naming it, and an input loop is passed over (it is no folder; the job reports it)."""
    from alphavae.io.files import (check_inputs_outside_output, check_output_outside_inputs, folder_relation,
                                   resolve_path)

    loop = tmp_path / "a.png"
    loop.symlink_to("b.png")
    (tmp_path / "b.png").symlink_to("a.png")
    for call in (lambda: resolve_path(loop), lambda: folder_relation(loop, tmp_path / "out"),
                 lambda: check_output_outside_inputs(loop, [tmp_path / "in"]),
                 lambda: check_inputs_outside_output(loop, [tmp_path / "in"])):
        with pytest.raises(OSError, match=f"^{re.escape(str(loop))} is a symlink loop$"):
            call()
    check_output_outside_inputs(tmp_path / "out", [loop])
    check_inputs_outside_output(tmp_path / "out", [loop])
    with pytest.raises(ValueError, match="contains input"):
        check_inputs_outside_output(tmp_path, [loop])
    assert aio.list_images_reporting([loop]) == ([], [(loop, "input is a symlink loop")])
