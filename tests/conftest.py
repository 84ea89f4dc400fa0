"""Shared pytest fixtures: tiny VAEs (random weights, structure of the real SD1.x/SDXL/SD3/FLUX VAEs).

Builders live in ``alphavae.testing`` so benchmarks can use them too; fixtures here add caching and
saved-to-disk copies for CLI tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
