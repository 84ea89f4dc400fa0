"""``alphavae background-moments``: estimate ABMSE's background moments E[b], E[b^2] from images. Logic:
``alphavae.losses.background_moments``."""

from __future__ import annotations

import argparse
import json
import sys

from alphavae.cli import choose_images, load_skipping, path_text, positive_int, report_skipped, seed
from alphavae.io import DEFAULT_MAX_PIXELS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``background-moments`` subcommand."""
    parser = subparsers.add_parser(
        "background-moments",
        help="estimate ABMSE's background moments E[b], E[b^2] from a folder of background images",
        description="Average every pixel of the images (composited over black if they have alpha) into the "
                    "per-channel mean E[b] and second moment E[b^2] in [-1, 1] space that ABMSE integrates "
                    "over (paper Sec. 4.2; the defaults are the reference's ImageNet values). Prints them as "
                    "JSON and as the train-vae overrides. Unreadable images, missing inputs and folders "
                    "without images are skipped and listed, the moments come from the rest (exit status 1).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", type=path_text, help="image files or folders (recursive)")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="use at most N images, a seeded random subset (default: all)")
    parser.add_argument("--seed", type=seed, default=0, help="subset seed (default 0)")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"largest accepted width*height of an input, in pixels (default {DEFAULT_MAX_PIXELS})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Estimate and print the moments; 1 if any input was skipped (listed on stderr), 2 on error (one line, e.g.
    when no input gives a readable image)."""
    from alphavae.losses import background_moments

    prog = "alphavae background-moments"
    failed: list[str] = []
    images = bad_inputs = 0
    try:
        paths = choose_images(args.inputs, args.limit, args.seed, failed)
        images, bad_inputs = len(paths), len(failed)  # failed holds the bad inputs only, so far
        mean, square, count = background_moments(load_skipping(paths, args.max_pixels, failed))
    except (OSError, ValueError) as err:
        report_skipped(prog, failed, images, bad_inputs)
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"background_mean": mean, "background_square": square, "images": count}))
    as_list = lambda values: "[" + ",".join(f"{v:.6g}" for v in values) + "]"  # noqa: E731  6 significant digits
    print(f"{prog}: for train-vae: --set 'loss.background_mean={as_list(mean)}' "
          f"--set 'loss.background_square={as_list(square)}'", file=sys.stderr)
    report_skipped(prog, failed, images, bad_inputs)
    return 1 if failed else 0
