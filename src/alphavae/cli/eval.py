"""``alphavae eval``, ``eval-vae`` and ``eval-t2i``: the ALPHA benchmark (argument parsing only;
logic in :mod:`alphavae.eval.runner`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alphavae.accel import POLICY_NAMES
from alphavae.cli import non_negative_int, path_value, positive_int

PROTOCOL_HELP = (
    "reference: the AlphaVAE scripts' numerics (uint8 + JPEG composites, SSIM on luma, macro averages, "
    "alpha-blind 'rgba' group); clean: float composites, SSIM on RGB, alpha metrics (default: %(default)s)"
)


def _add_common(parser: argparse.ArgumentParser, *, paired: bool = True) -> None:
    """Options of all three commands; ``paired`` (eval, eval-vae: GT/prediction pairs) adds the protocol
    options and LPIPS."""
    parser.add_argument("-o", "--output", required=True, type=path_value,
                        help="report folder (created): report.json, report.csv, report.html; must not lie in an input folder")
    parser.add_argument("--overwrite", action="store_true", help="replace existing report files")
    if paired:
        parser.add_argument("--protocol", choices=("reference", "clean"), default="reference", help=PROTOCOL_HELP)
        parser.add_argument("--resize", type=positive_int, default=None, metavar="PX",
                            help="resize the GT so its short side is PX pixels (bilinear, premultiplied) and "
                                 "centre-crop PX x PX, as the reference did with 1024 (default: no resize); eval "
                                 "does not resize predictions (they must already be PX x PX), eval-vae reconstructs "
                                 "the resized GT; PX is at most 8192 (images are loaded up to 8192 x 8192 pixels), and "
                                 "an image with more pixels once resized (before the crop) is a failed image")
        parser.add_argument("--checkerboard", action="store_true",
                            help="also score composites over a 16 px grey checkerboard")
        parser.add_argument("--worst-k", type=non_negative_int, default=8, metavar="K",
                            help="worst images (lowest PSNR) shown in the HTML report (default: %(default)s)")
        parser.add_argument("--lpips", default=None, metavar="PATH",
                            help="LPIPS weights: full lpips state dict or torchvision AlexNet weights; 'none' = off "
                                 "(default: torchvision's cached AlexNet, skipped with a warning if absent)")
    parser.add_argument("--inception", default=None, metavar="PATH",
                        help="torch-fidelity FID Inception weights; 'none' = off (default: its cache, else skipped)")
    parser.add_argument("--aesthetic", nargs=2, default=None, metavar=("CLIP_DIR", "HEAD"),
                        help="LAION aesthetic predictor: local CLIP ViT-L/14 folder and MLP head file (default: off)")
    parser.add_argument("--device", default="cpu",
                        help="torch device for the metric networks, and the VAE in eval-vae, e.g. cpu, cuda, cuda:1; "
                             "checked before anything is loaded. Under `accelerate launch` with several processes "
                             "each process uses its own device (accelerate's) instead (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _networks(args: argparse.Namespace, device, clip: str | None = "none"):
    """The metric networks the options ask for, on ``device``."""
    from alphavae.eval.networks import load_networks

    return load_networks(lpips=args.lpips, inception=args.inception, clip=clip, aesthetic=args.aesthetic).to(device)


def _protocol(args: argparse.Namespace):
    from alphavae.eval.protocols import make_protocol

    return make_protocol(args.protocol, resize=args.resize, checkerboard=args.checkerboard)


PRINTED_PROBLEMS = 20
"""Problems of each kind printed on stderr; the rest are only in report.json."""


def problem_lines(report: dict) -> list[str]:
    """One ``"<label>: <file or key>: <reason>"`` line per failed, missing or ambiguous image (an ambiguous key's
    line names its files after the key; at most :data:`PRINTED_PROBLEMS` of each kind, then a count); characters
    that would break the line are escaped (``alphavae.io.single_line``)."""
    from alphavae.io import single_line

    absent = ("no generated image for this prompt key (any extension)" if report["protocol"]["name"] == "t2i"
              else "no prediction file with this name (any extension)")
    kinds = {
        "failed": [entry["error"] for entry in report.get("failures", [])],  # "<file(s)>: <reason>"
        "missing": [f"{key}: {absent}" for key in report.get("missing", [])],
        "ambiguous": [f"{key}: {', '.join(files)}: several files with this name and different extensions; not scored"
                      for key, files in report.get("ambiguous", {}).items()],
    }
    lines = []
    for label, entries in kinds.items():
        lines += [single_line(f"{label}: {entry}") for entry in entries[:PRINTED_PROBLEMS]]
        if len(entries) > PRINTED_PROBLEMS:
            lines.append(f"{label}: ... and {len(entries) - PRINTED_PROBLEMS} more (see report.json)")
    return lines


def _finish(args: argparse.Namespace, result) -> int:
    """Write the reports on the main process, print a summary, return the exit status."""
    from alphavae.eval.report import ALPHA_BLIND_NOTE, counted, headline, write_reports

    if result is None:  # a non-main process of a sharded run
        return 0
    report, worst = result if isinstance(result, tuple) else (result, [])
    for path in write_reports(args.output, report, worst, overwrite=args.overwrite):
        print(f"wrote {path}")
    problems = sum(len(report.get(label, [])) for label in ("failures", "missing", "ambiguous"))
    for line in problem_lines(report):
        print(line, file=sys.stderr)
    for note in report.get("notes", []):
        if note != ALPHA_BLIND_NOTE:  # the reference protocol's standing caveat: in the reports only
            print(f"note: {note}", file=sys.stderr)
    if report.get("extra") and report["protocol"]["name"] == "t2i":
        print(f"note: {counted(len(report['extra']), 'image')} without a prompt ignored (listed in report.json)",
              file=sys.stderr)
    elif report.get("extra"):
        layout = (" (images are paired by path relative to each folder, extension aside: do --gt and --pred have the "
                  "same layout of subfolders?)") if report.get("missing") else ""
        print(f"note: {counted(len(report['extra']), 'prediction file')} without GT ignored (listed in report.json)"
              f"{layout}", file=sys.stderr)
    print(f"{counted(report['tree']['overall']['images'], 'image')} scored, {counted(problems, 'problem')}")
    numbers = headline(report)
    if numbers:
        print(numbers)
    return 1 if problems else 0


def _guard(args: argparse.Namespace, inputs: list):
    """Checks made before any network, model or image is loaded: the inputs exist and are folders, the
    report folder lies outside them, holds no report (unless ``--overwrite``) and is writable, and
    ``--device`` is usable.

    Returns:
        The ``torch.device`` to score on (:func:`alphavae.eval.runner.scoring_device`).
    Raises:
        FileNotFoundError, NotADirectoryError: an input does not exist or is not a folder.
        ValueError: the report folder lies inside an input folder; ``--device`` is not usable.
        FileExistsError, OSError: a report exists, or the report folder cannot be written
            (:func:`alphavae.eval.report.check_report_destination`).
    """
    from alphavae.eval.pairs import check_folder
    from alphavae.eval.report import check_report_destination
    from alphavae.eval.runner import scoring_device
    from alphavae.io import check_output_outside_inputs

    inputs = [p for p in inputs if p is not None]
    for folder in inputs:
        check_folder(folder)
    check_output_outside_inputs(args.output, inputs)
    check_report_destination(args.output, overwrite=args.overwrite)
    return scoring_device(args.device)


def _reporting_errors(run):
    """Wrap a command so setup errors (bad paths, existing reports, unloadable networks) print one line, exit 2."""

    def wrapped(args: argparse.Namespace) -> int:
        from alphavae.eval.networks import NetworkUnavailable

        try:
            return run(args)
        except (FileExistsError, FileNotFoundError, NetworkUnavailable, ValueError, OSError) as err:
            print(f"alphavae {args.command}: error: {err}", file=sys.stderr)
            return 2

    wrapped.__doc__ = run.__doc__
    return wrapped


@_reporting_errors
def run_eval(args: argparse.Namespace) -> int:
    """``alphavae eval``: score a prediction folder against a GT folder.

    Everything that can be checked before scoring is (inputs, report folder, pairing, networks), so a
    setup error costs no scoring time. Failed, missing and ambiguous images print one
    ``"<label>: <file or key>: <reason>"`` line each on stderr.

    Exit status: 0 if every image was scored, 1 if the report lists failed, missing or ambiguous images,
    2 on errors (a missing, non-folder or image-less input folder, GT and prediction folders that overlap,
    an existing report without ``--overwrite``, an unwritable report folder, an unusable ``--device``, a
    ``--resize`` above 8192, an unloadable network, any other ``ValueError``/``OSError``: one line on
    stderr). An image that cannot be read or scored (including a VAE or network error on it, e.g. out of
    memory) is a failed image, not an error. Non-main processes of a sharded run return 0.
    """
    from alphavae.eval.pairs import pair_folders
    from alphavae.eval.runner import evaluate_folders

    device = _guard(args, [args.gt, args.pred])
    plan = pair_folders(args.gt, args.pred)
    protocol, networks = _protocol(args), _networks(args, device)
    return _finish(args, evaluate_folders(args.gt, args.pred, protocol, networks, worst_k=args.worst_k, plan=plan,
                                          progress=not args.quiet))


@_reporting_errors
def run_eval_vae(args: argparse.Namespace) -> int:
    """``alphavae eval-vae``: reconstruct a folder with an RGBA VAE and score it in one run.

    The data folder and the report folder are checked before the VAE is loaded, and ``--source-vae``
    against ``--vae`` (:func:`alphavae.eval.runner.check_source_vae`) before any network or image.

    Exit status: as :func:`run_eval` (0 all scored, 1 failed/missing/ambiguous images, 2 on errors,
    including a VAE that cannot be loaded or a source VAE that does not fit it).
    """
    from alphavae.eval.pairs import pair_folders
    from alphavae.eval.runner import evaluate_vae
    from alphavae.vae import RGBAVAE

    device = _guard(args, [args.data])
    plan = pair_folders(args.data)
    protocol = _protocol(args)
    vae = RGBAVAE.from_pretrained(args.vae, dtype=args.dtype, device=device, tile_size=args.tile_size)
    source = None
    if args.source_vae is not None:
        from alphavae.convert import load_autoencoder
        from alphavae.eval.runner import check_source_vae

        source = load_autoencoder(args.source_vae)
        check_source_vae(vae, source, name=f"--source-vae {args.source_vae}")
        source = source.to(device)
    result = evaluate_vae(vae, args.data, protocol, _networks(args, device), source=source, worst_k=args.worst_k,
                          plan=plan, min_side=args.min_side, progress=not args.quiet)
    return _finish(args, result)


@_reporting_errors
def run_eval_t2i(args: argparse.Namespace) -> int:
    """``alphavae eval-t2i``: CLIP score, aesthetic and FID of generated RGBA images.

    Exit status: as :func:`run_eval` (0 all scored, 1 failed images or prompts without an image, 2 on errors);
    images without a prompt are not scored (listed as extra, a note).
    """
    from alphavae.eval.pairs import check_apart
    from alphavae.eval.runner import evaluate_t2i, read_prompts

    device = _guard(args, [args.pred, args.ref])
    if args.ref is not None:  # before the networks load (evaluate_t2i checks it too)
        check_apart(args.ref, args.pred, names=("reference folder", "generated-image folder"))
    prompts = read_prompts(args.prompts)
    report = evaluate_t2i(args.pred, prompts, _networks(args, device, clip=args.clip), ref_dir=args.ref,
                          progress=not args.quiet)
    if report is not None:  # the main process
        report["inputs"]["prompts"] = str(args.prompts)
    return _finish(args, report)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval``, ``eval-vae`` and ``eval-t2i`` subcommands."""
    p = subparsers.add_parser(
        "eval", help="ALPHA benchmark of predicted RGBA images against ground truth",
        description="Composite GT and prediction over 9 backgrounds (black, gray, white, red, green, blue, yellow, "
                    "cyan, magenta) and score PSNR (dB), SSIM, LPIPS, FID (per category and pooled), optional "
                    "aesthetic; clean protocol adds alpha metrics. Files pair by relative path minus extension; "
                    "trees dataset/subset/category/* or flat folders. Exit status 1 if any file failed, was "
                    "missing or was ambiguous (one name with several extensions).",
    )
    p.add_argument("--gt", required=True, type=path_value, help="ground-truth RGBA folder")
    p.add_argument("--pred", required=True, type=path_value,
                   help="prediction folder (same relative paths, any extension); it may not be, contain or lie in --gt")
    _add_common(p)
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser(
        "eval-vae", help="reconstruct a folder with an RGBA VAE and run the ALPHA benchmark on it",
        description="Reconstruct every image (posterior mode) and score it as `alphavae eval` does, without "
                    "writing reconstructions; with --source-vae also report latent drift (posterior-mean distance "
                    "to the source RGB VAE on opaque composites over black and white).",
    )
    p.add_argument("--vae", default=None, help="RGBA VAE folder (diffusers format, made by `alphavae convert`/training); "
                                               "default: the shipped model, alphavae-mini")
    p.add_argument("--data", required=True, type=path_value, help="folder of RGBA ground-truth images")
    p.add_argument("--source-vae", default=None, help="source RGB AutoencoderKL folder for the latent-drift metric")
    p.add_argument("--dtype", default="float32", choices=POLICY_NAMES,
                   help="VAE speed/precision policy, as for reconstruct: float32 (exact; default, so scores do not "
                        "depend on the hardware), auto, bfloat16 (the reference's), float16, mixed-bf16")
    p.add_argument("--tile-size", type=positive_int, default=None, metavar="PX", help="VAE tile size in px for large images (default: no tiling)")
    p.add_argument("--min-side", type=positive_int, default=None, metavar="PX",
                   help="reconstruct images with a side shorter than PX on a transparent PX canvas, as "
                        "`alphavae reconstruct --min-side` (recorded in the report; default: as they are)")
    _add_common(p)
    p.set_defaults(func=run_eval_vae)

    p = subparsers.add_parser(
        "eval-t2i", help="score generated RGBA images: CLIP score, aesthetic, FID against references",
        description="Composite each generated image over the 9 backgrounds; CLIP score (100 * cosine, "
                    "torchmetrics convention) against its prompt, optional LAION aesthetic, FID per background "
                    "against --ref images.",
    )
    p.add_argument("--pred", required=True, type=path_value, help="folder of generated RGBA images")
    p.add_argument("--prompts", required=True, type=path_value,
                   help="JSON {key: prompt} or JSON Lines {\"key\": ..., \"prompt\": ...} (a .jsonl file is "
                        "always JSON Lines; \"file\" may replace \"key\", its image suffix is dropped); key = "
                        "relative path minus extension, used as given (robot.v2 is robot.v2.png); a key given "
                        "twice, an empty key and a prompt that is not a non-empty string (null, \"\") are errors. "
                        "generate's generations.jsonl works as it is (its contact_sheet.png is then an image without a "
                        "prompt). Only images with a prompt are scored (others are listed as extra, with a note); a "
                        "prompt without an image is a problem (exit 1)")
    p.add_argument("--ref", default=None, type=Path,
                   help="reference RGBA images for FID (unpaired); may not be, contain or lie in --pred")
    p.add_argument("--clip", required=True, help="local CLIP model folder (transformers CLIPModel + CLIPProcessor)")
    _add_common(p, paired=False)
    p.set_defaults(func=run_eval_t2i, lpips="none")  # it scores no image pairs, so it has no LPIPS
