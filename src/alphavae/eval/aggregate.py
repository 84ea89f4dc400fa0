"""Aggregation of per-image scores into the benchmark tree (category -> subset -> dataset -> overall).

Macro averaging, as the AlphaVAE reference scripts do: the mean over a category's images, then the
unweighted mean over a subset's categories, over a dataset's subsets, over datasets. FID is computed
per category (the reference's per-folder FID), macro-averaged the same way, and also pooled over all
images (``fid_pooled``). Micro averages are plain means over images. The ``rgb`` group is the mean over
the 9 canonical backgrounds of every metric (FID included); the checkerboard, ``rgba`` and ``alpha``
groups are reported beside it.

A score that does not apply to an image is None (SSIM of an image under 11 px, leakage of a GT without
transparent pixels, ...): every mean skips it, like a category's None FID, so it neither counts as 0 nor
lowers the number of images elsewhere; :func:`count_unscored` tells how many images each metric lacks.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from alphavae.eval.backgrounds import BACKGROUND_NAMES
from alphavae.eval.networks import FeatureSet, feature_distance_summary

RGB_GROUP = "rgb"
"""Group name of the mean over the 9 canonical backgrounds."""

Scores = dict[str, dict[str, float | None]]
"""group -> metric -> value (None: not applicable to that image)."""


@dataclass
class ImageRecord:
    """One scored image: its key, place in the tree and scores (group -> metric -> value)."""

    key: str
    dataset: str
    subset: str
    category: str
    groups: Scores


def mean_scores(items: list[Scores]) -> Scores:
    """Unweighted mean per group and metric over ``items``; values that are None are left out;
    a metric absent (or None) everywhere is omitted."""
    sums: dict[tuple[str, str], list[float]] = defaultdict(list)
    for scores in items:
        for group, values in scores.items():
            for metric, value in values.items():
                if value is not None:
                    sums[group, metric].append(value)
    out: Scores = defaultdict(dict)
    for (group, metric), values in sums.items():
        out[group][metric] = sum(values) / len(values)
    return dict(out)


def count_unscored(records: list[ImageRecord]) -> dict[str, dict[str, int]]:
    """How many images have None (not applicable) for each group and metric; groups and metrics scored
    for every image are left out (``{}`` when nothing was skipped)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for record in records:
        for group, values in record.groups.items():
            for metric, value in values.items():
                if value is None:
                    counts[group][metric] += 1
    return {group: dict(metrics) for group, metrics in counts.items()}


def with_rgb_mean(scores: Scores) -> Scores:
    """Add the ``rgb`` group: per metric, the mean over the canonical backgrounds present in ``scores``."""
    present = [scores[name] for name in BACKGROUND_NAMES if name in scores]
    if not present:
        return scores
    return {RGB_GROUP: mean_scores([{RGB_GROUP: s} for s in present])[RGB_GROUP], **scores}


def _fid_sets(records: list[ImageRecord], features: dict[str, dict]) -> dict[tuple, dict[str, tuple[FeatureSet, FeatureSet]]]:
    """Feature sets per category (and pooled under the key ``None``): {where: {group: (gt, pred)}}."""
    sets: dict[tuple, dict[str, tuple[FeatureSet, FeatureSet]]] = defaultdict(dict)
    for record in records:
        where = (record.dataset, record.subset, record.category)
        for group, (gt, pred) in features.get(record.key, {}).items():
            for place in (where, None):
                pair = sets[place].setdefault(group, (FeatureSet(), FeatureSet()))
                pair[0].add(gt)
                pair[1].add(pred)
    return sets


def fid_with_rgb(sets: dict[str, tuple[FeatureSet, FeatureSet]]) -> dict[str, float | None]:
    """FID per group (``feature_distance_summary``) plus the ``rgb`` group: the mean over the canonical
    backgrounds whose FID could be computed."""
    fids = feature_distance_summary(sets)
    rgb = [fids[name] for name in BACKGROUND_NAMES if fids.get(name) is not None]
    if rgb:
        fids[RGB_GROUP] = sum(rgb) / len(rgb)
    return fids


def fid_notes(reference: int, generated: int) -> list[str]:
    """Report notes on a pooled FID from ``reference`` and ``generated`` images (counts per side): not computed
    below 2 images on a side; biased upward below 2,048 (the Inception feature size: the covariance estimate
    is rank-deficient), so comparable only between runs with the same counts. ``[]`` when neither applies."""
    fewest = min(reference, generated)
    if fewest < 2:
        return [f"FID is null (not computed): it needs at least 2 images on each side, got {reference} reference "
                f"and {generated} generated."]
    if fewest < 2048:
        return [f"FID from {reference} reference and {generated} generated images: below 2,048 per side it is biased "
                "upward; compare it only with runs over the same numbers of images."]
    return []


def aggregate(records: list[ImageRecord], features: dict[str, dict] | None = None) -> dict:
    """Build the report tree from per-image records.

    Every mean skips None scores (not applicable to that image), so a node's mean of a metric is over
    the images (or child nodes) that have it; a metric None for all of a node's images is absent there.

    Args:
        records: scored images.
        features: optional key -> group -> ``(gt, pred)`` Inception features ``(1, D)`` for FID.
    Returns:
        ``{"overall": {"macro": Scores, "micro": Scores, "fid_pooled": {group: fid}, "images": n},
        "datasets": {ds: {"macro": Scores, "images": n, "subsets": {ss: {"macro": Scores, "images": n,
        "categories": {cat: {"mean": Scores, "images": n}}}}}}}``; Scores include the ``rgb`` group.
        FID (only when ``features`` were given): each category's ``mean`` has a ``fid`` per feature group,
        None where a side had < 2 images (its ``rgb`` ``fid`` averages the computed backgrounds and is
        absent when none was); the ``macro`` levels average the categories' non-None values and omit
        ``fid`` where none was computed; ``micro`` has no ``fid``; ``fid_pooled`` maps each group to
        the FID over all images (None below 2 per side), plus ``rgb`` when a background's was computed,
        and is empty without features.
    """
    fid_sets = _fid_sets(records, features or {})
    tree: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for record in records:
        tree[record.dataset][record.subset][record.category].append(record)
    datasets = {}
    for ds, subsets in sorted(tree.items()):
        subset_nodes = {}
        for ss, categories in sorted(subsets.items()):
            cat_nodes = {}
            for cat, items in sorted(categories.items()):
                mean = mean_scores([r.groups for r in items])
                for group, fid in feature_distance_summary(fid_sets.get((ds, ss, cat), {})).items():
                    mean.setdefault(group, {})["fid"] = fid
                cat_nodes[cat] = {"mean": with_rgb_mean(mean), "images": len(items)}
            subset_nodes[ss] = {
                "macro": mean_scores([c["mean"] for c in cat_nodes.values()]),
                "images": sum(c["images"] for c in cat_nodes.values()),
                "categories": cat_nodes,
            }
        datasets[ds] = {
            "macro": mean_scores([s["macro"] for s in subset_nodes.values()]),
            "images": sum(s["images"] for s in subset_nodes.values()),
            "subsets": subset_nodes,
        }
    overall = {
        "macro": mean_scores([d["macro"] for d in datasets.values()]),
        "micro": with_rgb_mean(mean_scores([r.groups for r in records])),
        "fid_pooled": fid_with_rgb(fid_sets.get(None, {})),
        "images": len(records),
    }
    return {"overall": overall, "datasets": datasets}
