"""Checkpoints of a training run: accelerate ``save_state`` plus a small JSON, atomic, newest K kept.

Layout: ``RUN_DIR/checkpoints/step-XXXXXXXX/`` holds accelerate's state (prepared models, optimisers,
objects registered with ``register_for_checkpointing`` such as the scheduler and EMA, RNG states of every
process) and ``trainer_state.json`` (``{"step": completed optimiser steps, ..., "files": {name: {"bytes": size,
"sha256": hex digest}}, "training_set": {"images": N, "sha256": hex digest}}``; the file list lets a resume find a
checkpoint that lost, cut or changed a file since, the training-set digest one whose run trained on other images).
A checkpoint is written under a hidden temporary name and renamed when complete, so a run killed while saving
leaves no partial checkpoint behind (an exception while saving, Ctrl-C included, removes the temporary folder;
one left by a kill is removed by the run's next save).

A resume checks a checkpoint twice (:func:`verify_checkpoint` before the models load, again in
:func:`load_checkpoint`) but reads each file's bytes once per process: a file whose size, modification and
status-change times and inode are what they were when it was hashed keeps its digest (:func:`_sha256`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import SafetensorError, safe_open

from alphavae.diffusion.lora import LORA_FILE
from alphavae.io import sha256_file

_NAME = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.json"
FILES_KEY = "files"  # in STATE_FILE: {relative path: {"bytes", "sha256"}} of every file saved, checked on resume
TRAINING_SET_KEY = "training_set"  # in STATE_FILE: training_set_digest() of the run's training images
#: What only a train-lora checkpoint records in STATE_FILE besides its LoRA file (``LORA_FILE``; train-vae's
#: holds the whole autoencoder as ``model.safetensors``): the settings a resume must repeat.
_LORA_SETTINGS_KEY = "settings"
#: Digests this process computed for checkpoint files: {absolute path: ((size, mtime_ns, ctime_ns, inode) when read,
#: sha256)}; what lets ``load_checkpoint`` skip the hashing ``verify_checkpoint`` did moments before.
_DIGESTS: dict[Path, tuple[tuple[int, int, int, int], str]] = {}


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (``[]`` when there are none)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(run_dir: str | os.PathLike, resume: str) -> Path | None:
    """Resolve ``--resume``: ``"latest"`` (newest checkpoint of ``run_dir``, or None if there is none) or a path.

    Raises:
        FileNotFoundError: ``resume`` is a path that is not a complete checkpoint folder.
        ValueError: with ``"latest"``, a ``step-*`` folder newer than the newest complete checkpoint lacks its
            ``trainer_state.json`` (checkpoints are renamed into place complete, so it was damaged since); the
            message says which folder to delete.
    """
    if resume == "latest":
        checkpoints = list_checkpoints(run_dir)
        newest = checkpoints[-1] if checkpoints else None
        folder = Path(run_dir) / "checkpoints"
        stateless = sorted(p for p in folder.glob("step-*") if _NAME.match(p.name) and p not in checkpoints)
        damaged = [p for p in stateless if newest is None or p.name > newest.name]
        if damaged:
            raise ValueError(f"{damaged[-1]}: damaged checkpoint, it has no {STATE_FILE} (a finished checkpoint always "
                             f"has one); {way_back(damaged[-1], newest)}")
        return newest
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint folder (no {STATE_FILE})")
    return path


def check_start(run_dir: str | os.PathLike, resume: str | None, finished: Path,
                records: Iterable[Path] = ()) -> None:
    """Refuse a start that would overwrite a run's work (before anything loads).

    Args:
        run_dir: the run's output folder.
        resume: ``--resume`` as given (None: a fresh start).
        finished: what a finished run leaves (train-vae's ``final/``, train-lora's LoRA file).
        records: logs of the run's training that a fresh start would empty (train-vae's ``history.jsonl`` and
            ``validation/metrics.jsonl``; train-lora passes none).
    Raises:
        FileExistsError: ``run_dir`` has checkpoints, ``finished`` or a non-empty file of ``records`` and ``resume``
            is None (a fresh start would replace them); or ``resume`` is ``"latest"``, there is no checkpoint and
            ``finished`` exists (a fresh start would replace it); the message says what to do.
    """
    if resume is None and any(_NAME.match(p.name) for p in (Path(run_dir) / "checkpoints").glob("*")):  # damaged too
        raise FileExistsError(f"{run_dir} already has checkpoints; pass --resume latest or choose a new folder")
    if resume is None and finished.exists():  # no checkpoint (see above): --resume latest could not resume it
        raise FileExistsError(f"{finished} already exists: a fresh start would replace it; choose a new folder (or "
                              f"move {finished} away to train again from scratch)")
    written = [path for path in records if path.is_file() and path.stat().st_size > 0] if resume is None else []
    if written:
        raise FileExistsError(f"{written[0]} already records training in {run_dir}: a fresh start would empty it; "
                              f"choose a new folder (or move {written[0]} away to train again from scratch)")
    if resume == "latest" and not list_checkpoints(run_dir) and finished.exists():
        raise FileExistsError(f"nothing to resume: {run_dir} holds a finished {finished.name} but no checkpoint; "
                              f"choose a new folder (or move {finished} away to train again from scratch)")


def check_within(checkpoint: Path, step: int, max_steps: int) -> None:
    """Raise ValueError when the resumed ``checkpoint`` (at ``step``) lies beyond ``max_steps``: resuming would save
    its weights under an earlier step's name and call them the result of ``max_steps`` steps."""
    if step > max_steps:
        raise ValueError(f"{checkpoint} is at step {step}, beyond max_steps {max_steps}; resume with max_steps >= "
                         f"{step}, or pass an earlier checkpoint folder to --resume")


def _name_under(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies under it, else its absolute path."""
    relative = os.path.relpath(path, root)
    return os.path.abspath(path) if Path(relative).parts[0] == ".." else relative


def training_set_digest(files: list[Path], root: Path) -> dict:
    """``{"images": N, "sha256": hex}`` of a run's training files in sampling order, by their paths relative to
    ``root`` (the data folder, or a manifest's folder), so a moved data folder keeps its digest; a file outside
    ``root`` (a manifest's absolute ``file`` entry) counts by its absolute path, so moving the manifest alone keeps it
    too. Saved with every checkpoint of ``train-vae`` and ``train-lora`` (:data:`TRAINING_SET_KEY`) for
    :func:`warn_other_training_set`."""
    names = json.dumps([_name_under(path, root) for path in files])  # unambiguous, whatever names hold
    return {"images": len(files), "sha256": hashlib.sha256(names.encode("ascii")).hexdigest()}


def warn_other_training_set(checkpoint: Path, state: dict, digest: dict, log: logging.Logger) -> None:
    """Log a warning when the training images of a resumed run (``digest``) are not those ``checkpoint`` was saved
    with (``state``, its trainer state): images added, removed or renamed (or, where the run checks its images
    first, now unreadable) change the batches from the resumed step on. Checkpoints saved without a digest pass."""
    saved = state.get(TRAINING_SET_KEY, digest)
    if saved != digest:
        log.warning("the training images differ from those of %s (%d then, %d now, or other files): the run goes on "
                    "with today's, so its batches differ from those the interrupted run would have trained on",
                    checkpoint, saved["images"], digest["images"])


def way_back(damaged: Path, earlier: Path | None) -> str:
    """How to go on past ``damaged``, a run's newest checkpoint: delete it and resume from ``earlier`` (the
    newest sound checkpoint before it; None: from the start)."""
    fallback = f"from {earlier.name} (or --resume {earlier})" if earlier else "from the start"
    return f"delete {damaged} and rerun with --resume latest to continue {fallback}"


def save_checkpoint(accelerator: Accelerator, run_dir: str | os.PathLike, state: dict, keep: int) -> Path:
    """Save the accelerate state and ``state`` (must hold ``"step"``) as ``checkpoints/step-XXXXXXXX``.

    Called on every process (accelerate saves per-process RNG states); the main process renames the
    finished folder into place and deletes all but the newest ``keep`` checkpoints.

    Args:
        accelerator: the run's ``accelerate.Accelerator`` (models, optimisers and registered objects prepared).
        run_dir: the run folder; the checkpoint goes to ``run_dir/checkpoints``.
        state: JSON-serialisable trainer state with ``"step"`` (completed optimiser steps, int).
        keep: newest checkpoints kept (0 or less keeps all).

    Returns:
        The checkpoint folder ``run_dir/checkpoints/step-XXXXXXXX``.

    Raises:
        KeyError: ``state`` has no ``"step"``. TypeError: ``state`` is not JSON-serialisable.
        OSError: the folder cannot be written (disk full, permissions); the previous checkpoints are kept.
        Any of these, or ``KeyboardInterrupt``, leaves no temporary folder behind (main process).
    """
    folder = Path(run_dir) / "checkpoints"
    final = folder / f"step-{state['step']:08d}"
    temporary = folder / f".tmp-{final.name}"
    try:
        _save_into(accelerator, temporary, final, state)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _save_into(accelerator: Accelerator, temporary: Path, final: Path, state: dict) -> None:
    """Write the accelerate state and ``state`` into ``temporary``, then rename it to ``final`` (main process)."""
    if accelerator.is_main_process:
        for leftover in temporary.parent.glob(".tmp-step-*"):  # this one, or another step's left by a kill
            shutil.rmtree(leftover, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.relative_to(temporary).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(temporary.rglob("*")) if p.is_file()}
        (temporary / STATE_FILE).write_text(json.dumps({**state, FILES_KEY: files}, indent=1), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)


class CheckpointMismatchError(ValueError):
    """A sound checkpoint (its files as saved) that does not fit the models of the run resuming it: the run was set
    up from another model or with other model settings. Unlike a damaged checkpoint, deleting it is no remedy."""


def load_checkpoint(accelerator: Accelerator, checkpoint: str | os.PathLike) -> dict:
    """Restore the accelerate state from ``checkpoint`` (on every process) and return its JSON state.

    The checkpoint's files are checked first (:func:`verify_checkpoint`); after a ``verify_checkpoint`` of it in
    this process, only files changed since are read again.

    Args:
        accelerator: prepared with the same models, optimisers and registered objects as when saved.
        checkpoint: a folder written by ``save_checkpoint``.

    Returns:
        The trainer state dict saved with it (``{"step": int, ...}``).

    Raises:
        FileNotFoundError: the folder or its ``trainer_state.json`` is missing.
        ValueError: a file of the checkpoint is damaged: missing, or of another size or sha256 than when saved
            (named), a truncated ``*.safetensors`` file (named), a ``trainer_state.json`` that is not JSON; or the saved
            tensors do not fit the prepared models (another architecture); one line naming the checkpoint.
        CheckpointMismatchError: (a ValueError) the checkpoint's files are as saved (it recorded their sizes and
            sha256), yet they do not restore into these models: they were built from another model or settings.
    """
    checkpoint = Path(checkpoint)
    recorded = FILES_KEY in read_state(checkpoint)  # checkpoints of older versions recorded no file digests
    state = verify_checkpoint(checkpoint)
    try:
        accelerator.load_state(str(checkpoint))
        return state
    except (FileNotFoundError, MemoryError, torch.OutOfMemoryError):
        raise  # not the checkpoint's fault
    except Exception as err:  # torch.load / pickle of a damaged file can raise nearly any error
        reason = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        if recorded:
            raise CheckpointMismatchError(
                f"{checkpoint}: cannot restore this checkpoint into this run's models ({reason}); its files are "
                "as saved, so it was saved from another model or with other model settings: resume with the "
                "model and settings it was saved with") from err
        raise ValueError(f"{checkpoint}: cannot restore this checkpoint, damaged or saved from another model "
                         f"({reason})") from err


def verify_checkpoint(checkpoint: str | os.PathLike, command: str | None = None) -> dict:
    """Check that every file ``checkpoint`` recorded is there, whole and unchanged, without restoring anything (what
    a resume does before its models load, so a damaged checkpoint costs no model loading); returns the trainer
    state (``read_state``, less the file list). A file this process already hashed and that has not changed since
    (same size, mtime, ctime and inode) is not read again. With ``command`` (``"train-vae"`` or ``"train-lora"``),
    a checkpoint saved by the other training command is refused first (:func:`saved_by`).

    Raises:
        FileNotFoundError: the folder or its ``trainer_state.json`` is missing.
        CheckpointMismatchError: (a ValueError) ``checkpoint`` was saved by another command than ``command``; one
            line naming both.
        ValueError: ``trainer_state.json`` is damaged (``read_state``), or a recorded file is missing or has another
            size or sha256 than when saved, or a ``*.safetensors`` file is truncated; the message names the file.
    """
    checkpoint = Path(checkpoint)
    state = read_state(checkpoint)
    saver = saved_by(checkpoint, state)
    if command is not None and saver != command:
        raise CheckpointMismatchError(f"{checkpoint} is a {saver} checkpoint, not a {command} one: resume it with "
                                      f"alphavae {saver}, or give {command} a checkpoint of its own")
    _check_files(checkpoint, state.pop(FILES_KEY, {}))
    for weights in sorted(checkpoint.glob("*.safetensors")):
        _check_safetensors(weights)
    return state


def saved_by(checkpoint: Path, state: dict) -> str:
    """The command that saved ``checkpoint`` (``state``: its trainer state): ``"train-lora"`` when it holds (or
    recorded) a LoRA file or recorded train-lora's settings, else ``"train-vae"``."""
    lora = LORA_FILE in state.get(FILES_KEY, {}) or (checkpoint / LORA_FILE).is_file()
    return "train-lora" if lora or _LORA_SETTINGS_KEY in state else "train-vae"


@contextlib.contextmanager
def way_back_on_error(checkpoint: Path, resume: str, run_dir: Path) -> Iterator[None]:
    """Context for reading or restoring ``checkpoint``: when ``resume`` is ``"latest"``, a ValueError raised inside
    (a damaged checkpoint; not a :class:`CheckpointMismatchError`) is re-raised with :func:`way_back`'s advice
    appended (delete it, fall back to the checkpoint before it in ``run_dir``)."""
    try:
        yield
    except ValueError as err:
        if resume != "latest" or isinstance(err, CheckpointMismatchError):
            raise
        earlier = list_checkpoints(run_dir)[:-1]
        raise ValueError(f"{err}; this is the newest checkpoint of {run_dir}: "
                         f"{way_back(checkpoint, earlier[-1] if earlier else None)}") from err


def read_state(checkpoint: str | os.PathLike) -> dict:
    """The JSON object of ``checkpoint/trainer_state.json`` (``{"step": int, ...}``), read without restoring
    anything: what a resume can check before any model loads.

    Raises:
        FileNotFoundError: the folder or file is missing. ValueError: the file is not a JSON object with a
            whole-number ``step`` >= 0 (and, when present, a ``files`` map of names to sizes and digests).
    """
    path = Path(checkpoint) / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: damaged checkpoint file ({err})") from None
    problem = _state_problem(state)
    if problem:
        raise ValueError(f"{path}: damaged checkpoint file ({problem})")
    return state


def _state_problem(state: object) -> str | None:
    """What is wrong with a parsed ``trainer_state.json`` (None: nothing)."""
    if not isinstance(state, dict):
        return "not a JSON object"
    if not _count(state.get("step")):
        return "no whole-number 'step' >= 0"
    files = state.get(FILES_KEY, {})
    if not isinstance(files, dict) or not all(_count(saved) or _saved_file(saved) for saved in files.values()):
        return f"'{FILES_KEY}' is not a map of file names to sizes in bytes and sha256 digests"
    return None


def _saved_file(value: object) -> bool:
    """True for ``{"bytes": int >= 0, "sha256": 64 lowercase hex digits}``."""
    return isinstance(value, dict) and set(value) == {"bytes", "sha256"} and _count(value["bytes"]) \
        and isinstance(value["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", value["sha256"]) is not None


def _count(value: object) -> bool:
    """True for an int >= 0 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_files(checkpoint: Path, files: dict) -> None:
    """Raise ValueError naming the first file of ``files`` ({relative path: {"bytes", "sha256"} when saved}) that
    is missing from ``checkpoint``, has another size (cut short) or another sha256 (changed in place).
    Checkpoints saved without a list pass; those saved with sizes only (plain ints) get the size check."""
    for name, saved in files.items():
        path = checkpoint / name
        size, digest = (saved["bytes"], saved["sha256"]) if isinstance(saved, dict) else (saved, None)
        if not path.is_file():
            raise ValueError(f"{path}: damaged checkpoint, this file of it is missing")
        if path.stat().st_size != size:
            raise ValueError(f"{path}: damaged checkpoint file ({path.stat().st_size} bytes, {size} when saved)")
        if digest is not None and _sha256(path) != digest:
            raise ValueError(f"{path}: damaged checkpoint file (its bytes changed since it was saved: another sha256)")


def _check_safetensors(path: Path) -> None:
    """Raise ValueError naming ``path`` when its header or size is broken (a file cut short)."""
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as err:
        raise ValueError(f"{path}: damaged checkpoint file ({err})") from err


def _sha256(path: Path) -> str:
    """``sha256_file(path)``, or the digest this process already computed for it while its size, mtime, ctime and
    inode are unchanged (any write or rename since changes them: only an in-place rewrite to the same size within
    the filesystem's timestamp tick, milliseconds, of its previous change would go unseen). A file that changed
    while being read is not remembered. Raises OSError when it cannot be read."""
    key, stamp = path.absolute(), _stamp(path)
    known = _DIGESTS.get(key)
    if known is not None and known[0] == stamp:
        return known[1]
    digest = sha256_file(path)
    if _stamp(path) == stamp:
        _DIGESTS[key] = (stamp, digest)
    return digest


def _stamp(path: Path) -> tuple[int, int, int, int]:
    """``(size in bytes, mtime_ns, ctime_ns, inode)`` of ``path``; OSError when it cannot be read."""
    info = path.stat()
    return info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino
