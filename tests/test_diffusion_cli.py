import json

import pytest
import torch
from PIL import Image

from alphavae.cli import main
from flux_tiny import model_folders, write_real_images


def _train_args(root, flux, vae):
    """The train-lora command line of the ``trained`` fixture (2 steps into ``root/lora``)."""
    return ["train-lora", "--model", str(flux), "--vae", str(vae), "--data", str(root / "data"), "-o",
            str(root / "lora"), "--captions", str(root / "captions.jsonl"), "--resolution", "32", "--rank", "4",
            "--alpha", "2", "--optimizer", "adamw", "--lr", "1e-3", "--max-steps", "2", "--batch-size", "2",
            "--report-to", "none", "--max-sequence-length", "16", "--validation-prompt", "a cup",
            "--validation-steps", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train-lora end to end through the CLI (2 steps), on real images plus one unreadable file."""
    root = tmp_path_factory.mktemp("cli")
    flux, vae = model_folders(root)
    data = root / "data"
    write_real_images(data, count=2)
    (data / "broken.png").write_bytes(b"\x89PNG broken")
    (root / "captions.jsonl").write_text(json.dumps({"file_name": "s1.png", "text": "a blue sticker"}) + "\n")
    code = main(_train_args(root, flux, vae))
    return root, flux, vae, code


def test_train_lora_cli_writes_lora_and_reports_skipped_image(trained, capsys):
    root, _, _, code = trained
    assert code == 1  # one unreadable image was skipped; the LoRA is still written
    assert (root / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (root / "lora" / "validation" / "step-00000002" / "00.png").is_file()  # 8 digits, as train-vae's


def test_train_lora_cli_resume_of_a_finished_run_has_nothing_to_train(trained, capsys):
    """--resume latest on a finished run printed "final loss n/a" and rewrote the same LoRA and validation."""
    root, flux, vae, _ = trained
    outputs = sorted(p for p in (root / "lora").rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in outputs}
    capsys.readouterr()
    assert main([*_train_args(root, flux, vae), "--resume", "latest"]) == 0
    assert capsys.readouterr().out == (f"nothing to train: {root / 'lora'} already reached max_steps 2 (its LoRA and "
                                       "checkpoints are left as they are; a larger --max-steps continues it)\n")
    assert sorted(p for p in (root / "lora").rglob("*") if p.is_file()) == outputs
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in outputs} == before


def test_generate_cli_with_lora(trained, tmp_path, capsys):
    root, flux, vae, _ = trained
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\n# skipped\nglass of water\n")
    args = ["generate", "--model", str(flux), "--vae", str(vae), "--lora", str(root / "lora"), "--prompts-file",
            str(prompts), "--n", "2", "--seed", "3", "--size", "30x20", "--steps", "2", "--batch-size", "2",
            "-o", str(tmp_path / "out")]
    assert main(args) == 0
    assert "generated at 32x32 (FLUX needs multiples of 16), centre-cropped to 30x20" in capsys.readouterr().out
    files = sorted((tmp_path / "out").glob("p*.png"))
    assert [f.name for f in files] == ["p0000-s3.png", "p0000-s4.png", "p0001-s3.png", "p0001-s4.png"]
    for file in files:
        with Image.open(file) as image:
            assert image.mode == "RGBA" and image.size == (30, 20)
    assert (tmp_path / "out" / "contact_sheet.png").is_file()
    assert main(args) == 0
    rerun = capsys.readouterr().out
    assert "wrote 0 image(s)" in rerun and "centre-cropped" not in rerun  # nothing generated, nothing cropped


def test_cli_errors(trained, tmp_path, capsys):
    _, flux, vae, _ = trained
    assert main(["generate", "--model", str(flux), "--vae", str(vae), "--prompt", "x", "--size", "big",
                 "-o", str(tmp_path)]) == 2
    assert "--size must look like" in capsys.readouterr().err
    assert main(["train-lora", "--model", str(flux)]) == 2
    assert "missing settings" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nothing"), "--vae", str(vae), "--prompt", "x",
                 "-o", str(tmp_path / "o")]) == 2
    assert f"error: {tmp_path / 'nothing'}: folder does not exist" in capsys.readouterr().err  # not a hub id error


def test_generate_cli_refuses_existing_file_of_another_request(trained, tmp_path, capsys):
    _, flux, vae, _ = trained
    out = tmp_path / "gen"
    base = ["generate", "--model", str(flux), "--vae", str(vae), "--steps", "2", "--device", "cpu", "-o", str(out)]
    assert main(base + ["--prompt", "a cup", "--size", "33x17"]) == 0
    capsys.readouterr()
    cup, records = (out / "p0000-s0.png").read_bytes(), (out / "generations.jsonl").read_text()
    record = json.loads(records)
    assert record["model"] == str(flux.resolve()) and record["vae"] == str(vae.resolve())
    assert record["lora"] is None and record["dtype"] == "float32"
    assert main(base + ["--prompt", "a dog", "--size", "16x16"]) == 1
    captured = capsys.readouterr()
    assert "wrote 0 image(s)" in captured.out and "1 refused" in captured.out
    assert f"refused: {out / 'p0000-s0.png'}: exists from a different request (prompt: recorded 'a cup', " \
           "now 'a dog'; width: recorded 33, now 16; height: recorded 17, now 16)" in captured.err
    assert (out / "p0000-s0.png").read_bytes() == cup and (out / "generations.jsonl").read_text() == records
    assert main(base + ["--prompt", "a cup", "--size", "33x17", "--guidance", "2"]) == 1
    assert "guidance: recorded 3.5, now 2.0" in capsys.readouterr().err
    assert main(base + ["--prompt", "a cup", "--size", "33x17"]) == 0
    assert "skipped 1 existing, 0 refused" in capsys.readouterr().out


def test_generate_cli_ctrl_c_is_one_line(trained, tmp_path, capsys, monkeypatch):
    _, flux, vae, _ = trained

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("alphavae.diffusion.pipeline.generate_from_paths", interrupted)
    out = tmp_path / "gen"
    assert main(["generate", "--model", str(flux), "--vae", str(vae), "--prompt", "a cup", "-o", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.startswith("alphavae generate: interrupted;") and err.count("\n") == 1


def test_train_lora_cli_ctrl_c_says_how_to_resume(trained, tmp_path, capsys, monkeypatch):
    _, flux, vae, _ = trained

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr("alphavae.diffusion.train.train_lora", interrupted)
    assert main(["train-lora", "--model", str(flux), "--vae", str(vae), "--data", str(tmp_path), "-o",
                 str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == ("alphavae train-lora: interrupted before the first checkpoint: rerun the same "
                                       "command to start again\n")


def test_train_lora_cli_ends_non_finite_runs_with_one_error_line(trained, tmp_path, capsys, monkeypatch):
    """NonFiniteLossError (a RuntimeError) escaped the CLI as a traceback; now exit 2 with one line."""
    from alphavae.train import NonFiniteLossError

    _, flux, vae, _ = trained

    def diverged(config):
        raise NonFiniteLossError("10 consecutive steps with a non-finite loss (last: step 12); lower the learning rate")

    monkeypatch.setattr("alphavae.diffusion.train.train_lora", diverged)
    assert main(["train-lora", "--model", str(flux), "--vae", str(vae), "--data", str(tmp_path), "-o",
                 str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == ("alphavae train-lora: error: 10 consecutive steps with a non-finite loss "
                                       "(last: step 12); lower the learning rate\n")


def test_generate_cli_prompts_file_errors(trained, tmp_path, capsys):
    _, flux, vae, _ = trained
    base = ["generate", "--model", str(flux), "--vae", str(vae), "-o", str(tmp_path / "out"), "--prompts-file"]
    assert main(base + [str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"alphavae generate: error: {tmp_path}: is a folder, not a prompts file\n"
    assert main(base + [str(tmp_path / "none.txt")]) == 2
    assert f"error: {tmp_path / 'none.txt'}: prompts file not found" in capsys.readouterr().err


def test_train_lora_cli_names_an_empty_data_folder(trained, tmp_path, capsys):
    _, flux, vae, _ = trained
    (tmp_path / "empty").mkdir()
    assert main(["train-lora", "--model", str(flux), "--vae", str(vae), "--data", str(tmp_path / "empty"),
                 "-o", str(tmp_path / "lora"), "--resolution", "32", "--report-to", "none"]) == 2
    last_line = capsys.readouterr().err.splitlines()[-1]  # after the model loaders' progress bars
    assert last_line == f"alphavae train-lora: error: {tmp_path / 'empty'}: no images found"


def test_generate_refuses_a_bad_lora_before_loading_flux_and_notices_a_retrained_one(trained, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    root, flux, vae, _ = trained
    missing = tmp_path / "runs" / "nonexistent"
    (tmp_path / "runs").mkdir()
    args = ["generate", "--vae", str(vae), "--prompt", "a cup", "--steps", "2", "--size", "16x16"]
    assert main([*args, "--model", str(tmp_path / "no-flux"), "--lora", str(missing), "-o", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == f"alphavae generate: error: {missing}: LoRA file or folder not found\n"
    assert main([*args, "--model", str(flux), "--lora", str(tmp_path / "runs"), "-o", str(tmp_path / "x")]) == 2
    assert "runs: no .safetensors LoRA weights in this folder (an unfinished train-lora run" in capsys.readouterr().err
    assert main([*args, "--model", str(flux), "--lora-scale", "0.5", "-o", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.endswith("error: --lora-scale needs --lora (there is no LoRA to scale)\n")
    lora = shutil.copytree(root / "lora", tmp_path / "lora", ignore=shutil.ignore_patterns("validation"))
    base = [*args, "--model", str(flux), "--lora", str(lora), "-o", str(tmp_path / "gen")]
    assert main(base) == 0
    record = json.loads((tmp_path / "gen" / "generations.jsonl").read_text())
    weights = lora / "pytorch_lora_weights.safetensors"
    assert record["lora"] == str(lora.resolve()) and len(record["lora_sha256"]) == 64
    capsys.readouterr()
    state = load_file(weights)
    save_file({k: v * 2 for k, v in state.items()}, weights, metadata={"format": "pt"})  # retrained in place
    assert main(base) == 1
    assert "exists from a different request (lora_sha256: recorded" in capsys.readouterr().err


def test_generate_cli_refuses_unfinishable_requests_in_one_line_before_loading(tmp_path, capsys):
    """--seed 2**64-1 --n 2 failed at the second image (torch overflow, exit 1); a prompt with a lone surrogate
    (non-UTF-8 argv bytes) crashed in the tokenizer. Both now stop before any model loads (the model is missing)."""
    base = ["generate", "--model", str(tmp_path / "no-model"), "--vae", str(tmp_path / "no-vae"), "-o",
            str(tmp_path / "out")]
    assert main(base + ["--prompt", "x", "--seed", str(2**64 - 1), "--n", "2"]) == 2
    assert capsys.readouterr().err == (
        f"alphavae generate: error: seed {2**64 - 1} with n 2: the last image's seed (seed + n - 1 = {2**64}) is "
        f"above {2**64 - 1}, the largest seed torch takes; lower the seed or n\n")
    assert main(base + ["--prompt", "ok", "--prompt", "caf\udce9"]) == 2
    assert capsys.readouterr().err == ('alphavae generate: error: prompt 2 of 2 is not valid text (a lone UTF-16 '
                                       'surrogate "caf\\udce9")\n')


def test_generate_cli_more_images_into_a_folder_rebuild_its_contact_sheet(trained, tmp_path, capsys):
    """--n 2 then --n 3 into one folder (the natural "make more" step) wrote the third image but refused the
    existing contact_sheet.png (exit 1); the sheet is now a preview of the folder, rebuilt when a run adds images."""
    _, flux, vae, _ = trained
    out = tmp_path / "gen"
    base = ["generate", "--model", str(flux), "--vae", str(vae), "--steps", "1", "--size", "16x16", "--device", "cpu",
            "--prompt", "a cup", "-o", str(out)]
    assert main(base + ["--n", "2"]) == 0
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size == (2 * (16 + 2) + 2, 16 + 2 + 2)  # 2 tiles
    capsys.readouterr()
    assert main(base + ["--n", "3"]) == 0
    captured = capsys.readouterr()
    assert "wrote 1 image(s)" in captured.out and "skipped 2 existing, 0 refused" in captured.out
    assert "refused" not in captured.err
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size == (3 * (16 + 2) + 2, 16 + 2 + 2)  # 3 tiles: the folder's images, not only this run's
    sheet = (out / "contact_sheet.png").read_bytes()
    assert main(base + ["--n", "3"]) == 0  # adds nothing: the sheet is left as it is
    assert main(base + ["--n", "4", "--no-sheet"]) == 0
    assert (out / "contact_sheet.png").read_bytes() == sheet and (out / "p0000-s3.png").is_file()


def test_generate_cli_refuses_a_hand_edited_lora_of_the_wrong_width_in_one_line(trained, tmp_path, capsys):
    """A lora_A with 3 columns too many loaded (diffusers widened the layer to fit) and every image then failed
    (exit 1); it is now a load error naming the file and the tensor (exit 2)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    root, flux, vae, _ = trained
    weights = root / "lora" / "pytorch_lora_weights.safetensors"
    with safe_open(weights, "pt") as file:
        metadata = file.metadata()
    state, key = load_file(weights), "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 3)
    save_file(state, tmp_path / "edited.safetensors", metadata=metadata)
    assert main(["generate", "--model", str(flux), "--vae", str(vae), "--lora", str(tmp_path / "edited.safetensors"),
                 "--prompt", "a cup", "--steps", "1", "--size", "16x16", "-o", str(tmp_path / "gen")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"alphavae generate: error: {tmp_path / 'edited.safetensors'}: LoRA does not fit this FLUX transformer ({key} "
        "has shape [4, 35], its layer's weight [32, 32]: lora_A needs 32 columns); it was trained for another "
        "transformer, or edited")
    assert not (tmp_path / "gen").exists() or not list((tmp_path / "gen").glob("*.png"))


def test_generate_help_states_the_contact_sheet_limits_the_pipeline_uses(help_text):
    """--help types the sheet limits by hand (importing the pipeline would load diffusers): they must agree."""
    import re

    from alphavae.diffusion.pipeline import SHEET_COLUMNS, SHEET_LIMIT, SHEET_TILE

    text = help_text(["generate"])
    assert re.search(rf"the first {SHEET_LIMIT} images recorded in generations.jsonl in prompt and seed order, shrunk "
                     rf"to at most {SHEET_TILE} px, {SHEET_COLUMNS} per row", text)


def test_train_lora_help_lists_every_config_setting(help_text):
    """--config takes a YAML of LoraTrainConfig fields, but --help named none of them."""
    import dataclasses

    from alphavae.diffusion.train import LoraTrainConfig

    assert ", ".join(field.name for field in dataclasses.fields(LoraTrainConfig)) in help_text(["train-lora"])


def test_train_lora_help_names_the_defaults_that_are_not_the_papers(help_text):
    """The description called its defaults the paper's recipe, but the paper trains in bf16 at a global batch of 8;
    the defaults are float32 and a global batch of 1."""
    text = help_text(["train-lora"])
    assert "Defaults are the paper's recipe:" not in text
    assert "except two: --mixed-precision defaults to no so CPU runs are exact" in text
    assert "the global batch is --batch-size x --grad-accum x processes, 1 by default against the paper's 8" in text


def test_generate_cli_refuses_absurd_numbers_in_one_line_before_loading(tmp_path, capsys):
    """--size 33000x33000 ended in an OverflowError traceback, --steps 10**11 in a MemoryError one, --n 10**12 hung,
    and --guidance 1e300 failed every image; the models are missing here, so nothing may load."""
    base = ["generate", "--model", str(tmp_path / "no-model"), "--vae", str(tmp_path / "no-vae"), "--prompt", "x",
            "-o", str(tmp_path / "out")]
    assert main([*base, "--size", "33000x33000"]) == 2
    assert capsys.readouterr().err == ("alphavae generate: error: --size 33000x33000: each side must be 1 to 8192 "
                                       "pixels (8192x8192 is the most pixels alphavae reads back from an image)\n")
    assert main([*base, "--size", "0x16"]) == 2
    assert "error: --size 0x16: each side must be 1 to 8192 pixels" in capsys.readouterr().err
    for flag, value, message in (
            ("--steps", "100000000000", "argument --steps: 100000000000 is above 1000, the FLUX scheduler's training "
                                        "timesteps"),
            ("--n", str(10**12), f"argument --n: {10**12} is above 100000, the most images one run makes"),
            ("--guidance", "1e300", "argument --guidance: '1e300' is beyond float32's range (magnitude at most "
                                    "3.403e+38)"),
            ("--lora-scale", "-1e39", "argument --lora-scale: '-1e39' is beyond float32's range")):
        with pytest.raises(SystemExit) as stop:
            main([*base, f"{flag}={value}"])
        assert stop.value.code == 2 and f"alphavae generate: error: {message}" in capsys.readouterr().err


def test_generate_cli_limits_are_the_pipelines(help_text):
    """The CLI types its limits by hand (--help loads no diffusers): they must be the pipeline's."""
    from alphavae.cli import diffusion as cli
    from alphavae.diffusion import pipeline

    assert (cli._MAX_SIDE, cli._MAX_STEPS, cli._MAX_IMAGES, cli._FLOAT32_MAX) == (
        pipeline.MAX_SIDE, pipeline.MAX_STEPS, pipeline.MAX_IMAGES, pipeline.FLOAT32_MAX)
    assert "each side 1 to 8192" in help_text(["generate"])


def test_generate_cli_refuses_an_output_inside_an_input_folder(tmp_path, capsys):
    """-o inside the --model, --vae or --lora folder was accepted and the PNGs were written among the inputs."""
    folders = {name: (tmp_path / name).mkdir() or tmp_path / name for name in ("flux", "vae", "lora")}
    for folder in folders.values():
        out = folder / "samples"
        assert main(["generate", "--model", str(folders["flux"]), "--vae", str(folders["vae"]), "--lora",
                     str(folders["lora"]), "--prompt", "x", "-o", str(out)]) == 2
        assert capsys.readouterr().err == (f"alphavae generate: error: output folder {out} is inside input folder "
                                           f"{folder}; choose one outside the inputs\n")
        assert not out.exists()


def test_train_lora_cli_refuses_a_resolution_no_image_could_load(tmp_path, capsys):
    """--resolution 16384 resized every image past the pixel limit, so all were skipped as unreadable."""
    assert main(["train-lora", "--model", "m", "--vae", "v", "--data", str(tmp_path), "-o", str(tmp_path / "run"),
                 "--resolution", "16384"]) == 2
    assert capsys.readouterr().err == ("alphavae train-lora: error: resolution must be at most 8192 (a larger square "
                                       "is above alphavae.io.DEFAULT_MAX_PIXELS, so no image would load), got 16384\n")
