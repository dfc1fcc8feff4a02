"""Result rows: the metric names, the columns of ``results.csv``, and the one CSV writer.

Every stage that scores a model on the test split (``sweep``, ``finetune``, ``scratch``) builds its
row with :func:`metric_columns` and writes it with :func:`write_rows_csv`, so ``report`` reads one
shape whatever made it.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Iterable, Mapping, Sequence

from ..storage import atomic_write

__all__ = ["METRICS", "RESULT_COLUMNS", "metric_columns", "write_rows_csv"]

#: Test metrics of every result row, each with ``_low``/``_high`` (bootstrap 95% CI) and ``_std``.
METRICS = ("accuracy", "roc_auc", "average_precision", "log_loss")

RESULT_COLUMNS = ["rank", "config", "features", "head", "params", "preprocessing", "selected_by", "select_accuracy",
                  "select_log_loss", *[f"{m}{s}" for m in METRICS for s in ("", "_low", "_high", "_std")],
                  "fit_seconds", "predict_seconds", "n_train", "n_test", "repeats", "caches"]


def metric_columns(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The metric columns of a row from one or more seeds' :func:`featx.metrics.metrics_with_ci`.

    Mean and standard deviation over seeds; the interval of the first seed. An empty mapping (no
    test images) gives NaN everywhere.
    """
    import numpy as np

    columns: dict[str, float] = {}
    for metric in METRICS:
        values = [float(m.get(metric, float("nan"))) for m in per_seed]
        columns[metric] = float(np.mean(values))
        columns[f"{metric}_std"] = float(np.std(values))
        columns[f"{metric}_low"] = float(per_seed[0].get(f"{metric}_low", float("nan")))
        columns[f"{metric}_high"] = float(per_seed[0].get(f"{metric}_high", float("nan")))
    return columns


def write_rows_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
                   columns: Sequence[str] = RESULT_COLUMNS) -> None:
    """Write dict rows as CSV (``results.csv`` by default), atomically: floats to 6 significant
    digits, None empty, keys outside ``columns`` ignored."""

    def write(tmp) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    atomic_write(path, write)
