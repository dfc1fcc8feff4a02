"""How well the model featx hands over does on images no choice ever saw, per selection protocol.

Run by hand (never in CI), from the repository root, on a quiet machine:

    git worktree add --detach /tmp/featx-old <commit before the change>
    .venv/bin/python benchmarks/bench_protocol.py --old-code /tmp/featx-old [--new-code DIR]
        [--data ../shared/data/catsdogs-dev/train] [--work /tmp/measure] [--repeats 1,3] [--big-rows 25000]

The photos are split by a hash of the file name into development and holdout halves (two folders
of symlinks under ``--work``; nothing is copied). Development is indexed (--val 0.1 --test 0.1) and
cached with EfficientNet-Lite0 and Lite2, with and without ``--opt tta=flip``; holdout is cached into
its own folders, so it never mixes with training caches. Then, for each protocol and ``--repeats``:
``featx sweep`` on development (Lite0, Lite2, Lite0+Lite2, and the three together), ``featx evaluate
best.joblib HOLDOUT`` → accuracy and log loss. Protocols: ``old`` (the code of ``--old-code``:
select on val, fit on train), ``new`` (this checkout's default), ``new --select val``, and a plain
logistic regression (standardised features, C=0.01) fit on every development row with scikit-learn.
Flip TTA: repeated 5-fold CV of that logistic regression on development, with and without
``tta=flip`` (paired folds), plus holdout figures. Sweep wall and CPU seconds, old and new code, on
the development caches and on a synthetic 25,000 x 1,280 cache (``bench_sweep.synthetic_cache``).

Every step's figures are kept in ``--work``/results.json, so a rerun only does what is missing
(``--redo KEY-PREFIX`` forgets some); the markdown table is printed at the end with the CPU.
Each featx command runs in its own process with ``PYTHONPATH`` set to the code it measures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXTRACTORS = ("efficientnet_lite0", "efficientnet_lite2")
SHORT = {"efficientnet_lite0": "Lite0", "efficientnet_lite2": "Lite2"}
C_PLAIN = 0.01


# -- the machine ------------------------------------------------------------------------

def cpu_description() -> str:
    """CPU model name and the flags that matter for the CNN runtimes."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags]
    return f"{name}, {os.cpu_count()} cores, flags: {' '.join(shown) or 'none of avx2/avx512'}"


# -- data --------------------------------------------------------------------------------

def split_photos(data: Path, work: Path, n_dev: int) -> tuple[Path, Path]:
    """``work/dev`` and ``work/holdout``: symlinks to the photos, ordered by sha1 of the file name."""
    names = sorted((p.name for p in data.iterdir() if p.is_file()),
                   key=lambda name: hashlib.sha1(name.encode()).hexdigest())
    folders = (work / "dev", work / "holdout")
    for folder, part in zip(folders, (names[:n_dev], names[n_dev:])):
        folder.mkdir(parents=True, exist_ok=True)
        for name in part:
            link = folder / name
            if not link.is_symlink():
                link.symlink_to(data / name)
    return folders


def read_cache(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Features, labels (as names), paths and splits of a cache file, read with h5py only."""
    with h5py.File(path, "r") as h5:
        names = json.loads(h5.attrs["label_names"])
        labels = np.asarray(names)[h5["labels"][:]]
        return (h5["features"][:].astype(np.float64), labels, h5["paths"].asstr()[:].tolist(),
                h5["split"].asstr()[:].tolist())


def cache_written(done: subprocess.CompletedProcess) -> Path:
    """The cache file a ``featx cache`` run names (``PATH: N rows ...`` or ``PATH: already complete ...``)."""
    output = done.stdout + "\n" + done.stderr
    found = re.findall(r"^(\S+\.h5): (?:\d+ rows|already complete)", output, flags=re.MULTILINE)
    if not found:
        raise RuntimeError(f"featx cache named no cache file:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return Path(found[-1])


# -- running featx ----------------------------------------------------------------------

class Code:
    """A featx checkout, run as ``featx`` with PYTHONPATH set to it, from ``work`` (not the repository)."""

    def __init__(self, label: str, root: Path, work: Path):
        self.label, self.root, self.work = label, root, work
        self.commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip() or "?"

    def run(self, *args: str, check: bool = True) -> tuple[subprocess.CompletedProcess, float, float]:
        """(process, wall seconds, CPU seconds of the process and its children)."""
        env = {**os.environ, "PYTHONPATH": str(self.root), "TF_CPP_MIN_LOG_LEVEL": "2"}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run([str(Path(sys.executable).with_name("featx")), *args], cwd=self.work, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if check and done.returncode != 0:
            raise RuntimeError(f"featx {' '.join(args)} ({self.label}) failed:\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-3000:]}")
        return done, wall, cpu


class Results:
    """``work/results.json``: step key -> figures, written after every step."""

    def __init__(self, path: Path, redo: list[str]):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}
        for key in [k for k in self.data if any(k.startswith(prefix) for prefix in redo)]:
            del self.data[key]

    def get(self, key: str, compute):
        if key not in self.data:
            print(f"[{time.strftime('%H:%M:%S')}] {key} ...", flush=True)
            self.data[key] = compute()
            self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True))
            print(f"    {json.dumps(self.data[key])[:300]}", flush=True)
        return self.data[key]


# -- steps --------------------------------------------------------------------------------

def build_caches(code: Code, work: Path) -> dict[str, Path]:
    """Index development and holdout, and cache both with each extractor, with and without tta=flip."""
    dev_csv, holdout_csv = work / "dev.csv", work / "holdout.csv"
    if not dev_csv.exists():
        code.run("index", str(work / "dev"), "-o", str(dev_csv), "--val", "0.1", "--test", "0.1")
    if not holdout_csv.exists():
        code.run("index", str(work / "holdout"), "-o", str(holdout_csv), "--val", "0", "--test", "0")
    caches = {}
    for tta in ("none", "flip"):
        suffix = "" if tta == "none" else "-tta"
        for extractor in EXTRACTORS:
            for part, manifest in (("dev", dev_csv), ("holdout", holdout_csv)):
                folder = work / (f"cache{suffix}" if part == "dev" else f"cache-holdout{suffix}")
                done, _, _ = code.run("cache", str(manifest), "--extractor", extractor, "--opt", f"tta={tta}",
                                      "--cache-dir", str(folder))
                caches[f"{part}:{extractor}:{tta}"] = cache_written(done)
    return caches


def feature_sets(caches: dict[str, Path]) -> dict[str, list[str]]:
    """Sweep arguments per feature set: Lite0, Lite2, Lite0+Lite2, and the three in one sweep."""
    lite0, lite2 = (str(caches[f"dev:{e}:none"]) for e in EXTRACTORS)
    return {"Lite0": [lite0], "Lite2": [lite2], "Lite0+Lite2": [f"{lite0}+{lite2}"],
            "all three": [lite0, lite2, f"{lite0}+{lite2}"]}


PROTOCOLS = {  # label -> (code, extra sweep arguments)
    "old (select on val; fit on train)": ("old", []),
    "new default": ("new", []),
    "new --select val": ("new", ["--select", "val"]),
}


def sweep_folder(work: Path, label: str, repeats: int, fset: str) -> Path:
    """Where the sweep of protocol ``label`` on feature set ``fset`` writes (``work/exp/new-selectval-r1-Lite0``)."""
    code_name, extra = PROTOCOLS[label]
    return work / "exp" / f"{code_name}{''.join(extra).replace('--', '-')}-r{repeats}-{fset.replace(' ', '_')}"


def short_features(features: str) -> str:
    """``efficientnet_lite0:top_activation:avg+...`` -> ``Lite0+...``."""
    return "+".join(SHORT.get(part.split(":")[0], part) for part in features.split("+"))


def describe_pick(summary: dict) -> str:
    """The best row of a sweep's results.json in a few words; an ensemble names its members."""
    def one(row: dict) -> str:
        params = json.loads(row["params"] or "{}")
        args = " ".join(f"{k.replace('head__', '')}={v}" for k, v in params.items() if k != "head__batch_size")
        return f"{row['head']} {args} on {short_features(row['features'])}".replace("  ", " ")

    best = summary["best"]
    if best["head"] != "ensemble":
        return one(best)
    by_config = {row["config"]: row for row in summary["rows"]}
    members = json.loads(best["params"])["members"]
    return "ensemble of " + ", ".join(f"{m['weight']:.2f} x {one(by_config[m['config']])}" for m in members)


def sweep_and_evaluate(code: Code, extra: list[str], sweep_args: list[str], repeats: int, out: Path,
                       holdout: Path) -> dict:
    """``featx sweep`` on development then ``featx evaluate`` of its best.joblib on the holdout folder."""
    _, wall, cpu = code.run("sweep", *sweep_args, *extra, "--repeats", str(repeats), "--out", str(out))
    summary = json.loads((out / "results.json").read_text())
    best = summary["best"]
    done, _, _ = code.run("evaluate", str(out / "best.joblib"), str(holdout), "--cache-dir",
                          str(code.work / f"evalcache-{code.label}"), "--json", "--n-boot", "200")
    scored = json.loads(done.stdout[done.stdout.index("{"):])
    return {"head": best.get("head"), "params": best.get("params"), "features": best.get("features"),
            "pick": describe_pick(summary),
            "select": summary.get("select", summary.get("protocol")), "n_rows": len(summary["rows"]),
            "sweep_wall_s": round(wall, 1), "sweep_cpu_s": round(cpu, 1), "commit": code.commit,
            "holdout_accuracy": scored["accuracy"], "holdout_log_loss": scored["log_loss"],
            "holdout_n": scored.get("n_images")}


def plain_logreg(caches: dict[str, Path], names: list[str], tta: str = "none") -> dict:
    """Standardised features, LogisticRegression(C=0.01) fit on every development row, scored on holdout."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_dev, y_dev = _stacked(caches, names, "dev", tta)
    X_out, y_out = _stacked(caches, names, "holdout", tta)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C_PLAIN, max_iter=5000)).fit(X_dev, y_dev)
    proba = model.predict_proba(X_out)
    return {"holdout_accuracy": accuracy_score(y_out, model.classes_[proba.argmax(1)]),
            "holdout_log_loss": log_loss(y_out, proba, labels=model.classes_), "holdout_n": len(y_out),
            "n_train": len(y_dev)}


def _stacked(caches, names, part, tta):
    blocks = [read_cache(caches[f"{part}:{name}:{tta}"]) for name in names]
    paths = blocks[0][2]
    for block in blocks[1:]:
        if block[2] != paths:
            raise RuntimeError(f"{part} caches of {names} hold other rows or another order")
    return np.hstack([b[0] for b in blocks]), blocks[0][1]


def tta_cv(caches: dict[str, Path], names: list[str], folds: int = 5, repeats: int = 3) -> dict:
    """Paired repeated k-fold CV on development of the C=0.01 logistic regression, tta none vs flip."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, log_loss
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = {tta: _stacked(caches, names, "dev", tta) for tta in ("none", "flip")}
    scores = {tta: {"log_loss": [], "accuracy": []} for tta in data}
    for seed in range(repeats):
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        for train, test in splitter.split(data["none"][0], data["none"][1]):
            for tta, (X, y) in data.items():
                model = make_pipeline(StandardScaler(), LogisticRegression(C=C_PLAIN, max_iter=5000))
                proba = model.fit(X[train], y[train]).predict_proba(X[test])
                scores[tta]["log_loss"].append(log_loss(y[test], proba, labels=model.classes_))
                scores[tta]["accuracy"].append(accuracy_score(y[test], model.classes_[proba.argmax(1)]))
    out = {}
    for tta, figures in scores.items():
        for metric, values in figures.items():
            out[f"cv_{metric}_{tta}"] = float(np.mean(values))
            out[f"cv_{metric}_{tta}_std"] = float(np.std(values))
        holdout = plain_logreg(caches, names, tta)
        out[f"holdout_accuracy_{tta}"], out[f"holdout_log_loss_{tta}"] = (holdout["holdout_accuracy"],
                                                                          holdout["holdout_log_loss"])
    diff = np.subtract(scores["flip"]["log_loss"], scores["none"]["log_loss"])
    out.update(cv_log_loss_flip_minus_none=float(diff.mean()), cv_log_loss_diff_std=float(diff.std()),
               folds_flip_better=int((diff < 0).sum()), n_folds=len(diff))
    return out


def big_sweep(code: Code, work: Path, rows: int, dim: int) -> dict:
    """Wall and CPU seconds of the default ``featx sweep`` (no learning curve) on a synthetic rows x dim cache."""
    cache = work / "big" / f"synthetic-{rows}x{dim}.h5"
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_sweep import synthetic_cache

        synthetic_cache(cache.parent, rows, dim).rename(cache)
    out = work / "exp" / f"big-{code.label}"
    done, wall, cpu = code.run("sweep", str(cache), "--out", str(out), "--no-learning-curve")
    summary = json.loads((out / "results.json").read_text())
    best = summary["best"]
    return {"sweep_wall_s": round(wall, 1), "sweep_cpu_s": round(cpu, 1), "n_rows": len(summary["rows"]),
            "select": summary.get("select", summary.get("protocol")), "head": best.get("head"),
            "params": best.get("params"), "test_accuracy": best.get("accuracy"), "commit": code.commit,
            "load_after": round(os.getloadavg()[0], 2)}


# -- the table ----------------------------------------------------------------------------

def markdown(results: dict, cpu: str, repeats: list[int], protocols: list[str], work: Path) -> str:
    lines = [f"CPU: {cpu}", ""]
    lines += ["| protocol | repeats | features swept | pick (head, params, features) | holdout accuracy | "
              "holdout log loss | sweep wall s | sweep CPU s |", "|---|---:|---|---|---:|---:|---:|---:|"]
    for label in protocols:
        for r in repeats:
            for fset in ("Lite0", "Lite2", "Lite0+Lite2", "all three"):
                row = results.get(f"sweep:{label}:r{r}:{fset}")
                if row:
                    summary = sweep_folder(work, label, r, fset) / "results.json"
                    pick = row.get("pick") or (describe_pick(json.loads(summary.read_text())) if summary.exists()
                                               else f"{row['head']} {row['params']} on {row['features']}")
                    lines.append(f"| {label} | {r} | {fset} | {pick} | {row['holdout_accuracy']:.2%} | "
                                 f"{row['holdout_log_loss']:.4f} | {row['sweep_wall_s']} | {row['sweep_cpu_s']} |")
    for fset in ("Lite0", "Lite2", "Lite0+Lite2"):
        row = results.get(f"logreg:{fset}")
        if row:
            lines.append(f"| plain logreg C={C_PLAIN}, all {row['n_train']} development rows | - | {fset} | "
                         f"logreg | {row['holdout_accuracy']:.2%} | {row['holdout_log_loss']:.4f} | | |")
    lines += ["", "| flip TTA (logreg C=0.01) | CV log loss none | CV log loss flip | flip - none (paired) | "
              "folds flip better | CV accuracy none | CV accuracy flip | holdout acc none / flip | "
              "holdout log loss none / flip |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for fset in ("Lite0", "Lite2", "Lite0+Lite2"):
        row = results.get(f"tta:{fset}")
        if row:
            lines.append(
                f"| {fset} | {row['cv_log_loss_none']:.4f} ± {row['cv_log_loss_none_std']:.4f} | "
                f"{row['cv_log_loss_flip']:.4f} ± {row['cv_log_loss_flip_std']:.4f} | "
                f"{row['cv_log_loss_flip_minus_none']:+.4f} ± {row['cv_log_loss_diff_std']:.4f} | "
                f"{row['folds_flip_better']}/{row['n_folds']} | {row['cv_accuracy_none']:.2%} | "
                f"{row['cv_accuracy_flip']:.2%} | {row['holdout_accuracy_none']:.2%} / "
                f"{row['holdout_accuracy_flip']:.2%} | {row['holdout_log_loss_none']:.4f} / "
                f"{row['holdout_log_loss_flip']:.4f} |")
    big = [(k, v) for k, v in results.items() if k.startswith("big:")]
    if big:
        lines += ["", "| synthetic cache sweep (default heads, no learning curve) | code | selected by | configs "
                  "| wall s | CPU s |", "|---|---|---|---:|---:|---:|"]
        for key, row in sorted(big):
            _, label, shape = key.split(":")
            lines.append(f"| {shape} | {label} ({row['commit']}) | {row['select']} | {row['n_rows']} | "
                         f"{row['sweep_wall_s']} | {row['sweep_cpu_s']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "catsdogs-dev" / "train")
    parser.add_argument("--work", type=Path, default=Path("/tmp/measure"))
    parser.add_argument("--old-code", type=Path, help="checkout of the code before (git worktree); no old rows without")
    parser.add_argument("--new-code", type=Path, default=REPO, help="checkout of the code after (default: this one)")
    parser.add_argument("--n-dev", type=int, default=1000, help="photos in development; the rest is holdout")
    parser.add_argument("--repeats", default="1,3", help="--repeats values of the sweeps")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated, of: " + ", ".join(PROTOCOLS))
    parser.add_argument("--sets", default="all three,Lite0,Lite2,Lite0+Lite2", help="feature sets swept, in order")
    parser.add_argument("--big-rows", type=int, default=25000, help="rows of the synthetic cache (0: skip)")
    parser.add_argument("--big-dim", type=int, default=1280)
    parser.add_argument("--redo", action="append", default=[], help="forget results whose key starts with this")
    parser.add_argument("--table-only", action="store_true", help="print the table of what is done")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cpu = cpu_description()
    results = Results(work / "results.json", args.redo)
    repeats = [int(r) for r in args.repeats.split(",")]
    protocols = [p for p in PROTOCOLS if p in args.protocols.split(",")]
    if not args.table_only:
        print(f"CPU: {cpu}; load average {os.getloadavg()[0]:.2f}", flush=True)
        codes = {"new": Code("new", args.new_code.resolve(), work)}
        if args.old_code:
            codes["old"] = Code("old", args.old_code.resolve(), work)
        dev, holdout = split_photos(args.data.resolve(), work, args.n_dev)
        caches = build_caches(codes["new"], work)
        sets = feature_sets(caches)
        for fset, names in (("Lite0", EXTRACTORS[:1]), ("Lite2", EXTRACTORS[1:]), ("Lite0+Lite2", EXTRACTORS)):
            results.get(f"tta:{fset}", lambda: tta_cv(caches, list(names)))
            results.get(f"logreg:{fset}", lambda: plain_logreg(caches, list(names)))
        for r in repeats:
            for fset in args.sets.split(","):
                for label in protocols:
                    code_name, extra = PROTOCOLS[label]
                    if code_name not in codes:
                        continue
                    results.get(f"sweep:{label}:r{r}:{fset}", lambda: sweep_and_evaluate(
                        codes[code_name], extra, sets[fset], r, sweep_folder(work, label, r, fset), holdout))
        if args.big_rows:
            for code in codes.values():
                results.get(f"big:{code.label}:{args.big_rows}x{args.big_dim}",
                            lambda: big_sweep(code, work, args.big_rows, args.big_dim))
    print(markdown(results.data, cpu, repeats, protocols, work))


if __name__ == "__main__":
    main()
