"""Dense head fit time with one batch per compiled call against 32, by the number of steps in the fit.

Run by hand:  .venv/bin/python benchmarks/bench_dense_steps.py [--repeats 5]

``KerasDenseClassifier`` compiles with ``steps_per_execution=32`` when a fit has at least 100 steps
(epochs x batches per epoch) and 1 below. 32 removes most of Keras' per-step Python overhead but
traces the train step a second time. For each size, both settings are fitted alternately, from
the same seed, on the same data; the table gives median seconds and the ratio spe=32 / spe=1
(above 1: one batch per call is faster). Prints the CPU and its flags, and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import cpu_line, load_average  # noqa: E402

import featx.heads as heads  # noqa: E402

# (rows, features, hidden units, batch size, epochs, validation): estimator-check and
# learning-curve sized fits, then the default dense head on Dogs-vs-Cats sized caches.
CASES = [
    (30, 5, 8, 8, 3, False),
    (100, 5, 8, 8, 3, False),
    (300, 5, 8, 8, 3, False),
    (200, 1280, 256, 128, 20, False),
    (800, 1280, 256, 128, 20, False),
    (2000, 1280, 256, 128, 20, True),
    (16000, 1280, 256, 128, 10, True),
]


def fit_seconds(X, y, units, batch, epochs, validation, spe) -> float:
    """Seconds for one fit with steps_per_execution forced to ``spe``."""
    build = heads.KerasDenseClassifier._build_model
    forced = heads.MANY_STEPS if spe == 32 else 0
    heads.KerasDenseClassifier._build_model = lambda self, n, k, steps: build(self, n, k, forced)
    try:
        clf = heads.KerasDenseClassifier(hidden_units=units, batch_size=batch, epochs=epochs, learning_rate=1e-3,
                                         patience=epochs if validation else None, random_state=0)
        started = time.perf_counter()
        clf.fit(X, y)
        return time.perf_counter() - started
    finally:
        heads.KerasDenseClassifier._build_model = build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(cpu_line())
    print(f"load average before: {load_average()}")
    rng = np.random.default_rng(0)
    warm = rng.normal(size=(20, 5)).astype(np.float32)
    heads.KerasDenseClassifier(epochs=1).fit(warm, np.arange(20) % 2)  # TensorFlow's first-use costs
    print("| rows x features | batch | epochs | validation | steps | spe=1 s | spe=32 s | spe=32 / spe=1 "
          "| featx uses |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for rows, dim, units, batch, epochs, validation in CASES:
        X = rng.normal(size=(rows, dim)).astype(np.float32)
        y = (X[:, 0] + rng.normal(size=rows) > 0).astype(int)
        train_rows = rows - int(np.ceil(0.1 * rows)) if validation else rows
        steps = epochs * -(-train_rows // batch)
        times = {1: [], 32: []}
        for _ in range(args.repeats):
            for spe in (1, 32):
                times[spe].append(fit_seconds(X, y, units, batch, epochs, validation, spe))
        one, many = np.median(times[1]), np.median(times[32])
        print(f"| {rows} x {dim} | {batch} | {epochs} | {'10%' if validation else 'none'} | {steps} | "
              f"{one:.3f} | {many:.3f} | {many / one:.2f} | {32 if steps >= heads.MANY_STEPS else 1} |", flush=True)
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
