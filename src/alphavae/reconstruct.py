"""Batch reconstruction of image files through an ``RGBAVAE`` (the ``alphavae reconstruct`` command).

Inputs are files and folders (walked recursively by ``alphavae.io.list_images``); each image is
loaded as straight RGBA (``alphavae.io.load_rgba``), encoded and decoded at its exact size, and
written as a 4-channel 8-bit PNG at the same relative path under the output folder. Bad inputs
(missing paths, devices, folders without images, unreadable images) are recorded and skipped;
existing outputs and grids are kept unless ``overwrite``; writes are atomic; the output and grid
folders are checked (placement, writability) before any model work; neither may lie inside an input
folder, they may not overlap each other, and no output or grid ever replaces an input file or lands
inside an input folder (e.g. when the output folder contains an input folder). A full disk stops the run.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from alphavae.io import (
    DEFAULT_MAX_PIXELS,
    PREVIEW_BACKGROUNDS,
    ImageLoadError,
    check_output_folder,
    check_output_outside_inputs,
    check_writable_folder,
    composite,
    folder_relation,
    labelled_sheet,
    list_images_reporting,
    load_rgba,
    save_rgba,
    single_line,
)
from alphavae.io.files import resolve_path
from alphavae.vae import RGBAVAE


@dataclasses.dataclass
class ReconstructReport:
    """Outcome of ``reconstruct_files``.

    Attributes:
        written: output PNG paths written.
        skipped: output paths that already existed (left untouched).
        failed: ``(input path, reason)`` for every input (file or folder given) that could not be
            processed: first the ``bad_inputs`` input paths that gave no image, then the images.
        bad_inputs: how many of ``failed`` are input paths that gave no image (missing, not a file or folder,
            folder without images).
        grids_written: comparison grid paths written.
        grids_skipped: grid paths that already existed (left untouched).
        grids_failed: ``(grid path, reason)`` for comparison grids that could not be made; the
            reconstruction itself is in ``written`` or ``skipped``.
        stopped: why the run stopped early (the disk or quota is full), or None.
        not_processed: inputs never tried because the run stopped.
    """

    written: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[Path] = dataclasses.field(default_factory=list)
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    grids_written: list[Path] = dataclasses.field(default_factory=list)
    grids_skipped: list[Path] = dataclasses.field(default_factory=list)
    grids_failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    stopped: str | None = None
    not_processed: list[Path] = dataclasses.field(default_factory=list)
    bad_inputs: int = 0

    @property
    def ok(self) -> bool:
        """True if nothing failed (neither an input nor a grid) and the run was not stopped."""
        return not self.failed and not self.grids_failed and self.stopped is None

    def summary(self) -> str:
        """Human-readable counts (failures split into input paths that gave no image and images, e.g. ``"3 failed
        (1 input path unusable, 2 images)"``; grids counted apart when there were any), then one line per failure
        (file: reason) and, if the run stopped early, why and how many inputs were not processed."""
        counts = f"{len(self.written)} written, {len(self.skipped)} skipped (exist), {len(self.failed)} failed"
        images = len(self.failed) - self.bad_inputs
        kinds = [f"{self.bad_inputs} input path{'s' * (self.bad_inputs != 1)} unusable"] if self.bad_inputs else []
        kinds += [f"{images} image{'s' * (images != 1)}"] if images else []
        counts += f" ({', '.join(kinds)})" if kinds else ""
        if self.grids_written or self.grids_skipped or self.grids_failed:
            counts += (f"; grids: {len(self.grids_written)} written, {len(self.grids_skipped)} skipped (exist), "
                       f"{len(self.grids_failed)} failed")
        lines = [counts]
        lines += [single_line(f"  FAILED {path}: {reason}") for path, reason in self.failed]
        lines += [single_line(f"  GRID FAILED {path}: {reason}") for path, reason in self.grids_failed]
        if self.stopped is not None:
            lines.append(f"  STOPPED: {self.stopped}; {len(self.not_processed)} more input(s) not processed "
                         "(a rerun skips the outputs written)")
        return "\n".join(lines)


@dataclasses.dataclass
class _Job:
    """Settings and bookkeeping of one ``reconstruct_files`` run."""

    vae: RGBAVAE
    output_dir: Path
    grid_dir: Path | None
    overwrite: bool
    max_pixels: int | None
    min_side: int | None
    sources: set[Path]
    input_dirs: list[Path]
    report: ReconstructReport
    claimed: dict[Path, Path] = dataclasses.field(default_factory=dict)


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


_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def _write_error(path: Path, err: Exception, report: ReconstructReport) -> str:
    """One-line reason naming ``path`` (not the hidden temporary file of ``atomic_write``); a full disk or
    quota also sets ``report.stopped``."""
    reason = getattr(err, "strerror", None) or str(err)
    if getattr(err, "errno", None) in _FULL_DISK and report.stopped is None:
        report.stopped = f"{reason.lower()} (writing {path})"
    return f"cannot write {path} ({reason})"


def _unusable(what: str, path: Path, err: OSError) -> str:
    """One-line reason why output or grid (``what``) ``path`` cannot even be examined: a name too long for the
    file system, a symlink loop, or another OSError."""
    if err.errno == errno.ENAMETOOLONG:
        return f"{what} name too long: {path}"
    if err.errno == errno.ELOOP:
        return f"{what} {path} is a symlink loop"
    return f"cannot use {what} {path} ({err.strerror or err})"


def _grid_path(job: _Job, target: Path) -> Path:
    """Where the comparison grid of output ``target`` goes."""
    return job.grid_dir / target.relative_to(job.output_dir).with_suffix(".grid.png")


def _grid_wanted(job: _Job, grid_path: Path) -> bool:
    """True if ``grid_path`` may be written; otherwise record why not (an input file, a folder, an existing
    grid without ``overwrite``, a name too long or a symlink loop)."""
    try:
        if resolve_path(grid_path) in job.sources:
            job.report.grids_failed.append((grid_path, "would overwrite an input file; choose another grid folder"))
        elif (folder := _input_dir_holding(job, grid_path)) is not None:
            job.report.grids_failed.append((grid_path, f"would land inside input folder {folder}; choose a grid "
                                                       "folder apart from the inputs"))
        elif grid_path.is_dir():
            job.report.grids_failed.append((grid_path, "grid path is a directory"))
        elif grid_path.exists() and not job.overwrite:
            job.report.grids_skipped.append(grid_path)
        else:
            return True
    except OSError as err:
        job.report.grids_failed.append((grid_path, _unusable("grid", grid_path, err)))
    return False


def _write_grid(job: _Job, original: torch.Tensor, reconstruction: torch.Tensor, grid_path: Path) -> None:
    """Write one comparison grid (replacing an old one only with ``overwrite``); the outcome goes to ``job.report``."""
    try:
        save_rgba(comparison_grid(original, reconstruction), grid_path, overwrite=job.overwrite)
    except (OSError, ValueError) as err:
        job.report.grids_failed.append((grid_path, _write_error(grid_path, err, job.report)))
        return
    job.report.grids_written.append(grid_path)


def _grid_for_existing(job: _Job, path: Path, target: Path) -> None:
    """Make the grid of an already existing output from the input and that output (no model call)."""
    grid_path = _grid_path(job, target)
    if not _grid_wanted(job, grid_path):
        return
    try:
        original = load_rgba(path, max_pixels=job.max_pixels)
        reconstruction = load_rgba(target, max_pixels=None)
    except ImageLoadError as err:
        job.report.grids_failed.append((grid_path, f"cannot make grid for existing {target}: {err}"))
        return
    if original.shape != reconstruction.shape:
        reason = (f"cannot make grid: existing {target} is {tuple(reconstruction.shape[1:])}, "
                  f"input {path} is {tuple(original.shape[1:])} (H, W)")
        job.report.grids_failed.append((grid_path, reason))
        return
    _write_grid(job, original, reconstruction, grid_path)


def _write(job: _Job, batch: list[tuple[Path, Path, torch.Tensor]]) -> None:
    """Reconstruct a batch of loaded images and write them (and their grids), recording the outcome.

    If the batch fails as a whole, its images are retried one at a time, so one image the model
    cannot process fails alone. A grid that cannot be written is recorded in ``report.grids_failed``;
    its reconstruction still counts as written. Once the run is stopped (full disk), the images not
    yet written go to ``report.not_processed``.
    """
    report = job.report
    if report.stopped is not None:
        report.not_processed += [path for path, _, _ in batch]
        return
    try:
        outputs = job.vae.reconstruct_images([pixels for _, _, pixels in batch], batch_size=len(batch),
                                             min_side=job.min_side)
    except (RuntimeError, ValueError) as err:
        if len(batch) > 1:
            for item in batch:
                _write(job, [item])
        else:
            report.failed.append((batch[0][0], f"reconstruction failed: {err}"))
        return
    for index, ((path, target, pixels), output) in enumerate(zip(batch, outputs)):
        try:
            save_rgba(output.cpu(), target, overwrite=job.overwrite)
        except FileExistsError:  # made meanwhile (e.g. by another run into this folder): kept, as one found before
            report.skipped.append(target)
        except (OSError, ValueError) as err:
            report.failed.append((path, _write_error(target, err, report)))
        else:
            report.written.append(target)
            grid_path = None if job.grid_dir is None else _grid_path(job, target)
            if grid_path is not None and _grid_wanted(job, grid_path):
                _write_grid(job, pixels, output.cpu(), grid_path)
        if report.stopped is not None:
            report.not_processed += [path for path, _, _ in batch[index + 1:]]
            return


def _input_dir_holding(job: _Job, path: Path) -> Path | None:
    """The input folder that ``path`` would land in (after resolving symlinks; e.g. an output folder that
    contains an input folder), or None. Raises OSError for a ``path`` that is a symlink loop."""
    resolved = resolve_path(path)
    return next((folder for folder in job.input_dirs if resolved.is_relative_to(folder)), None)


def _output_refusal(job: _Job, path: Path, target: Path) -> str | None:
    """Why input ``path`` cannot be written to ``target`` (None: it can)."""
    try:
        return _target_refusal(job, path, target)
    except OSError as err:
        return _unusable("output", target, err)


def _target_refusal(job: _Job, path: Path, target: Path) -> str | None:
    """``_output_refusal`` before OSError (a name too long, a symlink loop) is turned into a reason."""
    if resolve_path(target) in job.sources:
        return f"output {target} would overwrite its input; choose another output folder"
    if (folder := _input_dir_holding(job, target)) is not None:
        return f"output {target} would land inside input folder {folder}; choose an output folder apart from them"
    if target in job.claimed:
        first = job.claimed[target]
        if first.resolve() == path.resolve():
            return (f"the same file as {first}, given twice (through a symlink or overlapping inputs); "
                    f"its output {target} is made once")
        same = "same name with another extension" if first.name != path.name else \
            "same path inside another input folder"
        return f"output {target} is also the output of {first} ({same}); rename one of them"
    if target.is_dir():
        return f"output path {target} is a directory"
    return None


def _take(job: _Job, path: Path, target: Path) -> torch.Tensor | None:
    """Handle one input before the model: refuse it, skip its existing output, or load it.

    The output name is claimed (``job.claimed``) only by an input that is skipped or loaded, so an
    unreadable input reports its own error and does not block a same-named one.

    Returns:
        The loaded ``(4, H, W)`` straight RGBA in [-1, 1], or None when the input needs no model call.
    """
    refusal = _output_refusal(job, path, target)
    if refusal is not None:
        job.report.failed.append((path, refusal))
        return None
    if target.exists() and not job.overwrite:
        job.claimed[target] = path
        job.report.skipped.append(target)
        if job.grid_dir is not None:
            _grid_for_existing(job, path, target)
        return None
    try:
        pixels = load_rgba(path, max_pixels=job.max_pixels)
    except ImageLoadError as err:
        job.report.failed.append((path, err.reason))
        return None
    job.claimed[target] = path
    return pixels


def _check_listing(items: list[tuple[Path, Path]]) -> None:
    """Raise ValueError naming the first ``(path, relative path)`` of ``items`` whose relative path is empty,
    absolute or holds ``..``: its output ``output_dir / relative`` would land outside ``output_dir``."""
    for path, relative in items:
        parts = Path(relative).parts
        if not parts or Path(relative).is_absolute() or ".." in parts:
            raise ValueError(f"listing: {path} has the relative path {str(relative)!r}, which would write outside "
                             "the output folder; pass listing=alphavae.io.list_images_reporting(inputs), or None")


def check_destinations(inputs: str | os.PathLike | Iterable[str | os.PathLike], output_dir: str | os.PathLike,
                       grid_dir: str | os.PathLike | None = None) -> None:
    """Refuse, before any model work, output and grid folders that ``reconstruct_files`` must not or cannot use.

    Creates nothing (the write probe is removed again; ``alphavae.io.check_writable_folder``).

    Args:
        inputs: the input files and/or folders.
        output_dir: the output folder (need not exist).
        grid_dir: the comparison grid folder, or None.
    Raises:
        ValueError: ``output_dir`` an existing non-folder; ``output_dir`` or ``grid_dir`` equal to or
            inside an input folder; ``grid_dir`` equal to, inside or containing ``output_dir`` (a grid
            could replace a reconstruction, and the output folder holds reconstructions only).
        OSError: ``output_dir`` or ``grid_dir`` cannot be created or written to (names it).
    """
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    output_dir = Path(output_dir)
    check_output_folder(output_dir, inputs)
    check_writable_folder(output_dir, "outputs")
    if grid_dir is None:
        return
    check_output_outside_inputs(grid_dir, inputs, what="grid folder")
    relation = folder_relation(grid_dir, output_dir)
    if relation is not None:
        raise ValueError(f"grid folder {grid_dir} {relation} the output folder {output_dir}; "
                         "choose a grid folder apart from it (it holds reconstructions only)")
    check_writable_folder(grid_dir, "grids")


def reconstruct_files(inputs: str | os.PathLike | Iterable[str | os.PathLike], output_dir: str | os.PathLike, *,
                      vae: RGBAVAE, batch_size: int = 1, overwrite: bool = False,
                      grid_dir: str | os.PathLike | None = None,
                      progress: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                      min_side: int | None = None,
                      listing: tuple[list[tuple[Path, Path]], list[tuple[Path, str]]] | None = None
                      ) -> ReconstructReport:
    """Reconstruct every image of ``inputs`` through ``vae`` into ``output_dir``.

    Each input ``<folder>/<rel>.<ext>`` becomes ``output_dir/<rel>.png`` (a file given directly:
    ``output_dir/<name>.png``): 4-channel 8-bit straight RGBA, exactly the input size (posterior
    mode, padded/cropped by ``RGBAVAE.reconstruct``). With ``grid_dir``, also
    ``grid_dir/<rel>.grid.png`` (see ``comparison_grid``), kept apart so ``output_dir`` holds only
    reconstructions (it can be scored with ``alphavae eval`` as is). An output that already exists
    is skipped, but its missing grid is made (from the input and that output, no model call).
    Existing grids are skipped like existing outputs unless ``overwrite``. No output or grid ever
    replaces an input file. A full disk (or quota) stops the run at the first failed write: the
    remaining inputs are listed in ``not_processed``, the outputs written so far are complete.

    Args:
        inputs: image files and/or folders (folders are walked recursively).
        output_dir: where outputs go; must not be inside an input folder (next to an input file is
            fine; an output never replaces an input file).
        vae: the model (its dtype, device and tiling settings are used).
        batch_size: up to this many loaded images are reconstructed per model call (same-size
            images share a batch; a failed batch is retried image by image).
        overwrite: replace existing outputs and grids; otherwise they are skipped (the input of a skipped
            output gets no model call and is loaded only to make its missing grid).
        grid_dir: folder for comparison grids (None: no grids); same placement rule as
            ``output_dir``, and apart from it (neither inside the other).
        progress: show a tqdm progress bar (images, with ETA) on stderr.
        max_pixels: largest accepted width * height per input (``alphavae.io.load_rgba``).
        min_side: reconstruct sides shorter than this on a transparent canvas this long
            (``RGBAVAE.reconstruct``); None: as they are.
        listing: ``alphavae.io.list_images_reporting(inputs)`` if the caller has made it already (the command
            does, to refuse inputs without images before the model loads), so folders are walked once; None:
            listed here. Each relative path must be non-empty, relative and free of ``..`` (as that listing makes
            them), so no output lands outside ``output_dir``; that the listing matches ``inputs`` is not checked.
    Returns:
        A ``ReconstructReport``; missing inputs, inputs that are neither regular files nor folders
        (devices, FIFOs), folders without images, unreadable images, name collisions (``a.jpg`` and
        ``a.png`` in one folder: the second readable one fails; one file reached again through a symlinked
        input folder fails as given twice, its output made once), outputs that would replace an input
        file or land inside an input folder, output paths taken by a folder, inputs that are symlink loops,
        outputs that are symlink loops or whose names are too long for the file system, and failed
        reconstructions/writes (named by the final path) are in ``failed``; failed grids in
        ``grids_failed``; the rest continue.
    Raises:
        ValueError, OSError: as ``check_destinations`` (checked before anything is loaded);
            ValueError for ``batch_size`` < 1, and for a ``listing`` relative path that leaves ``output_dir``
            (names it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    check_destinations(inputs, output_dir, grid_dir)
    report = ReconstructReport()
    items, bad_inputs = list_images_reporting(inputs) if listing is None else listing
    if listing is not None:
        _check_listing(items)
    report.failed, report.bad_inputs = list(bad_inputs), len(bad_inputs)
    job = _Job(vae=vae, output_dir=Path(output_dir), grid_dir=None if grid_dir is None else Path(grid_dir),
               overwrite=overwrite, max_pixels=max_pixels, min_side=min_side,
               sources=set(),
               input_dirs=[Path(given).resolve() for given in inputs if Path(given).is_dir()], report=report)
    usable = []
    for path, relative in items:
        try:
            job.sources.add(resolve_path(path))
        except OSError:  # a symlink loop: nothing to load, and no output can replace it
            report.failed.append((path, "input is a symlink loop"))
        else:
            usable.append((path, relative))
    items = usable
    batch: list[tuple[Path, Path, torch.Tensor]] = []
    for index, (path, relative) in enumerate(tqdm(items, desc="reconstruct", unit="img", disable=not progress)):
        target = job.output_dir / relative.with_suffix(".png")
        pixels = _take(job, path, target)
        if pixels is not None:
            batch.append((path, target, pixels))
        if len(batch) >= batch_size:
            _write(job, batch)
            batch = []
        if report.stopped is not None:
            report.not_processed += [path for path, _ in items[index + 1:]]
            break
    if batch:
        _write(job, batch)
    return report
