"""``alphavae latent-factors``: fit a VAE's diffusion scaling/shift factors to images. Logic:
``alphavae.vae.fit_latent_factors``."""

from __future__ import annotations

import argparse
import json
import stat
import sys
from pathlib import Path

from alphavae.cli import choose_images, load_skipping, path_text, positive_int, report_skipped, seed
from alphavae.io import DEFAULT_MAX_PIXELS, atomic_write_text

FEW_IMAGES = 16  # fewer fitted images are not representative: a warning, and --write needs --force


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``latent-factors`` subcommand."""
    parser = subparsers.add_parser(
        "latent-factors",
        help="fit scaling_factor / shift_factor of an RGBA VAE to images (unit-variance diffusion latents)",
        description="Encode images (posterior samples) and print shift_factor = latent mean and scaling_factor "
                    "= 1 / latent std, the convention of SD3/FLUX VAE configs; with --write, store them in the "
                    "VAE folder's config.json (atomic rewrite; the old values are printed as old -> new). "
                    "Unreadable images, missing inputs and folders without images are skipped and listed, and "
                    "then --write leaves config.json unchanged; "
                    "--write refuses the model shipped with alphavae (copy it first) and a read-only config.json; "
                    f"a fit on fewer than {FEW_IMAGES} images prints a warning and is written only with --force "
                    "(use a few hundred images of the target data). A VAE whose config.json sets per-channel "
                    "latents_mean/latents_std (SDXL-style) is refused, with or without --write: its diffusion "
                    "latents are normalised by those, not by these factors.",
    )
    parser.add_argument("vae", metavar="VAE", type=path_text, help="RGBA VAE folder in diffusers format")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", type=path_text, help="image files or folders (recursive)")
    parser.add_argument("--limit", type=positive_int, default=512, metavar="N",
                        help="use at most N images, a seeded random subset (default 512)")
    parser.add_argument("--seed", type=seed, default=0, help="subset and posterior-sample seed (default 0)")
    parser.add_argument("--write", action="store_true",
                        help="write the factors into VAE/config.json (only if every input loaded)")
    parser.add_argument("--force", action="store_true",
                        help=f"with --write, also write a fit on fewer than {FEW_IMAGES} images")
    parser.add_argument("--no-shift", action="store_true",
                        help="fit only scaling_factor = 1 / RMS with shift_factor 0 (SD1.x/SDXL-style pipelines "
                             "ignore shift_factor); default: shift = mean, scale = 1 / std")
    parser.add_argument("--device", default="cpu",
                        help="torch device for the VAE, e.g. cuda or cuda:1 (default: %(default)s)")
    parser.add_argument("--tile-size", type=positive_int, default=None, metavar="N",
                        help="encode in N x N pixel tiles (exact mode, see `alphavae reconstruct --help`) to bound "
                             "memory on large images; default: whole images")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"largest accepted width*height of an input, in pixels (default {DEFAULT_MAX_PIXELS})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fit the factors; print them as JSON (and write them with --write); 1 if any input failed or --write
    was refused, 2 on an error that ended the command. Skipped inputs are listed even when none could be used; the
    factors are printed before --write touches the config, so a failed write does not lose them. --write leaves
    config.json unchanged (and says so) on any error, when any input failed, or (without --force) when fewer
    than FEW_IMAGES were fitted. A config with per-channel latents_mean/latents_std is an error (2) before any image
    is encoded (``fit_latent_factors``), so --write never adds scalar factors to one."""
    import torch

    from alphavae.eval.report import counted
    from alphavae.vae import RGBAVAE, fit_latent_factors

    prog = "alphavae latent-factors"
    failed: list[str] = []
    images = bad_inputs = 0
    try:
        if args.write:
            _check_config_writable(Path(args.vae) / "config.json", args.vae)
        vae = RGBAVAE.from_pretrained(args.vae, dtype="float32", device=args.device, tile_size=args.tile_size)
        paths = choose_images(args.inputs, args.limit, args.seed, failed)
        images, bad_inputs = len(paths), len(failed)  # failed holds the bad inputs only, so far
        factors = fit_latent_factors(vae, load_skipping(paths, args.max_pixels, failed), shift=not args.no_shift,
                                     generator=torch.Generator().manual_seed(args.seed))
        print(json.dumps(factors), flush=True)
        if factors["images"] < FEW_IMAGES:
            print(f"{prog}: warning: fitted on only {counted(factors['images'], 'image')}; factors from fewer than "
                  f"{FEW_IMAGES} images describe those images, not the data a diffusion model will see",
                  file=sys.stderr)
        error, status = _write_refusal(args, failed, factors["images"]), 1  # refused: the fit itself worked
        if args.write and not error:
            _write_factors(Path(args.vae) / "config.json", factors)
    except (OSError, ValueError) as err:
        error, status = str(err), 2
    report_skipped(prog, failed, images, bad_inputs)
    if error:
        unchanged = f"; {Path(args.vae) / 'config.json'} was left unchanged" if args.write else ""
        print(f"{prog}: {'refused' if status == 1 else 'error'}: {error}{unchanged}", file=sys.stderr)
        return status
    return 1 if failed else 0


def _check_config_writable(config: Path, vae: str) -> None:
    """Refuse ``--write`` before any work: into the shipped model (also through a symlinked config.json),
    a read-only config.json, or a folder where no file can be created (read-only file system).

    Raises:
        ValueError, OSError: one line naming the file or folder.
    """
    from alphavae.convert import check_not_shipped
    from alphavae.io import check_writable_folder

    check_not_shipped(vae, "writing factors into")
    check_not_shipped(config.resolve().parent, f"writing factors (through the symlink {config}) into")
    if config.is_file() and not config.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise ValueError(f"{config} is read-only; make it writable (chmod u+w) to update its factors")
    check_writable_folder(config.resolve().parent, "config.json")


def _write_refusal(args: argparse.Namespace, failed: list[str], fitted: int) -> str | None:
    """Why ``--write`` must not write this fit (None: write it, or no ``--write``)."""
    from alphavae.eval.report import counted

    if not args.write:
        return None
    if failed:
        return "not writing factors fitted without the inputs that failed"
    if fitted < FEW_IMAGES and not args.force:
        return (f"not writing factors fitted on only {counted(fitted, 'image')} (fewer than {FEW_IMAGES}); "
                "pass --force to write them anyway")
    return None


def _write_factors(config_path: Path, factors: dict) -> None:
    """Store ``factors``' scaling_factor and shift_factor in ``config_path`` (atomic rewrite of the file a
    symlink points to, its permissions kept), then print ``old -> new`` for each on stderr, so the old values
    can be restored.

    Raises:
        OSError: the config cannot be read or written. ValueError: it is not valid JSON.
    """
    config_path = config_path.resolve()  # a symlinked config.json is updated where it points, the link kept
    config = json.loads(config_path.read_text())
    old = {key: config.get(key) for key in ("scaling_factor", "shift_factor")}
    config.update({key: factors[key] for key in old})
    mode = stat.S_IMODE(config_path.stat().st_mode)
    try:
        atomic_write_text(config_path, json.dumps(config, indent=2) + "\n", overwrite=True)
    except OSError as err:
        raise OSError(f"{config_path}: cannot write ({err.strerror or err})") from err
    config_path.chmod(mode)  # keep the file's permissions (atomic_write_text gives new files the default ones)
    for key, value in old.items():
        print(f"{config_path}: {key} {value} -> {factors[key]}", file=sys.stderr)
