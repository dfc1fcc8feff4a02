"""A fitted head as numpy arrays: the sweep's model computed without importing scikit-learn.

Unpickling ``best.joblib`` imports scikit-learn, which imports ``scipy.stats``: seconds on a small CPU,
more than the rest of a ``featx predict`` of a few images. :func:`compile_head` turns a fitted head
(``make_head`` pipelines of ``standard``, ``pca:N`` and ``l2`` steps before a ``logreg``, ``linsvm`` or
``dense`` head, and ``WeightedEnsemble`` of them) into a :class:`NumpyHead` that computes the same maths
in float64 (scikit-learn keeps float32 features in float32: the two differ by float32 rounding), and
checks it against the model on probe rows: a head it cannot repeat within :data:`TOLERANCE` (an RBF SVM,
a step it does not know, a scikit-learn that computes otherwise) gets None and keeps running in
scikit-learn. Only numpy is needed to unpickle a :class:`NumpyHead`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["NumpyHead", "compile_head", "TOLERANCE", "FORMAT"]

#: Version of what a pickled :class:`NumpyHead` holds (in the name of the copies featx.predict keeps).
FORMAT = 1

#: Largest difference to the scikit-learn model's probabilities a compiled head may show on the probes:
#: scikit-learn's float32 rounding, not a formula computed differently (which is off by far more).
TOLERANCE = 1e-5


class NumpyHead:
    """``predict_proba(X)``: one column per class index ``0 .. n_classes - 1``, as
    :func:`featx.heads.class_probabilities` gives them for the model it was compiled from."""

    def __init__(self, members: list, n_classes: int) -> None:
        self.members = members  # (weight or None, columns or None, steps, head, classes)
        self.n_classes = int(n_classes)
        self.classes_ = np.arange(self.n_classes)

    def predict_proba(self, X) -> np.ndarray:
        X = np.asarray(X)
        if len(self.members) == 1 and self.members[0][0] is None:
            return _member_proba(self.members[0], X, self.n_classes)
        proba = np.zeros((len(X), self.n_classes))
        for member in self.members:
            weight, columns = member[0], member[1]
            proba += weight * _member_proba(member, X[:, np.asarray(columns)], self.n_classes)
        return proba


def _member_proba(member, X, n_classes: int) -> np.ndarray:
    _, _, steps, head, classes = member
    X = np.asarray(X, dtype=np.float64)
    for step in steps:
        X = _transform(step, X)
    proba = _head_proba(head, X)
    if classes == list(range(n_classes)):
        return proba
    full = np.zeros((len(X), n_classes))
    full[:, classes] = proba
    return full


# -- the operations of scikit-learn's steps and featx.heads' heads, in float64 ---------------------------------------
def _transform(step, X):
    kind = step[0]
    if kind == "standard":
        _, mean, scale = step
        if mean is not None:
            X = X - mean
        return X / scale if scale is not None else X
    if kind == "pca":  # PCA.transform: project, centre the projection, whiten
        _, mean, components, whiten_scale = step
        projected = X @ components.T - np.reshape(mean, (1, -1)) @ components.T
        return projected / whiten_scale if whiten_scale is not None else projected
    if kind == "l2":  # Normalizer(norm="l2"): zero rows stay zero
        norms = np.sqrt(np.einsum("ij,ij->i", X, X))
        norms[norms == 0.0] = 1.0
        return X / norms[:, np.newaxis]
    raise ValueError(f"unknown step {kind!r}")


def _expit(x):
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for very negative x: the result is 0, as it should
        return 1.0 / (1.0 + np.exp(-x))


def _softmax(scores):
    scores = scores - np.max(scores, axis=1).reshape((-1, 1))
    np.exp(scores, scores)
    scores /= np.sum(scores, axis=1).reshape((-1, 1))
    return scores


def _head_proba(head, X) -> np.ndarray:
    kind = head[0]
    if kind == "logreg":  # LogisticRegression.predict_proba
        _, coef, intercept = head
        scores = X @ coef.T.astype(np.float64) + intercept
        if coef.shape[0] == 1:
            positive = _expit(scores.ravel())
            return np.stack([1 - positive, positive], axis=1)
        return _softmax(scores)
    if kind == "linsvm":  # featx.heads.LinearSVMClassifier: squared-hinge SVM scores, sigmoid calibration
        _, coef, intercept, slopes, offsets, n_classes = head
        # The SVM scores in float32, as featx.heads computes them.
        scores = (X.astype(np.float32) @ coef.T.astype(np.float32) + intercept).astype(np.float64)
        proba = np.zeros((len(X), n_classes))
        for index in range(scores.shape[1]):
            proba[:, index + (1 if n_classes == 2 else 0)] = _expit(-(slopes[index] * scores[:, index]
                                                                      + offsets[index]))
        if n_classes == 2:
            proba[:, 0] = 1.0 - proba[:, 1]
        else:
            denominator = np.sum(proba, axis=1)[:, np.newaxis]
            proba = np.divide(proba, denominator, out=np.full_like(proba, 1 / n_classes), where=denominator != 0)
        proba[(1.0 < proba) & (proba <= 1.0 + 1e-5)] = 1.0
        return proba
    if kind == "dense":  # featx.heads.KerasDenseClassifier.predict_proba: the forward pass in float64
        _, layers, binary = head
        out = X.astype(np.float32).astype(np.float64)  # the dense head reads float32 features
        for kernel, bias in layers[:-1]:
            out = np.maximum(out @ kernel + bias, 0.0)
        kernel, bias = layers[-1]
        logits = out @ kernel + bias
        if binary:
            positive = _expit(logits[:, 0])
            return np.column_stack([1.0 - positive, positive])
        return _softmax(logits)
    raise ValueError(f"unknown head {kind!r}")


# -- compiling a fitted model ------------------------------------------------------------------------------------
def compile_head(model, n_classes: int, n_features: int, seed: int = 0) -> NumpyHead | None:
    """``model`` (a fitted head pipeline or ``WeightedEnsemble``) as a :class:`NumpyHead`, or None when it has a
    part this module does not compute, or the result differs from ``model``'s by more than :data:`TOLERANCE`
    on probe rows of ``n_features`` columns (float32, as cached features are)."""
    from featx.heads import WeightedEnsemble, class_probabilities

    try:
        if isinstance(model, WeightedEnsemble):
            members = [(float(w), [int(c) for c in cols], *_pipeline(estimator))
                       for estimator, cols, w in zip(model.estimators_, model.columns, model.weights_)]
        else:
            members = [(None, None, *_pipeline(model))]
    except _Unsupported:
        return None
    head = NumpyHead(members, n_classes)
    rng = np.random.default_rng(seed)
    for scale in (0.1, 1.0):
        probes = (rng.standard_normal((16, n_features)) * scale).astype(np.float32)
        expected = class_probabilities(model, probes, n_classes)
        got = head.predict_proba(probes)
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=TOLERANCE):
            return None
    return head


class _Unsupported(Exception):
    pass


def _pipeline(model):
    """(steps, head, classes) of a fitted ``make_head`` pipeline."""
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline):
        raise _Unsupported
    steps = [_step(step) for _, step in model.steps[:-1] if step is not None and step != "passthrough"]
    final = model.steps[-1][1]
    return steps, _head(final), [int(c) for c in final.classes_]


def _step(step):
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import Normalizer, StandardScaler

    if type(step) is StandardScaler:
        return ("standard", step.mean_ if step.with_mean else None,
                step.scale_ if step.with_std and step.scale_ is not None else None)
    if type(step) is PCA:
        whiten = None
        if step.whiten:  # as scikit-learn clips it
            whiten = np.sqrt(step.explained_variance_)
            whiten[whiten < np.finfo(whiten.dtype).eps] = np.finfo(whiten.dtype).eps
        return ("pca", np.asarray(step.mean_, np.float64), np.asarray(step.components_, np.float64), whiten)
    if type(step) is Normalizer and step.norm == "l2":
        return ("l2",)
    raise _Unsupported


def _head(final):
    from sklearn.linear_model import LogisticRegression

    from featx.heads import KerasDenseClassifier, LinearSVMClassifier

    if type(final) is LogisticRegression:
        return ("logreg", final.coef_, final.intercept_)
    if type(final) is LinearSVMClassifier:
        calibrated = final.calibrated_.calibrated_classifiers_[0]
        calibrators = calibrated.calibrators
        if calibrated.method != "sigmoid" or list(final.svm_.classes_) != list(range(len(final.svm_.classes_))):
            raise _Unsupported
        return ("linsvm", final.svm_.coef_, final.svm_.intercept_, [float(c.a_) for c in calibrators],
                [float(c.b_) for c in calibrators], len(calibrated.classes))
    if type(final) is KerasDenseClassifier:
        import keras

        dense = [layer for layer in final.model_.layers if isinstance(layer, keras.layers.Dense)]
        layers = []
        for layer in dense:
            kernel, bias = layer.get_weights()
            layers.append((kernel.astype(np.float64), bias))
        return ("dense", layers, len(final.classes_) == 2)
    raise _Unsupported
