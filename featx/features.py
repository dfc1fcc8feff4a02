"""Cached features as one matrix: one cache, or several caches of the same images side by side.

The layer every stage that trains on caches stands on (``sweep``, ``finetune``): rows in the
first cache's order, the manifest's splits, and the spec and learned state of each cache in
column order. Mismatched caches (other images, labels or splits) are one :class:`FeatureSetError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from featx.errors import UserError

__all__ = ["SPLIT_TRAIN", "SPLIT_VAL", "SPLIT_TEST", "FeatureSet", "FeatureSetError", "load_feature_set"]

SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = "train", "val", "test"


class FeatureSetError(UserError, ValueError):
    """Caches that cannot be used together (or at all); the message says why and how to fix it."""


@dataclass
class FeatureSet:
    """Features of one or more caches of the same images, side by side."""

    name: str
    cache_paths: list[str]
    X: np.ndarray
    y: np.ndarray
    split: np.ndarray
    paths: list[str]
    label_names: list[str]
    extractors: list[dict] = field(default_factory=list)  # spec + state of each cache, in column order
    dims: list[int] = field(default_factory=list)
    sha1: list[str] = field(default_factory=list)  # content hash of each row's image ("" when unknown)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def load_feature_set(paths: Sequence[str | os.PathLike]) -> FeatureSet:
    """Read one cache, or several caches of the same images concatenated column-wise."""
    from featx.cache import open_cache

    paths = [Path(p) for p in paths]
    blocks, extractors, dims = [], [], []
    reference = None
    for path in paths:
        with open_cache(path) as cache:
            X = cache.features[:].astype(np.float32, copy=False)
            cache_paths = cache.paths
            sha1 = cache.h5["sha1"].asstr()[:].tolist() if "sha1" in cache.h5 else [""] * len(cache_paths)
            info = {"sha1": sha1, "cache": str(path), "labels": cache.labels, "split": cache.split,
                    "paths": cache_paths, "label_names": cache.label_names}
            extractors.append({"spec": cache.spec, "state": cache.state, "cache": str(path),
                               "dataset": cache.attrs.get("dataset")})
        if reference is None:
            reference = info
            order = np.arange(len(cache_paths))
        else:
            if set(cache_paths) != set(reference["paths"]):
                only_a = len(set(reference["paths"]) - set(cache_paths))
                only_b = len(set(cache_paths) - set(reference["paths"]))
                raise FeatureSetError(f"{path} and {paths[0]} are caches of different images ({only_a} only in "
                                 f"the first, {only_b} only in the second); make both from the same manifest")
            if info["label_names"] != reference["label_names"]:
                raise FeatureSetError(f"{path} has labels {info['label_names']} but {paths[0]} has "
                                 f"{reference['label_names']}; make both from the same manifest")
            position = {p: i for i, p in enumerate(cache_paths)}
            order = np.array([position[p] for p in reference["paths"]])
            if not np.array_equal(info["split"][order], reference["split"]):
                raise FeatureSetError(f"{path} and {paths[0]} split the images differently; make both from the "
                                 f"same manifest (same --seed, --val, --test)")
        blocks.append(X[order])
        dims.append(X.shape[1])
    X = blocks[0] if len(blocks) == 1 else np.hstack(blocks)
    if not np.all(np.isfinite(X)):
        bad = np.flatnonzero(~np.all(np.isfinite(X), axis=1))
        raise FeatureSetError(f"{paths[0]}: {len(bad)} row(s) hold NaN or infinite features (first: "
                         f"{reference['paths'][bad[0]]}); rebuild the cache")
    name = "+".join(_short_name(e) for e in extractors)
    return FeatureSet(name=name, cache_paths=[str(p) for p in paths], X=X, y=reference["labels"],
                      split=reference["split"], paths=reference["paths"], label_names=reference["label_names"],
                      extractors=extractors, dims=dims, sha1=reference["sha1"])


def _short_name(extractor: dict) -> str:
    spec = extractor["spec"]
    params = spec.get("params", {})
    extra = [str(params[k]) for k in ("layer", "pool") if params.get(k)]
    return ":".join([spec["name"], *extra])
