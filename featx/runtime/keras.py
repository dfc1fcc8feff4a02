"""The Keras/TensorFlow runner: exactly ``extractor.transform``."""
from __future__ import annotations

import numpy as np

from featx.errors import RuntimeUnavailable
from featx.runtime import hardware


class KerasRunner:
    runtime = "keras"
    model_threads = None  # TensorFlow's own pools: as many threads as cores

    def __init__(self, extractor, precision: str = "fp32"):
        if precision == "int8":
            raise RuntimeUnavailable("--precision int8 runs on the openvino runtime (NNCF quantization); "
                                     "use --runtime openvino (or auto on a CPU)")
        if precision == "bf16" and not hardware.cpu_has_bf16() and not hardware.has_gpu():
            import warnings
            warnings.warn("--precision bf16: this CPU has no avx512_bf16 or AMX; TensorFlow emulates bf16 "
                          "(features rounded to bf16, slower than fp32)", stacklevel=2)
        self.extractor = extractor
        getattr(extractor, "model", None)  # built (weights loaded) now, as OpenVINO's: a bad file fails here

    def __call__(self, images) -> np.ndarray:
        return np.asarray(self.extractor.transform(images), dtype=np.float32)
