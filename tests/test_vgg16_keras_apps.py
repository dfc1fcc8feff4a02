"""VGG16 and keras:<application> extractors, and Keras-cache weights resolution.

Nothing here reaches the network: weights files are made from seeded random
models, ``$KERAS_HOME`` points into a tmp folder, and ``keras.utils.get_file``
is replaced by a function that records its arguments and fails like an offline
machine.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import h5py  # noqa: E402
import keras  # noqa: E402

from featx.extractors import get_extractor  # noqa: E402
from featx.extractors.keras_apps import KERAS_APPLICATIONS, KerasApplicationExtractor  # noqa: E402
from featx.backbones.vgg16 import preprocess_input  # noqa: E402
from featx.extractors.vgg16 import VGG16Extractor  # noqa: E402
from featx.weights import WeightsError, keras_models_dir  # noqa: E402
from featx.weights.keras_cache import KERAS_WEIGHTS, keras_weights_file  # noqa: E402

SEED = 1234


def make_images(count: int, size: int) -> np.ndarray:
    """``count`` RGB uint8 images with stripes, a colour gradient and noise (distinct per index)."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for index in range(count):
        stripes = np.sin(2 * np.pi * (x * (3 + index) + y * index))
        red = 128 + 90 * stripes
        green = 255 * x
        blue = 255 * (1 - y) * (0.5 + 0.5 * index % 2)
        rgb = np.stack([red, green, blue], axis=-1) + rng.normal(0, 12, (size, size, 3))
        images.append(rgb.clip(0, 255).astype(np.uint8))
    return np.stack(images)


def save_legacy_h5(model, path: Path) -> Path:
    """Write weights in the legacy layout Keras' downloaded application files use."""
    from keras.src.legacy.saving import legacy_h5_format

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class OfflineGetFile:
    """Stand-in for ``keras.utils.get_file`` on a machine without internet."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, fname=None, origin=None, **kwargs):
        self.calls.append({"fname": fname, "origin": origin, **kwargs})
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")


@pytest.fixture
def offline(monkeypatch) -> OfflineGetFile:
    fake = OfflineGetFile()
    monkeypatch.setattr(keras.utils, "get_file", fake)
    return fake


@pytest.fixture(scope="module")
def vgg(tmp_path_factory) -> SimpleNamespace:
    """A seeded random VGG16 base, its weights in both Keras formats, and reference outputs."""
    folder = tmp_path_factory.mktemp("vgg16")
    keras.utils.set_random_seed(SEED)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
    weights_path = folder / "vgg16_random.weights.h5"
    model.save_weights(weights_path)
    keras_home = folder / "keras_home"
    cached = save_legacy_h5(model, keras_home / "models" / keras_weights_file("vgg16").fname)
    images = make_images(2, 224)
    block5_pool = keras.Model(model.inputs, model.get_layer("block5_pool").output)
    reference = np.asarray(block5_pool.predict_on_batch(
        keras.applications.vgg16.preprocess_input(images.astype(np.float32))))
    return SimpleNamespace(weights_path=weights_path, keras_home=keras_home, cached=cached,
                           images=images, block5_pool=reference)


# -- featx.weights.keras_cache ---------------------------------------------

def test_keras_file_names_follow_keras_home(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    notop = keras_weights_file("vgg16")
    top = keras_weights_file("vgg16", include_top=True)
    assert notop.fname == "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert top.fname == "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    assert notop.path == tmp_path / "kh" / "models" / notop.fname == keras_models_dir() / notop.fname
    assert top.origin.endswith("/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    # MobileNetV2 has one file per resolution; other sizes fall back to 224 as in Keras.
    assert keras_weights_file("mobilenet_v2", input_size=(96, 96)).fname.endswith("_1.0_96_no_top.h5")
    assert keras_weights_file("mobilenet_v2", input_size=(100, 100)).fname.endswith("_1.0_224_no_top.h5")
    with pytest.raises(ValueError, match="resnet50"):
        keras_weights_file("resnet9000")


def test_every_table_hash_is_the_one_in_the_keras_source():
    constructors = {name: app.keras_constructor for name, app in KERAS_APPLICATIONS.items()}
    constructors["vgg16"] = "VGG16"
    assert set(KERAS_WEIGHTS) == set(constructors)
    for name, rows in KERAS_WEIGHTS.items():
        source = inspect.getsource(inspect.getmodule(getattr(keras.applications, constructors[name])))
        for include_top in (True, False):
            file_hash = rows[include_top][2]
            if file_hash is not None:
                assert f'"{file_hash}"' in source, (name, include_top)


@pytest.mark.parametrize("constructor, application, include_top, input_size", [
    ("VGG16", "vgg16", False, 224),
    ("MobileNetV2", "mobilenet_v2", False, 96),
    ("MobileNetV3Small", "mobilenet_v3_small", False, 224),
])
def test_table_matches_what_keras_asks_get_file_for(monkeypatch, constructor, application,
                                                    include_top, input_size):
    from keras.src.utils import file_utils

    recorder = OfflineGetFile()
    monkeypatch.setattr(file_utils, "get_file", recorder)
    with pytest.raises(Exception, match="URL fetch failure"):
        getattr(keras.applications, constructor)(include_top=include_top, weights="imagenet",
                                                 input_shape=(input_size, input_size, 3))
    (call,) = recorder.calls
    ours = keras_weights_file(application, include_top, (input_size, input_size))
    assert (call["fname"], call["origin"], call.get("file_hash"), call["cache_subdir"]) == (
        ours.fname, ours.origin, ours.file_hash, "models")


# -- VGG16 --------------------------------------------------------------------

def test_vgg16_preprocess_matches_keras_and_leaves_input_alone():
    images = make_images(2, 32).astype(np.float32)
    before = images.copy()
    expected = keras.applications.vgg16.preprocess_input(images.copy())
    np.testing.assert_allclose(preprocess_input(images), expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(images, before)
    with pytest.raises(ValueError, match=r"3 channels.*\(2, 32, 32\)"):
        preprocess_input(images[..., 0])


def test_vgg16_weights_path_gives_the_models_own_features(vgg):
    extractor = get_extractor("vgg16", weights=str(vgg.weights_path))
    assert isinstance(extractor, VGG16Extractor)
    assert extractor.output_dim == 7 * 7 * 512 == 25088
    assert extractor.preprocessing["size"] == [224, 224]
    features = extractor.transform(list(vgg.images))
    expected = vgg.block5_pool.reshape(2, -1)
    assert features.shape == (2, 25088) and features.dtype == np.float32
    assert expected.std() > 0
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # Same image, same features; and a row does not depend on its batch neighbours.
    np.testing.assert_array_equal(extractor.transform(vgg.images), features)
    np.testing.assert_allclose(extractor.transform(vgg.images[1:]), features[1:],
                               rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert extractor.weights_fingerprint() == sha256_of(vgg.weights_path)


def test_vgg16_imagenet_loads_the_file_in_the_keras_cache(vgg, monkeypatch, offline):
    monkeypatch.setenv("KERAS_HOME", str(vgg.keras_home))
    extractor = get_extractor("vgg16", pool="avg")
    assert extractor.resolve_weights_file() == str(vgg.cached)
    assert extractor.weights_fingerprint() == sha256_of(vgg.cached)
    assert extractor.output_dim == 512
    features = extractor.transform(vgg.images)
    expected = vgg.block5_pool.mean(axis=(1, 2))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert offline.calls == []  # found in the cache: no download attempted
    spec = extractor.spec()
    assert spec["weights_sha256"] == sha256_of(vgg.cached)
    assert spec["params"]["layer"] == "block5_pool" and spec["params"]["pool"] == "avg"


@pytest.mark.parametrize("layer, fname", [
    ("block5_pool", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("fc2", "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
])
def test_vgg16_imagenet_offline_error_names_file_folder_and_url(monkeypatch, tmp_path, offline, layer, fname):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_home"))
    extractor = get_extractor("vgg16", layer=layer)
    with pytest.raises(WeightsError) as caught:
        extractor.weights_fingerprint()
    message = str(caught.value)
    folder = tmp_path / "empty_home" / "models"
    assert fname in message
    assert str(folder) in message
    assert f"https://storage.googleapis.com/tensorflow/keras-applications/vgg16/{fname}" in message
    assert "--opt weights=PATH" in message
    assert "\n" not in message
    # Keras' own download was tried with Keras' own name, folder and hash.
    (call,) = offline.calls
    assert call["fname"] == fname and call["cache_subdir"] == "models"
    assert call["cache_dir"] == str(folder.parent)
    assert call["file_hash"] == keras_weights_file("vgg16", include_top=(layer == "fc2")).file_hash
    assert not (folder / fname).exists()


def test_vgg16_weights_status_reports_the_keras_cache(vgg, monkeypatch, tmp_path):
    from featx.extractors import _REGISTRY

    get_extractor("vgg16", weights=None)  # loads the family
    status = _REGISTRY["vgg16"].weights_status
    monkeypatch.setenv("KERAS_HOME", str(vgg.keras_home))
    assert status() == (True, f"Keras cache: {vgg.cached}")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_home"))
    available, detail = status()
    assert not available and "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in detail


def test_vgg16_fc2_and_classifier_share_the_full_model():
    keras.utils.set_random_seed(SEED)
    extractor = get_extractor("vgg16", weights=None, layer="fc2")
    assert extractor.output_dim == 4096
    images = make_images(1, 224)
    features = extractor.transform(images)
    classifier = extractor.classifier_model()
    assert classifier.output_shape == (None, 1000)
    # One full VGG16 serves both: the cut model's fc2 is the classifier's fc2.
    assert extractor.model.get_layer("fc2") is classifier.get_layer("fc2")
    inputs = extractor.preprocess(images.astype(np.float32))
    probabilities = np.asarray(classifier.predict_on_batch(inputs))
    assert probabilities.shape == (1, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    fc2 = keras.Model(classifier.inputs, classifier.get_layer("fc2").output)
    np.testing.assert_allclose(features, np.asarray(fc2.predict_on_batch(inputs)), rtol=1e-5, atol=1e-6)


def test_vgg16_layer_needing_top_with_a_notop_file_says_so(vgg):
    extractor = get_extractor("vgg16", weights=str(vgg.weights_path), layer="fc1")
    with pytest.raises(WeightsError, match=r"'fc1' needs VGG16 weights with the classifier top"):
        extractor.output_dim


def test_vgg16_other_cuts_and_bad_options(vgg):
    block4 = get_extractor("vgg16", weights=str(vgg.weights_path), layer="block4_pool", pool="max")
    assert block4.output_dim == 512
    conv = get_extractor("vgg16", weights=None, layer="block5_conv3")  # default pool: flatten
    assert conv.output_dim == 14 * 14 * 512
    with pytest.raises(ValueError, match=r"no layer 'block6_pool'.*block5_pool"):
        get_extractor("vgg16", weights=None, layer="block6_pool").output_dim
    with pytest.raises(ValueError, match="pool must be one of flatten, avg, max; got 'mean'"):
        get_extractor("vgg16", pool="mean")
    with pytest.raises(WeightsError, match="does not exist"):
        get_extractor("vgg16", weights=str(vgg.weights_path) + ".missing").output_dim


# -- keras:<application> --------------------------------------------------------

@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory) -> SimpleNamespace:
    """A seeded random MobileNetV2 base at 64 px and its pooled reference features."""
    folder = tmp_path_factory.mktemp("mobilenet_v2")
    keras.utils.set_random_seed(SEED)
    model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3))
    weights_path = folder / "mobilenet_v2_random.weights.h5"
    model.save_weights(weights_path)
    images = make_images(2, 64)
    inputs = images.astype(np.float32) / 127.5 - 1.0  # MobileNetV2's "tf" preprocessing
    reference = np.asarray(model.predict_on_batch(inputs)).mean(axis=(1, 2))
    return SimpleNamespace(weights_path=weights_path, images=images, reference=reference)


def test_keras_app_weights_path_gives_the_models_own_features(mobilenet):
    extractor = get_extractor("keras:mobilenet_v2", weights=str(mobilenet.weights_path), input_size=64)
    assert isinstance(extractor, KerasApplicationExtractor)
    assert extractor.name == "keras:mobilenet_v2"
    assert extractor.preprocessing["size"] == [64, 64]
    assert extractor.params["layer"] == "out_relu" and extractor.params["pool"] == "avg"
    assert extractor.output_dim == KERAS_APPLICATIONS["mobilenet_v2"].output_dim == 1280
    features = extractor.transform(mobilenet.images)
    assert mobilenet.reference.std() > 0
    np.testing.assert_allclose(features, mobilenet.reference, rtol=1e-4,
                               atol=1e-4 * np.abs(mobilenet.reference).max())
    np.testing.assert_array_equal(extractor.transform(mobilenet.images), features)
    assert extractor.weights_fingerprint() == sha256_of(mobilenet.weights_path)


def test_keras_app_imagenet_cache_hit_and_offline_error(mobilenet, monkeypatch, tmp_path, offline):
    # A Keras-3 weights file dropped into the cache under Keras' name loads too.
    home = tmp_path / "kh"
    fname = keras_weights_file("mobilenet_v2", input_size=(64, 64)).fname
    assert fname.endswith("_1.0_224_no_top.h5")  # no 64 px file: Keras uses the 224 one
    (home / "models").mkdir(parents=True)
    (home / "models" / fname).write_bytes(mobilenet.weights_path.read_bytes())
    monkeypatch.setenv("KERAS_HOME", str(home))
    extractor = get_extractor("keras:mobilenet_v2", input_size=64)
    np.testing.assert_allclose(extractor.transform(mobilenet.images), mobilenet.reference, rtol=1e-4,
                               atol=1e-4 * np.abs(mobilenet.reference).max())
    assert extractor.weights_fingerprint() == sha256_of(home / "models" / fname)
    assert offline.calls == []

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    with pytest.raises(WeightsError) as caught:
        get_extractor("keras:mobilenet_v2", input_size=96).weights_fingerprint()
    message = str(caught.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5" in message
    assert str(tmp_path / "empty" / "models") in message and "--opt weights=PATH" in message


def test_keras_app_with_an_unstable_last_layer_name_gets_a_stable_alias():
    extractor = get_extractor("keras:mobilenet_v3_small", weights=None, input_size=32, pool="max")
    assert extractor.params["layer"] == "backbone_output"
    assert extractor.output_dim == KERAS_APPLICATIONS["mobilenet_v3_small"].output_dim == 576
    features = extractor.transform(make_images(1, 32))
    assert features.shape == (1, 576) and np.isfinite(features).all()


def test_keras_app_classifier_model_is_the_full_model_at_native_size():
    extractor = get_extractor("keras:mobilenet_v3_small", weights=None, input_size="48x64")
    assert extractor.preprocessing["size"] == [48, 64]  # cut model at the requested size...
    classifier = extractor.classifier_model()
    assert extractor.classifier_input_size == (224, 224)  # ...classifier at the native one
    assert classifier.input_shape == (None, 224, 224, 3) and classifier.output_shape == (None, 1000)
    images = make_images(1, 224).astype(np.float32)
    probabilities = np.asarray(classifier.predict_on_batch(extractor.preprocess(images)))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert extractor.classifier_model() is classifier


def test_keras_app_errors_are_clear():
    with pytest.raises(ValueError, match=r"unknown Keras application 'keras:resnet9000'.*keras:resnet50"):
        get_extractor("keras:resnet9000")
    with pytest.raises(ValueError, match=r"at least 32 px.*got 8"):
        get_extractor("keras:mobilenet_v2", weights=None, input_size=8)
    with pytest.raises(ValueError, match=r"\(height, width\) or 'HxW'.*got 'large'"):
        get_extractor("keras:mobilenet_v2", weights=None, input_size="large")
    with pytest.raises(ValueError, match=r"no layer 'block99'.*out_relu"):
        get_extractor("keras:mobilenet_v2", weights=None, input_size=32, layer="block99").output_dim
