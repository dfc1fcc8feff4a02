"""featx on a real Dask cluster: a `dask scheduler` and `dask worker` processes on 127.0.0.1.

The processes preload ``dask_standin`` (tests/dask_standin.py): a gated HoG stand-in lets a test
hold a shard on a known worker and kill that process there; the scheduler records each task's
resource restrictions and dependencies. Every start and wait is bounded; every process is
killed in the fixture's finalizer.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("distributed")  # the optional `dask` extra

import dask_standin  # noqa: E402  registers gated_hog / gated_model in this process too
from conftest import make_kaggle_images  # noqa: E402
from featx.cli import app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STANDIN_CLI = [sys.executable, str(REPO / "tests" / "dask_standin.py")]  # the featx CLI + stand-ins
START_LIMIT_S = 60
RUN_LIMIT_S = 90
TIMING_COLUMNS = {"fit_seconds", "predict_seconds", "seconds"}  # results.csv columns that are timings


def _wait_for(condition, what: str, limit_s: float = START_LIMIT_S):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up after {limit_s:.0f} s waiting for {what}")


class ProcessCluster:
    """One `dask scheduler` and `dask worker --no-nanny` processes, each its own OS process."""

    def __init__(self, folder: Path, worker_args: list[list[str]]):
        self.folder = folder
        self.gate = folder / "gate"
        self.gate.mkdir(parents=True)
        self.scheduler_file = folder / "scheduler.json"
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
                    dask_standin.GATE_ENV: str(self.gate), "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.scheduler = self._spawn("scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                                     "127.0.0.1:0", "--scheduler-file", str(self.scheduler_file))
        _wait_for(self.scheduler_file.exists, "the scheduler file")
        self.workers = [self._spawn("worker", "--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1",
                                    "--nthreads", "1", "--no-nanny", "--no-dashboard", "--death-timeout", "60",
                                    *extra) for extra in worker_args]
        from distributed import Client

        self.client = Client(scheduler_file=str(self.scheduler_file), timeout=START_LIMIT_S)
        self.client.wait_for_workers(len(worker_args), timeout=START_LIMIT_S)

    def _spawn(self, role: str, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{role}-{len(list(self.folder.glob(role + '*.log')))}.log", "wb")
        return subprocess.Popen([sys.executable, "-m", "dask", role, *args, "--preload", "dask_standin"],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def pid_of(self, address: str) -> int:
        return self.client.run(os.getpid, workers=[address])[address]

    def address_of(self, pid: int) -> str:
        return next(address for address, its in self.client.run(os.getpid).items() if its == pid)

    def recorded(self, clear: bool = True) -> dict:
        return self.client.run_on_scheduler(dask_standin.recorded, clear=clear)

    def reset_gate(self, hold_from: int | None = None) -> None:
        for path in sorted(self.gate.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        if hold_from is not None:
            (self.gate / "hold_from").write_text(str(hold_from))

    def tickets(self) -> dict[int, int]:
        """ticket number -> pid of the process that took it (one ticket per shard computed)."""
        folder = self.gate / "tickets"
        found = {int(p.name): p.read_text() for p in folder.iterdir()} if folder.exists() else {}
        return {n: int(pid) for n, pid in found.items() if pid}

    def close(self) -> None:
        try:
            self.client.close(timeout=5)
        except Exception:  # noqa: BLE001 - the scheduler may be gone already; the processes go below
            pass
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


def _start(folder: Path, worker_args) -> ProcessCluster:
    try:
        return ProcessCluster(folder, worker_args)
    except BaseException:
        for log in sorted(folder.glob("*.log")):
            print(log.name, log.read_text()[-2000:])
        raise


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler, one plain worker and one worker offering the resource GPU=1."""
    running = _start(tmp_path_factory.mktemp("dask"), [[], ["--resources", "GPU=1"]])
    yield running
    running.close()


@pytest.fixture
def fresh_cluster(tmp_path):
    """Two plain workers, for tests that kill a process."""
    running = _start(tmp_path / "dask", [[], []])
    yield running
    running.close()


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _cache_file(folder: Path) -> Path:
    (path,) = folder.glob("*.h5")
    return path


def _assert_same_cache(ours: Path, theirs: Path) -> None:
    assert ours.name == theirs.name  # same dataset fingerprint and spec hash
    with h5py.File(ours) as a, h5py.File(theirs) as b:
        assert a["features"].dtype == b["features"].dtype and a["features"].shape == b["features"].shape
        assert a["features"][:].tobytes() == b["features"][:].tobytes()  # same bytes, same row order
        for name in ("paths", "labels", "split", "failed"):
            assert a[name][:].tolist() == b[name][:].tolist(), name
        assert set(a.attrs) == set(b.attrs)  # the same schema
        for key in set(a.attrs) - {"created", "updated", "seconds", "images_per_second"}:
            assert str(a.attrs[key]) == str(b.attrs[key]), key  # spec, hash, manifest, rows done...
        assert ("state" in a) == ("state" in b)
        if "state" in a:
            for name in a["state"]:
                np.testing.assert_array_equal(a["state"][name][()], b["state"][name][()])


def _shard_tasks(recorded: dict) -> dict:
    return {key: record for key, record in recorded.items() if key.startswith("featx-shard-")}


# -- both halves on the running cluster ----------------------------------------------------------
def test_cli_cache_and_sweep_on_processes_equal_plain_runs(cluster, tmp_path):
    photos = make_kaggle_images(tmp_path / "photos", 18)
    common = ["cache", str(photos), "--extractor", "hog", "--opt", "size=32", "--shard-rows", "6"]
    _cli(*common, "--cache-dir", str(tmp_path / "plain"), "--workers", "1")
    cluster.recorded()
    output = _cli(*common, "--cache-dir", str(tmp_path / "dask"), "--scheduler", str(cluster.scheduler_file))
    assert "2 worker(s)" in output and "dashboard" in output
    _assert_same_cache(_cache_file(tmp_path / "plain"), _cache_file(tmp_path / "dask"))
    shards = _shard_tasks(cluster.recorded())
    assert len(shards) == 6  # 36 images in shards of 6, each shard one task
    assert all(record["resources"] == {} for record in shards.values())  # HoG runs anywhere

    cache = str(_cache_file(tmp_path / "plain"))
    sweep = [cache, "--heads", "logreg,linsvm", "--cv", "3", "--n-boot", "50", "--no-learning-curve", "--seed", "3"]
    _cli("sweep", *sweep, "--out", str(tmp_path / "local"), "--n-jobs", "2")
    _cli("sweep", *sweep, "--out", str(tmp_path / "on_dask"), "--scheduler", str(cluster.scheduler_file))

    def results(folder):
        with open(folder / "results.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return sorted(tuple((k, v) for k, v in row.items() if k not in TIMING_COLUMNS) for row in rows)

    local, on_dask = results(tmp_path / "local"), results(tmp_path / "on_dask")
    assert len(local) >= 4 and local == on_dask

    # the feature matrix went to the workers once: every config batch refers to the same
    # scattered key instead of carrying the matrix in its own arguments
    batches = {k: r for k, r in cluster.recorded().items() if "run_config" in k}
    assert len(batches) >= 2
    scattered = {tuple(r["dependencies"]) for r in batches.values()}
    assert len(scattered) == 1 and len(next(iter(scattered))) == 1, scattered
    with h5py.File(cache) as h5:
        matrix_bytes = h5["features"].size * 4
    assert max(r["run_spec_bytes"] for r in batches.values()) < matrix_bytes / 4


def test_sift_vocabulary_is_fitted_once_on_the_client(cluster, tmp_path, monkeypatch):
    from featx.extractors.classical import SiftBovwExtractor

    photos = make_kaggle_images(tmp_path / "photos", 12)
    common = ["cache", str(photos), "--extractor", "sift_bovw", "--opt", "k=8", "--opt", "size=48",
              "--opt", "dense=true", "--shard-rows", "6"]
    _cli(*common, "--cache-dir", str(tmp_path / "plain"), "--workers", "1")
    fits = []
    real_fit = SiftBovwExtractor.fit

    def counted_fit(self, images):
        images = list(images)
        fits.append(len(images))
        return real_fit(self, images)

    monkeypatch.setattr(SiftBovwExtractor, "fit", counted_fit)
    # the workers' SiftBovwExtractor.fit raises (dask_standin): a refit there fails the shard
    _cli(*common, "--cache-dir", str(tmp_path / "dask"), "--scheduler", str(cluster.scheduler_file))
    with h5py.File(_cache_file(tmp_path / "dask")) as h5:
        n_train = int((h5["split"][:].astype(str) == "train").sum())
    assert fits == [n_train]  # once, on the train split, in the client
    _assert_same_cache(_cache_file(tmp_path / "plain"), _cache_file(tmp_path / "dask"))


def test_cnn_shards_need_the_gpu_worker_hog_shards_do_not(cluster, tmp_path):
    photos = make_kaggle_images(tmp_path / "photos", 10)
    gpu_worker = next(a for a, w in cluster.client.scheduler_info(n_workers=-1)["workers"].items()
                      if w["resources"].get("GPU"))
    cluster.reset_gate()
    cluster.recorded()
    _cli("cache", str(photos), "--extractor", "gated_model", "--opt", "size=32", "--shard-rows", "4",
         "--batch-size", "4", "--precision", "fp32", "--device", "gpu", "--cache-dir", str(tmp_path / "cnn"),
         "--scheduler", str(cluster.scheduler_file))
    shards = _shard_tasks(cluster.recorded())
    assert len(shards) == 5 and all(r["resources"] == {"GPU": 1} for r in shards.values())
    assert {a for r in shards.values() for a in r["ran_on"]} == {gpu_worker}
    assert set(cluster.tickets().values()) == {cluster.pid_of(gpu_worker)}  # computed there, nowhere else

    _cli("cache", str(photos), "--extractor", "hog", "--opt", "size=32", "--shard-rows", "4", "--device", "gpu",
         "--cache-dir", str(tmp_path / "hog"), "--scheduler", str(cluster.scheduler_file))
    shards = _shard_tasks(cluster.recorded())
    assert len(shards) == 5 and all(r["resources"] == {} for r in shards.values())


# -- killing processes -----------------------------------------------------------------------------
def _held_run(cluster: ProcessCluster, photos: Path, cache_dir: Path, hold_from: int) -> subprocess.Popen:
    """Start `featx cache` on the cluster; shards from ticket ``hold_from`` on wait for a release."""
    cluster.reset_gate(hold_from)
    return subprocess.Popen([*STANDIN_CLI, "cache", str(photos), "--extractor", "gated_hog", "--opt", "size=32",
                             "--shard-rows", "4", "--cache-dir", str(cache_dir),
                             "--scheduler", str(cluster.scheduler_file)],
                            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _journal_shards(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*.partial/shard-*.npz"))


def _wait_held(cluster, cache_dir, hold_from):
    """Both workers hold a shard each (tickets hold_from, hold_from+1); the earlier ones are journaled."""
    _wait_for(lambda: len(cluster.tickets()) == hold_from + 2, "both workers to hold a shard")
    _wait_for(lambda: len(_journal_shards(cache_dir)) == hold_from, f"{hold_from} shards in the journal")


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=RUN_LIMIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    return process.returncode, output


def test_worker_killed_mid_shard_costs_only_that_shard(fresh_cluster, tmp_path):
    photos = make_kaggle_images(tmp_path / "photos", 12)  # 24 images: 6 shards of 4
    _cli("cache", str(photos), "--extractor", "gated_hog", "--opt", "size=32", "--shard-rows", "4", "--workers", "1",
         "--cache-dir", str(tmp_path / "plain"))
    run = _held_run(fresh_cluster, photos, tmp_path / "dask", hold_from=3)
    try:
        _wait_held(fresh_cluster, tmp_path / "dask", 3)
        victim = fresh_cluster.tickets()[3]
        holding = fresh_cluster.client.processing()[fresh_cluster.address_of(victim)]
        assert any(str(key).startswith("featx-shard-") for key in holding), holding  # the scheduler agrees
        os.kill(victim, signal.SIGKILL)
        (fresh_cluster.gate / "release").touch()
    finally:
        returncode, output = _finish(run)
    assert returncode == 0, output
    assert "24 rows (24 computed" in output
    _assert_same_cache(_cache_file(tmp_path / "plain"), _cache_file(tmp_path / "dask"))
    tickets = fresh_cluster.tickets()
    assert len(tickets) == 6 + 1  # every shard once, and the killed one once more
    assert victim not in [pid for n, pid in tickets.items() if n > 3]


@pytest.mark.parametrize("later", ["local", "new-cluster"])
def test_scheduler_gone_leaves_a_journal_a_later_run_finishes(fresh_cluster, tmp_path, later):
    """The scheduler is SIGKILLed with 3 shards journaled: the command stops with one line, and a later
    run, plain or on another cluster (reached by its tcp:// address), computes only the 3 missing shards."""
    photos = make_kaggle_images(tmp_path / "photos", 12)
    _cli("cache", str(photos), "--extractor", "gated_hog", "--opt", "size=32", "--shard-rows", "4", "--workers", "1",
         "--cache-dir", str(tmp_path / "plain"))
    run = _held_run(fresh_cluster, photos, tmp_path / "dask", hold_from=3)
    try:
        _wait_held(fresh_cluster, tmp_path / "dask", 3)
        fresh_cluster.scheduler.send_signal(signal.SIGKILL)
    finally:
        returncode, output = _finish(run)
    assert returncode == 2, output
    assert "scheduler went away" in output and "Traceback" not in output
    assert not list((tmp_path / "dask").glob("*.h5")) and len(_journal_shards(tmp_path / "dask")) == 3

    command = [*STANDIN_CLI, "cache", str(photos), "--extractor", "gated_hog", "--opt", "size=32",
               "--cache-dir", str(tmp_path / "dask")]
    if later == "local":
        gate = tmp_path / "local-gate"  # count the shards the local run computes
        finished = subprocess.run([*command, "--workers", "1"], env={**fresh_cluster.env, dask_standin.GATE_ENV: str(gate)},
                                  capture_output=True, text=True, timeout=RUN_LIMIT_S)
        computed = len(list((gate / "tickets").iterdir()))
    else:
        second = _start(tmp_path / "dask-again", [[], []])
        try:
            address = second.client.scheduler.address
            assert address.startswith("tcp://127.0.0.1:")
            finished = subprocess.run([*command, "--scheduler", address, "--shard-rows", "4"], env=second.env,
                                      capture_output=True, text=True, timeout=RUN_LIMIT_S)
            computed = len(second.tickets())
        finally:
            second.close()
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "24 rows (12 computed" in finished.stdout
    assert computed == 3  # only the 3 unfinished shards
    _assert_same_cache(_cache_file(tmp_path / "plain"), _cache_file(tmp_path / "dask"))
