"""``alphavae convert``: RGB diffusers VAE -> RGBA VAE (opaque initialisation). Logic: ``alphavae.convert``."""

from __future__ import annotations

import argparse
import json
import sys

from alphavae.accel import DTYPES
from alphavae.cli import path_text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help="convert an RGB AutoencoderKL to a 4-channel RGBA one (opaque initialisation)",
        description="Widen a pretrained RGB diffusers AutoencoderKL to RGBA (AlphaVAE, arXiv 2507.09308, "
                    "section 4.1): alpha input weights 0, alpha output bias +1. The result reproduces the "
                    "source's latents and RGB output (up to float32 rounding, at most 1e-3; often bit for bit) "
                    "and predicts alpha = 1 until fine-tuned; this "
                    "is checked before saving. Writes diffusers safetensors + alphavae_provenance.json.",
    )
    parser.add_argument("src", metavar="SRC", type=path_text,
                        help="local diffusers folder (config.json + diffusion_pytorch_model.safetensors), "
                             "or a model id (network access, or HF_HUB_OFFLINE=1 for one in the hub cache)")
    parser.add_argument("dst", metavar="DST", type=path_text,
                        help="output folder: new or empty unless --overwrite; not SRC, not inside SRC, not "
                             "containing SRC")
    parser.add_argument("--subfolder", default=None, help="subfolder of SRC holding the VAE, e.g. 'vae' "
                                                          "for a full pipeline folder (default: none)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="dtype of the saved weights (the conversion itself runs in float32; default float32)")
    parser.add_argument("--overwrite", action="store_true",
                        help="in an existing non-empty DST, replace the files the conversion writes (config.json, "
                             "the weights, alphavae_provenance.json); nothing else in DST is touched")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``convert_pretrained``; print the destination and invariant report.

    Returns 0, or 2 on failure (one ``alphavae convert: error:`` line on stderr; messages name the
    ``--overwrite`` flag where the library says ``overwrite=True``).
    """
    from alphavae.convert import OVERWRITE_HINT, PROVENANCE_FILE, convert_pretrained

    try:
        dst = convert_pretrained(args.src, args.dst, subfolder=args.subfolder, dtype=args.dtype,
                                 overwrite=args.overwrite)
    except (OSError, ValueError, AssertionError) as err:
        print(f"alphavae convert: error: {str(err).replace(OVERWRITE_HINT, '--overwrite')}", file=sys.stderr)
        return 2
    provenance = json.loads((dst / PROVENANCE_FILE).read_text())
    print(f"wrote RGBA VAE to {dst}")
    print(f"invariant: {json.dumps(provenance['invariant'])}")
    return 0
