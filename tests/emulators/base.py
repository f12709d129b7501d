"""What every provider emulator shares: a loopback HTTP server, a log of every request, queues of injected
faults, jobs that finish after a short delay, and real images made with Pillow.

Written from /work/shared/design/providers.md and the seed pages only; nothing here comes from the project's
own sandbox. Faults are queued per stage and consumed one per matching request:

- `submit`, `poll`: HTTP-level answers (`auth`, `invalid`, `credit`, `rate_limit`, `server`, `unavailable`,
  `not_found`, ... as each emulator's FAULTS table names them), plus `timeout` (the request is processed, then
  the answer is held for `hang` seconds), `malformed` (HTTP 200 with a truncated JSON body) and `disconnect`
  (the connection is closed without an answer);
- `job`: how the next created job ends (`failed`, `moderation`, ... per emulator);
- `download`: `expired` (404), `not_image` (HTML served as image/png), `server` (500), `disconnect`.
"""

from __future__ import annotations

import io
import json
import math
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import urlsplit

from PIL import Image

MEGAPIXEL = 1024 * 1024
PIL_FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp")}
NOT_JSON = object()  # a body that did not parse


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass
class Answer:
    status: int
    body: Any = None  # dict/list: JSON; bytes: raw
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Job:
    id: str
    body: Any
    files: list[str]
    ending: str | None = None  # a `job` fault: how it ends instead of succeeding
    request: Recorded | None = None  # the request that created it
    created: float = field(default_factory=time.monotonic)
    extra: dict = field(default_factory=dict)


def implied_size(ratio: str, megapixels: float, multiple: int = 16) -> tuple[int, int]:
    """The pixels an aspect ratio at a megapixel tier comes to, in multiples of 16 as BFL backends make them."""
    w, h = (int(part) for part in ratio.split(":"))
    unit = math.sqrt(megapixels * MEGAPIXEL / (w * h))
    return max(multiple, round(w * unit / multiple) * multiple), max(
        multiple, round(h * unit / multiple) * multiple
    )


def render(width: int, height: int, fmt: str, shade: int = 0) -> bytes:
    pil_format, _ = PIL_FORMATS[fmt]
    out = io.BytesIO()
    Image.new("RGB", (width, height), (40 + shade * 37 % 200, 90, 160)).save(out, pil_format)
    return out.getvalue()


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = NOT_JSON
        request = Recorded(self.command, self.path, dict(self.headers.items()), raw, parsed)
        answer, hold = self.server.emulator.handle(request)
        if hold:
            time.sleep(hold)
        if answer.status == 0:  # the `disconnect` fault: close the connection without a response
            self.close_connection = True
            return
        body = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (the `timeout` fault)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, format, *args) -> None:  # noqa: A002
        pass


class Emulator:
    name: ClassVar[str]
    api_key: ClassVar[str]
    # fault name -> (HTTP status, message, provider error code)
    FAULTS: ClassVar[dict[str, tuple[int, str, Any]]] = {}

    def __init__(self, *, delay: float = 0.05, hang: float = 1.5, retry_after: str = "1"):
        self.delay = delay  # seconds until a job is done (MaxAPI: how long the request is held)
        self.hang = hang  # how long the `timeout` fault holds an answer
        self.retry_after = retry_after
        self.lock = threading.Lock()
        self.local = threading.local()  # the request being handled on this thread
        self.server: ThreadingHTTPServer | None = None
        self.reset()

    # -- life cycle ------------------------------------------------------------------------------------
    def start(self) -> Emulator:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.emulator = self
        threading.Thread(
            target=self.server.serve_forever, args=(0.05,), daemon=True, name=f"emulator-{self.name}"
        ).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.requests: list[Recorded] = []
            self.faults: dict[str, deque[str]] = {}
            self.jobs: dict[str, Job] = {}
            self.files: dict[str, tuple[int, int, str, int]] = {}  # path -> width, height, format, shade
            self.faulted: list[tuple[str, Recorded]] = []  # (fault, the request it answered)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    # -- faults and the log ----------------------------------------------------------------------------
    def fail(self, fault: str, *, at: str = "submit", times: int = 1) -> None:
        with self.lock:
            self.faults.setdefault(at, deque()).extend([fault] * times)

    def take(self, stage: str) -> str | None:
        with self.lock:
            queue = self.faults.get(stage)
            return queue.popleft() if queue else None

    def calls(self, method: str | None = None, prefix: str = "") -> list[Recorded]:
        """API calls (file downloads excluded), optionally by method and path prefix."""
        return [
            r
            for r in self.requests
            if urlsplit(r.path).path not in self.files
            and (method is None or r.method == method)
            and r.path.startswith(prefix)
        ]

    def downloads(self) -> list[Recorded]:
        return [r for r in self.requests if urlsplit(r.path).path in self.files]

    # -- dispatch ----------------------------------------------------------------------------------------
    def handle(self, request: Recorded) -> tuple[Answer, float]:
        with self.lock:
            self.requests.append(request)
        self.local.request = request
        path = urlsplit(request.path).path
        if request.method == "GET" and path in self.files:
            return self.serve_file(path), 0.0
        stage = self.stage_of(request)
        fault = self.take(stage) if stage else None
        if fault:
            with self.lock:
                self.faulted.append((fault, request))
        if fault == "timeout":
            return self.route(request), self.hang  # taken, then the answer comes too late
        if fault == "malformed":
            return Answer(200, b'{"id": "', content_type="application/json"), 0.0
        if fault == "disconnect":
            return Answer(0), 0.0
        if fault:
            return self.fault_answer(fault), 0.0
        return self.route(request), 0.0

    def fault_answer(self, fault: str) -> Answer:
        status, message, code = self.FAULTS[fault]
        answer = self.error(status, message, code)
        if status in (429, 503):
            answer.headers["Retry-After"] = self.retry_after
        return answer

    def stage_of(self, request: Recorded) -> str | None:
        raise NotImplementedError

    def route(self, request: Recorded) -> Answer:
        raise NotImplementedError

    def error(self, status: int, message: str, code: Any = None) -> Answer:
        raise NotImplementedError

    # -- jobs and files ----------------------------------------------------------------------------------
    def new_job(
        self, job_id: str, body: Any, count: int, width: int, height: int, fmt: str, name: str
    ) -> Job:
        """A job whose `count` images will be served at `{url}{name.format(i=...)}`; it ends as the next `job`
        fault says, or succeeds."""
        ending = self.take("job")
        files = [name.format(id=job_id, i=i) for i in range(count)]
        with self.lock:
            for i, path in enumerate(files):
                self.files[path] = (width, height, fmt, len(self.files) + i)
            job = self.jobs[job_id] = Job(job_id, body, files, ending, getattr(self.local, "request", None))
        return job

    def answered(self, job: Job, answer: dict, status_key: str = "status") -> dict:
        """Note the status a poll answered (tests read `job.extra["seen"]`) and return the answer."""
        job.extra.setdefault("seen", []).append(answer[status_key])
        return answer

    def done(self, job: Job) -> bool:
        return time.monotonic() - job.created >= self.delay

    def progress(self, job: Job) -> float:
        return min(1.0, (time.monotonic() - job.created) / self.delay) if self.delay else 1.0

    def job_for(self, image_urls) -> Job | None:
        """The job whose result files these are."""
        wanted = set(image_urls)
        return next(
            (job for job in self.jobs.values() if wanted and wanted <= set(self.file_urls(job))), None
        )

    def file_urls(self, job: Job) -> list[str]:
        return [self.url + path for path in job.files]

    def serve_file(self, path: str) -> Answer:
        fault = self.take("download")
        if fault:
            with self.lock:
                self.faulted.append((fault, self.local.request))
        if fault == "expired":
            return Answer(404, b"<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml")
        if fault == "not_image":
            return Answer(
                200, b"<html><body>Service temporarily unavailable</body></html>", content_type="image/png"
            )
        if fault == "server":
            return Answer(500, b"internal error", content_type="text/plain")
        if fault == "disconnect":
            return Answer(0)
        width, height, fmt, shade = self.files[path]
        return Answer(200, render(width, height, fmt, shade), content_type=PIL_FORMATS[fmt][1])


def new_id(length: int = 20) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))
