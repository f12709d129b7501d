"""`Sandbox`: the emulated providers on one loopback port, each under its own prefix.

Stdlib `ThreadingHTTPServer` (one daemon thread per connection, HTTP/1.1 keep-alive) with Nagle
off: with it on, every keep-alive request costs ~44 ms instead of ~0.4 ms (performance.md).
No Django here, so tests and bench/ can run it in a thread without settings.
"""

from __future__ import annotations

import hmac
import random
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import control, files
from .apiframe import Apiframe
from .base import ProviderApp
from .bfl import Bfl
from .faults import FaultPlan
from .maxapi import MaxAPI
from .pixeldojo import PixelDojo
from .state import DEFAULT_OPTIONS, Job, Store, validate_options
from .vtrix import Vtrix
from .webhooks import Scheduler
from .wire import Headers, RecordedRequest, Request, Response, json_response

MAX_BODY = 8 * 1024 * 1024
APPS: tuple[type[ProviderApp], ...] = (MaxAPI, Vtrix, Apiframe, PixelDojo, Bfl)


class Sandbox:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: tuple[float, float] | float = (1.0, 2.0),
        faults: Mapping[str, float] | None = None,
        url_ttl: float = 600,
        api_keys: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._initial_latency = _latency_pair(latency)
        self.latency = self._initial_latency
        self._initial_faults = dict(faults or {})
        self.fault_plan = FaultPlan(self._initial_faults)
        self.url_ttl = float(url_ttl)
        self.api_keys = dict(api_keys or {})
        self.options: dict[str, Any] = dict(DEFAULT_OPTIONS)
        self.store = Store()
        self.apps: dict[str, ProviderApp] = {cls.name: cls(self) for cls in APPS}
        self.scheduler: Scheduler | None = None
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._rng = random.Random()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Sandbox:
        """Serve in a background thread; returns self."""
        if self._server is not None:
            return self
        self.scheduler = Scheduler()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="sandbox-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases held MaxAPI requests and hanging connections
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.scheduler is not None:
            self.scheduler.stop()

    def run(self) -> None:
        """Serve until Ctrl-C (or `stop()` from another thread)."""
        self.start()
        try:
            while not self._stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the sandbox is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        # Result URLs and statusUrl are built from this, so it must be reachable: a wildcard bind
        # is advertised as loopback.
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def base_url(self, provider: str) -> str:
        if provider not in self.apps:
            raise ValueError(f"unknown provider {provider!r}")
        return f"{self.url}/{provider}"

    @property
    def base_urls(self) -> dict[str, str]:
        return {name: self.base_url(name) for name in self.apps}

    # -- test control ---------------------------------------------------------------------------
    def queue_fault(self, kind: str, provider: str | None = None, phase: str | None = None) -> None:
        """The next matching request (request faults; at submit unless `phase` says poll/any) or job
        (job and file faults) gets `kind`, exactly once."""
        self.fault_plan.queue(kind, provider, phase)

    def set_faults(self, rates: Mapping[str, float]) -> None:
        """Replace the fault rates: {"5xx": 0.2, "apiframe.429": 0.5, ...}."""
        self.fault_plan.set_rates(rates)

    @property
    def faults(self) -> dict[str, float]:
        return self.fault_plan.rates()

    def set_latency(self, minimum: float, maximum: float | None = None) -> None:
        self.latency = _latency_pair((minimum, minimum if maximum is None else maximum))

    def set_options(self, **values: Any) -> None:
        self.options.update(validate_options(values))

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.store.lock:
            return list(self.store.requests)

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        with self.store.lock:
            return list(self.store.deliveries)

    def job(self, provider: str, job_id: str) -> Job | None:
        return self.store.job(provider, job_id)

    def reset(self) -> None:
        """Back to the state at construction: no jobs, no recorded requests, initial faults/latency/options."""
        if self.scheduler is not None:
            self.scheduler.clear()
        self.store.reset()
        self.fault_plan.clear(self._initial_faults)
        self.latency = self._initial_latency
        self.options.clear()
        self.options.update(DEFAULT_OPTIONS)

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "providers": self.base_urls,
            "latency": list(self.latency),
            "url_ttl": self.url_ttl,
            "faults": self.faults,
            "queued": self.fault_plan.queued(),
            "options": self.options,
            "jobs": len(self.store.jobs),
        }

    # -- used by the provider apps --------------------------------------------------------------
    def key_ok(self, provider: str, key: str | None) -> bool:
        if not key:
            return False
        pinned = self.api_keys.get(provider)
        if pinned is not None:
            return hmac.compare_digest(key.encode(), pinned.encode())
        return not key.startswith("bad")

    def draw_latency(self) -> float:
        low, high = self.latency
        return self._rng.uniform(low, high)

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when the sandbox is stopping."""
        return self._stopping.wait(max(0.0, seconds))

    # -- one request ----------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: Headers, body: bytes) -> Response:
        parts = urlsplit(target)
        prefix, _, rest = parts.path.lstrip("/").partition("/")
        req = Request(
            method=method,
            path="/" + rest,
            query=dict(parse_qsl(parts.query)),
            headers=headers,
            body=body,
            base_url=self.url,
        )
        if prefix == "_sandbox":
            return control.handle(self, req)
        app = self.apps.get(prefix)
        self.store.requests.append(
            RecordedRequest(
                app.name if app else None,
                method,
                req.path,
                req.query,
                headers,
                req.json_or_none(),
                time.time(),
            )
        )
        if app is None:
            return json_response(
                404, {"error": f"unknown prefix /{prefix}", "prefixes": [f"/{p}" for p in self.apps]}
            )
        if req.path.startswith("/_files/") and method in ("GET", "HEAD"):
            return files.serve(self.store, app.name, req.path.removeprefix("/_files/"), self)
        return app.dispatch(req)


def _latency_pair(latency: tuple[float, float] | float) -> tuple[float, float]:
    low, high = (latency, latency) if isinstance(latency, int | float) else latency
    low, high = float(low), float(high)
    if low < 0 or high < low:
        raise ValueError(f"bad latency {latency!r}: need 0 <= min <= max")
    return low, high


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # bench submits hundreds of jobs at once

    def __init__(self, sandbox: Sandbox) -> None:
        if ":" in sandbox.host:
            self.address_family = socket.AF_INET6
        self.sandbox = sandbox
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__((sandbox.host, sandbox._requested_port), _Handler)

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            (self._connections.add if alive else self._connections.discard)(conn)

    def close_connections(self) -> None:
        # Keep-alive connections outlive shutdown(); close them so clients see the stop at once.
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "FluxWebSandbox/1.0"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def _serve(self) -> None:
        sandbox = self.server.sandbox
        try:
            body = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            self._write(json_response(413 if "large" in str(exc) else 400, {"error": str(exc)}))
            return
        try:
            response = sandbox.handle(self.command, self.path, Headers(self.headers.items()), body)
        except Exception as exc:  # a sandbox bug: say so loudly rather than hang the client
            traceback.print_exc(file=sys.stderr)
            response = json_response(500, {"error": f"sandbox bug: {exc!r}"})
        if response.hang:
            sandbox.wait(sandbox.options["hang_seconds"])
            self.close_connection = True  # never answer
            return
        self._write(response)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise ValueError("request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ValueError("bad Content-Length") from None
        if length > MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _write(self, response: Response) -> None:
        length = response.length if response.stream is not None else len(response.body)
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.command == "HEAD":
                return
            if response.stream is not None:
                for chunk in response.stream:
                    self.wfile.write(chunk)
            else:
                self.wfile.write(response.body)
            if response.close:
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. a download size cap): fine
