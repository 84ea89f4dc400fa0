"""Transparent text-to-image with FLUX and an RGBA VAE.

The diffusers ``FluxPipeline`` runs the text encoders and the transformer only
(``output_type="latent"``); its packed latents are unpacked here and decoded by
:class:`alphavae.vae.RGBAVAE` into straight RGBA. No pixel tensor ever goes through diffusers'
``VaeImageProcessor`` (which takes any 4-channel tensor for latents), and the
pipeline's own RGB-only post-processing is never used. Source: AlphaVAE (arXiv 2507.09308) §5.1;
library: diffusers ``FluxPipeline``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import FluxPipeline
from PIL import Image
from torchvision.utils import make_grid
from tqdm.auto import tqdm

from alphavae import io
from alphavae.accel import OFFLOAD_MODES, parse_dtype, resolve_policy
from alphavae.convert import OFFLINE_HINT, looks_like_model_id, quiet_loggers
from alphavae.diffusion.flow import unpack_latents
from alphavae.vae import RGBAVAE

log = logging.getLogger(__name__)

RECORDS_FILE = "generations.jsonl"
"""Name of the per-folder record of :func:`generate_folder`: one JSON object per PNG, the request that made it."""
SHEET_FILE = "contact_sheet.png"
"""Name of the preview sheet :func:`generate_folder` rebuilds from the folder's images (see :data:`SHEET_LIMIT`)."""
SHEET_LIMIT = 64
"""Most images on a contact sheet: the folder's first ones in (prompt index, seed) order, the rest are left off."""
SHEET_TILE = 256
"""Longest side in pixels of an image on a contact sheet (larger images are shrunk, keeping their aspect ratio),
so the sheet's tiles take at most ``SHEET_LIMIT x 4 x SHEET_TILE**2`` floats (64 MiB) whatever ``n`` is."""
SHEET_COLUMNS = 8
"""Images per row of a contact sheet: at most 8 x 8 tiles, about 2070 x 2070 pixels."""
MAX_SEED = 2**64 - 1
"""Largest seed ``torch.Generator.manual_seed`` accepts (also ``alphavae.cli.seed``'s limit)."""
MAX_SIDE = math.isqrt(io.DEFAULT_MAX_PIXELS)
"""Largest width or height (pixels, 8192) :func:`generate_from_paths` and ``train-lora``'s ``resolution`` take: a
larger square exceeds :data:`alphavae.io.DEFAULT_MAX_PIXELS`, the most pixels :func:`alphavae.io.load_rgba` reads
back (the contact sheet re-reads the PNGs; training resizes images to it). It is far above FLUX.1's training sizes
(about 1-2 MP) and keeps the scheduler's size-dependent shift finite (above about 32750 px a side it overflows)."""
MAX_STEPS = 1000
"""Most denoising steps: FLUX.1's scheduler ``num_train_timesteps`` (``scheduler/scheduler_config.json`` of
FLUX.1-dev); more steps than training noise levels is what diffusers' DDPM/DDIM schedulers refuse, and huge counts
fail to allocate their sigma grid."""
MAX_IMAGES = 100_000
"""Most images one :func:`generate_folder` call makes (prompts x ``n``): every request is held in memory and
``generations.jsonl``, rewritten whole after each batch, holds a record per image (a huge ``n`` hung building them)."""
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
"""Largest magnitude of ``guidance`` and ``lora_scale`` (about 3.4e38): the value goes into float32 tensors, which
cannot hold a larger one (the generation failed with an overflow)."""
FLUX_LATENT_FACTORS = (0.3611, 0.1159)
"""``(scaling_factor, shift_factor)`` of FLUX.1's VAE (``vae/config.json`` of FLUX.1-dev and -schnell): the latent
normalisation the FLUX transformer was trained on. Source: black-forest-labs/FLUX.1-dev."""


def load_flux_pipeline(
    model: str | Path, vae: RGBAVAE, *, lora: str | Path | None = None, lora_scale: float = 1.0,
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", offload: str = "none",
) -> FluxPipeline:
    """Load a diffusers FLUX pipeline with the RGBA VAE as a drop-in ``vae=`` (same latent space).

    Args:
        model: local diffusers FLUX folder (``model_index.json``), or a hub id when online. Its own
            ``vae`` folder is not loaded.
        vae: the RGBA VAE (16 latent channels for FLUX); it keeps its dtype, moves to ``device``
            with the pipeline and is excluded from CPU offload (it is called directly, not through
            the pipeline).
        lora: a LoRA folder or ``.safetensors`` file (:func:`alphavae.diffusion.lora.save_lora`, or
            any diffusers FLUX LoRA), or a hub id when online; read first (:func:`read_lora`, so a bad
            LoRA costs no model loading), then loaded from ``lora`` with ``FluxPipeline.load_lora_weights``, which
            applies the adapter metadata saved with it (update scale alpha / rank).
        lora_scale: multiplier of the LoRA update (1 = as trained).
        dtype: weights dtype of the transformer and text encoders (bfloat16 on GPUs).
        device: where the pipeline runs (with offload: the accelerator it offloads to).
        offload: one of :data:`alphavae.accel.OFFLOAD_MODES`.

    A VAE whose ``scaling_factor`` / ``shift_factor`` differ from :data:`FLUX_LATENT_FACTORS` (e.g. an SD3-shaped
    16-channel VAE) is accepted with a one-line logged warning naming both pairs (:func:`_warn_unlike_flux`).

    Raises:
        ValueError: unknown offload mode, the VAE's latent channels do not match the transformer, or the
            LoRA holds no LoRA weights or does not fit the transformer (:func:`apply_lora`).
        FileNotFoundError: a local model folder (a path that is no ``org/name`` hub id,
            :func:`alphavae.convert.looks_like_model_id`) or LoRA path that does not exist.
        OSError: the model or LoRA cannot be loaded (message names the path).
    """
    from alphavae.eval.networks import one_line

    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
    lora_state = None if lora is None else read_lora(lora)
    local = Path(model).expanduser()
    if not local.exists() and not looks_like_model_id(str(model)):
        raise FileNotFoundError(f"{model}: folder does not exist")
    try:
        pipe = FluxPipeline.from_pretrained(local if local.exists() else model, vae=vae.model, dtype=dtype)
    except (OSError, ValueError) as err:
        hint = "" if local.exists() else f" ({OFFLINE_HINT})"
        raise OSError(f"cannot load a FLUX pipeline from {str(model)!r}: {one_line(err)}{hint}") from err
    if pipe.transformer.config.in_channels != 4 * vae.latent_channels:
        raise ValueError(f"{model}: transformer expects {pipe.transformer.config.in_channels // 4} latent channels, "
                         f"the RGBA VAE has {vae.latent_channels}")
    _warn_unlike_flux(vae)
    if lora_state is not None:
        apply_lora(pipe, lora_state, lora_scale, name=str(lora), source=lora)
    pipe._exclude_from_cpu_offload = ["vae"]
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        # diffusers warns that float16 "cannot run" on the CPU; current torch runs it (slowly), so the warning misleads.
        pipe.to(device, silence_dtype_warnings=True)
    return pipe


def _warn_unlike_flux(vae: RGBAVAE) -> None:
    """Log one warning when ``vae``'s config ``scaling_factor`` / ``shift_factor`` (a missing shift counts as 0)
    differ by more than 0.1 % from :data:`FLUX_LATENT_FACTORS`: the FLUX transformer would see latents normalised
    unlike those it was trained on (e.g. an SD3 VAE: 1.5305 / 0.0609)."""
    factors = (vae.scaling_factor, vae.shift_factor)
    if all(math.isclose(ours, flux, rel_tol=1e-3) for ours, flux in zip(factors, FLUX_LATENT_FACTORS, strict=True)):
        return
    log.warning("%s: scaling_factor %g / shift_factor %g differ from FLUX's %g / %g; the FLUX transformer will see "
                "latents normalised unlike its training data (a VAE made from another model's, e.g. SD3's?)",
                vae.model.config.get("_name_or_path", "the RGBA VAE"), *factors, *FLUX_LATENT_FACTORS)


GENERATION_ADAPTER = "rgba"
"""Adapter name under which :func:`apply_lora` loads a LoRA into a pipeline."""


def _lora_tensors(state: dict) -> list[str]:
    """The keys of ``state`` that are LoRA matrices (``...lora_A.weight`` / ``...lora_B.weight`` and biases)."""
    return [key for key in state if re.search(r"\.lora_[AB]\.", key)]


def read_lora(lora: str | Path) -> dict[str, torch.Tensor]:
    """Read a FLUX LoRA's weights in diffusers' format (``FluxPipeline.lora_state_dict``), before any model loads.

    Args:
        lora: a LoRA folder (holding ``pytorch_lora_weights.safetensors``), a ``.safetensors`` file, or an
            ``org/name`` hub id (looked up only when no such local path exists; network access).
    Returns:
        ``{"transformer.<module>.lora_A.weight": tensor, ...}`` (kohya/other formats converted by diffusers).
    Raises:
        FileNotFoundError: a local path that does not exist (anything that is not an ``org/name`` id), or a
            folder without ``.safetensors`` weights.
        ValueError: the weights hold no LoRA matrices (e.g. a full transformer file).
        OSError: the file cannot be read or the id cannot be looked up; one line naming it.
    """
    from alphavae.eval.networks import one_line

    if not Path(lora).exists() and not looks_like_model_id(str(lora)):
        raise FileNotFoundError(f"{lora}: LoRA file or folder not found")
    if Path(lora).is_dir() and not any(Path(lora).glob("*.safetensors")):
        raise FileNotFoundError(f"{lora}: no .safetensors LoRA weights in this folder (an unfinished train-lora run "
                                "keeps them in checkpoints/step-N/: pass one of those folders)")
    try:
        state = FluxPipeline.lora_state_dict(str(lora))
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as err:  # safetensors, diffusers and the hub client (network errors are not OSErrors)
        if Path(lora).exists():
            raise OSError(f"{lora}: cannot read LoRA weights: {one_line(err)}") from err
        raise OSError(f"{lora}: cannot read LoRA weights (no such local path, so it was looked up as a hub id): "
                      f"{one_line(err)} ({OFFLINE_HINT})") from err
    if not _lora_tensors(state):
        raise ValueError(f"{lora}: holds no LoRA weights (no lora_A / lora_B tensors among {len(state)} tensors)")
    return state


_LORA_MATRIX = re.compile(r"(transformer|text_encoder|text_encoder_2)\.(.+)\.lora_([AB])\.weight")
"""A LoRA matrix key of :func:`read_lora`'s state: pipeline part, layer name, A or B."""


def _shape_misfit(pipe: FluxPipeline, state: dict[str, torch.Tensor]) -> str | None:
    """The first LoRA matrix of ``state`` that does not fit its layer in ``pipe``, in words; None when all fit.

    ``lora_A`` ``(rank, in, ...)`` must have the layer weight's input size (dimension 1), ``lora_B``
    ``(out, rank, ...)`` its output size (dimension 0). Checked before loading because diffusers' FLUX loader
    widens a layer to fit a wider ``lora_A`` or ``lora_B`` (meant for Control LoRAs) and zero-pads a narrower
    ``lora_A``, so a LoRA of another width loads into a changed model and fails only when generating. Matrices
    whose layer does not exist are left to :func:`apply_lora`'s check after loading."""
    for key, tensor in state.items():
        match = _LORA_MATRIX.fullmatch(key)
        weight = _layer_weight(pipe, match[1], match[2]) if match else None
        if weight is None:
            continue
        side = 1 if match[3] == "A" else 0
        if tensor.ndim != weight.ndim or tensor.shape[side] != weight.shape[side]:
            return (f"{key} has shape {list(tensor.shape)}, its layer's weight {list(weight.shape)}: lora_{match[3]} "
                    f"needs {weight.shape[side]} {'columns' if side else 'rows'}")
    return None


def _layer_weight(pipe: FluxPipeline, part: str, name: str) -> torch.Tensor | None:
    """The weight of layer ``name`` of ``pipe``'s ``part`` ("transformer", "text_encoder", ...; under a peft
    wrapper its base layer's), or None when there is no such part, layer or weight."""
    try:
        layer = getattr(pipe, part).get_submodule(name)
    except AttributeError:
        return None
    return getattr(getattr(layer, "base_layer", layer), "weight", None)


def apply_lora(pipe: FluxPipeline, state: dict[str, torch.Tensor], scale: float, *, name: str,
               source: str | Path | None = None) -> None:
    """Load LoRA weights (:func:`read_lora`) into ``pipe`` as adapter :data:`GENERATION_ADAPTER` at ``scale``.

    ``source``, the path or hub id ``state`` was read from, is what diffusers loads when given: it reads the
    adapter metadata saved with the weights (``lora_adapter_metadata``: rank, alpha, targets), so the update is
    scaled by alpha / rank as in training. From ``state`` alone (no ``source``) that metadata is lost and diffusers
    assumes alpha = rank: a LoRA trained with another alpha (e.g. rank 4, alpha 16) would act at the wrong strength.

    Every LoRA matrix must have its layer's width (checked first, :func:`_shape_misfit`: diffusers would widen or
    zero-pad the layer instead) and land in the transformer or a text encoder (diffusers only logs tensors that
    match no layer, so a LoRA trained for a deeper FLUX would be applied in part). diffusers' and peft's log lines
    during the load are silenced: the error raised here is the one report.

    Raises:
        ValueError: a LoRA tensor has another shape than its layer, or matches no layer; one line naming
            ``name`` (the LoRA's path) and the first such tensor.
    Source: ``FluxPipeline.load_lora_weights`` / ``set_adapters`` (diffusers, peft).
    """
    from alphavae.eval.networks import one_line

    if misfit := _shape_misfit(pipe, state):
        raise ValueError(f"{name}: LoRA does not fit this FLUX transformer ({misfit}); it was trained for another "
                         "transformer, or edited")
    try:
        with quiet_loggers("diffusers", "peft", level=logging.CRITICAL + 1):  # checked below, in one line
            pipe.load_lora_weights(dict(state) if source is None else str(source), adapter_name=GENERATION_ADAPTER)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(f"{name}: LoRA does not fit this FLUX transformer ({one_line(err)})") from err
    loaded = {f"{part}.{param}" for part in ("transformer", "text_encoder", "text_encoder_2")
              if getattr(pipe, part, None) is not None for param, _ in getattr(pipe, part).named_parameters()}
    tensors = _lora_tensors(state)
    unmatched = [key for key in tensors if re.sub(r"\.(lora_[AB])\.", rf".\1.{GENERATION_ADAPTER}.", key) not in loaded]
    if unmatched:
        raise ValueError(f"{name}: {len(unmatched)} of {len(tensors)} LoRA tensors match no layer of this FLUX model "
                         f"(first: {unmatched[0]}); it was trained for another transformer")
    pipe.set_adapters([GENERATION_ADAPTER], [scale])


def round_size(height: int, width: int, multiple: int = 16) -> tuple[int, int]:
    """Round a pixel size up to multiples of ``multiple`` (FLUX: VAE factor 8 x 2x2 packing = 16).

    Raises:
        ValueError: a side below 1.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be at least 1x1, got {width}x{height} (WxH)")
    return math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple


def center_crop(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre crop ``(..., H', W')`` to ``(..., height, width)`` (sizes no larger than the input)."""
    top = (pixels.shape[-2] - height) // 2
    left = (pixels.shape[-1] - width) // 2
    return pixels[..., top: top + height, left: left + width]


@torch.no_grad()
def generate_rgba(
    pipe: FluxPipeline, vae: RGBAVAE, prompts: list[str], seeds: list[int], *, height: int = 1024,
    width: int = 1024, steps: int = 28, guidance: float = 3.5, max_sequence_length: int = 512,
) -> torch.Tensor:
    """Generate one straight-RGBA image per (prompt, seed) pair.

    Size policy: FLUX needs sides that are multiples of 16. Other sizes are generated at the size
    rounded *up* (:func:`round_size`) and centre-cropped back, so the output always has exactly the
    requested size (at most 15 pixels of the generated border are dropped); both sizes are logged.

    Args:
        pipe: from :func:`load_flux_pipeline` (or any FluxPipeline whose transformer matches ``vae``).
        vae: the RGBA VAE decoding the latents.
        prompts, seeds: equal-length lists; image i uses its own ``torch.Generator`` seeded with
            ``seeds[i]`` (CPU), so it does not depend on the batch it is in.
        height, width: output size in pixels (>= 1; :func:`generate_folder` and :func:`generate_from_paths`
            refuse sides above :data:`MAX_SIDE`, 8192).
        steps: denoising steps (>= 1); guidance: FLUX embedded guidance (FLUX.1-dev default 3.5).
        max_sequence_length: T5 tokens (<= 512).

    Returns:
        ``(B, 4, height, width)`` float32 straight RGBA in [-1, 1], on the VAE's device.

    Raises:
        ValueError: lists of different lengths or empty, bad size or steps.
    """
    if len(prompts) != len(seeds) or not prompts:
        raise ValueError(f"need equally many prompts and seeds (>= 1), got {len(prompts)} and {len(seeds)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    run_h, run_w = round_size(height, width, pipe.vae_scale_factor * 2)
    if (run_h, run_w) != (height, width):
        log.info("generating at %dx%d (multiple of 16) and centre-cropping to the requested %dx%d (WxH)",
                 run_w, run_h, width, height)
    tokens = pipe(
        prompt=list(prompts), height=run_h, width=run_w, num_inference_steps=steps, guidance_scale=guidance,
        generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="latent",
        max_sequence_length=max_sequence_length,
    ).images
    factor = pipe.vae_scale_factor
    latents = unpack_latents(tokens, run_h // factor, run_w // factor)
    pixels = vae.decode(vae.from_diffusion_latents(latents.to(vae.device, torch.float32)))
    return center_crop(pixels, height, width)


def generate_images(pipe: FluxPipeline, vae: RGBAVAE, prompts: list[str], seeds: list[int],
                    **options) -> list[Image.Image]:
    """:func:`generate_rgba`, returned as 8-bit Pillow ``RGBA`` images (straight alpha, :func:`alphavae.io.to_pil`).

    ``options`` are the keyword arguments of :func:`generate_rgba` (height, width, steps, guidance, ...).
    """
    return [io.to_pil(image) for image in generate_rgba(pipe, vae, prompts, seeds, **options).cpu()]


def sheet_tile(image: torch.Tensor) -> torch.Tensor:
    """``(4, H, W)`` straight RGBA in [-1, 1] shrunk (alpha-correctly, :func:`alphavae.io.resize_rgba`) to at most
    :data:`SHEET_TILE` pixels on its longest side, keeping the aspect ratio (sides >= 1); a smaller image is
    returned as it is. Float32 on the CPU, a copy that holds no reference to ``image``'s storage."""
    height, width = image.shape[-2:]
    scale = SHEET_TILE / max(height, width)
    if scale >= 1:
        return image.detach().to("cpu", torch.float32, copy=True)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return io.resize_rgba(image.detach().to("cpu", torch.float32), size)


def contact_sheet(pixels: torch.Tensor | Sequence[torch.Tensor], columns: int = 4) -> torch.Tensor:
    """Tile images composited over a checkerboard into one opaque sheet.

    Args:
        pixels: ``(B, 4, H, W)`` straight RGBA in [-1, 1], or a non-empty sequence of ``(4, H, W)`` images of any
            sizes: each is composited over its own checkerboard and padded with white at its right and bottom to
            the largest height and width.
        columns: images per row (>= 1).

    Returns:
        ``(4, H', W')`` RGBA in [-1, 1], alpha = 1 (a preview; the transparency is shown by the
        checkerboard, 2-pixel white gutters). Library: torchvision ``make_grid``.

    Raises:
        ValueError: no images, or an image that is not ``(4, H, W)`` RGBA (``alphavae.io.composite``).
        TypeError: an image that is not floating point.
    """
    shown = [io.composite(image[None], "checkerboard")[0] for image in pixels]
    height, width = max(image.shape[-2] for image in shown), max(image.shape[-1] for image in shown)
    tiles = torch.stack([torch.nn.functional.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2]),
                                                 value=1.0) for image in shown])
    sheet = make_grid(tiles, nrow=max(1, columns), padding=2, pad_value=1.0)
    return torch.cat([sheet, torch.ones_like(sheet[:1])])


@dataclass
class GenerationReport:
    """Outcome of :func:`generate_folder`: files written, skipped (already there), refused and failed.

    Attributes:
        written: paths of the PNGs written by this call.
        skipped: paths that already existed with a record of this very request, not regenerated.
        refused: one message per existing file left untouched because its record is missing or
            describes another request (names the file and the differing settings); not regenerated.
        failed: paths whose batch raised (logged); nothing was written for them.
        requested_size: ``(height, width)`` in pixels, as asked for; the size of every written image.
        generated_size: ``(height, width)`` in pixels the pipeline ran at: the request rounded up to
            multiples of the VAE factor x 2 (16 for FLUX, :func:`round_size`), then centre-cropped back
            to ``requested_size``.
    """

    written: list[str]
    skipped: list[str]
    refused: list[str]
    failed: list[str]
    requested_size: tuple[int, int]
    generated_size: tuple[int, int]


def _read_records(path: Path) -> dict[str, dict]:
    """``{file name: record}`` of a ``generations.jsonl`` ({} when there is none); ValueError naming the line
    for a line that is not a JSON object with a string ``file``."""
    if not path.exists():
        return {}
    records = {}
    for number, record in io.read_jsonl(path, f"{RECORDS_FILE} file"):
        if not isinstance(record, dict) or not isinstance(record.get("file"), str):
            raise ValueError(f"{path}:{number}: expected a JSON object with a 'file' name")
        records[record["file"]] = record
    return records


def _present_records(output_dir: Path) -> dict[str, dict]:
    """The records of ``output_dir``'s ``generations.jsonl`` whose PNG exists, read afresh (another run may
    have added some since)."""
    return {name: record for name, record in _read_records(output_dir / RECORDS_FILE).items()
            if (output_dir / name).exists()}


def _conflict(path: Path, record: dict | None, wanted: dict) -> str | None:
    """Why the existing ``path`` cannot stand for the request ``wanted``; None when its record matches it."""
    advice = "left untouched: delete it or choose another output folder"
    if record is None:
        return f"{path}: exists but {RECORDS_FILE} has no record of it; {advice}"
    differences = [f"{key}: recorded {record[key]!r}, now {value!r}" if key in record else f"{key}: not recorded"
                   for key, value in wanted.items() if key not in record or record[key] != value]
    if not differences:
        return None
    return f"{path}: exists from a different request ({'; '.join(differences)}); {advice}"


def _triage(paths: dict, wanted: dict, records: dict[str, dict], report: GenerationReport) -> list:
    """The jobs whose file does not exist yet, in order; each existing one goes to ``report.skipped`` when
    its record matches ``wanted``, else to ``report.refused``."""
    todo = []
    for job, path in paths.items():
        if not path.exists():
            todo.append(job)
        elif problem := _conflict(path, records.get(path.name), wanted[job]):
            report.refused.append(problem)
        else:
            report.skipped.append(str(path))
    return todo


def _write_records(path: Path, records: dict[str, dict]) -> None:
    """Replace ``generations.jsonl`` atomically by ``records``, one JSON object per line."""
    text = "".join(json.dumps(record) + "\n" for record in records.values())
    io.atomic_write_text(path, text, overwrite=True)


def generate_folder(
    pipe: FluxPipeline, vae: RGBAVAE, prompts: list[str], output_dir: str | Path, *, n: int = 1,
    seed: int = 0, height: int = 1024, width: int = 1024, steps: int = 28, guidance: float = 3.5,
    batch_size: int = 1, sheet: bool = True, progress: bool = True, settings: dict | None = None,
) -> GenerationReport:
    """Generate ``n`` RGBA PNGs per prompt into ``output_dir``; keep files that already exist.

    File ``p{prompt:04d}-s{seed}.png`` holds prompt number ``prompt`` with seed ``seed + k`` for
    its k-th image (deterministic: the same arguments give the same pixels). ``generations.jsonl``
    (:data:`RECORDS_FILE`) holds one record per PNG: file, prompt, seed, width, height, steps,
    guidance and ``settings``. An existing PNG is skipped when its record equals the new request;
    otherwise (no record, or any value differs) it is refused and left as it is, with its record.
    Records of other existing files are kept (those of deleted files go at the next write); each batch's
    records are written (atomically) before its PNGs, so no PNG of this call lacks a record even if
    the run is interrupted. The file is re-read before each write and this call's records are merged in,
    so two runs into one folder keep each other's records (unless both write within the same few
    milliseconds: the file is not locked). With ``sheet``, a call that writes images then rebuilds
    :data:`SHEET_FILE`, a preview of the folder (:func:`_rebuild_sheet`): its recorded PNGs in (prompt index,
    seed) order, the first :data:`SHEET_LIMIT`, each shrunk to at most :data:`SHEET_TILE` pixels
    (:func:`sheet_tile`), :data:`SHEET_COLUMNS` per row over a checkerboard, so its memory and size do not grow
    with ``n``. It replaces the previous sheet atomically (derived from the PNGs, it can always be rebuilt); a
    call that writes no image leaves an existing sheet as it is, and builds a missing one (e.g. after a run whose
    images were all written but whose sheet was not). A folder where the sheet goes is refused before any image is
    made. Writes are atomic.

    Args:
        prompts: one or more prompts; output_dir: created if missing.
        n: images per prompt (>= 1; prompts x n at most :data:`MAX_IMAGES`); seed: base seed (>= 0); batch_size:
            images per pipeline call.
        height, width, steps, guidance: see :func:`generate_rgba`; each side at most :data:`MAX_SIDE` (8192),
            ``steps`` at most :data:`MAX_STEPS` (1000), ``guidance`` within float32's range.
        sheet: rebuild the contact sheet; progress: show a tqdm bar over images.
        settings: further JSON values that decide the pixels (model paths, dtypes, LoRA; see
            :func:`generate_from_paths`), recorded and compared like the others.

    Returns:
        A :class:`GenerationReport`; refused files and failures (e.g. out of memory on one batch) are
        recorded there and the remaining images still run.

    Raises:
        ValueError: no prompts, n, batch_size, seed, size, steps or guidance out of range (:func:`check_request`:
            e.g. a side above :data:`MAX_SIDE`), a prompt that is not valid text, or a bad ``generations.jsonl``.
        IsADirectoryError: with ``sheet``, :data:`SHEET_FILE` is a folder (before any image is made).
        OSError: ``generations.jsonl``, a PNG or the contact sheet cannot be read or written.
    """
    check_request(prompts, n=n, seed=seed, batch_size=batch_size, height=height, width=width, steps=steps,
                  guidance=guidance)
    if sheet:
        _check_sheet_path(Path(output_dir))
    return _fill_folder(pipe, vae, prompts, Path(output_dir), n=n, seed=seed, height=height, width=width,
                        steps=steps, guidance=guidance, batch_size=batch_size, sheet=sheet, progress=progress,
                        settings=settings)


def _fill_folder(
    pipe: FluxPipeline, vae: RGBAVAE, prompts: list[str], output_dir: Path, *, n: int = 1, seed: int = 0,
    height: int = 1024, width: int = 1024, steps: int = 28, guidance: float = 3.5, batch_size: int = 1,
    sheet: bool = True, progress: bool = True, settings: dict | None = None,
) -> GenerationReport:
    """:func:`generate_folder` for a request :func:`check_request` and :func:`_check_sheet_path` have accepted
    (:func:`generate_from_paths` checks it before the models load)."""
    records, written_records = _present_records(output_dir), {}
    jobs = [(p, prompt, seed + k) for p, prompt in enumerate(prompts) for k in range(n)]
    path_of = {job: output_dir / f"p{job[0]:04d}-s{job[2]}.png" for job in jobs}
    wanted = {job: {"file": path_of[job].name, "prompt": job[1], "seed": job[2], "width": width, "height": height,
                    "steps": steps, "guidance": guidance, **(settings or {})} for job in jobs}
    report = GenerationReport([], [], [], [], (height, width), round_size(height, width, pipe.vae_scale_factor * 2))
    todo = _triage(path_of, wanted, records, report)
    with tqdm(total=len(todo), desc="generate", unit="img", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start: start + batch_size]
            try:
                pixels = generate_rgba(pipe, vae, [j[1] for j in batch], [j[2] for j in batch], height=height,
                                       width=width, steps=steps, guidance=guidance)
            except (RuntimeError, ValueError) as err:
                log.error("generation failed for %s: %s", [str(path_of[j]) for j in batch], err)
                report.failed += [str(path_of[j]) for j in batch]
            else:
                written_records.update({path_of[j].name: wanted[j] for j in batch})
                _write_records(output_dir / RECORDS_FILE, {**_present_records(output_dir), **written_records})
                for job, image in zip(batch, pixels.cpu(), strict=True):
                    report.written.append(str(io.save_rgba(image, path_of[job])))
            bar.update(len(batch))
    if sheet and (report.written or not (output_dir / SHEET_FILE).exists()):
        _rebuild_sheet(output_dir)
    return report


def check_request(prompts: list[str], *, n: int = 1, seed: int = 0, batch_size: int = 1, height: int = 1024,
                  width: int = 1024, steps: int = 28, guidance: float = 3.5) -> None:
    """Refuse a :func:`generate_folder` request that could not run to the end, before any model loads.

    Image k of a prompt uses seed ``seed + k``, so the last one ``seed + n - 1`` must not exceed :data:`MAX_SEED`.
    A prompt holding a lone UTF-16 surrogate (a command-line argument that is not UTF-8, e.g. Latin-1 bytes,
    arrives surrogate-escaped) cannot be tokenized; it is refused by :func:`alphavae.io.check_text`, naming the
    prompt by its number (from 1).

    Raises:
        ValueError: no prompts, ``n`` or ``batch_size`` below 1, ``seed`` below 0, ``seed + n - 1`` above
            :data:`MAX_SEED`, more than :data:`MAX_IMAGES` images (prompts x ``n``), a side outside
            [1, :data:`MAX_SIDE`], ``steps`` outside [1, :data:`MAX_STEPS`], a ``guidance`` that is not finite or
            beyond :data:`FLOAT32_MAX`, or a prompt that is not valid Unicode text; one line naming the setting.
    """
    if not prompts or n < 1 or batch_size < 1 or seed < 0:
        raise ValueError(f"need prompts, n >= 1, batch_size >= 1 and seed >= 0; got {len(prompts)}, {n}, "
                         f"{batch_size}, {seed}")
    if seed + n - 1 > MAX_SEED:
        raise ValueError(f"seed {seed} with n {n}: the last image's seed (seed + n - 1 = {seed + n - 1}) is above "
                         f"{MAX_SEED}, the largest seed torch takes; lower the seed or n")
    if len(prompts) * n > MAX_IMAGES:
        raise ValueError(f"{len(prompts)} prompt(s) x n {n} = {len(prompts) * n} images, above the {MAX_IMAGES} one "
                         "run makes; lower n or split the prompts over several runs")
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise ValueError(f"image size {width}x{height} (WxH): each side must be in [1, {MAX_SIDE}] pixels "
                         f"({MAX_SIDE}x{MAX_SIDE}, alphavae.io.DEFAULT_MAX_PIXELS, is the most pixels alphavae reads "
                         "back from an image)")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be in [1, {MAX_STEPS}] (the FLUX scheduler's training timesteps), got {steps}")
    check_float32(guidance, "guidance")
    for number, prompt in enumerate(prompts, 1):
        io.check_text(prompt, f"prompt {number} of {len(prompts)}")


def check_float32(value: float, name: str) -> None:
    """Raise ValueError (naming ``name``) when ``value`` is not finite or beyond :data:`FLOAT32_MAX` in magnitude:
    float32 tensors cannot hold it (a ``guidance`` of 1e300 failed each image with an overflow)."""
    if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
        raise ValueError(f"{name} must be a finite number of at most {FLOAT32_MAX:.4g} in magnitude (float32's "
                         f"range), got {value}")


_IMAGE_NAME = re.compile(r"p(\d+)-s(\d+)\.png")
"""Name of a PNG :func:`generate_folder` writes: prompt index and seed."""


def _sheet_files(output_dir: Path) -> list[Path]:
    """The first :data:`SHEET_LIMIT` PNGs of ``output_dir`` that ``generations.jsonl`` records and that exist, named
    like :data:`_IMAGE_NAME`, in (prompt index, seed) order."""
    numbered = sorted((tuple(map(int, match.groups())), name) for name in _present_records(output_dir)
                      if (match := _IMAGE_NAME.fullmatch(name)))
    return [output_dir / name for _, name in numbered[:SHEET_LIMIT]]


def _check_sheet_path(output_dir: Path) -> None:
    """Raise IsADirectoryError when ``output_dir``'s :data:`SHEET_FILE` is a folder: the sheet, written after the
    images, could not replace it (checked before any image is made, so a long run does not end in that error)."""
    path = output_dir / SHEET_FILE
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, where the contact sheet goes: move it away or pass --no-sheet "
                                "(sheet=False)")


def _rebuild_sheet(output_dir: Path) -> None:
    """Replace ``output_dir``'s :data:`SHEET_FILE` (atomically) by a contact sheet of :func:`_sheet_files`, each
    image shrunk by :func:`sheet_tile`, :data:`SHEET_COLUMNS` per row; an image that cannot be read is left off
    with a logged warning (no sheet is written when none can)."""
    tiles = []
    for path in _sheet_files(output_dir):
        try:
            tiles.append(sheet_tile(io.load_rgba(path)))
        except io.ImageLoadError as err:
            log.warning("left off %s: %s", SHEET_FILE, err)
    if tiles:
        io.save_rgba(contact_sheet(tiles, columns=SHEET_COLUMNS), output_dir / SHEET_FILE, overwrite=True)


def default_device() -> str:
    """Return "cuda" when a CUDA GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


_REQUEST_KEYS = ("n", "seed", "batch_size", "height", "width", "steps", "guidance")
"""The :func:`generate_folder` options :func:`check_request` checks."""


def generate_from_paths(
    model: str | Path, vae: str | Path, prompts: list[str], output_dir: str | Path, *,
    lora: str | Path | None = None, lora_scale: float = 1.0, dtype: str = "auto", vae_dtype: str = "auto",
    device: str | None = None, offload: str = "none", **options,
) -> GenerationReport:
    """Load the RGBA VAE and the FLUX pipeline from paths, then fill ``output_dir`` as :func:`generate_folder` does
    (the request is checked once, before the models load).

    Args:
        model, lora, lora_scale, offload: see :func:`load_flux_pipeline`; vae: RGBA VAE folder.
        dtype: transformer/text-encoder dtype, "float32", "bfloat16", "float16" or "auto"
            (bfloat16 on CUDA, float32 on CPU); vae_dtype: RGBA VAE speed/precision policy of
            :meth:`alphavae.vae.RGBAVAE.from_pretrained` ("auto", "float32", "mixed-bf16", ...).
        device: "cuda", "cpu", ...; None = :func:`default_device`.
        options: keyword arguments of :func:`generate_folder` (n, seed, height, width, steps, ...).

    Besides the request, each record in ``generations.jsonl`` holds ``model``, ``vae`` and ``lora``
    (local paths made absolute, hub ids as given), ``lora_sha256`` (of a local LoRA's weights, so a LoRA
    retrained in place does not match), ``lora_scale`` (None without a LoRA), ``dtype`` and ``vae_dtype``
    (both resolved, never "auto"); an existing file is skipped only if these match too.
    The device, offload and batch size are not recorded: they change pixels by rounding at most.

    Raises:
        OSError, ValueError: see :func:`load_flux_pipeline`, :func:`generate_folder` and
            :meth:`alphavae.vae.RGBAVAE.from_pretrained` (the VAE loads first); ValueError also for an
            unknown dtype, for a request :func:`check_request` refuses or a ``lora_scale`` beyond float32's range
            (:func:`check_float32`), and for an ``output_dir`` equal to or inside the local ``model``, ``vae`` or
            ``lora`` folder (:func:`alphavae.io.check_output_outside_inputs`; hub ids are no folders), all before
            any model loads; OSError (NotADirectoryError) when ``output_dir`` cannot be written, and
            IsADirectoryError when its :data:`SHEET_FILE` is a folder (with ``sheet``), both checked before any
            model loads (:func:`alphavae.io.check_writable_folder`).
    """
    io.check_output_outside_inputs(output_dir, [path for path in (model, vae, lora) if path is not None])
    io.check_writable_folder(output_dir, "images")  # before any model loads
    if options.get("sheet", True):
        _check_sheet_path(Path(output_dir))
    # checked once here: _fill_folder does not repeat these checks
    check_request(prompts, **{key: options[key] for key in _REQUEST_KEYS if key in options})
    check_float32(lora_scale, "lora_scale")
    device = device or default_device()
    torch_dtype = parse_dtype("bfloat16" if device.startswith("cuda") else "float32") if dtype == "auto" \
        else parse_dtype(dtype)
    rgba_vae = RGBAVAE.from_pretrained(vae, dtype=vae_dtype, device=device)
    pipe = load_flux_pipeline(model, rgba_vae, lora=lora, lora_scale=lora_scale, dtype=torch_dtype, device=device,
                              offload=offload)
    pipe.set_progress_bar_config(disable=True)  # generate_folder shows one bar over all images
    settings = {"model": _source(model), "vae": _source(vae), "lora": None if lora is None else _source(lora),
                "lora_sha256": None if lora is None else _lora_digest(lora),
                "lora_scale": None if lora is None else lora_scale, "dtype": str(torch_dtype).removeprefix("torch."),
                "vae_dtype": resolve_policy(vae_dtype, device).name}
    return _fill_folder(pipe, rgba_vae, prompts, Path(output_dir), settings=settings, **options)


def _lora_digest(lora: str | Path) -> str | None:
    """sha256 of a local LoRA's weights: the file itself, or of a folder the digests of its ``*.safetensors``
    files in name order; None for a hub id."""
    path = Path(lora)
    if path.is_file():
        return io.sha256_file(path)
    if path.is_dir():
        digests = " ".join(io.sha256_file(file) for file in sorted(path.glob("*.safetensors")))
        return hashlib.sha256(digests.encode()).hexdigest()
    return None


def _source(path: str | Path) -> str:
    """A local path made absolute (a rerun from another folder compares equal); anything else (a hub id) as given."""
    return str(Path(path).resolve()) if Path(path).exists() else str(path)
