"""Health and observability (issue 10, item 6): /healthz for load balancers, `manage.py status` for people,
and JSON log lines carrying the generation id."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import OperationalError
from django.utils import timezone

from fluxweb import health, logs
from generations import engine, sweeper
from generations.models import Generation, Lease, Prompt

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def running_job(bob, accounts) -> Generation:
    return Generation.objects.create(
        user=bob,
        prompt=Prompt.remember("a lighthouse", bob),
        model="flux-2-max",
        account=accounts["apiframe"],
        status="running",
        provider_job_id="job-1",
    )


def beat(seconds_ago: float) -> None:
    """The sweeper's lease as renewed `seconds_ago`."""
    renewed = timezone.now() - timedelta(seconds=seconds_ago)
    Lease.objects.update_or_create(
        name="sweeper",
        defaults={"holder": "w1", "expires_at": renewed + timedelta(seconds=sweeper.LEASE_SECONDS)},
    )


def test_it_answers_200_to_anyone_when_healthy(client, db):
    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert body["checks"]["sweeper"] == {"ok": True, "heartbeat_age": None, "in_flight": 0}
    assert response["Cache-Control"].startswith("max-age=0")


def test_it_names_no_secret(client, db):
    text = client.get("/healthz").content.decode()
    for secret in (django_settings.SECRET_KEY, *django_settings.FERNET_KEYS, str(django_settings.DATA_DIR)):
        assert secret not in text


def test_it_reports_the_sweeper_heartbeat_while_jobs_are_in_flight(client, running_job):
    beat(seconds_ago=5)
    check = client.get("/healthz").json()["checks"]["sweeper"]
    assert check["ok"] and check["in_flight"] == 1 and 4 <= check["heartbeat_age"] <= 10


@pytest.mark.parametrize("lease", ["stale", "none"])
def test_it_answers_503_when_no_worker_polls_jobs_in_flight(client, running_job, lease):
    if lease == "stale":
        beat(seconds_ago=health.STALE_SECONDS + sweeper.LEASE_SECONDS + 10)

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["status"] == "fail" and not response.json()["checks"]["sweeper"]["ok"]


def test_it_answers_503_when_the_database_is_down(client, db, monkeypatch):
    def broken():
        raise OperationalError("could not connect to server at db.internal:5432 password=hunter2")

    with monkeypatch.context() as patched:  # undone before the test database is rolled back
        patched.setattr(health.connection, "cursor", broken)
        response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["checks"]["database"] == {"ok": False, "error": "OperationalError"}
    assert "hunter2" not in response.content.decode()


def test_it_reports_provider_circuits_without_failing_for_them(client, db, monkeypatch):
    monkeypatch.setattr(engine, "circuit_states", lambda: {"sb-apiframe": "open"}, raising=False)
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["checks"]["providers"] == {"sb-apiframe": "open"}


def test_a_load_balancer_probing_over_http_is_not_redirected(client, db, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz").status_code == 200
    assert client.get("/login/").status_code == 301


def test_status_prints_the_same_as_a_table(db, monkeypatch):
    monkeypatch.setattr(engine, "circuit_states", lambda: {"sb-vtrix": "closed"}, raising=False)
    out = StringIO()
    call_command("status", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["check", "state", "detail"]
    assert [line.split()[:2] for line in lines[1:4]] == [
        ["database", "ok"],
        ["broker", "ok"],
        ["sweeper", "ok"],
    ]
    assert "provider sb-vtrix  closed" in out.getvalue()
    assert lines[-1] == "overall: ok"


def test_status_fails_when_unhealthy(running_job):
    out = StringIO()
    with pytest.raises(CommandError, match="not healthy"):
        call_command("status", stdout=out)
    assert "sweeper   FAIL" in out.getvalue()


# -- JSON logs --------------------------------------------------------------------------------------------------
def json_line(record: logging.LogRecord) -> dict:
    logs.GenerationFilter().filter(record)
    return json.loads(logs.JsonFormatter().format(record))


def record(msg: str, *args, **extra) -> logging.LogRecord:
    made = logging.LogRecord("generations.engine", logging.WARNING, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_a_json_line_carries_the_generation_it_names():
    line = json_line(record("generation %s: its submit was never taken; queued again", 42))
    assert (
        line["generation_id"] == 42 and line["level"] == "WARNING" and line["logger"] == "generations.engine"
    )
    assert line["message"] == "generation 42: its submit was never taken; queued again"


def test_a_json_line_carries_the_generation_of_the_task_running():
    logs.task_started("django_q", "generations.tasks.ingest", {"args": (7,)})
    try:
        assert json_line(record("download failed"))["generation_id"] == 7
        assert json_line(record("explicit", generation_id=9))["generation_id"] == 9
    finally:
        logs.task_started("django_q", "generations.tasks.sweep", {"args": ()})
    assert json_line(record("a sweep"))["generation_id"] is None


def test_the_json_format_is_one_object_per_line_from_the_settings(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "fluxweb.settings",
        "DJANGO_SECRET_KEY": "s" * 50,
        "FLUXWEB_FERNET_KEYS": Fernet.generate_key().decode(),
        "FLUXWEB_DATA_DIR": str(tmp_path),
        "FLUXWEB_LOG_FORMAT": "json",
    }
    code = (
        "import django, logging; django.setup();"
        "logging.getLogger('generations.engine').warning('generation %s: could not record its poll\\nline two', 5)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    [line] = result.stderr.splitlines()
    entry = json.loads(line)
    assert entry["generation_id"] == 5 and entry["message"].endswith("line two")
