"""django-q2 entry points: thin, taking ids, calling the engine."""

from . import engine


def submit(generation_id: int) -> None:
    engine.submit(generation_id)


def sweep() -> int:
    return engine.sweep()


def ingest(generation_id: int) -> None:
    engine.ingest(generation_id)


def reap() -> int:
    return engine.reap()
