"""Registry fetcher: download, verify, unpack, filter, dedupe and normalise real RGBA images.

Pipeline per source (see :mod:`alphavae.data.sources`): ``npm pack NAME@VER`` or ``apt-get download
NAME=VER`` into ``OUT/cache/downloads`` (skipped when the file exists with the expected sha256),
unpack once into ``OUT/cache/unpacked`` (tarfile for ``.tgz``, ``dpkg-deb -x`` for ``.deb``), list
the images, normalise each to an 8-bit straight-alpha PNG at most ``size`` pixels on the long side
(SVGs rendered with resvg-py, aspect kept, padded to a transparent square), filter, dedupe by pixel
hash, write ``OUT/images/<source>/...png`` and ``OUT/manifest.jsonl`` with a deterministic split
(:func:`alphavae.data.manifest.split_of`). Decisions are cached in ``OUT/cache/decisions`` so a re-run
only processes new or changed items; while a source is processed its decisions are also appended to
a journal, so an interrupted run resumes where it stopped. The unpacked archives are inputs: nothing
is written into them.
"""

from __future__ import annotations

import hashlib
import io as bytes_io
import json
import math
import shutil
import subprocess
import sys
import tarfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import resvg_py
import torch
from PIL import Image
from tqdm import tqdm

from alphavae import io
from alphavae.data.manifest import SPLITS, alpha_stats, split_of, write_jsonl
from alphavae.data.sources import PERMISSIVE, Source, get_sources

MIN_NOT_OPAQUE = 0.005
"""Images with fewer than this fraction of pixels with alpha < 1 count as having no transparency."""


class FetchError(RuntimeError):
    """A registry client failed, is missing, or an archive does not match its sha256."""


def run_client(args: list[str], cwd: Path) -> None:
    """Run a registry client (``npm``, ``apt-get``, ``dpkg-deb``) in ``cwd``.

    Raises FetchError naming the client when it is not on ``PATH`` or exits non-zero (with the tail
    of its stderr). Tests replace this function to fake the clients.
    """
    if shutil.which(args[0]) is None:
        raise FetchError(f"{args[0]} not found on PATH: install it to fetch this source")
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise FetchError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-500:]}")


def archive_name(source: Source) -> str:
    """File name the registry client gives the archive of ``source`` (npm scope and Debian epoch encoded)."""
    if source.registry == "npm":
        return f"{source.package.lstrip('@').replace('/', '-')}-{source.version}.tgz"
    return f"{source.package}_{source.version.replace(':', '%3a')}_all.deb"


def download(source: Source, downloads: Path) -> Path:
    """Download the archive of ``source`` into ``downloads`` unless it is already there and verifies.

    Returns the archive path. Raises FetchError when the client fails or the archive's sha256 differs
    from ``source.sha256`` (the bad file is removed so that the next run downloads it again).
    """
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / archive_name(source)
    if archive.exists() and io.sha256_file(archive) == source.sha256:
        return archive
    archive.unlink(missing_ok=True)
    if source.registry == "npm":
        run_client(["npm", "pack", source.package_version, "--pack-destination", str(downloads)], downloads)
    else:
        run_client(["apt-get", "download", f"{source.package}={source.version}"], downloads)
    if not archive.exists():
        raise FetchError(f"{archive}: the {source.registry} client did not produce this file")
    observed = io.sha256_file(archive)
    if observed != source.sha256:
        archive.unlink()
        raise FetchError(f"{archive}: sha256 {observed} does not match the expected {source.sha256}")
    return archive


def unpack(archive: Path, unpacked: Path) -> Path:
    """Unpack ``archive`` (``.tgz`` or ``.deb``) once into ``unpacked/<archive name>``; returns that folder.

    Unpacks into a temporary sibling, then renames, so an interrupted run leaves no half tree.
    ``.tgz`` members are extracted with tarfile's ``data`` filter (no absolute paths, links out of
    the tree or device files). Raises FetchError if ``dpkg-deb`` is missing or fails.
    """
    target = unpacked / archive.name
    if target.is_dir():
        return target
    temporary = unpacked / f".{archive.name}.partial"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    if archive.suffix == ".deb":
        run_client(["dpkg-deb", "-x", str(archive), str(temporary)], unpacked)
    else:
        with tarfile.open(archive) as tar:
            tar.extractall(temporary, filter="data")
    temporary.rename(target)
    return target


def header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` read from the image header without decoding; None when unreadable.

    Raises ``PIL.Image.DecompressionBombError`` for images over twice ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size
    except OSError:
        return None


def _short_side(path: Path) -> int:
    """Short side from the header; a huge number when unreadable or a decompression bomb."""
    try:
        size = header_size(path)
    except Image.DecompressionBombError:
        return sys.maxsize
    return sys.maxsize if size is None else min(size)


def _area(path: Path) -> int:
    """Pixel count from the header; 0 when unreadable, a huge number for a decompression bomb."""
    try:
        return math.prod(header_size(path) or (0, 0))
    except Image.DecompressionBombError:
        return sys.maxsize


def list_candidates(source: Source, root: Path, limit: int | None = None, min_size: int = 0) -> list[Path]:
    """Image files of ``source`` under the unpacked ``root``, as paths relative to ``source.base``.

    With ``dedupe_by_name`` only the largest file (header pixel count, ties: first path) of each
    file name is kept. Symbolic links are skipped (icon themes link aliases, sometimes to absolute
    paths outside the archive). Raster files whose header gives a short side below ``min_size``
    pixels are dropped here (unreadable headers are kept, to be reported later). With ``limit`` a
    deterministic pseudo-random subset of that many is taken (ordered by the sha256 of the relative
    path), so limited runs still span all folders. The result is sorted by path. Raises FetchError when
    ``source.base`` does not exist in the archive.
    """
    base = root / source.base
    if not base.is_dir():
        raise FetchError(f"{root}: the archive has no folder {source.base}")
    files = sorted(p.relative_to(base) for p in base.glob(source.pattern) if p.is_file() and not p.is_symlink())
    if source.dedupe_by_name:
        largest: dict[str, tuple[int, Path]] = {}
        for relative in files:
            area = _area(base / relative)
            if relative.name not in largest or area > largest[relative.name][0]:
                largest[relative.name] = (area, relative)
        files = sorted(relative for _, relative in largest.values())
    if min_size and source.kind == "raster":
        files = [relative for relative in files if _short_side(base / relative) >= min_size]
    if limit is not None:
        files = sorted(sorted(files, key=lambda p: hashlib.sha256(str(p).encode()).hexdigest())[:limit])
    return files


def render_svg(path: Path, size: int) -> np.ndarray:
    """Render an SVG with resvg-py to fit a ``size`` x ``size`` square, aspect kept, padded.

    The rendering is centred on a transparent square (padding: alpha 0). Returns a uint8 array
    ``(size, size, 4)``, straight RGBA (PNG semantics). Raises ValueError from resvg for an
    unreadable SVG.
    """
    png = resvg_py.svg_to_bytes(svg_path=str(path), width=size, height=size)
    with Image.open(bytes_io.BytesIO(png)) as image:
        rendered = np.asarray(image.convert("RGBA"))
    height, width = rendered.shape[:2]
    square = np.zeros((size, size, 4), dtype=np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    square[top : top + height, left : left + width] = rendered
    return square


def load_raster(path: Path, size: int, min_size: int) -> np.ndarray | str:
    """Load a raster image and shrink it (alpha-correct) to at most ``size`` on the long side.

    Returns a uint8 ``(h, w, 4)`` straight RGBA array, or a rejection reason (str) when the header
    says the short side is below ``min_size`` pixels or the image has more than
    :data:`alphavae.io.DEFAULT_MAX_PIXELS` pixels (checked before decoding). Raises
    :class:`alphavae.io.ImageLoadError` for unreadable files.
    """
    if _area(path) > io.DEFAULT_MAX_PIXELS:
        return f"more than {io.DEFAULT_MAX_PIXELS} pixels"
    header = header_size(path)
    if header is not None and min(header) < min_size:
        return f"short side {min(header)} < {min_size}"
    pixels = io.load_rgba(path)
    height, width = pixels.shape[1:]
    scale = size / max(height, width)
    if scale < 1:
        pixels = io.resize_rgba(pixels, (max(1, round(height * scale)), max(1, round(width * scale))))
    return np.asarray(io.to_pil(pixels))


def normalise(rgba: np.ndarray) -> tuple[dict, bytes] | str:
    """Filter, describe and encode one uint8 ``(h, w, 4)`` straight RGBA image.

    Colour under alpha = 0 is set to 0 (invisible; makes hidden-colour variants identical). Returns
    ``(record, png_bytes)`` where the record holds width, height, :func:`alpha_stats` and
    ``pixel_sha256`` (sha256 of ``"{w}x{h}"`` + the RGBA bytes), or a rejection reason (str) for an
    all-transparent image or one with fewer than :data:`MIN_NOT_OPAQUE` non-opaque pixels.
    """
    rgba = rgba.copy()
    rgba[rgba[..., 3] == 0, :3] = 0
    stats = alpha_stats(rgba[..., 3])
    if stats["alpha_mean"] == 0.0:
        return "fully transparent"
    if stats["frac_not_opaque"] < MIN_NOT_OPAQUE:
        return f"no transparency ({stats['frac_not_opaque']:.4f} of pixels below alpha 1)"
    height, width = rgba.shape[:2]
    buffer = bytes_io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    pixel_hash = hashlib.sha256(f"{width}x{height}".encode() + rgba.tobytes()).hexdigest()
    return {"width": width, "height": height, "pixel_sha256": pixel_hash, **stats}, buffer.getvalue()


@dataclass(frozen=True)
class _Job:
    """One image to process in a worker."""

    path: Path
    kind: str
    size: int
    min_size: int


def _process(job: _Job) -> tuple[dict, bytes] | str:
    """Worker: render/load, normalise; a str is a rejection, ``"error: ..."`` an unreadable file."""
    torch.set_num_threads(1)
    try:
        rgba = render_svg(job.path, job.size) if job.kind == "svg" else load_raster(job.path, job.size, job.min_size)
    except (ValueError, OSError) as error:
        return f"error: {error}"
    return rgba if isinstance(rgba, str) else normalise(rgba)


def _decisions_path(output_dir: Path, source: Source, size: int, min_size: int) -> Path:
    return output_dir / "cache" / "decisions" / f"{source.name}-size{size}-min{min_size}.jsonl"


def _load_decisions(path: Path) -> dict[str, dict]:
    """Cached per-item decisions ``{original: record or {"rejected": reason}}`` (empty if none).

    Lines that are not complete JSON (the tail of a journal cut by an interrupted run) are ignored.
    """
    decisions = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                decision = json.loads(line)
            except json.JSONDecodeError:
                continue
            decisions[decision["original"]] = decision
    return decisions


def _still_valid(decision: dict | None, output_dir: Path) -> bool:
    """A cached decision can be reused: a rejection, or a kept image whose file still verifies."""
    if decision is None:
        return False
    if "rejected" in decision:
        return True
    path = output_dir / decision["file"]
    return path.exists() and io.sha256_file(path) == decision["sha256"]


def fetch_source(
    source: Source,
    output_dir: Path,
    *,
    size: int,
    min_size: int,
    limit: int | None,
    workers: int,
    seen: dict[str, str],
    splits: tuple[tuple[str, float], ...] = SPLITS,
) -> tuple[list[dict], list[str]]:
    """Fetch one source into ``output_dir``; returns ``(manifest records, failure messages)``.

    ``seen`` maps pixel hashes to the file that claimed them (shared across sources for dedupe;
    updated in place). Failures are unreadable images; filtered and duplicate images are not
    failures. Raises FetchError for download/unpack problems.
    """
    root = unpack(download(source, output_dir / "cache" / "downloads"), output_dir / "cache" / "unpacked")
    base = root / source.base
    relatives = [str(r) for r in list_candidates(source, root, limit, min_size)]
    decisions_file = _decisions_path(output_dir, source, size, min_size)
    journal = decisions_file.with_suffix(".partial")
    cached = {**_load_decisions(decisions_file), **_load_decisions(journal)}
    todo = [r for r in relatives if not _still_valid(cached.get(r), output_dir)]
    common = {"source": source.name, "package": source.package_version, "licence": source.licence,
              "licence_ok_for_shipping": source.licence_ok_for_shipping, "archive_sha256": source.sha256}
    records, failures, decisions = [], [], []
    journal.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=workers) as pool, open(journal, "a", encoding="utf-8") as log:
        results = pool.map(_process, [_Job(base / r, source.kind, size, min_size) for r in todo], chunksize=8)
        fresh = set(todo)
        for relative in tqdm(relatives, desc=source.name, unit="img"):
            result = next(results) if relative in fresh else cached[relative]
            decision = _decide(result, relative, base, output_dir, source.name, common, seen, failures)
            if decision is None:
                continue
            decisions.append(decision)
            if relative in fresh:
                log.write(json.dumps(decision, sort_keys=True) + "\n")
                log.flush()
            if "rejected" not in decision:
                records.append({**decision, "split": split_of(decision["pixel_sha256"], splits)})
    write_jsonl(decisions, decisions_file)
    journal.unlink()
    return records, failures


def _decide(result: tuple[dict, bytes] | str | dict, relative: str, base: Path, output_dir: Path, source_name: str,
            common: dict, seen: dict[str, str], failures: list[str]) -> dict | None:
    """Turn a worker result or cached decision into a decision record; write/remove the PNG.

    Returns None (and appends to ``failures``) for an unreadable image.
    """
    if isinstance(result, str):
        if result.startswith("error: "):
            failures.append(f"{base / relative}: {result[7:]}")
            return None
        return {"original": relative, "rejected": result}
    if isinstance(result, tuple):
        record, png = result
        file = f"images/{source_name}/{Path(relative).with_suffix('.png')}"
        io.atomic_write(output_dir / file, lambda tmp: tmp.write_bytes(png), overwrite=True)
        result = {**record, **common, "original": relative, "file": file, "sha256": hashlib.sha256(png).hexdigest()}
    if "rejected" in result:
        return result
    if result["pixel_sha256"] in seen:
        (output_dir / result["file"]).unlink(missing_ok=True)
        return {"original": relative, "rejected": f"duplicate of {seen[result['pixel_sha256']]}"}
    seen[result["pixel_sha256"]] = result["file"]
    return result


def fetch_dataset(
    output_dir: str | Path,
    sources: list[str] | tuple[str, ...] = PERMISSIVE,
    *,
    size: int = 512,
    min_size: int = 256,
    limit: int | None = None,
    workers: int = 1,
    splits: tuple[tuple[str, float], ...] = SPLITS,
) -> tuple[Path, list[str]]:
    """Fetch RGBA images from registry packages into ``output_dir`` and write its manifest.

    Args:
        output_dir: destination folder (created); holds ``manifest.jsonl`` (listing the images of
            the sources of this call only), ``images/`` and ``cache/``.
        sources: source names (see :data:`alphavae.data.sources.SOURCES`; ``"all"``, ``"permissive"``).
        size: longest side of the written PNGs in pixels (raster images are only shrunk; SVGs are
            rendered to fit a ``size`` square and padded).
        min_size: raster images with a shorter side below this many pixels are skipped.
        limit: at most this many images per source (deterministic subset), None for all.
        workers: worker processes for decoding/rendering (>= 1).
        splits: ``(name, fraction)`` pairs for :func:`alphavae.data.manifest.split_of`.

    Returns:
        ``(manifest path, failures)``: failures name each unreadable image that was skipped.

    Raises:
        ValueError: unknown source or bad sizes.
        FetchError: a client is missing or fails, or an archive does not verify.
        OSError: ``output_dir`` cannot be created or written to (checked before any download:
            ``alphavae.io.check_writable_folder``), or writing fails later (e.g. disk full).
    """
    if size < 1 or min_size < 0 or workers < 1 or (limit is not None and limit < 1):
        raise ValueError(f"need size >= 1, min_size >= 0, workers >= 1, limit >= 1: {size=} {min_size=} {workers=} {limit=}")
    output_dir = Path(output_dir)
    io.check_writable_folder(output_dir, "the dataset")
    seen: dict[str, str] = {}
    records, failures = [], []
    for source in get_sources(list(sources)):
        kept, failed = fetch_source(source, output_dir, size=size, min_size=min_size, limit=limit,
                                    workers=workers, seen=seen, splits=splits)
        records += kept
        failures += failed
    manifest = write_jsonl(sorted(records, key=lambda r: r["file"]), output_dir / "manifest.jsonl")
    return manifest, failures
