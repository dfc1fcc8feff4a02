"""The Keras/TensorFlow runner: exactly ``extractor.transform``."""
from __future__ import annotations

import numpy as np


class KerasRunner:
    runtime = "keras"

    def __init__(self, extractor):
        self.extractor = extractor

    def __call__(self, images) -> np.ndarray:
        return np.asarray(self.extractor.transform(images), dtype=np.float32)
