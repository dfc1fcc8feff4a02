"""featx.metrics on small inputs whose answers are known by hand or from scikit-learn."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from featx.metrics import (LOG_LOSS_EPS, bootstrap_ci, classification_metrics, mcnemar, metrics_with_ci)


def noisy_binary(n, seed=0, noise=0.25):
    """Labels 0/1 and a probability matrix that is informative but imperfect."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, noise, n), 0.01, 0.99)
    return y, np.column_stack([1 - p1, p1])


def noisy_multiclass(n, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(0, 1.0, (n, n_classes))
    logits[np.arange(n), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


# -- point metrics --------------------------------------------------------
def test_binary_metrics_by_hand_with_string_labels():
    y = ["cat", "dog", "cat", "dog"]
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    m = classification_metrics(y, proba, classes=["cat", "dog"])
    # predictions: cat, dog, dog, cat -> 2 of 4 right
    assert m["accuracy"] == 0.5
    # positive (dog) scores 0.8, 0.3 vs negatives 0.1, 0.6: pairs won 0.8>0.1, 0.8>0.6, 0.3>0.1 -> 3/4
    assert m["roc_auc"] == pytest.approx(0.75)
    # ranking 0.8(+) 0.6(-) 0.3(+) 0.1(-): AP = 1/2 * 1 + 1/2 * 2/3
    assert m["average_precision"] == pytest.approx(0.5 + 1 / 3)
    expected_log_loss = -np.mean(np.log([0.9, 0.8, 0.4, 0.3]))
    assert m["log_loss"] == pytest.approx(expected_log_loss)
    assert m["n_samples"] == 4


def test_binary_auc_and_ap_equal_sklearn_and_accept_a_1d_positive_column():
    y, proba = noisy_binary(500, seed=3)
    m = classification_metrics(y, proba, classes=[0, 1])
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, proba[:, 1]))
    assert m["average_precision"] == pytest.approx(average_precision_score(y, proba[:, 1]))
    assert classification_metrics(y, proba[:, 1], classes=[0, 1]) == m


def test_multiclass_metrics_equal_sklearn_one_vs_rest_macro():
    y, proba = noisy_multiclass(400, n_classes=4, seed=1)
    m = classification_metrics(y, proba, classes=np.arange(4))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    per_class_ap = [average_precision_score(y == k, proba[:, k]) for k in range(4)]
    assert m["average_precision"] == pytest.approx(np.mean(per_class_ap))
    assert m["accuracy"] == pytest.approx(np.mean(proba.argmax(axis=1) == y))
    assert 0.5 < m["roc_auc"] < 1.0


def test_log_loss_is_clipped_for_a_confident_mistake():
    m = classification_metrics([1, 0], np.array([[1.0, 0.0], [1.0, 0.0]]), classes=[0, 1])
    # row 0 is certain and wrong: costs -log(eps) instead of infinity; row 1 costs -log(1 - eps) ~ 0
    assert m["log_loss"] == pytest.approx(-math.log(LOG_LOSS_EPS) / 2, rel=1e-9)


def test_metrics_reject_labels_outside_classes():
    with pytest.raises(ValueError, match="'bird'.*not in classes"):
        classification_metrics(["cat", "bird"], np.full((2, 2), 0.5), classes=["cat", "dog"])


# -- bootstrap --------------------------------------------------------------
def test_vectorised_bootstrap_matches_sklearn_resample_by_resample():
    # ties included: scores rounded to one decimal
    y, proba = noisy_binary(120, seed=5)
    proba = np.round(proba, 1)

    def sklearn_auc(y_index, p):
        return roc_auc_score(y_index, p[:, 1])

    def sklearn_ap(y_index, p):
        return average_precision_score(y_index, p[:, 1])

    # a callable metric runs per resample with plain sklearn; the named metric is the vectorised path
    for name, reference in (("roc_auc", sklearn_auc), ("average_precision", sklearn_ap)):
        fast = bootstrap_ci(y, proba, name, n_boot=300, seed=4)
        slow = bootstrap_ci(y, proba, reference, n_boot=300, seed=4)
        assert fast == pytest.approx(slow, abs=1e-12)


def test_bootstrap_interval_contains_estimate_and_narrows_with_more_data():
    widths = []
    for n in (200, 3200):
        y, proba = noisy_binary(n, seed=7)
        result = metrics_with_ci(y, proba, classes=[0, 1], n_boot=400, seed=0)
        for name in ("accuracy", "roc_auc", "average_precision", "log_loss"):
            assert result[f"{name}_low"] <= result[name] <= result[f"{name}_high"], name
        widths.append(result["accuracy_high"] - result["accuracy_low"])
    # 16x the rows: the standard error shrinks ~4x
    assert widths[1] < widths[0] / 2.5


def test_bootstrap_is_deterministic_for_a_seed_and_changes_with_it():
    y, proba = noisy_binary(300, seed=2)
    first = bootstrap_ci(y, proba, "accuracy", n_boot=500, seed=1)
    assert bootstrap_ci(y, proba, "accuracy", n_boot=500, seed=1) == first
    assert bootstrap_ci(y, proba, "accuracy", n_boot=500, seed=2) != first


def test_bootstrap_skips_single_class_resamples_for_auc():
    # one positive in 12 rows: about (11/12)^12 ~ 35% of resamples have no positive at all
    y = np.array([1] + [0] * 11)
    scores = np.linspace(0.9, 0.1, 12)
    low, high = bootstrap_ci(y, np.column_stack([1 - scores, scores]), "roc_auc", n_boot=300, seed=0)
    assert np.isfinite(low) and np.isfinite(high)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)  # the positive always ranks first
    only_negatives = bootstrap_ci(np.zeros(5, dtype=int), np.full((5, 2), 0.5), "roc_auc", n_boot=50)
    assert all(math.isnan(v) for v in only_negatives)


def test_multiclass_bootstrap_with_string_labels():
    y, proba = noisy_multiclass(600, n_classes=3, seed=4)
    names = np.array(["bird", "cat", "dog"])
    result = metrics_with_ci(names[y], proba, classes=names, n_boot=200, seed=0)
    assert result["roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))
    assert result["roc_auc_low"] < result["roc_auc"] < result["roc_auc_high"]
    assert result["n_boot"] == 200 and result["n_samples"] == 600


def test_bootstrap_callable_sees_column_indices():
    y, proba = noisy_binary(100, seed=9)
    low, high = bootstrap_ci(np.where(y == 1, "dog", "cat"), proba, lambda yi, p: yi.mean(), n_boot=200,
                             classes=["cat", "dog"])
    assert low < y.mean() < high


# -- McNemar ----------------------------------------------------------------
def test_mcnemar_exact_binomial_by_hand():
    # A right / B wrong on 10 rows, the reverse on 2, both right on 5
    y = np.ones(17, dtype=int)
    pred_a = np.array([1] * 10 + [0] * 2 + [1] * 5)
    pred_b = np.array([0] * 10 + [1] * 2 + [1] * 5)
    result = mcnemar(y, pred_a, pred_b)
    # two-sided exact: 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert result["p_value"] == pytest.approx(2 * 79 / 4096)
    assert (result["n01"], result["n10"], result["method"]) == (10, 2, "exact")
    assert result["statistic"] == 2


def test_mcnemar_chi_square_with_continuity_correction_by_hand():
    y = np.zeros(50, dtype=int)
    pred_a = np.array([0] * 30 + [1] * 10 + [0] * 10)
    pred_b = np.array([1] * 30 + [0] * 10 + [0] * 10)
    result = mcnemar(y, pred_a, pred_b)
    statistic = (abs(30 - 10) - 1) ** 2 / 40  # 9.025
    assert result["method"] == "chi2"
    assert result["statistic"] == pytest.approx(statistic)
    # chi-square with 1 dof: P(chi2 > s) = erfc(sqrt(s / 2))
    assert result["p_value"] == pytest.approx(math.erfc(math.sqrt(statistic / 2)))


def test_mcnemar_identical_classifiers_have_p_one():
    y = np.array([0, 1, 1, 0])
    assert mcnemar(y, y, y) == {"statistic": 0.0, "p_value": 1.0, "n01": 0, "n10": 0, "method": "exact"}


def test_mcnemar_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        mcnemar([0, 1], [0, 1, 1], [0, 1])
