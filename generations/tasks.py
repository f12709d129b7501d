"""django-q2 entry points: thin, taking ids, calling the engine. A task fetched after its worker was told to
stop does nothing: the reaper re-drives the job (signals.WorkerStop)."""

import time

from . import engine, sweeper
from .signals import WorkerStop


def submit(generation_id: int) -> None:
    if not WorkerStop.stopping:
        started = time.monotonic()
        engine.submit(generation_id)
        sweeper.take_over(started)


def sweep() -> int:
    return 0 if WorkerStop.stopping else sweeper.sweep()


def ingest(generation_id: int) -> None:
    if not WorkerStop.stopping:
        started = time.monotonic()
        engine.ingest(generation_id)
        sweeper.take_over(started)


def reap() -> int:
    return 0 if WorkerStop.stopping else sweeper.reap()
