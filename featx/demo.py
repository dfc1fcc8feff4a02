"""``featx demo``: the whole chain on a dataset that ships with a dependency.

scikit-learn's bundled digits (1,797 8×8 images, 10 classes) are written as PNG files
in Kaggle's layout (``d3.17.png``), then indexed, cached and classified, offline, in a
few minutes on a laptop CPU.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def write_digits(folder: str | Path, upscale: int = 4) -> Path:
    """Write scikit-learn's digits as PNGs named ``d<label>.<n>.png``; returns the folder."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    for n, (image, label) in enumerate(zip(digits.images, digits.target)):
        path = folder / f"d{label}.{n}.png"
        if path.exists():
            continue
        pixels = (image / 16.0 * 255).astype(np.uint8)
        big = np.kron(pixels, np.ones((upscale, upscale), np.uint8))
        Image.fromarray(big).convert("RGB").save(path)
    return folder


def run_demo(out_dir: str | Path = "experiments/demo", seed: int = 0, console=None,
             extractors: tuple[str, ...] | None = None) -> dict:
    """Index -> cache -> classify on the digits; returns the headline figures."""
    from rich.console import Console

    from featx.data import build_manifest
    from featx.extractors import get_extractor
    from featx.pipeline import build_cache
    from featx.progress import RichBar

    console = console or Console()
    out_dir = Path(out_dir)
    images = write_digits(out_dir / "digits")
    manifest = build_manifest(images, val=0.1, test=0.2, seed=seed)
    manifest.write(out_dir / "manifest.csv")
    console.print(f"indexed {len(manifest.records)} digit images, {len(manifest.label_names)} classes "
                  f"(layout {manifest.layout})", highlight=False)
    extractors = extractors or ("hog", "sift_bovw")
    options = {"hog": {"size": 32, "pixels_per_cell": 4}, "sift_bovw": {"size": 64, "dense": True, "step": 8, "k": 100,
                                                                          "seed": seed}}
    results = {}
    for name in extractors:
        extractor = get_extractor(name, **options.get(name, {}))
        cached = build_cache(manifest, extractor, cache_dir=out_dir / "cache", progress=RichBar())
        accuracy, seconds = _quick_head(cached.path, seed)
        results[name] = {"cache": str(cached.path), "test_accuracy": accuracy}
        console.print(f"{name}: {cached.rows} rows -> {cached.path.name}; logistic regression test accuracy "
                      f"{accuracy:.3f} (fit {seconds:.1f} s)", highlight=False)
    best = max(results, key=lambda k: results[k]["test_accuracy"])
    console.print(f"demo done: best {best} test accuracy {results[best]['test_accuracy']:.3f} ({out_dir})",
                  highlight=False)
    return results


def _quick_head(cache_path: Path, seed: int) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from featx.cache import open_cache

    with open_cache(cache_path) as cache:
        X_train, y_train = cache.load("train")
        X_test, y_test = cache.load("test")
    started = time.perf_counter()
    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed))
    head.fit(X_train, y_train)
    return float(head.score(X_test, y_test)), time.perf_counter() - started
