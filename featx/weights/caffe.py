"""Caffe's binary ``.caffemodel``: read, write, and convert to Keras weights of CaffeNet.

The CaffeNet architecture is :mod:`featx.backbones.caffenet`; this module imports it (never the
reverse) and resolves CaffeNet's ``weights=`` option. The protobuf wire format is read directly,
so neither Caffe nor ``protobuf`` is needed; only what weights need is decoded. The layout
conversion to Keras is described in ``docs/models.md``.

Examples
--------
>>> import numpy as np, tempfile, os
>>> from featx.weights.caffe import write_caffemodel, read_caffemodel
>>> path = os.path.join(tempfile.mkdtemp(), "tiny.caffemodel")
>>> _ = write_caffemodel(path, {"ip": [np.ones((2, 3), np.float32), np.zeros(2, np.float32)]})
>>> [(layer.name, layer.type, [b.shape for b in layer.blobs]) for layer in read_caffemodel(path)]
[('ip', 'InnerProduct', [(2, 3), (2,)])]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from . import WeightsError, save_weights_atomic, sha256_file, weights_home

__all__ = ["CaffeLayer", "CaffeModelError", "read_caffemodel", "write_caffemodel", "caffe_to_keras",
           "import_caffemodel", "convert_caffemodel", "converted_caffenet_path", "resolve_caffenet_weights",
           "classes_in_weights", "caffenet_weights_status"]

# -- field numbers (BVLC/caffe src/caffe/proto/caffe.proto) -------------
_NET_NAME, _NET_LAYERS_V1, _NET_LAYER = 1, 2, 100
_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS = 1, 2, 7
_V1_V0LAYER, _V1_NAME, _V1_TYPE, _V1_BLOBS = 1, 4, 5, 6
_V0_NAME, _V0_TYPE, _V0_BLOBS = 1, 2, 50
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_SHAPE_DIM = 1
_LEGACY_DIMS = (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH)

# Wire types.
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5

# V1LayerParameter.LayerType values that carry weights (and a few common ones,
# so layer types read from old files are named as in the V2 format).
_V1_TYPES = {
    4: "Convolution", 39: "Deconvolution", 14: "InnerProduct", 15: "LRN",
    17: "Pooling", 18: "ReLU", 6: "Dropout", 20: "Softmax", 5: "Data",
}
_V1_TYPE_CODES = {name: code for code, name in _V1_TYPES.items()}


class CaffeModelError(WeightsError):
    """A ``.caffemodel`` could not be decoded or does not fit the network."""


@dataclass
class CaffeLayer:
    """One layer of a ``.caffemodel``: its name, type and parameter blobs (Caffe layout)."""

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)


# -- Reading the wire format ---------------------------------------------------
class _Truncated(Exception):
    """Internal: the message ends in the middle of a field."""


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise _Truncated(f"varint runs past the end of its message at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise _Truncated(f"varint longer than 10 bytes at byte {pos}")


def _read_field(buf: bytes, pos: int, end: int) -> tuple[int, int, object, int]:
    """Decode one field at ``pos``: (number, wire type, value, next position).

    The value is an int for varints and ``(start, stop)`` byte offsets for the
    other wire types, so large payloads are never copied.
    """
    key, pos = _read_varint(buf, pos, end)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise _Truncated(f"field number 0 at byte {pos - 1} (not protobuf data)")
    if wire == _VARINT:
        value, pos = _read_varint(buf, pos, end)
        return number, wire, value, pos
    if wire == _LENGTH:
        length, pos = _read_varint(buf, pos, end)
        stop = pos + length
    elif wire == _FIXED32:
        stop = pos + 4
    elif wire == _FIXED64:
        stop = pos + 8
    else:
        raise _Truncated(f"unsupported wire type {wire} for field {number} at byte {pos}")
    if stop > end:
        raise _Truncated(f"field {number} needs {stop - pos} bytes at byte {pos} "
                         f"but its message ends at byte {end}")
    return number, wire, (pos, stop), stop


def _iter_fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, object]]:
    pos = start
    while pos < end:
        number, wire, value, pos = _read_field(buf, pos, end)
        yield number, wire, value


def _string(buf: bytes, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", errors="replace")


def _packed_varints(buf: bytes, span: tuple[int, int]) -> list[int]:
    values, pos = [], span[0]
    while pos < span[1]:
        value, pos = _read_varint(buf, pos, span[1])
        values.append(value)
    return values


def _unpacked_run(buf: bytes, pos: int, end: int, tag: int, width: int, dtype: str
                  ) -> tuple[np.ndarray, int]:
    """Consecutive unpacked elements ``tag, value, tag, value...`` read in one go.

    An unpacked repeated float is a one-byte key followed by 4 bytes, once per
    value; reading them with a Python loop would take minutes for CaffeNet's
    60 M weights, so the run is found and decoded with NumPy strides.
    """
    record = 1 + width
    n_records = (end - pos) // record
    raw = np.frombuffer(buf, dtype=np.uint8, count=n_records * record, offset=pos)
    raw = raw.reshape(n_records, record)
    breaks = np.flatnonzero(raw[:, 0] != tag)
    run = int(breaks[0]) if breaks.size else n_records
    values = np.ascontiguousarray(raw[:run, 1:]).view(dtype).reshape(run)
    return values, pos + run * record


# Blob value fields: their fixed-width wire type, byte width, NumPy dtype, and name in messages.
_FLOAT_FIELDS = {_BLOB_DATA: (_FIXED32, 4, "<f4", "float"), _BLOB_DOUBLE_DATA: (_FIXED64, 8, "<f8", "double")}


def _parse_blob(buf: bytes, start: int, end: int, where: str) -> np.ndarray:
    chunks: list[np.ndarray] = []
    double_chunks: list[np.ndarray] = []
    shape: list[int] | None = None
    legacy: dict[int, int] = {}  # the 4-D num, channels, height, width of old files
    pos = start
    while pos < end:
        number, wire, value, next_pos = _read_field(buf, pos, end)
        if number in _FLOAT_FIELDS and wire in (_LENGTH, _FLOAT_FIELDS[number][0]):
            _, width, dtype, kind = _FLOAT_FIELDS[number]
            if wire == _LENGTH:
                a, b = value
                if (b - a) % width:
                    raise _Truncated(f"{where}: packed {kind} data of {b - a} bytes is not a multiple of {width}")
                values = np.frombuffer(buf, dtype=dtype, count=(b - a) // width, offset=a)
            else:
                values, next_pos = _unpacked_run(buf, pos, end, buf[pos], width, dtype)
            (chunks if number == _BLOB_DATA else double_chunks).append(values)
        elif number == _BLOB_SHAPE and wire == _LENGTH:
            shape = []
            for dim_number, dim_wire, dim_value in _iter_fields(buf, *value):
                if dim_number == _SHAPE_DIM and dim_wire == _LENGTH:
                    shape.extend(_packed_varints(buf, dim_value))
                elif dim_number == _SHAPE_DIM and dim_wire == _VARINT:
                    shape.append(dim_value)
        elif number in _LEGACY_DIMS and wire == _VARINT:
            legacy[number] = value
        pos = next_pos

    if chunks:
        data = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    elif double_chunks:
        data = np.concatenate(double_chunks).astype(np.float32)
    else:
        data = np.zeros(0, dtype=np.float32)
    if shape is None:
        shape = [legacy.get(k, 0) for k in _LEGACY_DIMS] if legacy else [data.size]
    if int(np.prod(shape)) != data.size:
        raise _Truncated(f"{where}: shape {tuple(shape)} needs {int(np.prod(shape))} values "
                         f"but the blob holds {data.size}")
    return data.astype(np.float32, copy=False).reshape(shape)


def _parse_layer(buf: bytes, span: tuple[int, int], legacy: bool, index: int) -> CaffeLayer:
    name_field, type_field, blobs_field = (
        (_V1_NAME, _V1_TYPE, _V1_BLOBS) if legacy else (_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS))
    name, layer_type, blob_spans = f"#{index}", "", []
    for number, wire, value in _iter_fields(buf, *span):
        if number == name_field and wire == _LENGTH:
            name = _string(buf, value)
        elif number == type_field and wire == _LENGTH:
            layer_type = _string(buf, value)
        elif number == type_field and wire == _VARINT and legacy:
            layer_type = _V1_TYPES.get(value, f"V1:{value}")
        elif number == blobs_field and wire == _LENGTH:
            blob_spans.append(value)
        elif legacy and number == _V1_V0LAYER and wire == _LENGTH:
            # Pre-2014 files nest a V0LayerParameter holding name, type and blobs.
            for v0_number, v0_wire, v0_value in _iter_fields(buf, *value):
                if v0_number == _V0_NAME and v0_wire == _LENGTH:
                    name = _string(buf, v0_value)
                elif v0_number == _V0_TYPE and v0_wire == _LENGTH:
                    layer_type = _string(buf, v0_value)
                elif v0_number == _V0_BLOBS and v0_wire == _LENGTH:
                    blob_spans.append(v0_value)
    blobs = [_parse_blob(buf, a, b, f"layer {name!r} blob {k}") for k, (a, b) in enumerate(blob_spans)]
    return CaffeLayer(name=name, type=layer_type, blobs=blobs)


def read_caffemodel(path: str | os.PathLike) -> list[CaffeLayer]:
    """Layers of a binary ``.caffemodel`` (V2 ``layer`` or legacy V1 ``layers``), in file order.

    Blobs are float32 arrays in Caffe's layout (legacy blobs keep their 4-D ``num, channels,
    height, width`` shape).

    Raises
    ------
    CaffeModelError
        The file is truncated, is not protobuf, or holds no layers.
    """
    path = Path(path)
    if not path.is_file():
        raise CaffeModelError(f"no such caffemodel file: {path}")
    buf = path.read_bytes()
    layers: list[CaffeLayer] = []
    try:
        for number, wire, value in _iter_fields(buf, 0, len(buf)):
            if number in (_NET_LAYER, _NET_LAYERS_V1) and wire == _LENGTH:
                layers.append(_parse_layer(buf, value, number == _NET_LAYERS_V1, len(layers)))
    except _Truncated as err:
        raise CaffeModelError(
            f"{path} is truncated or is not a binary .caffemodel ({err}); expected a complete "
            f"Caffe NetParameter of about the size given where it was downloaded "
            f"(this file has {len(buf)} bytes): download it again"
        ) from None
    if not layers:
        raise CaffeModelError(
            f"{path} holds no Caffe layers ({len(buf)} bytes); expected a binary .caffemodel "
            f"(a text .prototxt describes the network but carries no weights)"
        )
    return layers


# -- Writing the wire format (tests, and anyone exporting to Caffe) ------------
def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 negatives are ten-byte two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _length_field(number: int, payload: bytes) -> bytes:
    return _key(number, _LENGTH) + _varint(len(payload)) + payload


def _length_chunks(number: int, chunks: list) -> list:
    """A length-delimited field as a list of byte chunks (large payloads are not copied)."""
    return [_key(number, _LENGTH) + _varint(sum(len(c) for c in chunks))] + chunks


def _blob_chunks(array: np.ndarray, legacy: bool, packed: bool) -> list:
    array = np.asarray(array, dtype=np.float32)
    chunks: list = []
    if legacy:
        if array.ndim > 4:
            raise ValueError(f"legacy Caffe blobs have at most 4 axes; got shape {array.shape}")
        dims = (1,) * (4 - array.ndim) + array.shape
        for number, dim in zip(_LEGACY_DIMS, dims):
            chunks.append(_key(number, _VARINT) + _varint(int(dim)))
    values = np.ascontiguousarray(array, dtype="<f4").reshape(-1)
    if packed:
        chunks += _length_chunks(_BLOB_DATA, [memoryview(values).cast("B")])
    elif values.size:
        records = np.empty((values.size, 5), dtype=np.uint8)
        records[:, 0] = _BLOB_DATA << 3 | _FIXED32
        records[:, 1:] = values.view(np.uint8).reshape(-1, 4)
        chunks.append(memoryview(records).cast("B"))
    if not legacy:
        dims = b"".join(_varint(int(d)) for d in array.shape)
        chunks.append(_length_field(_BLOB_SHAPE, _length_field(_SHAPE_DIM, dims) if dims else b""))
    return chunks


def write_caffemodel(path: str | os.PathLike, layers: Mapping[str, Sequence[np.ndarray]],
                     legacy: bool = False, packed: bool = True, net_name: str | None = None) -> Path:
    """Write ``layers`` as a binary ``.caffemodel`` that Caffe (and :func:`read_caffemodel`) reads.

    Parameters
    ----------
    layers : mapping of str to list of ndarray
        Layer name -> blobs in Caffe's layout (weights ``(out, in/group, kh, kw)``
        or ``(out, in)``, then bias ``(out,)``), in network order. Layers with 4-D
        weights are written as ``Convolution``, 2-D as ``InnerProduct``.
    legacy : bool, default False
        Write the deprecated V1 format (``NetParameter.layers``, enum layer types,
        4-D ``num/channels/height/width`` blob dimensions) instead of V2.
    packed : bool, default True
        Write float data packed (as Caffe does); False writes one key per value,
        which protobuf readers must accept too.
    net_name : str, optional
        ``NetParameter.name``.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    parts: list = [_length_field(_NET_NAME, net_name.encode())] if net_name else []
    for name, blobs in layers.items():
        layer_type = {4: "Convolution", 2: "InnerProduct"}.get(np.ndim(blobs[0]) if blobs else 0, "")
        blob_fields: list = []
        for blob in blobs:
            blob_fields += _length_chunks(_V1_BLOBS if legacy else _LAYER_BLOBS,
                                          _blob_chunks(blob, legacy, packed))
        if legacy:
            if layer_type not in _V1_TYPE_CODES:
                raise ValueError(f"layer {name!r}: type {layer_type!r} has no V1 enum value here; "
                                 f"expected one of {sorted(_V1_TYPE_CODES)}")
            head = _length_field(_V1_NAME, name.encode()) + _key(_V1_TYPE, _VARINT) \
                + _varint(_V1_TYPE_CODES[layer_type])
            parts += _length_chunks(_NET_LAYERS_V1, [head] + blob_fields)
        else:
            head = _length_field(_LAYER_NAME, name.encode())
            if layer_type:
                head += _length_field(_LAYER_TYPE, layer_type.encode())
            parts += _length_chunks(_NET_LAYER, [head] + blob_fields)
    with open(path, "wb") as handle:
        handle.writelines(parts)
    return path


# -- Caffe layout -> Keras layout ----------------------------------------------
def caffe_to_keras(caffe_layers: Sequence[CaffeLayer] | Mapping[str, Sequence[np.ndarray]], model,
                   chw_flattened: Mapping[str, str] | None = None) -> dict[str, list[np.ndarray]]:
    """Caffe blobs converted to the kernels and biases of ``model``'s layers, by layer name.

    Every ``Conv2D`` and ``Dense`` layer of ``model`` must have a Caffe layer of the same name
    with matching sizes; the result maps its name to ``[kernel, bias]`` for ``layer.set_weights``.

    Parameters
    ----------
    caffe_layers : list of CaffeLayer or mapping of str to list of ndarray
        What :func:`read_caffemodel` returned, or name -> blobs.
    chw_flattened : mapping of str to str, optional
        Dense layer name -> name of the 4-D layer whose output it reads flattened
        (``{"fc6": "pool5"}`` for CaffeNet); its input rows are permuted from
        Caffe's C×H×W order to Keras' H×W×C.
    """
    import keras

    if not isinstance(caffe_layers, Mapping):
        caffe_layers = {layer.name: layer.blobs for layer in caffe_layers}
    chw_flattened = dict(chw_flattened or {})
    converted: dict[str, list[np.ndarray]] = {}
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            continue
        blobs = caffe_layers.get(layer.name)
        if not blobs:
            with_blobs = [n for n, b in caffe_layers.items() if b]
            raise CaffeModelError(
                f"the caffemodel has no weights for layer {layer.name!r}; it has weights for: "
                f"{', '.join(with_blobs) or 'no layer'} (is it a {model.name} model?)")
        kernel_shape = tuple(int(d) for d in layer.kernel.shape)
        has_bias = layer.use_bias
        if len(blobs) != 1 + has_bias:
            raise CaffeModelError(f"layer {layer.name!r}: expected {1 + has_bias} blobs "
                                  f"(weights{', bias' if has_bias else ''}); got {len(blobs)}")
        weights = np.asarray(blobs[0], dtype=np.float32)
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, in_per_group, out = kernel_shape
            caffe_shape = (out, in_per_group, kh, kw)
            _check_size(layer.name, weights, caffe_shape)
            kernel = weights.reshape(caffe_shape).transpose(2, 3, 1, 0)
        else:
            n_in, out = kernel_shape
            _check_size(layer.name, weights, (out, n_in))
            weights = weights.reshape(out, n_in)
            source = chw_flattened.get(layer.name)
            if source is not None:
                height, width, channels = (int(d) for d in model.get_layer(source).output.shape[1:])
                weights = weights.reshape(out, channels, height, width).transpose(0, 2, 3, 1)
                weights = weights.reshape(out, n_in)
            kernel = weights.T
        arrays = [np.ascontiguousarray(kernel)]
        if has_bias:
            bias = np.asarray(blobs[1], dtype=np.float32)
            _check_size(f"{layer.name} bias", bias, (kernel_shape[-1],))
            arrays.append(bias.reshape(-1))
        converted[layer.name] = arrays
    return converted


def _check_size(name: str, array: np.ndarray, caffe_shape: tuple[int, ...]) -> None:
    # Legacy blobs pad their shape with leading 1s, so compare without them.
    squeezed = tuple(d for d in array.shape if d != 1)
    if squeezed != tuple(d for d in caffe_shape if d != 1):
        raise CaffeModelError(
            f"layer {name!r}: expected a Caffe blob of shape {caffe_shape}; got {array.shape} "
            f"(the caffemodel is for a different network or input size)")


# -- The importer --------------------------------------------------------------
def converted_caffenet_path(caffemodel: str | os.PathLike, input_shape: tuple[int, int, int] | None = None) -> Path:
    """Where :func:`import_caffemodel` keeps the Keras weights converted from ``caffemodel`` (``input_shape``:
    CaffeNet's own, 227x227x3, when None)."""
    from featx.backbones.caffenet import INPUT_SHAPE  # Keras loads only when a model is converted

    input_shape = tuple(input_shape or INPUT_SHAPE)
    digest = sha256_file(caffemodel)[:12]
    suffix = "" if tuple(input_shape) == INPUT_SHAPE else "-{}x{}".format(*input_shape[:2])
    return weights_home() / f"caffenet-{digest}{suffix}.weights.h5"


def import_caffemodel(path: str | os.PathLike, input_shape: tuple[int, int, int] | None = None) -> Path:
    """Convert a CaffeNet ``.caffemodel`` into Keras weights once, and reuse them afterwards.

    ``path`` holds the BVLC reference CaffeNet weights or a CaffeNet fine-tuned from them (``fc8``
    may have any number of classes); ``input_shape`` decides the size of ``pool5`` and so of ``fc6``.
    Returns ``<weights_home()>/caffenet-<sha256[:12]>.weights.h5``, for
    :func:`featx.extractors.caffenet.CaffeNet`. Raises :class:`CaffeModelError` when the file is
    missing, corrupt, or does not hold CaffeNet's layers.
    """
    return convert_caffemodel(path, input_shape)[0]


def convert_caffemodel(path: str | os.PathLike, input_shape: tuple[int, int, int] | None = None) -> tuple:
    """:func:`import_caffemodel`, and the Keras model it converted into (None when the file was converted before)."""
    from featx.backbones.caffenet import CHW_FLATTENED, INPUT_SHAPE, caffenet_model

    path = Path(path)
    if not path.is_file():
        raise CaffeModelError(f"no such caffemodel file: {path}")
    input_shape = tuple(input_shape or INPUT_SHAPE)
    target = converted_caffenet_path(path, input_shape)
    if target.is_file():
        return target, None
    layers = {layer.name: layer.blobs for layer in read_caffemodel(path)}
    fc8 = layers.get("fc8") or []
    classes = int(np.prod(fc8[-1].shape)) if fc8 else 1000
    model = caffenet_model(input_shape=input_shape, classes=classes)
    for name, arrays in caffe_to_keras(layers, model, CHW_FLATTENED).items():
        model.get_layer(name).set_weights(arrays)
    return save_weights_atomic(model, target), model


# -- The weights= option of CaffeNet -------------------------------------------
def resolve_caffenet_weights(weights: str | os.PathLike | None) -> Path | None:
    """The weights file a ``weights`` option names (not converted yet), None for random weights.

    Raises
    ------
    WeightsError
        ``"imagenet"`` (not downloadable: the message says what to do), a
        missing file, or a file that is neither ``.caffemodel`` nor ``.h5``.
    """
    from featx.backbones.caffenet import WEIGHTS_FILE_NAME

    if weights is None:
        return None
    if str(weights).lower() == "imagenet":
        converted = sorted(weights_home().glob("caffenet-*.weights.h5"))
        hint = f" (already converted here: {converted[-1]})" if converted else ""
        raise WeightsError(
            f"weights='imagenet' for caffenet: the BVLC CaffeNet ImageNet weights are not on PyPI, so featx "
            f"cannot fetch them: download {WEIGHTS_FILE_NAME} (BVLC model zoo, models/bvlc_reference_caffenet "
            f"in the BVLC/caffe repository) and pass its path, e.g. --opt weights=/path/to/{WEIGHTS_FILE_NAME}; "
            f"it is converted once into {weights_home()}{hint}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"caffenet weights file not found: {path}; expected a "
                           f"{WEIGHTS_FILE_NAME} (or a converted .weights.h5) at that path")
    if path.suffix != ".caffemodel" and not path.name.endswith(".h5"):
        raise WeightsError(f"caffenet weights must be a .caffemodel or a Keras .weights.h5 file; "
                           f"got {path.name}")
    return path


def classes_in_weights(path: Path) -> int:
    """Outputs of ``fc8`` as stored in a Keras weights file (a fine-tuned CaffeNet may have few).

    Keras' ``.weights.h5`` names layers by class and order (``dense``, ``dense_1``,
    ``dense_2``), so ``fc8`` is the last ``dense`` group; its bias length is the count.
    """
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            group = handle.get("layers")
            dense = sorted((name for name in (group.keys() if group is not None else [])
                            if name == "dense" or name.startswith("dense_")),
                           key=lambda name: int(name.partition("_")[2] or 0))
            bias = group[dense[-1]].get("vars/1") if dense else None
            return int(bias.shape[0]) if bias is not None else 1000
    except OSError as err:
        raise WeightsError(f"cannot read {path} as an HDF5 weights file ({err}); expected a "
                           f"Keras .weights.h5 (or pass the original .caffemodel)") from None


def caffenet_weights_status() -> tuple[bool, str]:
    """(available offline, detail) for ``featx extractors``."""
    from featx.backbones.caffenet import WEIGHTS_FILE_NAME

    converted = sorted(weights_home().glob("caffenet-*.weights.h5"))
    if converted:
        return True, f"converted weights: {converted[-1]} (pass --opt weights=PATH)"
    return False, (f"not on PyPI: download {WEIGHTS_FILE_NAME} and pass "
                   f"--opt weights=/path/to/{WEIGHTS_FILE_NAME}")
