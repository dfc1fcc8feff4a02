"""The HDF5 feature store: schema, no-op re-runs, stale specs, the lock, bad files,
incremental updates, and resumption after kill -9 at random points."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from conftest import make_image
from featx.cache import CacheBuilder, CacheError, open_cache
from featx.data import build_manifest
from featx.extractors import get_extractor
from featx.pipeline import build_cache


def test_cache_schema_readable_with_plain_h5py(kaggle_dir, tmp_path):
    manifest = build_manifest(kaggle_dir)
    result = build_cache(manifest, get_extractor("hog", size=32), cache_dir=tmp_path / "c", workers=1)
    assert result.rows == 40 and not result.noop and result.computed == 40
    with h5py.File(result.path, "r") as h5:
        assert h5["features"].shape == (40, get_extractor("hog", size=32).output_dim)
        assert h5["features"].dtype == np.float32
        assert h5["features"].chunks is not None
        paths = [p.decode() for p in h5["paths"][:]]
        assert paths == [r.path for r in manifest.records]
        names = json.loads(h5.attrs["label_names"])
        assert names == ["cat", "dog"]
        labels = h5["labels"][:]
        assert [names[i] for i in labels] == [r.label for r in manifest.records]
        assert {s.decode() for s in h5["split"][:]} <= {"train", "val", "test"}
        assert h5["failed"].shape == (0, 2)
        spec = json.loads(h5.attrs["extractor_spec"])
        assert spec["name"] == "hog" and spec["params"]["size"] == 32
        assert h5.attrs["manifest_sha256"] == manifest.sha256()
        assert h5.attrs["rows_done"] == 40
        for key in ("featx_version", "created", "updated", "preprocessing", "weights_sha256"):
            assert key in h5.attrs
    assert result.path.name.startswith(f"{manifest.name}-hog-") and result.path.suffix == ".h5"


def test_rerun_is_a_noop_and_fast(kaggle_dir, tmp_path):
    manifest = build_manifest(kaggle_dir)
    first = build_cache(manifest, get_extractor("hog", size=32), cache_dir=tmp_path, workers=1)
    mtime = first.path.stat().st_mtime_ns
    again = build_cache(build_manifest(kaggle_dir), get_extractor("hog", size=32), cache_dir=tmp_path, workers=1)
    assert again.noop and again.rows == 40 and again.path == first.path
    assert first.path.stat().st_mtime_ns == mtime


def test_changed_parameter_gives_a_new_cache(kaggle_dir, tmp_path):
    manifest = build_manifest(kaggle_dir)
    a = build_cache(manifest, get_extractor("hog", size=32), cache_dir=tmp_path, workers=1)
    b = build_cache(manifest, get_extractor("hog", size=32, orientations=6), cache_dir=tmp_path, workers=1)
    c = build_cache(manifest, get_extractor("hog", size=32), cache_dir=tmp_path, workers=1, dtype="float16")
    assert len({a.path, b.path, c.path}) == 3
    assert not b.noop and not c.noop
    with open_cache(c.path) as cache:
        assert cache.features.dtype == np.float16


def test_bad_files_are_skipped_and_recorded(kaggle_dir, tmp_path):
    (kaggle_dir / "cat.900.png").write_bytes(b"")  # zero bytes
    (kaggle_dir / "dog.901.jpg").write_text("this is not a jpeg")
    good = make_image(kaggle_dir / "dog.902.jpg", "dog", 902, size=64)
    data = good.read_bytes()
    (kaggle_dir / "dog.903.jpg").write_bytes(data[: len(data) // 2])  # truncated
    manifest = build_manifest(kaggle_dir)
    result = build_cache(manifest, get_extractor("hog", size=32), cache_dir=tmp_path, workers=2)
    failed = dict(result.failed)
    assert set(failed) == {"cat.900.png", "dog.901.jpg", "dog.903.jpg"}
    assert all(reason for reason in failed.values())
    assert result.rows == 41
    with open_cache(result.path) as cache:
        assert dict(cache.failed) == failed
        assert "dog.902.jpg" in cache.paths and "cat.900.png" not in cache.paths


def test_second_writer_gets_a_clear_error_and_readers_of_the_same_file_are_not_blocked(kaggle_dir, tmp_path):
    manifest = build_manifest(kaggle_dir)
    extractor = get_extractor("hog", size=32)
    done = build_cache(manifest, extractor, cache_dir=tmp_path, workers=1)
    with open_cache(done.path) as cache:
        published = cache.load()[0]
    # This process holds the writer's lock on the very file another process then reads and writes.
    with CacheBuilder(done.path, manifest, extractor.spec()):
        script = textwrap.dedent(f"""
            import numpy as np
            from featx.cache import CacheBuilder, CacheLockedError, open_cache
            from featx.data import build_manifest
            from featx.extractors import get_extractor
            with open_cache({str(done.path)!r}) as cache:  # reading needs no lock
                print("READ", cache.n_rows, float(np.abs(cache.load()[0]).sum()))
            m = build_manifest({str(kaggle_dir)!r})
            try:
                with CacheBuilder({str(done.path)!r}, m, get_extractor("hog", size=32).spec()):
                    print("GOT LOCK")
            except CacheLockedError as exc:
                print("LOCKED:", exc)
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert f"READ 40 {float(np.abs(published).sum())}" in out.stdout, out.stderr
        assert "LOCKED:" in out.stdout and "GOT LOCK" not in out.stdout, out.stderr
        assert str(os.getpid()) in out.stdout
    with CacheBuilder(done.path, manifest, extractor.spec()):  # released on exit
        pass


def test_new_images_reuse_rows_of_the_existing_cache(kaggle_dir, tmp_path):
    first = build_cache(build_manifest(kaggle_dir), get_extractor("hog", size=32), cache_dir=tmp_path, workers=1)
    with open_cache(first.path) as cache:
        before = dict(zip(cache.paths, cache.load()[0]))
    for i in range(20, 25):
        make_image(kaggle_dir / f"cat.{i}.png", "cat", i)
    second = build_cache(build_manifest(kaggle_dir), get_extractor("hog", size=32), cache_dir=tmp_path, workers=1)
    # Another image list is another file (older bundles keep pointing at the images they saw);
    # its rows come from the first file, checked by path and sha1.
    assert second.path != first.path and first.path.exists()
    assert second.computed == 5 and second.reused == 40 and second.rows == 45
    with open_cache(second.path) as cache:
        after = dict(zip(cache.paths, cache.load()[0]))
        assert cache.attrs["created"] <= cache.attrs["updated"]
    for path, row in before.items():
        np.testing.assert_array_equal(after[path], row)
    clean = build_cache(build_manifest(kaggle_dir), get_extractor("hog", size=32), cache_dir=tmp_path / "clean", workers=1)
    with open_cache(clean.path) as cache:
        np.testing.assert_array_equal(cache.load()[0], np.stack([after[p] for p in cache.paths]))


@pytest.mark.parametrize("good_batches", [0, 2])
def test_a_failed_build_keeps_its_journal_only_when_it_holds_work(kaggle_dir, tmp_path, good_batches):
    """An exception before the first shard (a model that does not load, say) leaves no journal; after
    some shards the journal stays, and the next run computes only the rest."""
    manifest = build_manifest(kaggle_dir)
    extractor = get_extractor("hog", size=32)
    transform, calls = extractor.transform, []

    def failing(images):
        calls.append(len(images))
        if len(calls) > good_batches:
            raise RuntimeError("the model went away")
        return transform(images)

    extractor.transform = failing
    with pytest.raises(RuntimeError, match="went away"):
        build_cache(manifest, extractor, cache_dir=tmp_path, workers=1, shard_rows=8)
    journals = list(tmp_path.glob("*.partial"))
    assert not list(tmp_path.glob("*.h5"))
    if good_batches == 0:
        assert journals == []
    else:
        assert len(list(journals[0].glob("shard-*.npz"))) == good_batches
        extractor.transform = transform
        resumed = build_cache(manifest, extractor, cache_dir=tmp_path, workers=1, shard_rows=8)
        assert (resumed.rows, resumed.computed) == (40, 40 - 8 * good_batches)


def test_open_cache_errors_are_clear(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        open_cache(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_text("junk")
    with pytest.raises(CacheError, match="not a readable HDF5"):
        open_cache(tmp_path / "junk.h5")


# -- kill -9 at random points, then resume ------------------------------------------------------
SLOW_EXTRACTOR = '''
"""A deliberately slow extractor that learns state, for the crash test (``delay``: seconds per image)."""
import time
import numpy as np
from featx.extractors import ExtractorInfo, register
from featx.extractors.base import Extractor

class SlowBlocks(Extractor):
    name = "slow_blocks"
    parallel = "model"
    needs_fit = True
    delay = 0.04

    @property
    def preprocessing(self):
        return {"size": [16, 16], "interpolation": "area", "equalize": False}

    @property
    def output_dim(self):
        return 48

    def fit(self, images):
        time.sleep(7.5 * self.delay)
        self.mean_ = np.mean([im.reshape(-1, 3).mean(0) for im in images], axis=0).astype(np.float32)
        return self

    def get_state(self):
        return {"mean": self.mean_}

    def set_state(self, state):
        self.mean_ = state["mean"]
        return self

    def transform(self, images):
        time.sleep(self.delay * len(images))
        x = np.stack(images).astype(np.float32).reshape(len(images), 4, 4, 4, 4, 3).mean(axis=(2, 4))
        return (x - self.mean_).reshape(len(images), -1)

register(ExtractorInfo("slow_blocks", SlowBlocks, "test only"))
'''

RUN = '''
import sys
sys.path.insert(0, {plugin_dir!r})
import slowext
slowext.SlowBlocks.delay = {delay!r}
from featx.data import build_manifest
from featx.extractors import get_extractor
from featx.pipeline import build_cache
r = build_cache(build_manifest({root!r}), get_extractor("slow_blocks"), cache_dir={cache_dir!r},
                batch_size=2, shard_rows=4, workers=2)
print("DONE", r.rows, r.computed)
'''


def _crash_setup(kaggle_dir, tmp_path, delay):
    """The slow extractor registered here and in child processes, a clean cache to compare with,
    and the script, final file and journal of the build that gets killed (slowed down by ``delay``
    seconds per image, so that random kills land while it works)."""
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "slowext.py").write_text(SLOW_EXTRACTOR)
    sys.path.insert(0, str(plugin_dir))
    import slowext  # registers slow_blocks here too

    slowext.SlowBlocks.delay = 0.0  # the clean build is never killed
    clean = build_cache(build_manifest(kaggle_dir), get_extractor("slow_blocks"), cache_dir=tmp_path / "clean",
                        batch_size=2, shard_rows=4, workers=2)
    cache_dir = tmp_path / "crashy"
    script = RUN.format(plugin_dir=str(plugin_dir), root=str(kaggle_dir), cache_dir=str(cache_dir), delay=delay)
    final = cache_dir / clean.path.name
    journal = final.with_name(final.name + ".partial")
    return clean, plugin_dir, cache_dir, script, final, journal


def test_kill_dash_9_at_random_points_then_resume_equals_clean_run(kaggle_dir, tmp_path):
    clean, plugin_dir, cache_dir, script, final, journal = _crash_setup(kaggle_dir, tmp_path, delay=0.04)
    rng = random.Random(1234)
    kills = 0
    for attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        target_shards = rng.randint(0, 10)  # 10 shards in all: kill anywhere from fitting to publishing
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            shards = len(list(journal.glob("shard-*.npz"))) if journal.exists() else 0
            if shards >= target_shards and (journal / "plan.json").exists():
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.08))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        # Whatever moment it died at, the final file is absent or complete and readable.
        if final.exists():
            with open_cache(final) as cache:
                assert cache.n_rows == 40
        if kills >= 5 and final.exists():
            break
    assert kills >= 5
    resumed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "DONE 40" in resumed.stdout
    with open_cache(clean.path) as a, open_cache(final) as b:
        assert a.paths == b.paths
        np.testing.assert_array_equal(a.load()[0], b.load()[0])
        np.testing.assert_array_equal(a.state["mean"], b.state["mean"])
    assert not journal.exists()


def test_kill_at_each_named_step_leaves_no_half_file_and_resume_finishes_only_what_is_left(kaggle_dir, tmp_path):
    """FEATX_KILL_AT SIGKILLs the build at a named step: inside the fit, after the state is saved,
    after shard N, inside the publish before and after the rename. After each kill the final file
    is absent or complete; the run that follows computes only the shards the journal lacks."""
    # The kills are deterministic here, so the extractor need not be slow.
    clean, plugin_dir, cache_dir, script, final, journal = _crash_setup(kaggle_dir, tmp_path, delay=0.0)

    def run(step: str | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "FEATX_KILL_AT"}
        if step:
            env["FEATX_KILL_AT"] = step
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)

    def shards() -> int:
        return len(list(journal.glob("shard-*.npz"))) if journal.exists() else 0

    died = run("fit")
    assert died.returncode == -signal.SIGKILL and not final.exists()
    assert not (journal / "state.npz").exists() and shards() == 0
    died = run("save_state")
    assert died.returncode == -signal.SIGKILL and not final.exists()
    assert (journal / "state.npz").exists() and shards() == 0
    died = run("shard:3")  # 10 shards of 4 rows in all
    assert died.returncode == -signal.SIGKILL and not final.exists()
    stored = shards()
    assert 1 <= stored < 10
    died = run("publish:before_rename")  # every shard computed, the final file written, not renamed
    assert died.returncode == -signal.SIGKILL and not final.exists() and shards() == 10
    assert "DONE" not in died.stdout
    finished = run(None)
    assert finished.returncode == 0, finished.stderr
    assert "DONE 40 0" in finished.stdout  # nothing left to compute: the journal had every shard
    assert not journal.exists()

    again = tmp_path / "after_rename"
    script = RUN.format(plugin_dir=str(plugin_dir), root=str(kaggle_dir), cache_dir=str(again), delay=0.0)
    died = run("publish:after_rename")  # published, killed before the journal was cleaned
    assert died.returncode == -signal.SIGKILL
    with open_cache(again / clean.path.name) as cache:
        assert cache.n_rows == 40
    assert run(None).stdout.strip().startswith("DONE 40 0")
    for path in (final, again / clean.path.name):
        with open_cache(clean.path) as a, open_cache(path) as b:
            assert a.paths == b.paths
            np.testing.assert_array_equal(a.load()[0], b.load()[0])
            np.testing.assert_array_equal(a.state["mean"], b.state["mean"])
