"""Flip test-time augmentation, ``--opt tta=flip`` (issue 19, point 3).

* A ``tta=flip`` cache row is the mean of the plain features of the image and of a mirrored copy of its
  file (made with PIL), on the Keras and the OpenVINO runtime; a mirror-symmetric image gets the same
  features with and without it.
* ``tta=flip`` is its own spec (another cache file); ``tta=none`` is today's spec, hash unchanged; a
  saved spec rebuilds the same extractor; the OpenVINO IR is shared (the network is the same).
* ``featx cache --opt tta=foo`` is one line naming the choices, exit 2, nothing written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import tiny_backbone
from conftest import make_image
from featx.cache import open_cache
from featx.data import load_dataset
from featx.extractors import ExtractorOptionError, get_extractor
from featx.pipeline import build_cache

N_IMAGES = 3


def _photos(root: Path) -> Path:
    """``cat.i.png`` (tinycnn's 32 px, so no resize), ``dog.i.png`` its PIL mirror, ``cat.9.png`` symmetric."""
    for i in range(N_IMAGES):
        path = make_image(root / f"cat.{i}.png", "cat" if i % 2 else "other", i, size=32)
        ImageOps.mirror(Image.open(path)).save(root / f"dog.{i}.png")
    half = np.asarray(Image.open(root / "cat.0.png"))[:, :16]
    Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)).save(root / "cat.9.png")
    return root


def _rows(path: Path) -> dict[str, np.ndarray]:
    with open_cache(path) as cache:
        return dict(zip(cache.paths, cache.features[:]))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return str(tiny_backbone.save_weights(tmp_path_factory.mktemp("tiny") / "tiny.weights.h5"))


@pytest.mark.parametrize("runtime", ["keras", "openvino"])
def test_flip_row_is_the_mean_of_the_image_and_its_mirror(tmp_path, weights, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")
        from featx.runtime.openvino import CONVERSIONS
    manifest = load_dataset(_photos(tmp_path / "photos"), layout="kaggle", val=0, test=0)
    plain_result = build_cache(manifest, get_extractor("tinycnn", weights=weights), tmp_path / "cache",
                               runtime=runtime, workers=1)
    converted = CONVERSIONS["convert"] if runtime == "openvino" else 0
    flip_result = build_cache(manifest, get_extractor("tinycnn", weights=weights, tta="flip"), tmp_path / "cache",
                              runtime=runtime, workers=1)
    assert flip_result.path != plain_result.path and flip_result.computed == 2 * N_IMAGES + 1
    if runtime == "openvino":
        assert CONVERSIONS["convert"] == converted  # same network: the plain cache's IR is reused
    plain, flip = _rows(plain_result.path), _rows(flip_result.path)
    scale = np.abs(np.stack(list(plain.values()))).max()
    tolerance = dict(rtol=1e-4, atol=1e-5 * scale)
    for i in range(N_IMAGES):
        image, mirror = plain[f"cat.{i}.png"], plain[f"dog.{i}.png"]
        assert np.abs(image - mirror).max() > 0.01 * scale  # the mirror changes the features: the check bites
        np.testing.assert_allclose(flip[f"cat.{i}.png"], (image + mirror) / 2, **tolerance)
        np.testing.assert_allclose(flip[f"dog.{i}.png"], flip[f"cat.{i}.png"], **tolerance)
    np.testing.assert_allclose(flip["cat.9.png"], plain["cat.9.png"], **tolerance)


def test_flip_is_its_own_spec_and_none_is_todays():
    plain = get_extractor("efficientnet_lite0", weights=None)
    assert get_extractor("efficientnet_lite0", weights=None, tta="none").spec() == plain.spec()
    assert get_extractor("efficientnet_lite0", weights=None, tta=None).spec() == plain.spec()  # --opt tta=none
    assert "tta" not in plain.spec()["params"] and plain.tta == "none"
    flip = get_extractor("efficientnet_lite0", weights=None, tta="flip")
    assert flip.spec()["params"]["tta"] == "flip" and flip.spec_hash() != plain.spec_hash()
    # what predict does with a saved spec: the same extractor, augmentation included
    rebuilt = get_extractor(flip.spec()["name"], **{k: v for k, v in flip.spec()["params"].items()})
    assert rebuilt.spec_hash() == flip.spec_hash() and rebuilt.tta == "flip"
    mobilenet = get_extractor("keras:mobilenet_v2", weights=None, input_size=96, tta="flip")
    assert mobilenet.tta == "flip"
    with pytest.raises(ExtractorOptionError, match=r"tta must be one of none, flip; got 'foo'"):
        get_extractor("vgg16", weights=None, tta="foo")


def test_cli_cache_refuses_an_unknown_tta_in_one_line(tmp_path):
    for i in range(2):
        make_image(tmp_path / "photos" / f"cat.{i}.png", "cat", i)
        make_image(tmp_path / "photos" / f"dog.{i}.png", "dog", i)
    featx = Path(sys.executable).with_name("featx")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the user's environment
    result = subprocess.run([str(featx), "cache", str(tmp_path / "photos"), "--extractor", "efficientnet_lite0",
                             "--opt", "tta=foo", "--cache-dir", str(tmp_path / "cache")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert lines == ["error: efficientnet_lite0: tta must be one of none, flip; got 'foo' (--opt tta=flip "
                     "averages the features of each image and its mirror)"], lines
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
