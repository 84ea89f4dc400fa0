"""Tests for the ``alphavae`` command-line front end (``alphavae.cli``): the parser and its start-up cost."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from alphavae.cli import main
from alphavae.convert import PROVENANCE_FILE

HEAVY = ("diffusers", "peft", "transformers", "accelerate", "torchvision")


def test_building_the_parser_loads_no_model_library():
    """`alphavae --help` and argument errors stay fast: the subcommands import diffusers and the other
    model libraries only when they run (each takes seconds to import)."""
    code = ("import sys; from alphavae.cli import build_parser; build_parser(); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


@pytest.mark.parametrize("command", ["convert", "reconstruct", "latent-factors", "background-moments", "data fetch",
                                     "data samples", "data export", "eval", "eval-vae", "eval-t2i", "train-vae",
                                     "train-lora", "generate"])
def test_every_subcommand_has_help(command, capsys):
    """Each command's --help exits 0 with its own usage line (its options build without the model libraries)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: alphavae {command} ")


def test_train_vae_help_lists_every_config_setting(help_text):
    """--config and --set take TrainConfig's settings, but --help named only a few examples."""
    import dataclasses

    from alphavae.train import TrainConfig

    text = help_text(["train-vae"])
    config = TrainConfig()
    sections = [field.name for field in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, field.name))]
    assert ", ".join(field.name for field in dataclasses.fields(config) if field.name not in sections) in text
    for name in sections:
        assert f"{name}: {', '.join(field.name for field in dataclasses.fields(getattr(config, name)))}" in text


def test_convert_help_names_the_provenance_file(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    assert PROVENANCE_FILE in capsys.readouterr().out


def test_ctrl_c_while_a_command_loads_is_one_line(monkeypatch, capsys):
    """Ctrl-C during imports or model loading (before a command's own handler) gives one line and exit 130."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("alphavae.vae.RGBAVAE.from_pretrained", interrupted)
    assert main(["latent-factors", "vae", "images"]) == 130
    assert capsys.readouterr().err == "alphavae latent-factors: interrupted\n"
    monkeypatch.setattr("alphavae.cli.build_parser", interrupted)  # while the command modules import torch
    assert main(["latent-factors", "vae", "images"]) == 130
    assert capsys.readouterr().err == "alphavae: interrupted\n"


@pytest.mark.parametrize("argv", [["generate", "a.png", "--guidance", "nan"], ["generate", "x", "--lora-scale", "inf"],
                                  ["train-lora", "--lr=-inf"], ["generate", "x", "--guidance", "high"]])
def test_float_options_must_be_finite_numbers(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "is not a finite number" in (err := capsys.readouterr().err) or "'high' is not a number" in err


def test_a_mistyped_option_names_the_command(tmp_path, capsys):
    """argparse reported an unknown option under the top-level usage line; the command's help is named instead."""
    assert main(["reconstruct", str(tmp_path), "-o", str(tmp_path / "out"), "--overwirte"]) == 2
    assert capsys.readouterr().err == ("alphavae reconstruct: error: unrecognized arguments: --overwirte "
                                       "(see alphavae reconstruct --help)\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["reconstruct", "in", "-o", "out", "--over"], ["data", "fetch", "-o", "out", "--sou", "x"],
                                  ["eval", "--gt", "g", "--pred", "p", "-o", "out", "--prot", "clean"]])
def test_option_abbreviations_are_refused(argv, tmp_path, monkeypatch, capsys):
    """argparse took `--over` for `--overwrite`: an abbreviation can come to mean another option when options
    are added, so options are spelled out; the error names the (sub)command."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    command = " ".join(argv[:2] if argv[0] == "data" else argv[:1])
    assert capsys.readouterr().err.startswith(f"alphavae {command}: error: unrecognized arguments: --")
    assert not (tmp_path / "out").exists()


def test_help_states_the_exit_statuses(help_text):
    out = help_text([])
    assert "exit status: 0 done" in out and "1 done, but some inputs failed" in out and "130 interrupted" in out


@pytest.mark.parametrize("argv", [["convert", "{tmp}/missing", "{tmp}/out"],
                                  ["reconstruct", "{tmp}/missing", "-o", "{tmp}/out"],
                                  ["train-vae", "--config", "{tmp}/missing.yaml", "-o", "{tmp}/out"],
                                  ["background-moments", "{tmp}/missing"],
                                  ["latent-factors", "{tmp}/missing", "{tmp}"],
                                  ["data", "export", "{tmp}/missing.jsonl", "--split", "test", "-o", "{tmp}/out"],
                                  ["eval", "--gt", "{tmp}/missing", "--pred", "{tmp}", "-o", "{tmp}/out"],
                                  ["generate", "--prompt", "a cup", "--model", "{tmp}/missing", "--vae", "{tmp}/missing",
                                   "-o", "{tmp}/out"]])
def test_an_error_that_ends_a_command_is_exit_status_2(argv, tmp_path, capsys):
    """The same exit statuses in every command (`alphavae --help`): convert, reconstruct, train-vae, data,
    latent-factors and background-moments ended errors with 1, the status of 'done, some inputs failed'."""
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert f"alphavae {argv[0]}" in err and ": error: " in err and "missing" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["convert", "{tmp}", ""], ["convert", "", "{tmp}/out"],
                                  ["reconstruct", "{tmp}", "-o", ""], ["reconstruct", "", "-o", "{tmp}/out"],
                                  ["reconstruct", "{tmp}", "-o", "{tmp}/out", "--grid", ""],
                                  ["train-vae", "--data", "{tmp}", "-o", ""],
                                  ["train-lora", "--model", "m", "--vae", "v", "--data", "{tmp}", "-o", ""],
                                  ["background-moments", ""], ["latent-factors", "{tmp}", ""],
                                  ["data", "export", "{tmp}/m.jsonl", "-o", ""], ["data", "samples", "", "-o", "{tmp}"],
                                  ["data", "fetch", "-o", ""],
                                  ["eval", "--gt", "{tmp}", "--pred", "{tmp}", "-o", ""],
                                  ["eval-vae", "--data", "", "-o", "{tmp}/out"],
                                  ["generate", "--prompt", "a cup", "--model", "m", "--vae", "v", "-o", ""]])
def test_an_empty_path_is_refused_not_taken_as_the_current_folder(argv, tmp_path, capsys, monkeypatch):
    """-o '' (an unset variable in -o "$OUT") wrote outputs into the current folder, next to its inputs."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main([arg.format(tmp=tmp_path) for arg in argv])
    assert stop.value.code == 2
    assert ("empty path (an unset variable?); give a file or folder, '.' for the current folder"
            in capsys.readouterr().err)
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["convert", "train-vae", "train-lora", "generate"])
def test_an_output_below_a_file_is_refused_before_any_model_loads(command, tmp_path, capsys, monkeypatch):
    """-o under a regular file gave a raw '[Errno 20] Not a directory', in train-vae and generate only after the
    models had loaded; reconstruct and eval already said it up front."""
    import alphavae.convert
    import alphavae.diffusion.train
    import alphavae.train.loop
    from alphavae.vae import RGBAVAE

    def loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the output folder was checked")

    for target, name in ((alphavae.convert, "load_autoencoder"), (alphavae.train.loop, "load_models"),
                         (alphavae.diffusion.train._Trainer, "run"), (RGBAVAE, "from_pretrained")):
        monkeypatch.setattr(target, name, loading)
    for folder in ("src", "data"):
        (tmp_path / folder).mkdir()
    (tmp_path / "file.png").write_bytes(b"x")
    out = tmp_path / "file.png" / "sub"
    models = ["--vae", str(tmp_path / "src")] + (["--model", str(tmp_path / "src")] if command != "train-vae" else [])
    args = {"convert": [str(tmp_path / "src"), str(out)],
            "train-vae": ["--config", "vae_main", "--data", str(tmp_path / "data"), *models, "-o", str(out)],
            "train-lora": ["--data", str(tmp_path / "data"), *models, "-o", str(out)],
            "generate": ["--prompt", "a cup", *models, "-o", str(out)]}[command]
    what = {"convert": "the converted model", "generate": "images"}.get(command, "the run")
    assert main([command, *args]) == 2  # every command: an error that ends it is exit status 2
    err = capsys.readouterr().err
    assert err.endswith(f"{out}: cannot write {what} there ({tmp_path / 'file.png'} is not a folder)\n"), err
    assert err.count("\n") == 1, err


def test_skipped_count_says_how_many_input_paths_and_images_failed(tmp_path, capsys):
    """'2 of 5 inputs failed' added an input path given (missing) to the images found in a folder given, without
    saying so (report_skipped: background-moments and latent-factors)."""
    from PIL import Image

    for index in range(3):
        Image.new("RGBA", (4, 4), (0, 0, 0, 255)).save(tmp_path / f"{index}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert main(["background-moments", str(tmp_path), str(tmp_path / "missing.png")]) == 1
    err = capsys.readouterr().err
    assert err.endswith("alphavae background-moments: 2 of 5 inputs failed (1 input path unusable, 1 of 4 images "
                        "not loaded)\n"), err
    assert main(["background-moments", str(tmp_path), str(tmp_path / "missing.png"), str(tmp_path / "gone")]) == 1
    assert capsys.readouterr().err.endswith("3 of 6 inputs failed (2 input paths unusable, 1 of 4 images not "
                                            "loaded)\n")
    (tmp_path / "broken.png").unlink()
    assert main(["background-moments", str(tmp_path), str(tmp_path / "missing.png")]) == 1
    assert capsys.readouterr().err.endswith("1 of 4 inputs failed (1 input path unusable)\n")


def test_log_progress_keeps_our_info_and_accelerate_warnings_only(caplog, request):
    """The long-running commands log our INFO lines, but accelerate's per-file INFO lines of every checkpoint save
    and load stay out (its warnings still show)."""
    import logging

    from alphavae.cli import log_progress

    request.addfinalizer(lambda: logging.getLogger("accelerate").setLevel(logging.NOTSET))
    caplog.set_level(logging.INFO)  # what log_progress's basicConfig sets where the root logger has no handler yet
    log_progress()
    for name in ("accelerate.checkpointing", "accelerate.accelerator"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)
        assert logging.getLogger(name).isEnabledFor(logging.WARNING)
    assert logging.getLogger("alphavae.train.loop").isEnabledFor(logging.INFO)


def test_each_stderr_line_is_one_write_also_unbuffered(tmp_path, monkeypatch):
    """With PYTHONUNBUFFERED=1 (common in containers) stderr writes through, and print wrote a line and its newline
    apart: the processes of a torchrun / accelerate launch run ran their error lines together."""
    writes = []

    class Recorder(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            writes.append(bytes(data))
            return len(data)

    stderr = io.TextIOWrapper(Recorder(), encoding="utf-8", write_through=True)  # as Python makes it, unbuffered
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["reconstruct", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out")]) == 2
    stderr.flush()
    assert len(writes) == 1 and writes[0].startswith(b"alphavae reconstruct: error: ") and writes[0].endswith(b"\n")
