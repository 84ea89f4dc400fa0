"""Tests for alphavae.data.fetch / manifest / sources with a fake registry client (no network)."""

import hashlib
import io as bytes_io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alphavae.data import fetch
from alphavae.data.fetch import FetchError, fetch_dataset, list_candidates, normalise, render_svg
from alphavae.data.manifest import SPLITS, read_manifest, split_of
from alphavae.data.sources import PERMISSIVE, SOURCES, Source, get_sources

SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20" viewBox="0 0 40 20">'
       '<rect x="0" y="0" width="40" height="20" fill="#ff0000"/></svg>')


def _png(rgba):
    buffer = bytes_io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def _soft(width=48, height=40):
    """Opaque square in the middle with a soft ramp; transparent border with hidden green colour."""
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., 1] = 255
    rgba[8:-8, 8:-8] = (200, 30, 30, 255)
    rgba[8:-8, 8:16, 3] = np.linspace(20, 235, 8, dtype=np.uint8)
    return rgba


def _tgz(files):
    """Deterministic .tgz bytes holding ``{member path: bytes}``."""
    buffer = bytes_io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, bytes_io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def registry(monkeypatch):
    """Two toy npm sources (raster, svg) served by a fake ``npm pack``; returns the call log."""
    hidden = _soft()
    hidden[..., :3][hidden[..., 3] == 0] = (0, 0, 255)  # same picture, other colour under alpha 0
    opaque = _soft()
    opaque[..., 3] = 255
    raster = _tgz({
        "package/assets/a.png": _png(_soft()),
        "package/assets/b_same_as_a.png": _png(hidden),
        "package/assets/opaque.png": _png(opaque),
        "package/assets/clear.png": _png(np.zeros((40, 40, 4), dtype=np.uint8)),
        "package/assets/small.png": _png(_soft(20, 20)),
        "package/assets/broken.png": b"not an image",
        "package/README.md": b"toy",
    })
    svg = _tgz({"package/svg/wide.svg": SVG.encode()})
    archives = {"toy-raster@1.0.0": raster, "toy-svg@1.0.0": svg}
    for name, kind, base, pattern in (("toy-raster", "raster", "package/assets", "*.png"),
                                      ("toy-svg", "svg", "package/svg", "*.svg")):
        data = archives[f"{name}@1.0.0"]
        monkeypatch.setitem(SOURCES, name, Source(name, "npm", name, "1.0.0", "MIT", True,
                                                  hashlib.sha256(data).hexdigest(), base, pattern, kind))
    calls = []

    def fake_client(args, cwd):
        calls.append(args)
        assert args[:2] == ["npm", "pack"]
        Path(args[4], args[2].replace("@", "-") + ".tgz").write_bytes(archives[args[2]])

    monkeypatch.setattr(fetch, "run_client", fake_client)
    return calls


def test_fetch_filters_dedupes_and_writes_manifest(tmp_path, registry):
    manifest, failures = fetch_dataset(tmp_path / "out", ["toy-raster", "toy-svg"], size=32, min_size=32)
    records = read_manifest(manifest)
    assert [r["original"] for r in records] == ["a.png", "wide.svg"]
    assert len(failures) == 1 and "broken.png" in failures[0]
    raster, svg = records
    assert raster["package"] == "toy-raster@1.0.0" and raster["licence"] == "MIT" and raster["licence_ok_for_shipping"]
    assert (raster["width"], raster["height"]) == (32, 27)  # long side shrunk to 32, aspect kept
    assert 0 < raster["frac_soft"] < raster["frac_not_opaque"] < 1 and 0 < raster["alpha_mean"] < 1
    assert raster["split"] == split_of(raster["pixel_sha256"])
    written = tmp_path / "out" / raster["file"]
    assert hashlib.sha256(written.read_bytes()).hexdigest() == raster["sha256"]
    rgba = np.asarray(Image.open(written))
    assert rgba.shape == (27, 32, 4) and np.all(rgba[rgba[..., 3] == 0, :3] == 0)
    assert (svg["width"], svg["height"]) == (32, 32)
    decisions = [json.loads(line) for line in (tmp_path / "out/cache/decisions/toy-raster-size32-min32.jsonl").open()]
    reasons = {d["original"]: d.get("rejected", "kept") for d in decisions}
    assert reasons["b_same_as_a.png"].startswith("duplicate of images/toy-raster/a.png")
    assert reasons["opaque.png"].startswith("no transparency") and reasons["clear.png"] == "fully transparent"
    assert "small.png" not in reasons  # dropped from the candidates by its header size


def test_fetch_is_idempotent(tmp_path, registry):
    out = tmp_path / "out"
    fetch_dataset(out, ["toy-raster"], size=32, min_size=32)
    png = out / "images/toy-raster/a.png"
    stamp = png.stat().st_mtime_ns
    manifest_before = (out / "manifest.jsonl").read_text()
    fetch_dataset(out, ["toy-raster"], size=32, min_size=32)
    assert len(registry) == 1  # the verified archive was reused
    assert png.stat().st_mtime_ns == stamp and (out / "manifest.jsonl").read_text() == manifest_before


def test_sha256_mismatch_is_refused(tmp_path, registry, monkeypatch):
    monkeypatch.setitem(SOURCES, "toy-raster", Source("toy-raster", "npm", "toy-raster", "1.0.0", "MIT", True,
                                                      "0" * 64, "package/assets", "*.png"))
    with pytest.raises(FetchError, match="sha256"):
        fetch_dataset(tmp_path / "out", ["toy-raster"])
    assert not list((tmp_path / "out/cache/downloads").iterdir())


def test_missing_client_is_named(tmp_path):
    with pytest.raises(FetchError, match="no-such-client-xyz not found"):
        fetch.run_client(["no-such-client-xyz", "pack"], tmp_path)


def test_render_svg_keeps_aspect_and_pads(tmp_path):
    (tmp_path / "wide.svg").write_text(SVG)
    rgba = render_svg(tmp_path / "wide.svg", 32)
    assert rgba.shape == (32, 32, 4)
    assert np.all(rgba[:8, :, 3] == 0) and np.all(rgba[24:, :, 3] == 0)
    assert np.all(rgba[8:24, :, 3] == 255) and np.all(rgba[8:24, :, 0] == 255)


def test_icon_themes_keep_the_largest_copy_per_name(tmp_path):
    theme = Source("theme", "apt", "theme", "1", "GPL", False, "", "icons", "**/*.png", dedupe_by_name=True)
    for side in (16, 64, 32):
        folder = tmp_path / f"icons/{side}x{side}/apps"
        folder.mkdir(parents=True)
        (folder / "app.png").write_bytes(_png(_soft(side, side)))
    (tmp_path / "icons/16x16/apps/other.png").write_bytes(_png(_soft(16, 16)))
    (tmp_path / "icons/64x64/apps/alias.png").symlink_to("app.png")
    assert list_candidates(theme, tmp_path) == [Path("16x16/apps/other.png"), Path("64x64/apps/app.png")]
    assert list_candidates(theme, tmp_path, limit=1) == list_candidates(theme, tmp_path, limit=1)
    assert len(list_candidates(theme, tmp_path, limit=1)) == 1
    assert list_candidates(theme, tmp_path, min_size=32) == [Path("64x64/apps/app.png")]


def test_hidden_colour_does_not_change_the_pixel_hash():
    first = _soft()
    second = first.copy()
    second[second[..., 3] == 0, 2] = 77
    assert normalise(first)[0]["pixel_sha256"] == normalise(second)[0]["pixel_sha256"]


def test_split_is_deterministic_and_near_the_fractions():
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    splits = [split_of(h) for h in hashes]
    assert splits == [split_of(h) for h in hashes]
    for name, fraction in SPLITS:
        assert abs(splits.count(name) / len(splits) - fraction) < 0.02
    with pytest.raises(ValueError, match="sum to 1"):
        split_of(hashes[0], (("train", 0.5),))


def test_registry_sources():
    assert set(PERMISSIVE) == {"fluent-emoji-3d", "fluentui-emoji", "openclipart"}
    assert all(not s.licence_ok_for_shipping for s in get_sources(["all"]) if s.name not in PERMISSIVE)
    assert fetch.archive_name(SOURCES["fluent-emoji-3d"]) == "lobehub-fluent-emoji-3d-1.1.0.tgz"
    assert fetch.archive_name(SOURCES["openclipart"]) == "openclipart-png_1%3a0.18+dfsg-19_all.deb"
    with pytest.raises(ValueError, match="unknown source"):
        get_sources(["nope"])


def test_fetch_command_reports_counts_and_failures(tmp_path, registry, capsys):
    from alphavae.cli import main

    status = main(["data", "fetch", "-o", str(tmp_path / "out"), "--sources", "toy-raster", "toy-svg",
                   "--size", "32", "--min-size", "32"])
    captured = capsys.readouterr()
    assert status == 1  # broken.png could not be read
    assert "toy-raster: 1 images" in captured.out and "toy-svg: 1 images" in captured.out
    assert "broken.png" in captured.err and "1 image(s) could not be read" in captured.err


def test_fetch_into_an_unwritable_place_is_one_error_line_before_any_download(tmp_path, registry, capsys):
    """An output below a file failed with a NotADirectoryError traceback (exit status 1) after the download."""
    from alphavae.cli import main

    (tmp_path / "file").write_text("x")
    status = main(["data", "fetch", "-o", str(tmp_path / "file" / "out"), "--sources", "toy-raster"])
    assert status == 2 and registry == []
    assert capsys.readouterr().err.strip() == (f"alphavae data fetch: error: {tmp_path / 'file' / 'out'}: cannot "
                                               f"write the dataset there ({tmp_path / 'file'} is not a folder)")


def test_oversized_and_small_rasters_are_rejected_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(_png(_soft()))
    assert fetch.load_raster(path, 512, 41) == "short side 40 < 41"
    monkeypatch.setattr(fetch.io, "DEFAULT_MAX_PIXELS", 100)
    assert fetch.load_raster(path, 512, 0) == "more than 100 pixels"


def test_interrupted_fetch_resumes_from_its_journal(tmp_path, registry, monkeypatch):
    out = tmp_path / "out"
    real_split_of = fetch.split_of

    def interrupt(*args):  # called right after a.png's decision went to the journal
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch, "split_of", interrupt)
    with pytest.raises(KeyboardInterrupt):
        fetch_dataset(out, ["toy-raster"], size=32, min_size=32)
    assert (out / "cache/decisions/toy-raster-size32-min32.partial").exists()
    stamp = (out / "images/toy-raster/a.png").stat().st_mtime_ns
    monkeypatch.setattr(fetch, "split_of", real_split_of)
    records = read_manifest(fetch_dataset(out, ["toy-raster"], size=32, min_size=32)[0])
    assert [r["original"] for r in records] == ["a.png"]
    assert (out / "images/toy-raster/a.png").stat().st_mtime_ns == stamp
    assert not (out / "cache/decisions/toy-raster-size32-min32.partial").exists()
