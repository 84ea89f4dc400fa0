"""Tests of alphavae.train.config: values refused when a config loads, before any model or image is read."""

import pytest

from alphavae.cli import main
from alphavae.configs import shipped_configs
from alphavae.data.datasets import OPAQUE_BACKGROUNDS
from alphavae.train.config import TRAINING_CROPS, load_config


def test_every_shipped_config_loads_with_valid_data_choices_and_background_moments():
    for name in shipped_configs():
        config = load_config(name)
        assert config.data.crop in TRAINING_CROPS and config.data.opaque_background in OPAQUE_BACKGROUNDS, name
        assert all(m * m <= s <= 1 for m, s in zip(config.loss.background_mean, config.loss.background_square)), name


def test_a_base_that_is_not_text_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    """`base: 5` crashed _read_layers with a TypeError traceback (Path(5))."""
    for value in ("5", "[vae_main]", "true", "{a: 1}"):
        (tmp_path / "child.yaml").write_text(f"base: {value}\n")
        with pytest.raises(ValueError, match=r"child\.yaml: base must be a shipped config name or a \.yaml path"):
            load_config(tmp_path / "child.yaml")
    assert main(["train-vae", "--config", str(tmp_path / "child.yaml"), "-o", str(tmp_path / "run"),
                 "--print-config"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.endswith("(one text value), got {'a': 1}") and "child.yaml" in error
    (tmp_path / "child.yaml").write_text("base: vae_main\nseed: 3\n")
    assert load_config(tmp_path / "child.yaml").seed == 3


def test_seed_is_bounded_like_train_loras():
    """seed=2**64 loaded, then training failed with torch's "Overflow when unpacking long long"."""
    for seed in (2**32, 2**64):
        with pytest.raises(ValueError, match=rf"^seed must be >= 0 and < 2\*\*32, got {seed}$"):
            load_config("vae_main", [f"seed={seed}"])
    with pytest.raises(ValueError, match="seed must be >= 0 and < 2"):
        load_config("vae_main", ["seed=-1"])
    assert load_config("vae_main", [f"seed={2**32 - 1}"]).seed == 2**32 - 1


def test_data_crop_and_opaque_background_are_checked_at_load():
    """data.crop=none loaded and failed later with an unrelated ABMSE shape error; a misspelt background loaded."""
    refused = {"data.crop=none": r"data.crop must be one of \('random', 'center'\) \(training batches are data.size "
                                 r"squares\), got 'none'",
               "data.crop=centre": "data.crop must be one of .*got 'centre'",
               "data.opaque_background=plaid": r"data.opaque_background must be one of \('solid', 'palette', "
                                               r"'image'\), got 'plaid'"}
    for override, message in refused.items():
        with pytest.raises(ValueError, match=message):
            load_config("vae_main", [override])
    accepted = load_config("vae_main", ["data.crop=center", "data.opaque_background=image"])
    assert (accepted.data.crop, accepted.data.opaque_background) == ("center", "image")
