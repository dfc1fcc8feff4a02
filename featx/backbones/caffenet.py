"""CaffeNet: the BVLC reference CaffeNet (AlexNet variant) as a Keras architecture, and its configuration.

Layer for layer BVLC/caffe ``models/bvlc_reference_caffenet/deploy.prototxt``, with Caffe's layer
names (``conv5``, ``pool5``, ``fc6``, ``fc7``); the ReLU is each layer's activation, so ``layer=fc7``
gives Caffe's ``net.blobs['fc7']``. The architecture table, the two Caffe behaviours reproduced
here (:class:`CaffeMaxPooling2D`, :class:`LocalResponseNormalization`) and where the weights come
from are in ``docs/models.md``. The constructor with weights
(:func:`featx.extractors.caffenet.CaffeNet`) and the importer (:mod:`featx.weights.caffe`) sit
above this module; it imports neither.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from . import BackboneConfig, preprocess

__all__ = ["CONFIG", "caffenet_model", "CaffeMaxPooling2D", "LocalResponseNormalization", "preprocess_input",
           "BGR_MEAN", "CHW_FLATTENED", "INPUT_SHAPE", "WEIGHTS_FILE_NAME"]

INPUT_SHAPE = (227, 227, 3)
# ImageNet mean of Caffe's ilsvrc_2012_mean.npy, per channel, in B, G, R order.
BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
# Caffe flattens pool5 as C×H×W before fc6; the importer permutes fc6's rows.
CHW_FLATTENED = {"fc6": "pool5"}
WEIGHTS_FILE_NAME = "bvlc_reference_caffenet.caffemodel"

CONFIG = BackboneConfig(
    name="caffenet",
    input_size=INPUT_SHAPE[:2],
    preprocessing="caffe",
    mean=BGR_MEAN,
    weight_sources=(
        ("imagenet", f"not on PyPI: download {WEIGHTS_FILE_NAME} (BVLC model zoo) and pass its path"),
        ("path", f"a {WEIGHTS_FILE_NAME} (converted once by featx.weights.caffe) or a converted .weights.h5"),
        ("none", "random initialisation"),
    ),
    default_layer="fc7",
    default_pool="avg",
    output_dim=4096,
    vector_layers=("flatten", "fc6", "drop6", "fc7", "drop7", "fc8", "prob"),
    description="BVLC reference CaffeNet (AlexNet variant), 227×227 BGR; layers conv1-conv5, pool5, fc6, fc7, fc8",
)


@functools.cache
def _keras_layers() -> dict:
    """CaffeNet's two Keras layers, defined (and registered with Keras) on first use: importing this module
    must not import Keras, so a CaffeNet cache predicted on OpenVINO never loads TensorFlow."""
    import keras

    @keras.saving.register_keras_serializable(package="featx")
    class LocalResponseNormalization(keras.layers.Layer):
        """Caffe's across-channel local response normalisation (channels last).

        ``y = x / (k + alpha / local_size * sum(x**2 over local_size channels centred on x)) ** beta``,
        with zeros beyond the first and last channel.

        Parameters
        ----------
        local_size : int, default 5
            Number of channels summed over (odd).
        alpha, beta, k : float
            Caffe's ``lrn_param`` (``k`` defaults to 1 as in Caffe).
        """

        def __init__(self, local_size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                     k: float = 1.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            if local_size < 1 or local_size % 2 == 0:
                raise ValueError(f"local_size must be a positive odd number; got {local_size}")
            self.local_size = int(local_size)
            self.alpha = float(alpha)
            self.beta = float(beta)
            self.k = float(k)

        def call(self, inputs):
            ops = keras.ops
            half = (self.local_size - 1) // 2
            squares = ops.pad(ops.square(inputs), [[0, 0], [0, 0], [0, 0], [half, half]])
            channels = inputs.shape[-1]
            window_sum = squares[..., 0:channels]
            for offset in range(1, self.local_size):
                window_sum = window_sum + squares[..., offset:offset + channels]
            scale = self.k + (self.alpha / self.local_size) * window_sum
            return inputs * ops.power(scale, -self.beta)

        def get_config(self) -> dict:
            config = super().get_config()
            config.update(local_size=self.local_size, alpha=self.alpha, beta=self.beta, k=self.k)
            return config

    @keras.saving.register_keras_serializable(package="featx")
    class CaffeMaxPooling2D(keras.layers.Layer):
        """Max pooling with Caffe's output size, ``ceil((size - pool_size) / strides) + 1`` (no padding).

        Keras' ``valid`` pooling rounds down; where the window does not fit evenly
        the input is padded at the bottom/right with ``-inf`` so the last, partial
        window is kept, as Caffe keeps it.
        """

        def __init__(self, pool_size: int = 3, strides: int = 2, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.pool_size = int(pool_size)
            self.strides = int(strides)

        def _output_size(self, size: int) -> int:
            return -(-(size - self.pool_size) // self.strides) + 1

        def call(self, inputs):
            height, width = inputs.shape[1], inputs.shape[2]
            if height is None or width is None:
                raise ValueError("CaffeMaxPooling2D needs a fixed input height and width; "
                                 f"got input shape {tuple(inputs.shape)}")
            pad_h = (self._output_size(height) - 1) * self.strides + self.pool_size - height
            pad_w = (self._output_size(width) - 1) * self.strides + self.pool_size - width
            if pad_h or pad_w:
                inputs = keras.ops.pad(inputs, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]],
                                       constant_values=float("-inf"))
            return keras.ops.max_pool(inputs, self.pool_size, self.strides, padding="valid")

        def get_config(self) -> dict:
            config = super().get_config()
            config.update(pool_size=self.pool_size, strides=self.strides)
            return config

    for cls in (LocalResponseNormalization, CaffeMaxPooling2D):
        cls.__qualname__ = cls.__name__  # pickled by reference as featx.backbones.caffenet.<name>
    return {"LocalResponseNormalization": LocalResponseNormalization, "CaffeMaxPooling2D": CaffeMaxPooling2D}


def __getattr__(name: str):
    """``LocalResponseNormalization`` and ``CaffeMaxPooling2D``, built with Keras when first asked for."""
    if name in ("LocalResponseNormalization", "CaffeMaxPooling2D"):
        return _keras_layers()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def caffenet_model(input_shape: tuple[int, int, int] = INPUT_SHAPE, classes: int = 1000, name: str = "caffenet"):
    """BVLC reference CaffeNet as a Keras functional model with random weights, ``classes`` outputs in ``fc8``.

    The input is :func:`preprocess_input` output; the model outputs class probabilities
    (``prob``) and can be cut at any layer by name.
    """
    import keras

    layers = keras.layers
    CaffeMaxPooling2D, LocalResponseNormalization = (_keras_layers()[name] for name in
                                                     ("CaffeMaxPooling2D", "LocalResponseNormalization"))
    inputs = keras.Input(shape=tuple(input_shape), name="data")
    x = layers.Conv2D(96, 11, strides=4, activation="relu", name="conv1")(inputs)
    x = CaffeMaxPooling2D(3, 2, name="pool1")(x)
    x = LocalResponseNormalization(5, 1e-4, 0.75, dtype="float32", name="norm1")(x)
    x = layers.Conv2D(256, 5, padding="same", groups=2, activation="relu", name="conv2")(x)
    x = CaffeMaxPooling2D(3, 2, name="pool2")(x)
    x = LocalResponseNormalization(5, 1e-4, 0.75, dtype="float32", name="norm2")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(384, 3, padding="same", groups=2, activation="relu", name="conv4")(x)
    x = layers.Conv2D(256, 3, padding="same", groups=2, activation="relu", name="conv5")(x)
    x = CaffeMaxPooling2D(3, 2, name="pool5")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(4096, activation="relu", name="fc6")(x)
    x = layers.Dropout(0.5, name="drop6")(x)
    x = layers.Dense(4096, activation="relu", name="fc7")(x)
    x = layers.Dropout(0.5, name="drop7")(x)
    x = layers.Dense(classes, name="fc8")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="prob")(x)
    return keras.Model(inputs, outputs, name=name)


def preprocess_input(images: np.ndarray) -> np.ndarray:
    """RGB images (0-255, channels last) -> CaffeNet input: BGR minus the ImageNet channel mean.

    Examples
    --------
    >>> preprocess_input(np.array([[[[0, 0, 255]]]], dtype=np.float32)).round(2)
    array([[[[ 150.99, -116.67, -122.68]]]], dtype=float32)
    """
    return preprocess(CONFIG, images)
