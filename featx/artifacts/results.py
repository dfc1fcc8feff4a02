"""Result rows and the sweep's records: metric names, ``results.csv`` columns, the one ranking,
the one CSV writer, ``results.json`` (:class:`SweepSummary`) and ``best.joblib`` (:class:`SweepBundle`).

Every stage that scores a model on the test split (``sweep``, ``finetune``, ``scratch``) builds its
row with :func:`metric_columns` and writes it with :func:`write_rows_csv`, so ``report`` reads one
shape whatever made it, and ranks it with :func:`rank_rows` as the sweep does. JSON records are
written by :meth:`featx.artifacts.Record.write`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..metrics import METRICS
from ..storage import atomic_write
from . import ArtifactError, Record

__all__ = ["METRICS", "RESULT_COLUMNS", "metric_columns", "write_rows_csv", "rank_rows", "row_params", "SweepSummary",
           "SweepBundle"]

# Every result row has the test METRICS, each with ``_low``/``_high`` (bootstrap 95% CI) and ``_std``.
RESULT_COLUMNS = ["rank", "config", "features", "head", "params", "preprocessing", "selected_by", "select_log_loss",
                  "select_accuracy", "select_accuracy_std",
                  *[f"{m}{s}" for m in METRICS for s in ("", "_low", "_high", "_std")],
                  "fit_seconds", "predict_seconds", "n_train", "n_select", "n_test", "refit", "finetunable", "repeats",
                  "caches"]


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


def rank_rows(rows: Sequence[Mapping[str, Any]]) -> list:
    """``rows`` best first, the one ranking of featx (sweep and report): lower ``select_log_loss`` (a proper
    scoring rule: out-of-fold or val log loss), ties broken by higher ``select_accuracy``, then by the order
    given; NaN (a row never scored) ranks last. Test figures never enter the ranking.

    Only rows selected under one protocol (one ``selected_by``) are comparable; the report ranks each
    protocol's rows in a table of their own.

    Examples
    --------
    >>> rows = [{"select_accuracy": 0.9, "select_log_loss": 0.3}, {"select_accuracy": 0.8, "select_log_loss": 0.2},
    ...         {"select_accuracy": float("nan"), "select_log_loss": float("nan")},
    ...         {"select_accuracy": 0.95, "select_log_loss": 0.2}]
    >>> [rows.index(r) for r in rank_rows(rows)]
    [3, 1, 0, 2]
    """

    def key(item):
        index, row = item
        accuracy, loss = float(row["select_accuracy"]), float(row["select_log_loss"])
        return (math.inf if math.isnan(loss) else loss, math.inf if math.isnan(accuracy) else -accuracy, index)

    return [row for _, row in sorted(enumerate(rows), key=key)]


def row_params(row: Mapping[str, Any]) -> str:
    """A row's parameters for a table or a summary line; an ensemble's as ``#config:weight`` pairs.

    Examples
    --------
    >>> row_params({"head": "ensemble", "params": '{"members": [{"config": 3, "weight": 0.6}, {"config": 9, "weight": 0.4}]}'})
    '#3:0.60 #9:0.40'
    """
    import json

    if row.get("head") != "ensemble":
        return str(row.get("params", ""))
    members = json.loads(row["params"])["members"]
    return " ".join(f"#{m['config']}:{m['weight']:.2f}" for m in members)


@dataclasses.dataclass
class SweepSummary(Record, kind="sweep_results", version=2, fix="run featx sweep again to write it"):
    """``results.json``: the sweep's rows, protocol, McNemar, learning curve and dense-head histories."""

    label_names: list
    rows: list
    best: dict
    featx_version: str = ""
    seed: int = 0
    repeats: int = 1
    cv: int = 5
    n_boot: int = 0
    feature_sets: list = dataclasses.field(default_factory=list)
    protocol: str = ""
    mcnemar: dict | None = None
    learning_curve: list | None = None
    histories: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    # Since version 2: how the rows were chosen and what the saved model was refit on.
    sweep_id: str = ""
    select: str = ""  # "cv" (k-fold out-of-fold on train + val) or "val" (fit on train, scored on val)
    refit: str = ""  # "train+val", or "all" (the saved model refit on test too, after scoring)
    clip: float = 1e-15  # eps for probabilities of the saved model, chosen by out-of-fold log loss
    clip_losses: dict = dataclasses.field(default_factory=dict)  # eps -> selection log loss of the best model
    ensemble: dict | None = None  # the greedy ensemble's members and weights, when one was built


@dataclasses.dataclass
class SweepBundle(Record, kind="sweep_bundle", version=2,
                  fix="give the best.joblib written by featx sweep (or run featx sweep again)"):
    """``best.joblib``: the sweep's fitted head with the extractor spec(s) and learned state that feed it.

    A joblib pickle (the head is a scikit-learn Pipeline) of :meth:`to_dict`, so it carries the same
    schema header as the JSON records; a bundle written before the header existed reads as version 0.
    ``model`` is a fitted Pipeline whose classes are indices into ``label_names``; ``extractors``
    holds one entry (spec, state, cache, dataset) per feature block, in column order, and ``dims``
    the width of each block. Only load bundles you trust: unpickling runs code.
    """

    model: Any
    label_names: list
    extractors: list
    dims: list
    head: str = "head"
    params: dict = dataclasses.field(default_factory=dict)
    preprocessing: Any = "standard"
    metrics: dict = dataclasses.field(default_factory=dict)
    featx_version: str = ""
    seed: int = 0
    # Since version 2.
    config: int | None = None  # the results row the model is (results.csv ``config``)
    class_prior: list | None = None  # label frequencies of the rows the model was fit on
    clip: float = 1e-15  # probabilities are clipped to [clip, 1 - clip] (chosen by out-of-fold log loss)
    refit: str = "train"  # the rows the model was fit on: "train" (version 1), "train+val" or "all"
    members: list | None = None  # an ensemble's members: config, head, params, caches, weight
    keras_backend: str = ""  # the Keras backend a dense head was trained on ("": no Keras model inside)

    @classmethod
    def from_dict(cls, data: Any, where: str = "the bundle") -> "SweepBundle":
        bundle = super().from_dict(data, where)
        if not bundle.extractors or len(bundle.extractors) != len(bundle.dims):
            raise ArtifactError(f"{where} lists {len(bundle.extractors)} extractor(s) but {len(bundle.dims)} "
                                f"feature block size(s); the bundle is damaged: run featx sweep again")
        return bundle

    def write(self, path: str | os.PathLike) -> Path:
        import joblib

        return atomic_write(path, lambda tmp: joblib.dump(self.to_dict(), tmp))

    @classmethod
    def read(cls, path: str | os.PathLike) -> "SweepBundle":
        import pickle

        import joblib

        path = Path(path)
        try:
            data = joblib.load(path)
        except FileNotFoundError:
            raise ArtifactError(f"{path} does not exist; {cls.FIX}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, OSError) as exc:
            raise ArtifactError(f"{path} is not a readable joblib file ({type(exc).__name__}: {exc}); "
                                f"{cls.FIX}") from None
        return cls.from_dict(data, str(path))
