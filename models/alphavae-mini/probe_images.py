"""Test images for the model card's probe scripts (`translucent_images.py`, `error_split.py`,
`image_sizes.py`).

They take `TEST_SPLIT [VAE_DIR] [N]`: a folder with one subfolder per source (`alphavae data export ... --split
test -o RUNS/test-split`), the model (default the shipped alphavae-mini, loaded in float32) and the number of
images per source (the first N by path).
"""

import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from alphavae.io import list_images, load_rgba, resize_short_side
from alphavae.vae import RGBAVAE

SHORT_SIDE = 256
"""Probe images are resized to this short side in px (alpha-correct), the scale of the card's test-split metrics."""


def parse_args(default_count: int) -> tuple[Path, RGBAVAE, int]:
    """``(TEST_SPLIT, model, N)`` from ``sys.argv``; N defaults to ``default_count``."""
    vae = RGBAVAE.from_pretrained(sys.argv[2] if len(sys.argv) > 2 else None, dtype="float32")
    return Path(sys.argv[1]), vae, int(sys.argv[3]) if len(sys.argv) > 3 else default_count


def source_images(split: Path, count: int, short_side: int = SHORT_SIDE) -> Iterator[tuple[str, Iterator[torch.Tensor]]]:
    """Per source subfolder of ``split`` (sorted): its name and its first ``count`` images by path, each
    ``(4, H, W)`` straight RGBA in [-1, 1] resized to a ``short_side`` px short side."""
    for source in sorted(p for p in split.iterdir() if p.is_dir()):
        paths = sorted(list_images([source]))[:count]
        yield source.name, (resize_short_side(load_rgba(path), short_side) for path, _ in paths)
