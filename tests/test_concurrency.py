"""Credits and quotas under concurrent creates: real HTTP requests to a live server, each in its own
thread, connection and database transaction, released together by a barrier. Runs on SQLite (WAL,
IMMEDIATE transactions) and on PostgreSQL (row locks); no provider work starts."""

import threading
import time
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest
import time_machine
from django.db import connection

from generations import credits, engine
from generations.models import ApiToken, CreditAccount, Generation, LedgerEntry, Price, Quota, Usage

BODY = {"prompt": "a lighthouse at dusk", "model": "flux-2-max", "provider": "sb-apiframe"}  # 70 credits

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_submit(monkeypatch, settings):
    """Creates hold credits but start no provider work; personas hash their passwords quickly."""
    monkeypatch.setattr(engine, "enqueue", lambda *args: None)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def post_together(base_url: str, token: str, count: int, body: dict = BODY) -> list[tuple[int | None, dict]]:
    """POST `body` `count` times at once, each from its own thread and connection."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def one(i: int) -> None:
        try:
            with httpx.Client(
                base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as http:
                http.get("/api/v1/models")  # connect first, so the posts really start together
                barrier.wait()
                response = http.post("/api/v1/generations", json=body)
                results[i] = (response.status_code, response.json())
        except Exception as exc:  # reported by the caller's asserts; a thread's exception would vanish
            results[i] = (None, {"exception": repr(exc)})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


class Sampler(threading.Thread):
    """Reads a user's credit row over its own connection, as often as it can, while the creates run."""

    def __init__(self, user):
        super().__init__()
        self.user = user
        self.samples: list[tuple[int, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                row = CreditAccount.objects.filter(user=self.user).values_list("balance", "reserved").first()
                if row:
                    self.samples.append(row)
                time.sleep(0.002)  # leave the GIL to the server threads
        finally:
            connection.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()


def test_it_makes_exactly_as_many_jobs_as_the_credits_pay_for(live_server, carol, accounts):
    credits.grant(carol, 700)  # ten jobs at 70
    _, token = ApiToken.issue(carol)
    with Sampler(carol) as sampler:
        results = post_together(live_server.url, token, 50)

    statuses = Counter(status for status, _ in results)
    assert statuses == {202: 10, 402: 40}, results
    assert {body["error"]["message"] for status, body in results if status == 402} == {
        "This costs 70 credits and you have 0 available; you are 70 short. Ask an admin for more credits."
    }
    assert len({body["id"] for status, body in results if status == 202}) == 10
    assert Generation.objects.count() == 10
    assert list(LedgerEntry.objects.filter(kind="reserve").values_list("amount", flat=True)) == [70] * 10
    account = credits.account_for(carol)
    assert (account.balance, account.reserved, account.available) == (700, 700, 0)
    assert sampler.samples
    assert all(balance == 700 and 0 <= reserved <= balance for balance, reserved in sampler.samples)
    assert credits.reconcile() == []


def test_it_keeps_the_books_while_jobs_are_created_and_canceled_at_once(live_server, carol, accounts):
    credits.grant(carol, 350)  # five jobs at 70
    _, token = ApiToken.issue(carol)
    barrier = threading.Barrier(20)
    outcomes: list = []

    def create_then_cancel() -> None:
        with httpx.Client(
            base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as http:
            http.get("/api/v1/models")
            barrier.wait()
            created = http.post("/api/v1/generations", json=BODY)
            outcomes.append(created.status_code)
            if created.status_code == 202:
                canceled = http.post(f"/api/v1/generations/{created.json()['id']}/cancel")
                outcomes.append(canceled.status_code)

    with Sampler(carol) as sampler:
        threads = [threading.Thread(target=create_then_cancel) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    # A cancel frees 70 for a later create, so at least five and at most all twenty get in.
    counts = Counter(outcomes)
    assert set(counts) <= {200, 202, 402}, outcomes
    assert counts[202] >= 5
    assert counts[200] == counts[202]
    assert Generation.objects.filter(status="canceled").count() == counts[202]
    account = credits.account_for(carol)
    assert (account.balance, account.reserved) == (350, 0)
    assert all(0 <= reserved <= balance == 350 for balance, reserved in sampler.samples)
    assert credits.reconcile() == []


def test_it_limits_the_first_requests_of_a_brand_new_user_exactly(live_server, django_user_model, accounts):
    """No usage rows and no quota row of their own (only the credit row every user gets): concurrent
    first requests still meet the team's limit of three jobs in flight (litellm#40095 is the bug this
    guards against)."""
    Quota.objects.create(user=None, concurrent=3)
    Price.objects.create(
        kind="apiframe", model="flux-2-max", tier="1MP", credits=0
    )  # free: only the quota limits
    dave = django_user_model.objects.create_user("dave", "dave@example.com", "pw-dave-123")
    _, token = ApiToken.issue(dave)
    assert CreditAccount.objects.filter(user=dave).count() == 1
    assert not Usage.objects.filter(user=dave).exists() and not Quota.objects.filter(user=dave).exists()

    results = post_together(live_server.url, token, 15)

    assert Counter(status for status, _ in results) == {202: 3, 429: 12}, results
    assert {body["error"]["code"] for status, body in results if status == 429} == {"quota_concurrent"}
    assert Generation.objects.filter(user=dave).count() == 3
    assert CreditAccount.objects.filter(user=dave).count() == 1
    assert credits.reconcile() == []


def test_it_holds_a_daily_quota_under_concurrency_across_midnight(live_server, bob, accounts):
    """Three times the daily quota at once, a second before midnight and again at midnight: each day's
    window admits exactly its five."""
    Quota.objects.create(user=None, daily_images=5)
    _, token = ApiToken.issue(bob)
    answers = []
    with time_machine.travel(datetime(2026, 3, 10, 23, 59, 59, tzinfo=UTC), tick=False) as clock:
        answers.append(Counter(status for status, _ in post_together(live_server.url, token, 15)))
        clock.move_to(datetime(2026, 3, 11, tzinfo=UTC))
        answers.append(Counter(status for status, _ in post_together(live_server.url, token, 15)))
        # Still on that night's clock: back on today's, every job would be months past its deadline.
        assert credits.reconcile() == []
    assert answers == [{202: 5, 429: 10}, {202: 5, 429: 10}]
    assert dict(Usage.objects.filter(user=bob, window__contains="-03-1").values_list("window", "images")) == {
        "2026-03-10": 5,
        "2026-03-11": 5,
    }
    assert credits.account_for(bob).reserved == 700
