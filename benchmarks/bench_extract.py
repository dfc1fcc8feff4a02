"""Speed of CNN feature extraction: the recipes' loop against ``featx`` ``build_cache``.

For each model, side by side in one run, over the same images:

``baseline``
    What the Keras transfer-learning recipes do: for each image
    ``keras.utils.load_img(path, target_size=...)`` + ``img_to_array``, stack a
    batch, preprocess, ``model.predict_on_batch``; one batch after another, fp32.
``pipeline``
    ``featx.pipeline.build_cache`` into a fresh temporary cache folder: threads
    decode ahead, the main thread runs the model, a writer thread stores shards,
    then the HDF5 file is published. Timed from call to return. fp32 and bf16.
``model-only``
    The same batches decoded and preprocessed beforehand, in memory; only the
    model calls are timed. The ceiling for the pipeline. fp32 and bf16.

The model is the extractor's own (cut backbone + pooling, frozen), built and
warmed up (graph traced for the full and the last partial batch) before any
timing, so every variant runs the same computation. With ``--repeats N`` each
variant runs N times, interleaved, and the best time counts.

VGG16's ImageNet file is not on this machine and it cannot download: with
``--weights imagenet`` a model whose weights are missing runs with random
weights of the same architecture, and the output says so. The speed is the
same; the features are not meaningful.

Run by hand from the repository root (as quiet a machine as possible)::

    .venv/bin/python benchmarks/bench_extract.py [--data DIR] [--limit 256]
        [--models vgg16,efficientnet_lite0] [--batch-size 32] [--weights imagenet|random]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from featx.data import build_manifest  # noqa: E402
from featx.extractors import get_extractor  # noqa: E402
from featx.images import load_image  # noqa: E402
from featx.pipeline import build_cache, default_workers  # noqa: E402
from featx.weights import WeightsError  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def make_extractor(name: str, weights: str, precision: str):
    """The extractor, its model built; falls back to random weights when ImageNet's are missing.

    Returns the extractor and a note ("" when it has the weights that were asked for).
    """
    note = ""
    options = {"weights": None if weights == "random" else "imagenet", "precision": precision}
    extractor = get_extractor(name, **options)
    try:
        extractor.model  # noqa: B018 -- builds the backbone (and resolves the weights) now
    except (WeightsError, FileNotFoundError) as error:
        note = (f"{name}: ImageNet weights not available offline ({str(error).splitlines()[0][:140]}...); "
                "timed with random weights of the same architecture (same speed, meaningless features)")
        extractor = get_extractor(name, **{**options, "weights": None})
        extractor.model  # noqa: B018
    return extractor, note


def warm_up(extractor, batch_sizes: set[int]) -> None:
    """Build the model and trace its graph for every batch shape the runs will use."""
    height, width = extractor.input_size
    for size in sorted(batch_sizes):
        extractor.transform(np.zeros((size, height, width, 3), np.uint8))


def timed(function, *args) -> tuple[float, float, np.ndarray]:
    """Wall seconds, CPU seconds (all threads of this process) and the function's features."""
    wall, cpu = time.perf_counter(), time.process_time()
    features = function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, features


def run_baseline(extractor, paths: list[str], batch_size: int) -> np.ndarray:
    """The recipes' loop: load_img + img_to_array per image, preprocess, predict_on_batch."""
    import keras

    target_size = tuple(extractor.input_size)
    model = extractor.model
    outputs = []
    for start in range(0, len(paths), batch_size):
        batch = np.stack([keras.utils.img_to_array(keras.utils.load_img(path, target_size=target_size))
                          for path in paths[start:start + batch_size]])
        outputs.append(np.asarray(model.predict_on_batch(extractor.preprocess(batch))))
    return np.concatenate(outputs).reshape(len(paths), -1)


def run_pipeline(extractor, manifest, batch_size: int, workers: int) -> np.ndarray:
    """featx build_cache into a fresh cache folder (the whole call is timed by the caller)."""
    from featx.cache import open_cache

    cache_dir = Path(tempfile.mkdtemp(prefix="featx-bench-"))
    try:
        result = build_cache(manifest, extractor, cache_dir, batch_size=batch_size, workers=workers)
        if result.noop or result.computed != len(manifest.records) or result.failed:
            raise SystemExit(f"pipeline run did not compute every image: {result}")
        with open_cache(result.path) as cache:
            features = cache.features[:]
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return features


def run_model_only(extractor, batches: list[np.ndarray]) -> np.ndarray:
    """Model calls only, on batches already decoded and preprocessed in memory."""
    model = extractor.model
    outputs = [np.asarray(model.predict_on_batch(batch)) for batch in batches]
    return np.concatenate(outputs).reshape(sum(len(b) for b in batches), -1)


def list_manifest(folder: Path, limit: int):
    """A manifest of the first ``limit`` images (sorted paths) of ``folder``."""
    if not folder.is_dir():
        raise SystemExit(f"--data {folder}: no such folder (expected a folder of images, e.g. cat.N.jpg)")
    manifest = build_manifest(folder, layout="auto", hash_files=False)
    records = manifest.records[:limit]
    return dataclasses.replace(manifest, records=records)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path,
                        default=REPO_ROOT / ".." / "shared" / "data" / "catsdogs-dev" / "train",
                        help="folder of images (default: ../shared/data/catsdogs-dev/train)")
    parser.add_argument("--limit", type=int, default=256, help="number of images (the first, sorted by path)")
    parser.add_argument("--models", default="vgg16,efficientnet_lite0", help="comma-separated extractor names")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding threads for the pipeline (default: all cores, as featx cache)")
    parser.add_argument("--weights", choices=("imagenet", "random"), default="imagenet",
                        help="imagenet (random when not available offline, said so) or random")
    parser.add_argument("--precisions", default="fp32,bf16", help="pipeline and model-only precisions")
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant, best time counts")
    args = parser.parse_args(argv)
    precisions = [p for p in args.precisions.split(",") if p]
    unknown = sorted(set(precisions) - set(PRECISIONS) - {"fp16"})
    if unknown or args.limit < 1 or args.batch_size < 1 or args.repeats < 1:
        raise SystemExit(f"expected --precisions from fp32,bf16,fp16 and positive --limit, --batch-size, "
                         f"--repeats; got {args.precisions!r}, {args.limit}, {args.batch_size}, {args.repeats}")

    manifest = list_manifest(args.data.resolve(), args.limit)
    paths = [str(manifest.root / r.path) for r in manifest.records]
    workers = args.workers or default_workers()
    batch_shapes = {min(args.batch_size, len(paths))} | ({len(paths) % args.batch_size} - {0})
    print(f"{len(paths)} images from {manifest.root}, batches of {args.batch_size}, {workers} decoding "
          f"threads, {os.cpu_count()} cores; best of {args.repeats}; load average before: {load_average()}")

    table, notes = [], []
    for name in [n for n in args.models.split(",") if n]:
        extractors = {}
        weights = args.weights
        for precision in dict.fromkeys(["fp32", *precisions]):
            extractor, note = make_extractor(name, weights, precision)
            if note:
                notes.append(note)
                print(note)
                weights = "random"  # the other precisions: do not try to download again
            warm_up(extractor, batch_shapes)
            extractors[precision] = extractor
        reference = extractors["fp32"]
        # Decoded like the pipeline decodes (featx.images), then preprocessed: model-only input.
        batches = []
        for start in range(0, len(paths), args.batch_size):
            images = np.stack([load_image(p, **reference.preprocessing)
                               for p in paths[start:start + args.batch_size]])
            batches.append(reference.preprocess(images.astype(np.float32)))

        runs: dict[tuple[str, str], tuple[float, float]] = {}  # best (wall, cpu) seconds
        features: dict[tuple[str, str], np.ndarray] = {}

        def record(key, seconds, cpu_seconds, output):
            if seconds < runs.get(key, (np.inf, np.inf))[0]:
                runs[key] = (seconds, cpu_seconds)
            features[key] = output
            print(f"  {name} {key[0]} {key[1]}: {seconds:.2f} s ({len(paths) / seconds:.1f} img/s, "
                  f"{1000 * cpu_seconds / len(paths):.0f} CPU ms/img), load {load_average()}", flush=True)

        for _ in range(args.repeats):
            record(("baseline", "fp32"), *timed(run_baseline, reference, paths, args.batch_size))
            for precision in precisions:
                record(("pipeline", precision),
                       *timed(run_pipeline, extractors[precision], manifest, args.batch_size, workers))
                record(("model-only", precision), *timed(run_model_only, extractors[precision], batches))

        # Same model, same decoded pixels: the cache must hold what the model alone gives.
        for precision in precisions:
            pipe, ceiling = features[("pipeline", precision)], features[("model-only", precision)]
            scale = max(1e-12, float(np.abs(ceiling).max()))
            if not np.allclose(pipe, ceiling, rtol=1e-4, atol=1e-4 * scale):
                notes.append(f"{name} {precision}: pipeline features differ from model-only "
                             f"(max abs diff {np.abs(pipe - ceiling).max():.3g})")
        baseline_rate = len(paths) / runs[("baseline", "fp32")][0]
        for (variant, precision), (seconds, cpu_seconds) in runs.items():
            rate = len(paths) / seconds
            share = ""
            if variant == "pipeline":
                share = f"{100 * runs[('model-only', precision)][0] / seconds:.0f}%"
            table.append((name, f"{variant} {precision}", rate, rate / baseline_rate, share,
                          1000 * cpu_seconds / len(paths)))

    print(f"\nload average after: {load_average()}")
    print("\n| model | variant | img/s | vs baseline | pipeline / model-only | CPU ms/img |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, variant, rate, ratio, share, cpu_ms in table:
        print(f"| {name} | {variant} | {rate:.1f} | {ratio:.2f}x | {share} | {cpu_ms:.0f} |")
    for note in notes:
        print(f"\nnote: {note}")


if __name__ == "__main__":
    main()
