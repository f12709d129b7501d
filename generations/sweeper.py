"""The sweeper: one leased task that polls every due in-flight job over one async client, spends each
provider account's request budget, writes the answers back, and reaps what no task will move.

The lifecycle with money (create, submit, ingest, finish, fail, cancel) is `engine`; when to ask again is
`cadence`. A job's state changes only through `engine` or a conditional UPDATE here, so a second sweeper,
a webhook and a task can all touch the same job without moving money twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from contextlib import nullcontext
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from . import cadence, crypto, engine
from .models import Generation, Lease
from .providers import Outcome, ProviderError
from .providers import http as provider_http
from .signals import InWorker, WorkerStop

log = logging.getLogger(__name__)

SWEEP_SECONDS = 50  # one sweep task's lifetime; well under Q_CLUSTER["timeout"], which is under "retry"
# The sweeper's lease, renewed by a heartbeat thread every LEASE_SECONDS / 4 whatever a poll round costs: a
# sweeper killed with its cluster (SIGKILL, OOM) frees the sweep within LEASE_SECONDS (issue 10: with 75 s,
# renewed only between rounds, a dead cluster's lease kept every job unpolled past a minute).
LEASE_SECONDS = 20
# The least time from one poll round's start to the next. Jobs in their likely-done window are asked every
# 0.3 s each, so with hundreds in flight one comes due every few ms: without a floor, 500 in flight took about
# 330 rounds of three jobs each, and a round's own queries (budget, health, due, next) cost more than its
# polls. 0.1 s adds at most that to a detection; there, the sweeper's CPU fell from 26 % to 21 % of a core.
ROUND_GAP = 0.1
SWEEP_TICK = 0.2  # how often an idle sweeper looks for newly due jobs: one indexed query
# A job that no task has taken this long after it was queued (or re-driven) is queued again: the Redis broker
# loses the tasks of a killed worker, and a failed task is acknowledged. The claims make a repeat harmless.
STALE_SECONDS = 30
# How often a running sweeper reaps (a django-q2 schedule reaps every minute besides). What it finds has been
# stuck for STALE_SECONDS, or is past its deadline; each reap is five queries, 7 % of a busy sweeper's CPU
# at once a second (bench: 500 in flight).
REAP_EVERY = 5.0
MAX_MALFORMED_POLLS = 3  # unreadable poll replies in a row before the job fails with that reason
MAX_DUE = 500  # jobs one poll round takes, the longest-waiting first
WRITE_BATCH = 100  # poll answers written back per transaction
# The holder of a lease that no sweeper holds but one is on its way to: a kick queued a sweep task, or a
# sweeper handed over at the end of its run. Any sweeper may take it; no kick queues another sweep until it
# lapses (KICK_SECONDS), so a burst of submits queues one sweep, not one each (issue 9.5: ~450 sweeps that
# polled nothing per 2,000 jobs).
KICKED = "kicked"
KICK_SECONDS = 10
# A submit or ingest task that ends within this many seconds of its start, in a cluster worker, sweeps in
# place of a queued sweep when the lease is free or handed over: the sweep goes on at once rather than
# behind every submit and ingest queued on the same FIFO (issue 9.5: 18-124 s with no polling at all).
# TAKEOVER_WITHIN + SWEEP_SECONDS + a poll round's read timeout stays under Q_CLUSTER["timeout"].
TAKEOVER_WITHIN = 30
# A watched job this late has no sweeper (`nudge`): a live one polls a due job within a round or two, and
# one held back by a request budget or a 429's pause has its poll moved to when it may go.
STALLED_SECONDS = 15
HELPERS_GRACE = 5.0  # how long an ending sweep waits for its ingest threads before it leaves them running


def kick_sweeper() -> None:
    """Make sure a sweeper runs soon: nothing when one holds a live lease or one is already on its way;
    else mark the lease KICKED and queue one sweep task (of many concurrent kicks, one queues)."""
    now = timezone.now()
    if Lease.objects.named("sweeper").live(now).exists():
        return
    if mark_kicked(now):
        engine.enqueue("sweep")


def nudge(jobs) -> None:
    """Someone is watching these jobs (the studio's poll, the API). A running job whose poll is overdue by
    STALLED_SECONDS, or an in-flight job whose task's lease ran out that long ago, has no sweeper: the one
    that held the lease died with its cluster (SIGKILL, OOM). Kick one as soon as that lease has lapsed,
    rather than at the reaper's next minute. The rows in hand decide; the lease is read only for such a job."""
    cutoff = timezone.now() - timedelta(seconds=STALLED_SECONDS)
    if any(
        (
            job.status == Generation.Status.RUNNING
            and job.next_poll_at is not None
            and job.next_poll_at < cutoff
        )
        or (job.status in Generation.IN_FLIGHT and job.lease_until is not None and job.lease_until < cutoff)
        for job in jobs
    ):
        try:
            kick_sweeper()
        except DatabaseError:  # a busy database must not turn a read into an error; the next look kicks
            log.warning("could not kick a sweeper for a stalled job", exc_info=True)


def mark_kicked(now) -> bool:
    return take_lease(KICKED, now + timedelta(seconds=KICK_SECONDS), Q(expires_at__lte=now))


def acquire_lease(holder: str) -> bool:
    now = timezone.now()
    free = Q(expires_at__lte=now) | Q(holder=holder) | Q(holder=KICKED)
    return take_lease(holder, now + timedelta(seconds=LEASE_SECONDS), free)


def take_lease(holder: str, expires, free: Q) -> bool:
    """The sweeper lease for `holder` until `expires`: taken over where `free` says it may be, or made when
    there is none. False when another holds it (or made it first: another kick or a sweeper)."""
    if Lease.objects.named("sweeper").filter(free).update(holder=holder, expires_at=expires):
        return True
    try:
        with transaction.atomic():
            Lease.objects.create(name="sweeper", holder=holder, expires_at=expires)
        return True
    except IntegrityError:
        return False


def release_lease(holder: str) -> None:
    # Dated a lease period back, so a heartbeat renewal already on its way finds it over and leaves it.
    Lease.objects.named("sweeper").filter(holder=holder).update(
        expires_at=timezone.now() - timedelta(seconds=LEASE_SECONDS)
    )


def hand_over(holder: str) -> bool:
    """End this sweeper's run with work left: the lease becomes KICKED, for the next task that ends in a
    worker (`take_over`) or the sweep task queued as a fallback. Whether it was still ours to hand over."""
    return bool(
        Lease.objects.named("sweeper")
        .filter(holder=holder)
        .update(holder=KICKED, expires_at=timezone.now() + timedelta(seconds=KICK_SECONDS))
    )


def take_over(task_started: float) -> int:
    """Called by a submit or ingest task as it ends. In a cluster worker, when no sweeper holds the lease
    (it lapsed, a kick queued a sweep, or a sweeper handed over) and work waits, this worker sweeps now:
    the sweep does not wait behind the submits and ingests queued ahead of a sweep task. Polls made."""
    if not InWorker.active or WorkerStop.stopping or time.monotonic() - task_started > TAKEOVER_WITHIN:
        return 0
    now = timezone.now()
    if Lease.objects.named("sweeper").live(now).exclude(holder=KICKED).exists():
        return 0
    if Generation.objects.next_wake() is None:
        return 0
    return sweep(SWEEP_SECONDS)


def lease_holder() -> str:
    """Who holds the sweeper lease: host and process, so an operator (or a test) can tell which one."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


class Heartbeat:
    """The sweeper's lease, renewed from a thread of its own every LEASE_SECONDS / 4 while held, so a long
    poll round never lets it lapse while the sweeper lives, and a dead sweeper's lapses within LEASE_SECONDS.
    A renewal extends only a lease still live: a released one (dated in the past) stays released."""

    def __init__(self, holder: str):
        self.holder = holder
        self.held = False
        self.stop = threading.Event()

    def acquire(self) -> bool:
        self.held = acquire_lease(self.holder)
        return self.held

    def release(self) -> None:
        self.held = False
        release_lease(self.holder)

    def still_held(self) -> bool:
        """False once another sweeper holds the lease (ours lapsed: the database was out of reach)."""
        return Lease.objects.named("sweeper").live().filter(holder=self.holder).exists()

    def run(self) -> None:
        try:
            while not self.stop.wait(LEASE_SECONDS / 4):
                if not self.held:
                    continue
                now = timezone.now()
                try:
                    Lease.objects.named("sweeper").live(now).filter(holder=self.holder).update(
                        expires_at=now + timedelta(seconds=LEASE_SECONDS)
                    )
                except DatabaseError:
                    log.warning("could not renew the sweeper lease", exc_info=True)
        finally:
            connection.close()

    def start(self) -> None:
        threading.Thread(target=self.run, name="fluxweb-sweeper-lease", daemon=True).start()


def sweep(seconds: float = SWEEP_SECONDS) -> int:
    """Poll every due in-flight job concurrently, write results back, and look again every tick (a new
    submit or a webhook can make a job due at any moment); for at most `seconds`, then hand the lease over
    (`hand_over`) if work remains. Returns the number of polls made."""
    lease = Heartbeat(lease_holder())
    if not lease.acquire():
        return 0
    polls = 0
    started = time.monotonic()
    poller = Poller(settings.FLUXWEB_POLL_CONCURRENCY)
    # In a cluster worker only: elsewhere (a shell, a test) the queued ingest tasks alone download.
    helpers = IngestHelpers(settings.FLUXWEB_SWEEP_INGESTS if InWorker.active else 0)
    batch.helpers = helpers
    reaped_at = 0.0
    checked_at = time.monotonic()
    lease.start()
    try:
        while True:
            round_started = time.monotonic()
            if WorkerStop.stopping:  # the worker was told to stop: the next cluster sweeps at once
                lease.release()
                return polls
            if time.monotonic() - checked_at >= LEASE_SECONDS / 4:
                checked_at = time.monotonic()
                if not lease.still_held():
                    log.warning("the sweeper lease passed to another sweeper; this one stops")
                    return polls
            if time.monotonic() - reaped_at >= REAP_EVERY:
                reap(kick=False)
                reaped_at = time.monotonic()
            resubmit_due()
            due = list(Generation.objects.due().select_related("account")[:MAX_DUE])
            if due:
                polls += poll_batch(due, poller)
            wait = seconds_until_next()
            if wait is None:
                lease.release()
                # A job submitted between our last look and the release found the lease held; look again.
                if seconds_until_next() is None or not lease.acquire():
                    return polls
                continue
            now = time.monotonic()
            if now - started > seconds:
                lease.held = False
                if hand_over(lease.holder):
                    # The fallback when no task ends in a worker first (a quiet queue runs it at once).
                    engine.enqueue("sweep")
                return polls
            time.sleep(min(SWEEP_TICK, max(ROUND_GAP - (time.monotonic() - round_started), wait, 0.02)))
    except BaseException:
        lease.release()
        raise
    finally:
        batch.helpers = None
        helpers.close()
        lease.stop.set()
        poller.close()


def seconds_until_next() -> float | None:
    """Until the next poll or retry is due or a task's lease runs out; None when nothing waits on either."""
    wake = Generation.objects.next_wake()
    if wake is None:
        return None
    return max(0.0, (wake - timezone.now()).total_seconds())


def resubmit_due(now=None) -> int:
    """Queue the submit of every queued job whose retry time has come or whose submit lease ran out, oldest
    first and no more per account than its request budget has room for. The rest wait until the budget
    frees, rather than each taking a task only to find it spent: when a minute's budget frees, the jobs that
    waited for it are due together, and each would be put back with a "submit waits" of its own."""
    now = now or timezone.now()
    moved = 0
    rooms: dict[int, int] = {}
    waiting: dict[int, list[int]] = {}  # account -> its due submits the budget has no room for
    accounts = {}
    for generation in Generation.objects.submits_due(now).select_related("account")[:100]:
        account = accounts.setdefault(generation.account_id, generation.account)
        if account.pk not in rooms:
            rooms[account.pk] = account.budget_room(now)
        if rooms[account.pk] <= 0:
            waiting.setdefault(account.pk, []).append(generation.pk)
            continue
        rooms[account.pk] -= 1
        # Clear the retry time first: the next loop will not enqueue it again, and the submit task's claim
        # (which takes a job whose next_poll_at is empty or past) still succeeds.
        Generation.objects.filter(pk=generation.pk, status=Generation.Status.QUEUED).update(
            next_poll_at=None, lease_until=None, redriven_at=now
        )
        engine.enqueue_safely("submit", generation.pk)
        moved += 1
    for account_id, pks in waiting.items():
        # The submits queued above spend what room there was: the rest wait for the next grant to leave.
        free = accounts[account_id].budget_free_at(now, spent=True)
        Generation.objects.filter(pk__in=pks, status=Generation.Status.QUEUED, next_poll_at__lte=now).update(
            next_poll_at=max(free, now + timedelta(seconds=SWEEP_TICK))
        )
    return moved


def reap(now=None, *, kick: bool = True) -> int:
    """Find every in-flight job that no task will move, and move it from the database: a job past its
    deadline with no live task ends, fully refunded; a queued job whose submit task was lost is queued again
    (the submit claim sends it at most once, and a submit that died mid-call is resent only where the
    provider deduplicates); a finished job whose download task died or was lost is downloaded again, up to
    engine.MAX_INGEST_ATTEMPTS times; a running job with nothing due is polled. Runs in the sweeper every
    REAP_EVERY seconds and from a django-q2 schedule every minute. Returns how many jobs it moved."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=STALE_SECONDS)
    moved = 0
    for generation in Generation.objects.past_deadline(now).select_related("account")[:200]:
        in_grace = now < generation.deadline_at + timedelta(seconds=engine.INGEST_GRACE_SECONDS)
        if (
            generation.provider_done_at is not None
            and generation.status == Generation.Status.RUNNING
            and not generation.refused_host
            and in_grace
            and generation.ingest_attempts < engine.MAX_INGEST_ATTEMPTS
        ):
            continue  # the provider finished in time: its download is re-driven below
        if generation.refused_host:
            message = (
                f"The provider finished, but its files are on {generation.refused_host}, a host no admin "
                "allowed in time. Your credits are back."
            )
            code = "result_host_refused"
        elif generation.provider_done_at is not None:
            message = "The images could not be downloaded in time. Your credits are back."
            code = "download_failed"
        else:
            message = "The provider did not finish in time. Your credits are back."
            code = ProviderError.TIMEOUT
        moved += engine.fail(generation, code, message)
    moved += resubmit_due(now)
    for pk in Generation.objects.lost_submits(now, stale).values_list("pk", flat=True)[:200]:
        if Generation.objects.filter(
            pk=pk, status=Generation.Status.QUEUED, next_poll_at__isnull=True
        ).update(redriven_at=now):
            log.warning("generation %s: its submit was never taken; queued again", pk)
            engine.enqueue_safely("submit", pk)
            moved += 1
    for pk, lease in Generation.objects.lost_ingests(now, stale).values_list("pk", "lease_until")[:200]:
        if (
            Generation.objects.downloading()
            .filter(pk=pk, lease_until=lease)
            .update(lease_until=None, redriven_at=now)
        ):
            log.warning("generation %s: its download stopped or was lost; downloading again", pk)
            Generation.objects.get(pk=pk).events.create(what="download again", detail="the last try stopped")
            engine.enqueue_safely("ingest", pk)
            moved += 1
    # Running, not polled, nothing downloading: only a crash between two writes leaves this. Poll it.
    moved += Generation.objects.unpolled().update(next_poll_at=now)
    if kick and (moved or Generation.objects.due(now).exists()):
        kick_sweeper()
    return moved


class Poller:
    """One event loop and one AsyncClient for a whole sweep, so connections and TLS set-up are reused from
    round to round (a client costs ~18 ms to build, performance.md). Each round polls every due job at
    once, bounded by a semaphore (httpx degrades past ~10 in flight). Network inside the loop, ORM outside."""

    def __init__(self, limit: int):
        self.limit = limit
        self.loop = asyncio.new_event_loop()
        self.client = None

    def poll(self, calls: list) -> list:
        return self.loop.run_until_complete(self.round(calls))

    async def round(self, calls: list) -> list:
        if self.client is None:
            self.client = provider_http.async_client(self.limit)
        semaphore = asyncio.Semaphore(self.limit)
        self.seconds = [0.0] * len(calls)  # each call's time on the wire, for the account's latency

        async def one(index, adapter, call):
            async with semaphore:
                started = time.monotonic()
                try:
                    return adapter.parse_poll(await provider_http.send_async(self.client, adapter, call))
                except ProviderError as error:
                    return error
                except Exception:
                    # One job's unreadable reply is that job's problem, never the whole round's.
                    log.exception("%s: unreadable poll reply", adapter.label)
                    return unreadable(adapter)
                finally:
                    self.seconds[index] = time.monotonic() - started

        return await asyncio.gather(*(one(i, adapter, call) for i, (adapter, call) in enumerate(calls)))

    def close(self) -> None:
        if self.client is not None:
            self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


def spend_budgets(due: list[Generation], now=None) -> list[Generation]:
    """The due jobs each account's request budget lets us poll now: its queued submits keep their share
    first, then the jobs likeliest done. The rest wait, without a poll counted, until the budget has room
    (or a 429's pause ends), so the sweeper does not spin on them.
    When the budget cannot ask every job being polled once more, a poll before a job is likely done would
    buy a "not yet" and leave a job waiting for the budget to free: only the jobs likely done are asked, and
    the others come due again when they will be (`cadence.likely_done_at`)."""
    now = now or timezone.now()
    by_account: dict[int, list[Generation]] = {}
    for generation in due:
        by_account.setdefault(generation.account_id, []).append(generation)
    allowed = []
    for jobs in by_account.values():
        account = jobs[0].account
        submits = Generation.objects.awaiting_submit(account, now).count()
        polling = Generation.objects.filter(
            account=account, status=Generation.Status.RUNNING, next_poll_at__isnull=False
        ).count()
        # The budget's own room: a 429's pause (no room at all for a second or so) is not a scarce budget.
        if polling > account.budget - account.budget_spent(now) - submits:
            jobs = ripe(jobs, cadence.expected_latency(account), now)
        jobs.sort(key=cadence.likely_done_first)
        granted = account.take_requests(len(jobs), keep=submits, now=now)
        allowed += jobs[:granted]
        if granted < len(jobs):
            later = max(account.budget_free_at(now), now + timedelta(seconds=SWEEP_TICK))
            Generation.objects.filter(
                pk__in=[g.pk for g in jobs[granted:]], status=Generation.Status.RUNNING, next_poll_at__lte=now
            ).update(next_poll_at=later, paced=True)
    return allowed


def ripe(jobs: list[Generation], history: tuple[float, float] | None, now) -> list[Generation]:
    """The jobs likely done by now; each of the others is due again when it will be."""
    ready = []
    for generation in jobs:
        when = cadence.likely_done_at(generation, history)
        if when is None or when <= now:
            ready.append(generation)
        else:
            Generation.objects.filter(
                pk=generation.pk, status=Generation.Status.RUNNING, next_poll_at__lte=now
            ).update(next_poll_at=when, paced=True)
    return ready


def poll_batch(due: list[Generation], poller: Poller) -> int:
    due = spend_budgets(due)
    if not due:
        return 0
    adapters = {}
    for account in {g.account_id: g.account for g in due}.values():
        try:
            adapters[account.pk] = account.adapter()
        except crypto.KeyUnavailable as error:
            log.error("provider account %s: %s", account.slug, error)
    for generation in [g for g in due if g.account_id not in adapters]:
        # One account with an unreadable key must not stop polling for the others.
        engine.fail(
            generation,
            ProviderError.AUTH,
            f"The {generation.account.slug} provider account is misconfigured: "
            "its API key cannot be decrypted. Your credits are back.",
        )
    calls, polled = [], []
    for generation in due:
        if generation.account_id not in adapters:
            continue
        adapter = adapters[generation.account_id]
        try:
            calls.append(
                (adapter, adapter.build_poll(generation.provider_job_id, generation.poll_url or None))
            )
            polled.append(generation)
        except Exception:
            log.exception("generation %s: cannot build its poll", generation.pk)
            apply_poll(generation, unreadable(adapter), None)
    results = poller.poll(calls)
    seconds = getattr(poller, "seconds", [None] * len(results))
    for account_id in {g.account_id for g in polled}:
        mine = [i for i, g in enumerate(polled) if g.account_id == account_id]
        wire = [seconds[i] for i in mine if seconds[i] is not None]
        engine.record_health(
            polled[mine[0]].account, [results[i] for i in mine], sum(wire) / len(wire) if wire else None
        )
    histories = {}
    for generation in polled:
        if generation.account_id not in histories:
            try:
                histories[generation.account_id] = cadence.expected_latency(generation.account)
            except DatabaseError:
                histories[generation.account_id] = None
    write_back(list(zip(polled, results, strict=True)), histories)
    return len(calls)


def write_back(answers: list[tuple[Generation, Outcome | ProviderError]], histories: dict) -> None:
    """Record a round's answers: WRITE_BATCH jobs per transaction, each job in a savepoint of its own, so
    one job's failure rolls back that job only (issue 9.5: two commits per job, 14-40 ms each inside the
    cluster, made a round of 500 take up to 16 s). Every transition is still a conditional UPDATE. Should
    a batch's transaction fail as a whole (its commit, say), nothing of it was written: each of its jobs
    is then written on its own, from a fresh read of its row."""
    for start in range(0, len(answers), WRITE_BATCH):
        chunk = answers[start : start + WRITE_BATCH]
        batch.ingests, batch.detected = [], []
        try:
            with transaction.atomic():
                for generation, result in chunk:
                    record(generation, result, histories, savepoint=True)
        except DatabaseError:
            log.warning("a poll round's write-back failed; writing its jobs one by one", exc_info=True)
            batch.ingests, batch.detected = [], []
            for generation, result in chunk:
                try:
                    fresh = Generation.objects.select_related("account").get(pk=generation.pk)
                except (DatabaseError, Generation.DoesNotExist):
                    log.exception("generation %s: could not record its poll", generation.pk)
                    continue
                record(fresh, result, histories)
        finally:
            ingests, batch.ingests = batch.ingests, None
            detected, batch.detected = batch.detected, None
        for pk in ingests:  # brokers other than the ORM: told once the rows they wake for are committed
            engine.enqueue_safely("ingest", pk)
        helpers = getattr(batch, "helpers", None)
        if helpers is not None:
            for pk in detected:  # committed: the ingest's claim finds them done at the provider
                helpers.ingest(pk)


class IngestHelpers:
    """Threads in the sweeper's process that ingest the jobs it found done, at once and beside the queued
    ingest tasks: each claims the job with its conditional UPDATE, so whichever comes first downloads it and
    the other does nothing. Pending ones are dropped when the sweep ends (their queued tasks remain)."""

    def __init__(self, threads: int):
        self.pool = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fluxweb-sweep-ingest")
            if threads > 0
            else None
        )

    def ingest(self, pk: int) -> None:
        if self.pool is not None and not WorkerStop.stopping:
            self.futures = [f for f in getattr(self, "futures", []) if not f.done()]
            self.futures.append(self.pool.submit(self.run, pk))

    @staticmethod
    def run(pk: int) -> None:
        try:
            if not WorkerStop.stopping:
                engine.ingest(pk)
        except Exception:
            log.exception("generation %s: the sweeper's ingest failed; its task or the reaper goes on", pk)
        finally:
            connection.close()

    def close(self) -> None:
        # Waited for HELPERS_GRACE at most: the sweep task ends within its time whatever a download costs (up
        # to 30 s an image); one still running finishes in the worker's background, holding its job's lease.
        if self.pool is not None:
            wait_for(getattr(self, "futures", []), timeout=HELPERS_GRACE)
            self.pool.shutdown(wait=False, cancel_futures=True)


# While a batch is written: the jobs whose ingest task is queued after its commit (not on the ORM broker).
batch = threading.local()


def record(generation, result, histories: dict, *, savepoint: bool = False) -> None:
    try:
        with transaction.atomic() if savepoint else nullcontext():
            apply_poll(generation, result, histories.get(generation.account_id))
    except Exception:
        # Writing one job's result failed (a locked database, say): poll it again soon, go on.
        log.exception("generation %s: could not record its poll", generation.pk)


def unreadable(adapter) -> ProviderError:
    return ProviderError(ProviderError.MALFORMED, f"{adapter.label} sent a reply FluxWeb could not read.")


def apply_poll(
    generation: Generation,
    result: Outcome | ProviderError,
    history: tuple[float, float] | None,
) -> None:
    """One job's poll answer, in one UPDATE while it stays pending."""
    if isinstance(result, ProviderError):
        if result.permanent:
            engine.fail(generation, result.code, result.message)
        elif result.code == ProviderError.MALFORMED and generation.poll_errors + 1 >= MAX_MALFORMED_POLLS:
            engine.fail(
                generation,
                result.code,
                f"{result.message} It did so {MAX_MALFORMED_POLLS} times in a row. Your credits are back.",
            )
        else:
            generation.schedule_poll(
                2.0 if result.retry_after is None else result.retry_after,
                **({"poll_errors": F("poll_errors") + 1} if result.code == ProviderError.MALFORMED else {}),
            )
        return
    if result.state == "pending":
        fields = {"poll_errors": 0} if generation.poll_errors else {}
        if result.progress is not None:
            fields["progress"] = result.progress
        generation.schedule_poll(cadence.next_poll_delay(generation, result.progress, history), **fields)
        return
    if generation.poll_errors:
        Generation.objects.filter(pk=generation.pk).update(poll_errors=0)
    if result.state == "failed":
        engine.fail(generation, result.error.code, result.error.message)
        return
    provider_done(generation, result)


def provider_done(generation: Generation, outcome: Outcome) -> None:
    """The provider has the images: stop polling and hand the download to the ingest task, once. On the
    ORM broker the task row is written in the caller's transaction; within a write-back batch another broker
    is told after the batch commits, so the task never finds the job still being polled."""
    won = Generation.objects.filter(
        pk=generation.pk, status=Generation.Status.RUNNING, next_poll_at__isnull=False
    ).update(
        next_poll_at=None,
        image_urls=list(outcome.image_urls),
        provider_done_at=timezone.now(),
        progress=1.0,
        **({"provider_cost": outcome.cost} if outcome.cost else {}),
    )
    if won:
        generation.events.create(what="provider done", detail=f"{len(outcome.image_urls)} image(s) ready")
        ingests = getattr(batch, "ingests", None)
        if getattr(batch, "detected", None) is not None:
            batch.detected.append(generation.pk)
        if ingests is not None and "orm" not in settings.Q_CLUSTER:
            ingests.append(generation.pk)
        else:
            engine.enqueue_safely("ingest", generation.pk)


def webhook_hint(generation: Generation) -> None:
    """A verified webhook says the job changed: ask the provider now, in this request, rather than trust
    the body (reliability.md 3). If that poll fails, the job is due for the sweeper at once."""
    generation.events.create(what="webhook", detail="provider notified us; polling now")
    Generation.objects.filter(
        pk=generation.pk, status=Generation.Status.RUNNING, next_poll_at__isnull=False
    ).update(next_poll_at=timezone.now())
    generation.refresh_from_db()
    if generation.status != Generation.Status.RUNNING or generation.next_poll_at is None:
        return
    if not generation.account.take_requests(1):
        # The poll counts against the account's budget like any other (a replayed webhook buys nothing):
        # the job is due now, and the sweeper polls it when the budget has room.
        kick_sweeper()
        return
    try:
        adapter = generation.account.adapter()
        result = adapter.parse_poll(
            provider_http.send(
                adapter, adapter.build_poll(generation.provider_job_id, generation.poll_url or None)
            )
        )
    except ProviderError as error:
        result = error
    except crypto.KeyUnavailable:
        kick_sweeper()
        return
    except Exception:
        log.exception("generation %s: unreadable poll reply after a webhook", generation.pk)
        result = unreadable(generation.account.adapter_class)
    engine.record_health(generation.account, [result], None)
    apply_poll(generation, result, cadence.expected_latency(generation.account))
    kick_sweeper()
