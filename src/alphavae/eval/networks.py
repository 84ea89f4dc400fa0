"""Network-based metrics: LPIPS (AlexNet, v0.1), Inception features for FID, CLIP score and the
LAION aesthetic predictor, loaded from local paths or the standard caches, never downloaded. The training
objective's LPIPS term (VGG16 by default, as the reference) is built here too (:func:`lpips_network`).

A network given as ``None`` ("auto") is looked up in its standard cache and, if absent, skipped with
a warning; an explicit path that cannot be loaded raises :class:`NetworkUnavailable`; ``"none"``
turns the metric off. Wrapped libraries: ``lpips`` 0.1.4 (LPIPS), ``torch-fidelity`` 0.4
(InceptionV3 feature extractor and Frechet distance), ``transformers`` (CLIPModel).
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

OFF = "none"
"""Network spec that disables a metric."""

ALEXNET_CACHE = "alexnet-owt-7be5be79.pth"
"""File name of torchvision's AlexNet weights in ``torch.hub.get_dir()/checkpoints`` (LPIPS backbone)."""

VGG16_CACHE = "vgg16-397923af.pth"
"""File name of torchvision's VGG16 weights in ``torch.hub.get_dir()/checkpoints`` (the LPIPS backbone of the
reference training objective)."""

LPIPS_BACKBONES = {"alex": ALEXNET_CACHE, "vgg": VGG16_CACHE}
"""LPIPS backbones (``lpips.LPIPS(net=...)`` names) and the torchvision cache file of each one's weights."""

INCEPTION_CACHE = "weights-inception-2015-12-05-6726825d.pth"
"""File name of torch-fidelity's FID InceptionV3 weights in ``torch.hub.get_dir()/checkpoints``."""


class NetworkUnavailable(RuntimeError):
    """An explicitly requested metric network could not be loaded (message names the path and reason)."""


def hub_checkpoint(name: str) -> Path:
    """Where torch hub keeps the weights file ``name`` (``torch.hub.get_dir()/checkpoints/name``; may not exist)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _cached(name: str) -> Path | None:
    path = hub_checkpoint(name)
    return path if path.is_file() else None


def _resolve(spec: str | Path | None, cache_name: str | None, metric: str) -> Path | None:
    """Path to load for ``metric`` or None (skip, with a warning when the spec was auto)."""
    if spec is not None and str(spec) == OFF:
        return None
    if spec is None:
        found = _cached(cache_name) if cache_name else None
        if found is None:
            warnings.warn(f"{metric}: no weights given and none in the cache; metric skipped", stacklevel=3)
        return found
    path = Path(spec)
    if not path.exists():
        raise NetworkUnavailable(f"{path}: {metric} weights not found")
    return path


def load_state_dict(path: str | Path, what: str) -> Mapping[str, torch.Tensor]:
    """A torch state-dict file (``torch.save`` of a dict of tensors), loaded on the CPU without running
    pickled code (``weights_only=True``).

    Args:
        path: the file. what: the network, for messages (e.g. "LPIPS").
    Returns:
        The mapping of names to tensors.
    Raises:
        NetworkUnavailable: one line naming ``path``: it cannot be read, is not a torch save (an image, a
            truncated or foreign file), or holds something other than a mapping.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise NetworkUnavailable(f"{path}: cannot read {what} weights ({err})") from err
    except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, IndexError, ValueError, TypeError,
            AttributeError) as err:
        raise NetworkUnavailable(f"{path}: not a torch state dict ({one_line(err)})") from err
    if not isinstance(state, Mapping):
        raise NetworkUnavailable(f"{path}: not a torch state dict (it holds a {type(state).__name__})")
    return state


def one_line(err: BaseException, limit: int = 200) -> str:
    """``"<type>: <reason>"`` from an error whose message may span several lines (loading weights, a network
    failing on an image): for a weights-only refusal the unpickler's own reason, else the first sentence,
    whitespace collapsed, cut at ``limit``. Torch's ``"[enforce fail at <file>:<line>] <condition>. "`` prefix is
    dropped, so a CPU allocation failure reads ``"DefaultCPUAllocator: can't allocate memory: you tried to
    allocate N bytes"``."""
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", str(err), re.DOTALL)
    text = " ".join((unpickler.group(1) if unpickler else str(err)).split())
    text = re.sub(r"^\[enforce fail at [^\]]*\] .*?\. (?=\S)", "", text)
    reason = re.split(r"(?<=\w)\. ", text)[0]
    reason = reason if len(reason) <= limit else reason[:limit] + " ..."
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


def lpips_network(state: dict[str, torch.Tensor] | None = None, net: str = "alex") -> torch.nn.Module:
    """The canonical LPIPS network (the ``lpips`` package's bundled v0.1 linear layers on a torchvision
    backbone), frozen.

    The one place that builds ``lpips.LPIPS``: the metric (:func:`build_lpips`, AlexNet) and the training
    objective's LPIPS term (``alphavae.losses.build_lpips``, VGG16 by default) both come from here. With
    ``net="vgg"`` it is the LPIPS of the reference training code (taming-transformers' ``LPIPS``: VGG16, the same
    v0.1 linear-layer file, the same scaling, normalisation and spatial mean; equal outputs, ``test_losses``).

    Args:
        state: a full ``lpips.LPIPS`` state dict; or torchvision weights of the backbone (``features.N.*`` keys,
            other keys ignored), which fill it, where ``lpips`` keeps torchvision's layer index N inside its
            slices (``net.sliceK.N.*``); or ``None``, a randomly initialised backbone (tests).
        net: the backbone, a key of :data:`LPIPS_BACKBONES`: ``"alex"`` (AlexNet) or ``"vgg"`` (VGG16).
    Returns:
        ``lpips.LPIPS`` in eval mode with ``requires_grad=False`` (inputs ``(N, 3, H, W)`` RGB in [-1, 1]).
    Raises:
        KeyError: backbone weights lack a feature layer the backbone needs (e.g. AlexNet weights for VGG16).
        RuntimeError: a full state dict, or backbone weights of the other network, do not match it.
        ValueError: ``net`` is not a key of :data:`LPIPS_BACKBONES`.
    Source: ``lpips`` 0.1.4 (Zhang et al. 2018).
    """
    import lpips

    if net not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS backbone must be one of {', '.join(LPIPS_BACKBONES)}, got {net!r}")
    with warnings.catch_warnings():  # lpips calls torchvision's alexnet/vgg16(pretrained=...), deprecated
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False)
    backbone = model.net
    if state is not None and any(key.startswith("features.") for key in state):
        backbone.load_state_dict({name: state["features." + name.split(".", 1)[1]] for name in backbone.state_dict()})
    elif state is not None:
        model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def build_lpips(weights: str | Path, net: str = "alex") -> torch.nn.Module:
    """LPIPS (linear layers v0.1) with weights from a local file: AlexNet for the metric, or VGG16.

    Args:
        weights: either a full ``lpips.LPIPS`` state dict, or torchvision weights of the backbone
            (``features.*`` keys; the package's bundled v0.1 linear layers are used); see :func:`lpips_network`.
        net: ``"alex"`` (the metric) or ``"vgg"`` (the reference's training LPIPS).
    Returns:
        ``lpips.LPIPS`` in eval mode (inputs ``(N, 3, H, W)`` in [-1, 1]).
    Raises:
        NetworkUnavailable: the file is unreadable, not a torch state dict (:func:`load_state_dict`), or its
            keys match neither layout.
    Source: ``lpips`` 0.1.4 (Zhang et al. 2018).
    """
    state = load_state_dict(weights, "LPIPS")
    try:
        return lpips_network(state, net)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as err:
        raise NetworkUnavailable(f"{weights}: cannot load LPIPS weights ({one_line(err)})") from err


LPIPS_MIN_SIZES = {"alex": 31, "vgg": 16}
"""Smallest side in px each LPIPS backbone accepts (its strided convolutions and poolings leave no pixel below
that; measured)."""

LPIPS_MIN_SIZE = LPIPS_MIN_SIZES["alex"]
"""Smallest side in px the LPIPS metric (AlexNet) accepts; ``score_pair`` leaves LPIPS out for smaller images."""


def lpips_distance(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS distance per image pair.

    Args:
        net: from :func:`build_lpips`.
        x, y: ``(N, 3, H, W)`` RGB in [0, 1], H and W >= :data:`LPIPS_MIN_SIZE`.
    Returns:
        ``(N,)`` float64 distances (>= 0; 0 for identical images).
    Raises:
        ValueError: a side is below :data:`LPIPS_MIN_SIZE` px.
    """
    if min(x.shape[-2:]) < LPIPS_MIN_SIZE:
        raise ValueError(f"LPIPS needs images of at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} px, got "
                         f"{x.shape[-1]}x{x.shape[-2]} (width x height)")
    device = next(net.parameters()).device
    with torch.no_grad():
        d = net(x.to(device).float() * 2 - 1, y.to(device).float() * 2 - 1)
    return d.flatten().double().cpu()


def build_inception(weights: str | Path) -> torch.nn.Module:
    """torch-fidelity's FID InceptionV3 (2048-d pool features) from a local weights file.

    Args:
        weights: state dict file for ``FeatureExtractorInceptionV3``.
    Returns:
        The extractor: takes ``(N, 3, H, W)`` uint8 RGB, returns a tuple with ``(N, 2048)`` float32.
    Raises:
        NetworkUnavailable: the file is unreadable, not a torch state dict (checked with
            :func:`load_state_dict` before torch-fidelity, which unpickles it without ``weights_only``,
            sees it), or does not fit the network.
    Source: ``torch_fidelity.feature_extractor_inceptionv3`` (TF-Inception port used for FID).
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    load_state_dict(weights, "Inception")
    try:
        return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise NetworkUnavailable(f"{weights}: cannot load Inception weights ({one_line(err)})") from err


def inception_features(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """2048-d Inception pool features of ``(N, 3, H, W)`` uint8 RGB images -> ``(N, 2048)`` float32 on the CPU."""
    device = next(net.parameters()).device
    with torch.no_grad():
        return net(images.to(device))[0].float().cpu()


@dataclass
class FeatureSet:
    """Inception features of one image set (one FID side), appended batch by batch (8 KB per image)."""

    chunks: list[torch.Tensor] = field(default_factory=list)

    def add(self, features: torch.Tensor) -> None:
        """Append ``(N, D)`` features."""
        self.chunks.append(features.float().cpu())

    def __len__(self) -> int:
        return sum(len(c) for c in self.chunks)

    def features(self) -> torch.Tensor:
        """All features, ``(N, D)`` float32."""
        return torch.cat(self.chunks) if self.chunks else torch.empty(0, 0)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID when the features are Inception's).

    Args:
        a, b: ``(N, D)`` and ``(M, D)`` features, N, M >= 2.
    Returns:
        The distance (>= 0 up to rounding), as torch-fidelity computes it (float64 statistics).
    Raises:
        ValueError: fewer than 2 samples on a side.
    Source: ``torch_fidelity.metric_fid`` (``fid_features_to_statistics``, ``fid_statistics_to_metric``).
    """
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 images per side, got {len(a)} and {len(b)}")
    stats = [fid_features_to_statistics(x.double()) for x in (a, b)]
    return float(fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID])


def build_clip(path: str | Path):
    """CLIP model and processor from a local transformers folder (``CLIPModel`` + ``CLIPProcessor``).

    Returns:
        ``(model, processor)``, model in eval mode.
    Raises:
        NetworkUnavailable: the folder cannot be loaded.
    """
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(str(path), local_files_only=True).eval().requires_grad_(False)
        processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise NetworkUnavailable(f"{path}: cannot load CLIP ({err})") from err
    return model, processor


def clip_image_embeddings(model, processor, images: torch.Tensor) -> torch.Tensor:
    """Unit-norm CLIP image embeddings of ``(N, 3, H, W)`` uint8 RGB -> ``(N, D)`` float32."""
    inputs = processor(images=list(images.cpu()), return_tensors="pt", input_data_format="channels_first")
    with torch.no_grad():
        emb = model.get_image_features(pixel_values=inputs["pixel_values"].to(model.device)).pooler_output
    return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()


def clip_text_embeddings(model, processor, prompts: list[str]) -> torch.Tensor:
    """Unit-norm CLIP text embeddings of N prompts (truncated to the model's context) -> ``(N, D)`` float32."""
    inputs = processor(text=prompts, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        emb = model.get_text_features(
            input_ids=inputs["input_ids"].to(model.device), attention_mask=inputs["attention_mask"].to(model.device)
        ).pooler_output
    return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()


def clip_score(model, processor, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Per-image CLIP score ``100 * cos(image, prompt)`` (torchmetrics ``CLIPScore``, before its clamp at 0).

    Args:
        images: ``(N, 3, H, W)`` uint8 RGB. prompts: N strings.
    Returns:
        ``(N,)`` float64 in [-100, 100]; report ``max(mean, 0)`` like torchmetrics.
    Raises:
        ValueError: counts differ.
    Source: Hessel et al. 2021 (CLIPScore), torchmetrics ``multimodal.clip_score``.
    """
    if len(images) != len(prompts):
        raise ValueError(f"clip_score: {len(images)} images but {len(prompts)} prompts")
    img = clip_image_embeddings(model, processor, images)
    txt = clip_text_embeddings(model, processor, prompts)
    return (100 * (img * txt).sum(-1)).double()


class AestheticHead(torch.nn.Module):
    """LAION aesthetic predictor v2 head: MLP 768 -> 1024 -> 128 -> 64 -> 16 -> 1 on unit-norm CLIP ViT-L/14
    image embeddings (dropout layers kept so the public state-dict keys ``layers.{0,2,4,6,7}`` load)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(dim, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(N, dim)`` unit-norm embeddings -> ``(N,)`` scores (roughly 1..10)."""
        return self.layers(embeddings).squeeze(-1)


@dataclass
class Aesthetic:
    """LAION aesthetic scorer: a CLIP model, its processor and the MLP head (:func:`build_aesthetic`)."""

    clip: object
    processor: object
    head: AestheticHead

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Scores of ``(N, 3, H, W)`` uint8 RGB images -> ``(N,)`` float64 (higher = more aesthetic)."""
        emb = clip_image_embeddings(self.clip, self.processor, images)
        with torch.no_grad():
            return self.head(emb.to(next(self.head.parameters()).device)).double().cpu()


def build_aesthetic(clip_path: str | Path, head_path: str | Path) -> Aesthetic:
    """LAION aesthetic predictor from a local CLIP ViT-L/14 folder and the MLP head's state dict file.

    Raises:
        NetworkUnavailable: either part cannot be loaded (the head file is not a torch state dict,
            :func:`load_state_dict`) or their widths disagree.
    Source: LAION-AI/aesthetic-predictor v2 (``sac+logos+ava1-l14-linearMSE.pth``), as in pyiqa ``laion_aes``.
    """
    state = load_state_dict(head_path, "aesthetic head")
    model, processor = build_clip(clip_path)
    head = AestheticHead(model.config.projection_dim)
    try:
        head.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise NetworkUnavailable(f"{head_path}: cannot load the aesthetic head ({one_line(err)})") from err
    return Aesthetic(model, processor, head.eval().requires_grad_(False))


@dataclass
class Networks:
    """The metric networks of one evaluation; a None member means that metric is skipped."""

    lpips: torch.nn.Module | None = None
    inception: torch.nn.Module | None = None
    clip: tuple | None = None
    aesthetic: Aesthetic | None = None

    def to(self, device: str | torch.device) -> "Networks":
        """Move every loaded network to ``device``; returns self."""
        for net in (self.lpips, self.inception, self.clip and self.clip[0], self.aesthetic and self.aesthetic.clip):
            if net is not None:
                net.to(device)
        if self.aesthetic is not None:
            self.aesthetic.head.to(device)
        return self


def load_networks(
    lpips: str | Path | None = None,
    inception: str | Path | None = None,
    clip: str | Path | None = OFF,
    aesthetic: tuple[str | Path, str | Path] | None = None,
) -> Networks:
    """Resolve and load the metric networks.

    Args:
        lpips: LPIPS weights (see :func:`build_lpips`); None = torchvision's cached AlexNet, else skipped
            with a warning; ``"none"`` = off.
        inception: Inception weights file; None = torch-fidelity's cached file, else skipped; ``"none"`` = off.
        clip: local CLIP folder; default off (there is no standard cache for it).
        aesthetic: ``(clip_folder, head_file)`` or None (off).
    Returns:
        :class:`Networks` on the CPU.
    Raises:
        NetworkUnavailable: an explicitly given path is missing or unreadable, or its weights do not fit the
            network.
    """
    lpips_path = _resolve(lpips, ALEXNET_CACHE, "LPIPS")
    inception_path = _resolve(inception, INCEPTION_CACHE, "FID (Inception)")
    clip_path = _resolve(clip, None, "CLIP score") if clip is not None else None
    return Networks(
        lpips=build_lpips(lpips_path) if lpips_path else None,
        inception=build_inception(inception_path) if inception_path else None,
        clip=build_clip(clip_path) if clip_path else None,
        aesthetic=build_aesthetic(*aesthetic) if aesthetic else None,
    )


def feature_distance_summary(sets: dict[str, tuple[FeatureSet, FeatureSet]]) -> dict[str, float | None]:
    """FID for each named pair of feature sets; None (logged) where a side has fewer than 2 images."""
    out: dict[str, float | None] = {}
    for name, (a, b) in sets.items():
        if len(a) < 2 or len(b) < 2:
            log.info("FID %s skipped: %d / %d images", name, len(a), len(b))
            out[name] = None
        else:
            out[name] = frechet_distance(a.features(), b.features())
    return out


__all__ = [
    "OFF", "NetworkUnavailable", "hub_checkpoint", "load_state_dict", "one_line", "lpips_network", "build_lpips",
    "lpips_distance", "build_inception",
    "inception_features",
    "FeatureSet", "frechet_distance", "build_clip", "clip_score", "clip_image_embeddings", "clip_text_embeddings",
    "AestheticHead", "Aesthetic", "build_aesthetic", "Networks", "load_networks", "feature_distance_summary",
]
