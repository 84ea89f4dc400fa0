"""Captions for LoRA training: a CSV/JSONL table, sidecar ``.txt`` files, or a fallback prompt.

Paper §5.1 trains with one caption per image and the fallback prompt "RGBA" where none exists.
"""

from __future__ import annotations

import csv
from io import StringIO
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

    A leading byte-order mark (spreadsheet CSV exports) is ignored.

    Raises:
        CaptionError: unknown extension, a folder, bytes that are not UTF-8, bad JSON, or a row without
            an image or caption field (the message names the file and line).
        FileNotFoundError: the file does not exist. OSError: it cannot be read otherwise.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        text = _read(path, io.read_text_file)
        rows = ((n + 2, row) for n, row in enumerate(csv.DictReader(StringIO(text, newline=""))))
    elif suffix == ".jsonl":
        rows = ((n, _json_object(path, n, value)) for n, value in _read(path, io.read_jsonl))
    else:
        raise CaptionError(f"{path}: caption table must be .csv or .jsonl, not {suffix or 'no extension'}")
    table: dict[str, str] = {}
    for line, row in rows:
        where = f"{path}:{line}"
        table[_pick(row, _FILE_KEYS, where)] = _pick(row, _TEXT_KEYS, where).strip()
    return table


def _read(path: Path, reader):
    """``reader(path, "caption table")`` (``io.read_text_file`` or ``io.read_jsonl``), its ValueErrors
    (not UTF-8, a folder, a line that is not JSON) raised as CaptionError."""
    try:
        return reader(path, "caption table")
    except ValueError as err:
        raise CaptionError(str(err)) from None


def _json_object(path: Path, line: int, value: object) -> dict:
    if not isinstance(value, dict):
        raise CaptionError(f"{path}:{line}: expected a JSON object")
    return value


def resolve_captions(
    images: list[Path], root: str | Path, table: dict[str, str] | None = None,
    fallback: str = DEFAULT_PROMPT,
) -> list[str]:
    """Return one caption per image, in order.

    Precedence: the table entry (keyed by the path relative to ``root``, or the file name alone),
    then a sidecar ``<image stem>.txt`` next to the image (UTF-8, stripped), then ``fallback``.
    Empty captions count as missing.

    Raises:
        ValueError: a sidecar is not UTF-8 text (names it). OSError: a sidecar cannot be read.
    """
    table = table or {}
    root = Path(root)
    captions = []
    for image in images:
        keys = (image.relative_to(root).as_posix() if image.is_relative_to(root) else None, image.name)
        caption = next((table[k] for k in keys if k and table.get(k)), "")
        sidecar = image.with_suffix(".txt")
        if not caption and sidecar.is_file():
            caption = io.read_text_file(sidecar, "caption file").strip()
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
