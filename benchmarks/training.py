"""Training-step benchmark: this project's step vs a reference-style step, same model, batch and objective.

Both steps run ``alphavae.losses.Objective`` with the paper's weights (ABMSE 1, composite LPIPS 0.5 with a
random AlexNet backbone, KL 1e-6, Ref-KL 1e-16, PatchGAN active: step = ``gan_start``) and then an AdamW
update, on two identical copies of a FLUX-size RGBA VAE (random weights), float32. The difference:

- "project": Ref-KL weight 1e-16 is below ``ref_kl_inert_below`` (1e-12), so the step encodes the batch once
  and never runs the frozen reference encoder;
- "reference": ``force_ref_kl=True``, as in the reference code: the batch plus its composites over black and
  white are encoded every step (3x the batch), and the frozen RGB reference encoder runs on the composites.

The first (untimed) step of each gives the loss check: the two loss values must be equal in float32,
because a 1e-16-weighted term is below half an ulp of the total.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from alphavae.losses import AutoencoderForward, LossConfig, Objective, PatchDiscriminator, build_lpips
from alphavae.testing import real_vae_config
from benchmarks.common import alternate, count_flops, flux_rgba_vae, fresh_copy, real_images

TARGET_SPEEDUP = 1.8


def _step_fn(objective: Objective, model: AutoencoderKL, pixels: torch.Tensor, noise: torch.Tensor, losses: list,
             autocast: torch.dtype | None):
    """One optimiser step as a closure (under ``torch.autocast`` if ``autocast``); appends the loss to ``losses``."""
    forward = AutoencoderForward(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.5, 0.9))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(pixels.device.type, dtype=autocast, enabled=autocast is not None):
            loss, _, _ = objective.generator_loss(forward, pixels, noise, step=objective.config.gan_start,
                                                  last_layer=model.decoder.conv_out.weight)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())  # .item() waits for the device, so timings include the whole step

    return step


def run(side: int, batch: int, repeats: int, *, device: str = "cpu", autocast: torch.dtype | None = None,
        lpips: bool = True) -> dict:
    """Time both steps at ``batch`` real images of ``side`` px; return a JSON-ready dict.

    Args:
        device: where everything runs; autocast: e.g. ``torch.bfloat16`` for mixed-precision training
            (weights stay float32), None = float32; lpips: include the composite LPIPS term (needs ``lpips``).
    """
    model = flux_rgba_vae().to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        reference_vae = AutoencoderKL.from_config(real_vae_config("flux")).eval().to(device)
        discriminator = PatchDiscriminator().to(device)
    lpips_metric = build_lpips(random_backbone=True, net="alex").to(device) if lpips else None  # as measured
    pixels = real_images(batch, side).to(device)
    noise = torch.randn(batch, model.config.latent_channels, side // 8, side // 8,
                        generator=torch.Generator().manual_seed(0)).to(device)
    losses = {"project": [], "reference": []}
    steps = {
        "project": _step_fn(Objective(LossConfig(), lpips_metric=lpips_metric, discriminator=discriminator),
                            fresh_copy(model), pixels, noise, losses["project"], autocast),
        "reference": _step_fn(Objective(LossConfig(force_ref_kl=True), reference_vae=reference_vae,
                                        lpips_metric=lpips_metric, discriminator=discriminator),
                              model, pixels, noise, losses["reference"], autocast),
    }
    stats = alternate(steps, repeats)
    flops = {name: count_flops(fn) for name, fn in steps.items()}
    first = {name: values[0] for name, values in losses.items()}
    speedup = stats["reference"]["median_s"] / stats["project"]["median_s"]
    return {"side": side, "batch": batch, "device": device, "autocast": str(autocast), "lpips": lpips, "impls": stats, "flops": flops, "speedup": speedup,
            "first_loss": first, "loss_equal": first["project"] == first["reference"],
            "gflops": {name: flops[name] / stats[name]["median_s"] / 1e9 for name in stats},
            "targets_met": {"speedup": speedup >= TARGET_SPEEDUP, "loss_equal": first["project"] == first["reference"]}}


def table(result: dict) -> str:
    """Markdown table of :func:`run`'s result."""
    lines = [f"Training step (objective with paper weights, GAN on, LPIPS {'on' if result['lpips'] else 'off'}, "
             f"AdamW), FLUX-size, batch {result['batch']} at {result['side']}², {result['device']}, "
             f"autocast {result['autocast']}", "",
             "| step | median s | TFLOP | GFLOP/s | peak RSS MiB | first loss |", "|---|---|---|---|---|---|"]
    for name in ("reference", "project"):
        entry = result["impls"][name]
        lines.append(f"| {name} | {entry['median_s']:.2f} | {result['flops'][name] / 1e12:.3f} | "
                     f"{result['gflops'][name]:.0f} | {entry['peak_rss_mb']:.0f} | {result['first_loss'][name]:.9g} |")
    lines += ["", f"Speedup {result['speedup']:.2f}× (target ≥ {TARGET_SPEEDUP}×); first-step losses equal: "
                  f"{result['loss_equal']}."]
    return "\n".join(lines)
