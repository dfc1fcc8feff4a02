"""CaffeNet: the BVLC reference CaffeNet (AlexNet variant) in Keras, and its extractor.

The architecture follows BVLC/caffe ``models/bvlc_reference_caffenet/deploy.prototxt``
layer for layer, with Caffe's layer names so a user can cut at ``conv5``,
``pool5``, ``fc6`` or ``fc7``::

    data 227×227×3 BGR, mean subtracted
    conv1  96 11×11 stride 4, ReLU   -> pool1 max 3 stride 2 -> norm1 LRN(5, 1e-4, 0.75)
    conv2 256  5×5 pad 2 group 2, ReLU -> pool2 max 3 stride 2 -> norm2 LRN(5, 1e-4, 0.75)
    conv3 384  3×3 pad 1, ReLU
    conv4 384  3×3 pad 1 group 2, ReLU
    conv5 256  3×3 pad 1 group 2, ReLU -> pool5 max 3 stride 2 (6×6×256 = 9216)
    fc6 4096, ReLU -> drop6 -> fc7 4096, ReLU -> drop7 -> fc8 1000 -> prob (softmax)

Unlike AlexNet, CaffeNet pools before it normalises. Caffe's ReLUs work in place,
so the ``conv*`` and ``fc6``/``fc7`` blobs a Caffe user reads are after the ReLU;
here the ReLU is the activation of those layers (as in ``keras.applications``),
so ``layer=fc7`` gives the same numbers as Caffe's ``net.blobs['fc7']``.

Two Caffe behaviours are reproduced with small serialisable layers:

* :class:`CaffeMaxPooling2D`: Caffe rounds pooled sizes *up*
  (``ceil((size - kernel) / stride) + 1``); the missing bottom/right cells are
  padded with ``-inf`` so they never win the max. At 227×227 every pooling
  divides evenly (55 -> 27, 27 -> 13, 13 -> 6); at other sizes the rounding matters.
* :class:`LocalResponseNormalization`: Caffe's across-channel LRN,
  ``x / (k + alpha / n * sum of x² over n neighbouring channels) ** beta``.

Preprocessing (:func:`preprocess_input`): RGB -> BGR, then subtract the ImageNet
per-channel mean (B, G, R = 104.0, 116.7, 122.7: the mean of Caffe's
``ilsvrc_2012_mean.npy`` over its pixels, as in Caffe's classification example);
the pixel scale stays 0-255. Images are resized straight to 227×227 (no
256-then-centre-crop-227 as Caffe's ``Classifier`` does), so the whole image is seen.

Weights: the BVLC weights are not on PyPI. Download
``bvlc_reference_caffenet.caffemodel`` (from the BVLC model zoo) and pass its
path: it is converted once into Keras weights by :mod:`featx.weights.caffe`.

Examples
--------
>>> from featx.extractors import get_extractor
>>> extractor = get_extractor("caffenet", weights=None)   # random weights, for trying things
>>> extractor.output_dim
4096
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from featx.weights import WeightsError, weights_home

from . import ExtractorInfo, register
from .keras_base import KerasExtractor

__all__ = [
    "CaffeNet",
    "CaffeNetExtractor",
    "CaffeMaxPooling2D",
    "LocalResponseNormalization",
    "preprocess_input",
    "BGR_MEAN",
    "CHW_FLATTENED",
]

INPUT_SHAPE = (227, 227, 3)
# ImageNet mean of Caffe's ilsvrc_2012_mean.npy, per channel, in B, G, R order.
BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
# Caffe flattens pool5 as C×H×W before fc6; the importer permutes fc6's rows.
CHW_FLATTENED = {"fc6": "pool5"}
WEIGHTS_FILE_NAME = "bvlc_reference_caffenet.caffemodel"


def _weights_help() -> str:
    return (
        f"the BVLC CaffeNet ImageNet weights are not on PyPI, so featx cannot fetch them: "
        f"download {WEIGHTS_FILE_NAME} (BVLC model zoo, models/bvlc_reference_caffenet in the "
        f"BVLC/caffe repository) and pass its path, e.g. "
        f"--opt weights=/path/to/{WEIGHTS_FILE_NAME}; it is converted once into {weights_home()}"
    )


# ----------------------------------------------------------------------
# Caffe layers
# ----------------------------------------------------------------------
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

    def compute_output_shape(self, input_shape):
        return input_shape

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

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, self._output_size(height), self._output_size(width), channels)

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


# ----------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------
def CaffeNet(weights: str | os.PathLike | None = None,
             input_shape: tuple[int, int, int] = INPUT_SHAPE,
             classes: int | None = None, name: str = "caffenet"):
    """BVLC reference CaffeNet as a Keras functional model.

    Parameters
    ----------
    weights : None, "imagenet", or path
        None for random initialisation; a ``.caffemodel`` (converted once by
        :func:`featx.weights.caffe.import_caffemodel`); or a Keras ``.weights.h5``
        / ``.h5`` file. ``"imagenet"`` raises :class:`~featx.weights.WeightsError`
        explaining where to get the BVLC file.
    input_shape : tuple of int, default (227, 227, 3)
        Height, width, channels (BGR, mean subtracted: see :func:`preprocess_input`).
    classes : int, optional
        Outputs of ``fc8``; by default taken from the weights file, else 1000.
    name : str
        Model name.

    Returns
    -------
    keras.Model
        Outputs class probabilities (``prob``); cut at any layer by name.
    """
    weights_path = resolve_weights(weights)
    if weights_path is not None and weights_path.suffix == ".caffemodel":
        from featx.weights.caffe import import_caffemodel

        weights_path = import_caffemodel(weights_path, input_shape=tuple(input_shape))
    if classes is None:
        classes = _classes_in_weights(weights_path) if weights_path is not None else 1000

    layers = keras.layers
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
    model = keras.Model(inputs, outputs, name=name)

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


def resolve_weights(weights: str | os.PathLike | None) -> Path | None:
    """The weights file a ``weights`` option names (not converted yet), None for random weights.

    Raises
    ------
    WeightsError
        ``"imagenet"`` (not downloadable: the message says what to do), a
        missing file, or a file that is neither ``.caffemodel`` nor ``.h5``.
    """
    if weights is None:
        return None
    if str(weights).lower() == "imagenet":
        converted = sorted(weights_home().glob("caffenet-*.weights.h5"))
        hint = f" (already converted here: {converted[-1]})" if converted else ""
        raise WeightsError(f"weights='imagenet' for caffenet: {_weights_help()}{hint}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"caffenet weights file not found: {path}; expected a "
                           f"{WEIGHTS_FILE_NAME} (or a converted .weights.h5) at that path")
    if path.suffix != ".caffemodel" and not path.name.endswith(".h5"):
        raise WeightsError(f"caffenet weights must be a .caffemodel or a Keras .weights.h5 file; "
                           f"got {path.name}")
    return path


def _classes_in_weights(path: Path) -> int:
    """Outputs of ``fc8`` as stored in a Keras weights file (a fine-tuned CaffeNet may have few).

    Keras' ``.weights.h5`` names layers by class and order (``dense``, ``dense_1``,
    ``dense_2``), so ``fc8`` is the last ``dense`` group; its bias length is the count.
    """
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            group = handle.get("layers")
            dense = sorted((name for name in (group.keys() if group is not None else [])
                            if name == "dense" or name.startswith("dense_")),
                           key=lambda name: int(name.partition("_")[2] or 0))
            bias = group[dense[-1]].get("vars/1") if dense else None
            return int(bias.shape[0]) if bias is not None else 1000
    except OSError as err:
        raise WeightsError(f"cannot read {path} as an HDF5 weights file ({err}); expected a "
                           f"Keras .weights.h5 (or pass the original .caffemodel)") from None


def preprocess_input(images: np.ndarray) -> np.ndarray:
    """RGB images (0-255, channels last) -> CaffeNet input: BGR minus the ImageNet channel mean.

    Examples
    --------
    >>> preprocess_input(np.array([[[[0, 0, 255]]]], dtype=np.float32)).round(2)
    array([[[[ 150.99, -116.67, -122.68]]]], dtype=float32)
    """
    images = np.asarray(images, dtype=np.float32)
    if images.shape[-1] != 3:
        raise ValueError(f"expected RGB images with 3 channels last; got shape {images.shape}")
    return images[..., ::-1] - np.asarray(BGR_MEAN, dtype=np.float32)


# ----------------------------------------------------------------------
# The extractor
# ----------------------------------------------------------------------
class CaffeNetExtractor(KerasExtractor):
    """CaffeNet cut at ``layer`` (default ``fc7``, 4096-d) for feature extraction.

    Parameters
    ----------
    layer : str, default "fc7"
        ``conv1``-``conv5``, ``pool1``/``pool2``/``pool5``, ``norm1``/``norm2``,
        ``fc6``, ``fc7``, ``fc8`` or ``prob``.
    pool : {"avg", "max", "flatten"}, default "avg"
        For 4-D layers: ``pool5`` gives 256 values with avg/max, 9216 with flatten.
    weights : str
        Path to ``bvlc_reference_caffenet.caffemodel`` or a converted
        ``.weights.h5``; None for random weights. ``"imagenet"`` (the default)
        raises a :class:`~featx.weights.WeightsError` saying where to get the file.
    precision : {"fp32", "bf16", "fp16"}
        Compute precision (LRN always computes in float32).
    """

    name = "caffenet"
    default_layer = "fc7"
    default_pool = "avg"
    input_size = INPUT_SHAPE[:2]

    def build_backbone(self):
        return CaffeNet(weights=self.params["weights"], input_shape=INPUT_SHAPE)

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        if tuple(batch.shape[1:3]) != tuple(self.input_size):
            raise ValueError(f"caffenet expects images resized to {self.input_size[0]}×"
                             f"{self.input_size[1]}; got a batch of shape {batch.shape}")
        return preprocess_input(batch)

    def resolve_weights_file(self) -> str | None:
        path = resolve_weights(self.params["weights"])
        return str(path) if path is not None else None


def _weights_status() -> tuple[bool, str]:
    converted = sorted(weights_home().glob("caffenet-*.weights.h5"))
    if converted:
        return True, f"converted weights: {converted[-1]} (pass --opt weights=PATH)"
    return False, (f"not on PyPI: download {WEIGHTS_FILE_NAME} and pass "
                   f"--opt weights=/path/to/{WEIGHTS_FILE_NAME}")


register(ExtractorInfo(
    name="caffenet",
    factory=CaffeNetExtractor,
    description="BVLC reference CaffeNet (AlexNet variant), 227×227 BGR; "
                "layers conv1-conv5, pool5, fc6, fc7, fc8",
    default_opts={"layer": "fc7", "pool": "avg", "weights": "imagenet"},
    weights_status=_weights_status,
    output_dim=4096,
))
