"""Pair ground-truth and prediction files by relative path and place them in the benchmark tree.

Files match by relative path without extension (``animal/cat.png`` pairs with ``animal/cat.webp``).
The folder layout is ``[dataset/...]/[subset/]category/file``: the file's parent folder is its
category, the folder above that its subset, everything above that its dataset (AIM-500 style and the
AlphaVAE test split); missing levels are named :data:`ROOT` (a flat folder is one category).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from alphavae.io import folder_relation, list_images

ROOT = "."
"""Name of a tree level that the folder layout does not have (e.g. the category of a flat folder)."""


@dataclass(frozen=True)
class Pair:
    """One ground-truth / prediction file pair.

    Attributes:
        key: relative path without extension, posix separators (the pairing key).
        gt, pred: absolute paths; ``pred`` is None for evaluations that create the prediction.
        dataset, subset, category: place in the benchmark tree (:func:`tree_position`).
    """

    key: str
    gt: Path
    pred: Path | None
    dataset: str
    subset: str
    category: str


@dataclass
class PairPlan:
    """Result of :func:`pair_folders`: the pairs plus what could not be paired.

    Attributes:
        pairs: matched pairs, sorted by key.
        missing: GT keys without a prediction. extra: prediction keys without GT.
        ambiguous: key -> files for each key with more than one file (same stem, different extensions) on
            either side: the absolute paths of the side(s) holding several, GT first, sorted by name.
    """

    pairs: list[Pair]
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)


def tree_position(key: str) -> tuple[str, str, str]:
    """``(dataset, subset, category)`` of a pairing key (see the module docstring); absent levels are :data:`ROOT`."""
    parents = PurePosixPath(key).parts[:-1]
    category = parents[-1] if parents else ROOT
    subset = parents[-2] if len(parents) >= 2 else ROOT
    dataset = "/".join(parents[:-2]) or ROOT
    return dataset, subset, category


def check_folder(folder: str | Path) -> None:
    """Check that an input folder exists and is a folder.

    Raises:
        FileNotFoundError: ``folder`` does not exist. NotADirectoryError: it is not a folder.
    """
    path = Path(folder)
    if not path.exists():
        raise FileNotFoundError(f"{folder}: folder does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")


def check_apart(gt_dir: str | Path, pred_dir: str | Path, *,
                names: tuple[str, str] = ("GT folder", "prediction folder")) -> None:
    """Check that the GT and prediction folders do not overlap (neither equals nor contains the other).

    The folders are walked recursively, so overlapping ones would read the predictions as ground truth
    too (or the reverse). Compared after resolving symlinks (``alphavae.io.folder_relation``). ``names`` are
    the two folders' roles in the message (eval-t2i: the reference and the generated images).

    Raises:
        ValueError: one line naming both folders.
    """
    problem = folder_relation(pred_dir, gt_dir)
    if problem is not None:
        raise ValueError(f"{names[1]} {pred_dir} {problem} {names[0]} {gt_dir}; give folders that do not "
                         "overlap (both are read with their sub-folders)")


def _index(folder: Path) -> tuple[dict[str, Path], dict[str, list[str]]]:
    """Key -> absolute path for every image under ``folder``, plus key -> all its files for keys seen more than
    once."""
    files: dict[str, list[str]] = {}
    for absolute, relative in list_images([folder]):
        files.setdefault(PurePosixPath(Path(relative).as_posix()).with_suffix("").as_posix(), []).append(str(absolute))
    index = {key: Path(paths[-1]) for key, paths in files.items()}
    return index, {key: paths for key, paths in files.items() if len(paths) > 1}


def pair_folders(gt_dir: str | Path, pred_dir: str | Path | None = None) -> PairPlan:
    """Walk the GT folder (and the prediction folder) and pair files by relative path minus extension.

    Args:
        gt_dir: ground-truth folder (any image format ``alphavae.io.list_images`` accepts).
        pred_dir: prediction folder, or None to list GT only (``Pair.pred`` is None).
    Returns:
        A :class:`PairPlan`; ambiguous keys are excluded from ``pairs``.
    Raises:
        FileNotFoundError: a folder does not exist. NotADirectoryError: a path is a file, not a folder.
        ValueError: a folder holds no images (an empty benchmark is an error, not an empty report), or
            the folders overlap (:func:`check_apart`).
    """
    for folder in (gt_dir, pred_dir):
        if folder is not None:
            check_folder(folder)
    if pred_dir is not None:
        check_apart(gt_dir, pred_dir)
    gt, gt_repeated = _index(Path(gt_dir))
    pred, pred_repeated = _index(Path(pred_dir)) if pred_dir is not None else ({}, {})
    for folder, index in ((gt_dir, gt), (pred_dir, pred)):
        if folder is not None and not index:
            raise ValueError(f"{folder}: no images in this folder (nor in its sub-folders)")
    ambiguous = {key: gt_repeated.get(key, []) + pred_repeated.get(key, [])
                 for key in sorted(set(gt_repeated) | set(pred_repeated))}
    plan = PairPlan(pairs=[], ambiguous=ambiguous)
    for key in sorted(gt):
        if key in ambiguous:
            continue
        if pred_dir is not None and key not in pred:
            plan.missing.append(key)
            continue
        plan.pairs.append(Pair(key, gt[key], pred.get(key), *tree_position(key)))
    plan.extra = sorted(k for k in pred if k not in gt and k not in ambiguous)
    return plan
