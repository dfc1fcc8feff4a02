"""OpenVINO runtime: fp32 parity with Keras, IR reuse and invalidation, missing openvino."""
import sys

import numpy as np
import pytest

from featx.runtime import RuntimeUnavailable, make_runner


class _Fake:
    """Minimal KerasExtractor stand-in: a small conv net with random weights."""

    def __init__(self, seed=0, tag="a"):
        import keras
        keras.utils.set_random_seed(seed)
        inp = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        self.model = keras.Model(inp, x)
        self._spec = {"name": "fake", "tag": tag}
        self._fp = f"w{seed}"

    def spec(self):
        return dict(self._spec)

    def weights_fingerprint(self):
        return self._fp

    def preprocess(self, images):
        return np.stack(images).astype(np.float32) / 127.5 - 1.0

    def transform(self, images):
        import keras

        return keras.ops.convert_to_numpy(self.model(self.preprocess(images), training=False))


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATX_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("FEATX_HOME", str(tmp_path / "h"))
    return tmp_path


def _images(n=4):
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.keras
def test_fp32_parity_and_ir_reuse(home):
    ext = _Fake()
    keras_out = make_runner(ext, "keras")(_images())
    first = make_runner(ext, "openvino", "fp32")
    ov_out = first(_images())
    assert first.converted
    np.testing.assert_allclose(ov_out, keras_out, rtol=1e-4, atol=1e-5)
    assert not make_runner(ext, "openvino", "fp32").converted  # IR reused
    changed = _Fake(seed=1)  # other weights fingerprint -> new IR, new numbers
    runner = make_runner(changed, "openvino", "fp32")
    assert runner.converted
    np.testing.assert_allclose(runner(_images()), make_runner(changed, "keras")(_images()),
                               rtol=1e-4, atol=1e-5)


def test_missing_openvino_one_line(monkeypatch, home):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(RuntimeUnavailable, match="openvino is not installed"):
        make_runner(_Fake(), "openvino")


def test_extract_images_with_openvino_runner(home, tmp_path):
    from PIL import Image

    from featx.pipeline import extract_images
    ext = _Fake()
    ext.parallel, ext.preprocessing = "model", {"size": (32, 32)}
    for i, img in enumerate(_images(3)):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    units = [("s0", ["0.png", "1.png", "2.png"])]
    (_, ov_feats, ok, _), = extract_images(ext, tmp_path, units, workers=1,
                                           runner=make_runner(ext, "openvino"))
    (_, k_feats, _, _), = extract_images(ext, tmp_path, units, workers=1)
    assert ok.all() and ov_feats.shape == (3, 8)
    np.testing.assert_allclose(ov_feats, k_feats, rtol=1e-4, atol=1e-5)


def test_unsupported_precision_is_refused(home):
    with pytest.raises(RuntimeUnavailable, match="fp16"):
        make_runner(_Fake(), "openvino", "fp16")
    with pytest.raises(RuntimeUnavailable, match="calibration"):
        make_runner(_Fake(), "openvino", "int8")  # int8 without calibration images
    with pytest.raises(RuntimeUnavailable, match="openvino"):
        make_runner(_Fake(), "keras", "int8")


@pytest.mark.parametrize("has_bf16", [False, True])
def test_bf16_runs_only_where_the_cpu_has_it(home, monkeypatch, has_bf16):
    """Without avx512_bf16/AMX OpenVINO ignores the bf16 hint and computes fp32: an explicit
    ``--runtime openvino --precision bf16`` is refused in one line, ``auto`` takes Keras (which
    emulates bf16, with a warning). With bf16 hardware, ``auto`` takes OpenVINO."""
    from featx.runtime import hardware, resolve_runtime

    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: has_bf16)
    monkeypatch.setattr(hardware, "has_gpu", lambda: False)
    assert resolve_runtime("auto", _Fake(), "bf16") == ("openvino" if has_bf16 else "keras")
    assert resolve_runtime("auto", _Fake(), "fp32") == "openvino"
    if has_bf16:
        return
    with pytest.raises(RuntimeUnavailable, match=r"no avx512_bf16 or AMX.*--precision fp32"):
        make_runner(_Fake(), "openvino", "bf16")
    with pytest.warns(UserWarning, match="emulates bf16"):
        runner = make_runner(_Fake(), "auto", "bf16")
    assert runner.runtime == "keras"
