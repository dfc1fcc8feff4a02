"""VGG16 (``keras.applications.VGG16``): its configuration and preprocessing.

Layers are Keras' own names. The default, ``block5_pool`` + ``flatten``
(7×7×512 = 25,088 values), is what the Keras fine-tuning recipes feed their
dense head; ``block5_conv3`` / ``block5_pool`` with ``pool=avg|max`` give 512
values, ``block4_pool`` is a less ImageNet-specific cut, and ``fc1`` / ``fc2``
(4,096) use the classifier top.
"""

from __future__ import annotations

import numpy as np

from . import BackboneConfig, preprocess

__all__ = ["CONFIG", "BGR_MEAN", "LAYERS_NEEDING_TOP", "preprocess_input", "vgg16_model"]

#: Layers that exist only in the model with its classifier top (``include_top=True``).
LAYERS_NEEDING_TOP = ("flatten", "fc1", "fc2", "predictions")

#: ImageNet channel means in BGR order, as in ``keras.applications.vgg16.preprocess_input``.
BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)

CONFIG = BackboneConfig(
    name="vgg16",
    input_size=(224, 224),
    preprocessing="caffe",
    mean=tuple(float(m) for m in BGR_MEAN),
    weight_sources=(
        ("imagenet", "Keras' vgg16_weights_tf_dim_ordering_tf_kernels(_notop).h5: ~/.keras/models, "
                     "else Keras' download (the with-top file when the layer needs it)"),
        ("path", "a .h5 / .weights.h5 file saved from keras.applications.VGG16"),
        ("none", "random initialisation"),
    ),
    default_layer="block5_pool",
    default_pool="flatten",
    output_dim=7 * 7 * 512,
    vector_layers=LAYERS_NEEDING_TOP,
    description="VGG16 (Keras): block5_pool+flatten 25,088-d by default; layer=fc1|fc2 4,096-d, pool=avg 512-d",
)


def preprocess_input(batch: np.ndarray) -> np.ndarray:
    """VGG16's input: RGB in [0, 255] -> BGR minus the ImageNet mean, float32.

    Equal to ``keras.applications.vgg16.preprocess_input(batch)``, without touching the input.
    """
    return preprocess(CONFIG, batch)


def vgg16_model(include_top: bool):
    """VGG16 at 224×224 with random weights (the loaders fill them in)."""
    import keras

    return keras.applications.VGG16(include_top=include_top, weights=None, input_shape=(*CONFIG.input_size, 3))
