"""OpenVINO int8 (NNCF): deterministic calibration, IR reuse and invalidation, and its own cache spec.
(A missing openvino gives one line: tests/test_cli.py.)"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_kaggle_images
from featx.cli import app
from featx.data import build_manifest
from featx.runtime import make_runner
from test_runtime_openvino import _Fake

pytest.importorskip("openvino")
# Looked up, not imported: importing nncf takes 1.6 s, paid at collection by every xdist worker.
pytestmark = pytest.mark.skipif(find_spec("nncf") is None, reason="int8 needs nncf (the cpu extra)")
from featx.runtime import openvino as ov_runtime  # noqa: E402

cli = CliRunner()


@pytest.fixture
def photos(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATX_WEIGHTS", str(tmp_path / "w"))
    return make_kaggle_images(tmp_path / "photos", 6)


class _Small(_Fake):
    """The stand-in at the pipeline's image size (32 px)."""

    parallel = "model"
    preprocessing = {"size": [32, 32]}


def _int8(manifest, extractor, seed=0):
    calibration = ov_runtime.calibration_set(manifest, size=8, seed=seed)
    return make_runner(extractor, "openvino", "int8", calibration=calibration), calibration


def _batch(manifest, n=6):
    from featx.datasets import decode_group

    images, ok, _ = decode_group(str(manifest.root), [r.path for r in manifest.records[:n]], {"size": [32, 32]})
    assert ok.all()
    return images


def test_int8_calibration_is_deterministic_reused_and_invalidated(photos, tmp_path, monkeypatch):
    manifest = build_manifest(photos, val=0.2, test=0.2, seed=0)
    before = dict(ov_runtime.CONVERSIONS)
    first, calibration = _int8(manifest, _Small())
    assert first.converted and first.xml.parent.name.endswith(f"-int8-{calibration.fingerprint}")
    assert first.xml.parent.parent == first.fp32_xml.parent.parent  # beside the fp32 IR
    features = first(_batch(manifest))
    fp32 = make_runner(_Small(), "openvino", "fp32")(_batch(manifest))
    cosine = (features * fp32).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(fp32, axis=1)
    assert cosine.min() > 0.98, cosine  # quantized, yet the same features
    assert not np.array_equal(features, fp32)  # ... and really int8

    # Reuse: a second runner (same spec, weights and calibration) converts and quantizes nothing.
    mtime = first.xml.stat().st_mtime_ns
    again, _ = _int8(manifest, _Small())
    assert not again.converted and again.xml == first.xml and again.xml.stat().st_mtime_ns == mtime
    assert again.compiled is first.compiled  # compiled once per process
    assert ov_runtime.CONVERSIONS["quantize"] == before.get("quantize", 0) + 1
    assert ov_runtime.CONVERSIONS["convert"] == before.get("convert", 0) + 1
    np.testing.assert_array_equal(again(_batch(manifest)), features)

    # Deterministic: the same seed in a fresh weights folder quantizes to the same IR, same features.
    monkeypatch.setenv("FEATX_WEIGHTS", str(tmp_path / "w2"))
    fresh, _ = _int8(manifest, _Small())
    assert fresh.converted and fresh.xml != first.xml
    assert fresh.xml.with_suffix(".bin").read_bytes() == first.xml.with_suffix(".bin").read_bytes()
    np.testing.assert_array_equal(fresh(_batch(manifest)), features)

    # Invalidation: another seed (other calibration images), other weights, other spec -> new IRs.
    other_seed, other_calibration = _int8(manifest, _Small(), seed=1)
    assert other_calibration.fingerprint != calibration.fingerprint and other_seed.converted
    other_weights, _ = _int8(manifest, _Small(seed=1))
    other_spec, _ = _int8(manifest, _Small(tag="b"))
    folders = {first.xml.parent.name, other_seed.xml.parent.name, other_weights.xml.parent.name,
               other_spec.xml.parent.name}
    assert len(folders) == 4 and other_weights.converted and other_spec.converted


def test_calibration_fingerprint_follows_the_images(photos):
    manifest = build_manifest(photos, val=0.2, test=0.2, seed=0)
    calibration = ov_runtime.calibration_set(manifest, size=4, seed=0)
    assert len(calibration.paths) == 4
    assert all(r.split == "train" for r in manifest.records if r.path in calibration.paths)
    assert ov_runtime.calibration_set(manifest, size=4, seed=0) == calibration
    first = Path(photos) / calibration.paths[0]
    first.write_bytes(first.read_bytes() + b"\0")  # an edited image: another sha1
    edited = build_manifest(photos, val=0.2, test=0.2, seed=0)
    assert ov_runtime.calibration_set(edited, size=4, seed=0).fingerprint != calibration.fingerprint


def test_cli_int8_cache_is_its_own_spec(photos, tmp_path):
    base = ["cache", str(photos), "--extractor", "vgg16", "--opt", "weights=none", "--opt", "layer=block1_pool",
            "--opt", "pool=avg", "--runtime", "openvino", "--workers", "1"]
    caches = {}
    for precision in ("fp32", "int8"):
        result = cli.invoke(app, [*base, "--precision", precision, "--cache-dir", str(tmp_path / precision)])
        assert result.exit_code == 0, result.output
        (path,) = (tmp_path / precision).glob("*.h5")
        with h5py.File(path) as h5:
            caches[precision] = (path.name, h5["features"][:], dict(h5.attrs))
    assert caches["fp32"][0] != caches["int8"][0]  # int8 never mixes with fp32 caches
    assert "int8_calibration" in caches["int8"][2] and "int8_calibration" not in caches["fp32"][2]
    a, b = caches["fp32"][1], caches["int8"][1]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert a.shape == b.shape and cosine.min() > 0.98


def test_random_weights_never_share_an_ir(tmp_path, monkeypatch):
    """No weights file (weights=none): the IR is keyed by the weight values, so two random
    initialisations get two IRs and each gives its own Keras features."""
    monkeypatch.setenv("FEATX_WEIGHTS", str(tmp_path / "w"))

    class _Random(_Small):
        def weights_fingerprint(self):
            return None

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    runners = [make_runner(_Random(seed=seed), "openvino", "fp32") for seed in (0, 1)]
    assert runners[0].xml != runners[1].xml and all(r.converted for r in runners)
    for seed, runner in zip((0, 1), runners):
        np.testing.assert_allclose(runner(images), make_runner(_Random(seed=seed), "keras")(images),
                                   rtol=1e-4, atol=1e-5)
    assert not make_runner(_Random(seed=0), "openvino", "fp32").converted  # same values: reused
