"""No leakage through the index: identical files share a split, a file reached twice is indexed once,
duplicates and conflicting labels are reported, old manifests read as they were, no empty sha1."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_image
from featx.data import DataError, Manifest, assign_split, build_manifest

_SCRIPT = Path(sys.executable).with_name("featx")
FEATX = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from featx.cli import app; app(prog_name='featx')"]


def featx(*args) -> subprocess.CompletedProcess:
    """``featx ARGS`` in a subprocess, in the user's environment (TensorFlow's logging as it comes)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([*FEATX, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def rows(manifest_csv: Path) -> list[list[str]]:
    """The data rows of a manifest CSV (settings and header lines dropped)."""
    return [line.split(",") for line in manifest_csv.read_text().splitlines()[2:]]


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_identical_copies_land_in_one_split_keyed_on_content(tmp_path):
    root = tmp_path / "photos"
    for i in range(40):
        for label in ("a", "b"):
            original = make_image(root / label / f"{i}.png", label, i + (100 if label == "b" else 0))
            shutil.copyfile(original, root / label / f"copy-{i}.png")
    manifest = build_manifest(root, val=0.3, test=0.3, seed=0)
    assert len(manifest.records) == 160 and manifest.version == 2

    split_of = {r.path: r.split for r in manifest.records}
    pairs = [(f"{label}/{i}.png", f"{label}/copy-{i}.png") for label in ("a", "b") for i in range(40)]
    assert all(split_of[one] == split_of[other] for one, other in pairs)
    # The old rule (a hash of the path) separates many of these pairs: this test would fail on it.
    separated = sum(assign_split(one, 0, 0.3, 0.3) != assign_split(other, 0, 0.3, 0.3) for one, other in pairs)
    assert separated >= 20
    # The split is a function of (seed, sha1) alone, so still stratified in expectation and stable.
    assert all(r.split == assign_split(r.sha1, 0, 0.3, 0.3) for r in manifest.records)
    assert {s for s in split_of.values()} == {"train", "val", "test"}
    groups = manifest.duplicate_groups()
    assert len(groups) == 80 and sorted(len(g) for g in groups) == [2] * 80
    assert manifest.label_conflicts() == [] and manifest.warnings == []


def test_a_folder_linked_back_to_itself_is_indexed_once(tmp_path):
    root = tmp_path / "photos"
    make_image(root / "cat.1.png", "cat", 1)
    make_image(root / "dog.1.png", "dog", 2)
    os.symlink(".", root / "loop")  # ln -s . loop: 82 images before, through 40 levels of loop/loop/...
    manifest_csv = tmp_path / "m.csv"

    done = featx("index", root, "-o", manifest_csv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [f"{manifest_csv}: 2 images, 2 classes"]
    assert "duplicates" not in done.stderr and "warning" not in done.stderr, done.stderr
    assert [row[:2] for row in rows(manifest_csv)] == [["cat.1.png", "cat"], ["dog.1.png", "dog"]]


def test_two_links_to_one_file_and_a_linked_folder_are_indexed_once(tmp_path):
    root = tmp_path / "photos"
    for i in range(3):
        make_image(root / "cats" / f"{i}.png", "cat", i)
        make_image(root / "dogs" / f"{i}.png", "dog", 10 + i)
    os.symlink(root / "cats", root / "all-cats")  # sorts before cats/: the real folder's name still wins
    os.symlink("0.png", root / "dogs" / "again.png")
    os.link(root / "dogs" / "1.png", root / "dogs" / "hard.png")
    manifest_csv = tmp_path / "m.csv"

    done = featx("index", root, "-o", manifest_csv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"{manifest_csv}: 6 images, 2 classes"
    assert [row[:2] for row in rows(manifest_csv)] == [
        ["cats/0.png", "cats"], ["cats/1.png", "cats"], ["cats/2.png", "cats"],
        ["dogs/0.png", "dogs"], ["dogs/1.png", "dogs"], ["dogs/2.png", "dogs"]]


def test_index_reports_duplicate_groups_and_conflicting_labels(tmp_path):
    root = tmp_path / "train"
    for i in range(6):
        make_image(root / f"cat.{i}.png", "cat", i)
        make_image(root / f"dog.{i}.png", "dog", 100 + i)
    shutil.copyfile(root / "cat.1.png", root / "cat.7.png")  # a plain duplicate
    shutil.copyfile(root / "dog.3.png", root / "cat.9.png")  # a dog photo also labelled cat
    manifest_csv = tmp_path / "m.csv"

    done = featx("index", root, "-o", manifest_csv, "--val", "0.3", "--test", "0.3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [f"{manifest_csv}: 14 images, 2 classes"]
    lines = done.stderr.splitlines()
    duplicates = [line for line in lines if line.startswith("duplicates:")]
    assert duplicates == ["duplicates: 2 group(s) of identical files under different paths (4 images, 1 with "
                          "conflicting labels), e.g. cat.1.png = cat.7.png; each group sits in one split"]
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1, done.stderr
    assert "1 group(s) of identical files carry different labels: cat.9.png (cat) = dog.3.png (dog)" in warnings[0]
    assert "each group stays in one split" in warnings[0]

    # Both copies are kept with their labels, in one split.
    split_of = {row[0]: (row[1], row[2]) for row in rows(manifest_csv)}
    assert split_of["cat.9.png"][0] == "cat" and split_of["dog.3.png"][0] == "dog"
    assert split_of["cat.9.png"][1] == split_of["dog.3.png"][1]
    assert split_of["cat.1.png"][1] == split_of["cat.7.png"][1]


def test_an_old_manifest_reads_unchanged_and_warns_of_copies_across_splits(tmp_path):
    root = tmp_path / "train"
    for i in range(4):
        make_image(root / f"cat.{i}.png", "cat", i)
    shutil.copyfile(root / "cat.0.png", root / "cat.9.png")
    hashes = {name: sha1(root / name) for name in ("cat.0.png", "cat.1.png", "cat.2.png", "cat.3.png", "cat.9.png")}
    old = tmp_path / "old.csv"  # as featx wrote it before manifests had a version: splits keyed on the path
    old.write_text(
        '# featx-manifest {"layout": "kaggle", "root": "train", "seed": 0, "test": 0.1, "val": 0.1}\n'
        "path,label,split,sha1\n"
        f"cat.0.png,cat,train,{hashes['cat.0.png']}\n"
        f"cat.1.png,cat,val,{hashes['cat.1.png']}\n"
        f"cat.2.png,cat,test,{hashes['cat.2.png']}\n"
        f"cat.3.png,cat,train,{hashes['cat.3.png']}\n"
        f"cat.9.png,cat,test,{hashes['cat.9.png']}\n")

    manifest = Manifest.read(old)
    assert manifest.version == 1 and manifest.root == root.resolve()
    assert [(r.path, r.label, r.split, r.sha1) for r in manifest.records] == [
        ("cat.0.png", "cat", "train", hashes["cat.0.png"]), ("cat.1.png", "cat", "val", hashes["cat.1.png"]),
        ("cat.2.png", "cat", "test", hashes["cat.2.png"]), ("cat.3.png", "cat", "train", hashes["cat.3.png"]),
        ("cat.9.png", "cat", "test", hashes["cat.9.png"])]
    assert len(manifest.warnings) == 1
    assert "1 group(s) of identical files sit in more than one split" in manifest.warnings[0]
    assert "cat.0.png (train) = cat.9.png (test)" in manifest.warnings[0]
    assert f"featx index {root.resolve()} -o {old}" in manifest.warnings[0]

    # Written back, it stays a version 1 manifest with the same rows; a new index is version 2.
    again = Manifest.read(manifest.write(tmp_path / "again.csv"))
    assert again.version == 1 and again.records == manifest.records
    assert '"version": 1' in (tmp_path / "again.csv").read_text().splitlines()[0]
    assert '"version": 2' in build_manifest(root).write(tmp_path / "new.csv").read_text().splitlines()[0]
    # Without file hashes (benchmarks that only list files) the split falls back to the path: version 1.
    listed = build_manifest(root, hash_files=False)
    assert listed.version == 1 and all(r.split == assign_split(r.path, 0, 0.1, 0.1) for r in listed.records)


def test_a_newer_manifest_version_is_refused_in_one_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('# featx-manifest {"layout": "kaggle", "root": ".", "seed": 0, "test": 0.1, "val": 0.1, '
                    '"version": 3}\npath,label,split,sha1\n')
    with pytest.raises(DataError, match=r"manifest version 3 is not one this featx reads \(1 to 2\)"):
        Manifest.read(path)


def test_a_manifest_without_sha1_is_hashed_on_read_and_cached_with_them(kaggle_dir, tmp_path):
    written = build_manifest(kaggle_dir, val=0.2, test=0.2).write(tmp_path / "m.csv")
    lines = written.read_text().splitlines()
    blank = tmp_path / "blank.csv"  # hand-edited: the sha1 column emptied
    blank.write_text("\n".join(lines[:2] + [line.rsplit(",", 1)[0] + "," for line in lines[2:]]) + "\n")
    no_column = tmp_path / "no-column.csv"  # hand-written: no sha1 column at all
    no_column.write_text("\n".join([lines[0], "path,label,split"] + [line.rsplit(",", 1)[0] for line in lines[2:]])
                         + "\n")

    for edited in (blank, no_column):
        manifest = Manifest.read(edited)
        assert len(manifest.records) == 40
        assert all(r.sha1 == sha1(kaggle_dir / r.path) for r in manifest.records)
        assert manifest.records == Manifest.read(written).records

    done = featx("cache", blank, "--extractor", "hog", "--opt", "size=32", "--cache-dir", tmp_path / "c",
                 "--workers", "1")
    assert done.returncode == 0, done.stderr
    import h5py

    with h5py.File(next((tmp_path / "c").glob("*.h5"))) as h5:
        paths, sha1s = h5["paths"].asstr()[:], h5["sha1"].asstr()[:]
    assert len(paths) == 40 and all(s == sha1(kaggle_dir / p) for p, s in zip(paths, sha1s))


def test_a_row_without_sha1_whose_file_is_gone_is_one_clear_line(kaggle_dir, tmp_path):
    manifest_csv = tmp_path / "m.csv"
    lines = build_manifest(kaggle_dir).write(manifest_csv).read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ","
    gone = lines[5].split(",")[0]
    manifest_csv.write_text("\n".join(lines) + "\n")
    (kaggle_dir / gone).unlink()

    done = featx("cache", manifest_csv, "--extractor", "hog", "--cache-dir", tmp_path / "c")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {manifest_csv}: 1 row(s) have no sha1 and their file cannot be read to compute it, first line 6: "
        f"{kaggle_dir.resolve() / gone} (file not found); fill in the sha1 column, remove those rows, or re-index "
        f"with: featx index {kaggle_dir.resolve()} -o {manifest_csv}"]
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("*.h5"))
