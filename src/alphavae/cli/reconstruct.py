"""``alphavae reconstruct``: encode + decode image files with an RGBA VAE. Logic: ``alphavae.reconstruct``."""

from __future__ import annotations

import argparse
import sys

from alphavae.accel import POLICY_NAMES
from alphavae.cli import list_inputs, non_negative_int, path_text, path_value, positive_int
from alphavae.io import DEFAULT_MAX_PIXELS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reconstruct`` subcommand."""
    parser = subparsers.add_parser(
        "reconstruct",
        help="encode and decode images with an RGBA VAE (same size, 4-channel PNG out)",
        description="Reconstruct images through an RGBA VAE (posterior mode). Folders are walked "
                    "recursively and their layout is mirrored under OUT; every output is a 4-channel 8-bit "
                    "PNG of exactly the input size. Existing outputs and --grid images are skipped unless "
                    "--overwrite (a missing grid of an existing output is still made); no output or grid ever "
                    "replaces an input file. OUT and DIR are checked (placement, write permission) before the "
                    "model loads. Bad inputs (missing paths, device files, folders without images, unreadable "
                    "images) are reported and skipped, the rest are processed; a full disk stops the run with "
                    "the summary; the exit status is 1 if any input or grid failed or the run stopped, 2 if no "
                    "input holds an image (said before the model loads).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", type=path_text, help="image files and/or folders")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", type=path_text,
                        help="output folder (not inside an input folder)")
    parser.add_argument("--vae", default=None, metavar="PATH",
                        help="RGBA VAE folder in diffusers format (made by `alphavae convert` or training); "
                             "default: the shipped model")
    parser.add_argument("--subfolder", default=None, help="subfolder of PATH holding the VAE, e.g. 'vae'")
    parser.add_argument("--dtype", choices=POLICY_NAMES, default="auto",
                        help="speed/precision policy (alphavae.accel): auto (default: mixed-bf16 where the CPU/GPU "
                             "has fast bf16, else float32), float32 (exact), bfloat16, float16, mixed-bf16; "
                             "16-bit results with NaN/inf are recomputed in float32 with a warning")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument("--tile-size", type=positive_int, default=None, metavar="N",
                        help="encode/decode in overlapping N x N pixel tiles (multiple of 8 for SD/FLUX VAEs; "
                             "blended over the overlap) to bound memory on large images; default: whole images")
    parser.add_argument("--tile-overlap", type=non_negative_int, default=None, metavar="N",
                        help="tile overlap in pixels (multiple of 8 for SD/FLUX VAEs, below --tile-size; "
                             "default: a quarter of the tile, at least 16 latent pixels, at most half the tile)")
    parser.add_argument("--tile-mode", choices=("exact", "fast"), default="exact",
                        help="exact (default): whole-image GroupNorm statistics and the attention mid-block on the "
                             "whole latent, close to an untiled run (alphavae-mini: max 0.51/255 with 256 px tiles and the default "
                             "overlap, 7.2/255 with 128 px tiles, more with smaller tiles; slower: measured on one "
                             "CPU thread, 6-8x the time of fast on 384 px images with 128-256 px tiles "
                             "(benchmarks/README.md) and at 2048 px with 512 px tiles 6.4x fast, 4.8x untiled "
                             "(the model card's Known limitations)); fast: every layer per tile like diffusers "
                             "(seams possible)")
    parser.add_argument("--min-side", type=positive_int, default=None, metavar="N",
                        help="reconstruct images with a side shorter than N px centred on a transparent N px canvas "
                             "and crop back (that side first extended to whole latent cells of the VAE, 8 px for "
                             "SD/FLUX, by repeating its edge pixels, so a 1 px image keeps its pixel; never resized; "
                             "for models trained at one size: use 256 with the shipped alphavae-mini for images under "
                             "256 px, see its card); default: as they are")
    parser.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                        help="same-size images per model call (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs and grids")
    parser.add_argument("--grid", type=path_value, default=None, metavar="DIR",
                        help="also write comparison grids DIR/<relative path>.grid.png (mirroring the input "
                             "subfolders): input (top) vs reconstruction (bottom) over checkerboard, black and "
                             "white (DIR outside the inputs' folders and apart from OUT, neither inside the other; "
                             "made for existing outputs too; existing grids are kept unless --overwrite; default: "
                             "none)")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"largest accepted width*height of an input, in pixels (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check OUT, DIR and the inputs, load the VAE and run ``reconstruct_files``; print the summary; 0 if every
    input and grid succeeded, 1 if some failed or a full disk stopped the run, 2 on an error (--tile-overlap
    without --tile-size, an unusable OUT or DIR or no image in any input, named in one line before the model
    loads; a VAE that does not load); 130 when interrupted: finished outputs are complete files, nothing partial
    is left."""
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("alphavae reconstruct: interrupted; outputs written so far are complete", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    """The body of ``run``."""
    from alphavae.reconstruct import check_destinations, reconstruct_files
    from alphavae.vae import RGBAVAE

    if args.tile_overlap is not None and args.tile_size is None:
        print("alphavae reconstruct: error: --tile-overlap needs --tile-size (without it whole images are encoded)",
              file=sys.stderr)
        return 2
    try:
        check_destinations(args.inputs, args.output, args.grid)
        listing = list_inputs(args.inputs)  # no usable input is an error before the model loads; bad ones reported
        vae = RGBAVAE.from_pretrained(args.vae, subfolder=args.subfolder, dtype=args.dtype, device=args.device,
                                      tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                                      tile_mode=args.tile_mode)
        report = reconstruct_files(args.inputs, args.output, vae=vae, batch_size=args.batch_size,
                                   overwrite=args.overwrite, grid_dir=args.grid, progress=not args.quiet,
                                   max_pixels=args.max_pixels, min_side=args.min_side, listing=listing)
    except (OSError, ValueError) as err:
        print(f"alphavae reconstruct: error: {err}", file=sys.stderr)
        return 2
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1
