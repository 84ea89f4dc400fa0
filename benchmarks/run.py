"""Run the benchmark suite and write ``benchmarks/results/<date>-<machine>[-quick].{json,md}`` (+ PNGs).

Usage::

    .venv/bin/python -m benchmarks.run            # full suite, over 40 min on a quiet 2-core AVX512_BF16 CPU
    .venv/bin/python -m benchmarks.run --quick    # small sizes, a few minutes: checks that everything runs
    .venv/bin/python -m benchmarks.run --only inference training

Benchmarks: dtypes (matmul/convolution GFLOP/s per dtype, convolution share of a decode: the ceiling of any
16-bit path on this machine), inference (fp32 vs default policy, with precision checks), memory (tiling, 4096² decode peak
RSS, seams), training (project vs reference-style step), scaling (time/memory vs side and batch, PNG plot),
eval (``benchmarks/eval_throughput.py``, the evaluation pipeline against a reference-style one). Each
writes its section of the JSON and a Markdown table; a failed benchmark is recorded and the others go on
(exit status 1 if any failed). Both files are rewritten (atomically) after every benchmark, with
``"complete": false`` in the JSON and a "Partial" line under the heading until the last one ends, so an
interrupted run keeps the sections it finished.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch

from alphavae.accel import POLICY_NAMES
from alphavae.io import atomic_write
from benchmarks import dtypes, inference, memory, scaling, training
from benchmarks.common import IMAGE_DIRS, machine_name

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = ("dtypes", "inference", "memory", "training", "scaling", "eval")

SETTINGS = {
    "quick": {"inference": {"sides": (64, 128), "repeats": 2},
              "memory": {"decode_sides": (512,), "compare_side": 256, "tile": 128, "overlap": 64},
              "training": {"side": 64, "batch": 1, "repeats": 2},
              "scaling": {"sides": (64, 128, 256), "batches": (1, 2), "batch_side": 64, "tile_from": 256},
              "eval": {"per_category": 4}, "dtypes": {"latent_side": 8}},
    "full": {"inference": {"sides": (256, 512, 1024), "repeats": 3},
             "memory": {"decode_sides": (4096,), "compare_side": 2048, "tile": 512, "overlap": 128,
                        "decode_tile_mode": "fast"},  # exact at 4096²: whole-latent attention, ~1.4e14 FLOPs
             "training": {"side": 256, "batch": 1, "repeats": 3},
             "scaling": {"sides": (256, 512, 1024), "batches": (1, 2, 4), "batch_side": 256, "tile_from": 2048},
             "eval": {"per_category": 60}, "dtypes": {"latent_side": 32}},
}
"""Sizes per mode. Full scaling adds the memory benchmark's tiled 2048² / 4096² points instead of re-running them."""


def _eval_throughput(per_category: int, out: Path) -> dict:
    """Run ``benchmarks/eval_throughput.py`` in a subprocess; return its JSON.

    Uses the first of ``IMAGE_DIRS`` laid out as the script expects: sub-folders (categories) holding PNGs.
    """
    images = next((d for d in IMAGE_DIRS if d.is_dir() and any(d.glob("*/*.png"))), None)
    if images is None:
        raise FileNotFoundError(f"no image folder for the evaluation benchmark among {IMAGE_DIRS}")
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, str(Path(__file__).with_name("eval_throughput.py")), "--images", str(images),
                   "--per-category", str(per_category), "--work", work, "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"eval_throughput.py exited {done.returncode}: {done.stderr.strip()[-600:]}")
    return json.loads(out.read_text())


def _eval_table(result: dict) -> str:
    return ("Evaluation (`benchmarks/eval_throughput.py`: `alphavae eval` vs a reference-style pipeline)\n\n"
            "| images | ours s | reference-style s | speedup | max |Δ| PSNR / SSIM |\n|---|---|---|---|---|\n"
            f"| {result['images']} | {result['ours_s']} | {result['reference_style_s']} | {result['speedup']}× | "
            f"{result['max_abs_diff']['psnr']:.2g} / {result['max_abs_diff']['ssim']:.2g} |")


def write_results(out_dir: Path, results: dict, sections: list[str]) -> str:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir`` (created), each atomically, replacing old ones.

    Args:
        out_dir: results folder.
        results: the suite's JSON dict (``stem`` and ``complete`` set by :func:`run_suite`).
        sections: Markdown sections, the first the heading.

    Returns:
        The Markdown text written (a "partial" note after the heading while ``complete`` is false).
    """
    heading = sections[0] + ("" if results["complete"] else "\n\nPartial: the run has not finished (or was stopped).")
    markdown = "\n\n".join([heading, *sections[1:]]) + "\n"
    stem = results["stem"]
    atomic_write(out_dir / f"{stem}.json", lambda tmp: tmp.write_text(json.dumps(results, indent=1) + "\n"),
                 overwrite=True)
    atomic_write(out_dir / f"{stem}.md", lambda tmp: tmp.write_text(markdown), overwrite=True)
    return markdown


def run_suite(mode: str, names: tuple[str, ...], out_dir: Path) -> tuple[dict, str, int]:
    """Run the named benchmarks with ``SETTINGS[mode]``, rewriting the results files after each
    (:func:`write_results`); return (JSON dict, Markdown text, failure count)."""
    settings = SETTINGS[mode]
    stem = f"{datetime.date.today().isoformat()}-{machine_name()}" + ("-quick" if mode == "quick" else "")
    results: dict = {"mode": mode, "stem": stem, "machine": machine_name(), "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "date": datetime.datetime.now(datetime.UTC).isoformat(),
                     "complete": False}
    sections, failures = [f"# Benchmarks ({mode}, {results['machine']}, torch {torch.__version__}, "
                          f"{results['threads']} threads, {results['date'][:16]} UTC)"], 0
    runners = {
        "inference": lambda s: inference.run(s["sides"], s["repeats"], policy=s.get("policy", "auto")),
        "memory": lambda s: memory.run(s["decode_sides"], s["compare_side"], s["tile"], s["overlap"], out_dir,
                                        decode_tile_mode=s.get("decode_tile_mode", "exact")),
        "training": lambda s: training.run(s["side"], s["batch"], s["repeats"]),
        "scaling": lambda s: scaling.run(s["sides"], s["batches"], s["batch_side"], tile=settings["memory"]["tile"],
                                         overlap=settings["memory"]["overlap"], tile_from=s["tile_from"]),
        "eval": lambda s: _eval_throughput(s["per_category"], out_dir / f"{stem}-eval.json"),
        "dtypes": lambda s: dtypes.run(s["latent_side"]),
    }
    tables = {"dtypes": dtypes.table, "inference": inference.table, "memory": memory.table, "training": training.table,
              "scaling": scaling.table, "eval": _eval_table}
    for name in names:
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = runners[name](settings[name])
        except Exception as err:  # noqa: BLE001 - one failed benchmark must not stop the others
            failures += 1
            results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            sections.append(f"## {name}\n\nFailed: {type(err).__name__}: {err}")
        else:
            if name == "scaling" and "memory" in results and "cases" in results["memory"]:
                results[name]["by_side"] += [c for c in results["memory"]["cases"] if c["mode"] == "decode"]
            if name == "scaling":
                results[name]["plot"] = str(scaling.plot(results[name], out_dir / f"{stem}-scaling.png"))
            sections.append(f"## {name}\n\n{tables[name](results[name])}")
        write_results(out_dir, results, sections)
    results["complete"] = True
    return results, write_results(out_dir, results, sections), failures


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 if a benchmark failed)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes) instead of the full suite")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES), help="benchmarks to run (default: all)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help=f"where results go (default: {RESULTS})")
    parser.add_argument("--sides", type=int, nargs="+", default=None,
                        help="override the inference sides in pixels (multiples of 8), e.g. on a busy machine")
    parser.add_argument("--repeats", type=int, default=None, help="override the inference timed repeats (>= 1)")
    parser.add_argument("--policy", default=None, choices=POLICY_NAMES,
                        help="alphavae.accel policy of the inference 'default' path (default: auto)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    overrides = {"sides": tuple(args.sides) if args.sides else None, "repeats": args.repeats, "policy": args.policy}
    SETTINGS[mode]["inference"].update({k: v for k, v in overrides.items() if v is not None})
    _, markdown, failures = run_suite(mode, tuple(args.only), args.out_dir)
    print(markdown)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
