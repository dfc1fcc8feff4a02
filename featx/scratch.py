"""Baselines trained from scratch: small CNNs on raw pixels, and their hyperparameter search.

``featx scratch DIR|MANIFEST`` trains a small convolutional network with no pretrained weights on
the dataset's own train/val/test split, so a report can show what transfer learning buys: train
fits, val picks the best epoch, test is reported in the sweep's columns. ``--tune`` first runs a
resumable Keras Tuner search and retrains its best configuration. The model, data, seeding and
the files written are described in docs/training.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from featx import __version__
from featx.artifacts import runs
from featx.backend import keras_backend, set_random_seed
from featx.datasets import ImageSet, training_batches
from featx.training import TrainingRun, augmentation, compile_classifier, score_and_write
from featx.errors import UserError
from featx.features import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL
from featx.storage import atomic_write_json, locked

__all__ = ["ScratchError", "Architecture", "PRESETS", "TUNERS", "ScratchResult", "build_model",
           "load_splits", "run_scratch", "ScratchOptions"]

TUNERS = ("bayesian", "random")
MONITOR = "val_accuracy"


class ScratchError(UserError, ValueError):
    """The data or options cannot be trained as asked; the message says why and how to fix it."""


def _raise_problems(checks: list) -> None:
    """One :class:`ScratchError` naming every ``(failed, message)`` check that failed."""
    problems = [message for failed, message in checks if failed]
    if problems:
        raise ScratchError("; ".join(problems))


@dataclass(frozen=True)
class Architecture:
    """A small CNN: convolution blocks, then a dense top."""

    filters: tuple = (32, 32, 64)  # of each block's convolutions (one block per entry)
    convs_per_block: int = 1  # convolutions (ReLU) before each block's 2x2 max pooling
    kernel_size: int = 3
    padding: str = "valid"  # "valid" shrinks each map by kernel_size - 1 per convolution, as the recipes do
    batch_norm: bool = False  # after each convolution, before the ReLU
    top: str = "flatten"  # flatten the last maps (the recipes), or "gap": global average pooling
    dense_units: int = 64  # of the hidden Dense layer (0: none)
    dropout: float = 0.5  # before the output layer
    optimizer: str = "rmsprop"
    learning_rate: float = 1e-3

    def to_dict(self) -> dict:
        return {**asdict(self), "filters": [int(f) for f in self.filters]}

    def validate(self) -> "Architecture":
        from featx.heads import OPTIMIZERS

        _raise_problems([
            (not self.filters or any(int(f) < 1 for f in self.filters),
             f"filters must be positive integers, one per block; got {list(self.filters)}"),
            (int(self.convs_per_block) < 1 or int(self.kernel_size) < 1,
             f"convs_per_block and kernel_size must be >= 1; got {self.convs_per_block}, {self.kernel_size}"),
            (self.padding not in ("valid", "same"), f"padding must be 'valid' or 'same'; got {self.padding!r}"),
            (self.top not in ("flatten", "gap"), f"top must be 'flatten' or 'gap'; got {self.top!r}"),
            (int(self.dense_units) < 0, f"dense_units must be >= 0; got {self.dense_units}"),
            (not 0.0 <= float(self.dropout) < 1.0, f"dropout must be in [0, 1); got {self.dropout}"),
            (self.optimizer not in OPTIMIZERS,
             f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}"),
            (not float(self.learning_rate) > 0, f"learning_rate must be > 0; got {self.learning_rate}"),
        ])
        return self

    def min_image_size(self) -> int:
        """Smallest square input that leaves at least a 1x1 map after the last block."""
        shrink = int(self.convs_per_block) * (int(self.kernel_size) - 1) if self.padding == "valid" else 0
        size = 1
        for _ in self.filters:  # a block's input is twice its output plus what its convolutions trim
            size = 2 * size + shrink
        return size


#: Architectures of published from-scratch recipes (sources in docs/training.md; 128 px input by default).
PRESETS: dict[str, Architecture] = {
    "keras-blog": Architecture(filters=(32, 32, 64), dense_units=64, dropout=0.5, optimizer="rmsprop",
                               learning_rate=1e-3),
    "vgg-mini": Architecture(filters=(32, 64, 128, 128), dense_units=512, learning_rate=1e-4),
    # vgg-mini's blocks in the modern form: far fewer weights, trains faster and overfits less.
    "bn-gap": Architecture(filters=(32, 64, 128, 256), padding="same", batch_norm=True, top="gap",
                           dense_units=128, dropout=0.3, optimizer="adam", learning_rate=1e-3),
}


def build_model(architecture: Architecture, n_classes: int, image_size: int = 128, augment: bool = True,
                seed: int = 0, name: str = "featx_scratch"):
    """A Keras CNN on raw RGB pixels, compiled with sparse categorical cross-entropy and ``accuracy``.

    Input ``(image_size, image_size, 3)`` float RGB in [0, 255]; output ``(n_classes,)`` probabilities.

    Parameters
    ----------
    augment : bool
        Put the augmentation layers (training only) after the input.
    seed : int
        Seeds the augmentation and dropout layers (weights follow ``keras.utils.set_random_seed``).
    """
    import keras

    from featx.heads import make_optimizer

    architecture.validate()
    if int(n_classes) < 2:
        raise ScratchError(f"a classifier needs at least 2 classes; got {n_classes}")
    if int(image_size) < architecture.min_image_size():
        raise ScratchError(f"{len(architecture.filters)} blocks of {architecture.kernel_size}x"
                           f"{architecture.kernel_size} {architecture.padding} convolutions need images of at "
                           f"least {architecture.min_image_size()} px; got {image_size} (raise --image-size "
                           f"or use fewer blocks)")
    inputs = keras.Input(shape=(int(image_size), int(image_size), 3), name="image")
    x = augmentation(seed, rotation=0.1, zoom=0.2)(inputs) if augment else inputs
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(x)
    for block, filters in enumerate(architecture.filters, start=1):
        for conv in range(1, int(architecture.convs_per_block) + 1):
            x = keras.layers.Conv2D(int(filters), int(architecture.kernel_size), padding=architecture.padding,
                                    use_bias=not architecture.batch_norm, name=f"block{block}_conv{conv}")(x)
            if architecture.batch_norm:
                x = keras.layers.BatchNormalization(name=f"block{block}_bn{conv}")(x)
            x = keras.layers.Activation("relu", name=f"block{block}_relu{conv}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = (keras.layers.GlobalAveragePooling2D(name="gap") if architecture.top == "gap"
         else keras.layers.Flatten(name="flatten"))(x)
    if int(architecture.dense_units) > 0:
        x = keras.layers.Dense(int(architecture.dense_units), activation="relu", name="dense")(x)
    if float(architecture.dropout) > 0:
        x = keras.layers.Dropout(float(architecture.dropout), seed=seed + 3, name="dropout")(x)
    outputs = keras.layers.Dense(int(n_classes), activation="softmax", name="probabilities", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name=name)
    compile_classifier(model, make_optimizer(architecture.optimizer, float(architecture.learning_rate)))
    return model


def load_splits(manifest, image_size: int = 128, workers: int = 4, memory_limit_mb: float = 4096,
                progress=None) -> dict[str, ImageSet]:
    """The ``train``, ``val`` and ``test`` :class:`~featx.datasets.ImageSet` of a manifest, squashed to
    ``image_size`` and decoded into memory (unreadable images dropped and listed in ``failed``) when their
    uint8 pixels take at most ``memory_limit_mb``; otherwise decoded batch by batch at every epoch."""
    from featx.progress import Progress

    progress = progress or Progress()
    index = {name: i for i, name in enumerate(manifest.label_names)}
    preprocessing = {"size": [int(image_size), int(image_size)], "interpolation": "area"}
    splits = {}
    for name in (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST):
        records = [r for r in manifest.records if r.split == name and r.label is not None]
        splits[name] = ImageSet(str(manifest.root), [r.path for r in records],
                                np.array([index[r.label] for r in records], dtype=np.int64), preprocessing,
                                workers, name=name)
    n_images = sum(len(s) for s in splits.values())
    if n_images * int(image_size) ** 2 * 3 / 2**20 > float(memory_limit_mb):
        return splits  # streamed: ImageSet.pixels decodes per batch
    progress.start(f"decode {image_size}px", n_images)
    try:
        for split in splits.values():
            split.load(progress)
    finally:
        progress.stop()
    return splits


@dataclass
class ScratchResult:
    """What :func:`run_scratch` did."""

    out_dir: Path  # <out>/scratch or <out>/scratch-tuned
    row: dict  # the results row (sweep columns)
    history: list
    best_epoch: int  # from 1
    architecture: Architecture
    resumed_at: list = field(default_factory=list)  # epochs done when a call continued the training
    trials: list = field(default_factory=list)
    new_trials: int = 0  # trials this call ran (the others were resumed from the tuner folder)
    failed: list = field(default_factory=list)  # unreadable images: (path, reason)
    seconds: float = 0.0

    def summary(self) -> str:
        """The line ``featx scratch`` prints last: test accuracy with its interval, val, epochs, seconds."""
        row = self.row
        tuned = f", {len(self.trials)} trials ({self.new_trials} new)" if self.trials else ""
        resumed = f", resumed at {', '.join(map(str, self.resumed_at))}" if self.resumed_at else ""
        line = (f"{self.out_dir}: {row['features']} test accuracy {row['accuracy']:.3f} "
                f"[{row['accuracy_low']:.3f}, {row['accuracy_high']:.3f}], val {row['select_accuracy']:.3f} "
                f"(epoch {self.best_epoch}/{len(self.history)}{resumed}{tuned}), {self.seconds:.0f} s")
        if self.failed:
            line += f"; {len(self.failed)} unreadable image(s) skipped (failed.csv)"
        return line


def _seed(seed: int, deterministic: bool) -> None:
    set_random_seed(int(seed))
    if deterministic:
        from featx.backend import enable_determinism

        enable_determinism()


def _progress_callback(progress, n_train: int, batch_size: int, epochs: int, description: str):
    """Drive a Progress bar in images over all epochs (it shows images/s and the ETA)."""
    import keras

    n_train, batch_size = int(n_train), int(batch_size)
    return keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: progress.start(description, n_train * int(epochs)),
        on_train_batch_end=lambda batch, logs: progress.advance(max(0, min(batch_size, n_train - batch * batch_size))),
        on_train_end=lambda logs: progress.stop())


def _time_limit(train_minutes: float):
    import keras

    class TimeLimit(keras.callbacks.Callback):
        """Stops the training after the epoch that ends past ``train_minutes``."""

        def on_train_begin(self, logs=None):
            self.train_started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if time.perf_counter() - self.train_started >= 60.0 * float(train_minutes):
                self.model.stop_training = True

    return TimeLimit()


#: Settings that must match for a scratch folder's training to be resumed.
RESUME_KEYS = ("preset", "image_size", "batch_size", "augment", "seed")


def _describe(origin: dict) -> str:
    layers = origin["architecture"]
    return (f"{len(layers['filters'])} blocks {layers['filters']} (lr {layers['learning_rate']:g}) on manifest "
            f"{origin['manifest_sha256'][:12]}")


def _train(o: ScratchOptions, architecture: Architecture, splits: dict, n_classes: int, run: TrainingRun, progress,
           description: str):
    """Fit (or resume) one model, keep the best epoch by val accuracy; returns (model, history rows, best
    epoch, seconds)."""
    _seed(o.seed, False)
    model = build_model(architecture, n_classes, o.image_size, o.augment, o.seed)
    train = training_batches(splits[SPLIT_TRAIN], o.batch_size, shuffle=True, seed=o.seed)
    val = training_batches(splits[SPLIT_VAL], o.batch_size)
    if run.state is None:
        run.begin()
    if run.state.note_resume(o.epochs) and run.state.resumed_at:
        run.state.write(run.state_path)  # before training: a kill during it still counts this resume
    callbacks = [] if o.train_minutes is None else [_time_limit(o.train_minutes)]
    if progress is not None:
        callbacks.append(_progress_callback(progress, len(splits[SPLIT_TRAIN]), o.batch_size, o.epochs,
                                            description))
    _, seconds = run.fit(model, train, val, o.epochs, o.patience, callbacks, o.verbose)
    return model, run.history.as_list(), int(run.state.best_epoch), seconds


#: The search space of ``tune``: (hyperparameter, what it takes).
SEARCH_SPACE = {
    "learning_rate": "log-uniform in [1e-4, 3e-3]",
    "dropout": "0.2 to 0.6 in steps of 0.1",
    "conv_blocks": "3 or 4",
    "kernel_size": "3 or 5",
    "dense_units": "64, 128, 256 or 512",
}


def _architecture_from_hp(base: Architecture, values: dict) -> Architecture:
    """The preset with the tuned values: blocks beyond the preset's repeat its last filter count.

    Tuned models use 'same' padding, so every (blocks, kernel) pair fits the image size.
    """
    n_blocks = int(values["conv_blocks"])
    filters = tuple(base.filters[:n_blocks]) + (base.filters[-1],) * max(0, n_blocks - len(base.filters))
    return replace(base, filters=filters, kernel_size=int(values["kernel_size"]), padding="same",
                   dense_units=int(values["dense_units"]), dropout=round(float(values["dropout"]), 3),
                   learning_rate=float(values["learning_rate"]))


def _define_space(hp) -> dict:
    return {
        "learning_rate": hp.Float("learning_rate", 1e-4, 3e-3, sampling="log"),
        "dropout": hp.Float("dropout", 0.2, 0.6, step=0.1),
        "conv_blocks": hp.Int("conv_blocks", 3, 4),
        "kernel_size": hp.Choice("kernel_size", [3, 5]),
        "dense_units": hp.Choice("dense_units", [64, 128, 256, 512]),
    }


class _TimeBudgetSpent(Exception):
    """Raised before a new trial once the search's minutes are used."""


def _make_tuner(o: ScratchOptions, base: Architecture, n_classes: int, directory: Path, deadline: float | None,
                progress, n_train: int):
    import keras_tuner

    seed = int(o.seed)

    def build_trial_model(hp):
        """The preset with the trial's values; every trial starts from the same seed."""
        set_random_seed(seed)
        return build_model(_architecture_from_hp(base, _define_space(hp)), n_classes, o.image_size, o.augment, seed)

    tuner_class = {"bayesian": keras_tuner.BayesianOptimization, "random": keras_tuner.RandomSearch}[o.tuner]

    class BudgetedTuner(tuner_class):
        """Stops launching trials once ``deadline`` (time.monotonic) has passed."""

        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            # Keras Tuner imports tensorboard here for every trial on TensorFlow; only a TensorBoard
            # callback needs it, and featx passes none unless asked.
            if any(type(callback).__name__ == "TensorBoard" for callback in callbacks):
                super()._configure_tensorboard_dir(callbacks, trial, execution)

        def pre_create_trial(self):
            if deadline is not None and time.monotonic() >= deadline:
                raise _TimeBudgetSpent()

        def _build_and_fit_model(self, trial, train, *args, callbacks=(), **kwargs):
            train.set_epoch(0)  # the same batch order in every trial, resumed or not
            # Keras Tuner has deep-copied the search's callbacks by now; the progress bar must stay one object.
            if progress is not None:
                callbacks = [*callbacks, _progress_callback(progress, n_train, o.batch_size, o.trial_epochs,
                                                            f"trial {trial.trial_id}")]
            return super()._build_and_fit_model(trial, train, *args, callbacks=callbacks, **kwargs)

        def on_trial_end(self, trial):
            if progress is not None:
                progress.stop()  # also after a failed trial
            super().on_trial_end(trial)

    # Keras Tuner's default is 3 random trials per hyperparameter (15 here) before the Gaussian
    # process proposes any: a small budget would be a random search. Half the trials are random
    # (at least 2, at most that default); a resumed search keeps the value it started with.
    extra = ({"num_initial_points": max(2, min(3 * len(SEARCH_SPACE), int(o.max_trials) // 2))}
             if o.tuner == "bayesian" else {})
    return BudgetedTuner(
        hypermodel=build_trial_model, objective=keras_tuner.Objective(MONITOR, direction="max"),
        max_trials=int(o.max_trials), seed=seed, directory=str(directory), project_name="search",
        overwrite=False, **extra)


def _trial_rows(tuner) -> list[dict]:
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        values = {k: (round(float(v), 6) if isinstance(v, float) else v)
                  for k, v in trial.hyperparameters.values.items()}
        rows.append({"trial": trial_id, "status": str(trial.status),
                     "val_accuracy": None if trial.score is None else float(trial.score), **values})
    return rows


def _search(o: ScratchOptions, base: Architecture, splits: dict, n_classes: int, stage_dir: Path, settings: dict,
            progress):
    """Run (or resume) the Keras Tuner search; returns (best Architecture, trial rows, new trials, seconds)."""
    import keras
    from sklearn.exceptions import ConvergenceWarning

    tuner_dir = stage_dir / "tuner"
    settings_path = tuner_dir / "settings.json"
    if settings_path.is_file():
        earlier = json.loads(settings_path.read_text())
        changed = {k: (earlier.get(k), v) for k, v in settings.items() if earlier.get(k) != v}
        if changed:
            raise ScratchError(f"{tuner_dir} holds a search with other settings ({changed}, earlier -> now); "
                               "pass --restart to start a new search, or the same settings to resume it")
    tuner_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(settings_path, settings)

    train = training_batches(splits[SPLIT_TRAIN], o.batch_size, shuffle=True, seed=o.seed)
    val = training_batches(splits[SPLIT_VAL], o.batch_size)
    deadline = time.monotonic() + 60.0 * float(o.max_minutes) if o.max_minutes else None
    with contextlib.redirect_stdout(io.StringIO()) if not o.verbose else contextlib.nullcontext():
        # Keras Tuner prints "Reloading Tuner from ..." when it resumes; the summary says it instead.
        search = _make_tuner(o, base, n_classes, tuner_dir, deadline, progress, len(splits[SPLIT_TRAIN]))
    done_before = len([t for t in search.oracle.trials.values() if t.status == "COMPLETED"])
    callbacks = []
    if o.patience is not None and int(o.patience) > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=int(o.patience)))
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # The Bayesian oracle's Gaussian process warns about length scales at their bounds with few
            # trials; it is expected at this budget and drowns the output.
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            search.search(train, validation_data=val, epochs=int(o.trial_epochs), callbacks=callbacks,
                          verbose=o.verbose)
    except _TimeBudgetSpent:
        search.on_search_end()
    seconds = time.perf_counter() - started
    trials = _trial_rows(search)
    completed = [t for t in search.oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
    if not completed:
        errors = [t.message for t in search.oracle.trials.values() if getattr(t, "message", None)]
        if errors:
            last_line = errors[-1].strip().splitlines()[-1]
            raise ScratchError(f"every tuning trial failed ({len(errors)}); the last one with: {last_line}")
        raise ScratchError(f"no tuning trial finished within --max-minutes {o.max_minutes}; give the search more "
                           "minutes or fewer --trial-epochs")
    # The highest val accuracy, ties to the earliest trial: Keras Tuner's get_best_trials breaks ties in the
    # order it reloads trials in, so a resumed search could name another best and retrain another model.
    best = min(completed, key=lambda t: (-float(t.score), _trial_number(t.trial_id)))
    return _architecture_from_hp(base, best.hyperparameters.values), trials, len(completed) - done_before, seconds, best


def _trial_number(trial_id: str):
    """Keras Tuner's trial ids ("0", "1", ... or zero-padded) in creation order."""
    return (0, int(trial_id)) if str(trial_id).isdigit() else (1, str(trial_id))


@dataclass(frozen=True)
class ScratchOptions:
    """What ``featx scratch`` trains and how; :func:`run_scratch` takes one (the CLI builds it from its flags)."""

    preset: str = "keras-blog"  # one of PRESETS; with tune, the starting point whose blocks the search varies
    image_size: int = 128
    epochs: int = 30  # of the final training (the best epoch by val accuracy is kept)
    batch_size: int = 32
    augment: bool = True
    learning_rate: float | None = None  # overrides the preset's (not with tune, which searches it)
    patience: int | None = 10  # epochs without a better val accuracy before stopping; None or 0: never
    seed: int = 0  # weights, augmentation, batch order, the tuner and (for a folder) the split
    deterministic: bool = False  # also the backend's deterministic kernels (the same result on a GPU; slower there)
    tune: bool = False
    tuner: str = "bayesian"
    max_trials: int = 10  # trials in the search (SEARCH_SPACE), counting those of earlier calls
    max_minutes: float | None = None  # no new trial starts after this many minutes (the running one finishes)
    trial_epochs: int | None = None  # epochs of each trial (default: a third of epochs, at least 1)
    train_minutes: float | None = None  # the final training stops after the first epoch that ends past this
    restart: bool = False  # discard the stage folder (and an earlier search) first
    layout: str = "auto"  # layout, val and test index a folder (featx index); ignored for a manifest
    val: float = 0.1
    test: float = 0.1
    workers: int = 4
    memory_limit_mb: float = 4096  # above this many MB of pixels, images are decoded per batch instead of once
    n_boot: int = 1000
    verbose: int = 0

    def checked(self) -> "ScratchOptions":
        """The options with ``trial_epochs`` filled in; bad values are one :class:`ScratchError`."""
        tune = self.tune  # the search's options are checked only when there is a search
        _raise_problems([
            (int(self.image_size) < 8, f"--image-size must be at least 8 px; got {self.image_size}"),
            (int(self.epochs) < 1 or int(self.batch_size) < 1,
             f"--epochs and --batch-size must be >= 1; got {self.epochs} and {self.batch_size}"),
            (tune and self.tuner not in TUNERS, f"--tuner must be one of {', '.join(TUNERS)}; got {self.tuner!r}"),
            (tune and int(self.max_trials) < 1, f"--max-trials must be >= 1; got {self.max_trials}"),
            (tune and self.max_minutes is not None and not float(self.max_minutes) > 0,
             f"--max-minutes must be > 0; got {self.max_minutes}"),
            (tune and self.trial_epochs is not None and int(self.trial_epochs) < 1,
             f"--trial-epochs must be >= 1; got {self.trial_epochs}"),
            (self.patience is not None and int(self.patience) < 0,
             f"--patience must be >= 0 (0: no early stopping); got {self.patience}"),
            (self.train_minutes is not None and not float(self.train_minutes) > 0,
             f"--train-minutes must be > 0; got {self.train_minutes}"),
            (not float(self.memory_limit_mb) >= 0, f"memory_limit_mb must be >= 0; got {self.memory_limit_mb}"),
        ])
        trial_epochs = self.trial_epochs if self.trial_epochs is not None else max(1, int(self.epochs) // 3)
        return replace(self, trial_epochs=int(trial_epochs))


def _check_splits(splits: dict, label_names: list, source) -> None:
    train, val, test = (splits[s] for s in (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST))
    if len(train) == 0 or len(val) == 0 or len(test) == 0:
        raise ScratchError(f"{source} has {len(train)} train, {len(val)} val and {len(test)} test images (after "
                           "dropping unreadable ones); training from scratch needs all three (val picks the best "
                           "epoch, test is reported): index with --val 0.1 --test 0.1")
    present = np.unique(train.labels)
    if len(label_names) < 2 or len(present) < 2:
        raise ScratchError(f"{source}: the train split holds {len(present)} class(es) "
                           f"({', '.join(label_names[i] for i in present)}); a classifier needs at least two")


def run_scratch(source: str | os.PathLike, out_dir: str | os.PathLike = "experiments/scratch",
                options: ScratchOptions | None = None, progress=None, **changes) -> ScratchResult:
    """Train a small CNN from scratch (optionally after a hyperparameter search); write its folder.

    Parameters
    ----------
    source : path
        A folder of images (indexed on the fly with ``layout``, ``val``, ``test``, ``seed``) or a manifest CSV.
    out_dir : path
        The experiment folder; outputs go to ``out_dir/scratch`` (``scratch-tuned`` with ``tune``), where
        ``featx report out_dir`` ranks them beside a sweep's.
    **changes
        Fields of ``options`` (default :class:`ScratchOptions()`) to change (``run_scratch(src, out, epochs=5)``).

    Raises
    ------
    ScratchError
        Bad options, a split without images, a search with other settings in the folder.
    featx.data.DataError
        A source that is neither a folder of images nor a manifest.
    """
    from featx.data import load_dataset

    started = time.perf_counter()
    o = replace(options or ScratchOptions(), **changes).checked()
    if o.preset not in PRESETS:
        raise ScratchError(f"unknown preset {o.preset!r}; expected one of {', '.join(PRESETS)}")
    base = PRESETS[o.preset]
    if o.learning_rate is not None and not o.tune:
        base = replace(base, learning_rate=float(o.learning_rate))
    base.validate()
    if not o.tune and int(o.image_size) < base.min_image_size():
        raise ScratchError(f"preset {o.preset} needs images of at least {base.min_image_size()} px; got "
                           f"--image-size {o.image_size}")
    manifest = load_dataset(source, layout=o.layout, val=o.val, test=o.test, seed=o.seed)
    label_names = manifest.label_names
    if not label_names:
        raise ScratchError(f"{source} has no labelled images; training needs labels (layout kaggle or folders)")
    splits = load_splits(manifest, o.image_size, o.workers, o.memory_limit_mb, progress)
    _check_splits(splits, label_names, source)

    stage_dir = Path(out_dir) / (runs.SCRATCH_TUNED if o.tune else runs.SCRATCH)
    with locked(stage_dir, what=f"{stage_dir} (featx scratch)"):
        if o.restart:
            shutil.rmtree(stage_dir, ignore_errors=True)
        stage_dir.mkdir(parents=True, exist_ok=True)
        _seed(o.seed, o.deterministic)
        architecture, trials, new_trials, search_seconds, tuning = base, [], 0, 0.0, None
        if o.tune:
            settings = {"preset": o.preset, "image_size": int(o.image_size), "augment": bool(o.augment),
                        "batch_size": int(o.batch_size), "trial_epochs": o.trial_epochs, "tuner": o.tuner,
                        "seed": int(o.seed), "patience": o.patience, "manifest_sha256": manifest.sha256(),
                        "search_space": SEARCH_SPACE}
            architecture, trials, new_trials, search_seconds, best_trial = _search(
                o, base, splits, len(label_names), stage_dir, settings, progress)
            tuning = {"settings": json.loads(json.dumps(settings, default=str)), "tuner": o.tuner,
                      "max_trials": int(o.max_trials), "max_minutes": o.max_minutes,
                      "trial_epochs": o.trial_epochs, "trials": len(trials), "new_trials": new_trials,
                      "search_seconds": search_seconds, "best_trial": best_trial.trial_id,
                      "best_trial_val_accuracy": best_trial.score,
                      "best_hyperparameters": dict(best_trial.hyperparameters.values)}
        settings_out = {key: getattr(o, key) for key in ("preset", "image_size", "epochs", "train_minutes",
                                                         "batch_size", "augment", "patience", "seed", "deterministic")}
        origin = {"manifest_sha256": manifest.sha256(), "architecture": architecture.to_dict()}
        run = TrainingRun(stage_dir, MONITOR, origin, settings_out, RESUME_KEYS, _describe, ScratchError)
        # A search that found another best trial retrains it from the start (the same best continues, or is
        # kept when it has its epochs); other changes are refused.
        run.open(replace_stale=o.tune)
        model, history, best_epoch, train_seconds = _train(
            o, architecture, splits, len(label_names), run, progress, "retrain best" if o.tune else f"train {o.preset}")
        row = _write_outputs(o, model, splits, label_names, architecture, settings_out, history, best_epoch,
                             train_seconds + search_seconds, tuning, trials, stage_dir, manifest)
        failed = [entry for split in splits.values() for entry in split.failed]
        return ScratchResult(out_dir=stage_dir, row=row, history=history, best_epoch=best_epoch,
                             architecture=architecture, resumed_at=list(run.state.resumed_at), trials=trials,
                             new_trials=new_trials, failed=failed,
                             seconds=time.perf_counter() - started)


def _write_outputs(o: ScratchOptions, model, splits, label_names, architecture: Architecture, settings: dict,
                   history: list, best_epoch: int, fit_seconds: float, tuning: dict | None, trials: list,
                   stage_dir: Path, manifest) -> dict:
    """Evaluate the kept weights and write every output into ``stage_dir``, each file atomically."""
    from featx.artifacts.results import write_rows_csv

    stage, image_size = stage_dir.name, o.image_size
    params = {**architecture.to_dict(), "image_size": image_size, "epochs": o.epochs, "batch_size": o.batch_size,
              "augment": o.augment, "best_epoch": best_epoch,
              **({"tuner": tuning["tuner"], "trials": tuning["trials"]} if tuning else {})}
    row = score_and_write(stage_dir, model, splits[SPLIT_VAL], splits[SPLIT_TEST], label_names, history, o.n_boot,
                          o.seed, f"{stage} {o.preset} @ {image_size}px", o.batch_size, rank=0,
                          selected_by="val-epoch",  # val picked the kept epoch (and the tuner's trial)
                          features=f"scratch:{o.preset}{'+tuned' if tuning else ''}@{image_size}px", head=stage,
                          params=json.dumps(params, sort_keys=True), preprocessing="rescale",
                          fit_seconds=float(fit_seconds), n_train=len(splits[SPLIT_TRAIN]))
    details = {"model": stage, "architecture": architecture.to_dict(), "settings": settings,
               "select_accuracy": row["select_accuracy"], "manifest_root": str(manifest.root),
               "manifest_sha256": manifest.sha256(), **({"tuning": tuning} if tuning else {})}
    runs.ModelCard(label_names=list(label_names), input_size=[image_size, image_size],
                   preprocessing=splits[SPLIT_TEST].preprocessing, best_epoch=best_epoch, featx_version=__version__,
                   keras_backend=keras_backend(),
                   details=details).write(stage_dir / "model.json")
    failed = [(split.name, path, reason) for split in splits.values() for path, reason in split.failed]
    (stage_dir / "failed.csv").unlink(missing_ok=True)
    if failed:
        write_rows_csv(stage_dir / "failed.csv", [dict(zip(("split", "path", "reason"), entry)) for entry in failed],
                       ["split", "path", "reason"])
    if trials:
        write_rows_csv(stage_dir / "trials.csv", trials, ["trial", "status", "val_accuracy", *SEARCH_SPACE])
    return row
