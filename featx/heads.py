"""Classifier heads trained on cached features, all behind one scikit-learn API.

Four heads, each a scikit-learn classifier with ``predict_proba``, seeded from ``random_state``:
``logreg`` (:class:`~sklearn.linear_model.LogisticRegression`), ``linsvm``
(:class:`LinearSVMClassifier`), ``rbfsvm`` (:class:`RBFSVMClassifier`) and ``dense``
(:class:`KerasDenseClassifier`). :func:`make_head` puts preprocessing steps (``standard``, ``l2``,
``pca:N``) in front of a head in a :class:`~sklearn.pipeline.Pipeline` with steps ``pre_0``, ...,
``head`` (a grid addresses the head as ``head__C``); :data:`DEFAULT_GRIDS` is the default sweep.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC
from sklearn.utils import gen_batches
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.errors import UserError

__all__ = ["HeadError", "HEADS", "PREPROCESSING", "DEFAULT_GRIDS", "KerasDenseClassifier", "LinearSVMClassifier",
           "RBFSVMClassifier", "WeightedEnsemble", "make_head", "make_preprocessing", "class_probabilities"]

HEADS = ("logreg", "linsvm", "rbfsvm", "dense")
#: Steps (epochs x batches) from which a dense head runs 32 batches per compiled call instead of one.
MANY_STEPS = 100
PREPROCESSING = ("standard", "l2", "pca:N", "pca:F", "none")
OPTIMIZERS = ("rmsprop", "adam", "sgd")


class HeadError(UserError, ValueError):
    """An unknown head, head parameter or preprocessing step, a parameter value out of range, or
    training rows a head cannot learn from (from ``--heads``, ``--preprocessing``, ``--grid`` or the
    caches); the message says what was expected. A ``ValueError``, as scikit-learn's checks expect."""


def _store_params(estimator, arguments: dict) -> None:
    """``__init__`` of a head: each argument stored under its own name, nothing else (sklearn's contract)."""
    for name, value in arguments.items():
        if name != "self":
            setattr(estimator, name, value)


class _Head(ClassifierMixin, BaseEstimator):
    """What the heads share: the classes found on fitting, and ``predict`` from ``predict_proba``."""

    def _set_classes(self, y):
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise HeadError(f"need at least 2 classes to train a classifier; got one class: {self.classes_.tolist()}")

    def predict(self, X):
        """The class with the highest (for the SVMs: calibrated) probability."""
        proba = self.predict_proba(X)  # first: it raises NotFittedError before classes_ exists
        return self.classes_[np.argmax(proba, axis=1)]


def _class_weights(class_weight, classes, y) -> np.ndarray:
    """Weights of ``classes`` (in order) from a dict keyed by label, or ``"balanced"``."""
    if isinstance(class_weight, str):
        return compute_class_weight(class_weight, classes=classes, y=y)
    return np.array([float(class_weight.get(label, 1.0)) for label in classes])


class _CalibratedSVM(_Head):
    """An SVM fitted on all (kept) rows, with Platt scaling fitted on ``calibration_cv`` folds' held-out scores.

    ``CalibratedClassifierCV(method="sigmoid", ensemble=False)``: unlike ``SVC(probability=True)``, the
    probabilities' argmax is the reported prediction, reproducible from ``random_state``.
    """

    def _fit_inputs(self, X, y):
        """What the SVM is fitted on (subclasses may subsample rows or map to a kernel)."""
        return X, y

    def _svm_inputs(self, X):
        """What the fitted SVM scores for new rows ``X``."""
        return X

    def fit(self, X, y):
        """Fit the SVM and its sigmoid calibration on ``X`` and ``y`` (any labels, strings included)."""
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        if not isinstance(self.calibration_cv, Integral) or self.calibration_cv < 2:
            raise HeadError(f"calibration_cv must be an integer >= 2 (number of folds); got {self.calibration_cv!r}")
        if not isinstance(self.C, Real) or self.C <= 0:
            raise HeadError(f"C must be a positive number; got {self.C!r}")
        self._set_classes(y)
        inputs, y_fit = self._fit_inputs(X, y)
        smallest_class = int(np.min(np.unique(y_fit, return_counts=True)[1]))
        n_folds = min(int(self.calibration_cv), smallest_class)
        if n_folds < 2:
            raise HeadError(f"every class needs at least 2 training rows for calibration; the smallest has "
                            f"{smallest_class}")
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=self.random_state)
        self.calibrated_ = CalibratedClassifierCV(self._make_svm(), method="sigmoid", cv=folds,
                                                  ensemble=False).fit(inputs, y_fit)
        self.svm_ = self.calibrated_.calibrated_classifiers_[0].estimator
        self.n_train_rows_ = int(len(y_fit))
        return self

    def decision_function(self, X):
        """SVM scores before calibration, shape (n_samples,) binary or (n_samples, n_classes)."""
        return self._in_chunks(lambda inputs: self.svm_.decision_function(inputs), X)

    def predict_proba(self, X):
        """Calibrated class probabilities, columns in the order of ``classes_``."""
        return self._in_chunks(lambda inputs: self.calibrated_.predict_proba(inputs), X)

    def _in_chunks(self, function, X, rows_per_chunk: int = 4096):
        """``function`` of the SVM inputs of row blocks of ``X``, stacked (bounds kernel-matrix memory)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        return np.concatenate([function(self._svm_inputs(X[rows])) for rows in gen_batches(X.shape[0], rows_per_chunk)],
                              axis=0)


class _SquaredHingeSVM(ClassifierMixin, BaseEstimator):
    """One-vs-rest linear SVM: LinearSVC's squared-hinge objective (intercept unpenalised), solved by L-BFGS.

    On dense cached features this is several times faster than liblinear, which copies the matrix
    into its sparse format on every fit. Deterministic: no random state involved.
    """

    def __init__(self, C=1.0, class_weight=None, max_iter=1000, tol=1e-5):
        _store_params(self, locals())

    def fit(self, X, y):
        from scipy.optimize import minimize

        X = np.asarray(X, dtype=np.float32)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        n_samples, n_features = X.shape
        n_problems = 1 if len(self.classes_) == 2 else len(self.classes_)
        signs = (np.where(y_index == 1, 1.0, -1.0)[:, None] if n_problems == 1
                 else np.where(y_index[:, None] == np.arange(n_problems), 1.0, -1.0))
        row_cost = np.full(n_samples, float(self.C))
        if self.class_weight is not None:
            row_cost = row_cost * _class_weights(self.class_weight, self.classes_, y)[y_index]
        row_cost = row_cost[:, None]

        def objective(params):
            W = params[:-n_problems].reshape(n_features, n_problems)
            b = params[-n_problems:]
            margins = (X @ W.astype(np.float32)).astype(np.float64) + b
            slack = np.maximum(0.0, 1.0 - signs * margins)
            loss = 0.5 * float(np.sum(W * W)) + float(np.sum(row_cost * slack * slack))
            d_margins = -2.0 * row_cost * slack * signs
            grad_W = W + (X.T @ d_margins.astype(np.float32)).astype(np.float64)
            return loss, np.concatenate([grad_W.ravel(), d_margins.sum(axis=0)])

        start = np.zeros(n_features * n_problems + n_problems)
        tolerance = float(self.tol) * max(1.0, n_samples * self.C)
        result = minimize(objective, start, jac=True, method="L-BFGS-B",
                          options={"maxiter": int(self.max_iter), "gtol": tolerance})
        self.coef_ = result.x[:-n_problems].reshape(n_features, n_problems).T.copy()
        self.intercept_ = result.x[-n_problems:].copy()
        self.n_iter_ = int(result.nit)
        return self

    def decision_function(self, X):
        scores = np.asarray(X, dtype=np.float32) @ self.coef_.T.astype(np.float32) + self.intercept_
        scores = scores.astype(np.float64)
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X):  # cross_val_predict (the calibration) requires it
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else np.argmax(scores, axis=1)
        return self.classes_[index]


class LinearSVMClassifier(_CalibratedSVM):
    """Linear SVM (squared hinge, one-vs-rest) with sigmoid-calibrated probabilities.

    Parameters
    ----------
    C : float, default=0.01
        Inverse regularisation strength (same meaning as in LinearSVC).
    calibration_cv : int, default=3
        Folds whose held-out decision values fit the sigmoid calibration.
    tol : float, default=1e-5
        Gradient tolerance, relative to ``n_samples * C``.
    random_state : int or None, default=None
        Seeds the calibration folds (the solver itself is deterministic).

    Attributes
    ----------
    svm_ : estimator
        The SVM fitted on all rows (``coef_``, ``intercept_``, ``decision_function``).
    calibrated_ : CalibratedClassifierCV
        The calibration (one sigmoid per class, a single one for binary problems).

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> X, y = make_classification(n_samples=120, n_features=8, random_state=0)
    >>> clf = LinearSVMClassifier(C=1.0, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:3]).shape
    (3, 2)
    """

    def __init__(self, C=0.01, *, class_weight=None, calibration_cv=3, max_iter=1000, tol=1e-5,
                 random_state=None):
        _store_params(self, locals())

    def _make_svm(self):
        return _SquaredHingeSVM(C=self.C, class_weight=self.class_weight, max_iter=self.max_iter, tol=self.tol)

    @property
    def coef_(self):
        """Weights of the SVM fitted on all rows, shape (1 or n_classes, n_features)."""
        check_is_fitted(self)
        return self.svm_.coef_

    @property
    def intercept_(self):
        """Intercepts of the SVM fitted on all rows."""
        check_is_fitted(self)
        return self.svm_.intercept_

    @property
    def n_iter_(self):
        """L-BFGS iterations of the SVM fitted on all rows (sklearn's checks expect it beside ``max_iter``)."""
        check_is_fitted(self)
        return self.svm_.n_iter_


class RBFSVMClassifier(_CalibratedSVM):
    """Kernel (RBF) SVM on at most ``max_train_rows`` rows, with calibrated probabilities.

    Kernel SVM training grows roughly quadratically with the rows, so a larger training set is cut
    to a stratified sample of ``max_train_rows`` (drawn from ``random_state``; None: every row). The
    kernel matrix comes from :func:`~sklearn.metrics.pairwise.rbf_kernel` (BLAS: several times faster
    than libsvm's per-pair kernel on wide features) into ``SVC(kernel="precomputed")``; prediction
    computes kernels against the support vectors only.

    Parameters
    ----------
    gamma_factor : float, default=1.0
        The RBF width is ``gamma_factor / (n_features * X.var())``: scikit-learn's ``gamma="scale"`` times
        this factor, so one grid fits features of any dimension or scale.
    max_train_rows : int or None, default=3000
        Cap on the rows the SVM is trained on (None: no cap).
    random_state : int or None, default=None
        Seeds the row sample and the calibration folds.

    Attributes
    ----------
    landmarks_ : ndarray of shape (n_train_rows_, n_features)
        The kept training rows (kernel columns).
    gamma_ : float
        The RBF ``gamma`` actually used.
    """

    def __init__(self, C=10.0, *, gamma_factor=1.0, max_train_rows=3000, class_weight=None,
                 calibration_cv=3, random_state=None):
        _store_params(self, locals())

    def _fit_inputs(self, X, y):
        if not isinstance(self.gamma_factor, Real) or self.gamma_factor <= 0:
            raise HeadError(f"gamma_factor must be a positive number; got {self.gamma_factor!r}")
        if self.max_train_rows is not None:
            if not isinstance(self.max_train_rows, Integral) or self.max_train_rows < 2:
                raise HeadError(f"max_train_rows must be an integer >= 2 or None; got {self.max_train_rows!r}")
            if X.shape[0] > self.max_train_rows:
                X, _, y, _ = train_test_split(X, y, train_size=int(self.max_train_rows), stratify=y,
                                              random_state=self.random_state)
        variance = float(np.var(X, dtype=np.float64))
        self.gamma_ = float(self.gamma_factor) / (X.shape[1] * variance) if variance > 0 else float(self.gamma_factor)
        self.landmarks_ = np.ascontiguousarray(X, dtype=np.float32)
        return rbf_kernel(self.landmarks_, gamma=self.gamma_), y

    def _svm_inputs(self, X):
        # Only support vectors have non-zero dual coefficients: the other kernel columns stay 0.
        support = self.svm_.support_
        kernel = np.zeros((X.shape[0], self.landmarks_.shape[0]), dtype=np.float64)
        kernel[:, support] = rbf_kernel(np.asarray(X, dtype=np.float32), self.landmarks_[support], gamma=self.gamma_)
        return kernel

    def _make_svm(self):
        return SVC(C=self.C, kernel="precomputed", class_weight=self.class_weight, decision_function_shape="ovr",
                   random_state=self.random_state)


class KerasDenseClassifier(_Head):
    """The transfer-learning recipes' dense top as a scikit-learn classifier.

    ``Dropout -> Dense(units, relu)`` per entry of ``hidden_units``, then ``Dense(1, sigmoid)`` for two
    classes or ``Dense(n_classes, softmax)``. With ``patience`` set, a stratified ``validation_fraction``
    of the rows (or ``validation_data`` passed to :meth:`fit`) drives early stopping; the best epoch is kept.

    Parameters
    ----------
    hidden_units : int or tuple of int, default=256
        Width of the hidden layer, or of each hidden layer.
    dropout : float, default=0.5
        Dropout rate in front of each hidden layer.
    optimizer : {"rmsprop", "adam", "sgd"}, default="rmsprop"
        ``sgd`` uses Nesterov momentum 0.9.
    patience : int or None, default=4
        Epochs without a lower validation loss before stopping; None trains all epochs.
    validation_fraction : float, default=0.1
        Share of the rows held out for early stopping when ``validation_data`` is not given.
    class_weight : dict, "balanced" or None, default=None
        Per-class loss weights, keyed by the original labels.
    random_state : int or None, default=None
        Seeds Keras (weights, dropout, shuffling) and the validation split.

    Attributes
    ----------
    model_ : keras.Model
        The trained network (input: features, output: probabilities).
    history_ : dict of str to list of float
        Per-epoch ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy`` (``val_`` empty when nothing was held out).

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> X, y = make_classification(n_samples=200, n_features=10, random_state=0)
    >>> clf = KerasDenseClassifier(hidden_units=16, learning_rate=1e-2, epochs=3, random_state=0)
    >>> clf.fit(X, y).predict_proba(X[:2]).shape
    (2, 2)
    """

    def __init__(self, hidden_units=256, dropout=0.5, optimizer="rmsprop", learning_rate=2e-5, epochs=20,
                 batch_size=128, patience=4, validation_fraction=0.1, class_weight=None, random_state=None,
                 verbose=0):
        _store_params(self, locals())

    def fit(self, X, y, validation_data=None):
        """Train the network on ``X``, ``y`` (``validation_data``: ``(X_val, y_val)``, see above); returns ``self``."""
        import keras

        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self._check_params()
        self._set_classes(y)
        y_index = np.searchsorted(self.classes_, y)
        seed = self.random_state
        if seed is not None:
            from featx.backend import set_random_seed

            set_random_seed(int(seed))

        X_train, y_train = X, y_index
        X_val = y_val = None
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("validation_data must be a tuple (X_val, y_val); "
                                 f"got a {type(validation_data).__name__} of length {len(validation_data)}")
            X_val = validate_data(self, validation_data[0], reset=False, dtype=np.float32)
            unknown = set(np.unique(validation_data[1]).tolist()) - set(self.classes_.tolist())
            if unknown:
                raise ValueError(f"validation_data has labels not seen in y: {sorted(unknown)}; "
                                 f"known classes are {self.classes_.tolist()}")
            y_val = np.searchsorted(self.classes_, np.asarray(validation_data[1]))
        elif self.patience is not None and self.validation_fraction > 0:
            X_train, X_val, y_train, y_val = _holdout(X, y_index, self.validation_fraction, seed)

        steps = int(self.epochs) * -(-len(X_train) // int(self.batch_size))
        self.model_ = self._build_model(X.shape[1], len(self.classes_), steps)
        build_fit_state(self.model_, X_train[:1], self._targets(y_train[:1]))
        callbacks = []
        if self.patience is not None and X_val is not None:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(self.patience),
                                                           restore_best_weights=True))
        sample_weight = (None if self.class_weight is None
                         else _class_weights(self.class_weight, self.classes_, y)[y_train].astype(np.float32))
        fitted = self.model_.fit(
            X_train, self._targets(y_train), sample_weight=sample_weight,
            validation_data=None if X_val is None else (X_val, self._targets(y_val)),
            epochs=int(self.epochs), batch_size=int(self.batch_size), shuffle=True,
            callbacks=callbacks, verbose=self.verbose,
        )
        self.history_ = {key: [float(v) for v in fitted.history.get(key, [])]
                         for key in ("loss", "accuracy", "val_loss", "val_accuracy")}
        self.n_epochs_ = len(self.history_["loss"])
        return self

    def _check_params(self):
        if self.optimizer not in OPTIMIZERS:
            raise HeadError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise HeadError(f"dropout must be in [0, 1); got {self.dropout!r}")
        if not 0.0 <= float(self.validation_fraction) < 1.0:
            raise HeadError(f"validation_fraction must be in [0, 1); got {self.validation_fraction!r}")
        if any(units < 1 for units in self._hidden_layers()):
            raise HeadError(f"hidden_units must be positive integers; got {self.hidden_units!r}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise HeadError(f"{name} must be a positive integer; got {getattr(self, name)!r}")

    def _hidden_layers(self) -> tuple[int, ...]:
        units = self.hidden_units
        if units is None:
            return ()
        return (int(units),) if isinstance(units, Integral) else tuple(int(u) for u in units)

    def _targets(self, y_index):
        if len(self.classes_) == 2:
            return y_index.astype(np.float32).reshape(-1, 1)
        return y_index.astype(np.int32)

    def _build_model(self, n_features: int, n_classes: int, steps: int):
        import keras

        inputs = keras.Input(shape=(n_features,), name="features")
        x = inputs
        for depth, units in enumerate(self._hidden_layers()):
            x = keras.layers.Dropout(float(self.dropout), name=f"dropout_{depth}")(x)
            x = keras.layers.Dense(units, activation="relu", name=f"hidden_{depth}")(x)
        binary = n_classes == 2
        outputs = keras.layers.Dense(1 if binary else n_classes, activation="sigmoid" if binary else "softmax",
                                     name="output")(x)
        model = keras.Model(inputs, outputs, name="featx_dense_head")
        # A dense head on cached features is so small that Keras' per-step Python overhead dominates: 32 batches
        # per compiled call remove most of it, for a second trace (~0.1 s). Under MANY_STEPS in all (small fits:
        # learning-curve points, estimator checks) one batch per call is faster (benchmarks/bench_dense_steps.py).
        # Keras on PyTorch runs eagerly, one batch per call (it refuses more).
        many = steps >= MANY_STEPS and keras.backend.backend() != "torch"
        model.compile(optimizer=make_optimizer(self.optimizer, float(self.learning_rate)),
                      loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                      metrics=["accuracy"], steps_per_execution=32 if many else 1)
        return model

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in the order of ``classes_``."""
        import keras
        from scipy.special import expit, softmax

        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        # The forward pass in float64 NumPy from the trained weights (dropout is off at inference):
        # float32 kernels round a row differently depending on the rows batched with it, so a
        # row's probabilities would change with the order of the others (sklearn checks they do not).
        dense = [layer for layer in self.model_.layers if isinstance(layer, keras.layers.Dense)]
        out = X.astype(np.float64)
        for layer in dense[:-1]:
            kernel, bias = layer.get_weights()
            out = np.maximum(out @ kernel.astype(np.float64) + bias, 0.0)
        kernel, bias = dense[-1].get_weights()
        logits = out @ kernel.astype(np.float64) + bias
        if len(self.classes_) == 2:
            positive = expit(logits[:, 0])
            return np.column_stack([1.0 - positive, positive])
        return softmax(logits, axis=1)


def make_optimizer(name: str, learning_rate: float):
    import keras

    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, nesterov=True)


def build_fit_state(model, x, y) -> None:
    """Create a compiled model's optimizer slots and loss/metric state from one example row ``x``, ``y``.

    Keras 3 on TensorFlow, without a distribution strategy, creates them inside the first trace of the
    train step, and tf.function then traces it a second time; built beforehand, the first fit traces it
    once (a small fit runs ~1.5x faster, same numbers). Under a strategy Keras builds them itself.
    """
    from featx.backend import has_strategy

    if not has_strategy():
        y_pred = model(x, training=False)
        model.compute_loss(x, y, y_pred)
        model.compute_metrics(x, y, y_pred, sample_weight=None)
        model.optimizer.build(model.trainable_variables)
        model.reset_metrics()


def _holdout(X, y_index, fraction: float, seed):
    """Stratified split of ``fraction`` of the rows (plain random when a class is too small)."""
    counts = np.bincount(y_index)
    n_val = int(np.ceil(fraction * len(y_index)))
    stratify = y_index if counts.min() >= 2 and n_val >= len(counts) else None
    return train_test_split(X, y_index, test_size=fraction, stratify=stratify, random_state=seed)


def make_preprocessing(spec: str, random_state=None):
    """One preprocessing step from its name; ``random_state`` seeds randomized PCA.

    ``standard`` (StandardScaler), ``l2`` (row-wise L2 Normalizer), ``pca:256`` (PCA to 256 components),
    ``pca:0.95`` (PCA keeping 95% of the variance) or ``none`` (no step: returns None).
    """
    key = spec.strip().lower()
    if key == "none":
        return None
    if key == "standard":
        return StandardScaler()
    if key == "l2":
        return Normalizer(norm="l2")
    if key.startswith("pca:"):
        raw = key[4:]
        try:
            amount = float(raw)
        except ValueError:
            amount = -1.0
        if amount >= 1 and amount == int(amount):
            return PCA(n_components=int(amount), random_state=random_state)
        if 0 < amount < 1:
            return PCA(n_components=amount, svd_solver="full", random_state=random_state)
        raise HeadError(f"PCA size in {spec!r} must be a whole number of components (pca:256) or a variance "
                         f"share between 0 and 1 (pca:0.95); got {raw!r}")
    raise HeadError(f"unknown preprocessing {spec!r}; expected one of {', '.join(PREPROCESSING)} "
                     "(or a list of them, e.g. ['l2', 'standard'])")


def make_head(name: str, preprocessing: str | Sequence[str] = "standard", *, random_state=None,
              **params: Any) -> Pipeline:
    """A preprocessing + classifier pipeline ready to fit on cached features.

    Parameters
    ----------
    name : {"logreg", "linsvm", "rbfsvm", "dense"}
    preprocessing : str or list of str, default="standard"
        Steps applied in order (see :func:`make_preprocessing`), e.g.
        ``["l2", "standard"]``; ``"none"`` for no step.
    random_state : int or None
        Seeds the head (and randomized PCA).
    **params
        Parameters of the head (``C=10``, ``hidden_units=(512, 128)``, ...).

    Examples
    --------
    >>> pipe = make_head("linsvm", ["l2", "pca:64"], C=0.1)
    >>> [(step, type(est).__name__) for step, est in pipe.steps]
    [('pre_0', 'Normalizer'), ('pre_1', 'PCA'), ('head', 'LinearSVMClassifier')]
    """
    specs = [preprocessing] if isinstance(preprocessing, str) else list(preprocessing)
    steps = []
    for spec in specs:
        if not isinstance(spec, str):
            raise TypeError(f"preprocessing steps are names like 'standard' or 'pca:256'; got {spec!r}")
        step = make_preprocessing(spec, random_state=random_state)
        if step is not None:
            steps.append((f"pre_{len(steps)}", step))
    steps.append(("head", _make_classifier(name, random_state, params)))
    return Pipeline(steps)


def _make_classifier(name: str, random_state, params: dict):
    factories = {"logreg": LogisticRegression, "linsvm": LinearSVMClassifier, "rbfsvm": RBFSVMClassifier,
                 "dense": KerasDenseClassifier}
    if name not in factories:
        raise HeadError(f"unknown head {name!r}; expected one of {', '.join(HEADS)}")
    cls = factories[name]
    valid = set(cls().get_params())
    unknown = sorted(set(params) - valid)
    if unknown:
        raise HeadError(f"{name} head has no parameter(s) {unknown}; valid ones are {sorted(valid)}")
    defaults = {"C": 1.0, "max_iter": 300} if name == "logreg" else {}
    return cls(random_state=random_state, **{**defaults, **params})


# The default sweep: 20 configurations (logreg 4, linsvm 4, rbfsvm 6, dense 6),
# chosen so each fit on 25,000 x 1,280 float32 features stays within seconds for
# the sklearn heads on 2 CPU cores; the RBF SVM trains on at most 3,000 rows and
# the dense head stops early. ``len(sklearn.model_selection.ParameterGrid(grid))`` counts a grid.
DEFAULT_GRIDS: dict[str, list[dict]] = {
    "logreg": [{"head__C": [0.001, 0.01, 0.1, 1.0]}],
    "linsvm": [{"head__C": [0.0001, 0.001, 0.01, 0.1]}],
    "rbfsvm": [{"head__C": [1.0, 10.0, 100.0], "head__gamma_factor": [0.5, 1.0]}],
    # Batch 256 and learning rates that converge within the early-stopping window keep the six
    # dense fits inside the sweep's time budget; the recipes' RMSprop 2e-5 stays the head's
    # default for a single fit, where its slow convergence is affordable.
    "dense": [
        {"head__hidden_units": [256], "head__dropout": [0.5], "head__learning_rate": [1e-4, 3e-4, 1e-3],
         "head__batch_size": [256]},
        {"head__hidden_units": [512, (256, 128)], "head__dropout": [0.5], "head__learning_rate": [3e-4],
         "head__batch_size": [256]},
        {"head__hidden_units": [256], "head__dropout": [0.2], "head__learning_rate": [3e-4],
         "head__batch_size": [256]},
    ],
}


def class_probabilities(model, X, n_classes: int) -> np.ndarray:
    """``model.predict_proba(X)`` with one column per class index ``0 .. n_classes - 1``.

    A head fitted on a subset of the classes (``classes_`` are indices) gives the others probability 0.
    """
    proba = model.predict_proba(X)
    seen = [int(c) for c in model.classes_]
    if seen == list(range(n_classes)):
        return proba
    full = np.zeros((len(X), n_classes))
    full[:, seen] = proba
    return full


class WeightedEnsemble(_Head):
    """A weighted mean of heads' probabilities, each head reading its own columns of ``X``.

    The estimator behind an ensemble row of ``featx sweep`` (greedy ensemble selection, Caruana et al.,
    2004): members may be heads on different feature sets, so ``X`` is the features of every member's
    caches side by side and ``columns[i]`` picks member ``i``'s block.

    Parameters
    ----------
    estimators : list of estimators
        The members (``make_head`` pipelines). :meth:`fit` fits clones of them; :meth:`from_fitted`
        wraps members that are fitted already.
    weights : list of float
        One per member; normalised to sum to 1.
    columns : list of array-like of int
        Column indices of ``X`` each member reads.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 5.0], [1.0, 4.0], [2.0, 1.0], [3.0, 0.0]]); y = np.array([0, 0, 1, 1])
    >>> ens = WeightedEnsemble([make_head("logreg"), make_head("logreg")], [3, 1], [[0], [1]]).fit(X, y)
    >>> ens.predict(X).tolist()
    [0, 0, 1, 1]
    """

    def __init__(self, estimators=(), weights=(), columns=()):
        _store_params(self, locals())

    def _check_members(self):
        if not len(self.estimators) or len(self.estimators) != len(self.weights) \
                or len(self.estimators) != len(self.columns):
            raise HeadError(f"an ensemble needs as many weights and column sets as members; got "
                            f"{len(self.estimators)} member(s), {len(self.weights)} weight(s), "
                            f"{len(self.columns)} column set(s)")
        weights = np.asarray(self.weights, dtype=np.float64)
        if np.any(weights < 0) or weights.sum() <= 0:
            raise HeadError(f"ensemble weights must be non-negative with a positive sum; got {weights.tolist()}")
        return weights / weights.sum()

    def fit(self, X, y):
        """Fit a clone of every member on its columns of ``X``."""
        from sklearn.base import clone

        weights = self._check_members()
        X = np.asarray(X)
        check_classification_targets(y)
        self._set_classes(y)
        self.estimators_ = [clone(estimator).fit(X[:, np.asarray(cols)], y)
                            for estimator, cols in zip(self.estimators, self.columns)]
        self.weights_ = weights
        return self

    @classmethod
    def from_fitted(cls, estimators, weights, columns, classes) -> "WeightedEnsemble":
        """An ensemble of members that are fitted already (on the same rows and classes)."""
        ensemble = cls(list(estimators), list(weights), [list(map(int, c)) for c in columns])
        ensemble.weights_ = ensemble._check_members()
        ensemble.estimators_ = list(estimators)
        ensemble.classes_ = np.asarray(classes)
        return ensemble

    def predict_proba(self, X):
        """The weighted mean of the members' probabilities (columns follow ``classes_``)."""
        check_is_fitted(self, "estimators_")
        X = np.asarray(X)
        n_classes = len(self.classes_)
        proba = np.zeros((len(X), n_classes))
        for estimator, cols, weight in zip(self.estimators_, self.columns, self.weights_):
            proba += weight * class_probabilities(estimator, X[:, np.asarray(cols)], n_classes)
        return proba
