"""Start-up of ``featx predict`` on 10 photos with a warm OpenVINO IR: an older featx against this one, in one run.

Run by hand (the old tree is a git worktree of the commit to compare with):

    git worktree add /tmp/featx-before c7b1142
    .venv/bin/python benchmarks/bench_startup.py --before /tmp/featx-before [--repeats 3]

Each tree gets, once and untimed, an EfficientNet-Lite0 cache of ``--train`` photos (which converts its
IR) and a logistic-regression sweep; then, alternating the trees, ``featx predict best.joblib DIR`` on 10
other photos is timed three times per repeat: the first predict after the sweep (a new cache folder, and
no compiled head: this featx unpickles best.joblib with scikit-learn once and keeps its head as numpy
arrays), then features not cached (another new cache folder: the model runs) and features reused from
the cache (no model run). ``python -c "import tensorflow"`` and ``featx --help``
are timed in the same run. Every command is a fresh process in the user's environment (no
``TF_CPP_MIN_LOG_LEVEL``), as typed in a shell; the table gives the median wall time, the ratio old/new,
and whether the process imported TensorFlow. Photos are copied to ``--work`` (under /tmp), never into
the repository. Prints the CPU and its flags, and the load average (a busy machine inflates every time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import cpu_line, load_average  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The featx command of a tree, in this process; the last stderr line says whether TensorFlow was imported.
CLI = ("import sys\nfrom featx.cli import app\ntry:\n    app(prog_name='featx')\nfinally:\n"
       "    print('TENSORFLOW-IMPORTED', 'tensorflow' in sys.modules, file=sys.stderr)\n")


def env_for(tree: Path | None, weights: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env["FEATX_WEIGHTS"] = str(weights)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)  # ahead of the editable install of this tree
    return env


def timed(argv: list[str], env: dict, cwd: Path) -> tuple[float, bool | None, str]:
    """(wall seconds, TensorFlow imported, output) of one process; raises when it fails."""
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    imported = None
    for line in proc.stderr.splitlines():
        if line.startswith("TENSORFLOW-IMPORTED"):
            imported = line.split()[-1] == "True"
    return seconds, imported, proc.stdout + proc.stderr


def featx(tree: Path, *args, weights: Path, cwd: Path) -> tuple[float, bool | None, str]:
    return timed([sys.executable, "-c", CLI, *map(str, args)], env_for(tree, weights), cwd)


def copy_photos(source: Path, work: Path, n_train: int) -> tuple[Path, Path]:
    """``train/``: the first n_train/2 cats and dogs by number; ``predict/``: 10 others named 1.jpg .. 10.jpg."""
    train, scored = work / "train", work / "predict"
    for folder in (train, scored):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for kind in ("cat", "dog"):
        numbers = sorted(int(p.stem.split(".")[1]) for p in source.glob(f"{kind}.*.jpg"))
        for number in numbers[:n_train // 2]:
            shutil.copy(source / f"{kind}.{number}.jpg", train / f"{kind}.{number}.jpg")
        for index, number in enumerate(numbers[-5:]):
            shutil.copy(source / f"{kind}.{number}.jpg", scored / f"{index + (1 if kind == 'cat' else 6)}.jpg")
    return train, scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="Work tree of the older featx (git worktree).")
    parser.add_argument("--photos", type=Path, default=Path("/work/shared/data/catsdogs-dev/train"))
    parser.add_argument("--train", type=int, default=100, help="Photos the sweep is fit on (half cats).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/featx-bench-startup"))
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": REPO}
    work = args.work
    weights = work / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    lite0 = Path.home() / ".featx" / "weights" / "efficientnet_lite0.weights.h5"
    if lite0.exists() and not (weights / lite0.name).exists():
        (weights / lite0.name).symlink_to(lite0)  # the converted ImageNet weights; else featx imports them once
    train, scored = copy_photos(args.photos, work, args.train)
    print(cpu_line())
    print(f"load average before: {load_average()}")
    print(f"trees: before {trees['before']} ({git_head(trees['before'])}), after {REPO} ({git_head(REPO)})")

    experiments = {}
    for name, tree in trees.items():  # untimed: the cache converts the IR, the sweep writes best.joblib
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        featx(tree, "cache", train, "-e", "efficientnet_lite0", "--cache-dir", folder / "cache", weights=weights,
              cwd=work)
        cache = next((folder / "cache").glob("*.h5"))
        featx(tree, "sweep", cache, "--heads", "logreg", "--out", folder / "exp", "--no-learning-curve",
              "--n-boot", "50", weights=weights, cwd=work)
        experiments[name] = folder / "exp" / "best.joblib"

    times: dict[tuple[str, str], list[float]] = {}
    imports: dict[tuple[str, str], bool | None] = {}

    def record(key, result):
        times.setdefault(key, []).append(result[0])
        imports[key] = result[1]

    for repeat in range(args.repeats):
        for name, tree in trees.items():
            def predict(cache_dir):
                return featx(tree, "predict", experiments[name], scored, "-o", work / name / "submission.csv",
                             "--cache-dir", cache_dir, weights=weights, cwd=work)

            shutil.rmtree(weights / "heads", ignore_errors=True)  # the head compiled by a first predict, if any
            record((name, "first predict"), predict(work / name / f"first-{repeat}"))
            record((name, "predict"), predict(work / name / f"scored-{repeat}"))
            record((name, "predict, features reused"), predict(work / name / f"scored-{repeat}"))
            record((name, "--help"), featx(tree, "--help", weights=weights, cwd=work))
        record(("-", "import tensorflow"), timed([sys.executable, "-c", "import tensorflow"],
                                                 env_for(None, weights), work))

    def median(key):
        return statistics.median(times[key])

    rows = [("`featx predict best.joblib DIR`, 10 photos, features not cached", "predict"),
            ("the same again, features reused from the cache", "predict, features reused"),
            ("the first predict after a sweep (features not cached; the head compiled)", "first predict"),
            ("`featx --help`", "--help")]
    print(f"\nmedian wall time of {args.repeats} runs, load average after: {load_average()}\n")
    print("| command | before s | after s | before/after | TensorFlow imported (before, after) |")
    print("|---|---|---|---|---|")
    for label, key in rows:
        before, after = median(("before", key)), median(("after", key))
        print(f"| {label} | {before:.2f} | {after:.2f} | {before / after:.1f}x | "
              f"{_yes(imports[('before', key)])}, {_yes(imports[('after', key)])} |")
    tensorflow = median(("-", "import tensorflow"))
    print(f"| `python -c \"import tensorflow\"` | {tensorflow:.2f} | | | |")
    predict_after = median(("after", "predict"))
    speedup = median(("before", "predict")) / predict_after
    print(f"\ntarget: predict at least 5x faster than before: {speedup:.1f}x "
          f"({'met' if speedup >= 5 else 'NOT met'}); under half of import tensorflow: "
          f"{predict_after:.2f} s vs {tensorflow / 2:.2f} s ({'met' if predict_after < tensorflow / 2 else 'NOT met'})")


def _yes(value) -> str:
    return {True: "yes", False: "no", None: "?"}[value]


def git_head(tree: Path) -> str:
    proc = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "?"


if __name__ == "__main__":
    main()
