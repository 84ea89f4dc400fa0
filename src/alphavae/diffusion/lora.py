"""LoRA adapters on the FLUX transformer: which layers, how to attach, save and restore them.

Library: peft (``LoraConfig``, state-dict helpers) through diffusers' ``PeftAdapterMixin`` and
``FluxLoraLoaderMixin``. Saved folders are diffusers LoRA folders (``pytorch_lora_weights.safetensors``
with the adapter metadata), loadable by ``FluxPipeline.load_lora_weights``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from alphavae.io import atomic_write, set_default_permissions

if TYPE_CHECKING:  # diffusers and peft are imported where they are used, so the CLI's --help does not load them
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig

LORA_FILE = "pytorch_lora_weights.safetensors"
"""File name diffusers' ``save_lora_weights`` / ``load_lora_weights`` use inside a LoRA folder."""
ADAPTER = "default"
"""Name of the adapter trained by :mod:`alphavae.diffusion.train`."""

_DOUBLE = r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)" \
          r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))"
_SINGLE = r"single_transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v)|proj_mlp|proj_out)"
_SINGLE_QKV = r"single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v)"
_DOUBLE_ATTN = r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
_SINGLE_ATTN = r"single_transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v)|proj_out)"

TARGET_PRESETS: dict[str, str] = {
    "paper": rf"^({_DOUBLE}|{_SINGLE_QKV})$",
    "wide": rf"^({_DOUBLE}|{_SINGLE})$",
    "attention": rf"^({_DOUBLE_ATTN}|{_SINGLE_ATTN})$",
}
"""peft ``target_modules`` regexes (full match on module names) by preset name; N is every block index. Counts are
for FLUX.1-dev (19 double-stream blocks, 38 single-stream, width 3072, feed-forward 12288) at rank 64.

'paper' (default; AlphaVAE §5.1): the layers of the reference implementation (o0o0o00o0/AlphaVAE,
``train/train_diffusion_lora.py``, whose peft list of name suffixes attn.to_k, attn.to_q, attn.to_v,
attn.to_out.0, attn.add_k_proj, attn.add_q_proj, attn.add_v_proj, attn.to_add_out, ff.net.0.proj, ff.net.2,
ff_context.net.0.proj, ff_context.net.2 matches exactly these in FLUX): ``transformer_blocks.N.`` attn.to_q,
attn.to_k, attn.to_v, attn.to_out.0, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj, attn.to_add_out,
ff.net.0.proj, ff.net.2, ff_context.net.0.proj, ff_context.net.2; ``single_transformer_blocks.N.`` attn.to_q,
attn.to_k, attn.to_v (single-stream blocks have no to_out, ff or ff_context). 342 layers, 179,306,496 parameters.

'wide': the 'paper' layers and ``single_transformer_blocks.N.`` proj_mlp (their feed-forward input) and proj_out
(their joint attention + MLP output). 418 layers, 261,488,640 parameters. This was the 'paper' preset until it
was narrowed to the reference's layers; its regex is unchanged, so LoRAs and checkpoints trained with that 'paper'
record exactly this preset's ``target_modules``.

'attention': ``transformer_blocks.N.`` attn.to_q, attn.to_k, attn.to_v, attn.to_out.0, attn.add_q_proj,
attn.add_k_proj, attn.add_v_proj, attn.to_add_out; ``single_transformer_blocks.N.`` attn.to_q, attn.to_k,
attn.to_v and proj_out (so not a subset of 'paper'). 304 layers, 149,422,080 parameters.

No preset targets the transformer's final ``proj_out``, its norms or its embedders.
"""


def lora_config(rank: int = 64, alpha: float = 64.0, targets: str = "paper", dropout: float = 0.0) -> LoraConfig:
    """Build the peft ``LoraConfig`` (Gaussian init of A, zero B, so training starts at the base model).

    Args:
        rank: LoRA rank r >= 1 (paper: 64).
        alpha: LoRA alpha (> 0); the update is scaled by alpha / r (paper: 64).
        targets: a key of :data:`TARGET_PRESETS` ("paper", "wide" or "attention").
        dropout: LoRA dropout probability in [0, 1).

    Raises:
        ValueError: bad rank, alpha, dropout or preset name.
    """
    if rank < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise ValueError(f"need rank >= 1, alpha > 0 and 0 <= dropout < 1; got {rank}, {alpha}, {dropout}")
    if targets not in TARGET_PRESETS:
        raise ValueError(f"unknown LoRA target preset {targets!r}; choose one of {sorted(TARGET_PRESETS)}")
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                      target_modules=TARGET_PRESETS[targets])


def add_lora(transformer: FluxTransformer2DModel, config: LoraConfig) -> list[torch.nn.Parameter]:
    """Freeze the transformer, attach the adapter and return its trainable parameters (float32).

    Raises:
        ValueError: (from peft) the config targets no module of this transformer.
    """
    transformer.requires_grad_(False)
    transformer.add_adapter(config, adapter_name=ADAPTER)
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def save_lora(transformer: FluxTransformer2DModel, folder: str | Path) -> Path:
    """Write the adapter as a diffusers LoRA folder with its peft metadata; returns the folder.

    The metadata (``transformer_lora_adapter_metadata``: rank, alpha, targets) makes a reload scale
    exactly alpha / r; without it diffusers guesses alpha = r. The file's bytes depend only on the weights and
    the config (:func:`canonical_safetensors`), so a digest of the file (``generate``'s ``lora_sha256``) matches
    for identical LoRAs saved by different runs.
    """
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    metadata = transformer.peft_config[ADAPTER].to_dict()
    FluxPipeline.save_lora_weights(
        folder, transformer_lora_layers=get_peft_model_state_dict(transformer, adapter_name=ADAPTER),
        transformer_lora_adapter_metadata=metadata,
    )
    canonical_safetensors(folder / LORA_FILE)
    set_default_permissions(folder / LORA_FILE)  # only the file written here; the folder is the caller's
    return folder


def canonical_safetensors(path: str | Path) -> None:
    """Rewrite a ``.safetensors`` file (atomically) so that equal contents give equal bytes.

    safetensors writes its ``__metadata__`` strings in the order of a Rust ``HashMap``, which changes from call
    to call: ``save_file`` and ``save`` (``serialize``) of safetensors 0.8.0, given the same tensors and the
    metadata inserted in sorted order, gave 18 different byte strings in 20 calls in one process and differed
    across processes too, so sorting the metadata passed in does not help. Here the header is rewritten with
    ``__metadata__`` first, its keys sorted, then the tensor entries in the order of their data (``data_offsets``),
    as compact JSON padded with spaces to a multiple of 8 bytes. The tensor data is copied unchanged (offsets count
    from the end of the header, so they stay valid).

    Raises:
        OSError: the file cannot be read or replaced.
        ValueError: the file is not safetensors (header length or JSON broken, or the header is not a map of
            tensor entries with ``data_offsets``); names the file.
    """
    path = Path(path)
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8: 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a safetensors file (bad header: {err})") from None
    try:
        metadata = header.pop("__metadata__", None)
        ordered = {"__metadata__": dict(sorted(metadata.items()))} if metadata is not None else {}
        ordered |= dict(sorted(header.items(), key=lambda item: (item[1]["data_offsets"], item[0])))
    except (AttributeError, KeyError, TypeError):
        raise ValueError(f"{path}: not a safetensors file (its header is not a map of tensor entries with "
                         "data_offsets)") from None
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    rewritten = len(text).to_bytes(8, "little") + text + data[8 + length:]
    atomic_write(path, lambda temp: temp.write_bytes(rewritten), overwrite=True)


def restore_lora(transformer: FluxTransformer2DModel, folder: str | Path) -> None:
    """Copy saved adapter weights (a :func:`save_lora` folder) into the transformer's existing adapter.

    Used to resume training; the adapter must have been added with the same config.

    Raises:
        ValueError: the folder holds no transformer LoRA weights, or some name no layer of the adapter, or some
            layers of the adapter have no saved weights (a LoRA saved with other targets).
        RuntimeError: (from ``torch.nn.Module.load_state_dict``) a weight's shape differs from the adapter's,
            e.g. a LoRA of another rank.
    """
    from diffusers import FluxPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    state = FluxPipeline.lora_state_dict(folder)
    state = {k.removeprefix("transformer."): v for k, v in state.items() if k.startswith("transformer.")}
    if not state:
        raise ValueError(f"{folder}: no transformer LoRA weights found")
    result = set_peft_model_state_dict(transformer, convert_unet_state_dict_to_peft(state), adapter_name=ADAPTER)
    if result.unexpected_keys:
        raise ValueError(f"{folder}: LoRA weights do not fit the adapter: {result.unexpected_keys[:3]}")
    missing = [key for key in result.missing_keys if ".lora_" in key]  # the base model's weights are never saved
    if missing:
        raise ValueError(f"{folder}: holds no weights for {len(missing)} LoRA layers of the adapter (saved with other "
                         f"targets?), e.g. {missing[:3]}")


def saved_target_modules(folder: str | Path) -> str | list[str] | None:
    """The ``target_modules`` that a :func:`save_lora` folder's adapter metadata records: peft's, a regex (full match
    on module names, as :data:`TARGET_PRESETS`) or a list of module names or name suffixes; None when the file has no
    adapter metadata (a LoRA not saved by :func:`save_lora`). Reads the safetensors header only, not the weights.

    Raises:
        OSError: the folder holds no readable ``pytorch_lora_weights.safetensors``.
        safetensors.SafetensorError: that file is not safetensors.
        ValueError: its adapter metadata is not JSON.

    Source: the ``lora_adapter_metadata`` JSON that diffusers' ``save_lora_weights`` writes into the safetensors
    header (peft's ``LoraConfig.to_dict()``, keys prefixed ``transformer.``).
    """
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from safetensors import safe_open

    with safe_open(Path(folder) / LORA_FILE, "pt") as file:
        raw = (file.metadata() or {}).get(LORA_ADAPTER_METADATA_KEY)
    return None if raw is None else json.loads(raw).get("transformer.target_modules")
