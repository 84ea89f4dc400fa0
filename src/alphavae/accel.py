"""Inference speed policy: the dtype and memory layout a VAE runs in, chosen per device; the names of the
single dtypes (:func:`parse_dtype`) and of the FLUX pipeline's CPU offload modes.

The bulk of a diffusers ``AutoencoderKL`` (its resnets, attention, up/down samplers) runs in a 16-bit
compute dtype where the hardware has fast 16-bit matrix units (CPUs with AMX-BF16, CUDA GPUs
with bf16), while a few cheap layers where precision matters stay in float32 ("islands"):

- ``encoder.conv_in`` sees the raw pixels: bf16 cannot represent every 1/255 step of alpha near 1
  (its spacing there is 2^-7 > 2/255), so the first convolution reads float32 pixels;
- ``encoder.conv_norm_out`` / ``encoder.conv_out`` produce the posterior moments (float32 latents);
- ``quant_conv`` / ``post_quant_conv`` (SD1.x/SDXL-style VAEs with ``use_quant_conv``; SD3/FLUX VAEs have none,
  and then they are skipped) map the moments and the decoder's input latents, so those stay float32 too;
- ``decoder.conv_in`` reads float32 latents;
- ``decoder.conv_norm_out`` / ``decoder.conv_out`` produce the pixels, so the output is float32 and not
  rounded to bf16's 2^-8 relative step (about 1/255 near 1).

Those layers cost well under 1 % of the FLOPs (they run at one channel width on one end of the network).
Every parametrised leaf module gets a forward pre-hook that casts floating inputs to its own weight dtype,
so the mixed model runs without further changes and stays consistent if the whole model is later cast to
one dtype. Convolutions run in ``torch.channels_last`` layout when the policy says so.

Source: this project's measurements (``benchmarks/``); mechanisms are PyTorch's (``Module.to``,
forward pre-hooks, ``torch.channels_last``) and oneDNN's bf16 kernels.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

FLOAT32_ISLANDS: tuple[str, ...] = (
    "encoder.conv_in",
    "encoder.conv_norm_out",
    "encoder.conv_out",
    "decoder.conv_in",
    "decoder.conv_norm_out",
    "decoder.conv_out",
    "quant_conv",
    "post_quant_conv",
)
"""``AutoencoderKL`` submodules kept in float32 by the mixed policies (cheap, precision-critical)."""

OPTIONAL_ISLANDS: frozenset[str] = frozenset({"quant_conv", "post_quant_conv"})
"""Islands a model may lack (None or absent, e.g. SD3/FLUX VAEs without quant convs): :func:`apply_policy` skips
them; any other island it cannot find is an error."""

POLICY_NAMES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16", "mixed-bf16")
"""Names accepted by :func:`resolve_policy`."""

MIXED_PRECISIONS: tuple[str, ...] = ("auto", "no", "bf16", "fp16")
"""Training ``mixed_precision`` settings accepted by :func:`autocast_precision`."""

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Single-dtype names accepted by :func:`parse_dtype` (``alphavae convert --dtype``, pipeline dtypes)."""

OFFLOAD_MODES: tuple[str, ...] = ("none", "model", "sequential")
"""FLUX pipeline CPU offload: whole models moved to the GPU in turn ('model'), or layer by layer
('sequential'); used by :func:`alphavae.diffusion.pipeline.load_flux_pipeline`."""

_HOOK_ATTR = "_alphavae_cast_hooks"
_T = TypeVar("_T")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map "float32" / "bfloat16" / "float16" (or a torch dtype among those) to the torch dtype.

    Raises:
        ValueError: any other name or dtype.
    """
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


@dataclasses.dataclass(frozen=True)
class SpeedPolicy:
    """How a VAE is laid out for inference.

    Attributes:
        name: the policy name (one of ``POLICY_NAMES`` except "auto", which resolves to another).
        dtype: compute dtype of the bulk of the model.
        islands: dotted module names kept in float32 (empty = the whole model in ``dtype``).
        channels_last: convert 4-D weights (and so convolution outputs) to ``torch.channels_last``.
    """

    name: str
    dtype: torch.dtype
    islands: tuple[str, ...] = ()
    channels_last: bool = False


def usable_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)`` once a tensor could be allocated there (e.g. ``"cpu"``, ``"cuda:1"``).

    Raises:
        ValueError: one line naming ``device``: torch does not know it (``"bogus"``), cannot allocate there
            (``"cuda"`` without a GPU, a missing index), or it is ``meta`` (holds no data, so nothing could be
            computed).
    """
    try:
        device = torch.device(device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"device {str(device)!r} is not usable here: {reason}") from err
    if device.type == "meta":
        raise ValueError(f"device {str(device)!r} is not usable here: it holds no data (use cpu or cuda)")
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has AMX-BF16 tile units (``amx_bf16`` in ``/proc/cpuinfo``), where bf16 pays off.

    AVX512_BF16 alone is not enough: on the 2-core AVX512_BF16 Xeon VM this project benchmarks on, a bf16
    matmul ran at 83 GFLOP/s against 139 for float32, and the mixed policy was 0.68-0.87x the speed of
    float32 end to end (``benchmarks/``, 2026-11-30). Returns False when the file cannot be read.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags


def resolve_policy(name: str = "auto", device: str | torch.device = "cpu") -> SpeedPolicy:
    """Turn a policy name into a :class:`SpeedPolicy` for ``device``.

    Args:
        name: "auto" (the default users get: "mixed-bf16" on a CPU with AMX-BF16 (``cpu_has_fast_bf16``)
            or a CUDA device with bf16 support, else "float32"), "float32" (diffusers' default, exact),
            "bfloat16" / "float16" (whole model in that dtype, no islands), or "mixed-bf16" (bf16 bulk, float32
            ``FLOAT32_ISLANDS``; channels_last on CPU).
        device: where the model will run.
    Returns:
        The resolved policy (never named "auto").
    Raises:
        ValueError: unknown name.
        RuntimeError: ``device`` is a string ``torch.device`` cannot parse (e.g. "bogus"); use
            :func:`usable_device` first for a one-line ValueError.
    """
    if name not in POLICY_NAMES:
        raise ValueError(f"unknown dtype policy {name!r}; choose one of {POLICY_NAMES}")
    device = torch.device(device)
    if name == "auto":
        if device.type == "cpu":
            fast = cpu_has_fast_bf16()
        else:
            fast = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        name = "mixed-bf16" if fast else "float32"
    if name == "mixed-bf16":
        return SpeedPolicy(name, torch.bfloat16, FLOAT32_ISLANDS, channels_last=device.type == "cpu")
    return SpeedPolicy(name, {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name])


def autocast_precision(name: str, device: str | torch.device) -> str:
    """Resolve a training ``mixed_precision`` setting for accelerate's autocast on ``device``.

    Args:
        name: "auto" (bf16 autocast where bf16 pays off, by the same test as the "auto" inference policy:
            a CPU with AMX-BF16 or a CUDA device with bf16 support; float32 elsewhere), "no", "bf16" or "fp16".
            On a CPU without AMX, bf16 autocast made an alphavae-mini training step 1.5x slower than
            float32 (2.13 vs 1.38 s/step, 1 thread, 2026-11-30).
        device: the device training runs on ("cuda" or "cpu").
    Returns:
        "no", "bf16" or "fp16" (never "auto").
    Raises:
        ValueError: unknown name.
        RuntimeError: with "auto", a ``device`` string ``torch.device`` cannot parse (:func:`resolve_policy`).
    """
    if name not in MIXED_PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {name!r}")
    if name != "auto":
        return name
    return "bf16" if resolve_policy("auto", device).name == "mixed-bf16" else "no"


def _cast_inputs_to_weight_dtype(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: cast floating tensor positional inputs to the module's weight dtype."""
    dtype = module.weight.dtype
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != dtype else a
                 for a in args)


def apply_policy(model: nn.Module, policy: SpeedPolicy) -> nn.Module:
    """Lay out ``model`` for ``policy`` in place and return it.

    Casts all floating weights to ``policy.dtype``, then the ``policy.islands`` submodules back to float32
    (those in ``OPTIONAL_ISLANDS`` only where the model has them), converts to ``channels_last`` if asked, and
    (once per model) registers the input-casting pre-hooks on every leaf module with a ``weight``. Applying
    another policy later (e.g. "float32") re-lays the model out.

    Args:
        model: typically a diffusers ``AutoencoderKL``; any ``nn.Module`` works.
        policy: from :func:`resolve_policy`.
    Returns:
        ``model``.
    Raises:
        ValueError: an island name that is not a submodule of ``model`` and not in ``OPTIONAL_ISLANDS``.
    """
    named = dict(model.named_modules())
    missing = [name for name in policy.islands if name not in named and name not in OPTIONAL_ISLANDS]
    if missing:
        raise ValueError(f"model has no submodule(s) {missing} to keep in float32")
    nn.Module.to(model, policy.dtype)  # diffusers' ModelMixin.to warns about an empty keep-in-fp32 list
    for name in policy.islands:
        if name in named:
            nn.Module.to(named[name], torch.float32)
    nn.Module.to(model, memory_format=torch.channels_last if policy.channels_last else torch.contiguous_format)
    if not hasattr(model, _HOOK_ATTR):
        hooks = [module.register_forward_pre_hook(_cast_inputs_to_weight_dtype) for module in model.modules()
                 if not list(module.children()) and isinstance(getattr(module, "weight", None), torch.Tensor)]
        object.__setattr__(model, _HOOK_ATTR, hooks)
    return model


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype holding most of ``model``'s parameters (its compute dtype under a mixed policy).

    Raises:
        ValueError: the model has no parameters.
    """
    counts: Counter = Counter()
    for parameter in model.parameters():
        counts[parameter.dtype] += parameter.numel()
    if not counts:
        raise ValueError("model has no parameters")
    return counts.most_common(1)[0][0]


class _Closure(nn.Module):
    """A module whose forward runs ``fn()``, with ``model`` as its child, so that ``torch.func.functional_call``
    can swap ``model``'s parameters for a call that uses ``model``'s submodules in any order."""

    def __init__(self, model: nn.Module, fn: Callable[[], _T]):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self) -> _T:
        """``fn()``."""
        return self.fn()


def float32_call(model: nn.Module, fn: Callable[[], _T]) -> _T:
    """Return ``fn()`` run with every parameter of ``model`` replaced by a float32 copy (via ``functional_call``).

    For the loud float32 fallback when 16-bit output is not finite. ``model`` itself is never changed (a mixed
    policy's islands and channels_last weights stay as they are; the copies keep each weight's layout), so this
    works inside ``torch.inference_mode`` and keeps autograd correct: the copies are differentiable casts, so
    gradients reach the original 16-bit parameters (in their dtype). Float32 parameters are used as they are.

    Args:
        model: the module whose parameters ``fn`` uses (directly or through its submodules and their hooks).
        fn: a call without arguments, e.g. a closure that runs ``model``'s encoder.
    Returns:
        What ``fn`` returns.
    """
    copies = {f"model.{name}": parameter.float() for name, parameter in model.named_parameters()}
    return torch.func.functional_call(_Closure(model, fn), copies, ())
