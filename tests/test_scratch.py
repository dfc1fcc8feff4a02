"""featx scratch: small CNNs trained from scratch, and their Keras Tuner search, on tiny images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest


from featx.scratch import PRESETS, Architecture, ScratchError, ScratchOptions, build_model, run_scratch
from featx.artifacts.results import RESULT_COLUMNS  # noqa: E402

# 40 images of 48 px, split by hash: about 10 val and 10 test images.
FAST = dict(image_size=32, epochs=1, batch_size=16, val=0.25, test=0.25, n_boot=50, workers=2)


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def _weights(model_path: Path) -> list[np.ndarray]:
    import keras

    return [np.asarray(w) for w in keras.saving.load_model(model_path, compile=False).get_weights()]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same one-epoch run twice with the same seed, into two experiment folders."""
    from conftest import make_kaggle_images

    root = make_kaggle_images(tmp_path_factory.mktemp("kaggle") / "train", 20)
    base = tmp_path_factory.mktemp("experiments")
    first = run_scratch(root, base / "first", seed=3, **FAST)
    second = run_scratch(root, base / "second", seed=3, **FAST)
    return root, first, second


@pytest.mark.keras
def test_one_epoch_writes_every_output(two_runs):
    root, result, _ = two_runs
    out = result.out_dir
    assert out.name == "scratch"
    for name in ("model.keras", "model.json", "history.csv", "results.csv", "predictions.npz", "curves.png"):
        assert (out / name).is_file(), name
    assert not any(p.name.startswith(".work") for p in out.iterdir())
    info = json.loads((out / "model.json").read_text())
    assert info["label_names"] == ["cat", "dog"]
    assert info["input_size"] == [32, 32]
    assert info["preprocessing"] == {"size": [32, 32], "interpolation": "area"}
    assert info["architecture"]["filters"] == [32, 32, 64]
    _, history = _read_rows(out / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1]
    assert 0.0 <= float(history[0]["val_accuracy"]) <= 1.0 and float(history[0]["seconds"]) > 0


def test_results_row_has_the_sweeps_columns_and_real_metrics(two_runs):
    _, result, _ = two_runs
    columns, rows = _read_rows(result.out_dir / "results.csv")
    assert columns == RESULT_COLUMNS
    assert len(rows) == 1
    row = rows[0]
    assert row["head"] == "scratch" and row["features"] == "scratch:keras-blog@32px"
    assert row["selected_by"] == "val-epoch" and row["repeats"] == "1"
    params = json.loads(row["params"])
    assert params["epochs"] == 1 and params["image_size"] == 32 and params["best_epoch"] == 1
    with np.load(result.out_dir / "predictions.npz") as saved:
        y_test, proba = saved["y_test"], saved["config_0"]
        assert list(saved["label_names"]) == ["cat", "dog"]
        assert len(saved["paths"]) == len(y_test)
    assert int(row["n_test"]) == len(y_test) > 0
    assert int(row["n_train"]) + len(y_test) < 40
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float(np.mean(proba.argmax(axis=1) == y_test))
    assert float(row["accuracy"]) == pytest.approx(accuracy, abs=1e-5)
    assert float(row["accuracy_low"]) <= accuracy <= float(row["accuracy_high"])
    # select_accuracy is the kept epoch's val accuracy
    _, history = _read_rows(result.out_dir / "history.csv")
    assert float(row["select_accuracy"]) == pytest.approx(float(history[0]["val_accuracy"]), abs=1e-5)


def test_saved_model_reloads_and_predicts_the_same_probabilities(two_runs):
    import keras

    from featx.images import load_image

    root, result, _ = two_runs
    with np.load(result.out_dir / "predictions.npz") as saved:
        paths, expected = list(saved["paths"]), saved["config_0"]
    model = keras.saving.load_model(result.out_dir / "model.keras")
    images = np.stack([load_image(root / p, size=(32, 32), interpolation="area") for p in paths]).astype(np.float32)
    got = model.predict(images, verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.keras
def test_featx_predict_reads_the_scratch_folder(two_runs):
    import featx.predict as predict

    root, result, _ = two_runs
    model = predict.load_model(result.out_dir)
    predictions = predict.predict(model, root)
    with np.load(result.out_dir / "predictions.npz") as saved:
        paths, expected = list(saved["paths"]), saved["config_0"]
    by_path = dict(zip(predictions.paths, predictions.proba))
    np.testing.assert_allclose(np.stack([by_path[p] for p in paths]), expected, atol=1e-5)


def test_model_card_and_run_state_are_versioned_and_old_files_still_read(two_runs, tmp_path):
    import re
    import shutil

    import featx.predict as predict
    from featx.artifacts import ArtifactError

    root, result, _ = two_runs
    folder = tmp_path / "exp" / "scratch"
    shutil.copytree(result.out_dir, folder)
    card = json.loads((folder / "model.json").read_text())
    assert card.pop("schema") == {"kind": "model_card", "version": 1}
    # model.json as featx wrote it before records: the same keys, no header.
    (folder / "model.json").write_text(json.dumps(card, indent=1))
    model = predict.load_model(folder)
    assert model.preprocessing == {"size": [32, 32], "interpolation": "area"}
    assert model.info["architecture"]["filters"] == [32, 32, 64] and model.info["best_epoch"] == 1
    with np.load(folder / "predictions.npz") as saved:
        paths, expected = list(saved["paths"]), saved["config_0"]
    predictions = predict.predict(model, root)
    by_path = dict(zip(predictions.paths, predictions.proba))
    np.testing.assert_allclose(np.stack([by_path[p] for p in paths]), expected, atol=1e-5)

    # A newer schema is refused with one line naming the file.
    (folder / "model.json").write_text(json.dumps({**card, "schema": {"kind": "model_card", "version": 2}}))
    with pytest.raises(ArtifactError, match=re.escape(f"{folder / 'model.json'} was written by a newer featx")):
        predict.load_model(folder)
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**state, "schema": {"kind": "run_state", "version": 2}}))
    with pytest.raises(ArtifactError, match=re.escape(f"{folder / 'state.json'} was written by a newer featx")):
        run_scratch(root, tmp_path / "exp", seed=3, **FAST)


@pytest.mark.keras
def test_same_seed_gives_the_same_weights_and_val_accuracy(two_runs):
    _, first, second = two_runs
    assert first.row["select_accuracy"] == second.row["select_accuracy"]
    assert first.history == [{**h, "seconds": first.history[i]["seconds"]} for i, h in enumerate(second.history)]
    for a, b in zip(_weights(first.out_dir / "model.keras"), _weights(second.out_dir / "model.keras")):
        np.testing.assert_array_equal(a, b)


@pytest.mark.keras
def test_random_search_resumes_and_respects_its_budgets(kaggle_dir, tmp_path):
    # No augmentation in the search tests (tracing its layers costs ~0.5 s a trial); the resume and
    # same-seed tests keep it.
    options = dict(FAST, tune=True, tuner="random", max_trials=2, trial_epochs=1, seed=0, augment=False)
    result = run_scratch(kaggle_dir, tmp_path / "exp", **options)
    assert result.out_dir.name == "scratch-tuned"
    assert result.new_trials == 2 and len(result.trials) == 2
    assert all(t["status"] == "COMPLETED" for t in result.trials)
    best_id = json.loads((result.out_dir / "model.json").read_text())["tuning"]["best_trial"]
    best = next(t for t in result.trials if t["trial"] == best_id)
    assert best["val_accuracy"] == max(t["val_accuracy"] for t in result.trials)
    assert result.architecture.kernel_size == best["kernel_size"]
    assert len(result.architecture.filters) == best["conv_blocks"]
    assert result.architecture.dense_units == best["dense_units"]
    _, trial_rows = _read_rows(result.out_dir / "trials.csv")
    assert [r["trial"] for r in trial_rows] == [t["trial"] for t in result.trials]
    _, rows = _read_rows(result.out_dir / "results.csv")
    assert rows[0]["head"] == "scratch-tuned"

    # max_trials reached: the second call runs no trial and no epoch: it keeps the retrained weights
    weights = _weights(result.out_dir / "model.keras")
    again = run_scratch(kaggle_dir, tmp_path / "exp", **options)
    assert again.new_trials == 0 and len(again.trials) == 2
    assert again.row["accuracy"] == pytest.approx(result.row["accuracy"], abs=1e-5)
    assert again.best_epoch == result.best_epoch
    # history.csv keeps 6 significant digits
    assert [h["val_accuracy"] for h in again.history] == pytest.approx([h["val_accuracy"] for h in result.history],
                                                                       rel=1e-5)
    for before, after in zip(weights, _weights(result.out_dir / "model.keras")):
        np.testing.assert_array_equal(before, after)

    # more trials allowed but the minutes are spent: no trial starts, the earlier best is retrained
    spent = run_scratch(kaggle_dir, tmp_path / "exp", **dict(options, max_trials=5, max_minutes=1e-6))
    assert spent.new_trials == 0 and len(spent.trials) == 2

    # another search in the same folder is refused, with the way out
    with pytest.raises(ScratchError, match="--restart"):
        run_scratch(kaggle_dir, tmp_path / "exp", **dict(options, trial_epochs=2))


def test_interrupted_training_resumes_where_it_stopped(kaggle_dir, tmp_path, monkeypatch):
    from test_finetune import _crash_in_second_epoch  # wraps TrainingRun.callbacks: dies in epoch 2

    from featx.training import TrainingRun

    options = dict(FAST, epochs=2, patience=0, seed=1)
    whole = run_scratch(kaggle_dir, tmp_path / "whole", **options)
    original = TrainingRun.callbacks
    monkeypatch.setattr(TrainingRun, "callbacks", _crash_in_second_epoch(original))
    with pytest.raises(KeyboardInterrupt):
        run_scratch(kaggle_dir, tmp_path / "cut", **options)
    monkeypatch.setattr(TrainingRun, "callbacks", original)
    out = tmp_path / "cut" / "scratch"
    state = json.loads((out / "state.json").read_text())
    assert state["epochs_done"] == 1 and (out / "checkpoint").is_dir() and (out / "best.weights.h5").is_file()
    assert state["built_from"]["architecture"]["filters"] == [32, 32, 64]
    _, before = _read_rows(out / "history.csv")
    assert [int(r["epoch"]) for r in before] == [1]
    # state.json as featx wrote it before it carried a schema header still resumes.
    assert state.pop("schema") == {"kind": "run_state", "version": 1}
    (out / "state.json").write_text(json.dumps(state, indent=2))

    # Started again, it continues with epoch 2: epoch 1 is the interrupted run's, epoch 2 the uninterrupted one's.
    resumed = run_scratch(kaggle_dir, tmp_path / "cut", **options)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0]["loss"] == pytest.approx(float(before[0]["loss"]), rel=1e-5)
    for key in ("loss", "val_loss", "val_accuracy"):
        assert [h[key] for h in resumed.history] == pytest.approx([h[key] for h in whole.history], rel=1e-4), key
    assert resumed.best_epoch == whole.best_epoch
    assert resumed.row["accuracy"] == pytest.approx(whole.row["accuracy"], abs=1e-6)

    # Asked again with another preset, the folder is refused (one line naming what changed), or restarted.
    with pytest.raises(ScratchError, match=r"built from 3 blocks \[32, 32, 64\].*architecture changed.*--restart"):
        run_scratch(kaggle_dir, tmp_path / "cut", **dict(options, preset="bn-gap"))
    again = run_scratch(kaggle_dir, tmp_path / "cut", **dict(options, preset="bn-gap", restart=True))
    assert json.loads((out / "state.json").read_text())["built_from"]["architecture"]["filters"] == [32, 64, 128, 256]
    assert [h["epoch"] for h in again.history] == [1, 2]


def test_second_writer_of_one_stage_folder_gets_one_line_naming_the_holder(kaggle_dir, tmp_path):
    import os

    from featx.storage import BusyError, locked

    with locked(tmp_path / "exp" / "scratch"):
        with pytest.raises(BusyError, match=rf"scratch \(featx scratch\) is being written by pid {os.getpid()} "):
            run_scratch(kaggle_dir, tmp_path / "exp", **FAST)
    assert not (tmp_path / "exp" / "scratch").exists()
    with locked(tmp_path / "exp" / "scratch-tuned"):  # the tuned folder has its own lock
        with pytest.raises(BusyError, match=r"scratch-tuned \(featx scratch\) is being written by pid"):
            run_scratch(kaggle_dir, tmp_path / "exp", **dict(FAST, tune=True, tuner="random", max_trials=1))


def test_bayesian_search_proposes_after_its_random_start(kaggle_dir, tmp_path):
    # 3 trials: 2 random initial points, then one proposed by the Gaussian process
    result = run_scratch(kaggle_dir, tmp_path / "exp", **dict(FAST, tune=True, tuner="bayesian", max_trials=3,
                                                              trial_epochs=1, augment=False))
    assert result.new_trials == 3
    oracle = json.loads((result.out_dir / "tuner" / "search" / "oracle.json").read_text())
    assert oracle["num_initial_points"] == 2
    scores = [t["val_accuracy"] for t in result.trials]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert result.row["select_accuracy"] >= 0.0
    assert (result.out_dir / "tuner" / "search").is_dir()


def test_multiclass_streamed_from_disk_with_an_unreadable_image(folders_dir, tmp_path):
    root = folders_dir
    (root / "a" / "img999.png").write_bytes(b"not a png")
    # memory_limit_mb=0: decoded batch by batch (the large-dataset path)
    options = ScratchOptions(preset="bn-gap", image_size=32, epochs=2, batch_size=8, patience=0, workers=2,
                             memory_limit_mb=0)
    result = run_scratch(root, tmp_path / "exp", options)
    line = result.summary()
    assert result.row["n_test"] > 0
    with np.load(result.out_dir / "predictions.npz") as saved:
        assert saved["config_0"].shape == (result.row["n_test"], 3)
        assert list(saved["label_names"]) == ["a", "b", "c"]
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert "test accuracy" in line


def test_streaming_path_skips_unreadable_images(folders_dir, tmp_path):
    from featx.data import build_manifest
    from featx.scratch import load_splits

    root = folders_dir
    (root / "b" / "broken.png").write_bytes(b"not a png")
    manifest = build_manifest(root, val=0.2, test=0.2, seed=0)
    streamed = load_splits(manifest, image_size=16, memory_limit_mb=0)
    in_memory = load_splits(manifest, image_size=16)
    assert all(s.images is None for s in streamed.values())
    for name, split in in_memory.items():
        rows = np.arange(len(streamed[name]))
        pixels, kept = streamed[name].pixels(rows)
        assert pixels.dtype == np.uint8 and pixels.shape[1:] == (16, 16, 3)
        kept_paths = [streamed[name].paths[i] for i in kept]
        assert kept_paths == split.paths
        np.testing.assert_array_equal(pixels, split.images)
    failed = [path for split in in_memory.values() for path, _ in split.failed]
    assert failed == ["b/broken.png"]


def test_presets_build_with_the_published_shapes():
    keras_blog = build_model(PRESETS["keras-blog"], n_classes=2, image_size=150, augment=False)
    convs = [layer for layer in keras_blog.layers if layer.name.endswith("_conv1")]
    assert [layer.filters for layer in convs] == [32, 32, 64]
    # 150 -> 148/2=74 -> 72/2=36 -> 34/2=17: Flatten 17*17*64, then Dense 64 and the 2-way softmax
    assert keras_blog.get_layer("flatten").output.shape[-1] == 17 * 17 * 64
    assert keras_blog.output_shape == (None, 2)
    vgg_mini = build_model(PRESETS["vgg-mini"], n_classes=5, image_size=64, augment=True)
    assert vgg_mini.get_layer("dense").units == 512 and vgg_mini.output_shape == (None, 5)
    assert vgg_mini.get_layer("augmentation") is not None


def test_too_small_images_and_bad_options_are_refused(kaggle_dir, tmp_path):
    assert PRESETS["vgg-mini"].min_image_size() == 46
    with pytest.raises(ScratchError, match="at least 46 px"):
        run_scratch(kaggle_dir, tmp_path / "exp", preset="vgg-mini", image_size=32)
    with pytest.raises(ScratchError, match="unknown preset 'resnet'"):
        run_scratch(kaggle_dir, tmp_path / "exp", preset="resnet")
    with pytest.raises(ScratchError, match="--tuner must be one of bayesian, random; got 'grid'"):
        run_scratch(kaggle_dir, tmp_path / "exp", tune=True, tuner="grid")
    with pytest.raises(ScratchError, match="dropout must be in"):
        Architecture(dropout=1.5).validate()
    with pytest.raises(ScratchError, match="needs all three"):
        run_scratch(kaggle_dir, tmp_path / "exp", image_size=24, val=0.0)
    assert not (tmp_path / "exp").exists()


def test_cli_scratch_lands_beside_a_sweep_in_one_report(kaggle_dir, tmp_path):
    """index -> cache hog -> sweep -> scratch on the same manifest -> one report with both."""
    from typer.testing import CliRunner

    from featx.cli import app

    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    manifest, out = tmp_path / "manifest.csv", tmp_path / "exp"
    invoke("index", kaggle_dir, "-o", manifest, "--val", "0.25", "--test", "0.25", "--seed", "1")
    invoke("cache", manifest, "-e", "hog", "--opt", "size=32", "--cache-dir", tmp_path / "cache")
    cache = next((tmp_path / "cache").glob("*.h5"))
    invoke("sweep", cache, "--heads", "logreg", "--out", out, "--n-boot", "20", "--no-learning-curve")
    result = invoke("scratch", manifest, "--out", out, "--image-size", "32", "--epochs", "1", "--batch-size", "16",
                    "--n-boot", "20", "--workers", "2", "--seed", "1")
    assert "scratch:keras-blog@32px test accuracy" in result.output
    _, rows = _read_rows(out / "scratch" / "results.csv")
    assert rows[0]["head"] == "scratch" and 0.0 <= float(rows[0]["accuracy"]) <= 1.0
    invoke("report", out)
    table = (out / "report.md").read_text()
    assert "scratch" in table and "logreg" in table

    bad = runner.invoke(app, ["scratch", str(kaggle_dir), "--out", str(tmp_path / "bad"), "--preset", "resnet"])
    assert bad.exit_code == 2 and "unknown preset 'resnet'" in bad.output
    assert not (tmp_path / "bad").exists()
