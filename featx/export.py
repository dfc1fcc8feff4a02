"""``featx export``: a saved model as one model file, uint8 RGB image in, class probabilities out.

The sweep's saved model (``best.joblib``: backbone(s) + head, its standardization, PCA and L2 steps
folded into Dense layers) or a fine-tuned folder becomes one Keras graph, with the backbone's
preprocessing inside it, as TF Hub's ``make_image_classifier`` hands out one SavedModel. The
backbone and head of one member are :func:`featx.finetune.build_finetune_model`'s model; an ensemble
is one multi-branch graph, one branch per member, whose output is the weighted mean of the members'
probabilities. Features no network computes (HoG, SIFT) cannot be part of a graph: such a model is
refused, naming the rows that can be exported.

The folder written holds the model (``model.xml`` + ``model.bin``, ``model.onnx`` or ``model.keras``),
``labels.txt`` (one class a line, in output order) and ``export.json`` (inputs and their sizes, the
resize featx uses, the labels, the clip eps featx predict writes probabilities with). Images are
resized outside the graph, to each input's size (featx resizes with area interpolation, ``cv2.INTER_AREA``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from featx.errors import UserError

__all__ = ["FORMATS", "MODEL_FILES", "EXPORT_INFO_FILE", "LABELS_FILE", "ExportError", "ExportResult",
           "export_model", "default_output"]

FORMATS = ("openvino", "onnx", "keras")
MODEL_FILES = {"openvino": "model.xml", "onnx": "model.onnx", "keras": "model.keras"}
EXPORT_INFO_FILE, LABELS_FILE = "export.json", "labels.txt"
#: Heads that are Dense layers once their preprocessing is folded in (an RBF SVM is not).
GRAPH_HEADS = ("logreg", "linsvm", "dense")
OUTPUT_NAME = "probabilities"


class ExportError(UserError, ValueError):
    """The model cannot be exported as asked; the message says why and what can be."""


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_model` wrote: ``path`` (the model file), its ``format``, the ``inputs`` (name and
    ``[height, width]`` each), ``label_names`` and a one-line ``source``."""

    path: Path
    format: str
    inputs: list
    label_names: list
    source: str


def default_output(source: str | os.PathLike) -> Path:
    """``experiments/NAME-export`` for ``experiments/NAME`` (or its best.joblib), ``experiments/NAME-finetune-export``
    for its ``finetune/`` folder: beside the experiment, since a re-sweep replaces the experiment folder."""
    source = Path(source)
    if source.is_file():
        source = source.parent
    if _is_finetune_folder(source):
        return source.parent.with_name(f"{source.parent.name}-{source.name}-export")
    return source.with_name(f"{source.name}-export")


def _is_finetune_folder(folder: Path) -> bool:
    from featx.predict import FINETUNE_INFO_FILE, FINETUNE_MODEL_FILE

    return (folder / FINETUNE_INFO_FILE).is_file() and (folder / FINETUNE_MODEL_FILE).exists()


def export_model(source: str | os.PathLike, output: str | os.PathLike | None = None,
                 format: str = "openvino") -> ExportResult:
    """Write ``source``'s model as one graph from uint8 RGB images to class probabilities.

    Parameters
    ----------
    source : path
        An experiment folder of ``featx sweep`` (or its ``best.joblib``), or a ``finetune/`` folder.
    output : path, optional
        The folder to write (replaced whole if it is an earlier export); default :func:`default_output`.
    format : {"openvino", "onnx", "keras"}
        ``openvino``: ``model.xml`` + ``model.bin`` (fp32); ``onnx``: ``model.onnx`` (needs ``onnx``, and
        ``tf2onnx`` on TensorFlow); ``keras``: ``model.keras`` (loads where featx is installed: it uses featx's layers).

    Raises
    ------
    ExportError
        An unknown format, an ONNX exporter that is not installed, a model with features no network
        computes (the message names the rows that can be exported), an output folder that is not an export.
    """
    from featx.predict import FineTunedModel, SweepModel, load_model

    if format not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}; got {format!r}")
    if format == "onnx":
        from featx.backend import keras_backend

        # Keras' ONNX exporter: tf2onnx on TensorFlow, torch.onnx (which writes with onnx) on PyTorch.
        needs = ("tf2onnx", "onnx") if keras_backend() == "tensorflow" else ("onnx",)
        missing = [name for name in needs if importlib.util.find_spec(name) is None]
        if missing:
            raise ExportError(f"--format onnx needs {' and '.join(missing)} (Keras' ONNX exporter), not installed "
                              f"here: pip install {' '.join(missing)} (or use --format openvino)")
    source = Path(source)
    loaded = load_model(source, compiled=False)  # the fitted scikit-learn head: its layers are built from it
    if isinstance(loaded, SweepModel):
        _check_exportable(loaded)
    output = Path(output) if output is not None else default_output(source)
    _check_output(output, source)
    keras_model, inputs = (_finetuned_graph if isinstance(loaded, FineTunedModel) else _sweep_graph)(loaded)
    describe = f"{loaded.describe()} from {loaded.path}"
    info = {"format": format, "model": MODEL_FILES[format], "source": describe,
            "inputs": [{"name": name, "size": list(size), "dtype": "uint8", "layout": "NHWC", "channels": "RGB"}
                       for name, size in inputs],
            "output": {"name": OUTPUT_NAME, "columns": list(loaded.label_names)},
            "label_names": list(loaded.label_names), "resize": "area (cv2.INTER_AREA), no crop",
            "clip": float(loaded.clip),
            # OpenVINO's CPU plugin computes in bf16 by default where the CPU has it: featx's numbers need f32.
            "openvino_config": {"INFERENCE_PRECISION_HINT": "f32"}}
    _write(keras_model, output, format, info)
    return ExportResult(output / MODEL_FILES[format], format, [[name, list(size)] for name, size in inputs],
                        list(loaded.label_names), describe)


def _check_output(output: Path, source: Path) -> None:
    if output.resolve() == source.resolve() or output.resolve() in source.resolve().parents:
        raise ExportError(f"-o {output} would replace the model it exports; choose another folder")
    if output.exists() and (not output.is_dir() or (any(output.iterdir())
                                                    and not (output / EXPORT_INFO_FILE).is_file())):
        raise ExportError(f"-o {output} exists and is not a featx export folder (no {EXPORT_INFO_FILE}); "
                          f"choose a new folder")


def _write(keras_model, output: Path, format: str, info: dict) -> None:
    from featx.storage import stage_folder

    output.parent.mkdir(parents=True, exist_ok=True)
    with stage_folder(output, what=f"{output} (featx export)") as build:
        model_file = Path(build) / MODEL_FILES[format]
        if format == "openvino":
            from featx.runtime import ir

            ov_model = ir.to_openvino(keras_model, input_names=[item["name"] for item in info["inputs"]])
            ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
            ov_model.set_rt_info(json.dumps(info["label_names"]), ["featx", "label_names"])
            import openvino as ov

            ov.save_model(ov_model, str(model_file), compress_to_fp16=False)
        elif format == "onnx":
            import keras

            if keras.backend.backend() == "torch":  # its exporter traces a model that has been called once
                zeros = [np.zeros((1, *tensor.shape[1:]), dtype=str(tensor.dtype)) for tensor in keras_model.inputs]
                keras_model(zeros if isinstance(keras_model.input, list) else zeros[0], training=False)
            import warnings

            with warnings.catch_warnings():  # the torch exporter's tracing notes: about Keras' code, not the user's
                if keras.backend.backend() == "torch":
                    import torch

                    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                    warnings.filterwarnings("ignore", module=r"torch\.onnx")
                keras_model.export(str(model_file), format="onnx", verbose=False)
        else:
            keras_model.save(str(model_file))
        (Path(build) / LABELS_FILE).write_text("".join(f"{name}\n" for name in info["label_names"]),
                                               encoding="utf-8")
        (Path(build) / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


# -- what can go into a graph ------------------------------------------------------------------------------------
def _extractor_name(feature: str) -> str:
    """``keras:mobilenet_v2`` for ``keras:mobilenet_v2:out_relu:avg``, ``hog`` for ``hog:...``."""
    parts = feature.split(":")
    return ":".join(parts[:2]) if parts[0] == "keras" else parts[0]


def _is_network(extractor_name: str) -> bool:
    """A CNN (its family registers a BackboneConfig), not HoG or SIFT; ``keras:*`` names all are."""
    from featx.extractors import list_extractors

    if extractor_name.startswith("keras:"):
        return True
    return any(info.name == extractor_name and info.config is not None for info in list_extractors())


def _row_problem(row: dict, rows: dict) -> str | None:
    """Why a results row cannot be one graph (None when it can)."""
    if row["head"] == "ensemble":
        try:
            members = [int(m["config"]) for m in json.loads(row["params"])["members"]]
        except (ValueError, KeyError, TypeError):
            return "an ensemble whose members are not recorded"
        bad = [m for m in members if m not in rows or _row_problem(rows[m], rows)]
        return f"members {', '.join(map(str, bad))} cannot be layers" if bad else None
    if row["head"] not in GRAPH_HEADS:
        return f"an {row['head']} head (only {', '.join(GRAPH_HEADS)} heads are layers)"
    classical = [f for f in str(row["features"]).split("+") if not _is_network(_extractor_name(f))]
    if classical:
        return f"{'+'.join(classical)} features, which no network computes"
    return None


def _check_exportable(model) -> None:
    """Refuse a saved sweep model that cannot be one graph, in one line naming the rows that can."""
    from featx.artifacts.results import SweepSummary

    bundle = model.bundle
    names = [entry["spec"]["name"] for entry in bundle.extractors]
    heads = _member_heads(bundle)
    classical = [name for name in names if not _is_network(name)]
    not_layers = [head for head in heads if head not in GRAPH_HEADS]
    if not classical and not not_layers:
        return
    why = (f"features of {', '.join(dict.fromkeys(classical))}, which no network computes" if classical else
           f"an {not_layers[0]} head (only {', '.join(GRAPH_HEADS)} heads are layers)")
    folder = model.path.parent if model.path is not None else Path(".")
    try:
        summary = SweepSummary.read(folder / "results.json")
        rows = {int(row["config"]): row for row in summary.rows}
        fine = [f"{c} ({row['head']} on {row['features']})" for c, row in sorted(rows.items())
                if _row_problem(row, rows) is None]
    except UserError:
        fine = []
    can = (f"rows that can be exported: config {', '.join(fine)}; sweep their caches alone (featx sweep CACHE "
           f"--heads {','.join(GRAPH_HEADS)}) and export that experiment" if fine
           else "no row of this sweep can be exported; sweep CNN caches with logreg, linsvm or dense heads")
    config = f"config {bundle.config} " if getattr(bundle, "config", None) is not None else ""
    raise ExportError(f"{model.path}: the saved model ({config}{bundle.head}) uses {why}, so it cannot be one "
                      f"graph; {can}")


def _member_heads(bundle) -> list[str]:
    if bundle.head == "ensemble" and bundle.members:
        return [str(member.get("head", "")) for member in bundle.members]
    return [bundle.head]


# -- the graphs ---------------------------------------------------------------------------------------------------
def _uint8_inputs(sizes: Sequence[tuple[int, int]]):
    """One uint8 input per distinct size (``image``, or ``image_HxW`` when there are several) and, per input,
    its float32 cast (``Rescaling(1)`` casts to float and scales by 1: exact)."""
    import keras

    distinct = list(dict.fromkeys(tuple(size) for size in sizes))
    named = {size: "image" if len(distinct) == 1 else f"image_{size[0]}x{size[1]}" for size in distinct}
    inputs = {size: keras.Input((*size, 3), dtype="uint8", name=named[size]) for size in distinct}
    as_float = {size: keras.layers.Rescaling(1.0, name=f"{named[size]}_float")(tensor)
                for size, tensor in inputs.items()}
    return inputs, as_float, [(named[size], size) for size in distinct]


def _finetuned_graph(model):
    """A fine-tuned folder's Keras model behind a uint8 input; one sigmoid column becomes two (1 - p, p)."""
    import keras

    size = tuple(int(side) for side in model.preprocessing["size"])
    inputs, as_float, names = _uint8_inputs([size])
    x = model.keras_model(as_float[size])
    if x.shape[-1] == 1 and len(model.label_names) == 2:
        x = keras.layers.Concatenate(name=OUTPUT_NAME)([keras.layers.Rescaling(-1.0, offset=1.0)(x), x])
    return keras.Model(list(inputs.values()), x, name="featx_export"), names


def _sweep_graph(model):
    """One branch per member of the saved sweep model: its backbone(s) and head, from the images of its size."""
    import keras

    from featx.finetune import BaseHead, build_finetune_model, make_extractor

    bundle = model.bundle
    extractors = []
    for entry in bundle.extractors:
        spec = entry["spec"]
        if spec.get("params", {}).get("weights") is None:
            raise ExportError(f"{spec['name']} was built with weights=None (random, for tests): the features of "
                              f"the sweep cannot be computed again; make the caches with weights=imagenet or "
                              f"weights=PATH")
        if spec.get("params", {}).get("tta", "none") != "none":
            raise ExportError(f"{spec['name']} features were made with tta={spec['params']['tta']} (the mean of each "
                              f"image's and its mirror's), which an export does not build into the graph; sweep a "
                              f"cache made without --opt tta and export that")
        extractors.append(make_extractor(spec, precision="fp32"))
    members = _members(bundle)
    branches = []
    for pipeline, weight, blocks in members:
        if len(blocks) == 1:
            extractor, spec = extractors[blocks[0]], bundle.extractors[blocks[0]]["spec"]
        else:
            extractor = _Concatenated([extractors[b] for b in blocks])
            spec = {"name": extractor.name}
        base = BaseHead(model=pipeline, extractor_spec=spec, cache_path=str(bundle.extractors[blocks[0]]["cache"]),
                        label_names=list(bundle.label_names), row={}, seed=int(bundle.seed))
        branches.append((build_finetune_model(base, extractor), weight, tuple(extractor.preprocessing["size"])))
    inputs, as_float, names = _uint8_inputs([size for _, _, size in branches])
    outputs = []
    for index, (branch, weight, size) in enumerate(branches):
        branch.name = f"member_{index}"  # unique layer names in the whole graph
        probabilities = branch(as_float[size])
        outputs.append(probabilities if len(branches) == 1 else
                       keras.layers.Rescaling(float(weight), name=f"member_{index}_weight")(probabilities))
    x = outputs[0] if len(outputs) == 1 else keras.layers.Add(name=OUTPUT_NAME)(outputs)
    return keras.Model(list(inputs.values()), x, name="featx_export"), names


def _members(bundle) -> list[tuple[Any, float, list[int]]]:
    """``(fitted pipeline, weight, feature blocks it reads)`` per member; one member for a single head."""
    from featx.heads import WeightedEnsemble

    bounds = np.cumsum([0, *bundle.dims])
    if not isinstance(bundle.model, WeightedEnsemble):
        return [(bundle.model, 1.0, list(range(len(bundle.dims))))]
    members = []
    for estimator, columns, weight in zip(bundle.model.estimators_, bundle.model.columns, bundle.model.weights_):
        columns = np.asarray(columns)
        blocks = [b for b in range(len(bundle.dims)) if np.isin(np.arange(bounds[b], bounds[b + 1]), columns).all()]
        expected = np.concatenate([np.arange(bounds[b], bounds[b + 1]) for b in blocks]) if blocks else []
        if not np.array_equal(columns, expected):
            raise ExportError("an ensemble member reads part of a cache's features; it cannot be one branch "
                              "(a best.joblib written by featx sweep never does this: sweep again)")
        members.append((estimator, float(weight), blocks))
    return members


class _Concatenated:
    """Several CNN extractors on one image, their features side by side, seen as one extractor by
    :func:`featx.finetune.build_finetune_model` (a member swept on ``a.h5+b.h5``). Each keeps its own
    preprocessing inside ``model``, which takes the image's float pixels (``preprocess`` is the identity)."""

    precision = "fp32"

    def __init__(self, extractors) -> None:
        import keras

        from featx.finetune import preprocessing_layer

        sizes = {tuple(e.preprocessing["size"]) for e in extractors}
        self.name = "+".join(e.name for e in extractors)
        if len(sizes) != 1:
            raise ExportError(f"a member concatenates {self.name} features of images of different sizes "
                              f"({', '.join(f'{h}x{w}' for h, w in sorted(sizes))}); one branch takes one image size")
        self.preprocessing = dict(extractors[0].preprocessing)
        image = keras.Input((*self.preprocessing["size"], 3), name="pixels")
        parts = []
        for index, extractor in enumerate(extractors):
            cut = keras.Model(extractor.model.inputs[0], extractor.model.outputs[0], name=f"block_{index}")
            parts.append(cut(preprocessing_layer(extractor, name=f"preprocess_{index}")(image)))
        self.model = keras.Model(image, keras.layers.Concatenate()(parts), name="concatenated")

    @staticmethod
    def preprocess(batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, dtype=np.float32)
