"""Captions for LoRA training: a CSV/JSONL table, sidecar ``.txt`` files, or a fallback prompt.

Paper §5.1 trains with one caption per image and the fallback prompt "RGBA" where none exists.
"""

from __future__ import annotations

import csv
import warnings
from io import StringIO
from pathlib import Path, PurePosixPath

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
            list, number, ...), or a caption that is not valid text (a lone UTF-16 surrogate, e.g. JSON
            ``"\\ud83d"``, which no tokenizer takes); the message names the file and line.
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
        table[image], lines[image] = _text(_pick(row, _TEXT_KEYS, where), f"{where}: caption of {image!r}"), line
    if not table:
        raise CaptionError(f"{path}: no rows (a header and one row per image: file_name,caption)")
    return table


def _text(caption: str, where: str) -> str:
    """``caption`` stripped; CaptionError starting with ``where`` when it is not valid text (``io.check_text``)."""
    try:
        return io.check_text(caption, where).strip()
    except ValueError as err:
        raise CaptionError(str(err)) from None


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
    fallback: str = DEFAULT_PROMPT, *, source: str = "caption table",
) -> list[str]:
    """Return one caption per image, in order.

    Precedence: the table entry, then a sidecar ``<image stem>.txt`` next to the image (UTF-8, stripped), then
    ``fallback``. A table row names an image by its path relative to ``root``, its file name alone (which then
    captions every image of that name, with a warning when there are several), or a path that leads to it from
    the working folder or an absolute one (``data/a.png``, ``/data/a.png``, ``./a.png``). Empty captions count
    as missing.

    Args:
        images: the training image paths, in dataset order.
        root: the data folder that table keys are relative to.
        table: ``{key: caption}`` from :func:`read_caption_table`, or None (sidecars and ``fallback`` only).
        fallback: caption of an image with neither a table entry nor a sidecar (paper: "RGBA").
        source: what ``table`` is, for messages (its path).
    Warns:
        UserWarning: some rows of ``table`` name no image of ``images``, or a file-name row names several.
    Raises:
        CaptionError: no row of a non-empty ``table`` names any image (every image would train on ``fallback``).
        ValueError: sidecars that are not UTF-8 text or cannot be read (names every one, up to 5, and counts).
    """
    table = table or {}
    root = Path(root)
    index = _key_index(table)
    captions, used, by_name, unreadable = [], set(), {}, []
    for image in images:
        names = (image.relative_to(root).as_posix() if image.is_relative_to(root) else None, image.name,
                 str(image.resolve()))
        matched = list(dict.fromkeys(index[name] for name in names if name in index))
        used.update(matched)
        if image.name in index:
            by_name.setdefault(image.name, []).append(image)
        caption = next((table[key] for key in matched if table[key]), "")
        sidecar = image.with_suffix(".txt")
        if not caption and sidecar.is_file():
            try:
                caption = io.read_text_file(sidecar, "caption file").strip()
            except (ValueError, OSError) as err:
                unreadable.append(str(err))
        captions.append(caption or fallback)
    if unreadable:  # all of them at once: fixing one file per run is slow
        shown = "; ".join(unreadable[:5]) + (f"; and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise ValueError(f"{len(unreadable)} caption file(s) cannot be read: {shown}")
    unused = [key for key in table if key not in used]
    explain = f"keys are image paths relative to {root} (or from the working folder), or file names"
    if table and len(unused) == len(table):
        raise CaptionError(f"{source}: none of its {len(table)} rows names a training image (e.g. {unused[0]!r}); "
                           f"{explain}")
    if unused:
        warnings.warn(f"{source}: {len(unused)} of {len(table)} rows name no training image (e.g. {unused[0]!r}); "
                      f"{explain}", stacklevel=2)
    shared = {name: found_images for name, found_images in by_name.items() if len(found_images) > 1}
    if shared:
        name, several = next(iter(shared.items()))
        warnings.warn(f"{source}: the file-name row {name!r} captions {len(several)} images "
                      f"({', '.join(str(p) for p in several[:3])}{', ...' if len(several) > 3 else ''}); give "
                      "paths relative to the data folder to caption them apart", stacklevel=2)
    return captions


def _key_index(table: dict[str, str]) -> dict[str, str]:
    """Each row key under the names an image can match it by: the key with ``./`` and doubled slashes removed,
    and the resolved path of the file it leads to from the working folder (or as an absolute path)."""
    index: dict[str, str] = {}
    for key in table:
        index.setdefault(PurePosixPath(key).as_posix(), key)
        path = Path(key).expanduser()
        if path.is_file():
            index.setdefault(str(path.resolve()), key)
    return index


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
