"""Captions for LoRA training: a CSV/JSONL table, sidecar ``.txt`` files, or a fallback prompt.

Paper §5.1 trains with one caption per image and the fallback prompt "RGBA" where none exists.
"""

from __future__ import annotations

import csv
import warnings
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
    """The first non-blank text among ``row``'s ``keys`` columns; CaptionError starting with ``where`` when the
    value is not text (a JSON list, number, ...), only blank ones are present, or none is."""
    present = [key for key in keys if row.get(key) is not None]
    for key in present:
        if not isinstance(row[key], str):
            raise CaptionError(f"{where}: column {key!r} must be text, got {row[key]!r}")
        if row[key].strip():
            return row[key]
    if present:
        raise CaptionError(f"{where}: column {present[0]!r} is empty")
    raise CaptionError(f"{where}: needs one of the columns {', '.join(keys)}")


def read_caption_table(path: str | Path) -> dict[str, str]:
    """Read ``{image path as written: caption}`` from a ``.csv`` (header row) or ``.jsonl`` file.

    The image column is the first present of file_name/file/image/path/filename and the caption
    column the first of caption/text/prompt (the layout of diffusers' ``metadata.jsonl`` works).

    A leading byte-order mark (spreadsheet CSV exports) is ignored.

    Raises:
        CaptionError: unknown extension, a folder, bytes that are not UTF-8, bad JSON, no rows, an image
            given twice, or a row without an image or caption field, or with a blank or non-text one (a JSON
            list, number, ...); the message names the file and line.
        FileNotFoundError: the file does not exist. OSError: it cannot be read otherwise.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(StringIO(_read(path, io.read_text_file), newline=""))
        rows = ((reader.line_num, row) for row in reader)  # line_num: the row's last line (quoted newlines)
    elif suffix == ".jsonl":
        rows = ((n, _json_object(path, n, value)) for n, value in _read(path, io.read_jsonl))
    else:
        raise CaptionError(f"{path}: caption table must be .csv or .jsonl, not {suffix or 'no extension'}")
    table: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line, row in rows:
        where = f"{path}:{line}"
        image = _pick(row, _FILE_KEYS, where)
        if image in lines:
            raise CaptionError(f"{where}: image {image!r} is given twice (also on line {lines[image]})")
        table[image], lines[image] = _pick(row, _TEXT_KEYS, where).strip(), line
    if not table:
        raise CaptionError(f"{path}: no rows (a header and one row per image: file_name,caption)")
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

    Warns:
        UserWarning: rows of ``table`` name no image of ``images`` (a wrong prefix would otherwise train
            every image on ``fallback`` without a word).

    Raises:
        ValueError: a sidecar is not UTF-8 text (names it). OSError: a sidecar cannot be read.
    """
    table = table or {}
    root = Path(root)
    captions, used = [], set()
    for image in images:
        keys = (image.relative_to(root).as_posix() if image.is_relative_to(root) else None, image.name)
        matched = [key for key in keys if key and key in table]
        used.update(matched)
        caption = next((table[key] for key in matched if table[key]), "")
        sidecar = image.with_suffix(".txt")
        if not caption and sidecar.is_file():
            caption = io.read_text_file(sidecar, "caption file").strip()
        captions.append(caption or fallback)
    unused = [key for key in table if key not in used]
    if unused:
        warnings.warn(f"{len(unused)} of {len(table)} caption table rows name no training image (e.g. "
                      f"{unused[0]!r}); keys are image paths relative to {root}, or file names", stacklevel=2)
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
