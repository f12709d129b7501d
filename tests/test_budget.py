"""Issue 9.3: a request budget per provider account, shared through the database, spent on submits first
and then on the jobs likeliest done; a 429's Retry-After pauses the whole account."""

import threading
from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from generations import engine, sweeper
from generations.models import BudgetSpend, Generation, ProviderAccount, default_max_rpm
from generations.providers import Adapter, Bfl, GenerationRequest, ProviderError

from .conftest import KEYS


def request(**overrides) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "a lighthouse at dusk", "model": "flux-2-max"} | overrides))


def submitted(drain, user, slug: str, count: int) -> list[Generation]:
    """`count` jobs on `slug`, sent to the sandbox (the submit tasks only: nothing polls them yet)."""
    jobs = [engine.create(user, request(), provider=slug)[0] for _ in range(count)]
    drain(0)  # what runs on commit (a submit is queued then on the Redis broker), no task yet
    for name, args in list(drain.queue):
        if name == "submit":
            drain.queue.remove((name, args))
            engine.submit(*args)
    drain.queue.clear()
    for job in jobs:
        job.refresh_from_db()
    return jobs


def polls(sandbox, provider: str) -> list:
    return [r for r in sandbox.requests if r.provider == provider and r.method == "GET"]


def test_it_never_grants_more_than_the_budget_in_any_minute(accounts):
    account = accounts["pixeldojo"]
    account.max_rpm = 10
    account.save()
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        assert account.take_requests(6) == 6
        clock.shift(20)
        assert account.take_requests(6) == 4
        assert account.take_requests(1) == 0
        clock.shift(40)  # 60 s after the first grant: still inside the window (and its one-second margin)
        assert account.take_requests(1) == 0
        clock.shift(1.5)  # the first six have left the window; the four of t=20 s have not
        assert account.take_requests(10) == 6
        clock.shift(20)
        assert account.take_requests(10) == 4


def test_two_processes_share_one_budget(accounts):
    # Each process (or cluster) holds its own instance; the count lives in the database.
    here = ProviderAccount.objects.get(slug="sb-pixeldojo")
    there = ProviderAccount.objects.get(slug="sb-pixeldojo")
    ProviderAccount.objects.filter(pk=here.pk).update(max_rpm=5)
    assert here.take_requests(3) == 3
    assert there.take_requests(3) == 2
    assert BudgetSpend.objects.filter(account=here).count() == 2


def test_each_kind_has_a_documented_default_and_an_adapter_may_declare_its_own(accounts, monkeypatch):
    assert accounts["pixeldojo"].budget == 60  # its documented limit
    assert accounts["apiframe"].budget == accounts["vtrix"].budget == 120
    assert default_max_rpm("bfl") == Bfl.default_max_rpm
    assert default_max_rpm("gone") == Adapter.default_max_rpm == 60  # a kind no adapter serves any more
    monkeypatch.setattr(accounts["vtrix"].adapter_class, "default_max_rpm", 300, raising=False)
    assert accounts["vtrix"].budget == 300
    accounts["vtrix"].max_rpm = 7
    assert accounts["vtrix"].budget == 7


def test_the_sweeper_keeps_the_submits_share_then_polls_the_likeliest_done(bob, accounts, drain):
    """Room for 2 polls after the 2 waiting submits, 4 jobs due: the budget cannot ask them all, so it asks
    only jobs likely done, likeliest first. A job with the provider's progress was timed by it; one without
    that is not likely done yet (15 s of PixelDojo's typical 44 s) comes due when it will be."""
    account = accounts["pixeldojo"]
    running = submitted(drain, bob, "sb-pixeldojo", 4)
    now = timezone.now()
    shapes = [(0.2, 30), (None, 15), (0.9, 10), (None, 60)]  # (progress, seconds since submit)
    for job, (progress, started) in zip(running, shapes, strict=True):
        Generation.objects.filter(pk=job.pk).update(
            next_poll_at=now, progress=progress, started_at=now - timedelta(seconds=started)
        )
    queued = [engine.create(bob, request(), provider="sb-pixeldojo")[0] for _ in range(2)]
    drain.queue.clear()
    ProviderAccount.objects.filter(pk=account.pk).update(max_rpm=account.budget_spent() + 2 + 2)

    due = list(Generation.objects.due(now).select_related("account"))
    allowed = sweeper.spend_budgets(due, now)

    # Two requests left for polls after the two waiting submits: the job at 90 %, then the one at 20 %.
    assert [g.pk for g in allowed] == [running[2].pk, running[0].pk]
    not_yet = Generation.objects.get(pk=running[1].pk)
    assert abs((not_yet.next_poll_at - now).total_seconds() - (44 - 15)) < 1
    waiting = Generation.objects.get(pk=running[3].pk)
    assert waiting.next_poll_at > now  # likely done, but no room: waits for the budget, not spinning
    assert not_yet.polls == waiting.polls == 0  # and no poll was counted for either
    assert all(Generation.objects.get(pk=q.pk).status == "queued" for q in queued)


def test_a_budget_too_small_for_a_burst_spends_no_poll_before_the_jobs_are_likely_done(bob, accounts, drain):
    """40 jobs on 60 requests a minute need 80 requests (a submit and a poll each): a look at each job a
    second after its submit spent the minute's last 20 on "not yet", and every job waited a minute more."""
    account = accounts["pixeldojo"]
    running = submitted(drain, bob, "sb-pixeldojo", 6)
    ProviderAccount.objects.filter(pk=account.pk).update(max_rpm=account.budget_spent() + 3)
    now = timezone.now()
    Generation.objects.filter(pk__in=[j.pk for j in running]).update(
        next_poll_at=now, started_at=now - timedelta(seconds=1)
    )

    due = list(Generation.objects.due(now).select_related("account"))
    assert sweeper.spend_budgets(due, now) == []
    assert ProviderAccount.objects.get(pk=account.pk).budget_room(now) == 3  # nothing spent
    for job in Generation.objects.filter(pk__in=[j.pk for j in running]):
        assert abs((job.next_poll_at - now).total_seconds() - (44 - 1)) < 1

    later = now + timedelta(seconds=44)
    due = list(Generation.objects.due(later).select_related("account"))
    assert len(sweeper.spend_budgets(due, later)) == 3  # likely done now: the budget's 3, oldest first


def test_a_budget_with_room_for_every_due_job_still_looks_early(bob, accounts, drain):
    """With room to spare the cadence is unchanged: a first look a second after the submit, for progress."""
    running = submitted(drain, bob, "sb-pixeldojo", 3)
    now = timezone.now()
    Generation.objects.filter(pk__in=[j.pk for j in running]).update(
        next_poll_at=now, started_at=now - timedelta(seconds=1)
    )
    due = list(Generation.objects.due(now).select_related("account"))
    assert len(sweeper.spend_budgets(due, now)) == 3


def test_a_submit_waits_for_room_in_the_budget_without_failing(bob, accounts, drain, fresh_sandbox):
    ProviderAccount.objects.filter(slug="sb-pixeldojo").update(max_rpm=1)
    first, second = (engine.create(bob, request(), provider="sb-pixeldojo")[0] for _ in range(2))
    drain(0)
    for name, args in list(drain.queue):
        if name == "submit":
            engine.submit(*args)
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == "running"
    assert second.status == "queued"
    assert second.attempts == 0  # not counted as a try: it was never sent
    assert second.next_poll_at > timezone.now() + timedelta(seconds=50)
    assert [e.what for e in second.events.all()] == ["created", "submit waits"]
    assert len([r for r in fresh_sandbox.requests if r.method == "POST"]) == 1


def test_a_429_with_retry_after_pauses_the_whole_account(bob, accounts, drain, fresh_sandbox):
    first, second = submitted(drain, bob, "sb-apiframe", 2)
    fresh_sandbox.queue_fault("429", "apiframe", "poll")  # the sandbox sends Retry-After: 1
    before = len(polls(fresh_sandbox, "apiframe"))
    poller = sweeper.Poller(4)
    try:
        Generation.objects.filter(pk=first.pk).update(next_poll_at=timezone.now())
        sweeper.poll_batch(list(Generation.objects.due().select_related("account")), poller)
        account = ProviderAccount.objects.get(slug="sb-apiframe")
        assert account.paused_until > timezone.now() + timedelta(seconds=0.8)

        # The other job falls due 0.05 s later: nothing goes to Apiframe until the second has passed.
        Generation.objects.filter(pk=second.pk).update(next_poll_at=timezone.now())
        sweeper.poll_batch(list(Generation.objects.due().select_related("account")), poller)
    finally:
        poller.close()
    assert len(polls(fresh_sandbox, "apiframe")) == before + 1
    second.refresh_from_db()
    assert second.next_poll_at >= account.paused_until


def test_a_replayed_webhook_buys_no_more_polls_than_the_budget(bob, accounts, drain, fresh_sandbox):
    fresh_sandbox.set_latency(30, 30)  # the job stays pending while the webhook is replayed
    (job,) = submitted(drain, bob, "sb-apiframe", 1)
    account = ProviderAccount.objects.get(slug="sb-apiframe")
    ProviderAccount.objects.filter(pk=account.pk).update(max_rpm=account.budget_spent() + 3)
    before = len(polls(fresh_sandbox, "apiframe"))
    for _ in range(20):
        job.refresh_from_db()
        sweeper.webhook_hint(job)
    assert len(polls(fresh_sandbox, "apiframe")) - before == 3


def test_provider_set_takes_a_budget(accounts):
    out = StringIO()
    call_command("provider", "set", "sb-vtrix", "--max-rpm", "30", stdout=out)
    assert "30 requests/min" in out.getvalue()
    assert ProviderAccount.objects.get(slug="sb-vtrix").budget == 30
    call_command("provider", "set", "sb-vtrix", "--max-rpm", "0", stdout=StringIO())
    assert ProviderAccount.objects.get(slug="sb-vtrix").max_rpm is None  # back to the kind's default
    listed = StringIO()
    call_command("provider", "list", stdout=listed)
    assert "sb-vtrix\tvtrix" in listed.getvalue() and "120/min" in listed.getvalue()


def test_the_admin_sets_a_budget_and_sees_it(client, alice, accounts):
    client.force_login(alice)
    account = accounts["pixeldojo"]
    response = client.post(
        f"/admin/generations/provideraccount/{account.pk}/change/",
        {
            "slug": account.slug,
            "kind": account.kind,
            "base_url": account.base_url,
            "api_key": "",
            "enabled": "on",
            "priority": "2",
            "max_rpm": "45",
            "result_hosts": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    account.refresh_from_db()
    assert account.max_rpm == 45 and account.api_key == KEYS["pixeldojo"]
    page = client.get("/admin/generations/provideraccount/").content.decode()
    assert "45" in page and "120 (default)" in page


def test_an_unknown_rate_limit_error_is_not_a_health_failure(accounts):
    account = accounts["apiframe"]
    engine.record_health(
        account, [ProviderError(ProviderError.RATE_LIMITED, "slow down", retry_after=2)], 0.1
    )
    account.refresh_from_db()
    assert account.breaker_failures == 0 and account.paused_until > timezone.now()


@pytest.mark.django_db(transaction=True)
def test_concurrent_takers_never_overspend_the_budget(accounts):
    # Each thread has its own connection and transaction, as two sweepers in two clusters would.
    ProviderAccount.objects.filter(slug="sb-vtrix").update(max_rpm=20)
    barrier = threading.Barrier(8)
    granted: list[int] = []

    def take() -> None:
        try:
            account = ProviderAccount.objects.get(slug="sb-vtrix")
            barrier.wait()
            for _ in range(3):
                granted.append(account.take_requests(2))
        finally:
            connection.close()

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(granted) == 20
    assert ProviderAccount.objects.get(slug="sb-vtrix").budget_spent() == 20


def test_jobs_waiting_for_the_budget_are_queued_only_as_far_as_it_has_room(bob, accounts, drain):
    """When a spent minute frees, the submits that waited for it are due together: the sweeper queues as
    many as the budget has room for, oldest first, and moves the rest to when it frees again, instead of
    queueing them all for each to find the budget spent and wait again (a task and an event each)."""
    account = ProviderAccount.objects.get(slug="sb-pixeldojo")
    ProviderAccount.objects.filter(pk=account.pk).update(max_rpm=5)
    jobs = [engine.create(bob, request(), provider="sb-pixeldojo")[0] for _ in range(6)]
    drain(0)
    drain.queue.clear()
    now = timezone.now()
    BudgetSpend.objects.create(account=account, at=now - timedelta(seconds=30), count=3)
    Generation.objects.filter(pk__in=[j.pk for j in jobs]).update(next_poll_at=now - timedelta(seconds=1))
    for i, job in enumerate(jobs):  # an order to keep: the longest waiting first
        Generation.objects.filter(pk=job.pk).update(next_poll_at=now - timedelta(seconds=10 - i))

    assert sweeper.resubmit_due(now) == 2
    assert [args for name, args in drain.queue if name == "submit"] == [(jobs[0].pk,), (jobs[1].pk,)]
    waiting = Generation.objects.filter(pk__in=[j.pk for j in jobs[2:]])
    # When the 3 leave the budget's window (a minute and a second).
    assert {job.next_poll_at for job in waiting} == {
        now + timedelta(seconds=ProviderAccount.BUDGET_WINDOW - 30)
    }
    assert sweeper.resubmit_due(now) == 0  # nothing due again before then: the sweeper does not spin

    with time_machine.travel(now + timedelta(seconds=ProviderAccount.BUDGET_WINDOW - 29), tick=False):
        assert sweeper.resubmit_due() == 4  # the minute freed: room for 5, four wait


def test_a_job_whose_poll_waited_for_the_budget_teaches_the_cadence_nothing(bob, accounts, drain):
    """Seen done a minute late because the budget was spent, it would make the account's jobs look a minute
    long, and every next job's first poll would wait that minute too, with budget to spare."""
    from generations import cadence

    account = accounts["pixeldojo"]
    running = submitted(drain, bob, "sb-pixeldojo", 5)
    now = timezone.now()
    for job in running[:3]:  # three seen done on time, 5 s after their submit
        Generation.objects.filter(pk=job.pk).update(
            started_at=now - timedelta(seconds=5), provider_done_at=now, next_poll_at=None
        )
    assert cadence.expected_latency(account) == (5.0, 5.0)

    ProviderAccount.objects.filter(pk=account.pk).update(max_rpm=account.budget_spent())  # spent
    late = running[3:]
    Generation.objects.filter(pk__in=[j.pk for j in late]).update(
        next_poll_at=now, started_at=now - timedelta(seconds=1), progress=0.5
    )
    assert sweeper.spend_budgets(list(Generation.objects.due(now).select_related("account")), now) == []
    Generation.objects.filter(pk__in=[j.pk for j in late]).update(
        started_at=now - timedelta(seconds=60), provider_done_at=now, next_poll_at=None
    )
    assert cadence.expected_latency(account) == (5.0, 5.0)  # the two late ones are not counted


def test_a_scarce_budget_waits_until_most_of_the_accounts_recent_jobs_were_done(bob, accounts, drain):
    """With history, "likely done" is when nine in ten recent jobs were: at the earliest of them a poll would
    mostly find the job still running."""
    from generations import cadence

    account = accounts["pixeldojo"]
    finished = submitted(drain, bob, "sb-pixeldojo", 10)
    now = timezone.now()
    for seconds, job in zip(range(4, 14), finished, strict=True):  # recent jobs took 4..13 s
        Generation.objects.filter(pk=job.pk).update(
            started_at=now - timedelta(seconds=seconds), provider_done_at=now, next_poll_at=None
        )
    low, high = cadence.expected_latency(account)
    running = submitted(drain, bob, "sb-pixeldojo", 3)
    ProviderAccount.objects.filter(pk=account.pk).update(max_rpm=account.budget_spent() + 1)
    Generation.objects.filter(pk__in=[j.pk for j in running]).update(
        next_poll_at=now, started_at=now - timedelta(seconds=low + 1)
    )
    due = list(Generation.objects.due(now).select_related("account"))
    assert sweeper.spend_budgets(due, now) == []  # past the earliest, not yet past nine in ten
    for job in Generation.objects.filter(pk__in=[j.pk for j in running]):
        assert abs((job.next_poll_at - now).total_seconds() - (high - low - 1)) < 1


def test_a_429_pause_is_not_a_scarce_budget(bob, accounts, drain):
    """A 429 leaves no room for a second or so; the jobs then wait for the pause, not for their typical time
    (a job first polled 20-44 s late, and marked paced, after one 429)."""
    account = accounts["pixeldojo"]
    running = submitted(drain, bob, "sb-pixeldojo", 3)
    now = timezone.now()
    Generation.objects.filter(pk__in=[j.pk for j in running]).update(
        next_poll_at=now, started_at=now - timedelta(seconds=1)
    )
    ProviderAccount.objects.get(pk=account.pk).pause(1)
    due = list(Generation.objects.due(now).select_related("account"))
    assert sweeper.spend_budgets(due, now) == []  # paused: nothing is sent
    for job in Generation.objects.filter(pk__in=[j.pk for j in running]):
        assert (job.next_poll_at - now).total_seconds() < 2  # when the pause ends, not after 44 s
