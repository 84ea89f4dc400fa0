"""``alphavae.eval.runner.read_prompts`` (eval-t2i --prompts): keys as given, strict prompts, one-line errors."""

from __future__ import annotations

import json

import pytest

from alphavae.cli import main
from alphavae.eval.runner import read_prompts
from alphavae.io import save_rgba
from test_eval_metrics import soft_rgba


def _write(tmp_path, name, content):
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def test_keys_with_dots_are_used_as_given(tmp_path):
    """Finding 4: 'robot.v1' / 'robot.v2' were cut to 'robot' and the last prompt won silently."""
    path = _write(tmp_path, "p.json", '{"robot": "a robot", "robot.v1": "red robot", "robot.v2": "blue robot"}')
    assert read_prompts(path) == {"robot": "a robot", "robot.v1": "red robot", "robot.v2": "blue robot"}
    lines = _write(tmp_path, "p.jsonl", '{"file": "robot.v2.png", "prompt": "blue"}\n{"file": "img.001", "prompt": "x"}\n'
                                        '{"key": "v1.2", "prompt": "y"}\n')
    assert read_prompts(lines) == {"robot.v2": "blue", "img.001": "x", "v1.2": "y"}


def test_a_one_line_jsonl_file_is_json_lines(tmp_path):
    path = _write(tmp_path, "p.jsonl", '{"key": "g0", "prompt": "a cat"}\n')
    assert read_prompts(path) == {"g0": "a cat"}
    for name in ("one-row.json", "one-row.txt"):  # not named .jsonl: still one row, not the key map {key, prompt}
        path = _write(tmp_path, name, '{"key": "g0", "prompt": "a cat"}\n')
        assert read_prompts(path) == {"g0": "a cat"}


@pytest.mark.parametrize("name, content, message", [
    ("dup.json", '{"a": "x",\n "a": "y"}', "{path}: key 'a' is given twice"),
    ("dup.jsonl", '{"key": "a", "prompt": "x"}\n\n{"file": "a.png", "prompt": "y"}\n',
     "{path}:3: key 'a' is given twice (also on line 1)"),
    ("empty_key.json", '{"": "tree", "la": "x"}', '{path}: key "" is not an image key'),
    ("empty_key.jsonl", '{"key": "", "prompt": "tree"}', '{path}:1: key "" is not an image key'),
    ("null.json", '{"la": null}', "{path}: key 'la' has no prompt (got null;"),
    ("number.jsonl", '{"key": "la", "prompt": 3}', "{path}:1: key 'la' has no prompt (got 3;"),
    ("blank.json", '{"la": "  "}', "{path}: key 'la' has no prompt"),
    ("list.json", '[{"key": "la", "prompt": "tree"}]', "{path}: holds a JSON list; expected a JSON object"),
    ("empty.json", "", "{path}: empty prompts file"),
    ("nothing.json", "{}", "{path}: no prompts in this file"),
    ("both.jsonl", '{"key": "a", "file": "b.png", "prompt": "x"}', '{path}:1: gives both "key" and "file"; give one'),
    ("row.jsonl", '{"key": "a", "prompt": "x"}\n["b", "y"]\n', '{path}:2: expected {{"key": ..., "prompt": ...}}'),
    ("broken.json", '{\n "a": "x",\n "b": }\n', "{path}:3: not JSON (Expecting value)"),
    ("latin1.json", b'{"la": "caf\xe9"}', "{path}: not UTF-8 text"),
    ("surrogate.json", '{"la": "\\ud800"}', "{path}: key 'la' has a prompt that is not valid text"),
])
def test_bad_prompt_files_are_one_line_errors_naming_the_file(tmp_path, name, content, message):
    """Finding 12: null prompts were scored as the text 'None', an empty key gave "PosixPath('.') has an empty
    name", a list or an empty file gave unclear or no errors."""
    path = _write(tmp_path, name, content)
    with pytest.raises(ValueError) as caught:
        read_prompts(path)
    assert str(caught.value).startswith(message.format(path=path)) and "\n" not in str(caught.value)


def test_byte_order_mark_is_accepted(tmp_path):
    """Finding 12: a JSON object saved with a BOM was reported as a bad JSON-Lines line 1."""
    assert read_prompts(_write(tmp_path, "bom.json", b'\xef\xbb\xbf{"la": "tree"}')) == {"la": "tree"}
    assert read_prompts(_write(tmp_path, "bom.jsonl", b'\xef\xbb\xbf{"key": "la", "prompt": "tree"}\n')) == {"la": "tree"}


def test_eval_t2i_scores_dotted_keys_with_their_own_prompts(tmp_path, capsys):
    from test_eval_networks import tiny_clip

    pred = tmp_path / "gen"
    for n, name in enumerate(("robot", "robot.v1", "robot.v2")):
        save_rgba(soft_rgba(32, 32, seed=n), pred / f"{name}.png")
    prompts = _write(tmp_path, "p.json", '{"robot.v1": "red robot", "robot.v2": "blue robot"}')
    out = tmp_path / "out"
    assert main(["eval-t2i", "--pred", str(pred), "--prompts", str(prompts), "--clip", str(tiny_clip(tmp_path / "clip")),
                 "-o", str(out), "--inception", "none"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [image["key"] for image in report["images"]] == ["robot.v1", "robot.v2"]
    assert report["extra"] == ["robot"] and not report["failures"]  # not scored against "blue robot"
    assert "note: 1 image without a prompt ignored (listed in report.json)" in capsys.readouterr().err


def test_eval_t2i_scores_a_generate_folder_with_its_records(tmp_path, capsys):
    """generate's folder holds contact_sheet.png, which has no prompt: it failed every such benchmark (exit 1)."""
    from test_eval_networks import tiny_clip

    pred = tmp_path / "gen"
    for n in range(2):
        save_rgba(soft_rgba(32, 32, seed=n), pred / f"{n:05d}.png")
    save_rgba(soft_rgba(64, 32, seed=5), pred / "contact_sheet.png")
    records = _write(tmp_path, "gen/generations.jsonl", "".join(
        json.dumps({"file": f"{n:05d}.png", "prompt": f"prompt {n}", "seed": n}) + "\n" for n in range(2)))
    out = tmp_path / "out"
    assert main(["eval-t2i", "--pred", str(pred), "--prompts", str(records), "--clip", str(tiny_clip(tmp_path / "clip")),
                 "-o", str(out), "--inception", "none"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [image["key"] for image in report["images"]] == ["00000", "00001"] and report["extra"] == ["contact_sheet"]


def test_eval_t2i_refuses_a_bad_prompts_file_before_loading_clip(tmp_path, capsys):
    pred = tmp_path / "gen"
    save_rgba(soft_rgba(16, 16), pred / "la.png")
    prompts = _write(tmp_path, "p.json", '{"la": null}')
    out = tmp_path / "out"
    assert main(["eval-t2i", "--pred", str(pred), "--prompts", str(prompts), "--clip", str(tmp_path / "no-clip"),
                 "-o", str(out)]) == 2
    assert capsys.readouterr().err == (f"alphavae eval-t2i: error: {prompts}: key 'la' has no prompt (got null; "
                                       "a prompt is a non-empty string)\n")
    assert not out.exists()


def test_eval_t2i_reports_prompts_without_a_generated_image(tmp_path, capsys):
    """Two of four prompts had no image (a generate run that stopped early): scored as a complete benchmark of
    the two, exit 0, and the two appeared nowhere in the report."""
    from test_eval_networks import tiny_clip

    pred = tmp_path / "gen"
    for n in range(2):
        save_rgba(soft_rgba(32, 32, seed=n), pred / f"g{n}.png")
    prompts = _write(tmp_path, "p.json", json.dumps({f"g{n}": f"prompt {n}" for n in range(4)}))
    out = tmp_path / "out"
    assert main(["eval-t2i", "--pred", str(pred), "--prompts", str(prompts), "--clip", str(tiny_clip(tmp_path / "clip")),
                 "-o", str(out), "--inception", "none"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["missing"] == ["g2", "g3"] and [image["key"] for image in report["images"]] == ["g0", "g1"]
    assert report["inputs"] == {"pred": str(pred), "ref": None, "prompts": str(prompts)}
    captured = capsys.readouterr()
    assert "missing: g2: no generated image for this prompt key (any extension)\n" in captured.err
    assert "2 images scored, 2 problems" in captured.out


def test_eval_t2i_refuses_overlapping_generated_and_reference_folders(tmp_path, capsys):
    """--ref equal to --pred gave the FID of a set against itself, and each bad file failed twice, unlabelled."""
    pred = tmp_path / "images" / "gen"
    save_rgba(soft_rgba(16, 16), pred / "la.png")
    prompts = _write(tmp_path, "p.json", '{"la": "a tree"}')
    for ref in (pred, pred.parent):
        assert main(["eval-t2i", "--pred", str(pred), "--ref", str(ref), "--prompts", str(prompts),
                     "--clip", str(tmp_path / "no-clip"), "-o", str(tmp_path / "out")]) == 2
        assert capsys.readouterr().err.startswith(f"alphavae eval-t2i: error: generated-image folder {pred} ")
    assert not (tmp_path / "out").exists()


def test_eval_t2i_labels_a_failing_reference_image_and_explains_its_fid(tmp_path, random_inception, capsys):
    from test_eval_networks import tiny_clip

    pred, ref = tmp_path / "gen", tmp_path / "ref"
    for n in range(2):
        save_rgba(soft_rgba(32, 32, seed=n), pred / f"g{n}.png")
        save_rgba(soft_rgba(32, 32, seed=n + 5), ref / f"r{n}.png")
    (ref / "bad.png").write_bytes(b"not a png")
    prompts = _write(tmp_path, "p.json", '{"g0": "a cat", "g1": "a dog"}')
    assert main(["eval-t2i", "--pred", str(pred), "--ref", str(ref), "--prompts", str(prompts), "--clip",
                 str(tiny_clip(tmp_path / "clip")), "--inception", str(random_inception), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"failed: reference image {ref / 'bad.png'}: not a readable image" in err
    assert "note: FID from 2 reference and 2 generated images: below 2,048 per side it is biased upward" in err
    (ref / "r1.png").unlink()  # one readable reference image left: FID cannot be computed (it was null, unexplained)
    assert main(["eval-t2i", "--pred", str(pred), "--ref", str(ref), "--prompts", str(prompts), "--clip",
                 str(tmp_path / "clip"), "--inception", str(random_inception), "-o", str(tmp_path / "out"),
                 "--overwrite"]) == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["tree"]["overall"]["fid_pooled"].values()) == {None}
    assert ("FID is null (not computed): it needs at least 2 images on each side, got 1 reference and 2 generated."
            in report["notes"])
