"""Issue 3 acceptance: EfficientNet-Lite0 features are good enough, in fp32 and in bf16.

1. ``featx.pipeline.build_cache`` makes the ``efficientnet_lite0`` cache (ImageNet
   weights, 1,280-d ``top_activation`` + avg pool) of every image in ``--data``,
   once in fp32 and once in bf16 (the extractor's ``precision`` option).
2. On each cache, 5-fold stratified cross-validated accuracy of
   ``StandardScaler + LogisticRegression`` over all rows (labels from the
   Kaggle-style names, ``cat.12.jpg`` -> cat). Requirements: fp32 >= 97.5%, and
   bf16 within 0.3 points of fp32.
3. How far bf16 features are from fp32 (cosine per image) and how long each
   cache took (the ``seconds`` the cache records for its own computation).

Caches go to ``--cache-dir`` (default: the repository's ``cache/``), so a second
run reuses them and reports the times recorded when they were made; ``--fresh``
computes both again in a temporary folder. The script exits with status 1 when a
requirement is not met.

Run by hand from the repository root::

    .venv/bin/python benchmarks/accuracy_effnet.py [--data DIR] [--cv 5] [--fresh]
"""

from __future__ import annotations

import argparse
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

from featx.cache import open_cache  # noqa: E402
from featx.data import build_manifest  # noqa: E402
from featx.extractors import get_extractor  # noqa: E402
from featx.pipeline import build_cache  # noqa: E402

MIN_ACCURACY = 0.975
MAX_BF16_GAP_POINTS = 0.3


def cv_accuracy(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Accuracy of each fold of StandardScaler + LogisticRegression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_score(model, features, labels, cv=splitter, n_jobs=1)


def make_cache(manifest, precision: str, cache_dir: Path, batch_size: int, workers: int | None):
    """Build (or reuse) the cache; return its features, labels, paths and compute seconds."""
    extractor = get_extractor("efficientnet_lite0", weights="imagenet", precision=precision)
    started = time.perf_counter()
    result = build_cache(manifest, extractor, cache_dir, batch_size=batch_size, workers=workers)
    wall = time.perf_counter() - started
    with open_cache(result.path) as cache:
        features, labels = cache.load()
        paths = cache.paths
        recorded = float(cache.attrs.get("seconds", wall))
    how = "reused (time recorded when it was made)" if result.noop else f"computed, {wall:.1f} s wall"
    print(f"{precision}: {result.path.name}: {len(paths)} rows, {len(result.failed)} failed, {how}; "
          f"{recorded:.1f} s = {len(paths) / recorded:.1f} img/s", flush=True)
    return features, labels, paths, recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path,
                        default=REPO_ROOT / ".." / "shared" / "data" / "catsdogs-dev" / "train",
                        help="Kaggle-style labelled images (default: ../shared/data/catsdogs-dev/train)")
    parser.add_argument("--cache-dir", type=Path, default=REPO_ROOT / "cache")
    parser.add_argument("--fresh", action="store_true", help="compute both caches again in a temporary folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: all cores)")
    parser.add_argument("--cv", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    manifest = build_manifest(args.data.resolve(), layout="kaggle")
    print(f"{len(manifest.records)} images in {manifest.root} ({', '.join(manifest.label_names)}); "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    cache_dir = Path(tempfile.mkdtemp(prefix="featx-accuracy-")) if args.fresh else args.cache_dir
    try:
        runs = {precision: make_cache(manifest, precision, cache_dir, args.batch_size, args.workers)
                for precision in ("fp32", "bf16")}
    finally:
        if args.fresh:
            shutil.rmtree(cache_dir, ignore_errors=True)

    (fp32, labels, paths, fp32_seconds), (bf16, bf16_labels, bf16_paths, bf16_seconds) = runs["fp32"], runs["bf16"]
    if paths != bf16_paths or not np.array_equal(labels, bf16_labels):
        raise SystemExit("the fp32 and bf16 caches do not hold the same images in the same order")
    cosine = (fp32 * bf16).sum(axis=1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    scores = {precision: cv_accuracy(runs[precision][0], labels, args.cv, args.seed) for precision in runs}
    gap = 100 * (scores["bf16"].mean() - scores["fp32"].mean())

    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"\n| cache | {args.cv}-fold CV accuracy (StandardScaler + LogisticRegression) | folds | cache time |")
    print("| --- | ---: | --- | ---: |")
    for precision, seconds in (("fp32", fp32_seconds), ("bf16", bf16_seconds)):
        folds = scores[precision]
        print(f"| efficientnet_lite0 {precision} | {100 * folds.mean():.2f}% ± {100 * folds.std():.2f} "
              f"| {', '.join(f'{100 * s:.2f}' for s in folds)} | {seconds:.1f} s ({len(paths) / seconds:.1f} img/s) |")
    print(f"\nbf16 - fp32 accuracy: {gap:+.2f} points (allowed: ±{MAX_BF16_GAP_POINTS}); "
          f"bf16 time / fp32 time: {bf16_seconds / fp32_seconds:.2f}; cosine(bf16, fp32) per image: "
          f"min {cosine.min():.4f}, median {np.median(cosine):.4f}")

    failures = []
    if scores["fp32"].mean() < MIN_ACCURACY:
        failures.append(f"fp32 accuracy {100 * scores['fp32'].mean():.2f}% is below {100 * MIN_ACCURACY:.1f}%")
    if abs(gap) > MAX_BF16_GAP_POINTS:
        failures.append(f"bf16 differs from fp32 by {gap:+.2f} points, more than {MAX_BF16_GAP_POINTS}")
    print("FAILED: " + "; ".join(failures) if failures else "PASSED: both requirements of issue 3 are met")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
