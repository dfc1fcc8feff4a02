"""featx sweep: protocol, outputs, reproducibility, repeats, concatenation, clear errors."""

from __future__ import annotations

import csv
import json

import h5py
import joblib
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_image
from featx.cache import open_cache
from featx.cli import app
from featx.data import build_manifest
from featx.extractors import get_extractor
from featx.pipeline import build_cache
from featx.features import FeatureSetError
from featx.sweep import SweepError, run_sweep

FAST = {"heads": ["logreg", "linsvm"], "n_boot": 50, "n_jobs": 1,
        "grids": {"logreg": [{"head__C": [0.01, 1.0]}], "linsvm": [{"head__C": [0.001, 0.1]}]}}
TIMING = {"fit_seconds", "predict_seconds"}


@pytest.fixture
def hog_cache(kaggle_dir, tmp_path):
    for i in range(20, 40):  # 80 images: enough rows in every split
        make_image(kaggle_dir / f"cat.{i}.png", "cat", i)
        make_image(kaggle_dir / f"dog.{i}.png", "dog", 100 + i)
    manifest = build_manifest(kaggle_dir, val=0.2, test=0.25, seed=1)
    return build_cache(manifest, get_extractor("hog", size=32), cache_dir=tmp_path / "cache", workers=1).path


def read_rows(folder):
    with open(folder / "results.csv") as handle:
        return list(csv.DictReader(handle))


def test_sweep_writes_ranked_table_and_a_usable_best_model(hog_cache, tmp_path):
    result = run_sweep([[hog_cache]], tmp_path / "exp", **FAST)
    rows = read_rows(tmp_path / "exp")
    singles = [r for r in rows if r["head"] != "ensemble"]
    assert len(singles) == 4 and [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert {r["head"] for r in singles} == {"logreg", "linsvm"}
    assert all(r["selected_by"] == "cv5" and r["refit"] == "train+val" for r in rows)
    losses = [float(r["select_log_loss"]) for r in rows]
    assert losses == sorted(losses)  # ranked by out-of-fold log loss
    for row in rows:
        acc, low, high = float(row["accuracy"]), float(row["accuracy_low"]), float(row["accuracy_high"])
        assert low <= acc <= high and 0 <= low and high <= 1
        assert float(row["fit_seconds"]) >= 0
    # Textures this clean are easy: the best head must be far above chance on test.
    assert result.best["accuracy"] > 0.85
    summary = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert summary["mcnemar"]["p_value"] <= 1 and summary["best"]["rank"] == 1
    assert [p["n_train"] for p in summary["learning_curve"]] == sorted(p["n_train"] for p in summary["learning_curve"])
    bundle = joblib.load(tmp_path / "exp" / "best.joblib")
    assert bundle["label_names"] == ["cat", "dog"] and bundle["config"] == result.best["config"]
    assert bundle["extractors"][0]["spec"]["name"] == "hog"
    with open_cache(hog_cache) as cache:
        X, y = cache.load("test")
    accuracy = np.mean(bundle["model"].predict(X) == y)
    assert accuracy == pytest.approx(result.best["accuracy"])
    predictions = np.load(tmp_path / "exp" / "predictions.npz")
    assert predictions["config_0"].shape == (len(y), 2)


def test_same_seed_same_table_apart_from_timings(hog_cache, tmp_path):
    run_sweep([[hog_cache]], tmp_path / "a", seed=7, **FAST)
    run_sweep([[hog_cache]], tmp_path / "b", seed=7, **FAST)
    a, b = read_rows(tmp_path / "a"), read_rows(tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING and k != "caches"} for r in rows]
    assert strip(a) == strip(b)


def test_repeats_report_mean_and_std(hog_cache, tmp_path):
    options = dict(FAST, heads=["linsvm"])
    run_sweep([[hog_cache]], tmp_path / "exp", repeats=3, **options)
    rows = read_rows(tmp_path / "exp")
    assert all(r["repeats"] == "3" for r in rows)
    assert all(float(r["accuracy_std"]) >= 0 for r in rows)


def test_concatenated_caches_and_several_sweeps_in_one_call(kaggle_dir, hog_cache, tmp_path):
    manifest = build_manifest(kaggle_dir, val=0.2, test=0.25, seed=1)
    other = build_cache(manifest, get_extractor("hog", size=24, orientations=6), cache_dir=tmp_path / "cache",
                        workers=1).path
    result = run_sweep([[hog_cache], [hog_cache, other]], tmp_path / "exp", **dict(FAST, heads=["logreg"]))
    features = {r["features"] for r in result.rows if r["head"] != "ensemble"}
    assert features == {"hog", "hog+hog"} and len([r for r in result.rows if r["head"] != "ensemble"]) == 4
    summary = json.loads((tmp_path / "exp" / "results.json").read_text())
    with open_cache(hog_cache) as a, open_cache(other) as b:
        assert summary["feature_sets"][1]["dims"] == [a.dim, b.dim]


def test_cross_validation_when_there_is_no_val_split(kaggle_dir, tmp_path):
    manifest = build_manifest(kaggle_dir, val=0.0, test=0.3, seed=0)
    cache = build_cache(manifest, get_extractor("hog", size=32), cache_dir=tmp_path, workers=1).path
    result = run_sweep([[cache]], tmp_path / "exp", cv=3, **dict(FAST, heads=["logreg"]))
    assert {r["selected_by"] for r in result.rows} == {"cv3"}
    with pytest.raises(SweepError, match="--select val needs a val split"):
        run_sweep([[cache]], tmp_path / "exp2", select="val", **dict(FAST, heads=["logreg"]))
    assert not (tmp_path / "exp2").exists()


def test_clear_errors(kaggle_dir, tmp_path, hog_cache):
    # one class only
    cats = tmp_path / "cats"
    for i in range(12):
        make_image(cats / f"cat.{i}.png", "cat", i)
    one = build_cache(build_manifest(cats), get_extractor("hog", size=32), cache_dir=tmp_path / "c1", workers=1).path
    with pytest.raises(SweepError, match="one class only"):
        run_sweep([[one]], tmp_path / "x", **FAST)
    # caches of different images
    with pytest.raises(FeatureSetError, match="different images"):
        run_sweep([[hog_cache, one]], tmp_path / "x", **FAST)
    # empty test split
    no_test = build_cache(build_manifest(kaggle_dir, val=0.2, test=0.0), get_extractor("hog", size=24),
                          cache_dir=tmp_path / "c2", workers=1).path
    with pytest.raises(SweepError, match="empty test split"):
        run_sweep([[no_test]], tmp_path / "x", **FAST)
    # NaN features (a file damaged outside featx)
    with h5py.File(no_test, "r+") as h5:
        h5["features"][0, 0] = np.nan
    with pytest.raises(FeatureSetError, match="NaN"):
        run_sweep([[no_test]], tmp_path / "x", **FAST)
    with pytest.raises(SweepError, match="unknown head"):
        run_sweep([[hog_cache]], tmp_path / "x", heads=["forest"])
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_cli_sweep(hog_cache, tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"logreg": [{"head__C": [0.1]}]}))
    result = CliRunner().invoke(app, ["sweep", str(hog_cache), "--heads", "logreg", "--grid", str(grid),
                                      "--n-boot", "50", "--n-jobs", "1", "--out", str(tmp_path / "exp")])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert "best config 0 hog logreg" in last and "cv5 log loss" in last and "test accuracy" in last
    assert "protocol: selected by 5-fold cross-validation on train + val" in result.output
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "e2")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_failed_resweep_keeps_finetune_and_scratch(hog_cache, tmp_path, monkeypatch):
    """Bug 1: a re-sweep that fails while publishing must not delete what later stages wrote."""
    import os

    import featx.storage

    out = tmp_path / "exp"
    run_sweep([[hog_cache]], out, **FAST)
    for stage in ("finetune", "scratch"):
        (out / stage).mkdir()
        (out / stage / "model.json").write_text(f'{{"stage": "{stage}"}}')
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("-old") or ".old-" in str(dst):  # the publish step: old folder moved aside
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    monkeypatch.setattr(featx.storage.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([[hog_cache]], out, **FAST)
    monkeypatch.undo()
    for stage in ("finetune", "scratch"):
        assert (out / stage / "model.json").read_text() == f'{{"stage": "{stage}"}}'
    assert (out / "results.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exp")]


def test_resweep_keeps_every_later_stage_folder(hog_cache, tmp_path):
    """Bug 1: a successful re-sweep carries over finetune/, scratch/ and scratch-tuned/ untouched."""
    out = tmp_path / "exp"
    run_sweep([[hog_cache]], out, **FAST)
    for stage in ("finetune", "scratch", "scratch-tuned"):
        (out / stage / "tuner").mkdir(parents=True)
        (out / stage / "tuner" / "oracle.json").write_text(f'{{"stage": "{stage}"}}')
    run_sweep([[hog_cache]], out, **FAST)
    for stage in ("finetune", "scratch", "scratch-tuned"):
        assert (out / stage / "tuner" / "oracle.json").read_text() == f'{{"stage": "{stage}"}}'
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".exp")) == []


def test_second_writer_of_one_experiment_gets_one_line_naming_the_holder(hog_cache, tmp_path):
    import os

    from featx.storage import BusyError, locked

    out = tmp_path / "exp"
    with locked(out):
        with pytest.raises(BusyError, match=rf"being written by pid {os.getpid()} "):
            run_sweep([[hog_cache]], out, **FAST)
    assert not out.exists()
