"""Labelled preview sheets: opaque panels tiled in rows and columns under text labels (drawn with Pillow).

Used for the comparison grids of ``alphavae reconstruct --grid`` and the validation grids of
``alphavae train-vae``, so that a sheet says what each panel is without the documentation at hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from alphavae.io.files import from_pil, to_pil

FONT_SIZE = 12
"""Label text size in px (Pillow's bundled font, ``ImageFont.load_default``)."""
GUTTER = 2
"""Space between cells and around the sheet, in px."""
SHEET_GREY = (220, 220, 220)
"""8-bit colour of the sheet behind the panels and labels: light grey, so that the edges of a panel
composited over white stay visible."""
LABEL_MARGIN = 4
"""Space between a label and its cell's border, in px."""


def _text_width(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    """Width of ``text`` in px when drawn with ``font`` (0 for an empty label)."""
    left, _, right, _ = font.getbbox(text)
    return int(np.ceil(right - left))


def labelled_sheet(panels: torch.Tensor, row_labels: Sequence[str], column_labels: Sequence[str]) -> torch.Tensor:
    """Tile opaque panels into a sheet with the column labels on top and the row labels on the left.

    Each panel is centred in a cell; all cells share one size: as wide as the wider of the panel and the
    widest column label (so a 16 px image still gets a readable label) and as tall as the taller of the
    panel and one line of text; cells are separated by ``GUTTER`` px of sheet. Black text on
    ``SHEET_GREY``, ``FONT_SIZE`` px.

    Args:
        panels: ``(R, C, 3, H, W)`` opaque RGB in [-1, 1] (e.g. ``alphavae.io.composite`` outputs).
        row_labels: ``R`` strings, drawn left of each row (all empty: no label column).
        column_labels: ``C`` strings, drawn above each column.

    Returns:
        ``(4, H', W')`` RGBA in [-1, 1] with alpha = 1, ``H' >= R * H`` and ``W' >= C * W``; panel
        pixels are kept exactly up to 8-bit quantisation.

    Raises:
        ValueError: ``panels`` is not 5-D with 3 channels, has an empty side (H or W = 0) or holds
            NaN/infinite values, or the label counts are not ``R`` and ``C``.
        TypeError: ``panels`` is not a floating-point tensor (panels are quantised by ``alphavae.io.to_pil``).
    """
    if panels.ndim != 5 or panels.shape[2] != 3:
        raise ValueError(f"panels must be shaped (R, C, 3, H, W), got {tuple(panels.shape)}")
    rows, columns, _, height, width = panels.shape
    if len(row_labels) != rows or len(column_labels) != columns:
        raise ValueError(f"need {rows} row labels and {columns} column labels, "
                         f"got {len(row_labels)} and {len(column_labels)}")
    font = ImageFont.load_default(size=FONT_SIZE)
    _, top, _, bottom = font.getbbox("Ag")
    line = int(np.ceil(bottom - top)) + 2 * LABEL_MARGIN
    row_widths = [_text_width(text, font) for text in row_labels]
    label_width = max(row_widths) + 2 * LABEL_MARGIN if any(row_widths) else 0
    cell_width = max([width] + [_text_width(text, font) + 2 * LABEL_MARGIN for text in column_labels])
    cell_height = max(height, line)
    left = GUTTER + label_width
    header = GUTTER + line
    sheet = Image.new("RGB", (left + columns * (cell_width + GUTTER), header + rows * (cell_height + GUTTER)),
                      SHEET_GREY)
    draw = ImageDraw.Draw(sheet)
    opaque = torch.ones(1, height, width, dtype=panels.dtype, device=panels.device)
    for column, text in enumerate(column_labels):
        x = left + column * (cell_width + GUTTER) + cell_width // 2
        draw.text((x, GUTTER + line // 2), text, fill="black", font=font, anchor="mm")
    for row, text in enumerate(row_labels):
        y = header + row * (cell_height + GUTTER)
        draw.text((GUTTER + LABEL_MARGIN, y + cell_height // 2), text, fill="black", font=font, anchor="lm")
        for column in range(columns):
            x = left + column * (cell_width + GUTTER) + (cell_width - width) // 2
            panel = to_pil(torch.cat([panels[row, column], opaque])).convert("RGB")  # 8-bit, NaN refused
            sheet.paste(panel, (x, y + (cell_height - height) // 2))
    return from_pil(sheet)
