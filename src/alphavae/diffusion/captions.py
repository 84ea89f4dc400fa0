"""Captions for LoRA training: a CSV/JSONL table, sidecar ``.txt`` files, or a fallback prompt.

Paper §5.1 trains with one caption per image and the fallback prompt "RGBA" where none exists.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from alphavae import io

DEFAULT_PROMPT = "RGBA"
"""Fallback instance prompt of the paper (§5.1) for images without a caption."""

_FILE_KEYS = ("file_name", "file", "image", "path", "filename")
_TEXT_KEYS = ("caption", "text", "prompt")


class CaptionError(ValueError):
    """A caption table that cannot be read: the message names the file, row and problem."""


def _pick(row: dict, keys: tuple[str, ...], where: str) -> str:
    for key in keys:
        if row.get(key) not in (None, ""):
            return str(row[key])
    raise CaptionError(f"{where}: needs one of the columns {', '.join(keys)}")


def read_caption_table(path: str | Path) -> dict[str, str]:
    """Read ``{image path as written: caption}`` from a ``.csv`` (header row) or ``.jsonl`` file.

    The image column is the first present of file_name/file/image/path/filename and the caption
    column the first of caption/text/prompt (the layout of diffusers' ``metadata.jsonl`` works).

    Raises:
        CaptionError: unknown extension, bad JSON, or a row without an image or caption field
            (the message names the file and line).
        OSError: the file cannot be read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    table: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        if suffix == ".csv":
            rows = ((n + 2, row) for n, row in enumerate(csv.DictReader(handle)))
        elif suffix == ".jsonl":
            rows = ((n + 1, _json_line(path, n + 1, line)) for n, line in enumerate(handle) if line.strip())
        else:
            raise CaptionError(f"{path}: caption table must be .csv or .jsonl, not {suffix or 'no extension'}")
        for line, row in rows:
            where = f"{path}:{line}"
            table[_pick(row, _FILE_KEYS, where)] = _pick(row, _TEXT_KEYS, where).strip()
    return table


def _json_line(path: Path, line: int, text: str) -> dict:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise CaptionError(f"{path}:{line}: not JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise CaptionError(f"{path}:{line}: expected a JSON object")
    return row


def resolve_captions(
    images: list[Path], root: str | Path, table: dict[str, str] | None = None,
    fallback: str = DEFAULT_PROMPT,
) -> list[str]:
    """Return one caption per image, in order.

    Precedence: the table entry (keyed by the path relative to ``root``, or the file name alone),
    then a sidecar ``<image stem>.txt`` next to the image (UTF-8, stripped), then ``fallback``.
    Empty captions count as missing.
    """
    table = table or {}
    root = Path(root)
    captions = []
    for image in images:
        keys = (image.relative_to(root).as_posix() if image.is_relative_to(root) else None, image.name)
        caption = next((table[k] for k in keys if k and table.get(k)), "")
        sidecar = image.with_suffix(".txt")
        if not caption and sidecar.is_file():
            caption = sidecar.read_text(encoding="utf-8").strip()
        captions.append(caption or fallback)
    return captions


def read_prompts(path: str | Path) -> list[str]:
    """Read generation prompts: one per line of a UTF-8 text file; blank lines and ``#`` comments skipped.

    Raises:
        FileNotFoundError: the file does not exist (names it).
        ValueError: the path is a folder, the file is not UTF-8 text or holds no prompt (names the file).
        OSError: the file cannot be read.
    """
    path = Path(path)
    lines = (line.strip() for line in io.read_text_file(path, "prompts file").splitlines())
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: no prompts (one per line; '#' starts a comment)")
    return prompts
