"""What fine-tuning and from-scratch training share, below both stages.

featx's own Keras layers (registered by name, so a saved ``model.keras`` reloads in ``featx
predict`` without importing a stage) and the training-curve plot.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["custom_objects", "plot_curves"]


# ---------------------------------------------------------------------------
# Serializable layers (registered so model.keras reloads without featx code paths)
# ---------------------------------------------------------------------------
_LAYER_NAMES = ("ChannelAffine", "TwoColumnProbabilities", "NormalizeRows", "L2Normalize")
# Defined by _define_layers() on first use, so importing this module does not import Keras.
ChannelAffine = TwoColumnProbabilities = NormalizeRows = L2Normalize = None


def custom_objects() -> dict:
    """featx's Keras layers by name, registered; call before ``keras.models.load_model("model.keras")``.

    Defining them here (not at import) keeps ``import featx.finetune`` free of Keras.
    CaffeNet's own layers are registered too, so a CaffeNet fine-tune reloads.

    Examples
    --------
    >>> sorted(custom_objects())  # doctest: +SKIP
    ['ChannelAffine', 'L2Normalize', 'NormalizeRows', 'TwoColumnProbabilities']
    """
    if ChannelAffine is None:
        _define_layers()
    try:
        import featx.extractors.caffenet  # noqa: F401 -- registers LocalResponseNormalization, CaffeMaxPooling2D
    except ImportError:  # pragma: no cover - caffenet needs only keras
        pass
    return {name: globals()[name] for name in _LAYER_NAMES}


def _define_layers() -> None:
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="featx")
    class ChannelAffine(keras.layers.Layer):
        """Per-pixel affine map of the colour channels: ``x @ matrix + offset``.

        Reproduces every featx backbone's numpy ``preprocess`` (BGR reordering,
        mean subtraction, scaling) inside the model, so it takes raw RGB in [0, 255].
        Always computes in float32.
        """

        def __init__(self, matrix, offset, **kwargs):
            kwargs.setdefault("dtype", "float32")
            super().__init__(**kwargs)
            self.matrix = [[float(v) for v in row] for row in np.asarray(matrix, dtype=np.float64)]
            self.offset = [float(v) for v in np.asarray(offset, dtype=np.float64)]

        def call(self, inputs):
            x = ops.cast(inputs, "float32")
            return ops.matmul(x, ops.convert_to_tensor(self.matrix, "float32")) + ops.convert_to_tensor(
                self.offset, "float32")

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "matrix": self.matrix, "offset": self.offset}

    @keras.saving.register_keras_serializable(package="featx")
    class TwoColumnProbabilities(keras.layers.Layer):
        """``p`` (N, 1) -> ``[1 - p, p]`` (N, 2), as scikit-learn's binary ``predict_proba``."""

        def call(self, inputs):
            return ops.concatenate([1.0 - inputs, inputs], axis=-1)

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], 2)

    @keras.saving.register_keras_serializable(package="featx")
    class NormalizeRows(keras.layers.Layer):
        """Divide each row by its sum (one-vs-rest calibrated probabilities; uniform when all are 0)."""

        def call(self, inputs):
            total = ops.sum(inputs, axis=-1, keepdims=True)
            n_classes = ops.cast(ops.shape(inputs)[-1], inputs.dtype)
            uniform = ops.ones_like(inputs) / n_classes
            return ops.where(total > 0, inputs / ops.where(total > 0, total, 1.0), uniform)

        def compute_output_shape(self, input_shape):
            return input_shape

    @keras.saving.register_keras_serializable(package="featx")
    class L2Normalize(keras.layers.Layer):
        """Row-wise L2 normalisation as scikit-learn's ``Normalizer`` (zero rows stay zero)."""

        def call(self, inputs):
            norm = ops.sqrt(ops.sum(ops.square(inputs), axis=-1, keepdims=True))
            return inputs / ops.where(norm > 0, norm, 1.0)

        def compute_output_shape(self, input_shape):
            return input_shape

    globals().update(ChannelAffine=ChannelAffine, TwoColumnProbabilities=TwoColumnProbabilities,
                     NormalizeRows=NormalizeRows, L2Normalize=L2Normalize)


def plot_curves(history: list[dict], path: str | os.PathLike, title: str = "fine-tune") -> Path:
    """Loss and accuracy per epoch (train and val) as a PNG; epoch 0 is the warm start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            points = [(row["epoch"], row.get(prefix + metric)) for row in history
                      if row.get(prefix + metric) is not None]
            if points:
                axis.plot(*zip(*points), style, label=(prefix + metric).replace("_", " "))
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
