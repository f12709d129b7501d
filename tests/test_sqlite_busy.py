"""SQLite under a small team's load (issue 10, bug 4: under 30 concurrent clients 2 creates and 2 webhooks
answered 500 "database is locked"). Many clients hit the live server while another process keeps taking
SQLite's one write lock; the app's busy timeout is cut so the lock outlasts it often: no request may answer
500, and those safe to repeat succeed."""

from __future__ import annotations

import collections
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from django.db import OperationalError, connection, connections
from django.test import RequestFactory

from fluxweb import middleware
from generations import credits, engine
from generations.models import ApiToken, Generation

CLIENTS = 30
SECONDS = 4
# PostgreSQL waits on row locks: it never answers "database is locked".
pytestmark = pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's one write lock")


def send(url: str, token: str, body: dict | None = None, **headers: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


@pytest.fixture
def short_busy_timeout():
    """New connections (one per live-server request thread) give up on the lock after 0.5 s, not 20 s."""
    options = connections.settings["default"]["OPTIONS"]
    before = options["timeout"]
    options["timeout"] = 0.5
    yield
    options["timeout"] = before


def hold_the_write_lock(path: str, stop: threading.Event) -> None:
    """Another process's writer (a worker's long write): the lock taken for 300 ms at a time, free for 200."""
    other = sqlite3.connect(path, timeout=30, isolation_level=None)
    while not stop.is_set():
        other.execute("BEGIN IMMEDIATE")
        time.sleep(0.3)
        other.execute("COMMIT")
        time.sleep(0.2)
    other.close()


@pytest.mark.slow
def test_thirty_clients_get_no_500_while_the_write_lock_is_contended(
    transactional_db, live_server, bob, accounts, monkeypatch, short_busy_timeout
):
    monkeypatch.setattr(engine, "enqueue", lambda *args: None)  # no worker: the web side alone
    credits.grant(bob, 10_000_000)
    from generations.models import Quota

    Quota.objects.update_or_create(
        user=bob, defaults={"concurrent": 10_000, "daily_images": 100_000, "monthly_credits": 10**9}
    )
    # A token's first use records it: a write on every client's first request.
    tokens = [ApiToken.issue(bob)[1] for _ in range(CLIENTS)]
    stop = threading.Event()
    blocker = threading.Thread(target=hold_the_write_lock, args=(connection.settings_dict["NAME"], stop))
    codes: collections.Counter = collections.Counter()
    refused: list[tuple[int, str, dict]] = []  # keyed creates answered 503: sent again once the lock is free
    lock = threading.Lock()

    def client(n: int) -> None:
        end = time.monotonic() + SECONDS
        i = 0
        while time.monotonic() < end:
            i += 1
            body = {"prompt": f"client {n} job {i}", "model": "flux-2-max", "provider": "sb-apiframe"}
            key = f"{n}-{i}"
            keyed, keyed_headers = send(
                f"{live_server.url}/api/v1/generations", tokens[n], body, **{"Idempotency-Key": key}
            )
            plain, plain_headers = send(
                f"{live_server.url}/api/v1/generations", tokens[n], body | {"prompt": f"plain {n} {i}"}
            )
            me, _ = send(f"{live_server.url}/api/v1/me", tokens[n])
            with lock:
                codes["keyed", keyed] += 1
                codes["plain", plain] += 1
                codes["me", me] += 1
                for code, headers in ((keyed, keyed_headers), (plain, plain_headers)):
                    if code == 503:
                        codes["503 with Retry-After"] += headers.get("Retry-After") == "2"
                if keyed == 503:
                    refused.append((n, key, body))

    blocker.start()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    blocker.join()

    assert not [key for key in codes if isinstance(key, tuple) and key[1] >= 500 and key[1] != 503], codes
    busy = sum(count for key, count in codes.items() if isinstance(key, tuple) and key[1] == 503)
    assert codes["503 with Retry-After"] == busy, codes  # a busy answer always says when to come back
    # How many answers were 503 depends on the machine's load (on a quiet machine under 5 %; with the suite's
    # other worker on the same two cores, most of the first burst of 30 creates): the claim is that a 503
    # is honest. No job exists for a create that answered 503 ...
    created = codes["keyed", 202] + codes["plain", 202]
    assert created > 0, codes
    assert Generation.objects.filter(user=bob).count() == created, codes
    # ... and the same keyed request sent again once the lock is free makes its job, exactly once.
    for n, key, body in refused:
        assert (
            send(f"{live_server.url}/api/v1/generations", tokens[n], body, **{"Idempotency-Key": key})[0]
            == 202
        )
        assert (
            send(f"{live_server.url}/api/v1/generations", tokens[n], body, **{"Idempotency-Key": key})[0]
            == 202
        )
    assert Generation.objects.filter(user=bob).count() == created + len(refused), codes
    # Reads repeat until they get through: a GET is safe to run again.
    assert codes["me", 200] >= CLIENTS, codes


def test_a_webhook_is_run_again_when_the_database_stays_locked(monkeypatch):
    monkeypatch.setattr(middleware.time, "sleep", lambda seconds: None)
    calls = []

    def view(request, token):
        calls.append(token)
        if len(calls) < 3:
            raise OperationalError("database is locked")
        return middleware.HttpResponse(status=204)

    request = RequestFactory().post("/hooks/abc")
    request.resolver_match = SimpleNamespace(func=view, args=(), kwargs={"token": "abc"}, url_name="webhook")
    busy = middleware.DatabaseBusyMiddleware(lambda r: None)

    response = busy.process_exception(request, OperationalError("database is locked"))

    assert response.status_code == 204 and calls == ["abc", "abc", "abc"]


def test_a_request_unsafe_to_repeat_answers_503_not_500(monkeypatch):
    request = RequestFactory().post("/generate")
    request.resolver_match = SimpleNamespace(func=None, args=(), kwargs={}, url_name="generate")
    response = middleware.DatabaseBusyMiddleware(lambda r: None).process_exception(
        request, OperationalError("database is locked")
    )
    assert response.status_code == 503 and response["Retry-After"] == "2"
