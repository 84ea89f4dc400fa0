"""Shared measurement helpers: alternating timings, FLOP counts, peak RSS, matmul peak, models, images.

Timings alternate implementations (A, B, A, B, ...) inside one process so that load changes on a shared
machine hit both alike; medians are reported. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``
(2 FLOPs per multiply-accumulate; convolutions, matmuls and attention). Peak RSS is the kernel's
high-water mark ``VmHWM`` of this process, reset before each measured call through
``/proc/self/clear_refs`` (Linux >= 4.0), so each call gets its own peak.
"""

from __future__ import annotations

import copy
import gc
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from alphavae.convert import convert_to_rgba
from alphavae.io import list_images, load_rgba, resize_rgba
from alphavae.testing import real_vae_config

IMAGE_DIRS = (Path(__file__).resolve().parents[1] / "examples" / "images", Path("/work/data/alphavae/images"))
"""Folders searched (in order) for real RGBA images used by the accuracy checks."""


def reset_peak_rss() -> None:
    """Reset this process's peak resident set size (``VmHWM``); no-op where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident set size of this process since the last :func:`reset_peak_rss`, in MiB (Linux)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        return int(re.search(r"VmHWM:\s+(\d+)", handle.read()).group(1)) / 1024


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (2 per multiply-accumulate) counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def alternate(impls: dict[str, Callable[[], object]], repeats: int, *, warmup: int = 1) -> dict[str, dict]:
    """Time each implementation ``repeats`` times, interleaved A, B, A, B, ..., after ``warmup`` untimed rounds.

    Returns:
        ``{name: {"times_s": [...], "median_s": float, "peak_rss_mb": float}}``; the peak RSS is the
        largest per-call peak seen (process-wide memory, so it includes the resident models).
    """
    for _ in range(warmup):
        for fn in impls.values():
            fn()
    stats = {name: {"times_s": [], "peak_rss_mb": 0.0} for name in impls}
    for _ in range(repeats):
        for name, fn in impls.items():
            gc.collect()
            reset_peak_rss()
            start = time.perf_counter()
            fn()
            stats[name]["times_s"].append(time.perf_counter() - start)
            stats[name]["peak_rss_mb"] = max(stats[name]["peak_rss_mb"], peak_rss_mb())
    for entry in stats.values():
        entry["median_s"] = statistics.median(entry["times_s"])
    return stats


def best_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    """Shortest wall time in seconds of ``fn()`` over ``repeats`` calls, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak_gflops(dtype: torch.dtype, *, size: int = 2048, repeats: int = 5) -> float:
    """Best achieved GFLOP/s of a square ``size`` matmul in ``dtype`` over ``repeats`` tries (after one warm-up)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    return 2 * size**3 / best_seconds(lambda: a @ b, repeats) / 1e9


def flux_rgba_vae(*, seed: int = 0) -> AutoencoderKL:
    """FLUX-size (83.8 M parameters) RGBA ``AutoencoderKL`` with seeded random weights, float32, eval mode.

    The RGB weights are random (no weights can be downloaded here); after ``convert_to_rgba`` the alpha
    input column of ``encoder.conv_in`` and alpha output row of ``decoder.conv_out`` are drawn like the
    colour ones (bias 0), so the alpha output depends on the image as in a trained model and precision
    losses show up in alpha.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = convert_to_rgba(AutoencoderKL.from_config(real_vae_config("flux"))).eval()
        with torch.no_grad():
            conv_in, conv_out = model.encoder.conv_in.weight, model.decoder.conv_out.weight
            conv_in[:, 3].copy_(torch.randn_like(conv_in[:, 3]) * conv_in[:, :3].std())
            conv_out[3].copy_(torch.randn_like(conv_out[3]) * conv_out[:3].std())
            model.decoder.conv_out.bias[3] = 0.0
    return model


def fresh_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An independent deep copy (so two implementations never share weights or hooks)."""
    return copy.deepcopy(model)


def real_images(count: int, side: int) -> torch.Tensor:
    """``count`` real RGBA images with some transparency, resized to ``side`` x ``side``: ``(count, 4, side, side)``.

    Taken in sorted order from the first folder of ``IMAGE_DIRS`` that has enough images; resized
    alpha-correctly (``alphavae.io.resize_rgba``); straight RGBA in [-1, 1].
    Raises:
        FileNotFoundError: no folder holds ``count`` images.
    """
    for folder in IMAGE_DIRS:
        if not folder.is_dir():
            continue
        images = []
        for path, _ in list_images(folder):
            image = load_rgba(path)
            if image.shape[-2] == image.shape[-1] and bool((image[3] < 1).any()):
                images.append(resize_rgba(image, (side, side)))
            if len(images) == count:
                return torch.stack(images)
    raise FileNotFoundError(f"need {count} square RGBA images with transparency in one of {IMAGE_DIRS}")


def machine_name() -> str:
    """Short machine description for result file names: CPU model and thread count, or the GPU name."""
    if torch.cuda.is_available():
        return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-").lower()
    model = "cpu"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            model = next(line.split(":", 1)[1] for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    slug = re.sub(r"[^A-Za-z0-9]+", "-", model.replace("(R)", "")).strip("-").lower()
    return f"{slug}-{torch.get_num_threads()}t"
