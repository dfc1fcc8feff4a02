"""Time the default sweep on a 25,000 x 1,280 float32 cache (synthetic features, real cache file).

Run by hand:  .venv/bin/python benchmarks/bench_sweep.py [--rows 25000] [--dim 1280] [--heads ...]

The issue's target: the default sweep (>= 20 configs across the four heads) finishes in under
3 minutes on a 2-core machine, and the dense head trains from the cache (no CNN is run).
Prints per-head fit seconds and the total, plus the load average (other work skews timings).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.model_selection import ParameterGrid

from featx.cache import CacheBuilder
from featx.data import Manifest, Record, assign_split
from featx.heads import DEFAULT_GRIDS
from featx.sweep import run_sweep


def synthetic_cache(folder: Path, rows: int, dim: int, seed: int = 0) -> Path:
    """Two overlapping classes of ReLU-like features, written as a real featx cache."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    direction = rng.normal(0, 1, dim).astype(np.float32)
    records = [Record(f"{'cat' if y == 0 else 'dog'}.{i}.jpg", "cat" if y == 0 else "dog",
                      assign_split(f"x{i}", seed, 0.1, 0.1), f"{i:040x}") for i, y in enumerate(labels)]
    manifest = Manifest(root=folder, layout="kaggle", records=records)
    spec = {"name": "synthetic", "params": {"rows": rows, "dim": dim}, "weights_sha256": None, "preprocessing": {}}
    path = folder / "synthetic.h5"
    with CacheBuilder(path, manifest, spec) as builder:
        plan = builder.prepare(shard_rows=5000)
        for shard in builder.pending_shards():
            y = labels[shard.start:shard.stop]
            X = rng.normal(0, 1, (len(y), dim)).astype(np.float32) + np.outer(y * 2 - 1, direction) * 0.04
            builder.write_shard(shard, np.maximum(X, 0), np.ones(len(y), bool), [])
        builder.publish()
    assert plan.n_rows == rows
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=25000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--heads", default="logreg,linsvm,rbfsvm,dense")
    parser.add_argument("--n-jobs", type=int, default=-1)
    args = parser.parse_args()
    heads = args.heads.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cache = synthetic_cache(Path(tmp), args.rows, args.dim)
        print(f"cache {args.rows} x {args.dim} written in {time.perf_counter() - started:.1f} s")
        n_configs = sum(len(ParameterGrid(DEFAULT_GRIDS[h])) for h in heads)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        result = run_sweep([[cache]], Path(tmp) / "exp", heads=heads, n_jobs=args.n_jobs, learning_curve=False)
        total = time.perf_counter() - started
    per_head = defaultdict(list)
    for row in result.rows:
        per_head[row["head"]].append(row["fit_seconds"])
    print(f"{'head':8} {'configs':>7} {'fit s (sum)':>11} {'fit s (max)':>11}")
    for head, seconds in per_head.items():
        print(f"{head:8} {len(seconds):7d} {sum(seconds):11.1f} {max(seconds):11.1f}")
    best = result.best
    print(f"default sweep: {n_configs} configs in {total:.1f} s (target < 180 s: "
          f"{'met' if total < 180 else 'MISSED'}); best {best['head']} {best['params']} "
          f"test acc {best['accuracy']:.4f}; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
