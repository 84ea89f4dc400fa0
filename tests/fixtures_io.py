"""Synthetic image fixtures for tests/test_io.py, built in code (Pillow, pypng or raw PNG bytes), and a
file-permission check shared by the tests of everything that writes model folders."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import png
import torch
from PIL import Image


def random_rgba(height: int, width: int, *, seed: int = 0, levels: int = 255) -> torch.Tensor:
    """``(4, H, W)`` straight RGBA in [-1, 1] on a ``levels`` grid with ~1/4 fully transparent pixels
    (colour under them zeroed, as save_rgba stores it) and some alpha = 1/levels pixels."""
    gen = torch.Generator().manual_seed(seed)
    unit = torch.randint(0, levels + 1, (4, height, width), generator=gen).float() / levels
    unit[3, ::2, ::2] = 0
    unit[3, 1::3, ::3] = 1 / levels
    unit[:3] *= unit[3:] > 0
    return unit * 2 - 1


def write_png16(path: Path, values: np.ndarray, *, greyscale: bool, alpha: bool, **extra) -> Path:
    """Write ``values`` (``(H, W, planes)`` uint16) as a 16-bit PNG with pypng; ``extra`` goes to png.Writer."""
    height, width, planes = values.shape
    with open(path, "wb") as handle:
        png.Writer(width, height, greyscale=greyscale, alpha=alpha, bitdepth=16, **extra).write(
            handle, values.reshape(height, width * planes))
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims ``width x height`` RGBA 8-bit, with one tiny IDAT (never decodable)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 5))
                     + chunk(b"IEND", b""))
    return path


def palette_image(transparency: int | bytes) -> Image.Image:
    """4x4 palette image using entries 0-3 (one per row), with a tRNS index or per-entry alpha bytes."""
    image = Image.new("P", (4, 4))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * (3 * 252))
    image.putdata([row for row in range(4) for _ in range(4)])
    image.info["transparency"] = transparency
    return image


def soft_disc(size: int, *, hidden: tuple[float, float, float] = (1.0, -1.0, 1.0)) -> torch.Tensor:
    """``(4, size, size)`` white disc with a soft (linear ramp) edge; ``hidden`` colour under alpha = 0."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    radius = torch.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2)
    alpha01 = (size / 3 - radius).clamp(0, 4) / 4
    colour = torch.ones(3, size, size)
    colour[:, alpha01 == 0] = torch.tensor(hidden)[:, None]
    return torch.cat([colour, alpha01[None] * 2 - 1])


def assert_default_permissions(root: Path) -> None:
    """``root`` (a file, or a folder and everything in it) has the modes of freshly created files/folders
    (``0o666``/``0o777`` less the umask), not the private ones of temporary folders or safetensors
    (``0o700``/``0o600``)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *(root.rglob("*") if root.is_dir() else [])]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, f"{path}: {oct(path.stat().st_mode & 0o777)}"
