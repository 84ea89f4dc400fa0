"""Throughput of ``alphavae eval --protocol reference`` against a reference-style pipeline.

The reference-style pipeline does what the AlphaVAE evaluation scripts do: for every image pair,
composite GT and prediction over the 9 backgrounds, write each composite to disk as a JPEG (Pillow
default quality), then score the files pair by pair with pyiqa's ``psnr`` and ``ssim`` metric
objects (which load each file with ``PIL.Image.convert("RGB")``), plus the raw files for the ``rgba``
group. Ours: ``alphavae.eval.runner.evaluate_folders`` (in-memory JPEG, vectorised metrics). Both
run without LPIPS/FID networks (none can be downloaded here), on the same image pairs, and every
number is compared.

Inputs: a folder of real RGBA images (e.g. ``/work/data/alphavae/images``); ``--per-category`` images
are taken from the top level of each of its sub-folders (sorted; for ``alphavae data fetch`` output
that is the two Fluent emoji sources: clip art lies one level deeper and is not taken), predictions
are made by a perturbation: colour through a JPEG round trip at quality 40, alpha blurred with a 3x3
box filter (PNG files). Needs pyiqa (in the ``[test]`` extra: ``pip install -e ".[test]"``).

Timing: wall-clock and process CPU time (user + system) of each pipeline; on a shared machine the
CPU-time ratio is the robust one.

Usage (writes into --work, a scratch folder; results JSON into benchmarks/results/):
    nice .venv/bin/python benchmarks/eval_throughput.py --images /work/data/alphavae/images \
        --per-category 60 --work /tmp/eval_bench --threads 1
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from alphavae.eval.backgrounds import BACKGROUND_NAMES
from alphavae.eval.networks import Networks
from alphavae.eval.protocols import make_protocol
from alphavae.eval.runner import evaluate_folders
from alphavae.io import BACKGROUNDS


def perturb(image: Image.Image) -> Image.Image:
    """A stand-in 'reconstruction': JPEG (q=40) colour, 3x3 box-blurred alpha."""
    rgba = image.convert("RGBA")
    buffer = io.BytesIO()
    rgba.convert("RGB").save(buffer, format="JPEG", quality=40)
    rgb = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    alpha = rgba.getchannel("A").filter(ImageFilter.BoxBlur(1))
    return Image.merge("RGBA", (*rgb.split(), alpha))


def build_tree(images: Path, per_category: int, work: Path) -> tuple[Path, Path, int]:
    """GT and prediction trees ``work/{gt,pred}/<category>/<name>.png``; returns (gt, pred, count)."""
    gt_root, pred_root = work / "gt", work / "pred"
    count = 0
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.png"))[:per_category]:
            gt_path, pred_path = gt_root / folder.name / path.name, pred_root / folder.name / path.name
            if not pred_path.exists():
                gt_path.parent.mkdir(parents=True, exist_ok=True)
                pred_path.parent.mkdir(parents=True, exist_ok=True)
                image = Image.open(path).convert("RGBA")
                image.save(gt_path)
                perturb(image).save(pred_path)
            count += 1
    return gt_root, pred_root, count


def reference_style(gt_root: Path, pred_root: Path, scratch: Path) -> dict[str, dict[str, dict[str, float]]]:
    """key -> group -> {psnr, ssim}, computed the way the reference scripts do (files on disk, pyiqa)."""
    import pyiqa

    psnr, ssim = pyiqa.create_metric("psnr", device="cpu"), pyiqa.create_metric("ssim", device="cpu")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for gt_path in sorted(gt_root.rglob("*.png")):
        rel = gt_path.relative_to(gt_root)
        key = rel.with_suffix("").as_posix()
        files = {}
        for side, root in (("gt", gt_root), ("pred", pred_root)):
            rgba = np.asarray(Image.open(root / rel).convert("RGBA")).astype(np.float64) / 255.0
            alpha = rgba[..., 3:]
            for name, colour in BACKGROUNDS.items():
                out = rgba[..., :3] * alpha + np.array(colour) / 255.0 * (1 - alpha)
                path = scratch / side / name / rel.with_suffix(".jpg")
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.floor(out * 255 + 0.5).astype(np.uint8)).save(path)
                files[side, name] = str(path)
            files[side, "rgba"] = str(root / rel)
        results[key] = {
            group: {"psnr": psnr(files["pred", group], files["gt", group]).item(),
                    "ssim": ssim(files["pred", group], files["gt", group]).item()}
            for group in (*BACKGROUND_NAMES, "rgba")
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="folder with one sub-folder of RGBA PNGs per category")
    parser.add_argument("--per-category", type=int, default=60, help="images per sub-folder (default: %(default)s)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the trees and the JPEG files")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both pipelines (default: %(default)s; on a shared 2-core machine "
                             "more threads oversubscribe and slow both down)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gt_root, pred_root, count = build_tree(args.images, args.per_category, args.work)

    wall, cpu = time.perf_counter(), time.process_time()
    report, _ = evaluate_folders(gt_root, pred_root, make_protocol("reference"), Networks(), worst_k=0)
    ours = time.perf_counter() - wall, time.process_time() - cpu

    scratch = args.work / f"jpeg_{time.time_ns()}"
    wall, cpu = time.perf_counter(), time.process_time()
    theirs_results = reference_style(gt_root, pred_root, scratch)
    theirs = time.perf_counter() - wall, time.process_time() - cpu

    diffs = {m: max(abs(img["scores"][g][m] - theirs_results[img["key"]][g][m]) for img in report["images"]
                    for g in (*BACKGROUND_NAMES, "rgba")) for m in ("psnr", "ssim")}
    result = {
        "images": count,
        "scored": len(report["images"]),
        "ours_wall_s": round(ours[0], 2),
        "ours_cpu_s": round(ours[1], 2),
        "reference_style_wall_s": round(theirs[0], 2),
        "reference_style_cpu_s": round(theirs[1], 2),
        "speedup_wall": round(theirs[0] / ours[0], 2),
        "speedup_cpu": round(theirs[1] / ours[1], 2),
        "max_abs_diff": diffs,
        "macro_rgb": report["tree"]["overall"]["macro"]["rgb"],
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
