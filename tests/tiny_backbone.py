"""A registered test backbone, ``tinycnn``: two seeded convolution blocks with batch norm at 32 px.

For the fine-tune tests whose claims do not depend on the architecture (stage folders, resume
keys, the warm-start gap, the CLI): it builds and traces in a fraction of MobileNetV2's time.
Its weights come from a file (``weights=PATH``), so every rebuild holds the same numbers, as a
fine-tune of a real backbone must.
"""

from __future__ import annotations

from featx.backbones import BackboneConfig
from featx.extractors.keras_base import KerasExtractor
from featx.extractors.registry import register_backbone

NAME = "tinycnn"
CONFIG = BackboneConfig(name=NAME, input_size=(32, 32), preprocessing="mean_std", mean=(127.5,) * 3,
                        std=(64.0,) * 3, weight_sources=(("path", "a .weights.h5 file"), ("none", "random")),
                        default_layer="block2_relu", default_pool="avg", output_dim=16,
                        description="test backbone: 2 conv blocks at 32 px")


def _model():
    import keras

    inputs = keras.Input((*CONFIG.input_size, 3), name="image")
    x = inputs
    for block, filters in ((1, 8), (2, 16)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"block{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{block}_relu")(x)
    return keras.Model(inputs, x, name=NAME)


class TinyExtractor(KerasExtractor):
    config = CONFIG

    def resolve_weights_file(self) -> str | None:
        return self.params["weights"]

    def build_backbone(self):
        model = _model()
        if self.params["weights"] is not None:
            model.load_weights(self.params["weights"])
        return model


def save_weights(path, seed: int = 0):
    """Seeded random weights for ``tinycnn`` in ``path``; returns ``path``."""
    import keras

    keras.utils.set_random_seed(seed)
    _model().save_weights(path)
    return path


register_backbone(CONFIG, TinyExtractor, lambda: (True, "test weights"))
