"""Caches x heads x hyperparameters: select by out-of-fold log loss, ensemble, refit, report on test.

The protocol (README.md, "Heads and the sweep"):

* Selection rows are every labelled non-test row (train + val). ``select="cv"``: stratified k-fold
  cross-validation over them, folds grouped by image content (sha1), so identical images never
  straddle two folds; every configuration gets out-of-fold probabilities for every selection row.
  ``select="val"``: fit on train, probabilities on val (for caches too large for k fits).
  ``"auto"``: CV up to :data:`CV_MAX_ROWS` selection rows, val above (where there is a val split).
* Rows are ranked by selection log loss (a proper scoring rule; accuracy on a few hundred images
  ties), ties broken by accuracy (:func:`featx.artifacts.results.rank_rows`).
* A greedy forward ensemble with replacement (Caruana et al., 2004) over the configurations'
  out-of-fold probabilities, across heads and feature sets, is one more row ranked the same way.
* Every configuration is then refit on all of train + val; the test split only reports. The best
  row's model (a single head, or the ensemble of its refit members) is ``best.joblib``;
  ``refit="all"`` refits it on the test rows too, after they were scored.
* The probability clip of the saved model is chosen from its out-of-fold log loss
  (:data:`CLIP_CANDIDATES`), for ``featx predict``/``evaluate``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from featx import __version__
from featx.artifacts.results import METRICS, SweepBundle, SweepSummary, rank_rows, write_rows_csv
from featx.backend import keras_backend
from featx.features import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, FeatureSet, FeatureSetError, load_feature_set
from featx.progress import Progress

__all__ = ["SweepError", "run_sweep", "SweepResult", "greedy_ensemble", "selection_plan", "SELECTS", "REFITS",
           "CV_MAX_ROWS", "CLIP_CANDIDATES"]

SELECTS = ("auto", "cv", "val")
REFITS = ("train+val", "all")
#: ``select="auto"`` cross-validates up to this many selection rows (train + val), uses val above.
CV_MAX_ROWS = 20_000
#: Rounds of greedy ensemble selection (members are added with replacement; the best round is kept).
ENSEMBLE_ROUNDS = 25
#: Fitted models kept while the sweep runs: the best so far by selection log loss (ensemble candidates).
KEEP_MODELS = 20
#: Probability clips tried on the saved model's out-of-fold probabilities; the lowest log loss wins.
CLIP_CANDIDATES = (1e-15, 1e-6, 1e-5, 1e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2)
# Heads that finetune can write as Dense layers on a CNN; extractors that are no CNN.
_FINETUNABLE_HEADS = ("logreg", "linsvm", "dense")
_CLASSICAL_EXTRACTORS = ("hog", "sift_bovw")


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


def _validate(fs: FeatureSet) -> None:
    """Refuse a feature set that cannot be swept: no labelled training rows, no test split, one class."""
    train, val, test = fs.rows(SPLIT_TRAIN), fs.rows(SPLIT_VAL), fs.rows(SPLIT_TEST)
    where = fs.cache_paths[0]
    if len(train) == 0 and len(val) == 0 and len(test) == 0:
        raise SweepError(f"{where} holds no labelled train, val or test rows (every image is unlabeled): it caches "
                         f"an unlabeled folder, or images scored by featx predict/evaluate; sweep the caches of a "
                         f"labelled folder indexed by featx index (cat.1.jpg names or one folder per label)")
    if len(train) == 0:
        raise SweepError(f"{where} has no train rows; index with smaller --val/--test and rebuild the cache")
    classes = np.unique(fs.y[train])
    if len(classes) < 2:
        only = fs.label_names[classes[0]] if len(classes) and classes[0] >= 0 else "-"
        raise SweepError(f"{where}: the train split has one class only ({only!r}); a classifier needs at "
                         f"least two")
    if len(test) == 0:
        raise SweepError(f"{where} has no test rows (an empty test split); index with --test 0.1 "
                         f"(or more) and rebuild the cache")


def _choose_protocol(feature_sets: Sequence[FeatureSet], select: str, cv: int) -> str:
    """``"cv"`` or ``"val"`` for all feature sets (rows chosen under one protocol are comparable)."""
    if select not in SELECTS:
        raise SweepError(f"--select must be one of {', '.join(SELECTS)}; got {select!r}")
    no_val = [fs.cache_paths[0] for fs in feature_sets if len(fs.rows(SPLIT_VAL)) == 0]
    n_select = max(len(fs.rows(SPLIT_TRAIN)) + len(fs.rows(SPLIT_VAL)) for fs in feature_sets)
    if select == "val" and no_val:
        raise SweepError(f"--select val needs a val split and {no_val[0]} has none; index with --val 0.1 and "
                         f"rebuild the cache, or use --select cv")
    protocol = select if select != "auto" else ("cv" if n_select <= CV_MAX_ROWS or no_val else "val")
    if protocol == "cv":
        for fs in feature_sets:
            dev = np.concatenate([fs.rows(SPLIT_TRAIN), fs.rows(SPLIT_VAL)])
            smallest = int(np.bincount(fs.y[dev]).min()) if len(dev) else 0
            smallest_groups = min(len({_group(fs, i) for i in dev[fs.y[dev] == label]})
                                  for label in np.unique(fs.y[dev]))
            if min(smallest, smallest_groups) < cv:
                raise SweepError(f"{fs.cache_paths[0]}: the smallest class has {min(smallest, smallest_groups)} "
                                 f"distinct train + val images, fewer than --cv {cv}; lower --cv, or use "
                                 f"--select val")
    return protocol


def _group(fs: FeatureSet, row: int) -> str:
    """The duplicate group of a row: its image's sha1, or its path when the cache has no sha1."""
    sha1 = fs.sha1[row] if fs.sha1 else ""
    return sha1 or f"path:{fs.paths[row]}"


def _by_path(fs: FeatureSet, rows: np.ndarray) -> np.ndarray:
    return np.asarray(sorted(rows.tolist(), key=lambda i: fs.paths[i]), dtype=np.int64)


def selection_plan(fs: FeatureSet, protocol: str, cv: int, seeds: Sequence[int]) -> dict:
    """The rows of one feature set under the protocol, each group in image-path order (so every feature set
    of one manifest lines its selection and test rows up the same way).

    ``dev``: train + val (what every row is refit on); ``test``; ``select``: the rows scored for selection
    (``dev`` under CV, val otherwise); ``train``: what is fit for the val scores; ``folds``: per seed,
    each selection row's fold (CV).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    dev = _by_path(fs, np.concatenate([fs.rows(SPLIT_TRAIN), fs.rows(SPLIT_VAL)]))
    plan = {"protocol": protocol, "dev": dev, "test": _by_path(fs, fs.rows(SPLIT_TEST)),
            "train": _by_path(fs, fs.rows(SPLIT_TRAIN)), "folds": [], "n_folds": cv}
    if protocol == "val":
        plan["select"] = _by_path(fs, fs.rows(SPLIT_VAL))
        return plan
    plan["select"] = dev
    groups = np.array([_group(fs, i) for i in dev])
    for seed in seeds:
        fold = np.empty(len(dev), dtype=np.int64)
        splitter = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed)
        for k, (_, held) in enumerate(splitter.split(np.zeros(len(dev)), fs.y[dev], groups)):
            fold[held] = k
        plan["folds"].append(fold)
    return plan


@dataclass
class SweepResult:
    out_dir: Path
    rows: list[dict]
    best: dict
    mcnemar: dict | None
    seconds: float


def _log_loss(y_index: np.ndarray, proba: np.ndarray, eps: float = 1e-15) -> float:
    """The log loss featx.metrics reports (rows renormalised, clipped at ``eps``), without its other metrics."""
    from featx.metrics import _sample_log_loss

    return float(np.mean(_sample_log_loss(y_index, proba, eps)))


def _fit_score(fs: FeatureSet, head: str, params: dict, preprocessing, seed: int, plan: dict,
               seed_index: int) -> dict:
    """One configuration, one seed: selection probabilities, the model refit on train + val, test probabilities."""
    from sklearn.base import clone

    from featx.heads import class_probabilities, make_head

    n_classes = len(fs.label_names)
    model = make_head(head, preprocessing, random_state=seed).set_params(**params)
    select = plan["select"]
    if plan["protocol"] == "cv":
        folds = plan["folds"][seed_index]
        select_proba = np.zeros((len(select), n_classes))
        for k in range(int(folds.max()) + 1):
            held = folds == k
            fold_model = clone(model).fit(fs.X[select[~held]], fs.y[select[~held]])
            select_proba[held] = class_probabilities(fold_model, fs.X[select[held]], n_classes)
            del fold_model
    else:
        train_model = clone(model).fit(fs.X[plan["train"]], fs.y[plan["train"]])
        select_proba = class_probabilities(train_model, fs.X[select], n_classes)
        del train_model
    started = time.perf_counter()
    model.fit(fs.X[plan["dev"]], fs.y[plan["dev"]])
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    test_proba = class_probabilities(model, fs.X[plan["test"]], n_classes)
    predict_seconds = time.perf_counter() - started
    history = getattr(model.steps[-1][1], "history_", None)
    return {"select_proba": select_proba, "test_proba": test_proba, "fit_seconds": fit_seconds,
            "predict_seconds": predict_seconds,
            "history": {k: [float(v) for v in vals] for k, vals in history.items()} if history else None,
            "model": model}


def _selection_scores(y_select: np.ndarray, probas: Sequence[np.ndarray], folds: Sequence[np.ndarray]) -> dict:
    """Selection log loss and accuracy (mean over seeds) and the accuracy's spread (over folds, or seeds)."""
    losses = [_log_loss(y_select, p) for p in probas]
    accuracies = [float(np.mean(p.argmax(axis=1) == y_select)) for p in probas]
    if folds:
        spread = [float(np.mean(p.argmax(axis=1)[f == k] == y_select[f == k]))
                  for p, f in zip(probas, folds) for k in range(int(f.max()) + 1)]
    else:
        spread = accuracies
    return {"select_log_loss": float(np.mean(losses)), "select_accuracy": float(np.mean(accuracies)),
            "select_accuracy_std": float(np.std(spread))}


def _test_columns(y_test: np.ndarray, test_probas: Sequence[np.ndarray], n_classes: int, n_boot: int,
                  seed: int) -> dict:
    from featx.artifacts.results import metric_columns
    from featx.metrics import metrics_with_ci

    classes = np.arange(n_classes)
    return metric_columns([metrics_with_ci(y_test, p, classes, n_boot=n_boot, seed=seed) for p in test_probas])


def _run_config(fs: FeatureSet, head: str, params: dict, preprocessing, seeds: list[int], plan: dict,
                n_boot: int) -> dict:
    runs = [_fit_score(fs, head, params, preprocessing, seed, plan, i) for i, seed in enumerate(seeds)]
    y_select, y_test = fs.y[plan["select"]], fs.y[plan["test"]]
    spec_name = fs.extractors[0]["spec"]["name"] if fs.extractors else ""
    row: dict[str, Any] = {
        "features": fs.name, "caches": "+".join(fs.cache_paths), "head": head,
        "params": json.dumps(_jsonable(params), sort_keys=True),
        "preprocessing": preprocessing if isinstance(preprocessing, str) else ",".join(preprocessing),
        "selected_by": f"cv{plan['n_folds']}" if plan["protocol"] == "cv" else "val",
        "repeats": len(seeds), "n_train": int(len(plan["dev"])), "n_select": int(len(plan["select"])),
        "n_test": int(len(plan["test"])), "refit": "train+val",
        "finetunable": bool(len(fs.cache_paths) == 1 and spec_name not in _CLASSICAL_EXTRACTORS
                            and head in _FINETUNABLE_HEADS)}
    row.update(_selection_scores(y_select, [r["select_proba"] for r in runs], plan["folds"]))
    for key in ("fit_seconds", "predict_seconds"):
        row[key] = float(np.mean([r[key] for r in runs]))
    test_probas = [r["test_proba"] for r in runs]
    row.update(_test_columns(y_test, test_probas, len(fs.label_names), n_boot, seeds[0]))
    return {"row": row, "select_proba": np.mean([r["select_proba"] for r in runs], axis=0),
            "test_probas": test_probas, "history": runs[0]["history"], "model": runs[0]["model"]}


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def greedy_ensemble(probas: Sequence[np.ndarray], y_index: np.ndarray, rounds: int = ENSEMBLE_ROUNDS,
                    eps: float = 1e-15) -> np.ndarray:
    """Greedy forward ensemble selection with replacement (Caruana et al., 2004).

    Each round adds the candidate whose addition gives the equally weighted mean of the chosen
    probabilities the lowest log loss on ``y_index``; the round with the lowest loss is kept.

    Parameters
    ----------
    probas : sequence of arrays (n_samples, n_classes)
        Each candidate's out-of-fold (or held-out) probabilities on the same rows.
    y_index : array of int
        The rows' class indices.

    Returns
    -------
    weights : array (n_candidates,)
        How often each candidate was chosen, divided by the rounds kept (sums to 1).

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0, 1, 0, 1])
    >>> a = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7]])  # wrong on row 1
    >>> b = np.array([[0.4, 0.6], [0.1, 0.9], [0.7, 0.3], [0.2, 0.8]])  # wrong on row 0
    >>> greedy_ensemble([a, b], y).round(2).tolist()
    [0.5, 0.5]
    """
    picked = np.clip(np.stack([p[np.arange(len(y_index)), y_index] for p in probas]), 0.0, 1.0)  # (M, n)
    counts = np.zeros(len(probas), dtype=np.int64)
    total = np.zeros(picked.shape[1])
    best_loss, best_counts = np.inf, counts.copy()
    for r in range(1, rounds + 1):
        losses = -np.mean(np.log(np.clip((total + picked) / r, eps, 1 - eps)), axis=1)
        choice = int(np.argmin(losses))
        counts[choice] += 1
        total += picked[choice]
        if losses[choice] < best_loss - 1e-12:
            best_loss, best_counts = float(losses[choice]), counts.copy()
    return best_counts / best_counts.sum()


def _union_layout(sets: Sequence[FeatureSet]) -> tuple[list[tuple[FeatureSet, int]], list[list[int]]]:
    """The caches of several feature sets side by side, each once: ``(feature set, block)`` per cache in
    column order, and for each feature set the columns of its own features in that layout."""
    layout, starts, columns = [], {}, []
    width = 0
    for fs in sets:
        for block, cache in enumerate(fs.cache_paths):
            if cache not in starts:
                starts[cache] = width
                layout.append((fs, block))
                width += fs.dims[block]
        columns.append([c for cache, dim in zip(fs.cache_paths, fs.dims) for c in range(starts[cache],
                                                                                          starts[cache] + dim)])
    return layout, columns


def _union_matrix(layout: Sequence[tuple[FeatureSet, int]], paths: Sequence[str]) -> np.ndarray:
    """The features of ``paths`` in a union layout (rows found by path in each feature set)."""
    blocks = []
    for fs, block in layout:
        position = {p: i for i, p in enumerate(fs.paths)}
        start = sum(fs.dims[:block])
        rows = np.array([position[p] for p in paths], dtype=np.int64)
        blocks.append(fs.X[rows, start:start + fs.dims[block]])
    return np.hstack(blocks)


def run_sweep(cache_sets: Sequence[Sequence[str | os.PathLike]], out_dir: str | os.PathLike,
              heads: Sequence[str] = ("logreg", "linsvm", "rbfsvm", "dense"), grids: dict | None = None,
              preprocessing: str | Sequence[str] = "standard", cv: int = 5, repeats: int = 1, seed: int = 0,
              n_jobs: int = 1, n_boot: int = 1000, learning_curve: bool = True, progress=None,
              scheduler: str | None = None, report=None, select: str = "auto", refit: str = "train+val",
              ensemble: bool = True) -> SweepResult:
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
    cv : int
        Folds of the cross-validation that selects (``select="cv"``).
    repeats : int
        Seeds per configuration: fold shuffles and model seeds (mean and std in the table).
    select : {"auto", "cv", "val"}
        How configurations are scored for selection (see the module docstring).
    refit : {"train+val", "all"}
        What the saved model is fit on: train + val (every row is), or train + val + test after the
        test split was scored (a final model for a submission; its test figures are the earlier model's).
    ensemble : bool
        Add the greedy ensemble of the configurations as one more row.
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

    from featx.heads import DEFAULT_GRIDS, HEADS, make_head
    from featx.metrics import mcnemar

    started = time.perf_counter()
    if repeats < 1 or n_boot < 1 or cv < 2:
        raise SweepError(f"--repeats and --n-boot must be at least 1, --cv at least 2; got {repeats}, {n_boot}, {cv}")
    if refit not in REFITS:
        raise SweepError(f"--refit must be one of {', '.join(REFITS)}; got {refit!r}")
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise SweepError(f"unknown head(s) {unknown}; choose from {', '.join(HEADS)}")
    grids = {**DEFAULT_GRIDS, **(grids or {})}
    seeds = [seed + i for i in range(repeats)]
    feature_sets = [load_feature_set(paths) for paths in cache_sets]
    label_names = feature_sets[0].label_names
    for fs in feature_sets:
        _validate(fs)
    test_paths = [feature_sets[0].paths[i] for i in _by_path(feature_sets[0], feature_sets[0].rows(SPLIT_TEST))]
    for fs in feature_sets[1:]:
        if fs.label_names != label_names:
            raise SweepError(f"{fs.cache_paths[0]} has labels {fs.label_names}, {feature_sets[0].cache_paths[0]} "
                             f"has {label_names}; sweep caches of one dataset together")
        if [fs.paths[i] for i in _by_path(fs, fs.rows(SPLIT_TEST))] != test_paths:
            raise SweepError(f"{fs.cache_paths[0]} has a different test split from {feature_sets[0].cache_paths[0]}; "
                             f"results would not be comparable: make all caches from one manifest")
    configs = {head: _checked_configs(head, grids[head], preprocessing) for head in heads}
    protocol = _choose_protocol(feature_sets, select, cv)
    plans = [selection_plan(fs, protocol, cv, seeds) for fs in feature_sets]
    from featx.artifacts.runs import STAGE_FOLDERS
    from featx.storage import check_not_busy

    check_not_busy(out_dir, STAGE_FOLDERS, "featx sweep")  # a running finetune/scratch stops us now, not after
    jobs = [(set_index, head, params) for set_index in range(len(feature_sets))
            for head in heads for params in configs[head]]
    progress = progress or Progress()
    progress.start(f"sweep: {len(jobs)} configs x {repeats} seed(s), selected by "
                   f"{f'{cv}-fold CV' if protocol == 'cv' else 'val'}", len(jobs))

    def call(job):
        # Arrays travel as arguments so joblib memory-maps them for workers instead of copying.
        set_index, head, params = job
        return delayed(_run_config)(feature_sets[set_index], head, params, preprocessing, seeds, plans[set_index],
                                    n_boot)

    results: list[dict | None] = [None] * len(jobs)
    models: dict[int, Any] = {}

    def collect(index: int, result: dict) -> None:
        """Keep a result; keep its fitted model only while it is among the best KEEP_MODELS so far."""
        results[index] = result
        models[index] = result.pop("model")
        if len(models) > KEEP_MODELS:
            worst = max(models, key=lambda i: (results[i]["row"]["select_log_loss"], i))
            del models[worst]
        progress.advance(1)

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
                collect(index, result)
    for index in dense:
        function, args, kwargs = call(jobs[index])
        collect(index, function(*args, **kwargs))
    progress.stop()

    rows = [r["row"] for r in results]
    for i, row in enumerate(rows):
        row["config"] = i
    reference, reference_plan = feature_sets[0], plans[0]
    y_select = reference.y[reference_plan["select"]]
    y_test = reference.y[reference_plan["test"]]
    select_paths = [reference.paths[i] for i in reference_plan["select"]]
    ensemble_info = None
    if ensemble and len(jobs) > 1:
        # Candidates: the kept models whose selection rows are the reference's images, in the same order.
        candidates = sorted(i for i in models if [feature_sets[jobs[i][0]].paths[r] for r in
                                                  plans[jobs[i][0]]["select"]] == select_paths)
        if len(candidates) > 1:
            weights = greedy_ensemble([results[i]["select_proba"] for i in candidates], y_select)
            chosen = [(i, float(w)) for i, w in zip(candidates, weights) if w > 0]
            if len(chosen) > 1:
                ensemble_info = _ensemble_row(chosen, results, rows, feature_sets, jobs, reference_plan, y_select,
                                              y_test, len(label_names), n_boot, seeds)
                results.append(ensemble_info["result"])
                rows.append(ensemble_info["result"]["row"])
    ranking = [row["config"] for row in rank_rows(rows)]
    for rank, i in enumerate(ranking, start=1):
        rows[i]["rank"] = rank
    best_index = ranking[0]
    best_row = rows[best_index]
    mcnemar_result = None
    if len(ranking) > 1:
        second = ranking[1]
        pred_a, pred_b = (results[i]["test_probas"][0].argmax(axis=1) for i in (best_index, second))
        mcnemar_result = {"a": best_index, "b": second, **mcnemar(y_test, pred_a, pred_b)}

    # The saved model: the best row's, or the ensemble of its members' refit models; every other model goes.
    is_ensemble = ensemble_info is not None and best_index == ensemble_info["result"]["row"]["config"]
    needed = [m["config"] for m in ensemble_info["members"]] if is_ensemble else [best_index]
    for index in list(models):
        if index not in needed:
            del models[index]
    for index in needed:
        if index not in models:  # only when more than KEEP_MODELS rows tie on selection log loss
            set_index, head, params = jobs[index]
            fs, plan = feature_sets[set_index], plans[set_index]
            models[index] = make_head(head, preprocessing, random_state=seed).set_params(**params).fit(
                fs.X[plan["dev"]], fs.y[plan["dev"]])
    best_single = needed[0]  # an ensemble's members come heaviest first
    clip, clip_losses = _choose_clip(y_select, results[best_index]["select_proba"])
    bundle = _bundle(best_row, best_index, is_ensemble, ensemble_info, models, feature_sets, plans, jobs,
                     preprocessing, label_names, refit, clip, seed)
    curve = None
    if learning_curve:
        set_index, head, params = jobs[best_single]
        curve = _learning_curve(feature_sets[set_index], plans[set_index], head, params, preprocessing, seed)

    out_dir = Path(out_dir)
    sweep_id = _sweep_id(feature_sets, rows, protocol, cv, seeds)
    summary = SweepSummary(
        featx_version=__version__, seed=seed, repeats=repeats, cv=cv, n_boot=n_boot, label_names=label_names,
        feature_sets=[{"name": fs.name, "caches": fs.cache_paths, "dims": fs.dims} for fs in feature_sets],
        protocol=_protocol_text(protocol, cv, reference_plan, best_row, is_ensemble, refit, clip,
                                has_ensemble=ensemble_info is not None),
        rows=rows, best=best_row, mcnemar=mcnemar_result, learning_curve=curve,
        histories={str(i): r["history"] for i, r in enumerate(results) if r.get("history")},
        seconds=time.perf_counter() - started, sweep_id=sweep_id, select=protocol, refit=refit, clip=clip,
        clip_losses={format(eps, "g"): loss for eps, loss in clip_losses.items()},
        ensemble={"members": ensemble_info["members"], "rounds": ENSEMBLE_ROUNDS} if ensemble_info else None)
    _write_outputs(out_dir, rows, summary, bundle, y_test, results, test_paths)
    return SweepResult(out_dir, rows, best_row, mcnemar_result, summary.seconds)


def _ensemble_row(chosen, results, rows, feature_sets, jobs, plan, y_select, y_test, n_classes, n_boot,
                  seeds) -> dict:
    """The ensemble's results row (and its selection/test probabilities) from its members' weights."""
    members = [{"config": i, "weight": round(w, 6), "features": rows[i]["features"], "head": rows[i]["head"],
                "params": rows[i]["params"], "preprocessing": rows[i]["preprocessing"], "caches": rows[i]["caches"]}
               for i, w in sorted(chosen, key=lambda item: (-item[1], item[0]))]
    weights = [m["weight"] for m in members]
    total = sum(weights)
    select_proba = sum(w * results[m["config"]]["select_proba"] for m, w in zip(members, weights)) / total
    test_probas = [sum(w * results[m["config"]]["test_probas"][s] for m, w in zip(members, weights)) / total
                   for s in range(len(seeds))]
    sets = [feature_sets[jobs[m["config"]][0]] for m in members]
    layout, _ = _union_layout(sets)
    caches = [fs.cache_paths[block] for fs, block in layout]
    names = []
    for fs in sets:
        for name in fs.name.split("+"):
            if name not in names:
                names.append(name)
    row = {"features": "+".join(names), "caches": "+".join(caches), "head": "ensemble",
           "params": json.dumps({"members": [{"config": m["config"], "weight": m["weight"]} for m in members]}),
           "preprocessing": "", "selected_by": rows[members[0]["config"]]["selected_by"],
           "repeats": len(seeds), "n_train": rows[members[0]["config"]]["n_train"],
           "n_select": int(len(y_select)), "n_test": int(len(y_test)), "refit": "train+val", "finetunable": False,
           "config": len(rows),
           "fit_seconds": float(sum(rows[m["config"]]["fit_seconds"] for m in members)),
           "predict_seconds": float(sum(rows[m["config"]]["predict_seconds"] for m in members))}
    row.update(_selection_scores(y_select, [select_proba], plan["folds"][:1]))
    row.update(_test_columns(y_test, test_probas, n_classes, n_boot, seeds[0]))
    return {"members": members, "result": {"row": row, "select_proba": select_proba, "test_probas": test_probas,
                                           "history": None}}


def _choose_clip(y_select: np.ndarray, proba: np.ndarray) -> tuple[float, dict]:
    """The clip of :data:`CLIP_CANDIDATES` with the lowest selection log loss (the smallest on ties)."""
    losses = {eps: _log_loss(y_select, proba, eps) for eps in CLIP_CANDIDATES}
    best = min(losses, key=lambda eps: (round(losses[eps], 12), eps))
    return best, losses


def _bundle(best_row, best_index, is_ensemble, ensemble_info, models, feature_sets, plans, jobs, preprocessing,
            label_names, refit, clip, seed) -> SweepBundle:
    """``best.joblib``: the best row's model (refit on test too with ``refit="all"``) and what feeds it."""
    from featx.heads import WeightedEnsemble, make_head

    n_classes = len(label_names)
    if is_ensemble:
        members = ensemble_info["members"]
        sets = [feature_sets[jobs[m["config"]][0]] for m in members]
        layout, columns = _union_layout(sets)
        extractors = [fs.extractors[block] for fs, block in layout]
        dims = [fs.dims[block] for fs, block in layout]
        weights = [m["weight"] for m in members]
        model = WeightedEnsemble.from_fitted([models[m["config"]] for m in members], weights, columns,
                                             np.arange(n_classes))
        fit_on, plan = sets[0], plans[jobs[members[0]["config"]][0]]
        if refit == "all":
            rows = np.concatenate([plan["dev"], plan["test"]])
            unfitted = [make_head(m["head"], preprocessing, random_state=seed).set_params(**json.loads(m["params"]))
                        for m in members]
            X = _union_matrix(layout, [fit_on.paths[i] for i in rows])
            model = WeightedEnsemble(unfitted, weights, columns).fit(X, fit_on.y[rows])
    else:
        set_index, head, params = jobs[best_index]
        fit_on = feature_sets[set_index]
        extractors, dims, members = fit_on.extractors, fit_on.dims, None
        model = models[best_index]
        plan = plans[set_index]
        if refit == "all":
            rows = np.concatenate([plan["dev"], plan["test"]])
            model = make_head(head, preprocessing, random_state=seed).set_params(**params)
            model.fit(fit_on.X[rows], fit_on.y[rows])
    fitted_rows = np.concatenate([plan["dev"], plan["test"]]) if refit == "all" else plan["dev"]
    prior = np.bincount(fit_on.y[fitted_rows], minlength=n_classes) / len(fitted_rows)
    heads = [m["head"] for m in members] if members else [best_row["head"]]  # "dense" is the Keras one
    return SweepBundle(
        model=model, label_names=label_names, extractors=extractors, dims=dims, head=best_row["head"],
        params=json.loads(best_row["params"]), preprocessing=preprocessing if not is_ensemble else "",
        metrics={k: best_row[k] for k in METRICS}, featx_version=__version__, seed=seed, config=best_index,
        class_prior=prior.tolist(), clip=clip, refit="train+val+test" if refit == "all" else "train+val",
        members=members, keras_backend=keras_backend() if "dense" in heads else "")


def _sweep_id(feature_sets, rows, protocol, cv, seeds) -> str:
    """A short hash of what the sweep was (caches, configurations, protocol, seeds): later stages record it,
    and the report marks their folders stale when the experiment's sweep has another."""
    text = json.dumps({"caches": [[Path(p).name for p in fs.cache_paths] for fs in feature_sets],
                       "configs": [[r["features"], r["head"], r["params"], r["preprocessing"]] for r in rows],
                       "protocol": protocol, "cv": cv, "seeds": list(seeds)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _protocol_text(protocol, cv, plan, best_row, is_ensemble, refit, clip, has_ensemble: bool = True) -> str:
    n_select, n_dev, n_test = len(plan["select"]), len(plan["dev"]), len(plan["test"])
    if protocol == "cv":
        chosen = (f"selected by {cv}-fold cross-validation on train + val ({n_select} images; folds stratified "
                  f"and grouped so identical images share a fold), ranked by out-of-fold log loss")
    else:
        chosen = (f"selected on val ({n_select} images) after fitting on train ({len(plan['train'])}), ranked by "
                  f"val log loss")
    ensemble = (f"; a greedy ensemble of the configurations' {'out-of-fold' if protocol == 'cv' else 'val'} "
                f"probabilities is one more row" if has_ensemble else "")
    text = (f"{chosen}{ensemble}; every row refit on train + val ({n_dev} images) and scored on test "
            f"({n_test} images), which no choice sees; saved model: config {best_row['config']} "
            f"({'ensemble' if is_ensemble else best_row['head']}), probabilities clipped at {clip:g} "
            f"(chosen by {'out-of-fold' if protocol == 'cv' else 'val'} log loss)")
    if refit == "all":
        text += ("; refit all: the saved model was then refit on train + val + test, so the test figures come "
                 "from the model before that refit")
    return text


def _learning_curve(fs: FeatureSet, plan: dict, head: str, params: dict, preprocessing, seed: int,
                    fractions=(0.1, 0.25, 0.5, 1.0)) -> list[dict]:
    """Test accuracy of one configuration against the number of training images (train + val)."""
    from featx.heads import class_probabilities, make_head

    dev, test = plan["dev"], plan["test"]
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(dev[fs.y[dev] == label]) for label in np.unique(fs.y[dev])]
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
                            **{f"config_{i}": r["test_probas"][0].astype(np.float32) for i, r in enumerate(results)})
        bundle.write(tmp / "best.joblib")
