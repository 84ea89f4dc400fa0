"""alphavae.eval pairing, aggregation, runner, reports and the eval / eval-vae / eval-t2i commands."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from alphavae.cli import main
from alphavae.eval.aggregate import ImageRecord, aggregate
from alphavae.eval.networks import Networks
from alphavae.eval.pairs import pair_folders, tree_position
from alphavae.eval.protocols import make_protocol
from alphavae.eval.report import CSV_COLUMNS
from alphavae.eval.runner import _gather, _score_all, build_report, folder_loader
from alphavae.io import save_rgba, to_pil
from test_eval_metrics import perturbed, soft_rgba

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
    err = capsys.readouterr().err
    assert "missing" in err and "bad" in err and "size mismatch" in err
    report = json.loads((out / "report.json").read_text())
    assert report["tree"]["overall"]["images"] == 3 and len(report["failures"]) == 2
    assert report["extra"] == ["sub/cat_b/extra"]
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert {r["group"] for r in rows} >= {"rgb", "black", "magenta"}
    assert ("rgba" in {r["group"] for r in rows}) == (protocol == "reference")
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "http" not in html.replace("http-equiv", "")
    if protocol == "clean":
        assert all(0 <= report["tree"]["overall"]["macro"]["alpha"][m] for m in ("alpha_mae", "alpha_iou"))
    assert main(["eval", "--gt", str(tree[0]), "--pred", str(tree[1]), "-o", str(out), *NO_NETS]) == 2
    assert "report exists" in capsys.readouterr().err


def test_eval_refuses_output_inside_input(tree, capsys):
    assert main(["eval", "--gt", str(tree[0]), "--pred", str(tree[1]), "-o", str(tree[0] / "r"), *NO_NETS]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tree[0] / "r").exists()


def test_eval_vae_with_source_reports_zero_drift_for_opaque_init(tmp_path):
    from alphavae.testing import tiny_rgb_vae, tiny_rgba_vae

    data = tmp_path / "data"
    for n in range(2):
        save_rgba(soft_rgba(32, 40, seed=n), data / f"im{n}.png")
    tiny_rgba_vae("flux").save_pretrained(tmp_path / "vae")
    tiny_rgb_vae("flux").save_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    code = main(["eval-vae", "--vae", str(tmp_path / "vae"), "--data", str(data), "--source-vae", str(tmp_path / "src"),
                 "-o", str(out), "--protocol", "clean", *NO_NETS])
    assert code == 0
    macro = json.loads((out / "report.json").read_text())["tree"]["overall"]["macro"]
    assert macro["latent_drift"]["mse"] == pytest.approx(0.0, abs=1e-10)
    assert macro["alpha"]["alpha_leakage"] == pytest.approx(1.0)  # untrained: alpha = 1 everywhere


def test_eval_t2i(tmp_path):
    from test_eval_networks import tiny_clip

    pred = tmp_path / "gen"
    for n in range(2):
        save_rgba(soft_rgba(32, 32, seed=n), pred / f"g{n}.png")
    (tmp_path / "prompts.jsonl").write_text('{"key": "g0", "prompt": "a cat"}\n{"file": "g1.png", "prompt": "dog"}\n')
    out = tmp_path / "out"
    code = main(["eval-t2i", "--pred", str(pred), "--prompts", str(tmp_path / "prompts.jsonl"),
                 "--clip", str(tiny_clip(tmp_path / "clip")), "-o", str(out), *NO_NETS])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["tree"]["overall"]["macro"]["rgb"]) == {"clip_score"}
    assert report["clip_score_clamped"] >= 0
