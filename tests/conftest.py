"""Shared fixtures: tiny image folders made on the fly (nothing downloads, no shared photos)."""

from __future__ import annotations

import os

# Under pytest-xdist (make test runs one worker per core) each worker's TensorFlow and BLAS thread pools get
# that worker's share of the cores, not all of them: set before numpy and TensorFlow are first imported.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    for _name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, str(max(1, (os.cpu_count() or 1) // _WORKERS)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from featx.backend import select_backend  # noqa: E402

KERAS_BACKEND = select_backend()  # the backend Keras runs on in this session (as featx chooses it)


def pytest_unconfigure(config):
    """An xdist worker has sent all its reports by now and its process is about to end: leave without the
    interpreter's teardown of TensorFlow, OpenVINO and torch (seconds per worker, at the end of every run)."""
    if hasattr(config, "workerinput"):
        import atexit
        import sys

        def leave():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

        atexit.register(leave)  # registered last, so it runs after every other exit handler


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (minutes: the README's main job replayed) go first, so that under pytest-xdist one
    worker starts them at once while the others share the rest, instead of one worker running them at the end.
    Tests marked ``tensorflow_only`` are skipped when Keras runs on another backend."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keep their order
    if KERAS_BACKEND != "tensorflow":
        skip = pytest.mark.skip(reason=f"asserts TensorFlow's own behaviour; Keras runs on {KERAS_BACKEND}")
        for item in items:
            if item.get_closest_marker("tensorflow_only"):
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _weights_home_of_the_session(tmp_path_factory):
    """Converted weights and OpenVINO IRs go to a folder of this test session, never to the user's
    ``~/.featx/weights`` (set in ``os.environ`` so CLI subprocesses and Dask workers see it too)."""
    before = os.environ.get("FEATX_WEIGHTS")
    os.environ["FEATX_WEIGHTS"] = str(tmp_path_factory.mktemp("featx-weights"))
    yield
    if before is None:
        os.environ.pop("FEATX_WEIGHTS", None)
    else:
        os.environ["FEATX_WEIGHTS"] = before


def save_mobilenet_weights(path: Path, include_top: bool = False) -> Path:
    """Seeded random MobileNetV2 weights whose batch norms saw random images (so features have a usable
    scale); at 32 px without its top, at 224 px with it.

    A randomly initialised MobileNetV2 squashes its activations towards 0 (features ~1e-12); one forward
    pass in training mode with momentum 0 sets every batch norm's moving statistics to those of random
    images in MobileNetV2's input range."""
    import keras

    keras.utils.set_random_seed(0)
    size = 224 if include_top else 32
    model = keras.applications.MobileNetV2(include_top=include_top, weights=None, input_shape=(size, size, 3))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(np.random.default_rng(0).uniform(-1, 1, (8, size, size, 3)).astype(np.float32), training=True)
    for layer in norms:
        layer.momentum = 0.99
    model.save_weights(path)
    return path


def make_image(path: Path, kind: str, index: int, size: int = 48) -> Path:
    """A small RGB image whose texture depends on ``kind`` (so classes are learnable)."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:size, 0:size]
    period = 4 + index % 3
    if kind in ("cat", "a"):
        pattern = np.sin(2 * np.pi * x / period)  # vertical stripes
    elif kind in ("dog", "b"):
        pattern = np.sin(2 * np.pi * y / period)  # horizontal stripes
    else:
        pattern = np.sin(2 * np.pi * (x + y) / period)  # diagonal
    base = (127 + 100 * pattern + rng.normal(0, 20, (size, size))).clip(0, 255)
    rgb = np.stack([base, base * 0.8, 255 - base], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def make_kaggle_images(root: Path, n_per_class: int) -> Path:
    """``cat.N.png`` / ``dog.N.png`` for N < n_per_class (dog seeds offset by 100); returns ``root``."""
    for i in range(n_per_class):
        make_image(root / f"cat.{i}.png", "cat", i)
        make_image(root / f"dog.{i}.png", "dog", 100 + i)
    return root


@pytest.fixture
def kaggle_dir(tmp_path: Path) -> Path:
    """40 images in Kaggle's layout: cat.N.png / dog.N.png."""
    return make_kaggle_images(tmp_path / "train", 20)


@pytest.fixture
def folders_dir(tmp_path: Path) -> Path:
    """Three classes in label folders."""
    root = tmp_path / "shapes"
    for label in ("a", "b", "c"):
        for i in range(12):
            make_image(root / label / f"img{i:03d}.png", label, i + 1000 * ord(label))
    return root
