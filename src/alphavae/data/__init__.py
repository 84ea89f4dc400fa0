"""Data: RGBA folder datasets, training crops and blend augmentation, and the registry fetcher
(real permissive-licence RGBA images via npm / apt-get, manifest, deterministic splits)."""
