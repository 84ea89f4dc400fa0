"""Inference benchmark: FLUX-size RGBA VAE encode + decode, diffusers' float32 default vs this project's default.

"fp32" is what a diffusers user gets: ``AutoencoderKL`` in float32, ``encode(x).latent_dist.mode()`` then
``decode(z).sample``. "default" is ``RGBAVAE`` with the ``alphavae.accel`` "auto" policy (on this CPU:
bf16 bulk, float32 islands, channels_last). Both run on the same real RGBA image (resized to the side)
with the same random weights, alternating; the outputs of the timed calls give the precision check:
alpha max error between the two paths (0-255 units) and the 9-background composite PSNR of each path
against the input (its difference in dB). Random weights make a valid *precision* check (same network,
two arithmetic paths) but amplify rounding more than trained weights do.
"""

from __future__ import annotations

import torch

from alphavae.accel import apply_policy, resolve_policy
from alphavae.io import BACKGROUNDS, composite
from alphavae.vae import RGBAVAE
from benchmarks.common import alternate, count_flops, flux_rgba_vae, fresh_copy, matmul_peak_gflops, real_images

TARGET_SPEEDUP = 1.8
TARGET_PEAK_FRACTION = 0.85
TARGET_ALPHA_ERROR_255 = 2.0
TARGET_PSNR_DELTA_DB = 0.05


def composite_psnr(target: torch.Tensor, prediction: torch.Tensor) -> float:
    """Mean over the 9 canonical backgrounds of the RGB PSNR (dB, peak-to-peak 2 in [-1, 1]) of composites."""
    values = []
    for name in BACKGROUNDS:
        mse = (composite(target, name) - composite(prediction, name)).pow(2).mean().clamp_min(1e-12)
        values.append(10 * torch.log10(4 / mse).item())
    return sum(values) / len(values)


def run(sides: tuple[int, ...], repeats: int, *, policy: str = "auto") -> dict:
    """Benchmark encode + decode at each side; return a JSON-ready dict (see module docstring).

    Args:
        sides: square image sides in pixels (multiples of 8).
        repeats: timed calls per implementation and side (alternating), after one warm-up round.
        policy: the ``alphavae.accel`` policy of the "default" path.
    """
    reference = flux_rgba_vae()
    fast = RGBAVAE(apply_policy(fresh_copy(reference), resolve_policy(policy)))
    peaks = {"float32": matmul_peak_gflops(torch.float32), "bfloat16": matmul_peak_gflops(torch.bfloat16)}
    rows = []
    for index, side in enumerate(sides):
        image = real_images(index + 1, side)[index:]
        outputs = {}

        @torch.inference_mode()
        def fp32() -> None:
            outputs["fp32"] = reference.decode(reference.encode(image).latent_dist.mode()).sample.clamp(-1, 1)

        def default() -> None:
            outputs["default"] = fast.reconstruct(image)

        flops = count_flops(fp32)
        stats = alternate({"fp32": fp32, "default": default}, repeats)
        peaks["bfloat16"] = max(peaks["bfloat16"], matmul_peak_gflops(torch.bfloat16))
        alpha_error = (outputs["fp32"][:, 3] - outputs["default"][:, 3]).abs().max().item() * 127.5
        psnr = {name: composite_psnr(image, out) for name, out in outputs.items()}
        speedup = stats["fp32"]["median_s"] / stats["default"]["median_s"]
        gflops = {name: flops / entry["median_s"] / 1e9 for name, entry in stats.items()}
        rows.append({
            "side": side, "flops": flops, "impls": stats, "speedup": speedup, "gflops": gflops,
            "alpha_max_error_255": alpha_error, "composite_psnr_db": psnr,
            "psnr_delta_db": abs(psnr["default"] - psnr["fp32"]),
        })
    for row in rows:
        row["peak_fraction"] = row["gflops"]["default"] / peaks["bfloat16"]
        row["targets_met"] = {
            "speedup": row["speedup"] >= TARGET_SPEEDUP,
            "peak_fraction": row["peak_fraction"] >= TARGET_PEAK_FRACTION,
            "alpha_error": row["alpha_max_error_255"] <= TARGET_ALPHA_ERROR_255,
            "psnr_delta": row["psnr_delta_db"] <= TARGET_PSNR_DELTA_DB,
        }
    return {"policy": resolve_policy(policy).name, "matmul_peak_gflops": peaks, "rows": rows}


def table(result: dict) -> str:
    """Markdown table of :func:`run`'s result."""
    peak = result["matmul_peak_gflops"]
    lines = [f"Inference, FLUX-size RGBA VAE encode+decode, batch 1 (matmul peak: fp32 {peak['float32']:.0f}, "
             f"bf16 {peak['bfloat16']:.0f} GFLOP/s; default policy `{result['policy']}`)", "",
             "| side | TFLOP | fp32 s | default s | speedup | fp32 GFLOP/s | default GFLOP/s | % bf16 peak "
             "| fp32 / default peak RSS MiB | alpha max err /255 | PSNR fp32 / default dB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        impls, gflops, psnr = row["impls"], row["gflops"], row["composite_psnr_db"]
        lines.append(
            f"| {row['side']}² | {row['flops'] / 1e12:.2f} | {impls['fp32']['median_s']:.2f} | "
            f"{impls['default']['median_s']:.2f} | {row['speedup']:.2f}× | {gflops['fp32']:.0f} | "
            f"{gflops['default']:.0f} | {100 * row['peak_fraction']:.0f} % | "
            f"{impls['fp32']['peak_rss_mb']:.0f} / {impls['default']['peak_rss_mb']:.0f} | "
            f"{row['alpha_max_error_255']:.2f} | {psnr['fp32']:.3f} / {psnr['default']:.3f} |")
    return "\n".join(lines)
