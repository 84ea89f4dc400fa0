"""Tests for the benchmark helpers (benchmarks/): timing, FLOP counting, peak RSS, tables, the Pillow plot.

The benchmarks themselves run FLUX-size models and are far too slow for the test suite; these check the
measurement pieces on tiny inputs. ``benchmarks`` lives at the repository root, next to ``tests``.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, dtypes, run, scaling, training  # noqa: E402


def test_count_flops_counts_two_per_multiply_accumulate():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert common.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_alternate_interleaves_and_reports_medians():
    order = []
    stats = common.alternate({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3, warmup=1)
    assert order == ["a", "b"] * 4
    for entry in stats.values():
        assert len(entry["times_s"]) == 3 and entry["median_s"] == sorted(entry["times_s"])[1]
        assert entry["peak_rss_mb"] > 0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_rss_resets_between_calls():
    common.reset_peak_rss()
    block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, touched
    high = common.peak_rss_mb()
    del block
    common.reset_peak_rss()
    assert common.peak_rss_mb() < high - 32


def test_scaling_table_and_plot(tmp_path):
    cases = [{"mode": "decode", "side": s, "batch": 1, "tile": None, "seconds": s / 100, "peak_rss_mb": s}
             for s in (64, 128, 256)]
    result = {"by_side": cases + [{"mode": "decode", "side": 512, "batch": 1, "tile": 128, "error": "boom"}],
              "by_batch": [{**cases[0], "batch": 2}], "batch_side": 64}
    text = scaling.table(result)
    assert "| 128² | 1 | False | 1.28 |" in text and "failed: boom" in text and "| 64² | 2 |" in text
    path = scaling.plot(result, tmp_path / "plot.png")
    with Image.open(path) as image:
        assert image.size == (900, 400)
        assert len(image.getcolors(maxcolors=2**16)) > 2  # axes, grid, text and the red curve were drawn


def _dtypes_result() -> dict:
    """A made-up result of ``dtypes.run`` (fixed numbers, every shape/dtype/layout present)."""
    convs = [{"channels": c, "side": s, "dtype": d, "channels_last": cl, "gflops": 100.0 if d == "float32" else 50.0}
             for c, s in dtypes.CONV_SHAPES for d in dtypes.DTYPES for cl in (False, True)]
    return {"threads": 2, "matmul_gflops": {"float32": 150.0, "bfloat16": 80.0, "float16": 150.0}, "conv": convs,
            "decode_conv_share": 0.9, "decode_side": 256, "max_16bit_speedup": 0.5, "max_float32_speedup": 1.11}


def test_dtypes_conv_throughput_and_table():
    assert dtypes.conv_gflops(8, 8, torch.float32, channels_last=True, repeats=1) > 0
    text = dtypes.table(_dtypes_result())
    assert "| matmul 2048² | 150 | 80 | 150 |" in text and "| conv 3x3 512 ch 32² NCHW | 100 | 50 | 50 |" in text
    assert "90.0 %" in text and "0.50x" in text and "1.11x" in text


def test_suite_writes_finished_sections_before_an_interruption(tmp_path, monkeypatch):
    """Results are rewritten after every benchmark, so stopping a long run keeps what finished."""
    monkeypatch.setattr(dtypes, "run", lambda latent_side: _dtypes_result())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run.run_suite("quick", ("dtypes", "training"), tmp_path)
    (saved,) = tmp_path.glob("*-quick.json")
    partial = json.loads(saved.read_text())
    assert partial["complete"] is False and partial["dtypes"] == _dtypes_result() and "training" not in partial
    assert "Partial: the run has not finished" in saved.with_suffix(".md").read_text()

    results, markdown, failures = run.run_suite("quick", ("dtypes",), tmp_path)
    assert failures == 0 and results["complete"] is True and "Partial" not in markdown
    assert json.loads(saved.read_text())["complete"] is True and saved.with_suffix(".md").read_text() == markdown
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([saved.name, saved.with_suffix(".md").name])
