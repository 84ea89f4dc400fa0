import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from alphavae.diffusion.flow import flow_matching_loss
from alphavae.diffusion.pipeline import load_flux_pipeline
from alphavae.diffusion.train import LORA_FILE, LoraTrainConfig, train_lora
from alphavae.io import load_rgba, to_pil
from alphavae.vae import RGBAVAE
from flux_tiny import model_folders, sticker, write_real_images


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    flux, vae = model_folders(root)
    data = root / "data"
    images = write_real_images(data, count=2)  # with batch_size 2: a fixed batch of real images
    (data / "s0.txt").write_text("a red sticker")
    (data / "broken.png").write_bytes(b"not a png")
    return root, flux, vae, data, images


def _config(setup, out, **overrides):
    root, flux, vae, data, _ = setup
    values = dict(model=str(flux), vae=str(vae), data=str(data), output_dir=str(root / out), resolution=32,
                  rank=4, alpha=8.0, max_steps=4, batch_size=2, checkpoint_every=0, report_to="none",
                  max_sequence_length=16, validation_steps=2)
    return LoraTrainConfig(**{**values, **overrides})


def test_the_logged_rate_is_the_one_each_step_used(setup, monkeypatch):
    """With a linear decay over 4 steps (no warm-up) steps 1-4 train at 1, 0.75, 0.5 and 0.25 x lr, and that is
    what the tracker gets (it got the next step's rate: 0.75 ... 0)."""
    from accelerate import Accelerator

    logged = []
    monkeypatch.setattr(Accelerator, "log", lambda self, values, step=None, **kw: logged.append((step, values["lr"])))
    train_lora(_config(setup, "logged-rate", optimizer="adamw", learning_rate=1e-3, lr_scheduler="linear",
                       lr_warmup_steps=0, validation_every=0))
    assert logged == [(1, pytest.approx(1e-3)), (2, pytest.approx(7.5e-4)), (3, pytest.approx(5e-4)),
                      (4, pytest.approx(2.5e-4))]


def _fixed_batch_loss(setup, lora_dir=None):
    """Flow-matching loss of the first two training images at fixed noise and noise levels."""
    _, flux, vae_dir, _, images = setup
    vae = RGBAVAE.from_pretrained(vae_dir, dtype="float32")
    pipe = load_flux_pipeline(flux, vae)
    if lora_dir is not None:
        pipe.load_lora_weights(lora_dir)
    pixels = torch.stack([load_rgba(p)[:, 4:36, 4:36] for p in images[:2]])
    gen = torch.Generator().manual_seed(0)
    latents = vae.to_diffusion_latents(vae.encode(pixels).mode())
    noise = torch.randn(latents.shape, generator=gen)
    embeds, pooled, ids = pipe.encode_prompt(["a red sticker", "RGBA"], None, max_sequence_length=16)
    with torch.no_grad():
        return flow_matching_loss(pipe.transformer, latents, noise, torch.tensor([0.3, 0.7]), embeds, pooled, ids,
                                  1.0).item()


def test_lora_lowers_loss_on_fixed_batch(setup):
    result = train_lora(_config(setup, "fit", optimizer="adamw", learning_rate=3e-2, max_steps=12,
                                cache_latents=True, validation_prompts=["a red sticker"]))
    assert len(result.failed_images) == 1 and "broken.png" in result.failed_images[0]
    before, after = _fixed_batch_loss(setup), _fixed_batch_loss(setup, result.lora_dir)
    assert after < before * 0.9, (before, after)
    out = result.lora_dir
    assert (out / LORA_FILE).is_file() and (out / "validation" / "step-00000012" / "checkerboard.png").is_file()
    assert yaml.safe_load((out / "train_config.yaml").read_text())["rank"] == 4


def test_resume_reproduces_uninterrupted_run(setup):
    manifest = setup[3] / "manifest.jsonl"  # the unreadable file is in another split, so nothing is skipped
    rows = [("s0.png", "train"), ("s1.png", "train"), ("broken.png", "test")]
    manifest.write_text("".join(json.dumps({"file": f, "split": s}) + "\n" for f, s in rows))
    options = dict(optimizer="prodigy", data=str(manifest), split="train")
    whole = train_lora(_config(setup, "whole", max_steps=3, **options))
    first = train_lora(_config(setup, "split", max_steps=2, **options))
    second = train_lora(_config(setup, "split", max_steps=3, resume="latest", **options))
    assert whole.failed_images == []
    assert first.losses == {k: whole.losses[k] for k in (1, 2)}
    assert second.losses == {3: whole.losses[3]}
    a, b = load_file(whole.lora_dir / LORA_FILE), load_file(second.lora_dir / LORA_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_over_other_training_images_is_warned_about(setup, tmp_path, caplog):
    """As train-vae: images added between the kill and the resume changed the batches without a word."""
    shutil.copytree(setup[3], tmp_path / "data")
    train_lora(_config(setup, "grown", max_steps=1, data=str(tmp_path / "data")))
    shutil.copy(tmp_path / "data" / "s1.png", tmp_path / "data" / "s2.png")
    with caplog.at_level("WARNING", logger="alphavae.diffusion.train"):
        train_lora(_config(setup, "grown", max_steps=2, resume="latest", data=str(tmp_path / "data")))
    assert "the training images differ from those of " in caplog.text and "(2 then, 3 now, or other files)" in caplog.text


@pytest.mark.slow
def test_two_process_run_resumes_bit_exactly(setup, tmp_path):
    """A data-parallel run on two CPU processes (torchrun), stopped after 2 steps and resumed, ends with the
    LoRA of an uninterrupted two-process run, bit for bit (~1 min: three launches)."""
    _, flux, vae, _, images = setup
    (tmp_path / "data").mkdir()
    for image in images:
        shutil.copy(image, tmp_path / "data" / image.name)
    bin_dir = Path(sys.executable).parent
    command = [shutil.which("torchrun", path=bin_dir), "--standalone", "--nproc_per_node", "2", shutil.which("alphavae", path=bin_dir),
               "train-lora", "--model", str(flux), "--vae", str(vae), "--data", str(tmp_path / "data"), "--resolution", "32",
               "--rank", "4", "--alpha", "8", "--batch-size", "1", "--checkpoint-every", "1", "--report-to", "none",
               "--max-sequence-length", "16", "--optimizer", "adamw", "--lr", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    for out, steps, resume in (("whole", 3, []), ("split", 2, []), ("split", 3, ["--resume", "latest"])):
        done = subprocess.run([*command, "-o", str(tmp_path / out), "--max-steps", str(steps), *resume], check=False,
                              capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("wrote LoRA to") == 1  # the main process's summary only
    whole, split = (load_file(tmp_path / out / LORA_FILE) for out in ("whole", "split"))
    assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole)


def test_resume_refusals_keep_earlier_work(setup, monkeypatch):
    """Each of these succeeded silently: a fresh start over an interrupted run's checkpoints (replaced them), a
    resume beyond max_steps (saved step 2's weights as step 1), a resume with another alpha or optimiser (kept
    the saved scale, optimiser state and learning rate, while train_config.yaml said otherwise), and --resume
    latest on a finished run without checkpoints (trained again from scratch over the LoRA). The refusals come
    before any model loads (a changed rank failed the restore as a damaged checkpoint)."""
    out = train_lora(_config(setup, "guarded", max_steps=2, checkpoint_every=1, keep_checkpoints=5)).lora_dir
    lora = (out / LORA_FILE).read_bytes()
    (out / LORA_FILE).unlink()  # as if interrupted after its checkpoints
    monkeypatch.setattr(RGBAVAE, "from_pretrained", lambda *a, **k: pytest.fail("models loaded before the refusal"))
    with pytest.raises(FileExistsError, match="already has checkpoints; pass --resume latest or choose a new folder"):
        train_lora(_config(setup, "guarded", max_steps=2))
    with pytest.raises(ValueError, match=r"step-00000002 is at step 2, beyond max_steps 1; resume with max_steps >= 2"):
        train_lora(_config(setup, "guarded", max_steps=1, resume="latest"))
    with pytest.raises(ValueError, match=r"saved with other settings than this run's \(alpha 8.0 -> 2.0; "
                                         r"optimizer 'prodigy' -> 'adamw'\)"):
        train_lora(_config(setup, "guarded", max_steps=3, resume="latest", alpha=2.0, optimizer="adamw"))
    with pytest.raises(ValueError, match=r"saved with other settings than this run's \(rank 4 -> 8; targets "
                                         r"'paper' -> 'attention'\)"):
        train_lora(_config(setup, "guarded", max_steps=3, resume="latest", rank=8, targets="attention"))
    with pytest.raises(ValueError, match=r"\(prodigy_safeguard_warmup True -> False; prodigy_bias_correction True "
                                         r"-> False\)"):  # both restored from the saved optimiser state
        train_lora(_config(setup, "guarded", max_steps=3, resume="latest", prodigy_safeguard_warmup=False,
                           prodigy_bias_correction=False))
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    adamw = train_lora(_config(setup, "adamw", max_steps=1, optimizer="adamw")).lora_dir
    train_lora(_config(setup, "adamw", max_steps=2, resume="latest", optimizer="adamw", prodigy_beta3=0.5,
                       prodigy_safeguard_warmup=False))  # settings AdamW never reads may change
    assert (adamw / "checkpoints" / "step-00000002").is_dir()
    (out / LORA_FILE).write_bytes(lora)
    shutil.rmtree(out / "checkpoints")
    with pytest.raises(FileExistsError, match=r"nothing to resume: .* holds a finished pytorch_lora_weights"
                                              r"\.safetensors but no checkpoint"):
        train_lora(_config(setup, "guarded", max_steps=3, resume="latest"))
    assert (out / LORA_FILE).read_bytes() == lora


def test_a_checkpoint_of_the_former_paper_preset_resumes_as_wide_only(setup, monkeypatch):
    """'paper' named the 'wide' layers (with the single-stream proj_mlp and proj_out) until it was narrowed to the
    reference's, and checkpoints record the preset's name: a resume of such a checkpoint with 'paper' passed the
    settings check and failed in the restore, after the models loaded. The layers its LoRA records decide now."""
    out = train_lora(_config(setup, "former-paper", max_steps=1, targets="wide")).lora_dir
    state_file = out / "checkpoints" / "step-00000001" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["settings"]["targets"] = "paper"  # the name such a checkpoint records
    state_file.write_text(json.dumps(state))
    with monkeypatch.context() as patch:
        patch.setattr(RGBAVAE, "from_pretrained", lambda *a, **k: pytest.fail("models loaded before the refusal"))
        with pytest.raises(ValueError, match=r"step-00000001: its LoRA was trained on the layers of --targets wide, "
                                             r"not on those --targets paper names; resume with the targets it was"):
            train_lora(_config(setup, "former-paper", max_steps=2, resume="latest"))
    resumed = train_lora(_config(setup, "former-paper", max_steps=2, resume="latest", targets="wide"))
    assert list(resumed.losses) == [2]
    assert any(".proj_mlp." in key for key in load_file(out / LORA_FILE))


def test_a_resume_of_a_finished_run_trains_and_writes_nothing(setup, monkeypatch):
    """--resume latest on a run that had reached max_steps loaded the models, trained 0 steps and rewrote the LoRA,
    checkpoint and config ("final loss n/a"); now it returns at once, before any model loads."""
    out = train_lora(_config(setup, "finished", max_steps=1)).lora_dir
    files = sorted(p for p in out.rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    monkeypatch.setattr(RGBAVAE, "from_pretrained", lambda *a, **k: pytest.fail("models loaded for nothing"))
    result = train_lora(_config(setup, "finished", max_steps=1, resume="latest"))
    assert not result.trained and result.losses == {} and result.lora_dir == out
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before


def test_a_checkpoint_without_recorded_settings_resumes_with_a_warning(setup, caplog):
    out = train_lora(_config(setup, "older", max_steps=1)).lora_dir
    state_file = out / "checkpoints" / "step-00000001" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["settings"]  # as written before checkpoints recorded their settings
    state_file.write_text(json.dumps(state))
    with caplog.at_level("WARNING", logger="alphavae.diffusion.train"):
        train_lora(_config(setup, "older", max_steps=2, resume="latest", alpha=2.0))
    assert "was saved before checkpoints recorded their settings" in caplog.text


def test_validation_during_training_does_not_change_training(setup):
    """A mid-run validation renders through pipe.scheduler; training must keep sampling the full sigma grid."""
    options = dict(max_steps=3, validation_prompts=["a red sticker"])
    plain = train_lora(_config(setup, "no-mid-validation", **options))
    validated = train_lora(_config(setup, "mid-validation", validation_every=1, **options))
    assert validated.losses == plain.losses
    assert sorted(p.name for p in (validated.lora_dir / "validation").iterdir()) == [
        "step-00000001", "step-00000002", "step-00000003"]  # 8 digits, as train-vae's validation images


def test_refuses_to_overwrite_or_write_into_data(setup):
    root, *_ , data, _ = setup
    out = root / "taken"
    out.mkdir()
    (out / LORA_FILE).write_bytes(b"")
    with pytest.raises(FileExistsError, match="already exists"):
        train_lora(_config(setup, "taken"))
    with pytest.raises(ValueError, match="inside input folder"):
        train_lora(_config(setup, "data/out"))
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        train_lora(_config(setup, "fresh", resume=str(root)))
    for inside in ("flux/lora", "vae/lora"):  # the models' folders are inputs too
        with pytest.raises(ValueError, match=f"output folder {root / inside} is inside input folder"):
            train_lora(_config(setup, inside))
    manifest = setup[3] / "listed.jsonl"  # a manifest's images lie in its folder
    manifest.write_text(json.dumps({"file": "s0.png"}) + "\n")
    with pytest.raises(ValueError, match=f"output folder {setup[3] / 'out'} is inside input folder {setup[3]}"):
        train_lora(_config(setup, "data/out", data=str(manifest)))
    (root / "leftover" / "checkpoints" / "step-00000010").mkdir(parents=True)  # damaged: no trainer_state.json
    with pytest.raises(FileExistsError, match="already has checkpoints; pass --resume latest"):
        train_lora(_config(setup, "leftover"))


def test_captions_are_checked_before_the_models_load(setup, monkeypatch):
    from alphavae.diffusion.captions import CaptionError

    root = setup[0]
    (root / "none-match.jsonl").write_text('{"file_name": "elsewhere/s0.png", "text": "a cup"}\n')
    monkeypatch.setattr(RGBAVAE, "from_pretrained", lambda *a, **k: pytest.fail("models loaded before the captions"))
    with pytest.raises(CaptionError, match=r"none-match\.jsonl: none of its 1 rows names a training image"):
        train_lora(_config(setup, "captions", captions=str(root / "none-match.jsonl")))


def test_a_warmup_longer_than_the_run_is_warned(setup, monkeypatch):
    from alphavae.diffusion.captions import CaptionError

    root = setup[0]
    (root / "no-match.jsonl").write_text('{"file_name": "elsewhere/s0.png", "text": "a cup"}\n')
    config = _config(setup, "warm-up", lr_warmup_steps=10, captions=str(root / "no-match.jsonl"))
    with pytest.warns(UserWarning, match=r"^lr_warmup_steps 10 exceeds max_steps 4: the learning rate stays in its "
                                         r"warm-up for the whole run"), pytest.raises(CaptionError):
        train_lora(config)  # warned before anything loads (the caption table then stops the run)


@pytest.mark.parametrize("bad, message", [
    (dict(resolution=40), "multiple of 16"), (dict(cache_latents=True, crop="random"), "cache_latents"),
    (dict(optimizer="sgd"), "optimizer"), (dict(weighting_scheme="x"), "weighting_scheme"),
    (dict(max_steps=0), "max_steps"),
    # found only after the whole run (validation_steps), at the first step (max_sequence_length, logit_std), or
    # after the models loaded (seed, lr_scheduler); a zero learning rate trained a no-op LoRA
    (dict(validation_steps=0), r"^validation_steps must be >= 1, got 0$"),
    (dict(max_sequence_length=100000), r"^max_sequence_length must be in \[1, 512\] \(FLUX's T5 length\), got 100000$"),
    (dict(max_sequence_length=0), r"^max_sequence_length must be in \[1, 512\]"),
    (dict(weighting_scheme="logit_normal", logit_std=-1.0), r"^logit_std must be > 0, got -1.0$"),
    (dict(learning_rate=0.0), r"^learning_rate must be > 0, got 0.0$"),
    (dict(lr_warmup_steps=-5), r"^lr_warmup_steps must be >= 0, got -5$"),
    (dict(seed=-1), r"^seed must be in \[0, 2\*\*32\), got -1$"), (dict(seed=2**32), r"^seed must be in"),
    (dict(lr_scheduler="bogus"), r"^lr_scheduler must be one of \[.*'constant'.*\]$"),
    (dict(lr_scheduler="piecewise_constant"), r"^lr_scheduler must be one of"),  # needs step_rules
    (dict(instance_prompt=" "), r"^instance_prompt must not be blank$"),
    # lone surrogates (a JSON/YAML "\ud83d" escape) crashed the tokenizer mid-run or, in validation, at the end
    (dict(instance_prompt="a \ud83d"), r'^instance_prompt is not valid text \(a lone UTF-16 surrogate "a \\ud83d"\)$'),
    (dict(validation_prompts=["a cup", "b \udc00"]), r"^validation_prompts\[1\] is not valid text"),
    (dict(max_nonfinite=0), r"^max_nonfinite must be >= 1, got 0$"),
    (dict(targets="everything"), r"^targets must be one of \['attention', 'paper', 'wide'\]$"),  # after the models
    # no image would load (resolution), a traceback at the final validation (validation_steps), at the first step
    # (guidance) or when validating (validation_guidance)
    (dict(resolution=8208), r"^resolution must be at most 8192 \(a larger square is above "
                            r"alphavae\.io\.DEFAULT_MAX_PIXELS, so no image would load\), got 8208$"),
    (dict(validation_steps=1001), r"^validation_steps must be at most 1000 \(the FLUX scheduler's training "
                                  r"timesteps\), got 1001$"),
    (dict(guidance=1e300), r"^guidance must be a finite number of at most 3\.403e\+38 in magnitude \(float32's "
                           r"range\), got 1e\+300$"),
    (dict(validation_guidance=1e39), r"^validation_guidance must be a finite number of at most 3\.403e\+38"),
])
def test_config_validation(setup, bad, message):
    with pytest.raises(ValueError, match=message):
        _config(setup, "x", **bad)


def test_the_lora_is_saved_before_the_final_validation(setup, monkeypatch):
    """A final validation that fails (out of memory at full size, say) used to lose the whole run's LoRA."""
    from alphavae.diffusion import train as lora_train

    def out_of_memory(self, step):
        raise torch.OutOfMemoryError("validation at full size")

    monkeypatch.setattr(lora_train._Trainer, "validate", out_of_memory)
    config = _config(setup, "final-validation", max_steps=1, validation_prompts=["a cup"])
    with pytest.raises(torch.OutOfMemoryError):
        train_lora(config)
    out = setup[0] / "final-validation"
    assert (out / LORA_FILE).is_file() and (out / "train_config.yaml").is_file()


def test_a_config_file_that_is_not_text_is_named(tmp_path):
    """A Latin-1 --config gave "error: 'utf-8' codec can't decode byte 0xe9 ..." without the file."""
    (tmp_path / "latin1.yaml").write_bytes(b"rank: 4\ncaf\xe9: 1\n")
    with pytest.raises(ValueError, match=r"latin1.yaml: not UTF-8 text"):
        LoraTrainConfig.from_yaml(tmp_path / "latin1.yaml")


def test_config_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\nvae: v\ndata: d\noutput_dir: o\nrank: 16\n")
    config = LoraTrainConfig.from_yaml(path, rank=8)
    assert (config.rank, config.alpha, config.optimizer, config.instance_prompt) == (8, 64.0, "prodigy", "RGBA")
    path.write_text("model: m\nranks: 3\n")
    with pytest.raises(ValueError, match="c.yaml: unknown config key ranks"):
        LoraTrainConfig.from_yaml(path)
    path.write_text("model: m\nvae: v\ndata: d\noutput_dir: o\nlearning_rate: 1e-4\nmixed_precision: no\n")
    config = LoraTrainConfig.from_yaml(path)  # YAML 1.2 reading: a float and the text "no"
    assert (config.learning_rate, config.mixed_precision) == (1e-4, "no")
    path.write_text("model: m\nvae: v\ndata: d\noutput_dir: o\nrank: many\n")
    with pytest.raises(ValueError, match="c.yaml: config key rank: cannot read 'many' as int"):
        LoraTrainConfig.from_yaml(path)


def test_hidden_colour_under_zero_alpha_does_not_change_training(setup, tmp_path):
    array = np.array(to_pil(sticker(32, 0)))  # training size: no resize that would clear the colour
    transparent = array[..., 3] == 0
    assert transparent.any()
    losses = []
    for k, hidden in enumerate(((0, 0, 0), (250, 20, 90))):
        array[transparent, :3] = hidden  # same look, different colour under alpha = 0
        folder = tmp_path / str(k)
        folder.mkdir()
        Image.fromarray(array).save(folder / "a.png")
        config = _config(setup, f"hidden{k}", data=str(folder), batch_size=1, max_steps=1, cache_latents=True)
        losses.append(train_lora(config).losses)
    assert losses[0] == losses[1]


def _nan_from(monkeypatch, bad_micro_steps):
    """Make the loss NaN (still back-propagated through the LoRA) at the given micro-steps."""
    from alphavae.diffusion import train as lora_train

    original = lora_train._Trainer.loss

    def loss(self, keys, micro_step):
        value = original(self, keys, micro_step)
        return value * float("nan") if micro_step in bad_micro_steps else value

    monkeypatch.setattr(lora_train._Trainer, "loss", loss)


def test_a_non_finite_step_is_skipped(setup, monkeypatch):
    """A NaN loss used to be stepped: NaN LoRA weights, NaN checkpoints rotating out good ones, "final loss nan"."""
    _nan_from(monkeypatch, {1})
    result = train_lora(_config(setup, "nan-once", optimizer="adamw", learning_rate=1e-2, checkpoint_every=1,
                                keep_checkpoints=5))
    assert sorted(result.losses) == [1, 3, 4] and result.nonfinite_steps == 1
    weights = {step: load_file(result.lora_dir / "checkpoints" / f"step-{step:08d}" / LORA_FILE) for step in (1, 2, 3)}
    final = load_file(result.lora_dir / LORA_FILE)
    assert all(torch.isfinite(value).all() for value in final.values())
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in final)  # no optimiser step at step 2
    assert not all(torch.equal(weights[2][k], weights[3][k]) for k in final)


def test_consecutive_non_finite_steps_end_the_run(setup, monkeypatch):
    from alphavae.train import NonFiniteLossError

    _nan_from(monkeypatch, {1, 2, 3})
    with pytest.raises(NonFiniteLossError, match=r"^2 consecutive steps with a non-finite loss \(last: step 3\); "
                                                 r"lower the learning rate"):
        train_lora(_config(setup, "nan-always", max_nonfinite=2))
    assert not (setup[0] / "nan-always" / LORA_FILE).exists()


def test_a_resume_that_changes_max_steps_under_a_decaying_schedule_is_refused(setup, monkeypatch):
    """A resume to a larger max_steps restarted a linear decay: lr 0 at the old end, then back up."""
    train_lora(_config(setup, "decay", max_steps=2, lr_scheduler="linear", optimizer="adamw", learning_rate=1e-3))
    monkeypatch.setattr(RGBAVAE, "from_pretrained", lambda *a, **k: pytest.fail("models loaded before the refusal"))
    with pytest.raises(ValueError, match=r"step-00000002: saved by a run of max_steps 2, this resume asks for "
                                         r"max_steps 5; lr_scheduler 'linear' .* keep --max-steps 2, or train with a "
                                         r"constant lr_scheduler"):
        train_lora(_config(setup, "decay", max_steps=5, resume="latest", lr_scheduler="linear", optimizer="adamw",
                           learning_rate=1e-3))


def test_a_damaged_checkpoint_is_refused_before_the_models_load(setup, monkeypatch):
    """A cut-short optimizer state was found only by the restore, after FLUX had loaded, and the message did not
    name the sound checkpoint before it."""
    out = train_lora(_config(setup, "cut", max_steps=2, checkpoint_every=1, keep_checkpoints=5)).lora_dir
    (out / LORA_FILE).unlink()  # as if interrupted after its checkpoints
    damaged = out / "checkpoints" / "step-00000002"
    optimizer = damaged / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    monkeypatch.setattr(RGBAVAE, "from_pretrained", lambda *a, **k: pytest.fail("models loaded before the refusal"))
    with pytest.raises(ValueError, match=rf"^{optimizer}: damaged checkpoint file .*; this is the newest checkpoint "
                                         rf"of {out}: delete {damaged} and rerun with --resume latest to continue "
                                         r"from step-00000001"):
        train_lora(_config(setup, "cut", max_steps=2, resume="latest"))


def test_a_train_vae_checkpoint_is_named_as_such_before_the_models_load(setup, monkeypatch):
    """A train-vae checkpoint given to train-lora failed on a bare missing file (its LoRA)."""
    from safetensors.torch import save_file

    from alphavae.train.checkpoint import CheckpointMismatchError

    vae_checkpoint = setup[0] / "vae-run" / "checkpoints" / "step-00000001"
    vae_checkpoint.mkdir(parents=True)
    save_file({"a": torch.zeros(1)}, vae_checkpoint / "model.safetensors")
    (vae_checkpoint / "trainer_state.json").write_text('{"step": 1, "nonfinite_streak": 0}')
    _no_models(monkeypatch)
    with pytest.raises(CheckpointMismatchError, match=f"^{vae_checkpoint} is a train-vae checkpoint, not a "
                                                      "train-lora one: resume it with alphavae train-vae"):
        train_lora(_config(setup, "other-kind", resume=str(vae_checkpoint)))


def test_a_missing_data_path_is_named(setup):
    """A misspelled --data was reported as "output folder ... is inside input folder <its parent>"."""
    missing = setup[0] / "dta"
    with pytest.raises(FileNotFoundError, match=f"^{missing}: training data not found"):
        train_lora(_config(setup, "typo", data=str(missing)))


def _no_models(monkeypatch):
    monkeypatch.setattr(RGBAVAE, "from_pretrained", lambda *a, **k: pytest.fail("models loaded before the refusal"))


def test_an_output_that_holds_an_input_is_refused_before_the_models_load(setup, monkeypatch):
    """Data at RUN/checkpoints (which checkpoint rotation prunes), a model folder, a manifest's image or the captions
    file inside -o were all accepted."""
    root, flux, vae, data, _ = setup
    _no_models(monkeypatch)
    held = root / "held"
    shutil.copytree(data, held / "checkpoints")
    with pytest.raises(ValueError, match=f"^run folder {held} contains input {held / 'checkpoints'}; choose a run "
                                         "folder apart from the inputs$"):
        train_lora(_config(setup, "held", data=str(held / "checkpoints")))
    shutil.copytree(vae, root / "holds-vae" / "vae")
    with pytest.raises(ValueError, match=f"^run folder {root / 'holds-vae'} contains input {root / 'holds-vae'}/vae;"):
        train_lora(_config(setup, "holds-vae", vae=str(root / "holds-vae" / "vae")))
    listed = shutil.copy(data / "s0.png", (root / "holds-image").mkdir() or root / "holds-image")
    (root / "lists").mkdir()
    (root / "lists" / "m.jsonl").write_text(json.dumps({"file": str(listed), "split": "train"}) + "\n")
    with pytest.raises(ValueError, match=f"^run folder {root / 'holds-image'} contains input {listed};"):
        train_lora(_config(setup, "holds-image", data=str(root / "lists" / "m.jsonl")))
    (root / "holds-captions").mkdir()
    (root / "holds-captions" / "captions.jsonl").write_text('{"file_name": "s0.png", "text": "a cup"}\n')
    with pytest.raises(ValueError, match=f"contains input {root / 'holds-captions' / 'captions.jsonl'};"):
        train_lora(_config(setup, "holds-captions", captions=str(root / "holds-captions" / "captions.jsonl")))
    (root / "hub-run").mkdir()
    monkeypatch.chdir(root / "hub-run")  # a hub id is no folder: "org/flux" is not hub-run/org/flux
    with pytest.raises(pytest.fail.Exception, match="models loaded"):
        train_lora(_config(setup, "hub-run", model="org/flux"))


def test_fewer_readable_images_than_one_global_batch_are_refused_before_the_models_load(setup, monkeypatch):
    """The sampler refused them only after FLUX and the VAE had loaded, without naming the data."""
    _no_models(monkeypatch)
    with pytest.raises(ValueError, match=rf"^{setup[3]}: 2 readable training image\(s\) \(1 unreadable skipped\), "
                                         r"fewer than one global batch of 3 \(batch_size 3 x 1 process\(es\)\); "
                                         r"lower --batch-size or add images$"):
        train_lora(_config(setup, "small-data", batch_size=3))
