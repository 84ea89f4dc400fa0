"""LoRA fine-tuning of a FLUX transformer on RGBA latents (AlphaVAE §5.1).

Images (straight RGBA) are encoded by the RGBA VAE, shifted and scaled into the diffusion latent
space, and the LoRA is trained with the rectified-flow objective of :mod:`alphavae.diffusion.flow`,
following diffusers' FLUX DreamBooth-LoRA example. Everything random in a step (batch, posterior
sample, noise, noise level) comes from generators seeded by ``(seed, step, process)``, and
checkpoints hold the LoRA, optimizer and scheduler states, so a resumed run reproduces the losses of
an uninterrupted one. Libraries: accelerate (devices, mixed precision, multi-GPU, checkpoints), peft,
diffusers, prodigyopt, tqdm.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from alphavae import io
from alphavae.data.datasets import RGBADataset, StepBatchSampler, item_generator, readable_files
from alphavae.data.manifest import data_folder
from alphavae.diffusion.captions import DEFAULT_PROMPT, read_caption_table, resolve_captions
from alphavae.diffusion.flow import TimestepSampling, flow_matching_loss, sample_sigmas
from alphavae.diffusion.lora import (
    LORA_FILE,
    TARGET_PRESETS,
    add_lora,
    lora_config,
    restore_lora,
    save_lora,
    saved_target_modules,
)
from alphavae.diffusion.pipeline import (
    MAX_SIDE,
    MAX_STEPS,
    check_float32,
    contact_sheet,
    generate_rgba,
    load_flux_pipeline,
)
from alphavae.train.checkpoint import (
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
from alphavae.train.config import SCHEDULERS, build_dataclass, check_limits, read_yaml, warn_long_warmup
from alphavae.train.loop import nonfinite_streak, on_every_process
from alphavae.vae import RGBAVAE

log = logging.getLogger(__name__)

_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# schedulers whose learning rate does not depend on max_steps (a resume may change max_steps with these)
_STEP_FREE_SCHEDULERS = frozenset({"constant", "constant_with_warmup"})


@dataclass
class LoraTrainConfig:
    """Settings of one LoRA run; defaults are the paper's FLUX recipe (§5.1) where it gives one, except three:
    ``mixed_precision`` "no" (float32, so CPU runs are exact) where the paper trains in "bf16", the global
    batch, 1 by default where the paper's is 8 (``batch_size``, ``gradient_accumulation_steps``, processes), and
    ``crop`` "center" where the reference implementation (o0o0o00o0/AlphaVAE ``train/train_diffusion_lora.py``,
    run without ``--center_crop``) crops at random, a new crop each time it loads an image (crop "random").

    Paths: ``model`` (diffusers FLUX folder or hub id), ``vae`` (RGBA VAE folder), ``data`` (image
    folder or manifest ``.jsonl``), ``output_dir`` (LoRA, checkpoints, validation images, config;
    must not lie inside ``data``), ``split`` (with a manifest: only this split, e.g. "train"),
    ``captions`` (optional CSV/JSONL table; sidecar ``.txt`` files are used otherwise) and
    ``instance_prompt`` (fallback caption, paper: "RGBA").

    Data: ``resolution`` (square side in pixels, multiple of 16, at most 8192; paper 1024): short side resized
    alpha-correctly to it, then ``crop`` ("center" or "random"); ``cache_latents`` encodes every
    image once, so it needs crop "center" (with "random" the config is refused): cached latents are of centre
    crops, never the reference's random ones.

    LoRA: ``rank``/``alpha`` (paper 64/64), ``targets`` (a preset of
    :data:`~alphavae.diffusion.lora.TARGET_PRESETS`: "paper", the reference's layers; "wide"; "attention"),
    ``dropout``.

    Optimisation: ``optimizer`` "prodigy" (paper, lr 1.0) or "adamw"; ``learning_rate``,
    ``adam_beta1``/``adam_beta2``, ``prodigy_beta3``, ``weight_decay``, ``adam_epsilon``,
    ``prodigy_safeguard_warmup``, ``prodigy_bias_correction``; ``lr_scheduler`` (a diffusers
    scheduler name) with ``lr_warmup_steps``; ``max_steps`` optimizer steps (paper 20 000);
    ``batch_size`` per process and ``gradient_accumulation_steps`` (global batch = batch_size x
    processes x accumulation; paper 8); ``max_grad_norm`` (0 = no clipping).

    Objective: ``guidance`` (embedded guidance value in training, paper 1), ``weighting_scheme``,
    ``logit_mean``, ``logit_std``, ``mode_scale`` (see :class:`~alphavae.diffusion.flow.TimestepSampling`),
    ``max_sequence_length`` (T5 tokens).

    Runtime: ``mixed_precision`` "no"/"bf16"/"fp16" (frozen transformer and text encoders in that
    dtype, LoRA in float32; the RGBA VAE runs "mixed-bf16" under bf16, else float32),
    ``gradient_checkpointing``, ``seed``, ``checkpoint_every`` (steps, 0 = only at the end),
    ``keep_checkpoints`` (newest kept), ``resume`` (None, "latest" or a checkpoint folder),
    ``validation_prompts`` rendered over a checkerboard every ``validation_every`` steps (0 = only
    at the end) with ``validation_steps`` denoising steps and ``validation_guidance``,
    ``report_to`` ("tensorboard" or "none"), ``max_nonfinite``: a step whose loss is NaN/inf on any process
    is skipped on all (no optimiser or scheduler step, logged as a warning, left out of the losses), and this
    many skipped in a row end the run with :class:`~alphavae.train.NonFiniteLossError` (as ``train-vae``).

    Raises:
        ValueError: first, naming every failed one of: ``resolution`` not a positive multiple of 16; ``crop``
            not "center"/"random"; ``cache_latents`` with crop "random"; ``targets`` not a preset name;
            ``optimizer`` not "prodigy"/"adamw";
            ``mixed_precision`` not "no"/"bf16"/"fp16"; ``report_to`` not "tensorboard"/"none"; ``lr_scheduler``
            not a diffusers scheduler name (``piecewise_constant`` excluded); a blank ``instance_prompt``.
            Then an ``instance_prompt`` or ``validation_prompts`` entry that is not valid text (a lone UTF-16
            surrogate, e.g. from a JSON or YAML ``"\\ud83d"`` escape; named as ``validation_prompts[k]``).
            Then, one at a time, a number outside its range (``alphavae.train.config.check_limits``, section
            "lora": e.g. ``rank``, ``max_steps``, ``batch_size``, ``gradient_accumulation_steps``,
            ``keep_checkpoints``, ``validation_steps`` below 1; ``alpha``, ``learning_rate``, ``adam_epsilon``,
            ``logit_std`` not > 0; ``dropout`` and the betas outside [0, 1); ``checkpoint_every``,
            ``validation_every``, ``lr_warmup_steps`` negative; ``max_nonfinite`` below 1; ``max_sequence_length``
            outside [1, 512];
            ``seed`` outside [0, 2**32)). Then ``resolution`` above 8192, ``validation_steps`` above 1000 or a
            ``guidance`` / ``validation_guidance`` beyond float32's range (:meth:`_check_upper_limits`). Last, an
            unknown ``weighting_scheme`` (:class:`~alphavae.diffusion.flow.TimestepSampling`).
        TypeError: a checked setting of a type that cannot be compared (e.g. a string ``resolution``).
    """

    model: str
    vae: str
    data: str
    output_dir: str
    captions: str | None = None
    split: str | None = None
    instance_prompt: str = DEFAULT_PROMPT
    resolution: int = 1024
    crop: str = "center"
    cache_latents: bool = False
    rank: int = 64
    alpha: float = 64.0
    targets: str = "paper"
    dropout: float = 0.0
    optimizer: str = "prodigy"
    learning_rate: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    prodigy_beta3: float | None = None
    weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    prodigy_safeguard_warmup: bool = True
    prodigy_bias_correction: bool = True
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_steps: int = 20000
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    guidance: float = 1.0
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    max_sequence_length: int = 512
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: str | None = None
    validation_prompts: list[str] = field(default_factory=list)
    validation_every: int = 0
    validation_steps: int = 28
    validation_guidance: float = 3.5
    report_to: str = "tensorboard"
    max_nonfinite: int = 10

    def __post_init__(self) -> None:
        checks = {
            "resolution must be a positive multiple of 16": self.resolution > 0 and self.resolution % 16 == 0,
            "crop must be 'center' or 'random'": self.crop in ("center", "random"),
            "cache_latents needs crop 'center' (a cached latent cannot be re-cropped)":
                not (self.cache_latents and self.crop == "random"),
            f"targets must be one of {sorted(TARGET_PRESETS)}": self.targets in TARGET_PRESETS,
            "optimizer must be 'prodigy' or 'adamw'": self.optimizer in ("prodigy", "adamw"),
            "mixed_precision must be 'no', 'bf16' or 'fp16'": self.mixed_precision in _DTYPES,
            "report_to must be 'tensorboard' or 'none'": self.report_to in ("tensorboard", "none"),
            f"lr_scheduler must be one of {sorted(SCHEDULERS)}": self.lr_scheduler in SCHEDULERS,
            "instance_prompt must not be blank": bool(self.instance_prompt.strip()),
        }
        bad = [message for message, ok in checks.items() if not ok]
        if bad:
            raise ValueError("; ".join(bad))
        io.check_text(self.instance_prompt, "instance_prompt")
        for k, prompt in enumerate(self.validation_prompts):
            io.check_text(prompt, f"validation_prompts[{k}]")
        check_limits("lora", self, prefix="")
        self._check_upper_limits()
        TimestepSampling(self.weighting_scheme, self.logit_mean, self.logit_std, self.mode_scale)

    def _check_upper_limits(self) -> None:
        """Raise ValueError for a ``resolution`` above :data:`~alphavae.diffusion.pipeline.MAX_SIDE` (no image
        resized to it would load), a ``validation_steps`` above :data:`~alphavae.diffusion.pipeline.MAX_STEPS` (a
        huge count failed to allocate at the final validation) or a ``guidance`` / ``validation_guidance`` that
        float32 cannot hold (a RuntimeError at the first step)."""
        if self.resolution > MAX_SIDE:
            raise ValueError(f"resolution must be at most {MAX_SIDE} (a larger square is above "
                             f"alphavae.io.DEFAULT_MAX_PIXELS, so no image would load), got {self.resolution}")
        if self.validation_steps > MAX_STEPS:
            raise ValueError(f"validation_steps must be at most {MAX_STEPS} (the FLUX scheduler's training "
                             f"timesteps), got {self.validation_steps}")
        check_float32(self.guidance, "guidance")
        check_float32(self.validation_guidance, "validation_guidance")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> LoraTrainConfig:
        """Read a YAML mapping of field names, then apply ``overrides`` (keyword arguments, same names).

        Raises:
            OSError: the file cannot be read (``FileNotFoundError`` when it does not exist).
            ValueError: the file is a folder, not UTF-8 or not valid YAML (naming it), unknown keys in the file, a
                value that cannot be read as its setting's type (YAML 1.2: ``mixed_precision: no`` is the text
                "no", ``1e-4`` a float), a top level that is not a mapping, or a value the class rejects (see the
                class).
            TypeError: a required setting (``model``, ``vae``, ``data``, ``output_dir``) missing from
                both file and ``overrides``.
        """
        values = read_yaml(io.read_text_file(path, "config"), str(path)) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config must be a YAML mapping of settings")
        try:
            return build_dataclass(cls, {**values, **overrides})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err


@dataclass
class LoraTrainResult:
    """What :func:`train_lora` did: loss per optimizer step (1-based; steps skipped for a non-finite loss left
    out), output LoRA folder, skipped images, the number of steps skipped for a non-finite loss, and whether it
    trained (False: a resumed run had already reached ``max_steps``, nothing was written)."""

    losses: dict[int, float]
    lora_dir: Path
    failed_images: list[str]
    nonfinite_steps: int = 0
    trained: bool = True


RESUME_FIXED = ("rank", "alpha", "targets", "dropout", "optimizer", "learning_rate", "adam_beta1", "adam_beta2",
                "prodigy_beta3", "prodigy_safeguard_warmup", "prodigy_bias_correction", "weight_decay", "adam_epsilon",
                "lr_scheduler", "lr_warmup_steps", "batch_size", "gradient_accumulation_steps", "resolution", "crop",
                "seed", "mixed_precision", "weighting_scheme", "logit_mean", "logit_std", "mode_scale", "guidance")
"""Settings a checkpoint records and a resume must repeat: the adapter's shape and scale, the optimiser and its
schedule (a resume keeps the saved optimiser state and learning rate whatever is asked; the ``prodigy_*`` settings
only under Prodigy: AdamW never reads them), and what decides the batches and noise. Checkpointing, validation
and logging may change, and ``max_steps`` with a constant learning rate (:func:`_check_same_schedule`). ``targets``
may change its name when the checkpoint's LoRA records the same layers (:func:`_check_same_targets`)."""


def _check_same_settings(checkpoint: Path, saved: dict | None, cfg: LoraTrainConfig, same_layers: bool) -> None:
    """Raise ValueError naming the settings of ``cfg`` that differ from those ``checkpoint`` was saved with
    (:data:`RESUME_FIXED`, less ``targets`` when ``same_layers``: the checkpoint's LoRA records the layers that
    ``cfg.targets`` names; checkpoints saved before settings were recorded pass, with a warning)."""
    if saved is None:
        log.warning("%s was saved before checkpoints recorded their settings: a resume with other settings (alpha, "
                    "optimiser, learning rate, ...) cannot be detected; repeat the run's settings", checkpoint)
        return
    skip = ("prodigy_",) if saved.get("optimizer") == cfg.optimizer == "adamw" else ()  # settings AdamW ignores
    skip += ("targets",) if same_layers else ()  # a preset renamed; the layers decide (_check_same_targets)
    changed = [f"{key} {saved[key]!r} -> {getattr(cfg, key)!r}" for key in RESUME_FIXED
               if key in saved and saved[key] != getattr(cfg, key) and not key.startswith(skip)]
    if changed:
        raise ValueError(f"{checkpoint}: saved with other settings than this run's ({'; '.join(changed)}); a resume "
                         "keeps the saved adapter, optimiser and schedule, so repeat the saved settings, or start a "
                         "new output folder")


def _check_same_targets(checkpoint: Path, layers: str | list[str] | None, cfg: LoraTrainConfig) -> None:
    """Raise ValueError when ``layers``, the ``target_modules`` that ``checkpoint``'s LoRA records
    (:func:`~alphavae.diffusion.lora.saved_target_modules`; None: not recorded, nothing checked), are not those
    ``cfg.targets`` names: e.g. a checkpoint of the 'paper' preset from before it was narrowed to the reference's
    layers (those are now 'wide'), which the restore would refuse only after the models load."""
    if layers is None or layers == TARGET_PRESETS[cfg.targets]:
        return
    known = [name for name, pattern in TARGET_PRESETS.items() if pattern == layers]
    what = f"the layers of --targets {known[0]}" if known else f"target_modules {layers!r}, no preset's"
    raise ValueError(f"{checkpoint}: its LoRA was trained on {what}, not on those --targets {cfg.targets} names; "
                     "resume with the targets it was trained with, or start a new output folder")


def _check_same_schedule(checkpoint: Path, saved_max_steps: int | None, cfg: LoraTrainConfig) -> None:
    """Raise ValueError when a resume changes ``max_steps`` (from ``saved_max_steps``, the run's that saved
    ``checkpoint``) under a learning-rate schedule that depends on it (every ``lr_scheduler`` but "constant" and
    "constant_with_warmup"): the restored schedule would jump, e.g. from a decayed 0 back up. Checkpoints that
    did not record ``max_steps`` pass with a warning."""
    if cfg.lr_scheduler in _STEP_FREE_SCHEDULERS or saved_max_steps == cfg.max_steps:
        return
    if saved_max_steps is None:
        log.warning("%s does not record its run's max_steps: if this resume changes it, the %s learning-rate "
                    "schedule jumps; keep --max-steps unchanged", checkpoint, cfg.lr_scheduler)
        return
    raise ValueError(f"{checkpoint}: saved by a run of max_steps {saved_max_steps}, this resume asks for max_steps "
                     f"{cfg.max_steps}; lr_scheduler {cfg.lr_scheduler!r} is laid out over max_steps, so its learning "
                     f"rate would jump; keep --max-steps {saved_max_steps}, or train with a constant lr_scheduler "
                     "(constant, constant_with_warmup) to be able to extend a run")


def _make_optimizer(cfg: LoraTrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW (torch) or Prodigy (prodigyopt, Mishchenko & Defazio 2023) over the LoRA parameters."""
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, betas=betas, weight_decay=cfg.weight_decay,
                                 eps=cfg.adam_epsilon)
    from prodigyopt import Prodigy

    return Prodigy(params, lr=cfg.learning_rate, betas=betas, beta3=cfg.prodigy_beta3, eps=cfg.adam_epsilon,
                   weight_decay=cfg.weight_decay, decouple=True, use_bias_correction=cfg.prodigy_bias_correction,
                   safeguard_warmup=cfg.prodigy_safeguard_warmup)


class _Trainer:
    """One run's state: models, data, caches and the step function (see :func:`train_lora`)."""

    def __init__(self, cfg: LoraTrainConfig) -> None:
        self.cfg, self.out, self.streak = cfg, Path(cfg.output_dir), 0
        self.acc = Accelerator(
            mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            log_with=None if cfg.report_to == "none" else cfg.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
        )
        self._read_data()  # before the models: a data or caption problem costs no model loading
        dtype = _DTYPES[cfg.mixed_precision]
        self.vae = RGBAVAE.from_pretrained(cfg.vae, dtype="mixed-bf16" if dtype == torch.bfloat16 else "float32",
                                           device=self.acc.device)
        self.vae.model.requires_grad_(False)
        self.pipe = load_flux_pipeline(cfg.model, self.vae, dtype=dtype, device=self.acc.device)
        self.pipe.set_progress_bar_config(disable=True)
        # Training draws sigma from the full training grid; validation's pipeline call replaces
        # pipe.scheduler.sigmas with its sampling steps, so training keeps its own copy (as diffusers' FLUX example).
        self.noise_scheduler = copy.deepcopy(self.pipe.scheduler)
        for encoder in (self.pipe.text_encoder, self.pipe.text_encoder_2):
            encoder.requires_grad_(False)
        self.transformer = self.pipe.transformer
        set_seed(cfg.seed)
        self.params = add_lora(self.transformer, lora_config(cfg.rank, cfg.alpha, cfg.targets, cfg.dropout))
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.sampling = TimestepSampling(cfg.weighting_scheme, cfg.logit_mean, cfg.logit_std, cfg.mode_scale)
        self.cache = [self._encode([self.dataset.load(i, item_generator(cfg.seed, 0, i))])
                      for i in tqdm(range(len(self.dataset)), desc="cache latents", unit="img")] \
            if cfg.cache_latents else None

    def _read_data(self) -> None:
        """The readable training images (``self.dataset``; unreadable ones in ``self.failed``) and their captions.

        Raises ValueError when none is readable, or fewer than one global batch of a micro-step (``batch_size`` x
        processes, what :class:`~alphavae.data.datasets.StepBatchSampler` draws at once)."""
        cfg = self.cfg
        table = read_caption_table(cfg.captions) if cfg.captions else None
        options = dict(size=cfg.resolution, crop=cfg.crop, seed=cfg.seed)
        data = Path(cfg.data)
        good, self.failed = readable_files(RGBADataset(data, split=cfg.split, **options))
        if not good:
            raise ValueError(f"{data}: no readable training images")
        batch = cfg.batch_size * self.acc.num_processes
        if len(good) < batch:
            skipped = f" ({len(self.failed)} unreadable skipped)" if self.failed else ""
            raise ValueError(f"{data}: {len(good)} readable training image(s){skipped}, fewer than one global batch "
                             f"of {batch} (batch_size {cfg.batch_size} x {self.acc.num_processes} process(es)); lower "
                             "--batch-size or add images")
        self.dataset = RGBADataset(good, **options)
        root = data_folder(data)
        self.captions = resolve_captions(good, root, table, cfg.instance_prompt, source=str(cfg.captions))
        self.digest = training_set_digest(good, root)

    @torch.no_grad()
    def _encode(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std (float32, on CPU) of ``(4, R, R)`` images (hidden colour cleared by
        RGBAVAE.encode), stacked."""
        posterior = self.vae.encode(torch.stack(images).to(self.acc.device))
        return posterior.mean.cpu(), posterior.std.cpu()

    def latents(self, keys: list[tuple[int, int]], generator: torch.Generator) -> torch.Tensor:
        """Diffusion latents ``(B, 16, R/8, R/8)`` for dataset keys, a posterior sample from ``generator``."""
        if self.cache is not None:
            mean, std = (torch.cat(parts) for parts in zip(*(self.cache[i] for _, i in keys), strict=True))
        else:
            mean, std = self._encode([self.dataset[key] for key in keys])
        z = mean + std * torch.randn(mean.shape, generator=generator)
        return self.vae.to_diffusion_latents(z).to(self.acc.device, self.transformer.dtype)

    def loss(self, keys: list[tuple[int, int]], micro_step: int) -> torch.Tensor:
        """Flow-matching loss of one micro-batch; all randomness seeded by (seed, micro_step, process)."""
        generator = item_generator(self.cfg.seed + 1, micro_step, self.acc.process_index)
        latents = self.latents(keys, generator)
        sigmas = sample_sigmas(len(keys), self.noise_scheduler, self.sampling, generator)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        with torch.no_grad():
            embeds, pooled, text_ids = self.pipe.encode_prompt(
                prompt=[self.captions[i] for _, i in keys], prompt_2=None, device=self.acc.device,
                max_sequence_length=self.cfg.max_sequence_length)
        guidance = self.cfg.guidance if self.transformer.config.guidance_embeds else None
        return flow_matching_loss(self.model, latents, noise, sigmas, embeds, pooled, text_ids, guidance,
                                  self.cfg.weighting_scheme)

    def save_hook(self, models: list, weights: list, output_dir: str) -> None:
        """accelerate save hook: write only the LoRA (a diffusers LoRA folder), not the frozen weights."""
        if self.acc.is_main_process:
            save_lora(self.acc.unwrap_model(self.transformer), output_dir)
        while weights:
            weights.pop()

    def load_hook(self, models: list, input_dir: str) -> None:
        """accelerate load hook: restore the LoRA from a checkpoint folder."""
        restore_lora(self.acc.unwrap_model(self.transformer), input_dir)
        while models:
            models.pop()

    def validate(self, step: int) -> None:
        """Render the validation prompts (seed = config seed) to ``validation/step-XXXXXXXX`` (8-digit step, as
        train-vae's validation images and both commands' checkpoints; RGBA PNGs + checkerboard sheet)."""
        cfg = self.cfg
        if not cfg.validation_prompts or not self.acc.is_main_process:
            return
        self.transformer.eval()
        pixels = generate_rgba(self.pipe, self.vae, cfg.validation_prompts, [cfg.seed] * len(cfg.validation_prompts),
                               height=cfg.resolution, width=cfg.resolution, steps=cfg.validation_steps,
                               guidance=cfg.validation_guidance, max_sequence_length=cfg.max_sequence_length).cpu()
        self.transformer.train()
        folder = self.out / "validation" / f"step-{step:08d}"
        for k, image in enumerate(pixels):
            io.save_rgba(image, folder / f"{k:02d}.png", overwrite=True)
        io.save_rgba(contact_sheet(pixels), folder / "checkerboard.png", overwrite=True)

    def checkpoint(self, step: int) -> None:
        """Save ``checkpoints/step-N`` (accelerate state, LoRA, the settings a resume must keep, ``max_steps`` and
        the non-finite streak); keep the newest ``keep_checkpoints``."""
        settings = {key: getattr(self.cfg, key) for key in RESUME_FIXED}
        state = {"step": step, "settings": settings, "max_steps": self.cfg.max_steps, "nonfinite_streak": self.streak,
                 TRAINING_SET_KEY: self.digest}
        save_checkpoint(self.acc, self.out, state, self.cfg.keep_checkpoints)

    def train_step(self, step: int, sampler: StepBatchSampler, optimizer, scheduler) -> float | None:
        """Optimizer step ``step`` (0-based) over ``gradient_accumulation_steps`` micro-batches: the loss averaged
        over micro-batches and processes, or None when it was NaN/inf on some process in some micro-batch. The
        processes decide that together (:func:`~alphavae.train.loop.on_every_process`), and then none steps the
        optimizer or scheduler: the step's gradients are dropped and a non-finite micro-batch is not
        back-propagated."""
        acc, accum, finite, total = self.acc, self.cfg.gradient_accumulation_steps, True, 0.0
        for micro in range(step * accum, (step + 1) * accum):
            with acc.accumulate(self.model):
                loss = self.loss(sampler.batch(micro), micro)
                micro_finite = on_every_process(acc, torch.isfinite(loss.detach()))
                finite &= micro_finite
                if micro_finite:
                    acc.backward(loss)
                if finite:
                    if acc.sync_gradients and self.cfg.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                optimizer.zero_grad()
            total += acc.gather(loss.detach()).mean().item() / accum
        return total if finite else None

    def run(self, resume: Path | None) -> LoraTrainResult:
        """Train from the start (``resume`` None) or the checkpoint ``resume`` to ``max_steps``; save the LoRA and
        config."""
        cfg, acc = self.cfg, self.acc
        optimizer = _make_optimizer(cfg, self.params)
        scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
                                  num_training_steps=cfg.max_steps * acc.num_processes)
        self.model, optimizer, scheduler = acc.prepare(self.transformer, optimizer, scheduler)
        acc.register_save_state_pre_hook(self.save_hook)
        acc.register_load_state_pre_hook(self.load_hook)
        start = 0
        if resume:
            with way_back_on_error(resume, cfg.resume, self.out):
                state = load_checkpoint(acc, resume)
            start, self.streak = state["step"], state.get("nonfinite_streak", 0)
            log.info("resumed from %s at step %d", resume, start)
            if acc.is_main_process:
                warn_other_training_set(resume, state, self.digest, log)
        if acc.is_main_process and cfg.report_to != "none":
            acc.init_trackers("alphavae-lora")
        accum = cfg.gradient_accumulation_steps
        sampler = StepBatchSampler(len(self.dataset), cfg.batch_size * acc.num_processes, cfg.max_steps * accum,
                                   seed=cfg.seed, rank=acc.process_index, world_size=acc.num_processes)
        losses: dict[int, float] = {}
        self.transformer.train()
        bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, desc="train-lora",
                   disable=not acc.is_local_main_process)
        for step in bar:
            rate = optimizer.param_groups[0]["lr"]  # this step's (the scheduler steps inside train_step)
            total = self.train_step(step, sampler, optimizer, scheduler)
            self.streak = nonfinite_streak(self.streak, total is not None, step + 1, cfg.max_nonfinite)
            if total is not None:
                losses[step + 1] = total
                bar.set_postfix(loss=f"{total:.4f}")
                acc.log({"loss": total, "lr": rate}, step=step + 1)
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.max_steps:
                self.checkpoint(step + 1)
            if cfg.validation_every and (step + 1) % cfg.validation_every == 0:
                self.validate(step + 1)
        self.checkpoint(cfg.max_steps)
        if acc.is_main_process:  # before the final validation, which can fail (e.g. out of memory at full size)
            save_lora(acc.unwrap_model(self.transformer), self.out)
            config_text = yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
            io.atomic_write_text(self.out / "train_config.yaml", config_text, overwrite=True)
        if not cfg.validation_every or cfg.max_steps % cfg.validation_every:
            self.validate(cfg.max_steps)
        acc.end_training()
        return LoraTrainResult(losses, self.out, self.failed, cfg.max_steps - start - len(losses))


def train_lora(cfg: LoraTrainConfig) -> LoraTrainResult:
    """Train a FLUX LoRA on RGBA latents and write it to ``cfg.output_dir`` (a diffusers LoRA folder).

    Output folder: ``pytorch_lora_weights.safetensors`` (with adapter metadata; loadable by
    ``FluxPipeline.load_lora_weights`` and :func:`~alphavae.diffusion.pipeline.load_flux_pipeline`),
    ``train_config.yaml`` (resolved settings), ``checkpoints/step-XXXXXXXX`` (accelerate state + LoRA),
    ``validation/step-XXXXXXXX`` (RGBA PNGs and a checkerboard sheet), ``logs`` (tensorboard).
    Unreadable images are skipped (listed in the result); the run goes on with the rest. A resume of a run that
    already reached ``max_steps`` (its newest checkpoint is at ``max_steps`` and its LoRA was written) trains and
    writes nothing: it returns at once, with ``trained`` False, before any model loads.

    Raises:
        FileExistsError: the output already holds a LoRA or checkpoints and ``resume`` is not set, or a LoRA but no
            checkpoint and ``resume`` is "latest".
        FileNotFoundError: ``data`` does not exist, or ``resume`` names a folder that is not a checkpoint.
        ValueError: a resumed checkpoint beyond ``max_steps`` or saved with other :data:`RESUME_FIXED` settings, or
            whose LoRA records other layers than ``targets`` names (e.g. one of the 'paper' preset from before it
            was narrowed to the reference's layers: those are 'wide' now, and ``targets`` "wide" resumes it), or
            by a run of another ``max_steps`` under a schedule that depends on it (all but constant ones),
            output inside the data, FLUX model or VAE folder, an output that holds an input (the data, a
            manifest's listed image, a local model or VAE folder, the captions file: checkpoint rotation could
            delete it; :func:`alphavae.io.check_inputs_outside_output`), no images listed, no readable images or
            fewer readable ones than one global batch of a micro-step (``batch_size`` x processes), all found
            before the models load; bad settings, or a caption table none of whose rows names a training image. Also a
            damaged checkpoint (a file missing, cut short or changed since it was saved), found before the
            models load (:func:`~alphavae.train.checkpoint.verify_checkpoint`); with ``resume="latest"`` the
            message says to delete it and resume from the one before. A sound checkpoint that does not restore
            into this run's models (another ``model``) raises ``CheckpointMismatchError``, a ValueError.
        OSError: model or VAE cannot be loaded, or the output folder cannot be created or written to
            (``alphavae.io.check_writable_folder``, before the models load; NotADirectoryError when a parent is a
            file).
        NonFiniteLossError: ``max_nonfinite`` consecutive steps had a NaN/inf loss (a RuntimeError).
    """
    out = Path(cfg.output_dir)
    data = Path(cfg.data)
    if not data.exists():  # before the folder checks, which would blame its parent
        raise FileNotFoundError(f"{data}: training data not found (give an image folder or a manifest .jsonl)")
    io.check_output_outside_inputs(out, [data_folder(data), cfg.model, cfg.vae])  # ids: no folder
    if (out / LORA_FILE).exists() and cfg.resume is None:
        raise FileExistsError(f"{out / LORA_FILE} already exists: resume it (--resume latest) or choose another output")
    io.check_writable_folder(out, "the run")  # before the models load
    listed = RGBADataset(data, split=cfg.split, size=cfg.resolution).files  # a manifest's may lie anywhere
    local = [path for path in (cfg.model, cfg.vae, cfg.captions) if path and Path(path).expanduser().exists()]
    io.check_inputs_outside_output(out, [data, data_folder(data), *local, *listed])  # hub ids are no local paths
    check_start(out, cfg.resume, out / LORA_FILE)
    warn_long_warmup(cfg.lr_warmup_steps, cfg.max_steps, ("lr_warmup_steps", "max_steps"))
    resume = find_checkpoint(out, cfg.resume) if cfg.resume else None
    if resume:  # before the models load; a changed rank or targets would fail the restore as a misfit checkpoint
        with way_back_on_error(resume, cfg.resume, out):
            saved = verify_checkpoint(resume, "train-lora")
        check_within(resume, saved["step"], cfg.max_steps)
        layers = saved_target_modules(resume)
        _check_same_settings(resume, saved.get("settings"), cfg, layers == TARGET_PRESETS[cfg.targets])
        _check_same_targets(resume, layers, cfg)
        _check_same_schedule(resume, saved.get("max_steps"), cfg)
        if saved["step"] == cfg.max_steps and (out / LORA_FILE).exists():
            return LoraTrainResult({}, out, [], trained=False)
    return _Trainer(cfg).run(resume)
