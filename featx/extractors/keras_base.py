"""CNN extractors: a Keras model cut at a named layer, plus pooling.

A family module (vgg16, caffenet, efficientnet_lite, keras_apps) subclasses
:class:`KerasExtractor` and provides the backbone, its input size and its
preprocessing. Everything else (cutting, pooling, precision, batching) is here.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from .base import Extractor

POOLS = ("flatten", "avg", "max")


class KerasExtractor(Extractor):
    """A frozen Keras backbone cut at ``layer`` with ``pool`` on top.

    Parameters
    ----------
    layer : str, optional
        Keras layer name to cut at (``block5_pool``); the family's default when None.
    pool : {"flatten", "avg", "max"}
        How a 4-D layer output becomes a vector; ignored for 2-D outputs (``fc7``).
    weights : str or None
        ``"imagenet"``, a file path, or None (random initialisation, for tests).
    precision : {"fp32", "bf16", "fp16"}
        Compute precision; features are always returned as float32.
    """

    parallel = "model"
    default_layer: str = ""
    default_pool: str = "avg"
    input_size: tuple[int, int] = (224, 224)  # (height, width)
    interpolation: str = "area"

    # Options a family adds to the four above (set by subclasses that take more).
    extra_params: tuple[str, ...] = ()

    def __init__(self, layer: str | None = None, pool: str | None = None,
                 weights: str | None = "imagenet", precision: str = "fp32", **params: Any) -> None:
        unknown = set(params) - set(self.extra_params)
        if unknown:  # anything not named here would be stored in the spec and then ignored
            from featx.extractors.base import unknown_options_error

            raise unknown_options_error(self.name, unknown,
                                        ("layer", "pool", "weights", "precision", *self.extra_params))
        layer = layer or self.default_layer
        pool = pool or self.default_pool
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}; got {pool!r}")
        super().__init__(layer=layer, pool=pool, weights=weights, **params)
        self.precision = precision  # not in params: it does not change the spec hash by design? see spec()
        self._model = None
        self._predict = None

    # -- to be provided by the family ---------------------------------
    def build_backbone(self):
        """Return the full Keras model (weights loaded) whose layers can be cut."""
        raise NotImplementedError

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        """uint8 RGB batch (N, H, W, 3) -> float32 network input."""
        raise NotImplementedError

    def resolve_weights_file(self) -> str | None:
        """Path of the weights file in use (for the fingerprint), None when random."""
        return None

    # -- shared machinery ----------------------------------------------
    @property
    def preprocessing(self) -> dict:
        return {"size": list(self.input_size), "interpolation": self.interpolation, "equalize": False}

    def spec(self) -> dict:
        spec = super().spec()
        # Reduced precision changes the numbers slightly, so it is part of the spec.
        spec["params"]["precision"] = self.precision
        return spec

    def weights_fingerprint(self) -> str | None:
        from featx.weights import sha256_file

        path = self.resolve_weights_file()
        return sha256_file(path) if path else None

    @property
    def model(self):
        if self._model is None:
            self._model = self._build_cut_model()
        return self._model

    @property
    def output_dim(self) -> int:
        shape = self.model.output_shape
        return int(np.prod([d for d in shape[1:]]))

    def _build_cut_model(self):
        import keras

        set_precision(self.precision)
        try:
            full = self.build_backbone()
        finally:
            set_precision("fp32")
        try:
            out = full.get_layer(self.params["layer"]).output
        except ValueError:
            names = ", ".join(layer.name for layer in full.layers[-12:])
            raise ValueError(
                f"{self.name} has no layer {self.params['layer']!r}; last layers are: {names}"
            ) from None
        if len(out.shape) == 4:
            pool = self.params["pool"]
            if pool == "avg":
                out = keras.layers.GlobalAveragePooling2D(name="featx_pool")(out)
            elif pool == "max":
                out = keras.layers.GlobalMaxPooling2D(name="featx_pool")(out)
            else:
                out = keras.layers.Flatten(name="featx_pool")(out)
        # TensorFlow rejects ':' (keras:resnet50) and other characters in model names.
        model_name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.name}_{self.params['layer']}")
        model = keras.Model(full.inputs, out, name=model_name)
        model.trainable = False
        return model

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.stack(images) if not isinstance(images, np.ndarray) else images
        x = self.preprocess(batch.astype(np.float32))
        if self._predict is None:
            self._predict = self.model.predict_on_batch
        out = self._predict(x)
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)


def set_precision(precision: str) -> None:
    """Set Keras' global dtype policy for models built next."""
    import keras

    policy = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}.get(precision)
    if policy is None:
        raise ValueError(f"precision must be fp32, bf16 or fp16; got {precision!r}")
    keras.config.set_dtype_policy(policy)
