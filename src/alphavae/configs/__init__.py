"""Shipped training configs (YAML, loaded by ``alphavae.train.config.load_config`` by name)."""

from importlib import resources


def shipped_configs() -> list[str]:
    """Names of the configs shipped in this package (file names without ``.yaml``), sorted."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))
