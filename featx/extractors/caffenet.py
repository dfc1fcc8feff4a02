"""CaffeNet as a feature extractor, and :func:`CaffeNet`: the architecture with its weights.

Puts together :mod:`featx.backbones.caffenet` (the architecture) and :mod:`featx.weights.caffe`
(reading and converting the BVLC ``.caffemodel``, which is not on PyPI: pass its path).

Examples
--------
>>> from featx.extractors import get_extractor
>>> extractor = get_extractor("caffenet", weights=None)   # random weights, for trying things
>>> extractor.output_dim
4096
"""

from __future__ import annotations

import os

import numpy as np

from featx.backbones.caffenet import CONFIG, INPUT_SHAPE, caffenet_model
from featx.weights import WeightsError
from featx.weights.caffe import (caffenet_weights_status, classes_in_weights, convert_caffemodel,
                                 resolve_caffenet_weights)

from .keras_base import KerasExtractor
from .registry import register_backbone

__all__ = ["CaffeNet", "CaffeNetExtractor"]


def CaffeNet(weights: str | os.PathLike | None = None,
             input_shape: tuple[int, int, int] = INPUT_SHAPE,
             classes: int | None = None, name: str = "caffenet"):
    """:func:`featx.backbones.caffenet.caffenet_model` with its weights.

    ``weights``: None for random initialisation; a ``.caffemodel`` (converted once by
    :func:`featx.weights.caffe.import_caffemodel`); or a Keras ``.weights.h5`` / ``.h5``
    file. ``"imagenet"`` raises :class:`~featx.weights.WeightsError` explaining where to
    get the BVLC file. ``classes`` defaults to the weights file's, else 1000; the other
    arguments are the builder's.
    """
    weights_path, converted = resolve_caffenet_weights(weights), None
    if weights_path is not None and weights_path.suffix == ".caffemodel":
        weights_path, converted = convert_caffemodel(weights_path, input_shape=tuple(input_shape))
    if classes is None:
        classes = classes_in_weights(weights_path) if weights_path is not None else 1000
    if converted is not None and converted.name == name and converted.output_shape[-1] == classes:
        return converted  # just converted: its weights are the file's, no second build and load

    model = caffenet_model(tuple(input_shape), classes, name)

    if weights_path is not None:
        try:
            model.load_weights(weights_path)
        except (ValueError, KeyError) as err:
            raise WeightsError(
                f"{weights_path} does not fit CaffeNet with input {tuple(input_shape)} and "
                f"{classes} classes ({err}); expected weights saved from featx's CaffeNet "
                f"(pass the original .caffemodel to convert it again)"
            ) from None
    return model


class CaffeNetExtractor(KerasExtractor):
    """CaffeNet cut at ``layer`` (default ``fc7``, 4096-d) for feature extraction.

    Options as :class:`~featx.extractors.keras_base.KerasExtractor`, with Caffe's layer names
    (``pool5`` gives 256 values with avg/max, 9216 with flatten). ``weights`` is the path of
    ``bvlc_reference_caffenet.caffemodel`` or a converted ``.weights.h5``; ``"imagenet"`` (the
    default) raises a :class:`~featx.weights.WeightsError` saying where to get the file.
    """

    config = CONFIG

    def build_backbone(self):
        return CaffeNet(weights=self.params["weights"], input_shape=INPUT_SHAPE)

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        if tuple(batch.shape[1:3]) != tuple(self.input_size):
            raise ValueError(f"caffenet expects images resized to {self.input_size[0]}×"
                             f"{self.input_size[1]}; got a batch of shape {batch.shape}")
        return super().preprocess(batch)

    preprocess.checks_only = True  # the rest is the config's: KerasExtractor.transform may run it in the graph

    def resolve_weights_file(self) -> str | None:
        path = resolve_caffenet_weights(self.params["weights"])
        return str(path) if path is not None else None


register_backbone(CONFIG, CaffeNetExtractor, caffenet_weights_status)
