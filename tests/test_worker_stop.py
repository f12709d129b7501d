"""A django-q2 worker told to stop (issue 10, bug 1): the sweeper ends at its next tick and lets its lease
go, a submit or download finishes, and a task fetched afterwards does nothing; the worker itself stays to take the
cluster's STOP (a worker gone early left the cluster's stop waiting for good on its full task queue)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from generations import engine, signals, sweeper, tasks
from generations.models import Lease


@pytest.fixture
def worker_handlers():
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    signals.stop_worker_on_signal(sender="django_q", proc_name="test")
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    signals.WorkerStop.stopping = False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_idle_or_busy_worker_notes_the_stop_and_goes_on(worker_handlers, signum):
    os.kill(os.getpid(), signum)  # no exception: a submit or download running finishes
    assert signals.WorkerStop.stopping


def test_the_sweeper_ends_at_its_next_tick_and_lets_its_lease_go(
    worker_handlers, db, running_job, monkeypatch
):
    polls = []

    def poll(due, poller):
        polls.append(len(due))
        os.kill(os.getpid(), signal.SIGINT)  # while polling: the batch is written back first
        return len(due)

    monkeypatch.setattr(sweeper, "poll_batch", poll)
    started = time.monotonic()

    assert sweeper.sweep(seconds=30) == 1

    assert polls == [1] and time.monotonic() - started < 5
    lease = Lease.objects.get(name="sweeper")
    assert lease.expires_at <= engine.timezone.now()  # released: the next cluster sweeps at once


def test_tasks_fetched_after_the_stop_do_nothing(worker_handlers, db, monkeypatch):
    called = []
    for module, name in ((engine, "submit"), (engine, "ingest"), (sweeper, "sweep"), (sweeper, "reap")):
        monkeypatch.setattr(module, name, lambda *args, name=name: called.append(name))
    os.kill(os.getpid(), signal.SIGINT)

    tasks.submit(1), tasks.ingest(1), tasks.sweep(), tasks.reap()

    assert called == []


@pytest.fixture
def running_job(bob, accounts):
    from generations.models import Generation, Prompt

    return Generation.objects.create(
        user=bob,
        prompt=Prompt.remember("a lighthouse", bob),
        model="flux-2-max",
        account=accounts["apiframe"],
        status="running",
        provider_job_id="job-1",
        next_poll_at=engine.timezone.now(),
    )
