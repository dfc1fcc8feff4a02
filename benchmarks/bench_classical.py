"""Speed of the classical extractors (hog, sift_bovw): one worker against all workers.

For each extractor, decode (``featx.images.load_image`` with the extractor's
``preprocessing``) + ``transform`` run over chunks of image paths in this
process alone, and in joblib (loky) worker processes, as ``featx cache`` does
for ``parallel = "processes"`` extractors. The two modes alternate block by
block (a shared machine's load then weighs on both alike), and must give
identical features. SIFT first fits its vocabulary on a seeded subset of the images; that
fit is timed on its own.

Then, as a sanity figure for the features themselves: 5-fold cross-validated
accuracy of StandardScaler + LogisticRegression on each feature set, with labels
from Kaggle-style file names (``cat.12.jpg`` -> cat). For SIFT the accuracy is
given on all images and on the images the vocabulary never saw.

Run by hand from the repository root::

    .venv/bin/python benchmarks/bench_classical.py [--data DIR] [--limit 2000] [--workers -1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from threadpoolctl import threadpool_limits

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from featx.extractors import get_extractor  # noqa: E402
from featx.images import is_image_name, load_image  # noqa: E402


def decode_and_transform(extractor, paths: list[str]) -> tuple[np.ndarray, float]:
    """What one pipeline worker does with one chunk of paths; also its CPU seconds."""
    start = time.process_time()
    images = [load_image(path, **extractor.preprocessing) for path in paths]
    return extractor.transform(images), time.process_time() - start


def warm_up(extractor, paths: list[str], pause_seconds: float = 1.0) -> None:
    decode_and_transform(extractor, paths)
    time.sleep(pause_seconds)


def run_one_worker(extractor, chunks: list[list[str]]) -> tuple[np.ndarray, float]:
    # BLAS limited to one thread too, so "1 worker" is one core, as in a loky worker.
    with threadpool_limits(limits=1):
        return gather([decode_and_transform(extractor, chunk) for chunk in chunks])


def run_workers(extractor, chunks: list[list[str]], n_workers: int) -> tuple[np.ndarray, float]:
    return gather(Parallel(n_jobs=n_workers, backend="loky")(
        delayed(decode_and_transform)(extractor, chunk) for chunk in chunks))


def gather(parts: list[tuple[np.ndarray, float]]) -> tuple[np.ndarray, float]:
    """All chunks' features in order, and the CPU seconds they took together."""
    return np.concatenate([features for features, _ in parts]), sum(cpu for _, cpu in parts)


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def cv_accuracy(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_score(model, features, labels, cv=splitter, n_jobs=1)
    return float(scores.mean()), float(scores.std())


def list_images(folder: Path, limit: int, seed: int) -> tuple[list[str], np.ndarray, list[str]]:
    if not folder.is_dir():
        raise SystemExit(f"--data {folder}: no such folder (expected Kaggle-style cat.N.jpg / dog.N.jpg)")
    paths = sorted(str(p) for p in folder.iterdir() if is_image_name(p))
    if not paths:
        raise SystemExit(f"--data {folder}: no images found")
    if limit < len(paths):  # a seeded sample, so a small --limit still holds both classes
        keep = np.random.default_rng(seed).choice(len(paths), limit, replace=False)
        paths = [paths[i] for i in sorted(keep)]
    names = [Path(p).name.split(".")[0].lower() for p in paths]
    classes = sorted(set(names))
    return paths, np.array([classes.index(n) for n in names]), classes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / ".." / "shared" / "data" / "catsdogs-dev" / "train",
                        help="folder of Kaggle-style images (default: ../shared/data/catsdogs-dev/train)")
    parser.add_argument("--limit", type=int, default=2000, help="at most this many images (seeded sample)")
    parser.add_argument("--workers", type=int, default=-1, help="processes for the parallel run (-1: all cores)")
    parser.add_argument("--chunk", type=int, default=32, help="paths per worker task (the pipeline's shard)")
    parser.add_argument("--block", type=int, default=8,
                        help="chunks timed in one mode before switching to the other")
    parser.add_argument("--fit-images", type=int, default=500, help="images that fit the SIFT vocabulary")
    parser.add_argument("--extractors", default="hog,sift_bovw", help="comma-separated names")
    parser.add_argument("--cv", type=int, default=5, help="folds for the accuracy figure (0: skip it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    paths, labels, classes = list_images(args.data.resolve(), args.limit, args.seed)
    n_workers = effective_n_jobs(args.workers)
    chunks = [paths[i:i + args.chunk] for i in range(0, len(paths), args.chunk)]
    print(f"{len(paths)} images from {args.data} ({', '.join(classes)}); {os.cpu_count()} cores, "
          f"{n_workers} workers, chunks of {args.chunk}, modes alternating every "
          f"{args.block * args.chunk} images; load average before: "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")

    rows, accuracy_rows = [], []
    for name in args.extractors.split(","):
        extractor = get_extractor(name, n_jobs=n_workers) if name == "sift_bovw" else get_extractor(name)
        vocabulary_paths: set[str] = set()
        if extractor.needs_fit:
            rng = np.random.default_rng(args.seed)
            fit_paths = sorted(rng.choice(paths, min(args.fit_images, len(paths)), replace=False).tolist())
            vocabulary_paths = set(fit_paths)
            fit_images, decode_seconds = timed(lambda: [load_image(p, **extractor.preprocessing) for p in fit_paths])
            _, fit_seconds = timed(extractor.fit, fit_images)
            del fit_images
            print(f"{name}: vocabulary of k={extractor.output_dim} fitted on {len(fit_paths)} images in "
                  f"{fit_seconds:.1f} s ({n_workers} workers for descriptors; decoding took "
                  f"{decode_seconds:.1f} s more)")
        # Start the workers, and let each import featx, before timing: the pipeline pays
        # this once per run. The pause keeps one worker from taking every warm-up task.
        Parallel(n_jobs=n_workers, backend="loky")(
            delayed(warm_up)(extractor, paths[:2]) for _ in range(n_workers))

        # The two modes take turns, one block of chunks each, so that a change in the
        # machine's background load falls on both alike instead of on one whole run.
        serial_parts, parallel_parts = [], []
        serial_seconds = parallel_seconds = 0.0
        for start in range(0, len(chunks), args.block):
            block = chunks[start:start + args.block]
            part, seconds = timed(run_one_worker, extractor, block)
            serial_parts.append(part)
            serial_seconds += seconds
            part, seconds = timed(run_workers, extractor, block, n_workers)
            parallel_parts.append(part)
            parallel_seconds += seconds
        serial, serial_cpu = gather(serial_parts)
        parallel, parallel_cpu = gather(parallel_parts)
        if not np.array_equal(serial, parallel):
            raise SystemExit(f"{name}: features differ between 1 and {n_workers} workers")
        # CPU ms per image: equal in both runs when the workers do not get in each other's way;
        # a speed-up far below the worker count with equal CPU means other programs took the cores.
        rows.append((name, serial.shape[1], len(paths) / serial_seconds, len(paths) / parallel_seconds,
                     serial_seconds / parallel_seconds,
                     1000 * serial_cpu / len(paths), 1000 * parallel_cpu / len(paths)))
        print(f"{name}: 1 worker {serial_seconds:.1f} s, {n_workers} workers {parallel_seconds:.1f} s")

        if args.cv:
            accuracy_rows.append((name, "all images", len(paths), *cv_accuracy(parallel, labels, args.cv, args.seed)))
            if vocabulary_paths:
                unseen = np.array([p not in vocabulary_paths for p in paths])
                accuracy_rows.append((name, "not in the vocabulary fit", int(unseen.sum()),
                                      *cv_accuracy(parallel[unseen], labels[unseen], args.cv, args.seed)))

    print(f"\nload average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"\n| extractor | dim | 1 worker (img/s) | {n_workers} workers (img/s) | speed-up "
          "| CPU ms/img, 1 worker | CPU ms/img, workers |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, dim, serial_rate, parallel_rate, speedup, serial_ms, parallel_ms in rows:
        print(f"| {name} | {dim} | {serial_rate:.1f} | {parallel_rate:.1f} | {speedup:.2f}x "
              f"| {serial_ms:.1f} | {parallel_ms:.1f} |")
    if accuracy_rows:
        print(f"\n| features | images | n | {args.cv}-fold CV accuracy (StandardScaler + LogisticRegression) |")
        print("| --- | --- | ---: | ---: |")
        for name, subset, count, mean, std in accuracy_rows:
            print(f"| {name} | {subset} | {count} | {mean:.3f} ± {std:.3f} |")


if __name__ == "__main__":
    main()
