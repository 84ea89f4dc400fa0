"""Scaling: decode time and peak RSS against image side and batch size (default policy, fresh process each).

Sides up to ``tile_from`` (exclusive) decode whole; larger sides decode in tiles (as users must, to fit in
memory). Each point is one ``benchmarks.memory.measure`` subprocess. The plot is drawn with Pillow
(log-log axes: seconds and MiB against side).
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

from benchmarks.memory import measure


def run(sides: tuple[int, ...], batches: tuple[int, ...], batch_side: int, *, tile: int, overlap: int,
        tile_from: int) -> dict:
    """Decode at each side (batch 1) and at ``batch_side`` for each batch size; return a JSON-ready dict."""
    by_side = [measure("decode", side, tile if side >= tile_from else None, overlap) for side in sides]
    by_batch = [measure("decode", batch_side, None, None, batch=batch) for batch in batches]
    return {"by_side": by_side, "by_batch": by_batch, "batch_side": batch_side}


def table(result: dict) -> str:
    """Markdown tables of :func:`run`'s result."""
    lines = ["Scaling of decode (default policy, fresh process per point)", "",
             "| side | batch | tiled | seconds | s per Mpixel | peak RSS MiB |", "|---|---|---|---|---|---|"]
    for case in result["by_side"] + result["by_batch"]:
        if "error" in case:
            lines.append(f"| {case['side']}² | {case['batch']} | {bool(case['tile'])} | failed: {case['error']} | | |")
            continue
        megapixels = case["batch"] * case["side"] ** 2 / 1e6
        lines.append(f"| {case['side']}² | {case['batch']} | {bool(case['tile'])} | {case['seconds']:.2f} | "
                     f"{case['seconds'] / megapixels:.2f} | {case['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], points: list[tuple[float, float]],
           title: str, unit: str) -> None:
    """Draw one log-log panel of ``points`` (x = side px, y in ``unit``) inside ``box`` (left, top, right, bottom)."""
    left, top, right, bottom = box
    draw.rectangle(box, outline="black")
    draw.text((left, top - 16), title, fill="black")
    if len(points) < 2:
        return
    xs, ys = [math.log2(x) for x, _ in points], [math.log10(y) for _, y in points]
    y_low, y_high = math.floor(min(ys)), math.ceil(max(ys)) if max(ys) > math.floor(min(ys)) else math.floor(min(ys)) + 1

    def place(x: float, y: float) -> tuple[float, float]:
        px = left + 20 + (x - xs[0]) / (xs[-1] - xs[0]) * (right - left - 40)
        return px, bottom - 10 - (y - y_low) / (y_high - y_low) * (bottom - top - 20)

    for decade in range(y_low, y_high + 1):
        _, py = place(xs[0], decade)
        draw.line((left, py, right, py), fill=(220, 220, 220))
        draw.text((left - 66, py - 6), f"{10 ** decade:g} {unit}", fill="black")
    for x, (side, _) in zip(xs, points):
        px, _ = place(x, y_low)
        draw.text((px - 12, bottom + 4), str(int(side)), fill="black")
    line = [place(x, y) for x, y in zip(xs, ys)]
    draw.line(line, fill=(200, 30, 30), width=2)
    for px, py in line:
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=(200, 30, 30))


def plot(result: dict, path: Path) -> Path:
    """Save a PNG with two log-log panels (decode seconds and peak RSS MiB against side) and return its path."""
    cases = [c for c in result["by_side"] if "error" not in c]
    image = Image.new("RGB", (900, 400), "white")
    draw = ImageDraw.Draw(image)
    _panel(draw, (90, 40, 460, 350), [(c["side"], c["seconds"]) for c in cases], "decode time (s) vs side (px)", "s")
    _panel(draw, (560, 40, 890, 350), [(c["side"], c["peak_rss_mb"]) for c in cases],
           "peak RSS (MiB) vs side (px); tiled from the first tiled side", "MiB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
