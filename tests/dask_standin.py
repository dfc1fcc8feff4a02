"""Stand-ins the Dask process tests load into every process they start.

* ``dask scheduler/worker --preload dask_standin`` imports it: workers register the extractors
  below, the scheduler gets :class:`TaskRecorder`, and workers refuse to fit a SIFT vocabulary
  (the client fits it once; a worker that tried would fail the shard).
* ``python tests/dask_standin.py cache ...`` is the featx CLI with these extractors registered.

``gated_hog`` is HoG (same features) whose ``transform`` (one call per shard) first takes a
numbered ticket: an empty file ``tickets/NNNN`` created with O_EXCL in the folder named by
``FEATX_TEST_GATE``, holding the pid that took it. A call whose ticket is at least the number in
``hold_from`` waits until a file ``release`` appears, so a test knows which process holds
which shard and can kill it there. Unset, it is plain HoG. ``gated_model`` is the same with
``parallel = "model"`` (a CNN stand-in: its shards ask for the GPU resource under --device gpu).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from distributed.diagnostics.plugin import SchedulerPlugin

from featx.extractors.classical import HogExtractor, SiftBovwExtractor
from featx.extractors.registry import ExtractorInfo, register

GATE_ENV = "FEATX_TEST_GATE"
HOLD_LIMIT_S = 60


def take_ticket(gate: Path) -> int:
    tickets = gate / "tickets"
    tickets.mkdir(parents=True, exist_ok=True)
    number = 0
    while True:
        try:
            fd = os.open(tickets / f"{number:04d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            number += 1
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return number


class GatedHog(HogExtractor):
    name = "gated_hog"

    def transform(self, images):
        gate = os.environ.get(GATE_ENV)
        if gate:
            gate = Path(gate)
            number = take_ticket(gate)
            hold_from = gate / "hold_from"
            if hold_from.exists() and number >= int(hold_from.read_text()):
                deadline = time.monotonic() + HOLD_LIMIT_S
                while not (gate / "release").exists():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"ticket {number} held for {HOLD_LIMIT_S} s without a release")
                    time.sleep(0.05)
        return super().transform(images)


class GatedModel(GatedHog):
    name = "gated_model"
    parallel = "model"


for _cls in (GatedHog, GatedModel):
    register(ExtractorInfo(name=_cls.name, factory=_cls, description="test stand-in"))


class TaskRecorder(SchedulerPlugin):
    """Scheduler plugin: per task key, its resource restrictions, dependencies, the pickled size of
    what it runs, and the workers it went to (read with ``client.run_on_scheduler(recorded)``)."""

    name = "featx-recorder"

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.tasks: dict[str, dict] = {}

    def transition(self, key, start, finish, *args, **kwargs):
        ts = self.scheduler.tasks.get(key)
        if ts is None:
            return
        record = self.tasks.get(str(key))
        if record is None and ts.run_spec is not None:
            try:
                import cloudpickle

                size = len(cloudpickle.dumps(ts.run_spec))
            except Exception:  # noqa: BLE001 - a size is a nicety; the keys are what tests read
                size = -1
            record = self.tasks[str(key)] = {
                "resources": dict(ts.resource_restrictions or {}),
                "dependencies": sorted(str(d.key) for d in ts.dependencies),
                "run_spec_bytes": size, "ran_on": []}
        if record is not None and finish == "processing" and ts.processing_on is not None:
            record["ran_on"].append(ts.processing_on.address)


def recorded(dask_scheduler, clear: bool = False):
    tasks = dask_scheduler.plugins[TaskRecorder.name].tasks
    copy = {key: dict(record) for key, record in tasks.items()}
    if clear:
        tasks.clear()
    return copy


def _no_refit(self, images):
    raise RuntimeError(f"a Dask worker (pid {os.getpid()}) was asked to fit {self.name}")


def dask_setup(service):
    from distributed import Scheduler

    if isinstance(service, Scheduler):
        service.add_plugin(TaskRecorder(service), name=TaskRecorder.name)
    else:
        SiftBovwExtractor.fit = _no_refit


if __name__ == "__main__":
    from featx.cli import app

    app()
