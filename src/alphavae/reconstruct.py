"""Batch reconstruction of image files through an ``RGBAVAE`` (the ``alphavae reconstruct`` command).

Inputs are files and folders (walked recursively by ``alphavae.io.list_images``); each image is
loaded as straight RGBA (``alphavae.io.load_rgba``), encoded and decoded at its exact size, and
written as a 4-channel 8-bit PNG at the same relative path under the output folder. Bad inputs are
recorded and skipped; existing outputs are kept unless ``overwrite``; writes are atomic; the
output folder may not lie inside an input folder.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from alphavae.io import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    check_output_outside_inputs,
    composite,
    list_images,
    load_rgba,
    save_rgba,
)
from alphavae.vae import RGBAVAE

GRID_BACKGROUNDS = ("checkerboard", "black", "white")
"""Backgrounds of the grid columns (``alphavae.io.composite`` names)."""


@dataclasses.dataclass
class ReconstructReport:
    """Outcome of ``reconstruct_files``.

    Attributes:
        written: output PNG paths written.
        skipped: output paths that already existed (left untouched).
        failed: ``(input path, reason)`` for every input that could not be processed.
    """

    written: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[Path] = dataclasses.field(default_factory=list)
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """Human-readable counts, followed by one line per failure (file: reason)."""
        lines = [f"{len(self.written)} written, {len(self.skipped)} skipped (exist), {len(self.failed)} failed"]
        lines += [f"  FAILED {path}: {reason}" for path, reason in self.failed]
        return "\n".join(lines)


def comparison_grid(original: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Side-by-side comparison: rows original / reconstruction, columns over checkerboard, black, white.

    Args:
        original, reconstruction: ``(4, H, W)`` straight RGBA in [-1, 1], same size.
    Returns:
        ``(4, 2H, 3W)`` opaque RGBA in [-1, 1] (alpha = 1).
    """
    rows = [torch.cat([composite(image, name) for name in GRID_BACKGROUNDS], dim=-1)
            for image in (original, reconstruction)]
    grid = torch.cat(rows, dim=-2)
    return torch.cat([grid, torch.ones_like(grid[:1])])


def _write(vae: RGBAVAE, batch: list[tuple[Path, Path, torch.Tensor]], output_dir: Path, *, overwrite: bool,
           grid_dir: Path | None, report: ReconstructReport) -> None:
    """Reconstruct a batch of loaded images and write them (and their grids), recording the outcome."""
    try:
        outputs = vae.reconstruct_images([pixels for _, _, pixels in batch], batch_size=len(batch))
    except (RuntimeError, ValueError) as err:
        report.failed += [(path, f"reconstruction failed: {err}") for path, _, _ in batch]
        return
    for (path, target, pixels), output in zip(batch, outputs):
        try:
            save_rgba(output.cpu(), target, overwrite=overwrite)
            if grid_dir is not None:
                grid_path = grid_dir / target.relative_to(output_dir).with_suffix(".grid.png")
                save_rgba(comparison_grid(pixels, output.cpu()), grid_path, overwrite=True)
        except (OSError, ValueError) as err:
            report.failed.append((path, f"cannot write output: {err}"))
            continue
        report.written.append(target)


def reconstruct_files(inputs: str | os.PathLike | Iterable[str | os.PathLike], output_dir: str | os.PathLike, *,
                      vae: RGBAVAE, batch_size: int = 1, overwrite: bool = False,
                      grid_dir: str | os.PathLike | None = None,
                      progress: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ReconstructReport:
    """Reconstruct every image of ``inputs`` through ``vae`` into ``output_dir``.

    Each input ``<folder>/<rel>.<ext>`` becomes ``output_dir/<rel>.png`` (a file given directly:
    ``output_dir/<name>.png``): 4-channel 8-bit straight RGBA, exactly the input size (posterior
    mode, padded/cropped by ``RGBAVAE.reconstruct``). With ``grid_dir``, also
    ``grid_dir/<rel>.grid.png`` (see ``comparison_grid``), kept apart so ``output_dir`` holds only
    reconstructions (it can be scored with ``alphavae eval`` as is).

    Args:
        inputs: image files and/or folders (folders are walked recursively).
        output_dir: where outputs go; must not be inside an input folder.
        vae: the model (its dtype, device and tiling settings are used).
        batch_size: up to this many loaded images are reconstructed per model call (same-size
            images share a batch).
        overwrite: replace existing outputs; otherwise they are skipped (not even loaded).
        grid_dir: folder for comparison grids (None: no grids); must not be inside an input folder.
        progress: show a tqdm progress bar (images, with ETA) on stderr.
        max_pixels: largest accepted width * height per input (``alphavae.io.load_rgba``).
    Returns:
        A ``ReconstructReport``; unreadable inputs, name collisions (``a.jpg`` and ``a.png`` in one
        folder), outputs that would replace an input file (``a.png -o .``) and failed
        reconstructions/writes are in ``failed``, the rest continue.
    Raises:
        ValueError: ``output_dir`` or ``grid_dir`` inside an input folder, ``output_dir`` an existing
            non-folder, or ``batch_size`` < 1.
        FileNotFoundError: an input does not exist.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output {output_dir} exists and is not a folder")
    check_output_outside_inputs(output_dir, inputs)
    if grid_dir is not None:
        grid_dir = Path(grid_dir)
        check_output_outside_inputs(grid_dir, inputs)
    report = ReconstructReport()
    claimed: dict[Path, Path] = {}
    batch: list[tuple[Path, Path, torch.Tensor]] = []
    items = list_images(inputs)
    sources = {path.resolve() for path, _ in items}
    for path, relative in tqdm(items, desc="reconstruct", unit="img", disable=not progress):
        target = output_dir / relative.with_suffix(".png")
        if target.resolve() in sources:
            report.failed.append((path, f"output {target} would overwrite its input; choose another output folder"))
            continue
        if target in claimed:
            report.failed.append((path, f"output {target} is already produced from {claimed[target]}"))
            continue
        claimed[target] = path
        if target.exists() and not overwrite:
            report.skipped.append(target)
            continue
        try:
            batch.append((path, target, load_rgba(path, max_pixels=max_pixels)))
        except ImageLoadError as err:
            report.failed.append((path, err.reason))
        if len(batch) >= batch_size:
            _write(vae, batch, output_dir, overwrite=overwrite, grid_dir=grid_dir, report=report)
            batch = []
    if batch:
        _write(vae, batch, output_dir, overwrite=overwrite, grid_dir=grid_dir, report=report)
    return report
