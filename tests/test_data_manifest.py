"""Tests for reading a manifest and ``alphavae data export`` (alphavae.data.manifest.export_split)."""

import errno
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alphavae.cli import main
from alphavae.data.manifest import export_split, read_manifest


def _data(tmp_path, names=("a", "b", "c"), missing=()):
    """``tmp_path/data`` with ``images/emoji/<name>.png`` for each name not in ``missing``; returns the folder."""
    data = tmp_path / "data"
    for name in names:
        if name not in missing:
            (data / "images" / "emoji").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4, 4), ord(name), np.uint8)).save(data / "images" / "emoji" / f"{name}.png")
    return data


def _manifest(data, files):
    """Write ``data/manifest.jsonl`` with one test-split record per ``file`` value (taken as is)."""
    data.mkdir(parents=True, exist_ok=True)
    (data / "manifest.jsonl").write_text("".join(json.dumps({"file": f, "split": "test"}) + "\n" for f in files))
    return data / "manifest.jsonl"


def _tree(folder):
    """Every file below ``folder`` as sorted relative POSIX paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_export_rejects_files_outside_the_manifest_folder(tmp_path, capsys):
    data = _data(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.png").write_bytes(b"outside")
    manifest = _manifest(data, ["images/emoji/a.png", "../d/x.png", str(data / "images" / "emoji" / "b.png"),
                                "images/../../d/x.png", "images", "images/emoji/c.png"])
    out = tmp_path / "out"
    before = _tree(tmp_path)
    assert main(["data", "export", str(manifest), "-o", str(out)]) == 1
    assert _tree(tmp_path) == sorted(before + ["out/emoji/a.png", "out/emoji/c.png"])  # nothing else written
    assert (tmp_path / "d" / "x.png").read_bytes() == b"outside"
    err = capsys.readouterr().err
    for line, problem in [(2, "contains '..'"), (3, "is absolute"), (4, "contains '..'"), (5, "names no file")]:
        assert f"manifest.jsonl:{line}: file " in err and problem in err
    assert "4 record(s) of split test could not be exported" in err

    linked = tmp_path / "linked"  # a symlink inside the output folder may not lead out of it either
    (linked / "emoji").parent.mkdir()
    (linked / "emoji").symlink_to(tmp_path / "d")
    report = export_split(_manifest(data, ["images/emoji/a.png"]), "test", linked)
    assert report.copied == [] and "outside" in report.failed[0][1] and _tree(tmp_path / "d") == ["x.png"]



def test_export_refuses_symlinks_out_of_the_manifest_folder_and_non_images(tmp_path, capsys):
    data = _data(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("root:x:0:0\n")
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(outside / "real.png")
    emoji = data / "images" / "emoji"
    (emoji / "t.png").write_text("hi\n")
    (emoji / "link.png").symlink_to(outside / "secret.txt")
    (emoji / "png-link.png").symlink_to(outside / "real.png")  # a real image, but outside the manifest's folder
    (data / "images" / "out").symlink_to(outside, target_is_directory=True)
    (emoji / "inside.png").symlink_to(emoji / "b.png")  # a symlink that stays inside is followed
    manifest = _manifest(data, ["images/emoji/a.png", "images/emoji/t.png", "images/emoji/link.png",
                                "images/emoji/png-link.png", "images/out/real.png", "images/emoji/inside.png", "."])
    out = tmp_path / "out"
    assert main(["data", "export", str(manifest), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert _tree(out) == ["emoji/a.png", "emoji/inside.png"]
    assert (out / "emoji/inside.png").read_bytes() == (emoji / "b.png").read_bytes()
    assert "copied 2 image(s)" in captured.out
    prefix = f"alphavae data export: failed: {manifest}"
    assert f"{prefix}:2: file 'images/emoji/t.png': cannot read" in captured.err
    assert "not a readable image" in captured.err
    for line in (3, 4, 5):
        assert f"{prefix}:{line}: file " in captured.err
    assert captured.err.count("outside the manifest's folder") == 3
    assert f"{prefix}:7: file '.' names no file" in captured.err
    assert "alphavae data export: 5 record(s) of split test could not be exported" in captured.err


def test_a_symlinked_manifest_reads_and_guards_the_folder_it_links_to(tmp_path, capsys):
    """Through a symlink, every record failed as "file not found" (its files looked for next to the link), and an
    output inside the real data folder passed the check."""
    data = _data(tmp_path)
    _manifest(data, ["images/emoji/a.png", "images/emoji/b.png"])
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "manifest.jsonl").symlink_to(data / "manifest.jsonl")
    assert main(["data", "export", str(tmp_path / "links" / "manifest.jsonl"), "-o", str(tmp_path / "out")]) == 0
    assert _tree(tmp_path / "out") == ["emoji/a.png", "emoji/b.png"]
    assert main(["data", "export", str(tmp_path / "links" / "manifest.jsonl"), "-o", str(data / "exported")]) == 2
    assert "is inside input folder" in capsys.readouterr().err and not (data / "exported").exists()


def test_a_symlink_loop_is_named_on_every_python(tmp_path, monkeypatch):
    """record_source caught the RuntimeError a loop raised from a plain resolve(); Python 3.13's resolve() no
    longer raises for loops, so there a loop would pass as an ordinary missing file. Both errors are named now."""
    from alphavae.data.manifest import record_source

    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"file 'a.png': cannot resolve \(a symlink loop: "):
        record_source("a.png", tmp_path)
    real_resolve = Path.resolve

    def resolve_313(self, strict=False):  # Python 3.13: OSError ELOOP when strict, no error otherwise
        if strict and self.name == "a.png":
            raise OSError(errno.ELOOP, "Too many levels of symbolic links", str(self))
        return self if self.name == "a.png" else real_resolve(self, strict)

    monkeypatch.setattr(Path, "resolve", resolve_313)
    with pytest.raises(ValueError, match=r"file 'a.png': cannot resolve \(a symlink loop: "):
        record_source("a.png", tmp_path)
    assert record_source("missing.png", tmp_path) == tmp_path.resolve() / "missing.png"


def test_export_skips_missing_images_and_continues(tmp_path, capsys):
    data = _data(tmp_path, missing=("a",))
    manifest = _manifest(data, [f"images/emoji/{name}.png" for name in "abc"] + ["emoji/c.png", "images/emoji/b.png"])
    out = tmp_path / "out"
    report = export_split(manifest, "test", out)
    assert [p.name for p in report.copied] == ["b.png", "c.png"] and report.skipped == []
    assert [where for where, _ in report.failed] == [f"{manifest}:1", f"{manifest}:4", f"{manifest}:5"]
    assert "'images/emoji/a.png': cannot read" in report.failed[0][1] and "already copied from line 3" in report.failed[1][1]
    assert "3 copied" not in report.summary() and "2 copied, 0 skipped (exist), 3 failed" in report.summary()
    assert main(["data", "export", str(manifest), "-o", str(out)]) == 1  # still fails, keeps the copies
    captured = capsys.readouterr()
    assert "copied 0 image(s), kept 2 existing" in captured.out
    assert f"failed: {manifest}:1: file 'images/emoji/a.png': cannot read" in captured.err
    assert _tree(out) == ["emoji/b.png", "emoji/c.png"]


def test_manifest_fields_are_checked_and_a_missing_manifest_is_named_first(tmp_path, capsys, monkeypatch):
    data = _data(tmp_path)
    manifest = _manifest(data, ["images/emoji/a.png", 5])
    with pytest.raises(ValueError, match=r"manifest\.jsonl:2: field 'file' must be a string, got 5"):
        read_manifest(manifest)
    out = tmp_path / "out"
    assert main(["data", "export", str(manifest), "-o", str(out)]) == 2
    assert "manifest.jsonl:2: field 'file' must be a string" in capsys.readouterr().err and not out.exists()
    for bad, problem in [({"file": "a.png", "split": "test", "width": "64"}, "field 'width' must be an integer"),
                         ({"file": "a.png", "split": 1}, "field 'split' must be a string"),
                         ({"file": "", "split": "test"}, "field 'file' must be a non-empty path"),
                         ({"file": "a.png", "split": "test", "licence_ok_for_shipping": 1}, "must be a boolean"),
                         ([1], "must be a JSON object"), ({"split": "test"}, "needs 'file' and 'split'")]:
        manifest.write_text(json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=problem):
            read_manifest(manifest)
    monkeypatch.chdir(data)  # output inside the current folder: the missing manifest is still reported first
    assert main(["data", "export", "nope.jsonl", "-o", "exp4"]) == 2
    assert capsys.readouterr().err.strip() == "alphavae data export: error: nope.jsonl: manifest not found"
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest("nope.jsonl")


def test_export_reports_a_record_naming_a_folder(tmp_path):
    """A record naming a folder (here one whose target folder the export itself created) is a failure, not a
    file kept as existing."""
    data = _data(tmp_path)
    manifest = _manifest(data, ["images/emoji/a.png", "images/emoji"])
    report = export_split(manifest, "test", tmp_path / "out")
    assert [p.name for p in report.copied] == ["a.png"] and report.skipped == []
    assert report.failed == [(f"{manifest}:2", f"file 'images/emoji': {data.resolve() / 'images' / 'emoji'} is a "
                                               "folder, not an image")]


def test_export_names_a_looping_target_or_output(tmp_path, capsys):
    """A copy's target or the output folder that is a symlink loop: ``Path.resolve`` raised RuntimeError (a
    traceback); now the record fails alone, and a looping output is a one-line error."""
    manifest = _manifest(_data(tmp_path), [f"images/emoji/{name}.png" for name in "ab"])
    out = tmp_path / "out"
    (out / "emoji").mkdir(parents=True)
    (out / "emoji" / "a.png").symlink_to("c.png")
    (out / "emoji" / "c.png").symlink_to("a.png")
    assert main(["data", "export", str(manifest), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert (f"failed: {manifest}:1: file 'images/emoji/a.png': target {out / 'emoji' / 'a.png'} cannot be used "
            f"({out / 'emoji' / 'a.png'} is a symlink loop)") in err
    assert (out / "emoji" / "b.png").is_file() and (out / "emoji" / "a.png").is_symlink()
    loop = out / "emoji" / "c.png"
    assert main(["data", "export", str(manifest), "-o", str(loop)]) == 2
    assert f"error: {loop} is a symlink loop\n" in capsys.readouterr().err
