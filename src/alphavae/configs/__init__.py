"""Shipped training configs (YAML, loaded by ``alphavae.train.config.load_config`` by name)."""
