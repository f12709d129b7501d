"""SQLite with a fair queue for its one writer (the ENGINE `fluxweb.sqlite`).

SQLite lets one connection write at a time; FluxWeb's transactions are `BEGIN IMMEDIATE`, so each takes that
lock at once or waits for it. SQLite's own wait (the busy handler behind `timeout`) sleeps and retries in
growing steps of up to 100 ms, so a writer that has waited a while sleeps on after the lock is free while a
newcomer takes it. Under 20 API clients that lottery made a create's p95 6x its p50 (docs/benchmarks.md).

Here every writer, a transaction or a single write outside one, first waits in a queue: within a process on
a thread lock whose holder wakes the next waiter when it lets go, between processes on an advisory `flock`
beside the database, tried every millisecond by at most one thread per process. It gives up after the
same `timeout`, with SQLite's own "database is locked". Readers never queue (WAL lets them read beside the
writer), and the lock is held exactly as long as SQLite's own write lock would be.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time

from django.db.backends.sqlite3 import base
from django.db.utils import OperationalError

POLL = 0.001  # seconds between tries at the file lock while another process writes
WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class WriterQueue:
    """The queue for one database file in one process: a thread lock, then `flock` on `<db>-writers`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        # A forked child must not share its parent's open file (the two would hold one flock), nor inherit
        # a thread lock that a parent thread held at the moment of the fork.
        self.threads = threading.Lock()
        self.fd: int | None = None

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self.threads.acquire(timeout=timeout):
            return False
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            while True:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(POLL)
        except BaseException:
            self.threads.release()
            raise
        self.threads.release()
        return False

    def release(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.threads.release()


queues: dict[str, WriterQueue] = {}
queues_lock = threading.Lock()


def queue_for(database: str) -> WriterQueue:
    path = os.path.abspath(database) + "-writers"
    with queues_lock:
        if path not in queues:
            queues[path] = WriterQueue(path)
        return queues[path]


class DatabaseWrapper(base.DatabaseWrapper):
    queued: WriterQueue | None = None  # the queue this connection holds, if it holds it

    def create_cursor(self, name=None):
        cursor = self.connection.cursor(factory=QueuedCursor)
        cursor.wrapper = self
        return cursor

    def enter_queue(self) -> None:
        if self.queued is not None or self.is_in_memory_db():
            return
        queue = queue_for(str(self.settings_dict["NAME"]))
        if not queue.acquire(float(self.settings_dict["OPTIONS"].get("timeout", 5))):
            raise OperationalError("database is locked")
        self.queued = queue

    def leave_queue(self) -> None:
        queue, self.queued = self.queued, None
        if queue is not None:
            queue.release()

    def needs_queue(self, sql: str) -> bool:
        """A write outside a transaction takes the queue for its own statement; reads never do, and inside
        a transaction the queue is held already."""
        return (
            self.queued is None and not self.in_atomic_block and sql.lstrip()[:7].upper().startswith(WRITES)
        )

    def _start_transaction_under_autocommit(self):
        self.enter_queue()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self.leave_queue()
            raise

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self.leave_queue()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self.leave_queue()

    def _close(self):
        try:
            return super()._close()
        finally:
            self.leave_queue()


class QueuedCursor(base.SQLiteCursorWrapper):
    wrapper: DatabaseWrapper

    def execute(self, query, params=None):
        return self.queued(super().execute, query, params)

    def executemany(self, query, param_list):
        return self.queued(super().executemany, query, param_list)

    def queued(self, run, query, params):
        if not self.wrapper.needs_queue(query):
            return run(query, params)
        self.wrapper.enter_queue()
        try:
            return run(query, params)
        finally:
            self.wrapper.leave_queue()
