"""Batch reconstruction of image files through an ``RGBAVAE`` (the ``alphavae reconstruct`` command).

Inputs are files and folders (walked recursively by ``alphavae.io.list_images``); each image is
loaded as straight RGBA (``alphavae.io.load_rgba``), encoded and decoded at its exact size, and
written as a 4-channel 8-bit PNG at the same relative path under the output folder. Bad inputs
(missing paths, devices, folders without images, unreadable images) are recorded and skipped;
existing outputs are kept unless ``overwrite``; writes are atomic; the output folder may not lie
inside an input folder, and an output never replaces an input file.
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
    PREVIEW_BACKGROUNDS,
    ImageLoadError,
    check_output_outside_inputs,
    composite,
    labelled_sheet,
    list_images_reporting,
    load_rgba,
    save_rgba,
)
from alphavae.vae import RGBAVAE


@dataclasses.dataclass
class ReconstructReport:
    """Outcome of ``reconstruct_files``.

    Attributes:
        written: output PNG paths written.
        skipped: output paths that already existed (left untouched).
        failed: ``(input path, reason)`` for every input (file or folder given) that could not be
            processed.
        grids_failed: ``(grid path, reason)`` for comparison grids that could not be made; the
            reconstruction itself is in ``written`` or ``skipped``.
    """

    written: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[Path] = dataclasses.field(default_factory=list)
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    grids_failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if nothing failed (neither an input nor a grid)."""
        return not self.failed and not self.grids_failed

    def summary(self) -> str:
        """Human-readable counts, followed by one line per failure (file: reason)."""
        counts = f"{len(self.written)} written, {len(self.skipped)} skipped (exist), {len(self.failed)} failed"
        if self.grids_failed:
            counts += f", {len(self.grids_failed)} grid(s) failed"
        lines = [counts]
        lines += [f"  FAILED {path}: {reason}" for path, reason in self.failed]
        lines += [f"  GRID FAILED {path}: {reason}" for path, reason in self.grids_failed]
        return "\n".join(lines)


def comparison_grid(original: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Labelled side-by-side comparison: rows input / reconstruction, columns over checkerboard, black, white.

    Args:
        original, reconstruction: ``(4, H, W)`` straight RGBA in [-1, 1], same size.
    Returns:
        ``(4, H', W')`` opaque RGBA in [-1, 1] (alpha = 1), ``H' >= 2H`` and ``W' >= 3W``: the six
        composites under their background names, with the row names on the left
        (``alphavae.io.sheets.labelled_sheet``).
    """
    panels = torch.stack([torch.stack([composite(image, name) for name in PREVIEW_BACKGROUNDS])
                          for image in (original, reconstruction)])
    return labelled_sheet(panels, ["input", "reconstruction"], PREVIEW_BACKGROUNDS)


def _grid_path(grid_dir: Path, target: Path, output_dir: Path) -> Path:
    """Where the comparison grid of output ``target`` goes."""
    return grid_dir / target.relative_to(output_dir).with_suffix(".grid.png")


def _write_grid(original: torch.Tensor, reconstruction: torch.Tensor, grid_path: Path,
                report: ReconstructReport) -> None:
    """Write one comparison grid (replacing an old one); a failure goes to ``report.grids_failed``."""
    try:
        save_rgba(comparison_grid(original, reconstruction), grid_path, overwrite=True)
    except (OSError, ValueError) as err:
        report.grids_failed.append((grid_path, f"cannot write grid: {err}"))


def _grid_for_existing(path: Path, target: Path, grid_path: Path, *, max_pixels: int | None,
                       report: ReconstructReport) -> None:
    """Make a missing grid from the input and its already existing output (no model call)."""
    try:
        original = load_rgba(path, max_pixels=max_pixels)
        reconstruction = load_rgba(target, max_pixels=None)
    except ImageLoadError as err:
        report.grids_failed.append((grid_path, f"cannot make grid for existing {target}: {err}"))
        return
    if original.shape != reconstruction.shape:
        reason = (f"cannot make grid: existing {target} is {tuple(reconstruction.shape[1:])}, "
                  f"input {path} is {tuple(original.shape[1:])} (H, W)")
        report.grids_failed.append((grid_path, reason))
        return
    _write_grid(original, reconstruction, grid_path, report)


def _write(vae: RGBAVAE, batch: list[tuple[Path, Path, torch.Tensor]], output_dir: Path, *, overwrite: bool,
           grid_dir: Path | None, report: ReconstructReport) -> None:
    """Reconstruct a batch of loaded images and write them (and their grids), recording the outcome.

    If the batch fails as a whole, its images are retried one at a time, so one image the model
    cannot process fails alone. A grid that cannot be written is recorded in ``report.grids_failed``;
    its reconstruction still counts as written.
    """
    try:
        outputs = vae.reconstruct_images([pixels for _, _, pixels in batch], batch_size=len(batch))
    except (RuntimeError, ValueError) as err:
        if len(batch) > 1:
            for item in batch:
                _write(vae, [item], output_dir, overwrite=overwrite, grid_dir=grid_dir, report=report)
        else:
            report.failed.append((batch[0][0], f"reconstruction failed: {err}"))
        return
    for (path, target, pixels), output in zip(batch, outputs):
        try:
            save_rgba(output.cpu(), target, overwrite=overwrite)
        except (OSError, ValueError) as err:
            report.failed.append((path, f"cannot write output: {err}"))
            continue
        report.written.append(target)
        if grid_dir is not None:
            _write_grid(pixels, output.cpu(), _grid_path(grid_dir, target, output_dir), report)


def reconstruct_files(inputs: str | os.PathLike | Iterable[str | os.PathLike], output_dir: str | os.PathLike, *,
                      vae: RGBAVAE, batch_size: int = 1, overwrite: bool = False,
                      grid_dir: str | os.PathLike | None = None,
                      progress: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ReconstructReport:
    """Reconstruct every image of ``inputs`` through ``vae`` into ``output_dir``.

    Each input ``<folder>/<rel>.<ext>`` becomes ``output_dir/<rel>.png`` (a file given directly:
    ``output_dir/<name>.png``): 4-channel 8-bit straight RGBA, exactly the input size (posterior
    mode, padded/cropped by ``RGBAVAE.reconstruct``). With ``grid_dir``, also
    ``grid_dir/<rel>.grid.png`` (see ``comparison_grid``), kept apart so ``output_dir`` holds only
    reconstructions (it can be scored with ``alphavae eval`` as is). An output that already exists
    is skipped, but its missing grid is made (from the input and that output, no model call).

    Args:
        inputs: image files and/or folders (folders are walked recursively).
        output_dir: where outputs go; must not be inside an input folder (next to an input file is
            fine; an output never replaces an input file).
        vae: the model (its dtype, device and tiling settings are used).
        batch_size: up to this many loaded images are reconstructed per model call (same-size
            images share a batch; a failed batch is retried image by image).
        overwrite: replace existing outputs; otherwise they are skipped (not even loaded).
        grid_dir: folder for comparison grids (None: no grids); same placement rule as ``output_dir``.
        progress: show a tqdm progress bar (images, with ETA) on stderr.
        max_pixels: largest accepted width * height per input (``alphavae.io.load_rgba``).
    Returns:
        A ``ReconstructReport``; missing inputs, inputs that are neither regular files nor folders
        (devices, FIFOs), folders without images, unreadable images, name collisions (``a.jpg`` and
        ``a.png`` in one folder), outputs that would replace an input file, output paths taken by a
        folder, and failed reconstructions/writes are in ``failed``; failed grids in
        ``grids_failed``; the rest continue.
    Raises:
        ValueError: ``output_dir`` or ``grid_dir`` inside an input folder,
            ``output_dir`` an existing non-folder, or ``batch_size`` < 1.
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
    items, report.failed = list_images_reporting(inputs)
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
        if target.is_dir():
            report.failed.append((path, f"output path {target} is a directory"))
            continue
        if target.exists() and not overwrite:
            report.skipped.append(target)
            grid_path = None if grid_dir is None else _grid_path(grid_dir, target, output_dir)
            if grid_path is not None and not grid_path.is_file():
                _grid_for_existing(path, target, grid_path, max_pixels=max_pixels, report=report)
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
