"""featx.datasets, the one decode-and-batch path: the pipeline and `featx imagenet` both use it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import make_kaggle_images
from featx.cli import app
from featx.datasets import ImageSet, decode_group, decode_into, iter_batches, load_options, training_batches

cli = CliRunner()


def test_decode_into_fills_the_model_batch_in_place(tmp_path):
    folder = make_kaggle_images(tmp_path / "p", 3)
    (folder / "cat.9.png").write_bytes(b"not an image")
    paths = ["cat.0.png", "cat.9.png", "dog.1.png"]
    out = np.zeros((3, 24, 24, 3), np.uint8)
    images, ok, reasons = decode_into(out, str(folder), paths, {"size": [24, 24], "interpolation": "area"})
    assert ok.tolist() == [True, False, True] and len(reasons) == 1
    assert images.shape == (2, 24, 24, 3) and np.shares_memory(images, out)  # no copy between decode and batch
    from featx.images import load_image

    np.testing.assert_array_equal(images[1], load_image(folder / "dog.1.png", size=(24, 24)))
    hog_like, _, _ = decode_group(str(folder), paths[:1], {"size": None})
    assert isinstance(hog_like, list) and hog_like[0].shape == (48, 48, 3)  # native size: a list


def test_training_batches_are_seeded_per_epoch_and_skip_unreadable_images(tmp_path):
    folder = make_kaggle_images(tmp_path / "p", 5)
    (folder / "cat.9.png").write_bytes(b"not an image")
    paths = sorted(p.name for p in folder.iterdir())
    labels = np.array([int(p.startswith("dog")) for p in paths])
    preprocessing = {"size": [16, 16], "interpolation": "area"}
    streamed = ImageSet(str(folder), paths, labels, preprocessing, workers=2)
    in_memory = ImageSet(str(folder), paths, labels, preprocessing, workers=2).load()
    assert [p for p, _ in in_memory.failed] == ["cat.9.png"] and len(in_memory) == 10

    def epoch_batches(images, epoch):
        batches = training_batches(images, 4, shuffle=True, seed=7)
        for _ in range(epoch):
            batches.on_epoch_end()
        return [batches[i] for i in range(len(batches))]

    first, second = epoch_batches(in_memory, 0), epoch_batches(in_memory, 1)
    resumed = training_batches(in_memory, 4, shuffle=True, seed=7)
    resumed.set_epoch(1)  # a resumed run draws what the uninterrupted one drew in that epoch
    for (x, y), (x2, y2) in zip(second, [resumed[i] for i in range(len(resumed))]):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)

    def order(batches):
        return np.concatenate([x.reshape(len(x), -1).sum(1) for x, _ in batches])

    assert not np.array_equal(order(first), order(second))  # reshuffled each epoch
    x, y = first[0]
    assert x.dtype == np.float32 and x.shape == (4, 16, 16, 3) and y.dtype == np.int32
    # One epoch sees every readable image once; the streamed set decodes the same pixels and skips the bad file.
    assert sorted(order(first)) == sorted(in_memory.images.reshape(10, -1).sum(1).astype(np.float32))
    pixels, kept = streamed.pixels(np.arange(len(paths)))
    assert [paths[i] for i in kept] == in_memory.paths
    np.testing.assert_array_equal(pixels, in_memory.images)


def test_iter_batches_keeps_order_with_threads(tmp_path):
    folder = make_kaggle_images(tmp_path / "p", 8)
    paths = sorted(p.name for p in folder.iterdir())
    groups = [paths[i:i + 3] for i in range(0, len(paths), 3)]
    threaded = [images for images, _, _ in iter_batches(str(folder), groups, {"size": [16, 16]}, workers=3)]
    serial = [decode_group(str(folder), g, {"size": [16, 16]})[0] for g in groups]
    assert len(threaded) == len(groups)
    for a, b in zip(threaded, serial):
        np.testing.assert_array_equal(a, b)


def test_load_options_drops_what_load_image_does_not_take():
    assert load_options({"size": [8, 8], "mean": [1, 2, 3], "equalize": False, "draft": None}) == \
        {"size": [8, 8], "equalize": False}


def _photo_like(path, width=1600, height=1200, seed=0):
    """A camera-size JPEG with smooth shapes and fine texture (a flat or pure-noise image says nothing)."""
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y - 3 * x), np.sin(9 * x * y)], -1)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (height, width, 3)), (0, 0), 3)
    pixels = (127 + 80 * base + 25 * noise).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def test_draft_decode_keeps_cnn_features_close(tmp_path):
    """Reduced-DCT decoding (the default for a photo 4x the target) vs full decode, through a CNN.

    Tolerance: cosine similarity of the features >= 0.995 per image, pixels within 3 grey levels on average.
    """
    from featx.extractors import get_extractor
    from featx.images import load_image

    paths = [_photo_like(tmp_path / f"{i}.jpg", seed=i) for i in range(3)]
    extractor = get_extractor("keras:mobilenet_v2", weights=None, input_size=96)
    options = load_options(extractor.preprocessing)
    draft = np.stack([load_image(p, **options) for p in paths])
    full = np.stack([load_image(p, **options, draft=False) for p in paths])
    assert not np.array_equal(draft, full)  # the draft path really ran
    assert np.abs(draft.astype(float) - full).mean() < 3
    a, b = extractor.transform(draft), extractor.transform(full)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.995, cosine


def test_imagenet_takes_input_size_and_runtime(tmp_path):
    """`featx imagenet --opt input_size=96` decodes at the classifier's own size (it was a shape error)."""
    pytest.importorskip("openvino")
    folder = make_kaggle_images(tmp_path / "p", 1)
    images = [str(folder / "cat.0.png"), str(folder / "dog.0.png")]
    base = ["imagenet", *images, "--extractor", "keras:mobilenet_v2", "--opt", "weights=none", "--opt", "input_size=96"]
    result = cli.invoke(app, [*base, "--top", "2", "--runtime", "keras"])
    assert result.exit_code == 0, result.output
    assert result.output.count("cat.0.png:") == 1 and "2 image(s) classified" in result.output

    from featx.imagenet import top_k

    opts = {"weights": None, "input_size": 96}
    keras = top_k("keras:mobilenet_v2", images, k=1000, runtime="keras", **opts)
    ov = top_k("keras:mobilenet_v2", images, k=1000, runtime="openvino", **opts)
    for k_row, o_row in zip(keras, ov):
        k_map, o_map = dict(k_row), dict(o_row)
        assert sum(k_map.values()) == pytest.approx(1.0, abs=1e-3)
        np.testing.assert_allclose([o_map[n] for n in k_map], list(k_map.values()), rtol=1e-4, atol=1e-7)
