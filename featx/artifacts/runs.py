"""The stage folders that later stages write inside an experiment folder, and their records.

``featx sweep`` publishes ``experiments/NAME/`` as a whole; the folders below belong to later
stages and a re-sweep carries every one of them over (:data:`STAGE_FOLDERS`).
"""

from __future__ import annotations

__all__ = ["FINETUNE", "SCRATCH", "SCRATCH_TUNED", "STAGE_FOLDERS"]

FINETUNE, SCRATCH, SCRATCH_TUNED = "finetune", "scratch", "scratch-tuned"
#: Every folder a later stage writes in an experiment folder; a re-sweep keeps them all.
STAGE_FOLDERS = (FINETUNE, SCRATCH, SCRATCH_TUNED)
