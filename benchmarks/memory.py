"""Memory benchmark: tiled encode/decode of large images, each case in its own subprocess (clean peak RSS).

A case runs ``RGBAVAE`` (FLUX-size random weights, the default "auto" policy) on one real RGBA image
resized to the side, in one mode: "encode", "decode" (random standard-normal latents) or "reconstruct"
(encode + decode, output saved so the parent can compare tiled against untiled). The child prints one
JSON line: wall time and peak RSS during the call (``VmHWM`` reset just before it: Python, torch, the
resident weights and the activations).
The parent also saves the tiled reconstruction and an amplified |tiled - untiled| map as PNGs, the
visual seam check (tile borders are where seams would show).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from alphavae.io import save_rgba
from benchmarks.common import flux_rgba_vae, peak_rss_mb, real_images, reset_peak_rss

TARGET_4096_DECODE_RSS_MB = 3 * 1024
TARGET_TILED_ERROR_255 = 2.0


def _child(mode: str, side: int, tile: int | None, overlap: int | None, out: str | None, batch: int,
           tile_mode: str = "exact") -> dict:
    """Run one case in this process and return its measurements."""
    from alphavae.accel import apply_policy, resolve_policy
    from alphavae.vae import RGBAVAE

    vae = RGBAVAE(apply_policy(flux_rgba_vae(), resolve_policy("auto")))
    if tile is not None:
        vae.enable_tiling(tile, overlap, tile_mode=tile_mode)
    image = real_images(1, side).expand(batch, -1, -1, -1)
    reset_peak_rss()  # the peak of the call itself (resident weights included), not of building the model
    start = time.perf_counter()
    with torch.inference_mode():
        if mode == "encode":
            vae.encode(image).mode()
        elif mode == "decode":
            latents = torch.randn(batch, vae.latent_channels, side // vae.multiple, side // vae.multiple,
                                  generator=torch.Generator().manual_seed(0))
            vae.decode(latents)
        else:
            result = vae.reconstruct(image)
            if out:
                torch.save(result, out)
    return {"mode": mode, "side": side, "batch": batch, "tile": tile, "overlap": overlap,
            "tile_mode": tile_mode if tile else None, "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def measure(mode: str, side: int, tile: int | None, overlap: int | None = None, out: Path | None = None,
            batch: int = 1, tile_mode: str = "exact") -> dict:
    """Run one case in a fresh subprocess and return its JSON (adds ``"error"`` if the child failed).

    Args:
        mode: "encode", "decode" or "reconstruct" (``out``: where the child saves its output tensor).
        side: image side in pixels (multiple of 8); tile / overlap: ``RGBAVAE.enable_tiling`` arguments or None.
        batch: images per call (the same image repeated). tile_mode: "exact" or "fast" (``enable_tiling``).
    """
    command = [sys.executable, "-m", "benchmarks.memory", mode, str(side), "--batch", str(batch)]
    command += ["--tile", str(tile), "--tile-mode", tile_mode] if tile else []
    command += ["--overlap", str(overlap)] if overlap is not None else []
    command += ["--out", str(out)] if out else []
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        reason = f"killed by signal {-done.returncode}" if done.returncode < 0 else done.stderr.strip()[-300:]
        return {"mode": mode, "side": side, "batch": batch, "tile": tile, "tile_mode": tile_mode, "error": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(decode_sides: tuple[int, ...], compare_side: int, tile: int, overlap: int, out_dir: Path,
        tile_mode: str = "exact", decode_tile_mode: str = "exact") -> dict:
    """Tiled decode at ``decode_sides`` (``decode_tile_mode``); tiled (``tile_mode``) and untiled reconstruction
    (encode + decode) at ``compare_side``.

    Writes ``out_dir/seams-<side>.png`` (tiled reconstruction) and ``out_dir/seams-<side>-diff.png``
    (|tiled - untiled| x 16, alpha forced opaque) for the seam check. The 4096² target is None (not
    measured) when 4096 is not among ``decode_sides``.
    """
    with tempfile.TemporaryDirectory() as scratch:
        tiled_path, whole_path = Path(scratch) / "tiled.pt", Path(scratch) / "whole.pt"
        compare = [measure("reconstruct", compare_side, tile, overlap, tiled_path, tile_mode=tile_mode),
                   measure("reconstruct", compare_side, None, None, whole_path)]
        error = None
        if tiled_path.is_file() and whole_path.is_file():
            tiled, whole = torch.load(tiled_path), torch.load(whole_path)
            diff = (tiled - whole).abs()
            error = {"max_255": diff.max().item() * 127.5, "alpha_max_255": diff[:, 3].max().item() * 127.5,
                     "mean_255": diff.mean().item() * 127.5}
            out_dir.mkdir(parents=True, exist_ok=True)
            save_rgba(tiled[0], out_dir / f"seams-{compare_side}.png", overwrite=True)
            amplified = (diff[0] * 16 - 1).clamp(-1, 1)
            amplified[3] = 1
            save_rgba(amplified, out_dir / f"seams-{compare_side}-diff.png", overwrite=True)
    cases = compare + [measure("decode", side, tile, overlap, tile_mode=decode_tile_mode) for side in decode_sides]
    decode_4096 = [c for c in cases if c["side"] == 4096 and c["mode"] == "decode"]
    rss_4096 = None if not decode_4096 else decode_4096[0].get("peak_rss_mb", float("inf")) <= TARGET_4096_DECODE_RSS_MB
    return {"tile": tile, "overlap": overlap, "cases": cases, "tiled_vs_untiled": error,
            "compare_side": compare_side,
            "targets_met": {"decode_4096_rss": rss_4096,
                            "tiled_error": error is not None and error["max_255"] <= TARGET_TILED_ERROR_255}}


def table(result: dict) -> str:
    """Markdown table of :func:`run`'s result."""
    lines = [f"Memory, tiles of {result['tile']} px with {result['overlap']} px overlap, default policy, batch 1 "
             "(peak RSS of a fresh process)", "",
             "| mode | side | tiling | seconds | peak RSS MiB |", "|---|---|---|---|---|"]
    for case in result["cases"]:
        if "error" in case:
            lines.append(f"| {case['mode']} | {case['side']}² | {case['tile_mode'] or 'none'} | failed: {case['error']} | |")
        else:
            lines.append(f"| {case['mode']} | {case['side']}² | {case['tile_mode'] or 'none'} | {case['seconds']:.1f} | "
                         f"{case['peak_rss_mb']:.0f} |")
    error = result["tiled_vs_untiled"]
    if error:
        lines += ["", f"Tiled vs untiled at {result['compare_side']}²: max error {error['max_255']:.2f}/255 "
                      f"(alpha {error['alpha_max_255']:.2f}/255, mean {error['mean_255']:.3f}/255)."]
    return "\n".join(lines)


def _main() -> int:
    """Child entry point: ``python -m benchmarks.memory MODE SIDE [--tile N] [--overlap N] [--out FILE]``."""
    parser = argparse.ArgumentParser(description="one memory case (run by benchmarks.memory.measure)")
    parser.add_argument("mode", choices=("encode", "decode", "reconstruct"))
    parser.add_argument("side", type=int, help="image side in pixels (multiple of 8)")
    parser.add_argument("--tile", type=int, default=None, help="tile side in pixels; default: untiled")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels")
    parser.add_argument("--tile-mode", choices=("exact", "fast"), default="exact", help="RGBAVAE.enable_tiling mode")
    parser.add_argument("--out", default=None, help="file for the reconstruction tensor (reconstruct mode)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    args = parser.parse_args()
    print(json.dumps(_child(args.mode, args.side, args.tile, args.overlap, args.out, args.batch, args.tile_mode)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
