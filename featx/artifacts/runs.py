"""The records of the training stages' folders (``finetune/``, ``scratch/``, ``scratch-tuned/``).

:class:`ModelCard` is ``model.json`` (what ``featx predict`` needs beside ``model.keras``, and what the
stage records about the model); :class:`RunState` is ``state.json`` (a resumable training's settings,
resume key and progress). Both keep a stage's own keys (``details``) at the top level of the file, so
files written before records existed read as they are.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from . import SCHEMA_KEY, Record

__all__ = ["FINETUNE", "SCRATCH", "SCRATCH_TUNED", "STAGE_FOLDERS", "ModelCard", "RunState", "cache_candidates"]

FINETUNE, SCRATCH, SCRATCH_TUNED = "finetune", "scratch", "scratch-tuned"
#: Every folder a later stage writes in an experiment folder; a re-sweep keeps them all.
STAGE_FOLDERS = (FINETUNE, SCRATCH, SCRATCH_TUNED)


@dataclasses.dataclass(kw_only=True)
class _StageRecord(Record):
    """A record whose stage-specific keys (``details``) sit at the top level of its file."""

    details: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        return {**data.pop("details"), **data}

    @classmethod
    def from_dict(cls, data: Any, where: str = "the record"):
        if isinstance(data, dict):
            named = {f.name for f in dataclasses.fields(cls)} | {SCHEMA_KEY}
            data = {**{k: v for k, v in data.items() if k in named},
                    "details": {k: v for k, v in data.items() if k not in named}}
        return super().from_dict(data, where)


@dataclasses.dataclass(kw_only=True)
class ModelCard(_StageRecord, kind="model_card",
                fix="run featx finetune (or featx scratch) again to write model.json beside model.keras"):
    """``model.json`` of a Keras model that takes raw RGB in [0, 255] and gives one probability per class."""

    label_names: list
    input_size: list | None = None
    preprocessing: dict = dataclasses.field(default_factory=dict)
    best_epoch: int = 0
    featx_version: str = ""
    keras_backend: str = ""  # the Keras backend that trained it ("tensorflow" or "torch"); the file loads on both


@dataclasses.dataclass(kw_only=True)
class RunState(_StageRecord, kind="run_state", fix="pass --restart to start the training over"):
    """``state.json`` of a resumable training (:class:`featx.training.TrainingRun`)."""

    settings: dict
    built_from: dict | None = None
    best_value: float | None = None
    best_epoch: int = 0
    epochs_done: int = 0
    stopped_early_at_epochs: int | None = None
    featx_version: str = ""
    resumed_at: list = dataclasses.field(default_factory=list)  # epochs_done when each later call continued it

    def note_resume(self, epochs: int) -> bool:
        """Record that a call continues this run towards ``epochs`` in all; True when it will train
        (the epoch it resumes at is recorded once)."""
        done, stopped = int(self.epochs_done), self.stopped_early_at_epochs
        if int(epochs) <= done or (stopped is not None and int(epochs) <= int(stopped)):
            return False
        if done and (not self.resumed_at or self.resumed_at[-1] != done):
            self.resumed_at.append(done)
        return True

    def epochs_text(self, warm_start: bool = False) -> str:
        """The run's epochs in words: ``kept epoch 2 of 3 (resumed at 2)``.

        ``warm_start``: epoch 0 is the model before any training step (a fine-tune's starting head),
        named as such when it is the one kept.
        """
        text = f"kept epoch {self.best_epoch} of {self.epochs_done}"
        if warm_start and int(self.best_epoch) == 0:
            text += ": the warm start (no epoch of training beat the starting head on val)"
        extra = []
        if self.resumed_at:
            extra.append("resumed at " + ", ".join(str(epoch) for epoch in self.resumed_at))
        if self.stopped_early_at_epochs is not None:
            extra.append("stopped early")
        return text + (f"; {', '.join(extra)}" if extra else "")


def cache_candidates(cache_path: str | os.PathLike, experiment_dir: str | os.PathLike) -> list[Path]:
    """Where a cache a sweep recorded may be now: as recorded, and, for a relative path, from the project
    folder (``experiments/<name>/../..``, where ``featx sweep`` ran) and from the experiment folder."""
    path, experiment_dir = Path(cache_path), Path(experiment_dir)
    return [path] if path.is_absolute() else [path, experiment_dir.parent.parent / path, experiment_dir / path]
