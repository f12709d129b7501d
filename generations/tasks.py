"""django-q2 entry points: thin, taking ids, calling the engine. A task fetched after its worker was told to
stop does nothing: the reaper re-drives the job (signals.WorkerStop)."""

from . import engine, sweeper
from .signals import WorkerStop


def submit(generation_id: int) -> None:
    if not WorkerStop.stopping:
        engine.submit(generation_id)


def sweep() -> int:
    return 0 if WorkerStop.stopping else sweeper.sweep()


def ingest(generation_id: int) -> None:
    if not WorkerStop.stopping:
        engine.ingest(generation_id)


def reap() -> int:
    return 0 if WorkerStop.stopping else sweeper.reap()
