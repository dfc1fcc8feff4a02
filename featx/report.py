"""``featx report``: the results of a sweep as a ranked table, statistics and plots.

Reads only what earlier stages wrote into ``experiments/<name>/`` (the sweep's files, and the rows,
predictions and per-epoch history of later stages' sub-folders, ranked together with the sweep's),
and writes ``report.md``, ``report.html`` and PNG plots beside them, each under a temporary name
renamed into place. What each file holds: docs/stages.md.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.artifacts.results import METRICS, SweepSummary, rank_rows
from featx.errors import UserError
from featx.storage import temp_path

__all__ = ["PLOT_FILES", "Experiment", "ReportError", "load_experiment", "write_report"]

#: Plot file names, keyed as in the dictionary :func:`write_report` returns.
PLOT_FILES = {"roc": "roc.png", "pr": "pr.png", "confusion": "confusion.png",
              "learning_curve": "learning_curve.png", "dense_history": "dense_history.png"}

SWEEP_SOURCE = "sweep"
_FLOAT_COLUMNS = ("select_accuracy", "select_log_loss", "fit_seconds", "predict_seconds")
_INT_COLUMNS = ("rank", "config", "n_train", "n_test", "repeats")
# Columns a later stage's results.csv must have; the sweep's own also needs rank and config (its predictions' keys).
_REQUIRED_COLUMNS = ("features", "head", "params", "selected_by", "select_accuracy", "select_log_loss", "accuracy",
                     "accuracy_low", "accuracy_high", "roc_auc", "average_precision", "log_loss", "fit_seconds")
_SWEEP_COLUMNS = ("rank", "config", *_REQUIRED_COLUMNS)


class ReportError(UserError):
    """The experiment folder cannot be reported on; the message names the file and the fix."""


@dataclass
class Experiment:
    """What the earlier stages wrote into one experiment folder, ranked.

    ``rows`` holds every configuration, sweep and later stages together, best first: the
    ``results.csv`` columns (numbers as numbers, ``params`` as a dict) plus ``source`` (``"sweep"`` or
    the sub-folder name), ``overall_rank`` (1 = best), ``label`` (features, disambiguated when two
    caches share a name), ``proba`` (test probabilities or None) and ``history`` (per-epoch dense-head
    history or None). ``summary`` is the sweep's ``results.json``; ``y_test`` the test labels (indices
    into ``label_names``) in the row order of every ``proba``; ``stage_histories`` the columns of
    ``<stage>/history.csv`` by stage name (``epoch`` counts finished epochs: the fine-tune's epoch 0
    is its warm start); ``sources`` the sweep and the stages that gave rows.
    """

    directory: Path
    rows: list[dict]
    summary: SweepSummary
    label_names: list[str]
    y_test: np.ndarray
    stage_histories: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    @property
    def best_with_predictions(self) -> dict | None:
        """The best-ranked row whose test probabilities are known (plots need them)."""
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
    y_test, sweep_proba = _read_predictions(directory / "predictions.npz", fix)
    if not label_names:
        raise ReportError(f"{directory / 'results.json'} has no label_names; {fix}")

    rows = _read_rows(directory / "results.csv", SWEEP_SOURCE, fix, _SWEEP_COLUMNS)
    histories = summary.histories or {}
    for row in rows:
        row["proba"] = sweep_proba.get(row["config"])
        history = histories.get(str(row["config"]))
        row["history"] = {k: [float(v) for v in values] for k, values in history.items()} if history else None
    sources, stage_histories = [SWEEP_SOURCE], {}
    for stage_csv in sorted(directory.glob("*/results.csv")):
        stage = stage_csv.parent.name
        if stage.startswith("."):
            continue
        stage_fix = f"re-run the stage that wrote {stage_csv.parent} or move that folder out of {directory}"
        stage_rows = _read_rows(stage_csv, stage, stage_fix, _REQUIRED_COLUMNS)
        stage_proba = {}
        if (stage_csv.parent / "predictions.npz").is_file():
            stage_y, stage_proba = _read_predictions(stage_csv.parent / "predictions.npz", stage_fix)
            if not np.array_equal(stage_y, y_test):
                stage_proba = {}  # another test split: its curves would not be comparable
        for row in stage_rows:
            row["proba"] = stage_proba.get(row.get("config"))
            if row["proba"] is None and len(stage_rows) == 1 and len(stage_proba) == 1:
                # One model, one array (finetune keeps its base config's number but saves config_0).
                row["proba"] = next(iter(stage_proba.values()))
            row["history"] = None
        rows.extend(stage_rows)
        sources.append(stage)
        history = _read_history(stage_csv.parent / "history.csv", stage_fix)
        if history:
            stage_histories[stage] = history
    rows[:] = rank_rows(rows)  # ties keep the reading order: the sweep first, then later stages
    for rank, row in enumerate(rows, start=1):
        row["overall_rank"] = rank
    _label_features(rows)
    return Experiment(directory=directory, rows=rows, summary=summary, label_names=label_names, y_test=y_test,
                      stage_histories=stage_histories, sources=sources)


def _read_predictions(path: Path, fix: str) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            y_test = np.asarray(data["y_test"]).astype(int)
            proba = {int(key.split("_", 1)[1]): np.asarray(data[key], dtype=np.float64)
                     for key in data.files if key.startswith("config_")}
    except (OSError, ValueError, KeyError) as exc:
        raise ReportError(f"{path} is not a readable predictions file with y_test ({exc}); {fix}") from exc
    return y_test, proba


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
    """Features as named by the sweep, plus the cache's hash when two caches share that name."""
    caches_by_name: dict[str, set] = {}
    for row in rows:
        caches_by_name.setdefault(row["features"], set()).add(row.get("caches", ""))
    for row in rows:
        label = row["features"]
        if len(caches_by_name[label]) > 1 and row.get("caches"):
            hashes = [Path(cache).stem.rsplit("-", 1)[-1] for cache in row["caches"].split("+")]
            label = f"{label} [{'+'.join(hashes)}]"
        row["label"] = label


TABLE_HEADER = ("rank", "source", "features", "head", "params", "selected by", "test accuracy [95% CI]",
                "ROC AUC", "AP", "log loss", "fit s")


def format_params(params: dict | str) -> str:
    """``{"head__C": 1.0, "pre_0__n_components": 64}`` -> ``C=1.0, pre_0__n_components=64``."""
    if isinstance(params, str):
        return params
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


def table_cells(row: dict) -> list[str]:
    """One row of the ranked table, in :data:`TABLE_HEADER` order."""
    return [str(row["overall_rank"]), row["source"], row["label"], row["head"], format_params(row["params"]),
            f"{row['selected_by']} {_number(row['select_accuracy'])}", format_accuracy(row),
            _number(row["roc_auc"]), _number(row["average_precision"]), _number(row["log_loss"]),
            _number(row["fit_seconds"], 2)]


def _row_name(row: dict) -> str:
    """Short name of a configuration for legends and captions."""
    return f"#{row['overall_rank']} {row['label']} {row['head']} ({format_params(row['params'])})"


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
    best = experiment.rows[0]
    sweep_rows = [row for row in experiment.rows if row["source"] == SWEEP_SOURCE]
    lines = [
        (f"Protocol: {summary.protocol or 'see results.json'}; {sweep_rows[0].get('n_train', '?')} train and "
         f"{len(experiment.y_test)} test images; classes: {', '.join(experiment.label_names)}; "
         f"seed {summary.seed}, {summary.repeats} repeat(s), "
         f"{summary.n_boot} bootstrap resamples for the 95% intervals."),
        f"Best: {_row_name(best)}, test accuracy {format_accuracy(best)}.",
    ]
    if len(experiment.sources) > 1:
        lines.append(f"Rows from: {', '.join(experiment.sources)} (ranked together by their selection score).")
    return lines


def _escape(text: str) -> str:
    """Text as literal Markdown (a table cell's ``|`` included)."""
    for char in "\\|*`":
        text = text.replace(char, "\\" + char)
    return text


#: Right-aligned (numeric) columns of the ranked table.
_NUMERIC = {0, 5, 6, 7, 8, 9, 10}


def render_markdown(experiment: Experiment, figures: dict[str, str], captions: dict[str, str]) -> str:
    """The report as Markdown; ``figures`` maps plot keys to file names beside the report."""
    lines = [f"# featx report: {_escape(experiment.directory.name)}", ""]
    lines += [f"{_escape(line)}  " for line in _headline(experiment)]
    lines += ["", "## Ranked configurations", "", "| " + " | ".join(TABLE_HEADER) + " |",
              "|" + "|".join("---:" if i in _NUMERIC else "---" for i in range(len(TABLE_HEADER))) + "|"]
    lines += ["| " + " | ".join(_escape(c) for c in table_cells(row)) + " |" for row in experiment.rows]

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


def plot_roc(experiment: Experiment, rows: list[dict]):
    """ROC curves of ``rows`` (each with ``proba``) on the test split; returns the figure and its caption."""
    from sklearn.metrics import roc_auc_score, roc_curve

    figure = _figure()
    axes = figure.add_subplot()
    for row in rows:
        truth, score, how = _curve_inputs(experiment, row["proba"])
        false_positive, true_positive, _ = roc_curve(truth, score)
        axes.plot(false_positive, true_positive, lw=1.8,
                  label=f"{_row_name(row)}  AUC {roc_auc_score(truth, score):.4f}")
    axes.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
             title=f"ROC on {len(experiment.y_test)} test images ({how})")
    axes.legend(loc="lower right", fontsize=7)
    axes.grid(alpha=0.3)
    return figure, f"ROC curves of the top {len(rows)} configurations on the test split ({how})."


def plot_precision_recall(experiment: Experiment, rows: list[dict]):
    """Precision-recall curves of ``rows`` on the test split; returns the figure and its caption."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    figure = _figure()
    axes = figure.add_subplot()
    prevalence = None
    for row in rows:
        truth, score, how = _curve_inputs(experiment, row["proba"])
        precision, recall, _ = precision_recall_curve(truth, score)
        axes.step(recall, precision, where="post", lw=1.8,
                  label=f"{_row_name(row)}  AP {average_precision_score(truth, score):.4f}")
        prevalence = truth.mean()
    axes.axhline(prevalence, ls=":", color="grey", lw=1, label=f"chance ({prevalence:.2f})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(-0.01, 1.01), ylim=(0, 1.02),
             title=f"Precision-recall on {len(experiment.y_test)} test images ({how})")
    axes.legend(loc="lower left", fontsize=7)
    axes.grid(alpha=0.3)
    return figure, f"Precision-recall curves of the top {len(rows)} configurations on the test split ({how})."


def plot_confusion(experiment: Experiment, row: dict):
    """Confusion matrix (counts, coloured by row share) of one configuration on the test split."""
    from sklearn.metrics import confusion_matrix

    n_classes = len(experiment.label_names)
    predicted = row["proba"].argmax(axis=1)
    counts = confusion_matrix(experiment.y_test, predicted, labels=np.arange(n_classes))
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(4.0 + 0.45 * n_classes, 16.0)
    figure = _figure(side + 1.2, side)
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
    axes.set(xlabel="predicted", ylabel="true", title=f"{_row_name(row)}\ntest accuracy {accuracy:.4f}")
    axes.title.set_fontsize(9)
    return figure, f"Confusion matrix of {_row_name(row)} on the test split (counts; colour: share of the true class)."


def plot_learning_curve(experiment: Experiment):
    """Test accuracy of the sweep's best configuration against the number of training images."""
    curve = experiment.summary.learning_curve or []
    best_config = experiment.summary.best.get("config")
    best = next((row for row in experiment.rows
                 if row["source"] == SWEEP_SOURCE and row["config"] == best_config), None)
    sizes = [point["n_train"] for point in curve]
    accuracies = [point["test_accuracy"] for point in curve]
    figure = _figure()
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
    name = _row_name(best) if best else "the sweep's best configuration"
    axes.set_title(f"Learning curve: {name}", fontsize=9)
    axes.grid(alpha=0.3)
    return figure, (f"Test accuracy of {name}, refit on growing random subsets of the train split "
                    f"({len(experiment.y_test)} test images).")


def plot_history(experiment: Experiment, rows: list[dict]):
    """Per-epoch loss and accuracy (train solid, val dashed) of dense heads and of the fine-tune."""
    series = [(_row_name(row), row["history"]) for row in rows] + list(experiment.stage_histories.items())
    legend_lines = (len(series) + 3) // 2  # two columns: one entry per series, then train and val
    figure = _figure(11, 4.0 + 0.2 * legend_lines)
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
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
    what = ", ".join([f"{len(rows)} dense head(s)"] * bool(rows) + list(experiment.stage_histories))
    return figure, f"Per-epoch loss and accuracy of {what}: train solid, val dashed."


def write_report(experiment_dir: str | os.PathLike, top: int = 3, max_histories: int = 4) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the PNG plots into an experiment folder.

    Parameters
    ----------
    top : int
        Configurations drawn in the ROC and precision-recall plots (best first).
    max_histories : int
        Dense heads drawn in ``dense_history.png`` (best first; the stages' ``history.csv`` are added).

    Returns the paths by key: ``markdown``, ``html`` and one per plot written (:data:`PLOT_FILES`); a
    plot without data (no dense head, no learning curve) is left out, and an old file of its name
    removed. Raises :class:`ReportError` when the folder holds no sweep results.
    """
    if top < 1 or max_histories < 0:
        raise ReportError(f"top must be at least 1 and max_histories at least 0; got top={top}, "
                          f"max_histories={max_histories}")
    experiment = load_experiment(experiment_dir)
    directory = experiment.directory
    with_predictions = [row for row in experiment.rows if row["proba"] is not None]
    dense_rows = [row for row in experiment.rows if row["history"]][:max_histories]
    plotters: dict[str, Callable[[], Any]] = {}
    if with_predictions:
        plotters["roc"] = lambda: plot_roc(experiment, with_predictions[:top])
        plotters["pr"] = lambda: plot_precision_recall(experiment, with_predictions[:top])
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
