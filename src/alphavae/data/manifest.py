"""Manifest of a fetched data set (``manifest.jsonl``) and its deterministic train/val/test split.

One JSON object per line and image; ``file`` is relative to the manifest's folder. The split of an
image depends only on its pixel hash, so adding sources never moves an image between splits.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from alphavae import io

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


def read_manifest(path: str | Path) -> list[dict]:
    """Read a ``manifest.jsonl`` into a list of records (dicts), in file order.

    Raises FileNotFoundError if it is missing, ValueError naming the file and line for a line that
    is not a JSON object with ``file`` and ``split``.
    """
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error})") from None
        if not isinstance(record, dict) or "file" not in record or "split" not in record:
            raise ValueError(f"{path}:{number}: a record needs 'file' and 'split'")
        records.append(record)
    return records


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """Atomically write records as JSON lines (sorted keys) to ``path``, replacing it; returns the path."""
    text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    io.atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=True)
    return Path(path)


def summarise(records: Iterable[dict]) -> dict[str, dict[str, int]]:
    """Count images per source and split: ``{source: {split: n}}`` (sorted by source name)."""
    counts: dict[str, Counter] = {}
    for record in records:
        counts.setdefault(record["source"], Counter())[record["split"]] += 1
    return {source: dict(sorted(counts[source].items())) for source in sorted(counts)}


def export_split(manifest: str | Path, split: str, output: str | Path) -> tuple[int, int]:
    """Copy the images of one split into ``output`` as ``output/<source>/...``.

    A manifest path ``images/<source>/<rest>`` becomes ``output/<source>/<rest>`` (the leading ``images/``
    is dropped); a path not under ``images/`` is kept whole below ``output``.

    Gives ``alphavae eval`` / ``eval-vae`` a dataset/category tree of exactly the held-out images.
    Files are copied atomically; existing ones are kept (not compared). ``output`` must not lie in the
    manifest's folder. Returns ``(copied, skipped_existing)``.

    Raises:
        FileNotFoundError: the manifest or one of its images is missing.
        ValueError: no record of ``split``, or ``output`` inside the manifest's folder.
    """
    manifest = Path(manifest)
    root = manifest.parent
    io.check_output_outside_inputs(output, [root])
    records = [r for r in read_manifest(manifest) if r["split"] == split]
    if not records:
        raise ValueError(f"{manifest}: no image in split {split!r}")
    copied = skipped = 0
    for record in records:
        relative = Path(record["file"])
        target = Path(output) / Path(*relative.parts[1:]) if relative.parts[0] == "images" else Path(output) / relative
        if target.exists():
            skipped += 1
            continue
        data = (root / relative).read_bytes()
        io.atomic_write(target, lambda tmp, data=data: Path(tmp).write_bytes(data))
        copied += 1
    return copied, skipped
