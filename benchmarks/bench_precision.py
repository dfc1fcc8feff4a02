"""Accuracy guard for the reduced precisions: fp32, bf16 and int8 caches of the same photos.

Builds one cache per precision through ``featx.pipeline.build_cache`` (the path of ``featx cache``;
fp32 and bf16 on ``--runtime``, int8 on OpenVINO, calibrated on 300 seeded train images), then the
5-fold cross-validated accuracy of StandardScaler + LogisticRegression on every labelled row of
each cache. bf16 and int8 must stay within ``--tolerance`` (0.3) accuracy points of fp32; each
prints PASS or FAIL, plus the per-image cosine of its features to fp32's. Exit 1 when one fails.
int8 is never a default (``--precision auto`` is fp32 on a CPU): a FAIL here keeps it that way
for that backbone.

    .venv/bin/python benchmarks/bench_precision.py [--data DIR] [--limit N] [--extractor efficientnet_lite0]
        [--opt KEY=VALUE ...] [--precisions auto|fp32,bf16,int8] [--runtime openvino] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench_extract import cpu_line, list_manifest  # noqa: E402

from featx.cache import open_cache  # noqa: E402
from featx.extractors import get_extractor, parse_opts  # noqa: E402
from featx.pipeline import build_cache  # noqa: E402
from featx.runtime.hardware import cpu_has_bf16  # noqa: E402


def cv_accuracy(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(model, features, labels, cv=splits).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / ".." / "shared" / "data" / "catsdogs-dev" / "train")
    parser.add_argument("--limit", type=int, default=None, help="N images, labels in turn (default: all)")
    parser.add_argument("--extractor", default="efficientnet_lite0")
    parser.add_argument("--opt", action="append", default=[], help="extractor option KEY=VALUE")
    parser.add_argument("--precisions", default="auto",
                        help="comma-separated of fp32,bf16,int8; auto: all three on a CPU with avx512_bf16/AMX, "
                             "fp32,int8 elsewhere (OpenVINO has no bf16 there)")
    parser.add_argument("--runtime", default="openvino", help="runtime of the fp32/bf16 caches (int8: openvino)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep caches here (default: a temp folder)")
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=0.3, help="accuracy points")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(cpu_line())
    manifest = list_manifest(args.data.resolve(), None)
    if args.limit:  # the first N of each label in turn, so a small --limit still has every class
        by_label: dict = {}
        for record in manifest.records:
            by_label.setdefault(record.label, []).append(record)
        order = sorted(manifest.records, key=lambda r: (by_label[r.label].index(r), str(r.label)))
        manifest.records = order[: args.limit]
    if args.precisions == "auto":
        args.precisions = "fp32,bf16,int8" if cpu_has_bf16() else "fp32,int8"
    precisions = [p for p in args.precisions.split(",") if p]
    if precisions[0] != "fp32":
        precisions = ["fp32", *[p for p in precisions if p != "fp32"]]
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="featx-precision-"))
    results = {}
    try:
        for precision in precisions:
            extractor = get_extractor(args.extractor, **{**parse_opts(args.opt), "precision": precision})
            runtime = "openvino" if precision == "int8" else args.runtime
            result = build_cache(manifest, extractor, cache_dir, runtime=runtime)
            with open_cache(result.path) as cache:
                features, labels = cache.features[:], np.asarray(cache.labels[:])
            keep = labels >= 0
            accuracy = cv_accuracy(features[keep], labels[keep], args.cv, args.seed)
            results[precision] = (accuracy, features)
            print(f"  {args.extractor} {precision} ({runtime}): {result.rows} rows, "
                  f"{args.cv}-fold accuracy {100 * accuracy:.2f}%", flush=True)
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache_dir, ignore_errors=True)

    fp32_accuracy, fp32_features = results["fp32"]
    failed = False
    print(f"\n| precision | accuracy | vs fp32 (points) | cosine to fp32 (min / mean) | within {args.tolerance} |")
    print("| --- | ---: | ---: | ---: | --- |")
    for precision, (accuracy, features) in results.items():
        gap = 100 * (accuracy - fp32_accuracy)
        cosine = (features * fp32_features).sum(1) / (np.linalg.norm(features, axis=1)
                                                      * np.linalg.norm(fp32_features, axis=1) + 1e-12)
        verdict = "" if precision == "fp32" else ("PASS" if abs(gap) <= args.tolerance else "FAIL")
        failed |= verdict == "FAIL"
        print(f"| {precision} | {100 * accuracy:.2f}% | {gap:+.2f} | {cosine.min():.4f} / {cosine.mean():.4f} | "
              f"{verdict} |")
    print(f"\n{len(manifest.records)} images of {manifest.root}: " + ("FAIL" if failed else "PASS"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
