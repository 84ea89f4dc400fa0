"""Command-line interface: argument parsing only; every subcommand calls one public API function.

Each module named in ``COMMANDS`` defines ``register(subparsers)``, which adds its subcommand(s)
and sets ``func`` (a callable taking the parsed namespace and returning an exit status, ``EXIT_STATUS``).
Options must be spelled out: argparse's prefix matching (``--over`` for ``--overwrite``) is off.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import sys
import typing
import warnings
from pathlib import Path

COMMANDS: tuple[str, ...] = ("convert", "reconstruct", "latent_factors", "data", "eval", "diffusion", "train_vae",
                             "background_moments")


#: The exit statuses every subcommand keeps to (shown by ``alphavae --help``).
EXIT_STATUS = ("exit status: 0 done (outputs that already exist are skipped where a command's --help says so); "
               "1 done, but some inputs failed or were refused (each listed on stderr), or a run stopped early on a "
               "full disk; 2 an error ended the command (one 'error:' line: a bad argument or setting, no image "
               "file in any input, an output a command will not replace without --overwrite, a model that does not "
               "load, a training run aborted on non-finite losses); 130 interrupted (Ctrl-C). Files already "
               "written are complete and kept in every case.")


class _Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` without prefix matching of long options (``--over`` is not ``--overwrite``:
    an abbreviation that means one option today could mean another after an option is added). Subcommand parsers
    are of the same class. An ``epilog`` may be a callable returning the text, called the first time the help is
    formatted: help made from the model code (:func:`config_keys`) then costs nothing until ``--help``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        """argparse's help text, a callable ``epilog`` replaced by its text first."""
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def path_text(text: str) -> str:
    """argparse ``type`` for file and folder paths: the text as given, but an empty path (an unset shell variable
    in ``-o "$OUT"``, which the OS would take as the current folder) is an argparse error (exit status 2).

    Raises:
        argparse.ArgumentTypeError: ``text`` is empty.
    """
    if not text:
        raise argparse.ArgumentTypeError("empty path (an unset variable?); give a file or folder, '.' for the "
                                         "current folder")
    return text


def path_value(text: str) -> Path:
    """:func:`path_text` as a ``pathlib.Path``."""
    return Path(path_text(text))


def positive_int(text: str) -> int:
    """argparse ``type`` for counts and sizes: an integer >= 1, else an argparse error (exit status 2)
    naming the value, before any model or data is loaded. Raises ``argparse.ArgumentTypeError``."""
    return _int_in_range(text, 1)


def non_negative_int(text: str) -> int:
    """argparse ``type`` for overlaps and thresholds: an integer >= 0, else an argparse error
    (``argparse.ArgumentTypeError`` naming the value)."""
    return _int_in_range(text, 0)


def seed(text: str) -> int:
    """argparse ``type`` for random seeds: an integer in [0, 2**64 - 1] (what ``torch.Generator.manual_seed``
    accepts), else an argparse error (``argparse.ArgumentTypeError`` naming the value)."""
    return _int_in_range(text, 0, highest=2**64 - 1)


def finite_float(text: str) -> float:
    """argparse ``type`` for strengths and guidance values: a finite number (not nan or inf), else an
    argparse error naming the value (``argparse.ArgumentTypeError``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _int_in_range(text: str, lowest: int, *, highest: int | None = None) -> int:
    """``int(text)`` if it is in [``lowest``, ``highest``]; else ``argparse.ArgumentTypeError`` naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"{value} is below {lowest}")
    if highest is not None and value > highest:
        raise argparse.ArgumentTypeError(f"{value} is above {highest}")
    return value


def config_keys(cls) -> str:
    """The settings a YAML config of dataclass ``cls`` takes, for ``--help``, read from the class so the list
    cannot drift from it: its field names, then ``"<section>: <field names>"`` for each field that is itself a
    dataclass (a section, one level deep, as ``alphavae.train.config.build_dataclass`` reads them); groups
    separated by ``"; "``, names in declaration order (``dataclasses.fields``).

    Args:
        cls: a config dataclass, e.g. ``alphavae.train.TrainConfig``, ``alphavae.diffusion.train.LoraTrainConfig``.
    """
    hints = typing.get_type_hints(cls)
    names = [field.name for field in dataclasses.fields(cls)]
    sections = [name for name in names if dataclasses.is_dataclass(hints[name])]
    groups = [", ".join(name for name in names if name not in sections)]
    groups += [f"{name}: {', '.join(field.name for field in dataclasses.fields(hints[name]))}" for name in sections]
    return "; ".join(groups)


def list_inputs(inputs: list[str]) -> tuple[list, list]:
    """The image files of ``inputs``, each folder walked once (``alphavae.io.list_images_reporting``):
    ``(images, bad inputs)``, ``images`` as ``(path, relative path)`` pairs, ``bad inputs`` as ``(input as given,
    reason)`` for a missing path, folder without images, device or FIFO (in input order).

    Raises:
        ValueError: no image file in any input (names each bad input).
    """
    from alphavae.io import list_images_reporting

    images, bad_inputs = list_images_reporting(inputs)
    if not images:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in bad_inputs)
        raise ValueError(f"no images ({reasons})" if reasons else "no images")
    return images, bad_inputs


def choose_images(inputs: list[str], limit: int | None, seed: int, failed: list[str]) -> list:
    """The image files of ``inputs`` (``list_inputs``), sorted; at most ``limit`` of them, a random subset drawn
    with ``seed`` (``None`` = all). Each bad input is skipped and its one-line ``"<path>: <reason>"`` appended to
    ``failed``.

    Raises:
        ValueError: as ``list_inputs`` (``failed`` is left as it was).
    """
    import random

    images, bad_inputs = list_inputs(inputs)
    failed += [f"{path}: {reason}" for path, reason in bad_inputs]
    paths = [path for path, _ in images]
    return sorted(random.Random(seed).sample(paths, min(limit or len(paths), len(paths))))


def load_skipping(paths: list, max_pixels: int, failed: list[str]):
    """Yield ``alphavae.io.load_rgba`` of each path, ``(4, H, W)`` straight RGBA in [-1, 1]; an unreadable one
    is skipped and its one-line error appended to ``failed``."""
    from alphavae.io import ImageLoadError, load_rgba

    for path in paths:
        try:
            yield load_rgba(path, max_pixels=max_pixels)
        except ImageLoadError as err:
            failed.append(str(err))


def log_progress() -> None:
    """Send log records at INFO and above to stderr as ``LEVEL logger: message`` (the long-running commands:
    train-vae, train-lora, generate), with accelerate's loggers held at WARNING: accelerate logs about a dozen
    INFO lines per checkpoint save or load (``accelerate.checkpointing``, ``accelerate.accelerator``: every file
    written or read), which would bury the run's own messages; its warnings and errors still show. Library:
    ``logging.basicConfig``; accelerate's loggers are children of ``logging.getLogger("accelerate")``."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)


def interruption_note(run_dir: str) -> str:
    """How to continue a run interrupted by Ctrl-C, in one line: its newest complete checkpoint."""
    from alphavae.train import list_checkpoints

    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return "interrupted before the first checkpoint: rerun the same command to start again"
    newest = checkpoints[-1]
    return (f"interrupted; the newest complete checkpoint is step {int(newest.name.removeprefix('step-'))} "
            f"({newest}): rerun with --resume latest to continue from it")


def report_skipped(prog: str, failed: list[str], images: int, bad_inputs: int) -> None:
    """Print ``<prog>: skipped: <error>`` for each skipped input (kept to one line: ``alphavae.io.single_line``),
    then the count on stderr (nothing when none): ``"<N> of <M> inputs failed (<b> input paths unusable, <u> of
    <images> images not loaded)"`` (a part that is zero left out), the inputs being the images found plus the
    input paths that gave none (missing, not a file or folder, no images), so a folder of 10 images and a
    missing file are 11 inputs.

    Args:
        prog: the command, e.g. ``"alphavae background-moments"``.
        failed: one line per skipped input: the ``bad_inputs`` unusable input paths, then the images not loaded.
        images: images found in the usable input paths (those chosen, with ``--limit``).
        bad_inputs: how many of ``failed`` are unusable input paths.
    """
    from alphavae.io import single_line

    for message in failed:
        print(single_line(f"{prog}: skipped: {message}"), file=sys.stderr)
    if not failed:
        return
    not_loaded = len(failed) - bad_inputs
    kinds = [f"{bad_inputs} input path{'s' * (bad_inputs != 1)} unusable"] if bad_inputs else []
    kinds += [f"{not_loaded} of {images} image{'s' * (images != 1)} not loaded"] if not_loaded else []
    print(f"{prog}: {len(failed)} of {images + bad_inputs} inputs failed ({', '.join(kinds)})", file=sys.stderr)


#: huggingface_hub warns on every model-id download that diffusers passes arguments it has deprecated; nothing a
#: user can act on, so not shown.
_HUB_DEPRECATIONS = r"The `(local_dir_use_symlinks|resume_download|force_filename)` argument is deprecated and ignored"


def _whole_lines(stream) -> None:
    """Make ``stream`` (stderr) hand each line to the OS in one write. Python's stderr writes through, so ``print``
    writes the text and its newline apart, and the processes of a multi-process run (``accelerate launch``,
    ``torchrun``) sharing one stderr ran their lines together ("...vanishedalphavae train-vae: error: ...").
    Streams that cannot be reconfigured (not a ``TextIOWrapper``) are left as they are."""
    if callable(getattr(stream, "reconfigure", None)):
        stream.reconfigure(write_through=False, line_buffering=True)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``alphavae`` parser with every subcommand registered."""
    from alphavae import __version__

    parser = _Parser(
        prog="alphavae",
        description="Transparent (RGBA) latent diffusion toolkit (AlphaVAE, arXiv 2507.09308).",
        epilog=EXIT_STATUS,
    )
    parser.add_argument("--version", action="version", version=f"alphavae {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"alphavae.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``alphavae`` console script; returns the process exit status.

    Python warnings raised by the command (``UserWarning``: first frame of an animation used, 16-bit image read
    at 8 bits, metric skipped, ...) are printed as one line each, ``alphavae <command>: warning: <message>``,
    without Python's file and source line. Ctrl-C (KeyboardInterrupt) ends a command with one line and exit
    status 130; commands that write files catch it earlier and say what was kept."""
    prog = "alphavae"
    _whole_lines(sys.stderr)
    try:
        parser = build_parser()  # imports torch: seconds in which Ctrl-C is likely too
        args, unknown = parser.parse_known_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        prog = " ".join(["alphavae", args.command] + ([args.data_command] if "data_command" in args else []))
        if unknown:  # argparse would show the top-level usage; name the command's help instead
            print(f"{prog}: error: unrecognized arguments: {' '.join(unknown)} (see {prog} --help)", file=sys.stderr)
            return 2

        def one_line(message, category, filename, lineno, file=None, line=None) -> None:
            from tqdm import tqdm

            tqdm.write(f"{prog}: warning: {message}", file=sys.stderr)  # on its own line, above any progress bar

        with warnings.catch_warnings():
            warnings.simplefilter("default", UserWarning)  # each distinct warning once, even where filters hide it
            warnings.filterwarnings("ignore", message=_HUB_DEPRECATIONS)
            warnings.showwarning = one_line
            return int(args.func(args) or 0)
    except KeyboardInterrupt:  # commands that write say more themselves; this covers start-up and loading
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130

if __name__ == "__main__":
    sys.exit(main())
