"""Tests for alphavae.data.samples and the ``alphavae data samples`` command."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from alphavae.cli import main
from alphavae.data.samples import category_of, select_samples


def _record(name, source="openclipart", width=64, height=64, soft=0.01, transparent=0.5, ok=True, split="test"):
    return {"file": f"images/{source}/{name}.png", "original": f"sub dir/{name}.png", "source": source,
            "package": f"{source}@1", "licence": "MIT", "licence_ok_for_shipping": ok, "width": width,
            "height": height, "frac_soft": soft, "frac_transparent": transparent,
            "pixel_sha256": hashlib.sha256(name.encode()).hexdigest(), "split": split}


def test_categories_from_alpha_statistics():
    assert category_of(_record("a", width=100, height=60)) == "non-square"
    assert category_of(_record("b", soft=0.2, transparent=0.5)) == "semi-transparent"
    assert category_of(_record("c", soft=0.05, transparent=0.5)) == "shadows-glows"
    assert category_of(_record("d", soft=0.01, transparent=0.5)) == "soft-edges"


def test_selection_is_per_group_shippable_and_order_independent():
    records = [_record(f"r{i}", soft=0.01 * (i % 3)) for i in range(12)] + [_record("copyleft", ok=False)]
    chosen = select_samples(records, per_group=2)
    assert chosen == select_samples(records[::-1], per_group=2)
    assert all(r["licence_ok_for_shipping"] for r in chosen)
    counts = {}
    for r in chosen:
        counts[r["category"]] = counts.get(r["category"], 0) + 1
    assert set(counts.values()) == {2}
    with pytest.raises(ValueError, match="licence_ok_for_shipping"):
        select_samples([_record("x", ok=False)])


def test_selection_takes_only_the_held_out_split():
    records = [_record(f"t{i}", split="train") for i in range(5)] + [_record("held", split="test")]
    assert [r["file"] for r in select_samples(records)] == ["images/openclipart/held.png"]
    with pytest.raises(ValueError, match="split 'test'"):
        select_samples(records[:5])


def _write_data(data, records):
    """Write each record's image (its width x height, semi-transparent square) and ``data/manifest.jsonl``."""
    for record in records:
        rgba = np.zeros((record["height"], record["width"], 4), dtype=np.uint8)
        rgba[4:-4, 4:-4] = (10, 200, 10, 128)
        (data / record["file"]).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgba, "RGBA").save(data / record["file"])
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return data / "manifest.jsonl"


def test_samples_command_writes_images_and_licence(tmp_path):
    data = tmp_path / "data"
    _write_data(data, [_record(f"img{i}", width=width, height=height) for i, (width, height) in enumerate([(80, 40), (48, 48)])])
    out = tmp_path / "examples"
    assert main(["data", "samples", str(data / "manifest.jsonl"), "-o", str(out), "--long-side", "40"]) == 0
    wide = Image.open(out / "images/clipart/non-square/sub_dir_img0.png")
    assert wide.size == (40, 20) and wide.mode == "RGBA"
    licence = (out / "LICENSE.md").read_text()
    assert "`usr/share/openclipart/png/sub dir/img1.png`" in licence and "openclipart@1" in licence and "public domain" in licence


def test_samples_licence_is_kept_or_lists_every_image_present(tmp_path, capsys):
    manifest = _write_data(tmp_path / "data", [_record(f"img{i}", width=48, height=48) for i in range(2)])
    out = tmp_path / "examples"
    samples = ["data", "samples", str(manifest), "-o", str(out)]
    assert main([*samples, "--per-group", "1"]) == 0
    first = (out / "LICENSE.md").read_text()
    assert main([*samples, "--per-group", "1"]) == 0  # the same choice again: nothing changes
    assert (out / "LICENSE.md").read_text() == first
    assert main([*samples, "--per-group", "2"]) == 2  # LICENSE.md would change: refused, nothing written
    assert "LICENSE.md: already exists and would change" in capsys.readouterr().err
    assert (out / "LICENSE.md").read_text() == first and len(list(out.rglob("*.png"))) == 1
    assert main([*samples, "--per-group", "2", "--overwrite"]) == 0
    assert main([*samples, "--per-group", "1", "--overwrite"]) == 0  # img of the run before stays, so it stays listed
    licence = (out / "LICENSE.md").read_text()
    assert licence.count("| `images/clipart/") == 2 and all(f"sub dir/img{i}.png" in licence for i in range(2))
    (out / "LICENSE.md").write_text(licence + "edited by hand\n")
    assert main([*samples, "--per-group", "1"]) == 2  # hand edits are not lost
    assert (out / "LICENSE.md").read_text().endswith("edited by hand\n")


def test_samples_skip_an_unreadable_image_and_write_the_rest(tmp_path, capsys):
    manifest = _write_data(tmp_path / "data", [_record(f"img{i}", width=48, height=48) for i in range(2)])
    (tmp_path / "data/images/openclipart/img0.png").write_bytes(b"not a png")
    out = tmp_path / "examples"
    assert main(["data", "samples", str(manifest), "-o", str(out), "--per-group", "2"]) == 1
    err = capsys.readouterr().err
    assert "img0.png" in err and "1 chosen sample(s) were skipped" in err
    assert [path.name for path in out.rglob("*.png")] == ["sub_dir_img1.png"]
    licence = (out / "LICENSE.md").read_text()
    assert "sub dir/img1.png" in licence and "sub dir/img0.png" not in licence
    _write_data(tmp_path / "data", [_record(f"img{i}", width=48, height=48) for i in range(2)])  # source repaired
    assert main(["data", "samples", str(manifest), "-o", str(out), "--per-group", "2"]) == 2  # LICENSE.md would change
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["data", "samples", str(manifest), "-o", str(out), "--per-group", "2", "--overwrite"]) == 0
    assert "sub dir/img0.png" in (out / "LICENSE.md").read_text() and len(list(out.rglob("*.png"))) == 2



def test_samples_keep_the_first_of_two_records_with_the_same_name(tmp_path, capsys):
    first, second = sorted((_record(name, width=48, height=48) for name in ("x", "y")), key=lambda r: r["pixel_sha256"])
    manifest = _write_data(tmp_path / "data", [{**second, "original": "b.png"}, {**first, "original": "b.png"}])
    out = tmp_path / "examples"
    assert main(["data", "samples", str(manifest), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"1 sample and LICENSE.md under {out}" in captured.out
    assert (f"alphavae data samples: failed: record of file {second['file']!r}: its sample "
            f"images/clipart/soft-edges/b.png is already taken by the record of file {first['file']!r}") in captured.err
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.png")] == ["images/clipart/soft-edges/b.png"]
    assert (out / "LICENSE.md").read_text().count("| `images/clipart/") == 1


@pytest.mark.parametrize("original", ["", "..", "a/.."])
def test_samples_report_a_record_without_a_name_and_write_the_rest(tmp_path, capsys, original):
    manifest = _write_data(tmp_path / "data", [{**_record("img0", width=48, height=48), "original": original},
                                               _record("img1", width=48, height=48)])
    out = tmp_path / "examples"
    assert main(["data", "samples", str(manifest), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"record of file 'images/openclipart/img0.png': original {original!r} has no file name" in err
    assert [p.name for p in out.rglob("*.png")] == ["sub_dir_img1.png"]


def test_samples_refuse_files_outside_the_manifest_folder(tmp_path, capsys):
    data, outside = tmp_path / "data", tmp_path / "outside"
    records = [{**_record(name, width=48, height=48), "file": file} for name, file in
               [("abs", str(outside / "abs.png")), ("up", "../outside/up.png"), ("link", "images/link.png"),
                ("ok", "images/ok.png")]]
    manifest = _write_data(data, records)  # writes abs.png and up.png into outside/
    (data / "images" / "link.png").unlink()
    (data / "images" / "link.png").symlink_to(outside / "up.png")
    out = tmp_path / "examples"
    assert main(["data", "samples", str(manifest), "-o", str(out), "--per-group", "4"]) == 1
    err = capsys.readouterr().err
    assert "is absolute" in err and "contains '..'" in err and "'images/link.png' resolves to" in err
    assert "alphavae data samples: 3 chosen sample(s) were skipped" in err
    assert [p.name for p in out.rglob("*.png")] == ["sub_dir_ok.png"]
    assert "sub dir/ok.png" in (out / "LICENSE.md").read_text()


def test_samples_refuse_output_in_the_manifest_folder_and_a_missing_manifest(tmp_path, capsys):
    data = tmp_path / "data"
    manifest = _write_data(data, [_record("img0")])
    before = sorted(data.rglob("*"))
    assert main(["data", "samples", str(manifest), "-o", str(data)]) == 2
    assert "is inside input folder" in capsys.readouterr().err
    assert sorted(data.rglob("*")) == before
    assert main(["data", "samples", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "out")]) == 2
    missing = f"alphavae data samples: error: {tmp_path / 'nope.jsonl'}: manifest not found"
    assert capsys.readouterr().err.strip() == missing
    assert not (tmp_path / "out").exists()


def test_samples_never_write_into_the_manifest_folder_held_by_or_linked_from_the_output(tmp_path, capsys):
    """Only OUTPUT itself was checked: an OUTPUT holding the manifest's folder, or a symlink from OUTPUT into it, got
    samples written among the sources, and --overwrite replaced a source image with its shrunk copy."""
    out = tmp_path / "examples"
    held = out / "images/clipart/soft-edges"  # the manifest's folder lies where the sample goes
    manifest = _write_data(held, [{**_record("x", width=48, height=48), "file": "x.png", "original": "x.png"}])
    source = (held / "x.png").read_bytes()
    assert main(["data", "samples", str(manifest), "-o", str(out), "--long-side", "16", "--overwrite"]) == 1
    assert "lies inside the manifest's folder" in capsys.readouterr().err
    assert (held / "x.png").read_bytes() == source and not (out / "LICENSE.md").exists()

    data, linked = tmp_path / "data", tmp_path / "linked"
    manifest = _write_data(data, [_record("img0", width=48, height=48)])
    (linked / "images/clipart").mkdir(parents=True)
    (linked / "images/clipart/soft-edges").symlink_to(data / "images/openclipart", target_is_directory=True)
    before = sorted(data.rglob("*"))
    assert main(["data", "samples", str(manifest), "-o", str(linked), "--overwrite"]) == 1
    assert f"resolves to {data / 'images/openclipart/sub_dir_img0.png'}, outside {linked}" in capsys.readouterr().err
    assert sorted(data.rglob("*")) == before


def test_samples_report_a_folder_where_a_sample_goes_and_leave_it_out_of_the_licence(tmp_path, capsys):
    manifest = _write_data(tmp_path / "data", [_record(f"img{i}", width=48, height=48) for i in range(2)])
    out = tmp_path / "examples"
    (out / "images/clipart/soft-edges/sub_dir_img0.png").mkdir(parents=True)
    assert main(["data", "samples", str(manifest), "-o", str(out), "--per-group", "2"]) == 1
    captured = capsys.readouterr()
    assert "sub_dir_img0.png (it exists and is not a file)" in captured.err
    assert f"1 sample and LICENSE.md under {out}" in captured.out
    assert "sub dir/img0.png" not in (out / "LICENSE.md").read_text()


def test_export_copies_one_split_as_a_tree_and_keeps_existing(tmp_path):
    from alphavae.data.manifest import write_jsonl

    data = tmp_path / "data"
    records = []
    for name, split in [("a", "test"), ("b", "train"), ("c", "test")]:
        path = data / "images" / "emoji" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(path)
        records.append({"file": f"images/emoji/{name}.png", "split": split})
    write_jsonl(records, data / "manifest.jsonl")
    out = tmp_path / "test-split"
    assert main(["data", "export", str(data / "manifest.jsonl"), "-o", str(out)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["emoji/a.png", "emoji/c.png"]
    assert (out / "emoji" / "a.png").read_bytes() == (data / "images" / "emoji" / "a.png").read_bytes()
    assert main(["data", "export", str(data / "manifest.jsonl"), "-o", str(out)]) == 0  # kept, no error
    assert main(["data", "export", str(data / "manifest.jsonl"), "-o", str(data / "inside")]) == 2
    assert main(["data", "export", str(data / "manifest.jsonl"), "--split", "nope", "-o", str(out)]) == 2


def test_samples_skip_a_name_too_long_and_keep_the_licence(tmp_path, capsys):
    """A sample name over 255 bytes: ``Path.exists`` raised ENAMETOOLONG, exit 2 after some images were written
    but before LICENSE.md (their attribution lost). Now that record is skipped and the licence written."""
    records = [_record(f"img{i}", width=48, height=48) for i in range(3)]
    records[1] = {**records[1], "original": "y" * 300 + ".png"}
    manifest = _write_data(tmp_path / "data", records)
    out = tmp_path / "examples"
    assert main(["data", "samples", str(manifest), "-o", str(out), "--per-group", "3"]) == 1
    err = capsys.readouterr().err
    assert f"/{'y' * 300}.png (output name too long)" in err and "1 chosen sample(s) were skipped" in err
    assert sorted(path.name for path in out.rglob("*.png")) == ["sub_dir_img0.png", "sub_dir_img2.png"]
    licence = (out / "LICENSE.md").read_text()
    assert "sub dir/img0.png" in licence and "sub dir/img2.png" in licence and "y" * 300 not in licence
