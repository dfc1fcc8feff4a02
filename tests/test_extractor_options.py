"""Extractor options are applied or refused, never ignored (issue 9, bugs 5 and 6), and specs stay put.

* An option an extractor does not take (``pooling=`` for ``pool=``) is an ``ExtractorOptionError``
  naming it, the extractor and the valid options; ``featx cache`` prints it as one line, exit 2.
* A precision an extractor does not compute in (``--precision bf16`` on ``hog``) is refused.
* ``pool=`` on EfficientNet-Lite is applied (max differs from avg and equals the max of the map);
  ``pool=`` on a layer that is already a vector (``fc2``) is refused instead of renaming the cache.
* The spec hashes of unchanged specs are pinned to the values today's caches carry.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_kaggle_images
from featx.backbones import BackboneConfig
from featx.cli import app
from featx.extractors import ExtractorOptionError, get_extractor, list_extractors

runner = CliRunner()
CNNS = ("vgg16", "caffenet", "efficientnet_lite0", "keras:mobilenet_v2")


# -- bug 5: unknown options ---------------------------------------------------------

@pytest.mark.parametrize("name", ("hog", "sift_bovw", *CNNS))
def test_misspelled_option_names_the_option_the_extractor_and_the_valid_ones(name):
    with pytest.raises(ExtractorOptionError) as caught:
        get_extractor(name, weights=None, pooling="avg") if name in CNNS else get_extractor(name, pooling="avg")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert f"{name} has no option 'pooling'" in message
    if name in CNNS:
        assert "options are: layer, pool, weights, precision" in message
        assert "pooling= is spelled pool= in featx" in message
    assert "\n" not in message


def test_close_misspelling_gets_a_suggestion():
    with pytest.raises(ExtractorOptionError, match=r"has no option 'orientation'.*did you mean orientations="):
        get_extractor("hog", orientation=8)


def test_unknown_extractor_name_is_an_option_error():
    with pytest.raises(ExtractorOptionError, match="unknown extractor 'vgg61'; expected one of"):
        get_extractor("vgg61")
    with pytest.raises(ExtractorOptionError, match="unknown Keras application 'keras:resnet5'"):
        get_extractor("keras:resnet5")


@pytest.mark.parametrize("extractor", ("vgg16", "efficientnet_lite0", "hog"))
def test_cli_cache_with_pooling_option_is_one_line_exit_2(tmp_path, extractor):
    folder = make_kaggle_images(tmp_path / "photos", 2)
    result = runner.invoke(app, ["cache", str(folder), "--extractor", extractor, "--opt", "pooling=avg",
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert f"{extractor} has no option 'pooling'" in lines[0] and "pool" in lines[0]
    assert not list((tmp_path / "cache").glob("*.h5")) if (tmp_path / "cache").exists() else True


@pytest.mark.parametrize("name", ("notes.txt", "junk.weights.h5"))
def test_cli_cache_with_a_lite_weights_file_that_does_not_load_is_one_line(tmp_path, name):
    """A file that is not EfficientNet-Lite weights (not HDF5 at all) is a user mistake: one line naming it,
    exit 2, and no cache file or journal left behind."""
    folder = make_kaggle_images(tmp_path / "photos", 2)
    weights = tmp_path / name
    weights.write_text("not weights")
    result = runner.invoke(app, ["cache", str(folder), "--extractor", "efficientnet_lite0", "--opt",
                                 f"weights={weights}", "--runtime", "keras", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: weights file {str(weights)!r} does not match efficientnet_lite0 (with or without "
                     "its classifier); pass a .weights.h5 saved from this architecture, weights=imagenet or "
                     "weights=none"], result.output
    assert not list((tmp_path / "cache").glob("*.h5")) and not list((tmp_path / "cache").glob("*.partial"))


# -- bug 6: precisions ------------------------------------------------------------------

@pytest.mark.parametrize("precision", ("bf16", "fp64"))
def test_cli_precision_a_classical_extractor_does_not_compute_in_is_refused(tmp_path, precision):
    folder = make_kaggle_images(tmp_path / "photos", 2)
    result = runner.invoke(app, ["cache", str(folder), "--extractor", "hog", "--opt", "size=32",
                                 "--precision", precision, "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert f"hog computes in fp32 only; precision '{precision}' is not supported" in lines[0]
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.h5"))


def test_cli_precision_fp32_on_a_classical_extractor_runs(tmp_path):
    folder = make_kaggle_images(tmp_path / "photos", 2)
    result = runner.invoke(app, ["cache", str(folder), "--extractor", "hog", "--opt", "size=32",
                                 "--precision", "fp32", "--workers", "1", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "cache").glob("*.h5"))) == 1


def test_declared_precisions_and_check_precision():
    hog = get_extractor("hog", size=32)
    assert hog.precisions == ("fp32",) and hog.precision == "fp32"
    assert hog.check_precision("fp32") == "fp32"
    with pytest.raises(ExtractorOptionError, match=r"hog computes in fp32 only.*choices: fp32"):
        hog.check_precision("bf16")
    vgg = get_extractor("vgg16", weights=None, precision="bf16")
    assert vgg.precisions == ("fp32", "bf16", "fp16", "int8") and vgg.precision == "bf16"
    with pytest.raises(ExtractorOptionError, match=r"vgg16 computes in fp32, bf16, fp16, int8; precision 'fp64'"):
        get_extractor("vgg16", weights=None, precision="fp64")
    with pytest.raises(ExtractorOptionError, match="precision 'int4' is not supported"):
        vgg.precision = "int4"
    assert vgg.precision == "bf16"


# -- bug 6: pool is applied, or refused where it cannot apply ---------------------------------

@pytest.fixture(scope="module")
def lite0_random_weights(tmp_path_factory):
    import keras

    from featx.extractors.efficientnet_lite import EfficientNetLite0

    keras.utils.set_random_seed(3)
    path = tmp_path_factory.mktemp("lite0") / "lite0_random.weights.h5"
    EfficientNetLite0(weights=None, include_top=False).save_weights(path)
    return str(path)


def test_efficientnet_lite_pool_is_applied(lite0_random_weights):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    feature_map = get_extractor("efficientnet_lite0", weights=lite0_random_weights, pool="flatten")
    assert feature_map.output_dim == 7 * 7 * 1280
    grid = feature_map.transform(images).reshape(2, 7, 7, 1280)
    avg = get_extractor("efficientnet_lite0", weights=lite0_random_weights, pool="avg")
    top = get_extractor("efficientnet_lite0", weights=lite0_random_weights, pool="max")
    assert avg.spec_hash() != top.spec_hash()
    avg_features, max_features = avg.transform(images), top.transform(images)
    scale = float(np.abs(grid).max())  # random weights: activations far from 1
    assert scale > 0
    np.testing.assert_allclose(avg_features, grid.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(max_features, grid.max(axis=(1, 2)), rtol=1e-4, atol=1e-5 * scale)
    assert np.abs(max_features - avg_features).max() > 0.1 * scale


@pytest.mark.parametrize("name, layer", (("vgg16", "fc2"), ("caffenet", "fc7"), ("vgg16", "fc1")))
def test_pool_on_a_layer_that_is_already_a_vector_is_refused(name, layer):
    with pytest.raises(ExtractorOptionError, match=rf"layer '{layer}' already gives one vector per image"):
        get_extractor(name, weights=None, layer=layer, pool="max")
    # The default pool (what a saved spec holds) still builds.
    assert get_extractor(name, weights=None, layer=layer).params["layer"] == layer


def test_pool_on_a_vector_layer_the_config_does_not_list_is_refused_when_the_model_is_built():
    import dataclasses

    from featx.extractors.vgg16 import VGG16Extractor

    class Unlisted(VGG16Extractor):
        config = dataclasses.replace(VGG16Extractor.config, vector_layers=())

    extractor = Unlisted(weights=None, layer="fc2", pool="max")  # not known to be a vector yet
    with pytest.raises(ExtractorOptionError, match="layer 'fc2' already gives one vector per image"):
        extractor.output_dim


# -- backbone configuration as data ----------------------------------------------------------

def test_every_cnn_has_one_backbone_config_that_its_extractor_follows():
    infos = {info.name: info for info in list_extractors()}
    # featx's own CNN families (other tests register stand-in extractors in the same registry)
    names = [n for n in infos if n not in ("hog", "sift_bovw")
             and getattr(infos[n].factory, "__module__", "featx.extractors.").startswith("featx.extractors.")]
    assert set(names) >= {"vgg16", "caffenet", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    for name in [*names, "keras:resnet50"]:
        extractor = get_extractor(name, weights=None)
        config = extractor.config
        assert isinstance(config, BackboneConfig) and config.name == name
        assert extractor.input_size == config.input_size
        assert extractor.input_shape == (*config.input_size, 3)
        assert extractor.params["layer"] == config.default_layer
        assert extractor.params["pool"] == config.default_pool
        assert extractor.preprocessing["size"] == list(config.input_size)
        assert {key for key, _ in config.weight_sources} == {"imagenet", "path", "none"}
        if name in infos:
            assert infos[name].config is config and infos[name].output_dim == config.output_dim
    assert get_extractor("efficientnet_lite2", weights=None).input_size == (260, 260)
    assert get_extractor("keras:inception_v3", weights=None).input_size == (299, 299)


def test_input_shape_is_what_the_cut_model_takes():
    extractor = get_extractor("keras:mobilenet_v2", weights=None, input_size=48)
    assert extractor.input_shape == (48, 48, 3)
    assert tuple(extractor.model.input_shape) == (None, *extractor.input_shape)
    batch = np.zeros((1, 48, 48, 3), dtype=np.uint8)
    assert extractor.model.predict_on_batch(extractor.preprocess(batch)).shape == (1, extractor.output_dim)


# -- spec hashes of unchanged specs stay as today's caches have them --------------------------

# Computed on the code before the backbone refactor (commit 36d1b29); a cache written then is
# found again only while these hold.
PINNED_SPEC_HASHES = {
    ("vgg16", "imagenet"): "78d4593107",
    ("vgg16", None): "3b9ac9cdb8",
    ("efficientnet_lite0", "imagenet"): "b724620169",
    ("efficientnet_lite0", None): "8a824fde9a",
    ("caffenet", None): "bc5a41e4fe",
    ("keras:mobilenet_v2", None): "b964206970",
}


@pytest.mark.parametrize("name, weights", sorted(PINNED_SPEC_HASHES, key=str))
def test_spec_hash_of_defaults_is_unchanged(name, weights, tmp_path, monkeypatch):
    # ImageNet files stand in with known bytes, so the weights fingerprint is known too.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("FEATX_WEIGHTS", str(tmp_path / "featx"))
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "featx").mkdir()
    (tmp_path / "keras" / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"vgg16 notop")
    (tmp_path / "featx" / "efficientnet_lite0.weights.h5").write_bytes(b"lite0")
    extractor = get_extractor(name, weights=weights)
    assert extractor.spec_hash() == PINNED_SPEC_HASHES[(name, weights)], extractor.spec()


def test_classical_spec_hashes_are_unchanged():
    assert get_extractor("hog").spec_hash() == "2bbb312df6"
    assert get_extractor("sift_bovw").spec_hash() == "97649338b8"
    assert get_extractor("vgg16", weights=None, layer="fc2", precision="bf16").spec_hash() == "0e6b2af617"
