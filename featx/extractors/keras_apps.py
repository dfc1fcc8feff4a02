"""``keras:<application>``: the other keras.applications backbones as extractors.

Each application is one row of :data:`KERAS_APPLICATIONS` (timm style: data
beside the model, not code in the callers): its Keras constructor, native input
size, the module whose ``preprocess_input`` it needs, the layer to cut at by
default (the last convolutional block's output, i.e. what ``include_top=False``
returns) and that layer's channel count (the feature length with ``pool=avg``,
the default).

Weights: ``imagenet`` resolves Keras' own ``..._notop.h5`` file through
:mod:`featx.weights.keras_cache` (cache first, then Keras' download; offline,
an error naming the file, the folder and the URL), a path loads that file, and
None keeps the random initialisation.

Examples
--------
>>> from featx.extractors import get_extractor
>>> extractor = get_extractor("keras:mobilenet_v2", weights=None, input_size=96)
>>> extractor.output_dim, extractor.preprocessing["size"]
(1280, [96, 96])
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from featx.weights.keras_cache import keras_weights_status, load_keras_weights, resolve_weights_option

from . import ExtractorInfo, register
from .keras_base import KerasExtractor

__all__ = [
    "KERAS_APPLICATIONS",
    "KerasApplication",
    "KerasApplicationExtractor",
    "BACKBONE_OUTPUT",
    "register_application",
    "list_applications",
]

#: Layer name given to the backbone's output where Keras names that layer with a
#: session counter (``activation_336``) instead of a stable name.
BACKBONE_OUTPUT = "backbone_output"


@dataclass(frozen=True)
class KerasApplication:
    """What featx needs to know to use one keras.applications model.

    Attributes
    ----------
    name : str
        featx name (``resnet50``); the extractor is ``keras:<name>``.
    constructor : str
        Attribute of ``keras.applications`` that builds it (``ResNet50``).
    preprocess_module : str
        Module of ``keras.applications`` whose ``preprocess_input`` it expects.
    input_size : int
        Native square input size in pixels (the ImageNet training resolution).
    min_input_size : int
        Smallest input the convolutional base accepts.
    default_layer : str
        Last convolutional block's output; :data:`BACKBONE_OUTPUT` where Keras
        gives that layer no stable name.
    channels : int
        Channels of ``default_layer`` (feature length with ``pool=avg|max``).
    """

    name: str
    constructor: str
    preprocess_module: str
    input_size: int
    min_input_size: int
    default_layer: str
    channels: int

    @property
    def extractor_name(self) -> str:
        return f"keras:{self.name}"


def _apps(*rows: tuple) -> dict[str, KerasApplication]:
    return {row[0]: KerasApplication(*row) for row in rows}


# Sizes, minimums and layer names from keras/src/applications/*.py (Keras 3).
KERAS_APPLICATIONS: dict[str, KerasApplication] = _apps(
    # name, constructor, preprocess module, input, min input, default layer, channels
    ("resnet50", "ResNet50", "resnet50", 224, 32, "conv5_block3_out", 2048),
    ("resnet101", "ResNet101", "resnet", 224, 32, "conv5_block3_out", 2048),
    ("inception_v3", "InceptionV3", "inception_v3", 299, 75, "mixed10", 2048),
    ("xception", "Xception", "xception", 299, 71, "block14_sepconv2_act", 2048),
    ("mobilenet_v2", "MobileNetV2", "mobilenet_v2", 224, 32, "out_relu", 1280),
    ("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", 224, 32, BACKBONE_OUTPUT, 576),
    ("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", 224, 32, BACKBONE_OUTPUT, 960),
    ("densenet121", "DenseNet121", "densenet", 224, 32, "relu", 1024),
    *[(f"efficientnet_b{index}", f"EfficientNetB{index}", "efficientnet", size, 32, "top_activation", channels)
      for index, (size, channels) in enumerate([(224, 1280), (240, 1280), (260, 1408), (300, 1536),
                                                (380, 1792), (456, 2048), (528, 2304), (600, 2560)])],
    *[(f"efficientnetv2_{variant}", f"EfficientNetV2{variant.upper()}", "efficientnet_v2", size, 32,
       "top_activation", channels)
      for variant, size, channels in [("b0", 224, 1280), ("b1", 240, 1280), ("b2", 260, 1408),
                                      ("b3", 300, 1536), ("s", 384, 1280)]],
    ("convnext_tiny", "ConvNeXtTiny", "convnext", 224, 32, BACKBONE_OUTPUT, 768),
    ("convnext_small", "ConvNeXtSmall", "convnext", 224, 32, BACKBONE_OUTPUT, 768),
    ("convnext_base", "ConvNeXtBase", "convnext", 224, 32, BACKBONE_OUTPUT, 1024),
    ("nasnetmobile", "NASNetMobile", "nasnet", 224, 32, BACKBONE_OUTPUT, 1056),
)


def list_applications() -> list[KerasApplication]:
    """Every supported application, sorted by name (for ``featx extractors``)."""
    return [KERAS_APPLICATIONS[name] for name in sorted(KERAS_APPLICATIONS)]


def get_application(name: str) -> KerasApplication:
    """The table row for ``name`` (``resnet50`` or ``keras:resnet50``), with a clear error."""
    short = name.split(":", 1)[1] if name.startswith("keras:") else name
    app = KERAS_APPLICATIONS.get(short)
    if app is None:
        known = ", ".join(f"keras:{n}" for n in sorted(KERAS_APPLICATIONS))
        raise ValueError(f"unknown Keras application {name!r}; expected one of: {known}")
    return app


class KerasApplicationExtractor(KerasExtractor):
    """A keras.applications backbone cut at a layer, with its own input size and preprocessing.

    Parameters
    ----------
    application : str
        A key of :data:`KERAS_APPLICATIONS` (``resnet50``, ``mobilenet_v2``, ...).
    layer : str, optional
        Keras layer name to cut at; the application's last convolutional block by default.
    pool : {"avg", "max", "flatten"}, default="avg"
        How a 4-D layer output becomes a vector.
    weights : "imagenet", str or None, default="imagenet"
        Keras' ImageNet file (cache, else download), a ``.h5`` / ``.weights.h5``
        path, or None for random initialisation.
    precision : {"fp32", "bf16", "fp16"}, default="fp32"
        Compute precision; features are float32 either way.
    input_size : int or (height, width), optional
        Input resolution; the application's native size by default. Smaller
        sizes run faster; the weights are the same (MobileNetV2 has its own
        ImageNet file for 96, 128, 160 and 192 px, which is then used).
    """

    default_pool = "avg"

    extra_params = ("application", "input_size")

    def __init__(self, application: str, layer: str | None = None, pool: str | None = None,
                 weights: str | None = "imagenet", precision: str = "fp32",
                 input_size: int | Sequence[int] | None = None) -> None:
        app = get_application(application)
        self.application = app
        self.name = app.extractor_name
        self.default_layer = app.default_layer
        self.input_size = _input_size(app, input_size)
        super().__init__(layer=layer, pool=pool, weights=weights, precision=precision,
                         application=app.name, input_size=list(self.input_size))
        self._weights_path: Path | None = None
        self._classifier = None

    def resolve_weights_file(self) -> str | None:
        if self._weights_path is None and self.params["weights"] is not None:
            self._weights_path = resolve_weights_option(self.params["weights"], self.application.name,
                                                        include_top=False, input_size=self.input_size)
        return None if self._weights_path is None else str(self._weights_path)

    def build_backbone(self):
        """The convolutional base (``include_top=False``) at ``input_size``, weights loaded."""
        import keras

        base = self._keras_model(include_top=False, input_size=self.input_size,
                                 weights_path=self.resolve_weights_file())
        if self.application.default_layer != BACKBONE_OUTPUT:
            return base
        output = keras.layers.Identity(name=BACKBONE_OUTPUT)(base.output)
        return keras.Model(base.inputs, output, name=base.name)

    def classifier_model(self):
        """The full model with its 1000-way ImageNet softmax, at the native input size.

        ``weights="imagenet"`` loads Keras' with-top file; a path must then hold
        the full model's weights. Feed it :meth:`preprocess` output of images at
        ``classifier_input_size``, e.g. for ImageNet top-k.
        """
        if self._classifier is None:
            size = self.classifier_input_size
            path = resolve_weights_option(self.params["weights"], self.application.name,
                                          include_top=True, input_size=size)
            self._classifier = self._keras_model(include_top=True, input_size=size, weights_path=path)
        return self._classifier

    @property
    def classifier_input_size(self) -> tuple[int, int]:
        """(height, width) the classifier top was trained for (the application's native size)."""
        return (self.application.input_size, self.application.input_size)

    def _keras_model(self, include_top: bool, input_size: tuple[int, int], weights_path: str | Path | None):
        import keras

        constructor = getattr(keras.applications, self.application.constructor)
        model = constructor(include_top=include_top, weights=None, input_shape=(*input_size, 3))
        if weights_path is not None:
            load_keras_weights(model, weights_path)
        return model

    def _build_cut_model(self):
        import keras

        cut = super()._build_cut_model()
        # The shared cut names the model "<extractor name>_<layer>", and TensorFlow
        # refuses the ":" of "keras:..." in a scope name: rename it.
        model = keras.Model(cut.inputs, cut.outputs,
                            name=f"keras_{self.application.name}_{self.params['layer']}")
        model.trainable = False
        return model

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        module = importlib.import_module(f"keras.applications.{self.application.preprocess_module}")
        # Keras' numpy path works in place on float input: give it a copy.
        out = module.preprocess_input(np.array(batch, dtype=np.float32, copy=True))
        return np.asarray(out, dtype=np.float32)


def _input_size(app: KerasApplication, input_size: int | Sequence[int] | None) -> tuple[int, int]:
    if input_size is None:
        return (app.input_size, app.input_size)
    try:
        if isinstance(input_size, str):  # from the command line: "96" or "96x128"
            size = tuple(int(part) for part in input_size.lower().split("x"))
        elif np.isscalar(input_size):
            size = (int(input_size),)
        else:
            size = tuple(int(side) for side in input_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < app.min_input_size:
        raise ValueError(
            f"input_size for keras:{app.name} must be one int, (height, width) or 'HxW', each at least "
            f"{app.min_input_size} px (native {app.input_size}); got {input_size!r}"
        )
    return size


def register_application(name: str) -> ExtractorInfo:
    """Register ``keras:<application>`` in the extractor registry (the registry calls this).

    Raises
    ------
    ValueError
        When the application is not in :data:`KERAS_APPLICATIONS`; the message lists them.
    """
    app = get_application(name)

    def factory(**opts: Any) -> KerasApplicationExtractor:
        opts.pop("application", None)  # a saved spec's params name it; the registry name already does
        return KerasApplicationExtractor(app.name, **opts)

    return register(ExtractorInfo(
        name=app.extractor_name,
        factory=factory,
        description=(f"keras.applications.{app.constructor} at {app.input_size} px, "
                     f"{app.default_layer} + avg pool"),
        default_opts={"layer": app.default_layer, "pool": "avg", "weights": "imagenet",
                      "input_size": app.input_size},
        weights_status=lambda: keras_weights_status(app.name, include_top=False,
                                                    input_size=(app.input_size, app.input_size)),
        output_dim=app.channels,
    ))
