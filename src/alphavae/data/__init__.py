"""Data: RGBA folder datasets, training crops and blend augmentation, and the registry fetcher
(real permissive-licence RGBA images via npm / apt-get, manifest, deterministic splits).

Modules:
- :mod:`alphavae.data.datasets`: :class:`~alphavae.data.datasets.RGBADataset` (short-side resize,
  random/centre crops, blend augmentation, opaque RGB views) and the deterministic, resumable,
  shardable :class:`~alphavae.data.datasets.StepBatchSampler`.
- :mod:`alphavae.data.sources`: the registry packages holding RGBA images, with licences.
- :mod:`alphavae.data.fetch`: :func:`~alphavae.data.fetch.fetch_dataset` (download, verify, unpack,
  filter, dedupe, normalise, write ``manifest.jsonl``).
- :mod:`alphavae.data.manifest`: manifest reading/writing, alpha statistics, splits by pixel hash.
- :mod:`alphavae.data.samples`: reproducible choice of the bundled example images.
"""
