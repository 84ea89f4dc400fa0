"""Tests of alphavae.losses: ABMSE closed form, composite LPIPS, KL / Ref-KL, PatchGAN, Objective."""

import logging

import pytest
import torch

from alphavae import io, losses
from alphavae.losses import AutoencoderForward, LossConfig, Objective
from alphavae.testing import tiny_rgb_vae, tiny_rgba_vae


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread avoids thrashing on a shared 2-core machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rgba(batch=2, size=16, seed=0):
    """Random straight RGBA in [-1, 1] with fully transparent, soft and opaque regions."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 4, size, size, generator=g) * 2 - 1
    pixels[:, 3, : size // 4] = -1.0
    pixels[:, 3, -size // 4 :] = 1.0
    return pixels


def test_abmse_matches_monte_carlo_compositing():
    target, prediction = _rgba(seed=1), _rgba(seed=2)
    mean = torch.tensor(losses.REFERENCE_BACKGROUND_MEAN).view(1, 1, 3, 1, 1)
    square = torch.tensor(losses.REFERENCE_BACKGROUND_SQUARE).view(1, 1, 3, 1, 1)
    g = torch.Generator().manual_seed(3)
    draws = 4000
    backgrounds = mean + (square - mean**2).sqrt() * torch.randn(draws, 2, 3, 16, 16, generator=g)
    errors = [((io.composite(target, b) - io.composite(prediction, b)) ** 2).flatten(1).sum(1).mean()
              for b in backgrounds]
    monte_carlo = torch.stack(errors).mean()
    closed_form = losses.abmse(target, prediction)
    assert closed_form.item() == pytest.approx(monte_carlo.item(), rel=0.01)


def test_abmse_ignores_colour_under_zero_alpha():
    target, prediction = _rgba(seed=1), _rgba(seed=2)
    hidden = target.clone()
    clear = hidden[:, 3:4] == -1
    hidden[:, :3] = torch.where(clear, torch.rand_like(hidden[:, :3]), hidden[:, :3])
    assert torch.equal(losses.abmse(hidden, prediction), losses.abmse(target, prediction))


def test_abmse_equals_rgb_mse_for_opaque_images():
    target, prediction = _rgba(seed=1), _rgba(seed=2)
    target[:, 3] = prediction[:, 3] = 1.0
    expected = ((target[:, :3] - prediction[:, :3]) ** 2).flatten(1).sum(1).mean()
    assert losses.abmse(target, prediction).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="abmse"):
        losses.abmse(target[:, :3], prediction[:, :3])


def test_abmse_terms_split_the_loss_into_colour_cross_and_alpha():
    target, prediction = _rgba(seed=1), _rgba(seed=2)
    colour, cross, alpha = losses.abmse_terms(target, prediction)
    assert colour.shape == cross.shape == alpha.shape == (2, 3, 16, 16)
    assert torch.equal((colour + cross + alpha).flatten(1).sum(1).mean(), losses.abmse(target, prediction))
    same_alpha = prediction.clone()
    same_alpha[:, 3] = target[:, 3]
    _, cross, alpha = losses.abmse_terms(target, same_alpha)
    assert not cross.any() and not alpha.any()  # equal alpha: only the colour term remains
    with pytest.raises(ValueError, match="abmse"):
        losses.abmse_terms(target[:, :3], prediction[:, :3])


def test_estimate_background_moments(tmp_path):
    image = torch.zeros(4, 8, 8)
    image[0], image[1], image[2], image[3] = 1.0, -1.0, 0.0, 1.0
    io.save_rgba(image, tmp_path / "a.png")
    mean, square = losses.estimate_background_moments(tmp_path)
    assert mean == pytest.approx((1.0, -1.0, 0.0), abs=0.01)
    assert square == pytest.approx((1.0, 1.0, 0.0), abs=0.01)
    with pytest.raises(ValueError, match="no background"):
        losses.estimate_background_moments([])


def test_lpips_without_backbone_is_disabled_with_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="alphavae.losses"):
        assert losses.build_lpips() is None
    assert "LPIPS disabled" in caplog.text and "--set loss.lpips_backbone_path=PATH" in caplog.text
    assert "no vgg16 backbone weights" in caplog.text and "vgg16-397923af.pth" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="alphavae.losses"):
        assert losses.build_lpips(net="alex") is None
    assert "no alexnet backbone weights" in caplog.text and "alexnet-owt-7be5be79.pth" in caplog.text
    with pytest.raises(ValueError, match="loss.lpips_net must be one of alex, vgg, got 'squeeze'"):
        losses.build_lpips(net="squeeze")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        losses.build_lpips(tmp_path / "missing.pth")


def test_lpips_backbone_file_that_is_not_weights_is_a_one_line_error(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(ValueError, match=r"image\.png: not a torch state dict"):
        losses.build_lpips(tmp_path / "image.png")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth: cannot load LPIPS weights"):
        losses.build_lpips(tmp_path / "other.pth")


def test_lpips_loads_local_alexnet_backbone(tmp_path):
    from torchvision.models import alexnet

    torch.manual_seed(0)
    state = alexnet().state_dict()
    torch.save(state, tmp_path / "alexnet.pth")
    metric = losses.build_lpips(tmp_path / "alexnet.pth", net="alex")
    assert torch.equal(metric.net.slice3[1].weight, state["features.6.weight"])
    with pytest.raises(ValueError, match=r"alexnet\.pth: cannot load LPIPS weights .*'features\.2\.weight'.* "
                                         r"\(loss\.lpips_net 'vgg' needs torchvision vgg16 weights\)"):
        losses.build_lpips(tmp_path / "alexnet.pth")  # the default backbone is VGG16
    assert not any(p.requires_grad for p in metric.parameters())
    target, prediction = _rgba(size=32, seed=1), _rgba(size=32, seed=2)
    hidden = target.clone()
    hidden[:, :3] = torch.where(hidden[:, 3:4] == -1, -hidden[:, :3], hidden[:, :3])
    value = losses.composite_lpips(metric, target, prediction, losses.REFERENCE_LPIPS_BACKGROUNDS)
    assert value > 0
    assert torch.allclose(losses.composite_lpips(metric, hidden, prediction, losses.REFERENCE_LPIPS_BACKGROUNDS), value)
    assert losses.composite_lpips(metric, target, target, ["white"]) == 0


def test_patch_discriminator_and_hinge():
    disc = losses.PatchDiscriminator(in_channels=4, channels=8, layers=3)
    logits = disc(_rgba(size=32))
    assert logits.shape == (2, 1, 2, 2)
    assert losses.hinge_discriminator_loss(torch.full((2,), 2.0), torch.full((2,), -2.0)) == 0
    assert losses.hinge_discriminator_loss(torch.zeros(2), torch.zeros(2)) == 1


def _objective_inputs(model_channels=4, size=32, seed=0):
    vae = tiny_rgba_vae("flux", seed=seed, random_alpha=True) if model_channels == 4 else tiny_rgb_vae("flux", seed=seed)
    vae.train()
    pixels = _rgba(size=size, seed=seed)[:, :model_channels]
    noise = torch.randn(2, vae.config.latent_channels, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))
    return vae, pixels, noise


class _CountingVAE(torch.nn.Module):
    """Reference stand-in that counts encode calls."""

    def __init__(self, vae):
        super().__init__()
        self.vae, self.calls = vae, 0

    @property
    def dtype(self):
        return self.vae.dtype

    def encode(self, x):
        self.calls += 1
        return self.vae.encode(x)


def test_ref_kl_inactive_never_calls_reference():
    vae, pixels, noise = _objective_inputs()
    reference = _CountingVAE(tiny_rgb_vae("flux"))
    # (weight, force, encodes by the reference): forced at weight 0 there is still nothing to compute
    for weight, force, calls in ((0.0, False, 0), (1e-16, False, 0), (1e-16, True, 1), (1e-3, False, 1), (0.0, True, 0)):
        config = LossConfig(lpips_weight=0, gan_weight=0, ref_kl_weight=weight, force_ref_kl=force)
        objective = Objective(config, reference_vae=reference, lpips_metric=None)
        before = reference.calls
        _, logs, _ = objective.generator_loss(AutoencoderForward(vae), pixels, noise, step=0)
        assert reference.calls - before == calls
        assert ("ref_kl" in logs) == (calls > 0)
    with pytest.raises(ValueError, match="reference RGB VAE"):
        Objective(LossConfig(ref_kl_weight=1.0), lpips_metric=None)


def test_ref_kl_is_zero_at_opaque_initialisation():
    source = tiny_rgb_vae("flux")
    vae = tiny_rgba_vae("flux")
    _, pixels, noise = _objective_inputs()
    config = LossConfig(lpips_weight=0, gan_weight=0, kl_weight=0, ref_kl_weight=1.0)
    _, logs, _ = Objective(config, reference_vae=source, lpips_metric=None).generator_loss(
        AutoencoderForward(vae), pixels, noise, step=0)
    assert logs["ref_kl"] == pytest.approx(0.0, abs=1e-5)


def _after_one_step(config, reference):
    """Gradients and parameters after one AdamW step (paper lr and betas) of a tiny RGBA VAE."""
    vae, pixels, noise = _objective_inputs()
    loss, _, _ = Objective(config, reference_vae=reference, lpips_metric=None).generator_loss(
        AutoencoderForward(vae), pixels, noise, step=0)
    loss.backward()
    torch.optim.AdamW(vae.parameters(), lr=1e-5, betas=(0.5, 0.9)).step()
    return [p.grad.clone() for p in vae.parameters()], [p.detach().clone() for p in vae.parameters()]


def test_ref_kl_at_paper_weight_leaves_fp32_parameters_unchanged():
    reference = tiny_rgb_vae("flux", seed=5)
    base = {"lpips_weight": 0, "gan_weight": 0}
    grads, params = _after_one_step(LossConfig(**base, ref_kl_weight=0.0), reference)
    forced_grads, forced_params = _after_one_step(LossConfig(**base, ref_kl_weight=1e-16, force_ref_kl=True), reference)
    # gradients may differ only where the other terms' gradient is ~0 (e.g. attention key biases) ...
    assert max(((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item() for a, b in zip(grads, forced_grads)) < 1e-12
    # ... and the fp32 parameters after an AdamW step are bitwise the same
    assert all(torch.equal(a, b) for a, b in zip(params, forced_params))
    _, strong_params = _after_one_step(LossConfig(**base, ref_kl_weight=1e-2), reference)
    assert not all(torch.equal(a, b) for a, b in zip(params, strong_params))


def test_vgg_lpips_is_the_reference_codes_lpips(tmp_path, monkeypatch):
    """The reference trains with taming-transformers' LPIPS: VGG16 and the v0.1 linear layers, the very file the
    ``lpips`` package bundles (taming's MD5). The default backbone, built from the same torchvision VGG16 weights,
    gives its values, and ``composite_lpips`` over the reference backgrounds its ``perceptual_loss``."""
    from pathlib import Path
    from types import SimpleNamespace

    import lpips
    from taming import util as taming_util
    from taming.modules.losses import lpips as taming_lpips
    from torchvision.models import vgg16

    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    assert taming_util.md5_hash(heads) == taming_util.MD5_MAP["vgg_lpips"]
    torch.manual_seed(0)
    backbone = vgg16()
    torch.save({k: v for k, v in backbone.state_dict().items() if k.startswith("features.")}, tmp_path / "vgg16.pth")
    monkeypatch.setattr(taming_lpips, "models", SimpleNamespace(vgg16=lambda pretrained: backbone))
    monkeypatch.setattr(taming_lpips, "get_ckpt_path", lambda name, root: str(heads))
    reference = taming_lpips.LPIPS().eval()
    ours = losses.build_lpips(tmp_path / "vgg16.pth")
    assert LossConfig().lpips_net == "vgg"
    x, y = (torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in (1, 2))
    with torch.no_grad():
        assert torch.allclose(ours(x, y), reference(x, y), rtol=1e-5, atol=1e-7)
        target, prediction = _rgba(size=32, seed=1), _rgba(size=32, seed=2)
        t_rgb, t_a, p_rgb, p_a = target[:, :3], (target[:, 3:] + 1) / 2, prediction[:, :3], (prediction[:, 3:] + 1) / 2
        over_black = reference(t_rgb * t_a, p_rgb * p_a)  # the reference's "black": C * alpha, mid-grey
        over_white = reference(t_rgb * t_a + (1 - t_a), p_rgb * p_a + (1 - p_a))
        expected = ((over_black + over_white) / 2).sum() / target.shape[0]
        value = losses.composite_lpips(ours, target, prediction, losses.REFERENCE_LPIPS_BACKGROUNDS)
    assert value > 0 and torch.allclose(value, expected, rtol=1e-5)


def test_objective_rgb_stage_uses_plain_terms():
    vae, pixels, noise = _objective_inputs(model_channels=3)
    objective = Objective(LossConfig(gan_weight=0), in_channels=3,
                          lpips_metric=losses.build_lpips(random_backbone=True, net="alex"))
    loss, logs, reconstruction = objective.generator_loss(AutoencoderForward(vae), pixels, noise, step=0)
    assert set(logs) == {"mse", "lpips", "kl", "loss"}
    assert reconstruction.shape == pixels.shape
    assert loss.item() == pytest.approx(logs["mse"] + 0.5 * logs["lpips"] + 1e-6 * logs["kl"], rel=1e-5)


def test_lpips_term_is_the_per_image_value_as_in_the_reference():
    """The reference's ``perceptual_loss`` sums LPIPS's (B, 1, 1, 1) output per sample and averages over the
    batch: the mean per-image LPIPS, not spread over 3 * H * W pixel values (LDM's way, which made the term
    3 * H * W times heavier: 3 million times at 1024 px)."""
    metric = losses.build_lpips(random_backbone=True, net="alex")
    target, prediction = _rgba(size=32, seed=1), _rgba(size=32, seed=2)
    per_image = [metric(io.composite(target, bg), io.composite(prediction, bg)).flatten()
                 for bg in losses.REFERENCE_LPIPS_BACKGROUNDS]
    expected = torch.stack(per_image).mean()
    assert torch.allclose(losses.composite_lpips(metric, target, prediction, losses.REFERENCE_LPIPS_BACKGROUNDS),
                          expected)
    assert torch.allclose(losses.composite_lpips(metric, target[:, :3], prediction[:, :3], ()),
                          metric(target[:, :3], prediction[:, :3]).mean())


def test_gan_term_is_weighted_against_the_reconstruction_term_alone(monkeypatch):
    """As the reference (``generator_loss(l2_loss, ...)``, ``generator_loss_weight`` 1): the adaptive weight's
    numerator is the gradient of the weighted ABMSE without LPIPS, and the GAN term enters with factor
    ``gan_weight`` (default 1) times that weight."""
    vae, pixels, noise = _objective_inputs()
    seen = []
    adaptive = losses.adaptive_gan_weight
    monkeypatch.setattr(losses, "adaptive_gan_weight", lambda rec, gan, layer: seen.append(rec.item())
                        or adaptive(rec, gan, layer))
    assert LossConfig().gan_weight == 1.0
    config = LossConfig(ref_kl_weight=0, kl_weight=0, reconstruction_weight=2.0, gan_start=0)
    objective = Objective(config, lpips_metric=losses.build_lpips(random_backbone=True, net="alex"),
                          discriminator=losses.PatchDiscriminator(4, 8).eval())
    loss, logs, _ = objective.generator_loss(AutoencoderForward(vae), pixels, noise, step=0,
                                             last_layer=vae.decoder.conv_out.weight)
    assert seen == [pytest.approx(2.0 * logs["abmse"], rel=1e-6)]
    expected = 2.0 * logs["abmse"] + 0.5 * logs["lpips"] + logs["gan_adaptive_weight"] * logs["gan"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("disc_input", ["rgba", "composite"])
def test_gan_term_and_discriminator_step(disc_input):
    vae, pixels, noise = _objective_inputs()
    disc = losses.PatchDiscriminator(in_channels=4 if disc_input == "rgba" else 3, channels=8)
    config = LossConfig(lpips_weight=0, ref_kl_weight=0, gan_start=2, disc_input=disc_input)
    objective = Objective(config, lpips_metric=None, discriminator=disc)
    backgrounds = torch.rand(2, 3) * 2 - 1
    assert not objective.gan_active(1) and objective.gan_active(2)
    _, early, _ = objective.generator_loss(AutoencoderForward(vae), pixels, noise, step=1)
    assert "gan" not in early
    loss, logs, reconstruction = objective.generator_loss(
        AutoencoderForward(vae), pixels, noise, step=2, last_layer=vae.decoder.conv_out.weight, backgrounds=backgrounds)
    assert 0 <= logs["gan_adaptive_weight"] <= 1e4
    loss.backward()
    assert all(p.grad is None for p in disc.parameters())
    disc_loss, disc_logs = objective.discriminator_loss(disc, pixels, reconstruction, backgrounds)
    disc_loss.backward()
    assert all(p.grad is not None for p in disc.parameters()) and disc_logs["disc"] >= 0
    with pytest.raises(ValueError, match="last_layer"):
        objective.generator_loss(AutoencoderForward(vae), pixels, noise, step=2, backgrounds=backgrounds)
    if disc_input == "composite":
        with pytest.raises(ValueError, match="backgrounds"):
            objective.discriminator_loss(disc, pixels, reconstruction)
        with pytest.raises(ValueError, match="backgrounds"):  # before any forward pass
            objective.generator_loss(AutoencoderForward(vae), pixels, noise, step=2, last_layer=vae.decoder.conv_out.weight)


def test_composite_discriminator_view_hides_colour_under_zero_alpha():
    objective = Objective(LossConfig(disc_input="composite", ref_kl_weight=0), lpips_metric=None,
                          discriminator=losses.PatchDiscriminator(3, 8))
    pixels = _rgba(size=32)
    hidden = pixels.clone()
    hidden[:, :3] = torch.where(hidden[:, 3:4] == -1, torch.zeros_like(hidden[:, :3]), hidden[:, :3])
    backgrounds = torch.rand(2, 3) * 2 - 1
    assert torch.equal(objective._disc_view(pixels, backgrounds), objective._disc_view(hidden, backgrounds))


def test_loss_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="reconstruction"):
        LossConfig(reconstruction="l1")
    with pytest.raises(ValueError, match="disc_input"):
        LossConfig(disc_input="alpha")
    for bad in ([], "white", ["grey"], [[1, 2]], [[0, 0, 300]]):
        with pytest.raises(ValueError, match="lpips_backgrounds"):
            LossConfig(lpips_backgrounds=bad)
    accepted = LossConfig(lpips_backgrounds=["checkerboard", [0, 0, 255], "white"]).lpips_backgrounds
    assert accepted == ("checkerboard", (0.0, 0.0, 255.0), "white")  # a tuple, as io.composite takes them


def test_objective_gives_identical_losses_for_identical_looking_inputs():
    vae, pixels, noise = _objective_inputs()
    hidden = pixels.clone()
    hidden[:, :3] = torch.where(hidden[:, 3:4] == -1, torch.rand_like(hidden[:, :3]), hidden[:, :3])
    config = LossConfig(reconstruction="mse", lpips_weight=0, ref_kl_weight=0, gan_start=0)
    objective = Objective(config, lpips_metric=None, discriminator=losses.PatchDiscriminator(4, 8).eval())
    results = [objective.generator_loss(AutoencoderForward(vae), p, noise, step=0, last_layer=vae.decoder.conv_out.weight)
               for p in (pixels, hidden)]
    assert results[0][1] == results[1][1]
    assert objective.discriminator_loss(objective.discriminator, pixels, results[0][2])[1] == \
        objective.discriminator_loss(objective.discriminator, hidden, results[1][2])[1]


def test_loss_config_refuses_background_moments_no_background_can_have():
    """E[b^2] < E[b]^2 (a negative variance) was accepted, making ABMSE unbounded below; so were moments out of the
    range of backgrounds in [-1, 1] given from Python."""
    refused = [({"background_mean": (0.9, 0, 0), "background_square": (0.1, 0.3, 0.3)},
                r"loss.background_square must be >= loss.background_mean squared \(a variance cannot be negative\), "
                r"got 0.1 < 0.9\^2 = 0.81 for channel 0 \(red\)"),
               ({"background_mean": (0, 0, -0.7)},
                r"got 0.3634 < -0.7\^2 = 0.49 for channel 2 \(blue\)$"),
               ({"background_mean": (0, 1.5, 0)},
                r"loss.background_mean must be in \[-1, 1\] \(E\[b\] of backgrounds in \[-1, 1\]\), got 1.5 for "
                r"channel 1 \(green\)"),
               ({"background_square": (0.3, 1.2, 0.3)}, r"loss.background_square must be in \[0, 1\] .*got 1.2"),
               ({"background_square": (0.3, 0.3, float("nan"))}, r"must be in \[0, 1\] .*got nan for channel 2"),
               ({"background_mean": (0, 0)}, r"loss.background_mean must be three numbers \(r, g, b\), got \(0, 0\)")]
    for values, message in refused:
        with pytest.raises(ValueError, match=message):
            LossConfig(**values)
    grey = 223 / 127.5 - 1  # one-colour backgrounds (variance 0) as `alphavae background-moments` prints them
    rounded = (float(f"{grey:.6g}"), float(f"{grey * grey:.6g}"))
    assert rounded[1] < rounded[0] ** 2  # rounding alone puts E[b^2] a little below E[b]^2: still accepted
    assert LossConfig(background_mean=(rounded[0], 1, -1), background_square=(rounded[1], 1, 1)).background_mean[1] == 1


def test_background_moments_refuse_values_outside_the_pixel_range():
    """NaN pixels gave NaN moments and 0-255 pixels moments of 255 and 65025, silently."""
    for bad, shown in ((torch.full((3, 2, 2), float("nan")), "nan"), (torch.full((3, 2, 2), 255.0), "255")):
        with pytest.raises(ValueError, match=rf"^background image 1: values must be finite and in \[-1, 1\], got "
                                             rf"\[{shown}, {shown}\]$"):
            losses.background_moments([bad])
