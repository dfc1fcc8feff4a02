"""decode -> batch -> model -> write, overlapped.

Two ways to keep the machine busy, chosen by the extractor's ``parallel`` attribute:

``processes`` (HoG, SIFT)
    Cheap per-image maths in Python: each shard of rows is decoded and transformed in a
    joblib worker process; the main process only writes finished shards.
``model`` (CNNs)
    The model uses every core (or the GPU) by itself. Images are decoded by a pool of
    threads, a bounded number of batches ahead; the main thread runs the model batch
    after batch; finished shards are written by a writer thread. Memory stays bounded
    by ``prefetch`` batches plus one shard, whatever the dataset size.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from featx.cache import CacheBuilder, Shard, cache_path
from featx.data import DataError, Manifest
from featx.extractors.base import Extractor
from featx.images import try_load_image

__all__ = ["CacheResult", "build_cache", "extract_images", "Progress"]


class Progress:
    """Progress hooks; the CLI passes a Rich-backed one, the API a silent one."""

    def start(self, description: str, total: int) -> None:  # pragma: no cover - trivial
        pass

    def advance(self, n: int = 1) -> None:  # pragma: no cover - trivial
        pass

    def stop(self) -> None:  # pragma: no cover - trivial
        pass


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

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def _decode_and_transform(extractor: Extractor, root: str, paths: Sequence[str]):
    """Worker-process unit: decode a shard's images and compute their features."""
    images, ok, reasons = _decode(root, paths, extractor.preprocessing)
    features = extractor.transform(images) if images else np.zeros((0, 0), np.float32)
    return features, ok, reasons


def _decode(root: str, paths: Sequence[str], preprocessing: dict):
    images, ok, reasons = [], [], []
    for rel in paths:
        image, reason = try_load_image(os.path.join(root, rel), **load_options(preprocessing))
        ok.append(image is not None)
        if image is None:
            reasons.append(reason)
        else:
            images.append(image)
    return images, np.array(ok, dtype=bool), reasons


def load_options(preprocessing: dict) -> dict:
    """The ``featx.images.load_image`` keyword arguments in an extractor's ``preprocessing`` dict."""
    keys = ("size", "interpolation", "equalize", "keep_aspect", "draft")
    return {k: preprocessing[k] for k in keys if k in preprocessing and preprocessing[k] is not None}


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _run_processes(extractor, root, units, workers) -> Iterator:
    if workers == 1:
        for shard, paths in units:
            yield (shard, *_decode_and_transform(extractor, root, paths))
        return
    from joblib import Parallel, delayed

    results = Parallel(n_jobs=workers, return_as="generator", backend="loky")(
        delayed(_decode_and_transform)(extractor, root, paths) for _, paths in units)
    # drive the loop by the results so joblib's generator is run to its end (no "tasks cancelled" warning)
    for index, result in enumerate(results):
        yield (units[index][0], *result)


def _run_model(extractor, root, units, workers, batch_size, prefetch, runner=None) -> Iterator:
    """Threads decode ahead; the main thread runs the model; yields whole shards."""
    preprocessing = extractor.preprocessing
    batches = []  # (shard position, paths of the batch)
    for position, (_, paths) in enumerate(units):
        for start in range(0, len(paths), batch_size):
            batches.append((position, paths[start:start + batch_size]))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featx-decode") as pool:
        pending: list[Future] = []
        next_batch = 0

        def fill() -> None:
            nonlocal next_batch
            while next_batch < len(batches) and len(pending) < prefetch:
                _, paths = batches[next_batch]
                pending.append(pool.submit(_decode, root, paths, preprocessing))
                next_batch += 1

        fill()
        position, parts = 0, []
        for index in range(len(batches)):
            batch_position, _ = batches[index]
            images, ok, reasons = pending.pop(0).result()
            fill()
            features = (runner or extractor.transform)(images) if images else None
            parts.append((features, ok, reasons))
            last_of_shard = index + 1 == len(batches) or batches[index + 1][0] != batch_position
            if last_of_shard:
                feats = [f for f, _, _ in parts if f is not None]
                yield (units[batch_position][0],
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
    workers = workers or default_workers()
    root = str(root)
    if extractor.parallel == "processes":
        yield from _run_processes(extractor, root, units, workers)
    else:
        yield from _run_model(extractor, root, units, workers, batch_size,
                              prefetch or max(2, 2 * workers), runner)


def _fit_extractor(extractor: Extractor, manifest: Manifest, builder: CacheBuilder,
                   fit_max_images: int, seed: int, progress: Progress) -> None:
    state = builder.load_state()
    if state:
        extractor.set_state(state)
        return
    train = [r.path for r in manifest.records if r.split == "train"]
    if not train:
        raise DataError(f"{extractor.name} learns from the train split, but {manifest.root} has no "
                         f"train images (all are val/test/unlabeled); index with smaller --val/--test")
    if len(train) > fit_max_images:
        rng = np.random.default_rng(seed)
        train = sorted(rng.choice(train, size=fit_max_images, replace=False).tolist())
    progress.start(f"decode {len(train)} train images to fit {extractor.name}", len(train))
    images = []
    for rel in train:
        image, _ = try_load_image(os.path.join(manifest.root, rel), **load_options(extractor.preprocessing))
        if image is not None:
            images.append(image)
        progress.advance(1)
    progress.stop()
    extractor.fit(images)
    builder.save_state(extractor.get_state())


def build_cache(manifest: Manifest, extractor: Extractor, cache_dir: str | os.PathLike = "cache",
                batch_size: int = 32, workers: int | None = None, dtype: str = "float32",
                shard_rows: int | None = None, fit_max_images: int = 2000,
                progress: Progress | None = None,
                on_shard: Callable[[Shard], None] | None = None,
                fit: bool = True, spec_extra: dict | None = None, runtime: str = "keras") -> CacheResult:
    """Compute (or finish, or update) the feature cache of a dataset.

    Parameters
    ----------
    manifest : Manifest
        The images (``featx.data.build_manifest`` or ``Manifest.read``).
    extractor : Extractor
        From ``featx.extractors.get_extractor``.
    cache_dir : path
        Where the ``.h5`` file goes.
    batch_size : int
        Images per model call (CNN extractors).
    workers : int, optional
        Decoding threads (CNN) or worker processes (classical); default: all cores.
    dtype : {"float32", "float16"}
    shard_rows : int, optional
        Rows per journal shard (the unit of resumption). Default: 8 batches for CNNs,
        32 images for classical extractors.
    fit_max_images : int
        At most this many train images (a seeded sample) fit a learned extractor (SIFT vocabulary).
    fit : bool
        False when a learned extractor already holds its state (``set_state`` from a saved
        model): it is stored with the cache instead of being fit on this dataset.
    spec_extra : dict, optional
        Merged into the spec (and so into the file name hash), e.g. the sha256 of a state
        that came from elsewhere, so caches made with different states never collide.

    runtime : {"keras", "openvino", "auto"}
        What runs a CNN (``featx.runtime``). fp32 features agree across runtimes, so the runtime
        is recorded in the cache attributes, not in the spec.
    Returns
    -------
    CacheResult
    """
    progress = progress or Progress()
    if extractor.parallel == "model":  # a bad --runtime fails before anything is written
        from featx.runtime import resolve_runtime

        resolve_runtime(runtime)  # the name only: building the model waits until there is work
    spec = {**extractor.spec(), **(spec_extra or {})}
    path = cache_path(cache_dir, manifest, spec, dtype)
    started = time.perf_counter()
    with CacheBuilder(path, manifest, spec, dtype) as builder:
        if builder.is_complete():
            from featx.cache import open_cache

            with open_cache(path) as cache:
                return CacheResult(path, rows=cache.n_rows, failed=cache.failed, noop=True,
                                   seconds=time.perf_counter() - started)
        if shard_rows is None:
            shard_rows = 8 * batch_size if extractor.parallel == "model" else 32
        builder.prepare(shard_rows=shard_rows)
        if extractor.needs_fit and fit:
            _fit_extractor(extractor, manifest, builder, fit_max_images, manifest.seed, progress)
        elif extractor.needs_fit:
            builder.save_state(extractor.get_state())
        pending = builder.pending_shards()
        units = [(shard, [r.path for r in builder.records_of(shard)]) for shard in pending]
        todo = sum(len(paths) for _, paths in units)
        done_before = builder.plan.n_rows - todo
        label = f"{extractor.name} features"
        progress.start(label, builder.plan.n_rows)
        progress.advance(done_before)
        runner = None
        if extractor.parallel == "model" and pending:
            from featx.runtime import make_runner

            runner = make_runner(extractor, runtime, getattr(extractor, "precision", "fp32"))
        compute_started = time.perf_counter()
        writer = _ShardWriter(builder, on_shard)
        try:
            for shard, features, ok, reasons in extract_images(extractor, manifest.root, units,
                                                               workers, batch_size, runner=runner):
                writer.put(shard, features, ok, reasons)
                progress.advance(len(ok))
        finally:
            writer.close()
            progress.stop()
        compute_seconds = time.perf_counter() - compute_started
        out = builder.publish({"seconds": round(compute_seconds, 3),
                               "images_per_second": round(todo / compute_seconds, 3) if compute_seconds > 0 and todo else 0.0,
                               "fit_max_images": fit_max_images,
                               "runtime": getattr(runner, "runtime", "python")})
        from featx.cache import open_cache

        with open_cache(out) as cache:
            return CacheResult(out, rows=cache.n_rows, computed=todo, reused=builder.n_reused,
                               failed=cache.failed, seconds=compute_seconds)


class _ShardWriter:
    """Writes shards on a background thread so disk I/O overlaps compute."""

    def __init__(self, builder: CacheBuilder, on_shard=None):
        self.builder = builder
        self.on_shard = on_shard
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
                shard, features, ok, reasons = item
                self.builder.write_shard(shard, features, ok, reasons)
                if self.on_shard is not None:
                    self.on_shard(shard)
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
