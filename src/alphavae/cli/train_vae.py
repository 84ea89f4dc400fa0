"""``alphavae train-vae``: fine-tune an RGBA VAE with the AlphaVAE objective. Logic: ``alphavae.train``."""

from __future__ import annotations

import argparse
import sys

from alphavae.cli import path_text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-vae`` subcommand."""
    from alphavae.configs import shipped_configs

    parser = subparsers.add_parser(
        "train-vae",
        help="fine-tune (or train from scratch) an RGBA VAE with the AlphaVAE objective",
        description="Train a diffusers AutoencoderKL with ABMSE, composite LPIPS, KL, Ref-KL and PatchGAN "
                    "(AlphaVAE, arXiv 2507.09308, Sec. 4-5) on accelerate: CPU, one GPU, or "
                    "'accelerate launch --num_processes N $(which alphavae) train-vae ...' (several CPU processes: "
                    "'ACCELERATE_USE_CPU=true torchrun --nproc_per_node N $(which alphavae) train-vae ...'). Writes RUN_DIR/config.yaml "
                    "(resolved), checkpoints/, validation/ (grids and metrics.jsonl: PSNR over checkerboard, black and white), TensorBoard "
                    "logs, history.jsonl and final/ (diffusers save_pretrained, safetensors). mixed_precision fp16 "
                    "(GPUs) is refused while the PatchGAN trains (loss.gan_weight > 0): its discriminator and the "
                    "autoencoder would share one gradient scaler; use bf16 or no (float32).",
        epilog=_config_keys,
    )
    parser.add_argument("--config", default="vae_main",
                        help=f"shipped config name ({', '.join(shipped_configs())}) or a YAML path (default vae_main)")
    parser.add_argument("--data", type=path_text,
                        help="image folder or manifest.jsonl (sets data.source; a folder holds out its "
                             "last data.val_count images for validation)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--vae", help="diffusers AutoencoderKL folder: RGBA, or RGB (converted on the fly and "
                                      "used as the Ref-KL reference) (sets model.vae)")
    source.add_argument("--init-config", help="diffusers config.json to train from scratch (sets model.init_config)")
    parser.add_argument("--ref-vae", help="RGB VAE folder for Ref-KL when --vae is already RGBA (sets model.ref_vae)")
    parser.add_argument("-o", "--output", required=True, metavar="RUN_DIR", type=path_text,
                        help="run folder (outside the data folder; it must not hold the data, manifest or models)")
    parser.add_argument("--resume", metavar="latest|CHECKPOINT",
                        help="continue from the newest checkpoint of RUN_DIR ('latest'; a fresh start if it has none and no "
                             "final/; one that reached optim.max_steps and exported final/: nothing to train) "
                             "or from a checkpoint folder; restores model, optimisers, scheduler, "
                             "discriminator, EMA, RNG states, step and data position; settings changed since "
                             "apply from there on (optim.lr, betas, weight_decay, eps, disc_lr, disc_scheduler and "
                             "ema_decay too; "
                             "switching the EMA on or off, or the PatchGAN on, or changing its architecture, is "
                             "refused)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (settings listed below), YAML syntax, repeatable, e.g. "
                             "--set loss.kl_weight=0 --set optim.max_steps=1000 --set data.size=512 "
                             "--set mixed_precision=bf16")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(func=run)


def _config_keys() -> str:
    """The closing paragraph of ``--help``: every setting of a config (imports the training code, so it is made only
    when the help is shown)."""
    from alphavae.cli import config_keys
    from alphavae.train import TrainConfig

    return f"config settings (YAML keys; SECTION.KEY for --set): {config_keys(TrainConfig)}"


def run(args: argparse.Namespace) -> int:
    """Resolve the config, run ``train_vae``; 1 if unreadable images were left out, 2 on a configuration/data
    error or divergence, 130 on Ctrl-C (one line saying which checkpoint to resume from); 0 with one line saying so
    when a resumed run had nothing to train (it had reached optim.max_steps and exported final/)."""
    import yaml
    from accelerate import PartialState

    from alphavae.cli import interruption_note, log_progress
    from alphavae.eval.report import counted
    from alphavae.train import NonFiniteLossError, load_config, train_vae

    log_progress()
    try:
        config = load_config(args.config, args.overrides)
        for section, key, value in (("data", "source", args.data), ("model", "vae", args.vae),
                                    ("model", "init_config", args.init_config), ("model", "ref_vae", args.ref_vae)):
            if value is not None:
                setattr(getattr(config, section), key, value)
        if args.print_config:
            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return 0
        result = train_vae(config, args.output, resume=args.resume)
    except KeyboardInterrupt:
        print(f"alphavae train-vae: {interruption_note(args.output)}", file=sys.stderr)
        return 130
    except NonFiniteLossError as err:
        print(f"alphavae train-vae: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"alphavae train-vae: error: {err}", file=sys.stderr)
        return 2
    if not PartialState().is_main_process:  # the summary once, not once per process
        return 1 if result.failed_images else 0
    if not result.trained:
        print(f"nothing to train: {args.output} already reached optim.max_steps {result.step} (its final/ and "
              "checkpoints are left as they are; a larger optim.max_steps continues it)")
        return 0
    first, last = result.start_step + 1, result.step
    span = f"step {last}" if first == last else f"steps {first}-{last}"
    resumed = f", {span}, resumed from step {result.start_step}" if result.start_step and last >= first else ""
    print(f"trained {counted(result.step - result.start_step, 'step')} ({result.skipped_steps} skipped as "
          f"non-finite{resumed}); model in {result.final_dir}")
    if result.failed_images:
        print(f"alphavae train-vae: {len(result.failed_images)} unreadable image(s) left out:", file=sys.stderr)
        for failure in result.failed_images:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0
