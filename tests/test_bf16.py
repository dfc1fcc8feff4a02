"""bf16 features against fp32 ones of the same weights, per backbone family, on a CPU that computes bf16.

OpenVINO's CPU plugin computes bf16 only on a CPU with avx512_bf16 or AMX (elsewhere it ignores the
hint and computes fp32, and featx refuses ``--runtime openvino --precision bf16``), so these tests
run there and skip elsewhere, saying why. Nothing downloads: each family's weights are seeded random
ones in a file the test writes, and the images are small generated ones (featx resizes them).

What the bound on the cosine rests on: bf16 keeps 8 bits of mantissa (2-3 significant digits), and
each layer's rounding adds to the error with depth. Measured per image on these images, on a 2-core
AMD EPYC (Zen 4, avx512_bf16, avx512_vnni), OpenVINO 2026.4: the lowest cosine of bf16 to fp32
features was 0.99998 for VGG16 block5_pool, EfficientNet-Lite0 and CaffeNet fc7, 0.99994 for
MobileNetV2 at 64 px, 0.99998 for Keras' own bf16 of VGG16; on real photos with ImageNet weights
``bench_extract.py`` saw 0.996 for Lite0. A network with other weights gives about 0.4 (the bug
guarded here: a second random initialisation of the model OpenVINO converts). :data:`MIN_COSINE`
(0.999: a relative error of the features up to 4.5%, four times the worst measured here) leaves room
for another CPU's kernels (AMX) and stays far above what another network gives.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_kaggle_images
from featx.runtime.hardware import cpu_has_bf16

pytestmark = pytest.mark.skipif(
    not cpu_has_bf16(),
    reason="this CPU has no avx512_bf16 or AMX (/proc/cpuinfo): OpenVINO computes fp32 for a bf16 hint "
           "there and featx refuses --runtime openvino --precision bf16, so there is no bf16 to check")
pytest.importorskip("openvino", reason="the bf16 runtime is OpenVINO's; pip install 'openvino>=2024.0'")

#: Lowest per-image cosine of bf16 to fp32 features accepted (measured values in the module docstring).
MIN_COSINE = 0.999

_SCRIPT = Path(sys.executable).with_name("featx")
FEATX = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from featx.cli import app; app(prog_name='featx')"]


def featx(*args) -> subprocess.CompletedProcess:
    """``featx ARGS`` in a subprocess, in the user's environment (TensorFlow's logging as it comes)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([*FEATX, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    return done


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` to the same row of ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def read_cache(cache_dir: Path) -> tuple[list[str], np.ndarray, dict]:
    from featx.cache import open_cache

    (path,) = cache_dir.glob("*.h5")
    with open_cache(path) as cache:
        return cache.paths, np.asarray(cache.features[:]), dict(cache.h5.attrs)


# -- weights files, one per family ------------------------------------------------------------------

def vgg16_weights(folder: Path) -> tuple[str, ...]:
    import keras

    keras.utils.set_random_seed(0)
    path = folder / "vgg16.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None).save_weights(path)
    return ("--extractor", "vgg16", "--opt", f"weights={path}", "--opt", "layer=block5_pool")


def lite0_weights(folder: Path) -> tuple[str, ...]:
    import keras

    from featx.extractors.efficientnet_lite import EfficientNetLite0

    keras.utils.set_random_seed(0)
    path = folder / "lite0.weights.h5"
    EfficientNetLite0(include_top=False, weights=None).save_weights(path)
    return ("--extractor", "efficientnet_lite0", "--opt", f"weights={path}")


def caffenet_weights(folder: Path) -> tuple[str, ...]:
    """A full-size ``.caffemodel`` (227 px, 10 classes) with He-scaled random weights, so activations keep
    a realistic size through the net; the extractor's default cut, fc7."""
    from featx.weights.caffe import write_caffemodel

    rng = np.random.default_rng(0)
    shapes = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
              "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3), "fc6": (4096, 256 * 6 * 6),
              "fc7": (4096, 4096), "fc8": (10, 4096)}
    blobs = {name: [rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2 / np.prod(shape[1:]))),
                    rng.standard_normal(shape[0], dtype=np.float32) * np.float32(0.1)]
             for name, shape in shapes.items()}
    path = write_caffemodel(folder / "caffenet.caffemodel", blobs)
    return ("--extractor", "caffenet", "--opt", f"weights={path}")


def mobilenet_weights(folder: Path) -> tuple[str, ...]:
    import keras

    keras.utils.set_random_seed(0)
    path = folder / "mobilenet_v2.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3)).save_weights(path)
    return ("--extractor", "keras:mobilenet_v2", "--opt", f"weights={path}", "--opt", "input_size=64")


FAMILIES = {"vgg16": vgg16_weights, "efficientnet_lite": lite0_weights, "caffenet": caffenet_weights,
            "keras:*": mobilenet_weights}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_featx_cache_bf16_features_match_fp32_of_the_same_weights(tmp_path, family):
    """``featx cache --precision bf16 --runtime openvino`` against ``--precision fp32``: the same rows,
    a bf16 cache recorded as such, and every image's features within bf16's rounding of fp32's."""
    images = make_kaggle_images(tmp_path / "train", 4)
    extractor_args = FAMILIES[family](tmp_path)
    features = {}
    for precision in ("fp32", "bf16"):
        featx("cache", images, *extractor_args, "--precision", precision, "--runtime", "openvino",
              "--cache-dir", tmp_path / precision)
        paths, features[precision], attrs = read_cache(tmp_path / precision)
        assert len(paths) == 8 and attrs["runtime"] == "openvino"
        features[f"{precision} paths"] = paths
    assert features["bf16 paths"] == features["fp32 paths"]
    cosine = cosines(features["fp32"], features["bf16"])
    assert not np.array_equal(features["fp32"], features["bf16"]), "bf16 gave the fp32 numbers: not computed in bf16"
    assert cosine.min() >= MIN_COSINE, f"{family}: bf16 vs fp32 cosine per image {np.round(cosine, 5)}"


def test_random_weights_are_one_network_whatever_runs_it(tmp_path):
    """``weights=None`` (random initialisation) at bf16: the fp32 model OpenVINO converts is the network of
    :attr:`model` (Keras' bf16 one), not a second random draw; so the bf16 cache of that extractor matches
    the fp32 cache of an fp32 extractor given the same weights, and Keras' own bf16 features too."""
    from featx.data import build_manifest
    from featx.datasets import decode_group
    from featx.extractors import get_extractor
    from featx.pipeline import build_cache

    manifest = build_manifest(make_kaggle_images(tmp_path / "train", 2), layout="auto")
    bf16 = get_extractor("vgg16", weights=None, layer="block5_pool", precision="bf16")
    result = build_cache(manifest, bf16, tmp_path / "bf16", runtime="openvino")  # builds fp32_model() only
    assert result.runtime == "openvino" and result.computed == 4
    for converted, used in zip(bf16.fp32_model().get_weights(), bf16.model.get_weights(), strict=True):
        np.testing.assert_array_equal(converted, used, err_msg="OpenVINO converted other random weights")

    fp32 = get_extractor("vgg16", weights=None, layer="block5_pool")
    fp32.model.set_weights(bf16.model.get_weights())
    build_cache(manifest, fp32, tmp_path / "fp32", runtime="openvino")
    paths, reference, _ = read_cache(tmp_path / "fp32")
    assert read_cache(tmp_path / "bf16")[0] == paths
    openvino_bf16 = read_cache(tmp_path / "bf16")[1]
    images, _, _ = decode_group(str(manifest.root), paths, bf16.preprocessing)
    keras_bf16 = bf16.transform(images)
    assert cosines(reference, openvino_bf16).min() >= MIN_COSINE
    assert cosines(reference, keras_bf16).min() >= MIN_COSINE
