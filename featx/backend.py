"""The Keras backend featx runs on (TensorFlow or PyTorch), and the few calls that differ between them.

featx reads the backend the way Keras does: ``KERAS_BACKEND``, else ``"backend"`` in
``$KERAS_HOME/keras.json`` (``~/.keras/keras.json``), else TensorFlow. One exception, made before Keras is
first imported (:func:`select_backend`, run by ``import featx``): when the backend is TensorFlow only by
that file or the default, TensorFlow is not installed and PyTorch is (``pip install featx[torch]``),
featx runs Keras on PyTorch instead of failing; Keras writes ``"tensorflow"`` into a new keras.json on
its first import, so that file alone does not mean a choice. An explicit ``KERAS_BACKEND`` is always
obeyed.

What differs, and where each command reads it:

============================  ====================================  ===================================
call                          TensorFlow                            PyTorch
============================  ====================================  ===================================
GPUs (:func:`gpu_count`)      ``tf.config.list_physical_devices``   ``torch.cuda.device_count``
``--deterministic``           ``enable_op_determinism``             ``use_deterministic_algorithms``
several GPUs (fine-tune)      ``MirroredStrategy`` over all         one GPU (``cuda:0``), said once
============================  ====================================  ===================================
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys

from featx.errors import UserError

__all__ = ["SUPPORTED", "BackendError", "configured_backend", "select_backend", "keras_backend", "check_backend",
           "gpu_count", "set_random_seed", "enable_determinism", "has_strategy", "training_strategy"]

SUPPORTED = ("tensorflow", "torch")


class BackendError(UserError):
    """The Keras backend asked for cannot run featx here."""


def _keras_json() -> str:
    """Keras' own keras.json path (``keras/src/backend/config.py``: KERAS_HOME, else ``~/.keras``, else /tmp)."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return os.path.join(home, "keras.json")


def configured_backend() -> tuple[str, str]:
    """``(backend, where it was read)``, without importing Keras: ``KERAS_BACKEND``, keras.json or the default."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"], "KERAS_BACKEND"
    path = _keras_json()
    try:
        with open(path) as f:
            name = json.load(f).get("backend")
        if name:
            return str(name), path
    except (OSError, ValueError, AttributeError):
        pass
    return "tensorflow", "default"


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None  # None: its import is blocked
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def select_backend() -> str:
    """The backend Keras will get, chosen before its first import (see the module text): PyTorch where TensorFlow
    is the backend only by default or keras.json, and is not installed while torch is."""
    if "keras" in sys.modules:
        return keras_backend()
    name, source = configured_backend()
    if name == "tensorflow" and source != "KERAS_BACKEND" and not _installed("tensorflow") and _installed("torch"):
        os.environ["KERAS_BACKEND"] = name = "torch"
    return name


def keras_backend() -> str:
    """The backend Keras runs on in this process (Keras' own answer once it is imported)."""
    if "keras" in sys.modules:
        import keras

        return keras.backend.backend()
    return configured_backend()[0]


def check_backend() -> str:
    """The backend, or :class:`BackendError` in one line when featx cannot run Keras on it here."""
    name, source = configured_backend()
    if "keras" in sys.modules:
        name = keras_backend()
    where = "KERAS_BACKEND" if source == "KERAS_BACKEND" else f"the backend in {source}"
    if name not in SUPPORTED:
        raise BackendError(f"{where} is {name!r}; featx runs Keras on {' or '.join(SUPPORTED)}: "
                           f"set KERAS_BACKEND=torch or KERAS_BACKEND=tensorflow")
    if not _installed(name):  # each supported backend's module has its name
        other = next(b for b in SUPPORTED if b != name)
        extra = "cpu" if name == "tensorflow" else "torch"
        raise BackendError(f"{where} is {name!r} but {name} is not installed: pip install 'featx[{extra}]'"
                           f"{f', or set KERAS_BACKEND={other}' if _installed(other) else ''}")
    return name


def gpu_count() -> int:
    """GPUs the backend can compute on (0 under ``--device cpu``, which sets ``CUDA_VISIBLE_DEVICES=-1``)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "-1":
        return 0
    if keras_backend() == "torch":
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        import tensorflow as tf
    except ImportError:
        return 0
    return len(tf.config.list_physical_devices("GPU"))


def set_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed``: Python's, numpy's, Keras' and the backend's generators.

    Keras also seeds TensorFlow wherever it can import it, whatever its backend: on PyTorch that import
    (seconds) is kept out, since TensorFlow then computes nothing.
    """
    import keras

    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(int(seed))
        return
    sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError: Keras skips it
    try:
        keras.utils.set_random_seed(int(seed))
    finally:
        del sys.modules["tensorflow"]


def enable_determinism() -> None:
    """The backend's deterministic kernels (``--deterministic``): the same seed then gives the same numbers."""
    if keras_backend() == "torch":
        import torch

        # cuBLAS needs a fixed workspace for deterministic matrix products on CUDA (PyTorch raises otherwise).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        return
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def has_strategy() -> bool:
    """A TensorFlow distribution strategy is in scope (never on PyTorch)."""
    if keras_backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy()


def training_strategy(n_gpus: int, report=None):
    """The scope a fine-tune builds its model in: TensorFlow's ``MirroredStrategy`` over ``n_gpus`` > 1 GPUs.

    Keras on PyTorch trains on one GPU: with several visible, ``report`` gets one line saying so (and how to
    use them all) and the run goes on on ``cuda:0``.
    """
    if keras_backend() == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy() if n_gpus > 1 else tf.distribute.get_strategy()
        return strategy.scope()
    if n_gpus > 1 and report is not None:
        report(f"{n_gpus} GPUs visible: Keras on PyTorch fine-tunes on one (cuda:0); for all {n_gpus} "
               f"(MirroredStrategy) run with KERAS_BACKEND=tensorflow and featx[gpu]")
    return contextlib.nullcontext()
