"""``alphavae train-lora`` and ``alphavae generate``: FLUX on RGBA latents.

Logic: :mod:`alphavae.diffusion.train` (``train_lora``) and :mod:`alphavae.diffusion.pipeline`
(``generate_from_paths``).
"""

from __future__ import annotations

import argparse
import sys

from alphavae.accel import OFFLOAD_MODES, POLICY_NAMES
from alphavae.cli import config_keys, finite_float, interruption_note, log_progress, path_text, positive_int, seed
from alphavae.diffusion.captions import DEFAULT_PROMPT, read_prompts
from alphavae.diffusion.flow import WEIGHTING_SCHEMES
from alphavae.diffusion.lora import TARGET_PRESETS

# pipeline.MAX_SIDE, MAX_STEPS, MAX_IMAGES, FLOAT32_MAX (not imported: --help loads no diffusers)
_MAX_SIDE, _MAX_STEPS, _MAX_IMAGES, _FLOAT32_MAX = 8192, 1000, 100_000, 3.4028234663852886e38

# (flags, config field, argparse options); every default is None so that only given flags override --config.
_TRAIN_FLAGS: tuple[tuple[str | tuple[str, ...], str, dict], ...] = (
    ("--model", "model", {"help": "local diffusers FLUX folder (model_index.json), or a hub id (online, or offline "
                                  "with HF_HUB_OFFLINE=1 when cached) (required, here or in --config)"}),
    ("--vae", "vae", {"help": "RGBA VAE folder (diffusers AutoencoderKL with 4 channels, from `alphavae convert` "
                              "+ fine-tuning); its latent space must be the model's (required, here or in --config)"}),
    ("--data", "data", {"type": path_text,
                        "help": "folder of RGBA images (walked recursively) or a manifest .jsonl, all its splits "
                                "unless --split (required, here or in --config)"}),
    (("-o", "--output"), "output_dir", {"dest": "output_dir", "metavar": "OUT", "type": path_text,
                          "help": "output folder (LoRA, checkpoints, validation images); not inside --data (required, "
                                  "here or in --config)"}),
    ("--split", "split", {"help": "with a manifest --data: use only this split, e.g. train (default: all)"}),
    ("--captions", "captions", {"help": "CSV/JSONL caption table (columns file_name|file|image|path|filename + "
                                        "caption|text|prompt); images it does not list (all, without it) take "
                                        "their sidecar <image stem>.txt, else --instance-prompt"}),
    ("--instance-prompt", "instance_prompt",
     {"help": f"caption of images without one (default {DEFAULT_PROMPT!r})"}),
    ("--resolution", "resolution", {"type": int,
                                    "help": f"training side in pixels, multiple of 16, at most {_MAX_SIDE} "
                                            "(default 1024)"}),
    ("--crop", "crop", {"choices": ("center", "random"), "help": "crop after short-side resize (default center)"}),
    ("--cache-latents", "cache_latents", {"action": "store_const", "const": True,
                                          "help": "encode every image once before training (needs --crop center)"}),
    ("--rank", "rank", {"type": int, "help": "LoRA rank (default 64)"}),
    ("--alpha", "alpha", {"type": finite_float, "help": "LoRA alpha; the update is scaled by alpha/rank (default 64)"}),
    ("--targets", "targets", {"choices": sorted(TARGET_PRESETS),
                              "help": "LoRA target layers: paper = the reference implementation's: attention "
                                      "q/k/v/out, add_q/k/v_proj, to_add_out, ff and ff_context of the double-stream "
                                      "blocks, attention q/k/v of the single-stream blocks (AlphaVAE Sec. 5.1); "
                                      "wide = paper + the single-stream blocks' proj_mlp and proj_out (what paper "
                                      "meant before it was narrowed to the reference's layers); attention = the "
                                      "double-stream attention layers + single-stream q/k/v and proj_out "
                                      "(default paper)"}),
    ("--optimizer", "optimizer", {"choices": ("prodigy", "adamw"), "help": "default prodigy"}),
    ("--lr", "learning_rate", {"type": finite_float,
                               "help": "learning rate (default 1.0, Prodigy's scale; ~1e-4 for adamw)"}),
    ("--lr-scheduler", "lr_scheduler", {"help": "diffusers scheduler name: constant, cosine, linear, ... "
                                                "(default constant)"}),
    ("--lr-warmup-steps", "lr_warmup_steps", {"type": int, "help": "warm-up steps (default 0)"}),
    ("--max-steps", "max_steps", {"type": int, "help": "optimizer steps (default 20000)"}),
    ("--batch-size", "batch_size", {"type": int, "help": "images per process per micro-step (default 1)"}),
    ("--grad-accum", "gradient_accumulation_steps", {"type": int, "help": "micro-steps per optimizer step (def. 1)"}),
    ("--max-grad-norm", "max_grad_norm", {"type": finite_float,
                                          "help": "gradient clipping norm, 0 = off (default 1.0)"}),
    ("--guidance", "guidance", {"type": finite_float, "help": "embedded guidance value during training (default 1)"}),
    ("--weighting-scheme", "weighting_scheme", {"choices": WEIGHTING_SCHEMES,
                                                "help": "timestep density / loss weighting (default none = uniform)"}),
    ("--logit-mean", "logit_mean", {"type": finite_float, "help": "logit_normal mean (default 0)"}),
    ("--logit-std", "logit_std", {"type": finite_float, "help": "logit_normal std (default 1)"}),
    ("--max-sequence-length", "max_sequence_length", {"type": int, "help": "T5 tokens, <= 512 (default 512)"}),
    ("--mixed-precision", "mixed_precision", {"choices": ("no", "bf16", "fp16"),
                                              "help": "frozen weights/compute dtype; LoRA stays float32 (default no, "
                                                      "exact on CPUs; the paper trains in bf16: pass bf16 on GPUs; "
                                                      "this decides, not accelerate launch's --mixed_precision)"}),
    ("--gradient-checkpointing", "gradient_checkpointing", {"action": "store_const", "const": True,
                                                            "help": "trade compute for memory"}),
    ("--seed", "seed", {"type": int, "help": "seed of LoRA init, data order, noise (default 0)"}),
    ("--checkpoint-every", "checkpoint_every", {"type": int, "help": "steps between checkpoints, 0 = end only "
                                                                     "(default 500)"}),
    ("--keep-checkpoints", "keep_checkpoints", {"type": int, "help": "newest checkpoints kept (default 3)"}),
    ("--resume", "resume", {"help": "'latest' (newest checkpoint in OUT; a fresh start if OUT has none and no "
                                    "finished LoRA) or a checkpoint folder; continues exactly where it stopped (a run that already "
                                    "reached --max-steps: nothing to train, exit 0)"}),
    ("--validation-prompt", "validation_prompts", {"action": "append", "help": "prompt rendered over a "
                                                   "checkerboard during training (repeatable)"}),
    ("--validation-every", "validation_every", {"type": int, "help": "steps between validations, 0 = end only (default 0)"}),
    ("--validation-steps", "validation_steps", {"type": int, "help": "denoising steps of validation, at most "
                                                                     f"{_MAX_STEPS} (default 28)"}),
    ("--report-to", "report_to", {"choices": ("tensorboard", "none"), "help": "default tensorboard (OUT/logs)"}),
)


def _config_keys() -> str:
    """The closing paragraph of train-lora's ``--help``: every setting of a --config file (imports the training code,
    so it is made only when the help is shown)."""
    from alphavae.diffusion.train import LoraTrainConfig

    return f"--config settings (YAML keys): {config_keys(LoraTrainConfig)}"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-lora`` and ``generate`` subcommands."""
    train = subparsers.add_parser(
        "train-lora", help="train a FLUX LoRA on RGBA latents (AlphaVAE section 5.1)",
        description="LoRA fine-tuning of a FLUX transformer on latents of an RGBA VAE with the rectified-flow "
                    "objective (diffusers' FLUX LoRA example). Defaults follow the paper's recipe (rank 64, alpha "
                    "64, Prodigy lr 1.0, 20k steps, guidance 1, 1024 px) except two: --mixed-precision defaults to no so "
                    "CPU runs are exact (pass bf16 on GPUs, the paper's setting), and the global batch is --batch-size "
                    "x --grad-accum x processes, 1 by default against the paper's 8 (e.g. 8 GPUs, or --grad-accum 8 "
                    "on one). "
                    "Multi-GPU: run under `accelerate launch`. Settings come from --config (YAML of LoraTrainConfig "
                    "fields, listed below) overridden by flags.",
        epilog=_config_keys,
    )
    train.add_argument("--config", help="YAML file of settings (the LoraTrainConfig fields listed below)")
    for flags, name, options in _TRAIN_FLAGS:
        train.add_argument(*(flags if isinstance(flags, tuple) else (flags,)), **({"dest": name} | options),
                           default=None)
    train.set_defaults(func=run_train)

    gen = subparsers.add_parser(
        "generate", help="generate transparent PNGs with FLUX + an RGBA VAE",
        description="Text-to-image with a FLUX pipeline whose latents are decoded by the RGBA VAE: writes "
                    "4-channel straight-alpha PNGs p<prompt index>-s<seed>.png (e.g. p0000-s0.png), generations.jsonl "
                    "and contact_sheet.png, a preview of the folder rebuilt whenever a run adds images (so a rerun "
                    "with a larger --n adds the new images and shows them too), built when missing and left as "
                    "it is otherwise (a folder of that name is refused before any image is made): "
                    # pipeline.SHEET_LIMIT, SHEET_TILE, SHEET_COLUMNS (not imported: --help loads no diffusers)
                    "the first 64 images recorded in generations.jsonl in prompt and seed order, shrunk to at most "
                    "256 px, 8 per row, over a checkerboard. An existing PNG is skipped when its record in "
                    "generations.jsonl shows the same request (prompt, seed, size, steps, guidance, models, dtypes); "
                    "otherwise it is left untouched and reported as refused (exit status 1). "
                    "Sizes that are not multiples of 16 are "
                    "generated at the size rounded up and centre-cropped back to the requested size.",
    )
    gen.add_argument("--model", required=True, help="local diffusers FLUX folder, or a hub id (online, or offline "
                                                    "with HF_HUB_OFFLINE=1 when cached)")
    gen.add_argument("--vae", required=True, help="RGBA VAE folder (4-channel AutoencoderKL)")
    gen.add_argument("--lora", help="LoRA folder or .safetensors from train-lora (optional)")
    gen.add_argument("--lora-scale", type=_float32, default=None, help="LoRA strength (default 1.0; needs --lora)")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="prompt (repeatable)")
    source.add_argument("--prompts-file", help="text file, one prompt per line ('#' comments)")
    gen.add_argument("--n", type=_image_count, default=1,
                     help=f"images per prompt; prompts x n at most {_MAX_IMAGES} (default 1)")
    gen.add_argument("--seed", type=seed, default=0,
                     help="base seed >= 0; image k of a prompt uses seed+k, at most 2**64 - 1 (default 0)")
    gen.add_argument("--size", default="1024x1024",
                     help=f"WIDTHxHEIGHT in pixels, each side 1 to {_MAX_SIDE} ({_MAX_SIDE}x{_MAX_SIDE} is the most "
                          "pixels alphavae reads back from an image) (default 1024x1024)")
    gen.add_argument("--steps", type=_steps, default=28,
                     help=f"denoising steps, at most {_MAX_STEPS}, FLUX's training timesteps (default 28)")
    gen.add_argument("--guidance", type=_float32, default=3.5, help="FLUX embedded guidance (default 3.5)")
    gen.add_argument("--batch-size", type=positive_int, default=1, help="images per pipeline call (default 1)")
    gen.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                     help="transformer/text-encoder dtype (default auto: bfloat16 on CUDA, float32 on CPU)")
    gen.add_argument("--vae-dtype", default="auto", choices=POLICY_NAMES,
                     help="RGBA VAE speed/precision policy (default auto: mixed-bf16 where bf16 is fast, else "
                          "float32; float32 is exact)")
    gen.add_argument("--device", help="torch device (default cuda if available, else cpu)")
    gen.add_argument("--offload", choices=OFFLOAD_MODES, default="none",
                     help="CPU offload for large models: model (whole models in turn) or sequential (layer by "
                          "layer; slowest, least memory); default none")
    gen.add_argument("--no-sheet", action="store_true",
                     help="do not write contact_sheet.png (an existing one is left as it is)")
    gen.add_argument("-o", "--output", dest="output", required=True, metavar="OUT", type=path_text,
                     help="output folder")
    gen.set_defaults(func=run_generate)


def run_train(args: argparse.Namespace) -> int:
    """Build the config (YAML, then flags), train; 0 on success, 1 if images were skipped, 2 on errors, 130 on
    Ctrl-C (one line saying which checkpoint to resume from)."""
    from alphavae.diffusion.train import LoraTrainConfig, train_lora
    from alphavae.train import NonFiniteLossError

    log_progress()
    overrides = {name: getattr(args, name) for _, name, _ in _TRAIN_FLAGS if getattr(args, name) is not None}
    try:
        config = LoraTrainConfig.from_yaml(args.config, **overrides) if args.config else LoraTrainConfig(**overrides)
    except TypeError as err:
        print(f"alphavae train-lora: error: missing settings ({err}); give --model, --vae, --data and -o",
              file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"alphavae train-lora: error: {err}", file=sys.stderr)
        return 2
    try:
        result = train_lora(config)
    except (OSError, ValueError, NonFiniteLossError) as err:
        print(f"alphavae train-lora: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alphavae train-lora: {interruption_note(config.output_dir)}", file=sys.stderr)
        return 130
    from accelerate import PartialState

    if not PartialState().is_main_process:  # the summary once, not once per process
        return 1 if result.failed_images else 0
    if not result.trained:
        print(f"nothing to train: {result.lora_dir} already reached max_steps {config.max_steps} (its LoRA and "
              "checkpoints are left as they are; a larger --max-steps continues it)")
        return 0
    print(f"wrote LoRA to {result.lora_dir}; final loss {result.losses.get(max(result.losses, default=0), 'n/a')}")
    if result.nonfinite_steps:
        print(f"alphavae train-lora: warning: {result.nonfinite_steps} step(s) skipped for a non-finite loss",
              file=sys.stderr)
    for failure in result.failed_images:
        print(f"skipped: {failure}", file=sys.stderr)
    return 1 if result.failed_images else 0


def _parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (height, width), each side in [1, 8192] (``alphavae.diffusion.pipeline.MAX_SIDE``: a larger square is
    above ``alphavae.io.DEFAULT_MAX_PIXELS``, which reading the PNGs back, e.g. for the contact sheet, enforces).

    Raises:
        ValueError: ``text`` is not two integers joined by "x", or a side is outside [1, 8192].
    """
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 1024x768 (WIDTHxHEIGHT), got {text!r}") from None
    if not (1 <= width <= _MAX_SIDE and 1 <= height <= _MAX_SIDE):
        raise ValueError(f"--size {text}: each side must be 1 to {_MAX_SIDE} pixels ({_MAX_SIDE}x{_MAX_SIDE} is the "
                         "most pixels alphavae reads back from an image)")
    return height, width


def _steps(text: str) -> int:
    """argparse ``type`` of --steps: an integer in [1, 1000] (``alphavae.diffusion.pipeline.MAX_STEPS``, FLUX's
    training timesteps; a huge count failed to allocate the sigma grid). Raises ``argparse.ArgumentTypeError``."""
    value = positive_int(text)
    if value > _MAX_STEPS:
        raise argparse.ArgumentTypeError(f"{value} is above {_MAX_STEPS}, the FLUX scheduler's training timesteps")
    return value


def _image_count(text: str) -> int:
    """argparse ``type`` of --n: an integer in [1, 100000] (``alphavae.diffusion.pipeline.MAX_IMAGES``; a huge n hung
    listing its images). Raises ``argparse.ArgumentTypeError``."""
    value = positive_int(text)
    if value > _MAX_IMAGES:
        raise argparse.ArgumentTypeError(f"{value} is above {_MAX_IMAGES}, the most images one run makes")
    return value


def _float32(text: str) -> float:
    """argparse ``type`` of --guidance and --lora-scale: a finite number float32 can hold (magnitude at most about
    3.4e38; a larger one failed every image with an overflow). Raises ``argparse.ArgumentTypeError``."""
    value = finite_float(text)
    if abs(value) > _FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is beyond float32's range (magnitude at most {_FLOAT32_MAX:.4g})")
    return value


def run_generate(args: argparse.Namespace) -> int:
    """Generate the PNGs; 0 on success, 1 if some images failed or existing files were refused, 2 on errors,
    130 on Ctrl-C (one line: what is on disk is complete)."""
    from alphavae.diffusion.pipeline import generate_from_paths

    log_progress()
    try:
        if args.lora_scale is not None and args.lora is None:
            raise ValueError("--lora-scale needs --lora (there is no LoRA to scale)")
        prompts = args.prompt or read_prompts(args.prompts_file)
        height, width = _parse_size(args.size)
        report = generate_from_paths(
            args.model, args.vae, prompts, args.output, lora=args.lora,
            lora_scale=1.0 if args.lora_scale is None else args.lora_scale, dtype=args.dtype,
            vae_dtype=args.vae_dtype, device=args.device, offload=args.offload, n=args.n, seed=args.seed,
            height=height, width=width, steps=args.steps, guidance=args.guidance, batch_size=args.batch_size,
            sheet=not args.no_sheet)
    except (OSError, ValueError) as err:
        print(f"alphavae generate: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alphavae generate: interrupted; the PNGs in {args.output} are complete and recorded in "
              "generations.jsonl: rerun the same command to make the rest", file=sys.stderr)
        return 130
    print(f"wrote {len(report.written)} image(s) to {args.output}, skipped {len(report.skipped)} existing, "
          f"{len(report.refused)} refused, {len(report.failed)} failed")
    if report.written and report.generated_size != report.requested_size:
        (gen_h, gen_w), (req_h, req_w) = report.generated_size, report.requested_size
        print(f"generated at {gen_w}x{gen_h} (FLUX needs multiples of 16), centre-cropped to {req_w}x{req_h}")
    for refusal in report.refused:
        print(f"refused: {refusal}", file=sys.stderr)
    for failure in report.failed:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if report.failed or report.refused else 0
