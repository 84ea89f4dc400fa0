"""Tests of alphavae.train and ``alphavae train-vae``: configs, the accelerate loop, exact resume, 2 processes."""

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from fixtures_io import assert_default_permissions
from safetensors.torch import load_file
from test_losses import _one_thread  # noqa: F401  (autouse: one torch thread for tiny models)

import alphavae.vae
from alphavae import io, losses
from alphavae.cli import main
from alphavae.testing import tiny_rgb_vae, tiny_vae_config
from alphavae.train import (
    CheckpointMismatchError,
    NonFiniteLossError,
    load_config,
    save_config,
    shipped_configs,
    train_vae,
)

PAPER_CONFIGS = ["vae_main", "vae_no_norm_kl", "vae_no_ref_kl", "vae_no_gan", "vae_no_lpips", "vae_naive_mse"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Soft-edged RGBA discs over colour gradients (40x48), a tiny RGB VAE, and a random AlexNet backbone."""
    root = tmp_path_factory.mktemp("train")
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 40), torch.linspace(-1, 1, 48), indexing="ij")
    for i in range(8):
        colours = torch.rand(3, 2, generator=g) * 2 - 1
        radius = ((xx - (i / 8 - 0.5)) ** 2 + yy**2).sqrt()
        alpha = (1 - ((radius - 0.4) / 0.3).clamp(0, 1)) * 2 - 1
        rgb = colours[:, :1, None] * (1 + xx) / 2 + colours[:, 1:, None] * (1 - xx) / 2
        io.save_rgba(torch.cat([rgb, alpha[None]]), root / "data" / f"img{i}.png")
    tiny_rgb_vae("flux").save_pretrained(root / "rgb_vae")
    from torchvision.models import alexnet

    torch.manual_seed(0)
    features = {k: v for k, v in alexnet().state_dict().items() if k.startswith("features.")}
    torch.save(features, root / "alexnet.pth")
    return root


def _overrides(assets, **extra):
    values = {"data.size": 32, "data.batch_size": 2, "data.num_workers": 0, "data.val_count": 2,
              "optim.max_steps": 2, "optim.warmup_steps": 1, "checkpoint_every": 2, "validate_every": 0,
              "loss.gan_start": 1, "loss.disc_channels": 8, "loss.lpips_backbone_path": str(assets / "alexnet.pth"),
              "loss.lpips_net": "alex",
              "data.source": str(assets / "data"), "model.vae": str(assets / "rgb_vae"), "mixed_precision": "no",
              "model.gradient_checkpointing": False, **extra}
    return [f"{k}={v}" for k, v in values.items()]


def test_shipped_configs_are_the_paper_settings():
    assert set(PAPER_CONFIGS) <= set(shipped_configs())
    main_config = load_config("vae_main")
    assert (main_config.loss.kl_weight, main_config.loss.ref_kl_weight, main_config.loss.lpips_weight) == (1e-6, 1e-16, 0.5)
    assert (main_config.loss.gan_start, main_config.data.blend_prob, tuple(main_config.optim.betas)) == (4000, 0.3, (0.5, 0.9))
    assert load_config("vae_naive_mse").loss.reconstruction == "mse"
    assert main_config.loss.lpips_net == "vgg"  # the reference code's LPIPS (taming-transformers: VGG16)
    assert main_config.mixed_precision == "auto"
    with pytest.raises(ValueError, match="mixed_precision"):
        load_config("vae_main", ["mixed_precision=fp8"])
    assert load_config("vae_no_gan").loss.gan_weight == 0
    assert {load_config(name).optim.disc_scheduler for name in PAPER_CONFIGS} == {"generator"}  # the reference's
    with pytest.raises(ValueError, match="unknown config key loss.kl_wieght"):
        load_config("vae_main", ["loss.kl_wieght=0"])
    with pytest.raises(FileNotFoundError, match="shipped"):
        load_config("vae_missing")


def test_overrides_are_read_as_the_fields_types():
    config = load_config("vae_main", ["optim.disc_lr=1e-5", "loss.background_mean=[1e-2, 0, 0]",
                                      "optim.betas=[0.5, 0.99]", "optim.max_grad_norm=null", "optim.max_steps=1000.0",
                                      "mixed_precision=no", 'model.vae="123"', "model.ref_vae=no",
                                      "ema=yes", "data.check_images=off", "data.source=12:30", "data.size=017",
                                      "loss.lpips_backgrounds=[black, [1, 2, 3]]"])
    assert config.optim.disc_lr == 1e-5 and isinstance(config.optim.disc_lr, float)
    assert config.loss.background_mean == (0.01, 0.0, 0.0) and config.optim.betas == (0.5, 0.99)
    assert config.optim.max_grad_norm is None and config.optim.max_steps == 1000 and config.mixed_precision == "no"
    assert config.model.vae == "123" and config.model.ref_vae == "no"  # YAML 1.2: `no` is text, not False
    assert (config.ema, config.data.check_images) == (True, False)  # YAML 1.1 words still read for boolean fields
    assert (config.data.source, config.data.size) == ("12:30", 17)  # not base-60 750 nor octal 15
    assert config.loss.lpips_backgrounds == ("black", (1.0, 2.0, 3.0))
    refused = {"optim.disc_lr=abc": "optim.disc_lr: cannot read 'abc' as float",
               "optim.betas=0.5": "give a list", "optim.betas=[0.5]": "expected 2 items",
               "loss.background_mean=[a, 0, 0]": r"loss.background_mean\[0\]", "loss.force_ref_kl=3": "true or false",
               "optim.max_steps=1.5": "as int", "optim.lr=null": "optim.lr: cannot read None", "data.source=[1]": "as str",
               "optim.max_steps=.inf": "cannot read inf as int", "optim.lr=1" + "0" * 400: r"cannot read \d+\.\.\. as float",
               "loss.kl_weight.x=1": "loss.kl_weight is a value, not a section", "data.crop=~": "cannot read None as str",
               "loss.lpips_backgrounds=[]": "non-empty", "loss.lpips_net=squeeze": "must be 'vgg' or 'alex'",
               "loss.lpips_backgrounds=[black, [1, 2]]": r"\[1, 2\] is neither",
               "optim.lr=[1,": r"override 'optim.lr=\[1,': not valid YAML \(while parsing",
               "optim.lr=.nan": "not a finite number", "model.vae=2024": "a number: quote text"}
    for override, message in refused.items():
        with pytest.raises(ValueError, match=message):
            load_config("vae_main", [override])


def test_config_files_that_are_not_text_are_named(tmp_path):
    """A Latin-1 config file gave Python's bare "'utf-8' codec can't decode byte 0xe9" (no file); a folder too."""
    (tmp_path / "latin1.yaml").write_bytes(b"optim:\n  caf\xe9: 1\n")
    with pytest.raises(ValueError, match=r"latin1.yaml: not UTF-8 text \(invalid continuation byte at byte 12\)"):
        load_config(tmp_path / "latin1.yaml")
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ValueError, match=r"folder.yaml: is a folder, not a config"):
        load_config(tmp_path / "folder.yaml")


def test_vae_main_trains_with_the_reference_codes_vgg_lpips(assets, tmp_path):
    """vae_main's LPIPS term is VGG16's (as taming-transformers' in the reference), from a torchvision state dict."""
    from torchvision.models import vgg16

    torch.manual_seed(0)
    torch.save({k: v for k, v in vgg16().state_dict().items() if k.startswith("features.")}, tmp_path / "vgg16.pth")
    overrides = {"loss.lpips_net": "vgg", "loss.lpips_backbone_path": str(tmp_path / "vgg16.pth"), "optim.max_steps": 1}
    result = train_vae(load_config("vae_main", _overrides(assets, **overrides)), tmp_path / "run")
    assert result.history[-1]["lpips"] > 0


def test_config_file_with_a_repeated_key_is_refused(tmp_path):
    """PyYAML keeps the last of two equal keys; a config file that repeats one is refused, naming file and key."""
    (tmp_path / "twice.yaml").write_text("data:\n  size: 64\ndata:\n  size: 128\n")
    with pytest.raises(ValueError, match=r"twice.yaml: not valid YAML .*found duplicate key 'data'"):
        load_config(tmp_path / "twice.yaml")
    (tmp_path / "inner.yaml").write_text("optim:\n  lr: 1.0e-4\n  lr: 2.0e-4\n")
    with pytest.raises(ValueError, match="found duplicate key 'lr'"):
        load_config(tmp_path / "inner.yaml")


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_each_paper_config_trains(assets, tmp_path, name):
    config = load_config(name, _overrides(assets, **{"loss.force_ref_kl": True}))  # computed despite 1e-16
    result = train_vae(config, tmp_path / "run")
    assert [entry["step"] for entry in result.history] == [1, 2]
    logged = set(result.history[-1])
    assert ("ref_kl" in logged) == (name != "vae_no_ref_kl")
    assert ("lpips" in logged) == (name != "vae_no_lpips")
    assert ("kl" in logged) == (name != "vae_no_norm_kl")
    assert ("gan" in logged) == (name != "vae_no_gan")
    assert ("mse" if name == "vae_naive_mse" else "abmse") in logged
    assert all(torch.isfinite(torch.tensor(v)) for v in result.history[-1].values())
    model = AutoencoderKL.from_pretrained(result.final_dir)
    assert model.config.in_channels == model.config.out_channels == 4
    assert load_config(result.final_dir / "train_config.yaml").loss == config.loss
    assert (tmp_path / "run" / "validation" / "step-00000002.png").is_file()
    validation = [json.loads(line) for line in (tmp_path / "run" / "validation" / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in validation] == [2]
    assert set(validation[0]) == {"step"} | {f"val/psnr_{bg}" for bg in ("checkerboard", "black", "white")}
    assert all(5 < validation[0][f"val/psnr_{bg}"] < 60 for bg in ("checkerboard", "black", "white"))


def _weights(folder):
    return load_file(Path(folder) / "diffusion_pytorch_model.safetensors")


def test_killed_run_resumed_by_cli_matches_uninterrupted_run(assets, tmp_path):
    overrides = _overrides(assets, **{"optim.max_steps": 4, "ema": True, "keep_checkpoints": 1})
    config = load_config("vae_main", overrides)
    full = train_vae(config, tmp_path / "full")
    stopped = train_vae(config, tmp_path / "killed", stop_after=3)
    assert stopped.final_dir is None and [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["step-00000002"]
    with open(tmp_path / "killed" / "history.jsonl", "a") as handle:
        handle.write('{"step": 4, "ab')  # a line cut short by the kill
    args = ["train-vae", "--config", "vae_main", "-o", str(tmp_path / "killed"), "--resume", "latest"]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    assert not list((tmp_path / "killed").glob("config-before-*"))  # resumed with the same settings
    history = [json.loads(line) for line in (tmp_path / "killed" / "history.jsonl").read_text().splitlines()]
    assert history == full.history  # step 3, run before the kill and again after the resume, is logged once
    full_weights, resumed_weights = _weights(full.final_dir), _weights(tmp_path / "killed" / "final")
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)
    with pytest.raises(FileExistsError, match="--resume latest"):
        train_vae(config, tmp_path / "full")


def test_resume_log_truncation_rewrites_only_when_lines_go(tmp_path):
    from alphavae.train.loop import _truncate_log

    log = tmp_path / "history.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n')
    inode = log.stat().st_ino
    _truncate_log(log, 2)
    assert log.stat().st_ino == inode and log.read_text() == '{"step": 1}\n{"step": 2}\n'
    _truncate_log(log, 1)
    assert log.read_text() == '{"step": 1}\n'


def test_validation_sees_the_exported_ema_weights(assets, tmp_path, monkeypatch):
    import alphavae.train.loop as loop

    validated, trained = [], []
    validate, export = loop.validate, loop._export

    def recording_validate(vae, *args):
        validated.append(vae.decoder.conv_out.weight.detach().clone())
        return validate(vae, *args)

    def recording_export(vae, *args):
        trained.append(vae.decoder.conv_out.weight.detach().clone())
        return export(vae, *args)

    monkeypatch.setattr(loop, "validate", recording_validate)
    monkeypatch.setattr(loop, "_export", recording_export)
    config = load_config("vae_no_gan", _overrides(assets, **{"optim.max_steps": 3, "ema": True, "ema_decay": 0.5}))
    result = train_vae(config, tmp_path / "run")
    exported = _weights(result.final_dir)["decoder.conv_out.weight"]
    assert len(validated) == 1 and torch.equal(validated[0], exported)  # the EMA weights, as exported
    assert not torch.equal(trained[0], exported)  # the training weights were restored after validation


def test_validation_ignores_the_colour_hidden_under_alpha_zero(tmp_path):
    """validate encoded the raw held-out pixels, so colour under alpha = 0 (kept by images that were not resized)
    changed the reconstructions and metrics of images that look the same."""
    from types import SimpleNamespace

    from alphavae.testing import tiny_rgba_vae
    from alphavae.train.loop import validate

    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 4, 32, 32, generator=g) * 2 - 1
    pixels[:, 3, :16] = -1  # the top half transparent
    other = pixels.clone()
    other[:, :3, :16] = torch.rand(2, 3, 16, 32, generator=g) * 2 - 1  # other colour under alpha = 0
    grids = []
    tracker = SimpleNamespace(add_image=lambda tag, image, step: grids.append(image))
    accelerator = SimpleNamespace(device=torch.device("cpu"), get_tracker=lambda *args, **kwargs: tracker)
    vae = tiny_rgba_vae("flux", random_alpha=True)
    metrics = [validate(vae, batch, 1, tmp_path / name, accelerator) for name, batch in (("a", pixels), ("b", other))]
    assert metrics[0] == metrics[1] and torch.equal(grids[0], grids[1])  # grids: targets and reconstructions


@pytest.mark.slow
def test_two_processes_match_one_process_at_same_global_batch(assets, tmp_path):
    overrides = _overrides(assets, **{"optim.max_steps": 2, "data.batch_size": 1})
    bin_dir = str(Path(sys.executable).parent)
    command = [shutil.which("torchrun", path=bin_dir), "--standalone", "--nproc_per_node", "2", shutil.which("alphavae", path=bin_dir),
               "train-vae", "--config", "vae_no_gan", "-o", str(tmp_path / "two")]
    command += [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("trained 2 steps") == 1  # the main process's summary only
    single = train_vae(load_config("vae_no_gan", _overrides(assets, **{"optim.max_steps": 2})), tmp_path / "one")
    two = [json.loads(line) for line in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    for a, b in zip(single.history, two, strict=True):
        assert a.keys() == b.keys()
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
    one_weights, two_weights = _weights(single.final_dir), _weights(tmp_path / "two" / "final")
    assert all(torch.allclose(one_weights[k], two_weights[k], rtol=1e-5, atol=1e-7) for k in one_weights)


def _nan_on(steps):
    original = losses.Objective.generator_loss

    def generator_loss(self, model, pixels, noise, *, step, **kwargs):
        loss, logs, reconstruction = original(self, model, pixels, noise, step=step, **kwargs)
        return (loss * float("nan") if step in steps else loss), logs, reconstruction

    return generator_loss


def test_nonfinite_loss_skips_step_and_aborts_after_a_streak(assets, tmp_path, monkeypatch):
    monkeypatch.setattr(losses.Objective, "generator_loss", _nan_on({0}))
    config = load_config("vae_no_gan", _overrides(assets, checkpoint_every=1, **{"optim.warmup_steps": 0}))
    before = _weights(assets / "rgb_vae")["decoder.conv_in.weight"]
    skipped = train_vae(config, tmp_path / "skip", stop_after=1)
    assert skipped.skipped_steps == 1 and skipped.history == []
    result = train_vae(config, tmp_path / "skip", resume="latest")
    assert result.skipped_steps == 0 and [e["step"] for e in result.history] == [2]
    assert not torch.equal(before, _weights(result.final_dir)["decoder.conv_in.weight"])
    monkeypatch.setattr(losses.Objective, "generator_loss", _nan_on({0, 1, 2}))
    with pytest.raises(NonFiniteLossError, match="2 consecutive"):
        train_vae(load_config("vae_no_gan", _overrides(assets, max_nonfinite=2)), tmp_path / "abort")


def test_logged_rate_is_the_steps_own_and_a_skipped_step_advances_the_schedule(assets, tmp_path, monkeypatch):
    """history.jsonl logged the rate of the next step (read after scheduler.step()), and a step skipped for a
    non-finite loss did not advance the schedule, so every later step ran at the rate of the step before it."""
    settings = {"optim.scheduler": "linear", "optim.warmup_steps": 2, "optim.max_steps": 4, "optim.lr": 1e-3,
                "loss.lpips_weight": 0}
    config = load_config("vae_no_gan", _overrides(assets, **settings))
    run = train_vae(config, tmp_path / "run")
    assert [entry["lr"] for entry in run.history] == pytest.approx([0, 5e-4, 1e-3, 5e-4])  # warm-up 2, then linear
    monkeypatch.setattr(losses.Objective, "generator_loss", _nan_on({1}))
    skipped = train_vae(config, tmp_path / "skip")
    assert skipped.skipped_steps == 1 and [entry["step"] for entry in skipped.history] == [1, 3, 4]
    assert [entry["lr"] for entry in skipped.history] == pytest.approx([0, 1e-3, 5e-4])


def _infinite_gradients_on(steps):
    """``Objective.generator_loss`` whose loss stays finite but sends infinite gradients back at ``steps``."""
    original = losses.Objective.generator_loss

    def generator_loss(self, model, pixels, noise, *, step, **kwargs):
        loss, logs, reconstruction = original(self, model, pixels, noise, step=step, **kwargs)
        if step in steps:
            loss.register_hook(lambda grad: grad * float("inf"))
        return loss, logs, reconstruction

    return generator_loss


@pytest.mark.parametrize("max_grad_norm", [1.0, 0])
def test_a_nonfinite_gradient_norm_skips_the_step_like_a_nonfinite_loss(assets, tmp_path, monkeypatch, caplog,
                                                                        max_grad_norm):
    """Only the loss was checked: a finite loss with infinite gradients was clipped to NaN gradients and stepped,
    leaving NaN weights (AdamW moments too). Also with clipping off (the norm is computed for the check)."""
    settings = {"optim.max_grad_norm": max_grad_norm, "optim.warmup_steps": 0, "loss.lpips_weight": 0}
    monkeypatch.setattr(losses.Objective, "generator_loss", _infinite_gradients_on({0}))
    with caplog.at_level("WARNING", logger="alphavae.train.loop"):
        result = train_vae(load_config("vae_no_gan", _overrides(assets, **settings)), tmp_path / "run")
    assert result.skipped_steps == 1 and [entry["step"] for entry in result.history] == [2]
    assert "step 1: non-finite gradient norm, step skipped (1 in a row)" in caplog.text
    assert all(torch.isfinite(weight).all() for weight in _weights(result.final_dir).values())
    monkeypatch.setattr(losses.Objective, "generator_loss", _infinite_gradients_on({0, 1, 2}))
    with pytest.raises(NonFiniteLossError, match=r"2 consecutive steps with a non-finite gradient norm \(last: step 2"):
        train_vae(load_config("vae_no_gan", _overrides(assets, max_nonfinite=2, **settings)), tmp_path / "abort")


def test_an_fp16_gradient_overflow_lowers_the_loss_scale_and_training_goes_on(assets, tmp_path, monkeypatch):
    """fp16 overflows the scaled gradients now and then: the gradient scaler must see the step to skip it and lower
    its scale. The step skipped for a non-finite gradient norm never reached the scaler, so its scale stayed too
    high and the next step's unscaling raised "unscale_() has already been called ... since the last update()".
    This CPU has no fp16 scaler, so the test gives accelerate one (its fp16 runs on CUDA); step 1 overflows."""
    import alphavae.train.loop

    class WithScaler(alphavae.train.loop.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.native_amp, self.scaler = True, torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)

        def prepare(self, *args, **kwargs):  # no fp16 autocast of the forward here: the CPU's fp16 kernels give NaN
            self.native_amp = False
            try:
                return super().prepare(*args, **kwargs)
            finally:
                self.native_amp = True

        def autocast(self, *args, **kwargs):
            return contextlib.nullcontext()

    monkeypatch.setattr(alphavae.train.loop, "Accelerator", WithScaler)
    monkeypatch.setattr(losses.Objective, "generator_loss", _infinite_gradients_on({0, 1}))
    settings = {"mixed_precision": "fp16", "optim.max_steps": 4, "loss.lpips_weight": 0, "checkpoint_every": 1,
                "max_nonfinite": 2}  # two overflows in a row are the scaler's business, not a non-finite streak
    result = train_vae(load_config("vae_no_gan", _overrides(assets, **settings)), tmp_path / "run")
    assert result.skipped_steps == 2 and [entry["step"] for entry in result.history] == [3, 4]
    scaler = torch.load(tmp_path / "run" / "checkpoints" / "step-00000004" / "scaler.pt", weights_only=True)
    assert scaler["scale"] == 2.0 ** 14  # halved twice, by the overflows of steps 1 and 2
    assert all(torch.isfinite(weight).all() for weight in _weights(result.final_dir).values())


def test_rgb_stage_from_scratch_with_bf16_and_checkpointing(assets, tmp_path):
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text(json.dumps(tiny_vae_config("flux")))
    overrides = _overrides(assets, **{"model.vae": "null", "model.init_config": str(tmp_path / "init" / "config.json"),
                                      "model.in_channels": 3, "mixed_precision": "bf16",
                                      "model.gradient_checkpointing": True})
    result = train_vae(load_config("vae_no_ref_kl", overrides), tmp_path / "rgb")
    assert {"mse", "lpips", "kl", "gan", "disc"} <= set(result.history[-1]) and "abmse" not in result.history[-1]
    assert AutoencoderKL.from_pretrained(result.final_dir).config.in_channels == 3


def test_cli_print_config_and_bad_inputs(assets, tmp_path, capsys):
    assert main(["train-vae", "--config", "vae_no_gan", "-o", str(tmp_path), "--print-config",
                 "--set", "loss.kl_weight=1e-5", "--data", str(assets / "data")]) == 0
    printed = capsys.readouterr().out
    assert "kl_weight: 1.0e-05" in printed and f"source: {assets / 'data'}" in printed
    assert main(["train-vae", "-o", str(assets / "data" / "run"), "--data", str(assets / "data"),
                 "--vae", str(assets / "rgb_vae")]) == 2
    assert "inside input folder" in capsys.readouterr().err
    missing = tmp_path / "no-such-data"
    assert main(["train-vae", "-o", str(tmp_path / "run"), "--data", str(missing), "--vae", str(assets / "rgb_vae")]) == 2
    assert f"data source {missing} (data.source / --data) does not exist" in capsys.readouterr().err
    assert main(["train-vae", "-o", str(tmp_path / "run"), "--set", "data.alpha_scale_min=2", "--print-config"]) == 2
    assert "data.alpha_scale_min must be in [0, 1], got 2" in capsys.readouterr().err


def test_rgba_source_uses_separate_reference_for_ref_kl(assets, tmp_path, tiny_rgba_dir):
    overrides = _overrides(assets, **{"model.vae": str(tiny_rgba_dir), "loss.force_ref_kl": True, "optim.max_steps": 1,
                                      "loss.lpips_weight": 0})
    with pytest.raises(ValueError, match="reference RGB VAE"):
        train_vae(load_config("vae_no_gan", overrides), tmp_path / "no_ref")
    config = load_config("vae_no_gan", overrides + [f"model.ref_vae={assets / 'rgb_vae'}"])
    assert "ref_kl" in train_vae(config, tmp_path / "ref").history[-1]
    with pytest.raises(ValueError, match="4-channel VAE cannot be trained with model.in_channels=3"):
        train_vae(load_config("vae_no_gan", overrides + ["model.in_channels=3"]), tmp_path / "rgb")


def test_unreadable_image_is_left_out_and_reported(assets, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(assets / "data", data)
    (data / "aaa_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    args = ["train-vae", "--config", "vae_no_gan", "-o", str(tmp_path / "run")]
    overrides = _overrides(assets, **{"data.source": str(data), "optim.max_steps": 1, "loss.lpips_weight": 0})
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 1
    err = capsys.readouterr().err
    assert "1 unreadable image(s) left out" in err and "aaa_broken.png" in err
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    assert_default_permissions(tmp_path / "run" / "final")


def test_gradient_accumulation_matches_larger_batch(assets, tmp_path):
    big = train_vae(load_config("vae_no_gan", _overrides(assets)), tmp_path / "big")
    accumulated = train_vae(load_config("vae_no_gan", _overrides(assets, **{
        "data.batch_size": 1, "optim.gradient_accumulation": 2})), tmp_path / "accumulated")
    for a, b in zip(big.history, accumulated.history, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
    big_weights, acc_weights = _weights(big.final_dir), _weights(accumulated.final_dir)
    assert all(torch.allclose(big_weights[k], acc_weights[k], rtol=1e-5, atol=1e-7) for k in big_weights)


MINI_RECIPES = Path(__file__).resolve().parents[1] / "models" / "alphavae-mini"


@pytest.mark.parametrize("recipe", ["stage1_rgb", "stage2_rgba", "stage2_naive_mse", "preliminary_rgba"])
def test_alphavae_mini_recipes_parse(recipe, tmp_path):
    config = load_config(MINI_RECIPES / f"{recipe}.yaml")
    assert config.model.in_channels == (3 if recipe == "stage1_rgb" else 4)
    assert config.loss.reconstruction == ("abmse" if recipe in ("stage2_rgba", "preliminary_rgba") else "mse")
    # as the shipped runs trained (model card): no LPIPS (no AlexNet weights here), recorded autocast
    assert config.loss.lpips_weight == 0
    assert config.loss.gan_weight == (0 if recipe == "stage1_rgb" else 0.5)  # pinned: vae_main's default is now 1
    assert config.optim.disc_scheduler == "constant"  # pinned: vae_main follows the reference's schedule
    assert config.mixed_precision == ("no" if recipe.startswith("stage2") else "bf16")
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config  # what a run writes as RUN/config.yaml loads back equal


_FAKE_ALPHAVAE = """
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_ALPHAVAE_CALLS"], "a") as log:
    log.write(json.dumps(args) + "\\n")
out = Path(args[args.index("-o") + 1]) if "-o" in args else None
sets = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")
if args[:2] == ["data", "fetch"]:
    out.mkdir(parents=True)
    (out / "manifest.jsonl").write_text("")
elif args[0] == "train-vae":
    (out / "checkpoints" / f"step-{int(sets['optim.max_steps']):08d}").mkdir(parents=True, exist_ok=True)
    (out / "final").mkdir(exist_ok=True)
elif args[:2] == ["data", "export"]:
    out.mkdir(parents=True)
elif args[0] == "eval-vae":
    out.mkdir(parents=True)
    (out / "report.json").write_text("{}")
"""


def test_alphavae_mini_train_script_runs_every_phase_and_the_shipped_settings(tmp_path):
    """``models/alphavae-mini/train.sh`` with a recording stand-in for ``alphavae``: the phases run in order, and
    its last ABMSE command (phase 11) gives exactly the shipped ``train_config.yaml`` (paths aside)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "alphavae").write_text(f"#!{sys.executable}\n{_FAKE_ALPHAVAE}")
    (bin_dir / "alphavae").chmod(0o755)
    calls_file = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_ALPHAVAE_CALLS": str(calls_file)}
    runs = tmp_path / "runs"
    subprocess.run(["bash", str(MINI_RECIPES / "train.sh"), str(tmp_path / "data"), str(runs)], env=env, check=True)
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    outputs = [c[c.index("-o") + 1] for c in calls if c[0] == "train-vae"]
    abmse = [Path(o).name for o in outputs if "naive" not in o]
    assert abmse == ["stage1"] + ["stage2"] * 8 + ["stage2-phase8", "stage2-phase9", "stage2-phase10",
                                                           "stage2-phase11"]
    assert [Path(o).name for o in outputs if "naive" in o][-4:] == [
        "stage2-naive-phase8", "stage2-naive-phase9", "stage2-naive-phase10", "stage2-naive-phase11"]
    assert ["latent-factors", str(runs / "stage2-phase11" / "final"), str(runs / "val-split"), "--limit", "512",
            "--write"] in calls
    assert {c[c.index("--vae") + 1] for c in calls if c[0] == "eval-vae"} == {
        str(runs / "stage2-phase11" / "final"), str(runs / "stage2-naive-phase11" / "final")}

    for call in (c for c in calls if c[0] == "train-vae"):  # every command's settings pass today's config checks
        load_config(call[call.index("--config") + 1], [call[i + 1] for i, a in enumerate(call) if a == "--set"])
    last = next(c for c in calls if c[0] == "train-vae" and c[c.index("-o") + 1] == str(runs / "stage2-phase11"))
    assert last[last.index("--vae") + 1] == str(runs / "stage2-phase10" / "final")
    sets = [last[i + 1] for i, a in enumerate(last) if a == "--set"]
    recipe = load_config(last[last.index("--config") + 1], sets + ["model.vae=RUNS/stage2-phase10/final",
                                                                      "data.source=DATA/manifest.jsonl"])
    assert recipe == load_config(alphavae.vae.DEFAULT_MODEL_DIR / "train_config.yaml")


def test_alphavae_mini_train_script_can_train_the_naive_comparison_alone(tmp_path):
    """``STAGE2_RUNS=naive`` trains and scores only the naive-MSE run (all its phases); an unknown run, one named
    twice or none is refused."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "alphavae").write_text(f"#!{sys.executable}\n{_FAKE_ALPHAVAE}")
    (bin_dir / "alphavae").chmod(0o755)
    calls_file = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_ALPHAVAE_CALLS": str(calls_file),
           "STAGE2_RUNS": "naive"}
    runs = tmp_path / "runs"
    subprocess.run(["bash", str(MINI_RECIPES / "train.sh"), str(tmp_path / "data"), str(runs)], env=env, check=True)
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    outputs = [Path(c[c.index("-o") + 1]).name for c in calls if c[0] == "train-vae"]
    assert outputs == ["stage1"] + ["stage2-naive"] * 8 + [f"stage2-naive-phase{i}" for i in (8, 9, 10, 11)]
    assert not [c for c in calls if c[0] == "latent-factors"]
    assert [c[c.index("--vae") + 1] for c in calls if c[0] == "eval-vae"] == [
        str(runs / "stage2-naive-phase11" / "final")]

    bad = subprocess.run(["bash", str(MINI_RECIPES / "train.sh"), str(tmp_path / "data"), str(runs)],
                         env={**env, "STAGE2_RUNS": "naive abmse-typo"}, capture_output=True, text=True)
    assert bad.returncode == 2 and "not 'abmse-typo'" in bad.stderr
    for runs_named, message in (("naive naive", "names 'naive' twice"), (" ", "names no run")):
        # twice: both runs trained into one folder at once; none: nothing trained, and the script succeeded
        bad = subprocess.run(["bash", str(MINI_RECIPES / "train.sh"), str(tmp_path / "data"), str(runs)],
                             env={**env, "STAGE2_RUNS": runs_named}, capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr, runs_named


def test_native_resolution_crops_from_scratch(assets, tmp_path):
    """data.resize_short_side=false: crops at native resolution (the preliminary alphavae-mini recipe)."""
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text(json.dumps(tiny_vae_config("flux")))
    overrides = _overrides(assets, **{"model.vae": "null", "model.init_config": str(tmp_path / "init" / "config.json"),
                                      "data.resize_short_side": False, "optim.warmup_steps": 0,
                                      "optim.decay_steps": 2})
    config = load_config(MINI_RECIPES / "preliminary_rgba.yaml", overrides)
    result = train_vae(config, tmp_path / "run")
    assert config.data.resize_short_side is False and len(result.history) == 2
    assert [entry["lr"] for entry in result.history] == [config.optim.lr, config.optim.lr / 2]  # the rates used
    assert AutoencoderKL.from_pretrained(result.final_dir).config.in_channels == 4


def _lrs(optim, steps):
    from alphavae.train.loop import lr_schedule
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    schedule, lrs = lr_schedule(optimizer, optim), []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def test_lr_schedule_linear_decay_over_the_final_steps():
    from alphavae.train.config import OptimConfig
    constant = OptimConfig(lr=1.0, scheduler="constant", warmup_steps=0, max_steps=10, decay_steps=4)
    assert _lrs(constant, 11) == pytest.approx([1, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0])
    warm = OptimConfig(lr=1.0, scheduler="constant_with_warmup", warmup_steps=2, max_steps=6, decay_steps=2)
    assert _lrs(warm, 7) == pytest.approx([0, 0.5, 1, 1, 1, 0.5, 0])
    plain = OptimConfig(lr=1.0, scheduler="constant", warmup_steps=0, max_steps=4)
    assert _lrs(plain, 4) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="constant_with_warmup"):
        OptimConfig(scheduler="constant", warmup_steps=100)
    with pytest.raises(ValueError, match="decay_steps"):
        OptimConfig(max_steps=10, decay_steps=11)


def _reference_discriminator_rates(name: str, rate: float, *, warmup_steps: int, steps: int) -> list[float]:
    """The rates of the reference train_vae.py's ``lr_scheduler_discriminator`` (``get_scheduler(name)`` on the
    discriminator's optimiser at ``rate``) over its ``steps`` GAN steps."""
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=rate)
    reference, rates = get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps), []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    return rates


def test_discriminator_rate_follows_the_generators_schedule_from_gan_start_or_stays_constant():
    """The reference gives the discriminator its own get_scheduler (the generator's type, warm-up warmup_steps,
    max_steps - gan_start steps), stepped on GAN steps only; the rate was constant here."""
    from alphavae.train.config import OptimConfig
    from alphavae.train.loop import discriminator_schedule

    linear = OptimConfig(lr=2.0, disc_lr=1.0, scheduler="linear", warmup_steps=2, max_steps=10,
                         disc_scheduler="generator")
    rate = discriminator_schedule(linear, gan_start=4)
    assert [rate(step) for step in range(4, 10)] == pytest.approx([0, 0.5, 1, 0.75, 0.5, 0.25])
    cosine = OptimConfig(lr=3.0, scheduler="cosine", warmup_steps=3, max_steps=20, disc_scheduler="generator")
    expected = _reference_discriminator_rates("cosine", 3.0, warmup_steps=3, steps=12)  # its first GAN step: 8
    assert [discriminator_schedule(cosine, gan_start=8)(step) for step in range(8, 20)] == pytest.approx(expected)
    constant = OptimConfig(lr=2.0, disc_lr=1.0, scheduler="linear", warmup_steps=2, max_steps=10)
    assert constant.disc_scheduler == "constant"  # today's behaviour stays the default of the dataclass
    assert [discriminator_schedule(constant, gan_start=4)(step) for step in range(4, 10)] == [1.0] * 6
    with pytest.raises(ValueError, match=r"optim.disc_scheduler must be one of \('constant', 'generator'\)"):
        OptimConfig(disc_scheduler="cosine")


def test_a_polynomial_discriminator_schedule_decays_to_the_end_rate_as_the_reference():
    """diffusers' polynomial factor is relative to the optimiser's initial rate (its lr_end, 1e-7, is absolute): the
    schedule was built on a stand-in optimiser at rate 1, so the discriminator decayed to disc_lr * 1e-7, not 1e-7."""
    from alphavae.train.config import OptimConfig
    from alphavae.train.loop import discriminator_schedule

    optim = OptimConfig(lr=1e-4, disc_lr=1e-6, scheduler="polynomial", warmup_steps=2, max_steps=12,
                        disc_scheduler="generator")
    expected = _reference_discriminator_rates("polynomial", 1e-6, warmup_steps=2, steps=8)  # its first GAN step: 4
    assert [discriminator_schedule(optim, gan_start=4)(step) for step in range(4, 12)] == pytest.approx(expected)
    assert expected[-1] == pytest.approx(2.5e-7)  # 1e-7 + (1e-6 - 1e-7) / 6


def test_a_run_trains_the_discriminator_at_its_scheduled_rates_and_resumes_exactly(assets, tmp_path):
    """vae_main follows the reference's discriminator schedule; the rates are a function of the step, so a run
    stopped and resumed (nothing new in its checkpoints) trains both networks as an uninterrupted one."""
    settings = {"optim.max_steps": 4, "optim.scheduler": "linear", "loss.lpips_weight": 0, "optim.lr": 1e-3}
    config = load_config("vae_main", _overrides(assets, checkpoint_every=1, **settings))
    assert config.optim.disc_scheduler == "generator"
    full = train_vae(config, tmp_path / "full")
    # GAN from step 2 (1-based): warm-up 1 step, then linear over the remaining 3 - 1 steps
    assert [entry.get("disc_lr") for entry in full.history] == [None, 0.0, 1e-3, 5e-4]
    train_vae(config, tmp_path / "resumed", stop_after=2)
    resumed = train_vae(config, tmp_path / "resumed", resume="latest")
    assert resumed.history == full.history[2:]
    for name in ("model.safetensors", "model_1.safetensors"):  # the autoencoder, the discriminator
        saved = [load_file(run / "checkpoints" / "step-00000004" / name) for run in (tmp_path / "full",
                                                                                      tmp_path / "resumed")]
        assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0]), name
    constant = load_config("vae_main", _overrides(assets, **settings, **{"optim.disc_scheduler": "constant",
                                                                          "optim.disc_lr": 3e-4}))
    steady = train_vae(constant, tmp_path / "constant")
    assert [entry.get("disc_lr") for entry in steady.history] == [None, 3e-4, 3e-4, 3e-4]


def test_fp16_with_the_patchgan_is_refused_before_the_models_load(assets, tmp_path, monkeypatch):
    """fp16 gives accelerate one gradient scaler, which the autoencoder and the discriminator shared: updated twice a
    step, the discriminator's gradients unscaled wrongly. Refused while the PatchGAN trains, also when "auto" would
    resolve to fp16 (on CUDA; resolved here by a stand-in)."""
    import alphavae.train.loop as loop
    from alphavae.train.loop import training_precision

    with pytest.raises(ValueError, match=r"^mixed_precision fp16 \(config 'fp16'\) cannot train the PatchGAN "
                                         r"\(loss.gan_weight > 0\).*use mixed_precision bf16 or no \(float32\)"):
        training_precision(load_config("vae_main", ["mixed_precision=fp16"]), "cuda")
    assert training_precision(load_config("vae_no_gan", ["mixed_precision=fp16"]), "cuda") == "fp16"
    never = load_config("vae_main", ["mixed_precision=fp16", "loss.gan_start=30000"])  # starts after the last step
    assert training_precision(never, "cuda") == "fp16"
    assert training_precision(load_config("vae_main", ["mixed_precision=bf16"]), "cuda") == "bf16"
    monkeypatch.setattr(loop, "autocast_precision", lambda name, device: "fp16")
    with pytest.raises(ValueError, match=r"mixed_precision fp16 \(config 'auto'\)"):
        training_precision(load_config("vae_main"), "cuda")
    monkeypatch.setattr(loop, "load_models", lambda *a, **k: pytest.fail("models loaded first"))
    with pytest.raises(ValueError, match=r"config 'no'\) cannot train the PatchGAN"):
        train_vae(load_config("vae_main", _overrides(assets)), tmp_path / "run")


def test_config_rejects_out_of_range_numbers():
    refused = {"optim.gradient_accumulation=0": "optim.gradient_accumulation must be >= 1, got 0",
               "optim.max_steps=0": "optim.max_steps must be >= 1, got 0",
               "optim.max_steps=-5": "optim.max_steps must be >= 1, got -5",  # not optim.decay_steps
               "loss.kl_weight=-1": r"loss.kl_weight must be >= 0, got -1.0",
               "loss.gan_weight=-0.5": "loss.gan_weight must be >= 0", "checkpoint_every=-1": "checkpoint_every must be >= 1",
               "checkpoint_every=0": "checkpoint_every must be >= 1", "data.val_count=-1": "data.val_count must be >= 0",
               "data.size=0": "data.size must be >= 1", "data.batch_size=0": "data.batch_size must be >= 1",
               "optim.lr=-1": "optim.lr must be >= 0", "optim.betas=[0.5, 1]": r"optim.betas must be in \[0, 1\)",
               "optim.max_grad_norm=-1": "optim.max_grad_norm must be >= 0", "ema_decay=2": r"ema_decay must be in \[0, 1\]",
               "log_every=0": "log_every must be >= 1", "seed=-1": "seed must be >= 0",
               "loss.background_square=[0.3, 0.3, -0.1]": r"loss.background_square must be in \[0, 1\]",
               "optim.scheduler=cosinus": "optim.scheduler must be one of .*'cosine'",  # before any model loads
               "optim.scheduler=piecewise_constant": "optim.scheduler must be one of"}
    for override, message in refused.items():
        with pytest.raises(ValueError, match=message):
            load_config("vae_main", [override])
    accepted = load_config("vae_main", ["optim.max_grad_norm=null", "data.val_count=0", "validate_every=0",
                                        "loss.kl_weight=0", "keep_checkpoints=0", "optim.warmup_steps=0"])
    assert (accepted.optim.max_grad_norm, accepted.data.val_count, accepted.keep_checkpoints) == (None, 0, 0)


def test_patchgan_smallest_input_is_computed_from_its_layers():
    from alphavae.train.loop import _smallest_input

    for layers in range(5):
        disc = losses.PatchDiscriminator(4, 8, layers)
        side = _smallest_input(disc)
        assert disc(torch.zeros(2, 4, side, side)).shape[-1] == 1
        with pytest.raises(RuntimeError):
            disc(torch.zeros(2, 4, side - 1, side - 1))
    assert _smallest_input(losses.PatchDiscriminator()) == 24


def test_data_size_must_fit_the_vae_and_the_active_loss_terms(assets, tmp_path):
    no_lpips = {"loss.lpips_weight": 0}
    refused = [({"data.size": 12, **no_lpips}, "data.size=12 must be a multiple of 8, the VAE's downsampling"),
               ({"data.size": 33, **no_lpips}, "data.size=33 must be a multiple of 8"),
               ({"data.size": 16, **no_lpips}, "data.size=16 is too small for the PatchGAN .*at least 24"),
               ({"data.size": 16, "loss.gan_weight": 0}, "data.size=16 is too small for the LPIPS .*at least 31")]
    for overrides, message in refused:
        with pytest.raises(ValueError, match=message):
            train_vae(load_config("vae_main", _overrides(assets, **overrides)), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    late_gan = load_config("vae_main", _overrides(assets, **{"data.size": 16, "loss.gan_start": 2, **no_lpips}))
    assert train_vae(late_gan, tmp_path / "late-gan", stop_after=1).step == 1  # the GAN never runs by step 2
    from alphavae.train.loop import _check_crop_size

    vgg = losses.Objective(losses.LossConfig(gan_weight=0, ref_kl_weight=0),
                           lpips_metric=losses.build_lpips(random_backbone=True, net="vgg"))
    with pytest.raises(ValueError, match="data.size=8 is too small for the LPIPS term's vgg backbone .*at least 16"):
        _check_crop_size(8, 8, vgg, last_step=0)
    _check_crop_size(16, 8, vgg, last_step=0)  # VGG16 takes 16 px (AlexNet: 31)


def test_reference_vae_must_fit_the_trained_vae(assets, tmp_path, tiny_rgba_dir):
    from alphavae.train import ModelConfig, load_models

    tiny_rgb_vae("sd1").save_pretrained(tmp_path / "sd1")
    for reference, message in [(tmp_path / "sd1", r"it has latent channels 4 \(needs 16\)$"),
                               (tiny_rgba_dir, r"it has input channels 4 \(needs 3\)$")]:
        with pytest.raises(ValueError, match=f"{reference}: the Ref-KL reference .*{message}"):
            load_models(ModelConfig(vae=str(tiny_rgba_dir), ref_vae=str(reference)))
    _, fitting = load_models(ModelConfig(vae=str(tiny_rgba_dir), ref_vae=str(assets / "rgb_vae")))
    assert fitting.config.in_channels == 3


def test_damaged_checkpoint_is_named_with_a_way_back(assets, tmp_path, capsys):
    overrides = _overrides(assets, checkpoint_every=1, **{"loss.lpips_weight": 0})
    train_vae(load_config("vae_main", overrides), tmp_path / "run", stop_after=2)
    weights = tmp_path / "run" / "checkpoints" / "step-00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    args = ["train-vae", "-o", str(tmp_path / "run"), "--resume"]
    sets = [a for o in overrides for a in ("--set", o)]
    capsys.readouterr()
    assert main(args + ["latest"] + sets) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alphavae train-vae: error: {weights}: damaged checkpoint file") and err.count("\n") == 1
    assert f"delete {weights.parent} and rerun with --resume latest to continue from step-00000001" in err
    assert main(args + [str(weights.parent)] + sets) == 2
    assert f"{weights}: damaged checkpoint file" in capsys.readouterr().err


def _damage(path: Path, damage: str) -> str:
    """Lose, cut or change (one byte flipped, same size) ``path``; the resume error expected for it."""
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
        return "damaged checkpoint, this file of it is missing"
    if damage == "truncated":
        path.write_bytes(data[:-1])
        return rf"damaged checkpoint file \({len(data) - 1} bytes, {len(data)} when saved\)"
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    return r"damaged checkpoint file \(its bytes changed since it was saved: another sha256\)"


@pytest.mark.parametrize("damage", ["missing", "truncated", "changed"])
@pytest.mark.parametrize("name", ["model_1.safetensors", "random_states_0.pkl"])
def test_checkpoint_that_lost_cut_or_changed_a_file_is_named(assets, tmp_path, name, damage):
    """The file list saved with a checkpoint finds what load_state would miss or report in its own words: a
    lost discriminator file, a cut-short RNG state (which would otherwise resume with other random numbers),
    a byte changed in place (same size: only the sha256 sees it)."""
    overrides = _overrides(assets, checkpoint_every=1, **{"loss.lpips_weight": 0})
    train_vae(load_config("vae_main", overrides), tmp_path / "run", stop_after=1)
    path = tmp_path / "run" / "checkpoints" / "step-00000001" / name
    message = _damage(path, damage)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        train_vae(load_config("vae_main", overrides), tmp_path / "run", resume="latest")


def test_checkpoint_listing_sizes_only_still_resumes_and_checks_sizes(assets, tmp_path):
    """Checkpoints saved before the sha256 digests list plain sizes: they resume, and a cut file is named."""
    overrides = _overrides(assets, checkpoint_every=1, **{"loss.lpips_weight": 0, "optim.max_steps": 2})
    train_vae(load_config("vae_main", overrides), tmp_path / "run", stop_after=1)
    state_file = tmp_path / "run" / "checkpoints" / "step-00000001" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "files": {k: v["bytes"] for k, v in state["files"].items()}}))
    path = state_file.parent / "random_states_0.pkl"
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(ValueError, match=f"{path}: damaged checkpoint file"):
        train_vae(load_config("vae_main", overrides), tmp_path / "run", resume="latest")
    path.write_bytes(data)
    assert train_vae(load_config("vae_main", overrides), tmp_path / "run", resume="latest").final_dir.is_dir()


def test_ctrl_c_removes_the_partial_checkpoint_and_says_how_to_resume(assets, tmp_path, capsys, monkeypatch):
    from accelerate import Accelerator

    save_state, saves = Accelerator.save_state, []

    def interrupted_save(self, folder, *args, **kwargs):
        saves.append(folder)
        save_state(self, folder, *args, **kwargs)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Accelerator, "save_state", interrupted_save)
    overrides = _overrides(assets, checkpoint_every=1, **{"optim.max_steps": 3, "loss.lpips_weight": 0})
    run = tmp_path / "run"
    assert main(["train-vae", "-o", str(run)] + [a for o in overrides for a in ("--set", o)]) == 130
    err = capsys.readouterr().err
    assert (f"interrupted; the newest complete checkpoint is step 1 ({run / 'checkpoints' / 'step-00000001'}):"
            " rerun with --resume latest") in err and "Traceback" not in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]


def test_a_temporary_checkpoint_left_by_a_kill_is_removed_by_the_next_save(assets, tmp_path):
    leftover = tmp_path / "run" / "checkpoints" / ".tmp-step-00000007"  # a kill while saving step 7
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"partial")
    overrides = _overrides(assets, checkpoint_every=1, **{"optim.max_steps": 1, "loss.lpips_weight": 0})
    train_vae(load_config("vae_no_gan", overrides), tmp_path / "run")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-00000001"]


def test_a_failing_final_validation_keeps_the_exported_model(assets, tmp_path, monkeypatch):
    """The last validation ran before the export: a grid that could not be written lost the run's model."""
    import alphavae.train.loop

    def unwritable(*args, **kwargs):
        raise OSError("validation grid: No space left on device")

    monkeypatch.setattr(alphavae.train.loop, "validate", unwritable)
    overrides = _overrides(assets, **{"optim.max_steps": 1, "loss.lpips_weight": 0})
    with pytest.raises(OSError, match="No space left"):
        train_vae(load_config("vae_no_gan", overrides), tmp_path / "run")
    assert AutoencoderKL.from_pretrained(tmp_path / "run" / "final").config.in_channels == 4


def test_a_warmup_longer_than_the_run_is_one_warning_line(assets, tmp_path, capsys):
    overrides = _overrides(assets, **{"optim.max_steps": 1, "optim.warmup_steps": 5, "loss.lpips_weight": 0})
    assert main(["train-vae", "--config", "vae_no_gan", "-o", str(tmp_path / "run")]
                + [a for o in overrides for a in ("--set", o)]) == 0
    assert ("alphavae train-vae: warning: optim.warmup_steps 5 exceeds optim.max_steps 1: the learning rate stays in "
            "its warm-up for the whole run and never reaches its set value\n") in capsys.readouterr().err


def test_an_image_that_turns_unreadable_mid_run_is_skipped_and_reported(assets, tmp_path, capsys):
    """With DataLoader workers, an image deleted or damaged after the start-up check ended the run with torch's
    RuntimeError holding the worker's traceback. (The check is switched off here to meet the file mid-run.)"""
    data = tmp_path / "data"
    shutil.copytree(assets / "data", data)
    (data / "img3.png").write_bytes(b"damaged after the check")
    overrides = _overrides(assets, **{"data.source": str(data), "data.num_workers": 1, "data.check_images": False,
                                      "data.val_count": 0, "optim.max_steps": 4, "loss.lpips_weight": 0})
    assert main(["train-vae", "--config", "vae_no_gan", "-o", str(tmp_path / "run")]
                + [a for o in overrides for a in ("--set", o)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeError" not in err
    assert err.endswith("alphavae train-vae: 1 unreadable image(s) left out:\n"
                        f"  {data / 'img3.png'}: not a readable image (Pillow recognises no image format in it)\n")
    assert (tmp_path / "run" / "final" / "diffusion_pytorch_model.safetensors").is_file()


def test_resume_keeps_a_finished_model_and_refuses_a_checkpoint_beyond_max_steps(assets, tmp_path, monkeypatch):
    """--resume latest after the checkpoints were deleted trained from scratch over final/; a checkpoint beyond
    optim.max_steps was exported as the result of fewer steps (refused before the models load)."""
    import alphavae.train.loop

    overrides = _overrides(assets, checkpoint_every=1, **{"loss.lpips_weight": 0, "optim.max_steps": 2})
    run = tmp_path / "run"
    final = train_vae(load_config("vae_no_gan", overrides), run).final_dir
    monkeypatch.setattr(alphavae.train.loop, "load_models", lambda *a, **k: pytest.fail("models loaded first"))
    with pytest.raises(ValueError, match=r"step-00000002 is at step 2, beyond max_steps 1; resume with max_steps"):
        train_vae(load_config("vae_no_gan", overrides + ["optim.max_steps=1"]), run, resume="latest")
    monkeypatch.undo()
    weights = (final / "diffusion_pytorch_model.safetensors").read_bytes()
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(FileExistsError, match=rf"nothing to resume: {run} holds a finished final but no checkpoint"):
        train_vae(load_config("vae_no_gan", overrides), run, resume="latest")
    assert (final / "diffusion_pytorch_model.safetensors").read_bytes() == weights


def test_run_folder_inside_the_source_vae_is_refused(assets, tmp_path, capsys):
    shutil.copytree(assets / "rgb_vae", tmp_path / "vae")
    args = ["train-vae", "--data", str(assets / "data"), "--vae", str(tmp_path / "vae"), "-o", str(tmp_path / "vae" / "run")]
    assert main(args) == 2
    assert f"is inside input folder {tmp_path / 'vae'}" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_resume_with_changed_config_keeps_the_earlier_one(assets, tmp_path, caplog):
    overrides = _overrides(assets, checkpoint_every=1, **{"loss.lpips_weight": 0})
    train_vae(load_config("vae_main", overrides), tmp_path / "run", stop_after=1)
    first = (tmp_path / "run" / "config.yaml").read_text()
    changed = load_config("vae_main", overrides + ["loss.kl_weight=1e-5", "optim.max_steps=3"])
    with caplog.at_level("WARNING", logger="alphavae.train.loop"):
        train_vae(changed, tmp_path / "run", resume="latest", stop_after=2)
    kept = tmp_path / "run" / "config-before-step-00000001.yaml"
    assert kept.read_text() == first and load_config(tmp_path / "run" / "config.yaml") == changed
    assert "config changed on resume (loss.kl_weight, optim.max_steps)" in caplog.text
    again = load_config("vae_main", overrides + ["loss.kl_weight=2e-5", "optim.max_steps=3"])
    train_vae(again, tmp_path / "run", resume=str(tmp_path / "run" / "checkpoints" / "step-00000001"), stop_after=2)
    second = tmp_path / "run" / "config-before-step-00000001-2.yaml"  # resumed from step 1 twice: nothing lost
    assert kept.read_text() == first and load_config(second) == changed
    assert load_config(tmp_path / "run" / "config.yaml") == again


def test_a_resume_with_other_optimiser_settings_trains_with_them(assets, tmp_path):
    """A resume with another optim.lr, betas, weight_decay or ema_decay logged the change and wrote it to
    config.yaml, but trained on with the checkpoint's values (restored with the optimisers, the schedule and
    the EMA). At a rate of 1e-30 the step after the resume must leave both networks' weights as they were (within
    1e-20: zero-initialised biases do move, by ~1e-29; at the old rate, 1e-3, they move by ~1e-3)."""
    settings = {"loss.lpips_weight": 0, "optim.max_steps": 3, "optim.lr": 1e-3, "optim.scheduler": "constant",
                "optim.warmup_steps": 0}
    overrides = _overrides(assets, checkpoint_every=1, ema=True, **settings)
    train_vae(load_config("vae_main", overrides), tmp_path / "run", stop_after=1)
    tiny = ["optim.lr=1e-30", "optim.betas=[0.9, 0.99]", "optim.weight_decay=0.5", "ema_decay=0.5"]
    train_vae(load_config("vae_main", overrides + tiny), tmp_path / "run", resume="latest", stop_after=2)
    before, after = (tmp_path / "run" / "checkpoints" / f"step-0000000{n}" for n in (1, 2))
    for name in ("model.safetensors", "model_1.safetensors"):  # the autoencoder, the discriminator
        old, new = load_file(before / name), load_file(after / name)
        weights = [k for k in old if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        assert all(torch.allclose(old[k], new[k], rtol=0, atol=1e-20) for k in weights), name  # BatchNorm stats move
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [entry["lr"] for entry in history] == [1e-3, 1e-30]
    optimizer = torch.load(after / "optimizer.bin", weights_only=True)["param_groups"][0]
    assert (optimizer["betas"], optimizer["weight_decay"]) == ((0.9, 0.99), 0.5)
    ema = [torch.load(path, weights_only=False) for path in after.glob("custom_checkpoint_*.pkl")]
    assert [state["decay"] for state in ema if "decay" in state] == [0.5]


def test_a_window_resumed_after_a_decay_to_zero_trains_its_first_step(assets, tmp_path):
    """A run whose rate had decayed to 0 (optim.decay_steps), resumed with a later max_steps, trained its first
    resumed step at the old schedule's last rate, 0, so that step left the weights as they were."""
    settings = {"loss.lpips_weight": 0, "optim.max_steps": 2, "optim.decay_steps": 1, "optim.lr": 1e-3,
                "optim.scheduler": "constant", "optim.warmup_steps": 0}
    overrides = _overrides(assets, checkpoint_every=1, **settings)
    train_vae(load_config("vae_no_gan", overrides), tmp_path / "run")
    longer = overrides + ["optim.max_steps=4", "optim.decay_steps=1"]
    train_vae(load_config("vae_no_gan", longer), tmp_path / "run", resume="latest", stop_after=3)
    end, first = (load_file(tmp_path / "run" / "checkpoints" / f"step-0000000{n}" / "model.safetensors") for n in (2, 3))
    assert max((end[k] - first[k]).abs().max().item() for k in end) > 1e-5  # a rate of 1e-3, not 0


@pytest.mark.parametrize(("before", "after", "problem"), [
    (["ema=false"], ["ema=true"], "it was saved without an EMA and this run has ema: true"),
    (["ema=true"], ["ema=false"], "it was saved with an EMA and this run has ema: false"),
    (["loss.gan_weight=0"], ["loss.gan_weight=0.5"],
     r"it has no PatchGAN discriminator and this run trains one \(loss.gan_weight > 0\)"),
    ([], ["loss.disc_channels=16"], r"its PatchGAN discriminator has another architecture than this run's "
     r"\(loss.disc_channels=16, disc_layers=3, disc_input=rgba: first layer \(16, 4, 4, 4\), saved \(8, 4, 4, 4\); "
     r"22 tensors, saved 22\)"),
    ([], ["loss.disc_layers=2"], r"its PatchGAN discriminator has another architecture .* 16 tensors, saved 22\)"),
    ([], ["loss.disc_input=composite"], r"its PatchGAN discriminator has another architecture .* first layer "
     r"\(8, 3, 4, 4\), saved \(8, 4, 4, 4\); 22 tensors, saved 22\)"),
])
def test_a_resume_that_changes_the_ema_or_the_discriminator_is_refused_first(assets, tmp_path, monkeypatch,
                                                                             before, after, problem):
    """Turning the EMA on or off, or the PatchGAN on, or changing its architecture, at a resume failed after the
    models had loaded, as a checkpoint "damaged or saved from another model" (EMA, architecture: wrongly suggesting
    to delete a sound checkpoint) or a bare missing pytorch_model_1.bin (discriminator)."""
    import alphavae.train.loop

    overrides = _overrides(assets, checkpoint_every=1, **{"loss.lpips_weight": 0, "optim.max_steps": 2})
    train_vae(load_config("vae_main", overrides + before), tmp_path / "run", stop_after=1)
    monkeypatch.setattr(alphavae.train.loop, "load_models", lambda *a, **k: pytest.fail("models loaded first"))
    with pytest.raises(ValueError, match=rf"step-00000001 cannot be resumed with these settings: {problem}\. "
                                         r"Resume with the settings it was saved with"):
        train_vae(load_config("vae_main", overrides + after), tmp_path / "run", resume="latest")


def test_a_resume_with_another_vae_is_not_blamed_on_the_sound_checkpoint(assets, tmp_path):
    """Resuming with --vae of another architecture failed as "damaged or saved from another model" with the advice to
    delete the checkpoint (the run's only one here: all progress) and start over. Its files are as saved, so the
    error now says the models differ, keeps the checkpoint, and the resume with the original VAE goes on."""
    overrides = _overrides(assets, checkpoint_every=1, **{"loss.lpips_weight": 0, "optim.max_steps": 2})
    train_vae(load_config("vae_no_gan", overrides), tmp_path / "run", stop_after=1)
    tiny_rgb_vae("sdxl").save_pretrained(tmp_path / "other_vae")
    with pytest.raises(CheckpointMismatchError, match=r"step-00000001: cannot restore this checkpoint into this run's "
                       r"models \(RuntimeError: .*size mismatch .*\); its files are as saved, so it was saved from "
                       r"another model or with other model settings: resume with the model and settings it was saved "
                       r"with$"):
        train_vae(load_config("vae_no_gan", overrides + [f"model.vae={tmp_path / 'other_vae'}"]), tmp_path / "run",
                  resume="latest")
    assert train_vae(load_config("vae_no_gan", overrides), tmp_path / "run", resume="latest").history[0]["step"] == 2


def test_an_fp16_resume_of_a_checkpoint_without_a_gradient_scaler_is_refused_first(assets, tmp_path, monkeypatch):
    """On a GPU, fp16 adds a gradient scaler to the accelerate state; resuming a bf16 or float32 checkpoint in fp16
    failed after the models had loaded with a bare missing scaler.pt. This CPU has no fp16 scaler, so the test gives
    accelerate one (its fp16 runs on CUDA) and checks the refusal comes first."""
    import alphavae.train.loop

    overrides = _overrides(assets, checkpoint_every=1, **{"loss.lpips_weight": 0, "optim.max_steps": 2})
    train_vae(load_config("vae_no_gan", overrides), tmp_path / "run", stop_after=1)  # fp16 refuses the PatchGAN

    class WithScaler(alphavae.train.loop.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaler = torch.amp.GradScaler("cpu") if self.mixed_precision == "fp16" else None

    monkeypatch.setattr(alphavae.train.loop, "Accelerator", WithScaler)
    monkeypatch.setattr(alphavae.train.loop, "load_models", lambda *a, **k: pytest.fail("models loaded first"))
    with pytest.raises(ValueError, match=r"step-00000001 cannot be resumed with mixed_precision fp16: it was saved "
                                         r"without fp16's gradient scaler"):
        train_vae(load_config("vae_no_gan", overrides + ["mixed_precision=fp16"]), tmp_path / "run", resume="latest")


def test_a_resume_without_the_discriminator_goes_on(assets, tmp_path):
    overrides = _overrides(assets, checkpoint_every=1, **{"loss.lpips_weight": 0, "optim.max_steps": 2})
    train_vae(load_config("vae_main", overrides), tmp_path / "run", stop_after=1)
    resumed = train_vae(load_config("vae_main", overrides + ["loss.gan_weight=0"]), tmp_path / "run", resume="latest")
    assert [entry["step"] for entry in resumed.history] == [2] and {"gan", "disc"}.isdisjoint(resumed.history[0])


def test_a_resume_over_other_training_images_is_warned_about(assets, tmp_path, caplog):
    """Images added to the data folder between a kill and the resume changed the batches from the resumed step on
    (another shuffle of another list), without a word. Same images, also after the folder moved: no warning."""
    shutil.copytree(assets / "data", tmp_path / "data")
    overrides = _overrides(assets, checkpoint_every=1, **{"loss.lpips_weight": 0, "optim.max_steps": 3,
                                                          "data.source": str(tmp_path / "data")})
    train_vae(load_config("vae_no_gan", overrides), tmp_path / "run", stop_after=1)
    (tmp_path / "data").rename(tmp_path / "moved")
    moved = overrides + [f"data.source={tmp_path / 'moved'}"]
    with caplog.at_level("WARNING", logger="alphavae.train.loop"):
        train_vae(load_config("vae_no_gan", moved), tmp_path / "run", resume="latest", stop_after=2)
    assert "training images differ" not in caplog.text
    shutil.copy(tmp_path / "moved" / "img0.png", tmp_path / "moved" / "img0-copy.png")
    with caplog.at_level("WARNING", logger="alphavae.train.loop"):
        train_vae(load_config("vae_no_gan", moved), tmp_path / "run", resume="latest")
    assert (f"the training images differ from those of {tmp_path / 'run' / 'checkpoints' / 'step-00000002'} (6 then, "
            "7 now, or other files): the run goes on with today's") in caplog.text


def test_training_set_digest_follows_the_images_not_where_the_folder_or_manifest_lies(tmp_path, monkeypatch):
    """A manifest naming its images by absolute path counted them relative to its folder: moving the manifest alone
    changed the digest and warned of other training images."""
    from alphavae.train.checkpoint import training_set_digest
    images = [tmp_path / "images" / "a.png", tmp_path / "images" / "b.png"]
    digest = training_set_digest(images, tmp_path / "first")
    assert digest["images"] == 2 and training_set_digest(images, tmp_path / "moved" / "deeper") == digest
    in_folder = training_set_digest([tmp_path / "data" / "a.png", tmp_path / "data" / "b.png"], tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # a relative data folder, absolute image paths (as list_images gives them)
    assert training_set_digest([tmp_path / "moved" / "a.png", tmp_path / "moved" / "b.png"], "moved") == in_folder
    assert training_set_digest([tmp_path / "data" / "b.png", tmp_path / "data" / "a.png"], tmp_path / "data") \
        != in_folder


def test_yaml_merge_keys_still_work_and_eps_must_be_positive(tmp_path):
    (tmp_path / "merge.yaml").write_text("base: &b\n  size: 64\n  batch_size: 2\ndata:\n  <<: *b\n  size: 32\n")
    from alphavae.train.config import read_yaml
    assert read_yaml((tmp_path / "merge.yaml").read_text())["data"] == {"size": 32, "batch_size": 2}
    with pytest.raises(ValueError, match=r"optim.eps must be > 0, got 0"):
        load_config("vae_main", ["optim.eps=0"])


def test_a_config_layer_merges_sections_over_its_base_and_a_mapping_over_a_value_is_a_value_error(tmp_path):
    """A mapping over a base's plain value crashed the merge with a TypeError traceback (CLI exit status 1)."""
    (tmp_path / "base.yaml").write_text("seed: 1\ndata:\n  size: 64\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ndata:\n  batch_size: 2\n")
    config = load_config(tmp_path / "child.yaml")
    assert (config.seed, config.data.size, config.data.batch_size) == (1, 64, 2)
    (tmp_path / "bad.yaml").write_text("base: base.yaml\nseed:\n  a: 1\n")
    with pytest.raises(ValueError, match="seed"):
        load_config(tmp_path / "bad.yaml")
    assert main(["train-vae", "--config", str(tmp_path / "bad.yaml"), "-o", str(tmp_path / "run"),
                 "--print-config"]) == 2


@pytest.mark.parametrize("state, problem", [({"step": 1, "files": None}, "'files' is not a map"),
                                            ({"step": 1, "files": {"model.safetensors": "9"}}, "'files' is not a map"),
                                            ({"step": 1, "files": {"model.safetensors": {"bytes": 9, "sha256": "x"}}},
                                             "'files' is not a map"),
                                            ({"nonfinite_streak": 0}, "no whole-number 'step'"),
                                            ({"step": "abc"}, "no whole-number 'step'")])
def test_checkpoint_state_with_bad_fields_is_named(assets, tmp_path, state, problem):
    overrides = _overrides(assets, checkpoint_every=1, **{"loss.lpips_weight": 0})
    train_vae(load_config("vae_main", overrides), tmp_path / "run", stop_after=1)
    path = tmp_path / "run" / "checkpoints" / "step-00000001" / "trainer_state.json"
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=f"{path}: damaged checkpoint file \\({problem}"):
        train_vae(load_config("vae_main", overrides), tmp_path / "run", resume="latest")


def test_latest_does_not_skip_a_newest_checkpoint_that_lost_its_state(assets, tmp_path):
    """Checkpoints are renamed into place complete: a step-* folder without trainer_state.json is damage, and
    --resume latest must say so instead of silently redoing that interval from an older checkpoint."""
    overrides = _overrides(assets, checkpoint_every=1, **{"loss.lpips_weight": 0})
    train_vae(load_config("vae_main", overrides), tmp_path / "run", stop_after=2)
    newest = tmp_path / "run" / "checkpoints" / "step-00000002"
    (newest / "trainer_state.json").unlink()
    with pytest.raises(ValueError, match=f"{newest}: damaged checkpoint, .*continue from step-00000001"):
        train_vae(load_config("vae_main", overrides), tmp_path / "run", resume="latest")


def test_resume_hashes_each_checkpoint_file_once_and_still_sees_a_change_after_the_check(assets, tmp_path,
                                                                                         monkeypatch):
    """verify_checkpoint (before the models load) and load_checkpoint both hashed every file: a resume read the
    checkpoint twice. A file changed between the two must still be refused."""
    import alphavae.train.checkpoint as checkpoint
    import alphavae.train.loop as loop

    overrides = _overrides(assets, checkpoint_every=1, keep_checkpoints=0, **{"loss.lpips_weight": 0})
    train_vae(load_config("vae_no_gan", overrides), tmp_path / "run", stop_after=1)
    folder = tmp_path / "run" / "checkpoints" / "step-00000001"
    saved = json.loads((folder / "trainer_state.json").read_text())["files"]
    hashed, sha256_file = [], checkpoint.sha256_file
    monkeypatch.setattr(checkpoint, "sha256_file", lambda p: hashed.append(Path(p)) or sha256_file(p))
    train_vae(load_config("vae_no_gan", overrides), tmp_path / "run", resume="latest")
    assert sorted(p.relative_to(folder).as_posix() for p in hashed if folder in p.parents) == sorted(saved)

    path, load_models, changed = folder / "model.safetensors", loop.load_models, []

    def change_then_load(*args, **kwargs):  # after verify_checkpoint, before load_checkpoint
        changed.append(_damage(path, "changed"))
        os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))  # as if written a second later, whatever the clock
        return load_models(*args, **kwargs)

    monkeypatch.setattr(loop, "load_models", change_then_load)
    with pytest.raises(ValueError, match=f"{path}: damaged checkpoint file \\(its bytes changed"):
        train_vae(load_config("vae_no_gan", overrides), tmp_path / "run", resume=str(folder))
    assert changed  # verify_checkpoint had passed it


@pytest.mark.slow
def test_data_gone_on_one_process_stops_every_process_with_the_same_error(assets, tmp_path):
    """Only process 1 finds no readable image from its third batch on. It raised alone; process 0 then waited in
    the next collective and died on gloo's 'Connection closed by peer' traceback (or torchrun's SIGTERM)."""
    script = tmp_path / "one_process_loses_its_data.py"
    script.write_text(
        "import os, sys\n"
        "from alphavae.data.datasets import SubstituteUnreadable\n"
        "from alphavae.cli import main\n"
        "getitem, calls = SubstituteUnreadable.__getitem__, []\n"
        "def failing(self, key):\n"
        "    calls.append(key)\n"
        "    if os.environ['RANK'] == '1' and len(calls) > 2:\n"
        "        return None, ['gone.png: vanished']\n"
        "    return getitem(self, key)\n"
        "SubstituteUnreadable.__getitem__ = failing\n"
        "sys.exit(main(sys.argv[1:]))\n")
    overrides = _overrides(assets, **{"optim.max_steps": 4, "data.batch_size": 1, "loss.lpips_weight": 0,
                                      "data.val_count": 0, "checkpoint_every": 1})
    bin_dir = str(Path(sys.executable).parent)
    # torchrun stops the other workers as soon as it sees one fail; polling every 5 s (not 0.1) leaves process 1
    # time to print its own error line after process 0 exits, also on a loaded machine
    command = [shutil.which("torchrun", path=bin_dir), "--standalone", "--monitor-interval", "5", "--nproc_per_node",
               "2", str(script), "train-vae", "--config", "vae_no_gan", "-o", str(tmp_path / "run")]
    command += [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode != 0
    error = "alphavae train-vae: error: no training image is readable any more (step 2): gone.png: vanished\n"
    assert completed.stderr.count(error) == 2, completed.stderr[-3000:]  # once per process
    assert "[rank0]: Traceback" not in completed.stderr and "Connection closed" not in completed.stderr
    assert "INFO accelerate" not in completed.stderr and "INFO alphavae.train.loop" in completed.stderr


def test_accelerate_info_lines_stay_out_of_the_training_log(assets, tmp_path, caplog, request):
    """accelerate logged about a dozen INFO lines per checkpoint save and load among train-vae's own."""
    request.addfinalizer(lambda: logging.getLogger("accelerate").setLevel(logging.NOTSET))
    caplog.set_level(logging.INFO)
    overrides = _overrides(assets, checkpoint_every=1, **{"optim.max_steps": 1, "loss.lpips_weight": 0})
    args = ["train-vae", "--config", "vae_no_gan", "-o", str(tmp_path / "run")]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    assert main(args + ["--resume", "latest"] + [a for o in overrides for a in ("--set", o)]
                + ["--set", "optim.max_steps=2"]) == 0
    assert "resumed from" in caplog.text  # our own INFO lines stay
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("accelerate") and r.levelno < logging.WARNING]


def _no_models(monkeypatch):
    """Make loading the models fail the test: what is checked must be refused before."""
    import alphavae.train.loop

    monkeypatch.setattr(alphavae.train.loop, "load_models", lambda *a, **k: pytest.fail("models loaded first"))


@pytest.mark.parametrize("place", ["final", "validation", "manifest", "vae", "init_config"])
def test_a_run_folder_holding_an_input_is_refused_before_it_can_delete_it(assets, tmp_path, monkeypatch, place):
    """-o RUN --data RUN/final trained, then the export replaced final/ and deleted the training images; the same
    for the validation grids' folder, a manifest's absolute entries, --vae and --init-config inside RUN."""
    _no_models(monkeypatch)
    run = tmp_path / "run"
    inside = run / ("images" if place == "manifest" else place)
    shutil.copytree(assets / ("rgb_vae" if place == "vae" else "data"), inside)
    overrides = _overrides(assets, **{"data.source": str(inside)})
    if place == "manifest":
        lines = [json.dumps({"file": str(path), "split": "train"}) for path in sorted(inside.glob("*.png"))]
        (tmp_path / "meta").mkdir()
        (tmp_path / "meta" / "manifest.jsonl").write_text("\n".join(lines) + "\n")
        overrides = _overrides(assets, **{"data.source": str(tmp_path / "meta" / "manifest.jsonl")})
    elif place == "vae":
        overrides = _overrides(assets, **{"model.vae": str(inside)})
    elif place == "init_config":
        inside = run / "init.json"
        inside.write_text(json.dumps(tiny_vae_config("flux")))
        overrides = _overrides(assets, **{"model.vae": "null", "model.init_config": str(inside)})
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(ValueError, match=f"^run folder {run} contains input {inside}; choose a run folder apart"):
        train_vae(load_config("vae_no_gan", overrides), run)
    assert sorted(p.name for p in run.rglob("*")) == before


def test_a_fresh_start_keeps_a_finished_export_and_the_history(assets, tmp_path, monkeypatch, capsys):
    """A start without --resume into a run folder without checkpoints replaced its final/ and emptied its
    history.jsonl and validation/metrics.jsonl."""
    _no_models(monkeypatch)
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    sets = [a for o in _overrides(assets) for a in ("--set", o)]
    assert main(["train-vae", "--config", "vae_no_gan", "-o", str(run)] + sets) == 2
    assert capsys.readouterr().err == (f"alphavae train-vae: error: {run / 'final'} already exists: a fresh start "
                                       f"would replace it; choose a new folder (or move {run / 'final'} away to "
                                       "train again from scratch)\n")
    shutil.rmtree(run / "final")
    for log in ("history.jsonl", "validation/metrics.jsonl"):
        (run / log).parent.mkdir(exist_ok=True)
        (run / log).write_text('{"step": 1, "loss": 1.0}\n')
        with pytest.raises(FileExistsError, match=f"^{run / log} already records training in {run}: a fresh start "
                                                  "would empty it; choose a new folder"):
            train_vae(load_config("vae_no_gan", _overrides(assets)), run)
        assert (run / log).read_text() == '{"step": 1, "loss": 1.0}\n'
        (run / log).unlink()


def test_an_init_config_that_is_missing_or_not_an_object_is_named_without_a_hub_look_up(assets, tmp_path,
                                                                                        monkeypatch):
    """--init-config [1,2] ended in a TypeError traceback; a missing path was looked up on the hub (23 s)."""
    from alphavae.train.loop import load_models

    monkeypatch.setattr(AutoencoderKL, "load_config", lambda *a, **k: pytest.fail("looked up"))
    (tmp_path / "list.json").write_text("[1, 2]")
    for path, error, message in [
            (tmp_path / "list.json", ValueError, f"{tmp_path / 'list.json'}: not a diffusers config "
                                                 r"\(model.init_config / --init-config\): its JSON is an array"),
            ("nosuch/config.json", FileNotFoundError, r"init config nosuch/config.json \(model.init_config / "
                                                      r"--init-config\) does not exist"),
            (tmp_path / "missing.json", FileNotFoundError, f"init config {tmp_path / 'missing.json'} ")]:
        overrides = _overrides(assets, **{"model.vae": "null", "model.init_config": str(path)})
        config = load_config("vae_no_gan", overrides)
        with pytest.raises(error, match=f"^{message}"):
            load_models(config.model)
        with pytest.raises(error, match=f"^{message}"):
            train_vae(config, tmp_path / "run")
        assert not (tmp_path / "run").exists()


def test_no_readable_image_or_too_few_for_a_batch_names_the_data_before_the_models_load(assets, tmp_path,
                                                                                         monkeypatch):
    """All images unreadable: "[]: no images found"; fewer than a global batch: "2 items cannot fill one global batch
    of 4", naming neither the data nor the setting, once the models had loaded."""
    _no_models(monkeypatch)
    (tmp_path / "bad").mkdir()
    for i in range(5):
        (tmp_path / "bad" / f"b{i}.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'bad'}: no readable training images, all 3 were skipped as "
                                         f"unreadable \\(first: {tmp_path / 'bad' / 'b0.png'}: "):
        train_vae(load_config("vae_no_gan", _overrides(assets, **{"data.source": str(tmp_path / "bad")})),
                  tmp_path / "run")
    (tmp_path / "few").mkdir()
    for name in ("img0.png", "img1.png", "img2.png"):
        shutil.copy(assets / "data" / name, tmp_path / "few" / name)
    overrides = _overrides(assets, **{"data.source": str(tmp_path / "few"), "data.batch_size": 4,
                                      "data.val_count": 1})
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'few'}: 2 training images, 1 more held out for validation, "
                                         r"fewer than one global batch of 4 \(data.batch_size 4 x 1 processes\)"):
        train_vae(load_config("vae_no_gan", overrides), tmp_path / "run")


def test_a_resume_of_a_finished_run_trains_and_writes_nothing(assets, tmp_path, capsys):
    """--resume latest on a run that had reached max_steps and exported final/ appended its final validation line
    again and exported final/ again; extended, it counted the steps before the resume as trained."""
    overrides = _overrides(assets, **{"optim.max_steps": 1, "checkpoint_every": 1, "validate_every": 1,
                                      "loss.lpips_weight": 0})
    args = ["train-vae", "--config", "vae_no_gan", "-o", str(tmp_path / "run")] + [a for o in overrides
                                                                                   for a in ("--set", o)]
    assert main(args) == 0
    capsys.readouterr()
    written = {path: path.stat().st_mtime_ns for path in (tmp_path / "run").rglob("*") if path.is_file()}
    metrics = (tmp_path / "run" / "validation" / "metrics.jsonl").read_text()
    assert main(args + ["--resume", "latest"]) == 0
    assert capsys.readouterr().out == (f"nothing to train: {tmp_path / 'run'} already reached optim.max_steps 1 (its "
                                       "final/ and checkpoints are left as they are; a larger optim.max_steps "
                                       "continues it)\n")
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "run").rglob("*") if path.is_file()} == written
    assert (tmp_path / "run" / "validation" / "metrics.jsonl").read_text() == metrics
    assert main(args + ["--resume", "latest", "--set", "optim.max_steps=2"]) == 0  # said "trained 2 steps"
    out, err = capsys.readouterr()
    assert out.startswith("trained 1 step (0 skipped as non-finite, step 2, resumed from step 1); model in ")
    assert "nothing to train" not in err


def test_a_checkpoint_of_the_other_training_command_is_named_as_such(assets, tmp_path, monkeypatch):
    """A train-lora checkpoint in a train-vae run folder failed on a bare missing file (and the other way round)."""
    from safetensors.torch import save_file

    from alphavae.train.checkpoint import verify_checkpoint

    _no_models(monkeypatch)
    lora = tmp_path / "run" / "checkpoints" / "step-00000001"
    lora.mkdir(parents=True)
    save_file({"a": torch.zeros(1)}, lora / "pytorch_lora_weights.safetensors")
    (lora / "trainer_state.json").write_text(json.dumps({"step": 1, "settings": {"rank": 4}, "max_steps": 2}))
    message = f"^{lora} is a train-lora checkpoint, not a train-vae one: resume it with alphavae train-lora"
    with pytest.raises(CheckpointMismatchError, match=message):
        train_vae(load_config("vae_no_gan", _overrides(assets)), tmp_path / "run", resume="latest")
    vae = tmp_path / "vae-run" / "checkpoints" / "step-00000001"
    vae.mkdir(parents=True)
    save_file({"a": torch.zeros(1)}, vae / "model.safetensors")
    (vae / "trainer_state.json").write_text(json.dumps({"step": 1, "nonfinite_streak": 0}))
    with pytest.raises(CheckpointMismatchError, match=f"^{vae} is a train-vae checkpoint, not a train-lora one"):
        verify_checkpoint(vae, "train-lora")


@pytest.mark.parametrize("name", ["checkpoints", "final", "validation"])
def test_a_file_where_the_run_writes_a_folder_is_refused_before_the_models_load(assets, tmp_path, monkeypatch,
                                                                               name):
    """A file named checkpoints, final or validation in the run folder failed at the first write, after training."""
    _no_models(monkeypatch)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / name).write_text("a note")
    with pytest.raises(NotADirectoryError, match=f"^{tmp_path / 'run' / name}: not a folder, where the run writes "
                                                 f"its {name}/ folder; move it away or choose another run folder"):
        train_vae(load_config("vae_no_gan", _overrides(assets)), tmp_path / "run")


def test_data_loader_workers_are_capped_at_the_usable_cpus(assets, monkeypatch):
    """data.num_workers 4 (vae_main's) on a 2-core machine: torch warned of more workers than CPUs."""
    from types import SimpleNamespace

    from alphavae.train.loop import _data

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    accelerator = SimpleNamespace(num_processes=1, process_index=0, is_main_process=True)
    loader = _data(load_config("vae_no_gan", _overrides(assets, **{"data.num_workers": 4})), accelerator, 0)[0]
    assert loader.num_workers == 2
