"""RGBA training datasets: short-side resize, crops, blend augmentation, opaque (RGB) views.

Every random choice for item ``i`` of epoch ``e`` comes from one ``torch.Generator`` seeded from
``(seed, e, i)`` (:func:`item_generator`), so an item is the same in any worker, any process and
after a resume. :class:`StepBatchSampler` turns a global step number into the indices of that step's
global batch and of this process's share of it, which makes training resumable at any step and a
multi-process run draw the same global batches as a single process.

Sharding with accelerate: build one ``DataLoader(dataset, batch_sampler=StepBatchSampler(...,
rank=accelerator.process_index, world_size=accelerator.num_processes))`` per process and do NOT pass
that loader to ``accelerator.prepare`` (accelerate would shard the already-sharded batches again);
move each batch to ``accelerator.device`` yourself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm.auto import tqdm

from alphavae import io
from alphavae.data.manifest import data_folder, read_manifest

logger = logging.getLogger(__name__)

CROPS = ("random", "center", "none")
OPAQUE_BACKGROUNDS = ("solid", "palette", "image")


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """Return a CPU ``torch.Generator`` seeded from ``(seed, epoch, index)``.

    The three integers (each >= 0) are mixed by ``numpy.random.SeedSequence`` so that neighbouring
    tuples give unrelated streams. Raises ValueError for negative values (SeedSequence rejects them).
    """
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def palette_colour(generator: torch.Generator) -> torch.Tensor:
    """Draw one of the 27 blend colours {0, 0.5, 1}^3 (AlphaVAE §4.2), returned in [-1, 1] space.

    Returns a float32 tensor of shape (3, 1, 1) (broadcasts over an image) with values in {-1, 0, 1}.
    """
    return (torch.randint(0, 3, (3,), generator=generator).float() - 1.0).view(3, 1, 1)


def solid_colour(generator: torch.Generator) -> torch.Tensor:
    """Draw a colour uniformly from the RGB cube, returned as a (3, 1, 1) float32 tensor in [-1, 1]."""
    return (torch.rand(3, generator=generator) * 2.0 - 1.0).view(3, 1, 1)


def check_probabilities(prefix: str = "", **values: float) -> None:
    """Raise ``ValueError`` naming the first of ``values`` outside [0, 1] (as ``<prefix><name>``); used for the
    augmentation settings by :class:`RGBADataset` and ``alphavae.train.config.DataConfig``."""
    for name, value in values.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{prefix}{name} must be in [0, 1], got {value}")


def scale_alpha(pixels: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiply the alpha of straight RGBA by ``factor`` in [0, 1], leaving the colour as it is.

    ``pixels``: (4, H, W) straight RGBA in [-1, 1]. Returns a new (4, H, W) tensor whose alpha in [0, 1]
    is ``factor`` times the input's (in [-1, 1] space: ``(a + 1) * factor - 1``): opaque regions become
    uniformly translucent, transparent ones stay transparent.
    """
    scaled = pixels.clone()
    scaled[3] = (pixels[3] + 1.0) * factor - 1.0
    return scaled


def flatten(pixels: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Composite ``pixels`` over ``background`` and return opaque RGBA (alpha = 1).

    ``pixels``: (4, H, W) straight RGBA in [-1, 1]; ``background``: (3, 1, 1) colour or (3, H, W) image in
    [-1, 1]. Returns (4, H, W) in [-1, 1], dtype of ``pixels``, with the alpha channel equal to 1. Uses
    :func:`alphavae.io.composite` (``C * a + b * (1 - a)``), whose TypeError/ValueError it raises for bad
    pixels or a background that does not broadcast.
    """
    rgb = io.composite(pixels, background)
    return torch.cat([rgb, torch.ones_like(rgb[:1])], dim=0)


def _crop_offsets(height: int, width: int, size: int, mode: str, generator: torch.Generator) -> tuple[int, int]:
    """Top/left offsets of a ``size`` crop (random or centred) of an image at least that large."""
    if mode == "center":
        return (height - size) // 2, (width - size) // 2
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    return top, left


def crop_square(pixels: torch.Tensor, size: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Crop an image to a ``size x size`` square; sides shorter than ``size`` are first padded.

    Padding is transparent black (all four channels -1), split evenly on both sides (the extra pixel
    of an odd split goes bottom/right).

    Args:
        pixels: ``(4, H, W)`` straight RGBA in [-1, 1].
        size: side of the crop in pixels.
        mode: ``"random"`` (offsets drawn from ``generator``) or ``"center"`` (offsets round down;
            ``generator`` unused).
        generator: torch RNG for the random offsets.

    Returns:
        ``(4, size, size)`` straight RGBA in [-1, 1] (a view of ``pixels`` when no padding was needed).

    Raises:
        ValueError: ``mode`` is neither ``"random"`` nor ``"center"``.
    """
    if mode not in ("random", "center"):
        raise ValueError(f"crop mode must be 'random' or 'center', got {mode!r}")
    _, height, width = pixels.shape
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h or pad_w:
        pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        pixels = torch.nn.functional.pad(pixels, pad, value=-1.0)
        height, width = pixels.shape[1:]
    top, left = _crop_offsets(height, width, size, mode, generator)
    return pixels[:, top : top + size, left : left + size]


def _resolve_files(source: str | Path | Sequence[str | Path], split: str | None) -> list[Path]:
    """Turn a manifest path, a folder or a list of files into a list of image paths: a folder's sorted by relative
    path (:func:`alphavae.io.list_images`), a manifest's in file order (records of ``split`` only), a list's as given.

    Raises ValueError for a ``split`` without a manifest, or a path that is neither a folder nor a ``.jsonl`` file.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            if split is not None:
                raise ValueError(f"{path}: split={split!r} needs a manifest, not a folder")
            return [absolute for absolute, _ in io.list_images([path])]
        if path.suffix == ".jsonl":
            return [data_folder(path) / r["file"] for r in read_manifest(path) if split is None or r["split"] == split]
        raise ValueError(f"{path}: expected a folder of images or a manifest .jsonl file")
    if split is not None:
        raise ValueError(f"split={split!r} needs a manifest, not a list of files")
    return [Path(p) for p in source]


class RGBADataset(Dataset):
    """Square RGBA training crops from files, a folder or a fetched manifest split.

    Args:
        source: a manifest ``.jsonl`` (written by :func:`alphavae.data.fetch.fetch_dataset`), a
            folder (walked by :func:`alphavae.io.list_images`) or a sequence of image paths.
        split: with a manifest, keep only this split (``"train"``, ``"val"``, ``"test"``).
        size: crop side in pixels (> 0).
        crop: ``"random"``, ``"center"`` or ``"none"`` (no crop: items keep their resized size, so
            batch only equal-size images or use batch size 1).
        resize_short_side: first resize (alpha-correct, premultiplied: :func:`alphavae.io.resize_rgba`)
            so the short side equals ``size`` (up or down), as in AlphaVAE §5.1. Without it,
            images smaller than ``size`` are padded with transparent pixels.
        blend_prob: probability in [0, 1] of the blend augmentation (AlphaVAE §4.2, paper value 0.3):
            the crop is replaced by its composite over one of the 27 colours {0, 0.5, 1}^3, alpha = 1.
        alpha_scale_prob: probability in [0, 1] that a crop not blended has its alpha multiplied by a
            factor drawn uniformly from [``alpha_scale_min``, 1] (:func:`scale_alpha`; this project's
            translucency augmentation, not the paper's: icon and emoji data has few translucent regions).
            0 (default) draws no extra random numbers, so items are those of earlier versions.
        alpha_scale_min: lowest alpha factor in [0, 1] of that augmentation (near 0, crops become almost
            invisible and their colour carries little signal; 0.25 by default).
        opaque: return RGB ``(3, size, size)`` composites for training an RGB VAE: the crop is always
            flattened over a background chosen by ``opaque_background``; blend and translucency
            augmentation are skipped.
        opaque_background: ``"solid"`` (uniform colour from the RGB cube, default), ``"palette"``
            (one of the 27 blend colours) or ``"image"`` (another item of the same epoch, itself
            flattened over a uniform colour, then used as the background; ``"solid"`` when the dataset
            holds a single image).
        seed: base seed (>= 0) of :func:`item_generator`.
        max_pixels: pixel limit passed to :func:`alphavae.io.load_rgba` (decompression-bomb guard;
            None: no limit).

    Items: ``dataset[i]`` uses the epoch set by :meth:`set_epoch` (default 0); ``dataset[(e, i)]``
    names the epoch explicitly (what :class:`StepBatchSampler` yields). Each item is a float32 tensor
    ``(4, size, size)`` straight RGBA in [-1, 1] (or ``(3, size, size)`` with ``opaque=True``).
    Raises :class:`alphavae.io.ImageLoadError` naming the file when it cannot be read (or its resized size
    would exceed ``max_pixels``), ValueError for bad arguments, a bad manifest or no images found,
    FileNotFoundError for a missing manifest, IndexError for an index out of range.
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        *,
        split: str | None = None,
        size: int = 256,
        crop: str = "random",
        resize_short_side: bool = True,
        blend_prob: float = 0.0,
        alpha_scale_prob: float = 0.0,
        alpha_scale_min: float = 0.25,
        opaque: bool = False,
        opaque_background: str = "solid",
        seed: int = 0,
        max_pixels: int | None = io.DEFAULT_MAX_PIXELS,
    ) -> None:
        if size <= 0:
            raise ValueError(f"size must be > 0, got {size}")
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        check_probabilities(blend_prob=blend_prob, alpha_scale_prob=alpha_scale_prob, alpha_scale_min=alpha_scale_min)
        if opaque_background not in OPAQUE_BACKGROUNDS:
            raise ValueError(f"opaque_background must be one of {OPAQUE_BACKGROUNDS}, got {opaque_background!r}")
        self.files = _resolve_files(source, split)
        if not self.files:
            raise ValueError(f"{source}: no images found" + (f" in split {split!r}" if split else ""))
        self.size, self.crop, self.resize_short_side = size, crop, resize_short_side
        self.blend_prob, self.opaque, self.opaque_background = blend_prob, opaque, opaque_background
        self.alpha_scale_prob, self.alpha_scale_min = alpha_scale_prob, alpha_scale_min
        self.seed, self.max_pixels, self.epoch = seed, max_pixels, 0

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used by plain integer indices (>= 0)."""
        self.epoch = epoch

    def load(self, index: int, generator: torch.Generator) -> torch.Tensor:
        """Load file ``index`` and return its resized, cropped straight RGBA (4, h, w) float32 in [-1, 1]
        (``(4, size, size)`` unless ``crop="none"``); ``generator`` draws the random crop offsets.

        Raises :class:`alphavae.io.ImageLoadError` when the file cannot be read or its short-side resize
        would exceed ``max_pixels``.
        """
        path = self.files[index]
        pixels = io.load_rgba(path, max_pixels=self.max_pixels)
        if self.resize_short_side and min(pixels.shape[1:]) != self.size:
            self._check_resized_size(path, *pixels.shape[1:])
            pixels = io.resize_short_side(pixels, self.size)
        if self.crop == "none":
            return pixels
        return crop_square(pixels, self.size, self.crop, generator)

    def _check_resized_size(self, path: Path, height: int, width: int) -> None:
        """Raise ImageLoadError when resizing the short side to ``size`` would exceed ``max_pixels`` (a 2000x1 strip
        becomes 512x1,024,000 at size 512: gigabytes, for one image)."""
        scale = self.size / min(height, width)
        pixels = max(1, round(height * scale)) * max(1, round(width * scale))
        if self.max_pixels is not None and pixels > self.max_pixels:
            raise io.ImageLoadError(path, f"{width}x{height} px resized to a short side of {self.size} would be "
                                          f"{pixels} pixels, above max_pixels={self.max_pixels} (aspect ratio too "
                                          "extreme for square crops)")

    def _background_image(self, epoch: int, index: int, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        """RGB (3, *shape) background made from another item, flattened over a uniform colour."""
        other = (index + 1 + int(torch.randint(0, len(self) - 1, (1,), generator=generator))) % len(self)
        other_generator = item_generator(self.seed, epoch, other)
        background = flatten(self.load(other, other_generator), solid_colour(other_generator))
        if tuple(background.shape[1:]) != shape:
            background = io.resize_rgba(background, shape)
        return background[:3]

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        generator = item_generator(self.seed, epoch, index)
        pixels = self.load(index, generator)
        if self.opaque:
            if self.opaque_background == "image" and len(self) > 1:
                background = self._background_image(epoch, index, tuple(pixels.shape[1:]), generator)
            elif self.opaque_background == "palette":
                background = palette_colour(generator)
            else:
                background = solid_colour(generator)
            return io.composite(pixels, background)
        if float(torch.rand((), generator=generator)) < self.blend_prob:
            pixels = flatten(pixels, palette_colour(generator))
        elif self.alpha_scale_prob and float(torch.rand((), generator=generator)) < self.alpha_scale_prob:
            low = self.alpha_scale_min
            pixels = scale_alpha(pixels, low + (1.0 - low) * float(torch.rand((), generator=generator)))
        return pixels


def readable_files(dataset: RGBADataset, *, show_progress: bool = True) -> tuple[list[Path], list[str]]:
    """Load every image of ``dataset`` once as its items do (``RGBADataset.load``: decode, size limits, resize,
    crop); return the files that load and ``"path: reason"`` for each other one (logged).

    The training commands leave the others out before training, so a bad file cannot stop a run mid-way; every
    process gets the same list, which keeps the data order identical across processes and resumes.
    """
    readable, failed = [], []
    for index, path in enumerate(tqdm(dataset.files, desc="check images", unit="img", disable=not show_progress)):
        try:
            dataset.load(index, item_generator(dataset.seed, 0, index))
        except io.ImageLoadError as err:
            logger.error("skipping unreadable image: %s", err)
            failed.append(str(err))
            continue
        readable.append(path)
    return readable, failed


class SubstituteUnreadable(Dataset):
    """An :class:`RGBADataset` whose items survive an image that becomes unreadable during a run (deleted, or
    replaced by a damaged file): the item is taken from the next readable image of the file list instead, with
    that image's own randomness (deterministic, so a resumed run replays the same substitution), and the failure
    travels with the item as data.

    Items are ``(pixels, failures)``: ``pixels`` as ``RGBADataset`` gives them (``(C, size, size)``, [-1, 1],
    straight alpha; None when no image of the list is readable any more) and ``failures`` the ``"path: reason"``
    of each image tried in vain. Use :meth:`collate` as the DataLoader's ``collate_fn``. Errors must not be
    raised inside a DataLoader worker: torch re-raises a worker's ``ImageLoadError`` as a ``RuntimeError`` whose
    message is the worker's whole traceback.
    """

    def __init__(self, dataset: RGBADataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor | None, list[str]]:
        epoch, index = key
        failures: list[str] = []
        for offset in range(len(self.dataset)):
            try:
                return self.dataset[(epoch, (index + offset) % len(self.dataset))], failures
            except io.ImageLoadError as err:
                failures.append(str(err))
        return None, failures

    @staticmethod
    def collate(items: list[tuple[torch.Tensor | None, list[str]]]) -> tuple[torch.Tensor | None, list[str]]:
        """Stack items into ``((B, C, size, size) or None when any item found no readable image, failures)``."""
        failures = [failure for _, found in items for failure in found]
        if any(pixels is None for pixels, _ in items):
            return None, failures
        return torch.stack([pixels for pixels, _ in items]), failures


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Deterministic, resumable, shardable batch sampler over training steps.

    Step ``s`` of the run uses epoch ``e = s // steps_per_epoch`` (``steps_per_epoch =
    num_items // global_batch_size``, incomplete last batches dropped) and the slice
    ``[b * global_batch_size, (b + 1) * global_batch_size)`` of a permutation of the items drawn from
    :func:`item_generator` ``(seed, e, 0)``; process ``rank`` of ``world_size`` takes the
    ``rank``-th contiguous share of ``global_batch_size // world_size`` items. Yields lists of
    ``(epoch, index)`` keys for :class:`RGBADataset`, for steps ``start_step .. num_steps - 1``,
    so a resumed run passes the step it stopped at and continues with the same batches.

    Raises ValueError if ``global_batch_size`` is not a positive multiple of ``world_size``, if
    there are fewer items than one global batch, or if ``rank`` is out of range.
    """

    def __init__(
        self,
        num_items: int,
        global_batch_size: int,
        num_steps: int,
        *,
        seed: int = 0,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch_size <= 0 or global_batch_size % world_size:
            raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of world size {world_size}")
        if num_items < global_batch_size:
            raise ValueError(f"{num_items} items cannot fill one global batch of {global_batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.num_items, self.global_batch_size, self.num_steps = num_items, global_batch_size, num_steps
        self.seed, self.start_step, self.rank, self.world_size = seed, start_step, rank, world_size
        self.steps_per_epoch = num_items // global_batch_size

    def __len__(self) -> int:
        return max(0, self.num_steps - self.start_step)

    def batch(self, step: int) -> list[tuple[int, int]]:
        """This process's ``(epoch, index)`` keys for global step ``step``."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = torch.randperm(self.num_items, generator=item_generator(self.seed, epoch, 0))
        share = self.global_batch_size // self.world_size
        start = position * self.global_batch_size + self.rank * share
        return [(epoch, int(i)) for i in order[start : start + share]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.num_steps):
            yield self.batch(step)

