"""Training objective of the RGBA VAE (AlphaVAE, arXiv 2507.09308, Sec. 4.2).

Terms: alpha-blended MSE (ABMSE), LPIPS on composites, KL to N(0, I), reference KL (Ref-KL) against the
frozen source RGB VAE, PatchGAN with the VQGAN adaptive weight, and the naive 4-channel MSE of the
ablation. For 3-channel (RGB) models the alpha terms fall away: plain MSE, LPIPS on the RGB image, KL and, with
a discriminator, the PatchGAN on the raw RGB output.

Conventions: pixels are straight RGBA ``(B, 4, H, W)`` (or RGB ``(B, 3, H, W)``), all channels in [-1, 1];
alpha in [0, 1] is ``(a + 1) / 2``. **Reduction**: every term is summed over the values of each sample and
averaged over the batch (the convention the reference's weights assume: its ``RGBAVAELoss`` with
``reduce_mean=False``); functions return that scalar. Pixel terms (ABMSE, MSE) are thus sums over ``C * H * W``
values, while LPIPS is one value per image (spatially averaged by the metric) and stays that value: unlike LDM's
``LPIPSWithDiscriminator``, the reference does not spread it over the pixels, so at weight 0.5 it is small next
to a summed ABMSE. The PatchGAN term is balanced against the reconstruction term alone by the adaptive weight.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from alphavae import io

logger = logging.getLogger(__name__)

#: Per-channel E[b] of a random background in [-1, 1] (ImageNet pixel statistics; reference constants).
REFERENCE_BACKGROUND_MEAN = (-0.0357, -0.0811, -0.1797)
#: Per-channel E[b^2] of a random background in [-1, 1] (reference constants).
REFERENCE_BACKGROUND_SQUARE = (0.3163, 0.3060, 0.3634)
#: The reference's "black" LPIPS composite is ``C * alpha`` in [-1, 1], i.e. a background of 0 in
#: [-1, 1] space = sRGB 127.5 (mid-grey); its second composite is over white.
REFERENCE_LPIPS_BACKGROUNDS = ((127.5, 127.5, 127.5), "white")


def _sum_mean(per_element: torch.Tensor) -> torch.Tensor:
    """Sum over all non-batch dimensions, mean over the batch: ``(B, ...) -> ()``."""
    return per_element.flatten(1).sum(1).mean()


def abmse_terms(
    target: torch.Tensor,
    prediction: torch.Tensor,
    background_mean: Sequence[float] = REFERENCE_BACKGROUND_MEAN,
    background_square: Sequence[float] = REFERENCE_BACKGROUND_SQUARE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three per-element terms of ``abmse``: colour ``P^2``, cross ``-2 E[b] P D`` and alpha ``E[b^2] D^2``.

    ``P = C_t*a_t - C_p*a_p`` is the premultiplied colour difference and ``D = a_t - a_p`` the alpha
    difference (alpha in [0, 1]); their sum is the expected squared composite error over a background ``b``
    with per-channel mean ``E[b]`` and second moment ``E[b^2]`` (paper Sec. 4.2). Useful on its own to see
    how much of a model's composite error comes from alpha.

    Args:
        target, prediction: ``(B, 4, H, W)`` straight RGBA in [-1, 1].
        background_mean, background_square: three floats each (see ``estimate_background_moments``).

    Returns:
        ``(colour, cross, alpha)``, each ``(B, 3, H, W)``.

    Raises:
        ValueError: if either tensor does not have 4 channels or their shapes differ.
        TypeError: the tensors are not floating point (``alphavae.io.check_pixels``).
    """
    if target.shape != prediction.shape or target.shape[1] != 4:
        raise ValueError(f"abmse needs two (B, 4, H, W) tensors, got {tuple(target.shape)} and {tuple(prediction.shape)}")
    alpha_t, alpha_p = io.alpha_unit(target), io.alpha_unit(prediction)
    colour_diff = target[:, :3] * alpha_t - prediction[:, :3] * alpha_p
    alpha_diff = alpha_t - alpha_p
    mean = prediction.new_tensor(background_mean).view(1, 3, 1, 1)
    square = prediction.new_tensor(background_square).view(1, 3, 1, 1)
    return colour_diff**2, -2 * mean * colour_diff * alpha_diff, square * alpha_diff**2


def abmse(
    target: torch.Tensor,
    prediction: torch.Tensor,
    background_mean: Sequence[float] = REFERENCE_BACKGROUND_MEAN,
    background_square: Sequence[float] = REFERENCE_BACKGROUND_SQUARE,
) -> torch.Tensor:
    """Alpha-blended MSE: expected squared composite error over a random background (paper Sec. 4.2).

    With ``P = C_t*a_t - C_p*a_p`` (premultiplied colour difference) and ``D = a_t - a_p`` (alpha in
    [0, 1]), ``E_b ||P - b*D||^2 = P^2 - 2 E[b] P D + E[b^2] D^2`` per pixel and channel, for a background
    ``b`` with per-channel mean ``E[b]`` and second moment ``E[b^2]`` (in [-1, 1] space; the terms:
    ``abmse_terms``). Colour under alpha = 0 costs nothing; for opaque images it equals the RGB squared error.

    Args:
        target, prediction: ``(B, 4, H, W)`` straight RGBA in [-1, 1].
        background_mean, background_square: three floats each (see ``estimate_background_moments``).

    Returns:
        Scalar: per-sample sum over 3 channels and H*W pixels, mean over the batch.

    Raises:
        ValueError: if either tensor does not have 4 channels or their shapes differ.
        TypeError: the tensors are not floating point (``alphavae.io.check_pixels``).
    """
    colour, cross, alpha = abmse_terms(target, prediction, background_mean, background_square)
    return _sum_mean(colour + cross + alpha)


def squared_error(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Plain squared error over all channels: the naive 4-channel MSE ablation, or the RGB-stage loss.

    Args:
        target, prediction: ``(B, C, H, W)`` in [-1, 1], same shape (C = 4 treats alpha as a colour).

    Returns:
        Scalar: per-sample sum over C*H*W, mean over the batch.

    Raises:
        ValueError: on a shape mismatch.
    """
    if target.shape != prediction.shape:
        raise ValueError(f"squared_error shape mismatch: {tuple(target.shape)} vs {tuple(prediction.shape)}")
    return _sum_mean((target - prediction) ** 2)


def background_moments(images: Iterable[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel ``E[b]`` and ``E[b^2]`` over every pixel of ``images``, for ``abmse``'s background distribution.

    Images with alpha are composited over black first. The reference constants came from ImageNet pixel
    statistics the same way (paper Sec. 4.2, ``REFERENCE_BACKGROUND_MEAN``/``_SQUARE``).

    Args:
        images: tensors ``(C, H, W)`` or ``(1, C, H, W)``, RGB or straight RGBA (C = 3 or 4) in [-1, 1];
            any sizes (a generator is consumed once).

    Returns:
        ``((m_r, m_g, m_b), (s_r, s_g, s_b), images counted)``: means in [-1, 1], second moments in [0, 1].

    Raises:
        ValueError: if ``images`` is empty, or an image is not ``(C, H, W)`` / ``(1, C, H, W)`` with C = 3 or 4, or
            holds a value that is not finite or outside [-1, 1] (e.g. 0-255 pixels).
    """
    total = torch.zeros(3, dtype=torch.float64)
    total_square = torch.zeros(3, dtype=torch.float64)
    pixels = count = 0
    for image in images:
        image = image if image.dim() == 4 else image[None]
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] not in (3, 4):
            raise ValueError(f"background image {count + 1}: expected (C, H, W) or (1, C, H, W) with C = 3 or 4, "
                             f"got {tuple(image.shape)}")
        if not bool(torch.isfinite(image).all()) or float(image.abs().max()) > 1:
            raise ValueError(f"background image {count + 1}: values must be finite and in [-1, 1], got "
                             f"[{float(image.min()):.4g}, {float(image.max()):.4g}]")
        rgb = (io.composite(image, "black") if image.shape[1] == 4 else image)[0].double()
        total += rgb.sum(dim=(1, 2))
        total_square += (rgb**2).sum(dim=(1, 2))
        pixels += rgb.shape[1] * rgb.shape[2]
        count += 1
    if not count:
        raise ValueError("no background images to estimate E[b] and E[b^2] from")
    return tuple((total / pixels).tolist()), tuple((total_square / pixels).tolist()), count


def estimate_background_moments(folder_or_files: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``background_moments`` of the image files in a folder (or files), for ``LossConfig.background_mean``/``_square``.

    Args:
        folder_or_files: a folder (searched recursively, ``alphavae.io.list_images``), a file or a list of both.

    Returns:
        ``((m_r, m_g, m_b), (s_r, s_g, s_b))`` floats, means in [-1, 1], second moments in [0, 1].

    Raises:
        ValueError: if no image was found.
        FileNotFoundError: an input does not exist.
        alphavae.io.ImageLoadError: a file cannot be read (``alphavae background-moments`` skips those).
    """
    files = [path for path, _ in io.list_images(folder_or_files)]
    if not files:
        raise ValueError(f"no background images found in {folder_or_files}")
    mean, square, _ = background_moments(io.load_rgba(path) for path in files)
    return mean, square


def build_lpips(backbone_path: str | os.PathLike | None = None, *, net: str = "vgg",
                random_backbone: bool = False) -> nn.Module | None:
    """The canonical ``lpips`` network (v0.1 linear layers on a VGG16 or AlexNet backbone), frozen, or ``None``
    when no backbone weights exist.

    ``net="vgg"`` (default) is the reference training code's LPIPS: taming-transformers' ``LPIPS``, VGG16 with
    the same v0.1 linear-layer file the ``lpips`` package bundles (outputs equal, ``test_losses``). ``method.md``
    names AlexNet, the backbone of the evaluation metric; ``net="alex"`` (``loss.lpips_net: alex``) trains with
    that. ``lpips.LPIPS(pretrained=True)`` loads its linear heads from the pip package but downloads the
    backbone through torchvision, which fails offline. Here the backbone comes from ``backbone_path`` (a
    torchvision ``vgg16`` / ``alexnet`` state dict, keys ``features.N.*``) or torchvision's cache. When neither
    exists, a warning is logged and ``None`` is returned: the LPIPS term is disabled, never run with random weights.

    Args:
        backbone_path: local torchvision state dict (``.pth``) of the backbone; ``None`` looks in torchvision's
            cache (``alphavae.eval.networks.LPIPS_BACKBONES``: ``vgg16-397923af.pth``, ``alexnet-owt-7be5be79.pth``).
        net: ``"vgg"`` (VGG16, the reference) or ``"alex"`` (AlexNet).
        random_backbone: use a randomly initialised backbone on purpose (tests only).

    Returns:
        ``lpips.LPIPS`` in eval mode with ``requires_grad=False`` (inputs RGB in [-1, 1]), or ``None``.

    Raises:
        FileNotFoundError: if ``backbone_path`` is given but is not a file (missing, or a folder).
        ValueError: ``net`` is neither "vgg" nor "alex", or the file is not a torch state dict, or holds
            neither ``net``'s torchvision weights nor a full ``lpips.LPIPS`` state dict of it; one line naming the
            file and ``loss.lpips_net`` (``alphavae.eval.networks.build_lpips`` loads it, ``lpips_network``
            builds the network).
    """
    from alphavae.eval.networks import LPIPS_BACKBONES, NetworkUnavailable, hub_checkpoint, lpips_network
    from alphavae.eval.networks import build_lpips as load_lpips_weights

    if net not in LPIPS_BACKBONES:
        raise ValueError(f"loss.lpips_net must be one of {', '.join(LPIPS_BACKBONES)}, got {net!r}")
    if backbone_path is not None and not Path(backbone_path).is_file():
        raise FileNotFoundError(f"LPIPS backbone weights not found: {backbone_path}")
    path = Path(backbone_path) if backbone_path is not None else hub_checkpoint(LPIPS_BACKBONES[net])
    name = {"vgg": "vgg16", "alex": "alexnet"}[net]
    if not random_backbone and not path.is_file():
        logger.warning(
            "LPIPS disabled: no %s backbone weights (looked for %s); to enable the LPIPS term, give a torchvision "
            "%s state dict with --set loss.lpips_backbone_path=PATH (LossConfig.lpips_backbone_path) or put it in "
            "that cache (loss.lpips_net picks the backbone: vgg, as the reference, or alex)", name, path, name)
        return None
    if random_backbone:
        return lpips_network(None, net)
    try:
        return load_lpips_weights(path, net)
    except NetworkUnavailable as err:
        raise ValueError(f"{err} (loss.lpips_net {net!r} needs torchvision {name} weights)") from None


def composite_lpips(metric: nn.Module, target: torch.Tensor, prediction: torch.Tensor, backgrounds: Sequence) -> torch.Tensor:
    """LPIPS between composites of target and prediction, averaged over backgrounds (paper Sec. 4.2).

    Args:
        metric: from ``build_lpips``.
        target, prediction: ``(B, 4, H, W)`` straight RGBA in [-1, 1], or ``(B, 3, H, W)`` RGB (compared
            directly, ``backgrounds`` unused).
        backgrounds: anything ``alphavae.io.composite`` accepts (name, (r, g, b) in 0-255, tensor);
            ``REFERENCE_LPIPS_BACKGROUNDS`` reproduces the reference (mid-grey and white).

    Returns:
        Scalar: the per-image LPIPS (one value per image) averaged over backgrounds and batch, as the reference's
        ``RGBAVAELoss.perceptual_loss`` (no factor of ``3 * H * W``; module docstring).

    Raises:
        ValueError: from ``alphavae.io.composite`` for a background it cannot read.
        RuntimeError: from the backbone for images smaller than 16 px (VGG16) or 31 px (AlexNet) on a side
            (``alphavae.eval.networks.LPIPS_MIN_SIZES``: its pooling stages leave no pixels).
    """
    if target.shape[1] == 3:
        return metric(target, prediction).mean()
    values = [metric(io.composite(target, bg), io.composite(prediction, bg)).mean() for bg in backgrounds]
    return torch.stack(values).mean()


def kl_divergence(posterior: DiagonalGaussianDistribution, reference: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
    """KL(posterior || reference), or KL(posterior || N(0, I)) when ``reference`` is None (diffusers ``.kl``).

    The normal KL of LDM/the paper (Sec. 4.2, weight 1e-6) and, with a reference, Ref-KL (Sec. 4.2).

    Args:
        posterior: diagonal Gaussian over latents ``(B, latent_channels, h, w)`` (``parameters``: mean and
            log-variance concatenated, ``(B, 2 * latent_channels, h, w)``).
        reference: a posterior of the same shape (the frozen source VAE's), or ``None`` for N(0, I).

    Returns:
        Scalar >= 0: per-sample sum over latent elements, mean over the batch (nats).

    Raises:
        RuntimeError: from torch when the two posteriors' shapes do not broadcast.
    """
    return posterior.kl(reference).mean()


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator: ``(mean(relu(1 - real)) + mean(relu(1 + fake))) / 2``.

    Source: VQGAN's ``hinge_d_loss`` (Esser et al. 2021), as used by LDM.

    Args:
        logits_real: discriminator logits on real images, any shape (``PatchDiscriminator``: ``(B, 1, h, w)``).
        logits_fake: logits on reconstructions, any shape (need not match ``logits_real``).

    Returns:
        Scalar (0-dim) tensor >= 0, with each term averaged over all of its elements; 0 once every real
        logit is >= 1 and every fake logit <= -1.
    """
    return (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()) / 2


class PatchDiscriminator(nn.Sequential):
    """PatchGAN discriminator (pix2pix ``NLayerDiscriminator``, as used by VQGAN/LDM and the paper).

    Conv 4x4 stride 2 + LeakyReLU(0.2), then ``layers`` blocks of conv + BatchNorm + LeakyReLU with
    channels doubling up to 8x (the last block stride 1), then a 1-channel conv: per-patch logits.

    Args:
        in_channels: 4 (raw RGBA) or 3 (composites / RGB models).
        channels: width of the first layer.
        layers: number of conv+norm blocks (3 in the paper).

    Input ``(B, in_channels, H, W)`` in [-1, 1]; output ``(B, 1, h, w)`` logits (h, w about H/8 - 2 with 3
    layers). Smaller inputs leave no output pixel and raise RuntimeError: H, W >= 24 with the default 3 layers.
    """

    def __init__(self, in_channels: int = 4, channels: int = 64, layers: int = 3):
        modules: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = channels
        for n in range(1, layers + 1):
            out = channels * min(2**n, 8)
            modules += [nn.Conv2d(width, out, 4, 2 if n < layers else 1, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            width = out
        modules.append(nn.Conv2d(width, 1, 4, 1, 1))
        super().__init__(*modules)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN adaptive weight ``||grad L_rec|| / (||grad L_G|| + 1e-4)`` at ``last_layer``, clamped [0, max_weight].

    Source: Esser et al. 2021 (VQGAN), Eq. 7; the paper uses ``decoder.conv_out.weight``.

    Args:
        rec_loss: scalar reconstruction term (weighted ABMSE or MSE; LPIPS is not in it, as in the reference's
            ``generator_loss``), with its graph to ``last_layer``.
        gan_loss: scalar generator GAN loss, with its graph to ``last_layer``.
        last_layer: the parameter both gradients are taken at, e.g. ``(3 or 4, C, 3, 3)`` ``conv_out.weight``.
        max_weight: upper clamp of the ratio.

    Returns:
        Detached scalar (0-dim) tensor in ``[0, max_weight]``. Both graphs are retained.

    Raises:
        RuntimeError: from ``torch.autograd.grad`` if either loss does not depend on ``last_layer``.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


@dataclasses.dataclass
class LossConfig:
    """Weights and constants of the objective; defaults are the paper's main setting (``vae_main.yaml``).

    Attributes:
        reconstruction: ``"abmse"`` (paper) or ``"mse"`` (naive per-channel MSE; RGB models always use it).
        reconstruction_weight: weight of the reconstruction term.
        background_mean, background_square: ABMSE moments E[b], E[b^2] per channel (r, g, b) of backgrounds
            in [-1, 1]: each mean in [-1, 1], each second moment in [mean^2, 1] (a variance is not negative).
        lpips_weight: weight of composite LPIPS (0.5); 0 disables it.
        lpips_backgrounds: composite backgrounds (names or 0-255 triples); default = reference (mid-grey,
            white).
        lpips_net: LPIPS backbone, ``"vgg"`` (VGG16: the reference code's LPIPS, taming-transformers) or
            ``"alex"`` (AlexNet, which ``method.md`` names and the evaluation metric uses).
        lpips_backbone_path: torchvision state dict of that backbone; ``None`` = torchvision cache or disabled.
        kl_weight: weight of KL to N(0, I) (1e-6).
        ref_kl_weight: weight of Ref-KL (1e-16).
        ref_kl_inert_below: Ref-KL is skipped when its weight is <= this (see ``Objective``).
        force_ref_kl: compute Ref-KL even when its weight is inert (never at weight 0).
        gan_weight: factor on the adaptive weight of the GAN term (1: the reference applies the adaptive weight
            alone; LDM's configs use 0.5).
        gan_start: first optimiser step with the GAN term and discriminator updates (4000).
        disc_input: ``"rgba"`` (paper: raw 4 channels) or ``"composite"`` (alpha-aware: both images over the
            same random solid background per sample).
        disc_channels, disc_layers: PatchGAN width and depth.

    Raises:
        ValueError: if ``reconstruction`` is not ``"abmse"``/``"mse"``, ``disc_input`` is not
            ``"rgba"``/``"composite"``, ``lpips_net`` is not ``"vgg"``/``"alex"``, or ``lpips_backgrounds`` is
            empty or holds something other than a name
            of ``alphavae.io.BACKGROUNDS``, ``"checkerboard"``, an (r, g, b) triple in 0-255 or a tensor (stored
            as a tuple); or ``background_mean`` / ``background_square`` is not three numbers, a mean is outside
            [-1, 1], a second moment outside [0, 1], or a second moment is below its channel's squared mean (a
            negative variance makes ABMSE unbounded below; 2e-6 of rounding is allowed).
    """

    reconstruction: str = "abmse"
    reconstruction_weight: float = 1.0
    background_mean: tuple[float, float, float] = REFERENCE_BACKGROUND_MEAN
    background_square: tuple[float, float, float] = REFERENCE_BACKGROUND_SQUARE
    lpips_weight: float = 0.5
    lpips_backgrounds: tuple = REFERENCE_LPIPS_BACKGROUNDS
    lpips_net: str = "vgg"
    lpips_backbone_path: str | None = None
    kl_weight: float = 1e-6
    ref_kl_weight: float = 1e-16
    ref_kl_inert_below: float = 1e-12
    force_ref_kl: bool = False
    gan_weight: float = 1.0
    gan_start: int = 4000
    disc_input: str = "rgba"
    disc_channels: int = 64
    disc_layers: int = 3

    def __post_init__(self):
        if self.reconstruction not in ("abmse", "mse"):
            raise ValueError(f"loss.reconstruction must be 'abmse' or 'mse', got {self.reconstruction!r}")
        if self.disc_input not in ("rgba", "composite"):
            raise ValueError(f"loss.disc_input must be 'rgba' or 'composite', got {self.disc_input!r}")
        if self.lpips_net not in ("vgg", "alex"):
            raise ValueError(f"loss.lpips_net must be 'vgg' or 'alex', got {self.lpips_net!r}")
        self.lpips_backgrounds = _lpips_backgrounds(self.lpips_backgrounds)
        for name in ("background_mean", "background_square"):
            values = getattr(self, name)
            if isinstance(values, str) or not isinstance(values, (list, tuple)) or len(values) != 3:
                raise ValueError(f"loss.{name} must be three numbers (r, g, b), got {values!r}")
        # Every pair with E[b] in [-1, 1] and E[b]^2 <= E[b^2] <= 1 is reached by some background distribution in
        # [-1, 1]; below E[b]^2 (a negative variance) ABMSE is unbounded below. 2e-6 of slack covers rounding, e.g.
        # the 6 significant digits `alphavae background-moments` prints for one-colour backgrounds (variance 0).
        for channel, colour in enumerate(("red", "green", "blue")):
            mean, square = self.background_mean[channel], self.background_square[channel]
            where = f"for channel {channel} ({colour})"
            if not -1 <= mean <= 1:
                raise ValueError(f"loss.background_mean must be in [-1, 1] (E[b] of backgrounds in [-1, 1]), "
                                 f"got {mean!r} {where}")
            if not 0 <= square <= 1:
                raise ValueError(f"loss.background_square must be in [0, 1] (E[b^2] of backgrounds in [-1, 1]), "
                                 f"got {square!r} {where}")
            if not square >= mean * mean - 2e-6:
                raise ValueError(f"loss.background_square must be >= loss.background_mean squared (a variance "
                                 f"cannot be negative), got {square!r} < {mean!r}^2 = {mean * mean:.6g} {where}")


def _lpips_backgrounds(value) -> tuple:
    """``loss.lpips_backgrounds`` as a non-empty tuple of what ``io.composite`` takes: names of
    ``io.BACKGROUNDS`` or ``"checkerboard"``, ``(r, g, b)`` float triples in 0-255, or (from Python) ``(3, H, W)``
    tensors; raises ValueError naming the bad entry."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"loss.lpips_backgrounds must be a non-empty list of background names or [r, g, b] "
                         f"triples in 0-255, got {value!r}")
    checked = []
    for entry in value:
        if (isinstance(entry, str) and (entry in io.BACKGROUNDS or entry == "checkerboard")) or isinstance(entry, torch.Tensor):
            checked.append(entry)
        elif (isinstance(entry, (list, tuple)) and len(entry) == 3
              and all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 255 for c in entry)):
            checked.append(tuple(float(c) for c in entry))
        else:
            raise ValueError(f"loss.lpips_backgrounds: {entry!r} is neither one of {', '.join(io.BACKGROUNDS)}, "
                             "checkerboard nor an [r, g, b] triple in 0-255")
    return tuple(checked)


_NEEDS_BACKGROUNDS = "loss.disc_input 'composite' needs per-sample backgrounds (B, 3) in [-1, 1]"


class AutoencoderForward(nn.Module):
    """The trainable forward pass as one module, so DDP / accelerate see a single ``forward`` call.

    Args:
        vae: a diffusers ``AutoencoderKL`` (or anything with the same ``encode``/``decode`` outputs).
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, noise: torch.Tensor, extra: torch.Tensor | None = None):
        """Encode, sample the posterior with the given noise, decode; optionally encode a second batch.

        Args:
            pixels: ``(B, C, H, W)`` in [-1, 1] (C = the VAE's input channels; RGBA is straight alpha).
            noise: ``(B, latent_channels, H/f, W/f)`` standard normal (f = the VAE's downsampling factor,
                8 for the FLUX/SD layout); ``z = mean + std * noise``, cast to the posterior's dtype.
            extra: ``(N, C, H', W')`` in [-1, 1] to encode only (Ref-KL: the ``2B`` opaque composites), or ``None``.

        Returns:
            ``(reconstruction, moments, extra_moments)``: the decoder output ``(B, C, H, W)`` (unclamped,
            nominally [-1, 1], in the VAE's or autocast's dtype); the posterior's mean and log-variance
            concatenated on dim 1, ``(B, 2 * latent_channels, H/f, W/f)`` (diffusers
            ``DiagonalGaussianDistribution.parameters``); the same for ``extra``, ``(N, 2 * latent_channels,
            H'/f, W'/f)``, or ``None``.
        """
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.mean + posterior.std * noise.to(posterior.mean.dtype)
        reconstruction = self.vae.decode(latents).sample
        extra_moments = None if extra is None else self.vae.encode(extra).latent_dist.parameters
        return reconstruction, posterior.parameters, extra_moments


class Objective(nn.Module):
    """The AlphaVAE objective built from a ``LossConfig``; computes only the terms that are active.

    Inactive terms cost nothing: LPIPS is skipped at weight 0 or without backbone weights; KL at weight 0;
    the GAN before ``gan_start`` or at weight 0. **Ref-KL** (two composite encodes by the trained model and
    two by the frozen reference) runs only when ``ref_kl_weight > ref_kl_inert_below``, or ``ref_kl_weight > 0``
    with ``force_ref_kl``.
    Why a weight of 1e-16 is treated as inert by default: a term only reaches fp32 parameters through its
    gradient, which is added to the other terms' gradient; fp32 addition drops a summand below half an ulp
    (about 6e-8 relative) of the total, and a ``1e-16``-weighted KL gradient is many orders of magnitude under
    that. Where the other gradient is exactly 0 (attention key biases) a ~1e-25 gradient survives, but the
    AdamW step it causes (~lr * 1e-17) is far below the ulp of the parameter. Measured on a tiny model
    (``test_losses``): parameters after an AdamW step are bitwise equal with and without the term (the paper's
    ablation: +-0.05 dB). Set ``force_ref_kl`` to compute it anyway, as the reference code does.

    Args:
        config: the loss configuration.
        in_channels: 4 (RGBA) or 3 (RGB stage: plain MSE instead of ABMSE, LPIPS on the RGB image, KL, no
            Ref-KL; the GAN still runs when a ``discriminator`` is given, on the raw RGB output).
        reference_vae: frozen source RGB ``AutoencoderKL`` (3-channel input) for Ref-KL, or ``None``.
        lpips_metric: from ``build_lpips``; ``None`` disables LPIPS (built from the config when omitted).
        discriminator: a ``PatchDiscriminator`` or ``None`` (then the GAN term is off).

    Raises:
        ValueError: if Ref-KL is active but no reference model is given.
        FileNotFoundError, ValueError: ``lpips_metric`` is omitted, ``lpips_weight > 0`` and
            ``config.lpips_backbone_path`` names a file that does not exist or cannot be loaded
            (:func:`build_lpips`; no path and no cached backbone only disables LPIPS, with a warning).
    """

    def __init__(self, config: LossConfig, *, in_channels: int = 4, reference_vae: nn.Module | None = None,
                 lpips_metric: nn.Module | None | str = "from_config", discriminator: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.in_channels = in_channels
        if lpips_metric == "from_config":
            lpips_metric = (build_lpips(config.lpips_backbone_path, net=config.lpips_net)
                            if config.lpips_weight > 0 else None)
        self.lpips = lpips_metric
        self.use_ref_kl = in_channels == 4 and config.ref_kl_weight > 0 and (
            config.force_ref_kl or config.ref_kl_weight > config.ref_kl_inert_below)
        if self.use_ref_kl and reference_vae is None:
            raise ValueError("Ref-KL is active (loss.ref_kl_weight) but no reference RGB VAE was given")
        self.reference_vae = reference_vae.eval().requires_grad_(False) if self.use_ref_kl else None
        self.discriminator = discriminator if config.gan_weight > 0 else None

    def gan_active(self, step: int) -> bool:
        """Whether the GAN term and discriminator updates are on at optimiser step ``step`` (0-based)."""
        return self.discriminator is not None and step >= self.config.gan_start

    def _visible(self, pixels: torch.Tensor) -> torch.Tensor:
        """RGBA with the colour under alpha = 0 set to -1 (``io.clear_hidden_colour``), as ``RGBAVAE`` encodes it:
        inputs that look the same give the same losses. RGB pixels are returned as they are."""
        return io.clear_hidden_colour(pixels) if self.in_channels == 4 else pixels

    def _reconstruction(self, target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 4 and self.config.reconstruction == "abmse":
            return abmse(target, prediction, self.config.background_mean, self.config.background_square)
        return squared_error(target, prediction)

    def _disc_view(self, pixels: torch.Tensor, backgrounds: torch.Tensor | None) -> torch.Tensor:
        """What the discriminator sees: raw pixels, or composites over per-sample backgrounds ``(B, 3)``."""
        if self.in_channels == 3 or self.config.disc_input == "rgba":
            return pixels
        if backgrounds is None:
            raise ValueError(_NEEDS_BACKGROUNDS)
        return io.composite(pixels, backgrounds.to(pixels)[:, :, None, None].expand(-1, -1, *pixels.shape[-2:]))

    def _ref_kl(self, model: Callable, pixels: torch.Tensor, noise: torch.Tensor):
        composites = torch.cat([io.composite(pixels, "black"), io.composite(pixels, "white")])
        opaque = torch.cat([composites, torch.ones_like(composites[:, :1])], dim=1)
        reconstruction, moments, new_moments = model(pixels, noise, opaque)
        with torch.no_grad():
            reference = self.reference_vae.encode(composites.to(self.reference_vae.dtype)).latent_dist
        ref_kl = kl_divergence(DiagonalGaussianDistribution(new_moments.float()),
                               DiagonalGaussianDistribution(reference.parameters.float()))
        return reconstruction, moments, ref_kl

    def generator_loss(self, model: Callable, pixels: torch.Tensor, noise: torch.Tensor, *, step: int,
                       last_layer: torch.Tensor | None = None, backgrounds: torch.Tensor | None = None):
        """Run the autoencoder on a batch and return its weighted loss.

        RGBA inputs and targets have their hidden colour cleared first (see ``_visible``).

        Args:
            model: an ``AutoencoderForward`` (possibly wrapped by DDP / accelerate).
            pixels: ``(B, in_channels, H, W)`` in [-1, 1].
            noise: ``(B, latent_channels, H/f, W/f)`` standard normal for posterior sampling.
            step: optimiser step (0-based), for the GAN start.
            last_layer: ``decoder.conv_out.weight`` for the adaptive weight (needed when the GAN is active).
            backgrounds: ``(B, 3)`` in [-1, 1], solid backgrounds for ``disc_input="composite"``.

        Returns:
            ``(loss scalar, {term name: float}, reconstruction (B, C, H, W) float32, unclamped)``; logged terms
            are unweighted (``lpips`` per image), ``loss`` is the weighted total.

        Raises:
            ValueError: the GAN is active at ``step`` and ``last_layer`` is ``None``, or (RGBA) it is active,
                ``disc_input`` is ``"composite"`` and ``backgrounds`` is ``None``.
        """
        cfg = self.config
        if self.gan_active(step) and last_layer is None:
            raise ValueError(f"the GAN term is active at step {step}: pass last_layer (decoder.conv_out.weight)")
        if self.gan_active(step) and self.in_channels == 4 and cfg.disc_input == "composite" and backgrounds is None:
            raise ValueError(_NEEDS_BACKGROUNDS)
        logs: dict[str, float] = {}
        pixels = self._visible(pixels)
        if self.use_ref_kl:
            reconstruction, moments, ref_kl = self._ref_kl(model, pixels, noise)
        else:
            reconstruction, moments, _ = model(pixels, noise)
        reconstruction = reconstruction.float()
        rec = self._reconstruction(pixels, reconstruction)
        logs[cfg.reconstruction if self.in_channels == 4 else "mse"] = rec.item()
        rec = cfg.reconstruction_weight * rec
        loss = rec
        if self.lpips is not None and cfg.lpips_weight > 0:
            perceptual = composite_lpips(self.lpips, pixels, reconstruction, cfg.lpips_backgrounds)
            logs["lpips"] = perceptual.item()
            loss = loss + cfg.lpips_weight * perceptual
        if cfg.kl_weight > 0:
            kl = kl_divergence(DiagonalGaussianDistribution(moments.float()))
            logs["kl"] = kl.item()
            loss = loss + cfg.kl_weight * kl
        if self.use_ref_kl:
            logs["ref_kl"] = ref_kl.item()
            loss = loss + cfg.ref_kl_weight * ref_kl
        if self.gan_active(step):
            self.discriminator.requires_grad_(False)
            gan = -self.discriminator(self._disc_view(reconstruction, backgrounds)).float().mean()
            self.discriminator.requires_grad_(True)
            weight = adaptive_gan_weight(rec, gan, last_layer)
            logs.update(gan=gan.item(), gan_adaptive_weight=weight.item())
            loss = loss + cfg.gan_weight * weight * gan
        logs["loss"] = loss.item()
        return loss, logs, reconstruction

    def discriminator_loss(self, discriminator: Callable, pixels: torch.Tensor, reconstruction: torch.Tensor,
                           backgrounds: torch.Tensor | None = None):
        """Hinge loss of the discriminator on real ``pixels`` vs detached ``reconstruction``.

        Args:
            discriminator: the (possibly DDP-wrapped) ``PatchDiscriminator``.
            pixels, reconstruction: ``(B, C, H, W)`` in [-1, 1].
            backgrounds: ``(B, 3)`` in [-1, 1] for ``disc_input="composite"``.

        Returns:
            ``(loss scalar, {"disc": float, "logits_real": float, "logits_fake": float})``.

        Raises:
            ValueError: (RGBA) ``disc_input`` is ``"composite"`` and ``backgrounds`` is ``None``.
        """
        real = discriminator(self._disc_view(self._visible(pixels), backgrounds)).float()
        fake = discriminator(self._disc_view(reconstruction.detach(), backgrounds)).float()
        loss = hinge_discriminator_loss(real, fake)
        return loss, {"disc": loss.item(), "logits_real": real.mean().item(), "logits_fake": fake.mean().item()}
