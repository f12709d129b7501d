"""A django-q2 worker told to stop (issue 10, bug 1): idle or sweeping, it leaves at once; running a submit or
a download, it finishes that task and starts no other."""

from __future__ import annotations

import os
import signal

import pytest

from generations import signals, tasks


@pytest.fixture
def worker_handlers():
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    signals.stop_worker_on_signal(sender="django_q", proc_name="test")
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    signals.WorkerStop.stopping, signals.WorkerStop.task = False, None


def started(func) -> None:
    signals.refuse_tasks_once_stopping(sender="django_q", func=func, task={"args": ()})


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_idle_worker_leaves_at_once(worker_handlers, signum):
    with pytest.raises(SystemExit):
        os.kill(os.getpid(), signum)


def test_a_sweeping_worker_leaves_at_once(worker_handlers):
    started(tasks.sweep)
    with pytest.raises(SystemExit):
        os.kill(os.getpid(), signal.SIGINT)


def test_a_submitting_worker_finishes_its_task_and_starts_no_other(worker_handlers):
    started(tasks.submit)
    os.kill(os.getpid(), signal.SIGINT)  # no exit in the middle of the provider call
    assert signals.WorkerStop.stopping

    signals.forget_the_task(sender="django_q", func=tasks.submit, task={})
    with pytest.raises(SystemExit):
        started(tasks.ingest)  # a task fetched before the stop stays in the broker
