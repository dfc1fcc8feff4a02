"""The one decode-and-batch path for inference: image files -> uint8 batches for a model.

``pipeline`` (feature caches), ``imagenet`` (top-k) and the OpenVINO int8 calibration all read
images through here, so the pixels a model sees never depend on which command asked.

* :func:`load_options` turns an extractor's ``preprocessing`` dict into the keyword arguments of
  :func:`featx.images.load_image` (JPEGs much larger than the target decode at reduced DCT scale,
  ``draft``; see ``featx.images``).
* :func:`decode_into` decodes a group of files straight into one preallocated
  ``(n, height, width, 3)`` uint8 array: the array the model is called on, no ``np.stack`` copy.
* :func:`iter_batches` keeps ``prefetch`` batches decoding in a thread pool while the caller
  runs the model on the previous one (PIL's decoder and OpenCV's resize release the GIL).
* :func:`decode_threads` sizes that pool against the threads the model itself uses.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np

from featx.images import try_load_image

__all__ = ["load_options", "decode_into", "decode_group", "iter_batches", "decode_threads", "n_cores"]

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

    Decoding and inference alternate on the same cores (the model waits on nothing but the next
    batch), so the pool gets every core the model leaves free, and at least two threads so one
    batch decodes while the next file is read.
    """
    cores = n_cores()
    if model_threads is None:
        return max(2, cores)
    return max(2, cores - int(model_threads) + 1)


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
        pending: list[Future] = []
        submitted = 0

        def fill() -> None:
            nonlocal submitted
            while submitted < len(groups) and len(pending) < prefetch:
                pending.append(pool.submit(decode_group, root, groups[submitted], preprocessing))
                submitted += 1

        for _ in range(len(groups)):
            fill()
            future = pending.pop(0)
            fill()  # ``prefetch`` groups decode while the caller works on this one
            yield future.result()
