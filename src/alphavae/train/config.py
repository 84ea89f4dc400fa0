"""Training configuration: YAML files mapped onto nested dataclasses, with ``section.key=value`` overrides.

A config file may name another with ``base:`` (a shipped config name such as ``vae_main`` or a path);
its values are loaded first and the file's own values override them, section by section.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
import warnings
from importlib import resources
from pathlib import Path

import yaml
from diffusers.optimization import SchedulerType

from alphavae.accel import MIXED_PRECISIONS
from alphavae.configs import shipped_configs
from alphavae.data.datasets import OPAQUE_BACKGROUNDS, check_probabilities
from alphavae.losses import LossConfig


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 core-schema scalars instead of YAML 1.1's: only true/false are booleans
    (``mixed_precision: no`` is the text "no", a folder named ``no`` is not False), ``1e-5`` is a float, and
    ``017``, ``12:30`` and ``2024-01-01`` stay text (YAML 1.1 reads octal 15, base-60 750 and a date). A key
    given twice in one mapping is an error (PyYAML would silently keep the last value; YAML 1.2 forbids it)."""

    def construct_mapping(self, node, deep=False):
        """The mapping of ``node``; raises ``yaml.constructor.ConstructorError`` for a repeated key."""
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                        f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YAML_1_1_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "timestamp")}
_Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML_1_1_TAGS]
                                   for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+)"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))
#: ``OptimConfig.scheduler`` values: diffusers' ``get_scheduler`` names less ``piecewise_constant`` (its step rules
#: have no setting here).
SCHEDULERS = frozenset(kind.value for kind in SchedulerType) - {"piecewise_constant"}
#: ``OptimConfig.disc_scheduler`` values: a constant discriminator rate, or the generator's schedule type from
#: ``loss.gan_start`` on (the reference train_vae.py).
DISC_SCHEDULERS = ("constant", "generator")
#: ``DataConfig.crop`` values: ``RGBADataset``'s crops less ``"none"`` (uncropped images do not make the
#: ``data.size`` squares a training batch and its posterior noise are shaped for).
TRAINING_CROPS = ("random", "center")
_TRUTH = {"yes": True, "on": True, "no": False, "off": False}  # YAML 1.1 words still read for boolean fields

_AT_LEAST_0 = (lambda value: value >= 0, ">= 0")
_AT_LEAST_1 = (lambda value: value >= 1, ">= 1")
_POSITIVE = (lambda value: value > 0, "> 0")
_UNIT = (lambda value: 0 <= value <= 1, "in [0, 1]")
_FRACTION = (lambda value: 0 <= value < 1, "in [0, 1)")
#: The allowed range of each numeric key, by section ("" = top level): (test, wording). ``None`` values of
#: optional keys pass; every item of a tuple is tested. Rules between keys (decay_steps <= max_steps) stay
#: with their section.
_LIMITS = {
    "data": {"size": _AT_LEAST_1, "batch_size": _AT_LEAST_1, "num_workers": _AT_LEAST_0, "val_count": _AT_LEAST_0},
    "optim": {"lr": _AT_LEAST_0, "disc_lr": _AT_LEAST_0, "betas": _FRACTION,
              "weight_decay": _AT_LEAST_0, "eps": _POSITIVE, "warmup_steps": _AT_LEAST_0,
              "max_steps": _AT_LEAST_1, "gradient_accumulation": _AT_LEAST_1, "max_grad_norm": _AT_LEAST_0},
    "loss": {"reconstruction_weight": _AT_LEAST_0, "lpips_weight": _AT_LEAST_0, "kl_weight": _AT_LEAST_0,
             "ref_kl_weight": _AT_LEAST_0, "ref_kl_inert_below": _AT_LEAST_0, "gan_weight": _AT_LEAST_0,
             "gan_start": _AT_LEAST_0, "disc_channels": _AT_LEAST_1, "disc_layers": _AT_LEAST_0},
    "": {"seed": (lambda value: 0 <= value < 2**32, ">= 0 and < 2**32"), "ema_decay": _UNIT,
         "checkpoint_every": _AT_LEAST_1, "keep_checkpoints": _AT_LEAST_0,
         "validate_every": _AT_LEAST_0, "log_every": _AT_LEAST_1, "max_nonfinite": _AT_LEAST_1},
    "lora": {"rank": _AT_LEAST_1, "alpha": _POSITIVE, "dropout": _FRACTION, "learning_rate": _POSITIVE,
             "adam_beta1": _FRACTION, "adam_beta2": _FRACTION, "prodigy_beta3": _FRACTION, "weight_decay": _AT_LEAST_0,
             "adam_epsilon": _POSITIVE, "lr_warmup_steps": _AT_LEAST_0, "max_steps": _AT_LEAST_1,
             "batch_size": _AT_LEAST_1, "gradient_accumulation_steps": _AT_LEAST_1, "max_grad_norm": _AT_LEAST_0,
             "guidance": _AT_LEAST_0, "logit_std": _POSITIVE, "mode_scale": _AT_LEAST_0,
             "max_sequence_length": (lambda value: 1 <= value <= 512, "in [1, 512] (FLUX's T5 length)"),
             "seed": (lambda value: 0 <= value < 2**32, "in [0, 2**32)"), "checkpoint_every": _AT_LEAST_0,
             "keep_checkpoints": _AT_LEAST_1, "validation_every": _AT_LEAST_0, "validation_steps": _AT_LEAST_1,
             "validation_guidance": _AT_LEAST_0, "max_nonfinite": _AT_LEAST_1},
}


def warn_long_warmup(warmup_steps: int, max_steps: int, names: tuple[str, str]) -> None:
    """Warn (``UserWarning``) when a learning-rate warm-up of ``warmup_steps`` outlasts a run of ``max_steps``
    optimiser steps: the rate never reaches its set value (fine for a smoke run, a mistake otherwise).
    ``names`` are the two settings as the user writes them, e.g. ``("optim.warmup_steps", "optim.max_steps")``."""
    if warmup_steps > max_steps:
        warnings.warn(f"{names[0]} {warmup_steps} exceeds {names[1]} {max_steps}: the learning rate stays in its "
                      "warm-up for the whole run and never reaches its set value", stacklevel=2)


def check_limits(section: str, values, *, prefix: str | None = None) -> None:
    """Check the numeric keys of one config section against their allowed ranges (``_LIMITS``).

    Args:
        section: ``"data"``, ``"optim"``, ``"loss"``, ``""`` for the top-level keys of ``TrainConfig``, or
            ``"lora"`` for ``alphavae.diffusion.train.LoraTrainConfig``.
        values: that section's dataclass.
        prefix: what precedes a key in messages; default ``section + "."`` (nothing for ``""``).

    Raises:
        ValueError: a key outside its range, in one line naming ``<prefix>key``, the range and the value.
    """
    prefix = (f"{section}." if section else "") if prefix is None else prefix
    for key, (allowed, wording) in _LIMITS[section].items():
        value = getattr(values, key)
        if any(item is not None and not allowed(item) for item in (value if isinstance(value, tuple) else (value,))):
            raise ValueError(f"{prefix}{key} must be {wording}, got {value!r}")


def read_yaml(text, source: str = "YAML"):
    """Parse YAML with YAML 1.2 core-schema scalars (see ``_Loader``: only true/false are booleans).

    Args:
        text: YAML text or an open text file.
        source: what the text is, for error messages (a path, ``"override 'a.b=c'"``).

    Returns:
        The parsed value (``None`` for empty text).

    Raises:
        ValueError: malformed YAML, in one line naming ``source`` (a file or an override).
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise ValueError(f"{source}: not valid YAML ({' '.join(str(err).split())})") from None


@dataclasses.dataclass
class ModelConfig:
    """What is trained and where it comes from.

    Attributes:
        vae: diffusers ``AutoencoderKL`` folder: RGBA (4 channels), or RGB (3 channels; converted on the fly
            by ``alphavae.convert.convert_to_rgba`` and kept, frozen, as the Ref-KL reference).
        init_config: a diffusers ``config.json`` to train from scratch instead (random init from ``seed``).
        ref_vae: RGB ``AutoencoderKL`` folder for Ref-KL when ``vae`` is already RGBA.
        in_channels: 4 (RGBA, the paper) or 3 (RGB stage: MSE/LPIPS/KL on opaque composites, no alpha terms).
        gradient_checkpointing: trade compute for memory (diffusers ``enable_gradient_checkpointing``).
    """

    vae: str | None = None
    init_config: str | None = None
    ref_vae: str | None = None
    in_channels: int = 4
    gradient_checkpointing: bool = False


@dataclasses.dataclass
class DataConfig:
    """Training data (``alphavae.data.datasets.RGBADataset``) and held-out validation images.

    Attributes:
        source: image folder or ``manifest.jsonl`` (train split ``"train"``, validation split ``"val"``).
        size: square crop side in pixels (paper: 1024).
        resize_short_side: resize each image so its short side is ``size`` before cropping (paper: yes);
            ``False`` takes crops at the images' native resolution. The filter is premultiplied, antialiased bicubic
            in float32 (``alphavae.io.resize_short_side``), a deviation from the reference train_vae.py: its
            ``transforms.Resize`` is bilinear, on PIL images (which Pillow premultiplies, in 8 bits).
        crop: ``"random"`` for training crops, or ``"center"`` (validation always uses centre crops).
        blend_prob: blend augmentation probability in [0, 1] (paper: 0.3).
        alpha_scale_prob, alpha_scale_min: translucency augmentation (not in the paper; default off): with this
            probability an unblended crop's alpha is multiplied by a factor from [alpha_scale_min, 1]
            (``alphavae.data.datasets.scale_alpha``).
        opaque_background: background of the opaque composites of the RGB stage (``solid``/``palette``/``image``;
            ``alphavae.data.datasets.OPAQUE_BACKGROUNDS``).
        batch_size: images per process per micro-step (global batch = batch_size x processes x accumulation).
        num_workers: DataLoader worker processes.
        val_count: held-out images validated (manifest: first of split ``val``; folder: the last files).
        check_images: decode every image once before training and leave out unreadable ones (reported).

    Raises:
        ValueError: ``blend_prob``, ``alpha_scale_prob`` or ``alpha_scale_min`` is outside [0, 1], ``size`` or
            ``batch_size`` is below 1, ``num_workers`` or ``val_count`` is negative, ``crop`` is not one of
            :data:`TRAINING_CROPS` or ``opaque_background`` not one of ``OPAQUE_BACKGROUNDS``.
    """

    source: str | None = None
    size: int = 1024
    resize_short_side: bool = True
    crop: str = "random"
    blend_prob: float = 0.3
    alpha_scale_prob: float = 0.0
    alpha_scale_min: float = 0.25
    opaque_background: str = "solid"
    batch_size: int = 1
    num_workers: int = 2
    val_count: int = 4
    check_images: bool = True

    def __post_init__(self):
        check_probabilities("data.", blend_prob=self.blend_prob, alpha_scale_prob=self.alpha_scale_prob,
                            alpha_scale_min=self.alpha_scale_min)
        check_limits("data", self)
        if self.crop not in TRAINING_CROPS:
            raise ValueError(f"data.crop must be one of {TRAINING_CROPS} (training batches are data.size squares), "
                             f"got {self.crop!r}")
        if self.opaque_background not in OPAQUE_BACKGROUNDS:
            raise ValueError(f"data.opaque_background must be one of {OPAQUE_BACKGROUNDS}, "
                             f"got {self.opaque_background!r}")


@dataclasses.dataclass
class OptimConfig:
    """AdamW and learning-rate schedule (paper Sec. 5.1: lr 1e-5, betas (0.5, 0.9), cosine, 100 warm-up).

    Attributes:
        lr, disc_lr: learning rates of the autoencoder and the discriminator (``None`` = ``lr``).
        betas, weight_decay, eps: ``torch.optim.AdamW`` arguments.
        scheduler: a ``diffusers.optimization.get_scheduler`` name of :data:`SCHEDULERS` (``cosine``,
            ``constant_with_warmup``, ...; not ``piecewise_constant``).
            diffusers' ``constant`` has no warm-up: use ``constant_with_warmup`` with ``warmup_steps`` > 0.
        disc_scheduler: the discriminator's rate schedule (``alphavae.train.loop.discriminator_schedule``):
            ``"constant"`` (``disc_lr`` at every step; the dataclass default, as alphavae-mini was trained) or
            ``"generator"`` (the reference train_vae.py's ``lr_scheduler_discriminator``, the shipped ``vae_main``
            setting: ``scheduler`` with ``warmup_steps`` warm-up over ``max_steps - loss.gan_start`` steps,
            counted from ``loss.gan_start``; ``decay_steps`` does not apply to it).
        warmup_steps: warm-up optimiser steps.
        max_steps: optimiser steps of the run (paper: 30000).
        decay_steps: if > 0, the rate set by ``scheduler`` is also multiplied by ``(max_steps - step) /
            decay_steps`` over the final ``decay_steps`` steps: a linear decay to 0 (warmup-stable-decay with
            a constant scheduler; ``alphavae.train.loop.lr_schedule``).
        gradient_accumulation: micro-steps per optimiser step.
        max_grad_norm: the autoencoder's gradient clipping norm, ``None`` or 0 = off. A deviation from the reference
            train_vae.py, which does not clip (default 1.0 here). A step whose gradient norm is not finite is skipped
            like a non-finite loss; with clipping off the norm is still computed for that check (gradients unchanged).
            Under fp16 such a step is an overflow of the scaled gradients: the gradient scaler skips it and lowers
            its scale, and it does not count towards ``max_nonfinite`` (overflows are routine while the scale
            settles).

    Raises:
        ValueError: a value outside its range (``max_steps`` and ``gradient_accumulation`` below 1; rates,
            ``weight_decay``, ``warmup_steps`` or ``max_grad_norm`` negative; ``eps`` not positive; ``betas`` outside
            [0, 1)), ``scheduler`` is ``"constant"`` with ``warmup_steps`` > 0 (diffusers would ignore the
            warm-up), ``scheduler`` is not one of :data:`SCHEDULERS`, ``disc_scheduler`` is not one of
            ``DISC_SCHEDULERS``, or ``decay_steps`` is outside
            ``[0, max_steps]``.
    """

    lr: float = 1e-5
    disc_lr: float | None = None
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    scheduler: str = "cosine"
    disc_scheduler: str = "constant"
    warmup_steps: int = 100
    max_steps: int = 30000
    decay_steps: int = 0
    gradient_accumulation: int = 1
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        check_limits("optim", self)
        if self.scheduler == "constant" and self.warmup_steps > 0:
            raise ValueError(f"optim.scheduler 'constant' ignores warmup_steps={self.warmup_steps} (diffusers); "
                             "use 'constant_with_warmup' or set warmup_steps to 0")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"optim.scheduler must be one of {sorted(SCHEDULERS)}, got {self.scheduler!r}")
        if self.disc_scheduler not in DISC_SCHEDULERS:
            raise ValueError(f"optim.disc_scheduler must be one of {DISC_SCHEDULERS}, got {self.disc_scheduler!r}")
        if not 0 <= self.decay_steps <= self.max_steps:
            raise ValueError(f"optim.decay_steps must be in [0, max_steps={self.max_steps}], got {self.decay_steps}")


@dataclasses.dataclass
class TrainConfig:
    """A whole VAE training run (``alphavae train-vae``).

    Attributes:
        model, data, optim, loss: the sections above and ``alphavae.losses.LossConfig``.
        seed: base seed, in [0, 2**32), of data order, augmentation, posterior noise, GAN backgrounds and scratch
            init.
        mixed_precision: ``"auto"`` (bf16 autocast on a CUDA GPU with bf16 or a CPU with AMX-BF16, float32
            elsewhere; ``alphavae.accel.autocast_precision``), ``"no"``, ``"bf16"`` or ``"fp16"`` (accelerate
            autocast; weights stay fp32). fp16 (GPUs) is refused while the PatchGAN trains: its one gradient scaler
            cannot serve both networks (``alphavae.train.loop.training_precision``; use bf16 or float32).
        ema: keep an EMA of the weights (``diffusers.training_utils.EMAModel``); validated and exported as ``final/``.
        ema_decay: EMA decay per optimiser step.
        checkpoint_every: optimiser steps between checkpoints (``checkpoints/step-XXXXXXXX``).
        keep_checkpoints: newest checkpoints kept (0 keeps all).
        validate_every: optimiser steps between validations (0 = only at the end).
        log_every: optimiser steps between tracker logs.
        max_nonfinite: consecutive steps with a non-finite loss or autoencoder gradient norm (fp16 overflows of the
            gradients not counted: the gradient scaler handles them) after which the run aborts.

    Raises:
        ValueError: ``mixed_precision`` is not one of ``alphavae.accel.MIXED_PRECISIONS`` (``False`` from Python
            code is accepted as ``"no"``), ``model.in_channels`` is not 3 or 4, or a top-level or ``loss``
            value is outside its range (``check_limits``: e.g. a negative loss weight, ``checkpoint_every`` 0,
            ``seed`` outside [0, 2**32)).
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    seed: int = 0
    mixed_precision: str = "auto"
    ema: bool = False
    ema_decay: float = 0.9999
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    validate_every: int = 1000
    log_every: int = 10
    max_nonfinite: int = 10

    def __post_init__(self):
        if self.mixed_precision is False:  # from Python, or YAML read elsewhere (YAML 1.1: a bare `no` is false)
            self.mixed_precision = "no"
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}")
        if self.model.in_channels not in (3, 4):
            raise ValueError(f"model.in_channels must be 3 or 4, got {self.model.in_channels}")
        check_limits("", self)
        check_limits("loss", self.loss)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML-serialisable; tuples become lists)."""
        return yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(self))))


def _plain(value):
    """Tuples -> lists, recursively (``yaml.safe_dump`` refuses tuples)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _config_path(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():  # a folder or an unreadable file is named by read_text_file
            raise FileNotFoundError(f"config file not found: {path}")
        return path
    shipped = resources.files("alphavae.configs") / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise FileNotFoundError(f"unknown config {name_or_path!r}: not a .yaml file; shipped: {', '.join(shipped_configs())}")
    return Path(str(shipped))


def _read_layers(name_or_path: str | os.PathLike, seen: tuple[Path, ...] = ()) -> dict:
    """Raw nested dict of a config file after resolving its ``base:`` chain.

    Raises ValueError (naming the file) for a ``base:`` that is not text or a circular chain, besides
    ``read_yaml``'s errors and a file that is not a mapping; FileNotFoundError for a missing file.
    """
    path = _config_path(name_or_path).resolve()
    if path in seen:
        raise ValueError(f"{path}: circular 'base:' chain")
    from alphavae.io import read_text_file

    raw = read_yaml(read_text_file(path, "config"), str(path)) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ValueError(f"{path}: base must be a shipped config name or a .yaml path (one text value), "
                         f"got {base!r}")
    base_ref = base if (Path(base).suffix not in (".yaml", ".yml") or Path(base).is_absolute()) else path.parent / base
    merged = _read_layers(base_ref, seen + (path,))
    for key, value in raw.items():
        below = merged.get(key)
        merged[key] = {**below, **value} if isinstance(value, dict) and isinstance(below, dict) else value
    return merged


def _coerce(hint, value, key: str):
    """Convert ``value`` (from YAML, or Python) to the field's annotated type ``hint``; text such as ``"1e-6"``
    becomes a number, YAML 1.1's yes/no/on/off a boolean for boolean fields.

    Handles ``float``, ``int``, ``bool``, ``str``, ``X | None``, ``list[X]`` and ``tuple[...]`` annotations.

    Raises:
        ValueError: ``value`` cannot be read as ``hint`` (names ``key``).
    """
    def refuse(reason: str = ""):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return ValueError(f"config key {key}: cannot read {shown} as {_type_name(hint)}{reason}")

    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        others = [arg for arg in args if arg is not type(None)]
        if len(others) != 1:
            return value  # a union of several types: left to the section's own checks
        hint, args = others[0], typing.get_args(others[0])
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise refuse(" (give a list)")
        return [_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)] if args else value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise refuse(" (give a list, e.g. [0.5, 0.9])")
        if args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise refuse(f" (expected {len(args)} items)")
            return tuple(_coerce(arg, item, f"{key}[{i}]") for i, (arg, item) in enumerate(zip(args, value)))
        return tuple(value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in _TRUTH:
            return _TRUTH[value.lower()]
        if not isinstance(value, bool):
            raise refuse(" (use true or false)")
        return value
    if hint in (float, int):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise refuse()
        try:
            number = hint(value)
        except (ValueError, OverflowError) as err:  # int(inf), float(10**400)
            raise refuse() from err
        if hint is int and isinstance(value, float) and value != number:
            raise refuse()
        if hint is float and not math.isfinite(number):
            raise refuse(" (not a finite number)")
        return number
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise refuse(" (a number: quote text, e.g. --set 'model.vae=\"2024\"' or vae: \"2024\" in YAML)")
        if not isinstance(value, str):
            raise refuse()
        return value
    return value  # untyped ``tuple`` fields (loss.lpips_backgrounds): checked by their section


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint).replace("typing.", "")


def build_dataclass(cls, values: dict, prefix: str = ""):
    """Instantiate dataclass ``cls`` from a nested dict read from YAML, each value converted to its field's
    annotated type (``"1e-5"`` text becomes a float; nested dataclass fields from nested mappings).

    Args:
        cls: a dataclass whose fields are annotated with the types ``_coerce`` handles.
        values: field name -> value (a mapping for nested dataclass fields); omitted fields keep defaults.
        prefix: dotted path of ``cls`` in the whole config, for error messages (``"loss."``).

    Returns:
        ``cls(**converted values)``.

    Raises:
        ValueError: an unknown key, a value that cannot be read as its field's type (names ``prefix`` + key),
            or whatever ``cls`` itself rejects.
        TypeError: a field without a default missing from ``values``.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"unknown config key {prefix}{key}; valid: {', '.join(sorted(fields))}")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ValueError(f"config key {prefix}{key} is a section; give a mapping")
            kwargs[key] = build_dataclass(hints[key], value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(hints[key], value, prefix + key)
    return cls(**kwargs)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML 1.2: only true/false are booleans) to a nested
    dict, in place; returns it.

    Raises:
        ValueError: an override without ``=``, with a value that is not YAML, or a key below a plain value
            (``loss.kl_weight.x``).
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like section.key=value")
        *sections, leaf = key.strip().split(".")
        node = values
        for depth, section in enumerate(sections):
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {'.'.join(sections[:depth + 1])} is a value, not a section")
        node[leaf] = read_yaml(text, f"override {item!r}")
    return values


def load_config(name_or_path: str | os.PathLike = "vae_main", overrides: list[str] = ()) -> TrainConfig:
    """Load a ``TrainConfig`` from a shipped name or a YAML path, then apply ``section.key=value`` overrides.

    Raises:
        FileNotFoundError: unknown name or missing file (also one named by ``base:``).
        ValueError: unknown key, malformed YAML, value or override, circular ``base:`` or one that is not a
            config name or path (text), a config file that is a
            folder, not UTF-8 text or not a YAML mapping, or a value the config classes reject (their ranges).
    """
    return build_dataclass(TrainConfig, apply_overrides(_read_layers(name_or_path), list(overrides)))


def save_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically, overwriting; parent folders created); returns the path.

    Raises IsADirectoryError when ``path`` is a folder, OSError when it cannot be written.
    """
    from alphavae.io import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False), overwrite=True)
