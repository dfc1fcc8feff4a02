"""The one decode-and-batch path: image files -> uint8 batches for a model, to infer or to train.

Feature caches, ImageNet top-k, the OpenVINO int8 calibration and both training stages read images
through here, so the pixels a model sees never depend on which command asked. :func:`iter_batches`
decodes groups of files in a thread pool ahead of the model; :class:`ImageSet` holds one labelled
split for training, which :func:`training_batches` serves to Keras.
"""

from __future__ import annotations

import functools
import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from featx.images import try_load_image

__all__ = ["load_options", "decode_into", "decode_group", "iter_batches", "decode_threads", "n_cores", "ImageSet",
           "training_batches", "predict_proba"]

_LOAD_KEYS = ("size", "interpolation", "equalize", "keep_aspect", "draft")


def load_options(preprocessing: dict) -> dict:
    """The :func:`featx.images.load_image` keyword arguments in an extractor's ``preprocessing`` dict.

    Examples
    --------
    >>> load_options({"size": [96, 96], "interpolation": "area", "mean": [1, 2, 3], "equalize": None})
    {'size': [96, 96], 'interpolation': 'area'}
    """
    return {k: preprocessing[k] for k in _LOAD_KEYS if preprocessing.get(k) is not None}


def n_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def decode_threads(model_threads: int | None = None) -> int:
    """Decoding threads beside a model that keeps ``model_threads`` cores busy while it runs.

    Decoding and inference alternate on the same cores, so the pool gets every core the model leaves
    free, and at least two threads so one batch decodes while the next file is read.
    """
    cores = n_cores()
    return max(2, cores if model_threads is None else cores - int(model_threads) + 1)


def decode_into(out: np.ndarray | None, root: str, paths: Sequence[str], preprocessing: dict):
    """Decode ``paths`` (relative to ``root``) into the first rows of ``out``.

    Returns ``(images, ok, reasons)``: ``images`` is a view of the readable rows (in order), ``ok``
    one bool per path, ``reasons`` the error of each unreadable file. With ``out=None`` (no fixed
    size, e.g. HoG at native size) ``images`` is a list of arrays.
    """
    options = load_options(preprocessing)
    ok = np.zeros(len(paths), dtype=bool)
    reasons: list[str] = []
    kept: list[np.ndarray] = []
    n = 0
    for index, rel in enumerate(paths):
        image, reason = try_load_image(os.path.join(root, rel), **options)
        if image is None:
            reasons.append(reason)
            continue
        ok[index] = True
        if out is not None and image.shape == out.shape[1:]:
            out[n] = image
        elif out is not None:
            raise ValueError(f"{rel}: decoded to {image.shape}, expected {out.shape[1:]} "
                             f"(preprocessing {preprocessing})")
        else:
            kept.append(image)
        n += 1
    return (out[:n] if out is not None else kept), ok, reasons


def decode_group(root: str, paths: Sequence[str], preprocessing: dict):
    """:func:`decode_into` a new array sized from ``preprocessing`` (a list when it has no size)."""
    return decode_into(_batch_array(len(paths), preprocessing), root, paths, preprocessing)


def _batch_array(n: int, preprocessing: dict) -> np.ndarray | None:
    size = preprocessing.get("size")
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else size
    return np.empty((n, int(height), int(width), 3), dtype=np.uint8)


def iter_batches(root: str, groups: Sequence[Sequence[str]], preprocessing: dict, workers: int,
                 prefetch: int | None = None) -> Iterator[tuple[np.ndarray | list, np.ndarray, list[str]]]:
    """``(images, ok, reasons)`` for each group of paths, in order, decoded ``prefetch`` groups ahead.

    One thread decodes one group into its own array; ``workers`` threads, at most ``prefetch``
    (default ``2 * workers``) groups decoding or waiting while the caller works on the current one,
    so memory stays bounded whatever the dataset size.
    """
    root = str(root)
    prefetch = max(1, prefetch or 2 * workers)
    if workers <= 1 and prefetch <= 1:
        for paths in groups:
            yield decode_group(root, paths, preprocessing)
        return
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="featx-decode") as pool:
        pending: deque[Future] = deque()
        for paths in groups:
            pending.append(pool.submit(decode_group, root, paths, preprocessing))
            if len(pending) > prefetch:  # ``prefetch`` groups decode while the caller works on this one
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass
class ImageSet:
    """The labelled images of one split: paths (relative to ``root``), integer labels, and the pixels when
    decoded into memory (else :meth:`pixels` decodes rows on each call); ``failed``: ``(path, reason)``."""

    root: str
    paths: list
    labels: np.ndarray
    preprocessing: dict
    workers: int = 4
    images: np.ndarray | None = None
    failed: list = field(default_factory=list)
    name: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, rows: np.ndarray, group_size: int, progress=None) -> tuple[np.ndarray, np.ndarray]:
        groups = [rows[start:start + group_size] for start in range(0, len(rows), max(1, group_size))]
        parts, kept, done = [], [], 0
        for group, (images, ok, reasons) in zip(groups, iter_batches(
                str(self.root), [[self.paths[i] for i in group] for group in groups], self.preprocessing,
                self.workers)):
            parts.append(images)
            kept.append(done + np.flatnonzero(ok))
            for row, reason in zip(group[~ok], reasons):
                if (self.paths[row], reason) not in self.failed:
                    self.failed.append((self.paths[row], reason))
            done += len(group)
            if progress is not None:
                progress.advance(len(group))
        if not parts:
            return _batch_array(0, self.preprocessing), np.zeros(0, np.int64)
        return np.concatenate(parts), np.concatenate(kept)

    def pixels(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """uint8 pixels of ``rows`` and the positions (into ``rows``) that could be read."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.images is not None:
            return self.images[rows], np.arange(len(rows))
        return self._decode(rows, math.ceil(len(rows) / max(1, self.workers)))

    def load(self, progress=None) -> "ImageSet":
        """Decode every image into memory once, dropping (and listing) the unreadable ones."""
        images, kept = self._decode(np.arange(len(self)), 32, progress)
        self.paths, self.labels, self.images = [self.paths[i] for i in kept], self.labels[kept], images
        return self


@functools.cache
def _image_batches():
    """The PyDataset class of :func:`training_batches`, defined on first use (keeps Keras out of imports)."""
    import keras

    class ImageBatches(keras.utils.PyDataset):
        def __init__(self, images, batch_size, shuffle, seed):
            super().__init__(workers=1, use_multiprocessing=False)
            self.images, self.batch_size, self.shuffle, self.seed = images, int(batch_size), shuffle, int(seed)
            self.set_epoch(0)

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)
            n = len(self.images)
            self.order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)

        def __len__(self) -> int:
            return math.ceil(len(self.images) / self.batch_size)

        def __getitem__(self, index):
            rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
            pixels, kept = self.images.pixels(rows)
            return pixels.astype(np.float32), self.images.labels[rows[kept]].astype(np.int32)

        def on_epoch_end(self) -> None:
            self.set_epoch(self.epoch + 1)

    return ImageBatches


def training_batches(images: ImageSet, batch_size: int, shuffle: bool = False, seed: int = 0):
    """A ``keras.utils.PyDataset`` of ``(float32 pixels in [0, 255], int32 labels)`` batches of ``images``.

    With ``shuffle`` the order is drawn from ``(seed, epoch)``: a seed gives the same batches on every
    run, and ``set_epoch(n)`` (a resumed run) continues the order an uninterrupted run would draw.
    One worker thread keeps the order fixed; decoding is threaded inside :meth:`ImageSet.pixels`.
    """
    return _image_batches()(images, batch_size, shuffle, seed)


def predict_proba(model, images: ImageSet, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A Keras model's probabilities for the readable images of ``images``, and their row numbers."""
    parts, rows_kept = [], []
    for start in range(0, len(images), batch_size):
        rows = np.arange(start, min(start + batch_size, len(images)))
        pixels, kept = images.pixels(rows)
        if len(kept):
            parts.append(np.asarray(model.predict_on_batch(pixels.astype(np.float32)), dtype=np.float64))
            rows_kept.append(rows[kept])
    proba = np.concatenate(parts) if parts else np.zeros((0, int(model.output_shape[-1])))
    return proba, np.concatenate(rows_kept) if rows_kept else np.zeros(0, np.int64)
