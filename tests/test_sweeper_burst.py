"""Issue 9.5: the work after detection keeps up with a burst. The due query takes the longest-waiting jobs
first; a poll round writes back in a bounded number of commits, one job's failure rolling back only that job;
a burst of submits queues one sweep; a sweeper at the end of its run hands its lease to the next task that
ends in a worker instead of queueing behind every submit and ingest."""

from __future__ import annotations

import time
from datetime import timedelta
from unittest import mock

import pytest
from django.db import DatabaseError, connections
from django.utils import timezone

from generations import credits, engine, sweeper, tasks
from generations.models import ApiToken, Generation, Lease
from generations.providers import GenerationRequest, Outcome, ProviderError
from generations.signals import InWorker


def request(**overrides) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "a lighthouse at dusk", "model": "flux-2-max"} | overrides))


@pytest.fixture
def queued(monkeypatch) -> list[tuple[str, tuple]]:
    """What the engine queues, recorded instead of sent to the broker."""
    recorded: list[tuple[str, tuple]] = []
    monkeypatch.setattr(engine, "enqueue", lambda name, *args: recorded.append((name, args)))
    return recorded


def running(user, count: int, slug: str = "sb-apiframe") -> list[Generation]:
    """`count` jobs the provider has accepted (as far as the rows say), created one after another."""
    jobs = []
    for i in range(count):
        generation, _ = engine.create(user, request(), provider=slug)
        Generation.objects.filter(pk=generation.pk).update(
            status="running", provider_job_id=f"job-{i}", started_at=timezone.now(), next_poll_at=None
        )
        jobs.append(Generation.objects.select_related("account").get(pk=generation.pk))
    return jobs


def poll_round(jobs: list[Generation], answers: dict[int, Outcome | ProviderError]) -> int:
    """`sweeper.poll_batch` over `jobs`, each job answered from `answers` (by pk) instead of the network."""
    order: list[int] = []  # the jobs in the order poll_batch built their calls

    class Poller:
        seconds: list = []

        def poll(self, calls):
            self.seconds = [0.01] * len(calls)
            return [answers[pk] for pk in order]

    by_job_id = {g.provider_job_id: g.pk for g in jobs}
    with mock.patch.object(
        jobs[0].account.adapter_class,
        "build_poll",
        autospec=True,
        side_effect=lambda self, job_id, url=None: order.append(by_job_id[job_id]),
    ):
        return sweeper.poll_batch(jobs, Poller())


# -- the due query -------------------------------------------------------------------------------------------
def test_the_due_query_takes_the_longest_waiting_jobs_first(bob, accounts):
    jobs = running(bob, 6)
    now = timezone.now()
    # The oldest job has waited longest; a newer one fell due later.
    for age, job in enumerate(jobs):
        Generation.objects.filter(pk=job.pk).update(next_poll_at=now - timedelta(seconds=60 - age))
    first = list(Generation.objects.due(now).values_list("pk", flat=True)[:3])
    assert first == [j.pk for j in jobs[:3]]


def test_a_sweep_of_more_due_jobs_than_a_round_takes_polls_the_oldest(bob, accounts, monkeypatch):
    jobs = running(bob, 5)
    now = timezone.now()
    for age, job in enumerate(jobs):
        Generation.objects.filter(pk=job.pk).update(next_poll_at=now - timedelta(seconds=60 - age))
    monkeypatch.setattr(sweeper, "MAX_DUE", 2)
    taken = []
    monkeypatch.setattr(sweeper, "poll_batch", lambda due, poller: taken.append([g.pk for g in due]) or 0)
    monkeypatch.setattr(sweeper, "seconds_until_next", lambda: None)
    sweeper.sweep(seconds=5)
    assert taken == [[jobs[0].pk, jobs[1].pk]]


# -- writing a round back --------------------------------------------------------------------------------------
class Commits:
    """Every commit on the default connection: explicit ones (an outermost atomic block) and each write made
    in autocommit mode (outside any atomic block)."""

    WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")

    def __init__(self):
        self.connection = connections["default"]
        self.explicit = 0
        self.autocommitted = 0

    def __enter__(self):
        self.connection.ensure_connection()
        real_commit = self.connection.commit

        def commit():
            self.explicit += 1
            return real_commit()

        self.patch = mock.patch.object(self.connection, "commit", side_effect=commit)
        self.patch.start()
        self.wrapper = self.connection.execute_wrapper(self.count)
        self.wrapper.__enter__()
        return self

    def count(self, execute, sql, params, many, context):
        if not self.connection.in_atomic_block and sql.lstrip().upper().startswith(self.WRITES):
            self.autocommitted += 1
        return execute(sql, params, many, context)

    def __exit__(self, *exc):
        self.wrapper.__exit__(*exc)
        self.patch.stop()

    @property
    def total(self) -> int:
        return self.explicit + self.autocommitted


@pytest.mark.django_db(transaction=True)
def test_one_poll_round_writes_back_in_a_bounded_number_of_commits(bob, accounts, queued):
    credits.grant(bob, 1_000_000, note="burst")
    jobs = running(bob, 40)
    Generation.objects.filter(pk__in=[j.pk for j in jobs]).update(next_poll_at=timezone.now())
    answers = {}
    for i, job in enumerate(jobs):
        answers[job.pk] = (
            Outcome(state="succeeded", image_urls=(f"https://cdn.example/{i}.png",))
            if i % 4 == 0
            else Outcome(state="pending", progress=0.5)
        )
    queued.clear()
    with Commits() as commits:
        assert poll_round(jobs, answers) == 40
    # The budget grant, the account's health, and one transaction for the answers (40 < WRITE_BATCH):
    # not two per job (80 and more before issue 9.5).
    assert commits.total <= 5, (commits.explicit, commits.autocommitted)
    done = [j.pk for i, j in enumerate(jobs) if i % 4 == 0]
    pending = [j.pk for i, j in enumerate(jobs) if i % 4]
    assert set(
        Generation.objects.filter(pk__in=done, provider_done_at__isnull=False).values_list("pk", flat=True)
    ) == set(done)
    assert sorted(args[0] for name, args in queued if name == "ingest") == sorted(done)
    assert (
        Generation.objects.filter(
            pk__in=pending, polls=1, progress=0.5, next_poll_at__gt=timezone.now()
        ).count()
        == 30
    )


def test_one_jobs_failure_in_a_round_rolls_back_that_job_only(bob, accounts, queued):
    credits.grant(bob, 1_000_000, note="burst")
    ok, refused, broken = running(bob, 3)
    Generation.objects.filter(pk__in=[ok.pk, refused.pk, broken.pk]).update(next_poll_at=timezone.now())
    before = credits.account_for(bob)
    held = refused.credits_reserved
    real = Generation.schedule_poll

    def schedule_poll(self, seconds, **fields):
        real(self, seconds, **fields)
        if self.pk == broken.pk:
            raise DatabaseError("disk I/O error")  # after its UPDATE: the savepoint must undo it

    answers = {
        ok.pk: Outcome(state="pending", progress=0.4),
        refused.pk: ProviderError(ProviderError.MODERATION, "The provider refused the prompt."),
        broken.pk: Outcome(state="pending", progress=0.7),
    }
    with mock.patch.object(Generation, "schedule_poll", schedule_poll):
        poll_round([ok, refused, broken], answers)
    ok.refresh_from_db()
    refused.refresh_from_db()
    broken.refresh_from_db()
    assert (ok.polls, ok.progress) == (1, 0.4)
    assert refused.status == "failed" and refused.credits_charged == 0
    after = credits.account_for(bob)
    # Its hold came back, exactly once; the others' holds stand.
    assert (after.balance, after.reserved) == (before.balance, before.reserved - held)
    assert (broken.polls, broken.progress) == (0, None)  # untouched: still due, polled again next round
    assert broken.next_poll_at <= timezone.now()


# -- kicks and the handover ------------------------------------------------------------------------------------
def test_a_burst_of_kicks_queues_one_sweep(db, queued):
    for _ in range(10):
        sweeper.kick_sweeper()
    assert queued == [("sweep", ())]


def test_a_kick_queues_nothing_while_a_sweeper_holds_the_lease(db, queued):
    assert sweeper.acquire_lease("a-sweeper")
    sweeper.kick_sweeper()
    assert queued == []


def test_a_kick_queues_again_once_the_queued_sweep_never_came(db, queued):
    sweeper.kick_sweeper()
    Lease.objects.filter(name="sweeper").update(expires_at=timezone.now() - timedelta(seconds=1))
    sweeper.kick_sweeper()
    assert queued == [("sweep", ()), ("sweep", ())]


def test_the_submits_of_a_burst_queue_one_sweep(bob, accounts, queued):
    jobs = [engine.create(bob, request(), provider="sb-apiframe")[0] for _ in range(5)]
    queued.clear()
    from django.test import TestCase

    for job in jobs:
        with TestCase.captureOnCommitCallbacks(execute=True):
            engine.submit(job.pk)
    assert Generation.objects.filter(pk__in=[j.pk for j in jobs], status="running").count() == 5
    assert [name for name, _ in queued].count("sweep") == 1


def test_a_sweeper_out_of_time_hands_over_and_a_task_ending_in_a_worker_sweeps_on(
    bob, accounts, queued, monkeypatch
):
    jobs = running(bob, 2)
    Generation.objects.filter(pk__in=[j.pk for j in jobs]).update(
        next_poll_at=timezone.now() + timedelta(seconds=30)
    )
    queued.clear()
    sweeper.sweep(seconds=0)  # work waits (a poll in 30 s), its time is up: it hands over
    lease = Lease.objects.get(name="sweeper")
    assert lease.holder == sweeper.KICKED and lease.expires_at > timezone.now()
    assert queued == [("sweep", ())]  # the fallback, for a queue with no task to end first

    # Another task ends in a worker: it carries the sweep on, not a sweep queued behind the FIFO.
    Generation.objects.filter(pk=jobs[0].pk).update(next_poll_at=timezone.now())
    swept = []
    monkeypatch.setattr(sweeper, "poll_batch", lambda due, poller: swept.append([g.pk for g in due]) or 1)
    monkeypatch.setattr(sweeper, "SWEEP_SECONDS", 0)
    monkeypatch.setattr(InWorker, "active", True)
    tasks.ingest(jobs[1].pk)  # nothing to download: it ends at once
    assert swept == [[jobs[0].pk]]


def test_poll_rounds_start_at_least_a_round_gap_apart_while_jobs_keep_coming_due(
    bob, accounts, queued, monkeypatch
):
    """Hundreds of jobs in flight come due a few ms apart: a round each time cost more in its own queries
    than in polls. Rounds start ROUND_GAP apart, however soon the next job is due."""
    (job,) = running(bob, 1)
    starts = []

    def poll(due, poller):
        starts.append(time.monotonic())
        # Due again at once, as a job among hundreds is: without the gap the next round would start 20 ms on.
        Generation.objects.filter(pk=job.pk).update(next_poll_at=timezone.now())
        if len(starts) == 6:
            Generation.objects.filter(pk=job.pk).update(status="failed", next_poll_at=None)
        return 1

    Generation.objects.filter(pk=job.pk).update(next_poll_at=timezone.now())
    monkeypatch.setattr(sweeper, "poll_batch", poll)
    sweeper.sweep(seconds=30)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # (the first round also reaps before it polls, so its poll starts a little after the round)
    assert len(starts) == 6 and min(gaps) >= 0.08, gaps


# -- a watched job with no sweeper -----------------------------------------------------------------------------
def test_a_watched_job_long_overdue_kicks_a_sweeper_once_the_dead_one_s_lease_has_lapsed(
    bob, accounts, queued, client
):
    """The cluster holding the sweeper lease was SIGKILLed; the surviving one had no task ending to take the
    sweep over, and waited for the reaper's minute. Now whoever watches the job (the API, the studio's
    poll) kicks a sweeper as soon as the dead one's lease lapses."""
    (job,) = running(bob, 1)
    queued.clear()
    token = ApiToken.issue(bob)[1]

    def look() -> None:
        assert (
            client.get(f"/api/v1/generations/{job.pk}", HTTP_AUTHORIZATION=f"Bearer {token}").status_code
            == 200
        )

    assert sweeper.acquire_lease("the-killed-cluster")
    Generation.objects.filter(pk=job.pk).update(next_poll_at=timezone.now() - timedelta(seconds=5))
    Lease.objects.named("sweeper").update(expires_at=timezone.now() - timedelta(seconds=1))
    look()
    assert queued == []  # 5 s late is a busy sweeper, not a missing one

    Generation.objects.filter(pk=job.pk).update(next_poll_at=timezone.now() - timedelta(seconds=60))
    assert sweeper.acquire_lease("the-killed-cluster")
    look()
    assert queued == []  # the dead sweeper's lease still runs: it might be alive after all

    Lease.objects.named("sweeper").update(expires_at=timezone.now() - timedelta(seconds=1))
    look()
    look()
    assert queued == [("sweep", ())]  # once: the kick holds the lease until the sweep starts

    Lease.objects.named("sweeper").update(expires_at=timezone.now() - timedelta(seconds=1))
    client.force_login(bob)
    assert client.get(f"/jobs/updates?watch={job.pk}:x").status_code == 200  # the studio's poll
    assert queued == [("sweep", ()), ("sweep", ())]


def test_a_kick_that_finds_the_database_busy_leaves_the_read_alone(
    bob, accounts, queued, client, monkeypatch
):
    (job,) = running(bob, 1)
    Generation.objects.filter(pk=job.pk).update(next_poll_at=timezone.now() - timedelta(seconds=60))

    def busy():
        raise DatabaseError("database is locked")

    monkeypatch.setattr(sweeper, "kick_sweeper", busy)
    token = ApiToken.issue(bob)[1]
    response = client.get(f"/api/v1/generations/{job.pk}", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200 and response.json()["status"] == "running"


def test_a_job_whose_task_died_holding_its_lease_kicks_a_sweeper_when_watched(bob, accounts, queued, client):
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    queued.clear()
    Generation.objects.filter(pk=generation.pk).update(lease_until=timezone.now() - timedelta(seconds=60))
    client.force_login(bob)
    assert client.get(f"/jobs/updates?watch={generation.pk}:x").status_code == 200
    assert queued == [("sweep", ())]


def test_a_task_outside_a_worker_or_under_a_live_sweeper_does_not_sweep(bob, accounts, queued, monkeypatch):
    (job,) = running(bob, 1)
    Generation.objects.filter(pk=job.pk).update(next_poll_at=timezone.now())
    swept = []
    monkeypatch.setattr(sweeper, "sweep", lambda seconds=0: swept.append(seconds) or 0)
    tasks.ingest(job.pk)  # not in a cluster worker (a test, a shell)
    monkeypatch.setattr(InWorker, "active", True)
    assert sweeper.acquire_lease("a-live-sweeper")
    tasks.ingest(job.pk)
    assert swept == []
    sweeper.release_lease("a-live-sweeper")
    tasks.ingest(job.pk)
    assert len(swept) == 1


# -- the sweeper's worker ingests too ----------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_sweeper_in_a_worker_ingests_what_it_finds_done_without_waiting_for_the_queue(
    bob, accounts, fresh_sandbox, queued, monkeypatch, settings, tmp_path
):
    """Issue 9.5: with two workers, one sweeping, the other alone ingested a burst. The sweeper's own threads
    now download what it finds done; the queued ingest task stays as the fallback and then finds it done."""
    settings.STORAGES = settings.STORAGES | {
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": tmp_path},
        }
    }
    fresh_sandbox.set_latency(0, 0)
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    engine.submit(generation.pk)
    Generation.objects.filter(pk=generation.pk).update(next_poll_at=timezone.now())
    monkeypatch.setattr(InWorker, "active", True)
    sweeper.sweep(seconds=10)
    generation.refresh_from_db()
    assert generation.status == "succeeded", generation.events.values_list("what", "detail")
    assert generation.images.count() == 1
    assert ("ingest", (generation.pk,)) in queued  # also queued: it does nothing now
    before = list(generation.events.values_list("what", flat=True))
    tasks.ingest(generation.pk)
    assert list(generation.events.values_list("what", flat=True)) == before
