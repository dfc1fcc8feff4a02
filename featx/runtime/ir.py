"""Whole Keras models (pixels in, class probabilities out) as OpenVINO IR.

Two users: ``featx predict`` with a fine-tuned folder, which runs its ``model.keras`` on OpenVINO
without importing TensorFlow once the IR exists, and ``featx export``. A fine-tuned model's IR is
kept beside the extractors' IRs, in ``weights_home()/openvino/<stem>-<sha256 of the .keras
file>/model.xml`` (:func:`keras_file_ir`): ``featx finetune`` writes it when it saves the model, or
the first prediction that needs it does. A rewritten ``model.keras`` has another hash, so its IR
can never be a stale one.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

__all__ = ["keras_file_ir", "to_openvino", "save_ir", "write_keras_file_ir", "compile_ir"]


def keras_file_ir(keras_file: str | Path) -> Path:
    """Where the IR of the Keras model saved in ``keras_file`` is kept (``model.xml``; it may not exist)."""
    from featx.weights import sha256_file, weights_home

    keras_file = Path(keras_file)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", keras_file.parent.name or keras_file.stem)
    return Path(weights_home()) / "openvino" / f"{stem}-{sha256_file(keras_file)[:16]}" / "model.xml"


def to_openvino(keras_model, uint8_input: bool = False, input_names=None):
    """``keras_model`` converted to an ``openvino.Model`` (fp32 weights).

    ``uint8_input``: every input takes uint8 pixels, converted to float inside the graph (what
    ``featx export`` hands out). ``input_names``: one name per input, in order.
    """
    from featx.runtime.openvino import _require_openvino, convert_keras

    ov = _require_openvino()
    model = convert_keras(keras_model, inference=True)
    if input_names:
        for port, name in zip(model.inputs, input_names):
            port.get_tensor().set_names({name})
    if uint8_input:
        from openvino.preprocess import PrePostProcessor

        steps = PrePostProcessor(model)
        for index in range(len(model.inputs)):
            steps.input(index).tensor().set_element_type(ov.Type.u8)
            steps.input(index).preprocess().convert_element_type(ov.Type.f32)
        model = steps.build()
    return model


def save_ir(ov_model, xml: str | Path) -> Path:
    """Write ``ov_model`` as ``xml`` (and its ``.bin``) in a folder published whole: a reader never sees half."""
    from featx.runtime.openvino import _require_openvino
    from featx.storage import stage_folder

    ov = _require_openvino()
    xml = Path(xml)
    xml.parent.parent.mkdir(parents=True, exist_ok=True)
    with stage_folder(xml.parent) as build:
        ov.save_model(ov_model, str(Path(build) / xml.name), compress_to_fp16=False)
    return xml


def write_keras_file_ir(keras_file: str | Path, keras_model) -> Path:
    """The IR of ``keras_file`` (:func:`keras_file_ir`), converted from ``keras_model`` (the model that file
    holds) unless it exists already."""
    xml = keras_file_ir(keras_file)
    if not xml.exists():
        save_ir(to_openvino(keras_model), xml)
    return xml


def compile_ir(model):
    """``run(batch) -> np.ndarray`` for an IR file or an ``openvino.Model`` on the CPU (one input, first output)."""
    from featx.runtime.openvino import _core, _require_openvino

    ov = _require_openvino()
    core = _core(ov)
    if isinstance(model, (str, Path)):
        model = core.read_model(str(model))
    compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(request.get_output_tensor(0).data, dtype=np.float64)

    return run
