"""featx index: layouts, labels, deterministic and stable splits, the manifest file."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import make_image
from featx.data import DataError, Manifest, assign_split, build_manifest, detect_layout, load_dataset


def test_kaggle_layout_is_detected_and_labels_come_from_names(kaggle_dir):
    manifest = build_manifest(kaggle_dir)
    assert manifest.layout == "kaggle"
    assert "label.N.ext" in manifest.layout_reason
    assert manifest.label_names == ["cat", "dog"]
    assert len(manifest.records) == 40
    labels = {r.path: r.label for r in manifest.records}
    assert labels["cat.3.png"] == "cat" and labels["dog.7.png"] == "dog"


def test_folders_layout_multiclass(folders_dir):
    manifest = build_manifest(folders_dir)
    assert manifest.layout == "folders"
    assert manifest.label_names == ["a", "b", "c"]
    assert Counter(r.label for r in manifest.records) == {"a": 12, "b": 12, "c": 12}


def test_unlabeled_layout_like_kaggle_test1(tmp_path):
    root = tmp_path / "test1"
    for i in range(1, 6):
        make_image(root / f"{i}.png", "a", i)
    manifest = build_manifest(root)
    assert manifest.layout == "unlabeled"
    assert {r.split for r in manifest.records} == {"unlabeled"}
    assert all(r.label is None for r in manifest.records)
    assert manifest.name.endswith("-test1")  # a generic folder name takes its parent's


def test_detect_layout_on_paths():
    assert detect_layout(["cat.1.jpg", "dog.2.jpg"])[0] == "kaggle"
    assert detect_layout(["dog/x.jpg", "cat/y.jpg"])[0] == "folders"
    assert detect_layout(["1.jpg", "2.jpg"])[0] == "unlabeled"


def test_split_ratios_and_seed():
    paths = [f"cat.{i}.jpg" for i in range(4000)]
    splits = Counter(assign_split(p, seed=0, val=0.1, test=0.2) for p in paths)
    assert abs(splits["test"] / 4000 - 0.2) < 0.03
    assert abs(splits["val"] / 4000 - 0.1) < 0.03
    other = [assign_split(p, seed=1, val=0.1, test=0.2) for p in paths]
    same = [assign_split(p, seed=0, val=0.1, test=0.2) for p in paths]
    assert other != same  # the seed matters
    assert same == [assign_split(p, seed=0, val=0.1, test=0.2) for p in paths]  # and is deterministic


def test_split_is_stratified_per_class():
    paths = [f"{label}.{i}.jpg" for label in ("cat", "dog") for i in range(3000)]
    table = Counter((p.split(".")[0], assign_split(p, 0, 0.1, 0.1)) for p in paths)
    for label in ("cat", "dog"):
        assert abs(table[(label, "test")] / 3000 - 0.1) < 0.02
        assert abs(table[(label, "val")] / 3000 - 0.1) < 0.02


def test_adding_images_never_moves_placed_ones(kaggle_dir):
    before = {r.path: r.split for r in build_manifest(kaggle_dir, val=0.2, test=0.2).records}
    for i in range(20, 60):
        make_image(kaggle_dir / f"cat.{i}.png", "cat", i)
    after = {r.path: r.split for r in build_manifest(kaggle_dir, val=0.2, test=0.2).records}
    assert len(after) == 80
    assert all(after[p] == s for p, s in before.items())


def test_manifest_roundtrip_and_sha1(kaggle_dir, tmp_path):
    import hashlib

    manifest = build_manifest(kaggle_dir)
    path = manifest.write(tmp_path / "m.csv")
    again = Manifest.read(path)
    assert again.records == manifest.records
    assert again.root == manifest.root and again.layout == "kaggle"
    assert again.sha256() == manifest.sha256()
    record = again.records[0]
    assert record.sha1 == hashlib.sha1((kaggle_dir / record.path).read_bytes()).hexdigest()
    assert load_dataset(path).records == manifest.records


@pytest.mark.parametrize("kwargs, message", [
    ({"layout": "weird"}, "layout must be one of"),
    ({"val": 0.6, "test": 0.6}, "adding up to less than 1"),
])
def test_bad_options_are_clear(kaggle_dir, kwargs, message):
    with pytest.raises(DataError, match=message):
        build_manifest(kaggle_dir, **kwargs)


def test_missing_and_empty_folders_are_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        build_manifest(tmp_path / "empty")
    with pytest.raises(DataError, match="not a featx manifest"):
        (tmp_path / "x.csv").write_text("a,b\n1,2\n")
        Manifest.read(tmp_path / "x.csv")


def test_dataset_name_takes_parent_of_generic_folder(tmp_path):
    root = tmp_path / "catsdogs" / "train"
    make_image(root / "cat.1.png", "cat", 1)
    assert build_manifest(root).name == "catsdogs-train"
