"""ImageNet top-k predictions of a backbone that has its classifier.

The 1000 class names ship with featx (``featx/data/imagenet_classes.json``, the
standard ILSVRC-2012 index order), so this works offline.

An extractor takes part by implementing one method, ``classifier_model()``:
it returns the full Keras model, classifier included, that maps the output of
the extractor's own ``preprocess`` to 1000 softmax probabilities. Images are
decoded exactly as for feature extraction (``extractor.preprocessing``), so the
predictions show what the cached features saw.
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


def top_k(model_name: str, paths: Sequence[str | os.PathLike], k: int = 5, batch_size: int = 32,
          **opts: Any) -> list[list[tuple[str, float]]]:
    """ImageNet top-``k`` classes of each image, from a backbone's own classifier.

    Parameters
    ----------
    model_name : str
        A registered extractor that implements ``classifier_model()``
        (``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``, ``vgg16``).
    paths : sequence of path
        Image files; decoded with :func:`featx.images.load_image` at the
        extractor's input size and interpolation.
    k : int
        Classes per image.
    batch_size : int
        Images decoded and classified at a time.
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
    from featx.extractors import get_extractor
    from featx.images import load_image

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size!r}")
    extractor = get_extractor(model_name, **opts)
    build_classifier = getattr(extractor, "classifier_model", None)
    if build_classifier is None:
        raise ValueError(
            f"extractor {model_name!r} has no ImageNet classifier; top_k needs one that implements "
            "classifier_model(), such as efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 or vgg16"
        )
    classifier = build_classifier()
    paths = list(paths)
    results: list[list[tuple[str, float]]] = []
    for start in range(0, len(paths), batch_size):
        images = np.stack([load_image(path, **extractor.preprocessing) for path in paths[start:start + batch_size]])
        inputs = extractor.preprocess(images.astype(np.float32))
        probabilities = np.asarray(classifier.predict_on_batch(inputs), dtype=np.float64)
        if probabilities.shape != (len(images), N_CLASSES):
            raise ValueError(
                f"{model_name}.classifier_model() should output ({len(images)}, {N_CLASSES}) "
                f"probabilities; got shape {probabilities.shape}"
            )
        results.extend(decode_predictions(probabilities, k))
    return results
