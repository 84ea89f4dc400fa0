"""``RGBAVAE``: encode / decode / reconstruct straight RGBA images of any size with a 4-channel VAE.

Wraps a converted diffusers ``AutoencoderKL`` (``alphavae.convert``) and owns what the bare model
leaves to the caller: padding to the downsampling factor and cropping back,
batching of same-size images, optional overlapping tiles blended with linear ramps, alpha treated
exactly like colour (#9, #14), the dtype policy with a loud float32 fallback on non-finite output of 16-bit
weights or a 16-bit autocast (#10; gradients flow through it), the diffusion latent scaling/shift, and explicit
pixel/latent arguments (#1, #12).

Pixels: straight alpha, float tensors ``(B, 4, H, W)``, all four channels in [-1, 1].
Latents: the VAE's raw latent space ``(B, latent_channels, H / multiple, W / multiple)``; the
diffusion model's space is ``to_diffusion_latents(z) = (z - shift_factor) * scaling_factor``, or, for a config with
per-channel ``latents_mean`` / ``latents_std`` (SDXL-style, e.g. Playground v2.5's VAE),
``(z - latents_mean) * scaling_factor / latents_std`` per channel, as diffusers' SDXL pipelines compute it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from alphavae.accel import apply_policy, compute_dtype, float32_call, resolve_policy, usable_device
from alphavae.convert import (
    DEFAULT_MODEL_DIR,
    check_latent_stats,
    downsampling_factor,
    load_autoencoder,
    require_channels,
)
from alphavae.io import check_float_tensor, check_pixels, clear_hidden_colour, pad_to_canvas, pad_to_multiple
from alphavae.io.resample import _check_size

_RANGE_SLACK = 1e-3


def _check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ValueError when ``x`` holds NaN or infinite values (``name`` starts the message)."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")


def _check_range(pixels: torch.Tensor) -> None:
    """Raise ValueError when pixels are not finite or clearly outside [-1, 1] (e.g. 0-255 or 0-1 mistaken)."""
    _check_finite(pixels, "pixels")
    low, high = pixels.min().item(), pixels.max().item()
    if low < -1 - _RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise ValueError(f"pixels must be in [-1, 1] (straight RGBA); got values in [{low:.4g}, {high:.4g}]")


def _check_latents(latents: torch.Tensor, channels: int) -> None:
    """Raise TypeError unless ``latents`` is a floating-point tensor, ValueError unless it is a finite
    ``(B, channels, h, w)`` batch with B, h, w >= 1."""
    check_float_tensor(latents, "latents")
    if latents.ndim != 4 or latents.shape[1] != channels or latents.numel() == 0:
        raise ValueError(f"latents must be (B, {channels}, h, w) with B, h, w >= 1, got {tuple(latents.shape)}")
    _check_finite(latents, "latents")


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` covering ``length`` with at least ``overlap`` shared; last one flush."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def _ramp(length: int, overlap: int, *, rise: bool, fall: bool) -> torch.Tensor:
    """1-D tile weights: 0 over the outer quarter of the overlap at sides that meet a neighbour (context
    only), a linear ramp over the middle half, 1 elsewhere; neighbouring weights sum to 1."""
    centres = torch.arange(length, dtype=torch.float32) + 0.5
    ramp_up = ((centres - overlap / 4) / (overlap / 2)).clamp(0, 1) if overlap else torch.ones(length)
    weights = torch.ones(length)
    if rise:
        weights = torch.minimum(weights, ramp_up)
    if fall:
        weights = torch.minimum(weights, ramp_up.flip(0))
    return weights


class _StopAtNorm(Exception):
    """Raised by ``_ImageNormStats`` to end a statistics pass at the first GroupNorm without fixed statistics."""


class _ImageNormStats:
    """Forward hooks that make a model's GroupNorms use statistics of the whole image during a tiled run.

    Per-tile GroupNorm statistics differ from whole-image ones, which makes tiled and untiled results
    disagree by up to the full range. Here the statistics are gathered one GroupNorm at a time (in
    execution order): every tile runs up to the first GroupNorm whose statistics are not fixed yet,
    contributes the sum and sum of squares of the region it owns (the owned regions partition the
    image), and stops; the pooled mean and biased variance are then fixed for that layer and later
    passes normalise with them (``torch.nn.GroupNorm`` arithmetic). Used on the local stages only
    (``RGBAVAE`` runs the mid-block with its attention on the whole latent map); a GroupNorm over
    flattened tokens (3-D input) keeps per-tile statistics. Fixed statistics are constants for
    autograd. Cost: one partial pass over the tiles per GroupNorm.
    """

    def __init__(self, model: torch.nn.Module):
        self.fixed: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self.region = (0.0, 1.0, 0.0, 1.0)
        self.pending: list | None = None
        self.handles = []
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                self.handles += [module.register_forward_pre_hook(self._gather),
                                 module.register_forward_hook(self._normalise)]

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()

    def _gather(self, module: torch.nn.GroupNorm, args: tuple) -> None:
        """Add the owned region's per-group sums for ``module`` and stop the pass, unless ``module`` is fixed."""
        x = args[0]
        if module in self.fixed or x.ndim != 4:  # 3-D: attention's norm over flattened tokens, kept per tile
            return
        top, bottom, left, right = self.region
        height, width = x.shape[-2:]
        owned = x[..., round(top * height): round(bottom * height), round(left * width): round(right * width)]
        groups = owned.double().reshape(x.shape[0], module.num_groups, -1)
        if self.pending is None:
            self.pending = [module, 0.0, 0.0, 0]
        self.pending[1] = self.pending[1] + groups.sum(-1)
        self.pending[2] = self.pending[2] + groups.square().sum(-1)
        self.pending[3] += groups.shape[-1]
        raise _StopAtNorm

    def fix_pending(self) -> bool:
        """Fix the statistics gathered by the last pass; False when the pass reached no unfixed GroupNorm."""
        if self.pending is None:
            return False
        module, total, squares, count = self.pending
        mean = total / count
        self.fixed[module] = (mean, (squares / count - mean.square()).clamp_min(0))
        self.pending = None
        return True

    def _normalise(self, module: torch.nn.GroupNorm, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Replace the GroupNorm output by one normalised with the fixed whole-image statistics."""
        if module not in self.fixed:
            return output
        x = args[0]
        mean, var = (stat.float()[..., None] for stat in self.fixed[module])
        groups = x.float().reshape(x.shape[0], module.num_groups, -1)
        y = ((groups - mean) * torch.rsqrt(var + module.eps)).reshape(x.shape)
        if module.affine:
            y = y * module.weight.float().view(1, -1, 1, 1) + module.bias.float().view(1, -1, 1, 1)
        return y.to(output.dtype)


def _owned(starts: list[int], tile: int, length: int, unit: int) -> list[tuple[float, float]]:
    """Per tile, the fraction of its window it owns: borders at the overlap middles, rounded down to ``unit``."""
    borders = [0] + [(nxt + start + tile) // 2 // unit * unit for start, nxt in zip(starts, starts[1:])] + [length]
    span = min(tile, length)
    return [((lo - start) / span, (hi - start) / span) for start, lo, hi in zip(starts, borders, borders[1:])]


def _tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, tile: int, overlap: int,
           scale: float, unit: int = 1, norm_model: torch.nn.Module | None = None) -> torch.Tensor:
    """Apply ``fn`` to overlapping ``tile`` x ``tile`` windows of ``x`` and blend the results.

    ``fn`` maps a window of side ``s`` to an output of side ``s * scale`` (encoder: 1 / multiple,
    decoder: multiple). Outputs are accumulated with separable weights (``_ramp``: the quarter of
    the overlap nearest a tile's inner edge only gives context, the middle half cross-fades) and
    normalised; every channel, alpha included, gets the same weights. With ``norm_model`` (the
    module whose GroupNorms ``fn`` runs), those GroupNorms use whole-image statistics
    (``_ImageNormStats``; tile owned-region borders fall on multiples of ``unit`` input pixels so they
    stay whole at every resolution inside ``fn``). Float32 result.
    """
    height, width = x.shape[-2:]
    tops, lefts = _tile_starts(height, tile, overlap), _tile_starts(width, tile, overlap)
    regions = [(top, left, rows + cols) for top, rows in zip(tops, _owned(tops, tile, height, unit))
               for left, cols in zip(lefts, _owned(lefts, tile, width, unit))]
    stats = _ImageNormStats(norm_model) if norm_model is not None and len(regions) > 1 else None
    try:
        while stats is not None:
            with torch.no_grad():
                for top, left, region in regions:
                    stats.region = region
                    try:
                        fn(x[..., top: top + tile, left: left + tile])
                    except _StopAtNorm:
                        continue
                    break
            if not stats.fix_pending():
                break
        return _blend(fn, x, tops, lefts, tile=tile, overlap=overlap, scale=scale)
    finally:
        if stats is not None:
            stats.close()


def _blend(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tops: list[int], lefts: list[int], *,
           tile: int, overlap: int, scale: float) -> torch.Tensor:
    """The blending pass of ``_tiled``: run ``fn`` on every window and cross-fade the outputs (float32)."""
    height, width = x.shape[-2:]
    out = weight = None
    for top in tops:
        for left in lefts:
            window = x[..., top: top + tile, left: left + tile]
            result = fn(window).float()
            if out is None:
                out = result.new_zeros(*result.shape[:-2], round(height * scale), round(width * scale))
                weight = result.new_zeros(round(height * scale), round(width * scale))
            rows, cols = result.shape[-2:]
            ramp = round(overlap * scale)
            w = torch.outer(_ramp(rows, ramp, rise=top > 0, fall=top + tile < height),
                            _ramp(cols, ramp, rise=left > 0, fall=left + tile < width)).to(result.device)
            y, x0 = round(top * scale), round(left * scale)
            out[..., y: y + rows, x0: x0 + cols] += result * w
            weight[y: y + rows, x0: x0 + cols] += w
    return out / weight


class RGBAVAE:
    """A 4-channel (RGBA) diffusers ``AutoencoderKL`` that encodes and decodes images of any size.

    Args:
        model: an ``AutoencoderKL`` with 4 input and output channels (``alphavae.convert``);
            its dtype (float32 / bfloat16 / float16) and device are used as they are; it is put in
            eval mode.
        tile_size: if set, encode/decode in overlapping tiles of this many pixels per side
            (a multiple of ``multiple``); bounds memory for huge images. None = whole image.
        tile_overlap: overlap between tiles in pixels (a multiple of ``multiple``, less than
            ``tile_size``); None = the default of ``enable_tiling``. Ignored when ``tile_size`` is None.
        tile_mode: "exact" (default: whole-image GroupNorm statistics and a whole-latent mid-block; close
            to an untiled run, with small differences that shrink with the overlap) or "fast" (every layer
            per tile, like diffusers). ``enable_tiling`` documents both modes, their costs and measured errors.
    Raises:
        ValueError: not an ``AutoencoderKL``, not 4 channels in and out (a 3-channel RGB VAE must be
            converted first: ``alphavae convert``), a bad tile size/overlap, an unknown ``tile_mode``, or a config
            whose ``latents_mean`` / ``latents_std`` are not both null or both ``latent_channels`` long, or are set
            together with a non-zero ``shift_factor`` (ambiguous: diffusers' pipelines apply one or the other).

    Attributes: ``model``, ``tile_size``/``tile_overlap``/``tile_mode`` (None when untiled), ``dtype_policy`` (the
    ``alphavae.accel`` policy name, e.g. "mixed-bf16", when loaded by ``from_pretrained``; None otherwise).

    encode/decode keep autograd (usable in training); ``reconstruct``/``reconstruct_images`` run
    under ``torch.inference_mode``. Exact tiling puts temporary hooks on the model's GroupNorms: do not
    share one instance between threads while tiling is on. Source: AlphaVAE (arXiv 2507.09308) sections 3-4; wraps
    diffusers ``AutoencoderKL``.
    """

    def __init__(self, model: AutoencoderKL, *, tile_size: int | None = None, tile_overlap: int | None = None,
                 tile_mode: str = "exact"):
        require_channels(model, 4, user="RGBAVAE",
                         hint="convert an RGB VAE first (alphavae convert SRC DST / alphavae.convert.convert_to_rgba)")
        check_latent_stats(model.config)
        self.model = model.eval()
        self.dtype_policy: str | None = None  # the policy name when loaded by from_pretrained (for reports)
        self.tile_size = self.tile_overlap = None
        if tile_mode not in ("exact", "fast"):
            raise ValueError(f"tile_mode must be 'exact' or 'fast', got {tile_mode!r}")
        self.tile_mode = tile_mode
        if tile_size is not None:
            self.enable_tiling(tile_size, tile_overlap, tile_mode=tile_mode)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike | None = None, *, subfolder: str | None = None,
                        dtype: str = "auto", device: str | torch.device = "cpu", tile_size: int | None = None,
                        tile_overlap: int | None = None, tile_mode: str = "exact") -> RGBAVAE:
        """Load a converted RGBA VAE saved in diffusers format.

        Args:
            path_or_id: local diffusers folder, or a model id (needs network access); None = the
                shipped default model in ``DEFAULT_MODEL_DIR``.
            subfolder: e.g. "vae" inside a pipeline folder.
            dtype: speed/precision policy (``alphavae.accel.resolve_policy``): "auto" (default: on a CPU
                with AMX-BF16 or a bf16 GPU, "mixed-bf16" = bf16 bulk with float32 input/output layers;
                else "float32", which measured faster on AVX512_BF16-only CPUs), "float32" (exact, diffusers'
                default), "bfloat16", "float16" or "mixed-bf16".
            device: torch device for the weights (e.g. "cpu", "cuda", "cuda:1"); checked to be usable.
            tile_size, tile_overlap, tile_mode: see the class.
        Raises:
            FileNotFoundError: ``path_or_id`` is None and the default model is not installed, or a local
                folder, its config.json or its safetensors weights are missing
                (``alphavae.convert.load_autoencoder``).
            OSError: the model cannot be loaded otherwise (message names the path).
            ValueError: bad dtype, an unknown or unusable device (e.g. "cuda" without a GPU), a config and
                weights that do not build or match an AutoencoderKL or unusable latent factors
                (``load_autoencoder``), a model that is not a 4-channel AutoencoderKL, per-channel latent
                statistics the class refuses, or bad tile settings (message prefixed with the path).
        """
        device = usable_device(device)
        policy = resolve_policy(dtype, device)
        if path_or_id is None:
            if not (DEFAULT_MODEL_DIR / "config.json").is_file():
                raise FileNotFoundError(f"the default RGBA VAE is not installed ({DEFAULT_MODEL_DIR}); "
                                        "pass a VAE path (a diffusers folder made by `alphavae convert`)")
            path_or_id = DEFAULT_MODEL_DIR
        model = load_autoencoder(path_or_id, subfolder=subfolder)
        try:
            vae = cls(apply_policy(model.to(device), policy), tile_size=tile_size, tile_overlap=tile_overlap,
                      tile_mode=tile_mode)
        except ValueError as err:
            raise ValueError(f"{Path(path_or_id) / subfolder if subfolder else path_or_id}: {err}") from err
        vae.dtype_policy = policy.name
        return vae

    @property
    def multiple(self) -> int:
        """Downsampling factor: pixel sides are padded to a multiple of it (8 for SD/FLUX VAEs)."""
        return downsampling_factor(self.model)

    @property
    def latent_channels(self) -> int:
        """Number of latent channels (4 for SD1.x/SDXL, 16 for SD3/FLUX)."""
        return self.model.config.latent_channels

    @property
    def scaling_factor(self) -> float:
        """Diffusion latent scale (config ``scaling_factor``)."""
        return self.model.config.scaling_factor

    @property
    def shift_factor(self) -> float:
        """Diffusion latent shift (config ``shift_factor``; 0 when the config has none)."""
        return self.model.config.shift_factor or 0.0

    @property
    def latent_stats(self) -> tuple[list[float], list[float]] | None:
        """The config's per-channel ``(latents_mean, latents_std)`` (SDXL-style VAEs such as Playground v2.5's),
        each ``latent_channels`` long; None when unset, and then ``shift_factor`` applies instead."""
        mean = self.model.config.get("latents_mean")
        return None if mean is None else (mean, self.model.config.latents_std)

    @property
    def dtype(self) -> torch.dtype:
        """Computation dtype: the dtype of most weights (bf16 under "mixed-bf16", whose input/output layers are
        float32)."""
        return compute_dtype(self.model)

    @property
    def device(self) -> torch.device:
        """Device of the model weights."""
        return next(self.model.parameters()).device

    def enable_tiling(self, tile_size: int, tile_overlap: int | None = None, *, tile_mode: str = "exact") -> None:
        """Encode/decode in overlapping tiles of ``tile_size`` pixels with ``tile_overlap`` pixels overlap.

        Tiles bound the memory of the full-resolution layers (e.g. 4096^2 images). In each overlap the
        quarter nearest a tile's inner edge serves as context only (zero weight) and the middle half
        cross-fades linearly; every channel, alpha included, is blended alike.

        ``tile_mode="exact"`` (default) tiles only the local, full-resolution stages: the encoder's
        ``conv_in`` + down blocks and the decoder's up blocks + output layers. Their GroupNorms use
        statistics of the whole image, gathered over the tiles one norm at a time (``_ImageNormStats``),
        and the mid-block (self-attention: every latent position sees every other) runs once on the
        whole latent-resolution feature map. The remaining tiled-vs-untiled difference comes from
        convolutions whose receptive field reaches past a tile's context, so it shrinks with the
        overlap: measured with alphavae-mini on real 384^2 images (latent tiles of 256 px), 0.16 / 255
        at 128 px overlap vs 6.9 / 255 at 64 px (tests/test_vae.py checks <= 2 / 255). Costs: one
        partial pass over the tiles per GroupNorm of the tiled stages (about 10x the time of "fast"
        for SD/FLUX-structured VAEs) and, for the mid-block, memory ~ 6 x C_mid x H/8 x W/8 floats
        (0.5 GB per tensor for FLUX at 4096^2) and attention time quadratic in (H/8 x W/8).
        ``tile_mode="fast"`` runs every layer per tile (as diffusers' tiling): least time and memory,
        but per-tile normalisation and attention can shift whole tiles (visible seams).
        Autograd: "exact" mode's whole-image statistics are constants (gathered without gradient), so its
        gradients are not those of an untiled run even where the outputs agree (measured on a tiny
        FLUX-shaped VAE: 13 % relative difference for the pixels' gradient, 41 % for an encoder weight's);
        train untiled, or with "fast", whose gradients are exactly those of its own output.
        Args:
            tile_size: tile side in pixels, a positive multiple of ``multiple``.
            tile_overlap: overlap in pixels, a multiple of ``multiple`` below ``tile_size``;
                None = max(tile_size / 4, 16 x multiple), at most tile_size / 2, rounded down to the
                multiple (128 px for 256-512 px tiles of an 8x VAE).
            tile_mode: "exact" or "fast".
        Raises:
            ValueError: sizes not integers, not positive multiples of ``multiple``, overlap >= tile size,
                or an unknown ``tile_mode``.
        """
        if tile_mode not in ("exact", "fast"):
            raise ValueError(f"tile_mode must be 'exact' or 'fast', got {tile_mode!r}")
        for value in (tile_size, tile_overlap if tile_overlap is not None else 0):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"tile size and overlap must be integer pixel counts, got {value!r}")
        if tile_size <= 0 or tile_size % self.multiple:
            raise ValueError(f"tile size {tile_size} px must be a positive multiple of {self.multiple}")
        if tile_overlap is None:
            overlap = min(max(tile_size // 4, 16 * self.multiple), tile_size // 2) // self.multiple * self.multiple
        else:
            overlap = tile_overlap
        if overlap < 0 or overlap % self.multiple or overlap >= tile_size:
            raise ValueError(f"tile overlap {overlap} px must be a multiple of {self.multiple} with "
                             f"0 <= overlap < tile size ({tile_size} px)")
        self.tile_size, self.tile_overlap, self.tile_mode = tile_size, overlap, tile_mode

    def disable_tiling(self) -> None:
        """Encode/decode whole images (the default)."""
        self.tile_size = self.tile_overlap = None

    def _computing_dtype(self) -> torch.dtype:
        """The dtype the model computes in now: the dtype of an active float16/bfloat16 ``torch.autocast`` for the
        model's device type, else ``dtype`` (the weights')."""
        device_type = self.device.type
        if torch.is_autocast_enabled(device_type):
            autocast_dtype = torch.get_autocast_dtype(device_type)
            if autocast_dtype in (torch.float16, torch.bfloat16):
                return autocast_dtype
        return self.dtype

    def _run(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        """Run the encoder (``stage="encode"``: pixels -> moments) or decoder ("decode": latents -> pixels),
        tiled if enabled, in the model dtype (or an active 16-bit autocast's); if 16-bit output is not finite, warn
        naming that dtype and redo the call in float32 with autocast off (``alphavae.accel.float32_call``: float32
        copies of the weights, so the model is unchanged and gradients reach its 16-bit weights).

        Raises:
            ValueError: the output is not finite in float32 either (inputs far outside the VAE's range, e.g.
                latents of magnitude 1e20; the message names the dtypes tried): never NaN pixels or latents.
        """
        def call() -> torch.Tensor:
            inputs = x.to(self.device, next(self.model.parameters()).dtype)  # the input layer's dtype
            encode = stage == "encode"
            whole = self._moments if encode else self._pixels
            if self.tile_size is None:
                return whole(inputs).float()
            scale = 1 / self.multiple if encode else self.multiple
            tiling = dict(tile=self.tile_size if encode else self.tile_size // self.multiple,
                          overlap=self.tile_overlap if encode else self.tile_overlap // self.multiple,
                          scale=scale, unit=self.multiple if encode else 1)
            if self.tile_mode == "fast":
                return _tiled(whole, inputs, **tiling)
            if encode:
                features = _tiled(self._encoder_local, inputs, norm_model=self._encoder_local_modules(), **tiling)
                mid_dtype = next(self.model.encoder.mid_block.parameters()).dtype  # blended float32 -> 16-bit
                return self._encoder_global(features.to(mid_dtype)).float()
            features = self._decoder_global(inputs)
            return _tiled(self._decoder_local, features, norm_model=self._decoder_local_modules(), **tiling)

        dtype = self._computing_dtype()
        out = call()
        if dtype != torch.float32 and not torch.isfinite(out).all():
            warnings.warn(f"VAE output is not finite in {dtype}; recomputing this call in float32", stacklevel=3)
            with torch.autocast(self.device.type, enabled=False):
                out = float32_call(self.model, call)
        if not torch.isfinite(out).all():
            tried = "float32" if dtype == torch.float32 else f"{dtype} and then in float32"
            raise ValueError(f"VAE {stage} gave non-finite values in {tried} for inputs of magnitude up to "
                             f"{float(x.abs().max()):.3g}: far outside what the VAE works with")
        return out

    # The encoder and decoder split at the latent resolution (diffusers ``Encoder`` / ``Decoder``
    # forward, without gradient checkpointing): local full-resolution stages, tiled in "exact" mode,
    # and global latent-resolution stages (the mid-block with its attention), run on the whole map.

    def _encoder_local(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder ``conv_in`` + down blocks: ``(B, 4, H, W)`` -> ``(B, C, H / multiple, W / multiple)``."""
        encoder = self.model.encoder
        h = encoder.conv_in(x)
        for block in encoder.down_blocks:
            h = block(h)
        return h

    def _encoder_local_modules(self) -> torch.nn.Module:
        """The modules ``_encoder_local`` runs (whose GroupNorms get whole-image statistics)."""
        return torch.nn.ModuleList([self.model.encoder.conv_in, *self.model.encoder.down_blocks])

    def _encoder_global(self, h: torch.Tensor) -> torch.Tensor:
        """Encoder mid-block + output layers (+ quant conv): features -> posterior moments ``(B, 2 x latent, h, w)``."""
        encoder = self.model.encoder
        moments = encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(encoder.mid_block(h))))
        return moments if self.model.quant_conv is None else self.model.quant_conv(moments)

    def _decoder_global(self, z: torch.Tensor) -> torch.Tensor:
        """(Post-quant conv +) decoder ``conv_in`` + mid-block: latents -> ``(B, C, h, w)`` features."""
        z = z if self.model.post_quant_conv is None else self.model.post_quant_conv(z)
        decoder = self.model.decoder
        return decoder.mid_block(decoder.conv_in(z), None)

    def _decoder_local(self, h: torch.Tensor) -> torch.Tensor:
        """Decoder up blocks + output layers: features -> ``(B, 4, h x multiple, w x multiple)`` pixels."""
        decoder = self.model.decoder
        for block in decoder.up_blocks:
            h = block(h, None)
        return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(h)))

    def _decoder_local_modules(self) -> torch.nn.Module:
        """The modules ``_decoder_local`` runs (whose GroupNorms get whole-image statistics)."""
        return torch.nn.ModuleList([*self.model.decoder.up_blocks, self.model.decoder.conv_norm_out])

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder (+ quant conv) output: concatenated posterior mean and log-variance."""
        moments = self.model.encoder(x)
        return moments if self.model.quant_conv is None else self.model.quant_conv(moments)

    def _pixels(self, z: torch.Tensor) -> torch.Tensor:
        """(Post-quant conv +) decoder output in [-1, 1]-ish pixel units."""
        z = z if self.model.post_quant_conv is None else self.model.post_quant_conv(z)
        return self.model.decoder(z)

    def encode(self, pixels: torch.Tensor) -> DiagonalGaussianDistribution:
        """Encode pixels to the latent posterior.

        Args:
            pixels: ``(B, 4, H, W)`` straight RGBA in [-1, 1], any H, W >= 1. Padded at the bottom
                and right to multiples of ``multiple`` by replicating the border pixels
                (``alphavae.io.pad_to_multiple``); the
                posterior covers the padded image, i.e. latents of size ceil(H / multiple) x
                ceil(W / multiple). Colour under alpha = 0 is set to -1 first
                (``alphavae.io.clear_hidden_colour``), so images that look identical encode identically.
        Returns:
            diffusers ``DiagonalGaussianDistribution`` in float32 (``.mode()``, ``.sample()``,
            ``.mean``, ``.std``, ``.kl()``), raw VAE latent space (not scaled/shifted).
        Raises:
            TypeError, ValueError: not float, not 4-D with 4 channels (3-channel RGB pixels are
                refused: add an alpha channel), an empty batch (B = 0), NaN/inf values, or values outside
                [-1, 1] (by more than 1e-3).
            ValueError: the encoder output is not finite in float32 (16-bit models recompute in float32 first).
        """
        check_pixels(pixels)
        if pixels.ndim != 4 or pixels.shape[0] == 0:
            raise ValueError(f"pixels must be a batch (B, 4, H, W) with B >= 1, got {tuple(pixels.shape)}")
        _check_range(pixels)
        padded, _ = pad_to_multiple(clear_hidden_colour(pixels), self.multiple, mode="replicate")
        return DiagonalGaussianDistribution(self._run("encode", padded))

    def decode(self, latents: torch.Tensor, *, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Decode raw VAE latents to pixels.

        Args:
            latents: ``(B, latent_channels, h, w)`` raw latents (``from_diffusion_latents`` first
                if they come from a diffusion model).
            size: (H, W) to crop the decoded ``(h * multiple, w * multiple)`` image to, top-left
                aligned (undoes ``encode``'s padding); None = no crop.
        Returns:
            ``(B, 4, H, W)`` float32 straight RGBA clamped to [-1, 1].
        Raises:
            TypeError: latents not a floating-point ``torch.Tensor`` (e.g. int64 or a numpy array; names the
                dtype or type).
            ValueError: latents not 4-D with ``latent_channels`` channels, an empty batch, NaN/inf latents, latents
                so large that the decoder overflows even in float32 (~1e20), or ``size`` not two positive integers
                or larger than the decoded image.
        """
        _check_latents(latents, self.latent_channels)
        full = (latents.shape[-2] * self.multiple, latents.shape[-1] * self.multiple)
        if size is not None:
            size = _check_size(size, "crop size")
            if size[0] > full[0] or size[1] > full[1]:
                raise ValueError(f"crop size {size} is larger than the decoded size {full}")
        pixels = self._run("decode", latents).clamp(-1, 1)
        return pixels if size is None else pixels[..., : size[0], : size[1]]

    @torch.inference_mode()
    def reconstruct(self, pixels: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None,
                    min_side: int | None = None) -> torch.Tensor:
        """Encode and decode pixels; the output has exactly the input size (pad, run, crop; never resized).

        Args:
            pixels: ``(B, 4, H, W)`` straight RGBA in [-1, 1].
            sample: draw latents from the posterior (with ``generator``) instead of its mode.
            min_side: run a side shorter than this many pixels centred on a transparent canvas that long
                (``alphavae.io.pad_to_canvas``; the side first extended to a multiple of ``multiple`` by
                repeating its edge pixels, so a 1 px image keeps its pixel) and crop the result back. For models
                trained at one image size that fail on much smaller images: alphavae-mini, trained at 256 px,
                leaves a 128 px image's transparent background at alpha ~45/255 and is accurate with
                ``min_side=256`` (its card).
                None: no canvas.
        Returns:
            ``(B, 4, H, W)`` float32 straight RGBA in [-1, 1], on the model's device.
        Raises:
            ValueError: ``min_side`` not an integer >= 1; see ``encode``.
        """
        height, width = pixels.shape[-2:]
        top, left = 0, 0
        if min_side is not None:
            pixels, (top, left) = pad_to_canvas(pixels, min_side, multiple=self.multiple)
        posterior = self.encode(pixels)
        latents = posterior.sample(generator=generator) if sample else posterior.mode()
        return self.decode(latents, size=tuple(pixels.shape[-2:]))[..., top: top + height, left: left + width]

    def reconstruct_images(self, images: Sequence[torch.Tensor], *, batch_size: int = 8, sample: bool = False,
                           generator: torch.Generator | None = None, min_side: int | None = None) -> list[torch.Tensor]:
        """Reconstruct a list of single images, batching same-size ones together.

        Args:
            images: ``(4, H, W)`` straight RGBA tensors in [-1, 1], sizes may differ.
            batch_size: at most this many same-size images per model call.
            sample, generator, min_side: see ``reconstruct``.
        Returns:
            ``(4, H, W)`` float32 reconstructions, in input order, each the size of its input.
        Raises:
            ValueError: ``batch_size`` < 1, or an image is not ``(4, H, W)``; see ``encode``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        by_size: dict[tuple, list[int]] = {}
        for index, image in enumerate(images):
            check_pixels(image, f"images[{index}]")
            if image.ndim != 3:
                raise ValueError(f"images[{index}] must be one image (4, H, W), got {tuple(image.shape)}")
            by_size.setdefault(tuple(image.shape), []).append(index)
        results: list[torch.Tensor | None] = [None] * len(images)
        for indices in by_size.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start: start + batch_size]
                out = self.reconstruct(torch.stack([images[i] for i in chunk]), sample=sample, generator=generator,
                                       min_side=min_side)
                for i, image in zip(chunk, out):
                    results[i] = image
        return results

    def _diffusion_stats(self, latents: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """``(mean, std)`` that diffusion latents are normalised with: ``latent_stats`` as ``(latent_channels, 1, 1)``
        tensors on ``latents``' device and in its dtype when the config sets them, else ``(shift_factor, 1.0)``.

        Raises:
            ValueError: the statistics are set and ``latents`` does not have ``latent_channels`` channels in dim -3.
        """
        if self.latent_stats is None:
            return self.shift_factor, 1.0
        if latents.ndim < 3 or latents.shape[-3] != self.latent_channels:
            raise ValueError(f"latents need latent_channels ({self.latent_channels}) channels in dim -3 for the "
                             f"config's per-channel latents_mean/latents_std, got shape {tuple(latents.shape)}")
        return tuple(torch.tensor(stat, device=latents.device, dtype=latents.dtype).view(-1, 1, 1)
                     for stat in self.latent_stats)

    def to_diffusion_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents -> diffusion-model latents: ``(z - shift_factor) * scaling_factor``, or, when the config
        sets per-channel ``latent_stats``, ``(z - latents_mean) * scaling_factor / latents_std`` per channel
        (diffusers' SDXL img2img pipelines' encode side).

        Args:
            latents: raw latents, e.g. ``(B, latent_channels, h, w)`` from ``encode``; any shape (elementwise)
                without per-channel statistics, ``(..., latent_channels, h, w)`` with them.

        Returns:
            A tensor of the same shape, dtype and device (the inverse of ``from_diffusion_latents``).
        Raises:
            ValueError: per-channel statistics and ``latents`` without ``latent_channels`` channels in dim -3.
        """
        mean, std = self._diffusion_stats(latents)
        return (latents - mean) * self.scaling_factor / std

    def from_diffusion_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion-model latents -> raw VAE latents: ``z / scaling_factor + shift_factor``, or, when the config
        sets per-channel ``latent_stats``, ``z * latents_std / scaling_factor + latents_mean`` per channel
        (diffusers' SDXL pipelines' decode side).

        Args:
            latents: diffusion-space latents, e.g. ``(B, latent_channels, h, w)`` unpacked from a
                transformer's output; any shape (elementwise) without per-channel statistics,
                ``(..., latent_channels, h, w)`` with them.

        Returns:
            Raw latents of the same shape, dtype and device, ready for ``decode``.
        Raises:
            ValueError: as ``to_diffusion_latents``.
        """
        mean, std = self._diffusion_stats(latents)
        return latents * std / self.scaling_factor + mean


def fit_latent_factors(vae: RGBAVAE, images: Iterable[torch.Tensor], *, shift: bool = True,
                       generator: torch.Generator | None = None) -> dict[str, float]:
    """Diffusion latent factors fitted to data: ``shift_factor`` = mean and ``scaling_factor`` = 1 / std of
    posterior samples over every latent element, so ``to_diffusion_latents`` gives zero-mean, unit-variance
    latents (the convention of SD3's and FLUX's VAE configs). With ``shift=False`` (for SD1.x/SDXL-style
    pipelines, which ignore ``shift_factor``): ``shift_factor`` = 0 and ``scaling_factor`` = 1 / RMS, i.e.
    unit second moment. Scalar factors only: a VAE whose config sets per-channel ``latents_mean`` /
    ``latents_std`` is refused, since its diffusion latents are normalised per channel by those and not by
    ``shift_factor`` (so ``alphavae latent-factors --write`` never writes such a config).

    Args:
        vae: the RGBA VAE (its tiling and dtype settings are used).
        images: ``(4, H, W)`` straight RGBA tensors in [-1, 1], any sizes (e.g. ``alphavae.io.load_rgba``).
        shift: fit a shift (default) or only a scale.
        generator: for the posterior samples (None = torch's global generator).
    Returns:
        ``{"shift_factor": mean (0 without shift), "scaling_factor": 1 / std (1 / RMS without shift),
        "std": std, "images": count, "elements": latent values seen}`` (statistics accumulated in float64).
    Raises:
        ValueError: ``vae.latent_stats`` is set (per-channel statistics), no images, or latents with zero spread;
            see ``RGBAVAE.encode``.
    """
    if vae.latent_stats is not None:
        raise ValueError("the VAE's config sets per-channel latents_mean/latents_std, which normalise its diffusion "
                         "latents instead of shift_factor: scalar factors fitted here would not describe them "
                         "(set both to null in config.json to use scalar factors)")
    total = squares = 0.0
    count = elements = 0
    with torch.inference_mode():
        for image in images:
            latents = vae.encode(image[None]).sample(generator=generator).double()
            total += latents.sum().item()
            squares += latents.square().sum().item()
            elements += latents.numel()
            count += 1
    if count == 0:
        raise ValueError("no images to fit the factors on")
    mean = total / elements
    std = max(squares / elements - mean * mean, 0.0) ** 0.5
    spread = std if shift else (squares / elements) ** 0.5
    if spread == 0.0:
        raise ValueError("latents have zero spread; cannot fit a scaling factor")
    return {"shift_factor": mean if shift else 0.0, "scaling_factor": 1.0 / spread, "std": std, "images": count,
            "elements": elements}
