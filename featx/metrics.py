"""Metrics for probabilistic classifiers, bootstrap confidence intervals, McNemar's test.

All functions take labels plus a probability matrix whose columns follow ``classes`` (the
``classes_`` of a fitted head), so binary and multi-class problems go through the same code. The
percentile bootstrap draws its resample indices once as an ``(n_boot, n_samples)`` matrix and
computes every metric for all resamples with array operations (ROC AUC and average precision from
per-sample resample counts over the score order), so 1,000 resamples of 25,000 rows take seconds.

Examples
--------
>>> import numpy as np
>>> from featx.metrics import classification_metrics
>>> proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
>>> m = classification_metrics(["cat", "dog", "cat", "dog"], proba, classes=["cat", "dog"])
>>> m["accuracy"], m["roc_auc"]
(0.5, 0.75)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# scipy.stats and sklearn.metrics are imported where they are used: importing them costs seconds, and
# featx predict imports this module (through featx.artifacts.results) without needing either.

__all__ = ["METRICS", "LOG_LOSS_EPS", "classification_metrics", "bootstrap_ci", "metrics_with_ci", "mcnemar"]

METRICS = ("accuracy", "roc_auc", "average_precision", "log_loss")

# Probabilities are clipped to [eps, 1 - eps] before the log, so one confident mistake costs at most
# -log(1e-15) ~ 34.5 instead of infinity (scikit-learn's historical default; float64 represents 1 - eps).
LOG_LOSS_EPS = 1e-15

# Resamples are processed in chunks of this many index-matrix elements to bound memory (float64 counts).
_CHUNK_ELEMENTS = 4_000_000


def classification_metrics(y_true, proba, classes) -> dict:
    """Accuracy, ROC AUC, average precision and log loss of probabilistic predictions.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels, each one of ``classes``.
    proba : array-like of shape (n_samples, n_classes)
        Predicted probabilities; column ``j`` belongs to ``classes[j]``. A 1-D
        array is read as the probability of ``classes[1]`` (binary).
    classes : array-like of shape (n_classes,)
        Labels in column order (a fitted head's ``classes_``).

    Returns ``accuracy``; ``roc_auc`` and ``average_precision`` (binary: of the positive column;
    multi-class: one-vs-rest macro average; NaN when a class of ``classes`` has no row in ``y_true``);
    ``log_loss`` (clipped at :data:`LOG_LOSS_EPS`); ``n_samples``.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y_index, proba = _prepare(y_true, proba, classes)
    n_classes = proba.shape[1]
    present = np.bincount(y_index, minlength=n_classes) > 0
    result = {"accuracy": float(np.mean(np.argmax(proba, axis=1) == y_index)), "roc_auc": float("nan"),
              "average_precision": float("nan"), "log_loss": float(np.mean(_sample_log_loss(y_index, proba))),
              "n_samples": int(len(y_index))}
    if present.all():
        if n_classes == 2:
            positive = y_index == 1
            result["roc_auc"] = float(roc_auc_score(positive, proba[:, 1]))
            result["average_precision"] = float(average_precision_score(positive, proba[:, 1]))
        else:
            result["roc_auc"] = float(roc_auc_score(y_index, proba, multi_class="ovr", average="macro",
                                                    labels=np.arange(n_classes)))
            one_hot = np.eye(n_classes, dtype=bool)[y_index]
            result["average_precision"] = float(average_precision_score(one_hot, proba, average="macro"))
    return result


def bootstrap_ci(y_true, proba, metric: str | Callable, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                 *, classes=None) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of one metric.

    Parameters
    ----------
    y_true, proba
        As in :func:`classification_metrics`.
    metric : str or callable
        One of :data:`METRICS`, or ``f(y_index, proba) -> float`` where ``y_index`` holds column
        indices (called once per resample).
    n_boot, alpha, seed
        ``n_boot`` resamples drawn with ``seed``; ``1 - alpha`` is the coverage (0.05: a 95% interval).
    classes : array-like, optional
        Labels in column order. When None, ``y_true`` must already be column indices.

    Returns ``(low, high)``. Resamples where the metric is undefined (a class missing, for AUC and
    average precision) are skipped; NaN, NaN when none has a value.
    """
    y_index, proba = _prepare(y_true, proba, classes)
    indices = _resample_indices(len(y_index), n_boot, seed)
    return _interval(_bootstrap_values(y_index, proba, metric, indices), alpha)


def metrics_with_ci(y_true, proba, classes, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Every metric with its bootstrap interval, all from the same resamples.

    Parameters
    ----------
    y_true, proba, classes
        As in :func:`classification_metrics`.
    n_boot, alpha, seed
        As in :func:`bootstrap_ci`.

    Returns a flat dict, ready for a results table: for each metric ``m`` of :data:`METRICS` the keys
    ``m`` (point estimate on all rows), ``m_low`` and ``m_high``; plus ``n_samples`` and ``n_boot``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 200)
    >>> p1 = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.2, 200), 0, 1)
    >>> res = metrics_with_ci(y, np.column_stack([1 - p1, p1]), classes=[0, 1], n_boot=200)
    >>> res["accuracy_low"] <= res["accuracy"] <= res["accuracy_high"]
    True
    """
    point = classification_metrics(y_true, proba, classes)
    y_index, proba = _prepare(y_true, proba, classes)
    indices = _resample_indices(len(y_index), n_boot, seed)
    result: dict = {}
    for name in METRICS:
        low, high = _interval(_bootstrap_values(y_index, proba, name, indices), alpha)
        result.update({name: point[name], f"{name}_low": low, f"{name}_high": high})
    result["n_samples"] = point["n_samples"]
    result["n_boot"] = int(n_boot)
    return result


def _resample_indices(n_samples: int, n_boot: int, seed: int) -> np.ndarray:
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be a positive integer; got {n_boot!r}")
    return np.random.default_rng(seed).integers(0, n_samples, size=(int(n_boot), n_samples))


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1 (0.05 for a 95% interval); got {alpha!r}")
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _bootstrap_values(y_index, proba, metric, indices) -> np.ndarray:
    """The metric on every resample (rows of ``indices``), as a float array."""
    if callable(metric):
        return np.array([metric(y_index[rows], proba[rows]) for rows in indices], dtype=np.float64)
    if metric == "accuracy":
        correct = (np.argmax(proba, axis=1) == y_index).astype(np.float64)
        return correct[indices].mean(axis=1)
    if metric == "log_loss":
        return _sample_log_loss(y_index, proba)[indices].mean(axis=1)
    if metric in ("roc_auc", "average_precision"):
        return _ranking_metric(y_index, proba, metric, indices)
    raise ValueError(f"unknown metric {metric!r}; expected one of {list(METRICS)} or a callable")


def _ranking_metric(y_index, proba, metric, indices) -> np.ndarray:
    """ROC AUC / average precision per resample; binary or one-vs-rest macro."""
    n_boot, n_samples = indices.shape
    n_classes = proba.shape[1]
    columns = [1] if n_classes == 2 else range(n_classes)
    chunk = max(1, _CHUNK_ELEMENTS // n_samples)
    values = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        rows = indices[start:start + chunk]
        # counts[b, i]: how many times row i was drawn in resample b.
        offsets = (np.arange(len(rows)) * n_samples)[:, None]
        counts = np.bincount((rows + offsets).ravel(), minlength=len(rows) * n_samples)
        counts = counts.reshape(len(rows), n_samples).astype(np.float64)
        per_class = [_weighted_binary_ranking(y_index == column, proba[:, column], counts, metric)
                     for column in columns]
        # A resample missing a class has NaN for that class and so for the macro mean (skipped later).
        values[start:start + len(rows)] = np.mean(per_class, axis=0)
    return values


def _weighted_binary_ranking(positive: np.ndarray, score: np.ndarray, counts: np.ndarray, metric: str) -> np.ndarray:
    """ROC AUC or average precision of ``score`` for each row of sample weights ``counts``.

    Rows are grouped by distinct score (ties count half for AUC and share one
    threshold for AP, as in scikit-learn), so each resample costs a few array
    passes instead of a sort.
    """
    order = np.argsort(-score, kind="mergesort")  # descending scores
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    weights = counts[:, order]
    is_pos = positive[order]
    pos = np.add.reduceat(weights * is_pos, starts, axis=1)  # (B, n_thresholds), descending scores
    neg = np.add.reduceat(weights * ~is_pos, starts, axis=1)
    n_pos = pos.sum(axis=1)
    n_neg = neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "roc_auc":
            # negatives ranked strictly below each group + half of the tied ones
            neg_below = n_neg[:, None] - np.cumsum(neg, axis=1)
            auc = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
            return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
        true_pos = np.cumsum(pos, axis=1)
        predicted_pos = true_pos + np.cumsum(neg, axis=1)
        precision = np.divide(true_pos, predicted_pos, out=np.zeros_like(true_pos), where=predicted_pos > 0)
        ap = (pos * precision).sum(axis=1) / n_pos
        return np.where(n_pos > 0, ap, np.nan)


def mcnemar(y_true, pred_a, pred_b) -> dict:
    """McNemar's test: do classifiers A and B make different errors on the same rows?

    Only the discordant rows count: ``n01`` where A is right and B wrong, ``n10`` where A is wrong
    and B right. With ``n01 + n10 < 25`` the p-value is the exact two-sided binomial test of ``n01``
    out of ``n01 + n10`` at 1/2 (statistic: ``min(n01, n10)``); otherwise the chi-square statistic
    with continuity correction ``(|n01 - n10| - 1)^2 / (n01 + n10)`` on 1 degree of freedom.
    Returns ``statistic``, ``p_value``, ``n01``, ``n10`` and ``method`` (``"exact"`` or ``"chi2"``).

    Examples
    --------
    >>> y = [1] * 12
    >>> a = [1] * 10 + [0, 0]
    >>> b = [0] * 10 + [1, 1]
    >>> round(mcnemar(y, a, b)["p_value"], 6)
    0.038574
    """
    from scipy import stats

    y_true, pred_a, pred_b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    if not (y_true.shape == pred_a.shape == pred_b.shape) or y_true.ndim != 1:
        raise ValueError("y_true, pred_a and pred_b must be 1-D and the same length; got shapes "
                         f"{y_true.shape}, {pred_a.shape}, {pred_b.shape}")
    right_a = pred_a == y_true
    right_b = pred_b == y_true
    n01 = int(np.sum(right_a & ~right_b))
    n10 = int(np.sum(~right_a & right_b))
    n_discordant = n01 + n10
    if n_discordant == 0:
        return {"statistic": 0.0, "p_value": 1.0, "n01": 0, "n10": 0, "method": "exact"}
    if n_discordant < 25:
        p_value = stats.binomtest(n01, n_discordant, 0.5, alternative="two-sided").pvalue
        return {"statistic": float(min(n01, n10)), "p_value": float(min(1.0, p_value)), "n01": n01, "n10": n10,
                "method": "exact"}
    statistic = (abs(n01 - n10) - 1.0) ** 2 / n_discordant
    return {"statistic": float(statistic), "p_value": float(stats.chi2.sf(statistic, df=1)), "n01": n01,
            "n10": n10, "method": "chi2"}


def _prepare(y_true, proba, classes) -> tuple[np.ndarray, np.ndarray]:
    """Labels as column indices and probabilities as a float64 (n_samples, n_classes) matrix."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim == 1:
        proba = np.column_stack([1.0 - proba, proba])
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise ValueError(f"proba must be (n_samples, n_classes) with at least 2 columns; got shape {proba.shape}")
    y_true = np.asarray(y_true)
    if y_true.ndim != 1 or len(y_true) != len(proba):
        raise ValueError(f"y_true must be 1-D with one label per proba row ({len(proba)}); got shape {y_true.shape}")
    if len(y_true) == 0:
        raise ValueError("no predictions to score (0 rows)")
    if classes is None:
        if not np.issubdtype(y_true.dtype, np.integer) or y_true.min() < 0 or y_true.max() >= proba.shape[1]:
            raise ValueError("without classes, y_true must hold column indices 0.."
                             f"{proba.shape[1] - 1}; got labels {np.unique(y_true)[:10].tolist()} "
                             "(pass classes=head.classes_)")
        return y_true.astype(np.intp), proba
    classes = np.asarray(classes)
    if len(classes) != proba.shape[1]:
        raise ValueError(f"classes has {len(classes)} labels but proba has {proba.shape[1]} columns")
    lookup = {label: column for column, label in enumerate(classes.tolist())}
    try:
        y_index = np.fromiter((lookup[label] for label in y_true.tolist()), dtype=np.intp, count=len(y_true))
    except KeyError as err:
        raise ValueError(f"y_true has label {err.args[0]!r} that is not in classes {classes.tolist()}") from None
    return y_index, proba


def _sample_log_loss(y_index: np.ndarray, proba: np.ndarray, eps: float = LOG_LOSS_EPS) -> np.ndarray:
    """Per-row negative log probability of the true class (rows renormalised, then clipped to [eps, 1 - eps])."""
    totals = proba.sum(axis=1, keepdims=True)
    normalised = np.divide(proba, totals, out=np.full_like(proba, 1.0 / proba.shape[1]), where=totals > 0)
    picked = normalised[np.arange(len(y_index)), y_index]
    return -np.log(np.clip(picked, eps, 1.0 - eps))
