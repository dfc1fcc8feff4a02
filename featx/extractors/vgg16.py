"""VGG16 (keras.applications) cut at a named layer: the classic transfer-learning bottleneck.

The cuts it offers are described in :mod:`featx.backbones.vgg16`; for ``fc1`` / ``fc2`` the
weights file with the classifier top is chosen automatically.

Examples
--------
>>> from featx.extractors import get_extractor
>>> get_extractor("vgg16", weights=None, layer="block5_pool", pool="avg").output_dim
512
"""

from __future__ import annotations

from pathlib import Path

from featx.backbones.vgg16 import CONFIG, LAYERS_NEEDING_TOP, vgg16_model as _vgg16
from featx.weights import WeightsError
from featx.weights.keras_cache import keras_weights_status, load_keras_weights, resolve_weights_option

from .keras_base import KerasExtractor
from .registry import register_backbone

__all__ = ["VGG16Extractor"]


class VGG16Extractor(KerasExtractor):
    """VGG16 bottleneck features.

    Options as :class:`~featx.extractors.keras_base.KerasExtractor`. ``flatten``, ``fc1``,
    ``fc2`` and ``predictions`` build the model with its classifier top; ``weights="imagenet"``
    then resolves Keras' with-top file.
    """

    config = CONFIG
    # Built or resolved on first use, then kept on the instance.
    _weights_path: Path | None = None
    _full_backbone = None  # the backbone, when it was built with its classifier top
    _classifier = None

    @property
    def needs_top(self) -> bool:
        """Whether ``layer`` exists only in the model with its classifier top."""
        return self.params["layer"] in LAYERS_NEEDING_TOP

    def resolve_weights_file(self) -> str | None:
        if self._weights_path is None and self.params["weights"] is not None:
            self._weights_path = resolve_weights_option(self.params["weights"], "vgg16",
                                                        include_top=self.needs_top)
        return None if self._weights_path is None else str(self._weights_path)

    def build_backbone(self):
        """VGG16 with weights loaded; with its classifier top when ``layer`` or the file needs it."""
        backbone = self._build_loaded_backbone()
        has_top = any(layer.name == "predictions" for layer in backbone.layers)
        self._full_backbone = backbone if has_top else None
        return backbone

    def _build_loaded_backbone(self):
        path = self.resolve_weights_file()
        if path is None:
            return _vgg16(include_top=self.needs_top)
        if self.needs_top:
            return self._load(_vgg16(include_top=True), path, "layer")
        try:
            return self._load(_vgg16(include_top=False), path, "layer")
        except WeightsError as notop_error:
            # A file saved from the full model also serves the convolutional layers.
            try:
                return self._load(_vgg16(include_top=True), path, "layer")
            except WeightsError:
                raise notop_error from None

    def classifier_model(self):
        """The full VGG16 with its 1000-way softmax (``predictions``), weights with top loaded.

        Feed it :meth:`preprocess` output, e.g. for ImageNet top-k::

            probs = extractor.classifier_model().predict(extractor.preprocess(batch))

        Returns
        -------
        keras.Model
            Input (N, 224, 224, 3), output (N, 1000) class probabilities.
        """
        if self._classifier is None and (self.needs_top or self._model is not None):
            self.model  # noqa: B018 -- builds the backbone, which may already be the full model
            if self._full_backbone is not None and self.precision == "fp32":
                self._classifier = self._full_backbone
        if self._classifier is None:
            path = resolve_weights_option(self.params["weights"], "vgg16", include_top=True)
            model = _vgg16(include_top=True)
            self._classifier = model if path is None else self._load(model, path, "classifier")
        return self._classifier

    def _load(self, model, path: str | Path, purpose: str):
        try:
            load_keras_weights(model, path)
        except WeightsError as error:
            if not any(layer.name == "fc1" for layer in model.layers):
                raise
            wanted = f"layer {self.params['layer']!r}" if purpose == "layer" else "the ImageNet classifier"
            raise WeightsError(
                f"{wanted} needs VGG16 weights with the classifier top (fc1, fc2, predictions), but "
                f"{str(path)!r} does not fit the full model; use weights='imagenet' (file "
                "vgg16_weights_tf_dim_ordering_tf_kernels.h5) or a file saved from "
                f"keras.applications.VGG16(include_top=True). Details: {error}"
            ) from None
        return model


register_backbone(CONFIG, VGG16Extractor, lambda: keras_weights_status("vgg16", include_top=False))
