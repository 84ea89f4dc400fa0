import json

import pytest
from PIL import Image

from alphavae.cli import main
from flux_tiny import model_folders, write_real_images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train-lora end to end through the CLI (2 steps), on real images plus one unreadable file."""
    root = tmp_path_factory.mktemp("cli")
    flux, vae = model_folders(root)
    data = root / "data"
    write_real_images(data, count=2)
    (data / "broken.png").write_bytes(b"\x89PNG broken")
    captions = root / "captions.jsonl"
    captions.write_text(json.dumps({"file_name": "s1.png", "text": "a blue sticker"}) + "\n")
    code = main(["train-lora", "--model", str(flux), "--vae", str(vae), "--data", str(data), "-o", str(root / "lora"),
                 "--captions", str(captions), "--resolution", "32", "--rank", "4", "--alpha", "2", "--optimizer",
                 "adamw", "--lr", "1e-3", "--max-steps", "2", "--batch-size", "2", "--report-to", "none",
                 "--max-sequence-length", "16", "--validation-prompt", "a cup", "--validation-steps", "2"])
    return root, flux, vae, code


def test_train_lora_cli_writes_lora_and_reports_skipped_image(trained, capsys):
    root, _, _, code = trained
    assert code == 1  # one unreadable image was skipped; the LoRA is still written
    assert (root / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (root / "lora" / "validation" / "step-000002" / "00.png").is_file()


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
    assert "wrote 0 image(s)" in capsys.readouterr().out


def test_cli_errors(trained, tmp_path, capsys):
    _, flux, vae, _ = trained
    assert main(["generate", "--model", str(flux), "--vae", str(vae), "--prompt", "x", "--size", "big",
                 "-o", str(tmp_path)]) == 2
    assert "--size must look like" in capsys.readouterr().err
    assert main(["train-lora", "--model", str(flux)]) == 2
    assert "missing settings" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nothing"), "--vae", str(vae), "--prompt", "x",
                 "-o", str(tmp_path / "o")]) == 2
    assert "cannot load a FLUX pipeline" in capsys.readouterr().err
