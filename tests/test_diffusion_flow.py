import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from alphavae.diffusion.flow import TimestepSampling, flow_matching_loss, pack_latents, sample_sigmas, unpack_latents
from alphavae.testing_flux import tiny_flux_pipeline


def test_pack_unpack_round_trip():
    latents = torch.randn(2, 16, 6, 4)
    tokens, ids = pack_latents(latents)
    assert tokens.shape == (2, 6, 64) and ids.shape == (6, 3)
    assert ids[:, 1].tolist() == [0, 0, 1, 1, 2, 2] and ids[:, 2].tolist() == [0, 1, 0, 1, 0, 1]
    assert torch.equal(unpack_latents(tokens, 6, 4), latents)
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.randn(1, 16, 5, 4))


def test_sigma_sampling():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    uniform = sample_sigmas(4000, scheduler, TimestepSampling(), torch.Generator().manual_seed(0))
    again = sample_sigmas(4000, scheduler, TimestepSampling(), torch.Generator().manual_seed(0))
    logit = sample_sigmas(4000, scheduler, TimestepSampling("logit_normal"), torch.Generator().manual_seed(0))
    assert torch.equal(uniform, again) and uniform.dtype == torch.float32
    assert 0 < uniform.min() and uniform.max() <= 1 and logit.min() > 0
    assert abs(uniform.mean() - 0.5) < 0.03 and abs(logit.mean() - 0.5) < 0.03
    assert logit.std() < uniform.std() - 0.05  # logit-normal concentrates mid-range noise levels
    with pytest.raises(ValueError, match="weighting_scheme"):
        TimestepSampling("bogus")


def test_loss_is_mse_to_velocity_and_weighted():
    pipe = tiny_flux_pipeline()
    embeds, pooled, text_ids = pipe.encode_prompt("a cat", None, max_sequence_length=16)
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(1, 16, 4, 4, generator=gen), torch.randn(1, 16, 4, 4, generator=gen)
    sigmas = torch.tensor([0.5])
    with torch.no_grad():
        plain = flow_matching_loss(pipe.transformer, latents, noise, sigmas, embeds, pooled, text_ids, 1.0)
        weighted = flow_matching_loss(pipe.transformer, latents, noise, sigmas, embeds, pooled, text_ids, 1.0,
                                      "sigma_sqrt")
        other_guidance = flow_matching_loss(pipe.transformer, latents, noise, sigmas, embeds, pooled, text_ids, 4.0)
    assert plain.ndim == 0 and torch.isfinite(plain)
    torch.testing.assert_close(weighted, plain * 4)  # sigma ** -2 at sigma = 0.5
    assert not torch.equal(plain, other_guidance)
