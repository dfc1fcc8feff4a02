"""Kaggle-grade output of featx predict / evaluate, run as a user runs them (the CLI in a subprocess).

Every file of the folder is a row (unreadable ones hold the model's class prior), ids come in Kaggle's
order, ``--clip`` clips what is written and what evaluate's log loss scores, and a scored folder's cache
never looks like a training cache (it sits under ``cache/scored/``, every row unlabeled, and
``featx sweep`` refuses it).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import make_image
from featx.artifacts.results import SweepBundle
from featx.cache import open_cache
from featx.data import build_manifest
from featx.extractors import get_extractor
from featx.pipeline import build_cache
from featx.predict import FineTunedModel, ModelError, load_model, predict, write_submission
from featx.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]
# stderr lines a clean predict/evaluate run may print besides the ones a test expects (no warning, no traceback).
PROGRESS = re.compile(r"^(model: logreg on hog features \(324 dims\)|hog features: .*|layout: .*)$")


def featx(*args) -> subprocess.CompletedProcess:
    """``featx ARGS`` in the user's environment (TensorFlow's log level left as a user has it)."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=str(REPO), COLUMNS="300")
    return subprocess.run([sys.executable, "-m", "featx.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def other_stderr(done: subprocess.CompletedProcess, expected: list[str]) -> list[str]:
    """stderr lines that are neither expected nor the model/progress/layout lines."""
    return [line for line in done.stderr.splitlines()
            if line.strip() and line not in expected and not PROGRESS.match(line)]


def read_submission(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A sweep of logistic regression on HoG features of 50 training images (30 cats, 20 dogs)."""
    base = tmp_path_factory.mktemp("submission")
    train = base / "data" / "train"
    for i in range(30):
        make_image(train / f"cat.{i}.png", "cat", i)
    for i in range(20):
        make_image(train / f"dog.{i}.png", "dog", 10_000 + i)
    cache = build_cache(build_manifest(train, val=0.2, test=0.2, seed=1), get_extractor("hog", size=32),
                        cache_dir=base / "cache", workers=1)
    run_sweep([[cache.path]], base / "experiments" / "hog", heads=["logreg"], cv=3, n_boot=50,
              learning_curve=False)
    bundle = base / "experiments" / "hog" / "best.joblib"
    saved = SweepBundle.read(bundle)
    prior = getattr(saved, "class_prior", None)  # train+val label frequencies, when the sweep records them
    return SimpleNamespace(base=base, cache_dir=base / "cache", training_cache=cache.path, bundle=bundle,
                           prior=np.full(2, 0.5) if prior is None else np.asarray(prior, dtype=float),
                           clip=getattr(saved, "clip", None) or 1e-15)


def kaggle_test_folder(root: Path) -> Path:
    """Kaggle's test1/: 1.png .. 10.png, then 11.jpg (zero bytes) and 12.jpg (a corrupt JPEG)."""
    for i in range(1, 11):
        make_image(root / f"{i}.png", "cat" if i % 2 else "dog", 50_000 + i)
    (root / "11.jpg").write_bytes(b"")
    (root / "12.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF truncated")
    return root


def holdout_folder(root: Path) -> Path:
    """8 cats and 8 dogs in Kaggle's train layout, plus a zero-byte cat and a corrupt dog."""
    for i in range(8):
        make_image(root / f"cat.{i}.png", "cat", 3_000 + i)
        make_image(root / f"dog.{i}.png", "dog", 13_000 + i)
    (root / "cat.100.jpg").write_bytes(b"")
    (root / "dog.100.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF truncated")
    return root


def hand_log_loss(submission: Path, eps: float) -> float:
    """Kaggle's binary log loss of a submission of a labelled folder (id cat.N / dog.N, label = P(dog))."""
    _, rows = read_submission(submission)
    is_dog = np.array([row[0].startswith("dog.") for row in rows])
    p_dog = np.clip(np.array([float(row[1]) for row in rows]), eps, 1 - eps)
    return float(-np.mean(np.where(is_dog, np.log(p_dog), np.log(1 - p_dog))))


# ---------------------------------------------------------------------------
def test_every_file_is_a_row_in_numeric_id_order_and_unreadable_ones_get_the_prior(experiment, tmp_path):
    folder = kaggle_test_folder(tmp_path / "test1")
    submission = tmp_path / "submission.csv"
    done = featx("predict", experiment.bundle, folder, "-o", submission, "--cache-dir", experiment.cache_dir,
                 "--workers", "1")
    assert done.returncode == 0, done.stdout + done.stderr

    header, rows = read_submission(submission)
    assert header == ["id", "label"]
    assert [row[0] for row in rows] == [str(i) for i in range(1, 13)]  # 10, 11, 12 after 9; none left out
    p_dog = np.array([float(row[1]) for row in rows])
    eps = experiment.clip
    assert p_dog[10:].tolist() == pytest.approx([np.clip(experiment.prior[1], eps, 1 - eps)] * 2, abs=1e-12)
    is_dog = np.arange(1, 11) % 2 == 0
    assert p_dog[:10][is_dog].min() > 0.5 > p_dog[:10][~is_dog].max()  # the readable ones are predicted

    prior = f"cat {experiment.prior[0]:.3g}, dog {experiment.prior[1]:.3g}"
    assert done.stdout.splitlines() == [
        f"{submission}: 12 rows, 10 predicted; 2 unreadable given the class prior ({prior}): 11.jpg, 12.jpg; "
        f"probabilities clipped to [{eps:g}, 1-{eps:g}] (the model's eps)"]
    expected = [f"2 unreadable image(s) get the class prior ({prior}):", "  11.jpg: zero-byte file",
                "  12.jpg: corrupt JPEG header"]
    assert [line for line in done.stderr.splitlines() if line in expected] == expected
    assert other_stderr(done, expected) == []


def test_the_prior_comes_from_the_model(experiment, tmp_path):
    """An unreadable image gets the prior the model records (a sweep's bundle, a fine-tune's model.json)."""
    folder = kaggle_test_folder(tmp_path / "test1")
    model = load_model(experiment.bundle)
    model.class_prior = np.array([0.3, 0.7])  # as a bundle recording these label frequencies would have it
    predictions = predict(model, folder, cache_dir=tmp_path / "cache", workers=1)
    assert predictions.imputed.sum() == 2 and predictions.n_predicted == 10
    assert predictions.proba[predictions.imputed].tolist() == [[0.3, 0.7], [0.3, 0.7]]
    assert predictions.proba[~predictions.imputed].min() < 0.1  # the others are the head's own answers
    assert sorted(path for path, _ in predictions.failed) == ["11.jpg", "12.jpg"]

    card = {"label_names": ["cat", "dog"], "input_size": [16, 16]}
    assert FineTunedModel(None, {**card, "class_prior": [1, 3]}).class_prior.tolist() == [0.25, 0.75]
    assert FineTunedModel(None, card).class_prior.tolist() == [0.5, 0.5]
    with pytest.raises(ModelError, match="class_prior \\[0.5\\] is not 2 non-negative frequencies"):
        FineTunedModel(None, {**card, "class_prior": [0.5]})


def test_clip_changes_what_is_written_and_evaluates_log_loss_as_by_hand(experiment, tmp_path):
    holdout = holdout_folder(tmp_path / "holdout")
    raw, clipped = tmp_path / "raw.csv", tmp_path / "clipped.csv"
    cache_dir = tmp_path / "cache"
    common = ["--cache-dir", cache_dir, "--workers", "1", "--layout", "kaggle"]
    done = featx("predict", experiment.bundle, holdout, "-o", raw, "--clip", "0", *common)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("probabilities clipped to [0, 1-0] (--clip eps)")
    done = featx("predict", experiment.bundle, holdout, "-o", clipped, "--clip", "0.05", *common)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("probabilities clipped to [0.05, 1-0.05] (--clip eps)")
    _, raw_rows = read_submission(raw)
    _, clipped_rows = read_submission(clipped)
    assert [row[0] for row in raw_rows] == [row[0] for row in clipped_rows]
    p_raw = np.array([float(row[1]) for row in raw_rows])
    p_clipped = np.array([float(row[1]) for row in clipped_rows])
    assert p_raw.min() < 0.05 and p_raw.max() > 0.95  # a confident model: the clip has work to do
    np.testing.assert_array_equal(p_clipped, np.clip(p_raw, 0.05, 0.95))  # written exactly, not rounded

    # evaluate: the same clip, the same default; unreadable images not counted (the submission's prior rows).
    readable = tmp_path / "readable.csv"
    with open(raw, newline="") as source, open(readable, "w", newline="") as target:
        csv.writer(target).writerows(row for row in csv.reader(source) if row[0] not in ("cat.100", "dog.100"))
    results = {}
    for clip, eps in (("0.05", 0.05), (None, experiment.clip)):
        args = ["--clip", clip] if clip else []
        done = featx("evaluate", experiment.bundle, holdout, "--cache-dir", cache_dir, "--workers", "1",
                     "--n-boot", "50", "--json", *args)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        results[clip] = result
        assert result["clip"] == eps and result["n_images"] == 16
        assert result["log_loss"] == pytest.approx(hand_log_loss(readable, eps), rel=1e-9)
        assert result["log_loss_low"] <= result["log_loss"] <= result["log_loss_high"]
        assert sorted(path for path, _ in result["failed"]) == ["cat.100.jpg", "dog.100.jpg"]
    assert hand_log_loss(readable, 0.05) != pytest.approx(hand_log_loss(readable, 1e-15))

    done = featx("evaluate", experiment.bundle, holdout, "--cache-dir", cache_dir, "--workers", "1",
                 "--n-boot", "50", "--clip", "0.05")
    assert done.returncode == 0, done.stderr
    accuracy = " ".join(format(results["0.05"][f"accuracy{end}"], ".3f") for end in ("", "_low", "_high"))
    assert done.stdout.splitlines()[-1] == (
        "accuracy {} [{}, {}] on 16 images (2 unreadable not counted); log loss ".format(*accuracy.split())
        + f"{hand_log_loss(readable, 0.05):.4f} with probabilities clipped to [0.05, 1-0.05] (--clip eps)")
    expected = ["2 unreadable image(s) not counted:", "  cat.100.jpg: zero-byte file",
                "  dog.100.jpg: corrupt JPEG header"]
    assert [line for line in done.stderr.splitlines() if line in expected] == expected
    assert other_stderr(done, expected) == []


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("eps", ["0.5", "-0.1", "nan"])
def test_a_clip_out_of_range_is_one_line(experiment, tmp_path, command, eps):
    folder = kaggle_test_folder(tmp_path / "test1")
    done = featx(command, experiment.bundle, folder, "-o" if command == "predict" else "--n-boot",
                 tmp_path / "submission.csv" if command == "predict" else "10", "--cache-dir", tmp_path / "cache",
                 f"--clip={eps}")
    assert done.returncode == 2
    shown = "nan" if eps == "nan" else f"{float(eps):g}"
    assert done.stderr.splitlines() == [
        f"error: --clip must be in [0, 0.5) (probabilities are clipped to [EPS, 1-EPS]); got {shown}"]
    assert not (tmp_path / "submission.csv").exists() and not (tmp_path / "cache").exists()


def test_clip_probabilities_is_the_one_clip():
    from featx.predict import clip_probabilities

    proba = np.array([[0.0, 1.0], [0.999, 0.001], [0.4, 0.6]])
    assert clip_probabilities(proba, 0.01).tolist() == [[0.01, 0.99], [0.99, 0.01], [0.4, 0.6]]
    assert clip_probabilities(proba, 0).tolist() == proba.tolist()
    with pytest.raises(ModelError, match="--clip must be in \\[0, 0.5\\)"):
        clip_probabilities(proba, 0.5)


def test_scored_folders_are_cached_apart_and_never_swept(experiment, tmp_path):
    """The README's main job: `featx evaluate best.joblib data/holdout`, then `ls cache/*-hog-*.h5` and a sweep."""
    holdout = holdout_folder(experiment.base / "data" / "holdout")
    done = featx("evaluate", experiment.bundle, holdout, "--cache-dir", experiment.cache_dir, "--workers", "1",
                 "--n-boot", "50")
    assert done.returncode == 0, done.stderr
    # `ls cache/*-hog-*.h5` still names the training cache alone.
    assert sorted(experiment.cache_dir.glob("*-hog-*.h5")) == [experiment.training_cache]
    assert sorted(experiment.cache_dir.glob("*.h5")) == [experiment.training_cache]
    scored, = (experiment.cache_dir / "scored").glob("holdout-hog-*.h5")
    with open_cache(scored) as cache:
        assert set(cache.split) == {"unlabeled"} and cache.n_rows == 16
        names = [cache.label_names[i] for i in cache.labels]  # the labels are kept (evaluate scores them)
        assert names == [Path(path).name.split(".")[0] for path in cache.paths]

    out = tmp_path / "swept"
    done = featx("sweep", scored, "--out", out, "--heads", "logreg", "--n-boot", "10", "--no-learning-curve")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {scored}"), done.stderr
    assert not (out / "best.joblib").exists()

    # predict caches there too, and a second run reuses the file.
    folder = kaggle_test_folder(tmp_path / "test1")
    first = predict(experiment.bundle, folder, cache_dir=experiment.cache_dir, workers=1)
    again = predict(experiment.bundle, folder, cache_dir=experiment.cache_dir, workers=1)
    assert first.caches[0].path.parent == experiment.cache_dir / "scored"
    assert again.caches[0].path == first.caches[0].path and again.caches[0].noop
    assert sorted(experiment.cache_dir.glob("*.h5")) == [experiment.training_cache]


def test_write_submission_clips_with_the_models_eps_by_default(experiment, tmp_path):
    folder = kaggle_test_folder(tmp_path / "test1")
    predictions = predict(experiment.bundle, folder, cache_dir=tmp_path / "cache", workers=1)
    predictions.clip = 0.1  # what a bundle whose sweep chose eps 0.1 hands on
    _, rows = read_submission(write_submission(predictions, tmp_path / "default.csv"))
    order = np.argsort([int(Path(p).stem) for p in predictions.paths])
    written = np.array([float(row[1]) for row in rows])
    np.testing.assert_array_equal(written, np.clip(predictions.proba[order, 1], 0.1, 0.9))
    _, rows = read_submission(write_submission(predictions, tmp_path / "given.csv", clip=0))
    np.testing.assert_array_equal([float(row[1]) for row in rows], predictions.proba[order, 1])
