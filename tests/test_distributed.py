"""Caching on a Dask cluster (a real LocalCluster of worker processes) gives the plain run's file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_kaggle_images
from featx import distributed
from featx.cli import app
from featx.data import build_manifest
from featx.extractors import get_extractor
from featx.pipeline import build_cache

pytest.importorskip("distributed")  # the optional `dask` extra, not a featx module


def _read(path):
    with h5py.File(path) as h5:
        return {name: h5[name][:] for name in ("features", "paths", "labels", "split")}


def test_local_cluster_cache_equals_plain_cache(tmp_path):
    folder = make_kaggle_images(tmp_path / "photos", 20)
    manifest = build_manifest(folder, val=0.2, test=0.2, seed=0)
    plain = build_cache(manifest, get_extractor("hog", size=32), cache_dir=tmp_path / "plain", workers=1,
                        shard_rows=8)
    lines = []
    on_cluster = distributed.build_cache(manifest, get_extractor("hog", size=32), "local:2",
                                         cache_dir=tmp_path / "dask", shard_rows=8, report=lines.append)
    assert plain.path.name == on_cluster.path.name  # same spec hash, same dataset fingerprint
    assert on_cluster.rows == plain.rows == 40 and on_cluster.computed == 40
    ours, theirs = _read(plain.path), _read(on_cluster.path)
    for name in ("paths", "labels", "split"):
        np.testing.assert_array_equal(ours[name], theirs[name])
    np.testing.assert_allclose(ours["features"], theirs["features"], rtol=1e-6)
    assert on_cluster.shards == 5 and sum(on_cluster.shards_by_worker.values()) == 5
    assert all(n == 1 for n in on_cluster.builds_by_worker.values())  # the extractor is built once per worker
    assert any("dashboard" in line for line in lines)


@pytest.mark.parametrize("extractor, options, named", [
    ("hog", ["--scheduler", "local:zero"], "local:zero"),
    ("hog", ["--scheduler", "local:2", "--runtime", "openvino"], "--runtime"),
    ("efficientnet_lite0", ["--scheduler", "local:2", "--precision", "int8"], "--precision int8"),
])
def test_bad_scheduler_is_one_line(tmp_path, extractor, options, named):
    folder = make_kaggle_images(tmp_path / "photos", 2)
    result = CliRunner().invoke(app, ["cache", str(folder), "--extractor", extractor, *options,
                                      "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("*.h5"))


def test_sweep_on_local_cluster_equals_local_sweep(tmp_path):
    import csv

    from featx.sweep import run_sweep

    folder = make_kaggle_images(tmp_path / "photos", 30)
    manifest = build_manifest(folder, val=0.2, test=0.25, seed=1)
    cache = build_cache(manifest, get_extractor("hog", size=32), cache_dir=tmp_path / "cache", workers=1).path
    options = dict(heads=("logreg", "linsvm"), cv=3, n_boot=50, learning_curve=False, seed=3)
    run_sweep([[cache]], tmp_path / "local", n_jobs=2, **options)
    lines = []
    run_sweep([[cache]], tmp_path / "dask", scheduler="local:2", report=lines.append, **options)

    def metrics(folder):
        with open(folder / "results.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        keep = ["select_accuracy", "select_log_loss", "accuracy", "accuracy_low", "accuracy_high", "roc_auc",
                "log_loss", "n_train", "n_test"]
        assert all(row[k] != "" for row in rows for k in ("select_accuracy", "accuracy", "log_loss"))
        return sorted((row["head"], row["params"], *[row[k] for k in keep]) for row in rows)

    local, on_cluster = metrics(tmp_path / "local"), metrics(tmp_path / "dask")
    assert len(local) >= 4 and local == on_cluster
    assert lines
