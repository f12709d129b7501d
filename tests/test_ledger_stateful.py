"""The ledger as a Hypothesis state machine: random sequences of creates (with and without idempotency
keys), provider results, failures, timeouts, the deadline reaper, cancels, duplicate webhooks and
redelivered tasks, grants and admin adjustments. After every step the books must balance, every hold must
end exactly once, and no ledger row may ever change.

Each example runs inside a savepoint that its teardown rolls back, so examples start from the same state
on SQLite and PostgreSQL. No provider is called: creates enqueue nothing, and results are driven by calling
the engine's own terminal verbs."""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from generations import credits, engine
from generations.models import CreditAccount, Generation, LedgerEntry
from generations.providers import GenerationRequest, ProviderError
from tests.conftest import saved_files

PER_IMAGE = {1.0: 70, 2.0: 100, 4.0: 160}  # flux-2-max on PixelDojo, by megapixel tier
TERMINAL = set(Generation.TERMINAL)


class Ledger(RuleBasedStateMachine):
    user = admin = None  # set by the test below

    jobs = Bundle("jobs")

    def __init__(self):
        super().__init__()
        self.savepoint = transaction.atomic()
        self.savepoint.__enter__()
        account = credits.account_for(self.user)
        self.balance, self.reserved = account.balance, account.reserved  # what the books must say
        self.expected: dict[int, dict] = {}  # generation id -> status, hold, charge, refund, n, per image
        self.keys: dict[str, tuple] = {}  # idempotency key -> (request, generation id)
        self.rows = self.ledger_rows()

    def teardown(self):
        transaction.set_rollback(True)
        self.savepoint.__exit__(None, None, None)

    # -- helpers --------------------------------------------------------------------------------------
    @staticmethod
    def select(sql: str, *params) -> list[tuple]:
        """Plain SQL for the checks run after every step: building ORM queries would cost more than the
        checks themselves, and the file must stay quick at 500 examples."""
        tables = {"ledger": LedgerEntry, "generation": Generation, "account": CreditAccount}
        with connection.cursor() as cursor:
            cursor.execute(
                sql.format(**{name: model._meta.db_table for name, model in tables.items()}), params
            )
            return cursor.fetchall()

    def ledger_rows(self) -> dict[int, tuple]:
        rows = self.select(
            "SELECT id, user_id, kind, amount, generation_id, admin_id, note, created_at FROM {ledger}"
        )
        return {row[0]: row[1:] for row in rows}

    def generation(self, pk: int) -> Generation:
        return Generation.objects.select_related("user").get(pk=pk)

    def ended(self, pk: int, status: str, charge: int) -> None:
        """The model's view of a hold ending: `charge` paid, the rest back."""
        job = self.expected[pk]
        job.update(status=status, charged=charge, refunded=job["reserved"] - charge)
        self.balance -= charge
        self.reserved -= job["reserved"]

    def in_flight(self, pk: int) -> bool:
        return self.expected[pk]["status"] not in TERMINAL

    # -- creating -------------------------------------------------------------------------------------
    @rule(
        target=jobs,
        n=st.integers(1, 4),
        megapixels=st.sampled_from(sorted(PER_IMAGE)),
        key=st.sampled_from(["", "", "", "key-1", "key-2"]),
    )
    def create(self, n, megapixels, key):
        request = GenerationRequest(prompt="a lighthouse", model="flux-2-max", n=n, megapixels=megapixels)
        cost = PER_IMAGE[megapixels] * n
        try:
            generation, created = engine.create(
                self.user, request, provider="sb-pixeldojo", idempotency_key=key
            )
        except engine.CreateError as refused:
            if key in self.keys and self.keys[key][0] != request:
                assert refused.refusal.status == 422
            else:
                assert refused.refusal.status == 402
                assert cost > self.balance - self.reserved
            return multiple()
        if key in self.keys:
            assert not created
            assert (request, generation.pk) == self.keys[key]
            return multiple()
        assert created
        assert cost <= self.balance - self.reserved
        assert generation.credits_reserved == cost
        self.reserved += cost
        self.expected[generation.pk] = {
            "status": "queued",
            "reserved": cost,
            "charged": 0,
            "refunded": 0,
            "n": n,
            "per_image": PER_IMAGE[megapixels],
        }
        if key:
            self.keys[key] = (request, generation.pk)
        return generation.pk

    # -- the provider's side --------------------------------------------------------------------------
    @rule(pk=jobs)
    def submitted(self, pk):
        won = self.generation(pk).mark_submitted(f"job-{pk}", "", 1.0)
        assert won == (self.expected[pk]["status"] == "queued")
        if won:
            self.expected[pk]["status"] = "running"

    @rule(pk=jobs, missing=st.integers(0, 4))
    def provider_done(self, pk, missing):
        """The provider finished and ingest stored all but `missing` images (none at all: the job fails).
        On a job that already ended, this is a redelivered ingest task or a duplicate webhook."""
        job = self.expected[pk]
        generation = self.generation(pk)
        if job["status"] == "queued" and generation.mark_submitted(f"job-{pk}", "", 1.0):
            job["status"] = "running"
        stored = max(0, job["n"] - missing)
        engine.finish(generation, saved_files(stored), None)
        if stored == 0 and self.in_flight(pk):
            self.ended(pk, "failed", 0)
        elif stored and job["status"] == "running":
            self.ended(pk, "succeeded", job["reserved"] - job["per_image"] * missing)

    @rule(pk=jobs, code=st.sampled_from([ProviderError.MODERATION, ProviderError.FAILED, ProviderError.AUTH]))
    def provider_error(self, pk, code):
        was_in_flight = self.in_flight(pk)
        assert engine.fail(self.generation(pk), code, "the provider said no") == was_in_flight
        if was_in_flight:
            self.ended(pk, "failed", 0)

    @rule(pk=jobs)
    def timeout(self, pk):
        was_in_flight = self.in_flight(pk)
        assert engine.fail(self.generation(pk), ProviderError.TIMEOUT, "too slow") == was_in_flight
        if was_in_flight:
            self.ended(pk, "failed", 0)

    @rule(pk=jobs)
    def reaper_run(self, pk):
        """The job's deadline passes and the sweeper's reaper runs."""
        Generation.objects.filter(pk=pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
        engine.reap()
        if self.in_flight(pk):
            self.ended(pk, "failed", 0)
        assert Generation.objects.get(pk=pk).status == self.expected[pk]["status"]

    @rule(pk=jobs)
    def cancel(self, pk):
        was_in_flight = self.in_flight(pk)
        assert engine.cancel(self.generation(pk), self.admin) == was_in_flight
        if was_in_flight:
            self.ended(pk, "canceled", 0)

    @rule(pk=jobs, verb=st.sampled_from(["finish", "fail", "cancel", "settle", "refund", "ingest"]))
    def duplicate_delivery(self, pk, verb):
        """A duplicate webhook, a redelivered task or a second click on a job: never moves money twice,
        and a hold cannot end while its job is in flight."""
        generation = self.generation(pk)
        if verb == "ingest":
            engine.ingest(pk)  # no image URLs are waiting: nothing to do, whatever the status
            return
        if verb in ("settle", "refund") and self.in_flight(pk):
            with pytest.raises(ValueError):
                if verb == "settle":
                    credits.settle(generation, 10**6, images=4)
                else:
                    credits.refund(generation)
            return
        if not self.in_flight(pk):
            if verb == "finish":
                engine.finish(generation, saved_files(self.expected[pk]["n"]), None)
            elif verb == "fail":
                assert not engine.fail(generation, ProviderError.FAILED, "late failure")
            elif verb == "cancel":
                assert not engine.cancel(generation, self.admin)
            elif verb == "settle":
                assert not credits.settle(generation, 10**6, images=4)
            else:
                assert not credits.refund(generation)

    # -- the admin's side -----------------------------------------------------------------------------
    @rule(amount=st.integers(1, 500))
    def grant(self, amount):
        credits.grant(self.user, amount, admin=self.admin, note="top-up")
        self.balance += amount

    @rule(amount=st.integers(-600, 600).filter(bool))
    def adjust(self, amount):
        if amount < 0 and -amount > self.balance - self.reserved:
            with pytest.raises(ValueError):
                credits.adjust(self.user, amount, admin=self.admin, note="correction")
            return
        credits.adjust(self.user, amount, admin=self.admin, note="correction")
        self.balance += amount

    # -- what must always hold ------------------------------------------------------------------------
    @invariant()
    def books_are_straight(self):
        # The credit row: never negative, never holding more than it has, and what the model expects.
        [(balance, reserved)] = self.select(
            "SELECT balance, reserved FROM {account} WHERE user_id = %s", self.user.pk
        )
        assert 0 <= reserved <= balance
        assert (balance, reserved) == (self.balance, self.reserved)
        assert credits.reconcile() == []

        # No ledger row ever changes or goes away.
        rows = self.ledger_rows()
        assert {pk: rows.get(pk) for pk in self.rows} == self.rows
        self.rows = rows

        # Every hold is one reserve entry; a finished job ended it exactly once, and a job in flight not yet.
        entries: dict[int, list[tuple[str, int]]] = {}
        for _, kind, amount, generation_id, *_ in rows.values():
            if generation_id is not None:
                entries.setdefault(generation_id, []).append((kind, amount))
        jobs = self.select(
            "SELECT id, status, credits_reserved, credits_charged, credits_refunded FROM {generation}"
        )
        assert {job[0] for job in jobs} == set(self.expected)
        for pk, status, held, charged, refunded in jobs:
            job = self.expected[pk]
            kinds = sorted(kind for kind, _ in entries[pk])
            assert (status, held, charged, refunded) == (
                job["status"],
                job["reserved"],
                job["charged"],
                job["refunded"],
            )
            assert ("reserve", held) in entries[pk]
            if status in TERMINAL:
                assert charged + refunded == held
                assert kinds == sorted(
                    ["reserve"] + ["settle"] * (charged > 0) + ["refund"] * (refunded > 0 or not held)
                )
            else:
                assert kinds == ["reserve"]


def test_it_keeps_the_ledger_straight_whatever_happens(bob, alice, accounts, monkeypatch):
    monkeypatch.setattr(engine, "enqueue", lambda *args: None)
    Ledger.user, Ledger.admin = bob, alice
    run_state_machine_as_test(
        Ledger,
        settings=settings(
            max_examples=500,
            stateful_step_count=10,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
