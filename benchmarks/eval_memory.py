"""Peak RSS and wall time of ``alphavae eval`` on one large RGBA pair (pitfall 14: huge images are scored).

For each side, writes one GT/prediction pair of PNGs (smooth random colour with fine noise, a soft-edged
random alpha with transparent and opaque regions; the prediction a perturbed copy), then runs, in a fresh
process, ``/usr/bin/time -f "%M %e" alphavae eval --gt G --pred P -o R --protocol PROTO --quiet --worst-k 0
--overwrite`` and prints side, protocol, peak RSS (``%M``, MiB) and wall time (s) per case, one JSON line each.
``--src`` puts another copy of the package first on ``PYTHONPATH`` (e.g. an older version, to compare).

Usage:
    .venv/bin/python benchmarks/eval_memory.py --work /tmp/eval_mem --sides 1024 2048 4096 --protocol clean
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from alphavae.io import save_rgba


def random_pair(side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """GT and prediction, each ``(4, side, side)`` straight RGBA in [-1, 1] (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)

    def smooth(channels: int, cells: int) -> torch.Tensor:
        coarse = torch.randn(1, channels, cells, cells, generator=g)
        return F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)[0]

    rgb = (smooth(3, 16) * 0.6 + 0.05 * torch.randn(3, side, side, generator=g)).clamp(-1, 1)
    alpha = (smooth(1, 8) * 2).clamp(-1, 1)
    gt = torch.cat([rgb, alpha])
    pred = (gt + 0.05 * torch.randn(gt.shape, generator=g)).clamp(-1, 1)
    return gt, pred


def run_case(work: Path, side: int, protocol: str, src: str | None) -> dict:
    """Write the pair for ``side`` (once) and measure one ``alphavae eval`` run on it."""
    gt_dir, pred_dir = work / f"{side}" / "gt", work / f"{side}" / "pred"
    if not (pred_dir / "a.png").exists():
        gt_dir.mkdir(parents=True, exist_ok=True)
        pred_dir.mkdir(parents=True, exist_ok=True)
        gt, pred = random_pair(side)
        save_rgba(gt, gt_dir / "a.png")
        save_rgba(pred, pred_dir / "a.png")
    cli = Path(sys.executable).parent / "alphavae"
    command = ["/usr/bin/time", "-f", "%M %e", str(cli), "eval", "--gt", str(gt_dir), "--pred", str(pred_dir),
               "-o", str(work / f"{side}" / f"report-{protocol}"), "--protocol", protocol, "--quiet",
               "--worst-k", "0", "--overwrite"]
    env = dict(os.environ, PYTHONPATH=src) if src else None
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    kib, seconds = done.stderr.strip().splitlines()[-1].split()
    return {"side": side, "protocol": protocol, "rc": done.returncode, "peak_rss_mib": round(int(kib) / 1024),
            "wall_s": float(seconds), "command": " ".join(command)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the images and reports")
    parser.add_argument("--sides", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--protocol", choices=["clean", "reference"], default="clean")
    parser.add_argument("--src", help="folder put first on PYTHONPATH for the eval runs (another alphavae copy)")
    args = parser.parse_args()
    for side in args.sides:
        print(json.dumps(run_case(args.work, side, args.protocol, args.src)), flush=True)


if __name__ == "__main__":
    main()
