"""Tests for alphavae.convert and the ``alphavae convert`` command (tiny random-weight VAEs)."""

from __future__ import annotations

import json
import logging.handlers
import shutil
import warnings

import pytest
import torch
from diffusers import AutoencoderKL
from fixtures_io import assert_default_permissions
from safetensors.torch import load_file

from alphavae.cli import main
from alphavae.convert import (
    PROVENANCE_FILE,
    check_invariant,
    convert_pretrained,
    convert_to_rgba,
    load_autoencoder,
)
from alphavae.testing import SHAPES, tiny_rgb_vae


def test_invariant_tolerates_float_rounding_but_not_a_wrong_conversion():
    """The CPU float32 check demanded bit-equality, which other convolution kernels for the widened layers need
    not give (1e-5 apart in RGB output on other inputs here): a machine could refuse a correct conversion."""
    source = tiny_rgb_vae("flux")
    rgba = convert_to_rgba(source)
    with torch.no_grad():
        rgba.decoder.conv_out.bias[:3] += 1e-6  # rounding-sized
    report = check_invariant(source, rgba, sizes=((32, 32),))
    assert not report.bitwise and report.rgb_diff == pytest.approx(1e-6, rel=0.1) and report.atol == 1e-3
    with torch.no_grad():
        rgba.decoder.conv_out.bias[:3] += 1e-2  # a wrong conversion
    with pytest.raises(AssertionError, match="invariant violated"):
        check_invariant(source, rgba, sizes=((32, 32),))


@pytest.mark.parametrize("shape", SHAPES)
def test_invariant_bitwise_for_every_vae_shape(shape):
    source = tiny_rgb_vae(shape)
    before = {k: v.clone() for k, v in source.state_dict().items()}
    rgba = convert_to_rgba(source)
    report = check_invariant(source, rgba, sizes=((32, 32), (24, 40)))
    assert report.bitwise and report.atol == 1e-3  # bitwise on these probes here; 1e-3 allows other kernels
    assert (rgba.config.in_channels, rgba.config.out_channels) == (4, 4)
    assert rgba.config.latent_channels == source.config.latent_channels
    assert (rgba.quant_conv is None) == (source.quant_conv is None)
    assert rgba.encoder.conv_in.weight[:, 3].abs().sum() == 0
    assert rgba.decoder.conv_out.bias[3] == 1.0
    assert all(torch.equal(before[k], v) for k, v in source.state_dict().items())


@pytest.mark.parametrize("train", [False, True])
def test_conversion_keeps_mode_and_frozen_weights(train):
    """The widened convolutions were new modules in training mode with trainable weights, whatever the source."""
    source = tiny_rgb_vae("flux").train(train).requires_grad_(not train)
    rgba = convert_to_rgba(source)
    assert {module.training for module in rgba.modules()} == {train}
    assert {parameter.requires_grad for parameter in rgba.parameters()} == {not train}


def test_reload_gives_identical_outputs(tmp_path):
    rgba = convert_to_rgba(tiny_rgb_vae("sd1"))
    rgba.save_pretrained(tmp_path)
    reloaded = AutoencoderKL.from_pretrained(tmp_path).eval()
    pixels = torch.rand(1, 4, 32, 40) * 2 - 1
    with torch.no_grad():
        assert torch.equal(rgba(pixels).sample, reloaded(pixels).sample)


def test_refusals():
    rgba = convert_to_rgba(tiny_rgb_vae("flux"))
    with pytest.raises(ValueError, match="already converted"):
        convert_to_rgba(rgba)
    with pytest.raises(ValueError, match="AutoencoderKL"):
        convert_to_rgba(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="multiple of 8"):
        check_invariant(tiny_rgb_vae("flux"), rgba, sizes=((20, 20),))


def test_invariant_violation_raises():
    source = tiny_rgb_vae("sd3")
    rgba = convert_to_rgba(source)
    with torch.no_grad():
        rgba.encoder.conv_in.weight[:, 3] += 0.1
    with pytest.raises(AssertionError, match="mean_diff"):
        check_invariant(source, rgba, sizes=((16, 16),))


def test_cli_convert_roundtrip(tmp_path, tiny_rgb_dir, capsys):
    dst = tmp_path / "rgba"
    assert main(["convert", str(tiny_rgb_dir), str(dst)]) == 0
    assert "invariant" in capsys.readouterr().out
    provenance = json.loads((dst / PROVENANCE_FILE).read_text())
    assert provenance["invariant"]["bitwise"] is True
    assert {"source", "subfolder", "date", "versions"} <= provenance.keys()
    assert (dst / "diffusion_pytorch_model.safetensors").is_file()
    assert_default_permissions(dst)  # not the 0o700 temporary folder / 0o600 safetensors file
    reloaded = AutoencoderKL.from_pretrained(dst).eval()
    expected = convert_to_rgba(AutoencoderKL.from_pretrained(tiny_rgb_dir).eval())
    pixels = torch.rand(2, 4, 16, 24) * 2 - 1
    with torch.no_grad():
        assert torch.equal(reloaded(pixels).sample, expected(pixels).sample)
    assert main(["convert", str(tiny_rgb_dir), str(dst)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["convert", str(tiny_rgb_dir), str(dst), "--overwrite", "--dtype", "bfloat16"]) == 0
    weights = load_file(dst / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}


def test_convert_pretrained_subfolder_and_errors(tmp_path, tiny_rgb_dir, capsys):
    pipeline = tmp_path / "pipeline"
    tiny_rgb_vae("sdxl").save_pretrained(pipeline / "vae")
    out = convert_pretrained(pipeline, tmp_path / "out", subfolder="vae")
    assert json.loads((out / PROVENANCE_FILE).read_text())["subfolder"] == "vae"
    with pytest.raises(ValueError):
        convert_pretrained(pipeline, pipeline / "inside", subfolder="vae")
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["convert", str(out), str(tmp_path / "y")]) == 2
    assert "already converted" in capsys.readouterr().err


def _no_loading(*args, **kwargs):
    raise AssertionError("from_pretrained must not be reached (no network look-up for local paths)")


def test_bad_local_sources_fail_fast_with_one_line(tmp_path, capsys, monkeypatch):
    """Missing folders, non-VAE folders and folders without weights: one clear line, no hub look-up."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(AutoencoderKL, "from_pretrained", _no_loading)
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (tmp_path / "empty").mkdir()
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    (tmp_path / "pipe" / "vae").mkdir(parents=True)
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    (tmp_path / "pipe" / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    (tmp_path / "pipe" / "transformer").mkdir()
    (tmp_path / "pipe" / "transformer" / "config.json").write_text('{"_class_name": "FluxTransformer2DModel"}')
    where = "pipe is a pipeline folder: its VAE is pipe/vae; commands with --subfolder also take"
    for src, words in [("missing", "does not exist"), ("./a/b/c", "does not exist"), ("unet", "UNet2DModel"),
                       ("empty/typo", "does not exist"),  # org/name shape, but "empty" is a local folder
                       ("empty", "config.json"), ("noweights", "weights"), ("pipe", where),
                       ("pipe/transformer", f"describes a FluxTransformer2DModel, not an AutoencoderKL ({where}")]:
        assert main(["convert", src, "out"]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and src.strip("./") in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def _offline(*args, **kwargs):
    raise OSError("org/nope does not appear to have a file named config.json.")


def test_unknown_model_id_says_it_was_not_a_local_folder(tmp_path, capsys, monkeypatch):
    """An ``org/name`` that is no local folder is looked up as a model id; when that fails the one-line error
    says there was no such local folder (a mistyped path reads like a model id). huggingface_hub's deprecation
    warning about an argument diffusers passes on every lookup is not shown."""
    def offline(*args, **kwargs):
        warnings.warn("The `local_dir_use_symlinks` argument is deprecated and ignored in `hf_hub_download`. "
                      "Downloading to a local directory does not use symlinks anymore.", stacklevel=1)
        _offline()

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(AutoencoderKL, "from_pretrained", offline)
    assert main(["convert", "org/nope", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no local folder 'org/nope'" in err and "model id" in err and "\n" not in err, err
    assert err.endswith("offline, HF_HUB_OFFLINE=1 loads ids already in the hub cache without the hub client's retries)")


def _tree(folder):
    """Every file under ``folder`` (hidden ones too) as {relative path: bytes}."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


MODEL_FILES = {"config.json", "diffusion_pytorch_model.safetensors", PROVENANCE_FILE}


def _assert_converted(folder, tiny_rgb_dir):
    """``folder`` holds a loadable RGBA model equal to the conversion of ``tiny_rgb_dir``."""
    reloaded = AutoencoderKL.from_pretrained(folder).eval()
    expected = convert_to_rgba(AutoencoderKL.from_pretrained(tiny_rgb_dir).eval())
    pixels = torch.rand(1, 4, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(reloaded(pixels).sample, expected(pixels).sample)


def test_overwrite_replaces_only_model_files(tmp_path, tiny_rgb_dir, capsys):
    """--overwrite into a folder with other files: those survive untouched; the model files are replaced."""
    dst = tmp_path / "shared"
    (dst / "notes").mkdir(parents=True)
    (dst / "notes" / "todo.txt").write_text("keep me")
    (dst / "readme.md").write_text("mine")
    (dst / "config.json").write_text("{}")
    others = {k: v for k, v in _tree(dst).items() if k != "config.json"}
    assert main(["convert", str(tiny_rgb_dir), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err and "not empty" in err
    assert main(["convert", str(tiny_rgb_dir), str(dst), "--overwrite"]) == 0
    after = _tree(dst)
    assert set(after) == set(others) | MODEL_FILES
    assert all(after[k] == v for k, v in others.items())
    _assert_converted(dst, tiny_rgb_dir)


def test_source_inside_equal_or_around_output_is_refused(tmp_path, tiny_rgb_dir, capsys, monkeypatch):
    """SRC inside DST (even with --overwrite), DST == SRC and DST inside SRC: refused, nothing changes."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_rgb_dir, tmp_path / "danger" / "rgbvae")
    (tmp_path / "danger" / "unrelated.txt").write_text("keep me")
    before = _tree(tmp_path)
    assert main(["convert", "danger/rgbvae", "danger", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "contains the source folder" in err and "danger/rgbvae" in err and "danger " in err
    for dst, words in [("danger/rgbvae", "is the same folder as the source folder"),
                       ("danger/rgbvae/sub", "is inside the source folder"),
                       ("danger/rgbvae/./", "is the same folder as the source folder")]:
        with pytest.raises(ValueError, match=words):
            convert_pretrained("danger/rgbvae", dst, overwrite=True)
    assert _tree(tmp_path) == before


def test_convert_into_current_folder(tmp_path, tiny_rgb_dir, capsys, monkeypatch):
    """DST '.': refused without --overwrite (not empty); with it, the model lands beside the kept files."""
    shutil.copytree(tiny_rgb_dir, tmp_path / "rgbvae")
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("keep me")
    monkeypatch.chdir(work)
    assert main(["convert", "../rgbvae", "."]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _tree(work) == {"keep.txt": b"keep me"}
    assert main(["convert", "../rgbvae", ".", "--overwrite"]) == 0
    assert set(_tree(work)) == MODEL_FILES | {"keep.txt"}
    assert (work / "keep.txt").read_text() == "keep me"
    assert sorted(p.name for p in work.iterdir() if p.is_dir()) == []
    _assert_converted(work, tiny_rgb_dir)


def test_overwrite_earlier_output_and_refusals(tmp_path, tiny_rgb_dir):
    """An earlier output is replaced in place and loads; an empty DST needs no --overwrite; other layouts refused."""
    dst = tmp_path / "out"
    dst.mkdir()
    convert_pretrained(tiny_rgb_dir, dst)
    first = json.loads((dst / PROVENANCE_FILE).read_text())
    convert_pretrained(tiny_rgb_dir, dst, dtype="bfloat16", overwrite=True)
    assert set(_tree(dst)) == MODEL_FILES
    assert json.loads((dst / PROVENANCE_FILE).read_text())["dtype"] == "bfloat16" != first["dtype"]
    assert {t.dtype for t in load_file(dst / "diffusion_pytorch_model.safetensors").values()} == {torch.bfloat16}
    assert AutoencoderKL.from_pretrained(dst).config.in_channels == 4
    shard = dst / "diffusion_pytorch_model-00001-of-00002.safetensors"
    shard.write_bytes(b"old shard")
    before = _tree(dst)
    with pytest.raises(FileExistsError, match="00001-of-00002"):
        convert_pretrained(tiny_rgb_dir, dst, overwrite=True)
    assert _tree(dst) == before and not [p for p in dst.iterdir() if p.name.startswith(".")]
    shard.unlink()
    (dst / PROVENANCE_FILE).unlink()
    (dst / PROVENANCE_FILE).mkdir()
    with pytest.raises(FileExistsError, match=PROVENANCE_FILE):
        convert_pretrained(tiny_rgb_dir, dst, overwrite=True)
    (tmp_path / "file").write_text("not a folder")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a folder"):
            convert_pretrained(tiny_rgb_dir, tmp_path / "file", overwrite=overwrite)
    assert (tmp_path / "file").read_text() == "not a folder"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError, match="dangling: exists and is a dangling symlink"):
        convert_pretrained(tiny_rgb_dir, tmp_path / "dangling")


def test_the_shipped_model_is_never_a_destination(tmp_path, tiny_rgb_dir, capsys):
    """Every command given no model loads alphavae-mini; convert --overwrite must not replace it (nor write
    below it)."""
    from alphavae.convert import DEFAULT_MODEL_DIR

    before = _tree(DEFAULT_MODEL_DIR)
    for dst in (DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR / "sub"):
        assert main(["convert", str(tiny_rgb_dir), str(dst), "--overwrite"]) == 2
        assert "not writing the converted model into the model shipped with alphavae" in capsys.readouterr().err
    assert _tree(DEFAULT_MODEL_DIR) == before


def test_pickle_weights_and_malformed_configs_are_one_line_errors(tmp_path, capsys):
    """A folder with only a pickled .bin is refused before loading (a pickle can run code); config fields
    that do not build an AutoencoderKL name the folder instead of a traceback."""
    tiny_rgb_vae("sd1").save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert main(["convert", str(tmp_path / "pickled"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "holds pickle weights (diffusion_pytorch_model.bin)" in err and err.count("\n") == 1
    for index, (field, value, words) in enumerate([
            ("block_out_channels", [8, 16, 16], "config.json and weights do not build an AutoencoderKL ("),
            ("norm_num_groups", 0, "config.json and weights do not build an AutoencoderKL ("),
            ("in_channels", "3", "config.json and weights do not build an AutoencoderKL ("),
            # diffusers' message advised ignore_mismatched_sizes=True, a random re-initialisation
            ("latent_channels", 8, "config.json and weights do not match: decoder.conv_in.weight is [16, 4, 3, 3] "
                                   "in the weights, but the config builds [16, 8, 3, 3] (an edited config.json?)"),
            ("scaling_factor", 0, "config.json scaling_factor must be a finite non-zero number, got 0"),
            ("scaling_factor", "x", "config.json scaling_factor must be a finite non-zero number, got 'x'"),
            ("shift_factor", "abc", "config.json shift_factor must be a finite number or null, got 'abc'")]):
        broken = tmp_path / f"broken-{index}"
        tiny_rgb_vae("sd1").save_pretrained(broken)
        config = json.loads((broken / "config.json").read_text())
        (broken / "config.json").write_text(json.dumps({**config, field: value}))
        assert main(["convert", str(broken), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert f"{broken}: {words}" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layers, problem", [(-1, "file weights fit no layer (first: decoder."),
                                             (2, "layers have no weights in the file (first: decoder.")])
def test_a_config_edited_away_from_its_weights_is_refused(tmp_path, layers, problem):
    """diffusers only warns when weights are missing (left random) or unused (dropped); a model built that way
    is not the saved one, so loading refuses it, naming the folder (in one line: diffusers' warning is held)."""
    folder = tmp_path / "edited"
    tiny_rgb_vae("sd1").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "layers_per_block": layers}))
    warnings = logging.handlers.BufferingHandler(capacity=100)
    logging.getLogger("diffusers.models.modeling_utils").addHandler(warnings)
    try:
        with pytest.raises(ValueError, match="do not match") as error:
            load_autoencoder(folder)
    finally:
        logging.getLogger("diffusers.models.modeling_utils").removeHandler(warnings)
    assert str(error.value).startswith(f"{folder}: config.json and weights do not match: ")
    assert problem in str(error.value) and "layers_per_block" in str(error.value)
    assert warnings.buffer == []


def test_a_failed_weights_write_is_one_line_and_leaves_nothing(tmp_path, tiny_rgb_dir, capsys, monkeypatch):
    from safetensors import SafetensorError

    def disk_full(self, *args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(AutoencoderKL, "save_pretrained", disk_full)
    assert main(["convert", str(tiny_rgb_dir), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'out'}: cannot write the converted model (" in err and "No space left" in err
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_local_folder_is_not_blamed_on_the_network(tmp_path, tiny_rgb_dir, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tiny_rgb_dir / "diffusion_pytorch_model.safetensors"))

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", denied)
    with pytest.raises(OSError, match="Permission denied") as error:
        load_autoencoder(tiny_rgb_dir)
    assert f"from the folder {str(tiny_rgb_dir)!r}" in str(error.value) and "network" not in str(error.value)
