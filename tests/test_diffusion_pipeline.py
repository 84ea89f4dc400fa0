import json
import logging
import re
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from alphavae.diffusion.pipeline import (center_crop, contact_sheet, generate_folder, generate_images, generate_rgba,
                                         load_flux_pipeline, round_size)
from alphavae.vae import RGBAVAE
from flux_tiny import model_folders

GEN = dict(steps=2, max_sequence_length=16)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    flux, vae_dir = model_folders(tmp_path_factory.mktemp("models"))
    vae = RGBAVAE.from_pretrained(vae_dir, dtype="float32")
    pipe = load_flux_pipeline(flux, vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe, vae


def test_rgba_of_requested_size_never_through_rgb_postprocessing(loaded, monkeypatch):
    pipe, vae = loaded
    monkeypatch.setattr(pipe.image_processor, "postprocess", lambda *a, **k: pytest.fail("RGB post-processing used"))
    pixels = generate_rgba(pipe, vae, ["a red ball", "glass"], [3, 4], height=40, width=24, **GEN)
    assert pixels.shape == (2, 4, 40, 24) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert pixels[:, 3].std() > 0  # alpha comes from the RGBA decoder, not a constant


def test_deterministic_per_seed(loaded):
    pipe, vae = loaded
    first = generate_rgba(pipe, vae, ["a cat"], [7], height=32, width=32, **GEN)
    second = generate_rgba(pipe, vae, ["a cat"], [7], height=32, width=32, **GEN)
    other = generate_rgba(pipe, vae, ["a cat"], [8], height=32, width=32, **GEN)
    assert torch.equal(first, second) and not torch.equal(first, other)
    (image,) = generate_images(pipe, vae, ["a cat"], [7], height=32, width=32, **GEN)
    assert image.mode == "RGBA" and image.size == (32, 32)


def test_off_multiple_size_is_centre_crop_of_rounded_generation(loaded):
    pipe, vae = loaded
    full = generate_rgba(pipe, vae, ["a cat"], [1], height=48, width=32, **GEN)
    cropped = generate_rgba(pipe, vae, ["a cat"], [1], height=41, width=30, **GEN)
    torch.testing.assert_close(cropped, center_crop(full, 41, 30))
    assert round_size(41, 30) == (48, 32) and round_size(16, 1024) == (16, 1024)
    with pytest.raises(ValueError, match="at least 1x1"):
        round_size(0, 16)


def test_input_errors(loaded):
    pipe, vae = loaded
    with pytest.raises(ValueError, match="equally many"):
        generate_rgba(pipe, vae, ["a", "b"], [1], **GEN)
    with pytest.raises(ValueError, match="steps"):
        generate_rgba(pipe, vae, ["a"], [1], steps=0)
    with pytest.raises(ValueError, match="offload"):
        load_flux_pipeline("unused", vae, offload="disk")


def test_generate_folder_writes_rgba_pngs_and_skips_existing(loaded, tmp_path):
    pipe, vae = loaded
    kwargs = dict(n=2, seed=5, height=24, width=40, steps=2, batch_size=3, progress=False)
    report = generate_folder(pipe, vae, ["a cat", "a cup"], tmp_path, **kwargs)
    assert [p.rsplit("/", 1)[1] for p in report.written] == ["p0000-s5.png", "p0000-s6.png", "p0001-s5.png",
                                                             "p0001-s6.png"]
    assert not report.failed and report.generated_size == (32, 48)
    with Image.open(report.written[0]) as image:
        assert image.mode == "RGBA" and image.size == (40, 24)
    records = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert records[3] == {"file": "p0001-s6.png", "prompt": "a cup", "seed": 6, "width": 40, "height": 24,
                          "steps": 2, "guidance": 3.5}
    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        assert sheet.mode == "RGBA" and sheet.size[0] > 3 * 40
    again = generate_folder(pipe, vae, ["a cat", "a cup"], tmp_path, **kwargs)
    assert not again.written and len(again.skipped) == 4


def test_contact_sheet_shows_checkerboard_under_transparency():
    pixels = -torch.ones(2, 4, 32, 32)
    sheet = contact_sheet(pixels, columns=2)
    assert sheet.shape == (4, 36, 70) and torch.all(sheet[3] == 1)
    assert len(torch.unique(sheet[:3, 2:34, 2:34])) == 2  # the two checkerboard greys


def _records(folder):
    return {r["file"]: r for r in map(json.loads, (folder / "generations.jsonl").read_text().splitlines())}


def test_generate_folder_refuses_existing_file_of_another_request(loaded, tmp_path):
    pipe, vae = loaded
    kwargs = dict(height=17, width=33, steps=2, progress=False, settings={"model": "m1"})
    assert len(generate_folder(pipe, vae, ["a cup"], tmp_path, **kwargs).written) == 1
    cup = (tmp_path / "p0000-s0.png").read_bytes()
    cup_record = _records(tmp_path)["p0000-s0.png"]
    (tmp_path / "p0001-s0.png").write_bytes(cup)  # a file generations.jsonl knows nothing of
    report = generate_folder(pipe, vae, ["a dog", "x", "a bird"], tmp_path, **kwargs | {"height": 16, "width": 16})
    assert report.written == [str(tmp_path / "p0002-s0.png")] and not report.skipped and not report.failed
    assert "p0000-s0.png: exists from a different request (prompt: recorded 'a cup', now 'a dog'; " \
           "width: recorded 33, now 16; height: recorded 17, now 16)" in report.refused[0]
    assert "p0001-s0.png: exists but generations.jsonl has no record of it" in report.refused[1]
    assert (tmp_path / "p0000-s0.png").read_bytes() == cup == (tmp_path / "p0001-s0.png").read_bytes()
    records = _records(tmp_path)
    assert records.keys() == {"p0000-s0.png", "p0002-s0.png"} and records["p0000-s0.png"] == cup_record
    assert records["p0002-s0.png"]["prompt"] == "a bird"
    other_model = generate_folder(pipe, vae, ["a cup"], tmp_path, **kwargs | {"settings": {"model": "m2"}})
    assert "model: recorded 'm1', now 'm2'" in other_model.refused[0]
    same = generate_folder(pipe, vae, ["a cup"], tmp_path, **kwargs)
    assert same.skipped == [str(tmp_path / "p0000-s0.png")] and not same.refused
    assert _records(tmp_path) == records


def test_generate_folder_records_each_batch_before_its_pngs(loaded, tmp_path, monkeypatch):
    pipe, vae = loaded

    class Interrupted(Exception):
        pass

    calls = []

    def stop_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return generate_rgba(*args, **kwargs)

    monkeypatch.setattr("alphavae.diffusion.pipeline.generate_rgba", stop_on_second_call)
    with pytest.raises(Interrupted):
        generate_folder(pipe, vae, ["a cat", "a cup"], tmp_path, height=16, width=16, steps=2, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["p0000-s0.png"]
    assert _records(tmp_path)["p0000-s0.png"]["prompt"] == "a cat"


def test_generate_folder_keeps_records_another_run_adds_meanwhile(loaded, tmp_path, monkeypatch):
    """A second run writing into the same folder between two batches: its record survives this run's writes."""
    pipe, vae = loaded
    calls = []

    def other_run_between_batches(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # what a concurrent run leaves: its PNG and its record
            (tmp_path / "p0000-s100.png").write_bytes((tmp_path / "p0000-s0.png").read_bytes())
            with open(tmp_path / "generations.jsonl", "a") as records:
                records.write('{"file": "p0000-s100.png", "prompt": "other"}\n')
        return generate_rgba(*args, **kwargs)

    monkeypatch.setattr("alphavae.diffusion.pipeline.generate_rgba", other_run_between_batches)
    generate_folder(pipe, vae, ["a cat", "a cup"], tmp_path, height=16, width=16, steps=2, progress=False)
    assert sorted(_records(tmp_path)) == ["p0000-s0.png", "p0000-s100.png", "p0001-s0.png"]
    assert _records(tmp_path)["p0000-s100.png"]["prompt"] == "other"


def test_generate_folder_rejects_a_broken_record_file(loaded, tmp_path):
    pipe, vae = loaded
    (tmp_path / "generations.jsonl").write_text('{"file": "p0000-s0.png"}\nnot json\n')
    with pytest.raises(ValueError, match="generations.jsonl:2: not JSON"):
        generate_folder(pipe, vae, ["a cat"], tmp_path, height=16, width=16, steps=2, progress=False)
    assert (tmp_path / "generations.jsonl").read_text() == '{"file": "p0000-s0.png"}\nnot json\n'


def test_float16_on_cpu_has_no_false_cannot_run_warning(tmp_path):
    flux, vae_dir = model_folders(tmp_path)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(handler)
    try:
        vae = RGBAVAE.from_pretrained(vae_dir, dtype="float16")
        pipe = load_flux_pipeline(flux, vae, dtype=torch.float16, device="cpu")
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert not [m for m in messages if "cannot run" in m]
    pipe.set_progress_bar_config(disable=True)
    pixels = generate_rgba(pipe, vae, ["a cat"], [0], height=16, width=16, **GEN)
    assert pixels.shape == (1, 4, 16, 16) and torch.isfinite(pixels).all()


def test_a_lora_generates_at_its_own_alpha(tmp_path):
    """A LoRA trained at rank 4, alpha 16 (update x 4) acts as trained in load_flux_pipeline's pipeline: loaded with
    its saved adapter metadata, not at diffusers' guess alpha = rank (what loading its bare weights gives)."""
    from alphavae.diffusion.lora import add_lora, lora_config, save_lora
    from alphavae.testing_flux import tiny_flux_pipeline

    flux, vae_dir = model_folders(tmp_path / "models")
    trained = tiny_flux_pipeline()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for param in add_lora(trained.transformer, lora_config(rank=4, alpha=16)):
            param.add_(torch.randn_like(param) * 0.2)
    save_lora(trained.transformer, tmp_path / "lora")
    pipe = load_flux_pipeline(flux, RGBAVAE.from_pretrained(vae_dir, dtype="float32"), lora=tmp_path / "lora")
    assert {layer.scaling["rgba"] for layer in pipe.transformer.modules() if hasattr(layer, "scaling")} == {4.0}
    inputs = dict(hidden_states=torch.randn(1, 4, 64), encoder_hidden_states=torch.randn(1, 3, 32),
                  pooled_projections=torch.randn(1, 32), timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                  img_ids=torch.zeros(4, 3), txt_ids=torch.zeros(3, 3))
    with torch.no_grad():
        assert torch.allclose(pipe.transformer(**inputs).sample, trained.transformer(**inputs).sample, atol=1e-6)


def _lora_for(tmp_path, name: str, **shape):
    """Save a rank-4 LoRA of the tiny FLUX transformer with ``shape`` config changes (another FLUX model)."""
    from diffusers import FluxTransformer2DModel

    from alphavae.diffusion.lora import add_lora, lora_config, save_lora
    from alphavae.testing_flux import tiny_flux_pipeline

    config = {**tiny_flux_pipeline().transformer.config, **shape}
    transformer = FluxTransformer2DModel.from_config(config)
    add_lora(transformer, lora_config(rank=4, alpha=4))
    return save_lora(transformer, tmp_path / name)


def test_a_lora_for_another_transformer_is_refused_in_one_line(loaded, tmp_path):
    """diffusers only logged LoRA tensors that match no layer (a LoRA of a deeper FLUX was half applied, exit 0)
    and raised a bare RuntimeError for other shapes."""
    from alphavae.diffusion.pipeline import apply_lora, read_lora

    pipe, _ = loaded
    deeper = _lora_for(tmp_path, "deeper", num_layers=2, num_single_layers=2)
    with pytest.raises(ValueError, match=rf"^{deeper}: 30 of 60 LoRA tensors match no layer of this FLUX model "
                                         r"\(first: transformer\.single_transformer_blocks\.1\."):
        apply_lora(pipe, read_lora(deeper), 1.0, name=str(deeper))
    pipe.delete_adapters("rgba")
    wider = _lora_for(tmp_path, "wider", num_attention_heads=4)
    with pytest.raises(ValueError, match=rf"^{wider}: LoRA does not fit this FLUX transformer \(transformer\."):
        apply_lora(pipe, read_lora(wider), 1.0, name=str(wider))


@pytest.mark.parametrize("extra_columns", [3, -3])
def test_a_lora_matrix_of_another_width_is_refused_before_it_changes_the_model(loaded, tmp_path, extra_columns):
    """diffusers widened to_q to fit a lora_A with 3 more columns (every image then failed) and zero-padded one with
    3 fewer (loaded silently); now a load error naming the file and the tensor, and the model is left unchanged."""
    from alphavae.diffusion.pipeline import apply_lora, read_lora

    pipe, _ = loaded
    state, key = read_lora(_lora_for(tmp_path, "lora")), "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
    state[key] = torch.zeros(state[key].shape[0], 32 + extra_columns)
    with pytest.raises(ValueError, match=rf"^edited: LoRA does not fit this FLUX transformer \({re.escape(key)} has "
                                         rf"shape \[4, {32 + extra_columns}\], its layer's weight \[32, 32\]: lora_A "
                                         r"needs 32 columns\); it was trained for another transformer, or edited$"):
        apply_lora(pipe, state, 1.0, name="edited")
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.shape == (32, 32)
    assert not getattr(pipe.transformer, "peft_config", None)


def test_a_lora_that_fails_to_load_logs_nothing_before_its_one_error(loaded, tmp_path):
    """diffusers logged the whole load error (one line per mismatched tensor: hundreds for a real FLUX) before
    the command's own one-line error."""
    from alphavae.diffusion.pipeline import apply_lora, read_lora

    pipe, _ = loaded
    state, key = read_lora(_lora_for(tmp_path, "lora")), "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
    state[key] = torch.zeros(5, 32)  # rank 5 against lora_B's 4: the layer's width fits, the load fails
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    for name in ("diffusers", "peft"):
        logging.getLogger(name).addHandler(handler)
    try:
        with pytest.raises(ValueError, match=r"^edited: LoRA does not fit this FLUX transformer \(RuntimeError: "):
            apply_lora(pipe, state, 1.0, name="edited")
    finally:
        for name in ("diffusers", "peft"):
            logging.getLogger(name).removeHandler(handler)
    assert [record.getMessage()[:80] for record in records] == []
    assert logging.getLogger("diffusers").level == logging.WARNING  # restored


def test_a_vae_with_other_latent_factors_than_flux_is_warned_about(tmp_path, caplog):
    """An SD3-shaped 16-channel RGBA VAE (scaling 1.5305, shift 0.0609) was paired with FLUX without a word."""
    from alphavae.testing import tiny_rgba_vae

    flux, flux_vae = model_folders(tmp_path)
    tiny_rgba_vae("sd3").save_pretrained(tmp_path / "sd3-vae")
    with caplog.at_level(logging.WARNING, logger="alphavae.diffusion.pipeline"):
        load_flux_pipeline(flux, RGBAVAE.from_pretrained(flux_vae, dtype="float32"))
        assert not caplog.records
        load_flux_pipeline(flux, RGBAVAE.from_pretrained(tmp_path / "sd3-vae", dtype="float32"))
    assert [record.getMessage() for record in caplog.records] == [
        f"{tmp_path / 'sd3-vae'}: scaling_factor 1.5305 / shift_factor 0.0609 differ from FLUX's 0.3611 / 0.1159; the "
        "FLUX transformer will see latents normalised unlike its training data (a VAE made from another model's, "
        "e.g. SD3's?)"]


def test_hub_ids_that_cannot_be_looked_up_say_how_to_work_offline(tmp_path, monkeypatch):
    """Without a network the hub client retries for ~40 s, even for an id already in its cache; the one-line
    error now says that HF_HUB_OFFLINE=1 uses the cache without retries."""
    from diffusers import FluxPipeline

    from alphavae.diffusion.pipeline import load_flux_pipeline, read_lora

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to the hub.\nCheck your connection.")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(FluxPipeline, "lora_state_dict", offline)
    monkeypatch.setattr(FluxPipeline, "from_pretrained", offline)
    hint = r"\(model ids need network access; offline, HF_HUB_OFFLINE=1 loads ids already in the hub cache"
    with pytest.raises(OSError, match=r"^org/lora: cannot read LoRA weights \(no such local path, so it was looked "
                                      rf"up as a hub id\): OSError: We couldn't connect to the hub {hint}"):
        read_lora("org/lora")
    with pytest.raises(OSError, match=rf"^cannot load a FLUX pipeline from 'org/flux': OSError: We couldn't connect "
                                      rf"to the hub {hint}"):
        load_flux_pipeline("org/flux", vae=SimpleNamespace(model=None))
    with pytest.raises(FileNotFoundError, match=r"^\./flux: folder does not exist$"):  # a path, not an id
        load_flux_pipeline("./flux", vae=SimpleNamespace(model=None))


def test_read_lora_names_a_missing_path_and_weights_that_are_no_lora(tmp_path):
    from safetensors.torch import save_file

    from alphavae.diffusion.pipeline import read_lora

    (tmp_path / "runs").mkdir()
    for missing in (tmp_path / "runs" / "nonexistent", tmp_path / "lora.safetensors"):
        with pytest.raises(FileNotFoundError, match=rf"^{missing}: LoRA file or folder not found$"):
            read_lora(missing)
    save_file({"transformer.x_embedder.weight": torch.zeros(2, 2)}, tmp_path / "full.safetensors")
    with pytest.raises(ValueError, match=r"full\.safetensors: holds no LoRA weights \(no lora_A / lora_B tensors"):
        read_lora(tmp_path / "full.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(OSError, match=r"garbage\.safetensors: cannot read LoRA weights: "):
        read_lora(tmp_path / "garbage.safetensors")


def _fake_generation(monkeypatch):
    """Replace the FLUX call by random pixels of the requested size; returns a fake pipeline for generate_folder."""
    from alphavae.diffusion import pipeline

    def fake(pipe, vae, prompts, seeds, *, height, width, **options):
        return torch.rand(len(prompts), 4, height, width) * 2 - 1

    monkeypatch.setattr(pipeline, "generate_rgba", fake)
    return SimpleNamespace(vae_scale_factor=8)


def test_contact_sheet_holds_a_bounded_number_of_small_tiles(tmp_path, monkeypatch):
    """The sheet kept every generated image at full size (1000 images of 1024 px: ~48 GB) in 4 columns; now it
    keeps the first SHEET_LIMIT images shrunk to at most SHEET_TILE px, SHEET_COLUMNS per row."""
    from alphavae.diffusion import pipeline

    fake = _fake_generation(monkeypatch)
    stacked = []
    real_sheet = pipeline.contact_sheet
    monkeypatch.setattr(pipeline, "contact_sheet", lambda pixels, **kw: stacked.append(pixels) or real_sheet(pixels, **kw))
    report = generate_folder(fake, None, ["a", "b"], tmp_path, n=40, height=20, width=300, batch_size=7,
                             progress=False)
    assert len(report.written) == 80 and not report.refused
    (tiles,) = stacked
    assert len(tiles) == 64 and {tile.shape for tile in tiles} == {(4, 17, 256)}  # SHEET_LIMIT tiles, SHEET_TILE px
    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        assert sheet.size == (8 * (256 + 2) + 2, 8 * (17 + 2) + 2)
    batch = torch.rand(3, 4, 20, 30) * 2 - 1
    tile = pipeline.sheet_tile(batch[1])  # small: kept as is, but as a copy that does not hold the whole batch
    assert torch.equal(tile, batch[1]) and tile.untyped_storage().nbytes() == 4 * 20 * 30 * 4


def test_the_contact_sheet_is_rebuilt_from_the_folder_when_a_call_adds_images(tmp_path, monkeypatch):
    """A second call that made images refused the existing contact_sheet.png (exit 1 for "make more"); the sheet is
    now the folder's preview: its recorded PNGs in (prompt, seed) order, any sizes, rebuilt when a call adds images."""
    from alphavae import io
    from alphavae.diffusion import pipeline

    fake = _fake_generation(monkeypatch)
    sheets = []
    real_sheet = pipeline.contact_sheet
    monkeypatch.setattr(pipeline, "contact_sheet", lambda tiles, **kw: sheets.append(tiles) or real_sheet(tiles, **kw))
    (tmp_path / "contact_sheet.png").write_bytes(b"an old sheet")
    (tmp_path / "p0009-s0.png").write_bytes(b"not recorded: not ours")
    kwargs = {"height": 16, "width": 16, "progress": False}
    assert not generate_folder(fake, None, ["a", "b"], tmp_path, **kwargs).refused
    report = generate_folder(fake, None, ["a", "b"], tmp_path, n=2, **kwargs)
    assert len(report.written) == 2 and len(report.skipped) == 2 and not report.refused
    assert len(generate_folder(fake, None, ["a"], tmp_path, seed=9, n=2, **kwargs | {"width": 24}).written) == 2
    order = ["p0000-s0", "p0000-s1", "p0000-s9", "p0000-s10", "p0001-s0", "p0001-s1"]  # seeds by number
    assert [len(tiles) for tiles in sheets] == [2, 4, 6]
    for tile, name in zip(sheets[-1], order, strict=True):
        assert torch.equal(tile, io.load_rgba(tmp_path / f"{name}.png"))
    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        assert sheet.size == (6 * (24 + 2) + 2, 16 + 2 + 2)  # tiles padded to the widest
    built = (tmp_path / "contact_sheet.png").read_bytes()
    assert not generate_folder(fake, None, ["a", "b"], tmp_path, n=2, **kwargs).written  # nothing added: as it is
    assert generate_folder(fake, None, ["a"], tmp_path, n=3, sheet=False, **kwargs).written
    assert (tmp_path / "contact_sheet.png").read_bytes() == built and len(sheets) == 3


def test_a_folder_where_the_sheet_goes_is_refused_before_generating_and_a_missing_sheet_is_built(tmp_path,
                                                                                                monkeypatch):
    """A folder named contact_sheet.png let generate make every image, then end in IsADirectoryError (exit 2, the
    summary lost); once it was moved away, a rerun added no image and so never built the sheet."""
    from alphavae.diffusion import pipeline

    fake = _fake_generation(monkeypatch)
    fake.set_progress_bar_config = lambda **kw: None
    monkeypatch.setattr(pipeline.RGBAVAE, "from_pretrained", lambda *a, **kw: pytest.fail("model loaded"))
    (tmp_path / "contact_sheet.png").mkdir()
    message = rf"^{tmp_path / 'contact_sheet.png'}: is a folder, where the contact sheet goes: move it away or pass "
    with pytest.raises(IsADirectoryError, match=message):
        pipeline.generate_from_paths("flux", "vae", ["a"], tmp_path, device="cpu", height=16, width=16,
                                     progress=False)
    kwargs = {"n": 2, "height": 16, "width": 16, "progress": False}
    with pytest.raises(IsADirectoryError, match=message):
        generate_folder(fake, None, ["a"], tmp_path, **kwargs)
    assert [path.name for path in tmp_path.iterdir()] == ["contact_sheet.png"]  # no image made
    assert len(generate_folder(fake, None, ["a"], tmp_path, sheet=False, **kwargs).written) == 2
    (tmp_path / "contact_sheet.png").rmdir()
    assert not generate_folder(fake, None, ["a"], tmp_path, **kwargs).written  # adds nothing, builds the sheet
    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        assert sheet.size == (2 * (16 + 2) + 2, 16 + 2 + 2)
    built = (tmp_path / "contact_sheet.png").read_bytes()
    assert not generate_folder(fake, None, ["a"], tmp_path, **kwargs).written
    assert (tmp_path / "contact_sheet.png").read_bytes() == built


def test_generate_from_paths_checks_the_request_once(tmp_path, monkeypatch):
    """check_request ran twice per generate call (before the models loaded, then again in generate_folder)."""
    from alphavae.diffusion import pipeline

    fake, calls = _fake_generation(monkeypatch), []
    fake.set_progress_bar_config = lambda **kw: None
    real_check = pipeline.check_request
    monkeypatch.setattr(pipeline, "check_request", lambda *a, **kw: calls.append(1) or real_check(*a, **kw))
    monkeypatch.setattr(pipeline.RGBAVAE, "from_pretrained", lambda *a, **kw: None)
    monkeypatch.setattr(pipeline, "load_flux_pipeline", lambda *a, **kw: fake)
    report = pipeline.generate_from_paths("flux", "vae", ["a cup"], tmp_path, device="cpu", n=2, height=16,
                                          width=16, progress=False)
    assert len(report.written) == 2 and calls == [1]


def test_requests_that_cannot_finish_are_refused_before_generating(tmp_path, monkeypatch):
    """seed + n - 1 above 2**64 - 1 failed at the image past the limit; a lone surrogate crashed the tokenizer."""
    fake, MAX_SEED = _fake_generation(monkeypatch), 2**64 - 1
    with pytest.raises(ValueError, match=rf"^seed {MAX_SEED} with n 2: the last image's seed \(seed \+ n - 1 = "
                                         rf"{MAX_SEED + 1}\) is above {MAX_SEED}"):
        generate_folder(fake, None, ["a"], tmp_path, seed=MAX_SEED, n=2, progress=False)
    with pytest.raises(ValueError, match=r'^prompt 2 of 2 is not valid text \(a lone UTF-16 surrogate "caf\\udce9"\)$'):
        generate_folder(fake, None, ["a", "caf\udce9"], tmp_path, progress=False)
    assert not list(tmp_path.iterdir())
    from alphavae.diffusion.pipeline import check_request

    check_request(["", "ok"], n=2, seed=MAX_SEED - 1)  # the last seed is MAX_SEED; an empty prompt stays allowed


def test_identical_lora_weights_save_to_identical_bytes(tmp_path):
    """safetensors wrote its metadata in a random (Rust HashMap) order, so generate's lora_sha256 of an
    identical LoRA saved twice could differ and its outputs were refused."""
    import safetensors
    from diffusers import FluxTransformer2DModel

    from alphavae.diffusion.lora import LORA_FILE, add_lora, lora_config, save_lora
    from alphavae.diffusion.pipeline import _lora_digest, read_lora
    from alphavae.testing_flux import tiny_flux_pipeline

    transformer = FluxTransformer2DModel.from_config(tiny_flux_pipeline().transformer.config)
    add_lora(transformer, lora_config(rank=4, alpha=2))
    folders = [save_lora(transformer, tmp_path / f"run{k}") for k in range(8)]
    assert len({(folder / LORA_FILE).read_bytes() for folder in folders}) == 1
    assert len({_lora_digest(folder) for folder in folders}) == 1
    data = (folders[0] / LORA_FILE).read_bytes()
    header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])
    assert list(header["__metadata__"]) == ["format", "lora_adapter_metadata"]  # sorted, in the bytes
    with safetensors.safe_open(folders[0] / LORA_FILE, "pt") as file:
        assert file.metadata() == header["__metadata__"]
    assert json.loads(header["__metadata__"]["lora_adapter_metadata"])["transformer.lora_alpha"] == 2
    state = read_lora(folders[0])
    for key, layer in (("transformer_blocks.0.attn.to_q", transformer.transformer_blocks[0].attn.to_q),
                       ("single_transformer_blocks.0.attn.to_k", transformer.single_transformer_blocks[0].attn.to_k)):
        assert torch.equal(state[f"transformer.{key}.lora_A.weight"], layer.lora_A["default"].weight)  # data intact


def test_generate_from_paths_refuses_an_output_inside_its_model_folders(tmp_path, monkeypatch):
    """-o inside the --model, --vae or --lora folder was accepted: the PNGs went into the inputs."""
    from alphavae.diffusion import pipeline

    monkeypatch.setattr(pipeline.RGBAVAE, "from_pretrained", lambda *a, **k: pytest.fail("models loaded"))
    folders = {name: (tmp_path / name).mkdir() or tmp_path / name for name in ("flux", "vae", "lora")}
    for name, folder in folders.items():
        out = folder / "gen"
        with pytest.raises(ValueError, match=f"^output folder {out} is inside input folder {folder}; choose one "
                                             "outside the inputs$"):
            pipeline.generate_from_paths(folders["flux"], folders["vae"], ["a cup"], out, lora=folders["lora"])
        assert not out.exists()
    monkeypatch.chdir(tmp_path)  # hub ids are no folders: output into ./org/flux/gen is no output into "org/flux"
    with pytest.raises(pytest.fail.Exception, match="models loaded"):
        pipeline.generate_from_paths("org/flux", "org/vae", ["a cup"], tmp_path / "org" / "flux" / "gen")


@pytest.mark.parametrize("request_, message", [
    (dict(height=8193), r"^image size 1024x8193 \(WxH\): each side must be in \[1, 8192\] pixels \(8192x8192, "
                        r"alphavae\.io\.DEFAULT_MAX_PIXELS, is the most pixels alphavae reads back from an image\)$"),
    (dict(width=0), r"^image size 0x1024 \(WxH\): each side must be in \[1, 8192\]"),
    (dict(steps=10**11), r"^steps must be in \[1, 1000\] \(the FLUX scheduler's training timesteps\), got "
                         r"100000000000$"),
    (dict(guidance=-1e300), r"^guidance must be a finite number of at most 3\.403e\+38 in magnitude \(float32's "
                            r"range\), got -1e\+300$"),
    (dict(n=50_001), r"^2 prompt\(s\) x n 50001 = 100002 images, above the 100000 one run makes; lower n or split the "
                     r"prompts over several runs$"),
    (dict(lora_scale=float("nan")), r"^lora_scale must be a finite number of at most 3\.403e\+38 in magnitude"),
])
def test_requests_beyond_the_limits_are_refused_before_the_models_load(tmp_path, monkeypatch, request_, message):
    """--size 33000x33000 overflowed in the scheduler's shift, a huge --steps failed to allocate its sigmas, a huge
    --n hung listing its images, and a guidance of 1e300 failed every image: all after the models loaded."""
    from alphavae.diffusion import pipeline

    monkeypatch.setattr(pipeline.RGBAVAE, "from_pretrained", lambda *a, **k: pytest.fail("models loaded"))
    with pytest.raises(ValueError, match=message):
        pipeline.generate_from_paths("flux", "vae", ["a", "b"], tmp_path / "out", **request_)
    assert pipeline.MAX_SIDE**2 == pipeline.io.DEFAULT_MAX_PIXELS
