"""What this machine computes on: a GPU TensorFlow sees, a CPU with native bf16."""
from __future__ import annotations

import os
from pathlib import Path


def has_gpu() -> bool:
    """TensorFlow sees a GPU (``--device cpu`` hides them through ``CUDA_VISIBLE_DEVICES=-1``)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "-1":
        return False
    try:
        import tensorflow as tf
        return bool(tf.config.list_physical_devices("GPU"))
    except ImportError:  # pragma: no cover - TensorFlow is a dependency of every install
        return False


def cpu_has_bf16() -> bool:
    """The CPU computes bf16 natively (avx512_bf16 or AMX); elsewhere bf16 is emulated or ignored."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
