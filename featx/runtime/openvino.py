"""OpenVINO runner: the cut Keras model converted once to IR, kept in the featx weights folder.

The IR is keyed by extractor spec hash + weights fingerprint + precision, so a changed spec or
weights file never reuses a stale IR. Preprocessing stays in numpy (``extractor.preprocess``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from featx.errors import RuntimeUnavailable


def _require_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise RuntimeUnavailable("--runtime openvino: openvino is not installed; "
                                 "pip install 'openvino>=2024.0' (or use --runtime keras)") from None
    return ov


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def ir_key(extractor, precision: str) -> str:
    blob = json.dumps({"spec": extractor.spec, "weights": extractor.weights_fingerprint(),
                       "precision": precision}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ir_folder(extractor, precision: str) -> Path:
    from featx.weights import weights_home
    name = str(extractor.spec.get("name", "model")) if isinstance(extractor.spec, dict) else "model"
    return Path(weights_home()) / "openvino" / f"{name}-{ir_key(extractor, precision)}"


class OpenVinoRunner:
    runtime = "openvino"

    def __init__(self, extractor, precision: str = "fp32", streams: int | None = None):
        ov = _require_openvino()
        if precision not in ("fp32", "bf16"):  # int8 (NNCF) is not built yet: never silently run fp32
            raise RuntimeUnavailable(f"--precision {precision!r}: the openvino runtime supports fp32 and bf16")
        if precision == "bf16" and not cpu_has_bf16():
            import warnings
            warnings.warn("this CPU has no avx512_bf16/AMX: OpenVINO bf16 runs emulated (slow)")
        self.extractor, self.precision = extractor, precision
        self.converted = False
        core = ov.Core()
        xml = ir_folder(extractor, "fp32") / "model.xml"
        if not xml.exists():
            self._convert(ov, xml)
        model = core.read_model(str(xml))
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "THROUGHPUT"}
        if streams:
            config["NUM_STREAMS"] = str(streams)
        self.compiled = core.compile_model(model, "CPU", config)

    def _convert(self, ov, xml: Path) -> None:
        from featx.storage import stage_folder
        model = self.extractor.model
        ov_model = ov.convert_model(model)
        folder = xml.parent
        folder.parent.mkdir(parents=True, exist_ok=True)
        with stage_folder(folder) as build:
            ov.save_model(ov_model, str(Path(build) / "model.xml"), compress_to_fp16=False)
        self.converted = True

    def __call__(self, images) -> np.ndarray:
        # As KerasExtractor.transform does: one float32 array, then the backbone's own preprocessing.
        batch = np.stack(images) if not isinstance(images, np.ndarray) else images
        batch = self.extractor.preprocess(batch.astype(np.float32))
        out = self.compiled(np.ascontiguousarray(batch, dtype=np.float32))[0]
        out = np.asarray(out, dtype=np.float32)
        return out.reshape(len(out), -1)
