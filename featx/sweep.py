"""Caches x heads x hyperparameters: fit, select, evaluate, write the results folder.

Heads are fit on the caches' ``train`` split and each configuration is selected by ``val`` accuracy
(or ``cv``-fold cross-validation on train when there is no val split), ties broken by lower log
loss; the test split only reports. The protocol and the files written (``results.csv``,
``results.json``, ``predictions.npz``, ``best.joblib``) are in README.md, "Heads and the sweep".
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from featx import __version__
from featx.artifacts.results import METRICS, SweepBundle, SweepSummary, rank_rows, write_rows_csv
from featx.features import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, FeatureSet, FeatureSetError, load_feature_set
from featx.progress import Progress

__all__ = ["SweepError", "run_sweep", "SweepResult"]

class SweepError(FeatureSetError):
    """The caches or options cannot be swept as asked; the message says why and how to fix it."""


def _checked_configs(head: str, grid: list[dict], preprocessing) -> list[dict]:
    """The grid's configurations (sklearn's ParameterGrid order), each checked against the head's pipeline
    before any fit."""
    from sklearn.model_selection import ParameterGrid

    from featx.heads import make_head

    try:
        configs = list(ParameterGrid(grid))
        for params in configs:
            make_head(head, preprocessing).set_params(**params)
    except (TypeError, ValueError) as exc:
        raise SweepError(f"the {head} grid {json.dumps(_jsonable(grid))} does not fit the head ({exc}); give "
                         f"--grid as {{\"{head}\": [{{\"head__PARAM\": [values]}}]}} and --preprocessing as "
                         f"standard, l2, pca:N or none") from None
    return configs


def _validate(fs: FeatureSet, cv: int) -> bool:
    """Check the splits; returns True when selection uses val (else CV on train)."""
    train, val, test = fs.rows(SPLIT_TRAIN), fs.rows(SPLIT_VAL), fs.rows(SPLIT_TEST)
    where = fs.cache_paths[0]
    if len(train) == 0:
        raise SweepError(f"{where} has no train rows; index with smaller --val/--test and rebuild the cache")
    if len(test) == 0:
        raise SweepError(f"{where} has no test rows (an empty test split); index with --test 0.1 "
                         f"(or more) and rebuild the cache")
    classes = np.unique(fs.y[train])
    if len(classes) < 2:
        only = fs.label_names[classes[0]] if len(classes) and classes[0] >= 0 else "-"
        raise SweepError(f"{where}: the train split has one class only ({only!r}); a classifier needs at "
                         f"least two")
    if len(val) == 0:
        smallest = np.bincount(fs.y[train]).min()
        if smallest < cv:
            raise SweepError(f"{where}: no val split and the smallest class has {smallest} train images, "
                             f"fewer than --cv {cv}; lower --cv or index with --val 0.1")
        return False
    return True


@dataclass
class SweepResult:
    out_dir: Path
    rows: list[dict]
    best: dict
    mcnemar: dict | None
    seconds: float


def _fit_predict(fs: FeatureSet, head: str, params: dict, preprocessing, seed: int, select_on_val: bool,
                 cv: int) -> dict:
    """One configuration, one seed: selection score, test probabilities, timings."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    from featx.heads import class_probabilities, make_head
    from featx.metrics import classification_metrics

    train, val, test = fs.rows(SPLIT_TRAIN), fs.rows(SPLIT_VAL), fs.rows(SPLIT_TEST)
    model = make_head(head, preprocessing, random_state=seed)
    model.set_params(**params)
    classes = np.arange(len(fs.label_names))
    if not select_on_val:  # cross-validation on train; the final model is fit on all of it below
        folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        scores = []
        for fold_train, fold_test in folds.split(fs.X[train], fs.y[train]):
            fold_model = clone(model).fit(fs.X[train][fold_train], fs.y[train][fold_train])
            proba = class_probabilities(fold_model, fs.X[train][fold_test], len(classes))
            scores.append(classification_metrics(fs.y[train][fold_test], proba, classes))
        select = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    started = time.perf_counter()
    model.fit(fs.X[train], fs.y[train])
    fit_seconds = time.perf_counter() - started
    if select_on_val:
        select = classification_metrics(fs.y[val], class_probabilities(model, fs.X[val], len(classes)), classes)
    started = time.perf_counter()
    test_proba = class_probabilities(model, fs.X[test], len(classes))
    predict_seconds = time.perf_counter() - started
    history = getattr(model.steps[-1][1], "history_", None)
    return {"select_accuracy": float(select["accuracy"]), "select_log_loss": float(select["log_loss"]),
            "test_proba": test_proba, "fit_seconds": fit_seconds, "predict_seconds": predict_seconds,
            "history": {k: [float(v) for v in vals] for k, vals in history.items()} if history else None,
            "model": model}


def _run_config(fs: FeatureSet, head: str, params: dict, preprocessing, seeds: list[int],
                select_on_val: bool, cv: int, n_boot: int, keep_model: bool) -> dict:
    from featx.artifacts.results import metric_columns
    from featx.metrics import metrics_with_ci

    test = fs.rows(SPLIT_TEST)
    classes = np.arange(len(fs.label_names))
    runs = [_fit_predict(fs, head, params, preprocessing, seed, select_on_val, cv) for seed in seeds]
    per_seed = [metrics_with_ci(fs.y[test], r["test_proba"], classes, n_boot=n_boot, seed=seeds[0]) for r in runs]
    row: dict[str, Any] = {"features": fs.name, "caches": "+".join(fs.cache_paths), "head": head,
                           "params": json.dumps(_jsonable(params), sort_keys=True),
                           "preprocessing": preprocessing if isinstance(preprocessing, str) else ",".join(preprocessing),
                           "selected_by": "val" if select_on_val else f"cv{cv}", "repeats": len(seeds),
                           "n_train": int(len(fs.rows(SPLIT_TRAIN))), "n_test": int(len(test))}
    for key in ("select_accuracy", "select_log_loss", "fit_seconds", "predict_seconds"):
        row[key] = float(np.mean([r[key] for r in runs]))
    row.update(metric_columns(per_seed))
    return {"row": row, "test_proba": runs[0]["test_proba"], "history": runs[0]["history"],
            "model": runs[0]["model"] if keep_model else None}


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def run_sweep(cache_sets: Sequence[Sequence[str | os.PathLike]], out_dir: str | os.PathLike,
              heads: Sequence[str] = ("logreg", "linsvm", "rbfsvm", "dense"), grids: dict | None = None,
              preprocessing: str | Sequence[str] = "standard", cv: int = 5, repeats: int = 1, seed: int = 0,
              n_jobs: int = 1, n_boot: int = 1000, learning_curve: bool = True, progress=None,
              scheduler: str | None = None, report=None) -> SweepResult:
    """Sweep heads x grids over each cache set; write the results folder.

    Parameters
    ----------
    cache_sets : list of lists of paths
        Each inner list is swept as one feature matrix (several caches are concatenated).
    out_dir : path
        Results folder (``experiments/<name>``); replaced atomically when it exists.
    heads : sequence of str
        Among ``logreg``, ``linsvm``, ``rbfsvm``, ``dense``.
    grids : dict, optional
        ``{head: [ {param: [values]} ]}``; defaults to :data:`featx.heads.DEFAULT_GRIDS`.
    cv, repeats : int
        Folds for selection when the caches have no val split; seeds per configuration.
    n_jobs : int
        Parallel configurations (classical heads; dense heads run one at a time, Keras
        already uses every core).
    scheduler : str, optional
        Run the classical configurations on a Dask cluster (``tcp://HOST:PORT``, a scheduler
        ``.json`` file, or ``local:N``) through joblib's Dask backend, each feature matrix sent
        to every worker once; ``n_jobs`` is then the cluster's threads. ``report`` gets the
        cluster and dashboard line.
    """
    from joblib import Parallel, delayed

    from featx.heads import DEFAULT_GRIDS, HEADS
    from featx.metrics import mcnemar

    started = time.perf_counter()
    if repeats < 1 or n_boot < 1 or cv < 2:
        raise SweepError(f"--repeats and --n-boot must be at least 1, --cv at least 2; got {repeats}, {n_boot}, {cv}")
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise SweepError(f"unknown head(s) {unknown}; choose from {', '.join(HEADS)}")
    grids = {**DEFAULT_GRIDS, **(grids or {})}
    seeds = [seed + i for i in range(repeats)]
    feature_sets = [load_feature_set(paths) for paths in cache_sets]
    label_names = feature_sets[0].label_names
    test_paths = [feature_sets[0].paths[i] for i in feature_sets[0].rows(SPLIT_TEST)]
    for fs in feature_sets[1:]:
        if fs.label_names != label_names:
            raise SweepError(f"{fs.cache_paths[0]} has labels {fs.label_names}, {feature_sets[0].cache_paths[0]} "
                             f"has {label_names}; sweep caches of one dataset together")
        if [fs.paths[i] for i in fs.rows(SPLIT_TEST)] != test_paths:
            raise SweepError(f"{fs.cache_paths[0]} has a different test split from {feature_sets[0].cache_paths[0]}; "
                             f"results would not be comparable: make all caches from one manifest")

    configs = {head: _checked_configs(head, grids[head], preprocessing) for head in heads}
    jobs = []
    for set_index, fs in enumerate(feature_sets):
        select_on_val = _validate(fs, cv)
        for head in heads:
            jobs.extend((set_index, head, params, select_on_val) for params in configs[head])
    progress = progress or Progress()
    progress.start(f"sweep: {len(jobs)} configs x {repeats} seed(s)", len(jobs))

    def call(job):
        # Arrays travel as arguments so joblib memory-maps them for workers instead of copying.
        set_index, head, params, select_on_val = job
        return delayed(_run_config)(feature_sets[set_index], head, params, preprocessing, seeds, select_on_val,
                                    cv, n_boot, keep_model=True)

    results: list[dict | None] = [None] * len(jobs)
    classical = [i for i, job in enumerate(jobs) if job[1] != "dense"]
    dense = [i for i, job in enumerate(jobs) if job[1] == "dense"]
    if classical:
        if scheduler is not None:  # joblib's Dask backend, the feature sets scattered once
            from featx.distributed import joblib_on_cluster

            on_cluster = joblib_on_cluster(scheduler, scatter=feature_sets, report=report)
            backend = {"n_jobs": -1}  # the cluster's threads; the backend comes from joblib_on_cluster
        else:
            on_cluster = contextlib.nullcontext()
            backend = {"n_jobs": n_jobs, "backend": "loky" if n_jobs != 1 else "sequential"}
        with on_cluster:
            runner = Parallel(return_as="generator", **backend)
            for index, result in zip(classical, runner(call(jobs[i]) for i in classical)):
                results[index] = result
                progress.advance(1)
    for index in dense:
        function, args, kwargs = call(jobs[index])
        results[index] = function(*args, **kwargs)
        progress.advance(1)
    progress.stop()

    rows = [r["row"] for r in results]
    for i, row in enumerate(rows):
        row["config"] = i
    ranking = [row["config"] for row in rank_rows(rows)]
    for rank, i in enumerate(ranking, start=1):
        rows[i]["rank"] = rank
    best_index = ranking[0]
    best_row = rows[best_index]
    best_set, best_head, best_params, _ = jobs[best_index]
    best_fs = feature_sets[best_set]
    y_test = best_fs.y[best_fs.rows(SPLIT_TEST)]
    mcnemar_result = None
    if len(ranking) > 1:
        second = ranking[1]
        pred_a, pred_b = (results[i]["test_proba"].argmax(axis=1) for i in (best_index, second))
        mcnemar_result = {"a": best_index, "b": second, **mcnemar(y_test, pred_a, pred_b)}
    curve = _learning_curve(best_fs, best_head, best_params, preprocessing, seed) if learning_curve else None

    bundle = SweepBundle(
        model=results[best_index]["model"], label_names=label_names, extractors=best_fs.extractors,
        dims=best_fs.dims, head=best_row["head"], params=json.loads(best_row["params"]),
        preprocessing=preprocessing, metrics={k: best_row[k] for k in METRICS}, featx_version=__version__, seed=seed)
    out_dir = Path(out_dir)
    summary = SweepSummary(
        featx_version=__version__, seed=seed, repeats=repeats, cv=cv, n_boot=n_boot, label_names=label_names,
        feature_sets=[{"name": fs.name, "caches": fs.cache_paths, "dims": fs.dims} for fs in feature_sets],
        protocol="fit on train; select by " + ("val accuracy" if best_row["selected_by"] == "val"
                                               else f"{cv}-fold CV accuracy on train") + "; report on test",
        rows=rows, best=best_row, mcnemar=mcnemar_result, learning_curve=curve,
        histories={str(i): r["history"] for i, r in enumerate(results) if r["history"]},
        seconds=time.perf_counter() - started)
    _write_outputs(out_dir, rows, summary, bundle, y_test, results, test_paths)
    return SweepResult(out_dir, rows, best_row, mcnemar_result, summary.seconds)


def _learning_curve(fs: FeatureSet, head: str, params: dict, preprocessing, seed: int,
                    fractions=(0.1, 0.25, 0.5, 1.0)) -> list[dict]:
    """Test accuracy of one configuration against the number of training images."""
    from featx.heads import class_probabilities, make_head

    train, test = fs.rows(SPLIT_TRAIN), fs.rows(SPLIT_TEST)
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(train[fs.y[train] == label]) for label in np.unique(fs.y[train])]
    curve = []
    for fraction in fractions:
        # Stratified, nested subsets; at least 3 images of every class (calibration needs 2 per fold).
        subset = np.sort(np.concatenate([rows[:min(len(rows), max(3, int(round(fraction * len(rows)))))]
                                         for rows in by_class]))
        n = len(subset)
        if curve and n == curve[-1]["n_train"]:
            continue
        model = make_head(head, preprocessing, random_state=seed).set_params(**params)
        model.fit(fs.X[subset], fs.y[subset])
        proba = class_probabilities(model, fs.X[test], len(fs.label_names))
        accuracy = float(np.mean(proba.argmax(axis=1) == fs.y[test]))
        curve.append({"n_train": int(n), "fraction": fraction, "test_accuracy": accuracy})
    return curve


def _write_outputs(out_dir: Path, rows, summary: SweepSummary, bundle: SweepBundle, y_test, results,
                   test_paths) -> None:
    """Publish the experiment folder atomically, under its lock; later stages' folders are kept."""
    from featx.artifacts.runs import STAGE_FOLDERS
    from featx.storage import stage_folder

    # Later stages' folders never move before the new folder is complete (report files are remade).
    with stage_folder(out_dir, keep=STAGE_FOLDERS, what="featx sweep") as tmp:
        write_rows_csv(tmp / "results.csv", sorted(rows, key=lambda r: r["rank"]))
        summary.write(tmp / "results.json")
        np.savez_compressed(tmp / "predictions.npz", y_test=y_test, paths=np.array(test_paths),
                            label_names=np.array(summary.label_names),
                            **{f"config_{i}": r["test_proba"].astype(np.float32) for i, r in enumerate(results)})
        bundle.write(tmp / "best.joblib")
