"""featx: transfer learning for image classification from cached features."""

__version__ = "0.1.0"

import os as _os

from featx.backend import select_backend as _select_backend

_select_backend()  # before Keras' first import: PyTorch where TensorFlow is only the default and is absent

if _os.environ.get("FEATX_QUIET_TF") == "1":  # a worker process of the command line (featx/quiet.py)
    from featx.quiet import quiet_tensorflow_in_worker

    quiet_tensorflow_in_worker()
