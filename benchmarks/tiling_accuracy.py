"""Tiled vs untiled reconstruction with a trained RGBA VAE on real images: max error per channel and time.

    python -m benchmarks.tiling_accuracy [IMAGE...] [--vae DIR] [--tiles 128 256]

Default VAE: the shipped alphavae-mini; default images: three bundled 384² samples. For each image and tile
size, reconstructs untiled and tiled in both ``tile_mode``s (default overlap), float32, and prints a Markdown
row: max |tiled - untiled| per channel in 1/255 units and seconds per call.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from alphavae.io import load_rgba
from alphavae.vae import RGBAVAE

SAMPLES = ("fluent-svg/shadows-glows/woman-surfing-light.png", "clipart/shadows-glows/shapes_jigsaw_jigsaw_red_09.png",
           "clipart/soft-edges/food_fruit_prune.png")
"""Bundled samples (under ``examples/images``) whose shapes cross the tile borders."""


def _timed(vae: RGBAVAE, pixels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Reconstruction and its wall time in seconds."""
    start = time.perf_counter()
    out = vae.reconstruct(pixels)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Print the table; returns 0."""
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path, default=[root / "examples/images" / s for s in SAMPLES])
    parser.add_argument("--vae", default=None, help="RGBA VAE folder (default: the shipped alphavae-mini)")
    parser.add_argument("--tiles", type=int, nargs="+", default=[128, 256], help="tile sizes in px (default 128 256)")
    args = parser.parse_args(argv)
    vae = RGBAVAE.from_pretrained(args.vae, dtype="float32")
    print(f"threads {torch.get_num_threads()}\n\n| image | mode | tile / overlap px | max error R, G, B, A (/255) "
          "| tiled s | untiled s |\n|---|---|---|---|---|---|")
    for path in args.images:
        pixels = load_rgba(path)[None]
        vae.disable_tiling()
        reference, untiled_s = _timed(vae, pixels)
        for mode in ("exact", "fast"):
            for tile in args.tiles:
                vae.enable_tiling(tile, tile_mode=mode)
                tiled, tiled_s = _timed(vae, pixels)
                errors = ((tiled - reference).abs().amax(dim=(0, 2, 3)) * 127.5).tolist()
                print(f"| {path.name} | {mode} | {tile} / {vae.tile_overlap} | {', '.join(f'{e:.2f}' for e in errors)} "
                      f"| {tiled_s:.1f} | {untiled_s:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
