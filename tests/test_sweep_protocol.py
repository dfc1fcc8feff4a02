"""The model featx hands over: selection by out-of-fold log loss on train + val with duplicate-grouped
folds, refit on train + val (or all), the greedy ensemble across caches, the clip, and models kept."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import weakref

import h5py
import numpy as np
import pytest

from conftest import make_image
from featx.artifacts.results import SweepBundle, SweepSummary
from featx.data import build_manifest
from featx.extractors import get_extractor
from featx.features import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, load_feature_set
from featx.heads import class_probabilities, make_head
from featx.pipeline import build_cache
import featx.sweep as sweep_module
from featx.sweep import CLIP_CANDIDATES, run_sweep, selection_plan

LOGREG = {"heads": ["logreg"], "n_boot": 20, "n_jobs": 1, "learning_curve": False,
          "grids": {"logreg": [{"head__C": [0.01, 1.0]}]}}


def _images(root, n=30, copies=0):
    for i in range(n):
        make_image(root / f"cat.{i}.png", "cat", i)
        make_image(root / f"dog.{i}.png", "dog", 500 + i)
    for i in range(copies):  # the same bytes under another name and number
        shutil.copy(root / f"cat.{i}.png", root / f"cat.{1000 + i}.png")
        shutil.copy(root / f"dog.{i}.png", root / f"dog.{1000 + i}.png")
    return root


@pytest.fixture
def hog(tmp_path):
    manifest = build_manifest(_images(tmp_path / "photos", copies=8), val=0.2, test=0.2, seed=3)
    return build_cache(manifest, get_extractor("hog", size=24), cache_dir=tmp_path / "cache", workers=1).path


def _rows_by_path(fs, *splits):
    rows = np.concatenate([fs.rows(s) for s in splits])
    return np.array(sorted(rows, key=lambda i: fs.paths[i]))


def test_identical_images_share_a_fold_and_folds_cover_train_and_val(hog):
    fs = load_feature_set([hog])
    plan = selection_plan(fs, "cv", 5, [0, 1])
    dev = _rows_by_path(fs, SPLIT_TRAIN, SPLIT_VAL)
    assert np.array_equal(plan["select"], dev) and len(plan["folds"]) == 2
    groups = {}
    for row, fold in zip(plan["select"], plan["folds"][0]):
        groups.setdefault(fs.sha1[row], set()).add(int(fold))
    duplicated = [sha for sha in groups if sum(fs.sha1[r] == sha for r in dev) > 1]
    assert len(duplicated) >= 4  # the copies made above that landed in train + val
    assert all(len(groups[sha]) == 1 for sha in groups)
    assert sorted(np.unique(plan["folds"][0]).tolist()) == [0, 1, 2, 3, 4]
    for fold in range(5):  # stratified: each fold holds both classes
        assert set(fs.y[plan["select"][plan["folds"][0] == fold]].tolist()) == {0, 1}


def test_the_saved_model_is_refit_on_train_and_val_and_refit_all_keeps_the_test_figures(hog, tmp_path):
    options = dict(LOGREG, grids={"logreg": [{"head__C": [0.1]}]}, ensemble=False)
    result = run_sweep([[hog]], tmp_path / "a", **options)
    fs = load_feature_set([hog])
    dev = _rows_by_path(fs, SPLIT_TRAIN, SPLIT_VAL)
    by_hand = make_head("logreg", random_state=0, C=0.1).fit(fs.X[dev], fs.y[dev])
    bundle = SweepBundle.read(tmp_path / "a" / "best.joblib")
    assert bundle.refit == "train+val" and result.best["n_train"] == len(dev)
    np.testing.assert_allclose(bundle.model.steps[-1][1].coef_, by_hand.steps[-1][1].coef_, rtol=1e-5, atol=1e-7)
    assert bundle.class_prior == pytest.approx((np.bincount(fs.y[dev]) / len(dev)).tolist())
    test = _rows_by_path(fs, SPLIT_TEST)
    accuracy = float(np.mean(by_hand.predict(fs.X[test]) == fs.y[test]))
    assert result.best["accuracy"] == pytest.approx(accuracy)

    final = run_sweep([[hog]], tmp_path / "b", refit="all", **options)
    everything = np.concatenate([dev, test])  # the sweep's order: train + val, then test
    by_hand_all = make_head("logreg", random_state=0, C=0.1).fit(fs.X[everything], fs.y[everything])
    bundle_all = SweepBundle.read(tmp_path / "b" / "best.joblib")
    assert bundle_all.refit == "train+val+test"
    np.testing.assert_allclose(bundle_all.model.steps[-1][1].coef_, by_hand_all.steps[-1][1].coef_, rtol=1e-5,
                               atol=1e-7)
    assert final.best["accuracy"] == result.best["accuracy"]  # scored before the refit on test
    assert "test figures come from the model before that refit" in SweepSummary.read(tmp_path / "b" /
                                                                                     "results.json").protocol


def _noisy_view(cache, out, seed):
    """A copy of ``cache`` whose features are the label plus Gaussian noise (first column) and noise."""
    shutil.copy(cache, out)
    with h5py.File(out, "r+") as h5:
        labels = h5["labels"][:]
        rng = np.random.default_rng(seed)
        features = rng.normal(0, 1, h5["features"].shape).astype(np.float32)
        features[:, 0] += 1.2 * (2 * labels - 1)
        h5["features"][...] = features
    return out


def test_greedy_ensemble_across_caches_is_a_row_and_the_saved_model(hog, tmp_path):
    a = _noisy_view(hog, tmp_path / "a.h5", 1)
    b = _noisy_view(hog, tmp_path / "b.h5", 2)
    result = run_sweep([[a], [b]], tmp_path / "exp", **LOGREG)
    rows = {r["config"]: r for r in result.rows}
    ensemble = [r for r in result.rows if r["head"] == "ensemble"]
    assert len(ensemble) == 1
    members = json.loads(ensemble[0]["params"])["members"]
    assert {rows[m["config"]]["caches"] for m in members} == {str(a), str(b)}  # both views
    assert sum(m["weight"] for m in members) == pytest.approx(1.0)
    singles = [r["select_log_loss"] for r in result.rows if r["head"] != "ensemble"]
    assert ensemble[0]["select_log_loss"] < min(singles) and result.best["head"] == "ensemble"
    assert ensemble[0]["rank"] == 1 and ensemble[0]["caches"] == f"{a}+{b}"

    bundle = SweepBundle.read(tmp_path / "exp" / "best.joblib")
    assert bundle.head == "ensemble" and [e["cache"] for e in bundle.extractors] == [str(a), str(b)]
    assert [m["config"] for m in bundle.members] == [m["config"] for m in members]
    fa, fb = load_feature_set([a]), load_feature_set([b])
    dev, test = _rows_by_path(fa, SPLIT_TRAIN, SPLIT_VAL), _rows_by_path(fa, SPLIT_TEST)
    expected = np.zeros((len(test), 2))
    for m in members:  # each member refit on train + val by hand, weighted
        fs = fa if rows[m["config"]]["caches"] == str(a) else fb
        params = json.loads(rows[m["config"]]["params"])
        model = make_head("logreg", random_state=0).set_params(**params).fit(fs.X[dev], fs.y[dev])
        expected += m["weight"] * class_probabilities(model, fs.X[test], 2)
    got = bundle.model.predict_proba(np.hstack([fa.X[test], fb.X[test]]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    accuracy = float(np.mean(expected.argmax(axis=1) == fa.y[test]))
    assert ensemble[0]["accuracy"] == pytest.approx(accuracy)

    alone = run_sweep([[a], [b]], tmp_path / "no", ensemble=False, **LOGREG)
    assert all(r["head"] != "ensemble" for r in alone.rows)


def test_ranking_never_reads_the_test_labels(hog, tmp_path):
    first = run_sweep([[hog]], tmp_path / "a", **dict(LOGREG, heads=["logreg", "linsvm"],
                                                      grids={"logreg": [{"head__C": [0.001, 0.01, 1.0]}],
                                                             "linsvm": [{"head__C": [0.001, 0.1]}]}))
    with h5py.File(hog, "r+") as h5:
        test = np.flatnonzero(h5["split"].asstr()[:] == "test")
        labels = h5["labels"][:]
        labels[test] = np.random.default_rng(0).permutation(1 - labels[test])
        h5["labels"][...] = labels
    second = run_sweep([[hog]], tmp_path / "b", **dict(LOGREG, heads=["logreg", "linsvm"],
                                                       grids={"logreg": [{"head__C": [0.001, 0.01, 1.0]}],
                                                              "linsvm": [{"head__C": [0.001, 0.1]}]}))
    order = lambda result: [r["config"] for r in sorted(result.rows, key=lambda r: r["rank"])]  # noqa: E731
    assert order(first) == order(second)
    assert [r["select_log_loss"] for r in first.rows] == [r["select_log_loss"] for r in second.rows]
    assert first.best["accuracy"] >= 0.75 and second.best["accuracy"] <= 0.4  # the test labels did change


def test_auto_selects_on_val_above_the_cv_limit(hog, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "CV_MAX_ROWS", 10)
    result = run_sweep([[hog]], tmp_path / "exp", **dict(LOGREG, grids={"logreg": [{"head__C": [1.0]}]},
                                                         ensemble=False))
    fs = load_feature_set([hog])
    train, val = _rows_by_path(fs, SPLIT_TRAIN), _rows_by_path(fs, SPLIT_VAL)
    model = make_head("logreg", random_state=0, C=1.0).fit(fs.X[train], fs.y[train])
    proba = np.clip(class_probabilities(model, fs.X[val], 2), 1e-15, 1 - 1e-15)
    row = result.best
    assert row["selected_by"] == "val" and row["n_select"] == len(val)
    assert row["select_log_loss"] == pytest.approx(-np.mean(np.log(proba[np.arange(len(val)), fs.y[val]])))
    assert row["select_accuracy"] == pytest.approx(np.mean(proba.argmax(axis=1) == fs.y[val]))


def test_clip_is_chosen_by_out_of_fold_log_loss(hog, tmp_path):
    run_sweep([[hog]], tmp_path / "exp", **LOGREG)
    summary = SweepSummary.read(tmp_path / "exp" / "results.json")
    losses = {float(k): v for k, v in summary.clip_losses.items()}
    assert sorted(losses) == sorted(CLIP_CANDIDATES)
    assert losses[summary.clip] == min(losses.values())
    assert losses[1e-15] == pytest.approx(summary.best["select_log_loss"])  # unclipped: the ranking's figure
    assert SweepBundle.read(tmp_path / "exp" / "best.joblib").clip == summary.clip


def test_only_the_models_still_needed_stay_in_memory(hog, tmp_path, monkeypatch):
    alive, most = weakref.WeakSet(), []
    real = sweep_module._run_config

    def tracked(*args, **kwargs):
        result = real(*args, **kwargs)
        alive.add(result["model"])
        gc.collect()
        most.append(len(alive))
        return result

    monkeypatch.setattr(sweep_module, "_run_config", tracked)
    monkeypatch.setattr(sweep_module, "KEEP_MODELS", 2)
    grids = {"logreg": [{"head__C": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]}]}
    run_sweep([[hog]], tmp_path / "exp", **dict(LOGREG, grids=grids))
    assert len(most) == 6 and max(most) <= 3  # the two kept plus the one just returned
    gc.collect()
    assert len(alive) == 0  # nothing held once the sweep has written best.joblib


def test_cli_rejects_bad_select_and_refit_in_one_line(hog, tmp_path):
    for option, value in (("--select", "holdout"), ("--refit", "test")):
        done = subprocess.run([sys.executable, "-m", "featx.cli", "sweep", str(hog), option, value, "--out",
                               str(tmp_path / "exp")], capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        assert len(lines) == 1 and option in lines[0] and value in lines[0]
        assert not (tmp_path / "exp").exists()
