"""RGB ``AutoencoderKL`` -> RGBA ("opaque initialisation"), its invariant check, and provenance.

Source: AlphaVAE (arXiv 2507.09308) section 4.1: the encoder's first convolution gets a fourth
(alpha) input channel with zero weights, the decoder's last convolution a fourth (alpha) output row
with zero weights and bias +1, so before any training the RGBA model ignores the input alpha,
gives the source model's latents and RGB output, and predicts alpha = +1 (opaque, in [-1, 1] space).
The latent shape is unchanged, so a diffusion model trained on the RGB VAE's latents can use it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import re
import shutil
import tempfile
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL
from safetensors import SafetensorError
from torch import nn

import alphavae
from alphavae.accel import parse_dtype
from alphavae.io import check_writable_folder, folder_relation, set_default_permissions

PROVENANCE_FILE = "alphavae_provenance.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "weights" / "alphavae-mini"
"""Folder of the shipped default RGBA VAE (diffusers format), loaded when no path is given
(``alphavae.vae.RGBAVAE.from_pretrained``); commands refuse to write into it (:func:`check_not_shipped`)."""
# How error messages name the overwrite switch; the CLI shows its flag instead.
OVERWRITE_HINT = "overwrite=True"


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast a model's floating-point weights to ``dtype`` in place and return it.

    Calls ``torch.nn.Module.to`` directly: diffusers 0.42's ``ModelMixin.to`` warns about
    "modules that should be kept in float32" even when that list is empty.
    """
    return nn.Module.to(model, dtype)


def _widened_conv(conv: nn.Conv2d, *, in_channels: int, out_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` with more channels: old weights and bias kept, new weights and bias zero; the same
    train/eval mode and ``requires_grad`` (a frozen model stays frozen)."""
    new = nn.Conv2d(in_channels, out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[: conv.out_channels, : conv.in_channels] = conv.weight
        if conv.bias is not None:
            new.bias.zero_()
            new.bias[: conv.out_channels] = conv.bias
    new.train(conv.training)
    return new.requires_grad_(conv.weight.requires_grad)


def require_channels(model, channels: int, *, user: str, hint: str) -> None:
    """Check that ``model`` is a diffusers ``AutoencoderKL`` with ``channels`` input and output channels.

    Args:
        model: the object to check; channels: 3 (RGB) or 4 (RGBA).
        user: who asks (starts the message); hint: what to do about a mismatch (ends it).
    Raises:
        ValueError: another type, or other channel counts (the message names both).
    """
    if not isinstance(model, AutoencoderKL):
        raise ValueError(f"{user} needs a diffusers AutoencoderKL, got {type(model).__name__}")
    found = (model.config.in_channels, model.config.out_channels)
    if found != (channels, channels):
        kind = {3: "RGB", 4: "RGBA"}.get(channels, "")
        raise ValueError(f"{user} needs a {channels}-channel {kind} VAE, got in/out channels {found}; {hint}")


def convert_to_rgba(vae: AutoencoderKL) -> AutoencoderKL:
    """Return a new 4-channel (RGBA) copy of an RGB ``AutoencoderKL`` (the input is not modified).

    ``encoder.conv_in`` gets a 4th input channel (RGB weights copied, alpha weights 0, bias copied);
    ``decoder.conv_out`` a 4th output row (RGB rows copied, alpha weights 0, alpha bias +1); the
    config's ``in_channels`` / ``out_channels`` become 4, so ``save_pretrained`` / ``from_pretrained``
    round-trip. Same dtype, device, train/eval mode and ``requires_grad`` as the input.

    Note ``AutoencoderKL.from_pretrained(rgb, in_channels=4)`` is not a conversion (shape error,
    or random re-initialisation with ``ignore_mismatched_sizes``).

    Raises:
        ValueError: ``vae`` is not a diffusers ``AutoencoderKL``, or is not a 3-channel RGB model
            (e.g. already converted).
    Source: AlphaVAE (arXiv 2507.09308) section 4.1, opaque initialisation.
    """
    require_channels(vae, 3, user="convert_to_rgba", hint="a 4-channel model is already converted")
    rgba = copy.deepcopy(vae)
    rgba.encoder.conv_in = _widened_conv(vae.encoder.conv_in, in_channels=4,
                                         out_channels=vae.encoder.conv_in.out_channels)
    rgba.decoder.conv_out = _widened_conv(vae.decoder.conv_out, in_channels=vae.decoder.conv_out.in_channels,
                                          out_channels=4)
    with torch.no_grad():
        rgba.decoder.conv_out.bias[3] = 1.0
    rgba.register_to_config(in_channels=4, out_channels=4)
    return rgba


@dataclasses.dataclass
class InvariantReport:
    """Result of ``check_invariant``: largest absolute differences over all tested inputs.

    Attributes:
        mean_diff, std_diff: max |RGBA - RGB| of the posterior mean / std (latent units).
        rgb_diff: max |RGBA - RGB| of the decoded RGB channels ([-1, 1] pixel units).
        alpha_diff: max |alpha output - 1| ([-1, 1] pixel units).
        bitwise: all four differences are exactly 0.
        atol: the tolerance the check used.
        sizes: the (H, W) pixel sizes tested; device, dtype: where and how it ran.
    """

    mean_diff: float
    std_diff: float
    rgb_diff: float
    alpha_diff: float
    bitwise: bool
    atol: float
    sizes: list[tuple[int, int]]
    device: str
    dtype: str

    def to_dict(self) -> dict:
        """The report as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


def _default_atol(device: torch.device, dtype: torch.dtype) -> float:
    """1e-3 for float32 on any device; 5e-2 for 16-bit types. Not 0 on the CPU either: the widened convolutions
    may take other kernels than the 3-channel ones and round differently (measured on tiny random models with
    other inputs than the check's: up to 1.5e-6 in latents, 1e-5 in RGB output), while a wrong conversion is off
    by far more than 1e-3."""
    return 1e-3 if dtype == torch.float32 else 5e-2


def _encode_decode(vae: AutoencoderKL, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior mean, std and decoded mean of ``vae`` on ``pixels`` (no grad)."""
    posterior = vae.encode(pixels).latent_dist
    return posterior.mean, posterior.std, vae.decode(posterior.mean).sample


@torch.no_grad()
def check_invariant(source: AutoencoderKL, rgba: AutoencoderKL, *, sizes=((64, 64), (64, 96)), batch_size: int = 2,
                    seed: int = 0, atol: float | None = None) -> InvariantReport:
    """Check that an opaque-initialised RGBA VAE reproduces its RGB source, and return the differences.

    On random pixels (uniform in [-1, 1], alpha channel random too) of each ``(H, W)`` in ``sizes``,
    the RGBA model's posterior mean and std and decoded RGB must equal the source's on the RGB
    channels (alpha ignored), and its decoded alpha must be 1. The pixels are made on the RGBA model's
    device and in its dtype and fed to both models, so ``source`` must be on the same device and dtype.

    Args:
        source: the RGB (3-channel) model; rgba: ``convert_to_rgba(source)`` or its reload.
        sizes: pixel sizes (H, W), each a multiple of the models' downsampling factor.
        batch_size: images per size; seed: torch seed for the random pixels.
        atol: tolerance on every difference; None = 1e-3 for float32 (the report's ``bitwise`` says whether
            the differences were all 0), 5e-2 for bfloat16/float16.
    Returns:
        An ``InvariantReport``.
    Raises:
        ValueError: a size is not a multiple of the downsampling factor.
        AssertionError: a difference exceeds ``atol`` (the message names it).
    Source: AlphaVAE (arXiv 2507.09308) section 4.1.
    """
    param = next(rgba.parameters())
    atol = _default_atol(param.device, param.dtype) if atol is None else atol
    multiple = downsampling_factor(rgba)
    generator = torch.Generator().manual_seed(seed)
    diffs = {"mean_diff": 0.0, "std_diff": 0.0, "rgb_diff": 0.0, "alpha_diff": 0.0}
    for height, width in sizes:
        if height % multiple or width % multiple:
            raise ValueError(f"invariant check size {(height, width)} is not a multiple of {multiple}")
        pixels = torch.rand(batch_size, 4, height, width, generator=generator) * 2 - 1
        pixels = pixels.to(param.device, param.dtype)
        ref_mean, ref_std, ref_out = _encode_decode(source, pixels[:, :3])
        mean, std, out = _encode_decode(rgba, pixels)
        for key, value in (("mean_diff", (mean - ref_mean)), ("std_diff", (std - ref_std)),
                           ("rgb_diff", (out[:, :3] - ref_out)), ("alpha_diff", (out[:, 3] - 1))):
            diffs[key] = max(diffs[key], value.abs().max().float().item())
    report = InvariantReport(**diffs, bitwise=all(v == 0 for v in diffs.values()), atol=atol,
                             sizes=[tuple(s) for s in sizes], device=str(param.device), dtype=str(param.dtype))
    violated = {k: v for k, v in diffs.items() if not v <= atol}
    if violated:
        raise AssertionError(f"RGBA conversion invariant violated (atol {atol}): {violated}")
    return report


def downsampling_factor(model: AutoencoderKL) -> int:
    """Spatial downsampling factor of a diffusers ``AutoencoderKL``: 2 ** (encoder blocks - 1), 8 for SD/FLUX.

    Returns:
        Pixels per latent position along each side (int >= 1).
    """
    return 2 ** (len(model.config.block_out_channels) - 1)


def check_rgb_counterpart(rgb, *, latent_channels: int, downsampling: int, name: str, role: str) -> None:
    """Refuse a model that cannot stand beside an RGBA VAE as its RGB counterpart (the Ref-KL reference,
    or the source VAE of latent drift): it must be a diffusers ``AutoencoderKL`` with 3 input channels and
    the RGBA VAE's ``latent_channels`` and ``downsampling`` (pixels per latent position), so that their
    posteriors of the same composite are comparable position by position.

    Raises:
        ValueError: one line, ``"{name}: {role} must be ...; it has ..."``, listing each mismatch (found vs
            needed), or naming the class when ``rgb`` is no ``AutoencoderKL``.
    """
    if not isinstance(rgb, AutoencoderKL):
        raise ValueError(f"{name}: {role} must be a diffusers AutoencoderKL, got {type(rgb).__name__}")
    found = {"input channels": rgb.config.in_channels, "latent channels": rgb.config.latent_channels,
             "downsampling": downsampling_factor(rgb)}
    needed = {"input channels": 3, "latent channels": latent_channels, "downsampling": downsampling}
    wrong = [f"{key} {found[key]} (needs {needed[key]})" for key in needed if found[key] != needed[key]]
    if wrong:
        raise ValueError(f"{name}: {role} must be an RGB VAE with the RGBA VAE's latent channels and "
                         f"downsampling; it has {', '.join(wrong)}")


def check_not_shipped(folder: str | os.PathLike, action: str) -> None:
    """Refuse to write into the model shipped with alphavae (``DEFAULT_MODEL_DIR``) or below it: every
    command that is given no model loads it, and its README describes these exact weights.

    Raises:
        ValueError: ``folder`` is or lies inside ``DEFAULT_MODEL_DIR`` (the message names ``action``, e.g.
            "writing the converted model into").
    """
    if Path(folder).expanduser().resolve().is_relative_to(DEFAULT_MODEL_DIR):  # the folder itself included
        raise ValueError(f"{folder}: not {action} the model shipped with alphavae ({DEFAULT_MODEL_DIR}), which "
                         "commands load by default; copy that folder and pass the copy")


#: Said whenever a model id could not be looked up: how ids work without a network.
OFFLINE_HINT = ("model ids need network access; offline, HF_HUB_OFFLINE=1 loads ids already in the hub cache "
                "without the hub client's retries")


def looks_like_model_id(text: str) -> bool:
    """True for ``"org/name"`` model ids: exactly one slash, not starting with ``.``, ``/`` or ``~``, and no
    local folder named ``org`` (then ``org/name`` is a mistyped path, e.g. ``models/nope``)."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and not Path(parts[0]).is_dir()


#: diffusers' wording for a weight whose shape differs from the layer the config builds.
_SHAPE_MISMATCH = re.compile(r"(\S+) expected shape torch\.Size\(\[([^\]]*)\]\), but got torch\.Size\(\[([^\]]*)\]\)")


def _pipeline_hint(folder: Path) -> str:
    """Where the VAE is when ``folder`` is a diffusers pipeline folder or one of its components ("" otherwise)."""
    for pipeline in (folder, folder.parent):
        if (pipeline / "model_index.json").is_file() and (pipeline / "vae" / "config.json").is_file():
            return (f" ({pipeline} is a pipeline folder: its VAE is {pipeline / 'vae'}; commands with --subfolder "
                    "also take the pipeline folder with --subfolder vae)")
    return ""


def _check_local_model(folder: Path) -> None:
    """Raise a one-line error unless ``folder`` holds an AutoencoderKL ``config.json`` and weights."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder does not exist" if not folder.exists()
                                else f"{folder}: not a folder (pass the diffusers model folder)")
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: no config.json, not a diffusers model folder{_pipeline_hint(folder)}")
    try:
        class_name = json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError) as err:
        raise OSError(f"{config}: unreadable model config ({type(err).__name__}: {err})") from err
    if class_name not in (None, "AutoencoderKL"):
        raise ValueError(f"{config}: describes a {class_name}, not an AutoencoderKL{_pipeline_hint(folder)}")
    if not any(folder.glob("diffusion_pytorch_model*.safetensors")):
        pickles = sorted(p.name for p in folder.glob("diffusion_pytorch_model*.bin"))
        if pickles:
            raise FileNotFoundError(f"{folder}: holds pickle weights ({', '.join(pickles)}) but no "
                                    "diffusion_pytorch_model.safetensors; only safetensors are loaded (a pickle can "
                                    "run code): re-save the model with save_pretrained(..., safe_serialization=True)")
        raise FileNotFoundError(f"{folder}: no weights (diffusion_pytorch_model.safetensors) beside config.json")


def load_autoencoder(path_or_id: str | os.PathLike, *, subfolder: str | None = None) -> AutoencoderKL:
    """Load a float32 diffusers ``AutoencoderKL`` (eval mode) from a local folder or a model id.

    Wraps ``AutoencoderKL.from_pretrained``. Anything that exists locally, or does not look like an
    ``org/name`` model id (``org`` a local folder counts as a path), is treated as a local folder and
    checked first (folder exists, has an AutoencoderKL ``config.json`` and weights), so a mistyped path
    fails at once instead of waiting on network retries; only ``org/name`` ids that are not local folders
    are looked up (network access).
    Only safetensors weights are loaded (``use_safetensors=True``): a pickled ``.bin`` can run code.

    Raises:
        FileNotFoundError: a local folder, its config.json or its safetensors weights are missing, or the local
            path is a file, not a folder (one-line message; pickle-only weights are named).
        ValueError: the local config describes another class (e.g. UNet2DModel), or its fields and weights do
            not build an AutoencoderKL (a malformed field such as a short ``block_out_channels``, weights of
            other shapes than the config's layers: the first is named), or the weights and the config's layers
            differ (weights missing or unused, e.g. an edited ``layers_per_block``), or its latent factors are
            unusable (``scaling_factor`` 0, NaN or not a number, ``shift_factor`` not a number or null); names
            the folder.
        OSError: it cannot be loaded otherwise; the one-line message names the path and says what to pass.
    """
    local = Path(path_or_id).expanduser()
    where = local / subfolder if subfolder else local
    if local.exists() or not looks_like_model_id(str(path_or_id)):
        _check_local_model(where)
    try:
        with quiet_loggers("diffusers.models.modeling_utils"):  # unmatched weights are refused below, in one line
            model, loading = AutoencoderKL.from_pretrained(path_or_id, subfolder=subfolder, torch_dtype=torch.float32,
                                                           use_safetensors=True, output_loading_info=True)
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except (TypeError, IndexError, KeyError, AttributeError, ZeroDivisionError, RuntimeError) as err:
        raise ValueError(f"{where}: config.json and weights do not build an AutoencoderKL "
                         f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from err
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())
        mismatch = _SHAPE_MISMATCH.search(reason)
        if mismatch:  # diffusers' message goes on to advise random re-initialisation
            name, config_shape, weights_shape = mismatch.groups()
            raise ValueError(f"{where}: config.json and weights do not match: {name} is [{weights_shape}] in the "
                             f"weights, but the config builds [{config_shape}] (an edited config.json?)") from err
        if local.exists():  # checked above: a readable layout, so the files themselves failed (permissions, ...)
            raise OSError(f"cannot load an AutoencoderKL from the folder {str(path_or_id)!r} "
                          f"(subfolder={subfolder!r}): {reason}") from err
        raise OSError(f"cannot load an AutoencoderKL from {str(path_or_id)!r} (subfolder={subfolder!r}): no local "
                      f"folder {str(path_or_id)!r}, so it was looked up as a model id: {reason} (pass a local "
                      "diffusers folder holding config.json and diffusion_pytorch_model.safetensors; "
                      f"{OFFLINE_HINT})") from err
    _check_weights_match(loading, where)
    _check_latent_factors(model.config, where)
    return model.eval()


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR):
    """Hold the named loggers (and their children) at ``level`` inside the block: library log lines about a load
    that the caller checks and reports itself in one line (weights that did not load; with ``level`` above
    ``logging.CRITICAL``, the library's own error lines too)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _check_weights_match(loading: dict, where: Path) -> None:
    """Raise ValueError naming ``where`` when the checkpoint's weights and the config's layers differ.

    ``loading`` is ``from_pretrained``'s loading info: weights the config builds but the file lacks would be
    randomly initialised, and file weights no layer uses would be dropped (diffusers only warns), e.g. after
    editing ``layers_per_block``; either way the model is not the one that was saved."""
    missing, unused = sorted(loading["missing_keys"]), sorted(loading["unexpected_keys"])
    if missing or unused:
        parts = [f"{len(keys)} {what} (first: {keys[0]})" for keys, what in
                 ((missing, "layers have no weights in the file"), (unused, "file weights fit no layer")) if keys]
        raise ValueError(f"{where}: config.json and weights do not match: {'; '.join(parts)}; the config must be "
                         "the one the weights were saved with (check layers_per_block and block_out_channels)")


def check_latent_stats(config) -> None:
    """Raise ValueError unless an ``AutoencoderKL`` config's per-channel ``latents_mean`` / ``latents_std`` are both
    null, or both lists of ``latent_channels`` values with ``shift_factor`` null or 0: diffusers' pipelines apply
    either the per-channel statistics (SDXL) or the shift (SD3/FLUX), never both, so a config with both is
    ambiguous (``RGBAVAE`` applies the statistics as SDXL pipelines do, ``alphavae.vae.RGBAVAE.to_diffusion_latents``).

    Raises:
        ValueError: names the fields and the values found.
    """
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if mean is None and std is None:
        return
    channels = config.get("latent_channels")
    if any(not isinstance(stat, (list, tuple)) or len(stat) != channels for stat in (mean, std)):
        raise ValueError(f"config latents_mean and latents_std must both be null or both lists of latent_channels "
                         f"({channels}) values, got {mean!r} and {std!r}")
    if config.get("shift_factor"):
        raise ValueError(f"config sets both latents_mean/latents_std and shift_factor {config['shift_factor']!r}, "
                         "which diffusers' pipelines never apply together: set shift_factor to null, or "
                         "latents_mean and latents_std to null")



def _check_latent_factors(config, where: Path) -> None:
    """Raise ValueError naming ``where`` unless ``scaling_factor`` is a finite non-zero number,
    ``shift_factor`` a finite number or null (a 0 or NaN scale would silently give zero or NaN diffusion latents)
    and the per-channel statistics pass :func:`check_latent_stats`."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not number(config.scaling_factor) or config.scaling_factor == 0:
        raise ValueError(f"{where}: config.json scaling_factor must be a finite non-zero number, "
                         f"got {config.scaling_factor!r}")
    if config.shift_factor is not None and not number(config.shift_factor):
        raise ValueError(f"{where}: config.json shift_factor must be a finite number or null, "
                         f"got {config.shift_factor!r}")
    try:
        check_latent_stats(config)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _provenance(src, subfolder: str | None, dtype: str, report: InvariantReport) -> dict:
    """The provenance record written next to a converted model."""
    local = Path(src)
    return {
        "conversion": "AlphaVAE opaque initialisation (arXiv 2507.09308 section 4.1): RGB -> RGBA",
        "source": str(local.resolve()) if local.exists() else str(src),
        "subfolder": subfolder,
        "dtype": dtype,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"alphavae": alphavae.__version__, "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "python": platform.python_version()},
        "invariant": report.to_dict(),
    }


def _check_apart(src: str | os.PathLike, dst: Path) -> None:
    """Refuse an output folder that is, lies inside, or contains a local source folder (names both)."""
    relation = folder_relation(dst, src)
    if relation is not None:
        raise ValueError(f"output folder {dst} {relation} the source folder {src}; choose an output folder apart "
                         "from the source (the source is never written to)")


def _check_destination(src: str | os.PathLike, dst: Path, overwrite: bool) -> None:
    """The checks on ``dst`` that need no model: a folder or nothing, empty unless ``overwrite``, apart from ``src``,
    not the shipped model."""
    if os.path.lexists(dst) and not dst.is_dir():
        kind = "a dangling symlink" if not dst.exists() else "not a folder"
        raise FileExistsError(f"{dst}: exists and is {kind}; choose a folder for the converted model")
    if not overwrite and dst.is_dir() and any(dst.iterdir()):
        raise FileExistsError(f"{dst}: output folder exists and is not empty (pass {OVERWRITE_HINT} to replace "
                              "the converted model's files in it; other files are kept)")
    if Path(src).expanduser().exists():
        _check_apart(src, dst)
    check_not_shipped(dst, "writing the converted model into")
    check_writable_folder(dst, "the converted model")  # before the source model loads


def _move_into(built: Path, dst: Path, overwrite: bool) -> None:
    """Move the files of ``built`` into the existing folder ``dst``, each with one atomic ``os.replace``.

    Every check runs before the first move: a same-named entry that is not a file, a weights file
    of another layout that would stay beside the new weights (``diffusion_pytorch_model*``, e.g.
    shards; diffusers could load it instead), or, without ``overwrite``, any same-named file.
    ``config.json`` goes last, so ``dst`` looks like a model only once its weights are in place.
    """
    names = sorted((p.name for p in built.iterdir()), key=lambda name: (name == "config.json", name))
    blocked = [name for name in names if os.path.lexists(dst / name) and not (dst / name).is_file()]
    stale = sorted(p.name for p in dst.glob("diffusion_pytorch_model*") if p.name not in names)
    if blocked or stale:
        raise FileExistsError(f"{dst}: holds {', '.join(blocked + stale)}, which the converted model would not "
                              "replace cleanly; move it away or choose another output folder (nothing there was "
                              "changed)")
    clashing = [name for name in names if (dst / name).exists()]
    if clashing and not overwrite:
        raise FileExistsError(f"{dst}: already holds {', '.join(clashing)} (pass {OVERWRITE_HINT} to replace "
                              "the converted model's files; other files are kept)")
    for name in names:
        os.replace(built / name, dst / name)


def _save(model: AutoencoderKL, folder: Path, dst: Path) -> None:
    """``model.save_pretrained(folder)`` in safetensors; a safetensors write error (e.g. no space left on the
    device) becomes an OSError naming the output folder ``dst``."""
    try:
        model.save_pretrained(folder, safe_serialization=True)
    except SafetensorError as err:
        raise OSError(f"{dst}: cannot write the converted model ({err})") from err


def convert_pretrained(src: str | os.PathLike, dst: str | os.PathLike, *, subfolder: str | None = None,
                       dtype: str = "float32", overwrite: bool = False) -> Path:
    """Convert a pretrained RGB VAE to RGBA, check the invariant, and save it in diffusers format.

    The conversion and the invariant check run in float32 on the CPU; the model is then
    cast to ``dtype`` and saved (``config.json`` + ``diffusion_pytorch_model.safetensors``, or the
    shards and index diffusers writes for a large model) with ``alphavae_provenance.json`` (source,
    subfolder, date, library versions, invariant report). The files are built (and fsynced) in a
    hidden temporary folder and then moved into place, so a failed run leaves no partial model:
    a new ``dst`` is the renamed temporary folder (built beside it); in an existing ``dst`` (built
    inside it, so the moves stay on one file system) each written file replaces its namesake with
    one atomic rename, ``config.json`` last. Nothing else in ``dst`` is touched or deleted, and the
    source is never written to.

    Args:
        src: local diffusers folder, or a model id (passed to ``AutoencoderKL.from_pretrained``;
            needs network access).
        dst: output folder: new, an empty folder, or (with ``overwrite``) a folder whose files of the
            same names (above) are replaced; it must not be the local ``src``, lie inside it, or contain it.
        subfolder: e.g. "vae" for a full pipeline folder.
        dtype: "float32", "bfloat16" or "float16" for the saved weights.
        overwrite: replace the converted model's files in an existing non-empty ``dst`` (other files
            are kept).
    Returns:
        ``dst`` as a Path (as given, not resolved).
    Raises:
        FileExistsError: ``dst`` is not a folder; is non-empty and not ``overwrite``; or holds, under a
            written file's name, something that is not a file, or other ``diffusion_pytorch_model*``
            weights files (raised before anything is written; the message names them).
        OSError: the source cannot be loaded (message says what to pass; FileNotFoundError for a missing
            local folder, config or weights), ``dst`` cannot be created or written to (checked before the
            source loads, :func:`alphavae.io.check_writable_folder`; NotADirectoryError when a parent is a
            file), or the model cannot be written (e.g. no space left; nothing is left behind).
        ValueError: bad dtype; ``dst`` is, lies inside or contains the local ``src`` (names both), or is the
            model shipped with alphavae (:func:`check_not_shipped`); the source is not a 3-channel
            AutoencoderKL, or its config does not build one (:func:`load_autoencoder`).
        AssertionError: the invariant check failed.
    """
    torch_dtype = parse_dtype(dtype)
    dst = Path(dst)
    _check_destination(src, dst, overwrite)
    source = load_autoencoder(src, subfolder=subfolder)
    rgba = convert_to_rgba(source)
    report = check_invariant(source, rgba)
    target = dst.resolve()
    existing = target.is_dir()
    if not existing:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.alphavae-convert.",
                                dir=target if existing else target.parent))
    try:
        _save(cast_model(rgba, torch_dtype), tmp, dst)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(_provenance(src, subfolder, dtype, report), indent=2) + "\n")
        set_default_permissions(tmp)
        for written in tmp.iterdir():
            with open(written, "rb") as handle:
                os.fsync(handle.fileno())
        if existing:
            _move_into(tmp, target, overwrite)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dst
