"""Feature caching and sweeps on a Dask cluster (``--scheduler ADDRESS|file.json|local:N``).

Extraction: the client plans the journal (:func:`featx.pipeline.plan_build`), broadcasts the
extractor's recipe, has workers compute the pending shards and publishes the same file as a local
run. Sweeps: :func:`joblib_on_cluster`. How it works and fails: README.md, "Past one machine: Dask".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from featx.cache import state_sha256
from featx.errors import UserError
from featx.pipeline import CacheResult, extract_images, plan_build, publish_build
from featx.progress import Progress

__all__ = ["ClusterError", "parse_scheduler", "connect", "ExtractorRecipe", "compute_shard",
           "extract_on_cluster", "build_cache", "DistributedCacheResult", "joblib_on_cluster"]

LOCAL_PREFIX = "local:"
DEFAULT_RETRIES = 2
_CONNECT_TIMEOUT_S = 15


class ClusterError(UserError, ValueError):
    """The cluster cannot run the job as asked; the message says why and what to do."""


def parse_scheduler(text: str) -> tuple[str, object]:
    """``("local", n_workers)``, ``("file", path)`` or ``("address", address)``.

    Examples
    --------
    >>> parse_scheduler("local:2")
    ('local', 2)
    >>> parse_scheduler("tcp://10.0.0.5:8786")
    ('address', 'tcp://10.0.0.5:8786')
    """
    text = str(text).strip()
    if text.startswith(LOCAL_PREFIX):
        count = text[len(LOCAL_PREFIX):]
        if not count.isdigit() or int(count) < 1:
            raise ClusterError(f"--scheduler {text!r}: local:N needs a worker count N >= 1 (e.g. local:4)")
        return "local", int(count)
    if text.endswith(".json"):
        if not Path(text).is_file():
            raise ClusterError(f"--scheduler {text}: no such scheduler file; start the scheduler with "
                               f"`dask scheduler --scheduler-file {text}` or give its address tcp://HOST:8786")
        return "file", text
    if not text or text.startswith("local"):
        raise ClusterError(f"--scheduler {text!r}: expected tcp://HOST:PORT, a scheduler file (.json) or local:N")
    return "address", text


def _dashboard_line(client) -> str:
    link = client.dashboard_link
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return f"{link} (served only where bokeh is installed: pip install bokeh)"
    return link


@contextlib.contextmanager
def connect(scheduler: str, report: Callable[[str], None] | None = None, wait_s: float = 30.0):
    """A ``distributed.Client`` for ``scheduler``; a ``local:N`` cluster is started and stopped here.

    ``report`` receives one line naming the scheduler, the workers and the dashboard address.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError("--scheduler needs Dask: pip install 'featx[dask]'") from None

    kind, value = parse_scheduler(scheduler)
    cluster = None
    if kind == "local":
        cluster = LocalCluster(n_workers=value, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    try:
        try:
            if cluster is not None:
                client = Client(cluster)
            elif kind == "file":
                client = Client(scheduler_file=value, timeout=_CONNECT_TIMEOUT_S)
            else:
                client = Client(value, timeout=_CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"--scheduler {scheduler}: cannot reach the scheduler ({exc}); start one with "
                               f"`dask scheduler` or use --scheduler local:N") from None
        try:
            try:
                client.wait_for_workers(1, timeout=wait_s)
            except TimeoutError:
                raise ClusterError(f"--scheduler {scheduler}: no worker joined in {wait_s:.0f} s; start workers "
                                   f"with `dask worker {client.scheduler.address}`") from None
            if report is not None:
                workers = _workers(client)
                threads = sum(w["nthreads"] for w in workers.values())
                report(f"dask: {len(workers)} worker(s), {threads} thread(s) at {client.scheduler.address}; "
                       f"dashboard {_dashboard_line(client)}")
            yield client
        finally:
            if _scheduler_lost(client):  # its reconnect attempts, cancelled by close, are not news
                logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
            elif cluster is not None:  # featx stops its own workers: a heartbeat cut short is no error
                with contextlib.suppress(Exception):
                    client.run(_quiet_worker_logs)
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _quiet_worker_logs() -> None:
    logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)


def _workers(client) -> dict:
    return client.scheduler_info(n_workers=-1)["workers"]


@dataclass(frozen=True)
class ExtractorRecipe:
    """What a worker needs to build the client's extractor: never the model, never a refit."""

    name: str
    params: dict
    precision: str | None
    state: dict
    spec: dict
    device: str = "auto"

    @property
    def key(self) -> str:
        blob = json.dumps(self.spec, sort_keys=True, default=str) + state_sha256(self.state)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def of(cls, extractor, device: str = "auto") -> "ExtractorRecipe":
        """The recipe of a (fitted) extractor: its state travels, so a worker never refits."""
        return cls(name=extractor.name, params=dict(extractor.params),
                   precision=getattr(extractor, "precision", None),
                   state=extractor.get_state() if extractor.needs_fit else {}, spec=extractor.spec(), device=device)


_EXTRACTORS: dict[str, object] = {}  # recipe key -> extractor, one per worker process
_BUILDS: Counter = Counter()  # recipe key -> times this process built it (1, unless evicted)
_BUILD_LOCK = threading.Lock()
_MODEL_LOCKS: dict[str, threading.Lock] = {}


def worker_extractor(recipe: ExtractorRecipe):
    """The extractor of ``recipe``, built once per process and kept (keyed by spec and state)."""
    with _BUILD_LOCK:
        extractor = _EXTRACTORS.get(recipe.key)
        if extractor is not None:
            return extractor
        from featx.extractors import get_extractor

        if recipe.device == "cpu" and "tensorflow" not in sys.modules:
            os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        extractor = get_extractor(recipe.name, **recipe.params)
        if recipe.precision is not None:
            extractor.precision = recipe.precision
        if recipe.state:
            extractor.set_state(recipe.state)
        here = extractor.spec()
        differ = sorted(k for k in here if here[k] != recipe.spec.get(k))
        if differ:
            raise ClusterError(f"worker {socket.gethostname()}: {recipe.name} here differs from the client's in "
                               f"{', '.join(differ)} ({here.get(differ[0])!r} vs {recipe.spec.get(differ[0])!r}); "
                               f"workers need the same featx version and the same weights files")
        _EXTRACTORS[recipe.key] = extractor
        _MODEL_LOCKS[recipe.key] = threading.Lock()
        _BUILDS[recipe.key] += 1
        return extractor


@dataclass
class ShardResult:
    index: int
    features: np.ndarray
    ok: np.ndarray
    reasons: list
    worker: str  # host:pid
    builds: int  # times this worker process built the extractor (1 when kept)


def compute_shard(recipe: ExtractorRecipe, root: str, index: int, paths: Sequence[str], batch_size: int = 32,
                  decode_threads: int = 4) -> ShardResult:
    """Worker task: decode one shard's images and compute their features."""
    extractor = worker_extractor(recipe)
    if not os.path.isdir(root):
        raise ClusterError(f"worker {socket.gethostname()} cannot see {root}; the images must be on a "
                           f"filesystem every worker sees, at the same path")
    # A model: one call at a time per process, decoding threaded inside. Cheap per-image maths: this
    # worker thread does it all; Dask spreads the shards.
    model = extractor.parallel == "model"
    with _MODEL_LOCKS[recipe.key] if model else contextlib.nullcontext():
        (_, features, ok, reasons), = extract_images(extractor, root, [(index, list(paths))],
                                                     workers=decode_threads if model else 1, batch_size=batch_size)
    return ShardResult(index, features, ok, list(reasons), f"{socket.gethostname()}:{os.getpid()}",
                       _BUILDS[recipe.key])


def _scheduler_lost(client) -> bool:
    return client.status not in ("running", "connecting", "newly-created") or client.scheduler_comm is None


def extract_on_cluster(client, recipe: ExtractorRecipe, root: str, units, batch_size: int = 32,
                       decode_threads: int = 4, resources: dict | None = None, retries: int = DEFAULT_RETRIES,
                       in_flight: int | None = None) -> Iterator[ShardResult]:
    """Run ``units`` (``[(shard index, [relative paths])]``) on the cluster; yield results as they finish.

    At most ``in_flight`` shards are submitted at a time (default: twice the cluster's threads), so
    results never pile up on workers and a lost scheduler costs at most that many shards.
    """
    from distributed import as_completed

    if not units:
        return
    if in_flight is None:
        in_flight = max(4, 2 * sum(w["nthreads"] for w in _workers(client).values()))
    recipe_future = client.scatter(recipe, broadcast=True, hash=False)
    todo = list(units)
    done = 0

    def submit(unit):
        index, paths = unit
        return client.submit(compute_shard, recipe_future, root, index, list(paths), batch_size, decode_threads,
                             key=f"featx-shard-{recipe.key}-{index:06d}", pure=False, retries=retries,
                             resources=resources)

    first = [submit(u) for u in todo[:in_flight]]
    position = len(first)
    queue = as_completed(first, with_results=True, raise_errors=False)  # results come in batches
    try:
        for future, result in queue:
            if future.status != "finished":
                if future.status == "cancelled" or _scheduler_lost(client):
                    raise ClusterError(
                        f"the scheduler went away after {done} of {len(units)} shards ({type(result).__name__}); "
                        f"the finished shards are in the journal: run the same command again (with or "
                        f"without --scheduler) to compute only the missing ones") from None
                if type(result).__name__ == "KilledWorker":
                    raise ClusterError(f"shard {future.key} killed every worker that ran it ({result}); check the "
                                       f"workers' memory and logs") from None
                raise result
            done += 1
            future.release()
            if position < len(todo):
                queue.add(submit(todo[position]))
                position += 1
            yield result
    finally:
        queue.clear()


def _check_cluster(client, root: str, scheduler: str, needs_gpu: bool) -> None:
    workers = _workers(client)
    if needs_gpu and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
        raise ClusterError(f"--device gpu, but no worker of {scheduler} offers the resource GPU; start GPU "
                           f"workers with `dask worker {client.scheduler.address} --resources GPU=1 --nthreads 1`")
    sees = client.run(os.path.isdir, root)
    blind = sorted(address for address, ok in sees.items() if not ok)
    if blind:
        raise ClusterError(f"worker(s) {', '.join(blind)} cannot see {root}; the images (and the cache folder) "
                           f"must be on a filesystem every worker sees, at the same path")


@dataclass
class DistributedCacheResult(CacheResult):
    """``featx.pipeline.CacheResult`` plus what the cluster did."""

    shards: int = 0
    shards_by_worker: dict = field(default_factory=dict)  # host:pid -> shards it computed
    builds_by_worker: dict = field(default_factory=dict)  # host:pid -> times it built the extractor


def build_cache(manifest, extractor, scheduler: str, cache_dir="cache", batch_size: int = 32,
                workers: int | None = None, dtype: str = "float32", shard_rows: int | None = None,
                fit_max_images: int = 2000, progress=None, fit: bool = True, spec_extra: dict | None = None,
                device: str = "auto", retries: int = DEFAULT_RETRIES,
                report: Callable[[str], None] | None = None) -> CacheResult:
    """``featx.pipeline.build_cache`` with the shards computed on a Dask cluster.

    Same arguments and the same file as the single-machine run, plus ``scheduler``
    (``tcp://HOST:PORT``, a scheduler ``.json`` file, or ``local:N``), ``device`` (``gpu``:
    CNN shards need the worker resource ``GPU``), ``retries`` (reruns of a shard whose task
    raised) and ``report`` (gets the one-line cluster and dashboard summary). ``workers`` is
    the number of decoding threads inside a CNN shard (default 4).
    """
    if device not in ("auto", "cpu", "gpu"):
        raise ClusterError(f"--device must be auto, cpu or gpu; got {device!r}")
    parse_scheduler(scheduler)  # a bad --scheduler fails before any work
    progress = progress or Progress()
    with plan_build(manifest, extractor, cache_dir, dtype, batch_size, shard_rows, fit, fit_max_images,
                    spec_extra, progress) as job:  # the SIFT vocabulary is fitted here, once, before any shard
        if job.done is not None:
            return job.done
        builder, by_index = job.builder, {shard.index: shard for shard, _ in job.units}
        needs_gpu = device == "gpu" and extractor.parallel == "model"
        with connect(scheduler, report=report) as client:
            _check_cluster(client, str(manifest.root), scheduler, needs_gpu)
            progress.start(f"{extractor.name} features on {scheduler}", builder.plan.n_rows)
            progress.advance(builder.plan.n_rows - job.todo)
            compute_started = time.perf_counter()
            shards_by_worker: Counter = Counter()
            builds: dict[str, int] = {}
            try:
                for result in extract_on_cluster(client, ExtractorRecipe.of(extractor, device), str(manifest.root),
                                                 [(shard.index, paths) for shard, paths in job.units], batch_size,
                                                 decode_threads=workers or 4,
                                                 resources={"GPU": 1} if needs_gpu else None, retries=retries):
                    builder.write_shard(by_index[result.index], result.features, result.ok, result.reasons)
                    shards_by_worker[result.worker] += 1
                    builds[result.worker] = max(builds.get(result.worker, 0), result.builds)
                    progress.advance(len(result.ok))
            finally:
                progress.stop()
        ran_on = "keras" if extractor.parallel == "model" else "python"
        return publish_build(job, compute_started, fit_max_images, ran_on, result=DistributedCacheResult,
                             shards=len(by_index), shards_by_worker=dict(shards_by_worker), builds_by_worker=builds)


@contextlib.contextmanager
def joblib_on_cluster(scheduler: str, scatter: Sequence = (), report: Callable[[str], None] | None = None):
    """Inside: ``joblib.Parallel(n_jobs=-1)`` (backend left unset) runs on the cluster.

    Each object in ``scatter`` (the feature sets) is sent to every worker once; calls that take
    one of them as an argument refer to the worker's copy instead of sending it again.
    """
    from joblib import parallel_config

    with connect(scheduler, report=report) as client:
        with parallel_config(backend="dask", client=client, scatter=list(scatter)):
            yield client
