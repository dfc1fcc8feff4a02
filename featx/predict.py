"""Saved model -> predictions: Kaggle submissions, and evaluation on a labelled folder.

:func:`load_model` opens either kind of saved model: a sweep's ``best.joblib`` (:class:`SweepModel`,
whose features of new images go into ``<cache_dir>/scored/``, so a second run on the same folder reuses
them) or a ``finetune/`` folder (:class:`FineTunedModel`). Only load models you trust:
``best.joblib`` is a pickle.

Every image file of a scored folder gets a row: one that cannot be read gets the model's class prior
and is flagged (``Predictions.imputed``), so a submission has every id Kaggle expects while
:func:`evaluate` counts only images the model actually saw. Scored folders are indexed with every
image in split ``unlabeled`` (labels kept) and cached under ``scored/``, so a scored folder's cache
never looks like, or is globbed as, a training cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from featx.artifacts.results import SweepBundle
from featx.cache import state_sha256
from featx.data import Manifest, label_for, load_dataset
from featx.errors import UserError
from featx.numpy_head import NumpyHead
from featx.storage import atomic_write_csv
from featx.extractors.base import Extractor

__all__ = ["ModelError", "Predictions", "SweepModel", "FineTunedModel", "load_model", "predict", "evaluate",
           "write_submission", "check_submission_options", "check_clip", "clip_probabilities", "scoring_manifest",
           "state_sha256", "SWEEP_MODEL_FILE", "FINETUNE_MODEL_FILE", "FINETUNE_INFO_FILE", "SCORED_CACHE_FOLDER",
           "DEFAULT_CLIP"]

SWEEP_MODEL_FILE = "best.joblib"
FINETUNE_MODEL_FILE = "model.keras"
FINETUNE_INFO_FILE = "model.json"
# Features of scored folders go to this sub-folder of the cache folder: `ls cache/*.h5` (the README's way of
# naming training caches) never matches them, so a holdout cannot be swept by mistake.
SCORED_CACHE_FOLDER = "scored"
# Clipping at 1e-15 changes no probability a float64 can tell from 0 or 1 in a log: no effective clipping.
DEFAULT_CLIP = 1e-15

# Cached feature rows read and classified at a time: bounds memory to this many rows of the
# concatenated features, whatever the number of images.
_ROWS_PER_CHUNK = 4096


class ModelError(UserError):
    """A saved model cannot be loaded or used as asked; the message says why and how to fix it."""


@dataclass
class Predictions:
    """Class probabilities of every image of a folder, unreadable ones included.

    ``proba[i, j]`` is the probability that ``paths[i]`` (relative to ``root``, in the folder's index
    order, images that could not be indexed last) is ``label_names[j]``. ``labels`` holds each image's
    label under the folder's layout (None when unlabeled). ``failed`` lists the ``(path, reason)`` of
    images that could not be read: their rows hold the model's ``prior`` and are True in ``imputed``
    (the model never saw them; :func:`evaluate` leaves them out). ``caches`` is what feature
    extraction did (a ``CacheResult`` per extractor; none for a fine-tuned model); ``clip`` the eps
    :func:`write_submission` clips to by default (the model's).
    """

    root: Path
    paths: list[str]
    proba: np.ndarray
    label_names: list[str]
    labels: list[str | None]
    failed: list[tuple[str, str]] = field(default_factory=list)
    caches: list = field(default_factory=list)
    imputed: np.ndarray | None = None
    prior: np.ndarray | None = None
    clip: float = DEFAULT_CLIP

    def __post_init__(self) -> None:
        if self.imputed is None:
            self.imputed = np.zeros(len(self.paths), dtype=bool)
        self.imputed = np.asarray(self.imputed, dtype=bool)

    @property
    def n_predicted(self) -> int:
        """Rows the model computed (the others hold the prior)."""
        return int(len(self.paths) - self.imputed.sum())


def check_clip(eps: float) -> float:
    """``eps`` as a float when probabilities may be clipped to ``[eps, 1 - eps]``; :class:`ModelError` otherwise.

    Examples
    --------
    >>> check_clip(0.001)
    0.001
    """
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise ModelError(f"--clip must be a number in [0, 0.5); got {eps!r}") from None
    if not 0 <= eps < 0.5:  # also refuses NaN
        raise ModelError(f"--clip must be in [0, 0.5) (probabilities are clipped to [EPS, 1-EPS]); got {eps:g}")
    return eps


def clip_probabilities(proba: np.ndarray, eps: float) -> np.ndarray:
    """``proba`` clipped to ``[eps, 1 - eps]``: what a submission holds and what evaluate's log loss scores.

    A confident mistake then costs at most ``-log(eps)`` in a log loss instead of ~34.5 (at 1e-15).
    Rows are not renormalised (Kaggle and :mod:`featx.metrics` rescale multi-class rows themselves).

    Examples
    --------
    >>> clip_probabilities(np.array([[0.0, 1.0], [0.3, 0.7]]), 0.01).tolist()
    [[0.01, 0.99], [0.3, 0.7]]
    """
    eps = check_clip(eps)
    return np.clip(np.asarray(proba, dtype=np.float64), eps, 1.0 - eps)


def _class_prior(values, n_classes: int, where: str) -> np.ndarray:
    """A model's class prior as probabilities (uniform when it records none)."""
    if values is None:
        return np.full(n_classes, 1.0 / n_classes)
    prior = np.asarray(values, dtype=np.float64).ravel()
    if len(prior) != n_classes or not np.all(np.isfinite(prior)) or prior.min() < 0 or prior.sum() <= 0:
        raise ModelError(f"{where}: class_prior {np.asarray(values).tolist()} is not {n_classes} non-negative "
                         f"frequencies, one per class; the file is damaged: train the model again")
    return prior / prior.sum()


def _with_prior_rows(model, manifest: Manifest, kept: Sequence[str], proba: np.ndarray,
                     failed: list[tuple[str, str]], caches: list | None = None) -> Predictions:
    """Every image of ``manifest`` (records, then the files it could not index) as one row: those in
    ``kept`` with their row of ``proba``, the others with the model's class prior, flagged imputed."""
    row_of = {path: i for i, path in enumerate(kept)}
    failed = list(failed) + [item for item in manifest.skipped if item[0] not in row_of]
    paths = [r.path for r in manifest.records] + [path for path, _ in manifest.skipped]
    imputed = np.array([path not in row_of for path in paths], dtype=bool)
    full = np.tile(model.class_prior, (len(paths), 1))
    full[~imputed] = proba[[row_of[path] for path in paths if path in row_of]]
    label = {r.path: r.label for r in manifest.records}
    labels = [label[path] if path in label else _label_or_none(path, manifest.layout) for path in paths]
    return Predictions(manifest.root, paths, full, list(model.label_names), labels, failed, list(caches or []),
                       imputed, model.class_prior, model.clip)


def _label_or_none(path: str, layout: str) -> str | None:
    try:
        return label_for(path, layout)
    except ValueError:  # a layout this featx does not know (a hand-made manifest): no label
        return None


class SweepModel:
    """A head from ``featx sweep`` with the extractors that feed it.

    ``bundle`` is the :class:`featx.artifacts.results.SweepBundle` of ``best.joblib``; ``path``, where it
    was read from (for messages).
    """

    def __init__(self, bundle: SweepBundle, path: str | os.PathLike | None = None) -> None:
        self.bundle = bundle
        self.path = Path(path) if path is not None else None
        self.model = bundle.model
        self.label_names = list(bundle.label_names)
        where = str(self.path or SWEEP_MODEL_FILE)
        self.class_prior = _class_prior(getattr(bundle, "class_prior", None), len(self.label_names), where)
        clip = getattr(bundle, "clip", None)  # chosen by the sweep from out-of-fold log loss
        self.clip = DEFAULT_CLIP if clip is None else check_clip(clip)

    def describe(self) -> str:
        """One line: the head and its features."""
        names = "+".join(entry["spec"]["name"] for entry in self.bundle.extractors)
        return f"{self.bundle.head} on {names} features ({sum(self.bundle.dims)} dims)"

    def predict_manifest(self, manifest: Manifest, cache_dir: str | os.PathLike = "cache",
                         batch_size: int = 32, workers: int | None = None, progress=None,
                         runtime: str = "auto") -> Predictions:
        """Probabilities for the images of ``manifest`` (features cached in ``cache_dir``; ``runtime``
        runs the CNN extractors, see :func:`featx.pipeline.build_cache`)."""
        from featx.cache import open_cache
        from featx.pipeline import build_cache

        results = [build_cache(manifest, extractor, cache_dir=cache_dir, batch_size=batch_size, workers=workers,
                               progress=progress, fit=False, spec_extra=spec_extra, runtime=runtime)
                   for extractor, spec_extra in map(_rebuild_extractor, self.bundle.extractors)]
        with contextlib.ExitStack() as stack:
            caches = [stack.enter_context(open_cache(result.path)) for result in results]
            for cache, entry, dim in zip(caches, self.bundle.extractors, self.bundle.dims):
                if cache.dim != dim:
                    raise ModelError(f"{cache.path} has {cache.dim} features per image but the head was trained "
                                     f"on {dim} from {entry['spec']['name']}; delete that cache and run again")
            positions = [{path: row for row, path in enumerate(cache.paths)} for cache in caches]
            paths, failed = _aligned_paths(manifest, positions, [cache.failed for cache in caches])
            proba = np.zeros((len(paths), len(self.label_names)))
            for start in range(0, len(paths), _ROWS_PER_CHUNK):
                chunk = paths[start:start + _ROWS_PER_CHUNK]
                blocks = [_read_rows(cache.features, [position[p] for p in chunk])
                          for cache, position in zip(caches, positions)]
                proba[start:start + len(chunk)] = self.predict_proba(np.hstack(blocks))
        return _with_prior_rows(self, manifest, paths, proba, failed, results)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """The head's probabilities with one column per class of ``label_names``."""
        if isinstance(self.model, NumpyHead):
            return self.model.predict_proba(X)
        from featx.heads import class_probabilities

        return class_probabilities(self.model, X, len(self.label_names))


def _read_rows(features, rows: Sequence[int]) -> np.ndarray:
    """``features[rows]`` of an h5py dataset as float32, ``rows`` in any order."""
    rows = np.asarray(rows, dtype=np.int64)
    block = np.empty((len(rows), features.shape[1]), dtype=np.float32)
    if not len(rows):
        return block
    order = np.argsort(rows, kind="stable")  # h5py reads increasing rows only
    ascending = rows[order]
    if ascending[-1] - ascending[0] == len(rows) - 1:
        block[order] = features[ascending[0]:ascending[-1] + 1]  # one contiguous slice: the fast path
    else:
        block[order] = features[ascending]
    return block


def _rebuild_extractor(entry: dict) -> tuple[Extractor, dict | None]:
    """A bundle's extractor rebuilt from its spec, checked, with its learned state restored.

    Returns ``(extractor, spec_extra)``: ``spec_extra`` is ``{"state_sha256": ...}`` for an extractor
    whose state came from the bundle (it goes into the cache's name), else None. Raises
    :class:`ModelError` when the weights changed since the sweep, or the extractor now describes
    itself differently (its features would not be the ones the head was trained on).
    """
    from featx.extractors import get_extractor
    from featx.extractors.keras_base import KerasExtractor

    spec = entry["spec"]
    name = spec["name"]
    params = dict(spec.get("params", {}))
    try:
        extractor = get_extractor(name, **params)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot rebuild extractor {name} with the parameters the model was trained with "
                         f"({json.dumps(params, sort_keys=True)}): {exc}") from None
    if isinstance(extractor, KerasExtractor) and extractor.params.get("weights") is None:
        raise ModelError(f"{name} was built with weights=None (random, for tests): the same features cannot be "
                         f"computed again for new images; make the caches with weights=imagenet or "
                         f"weights=PATH and run featx sweep again")
    expected = spec.get("weights_sha256")
    actual = extractor.weights_fingerprint()
    if expected != actual:
        raise ModelError(
            f"{name}: the weights changed since the sweep (sha256 {_short_hash(actual)} now, "
            f"{_short_hash(expected)} when the features were made from weights={params.get('weights')!r}); "
            f"put the original weights file back, or run featx cache and featx sweep again with these weights")
    rebuilt = extractor.spec()
    for key in ("params", "preprocessing"):
        if key in spec and rebuilt[key] != spec[key]:
            now, then = (json.dumps(value, sort_keys=True) for value in (rebuilt[key], spec[key]))
            raise ModelError(f"{name}: this featx builds the extractor with {key} {now} but the model was "
                             f"trained on {then}; its features would not match: run featx cache and featx sweep "
                             f"again with this version")
    state = entry.get("state") or {}
    if extractor.needs_fit and not state:
        raise ModelError(f"{name} learns from training images but the bundle holds no learned state for it "
                         f"(cache {entry.get('cache')}); run featx sweep again on a cache made by featx cache")
    if not state:
        return extractor, None
    extractor.set_state(state)
    return extractor, {"state_sha256": state_sha256(state)}


def _short_hash(value: str | None) -> str:
    return "none (random weights)" if value is None else f"{value[:12]}..."


def _aligned_paths(manifest: Manifest, positions: Sequence[dict], failures: Sequence[list]):
    """Paths that have a row in every cache (manifest order), and the others with the reason."""
    reasons = {}
    for failed in failures:
        for image, reason in failed:
            reasons.setdefault(image, reason)
    kept, failed = [], []
    for record in manifest.records:
        if all(record.path in position for position in positions):
            kept.append(record.path)
        else:
            failed.append((record.path, reasons.get(record.path, "no features in the cache")))
    return kept, failed


class FineTunedModel:
    """A Keras model from RGB pixels to class probabilities, as ``featx finetune`` saves it.

    ``keras_model`` takes float RGB images in [0, 255] of ``info["input_size"]`` and returns one
    probability column per class (a single sigmoid column is read as the second class's). ``info`` is
    ``model.json``: ``label_names``, ``input_size`` ``[height, width]``, ``preprocessing``
    (:func:`featx.images.load_image` keyword arguments). ``path`` is the folder (for messages).
    ``keras_model`` may be None when ``path`` holds ``model.keras``: it is loaded when Keras runs it or
    its OpenVINO IR is first made (:mod:`featx.runtime.ir`), so a prediction from the IR never imports
    TensorFlow.
    """

    def __init__(self, keras_model, info: dict, path: str | os.PathLike | None = None) -> None:
        where = path or "model.json"
        if not isinstance(info, dict) or not info.get("label_names"):
            raise ModelError(f"{where}: {FINETUNE_INFO_FILE} must hold label_names (a list of class names)")
        self._keras_model = keras_model
        self.info = info
        self.path = Path(path) if path is not None else None
        self.label_names = [str(name) for name in info["label_names"]]
        self.class_prior = _class_prior(info.get("class_prior"), len(self.label_names), str(where))
        self.clip = DEFAULT_CLIP  # a training stage chooses no eps: --clip sets one
        self.preprocessing = dict(info.get("preprocessing") or {})
        if self.preprocessing.get("size") is None:
            if not info.get("input_size"):
                raise ModelError(f"{where}: {FINETUNE_INFO_FILE} gives neither input_size nor preprocessing.size; "
                                 f"the images' size cannot be known")
            self.preprocessing["size"] = list(info["input_size"])

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "FineTunedModel":
        """A fine-tune folder's model: ``model.json`` is read now, ``model.keras`` when it is needed."""
        from featx.artifacts.runs import ModelCard

        folder = Path(folder)
        info = ModelCard.read(folder / FINETUNE_INFO_FILE).to_dict()
        return cls(None, info, folder)

    @property
    def keras_model(self):
        """The Keras model (read from ``model.keras`` on first use)."""
        if self._keras_model is None:
            if self.path is None:
                raise ModelError("a fine-tuned model needs its Keras model or the folder holding model.keras")
            import keras

            from featx.training import custom_objects  # featx's own layers that model.keras refers to by name

            try:
                self._keras_model = keras.saving.load_model(self.path / FINETUNE_MODEL_FILE, compile=False,
                                                            custom_objects=custom_objects())
            except (OSError, ValueError, TypeError) as exc:
                raise ModelError(f"cannot load {self.path / FINETUNE_MODEL_FILE}: {exc}") from None
        return self._keras_model

    def runner(self, runtime: str = "auto"):
        """``run(float RGB batch) -> probabilities`` on ``runtime`` (``featx.runtime``: auto is OpenVINO on a CPU).

        On OpenVINO the model runs from its IR (:func:`featx.runtime.ir.keras_file_ir`), converted first
        when it does not exist yet; only that conversion, or Keras itself, imports TensorFlow.
        """
        from featx.runtime import resolve_runtime

        if resolve_runtime(runtime) == "keras":
            def run(batch):
                return np.asarray(self.keras_model.predict_on_batch(batch), dtype=np.float64)

            return run
        from featx.runtime import ir

        keras_file = self.path / FINETUNE_MODEL_FILE if self.path is not None else None
        if keras_file is not None and keras_file.is_file():
            xml = ir.keras_file_ir(keras_file)
            source = xml if xml.exists() else ir.write_keras_file_ir(keras_file, self.keras_model)
        else:  # a model given in memory: converted for this process only
            source = ir.to_openvino(self.keras_model)
        return ir.compile_ir(source)

    def describe(self) -> str:
        backbone = (self.info.get("backbone") or {}).get("name", "keras model")
        return f"fine-tuned {backbone} ({len(self.label_names)} classes)"

    def predict_manifest(self, manifest: Manifest, cache_dir: str | os.PathLike = "cache",
                         batch_size: int = 32, workers: int | None = None, progress=None,
                         runtime: str = "auto") -> Predictions:
        """Probabilities for the images of ``manifest`` (``cache_dir`` is not used: no features are cached;
        ``runtime`` runs the model, see :meth:`runner`)."""
        from featx.pipeline import extract_images
        from featx.progress import Progress

        progress = progress or Progress()
        adapter = _ProbabilityExtractor(self.runner(runtime), self.preprocessing)
        paths = [r.path for r in manifest.records]
        step = 8 * batch_size  # a progress update every few batches
        units = [(start, paths[start:start + step]) for start in range(0, len(paths), step)]
        kept, failed, parts = [], [], []
        progress.start("fine-tuned model", len(paths))
        try:
            for start, proba, ok, reasons in extract_images(adapter, manifest.root, units, workers, batch_size):
                unit_paths = paths[start:start + step]
                kept.extend(p for p, good in zip(unit_paths, ok) if good)
                failed.extend(zip([p for p, good in zip(unit_paths, ok) if not good], reasons))
                if len(proba):
                    parts.append(self._columns(proba))
                progress.advance(len(ok))
        finally:
            progress.stop()
        proba = np.concatenate(parts) if parts else np.zeros((0, len(self.label_names)))
        return _with_prior_rows(self, manifest, kept, proba, failed)

    def _columns(self, proba: np.ndarray) -> np.ndarray:
        n_classes = len(self.label_names)
        if proba.shape[1] == 1 and n_classes == 2:
            return np.hstack([1.0 - proba, proba])
        if proba.shape[1] != n_classes:
            raise ModelError(f"{self.path}: the model outputs {proba.shape[1]} columns but {FINETUNE_INFO_FILE} "
                             f"names {n_classes} classes ({', '.join(self.label_names)})")
        return proba


class _ProbabilityExtractor(Extractor):
    """A pixels -> probabilities model (``run``, from :meth:`FineTunedModel.runner`) seen as an extractor,
    so the pipeline's threaded decoding and batching (:func:`featx.pipeline.extract_images`) feed it."""

    name = "finetune"
    parallel = "model"

    def __init__(self, run, preprocessing: dict) -> None:
        super().__init__()
        self.run = run
        self._preprocessing = preprocessing

    @property
    def preprocessing(self) -> dict:
        return self._preprocessing

    def transform(self, images) -> np.ndarray:
        batch = np.stack(images).astype(np.float32)
        return np.asarray(self.run(batch), dtype=np.float64).reshape(len(batch), -1)


def _read_bundle(path: Path, compiled: bool = True) -> SweepBundle:
    """``best.joblib``; with ``compiled``, its head as a :class:`featx.numpy_head.NumpyHead` when it has one.

    The compiled bundle is kept in ``weights_home()/heads/`` under the file's sha256, so only the first
    prediction with a model unpickles it: the later ones import no scikit-learn (seconds on a small CPU).
    """
    if not compiled:
        return SweepBundle.read(path)
    import pickle

    from featx.numpy_head import FORMAT, compile_head
    from featx.storage import atomic_write
    from featx.weights import sha256_file, weights_home

    try:
        name = f"{path.parent.name or 'model'}-{sha256_file(path)[:16]}-v{FORMAT}.pkl"
        kept = Path(weights_home()) / "heads" / name
    except OSError:
        kept = None
    if kept is not None and kept.is_file():
        try:
            with open(kept, "rb") as handle:
                return SweepBundle.from_dict(pickle.load(handle), str(path))
        except Exception:  # noqa: BLE001 - a damaged copy is made again from best.joblib
            pass
    bundle = SweepBundle.read(path)
    head = compile_head(bundle.model, len(bundle.label_names), int(sum(bundle.dims)))
    if head is None:  # a head numpy does not compute (an RBF SVM): scikit-learn runs it
        return bundle
    data = {**bundle.to_dict(), "model": head}
    if kept is not None:
        with contextlib.suppress(OSError):  # a read-only weights folder: compiled again next time
            kept.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(kept, lambda tmp: Path(tmp).write_bytes(pickle.dumps(data, pickle.HIGHEST_PROTOCOL)),
                         suffix=".pkl")
    return SweepBundle.from_dict(data, str(path))


def load_model(path: str | os.PathLike, compiled: bool = True) -> SweepModel | FineTunedModel:
    """Read a saved model: a :class:`SweepModel` or a :class:`FineTunedModel`.

    ``path`` is ``experiments/NAME/best.joblib`` (or the folder ``experiments/NAME``), or a fine-tune
    folder ``experiments/NAME/finetune`` holding ``model.keras`` and ``model.json`` (or either file of
    it). Both kinds have ``label_names``, ``class_prior`` (what an unreadable image gets: the label
    frequencies the model was fit on when it records them, else uniform), ``clip`` (the default eps of
    :func:`clip_probabilities`), ``describe()`` and ``predict_manifest(...)``. A sweep model's head is
    computed by numpy where it can be (``compiled``, see :mod:`featx.numpy_head`); ``compiled=False`` keeps
    the fitted scikit-learn model in ``bundle.model``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"{path} does not exist; give {SWEEP_MODEL_FILE} from featx sweep, its experiment "
                         f"folder, or the finetune/ folder from featx finetune")
    if path.is_dir():
        if (path / FINETUNE_INFO_FILE).is_file() and (path / FINETUNE_MODEL_FILE).exists():
            return FineTunedModel.load(path)
        if (path / SWEEP_MODEL_FILE).is_file():
            return SweepModel(_read_bundle(path / SWEEP_MODEL_FILE, compiled), path / SWEEP_MODEL_FILE)
        raise ModelError(f"{path} holds neither {SWEEP_MODEL_FILE} (featx sweep) nor {FINETUNE_MODEL_FILE} + "
                         f"{FINETUNE_INFO_FILE} (featx finetune)")
    if path.suffix == ".keras" or path.name == FINETUNE_INFO_FILE:
        missing = [name for name in (FINETUNE_MODEL_FILE, FINETUNE_INFO_FILE) if not (path.parent / name).exists()]
        if missing:
            raise ModelError(f"{path.parent} lacks {' and '.join(missing)}; a fine-tuned model is the folder "
                             f"featx finetune writes ({FINETUNE_MODEL_FILE} + {FINETUNE_INFO_FILE})")
        return FineTunedModel.load(path.parent)
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        if handle.read(8) == b"\x89HDF\r\n\x1a\n":  # HDF5's signature: a feature cache, not a model
            raise ModelError(f"{path} is a feature cache (featx cache), not a model; give {SWEEP_MODEL_FILE} from "
                             f"featx sweep (or its experiment folder), or the finetune/ folder from featx finetune")
    return SweepModel(_read_bundle(path, compiled), path)


def _as_model(model) -> SweepModel | FineTunedModel:
    return model if isinstance(model, (SweepModel, FineTunedModel)) else load_model(model)


def scoring_manifest(source: str | os.PathLike | Manifest, layout: str = "auto") -> Manifest:
    """The images of a folder (or manifest CSV, or a :class:`Manifest`) to score: every one in split
    ``unlabeled``, labels kept.

    A scored folder is never split: its cache then holds no train, val or test rows, so ``featx sweep``
    cannot train on it.
    """
    manifest = source if isinstance(source, Manifest) else load_dataset(source, layout=layout, val=0.0, test=0.0)
    records = [dataclasses.replace(record, split="unlabeled") for record in manifest.records]
    return dataclasses.replace(manifest, records=records, val=0.0, test=0.0)


def _score(model, manifest: Manifest, cache_dir, **options) -> Predictions:
    return model.predict_manifest(manifest, cache_dir=Path(cache_dir) / SCORED_CACHE_FOLDER, **options)


def predict(model, source: str | os.PathLike, *, layout: str = "auto", cache_dir: str | os.PathLike = "cache",
            batch_size: int = 32, workers: int | None = None, progress=None, runtime: str = "auto") -> Predictions:
    """Class probabilities for every image of a folder; unreadable ones get the class prior (listed in ``failed``).

    Parameters
    ----------
    model : path, SweepModel or FineTunedModel
        As accepted by :func:`load_model`.
    source : path or Manifest
        A folder of images (Kaggle's unlabeled ``test1/``, or a labelled one), a manifest CSV, or
        :func:`scoring_manifest`'s result (the command line prints its layout first).
    layout : {"auto", "kaggle", "folders", "unlabeled"}
        How labels are read from a folder (they are carried along, never needed here).
    cache_dir : path
        Features are cached in its ``scored/`` sub-folder (sweep models); a second run on the same
        folder reuses them.
    batch_size, workers : int
        Images per model call; decoding threads or worker processes (default: all cores).
    runtime : {"auto", "keras", "openvino"}
        What runs the CNN extractors (``featx.runtime``; auto: OpenVINO on a CPU).
    """
    model = _as_model(model)
    return _score(model, scoring_manifest(source, layout), cache_dir, batch_size=batch_size, workers=workers,
                  progress=progress, runtime=runtime)


def write_submission(predictions: Predictions, output: str | os.PathLike = "submission.csv", *,
                     hard: bool = False, positive: str | None = None, clip: float | None = None) -> Path:
    """Write a Kaggle submission CSV atomically (a reader never sees half a file).

    One row per image of the folder, unreadable ones included (they hold the class prior). The ``id``
    of an image is its path relative to the folder without the extension (``test1/123.jpg`` -> ``123``);
    rows are sorted by id, numerically when every id is a number.

    Columns: ``id,label`` with the probability of the class ``positive`` (by default, of a binary
    model, the second of ``label_names``: ``dog`` for cats/dogs); with ``hard=True``, ``id,label`` with
    the most probable class's name; for a multi-class model without ``positive``,
    ``id,<class 1>,<class 2>...`` with one probability column per class. Probabilities are clipped to
    ``[clip, 1 - clip]`` (:func:`clip_probabilities`; default ``predictions.clip``, the model's) and
    written exactly (shortest round-trip decimal), so the clip survives the formatting.
    """
    names = predictions.label_names
    check_submission_options(names, hard=hard, positive=positive)
    proba = clip_probabilities(predictions.proba, predictions.clip if clip is None else clip)
    ids = [PurePosixPath(p).with_suffix("").as_posix() for p in predictions.paths]
    if len(set(ids)) != len(ids):
        raise ModelError("two images share an id (file name without extension); a submission needs unique ids")
    numeric = ids and all(re.fullmatch(r"\d+", i) for i in ids)
    order = sorted(range(len(ids)), key=lambda i: int(ids[i]) if numeric else ids[i])
    if hard:
        header, values = ["id", "label"], [[names[i]] for i in np.argmax(predictions.proba, axis=1)]
    elif positive is not None or len(names) == 2:
        column = names.index(positive) if positive is not None else 1
        header, values = ["id", "label"], [[repr(p)] for p in proba[:, column].tolist()]
    else:
        header, values = ["id", *names], [[repr(p) for p in row] for row in proba.tolist()]
    return atomic_write_csv(output, [header, *([ids[i], *values[i]] for i in order)])


def check_submission_options(label_names: Sequence[str], hard: bool = False, positive: str | None = None) -> None:
    """Refuse :func:`write_submission` options that cannot work, before any image is read.

    Raises
    ------
    ModelError
        When both ``hard`` and ``positive`` are given, or ``positive`` is not one of ``label_names``.
    """
    if hard and positive is not None:
        raise ModelError("--hard writes class names; --positive only chooses a probability column: give one of them")
    if positive is not None and positive not in label_names:
        raise ModelError(f"--positive {positive!r} is not a class of the model; its classes are "
                         f"{', '.join(label_names)}")


def evaluate(model, source: str | os.PathLike, *, layout: str = "auto", cache_dir: str | os.PathLike = "cache",
             batch_size: int = 32, workers: int | None = None, n_boot: int = 1000, seed: int = 0,
             progress=None, runtime: str = "auto", clip: float | None = None) -> dict:
    """Metrics of a saved model on a labelled folder, with bootstrap 95% intervals (``n_boot`` resamples).

    Every readable image of ``source`` (``kaggle`` names, ``folders`` layout, or a manifest CSV) counts,
    whatever split an index would give it; unreadable ones (the class prior in a submission) do not.
    The log loss is that of the probabilities clipped to ``[clip, 1 - clip]`` as :func:`write_submission`
    writes them (default: the model's ``clip``); the other arguments are as in :func:`predict`. Returns
    ``accuracy``, ``roc_auc``, ``average_precision``, ``log_loss``, each with ``_low`` and ``_high``
    (:func:`featx.metrics.metrics_with_ci`, the same resamples for all); ``clip``; ``n_images``;
    ``n_boot``; ``label_names``; ``confusion`` (rows: true class, columns: predicted); ``failed``
    (unreadable images, not counted); ``model``.
    """
    from sklearn.metrics import confusion_matrix

    from featx.metrics import bootstrap_ci, classification_metrics, metrics_with_ci

    model = _as_model(model)
    eps = model.clip if clip is None else check_clip(clip)
    manifest = scoring_manifest(source, layout)
    if not manifest.label_names:
        raise ModelError(f"{manifest.root} has no labels (layout {manifest.layout}: {manifest.layout_reason}); "
                         f"evaluate needs label.N.jpg names or one folder per label")
    unknown = sorted(set(manifest.label_names) - set(model.label_names))
    if unknown:
        raise ModelError(f"{manifest.root} has label(s) {', '.join(unknown)} that the model does not know; its "
                         f"classes are {', '.join(model.label_names)}: remove those images or use a model "
                         f"trained on them")
    predictions = _score(model, manifest, cache_dir, batch_size=batch_size, workers=workers, progress=progress,
                         runtime=runtime)
    # Only images the model saw; a hand-made manifest may also mix labelled and unlabeled ones.
    labelled = [i for i, label in enumerate(predictions.labels) if label is not None and not predictions.imputed[i]]
    if not labelled:
        raise ModelError(f"no labelled image of {manifest.root} could be read ({len(predictions.failed)} failed); "
                         f"nothing to evaluate")
    index = {name: i for i, name in enumerate(model.label_names)}
    y_true = np.array([index[predictions.labels[i]] for i in labelled], dtype=np.int64)
    proba = predictions.proba[labelled]
    classes = np.arange(len(model.label_names))
    result = metrics_with_ci(y_true, proba, classes, n_boot=n_boot, seed=seed)
    # The log loss of what a submission holds; the same seed gives the same resamples as above.
    clipped = clip_probabilities(proba, eps)
    result["log_loss"] = classification_metrics(y_true, clipped, classes)["log_loss"]
    result["log_loss_low"], result["log_loss_high"] = bootstrap_ci(y_true, clipped, "log_loss", n_boot=n_boot,
                                                                   seed=seed, classes=classes)
    confusion = confusion_matrix(y_true, proba.argmax(axis=1), labels=classes)
    result.update({"clip": eps, "n_images": len(y_true), "label_names": list(model.label_names),
                   "confusion": confusion.tolist(), "failed": predictions.failed, "model": model.describe()})
    return result
