"""Keras fine-tuning warm-started from a sweep's best head that can be fine-tuned.

``featx finetune experiments/<name>`` picks the best-ranked row that is a logreg, linsvm or dense
head on one CNN cache (:func:`choose_config`; an ensemble's best such member), fits that head on
train, rebuilds the backbone that made the cache, puts the head on top as Keras layers (scaler, PCA
and calibration folded into Dense weights; the backbone's preprocessing as a layer, so the model
takes raw RGB in [0, 255]), checks that it reproduces the head's probabilities
(:func:`check_warm_start`), then trains the unfrozen layers, resumably, into
``experiments/<name>/finetune/`` (files listed in docs/training.md).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from featx import __version__, training
from featx.artifacts import runs
from featx.backend import keras_backend, set_random_seed
from featx.datasets import ImageSet, training_batches
from featx.errors import UserError
from featx.features import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, load_feature_set
from featx.storage import locked

__all__ = ["FinetuneError", "FinetuneResult", "BaseHead", "load_base_head", "build_finetune_model", "set_trainable",
           "check_warm_start", "run_finetune", "UNFREEZE_TOP"]

BACKBONE_LAYER = "backbone"
#: Largest max |p_model - p_head| the warm start may show before training is refused (bug 3):
#: fp32 reproduces the head to ~1e-6; float16 mixed precision to ~1e-3.
WARM_START_TOLERANCE = {"fp32": 1e-3, "mixed": 5e-2}

#: Layer-name prefixes of the "top block" that ``unfreeze="top"`` trains, per extractor
#: (a backbone with none of them in its cut layers trains TOP_FALLBACK_SHARE instead).
UNFREEZE_TOP: dict[str, tuple[str, ...]] = {
    "vgg16": ("block5_",),
    "caffenet": ("conv5", "pool5", "fc6", "fc7", "fc8"),
    # The last two stages and the head convolution of EfficientNet-Lite.
    **{f"efficientnet_lite{i}": ("block6", "block7", "top_") for i in range(3)},
    **{f"keras:resnet{depth}": ("conv5_",) for depth in (50, 101)},
    "keras:densenet121": ("conv5_", "bn", "relu"),
    "keras:mobilenet_v2": ("block_15_", "block_16_", "Conv_1", "out_relu"),
    "keras:xception": ("block13", "block14"),
    "keras:inception_v3": ("mixed9", "mixed10"),
    **{f"keras:efficientnet_b{i}": ("block6", "block7", "top_") for i in range(8)},
    **{f"keras:efficientnetv2_{v}": ("block6", "top_") for v in ("b0", "b1", "b2", "b3", "s")},
    **{f"keras:convnext_{v}": ("convnext_{}_stage_3".format(v), "convnext_{}_head".format(v), "backbone_output")
       for v in ("tiny", "small", "base")},
}
#: For backbones without a named top block: "top" trains this share of the last layers with weights.
TOP_FALLBACK_SHARE = 0.2


class FinetuneError(UserError, ValueError):
    """The experiment cannot be fine-tuned as asked; the message says why and how to fix it."""


def preprocessing_layer(extractor, name: str = "preprocess"):
    """A ``ChannelAffine`` layer equal to ``extractor.preprocess``, a per-channel affine map (reordering, mean,
    scale): black and pure-channel images give its offset and 3x3 matrix, random images check it."""
    height, width = extractor.preprocessing["size"]
    probes = np.zeros((4, height, width, 3), dtype=np.float32)
    for channel in range(3):
        probes[channel + 1, ..., channel] = 255.0
    out = np.asarray(extractor.preprocess(probes.copy()), dtype=np.float64)
    offset = out[0, 0, 0]
    matrix = (out[1:, 0, 0] - offset) / 255.0  # row c: response to input channel c
    sample = np.random.default_rng(0).uniform(0, 255, (2, height, width, 3)).astype(np.float32)
    expected = np.asarray(extractor.preprocess(sample.copy()), dtype=np.float64)
    got = sample.astype(np.float64) @ matrix + offset
    if not np.allclose(got, expected, atol=1e-3 * max(1.0, float(np.abs(expected).max()))):
        raise FinetuneError(f"{extractor.name}'s preprocess is not a per-channel affine map of the pixels; "
                            "it cannot be expressed as featx's ChannelAffine layer")
    return training.custom_objects()["ChannelAffine"](matrix, offset, name=name)


#: Heads that can be written as Dense layers on a backbone (an RBF SVM cannot; an ensemble is several models).
FINETUNABLE_HEADS = ("logreg", "linsvm", "dense")


@dataclass
class BaseHead:
    """A fitted sweep head with everything needed to put it on its backbone.

    ``note`` says, in one line, why the fine-tune starts from another row than the sweep's best
    (empty when it starts from the best, or from the ``--config`` asked for).
    """

    model: Any  # Pipeline of pre_* steps then head, fitted on integer labels
    extractor_spec: dict  # of the backbone that made the cache (name, params, weights_sha256, ...)
    cache_path: str
    label_names: list
    row: dict  # the sweep's results row of this configuration
    seed: int
    sweep_id: str = ""  # of the sweep (results.json); empty for a sweep written before sweep ids
    note: str = ""

    @property
    def head_name(self) -> str:
        return self.row["head"]


def _row_words(row: dict) -> str:
    """``config 3 (logreg {"head__C": 1.0} on hog, rank 2)``."""
    return f"config {row['config']} ({row['head']} {row['params']} on {row['features']}, rank {row.get('rank', '?')})"


def _ensemble_members(row: dict) -> list[int]:
    """The member configs of an ensemble row, as its ``params`` list them (``{"members": [{"config": i}]}``)."""
    try:
        members = json.loads(row["params"]).get("members", [])
        return [int(member["config"]) for member in members]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


def _flag(value) -> bool | None:
    """A ``finetunable`` cell: a bool in results.json, text in a CSV; None when the row predates it."""
    if isinstance(value, bool) or value is None:
        return value
    text = str(value).strip().lower()
    return {"true": True, "1": True, "false": False, "0": False}.get(text)


def why_not_finetunable(row: dict, experiment_dir: str | os.PathLike) -> str | None:
    """Why a sweep row cannot be fine-tuned (a phrase), or None when it can: one CNN cache under a
    logreg, linsvm or dense head. Rows written before the ``finetunable`` column are checked from
    their cache's extractor spec."""
    caches = [c for c in str(row.get("caches") or "").split("+") if c]
    if row["head"] == "ensemble":
        return f"an ensemble of {len(_ensemble_members(row)) or 'several'} models"
    if len(caches) > 1:
        return f"a concatenation of {len(caches)} caches ({row['features']})"
    if row["head"] == "rbfsvm":
        return "an RBF-kernel SVM (no Dense-layer form)"
    if row["head"] not in FINETUNABLE_HEADS:
        return f"a {row['head']} head (no Dense-layer form)"
    finetunable = _flag(row.get("finetunable"))
    if finetunable is None:
        try:
            finetunable = _is_cnn(_cache_spec(caches[0], Path(experiment_dir)))
        except FinetuneError:  # its cache is gone: it cannot be fine-tuned, another row may
            return f"a head on {row['features']} whose cache {caches[0]} is not here"
    if not finetunable:
        return f"a head on {row['features']} features (not from a neural network)"
    return None


def _cache_spec(cache_path: str, experiment_dir: Path) -> dict:
    from featx.cache import open_cache

    with open_cache(_find_cache(cache_path, experiment_dir)) as cache:
        return cache.spec


def _is_cnn(spec: dict) -> bool:
    from featx.extractors import get_extractor
    from featx.extractors.keras_base import KerasExtractor

    return isinstance(get_extractor(spec["name"], **_extractor_options(spec)), KerasExtractor)


def choose_config(summary, experiment_dir: str | os.PathLike, config: int | None = None) -> tuple[dict, str]:
    """The results row to fine-tune and a one-line note when it is not the sweep's best.

    Without ``config``: the best row when it can be fine-tuned; for an ensemble, its best-ranked member
    that can; else the best-ranked row that can. With ``config``: that row, or a :class:`FinetuneError`
    naming the best row that can be fine-tuned instead.
    """
    experiment_dir = Path(experiment_dir)
    rows = {int(row["config"]): row for row in summary.rows}
    ranked = sorted(rows.values(), key=lambda r: (float(r.get("rank", math.inf)), int(r["config"])))
    reasons: dict[int, str | None] = {}

    def reason(row: dict) -> str | None:
        if int(row["config"]) not in reasons:
            reasons[int(row["config"])] = why_not_finetunable(row, experiment_dir)
        return reasons[int(row["config"])]

    def first_usable(candidates) -> dict | None:
        return next((row for row in candidates if reason(row) is None), None)

    results_path = experiment_dir / "results.json"
    if config is not None:
        if int(config) not in rows:
            raise FinetuneError(f"--config {config} is not a configuration of {results_path}; expected one of "
                                f"{sorted(rows)} (the config column of results.csv)")
        row = rows[int(config)]
        if reason(row) is None:
            return row, ""
        usable = first_usable(ranked)
        hint = (f"; the best-ranked config that can be fine-tuned is {_row_words(usable)}: pass --config "
                f"{usable['config']}" if usable else
                "; no config of this sweep can: sweep a CNN cache alone with --heads logreg,linsvm,dense")
        raise FinetuneError(f"config {config} is {reason(row)}; only a logreg, linsvm or dense head on one CNN "
                            f"cache can be fine-tuned{hint}")
    best = rows.get(int(summary.best["config"]), ranked[0])
    if reason(best) is None:
        return best, ""
    members = [rows[i] for i in _ensemble_members(best) if i in rows]
    member = first_usable(sorted(members, key=ranked.index))
    usable = member or first_usable(ranked)
    if usable is None:
        raise FinetuneError(f"no config of {results_path} can be fine-tuned (the best, config {best['config']}, "
                            f"is {reason(best)}); fine-tuning needs a logreg, linsvm or dense head on one CNN "
                            "cache: sweep such a cache alone with --heads logreg,linsvm,dense")
    how = ("starting from its best single member" if member is not None else
           "starting from the best-ranked config that can" + (" (none of its members can)" if members else ""))
    return usable, (f"the sweep's best, config {best['config']}, is {reason(best)}, which cannot be fine-tuned; "
                    f"{how}: {_row_words(usable)}")


def load_base_head(experiment_dir: str | os.PathLike, config: int | None = None) -> BaseHead:
    """The head to fine-tune (see :func:`choose_config`), fitted on the cache's train split.

    The head is fitted on train alone, with the sweep's seed (the sweep's saved model, refit on train +
    val, is used only when it was fitted on train too): fine-tuning picks its best epoch on val, and
    the warm start it starts from must not have seen val either.

    Raises
    ------
    featx.artifacts.ArtifactError
        ``best.joblib`` or ``results.json`` missing, damaged or from a newer featx.
    FinetuneError
        An unknown config, or one that cannot be fine-tuned (with the config that can).
    """
    from featx.artifacts.results import SweepBundle, SweepSummary

    experiment_dir = Path(experiment_dir)
    summary = SweepSummary.read(experiment_dir / "results.json")
    bundle = SweepBundle.read(experiment_dir / "best.joblib")
    row, note = choose_config(summary, experiment_dir, config)
    seed = int(summary.seed)
    bundle_config = bundle.config if getattr(bundle, "config", None) is not None else summary.best["config"]
    if (int(bundle_config) == int(row["config"]) and getattr(bundle, "refit", "train") == "train"
            and len(bundle.extractors) == 1):
        model, extractors = bundle.model, bundle.extractors
    else:
        model, extractors = _fit_config(row, seed, experiment_dir)
    spec = extractors[0]["spec"]
    if not _is_cnn(spec):  # the row said it was finetunable; its cache says otherwise
        raise FinetuneError(f"config {row['config']} uses {spec['name']} features, which come from no neural "
                            "network; fine-tuning needs a CNN backbone (vgg16, caffenet, efficientnet_lite*, "
                            "keras:*): pick such a config with --config N")
    return BaseHead(model=model, extractor_spec=spec, cache_path=_find_cache(extractors[0]["cache"], experiment_dir),
                    label_names=list(bundle.label_names), row=row, seed=seed,
                    sweep_id=str(getattr(summary, "sweep_id", "") or ""), note=note)


def _find_cache(cache_path: str, experiment_dir: Path) -> str:
    """The cache file, also when the sweep recorded it relative to another working folder
    (``cache/x.h5`` is found again beside ``experiments/``, the project folder)."""
    from featx.artifacts.runs import cache_candidates

    candidates = cache_candidates(cache_path, experiment_dir)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise FinetuneError(f"the sweep's cache {cache_path} was not found (looked at "
                        f"{', '.join(str(c) for c in candidates)}); run featx finetune from the folder where "
                        "featx sweep ran, or rebuild the cache there")


def _fit_config(row: dict, seed: int, experiment_dir: Path):
    """Fit one results row on its cache's train split with the sweep's seed (val stays unseen)."""
    from featx.heads import make_head

    feature_set = load_feature_set([_find_cache(path, experiment_dir) for path in row["caches"].split("+")])
    model = make_head(row["head"], [s for s in str(row["preprocessing"]).split(",") if s], random_state=seed)
    model.set_params(**json.loads(row["params"]))
    train = feature_set.rows(SPLIT_TRAIN)
    model.fit(feature_set.X[train], feature_set.y[train])
    return model, feature_set.extractors


def _extractor_options(spec: dict) -> dict:
    """Constructor options from a cache spec (precision is part of params)."""
    options = dict(spec.get("params", {}))
    if spec["name"].startswith("keras:"):
        options.pop("application", None)
    return options


def make_extractor(spec: dict, precision: str):
    """Rebuild the cache's extractor from its spec, checking the weights are the same file."""
    from featx.extractors import get_extractor

    extractor = get_extractor(spec["name"], **dict(_extractor_options(spec), precision=precision))
    wanted = spec.get("weights_sha256")
    if wanted and extractor.weights_fingerprint() != wanted:
        raise FinetuneError(f"the weights of {spec['name']} ({spec['params'].get('weights')}) are not those the "
                            f"cache was made with (sha256 {wanted[:12]}..., now "
                            f"{str(extractor.weights_fingerprint())[:12]}...); restore that file or rebuild the cache "
                            "and sweep again")
    return extractor


def _fold_affine(steps: list, weights: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold affine preprocessing steps (applied in order) into a Dense layer ``x @ W + b``."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    W, b = np.asarray(weights, np.float64), np.asarray(bias, np.float64)
    for step in reversed(steps):
        if isinstance(step, StandardScaler):
            mean = step.mean_ if step.with_mean and step.mean_ is not None else np.zeros(W.shape[0])
            scale = step.scale_ if step.with_std and step.scale_ is not None else np.ones(W.shape[0])
            b = b - (mean / scale) @ W
            W = W / scale[:, None]
        elif isinstance(step, PCA):
            projection = step.components_.T.astype(np.float64)  # (D, k)
            if step.whiten:
                projection = projection / np.sqrt(step.explained_variance_)
            W = projection @ W
            b = b - step.mean_.astype(np.float64) @ W
        else:  # pragma: no cover - guarded by _head_layers
            raise FinetuneError(f"cannot fold {type(step).__name__}")
    return W, b


def _linear_head_weights(head) -> tuple[np.ndarray, np.ndarray, str]:
    """(W of shape (D, units), b, output kind) of a linear head; kind: softmax | sigmoid2 | ovr_sigmoid."""
    from sklearn.linear_model import LogisticRegression

    from featx.heads import LinearSVMClassifier

    if not isinstance(head, (LogisticRegression, LinearSVMClassifier)):
        raise FinetuneError(f"cannot express a {type(head).__name__} head as Dense layers")
    binary = len(head.classes_) == 2
    W, b = head.coef_.T.astype(np.float64), np.asarray(head.intercept_, np.float64)
    if isinstance(head, LogisticRegression):
        return W, b, "sigmoid2" if binary else "softmax"
    # ensemble=False: one calibrated classifier; p_k = sigmoid(-(a_k * f_k + b_k)), f = x @ coef.T + intercept.
    calibrators = head.calibrated_.calibrated_classifiers_[0].calibrators
    if not all(hasattr(c, "a_") and hasattr(c, "b_") for c in calibrators):
        raise FinetuneError("only a sigmoid-calibrated linear SVM can be written as a Dense layer; "
                            f"got calibrators {[type(c).__name__ for c in calibrators]}")
    slope = -np.array([c.a_ for c in calibrators], dtype=np.float64)
    shift = -np.array([c.b_ for c in calibrators], dtype=np.float64)
    return W * slope, b * slope + shift, "sigmoid2" if binary else "ovr_sigmoid"


def _head_layers(pipeline, n_features: int, dtype_policy=None):
    """Keras layers equal to a fitted head pipeline, in order; the last gives K float32 probabilities."""
    import keras
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import Normalizer, StandardScaler

    from featx.heads import KerasDenseClassifier

    featx_layers = training.custom_objects()
    steps = [step for name, step in pipeline.steps[:-1] if step is not None and step != "passthrough"]
    head = pipeline.steps[-1][1]
    if not np.array_equal(np.asarray(head.classes_), np.arange(len(head.classes_))):
        raise FinetuneError(f"the head was fitted on labels {list(head.classes_)}, expected class indices "
                            f"0..K-1 as featx sweep fits them")
    layers: list = []
    pending: list = []  # affine steps not yet written as a layer
    for step in steps:
        if isinstance(step, (StandardScaler, PCA)):
            pending.append(step)
        elif isinstance(step, Normalizer) and step.norm == "l2":
            if pending:  # affine steps before the normalisation: their own Dense layer
                width = pending[-1].n_components_ if isinstance(pending[-1], PCA) else pending[-1].n_features_in_
                if n_features * width > 50_000_000:
                    raise FinetuneError(f"preprocessing {[type(s).__name__ for s in steps]} needs a "
                                        f"{n_features}x{width} Dense layer; sweep with 'l2' first instead")
                W, b = _fold_affine(pending, np.eye(width), np.zeros(width))
                layers.append(_dense(W, b, None, "head_preprocess", dtype_policy))
                pending = []
            layers.append(featx_layers["L2Normalize"](name="head_l2", dtype=dtype_policy))
        else:
            raise FinetuneError(f"preprocessing step {type(step).__name__} ({step}) cannot be written as Keras "
                                "layers; fine-tune a config whose preprocessing is standard, l2 or pca:N")

    if isinstance(head, KerasDenseClassifier):
        dense_layers = [layer for layer in head.model_.layers if isinstance(layer, keras.layers.Dense)]
        for source in head.model_.layers:
            if isinstance(source, keras.layers.Dropout):
                layers.append(keras.layers.Dropout(source.rate, name=f"head_{source.name}", dtype=dtype_policy))
            elif isinstance(source, keras.layers.Dense):
                W, b = (np.asarray(v, np.float64) for v in source.get_weights())
                if source is dense_layers[0]:
                    W, b = _fold_affine(pending, W, b)
                layers.append(_dense(W, b, source.get_config()["activation"], f"head_{source.name}",
                                     "float32" if source is dense_layers[-1] else dtype_policy))
        if len(head.classes_) == 2:
            layers.append(featx_layers["TwoColumnProbabilities"](name="head_probabilities", dtype="float32"))
        return layers

    W, b, kind = _linear_head_weights(head)
    W, b = _fold_affine(pending, W, b)
    layers.append(_dense(W, b, "softmax" if kind == "softmax" else "sigmoid", "head_output", "float32"))
    if kind != "softmax":
        to_probabilities = featx_layers["TwoColumnProbabilities" if kind == "sigmoid2" else "NormalizeRows"]
        layers.append(to_probabilities(name="head_probabilities", dtype="float32"))
    return layers


def _dense(W, b, activation, name, dtype):
    import keras

    layer = keras.layers.Dense(W.shape[1], activation=activation, name=name, dtype=dtype)
    layer.build((None, W.shape[0]))
    layer.set_weights([W.astype(np.float32), b.astype(np.float32)])
    return layer


def build_finetune_model(base: BaseHead, extractor, augment: bool = False, seed: int = 0):
    """Backbone + the base head as one Keras model: float RGB in [0, 255] in, K probabilities out; the cut
    backbone (its pooling included) is the nested model ``backbone``.

    Parameters
    ----------
    extractor : KerasExtractor
        The backbone's extractor (:func:`make_extractor` of ``base.extractor_spec``). An ``fp16`` one builds
        the backbone and the head's hidden layers in ``mixed_float16`` (GPU); outputs stay float32.
    augment : bool
        Put the augmentation layers (training only, seeded by ``seed``) after the input.
    """
    import keras

    height, width = extractor.preprocessing["size"]
    backbone = keras.Model(extractor.model.inputs[0], extractor.model.outputs[0], name=BACKBONE_LAYER)
    n_features = int(np.prod(backbone.output_shape[1:]))
    if n_features != base.model.n_features_in_:
        raise FinetuneError(f"the backbone gives {n_features} features but the head expects "
                            f"{base.model.n_features_in_}; the cache and the extractor spec disagree")
    inputs = keras.Input(shape=(height, width, 3), name="image")
    x = training.augmentation(seed, rotation=0.05, zoom=0.1, translation=0.1)(inputs) if augment else inputs
    x = preprocessing_layer(extractor)(x)
    # training=False: batch normalisation in inference mode even for unfrozen layers (the recipe for
    # fine-tuning a pretrained network on a small dataset).
    x = backbone(x, training=False)
    for layer in _head_layers(base.model, n_features, "mixed_float16" if extractor.precision == "fp16" else None):
        x = layer(x)
    name = "featx_finetune_" + "".join(c if c.isalnum() else "_" for c in base.extractor_spec["name"])
    return keras.Model(inputs, x, name=name)


def set_trainable(model, unfreeze: str | int, extractor_name: str) -> list[str]:
    """Unfreeze part of the backbone (the head stays trainable, batch norm frozen); returns the names of
    the backbone layers that train.

    Parameters
    ----------
    unfreeze : "top", "all", "none", int or numeric str
        ``top``: the backbone's top block (:data:`UNFREEZE_TOP` of ``extractor_name``; for backbones not
        listed, the last :data:`TOP_FALLBACK_SHARE` of its layers with weights); ``N``: the last N layers
        with weights; ``all``: every layer; ``none``: only the head trains.
    """
    import keras

    backbone = model.get_layer(BACKBONE_LAYER)
    candidates = [layer for layer in backbone.layers if layer.weights]
    if isinstance(unfreeze, str) and unfreeze.strip().isdigit():
        unfreeze = int(unfreeze)
    if isinstance(unfreeze, int) and not isinstance(unfreeze, bool):
        if unfreeze < 0:
            raise FinetuneError(f"unfreeze must count layers (>= 0); got {unfreeze}")
        chosen = candidates[len(candidates) - unfreeze:] if unfreeze else []
    elif unfreeze == "all":
        chosen = candidates
    elif unfreeze == "none":
        chosen = []
    elif unfreeze == "top":
        prefixes = UNFREEZE_TOP.get(extractor_name)
        chosen = [layer for layer in candidates if prefixes and layer.name.startswith(prefixes)]
        if not chosen:
            chosen = candidates[-max(1, math.ceil(TOP_FALLBACK_SHARE * len(candidates))):]
    else:
        raise FinetuneError(f"unfreeze must be 'top', 'all', 'none' or a number of layers; got {unfreeze!r}")
    chosen_ids = {id(layer) for layer in chosen}
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = id(layer) in chosen_ids and not isinstance(layer, keras.layers.BatchNormalization)
    return [layer.name for layer in backbone.layers if layer.trainable and layer.weights]


@dataclass
class ImageSplits:
    """The cache's images: absolute paths, integer labels and split of each row."""

    root: Path
    paths: list
    labels: np.ndarray
    split: np.ndarray

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def image_set(self, rows: np.ndarray, preprocessing: dict, workers: int = 4) -> ImageSet:
        """The images of ``rows``, decoded as the extractor did (:mod:`featx.datasets`)."""
        return ImageSet(str(self.root), [os.path.relpath(self.paths[i], self.root) for i in rows], self.labels[rows],
                        preprocessing, workers)


def read_image_splits(cache_path: str | os.PathLike) -> ImageSplits:
    """Where the cached images are, with their labels and splits (from the cache's own records)."""
    from featx.cache import open_cache

    with open_cache(cache_path) as cache:
        root = Path(str(cache.attrs.get("root") or ""))
        paths, labels, split = cache.paths, cache.labels, cache.split
    if not root.is_dir():
        raise FinetuneError(f"the images of {cache_path} were under {root}, which is not a folder here; "
                            "fine-tuning reads the images again: put them back there or rebuild the cache")
    missing = [p for p in paths[:50] if not (root / p).is_file()]
    if missing:
        raise FinetuneError(f"{root / missing[0]} (an image of {cache_path}) does not exist; fine-tuning reads "
                            "the images again: restore them or rebuild the cache from where they are now")
    return ImageSplits(root, [str(root / p) for p in paths], np.asarray(labels), np.asarray(split))


def check_warm_start(model, base: BaseHead, n_images: int = 32, split: str = SPLIT_VAL) -> float:
    """``max |p_model - p_head|`` (about 1e-6 in fp32) on ``n_images`` cached images of ``split`` (train
    when that split is empty): the model on the decoded images against the head on their cached features."""
    from featx.cache import open_cache

    splits = read_image_splits(base.cache_path)
    rows = splits.rows(split)
    rows = (rows if len(rows) else splits.rows(SPLIT_TRAIN))[:n_images]  # ascending, as h5py reads them
    with open_cache(base.cache_path) as cache:
        features = cache.features[rows].astype(np.float32)
    expected = base.model.predict_proba(features)
    images, kept = splits.image_set(rows, base.extractor_spec["preprocessing"]).pixels(np.arange(len(rows)))
    got = np.asarray(model.predict(images.astype(np.float32), batch_size=16, verbose=0), dtype=np.float64)
    return float(np.max(np.abs(got - expected[kept])))


@dataclass
class FinetuneResult:
    """What :func:`run_finetune` did."""

    out_dir: Path
    row: dict
    history: list
    epochs_run: int  # by this call (a resumed run counts only the epochs it added)
    warm_start_difference: float
    val_before: dict
    val_after: dict
    seconds: float
    trainable_layers: list
    state: runs.RunState | None = None  # epochs in all, the kept one, where it was resumed
    note: str = ""  # why the run starts from another config than the sweep's best (BaseHead.note)

    def epochs_text(self) -> str:
        """``kept epoch 2 of 3; resumed at 2``, the warm start named when it is the one kept."""
        return self.state.epochs_text(warm_start=True) if self.state else f"{self.epochs_run} epochs"


#: The settings that must match for a fine-tune folder to be resumed.
RESUME_KEYS = ("config", "unfreeze", "augment", "optimizer", "learning_rate", "batch_size", "monitor", "backbone")


def built_from(base: BaseHead) -> dict:
    """The sweep configuration and cache (its file name holds the extractor-spec and manifest hashes) a
    fine-tune folder is built from, and the sweep's id: a resume with any of these changed would continue
    another model, and ``featx report`` marks a folder built from another sweep stale."""
    origin = {"config": int(base.row["config"]), "head": base.row["head"], "params": base.row["params"],
              "preprocessing": base.row["preprocessing"], "cache": Path(base.cache_path).name}
    return {**origin, "sweep_id": base.sweep_id} if base.sweep_id else origin


def _describe(origin: dict) -> str:
    sweep = f" of sweep {origin['sweep_id']}" if origin.get("sweep_id") else ""
    return f"config {origin['config']}{sweep} ({origin['head']} {origin['params']}) on {origin['cache']}"


def run_finetune(experiment_dir: str | os.PathLike, unfreeze: str | int = "top", epochs: int = 5,
                 augment: bool = True, learning_rate: float = 1e-4, optimizer: str = "adam",
                 batch_size: int = 32, config: int | None = None, patience: int | None = 3, seed: int = 0,
                 monitor: str = "val_loss", restart: bool = False, mixed_precision: str = "auto",
                 workers: int = 4, n_boot: int = 1000, verbose: int = 0,
                 allow_warm_start_gap: bool = False, report: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune the backbone with the sweep's head on top; write ``experiment_dir/finetune/``.

    Parameters
    ----------
    unfreeze : "top", "all", "none" or int
        Backbone layers that train (see :func:`set_trainable`); batch norm never does.
    epochs : int
        Total epochs (a resumed run counts the ones already done).
    learning_rate : float
        Peak learning rate; cosine decay to 0 over ``epochs``.
    batch_size : int
        Global batch (split over GPUs under MirroredStrategy).
    config : int, optional
        Start from this configuration of the sweep (``config`` column of ``results.csv``); by default the
        best one that can be fine-tuned (:func:`choose_config`). Its head is fitted on train.
    patience : int or None
        Early stopping on ``monitor`` (the validation metric that picks the best weights); None: never.
    restart : bool
        Start from the sweep's head again; without it, a run built from another head is refused.
    mixed_precision : {"auto", "on", "off"}
        ``auto``: mixed float16 when a GPU is visible.
    allow_warm_start_gap : bool
        Train even when the model does not reproduce the head's probabilities before training
        (the gap exceeds :data:`WARM_START_TOLERANCE`); the gap is recorded either way.
    report : callable, optional
        Gets, before any training, the line saying why the run starts from another config than the
        sweep's best (when it does).
    """
    import keras

    from featx.backend import gpu_count, training_strategy
    from featx.heads import OPTIMIZERS, make_optimizer

    started = time.perf_counter()
    if optimizer not in OPTIMIZERS:
        raise FinetuneError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    if monitor not in training.MONITORS:
        raise FinetuneError(f"monitor must be one of {', '.join(training.MONITORS)}; got {monitor!r}")
    if int(epochs) < 0 or int(batch_size) < 1 or not float(learning_rate) > 0:
        raise FinetuneError(f"epochs must be >= 0, batch size >= 1 and learning rate > 0; got epochs={epochs}, "
                            f"batch_size={batch_size}, learning_rate={learning_rate}")
    if mixed_precision not in ("auto", "on", "off"):
        raise FinetuneError(f"mixed_precision must be auto, on or off; got {mixed_precision!r}")

    base = load_base_head(experiment_dir, config)
    splits = read_image_splits(base.cache_path)
    train, val = splits.rows(SPLIT_TRAIN), splits.rows(SPLIT_VAL)
    if len(train) == 0 or len(val) == 0:
        raise FinetuneError(f"{base.cache_path} has {len(train)} train and {len(val)} val images; fine-tuning "
                            "needs both (val picks the best epoch): index with --val 0.1 and rebuild the cache")
    out_dir = Path(experiment_dir) / runs.FINETUNE
    with locked(out_dir, what=f"{out_dir} (featx finetune)"):
        settings = {"config": int(base.row["config"]), "unfreeze": str(unfreeze), "augment": bool(augment),
                    "optimizer": optimizer, "learning_rate": float(learning_rate), "batch_size": int(batch_size),
                    "monitor": monitor, "backbone": base.extractor_spec["name"], "epochs": int(epochs),
                    "patience": patience, "seed": int(seed)}
        run = training.TrainingRun(out_dir, monitor, built_from(base), settings, RESUME_KEYS, _describe, FinetuneError)
        state = run.open(restart=restart)
        if base.note and report is not None:  # once the folder is ours: a refusal stays one line
            report(base.note)

        set_random_seed(int(seed))
        n_gpus = gpu_count()
        use_mixed = mixed_precision == "on" or (mixed_precision == "auto" and n_gpus > 0)
        extractor = make_extractor(base.extractor_spec, precision="fp16" if use_mixed else "fp32")
        preprocessing = extractor.preprocessing
        with training_strategy(n_gpus, report):  # MirroredStrategy over several GPUs on TensorFlow
            model = build_finetune_model(base, extractor, augment=augment, seed=seed)
            trainable = set_trainable(model, unfreeze, base.extractor_spec["name"])
            steps = max(1, int(epochs) * math.ceil(len(train) / int(batch_size)))
            schedule = keras.optimizers.schedules.CosineDecay(float(learning_rate), decay_steps=steps)
            training_optimizer = make_optimizer(optimizer, schedule)
            if use_mixed:  # float16 gradients need loss scaling
                training_optimizer = keras.optimizers.LossScaleOptimizer(training_optimizer)
            training.compile_classifier(model, training_optimizer)

        train_data = training_batches(splits.image_set(train, preprocessing, workers), batch_size, True, seed)
        val_data = training_batches(splits.image_set(val, preprocessing, workers), batch_size)
        if state is None:
            # Epoch 0: the warm start, before any training step (the value to beat, and the first best weights).
            difference = check_warm_start(model, base)
            tolerance = WARM_START_TOLERANCE["mixed" if use_mixed else "fp32"]
            if not difference <= tolerance and not allow_warm_start_gap:
                raise FinetuneError(f"the fine-tune model does not reproduce the sweep's head before training: max "
                                    f"|p_model - p_head| = {difference:.3g} on cached {SPLIT_VAL} images (tolerance "
                                    f"{tolerance:g}); the cache {Path(base.cache_path).name} no longer matches the "
                                    f"backbone (other weights or preprocessing?): rebuild the cache and sweep again, "
                                    f"or pass --allow-warm-start-gap to train anyway")
            values = model.evaluate(val_data, verbose=0, return_dict=True)
            val_before = {"val_loss": float(values["loss"]), "val_accuracy": float(values["accuracy"])}
            state = run.begin(model, dict(val_before, learning_rate=float(learning_rate)),
                              warm_start_difference=difference, warm_start_tolerance=tolerance, val_before=val_before,
                              trainable_layers=trainable)
        state.settings = settings
        if state.note_resume(epochs) and state.resumed_at:
            state.write(run.state_path)  # before training: a kill during it still counts this resume
        epochs_run, train_seconds = run.fit(model, train_data, val_data, epochs, patience, verbose=verbose)
        result = _write_outputs(model, base, splits, preprocessing, run.state, run.history, out_dir, train_seconds,
                                epochs_run, n_boot, started, workers)
    _write_ir(out_dir / "model.keras", model, report)
    return result


def _write_ir(keras_file: Path, model, report: Callable[[str], None] | None) -> None:
    """The saved model's OpenVINO IR (:mod:`featx.runtime.ir`), so featx predict runs it without TensorFlow."""
    from featx.errors import RuntimeUnavailable
    from featx.runtime.ir import write_keras_file_ir

    try:
        write_keras_file_ir(keras_file, model)
    except RuntimeUnavailable:  # openvino is not installed: featx predict runs the model in Keras
        pass
    except Exception as exc:  # the fine-tune is saved either way; one line says what predict will do
        if report is not None:
            report(f"no OpenVINO IR for {keras_file} ({type(exc).__name__}: {exc}); featx predict will try to "
                   f"convert it again, or run it in Keras with --runtime keras")


def _write_outputs(model, base: BaseHead, splits: ImageSplits, preprocessing: dict, state: runs.RunState,
                   history: training.History, out_dir: Path, train_seconds: float, epochs_run: int, n_boot: int,
                   started: float, workers: int) -> FinetuneResult:
    """model.keras, model.json, results.csv, predictions.npz and curves.png from the best weights."""
    settings, details = state.settings, state.details
    params = {"base_head": base.head_name, "base_params": json.loads(base.row["params"]),
              **{k: settings[k] for k in ("unfreeze", "augment", "optimizer", "learning_rate", "batch_size", "epochs",
                                          "monitor")}, "best_epoch": state.best_epoch,
              "epochs_done": state.epochs_done}
    rows = history.as_list()
    row = training.score_and_write(
        out_dir, model, *(splits.image_set(splits.rows(s), preprocessing, workers) for s in (SPLIT_VAL, SPLIT_TEST)),
        base.label_names, rows, n_boot, base.seed, f"{base.extractor_spec['name']} fine-tune",
        # val picked the kept epoch: its val figures are not comparable with a sweep's selection scores
        selected_by="val-epoch",
        config=int(base.row["config"]), features=f"{base.extractor_spec['name']}+finetune", head="finetune",
        params=json.dumps(params, sort_keys=True), preprocessing=base.row["preprocessing"],
        fit_seconds=train_seconds, n_train=len(splits.rows(SPLIT_TRAIN)), caches=base.cache_path)
    runs.ModelCard(label_names=base.label_names, input_size=[int(side) for side in preprocessing["size"]],
                   preprocessing=preprocessing, best_epoch=state.best_epoch, featx_version=__version__,
                   keras_backend=keras_backend(),
                   details={"backbone": base.extractor_spec, "base_config": base.row, "finetune": settings,
                            "sweep_id": base.sweep_id, "note": base.note,
                            "warm_start_difference": details["warm_start_difference"]}).write(out_dir / "model.json")
    return FinetuneResult(out_dir=out_dir, row=row, history=rows, epochs_run=epochs_run,
                          warm_start_difference=float(details["warm_start_difference"]),
                          val_before=details["val_before"],
                          # the kept epoch's Keras validation values, measured as val_before was
                          val_after={k: history.rows[state.best_epoch][k] for k in ("val_loss", "val_accuracy")},
                          seconds=time.perf_counter() - started, trainable_layers=details["trainable_layers"],
                          state=state, note=base.note)
