"""The CNN path of the pipeline (decode threads -> model -> writer) through the public API.

A small Keras backbone (``keras:mobilenet_v2`` at 64 px, cut at
``block_13_expand_relu``) with seeded random weights, BatchNorm statistics
calibrated so activations are of order 1, saved to a file in the test: features
are deterministic and nothing downloads. The cache ``build_cache`` writes must hold exactly what the
extractor's own ``transform`` gives for the same decoded images, whatever the
batch size or number of decoding threads; unreadable files are skipped and
recorded; bf16 stays close to fp32; and decoding never runs more than
``prefetch`` batches ahead of the model.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import make_image

import keras  # noqa: E402

from featx.cache import open_cache  # noqa: E402
from featx.data import build_manifest  # noqa: E402
from featx.extractors import get_extractor  # noqa: E402
from featx.extractors.base import Extractor  # noqa: E402
from featx.images import load_image  # noqa: E402
from featx import datasets, pipeline  # noqa: E402
from featx.pipeline import build_cache, extract_images  # noqa: E402

INPUT_SIZE = 64
# Deep enough to use every kind of layer (depthwise, BatchNorm, ReLU6, residual adds), shallow
# enough that a random network does not amplify bf16 rounding: at out_relu the seeded random
# MobileNetV2 gives cosine 0.95 between bf16 and fp32 features, here 0.997.
LAYER = "block_13_expand_relu"
N_FEATURES = 576
N_PER_CLASS = 12
SEED = 7


def _decode_like_the_pipeline(extractor, root: Path, paths: list[str]) -> np.ndarray:
    return np.stack([load_image(root / path, **extractor.preprocessing) for path in paths])


def _calibrate_batch_norm(model, inputs: np.ndarray) -> None:
    """Give a randomly initialised network the BatchNorm statistics of ``inputs``.

    At Keras' initialisation (moving variance 1, tiny depthwise kernels) a random
    MobileNetV2's activations shrink layer after layer to ~1e-12 at ``out_relu``, so
    any tolerance would pass. One training-mode pass with momentum 0 stores each
    layer's batch mean and variance, and the features come out of order 1.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(inputs.astype(np.float32), training=True)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> SimpleNamespace:
    """24 small photos-like images of two sizes and a seeded MobileNetV2 weights file."""
    folder = tmp_path_factory.mktemp("pipeline_cnn")
    root = folder / "train"
    for index in range(N_PER_CLASS):
        # Two source sizes, both different from the model's, so every image is resized.
        size = 48 if index % 2 else 80
        make_image(root / f"cat.{index}.png", "cat", index, size=size)
        make_image(root / f"dog.{index}.png", "dog", 100 + index, size=size)
    keras.utils.set_random_seed(SEED)
    model = keras.applications.MobileNetV2(include_top=False, weights=None,
                                           input_shape=(INPUT_SIZE, INPUT_SIZE, 3))
    _calibrate_batch_norm(model, np.random.default_rng(SEED).uniform(-1, 1, (16, INPUT_SIZE, INPUT_SIZE, 3)))
    weights_path = folder / "mobilenet_v2_seeded.weights.h5"
    model.save_weights(weights_path)
    extractor = get_extractor("keras:mobilenet_v2", weights=str(weights_path), input_size=INPUT_SIZE,
                              layer=LAYER)
    manifest = build_manifest(root, layout="kaggle", val=0.25, test=0.25, seed=0)
    images = _decode_like_the_pipeline(extractor, root, [r.path for r in manifest.records])
    reference = extractor.transform(images)
    return SimpleNamespace(root=root, folder=folder, weights_path=weights_path, extractor=extractor,
                           manifest=manifest, images=images, reference=reference)


def _cache_features(result) -> tuple[np.ndarray, list[str], np.ndarray, list[tuple[str, str]]]:
    with open_cache(result.path) as cache:
        return cache.features[:], cache.paths, cache.labels, cache.failed


def test_cache_holds_the_extractors_own_features(backbone, tmp_path):
    result = build_cache(backbone.manifest, backbone.extractor, tmp_path / "cache", batch_size=8, workers=2)

    features, paths, labels, failed = _cache_features(result)
    assert (result.rows, result.computed, result.failed, failed) == (24, 24, [], [])
    assert paths == [r.path for r in backbone.manifest.records]
    assert labels.tolist() == [0 if p.startswith("cat.") else 1 for p in paths]
    assert features.shape == (24, N_FEATURES) and features.dtype == np.float32
    # Not a degenerate backbone: rows differ from each other and from zero.
    assert backbone.reference.std(axis=0).mean() > 0.05
    assert np.allclose(features, backbone.reference, rtol=1e-5, atol=1e-5)
    # Same spec again: nothing to compute.
    again = build_cache(backbone.manifest, backbone.extractor, tmp_path / "cache", batch_size=8, workers=2)
    assert again.noop and again.path == result.path and again.computed == 0


@pytest.mark.parametrize("batch_size, workers", [(1, 1), (5, 3), (24, 2)])
def test_batch_size_and_workers_do_not_change_the_cache(backbone, tmp_path, batch_size, workers):
    baseline = build_cache(backbone.manifest, backbone.extractor, tmp_path / "base", batch_size=8, workers=1)
    other = build_cache(backbone.manifest, backbone.extractor, tmp_path / "other",
                        batch_size=batch_size, workers=workers)
    base_features, base_paths, _, _ = _cache_features(baseline)
    other_features, other_paths, _, _ = _cache_features(other)
    # Batch size and threads are not part of the spec: the same file name, the same rows.
    assert other.path.name == baseline.path.name
    assert other_paths == base_paths
    np.testing.assert_allclose(other_features, base_features, rtol=1e-5, atol=1e-5)
    if batch_size == 8:  # same batches, only the decoding threads differ: bit for bit
        np.testing.assert_array_equal(other_features, base_features)


def test_same_batches_with_more_threads_are_bit_identical(backbone, tmp_path):
    one = build_cache(backbone.manifest, backbone.extractor, tmp_path / "one", batch_size=6, workers=1)
    four = build_cache(backbone.manifest, backbone.extractor, tmp_path / "four", batch_size=6, workers=4)
    np.testing.assert_array_equal(_cache_features(four)[0], _cache_features(one)[0])


def test_unreadable_images_are_skipped_and_recorded(backbone, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(backbone.root, root)
    good = (root / "cat.3.png").read_bytes()
    (root / "cat.3.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    (root / "dog.5.png").write_bytes(b"")  # zero bytes
    (root / "dog.7.png").write_bytes(b"this is not an image at all")
    manifest = build_manifest(root, layout="kaggle", val=0.25, test=0.25, seed=0)

    result = build_cache(manifest, backbone.extractor, tmp_path / "cache", batch_size=4, workers=2)

    broken = {"cat.3.png", "dog.5.png", "dog.7.png"}
    features, paths, _, failed = _cache_features(result)
    assert sorted(path for path, _ in result.failed) == sorted(broken)
    assert sorted(failed) == sorted(result.failed)
    reasons = dict(failed)
    assert reasons["dog.5.png"] == "zero-byte file"
    assert all(reason for reason in reasons.values())
    assert result.rows == 21 and features.shape == (21, N_FEATURES)
    assert broken.isdisjoint(paths)
    # The readable images keep exactly the features they have in the clean cache.
    clean = {r.path: row for r, row in zip(backbone.manifest.records, backbone.reference)}
    expected = np.stack([clean[path] for path in paths])
    assert np.allclose(features, expected, rtol=1e-5, atol=1e-5)


def test_bf16_features_are_close_to_fp32(backbone, tmp_path):
    bf16 = get_extractor("keras:mobilenet_v2", weights=str(backbone.weights_path),
                         input_size=INPUT_SIZE, layer=LAYER, precision="bf16")
    fp32_result = build_cache(backbone.manifest, backbone.extractor, tmp_path, batch_size=8, workers=2)
    bf16_result = build_cache(backbone.manifest, bf16, tmp_path, batch_size=8, workers=2)

    assert bf16_result.path != fp32_result.path  # precision is part of the spec
    fp32_features = _cache_features(fp32_result)[0]
    bf16_features = _cache_features(bf16_result)[0]
    assert bf16_features.dtype == np.float32  # stored as float32 whatever the compute precision
    cosine = (fp32_features * bf16_features).sum(axis=1) / (
        np.linalg.norm(fp32_features, axis=1) * np.linalg.norm(bf16_features, axis=1))
    assert cosine.min() > 0.99
    # bf16 really ran: the features are close, not equal.
    assert not np.array_equal(bf16_features, fp32_features)


class _SlowMeanColour(Extractor):
    """Mean RGB of each image, slow on purpose so decoding threads can race ahead."""

    name = "slow_mean_colour"
    parallel = "model"

    def __init__(self, seconds_per_batch: float, on_batch) -> None:
        super().__init__(seconds_per_batch=seconds_per_batch)
        self.on_batch = on_batch

    @property
    def preprocessing(self) -> dict:
        return {"size": [16, 16], "interpolation": "area", "equalize": False}

    @property
    def output_dim(self) -> int:
        return 3

    def transform(self, images):
        time.sleep(self.params["seconds_per_batch"])
        self.on_batch(len(images))
        return np.stack(images).reshape(len(images), -1, 3).mean(axis=1).astype(np.float32)


@pytest.mark.parametrize("prefetch", [1, 3])
def test_decoding_never_runs_more_than_prefetch_batches_ahead(backbone, monkeypatch, prefetch):
    """Memory stays bounded: at most ``prefetch`` decoded batches wait for the model."""
    batch_size = 2
    lock = threading.Lock()
    decoded = {"images": 0}
    ahead_at_each_batch: list[int] = []
    real_try_load_image = datasets.try_load_image

    def counting_try_load_image(path, **kwargs):
        result = real_try_load_image(path, **kwargs)
        with lock:
            decoded["images"] += 1
        return result

    given_to_model = {"images": 0}

    def on_batch(n_images: int) -> None:
        with lock:
            given_to_model["images"] += n_images
            # Counted when the model is done with a batch: decoded images that are still
            # waiting for the model (the batch just finished is not waiting).
            ahead_at_each_batch.append(decoded["images"] - given_to_model["images"])

    monkeypatch.setattr(datasets, "try_load_image", counting_try_load_image)
    extractor = _SlowMeanColour(seconds_per_batch=0.03, on_batch=on_batch)
    paths = [r.path for r in backbone.manifest.records]
    units = [("first", paths[:10]), ("second", paths[10:])]

    outputs = list(extract_images(extractor, backbone.root, units, workers=4,
                                  batch_size=batch_size, prefetch=prefetch))

    assert [key for key, *_ in outputs] == ["first", "second"]
    assert len(ahead_at_each_batch) == len(paths) // batch_size
    assert max(ahead_at_each_batch) <= prefetch * batch_size
    # The slow model lets the threads fill the whole prefetch window: it is used, not just bounded.
    assert max(ahead_at_each_batch) == prefetch * batch_size
    features = np.concatenate([f for _, f, _, _ in outputs])
    images = _decode_like_the_pipeline(extractor, backbone.root, paths)
    np.testing.assert_allclose(features, images.reshape(len(paths), -1, 3).mean(axis=1), rtol=1e-6)
    assert all(ok.all() for _, _, ok, _ in outputs)


def test_a_failing_model_stops_the_run_with_its_error(backbone, tmp_path):
    """An exception in the model surfaces in the caller and leaves no published cache."""

    class Broken(_SlowMeanColour):
        def transform(self, images):
            raise RuntimeError("model exploded on purpose")

    extractor = Broken(seconds_per_batch=0.0, on_batch=lambda n: None)
    with pytest.raises(RuntimeError, match="exploded on purpose"):
        build_cache(backbone.manifest, extractor, tmp_path, batch_size=4, workers=2)
    assert not any(p.suffix == ".h5" for p in tmp_path.iterdir())
