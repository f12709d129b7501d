"""What the sandbox remembers: jobs, their result files, options, idempotency keys, credit balances.

A job's state is a pure function of the clock: it was submitted at `start`, it ends at `done_at`
(start + the drawn latency), and every poll computes its status from the elapsed fraction.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .wire import RecordedRequest

DEFAULT_OPTIONS: dict[str, Any] = {
    # Vtrix's non-terminal word [CONFLICT]: in_progress (API enum [V3]) vs pending/processing (CLI docs [V4]).
    "vtrix_status_word": "in_progress",
    # `done` is treated as success by a third-party SeaArt client [V8].
    "vtrix_done_word": "completed",
    # Vtrix `error` [CONFLICT]: {code:"002014001",message} [S001][V3] | plain string | {code:123,error_message} [V5].
    "vtrix_error_shape": "object",
    # Apiframe `result` [CONFLICT]: {"images":[...]} [A2][A10] | bare URL string [A1][A8 tests].
    "apiframe_result_shape": "object",
    # PixelDojo `output` [CONFLICT]: {"images":[...]} [S004] | {"image": url} [P9].
    "pixeldojo_output_shape": "images",
    # BFL's moderated end: "Content Moderated" (the image) or "Request Moderated" (the prompt) [B7].
    "bfl_moderation_word": "Content Moderated",
    "latency_fault_seconds": 3.0,
    "hang_seconds": 60.0,
    "fault_5xx_status": None,  # None: 500, 502 or 503 at random
    "drip_seconds": 1.0,  # the slow_drip fault: seconds between the bytes of a result file
    "webhook_timeout": 3.0,
}
OPTION_CHOICES: dict[str, tuple[Any, ...]] = {
    "vtrix_status_word": ("in_progress", "pending", "processing"),
    "vtrix_done_word": ("completed", "done"),
    "vtrix_error_shape": ("object", "string", "numeric"),
    "apiframe_result_shape": ("object", "string"),
    "pixeldojo_output_shape": ("images", "image"),
    "bfl_moderation_word": ("Content Moderated", "Request Moderated"),
    "fault_5xx_status": (None, 500, 502, 503),
}
STARTING_CREDITS = 1_000_000


def validate_options(values: dict[str, Any]) -> dict[str, Any]:
    for key, value in values.items():
        if key not in DEFAULT_OPTIONS:
            raise ValueError(f"unknown option {key!r}; one of {', '.join(DEFAULT_OPTIONS)}")
        choices = OPTION_CHOICES.get(key)
        if choices is not None and value not in choices:
            raise ValueError(f"option {key} must be one of {choices!r}")
        if choices is None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
            raise ValueError(f"option {key} must be a non-negative number")
    return values


def iso(ts: float, millis: bool = True) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FileEntry:
    name: str  # the URL's last segment, unique across the sandbox
    provider: str
    job: Job
    width: int
    height: int
    fmt: str  # jpeg | png | webp: what the bytes are
    seed: int

    def url(self, base_url: str) -> str:
        # The hostile link faults: an unclosed IPv6 bracket and a control character, both refused by httpx.
        if self.job.file_fault == "bad_url":
            return f"http://[::1/{self.provider}/_files/{self.name}"
        if self.job.file_fault == "control_url":
            return f"{base_url}/{self.provider}/_files/\x01{self.name}"
        return f"{base_url}/{self.provider}/_files/{self.name}"


@dataclass
class Job:
    id: str
    provider: str
    owner: str  # the API key that submitted it
    prompt: str
    width: int
    height: int
    fmt: str
    seed: int
    start: float  # monotonic
    done_at: float  # monotonic
    created: float  # wall clock, for timestamps
    url_ttl: float
    outcome: str = "completed"  # completed | moderation | failure
    file_fault: str | None = None  # one of faults.FILE_FAULTS
    files: list[FileEntry] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # provider-specific bookkeeping

    def fraction(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        span = self.done_at - self.start
        return 1.0 if span <= 0 else min(1.0, max(0.0, (now - self.start) / span))

    def is_done(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.done_at

    @property
    def succeeded(self) -> bool:
        return self.outcome == "completed"

    @property
    def completed_wall(self) -> float:
        return self.created + (self.done_at - self.start)

    def urls_expire_at(self) -> float:
        # The `expired` fault hands out URLs that are dead on arrival.
        return self.done_at if self.file_fault == "expired" else self.done_at + self.url_ttl

    def urls_expired(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.urls_expire_at()

    def add_files(self, count: int, name_for: Any) -> None:
        for i in range(count):
            self.files.append(
                FileEntry(name_for(i), self.provider, self, self.width, self.height, self.fmt, self.seed + i)
            )

    def urls(self, base_url: str) -> list[str]:
        return [f.url(base_url) for f in self.files]


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.jobs: dict[tuple[str, str], Job] = {}
        self.files: dict[str, FileEntry] = {}
        self.idempotency: dict[tuple[str, str], tuple[str, str, float]] = {}
        self.credits: dict[str, int] = {}
        self.requests: deque[RecordedRequest] = deque(maxlen=20_000)
        self.deliveries: deque[dict[str, Any]] = deque(maxlen=5_000)

    def reset(self) -> None:
        with self.lock:
            self.jobs.clear()
            self.files.clear()
            self.idempotency.clear()
            self.credits.clear()
            self.requests.clear()
            self.deliveries.clear()

    def add_job(self, job: Job) -> None:
        with self.lock:
            self.jobs[(job.provider, job.id)] = job
            for f in job.files:
                self.files[f.name] = f

    def job(self, provider: str, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get((provider, job_id))

    def file(self, provider: str, name: str) -> FileEntry | None:
        with self.lock:
            entry = self.files.get(name)
        return entry if entry is not None and entry.provider == provider else None

    def charge(self, provider: str, amount: int) -> int | None:
        """Take `amount` credits; the balance left, or None when it does not cover the amount."""
        with self.lock:
            balance = self.credits.setdefault(provider, STARTING_CREDITS)
            if balance < amount:
                return None
            self.credits[provider] = balance - amount
            return balance - amount

    def balance(self, provider: str) -> int:
        with self.lock:
            return self.credits.setdefault(provider, STARTING_CREDITS)
