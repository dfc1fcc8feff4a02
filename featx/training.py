"""What fine-tuning and from-scratch training share, below both stages.

:class:`TrainingRun` is one resumable Keras training in a stage folder; :func:`score_and_write`
scores its kept weights and writes the folder's outputs (listed in docs/training.md). Also featx's
own Keras layers (registered by name, so ``model.keras`` reloads without importing a stage), the
augmentation and compilation both stages use, and the training-curve plot.
"""

from __future__ import annotations

import csv
import functools
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from featx import __version__
from featx.errors import UserError
from featx.artifacts.runs import RunState
from featx.storage import atomic_write, clean_stale_temps

__all__ = ["MONITORS", "HISTORY_COLUMNS", "History", "TrainingRun", "score_and_write", "custom_objects",
           "plot_curves"]

#: Validation metrics a run may keep its best weights by, and which way is better.
MONITORS = {"val_loss": "min", "val_accuracy": "max"}
HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"]
STATE_FILE, HISTORY_FILE, BEST_WEIGHTS, CHECKPOINT = "state.json", "history.csv", "best.weights.h5", "checkpoint"
#: The files of a stage folder written through featx.storage (a killed writer may leave a temporary of each).
FILES = (STATE_FILE, HISTORY_FILE, BEST_WEIGHTS, "model.keras", "model.json", "results.csv", "predictions.npz",
         "curves.png")


class History:
    """``history.csv``: one row per epoch, rewritten atomically after each (a resumed epoch replaces its row)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: dict[int, dict] = {}
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    self.rows[int(float(row["epoch"]))] = {k: (float(v) if v not in ("", None) else None)
                                                           for k, v in row.items() if k != "epoch"}

    def put(self, epoch: int, values: dict) -> None:
        from featx.artifacts.results import write_rows_csv

        self.rows[int(epoch)] = {k: (None if values.get(k) is None else float(values[k]))
                                 for k in HISTORY_COLUMNS[1:]}
        write_rows_csv(self.path, self.as_list(), HISTORY_COLUMNS)

    def as_list(self) -> list[dict]:
        return [{"epoch": epoch, **self.rows[epoch]} for epoch in sorted(self.rows)]


class TrainingRun:
    """One resumable Keras training in ``folder``, keyed by what it is built from and its settings.

    It keeps the best epoch's weights by ``monitor`` (``best.weights.h5``), the last finished epoch with
    its optimizer state (``checkpoint/``), ``history.csv`` and ``state.json``.

    Parameters
    ----------
    monitor : {"val_loss", "val_accuracy"}
        Picks the best epoch (a key of :data:`MONITORS`; the stage checks a user's choice).
    built_from : dict
        What the folder is built from (a sweep configuration and cache, a manifest and architecture).
    settings : dict
        The run's settings, recorded in ``state.json``; those named in ``resume_keys`` must match to resume.
    describe : callable
        ``built_from`` as words, for the messages.
    error : UserError subclass
        Raised (one line) when the folder holds another run.
    """

    def __init__(self, folder: str | os.PathLike, monitor: str, built_from: dict, settings: dict,
                 resume_keys: Sequence[str], describe: Callable[[dict], str] = str, error: type = UserError):
        self.folder, self.monitor, self.built_from, self.settings = Path(folder), monitor, built_from, settings
        self.resume_keys, self.describe, self.error = tuple(resume_keys), describe, error
        self.state_path, self.best_weights = self.folder / STATE_FILE, self.folder / BEST_WEIGHTS
        self.state: RunState | None = None
        self.history = History(self.folder / HISTORY_FILE)

    def open(self, restart: bool = False, replace_stale: bool = False) -> RunState | None:
        """Read an earlier run's state (None: none) after checking it may be continued.

        ``restart`` removes the whole folder first; ``replace_stale`` discards an earlier training
        built from something else (its weights, history and state) instead of refusing it.
        """
        if restart:
            shutil.rmtree(self.folder, ignore_errors=True)
        for name in FILES:  # what a killed run was writing
            clean_stale_temps(self.folder / name)
        state = RunState.read(self.state_path) if self.state_path.exists() else None
        if state is not None and replace_stale and state.built_from != self.built_from:
            for name in (STATE_FILE, HISTORY_FILE, BEST_WEIGHTS):  # this training's files; the others stay
                (self.folder / name).unlink(missing_ok=True)
            shutil.rmtree(self.folder / CHECKPOINT, ignore_errors=True)
            state = None
        if state is not None:
            self._check(state)
        self.state = state
        self.history = History(self.folder / HISTORY_FILE)
        return state

    def _check(self, state: RunState) -> None:
        earlier, now = state.built_from, self.built_from
        if earlier is None:
            raise self.error(f"{self.folder} was written by an older featx that did not record what it was built "
                             f"from, so it cannot be resumed safely; pass --restart to start over from "
                             f"{self.describe(now)}")
        if earlier != now:
            changed = ", ".join(k for k in now if earlier.get(k) != now[k])
            raise self.error(f"{self.folder} was built from {self.describe(earlier)}, but now from "
                             f"{self.describe(now)} ({changed} changed); pass --restart to start over (replaces "
                             f"{self.folder}), or the earlier inputs to continue it")
        settings = state.settings
        changed = {k: (settings.get(k), self.settings[k]) for k in self.resume_keys
                   if settings.get(k) != self.settings[k]}
        if changed:
            raise self.error(f"{self.folder} holds a run with other settings ({changed}, earlier -> now); pass "
                             f"--restart to start over, or the same settings to continue it")

    def begin(self, model=None, initial: dict | None = None, **details) -> RunState:
        """Record a new run; ``initial`` (validation values before training) becomes epoch 0 and the
        value to beat, with ``model``'s weights as the first best."""
        self.folder.mkdir(parents=True, exist_ok=True)
        best = None
        if initial is not None:
            self.history.put(0, dict(initial, seconds=0.0))
            model.save_weights(str(self.best_weights))
            best = initial[self.monitor]
        self.state = RunState(settings=self.settings, built_from=self.built_from, best_value=best,
                              featx_version=__version__, details=details)
        self.state.write(self.state_path)
        return self.state

    def callbacks(self, patience: int | None) -> list:
        """The Keras callbacks of one :meth:`fit` (tests wrap this to interrupt a run)."""
        import keras

        run, mode = self, MONITORS[self.monitor]

        class EpochRecorder(keras.callbacks.Callback):
            """history.csv and the best value so far (state.json) after each epoch."""

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()
                # Random layers (augmentation, dropout) draw from (seed, epoch): a resumed epoch draws
                # what it would have drawn in an uninterrupted run (the checkpoint does not hold it).
                for layer in self.model._flatten_layers(include_self=True, recursive=True):
                    for generator in getattr(layer, "_seed_generators", ()):
                        seed = keras.ops.convert_to_numpy(generator.state)[0]
                        generator.state.assign(np.array([seed, epoch << 20], dtype=generator.state.dtype))

            def on_epoch_end(self, epoch, logs=None):
                rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                logs = dict(logs or {}, learning_rate=rate, seconds=time.perf_counter() - self.started)
                run.history.put(epoch + 1, logs)
                value, best = logs.get(run.monitor), run.state.best_value
                if value is not None and (best is None or (value < best if mode == "min" else value > best)):
                    run.state.best_value, run.state.best_epoch = float(value), epoch + 1
                run.state.epochs_done = epoch + 1
                run.state.write(run.state_path)

        callbacks = [
            # Weights only (not the whole model), which works under MirroredStrategy as well.
            keras.callbacks.ModelCheckpoint(str(self.best_weights), monitor=self.monitor, mode=mode,
                                            save_best_only=True, save_weights_only=True,
                                            initial_value_threshold=self.state.best_value),
            EpochRecorder(),
            # Last finished epoch + optimizer state: an interrupted run resumes from here.
            keras.callbacks.BackupAndRestore(str(self.folder / CHECKPOINT), save_freq="epoch",
                                             delete_checkpoint=False),
        ]
        if patience is not None and int(patience) > 0:
            callbacks.append(keras.callbacks.EarlyStopping(monitor=self.monitor, mode=mode, patience=int(patience)))
        return callbacks

    def fit(self, model, train, val, epochs: int, patience: int | None = None, callbacks: Sequence = (),
            verbose: int = 0) -> tuple[int, float]:
        """Train up to ``epochs`` in all (a resumed run counts those already done), then load the best
        epoch's weights into ``model``; returns the epochs run and their seconds.

        A run that stopped early continues only when asked for more epochs than it was given.
        ``train`` may have ``set_epoch(n)``: a resumed run then draws the batches epoch ``n`` would.
        """
        import warnings

        import keras

        started = time.perf_counter()
        done, stopped = int(self.state.epochs_done), self.state.stopped_early_at_epochs
        if int(epochs) > done and (stopped is None or int(epochs) > stopped):
            if hasattr(train, "set_epoch"):
                train.set_epoch(done)
            own = self.callbacks(patience)
            model.fit(train, validation_data=val, epochs=int(epochs), callbacks=own + list(callbacks),
                      shuffle=False, verbose=verbose)  # the data shuffle themselves, seeded
            early = [c for c in own if isinstance(c, keras.callbacks.EarlyStopping)]
            if early and early[0].stopped_epoch > 0:
                self.state.stopped_early_at_epochs = int(epochs)
                self.state.write(self.state_path)
        seconds = time.perf_counter() - started
        with warnings.catch_warnings():  # an epoch-0 file has no optimizer state; only the model's weights matter
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(str(self.best_weights))
        return int(self.state.epochs_done) - done, seconds


def score_and_write(folder: str | os.PathLike, model, val, test, label_names: Sequence[str], history: list[dict],
                    n_boot: int, seed: int, title: str, batch_size: int = 64, **columns) -> dict:
    """Score the kept weights and write ``model.keras``, ``results.csv``, ``predictions.npz`` and ``curves.png``.

    ``val`` and ``test`` are :class:`featx.datasets.ImageSet`: val gives the sweep's ``select_*`` columns,
    test the metrics with bootstrap intervals, beside ``columns`` (features, head, params...) in the one row.
    """
    from featx.artifacts.results import metric_columns, write_rows_csv
    from featx.datasets import predict_proba
    from featx.metrics import classification_metrics, metrics_with_ci

    classes = np.arange(len(label_names))
    val_proba, val_rows = predict_proba(model, val, batch_size)
    select = classification_metrics(val.labels[val_rows], val_proba, classes)
    started = time.perf_counter()
    proba, rows = predict_proba(model, test, batch_size)
    row = {"rank": 1, "config": 0, "selected_by": "val", "repeats": 1, "caches": "", **columns,
           "select_accuracy": float(select["accuracy"]), "select_log_loss": float(select["log_loss"]),
           "predict_seconds": time.perf_counter() - started, "n_test": len(rows)}
    y_test = test.labels[rows]
    row.update(metric_columns([metrics_with_ci(y_test, proba, classes, n_boot=n_boot, seed=seed) if len(rows) else {}]))
    folder = Path(folder)
    atomic_write(folder / "model.keras", lambda tmp: model.save(str(tmp)), suffix=".keras")
    write_rows_csv(folder / "results.csv", [row])
    atomic_write(folder / "predictions.npz", lambda tmp: np.savez_compressed(
        tmp, y_test=y_test, paths=np.array([test.paths[i] for i in rows]), label_names=np.array(list(label_names)),
        config_0=np.asarray(proba, dtype=np.float32)), suffix=".npz")
    atomic_write(folder / "curves.png", lambda tmp: plot_curves(history, tmp, title), suffix=".png")
    return row


@functools.cache
def custom_objects() -> dict:
    """featx's Keras layers by name, registered; call before ``keras.models.load_model("model.keras")``.

    Defining them here (not at import) keeps ``import featx.finetune`` free of Keras.
    CaffeNet's own layers are registered too, so a CaffeNet fine-tune reloads.
    """
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="featx")
    class ChannelAffine(keras.layers.Layer):
        """Per-pixel affine map of the colour channels in float32, ``x @ matrix + offset``: a backbone's
        numpy ``preprocess`` (BGR reordering, mean, scale) inside the model, which then takes raw RGB."""

        def __init__(self, matrix, offset, **kwargs):
            kwargs.setdefault("dtype", "float32")
            super().__init__(**kwargs)
            self.matrix = [[float(v) for v in row] for row in np.asarray(matrix, dtype=np.float64)]
            self.offset = [float(v) for v in np.asarray(offset, dtype=np.float64)]

        def call(self, inputs):
            x = ops.cast(inputs, "float32")
            return ops.matmul(x, ops.convert_to_tensor(self.matrix, "float32")) + ops.convert_to_tensor(
                self.offset, "float32")

        def get_config(self):
            return {**super().get_config(), "matrix": self.matrix, "offset": self.offset}

    @keras.saving.register_keras_serializable(package="featx")
    class TwoColumnProbabilities(keras.layers.Layer):
        """``p`` (N, 1) -> ``[1 - p, p]`` (N, 2), as scikit-learn's binary ``predict_proba``."""

        def call(self, inputs):
            return ops.concatenate([1.0 - inputs, inputs], axis=-1)

    @keras.saving.register_keras_serializable(package="featx")
    class NormalizeRows(keras.layers.Layer):
        """Divide each row by its sum (one-vs-rest calibrated probabilities; uniform when all are 0)."""

        def call(self, inputs):
            total = ops.sum(inputs, axis=-1, keepdims=True)
            uniform = ops.ones_like(inputs) / ops.cast(ops.shape(inputs)[-1], inputs.dtype)
            return ops.where(total > 0, inputs / ops.where(total > 0, total, 1.0), uniform)

    @keras.saving.register_keras_serializable(package="featx")
    class L2Normalize(keras.layers.Layer):
        """Row-wise L2 normalisation as scikit-learn's ``Normalizer`` (zero rows stay zero)."""

        def call(self, inputs):
            norm = ops.sqrt(ops.sum(ops.square(inputs), axis=-1, keepdims=True))
            return inputs / ops.where(norm > 0, norm, 1.0)

    from featx.backbones.caffenet import CaffeMaxPooling2D, LocalResponseNormalization  # noqa: F401 -- registers them
    return {layer.__name__: layer for layer in (ChannelAffine, TwoColumnProbabilities, NormalizeRows, L2Normalize)}


def compile_classifier(model, optimizer) -> None:
    """Sparse categorical cross-entropy with an ``accuracy`` metric (the columns of ``history.csv``)."""
    import keras

    from featx.heads import build_fit_state

    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    build_fit_state(model, np.zeros((1, *model.input_shape[1:]), "float32"), np.zeros((1,), "int32"))


def augmentation(seed: int, rotation: float, zoom: float, translation: float = 0.0):
    """Random horizontal flip, rotation, zoom (and translation), active only while training."""
    import keras

    layers = [keras.layers.RandomFlip("horizontal", seed=seed),
              keras.layers.RandomRotation(rotation, fill_mode="reflect", seed=seed + 1),
              keras.layers.RandomZoom(zoom, fill_mode="reflect", seed=seed + 2)]
    if translation:
        layers.append(keras.layers.RandomTranslation(translation, translation, fill_mode="reflect", seed=seed + 3))
    return keras.Sequential(layers, name="augmentation")


def plot_curves(history: list[dict], path: str | os.PathLike, title: str = "fine-tune") -> None:
    """Loss and accuracy per epoch (train and val) as a PNG; epoch 0 is the warm start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            points = [(row["epoch"], row.get(prefix + metric)) for row in history
                      if row.get(prefix + metric) is not None]
            if points:
                axis.plot(*zip(*points), style, label=(prefix + metric).replace("_", " "))
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
