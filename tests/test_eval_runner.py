"""alphavae.eval pairing, aggregation, runner, reports and the eval / eval-vae / eval-t2i commands."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_eval_metrics import perturbed, soft_rgba

from alphavae.cli import main
from alphavae.eval.aggregate import ImageRecord, aggregate
from alphavae.eval.networks import Networks
from alphavae.eval.pairs import pair_folders, tree_position
from alphavae.eval.protocols import make_protocol
from alphavae.eval.report import CSV_COLUMNS
from alphavae.eval.runner import _gather, _score_all, build_report, folder_loader
from alphavae.io import save_rgba, to_pil
from alphavae.testing import tiny_rgb_vae, tiny_rgba_vae

NO_NETS = ["--lpips", "none", "--inception", "none"]


@pytest.fixture()
def tree(tmp_path):
    """GT / prediction trees ds/sub/{cat_a, cat_b}/*.png (+ one missing, one extra, one bad, one mismatched)."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for i, (cat, n) in enumerate([("cat_a", 0), ("cat_a", 1), ("cat_b", 2)]):
        image = soft_rgba(seed=n)
        save_rgba(image, gt / "sub" / cat / f"im{n}.png")
        (pred / "sub" / cat).mkdir(parents=True, exist_ok=True)
        to_pil(perturbed(image, seed=i)).save(pred / "sub" / cat / f"im{n}.webp", lossless=True)
    save_rgba(soft_rgba(seed=9), gt / "sub" / "cat_b" / "missing.png")
    save_rgba(soft_rgba(seed=9), pred / "sub" / "cat_b" / "extra.png")
    save_rgba(soft_rgba(seed=5), gt / "sub" / "cat_b" / "bad.png")
    (pred / "sub" / "cat_b" / "bad.png").write_bytes(b"not an image")
    save_rgba(soft_rgba(seed=6), gt / "sub" / "cat_b" / "small.png")
    save_rgba(soft_rgba(20, 20, seed=6), pred / "sub" / "cat_b" / "small.png")
    return gt, pred


def test_tree_position():
    assert tree_position("x.png") == (".", ".", ".")
    assert tree_position("animal/x") == (".", ".", "animal")
    assert tree_position("AIM/test/animal/x") == ("AIM", "test", "animal")
    assert tree_position("a/b/c/d/x") == ("a/b", "c", "d")


def test_pairing_reports_missing_extra(tree):
    plan = pair_folders(*tree)
    assert [p.key for p in plan.pairs] == ["sub/cat_a/im0", "sub/cat_a/im1", "sub/cat_b/bad", "sub/cat_b/im2", "sub/cat_b/small"]
    assert plan.missing == ["sub/cat_b/missing"] and plan.extra == ["sub/cat_b/extra"]
    assert plan.pairs[0].pred.suffix == ".webp" and plan.pairs[0].category == "cat_a"


def test_macro_versus_micro():
    records = [ImageRecord(f"k{i}", ".", "s", cat, {"black": {"psnr": v}}) for i, (cat, v) in
               enumerate([("a", 10.0), ("a", 20.0), ("a", 30.0), ("b", 40.0)])]
    tree = aggregate(records)
    assert tree["overall"]["macro"]["black"]["psnr"] == pytest.approx((20 + 40) / 2)
    assert tree["overall"]["micro"]["black"]["psnr"] == pytest.approx(25.0)
    assert tree["overall"]["macro"]["rgb"]["psnr"] == pytest.approx(30.0)  # mean over the backgrounds present


def test_fid_per_category_and_pooled():
    g = torch.Generator().manual_seed(0)
    records, features = [], {}
    for i in range(6):
        records.append(ImageRecord(f"k{i}", ".", ".", "ab"[i % 2], {"black": {"psnr": 1.0}}))
        features[f"k{i}"] = {"black": (torch.randn(1, 4, generator=g), torch.randn(1, 4, generator=g) + 1)}
    tree = aggregate(records, features)
    leaf = tree["datasets"]["."]["subsets"]["."]["categories"]["a"]["mean"]
    assert leaf["black"]["fid"] > 0 and tree["overall"]["fid_pooled"]["black"] > 0
    assert tree["overall"]["fid_pooled"]["rgb"] == tree["overall"]["fid_pooled"]["black"]


def test_sharding_gives_identical_report(tree):
    protocol = make_protocol("clean")
    plan = pair_folders(*tree)
    load = folder_loader(protocol)
    single = _gather([_score_all(plan.pairs, load, protocol, Networks(), 2, None)], 2)
    shards = [_score_all(plan.pairs[i::2], load, protocol, Networks(), 2, None) for i in (1, 0)]
    merged = _gather(shards, 2)
    a, b = (build_report(e, protocol, plan, Networks()) for e in (single, merged))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert single.worst.worst_first() == merged.worst.worst_first()


@pytest.mark.parametrize("protocol", ["reference", "clean"])
def test_eval_command_writes_reports_and_flags_problems(tree, tmp_path, protocol, capsys):
    out = tmp_path / "report"
    code = main(["eval", "--gt", str(tree[0]), "--pred", str(tree[1]), "-o", str(out), "--protocol", protocol, *NO_NETS])
    assert code == 1  # a missing prediction, an unreadable file and a size mismatch
    printed = capsys.readouterr()
    err = printed.err
    assert "missing" in err and "bad" in err and "size mismatch" in err
    assert "1 prediction file without GT ignored (listed in report.json) (images are paired by path relative" in err
    report = json.loads((out / "report.json").read_text())
    overall = report["tree"]["overall"]
    psnr = [overall[kind]["rgb"]["psnr"] for kind in ("micro", "macro")]
    assert f"9-background PSNR {psnr[0]:.2f} / {psnr[1]:.2f} dB, SSIM " in printed.out  # the numbers, on the terminal
    assert ("alpha MAE " in printed.out) == (protocol == "clean") and printed.out.endswith(" (micro / macro)\n")
    assert report["tree"]["overall"]["images"] == 3 and len(report["failures"]) == 2
    assert report["extra"] == ["sub/cat_b/extra"]
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert {r["group"] for r in rows} >= {"rgb", "black", "magenta"}
    assert ("rgba" in {r["group"] for r in rows}) == (protocol == "reference")
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "http" not in html.replace("http-equiv", "")
    assert "Summary (micro: every image weighs the same)" in html and f"{psnr[0]:.4f}" in html
    if protocol == "clean":
        assert all(0 <= report["tree"]["overall"]["macro"]["alpha"][m] for m in ("alpha_mae", "alpha_iou"))
    assert main(["eval", "--gt", str(tree[0]), "--pred", str(tree[1]), "-o", str(out), *NO_NETS]) == 2
    assert "report exists" in capsys.readouterr().err


def test_eval_refuses_output_inside_input(tree, capsys):
    assert main(["eval", "--gt", str(tree[0]), "--pred", str(tree[1]), "-o", str(tree[0] / "r"), *NO_NETS]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tree[0] / "r").exists()


def test_eval_vae_with_source_reports_zero_drift_for_opaque_init(tmp_path):
    data = tmp_path / "data"
    for n in range(2):
        save_rgba(soft_rgba(32, 40, seed=n), data / f"im{n}.png")
    tiny_rgba_vae("flux").save_pretrained(tmp_path / "vae")
    tiny_rgb_vae("flux").save_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    code = main(["eval-vae", "--vae", str(tmp_path / "vae"), "--data", str(data), "--source-vae", str(tmp_path / "src"),
                 "-o", str(out), "--protocol", "clean", *NO_NETS])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    macro = report["tree"]["overall"]["macro"]
    assert macro["latent_drift"]["mse"] == pytest.approx(0.0, abs=1e-10)
    assert macro["alpha"]["alpha_leakage"] == pytest.approx(1.0)  # untrained: alpha = 1 everywhere
    assert report["opaque_predictions"] == ["im0", "im1"] and report["notes"][-1].startswith(
        "2 predictions fully opaque (alpha 1 everywhere) where the GT has transparency: the VAE decodes no transparency")
    assert report["inputs"] == {"data": str(data), "vae": str(tmp_path / "vae"), "dtype": "float32",
                                "dtype_policy": "float32", "tile_size": None, "tile_overlap": None,
                                "tile_mode": None, "min_side": None, "source_vae": str(tmp_path / "src")}
    assert main(["eval-vae", "--vae", str(tmp_path / "vae"), "--data", str(data), "-o", str(tmp_path / "canvas"),
                 "--protocol", "clean", "--min-side", "64", *NO_NETS]) == 0
    assert json.loads((tmp_path / "canvas" / "report.json").read_text())["inputs"]["min_side"] == 64


def test_eval_t2i(tmp_path):
    from test_eval_networks import tiny_clip

    pred = tmp_path / "gen"
    for n in range(2):
        save_rgba(soft_rgba(32, 32, seed=n), pred / f"g{n}.png")
    (tmp_path / "prompts.jsonl").write_text('{"key": "g0", "prompt": "a cat"}\n{"file": "g1.png", "prompt": "dog"}\n')
    out = tmp_path / "out"
    code = main(["eval-t2i", "--pred", str(pred), "--prompts", str(tmp_path / "prompts.jsonl"),
                 "--clip", str(tiny_clip(tmp_path / "clip")), "-o", str(out), "--inception", "none"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["tree"]["overall"]["macro"]["rgb"]) == {"clip_score"}
    assert report["clip_score_clamped"] >= 0


@pytest.mark.slow
def test_eval_t2i_under_two_processes_writes_the_one_process_report(tmp_path, random_inception):
    """Under a 2-process launch each process scores half of the generated and reference images; the main
    process alone writes the report, equal to a one-process run (FID included). Before, every process
    scored everything and each wrote the report."""
    from test_eval_networks import tiny_clip

    pred, ref = tmp_path / "gen", tmp_path / "ref"
    for n in range(3):
        save_rgba(soft_rgba(32, 32, seed=n), pred / f"g{n}.png")
        save_rgba(soft_rgba(32, 32, seed=10 + n), ref / f"r{n}.png")
    (ref / "bad.png").write_bytes(b"not a png")
    (tmp_path / "prompts.json").write_text(json.dumps({"g0": "a cat", "g1": "a dog"}))  # g2: no prompt
    args = ["eval-t2i", "--pred", str(pred), "--prompts", str(tmp_path / "prompts.json"), "--ref", str(ref),
            "--clip", str(tiny_clip(tmp_path / "clip")), "--inception", str(random_inception)]
    bin_dir = str(Path(sys.executable).parent)
    command = [shutil.which("torchrun", path=bin_dir), "--standalone", "--nproc_per_node", "2", shutil.which("alphavae", path=bin_dir),
               *args, "-o", str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 1, completed.stderr[-3000:]  # bad.png failed
    assert completed.stdout.count("wrote ") == 3  # the main process's three reports only
    assert main([*args, "-o", str(tmp_path / "one")]) == 1
    one, two = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two"))
    assert two["failures"] == one["failures"] and [f["key"] for f in one["failures"]] == ["ref:bad"]
    assert two["extra"] == one["extra"] == ["g2"]
    overall = [report["tree"]["overall"] for report in (one, two)]
    assert overall[0]["images"] == overall[1]["images"] == 2
    for name, group in overall[0]["micro"].items():
        assert overall[1]["micro"][name] == pytest.approx(group, rel=1e-5)
    for name, fid in overall[0]["fid_pooled"].items():
        assert overall[1]["fid_pooled"][name] == pytest.approx(fid, rel=1e-5)


def _refuse_scoring(monkeypatch):
    """Make any scoring fail the test: the checks under test must come first."""
    from alphavae.eval import runner

    def boom(*args, **kwargs):
        raise AssertionError("scoring started before the setup checks")

    monkeypatch.setattr(runner, "run_sharded", boom)


def _small_tree(tmp_path, sizes=((16, 16),)):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for n, (h, w) in enumerate(sizes):
        image = soft_rgba(h, w, seed=n)
        save_rgba(image, gt / f"im{n}.png")
        save_rgba(perturbed(image), pred / f"im{n}.png")
    return gt, pred


def test_existing_report_refused_before_scoring(tmp_path, monkeypatch, capsys):
    """Defect 1: a second run without --overwrite scored everything before failing."""
    gt, pred = _small_tree(tmp_path)
    out = tmp_path / "out"
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), *NO_NETS]) == 0
    before = (out / "report.json").read_bytes()
    _refuse_scoring(monkeypatch)
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), *NO_NETS]) == 2
    assert f"{out / 'report.json'}: report exists (use --overwrite)" in capsys.readouterr().err
    assert (out / "report.json").read_bytes() == before
    assert main(["eval-vae", "--vae", str(tmp_path / "no-vae-needed"), "--data", str(gt), "-o", str(out), *NO_NETS]) == 2
    assert "report exists" in capsys.readouterr().err  # refused before the VAE is even loaded


def test_unwritable_report_folder_refused_before_scoring(tmp_path, monkeypatch, capsys):
    """Defect 1: a read-only -o failed only after all the work. The probe file is removed again."""
    gt, pred = _small_tree(tmp_path)
    _refuse_scoring(monkeypatch)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(blocker / "out"), *NO_NETS]) == 2
    assert f"{blocker / 'out'}: cannot write the report there" in capsys.readouterr().err
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    out = tmp_path / "ro"
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), *NO_NETS]) == 2
    assert f"{out}: cannot write the report there (Permission denied)" in capsys.readouterr().err
    monkeypatch.undo()
    from alphavae.eval.report import check_report_destination

    check_report_destination(out / "deeper")
    assert not out.exists()  # nothing is created by the check, so a later failure leaves no empty folder
    with pytest.raises(NotADirectoryError, match="file.txt is not a folder"):
        check_report_destination(blocker)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError, match="dangling symlink"):
        check_report_destination(tmp_path / "dangling")
    (tmp_path / "taken" / "report.json").mkdir(parents=True)  # found only after scoring, naming a temporary file
    with pytest.raises(IsADirectoryError, match=r"taken/report\.json: is a folder, where the report file goes"):
        check_report_destination(tmp_path / "taken", overwrite=True)


def test_tiny_images_scored_without_ssim(tmp_path, capsys):
    """Defect 2: images under 11 px failed with an SSIM error naming no file; now scored, SSIM null."""
    gt, pred = _small_tree(tmp_path, sizes=[(1, 1), (5, 30), (16, 16)])
    out = tmp_path / "out"
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), "--protocol", "clean", *NO_NETS]) == 0
    report = json.loads((out / "report.json").read_text())
    scores = {image["key"]: image["scores"] for image in report["images"]}
    assert scores["im0"]["black"]["ssim"] is None and scores["im1"]["black"]["ssim"] is None
    assert scores["im2"]["black"]["ssim"] is not None
    assert report["tree"]["overall"]["micro"]["black"]["ssim"] == pytest.approx(scores["im2"]["black"]["ssim"])
    assert report["unscored"]["black"]["ssim"] == 2
    assert any(note.startswith("ssim is null (not applicable) for 2 images:") for note in report["notes"])
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert all(r["ssim"] for r in rows)  # the mean over the images that have it
    assert "ssim is null" in (out / "report.html").read_text()


def test_scoring_error_names_the_pair(tmp_path, monkeypatch, capsys):
    """Defect 2: a scoring error's message names the GT and prediction files."""
    from alphavae.eval import runner

    def fail(*args, **kwargs):
        raise ValueError("cannot score")

    monkeypatch.setattr(runner, "score_pair", fail)
    gt, pred = _small_tree(tmp_path)
    out = tmp_path / "out"
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), *NO_NETS]) == 1
    expected = f"{gt / 'im0.png'} vs {pred / 'im0.png'}: cannot score"
    assert f"failed: {expected}\n" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["failures"] == [{"key": "im0", "error": expected}]


def test_empty_or_missing_input_folders_are_errors(tmp_path, capsys):
    """Defect 3: empty --gt / --pred gave an empty report with exit 0; a missing path said 'not a folder'."""
    gt, pred = _small_tree(tmp_path)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    out = tmp_path / "out"
    for gt_dir, pred_dir, message in [
        (empty, pred, f"{empty}: no images in this folder"),
        (gt, empty, f"{empty}: no images in this folder"),
        (tmp_path / "nope", pred, f"{tmp_path / 'nope'}: folder does not exist"),
        (gt / "im0.png", pred, f"{gt / 'im0.png'}: not a folder"),
    ]:
        assert main(["eval", "--gt", str(gt_dir), "--pred", str(pred_dir), "-o", str(out), *NO_NETS]) == 2
        assert message in capsys.readouterr().err
        assert not (out / "report.json").exists()
    assert main(["eval-vae", "--vae", str(tmp_path / "unused"), "--data", str(empty), "-o", str(out), *NO_NETS]) == 2
    assert f"{empty}: no images in this folder" in capsys.readouterr().err


def test_not_applicable_alpha_metrics_skipped_by_means(tmp_path):
    """Defect 4: an all-opaque GT contributed leakage 0 and a band-less GT edge-band error 0."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    soft = soft_rgba(24, 24, seed=0)
    save_rgba(soft, gt / "soft.png")
    save_rgba(soft, pred / "soft.png")  # perfect: leakage 0, edge error 0
    opaque = soft.clone()
    opaque[3] = 1.0
    save_rgba(opaque, gt / "opaque.png")
    wrong = opaque.clone()
    wrong[3] = -1.0
    save_rgba(wrong, pred / "opaque.png")  # completely wrong, but leakage and edge band do not apply
    out = tmp_path / "out"
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), "--protocol", "clean", *NO_NETS]) == 0
    report = json.loads((out / "report.json").read_text())
    scores = {image["key"]: image["scores"]["alpha"] for image in report["images"]}
    assert scores["opaque"]["alpha_leakage"] is None and scores["opaque"]["alpha_edge_mae"] is None
    assert scores["opaque"]["alpha_mae"] == pytest.approx(1.0)
    alpha = report["tree"]["overall"]["micro"]["alpha"]
    assert alpha["alpha_leakage"] == pytest.approx(scores["soft"]["alpha_leakage"])
    assert alpha["alpha_edge_mae"] == pytest.approx(scores["soft"]["alpha_edge_mae"])
    assert report["unscored"] == {"alpha": {"alpha_leakage": 1, "alpha_edge_mae": 1}}
    assert report["tree"]["overall"]["macro"]["alpha"]["alpha_mae"] == pytest.approx(
        (scores["soft"]["alpha_mae"] + 1.0) / 2)
    html = (out / "report.html").read_text()
    assert "alpha_leakage is null" in html and "NaN" not in (out / "report.json").read_text()


def test_failures_printed_as_path_reason_lines(tree, capsys, caplog):
    """Defect 5: failures were printed as raw dicts. Each is printed once, in the summary (a warning logged
    while scoring reached stderr too, through logging's last-resort handler)."""
    main(["eval", "--gt", str(tree[0]), "--pred", str(tree[1]), "-o", str(tree[0].parent / "r"), *NO_NETS])
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []
    err = capsys.readouterr().err
    assert "{'key'" not in err and "'error'" not in err
    bad = tree[1] / "sub" / "cat_b" / "bad.png"
    assert f"failed: {bad}: not a readable image" in err
    small = f"failed: {tree[0] / 'sub/cat_b/small.png'} vs {tree[1] / 'sub/cat_b/small.png'}: size mismatch"
    assert small in err
    assert "missing: sub/cat_b/missing: no prediction file" in err


def test_ambiguous_names_are_reported_with_their_files(tree, capsys):
    """A key with several files (``im0.png`` and ``im0.jpg``) is not scored, and its line names those files
    (it named only the key, not the side or the files to remove)."""
    gt, pred = tree
    to_pil(soft_rgba(seed=0)).save(pred / "sub" / "cat_a" / "im0.png")
    files = [str(pred / "sub" / "cat_a" / name) for name in ("im0.png", "im0.webp")]
    plan = pair_folders(gt, pred)
    assert plan.ambiguous == {"sub/cat_a/im0": files} and "sub/cat_a/im0" not in [p.key for p in plan.pairs]
    main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(gt.parent / "r"), *NO_NETS])
    line = f"ambiguous: sub/cat_a/im0: {', '.join(files)}: several files with this name and different extensions"
    assert line in capsys.readouterr().err
    assert json.loads((gt.parent / "r" / "report.json").read_text())["ambiguous"] == {"sub/cat_a/im0": files}


def test_eval_vae_defaults_to_the_shipped_model(tmp_path):
    """Like ``alphavae reconstruct``, ``eval-vae`` without --vae scores alphavae-mini."""
    import shutil
    from pathlib import Path

    data = tmp_path / "data"
    data.mkdir()
    for image in sorted((Path(__file__).resolve().parents[1] / "examples" / "images" / "emoji3d").rglob("*.png"))[:2]:
        shutil.copy(image, data)
    out = tmp_path / "out"
    assert main(["eval-vae", "--data", str(data), "-o", str(out), "--protocol", "clean", *NO_NETS]) == 0
    micro = json.loads((out / "report.json").read_text())["tree"]["overall"]["micro"]
    assert micro["rgb"]["psnr"] > 25  # a trained model (an untrained one leaves alpha = 1 everywhere)
    mixed = tmp_path / "mixed"  # the speed/precision policies of reconstruct are accepted too
    assert main(["eval-vae", "--data", str(data), "-o", str(mixed), "--protocol", "clean", "--dtype", "mixed-bf16",
                 *NO_NETS]) == 0
    report = json.loads((mixed / "report.json").read_text())
    assert report["tree"]["overall"]["micro"]["rgb"]["psnr"] == pytest.approx(micro["rgb"]["psnr"], abs=0.5)
    from alphavae.vae import DEFAULT_MODEL_DIR

    # two reports of one data folder say which model, dtype and tiling made them (they were indistinguishable)
    assert {k: report["inputs"][k] for k in ("vae", "dtype", "dtype_policy")} == {
        "vae": str(DEFAULT_MODEL_DIR), "dtype": "bfloat16", "dtype_policy": "mixed-bf16"}
    assert "<td>dtype_policy</td><td>mixed-bf16</td>" in (mixed / "report.html").read_text()


def test_weights_that_are_not_weights_files_are_one_line_errors(tmp_path, monkeypatch, capsys):
    """Finding 4: --lpips / --inception naming an image gave a raw UnpicklingError traceback."""
    gt, pred = _small_tree(tmp_path)
    _refuse_scoring(monkeypatch)
    image = gt / "im0.png"
    for flags in (["--lpips", str(image), "--inception", "none"], ["--lpips", "none", "--inception", str(image)]):
        assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(tmp_path / "out"), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"alphavae eval: error: {image}: not a torch state dict (") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source, mismatch", [
    (lambda: tiny_rgba_vae("flux"), "input channels 4 (needs 3)"),
    (lambda: tiny_rgb_vae("sd1"), "latent channels 4 (needs 16)"),
])
def test_eval_vae_refuses_a_source_vae_that_does_not_fit(tmp_path, monkeypatch, capsys, source, mismatch):
    """Finding 4: an RGBA or 4-latent-channel --source-vae failed with a RuntimeError after all the work."""
    data = tmp_path / "data"
    save_rgba(soft_rgba(16, 16), data / "im0.png")
    tiny_rgba_vae("flux").save_pretrained(tmp_path / "vae")
    source().save_pretrained(tmp_path / "src")
    _refuse_scoring(monkeypatch)
    out = tmp_path / "out"
    assert main(["eval-vae", "--vae", str(tmp_path / "vae"), "--data", str(data), "--source-vae", str(tmp_path / "src"),
                 "-o", str(out), *NO_NETS]) == 2
    err = capsys.readouterr().err
    assert err == (f"alphavae eval-vae: error: --source-vae {tmp_path / 'src'}: the latent-drift source "
                   f"(--source-vae) must be an RGB VAE with the RGBA VAE's latent channels and downsampling; it has "
                   f"{mismatch}\n")
    assert not out.exists()


def test_check_source_vae_names_every_mismatch():
    from alphavae.eval.runner import check_source_vae
    from alphavae.vae import RGBAVAE

    vae = RGBAVAE(tiny_rgba_vae("flux"))
    check_source_vae(vae, tiny_rgb_vae("flux"))  # the real source fits
    shallow = tiny_rgba_vae("sd1")
    shallow.register_to_config(block_out_channels=[8, 16])  # only the config is read
    with pytest.raises(ValueError, match=r"^S: the latent-drift source \(--source-vae\) must be an RGB VAE with the "
                                         r"RGBA VAE's latent channels and downsampling; it has input channels 4 "
                                         r"\(needs 3\), latent channels 4 \(needs 16\), downsampling 2 \(needs 8\)$"):
        check_source_vae(vae, shallow, name="S")
    with pytest.raises(ValueError, match="must be a diffusers AutoencoderKL, got RGBAVAE"):
        check_source_vae(vae, vae)


def test_counts_are_singular_for_one(tmp_path, capsys):
    """Nitpick: '1 images scored, 0 problem(s)'."""
    gt, pred = _small_tree(tmp_path)
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(tmp_path / "out"), *NO_NETS]) == 0
    assert "1 image scored, 0 problems\n" in capsys.readouterr().out
    assert "<p>1 image;" in (tmp_path / "out" / "report.html").read_text()


def test_non_utf8_file_names_are_escaped_in_every_report(tmp_path, capsys):
    """Finding 5: a file name that is not UTF-8 crashed the HTML write after scoring and left report.json
    and report.csv, which blocked the rerun."""
    import os

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    folder = os.fsdecode(b"sub\xfe/cat")
    image = soft_rgba(16, 16)
    save_rgba(image, gt / folder / os.fsdecode(b"good\xfe.png"))
    save_rgba(perturbed(image), pred / folder / os.fsdecode(b"good\xfe.png"))
    out = tmp_path / "out"
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), *NO_NETS]) == 0
    texts = {name: (out / name).read_bytes().decode("utf-8") for name in ("report.json", "report.csv", "report.html")}
    assert json.loads(texts["report.json"])["images"][0]["key"] == "sub\\xfe/cat/good\\xfe"
    assert "\nrgb,sub\\xfe," in texts["report.csv"]
    assert "good\\xfe" in texts["report.html"]


def test_escaped_names_stay_apart_from_names_with_a_backslash(tmp_path, capsys):
    """The byte 0xfe was written as the text \\xfe, the same as a folder really named with a backslash, so the
    two subsets shared one key of the report tree (one of them overwritten) and one CSV label."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    subsets = [os.fsdecode(b"s\xfe"), "s\\xfe"]  # the byte 0xfe; a backslash, x, f, e
    for index, subset in enumerate(subsets):
        image = soft_rgba(16, 16, seed=index)
        save_rgba(image, gt / subset / "cat" / "a.png")
        save_rgba(perturbed(image), pred / subset / "cat" / "a.png")
    out = tmp_path / "out"
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), *NO_NETS]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    tree = report["tree"]["datasets"]["."]["subsets"]
    assert {name: node["images"] for name, node in tree.items()} == {"s\\xfe": 1, "s\\\\xfe": 1}
    assert sorted(image["key"] for image in report["images"]) == ["s\\\\xfe/cat/a", "s\\xfe/cat/a"]
    rows = list(csv.DictReader((out / "report.csv").read_text(encoding="utf-8").splitlines()))
    assert sorted(row["subset"] for row in rows if row["group"] == "rgb") == ["overall", "s\\\\xfe", "s\\xfe"]


def test_a_failed_report_write_names_the_file_and_writes_no_report(tmp_path, monkeypatch, capsys):
    """Finding 13: on a full disk the message named no file, and a failure after the first report file
    left a partial set that made the rerun refuse ("report exists")."""
    import os

    gt, pred = _small_tree(tmp_path)
    out = tmp_path / "out"
    real_fsync, calls = os.fsync, []

    def full_disk(fd):
        calls.append(fd)
        if len(calls) == 2:  # report.json fits, report.csv does not
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), *NO_NETS]) == 2
    assert capsys.readouterr().err.endswith(
        f"alphavae eval: error: {out / 'report.csv'}: cannot write the report (No space left on device)\n")
    assert not out.exists()  # no report, no temporary file, not even the folder made for them
    monkeypatch.undo()
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), *NO_NETS]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.html", "report.json"]


def test_a_runtime_error_on_one_image_is_that_images_failure(tmp_path, monkeypatch, capsys):
    """Finding 10: a RuntimeError of a metric (or out of memory) on one image ended the run with a traceback."""
    from alphavae.eval import runner

    real = runner.score_pair

    def fail_on_second(gt, pred, protocol, networks):
        if gt.shape[-1] == 20:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory. Error code 12\nmore detail")
        return real(gt, pred, protocol, networks)

    monkeypatch.setattr(runner, "score_pair", fail_on_second)
    gt, pred = _small_tree(tmp_path, sizes=[(16, 16), (16, 20)])
    out = tmp_path / "out"
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), *NO_NETS]) == 1
    captured = capsys.readouterr()
    assert (f"failed: {gt / 'im1.png'} vs {pred / 'im1.png'}: RuntimeError: DefaultCPUAllocator: can't allocate "
            "memory\n") in captured.err
    assert "1 image scored, 1 problem" in captured.out
    assert [image["key"] for image in json.loads((out / "report.json").read_text())["images"]] == ["im0"]


def test_eval_vae_reports_a_vae_runtime_error_per_image(tmp_path, monkeypatch, capsys):
    """Finding 10: `eval-vae` lost the whole run to one reconstruction's RuntimeError."""
    from alphavae.vae import RGBAVAE

    data = tmp_path / "data"
    for n in range(2):
        save_rgba(soft_rgba(16, 16, seed=n), data / f"im{n}.png")
    tiny_rgba_vae("sd1").save_pretrained(tmp_path / "vae")

    def broken(self, pixels, **options):
        raise RuntimeError("Tensor.item() cannot be called on meta tensors")

    monkeypatch.setattr(RGBAVAE, "reconstruct", broken)
    out = tmp_path / "out"
    assert main(["eval-vae", "--vae", str(tmp_path / "vae"), "--data", str(data), "-o", str(out), *NO_NETS]) == 1
    err = capsys.readouterr().err
    assert f"failed: {data / 'im0.png'}: RuntimeError: Tensor.item() cannot be called on meta tensors\n" in err
    assert len(json.loads((out / "report.json").read_text())["failures"]) == 2


@pytest.mark.parametrize("command", ["eval", "eval-vae", "eval-t2i"])
@pytest.mark.parametrize("device, reason", [("bogus", "Expected one of cpu"), ("meta", "it holds no data")])
def test_unusable_devices_are_refused_before_anything_loads(tmp_path, monkeypatch, capsys, command, device, reason):
    """Findings 10 and 11: `eval --device bogus` ran on the CPU; `--device meta` failed image by image."""
    gt, pred = _small_tree(tmp_path)
    _refuse_scoring(monkeypatch)
    inputs = {"eval": ["--gt", str(gt), "--pred", str(pred)],
              "eval-vae": ["--vae", str(tmp_path / "not-loaded"), "--data", str(gt)],
              "eval-t2i": ["--pred", str(pred), "--prompts", str(tmp_path / "not-read.json"),
                           "--clip", str(tmp_path / "not-loaded")]}[command]
    out = tmp_path / "out"
    assert main([command, *inputs, "-o", str(out), "--device", device, "--inception", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alphavae {command}: error: device '{device}' is not usable here: ") and reason in err
    assert err.count("\n") == 1 and not out.exists()


class _FakeState:
    """Stands in for ``accelerate.PartialState``: ``processes`` processes, this one on ``device``."""

    def __init__(self, processes: int, device: str):
        self.num_processes, self.device = processes, torch.device(device)
        self.process_index, self.is_main_process = 0, True


def test_scoring_device_is_the_users_in_one_process_and_accelerates_in_several(monkeypatch):
    """Finding 11: run_sharded moved the networks to accelerate's device whatever --device said."""
    import accelerate

    from alphavae.eval.runner import scoring_device

    monkeypatch.setattr(accelerate, "PartialState", lambda: _FakeState(1, "cuda:3"))
    assert scoring_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(accelerate, "PartialState", lambda: _FakeState(2, "cuda:3"))
    assert scoring_device("cpu") == torch.device("cuda:3")  # each launched process on its own device
    assert scoring_device("bogus") == torch.device("cuda:3")  # --device is not used then


def test_eval_networks_run_on_the_device_given(tmp_path, monkeypatch):
    """Finding 11: in one process the metric networks must stay on --device (here accelerate would say meta)."""
    import accelerate

    moved = []
    monkeypatch.setattr(accelerate, "PartialState", lambda: _FakeState(1, "meta"))
    monkeypatch.setattr(Networks, "to", lambda self, device: moved.append(torch.device(device)) or self)
    gt, pred = _small_tree(tmp_path)
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(tmp_path / "out"), "--device", "cpu",
                 *NO_NETS]) == 0
    assert moved and set(moved) == {torch.device("cpu")}


@pytest.mark.parametrize("gt_name, pred_name, problem", [
    ("gt", "gt/recon", "is inside"), ("gt/recon", "gt", "contains"), ("gt", "gt", "is the same folder as")])
def test_overlapping_gt_and_prediction_folders_are_refused(tmp_path, monkeypatch, capsys, gt_name, pred_name, problem):
    """Finding 17: with --pred inside --gt the predictions were read as GT too ("missing: recon/cat/la")."""
    image = soft_rgba(16, 16)
    for folder in ("gt/cat", "gt/recon/cat"):
        save_rgba(image, tmp_path / folder / "la.png")
    _refuse_scoring(monkeypatch)
    gt, pred, out = tmp_path / gt_name, tmp_path / pred_name, tmp_path / "out"
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), *NO_NETS]) == 2
    assert capsys.readouterr().err == (f"alphavae eval: error: prediction folder {pred} {problem} GT folder {gt}; "
                                       "give folders that do not overlap (both are read with their sub-folders)\n")
    assert not out.exists()


def test_a_prediction_saved_without_alpha_is_named_in_a_note(tmp_path, capsys):
    """A prediction saved as RGB (alpha lost in the user's pipeline) scored 7 dB with no word on why."""
    from PIL import Image

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for n in range(2):
        save_rgba(soft_rgba(24, 24, seed=n), gt / f"im{n}.png")
    save_rgba(perturbed(soft_rgba(24, 24, seed=0)), pred / "im0.png")
    Image.open(gt / "im1.png").convert("RGB").save(pred / "im1.png")
    out = tmp_path / "out"
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), *NO_NETS]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["opaque_predictions"] == ["im1"]
    assert ("note: 1 prediction fully opaque (alpha 1 everywhere) where the GT has transparency: an RGB file, or "
            "alpha dropped when saved? Scored as opaque; keys under 'opaque_predictions'.") in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "eval-vae", "eval-t2i"])
def test_quiet_hides_the_progress_bar(tmp_path, capsys, command):
    """`--quiet`, as in `alphavae reconstruct`: no tqdm bar on stderr (the eval commands always drew one)."""
    gt, pred = _small_tree(tmp_path)
    if command == "eval-vae":
        tiny_rgba_vae("flux").save_pretrained(tmp_path / "vae")
    (tmp_path / "prompts.json").write_text(json.dumps({"im0": "a cat"}))
    inputs = {"eval": ["--gt", str(gt), "--pred", str(pred), "--lpips", "none"],
              "eval-vae": ["--vae", str(tmp_path / "vae"), "--data", str(gt), "--lpips", "none"],
              "eval-t2i": ["--pred", str(pred), "--prompts", str(tmp_path / "prompts.json"), "--clip", "none"]}[command]
    assert main([command, *inputs, "-o", str(tmp_path / "bar"), "--inception", "none"]) == 0
    assert "| 1/1 [" in capsys.readouterr().err
    assert main([command, *inputs, "-o", str(tmp_path / "quiet"), "--inception", "none", "--quiet"]) == 0
    assert "| 1/1 [" not in capsys.readouterr().err and (tmp_path / "quiet" / "report.json").exists()


def test_report_thumbnails_do_not_bleed_hidden_colour_into_edges():
    """comparison_strip shrank straight RGBA with area averaging: green hidden under alpha = 0 beside an opaque red
    edge showed as a green fringe over black in the report's thumbnails."""
    import base64
    import io as bytes_io

    import numpy as np
    from PIL import Image

    from alphavae.eval.report import comparison_strip

    image = torch.full((4, 8, 8), -1.0)
    image[0, :, :3] = 1  # opaque red in columns 0-2
    image[3, :, :3] = 1
    image[1, :, 3:] = 1  # green under alpha = 0 in columns 3-7
    uri = comparison_strip(image, image.clone(), height=4)
    strip = np.asarray(Image.open(bytes_io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    over_black = strip[:4, 2 * (4 + 4): 2 * (4 + 4) + 4]  # third tile: the GT over black, 4 px wide
    assert over_black[..., 1].max() == 0 and over_black[:, 1, 0] == pytest.approx([128] * 4, abs=1)


def test_an_image_too_long_for_jpeg_is_that_images_failure_naming_the_limit(tmp_path, capfd):
    """Defect 6: the reference protocol failed a 66000 px wide image as "broken data stream when writing image
    file", after a stray libjpeg line on stderr; now the reason names JPEG's limit and the clean protocol."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for folder in (gt, pred):
        save_rgba(torch.zeros(4, 2, 66000), folder / "x.png")
    out = tmp_path / "out"
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), "--quiet", *NO_NETS]) == 1
    err = capfd.readouterr().err
    reason = ("the reference protocol's JPEG step holds at most 65,500 px a side (got 66000 x 2, width x height); "
              "--protocol clean scores it")
    assert err.startswith(f"failed: {gt / 'x.png'} vs {pred / 'x.png'}: {reason}\n")
    assert "Maximum supported" not in err and "broken data stream" not in err
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "-o", str(out), "--overwrite", "--quiet",
                 "--protocol", "clean", *NO_NETS]) == 0


def test_eval_vae_feeds_the_vae_float32_pixels_as_reconstruct_does(tmp_path, monkeypatch):
    """Defect 3: eval-vae (and its latent drift) cast the GT pixels to the VAE's dtype, bf16 under "mixed-bf16",
    although that policy keeps encoder.conv_in in float32 to read unrounded pixels; `reconstruct` gives float32."""
    from alphavae.accel import apply_policy, resolve_policy
    from alphavae.eval.protocols import score_pair
    from alphavae.eval.runner import evaluate_vae
    from alphavae.io import load_rgba
    from alphavae.vae import RGBAVAE

    save_rgba(soft_rgba(32, 40, seed=0), tmp_path / "data" / "im0.png")
    vae = RGBAVAE(apply_policy(tiny_rgba_vae("sd1", random_alpha=True), resolve_policy("mixed-bf16", "cpu")))
    gt = load_rgba(tmp_path / "data" / "im0.png")
    with torch.inference_mode():
        expected = score_pair(gt, vae.reconstruct(gt[None])[0], make_protocol("clean"), Networks()).groups
    fed, encode = [], RGBAVAE.encode

    def record(self, pixels):
        fed.append(pixels.dtype)
        return encode(self, pixels)

    monkeypatch.setattr(RGBAVAE, "encode", record)
    report, _ = evaluate_vae(vae, tmp_path / "data", make_protocol("clean"), Networks(), source=tiny_rgb_vae("sd1"),
                             progress=False)
    assert fed == [torch.float32] * 3  # the reconstruction, then the drift's black and white composites
    scores = report["images"][0]["scores"]
    assert {group: scores[group] for group in expected} == expected
