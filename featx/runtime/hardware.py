"""What this machine computes on: a GPU the Keras backend sees, a CPU with native bf16."""
from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

# Device nodes a GPU TensorFlow or PyTorch can use leaves on Linux: NVIDIA (CUDA), AMD (ROCm), WSL2's GPU.
_LINUX_GPU_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")


def has_gpu() -> bool:
    """The Keras backend (TensorFlow or PyTorch) sees a GPU (``--device cpu`` hides them through
    ``CUDA_VISIBLE_DEVICES=-1``).

    On Linux without a GPU device node the answer is no without importing the backend (seconds), so
    that a CPU-only ``featx predict`` on the OpenVINO runtime never loads it.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "-1":
        return False
    if sys.platform.startswith("linux") and not any(glob.glob(pattern) for pattern in _LINUX_GPU_NODES):
        return False
    from featx.backend import gpu_count

    return gpu_count() > 0


def cpu_has_bf16() -> bool:
    """The CPU computes bf16 natively (avx512_bf16 or AMX); elsewhere bf16 is emulated or ignored."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
