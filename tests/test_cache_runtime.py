"""`featx cache --runtime openvino` gives the Keras features (fp32) on real featx backbones."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_kaggle_images
from featx.cli import app

runner = CliRunner()

pytest.importorskip("openvino")  # a third-party optional runtime, not featx's own module


def _cache(folder, cache_dir, *args):
    result = runner.invoke(app, [str(a) for a in ("cache", folder, "--cache-dir", cache_dir, "--workers", "1",
                                                  *args)])
    assert result.exit_code == 0, result.output
    (path,) = list(cache_dir.glob("*.h5"))
    with h5py.File(path) as h5:
        return h5["features"][:], dict(h5.attrs), path.name


@pytest.mark.parametrize("extractor, opts", [
    ("vgg16", ["--opt", "weights=none", "--opt", "layer=block2_pool", "--opt", "pool=avg"]),
    ("vgg16", ["--opt", "weights=none"]),  # the recipes' cut: block5_pool + flatten, 25,088-d
    ("keras:mobilenet_v2", ["--opt", "weights=none", "--opt", "input_size=96"]),
    ("caffenet", ["--opt", "weights=none", "--opt", "layer=pool5"]),  # LRN and grouped convolutions
    ("efficientnet_lite0", ["--opt", "weights=none"]),
])
def test_openvino_fp32_cache_equals_keras_cache(tmp_path, extractor, opts):
    folder = make_kaggle_images(tmp_path / "photos", 3)
    base = ["--extractor", extractor, *opts, "--precision", "fp32"]
    keras_features, keras_attrs, keras_name = _cache(folder, tmp_path / "k", *base, "--runtime", "keras")
    ov_features, ov_attrs, ov_name = _cache(folder, tmp_path / "o", *base, "--runtime", "openvino")
    assert keras_name == ov_name  # one spec: fp32 caches from either runtime are interchangeable
    assert keras_attrs["runtime"] == "keras" and ov_attrs["runtime"] == "openvino"
    assert ov_features.shape == keras_features.shape == (6, keras_features.shape[1])
    scale = np.abs(keras_features).max()
    assert scale > 0
    np.testing.assert_allclose(ov_features, keras_features, rtol=1e-4, atol=1e-4 * scale)


def test_unknown_runtime_is_one_line(tmp_path):
    folder = make_kaggle_images(tmp_path / "photos", 2)
    result = runner.invoke(app, ["cache", str(folder), "--extractor", "vgg16", "--opt", "weights=none",
                                 "--runtime", "tensorrt", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    assert "tensorrt" in result.output and "Traceback" not in result.output
    assert not list((tmp_path / "c").glob("*.h5"))
