"""The ledger as a Hypothesis state machine: random sequences of creates (with and without idempotency
keys), submits, provider results claimed through `sweeper.provider_done`, downloads run by the real
`engine.ingest` (each image delivered, expired, broken or not an image; retried after a pause), failures,
timeouts, the deadline reaper, cancels, duplicate webhooks and redelivered tasks, grants and admin
adjustments. After every step the books must balance, every hold must end exactly once, no image may be
kept that was not paid for, and no ledger row may ever change.

Each example runs inside a savepoint that its teardown rolls back, so examples start from the same state
on SQLite and PostgreSQL. No provider is called: creates enqueue nothing, and the download is a stub that
answers by the URL. The run is derandomized (the same examples every run, on every machine) and keeps no
example database; a failure prints a `@reproduce_failure` blob. FLUXWEB_HYPOTHESIS_EXPLORE=1 explores new
examples instead, saving failures under the repo-ignored `.hypothesis/`."""

import io
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from PIL import Image as PILImage

from generations import credits, engine, media, sweeper
from generations.models import CreditAccount, Generation, Image, LedgerEntry
from generations.providers import GenerationRequest, ProviderError
from generations.providers.base import Outcome
from generations.refusal import Refusal
from tests.conftest import saved_files

PER_IMAGE = {1.0: 70, 2.0: 100, 4.0: 160}  # flux-2-max on PixelDojo, by megapixel tier
TERMINAL = set(Generation.TERMINAL)
EXPLORE = os.environ.get("FLUXWEB_HYPOTHESIS_EXPLORE", "") == "1"
# bin/test runs the same derandomized examples again on PostgreSQL, where the first 150 of them are enough to
# catch what that database does differently (row locks, constraint timing) at a third of the time.
EXAMPLES = int(os.environ.get("FLUXWEB_LEDGER_EXAMPLES", "500"))

# What the file server does with each result link, by the word in its path.
DELIVERIES = ["ok", "ok", "ok", "expired", "broken", "not_image"]
FAILED_DELIVERY = {"expired": ProviderError.EXPIRED, "broken": "download_failed", "not_image": "not_image"}
# A mix, or every link broken (the download is retried after a pause, up to MAX_INGEST_ATTEMPTS times).
DELIVERED = st.one_of(
    st.lists(st.sampled_from(DELIVERIES), max_size=5), st.lists(st.just("broken"), min_size=1, max_size=4)
)


def tiny_png() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (8, 8), "teal").save(out, "PNG")
    return out.getvalue()


PNG = tiny_png()


def fake_download(url: str, kind: str, base_url: str, limit: int | None = None) -> bytes:
    """The provider's file server, without a socket: `.../<pk>-<index>-<delivery>.png`."""
    delivery = url.rsplit("-", 1)[1].removesuffix(".png")
    if delivery == "ok":
        return PNG
    if delivery == "not_image":
        return b"<html>Access denied</html>"
    raise media.MediaError(FAILED_DELIVERY[delivery], f"the file server: {delivery}")


class Ledger(RuleBasedStateMachine):
    user = admin = None  # set by the test below

    jobs = Bundle("jobs")  # every job made
    running = Bundle("running")  # jobs whose submit was won (perhaps ended since)
    finished = Bundle("finished")  # jobs whose provider_done claim was won (perhaps ended since)
    anyone = st.one_of(jobs, running, finished)  # biased to jobs further along, so sequences reach them

    def __init__(self):
        super().__init__()
        self.savepoint = transaction.atomic()
        self.savepoint.__enter__()
        account = credits.account_for(self.user)
        self.balance, self.reserved = account.balance, account.reserved  # what the books must say
        self.expected: dict[int, dict] = {}  # generation id -> the model of one job (see `create`)
        self.keys: dict[str, tuple] = {}  # idempotency key -> (request, generation id)
        self.rows = self.ledger_rows()
        self.audited = None  # what `credits.reconcile` last saw

    def teardown(self):
        # The rollback forgets the Image rows, not their files. (After a failed query the savepoint can
        # only be rolled back: leave the files then, rather than hide the failure.)
        try:
            stored = list(Image.objects.values_list("file", "thumbnail"))
        except DatabaseError:
            stored = []
        for names in stored:
            for name in names:
                default_storage.delete(name)
        transaction.set_rollback(True)
        self.savepoint.__exit__(None, None, None)

    # -- helpers --------------------------------------------------------------------------------------
    @staticmethod
    def select(sql: str, *params) -> list[tuple]:
        """Plain SQL for the checks run after every step: building ORM queries would cost more than the
        checks themselves, and the file must stay quick at 500 examples."""
        tables = {"ledger": LedgerEntry, "generation": Generation, "account": CreditAccount, "image": Image}
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

    def ended(self, pk: int, status: str, charge: int, images: int = 0) -> None:
        """The model's view of a hold ending: `charge` paid, the rest back."""
        job = self.expected[pk]
        job.update(status=status, charged=charge, refunded=job["reserved"] - charge, images=images)
        self.balance -= charge
        self.reserved -= job["reserved"]

    def in_flight(self, pk: int) -> bool:
        return self.expected[pk]["status"] not in TERMINAL

    def downloading(self, pk: int) -> bool:
        """Running, the provider done: what the ingest claim and the reaper's download check look for."""
        job = self.expected[pk]
        return job["status"] == "running" and job["done"]

    # -- creating -------------------------------------------------------------------------------------
    JOB = {
        "n": st.integers(1, 4),
        "megapixels": st.sampled_from(sorted(PER_IMAGE)),
        "advance": st.sampled_from(["queued", "running", "done", "done"]),
        "deliveries": DELIVERED,
    }

    @initialize(target=jobs, **JOB)
    def first_job(self, n, megapixels, advance, deliveries):
        """Every example starts with a job, so that most rules have one to act on from the first step."""
        return self.create(n, megapixels, "", advance, deliveries)

    @rule(target=jobs, key=st.sampled_from(["", "", "", "key-1", "key-2"]), **JOB)
    def create(self, n, megapixels, key, advance, deliveries):
        """A create; then perhaps its submit and the provider's result at once, through the same claims as
        the rules below, so that short sequences reach the download."""
        request = GenerationRequest(prompt="a lighthouse", model="flux-2-max", n=n, megapixels=megapixels)
        cost = PER_IMAGE[megapixels] * n
        try:
            generation, created = engine.create(
                self.user, request, provider="sb-pixeldojo", idempotency_key=key
            )
        except Refusal as refused:
            if key in self.keys and self.keys[key][0] != request:
                assert refused.status == 422
            else:
                assert refused.status == 402
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
            "done": False,  # the provider_done claim was won: polling stopped, links stored
            "urls": [],
            "attempts": 0,  # ingest claims won
            "leased": False,  # a download retry is pausing: no ingest may claim the job yet
            "late": False,  # past its deadline
            "images": 0,
        }
        if key:
            self.keys[key] = (request, generation.pk)
        if advance != "queued":
            self.submitted(generation.pk)
        if advance == "done":
            self.provider_done(generation.pk, deliveries)
        return generation.pk

    # -- the provider's side --------------------------------------------------------------------------
    @rule(target=running, pk=jobs)
    def submitted(self, pk):
        won = self.generation(pk).mark_submitted(f"job-{pk}", "", 1.0)
        assert won == (self.expected[pk]["status"] == "queued")
        if not won:
            return multiple()
        self.expected[pk]["status"] = "running"
        return pk

    @rule(
        target=finished,
        pk=st.one_of(running, jobs),
        deliveries=DELIVERED,
    )
    def provider_done(self, pk, deliveries):
        """A poll (or a webhook's poll) finds the job finished: the claim stops polling and stores the links
        once. Another finished reply (a duplicate webhook, a redelivered poll) must change nothing, and a
        queued or ended job cannot be claimed."""
        job = self.expected[pk]
        urls = [f"https://temp.pixeldojo.ai/r/{pk}-{i}-{d}.png" for i, d in enumerate(deliveries)]
        sweeper.provider_done(self.generation(pk), Outcome(state="succeeded", image_urls=tuple(urls)))
        if job["status"] != "running" or job["done"]:
            return multiple()
        job.update(done=True, urls=urls)
        return pk

    @rule(pk=st.one_of(finished, jobs), wait=st.booleans())
    def ingest(self, pk, wait):
        """The ingest task, first run or redelivered, perhaps after every retry's pause is over: it claims
        the job, downloads through the stub, and settles; a download that only broke is retried after a
        pause, up to MAX_INGEST_ATTEMPTS times."""
        job = self.expected[pk]
        if wait:
            self.pauses_end()
        engine.ingest(pk)
        if not self.downloading(pk) or job["leased"]:
            return  # not claimed
        job["attempts"] += 1
        if not job["urls"] or job["attempts"] > engine.MAX_INGEST_ATTEMPTS:
            self.ended(pk, "failed", 0)
            return
        deliveries = [url.rsplit("-", 1)[1].removesuffix(".png") for url in job["urls"][: job["n"]]]
        stored = deliveries.count("ok")
        if stored:
            self.ended(pk, "succeeded", job["per_image"] * stored, images=stored)
            return
        first = FAILED_DELIVERY[deliveries[0]] if deliveries else None
        if first == "download_failed" and job["attempts"] < engine.MAX_INGEST_ATTEMPTS:
            job["leased"] = True
        else:
            self.ended(pk, "failed", 0)

    def pauses_end(self):
        """Every download retry's pause is over."""
        Generation.objects.filter(lease_until__gt=timezone.now()).update(
            lease_until=timezone.now() - timedelta(seconds=1)
        )
        for job in self.expected.values():
            job["leased"] = False

    @rule(
        pk=anyone,
        code=st.sampled_from(
            [ProviderError.MODERATION, ProviderError.FAILED, ProviderError.AUTH, ProviderError.TIMEOUT]
        ),
    )
    def provider_error(self, pk, code):
        """The provider refuses or fails the job, or it times out."""
        was_in_flight = self.in_flight(pk)
        assert engine.fail(self.generation(pk), code, "the provider said no") == was_in_flight
        if was_in_flight:
            self.ended(pk, "failed", 0)

    @rule(pk=anyone)
    def reaper_run(self, pk):
        """The job's deadline passes and the reaper runs: every job past its deadline that no task holds
        ends, refunded, except a download still within its grace and its tries."""
        Generation.objects.filter(pk=pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
        self.expected[pk]["late"] = True
        sweeper.reap(kick=False)
        for other, job in self.expected.items():
            if not job["late"] or not self.in_flight(other) or job["leased"]:
                continue
            if self.downloading(other) and job["attempts"] < engine.MAX_INGEST_ATTEMPTS:
                continue
            self.ended(other, "failed", 0)

    @rule(pk=anyone)
    def cancel(self, pk):
        """Refused once the provider has finished: never a refund and the images both (issue 7, defect 1)."""
        cancellable = self.in_flight(pk) and not self.expected[pk]["done"]
        assert engine.cancel(self.generation(pk), self.admin) == cancellable
        if cancellable:
            self.ended(pk, "canceled", 0)

    @rule(pk=anyone, verb=st.sampled_from(["finish", "fail", "cancel", "settle", "refund"]))
    def duplicate_delivery(self, pk, verb):
        """A late second ingest, a duplicate webhook or a second click on a job: never moves money twice,
        and a hold cannot end while its job is in flight."""
        generation = self.generation(pk)
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
    @rule(verb=st.sampled_from(["grant", "adjust"]), amount=st.integers(-600, 600).filter(bool))
    def admin_credits(self, verb, amount):
        if verb == "grant":
            credits.grant(self.user, abs(amount), admin=self.admin, note="top-up")
            self.balance += abs(amount)
            return
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

        # No ledger row ever changes or goes away.
        rows = self.ledger_rows()
        assert {pk: rows.get(pk) for pk in self.rows} == self.rows
        self.rows = rows

        # Every hold is one reserve entry; a finished job ended it exactly once, and a job in flight not yet.
        entries: dict[int, list[tuple[str, int]]] = {}
        for _, kind, amount, generation_id, *_ in rows.values():
            if generation_id is not None:
                entries.setdefault(generation_id, []).append((kind, amount))
        images = dict(self.select("SELECT generation_id, COUNT(*) FROM {image} GROUP BY generation_id"))
        jobs = self.select(
            "SELECT id, status, credits_reserved, credits_charged, credits_refunded,"
            " provider_done_at IS NOT NULL, ingest_attempts, image_urls FROM {generation}"
        )
        # The production audit agrees, whenever anything it reads has changed (it costs more than all the
        # checks below together, and most steps are refused claims and duplicates that change nothing).
        state = (len(rows), max(rows, default=0), [job[:5] for job in jobs], sorted(images.items()))
        if state != self.audited:
            assert credits.reconcile() == []
            self.audited = state

        assert {job[0] for job in jobs} == set(self.expected)
        for pk, status, held, charged, refunded, done, attempts, urls in jobs:
            job = self.expected[pk]
            kinds = sorted(kind for kind, _ in entries[pk])
            assert (status, held, charged, refunded) == (
                job["status"],
                job["reserved"],
                job["charged"],
                job["refunded"],
            )
            # The claims: links stored once, by the first finished reply; downloads counted by their claim.
            assert (bool(done), attempts, images.get(pk, 0)) == (job["done"], job["attempts"], job["images"])
            assert (json.loads(urls) if isinstance(urls, str) else urls) == job["urls"]
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
    monkeypatch.setattr(media, "download", fake_download)
    Ledger.user, Ledger.admin = bob, alice
    run_state_machine_as_test(
        Ledger,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=10,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            derandomize=not EXPLORE,
            database=DirectoryBasedExampleDatabase(Path(__file__).parent.parent / ".hypothesis" / "examples")
            if EXPLORE
            else None,
            print_blob=True,
        ),
    )
