"""CaffeNet in Keras and the .caffemodel importer, checked against Caffe's spec and NumPy.

Most tests run CaffeNet on a 71×71 input: there every Caffe pooling rounds *up*
(conv1 16 -> pool1 8 -> pool2 4 -> pool5 2; rounding down would give 7, 3, 1),
pool5 is 2×2×256 so the fc6 row permutation is exercised, and the weights stay
small. The 227×227 tests check the real sizes (pool5 6×6×256 = 9216, fc7 4096).
"""

from __future__ import annotations

import os
import struct

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

import keras  # noqa: E402

from featx.extractors import get_extractor  # noqa: E402
from featx.backbones.caffenet import BGR_MEAN, preprocess_input  # noqa: E402
from featx.extractors.caffenet import CaffeNet  # noqa: E402
from featx.weights import WeightsError, sha256_file  # noqa: E402
from featx.weights import caffe  # noqa: E402
from featx.weights.caffe import (  # noqa: E402
    CaffeModelError, import_caffemodel, read_caffemodel, write_caffemodel)

SMALL_INPUT = (71, 71, 3)
SMALL_CLASSES = 10
CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FC_LAYERS = ("fc6", "fc7", "fc8")


def caffenet_blob_shapes(pool5_side: int, classes: int) -> dict[str, list[tuple[int, ...]]]:
    """Blob shapes of deploy.prototxt in Caffe's layout (weights, bias) per layer."""
    return {
        "conv1": [(96, 3, 11, 11), (96,)],
        "conv2": [(256, 48, 5, 5), (256,)],      # group 2: 96 / 2 inputs per group
        "conv3": [(384, 256, 3, 3), (384,)],
        "conv4": [(384, 192, 3, 3), (384,)],     # group 2
        "conv5": [(256, 192, 3, 3), (256,)],     # group 2
        "fc6": [(4096, 256 * pool5_side * pool5_side), (4096,)],
        "fc7": [(4096, 4096), (4096,)],
        "fc8": [(classes, 4096), (classes,)],
    }


def random_caffenet_blobs(pool5_side: int, classes: int, seed: int) -> dict[str, list[np.ndarray]]:
    """He-scaled random weights, so activations keep a realistic size through the net."""
    rng = np.random.default_rng(seed)
    blobs = {}
    for name, (weight_shape, bias_shape) in caffenet_blob_shapes(pool5_side, classes).items():
        fan_in = int(np.prod(weight_shape[1:]))
        weight = rng.standard_normal(weight_shape, dtype=np.float32) * np.float32(np.sqrt(2 / fan_in))
        bias = rng.standard_normal(bias_shape, dtype=np.float32) * np.float32(0.1)
        blobs[name] = [weight, bias]
    return blobs


def keras_layout(blobs: dict[str, list[np.ndarray]], pool5_side: int) -> dict[str, list[np.ndarray]]:
    """Expected Keras kernels: conv (O, I/g, kh, kw) -> (kh, kw, I/g, O); fc (O, I) -> (I, O),
    fc6's input rows reordered from Caffe's C×H×W flatten to Keras' H×W×C."""
    expected = {name: [blobs[name][0].transpose(2, 3, 1, 0), blobs[name][1]] for name in CONV_LAYERS}
    fc6 = blobs["fc6"][0].reshape(4096, 256, pool5_side, pool5_side).transpose(0, 2, 3, 1)
    expected["fc6"] = [fc6.reshape(4096, -1).T, blobs["fc6"][1]]
    for name in ("fc7", "fc8"):
        expected[name] = [blobs[name][0].T, blobs[name][1]]
    return expected


# -- NumPy reference of Caffe's forward pass (channels first, float64) -------------
def conv_reference(x, weight, bias, stride=1, pad=0, groups=1):
    """Direct convolution: x (C, H, W), weight (O, C/groups, kh, kw) as Caffe stores it."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    _, height, width = x.shape
    n_out, in_per_group, kh, kw = weight.shape
    out_h, out_w = (height - kh) // stride + 1, (width - kw) // stride + 1
    out_per_group = n_out // groups
    out = np.zeros((n_out, out_h, out_w))
    for g in range(groups):
        x_g = x[g * in_per_group:(g + 1) * in_per_group]
        w_g = weight[g * out_per_group:(g + 1) * out_per_group]
        for i in range(kh):
            for j in range(kw):
                patch = x_g[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
                out[g * out_per_group:(g + 1) * out_per_group] += np.einsum(
                    "oc,chw->ohw", w_g[:, :, i, j], patch)
    return out + bias[:, None, None]


def max_pool_reference(x, kernel=3, stride=2):
    """Caffe's MAX pooling: ceil-rounded output size, windows clipped at the border."""
    channels, height, width = x.shape
    out_h = int(np.ceil((height - kernel) / stride)) + 1
    out_w = int(np.ceil((width - kernel) / stride)) + 1
    out = np.empty((channels, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            window = x[:, i * stride:min(i * stride + kernel, height), j * stride:min(j * stride + kernel, width)]
            out[:, i, j] = window.max(axis=(1, 2))
    return out


def lrn_reference(x, local_size=5, alpha=1e-4, beta=0.75):
    """Caffe's ACROSS_CHANNELS LRN: x / (1 + alpha / n * sum over n channels of x²) ** beta."""
    channels = x.shape[0]
    half = local_size // 2
    out = np.empty_like(x)
    for c in range(channels):
        window = x[max(0, c - half):min(channels, c + half + 1)]
        out[c] = x[c] / (1 + alpha / local_size * (window ** 2).sum(axis=0)) ** beta
    return out


def caffenet_reference(image_chw, blobs):
    """Every Caffe top blob of deploy.prototxt for one preprocessed image (C, H, W)."""
    b = {name: [np.float64(a) for a in arrays] for name, arrays in blobs.items()}
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    tops = {}
    tops["conv1"] = relu(conv_reference(image_chw, *b["conv1"], stride=4))
    tops["pool1"] = max_pool_reference(tops["conv1"])
    tops["norm1"] = lrn_reference(tops["pool1"])
    tops["conv2"] = relu(conv_reference(tops["norm1"], *b["conv2"], pad=2, groups=2))
    tops["pool2"] = max_pool_reference(tops["conv2"])
    tops["norm2"] = lrn_reference(tops["pool2"])
    tops["conv3"] = relu(conv_reference(tops["norm2"], *b["conv3"], pad=1))
    tops["conv4"] = relu(conv_reference(tops["conv3"], *b["conv4"], pad=1, groups=2))
    tops["conv5"] = relu(conv_reference(tops["conv4"], *b["conv5"], pad=1, groups=2))
    tops["pool5"] = max_pool_reference(tops["conv5"])
    flat = tops["pool5"].reshape(-1)  # Caffe's InnerProduct flattens C×H×W
    tops["fc6"] = relu(b["fc6"][0] @ flat + b["fc6"][1])
    tops["fc7"] = relu(b["fc7"][0] @ tops["fc6"] + b["fc7"][1])
    tops["fc8"] = b["fc8"][0] @ tops["fc7"] + b["fc8"][1]
    exp = np.exp(tops["fc8"] - tops["fc8"].max())
    tops["prob"] = exp / exp.sum()
    return tops


def assert_close(actual, expected, name, tolerance=1e-4):
    """Agreement within ``tolerance`` relative to the largest value of the layer."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(actual - expected).max()) / scale
    assert error <= tolerance, f"{name}: relative error {error:.2e} > {tolerance}"


def to_chw(hwc):
    return np.asarray(hwc).transpose(2, 0, 1)


# -- fixtures ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("featx_weights")
        patch.setenv("FEATX_WEIGHTS", str(path))
        yield path


@pytest.fixture(scope="module")
def small_blobs():
    return random_caffenet_blobs(pool5_side=2, classes=SMALL_CLASSES, seed=0)


@pytest.fixture(scope="module")
def small_caffemodel(tmp_path_factory, small_blobs):
    return write_caffemodel(tmp_path_factory.mktemp("caffe") / "small.caffemodel", small_blobs)


@pytest.fixture(scope="module")
def small_model(weights_dir, small_caffemodel):
    converted = import_caffemodel(small_caffemodel, input_shape=SMALL_INPUT)
    return CaffeNet(weights=converted, input_shape=SMALL_INPUT)


# -- the wire format -----------------------------------------------------------------
def test_writer_emits_the_bytes_caffe_proto_defines(tmp_path):
    weight = np.array([[1.5, -2.0]], dtype=np.float32)
    # BlobProto: data = 5 (packed float), shape = 7 { dim = 1 (packed int64) }.
    blob = b"\x2a\x08" + struct.pack("<2f", 1.5, -2.0) + b"\x3a\x04" + b"\x0a\x02\x01\x02"
    # LayerParameter: name = 1, type = 2, blobs = 7.
    layer = b"\x0a\x02ip" + b"\x12\x0cInnerProduct" + b"\x3a" + bytes([len(blob)]) + blob
    # NetParameter.layer = 100 -> key (100 << 3 | 2) = 802 = varint a2 06.
    expected_v2 = b"\xa2\x06" + bytes([len(layer)]) + layer
    written = write_caffemodel(tmp_path / "v2.caffemodel", {"ip": [weight]})
    assert written.read_bytes() == expected_v2

    # V1LayerParameter: name = 4, type = 5 (INNER_PRODUCT = 14), blobs = 6; legacy
    # BlobProto num/channels/height/width = 1..4 and unpacked floats (key 0x2d each).
    blob_v1 = (b"\x08\x01\x10\x01\x18\x01\x20\x02"
               + b"\x2d" + struct.pack("<f", 1.5) + b"\x2d" + struct.pack("<f", -2.0))
    layer_v1 = b"\x22\x02ip" + b"\x28\x0e" + b"\x32" + bytes([len(blob_v1)]) + blob_v1
    expected_v1 = b"\x12" + bytes([len(layer_v1)]) + layer_v1
    written = write_caffemodel(tmp_path / "v1.caffemodel", {"ip": [weight]}, legacy=True, packed=False)
    assert written.read_bytes() == expected_v1

    (v2,), (v1,) = read_caffemodel(tmp_path / "v2.caffemodel"), read_caffemodel(tmp_path / "v1.caffemodel")
    assert (v2.name, v2.type, v1.name, v1.type) == ("ip", "InnerProduct", "ip", "InnerProduct")
    np.testing.assert_array_equal(v2.blobs[0], weight)
    np.testing.assert_array_equal(v1.blobs[0], weight.reshape(1, 1, 1, 2))


def test_reader_accepts_double_data_and_data_split_over_packed_and_unpacked_runs(tmp_path):
    doubles = b"\x42\x10" + struct.pack("<2d", 0.25, -8.0)          # double_data = 8, packed
    shape = b"\x3a\x03\x0a\x01\x02"                                  # shape { dim: 2 }
    split = (b"\x2a\x04" + struct.pack("<f", 3.0)                   # data, packed chunk
             + b"\x2d" + struct.pack("<f", 4.0) + b"\x2d" + struct.pack("<f", 5.0))  # unpacked run
    shape3 = b"\x3a\x03\x0a\x01\x03"
    layer = (b"\x0a\x01a" + b"\x3a" + bytes([len(doubles + shape)]) + doubles + shape
             + b"\x3a" + bytes([len(split + shape3)]) + split + shape3)
    path = tmp_path / "mixed.caffemodel"
    path.write_bytes(b"\x0a\x03net" + b"\xa2\x06" + bytes([len(layer)]) + layer)
    (layer_read,) = read_caffemodel(path)
    np.testing.assert_array_equal(layer_read.blobs[0], [0.25, -8.0])
    np.testing.assert_array_equal(layer_read.blobs[1], [3.0, 4.0, 5.0])


def test_writer_output_parses_with_the_protobuf_library(tmp_path):
    """Cross-check against Google's protobuf runtime, with caffe.proto's fields declared here."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="caffe_subset.proto", package="caffe_subset")

    def message(name, fields):
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name, packed in fields:
            f = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                f.type_name = f".caffe_subset.{type_name}"
            if packed:
                f.options.packed = True

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BlobShape", [("dim", 1, F.TYPE_INT64, rep, None, True)])
    message("BlobProto", [("shape", 7, F.TYPE_MESSAGE, opt, "BlobShape", False),
                          ("data", 5, F.TYPE_FLOAT, rep, None, True),
                          ("num", 1, F.TYPE_INT64, opt, None, False),
                          ("channels", 2, F.TYPE_INT64, opt, None, False),
                          ("height", 3, F.TYPE_INT64, opt, None, False),
                          ("width", 4, F.TYPE_INT64, opt, None, False)])
    message("LayerParameter", [("name", 1, F.TYPE_STRING, opt, None, False),
                               ("type", 2, F.TYPE_STRING, opt, None, False),
                               ("blobs", 7, F.TYPE_MESSAGE, rep, "BlobProto", False)])
    message("V1LayerParameter", [("name", 4, F.TYPE_STRING, opt, None, False),
                                 ("type", 5, F.TYPE_INT32, opt, None, False),
                                 ("blobs", 6, F.TYPE_MESSAGE, rep, "BlobProto", False)])
    message("NetParameter", [("name", 1, F.TYPE_STRING, opt, None, False),
                             ("layer", 100, F.TYPE_MESSAGE, rep, "LayerParameter", False),
                             ("layers", 2, F.TYPE_MESSAGE, rep, "V1LayerParameter", False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    NetParameter = message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe_subset.NetParameter"))

    rng = np.random.default_rng(1)
    layers = {"conv": [rng.standard_normal((4, 3, 2, 2), dtype=np.float32), rng.standard_normal(4, dtype=np.float32)],
              "ip": [rng.standard_normal((5, 16), dtype=np.float32), rng.standard_normal(5, dtype=np.float32)]}
    for legacy, packed in ((False, True), (True, False)):
        path = write_caffemodel(tmp_path / f"net{legacy}.caffemodel", layers, legacy=legacy,
                                packed=packed, net_name="tiny")
        net = NetParameter.FromString(path.read_bytes())
        parsed = net.layers if legacy else net.layer
        assert net.name == "tiny" and [layer.name for layer in parsed] == ["conv", "ip"]
        for layer in parsed:
            for blob, original in zip(layer.blobs, layers[layer.name]):
                dims = ([blob.num, blob.channels, blob.height, blob.width] if legacy
                        else list(blob.shape.dim))
                assert int(np.prod(dims)) == original.size
                np.testing.assert_array_equal(np.array(blob.data, np.float32), original.reshape(-1))
        assert [layer.type for layer in net.layers] == ([4, 14] if legacy else [])

    # And the other way: protobuf's own serialisation is read back by ours.
    net = NetParameter(name="x")
    layer = net.layer.add(name="ip", type="InnerProduct")
    blob = layer.blobs.add()
    blob.shape.dim.extend([5, 16])
    blob.data.extend(layers["ip"][0].reshape(-1).tolist())
    path = tmp_path / "from_protobuf.caffemodel"
    path.write_bytes(net.SerializeToString())
    (read,) = read_caffemodel(path)
    np.testing.assert_array_equal(read.blobs[0], layers["ip"][0])


# -- import ------------------------------------------------------------------------
def assert_weights_equal_converted_originals(model, blobs):
    expected = keras_layout(blobs, pool5_side=2)
    assert model.get_layer("fc8").units == SMALL_CLASSES  # classes read from the weights file
    for name in CONV_LAYERS + FC_LAYERS:
        kernel, bias = model.get_layer(name).get_weights()
        np.testing.assert_array_equal(kernel, expected[name][0], err_msg=name)
        np.testing.assert_array_equal(bias, expected[name][1], err_msg=name)


def test_import_v2_puts_every_converted_blob_in_its_keras_layer(weights_dir, small_caffemodel,
                                                                small_model, small_blobs):
    assert [layer.name for layer in read_caffemodel(small_caffemodel)] == list(small_blobs)
    converted = caffe.converted_caffenet_path(small_caffemodel, SMALL_INPUT)
    assert converted.parent == weights_dir
    assert converted.name == f"caffenet-{sha256_file(small_caffemodel)[:12]}-71x71.weights.h5"
    assert_weights_equal_converted_originals(small_model, small_blobs)


def test_import_legacy_v1_with_unpacked_floats(tmp_path, weights_dir, small_blobs):
    path = write_caffemodel(tmp_path / "legacy.caffemodel", small_blobs, legacy=True, packed=False)
    layers = read_caffemodel(path)
    assert layers[0].blobs[1].shape == (1, 1, 1, 96)  # legacy 4-D num/channels/height/width
    converted = import_caffemodel(path, input_shape=SMALL_INPUT)
    assert converted.name == f"caffenet-{sha256_file(path)[:12]}-71x71.weights.h5"
    assert_weights_equal_converted_originals(CaffeNet(weights=converted, input_shape=SMALL_INPUT), small_blobs)


def test_second_import_reuses_the_converted_file(small_caffemodel, small_model, monkeypatch):
    converted = caffe.converted_caffenet_path(small_caffemodel, SMALL_INPUT)
    stamp = converted.stat().st_mtime_ns

    def must_not_parse(path):
        raise AssertionError("the caffemodel was parsed again")

    monkeypatch.setattr(caffe, "read_caffemodel", must_not_parse)
    assert import_caffemodel(small_caffemodel, input_shape=SMALL_INPUT) == converted
    assert converted.stat().st_mtime_ns == stamp
    assert not list(converted.parent.glob("*.tmp*"))


def test_corrupt_or_foreign_files_give_clear_errors(tmp_path, weights_dir, small_caffemodel):
    before = sorted(weights_dir.iterdir())
    data = small_caffemodel.read_bytes()

    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaffeModelError, match="truncated.caffemodel is truncated or is not a binary"):
        import_caffemodel(truncated, input_shape=SMALL_INPUT)

    prototxt = tmp_path / "deploy.caffemodel"
    prototxt.write_text('name: "CaffeNet"\nlayer {\n  name: "conv1"\n}\n')
    with pytest.raises(CaffeModelError, match="deploy.caffemodel"):
        import_caffemodel(prototxt, input_shape=SMALL_INPUT)

    conv1_only = write_caffemodel(tmp_path / "conv1.caffemodel", {"conv1": [np.zeros((96, 3, 11, 11)), np.zeros(96)]})
    with pytest.raises(CaffeModelError, match="no weights for layer 'conv2'"):
        import_caffemodel(conv1_only, input_shape=SMALL_INPUT)

    wrong_size = write_caffemodel(tmp_path / "wrong.caffemodel",
                                  {"conv1": [np.zeros((96, 3, 7, 7)), np.zeros(96)]})
    with pytest.raises(CaffeModelError, match=r"expected a Caffe blob of shape \(96, 3, 11, 11\)"):
        import_caffemodel(wrong_size, input_shape=SMALL_INPUT)

    with pytest.raises(CaffeModelError, match="no such caffemodel"):
        import_caffemodel(tmp_path / "missing.caffemodel")
    assert sorted(weights_dir.iterdir()) == before  # nothing half-written


# -- the network against NumPy -------------------------------------------------------
def test_every_layer_matches_a_numpy_reference_of_caffe(small_model, small_blobs):
    names = ["conv1", "pool1", "norm1", "conv2", "pool2", "norm2", "conv3", "conv4", "conv5",
             "pool5", "fc6", "fc7", "fc8", "prob"]
    probe = keras.Model(small_model.input, [small_model.get_layer(n).output for n in names])
    rgb = np.random.default_rng(2).uniform(0, 255, size=(1,) + SMALL_INPUT).astype(np.float32)
    image = preprocess_input(rgb)
    outputs = dict(zip(names, probe.predict_on_batch(image)))
    reference = caffenet_reference(to_chw(image[0]), small_blobs)

    # Caffe rounds pooled sizes up: 16 -> 8, 8 -> 4, 4 -> 2 (rounding down gives 7, 3, 1).
    assert outputs["pool1"].shape[1:3] == (8, 8)
    assert outputs["pool2"].shape[1:3] == (4, 4)
    assert outputs["pool5"].shape[1:] == (2, 2, 256)
    # LRN really normalises at this scale (it is not close to the identity).
    assert np.abs(reference["norm1"] - reference["pool1"]).max() > 0.1 * np.abs(reference["pool1"]).max()
    for name in names:
        keras_out = outputs[name][0]
        actual = keras_out if keras_out.ndim == 1 else to_chw(keras_out)
        assert_close(actual, reference[name], name)


def test_fc6_reads_pool5_in_caffe_channel_first_order(small_model, small_blobs):
    probe = keras.Model(small_model.input, [small_model.get_layer("pool5").output,
                                            small_model.get_layer("fc6").output])
    images = np.random.default_rng(3).uniform(-120, 120, size=(2,) + SMALL_INPUT).astype(np.float32)
    pool5, fc6 = probe.predict_on_batch(images)
    caffe_flat = pool5.transpose(0, 3, 1, 2).reshape(2, -1)  # N×C×H×W, as Caffe flattens
    weight, bias = small_blobs["fc6"]
    expected = np.maximum(caffe_flat.astype(np.float64) @ weight.T + bias, 0)
    assert_close(fc6, expected, "fc6")
    # The naive H×W×C flatten gives different numbers: the permutation matters.
    naive = np.maximum(pool5.reshape(2, -1).astype(np.float64) @ weight.T + bias, 0)
    assert np.abs(naive - expected).max() > 0.1 * np.abs(expected).max()


# -- the extractor at 227×227 ---------------------------------------------------------
def test_pool5_flatten_is_9216_at_227():
    images = np.random.default_rng(4).integers(0, 256, size=(2, 227, 227, 3), dtype=np.uint8)
    pool5 = get_extractor("caffenet", weights=None, layer="pool5", pool="flatten")
    assert pool5.preprocessing["size"] == [227, 227]
    assert pool5.output_dim == 6 * 6 * 256 == 9216
    features = pool5.transform(images)
    assert features.shape == (2, 9216) and features.dtype == np.float32
    assert np.isfinite(features).all() and features.std() > 0


def test_fc7_extractor_from_a_full_size_caffemodel(tmp_path, weights_dir):
    blobs = random_caffenet_blobs(pool5_side=6, classes=1000, seed=5)
    path = write_caffemodel(tmp_path / "bvlc_like.caffemodel", blobs)
    fc7 = get_extractor("caffenet", weights=str(path))  # default layer fc7
    assert fc7.spec()["weights_sha256"] == sha256_file(path)
    assert fc7.params["layer"] == "fc7" and fc7.output_dim == 4096

    images = np.random.default_rng(6).integers(0, 256, size=(2, 227, 227, 3), dtype=np.uint8)
    features = fc7.transform(images)
    assert features.shape == (2, 4096)
    probe = keras.Model(fc7.model.input, fc7.model.get_layer("pool5").output)
    pool5 = probe.predict_on_batch(fc7.preprocess(images.astype(np.float32)))
    assert pool5.shape == (2, 6, 6, 256)
    caffe_flat = pool5.transpose(0, 3, 1, 2).reshape(2, -1).astype(np.float64)  # C×H×W
    fc6 = np.maximum(caffe_flat @ blobs["fc6"][0].T + blobs["fc6"][1], 0)
    expected_fc7 = np.maximum(fc6 @ blobs["fc7"][0].T + blobs["fc7"][1], 0)
    assert_close(features, expected_fc7, "fc7")


def test_imagenet_weights_explain_how_to_get_the_caffemodel(weights_dir):
    extractor = get_extractor("caffenet")  # default weights="imagenet"
    with pytest.raises(WeightsError, match=r"bvlc_reference_caffenet\.caffemodel.*--opt weights="):
        extractor.spec()
    with pytest.raises(WeightsError, match="not on PyPI"):
        CaffeNet(weights="imagenet")
    with pytest.raises(WeightsError, match="not found"):
        CaffeNet(weights=str(weights_dir / "nope.caffemodel"))


def test_preprocess_swaps_to_bgr_and_subtracts_the_channel_mean():
    rgb = np.zeros((1, 227, 227, 3), dtype=np.float32)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    x = get_extractor("caffenet", weights=None).preprocess(rgb)
    np.testing.assert_allclose(x[0, 0, 0], [30 - BGR_MEAN[0], 20 - BGR_MEAN[1], 10 - BGR_MEAN[2]], rtol=1e-6)
    with pytest.raises(ValueError, match="227"):
        get_extractor("caffenet", weights=None).preprocess(np.zeros((1, 64, 64, 3), np.float32))


def test_custom_layers_survive_keras_serialisation(tmp_path):
    from featx.backbones.caffenet import CaffeMaxPooling2D, LocalResponseNormalization

    inputs = keras.Input((6, 6, 7))  # pooled to 3×3 by rounding up (2×2 rounding down)
    outputs = LocalResponseNormalization(5, 1e-2, 0.75, name="norm")(CaffeMaxPooling2D(3, 2, name="pool")(inputs))
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "tiny.keras")
    restored = keras.saving.load_model(tmp_path / "tiny.keras")
    x = np.random.default_rng(7).normal(size=(1, 6, 6, 7)).astype(np.float32) * 10
    np.testing.assert_allclose(restored.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-6)
    expected = lrn_reference(max_pool_reference(to_chw(x[0]).astype(np.float64)), alpha=1e-2)
    assert_close(to_chw(model.predict_on_batch(x)[0]), expected, "pool+lrn on negatives")
