"""featx report: a real (tiny) sweep in, report.md / report.html / PNG plots out."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx.report import (PLOT_FILES, ReportError, load_experiment, plot_confusion, plot_learning_curve, plot_roc,
                          write_report)

DENSE_GRID = [{"head__hidden_units": [8], "head__epochs": [4], "head__learning_rate": [1e-2],
               "head__batch_size": [16]}]


def noisy_stripes(path: Path, kind: str, index: int, size: int = 24) -> None:
    """Stripes whose direction depends on the class, buried in noise (so heads make some mistakes)."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:size, 0:size]
    direction = {"cat": x, "dog": y, "a": x, "b": y}.get(kind, x + y)
    base = 127 + 30 * np.sin(2 * np.pi * direction / 4) + rng.normal(0, 70, (size, size))
    grey = base.clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path)


def sweep_folder(image_root: Path, out_dir: Path, heads, grids, layout: str) -> Path:
    from featx.data import build_manifest
    from featx.extractors import get_extractor
    from featx.pipeline import build_cache
    from featx.sweep import run_sweep

    manifest = build_manifest(image_root, layout=layout, val=0.25, test=0.3, seed=0)
    cached = build_cache(manifest, get_extractor("hog", size=24, pixels_per_cell=6), cache_dir=out_dir.parent / "cache",
                         workers=1)
    run_sweep([[cached.path]], out_dir, heads=heads, grids=grids, n_boot=50, seed=0)
    return out_dir


@pytest.fixture(scope="module")
def binary_sweep(tmp_path_factory) -> Path:
    """A cats-vs-dogs sweep on 80 generated images: logreg x 3 and one tiny dense head."""
    root = tmp_path_factory.mktemp("binary")
    for i in range(40):
        noisy_stripes(root / "train" / f"cat.{i}.png", "cat", i)
        noisy_stripes(root / "train" / f"dog.{i}.png", "dog", 1000 + i)
    return sweep_folder(root / "train", root / "experiments" / "tiny", ["logreg", "dense"],
                        {"logreg": [{"head__C": [0.0001, 0.01, 1.0]}], "dense": DENSE_GRID}, layout="kaggle")


@pytest.fixture
def experiment_copy(binary_sweep, tmp_path) -> Path:
    """A private copy of the sweep folder, for tests that add to it."""
    return Path(shutil.copytree(binary_sweep, tmp_path / "tiny"))


@pytest.fixture(scope="module")
def reported(binary_sweep, tmp_path_factory) -> dict[str, Path]:
    """The report of the binary sweep, written once (into a copy) for the tests that only read it."""
    copy = shutil.copytree(binary_sweep, tmp_path_factory.mktemp("reported") / "tiny")
    return write_report(copy)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def markdown_tables(text: str) -> list[tuple[str, list[list[str]]]]:
    """Each ranked table of report.md: its ### title and its cells (header and separator left out)."""
    section = text.split("## Ranked configurations", 1)[1].split("\n## ", 1)[0]
    tables = []
    for block in section.split("\n### ")[1:]:
        title, _, body = block.partition("\n")
        rows = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
                for line in body.strip().splitlines()[2:] if line.startswith("|")]
        tables.append((title.strip(), rows))
    return tables


def markdown_table(text: str) -> list[list[str]]:
    """The cells of every ranked table in report.md, table after table."""
    return [row for _, rows in markdown_tables(text) for row in rows]


def html_table(text: str) -> list[list[str]]:
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>\s*(<td.*?)</tr>", text, re.S)]


def expected_accuracy_cell(row: dict) -> str:
    return f"{float(row['accuracy']):.4f} [{float(row['accuracy_low']):.4f}, {float(row['accuracy_high']):.4f}]"


def test_report_writes_markdown_html_and_readable_pngs(reported):
    paths = reported
    experiment_copy = paths["markdown"].parent

    assert set(paths) == {"markdown", "html", *PLOT_FILES}
    for key, name in PLOT_FILES.items():
        assert paths[key] == experiment_copy / name
        with Image.open(paths[key]) as image:
            assert image.format == "PNG"
            assert image.width >= 400 and image.height >= 300
            pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 5, f"{name} is blank"
    assert not list(experiment_copy.glob(".*tmp*")), "temporary files left behind"
    markdown = paths["markdown"].read_text()
    for name in PLOT_FILES.values():
        assert f"]({name})" in markdown
        assert f'src="{name}"' in paths["html"].read_text()


def test_markdown_and_html_tables_follow_results_csv_in_rank_order(reported):
    paths = reported
    results = read_csv(paths["markdown"].parent / "results.csv")
    markdown_rows = markdown_table(paths["markdown"].read_text())
    html_rows = html_table(paths["html"].read_text())

    assert len(results) == 4 and len(markdown_rows) == len(results) and len(html_rows) == len(results)
    # report.html is report.md rendered (markdown-it's table rule): numeric columns right-aligned in both
    assert '<th style="text-align:right">rank</th>' in paths["html"].read_text()
    assert "|---:|---:|---|---|" in paths["markdown"].read_text()
    accuracies = {row["accuracy"] for row in results}
    assert len(accuracies) > 1, "the tiny data should separate the configurations"
    for rank, (expected, md_cells, html_cells) in enumerate(zip(results, markdown_rows, html_rows), start=1):
        assert int(expected["rank"]) == rank
        for cells in (md_cells, html_cells):
            assert cells[0] == str(rank)
            assert cells[1] == expected["config"]
            assert cells[2] == "sweep"
            assert cells[4] == expected["head"]
            assert cells[6] == f"{float(expected['select_log_loss']):.4f}"
            assert cells[7].startswith(f"{float(expected['select_accuracy']):.4f}")
            assert cells[8] == expected_accuracy_cell(expected)
            assert cells[9] == f"{float(expected['roc_auc']):.4f}"
            assert cells[11] == f"{float(expected['log_loss']):.4f}"
        params = json.loads(expected["params"])
        if expected["head"] == "logreg":
            assert md_cells[5] == f"C={params['head__C']}"


def test_report_states_protocol_and_mcnemar_of_the_best_two(reported):
    summary = json.loads((reported["markdown"].parent / "results.json").read_text())
    markdown = reported["markdown"].read_text()

    assert f"Protocol: {summary['protocol']}" in markdown
    mcnemar = summary["mcnemar"]
    assert f"n01 = {mcnemar['n01']}" in markdown and f"n10 = {mcnemar['n10']}" in markdown
    assert f"p = {mcnemar['p_value']:.4g}" in markdown
    for point in summary["learning_curve"]:
        assert f"{point['n_train']:,} training images: test accuracy {point['test_accuracy']:.4f}" in markdown


def test_plots_draw_the_numbers_of_the_results(binary_sweep):
    experiment = load_experiment(binary_sweep)
    results = read_csv(binary_sweep / "results.csv")
    best = experiment.best_with_predictions

    figure, caption = plot_roc(experiment, experiment.rows[:3])
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    for row, label in zip(results[:3], labels):
        assert label.endswith(f"AUC {float(row['roc_auc']):.4f}")
    assert "positive class: dog" in caption

    figure, _ = plot_confusion(experiment, best)
    counts = np.array([int(text.get_text().split()[0]) for text in figure.axes[0].texts]).reshape(2, 2)
    assert counts.sum() == int(results[0]["n_test"])
    assert counts.trace() / counts.sum() == pytest.approx(float(results[0]["accuracy"]), abs=1e-6)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["cat", "dog"]

    figure, _ = plot_learning_curve(experiment)
    curve = experiment.summary.learning_curve
    (line,) = figure.axes[0].get_lines()
    assert list(line.get_xdata()) == [p["n_train"] for p in curve]
    assert list(line.get_ydata()) == [p["test_accuracy"] for p in curve]


def write_stage(experiment: Path, folder: str, rows: list[dict], built_from: dict | None, **state) -> Path:
    """A later stage's folder as featx writes it: results.csv in the sweep's columns, and state.json
    recording what it was built from (None: no state.json)."""
    from featx.artifacts.runs import RunState

    stage = experiment / folder
    stage.mkdir(exist_ok=True)
    with open(stage / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if built_from is not None:
        RunState(settings={}, built_from=built_from, **state).write(stage / "state.json")
    return stage


def finetune_origin(experiment: Path, config: int | None = None) -> dict:
    """built_from of a fine-tune of this experiment's sweep, as featx finetune records it."""
    summary = json.loads((experiment / "results.json").read_text())
    row = next(r for r in summary["rows"] if config is None or r["config"] == config)
    return {"config": row["config"], "head": row["head"], "params": row["params"],
            "preprocessing": row["preprocessing"], "cache": Path(row["caches"].split("+")[0]).name,
            "sweep_id": summary.get("sweep_id", "")}


def scratch_origin(experiment: Path) -> dict:
    """built_from of a from-scratch run on the manifest the sweep's caches were made from."""
    import h5py

    summary = json.loads((experiment / "results.json").read_text())
    with h5py.File(summary["feature_sets"][0]["caches"][0], "r") as h5:
        manifest = h5.attrs["manifest_sha256"]
    return {"manifest_sha256": str(manifest), "architecture": {"filters": [8]}}


def test_finetune_and_scratch_rows_get_their_own_ranked_table(experiment_copy):
    results = read_csv(experiment_copy / "results.csv")
    finetune_row = dict(results[-1], rank="1", config="3", features="hog+finetune", head="finetune",
                        params=json.dumps({"base_head": "logreg", "base_params": {"head__C": 1.0}, "best_epoch": 2}),
                        selected_by="val-epoch", select_accuracy="1", select_log_loss="0.05", accuracy="0.9876",
                        accuracy_low="0.95", accuracy_high="1", fit_seconds="61.5")
    scratch_row = dict(results[0], rank="1", config="0", features="scratch-cnn", head="scratch", params="{}",
                       selected_by="val", select_accuracy="0.5", select_log_loss="0.9", accuracy="0.4321")
    write_stage(experiment_copy, "finetune", [finetune_row], finetune_origin(experiment_copy),
                best_epoch=2, epochs_done=2)
    write_stage(experiment_copy, "scratch", [scratch_row], scratch_origin(experiment_copy), best_epoch=1,
                epochs_done=1)
    # As featx finetune writes them: epoch 0 is the warm start (no training loss yet); one
    # probability array, config_0, whatever the number of the sweep configuration it started from,
    # in its own row order (here reversed): the report lines it up with the sweep's by path.
    (experiment_copy / "finetune" / "history.csv").write_text(
        "epoch,loss,accuracy,val_loss,val_accuracy,learning_rate,seconds\n"
        "0,,,0.58,0.72,,\n1,0.45,0.81,0.47,0.79,0.001,3.5\n2,0.31,0.88,0.41,0.83,0.001,3.4\n")
    with np.load(experiment_copy / "predictions.npz") as sweep_predictions:
        y_test, paths = sweep_predictions["y_test"], sweep_predictions["paths"]
    finetune_proba = np.eye(2, dtype=np.float32)[y_test] * 0.8 + 0.1
    np.savez_compressed(experiment_copy / "finetune" / "predictions.npz", y_test=y_test[::-1], paths=paths[::-1],
                        config_0=finetune_proba[::-1])

    paths = write_report(experiment_copy)
    markdown = paths["markdown"].read_text()
    (sweep_title, sweep_rows), (stage_title, stage_rows) = markdown_tables(markdown)

    assert sweep_title.startswith("Selected by ") and stage_title.startswith("Trained CNNs")
    assert [r[2] for r in sweep_rows] == ["sweep"] * len(results)
    assert [r[8] for r in sweep_rows] == [expected_accuracy_cell(row) for row in results]
    assert [r[0] for r in sweep_rows] == [str(i) for i in range(1, len(results) + 1)]
    # The stages' own table, ranked by their val log loss; no sweep config number for them.
    assert [r[2] for r in stage_rows] == ["finetune", "scratch"] and [r[0] for r in stage_rows] == ["1", "2"]
    assert stage_rows[0][1] == "-" and stage_rows[0][3:5] == ["hog+finetune", "finetune"]
    assert stage_rows[0][8] == "0.9876 [0.9500, 1.0000]" and stage_rows[1][8].startswith("0.4321 ")
    assert "from config 3 (logreg C=1.0)" in stage_rows[0][5] and "kept epoch 2 of 2" in stage_rows[0][5]
    # The fine-tune's history is drawn beside the dense head's.
    experiment = load_experiment(experiment_copy)
    history = experiment.stage_histories["finetune"]
    assert history["epoch"] == [0, 1, 2] and history["val_accuracy"] == [0.72, 0.79, 0.83]
    assert np.isnan(history["loss"][0]) and "scratch" not in experiment.stage_histories
    with Image.open(paths["dense_history"]) as image:
        assert image.size[0] > 800
    # The fine-tune's test probabilities are its curves, in the sweep's row order, with its own AUC.
    finetune = next(row for row in experiment.rows if row["source"] == "finetune")
    assert np.array_equal(finetune["proba"], finetune_proba)
    assert next(row for row in experiment.rows if row["source"] == "scratch")["proba"] is None
    figure, _ = plot_roc(experiment, [finetune])
    label = figure.legends[0].get_texts()[0].get_text()
    assert label.startswith("fine-tuned hog") and label.endswith("AUC 1.0000")


def test_multiclass_uses_micro_average_and_drops_history_plot_without_dense_heads(folders_dir, tmp_path):
    out_dir = sweep_folder(folders_dir, tmp_path / "experiments" / "shapes", ["logreg"],
                           {"logreg": [{"head__C": [0.01, 1.0]}]}, layout="folders")
    (out_dir / "dense_history.png").write_bytes(b"stale plot from an earlier report")

    paths = write_report(out_dir)

    assert "dense_history" not in paths and not (out_dir / "dense_history.png").exists()
    markdown = paths["markdown"].read_text()
    assert "micro-average over one-vs-rest" in markdown
    assert "classes: a, b, c" in markdown
    assert len(markdown_table(markdown)) == 2
    experiment = load_experiment(out_dir)
    figure, _ = plot_confusion(experiment, experiment.best_with_predictions)
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["a", "b", "c"]
    assert sum(int(t.get_text().split()[0]) for t in figure.axes[0].texts) == len(experiment.y_test)


def test_failed_report_leaves_the_previous_one_intact(experiment_copy, monkeypatch):
    from featx import report

    first = write_report(experiment_copy)["markdown"].read_text()
    (experiment_copy / "results.csv").write_text((experiment_copy / "results.csv").read_text().replace(
        ",logreg,", ",LOGREG,"))

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "render_html", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(experiment_copy)
    assert (experiment_copy / "report.md").read_text() == first
    assert not list(experiment_copy.glob(".*tmp*"))


def test_folder_without_results_gets_a_clear_error(tmp_path):
    missing = tmp_path / "experiments" / "never-swept"
    with pytest.raises(ReportError, match=r"never-swept: no such experiment folder; run `featx sweep .* --out "):
        write_report(missing)
    missing.mkdir(parents=True)
    expected = r"no sweep results here \(missing results.csv, results.json, predictions.npz\); run `featx sweep"
    with pytest.raises(ReportError, match=expected):
        write_report(missing)
    assert not list(missing.iterdir())


def test_results_table_without_its_columns_is_refused(experiment_copy):
    (experiment_copy / "finetune").mkdir()
    (experiment_copy / "finetune" / "results.csv").write_text("epoch,accuracy\n0,0.5\n")
    expected = r"finetune/results.csv lacks the results columns \['features'.*move that folder out of"
    with pytest.raises(ReportError, match=expected):
        write_report(experiment_copy)


def test_cli_report_prints_the_markdown_path_last(experiment_copy, tmp_path):
    from typer.testing import CliRunner

    from featx.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["report", str(experiment_copy)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(experiment_copy / "report.md")
    assert (experiment_copy / "report.html").is_file()
    result = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "run `featx sweep" in result.output and len(result.output.strip().splitlines()) == 1


def test_experiment_written_before_schema_headers_still_reports(experiment_copy, reported):
    """results.json without its schema header (today's folders) reads as version 0; a newer one is one line."""
    from typer.testing import CliRunner

    from featx.cli import app

    from featx.artifacts.results import SweepSummary

    summary = json.loads((experiment_copy / "results.json").read_text())
    assert summary.pop("schema") == {"kind": "sweep_results", "version": SweepSummary.VERSION}
    (experiment_copy / "results.json").write_text(json.dumps(summary))
    old = write_report(experiment_copy)["markdown"].read_text()
    assert markdown_table(old) == markdown_table(reported["markdown"].read_text())
    newer = SweepSummary.VERSION + 1
    summary["schema"] = {"kind": "sweep_results", "version": newer}
    (experiment_copy / "results.json").write_text(json.dumps(summary))
    result = CliRunner().invoke(app, ["report", str(experiment_copy)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"results.json was written by a newer featx (sweep_results version {newer}" in lines[0]


def test_report_ranks_later_stages_with_the_sweeps_own_ranking(experiment_copy):
    """One ranking function: the sweep's rank column and its table agree; a stage's table ranks by the same
    rule (lower selection log loss, then higher accuracy), NaN scores last."""
    from featx.artifacts.results import rank_rows

    sweep_rows = read_csv(experiment_copy / "results.csv")
    best = dict(sweep_rows[0], head="tied", selected_by="val-epoch")
    worse = dict(best, head="worse", select_log_loss=float(best["select_log_loss"]) + 1)
    unscored = dict(best, head="unscored", select_accuracy="", select_log_loss="")
    write_stage(experiment_copy, "scratch", [unscored, worse, best], scratch_origin(experiment_copy))
    experiment = load_experiment(experiment_copy)
    (_, sweep_table), (_, stage_table) = experiment.tables
    assert [row["config"] for row in sweep_table] == [int(r["config"]) for r in sweep_rows]
    assert [row["head"] for row in stage_table] == ["tied", "worse", "unscored"]
    assert [row["table_rank"] for row in stage_table] == [1, 2, 3]
    for _, table in experiment.tables:
        assert rank_rows(table) == table
    assert [int(r["rank"]) for r in sweep_rows] == sorted(int(r["rank"]) for r in sweep_rows)
