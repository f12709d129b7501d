"""Apiframe's signed webhooks: a per-job unguessable URL, the signature over the raw body, and the body
trusted for nothing but "poll this job now" (reliability.md 3, test plan 19-21)."""

import hashlib
import hmac
import json
import socket
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from generations import engine, sweeper
from generations.models import Generation, Prompt
from generations.providers import GenerationRequest
from generations.providers.sandbox import apiframe_signature

from .conftest import KEYS, wait_for

KEY = KEYS["apiframe"]


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything resolves a name or opens a connection."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network use: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def running(bob, accounts, drain, fresh_sandbox) -> Generation:
    """An Apiframe job the sandbox is still making (30 s) whose next poll is a minute away (`drain`
    captures what gets enqueued)."""
    fresh_sandbox.set_latency(30, 30)
    generation, _ = engine.create(
        bob, GenerationRequest(prompt="a lighthouse", model="flux-2-max"), provider="sb-apiframe"
    )
    engine.submit(generation.pk)
    drain.queue.clear()  # the create queued its submit, run by hand above
    Generation.objects.filter(pk=generation.pk).update(next_poll_at=timezone.now() + timedelta(seconds=60))
    generation.refresh_from_db()
    assert generation.status == "running"
    return generation


def polls_of(sandbox, generation: Generation) -> list:
    return [
        r
        for r in sandbox.requests
        if r.method == "GET" and r.path == f"/v2/jobs/{generation.provider_job_id}"
    ]


def event(job_id: str = "5f0c1c1e-0000-4000-8000-000000000001", **fields) -> bytes:
    payload = {
        "event": "completed",
        "jobId": job_id,
        "status": "COMPLETED",
        "progress": 100,
        "result": {"images": ["https://cdn.apiframe.ai/images/x-1.png"]},
    } | fields
    return json.dumps(payload, separators=(",", ":")).encode()


def deliver(client: Client, generation: Generation, raw: bytes, signature: str | None = None, **extra):
    headers = {} if signature is None else {"HTTP_X_WEBHOOK_SIGNATURE": signature}
    return client.post(
        f"/hooks/{generation.webhook_token}", raw, content_type="application/json", **headers, **extra
    )


def writes(queries) -> list[str]:
    return [
        q["sql"]
        for q in queries
        if not q["sql"].lstrip().upper().startswith(("SELECT", "SAVEPOINT", "RELEASE"))
    ]


def test_it_gives_every_job_its_own_unguessable_url(running, settings):
    settings.SITE_URL = "https://fluxweb.example"
    token = running.webhook_token
    assert len(token) >= 40  # secrets.token_urlsafe(): 32 random bytes
    assert engine.webhook_url(running) == f"https://fluxweb.example/hooks/{token}"
    other = Generation.objects.create(
        user=running.user, prompt=running.prompt, model="flux-2-max", account=running.account
    )
    assert other.webhook_token != token


@pytest.mark.parametrize("form", ["prefixed", "bare hex", "upper-case hex"])
def test_it_polls_at_once_on_a_valid_signature(client, running, drain, form, fresh_sandbox):
    raw = event()
    signature = apiframe_signature(KEY, raw)
    signature = {
        "prefixed": signature,
        "bare hex": signature.removeprefix("sha256="),
        "upper-case hex": "sha256=" + signature.removeprefix("sha256=").upper(),
    }[form]
    before = timezone.now()

    response = deliver(client, running, raw, signature)

    assert response.status_code == 204
    assert len(polls_of(fresh_sandbox, running)) == 1  # asked the provider at once, with our own key
    running.refresh_from_db()
    assert running.status == "running"  # the sandbox says it is still working, whatever the body says
    assert (
        before < running.next_poll_at < timezone.now() + timedelta(seconds=30)
    )  # not a minute away any more
    assert [e.what for e in running.events.all()][-1] == "webhook"
    assert ("sweep", ()) in drain.queue


def test_it_trusts_nothing_in_the_body(client, running, drain, fresh_sandbox):
    # A correctly signed but hostile body: a foreign image URL, a success it did not earn, another job's id.
    raw = event(
        job_id="00000000-0000-4000-8000-00000000dead",
        result={"images": ["http://169.254.169.254/latest/meta-data/iam.png"]},
        creditCost=99999,
    )

    response = deliver(client, running, raw, apiframe_signature(KEY, raw))

    assert response.status_code == 204
    running.refresh_from_db()
    assert running.status == "running"
    assert running.image_urls == []
    assert running.provider_done_at is None and running.provider_cost == ""
    assert not running.images.exists()
    # One poll of our own job through our own API key, nothing else: not the body's job, not its URL.
    assert len(polls_of(fresh_sandbox, running)) == 1
    assert not [r for r in fresh_sandbox.requests if "dead" in r.path]
    assert "ingest" not in [name for name, _ in drain.queue]
    assert list(running.ledger.values_list("kind", flat=True)) == ["reserve"]


@pytest.mark.parametrize(
    "case",
    [
        "tampered body",
        "re-serialized body",
        "wrong key",
        "missing header",
        "empty header",
        "prefix only",
        "sha1 prefix",
        "not hex",
        "another account's key",
    ],
)
def test_it_refuses_a_bad_signature_without_writing(client, running, drain, case):
    raw = event()
    good = apiframe_signature(KEY, raw)
    sent, signature = raw, good
    if case == "tampered body":
        sent = raw.replace(b"COMPLETED", b"FAILED")
    elif case == "re-serialized body":
        sent = json.dumps(json.loads(raw), indent=1).encode()
    elif case == "wrong key":
        signature = apiframe_signature("afk_some_other_key", raw)
    elif case == "missing header":
        signature = None
    elif case == "empty header":
        signature = ""
    elif case == "prefix only":
        signature = "sha256="
    elif case == "sha1 prefix":
        signature = "sha1=" + hmac.new(hashlib.sha256(KEY.encode()).digest(), raw, hashlib.sha1).hexdigest()
    elif case == "not hex":
        signature = "sha256=" + "zz" * 32
    elif case == "another account's key":
        signature = apiframe_signature(KEYS["vtrix"], raw)
    poll_at = running.next_poll_at

    with CaptureQueriesContext(connection) as queries:
        response = deliver(client, running, sent, signature)

    assert response.status_code == 401
    assert writes(queries.captured_queries) == []
    running.refresh_from_db()
    assert running.next_poll_at == poll_at
    assert not running.events.filter(what="webhook").exists()
    assert drain.queue == []


def test_it_answers_404_for_an_unknown_token(client, running, drain):
    raw = event()
    response = client.post(
        "/hooks/not-a-token-we-gave-out",
        raw,
        content_type="application/json",
        HTTP_X_WEBHOOK_SIGNATURE=apiframe_signature(KEY, raw),
    )
    assert response.status_code == 404
    assert drain.queue == []


def test_it_refuses_a_body_over_one_megabyte_before_looking_anything_up(client, running, drain):
    raw = b'{"pad":"' + b"x" * (1024 * 1024) + b'"}'
    with CaptureQueriesContext(connection) as queries:
        response = deliver(client, running, raw, apiframe_signature(KEY, raw))
    assert response.status_code == 413
    assert queries.captured_queries == []
    assert drain.queue == []


def test_it_refuses_a_malformed_content_length(client, running, drain):
    raw = event()
    response = deliver(client, running, raw, apiframe_signature(KEY, raw), CONTENT_LENGTH="12x")
    assert response.status_code == 400
    assert drain.queue == []


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_it_accepts_only_post(client, running, method):
    assert getattr(client, method)(f"/hooks/{running.webhook_token}").status_code == 405


def test_it_ignores_a_webhook_for_a_finished_job(client, running, drain):
    Generation.objects.filter(pk=running.pk).update(status="succeeded", next_poll_at=None)
    raw = event()
    response = deliver(client, running, raw, apiframe_signature(KEY, raw))
    assert response.status_code == 204
    assert not running.events.filter(what="webhook").exists()
    assert drain.queue == []


def test_it_refuses_webhooks_for_providers_that_sign_nothing(client, bob, accounts, drain):
    # Only Apiframe sends webhooks; a job at another provider has no valid signature to offer.
    job = Generation.objects.create(
        user=bob,
        prompt=Prompt.remember("x", bob),
        model="flux-2-max",
        account=accounts["vtrix"],
        status="running",
        next_poll_at=timezone.now(),
    )
    raw = event()
    assert deliver(client, job, raw, apiframe_signature(KEYS["vtrix"], raw)).status_code == 401


def test_it_needs_no_csrf_token(running):
    raw = event()
    response = deliver(Client(enforce_csrf_checks=True), running, raw, apiframe_signature(KEY, raw))
    assert response.status_code == 204


def test_it_exempts_only_the_webhook_from_csrf():
    """Every other csrf_exempt view is the JSON API, which checks CSRF itself for session callers
    (test_api.py); no browser view is exempt."""

    def walk(patterns, prefix=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                yield prefix + str(pattern.pattern), pattern

    exempt = {
        route: pattern.name
        for route, pattern in walk(get_resolver().url_patterns)
        if getattr(pattern.callback, "csrf_exempt", False)
    }
    assert "webhook" in exempt.values()
    assert {route for route, name in exempt.items() if name != "webhook"} <= {
        route for route in exempt if route.startswith("api/v1/")
    }


# -- end to end: the sandbox's real delivery over loopback --------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_it_finishes_a_job_sooner_when_the_webhook_arrives(
    bob, accounts, fresh_sandbox, live_server, settings, monkeypatch
):
    settings.SITE_URL = live_server.url
    queued = []
    monkeypatch.setattr(engine, "enqueue", lambda name, *args: queued.append((name, args)))
    account = accounts["apiframe"]
    # History says this account takes a minute, so polling alone would first look ~60 s after submit.
    long_ago = timezone.now() - timedelta(hours=1)
    for _ in range(3):
        Generation.objects.create(
            user=bob,
            prompt=Prompt.remember("history", bob),
            model="flux-2-max",
            account=account,
            status="succeeded",
            started_at=long_ago,
            provider_done_at=long_ago + timedelta(seconds=60),
        )
    fresh_sandbox.set_latency(1.0, 1.0)
    generation, _ = engine.create(
        bob, GenerationRequest(prompt="a lighthouse", model="flux-2-max"), provider="sb-apiframe"
    )

    engine.submit(generation.pk)
    generation.refresh_from_db()
    assert generation.status == "running"
    first_poll_in = (generation.next_poll_at - generation.started_at).total_seconds()
    assert first_poll_in > 30

    wait_for(lambda: generation.events.filter(what="webhook").exists(), timeout=15)
    sweeper.sweep(seconds=5)
    assert ("ingest", (generation.pk,)) in queued
    engine.ingest(generation.pk)

    generation.refresh_from_db()
    assert generation.status == "succeeded", generation.error_message
    assert (generation.finished_at - generation.started_at).total_seconds() < first_poll_in
    assert [e.what for e in generation.events.all()] == [
        "created",
        "submitted",
        "webhook",
        "provider done",
        "succeeded",
    ]
    [delivery] = [d for d in fresh_sandbox.deliveries if d["job"] == generation.provider_job_id]
    assert delivery["delivered"] and delivery["status"] == 204
    assert delivery["url"] == f"{live_server.url}/hooks/{generation.webhook_token}"
    assert sorted(generation.ledger.values_list("kind", "amount")) == [("reserve", 70), ("settle", 70)]
