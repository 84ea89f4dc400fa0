"""alphavae.eval.networks: equality with the canonical implementations given identical (random) weights."""

from __future__ import annotations

import string
import warnings
from pathlib import Path

import pytest
import torch

from alphavae.eval import networks as nets


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")  # the reference lpips.LPIPS
def test_lpips_equals_lpips_package(tmp_path):
    import lpips

    torch.manual_seed(0)
    reference = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    path = tmp_path / "lpips.pth"
    torch.save(reference.state_dict(), path)
    ours = nets.build_lpips(path)
    x, y = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    expected = torch.stack([reference(x[i : i + 1] * 2 - 1, y[i : i + 1] * 2 - 1).flatten() for i in range(3)]).flatten()
    torch.testing.assert_close(nets.lpips_distance(ours, x, y), expected.double(), atol=1e-6, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")  # the reference lpips.LPIPS
def test_lpips_from_torchvision_alexnet_keys(tmp_path):
    import lpips
    from torchvision.models import alexnet

    torch.manual_seed(1)
    backbone = alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(backbone.state_dict(), path)
    ours = nets.build_lpips(path)
    reference = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    for k in range(1, 6):  # lpips' slices hold torchvision's feature layers under their original indices
        getattr(reference.net, f"slice{k}").load_state_dict(
            {name: p for name, p in backbone.features.state_dict().items()
             if name.split(".")[0] in dict(getattr(reference.net, f"slice{k}").named_children())})
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(nets.lpips_distance(ours, x, y), reference(x * 2 - 1, y * 2 - 1).flatten().double())


def test_unusable_lpips_file_raises(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, path)  # AlexNet layout, layers missing
    with pytest.raises(nets.NetworkUnavailable, match="other.pth"):
        nets.build_lpips(path)
    torch.save({"unrelated": torch.zeros(1)}, path)
    with pytest.raises(nets.NetworkUnavailable, match="other.pth"):
        nets.build_lpips(path)


def test_missing_weights_skip_or_raise(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = nets.load_networks()
    assert loaded.lpips is None and loaded.inception is None
    assert any("LPIPS" in str(w.message) for w in caught)
    with pytest.raises(nets.NetworkUnavailable, match="nope.pth"):
        nets.load_networks(lpips=tmp_path / "nope.pth")
    assert nets.load_networks(lpips="none", inception="none").lpips is None


class _Images(torch.utils.data.Dataset):
    """uint8 images as a Dataset (torch-fidelity's input type)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_frechet_distance_equals_scipy_sqrtm_formula():
    """Independent check (pytorch-fid style): |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))."""
    import numpy as np
    from scipy import linalg

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 6, generator=g), torch.randn(30, 6, generator=g) * 1.5 + 0.3
    mu1, mu2 = a.double().mean(0).numpy(), b.double().mean(0).numpy()
    s1, s2 = np.cov(a.double().numpy(), rowvar=False), np.cov(b.double().numpy(), rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert nets.frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    with pytest.raises(ValueError, match="at least 2"):
        nets.frechet_distance(a[:1], b)


@pytest.mark.slow
def test_fid_equals_torch_fidelity(random_inception):
    """Same random Inception weights: our features + distance equal torch-fidelity's own pipeline (~8 forwards)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_featuresdict_to_statistics, fid_statistics_to_metric
    from torch_fidelity.utils import get_featuresdict_from_dataset

    ours_net = nets.build_inception(random_inception)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    b = torch.randint(0, 200, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    ours = nets.frechet_distance(nets.inception_features(ours_net, a), nets.inception_features(ours_net, b))
    stats = [fid_featuresdict_to_statistics(get_featuresdict_from_dataset(_Images(x), ours_net, 2, False, True, False), "2048")
             for x in (a, b)]
    assert ours == pytest.approx(fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID], rel=1e-6)
    assert ours > 0


def tiny_clip(folder):
    """Save a tiny random CLIP model + processor (in-memory tokenizer) to ``folder``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = list(string.ascii_lowercase)
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, **small),
        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_clip_score_equals_clip_model_cosine(tmp_path):
    model, processor = nets.build_clip(tiny_clip(tmp_path / "clip"))
    images = torch.randint(0, 256, (3, 3, 40, 48), dtype=torch.uint8)
    prompts = ["a cat", "dog", "red bird"]
    inputs = processor(text=prompts, images=list(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    expected = 100 * out.logits_per_image.diag() / model.logit_scale.exp()
    torch.testing.assert_close(nets.clip_score(model, processor, images, prompts), expected.double(), atol=1e-4, rtol=1e-5)


def test_clip_reads_tiny_images_as_channels_first_without_a_warning_per_image(tmp_path):
    """A 1x1 or 3x1 image made transformers guess the channel axis and log it, nine lines per image."""
    import logging.handlers

    model, processor = nets.build_clip(tiny_clip(tmp_path / "clip"))
    records = logging.handlers.BufferingHandler(capacity=1000)
    logging.getLogger("transformers").addHandler(records)  # its loggers do not propagate to the root
    try:
        for size in ((1, 1), (3, 1)):
            images = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8)
            assert torch.isfinite(nets.clip_score(model, processor, images, ["a cat", "dog"])).all()
    finally:
        logging.getLogger("transformers").removeHandler(records)
    assert not [record for record in records.buffer if "ambiguous" in record.getMessage()]


def test_aesthetic_head_loads_public_layout(tmp_path):
    clip_dir = tiny_clip(tmp_path / "clip")
    head = nets.AestheticHead(16)
    assert sorted(k.split(".")[1] for k in head.state_dict() if k.endswith("weight")) == ["0", "2", "4", "6", "7"]
    torch.save(head.state_dict(), tmp_path / "head.pth")
    scorer = nets.build_aesthetic(clip_dir, tmp_path / "head.pth")
    scores = scorer(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_alexnet_cache_name_is_torchvisions():
    from torchvision.models import AlexNet_Weights

    assert nets.ALEXNET_CACHE == Path(AlexNet_Weights.IMAGENET1K_V1.url).name


def _not_weights(tmp_path):
    """Files that exist but are not torch state dicts: an image, an empty file, text, a saved list."""
    from PIL import Image

    Image.new("RGBA", (4, 4)).save(tmp_path / "image.png")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello\n")
    torch.save([1, 2], tmp_path / "list.pth")
    return [tmp_path / name for name in ("image.png", "empty.pth", "notes.txt", "list.pth")]


def test_a_file_that_is_not_weights_is_a_one_line_error(tmp_path):
    """Finding 4: an image given as weights raised a raw UnpicklingError (several lines, no file named)."""
    head_ok = tmp_path / "head.pth"
    torch.save(nets.AestheticHead(16).state_dict(), head_ok)
    for path in _not_weights(tmp_path):
        for build in (nets.build_lpips, nets.build_inception, lambda p: nets.build_aesthetic(tmp_path / "no-clip", p)):
            with pytest.raises(nets.NetworkUnavailable) as caught:
                build(path)
            message = str(caught.value)
            assert message.startswith(f"{path}: not a torch state dict (") and "\n" not in message
    assert "UnpicklingError: Unsupported operand" in str(pytest.raises(
        nets.NetworkUnavailable, nets.load_state_dict, tmp_path / "image.png", "LPIPS").value)
    with pytest.raises(nets.NetworkUnavailable, match="it holds a list"):
        nets.load_state_dict(tmp_path / "list.pth", "LPIPS")
    with pytest.raises(nets.NetworkUnavailable, match=f"{tmp_path}: cannot read LPIPS weights"):
        nets.load_state_dict(tmp_path, "LPIPS")  # a folder
    assert list(nets.load_state_dict(head_ok, "aesthetic head")) == list(nets.AestheticHead(16).state_dict())


def test_mismatched_weights_message_is_one_line(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"unrelated": torch.zeros(1)}, path)
    with pytest.raises(nets.NetworkUnavailable, match=r"other.pth: cannot load LPIPS weights \(RuntimeError: ") as caught:
        nets.build_lpips(path)
    assert "\n" not in str(caught.value) and "Missing key(s)" in str(caught.value)


def test_one_line_keeps_the_reason_of_a_cpu_out_of_memory_error():
    """Defect 5: torch's "[enforce fail at ...] err == 0." prefix was read as the first sentence, so a failed
    image's reason was "err == 0" and never said that memory ran out."""
    torch_message = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                     "tried to allocate 40000000000000 bytes. Error code 12 (Cannot allocate memory)")
    assert nets.one_line(RuntimeError(torch_message)) == (
        "RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 40000000000000 bytes")
    dotted = RuntimeError("[enforce fail at x.cpp:1] t.numel() == 0. Out of memory.\nmore")
    assert nets.one_line(dotted) == "RuntimeError: Out of memory"
    assert nets.one_line(RuntimeError("plain. second")) == "RuntimeError: plain"
