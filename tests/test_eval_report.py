"""alphavae.eval.report: labels of the reference-layout CSV (the files themselves are tested through the eval
commands, tests/test_eval_runner.py)."""

from __future__ import annotations

import csv

from alphavae.eval.aggregate import ImageRecord, aggregate
from alphavae.eval.pairs import tree_position
from alphavae.eval.report import csv_rows, csv_text


def _report(keys: list[str]) -> dict:
    """A minimal report (black background only) whose n-th image, at ``keys[n]``, has PSNR 10 (n + 1) dB."""
    records = [ImageRecord(key, *tree_position(key), {"black": {"psnr": 10.0 * (n + 1)}}) for n, key in enumerate(keys)]
    return {"protocol": {"backgrounds": ["black"]}, "tree": aggregate(records)}


def test_a_subset_named_overall_has_a_row_apart_from_the_overall_mean():
    """Defect 7: gt/overall/c/a.png gave a subset row labelled "overall", indistinguishable from the overall
    macro mean's row."""
    rows = csv_rows(_report(["overall/c/a", "other/c/b"]))
    assert [(row["subset"], row["psnr"]) for row in rows if row["group"] == "black"] == [
        ("other", "20.000000"), ("./overall", "10.000000"), ("overall", "15.000000")]
    assert [row["subset"] for row in csv.DictReader(csv_text(_report(["overall/c/a"])).splitlines())] == [
        "./overall", "overall", "./overall", "overall"]  # groups rgb and black


def test_labels_keep_the_reference_layout():
    """Subsets are labelled by their dataset/subset path without root levels; the last row of each group is the
    overall macro mean."""
    rows = csv_rows(_report(["a", "AIM/test/animal/x", "sub/c/y", "d/overall/c/z"]))
    assert [row["subset"] for row in rows if row["group"] == "black"] == [
        ".", "sub", "AIM/test", "d/overall", "overall"]
