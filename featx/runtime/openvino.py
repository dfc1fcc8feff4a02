"""OpenVINO runner: the cut Keras model converted once to IR, kept in the featx weights folder.

The fp32 IR is ``weights_home()/openvino/<name>-<key>/model.xml``, its int8 quantization
``<name>-<key>-int8-<calibration>/model.xml`` beside it (the keys: :func:`ir_key`,
:func:`calibration_set`; more in ``docs/models.md``). Conversion, quantization and compilation
each happen once per process; :data:`CONVERSIONS` counts the first two, so tests can tell a
reuse from a rebuild. Preprocessing stays in numpy (``extractor.preprocess``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx.errors import RuntimeUnavailable
from featx.runtime import hardware

__all__ = ["OpenVinoRunner", "Calibration", "calibration_set", "ir_folder", "ir_key", "convert_keras", "PRECISIONS",
           "CONVERSIONS"]

PRECISIONS = ("fp32", "bf16", "int8")
#: ``{"convert": n, "quantize": n}`` done by this process.
CONVERSIONS: Counter = Counter()
_COMPILED: dict[tuple, object] = {}


def _require_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise RuntimeUnavailable("--runtime openvino: openvino is not installed; "
                                 "pip install 'openvino>=2024.0' (or use --runtime keras)") from None
    return ov


@functools.lru_cache(maxsize=1)
def _core(ov):
    return ov.Core()


def _fp32_spec(extractor) -> dict:
    spec = json.loads(json.dumps(extractor.spec(), sort_keys=True, default=str))
    if isinstance(spec.get("params"), dict) and "precision" in spec["params"]:
        spec["params"]["precision"] = "fp32"
    if isinstance(spec.get("params"), dict):
        spec["params"].pop("tta", None)  # the runner flips the images; the network (and its IR) is the same
    return spec


def convert_keras(keras_model, inference: bool = False):
    """``ov.convert_model`` of ``keras_model`` on the backend Keras runs on, batch size left open.

    TensorFlow: the Keras model itself, or (``inference``) a traced ``training=False`` call of it. PyTorch:
    the model exported by ``torch.export`` (OpenVINO's TorchScript path has no rule for ``aten::subtract``, which
    Keras' torch ops emit), its inputs then fixed to the Keras input shapes.
    """
    from featx.backend import keras_backend

    ov = _require_openvino()
    if keras_backend() == "torch":
        import warnings

        with warnings.catch_warnings():  # torch's own pytree deprecation, raised inside its export: not the user's
            warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
            model = ov.convert_model(_exported_program(keras_model))
        model.reshape({index: ov.PartialShape([-1, *tensor.shape[1:]])
                       for index, tensor in enumerate(keras_model.inputs)})
        return model
    return ov.convert_model(_inference_function(keras_model) if inference else keras_model)


def _exported_program(keras_model):
    """``keras_model`` called with ``training=False`` as a ``torch.export`` program with a dynamic batch size."""
    import torch

    inputs = list(keras_model.inputs)
    as_list = isinstance(keras_model.input, list)  # the structure the model was built with (no Keras warning)

    class Inference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.keras_model = keras_model

        def forward(self, *xs):
            return self.keras_model(list(xs) if as_list else xs[0], training=False)

    examples = tuple(torch.zeros((2, *tensor.shape[1:]), dtype=getattr(torch, str(tensor.dtype)))
                     for tensor in inputs)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad():
        return torch.export.export(Inference().eval(), examples, dynamic_shapes=(tuple({0: batch} for _ in inputs),))


def _inference_function(keras_model):
    """``keras_model`` called with ``training=False``, traced: Keras' random augmentation layers default to
    training mode when called without it (as a converter calls a model), and their random ops do not convert."""
    import tensorflow as tf

    specs = [tf.TensorSpec(tensor.shape, tensor.dtype) for tensor in keras_model.inputs]

    @tf.function(input_signature=specs)
    def infer(*inputs):
        return keras_model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    return infer.get_concrete_function()


def _keras_model(extractor):
    fp32_model = getattr(extractor, "fp32_model", None)
    return fp32_model() if callable(fp32_model) else extractor.model


def _weights_key(extractor) -> str:
    """The weights file's fingerprint; for random weights (no file) a hash of the values themselves,
    so two random initialisations never share an IR."""
    fingerprint = extractor.weights_fingerprint()
    if fingerprint:
        return fingerprint
    digest = hashlib.sha256()
    for array in _keras_model(extractor).get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return "values:" + digest.hexdigest()


def ir_key(extractor) -> str:
    """Hash of what the fp32 IR is made from: spec (at fp32) and weights fingerprint."""
    blob = json.dumps({"spec": _fp32_spec(extractor), "weights": _weights_key(extractor)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ir_folder(extractor) -> Path:
    """The fp32 IR's folder (``model.xml`` inside)."""
    from featx.weights import weights_home

    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(_fp32_spec(extractor).get("name", "model")))
    return Path(weights_home()) / "openvino" / f"{name}-{ir_key(extractor)}"


@dataclass(frozen=True)
class Calibration:
    """Images an int8 model is calibrated on: ``paths`` relative to ``root``, and their ``fingerprint``."""

    root: str
    paths: tuple[str, ...]
    fingerprint: str


def calibration_set(manifest, size: int = 300, seed: int = 0) -> Calibration:
    """A seeded sample of ``size`` train images of ``manifest`` (all its images when it has no train split).

    The fingerprint covers each image's relative path and sha1 and the seed, so another sample or
    an edited image makes another int8 IR.
    """
    from featx.images import file_sha1

    records = [r for r in manifest.records if r.split == "train"] or list(manifest.records)
    if not records:
        raise RuntimeUnavailable(f"--precision int8: {manifest.root} has no images to calibrate on")
    records = sorted(records, key=lambda r: r.path)
    if len(records) > size:
        rng = np.random.default_rng(seed)
        records = [records[i] for i in sorted(rng.choice(len(records), size=size, replace=False))]
    root = str(manifest.root)
    pairs = [[r.path, r.sha1 or file_sha1(Path(root) / r.path)] for r in records]
    blob = json.dumps({"images": pairs, "seed": int(seed)}, sort_keys=True)
    return Calibration(root, tuple(r.path for r in records), hashlib.sha256(blob.encode()).hexdigest()[:16])


class OpenVinoRunner:
    """``runner(images) -> features`` on OpenVINO's CPU plugin.

    Parameters
    ----------
    extractor : KerasExtractor
        Its ``fp32_model()`` (or ``model``) is converted; ``preprocess`` prepares batches.
    precision : {"fp32", "bf16", "int8"}
        fp32: the Keras features (within 1e-4·|f| + 1e-4·max|f|, tested). bf16: the same IR compiled
        with a bf16 inference hint. int8: NNCF post-training quantization, needs ``calibration``.
    calibration : Calibration, optional
        From :func:`calibration_set` (``build_cache`` passes the manifest's train split).
    streams : int, optional
        OpenVINO streams (default: what the THROUGHPUT hint chooses for this CPU).
    """

    runtime = "openvino"

    def __init__(self, extractor, precision: str = "fp32", calibration: Calibration | None = None,
                 streams: int | None = None):
        ov = _require_openvino()
        if precision not in PRECISIONS:
            raise RuntimeUnavailable(f"--precision {precision!r}: the openvino runtime runs "
                                     f"{', '.join(PRECISIONS)} (use --runtime keras for {precision})")
        if precision == "bf16" and not hardware.cpu_has_bf16():
            # OpenVINO's CPU plugin ignores the bf16 hint there and computes fp32: a "bf16" cache
            # would hold fp32 features under another spec.
            raise RuntimeUnavailable("--precision bf16: this CPU has no avx512_bf16 or AMX, where OpenVINO "
                                     "computes fp32 anyway; use --precision fp32 (or int8), or --runtime "
                                     "keras to emulate bf16 (slower than fp32)")
        if precision == "int8" and calibration is None:
            raise RuntimeUnavailable("--precision int8 needs calibration images (featx cache draws them "
                                     "from the train split)")
        self.extractor, self.precision, self.calibration = extractor, precision, calibration
        self.converted = False
        self.fp32_xml = self.xml = ir_folder(extractor) / "model.xml"
        if not self.fp32_xml.exists():
            self._publish(ov, convert_keras(_keras_model(extractor)), self.fp32_xml)
            CONVERSIONS["convert"] += 1
        if precision == "int8":
            folder = self.fp32_xml.parent
            self.xml = folder.with_name(f"{folder.name}-int8-{calibration.fingerprint}") / "model.xml"
            if not self.xml.exists():
                self._quantize(ov)
        key = (str(self.xml), precision, streams)
        if key not in _COMPILED:
            config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                      "PERFORMANCE_HINT": "THROUGHPUT"}
            if streams:
                config["NUM_STREAMS"] = str(streams)
            core = _core(ov)
            _COMPILED[key] = core.compile_model(core.read_model(str(self.xml)), "CPU", config)
        self.compiled = _COMPILED[key]
        self.n_requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.model_threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS") or 0) or None
        self._queue = ov.AsyncInferQueue(self.compiled, self.n_requests)
        self._queue.set_callback(self._collect)
        self._outputs: dict[int, np.ndarray] = {}

    def _publish(self, ov, ov_model, xml: Path) -> None:
        from featx.storage import stage_folder

        xml.parent.parent.mkdir(parents=True, exist_ok=True)
        with stage_folder(xml.parent) as build:
            ov.save_model(ov_model, str(Path(build) / xml.name), compress_to_fp16=False)
        self.converted = True

    def _quantize(self, ov) -> None:
        try:
            import nncf
        except ImportError:
            raise RuntimeUnavailable("--precision int8: nncf is not installed; pip install 'nncf>=2.10' "
                                     "(or use --precision fp32/bf16)") from None
        from featx.datasets import decode_group

        images, _, _ = decode_group(self.calibration.root, self.calibration.paths, self.extractor.preprocessing)
        if not len(images):
            raise RuntimeUnavailable(f"--precision int8: none of the {len(self.calibration.paths)} calibration "
                                     f"images under {self.calibration.root} could be read")
        inputs = [self._prepare(images[i:i + 1]) for i in range(len(images))]
        fp32 = _core(ov).read_model(str(self.fp32_xml))
        quantized = nncf.quantize(fp32, nncf.Dataset(inputs), subset_size=len(inputs),
                                  target_device=nncf.TargetDevice.CPU)
        self._publish(ov, quantized, self.xml)
        CONVERSIONS["quantize"] += 1

    def _prepare(self, images) -> np.ndarray:
        # As KerasExtractor.transform does: one float32 array, then the backbone's own preprocessing.
        batch = images if isinstance(images, np.ndarray) else np.stack(images)
        return np.ascontiguousarray(self.extractor.preprocess(batch.astype(np.float32)), dtype=np.float32)

    def _collect(self, request, index) -> None:
        self._outputs[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32)

    def __call__(self, images) -> np.ndarray:
        from featx.extractors.keras_base import with_tta

        batch = self._prepare(images)
        return with_tta(self._infer, batch, getattr(self.extractor, "tta", "none"))

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        # One slice per infer request, so every stream works on the batch.
        slices = np.array_split(np.arange(len(batch)), min(self.n_requests, len(batch)))
        self._outputs.clear()
        for index, rows in enumerate(slices):
            self._queue.start_async({0: batch[rows[0]:rows[-1] + 1]}, userdata=index, share_inputs=True)
        self._queue.wait_all()
        out = np.concatenate([self._outputs[i] for i in range(len(slices))])
        return out.reshape(len(out), -1)
