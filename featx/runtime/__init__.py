"""Inference runtimes for feature extraction: ``keras`` (today's path) and ``openvino``.

``make_runner(extractor, runtime="auto", precision="fp32")`` returns a callable
``runner(images) -> features`` (float32, one row per image). ``auto`` = OpenVINO on a CPU,
Keras on a GPU. Training always stays in Keras; only inference changes.
"""
from __future__ import annotations

from featx.errors import RuntimeUnavailable  # noqa: F401  (re-exported)

RUNTIMES = ("auto", "keras", "openvino")



def _has_gpu() -> bool:
    try:
        import tensorflow as tf
        return bool(tf.config.list_physical_devices("GPU"))
    except Exception:  # pragma: no cover - no TF
        return False


def resolve_runtime(runtime: str, extractor=None) -> str:
    if runtime not in RUNTIMES:
        raise RuntimeUnavailable(f"--runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        if extractor is not None and getattr(extractor, "model", None) is None:
            return "keras"
        if _has_gpu():
            return "keras"
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "keras"
        return "openvino"
    return runtime


def make_runner(extractor, runtime: str = "auto", precision: str = "fp32", **options):
    """A ``runner(images) -> np.ndarray`` for ``extractor``; ``runner.runtime`` names what ran."""
    chosen = resolve_runtime(runtime, extractor)
    if chosen == "keras":
        from featx.runtime.keras import KerasRunner
        return KerasRunner(extractor)
    from featx.runtime.openvino import OpenVinoRunner
    return OpenVinoRunner(extractor, precision=precision, **options)
