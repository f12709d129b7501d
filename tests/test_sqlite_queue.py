"""The SQLite backend's writer queue (`fluxweb.sqlite`): writers of one database wait their turn in a queue
instead of in SQLite's sleeping busy handler, whether they are threads, forked processes or single writes
outside a transaction, and give up after the database's `timeout` with SQLite's own error. Each test opens
a database file of its own through the backend, so it runs on either pass of the suite."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
from django.db import connections, transaction
from django.db.utils import OperationalError

from fluxweb.sqlite.base import queue_for

ALIAS = "queue_test"


@pytest.fixture
def database(tmp_path, django_db_blocker):
    """`connections[ALIAS]`: a fresh file through `fluxweb.sqlite`, set up as the app sets up SQLite but
    with a 1 s timeout, outside the test database. Each thread gets its own connection, as in the app."""
    with django_db_blocker.unblock():
        yield from open_database(tmp_path)


def open_database(tmp_path):
    name = tmp_path / "queue.sqlite3"
    config = {
        "ENGINE": "fluxweb.sqlite",
        "NAME": name,
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 1, "init_command": "PRAGMA journal_mode=WAL"},
    }
    connections.settings[ALIAS] = connections.configure_settings({"default": {}, ALIAS: config})[ALIAS]
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, who TEXT)")
    yield name
    connections[ALIAS].close()
    del connections[ALIAS]
    del connections.settings[ALIAS]


def insert(who: str) -> None:
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("INSERT INTO t (who) VALUES (%s)", [who])


def rows() -> list[str]:
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("SELECT who FROM t ORDER BY k")
        return [who for (who,) in cursor.fetchall()]


def in_thread(target, *args) -> threading.Thread:
    def run():
        try:
            target(*args)
        finally:
            connections[ALIAS].close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_many_writers_each_get_their_turn_well_within_the_timeout(database):
    """8 threads x 15 transactions that each hold the lock ~10 ms: a fair queue makes each wait at most
    ~7 turns (~70 ms) against the 1 s timeout. SQLite's busy handler, which sleeps up to 100 ms a try while
    newcomers take the lock, lets some writer miss its turn for a whole second now and then."""
    errors: list[str] = []

    def writer(k: int) -> None:
        for i in range(15):
            try:
                with transaction.atomic(using=ALIAS):
                    insert(f"{k}-{i}")
                    time.sleep(0.01)
            except OperationalError as error:
                errors.append(str(error))

    threads = [in_thread(writer, k) for k in range(8)]
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(rows()) == 8 * 15


def test_a_writer_waits_for_the_transaction_before_it_then_writes(database):
    order: list[str] = []
    holding = threading.Event()

    def first() -> None:
        with transaction.atomic(using=ALIAS):
            insert("first")
            holding.set()
            time.sleep(0.3)
            order.append("first committed")

    def second() -> None:
        holding.wait()
        insert("second")  # a single write outside any transaction queues too
        order.append("second wrote")

    threads = [in_thread(first), in_thread(second)]
    for thread in threads:
        thread.join()
    assert order == ["first committed", "second wrote"]
    assert rows() == ["first", "second"]


def test_a_writer_gives_up_after_the_timeout_with_sqlites_own_error(database):
    holding, done = threading.Event(), threading.Event()
    failures: list[tuple[str, float]] = []

    def holder() -> None:
        with transaction.atomic(using=ALIAS):
            insert("holder")
            holding.set()
            done.wait(10)

    def waiter(how: str) -> None:
        holding.wait()
        started = time.monotonic()
        try:
            if how == "transaction":
                with transaction.atomic(using=ALIAS):
                    insert(how)
            else:
                insert(how)
        except OperationalError as error:
            failures.append((str(error), time.monotonic() - started))

    hold = in_thread(holder)
    for how in ("transaction", "single write"):
        in_thread(waiter, how).join()
    done.set()
    hold.join()
    assert [message for message, _ in failures] == ["database is locked"] * 2
    assert all(waited >= 0.95 for _, waited in failures)  # the whole timeout, not a first failed try
    insert("after")
    assert rows() == ["holder", "after"]  # neither half-wrote; the queue is free again


def test_reads_do_not_queue(database):
    holding, done = threading.Event(), threading.Event()
    seen: list[list[str]] = []

    def holder() -> None:
        with transaction.atomic(using=ALIAS):
            insert("uncommitted")
            holding.set()
            done.wait(10)

    hold = in_thread(holder)
    holding.wait()
    reader = in_thread(lambda: seen.append(rows()))
    reader.join(timeout=0.5)  # well inside the 1 s timeout: a queued read would still be waiting
    done.set()
    hold.join()
    assert seen == [[]]


def try_in_child(path: str, results) -> None:
    queue = queue_for(path)
    results.put(queue.acquire(0.2))


def test_a_forked_process_queues_behind_its_parent_and_gets_a_lock_of_its_own(database):
    """django-q2 forks its workers: a child must neither share the parent's `flock` (it would write beside
    it) nor inherit a thread lock the parent held at the fork (it could never write)."""
    fork = multiprocessing.get_context("fork")
    results = fork.Queue()
    queue = queue_for(str(database))
    assert queue.acquire(1)
    try:
        child = fork.Process(target=try_in_child, args=(str(database), results))
        child.start()
        child.join(10)
        assert results.get(timeout=5) is False, "the child took the lock its parent holds"
        other_thread: list[bool] = []
        in_thread(lambda: other_thread.append(queue.acquire(0.2))).join()
        assert other_thread == [False]
    finally:
        queue.release()
    child = fork.Process(target=try_in_child, args=(str(database), results))
    child.start()
    child.join(10)
    assert results.get(timeout=5) is True
