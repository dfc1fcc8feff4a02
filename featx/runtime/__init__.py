"""Inference runtimes for feature extraction: ``keras`` and ``openvino``.

``make_runner(extractor, runtime="auto", precision="fp32")`` returns a callable
``runner(images) -> features`` (float32, one row per image). ``auto`` = OpenVINO on a CPU,
Keras on a GPU (and Keras for fp16, which OpenVINO's CPU plugin does not run, and for bf16 on a
CPU without avx512_bf16/AMX, where OpenVINO computes fp32). Training always
stays in Keras; only inference changes.
"""
from __future__ import annotations

from featx.errors import RuntimeUnavailable
from featx.runtime import hardware

__all__ = ["RUNTIMES", "RuntimeUnavailable", "make_runner", "resolve_runtime"]

RUNTIMES = ("auto", "keras", "openvino")


def _convertible(extractor) -> bool:
    """Has a Keras model to convert (checked without building it: ``model`` is a lazy property)."""
    if getattr(extractor, "parallel", "model") != "model":
        return False
    kind = type(extractor)
    return callable(getattr(kind, "fp32_model", None)) or hasattr(kind, "model") or "model" in vars(extractor)


def resolve_runtime(runtime: str, extractor=None, precision: str = "fp32") -> str:
    """``keras`` or ``openvino`` for ``runtime`` (one of :data:`RUNTIMES`).

    ``auto`` gives ``openvino`` when openvino imports, there is no GPU, and the extractor has a Keras
    model (``fp32_model()`` or ``model``) in a precision OpenVINO runs; an extractor without one
    (HoG, SIFT, a stand-in) gets ``keras``, i.e. its own ``transform``. ``--precision int8`` needs
    OpenVINO, so ``auto`` then picks it even beside a GPU.
    """
    if runtime not in RUNTIMES:
        raise RuntimeUnavailable(f"--runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if runtime == "openvino":
        from featx.runtime.openvino import _require_openvino

        _require_openvino()  # before anything is written
    if runtime != "auto":
        return runtime
    if extractor is not None and not _convertible(extractor):
        return "keras"
    if precision == "fp16" or (precision != "int8" and hardware.has_gpu()):
        return "keras"
    if precision == "bf16" and not hardware.cpu_has_bf16():
        return "keras"  # OpenVINO would compute fp32 here; Keras emulates bf16
    try:
        import openvino  # noqa: F401
    except ImportError:
        if precision == "int8":
            raise RuntimeUnavailable("--precision int8 runs on OpenVINO, which is not installed; "
                                     "pip install 'openvino>=2024.0' 'nncf>=2.10'") from None
        return "keras"
    return "openvino"


def make_runner(extractor, runtime: str = "auto", precision: str = "fp32", calibration=None, **options):
    """A ``runner(images) -> np.ndarray`` for ``extractor``; ``runner.runtime`` names what ran.

    ``calibration`` (``featx.runtime.openvino.calibration_set``) is needed for ``int8`` only.
    """
    chosen = resolve_runtime(runtime, extractor, precision)
    if chosen == "keras":
        from featx.runtime.keras import KerasRunner
        return KerasRunner(extractor, precision)
    from featx.runtime.openvino import OpenVinoRunner
    return OpenVinoRunner(extractor, precision=precision, calibration=calibration, **options)
