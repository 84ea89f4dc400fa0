"""Shared pytest fixtures: tiny VAEs (random weights, structure of the real SD1.x/SDXL/SD3/FLUX VAEs).

Builders live in ``alphavae.testing`` so benchmarks can use them too; fixtures here add caching and
saved-to-disk copies for CLI tests.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch

from alphavae.testing import tiny_rgb_vae, tiny_rgba_vae


@pytest.fixture(scope="session")
def tiny_rgb_dir(tmp_path_factory) -> Path:
    """A tiny RGB FLUX-shaped ``AutoencoderKL`` saved in diffusers format (3 channels, seed 0)."""
    path = tmp_path_factory.mktemp("tiny_rgb_vae")
    tiny_rgb_vae("flux").save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_rgba_dir(tmp_path_factory) -> Path:
    """A tiny converted RGBA FLUX-shaped ``AutoencoderKL`` (random alpha weights) saved in diffusers format."""
    path = tmp_path_factory.mktemp("tiny_rgba_vae")
    tiny_rgba_vae("flux", random_alpha=True).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def random_inception(tmp_path_factory) -> Path:
    """torch-fidelity's FID Inception with random (Kaiming-initialised) weights, saved as a state-dict file; stands
    in for the real weights, which cannot be downloaded here."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(0)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None), \
            mock.patch("torch.load", lambda *a, **k: {}):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    for module in net.modules():  # keep activations alive through ~20 random layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def help_text(capsys):
    """``help_text(argv)``: what ``alphavae <argv> --help`` prints, its lines joined by single spaces (argparse
    wraps at any space, so a phrase can be searched whole)."""
    from alphavae.cli import main

    def run(argv: list[str]) -> str:
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        return " ".join(capsys.readouterr().out.split())

    return run
