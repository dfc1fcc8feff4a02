"""Classical extractors (hog, sift_bovw) on small images made here with numpy and OpenCV."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featx.extractors import get_extractor, list_extractors
from featx.extractors.classical import HogExtractor, SiftBovwExtractor


# -- tiny images -------------------------------------------------------------
def _as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def stripes(orientation: str, count: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Noisy sinusoidal stripes, random period and phase, "horizontal" or "vertical"."""
    rng = np.random.default_rng(seed)
    coords = np.arange(size)
    images = []
    for _ in range(count):
        period, phase = rng.uniform(6, 14), rng.uniform(0, 2 * np.pi)
        wave = 127 + 90 * np.sin(2 * np.pi * coords / period + phase)
        # Horizontal stripes vary down the rows, vertical ones across the columns.
        gray = np.repeat(wave[:, None], size, axis=1)
        if orientation == "vertical":
            gray = gray.T
        gray = gray + rng.normal(0, 30, (size, size))
        images.append(_as_rgb(np.clip(gray, 0, 255).astype(np.uint8)))
    return images


def blobs(shape: str, count: int, size: int = 96, seed: int = 0) -> list[np.ndarray]:
    """Bright "disk"s or "square"s scattered on a dark noisy background."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        gray = np.full((size, size), 60, np.uint8)
        for _ in range(12):
            x, y = (int(v) for v in rng.integers(8, size - 8, 2))
            radius = int(rng.integers(3, 6))
            if shape == "disk":
                cv2.circle(gray, (x, y), radius, 220, -1)
            else:
                cv2.rectangle(gray, (x - radius, y - radius), (x + radius, y + radius), 220, -1)
        gray = np.clip(gray + rng.normal(0, 12, gray.shape), 0, 255).astype(np.uint8)
        images.append(_as_rgb(gray))
    return images


@pytest.fixture(scope="module")
def blob_images() -> tuple[list[np.ndarray], np.ndarray]:
    images = blobs("disk", 30, seed=1) + blobs("square", 30, seed=2)
    return images, np.repeat([0, 1], 30)


@pytest.fixture(scope="module")
def fitted_sift(blob_images) -> SiftBovwExtractor:
    images, _ = blob_images
    return SiftBovwExtractor(k=16, size=96, max_keypoints=100, n_jobs=1).fit(images[::2])


def cv_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(model, features, labels, cv=folds).mean())


# -- hog -----------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    {},
    {"size": 64},
    {"size": (48, 80), "orientations": 12},
    {"size": 64, "pixels_per_cell": 16, "cells_per_block": 3},
    {"size": 64, "pixels_per_cell": (8, 4), "cells_per_block": (1, 2), "block_norm": "L1"},
    {"size": 40, "color": True, "transform_sqrt": True},
])
def test_hog_output_dim_equals_transform_width(options):
    hog = HogExtractor(**options)
    height, width = hog.preprocessing["size"]
    image = stripes("vertical", 1, size=max(height, width))[0][:height, :width]
    features = hog.transform([image, image])
    assert features.shape == (2, hog.output_dim)
    assert features.dtype == np.float32
    assert np.abs(features).sum() > 0


def test_hog_default_dimension_from_the_parameters():
    # 128 px / 8 px cells = 16 cells, 15 block positions of 2x2 cells, 9 bins.
    assert HogExtractor().output_dim == 15 * 15 * 2 * 2 * 9
    assert HogExtractor(size=64).preprocessing["size"] == [64, 64]


def test_hog_is_deterministic_and_sees_a_flip():
    image = stripes("horizontal", 1, seed=3)[0]
    # A diagonal ramp is not symmetric under a left-right flip.
    ramp = np.add.outer(np.arange(64), 2 * np.arange(64)).astype(np.uint8)
    image = _as_rgb(np.clip(image[:, :, 0].astype(int) // 2 + ramp, 0, 255).astype(np.uint8))
    hog = HogExtractor(size=64)
    first, again = hog.transform([image]), hog.transform([image.copy()])
    np.testing.assert_array_equal(first, again)
    flipped = hog.transform([image[:, ::-1].copy()])
    assert np.abs(flipped - first).max() > 0.05


def test_hog_color_uses_the_channels():
    rng = np.random.default_rng(0)
    # Red and green edges that cancel out in grayscale still show in colour HoG.
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:, 0] = 200
    image[:, :32, 1] = int(round(200 * 0.299 / 0.587))
    image = np.clip(image + rng.integers(0, 3, image.shape), 0, 255).astype(np.uint8)
    gray = HogExtractor(size=64).transform([image])
    color = HogExtractor(size=64, color=True).transform([image])
    assert gray.shape == color.shape
    assert np.abs(color - gray).max() > 0.1


def test_hog_resizes_images_of_another_size_with_area_interpolation():
    image = stripes("vertical", 1, size=100)[0][:, :90]
    hog = HogExtractor(size=64)
    resized = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(hog.transform([image]), hog.transform([resized]))
    gray = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(hog.transform([gray]), hog.transform([resized]))


def test_hog_bad_options_and_inputs_say_what_was_expected():
    with pytest.raises(ValueError, match="size >= 32x32"):
        HogExtractor(size=24, pixels_per_cell=16)
    with pytest.raises(ValueError, match="block_norm must be one of"):
        HogExtractor(block_norm="L3")
    with pytest.raises(ValueError, match="size must be a positive int"):
        HogExtractor(size=0)
    with pytest.raises(ValueError, match="expected uint8 images.*float64"):
        HogExtractor(size=64).transform([np.zeros((64, 64, 3))])


def test_hog_separates_horizontal_from_vertical_stripes():
    images = stripes("horizontal", 30, seed=1) + stripes("vertical", 30, seed=2)
    labels = np.repeat([0, 1], 30)
    features = HogExtractor(size=64).transform(images)
    assert cv_accuracy(features, labels) > 0.9


# -- sift_bovw -------------------------------------------------------------------
def test_sift_transform_before_fit_raises_a_clear_error():
    sift = SiftBovwExtractor(k=8, size=96)
    with pytest.raises(NotFittedError, match=r"call fit\(train_images\) first"):
        sift.transform(blobs("disk", 1))
    with pytest.raises(NotFittedError):
        sift.get_state()


def test_sift_fit_is_deterministic_for_a_seed(blob_images, fitted_sift):
    images, _ = blob_images
    again = SiftBovwExtractor(k=16, size=96, max_keypoints=100, n_jobs=1).fit(images[::2])
    np.testing.assert_array_equal(again.vocabulary_, fitted_sift.vocabulary_)
    assert fitted_sift.vocabulary_.shape == (16, 128)
    assert fitted_sift.vocabulary_.dtype == np.float32
    other_seed = SiftBovwExtractor(k=16, size=96, max_keypoints=100, seed=1, n_jobs=1).fit(images[::2])
    assert not np.array_equal(other_seed.vocabulary_, fitted_sift.vocabulary_)


def test_sift_fit_in_worker_processes_matches_one_process(blob_images, fitted_sift):
    images, _ = blob_images
    parallel = SiftBovwExtractor(k=16, size=96, max_keypoints=100, n_jobs=2).fit(iter(images[::2]))
    np.testing.assert_array_equal(parallel.vocabulary_, fitted_sift.vocabulary_)


def test_sift_fit_subsamples_descriptors(blob_images):
    images, _ = blob_images
    few = SiftBovwExtractor(k=8, size=96, max_fit_descriptors=40, n_jobs=1).fit(images[:10])
    assert few.vocabulary_.shape == (8, 128)
    with pytest.raises(ValueError, match="must be at least k"):
        SiftBovwExtractor(k=50, max_fit_descriptors=40)


def test_sift_transform_is_deterministic_and_normalised(blob_images, fitted_sift):
    images, _ = blob_images
    rows = fitted_sift.transform(images[:6])
    assert rows.shape == (6, 16) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows, fitted_sift.transform(images[:6]))
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)

    state = fitted_sift.get_state()
    by_norm = {}
    for norm in ("l1", "l2", "hellinger"):
        sift = SiftBovwExtractor(k=16, size=96, max_keypoints=100, norm=norm).set_state(state)
        by_norm[norm] = sift.transform(images[:6])
    np.testing.assert_allclose(by_norm["l1"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(by_norm["hellinger"], np.sqrt(by_norm["l1"]), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(by_norm["hellinger"], axis=1), 1.0, rtol=1e-5)
    # l1 and l2 rows are the same histogram, scaled.
    np.testing.assert_allclose(by_norm["l1"] / np.linalg.norm(by_norm["l1"], axis=1, keepdims=True),
                               by_norm["l2"], rtol=1e-5, atol=1e-7)


def test_sift_histogram_counts_nearest_words(blob_images, fitted_sift):
    images, _ = blob_images
    sift = SiftBovwExtractor(k=16, size=96, max_keypoints=100, norm="l1").set_state(fitted_sift.get_state())
    descriptors = sift.descriptors(images[0]).astype(np.float32)
    distances = ((descriptors[:, None, :] - sift.vocabulary_[None, :, :]) ** 2).sum(axis=2)
    expected = np.bincount(distances.argmin(axis=1), minlength=16) / len(descriptors)
    np.testing.assert_allclose(sift.transform([images[0]])[0], expected, rtol=1e-6)


def test_sift_image_without_keypoints_gives_a_zero_row(fitted_sift, blob_images):
    images, _ = blob_images
    flat = np.full((96, 96, 3), 128, np.uint8)
    assert len(fitted_sift.descriptors(flat)) == 0
    rows = fitted_sift.transform([flat, images[0]])
    np.testing.assert_array_equal(rows[0], np.zeros(16, np.float32))
    assert np.linalg.norm(rows[1]) == pytest.approx(1.0, rel=1e-5)


def test_sift_keypoint_cap_and_dense_grid(blob_images):
    images, _ = blob_images
    capped = SiftBovwExtractor(size=96, max_keypoints=10)
    uncapped = SiftBovwExtractor(size=96, max_keypoints=10_000)
    assert len(uncapped.descriptors(images[0])) > 10
    assert len(capped.descriptors(images[0])) == 10
    dense = SiftBovwExtractor(size=96, dense=True, step=16, scale=12)
    descriptors = dense.descriptors(images[0])
    assert descriptors.shape == ((96 // 16) ** 2, 128) and descriptors.dtype == np.uint8


def test_sift_state_round_trip_and_shape_check(blob_images, fitted_sift):
    images, _ = blob_images
    restored = SiftBovwExtractor(k=16, size=96, max_keypoints=100).set_state(fitted_sift.get_state())
    np.testing.assert_array_equal(restored.transform(images[:4]), fitted_sift.transform(images[:4]))
    with pytest.raises(ValueError, match=r"shape \(32, 128\).*got \(16, 128\)"):
        SiftBovwExtractor(k=32).set_state(fitted_sift.get_state())
    with pytest.raises(ValueError, match="must hold 'vocabulary'"):
        SiftBovwExtractor(k=16).set_state({"words": fitted_sift.vocabulary_})


def test_sift_bad_options_say_what_was_expected():
    with pytest.raises(ValueError, match="seed must be an int >= 0; got -1"):
        SiftBovwExtractor(seed=-1)
    with pytest.raises(ValueError, match="k must be a positive int; got 0"):
        SiftBovwExtractor(k=0)
    with pytest.raises(ValueError, match="scale must be a positive number"):
        SiftBovwExtractor(scale=0)
    with pytest.raises(ValueError, match="norm must be one of 'l1', 'l2', 'hellinger'; got 'max'"):
        SiftBovwExtractor(norm="max")


def test_sift_too_few_descriptors_to_fit_says_how_to_fix():
    flat = [np.full((64, 64, 3), 90, np.uint8)] * 3
    with pytest.raises(ValueError, match="found 0 SIFT descriptors in 3 images.*lower k"):
        SiftBovwExtractor(k=8, size=64, n_jobs=1).fit(flat)


def test_sift_bovw_separates_disks_from_squares(blob_images, fitted_sift):
    images, labels = blob_images
    accuracy = cv_accuracy(fitted_sift.transform(images), labels)
    assert accuracy > 0.75  # chance is 0.5


# -- both ----------------------------------------------------------------------
def test_pickled_extractors_transform_the_same(blob_images, fitted_sift):
    images, _ = blob_images
    hog = HogExtractor(size=64, color=True)
    fitted_sift.transform(images[:1])  # builds the (unpicklable) cv2.SIFT inside
    for extractor in (hog, fitted_sift):
        blob = pickle.dumps(extractor)
        assert len(blob) < 200_000
        clone = pickle.loads(blob)
        np.testing.assert_array_equal(clone.transform(images[:3]), extractor.transform(images[:3]))
        assert clone.spec_hash() == extractor.spec_hash()


@pytest.mark.parametrize("name, changes", [
    ("hog", {"size": 64, "orientations": 8, "pixels_per_cell": 16, "cells_per_block": 3,
             "block_norm": "L1", "color": True, "transform_sqrt": True}),
    ("sift_bovw", {"k": 100, "size": 128, "dense": True, "max_keypoints": 100, "step": 4, "scale": 8.0,
                   "norm": "l1", "max_fit_descriptors": 1000, "seed": 1}),
])
def test_every_option_changes_the_spec_hash(name, changes):
    default_hash = get_extractor(name).spec_hash()
    hashes = {get_extractor(name, **{key: value}).spec_hash() for key, value in changes.items()}
    assert default_hash not in hashes
    assert len(hashes) == len(changes)
    assert get_extractor(name, size=get_extractor(name).preprocessing["size"]).spec_hash() == default_hash


def test_parallelism_is_not_part_of_the_spec():
    assert get_extractor("sift_bovw", n_jobs=1).spec_hash() == get_extractor("sift_bovw", n_jobs=2).spec_hash()


def test_registry_builds_and_lists_the_classical_extractors():
    hog = get_extractor("hog", size=64)
    assert isinstance(hog, HogExtractor)
    assert hog.output_dim == 7 * 7 * 2 * 2 * 9
    assert hog.preprocessing["size"] == [64, 64]
    assert hog.parallel == "processes" and not hog.needs_fit
    sift = get_extractor("sift_bovw", k=64)
    assert sift.output_dim == 64 and sift.needs_fit and sift.parallel == "processes"
    infos = {info.name: info for info in list_extractors(load_all=False)}
    assert infos["hog"].output_dim == 8100 and infos["sift_bovw"].output_dim == 500
    assert infos["sift_bovw"].default_opts["k"] == 500
    assert infos["hog"].weights_status() == (True, "no weights needed")
    with pytest.raises(ValueError, match="hog has no option 'orientation'; options are: size, orientations"):
        get_extractor("hog", orientation=8)
