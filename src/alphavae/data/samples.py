"""Reproducible choice of the bundled example images from a fetched manifest.

Only records of the held-out ``test`` split with ``licence_ok_for_shipping`` are eligible, so the
README's demo evaluates the shipped model on images it never trained on. Each image gets one alpha category from
its manifest statistics (:func:`category_of`); per (source, category) the images with the smallest
pixel hashes are taken, so the choice is reproducible and not cherry-picked. Written as
``OUT/images/<dataset>/<category>/<name>.png`` with ``OUT/LICENSE.md`` naming each file's package,
licence and original path.
"""

from __future__ import annotations

from pathlib import Path

from alphavae import io
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
    """
    width, height = record["width"], record["height"]
    if max(width, height) / min(width, height) >= NON_SQUARE_ASPECT:
        return "non-square"
    soft_share = record["frac_soft"] / max(1e-9, 1.0 - record["frac_transparent"])
    if soft_share >= 0.3:
        return "semi-transparent"
    return "shadows-glows" if soft_share >= 0.08 else "soft-edges"


def select_samples(records: list[dict], per_group: int = 3, *, split: str = "test") -> list[dict]:
    """Choose up to ``per_group`` shippable records of ``split`` per (source, :func:`category_of`).

    Returns the chosen records (sorted by source, category, pixel hash), each with an added
    ``category`` key. Raises ValueError if no record of ``split`` may be shipped.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        if record.get("licence_ok_for_shipping") and record["source"] in DATASETS and record.get("split") == split:
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

    ``name`` is the original path without its suffix, with ``/`` and spaces replaced by ``_`` (unique).
    """
    stem = str(Path(record["original"]).with_suffix("")).replace("/", "_").replace(" ", "_")
    return f"images/{DATASETS[record['source']]}/{record['category']}/{stem}.png"


def write_samples(records: list[dict], manifest: str | Path, output: str | Path, *, long_side: int = 512,
                  overwrite: bool = False) -> list[Path]:
    """Copy chosen samples under ``output`` and write ``output/LICENSE.md``.

    Images are read from the manifest's folder, shrunk (alpha-correct, :func:`alphavae.io.resize_rgba`)
    to at most ``long_side`` pixels on the long side and saved as 8-bit PNG with
    :func:`alphavae.io.save_rgba`. Existing images are kept unless ``overwrite``. Returns the image
    paths. Raises :class:`alphavae.io.ImageLoadError` for an unreadable source image.
    """
    root, output = Path(manifest).parent, Path(output)
    paths = []
    for record in records:
        target = output / sample_path(record)
        paths.append(target)
        if target.exists() and not overwrite:
            continue
        pixels = io.load_rgba(root / record["file"])
        height, width = pixels.shape[1:]
        scale = long_side / max(height, width)
        if scale < 1:
            pixels = io.resize_rgba(pixels, (max(1, round(height * scale)), max(1, round(width * scale))))
        io.save_rgba(pixels, target, overwrite=True)
    licence = licence_text(records)
    io.atomic_write(output / "LICENSE.md", lambda tmp: tmp.write_text(licence, encoding="utf-8"), overwrite=True)
    return paths


def _archive_path(record: dict) -> str:
    """Original path of a record inside its package archive (source base folder + original)."""
    source = SOURCES.get(record["source"])
    return f"{source.base}/{record['original']}" if source else record["original"]


def licence_text(records: list[dict]) -> str:
    """Markdown licence notice: one table row per sample, then the copyright lines and MIT notice."""
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
