"""The records of the training stages' folders (``finetune/``, ``scratch/``, ``scratch-tuned/``).

:class:`ModelCard` is ``model.json`` (what ``featx predict`` needs beside ``model.keras``, and what the
stage records about the model); :class:`RunState` is ``state.json`` (a resumable training's settings,
resume key and progress). Both keep a stage's own keys (``details``) at the top level of the file, so
files written before records existed read as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import SCHEMA_KEY, Record

__all__ = ["FINETUNE", "SCRATCH", "SCRATCH_TUNED", "STAGE_FOLDERS", "ModelCard", "RunState"]

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
