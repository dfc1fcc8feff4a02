"""CNN architectures featx can cut for features, each with its configuration kept as data.

One module per family holds the architecture and a :class:`BackboneConfig` beside it (as timm
keeps ``pretrained_cfg``): input size, preprocessing, weight sources, the default cut and pool, and
the cuts that already give a vector. ``featx.weights`` and ``featx.extractors`` read these records
instead of repeating the numbers; this package imports neither.

Examples
--------
>>> from featx.backbones import preprocess
>>> from featx.backbones.efficientnet_lite import CONFIGS
>>> import numpy as np
>>> preprocess(CONFIGS["efficientnet_lite0"], np.array([[0.0, 127.0, 255.0]])).tolist()
[[-0.9921875, 0.0, 1.0]]
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BackboneConfig", "POOLS", "CNN_PRECISIONS", "PREPROCESSING_MODES", "preprocess"]

#: How a 4-D layer output becomes one vector per image.
POOLS = ("flatten", "avg", "max")
#: Compute precisions every Keras backbone runs in (features are float32 either way).
CNN_PRECISIONS = ("fp32", "bf16", "fp16")
#: ``caffe``: RGB -> BGR, minus ``mean`` (BGR order), 0-255 scale kept. ``mean_std``:
#: ``(x - mean) / std`` on RGB. ``keras``: ``keras.applications.<keras_module>.preprocess_input``.
PREPROCESSING_MODES = ("caffe", "mean_std", "keras")


@dataclass(frozen=True)
class BackboneConfig:
    """Everything featx needs to know about one backbone, without building it.

    Attributes
    ----------
    name : str
        Extractor name (``vgg16``, ``caffenet``, ``efficientnet_lite0``, ``keras:resnet50``).
    input_size : (int, int)
        Native (height, width) in pixels: the ImageNet training resolution.
    preprocessing : {"caffe", "mean_std", "keras"}
        How uint8 RGB becomes network input (see :data:`PREPROCESSING_MODES` and :func:`preprocess`).
    mean, std : tuple of float, optional
        Per-channel constants of ``caffe`` (``mean`` in BGR order) and ``mean_std`` (RGB).
    keras_module : str, optional
        ``keras.applications`` module whose ``preprocess_input`` the ``keras`` mode calls.
    weight_sources : tuple of (str, str)
        ``(weights= value, where it comes from)``: ``imagenet``, ``path``, ``none``.
    default_layer, default_pool : str
        The cut and pool a bare ``get_extractor(name)`` uses.
    vector_layers : tuple of str
        Cuts whose output is already one vector per image: ``pool`` does not apply to them.
    output_dim : int
        Feature length of the default cut.
    min_input_size : int, optional
        Smallest square input the backbone accepts when ``input_size=`` may change it; None
        when the input size is fixed.
    keras_constructor : str, optional
        Attribute of ``keras.applications`` that builds it (keras.applications backbones only).
    interpolation : str
        Resize interpolation (``featx.images``).
    description : str
        One line for ``featx extractors``.
    """

    name: str
    input_size: tuple[int, int]
    preprocessing: str
    weight_sources: tuple[tuple[str, str], ...]
    default_layer: str
    default_pool: str
    output_dim: int
    vector_layers: tuple[str, ...] = ()
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    keras_module: str | None = None
    min_input_size: int | None = None
    keras_constructor: str | None = None
    interpolation: str = "area"
    description: str = ""

    def __post_init__(self) -> None:
        if self.preprocessing not in PREPROCESSING_MODES:
            raise ValueError(f"{self.name}: preprocessing must be one of {PREPROCESSING_MODES}; "
                             f"got {self.preprocessing!r}")
        if self.default_pool not in POOLS:
            raise ValueError(f"{self.name}: default_pool {self.default_pool!r} is not in {POOLS}")

    @property
    def default_opts(self) -> dict[str, Any]:
        """The options a bare ``get_extractor(name)`` uses (for ``featx extractors``)."""
        return {"layer": self.default_layer, "pool": self.default_pool, "weights": "imagenet"}


def preprocess(config: BackboneConfig, batch: Any) -> np.ndarray:
    """uint8/float RGB images (..., 3), values 0-255 -> float32 input of ``config``'s network.

    The input is never modified.

    Raises
    ------
    ValueError
        When the last axis does not hold 3 channels.
    """
    batch = np.asarray(batch, dtype=np.float32)
    if batch.ndim < 1 or batch.shape[-1] != 3:
        raise ValueError(f"expected RGB images with 3 channels last; got an array of shape {batch.shape}")
    if config.preprocessing == "caffe":
        return batch[..., ::-1] - np.asarray(config.mean, dtype=np.float32)
    if config.preprocessing == "mean_std":
        return (batch - np.asarray(config.mean, dtype=np.float32)) / np.asarray(config.std, dtype=np.float32)
    mode = _KERAS_PREPROCESS_MODES.get(config.keras_module)
    if mode == "caffe":
        return batch[..., ::-1] - np.asarray(_CAFFE_BGR_MEAN, dtype=np.float32)
    if mode == "tf":
        return batch / np.float32(127.5) - np.float32(1.0)
    if mode == "torch":
        return (batch / np.float32(255.0) - np.asarray(_TORCH_MEAN, np.float32)) / np.asarray(_TORCH_STD, np.float32)
    if mode == "none":
        return batch.copy()
    module = importlib.import_module(f"keras.applications.{config.keras_module}")
    # Keras' numpy path works in place on float input: give it a copy.
    return np.asarray(module.preprocess_input(np.array(batch, copy=True)), dtype=np.float32)


# keras.applications.<module>.preprocess_input, in numpy: what it computes is known, and importing Keras for
# it costs seconds (TensorFlow comes with it) in a predict that runs the model on OpenVINO. "none": the model
# rescales its input itself. A test compares each with Keras' own.
_KERAS_PREPROCESS_MODES = {
    "resnet50": "caffe", "resnet": "caffe", "inception_v3": "tf", "xception": "tf", "mobilenet_v2": "tf",
    "nasnet": "tf", "densenet": "torch", "mobilenet_v3": "none", "efficientnet": "none",
    "efficientnet_v2": "none", "convnext": "none",
}
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
