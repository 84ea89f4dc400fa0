"""Streaming benchmark runs: pair folders (or reconstruct with a VAE), score image by image, aggregate,
report. Memory is constant in the number of images apart from 8 KB of Inception features per scored
view and the worst-K thumbnails. With several processes (``accelerate launch``) the images are
sharded by index, results gathered and sorted by key, so the report is identical to a one-process run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import torch
from tqdm import tqdm

from alphavae.accel import usable_device
from alphavae.eval.aggregate import RGB_GROUP, ImageRecord, aggregate, count_unscored, fid_notes, fid_with_rgb
from alphavae.eval.backgrounds import BACKGROUND_NAMES, composites, quantise
from alphavae.eval.metrics import NOT_APPLICABLE, SSIM_WINDOW
from alphavae.eval.networks import LPIPS_MIN_SIZE, FeatureSet, Networks, clip_score, inception_features, one_line
from alphavae.eval.pairs import Pair, PairPlan, check_apart, pair_folders
from alphavae.eval.protocols import Protocol, prepare_gt, score_pair
from alphavae.eval.report import ALPHA_BLIND_NOTE, WorstImages, counted
from alphavae.io import (DEFAULT_MAX_PIXELS, ImageLoadError, check_text, composite, image_extensions, load_rgba,
                         pad_to_multiple, read_jsonl, read_text_file)

log = logging.getLogger(__name__)

Loader = Callable[[Pair], tuple[torch.Tensor, torch.Tensor]]
"""Maps a pair to ``(gt, pred)``, each ``(4, H, W)`` straight RGBA in [-1, 1]; raises ImageLoadError / ValueError
(the runner prefixes messages other than ImageLoadError's, which name their file, with the pair's paths)."""

Extra = Callable[[Pair, torch.Tensor], dict[str, dict[str, float]]]
"""Optional extra scores of one GT image (e.g. latent drift): group -> metric -> value."""


@dataclass
class Evaluation:
    """Raw results of a run before aggregation: one process's shard, or every shard merged
    (:func:`run_sharded` returns the merged one on the main process).

    Attributes:
        records: one :class:`~alphavae.eval.aggregate.ImageRecord` per scored image (sorted by key once merged).
        features: image key -> group -> ``(gt, pred)`` Inception features, each ``(1, 2048)``, for FID;
            empty without an Inception network.
        failures: ``{"key", "error"}`` of every image that could not be loaded or scored (sorted by key
            once merged); ``error`` is ``"<file(s)>: <reason>"`` (:func:`describe_failure`).
        worst: the worst-K images by mean PSNR over the backgrounds (dB), for the HTML report.
        opaque: keys of scored images whose prediction is fully opaque (alpha 1 everywhere) while the GT has
            transparency: an RGB file, or alpha dropped when it was saved (sorted once merged).
    """

    records: list[ImageRecord] = field(default_factory=list)
    features: dict[str, dict] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    worst: WorstImages = field(default_factory=WorstImages)
    opaque: list[str] = field(default_factory=list)


IMAGE_ERRORS = (ImageLoadError, ValueError, OSError, RuntimeError, MemoryError)
"""Errors that fail one image (it is reported and the run goes on): unreadable files, size mismatches,
and a VAE or metric network that fails on it (``RuntimeError``, including running out of memory on one
large image)."""


def describe_failure(pair: Pair, err: Exception) -> str:
    """``"<file(s)>: <reason>"`` for an image that could not be loaded or scored.

    An ``ImageLoadError`` already reads ``"<file>: <reason>"``; other errors are prefixed with the GT
    path, and the prediction path when there is one (``"<gt> vs <pred>: <reason>"``). The reason of a
    ``RuntimeError`` / ``MemoryError`` (a VAE or network failing, out of memory) is its type and first
    sentence, on one line.
    """
    if isinstance(err, ImageLoadError):
        return str(err)
    where = str(pair.gt) if pair.pred is None else f"{pair.gt} vs {pair.pred}"
    reason = err if isinstance(err, (ValueError, OSError)) else one_line(err)
    return f"{where}: {reason}"


def _score_all(pairs: list[Pair], load: Loader, protocol: Protocol, networks: Networks, worst_k: int,
               extra: Extra | None, progress: bool = True) -> Evaluation:
    result = Evaluation(worst=WorstImages(worst_k))
    for pair in tqdm(pairs, desc=f"eval ({protocol.name})", unit="img", disable=not progress):
        try:
            gt, pred = load(pair)
            score = score_pair(gt, pred, protocol, networks)
            if extra is not None:
                score.groups.update(extra(pair, gt))
        except IMAGE_ERRORS as err:
            message = describe_failure(pair, err)
            log.info("skipped %s", message)  # reported once, in the result (the CLI prints its failures)
            result.failures.append({"key": pair.key, "error": message})
            continue
        result.records.append(ImageRecord(pair.key, pair.dataset, pair.subset, pair.category, score.groups))
        if bool((pred[3] == 1).all()) and bool((gt[3] < 1).any()):
            result.opaque.append(pair.key)
        if score.features:
            result.features[pair.key] = score.features
        psnr = [v["psnr"] for g, v in score.groups.items() if g in protocol.backgrounds]
        result.worst.offer(pair.key, sum(psnr) / len(psnr), gt, pred)
    return result


def _gather(shards: list[Evaluation], worst_k: int) -> Evaluation:
    """Merge shard results in key order (deterministic whatever the sharding)."""
    merged = Evaluation(worst=WorstImages(worst_k))
    for shard in shards:
        merged.records += shard.records
        merged.features.update(shard.features)
        merged.failures += shard.failures
        merged.worst.merge(shard.worst)
        merged.opaque += shard.opaque
    merged.opaque.sort()
    merged.records.sort(key=lambda r: r.key)
    merged.failures.sort(key=lambda f: f["key"])
    return merged


def run_sharded(pairs: list[Pair], load: Loader, protocol: Protocol, networks: Networks, *, worst_k: int = 8,
                extra: Extra | None = None, progress: bool = True) -> Evaluation | None:
    """Score ``pairs`` across the processes of the current ``accelerate`` launch (one process if not launched).

    In one process the networks stay on the device the caller put them on; with several processes each
    process moves them to its own device (:func:`scoring_device`). ``progress``: show a tqdm progress bar
    (images of this process's shard, with ETA) on stderr.

    Returns:
        The merged :class:`Evaluation` on the main process, None on the others.
    Source: ``accelerate.PartialState`` and ``accelerate.utils.gather_object``.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    if state.num_processes > 1:
        networks.to(state.device)
    mine = pairs[state.process_index :: state.num_processes]
    shard = _score_all(mine, load, protocol, networks, worst_k, extra, progress)
    shards = gather_object([shard]) if state.num_processes > 1 else [shard]
    return _gather(shards, worst_k) if state.is_main_process else None


def scoring_device(requested: str | torch.device) -> torch.device:
    """The device this process scores on: the metric networks, and the VAE of ``eval-vae``.

    In a single process that is ``requested`` (the user's ``--device``). Under ``accelerate launch`` with
    several processes each process uses accelerate's device for it (``PartialState().device``, e.g.
    ``cuda:<local rank>``) whatever ``requested`` says, so the processes share the work.

    Raises:
        ValueError: in a single process, ``requested`` is not a device torch can allocate on here (e.g.
            ``bogus``, ``cuda`` without a GPU, ``meta``; :func:`alphavae.accel.usable_device`); one line naming it.
    """
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1:
        return torch.device(state.device)
    return usable_device(requested)


UNSCORED_REASONS = {
    "ssim": f"images smaller than {SSIM_WINDOW} px on a side (the SSIM window)",
    "lpips": f"images smaller than {LPIPS_MIN_SIZE} px on a side (the LPIPS AlexNet's minimum)",
    **{metric: f"images where {reason}" for metric, reason in NOT_APPLICABLE.items()},
}
"""Metric -> which images it is None (not applicable) for, in words (report notes)."""


def unscored_notes(unscored: dict[str, dict[str, int]]) -> list[str]:
    """One report note per metric that is None for some images (``unscored``: group -> metric -> count)."""
    most: dict[str, int] = {}
    for counts in unscored.values():
        for metric, n in counts.items():
            most[metric] = max(most.get(metric, 0), n)
    return [f"{metric} is null (not applicable) for {counted(n, 'image')}: "
            f"{UNSCORED_REASONS.get(metric, 'not applicable')}; its means are over the other images "
            f"(per group counts under 'unscored')." for metric, n in most.items()]


def build_report(evaluation: Evaluation, protocol: Protocol, plan: PairPlan, networks: Networks, **info) -> dict:
    """The JSON-ready report: protocol, aggregated tree, every image's scores, failures and pairing problems.

    ``info`` entries (e.g. ``gt``, ``pred``, ``vae`` paths; None for an input not given; numbers kept, anything
    else as text) are stored under ``"inputs"``. Scores that
    do not apply to an image are null in ``"images"`` and skipped by every mean; ``"unscored"`` counts
    them (group -> metric -> number of images; the images that contributed to a metric's micro mean
    are ``tree.overall.images`` minus that), and ``"notes"`` explains each such metric, FID's counts and
    ``"opaque_predictions"`` (fully opaque predictions of GT images with transparency).
    """
    loaded = {name: getattr(networks, name) is not None for name in ("lpips", "inception", "clip", "aesthetic")}
    unscored = count_unscored(evaluation.records)
    cause = ("an RGB file, or alpha dropped when saved?" if "pred" in info
             else "the VAE decodes no transparency (not trained for alpha?)")
    opaque = [f"{counted(len(evaluation.opaque), 'prediction')} fully opaque (alpha 1 everywhere) where the GT has "
              f"transparency: {cause} Scored as opaque; keys under 'opaque_predictions'."] if evaluation.opaque else []
    return {
        "protocol": protocol.as_dict(),
        "inputs": {k: v if v is None or isinstance(v, (bool, int, float)) else str(v) for k, v in info.items()},
        "networks": loaded,
        "notes": (([ALPHA_BLIND_NOTE] if protocol.raw_group else []) + unscored_notes(unscored)
                  + (fid_notes(len(evaluation.features), len(evaluation.features)) if evaluation.features else [])
                  + opaque),
        "unscored": unscored,
        "tree": aggregate(evaluation.records, evaluation.features),
        "images": [{"key": r.key, "dataset": r.dataset, "subset": r.subset, "category": r.category,
                    "scores": r.groups} for r in evaluation.records],
        "failures": evaluation.failures,
        "missing": plan.missing,
        "extra": plan.extra,
        "ambiguous": plan.ambiguous,
        "opaque_predictions": evaluation.opaque,
    }


def folder_loader(protocol: Protocol, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Loader:
    """Loader for GT/prediction file pairs: loads both, preprocesses GT, checks the sizes agree.

    Raises (from the returned callable):
        ImageLoadError: a file cannot be read (names it).
        ValueError: sizes differ (gives both sizes; the runner adds both paths, :func:`describe_failure`), or
            the GT is too large for the protocol's resize (:func:`~alphavae.eval.protocols.prepare_gt`).
    """

    def load(pair: Pair) -> tuple[torch.Tensor, torch.Tensor]:
        gt = prepare_gt(load_rgba(pair.gt, max_pixels=max_pixels), protocol)
        pred = load_rgba(pair.pred, max_pixels=max_pixels)
        if gt.shape != pred.shape:
            raise ValueError(f"size mismatch: GT is {gt.shape[2]}x{gt.shape[1]} (after preprocessing) but the "
                             f"prediction is {pred.shape[2]}x{pred.shape[1]} (width x height)")
        return gt, pred

    return load


def evaluate_folders(gt_dir: str | Path, pred_dir: str | Path, protocol: Protocol, networks: Networks, *,
                     worst_k: int = 8, plan: PairPlan | None = None,
                     progress: bool = True) -> tuple[dict, list[dict]] | None:
    """Benchmark a prediction folder against a ground-truth folder (pairs by relative path minus extension).

    Args:
        gt_dir, pred_dir: folders of RGBA images (any format ``alphavae.io.load_rgba`` reads).
        protocol: from ``make_protocol``. networks: from ``load_networks``, on the device to score on (under a
            multi-process launch each process moves them to its own device, :func:`run_sharded`).
        worst_k: number of worst images kept for the HTML report.
        plan: ``pair_folders(gt_dir, pred_dir)`` if already made (callers pair first to fail early).
        progress: show a tqdm progress bar (images, with ETA) on stderr.
    Returns:
        ``(report, worst)`` on the main process (see :func:`build_report`; ``worst`` for
        :func:`~alphavae.eval.report.write_reports`), None on other processes.
    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: a folder does not exist, is not a folder or
            holds no images, or the two folders overlap (:func:`~alphavae.eval.pairs.pair_folders`; only
            when ``plan`` is None).
    """
    plan = pair_folders(gt_dir, pred_dir) if plan is None else plan
    result = run_sharded(plan.pairs, folder_loader(protocol), protocol, networks, worst_k=worst_k, progress=progress)
    if result is None:
        return None
    return build_report(result, protocol, plan, networks, gt=gt_dir, pred=pred_dir), result.worst.worst_first()


def latent_drift(vae, source, gt: torch.Tensor) -> dict[str, float]:
    """Distance between the RGBA VAE's and the source RGB VAE's posterior means on opaque composites.

    The GT is composited over black and over white (alpha set to 1), padded like ``RGBAVAE.encode``
    does (``alphavae.io.pad_to_multiple``, replicate), and encoded by both; reported: ``mse`` (mean
    squared difference of the means) and ``rel_l2`` (``||mu_rgba - mu_src|| / ||mu_src||``), each averaged
    over the two backgrounds. A freshly converted, untrained model scores 0 (opaque initialisation, paper
    Sec. 4.1), up to float32 rounding (often exactly 0 on the CPU without tiling; tiling or a 16-bit policy
    give more).

    Args:
        vae: ``alphavae.vae.RGBAVAE``. source: diffusers ``AutoencoderKL`` with 3 input channels.
        gt: ``(4, H, W)`` straight RGBA in [-1, 1].
    Returns:
        ``{"mse": float, "rel_l2": float}``.
    Source: AlphaVAE (arXiv 2507.09308) Sec. 4.2 (Ref-KL keeps opaque latents where the diffusion model expects them).
    """
    mse, rel = [], []
    for background in ("black", "white"):
        rgb = composite(gt[None].float(), background)
        opaque = torch.cat([rgb, torch.ones_like(rgb[:, :1])], 1)
        mu = vae.encode(opaque.to(vae.device)).mean.float()  # float32: the dtype policy casts (see evaluate_vae)
        padded = pad_to_multiple(opaque, vae.multiple, mode="replicate")[0][:, :3].to(source.device, source.dtype)
        with torch.no_grad():
            mu_src = source.encode(padded).latent_dist.mean.float().to(mu.device)
        mse.append(torch.mean((mu - mu_src) ** 2).item())
        rel.append((torch.linalg.vector_norm(mu - mu_src) / torch.linalg.vector_norm(mu_src).clamp_min(1e-12)).item())
    return {"mse": sum(mse) / 2, "rel_l2": sum(rel) / 2}


def check_source_vae(vae, source, *, name: str = "source VAE") -> None:
    """Check that ``source`` can serve :func:`latent_drift` for ``vae`` (an ``alphavae.vae.RGBAVAE``): an RGB
    diffusers ``AutoencoderKL`` with ``vae``'s latent channels and downsampling.

    Raises:
        ValueError: one line starting with ``name`` (e.g. its folder) and listing each mismatch
            (:func:`alphavae.convert.check_rgb_counterpart`).
    """
    from alphavae.convert import check_rgb_counterpart

    check_rgb_counterpart(source, latent_channels=vae.latent_channels, downsampling=vae.multiple, name=name,
                          role="the latent-drift source (--source-vae)")


def evaluate_vae(vae, data_dir: str | Path, protocol: Protocol, networks: Networks, *, source=None,
                 worst_k: int = 8, plan: PairPlan | None = None, min_side: int | None = None,
                 progress: bool = True) -> tuple[dict, list[dict]] | None:
    """Reconstruct every image of ``data_dir`` with an RGBA VAE and benchmark the reconstructions in one run.

    The VAE gets the float32 pixels, as ``alphavae reconstruct`` gives them, and casts them by its dtype policy
    (under "mixed-bf16" the float32 ``encoder.conv_in`` reads them unrounded, ``alphavae.accel``).

    Args:
        vae: ``alphavae.vae.RGBAVAE`` (posterior mode is decoded).
        data_dir: folder of RGBA ground-truth images.
        protocol, networks, worst_k, progress: as for :func:`evaluate_folders`.
        source: optional source RGB ``AutoencoderKL``; adds the ``latent_drift`` group (:func:`latent_drift`).
        plan: ``pair_folders(data_dir)`` if already made.
        min_side: reconstruct images (after the protocol's resize) with a side shorter than this on a transparent
            canvas (``RGBAVAE.reconstruct``); None: as they are.
    Returns:
        ``(report, worst)`` on the main process, None on others. ``report["inputs"]`` says what produced the
        scores: ``data``, ``vae`` (the folder or id it was loaded from), ``dtype`` (of most weights),
        ``dtype_policy``, ``tile_size`` / ``tile_overlap`` / ``tile_mode`` (null untiled), ``min_side`` and
        ``source_vae``.
    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: ``data_dir`` does not exist, is not a folder
            or holds no images (only when ``plan`` is None).
        ValueError: ``source`` does not fit ``vae`` (:func:`check_source_vae`), before any image is read.
    """
    if source is not None:
        check_source_vae(vae, source)
    plan = pair_folders(data_dir) if plan is None else plan

    def load(pair: Pair) -> tuple[torch.Tensor, torch.Tensor]:
        gt = prepare_gt(load_rgba(pair.gt), protocol)
        with torch.inference_mode():
            pred = vae.reconstruct(gt[None].to(vae.device), min_side=min_side)[0].float().cpu()
        return gt, pred

    def drift(pair: Pair, gt: torch.Tensor) -> dict[str, dict[str, float]]:
        with torch.inference_mode():
            return {"latent_drift": latent_drift(vae, source, gt)}

    result = run_sharded(plan.pairs, load, protocol, networks, worst_k=worst_k,
                         extra=drift if source is not None else None, progress=progress)
    if result is None:
        return None
    model = {"vae": vae.model.config.get("_name_or_path"), "dtype": str(vae.dtype).removeprefix("torch."),
             "dtype_policy": vae.dtype_policy, "tile_size": vae.tile_size, "tile_overlap": vae.tile_overlap,
             "tile_mode": vae.tile_mode if vae.tile_size else None, "min_side": min_side,
             "source_vae": None if source is None else source.config.get("_name_or_path")}
    return build_report(result, protocol, plan, networks, data=data_dir, **model), result.worst.worst_first()


PROMPTS_FORMAT = 'a JSON object {"key": "prompt", ...} or JSON Lines with {"key": ..., "prompt": ...} per line'
"""What ``--prompts`` holds, in words (messages)."""


class _RepeatedKey(ValueError):
    """A JSON object names one key twice (``json`` would keep the last value silently)."""


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``object_pairs_hook`` for ``json.loads`` that refuses a key given twice in one object."""
    found: dict[str, object] = {}
    for key, value in pairs:
        if key in found:
            raise _RepeatedKey(key)
        found[key] = value
    return found


def _prompt_entry(where: str, key: object, prompt: object) -> tuple[str, str]:
    """``(key, prompt)`` once both are checked to be non-empty strings (the prompt valid Unicode text); else
    ValueError starting with ``where``."""
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"{where}: key {json.dumps(key)} is not an image key (the image's path relative to "
                         "the prediction folder minus extension, a non-empty string)")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: key {key!r} has no prompt (got {json.dumps(prompt)}; a prompt is a non-empty "
                         "string)")
    return key, check_text(prompt, f"{where}: key {key!r} has a prompt that")


def _file_key(file: object) -> object:
    """A JSON-Lines ``"file"`` value as a key: an image suffix (``.png``, ``.webp``, ...) is dropped, nothing else."""
    if isinstance(file, str) and PurePosixPath(file).suffix.lower() in image_extensions():
        return PurePosixPath(file).with_suffix("").as_posix()
    return file


def _object_prompts(path: Path, text: str) -> dict[str, str] | None:
    """Prompts of a file holding one JSON object; None if the text is JSON Lines: not one JSON value but
    its first line is, or one object with only ``key``/``file`` and ``prompt`` fields (a one-row file)."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs)
    except _RepeatedKey as err:
        raise ValueError(f"{path}: key {err.args[0]!r} is given twice") from None
    except json.JSONDecodeError as err:
        first = next(line for line in text.splitlines() if line.strip())
        try:
            json.loads(first)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{err.lineno}: not JSON ({err.msg}); expected {PROMPTS_FORMAT}") from None
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a JSON {type(data).__name__}; expected {PROMPTS_FORMAT}")
    if "prompt" in data and set(data) <= {"key", "file", "prompt"}:
        return None  # a JSON-Lines file of one row, not named .jsonl
    return dict(_prompt_entry(str(path), key, prompt) for key, prompt in data.items())


def _line_prompts(path: Path) -> dict[str, str]:
    """Prompts of a JSON-Lines file (one ``{"key" or "file": ..., "prompt": ...}`` object per line)."""
    prompts: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, row in read_jsonl(path, "prompts file"):
        where = f"{path}:{number}"
        if not isinstance(row, dict) or "prompt" not in row or not ({"key", "file"} & set(row)):
            raise ValueError(f'{where}: expected {{"key": ..., "prompt": ...}} ({PROMPTS_FORMAT})')
        if {"key", "file"} <= set(row):
            raise ValueError(f'{where}: gives both "key" and "file"; give one of them')
        key, prompt = _prompt_entry(where, row["key"] if "key" in row else _file_key(row["file"]), row["prompt"])
        if key in prompts:
            raise ValueError(f"{where}: key {key!r} is given twice (also on line {lines[key]})")
        prompts[key], lines[key] = prompt, number
    return prompts


def read_prompts(path: str | Path) -> dict[str, str]:
    """Prompts for text-to-image evaluation, keyed by image path relative to the prediction folder minus extension.

    Accepted formats (UTF-8, a byte-order mark is dropped): a JSON object ``{key: prompt}``, or JSON Lines
    with ``{"key": ..., "prompt": ...}`` per line (a ``.jsonl`` file is always read as JSON Lines, other
    files as a JSON object when the whole text is one). Keys are used as given (``robot.v2`` is the
    image ``robot.v2.png``); a JSON-Lines row may give ``"file"`` instead of ``"key"``, whose image
    suffix (``.png``, ``.webp``, ...) is dropped. Every prompt must be a non-empty string: a file with
    ``null``, a number or ``""`` as a prompt is refused, not read as the text "None" or "".

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: one line naming the file (and the line, for JSON Lines): a folder, not UTF-8, empty or
            without any prompt, not JSON, a JSON list or other non-object, a key that is empty or not a string,
            a key given twice, a JSON-Lines row giving both ``key`` and ``file``, a prompt that is not a
            non-empty string.
        OSError: the file cannot be read.
    """
    path = Path(path)
    text = read_text_file(path, "prompts file")
    if not text.strip():
        raise ValueError(f"{path}: empty prompts file; expected {PROMPTS_FORMAT}")
    prompts = None if path.suffix.lower() == ".jsonl" else _object_prompts(path, text)
    prompts = _line_prompts(path) if prompts is None else prompts
    if not prompts:
        raise ValueError(f"{path}: no prompts in this file; expected {PROMPTS_FORMAT}")
    return prompts


def _t2i_scores(pixels: torch.Tensor, prompt: str, networks: Networks, names: tuple[str, ...]) -> tuple[dict, torch.Tensor]:
    """Per-background CLIP / aesthetic scores of one generated image, and its uint8 composites ``(K, 3, H, W)``."""
    views = quantise(composites(pixels[None], names)[0])
    values: dict[str, torch.Tensor] = {}
    if networks.clip is not None:
        values["clip_score"] = clip_score(*networks.clip, views, [prompt] * len(names))
    if networks.aesthetic is not None:
        values["output_laion_score"] = networks.aesthetic(views)
    return {name: {m: float(v[i]) for m, v in values.items()} for i, name in enumerate(names)}, views


def evaluate_t2i(pred_dir: str | Path, prompts: dict[str, str], networks: Networks, *, ref_dir: str | Path | None = None,
                 backgrounds: tuple[str, ...] = BACKGROUND_NAMES, progress: bool = True) -> dict | None:
    """Benchmark generated RGBA images: CLIP score against their prompts and aesthetic score on each background
    composite, and FID per background against reference RGBA images composited the same way.

    With several processes (``accelerate launch``) the generated and the reference images are sharded by
    index, each process scoring on its own device, and the shards are gathered in key order on the main
    process, as :func:`run_sharded` does.

    Args:
        pred_dir: generated images (tree layout as for :func:`evaluate_folders`).
        prompts: key -> prompt (:func:`read_prompts`); only images with a prompt are scored: the others are
            listed as ``"extra"`` (as predictions without GT in :func:`evaluate_folders`), prompts without an
            image as ``"missing"``.
        networks: CLIP (``clip``), ``aesthetic`` and ``inception`` (for FID, with ``ref_dir``) are used.
        ref_dir: optional folder of reference RGBA images (unpaired).
        progress: show a tqdm progress bar (generated images, with ETA) on stderr.
    Returns:
        Report dict like :func:`build_report` (``clip_score`` is the per-image ``100 * cos``; the
        torchmetrics convention clamps the mean at 0, reported as ``clip_score_clamped``), FID under
        ``tree.overall.fid_pooled``; None on the non-main processes of a multi-process launch.
    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: a folder does not exist, is not a folder or
            holds no images (both folders are checked before any scoring); ValueError: the folders overlap.
    Source: ``accelerate.PartialState`` and ``accelerate.utils.gather_object`` for the sharding.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    if ref_dir is not None:  # FID of a set against itself (or a part of it) means nothing
        check_apart(ref_dir, pred_dir, names=("reference folder", "generated-image folder"))
    plan = pair_folders(pred_dir)
    found = {pair.key for pair in plan.pairs} | set(plan.ambiguous)
    plan.missing = sorted(key for key in prompts if key not in found)  # e.g. a generate run that stopped early
    plan.extra = [pair.key for pair in plan.pairs if pair.key not in prompts]  # e.g. generate's contact_sheet.png
    plan.pairs = [pair for pair in plan.pairs if pair.key in prompts]
    refs = pair_folders(ref_dir).pairs if ref_dir is not None else []
    state = PartialState()
    if state.num_processes > 1:
        networks.to(state.device)
    mine = slice(state.process_index, None, state.num_processes)
    fid = ref_dir is not None and networks.inception is not None
    shard = _t2i_shard(plan.pairs[mine], refs[mine], prompts, networks, backgrounds, fid=fid, progress=progress)
    shards = gather_object([shard]) if state.num_processes > 1 else [shard]
    if not state.is_main_process:
        return None
    result = _gather([evaluation for evaluation, _ in shards], 0)
    protocol = Protocol("t2i", jpeg=False, ssim_y=False, raw_group=False, alpha_metrics=False, backgrounds=backgrounds)
    report = build_report(result, protocol, plan, networks, pred=pred_dir, ref=ref_dir)
    if fid:
        sets = _fid_sets_by_key([f for _, f in shards], backgrounds)
        report["tree"]["overall"]["fid_pooled"] = fid_with_rgb(sets)
        report["notes"] += fid_notes(*map(len, sets[backgrounds[0]]))
    clip_mean = report["tree"]["overall"]["micro"].get(RGB_GROUP, {}).get("clip_score")
    report["clip_score_clamped"] = None if clip_mean is None else max(clip_mean, 0.0)
    return report


def _t2i_shard(pairs: list[Pair], refs: list[Pair], prompts: dict[str, str], networks: Networks,
               backgrounds: tuple[str, ...], *, fid: bool,
               progress: bool) -> tuple[Evaluation, dict[tuple[int, str], torch.Tensor]]:
    """Score one process's share of eval-t2i: the :class:`Evaluation` of its generated images, and (with
    ``fid``, which needs ``networks.inception``) ``(side, key) -> (K, 2048)`` Inception features of each
    image's K background composites, side 0 for a reference image and 1 for a generated one (the FID sides);
    ``progress``: a tqdm bar over the generated images."""
    result = Evaluation(worst=WorstImages(0))
    features: dict[tuple[int, str], torch.Tensor] = {}
    for pair in tqdm(pairs, desc="eval-t2i", unit="img", disable=not progress):
        try:
            groups, views = _t2i_scores(load_rgba(pair.gt), prompts[pair.key], networks, backgrounds)
        except IMAGE_ERRORS as err:
            result.failures.append({"key": pair.key, "error": describe_failure(pair, err)})
            continue
        result.records.append(ImageRecord(pair.key, pair.dataset, pair.subset, pair.category, groups))
        if fid:
            features[1, pair.key] = inception_features(networks.inception, views).cpu()
    for ref in refs if fid else []:
        try:
            views = quantise(composites(load_rgba(ref.gt)[None], backgrounds)[0])
        except IMAGE_ERRORS as err:
            result.failures.append({"key": f"ref:{ref.key}", "error": f"reference image {describe_failure(ref, err)}"})
            continue
        features[0, ref.key] = inception_features(networks.inception, views).cpu()
    return result, features


def _fid_sets_by_key(shards: list[dict[tuple[int, str], torch.Tensor]],
                     backgrounds: tuple[str, ...]) -> dict[str, tuple[FeatureSet, FeatureSet]]:
    """Merge the shards' Inception features in key order into background -> (reference, generated) feature
    sets (the same sets whatever the sharding)."""
    merged = {item: feats for shard in shards for item, feats in shard.items()}
    fid_sets = {name: (FeatureSet(), FeatureSet()) for name in backgrounds}
    for (side, _), feats in sorted(merged.items()):
        for name, row in zip(backgrounds, feats.split(1)):
            fid_sets[name][side].add(row)
    return fid_sets
