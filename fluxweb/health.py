"""`/healthz` for load balancers and `manage.py status` for people: the database, the task broker, the
sweeper's heartbeat and, where the engine keeps them, the provider circuits. 200 when FluxWeb can take and
finish work, 503 when it cannot; never a secret (a failure is named by its exception class, no URL or key).

The sweeper holds a lease it renews every LEASE_SECONDS / 3 while jobs are in flight: its last renewal is
the heartbeat. With jobs in flight and no heartbeat for STALE_SECONDS, no worker is polling them."""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

STALE_SECONDS = 120


def check_database() -> dict:
    started = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as error:
        return {"ok": False, "error": type(error).__name__}
    return {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}


def check_broker() -> dict:
    from django_q.brokers import get_broker

    kind = "redis" if "redis" in settings.Q_CLUSTER else "orm"
    try:
        broker = get_broker()
        if not broker.ping():
            return {"ok": False, "kind": kind, "error": "no answer"}
        queued = broker.queue_size()
    except Exception as error:
        return {"ok": False, "kind": kind, "error": type(error).__name__}
    return {"ok": True, "kind": kind, "queued": queued}


def check_sweeper(now=None) -> dict:
    from generations import sweeper
    from generations.models import Generation, Lease

    now = now or timezone.now()
    try:
        in_flight = Generation.objects.in_flight().count()
        lease = Lease.objects.filter(name="sweeper").first()
    except Exception as error:
        return {"ok": False, "error": type(error).__name__}
    age = None
    if lease is not None:
        # A held lease was renewed LEASE_SECONDS before it expires; a released one at its expiry.
        beat = (
            lease.expires_at - timedelta(seconds=sweeper.LEASE_SECONDS)
            if lease.expires_at > now
            else lease.expires_at
        )
        age = max(0.0, round((now - beat).total_seconds(), 1))
    stalled = in_flight > 0 and (age is None or age > STALE_SECONDS)
    return {"ok": not stalled, "heartbeat_age": age, "in_flight": in_flight}


def check_providers() -> dict | None:
    """The engine's circuit breakers, where it keeps them: reported, never a reason for a 503 (a provider's
    outage is not this server's, and a load balancer must not take every web process out for it)."""
    from generations import engine

    states = getattr(engine, "circuit_states", None)
    if not callable(states):
        return None
    try:
        return {str(slug): str(state) for slug, state in dict(states()).items()}
    except Exception as error:
        return {"error": type(error).__name__}


def report() -> dict:
    checks = {"database": check_database(), "broker": check_broker(), "sweeper": check_sweeper()}
    providers = check_providers()
    if providers is not None:
        checks["providers"] = providers
    healthy = all(check.get("ok") for name, check in checks.items() if name != "providers")
    return {"status": "ok" if healthy else "fail", "checks": checks}


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    body = report()
    return JsonResponse(body, status=200 if body["status"] == "ok" else 503)
