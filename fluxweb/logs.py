"""Structured logs: with FLUXWEB_LOG_FORMAT=json every record is one JSON object on one line, carrying the
generation it concerns (`generation_id`) wherever that is known: given as `extra`, named by a message that
starts "generation %s", or set for the whole of a django-q2 task that takes a generation id."""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime

current_generation: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "current_generation", default=None
)
TASKS_OF_ONE_GENERATION = ("generations.tasks.submit", "generations.tasks.ingest")
STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class GenerationFilter(logging.Filter):
    """Sets `record.generation_id` (None where no generation is concerned)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "generation_id", None) is None:
            record.generation_id = named_generation(record) or current_generation.get()
        return True


def named_generation(record: logging.LogRecord) -> int | None:
    if isinstance(record.msg, str) and record.msg.startswith("generation %s") and record.args:
        first = record.args[0] if isinstance(record.args, tuple) else None
        if isinstance(first, int):
            return first
    return None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "generation_id": getattr(record, "generation_id", None),
            "process": record.process,
        }
        for key, value in vars(record).items():
            if key not in STANDARD and key not in entry:
                entry[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def task_started(sender, func, task: dict, **kwargs) -> None:
    """django-q2's pre_execute, in the worker: a submit or ingest task concerns the generation it names."""
    args = task.get("args") or ()
    name = (
        func
        if isinstance(func, str)
        else f"{getattr(func, '__module__', '')}.{getattr(func, '__name__', '')}"
    )
    one = name in TASKS_OF_ONE_GENERATION and len(args) == 1 and isinstance(args[0], int)
    current_generation.set(args[0] if one else None)
