"""Keras on PyTorch as on TensorFlow: the backend featx picks, the same features from the same weights on
both, and a fine-tuned ``.keras`` model that predicts the same probabilities on the other backend.

Every check runs the real CLI in subprocesses with the user's environment (no ``TF_CPP_MIN_LOG_LEVEL``),
one per backend (``KERAS_BACKEND`` set for it), and reads their whole output. Weights come from files the
tests write, or from the installed EfficientNet-Lite0 package: nothing downloads.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import KERAS_BACKEND, make_image, make_kaggle_images, save_mobilenet_weights

TESTS = Path(__file__).resolve().parent
BACKENDS = ("tensorflow", "torch")
# The same fp32 weights on both backends: features agree to this fraction of their largest magnitude, and every
# row's cosine to this (kernels differ, oneDNN on TensorFlow, ATen on PyTorch: float32 rounding only).
FEATURE_TOLERANCE = 1e-4
COSINE_FLOOR = 0.99999
# A fine-tuned model's probabilities, the model saved on one backend and loaded on the other.
PROBABILITY_TOLERANCE = 1e-5


def user_env(backend: str | None, **extra: str) -> dict:
    """The environment of a user's shell that chose ``backend`` (None: KERAS_BACKEND unset)."""
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    if backend:
        env["KERAS_BACKEND"] = backend
    env.update(extra)
    return env


def featx(backend: str | None, *args, cwd: Path | None = None, setup: str = "", **extra: str) -> tuple[int, str]:
    """``featx ARGS`` in a subprocess on ``backend`` with the test backbone ``tinycnn`` registered:
    (exit code, whole output). ``setup``: Python run first (e.g. to block an import)."""
    code = (f"import sys\n{setup}\nsys.path.insert(0, {str(TESTS)!r})\nimport tiny_backbone\n"
            f"from featx.cli import app\napp(prog_name='featx')\n")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=user_env(backend, **extra), cwd=cwd, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def python(backend: str | None, code: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=user_env(backend, **extra), timeout=300)


# -- which backend ---------------------------------------------------------------------------------------------

SHOW = "{block}\nimport featx, keras\nprint('BACKEND', keras.backend.backend())"
# As on a machine without TensorFlow: no finder finds it (find_spec gives None, import raises ModuleNotFoundError).
NO_TENSORFLOW = """
import sys
class NoTensorFlow:
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, name):
        return getattr(self.finder, name)
sys.meta_path[:] = [NoTensorFlow(finder) for finder in sys.meta_path]
"""


@pytest.mark.parametrize(("variable", "keras_json", "block", "expected"), [
    (None, "torch", "", "torch"),                      # keras.json, as Keras reads it
    ("tensorflow", "torch", "", "tensorflow"),         # KERAS_BACKEND wins over the file
    (None, "tensorflow", NO_TENSORFLOW, "torch"),      # the file's default, no TensorFlow: PyTorch
    (None, None, NO_TENSORFLOW, "torch"),              # no file, no TensorFlow: PyTorch
], ids=["keras-json", "variable-wins", "json-default-without-tf", "no-file-without-tf"])
def test_featx_reads_the_backend_as_keras_does_and_falls_back_to_torch_without_tensorflow(
        tmp_path, variable, keras_json, block, expected):
    if keras_json:
        (tmp_path / "keras.json").write_text(json.dumps({"backend": keras_json}))
    proc = python(variable, SHOW.format(block=block), KERAS_HOME=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["BACKEND", expected], proc.stdout + proc.stderr


@pytest.mark.parametrize(("variable", "block", "message"), [
    ("jax", "", "error: KERAS_BACKEND is 'jax'; featx runs Keras on tensorflow or torch: set KERAS_BACKEND=torch "
                "or KERAS_BACKEND=tensorflow"),
    ("tensorflow", NO_TENSORFLOW, "error: KERAS_BACKEND is 'tensorflow' but tensorflow is not installed: pip install "
                                  "'featx[cpu]', or set KERAS_BACKEND=torch"),
])
def test_a_backend_featx_cannot_run_is_one_line_and_exit_2(tmp_path, variable, block, message):
    code, output = featx(variable, "sweep", tmp_path / "missing.h5", setup=block, cwd=tmp_path,
                         KERAS_HOME=str(tmp_path))
    assert code == 2 and output.strip() == message, output
    # Commands that never run Keras do not care.
    make_kaggle_images(tmp_path / "photos", 2)
    code, output = featx(variable, "index", tmp_path / "photos", setup=block, cwd=tmp_path, KERAS_HOME=str(tmp_path))
    assert code == 0, output


def test_device_gpu_without_one_names_the_backend(tmp_path):
    make_kaggle_images(tmp_path / "photos", 2)
    for backend in BACKENDS:
        code, output = featx(backend, "cache", tmp_path / "photos", "-e", "tinycnn", "--runtime", "keras",
                             "--device", "gpu", "--cache-dir", tmp_path / "cache", cwd=tmp_path)
        fix = "featx[gpu]" if backend == "tensorflow" else "a CUDA build of torch"
        assert code == 2 and output.strip() == (f"error: --device gpu, but Keras' backend ({backend}) sees no GPU: "
                                                f"install {fix} and check nvidia-smi"), output
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.h5"))


# -- the same features on both backends ------------------------------------------------------------------------

def _save_mobilenet(path: Path) -> Path:
    return save_mobilenet_weights(path)


# (extractor, --opt values, weights writer or None for the installed ImageNet weights): Keras' preprocess_input
# with depthwise convolutions and batch norm, and mean/std on the real EfficientNet-Lite0 weights converted from
# PyTorch (benchmarks/backend_parity.py adds VGG16's caffe preprocessing, on real photos).
PARITY = {
    "keras:mobilenet_v2": (["input_size=32"], _save_mobilenet),
    "efficientnet_lite0": ([], None),
}


def _features(path: Path) -> tuple[np.ndarray, list[str], dict]:
    with h5py.File(path, "r") as h5:
        return h5["features"][:].astype(np.float64), [p.decode() for p in h5["paths"][:]], dict(h5.attrs)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PARITY))
def test_the_same_weights_give_the_same_fp32_features_on_both_backends(tmp_path, name):
    opts, write_weights = PARITY[name]
    if write_weights is not None:
        weights = write_weights(tmp_path / (name.replace(":", "_") + ".weights.h5"))
        opts = [*opts, f"weights={weights}"]
    photos = make_kaggle_images(tmp_path / "photos", 3)
    caches = {}
    for backend in BACKENDS:
        code, output = featx(backend, "cache", photos, "-e", name, *[x for opt in opts for x in ("--opt", opt)],
                             "--runtime", "keras", "--precision", "fp32", "--cache-dir", tmp_path / backend,
                             cwd=tmp_path)
        assert code == 0 and ": 6 rows (6 computed, 0 failed)" in output, output
        caches[backend] = _features(next((tmp_path / backend).glob("*.h5")))
    (tf, tf_paths, tf_attrs), (pt, pt_paths, pt_attrs) = caches["tensorflow"], caches["torch"]
    assert tf_paths == pt_paths and tf.shape == pt.shape and tf.shape[0] == 6
    assert (tf_attrs["keras_backend"], pt_attrs["keras_backend"]) == ("tensorflow", "torch")
    assert tf_attrs["cache_key"] == pt_attrs["cache_key"]  # one spec: either backend's file serves the other
    scale = np.abs(tf).max()
    assert scale > 1e-3  # features, not zeros
    assert np.abs(tf - pt).max() <= FEATURE_TOLERANCE * scale
    cosine = (tf * pt).sum(1) / (np.linalg.norm(tf, axis=1) * np.linalg.norm(pt, axis=1))
    assert cosine.min() >= COSINE_FLOOR


# -- a fine-tuned model on the other backend -------------------------------------------------------------------

DENSE_GRID = {"dense": [{"head__hidden_units": [8], "head__epochs": [3], "head__learning_rate": [1e-2],
                         "head__patience": [None]}]}


@pytest.mark.keras
def test_a_model_fine_tuned_on_one_backend_predicts_the_same_on_the_other(tmp_path):
    """Swept (logreg and the dense head) and fine-tuned on this session's backend (``make test`` runs this test on
    both), then predicted by ``model.keras`` on each backend: the same probabilities; best.joblib and model.json
    name the backend that trained them."""
    import tiny_backbone

    weights = tiny_backbone.save_weights(tmp_path / "tinycnn.weights.h5")
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(DENSE_GRID))
    photos = make_kaggle_images(tmp_path / "photos", 8)
    test1 = tmp_path / "test1"
    for i in range(1, 5):
        make_image(test1 / f"{i}.png", "cat" if i % 2 else "dog", 600 + i)
    steps = [("cache", photos, "-e", "tinycnn", "--opt", f"weights={weights}", "--runtime", "keras",
              "--cache-dir", tmp_path / "cache"),
             ("sweep", "CACHE", "--heads", "logreg,dense", "--grid", grid, "--cv", "2",
              "--n-boot", "10", "--no-learning-curve", "--out", tmp_path / "experiment"),
             ("finetune", tmp_path / "experiment", "--epochs", "1", "--unfreeze", "all", "--batch-size", "8",
              "--n-boot", "10")]
    for step in steps:
        if step[1] == "CACHE":
            step = (step[0], next((tmp_path / "cache").glob("*.h5")), *step[2:])
        code, output = featx(KERAS_BACKEND, *step, cwd=tmp_path)
        assert code == 0, output
    card = json.loads((tmp_path / "experiment" / "finetune" / "model.json").read_text())
    assert card["keras_backend"] == KERAS_BACKEND
    rows = list(csv.DictReader(open(tmp_path / "experiment" / "results.csv", newline="")))
    assert {"logreg", "dense"} <= {row["head"] for row in rows}
    from featx.artifacts.results import SweepBundle

    bundle = SweepBundle.read(tmp_path / "experiment" / "best.joblib")
    assert bundle.keras_backend == (KERAS_BACKEND if "dense" in (bundle.head, *(m["head"] for m in bundle.members or []))
                                    else "")
    # --deterministic: the backend's deterministic kernels (a process-wide switch, so in its own process).
    code, output = featx(KERAS_BACKEND, "scratch", photos, "--out", tmp_path / "scratch-run", "--image-size", "32",
                         "--epochs", "1", "--batch-size", "8", "--n-boot", "10", "--deterministic", cwd=tmp_path)
    assert code == 0 and "scratch:keras-blog@32px test accuracy" in output, output
    state = json.loads((tmp_path / "scratch-run" / "scratch" / "state.json").read_text())
    assert state["settings"]["deterministic"] is True
    submissions = {}
    for backend in BACKENDS:
        out = tmp_path / f"{backend}.csv"
        code, output = featx(backend, "predict", tmp_path / "experiment" / "finetune", test1, "-o", out,
                             "--runtime", "keras", "--cache-dir", tmp_path / f"scored-{backend}", cwd=tmp_path)
        assert code == 0 and f"{out}: 4 rows, 4 predicted" in output, output
        with open(out, newline="") as handle:
            submissions[backend] = {row["id"]: float(row["label"]) for row in csv.DictReader(handle)}
    assert list(submissions["tensorflow"]) == list(submissions["torch"]) == ["1", "2", "3", "4"]
    np.testing.assert_allclose(list(submissions["tensorflow"].values()), list(submissions["torch"].values()),
                               rtol=0, atol=PROBABILITY_TOLERANCE)


# -- no TensorFlow at all --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_without_tensorflow_every_command_runs_on_pytorch(tmp_path):
    """What ``pip install featx[torch]`` gives on a machine without TensorFlow: ``import tensorflow`` fails in
    every command (as it would there), KERAS_BACKEND is unset and keras.json absent, and the whole chain runs
    on PyTorch, the OpenVINO conversions included (from ``torch.export``)."""
    import tiny_backbone

    weights = tiny_backbone.save_weights(tmp_path / "tinycnn.weights.h5")
    photos = make_kaggle_images(tmp_path / "photos", 8)
    test1 = tmp_path / "test1"
    for i in range(1, 4):
        make_image(test1 / f"{i}.png", "cat" if i % 2 else "dog", 700 + i)
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(DENSE_GRID))
    experiment = tmp_path / "experiment"

    def run(*args) -> str:
        code, output = featx(None, *args, cwd=tmp_path, setup=NO_TENSORFLOW, KERAS_HOME=str(tmp_path / "keras"))
        assert code == 0, output
        assert "Traceback" not in output and "No module named" not in output, output
        return output

    run("cache", photos, "-e", "tinycnn", "--opt", f"weights={weights}", "--runtime", "openvino",
        "--cache-dir", tmp_path / "cache")
    cache = next((tmp_path / "cache").glob("*.h5"))
    run("cache", photos, "-e", "tinycnn", "--opt", f"weights={weights}", "--runtime", "keras",
        "--cache-dir", tmp_path / "cache-keras")
    assert "runtime: keras (Keras on torch)" in run("inspect", next((tmp_path / "cache-keras").glob("*.h5")))
    with h5py.File(next((tmp_path / "cache-keras").glob("*.h5")), "r") as h5:
        assert (h5.attrs["runtime"], h5.attrs["keras_backend"]) == ("keras", "torch")
        keras_features = h5["features"][:]
    with h5py.File(cache, "r") as h5:
        assert h5.attrs["runtime"] == "openvino"
        np.testing.assert_allclose(h5["features"][:], keras_features, rtol=1e-4,
                                   atol=1e-5 * float(np.abs(keras_features).max()))
    run("sweep", cache, "--heads", "logreg,dense", "--grid", grid, "--cv", "2", "--n-boot", "10",
        "--no-learning-curve", "--out", experiment)
    output = run("finetune", experiment, "--epochs", "1", "--batch-size", "8", "--n-boot", "10")
    assert "finetune test accuracy" in output
    output = run("predict", experiment / "finetune", test1, "-o", tmp_path / "sub.csv", "--cache-dir",
                 tmp_path / "scored")
    assert f"{tmp_path / 'sub.csv'}: 3 rows, 3 predicted" in output
    output = run("evaluate", experiment / "finetune", photos, "--n-boot", "10", "--cache-dir", tmp_path / "scored")
    assert "on 16 images" in output
    output = run("scratch", photos, "--out", experiment, "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                 "--deterministic", "--n-boot", "10")
    assert json.loads((experiment / "scratch" / "model.json").read_text())["keras_backend"] == "torch"
    output = run("imagenet", photos / "cat.0.png", "-e", "keras:mobilenet_v2", "--opt", "weights=none",
                 "--opt", "input_size=32", "--top", "1")
    assert "1 image(s) classified" in output
    output = run("export", experiment, "-o", tmp_path / "exported")
    assert (tmp_path / "exported").exists(), output
