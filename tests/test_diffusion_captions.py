import json
import re

import pytest

from alphavae.diffusion.captions import CaptionError, read_caption_table, read_prompts, resolve_captions


def test_csv_and_jsonl_tables(tmp_path):
    csv_path = tmp_path / "caps.csv"
    csv_path.write_text("file_name,caption\nsub/a.png,a red ball\nb.png, glass cup \n", encoding="utf-8")
    jsonl_path = tmp_path / "caps.jsonl"
    rows = [json.dumps({"image": "a.png", "text": "x"}), "", json.dumps({"file": "c.png", "prompt": "y"})]
    jsonl_path.write_text("\n".join(rows) + "\n")
    assert read_caption_table(csv_path) == {"sub/a.png": "a red ball", "b.png": "glass cup"}
    assert read_caption_table(jsonl_path) == {"a.png": "x", "c.png": "y"}


@pytest.mark.parametrize("name, text, message", [
    ("t.jsonl", '{"file_name": "a.png"}\n', "t.jsonl:1: needs one of the columns caption"),
    ("t.jsonl", "not json\n", "t.jsonl:1: not JSON"),
    ("t.csv", "caption\nhello\n", "t.csv:2: needs one of the columns file_name"),
    ("t.txt", "a", "must be .csv or .jsonl"),
    ("list.jsonl", '{"file_name": "a.png", "caption": ["a cat", "a dog"]}\n',
     "list.jsonl:1: column 'caption' must be text"),
    ("bool.jsonl", '{"file_name": "a.png", "caption": true}\n',
     "bool.jsonl:1: column 'caption' must be text, got True"),
    ("dup.csv", "file_name,caption\na.png,a cat\na.png,a dog\n",
     "dup.csv:3: image 'a.png' is given twice (also on line 2)"),
    ("blank.csv", "file_name,caption\na.png,  \n", "blank.csv:2: column 'caption' is empty"),
    ("quoted.csv", 'file_name,caption\na.png,"two\nlines"\nb.png,\n', "quoted.csv:4: column 'caption' is empty"),
    ("header.csv", "file_name,caption\n", "header.csv: no rows"),
    ("empty.jsonl", "\n", "empty.jsonl: no rows"),
    # a lone surrogate reached the tokenizer at the image's first draw: a TypeError traceback mid-run
    ("surrogate.jsonl", '{"file_name": "a.png", "text": "ok"}\n{"file_name": "b.png", "text": "a cat \\ud83d"}\n',
     'surrogate.jsonl:2: caption of \'b.png\' is not valid text (a lone UTF-16 surrogate "a cat \\ud83d")'),
])
def test_table_errors_name_file_and_line(tmp_path, name, text, message):
    """Also what would train on wrong captions: lists or booleans turned into text, a repeated image whose
    last caption won, a table without rows."""
    (tmp_path / name).write_text(text)
    with pytest.raises(CaptionError, match=re.escape(message)):
        read_caption_table(tmp_path / name)


def test_precedence_table_then_sidecar_then_fallback(tmp_path):
    images = [tmp_path / "sub" / "a.png", tmp_path / "b.png", tmp_path / "c.png", tmp_path / "d.png"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("wrong folder")
    (tmp_path / "sub" / "a.txt").write_text("sidecar a")
    (tmp_path / "b.txt").write_text("sidecar b\n")
    (tmp_path / "d.txt").write_text("   ")
    table = {"sub/a.png": "table a", "c.png": ""}
    assert resolve_captions(images, tmp_path, table) == ["table a", "sidecar b", "RGBA", "RGBA"]
    assert resolve_captions(images, tmp_path, None, fallback="sticker")[2] == "sticker"


def test_read_prompts(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# comment\na cat\n\n  glass of water  \n")
    assert read_prompts(path) == ["a cat", "glass of water"]
    path.write_text("# only a comment\n")
    with pytest.raises(ValueError, match="p.txt: no prompts"):
        read_prompts(path)


def test_byte_order_marks_are_dropped(tmp_path):
    """Spreadsheet CSV exports and Windows editors start files with U+FEFF; it must not end up in the header
    (then no column would be found), the first prompt or a sidecar caption."""
    table = tmp_path / "caps.csv"
    table.write_bytes("\ufefffile_name,caption\na.png,a red ball\n".encode())
    assert read_caption_table(table) == {"a.png": "a red ball"}
    prompts = tmp_path / "p.txt"
    prompts.write_bytes("\ufeffa cat\n".encode())
    assert read_prompts(prompts) == ["a cat"]
    (tmp_path / "b.txt").write_bytes("\ufeffsidecar b".encode())
    assert resolve_captions([tmp_path / "b.png"], tmp_path) == ["sidecar b"]


@pytest.mark.parametrize("name", ["t.csv", "t.jsonl"])
def test_table_that_is_not_utf8_or_a_folder_is_a_caption_error(tmp_path, name):
    (tmp_path / name).write_bytes(b"file_name,caption\n\xff\xfe.png,x\n")
    with pytest.raises(CaptionError, match=f"{name}: not UTF-8 text"):
        read_caption_table(tmp_path / name)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / name).mkdir()
    with pytest.raises(CaptionError, match="is a folder"):
        read_caption_table(tmp_path / "folder" / name)


def test_sidecars_that_are_not_utf8_are_all_named_at_once(tmp_path):
    """The first bad sidecar stopped the run: fixing seven files took seven runs."""
    for name in "abcdefg":
        (tmp_path / f"{name}.txt").write_bytes(b"\xffcaption")
    (tmp_path / "z.txt").write_text("fine")
    with pytest.raises(ValueError, match=rf"^7 caption file\(s\) cannot be read: {tmp_path / 'a.txt'}: not UTF-8 text "
                                         rf"\(invalid start byte at byte 0\); {tmp_path / 'b.txt'}: .*; "
                                         rf"{tmp_path / 'e.txt'}: not UTF-8 text \(invalid start byte at byte 0\); and "
                                         "2 more$"):
        resolve_captions([tmp_path / f"{name}.png" for name in "zabcdefg"], tmp_path)


def test_table_rows_that_name_no_image_are_warned_about(tmp_path):
    images = [tmp_path / "data" / "a.png"]
    with pytest.warns(UserWarning, match=r"^caption table: 1 of 2 rows name no training image \(e.g. 'images/b.png'\)"):
        captions = resolve_captions(images, tmp_path / "data", {"a.png": "cat", "images/b.png": "dog"})
    assert captions == ["cat"]


def test_a_table_naming_no_training_image_is_an_error(tmp_path):
    """Every image would silently train on the fallback prompt (a warning that scrolled away under the bars)."""
    with pytest.raises(CaptionError, match=r"^caps.jsonl: none of its 2 rows names a training image \(e.g. 'x.png'\)"):
        resolve_captions([tmp_path / "a.png"], tmp_path, {"x.png": "cat", "y.png": "dog"}, source="caps.jsonl")


def test_keys_that_lead_to_the_image_from_the_working_folder_match(tmp_path, monkeypatch):
    data = tmp_path / "data"
    images = [data / "a.png", data / "sub" / "b.png", data / "c.png"]
    for image in images:
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"png")
    monkeypatch.chdir(tmp_path)
    table = {"data/a.png": "from the working folder", str(data / "sub" / "b.png"): "absolute", "./c.png": "dotted"}
    assert resolve_captions(images, data, table) == ["from the working folder", "absolute", "dotted"]


def test_a_file_name_row_captioning_several_images_is_warned_about(tmp_path):
    images = [tmp_path / "set1" / "0001.png", tmp_path / "set2" / "0001.png"]
    with pytest.warns(UserWarning, match=r"the file-name row '0001.png' captions 2 images \(.*set1/0001.png, "):
        assert resolve_captions(images, tmp_path, {"0001.png": "cat"}) == ["cat", "cat"]
