"""``alphavae background-moments``: estimate ABMSE's background moments E[b], E[b^2] from images. Logic:
``alphavae.losses.background_moments``."""

from __future__ import annotations

import argparse
import json
import random
import sys

from alphavae.cli import positive_int, seed
from alphavae.io import DEFAULT_MAX_PIXELS, ImageLoadError, list_images, load_rgba
from alphavae.losses import background_moments


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``background-moments`` subcommand."""
    parser = subparsers.add_parser(
        "background-moments",
        help="estimate ABMSE's background moments E[b], E[b^2] from a folder of background images",
        description="Average every pixel of the images (composited over black if they have alpha) into the "
                    "per-channel mean E[b] and second moment E[b^2] in [-1, 1] space that ABMSE integrates "
                    "over (paper Sec. 4.2; the defaults are the reference's ImageNet values). Prints them as "
                    "JSON and as the train-vae overrides. Unreadable images are skipped and listed (exit "
                    "status 1).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (recursive)")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="use at most N images, a seeded random subset (default: all)")
    parser.add_argument("--seed", type=seed, default=0, help="subset seed (default 0)")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"largest accepted width*height of an input, in pixels (default {DEFAULT_MAX_PIXELS})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Estimate and print the moments; 1 if any input was skipped or on error (named on stderr)."""
    prog = "alphavae background-moments"
    failed: list[str] = []

    def images(paths):
        for path in paths:
            try:
                yield load_rgba(path, max_pixels=args.max_pixels)
            except ImageLoadError as err:
                failed.append(str(err))

    try:
        paths = [path for path, _ in list_images(args.inputs)]
        if not paths:
            raise ValueError(f"no image files in {', '.join(map(str, args.inputs))}")
        if args.limit is not None and args.limit < len(paths):
            paths = sorted(random.Random(args.seed).sample(paths, args.limit))
        mean, square, count = background_moments(images(paths))
    except (OSError, ValueError) as err:
        _report(prog, failed)
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"background_mean": mean, "background_square": square, "images": count}))
    as_list = lambda values: "[" + ",".join(f"{v:.4f}" for v in values) + "]"  # noqa: E731
    print(f"{prog}: for train-vae: --set 'loss.background_mean={as_list(mean)}' "
          f"--set 'loss.background_square={as_list(square)}'", file=sys.stderr)
    _report(prog, failed)
    return 1 if failed else 0


def _report(prog: str, failed: list[str]) -> None:
    """Print each skipped input's error on stderr."""
    for message in failed:
        print(f"{prog}: skipped: {message}", file=sys.stderr)
