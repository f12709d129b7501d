"""What the lifecycle and error tests share: provider accounts pointed at an emulator, a JSON API client with
a Bearer token, and a time-boxed way to run the engine's queued tasks."""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

from django.test import Client

from generations import cadence, sweeper
from generations.models import ApiToken, Generation, ProviderAccount

from .base import Emulator


def account_for(kind: str, emulator: Emulator, slug: str | None = None) -> ProviderAccount:
    account = ProviderAccount(slug=slug or f"emu-{kind}", kind=kind, base_url=emulator.url, priority=50)
    account.set_api_key(emulator.api_key)
    account.save()
    return account


class Api:
    """FluxWeb's JSON API as a client sees it: `Authorization: Bearer <token>`."""

    def __init__(self, user):
        _, token = ApiToken.issue(user)
        self.client = Client()
        self.auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}

    def create(self, headers: dict | None = None, **body) -> tuple[int, dict]:
        response = self.client.post(
            "/api/v1/generations",
            json.dumps(body),
            content_type="application/json",
            **self.auth,
            **(headers or {}),
        )
        return response.status_code, response.json()

    def generation(self, pk: int) -> dict:
        response = self.client.get(f"/api/v1/generations/{pk}", **self.auth)
        assert response.status_code == 200, response.content
        return response.json()

    def me(self) -> dict:
        return self.client.get("/api/v1/me", **self.auth).json()

    def file(self, image: dict) -> bytes:
        response = self.client.get(urlsplit(image["url"]).path, **self.auth)
        assert response.status_code == 200
        return b"".join(response.streaming_content)


def fast_engine(monkeypatch, sweep_slice: float = 0.3, first_poll: float = 0.1) -> None:
    """Test pacing, not behaviour: the first poll comes `first_poll` s after submit, and the sweeper works
    in short slices so a job that never ends fails an assertion instead of sleeping 50 s."""
    from generations import tasks

    monkeypatch.setattr(cadence, "first_poll_delay", lambda account: first_poll)
    monkeypatch.setattr(tasks, "sweep", lambda: sweeper.sweep(seconds=sweep_slice))


def run(drain, *pks: int, budget: float = 15.0, stop=None) -> list[str]:
    """Run queued tasks one at a time until every generation in `pks` is terminal and the queue is empty,
    nothing is left to run, `stop(ran)` is true, or `budget` seconds have passed. Returns the task names."""
    ran: list[str] = []
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        started = time.monotonic()
        step = drain(max_tasks=1)
        ran += step
        statuses = Generation.objects.filter(pk__in=pks).values_list("status", flat=True)
        if (
            (all(s in Generation.TERMINAL for s in statuses) and not drain.queue)
            or not step
            or (stop and stop(ran))
        ):
            break
        if step == ["sweep"] and time.monotonic() - started < 0.01:
            time.sleep(0.05)  # a sweep slice that found nothing due before its end: don't spin
    return ran
