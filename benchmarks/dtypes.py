"""Arithmetic ceilings of this machine: what 16-bit types can buy the VAE here.

Measures, in one process: square-matmul and 3x3-convolution throughput (GFLOP/s) in float32, bfloat16 and
float16 (NCHW and channels_last, at FLUX-VAE layer shapes), and the share of a float32 FLUX-size decode's
time spent in convolutions (``torch.profiler``). A 16-bit inference path can beat float32 by at most the
16-bit/float32 convolution ratio; a float32 path that made everything but the convolutions free, by at most
1 / (convolution share).
CPUs with AMX-BF16 (or GPUs) run bf16 convolutions several times faster than float32; CPUs with only
AVX512_BF16/FP16 do not.
"""

from __future__ import annotations

import torch

from benchmarks.common import best_seconds, flux_rgba_vae, matmul_peak_gflops

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CONV_SHAPES = ((128, 128), (256, 64), (512, 32))
"""(channels, side) of 3x3 convolutions in the FLUX VAE decoder's up blocks (at a 1024² output / 8)."""


def conv_gflops(channels: int, side: int, dtype: torch.dtype, *, channels_last: bool, repeats: int = 5) -> float:
    """Best GFLOP/s of a ``channels`` -> ``channels`` 3x3 convolution on a ``(1, channels, side, side)`` input."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(dtype)
    x = torch.randn(1, channels, side, side).to(dtype)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = best_seconds(lambda: conv(x), repeats)
    return 2 * channels * channels * 9 * side * side / seconds / 1e9


def conv_share_of_decode(latent_side: int) -> float:
    """Fraction of a float32 FLUX-size decode's self CPU time spent in convolution kernels (``torch.profiler``)."""
    model = flux_rgba_vae()
    latents = torch.randn(1, model.config.latent_channels, latent_side, latent_side)
    with torch.inference_mode():
        model.decode(latents)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            model.decode(latents)
    events = profile.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    conv = sum(event.self_cpu_time_total for event in events if "conv" in event.key)
    return conv / total


def run(latent_side: int = 32) -> dict:
    """All measurements; ``latent_side``: decode size for the convolution share (32 = 256² output)."""
    convs = [{"channels": c, "side": s, "dtype": name, "channels_last": cl,
              "gflops": conv_gflops(c, s, dtype, channels_last=cl)}
             for c, s in CONV_SHAPES for name, dtype in DTYPES.items() for cl in (False, True)]
    best = {name: max(row["gflops"] for row in convs if row["dtype"] == name) for name in DTYPES}
    share = conv_share_of_decode(latent_side)
    return {"matmul_gflops": {name: matmul_peak_gflops(dtype) for name, dtype in DTYPES.items()},
            "conv": convs, "conv_best_gflops": best, "decode_conv_share": share,
            "decode_side": latent_side * 8, "threads": torch.get_num_threads(),
            "max_16bit_speedup": max(best["bfloat16"], best["float16"]) / best["float32"],
            "max_float32_speedup": 1 / share}


def table(result: dict) -> str:
    """Markdown table of :func:`run`'s result."""
    lines = [f"Arithmetic ceilings ({result['threads']} threads): GFLOP/s", "",
             "| kernel | float32 | bfloat16 | float16 |", "|---|---|---|---|",
             "| matmul 2048² | " + " | ".join(f"{result['matmul_gflops'][d]:.0f}" for d in DTYPES) + " |"]
    for channels, side in CONV_SHAPES:
        for layout in (False, True):
            cells = [next(r["gflops"] for r in result["conv"] if (r["channels"], r["side"], r["dtype"],
                                                                   r["channels_last"]) == (channels, side, d, layout))
                     for d in DTYPES]
            name = f"conv 3x3 {channels} ch {side}² {'channels_last' if layout else 'NCHW'}"
            lines.append(f"| {name} | " + " | ".join(f"{v:.0f}" for v in cells) + " |")
    lines += ["", f"Convolutions take {100 * result['decode_conv_share']:.1f} % of a float32 FLUX-size decode at "
                  f"{result['decode_side']}²; best 16-bit convolution = {result['max_16bit_speedup']:.2f}x float32; "
                  f"making everything else free would give at most {result['max_float32_speedup']:.2f}x."]
    return "\n".join(lines)
