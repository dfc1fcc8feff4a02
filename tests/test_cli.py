"""The CLI as a user runs it: one-line summaries, clear one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from featx.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_index_cache_inspect_chain(kaggle_dir, tmp_path):
    manifest = tmp_path / "m.csv"
    result = invoke("index", kaggle_dir, "-o", manifest, "--val", "0.2", "--test", "0.2", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert f"{manifest}: 40 images, 2 classes" in result.output.splitlines()[-1]
    assert "kaggle" in result.output

    result = invoke("cache", manifest, "--extractor", "hog", "--opt", "size=32", "--cache-dir", tmp_path / "c",
                    "--workers", "1")
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert "40 rows (40 computed, 0 failed)" in last and "img/s" in last
    cache_file = next((tmp_path / "c").glob("*.h5"))
    with h5py.File(cache_file) as h5:
        assert h5["features"].shape[0] == 40

    result = invoke("cache", manifest, "--extractor", "hog", "--opt", "size=32", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0
    assert "already complete (40 rows); nothing to do" in result.output

    result = invoke("inspect", cache_file, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rows"] == 40 and summary["extractor"] == "hog"
    assert summary["spec"]["params"]["size"] == 32
    assert sum(summary["splits"]["train"].values()) + sum(summary["splits"].get("val", {}).values()) + \
        sum(summary["splits"].get("test", {}).values()) == 40

    result = invoke("inspect", cache_file)
    assert result.exit_code == 0 and "hog" in result.output.splitlines()[-1]


def test_cache_straight_from_a_folder(kaggle_dir, tmp_path):
    result = invoke("cache", kaggle_dir, "-e", "hog", "--opt", "size=32", "--cache-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("*-train-hog-*.h5"))) == 1


def test_bad_input_gets_one_clear_line_and_exit_2(kaggle_dir, tmp_path):
    cases = [
        (("index", tmp_path / "missing"), "does not exist"),
        (("cache", tmp_path / "missing", "-e", "hog"), "does not exist"),
        (("cache", kaggle_dir, "-e", "nope", "--cache-dir", tmp_path), "unknown extractor 'nope'"),
        (("cache", kaggle_dir, "-e", "hog", "--opt", "size", "--cache-dir", tmp_path), "is not KEY=VALUE"),
        (("cache", kaggle_dir, "-e", "hog", "--dtype", "int8", "--cache-dir", tmp_path), "dtype must be one of"),
        (("inspect", tmp_path / "nope.h5"), "does not exist"),
        (("index", kaggle_dir, "--layout", "weird", "-o", tmp_path / "x.csv"), "layout must be one of"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob("*.partial"))
    assert not (tmp_path / "x.csv").exists()


def test_extractors_lists_classical_ones():
    result = invoke("extractors", "--json")
    assert result.exit_code == 0, result.output
    names = {row["name"] for row in json.loads(result.output)}
    assert {"hog", "sift_bovw"} <= names


def test_help_has_examples():
    for command in ("index", "cache", "inspect", "extractors"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output


@pytest.mark.parametrize("command", ["cache", "predict", "evaluate", "imagenet"])
def test_runtime_openvino_without_openvino_is_one_line_before_tensorflow_loads(command, kaggle_dir, tmp_path):
    args = {"cache": [str(kaggle_dir), "--extractor", "vgg16", "--opt", "weights=none", "--cache-dir",
                      str(tmp_path / "c")],
            "predict": [str(tmp_path / "best.joblib"), str(kaggle_dir), "-o", str(tmp_path / "submission.csv"),
                        "--cache-dir", str(tmp_path / "c")],
            "evaluate": [str(tmp_path / "best.joblib"), str(kaggle_dir), "--cache-dir", str(tmp_path / "c")],
            "imagenet": [str(kaggle_dir / "cat.0.png"), "--extractor", "vgg16"]}[command]
    script = ("import sys; sys.modules['openvino'] = None\n"  # `import openvino` now raises ImportError
              "from featx.cli import app\n"
              "try:\n"
              f"    app({[command, *args, '--runtime', 'openvino']!r}, prog_name='featx')\n"
              "finally:\n"
              "    print('tensorflow loaded:', 'tensorflow' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    # The runtime is checked first: not "no such model", and before TensorFlow loads.
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["error: --runtime openvino: openvino is not installed; pip install 'openvino>=2024.0' "
                     "(or use --runtime keras)"], done.stderr
    assert "tensorflow loaded: False" in done.stdout
    assert not (tmp_path / "c").exists() and not (tmp_path / "submission.csv").exists()
