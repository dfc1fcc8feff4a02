"""Nothing lost (issue 19, point 7), and no vocabulary reused across splits (point 5).

A stage folder's publish killed at each step keeps ``finetune/`` and the rest; a running finetune or
scratch and a re-sweep of the same experiment exclude each other with one line naming the holder; a
full disk is one line naming the folder and the space needed, and the rerun finishes; a SIFT
vocabulary is fit again for another split or seed instead of being taken from the other cache.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image, make_kaggle_images
from featx.artifacts.runs import STAGE_FOLDERS
from featx.cache import open_cache
from featx.data import build_manifest
from featx.extractors import get_extractor
from featx.pipeline import build_cache
from featx.storage import BusyError, is_disk_full, locked, stage_folder

FEATX = str(Path(sys.executable).with_name("featx"))
KILL_POINTS = ("stage:carried:finetune", "stage:carried:scratch", "stage:set_aside", "stage:published")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "FEATX_KILL_AT"}
    env.update(extra)
    return env


def _experiment(target: Path) -> dict[str, str]:
    """A published experiment with two later stages' folders; returns what those hold."""
    with stage_folder(target) as tmp:
        (tmp / "results.csv").write_text("v1")
    kept = {"finetune/state.json": "finetune epoch 7", "finetune/best.weights.h5": "weights",
            "scratch/model.json": "scratch model"}
    for name, text in kept.items():
        (target / name).parent.mkdir(exist_ok=True)
        (target / name).write_text(text)
    return kept


def _publish_in_child(target: Path, text: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    script = textwrap.dedent(f"""
        from featx.storage import stage_folder
        with stage_folder({str(target)!r}, keep={STAGE_FOLDERS!r}, what="featx sweep") as tmp:
            (tmp / "results.csv").write_text({text!r})
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=_env(**({"FEATX_KILL_AT": kill_at} if kill_at else {})))


def _assert_kept(target: Path, kept: dict[str, str]) -> None:
    for name, text in kept.items():
        assert (target / name).read_text() == text, name


@pytest.mark.parametrize("kill_at", KILL_POINTS)
@pytest.mark.parametrize("next_run", ["re-sweep", "finetune first"])
def test_a_publish_killed_at_each_step_loses_no_stage_folder(tmp_path, kill_at, next_run):
    """kill -9 between any two renames of the publish; then either the next publish or a finetune
    (its lock on ``exp/finetune``) runs first: every kept folder is where it was, and the publish after
    that completes with no temporary left."""
    target = tmp_path / "exp"
    kept = _experiment(target)
    died = _publish_in_child(target, "v2", kill_at)
    assert died.returncode == -signal.SIGKILL, died.stderr
    if next_run == "finetune first":
        with locked(target / "finetune", what="finetune"):  # what featx finetune takes before it writes
            assert (target / "finetune" / "state.json").read_text() == "finetune epoch 7"
            assert (target / "results.csv").read_text() in ("v1", "v2")
    done = _publish_in_child(target, "v3")
    assert done.returncode == 0, done.stderr
    assert (target / "results.csv").read_text() == "v3"
    _assert_kept(target, kept)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def _featx(*args, **env) -> subprocess.CompletedProcess:
    """The CLI in its own process group: a run killed by FEATX_KILL_AT leaves worker processes (joblib's)
    that would hold a pipe open; they are killed with the group once the command has ended."""
    with open(os.devnull, "rb") as stdin, tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([FEATX, *map(str, args)], stdin=stdin, stdout=out, stderr=err, text=True,
                                env=_env(**env), start_new_session=True)
        try:
            proc.wait(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


def _sweep(cache: Path, out: Path, **env) -> subprocess.CompletedProcess:
    return _featx("sweep", cache, "--heads", "logreg", "--no-learning-curve", "--n-boot", 20, "--out", out, **env)


@pytest.fixture
def hog_cache(tmp_path) -> Path:
    manifest = build_manifest(make_kaggle_images(tmp_path / "photos", 20), seed=0)
    return build_cache(manifest, get_extractor("hog", size=32), cache_dir=tmp_path / "cache", workers=1).path


def test_a_resweep_killed_with_the_old_folder_set_aside_keeps_finetune_and_the_next_sweep_completes(
        hog_cache, tmp_path):
    """The worst moment of a re-sweep (through the CLI): the old folder renamed aside with ``finetune/``
    already moved into the new one, neither in place."""
    target = tmp_path / "exp"
    kept = _experiment(target)
    died = _sweep(hog_cache, target, FEATX_KILL_AT="stage:set_aside")
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert not (target / "finetune").exists()  # the window the issue names
    done = _sweep(hog_cache, target)
    assert done.returncode == 0, done.stderr
    _assert_kept(target, kept)
    assert (target / "results.json").exists() and (target / "best.joblib").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def _hold(code: str) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True,
                              env=_env())
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_running_finetune_stops_a_resweep_with_one_line_and_nothing_written(hog_cache, tmp_path):
    """Another process holds ``exp/finetune`` as ``featx finetune`` does: the re-sweep refuses with one
    line naming it and leaves the folder as it was (before, it moved finetune/ away under the running
    finetune and deleted its lock file with the old folder)."""
    target = tmp_path / "exp"
    kept = _experiment(target)

    def files() -> dict[str, int]:  # what the experiment holds, lock files aside
        return {str(p.relative_to(tmp_path)): p.stat().st_mtime_ns for p in tmp_path.glob("exp*/**/*")
                if ".lock" not in p.name}

    before = files()
    holder = _hold(f"""
        import time
        from featx.storage import locked
        with locked({str(target / 'finetune')!r}, what="finetune"):
            print("held", flush=True)
            time.sleep(120)
    """)
    try:
        refused = _sweep(hog_cache, target)
        assert refused.returncode != 0
        (line,) = _error_lines(refused)
        assert f"{target} cannot be replaced" in line and f"{target / 'finetune'} is being written by pid {holder.pid} on " \
            in line, line
        assert (target / "results.csv").read_text() == "v1"
        assert files() == before and [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
        assert (target / "finetune.lock").exists()  # the holder's lock file is left alone
    finally:
        holder.kill()
        holder.wait()
    done = _sweep(hog_cache, target)
    assert done.returncode == 0, done.stderr
    _assert_kept(target, kept)


def test_a_publishing_sweep_stops_scratch_and_finetune_with_one_line_naming_it(tmp_path):
    """The other way round: while a re-sweep publishes (it holds ``exp`` and each kept folder), ``featx
    scratch`` into the same experiment refuses with one line naming the sweep's process, and so does
    the lock ``featx finetune`` takes."""
    target = tmp_path / "exp"
    _experiment(target)
    photos = make_kaggle_images(tmp_path / "photos", 6)
    holder = _hold(f"""
        import time
        from featx.storage import stage_folder
        with stage_folder({str(target)!r}, keep={STAGE_FOLDERS!r}, what="featx sweep") as tmp:
            print("held", flush=True)
            time.sleep(120)
    """)
    try:
        refused = _featx("scratch", photos, "--out", target, "--image-size", 32, "--epochs", 1, "--no-augment")
        assert refused.returncode != 0
        (line,) = _error_lines(refused)
        assert f"{target / 'scratch'} (featx scratch) is being written by pid {holder.pid} on " in line, line
        assert (target / "scratch" / "model.json").read_text() == "scratch model"
        with pytest.raises(BusyError, match=rf"finetune \(featx finetune\) is being written by pid {holder.pid} on "):
            with locked(target / "finetune", what=f"{target / 'finetune'} (featx finetune)"):
                pass
    finally:
        holder.kill()
        holder.wait()


# -- a full disk ------------------------------------------------------------------------------------
# The CLI runs in a child whose cache folder holds at most BUDGET bytes: writes past it fail with
# ENOSPC, as on a small file system, and the free space the file system reports is what is left.
DISK = '''
import errno, os, shutil, sys
from pathlib import Path
import numpy as np

budget, cache_dir = int(sys.argv[1]), Path(sys.argv[2])

def used():
    return sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file()) if cache_dir.exists() else 0

def disk_usage(path):
    free = max(0, budget - used())
    return shutil._ntuple_diskusage(budget, budget - free, free)

savez = np.savez
def limited_savez(file, *args, **arrays):
    if used() + sum(np.asarray(a).nbytes for a in arrays.values()) > budget:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return savez(file, *args, **arrays)

shutil.disk_usage, np.savez = disk_usage, limited_savez
from featx.cli import app
sys.argv = ["featx", *sys.argv[3:]]
app()
'''


def test_a_full_disk_is_one_line_with_the_space_needed_and_the_rerun_finishes(kaggle_dir, tmp_path):
    cache_dir = tmp_path / "cache"
    clean = build_cache(build_manifest(kaggle_dir), get_extractor("hog", size=32), cache_dir=tmp_path / "clean",
                        workers=1, shard_rows=8)
    journal = cache_dir / (clean.path.name + ".partial")
    shard_bytes = 8 * get_extractor("hog", size=32).output_dim * 4

    def cache(budget: int) -> tuple[subprocess.CompletedProcess, str]:
        run = subprocess.run([sys.executable, "-c", DISK, str(budget), str(cache_dir), "cache", str(kaggle_dir),
                              "--extractor", "hog", "--opt", "size=32", "--cache-dir", str(cache_dir), "--workers",
                              "1", "--shard-rows", "8"], capture_output=True, text=True, timeout=120, env=_env())
        lines = _error_lines(run)
        return run, lines[0] if lines else ""

    def shards() -> int:
        return len(list(journal.glob("shard-*.npz")))

    # Room for two of the five shards: the third fails.
    failed, line = cache(int(2.5 * shard_bytes))
    assert failed.returncode == 2 and line, failed.stdout + failed.stderr
    needed = re.search(r"it needs ([\d.]+) (kB|MB) there at once \(journal [\d.]+ (?:kB|MB) \+ final file "
                       r"[\d.]+ (?:kB|MB);", line)
    assert line.startswith(f"error: no space left in {cache_dir} for the cache {clean.path.name}: ") and needed, line
    assert "the journal" in line and "(2 of 5 shards done)" in line and "run the same command again" in line
    assert shards() == 2 and not (cache_dir / clean.path.name).exists()
    assert [p.name for p in cache_dir.iterdir() if ".tmp-" in p.name] == []
    total = float(needed.group(1)) * (1e3 if needed.group(2) == "kB" else 1e6)
    assert total > 2 * clean.path.stat().st_size  # journal and final file at once

    # Room for the journal, not for the final file beside it: the publish fails, every shard is kept.
    journal_bytes = 5 * (journal / "shard-000000.npz").stat().st_size + (journal / "plan.json").stat().st_size
    failed, line = cache(journal_bytes + clean.path.stat().st_size // 2)
    assert failed.returncode == 2 and "(5 of 5 shards done)" in line, failed.stdout + failed.stderr
    assert shards() == 5 and not (cache_dir / clean.path.name).exists()

    # Exactly the space the line asked for: the rerun computes nothing more and publishes.
    done, line = cache(int(total))
    assert done.returncode == 0 and not line, done.stderr
    assert "40 rows (0 computed, 40 resumed from an interrupted run, 0 failed)" in done.stdout, done.stdout
    assert not journal.exists()
    with open_cache(clean.path) as a, open_cache(cache_dir / clean.path.name) as b:
        np.testing.assert_array_equal(a.load()[0], b.load()[0])


def test_hdf5_full_disk_errors_are_recognised():
    """h5py's words for ENOSPC (seen on a 10 MB tmpfs): an OSError while writing, a RuntimeError at close."""
    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(RuntimeError("Can't decrement id ref count (file write failed: time = Sun Dec  6 2026, "
                                     "filename = '/tmp/tiny/.x.h5.tmp-1', file descriptor = 12, errno = 28, error "
                                     "message = 'No space left on device', buf = 0x5, total write size = 695888)"))
    assert not is_disk_full(OSError(13, "Permission denied"))
    assert not is_disk_full(RuntimeError("Can't decrement id ref count (errno = 5, error message = 'I/O error')"))


# -- a learned vocabulary is never taken from another split's cache ----------------------------------
SIFT = {"k": 16, "size": 48, "dense": True, "step": 8, "scale": 16.0, "n_jobs": 1}


def test_a_sift_vocabulary_is_fit_again_for_another_seed_never_reused(tmp_path):
    """Two manifests of one folder with other seeds (other train rows) in one --cache-dir: the second
    fits its own vocabulary, the one a cache folder without the first would have, and computes every
    row with it (today it took the first cache's vocabulary and rows: val/test images of this split
    were train images of that one)."""
    photos = make_kaggle_images(tmp_path / "photos", 20)
    first = build_cache(build_manifest(photos, val=0.2, test=0.2, seed=0), get_extractor("sift_bovw", **SIFT),
                        cache_dir=tmp_path / "cache", workers=1)
    other_seed = build_manifest(photos, val=0.2, test=0.2, seed=1)
    second = build_cache(other_seed, get_extractor("sift_bovw", **SIFT), cache_dir=tmp_path / "cache", workers=1)
    alone = build_cache(other_seed, get_extractor("sift_bovw", **SIFT), cache_dir=tmp_path / "alone", workers=1)
    assert second.path != first.path
    assert (second.reused, second.computed) == (0, 40)
    with open_cache(first.path) as a, open_cache(second.path) as b, open_cache(alone.path) as c:
        assert not np.array_equal(a.state["vocabulary"], b.state["vocabulary"])
        np.testing.assert_array_equal(b.state["vocabulary"], c.state["vocabulary"])
        np.testing.assert_array_equal(b.load()[0], c.load()[0])
        assert a.attrs["fit_key"] != b.attrs["fit_key"] == c.attrs["fit_key"]

    # A new image outside train leaves the train rows as they were: rows and vocabulary are reused.
    for index in range(20, 80):
        make_image(photos / f"cat.{index}.png", "cat", index)
        grown = build_manifest(photos, val=0.2, test=0.2, seed=1)
        if next(r.split for r in grown.records if r.path == f"cat.{index}.png") != "train":
            break
        (photos / f"cat.{index}.png").unlink()
    third = build_cache(grown, get_extractor("sift_bovw", **SIFT), cache_dir=tmp_path / "cache", workers=1)
    assert (third.reused, third.computed) == (40, 1)
    with open_cache(second.path) as b, open_cache(third.path) as c:
        np.testing.assert_array_equal(b.state["vocabulary"], c.state["vocabulary"])
