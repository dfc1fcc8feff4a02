"""featx.heads: every head learns a small separable problem and behaves as a scikit-learn estimator."""

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, ParameterGrid
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx.heads import (DEFAULT_GRIDS, HEADS, HeadError, KerasDenseClassifier, LinearSVMClassifier, RBFSVMClassifier,
                         make_head)

# Small and quick: the dense head trains with a high learning rate for a few epochs.
FAST_DENSE = {"hidden_units": 32, "learning_rate": 1e-2, "epochs": 12, "batch_size": 32, "patience": None}


@pytest.fixture(scope="module")
def three_classes():
    X, y = make_classification(n_samples=300, n_features=20, n_informative=8, n_redundant=2, n_classes=3,
                               n_clusters_per_class=1, class_sep=2.0, random_state=0)
    order = np.random.default_rng(0).permutation(len(y))
    X, y = X[order].astype(np.float32), y[order]
    return X[:200], y[:200], X[200:], y[200:]


@pytest.fixture(scope="module")
def two_classes():
    X, y = make_classification(n_samples=160, n_features=10, n_informative=5, class_sep=1.5, random_state=1)
    return X.astype(np.float32), y


@pytest.mark.parametrize("name", HEADS)
def test_each_head_learns_a_separable_three_class_problem(name, three_classes):
    X_train, y_train, X_test, y_test = three_classes
    params = FAST_DENSE if name == "dense" else {}
    head = make_head(name, random_state=0, **params).fit(X_train, y_train)
    proba = head.predict_proba(X_test)
    assert proba.shape == (len(X_test), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(head.classes_, [0, 1, 2])
    assert head.score(X_test, y_test) > 0.9
    # predictions are the most probable class
    np.testing.assert_array_equal(head.predict(X_test), head.classes_[proba.argmax(axis=1)])


@pytest.mark.parametrize("name", ["logreg", "linsvm", "rbfsvm"])
def test_sklearn_heads_are_reproducible_from_random_state(name, two_classes):
    X, y = two_classes
    first = make_head(name, random_state=3).fit(X, y).predict_proba(X)
    second = make_head(name, random_state=3).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, second)


def test_svms_expose_decision_function_and_linear_weights(two_classes, three_classes):
    X, y = two_classes
    linear = LinearSVMClassifier(C=0.1, random_state=0).fit(X, y)
    scores = linear.decision_function(X)
    assert scores.shape == (len(X),)
    np.testing.assert_allclose(scores, X @ linear.coef_[0] + linear.intercept_[0], rtol=1e-4, atol=1e-4)
    # calibration is monotone: a higher SVM score never gives a lower probability of the positive class
    order = np.argsort(scores)
    assert np.all(np.diff(linear.predict_proba(X)[order, 1]) >= -1e-12)
    X3, y3, _, _ = three_classes
    assert RBFSVMClassifier(random_state=0).fit(X3, y3).decision_function(X3).shape == (len(X3), 3)


def test_linear_svm_matches_sklearn_linearsvc_predictions(three_classes):
    from sklearn.svm import LinearSVC

    X_train, y_train, X_test, _ = three_classes
    ours = LinearSVMClassifier(C=0.05, random_state=0).fit(X_train, y_train)
    reference = LinearSVC(C=0.05, dual=False, intercept_scaling=100.0).fit(X_train, y_train)
    agreement = np.mean(ours.svm_.predict(X_test) == reference.predict(X_test))
    assert agreement >= 0.97


def test_rbf_svm_caps_training_rows_with_a_stratified_sample(two_classes):
    X, y = two_classes
    svm = RBFSVMClassifier(max_train_rows=60, random_state=0).fit(X, y)
    assert svm.n_train_rows_ == 60 and svm.landmarks_.shape == (60, X.shape[1])
    assert svm.predict_proba(X).shape == (len(X), 2)
    assert RBFSVMClassifier(max_train_rows=None, random_state=0).fit(X, y).n_train_rows_ == len(X)
    # gamma follows sklearn's "scale" rule times the factor
    kept = svm.landmarks_
    assert svm.gamma_ == pytest.approx(1.0 / (X.shape[1] * kept.var()), rel=1e-5)


def test_make_head_builds_named_steps():
    pipe = make_head("logreg", ["l2", "standard"])
    assert [name for name, _ in pipe.steps] == ["pre_0", "pre_1", "head"]
    assert isinstance(pipe.named_steps["pre_0"], Normalizer)
    assert isinstance(pipe.named_steps["pre_1"], StandardScaler)
    pca = make_head("dense", "pca:0.95").named_steps["pre_0"]
    assert isinstance(pca, PCA) and pca.n_components == 0.95
    assert make_head("rbfsvm", ["pca:8"]).named_steps["pre_0"].n_components == 8
    assert [name for name, _ in make_head("linsvm", "none").steps] == ["head"]
    assert make_head("linsvm", C=0.5).get_params()["head__C"] == 0.5


@pytest.mark.parametrize("bad, message", [
    ({"name": "knn"}, "unknown head 'knn'"),
    ({"name": "logreg", "preprocessing": "zscore"}, "unknown preprocessing 'zscore'"),
    ({"name": "logreg", "preprocessing": "pca:-3"}, "whole number of components"),
])
def test_make_head_rejects_bad_names_with_the_choices(bad, message):
    with pytest.raises(HeadError, match=message):
        make_head(**bad)


def test_make_head_rejects_unknown_head_parameters():
    for name in HEADS:
        with pytest.raises(HeadError, match=f"{name} head has no parameter\\(s\\) \\['hidden'\\]"):
            make_head(name, hidden=128)


def test_default_grids_cover_every_head_with_at_least_20_configs():
    assert set(DEFAULT_GRIDS) == set(HEADS)
    assert sum(len(ParameterGrid(grid)) for grid in DEFAULT_GRIDS.values()) >= 20
    for name, grid in DEFAULT_GRIDS.items():
        valid = make_head(name).get_params()
        for block in grid:
            assert set(block) <= set(valid), name


# -- scikit-learn's own estimator checks, on every head -----------------------------
_CALIBRATION = ("predict is the argmax of the Platt-calibrated probabilities, fitted on held-out folds at the "
                "true class frequencies; ")
_EXPECTED_FAILURES = {
    "LinearSVMClassifier": {
        "check_classifiers_train": _CALIBRATION + "a point near the margin may fall on the other side of "
                                   "decision_function's 0 (the raw SVM in svm_ agrees with it exactly)",
        "check_class_weight_classifiers": _CALIBRATION + "calibration undoes class weights that push every "
                                          "score to one side (svm_ alone follows them)",
    },
    "RBFSVMClassifier": {
        "check_class_weight_classifiers": _CALIBRATION + "calibration undoes class weights that push every "
                                          "score to one side (svm_ alone follows them)",
    },
}


def _every_head():
    """Each head as make_head configures it (logreg is scikit-learn's own, checked as featx sets it up)."""
    tiny_dense = {"hidden_units": 8, "epochs": 3, "batch_size": 8, "learning_rate": 5e-2, "patience": None, "dropout": 0.0}
    return [make_head("logreg", "none", random_state=0).named_steps["head"], LinearSVMClassifier(random_state=0),
            RBFSVMClassifier(random_state=0), KerasDenseClassifier(random_state=0, **tiny_dense)]


@parametrize_with_checks(_every_head(), expected_failed_checks=lambda head: _EXPECTED_FAILURES.get(
    type(head).__name__, {}))
def test_every_head_passes_sklearn_estimator_checks(estimator, check):
    check(estimator)


# -- the Keras dense head as a scikit-learn estimator -----------------------------
@pytest.mark.keras
def test_dense_head_same_seed_same_predictions_and_string_labels(two_classes):
    X, y = two_classes
    labels = np.array(["cat", "dog"])[y]
    first = KerasDenseClassifier(random_state=7, **FAST_DENSE).fit(X, labels)
    second = KerasDenseClassifier(random_state=7, **FAST_DENSE).fit(X, labels)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    assert set(first.predict(X)) <= {"cat", "dog"}
    np.testing.assert_array_equal(first.classes_, ["cat", "dog"])
    assert first.score(X, labels) > 0.85


@pytest.mark.keras
def test_dense_head_history_and_early_stopping(two_classes):
    X, y = two_classes
    clf = KerasDenseClassifier(hidden_units=(16, 8), dropout=0.2, optimizer="adam", learning_rate=1e-2,
                               epochs=40, batch_size=32, patience=2, random_state=0).fit(X, y)
    assert set(clf.history_) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(clf.history_["val_loss"]) == clf.n_epochs_ == len(clf.history_["loss"])
    assert clf.n_epochs_ < 40  # patience 2 stops a quickly converging head early
    assert clf.history_["loss"][-1] < clf.history_["loss"][0]
    assert [layer.name for layer in clf.model_.layers][1:] == ["dropout_0", "hidden_0", "dropout_1", "hidden_1",
                                                               "output"]
    explicit = KerasDenseClassifier(epochs=2, learning_rate=1e-2, random_state=0).fit(X[:120], y[:120],
                                                                                       validation_data=(X[120:], y[120:]))
    assert len(explicit.history_["val_accuracy"]) == 2


@pytest.mark.tensorflow_only
def test_first_fit_traces_the_train_step_once_with_the_numbers_keras_gives(two_classes, monkeypatch):
    """Keras 3 on TensorFlow creates the optimizer and metric state inside the first trace of the train step
    and then traces it again; featx creates that state beforehand (heads.build_fit_state), for the dense
    head and for the fine-tune and scratch models (training.compile_classifier)."""
    import keras
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    import featx.heads as heads
    from featx.training import compile_classifier

    X, y = two_classes
    traces = []
    train_step = TensorFlowTrainer.train_step
    monkeypatch.setattr(TensorFlowTrainer, "train_step", lambda self, data: traces.append(1) or train_step(self, data))
    built = KerasDenseClassifier(random_state=0, validation_fraction=0.2, **{**FAST_DENSE, "patience": 3}).fit(X, y)
    assert len(traces) == 1
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(2, activation="softmax")])
    compile_classifier(model, heads.make_optimizer("adam", 1e-2))
    model.fit(X, y, epochs=1, verbose=0)
    assert len(traces) == 2

    monkeypatch.setattr(heads, "build_fit_state", lambda *args: None)  # what Keras does on its own
    lazy = KerasDenseClassifier(random_state=0, validation_fraction=0.2, **{**FAST_DENSE, "patience": 3}).fit(X, y)
    assert len(traces) == 4
    assert built.history_ == lazy.history_ and len(built.history_["val_loss"]) == built.n_epochs_ > 1
    np.testing.assert_array_equal(built.predict_proba(X), lazy.predict_proba(X))


def test_dense_head_clone_and_grid_search(two_classes):
    X, y = two_classes
    clf = KerasDenseClassifier(random_state=0, **FAST_DENSE)
    assert clone(clf).get_params() == clf.get_params()
    search = GridSearchCV(make_head("dense", random_state=0, **{**FAST_DENSE, "epochs": 5}),
                          {"head__learning_rate": [1e-5, 1e-2]}, cv=2, refit=False).fit(X, y)
    assert search.best_params_ == {"head__learning_rate": 1e-2}
    assert search.best_score_ > 0.8


@pytest.mark.keras
def test_dense_head_joblib_round_trip_keeps_predictions(tmp_path, three_classes):
    X_train, y_train, X_test, _ = three_classes
    pipe = make_head("dense", random_state=0, **FAST_DENSE).fit(X_train, y_train)
    path = tmp_path / "dense.joblib"
    joblib.dump(pipe, path)
    restored = joblib.load(path)
    np.testing.assert_array_equal(restored.predict_proba(X_test), pipe.predict_proba(X_test))
    assert restored.named_steps["head"].history_ == pipe.named_steps["head"].history_


def test_dense_head_class_weight_and_parameter_errors(two_classes):
    X, y = two_classes
    rare = np.r_[np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:10]]
    X_skewed, y_skewed = X[rare], y[rare]
    plain = KerasDenseClassifier(random_state=0, **FAST_DENSE).fit(X_skewed, y_skewed)
    balanced = KerasDenseClassifier(class_weight="balanced", random_state=0, **FAST_DENSE).fit(X_skewed, y_skewed)
    # weighting the rare class up raises its predicted probability on average
    assert balanced.predict_proba(X)[:, 1].mean() > plain.predict_proba(X)[:, 1].mean()
    with pytest.raises(ValueError, match="optimizer must be one of rmsprop, adam, sgd; got 'adagrad'"):
        KerasDenseClassifier(optimizer="adagrad").fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features"):
        plain.predict(X[:, :3])
