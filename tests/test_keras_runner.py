"""The Keras runner's model call: preprocessing and the cut model in one traced graph.

``KerasExtractor.transform`` (what ``--runtime keras`` runs) takes the uint8 batch as decoded; the
cast and the backbone's per-channel arithmetic run in TensorFlow, and one trace serves every batch
size (``predict_on_batch`` traced its graph again for a short last batch). The numbers are those of
``model.predict_on_batch(preprocess(images))``, for each preprocessing mode featx has (``keras``: the
application's own ``preprocess_input`` on the tensor, one code path for all of them).
"""

from __future__ import annotations

import numpy as np
import pytest

import tiny_backbone  # noqa: F401  registers tinycnn
from featx.extractors import get_extractor

pytestmark = pytest.mark.keras  # the runner on each backend: make test runs this file on PyTorch too

CASES = [
    ("tinycnn", {}),                                           # mean_std
    ("vgg16", {"layer": "block1_pool", "pool": "avg"}),         # caffe (featx's own)
    ("keras:mobilenet_v2", {"input_size": 32}),                # keras: its preprocess_input on the tensor
]


def numpy_path(extractor, pixels: np.ndarray) -> np.ndarray:
    """What the runner computed before: numpy preprocessing, then ``predict_on_batch``."""
    out = extractor.model.predict_on_batch(extractor.preprocess(pixels.astype(np.float32)))
    return np.asarray(out, dtype=np.float32).reshape(len(pixels), -1)


@pytest.mark.parametrize(("name", "options"), CASES, ids=[name for name, _ in CASES])
def test_transform_gives_the_numbers_of_predict_on_batch_for_any_batch_size(name, options):
    extractor = get_extractor(name, weights=None, **options)
    height, width = extractor.input_size
    images = np.random.default_rng(0).integers(0, 256, (5, height, width, 3), dtype=np.uint8)
    features = extractor.transform(images)  # uint8, as featx's decoding gives them
    assert extractor.model.predict_function is None  # not through predict_on_batch: no retrace per batch size
    for batch in (images[:3], images[3:4]):  # a short last batch, a batch of one
        np.testing.assert_allclose(extractor.transform(batch), features[:len(batch)] if len(batch) == 3
                                   else features[3:4], rtol=1e-5, atol=1e-5 * float(np.abs(features).max()))
    np.testing.assert_array_equal(extractor.transform(images.astype(np.float64)), features)  # float input
    reference = numpy_path(extractor, images)
    # Keras' own preprocess_input on a tensor may round its input once differently from numpy: 1e-5.
    np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-5 * float(np.abs(reference).max()))


def test_flip_tta_is_the_mean_of_both_passes():
    extractor = get_extractor("keras:mobilenet_v2", weights=None, input_size=32, tta="flip")
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected = (numpy_path(extractor, images) + numpy_path(extractor, images[:, :, ::-1])) / 2
    np.testing.assert_allclose(extractor.transform(images), expected, rtol=1e-5,
                               atol=1e-5 * float(np.abs(expected).max()))


def test_images_of_another_size_are_refused_in_one_line():
    extractor = get_extractor("keras:mobilenet_v2", weights=None, input_size=32)
    with pytest.raises(ValueError, match=r"keras:mobilenet_v2 expects images resized to 32×32 .*\(2, 40, 40, 3\)"):
        extractor.transform(np.zeros((2, 40, 40, 3), np.uint8))
