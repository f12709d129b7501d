"""Outgoing webhooks: a timer thread, a loopback-only guard, Apiframe's and BFL's signatures.

The sandbox never opens a socket to anything but loopback: a webhook URL naming any other host is
refused before connecting and recorded as failed.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import http.client
import ipaddress
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit


def is_loopback_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8 and ::1
    except ValueError:
        return False


def apiframe_signature(api_key: str, body: bytes) -> str:
    # [A8 webhooks.ts] signing secret = SHA-256(api key) as the RAW 32-byte digest, then HMAC-SHA256 over
    # the raw body; header value `sha256=<hex>`.
    secret = hashlib.sha256(api_key.encode()).digest()
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def bfl_signature(secret: str, body: bytes) -> str:
    # [B1 webhook-integration.md] X-BFL-Signature: sha256=<hex HMAC-SHA256(webhook_secret, raw body)>.
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int | None:
    """POST to a loopback URL; the HTTP status, or None when refused or unreachable."""
    if not is_loopback_url(url):
        return None
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    conn = cls(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class Scheduler:
    """Runs callables at monotonic times: one timer thread, a small pool to do the work."""

    def __init__(self, workers: int = 8) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox-webhook")
        self._thread = threading.Thread(target=self._loop, name="sandbox-scheduler", daemon=True)
        self._thread.start()

    def at(self, when: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._counter), fn))
            self._cond.notify()

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=2)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic())
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                self._pool.submit(fn)
            except RuntimeError:  # pool shut down while stopping
                return
