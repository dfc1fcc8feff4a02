"""ImageNet top-k predictions of a backbone that has its classifier.

The 1000 class names ship with featx (``featx/data/imagenet_classes.json``), so this works
offline. An extractor takes part by implementing ``classifier_model()``: the full Keras model
mapping its own ``preprocess`` output to 1000 softmax probabilities. Images are decoded as for
feature extraction, so the predictions show what the cached features saw.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

import numpy as np

__all__ = ["class_names", "decode_predictions", "top_k", "N_CLASSES"]

N_CLASSES = 1000


@lru_cache(maxsize=1)
def _class_names() -> tuple[str, ...]:
    text = resources.files("featx").joinpath("data", "imagenet_classes.json").read_text(encoding="utf-8")
    names = tuple(json.loads(text))
    if len(names) != N_CLASSES:
        raise RuntimeError(f"featx/data/imagenet_classes.json should list {N_CLASSES} names; it has {len(names)}")
    return names


def class_names() -> list[str]:
    """The 1000 ImageNet class names in index order (synonyms separated by ", ").

    Examples
    --------
    >>> names = class_names()
    >>> len(names), names[0], names[207]
    (1000, 'tench, Tinca tinca', 'golden retriever')
    """
    return list(_class_names())


def decode_predictions(probabilities: Any, k: int = 5) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable classes of each row, best first.

    Parameters
    ----------
    probabilities : array-like of shape (n_images, 1000)
        Softmax outputs of an ImageNet classifier.
    k : int
        How many classes per image (1 to 1000).

    Returns
    -------
    list of list of (str, float)
        Per image, ``k`` pairs of (class name, probability).

    Examples
    --------
    >>> p = np.zeros((1, 1000)); p[0, 281] = 0.7; p[0, 285] = 0.2
    >>> [(name, round(prob, 2)) for name, prob in decode_predictions(p, k=2)[0]]
    [('tabby, tabby cat', 0.7), ('Egyptian cat', 0.2)]
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != N_CLASSES:
        raise ValueError(
            f"expected ImageNet probabilities of shape (n_images, {N_CLASSES}); got {probabilities.shape}"
        )
    if not 1 <= int(k) <= N_CLASSES:
        raise ValueError(f"k must be between 1 and {N_CLASSES}; got {k!r}")
    names = _class_names()
    # argsort on the negated values keeps ties in index order (stable sort).
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, : int(k)]
    return [
        [(names[index], float(row[index])) for index in indices]
        for row, indices in zip(probabilities, order, strict=True)
    ]


class _Classifier:
    """An extractor's full ImageNet classifier seen as a model extractor, so ``featx.runtime`` runs it
    (OpenVINO converts it once, keyed by the extractor's spec plus this marker)."""

    parallel = "model"

    def __init__(self, extractor, precision: str):
        self.extractor, self.precision = extractor, precision
        self.preprocessing = dict(extractor.preprocessing)
        size = getattr(extractor, "classifier_input_size", None)
        if size is not None:  # the top was trained at the native size, whatever input_size= says
            self.preprocessing["size"] = [int(side) for side in size]
        self.preprocess = extractor.preprocess
        self.weights_fingerprint = extractor.weights_fingerprint
        self._model = None

    def spec(self) -> dict:
        spec = self.extractor.spec()
        spec["params"]["precision"] = self.precision
        return {**spec, "name": f"{spec['name']}-imagenet", "preprocessing": self.preprocessing}

    def fp32_model(self):
        return self.extractor.classifier_model()

    def transform(self, images) -> np.ndarray:
        if self._model is None:
            from featx.extractors.keras_base import set_precision

            set_precision(self.precision)
            try:
                self._model = self.extractor.classifier_model()
            finally:
                set_precision("fp32")
        return np.asarray(self._model.predict_on_batch(self.preprocess(np.asarray(images, np.float32))))


def top_k(model_name: str, paths: Sequence[str | os.PathLike], k: int = 5, batch_size: int = 32,
          runtime: str = "auto", precision: str = "fp32", **opts: Any) -> list[list[tuple[str, float]]]:
    """ImageNet top-``k`` classes of each image, from a backbone's own classifier.

    Parameters
    ----------
    model_name : str
        A registered extractor that implements ``classifier_model()``
        (``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``, ``vgg16``,
        ``keras:<application>``).
    paths : sequence of path
        Image files, decoded at the classifier's input size.
    runtime : {"auto", "keras", "openvino"}
        What runs the classifier (``featx.runtime``; auto: OpenVINO on a CPU).
    **opts
        Extractor options (``weights="imagenet"`` or a path, ...).

    Returns
    -------
    list of list of (str, float)
        For each path, in order, ``k`` (class name, probability) pairs, best first.

    Raises
    ------
    ValueError
        When the extractor has no ImageNet classifier.
    featx.images.ImageError
        When an image cannot be decoded (the message names the file).

    Examples
    --------
    >>> top_k("efficientnet_lite0", ["cat.1.jpg"], k=3)  # doctest: +SKIP
    [[('tabby, tabby cat', 0.41), ('tiger cat', 0.33), ('Egyptian cat', 0.12)]]
    """
    from featx.datasets import decode_threads, iter_batches
    from featx.extractors import get_extractor
    from featx.extractors.base import ExtractorOptionError
    from featx.images import ImageError
    from featx.runtime import make_runner

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size!r}")
    if precision not in ("fp32", "bf16"):
        raise ExtractorOptionError(f"--precision {precision!r}: ImageNet top-k runs in fp32 or bf16")
    extractor = get_extractor(model_name, **opts)
    if getattr(extractor, "classifier_model", None) is None:
        raise ValueError(
            f"extractor {model_name!r} has no ImageNet classifier; top_k needs one that implements "
            "classifier_model(), such as efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 or vgg16"
        )
    classifier = _Classifier(extractor, precision)
    runner = make_runner(classifier, runtime, precision)
    paths = [os.fspath(path) for path in paths]
    groups = [paths[start:start + batch_size] for start in range(0, len(paths), batch_size)]
    results: list[list[tuple[str, float]]] = []
    for group, (images, ok, reasons) in zip(groups, iter_batches("", groups, classifier.preprocessing,
                                                                 decode_threads(runner.model_threads))):
        if not ok.all():
            raise ImageError(group[int(np.flatnonzero(~ok)[0])], reasons[0])
        probabilities = np.asarray(runner(images), dtype=np.float64)
        if probabilities.shape != (len(images), N_CLASSES):
            raise ValueError(
                f"{model_name}.classifier_model() should output ({len(images)}, {N_CLASSES}) "
                f"probabilities; got shape {probabilities.shape}"
            )
        results.extend(decode_predictions(probabilities, k))
    return results
