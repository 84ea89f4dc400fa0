"""Benchmark reports: JSON (every number), CSV in the AlphaVAE reference layout, and a self-contained
HTML page (inline CSS, images as data URIs) with the worst-K images.

The CSV columns are the reference's ``group,subset,input_laion_score,output_laion_score,fid_score,lpips,
psnr,ssim``: one row per (group, subset), group ``rgb`` = mean over the 9 backgrounds, ``rgba`` = raw
(alpha-blind), plus each single background; subset ``overall`` is the macro mean over everything. A subset is
labelled by its ``dataset/subset`` path (root levels left out); a subset folder named ``overall`` directly in the
root is labelled ``./overall``, so that its rows stay apart from the overall mean's.
"""

from __future__ import annotations

import base64
import csv
import heapq
import html
import io as _bytes_io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alphavae.eval.aggregate import RGB_GROUP
from alphavae.eval.backgrounds import BACKGROUND_NAMES, CHECKERBOARD, composites
from alphavae.eval.protocols import RGBA_GROUP
from alphavae.io import alpha_unit, check_writable_folder, resize_rgba, stage_file, to_pil

CSV_COLUMNS = ("group", "subset", "input_laion_score", "output_laion_score", "fid_score", "lpips", "psnr", "ssim")
"""Column order of the reference CSV report."""

_CSV_METRICS = {"fid_score": "fid"}


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun`` in the right number: ``counted(1, "image")`` -> ``"1 image"``, else ``"N images"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"

ALPHA_BLIND_NOTE = (
    "The 'rgba' group scores the colour channels of the RGBA files with alpha dropped, as the reference "
    "loader does: it is alpha-blind (hidden colour under alpha = 0 counts, alpha errors do not)."
)


def _subset_rows(report: dict):
    """``(subset label, Scores)`` for every subset, then ``("overall", Scores)`` for the overall macro mean.

    A subset's label is ``dataset/subset`` without root (``.``) levels, ``.`` for the root itself, and
    ``./overall`` for a root subset named ``overall`` (not the overall mean's label)."""
    for ds, node in report["tree"]["datasets"].items():
        for ss, sub in node["subsets"].items():
            label = "/".join(p for p in (ds, ss) if p != ".") or "."
            yield (f"./{label}" if label == "overall" else label), sub["macro"]
    yield "overall", report["tree"]["overall"]["macro"]


def csv_rows(report: dict) -> list[dict[str, str]]:
    """Rows of the reference-layout CSV (all values as strings; empty where a metric was not computed)."""
    groups = [RGB_GROUP, *report["protocol"]["backgrounds"], RGBA_GROUP]
    rows = []
    for group in groups:
        for label, scores in _subset_rows(report):
            if group not in scores:
                continue
            row = {"group": group, "subset": label}
            for column in CSV_COLUMNS[2:]:
                value = scores[group].get(_CSV_METRICS.get(column, column))
                row[column] = "" if value is None else f"{value:.6f}"
            rows.append(row)
    return rows


def printable(value):
    """``value`` with every string (dict keys included) made valid UTF-8 text, for the report files.

    A file name that is not UTF-8 reaches the report as ``os.fsdecode`` makes it, with lone surrogates
    (``b"good\\xfe.png"`` -> ``"good\\udcfe.png"``), which no UTF-8 file can hold; such bytes are
    written as ``\\xfe`` (``"good\\\\xfe.png"``), any other lone surrogate as ``\\udXXX``. A backslash itself is
    written as two, so distinct names stay distinct (no two folders share a row of the tree): the name
    ``"good\\\\xfe.png"`` (with a real backslash) is written ``"good\\\\\\\\xfe.png"``. In a string that also
    holds another lone surrogate, the escaped bytes too are written as ``\\udcXX`` (``\\udcfe``). Dicts, lists
    and tuples are copied (tuples become lists, as in JSON); other values are returned as they are.
    """
    if isinstance(value, str):
        value = value.replace("\\", "\\\\")
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {printable(key): printable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(item) for item in value]
    return value


def json_text(report: dict) -> str:
    """The whole report as indented, strict JSON text (strings through :func:`printable`).

    Raises:
        ValueError: the report holds a NaN or infinite float (strict JSON has none: ``allow_nan=False``).
        TypeError: the report holds a value ``json`` cannot serialise.
    """
    return json.dumps(printable(report), indent=1, sort_keys=False, allow_nan=False)


def csv_text(report: dict) -> str:
    """:func:`csv_rows` as CSV text with header :data:`CSV_COLUMNS` (labels through :func:`printable`)."""
    buffer = _bytes_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(printable(report)))
    return buffer.getvalue()


def _heat(error: torch.Tensor) -> torch.Tensor:
    """``(1, H, W)`` error in [0, 1] -> ``(3, H, W)`` black-red-yellow-white heat map in [-1, 1]."""
    e = error.clamp(0, 1)
    rgb = torch.cat([(3 * e).clamp(0, 1), (3 * e - 1).clamp(0, 1), (3 * e - 2).clamp(0, 1)])
    return rgb * 2 - 1


def comparison_strip(gt: torch.Tensor, pred: torch.Tensor, height: int = 96) -> str:
    """PNG data URI of one row: GT and prediction over checkerboard, black and white, then |alpha error|.

    Thumbnails are area-averaged in premultiplied colour (``alphavae.io.resize_rgba``), so colour hidden under
    alpha = 0 does not bleed into the edges and each thumbnail's composite is the full-size composite shrunk.

    Args:
        gt, pred: ``(4, H, W)`` straight RGBA in [-1, 1], same size.
        height: thumbnail height in px (smaller images are not enlarged).
    Returns:
        ``data:image/png;base64,...``.
    """
    height = min(height, gt.shape[-2])
    scale = height / gt.shape[-2]
    size = (height, max(1, round(gt.shape[-1] * scale)))
    pair = resize_rgba(torch.stack([gt, pred]).float(), size, mode="area")
    views = composites(pair, (CHECKERBOARD, "black", "white")) * 2 - 1  # (2, 3, 3, h, w)
    tiles = [views[side, k] for k in range(3) for side in (0, 1)]
    tiles.append(_heat((alpha_unit(pair[1]) - alpha_unit(pair[0])).abs()))
    gap = torch.ones(3, size[0], 4)
    row = torch.cat([t for tile in tiles for t in (tile, gap)][:-1], dim=-1)
    image = to_pil(torch.cat([row, torch.ones(1, *row.shape[1:])]))
    buffer = _bytes_io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(order=True)
class _Case:
    badness: float
    key: str = field(compare=False)
    uri: str = field(compare=False)
    psnr: float = field(compare=False)


@dataclass
class WorstImages:
    """Keeps the K worst images (lowest mean-over-backgrounds PSNR) with their comparison strips;
    memory is K thumbnails whatever the number of images."""

    k: int = 8
    cases: list[_Case] = field(default_factory=list)

    def offer(self, key: str, psnr: float, gt: torch.Tensor, pred: torch.Tensor) -> None:
        """Consider one image; the strip is only rendered when it enters the top K.

        Args:
            key: the image's key in the report.
            psnr: its PSNR in dB (the runner passes the mean over the protocol's backgrounds); lower is worse.
            gt, pred: ``(4, H, W)`` straight RGBA in [-1, 1], same size (for :func:`comparison_strip`).
        """
        if self.k <= 0 or (len(self.cases) == self.k and -psnr <= self.cases[0].badness):
            return
        case = _Case(-psnr, key, comparison_strip(gt, pred), psnr)
        (heapq.heappush if len(self.cases) < self.k else heapq.heapreplace)(self.cases, case)

    def merge(self, other: "WorstImages") -> None:
        """Fold another collector's cases in (used after gathering shards)."""
        for case in other.cases:
            if len(self.cases) < self.k:
                heapq.heappush(self.cases, case)
            elif case.badness > self.cases[0].badness:
                heapq.heapreplace(self.cases, case)

    def worst_first(self) -> list[dict]:
        """``[{"key", "psnr", "uri"}]`` from worst to best."""
        return [{"key": c.key, "psnr": c.psnr, "uri": c.uri} for c in sorted(self.cases, reverse=True)]


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0 20px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f2f2f2}
.bar{display:inline-block;height:12px;background:#4a78c2;vertical-align:middle}
.note{background:#fff6d6;border:1px solid #e6d48a;padding:6px 10px}
.case img{display:block;margin:4px 0 14px;max-width:100%}
"""

_SUMMARY_METRICS = ("psnr", "ssim", "lpips", "fid", "input_laion_score", "output_laion_score")


def _fmt(value) -> str:
    return "&ndash;" if value is None else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _bars(scores: dict, metric: str) -> str:
    values = {b: scores.get(b, {}).get(metric) for b in BACKGROUND_NAMES}
    top = max((v for v in values.values() if v is not None), default=0) or 1
    rows = [[b, f'<span class="bar" style="width:{240 * v / top:.0f}px"></span> {v:.3f}'] for b, v in values.items() if v is not None]
    return _table(["background", metric], rows)


HEADLINE = ((RGB_GROUP, "psnr", "9-background PSNR", 2, " dB"), (RGB_GROUP, "ssim", "SSIM", 4, ""),
            (RGB_GROUP, "lpips", "LPIPS", 4, ""), (RGB_GROUP, "clip_score", "CLIP score", 2, ""),
            ("alpha", "alpha_mae", "alpha MAE", 4, ""))
"""(group, metric, label, decimals, unit) of the numbers :func:`headline` prints, when the report has them."""


def headline(report: dict) -> str | None:
    """One line with the main overall numbers, micro / macro, e.g. ``"9-background PSNR 30.85 / 31.43 dB, SSIM
    0.9012 / 0.9100, alpha MAE 0.0125 / 0.0115 (micro / macro)"``; None when none of them was scored."""
    overall = report["tree"]["overall"]
    parts = []
    for group, metric, label, decimals, unit in HEADLINE:
        micro, macro = (overall.get(kind, {}).get(group, {}).get(metric) for kind in ("micro", "macro"))
        if micro is not None and macro is not None:
            parts.append(f"{label} {micro:.{decimals}f} / {macro:.{decimals}f}{unit}")
    return f"{', '.join(parts)} (micro / macro)" if parts else None


def render_html(report: dict, worst: list[dict]) -> str:
    """The HTML report as one self-contained string (no external resources; strings through :func:`printable`)."""
    report, worst = printable(report), printable(worst)
    overall = report["tree"]["overall"]
    macro = overall["macro"]
    groups = [g for g in (RGB_GROUP, *report["protocol"]["backgrounds"], RGBA_GROUP) if g in macro]
    metrics = [m for m in _SUMMARY_METRICS if any(m in macro[g] for g in groups)]
    micro = overall.get("micro", {})
    parts = [
        f"<h1>ALPHA benchmark &mdash; {html.escape(report['protocol']['name'])} protocol</h1>",
        f"<p>{counted(overall['images'], 'image')}; failures: {len(report.get('failures', []))}; "
        f"missing predictions: {len(report.get('missing', []))}; extra predictions: {len(report.get('extra', []))}.</p>",
        "<h2>Inputs</h2>",
        _table(["input", "value"], [[html.escape(k), "&ndash;" if v is None else html.escape(str(v))]
                                    for k, v in report.get("inputs", {}).items()]),
        "<h2>Summary (macro: category &rarr; subset &rarr; dataset)</h2>",
        _table(["group", *metrics], [[g, *(_fmt(macro[g].get(m)) for m in metrics)] for g in groups]),
        "<h2>Summary (micro: every image weighs the same)</h2>",
        _table(["group", *metrics], [[g, *(_fmt(micro.get(g, {}).get(m)) for m in metrics)] for g in groups]),
    ]
    if RGBA_GROUP in macro:
        parts.append(f'<p class="note">{html.escape(ALPHA_BLIND_NOTE)}</p>')
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in report.get("notes", []) if note != ALPHA_BLIND_NOTE]
    for group in (g for g in macro if g not in groups):  # alpha metrics, latent drift, ...
        rows = [[html.escape(m), _fmt(v), _fmt(micro.get(group, {}).get(m))] for m, v in macro[group].items()]
        parts += [f"<h2>{html.escape(group)}</h2>", _table(["metric", "macro", "micro"], rows)]
    parts += ["<h2>Per background</h2>", *(_bars(macro, m) for m in ("psnr", "ssim") if m in metrics)]
    cat_rows = []
    for ds, node in report["tree"]["datasets"].items():
        for ss, sub in node["subsets"].items():
            for cat, leaf in sub["categories"].items():
                rgb = leaf["mean"].get(RGB_GROUP, {})
                cat_rows.append([html.escape("/".join(p for p in (ds, ss, cat) if p != ".") or "."), str(leaf["images"]), *(_fmt(rgb.get(m)) for m in metrics)])
    parts += ["<h2>Per category (mean over backgrounds)</h2>", _table(["category", "images", *metrics], cat_rows)]
    if worst:
        parts.append("<h2>Worst images (lowest PSNR)</h2><p>Each row: GT, prediction over checkerboard, "
                     "black, white; then |alpha error| (black = 0, white = 1).</p>")
        parts += [f'<div class="case">{html.escape(c["key"])} &mdash; PSNR {c["psnr"]:.2f} dB'
                  f'<img alt="{html.escape(c["key"])}" src="{c["uri"]}"></div>' for c in worst]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ALPHA benchmark</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")


REPORT_NAMES = ("report.json", "report.csv", "report.html")
"""The files :func:`write_reports` writes into the report folder."""


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Raise FileExistsError naming the first of ``paths`` that exists, unless ``overwrite``; IsADirectoryError
    naming the first that is a folder (no overwrite replaces a folder with a report)."""
    folders = [path for path in paths if path.is_dir()]
    if folders:
        raise IsADirectoryError(f"{folders[0]}: is a folder, where the report file goes (move it away)")
    existing = [path for path in paths if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]}: report exists (use --overwrite)")


def _refuse_existing_reports(folder: Path, overwrite: bool) -> None:
    """Raise FileExistsError naming the first report file in ``folder`` unless ``overwrite``."""
    _refuse_existing([folder / name for name in REPORT_NAMES], overwrite)


def check_report_destination(folder: str | Path, *, overwrite: bool = False) -> None:
    """Fail early, before any scoring, if :func:`write_reports` could not write into ``folder``.

    Creates nothing (:func:`alphavae.io.check_writable_folder` probes ``folder`` or its nearest existing parent).

    Raises:
        FileExistsError: a report file exists and ``overwrite`` is False.
        IsADirectoryError: a report file's name (``report.json``, ...) is taken by a folder.
        NotADirectoryError: ``folder`` (or a parent) exists and is not a folder (or is a dangling symlink).
        OSError: ``folder`` cannot be created or written to (e.g. read-only; names the folder).
    """
    _refuse_existing_reports(Path(folder), overwrite)
    check_writable_folder(folder, "the report")


def _stage(path: Path, text: str) -> Path:
    """``alphavae.io.stage_file`` of ``text`` (UTF-8) beside ``path``; returns the temporary file. Raises OSError
    naming ``path`` (nothing left behind)."""
    try:
        return stage_file(path, lambda temp: temp.write_bytes(text.encode("utf-8")))
    except OSError as err:
        raise OSError(f"{path}: cannot write the report ({err.strerror or err})") from err


def _write_files(folder: Path, texts: dict[str, str], *, overwrite: bool) -> list[Path]:
    """Write ``texts`` (file name -> text) into ``folder`` (created) all or none: every file is first
    written to a temporary file, then all are renamed into place; on any failure the temporary files,
    the files already renamed and a folder created here (if left empty) are removed.

    Raises:
        FileExistsError: a file exists and ``overwrite`` is False (checked again just before renaming).
        OSError: a file cannot be written (names it and the reason, e.g. no space left on device).
    """
    created = not folder.exists()
    staged: dict[Path, Path] = {}
    moved: list[Path] = []
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"{folder}: cannot write the report there ({err.strerror or err})") from err
        for name, text in texts.items():
            staged[folder / name] = _stage(folder / name, text)
        _refuse_existing(list(staged), overwrite)
        for path, temp in staged.items():
            os.replace(temp, path)
            moved.append(path)
    except BaseException:
        for path in (*staged.values(), *moved):
            path.unlink(missing_ok=True)
        if created:
            _remove_if_empty(folder)
        raise
    return list(staged)


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it exists and is empty (a folder created for files that were not written)."""
    try:
        folder.rmdir()
    except OSError:
        pass


def write_reports(folder: str | Path, report: dict, worst: list[dict], *, overwrite: bool = False) -> list[Path]:
    """Write ``report.json``, ``report.csv`` and ``report.html`` into ``folder`` (created); returns the paths.

    All three or none: they are rendered in memory, written to temporary files and only then renamed
    into place, so a failure (a full disk, an unencodable value) never leaves part of a report set that
    would block the next run. File names that are not UTF-8 are escaped (:func:`printable`). Callers
    check the destination with :func:`check_report_destination` before the work; the check here is
    repeated in case a report appeared meanwhile.

    Raises:
        FileExistsError: a report file exists and ``overwrite`` is False (nothing is written then).
        IsADirectoryError: a report file's name is taken by a folder (also with ``overwrite``).
        ValueError, TypeError: the report cannot be serialised (:func:`json_text`); nothing is written.
        OSError: a file cannot be written (names it; nothing is left behind).
    """
    folder = Path(folder)
    _refuse_existing_reports(folder, overwrite)
    texts = dict(zip(REPORT_NAMES, (json_text(report), csv_text(report), render_html(report, worst))))
    return _write_files(folder, texts, overwrite=overwrite)
