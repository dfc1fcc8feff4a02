"""featx.finetune: warm start and unfreezing on a tiny seeded MobileNetV2 (32 px); training, resumption,
the CLI and the stage-folder checks (bugs 2 and 3) on the two-block test backbone ``tinycnn``.

Both the cache and the fine-tune model load the same seeded weights file, so the
fine-tune model must reproduce the sweep heads' probabilities before training.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import tiny_backbone
from conftest import make_image, make_kaggle_images, save_mobilenet_weights

import keras  # noqa: E402

from featx.data import build_manifest  # noqa: E402
from featx.datasets import decode_group  # noqa: E402
from featx.extractors import get_extractor  # noqa: E402
from featx.finetune import (FinetuneError, build_finetune_model, check_warm_start,  # noqa: E402
                            load_base_head, read_image_splits, run_finetune, set_trainable)
from featx.pipeline import build_cache  # noqa: E402
from featx.training import custom_objects  # noqa: E402
from featx.artifacts.results import RESULT_COLUMNS  # noqa: E402
from featx.sweep import run_sweep  # noqa: E402

BACKBONE = "keras:mobilenet_v2"
TINY = {"input_size": 32, "pool": "avg"}
GRIDS = {
    "logreg": [{"head__C": [1.0]}],
    "linsvm": [{"head__C": [0.1]}],
    "rbfsvm": [{"head__C": [1.0]}],
    "dense": [{"head__hidden_units": [8], "head__epochs": [3], "head__learning_rate": [1e-2],
               "head__patience": [None]}],
}


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """Seeded random MobileNetV2 weights at 32 px, saved once so extraction and fine-tuning share them."""
    return save_mobilenet_weights(tmp_path_factory.mktemp("weights") / "mobilenet_v2_tiny.weights.h5")


@pytest.fixture(scope="module")
def extractor(weights_file):
    """One backbone for the module: building MobileNetV2 costs seconds, sharing it keeps the file fast."""
    return get_extractor(BACKBONE, weights=str(weights_file), **TINY)


@pytest.fixture(scope="module")
def tiny_extractor(tmp_path_factory):
    """The test backbone ``tinycnn`` (tests/tiny_backbone.py) for the tests whose claims hold on any backbone."""
    path = tiny_backbone.save_weights(tmp_path_factory.mktemp("tiny") / "tinycnn.weights.h5")
    return get_extractor(tiny_backbone.NAME, weights=str(path))


def _cache(root: Path, extractor, out: Path, runtime: str = "auto") -> Path:
    manifest = build_manifest(root, val=0.25, test=0.25, seed=0)
    return build_cache(manifest, extractor, cache_dir=out / "cache", batch_size=16, workers=2, runtime=runtime).path


@pytest.fixture(scope="module")
def binary_experiment(tmp_path_factory, extractor) -> Path:
    """32 cat/dog images -> cache -> sweep of logreg, linsvm, rbfsvm and dense (one config each)."""
    base = tmp_path_factory.mktemp("binary")
    root = make_kaggle_images(base / "train", 16)
    cache = _cache(root, extractor, base)
    out = base / "experiments" / "tiny"
    run_sweep([[cache]], out, heads=["logreg", "linsvm", "rbfsvm", "dense"], grids=GRIDS, n_boot=20,
              learning_curve=False, seed=0)
    return out


def load_images(paths, preprocessing) -> np.ndarray:
    """float32 pixels of absolute ``paths``, decoded as featx.datasets decodes them for the model."""
    images, ok, _ = decode_group("", paths, preprocessing)
    assert ok.all()
    return images.astype(np.float32)


def _config_of(experiment: Path, head: str) -> int:
    rows = json.loads((experiment / "results.json").read_text())["rows"]
    return next(int(row["config"]) for row in rows if row["head"] == head)


@pytest.mark.parametrize("head", ["logreg", "linsvm", "dense"])
def test_warm_start_reproduces_the_head_before_training(binary_experiment, extractor, head):
    base = load_base_head(binary_experiment, config=_config_of(binary_experiment, head))
    assert base.head_name == head
    model = build_finetune_model(base, extractor)
    difference = check_warm_start(model, base, n_images=64, split="train")
    assert difference < 1e-4
    # Same check written out: raw images through the model vs predict_proba on the cached features.
    from featx.cache import open_cache

    with open_cache(base.cache_path) as cache:
        features = cache.features[:].astype(np.float32)
        paths = [str(Path(cache.attrs["root"]) / p) for p in cache.paths]
    expected = base.model.predict_proba(features)
    got = model.predict(load_images(paths, base.extractor_spec["preprocessing"]), verbose=0)
    assert got.shape == expected.shape == (32, 2)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.ptp(expected[:, 1]) > 0.05  # the head's outputs differ between images: the check has teeth
    assert np.abs(features).mean() > 1e-3  # features on a usable scale


def test_linear_heads_with_l2_and_pca_steps_and_three_classes(tmp_path, extractor):
    root = tmp_path / "shapes"
    for label in ("a", "b", "c"):
        for i in range(10):
            make_image(root / label / f"img{i:03d}.png", label, i + 1000 * ord(label))
    cache = _cache(root, extractor, tmp_path)
    out = tmp_path / "experiments" / "three"
    run_sweep([[cache]], out, heads=["logreg", "linsvm"], grids=GRIDS, preprocessing=["l2", "pca:6", "standard"],
              n_boot=20, learning_curve=False, seed=0)
    for head in ("logreg", "linsvm"):
        base = load_base_head(out, config=_config_of(out, head))
        model = build_finetune_model(base, extractor)
        assert model.output_shape == (None, 3)
        assert check_warm_start(model, base, n_images=64, split="train") < 1e-4


def test_heads_that_cannot_be_fine_tuned_get_a_clear_error(binary_experiment, tmp_path):
    with pytest.raises(FinetuneError, match=r"RBF.*--config \d"):
        load_base_head(binary_experiment, config=_config_of(binary_experiment, "rbfsvm"))
    with pytest.raises(FinetuneError, match="not a configuration"):
        load_base_head(binary_experiment, config=99)
    from featx.artifacts import ArtifactError

    with pytest.raises(ArtifactError, match="results.json does not exist; run featx sweep"):
        load_base_head(tmp_path)


def test_unfreeze_modes_choose_layers_and_keep_batch_norm_frozen(binary_experiment, extractor):
    base = load_base_head(binary_experiment, config=_config_of(binary_experiment, "logreg"))
    model = build_finetune_model(base, extractor)
    backbone = model.get_layer("backbone")
    weighted = [layer for layer in backbone.layers if layer.weights]
    batch_norms = [layer for layer in weighted if isinstance(layer, keras.layers.BatchNormalization)]

    top = set_trainable(model, "top", BACKBONE)
    assert top and all(name.startswith(("block_15_", "block_16_", "Conv_1")) for name in top)
    assert "block_16_project" in top and "block_14_project" not in top

    last = set_trainable(model, 6, BACKBONE)
    expected = [layer.name for layer in weighted[-6:] if not isinstance(layer, keras.layers.BatchNormalization)]
    assert last == expected and 0 < len(last) < 6

    everything = set_trainable(model, "all", BACKBONE)
    assert len(everything) == len(weighted) - len(batch_norms)
    assert not any(layer.trainable for layer in batch_norms)
    assert model.get_layer("head_output").trainable
    assert len(model.trainable_weights) > len(model.get_layer("head_output").weights)

    assert set_trainable(model, "none", BACKBONE) == []
    assert [w.name for w in model.trainable_weights] == [w.name for w in model.get_layer("head_output").weights]
    with pytest.raises(FinetuneError, match="unfreeze must be"):
        set_trainable(model, "bottom", BACKBONE)


def _crash_in_second_epoch(original):
    """Wrap TrainingRun.callbacks so that training dies at the first batch of epoch 2."""

    def make_callbacks(*args, **kwargs):
        class CrashInSecondEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_train_batch_begin(self, batch, logs=None):
                if self.epoch == 1:
                    raise KeyboardInterrupt("simulated interruption")

        return original(*args, **kwargs) + [CrashInSecondEpoch()]

    return make_callbacks


@pytest.mark.keras
def test_finetune_resumes_after_interruption_and_writes_a_reloadable_model(tiny_extractor, tmp_path, monkeypatch):
    from featx.training import TrainingRun

    experiment = _own_experiment(tmp_path, tiny_extractor, ["logreg", "linsvm"])
    options = dict(unfreeze=2, epochs=2, learning_rate=1e-3, batch_size=8, patience=None, n_boot=20, seed=0)
    original = TrainingRun.callbacks
    monkeypatch.setattr(TrainingRun, "callbacks", _crash_in_second_epoch(original))
    with pytest.raises(KeyboardInterrupt):
        run_finetune(experiment, **options)
    monkeypatch.setattr(TrainingRun, "callbacks", original)
    out = experiment / "finetune"
    state = json.loads((out / "state.json").read_text())
    assert state["epochs_done"] == 1 and state["warm_start_difference"] < 1e-4
    assert (out / "checkpoint").is_dir() and (out / "best.weights.h5").is_file()

    # Started again, it continues from the checkpoint: only epoch 2 runs.
    result = run_finetune(experiment, **options)
    assert result.epochs_run == 1
    for name in ("history.csv", "curves.png", "best.weights.h5", "model.keras", "model.json", "results.csv",
                 "predictions.npz"):
        assert (out / name).is_file(), name
    with open(out / "history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in history] == [0, 1, 2]
    assert history[0]["loss"] == "" and float(history[1]["loss"]) > 0 and float(history[2]["loss"]) > 0
    # Epoch 0 is the warm start, which reproduces the head: its val accuracy is the head's on cached features.
    base = load_base_head(experiment)
    from featx.cache import open_cache

    splits = read_image_splits(base.cache_path)
    val_rows = splits.rows("val")
    with open_cache(base.cache_path) as cache:
        head_val = base.model.predict_proba(cache.features[:].astype(np.float32)[val_rows]).argmax(axis=1)
    assert float(history[0]["val_accuracy"]) == pytest.approx(float(np.mean(head_val == splits.labels[val_rows])))
    assert float(history[2]["learning_rate"]) < float(history[1]["learning_rate"]) < 1e-3  # cosine decay
    # The summary's "val before -> after" are the warm start's and the kept epoch's values, measured alike.
    kept = json.loads((out / "state.json").read_text())["best_epoch"]
    for key in ("val_loss", "val_accuracy"):  # history.csv writes floats as f"{value:.6g}"
        assert f"{result.val_before[key]:.6g}" == history[0][key]
        assert f"{result.val_after[key]:.6g}" == history[kept][key]

    with open(out / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == RESULT_COLUMNS and len(rows) == 1
    assert rows[0]["head"] == "finetune" and rows[0]["features"] == f"{tiny_backbone.NAME}+finetune"

    info = json.loads((out / "model.json").read_text())
    assert info["input_size"] == [32, 32] and info["label_names"] == ["cat", "dog"]
    assert info["backbone"]["name"] == tiny_backbone.NAME and info["base_config"]["config"] == result.row["config"]

    # model.keras is self-contained (raw RGB in) and gives the probabilities the run reported on test.
    custom_objects()
    reloaded = keras.models.load_model(out / "model.keras")
    splits = read_image_splits(load_base_head(experiment).cache_path)
    test_rows = splits.rows("test")
    proba = reloaded.predict(load_images([splits.paths[i] for i in test_rows], info["preprocessing"]), verbose=0)
    assert proba.shape == (len(test_rows), 2)
    np.testing.assert_allclose(proba, np.load(out / "predictions.npz")["config_0"], atol=1e-5)
    accuracy = float(np.mean(proba.argmax(axis=1) == splits.labels[test_rows]))
    assert float(rows[0]["accuracy"]) == pytest.approx(accuracy, abs=1e-5)
    # select_accuracy is the kept weights' val accuracy, recomputed here from the images.
    val_proba = reloaded.predict(load_images([splits.paths[i] for i in val_rows], info["preprocessing"]), verbose=0)
    assert float(rows[0]["select_accuracy"]) == pytest.approx(
        float(np.mean(val_proba.argmax(axis=1) == splits.labels[val_rows])), abs=1e-5)

    # After 2 epochs (the checkpoint's last weights) the unfrozen layers moved and batch norm did not:
    # it stays in inference mode, so its moving statistics are those of the weights file.
    last = keras.models.clone_model(reloaded)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        last.load_weights(out / "checkpoint" / "latest.weights.h5")
    reference = get_extractor(tiny_backbone.NAME, weights=info["backbone"]["params"]["weights"]).model
    last_backbone = last.get_layer("backbone")
    assert not np.allclose(np.asarray(last_backbone.get_layer("block2_conv").kernel),
                           np.asarray(reference.get_layer("block2_conv").kernel))
    np.testing.assert_array_equal(np.asarray(last_backbone.get_layer("block1_conv").kernel),
                                  np.asarray(reference.get_layer("block1_conv").kernel))
    for name in ("block1_bn", "block2_bn"):
        for before, after in zip(reference.get_layer(name).non_trainable_weights,
                                 last_backbone.get_layer(name).non_trainable_weights):
            np.testing.assert_array_equal(np.asarray(before), np.asarray(after))

    # featx predict / evaluate read the folder as it is.
    import featx.predict as predict

    assert predict.load_model(out).label_names == ["cat", "dog"]

    # Other settings are refused without --restart, before any work.
    with pytest.raises(FinetuneError, match="restart"):
        run_finetune(experiment, **{**options, "unfreeze": "top"})


@pytest.mark.keras
def test_cli_finetune_then_report_and_predict(tiny_extractor, tmp_path):
    from typer.testing import CliRunner

    from featx.cli import app

    experiment = _own_experiment(tmp_path / "own", tiny_extractor, ["logreg", "linsvm"])
    runner = CliRunner()
    result = runner.invoke(app, ["finetune", str(experiment), "--restart", "--unfreeze", "4", "--epochs", "1",
                                 "--lr", "1e-3", "--batch-size", "8", "--patience", "0", "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    assert "warm start" in result.output and "finetune test accuracy" in result.output
    row = next(csv.DictReader(open(experiment / "finetune" / "results.csv", newline="")))
    assert row["head"] == "finetune" and 0.0 <= float(row["accuracy"]) <= 1.0

    report = runner.invoke(app, ["report", str(experiment)])
    assert report.exit_code == 0, report.output
    text = (experiment / "report.md").read_text()
    assert "finetune" in text and "logreg" in text

    test_dir = tmp_path / "test1"
    for i in range(3):
        make_image(test_dir / f"{i + 1}.png", "cat" if i % 2 else "dog", 500 + i)
    submission = tmp_path / "submission.csv"
    predicted = runner.invoke(app, ["predict", str(experiment / "finetune"), str(test_dir), "-o",
                                    str(submission), "--cache-dir", str(tmp_path / "cache")])
    assert predicted.exit_code == 0, predicted.output
    lines = submission.read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 4
    assert all(0.0 <= float(line.split(",")[1]) <= 1.0 for line in lines[1:])

    bad = runner.invoke(app, ["finetune", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "nowhere" in bad.output


def test_second_finetune_of_one_experiment_gets_one_line_naming_the_holder(binary_experiment):
    import os

    from typer.testing import CliRunner

    from featx.cli import app
    from featx.storage import locked

    folder = binary_experiment / "finetune"

    def listing():
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else None

    before = listing()
    with locked(folder):
        result = CliRunner().invoke(app, ["finetune", str(binary_experiment), "--restart", "--epochs", "1"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"finetune (featx finetune) is being written by pid {os.getpid()} " in lines[0]
    assert listing() == before  # --restart waited for the lock: nothing removed


# -- bug 2: a kept finetune/ built from another head is refused, or restarted when asked ------------

def _own_experiment(tmp_path, extractor, heads) -> Path:
    root = make_kaggle_images(tmp_path / "train", 8)
    cache = _cache(root, extractor, tmp_path, runtime="keras")  # these claims hold whatever computed the cache
    out = tmp_path / "experiments" / "own"
    # 16 images: too few distinct ones per class for 5-fold CV; val selection is enough for these claims.
    run_sweep([[cache]], out, heads=heads, grids=GRIDS, n_boot=20, learning_curve=False, seed=0, select="val")
    return out


def test_finetune_refuses_to_resume_a_folder_built_from_another_head(tmp_path, tiny_extractor):
    options = dict(unfreeze="none", epochs=1, learning_rate=1e-3, batch_size=8, patience=None, n_boot=20, seed=0)
    experiment = _own_experiment(tmp_path, tiny_extractor, ["logreg"])
    first = run_finetune(experiment, **options)
    assert json.loads(first.row["params"])["base_head"] == "logreg"
    run_sweep([[load_base_head(experiment).cache_path]], experiment, heads=["linsvm"], grids=GRIDS, n_boot=20,
              learning_curve=False, seed=0, select="val")  # the re-sweep keeps finetune/ but picks another head
    state_before = (experiment / "finetune" / "state.json").read_text()
    with pytest.raises(FinetuneError, match=r"built from config 0 of sweep \w+ \(logreg .*but now from "
                                            r"config 0 of sweep \w+ \(linsvm.*head, params, sweep_id changed.*"
                                            r"--restart"):
        run_finetune(experiment, **{**options, "epochs": 2})
    assert (experiment / "finetune" / "state.json").read_text() == state_before  # nothing touched
    again = run_finetune(experiment, restart=True, **options)
    assert json.loads(again.row["params"])["base_head"] == "linsvm"
    state = json.loads((experiment / "finetune" / "state.json").read_text())
    assert state["built_from"]["head"] == "linsvm" and state["epochs_done"] == 1


# -- bug 3: a model that does not reproduce the head is refused unless the user overrides -----------

def test_finetune_refuses_a_warm_start_gap_unless_overridden(tmp_path, tiny_extractor):
    import h5py

    options = dict(unfreeze="none", epochs=1, learning_rate=1e-3, batch_size=8, patience=None, n_boot=20, seed=0)
    experiment = _own_experiment(tmp_path, tiny_extractor, ["logreg"])
    cache = load_base_head(experiment).cache_path
    with h5py.File(cache, "r+") as h5:  # the cache no longer matches what the backbone computes
        h5["features"][...] = h5["features"][...] * 3.0 + 1.0
    with pytest.raises(FinetuneError, match=r"does not reproduce the sweep's head.*= \d.*tolerance 0\.001.*"
                                            r"--allow-warm-start-gap"):
        run_finetune(experiment, **options)
    assert not (experiment / "finetune").exists()  # no half-written folder
    result = run_finetune(experiment, allow_warm_start_gap=True, **options)
    assert result.warm_start_difference > 1e-3
    state = json.loads((experiment / "finetune" / "state.json").read_text())
    assert state["warm_start_difference"] == pytest.approx(result.warm_start_difference)
