"""Personas, the provider sandbox on loopback, provider accounts pointed at it, and ways to run the engine:
`drain` runs queued tasks in this process; `worker` starts a real `qcluster` on the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from generations import credits, engine
from generations.models import ProviderAccount
from generations.providers import http as provider_http
from generations.providers.base import Reply
from generations.providers.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
KEYS = {
    "apiframe": "afk_test_key_1234",
    "vtrix": "vtrix_test_key",
    "pixeldojo": "pd_test_key",
    "maxapi": "sk-test-key",
}


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_superuser("alice", "alice@example.com", "pw-alice-123")


@pytest.fixture
def bob(django_user_model):
    user = django_user_model.objects.create_user("bob", "bob@example.com", "pw-bob-123")
    credits.grant(user, 1000, note="test credits")
    return user


@pytest.fixture
def carol(django_user_model):
    return django_user_model.objects.create_user("carol", "carol@example.com", "pw-carol-123")


@pytest.fixture
def vera(django_user_model):
    """A viewer with credits on her account: whatever she tries, none may be spent."""
    from accounts.access import set_role

    user = django_user_model.objects.create_user("vera", "vera@example.com", "pw-vera-123")
    set_role(user, "viewer")
    credits.grant(user, 1000, note="test credits")
    return user


@pytest.fixture(scope="session")
def sandbox():
    box = Sandbox(latency=(0.2, 0.3)).start()
    yield box
    box.stop()


@pytest.fixture
def fresh_sandbox(sandbox):
    sandbox.reset()
    sandbox.set_latency(0.2, 0.3)
    yield sandbox
    sandbox.reset()


@pytest.fixture
def accounts(db, fresh_sandbox) -> dict[str, ProviderAccount]:
    """One account of every kind, each pointed at its prefix on the sandbox."""
    made = {}
    for priority, kind in enumerate(["apiframe", "vtrix", "pixeldojo", "maxapi"]):
        account = ProviderAccount(
            slug=f"sb-{kind}", kind=kind, base_url=f"{fresh_sandbox.url}/{kind}", priority=priority
        )
        account.set_api_key(KEYS[kind])
        account.save()
        made[kind] = account
    return made


@pytest.fixture
def drain(monkeypatch):
    """Capture enqueued tasks and run them here, in order, until none are left."""
    from generations import tasks

    queue: list[tuple[str, tuple]] = []
    monkeypatch.setattr(engine, "enqueue", lambda name, *args: queue.append((name, args)))

    def flush_on_commit() -> None:
        # The test runs inside a transaction that never commits: run what would run on commit.
        while connection.run_on_commit:
            _, callback, _ = connection.run_on_commit.pop(0)
            callback()

    def run(max_tasks: int = 200) -> list[str]:
        ran = []
        flush_on_commit()
        while queue and len(ran) < max_tasks:
            name, args = queue.pop(0)
            getattr(tasks, name)(*args)
            ran.append(name)
            flush_on_commit()
        return ran

    run.queue = queue
    return run


def services_required() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def worker(transactional_db, tmp_path):
    """A real django-q2 cluster in a subprocess, on this test's database and broker."""
    db = connection.settings_dict
    env = dict(os.environ)
    if connection.vendor == "sqlite":
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env["FLUXWEB_Q_NAME"] = settings.Q_CLUSTER["name"]
    env["FLUXWEB_DATA_DIR"] = str(settings.DATA_DIR)
    log = open(tmp_path / "qcluster.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "qcluster"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    time.sleep(0.5)
    yield process
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def mock_http():
    """Route provider calls through `httpx.MockTransport(handler)` for one adapter's edge cases."""

    def install(handler):
        provider_http.use_transport(httpx.MockTransport(handler))

    yield install
    provider_http.use_transport(None)


def saved_files(count: int) -> list:
    """`count` result files written to storage, as the ingest hands them to `engine.finish`."""
    import io

    from PIL import Image as PILImage

    from generations import media

    out = io.BytesIO()
    PILImage.new("RGB", (8, 8), "teal").save(out, "PNG")
    checked = media.check_image(out.getvalue())
    return [media.save_files(index, checked, {"prompt": "test"}) for index in range(count)]


def make_job(user, account, prompt: str = "a lighthouse at dusk", **fields):
    """A Generation row as the tests need it (any status, no hold, no task): for pages, lists and files."""
    from generations.models import Generation, Prompt

    return Generation.objects.create(
        user=user, prompt=Prompt.remember(prompt, user), model="flux-2-max", account=account, **fields
    )


def row_image(generation, index: int = 0, **fields):
    """An Image row for `generation` with no file behind it: for queries, lists and permissions."""
    from generations.models import Image

    return Image.objects.create(
        generation=generation,
        index=index,
        file="images/x.png",
        thumbnail="images/x_t.jpg",
        width=8,
        height=8,
        format="png",
        bytes=1,
        **fields,
    )


def reply(status: int, body, headers=None) -> Reply:
    """A provider reply from a dict, a string or raw bytes."""
    raw = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    return Reply(status, headers or {}, raw)


def password_logs_in(username: str, password: str) -> bool:
    """Whether these credentials sign in, asked the way the login form asks: with a request, which
    django-axes needs to count failures per address (the test client's login() passes none)."""
    from django.contrib.auth import authenticate
    from django.test import RequestFactory

    return authenticate(RequestFactory().post("/login/"), username=username, password=password) is not None
