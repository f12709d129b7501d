"""Reliability test plan (../shared/design/reliability.md section 8), items 5, 7, 8, 9 and 16, against the real
engine and the provider sandbox on loopback. Every test ends with the same proof: the books reconcile, every job
is terminal (or exactly where the test left it), the provider was asked to make each job once, and the files on
disk are exactly one original and one thumbnail per Image row.

A worker that dies is modelled in-process by `WorkerDied`, a BaseException raised at the point of death: what the
engine committed before it stays, nothing after it runs (as with os._exit or SIGKILL). Item 8 kills a real
`qcluster` with SIGKILL; item 9 kills in-process, since four real kills a 30 s lease apart would take minutes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from django.conf import settings
from django.db import connection
from django.utils import timezone

from generations import credits, engine, sweeper
from generations import tasks as task_module
from generations.models import Generation, Image, LedgerEntry
from generations.providers import GenerationRequest
from generations.providers import http as provider_http

from .conftest import ROOT, wait_for

SUBMIT_PATHS = {
    "apiframe": "/v2/images/generate",
    "vtrix": "/model/v1/generation",
    "pixeldojo": "/api/v1/models/flux-2-max/run",
    "maxapi": "/v1/images/generations",
}
MODELS = {"apiframe": "flux-2-max", "vtrix": "flux-2-max", "pixeldojo": "flux-2-max", "maxapi": "flux-plus"}


class WorkerDied(BaseException):
    """The worker process ends here (os._exit, SIGKILL): what was committed stays, nothing after runs. A
    BaseException, so no `except Exception` in the engine can mistake it for an error it handles."""


# -- fixtures and helpers ------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def media_root(tmp_path, settings) -> Path:
    """This test's own MEDIA_ROOT, so counting files counts only this test's files (other tests, and other
    xdist workers, share the session's)."""
    root = tmp_path / "data" / "media"
    root.mkdir(parents=True)
    settings.MEDIA_ROOT = root
    settings.STORAGES = settings.STORAGES | {
        "default": settings.STORAGES["default"] | {"OPTIONS": {"location": root}}
    }
    from django.core.files.storage import default_storage

    assert Path(default_storage.location) == root
    return root


class TaskQueue:
    """Tasks the engine queues, recorded (from any thread) instead of sent to the broker."""

    def __init__(self):
        self.recorded: list[tuple[str, tuple]] = []
        self.lock = threading.Lock()

    def enqueue(self, name, *args) -> None:
        with self.lock:
            self.recorded.append((name, args))

    def take(self, name: str | None = None) -> list[tuple[str, tuple]]:
        with self.lock:
            taken = [item for item in self.recorded if name in (None, item[0])]
            self.recorded[:] = [item for item in self.recorded if name not in (None, item[0])]
        return taken

    def names(self) -> list[str]:
        """What is queued, but the sweeps (only ever a wake-up call)."""
        with self.lock:
            return [name for name, _ in self.recorded if name != "sweep"]

    def run(self, limit: int = 50) -> list[str]:
        """Run the submits, ingests and reaps queued so far, and what they queue, in order. Never a sweep:
        the tests sweep explicitly."""
        ran = []
        while len(ran) < limit:
            work = [item for item in self.take() if item[0] != "sweep"]
            if not work:
                return ran
            for name, args in work:
                getattr(task_module, name)(*args)
                ran.append(name)
        raise AssertionError(f"more than {limit} tasks: {ran}")


@pytest.fixture
def queue(monkeypatch) -> TaskQueue:
    tasks = TaskQueue()
    monkeypatch.setattr(engine, "enqueue", tasks.enqueue)
    return tasks


def request_for(kind: str, **overrides) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "a lighthouse at dusk", "model": MODELS[kind]} | overrides))


def create(user, kind: str, **overrides) -> Generation:
    """`engine.create` on the sandbox account of `kind`, its on-commit work run as a commit would (the Redis
    broker is told on commit; a test in a transaction never commits)."""
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        generation, created = engine.create(user, request_for(kind, **overrides), provider=f"sb-{kind}")
    assert created
    return generation


def submits(sandbox, kind: str) -> list:
    return [
        r
        for r in sandbox.requests
        if r.provider == kind and r.method == "POST" and r.path == SUBMIT_PATHS[kind]
    ]


def downloads(sandbox, kind: str | None = None) -> list:
    return [r for r in sandbox.requests if r.path.startswith("/_files/") and kind in (None, r.provider)]


def provider_jobs(sandbox, kind: str) -> list:
    with sandbox.store.lock:
        return [job for (provider, _), job in sandbox.store.jobs.items() if provider == kind]


def files_on_disk(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def assert_files_match_images(root: Path) -> None:
    """One original and one thumbnail per Image row, and nothing else: no orphan, no missing file."""
    expected = set()
    for file, thumbnail in Image.objects.values_list("file", "thumbnail"):
        expected |= {file, thumbnail}
    assert len(expected) == 2 * Image.objects.count()
    assert files_on_disk(root) == expected


def assert_books_clean(now=None) -> None:
    assert credits.reconcile() == []
    # No hold outlives its job's deadline: reconcile's overdue check, asked at the latest deadline.
    latest = Generation.objects.order_by("-deadline_at").values_list("deadline_at", flat=True).first()
    if latest is not None:
        assert credits.overdue_holds(now=max(now or timezone.now(), latest) + credits.OVERDUE_AFTER) == []


def timeline(generation) -> list[tuple[str, str]]:
    return list(generation.events.order_by("id").values_list("what", "detail"))


def ledger(generation) -> list[tuple[str, int]]:
    return list(
        LedgerEntry.objects.filter(generation=generation).order_by("id").values_list("kind", "amount")
    )


class Stall:
    """The sandbox's first `limit` answers with a result file send their headers and 1 KiB, then hold the rest
    until `release` is set (45 s at most); every other fetch is answered at once."""

    def __init__(self, limit: int = 1):
        self.limit = limit
        self.release = threading.Event()
        self.held: list[str] = []
        self.lock = threading.Lock()

    def wrap(self, real):
        def serve(store, provider, name, *args, **kwargs):
            response = real(store, provider, name, *args, **kwargs)
            with self.lock:
                if len(self.held) >= self.limit or response.status != 200 or response.stream is not None:
                    return response
                self.held.append(name)
            body = response.body

            def trickle():
                yield body[:1024]
                self.release.wait(45)
                yield body[1024:]

            return replace(response, body=b"", stream=trickle(), length=len(body))

        return serve

    def wait_held(self, count: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.held) < count:
            assert time.monotonic() < deadline, f"{len(self.held)} of {count} downloads started"
            time.sleep(0.02)


@pytest.fixture
def stall(monkeypatch):
    from generations.providers.sandbox import files

    stalled = Stall()
    monkeypatch.setattr(files, "serve", stalled.wrap(files.serve))
    yield stalled
    stalled.release.set()


@pytest.fixture
def crash_after_accept(monkeypatch):
    """`arm(n)`: the next n submit calls die right after the provider answered 2xx, before FluxWeb reads the
    reply or writes anything (the provider has the job; we have no provider id)."""
    real = provider_http.send
    left = {"n": 0}

    def send(adapter, call, *args, **kwargs):
        reply = real(adapter, call, *args, **kwargs)
        if call.method == "POST" and 200 <= reply.status < 300 and left["n"] > 0:
            left["n"] -= 1
            raise WorkerDied("killed after the provider accepted the submit")
        return reply

    monkeypatch.setattr(provider_http, "send", send)

    def arm(times: int = 1) -> None:
        left["n"] = times

    return arm


def in_threads(*calls, timeout: float = 60) -> list:
    """Run each call in its own thread and database connection, released together; their results, in order.
    An exception in a thread is returned as the result, for the caller to assert on."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def one(i, call):
        try:
            barrier.wait()
            results[i] = call()
        except BaseException as exc:  # noqa: B036 - reported to the caller, which asserts
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a thread did not finish"
    return results


class Worker(threading.Thread):
    """A call running in its own thread and database connection; `error` is what it raised, if anything."""

    def __init__(self, call):
        super().__init__(daemon=True)
        self.call, self.error, self.result = call, None, None

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:  # noqa: B036 - kept for the test to assert on
            self.error = exc
        finally:
            connection.close()


def in_threads_started(*calls) -> list[Worker]:
    workers = [Worker(call) for call in calls]
    for worker in workers:
        worker.start()
    return workers


def provider_done(user, kind: str, queue: TaskQueue, **overrides) -> Generation:
    """A job the provider has finished, its ingest task queued (recorded in `queue`, not run)."""
    generation = create(user, kind, **overrides)
    queue.take()
    engine.submit(generation.pk)
    generation.refresh_from_db()
    assert generation.status == "running", generation.error_message
    sweeper.webhook_hint(generation)  # the sandbox (latency 0) has finished: one poll, and it is done
    generation.refresh_from_db()
    assert generation.provider_done_at is not None
    return generation


def scheduler_tick(queue) -> None:
    """What the cluster runs once a minute besides the tasks: the `fluxweb-reaper` schedule, then the tasks it
    queued."""
    task_module.reap()
    queue.run()


# -- 5: exactly-once settle under duplicate completion ------------------------------------------------------------
def poll_now(pk: int) -> int:
    """The sweeper's poll of one due job, as `sweep` does it (its own event loop and client)."""
    poller = sweeper.Poller(4)
    try:
        return sweeper.poll_batch(list(Generation.objects.filter(pk=pk).select_related("account")), poller)
    finally:
        poller.close()


def webhook(pk: int) -> None:
    sweeper.webhook_hint(Generation.objects.select_related("account").get(pk=pk))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind, n", [("pixeldojo", 2), ("apiframe", 1)])
def test_5_a_poll_a_webhook_and_redelivered_ingests_settle_a_job_once(
    kind, n, bob, accounts, fresh_sandbox, queue
):
    """Plan item 5: the sweeper's poll, two webhooks and redelivered ingest tasks complete the same job at
    once, each in its own thread and connection. One "provider done", one download per image, one settle, one
    Image row and one file pair per index, no refund."""
    fresh_sandbox.set_latency(0, 0)
    generation = create(bob, kind, n=n)
    hold = generation.credits_reserved
    queue.run()  # the submit
    generation.refresh_from_db()
    assert generation.status == "running", timeline(generation)
    Generation.objects.filter(pk=generation.pk).update(
        next_poll_at=timezone.now()
    )  # due: the sweeper sees it
    pk = generation.pk

    first = in_threads(
        lambda: poll_now(pk),
        lambda: poll_now(pk),
        lambda: webhook(pk),
        lambda: webhook(pk),
        lambda: engine.ingest(pk),  # a redelivery that arrives before the provider is known to be done
    )
    assert not [r for r in first if isinstance(r, BaseException)], first
    ingests = [args for name, args in queue.take() if name == "ingest"]
    assert ingests == [(pk,)]  # provider_done is claimed once, so the ingest is queued once
    second = in_threads(
        lambda: engine.ingest(*ingests[0]),
        lambda: engine.ingest(pk),  # django-q hands the same task out again
        lambda: engine.ingest(pk),
        lambda: webhook(pk),  # a late webhook
        lambda: poll_now(pk),  # a sweeper that read the job as due just before
    )
    assert not [r for r in second if isinstance(r, BaseException)], second
    engine.ingest(pk)  # and a redelivery after it all
    webhook(pk)

    generation.refresh_from_db()
    assert generation.status == "succeeded", timeline(generation)
    whats = [what for what, _ in timeline(generation)]
    assert (whats.count("provider done"), whats.count("succeeded")) == (1, 1), whats
    assert ledger(generation) == [("reserve", hold), ("settle", hold)]
    assert (generation.credits_charged, generation.credits_refunded) == (hold, 0)
    assert sorted(generation.images.values_list("index", flat=True)) == list(range(n))
    assert len(downloads(fresh_sandbox, kind)) == n  # one ingest ran: one download per image
    assert len(submits(fresh_sandbox, kind)) == 1
    assert_files_match_images(settings.MEDIA_ROOT)
    assert_books_clean()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_5_a_download_that_outlived_its_lease_loses_to_the_redriven_one_and_leaves_no_file(
    bob, accounts, fresh_sandbox, queue, stall
):
    """Plan item 5, the overlap the lease cannot prevent: an ingest stalls past its lease, the reaper
    re-drives the download and that second ingest settles; when the first finally gets its bytes it loses
    the settle (its claim is stale), and deletes the files it wrote: one settle, one file pair per image."""
    fresh_sandbox.set_latency(0, 0)
    with time_machine.travel(timezone.now(), tick=True) as clock:
        generation = provider_done(bob, "pixeldojo", queue, n=2)
        queue.take()
        (stale,) = in_threads_started(lambda: engine.ingest(generation.pk))
        stall.wait_held(1)  # the first ingest is mid-download, its lease live
        assert task_module.reap() == 0
        clock.shift(engine.TASK_LEASE_SECONDS + 1)  # it stalls past its lease (a paused VM, say)
        assert task_module.reap() == 1
        assert queue.names() == ["ingest"]
        queue.run()  # the re-driven ingest: its own downloads are answered at once
        generation.refresh_from_db()
        assert generation.status == "succeeded", timeline(generation)
        stall.release.set()
        stale.join(30)
        assert not stale.is_alive()
        assert stale.error is None, stale.error

    generation.refresh_from_db()
    assert generation.status == "succeeded"
    assert ledger(generation) == [("reserve", 140), ("settle", 140)]
    assert sorted(generation.images.values_list("index", flat=True)) == [0, 1]
    assert len(downloads(fresh_sandbox, "pixeldojo")) == 4  # both ingests downloaded both images
    assert_files_match_images(settings.MEDIA_ROOT)  # but only the winner's files remain
    assert_books_clean()


# -- 7: crash after the provider accepted, before the provider id is stored -------------------------------------
@pytest.mark.parametrize("kind", ["vtrix", "pixeldojo", "maxapi"])
def test_7_a_submit_killed_after_the_provider_accepted_is_never_sent_twice(
    kind, bob, accounts, fresh_sandbox, queue, crash_after_accept
):
    """Plan item 7 for the providers that cannot tell a repeat from a new paid job: the redelivered task finds
    the job leased and does nothing; once the lease is gone the job fails "submit_lost" with an exact refund,
    within one reaper period, and the provider was asked once."""
    fresh_sandbox.set_latency(0, 0)
    with time_machine.travel(timezone.now(), tick=True) as clock:
        generation = create(bob, kind)
        hold = generation.credits_reserved
        queue.take()
        crash_after_accept(1)
        with pytest.raises(WorkerDied):
            engine.submit(generation.pk)
        assert len(submits(fresh_sandbox, kind)) == 1
        assert len(provider_jobs(fresh_sandbox, kind)) == 1  # the provider has it (and bills for it)

        engine.submit(generation.pk)  # the broker hands the task out again while the lease is live
        queue.run()
        generation.refresh_from_db()
        assert (generation.status, generation.provider_job_id) == ("queued", "")
        assert len(submits(fresh_sandbox, kind)) == 1

        clock.shift(engine.TASK_LEASE_SECONDS + 60)  # the lease runs out; a reaper period passes
        scheduler_tick(queue)

        generation.refresh_from_db()
        assert generation.status == "failed", timeline(generation)
        assert generation.error_code == "submit_lost"
        assert len(submits(fresh_sandbox, kind)) == 1
        assert ledger(generation) == [("reserve", hold), ("refund", hold)]
        account = credits.account_for(bob)
        assert (account.balance, account.reserved) == (1000, 0)
        assert_books_clean()


def test_7_an_apiframe_submit_killed_after_accept_is_resent_with_the_same_key_and_made_once(
    bob, accounts, fresh_sandbox, queue, crash_after_accept
):
    """Plan item 7 where the provider deduplicates: the reaper re-sends the lost submit with the same
    Idempotency-Key, Apiframe answers with the job it already has, and the job is made, stored and charged
    once."""
    fresh_sandbox.set_latency(0, 0)
    with time_machine.travel(timezone.now(), tick=True) as clock:
        generation = create(bob, "apiframe")
        queue.take()
        crash_after_accept(1)
        with pytest.raises(WorkerDied):
            engine.submit(generation.pk)
        engine.submit(generation.pk)  # redelivered while the lease is live: nothing
        assert len(submits(fresh_sandbox, "apiframe")) == 1

        clock.shift(engine.TASK_LEASE_SECONDS + 60)
        scheduler_tick(queue)
        generation.refresh_from_db()
        assert generation.status == "running", (generation.status, generation.error_message)

        sent = submits(fresh_sandbox, "apiframe")
        assert len(sent) == 2
        assert sent[0].headers["Idempotency-Key"] == sent[1].headers["Idempotency-Key"]
        (job,) = provider_jobs(fresh_sandbox, "apiframe")  # the provider made one job
        assert generation.provider_job_id == job.id

        sweeper.sweep(seconds=5)
        queue.run()

    generation.refresh_from_db()
    assert generation.status == "succeeded", generation.error_message
    assert ledger(generation) == [("reserve", 70), ("settle", 70)]
    assert generation.images.count() == 1
    assert len(provider_jobs(fresh_sandbox, "apiframe")) == 1
    assert_files_match_images(settings.MEDIA_ROOT)
    assert_books_clean()


# -- 8: SIGKILL of the real cluster mid-download ---------------------------------------------------------------------
class Cluster:
    """`manage.py qcluster` on this test's database, broker and MEDIA_ROOT, in its own process group so that
    `kill()` takes the sentinel and every worker at once (SIGKILL: nothing runs, nothing is saved)."""

    def __init__(self, tmp_path: Path):
        db = connection.settings_dict
        self.env = dict(os.environ)
        if connection.vendor == "sqlite":
            self.env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
        else:
            self.env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        self.env["FLUXWEB_Q_NAME"] = settings.Q_CLUSTER["name"]
        self.env["FLUXWEB_DATA_DIR"] = str(tmp_path / "data")  # MEDIA_ROOT = the media_root fixture's
        self.env["FLUXWEB_Q_WORKERS"] = "2"
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        log = open(self.tmp_path / f"qcluster-{len(self.processes)}.log", "w")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "qcluster"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()
        self.processes.append(process)
        return process

    def kill(self) -> None:
        process = self.processes[-1]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()  # the sentinel's stop procedure
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)


@pytest.fixture
def cluster(transactional_db, tmp_path):
    clusters = Cluster(tmp_path)
    yield clusters
    clusters.stop()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_8_sigkill_of_the_cluster_mid_download_then_a_restart_completes_the_job_once(
    bob, accounts, fresh_sandbox, stall, cluster, media_root
):
    """Plan item 8: the whole cluster is SIGKILLed while an ingest is mid-download, and a new one started. The
    download is taken up again only once the dead task's lease has run out (by the reaper: its one-minute
    schedule firing is the one step this test makes happen sooner); the job then completes once: one submit,
    one settle, one stored file pair per image, the books clean."""
    from django_q.tasks import async_task

    cluster.start()
    generation = create(bob, "pixeldojo", n=2)
    stall.wait_held(1, timeout=30)  # the ingest is reading the first image's body
    time.sleep(0.3)
    generation.refresh_from_db()
    assert (generation.status, generation.ingest_attempts) == ("running", 1), timeline(generation)
    lease = generation.lease_until
    assert lease > timezone.now()
    cluster.kill()
    stall.release.set()  # the sandbox side of the dead connection ends; later fetches are answered at once

    cluster.start()
    assert sweeper.reap(kick=False) == 0  # the dead task's lease still stands: nothing re-drives it yet
    generation.refresh_from_db()
    assert (generation.status, generation.ingest_attempts, generation.images.count()) == ("running", 1, 0)
    assert files_on_disk(media_root) == set()

    wait_for(lambda: timezone.now() > lease, timeout=engine.TASK_LEASE_SECONDS + 5)
    async_task("generations.tasks.reap")  # the `fluxweb-reaper` schedule fires
    wait_for(lambda: Generation.objects.get(pk=generation.pk).is_terminal, timeout=20)

    generation.refresh_from_db()
    assert generation.status == "succeeded", timeline(generation)
    whats = [what for what, _ in timeline(generation)]
    assert (whats.count("download again"), whats.count("succeeded")) == (1, 1), whats
    redriven = generation.events.get(what="download again").at
    assert redriven >= lease  # not before the lease ran out
    assert ledger(generation) == [("reserve", 140), ("settle", 140)]
    assert sorted(generation.images.values_list("index", flat=True)) == [0, 1]
    assert len(submits(fresh_sandbox, "pixeldojo")) == 1
    fetched = [r.path for r in downloads(fresh_sandbox, "pixeldojo")]
    assert len(set(fetched)) == 2 and all(fetched.count(path) <= 2 for path in fetched), fetched
    assert_files_match_images(media_root)
    assert_books_clean()


# -- 9: a poison pill: a task that kills its worker every time ----------------------------------------------------
def test_9_a_download_that_kills_its_worker_every_time_ends_failed_and_refunded(
    bob, accounts, fresh_sandbox, queue, monkeypatch
):
    """Plan item 9 for the ingest: every try dies mid-task (django-q never records a result, so its own
    max_attempts never counts one). The job's own counter bounds it: after MAX_INGEST_ATTEMPTS downloads the
    next claim fails the job with an exact refund, and later redeliveries and reaper runs do nothing."""
    fresh_sandbox.set_latency(0, 0)
    deaths = []

    def poison(data, **options):
        deaths.append(len(data))
        raise WorkerDied("the image kills the worker that opens it")

    monkeypatch.setattr(engine.media, "check_image", poison)
    with time_machine.travel(timezone.now(), tick=True) as clock:
        generation = provider_done(bob, "vtrix", queue)
        assert queue.names() == ["ingest"]
        for attempt in range(1, engine.MAX_INGEST_ATTEMPTS + 1):
            with pytest.raises(WorkerDied):
                queue.run()
            generation.refresh_from_db()
            assert (generation.status, generation.ingest_attempts) == ("running", attempt)
            assert generation.lease_until > timezone.now()  # left as a killed worker leaves it
            engine.ingest(generation.pk)  # a redelivery while the dead task's lease is live: nothing
            assert len(deaths) == attempt
            clock.shift(engine.TASK_LEASE_SECONDS + 1)
            assert task_module.reap() >= 1
            assert queue.names() == ["ingest"]
        queue.run()  # the claim past the cap: no download, the job ends

        generation.refresh_from_db()
        assert generation.status == "failed"
        assert generation.error_code == "download_failed"
        assert len(deaths) == engine.MAX_INGEST_ATTEMPTS
        assert len(downloads(fresh_sandbox)) == engine.MAX_INGEST_ATTEMPTS
        assert ledger(generation) == [("reserve", 70), ("refund", 70)]

        for _ in range(3):  # bounded: nothing re-drives a failed job
            clock.shift(engine.TASK_LEASE_SECONDS + 60)
            task_module.reap()
            engine.ingest(generation.pk)
            queue.run()
        assert len(deaths) == engine.MAX_INGEST_ATTEMPTS
        assert queue.names() == []

    assert not generation.images.exists()
    assert_files_match_images(settings.MEDIA_ROOT)
    assert len(submits(fresh_sandbox, "vtrix")) == 1
    account = credits.account_for(bob)
    assert (account.balance, account.reserved) == (1000, 0)
    assert_books_clean()


def test_9_an_apiframe_submit_that_kills_its_worker_every_time_is_bounded_and_refunded(
    bob, accounts, fresh_sandbox, queue, crash_after_accept
):
    """Plan item 9 for the submit, on the provider FluxWeb may resend to: each resend carries the same key
    (the provider keeps one job), and after MAX_SUBMIT_ATTEMPTS the job fails with an exact refund."""
    fresh_sandbox.set_latency(0, 0)
    crash_after_accept(1000)
    with time_machine.travel(timezone.now(), tick=True) as clock:
        generation = create(bob, "apiframe")
        with pytest.raises(WorkerDied):
            queue.run()
        for _ in range(3 * engine.MAX_SUBMIT_ATTEMPTS):
            clock.shift(engine.TASK_LEASE_SECONDS + 1)
            try:
                scheduler_tick(queue)
            except WorkerDied:
                continue
            generation.refresh_from_db()
            if generation.is_terminal:
                break
    generation.refresh_from_db()
    assert generation.status == "failed"
    assert generation.finished_at <= generation.deadline_at
    sent = submits(fresh_sandbox, "apiframe")
    assert len(sent) == engine.MAX_SUBMIT_ATTEMPTS
    assert len({r.headers["Idempotency-Key"] for r in sent}) == 1
    assert len(provider_jobs(fresh_sandbox, "apiframe")) == 1
    assert ledger(generation) == [("reserve", 70), ("refund", 70)]
    assert_books_clean()


# -- 16: scheduler overlap and catch-up -----------------------------------------------------------------------------
def poll_times(sandbox, kind: str, job_id: str) -> list[float]:
    return [
        r.time
        for r in sandbox.requests
        if r.provider == kind and r.method == "GET" and r.path.rstrip("/").endswith("/" + job_id)
    ]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_16_two_sweepers_at_once_poll_each_job_once_per_period(bob, accounts, fresh_sandbox, queue):
    """Plan item 16: two clusters start a sweep at the same moment. The sweeper lease lets one poll and makes
    the other a no-op, so the provider sees one GET per job per poll period, never two at once."""
    fresh_sandbox.set_latency(1.5, 2.0)
    jobs = []
    for kind in ("apiframe", "vtrix", "pixeldojo", "apiframe"):
        generation = create(bob, kind)
        jobs.append(generation)
    queue.run()  # the submits
    for generation in jobs:
        generation.refresh_from_db()
        assert generation.status == "running", generation.error_message

    results = in_threads(lambda: sweeper.sweep(seconds=10), lambda: sweeper.sweep(seconds=10))

    assert all(isinstance(r, int) for r in results), results
    assert sorted(results)[0] == 0, f"both sweepers polled: {results}"
    polled = 0
    for generation in jobs:
        generation.refresh_from_db()
        assert generation.provider_done_at is not None, timeline(generation)
        times = poll_times(fresh_sandbox, generation.account.kind, generation.provider_job_id)
        assert times
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert min(gaps, default=1.0) >= 0.1, f"two polls of one job at once: {gaps}"
        polled += len(times)
    assert polled == max(results)

    queue.run()  # the ingests
    for generation in jobs:
        generation.refresh_from_db()
        assert generation.status == "succeeded", timeline(generation)
    assert sum(len(submits(fresh_sandbox, kind)) for kind in SUBMIT_PATHS) == len(jobs)
    assert_files_match_images(settings.MEDIA_ROOT)
    assert_books_clean()


class RecordingBroker:
    """What a django-q2 scheduler run sends to the broker, decoded."""

    list_key = "recorded"

    def __init__(self):
        self.tasks: list[dict] = []

    def enqueue(self, pack) -> str:
        from django_q.signing import SignedPackage

        self.tasks.append(SignedPackage.loads(pack))
        return str(len(self.tasks))


def seed_schedules() -> None:
    """The schedules exactly as the data migrations write them (a transactional test's flush deletes them)."""
    import importlib

    from django.apps import apps
    from django_q.models import Schedule

    Schedule.objects.filter(name__in=["fluxweb-sweeper", "fluxweb-reaper"]).delete()
    importlib.import_module("generations.migrations.0002_defaults").add_defaults(apps, None)
    importlib.import_module("generations.migrations.0003_job_leases").add_reaper(apps, None)


def test_16_after_a_ten_minute_outage_each_schedule_fires_once_and_the_reaper_moves_each_job_once(
    bob, accounts, fresh_sandbox, queue, settings, monkeypatch
):
    """Plan item 16 (and 11's catch_up): the cluster was down for ten minutes. With catch_up False the next
    scheduler run queues the sweeper and the reaper once each (not the ten missed runs each), and the reaper
    moves every stuck job once: a second reaper run at the same moment moves nothing."""
    from django_q import scheduler as django_q_scheduler
    from django_q.models import Schedule

    # It closes stale connections first; this test's connection holds its (never committed) transaction.
    monkeypatch.setattr(django_q_scheduler, "close_old_django_connections", lambda: None)
    scheduler = django_q_scheduler.scheduler
    assert settings.Q_CLUSTER["catch_up"] is False
    seed_schedules()
    schedules = Schedule.objects.filter(name__in=["fluxweb-sweeper", "fluxweb-reaper"])
    assert {(s.name, s.func, s.schedule_type, s.minutes, s.repeats) for s in schedules} == {
        ("fluxweb-sweeper", "generations.tasks.sweep", Schedule.MINUTES, 1, -1),
        ("fluxweb-reaper", "generations.tasks.reap", Schedule.MINUTES, 1, -1),
    }
    fresh_sandbox.set_latency(0, 0)
    start = timezone.now()
    with time_machine.travel(start, tick=True) as clock:
        schedules.update(next_run=start + timedelta(minutes=1))  # both last ran now
        settings.FLUXWEB_JOB_DEADLINE = 3600
        lost_submit = create(bob, "vtrix")
        queue.take()  # the submit task is lost with the cluster
        lost_ingest = provider_done(bob, "apiframe", queue)
        queue.take()  # so is the ingest task
        settings.FLUXWEB_JOB_DEADLINE = 600
        overdue = create(bob, "pixeldojo")
        queue.take()

        clock.shift(timedelta(minutes=10, seconds=5))  # the outage
        broker = RecordingBroker()
        scheduler(broker=broker)
        scheduler(broker=broker)  # the scheduler's next tick, 30 s on in real life
        assert sorted(task["func"] for task in broker.tasks) == [
            "generations.tasks.reap",
            "generations.tasks.sweep",
        ]
        for schedule in schedules.all():
            assert schedule.next_run > timezone.now()

        assert task_module.reap() == 3
        moved = sorted((name, args) for name, args in queue.take() if name != "sweep")
        assert moved == [("ingest", (lost_ingest.pk,)), ("submit", (lost_submit.pk,))]
        overdue.refresh_from_db()
        assert (overdue.status, overdue.error_code) == ("failed", "timeout")
        assert task_module.reap() == 0  # a second run at once (what catch-up would queue) moves nothing
        assert queue.names() == []

        for name, args in moved:
            getattr(task_module, name)(*args)
        sweeper.sweep(seconds=5)
        queue.run()

    for generation in (lost_submit, lost_ingest, overdue):
        generation.refresh_from_db()
        assert generation.is_terminal, timeline(generation)
        assert len(submits(fresh_sandbox, generation.account.kind)) == (0 if generation == overdue else 1)
    assert (lost_submit.status, lost_ingest.status) == ("succeeded", "succeeded")
    assert ledger(overdue) == [("reserve", 70), ("refund", 70)]
    assert_files_match_images(settings.MEDIA_ROOT)
    assert_books_clean()
