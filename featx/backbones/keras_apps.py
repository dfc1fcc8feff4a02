"""The other keras.applications backbones, one :class:`~featx.backbones.BackboneConfig` each.

The default cut of each is the last convolutional block's output (what ``include_top=False``
returns); its channel count is the feature length with ``pool=avg``, the default.
"""

from __future__ import annotations

from . import BackboneConfig

__all__ = ["KERAS_APPLICATIONS", "BACKBONE_OUTPUT", "get_application", "short_name"]

#: Layer name given to the backbone's output where Keras names that layer with a
#: session counter (``activation_336``) instead of a stable name.
BACKBONE_OUTPUT = "backbone_output"


def _config(name: str, constructor: str, module: str, size: int, min_size: int, layer: str,
            channels: int) -> BackboneConfig:
    return BackboneConfig(
        name=f"keras:{name}",
        input_size=(size, size),
        preprocessing="keras",
        keras_module=module,
        keras_constructor=constructor,
        weight_sources=(
            ("imagenet", "Keras' own ..._notop.h5: ~/.keras/models, else Keras' download"),
            ("path", f"a .h5 / .weights.h5 file saved from keras.applications.{constructor}"),
            ("none", "random initialisation"),
        ),
        default_layer=layer,
        default_pool="avg",
        output_dim=channels,
        min_input_size=min_size,
        description=f"keras.applications.{constructor} at {size} px, {layer} + avg pool",
    )


# Sizes, minimums and layer names from keras/src/applications/*.py (Keras 3).
KERAS_APPLICATIONS: dict[str, BackboneConfig] = {row[0]: _config(*row) for row in [
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
]}


def short_name(config: BackboneConfig) -> str:
    """``resnet50`` for ``keras:resnet50`` (the key of Keras' weights files)."""
    return config.name.split(":", 1)[-1]


def get_application(name: str) -> BackboneConfig:
    """The row for ``name`` (``resnet50`` or ``keras:resnet50``), with a clear error."""
    app = KERAS_APPLICATIONS.get(name.removeprefix("keras:"))
    if app is None:
        known = ", ".join(f"keras:{n}" for n in sorted(KERAS_APPLICATIONS))
        raise ValueError(f"unknown Keras application {name!r}; expected one of: {known}")
    return app
