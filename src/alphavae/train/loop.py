"""The VAE training loop on accelerate (CPU, one GPU, ``accelerate launch`` multi-GPU); paper Sec. 4-5.1.

Several CPU processes: ``ACCELERATE_USE_CPU=true torchrun --nproc_per_node N $(which alphavae) train-vae ...``
(``accelerate launch --cpu`` starts a single process unless run under MPI).

Determinism: every random draw comes from generators seeded by ``(seed, step)``: the batch
(``alphavae.data.datasets.StepBatchSampler`` + ``RGBADataset``), the posterior noise and the solid
backgrounds of the alpha-aware discriminator are drawn for all images of an optimiser step and each
process / micro-step takes its rows. So a resumed run repeats an uninterrupted one exactly, and N processes
(or N accumulation micro-steps) with batch b compute what one process computes with batch N*b (within an
epoch; the BatchNorm of the PatchGAN and its local adaptive weight are the exceptions once the GAN is on).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import SCALER_NAME, gather_object, parse_flag_from_env
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from alphavae import io
from alphavae.accel import autocast_precision
from alphavae.convert import (
    check_rgb_counterpart,
    convert_to_rgba,
    downsampling_factor,
    load_autoencoder,
    looks_like_model_id,
)
from alphavae.data.datasets import (
    RGBADataset,
    StepBatchSampler,
    SubstituteUnreadable,
    item_generator,
    readable_files,
)
from alphavae.data.manifest import data_folder, read_manifest
from alphavae.eval.networks import LPIPS_MIN_SIZES
from alphavae.losses import AutoencoderForward, Objective, PatchDiscriminator
from alphavae.train.checkpoint import (
    STATE_FILE,
    TRAINING_SET_KEY,
    check_start,
    check_within,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    training_set_digest,
    verify_checkpoint,
    warn_other_training_set,
    way_back_on_error,
)
from alphavae.train.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    read_yaml,
    save_config,
    warn_long_warmup,
)

logger = logging.getLogger(__name__)

#: ``item_generator`` index tag of the per-micro-step noise stream (no data set has this many items).
_NOISE_STREAM = 2**31 - 1
#: JSON-lines logs of a run folder, one ``{"step": N, ...}`` record per line: optimiser steps and validations.
_LOGS = {"history": Path("history.jsonl"), "validation": Path("validation", "metrics.jsonl")}
#: JSON's names of the values ``json.loads`` returns, for messages.
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}


class NonFiniteLossError(RuntimeError):
    """Raised when ``max_nonfinite`` consecutive optimiser steps had a NaN/inf loss."""


def nonfinite_streak(streak: int, finite: bool, step: int, limit: int, cause: str = "loss") -> int:
    """The count of consecutive non-finite optimiser steps once step ``step`` (1-based) was ``finite`` or not
    (a non-finite step is skipped and logged as a warning naming ``cause``, what was not finite: ``"loss"`` or,
    in ``train-vae``, ``"gradient norm"``); 0 after a finite step. Shared by ``train-vae`` and ``train-lora``.

    Raises:
        NonFiniteLossError: the count reaches ``limit`` (``max_nonfinite``), naming the step and its ``cause``.
    """
    if finite:
        return 0
    streak += 1
    logger.warning("step %d: non-finite %s, step skipped (%d in a row)", step, cause, streak)
    if streak >= limit:
        raise NonFiniteLossError(f"{streak} consecutive steps with a non-finite {cause} (last: step {step}); lower "
                                 "the learning rate, use bf16 instead of fp16, or check the data")
    return streak


@dataclasses.dataclass
class TrainResult:
    """What ``train_vae`` did.

    Attributes:
        step: optimiser steps completed when the run returned, counted from the start of the training run
            (steps before a resume and skipped non-finite steps included): ``optim.max_steps`` after a full
            run, ``stop_after``'s step when stopped early.
        history: one dict of mean logged values per optimiser step run here, except skipped steps (keys as
            ``Objective`` logs plus ``step``, ``lr``, the autoencoder's rate that step used, and on PatchGAN steps
            ``disc_lr``, the discriminator's).
        final_dir: the exported ``RUN_DIR/final`` folder, or None when stopped early.
        skipped_steps: steps dropped here for a non-finite loss or a non-finite gradient norm of the autoencoder.
        failed_images: unreadable files ("path: reason") that were left out: by the check before training
            (``data.check_images``), or when met during the run (deleted or damaged since; the item is taken from
            the next image of the list, ``alphavae.data.datasets.SubstituteUnreadable``), from every process.
        trained: False when a resumed run had already reached ``optim.max_steps`` and exported ``final/``:
            nothing was trained or written (``final_dir`` is that export).
        start_step: the step this call started from: the resumed checkpoint's, 0 for a fresh start (this call
            ran ``step - start_step`` steps).
    """

    step: int
    history: list[dict]
    final_dir: Path | None
    skipped_steps: int
    failed_images: list[str]
    trained: bool = True
    start_step: int = 0


def load_models(model: ModelConfig, *, seed: int = 0) -> tuple[AutoencoderKL, AutoencoderKL | None]:
    """Build the trainable ``AutoencoderKL`` and, when available, the frozen RGB reference for Ref-KL.

    ``model.init_config``: random init from a diffusers config (``seed``), channels set to
    ``model.in_channels``. ``model.vae``: an RGB folder is converted with ``convert_to_rgba`` (for
    ``in_channels=4``) and the original becomes the reference; an RGBA folder is trained as is. A given
    ``model.ref_vae`` is the reference in every case (it replaces the converted folder's original).

    Returns:
        ``(vae in float32, train mode; reference in float32 or None)``.

    Raises:
        ValueError: neither or both of ``vae`` / ``init_config``, channels that do not fit, a ``ref_vae`` that
            is not an RGB VAE with the trained VAE's latent channels and downsampling, or a model folder whose
            config describes another class or does not build an ``AutoencoderKL`` (``load_autoencoder``), or an
            ``init_config`` file that is not a JSON object (``_check_init_config``, naming it).
        FileNotFoundError, OSError: a model folder or the ``init_config`` file is missing or unloadable
            (``alphavae.convert.load_autoencoder``, ``_check_init_config``: mistyped local paths fail at once,
            without a hub look-up; only ``org/name`` ids are looked up on the hub).
    """
    if (model.vae is None) == (model.init_config is None):
        raise ValueError("give exactly one of model.vae (a diffusers folder) or model.init_config (a config.json)")
    channels = model.in_channels
    if model.init_config is not None:
        _check_init_config(model.init_config)
        config = AutoencoderKL.load_config(model.init_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKL.from_config({**config, "in_channels": channels, "out_channels": channels})
        reference = None
    else:
        vae = load_autoencoder(model.vae)
        source_channels = vae.config.in_channels
        if source_channels == 3 and channels == 4:
            vae, reference = convert_to_rgba(vae), vae
        elif source_channels == channels:
            reference = None
        else:
            raise ValueError(f"{model.vae}: a {source_channels}-channel VAE cannot be trained with model.in_channels={channels}")
    if model.ref_vae is not None:
        reference = load_autoencoder(model.ref_vae)
        check_rgb_counterpart(reference, latent_channels=vae.config.latent_channels,
                              downsampling=downsampling_factor(vae), name=model.ref_vae,
                              role="the Ref-KL reference (model.ref_vae / --ref-vae)")
    return vae.train(), reference


def split_files(data: DataConfig) -> tuple[list[Path], list[Path]]:
    """Training and held-out validation image files.

    A manifest uses its ``train`` split and the first ``val_count`` files of its ``val`` split (none if that
    split is empty); a folder holds out its last ``val_count`` files.

    Raises:
        ValueError: no ``data.source``, no training images, or a folder with no more images than ``val_count``;
            an invalid manifest (``alphavae.data.manifest.read_manifest``).
        FileNotFoundError: ``data.source`` does not exist.
    """
    if data.source is None:
        raise ValueError("data.source is not set (pass --data DIR|MANIFEST)")
    if Path(data.source).suffix == ".jsonl":
        train = RGBADataset(data.source, split="train").files
        try:
            return train, RGBADataset(data.source, split="val").files[: data.val_count]
        except ValueError:
            return train, []
    files = [path for path, _ in io.list_images(data.source)]
    if len(files) <= data.val_count:
        raise ValueError(f"{data.source}: {len(files)} images, not more than data.val_count={data.val_count}")
    cut = len(files) - data.val_count
    return files[:cut], files[cut:]


def step_randomness(seed: int, step: int, total_rows: int, rows: slice,
                    latent_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior noise ``(rows, *latent_shape)`` and GAN backgrounds ``(rows, 3)`` in [-1, 1] for one micro-batch.

    Drawn for all ``total_rows`` images of optimiser step ``step`` (every micro-step of every process) from
    ``item_generator(seed, step, _NOISE_STREAM)``; the caller takes its ``rows``. Row ``r`` belongs to the
    same image whatever the split into processes and accumulation micro-steps.
    """
    generator = item_generator(seed, step, _NOISE_STREAM)
    noise = torch.randn(total_rows, *latent_shape, generator=generator)
    backgrounds = torch.rand(total_rows, 3, generator=generator) * 2 - 1
    return noise[rows], backgrounds[rows]


@torch.no_grad()
def validate(vae: AutoencoderKL, pixels: torch.Tensor, step: int, run_dir: Path, accelerator: Accelerator) -> dict:
    """Reconstruct held-out images (posterior mode), save a grid PNG, return PSNR per background (logged by the
    caller).

    The grid (``RUN_DIR/validation/step-XXXXXXXX.png``, one row per image, labelled columns) shows target
    and reconstruction composited over checkerboard, black and white (RGB models: target and reconstruction).

    Args:
        vae: the ``AutoencoderKL`` being trained (put back in its training mode afterwards).
        pixels: ``(N, C, H, W)`` held-out images in [-1, 1]: straight RGBA (C = 4) or RGB (C = 3), H and W
            multiples of the VAE's downsampling factor (not padded here); moved to the accelerator's device. The
            colour under alpha = 0 of RGBA images is cleared first (``io.clear_hidden_colour``, as ``RGBAVAE``
            encodes and the training losses see it), so images that look the same validate the same.
        step: optimiser step, for the file name and the TensorBoard image.
        run_dir: the run folder.
        accelerator: supplies the device and the TensorBoard tracker.

    Returns:
        ``{"val/psnr_<background>": PSNR in dB}`` (``"val/psnr_rgb"`` for RGB models), computed on
        composites in [0, 1] from the squared error pooled over all N images (not a mean of per-image PSNR),
        capped at 100 dB. The grid also goes to the TensorBoard tracker as ``val/grid``.
    """
    was_training = vae.training
    vae.eval()
    pixels = pixels.to(accelerator.device)
    if pixels.shape[1] == 4:
        pixels = io.clear_hidden_colour(pixels)
    reconstruction = vae.decode(vae.encode(pixels).latent_dist.mode()).sample.float().clamp(-1, 1)
    vae.train(was_training)
    views = {"rgb": (pixels, reconstruction)} if pixels.shape[1] == 3 else {
        bg: (io.composite(pixels, bg), io.composite(reconstruction, bg)) for bg in io.PREVIEW_BACKGROUNDS}
    metrics, columns, labels = {}, [], []
    for name, (target, prediction) in views.items():
        mse = ((io.to_unit(target) - io.to_unit(prediction)) ** 2).mean().clamp_min(1e-10)
        metrics[f"val/psnr_{name}"] = float(-10 * torch.log10(mse))
        columns += [target, prediction]
        labels += [f"{name}: target", f"{name}: recon."]
    image = io.labelled_sheet(torch.stack(columns, dim=1).cpu(), [f"#{i + 1}" for i in range(len(pixels))], labels)
    io.save_rgba(image, run_dir / "validation" / f"step-{step:08d}.png", overwrite=True)
    tracker = accelerator.get_tracker("tensorboard", unwrap=True)
    tracker.add_image("val/grid", io.to_unit(image[:3]), step)
    return metrics


def lr_schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> LambdaLR:
    """The autoencoder's learning-rate schedule, stepped once per optimiser step.

    ``diffusers.optimization.get_scheduler(optim.scheduler)`` with ``optim.warmup_steps`` and
    ``optim.max_steps``; with ``optim.decay_steps`` = D > 0 its factor is also multiplied by
    ``clamp((max_steps - step) / D, 0, 1)``: a linear decay to 0 over the final D steps (warmup-stable-decay,
    Hu et al. 2024, MiniCPM, when the scheduler is constant). The factor depends only on the step, so a run
    resumed with a different ``max_steps`` or ``decay_steps`` follows the new schedule from its first step on
    (:func:`_apply_resumed_settings`).

    Raises:
        ValueError: unknown scheduler name (diffusers).
    """
    schedule = get_scheduler(optim.scheduler, optimizer, num_warmup_steps=optim.warmup_steps,
                             num_training_steps=optim.max_steps)
    if optim.decay_steps == 0:
        return schedule
    return LambdaLR(optimizer, [functools.partial(_decayed, shape, optim.max_steps, optim.decay_steps)
                                for shape in schedule.lr_lambdas])


def discriminator_schedule(optim: OptimConfig, gan_start: int) -> Callable[[int], float]:
    """The PatchGAN discriminator's learning rate as a function of the optimiser step (0-based, >= ``gan_start``:
    the discriminator trains from ``loss.gan_start`` on); a pure function of the step, so a resumed run follows it
    exactly (nothing of it is checkpointed) and changed settings apply from the first resumed step.

    Args:
        optim: its ``disc_scheduler``: ``"constant"`` gives ``disc_lr`` (or ``lr`` when ``None``) at every step;
            ``"generator"`` gives that base rate times the factor of ``get_scheduler(optim.scheduler)`` with
            ``optim.warmup_steps`` warm-up and ``optim.max_steps - gan_start`` training steps at step
            ``step - gan_start``, as the reference train_vae.py's ``lr_scheduler_discriminator``, stepped on GAN
            steps only (``optim.decay_steps`` does not apply).
        gan_start: ``loss.gan_start``.

    Returns:
        ``step -> rate``, a rate >= 0 (0 at the first GAN step when there is a warm-up).

    Raises:
        ValueError: with ``"generator"``: unknown ``optim.scheduler``, or ``"polynomial"`` with a base rate not above
            its end rate 1e-7 (diffusers, as for the autoencoder's schedule).
    """
    base = optim.lr if optim.disc_lr is None else optim.disc_lr
    if optim.disc_scheduler == "constant":
        return functools.partial(_scaled, base, _unit, 0)
    # get_scheduler needs an optimiser; at the base rate, as polynomial's factor is relative to it (lr_end absolute)
    holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    shape = get_scheduler(optim.scheduler, holder, num_warmup_steps=optim.warmup_steps,
                          num_training_steps=max(1, optim.max_steps - gan_start)).lr_lambdas[0]
    return functools.partial(_scaled, base, shape, gan_start)


def _scaled(base: float, shape: Callable[[int], float], start: int, step: int) -> float:
    """``base * shape(step - start)``: a schedule factor counted from step ``start``."""
    return base * shape(step - start)


def _unit(step: int) -> float:
    """The factor of a constant schedule: 1 at every step."""
    return 1.0


def training_precision(config: TrainConfig, device: str) -> str:
    """The accelerate ``mixed_precision`` a run trains with: ``config.mixed_precision`` resolved for ``device``
    (``"cuda"`` or ``"cpu"``; ``alphavae.accel.autocast_precision``), checked before any model loads.

    Returns:
        ``"no"``, ``"bf16"`` or ``"fp16"``.

    Raises:
        ValueError: it is ``"fp16"`` (set, or ``"auto"`` resolved to it) while the PatchGAN trains in this run
            (``loss.gan_weight`` > 0 and ``loss.gan_start`` < ``optim.max_steps``): accelerate's one gradient
            scaler would serve the autoencoder and the discriminator, updated twice a step and unscaling the
            discriminator's gradients wrongly; the message suggests bf16 or float32. An unknown setting
            (``autocast_precision``).
    """
    precision = autocast_precision(config.mixed_precision, device)
    lc = config.loss
    if precision == "fp16" and lc.gan_weight > 0 and lc.gan_start < config.optim.max_steps:
        raise ValueError(f"mixed_precision fp16 (config {config.mixed_precision!r}) cannot train the PatchGAN "
                         "(loss.gan_weight > 0): the autoencoder and the discriminator would share one gradient "
                         "scaler; use mixed_precision bf16 or no (float32), or set loss.gan_weight=0")
    return precision


def _adamw_settings(optim: OptimConfig, *, discriminator: bool) -> dict:
    """``torch.optim.AdamW`` keyword arguments of the autoencoder's or the discriminator's optimiser (the
    discriminator's: initial rate ``disc_lr`` or ``lr``, then set each step by :func:`discriminator_schedule`;
    AdamW's default eps)."""
    if discriminator:
        return dict(lr=optim.lr if optim.disc_lr is None else optim.disc_lr, betas=tuple(optim.betas),
                    weight_decay=optim.weight_decay)
    return dict(lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay, eps=optim.eps)


def _apply_resumed_settings(config: TrainConfig, optimizer, scheduler: LambdaLR, disc_optimizer,
                            ema: EMAModel | None, step: int) -> None:
    """Make a run resumed at optimiser step ``step`` follow its own settings from its first step: ``optim.lr``,
    ``betas``, ``weight_decay``, ``eps``, ``ema_decay`` and the schedule (``scheduler``, ``warmup_steps``,
    ``max_steps``, ``decay_steps``); the discriminator's rate (``disc_lr``, ``disc_scheduler``) is set from the
    config at each step (:func:`discriminator_schedule`). Restoring a checkpoint also restores the hyperparameters
    saved with the optimisers, the schedule's base rate and position and the EMA decay, so a resume that changed
    them (logged as a config change, and recorded in ``config.yaml``) trained on with the old values, and its first
    step at the old schedule's rate (0 at the end of a decay). AdamW moments and the step are kept; with unchanged
    settings the rates are recomputed as ``LambdaLR`` computes them, so the resume stays exact. The schedule's
    position becomes ``step`` (older checkpoints lag it by the steps skipped as non-finite)."""
    for opt, discriminator in ((optimizer, False), (disc_optimizer, True)):
        if opt is None:
            continue
        settings = _adamw_settings(config.optim, discriminator=discriminator)
        settings.pop("lr")
        for group in opt.param_groups:
            group.update(settings)
    scheduler.base_lrs = [config.optim.lr] * len(scheduler.base_lrs)
    _schedule_to(optimizer, scheduler, step)
    if ema is not None:
        ema.decay = config.ema_decay


def _schedule_to(optimizer, scheduler: LambdaLR, step: int) -> None:
    """Set the autoencoder's rate to that of optimiser step ``step`` (0-based) of ``scheduler`` and its position to
    ``step``, as ``step`` calls of ``scheduler.step()`` would: the rate of a step depends only on the step, skipped
    non-finite steps included."""
    scheduler.last_epoch = step
    for group, base, shape in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * shape(step)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


def _set_rate(optimizer, rate: float) -> None:
    """Set the learning rate of every parameter group of ``optimizer`` to ``rate``."""
    for group in optimizer.param_groups:
        group["lr"] = rate


def _finite_gradient_norm(accelerator: Accelerator, model, optimizer, max_grad_norm: float | None) -> bool:
    """Clip the autoencoder's gradients to ``max_grad_norm`` (accelerate's ``clip_grad_norm_``; fp16 gradients are
    unscaled first) and say whether their total norm is finite on every process. With clipping off (``None`` or 0)
    the norm is still computed, with an infinite limit that leaves the gradients as they are (a factor of 1):
    one pass over the gradients, small next to the backward pass. Under fp16 a non-finite norm (an overflow of the
    scaled gradients) is also handed to the gradient scaler through ``optimizer.step()``: the scaler skips the
    update and lowers its scale; without it the scale stays too high and the next step's unscaling raises
    RuntimeError ("unscale_() has already been called ... since the last update()")."""
    norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf)
    finite = on_every_process(accelerator, torch.isfinite(norm))
    if not finite and accelerator.scaler is not None:
        optimizer.step()
    return finite


def _decayed(shape, max_steps: int, decay_steps: int, step: int) -> float:
    """``shape(step)`` times the linear decay factor of :func:`lr_schedule`."""
    return shape(step) * min(1.0, max(0.0, (max_steps - step) / decay_steps))


def _data(config: TrainConfig, accelerator: Accelerator, start_micro_step: int):
    """This process's training loader from ``start_micro_step``, validation pixels (main process), failures and the
    training set's digest (:func:`~alphavae.train.checkpoint.training_set_digest`).

    Returns ``(DataLoader, (N, C, size, size) tensor or None, ["path: reason"], digest)``; the loader yields
    ``SubstituteUnreadable`` batches, ``((batch_size, C, size, size) or None, ["path: reason"])``. Its worker
    processes are ``data.num_workers``, at most the CPUs this process may run on.

    Raises:
        ValueError: as ``split_files``; no training image is readable (``data.check_images``), or fewer training
            images than one global batch (``data.batch_size`` x processes); one line naming ``data.source``.
    """
    data, rgb = config.data, config.model.in_channels == 3
    train_files, val_files = split_files(data)
    train_options = dict(size=data.size, crop=data.crop, resize_short_side=data.resize_short_side,
                         blend_prob=data.blend_prob, alpha_scale_prob=data.alpha_scale_prob,
                         alpha_scale_min=data.alpha_scale_min, opaque=rgb, opaque_background=data.opaque_background,
                         seed=config.seed)
    val_options = dict(size=data.size, crop="center", resize_short_side=data.resize_short_side, opaque=rgb,
                       seed=config.seed)
    failed: list[str] = []
    if data.check_images:
        train_files, failed = readable_files(RGBADataset(train_files, **train_options),
                                             show_progress=accelerator.is_main_process)
        if not train_files:
            raise ValueError(f"{data.source}: no readable training images, all {len(failed)} were skipped as "
                             f"unreadable (first: {failed[0]})")
        if val_files:
            val_files, val_failed = readable_files(RGBADataset(val_files, **val_options), show_progress=False)
            failed += val_failed
    world = accelerator.num_processes
    if len(train_files) < data.batch_size * world:
        held = val_files if Path(data.source).is_dir() else []  # a manifest's val split is not taken from training
        held_out = f", {len(held)} more held out for validation" if held else ""
        raise ValueError(f"{data.source}: {len(train_files)} {'readable ' if failed else ''}training images"
                         f"{held_out}, fewer than one global batch of {data.batch_size * world} (data.batch_size "
                         f"{data.batch_size} x {world} processes); lower data.batch_size or add images")
    dataset = RGBADataset(train_files, **train_options)
    sampler = StepBatchSampler(len(dataset), data.batch_size * world,
                               config.optim.max_steps * config.optim.gradient_accumulation, seed=config.seed,
                               start_step=start_micro_step, rank=accelerator.process_index, world_size=world)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    loader = DataLoader(SubstituteUnreadable(dataset), batch_sampler=sampler,
                        num_workers=min(data.num_workers, cpus), collate_fn=SubstituteUnreadable.collate)
    val_pixels = None
    if val_files and accelerator.is_main_process:
        val_set = RGBADataset(val_files, **val_options)
        val_pixels = torch.stack([val_set[i] for i in range(len(val_set))])
    return loader, val_pixels, failed, training_set_digest(train_files, data_folder(data.source))


def _exported_after(run_dir: Path, checkpoint: Path) -> bool:
    """Whether ``run_dir/final`` was exported after ``checkpoint`` was saved (not left by an earlier, shorter run
    whose resume was stopped between its last checkpoint and its export)."""
    exported = run_dir / "final" / "config.json"
    return exported.is_file() and exported.stat().st_mtime_ns >= (checkpoint / STATE_FILE).stat().st_mtime_ns


def _validate_exported(vae: AutoencoderKL, ema: EMAModel | None, pixels: torch.Tensor, step: int, run_dir: Path,
                       accelerator: Accelerator) -> dict:
    """``validate`` the weights ``final/`` would hold: the EMA weights when kept (the training ones restored after)."""
    if ema is None:
        return validate(vae, pixels, step, run_dir, accelerator)
    ema.store(vae.parameters())
    ema.copy_to(vae.parameters())
    try:
        return validate(vae, pixels, step, run_dir, accelerator)
    finally:
        ema.restore(vae.parameters())


def _note_unreadable(unreadable: list[str], failed: list[str], step: int) -> None:
    """Add images that became unreadable during the run (``"path: reason"``) to ``failed``, warning once each."""
    for failure in unreadable:
        if failure not in failed:
            failed.append(failure)
            logger.warning("step %d: %s; skipped, the next image of the list takes its place", step, failure)


def _log_validation(vae: AutoencoderKL, ema: EMAModel | None, pixels: torch.Tensor, step: int, run_dir: Path,
                    accelerator: Accelerator) -> None:
    """``_validate_exported`` at ``step`` and log the metrics (TensorBoard and ``validation/metrics.jsonl``)."""
    metrics = _validate_exported(vae, ema, pixels, step, run_dir, accelerator)
    accelerator.log(metrics, step=step)
    _append_log(run_dir / _LOGS["validation"], {"step": step, **metrics})


def _export(vae: AutoencoderKL, ema: EMAModel | None, config: TrainConfig, run_dir: Path) -> Path:
    """Save ``RUN_DIR/final`` (diffusers ``save_pretrained``, safetensors; EMA weights if kept) + config."""
    final = run_dir / "final"
    model = copy.deepcopy(vae)
    if ema is not None:
        ema.copy_to(model.parameters())
    temporary = run_dir / ".tmp-final"
    model.save_pretrained(temporary, safe_serialization=True)
    save_config(config, temporary / "train_config.yaml")
    io.set_default_permissions(temporary)
    if final.exists():
        import shutil

        shutil.rmtree(final)
    os.replace(temporary, final)
    return final


def _append_log(path: Path, record: dict) -> None:
    """Append ``record`` as one JSON line to ``path``."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep the lines of a JSON-lines log whose ``"step"`` is at most ``last_step`` (atomic rewrite).

    On resume from the checkpoint of step ``last_step``, the lines of later steps describe training that the
    resume discards (and re-runs); a line cut short by a killed process is one of them.
    """
    if not path.is_file():
        return
    text, kept = path.read_text(encoding="utf-8"), []
    for line in text.splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    kept_text = "".join(kept)
    if kept_text != text:  # rewritten only when some line goes
        io.atomic_write_text(path, kept_text, overwrite=True)


def _smallest_input(network: torch.nn.Module) -> int:
    """Smallest square input side for which every ``Conv2d`` of a sequential ``network`` (applied in module
    order) still leaves at least one pixel, e.g. 24 for the 3-layer ``PatchDiscriminator``."""
    side = 1
    for conv in reversed([m for m in network.modules() if isinstance(m, torch.nn.Conv2d)]):
        side = (side - 1) * conv.stride[0] + conv.kernel_size[0] - 2 * conv.padding[0]
    return max(side, 1)


def _check_crop_size(size: int, factor: int, objective: Objective, last_step: int) -> None:
    """Refuse a ``data.size`` that is not a multiple of the VAE's downsampling ``factor``, or smaller than the
    LPIPS network or (when it runs by step ``last_step``) the PatchGAN can take; ValueError naming data.size."""
    if size % factor:
        raise ValueError(f"data.size={size} must be a multiple of {factor}, the VAE's downsampling factor")
    minimums = []
    if objective.lpips is not None:
        net = objective.config.lpips_net
        minimums.append((LPIPS_MIN_SIZES[net], f"the LPIPS term's {net} backbone (or set loss.lpips_weight=0)"))
    if objective.gan_active(last_step):
        layers = objective.config.disc_layers
        minimums.append((_smallest_input(objective.discriminator),
                         f"the PatchGAN with loss.disc_layers={layers} (or set loss.gan_weight=0)"))
    for minimum, user in minimums:
        if size < minimum:
            raise ValueError(f"data.size={size} is too small for {user}: it needs at least {minimum}")


def _save_run_config(config: TrainConfig, path: Path, resumed_step: int | None) -> None:
    """Write ``RUN_DIR/config.yaml``. On a resume (from step ``resumed_step``) with changed settings, the previous
    file is first kept as ``config-before-step-N.yaml`` (``-2``, ``-3``, ... when that name is taken, e.g. after
    resuming twice from one checkpoint) and the changed keys are logged."""
    if resumed_step is not None and path.is_file():
        changed = _changed_keys(path, config.to_dict())
        if changed:
            kept = _free_name(path.with_name(f"config-before-step-{resumed_step:08d}.yaml"))
            os.replace(path, kept)
            logger.warning("config changed on resume (%s); the earlier settings are in %s", ", ".join(changed), kept)
    save_config(config, path)


def _free_name(path: Path) -> Path:
    """``path`` if nothing is there, else the first free ``<stem>-2<suffix>``, ``<stem>-3<suffix>``, ..."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate


def _changed_keys(path: Path, values: dict) -> list[str]:
    """Dotted keys whose value in the YAML file ``path`` differs from ``values`` (every key when unreadable)."""
    try:
        old = read_yaml(path.read_text(encoding="utf-8"), str(path))
    except (OSError, ValueError):
        old = None
    old, new = _flatten(old if isinstance(old, dict) else {}), _flatten(values)
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def _flatten(values: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}, "c": 2}`` -> ``{"a.b": 1, "c": 2}``."""
    flat = {}
    for name, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[prefix + name] = value
    return flat


def on_every_process(accelerator: Accelerator, flag: bool | torch.Tensor) -> bool:
    """Whether ``flag`` (a bool or a one-element tensor) is true on every process: one all-reduce, so every process
    must call it at the same point, and all of them get the same answer (what lets them stop together, or skip a
    non-finite step together). Shared by ``train-vae`` and ``train-lora``. Library: ``Accelerator.reduce``.

    Returns:
        The same bool on every process. Raises nothing of its own (a process that never calls it leaves the
        others waiting).
    """
    flag = torch.as_tensor(flag, dtype=torch.float32, device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum") == accelerator.num_processes)


def _mean_logs(accelerator: Accelerator, logs: list[dict]) -> dict:
    """Mean of each logged value over micro-steps and processes."""
    keys = sorted(logs[0])
    local = torch.tensor([[entry[k] for k in keys] for entry in logs], device=accelerator.device).mean(0)
    return dict(zip(keys, accelerator.reduce(local, "mean").tolist()))


def _preflight(config: TrainConfig, run_dir: Path, resume: str | None) -> tuple[Path | None, int]:
    """The checks ``train_vae`` makes before any model loads; returns the verified checkpoint to resume from (None:
    a fresh start) and its step (0 for a fresh start).

    Raises: as ``train_vae`` for its data source, inputs, output folder and checkpoint (FileNotFoundError,
    FileExistsError, NotADirectoryError, IsADirectoryError, ValueError, OSError).
    """
    model, source = config.model, config.data.source
    if source is not None:
        if not Path(source).exists():
            raise FileNotFoundError(f"data source {source} (data.source / --data) does not exist")
        io.check_output_outside_inputs(run_dir, data_folder(source))
    if model.init_config is not None:
        _check_init_config(model.init_config)
    io.check_output_outside_inputs(run_dir, [path for path in (model.vae, model.ref_vae) if path])
    io.check_inputs_outside_output(run_dir, _local_inputs(config))  # the run replaces final/, checkpoints/, ...
    _check_run_layout(run_dir)
    io.check_writable_folder(run_dir, "the run")
    check_start(run_dir, resume, run_dir / "final", [run_dir / log for log in _LOGS.values()])
    warn_long_warmup(config.optim.warmup_steps, config.optim.max_steps, ("optim.warmup_steps", "optim.max_steps"))
    checkpoint = find_checkpoint(run_dir, resume) if resume else None
    if checkpoint is None:
        return None, 0
    with way_back_on_error(checkpoint, resume, run_dir):  # train-lora checks its resume the same way
        saved = verify_checkpoint(checkpoint, "train-vae")
    check_within(checkpoint, saved["step"], config.optim.max_steps)
    _check_same_parts(checkpoint, config)
    return checkpoint, saved["step"]


def _local_inputs(config: TrainConfig) -> list[Path]:
    """The inputs of a run that exist on disk: the data folder (a manifest, its folder and those of its image
    entries), and the ``model.vae``, ``model.ref_vae`` and ``model.init_config`` paths (hub ids are none).

    Raises:
        ValueError: a manifest source is invalid (``alphavae.data.manifest.read_manifest``).
    """
    inputs, source = [], config.data.source
    if source is not None:
        inputs.append(data_folder(source))
        if Path(source).suffix == ".jsonl" and Path(source).is_file():
            inputs.append(Path(source))
            inputs += sorted({(data_folder(source) / record["file"]).parent for record in read_manifest(source)})
    model = config.model
    models = (model.vae, model.ref_vae, model.init_config)
    return inputs + [Path(path) for path in models if path and Path(path).exists()]


def _check_run_layout(run_dir: Path) -> None:
    """Refuse a run folder where a file stands in the place of a folder the run writes (``checkpoints``, ``final``,
    ``validation``), or a folder in the place of one of its files (``config.yaml``, the logs): found before the
    models load, not at the first write after training.

    Raises:
        NotADirectoryError, IsADirectoryError: naming the path.
    """
    for name in ("checkpoints", "final", "validation"):
        if (run_dir / name).exists() and not (run_dir / name).is_dir():
            raise NotADirectoryError(f"{run_dir / name}: not a folder, where the run writes its {name}/ folder; "
                                     "move it away or choose another run folder")
    for path in (Path("config.yaml"), *_LOGS.values()):
        if (run_dir / path).is_dir():
            raise IsADirectoryError(f"{run_dir / path}: a folder, where the run writes its {path} file; "
                                    "move it away or choose another run folder")


def _check_init_config(init_config: str) -> None:
    """Refuse a local ``model.init_config`` that is missing (also a mistyped path: only an ``org/name`` hub id, not
    ending in ``.json``, is looked up on the hub, by ``load_models``), or is not a JSON object (a folder: its
    ``config.json``).

    Raises:
        FileNotFoundError: the path does not exist and is no hub id, or a folder without ``config.json``.
        ValueError: the file is not UTF-8 JSON, or its JSON is not an object; one line naming the file.
    """
    path = Path(init_config)
    if not path.exists():
        if looks_like_model_id(init_config) and path.suffix != ".json":  # "org/config.json": a mistyped file
            return
        raise FileNotFoundError(f"init config {init_config} (model.init_config / --init-config) does not exist")
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: a folder without config.json (model.init_config / --init-config)")
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not a diffusers config (model.init_config / --init-config): not JSON ({err})") \
            from None
    if not isinstance(values, dict):
        raise ValueError(f"{file}: not a diffusers config (model.init_config / --init-config): its JSON is "
                         f"{_JSON_KINDS.get(type(values), type(values).__name__)}, not an object")


def _discriminator(config: TrainConfig) -> PatchDiscriminator:
    """The PatchGAN ``config.loss`` asks for: 3 input channels for RGB models or composites (``disc_input``), else 4
    (raw RGBA); ``disc_channels`` wide, ``disc_layers`` deep. Initialised from the global RNG (callers seed it)."""
    lc = config.loss
    channels = 3 if config.model.in_channels == 3 or lc.disc_input == "composite" else 4
    return PatchDiscriminator(channels, lc.disc_channels, lc.disc_layers)


def _discriminator_mismatch(checkpoint: Path, config: TrainConfig) -> list[str]:
    """The problem (none or one) when ``checkpoint``'s saved PatchGAN (``model_1.safetensors``, read by its header)
    has other tensor names or shapes than the one ``config.loss`` builds (``disc_channels``, ``disc_layers``,
    ``disc_input``). A checkpoint saved as ``pytorch_model_1.bin`` passes (its shapes need a full load)."""
    saved_file = checkpoint / "model_1.safetensors"
    if not saved_file.is_file():
        return []
    lc = config.loss
    with torch.device("meta"):  # shapes only, no memory or initialisation cost
        built = _discriminator(config).state_dict()
    with safe_open(saved_file, "pt") as saved:
        saved_shapes = {name: tuple(saved.get_slice(name).get_shape()) for name in saved.keys()}
    if saved_shapes == {name: tuple(tensor.shape) for name, tensor in built.items()}:
        return []
    return [f"its PatchGAN discriminator has another architecture than this run's (loss.disc_channels="
            f"{lc.disc_channels}, disc_layers={lc.disc_layers}, disc_input={lc.disc_input}: first layer "
            f"{tuple(built['0.weight'].shape)}, saved {saved_shapes.get('0.weight')}; {len(built)} tensors, saved "
            f"{len(saved_shapes)})"]


def _check_same_parts(checkpoint: Path, config: TrainConfig) -> None:
    """Raise ValueError when this run has an EMA and ``checkpoint`` none, or the other way round, or this run trains
    a PatchGAN discriminator and ``checkpoint`` has none or one of another architecture (``_discriminator_mismatch``):
    accelerate cannot restore such a checkpoint (it failed with "damaged or saved from another model", or a missing
    file). A checkpoint with a discriminator resumes without one when ``loss.gan_weight`` is 0. Read from the files
    accelerate names (``model_1.*``: the discriminator; ``custom_checkpoint_1.pkl``: the EMA, after the schedule's
    ``custom_checkpoint_0.pkl``)."""
    saved_gan = any((checkpoint / name).is_file() for name in ("model_1.safetensors", "pytorch_model_1.bin"))
    saved_ema = (checkpoint / "custom_checkpoint_1.pkl").is_file()
    problems = [f"it was saved {'with' if saved_ema else 'without'} an EMA and this run has ema: "
                f"{str(config.ema).lower()}"] if saved_ema != config.ema else []
    if config.loss.gan_weight > 0 and not saved_gan:
        problems.append("it has no PatchGAN discriminator and this run trains one (loss.gan_weight > 0)")
    elif config.loss.gan_weight > 0:
        problems += _discriminator_mismatch(checkpoint, config)
    if problems:
        raise ValueError(f"{checkpoint} cannot be resumed with these settings: {'; '.join(problems)}. Resume with "
                         "the settings it was saved with; once that run ends, its final/ model can start a new run "
                         "with these (--vae RUN_DIR/final)")


def train_vae(config: TrainConfig, run_dir: str | os.PathLike, *, resume: str | None = None,
              stop_after: int | None = None) -> TrainResult:
    """Fine-tune (or train from scratch) an RGBA or RGB ``AutoencoderKL`` with the AlphaVAE objective.

    Args:
        config: the resolved ``TrainConfig`` (written to ``RUN_DIR/config.yaml``).
        run_dir: output folder (checkpoints, validation grids, TensorBoard logs, ``history.jsonl``, ``final/``);
            must lie outside the data folder and hold none of the inputs. ``history.jsonl`` gets one JSON line per
            optimiser step (mean logged values over micro-steps and processes, the rates the step used (``lr``,
            ``disc_lr``); none for a step skipped for a non-finite loss or gradient norm),
            ``validation/metrics.jsonl`` one per validation (``{"step": N, "val/psnr_<background>": dB, ...}``, as
            ``validate`` returns). A resume from the checkpoint of step S first drops the lines of steps after S
            from both, so they hold each step once.
        resume: ``"latest"`` (newest checkpoint of ``run_dir``; a fresh start when there is none) or a checkpoint path.
            A resume of a run that already reached ``optim.max_steps`` and exported ``final/`` since that checkpoint
            trains and writes nothing: it returns at once, with ``trained`` False, before any model loads.
            Settings changed since the checkpoint apply from the first resumed step on (``optim.lr``, the schedule,
            ``betas``, ``weight_decay``, ``eps``, ``disc_lr``, ``disc_scheduler`` and ``ema_decay`` too, with the
            AdamW moments kept: ``_apply_resumed_settings``). The learning rates are functions of the step
            (``lr_schedule``, ``discriminator_schedule``; skipped steps advance them too), so a resume is exact.
        stop_after: stop (without export) after this optimiser step, as if the run were killed; for tests.

    Returns:
        ``TrainResult``.

    Raises:
        FileExistsError: ``run_dir`` has checkpoints, ``final/`` or a non-empty ``history.jsonl`` or
            ``validation/metrics.jsonl`` but ``resume`` is None, or ``resume`` is "latest", there is no checkpoint
            and ``run_dir/final`` exists (:func:`alphavae.train.checkpoint.check_start`).
        FileNotFoundError: ``config.data.source`` does not exist, a local ``model.init_config`` is missing (a path
            that is no ``org/name`` hub id; checked before any hub look-up), or ``resume`` is a path that is not a
            checkpoint folder (``find_checkpoint``).
        NotADirectoryError, IsADirectoryError: a file stands where the run writes ``checkpoints/``, ``final/`` or
            ``validation/``, or a folder where it writes ``config.yaml`` or a log (``_check_run_layout``).
        NonFiniteLossError: ``config.max_nonfinite`` consecutive steps had a non-finite loss or gradient norm.
        ValueError: ``run_dir`` is or lies inside the data folder (a manifest's folder for a manifest
            source) or a local ``model.vae`` / ``model.ref_vae`` folder, or holds an input (the data folder,
            the manifest or the folder of one of its images, ``model.vae``, ``model.ref_vae``,
            ``model.init_config``: ``alphavae.io.check_inputs_outside_output``), ``model.init_config`` is not a
            JSON object, no training image is readable or there are fewer than one global batch
            (``data.batch_size`` x processes; ``_data``, before the models load), the checkpoint was saved by
            ``train-lora`` (``CheckpointMismatchError``), ``data.size`` is not a multiple of the
            VAE's downsampling or too small for an active loss term (``_check_crop_size``), the checkpoint
            cannot be restored (``load_checkpoint``), lies beyond ``optim.max_steps`` or lacks (or has) the EMA or
            lacks the discriminator this run has, or has one of another architecture (``_check_same_parts``, before
            the models load) or the gradient
            scaler of an fp16 run (on GPUs; checked before the models load), fp16 mixed precision with the PatchGAN
            on (``training_precision``: one gradient scaler cannot serve both networks; before the models load;
            use bf16 or float32), the newest checkpoint
            is damaged (``find_checkpoint``), bad config or inputs (see ``load_models`` / ``split_files``), or,
            during the run, no training image is readable any more on some process (all processes raise it, with
            the same message).
        OSError: ``run_dir`` cannot be created or written to (NotADirectoryError when a parent is a file;
            ``alphavae.io.check_writable_folder``), checked before the models load.
        KeyboardInterrupt: Ctrl-C; a checkpoint being written is removed (``save_checkpoint``), the earlier
            ones are complete and ``--resume latest`` continues from the newest.
    """
    run_dir = Path(run_dir)
    checkpoint, start_step = _preflight(config, run_dir, resume)
    if checkpoint is not None and start_step == config.optim.max_steps and _exported_after(run_dir, checkpoint):
        return TrainResult(start_step, [], run_dir / "final", 0, [], trained=False, start_step=start_step)
    accum = config.optim.gradient_accumulation
    AcceleratorState._reset_state()  # a fresh mixed-precision setting per run; keeps the process group
    cuda = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
    mixed_precision = training_precision(config, "cuda" if cuda else "cpu")
    accelerator = Accelerator(mixed_precision=mixed_precision, log_with="tensorboard", project_dir=str(run_dir))
    logger.info("mixed precision: %s (config %r) on %s", mixed_precision, config.mixed_precision, accelerator.device)
    if checkpoint is not None and accelerator.scaler is not None and not (checkpoint / SCALER_NAME).is_file():
        raise ValueError(f"{checkpoint} cannot be resumed with mixed_precision fp16: it was saved without fp16's "
                         "gradient scaler (in bf16 or float32); resume with the mixed precision it was saved with")
    loader, val_pixels, failed, digest = _data(config, accelerator, start_step * accum)  # before the models load
    vae, reference = load_models(config.model, seed=config.seed)
    if config.model.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    latent_factor = downsampling_factor(vae)
    size = config.data.size
    latent_shape = (vae.config.latent_channels, size // latent_factor, size // latent_factor)
    lc = config.loss
    discriminator = None
    if lc.gan_weight > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            discriminator = _discriminator(config)
    objective = Objective(lc, in_channels=config.model.in_channels, reference_vae=reference,
                          discriminator=discriminator).to(accelerator.device)
    del reference  # the objective keeps it only while Ref-KL is active
    _check_crop_size(size, latent_factor, objective, config.optim.max_steps - 1)

    optimizer = torch.optim.AdamW(vae.parameters(), **_adamw_settings(config.optim, discriminator=False))
    scheduler = lr_schedule(optimizer, config.optim)
    model, optimizer = accelerator.prepare(AutoencoderForward(vae), optimizer)
    accelerator.register_for_checkpointing(scheduler)
    disc_optimizer = None
    if discriminator is not None:
        disc_optimizer = torch.optim.AdamW(discriminator.parameters(),
                                           **_adamw_settings(config.optim, discriminator=True))
        disc_model, disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)
        disc_rate = discriminator_schedule(config.optim, lc.gan_start)
    ema = None
    if config.ema:
        ema = EMAModel(vae.parameters(), decay=config.ema_decay, model_cls=AutoencoderKL, model_config=vae.config)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    streak = 0
    if checkpoint is not None:
        with way_back_on_error(checkpoint, resume, run_dir):
            state = load_checkpoint(accelerator, checkpoint)
        streak = state["nonfinite_streak"]  # its step is start_step, read before the models loaded
        _apply_resumed_settings(config, optimizer, scheduler, disc_optimizer, ema, start_step)
        logger.info("resumed from %s at step %d", checkpoint, start_step)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        _save_run_config(config, run_dir / "config.yaml", start_step if checkpoint is not None else None)
        for log in _LOGS.values():
            _truncate_log(run_dir / log, start_step)
    accelerator.init_trackers("tensorboard")

    if checkpoint is not None and accelerator.is_main_process:
        warn_other_training_set(checkpoint, state, digest, logger)
    world, rank, share = accelerator.num_processes, accelerator.process_index, config.data.batch_size

    history, pending, skipped, bad_step = [], [], 0, False
    last_layer = vae.decoder.conv_out.weight
    progress = tqdm(total=config.optim.max_steps, initial=start_step, disable=not accelerator.is_main_process,
                    desc="train-vae")
    step = start_step
    for micro_step, (batch, unreadable) in enumerate(loader, start=start_step * accum):
        step, sync = micro_step // accum, (micro_step + 1) % accum == 0
        _note_unreadable(unreadable, failed, step)
        if not on_every_process(accelerator, batch is not None):  # every process raises, none waits for the others
            raise ValueError(f"no training image is readable any more (step {step}): "
                             f"{gather_object(unreadable[-1:] if batch is None else [])[0]}")
        pixels = batch.to(accelerator.device)
        first_row = (micro_step % accum * world + rank) * share
        noise, backgrounds = step_randomness(config.seed, step, accum * world * share,
                                             slice(first_row, first_row + share), latent_shape)
        noise, backgrounds = noise.to(accelerator.device), backgrounds.to(accelerator.device)
        gan = objective.gan_active(step)
        with contextlib.ExitStack() as stack:
            if not sync:
                stack.enter_context(accelerator.no_sync(model))
                if gan:
                    stack.enter_context(accelerator.no_sync(disc_model))
            with accelerator.autocast():
                loss, logs, reconstruction = objective.generator_loss(
                    model, pixels, noise, step=step, last_layer=last_layer, backgrounds=backgrounds)
            finite = on_every_process(accelerator, torch.isfinite(loss))
            if finite:
                accelerator.backward(loss / accum)
                if gan:
                    with accelerator.autocast():
                        disc_loss, disc_logs = objective.discriminator_loss(disc_model, pixels, reconstruction, backgrounds)
                    accelerator.backward(disc_loss / accum)
                    logs.update(disc_logs)
                pending.append(logs)
            bad_step |= not finite
        if not sync:
            continue
        overflow = False  # fp16: the gradient scaler skipped the step and lowered its scale, as it routinely does
        if not bad_step and not _finite_gradient_norm(accelerator, model, optimizer, config.optim.max_grad_norm):
            bad_step, overflow = True, accelerator.scaler is not None
            cause = "gradient norm"
        else:
            cause = "loss"
        if overflow:
            logger.info("step %d: fp16 gradient overflow, step skipped, loss scale lowered", step + 1)
        else:
            streak = nonfinite_streak(streak, not bad_step, step + 1, config.max_nonfinite, cause)
        rates = {"lr": optimizer.param_groups[0]["lr"], **({"disc_lr": disc_rate(step)} if gan else {})}
        if bad_step:
            skipped += 1
        else:
            optimizer.step()
            if gan:
                _set_rate(disc_optimizer, rates["disc_lr"])
                disc_optimizer.step()
            if ema is not None:
                ema.step(vae.parameters())
        optimizer.zero_grad(set_to_none=True)
        if discriminator is not None:
            disc_optimizer.zero_grad(set_to_none=True)
        completed = step + 1
        _schedule_to(optimizer, scheduler, completed)  # the next step's rate
        if not bad_step:
            record = {"step": completed, **rates, **_mean_logs(accelerator, pending)}
            history.append(record)
            if accelerator.is_main_process:
                _append_log(run_dir / _LOGS["history"], record)
                progress.set_postfix(loss=f"{record['loss']:.4g}")
            if completed % config.log_every == 0:
                accelerator.log(record, step=completed)
        pending, bad_step = [], False
        progress.update(1)
        if completed % config.checkpoint_every == 0 or completed == config.optim.max_steps:
            save_checkpoint(accelerator, run_dir,
                            {"step": completed, "nonfinite_streak": streak, TRAINING_SET_KEY: digest},
                            config.keep_checkpoints)
        if (val_pixels is not None and completed < config.optim.max_steps  # the last one follows the export
                and config.validate_every and completed % config.validate_every == 0):
            _log_validation(vae, ema, val_pixels, completed, run_dir, accelerator)
        if stop_after is not None and completed >= stop_after:
            progress.close()
            accelerator.end_training()
            return TrainResult(completed, history, None, skipped, failed, start_step=start_step)
        step = completed
    progress.close()
    accelerator.wait_for_everyone()
    if world > 1:  # images that became unreadable on other processes
        failed = list(dict.fromkeys(gather_object(failed)))
    final = _export(vae, ema, config, run_dir) if accelerator.is_main_process else run_dir / "final"
    if val_pixels is not None:  # after the export: a failing validation cannot cost the run its model
        _log_validation(vae, ema, val_pixels, step, run_dir, accelerator)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(step, history, final, skipped, failed, start_step=start_step)
