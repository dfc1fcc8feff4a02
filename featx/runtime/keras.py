"""The Keras/TensorFlow runner: exactly ``extractor.transform``."""
from __future__ import annotations

import numpy as np

from featx.errors import RuntimeUnavailable


class KerasRunner:
    runtime = "keras"
    model_threads = None  # TensorFlow's own pools: as many threads as cores

    def __init__(self, extractor, precision: str = "fp32"):
        if precision == "int8":
            raise RuntimeUnavailable("--precision int8 runs on the openvino runtime (NNCF quantization); "
                                     "use --runtime openvino (or auto on a CPU)")
        self.extractor = extractor

    def __call__(self, images) -> np.ndarray:
        return np.asarray(self.extractor.transform(images), dtype=np.float32)
