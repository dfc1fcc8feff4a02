"""decode -> batch -> model -> write, overlapped; two ways, by the extractor's ``parallel`` attribute.

``processes`` (HoG, SIFT): cheap per-image maths in Python; each shard is decoded and transformed in
a joblib worker process, and the main process only writes finished shards.
``model`` (CNNs): the model (a ``featx.runtime`` runner) uses every core by itself. Threads sized
against the model's own (``featx.datasets.iter_batches``) decode a bounded number of batches ahead,
straight into the array the model is called on; the main thread runs the model; a writer thread
writes finished shards. Memory stays bounded by ``prefetch`` batches plus one shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from featx.cache import CacheBuilder, cache_path, open_cache, state_sha256
from featx.data import DataError, Manifest
from featx.extractors.base import Extractor
from featx.datasets import decode_group, decode_threads, iter_batches, n_cores
from featx.progress import Progress

__all__ = ["CacheResult", "build_cache", "extract_images"]


@dataclass
class CacheResult:
    """What one ``build_cache`` call did."""

    path: Path
    rows: int = 0
    computed: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    noop: bool = False
    runtime: str = ""  # what computed the new rows: keras, openvino, python (HoG/SIFT); "" when none

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def _decode_and_transform(extractor: Extractor, root: str, paths: Sequence[str]):
    """Worker-process unit: decode a shard's images and compute their features."""
    images, ok, reasons = decode_group(root, paths, extractor.preprocessing)
    features = extractor.transform(images) if len(images) else np.zeros((0, 0), np.float32)
    return features, ok, reasons


def _run_processes(extractor, root, units, workers) -> Iterator:
    if workers == 1:
        for shard, paths in units:
            yield (shard, *_decode_and_transform(extractor, root, paths))
        return
    from joblib import Parallel, delayed

    results = Parallel(n_jobs=workers, return_as="generator", backend="loky")(
        delayed(_decode_and_transform)(extractor, root, paths) for _, paths in units)
    # drive the loop by the results so joblib's generator is run to its end (no "tasks cancelled" warning)
    try:
        for index, result in enumerate(results):
            yield (units[index][0], *result)
    finally:
        # Stopped early (the shard writer failed: a full disk, say), joblib cancels the tasks left and
        # says so; the error that stopped it is the one line the user needs.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*tasks which were still being processed", category=UserWarning)
            results.close()


def _run_model(extractor, root, units, workers, batch_size, prefetch, runner=None) -> Iterator:
    """Threads decode ahead (``featx.datasets.iter_batches``); the main thread runs the model."""
    owner, groups = [], []  # shard position of each batch, paths of each batch
    for position, (_, paths) in enumerate(units):
        for start in range(0, len(paths), batch_size):
            owner.append(position)
            groups.append(paths[start:start + batch_size])
    run = runner or extractor.transform
    parts = []
    for index, (images, ok, reasons) in enumerate(iter_batches(root, groups, extractor.preprocessing,
                                                                 workers, prefetch)):
        parts.append((run(images) if len(images) else None, ok, reasons))
        if index + 1 == len(groups) or owner[index + 1] != owner[index]:
            feats = [f for f, _, _ in parts if f is not None]
            yield (units[owner[index]][0],
                   np.concatenate(feats) if feats else np.zeros((0, 0), np.float32),
                   np.concatenate([o for _, o, _ in parts]),
                   [r for _, _, rs in parts for r in rs])
            parts = []


def extract_images(extractor: Extractor, root: str | os.PathLike, units, workers: int | None = None,
                   batch_size: int = 32, prefetch: int | None = None, runner=None) -> Iterator:
    """Features for groups of image paths, in order.

    ``units`` is a list of ``(key, [relative paths])``; yields ``(key, features, ok, reasons)``
    for each, where ``features`` has one row per readable image. ``runner`` (from
    ``featx.runtime.make_runner``) replaces ``extractor.transform`` for model extractors.
    """
    workers = workers or n_cores()
    root = str(root)
    if extractor.parallel == "processes":
        yield from _run_processes(extractor, root, units, workers)
    else:
        yield from _run_model(extractor, root, units, workers, batch_size,
                              prefetch or max(2, 2 * workers), runner)


def _fit_rows(manifest: Manifest, fit_max_images: int, seed: int) -> list[str]:
    """The train images a learned extractor is fit on: all of them, or a seeded sample of ``fit_max_images``."""
    train = [r.path for r in manifest.records if r.split == "train"]
    if len(train) > fit_max_images:
        rng = np.random.default_rng(seed)
        train = sorted(rng.choice(train, size=fit_max_images, replace=False).tolist())
    return train


def _fit_key(manifest: Manifest, extractor: Extractor, fit: bool, fit_max_images: int) -> str | None:
    """What a learned extractor's state in a cache comes from (``CacheBuilder``'s ``fit_key``).

    ``fit:`` and a hash of the paths and sha1s of the train images it is fit on, or ``state:`` and the
    hash of a state given from elsewhere (``fit=False``); None for an extractor that learns nothing.
    A state is only ever reused from a cache with the same key: a vocabulary fit on the train rows of
    another split or seed would leak its val/test images into this one.
    """
    if not extractor.needs_fit:
        return None
    if not fit:
        return "state:" + state_sha256(extractor.get_state())
    sha1 = {r.path: r.sha1 for r in manifest.records}
    rows = [[path, sha1[path]] for path in _fit_rows(manifest, fit_max_images, manifest.seed)]
    return "fit:" + hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()[:16]


def _fit_extractor(extractor: Extractor, manifest: Manifest, builder: CacheBuilder,
                   fit_max_images: int, seed: int, progress: Progress) -> None:
    state = builder.load_state()
    if state:
        extractor.set_state(state)
        return
    train = _fit_rows(manifest, fit_max_images, seed)
    if not train:
        raise DataError(f"{extractor.name} learns from the train split, but {manifest.root} has no "
                         f"train images (all are val/test/unlabeled); index with smaller --val/--test")
    progress.start(f"decode {len(train)} train images to fit {extractor.name}", len(train))
    images = []
    for start in range(0, len(train), 64):
        decoded, ok, _ = decode_group(str(manifest.root), train[start:start + 64], extractor.preprocessing)
        images.extend(decoded)
        progress.advance(len(ok))
    progress.stop()
    extractor.fit(images)
    builder.save_state(extractor.get_state())


@dataclass
class BuildPlan:
    """A cache build after its opening: the locked builder and what is left to compute."""

    builder: CacheBuilder
    units: list = field(default_factory=list)  # [(Shard, [relative paths])] still to compute
    done: CacheResult | None = None  # set when the cache was already complete: nothing to do

    @property
    def todo(self) -> int:
        return sum(len(paths) for _, paths in self.units)


@contextlib.contextmanager
def plan_build(manifest: Manifest, extractor: Extractor, cache_dir="cache", dtype: str = "float32",
               batch_size: int = 32, shard_rows: int | None = None, fit: bool = True,
               fit_max_images: int = 2000, spec_extra: dict | None = None,
               progress: Progress | None = None) -> Iterator[BuildPlan]:
    """The opening every cache build shares (here and on a Dask cluster, ``featx.distributed``).

    Holds the writer's lock while inside; a complete cache yields ``done`` (a no-op result);
    otherwise the journal is started or resumed, a learned extractor is fitted (or given its
    stored state), and ``units`` lists the shards still to compute.
    """
    spec = {**extractor.spec(), **(spec_extra or {})}
    path = cache_path(cache_dir, manifest, spec, dtype)
    started = time.perf_counter()
    with CacheBuilder(path, manifest, spec, dtype, _fit_key(manifest, extractor, fit, fit_max_images)) as builder:
        if builder.is_complete():
            with open_cache(path) as cache:
                yield BuildPlan(builder, done=CacheResult(path, rows=cache.n_rows, failed=cache.failed, noop=True,
                                                          seconds=time.perf_counter() - started))
            return
        if shard_rows is None:
            shard_rows = 8 * batch_size if extractor.parallel == "model" else 32
        builder.prepare(shard_rows=shard_rows)
        if extractor.needs_fit and fit:
            _fit_extractor(extractor, manifest, builder, fit_max_images, manifest.seed, progress or Progress())
        elif extractor.needs_fit:
            builder.save_state(extractor.get_state())
        yield BuildPlan(builder, [(shard, [r.path for r in builder.records_of(shard)])
                                  for shard in builder.pending_shards()])


def build_cache(manifest: Manifest, extractor: Extractor, cache_dir: str | os.PathLike = "cache",
                batch_size: int = 32, workers: int | None = None, dtype: str = "float32",
                shard_rows: int | None = None, fit_max_images: int = 2000, progress: Progress | None = None,
                fit: bool = True, spec_extra: dict | None = None, runtime: str = "auto") -> CacheResult:
    """Compute (or finish, or update) the feature cache of a dataset in ``cache_dir``.

    Parameters
    ----------
    workers : int, optional
        Decoding threads (CNN) or worker processes (classical); default: all cores.
    shard_rows : int, optional
        Rows per journal shard (the unit of resumption); default: 8 batches for CNNs, 32 images
        otherwise.
    fit_max_images : int
        At most this many train images (a seeded sample) fit a learned extractor (SIFT vocabulary).
    fit : bool
        False when a learned extractor already holds its state (``set_state`` from a saved
        model): it is stored with the cache instead of being fit on this dataset.
    spec_extra : dict, optional
        Merged into the spec (and so into the file name hash), e.g. the sha256 of a state
        that came from elsewhere, so caches made with different states never collide.
    runtime : {"auto", "keras", "openvino"}
        What runs a CNN; recorded as the ``runtime`` attribute, not in the spec (README.md,
        "Inference runtimes and precisions"). An int8 run records its calibration images'
        fingerprint as the ``int8_calibration`` attribute.
    """
    progress = progress or Progress()
    precision = getattr(extractor, "precision", "fp32")
    if extractor.parallel == "model":  # a bad --runtime fails before anything is written
        from featx.runtime import resolve_runtime

        resolve_runtime(runtime, extractor, precision)  # the name only: the model waits until there is work
    with plan_build(manifest, extractor, cache_dir, dtype, batch_size, shard_rows, fit, fit_max_images,
                    spec_extra, progress) as job:
        if job.done is not None:
            return job.done
        builder, units = job.builder, job.units
        runner, calibration = None, None
        if extractor.parallel == "model" and units:  # the model, before the bar: it may fail to load
            from featx.runtime import make_runner, resolve_runtime

            if precision == "int8" and resolve_runtime(runtime, extractor, precision) == "openvino":
                from featx.runtime.openvino import calibration_set

                calibration = calibration_set(manifest, seed=manifest.seed)
            runner = make_runner(extractor, runtime, precision, calibration=calibration)
            if workers is None:
                workers = decode_threads(runner.model_threads)
        progress.start(f"{extractor.name} features", builder.plan.n_rows)
        progress.advance(builder.plan.n_rows - job.todo)  # rows already in the journal
        compute_started = time.perf_counter()
        writer = _ShardWriter(builder)
        try:
            for shard, features, ok, reasons in extract_images(extractor, manifest.root, units,
                                                               workers, batch_size, runner=runner):
                writer.put(shard, features, ok, reasons)
                progress.advance(len(ok))
        finally:
            writer.close()
            progress.stop()
        ran_on = getattr(runner, "runtime", "python")
        attrs = {"int8_calibration": calibration.fingerprint} if calibration else {}
        if ran_on == "keras":
            from featx.backend import keras_backend

            attrs["keras_backend"] = keras_backend()
        return publish_build(job, compute_started, fit_max_images, ran_on, attrs, runtime=ran_on)


def publish_build(job: BuildPlan, compute_started: float, fit_max_images: int, ran_on: str,
                  attrs: dict | None = None, result: type[CacheResult] = CacheResult, **fields) -> CacheResult:
    """Publish a build's journal with its timing attributes; ``result`` (given ``fields``) describes the file."""
    seconds = time.perf_counter() - compute_started
    out = job.builder.publish({"seconds": round(seconds, 3),
                               "images_per_second": round(job.todo / seconds, 3) if seconds > 0 and job.todo else 0.0,
                               "fit_max_images": fit_max_images, "runtime": ran_on, **(attrs or {})})
    with open_cache(out) as cache:
        return result(out, rows=cache.n_rows, computed=job.todo, reused=job.builder.n_reused, failed=cache.failed,
                      seconds=seconds, **fields)


class _ShardWriter:
    """Writes shards on a background thread so disk I/O overlaps compute."""

    def __init__(self, builder: CacheBuilder):
        self.builder = builder
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="featx-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue
            try:
                self.builder.write_shard(*item)
            except BaseException as exc:  # re-raised in the main thread
                self.error = exc

    def put(self, shard, features, ok, reasons) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((shard, features, ok, reasons))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
