"""Issue 9's bugs, each reproduced as a user meets it (these failed on the code before the fix)."""

from __future__ import annotations

import h5py
import numpy as np
from typer.testing import CliRunner

from conftest import make_image, make_kaggle_images
from featx.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _index_and_cache(folder, manifest, cache_dir, seed=0):
    result = invoke("index", folder, "-o", manifest, "--seed", seed, "--val", "0.2", "--test", "0.2")
    assert result.exit_code == 0, result.output
    result = invoke("cache", manifest, "--extractor", "hog", "--opt", "size=32", "--cache-dir", cache_dir,
                    "--workers", "1")
    assert result.exit_code == 0, result.output


def test_two_datasets_with_one_folder_name_get_two_caches(tmp_path):
    """Bug 4: a/photos and b/photos in one --cache-dir used to publish over each other."""
    first = make_kaggle_images(tmp_path / "a" / "photos", 6)
    second = tmp_path / "b" / "photos"
    for i in range(9):
        make_image(second / f"cat.{i}.png", "cat", 500 + i)
        make_image(second / f"dog.{i}.png", "dog", 600 + i)
    cache_dir = tmp_path / "cache"
    _index_and_cache(first, tmp_path / "a.csv", cache_dir)
    _index_and_cache(second, tmp_path / "b.csv", cache_dir)
    files = sorted(cache_dir.glob("*.h5"))
    assert len(files) == 2
    rows = sorted(h5py.File(f)["features"].shape[0] for f in files)
    assert rows == [12, 18]


def test_same_folder_other_seed_gets_its_own_cache_with_its_own_split(tmp_path):
    """Bug 4: the same folder indexed with another --seed used to overwrite the first split's cache."""
    folder = make_kaggle_images(tmp_path / "photos", 10)
    cache_dir = tmp_path / "cache"
    _index_and_cache(folder, tmp_path / "s0.csv", cache_dir, seed=0)
    _index_and_cache(folder, tmp_path / "s1.csv", cache_dir, seed=1)
    files = sorted(cache_dir.glob("*.h5"))
    assert len(files) == 2
    splits = []
    for f in files:
        with h5py.File(f) as h5:
            order = np.argsort(h5["paths"].asstr()[:])
            splits.append(h5["split"].asstr()[:][order].tolist())
    assert splits[0] != splits[1]


def test_unicode_kaggle_labels(tmp_path):
    """Bug 8: dög.1.png beside cat.1.png used to turn the whole folder unlabeled."""
    folder = tmp_path / "photos"
    for i in range(5):
        make_image(folder / f"cat.{i}.png", "cat", i)
        make_image(folder / f"dög.{i}.png", "dog", 100 + i)
    result = invoke("index", folder, "-o", tmp_path / "m.csv")
    assert result.exit_code == 0, result.output
    assert "10 images, 2 classes" in result.output.splitlines()[-1]
    assert "dög" in (tmp_path / "m.csv").read_text(encoding="utf-8")


def test_manifest_with_missing_columns_is_one_line(tmp_path):
    """Bug 5: a manifest without the expected columns used to end in a KeyError traceback."""
    make_kaggle_images(tmp_path / "photos", 2)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,colour\ncat.0.png,red\n", encoding="utf-8")
    result = invoke("cache", bad, "--extractor", "hog", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 2, result.output
    assert "bad.csv" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("*.h5"))


def test_unreadable_file_during_index_is_skipped_and_reported(tmp_path):
    """Bug 5: an unreadable image while hashing used to end `featx index` in an ImageError traceback."""
    folder = make_kaggle_images(tmp_path / "photos", 4)
    (folder / "cat.99.png").symlink_to(tmp_path / "gone.png")  # listed, but cannot be opened
    result = invoke("index", folder, "-o", tmp_path / "m.csv")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "cat.99.png" in result.output
    assert "8 images, 2 classes" in result.output.splitlines()[-1]


def test_unknown_extractor_option_is_one_line(tmp_path):
    """Bug 5: `--opt pooling=avg` (a Keras-style spelling) used to end in a TypeError traceback."""
    folder = make_kaggle_images(tmp_path / "photos", 2)
    for extractor in ("hog", "vgg16", "efficientnet_lite0"):
        result = invoke("cache", folder, "--extractor", extractor, "--opt", "pooling=avg", "--cache-dir",
                        tmp_path / "c")
        assert result.exit_code == 2, result.output
        assert "pooling" in result.output and "Traceback" not in result.output
        if extractor != "hog":  # a Keras spelling: featx says what it is called here
            assert "spelled pool=" in result.output
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("*.h5"))


def test_mixed_label_like_and_other_names_say_so(tmp_path):
    """Bug 8: a folder mixing cat.N.png with other names used to turn unlabeled without a word."""
    folder = make_kaggle_images(tmp_path / "photos", 3)
    make_image(folder / "IMG_0001.png", "x", 7)
    result = invoke("index", folder, "-o", tmp_path / "m.csv")
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "IMG_0001.png" in result.output


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_sweep_of_a_file_featx_did_not_write_never_advises_deleting_it(tmp_path):
    """Bug 7: `featx sweep /etc/passwd` used to advise "delete it and run featx cache again"."""
    foreign_h5 = tmp_path / "measurements.h5"
    with h5py.File(foreign_h5, "w") as h5:
        h5.create_dataset("features", data=np.zeros((2, 3)))  # even a dataset of that name: no featx attributes
    for path in ("/etc/passwd", foreign_h5):
        line = _one_error_line(invoke("sweep", path, "--out", tmp_path / "exp"))
        assert f"{path} is" in line and "not a featx cache" in line
        assert "delete" not in line and "featx cache DIR --extractor NAME" in line
    assert not (tmp_path / "exp").exists()


def test_sweep_of_a_damaged_featx_cache_advises_rebuilding_it(tmp_path):
    """Bug 7: a cache featx wrote that lost a dataset may be deleted and rebuilt."""
    folder = make_kaggle_images(tmp_path / "photos", 6)
    _index_and_cache(folder, tmp_path / "m.csv", tmp_path / "cache")
    (cache,) = (tmp_path / "cache").glob("*.h5")
    with h5py.File(cache, "a") as h5:
        del h5["paths"]
    line = _one_error_line(invoke("sweep", cache, "--out", tmp_path / "exp"))
    assert "damaged featx cache (missing paths); delete it and run featx cache again" in line


def _failing_sweep(error):
    def run_sweep(*args, **kwargs):
        raise error
    return run_sweep


def test_a_featx_bug_raising_value_error_keeps_its_traceback(tmp_path, monkeypatch):
    """Bug 5: every ValueError used to be printed as a user error, hiding real bugs."""
    import featx.sweep

    monkeypatch.setattr(featx.sweep, "run_sweep", _failing_sweep(ValueError("operands could not be broadcast")))
    result = invoke("sweep", tmp_path / "any.h5", "--out", tmp_path / "exp")
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    assert "error:" not in result.output


def test_image_error_inside_tf_py_function_is_one_line_through_the_cli(tmp_path, monkeypatch):
    """Bug 5: an unreadable image decoded inside tf.data (tf.py_function) used to end in an OpError traceback;
    a TensorFlow error that hides no user error stays a traceback."""
    import tensorflow as tf

    import featx.sweep
    from featx.images import ImageError, load_image

    broken = tmp_path / "cat.1.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")

    def decode_in_tf_data(*args, **kwargs):
        decode = lambda index: np.asarray(load_image(broken, size=(8, 8)), np.float32)  # noqa: E731
        list(tf.data.Dataset.range(1).map(lambda i: tf.py_function(decode, [i], tf.float32)))

    monkeypatch.setattr(featx.sweep, "run_sweep", decode_in_tf_data)
    line = _one_error_line(invoke("sweep", tmp_path / "any.h5", "--out", tmp_path / "exp"))
    assert f"{broken}: " in line and "OpError" not in line and "Iterator" not in line

    def fail_in_tf_data(*args, **kwargs):
        def decode(index):
            try:
                load_image(broken)
            except ImageError:
                raise ValueError("a featx bug while handling an unreadable image")  # chained: ImageError in the text
        list(tf.data.Dataset.range(1).map(lambda i: tf.py_function(decode, [i], tf.float32)))

    monkeypatch.setattr(featx.sweep, "run_sweep", fail_in_tf_data)
    result = invoke("sweep", tmp_path / "any.h5", "--out", tmp_path / "exp")
    assert result.exit_code == 1 and isinstance(result.exception, tf.errors.OpError)


def test_a_grid_that_does_not_fit_the_head_is_one_line(tmp_path):
    """Bug 5: a --grid naming a parameter the head lacks used to surface as a bare ValueError."""
    folder = make_kaggle_images(tmp_path / "photos", 6)
    _index_and_cache(folder, tmp_path / "m.csv", tmp_path / "cache")
    (cache,) = (tmp_path / "cache").glob("*.h5")
    grid = tmp_path / "grid.json"
    grid.write_text('{"logreg": [{"head__gamma": [1.0]}]}')
    line = _one_error_line(invoke("sweep", cache, "--heads", "logreg", "--grid", grid, "--out", tmp_path / "exp"))
    assert "the logreg grid" in line and "gamma" in line
    line = _one_error_line(invoke("sweep", cache, "--heads", "logreg", "--preprocessing", "zscore",
                                  "--out", tmp_path / "exp"))
    assert "unknown preprocessing 'zscore'" in line
    grid.write_text('{"linsvm": [{"head__C": [-1]}]}')  # a value the head refuses when it fits (in a worker)
    line = _one_error_line(invoke("sweep", cache, "--heads", "linsvm", "--grid", grid, "--n-jobs", "2", "--cv", "2",
                                  "--out", tmp_path / "exp"))
    assert "C must be a positive number; got -1" in line
    assert not (tmp_path / "exp").exists()
