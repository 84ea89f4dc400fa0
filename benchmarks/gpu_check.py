"""GPU checks in one short run: 1024² encode+decode latency against the FLOP-count ideal, and a training step.

Run through ``benchmarks/gpu_check.sh`` on the GPU machine (it installs the wheels it brings), or here with
``--device cpu --quick`` to test this code. Steps:

1. dense matmul peak in bf16 (an 8192² matmul on CUDA, best of 5): the "ideal" latency of a model is its
   FLOP count (``torch.utils.flop_counter``) divided by this peak;
2. FLUX-size RGBA VAE (random weights) encode + decode of a real image, batch 1: "bfloat16" (whole model),
   the default "auto" policy, and the auto policy with channels_last, alternating; median over repeats
   (each call ends with a device synchronisation); target median ≤ 55 ms at 1024² (about 3× ideal);
3. training step (``benchmarks.training``): project vs reference-style step, bf16 autocast, AdamW.

Writes ``benchmarks/results/<date>-<device>-gpu[-quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

from alphavae.accel import apply_policy, resolve_policy
from alphavae.vae import RGBAVAE
from benchmarks import training
from benchmarks.common import alternate, count_flops, flux_rgba_vae, fresh_copy, machine_name, real_images

TARGET_1024_MS = 55.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, size: int) -> float:
    """Best bf16 dense matmul TFLOP/s over 5 tries of a ``size``² matmul on ``device``."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    a @ b
    best = float("inf")
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def inference(device: torch.device, side: int, repeats: int) -> dict:
    """Encode+decode latency of the FLUX-size RGBA VAE in bf16 layouts; see the module docstring."""
    base = flux_rgba_vae()
    auto = resolve_policy("auto", device)
    policies = {"bfloat16": resolve_policy("bfloat16"), "auto": auto,
                "auto+channels_last": dataclasses.replace(auto, channels_last=True)}
    image = real_images(1, side).to(device)
    calls = {}
    for name, policy in policies.items():
        vae = RGBAVAE(apply_policy(fresh_copy(base).to(device), policy))

        def call(vae: RGBAVAE = vae) -> None:
            vae.reconstruct(image)
            _sync(device)

        calls[name] = call
    flops = count_flops(calls["auto"])
    stats = alternate(calls, repeats, warmup=2)
    for entry in stats.values():
        entry.pop("peak_rss_mb")
        entry["median_ms"] = 1000 * entry["median_s"]
    return {"side": side, "flops": flops, "policy_auto": auto.name, "impls": stats}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 0, or 1 if the 1024² latency target is missed (full run only)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (64²), for testing this script on a CPU")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="where the JSON and Markdown results go")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convolution kernels
    side, train_side, repeats = (64, 64, 2) if args.quick else (1024, 512, 10)
    peak = matmul_peak_tflops(device, 1024 if args.quick else 8192)
    infer = inference(device, side, repeats)
    ideal_ms = infer["flops"] / (peak * 1e12) * 1000
    has_lpips = importlib.util.find_spec("lpips") is not None
    train = training.run(train_side, 1, 2 if args.quick else 5, device=args.device,
                         autocast=torch.bfloat16 if device.type == "cuda" else None, lpips=has_lpips)
    auto_ms = infer["impls"]["auto"]["median_ms"]
    result = {"device": machine_name() if device.type == "cuda" else f"cpu-{machine_name()}",
              "torch": torch.__version__, "date": datetime.datetime.now(datetime.UTC).isoformat(),
              "bf16_matmul_peak_tflops": peak, "ideal_ms": ideal_ms, "inference": infer, "training": train,
              "target_ms": TARGET_1024_MS, "target_met": auto_ms <= TARGET_1024_MS if side == 1024 else None}
    lines = [f"# GPU check ({result['device']}, torch {torch.__version__})", "",
             f"bf16 matmul peak {peak:.3g} TFLOP/s; encode+decode {side}² = {infer['flops'] / 1e12:.2f} TFLOP, "
             f"ideal {ideal_ms:.1f} ms", "", "| layout | median ms | × ideal |", "|---|---|---|"]
    lines += [f"| {name} | {entry['median_ms']:.1f} | {entry['median_ms'] / ideal_ms:.1f} |"
              for name, entry in infer["impls"].items()]
    lines += ["", training.table(train)]
    stem = f"{datetime.date.today().isoformat()}-{result['device']}-gpu" + ("-quick" if args.quick else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["target_met"] in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())
