"""``featx demo``: the whole chain on a dataset that ships with a dependency.

scikit-learn's bundled digits (1,797 8×8 images, 10 classes) are written as PNG files in
Kaggle's layout (``d3.17.png``): 1,597 for the experiment and 200 held out. Then, offline,
in a few minutes on a laptop CPU:

index -> cache (HoG, EfficientNet-Lite0) -> sweep (each cache and both together) -> report
-> evaluate the best model on the held-out folder -> predict it into a submission CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_HOLDOUT = 200
DEMO_GRIDS = {
    "logreg": [{"head__C": [0.01, 0.1, 1.0]}],
    "dense": [{"head__hidden_units": [256], "head__dropout": [0.5], "head__learning_rate": [1e-3],
               "head__batch_size": [128], "head__epochs": [30]}],
}


def write_digits(folder: str | Path, upscale: int = 4, start: int = 0, stop: int | None = None) -> Path:
    """Write scikit-learn's digits ``start:stop`` as PNGs named ``d<label>.<n>.png``; returns the folder."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    stop = len(digits.images) if stop is None else stop
    for n in range(start, stop):
        path = folder / f"d{digits.target[n]}.{n}.png"
        if path.exists():
            continue
        pixels = (digits.images[n] / 16.0 * 255).astype(np.uint8)
        big = np.kron(pixels, np.ones((upscale, upscale), np.uint8))
        Image.fromarray(big).convert("RGB").save(path)
    return folder


def run_demo(out_dir: str | Path = "experiments/demo", seed: int = 0, console=None,
             extractors: tuple[str, ...] = ("hog", "efficientnet_lite0")) -> dict:
    """Run the chain; returns the headline figures and the paths written.

    One line per step goes to ``console`` (default: a Rich console on stderr, where the progress
    goes too); :func:`summary_line` is the one-line result the command line prints last, on stdout.
    """
    from rich.console import Console

    from featx.data import build_manifest
    from featx.extractors import get_extractor
    from featx.pipeline import build_cache
    from featx.predict import evaluate, load_model, predict, write_submission
    from featx.progress import RichBar
    from featx.report import write_report
    from featx.artifacts.results import row_params
    from featx.sweep import run_sweep
    from featx.weights import WeightsError

    console = console or Console(stderr=True)
    say = lambda text: console.print(text, highlight=False)  # noqa: E731
    out_dir = Path(out_dir)
    total = 1797
    images = write_digits(out_dir / "digits", stop=total - N_HOLDOUT)
    holdout = write_digits(out_dir / "holdout", start=total - N_HOLDOUT)
    manifest = build_manifest(images, val=0.1, test=0.2, seed=seed)
    manifest.write(out_dir / "manifest.csv")
    say(f"1/6 index: {len(manifest.records)} digit images, {len(manifest.label_names)} classes "
        f"(layout {manifest.layout}); {N_HOLDOUT} more held out in {holdout}")

    options = {"hog": {"size": 32, "pixels_per_cell": 4}}
    caches = {}
    for name in extractors:
        try:
            extractor = get_extractor(name, **options.get(name, {}))
            result = build_cache(manifest, extractor, cache_dir=out_dir / "cache", progress=RichBar())
        except WeightsError as exc:  # no offline weights for this backbone: the demo goes on without it
            say(f"2/6 cache {name}: skipped ({exc})")
            continue
        caches[name] = result.path
        state = ("already complete" if result.noop else f"{result.computed} computed at "
                 f"{result.images_per_second:.0f} img/s, {result.runtime}" if result.computed else "reused")
        say(f"2/6 cache {name}: {result.rows} rows x {_dim(result.path)} ({state}) -> {result.path}")

    cache_sets = [[path] for path in caches.values()]
    if len(caches) > 1:
        cache_sets.append(list(caches.values()))
    experiment = out_dir / "experiment"
    swept = run_sweep(cache_sets, experiment, heads=list(DEMO_GRIDS), grids=DEMO_GRIDS, seed=seed, n_jobs=-1,
                      n_boot=500, progress=RichBar(unit="configs"))
    best = swept.best
    say(f"3/6 sweep: {len(swept.rows)} configs in {swept.seconds:.0f} s; best (by {best['selected_by']} log loss "
        f"{best['select_log_loss']:.4f}) {best['features']} {best['head']} {row_params(best)}: test accuracy "
        f"{best['accuracy']:.4f} [{best['accuracy_low']:.4f}, {best['accuracy_high']:.4f}]")
    for features in dict.fromkeys(r["features"] for r in swept.rows):
        top = min((r for r in swept.rows if r["features"] == features), key=lambda r: r["rank"])
        say(f"      {features:32s} best {top['head']:7s} test accuracy {top['accuracy']:.4f}")

    paths = write_report(experiment)
    say(f"4/6 report: {paths['markdown']} and {paths['html']}")

    model = load_model(experiment / "best.joblib")
    scores = evaluate(model, holdout, cache_dir=out_dir / "cache", n_boot=500, seed=seed, progress=RichBar())
    say(f"5/6 evaluate on the {scores['n_images']} held-out digits: accuracy {scores['accuracy']:.4f} "
        f"[{scores['accuracy_low']:.4f}, {scores['accuracy_high']:.4f}]")

    predictions = predict(model, holdout, layout="unlabeled", cache_dir=out_dir / "cache", progress=RichBar())
    submission = write_submission(predictions, out_dir / "submission.csv", hard=True)
    say(f"6/6 predict: {submission} ({len(predictions.paths)} rows)")
    return {"caches": {k: str(v) for k, v in caches.items()}, "best": best, "holdout": scores,
            "report": str(paths["markdown"]), "submission": str(submission), "out_dir": str(out_dir)}


def summary_line(result: dict) -> str:
    """``demo done: held-out accuracy 0.9850 with hog logreg (experiments/demo)`` from :func:`run_demo`'s result."""
    best = result["best"]
    return (f"demo done: held-out accuracy {result['holdout']['accuracy']:.4f} with {best['features']} + "
            f"{best['head']} ({result['out_dir']})")


def _dim(path: Path) -> int:
    from featx.cache import open_cache

    with open_cache(path) as cache:
        return cache.dim
