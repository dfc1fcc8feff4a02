"""CNN extractors: a Keras model cut at a named layer, plus pooling.

A family module (vgg16, caffenet, efficientnet_lite, keras_apps) subclasses
:class:`KerasExtractor`, sets :attr:`KerasExtractor.config` (the backbone's
:class:`~featx.backbones.BackboneConfig`: input size, preprocessing, default cut)
and builds the backbone with its weights. Everything else (option checks,
cutting, pooling, precision, batching) is here.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from featx.backbones import CNN_PRECISIONS, POOLS, BackboneConfig, preprocess

from .base import Extractor, ExtractorOptionError

__all__ = ["KerasExtractor", "POOLS", "TTAS", "set_precision", "with_tta"]

#: Test-time augmentations a CNN extractor takes (``--opt tta=flip``); ``none`` leaves the spec as it was.
TTAS = ("none", "flip")


def with_tta(run, batch: np.ndarray, tta: str = "none") -> np.ndarray:
    """``run(batch)``, or with ``tta="flip"`` the mean of ``run`` on ``batch`` and on its left-right mirror.

    The one place both runtimes (``KerasExtractor.transform`` and the OpenVINO runner) apply test-time
    augmentation. The mirrored copies go through ``run`` in the same call as the originals (one batch
    of 2N images), so the model sees a batch twice as large rather than being called twice.

    Parameters
    ----------
    run : callable
        ``(N, H, W, 3) array -> (N, D) features``.
    batch : ndarray
        Images, ``(N, H, W, 3)`` (uint8 or already preprocessed: the mirror is the same either way).
    tta : {"none", "flip"}

    Examples
    --------
    >>> batch = np.arange(2 * 1 * 3 * 1, dtype=np.float32).reshape(2, 1, 3, 1)
    >>> with_tta(lambda x: x.reshape(len(x), -1), batch, "flip")
    array([[1., 1., 1.],
           [4., 4., 4.]], dtype=float32)
    """
    if tta == "none":
        return run(batch)
    n = len(batch)
    out = np.asarray(run(np.concatenate([batch, batch[:, :, ::-1]])), dtype=np.float32)
    return (out[:n] + out[n:]) / 2


class KerasExtractor(Extractor):
    """A frozen Keras backbone cut at ``layer`` with ``pool`` on top.

    Parameters
    ----------
    layer : str, optional
        Keras layer name to cut at (``block5_pool``); the backbone's default when None.
    pool : {"flatten", "avg", "max"}, optional
        How a 4-D layer output becomes a vector; the backbone's default when None.
        Refused for a layer whose output already is a vector (``fc7``), where it
        would change nothing but the cache's name.
    weights : str or None
        ``"imagenet"``, a file path, or None (random initialisation, for tests).
    precision : {"fp32", "bf16", "fp16"}
        Compute precision; features are always returned as float32.
    tta : {"none", "flip"}
        Test-time augmentation: ``flip`` makes an image's features the mean of those of the image and
        of its left-right mirror (twice the compute). In the spec only when ``flip``, so ``none``
        caches keep the names they had.

    Attributes
    ----------
    config : BackboneConfig
        The backbone's configuration (set by the family).
    model : keras.Model
        The cut model (built on first use): input ``(N, *input_shape)`` float32, the
        output of :meth:`preprocess`; output ``(N, output_dim)`` (before the reshape
        :meth:`transform` does for 4-D cuts with no pooling). This is the model a
        runtime other than Keras converts.
    input_shape : (int, int, int)
        ``(height, width, 3)`` of one image as :attr:`model` takes it.
    """

    parallel = "model"
    precisions = (*CNN_PRECISIONS, "int8")  # int8: the OpenVINO runtime only (NNCF quantization)
    config: BackboneConfig

    def __init__(self, layer: str | None = None, pool: str | None = None,
                 weights: str | None = "imagenet", precision: str = "fp32", tta: str | None = "none") -> None:
        config = self.config
        self._pool_given = pool is not None and pool != config.default_pool
        layer = layer or config.default_layer
        pool = pool or config.default_pool
        if pool not in POOLS:
            raise ExtractorOptionError(f"{config.name}: pool must be one of {', '.join(POOLS)}; got {pool!r}")
        if self._pool_given and layer in config.vector_layers:
            self._refuse_pool(layer, pool)
        tta = tta or "none"  # --opt tta=none parses to None
        if tta not in TTAS:
            raise ExtractorOptionError(f"{config.name}: tta must be one of {', '.join(TTAS)}; got {tta!r} "
                                       f"(--opt tta=flip averages the features of each image and its mirror)")
        super().__init__(layer=layer, pool=pool, weights=weights)
        if tta != "none":
            self.params["tta"] = tta
        self.precision = precision  # checked against self.precisions
        self._model = None

    @property
    def tta(self) -> str:
        """The test-time augmentation, ``none`` or ``flip`` (see :func:`with_tta`)."""
        return self.params.get("tta", "none")

    def _refuse_pool(self, layer: str, pool: str):
        raise ExtractorOptionError(
            f"{self.name}: layer {layer!r} already gives one vector per image, so pool={pool} would "
            f"change nothing; leave pool out (pool applies to 4-D layers such as {self.config.default_layer!r})"
        )

    # -- to be provided by the family ---------------------------------
    def build_backbone(self):
        """Return the full Keras model (weights loaded) whose layers can be cut."""
        raise NotImplementedError

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        """uint8 RGB batch (N, H, W, 3) -> float32 network input, as :attr:`config` says."""
        return preprocess(self.config, batch)

    def resolve_weights_file(self) -> str | None:
        """Path of the weights file in use (for the fingerprint), None when random."""
        return None

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.config.name

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) images are resized to: ``input_size=`` where the family takes it, else native."""
        size = self.params.get("input_size") or self.config.input_size
        return (int(size[0]), int(size[1]))

    @property
    def classifier_input_size(self) -> tuple[int, int]:
        """(height, width) a ``classifier_model()`` top was trained for: the native size, whatever ``input_size``."""
        return self.config.input_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.input_size, 3)

    @property
    def preprocessing(self) -> dict:
        return {"size": list(self.input_size), "interpolation": self.config.interpolation, "equalize": False}

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
            model = self._build_cut_model()
            twin = getattr(self, "_fp32_twin", None)
            if twin is not None and twin._model is not None:
                _share_random_weights(self, twin._model, model)
            self._model = model
        return self._model

    def fp32_model(self):
        """:attr:`model` built in fp32 whatever :attr:`precision` is: what a runtime converts
        (OpenVINO applies bf16 and int8 itself). Same weights as :attr:`model`, random ones included."""
        if self.precision == "fp32":
            return self.model
        if getattr(self, "_fp32_twin", None) is None:
            import copy

            twin = copy.copy(self)
            twin._model, twin._precision, twin._fp32_twin = None, "fp32", None
            self._fp32_twin = twin
        twin = self._fp32_twin
        if twin._model is None:
            model = twin.model
            if self._model is not None:
                _share_random_weights(self, self._model, model)
        return twin.model

    @property
    def output_dim(self) -> int:
        return int(np.prod(self.model.output_shape[1:]))

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
            raise ExtractorOptionError(
                f"{self.name} has no layer {self.params['layer']!r}; last layers are: {names}"
            ) from None
        if len(out.shape) == 4:
            pool_layer = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D,
                          "flatten": keras.layers.Flatten}[self.params["pool"]]
            out = pool_layer(name="featx_pool")(out)
        elif self._pool_given:
            self._refuse_pool(self.params["layer"], self.params["pool"])
        # TensorFlow rejects ':' (keras:resnet50) and other characters in model names.
        model_name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.name}_{self.params['layer']}")
        model = keras.Model(full.inputs, out, name=model_name)
        model.trainable = False
        return model

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.stack(images) if not isinstance(images, np.ndarray) else images
        return with_tta(self._infer, batch, self.tta)

    def _infer(self, pixels: np.ndarray) -> np.ndarray:
        """Features of one batch of RGB pixels, ``(N, H, W, 3)``, as float32 ``(N, D)``."""
        expected = tuple(self.model.input_shape[1:])
        if pixels.ndim != 4 or any(want not in (None, got) for want, got in zip(expected, pixels.shape[1:])):
            raise ValueError(f"{self.name} expects images resized to {expected[0]}×{expected[1]} with 3 "
                             f"channels; got a batch of shape {pixels.shape}")
        forward = self._forward()
        if forward is None:
            out = self.model.predict_on_batch(self.preprocess(pixels.astype(np.float32)))
        else:
            out = forward(pixels if pixels.dtype == np.uint8 else np.asarray(pixels, dtype=np.float32))
        return np.asarray(out, dtype=np.float32).reshape(len(pixels), -1)

    def _forward(self):
        """Preprocessing and :attr:`model` as one function of uint8 or float32 ``(N, H, W, 3)`` pixels, any
        ``N`` (a traced TensorFlow function, or an eager PyTorch call without autograd); None where
        :meth:`transform` takes the numpy path (a family with its own :meth:`preprocess`, unless that only
        checks its input and says so with ``preprocess.checks_only = True``).

        ``predict_on_batch`` on :meth:`preprocess` output costs a cast and two numpy passes over the
        float32 batch on the calling thread while the backend's threads wait, and on TensorFlow traces its
        graph again for the first batch of another size (a dataset's short last batch, a batch with
        unreadable images). Here the uint8 batch goes in as it is: the cast and the per-channel
        arithmetic run in the backend's threads (on the GPU, where there is one, after a copy a quarter
        the size), and one trace per input dtype serves every batch size.
        """
        import keras

        model = self.model
        cached = getattr(self, "_forward_of", None)
        if cached is not None and cached[0] is model:  # a copy (the fp32 twin) has another model
            return cached[1]
        forward = None
        own = type(self).preprocess
        if own is KerasExtractor.preprocess or getattr(own, "checks_only", False):
            backend = keras.backend.backend()
            if backend == "tensorflow":
                forward = _GraphForward(model, self.config)
            elif backend == "torch":
                forward = _TorchForward(model, self.config)
        self._forward_of = (model, forward)
        return forward


def _share_random_weights(extractor: KerasExtractor, source, target) -> None:
    """Give ``target`` the weights of ``source`` when ``extractor`` has no weights file.

    Each build of a backbone with ``weights=None`` draws new random weights, so the fp32 model a
    runtime converts and the reduced-precision :attr:`KerasExtractor.model` would be two different
    networks (the OpenVINO bf16 features then had cosine 0.4 to the Keras ones). A weights file
    gives both the same values already. Mixed-precision policies keep float32 variables, so this
    copies exactly.
    """
    if extractor.resolve_weights_file() is None:
        target.set_weights(source.get_weights())


class _GraphForward:
    """``forward(pixels) -> model output``: preprocessing and ``model`` in one TensorFlow graph.

    One concrete function per input dtype, traced on first use with the batch size left open; a
    concrete function is never traced again, so no batch size or process-wide count of traces makes
    TensorFlow retrace (or warn that it does).
    """

    def __init__(self, model, config: BackboneConfig) -> None:
        self.model, self.config = model, config
        self.functions: dict[str, object] = {}

    def __call__(self, pixels: np.ndarray):
        key = pixels.dtype.name
        if key not in self.functions:
            import tensorflow as tf

            model, config, as_list = self.model, self.config, isinstance(self.model.input, list)

            def run(batch):
                x = _preprocess_tensor(config, batch)
                return tf.cast(model([x] if as_list else x, training=False), tf.float32)

            spec = tf.TensorSpec((None, *model.input_shape[1:]), getattr(tf, key))
            self.functions[key] = tf.function(run, autograph=False).get_concrete_function(spec)
        return self.functions[key](pixels)


class _TorchForward:
    """``forward(pixels) -> float32 numpy output``: preprocessing and ``model`` on Keras' PyTorch device (the GPU
    when torch sees one), in inference mode; the uint8 batch is copied there before it is cast."""

    def __init__(self, model, config: BackboneConfig) -> None:
        self.model, self.config = model, config
        self.as_list = isinstance(model.input, list)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        import torch
        from keras import ops

        with torch.inference_mode():  # no autograd records at all (about 10% faster than no_grad for Lite0 on a CPU)
            x = _preprocess_tensor(self.config, pixels)
            out = self.model([x] if self.as_list else x, training=False)
            return ops.convert_to_numpy(ops.cast(out, "float32"))


def _preprocess_tensor(config: BackboneConfig, pixels):
    """:func:`featx.backbones.preprocess` in the backend's ops (the same arithmetic: equal results, within one
    float32 rounding of the input for Keras' own ``preprocess_input``)."""
    import importlib

    from keras import ops

    x = ops.cast(pixels, "float32")
    if config.preprocessing == "caffe":
        return ops.flip(x, axis=-1) - ops.convert_to_tensor(np.asarray(config.mean, np.float32))
    if config.preprocessing == "mean_std":
        return ((x - ops.convert_to_tensor(np.asarray(config.mean, np.float32)))
                / ops.convert_to_tensor(np.asarray(config.std, np.float32)))
    module = importlib.import_module(f"keras.applications.{config.keras_module}")
    return ops.cast(module.preprocess_input(x), "float32")


_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def set_precision(precision: str) -> None:
    """Set Keras' global dtype policy for models built next (``fp32``, ``bf16`` or ``fp16``)."""
    import keras

    policy = _POLICIES.get(precision)
    if policy is None:
        raise ExtractorOptionError(f"precision must be one of {', '.join(_POLICIES)}; got {precision!r}")
    keras.config.set_dtype_policy(policy)
