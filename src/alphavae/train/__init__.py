"""VAE training: configs (``config``), checkpoints (``checkpoint``) and the accelerate loop (``loop``).

Public API: ``TrainConfig`` / ``load_config`` / ``apply_overrides`` / ``save_config``, ``train_vae`` (returns a
``TrainResult``), ``load_models``, ``NonFiniteLossError``, and the checkpoint helpers.
"""

from alphavae.train.checkpoint import (
    CheckpointMismatchError,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from alphavae.train.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    save_config,
    shipped_configs,
)
from alphavae.train.loop import NonFiniteLossError, TrainResult, load_models, train_vae

__all__ = [
    "CheckpointMismatchError", "DataConfig", "ModelConfig", "NonFiniteLossError", "OptimConfig", "TrainConfig",
    "TrainResult", "apply_overrides", "find_checkpoint", "list_checkpoints", "load_checkpoint", "load_config",
    "load_models", "save_checkpoint", "save_config", "shipped_configs", "train_vae",
]
