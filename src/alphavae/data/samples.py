"""Reproducible choice of the bundled example images from a fetched manifest.

Only records of the held-out ``test`` split with ``licence_ok_for_shipping`` are eligible, so the
README's demo evaluates the shipped model on images it never trained on. Each image gets one alpha category from
its manifest statistics (:func:`category_of`); per (source, category) the images with the smallest
pixel hashes are taken, so the choice is reproducible and not cherry-picked. Written as
``OUT/images/<dataset>/<category>/<name>.png`` with ``OUT/LICENSE.md`` naming each file's package,
licence and original path. ``LICENSE.md`` always lists every image of the manifest present under ``OUT``
(also those of earlier runs); an existing one that would change is replaced only with ``overwrite``.
"""

from __future__ import annotations

import errno
from pathlib import Path

from alphavae import io
from alphavae.data.manifest import check_target, data_folder, read_manifest, record_source
from alphavae.data.sources import SOURCES

DATASETS = {"fluent-emoji-3d": "emoji3d", "fluentui-emoji": "fluent-svg", "openclipart": "clipart"}
"""Folder name of each permissive source under ``images/``."""

NON_SQUARE_ASPECT = 1.25
"""Long side / short side from which an image counts as non-square."""

MIT_NOTICE = """Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES
OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE."""

COPYRIGHTS = {
    "fluent-emoji-3d": "Fluent Emoji artwork Copyright (c) Microsoft Corporation; npm package by LobeHub. MIT.",
    "fluentui-emoji": "Fluent Emoji artwork Copyright (c) Microsoft Corporation; npm package Copyright (c) 2022 "
    "Mohammad Abu Mattar. MIT.",
    "openclipart": "Open Clip Art Library; dedicated to the public domain (Creative Commons Public Domain "
    "Dedication, per the Debian package's copyright file).",
}


def category_of(record: dict) -> str:
    """Alpha category of a manifest record.

    ``non-square`` when long/short side >= :data:`NON_SQUARE_ASPECT`; otherwise by the soft share
    s = frac_soft / (1 - frac_transparent) of the visible pixels: ``semi-transparent`` (s >= 0.3:
    glass, large glows), ``shadows-glows`` (0.08 <= s < 0.3) or ``soft-edges`` (anti-aliased edges).

    Raises:
        KeyError: ``record`` lacks ``width``, ``height``, ``frac_soft`` or ``frac_transparent``.
    """
    width, height = record["width"], record["height"]
    if max(width, height) / min(width, height) >= NON_SQUARE_ASPECT:
        return "non-square"
    soft_share = record["frac_soft"] / max(1e-9, 1.0 - record["frac_transparent"])
    if soft_share >= 0.3:
        return "semi-transparent"
    return "shadows-glows" if soft_share >= 0.08 else "soft-edges"


SAMPLE_FIELDS = ("original", "package", "licence", "pixel_sha256", "width", "height", "frac_soft",
                 "frac_transparent")
"""Record fields (besides ``source`` and ``file``) a sample needs: category, name, order and licence row."""


def _missing_fields(record: dict) -> list[str]:
    """The :data:`SAMPLE_FIELDS` a record lacks."""
    return [name for name in SAMPLE_FIELDS if name not in record]


def _sort_key(record: dict) -> tuple[str, str, str]:
    """Order of chosen samples and licence rows: source, category, pixel hash."""
    return record["source"], record["category"], record["pixel_sha256"]


def select_samples(records: list[dict], per_group: int = 3, *, split: str = "test") -> list[dict]:
    """Choose up to ``per_group`` shippable records of ``split`` per (source, :func:`category_of`).

    Returns the chosen records (sorted by source, category, pixel hash), each with an added
    ``category`` key.

    Raises:
        ValueError: no record of ``split`` may be shipped, or an eligible record lacks one of
            :data:`SAMPLE_FIELDS` (names its ``file`` and the fields).
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        if record.get("licence_ok_for_shipping") and record.get("source") in DATASETS and record.get("split") == split:
            missing = _missing_fields(record)
            if missing:
                raise ValueError(f"record of file {record.get('file')!r} lacks {', '.join(missing)}, "
                                 "needed to choose and attribute samples")
            groups.setdefault((record["source"], category_of(record)), []).append(record)
    if not groups:
        raise ValueError(f"no record of split {split!r} with licence_ok_for_shipping from a known permissive source")
    chosen = []
    for (_, category), members in sorted(groups.items()):
        members.sort(key=lambda r: r["pixel_sha256"])
        chosen += [{**r, "category": category} for r in members[:per_group]]
    return chosen


def sample_path(record: dict) -> str:
    """Path of a chosen sample below the output folder: ``images/<dataset>/<category>/<name>.png``.

    ``name`` is the original path without its suffix, with ``/`` and spaces replaced by ``_``. Two
    records of one source and category whose originals differ only in suffix, ``/`` or spaces share it.

    Raises:
        ValueError: ``original`` has no file name (``""``, ``.``, ``/``, ``..``); names the record's ``file``.
    """
    if Path(record["original"]).name in ("", ".."):
        raise ValueError(f"record of file {record['file']!r}: original {record['original']!r} has no file name "
                         "to name the sample after")
    stem = str(Path(record["original"]).with_suffix("")).replace("/", "_").replace(" ", "_")
    return f"images/{DATASETS[record['source']]}/{record['category']}/{stem}.png"


def _present_samples(manifest: Path, root: Path, output: Path) -> dict[str, dict]:
    """Samples of ``manifest`` (any split) whose :func:`sample_path` is a file under ``output``: path -> record.

    Records without a sample name (:func:`sample_path` raises) cannot have one there and are left out, as are
    paths that lead into the manifest's folder ``root`` (a source image is no sample).
    """
    present = {}
    for record in read_manifest(manifest):
        if record.get("source") in DATASETS and not _missing_fields(record):
            record = {**record, "category": category_of(record)}
            try:
                path = sample_path(record)
                check_target(output / path, output, root, "")
            except ValueError:
                continue
            if _is_file(output / path):
                present[path] = record
    return present


def _is_file(path: Path) -> bool:
    """``path.is_file()``, but False where ``path`` cannot be examined (e.g. a name too long for the file system)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _plan(records: list[dict], root: Path, output: Path) -> tuple[dict[str, tuple[dict, Path]], list[str]]:
    """Where each chosen record goes and comes from, and why the others are skipped.

    Returns ``({sample path: (record, source image)}, reasons)``. A record is skipped (one reason
    each, naming its ``file``) when :func:`sample_path` has no name for it, its ``file`` lies outside
    the manifest's folder ``root`` (:func:`alphavae.data.manifest.record_source`), its copy under ``output``
    would resolve (through symlinks) outside ``output`` or into ``root``
    (:func:`alphavae.data.manifest.check_target`), or an earlier record of ``records`` already takes its sample
    path (the first keeps it: in :func:`select_samples` order, the smallest pixel hash).
    """
    planned: dict[str, tuple[dict, Path]] = {}
    skipped = []
    for record in records:
        try:
            path, source = sample_path(record), record_source(record["file"], root)
            check_target(output / path, output, root, f"record of file {record['file']!r}")
        except ValueError as error:
            skipped.append(str(error))
            continue
        if path in planned:
            skipped.append(f"record of file {record['file']!r}: its sample {path} is already taken by the record "
                           f"of file {planned[path][0]['file']!r}")
            continue
        planned[path] = (record, source)
    return planned, skipped


def write_samples(records: list[dict], manifest: str | Path, output: str | Path, *, long_side: int = 512,
                  overwrite: bool = False) -> tuple[list[Path], list[str]]:
    """Copy chosen samples under ``output`` and write ``output/LICENSE.md``.

    Images are read from the manifest's folder, shrunk (alpha-correct, :func:`alphavae.io.resize_rgba`)
    to at most ``long_side`` pixels on the long side and saved as 8-bit PNG with
    :func:`alphavae.io.save_rgba`. Existing images are kept unless ``overwrite``.

    ``LICENSE.md`` lists every image under ``output`` that comes from this manifest (any record,
    of any split, whose :func:`sample_path` exists): the chosen ones and those an earlier run left
    there, so no image present loses its attribution. An existing ``LICENSE.md`` that would change
    (other images, or edited by hand) is replaced only with ``overwrite``; otherwise nothing at all
    is written and FileExistsError is raised. Re-running the same choice leaves it as it is; after a
    run that skipped images, ``LICENSE.md`` lists fewer images, so adding them later needs ``overwrite``.

    A chosen record is skipped and reported when it has no sample name (:func:`sample_path`), its
    ``file`` lies outside the manifest's folder (:func:`alphavae.data.manifest.record_source`), an
    earlier record of ``records`` already takes its sample path (the first keeps it), its copy would land
    outside ``output`` or in the manifest's folder through a symlink or because ``output`` holds that folder
    (:func:`alphavae.data.manifest.check_target`), something other than a file is at its path, its path cannot be
    examined (a name too long for the file system, a symlink loop), or its source
    image cannot be read (:class:`alphavae.io.ImageLoadError`, or an OSError while writing its copy);
    the others are still written, and ``LICENSE.md`` lists the images present (with ``overwrite``,
    an older copy of a skipped image stays and stays listed).

    Returns:
        ``(written, failed)``: the chosen images written or kept under ``output``, and one line per
        chosen record that was skipped, naming its source image or its ``file``.

    Raises:
        FileNotFoundError: the manifest is missing.
        ValueError: ``output`` lies inside the manifest's folder or is an existing non-folder, or the
            manifest is invalid (:func:`alphavae.data.manifest.read_manifest`).
        FileExistsError: ``output/LICENSE.md`` exists, differs from the one to write and not ``overwrite``.
    """
    manifest, output = Path(manifest), Path(output)
    root = data_folder(manifest)
    io.check_output_folder(output, [root])
    planned, failed = _plan(records, root, output)
    listed = {**_present_samples(manifest, root, output), **{path: record for path, (record, _) in planned.items()}}
    licence_file = output / "LICENSE.md"
    if (licence_file.exists() and not overwrite
            and licence_file.read_bytes() != licence_text(sorted(listed.values(), key=_sort_key)).encode()):
        raise FileExistsError(f"{licence_file}: already exists and would change (it must list "
                              f"{len(listed)} image(s) of this manifest under {output}, or was edited); "
                              "pass --overwrite (overwrite=True) to regenerate it")
    paths = []
    try:
        for path, (_, source) in planned.items():
            target = output / path
            try:
                exists = target.exists()
            except OSError as error:  # e.g. a name too long for the file system
                reason = "output name too long" if error.errno == errno.ENAMETOOLONG else error.strerror or error
                failed.append(f"{source}: cannot write {target} ({reason})")
                continue
            if exists and not target.is_file():
                failed.append(f"{source}: cannot write {target} (it exists and is not a file)")
                continue
            if overwrite or not exists:
                try:
                    _write_sample(source, target, long_side)
                except io.ImageLoadError as error:
                    failed.append(str(error))
                    continue
                except OSError as error:
                    failed.append(f"{source}: cannot write {target} ({error.strerror or error})")
                    continue
            paths.append(target)
    finally:
        present = sorted((r for path, r in listed.items() if _is_file(output / path)), key=_sort_key)
        licence = licence_text(present).encode()
        if present and (not licence_file.exists() or licence_file.read_bytes() != licence):
            io.atomic_write(licence_file, lambda tmp: tmp.write_bytes(licence), overwrite=True)
    return paths, failed


def _write_sample(source: Path, target: Path, long_side: int) -> None:
    """Save ``source`` at ``target``, shrunk alpha-correctly to at most ``long_side`` px on its long side."""
    pixels = io.load_rgba(source)
    height, width = pixels.shape[1:]
    scale = long_side / max(height, width)
    if scale < 1:
        pixels = io.resize_rgba(pixels, (max(1, round(height * scale)), max(1, round(width * scale))))
    io.save_rgba(pixels, target, overwrite=True)


def _archive_path(record: dict) -> str:
    """Original path of a record inside its package archive (source base folder + original)."""
    source = SOURCES.get(record["source"])
    return f"{source.base}/{record['original']}" if source else record["original"]


def licence_text(records: list[dict]) -> str:
    """Markdown licence notice: one table row per sample, then the copyright lines and MIT notice.

    ``records`` are chosen samples as :func:`select_samples` returns them (``source`` one of :data:`DATASETS`,
    with ``category``, ``package``, ``licence`` and ``original``): KeyError otherwise, and ValueError for an
    ``original`` that names no file (:func:`sample_path`).
    """
    rows = [
        f"| `{sample_path(r)}` | {r['package']} | {r['licence']} | `{_archive_path(r)}` | {r['category']} |"
        for r in records
    ]
    sources = sorted({r["source"] for r in records})
    return "\n".join(
        [
            "# Licences of the example images",
            "",
            "Chosen reproducibly by `alphavae data samples MANIFEST -o examples` from a manifest written by",
            "`alphavae data fetch` (permissive sources only; see `alphavae.data.samples`). Images are",
            "normalised to 8-bit straight-alpha PNG; SVGs were rendered with resvg and padded to a square.",
            "",
            "| file | package@version | licence | original path in the package archive | category |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "## Copyright",
            "",
            *[f"- {source}: {COPYRIGHTS[source]}" for source in sources],
            "",
            "## MIT licence (fluent-emoji-3d, fluentui-emoji)",
            "",
            MIT_NOTICE,
            "",
        ]
    )
