"""featx export: one model from uint8 RGB to class probabilities, equal to featx predict's within 1e-4.

Through the CLI in subprocesses (the user's environment, the test backbone ``tinycnn`` registered by the
wrapper of :mod:`test_startup`), on small images made here; the exported OpenVINO model is run with
``openvino`` alone, as the README shows, on the pixels featx decodes (resized as featx resizes).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import tiny_backbone
from conftest import make_image, make_kaggle_images
from conftest import save_mobilenet_weights
from test_startup import featx

TINY = "import tiny_backbone"


def run(*args, cwd: Path) -> str:
    """``featx ARGS`` with tinycnn registered; its whole output, after checking it succeeded."""
    code, output, _ = featx(*args, setup=TINY, cwd=cwd)
    assert code == 0, output
    return output


def submission(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return {row[0]: [float(v) for v in row[1:]] for row in rows[1:]}


def openvino_probabilities(folder: Path, images: list[Path]) -> np.ndarray:
    """The exported model on ``images``, each input fed the images decoded at its size as featx decodes them."""
    import openvino as ov

    from featx.images import load_image

    info = json.loads((folder / "export.json").read_text())
    compiled = ov.Core().compile_model(str(folder / info["model"]), "CPU", info["openvino_config"])
    feeds = {}
    for spec in info["inputs"]:
        port = compiled.input(spec["name"])
        assert port.get_element_type() == ov.Type.u8 and list(port.get_partial_shape()[1:].to_shape()) == [
            *spec["size"], 3]
        feeds[spec["name"]] = np.stack([load_image(p, size=spec["size"], interpolation="area") for p in images])
    return compiled(feeds)[compiled.output("probabilities")]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Three classes of 48 px images; tinycnn (32 px) and MobileNetV2 (48 px) caches; a folder to predict."""
    base = tmp_path_factory.mktemp("export")
    tiny_weights = tiny_backbone.save_weights(base / "tinycnn.weights.h5")
    mobilenet_weights = save_mobilenet_weights(base / "mobilenet_v2.weights.h5")
    train = base / "train"
    for label in ("a", "b", "c"):
        for i in range(12):
            make_image(train / label / f"{i}.png", label, i + 100 * ord(label))
    scored = base / "scored"
    for i in range(1, 10):
        make_image(scored / f"{i}.png", "abc"[i % 3], 900 + i)
    run("cache", train, "-e", "tinycnn", "--opt", f"weights={tiny_weights}", "--cache-dir", base / "cache", cwd=base)
    tiny_cache = next((base / "cache").glob("*tinycnn*.h5"))
    run("cache", train, "-e", "keras:mobilenet_v2", "--opt", f"weights={mobilenet_weights}", "--opt",
        "input_size=48", "--cache-dir", base / "cache", cwd=base)
    mobilenet_cache = next((base / "cache").glob("*mobilenet*.h5"))
    run("cache", train, "-e", "hog", "--opt", "size=32", "--cache-dir", base / "cache", cwd=base)
    hog_cache = next((base / "cache").glob("*hog*.h5"))
    return {"base": base, "scored": scored, "tiny": tiny_cache, "mobilenet": mobilenet_cache, "hog": hog_cache,
            "images": sorted(scored.glob("*.png"), key=lambda p: int(p.stem))}


def predicted(project, model: Path, tmp_path: Path) -> np.ndarray:
    """featx predict's unclipped probabilities (--clip 0) of the scored images, one row each, id order."""
    out = tmp_path / "submission.csv"
    run("predict", model, project["scored"], "-o", out, "--clip", "0", "--cache-dir", tmp_path / "cache",
        cwd=project["base"])
    rows = submission(out)
    return np.array([rows[p.stem] for p in project["images"]])


def test_best_row_with_standardization_pca_and_l2_folded_in(project, tmp_path):
    experiment = project["base"] / "experiments" / "tiny"
    run("sweep", project["tiny"], "--heads", "logreg", "--preprocessing", "standard,pca:8,l2", "--cv", "3",
        "--n-boot", "20", "--no-learning-curve", "--no-ensemble", "--out", experiment, cwd=project["base"])
    output = run("export", experiment, cwd=project["base"])
    folder = experiment.with_name("tiny-export")
    assert f"{folder / 'model.xml'}: logreg on tinycnn features (16 dims) from {experiment / 'best.joblib'}; " \
           f"uint8 RGB in (image 32x32), 3 class probabilities out (a, b, c)" in output
    assert sorted(p.name for p in folder.iterdir()) == ["export.json", "labels.txt", "model.bin", "model.xml"]
    assert (folder / "labels.txt").read_text() == "a\nb\nc\n"
    expected = predicted(project, experiment, tmp_path)
    assert len(set(expected.argmax(axis=1))) > 1  # the model tells classes apart: a comparison of real answers
    np.testing.assert_allclose(openvino_probabilities(folder, project["images"]), expected, atol=1e-4, rtol=0)

    # Again, as model.keras (loads with featx's layers registered): the same probabilities.
    run("export", experiment, "-o", tmp_path / "keras-export", "--format", "keras", cwd=project["base"])
    import keras

    from featx.images import load_image
    from featx.training import custom_objects

    model = keras.saving.load_model(tmp_path / "keras-export" / "model.keras", custom_objects=custom_objects())
    pixels = np.stack([load_image(p, size=[32, 32], interpolation="area") for p in project["images"]])
    np.testing.assert_allclose(model.predict_on_batch(pixels), expected, atol=1e-4, rtol=0)

    # Exporting over a folder that is not an export is refused, and the folder is left as it was.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, output, _ = featx("export", experiment, "-o", tmp_path / "mine", setup=TINY, cwd=project["base"])
    assert code == 2 and "is not a featx export folder" in output and len(output.strip().splitlines()) == 1
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def _ensemble_bundle(caches: list[Path], heads: list[str], weights: list[float], path: Path) -> Path:
    """best.joblib as featx sweep writes an ensemble: members on their own caches, columns side by side."""
    from featx.artifacts.results import SweepBundle
    from featx.features import load_feature_set
    from featx.heads import WeightedEnsemble, make_head

    sets = [load_feature_set([cache]) for cache in caches]
    fitted = [make_head(head, random_state=0).fit(fs.X, fs.y) for head, fs in zip(heads, sets)]
    bounds = np.cumsum([0, *[fs.X.shape[1] for fs in sets]])
    columns = [list(range(bounds[i], bounds[i + 1])) for i in range(len(sets))]
    model = WeightedEnsemble.from_fitted(fitted, weights, columns, np.arange(len(sets[0].label_names)))
    SweepBundle(model=model, label_names=sets[0].label_names, extractors=[e for fs in sets for e in fs.extractors],
                dims=[d for fs in sets for d in fs.dims], head="ensemble", config=9,
                members=[{"config": i, "head": h, "weight": w} for i, (h, w) in enumerate(zip(heads, weights))]
                ).write(path)
    return path


def test_an_ensemble_becomes_one_multi_branch_graph(project, tmp_path):
    experiment = tmp_path / "experiments" / "ensemble"
    experiment.mkdir(parents=True)
    _ensemble_bundle([project["tiny"], project["mobilenet"]], ["logreg", "linsvm"], [2.0, 1.0],
                     experiment / "best.joblib")
    output = run("export", experiment, "-o", tmp_path / "out", cwd=project["base"])
    assert "uint8 RGB in (image_32x32 32x32, image_48x48 48x48), 3 class probabilities out" in output
    expected = predicted(project, experiment, tmp_path)
    assert len(set(expected.argmax(axis=1))) > 1
    got = openvino_probabilities(tmp_path / "out", project["images"])
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_hog_members_are_refused_naming_the_rows_that_can_be_exported(project, tmp_path):
    experiment = project["base"] / "experiments" / "mixed"
    run("sweep", project["tiny"], project["hog"], "--heads", "logreg", "--cv", "3", "--n-boot", "20",
        "--no-learning-curve", "--out", experiment, cwd=project["base"])
    rows = json.loads((experiment / "results.json").read_text())["rows"]
    tiny_rows = [int(r["config"]) for r in rows if r["features"].startswith("tinycnn") and r["head"] == "logreg"]
    _ensemble_bundle([project["tiny"], project["hog"]], ["logreg", "logreg"], [1.0, 1.0], experiment / "best.joblib")
    code, output, _ = featx("export", experiment, "-o", tmp_path / "out", setup=TINY, cwd=project["base"])
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert "features of hog, which no network computes, so it cannot be one graph" in output
    assert f"rows that can be exported: config {tiny_rows[0]} (logreg on tinycnn" in output
    assert not (tmp_path / "out").exists()


def test_a_fine_tuned_folder_and_onnx(project, tmp_path):
    from test_predict import save_finetune_folder

    folder = tmp_path / "experiments" / "x" / "finetune"
    save_finetune_folder(folder, ["cat", "dog"], input_size=(16, 16), sigmoid=True)
    images = project["images"]
    output = run("export", folder, cwd=project["base"])
    exported = tmp_path / "experiments" / "x-finetune-export"
    assert f"{exported / 'model.xml'}: fine-tuned keras model (2 classes)" in output
    out = tmp_path / "submission.csv"
    run("predict", folder, project["scored"], "-o", out, "--clip", "0", cwd=project["base"])
    expected = np.array([[1 - p[0], p[0]] for p in map(submission(out).get, [p.stem for p in images])])
    np.testing.assert_allclose(openvino_probabilities(exported, images), expected, atol=1e-4, rtol=0)

    code, output, _ = featx("export", folder, "--format", "onnx", "-o", tmp_path / "onnx", setup=TINY,
                            cwd=project["base"])
    import importlib.util

    if importlib.util.find_spec("tf2onnx") is None or importlib.util.find_spec("onnx") is None:
        assert code == 2 and "--format onnx needs" in output and "pip install" in output, output
        assert len(output.strip().splitlines()) == 1 and not (tmp_path / "onnx").exists()
    else:  # pragma: no cover - where an ONNX exporter is installed
        assert code == 0 and (tmp_path / "onnx" / "model.onnx").is_file(), output
