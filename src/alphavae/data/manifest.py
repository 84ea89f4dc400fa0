"""Manifest of a fetched data set (``manifest.jsonl``) and its deterministic train/val/test split.

One JSON object per line and image; ``file`` is relative to the manifest's folder. The split of an
image depends only on its pixel hash, so adding sources never moves an image between splits.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from alphavae import io
from alphavae.io.files import resolve_path

SPLITS: tuple[tuple[str, float], ...] = (("train", 0.90), ("val", 0.05), ("test", 0.05))
"""Default split names and fractions (sum 1)."""


def split_of(pixel_sha256: str, splits: tuple[tuple[str, float], ...] = SPLITS) -> str:
    """Split name for an image, from its hex pixel hash (at least 16 hex digits).

    The first 16 hex digits, read as an integer and divided by 16**16, give a number u in [0, 1);
    the image goes to the first split whose cumulative fraction exceeds u. Raises ValueError if the
    fractions do not sum to 1 (within 1e-9) or the hash is not hexadecimal.
    """
    total = sum(fraction for _, fraction in splits)
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {total}")
    u = int(pixel_sha256[:16], 16) / 16**16
    cumulative = 0.0
    for name, fraction in splits:
        cumulative += fraction
        if u < cumulative:
            return name
    return splits[-1][0]


def alpha_stats(alpha: np.ndarray) -> dict[str, float]:
    """Alpha statistics of one image.

    ``alpha``: uint8 array (any shape), 0 = transparent, 255 = opaque. Returns ``alpha_mean`` (mean
    alpha in [0, 1]), ``frac_transparent`` (fraction with alpha = 0), ``frac_soft`` (fraction with
    0 < alpha < 255) and ``frac_not_opaque`` (fraction with alpha < 255), all in [0, 1].
    Raises ValueError for an empty array.
    """
    if alpha.size == 0:
        raise ValueError("alpha_stats: empty alpha array")
    return {
        "alpha_mean": float(alpha.mean() / 255.0),
        "frac_transparent": float((alpha == 0).mean()),
        "frac_soft": float(((alpha > 0) & (alpha < 255)).mean()),
        "frac_not_opaque": float((alpha < 255).mean()),
    }


FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "file": (str,), "split": (str,), "source": (str,), "original": (str,), "package": (str,),
    "licence": (str,), "pixel_sha256": (str,), "sha256": (str,), "archive_sha256": (str,),
    "licence_ok_for_shipping": (bool,), "width": (int,), "height": (int,), "alpha_mean": (int, float),
    "frac_transparent": (int, float), "frac_soft": (int, float), "frac_not_opaque": (int, float),
}
"""JSON types of the record fields :func:`read_manifest` checks (``file`` and ``split`` are required,
the others only checked when present; other fields are passed through unchecked)."""


def _field_problem(record: object) -> str | None:
    """What is wrong with one decoded manifest line (see :data:`FIELD_TYPES`), or None."""
    if not isinstance(record, dict):
        return f"a record must be a JSON object, got {json.dumps(record)[:80]}"
    for name in ("file", "split"):
        if name not in record:
            return f"a record needs 'file' and 'split' (no {name!r})"
    for name, types in FIELD_TYPES.items():
        if name not in record:
            continue
        value = record[name]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            expected = "a number" if float in types else {str: "a string", bool: "a boolean", int: "an integer"}[types[0]]
            return f"field {name!r} must be {expected}, got {json.dumps(value)}"
    if not record["file"] or "\0" in record["file"]:
        return f"field 'file' must be a non-empty path without NUL characters, got {json.dumps(record['file'])}"
    for name in ("width", "height"):
        if name in record and record[name] < 1:
            return f"field {name!r} must be at least 1, got {record[name]}"
    return None


def read_manifest_lines(path: str | Path) -> list[tuple[int, dict]]:
    """Read a ``manifest.jsonl`` into ``(line number, record)`` pairs, in file order (blank lines skipped).

    Each line must be a JSON object with ``file`` (a non-empty string, relative to the manifest's
    folder) and ``split`` (a string); the other fields of :data:`FIELD_TYPES` must have their type
    when present (``width``/``height`` at least 1).

    Raises:
        FileNotFoundError: the manifest does not exist (names it).
        ValueError: the manifest is a folder or not UTF-8 text, or a line is not a JSON object with
            valid fields (names the manifest, the line and the problem).
        OSError: the manifest cannot be read otherwise (e.g. permission denied).
    """
    records = []
    for number, record in io.read_jsonl(path, "manifest"):
        problem = _field_problem(record)
        if problem:
            raise ValueError(f"{path}:{number}: {problem}")
        records.append((number, record))
    return records


def read_manifest(path: str | Path) -> list[dict]:
    """Read a ``manifest.jsonl`` into a list of records (dicts), in file order.

    The checks and errors are those of :func:`read_manifest_lines`.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: the manifest is a folder or not UTF-8, or a line is not a JSON object with a
            ``file`` and ``split`` string and correctly typed known fields (names file and line).
    """
    return [record for _, record in read_manifest_lines(path)]


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """Atomically write records as JSON lines (sorted keys) to ``path``, replacing it; returns the path.

    Raises IsADirectoryError when ``path`` is a folder, TypeError for a record ``json`` cannot serialise.
    """
    text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    return io.atomic_write_text(path, text, overwrite=True)


def summarise(records: Iterable[dict]) -> dict[str, dict[str, int]]:
    """Count images per source and split: ``{source: {split: n}}`` (sorted by source name, then split).

    Every record needs ``source`` and ``split`` (KeyError otherwise).
    """
    counts: dict[str, Counter] = {}
    for record in records:
        counts.setdefault(record["source"], Counter())[record["split"]] += 1
    return {source: dict(sorted(counts[source].items())) for source in sorted(counts)}


@dataclasses.dataclass
class ExportReport:
    """Outcome of :func:`export_split`.

    Attributes:
        copied: target paths written.
        skipped: target paths that already existed (kept, not compared).
        failed: ``(where, reason)`` for every record of the split that was not exported; ``where`` is
            ``"<manifest>:<line>"``, the reason names the record's ``file``.
    """

    copied: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[Path] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """Human-readable counts, followed by one line per failure (manifest line: reason)."""
        lines = [f"{len(self.copied)} copied, {len(self.skipped)} skipped (exist), {len(self.failed)} failed"]
        lines += [f"  FAILED {where}: {reason}" for where, reason in self.failed]
        return "\n".join(lines)


def data_folder(source: str | Path) -> Path:
    """The folder a source's images lie in: the folder itself, or a manifest ``.jsonl``'s folder.

    Manifest ``file`` entries are relative to the manifest's folder (``alphavae data fetch`` writes them so), so
    that folder is what outputs must stay out of and what relative image paths are measured from. A manifest that
    is a symlink counts from the folder of the file it links to, where its images are.

    Args:
        source: an image folder or a manifest file; need not exist (a missing path counts as a file).

    Returns:
        ``source`` when it is a folder, else the folder of the manifest (its link target's, for a symlink).

    Raises:
        OSError: ``source`` is a symlink loop (:func:`alphavae.io.files.resolve_path`, names it).
    """
    path = Path(source)
    if path.is_dir():
        return path
    return (resolve_path(path) if path.is_symlink() else path).parent


def record_source(file: str, root: str | Path) -> Path:
    """The image a manifest ``file`` names, resolved (symlinks followed) inside the manifest's folder ``root``.

    Returns:
        The absolute resolved path (it need not exist).

    Raises:
        ValueError (naming ``file``): ``file`` is absolute, names no path (``.``), has a ``..`` component,
            resolves through a symlink to a place outside ``root``, or runs into a symlink loop.
    """
    relative = Path(file)
    if relative.is_absolute():
        raise ValueError(f"file {file!r} is absolute; manifest files must be relative to the manifest's folder")
    if not relative.parts:
        raise ValueError(f"file {file!r} names no file")
    if ".." in relative.parts:
        raise ValueError(f"file {file!r} contains '..'; manifest files must stay inside the manifest's folder")
    base = Path(root).resolve()
    try:  # strict: a symlink loop raises RuntimeError before Python 3.13 and OSError (ELOOP) since, when strict
        resolved = (base / relative).resolve(strict=True)
    except (RuntimeError, OSError) as error:
        if isinstance(error, OSError) and error.errno != errno.ELOOP:
            resolved = (base / relative).resolve()  # missing or unreadable: the caller reports it
        else:
            raise ValueError(f"file {file!r}: cannot resolve (a symlink loop: {error})") from None
    if not resolved.is_relative_to(base):
        raise ValueError(f"file {file!r} resolves to {resolved}, outside the manifest's folder {root}; "
                         "manifest files must stay inside it, also through symlinks")
    return resolved


def _export_target(file: str, output: Path, root: Path) -> Path:
    """Target of a manifest ``file`` (already accepted by :func:`record_source`) below ``output``, leading
    ``images/`` dropped.

    Raises ValueError (naming ``file``) for a path naming no file below ``images/``, or a target that
    resolves (through symlinks) outside ``output`` or inside the manifest's folder ``root``.
    """
    relative = Path(file)
    inner = Path(*relative.parts[1:]) if relative.parts[0] == "images" else relative
    if not inner.parts:
        raise ValueError(f"file {file!r} names no file below images/")
    target = output / inner
    check_target(target, output, root, f"file {file!r}")
    return target


def check_target(target: Path, output: Path, root: Path, name: str) -> None:
    """Refuse a copy's ``target`` that resolves (through symlinks) outside ``output`` or inside the manifest's
    folder ``root`` (also when ``output`` holds that folder), so a copy never lands in, or replaces, a source image.

    Raises:
        ValueError: starting with ``name`` (the record, e.g. ``"file 'a.png'"``), naming the target; also for a
            target (or ``output``, ``root``) that is a symlink loop.
    """
    try:
        resolved, output_resolved, root_resolved = (resolve_path(path) for path in (target, output, root))
    except OSError as error:
        raise ValueError(f"{name}: target {target} cannot be used ({error})") from None
    if not resolved.is_relative_to(output_resolved):
        raise ValueError(f"{name}: target {target} resolves to {resolved}, outside {output}")
    if resolved.is_relative_to(root_resolved):
        raise ValueError(f"{name}: target {target} lies inside the manifest's folder {root}")


def _copy_image(file: str, source: Path, target: Path) -> None:
    """Copy ``source`` byte for byte to ``target`` (atomically) once it decodes as an image.

    The check is :func:`alphavae.io.load_rgba`, with its warnings silenced (the whole file is copied,
    so its notes on first frames or bit depth do not apply). Raises ValueError naming ``file`` when
    ``source`` does not decode or cannot be read, or ``target`` cannot be written.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            io.load_rgba(source)
        data = source.read_bytes()
    except io.ImageLoadError as error:
        raise ValueError(f"file {file!r}: cannot read {source}: {error.reason}") from None
    except OSError as error:
        raise ValueError(f"file {file!r}: cannot read {source}: {error.strerror or error}") from None
    try:
        io.atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
    except OSError as error:
        raise ValueError(f"file {file!r}: cannot write {target}: {error.strerror or error}") from None


def export_split(manifest: str | Path, split: str, output: str | Path) -> ExportReport:
    """Copy the images of one split into ``output`` as ``output/<source>/...``.

    A manifest path ``images/<source>/<rest>`` becomes ``output/<source>/<rest>`` (the leading ``images/``
    is dropped); a path not under ``images/`` is kept whole below ``output``.

    Gives ``alphavae eval`` / ``eval-vae`` a dataset/category tree of exactly the held-out images.
    Files are copied atomically; existing ones are kept (not compared). ``output`` must not lie in the
    manifest's folder. Bad records are skipped and reported, the rest are copied: a ``file`` that
    :func:`record_source` refuses (absolute, ``..``, or outside the manifest's folder through a symlink),
    one whose target would land outside ``output`` or inside the manifest's folder or is a symlink loop or cannot be
    examined (a name too long), a second record with the same target, a source or target that is a folder, and a
    file that does not decode as an image (:func:`alphavae.io.load_rgba`) or cannot be read or written.

    Returns:
        An :class:`ExportReport`; the skipped bad records are in ``failed``.

    Raises:
        FileNotFoundError: the manifest is missing (checked first).
        ValueError: the manifest is unreadable or has an invalid line (:func:`read_manifest_lines`), no
            record is of ``split``, ``output`` lies inside the manifest's folder or is an existing
            non-folder.
        OSError: ``output`` or the manifest is a symlink loop (names it).
    """
    manifest, output = Path(manifest), Path(output)
    root = data_folder(manifest)
    records = [(number, r) for number, r in read_manifest_lines(manifest) if r["split"] == split]
    io.check_output_folder(output, [root])
    if not records:
        raise ValueError(f"{manifest}: no image in split {split!r}")
    report = ExportReport()
    claimed: dict[Path, int] = {}
    for number, record in records:
        where = f"{manifest}:{number}"
        try:
            source = record_source(record["file"], root)
            target = _export_target(record["file"], output, root)
        except ValueError as error:
            report.failed.append((where, str(error)))
            continue
        if target in claimed:
            reason = f"file {record['file']!r}: target {target} is already copied from line {claimed[target]}"
            report.failed.append((where, reason))
            continue
        claimed[target] = number
        try:
            folder = next((path for path in (source, target) if path.is_dir()), None)
            exists = target.exists()
        except OSError as error:  # e.g. a name too long for the file system
            report.failed.append((where, f"file {record['file']!r}: cannot use target {target} "
                                         f"({error.strerror or error})"))
            continue
        if folder is not None:
            report.failed.append((where, f"file {record['file']!r}: {folder} is a folder, not an image"))
            continue
        if exists:
            report.skipped.append(target)
            continue
        try:
            _copy_image(record["file"], source, target)
        except ValueError as error:
            report.failed.append((where, str(error)))
            continue
        report.copied.append(target)
    return report
