"""The featx command line (Typer). Thin: parses, calls the API, prints.

Every command prints a one-line summary last. Bad input gets one clear line naming the
file and the fix, and exit code 2; nothing half-written is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from featx.errors import UserError, unwrap_tf_error
from featx.progress import RichBar

# What an interrupted command (Ctrl-C) leaves, and how to go on: one line, exit 130.
_INTERRUPTED = {
    "index": "nothing written (the manifest is written at the end); run it again",
    "cache": "the shards computed so far are kept in the cache's journal (.partial); run the same command again "
             "to compute only the rest",
    "sweep": "nothing published: --out is as it was; run the same command again",
    "finetune": "the epochs checkpointed so far are kept in EXPERIMENT/finetune/; run the same command again to "
                "resume",
    "scratch": "the trials and epochs checkpointed so far are kept in OUT/scratch*/; run the same command again "
               "to resume",
    "predict": "no submission written; the features computed so far are kept under --cache-dir's scored/ "
               "journal: run the same command again to reuse them",
    "evaluate": "nothing written; the features computed so far are kept under --cache-dir's scored/ journal: "
                "run the same command again to reuse them",
    "demo": "the finished steps' files are kept in --out; run it again to reuse them",
}


# Typer >= 0.20 vendors click: its UsageError is found through typer's own BadParameter.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _Group(TyperGroup):
    """featx's commands: a bad option or argument is one line (exit 2), and so is Ctrl-C (exit 130)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _UsageError as exc:  # featx --bogus
            _usage_error(exc, ctx)

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except _UsageError as exc:  # a command's bad value, unknown option, missing argument
            _usage_error(exc, ctx)
        except (KeyboardInterrupt, typer.Abort):
            kept = _INTERRUPTED.get(ctx.invoked_subcommand or "", "nothing written; run it again")
            err.print(f"interrupted: {kept}", highlight=False, markup=False)
            raise typer.Exit(130) from None

    def format_commands(self, ctx: typer.Context, formatter) -> None:
        """The commands with their whole first sentence, wrapped (click cuts it at about 45 characters)."""
        rows = [(name, command.get_short_help_str(limit=200)) for name in self.list_commands(ctx)
                if (command := self.get_command(ctx, name)) is not None and not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _usage_error(exc, ctx: typer.Context) -> None:
    """One line for click's usage errors (instead of a usage block and a boxed message), exit 2."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # help, not an error
        raise exc
    where = (exc.ctx or ctx).command_path
    err.print(Text.assemble(("error:", "bold red"), f" {exc.format_message().rstrip('.')} (see {where} --help)"),
              highlight=False)
    raise typer.Exit(2) from None


app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None, cls=_Group,
    help="featx: cache CNN and HoG/SIFT features once, then sweep classifiers on them in seconds.",
    context_settings={"max_content_width": 100},
)
# Piped or logged output is not cut at 80 columns (tables stay readable in CI logs and files).
_COLUMNS = os.environ.get("COLUMNS", "")
_WIDTH = None if os.isatty(2) else int(_COLUMNS) if _COLUMNS.isdigit() else 200
out = Console(soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, soft_wrap=True, width=_WIDTH)


# Commands that never run Keras: they work whatever KERAS_BACKEND says.
_NO_KERAS = {"index", "inspect", "report", "extractors"}


@app.callback()
def main(ctx: typer.Context,
         verbose: bool = typer.Option(False, "--verbose", help="Show TensorFlow's log lines (hidden unless "
                                                             "TF_CPP_MIN_LOG_LEVEL says otherwise).")) -> None:
    # Before any command imports TensorFlow: its start-up lines would drown the one-line summaries.
    from featx.quiet import quiet_tensorflow

    quiet_tensorflow(verbose)
    if ctx.invoked_subcommand not in _NO_KERAS and "--help" not in sys.argv[1:]:
        from featx.backend import BackendError, check_backend

        try:
            check_backend()  # KERAS_BACKEND=jax, or a backend that is not installed: one line, not a traceback
        except BackendError as exc:
            _fail(str(exc))


class UsageProblem(UserError):
    """A problem with what the user asked for (printed as one line, exit 2)."""


def _fail(message: str) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _run(fn, *args, **kwargs):
    """Call the API and turn user errors (also those TensorFlow wrapped, from tf.py_function) into one line."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        from featx.storage import BusyError
        from featx.weights import WeightsError

        error = unwrap_tf_error(exc)
        # Only featx's user-error classes (and a path the user gave that does not exist): any other
        # exception, a plain ValueError included, is a featx bug and keeps its traceback.
        if not isinstance(error, (UserError, WeightsError, BusyError, FileNotFoundError)):
            raise
        _fail(str(error))


SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit


def _fraction(value: float) -> float:
    """--val/--test: a fraction in [0, 1)."""
    if not 0 <= value < 1:
        raise typer.BadParameter(f"{value:g} is not a fraction in [0, 1)")
    return value


def _above_zero(value: Optional[float]) -> Optional[float]:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value:g} is not above 0")
    return value


def _jobs(value: int) -> int:
    """--n-jobs: -1 (all cores) or a count of at least 1."""
    if value == 0 or value < -1:
        raise typer.BadParameter(f"{value} is neither -1 (all cores) nor at least 1")
    return value


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)


@app.command()
def index(
    directory: Path = typer.Argument(..., help="Folder of images."),
    output: Path = typer.Option(Path("manifest.csv"), "-o", "--output", help="Manifest CSV to write."),
    layout: str = typer.Option("auto", help="auto | kaggle (cat.1.jpg) | folders (dog/x.jpg) | unlabeled."),
    val: float = typer.Option(0.1, callback=_fraction, help="Fraction of labelled images for validation."),
    test: float = typer.Option(0.1, callback=_fraction, help="Fraction of labelled images for test."),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Seed of the split hash."),
) -> None:
    """Find images (each file once, links followed), read labels, split train/val/test by content
    hash (identical files share a split), report duplicates, write a manifest.

    Example: featx index data/train -o cache/train.csv --val 0.1 --test 0.1
    """
    from featx.data import build_manifest, find_images

    try:
        total = len(find_images(directory)) if directory.is_dir() else 0
    except OSError:
        total = 0
    bar = RichBar()
    bar.start("index + sha1", total)
    try:
        manifest = _run(build_manifest, directory, layout=layout, val=val, test=test, seed=seed,
                        progress=bar.advance)
    finally:
        bar.stop()
    _print_indexing(manifest)
    duplicates = manifest.duplicate_groups()
    if duplicates:  # kept, each group in one split (keyed on content); conflicting labels are a warning above
        example = " = ".join(r.path for r in duplicates[0][:3]) + (" = ..." if len(duplicates[0]) > 3 else "")
        err.print(f"duplicates: {len(duplicates)} group(s) of identical files under different paths "
                  f"({sum(map(len, duplicates))} images, {len(manifest.label_conflicts())} with conflicting "
                  f"labels), e.g. {example}; each group sits in one split", highlight=False, soft_wrap=True)
    _print_counts(manifest.counts(), manifest.label_names)
    manifest.write(output)
    out.print(f"{output}: {len(manifest.records)} images, {len(manifest.label_names)} classes", highlight=False)


def _print_indexing(manifest) -> None:
    """What indexing a folder decided and met, on stderr: the layout and why, warnings, skipped files.

    ``index`` prints it, and so do ``cache``, ``predict`` and ``evaluate`` when given a folder, after
    their work as ``index`` does (a refusal stays the one line it is).
    """
    err.print(f"layout: {manifest.layout} ({manifest.layout_reason})", highlight=False, markup=False)
    for warning in manifest.warnings:
        err.print(Text.assemble(("warning:", "yellow"), f" {warning}"), highlight=False, soft_wrap=True)
    _print_skipped(manifest.skipped)


def _table(columns, rows, title: str | None = None, right_from: int | None = None) -> Table:
    """A borderless table; the columns from index ``right_from`` on are right-aligned (numbers)."""
    table = Table(title=title, show_edge=False)
    for index, column in enumerate(columns):
        table.add_column(column, justify="right" if right_from is not None and index >= right_from else "left")
    for row in rows:
        table.add_row(*row)
    return table


def _print_counts(counts: dict, label_names: list[str]) -> None:
    names = label_names or ["-"]
    rows = [[split, *[str(counts[split].get(n, 0)) for n in names], str(sum(counts[split].values()))]
            for split in ("train", "val", "test", "unlabeled") if split in counts]
    err.print(_table(["split", *names, "total"], rows, right_from=1))


@app.command()
def extractors(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List extractor names, output dims, and whether their weights are available offline.

    Example: featx extractors
    """
    from featx.extractors import list_extractors

    rows = []
    for info in list_extractors():
        available, detail = info.weights_status() if info.weights_status else (True, "no weights")
        rows.append({"name": info.name, "dim": info.output_dim, "offline": available,
                     "weights": detail, "description": info.description})
    try:
        from featx.extractors.keras_apps import KERAS_APPLICATIONS

        for name in sorted(KERAS_APPLICATIONS):
            rows.append({"name": f"keras:{name}", "dim": None, "offline": None,
                         "weights": "Keras cache (~/.keras/models) or --opt weights=PATH",
                         "description": "keras.applications"})
    except ImportError:
        pass
    if as_json:
        out.print_json(json.dumps(rows))
        return
    offline = {True: "yes", False: "no", None: "?"}
    out.print(_table(("name", "dim", "offline", "weights", "description"),
                     [(row["name"], str(row["dim"] or "-"), offline[row["offline"]], row["weights"], row["description"])
                      for row in rows]))
    out.print(f"{len(rows)} extractors")


_RUNTIME_HELP = "auto | keras | openvino: what runs the CNN (auto: OpenVINO on a CPU, Keras on a GPU)."


def _check_runtime(runtime: str) -> None:
    """An unknown --runtime, or one that is not installed: one line, before TensorFlow loads."""
    if runtime != "auto":
        from featx.runtime import resolve_runtime
        _run(resolve_runtime, runtime)


@app.command()
def cache(
    source: Path = typer.Argument(..., help="Folder of images, or a manifest CSV from featx index."),
    extractor: str = typer.Option("efficientnet_lite0", "--extractor", "-e", help="Extractor name (featx extractors)."),
    opt: Optional[List[str]] = typer.Option(None, "--opt", help="Extractor option KEY=VALUE (repeatable): layer=block5_pool, pool=avg, weights=PATH, k=500."),
    cache_dir: Path = typer.Option(Path("cache"), "--cache-dir", help="Where cache files go."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per model call (CNNs)."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16 | int8 (CNNs; auto: fp16 mixed on GPU, fp32 on CPU; int8: OpenVINO + NNCF)."),
    runtime: str = typer.Option("auto", help=_RUNTIME_HELP),
    workers: Optional[int] = typer.Option(None, min=1, help="Decoding threads / worker processes (default: all cores)."),
    device: str = typer.Option("auto", help="auto | cpu | gpu."),
    dtype: str = typer.Option("float32", help="Stored feature dtype: float32 | float16."),
    layout: str = typer.Option("auto", help="Layout when SOURCE is a folder."),
    val: float = typer.Option(0.1, callback=_fraction, help="Val fraction when SOURCE is a folder."),
    test: float = typer.Option(0.1, callback=_fraction, help="Test fraction when SOURCE is a folder."),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Split seed when SOURCE is a folder; also seeds learned extractors."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Compute shards on a Dask cluster: tcp://HOST:8786, a scheduler .json file, or local:N (N local worker processes)."),
    shard_rows: Optional[int] = typer.Option(None, "--shard-rows", min=1, help="Images per journal shard, the unit of resumption and of work on a cluster (default: 8 batches for CNNs, 32 images otherwise)."),
) -> None:
    """Compute (or finish, or update) a feature cache. Safe to kill and re-run.

    Example: featx cache data/train --extractor hog --opt size=128
    """
    from featx.data import load_dataset
    from featx.extractors import get_extractor, parse_opts

    _seed_everything(seed)
    manifest = _run(load_dataset, source, layout=layout, val=val, test=test, seed=seed)
    options = _run(parse_opts, opt)
    if device not in ("auto", "cpu", "gpu"):
        _fail(f"--device must be auto, cpu or gpu; got {device!r}")
    if device == "cpu":  # before TensorFlow is imported by a CNN extractor
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    _check_runtime(runtime)
    ext = _run(get_extractor, extractor, **options)
    if precision != "auto":  # hog computes in fp32 only: --precision bf16 is refused, never ignored
        _run(ext.check_precision, precision)
    if scheduler is not None:  # a Dask cluster computes the shards; this process plans, writes and publishes
        if runtime == "openvino":
            _fail(f"--runtime {runtime} is not available with --scheduler: Dask workers run the Keras model; "
                  f"drop --runtime or run without --scheduler")
        if "int8" in (precision, options.get("precision")):
            _fail("--precision int8 is not available with --scheduler: int8 runs on OpenVINO and Dask workers "
                  "run the Keras model; use fp32/bf16/fp16 there, or build the int8 cache without --scheduler")
        from featx.distributed import build_cache as build

        where = {"scheduler": scheduler, "device": device, "report": lambda line: err.print(line, highlight=False)}
        compute_device = "gpu" if device == "gpu" else "cpu"  # the workers' devices count, not this machine's
    else:
        from featx.pipeline import build_cache as build

        where = {"runtime": runtime}
        compute_device = _run(_select_device, device) if ext.parallel == "model" else device
    if ext.parallel == "model" and "precision" not in options:  # a CNN runs in a precision that suits its device
        ext.precision = _run(_resolve_precision, precision, compute_device)
    result = _run(build, manifest, ext, cache_dir=cache_dir, batch_size=batch_size, workers=workers, dtype=dtype,
                  shard_rows=shard_rows, progress=RichBar(), **where)
    if source.is_dir():  # indexed here: said as featx index says it
        _print_indexing(manifest)
    _print_skipped(result.failed)
    out.print(_cache_summary(result), highlight=False, markup=False)


def _cache_summary(result) -> str:
    """``PATH: 1606 rows (1094 computed, 512 resumed from an interrupted run, 0 failed) at 41.3 img/s``.

    Each image of the manifest was computed by this run, resumed (taken from the journal an interrupted
    run left) or reused (taken from an older cache file); those that failed are no row.
    """
    if result.noop:
        return f"{result.path}: already complete ({result.rows} rows); nothing to do"
    resumed = result.rows + len(result.failed) - result.computed - result.reused
    parts = [f"{result.computed} computed", f"{resumed} resumed from an interrupted run" if resumed > 0 else "",
             f"{result.reused} reused from an older cache" if result.reused else "", f"{len(result.failed)} failed"]
    rate = f" at {result.images_per_second:.1f} img/s" if result.computed else ""
    return f"{result.path}: {result.rows} rows ({', '.join(part for part in parts if part)}){rate}"


def _select_device(device: str) -> str:
    """'cpu' or 'gpu' for a checked --device (GPUs are already hidden for cpu)."""
    if device == "cpu":
        return "cpu"
    from featx.runtime.hardware import has_gpu

    gpu_seen = has_gpu()
    if device == "gpu" and not gpu_seen:
        from featx.backend import keras_backend

        backend = keras_backend()
        fix = "featx[gpu]" if backend == "tensorflow" else "a CUDA build of torch"
        raise UsageProblem(f"--device gpu, but Keras' backend ({backend}) sees no GPU: install {fix} "
                           f"and check nvidia-smi")
    return "gpu" if gpu_seen else "cpu"


def _resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "fp16" if device == "gpu" else "fp32"
    if precision not in ("fp32", "bf16", "fp16", "int8"):
        raise UsageProblem(f"--precision must be auto, fp32, bf16, fp16 or int8; got {precision!r}")
    return precision


@app.command()
def inspect(
    cache_file: Path = typer.Argument(..., help="A cache .h5 file."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show what a cache holds: rows, dims, splits, the extractor spec, failures.

    Example: featx inspect cache/train-hog-1a2b3c4d5e.h5
    """
    from featx.cache import open_cache

    with _run(open_cache, cache_file) as c:
        summary = c.summary()
        failed = c.failed
    if as_json:
        summary["failed_files"] = failed
        out.print_json(json.dumps(summary, default=str))
        return
    for key in ("path", "dataset", "root", "extractor", "rows", "dim", "dtype", "failed",
                "created", "updated", "featx_version", "images_per_second"):
        out.print(f"[bold]{key}[/]: {summary[key]}", highlight=False)
    if summary["runtime"]:  # what computed the features (older caches do not say)
        backend = f" (Keras on {summary['keras_backend']})" if summary["keras_backend"] else ""
        out.print(f"[bold]runtime[/]: {summary['runtime']}{backend}", highlight=False)
    out.print("[bold]spec[/]: " + json.dumps(summary["spec"], sort_keys=True), highlight=False)
    if summary["state"]:
        out.print(f"[bold]state[/]: {summary['state']}", highlight=False)
    _print_counts(summary["splits"], summary["label_names"])
    for path, reason in failed[:20]:
        out.print(f"  failed: {path}: {reason}", highlight=False)
    out.print(f"{summary['path']}: {summary['rows']} x {summary['dim']} {summary['extractor']}", highlight=False)


@app.command()
def sweep(
    caches: List[str] = typer.Argument(..., help="Cache files; join with '+' to concatenate features (a.h5+b.h5). Each argument is swept."),
    heads: str = typer.Option("logreg,linsvm,rbfsvm,dense", help="Comma-separated heads."),
    preprocessing: str = typer.Option("standard", help="Steps before the head, comma-separated: standard, l2, pca:256, none."),
    select: str = typer.Option("auto", help="How configs are scored: cv (k-fold on train+val, out-of-fold log loss) | val (fit on train, val log loss) | auto (cv up to 20,000 train+val rows)."),
    cv: int = typer.Option(5, min=2, help="Folds of the cross-validation that selects."),
    refit: str = typer.Option("train+val", help="What best.joblib is fit on: train+val | all (test too, after scoring: for a final submission)."),
    ensemble: bool = typer.Option(True, "--ensemble/--no-ensemble", help="Add the greedy ensemble of the configs (across heads and caches) as one more row."),
    repeats: int = typer.Option(1, min=1, help="Seeds per configuration (fold shuffles and model seeds; mean and std in the table)."),
    out_dir: Path = typer.Option(Path("experiments/sweep"), "--out", help="Results folder."),
    n_jobs: int = typer.Option(-1, "--n-jobs", callback=_jobs, help="Parallel configurations (classical heads; -1: all cores)."),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap resamples for the 95% intervals."),
    grid: Optional[Path] = typer.Option(None, help="JSON file {head: [{param: [values]}]} replacing default grids."),
    learning_curve: bool = typer.Option(True, "--learning-curve/--no-learning-curve", help="Refit the best config on 10..100% of train+val."),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Seed."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run the configurations on a Dask cluster: tcp://HOST:8786, a scheduler .json file, or local:N (--n-jobs is then the cluster's threads)."),
) -> None:
    """Fit heads x hyperparameters on cached features; select by out-of-fold log loss on train+val, refit, report on test.

    Example: featx sweep cache/train-efficientnet_lite0-*.h5 cache/train-hog-*.h5 --out experiments/catsdogs
    """
    from featx.artifacts.results import row_params
    from featx.sweep import REFITS, SELECTS, run_sweep

    if select not in SELECTS:
        _fail(f"--select must be one of {', '.join(SELECTS)}; got {select!r}")
    if refit not in REFITS:
        _fail(f"--refit must be one of {', '.join(REFITS)}; got {refit!r}")
    _seed_everything(seed)
    cache_sets = [[Path(p) for p in arg.split("+")] for arg in caches]
    grids = None
    if grid is not None:
        try:
            grids = json.loads(Path(grid).read_text())
        except (OSError, ValueError) as exc:
            _fail(f"cannot read --grid {grid}: {exc}; expected JSON like {{\"logreg\": [{{\"head__C\": [0.1, 1]}}]}}")
    steps = [s.strip() for s in preprocessing.split(",") if s.strip()]
    result = _run(run_sweep, cache_sets, out_dir, heads=[h.strip() for h in heads.split(",") if h.strip()],
                  grids=grids, preprocessing=steps[0] if len(steps) == 1 else steps, cv=cv, repeats=repeats,
                  seed=seed, n_jobs=n_jobs, n_boot=n_boot, learning_curve=learning_curve, progress=RichBar(unit="configs"),
                  scheduler=scheduler, report=lambda line: err.print(line, highlight=False), select=select,
                  refit=refit, ensemble=ensemble)
    rows = [(str(row["rank"]), str(row["config"]), row["features"], row["head"], row_params(row),
             f"{row['select_log_loss']:.4f}", f"{row['select_accuracy']:.4f} ± {row['select_accuracy_std']:.4f}",
             f"{row['accuracy']:.4f} [{row['accuracy_low']:.3f}, {row['accuracy_high']:.3f}]",
             f"{row['log_loss']:.4f}", f"{row['fit_seconds']:.2f}")
            for row in sorted(result.rows, key=lambda r: r["rank"])[:15]]
    selected_by = result.best["selected_by"]
    err.print(_table(("rank", "config", "features", "head", "params", f"{selected_by} log loss", f"{selected_by} acc",
                      "test acc [95% CI]", "test log loss", "fit s"), rows))
    if result.mcnemar:
        m = result.mcnemar
        err.print(f"McNemar best vs runner-up: n01={m['n01']} n10={m['n10']} p={m['p_value']:.3g}", highlight=False)
    summary = _read_summary(result.out_dir)
    err.print(f"protocol: {summary.protocol}", highlight=False)
    best = result.best
    out.print(f"{result.out_dir}: best config {best['config']} {best['features']} {best['head']} "
              f"{row_params(best)} {selected_by} log loss {best['select_log_loss']:.4f}, {_test_accuracy(best)} "
              f"({len(result.rows)} configs, {result.seconds:.0f} s)", highlight=False)


def _read_summary(out_dir: Path):
    from featx.artifacts.results import SweepSummary

    return SweepSummary.read(out_dir / "results.json")


def _test_accuracy(row: dict) -> str:
    """``test accuracy 0.9872 [0.9744, 0.9974]`` from a results row."""
    return f"test accuracy {row['accuracy']:.4f} [{row['accuracy_low']:.4f}, {row['accuracy_high']:.4f}]"


@app.command()
def report(
    experiment_dir: Path = typer.Argument(..., help="Results folder written by featx sweep --out."),
    top: int = typer.Option(8, min=1, help="Most curves in the ROC and precision-recall plots (one per family: "
                                           "each feature set's best, the ensemble, fine-tuned, from scratch)."),
) -> None:
    """Write report.md and report.html with ranked tables (one per selection protocol), McNemar and PNG
    plots (ROC, PR, confusion, learning curve, training history) from a sweep's results folder.
    A finetune/ or scratch/ folder built from another sweep or dataset is listed as stale, not ranked.

    Example: featx report experiments/catsdogs
    """
    from featx.report import write_report

    paths = _run(write_report, experiment_dir, top=top)
    plots = [path.name for key, path in paths.items() if key not in ("markdown", "html")]
    err.print(f"{paths['html']}; plots: {', '.join(plots) or 'none'}", highlight=False)
    out.print(str(paths["markdown"]), highlight=False)


@app.command()
def imagenet(
    images: List[Path] = typer.Argument(..., help="Image files."),
    extractor: str = typer.Option("efficientnet_lite0", "--extractor", "-e", help="A backbone with its ImageNet classifier."),
    opt: Optional[List[str]] = typer.Option(None, "--opt", help="Extractor option KEY=VALUE (weights=PATH, ...)."),
    top: int = typer.Option(5, min=1, max=1000, help="Classes per image."),
    runtime: str = typer.Option("auto", help=_RUNTIME_HELP),
    precision: str = typer.Option("fp32", help="fp32 | bf16 (the classifier's compute precision)."),
) -> None:
    """ImageNet top-k classes of images, from a backbone that has its classifier.

    Example: featx imagenet data/train/cat.1.jpg data/train/dog.1.jpg --top 5
    """
    from featx.extractors import parse_opts
    from featx.imagenet import top_k

    _check_runtime(runtime)
    options = _run(parse_opts, opt)
    results = _run(top_k, extractor, [str(p) for p in images], k=top, runtime=runtime, precision=precision,
                   **options)
    for path, classes in zip(images, results):
        out.print(f"{path}:", highlight=False)
        for name, probability in classes:
            out.print(f"  {probability:6.3f}  {name}", highlight=False)
    first = results[0][0] if results and results[0] else ("-", 0.0)
    out.print(f"{len(images)} image(s) classified with {extractor}; first: {first[0]} ({first[1]:.3f})", highlight=False)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("experiments/demo"), "--out", help="Where the demo writes its data, caches and results."),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Seed."),
) -> None:
    """The whole chain on scikit-learn's bundled digits, written as PNG images (offline, a few minutes).

    Example: featx demo --out /tmp/featx-demo
    """
    from featx.demo import run_demo, summary_line

    result = _run(run_demo, out_dir, seed=seed, console=err)
    out.print(summary_line(result), highlight=False, markup=False)


def _print_unreadable(failed: list, fate: str) -> None:
    """List the images predict or evaluate could not read, and what became of them, on stderr."""
    if failed:  # markup=False: a file name like [draft].jpg is text, not a style
        err.print(f"{len(failed)} unreadable image(s) {fate}:", style="yellow", highlight=False, markup=False)
        for image, reason in failed[:20]:
            err.print(f"  {image}: {reason}", highlight=False, markup=False)
        if len(failed) > 20:
            err.print(f"  ... and {len(failed) - 20} more", highlight=False)


@app.command()
def predict(
    model: Path = typer.Argument(..., help="best.joblib (or its experiment folder) from featx sweep, or the "
                                          "finetune/ folder from featx finetune."),
    directory: Path = typer.Argument(..., help="Folder of images (e.g. Kaggle's test1/), or a manifest CSV."),
    output: Path = typer.Option(Path("submission.csv"), "-o", "--output", help="Submission CSV to write."),
    hard: bool = typer.Option(False, "--hard", help="Write the predicted class name instead of probabilities."),
    positive: Optional[str] = typer.Option(None, "--positive", help="Class whose probability goes into the "
                                           "label column (default: the second class, e.g. dog for cat/dog)."),
    cache_dir: Path = typer.Option(Path("cache"), "--cache-dir", help="Where features of DIRECTORY are cached "
                                   "(a re-run reuses them)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per model call (CNNs)."),
    workers: Optional[int] = typer.Option(None, min=1, help="Decoding threads / worker processes (default: all cores)."),
    layout: str = typer.Option("auto", help="auto | kaggle | folders | unlabeled (labels are not needed)."),
    runtime: str = typer.Option("auto", help=_RUNTIME_HELP),
    clip: Optional[float] = typer.Option(None, "--clip", metavar="EPS", help="Clip written probabilities to "
                                         "[EPS, 1-EPS] (log loss: one confident mistake costs at most -log EPS); "
                                         "0 <= EPS < 0.5. Default: the eps the sweep chose from out-of-fold log "
                                         "loss (best.joblib), 1e-15 (no effective clipping) for other models."),
) -> None:
    """Predict a folder of images with a saved model and write a Kaggle submission (id,label).

    Binary: label = probability of the second class (dog for cats/dogs), or of --positive;
    --hard writes class names. Multi-class: one probability column per class.
    Every image file is one row, ids in Kaggle's order (numeric when the names are numbers);
    an unreadable image gets the model's class prior and is listed. Features are cached
    under CACHE_DIR/scored/, never beside the training caches.

    Example: featx predict experiments/effnet/best.joblib data/test1 -o submission.csv
    """
    from featx.predict import (check_clip, check_submission_options, load_model, predict as predict_folder,
                               scoring_manifest, write_submission)

    _check_runtime(runtime)
    if clip is not None:
        _run(check_clip, clip)
    loaded = _run(load_model, model)
    _run(check_submission_options, loaded.label_names, hard=hard, positive=positive)
    eps, eps_from = (loaded.clip, "the model's") if clip is None else (clip, "--clip")
    err.print(f"model: {loaded.describe()}", highlight=False)
    images = _run(scoring_manifest, directory, layout)  # indexed once: its layout is printed below
    predictions = _run(predict_folder, loaded, images, layout=layout, cache_dir=cache_dir,
                       batch_size=batch_size, workers=workers, progress=RichBar(), runtime=runtime)
    prior = ", ".join(f"{name} {p:.3g}" for name, p in zip(predictions.label_names, predictions.prior))
    if directory.is_dir():
        _print_indexing(images)
    _print_unreadable(predictions.failed, f"get the class prior ({prior})")
    path = _run(write_submission, predictions, output, hard=hard, positive=positive, clip=eps)
    all_cached = predictions.caches and all(c.noop for c in predictions.caches)
    reused = " (features reused from the cache)" if all_cached else ""
    line = f"{path}: {len(predictions.paths)} rows, {predictions.n_predicted} predicted{reused}"
    if predictions.failed:
        names = ", ".join(image for image, _ in predictions.failed[:5])
        more = f" and {len(predictions.failed) - 5} more" if len(predictions.failed) > 5 else ""
        line += (f"; {len(predictions.failed)} unreadable given the class prior ({prior}): "
                 f"{names}{more}")
    if not hard:
        line += f"; probabilities clipped to [{eps:g}, 1-{eps:g}] ({eps_from} eps)"
    out.print(line, highlight=False, markup=False)


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="best.joblib (or its experiment folder), or a finetune/ folder."),
    directory: Path = typer.Argument(..., help="Labelled folder (cat.1.jpg names, or one folder per label), "
                                              "or a manifest CSV. Every image counts, whatever its split."),
    cache_dir: Path = typer.Option(Path("cache"), "--cache-dir", help="Where features of DIRECTORY are cached."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per model call (CNNs)."),
    workers: Optional[int] = typer.Option(None, min=1, help="Decoding threads / worker processes (default: all cores)."),
    layout: str = typer.Option("auto", help="auto | kaggle | folders."),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap resamples for the 95% intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    runtime: str = typer.Option("auto", help=_RUNTIME_HELP),
    clip: Optional[float] = typer.Option(None, "--clip", metavar="EPS", help="Log loss of the probabilities "
                                         "clipped to [EPS, 1-EPS], as featx predict writes them (same default: "
                                         "the sweep's eps, else 1e-15)."),
) -> None:
    """Accuracy, ROC AUC, average precision and log loss of a saved model on a labelled folder, with 95% intervals.

    Unreadable images are listed and not counted. Features are cached under CACHE_DIR/scored/,
    with every image in split unlabeled: a scored folder never becomes training data.

    Example: featx evaluate experiments/effnet/best.joblib data/holdout
    """
    from featx.metrics import METRICS
    from featx.predict import check_clip, evaluate as evaluate_folder, load_model, scoring_manifest

    _check_runtime(runtime)
    if clip is not None:
        _run(check_clip, clip)
    loaded = _run(load_model, model)
    err.print(f"model: {loaded.describe()}", highlight=False)
    images = _run(scoring_manifest, directory, layout)  # indexed once: its layout is printed below
    result = _run(evaluate_folder, loaded, images, layout=layout, cache_dir=cache_dir, batch_size=batch_size,
                  workers=workers, n_boot=n_boot, seed=seed, progress=RichBar(), runtime=runtime, clip=clip)
    if directory.is_dir():
        _print_indexing(images)
    _print_unreadable(result["failed"], "not counted")
    if as_json:
        out.print_json(json.dumps(result, default=str))
        return
    rows = [(m, f"{result[m]:.4f}", f"[{result[m + '_low']:.4f}, {result[m + '_high']:.4f}]") for m in METRICS]
    out.print(_table(("metric", "value", "95% interval"), rows, right_from=1))
    out.print(_table(("", *result["label_names"]),
                     [(name, *map(str, row)) for name, row in zip(result["label_names"], result["confusion"])],
                     title="confusion (rows: true, columns: predicted)", right_from=1))
    eps_from = "the model's" if clip is None else "--clip"
    not_counted = f" ({len(result['failed'])} unreadable not counted)" if result["failed"] else ""
    out.print(f"accuracy {result['accuracy']:.3f} [{result['accuracy_low']:.3f}, {result['accuracy_high']:.3f}] "
              f"on {result['n_images']} images{not_counted}; log loss {result['log_loss']:.4f} with probabilities "
              f"clipped to [{result['clip']:g}, 1-{result['clip']:g}] ({eps_from} eps)", highlight=False)


@app.command()
def export(
    source: Path = typer.Argument(..., help="Experiment folder of featx sweep (its best.joblib), or a finetune/ "
                                           "folder."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Folder to write (default: "
                                          "EXPERIMENT-export, or EXPERIMENT-finetune-export, beside the experiment)."),
    format: str = typer.Option("openvino", "--format", help="openvino (model.xml + model.bin) | onnx (needs onnx, and "
                                                           "tf2onnx on TensorFlow) | keras (model.keras, loads with "
                                                           "featx)."),
) -> None:
    """One model file for the saved model: uint8 RGB images in at the backbone's input size (preprocessing
    inside the graph), class probabilities out; labels.txt and export.json beside it.

    The sweep's best row (backbone + head, its standardization, PCA and L2 folded in; an ensemble as one
    multi-branch graph) or a fine-tuned model. HoG/SIFT features are not a network: refused, naming the rows
    that can be exported.

    Example: featx export experiments/catsdogs -o deploy/catsdogs
    """
    from featx.export import export_model

    result = _run(export_model, source, output, format=format)
    sizes = ", ".join(f"{name} {size[0]}x{size[1]}" for name, size in result.inputs)
    out.print(f"{result.path}: {result.source}; uint8 RGB in ({sizes}), {len(result.label_names)} class "
              f"probabilities out ({', '.join(result.label_names)})", highlight=False, markup=False)


@app.command()
def finetune(
    experiment_dir: Path = typer.Argument(..., help="Results folder written by featx sweep --out (starts from its "
                                                   "best config that is a dense, logreg or linsvm head on one CNN "
                                                   "cache)."),
    unfreeze: str = typer.Option("top", help="top (block5 for VGG16, the last stages for EfficientNet-Lite, "
                                             "fc6/fc7 for CaffeNet) | all | none | N (the last N layers)."),
    epochs: int = typer.Option(5, min=1, help="Total epochs (a resumed run counts the ones already done)."),
    learning_rate: float = typer.Option(1e-4, "--lr", "--learning-rate", callback=_above_zero,
                                        help="Peak learning rate (cosine decay to 0)."),
    optimizer: str = typer.Option("adam", help="adam | sgd | rmsprop."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Global batch (split over GPUs)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random flip, rotation, zoom, translation."),
    config: Optional[int] = typer.Option(None, min=0, help="Start from this sweep config (results.csv 'config') "
                                                    "instead of the best one that can be fine-tuned."),
    patience: int = typer.Option(3, min=0, help="Early stopping patience in epochs (0: train every epoch)."),
    monitor: str = typer.Option("val_loss", help="val_loss | val_accuracy: picks the best checkpoint."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision", help="auto (float16 on GPU) | on | off."),
    restart: bool = typer.Option(False, "--restart", help="Discard an earlier run's checkpoint and start over "
                                                          "(needed when the sweep's head or cache changed)."),
    allow_warm_start_gap: bool = typer.Option(False, "--allow-warm-start-gap",
                                              help="Train even if the model does not reproduce the head before "
                                                   "training (the gap is recorded)."),
    workers: int = typer.Option(4, min=1, help="Image decoding threads."),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap resamples for the 95% intervals."),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Seed (weights of new layers, shuffling, augmentation)."),
) -> None:
    """Fine-tune the backbone with the sweep's best head on top; write EXPERIMENT/finetune/.

    When the sweep's best cannot be fine-tuned (an ensemble, a concatenation, an RBF SVM, HoG/SIFT
    features), it starts from the best-ranked config that can (an ensemble's best member) and says so.
    The head is fitted on train; before training, the model reproduces its predictions on cached images (checked).
    Checkpoints the best epoch by val, stops early, resumes after an interruption, uses every
    GPU (MirroredStrategy). The results row lands beside the sweep's in featx report.

    Example: featx finetune experiments/catsdogs --unfreeze top --epochs 5 --lr 1e-4
    """
    from featx.finetune import run_finetune

    _seed_everything(seed)
    with contextlib.redirect_stdout(sys.stderr):  # Keras's epoch lines are progress: stdout holds the summary only
        result = _run(run_finetune, experiment_dir, unfreeze=unfreeze, epochs=epochs, augment=augment,
                      learning_rate=learning_rate, optimizer=optimizer, batch_size=batch_size, config=config,
                      patience=patience or None, seed=seed, monitor=monitor, restart=restart,
                      mixed_precision=mixed_precision, workers=workers, n_boot=n_boot,
                      verbose=1 if sys.stderr.isatty() else 2, allow_warm_start_gap=allow_warm_start_gap,
                      report=lambda line: err.print(line, highlight=False, soft_wrap=True))
    row = result.row
    err.print(f"warm start: fine-tune model vs head max |p difference| {result.warm_start_difference:.2e}; "
              f"val accuracy {result.val_before['val_accuracy']:.4f} -> {result.val_after['val_accuracy']:.4f}, "
              f"val loss {result.val_before['val_loss']:.4f} -> {result.val_after['val_loss']:.4f} (best epoch by "
              f"{monitor}); {len(result.trainable_layers)} trainable layers",
              highlight=False)
    out.print(f"{result.out_dir}: {row['features']} {row['head']} {_test_accuracy(row)} (from config {row['config']}; "
              f"{result.epochs_text()}; {result.seconds:.0f} s)", highlight=False, soft_wrap=True)


@app.command()
def scratch(
    source: Path = typer.Argument(..., help="Labelled image folder or a manifest CSV from featx index."),
    out_dir: Path = typer.Option(Path("experiments/scratch"), "--out", help="Experiment folder; writes "
                                 "OUT/scratch/ (OUT/scratch-tuned/ with --tune)."),
    preset: str = typer.Option("keras-blog", help="keras-blog (3 blocks) | vgg-mini (4 blocks) | bn-gap "
                                                 "(4 blocks, batch norm, global pooling)."),
    image_size: int = typer.Option(128, "--image-size", min=8, help="Square input size in pixels."),
    epochs: int = typer.Option(30, min=1, help="Epochs (best by val accuracy is kept)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per training step."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random flip, rotation, zoom."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", "--learning-rate", callback=_above_zero,
                                                  help="Default: the preset's."),
    patience: int = typer.Option(10, min=0, help="Early stopping patience in epochs."),
    tune: bool = typer.Option(False, "--tune", help="Keras Tuner search first, then retrain the best config."),
    tuner: str = typer.Option("bayesian", help="bayesian | random."),
    max_trials: int = typer.Option(10, "--max-trials", min=1, help="Tuning budget in trials."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", callback=_above_zero,
                                                help="Tuning budget in minutes."),
    trial_epochs: Optional[int] = typer.Option(None, "--trial-epochs", min=1, help="Epochs per trial (default: a third of --epochs)."),
    train_minutes: Optional[float] = typer.Option(None, "--train-minutes", callback=_above_zero,
                                                  help="Stop training after this many minutes."),
    restart: bool = typer.Option(False, "--restart", help="Discard an earlier search and run."),
    deterministic: bool = typer.Option(False, "--deterministic", help="The backend's deterministic kernels (slower on GPU)."),
    layout: str = typer.Option("auto", help="When SOURCE is a folder: auto | kaggle | folders."),
    val: float = typer.Option(0.1, callback=_fraction, help="When SOURCE is a folder: fraction for validation."),
    test: float = typer.Option(0.1, callback=_fraction, help="When SOURCE is a folder: fraction for test."),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap resamples for the 95% intervals."),
    workers: int = typer.Option(4, min=1, help="Image decoding threads."),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Seed (weights, batches, augmentation, tuner)."),
) -> None:
    """Train a small CNN from scratch (optionally after a Keras Tuner search) as the baseline
    that transfer learning must beat; the results row lands in the same report.

    Example: featx scratch cache/train.csv --out experiments/catsdogs --epochs 30 --tune --max-trials 4
    """
    from dataclasses import fields

    from featx.scratch import ScratchOptions, run_scratch

    flags = locals()  # the options are the flags: spelled once, in ScratchOptions
    options = ScratchOptions(**{f.name: flags[f.name] for f in fields(ScratchOptions) if f.name in flags})
    _seed_everything(seed)
    with contextlib.redirect_stdout(sys.stderr):  # Keras's and Keras Tuner's lines are progress, not the summary
        result = _run(run_scratch, source, out_dir, options, progress=RichBar())
    out.print(result.summary(), highlight=False)


def _print_skipped(failed: list) -> None:
    """List unreadable images (they get no features, no prediction) on stderr."""
    if not failed:
        return  # markup=False: a file name like [draft].jpg is text, not a style
    err.print(f"skipped {len(failed)} unreadable image(s):", style="yellow", highlight=False, markup=False)
    for path, reason in failed[:20]:
        err.print(f"  {path}: {reason}", highlight=False, markup=False)
    if len(failed) > 20:
        err.print(f"  ... and {len(failed) - 20} more", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
