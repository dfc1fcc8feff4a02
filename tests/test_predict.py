"""featx predict / evaluate: a real sweep's best.joblib (HoG, SIFT) and a fine-tune folder on tiny images."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import joblib
import numpy as np
import pytest

from conftest import make_image
from featx.cache import open_cache
from featx.data import build_manifest
from featx.extractors import get_extractor
from featx.images import load_image
from featx.pipeline import build_cache
from featx.artifacts import ArtifactError
from featx.artifacts.results import SweepBundle
from featx.predict import (FineTunedModel, ModelError, SweepModel, evaluate, load_model, predict, state_sha256,
                           write_submission)
from featx.sweep import run_sweep

HOG_OPTIONS = {"size": 32}
SIFT_OPTIONS = {"k": 16, "size": 48, "dense": True, "step": 8, "scale": 16.0}


def make_kaggle_folder(root: Path, n_per_class: int, first_index: int) -> Path:
    """cat.N.png (vertical stripes) and dog.N.png (horizontal stripes)."""
    for i in range(first_index, first_index + n_per_class):
        make_image(root / f"cat.{i}.png", "cat", i)
        make_image(root / f"dog.{i}.png", "dog", 10_000 + i)
    return root


def make_unlabeled_folder(root: Path, n_images: int, kinds=("cat", "dog")) -> tuple[Path, dict[str, str]]:
    """Kaggle's test1 layout: 1.png, 2.png ...; returns the folder and the kind of each id."""
    kind_of = {}
    for i in range(1, n_images + 1):
        kind = kinds[i % len(kinds)]
        make_image(root / f"{i}.png", kind, 50_000 + i)
        kind_of[str(i)] = kind
    return root, kind_of


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def sweep_one_cache(cache_paths: Path | list[Path], out_dir: Path) -> Path:
    """Sweep logistic regression on one cache (or several, concatenated); returns best.joblib."""
    cache_set = cache_paths if isinstance(cache_paths, list) else [cache_paths]
    run_sweep([cache_set], out_dir, heads=["logreg"], cv=3, n_boot=50, learning_curve=False)
    return out_dir / "best.joblib"


@pytest.fixture(scope="module")
def hog_experiment(tmp_path_factory):
    """A HoG cache of 60 training images (split with seed 1, not the default) and its sweep."""
    base = tmp_path_factory.mktemp("hog")
    train = make_kaggle_folder(base / "data" / "train", 30, 0)
    cache_dir = base / "cache"
    manifest = build_manifest(train, val=0.2, test=0.2, seed=1)
    cache = build_cache(manifest, get_extractor("hog", **HOG_OPTIONS), cache_dir=cache_dir, workers=1)
    bundle = sweep_one_cache(cache.path, base / "experiments" / "hog")
    return SimpleNamespace(train=train, cache_dir=cache_dir, training_cache=cache.path, bundle=bundle)


def direct_proba(bundle_path: Path, paths: list[Path], extractor) -> np.ndarray:
    """The head's probabilities on features computed here, without featx.predict."""
    images = [load_image(p, **extractor.preprocessing) for p in paths]
    return joblib.load(bundle_path)["model"].predict_proba(extractor.transform(images))


# ---------------------------------------------------------------------------
def test_predict_writes_a_kaggle_submission(hog_experiment, tmp_path):
    folder, kind_of = make_unlabeled_folder(tmp_path / "test1", 12)
    predictions = predict(hog_experiment.bundle, folder, cache_dir=hog_experiment.cache_dir, workers=1)
    output = write_submission(predictions, tmp_path / "out" / "submission.csv")

    header, rows = read_csv(output)
    assert header == ["id", "label"]
    ids = [row[0] for row in rows]
    assert ids == [str(i) for i in range(1, 13)]  # numeric order: 10 after 9, not after 1
    dog_proba = np.array([float(row[1]) for row in rows])
    assert np.all((dog_proba >= 0) & (dog_proba <= 1))
    is_dog = np.array([kind_of[i] == "dog" for i in ids])
    assert dog_proba[is_dog].mean() > 0.5 > dog_proba[~is_dog].mean()
    # The column is P(dog), label_names[1], exactly what the head gives on the images' HoG features.
    assert predictions.label_names == ["cat", "dog"]
    expected = direct_proba(hog_experiment.bundle, [folder / f"{i}.png" for i in ids],
                            get_extractor("hog", **HOG_OPTIONS))
    np.testing.assert_allclose(dog_proba, expected[:, 1], rtol=1e-5, atol=1e-6)
    assert not list(output.parent.glob(".*tmp*"))  # written through a temporary file, renamed

    header, rows = read_csv(write_submission(predictions, tmp_path / "hard.csv", hard=True))
    assert header == ["id", "label"]
    names = [row[1] for row in rows]
    assert set(names) <= {"cat", "dog"}
    assert np.mean([name == kind_of[i] for i, name in zip(ids, names)]) >= 0.8
    assert names == ["dog" if p > 0.5 else "cat" for p in dog_proba]

    _, rows = read_csv(write_submission(predictions, tmp_path / "cat.csv", positive="cat"))
    np.testing.assert_allclose([float(row[1]) for row in rows], 1 - dog_proba, atol=1e-5)
    with pytest.raises(ModelError, match="'bird' is not a class of the model; its classes are cat, dog"):
        write_submission(predictions, tmp_path / "bird.csv", positive="bird")
    with pytest.raises(ModelError, match="--hard"):
        write_submission(predictions, tmp_path / "both.csv", hard=True, positive="cat")
    assert not (tmp_path / "bird.csv").exists()


def test_second_predict_reuses_the_cached_features(hog_experiment, tmp_path):
    folder, _ = make_unlabeled_folder(tmp_path / "test1", 5)
    first = predict(hog_experiment.bundle, folder, cache_dir=hog_experiment.cache_dir, workers=1)
    second = predict(hog_experiment.bundle, folder, cache_dir=hog_experiment.cache_dir, workers=1)
    assert (first.caches[0].computed, first.caches[0].noop) == (5, False)
    assert (second.caches[0].computed, second.caches[0].noop) == (0, True)
    assert second.caches[0].path == first.caches[0].path != hog_experiment.training_cache
    np.testing.assert_array_equal(second.proba, first.proba)


def test_unreadable_images_are_reported_and_get_the_class_prior(hog_experiment, tmp_path):
    folder, _ = make_unlabeled_folder(tmp_path / "test1", 6)
    (folder / "7.png").write_bytes(b"this is not a PNG")
    (folder / "8.jpg").write_bytes(b"")
    predictions = predict(hog_experiment.bundle, folder, cache_dir=hog_experiment.cache_dir, workers=1)
    assert [path for path, _ in predictions.failed] == ["7.png", "8.jpg"]
    assert dict(predictions.failed)["8.jpg"] == "zero-byte file"
    # Every file is a row (Kaggle wants every id); the unreadable ones hold the prior and are flagged.
    assert predictions.proba.shape == (8, 2) and predictions.paths == [*(f"{i}.png" for i in range(1, 8)), "8.jpg"]
    assert predictions.imputed.tolist() == [False] * 6 + [True, True] and predictions.n_predicted == 6
    np.testing.assert_allclose(predictions.proba[6:], [predictions.prior, predictions.prior])
    _, rows = read_csv(write_submission(predictions, tmp_path / "submission.csv"))
    assert [row[0] for row in rows] == [str(i) for i in range(1, 9)]


def test_evaluate_on_a_labelled_held_out_folder(hog_experiment, tmp_path):
    holdout = make_kaggle_folder(tmp_path / "holdout", 15, 3_000)
    result = evaluate(hog_experiment.bundle, holdout, cache_dir=hog_experiment.cache_dir, workers=1, n_boot=200)
    assert result["n_images"] == 30 and result["label_names"] == ["cat", "dog"] and result["failed"] == []
    assert result["accuracy"] > 0.8
    for metric in ("accuracy", "roc_auc", "average_precision", "log_loss"):
        # (a perfect score can come out as 0.9999999999999999 from scikit-learn and 1.0 from the bootstrap)
        assert result[f"{metric}_low"] - 1e-12 <= result[metric] <= result[f"{metric}_high"] + 1e-12, metric
    assert result["log_loss"] > 0
    confusion = np.array(result["confusion"])
    assert confusion.sum() == 30 and confusion.sum(axis=1).tolist() == [15, 15]
    assert np.trace(confusion) / 30 == pytest.approx(result["accuracy"])

    make_image(holdout / "bird.1.png", "bird", 1)
    with pytest.raises(ModelError, match="label\\(s\\) bird that the model does not know; its classes are cat, dog"):
        evaluate(hog_experiment.bundle, holdout, cache_dir=hog_experiment.cache_dir, workers=1)


def test_evaluate_needs_labels(hog_experiment, tmp_path):
    folder, _ = make_unlabeled_folder(tmp_path / "test1", 4)
    with pytest.raises(ModelError, match="has no labels"):
        evaluate(hog_experiment.bundle, folder, cache_dir=hog_experiment.cache_dir, workers=1)


def test_evaluate_on_the_training_folder_keeps_the_sweeps_cache(hog_experiment):
    """The folder is indexed with default splits, the sweep's cache with seed 1: the cache must not be re-split."""
    with open_cache(hog_experiment.training_cache) as cache:
        split_before = cache.split
    mtime_before = hog_experiment.training_cache.stat().st_mtime_ns
    result = evaluate(hog_experiment.bundle, hog_experiment.train, cache_dir=hog_experiment.cache_dir,
                      workers=1, n_boot=50)
    assert result["n_images"] == 60 and result["accuracy"] > 0.8
    assert hog_experiment.training_cache.stat().st_mtime_ns == mtime_before
    # The evaluation's cache (every row unlabeled) is its own file under scored/, and the sweep's is untouched.
    assert sorted(hog_experiment.cache_dir.glob("data-train-hog-*.h5")) == [hog_experiment.training_cache]
    other, = (hog_experiment.cache_dir / "scored").glob("data-train-hog-*.h5")
    with open_cache(other) as cache:
        assert cache.n_rows == 60 and set(cache.split) == {"unlabeled"}
    with open_cache(hog_experiment.training_cache) as cache:
        np.testing.assert_array_equal(cache.split, split_before)


def test_changed_weights_are_refused(hog_experiment, tmp_path):
    bundle = joblib.load(hog_experiment.bundle)
    bundle["extractors"][0]["spec"]["weights_sha256"] = "ab" * 32
    joblib.dump(bundle, tmp_path / "best.joblib")
    folder, _ = make_unlabeled_folder(tmp_path / "test1", 2)
    with pytest.raises(ModelError, match="hog: the weights changed since the sweep"):
        predict(tmp_path / "best.joblib", folder, cache_dir=tmp_path / "cache", workers=1)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.h5"))


def test_load_model_finds_the_model_or_says_what_it_expected(hog_experiment, tmp_path):
    assert isinstance(load_model(hog_experiment.bundle.parent), SweepModel)
    assert "logreg on hog features" in load_model(hog_experiment.bundle).describe()
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "missing.joblib")
    with pytest.raises(ModelError, match="holds neither best.joblib"):
        load_model(tmp_path)
    (tmp_path / "junk.joblib").write_bytes(b"not a pickle")
    with pytest.raises(ArtifactError, match="junk.joblib is not a readable joblib file"):
        load_model(tmp_path / "junk.joblib")
    joblib.dump({"model": None}, tmp_path / "other.joblib")
    with pytest.raises(ArtifactError, match=r"not a complete featx sweep_bundle \(missing dims, extractors, label_names"):
        load_model(tmp_path / "other.joblib")
    bundle = joblib.load(hog_experiment.bundle)
    bundle["dims"] = []
    joblib.dump(bundle, tmp_path / "damaged.joblib")
    with pytest.raises(ArtifactError, match="lists 1 extractor\\(s\\) but 0 feature block size\\(s\\)"):
        load_model(tmp_path / "damaged.joblib")


def test_bundle_carries_a_schema_and_old_bundles_still_predict(hog_experiment, tmp_path):
    """best.joblib is a versioned record; one written before the header existed (version 0) still works."""
    bundle = joblib.load(hog_experiment.bundle)
    assert bundle["schema"] == {"kind": "sweep_bundle", "version": SweepBundle.VERSION}
    folder, _ = make_unlabeled_folder(tmp_path / "test1", 4)
    expected = predict(hog_experiment.bundle, folder, cache_dir=tmp_path / "cache", workers=1)
    del bundle["schema"]
    joblib.dump(bundle, tmp_path / "old.joblib")
    old = predict(tmp_path / "old.joblib", folder, cache_dir=tmp_path / "cache", workers=1)
    np.testing.assert_array_equal(old.proba, expected.proba)
    bundle["schema"] = {"kind": "sweep_bundle", "version": 7}
    joblib.dump(bundle, tmp_path / "new.joblib")
    with pytest.raises(ArtifactError, match="new.joblib was written by a newer featx \\(sweep_bundle version 7"):
        load_model(tmp_path / "new.joblib")


def test_concatenated_sift_and_hog_features_with_the_sweeps_vocabulary(tmp_path):
    """A bundle fed by two caches (SIFT, learned vocabulary, then HoG): rows aligned by path, columns in order."""
    train = make_kaggle_folder(tmp_path / "data" / "train", 20, 0)
    manifest = build_manifest(train, val=0.2, test=0.2, seed=0)
    cache_dir = tmp_path / "cache"
    sift_cache = build_cache(manifest, get_extractor("sift_bovw", n_jobs=1, **SIFT_OPTIONS), cache_dir=cache_dir,
                             workers=1)
    hog_cache = build_cache(manifest, get_extractor("hog", **HOG_OPTIONS), cache_dir=cache_dir, workers=1)
    bundle_path = sweep_one_cache([sift_cache.path, hog_cache.path], tmp_path / "experiments" / "sift+hog")
    bundle = joblib.load(bundle_path)
    state = bundle["extractors"][0]["state"]
    assert state["vocabulary"].shape == (16, 128) and bundle["dims"] == [16, 324]

    folder, _ = make_unlabeled_folder(tmp_path / "test1", 8)
    (folder / "9.png").write_bytes(b"")
    predictions = predict(bundle_path, folder, cache_dir=cache_dir, workers=1)
    assert predictions.failed == [("9.png", "zero-byte file")] and predictions.n_predicted == 8
    assert predictions.paths[8] == "9.png" and predictions.imputed.tolist() == [False] * 8 + [True]
    with open_cache(predictions.caches[0].path) as folder_cache:
        np.testing.assert_array_equal(folder_cache.state["vocabulary"], state["vocabulary"])
        assert folder_cache.spec["state_sha256"] == state_sha256(state)
    sift = get_extractor("sift_bovw", n_jobs=1, **SIFT_OPTIONS).set_state(state)
    hog = get_extractor("hog", **HOG_OPTIONS)
    images = [folder / p for p in predictions.paths[:8]]
    features = np.hstack([extractor.transform([load_image(p, **extractor.preprocessing) for p in images])
                          for extractor in (sift, hog)])
    np.testing.assert_allclose(predictions.proba[:8], bundle["model"].predict_proba(features), rtol=1e-5, atol=1e-7)

    again = predict(bundle_path, folder, cache_dir=cache_dir, workers=1)
    assert [c.noop for c in again.caches] == [True, True]
    np.testing.assert_array_equal(again.proba, predictions.proba)


def save_random_mobilenet(path: Path, seed: int) -> Path:
    import keras

    keras.utils.set_random_seed(seed)
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    return path


def test_a_cnn_model_checks_its_weights_file(tmp_path):
    """keras:mobilenet_v2 from a weights file: the threaded CNN path gives the sweep's own features; a changed
    weights file is refused."""
    import shutil

    import h5py

    weights = save_random_mobilenet(tmp_path / "mobilenet.weights.h5", seed=0)
    train = make_kaggle_folder(tmp_path / "data" / "train", 12, 0)
    cache_dir = tmp_path / "cache"
    extractor = get_extractor("keras:mobilenet_v2", weights=str(weights), input_size=32)
    cache = build_cache(build_manifest(train, val=0.2, test=0.2), extractor, cache_dir=cache_dir, batch_size=8,
                        workers=1)
    bundle_path = sweep_one_cache(cache.path, tmp_path / "experiments" / "mobilenet")

    # The same images in another folder: features computed again by predict, from a fresh backbone.
    again = tmp_path / "again"
    again.mkdir()
    for name in ("cat.0.png", "cat.5.png", "dog.3.png", "dog.11.png"):
        shutil.copy(train / name, again / name)
    predictions = predict(bundle_path, again, cache_dir=cache_dir, batch_size=2, workers=2)
    assert predictions.caches[0].computed == 4
    with open_cache(cache.path) as training_cache:
        row = {p: i for i, p in enumerate(training_cache.paths)}
        sweep_features = training_cache.features[sorted(row[p] for p in predictions.paths)]
    order = np.argsort([row[p] for p in predictions.paths])
    expected = joblib.load(bundle_path)["model"].predict_proba(sweep_features)
    assert expected[:, 1].min() < 0.5 < expected[:, 1].max()  # a comparison of real, differing answers
    np.testing.assert_allclose(predictions.proba[order], expected, rtol=1e-4, atol=1e-5)
    # auto ran OpenVINO on this CPU; --runtime keras computes the same probabilities in TensorFlow
    by_keras = predict(bundle_path, again, cache_dir=tmp_path / "keras-cache", batch_size=2, workers=1,
                       runtime="keras")
    assert predictions.caches[0].runtime == "openvino" and by_keras.caches[0].runtime == "keras"
    assert by_keras.paths == predictions.paths
    np.testing.assert_allclose(by_keras.proba, predictions.proba, rtol=1e-4, atol=1e-5)

    with h5py.File(weights, "r+") as h5:  # same file name, one weight changed
        arrays = []
        h5.visititems(lambda name, item: arrays.append(item) if isinstance(item, h5py.Dataset) else None)
        arrays[0][...] = arrays[0][...] + 1
    with pytest.raises(ModelError, match="keras:mobilenet_v2: the weights changed since the sweep"):
        predict(bundle_path, again, cache_dir=cache_dir, workers=1)

    bundle = joblib.load(bundle_path)
    bundle["extractors"][0]["spec"]["params"]["weights"] = None
    joblib.dump(bundle, tmp_path / "random.joblib")
    with pytest.raises(ModelError, match="weights=None \\(random, for tests\\)"):
        predict(tmp_path / "random.joblib", again, cache_dir=cache_dir, workers=1)


# ---------------------------------------------------------------------------
def save_finetune_folder(folder: Path, label_names: list[str], input_size=(24, 20), sigmoid=False,
                         with_preprocessing=True):
    """The format featx finetune writes: model.keras (pixels in [0, 255] -> probabilities) + model.json.

    The model sees stripes: Sobel filters on the red channel, rectified and averaged, then a Dense
    layer that favours the first class for vertical stripes and the second for horizontal ones.
    """
    import keras

    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
    kernel = np.zeros((3, 3, 3, 4), dtype=np.float32)
    for column, (sign, sobel) in enumerate([(1, sobel_x), (-1, sobel_x), (1, sobel_x.T), (-1, sobel_x.T)]):
        kernel[:, :, 0, column] = sign * sobel
    n_outputs = 1 if sigmoid else len(label_names)
    dense = np.zeros((4, n_outputs), dtype=np.float32)
    dense[:, 0] = [3, 3, -3, -3]  # vertical stripes (strong x gradient): first class ...
    if sigmoid:
        dense[:, 0] *= -1  # ... or, for one sigmoid column (the second class), its complement
    else:
        dense[:, 1] = [-3, -3, 3, 3]
    inputs = keras.Input((*input_size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", use_bias=False, name="sobel")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(n_outputs, activation="sigmoid" if sigmoid else "softmax", name="top")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("sobel").set_weights([kernel])
    model.get_layer("top").set_weights([dense, np.zeros(n_outputs, np.float32)])
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    info = {"label_names": label_names, "input_size": list(input_size)}
    if with_preprocessing:
        info["preprocessing"] = {"size": list(input_size), "interpolation": "area", "equalize": False}
    (folder / "model.json").write_text(json.dumps(info))
    return model


def pixels(paths: list[Path], input_size) -> np.ndarray:
    return np.stack([load_image(p, size=input_size) for p in paths]).astype(np.float32)


@pytest.mark.keras
def test_a_fine_tuned_model_folder_predicts_in_batches(tmp_path):
    keras_model = save_finetune_folder(tmp_path / "experiments" / "x" / "finetune", ["a", "b", "c"])
    folder, _ = make_unlabeled_folder(tmp_path / "test1", 9, kinds=("a", "b", "c"))
    (folder / "10.png").write_bytes(b"\x89PNG truncated")

    model = load_model(tmp_path / "experiments" / "x" / "finetune")
    assert isinstance(model, FineTunedModel) and model.label_names == ["a", "b", "c"]
    assert isinstance(load_model(tmp_path / "experiments" / "x" / "finetune" / "model.keras"), FineTunedModel)
    predictions = predict(model, folder, batch_size=4, workers=2)  # auto: OpenVINO on this CPU, from the IR
    by_keras = predict(model, folder, batch_size=4, workers=2, runtime="keras")
    np.testing.assert_allclose(by_keras.proba, predictions.proba, rtol=1e-5, atol=1e-6)
    assert [path for path, _ in predictions.failed] == ["10.png"]
    assert sorted(predictions.paths) == sorted(f"{i}.png" for i in range(1, 11))
    assert [p for p, imputed in zip(predictions.paths, predictions.imputed) if imputed] == ["10.png"]
    readable = ~predictions.imputed
    seen = [folder / p for p, ok in zip(predictions.paths, readable) if ok]
    expected = np.tile([1 / 3] * 3, (10, 1))  # model.json records no prior: uniform for the unreadable image
    expected[readable] = keras_model.predict(pixels(seen, (24, 20)), verbose=0)
    np.testing.assert_allclose(predictions.proba, expected, rtol=1e-5, atol=1e-6)
    expected = expected[np.argsort([int(Path(p).stem) for p in predictions.paths])]  # submission order: by id
    assert set(np.argmax(expected, axis=1)) >= {0, 1}  # the test model tells stripes apart

    header, rows = read_csv(write_submission(predictions, tmp_path / "submission.csv"))
    assert header == ["id", "a", "b", "c"]
    table = np.array([[float(v) for v in row[1:]] for row in rows])
    np.testing.assert_allclose(table, expected, atol=1e-5)
    _, rows = read_csv(write_submission(predictions, tmp_path / "hard.csv", hard=True))
    assert [row[1] for row in rows] == [["a", "b", "c"][k] for k in np.argmax(expected, axis=1)]


@pytest.mark.keras
def test_a_fine_tuned_sigmoid_model_is_evaluated(tmp_path):
    keras_model = save_finetune_folder(tmp_path / "finetune", ["cat", "dog"], input_size=(16, 16), sigmoid=True,
                                       with_preprocessing=False)
    holdout = make_kaggle_folder(tmp_path / "holdout", 6, 7_000)
    result = evaluate(tmp_path / "finetune", holdout, n_boot=100, workers=1)
    paths = sorted(holdout.iterdir())
    p_dog = keras_model.predict(pixels(paths, (16, 16)), verbose=0)[:, 0]
    is_dog = np.array([p.name.startswith("dog") for p in paths])
    assert result["n_images"] == 12
    assert result["accuracy"] == pytest.approx(np.mean((p_dog > 0.5) == is_dog))
    assert result["log_loss"] == pytest.approx(-np.mean(np.log(np.where(is_dog, p_dog, 1 - p_dog))), rel=1e-4)
    assert result["accuracy"] > 0.8  # the Sobel model tells cats (vertical stripes) from dogs
    assert result["accuracy_low"] <= result["accuracy"] <= result["accuracy_high"]
