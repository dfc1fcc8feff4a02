"""Issue 19, points 6 and 9 on the stages' side: ``featx finetune`` starts from the best row that can be
fine-tuned and says which; ``featx report`` ranks each selection protocol in its own table, never
ranks a stage folder built from another sweep or dataset, draws one curve per family with titles and
legends inside the figure, and tells a fine-tune's epochs as they were (the warm start, resumes).

Small real inputs: generated images, HoG caches and the two-block test backbone ``tinycnn``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tiny_backbone
from conftest import make_kaggle_images
from test_report import (DENSE_GRID, markdown_tables, noisy_stripes, scratch_origin, sweep_folder,
                         write_stage)

from featx.artifacts.results import SweepSummary
from featx.finetune import FinetuneError, choose_config, load_base_head, run_finetune
from featx.report import PLOT_FILES, family, load_experiment, plot_families, write_report

FINETUNE = ["--unfreeze", "none", "--batch-size", "8", "--patience", "0", "--n-boot", "20", "--no-augment",
            "--workers", "1"]


def cli(*args: str):
    from typer.testing import CliRunner

    from featx.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# -- finetune: which row it starts from ------------------------------------------------------------

def _summary(rows: list[dict], best: int) -> SweepSummary:
    return SweepSummary(label_names=["cat", "dog"], rows=rows, best=next(r for r in rows if r["config"] == best))


def _row(config: int, rank: int, head: str, features: str, finetunable: bool, caches: str = "", params=None) -> dict:
    return {"config": config, "rank": rank, "head": head, "features": features, "finetunable": finetunable,
            "caches": caches or f"cache/{features}.h5", "params": json.dumps(params or {"head__C": 1.0}),
            "preprocessing": "standard"}


def test_an_ensemble_starts_from_its_best_single_member_that_can_be_fine_tuned(tmp_path):
    rows = [_row(9, 1, "ensemble", "hog+lite0+lite2", False, "cache/hog.h5+cache/lite0.h5+cache/lite2.h5",
                 {"members": [{"config": 0, "weight": 0.5}, {"config": 4, "weight": 0.25},
                              {"config": 6, "weight": 0.25}]}),
            _row(0, 2, "logreg", "hog", False),  # heaviest member, ranked first among them, but HoG
            _row(1, 3, "logreg", "lite0", True),  # not a member
            _row(6, 4, "dense", "lite2", True),  # the best member that can be fine-tuned
            _row(4, 5, "logreg", "lite0", True)]
    row, note = choose_config(_summary(rows, 9), tmp_path)
    assert row["config"] == 6
    assert note.startswith("the sweep's best, config 9, is an ensemble of 3 models, which cannot be fine-tuned; "
                           "starting from its best single member: config 6 (dense")
    # No member can: the best-ranked row that can, said so.
    rows[3]["finetunable"] = rows[4]["finetunable"] = False
    row, note = choose_config(_summary(rows, 9), tmp_path)
    assert row["config"] == 1 and "the best-ranked config that can (none of its members can): config 1" in note
    # The best can: no note.
    assert choose_config(_summary(rows[1:], 1), tmp_path) == (rows[2], "")


@pytest.mark.parametrize("head, features, caches, why", [
    ("rbfsvm", "lite0", "", "an RBF-kernel SVM"),
    ("dense", "lite0+hog", "cache/lite0.h5+cache/hog.h5", "a concatenation of 2 caches (lite0+hog)"),
    ("logreg", "hog", "", "a head on hog features (not from a neural network)"),
])
def test_a_best_row_that_cannot_be_fine_tuned_gives_way_to_the_best_that_can(tmp_path, head, features, caches, why):
    rows = [_row(75, 1, head, features, False, caches), _row(3, 2, "logreg", "hog", False),
            _row(12, 3, "linsvm", "lite0", True), _row(2, 4, "logreg", "lite0", True)]
    row, note = choose_config(_summary(rows, 75), tmp_path)
    assert row["config"] == 12
    assert note.startswith(f"the sweep's best, config 75, is {why}")
    assert note.endswith('starting from the best-ranked config that can: config 12 (linsvm {"head__C": 1.0} on '
                         'lite0, rank 3)')
    # --config 75 is refused, and the advice names a config that can be fine-tuned (never 75 itself).
    with pytest.raises(FinetuneError, match=rf"config 75 is {why.split(' (')[0]}.*best-ranked config that can be "
                                            r"fine-tuned is config 12 .*: pass --config 12$"):
        choose_config(_summary(rows, 75), tmp_path, config=75)
    with pytest.raises(FinetuneError, match=r"config 3 is a head on hog .*pass --config 12$"):
        choose_config(_summary(rows, 75), tmp_path, config=3)
    assert choose_config(_summary(rows, 75), tmp_path, config=2) == (rows[3], "")
    rows = [r for r in rows if not r["finetunable"]]
    with pytest.raises(FinetuneError, match=r"no config of .*results.json can be fine-tuned .*sweep such a cache "
                                            r"alone with --heads logreg,linsvm,dense"):
        choose_config(_summary(rows, 75), tmp_path)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    return tiny_backbone.save_weights(tmp_path_factory.mktemp("tiny") / "tinycnn.weights.h5")


def _tiny_cache(root: Path, weights: Path, out: Path) -> Path:
    from featx.data import build_manifest
    from featx.extractors import get_extractor
    from featx.pipeline import build_cache

    manifest = build_manifest(root, val=0.25, test=0.25, seed=0)
    return build_cache(manifest, get_extractor(tiny_backbone.NAME, weights=str(weights)), cache_dir=out / "cache",
                       batch_size=16, workers=1, runtime="keras").path


@pytest.fixture(scope="module")
def rbf_first(tmp_path_factory, tiny_weights) -> Path:
    """A tinycnn sweep whose best row is an RBF SVM (a logreg so regularised that it knows nothing beside it),
    fine-tuned through the CLI from the best row that can be: the logreg."""
    from featx.sweep import run_sweep

    base = tmp_path_factory.mktemp("rbf")
    cache = _tiny_cache(make_kaggle_images(base / "train", 10), tiny_weights, base)
    out = base / "experiments" / "rbf"
    run_sweep([[cache]], out, heads=["rbfsvm", "logreg"], grids={"rbfsvm": [{"head__C": [10.0]}],
                                                                 "logreg": [{"head__C": [1e-6]}]},
              n_boot=20, learning_curve=False, ensemble=False, seed=0, select="val")  # too few images for CV
    return out


def test_cli_finetune_starts_from_the_best_row_that_can_be_fine_tuned_and_says_which(rbf_first):
    summary = json.loads((rbf_first / "results.json").read_text())
    by_head = {row["head"]: row for row in summary["rows"]}
    assert summary["best"]["head"] == "rbfsvm", "the fixture's premise: an RBF SVM ranks first"
    logreg = by_head["logreg"]["config"]

    result = cli("finetune", rbf_first, "--epochs", "1", "--lr", "1e-3", *FINETUNE)
    assert result.exit_code == 0, result.output
    assert (f"the sweep's best, config {summary['best']['config']}, is an RBF-kernel SVM (no Dense-layer form), "
            f"which cannot be fine-tuned; starting from the best-ranked config that can: config {logreg} "
            f"(logreg") in result.output
    state = json.loads((rbf_first / "finetune" / "state.json").read_text())
    assert state["built_from"]["config"] == logreg and state["built_from"]["head"] == "logreg"
    assert state["built_from"]["sweep_id"] == summary["sweep_id"] != ""
    assert f"(from config {logreg}; " in result.output.strip().splitlines()[-1]

    # --config of the RBF SVM: one line, pointing at the logreg.
    refused = cli("finetune", rbf_first, "--config", summary["best"]["config"], "--epochs", "1", *FINETUNE)
    assert refused.exit_code == 2
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"pass --config {logreg}")


def test_the_starting_head_is_fit_on_train_alone_so_val_still_picks_epochs_fairly(rbf_first):
    """The sweep refits its saved model on train + val; the fine-tune's warm start must not have seen val,
    which picks its epochs: its head is the row refit on train with the sweep's seed."""
    from featx.artifacts.results import SweepBundle
    from featx.features import load_feature_set
    from featx.heads import make_head

    base = load_base_head(rbf_first)
    fs = load_feature_set([base.cache_path])
    train = fs.rows("train")
    expected = make_head("logreg", ["standard"], random_state=0).set_params(**json.loads(base.row["params"]))
    expected.fit(fs.X[train], fs.y[train])
    np.testing.assert_allclose(base.model.predict_proba(fs.X), expected.predict_proba(fs.X), atol=1e-9)
    assert SweepBundle.read(rbf_first / "best.joblib").refit != "train"


# -- the report: stale stage folders -----------------------------------------------------------------

def test_a_finetune_built_from_another_sweep_is_marked_stale_not_ranked(rbf_first, tmp_path):
    from featx.sweep import run_sweep

    experiment = Path(shutil.copytree(rbf_first, tmp_path / "rbf"))
    if not (experiment / "finetune" / "results.csv").is_file():
        assert cli("finetune", experiment, "--epochs", "1", "--lr", "1e-3", *FINETUNE).exit_code == 0
    current = write_report(experiment)["markdown"].read_text()
    assert "finetune" in [row[2] for _, rows in markdown_tables(current) for row in rows]
    assert "Not ranked" not in current

    cache = load_base_head(experiment).cache_path
    # A re-sweep (another grid: another sweep id) keeps finetune/ but it no longer belongs to this sweep.
    run_sweep([[cache]], experiment, heads=["logreg"], grids={"logreg": [{"head__C": [0.1, 1.0]}]}, n_boot=20,
              learning_curve=False, ensemble=False, seed=0, select="val")
    assert (experiment / "finetune" / "results.csv").is_file()
    paths = write_report(experiment)
    markdown = paths["markdown"].read_text()
    sources = [row[2] for _, rows in markdown_tables(markdown) for row in rows]
    assert sources == ["sweep", "sweep"]
    stale = markdown.split("## Not ranked: built from another sweep or dataset", 1)[1]
    sweep_id = json.loads((experiment / "results.json").read_text())["sweep_id"]
    assert "finetune/: built from config" in stale and f"this folder's sweep is {sweep_id}" in stale
    assert "featx finetune" in stale and "--restart" in stale
    experiment_read = load_experiment(experiment)
    assert [item["source"] for item in experiment_read.stale] == ["finetune"]
    assert all(family(row) != "fine-tuned tinycnn" for row in plot_families(experiment_read))
    assert "finetune" not in experiment_read.stage_histories
    # featx finetune agrees: continuing that folder is refused until --restart.
    refused = cli("finetune", experiment, "--epochs", "2", *FINETUNE)
    assert refused.exit_code == 2 and "sweep_id changed" in refused.output and "--restart" in refused.output


def _hog_experiment(root: Path, name: str = "hog") -> Path:
    for i in range(30):
        noisy_stripes(root / "train" / f"cat.{i}.png", "cat", i)
        noisy_stripes(root / "train" / f"dog.{i}.png", "dog", 1000 + i)
    return sweep_folder(root / "train", root / "experiments" / name, ["logreg"],
                        {"logreg": [{"head__C": [0.001, 0.1, 10.0]}]}, layout="kaggle")


@pytest.fixture(scope="module")
def hog_experiment(tmp_path_factory) -> Path:
    return _hog_experiment(tmp_path_factory.mktemp("hog"))


def test_scratch_rows_are_stale_when_trained_on_another_manifest_or_test_set(hog_experiment, tmp_path):
    experiment = Path(shutil.copytree(hog_experiment, tmp_path / "hog"))
    row = dict(read_csv(experiment / "results.csv")[0], head="scratch", features="scratch:keras-blog@32px",
               selected_by="val-epoch")
    with np.load(experiment / "predictions.npz") as sweep:
        y_test, paths = sweep["y_test"], sweep["paths"]
    proba = np.full((len(y_test), 2), 0.5, dtype=np.float32)

    def scratch_folder(origin: dict | None, test_paths=paths, test_y=y_test) -> list[dict]:
        stage = write_stage(experiment, "scratch", [row], origin, best_epoch=1, epochs_done=1)
        (stage / "state.json").unlink() if origin is None else None
        np.savez_compressed(stage / "predictions.npz", y_test=test_y, paths=test_paths, config_0=proba)
        return load_experiment(experiment).stale

    assert scratch_folder(scratch_origin(experiment)) == []  # the sweep's manifest, the sweep's test images
    n_sweep = len(read_csv(experiment / "results.csv"))
    assert [r["source"] for r in load_experiment(experiment).rows] == ["sweep"] * n_sweep + ["scratch"]
    other = dict(scratch_origin(experiment), manifest_sha256="0" * 64)
    (item,) = scratch_folder(other)
    assert item["reason"].startswith("trained on manifest 000000000000, not the one the sweep's caches were made "
                                     "from") and "featx scratch" in item["fix"]
    (item,) = scratch_folder(scratch_origin(experiment), test_y=1 - y_test)
    assert item["reason"].startswith(f"scored on other test images ({len(y_test)}, 0 of them among the sweep's")
    (item,) = scratch_folder(None)
    assert "records nothing it was built from" in item["reason"]
    markdown = write_report(experiment)["markdown"].read_text()
    assert [r[2] for _, rows in markdown_tables(markdown) for r in rows] == ["sweep"] * n_sweep
    assert "scratch/: scratch/state.json records nothing it was built from" in markdown


# -- the report: protocols in separate tables; test never ranks ----------------------------------------

def test_ranking_never_reads_the_test_labels(hog_experiment, tmp_path):
    """Permuting the test labels in the cache changes every test figure and no ranking."""
    import h5py

    from featx.sweep import run_sweep

    summary = json.loads((hog_experiment / "results.json").read_text())
    cache = Path(shutil.copy(summary["feature_sets"][0]["caches"][0], tmp_path / "permuted.h5"))
    with h5py.File(cache, "r+") as h5:
        split = h5["split"].asstr()[:] if h5["split"].dtype.kind == "O" else h5["split"][:].astype(str)
        test = np.flatnonzero(split == "test")
        labels = h5["labels"][:]
        labels[test] = np.random.default_rng(1).permutation(labels[test])
        h5["labels"][...] = labels
    permuted = tmp_path / "experiments" / "permuted"
    run_sweep([[cache]], permuted, heads=["logreg"], grids={"logreg": [{"head__C": [0.001, 0.1, 10.0]}]},
              n_boot=50, seed=0)

    def ranking(experiment: Path):
        markdown = write_report(experiment)["markdown"].read_text()
        return [(title, [(r[0], r[1], r[4], r[5], r[6], r[7]) for r in rows])
                for title, rows in markdown_tables(markdown)], [r[8] for _, rows in markdown_tables(markdown)
                                                                for r in rows]

    (before, before_test), (after, after_test) = ranking(hog_experiment), ranking(permuted)
    assert before == after and len(before[0][1]) >= 3
    assert before_test != after_test  # the permutation reached the test figures


def test_rows_of_different_protocols_get_separate_tables_each_ranked(hog_experiment, tmp_path):
    """A sweep selected on val and stage rows whose val picked an epoch: three protocols, three tables."""
    from featx.sweep import run_sweep

    experiment = Path(shutil.copytree(hog_experiment, tmp_path / "hog"))
    summary = json.loads((experiment / "results.json").read_text())
    caches = summary["feature_sets"][0]["caches"]
    on_val = run_sweep([caches], tmp_path / "val", heads=["logreg"], grids={"logreg": [{"head__C": [0.1, 10.0]}]},
                       n_boot=20, learning_curve=False, ensemble=False, select="val", seed=0)
    val_rows = [dict(row, source="x") for row in read_csv(on_val.out_dir / "results.csv")]
    assert {row["selected_by"] for row in val_rows} == {"val"}
    # The val-selected rows put beside the CV-selected ones as one more results.csv of the sweep's folder.
    cv_rows = read_csv(experiment / "results.csv")
    offset = len(cv_rows)
    merged = cv_rows + [dict(row, config=str(int(row["config"]) + offset), rank="0") for row in val_rows]
    with open(experiment / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(cv_rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(merged)
    stage_row = dict(cv_rows[0], head="scratch", features="scratch:keras-blog@32px", selected_by="val-epoch",
                     select_log_loss="0.0001", select_accuracy="1")
    write_stage(experiment, "scratch", [stage_row], scratch_origin(experiment))

    tables = markdown_tables(write_report(experiment)["markdown"].read_text())
    titles = [title for title, _ in tables]
    assert titles[0].startswith("Selected by 5-fold cross-validation on train + val")
    assert titles[1].startswith("Selected on val after fitting on train")
    assert titles[2].startswith("Trained CNNs")
    for _, rows in tables:
        assert [r[0] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
        losses = [float(r[6]) for r in rows]
        assert losses == sorted(losses)
    loss = {row["config"]: float(row["select_log_loss"]) for row in merged}
    assert [r[1] for r in tables[1][1]] == sorted((c for c in loss if int(c) >= offset), key=loss.get)
    # The stage row has the lowest selection loss of all, yet is not ranked first beside the sweep's.
    assert tables[0][1][0][2] == "sweep" and tables[2][1][0][2] == "scratch"


# -- the report: plots ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def families_experiment(tmp_path_factory) -> Path:
    """Two HoG caches and their concatenation, logreg and dense heads, the ensemble: several configs per family."""
    from featx.data import build_manifest
    from featx.extractors import get_extractor
    from featx.pipeline import build_cache
    from featx.sweep import run_sweep

    root = tmp_path_factory.mktemp("families")
    for i in range(30):
        noisy_stripes(root / "train" / f"cat.{i}.png", "cat", i)
        noisy_stripes(root / "train" / f"dog.{i}.png", "dog", 1000 + i)
    manifest = build_manifest(root / "train", layout="kaggle", val=0.25, test=0.3, seed=0)
    a, b = (build_cache(manifest, get_extractor("hog", size=24, pixels_per_cell=cell), cache_dir=root / "cache",
                        workers=1).path for cell in (6, 8))
    out = root / "experiments" / "families"
    run_sweep([[a], [b], [a, b]], out, heads=["logreg", "dense"],
              grids={"logreg": [{"head__C": [0.001, 0.1, 10.0]}], "dense": DENSE_GRID}, n_boot=20, seed=0)
    return out


def test_plots_draw_one_curve_per_family_with_title_and_legend_inside_the_figure(families_experiment):
    paths = write_report(families_experiment)
    experiment = load_experiment(families_experiment)
    with_curves = [row for row in experiment.rows if row["proba"] is not None]
    families = plot_families(experiment)
    names = [family(row) for row in families]
    assert len(names) == len(set(names)) == len({family(row) for row in with_curves}) >= 3
    for row in families:  # each family's best-ranked row
        assert row is next(r for r in with_curves if family(r) == family(row))

    from featx.report import (plot_confusion, plot_history, plot_learning_curve, plot_precision_recall,
                              plot_roc)

    figures = {"roc": plot_roc(experiment, families)[0], "pr": plot_precision_recall(experiment, families)[0],
               "confusion": plot_confusion(experiment, experiment.best_with_predictions)[0],
               "learning_curve": plot_learning_curve(experiment)[0],
               "dense_history": plot_history(experiment, [r for r in experiment.rows if r["history"]][:4])[0]}
    for key in ("roc", "pr"):
        (legend,) = figures[key].legends
        curves = [t.get_text() for t in legend.get_texts() if not t.get_text().startswith("chance")]
        assert len(curves) == len(families)
        assert [c.split(":")[0].split(" (")[0].split(" of configs")[0] for c in curves] == names
    for key, figure in figures.items():
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        box = figure.bbox
        # Titles, axis labels and legends (tick labels past the view limits are never drawn).
        titles = [t for t in (figure._suptitle, *(axes.title for axes in figure.axes)) if t and t.get_text()]
        assert titles, f"{key} has no title"
        labels = [text for axes in figure.axes for text in (axes.xaxis.label, axes.yaxis.label) if text.get_text()]
        for artist in [*titles, *labels, *figure.legends]:
            extent = artist.get_window_extent(renderer)
            assert (extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1 and extent.y0 >= box.y0 - 1
                    and extent.y1 <= box.y1 + 1), f"{key}: {getattr(artist, 'get_text', lambda: 'legend')()!r} " \
                                                  f"at {extent} outside the figure {box}"
    assert set(paths) == {"markdown", "html", *PLOT_FILES}


# -- fine-tune epochs: the warm start, resumes -----------------------------------------------------------

from test_finetune import _crash_in_second_epoch  # noqa: E402  (wraps TrainingRun.callbacks: dies in epoch 2)


def test_warm_start_kept_and_resumed_epochs_are_told_as_they_were(tmp_path, tiny_weights, monkeypatch):
    """A learning rate that wrecks the head: no epoch beats the warm start (epoch 0), which the summary line
    and the report row say; killed in epoch 2 and resumed to 3, both say 3 epochs, resumed at 1."""
    from featx.sweep import run_sweep
    from featx.training import TrainingRun

    cache = _tiny_cache(make_kaggle_images(tmp_path / "train", 10), tiny_weights, tmp_path)
    experiment = tmp_path / "experiments" / "warm"
    run_sweep([[cache]], experiment, heads=["logreg"], grids={"logreg": [{"head__C": [1.0]}]}, n_boot=20,
              learning_curve=False, ensemble=False, seed=0, select="val")
    options = dict(unfreeze="none", epochs=2, learning_rate=1e4, optimizer="sgd", batch_size=8, patience=None,
                   augment=False, n_boot=20, seed=0, workers=1)
    original = TrainingRun.callbacks
    monkeypatch.setattr(TrainingRun, "callbacks", _crash_in_second_epoch(original))
    with pytest.raises(KeyboardInterrupt):
        run_finetune(experiment, **options)
    monkeypatch.setattr(TrainingRun, "callbacks", original)
    assert json.loads((experiment / "finetune" / "state.json").read_text())["epochs_done"] == 1

    result = cli("finetune", experiment, "--epochs", "3", "--lr", "1e4", "--optimizer", "sgd", "--patience", "0",
                 "--unfreeze", "none", "--batch-size", "8", "--no-augment", "--n-boot", "20", "--workers", "1")
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert "kept epoch 0 of 3: the warm start (no epoch of training beat the starting head on val); " \
           "resumed at 1" in last, last
    state = json.loads((experiment / "finetune" / "state.json").read_text())
    assert state["epochs_done"] == 3 and state["best_epoch"] == 0 and state["resumed_at"] == [1]
    history = read_csv(experiment / "finetune" / "history.csv")
    assert [int(row["epoch"]) for row in history] == [0, 1, 2, 3]
    assert all(not float(row["val_loss"]) < float(history[0]["val_loss"]) for row in history[1:]
               if row["val_loss"] not in ("", "nan"))

    tables = markdown_tables(write_report(experiment)["markdown"].read_text())
    (stage_row,) = [row for _, rows in tables for row in rows if row[2] == "finetune"]
    assert "kept epoch 0 of 3: the warm start" in stage_row[5] and "resumed at 1" in stage_row[5]
