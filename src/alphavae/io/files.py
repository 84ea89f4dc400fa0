"""Image files <-> straight RGBA tensors, file walking and atomic writes.

Decoding wraps Pillow; 16-bit PNGs (which Pillow reduces to 8 bits for RGB/RGBA/grey+alpha) are
decoded and written with pypng at full precision. Loaded pixels follow the project convention:
straight alpha, float32 ``(4, H, W)``, channels R, G, B, A, all in [-1, 1]. Colour values are the
file's sRGB-encoded values; ICC profiles and gamma chunks are not applied.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import struct
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import png
import torch
from PIL import Image, UnidentifiedImageError

from alphavae.io.alpha import check_pixels, to_unit

DEFAULT_MAX_PIXELS = 8192 * 8192
"""Default limit on width * height accepted by :func:`load_rgba` (decompression-bomb guard)."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ORIENTATION_TAG = 0x0112
_PIL_GUARD_LOCK = threading.Lock()


class ImageLoadError(ValueError):
    """An input image could not be read.

    Attributes:
        path: the offending file (``pathlib.Path``).
        reason: what went wrong, in words.

    ``str(err)`` is ``"<path>: <reason>"``.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        """Pickle as ``ImageLoadError(path, reason)`` (errors cross process boundaries in batch jobs)."""
        return type(self), (self.path, self.reason)


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an ``(H, W, C)`` array, as ``PIL.ImageOps.exif_transpose``."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, k=1),
    }
    return np.ascontiguousarray(ops[orientation](array)) if orientation in ops else array


def _source_bits(image: Image.Image) -> int:
    """Bits per sample a not-yet-loaded Pillow image stores, from its tiles: 16 for a ``;16`` raw mode, a PPM's
    from its maxval above 255 (e.g. 10 for 1023), else 8 (also once loaded: the tiles are gone)."""
    for tile in getattr(image, "tile", None) or ():
        if ";16" in str(tile.args):
            return 16
        if image.format == "PPM" and isinstance(tile.args, tuple) and len(tile.args) == 2 and tile.args[1] > 255:
            return int(tile.args[1]).bit_length()
    return 8


def _warn_if_reduced(image: Image.Image, name: str) -> None:
    """Warn when Pillow is about to reduce samples of more than 8 bits to 8 (16-bit RGB/RGBA TIFF, PPM with a
    maxval above 255)."""
    bits = _source_bits(image)
    if bits > 8 and image.mode not in _SIXTEEN_BIT_MODES:
        warnings.warn(f"{name}: {bits}-bit {image.format} {image.mode} image is decoded by Pillow at 8 bits "
                      "per channel (precision lost)", stacklevel=3)


def _low_bit_grey_key(image: Image.Image) -> int | None:
    """The transparent value (tRNS) of a not-yet-loaded 2- or 4-bit grey PNG, scaled to 0-255 as Pillow scales
    its samples (Pillow keeps the key at the file's bit depth, so no pixel would match it); None otherwise."""
    key = image.info.get("transparency")
    for tile in getattr(image, "tile", None) or ():
        depth = re.search(r"\bL;([24])\b", str(tile.args))
        if depth and isinstance(key, int):
            return key * 255 // (2 ** int(depth[1]) - 1)
    return None


def _orientation(image: Image.Image, name: str) -> int:
    """EXIF orientation (1-8) of an image; 1 with a warning if the EXIF block is unreadable."""
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except (OSError, ValueError, TypeError, KeyError, IndexError, SyntaxError, struct.error) as err:
        warnings.warn(f"{name}: unreadable EXIF ignored ({type(err).__name__}: {err})", stacklevel=3)
        return 1


def _read_png16(path: Path) -> np.ndarray:
    """Decode a 16-bit PNG with pypng into ``(H, W, 4)`` float32 in [0, 1] (tRNS becomes alpha)."""
    with open(path, "rb") as handle:
        width, height, rows, info = png.Reader(file=handle).asDirect()
        planes = info["planes"]
        values = np.vstack([np.asarray(row, dtype=np.float32) for row in rows]).reshape(height, width, planes)
    values /= 2 ** info["bitdepth"] - 1
    colour = np.repeat(values[..., :1], 3, axis=2) if info["greyscale"] else values[..., :3]
    alpha = values[..., -1:] if info["alpha"] else np.ones((height, width, 1), dtype=np.float32)
    return np.concatenate([colour, alpha], axis=2)


def _pil_unit_array(image: Image.Image) -> np.ndarray:
    """Decode one Pillow frame into ``(H, W, 4)`` float32 straight RGBA in [0, 1].

    Alpha comes from an alpha band (RGBA, LA, PA, RGBa, La), an RGBA palette or
    ``info["transparency"]`` (palette tRNS, single transparent index, grey/RGB transparent value; that of a
    2- or 4-bit grey PNG rescaled, :func:`_low_bit_grey_key`, which needs the image not yet loaded),
    as ``Image.has_transparency_data`` reports; everything else is opaque. Modes I;16* and I are
    16-bit grey (0-65535; I values outside it are clipped), F is grey in [0, 1] (clamped).
    """
    key = _low_bit_grey_key(image)
    if key is not None:
        grey = np.asarray(image.convert("L"), dtype=np.float32)
        alpha = (grey != key).astype(np.float32)
        return np.dstack([grey, grey, grey, alpha * 255]) / 255
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        grey = np.asarray(image, dtype=np.float32)
        if not np.isfinite(grey).all():
            raise ValueError(f"mode {image.mode} image contains NaN or infinite values")
        grey = np.clip(grey if image.mode == "F" else grey / 65535, 0, 1)
        return np.dstack([grey, grey, grey, np.ones_like(grey)])
    if image.has_transparency_data:
        source = image.convert("LA") if image.mode == "La" else image  # Pillow has no La -> RGBA
        return np.asarray(source.convert("RGBA"), dtype=np.float32) / 255
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    return np.dstack([rgb, np.ones(rgb.shape[:2], dtype=np.float32)])


_TIFF_EXTRA_SAMPLES = 338  # TIFF tag: 0 unspecified, 1 associated (premultiplied) alpha, 2 unassociated alpha


def _warn_ignored_channel(image: Image.Image, name: str) -> None:
    """Warn when a channel that may hold alpha is ignored by Pillow, the image loading as opaque: a 32-bit BMP's
    fourth byte (plain BI_RGB: padding by the format, while some tools store alpha there; needs the unloaded
    image, its tile) or a TIFF extra sample marked unspecified (ExtraSamples 0, not alpha by the format)."""
    if image.format == "BMP" and any(tile.args and tile.args[0] == "BGRX" for tile in image.tile):
        warnings.warn(f"{name}: 32-bit BMP without an alpha mask: its 4th byte is padding by the format and is "
                      "ignored (loaded as opaque); if it holds alpha, save the image as PNG", stacklevel=3)
    if (image.format == "TIFF" and "A" not in image.mode
            and 0 in tuple(image.tag_v2.get(_TIFF_EXTRA_SAMPLES, ()) or ())):
        warnings.warn(f"{name}: TIFF with an extra sample marked unspecified (ExtraSamples 0), not alpha: it is "
                      "ignored (loaded as opaque); if it holds alpha, save the image as PNG or mark it as "
                      "unassociated alpha", stacklevel=3)


def _warn_first_frame(image: Image.Image, name: str) -> None:
    """Warn when an image has several frames (only the current one is used: the first, unless the caller seeked)."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        which = "the first" if image.tell() == 0 else f"frame {image.tell() + 1}"
        warnings.warn(f"{name}: {frames} frames, using {which} only", stacklevel=3)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """``(H, W, 4)`` [0, 1] array -> ``(4, H, W)`` float32 [-1, 1] tensor."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1).contiguous()
    return tensor.mul_(2).sub_(1)


def special_file_kind(path: str | os.PathLike) -> str | None:
    """Name the kind of ``path`` when it is a device, FIFO or socket (reading one could block or never end).

    Args:
        path: any path; symlinks are followed.

    Returns:
        ``"a FIFO (named pipe)"``, ``"a character device"``, ``"a block device"`` or ``"a socket"``;
        None for a regular file, a folder, or a path that does not exist or cannot be examined.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    kinds = [(stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), None)


def _open_guarded(path: Path, max_pixels: int | None) -> Image.Image:
    """``Image.open`` with Pillow's decompression-bomb guard set to ``max_pixels`` (None: no limit).

    ``Image.MAX_IMAGE_PIXELS`` is process-global: it is changed only under a lock and only for the
    duration of the header read, then restored.
    """
    with _PIL_GUARD_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def load_rgba(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Load any image Pillow can open as straight RGBA.

    Handles: palette images with a transparent index or per-entry alpha (exact alpha), L / LA / grey with a
    transparent value, also at 2 or 4 bits (R = G = B = L), RGB / RGBX / CMYK / YCbCr (alpha = 1; CMYK uses Pillow's
    naive conversion), premultiplied RGBa / La (un-premultiplied by Pillow), 16-bit PNGs of every colour type at
    full precision (read with pypng, divided by 65535, tRNS honoured), I;16 / I grey as 16-bit (value / 65535;
    32-bit I values outside 0-65535 are clipped), F grey as [0, 1] (clamped); a 32-bit BMP without an alpha mask as
    opaque RGB (warned: its 4th byte is padding by the format, though some tools store alpha there), and so is a
    TIFF whose extra sample is marked unspecified (warned: ExtraSamples 0 is not alpha by the format); other sources
    of more than 8 bits that Pillow reduces to 8 bits (16-bit RGB/RGBA TIFF, PPM with a maxval above 255) load with
    a warning. Multi-frame files (GIF, APNG, TIFF) give their first frame with a warning. EXIF orientation is
    applied (an unreadable EXIF block is ignored with a warning).

    Args:
        path: image file.
        max_pixels: largest accepted width * height (checked from the header, before decoding);
            None disables the guard.

    Returns:
        ``(4, H, W)`` float32 straight RGBA in [-1, 1] (quantisation steps 2/255 or 2/65535).

    Raises:
        ImageLoadError: missing, empty, truncated, corrupt or non-image file, a device, FIFO or
            socket (never opened), an image above ``max_pixels`` (including Pillow's
            DecompressionBombError/Warning), or NaN in float data.
        ValueError: ``max_pixels`` below 1 (a programming error, not a bad file).
    """
    path = Path(path)
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1 or None, got {max_pixels!r}")
    kind = special_file_kind(path)
    if kind:
        raise ImageLoadError(path, f"is {kind}, not an image file (not opened)")
    try:
        image = _open_guarded(path, max_pixels)
    except FileNotFoundError as err:
        raise ImageLoadError(path, "file not found") from err
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        size = re.search(r"Image size \((\d+) pixels\)", str(err))  # Pillow's wording; its limit may be 2x ours
        raise ImageLoadError(path, f"{size[1] if size else 'too many'} pixels exceeds max_pixels={max_pixels} "
                                   "(refused from the header, before decoding)") from err
    except Exception as err:
        if path.is_file() and path.stat().st_size == 0:
            raise ImageLoadError(path, "empty file (0 bytes)") from err
        if type(err) is OSError and err.errno is None:  # Pillow knew the format, then its header or data failed
            raise ImageLoadError(path, f"corrupt or truncated image file (OSError: {err})") from err
        if isinstance(err, UnidentifiedImageError):  # its message repeats the path
            raise ImageLoadError(path, "not a readable image (Pillow recognises no image format in it)") from err
        raise ImageLoadError(path, f"not a readable image ({type(err).__name__}: {err})") from err
    with image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageLoadError(path, f"{width}x{height} = {width * height} pixels exceeds "
                                       f"max_pixels={max_pixels}")
        try:
            _warn_first_frame(image, str(path))
            _warn_ignored_channel(image, str(path))
            if image.format == "PNG" and _source_bits(image) == 16:
                array = _read_png16(path)
            else:
                _warn_if_reduced(image, str(path))
                array = _pil_unit_array(image)
        except Exception as err:
            raise ImageLoadError(path, f"cannot decode {image.format} {image.mode} image "
                                       f"({type(err).__name__}: {err})") from err
        orientation = _orientation(image, str(path))
    return _to_tensor(_orient(array, orientation))


def from_pil(image: Image.Image) -> torch.Tensor:
    """Convert a Pillow image (any mode) to straight RGBA, with the mode handling of :func:`load_rgba`.

    Only what Pillow decodes is seen: 16-bit RGB/RGBA/LA PNGs and TIFFs become 8-bit (warned when the
    image is not loaded yet, as after ``Image.open``); use :func:`load_rgba` for full-precision PNG. EXIF
    orientation is applied; a multi-frame image gives its current frame (warned).

    Args:
        image: a ``PIL.Image.Image``.

    Returns:
        ``(4, H, W)`` float32 straight RGBA in [-1, 1].

    Raises:
        TypeError: not a Pillow image.
        ValueError: mode F (float) data containing NaN or infinities.
        OSError: Pillow cannot decode the data of a not-yet-loaded image (e.g. a truncated file).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"from_pil needs a PIL.Image.Image, got {type(image).__name__}")
    name = getattr(image, "filename", "") or "from_pil"
    _warn_if_reduced(image, name)
    _warn_first_frame(image, name)
    return _to_tensor(_orient(_pil_unit_array(image), _orientation(image, name)))


def _quantise(pixels: torch.Tensor, bit_depth: int) -> np.ndarray:
    """``(4, H, W)`` [-1, 1] -> ``(H, W, 4)`` integers; colour zeroed where the quantised alpha is 0."""
    check_pixels(pixels)
    if pixels.ndim != 3:
        raise ValueError(f"expected one image shaped (4, H, W), got {tuple(pixels.shape)}")
    if not torch.isfinite(pixels).all():
        raise ValueError("pixels contain NaN or infinite values")
    top = 2**bit_depth - 1
    values = torch.round(to_unit(pixels.detach().float().cpu()).clamp(0, 1) * top)
    values[:3] *= values[3:] > 0
    return values.permute(1, 2, 0).numpy().astype(np.uint8 if bit_depth == 8 else np.uint16)


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """Convert straight RGBA pixels to an 8-bit Pillow RGBA image (same quantisation as :func:`save_rgba`).

    Args:
        pixels: ``(4, H, W)`` float straight RGBA in [-1, 1] (values outside are clamped).

    Returns:
        ``PIL.Image.Image`` of mode ``"RGBA"``, values ``round(unit * 255)``, colour 0 where alpha is 0.

    Raises:
        TypeError, ValueError: not a float ``(4, H, W)`` tensor, or NaN/inf values.
    """
    return Image.fromarray(_quantise(pixels, 8))


def save_rgba(pixels: torch.Tensor, path: str | os.PathLike, *, bit_depth: int = 8,
              overwrite: bool = False) -> Path:
    """Save straight RGBA pixels as a lossless 4-channel PNG, atomically.

    Values are clamped to [-1, 1] and quantised to ``round(unit * (2**bit_depth - 1))``. Where the
    quantised alpha is 0, the stored colour is 0 (transparent black): files are deterministic and no
    hidden colour leaks, so two inputs that differ only under alpha = 0 save byte-identically.
    Always 4 channels, also when fully opaque. 8-bit files are written by Pillow, 16-bit by pypng;
    :func:`load_rgba` reads either back exactly.

    Args:
        pixels: ``(4, H, W)`` float straight RGBA in [-1, 1].
        path: destination, must end in ``.png``; parent folders are created.
        bit_depth: 8 or 16 bits per channel.
        overwrite: replace an existing file instead of raising.

    Returns:
        The written path.

    Raises:
        ValueError: bad suffix, bit depth, shape, or NaN/inf values.
        TypeError: not a float tensor.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        IsADirectoryError: ``path`` is a folder (also with ``overwrite``; :func:`atomic_write`).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: save_rgba writes PNG only; use a .png suffix")
    if bit_depth not in (8, 16):
        raise ValueError(f"{path}: bit_depth must be 8 or 16, got {bit_depth!r}")
    array = _quantise(pixels, bit_depth)
    height, width = array.shape[:2]

    def write(target: Path) -> None:
        if bit_depth == 8:
            Image.fromarray(array).save(target, format="PNG")
        else:
            with open(target, "wb") as handle:
                png.Writer(width, height, greyscale=False, alpha=True, bitdepth=16).write(
                    handle, array.reshape(height, width * 4))

    return atomic_write(path, write, overwrite=overwrite)


def _current_umask() -> int:
    """The process umask (read once at import)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def set_default_permissions(path: str | os.PathLike) -> None:
    """Give a file, or a folder and everything under it, the permissions of freshly created files and
    folders: ``0o666 & ~umask`` for files, ``0o777 & ~umask`` for folders.

    For model files written through places that are private by design (``tempfile.mkdtemp`` folders
    are 0o700; safetensors >= 0.8 writes 0o600 files), so that the published model is as readable as
    any other file its user writes. Apply it only to what the caller itself wrote.

    Args:
        path: an existing file or folder (symlinks inside a folder are not followed).

    Raises:
        OSError: a permission cannot be changed (e.g. files owned by another user).
    """
    if not os.path.isdir(path):
        os.chmod(path, 0o666 & ~_UMASK)
        return
    os.chmod(path, 0o777 & ~_UMASK)
    for parent, folders, files in os.walk(path):
        for names, mode in ((folders, 0o777), (files, 0o666)):
            for name in names:
                entry = os.path.join(parent, name)
                if not os.path.islink(entry):
                    os.chmod(entry, mode & ~_UMASK)


_TEMP_STEM_BYTES = 100
"""Longest name part (bytes) in an :func:`atomic_write` temporary name: the name plus 14 bytes of
dot, random part and ``.tmp`` must not exceed the file system's name limit (255 bytes) when the
final name itself fits."""


def _temp_stem(name: str) -> str:
    """``name`` cut to at most ``_TEMP_STEM_BYTES`` bytes (file-system encoding), for a temporary name."""
    encoded = os.fsencode(name)
    return name if len(encoded) <= _TEMP_STEM_BYTES else os.fsdecode(encoded[:_TEMP_STEM_BYTES])


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Write a file atomically: ``write_fn`` fills a temporary file in the same folder, then ``os.replace``.

    Readers never see a partial file, and a failed write leaves no file behind. The temporary file
    is hidden (``.<name>.<random>.tmp``, skipped by :func:`list_images`; ``<name>`` cut to its first
    100 bytes, so any final name the file system accepts can be written), is fsynced before the
    rename, and gets the usual ``0o666 & ~umask`` permissions.

    Args:
        path: final destination; parent folders are created.
        write_fn: called once with the temporary path (``pathlib.Path``); must write the whole file
            there (e.g. ``lambda p: safetensors.torch.save_file(t, p)``).
        overwrite: replace an existing ``path``; otherwise raise. (The check runs before and after
            ``write_fn``; a file created by someone else in between is still replaced.)

    Returns:
        ``path`` as a ``pathlib.Path``.

    Raises:
        IsADirectoryError: ``path`` is a folder (also with ``overwrite``).
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        Any exception of ``write_fn`` (after removing the temporary file).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; a file cannot replace it")
    if not overwrite and path.exists():
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = stage_file(path, write_fn)
    try:
        if not overwrite and path.exists():
            raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """:func:`atomic_write` of ``text``, encoded as UTF-8.

    Returns:
        ``path`` as a ``pathlib.Path``.

    Raises:
        IsADirectoryError: ``path`` is a folder.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        UnicodeEncodeError: ``text`` holds a lone UTF-16 surrogate (see :func:`check_text`); nothing is written.
        OSError: the file cannot be written.
    """
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"), overwrite=overwrite)


def stage_file(path: str | os.PathLike, write_fn: Callable[[Path], None]) -> Path:
    """The first half of :func:`atomic_write`: ``write_fn`` fills a hidden temporary file beside ``path``
    (``.<name>.<random>.tmp``, in ``path``'s existing folder), which is fsynced and given the usual
    ``0o666 & ~umask`` permissions. The caller renames it into place (``os.replace``) or removes it, e.g.
    to put several files in place only once all of them are written.

    Returns:
        The temporary file.

    Raises:
        OSError: the temporary file cannot be created (e.g. ``path``'s folder does not exist or is read-only).
        Any exception of ``write_fn`` or of the fsync (after removing the temporary file).
    """
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{_temp_stem(path.name)}.", suffix=".tmp")
    os.close(handle)
    temp = Path(temp_name)
    try:
        write_fn(temp)
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        set_default_permissions(temp)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 (64 characters) of a file's bytes, read in 1 MiB blocks.

    Raises:
        OSError: the file cannot be read (FileNotFoundError, IsADirectoryError, PermissionError, ...).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of ``path``, a ``what`` (e.g. "manifest"), with one-line errors naming it.

    A leading byte-order mark (U+FEFF, as Windows editors and spreadsheet exports write) is dropped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a folder, or its bytes are not UTF-8 (names the byte offset).
        OSError: it cannot be read otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a {what}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def single_line(text: str) -> str:
    """``text`` for one line of a report on a terminal or log: characters ``str.isprintable`` rejects escaped.

    A file name may hold a newline, which would split one failure line into two (the second looking like
    another entry), or bytes that are not UTF-8 (lone surrogates from ``os.fsdecode``). Newline, carriage return
    and tab become ``\\n``, ``\\r``, ``\\t``; such a byte ``\\xNN`` (as in the eval reports); any other
    non-printable character ``\\xNN`` or ``\\uNNNN``.

    Returns:
        The escaped text; printable text (any script, spaces) unchanged.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def _escaped(char: str) -> str:
    """The escape :func:`single_line` writes for one non-printable character."""
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte os.fsdecode could not decode (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def check_text(text: str, what: str) -> str:
    """Check that ``text`` is valid Unicode text, which a tokenizer takes.

    JSON escapes such as ``"\\ud83d"`` and command-line arguments that are not UTF-8 (surrogate-escaped by
    Python) give lone UTF-16 surrogates, which cannot be encoded as UTF-8.

    Args:
        text: the caption or prompt.
        what: starts the error message, e.g. ``"captions.jsonl:3: caption"``.
    Returns:
        ``text`` unchanged.
    Raises:
        ValueError: ``"<what> is not valid text (a lone UTF-16 surrogate "...")"``.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid text (a lone UTF-16 surrogate {json.dumps(text)})") from None
    return text


def read_jsonl(path: str | os.PathLike, what: str) -> list[tuple[int, object]]:
    """Parse a JSON-lines file, a ``what`` (named in errors), skipping blank lines.

    Returns:
        ``(line number, parsed JSON value)`` for each non-blank line, in file order (lines count from 1).

    Raises:
        The errors of :func:`read_text_file`, and ValueError naming the file and line for a line that
        is not JSON.
    """
    values = []
    for number, line in enumerate(read_text_file(path, what).splitlines(), start=1):
        if line.strip():
            try:
                values.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
    return values


def image_extensions() -> frozenset[str]:
    """File suffixes of the formats the installed Pillow can open (not only save).

    Returns:
        Lower-case suffixes with the dot, e.g. ``{".png", ".webp", ".jpg", ".gif", ".tif", ...}``.
    """
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _folder_images(root: Path, suffixes: frozenset[str], recursive: bool) -> list[tuple[Path, Path]]:
    """Visible image files under ``root`` as ``(absolute, relative)``, sorted by relative path."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")] if recursive else []
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                absolute = Path(folder, name)
                found.append((absolute, absolute.relative_to(root)))
    return sorted(found, key=lambda item: item[1].as_posix())


def _as_paths(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """One path or an iterable of paths -> list of ``Path``."""
    return [Path(inputs)] if isinstance(inputs, (str, os.PathLike)) else [Path(p) for p in inputs]


def list_images(inputs: str | os.PathLike | Iterable[str | os.PathLike], *,
                recursive: bool = True) -> list[tuple[Path, Path]]:
    """Expand files and folders into the image files to process, in a deterministic order.

    A path given directly that is not a folder (a file, a FIFO, a device) is taken whatever its suffix
    (loading reports a bad one). A folder
    contributes its files whose suffix (case-insensitive) is in :func:`image_extensions`, skipping
    hidden files and folders (names starting with ``.``, e.g. temporary files of :func:`atomic_write`);
    symlinked folders inside it are not followed; symlinked files are listed under their own name.
    Entries with an image suffix that cannot be images (a dangling symlink, a FIFO, a device) are
    listed too, so that loading reports them (:func:`load_rgba` never opens those). Inputs keep
    their order; each folder's files are sorted by relative path; a file reached twice through
    overlapping inputs (same absolute path) is listed once.

    Args:
        inputs: one path or an iterable of paths (files and/or folders).
        recursive: descend into sub-folders.

    Returns:
        ``[(absolute_path, relative_path), ...]``: the absolute (not symlink-resolved) path and the
        path relative to the folder given (for a file given directly: its name) -- use it to mirror
        the layout in an output folder.

    Raises:
        FileNotFoundError: an input does not exist (names it).
    """
    suffixes = image_extensions()
    found: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for root in _as_paths(inputs):
        if not root.exists():
            raise FileNotFoundError(f"{root}: input does not exist")
        root = Path(os.path.abspath(root))
        candidates = _folder_images(root, suffixes, recursive) if root.is_dir() else [(root, Path(root.name))]
        for absolute, relative in candidates:
            if absolute not in seen:
                seen.add(absolute)
                found.append((absolute, relative))
    return found


def list_images_reporting(inputs: str | os.PathLike | Iterable[str | os.PathLike]
                          ) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """:func:`list_images` for batch jobs that skip bad inputs: a bad input is returned with its reason, not raised.

    Bad inputs: a missing path ("input does not exist"), dangling symlink or symlink loop, a path that is neither a
    regular file nor a folder (device, FIFO, socket: never opened, reading one could block), and a
    folder without any image file (or one that cannot be read).

    Args:
        inputs: one path or an iterable of paths (files and/or folders).

    Returns:
        ``(images, failures)``: ``images`` as :func:`list_images` gives them (a file reached twice
        through overlapping inputs is listed once); ``failures`` as ``(input path as given, reason)``,
        in input order.
    """
    images: list[tuple[Path, Path]] = []
    failures: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for root in _as_paths(inputs):
        if not root.exists():
            kind = "a symlink loop" if is_symlink_loop(root) else "a dangling symlink" if root.is_symlink() else None
            failures.append((root, f"input is {kind}" if kind else "input does not exist"))
            continue
        if not root.is_dir() and not root.is_file():
            kind = special_file_kind(root) or "not a regular file"
            failures.append((root, f"input is {kind}, not an image file or folder"))
            continue
        found = list_images([root])
        if not found:
            readable = os.access(root, os.R_OK | os.X_OK)
            failures.append((root, "no image files in this folder" if readable
                             else "folder cannot be read (permission denied)"))
        images += [(absolute, relative) for absolute, relative in found if absolute not in seen]
        seen.update(absolute for absolute, _ in found)
    return images, failures


def check_writable_folder(folder: str | os.PathLike, what: str = "files") -> None:
    """Fail early, before long work, if files could not be created in ``folder``.

    Creates nothing: probes ``folder``, or where it does not exist yet its nearest existing parent
    (where it would be created), with a hidden temporary file that is removed again. A zero-byte
    probe does not detect a full disk.

    Args:
        folder: the destination folder (need not exist yet).
        what: what will be written there, for the message (e.g. ``"outputs"``).

    Raises:
        NotADirectoryError: ``folder`` or a parent exists and is not a folder (or is a dangling
            symlink); names both.
        OSError: ``folder`` cannot be created or written to (read-only, permission denied); one
            line, ``"<folder>: cannot write <what> there (<reason>)"``.
    """
    folder = Path(folder)
    existing = next(path for path in (folder, *folder.absolute().parents) if os.path.lexists(path))
    if not existing.is_dir():
        kind = "a dangling symlink" if existing.is_symlink() and not existing.exists() else "not a folder"
        raise NotADirectoryError(f"{folder}: cannot write {what} there ({existing} is {kind})")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".write-probe.", suffix=".tmp")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise OSError(f"{folder}: cannot write {what} there ({err.strerror or err})") from err


def resolve_path(path: str | os.PathLike) -> Path:
    """``Path(path).resolve()``: absolute, symlinks followed (the path need not exist), with a symlink loop as an
    error that names ``path`` in one line on every Python (before 3.13 ``resolve()`` raises RuntimeError for a
    loop, since then it passes the loop over silently).

    Raises:
        OSError: ``path``, or a folder on it, is a symlink loop; ``errno`` ELOOP, ``"<path> is a symlink loop"``.
    """
    try:
        resolved = Path(path).resolve()
    except RuntimeError:
        resolved = None
    if resolved is None or is_symlink_loop(path):
        error = OSError(f"{path} is a symlink loop")
        error.errno = errno.ELOOP
        raise error from None
    return resolved


def is_symlink_loop(path: str | os.PathLike) -> bool:
    """True if following ``path`` runs into a symlink loop (the link, or a folder on the way, leads back to itself)."""
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def folder_relation(folder: str | os.PathLike, other: str | os.PathLike) -> str | None:
    """How ``folder`` lies with respect to ``other``, compared after resolving symlinks (neither need exist).

    Returns:
        ``"is the same folder as"``, ``"is inside"`` or ``"contains"`` (reads as ``f"{folder} {relation}
        {other}"``), or None when the two are apart.

    Raises:
        OSError: either path is a symlink loop (:func:`resolve_path`, names it).
    """
    path, reference = resolve_path(Path(folder).expanduser()), resolve_path(Path(other).expanduser())
    if path == reference:
        return "is the same folder as"
    if path.is_relative_to(reference):
        return "is inside"
    if reference.is_relative_to(path):
        return "contains"
    return None


def check_output_folder(output_dir: str | os.PathLike,
                        inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> None:
    """Refuse an output folder that exists as something else than a folder, or lies in an input tree.

    Args:
        output_dir: folder outputs will be written to (need not exist yet).
        inputs: the input files/folders of the job (as given to :func:`list_images`).

    Raises:
        ValueError: ``output_dir`` exists and is not a folder; or it equals or lies inside an input folder
            (:func:`check_output_outside_inputs`, names both).
    """
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"output {output_dir} exists and is not a folder")
    check_output_outside_inputs(output_dir, inputs)


def check_output_outside_inputs(output_dir: str | os.PathLike,
                                inputs: str | os.PathLike | Iterable[str | os.PathLike], *,
                                what: str = "output folder") -> None:
    """Refuse to write into an input tree.

    Args:
        output_dir: folder outputs will be written to (need not exist yet).
        inputs: the input files/folders of the job (as given to :func:`list_images`).
        what: what ``output_dir`` is, for the message (e.g. "grid folder").

    Raises:
        ValueError: ``output_dir`` equals or lies inside an input folder, after resolving symlinks
            (names both). An input file's own folder is not an input tree: writing next to a
            single input file is allowed (the job refuses to overwrite the file itself).
        OSError: ``output_dir`` is a symlink loop (:func:`resolve_path`, names it). An input that is a symlink
            loop is no folder and is passed over (the job reports it).
    """
    output = resolve_path(output_dir)
    for root in _as_paths(inputs):
        try:
            resolved = resolve_path(root)
        except OSError:
            continue
        if resolved.is_dir() and output.is_relative_to(resolved):
            raise ValueError(f"{what} {output_dir} is inside input folder {root}; choose one outside the inputs")


def check_inputs_outside_output(output_dir: str | os.PathLike,
                                inputs: str | os.PathLike | Iterable[str | os.PathLike], *,
                                what: str = "run folder") -> None:
    """Refuse an output folder that holds an input, for jobs that replace or delete their own subfolders
    (a training run's ``final/``, ``checkpoints/``, ``validation/``): an input there could be destroyed.

    Args:
        output_dir: folder the job owns (need not exist yet).
        inputs: the job's input files/folders (data folder, model folders, config files).
        what: what ``output_dir`` is, for the message.

    Raises:
        ValueError: an input equals or lies inside ``output_dir`` after resolving symlinks (names both); an input
            that is a symlink loop counts where the link itself lies.
        OSError: ``output_dir``, or the folder of an input, is a symlink loop (:func:`resolve_path`, names it).
    """
    output = resolve_path(Path(output_dir).expanduser())
    for root in _as_paths(inputs):
        root = root.expanduser()
        try:
            resolved = resolve_path(root)
        except OSError:
            resolved = resolve_path(root.parent) / root.name
        if resolved.is_relative_to(output):
            raise ValueError(f"{what} {output_dir} contains input {root}; choose a {what} apart from the inputs")
