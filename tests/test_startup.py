"""featx predict, evaluate, cache and imagenet on OpenVINO import neither TensorFlow nor Keras once the IR exists.

Each check runs the real CLI in a subprocess with the user's environment (no ``TF_CPP_MIN_LOG_LEVEL``):
a wrapper calls ``featx.cli.app`` in-process and then prints which ``tensorflow``/``keras`` modules
got loaded. The backbone is ``keras:mobilenet_v2`` at 32 px with seeded random weights from a file
(nothing downloads); its OpenVINO IR goes to the test session's ``FEATX_WEIGHTS``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import KERAS_BACKEND, make_image, make_kaggle_images, save_mobilenet_weights

TESTS = Path(__file__).resolve().parent
# The CLI in this process, then which of the slow-to-import packages it loaded, on the last stderr line.
WRAPPER = """
import json, re, sys
sys.path.insert(0, {tests!r})
{setup}
from featx.cli import app
try:
    app(prog_name="featx")
finally:
    heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"tensorflow", "keras", "sklearn", "scipy"}})
    print("HEAVY-MODULES " + json.dumps(heavy), file=sys.stderr)
"""
TF_CHATTER = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard")
BACKBONE = ["-e", "keras:mobilenet_v2", "--opt", "input_size=32"]


def user_env() -> dict:
    """The environment a user's shell has: the test session's weights folder, no TensorFlow log level."""
    return {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}


def featx(*args, setup: str = "", cwd: Path | None = None) -> tuple[int, str, list[str]]:
    """Run ``featx ARGS`` in a subprocess: (exit code, whole output, which of tensorflow, keras, sklearn and
    scipy it imported)."""
    code = WRAPPER.format(tests=str(TESTS), setup=setup)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=user_env(), cwd=cwd, timeout=600)
    marker = re.search(r"^HEAVY-MODULES (.*)$", proc.stderr, re.M)
    assert marker, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr[:marker.start()] + proc.stderr[marker.end():]
    return proc.returncode, output, json.loads(marker.group(1))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A MobileNetV2 cache of 40 images (its IR converted on the way), a logreg sweep, held-out folders."""
    base = tmp_path_factory.mktemp("startup")
    weights = save_mobilenet_weights(base / "mobilenet_v2.weights.h5")
    train = make_kaggle_images(base / "train", 20)
    holdout = base / "holdout"
    for i in range(6):
        make_image(holdout / f"cat.{i}.png", "cat", 300 + i)
        make_image(holdout / f"dog.{i}.png", "dog", 400 + i)
    test1 = base / "test1"
    for i in range(1, 7):
        make_image(test1 / f"{i}.png", "cat" if i % 2 else "dog", 500 + i)
    options = [*BACKBONE, "--opt", f"weights={weights}"]
    code, output, _ = featx("cache", train, *options, "--cache-dir", base / "cache", cwd=base)
    assert code == 0, output
    cache = next((base / "cache").glob("*.h5"))
    code, output, _ = featx("sweep", cache, "--heads", "logreg", "--cv", "3", "--n-boot", "20",
                            "--no-learning-curve", "--out", base / "experiments" / "mobilenet", cwd=base)
    assert code == 0, output
    return {"base": base, "train": train, "holdout": holdout, "test1": test1, "cache": cache, "options": options,
            "experiment": base / "experiments" / "mobilenet"}


def assert_quiet(output: str) -> None:
    assert not [line for line in output.splitlines() if any(word in line for word in TF_CHATTER)], output


def test_predict_evaluate_and_cache_import_no_tensorflow_with_a_warm_ir(experiment, tmp_path):
    base = experiment["base"]
    submission = tmp_path / "submission.csv"
    code, output, heavy = featx("predict", experiment["experiment"] / "best.joblib", experiment["test1"],
                                "-o", submission, "--cache-dir", tmp_path / "cache", cwd=base)
    assert code == 0, output
    assert not {"tensorflow", "keras"} & set(heavy), f"predict imported {heavy}:\n{output}"
    assert re.search(r"model: \w+ on keras:mobilenet_v2 features \(1280 dims\)", output), output
    assert f"{submission}: 6 rows, 6 predicted;" in output
    assert_quiet(output)
    with open(submission, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "label"] and [row[0] for row in rows[1:]] == [str(i) for i in range(1, 7)]
    assert all(0.0 < float(row[1]) < 1.0 for row in rows[1:])
    # Again: the features come from the cache and the head from its compiled copy: none of the four loads.
    code, again, heavy = featx("predict", experiment["experiment"] / "best.joblib", experiment["test1"],
                               "-o", tmp_path / "again.csv", "--cache-dir", tmp_path / "cache", cwd=base)
    assert code == 0 and heavy == [], f"{heavy}\n{again}"
    assert "6 rows, 6 predicted (features reused from the cache)" in again
    assert (tmp_path / "again.csv").read_text() == submission.read_text()

    code, output, heavy = featx("evaluate", experiment["experiment"], experiment["holdout"], "--n-boot", "20",
                                "--cache-dir", tmp_path / "cache", cwd=base)
    assert code == 0, output
    assert not {"tensorflow", "keras"} & set(heavy), f"evaluate imported {heavy}:\n{output}"
    assert re.search(r"accuracy \d\.\d{3} \[.*\] on 12 images", output), output
    assert_quiet(output)

    # A new cache of the training folder: the model runs (nothing reused), from the IR the fixture converted.
    code, output, heavy = featx("cache", experiment["train"], *experiment["options"], "--cache-dir",
                                tmp_path / "fresh", "--runtime", "openvino", cwd=base)
    assert code == 0, output
    assert not {"tensorflow", "keras"} & set(heavy), f"cache imported {heavy}:\n{output}"
    assert re.search(r": 40 rows \(40 computed, 0 failed\)", output), output


def _write_bundle(experiment, path: Path, members: list[str]) -> Path:
    """best.joblib whose model is a WeightedEnsemble of ``members`` heads fitted on the cache's train rows."""
    from featx.artifacts.results import SweepBundle
    from featx.features import load_feature_set
    from featx.heads import WeightedEnsemble, make_head

    fs = load_feature_set([experiment["cache"]])
    grids = {"dense": {"head__hidden_units": 4, "head__epochs": 2, "head__patience": None}}
    fitted = [make_head(name, random_state=0).set_params(**grids.get(name, {})).fit(fs.X, fs.y) for name in members]
    columns = [list(range(fs.X.shape[1]))] * len(members)
    model = WeightedEnsemble.from_fitted(fitted, [1.0] * len(members), columns, np.arange(len(fs.label_names)))
    SweepBundle(model=model, label_names=fs.label_names, extractors=fs.extractors, dims=fs.dims, head="ensemble",
                members=[{"config": i, "head": name, "weight": 1.0} for i, name in enumerate(members)]).write(path)
    return path


def test_an_ensemble_of_scikit_learn_heads_imports_no_keras_and_a_dense_member_only_once(experiment, tmp_path):
    """Unpickling a dense member loads Keras; its compiled copy (numpy) does not, so a second predict runs without."""
    base = experiment["base"]
    for members, first_imports in ((["logreg", "linsvm"], {"sklearn", "scipy"}),
                                   (["logreg", "dense"], {"keras", "sklearn", "scipy"}
                                    | ({"tensorflow"} if KERAS_BACKEND == "tensorflow" else set()))):
        bundle = _write_bundle(experiment, tmp_path / f"{'-'.join(members)}.joblib", members)
        outputs = []
        for run in ("first", "second"):
            code, output, heavy = featx("predict", bundle, experiment["test1"], "-o", tmp_path / f"{run}.csv",
                                        "--cache-dir", tmp_path / "cache", cwd=base)
            assert code == 0, output
            assert "model: ensemble on keras:mobilenet_v2 features" in output and ": 6 rows, 6 predicted" in output
            assert set(heavy) == (first_imports if run == "first" else set()), f"{members} {run}: {heavy}\n{output}"
            outputs.append((tmp_path / f"{run}.csv").read_text())
        assert outputs[0] == outputs[1]


def test_keras_application_preprocessing_is_computed_without_keras_and_equals_keras(tmp_path):
    """Every keras.applications backbone's preprocess_input, in numpy (a subprocess proves Keras stays out)."""
    from featx.backbones import preprocess
    from featx.backbones.keras_apps import KERAS_APPLICATIONS

    batch = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3)).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    script = (f"import sys, numpy as np\n"
              f"from featx.backbones import preprocess\n"
              f"from featx.backbones.keras_apps import KERAS_APPLICATIONS\n"
              f"batch = np.load({str(tmp_path / 'batch.npy')!r})\n"
              f"np.savez({str(tmp_path / 'out.npz')!r}, **{{name: preprocess(config, batch) "
              f"for name, config in KERAS_APPLICATIONS.items()}})\n"
              f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow'))[:3])\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=user_env(), timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    import importlib

    computed = np.load(tmp_path / "out.npz")
    for name, config in KERAS_APPLICATIONS.items():
        module = importlib.import_module(f"keras.applications.{config.keras_module}")
        expected = np.asarray(module.preprocess_input(batch.copy()), dtype=np.float32)
        np.testing.assert_allclose(computed[name], expected, rtol=1e-6, atol=1e-5, err_msg=name)
        assert computed[name].dtype == np.float32 and not np.shares_memory(computed[name], batch)
        np.testing.assert_array_equal(preprocess(config, batch), computed[name])


def test_imagenet_top_k_from_a_warm_ir_imports_no_tensorflow(experiment, tmp_path):
    weights = save_mobilenet_weights(tmp_path / "mobilenet_v2_top.weights.h5", include_top=True)
    images = [experiment["train"] / "cat.0.png", experiment["train"] / "dog.1.png"]
    args = ["imagenet", *images, "-e", "keras:mobilenet_v2", "--opt", f"weights={weights}", "--top", "3"]
    first = featx(*args, cwd=experiment["base"])  # converts the classifier to IR (TensorFlow loads for that)
    second = featx(*args, cwd=experiment["base"])
    assert first[0] == 0 and second[0] == 0, first[1] + second[1]
    assert first[2] != [] and second[2] == [], second[1]
    assert "2 image(s) classified with keras:mobilenet_v2" in second[1]
    assert_quiet(second[1])
    table = [line for line in second[1].splitlines() if re.match(r"\s+\d\.\d{3}\s", line)]
    assert len(table) == 6 and table == [line for line in first[1].splitlines() if re.match(r"\s+\d\.\d{3}\s", line)]


def test_a_fine_tune_leaves_its_ir_and_predicting_with_it_imports_no_tensorflow(tmp_path):
    import tiny_backbone
    from featx.runtime.ir import keras_file_ir

    weights = tiny_backbone.save_weights(tmp_path / "tinycnn.weights.h5")
    train = make_kaggle_images(tmp_path / "train", 12)
    test1 = tmp_path / "test1"
    for i in range(1, 5):
        make_image(test1 / f"{i}.png", "cat" if i % 2 else "dog", 700 + i)
    setup = "import tiny_backbone"
    steps = [("cache", train, "-e", "tinycnn", "--opt", f"weights={weights}", "--val", "0.25", "--test", "0.25",
              "--cache-dir", tmp_path / "cache"),
             ("sweep", tmp_path / "cache", "--heads", "logreg", "--cv", "3", "--n-boot", "20", "--no-learning-curve",
              "--out", tmp_path / "exp"),
             ("finetune", tmp_path / "exp", "--epochs", "1", "--unfreeze", "4", "--batch-size", "8", "--patience", "0",
              "--n-boot", "20")]
    for step in steps:
        if step[0] == "sweep":
            step = (step[0], next((tmp_path / "cache").glob("*.h5")), *step[2:])
        code, output, _ = featx(*step, setup=setup, cwd=tmp_path)
        assert code == 0, output
    assert keras_file_ir(tmp_path / "exp" / "finetune" / "model.keras").is_file()

    code, output, heavy = featx("predict", tmp_path / "exp" / "finetune", test1, "-o", tmp_path / "sub.csv",
                                setup=setup, cwd=tmp_path)
    assert code == 0 and heavy == [], f"{heavy}\n{output}"
    assert "model: fine-tuned tinycnn (2 classes)" in output
    assert f"{tmp_path / 'sub.csv'}: 4 rows, 4 predicted" in output
    assert_quiet(output)
    code, by_keras, heavy = featx("predict", tmp_path / "exp" / "finetune", test1, "-o", tmp_path / "keras.csv",
                                  "--runtime", "keras", setup=setup, cwd=tmp_path)
    assert code == 0 and "keras" in heavy, by_keras
    with open(tmp_path / "sub.csv") as a, open(tmp_path / "keras.csv") as b:
        ours, theirs = list(csv.reader(a))[1:], list(csv.reader(b))[1:]
    assert [r[0] for r in ours] == [r[0] for r in theirs]
    np.testing.assert_allclose([float(r[1]) for r in ours], [float(r[1]) for r in theirs], atol=1e-5)

    # Its augmentation layers (inactive when predicting) do not stop an export either; the same probabilities.
    code, output, _ = featx("export", tmp_path / "exp" / "finetune", "-o", tmp_path / "export", setup=setup,
                            cwd=tmp_path)
    assert code == 0, output
    import openvino as ov

    from featx.images import load_image

    compiled = ov.Core().compile_model(str(tmp_path / "export" / "model.xml"), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    pixels = np.stack([load_image(test1 / f"{row[0]}.png", size=[32, 32], interpolation="area") for row in ours])
    np.testing.assert_allclose(compiled(pixels)[0][:, 1], [float(r[1]) for r in ours], atol=1e-4)


@pytest.mark.parametrize("preprocessing", ["standard", ["standard", "pca:5", "l2"], ["l2", "standard"], "pca:0.9"])
def test_compiled_heads_give_the_fitted_heads_probabilities(preprocessing):
    """featx.numpy_head: every head featx predict compiles, against scikit-learn's own predict_proba."""
    from featx.heads import WeightedEnsemble, class_probabilities, make_head
    from featx.numpy_head import TOLERANCE, compile_head

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((240, 12)) * 3 + 1).astype(np.float32)
    three = (X[:, 0] + X[:, 1] > 2).astype(int) + (X[:, 2] > 2).astype(int)
    new = (rng.standard_normal((50, 12)) * 3 + 1).astype(np.float32)
    dense = {"head__hidden_units": 6, "head__epochs": 3, "head__patience": None, "head__learning_rate": 1e-2}
    for y in (three, (three > 0).astype(int)):
        n_classes = len(np.unique(y))
        fitted = {name: make_head(name, preprocessing, random_state=0).set_params(**(dense if name == "dense" else {}))
                  .fit(X, y) for name in ("logreg", "linsvm", "dense", "rbfsvm")}
        assert compile_head(fitted["rbfsvm"], n_classes, 12) is None  # a kernel SVM stays in scikit-learn
        ensemble = WeightedEnsemble.from_fitted([fitted["logreg"], fitted["linsvm"]], [3, 1], [list(range(12)),
                                                list(range(6, 12)) + list(range(6))], np.arange(n_classes))
        for name, model in [*((n, fitted[n]) for n in ("logreg", "linsvm", "dense")), ("ensemble", ensemble)]:
            if name == "ensemble":  # the second member reads its columns in another order
                ensemble.estimators_[1] = make_head("linsvm", preprocessing, random_state=0).fit(
                    X[:, list(range(6, 12)) + list(range(6))], y)
            head = compile_head(model, n_classes, 12)
            assert head is not None, (name, preprocessing)
            expected = class_probabilities(model, new, n_classes)
            got = head.predict_proba(new)
            assert got.shape == expected.shape == (50, n_classes)
            np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE, err_msg=f"{name} {preprocessing}")
            assert len(set(expected.argmax(axis=1))) > 1  # real, differing answers
