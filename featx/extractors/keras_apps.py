"""``keras:<application>``: the other keras.applications backbones as extractors.

Each application is one row of :data:`featx.backbones.keras_apps.KERAS_APPLICATIONS`.
``weights=imagenet`` resolves Keras' own ``..._notop.h5`` file through
:mod:`featx.weights.keras_cache`; a path loads that file; None keeps the random initialisation.

Examples
--------
>>> from featx.extractors import get_extractor
>>> extractor = get_extractor("keras:mobilenet_v2", weights=None, input_size=96)
>>> extractor.output_dim, extractor.preprocessing["size"]
(1280, [96, 96])
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from featx.backbones import BackboneConfig
from featx.backbones.keras_apps import BACKBONE_OUTPUT, KERAS_APPLICATIONS, get_application, short_name
from featx.weights.keras_cache import keras_weights_status, load_keras_weights, resolve_weights_option

from .base import ExtractorOptionError
from .keras_base import KerasExtractor
from .registry import ExtractorInfo, register_backbone

__all__ = ["KERAS_APPLICATIONS", "KerasApplicationExtractor", "BACKBONE_OUTPUT", "register_application"]


class KerasApplicationExtractor(KerasExtractor):
    """A keras.applications backbone cut at a layer, with its own input size and preprocessing.

    Other options as :class:`~featx.extractors.keras_base.KerasExtractor`.

    Parameters
    ----------
    application : str
        A key of :data:`KERAS_APPLICATIONS` (``resnet50``, ``mobilenet_v2``, ...).
    input_size : int or (height, width), optional
        Input resolution; the application's native size by default. Smaller
        sizes run faster; the weights are the same (MobileNetV2 has its own
        ImageNet file for 96, 128, 160 and 192 px, which is then used).
    """

    def __init__(self, application: str, layer: str | None = None, pool: str | None = None,
                 weights: str | None = "imagenet", precision: str = "fp32",
                 input_size: int | Sequence[int] | None = None, tta: str | None = "none") -> None:
        self.config = get_application(application)
        size = _input_size(self.config, input_size)
        super().__init__(layer=layer, pool=pool, weights=weights, precision=precision, tta=tta)
        self.params.update(application=short_name(self.config), input_size=list(size))
        self._weights_path: Path | None = None
        self._classifier = None

    def resolve_weights_file(self) -> str | None:
        if self._weights_path is None and self.params["weights"] is not None:
            self._weights_path = resolve_weights_option(self.params["weights"], self.params["application"],
                                                        include_top=False, input_size=self.input_size)
        return None if self._weights_path is None else str(self._weights_path)

    def build_backbone(self):
        """The convolutional base (``include_top=False``) at ``input_size``, weights loaded."""
        import keras

        base = self._keras_model(include_top=False, input_size=self.input_size,
                                 weights_path=self.resolve_weights_file())
        if self.config.default_layer != BACKBONE_OUTPUT:
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
            path = resolve_weights_option(self.params["weights"], self.params["application"],
                                          include_top=True, input_size=size)
            self._classifier = self._keras_model(include_top=True, input_size=size, weights_path=path)
        return self._classifier

    def _keras_model(self, include_top: bool, input_size: tuple[int, int], weights_path: str | Path | None):
        import keras

        constructor = getattr(keras.applications, self.config.keras_constructor)
        model = constructor(include_top=include_top, weights=None, input_shape=(*input_size, 3))
        if weights_path is not None:
            load_keras_weights(model, weights_path)
        return model


def _input_size(app: BackboneConfig, input_size: int | Sequence[int] | None) -> tuple[int, int]:
    if input_size is None:
        return app.input_size
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
        raise ExtractorOptionError(
            f"input_size for {app.name} must be one int, (height, width) or 'HxW', each at least "
            f"{app.min_input_size} px (native {app.input_size[0]}); got {input_size!r}"
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

    def factory(layer: str | None = None, pool: str | None = None, weights: str | None = "imagenet",
                precision: str = "fp32", input_size: int | Sequence[int] | None = None,
                application: str | None = None, tta: str | None = "none") -> KerasApplicationExtractor:
        # ``application``: a saved spec's params name it; the registry name already does.
        if application is not None and application != short_name(app):
            raise ExtractorOptionError(f"{app.name}: application={application!r} names another "
                                       f"application; use the extractor keras:{application}")
        return KerasApplicationExtractor(short_name(app), layer=layer, pool=pool, weights=weights,
                                         precision=precision, input_size=input_size, tta=tta)

    def weights_status() -> tuple[bool, str]:
        return keras_weights_status(short_name(app), include_top=False, input_size=app.input_size)

    return register_backbone(app, factory, weights_status,
                             default_opts={**app.default_opts, "input_size": app.input_size[0]})
