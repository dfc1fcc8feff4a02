"""``featx report``: the results of a sweep as ranked tables, statistics and plots.

Reads only what earlier stages wrote into ``experiments/<name>/`` (the sweep's files, and the rows,
predictions, records and per-epoch history of later stages' sub-folders), and writes ``report.md``,
``report.html`` and PNG plots beside them, each under a temporary name renamed into place. What each
file holds: docs/stages.md.

Two rules keep the tables honest. Rows selected under different protocols (``selected_by``: k-fold
CV, val, a training's val-picked epoch) are ranked in separate tables, each by its selection log
loss; test figures never rank anything. A later stage's folder built from another sweep or another
dataset (:func:`stage_staleness`) is listed as stale and not ranked or drawn.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.artifacts import ArtifactError, runs
from featx.artifacts.results import METRICS, SweepSummary, rank_rows
from featx.errors import UserError
from featx.storage import temp_path

__all__ = ["PLOT_FILES", "Experiment", "ReportError", "load_experiment", "write_report", "stage_staleness",
           "plot_families"]

#: Plot file names, keyed as in the dictionary :func:`write_report` returns.
PLOT_FILES = {"roc": "roc.png", "pr": "pr.png", "confusion": "confusion.png",
              "learning_curve": "learning_curve.png", "dense_history": "dense_history.png"}

SWEEP_SOURCE = "sweep"
#: ``selected_by`` of a later stage's rows: val picked the kept epoch (rows of older featx say "val").
STAGE_PROTOCOL = "val-epoch"
_FLOAT_COLUMNS = ("select_accuracy", "select_accuracy_std", "select_log_loss", "fit_seconds", "predict_seconds")
_INT_COLUMNS = ("rank", "config", "n_train", "n_test", "repeats")
# Columns a later stage's results.csv must have; the sweep's own also needs rank and config (its predictions' keys).
_REQUIRED_COLUMNS = ("features", "head", "params", "selected_by", "select_accuracy", "select_log_loss", "accuracy",
                     "accuracy_low", "accuracy_high", "roc_auc", "average_precision", "log_loss", "fit_seconds")
_SWEEP_COLUMNS = ("rank", "config", *_REQUIRED_COLUMNS)


class ReportError(UserError):
    """The experiment folder cannot be reported on; the message names the file and the fix."""


@dataclass
class Experiment:
    """What the earlier stages wrote into one experiment folder, ranked per protocol.

    ``tables`` holds one ``(protocol, rows)`` pair per selection protocol (``selected_by``; a later
    stage's rows are :data:`STAGE_PROTOCOL`), the table holding the sweep's best first; each table's
    rows best first by :func:`~featx.artifacts.results.rank_rows`. ``rows`` is every ranked row, table
    after table: the ``results.csv`` columns (numbers as numbers, ``params`` as a dict) plus ``source``
    (``"sweep"`` or the sub-folder name), ``protocol``, ``table_rank`` (1 = best of its table),
    ``label`` (features, disambiguated when two caches share a name), ``family`` (what the plots
    compare: a feature set, the ensemble, fine-tuned, from scratch), ``proba`` (test probabilities in
    the order of ``y_test``, or None), ``history`` (per-epoch dense-head history or None) and, for a
    later stage, ``run`` (its ``state.json``, or None). ``stale`` lists the later stages' folders left
    out, each ``{"source", "reason", "fix"}``. ``summary`` is the sweep's ``results.json``;
    ``stage_histories`` the columns of ``<stage>/history.csv`` of the stages ranked (``epoch`` counts
    finished epochs: the fine-tune's epoch 0 is its warm start); ``sources`` the sweep and those stages.
    """

    directory: Path
    rows: list[dict]
    summary: SweepSummary
    label_names: list[str]
    y_test: np.ndarray
    stage_histories: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[dict]]] = field(default_factory=list)
    stale: list[dict] = field(default_factory=list)

    @property
    def sweep_best(self) -> dict | None:
        """The row of the sweep's saved model (``best.joblib``)."""
        best_config = self.summary.best.get("config")
        return next((row for row in self.rows if row["source"] == SWEEP_SOURCE and row["config"] == best_config),
                    None)

    @property
    def best_with_predictions(self) -> dict | None:
        """The sweep's best row when its test probabilities are known, else the first ranked row that has them."""
        best = self.sweep_best
        if best is not None and best["proba"] is not None:
            return best
        return next((row for row in self.rows if row["proba"] is not None), None)


def load_experiment(experiment_dir: str | os.PathLike) -> Experiment:
    """Read a sweep's results folder ``experiments/<name>`` (and later stages' rows) into an :class:`Experiment`.

    Raises :class:`ReportError` when the folder, or one of the sweep's files in it, is missing or unreadable.
    """
    directory = Path(experiment_dir)
    fix = f"run `featx sweep CACHE.h5 [CACHE.h5 ...] --out {directory}` first"
    if not directory.is_dir():
        raise ReportError(f"{directory}: no such experiment folder; {fix}")
    missing = [name for name in ("results.csv", "results.json", "predictions.npz") if not (directory / name).is_file()]
    if missing:
        raise ReportError(f"{directory}: no sweep results here (missing {', '.join(missing)}); {fix}")
    summary = SweepSummary.read(directory / "results.json")
    label_names = [str(name) for name in summary.label_names]
    sweep_test = _read_predictions(directory / "predictions.npz", fix)
    y_test = sweep_test.y
    if not label_names:
        raise ReportError(f"{directory / 'results.json'} has no label_names; {fix}")

    rows = _read_rows(directory / "results.csv", SWEEP_SOURCE, fix, _SWEEP_COLUMNS)
    histories = summary.histories or {}
    for row in rows:
        row["proba"] = sweep_test.proba.get(row["config"])
        history = histories.get(str(row["config"]))
        row["history"] = {k: [float(v) for v in values] for k, values in history.items()} if history else None
        row["protocol"] = row["selected_by"]
    sources, stage_histories, stale = [SWEEP_SOURCE], {}, []
    for stage_csv in sorted(directory.glob("*/results.csv")):
        stage = stage_csv.parent.name
        if stage.startswith("."):
            continue
        stage_fix = f"re-run the stage that wrote {stage_csv.parent} or move that folder out of {directory}"
        stage_rows = _read_rows(stage_csv, stage, stage_fix, _REQUIRED_COLUMNS)
        stage_test = None
        if (stage_csv.parent / "predictions.npz").is_file():
            stage_test = _read_predictions(stage_csv.parent / "predictions.npz", stage_fix)
        run = _read_run_state(stage_csv.parent)
        reason = stage_staleness(directory, stage, summary, sweep_test, stage_test, run)
        if reason:
            stale.append({"source": stage, "reason": reason, "fix": _stale_fix(directory, stage)})
            continue
        stage_proba = _aligned(stage_test, sweep_test) if stage_test is not None else {}
        for row in stage_rows:
            row["proba"] = stage_proba.get(row.get("config"))
            if row["proba"] is None and len(stage_rows) == 1 and len(stage_proba) == 1:
                # One model, one array (finetune keeps its base config's number but saves config_0).
                row["proba"] = next(iter(stage_proba.values()))
            row["history"] = None
            row["run"] = run
            # Every later stage keeps the epoch val picked; older featx wrote that as plain "val".
            row["protocol"] = STAGE_PROTOCOL if row["selected_by"] in ("", "val") else row["selected_by"]
        rows.extend(stage_rows)
        sources.append(stage)
        history = _read_history(stage_csv.parent / "history.csv", stage_fix)
        if history:
            stage_histories[stage] = history
    _label_features(rows)
    tables = _rank_tables(rows, summary)
    ranked = [row for _, table in tables for row in table]
    return Experiment(directory=directory, rows=ranked, summary=summary, label_names=label_names, y_test=y_test,
                      stage_histories=stage_histories, sources=sources, tables=tables, stale=stale)


def _rank_tables(rows: list[dict], summary: SweepSummary) -> list[tuple[str, list[dict]]]:
    """One ranked table per protocol: the sweep's best's first, then the sweep's others, then the stages'."""
    protocols: list[str] = []
    best_config = summary.best.get("config")
    best = next((r for r in rows if r["source"] == SWEEP_SOURCE and r["config"] == best_config), None)
    if best is not None:
        protocols.append(best["protocol"])
    for row in sorted(rows, key=lambda r: r["source"] != SWEEP_SOURCE):  # stable: sweep rows first
        if row["protocol"] not in protocols:
            protocols.append(row["protocol"])
    tables = []
    for protocol in protocols:
        table = rank_rows([row for row in rows if row["protocol"] == protocol])  # ties: the reading order
        for rank, row in enumerate(table, start=1):
            row["table_rank"] = rank
        tables.append((protocol, table))
    return tables


@dataclass
class _TestSplit:
    """A ``predictions.npz``: test labels, test image paths (None in files that lack them), probabilities by config."""

    y: np.ndarray
    paths: list[str] | None
    proba: dict[int, np.ndarray]


def _aligned(stage: _TestSplit, sweep: _TestSplit) -> dict[int, np.ndarray]:
    """A stage's test probabilities in the row order of the sweep's, or {} when the rows cannot be matched."""
    if stage.paths is not None and sweep.paths is not None:
        position = {path: i for i, path in enumerate(stage.paths)}
        if sorted(position) != sorted(sweep.paths):
            return {}
        order = np.array([position[path] for path in sweep.paths], dtype=np.int64)
        if not np.array_equal(stage.y[order], sweep.y):
            return {}
        return {config: proba[order] for config, proba in stage.proba.items()}
    return stage.proba if np.array_equal(stage.y, sweep.y) else {}


def _read_run_state(folder: Path) -> runs.RunState | None:
    """A stage's ``state.json`` (None when absent or unreadable: the stage then records no origin)."""
    try:
        return runs.RunState.read(folder / "state.json") if (folder / "state.json").is_file() else None
    except ArtifactError:
        return None


def _sweep_manifests(directory: Path, summary: SweepSummary) -> set[str]:
    """The manifest fingerprints (``manifest_sha256``) of the sweep's caches that are still on disk."""
    from featx.cache import open_cache

    found = set()
    for feature_set in summary.feature_sets:
        for cache in feature_set.get("caches", []):
            path = next((c for c in runs.cache_candidates(cache, directory) if c.is_file()), None)
            if path is None:
                continue
            try:
                with open_cache(path) as opened:
                    fingerprint = opened.attrs.get("manifest_sha256")
            except Exception:  # noqa: BLE001 -- an unreadable cache only means the fingerprint is unknown
                continue
            if fingerprint:
                found.add(str(fingerprint))
    return found


def stage_staleness(directory: str | os.PathLike, stage: str, summary: SweepSummary, sweep_test: _TestSplit,
                    stage_test: _TestSplit | None, run: runs.RunState | None) -> str | None:
    """Why a later stage's folder cannot be ranked beside this sweep's rows (None: it can).

    * Scored on other test images than the sweep's (paths and labels, when both files list them).
    * A fine-tune (its ``state.json`` records a sweep config): built from another sweep. With sweep
      ids (``results.json`` ``sweep_id``), the ids differ; for a sweep written before them, the config
      it names is no longer this sweep's (another head, params, preprocessing or cache).
    * A from-scratch run (it records a manifest): trained on another dataset or split, i.e. its
      ``manifest_sha256`` is not that of the sweep's caches (checked when the caches are on disk; the
      test-image check covers the rest).
    * A folder that records neither (no ``state.json`` with ``built_from``) cannot be placed: stale.
    """
    directory = Path(directory)
    if stage_test is not None and stage_test.paths is not None and sweep_test.paths is not None:
        ours, theirs = set(zip(sweep_test.paths, sweep_test.y.tolist())), set(zip(stage_test.paths,
                                                                                  stage_test.y.tolist()))
        if ours != theirs:
            return (f"scored on other test images ({len(theirs)}, {len(ours & theirs)} of them among the sweep's "
                    f"{len(ours)} with the same label)")
    origin = run.built_from if run is not None else None
    if not origin:
        return f"{stage}/state.json records nothing it was built from (written by hand or by an older featx)"
    if "config" in origin:  # a fine-tune of a sweep configuration
        sweep_id = str(getattr(summary, "sweep_id", "") or "")
        built = (f"config {origin['config']} ({origin.get('head')} {origin.get('params')}) on "
                 f"{origin.get('cache')}")
        if sweep_id:
            if origin.get("sweep_id") != sweep_id:
                earlier = f"sweep {origin['sweep_id']}" if origin.get("sweep_id") else "a sweep without an id"
                return f"built from {built} of {earlier}; this folder's sweep is {sweep_id}"
            return None
        row = next((r for r in summary.rows if int(r["config"]) == int(origin["config"])), None)
        if row is None or any(str(row.get(k)) != str(origin.get(k)) for k in ("head", "params", "preprocessing")) \
                or origin.get("cache") not in [Path(c).name for c in str(row.get("caches", "")).split("+")]:
            now = f"{row['head']} {row['params']} on {row['features']}" if row else "absent"
            return f"built from {built}; this sweep's config {origin['config']} is {now}"
        return None
    manifest = origin.get("manifest_sha256")
    if manifest:
        sweep_manifests = _sweep_manifests(directory, summary)
        if sweep_manifests and manifest not in sweep_manifests:
            return (f"trained on manifest {str(manifest)[:12]}, not the one the sweep's caches were made from "
                    f"({', '.join(sorted(m[:12] for m in sweep_manifests))}): another dataset or split")
        if sweep_manifests or (stage_test is not None and stage_test.paths is not None
                               and sweep_test.paths is not None):
            return None
        return "neither the sweep's caches nor the test image lists are here to check it against this sweep"
    return f"{stage}/state.json records an origin featx does not know ({sorted(origin)})"


def _stale_fix(directory: Path, stage: str) -> str:
    if stage == runs.FINETUNE:
        return f"run `featx finetune {directory} --restart` to rebuild it from this sweep, or move it away"
    if stage in (runs.SCRATCH, runs.SCRATCH_TUNED):
        tune = " --tune" if stage == runs.SCRATCH_TUNED else ""
        return (f"run `featx scratch MANIFEST.csv --out {directory}{tune} --restart` on the manifest of the sweep's "
                "caches, or move it away")
    return f"re-run the stage that wrote {directory / stage}, or move it out of {directory}"


def _read_predictions(path: Path, fix: str) -> _TestSplit:
    try:
        with np.load(path, allow_pickle=False) as data:
            y_test = np.asarray(data["y_test"]).astype(int)
            paths = [str(p) for p in data["paths"]] if "paths" in data.files else None
            proba = {int(key.split("_", 1)[1]): np.asarray(data[key], dtype=np.float64)
                     for key in data.files if key.startswith("config_")}
    except (OSError, ValueError, KeyError) as exc:
        raise ReportError(f"{path} is not a readable predictions file with y_test ({exc}); {fix}") from exc
    if paths is not None and len(paths) != len(y_test):
        paths = None  # a damaged list cannot match rows; the labels still can
    return _TestSplit(y_test, paths, proba)


def _read_csv(path: Path, what: str, fix: str) -> tuple[list[str], list[dict]]:
    """The header and the rows of a CSV file; any failure to read it is one :class:`ReportError`."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            return reader.fieldnames or [], list(reader)
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise ReportError(f"{path} is not a readable {what} ({exc}); {fix}") from exc


def _read_rows(path: Path, source: str, fix: str, required: tuple[str, ...]) -> list[dict]:
    columns, raw_rows = _read_csv(path, "results table", fix)
    missing = [c for c in required if c not in columns]
    if missing:
        raise ReportError(f"{path} lacks the results columns {missing} (it has {columns}); {fix}")
    if not raw_rows:
        raise ReportError(f"{path} has a header but no rows; {fix}")
    rows = []
    for line, raw in enumerate(raw_rows, start=2):
        row: dict[str, Any] = dict(raw)
        try:
            for column in _INT_COLUMNS:
                if raw.get(column) not in (None, ""):
                    row[column] = int(float(raw[column]))
            for column in _FLOAT_COLUMNS + tuple(f"{m}{s}" for m in METRICS for s in ("", "_low", "_high", "_std")):
                row[column] = _to_float(raw.get(column))
        except ValueError as exc:
            raise ReportError(f"{path}, line {line}: {exc}; {fix}") from exc
        row["params"] = _parse_params(raw.get("params"))
        row["source"] = source
        rows.append(row)
    return rows


def _parse_params(text: str | None) -> dict | str:
    """The JSON parameters of a row; text that is not a JSON object is shown as it is."""
    try:
        params = json.loads(text) if text else {}
    except ValueError:
        return text
    return params if isinstance(params, dict) else text


def _to_float(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def _read_history(path: Path, fix: str) -> dict[str, list[float]] | None:
    """Numeric columns of a per-epoch CSV (empty cells: NaN); None when the file is absent or empty."""
    if not path.is_file():
        return None
    _, records = _read_csv(path, "history CSV", fix)
    if not records:
        return None
    columns = {}
    for name in records[0]:
        try:
            columns[name] = [_to_float(record[name]) for record in records]
        except (TypeError, ValueError):
            continue  # a non-numeric column (a timestamp, say) is not plotted
    return columns


def _label_features(rows: list[dict]) -> None:
    """Features as named by the sweep, plus a short hash when two caches share that name: the extractor
    spec's (``<dataset>-<extractor>-<spec hash>-<manifest hash>.h5``), or the manifest's when the specs agree."""
    caches_by_name: dict[str, set] = {}
    for row in rows:
        caches_by_name.setdefault(row["features"], set()).add(row.get("caches", ""))

    def hashes(caches: str, part: int) -> str:
        return "+".join((Path(cache).stem.split("-")[part:] or [""])[0] for cache in caches.split("+"))

    for row in rows:
        label, same_name = row["features"], caches_by_name[row["features"]]
        if len(same_name) > 1 and row.get("caches") and row["head"] != "ensemble":
            part = -2 if len({hashes(c, -2) for c in same_name}) == len(same_name) else -1
            label = f"{label} [{hashes(row['caches'], part)}]"
        row["label"] = label


TABLE_HEADER = ("rank", "config", "source", "features", "head", "params", "select log loss", "select accuracy",
                "test accuracy [95% CI]", "ROC AUC", "AP", "test log loss", "fit s")
#: Right-aligned (numeric) columns of the ranked tables.
_NUMERIC = {0, 1, 6, 7, 8, 9, 10, 11, 12}


def format_params(params: dict | str) -> str:
    """``{"head__C": 1.0, "pre_0__n_components": 64}`` -> ``C=1.0, pre_0__n_components=64``; an ensemble's
    ``{"members": [{"config": 3, "weight": 0.6}, ...]}`` -> ``config 3 x0.6, ...``."""
    if isinstance(params, str):
        return params
    members = params.get("members")
    if isinstance(members, list) and all(isinstance(m, dict) and "config" in m for m in members):
        return ", ".join(f"config {m['config']} x{float(m.get('weight', 1.0)):.3g}" for m in members) or "-"
    parts = [f"{name.removeprefix('head__')}={json.dumps(value) if isinstance(value, (list, dict)) else value}"
             for name, value in sorted(params.items())]
    return ", ".join(parts) or "-"


def _number(value: float, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_accuracy(row: dict) -> str:
    """``0.9474 [0.8421, 1.0000]``; with repeats, ``± std`` before the interval."""
    text = _number(row["accuracy"])
    repeats = row.get("repeats")
    if isinstance(repeats, int) and repeats > 1 and not math.isnan(row["accuracy_std"]):
        text += f" ± {row['accuracy_std']:.4f}"
    if not math.isnan(row["accuracy_low"]):
        text += f" [{_number(row['accuracy_low'])}, {_number(row['accuracy_high'])}]"
    return text


def _select_accuracy(row: dict) -> str:
    """``0.9500 ± 0.0120`` (the spread over folds, when the sweep recorded it)."""
    spread = row.get("select_accuracy_std", math.nan)
    text = _number(row["select_accuracy"])
    return text + (f" ± {spread:.4f}" if not math.isnan(spread) and spread > 0 else "")


def epochs_note(row: dict) -> str:
    """A later stage's epochs in words (``kept epoch 0 of 3: the warm start ...; resumed at 2``), from its
    ``state.json`` (or, without one, the ``best_epoch`` its params record)."""
    run = row.get("run")
    warm_start = row["source"] == runs.FINETUNE or row["head"] == "finetune"
    if run is not None:
        return run.epochs_text(warm_start=warm_start)
    params = row["params"] if isinstance(row["params"], dict) else {}
    if "best_epoch" not in params:
        return ""
    text = f"kept epoch {params['best_epoch']}"
    return text + (": the warm start" if warm_start and int(params["best_epoch"]) == 0 else "")


def _stage_params(row: dict) -> str:
    """A later stage's params cell: what it started from, its main settings, its epochs."""
    params = row["params"] if isinstance(row["params"], dict) else {}
    if "base_head" in params:  # a fine-tune
        base = {f"head__{k}" if not k.startswith(("head__", "pre_")) else k: v
                for k, v in (params.get("base_params") or {}).items()} if isinstance(params.get("base_params"),
                                                                                      dict) else {}
        described = (f"from config {row.get('config', '?')} ({params['base_head']} {format_params(base)}); "
                     f"unfreeze {params.get('unfreeze', '?')}, lr {params.get('learning_rate', '?')}")
    else:
        shown = {k: params[k] for k in ("filters", "learning_rate", "dropout", "image_size", "trials")
                 if k in params}
        described = format_params(shown) if shown else format_params(row["params"])
    note = epochs_note(row)
    return f"{described}; {note}" if note else described


def table_cells(row: dict) -> list[str]:
    """One row of a ranked table, in :data:`TABLE_HEADER` order."""
    sweep = row["source"] == SWEEP_SOURCE
    return [str(row["table_rank"]), str(row["config"]) if sweep else "-", row["source"], row["label"], row["head"],
            format_params(row["params"]) if sweep else _stage_params(row), _number(row["select_log_loss"]),
            _select_accuracy(row), format_accuracy(row), _number(row["roc_auc"]), _number(row["average_precision"]),
            _number(row["log_loss"]), _number(row["fit_seconds"], 2)]


def _row_name(row: dict) -> str:
    """Short name of a row for captions: ``config 3 (hog logreg, C=1.0)``, ``finetune (tinycnn+finetune)``."""
    if row["source"] == SWEEP_SOURCE:
        return f"config {row['config']} ({row['label']} {row['head']}, {format_params(row['params'])})"
    return f"{row['source']} ({row['label']})"


def protocol_title(protocol: str, summary: SweepSummary) -> str:
    """The heading of one ranked table: how its rows were selected and what their test figures come from."""
    match = re.fullmatch(r"cv(\d+)", protocol)
    refit = "; each row refit on train + val, then scored on test" if getattr(summary, "refit", "") else ""
    if match:
        where = "train + val" if getattr(summary, "select", "") == "cv" else "train"
        return f"Selected by {match.group(1)}-fold cross-validation on {where}, ranked by out-of-fold log loss{refit}"
    if protocol == "val":
        return f"Selected on val after fitting on train, ranked by val log loss{refit}"
    if protocol == STAGE_PROTOCOL:
        return ("Trained CNNs, fine-tuned and from scratch: val picked each one's kept epoch (so its val figures "
                "flatter it), ranked by val log loss")
    return f"Selected by {protocol} (ranked by its selection log loss)"


def _mcnemar_line(experiment: Experiment) -> str | None:
    result = experiment.summary.mcnemar
    if not result:
        return None
    by_config = {row["config"]: row for row in experiment.rows if row["source"] == SWEEP_SOURCE}
    a, b = by_config.get(result["a"]), by_config.get(result["b"])
    if a is None or b is None:
        return None
    return (f"McNemar, the sweep's best two on test: {_row_name(a)} vs {_row_name(b)}: "
            f"n01 = {result['n01']} (only the first right), n10 = {result['n10']} (only the second right), "
            f"p = {result['p_value']:.4g} ({result.get('method', '')}). "
            + ("The difference is significant at 5%." if result["p_value"] < 0.05
               else "The difference is not significant at 5%."))


def _learning_curve_lines(experiment: Experiment) -> list[str]:
    curve = experiment.summary.learning_curve or []
    lines = [f"{point['n_train']:,} training images: test accuracy {point['test_accuracy']:.4f}" for point in curve]
    if len(curve) >= 2:
        last, before = curve[-1], curve[-2]
        lines.append(f"from {before['n_train']:,} to {last['n_train']:,} images the test accuracy moved by "
                     f"{last['test_accuracy'] - before['test_accuracy']:+.4f}")
    return lines


def _headline(experiment: Experiment) -> list[str]:
    summary = experiment.summary
    sweep_rows = [row for row in experiment.rows if row["source"] == SWEEP_SOURCE]
    lines = [
        (f"Protocol: {summary.protocol or 'see results.json'}; {sweep_rows[0].get('n_train', '?')} "
         f"{'train + val' if getattr(summary, 'refit', '') else 'train'} and "
         f"{len(experiment.y_test)} test images; classes: {', '.join(experiment.label_names)}; "
         f"seed {summary.seed}, {summary.repeats} repeat(s), "
         f"{summary.n_boot} bootstrap resamples for the 95% intervals."),
    ]
    best = experiment.sweep_best
    if best is not None:
        lines.append(f"The sweep's pick (best.joblib): {_row_name(best)}, test accuracy {format_accuracy(best)}.")
    for protocol, table in experiment.tables:
        if table[0]["source"] != SWEEP_SOURCE:
            top = table[0]
            lines.append(f"Best of the trained CNNs (by val log loss): {_row_name(top)}, test accuracy "
                         f"{format_accuracy(top)}" + (f"; {epochs_note(top)}" if epochs_note(top) else "") + ".")
    if experiment.stale:
        lines.append(f"Not ranked (built from another sweep or dataset): "
                     f"{', '.join(item['source'] + '/' for item in experiment.stale)}; see the last section.")
    return lines


def _escape(text: str) -> str:
    """Text as literal Markdown (a table cell's ``|`` included)."""
    for char in "\\|*`":
        text = text.replace(char, "\\" + char)
    return text


def render_markdown(experiment: Experiment, figures: dict[str, str], captions: dict[str, str]) -> str:
    """The report as Markdown; ``figures`` maps plot keys to file names beside the report."""
    lines = [f"# featx report: {_escape(experiment.directory.name)}", ""]
    lines += [f"{_escape(line)}  " for line in _headline(experiment)]
    lines += ["", "## Ranked configurations", "",
              _escape("Each table ranks the rows selected under one protocol, by their selection log loss (lower is "
                      "better); the test columns never rank anything. Selection scores of different tables are not "
                      "comparable; their test columns are, on the same test images.")]
    for protocol, table in experiment.tables:
        lines += ["", f"### {_escape(protocol_title(protocol, experiment.summary))}", "",
                  "| " + " | ".join(TABLE_HEADER) + " |",
                  "|" + "|".join("---:" if i in _NUMERIC else "---" for i in range(len(TABLE_HEADER))) + "|"]
        lines += ["| " + " | ".join(_escape(c) for c in table_cells(row)) + " |" for row in table]

    def section(title: str, paragraphs: list[str], figure: str | None = None) -> None:
        lines.extend(["", f"## {title}", ""])
        paragraphs = [_escape(p) for p in paragraphs]
        lines.extend([f"- {p}" for p in paragraphs] if len(paragraphs) > 1 else paragraphs)
        if figure in figures:
            caption = _escape(captions[figure])
            lines.extend([""] * bool(paragraphs) + [f"![{caption}]({figures[figure]})", "", f"*{caption}*"])

    mcnemar_line = _mcnemar_line(experiment)
    if mcnemar_line:
        section("Best two compared", [mcnemar_line])
    for key, title in (("roc", "ROC curves (test)"), ("pr", "Precision-recall curves (test)"),
                       ("confusion", "Confusion matrix (test)")):
        if key in figures:
            section(title, [], key)
    curve_lines = _learning_curve_lines(experiment)
    if curve_lines:
        section("How many training images?", curve_lines, "learning_curve")
    if "dense_history" in figures:
        section("Training history", [], "dense_history")
    labels = {row.get("caches"): row["label"] for row in experiment.rows}
    feature_lines = [f"{labels.get('+'.join(fs.get('caches', [])), fs['name'])}: "
                     f"{' + '.join(str(d) for d in fs.get('dims', []))} dims from {', '.join(fs.get('caches', []))}"
                     for fs in experiment.summary.feature_sets]
    if feature_lines:
        section("Feature caches", feature_lines)
    if experiment.stale:
        section("Not ranked: built from another sweep or dataset",
                [f"{item['source']}/: {item['reason']}; {item['fix']}." for item in experiment.stale])
    return "\n".join(lines) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}tr:nth-child(even){background:#fafafa}td[style]{font-variant-numeric:tabular-nums}
img{max-width:100%}p>em{color:#555;font-size:0.9em}"""


def render_html(markdown: str, title: str) -> str:
    """``report.md`` as one HTML page (markdown-it-py, CommonMark plus tables; raw HTML off; inline style)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n{body}</body></html>\n")


def _figure(width: float = 6.4, height: float = 4.8):
    """A matplotlib figure on the Agg canvas (the object API: no display, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _curve_inputs(experiment: Experiment, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(true 0/1, score) of the positive class (binary) or of every (row, class) pair (micro-average)."""
    if len(experiment.label_names) == 2:
        return (experiment.y_test == 1).astype(int), proba[:, 1], f"positive class: {experiment.label_names[1]}"
    onehot = np.eye(len(experiment.label_names), dtype=int)[experiment.y_test]
    return onehot.ravel(), proba.ravel(), "micro-average over one-vs-rest; the table's AUC and AP are macro"


def family(row: dict) -> str:
    """What a plot compares a row as: its feature set (``hog``, ``efficientnet_lite0``, ``a+b``), ``ensemble``,
    ``fine-tuned <backbone>``, ``from scratch`` (``tuned``)."""
    if row["source"] == SWEEP_SOURCE:
        return "ensemble" if row["head"] == "ensemble" else row["label"]
    if row["source"] == runs.FINETUNE or row["head"] == "finetune":
        return f"fine-tuned {row['label'].removesuffix('+finetune')}"
    if row["source"] in (runs.SCRATCH, runs.SCRATCH_TUNED):
        return "from scratch" + (" (tuned)" if row["source"] == runs.SCRATCH_TUNED else "")
    return row["source"]


def plot_families(experiment: Experiment, limit: int | None = None) -> list[dict]:
    """The best-ranked row of each family that has test probabilities, in table order (at most ``limit``)."""
    chosen: dict[str, dict] = {}
    for row in experiment.rows:
        if row["proba"] is not None:
            chosen.setdefault(family(row), row)
    return list(chosen.values())[:limit]


def _legend_name(row: dict) -> str:
    """``hog: logreg C=1.0 (config 3)``, ``ensemble of configs 3, 7 (config 9)``, ``fine-tuned tinycnn``."""
    name = family(row)
    if row["source"] != SWEEP_SOURCE:
        return name
    if row["head"] == "ensemble":
        members = row["params"].get("members", []) if isinstance(row["params"], dict) else []
        return f"ensemble of configs {', '.join(str(m.get('config')) for m in members)} (config {row['config']})"
    params = format_params(row["params"])
    params = params if len(params) <= 40 else params[:37] + "..."
    return f"{name}: {row['head']} {params} (config {row['config']})"


def _curve_figure(n_curves: int):
    """A figure for curves whose legend sits below the axes, inside the figure."""
    figure = _figure(7.0, 5.6 + 0.22 * n_curves)
    return figure, figure.add_subplot()


def _place_legend(figure, axes) -> None:
    # Below the axes, inside the figure: constrained layout makes room for it, so nothing is clipped.
    figure.legend(*axes.get_legend_handles_labels(), loc="outside lower center", ncols=1, fontsize=8, frameon=False)


def _curves_caption(rows: list[dict], how: str, what: str) -> str:
    return (f"{what} on the test split ({how}), one curve per family (each feature set's best row, the ensemble, "
            f"fine-tuned, from scratch): {'; '.join(_legend_name(row) for row in rows)}.")


def plot_roc(experiment: Experiment, rows: list[dict]):
    """ROC curves of ``rows`` (each with ``proba``) on the test split; returns the figure and its caption."""
    from sklearn.metrics import roc_auc_score, roc_curve

    figure, axes = _curve_figure(len(rows) + 1)
    how = ""
    for row in rows:
        truth, score, how = _curve_inputs(experiment, row["proba"])
        false_positive, true_positive, _ = roc_curve(truth, score)
        axes.plot(false_positive, true_positive, lw=1.8,
                  label=f"{_legend_name(row)}  AUC {roc_auc_score(truth, score):.4f}")
    axes.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance")
    short = how.split(";")[0]
    axes.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    axes.set_title(f"ROC on {len(experiment.y_test)} test images\n{short}", fontsize=10)
    axes.grid(alpha=0.3)
    _place_legend(figure, axes)
    return figure, _curves_caption(rows, how, "ROC curves")


def plot_precision_recall(experiment: Experiment, rows: list[dict]):
    """Precision-recall curves of ``rows`` on the test split; returns the figure and its caption."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    figure, axes = _curve_figure(len(rows) + 1)
    prevalence, how = None, ""
    for row in rows:
        truth, score, how = _curve_inputs(experiment, row["proba"])
        precision, recall, _ = precision_recall_curve(truth, score)
        axes.step(recall, precision, where="post", lw=1.8,
                  label=f"{_legend_name(row)}  AP {average_precision_score(truth, score):.4f}")
        prevalence = truth.mean()
    if prevalence is not None:
        axes.axhline(prevalence, ls=":", color="grey", lw=1, label=f"chance ({prevalence:.2f})")
    short = how.split(";")[0]
    axes.set(xlabel="recall", ylabel="precision", xlim=(-0.01, 1.01), ylim=(0, 1.02))
    axes.set_title(f"Precision-recall on {len(experiment.y_test)} test images\n{short}", fontsize=10)
    axes.grid(alpha=0.3)
    _place_legend(figure, axes)
    return figure, _curves_caption(rows, how, "Precision-recall curves")


def plot_confusion(experiment: Experiment, row: dict):
    """Confusion matrix (counts, coloured by row share) of one configuration on the test split."""
    from sklearn.metrics import confusion_matrix

    n_classes = len(experiment.label_names)
    predicted = row["proba"].argmax(axis=1)
    counts = confusion_matrix(experiment.y_test, predicted, labels=np.arange(n_classes))
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(4.0 + 0.45 * n_classes, 16.0)
    figure = _figure(side + 1.6, side + 0.6)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the true class")
    if n_classes <= 30:  # past that the numbers no longer fit in their cells
        for true_index in range(n_classes):
            for predicted_index in range(n_classes):
                share, count = shares[true_index, predicted_index], counts[true_index, predicted_index]
                axes.text(predicted_index, true_index, f"{count}\n{share:.0%}" if count else "0",
                          ha="center", va="center", fontsize=9 if n_classes <= 10 else 6,
                          color="white" if share > 0.6 else ("black" if count else "silver"))
    if n_classes <= 60:  # past that, names overlap whatever their size
        ticks = np.arange(n_classes)
        slanted = n_classes > 4
        axes.set_xticks(ticks, experiment.label_names, rotation=45 if slanted else 0,
                        ha="right" if slanted else "center", fontsize=10 if n_classes <= 20 else 6)
        axes.set_yticks(ticks, experiment.label_names, fontsize=10 if n_classes <= 20 else 6)
    accuracy = float(np.mean(predicted == experiment.y_test))
    axes.set(xlabel="predicted", ylabel="true")
    # The figure's title (not the axes'): constrained layout keeps it inside however narrow the matrix is.
    figure.suptitle(f"{_wrap(_legend_name(row), 56)}\ntest accuracy {accuracy:.4f}", fontsize=9)
    return figure, f"Confusion matrix of {_row_name(row)} on the test split (counts; colour: share of the true class)."


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_long_words=False)) or text


def plot_learning_curve(experiment: Experiment):
    """Test accuracy of the sweep's learning-curve configuration against the number of training images."""
    curve = experiment.summary.learning_curve or []
    best = experiment.sweep_best
    if best is not None and best["head"] == "ensemble":  # the sweep draws an ensemble's heaviest member
        members = best["params"].get("members", []) if isinstance(best["params"], dict) else []
        by_config = {row["config"]: row for row in experiment.rows if row["source"] == SWEEP_SOURCE}
        best = by_config.get(members[0]["config"]) if members else None
    sizes = [point["n_train"] for point in curve]
    accuracies = [point["test_accuracy"] for point in curve]
    figure = _figure(6.4, 4.8)
    axes = figure.add_subplot()
    axes.plot(sizes, accuracies, marker="o", lw=1.8)
    for size, accuracy in zip(sizes, accuracies):
        axes.annotate(f"{accuracy:.3f}", (size, accuracy), textcoords="offset points", xytext=(0, 7),
                      ha="center", fontsize=8)
    if len(sizes) > 1 and sizes[-1] / max(sizes[0], 1) >= 8:
        axes.set_xscale("log")
    axes.set_xticks(sizes, [f"{size:,}" for size in sizes])
    axes.minorticks_off()
    low, high = min(accuracies), max(accuracies)
    margin = max(0.02, (high - low) * 0.15)
    axes.set(xlabel="training images", ylabel="test accuracy",
             ylim=(max(0.0, low - margin), min(1.0, high + margin) + 0.01))
    name = _legend_name(best) if best else "the sweep's best configuration"
    figure.suptitle(f"Learning curve\n{_wrap(name, 60)}", fontsize=9)
    axes.grid(alpha=0.3)
    return figure, (f"Test accuracy of {_row_name(best) if best else name}, refit on growing random subsets of "
                    f"its training images ({len(experiment.y_test)} test images).")


def plot_history(experiment: Experiment, rows: list[dict]):
    """Per-epoch loss and accuracy (train solid, val dashed) of dense heads and of the later stages."""
    stage_names = {row["source"]: family(row) for row in experiment.rows if row["source"] != SWEEP_SOURCE}
    series = [(_legend_name(row), row["history"]) for row in rows] + [
        (stage_names.get(stage, stage), history) for stage, history in experiment.stage_histories.items()]
    legend_lines = (len(series) + 3) // 2  # two columns: one entry per series, then train and val
    figure = _figure(11, 4.4 + 0.22 * legend_lines)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    from matplotlib.lines import Line2D

    handles = []
    for index, (name, history) in enumerate(series):
        colour = f"C{index % 10}"
        # A stage's CSV numbers finished epochs; a dense head's Keras history starts after epoch 1.
        n_epochs = len(next(iter(history.values())))
        epochs = np.asarray(history["epoch"] if "epoch" in history else np.arange(1, n_epochs + 1))
        for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
            for prefix, style in (("", "-"), ("val_", "--")):
                values = history.get(prefix + metric)
                if values:
                    axes.plot(epochs[:len(values)], values, style, color=colour, lw=1.6, marker=".")
        handles.append(Line2D([], [], color=colour, lw=1.6, label=name))
    handles += [Line2D([], [], color="grey", ls="-", label="train"), Line2D([], [], color="grey", ls="--", label="val")]
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.set(xlabel="epoch", ylabel=metric, title=metric)
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    warm = " (a fine-tune's epoch 0: its warm start)" if runs.FINETUNE in experiment.stage_histories else ""
    figure.suptitle(f"Training history{warm}", fontsize=10)
    what = ", ".join([f"{len(rows)} dense head(s)"] * bool(rows) + list(experiment.stage_histories))
    return figure, f"Per-epoch loss and accuracy of {what}: train solid, val dashed."


def write_report(experiment_dir: str | os.PathLike, top: int = 8, max_histories: int = 4) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the PNG plots into an experiment folder.

    Parameters
    ----------
    top : int
        Most curves in the ROC and precision-recall plots: one per family (:func:`plot_families`),
        in table order.
    max_histories : int
        Dense heads drawn in ``dense_history.png`` (best first; the ranked stages' ``history.csv`` are added).

    Returns the paths by key: ``markdown``, ``html`` and one per plot written (:data:`PLOT_FILES`); a
    plot without data (no dense head, no learning curve) is left out, and an old file of its name
    removed. Raises :class:`ReportError` when the folder holds no sweep results.
    """
    if top < 1 or max_histories < 0:
        raise ReportError(f"top must be at least 1 and max_histories at least 0; got top={top}, "
                          f"max_histories={max_histories}")
    experiment = load_experiment(experiment_dir)
    directory = experiment.directory
    families = plot_families(experiment, top)
    dense_rows = [row for row in experiment.rows if row["history"]][:max_histories]
    plotters: dict[str, Callable[[], Any]] = {}
    if families:
        plotters["roc"] = lambda: plot_roc(experiment, families)
        plotters["pr"] = lambda: plot_precision_recall(experiment, families)
        plotters["confusion"] = lambda: plot_confusion(experiment, experiment.best_with_predictions)
    if experiment.summary.learning_curve:
        plotters["learning_curve"] = lambda: plot_learning_curve(experiment)
    if dense_rows or experiment.stage_histories:
        plotters["dense_history"] = lambda: plot_history(experiment, dense_rows)

    staged: list[Path] = []  # final paths, each written under its temp_path first
    try:
        figures, captions = {}, {}
        for key, plotter in plotters.items():
            figure, captions[key] = plotter()
            staged.append(directory / PLOT_FILES[key])
            figure.savefig(temp_path(staged[-1]), format="png")
            figures[key] = PLOT_FILES[key]
        markdown = render_markdown(experiment, figures, captions)
        html_page = render_html(markdown, f"featx report: {directory.name}")
        for name, text in (("report.md", markdown), ("report.html", html_page)):
            staged.append(directory / name)
            temp_path(staged[-1]).write_text(text, encoding="utf-8")
        for final in staged:
            os.replace(temp_path(final), final)
    finally:
        for final in staged:
            temp_path(final).unlink(missing_ok=True)
    for key, name in PLOT_FILES.items():
        if key not in figures:
            (directory / name).unlink(missing_ok=True)  # a plot of an earlier report that no longer applies
    return {"markdown": directory / "report.md", "html": directory / "report.html",
            **{key: directory / name for key, name in figures.items()}}
