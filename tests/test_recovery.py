"""Nothing lost, nothing free: each engine defect found from the outside (issue 7), and the reaper that
finds any job no task will move. Each test names the defect it guards; each failed on the engine before it."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from generations import credits, engine, media, sweeper
from generations.models import Generation, Image, LedgerEntry
from generations.providers import GenerationRequest, Outcome
from generations.refusal import Refusal
from tests.conftest import KEYS, saved_files


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """Retries and reaper passes at test speed; the rules are the same."""
    monkeypatch.setattr(engine, "INGEST_RETRY_PAUSE", 0.02)
    monkeypatch.setattr(sweeper, "REAP_EVERY", 0.02)


def request(**overrides) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "a lighthouse at dusk", "model": "flux-2-max"} | overrides))


def submits(sandbox, kind: str) -> list:
    return [r for r in sandbox.requests if r.method == "POST" and r.provider == kind]


@pytest.fixture
def files_on_disk(tmp_path, settings):
    """The image files this test wrote: it gets a media folder of its own (the session's is shared with
    other tests and other xdist workers)."""
    root = tmp_path / "media"
    settings.MEDIA_ROOT = root
    settings.STORAGES = settings.STORAGES | {
        "default": settings.STORAGES["default"] | {"OPTIONS": {"location": root}}
    }
    return lambda: sorted(p for p in root.rglob("*") if p.is_file())


def provider_done(bob, drain, slug: str = "sb-vtrix", **overrides) -> Generation:
    """A job the provider has finished, whose download task is queued but has not run."""
    generation, _ = engine.create(bob, request(**overrides), provider=slug)
    drain.queue.clear()
    engine.submit(generation.pk)
    sweeper.sweep(seconds=5)
    generation.refresh_from_db()
    assert generation.provider_done_at is not None, generation.events.values_list("what", "detail")
    assert ("ingest", (generation.pk,)) in drain.queue
    drain.queue.clear()
    return generation


def assert_refunded(generation: Generation, code: str | None = None) -> None:
    generation.refresh_from_db()
    assert generation.status == "failed", (generation.status, generation.error_message)
    if code:
        assert generation.error_code == code, generation.error_message
    assert (generation.credits_charged, generation.credits_refunded) == (0, generation.credits_reserved)
    assert not generation.images.exists()
    assert credits.reconcile() == []


# -- 1. a cancel racing the download ------------------------------------------------------------------------
def test_a_cancel_after_the_provider_finished_is_refused_and_the_images_are_paid_for(
    bob, accounts, drain, client
):
    generation = provider_done(bob, drain)
    client.force_login(bob)
    answer = client.post(f"/api/v1/generations/{generation.pk}/cancel")
    assert answer.status_code == 409
    assert "finished" in answer.json()["error"]["message"]
    assert not engine.cancel(generation, bob)
    engine.ingest(generation.pk)
    generation.refresh_from_db()
    assert generation.status == "succeeded"
    assert generation.credits_charged == generation.credits_reserved > 0
    assert generation.images.count() == 1
    assert credits.reconcile() == []


def test_a_cancel_during_a_synchronous_submit_keeps_no_image(
    bob, accounts, drain, monkeypatch, files_on_disk
):
    """MaxAPI answers with the images; a cancel that won while the call ran gets its refund and no image."""
    real = engine.with_heartbeat
    generation, _ = engine.create(bob, request(model="flux-plus"), provider="sb-maxapi")

    def cancel_meanwhile(work, beat, every=None):
        result = real(work, beat, every)
        assert engine.cancel(Generation.objects.get(pk=generation.pk), bob)
        return result

    monkeypatch.setattr(engine, "with_heartbeat", cancel_meanwhile)
    drain()
    generation.refresh_from_db()
    assert generation.status == "canceled"
    assert (generation.credits_charged, generation.credits_refunded) == (0, generation.credits_reserved)
    assert not Image.objects.exists() and files_on_disk() == []
    assert credits.reconcile() == []


def test_an_ingest_that_loses_to_a_failure_deletes_its_files(
    bob, accounts, drain, monkeypatch, files_on_disk
):
    """The job ended (here: failed by hand, as a reaper racing a slow worker would) while the files were
    being written: no Image row, no file, the refund stands."""
    generation = provider_done(bob, drain)
    real = engine.with_heartbeat

    def fail_meanwhile(work, beat, every=None):
        result = real(work, beat, every)
        assert engine.fail(Generation.objects.get(pk=generation.pk), "timeout", "too slow")
        return result

    monkeypatch.setattr(engine, "with_heartbeat", fail_meanwhile)
    engine.ingest(generation.pk)
    assert_refunded(generation, "timeout")
    assert files_on_disk() == []


def test_a_duplicate_ingest_keeps_one_set_of_files(bob, accounts, drain, monkeypatch, files_on_disk):
    """Defect 9: two ingests of one job wrote files for both before the duplicate insert failed."""
    generation = provider_done(bob, drain)
    real = engine.with_heartbeat
    nested = []

    def second_ingest_meanwhile(work, beat, every=None):
        result = real(work, beat, every)
        if not nested:
            nested.append(True)
            # The first worker's lease ran out (it stalled); the reaper's re-drive starts a second ingest.
            Generation.objects.filter(pk=generation.pk).update(
                lease_until=timezone.now() - timedelta(seconds=1)
            )
            engine.ingest(generation.pk)
        return result

    monkeypatch.setattr(engine, "with_heartbeat", second_ingest_meanwhile)
    engine.ingest(generation.pk)
    generation.refresh_from_db()
    assert generation.status == "succeeded"
    assert generation.images.count() == 1
    assert len(files_on_disk()) == 2  # one original, one thumbnail
    assert credits.reconcile() == []


# -- 2 and 8. dead downloads, lost tasks, slow recovery -------------------------------------------------------
def test_a_download_whose_worker_died_is_downloaded_again_once_its_lease_runs_out(bob, accounts, drain):
    generation = provider_done(bob, drain)
    # A worker claimed the download and was killed (kill -9, the task timeout): the lease is not renewed.
    now = timezone.now()
    Generation.objects.filter(pk=generation.pk).update(
        lease_until=now + timedelta(seconds=engine.TASK_LEASE_SECONDS), ingest_attempts=1
    )
    assert sweeper.reap() == 0 and drain.queue == []  # the lease is live: someone is on it
    Generation.objects.filter(pk=generation.pk).update(lease_until=now - timedelta(seconds=1))
    assert sweeper.reap() == 1
    assert ("ingest", (generation.pk,)) in drain.queue
    drain()
    generation.refresh_from_db()
    assert generation.status == "succeeded" and generation.ingest_attempts == 2
    assert "download again" in generation.events.values_list("what", flat=True)
    assert credits.reconcile() == []


def test_a_lost_download_task_is_queued_again_once(bob, accounts, drain):
    """The Redis broker loses a killed worker's queued task; a failed task is acknowledged, not redelivered."""
    generation = provider_done(bob, drain)
    assert sweeper.reap() == 0  # just handed over: the ingest task may still be in the queue
    stale = timezone.now() - timedelta(seconds=sweeper.STALE_SECONDS + 1)
    Generation.objects.filter(pk=generation.pk).update(provider_done_at=stale)
    assert sweeper.reap() == 1
    assert sweeper.reap() == 0  # not again until STALE_SECONDS pass
    assert [t for t in drain.queue if t[0] == "ingest"] == [("ingest", (generation.pk,))]
    drain()
    generation.refresh_from_db()
    assert generation.status == "succeeded"


def test_a_download_that_keeps_dying_ends_refunded(bob, accounts, drain):
    generation = provider_done(bob, drain)
    Generation.objects.filter(pk=generation.pk).update(
        ingest_attempts=engine.MAX_INGEST_ATTEMPTS, lease_until=timezone.now() - timedelta(seconds=1)
    )
    sweeper.reap()
    drain()
    assert_refunded(generation, "download_failed")


def test_a_download_pending_past_the_deadline_is_not_held_forever(bob, accounts, drain):
    """Defect 2: the deadline sweep skipped running jobs with no next poll time, so a job whose download
    died held its credits (and a place in the user's concurrency quota) for good."""
    generation = provider_done(bob, drain)
    past = timezone.now() - timedelta(seconds=engine.INGEST_GRACE_SECONDS + 1)
    Generation.objects.filter(pk=generation.pk).update(deadline_at=past)
    sweeper.reap()
    assert_refunded(generation, "download_failed")
    assert "could not be downloaded in time" in generation.error_message


@pytest.mark.parametrize("url", ["http://[::1/x.png", "http://127.0.0.1/\x01.png", "", None, 42])
def test_a_malformed_result_url_ends_the_job_refunded(url, bob, accounts, drain):
    generation = provider_done(bob, drain)
    Generation.objects.filter(pk=generation.pk).update(image_urls=[url])
    engine.ingest(generation.pk)
    assert_refunded(generation, "forbidden_url")


def test_an_ingest_that_raises_is_tried_again_then_ends_refunded(bob, accounts, drain, monkeypatch):
    """An unexpected exception in the download (a bug, an odd library error) is that image's failure."""
    generation = provider_done(bob, drain)

    def broken(data, **options):
        raise RuntimeError("boom")

    monkeypatch.setattr(media, "check_image", broken)
    drain.queue.append(("ingest", (generation.pk,)))
    drain()
    generation.refresh_from_db()
    assert generation.ingest_attempts == engine.MAX_INGEST_ATTEMPTS
    assert_refunded(generation, "download_failed")
    assert "boom" not in generation.error_message


def test_a_submit_lost_with_its_worker_is_found_within_a_lease(bob, accounts, drain, fresh_sandbox):
    """Defect 8: a submit whose worker died was found only at the deadline (600 s) or after 136 s."""
    generation, _ = engine.create(bob, request(), provider="sb-vtrix")
    drain.queue.clear()
    now = timezone.now()
    # What a claimed submit looks like when its worker is killed mid-call (the provider never saw it).
    lease = now + timedelta(seconds=engine.TASK_LEASE_SECONDS)
    Generation.objects.filter(pk=generation.pk).update(attempts=1, next_poll_at=lease, lease_until=lease)
    assert sweeper.reap() == 0 and drain.queue == []
    Generation.objects.filter(pk=generation.pk).update(
        next_poll_at=now - timedelta(seconds=1), lease_until=now - timedelta(seconds=1)
    )
    sweeper.reap()
    assert ("submit", (generation.pk,)) in drain.queue
    drain()
    # Vtrix cannot tell a repeat from a new paid job: not resent, refunded.
    assert_refunded(generation, "submit_lost")
    assert submits(fresh_sandbox, "vtrix") == []


def test_a_submit_lost_on_apiframe_is_resent_under_the_same_key(bob, accounts, drain, fresh_sandbox):
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    drain()
    first = submits(fresh_sandbox, "apiframe")
    assert len(first) == 1
    generation.refresh_from_db()
    assert generation.status == "succeeded"
    # The same job again, as if the first worker had died after sending: the provider sees the same key.
    other, _ = engine.create(bob, request(prompt="a second lighthouse"), provider="sb-apiframe")
    drain.queue.clear()
    past = timezone.now() - timedelta(seconds=1)
    Generation.objects.filter(pk=other.pk).update(attempts=1, next_poll_at=past, lease_until=past)
    sweeper.reap()
    drain()
    other.refresh_from_db()
    assert other.status == "succeeded", other.error_message
    sent = submits(fresh_sandbox, "apiframe")[1:]
    assert (
        len(sent) == 1
        and sent[0].headers["Idempotency-Key"] == f"fluxweb-{other.pk}-{other.webhook_token[:16]}"
    )


def test_a_long_call_renews_its_lease(bob, accounts, drain, fresh_sandbox, monkeypatch):
    """MaxAPI holds a submit until the image is made; the lease is renewed so the reaper leaves it alone."""
    fresh_sandbox.set_latency(0.6, 0.6)
    monkeypatch.setattr(engine, "HEARTBEAT_SECONDS", 0.1)
    generation, _ = engine.create(bob, request(model="flux-plus"), provider="sb-maxapi")
    drain.queue.clear()
    real, leases = engine.with_heartbeat, []

    def watch(work, beat, every=None):
        def renew():
            beat()
            leases.append(Generation.objects.get(pk=generation.pk).lease_until)

        return real(work, renew, every)

    monkeypatch.setattr(engine, "with_heartbeat", watch)
    engine.submit(generation.pk)
    assert len(leases) >= 3
    assert leases == sorted(leases) and leases[-1] > leases[0]


def test_with_heartbeat_beats_while_the_work_runs_and_returns_its_result():
    import time

    beats = []
    assert engine.with_heartbeat(lambda: time.sleep(0.35) or "done", lambda: beats.append(1), 0.1) == "done"
    assert 2 <= len(beats) <= 4
    with pytest.raises(ValueError):
        engine.with_heartbeat(lambda: int("x"), lambda: None, 0.1)


# -- 3. one job's garbage reply ------------------------------------------------------------------------------
def test_one_unreadable_poll_reply_fails_only_its_own_job(bob, accounts, drain, monkeypatch):
    """Defect 3: a parser exception escaped the sweep's gather and stopped polling for every job."""
    adapter_class = accounts["apiframe"].adapter_class

    def garbage(self, reply):
        raise TypeError("'dict' object has no attribute 'lower'")

    monkeypatch.setattr(adapter_class, "parse_poll", garbage)
    bad, _ = engine.create(bob, request(), provider="sb-apiframe")
    good, _ = engine.create(bob, request(), provider="sb-vtrix")
    drain()
    bad.refresh_from_db()
    good.refresh_from_db()
    assert good.status == "succeeded"
    assert_refunded(bad, "malformed_response")
    assert "could not read" in bad.error_message and "lower" not in bad.error_message
    assert bad.polls == sweeper.MAX_MALFORMED_POLLS - 1


def test_a_readable_reply_resets_the_count_of_unreadable_ones(bob, accounts, drain):
    generation, _ = engine.create(bob, request(), provider="sb-vtrix")
    drain.queue.clear()
    engine.submit(generation.pk)
    generation.refresh_from_db()
    unreadable = sweeper.unreadable(generation.account.adapter_class)
    for _ in range(sweeper.MAX_MALFORMED_POLLS - 1):
        sweeper.apply_poll(generation, unreadable, None)
        generation.refresh_from_db()
    sweeper.apply_poll(generation, Outcome(state="pending", progress=0.5), None)
    generation.refresh_from_db()
    assert generation.poll_errors == 0
    sweeper.apply_poll(generation, unreadable, None)
    generation.refresh_from_db()
    assert generation.status == "running"


# -- 5. a committed create always runs ------------------------------------------------------------------------
def test_a_create_whose_enqueue_fails_leaves_no_job_and_no_hold(bob, accounts, monkeypatch, client, settings):
    """Defect 5: the hold committed, the client got a 500, and the job waited with no task to run it. On
    the ORM broker the task row is written in the create's transaction (the enqueue itself is faked here,
    so this runs whatever broker the suite uses)."""
    settings.Q_CLUSTER = {k: v for k, v in settings.Q_CLUSTER.items() if k != "redis"} | {"orm": "default"}

    def locked(*args):
        raise OperationalError("database is locked")

    monkeypatch.setattr(engine, "enqueue", locked)
    with pytest.raises(Refusal) as refused:
        engine.create(bob, request(), provider="sb-vtrix")
    assert refused.value.status == 503
    assert not Generation.objects.exists()
    assert (credits.account_for(bob).balance, credits.account_for(bob).reserved) == (1000, 0)
    client.force_login(bob)
    answer = client.post(
        "/api/v1/generations",
        {"prompt": "a lighthouse", "model": "flux-2-max", "provider": "sb-vtrix"},
        content_type="application/json",
    )
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "busy"
    assert not Generation.objects.exists() and credits.reconcile() == []


@pytest.mark.django_db(transaction=True)
def test_on_the_orm_broker_the_submit_task_commits_or_rolls_back_with_the_job(bob, accounts, settings):
    from django_q.models import OrmQ

    assert "orm" in settings.Q_CLUSTER or pytest.skip("the Redis broker cannot share a transaction")

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        engine.create(bob, request(), provider="sb-vtrix")
        assert OrmQ.objects.count() == 1
        raise Abort
    assert OrmQ.objects.count() == 0 and not Generation.objects.exists()
    generation, _ = engine.create(bob, request(), provider="sb-vtrix")
    assert [task.name() for task in OrmQ.objects.all()] == [f"submit-{generation.pk}"]
    OrmQ.objects.all().delete()


def test_on_another_broker_a_lost_enqueue_is_repaired_by_the_reaper(
    bob, accounts, drain, monkeypatch, settings
):
    settings.Q_CLUSTER = {k: v for k, v in settings.Q_CLUSTER.items() if k != "orm"} | {"redis": "redis://x"}
    sent = []

    def down(name, *args):
        raise ConnectionError("the broker is down")

    monkeypatch.setattr(engine, "enqueue", down)
    generation, created = engine.create(bob, request(), provider="sb-vtrix")
    with connection.cursor():  # the commit: the on-commit enqueue fails and is logged, not raised
        drain()
    assert created and Generation.objects.get(pk=generation.pk).status == "queued"
    monkeypatch.setattr(engine, "enqueue", lambda name, *args: sent.append((name, args)))
    assert sweeper.reap() == 0  # young: its task may still arrive
    stale = timezone.now() - timedelta(seconds=sweeper.STALE_SECONDS + 1)
    Generation.objects.filter(pk=generation.pk).update(created_at=stale)
    assert sweeper.reap() == 1
    assert sweeper.reap() == 0  # once per STALE_SECONDS
    assert [task for task in sent if task[0] == "submit"] == [("submit", (generation.pk,))]


# -- 7. provider text that carries a credential ----------------------------------------------------------------
def test_a_provider_error_carrying_the_key_is_stored_masked(bob, accounts, drain, mock_http, client):
    key = KEYS["vtrix"]
    mock_http(lambda req: httpx.Response(401, json={"message": f"Invalid API key {key}"}))
    generation, _ = engine.create(bob, request(), provider="sb-vtrix")
    drain()
    generation.refresh_from_db()
    assert generation.status == "failed"
    client.force_login(bob)
    shown = [
        generation.error_message,
        *generation.events.values_list("detail", flat=True),
        *LedgerEntry.objects.values_list("note", flat=True),
        client.get(f"/api/v1/generations/{generation.pk}").content.decode(),
        client.get(f"/jobs/{generation.pk}").content.decode(),
    ]
    assert not [text for text in shown if key in text]


@pytest.mark.parametrize(
    "text, hidden",
    [
        ("Invalid API key sk-test-key-9876543", "sk-test-key-9876543"),
        ("auth failed: Bearer eyJhbGciOi.J9x2.abc123", "eyJhbGciOi.J9x2.abc123"),
        ('{"x-key": "0f1e2d3c4b5a69788796"}', "0f1e2d3c4b5a69788796"),
        ("token=abcd1234efgh5678", "abcd1234efgh5678"),
    ],
)
def test_redact_hides_anything_that_looks_like_a_credential(text, hidden):
    assert hidden not in engine.redact(text)
    assert "[redacted]" in engine.redact(text)


@pytest.mark.parametrize(
    "text",
    ["The API key expired; ask an admin.", "Prompt refused by moderation.", "HTTP 500 from the server."],
)
def test_redact_leaves_plain_words_alone(text):
    assert engine.redact(text) == text


def test_redact_hides_the_accounts_own_key_whatever_it_looks_like(accounts):
    account = accounts["pixeldojo"]
    assert engine.redact(f"bad key {KEYS['pixeldojo']}!", account) == "bad key [redacted]!"


# -- claims that must stay conditional ----------------------------------------------------------------------
def test_provider_done_hands_the_download_over_once(bob, accounts, drain):
    generation, _ = engine.create(bob, request(), provider="sb-vtrix")
    drain.queue.clear()
    engine.submit(generation.pk)
    generation.refresh_from_db()
    outcome = Outcome(state="succeeded", image_urls=("http://127.0.0.1:1/x.png",))
    sweeper.provider_done(generation, outcome)
    sweeper.provider_done(generation, outcome)  # a duplicate webhook, a second poll
    assert drain.queue == [("ingest", (generation.pk,))]


def test_a_redelivered_submit_never_resends_a_running_or_finished_job(bob, accounts, drain, fresh_sandbox):
    generation, _ = engine.create(bob, request(), provider="sb-pixeldojo")
    drain.queue.clear()
    engine.submit(generation.pk)
    Generation.objects.filter(pk=generation.pk).update(next_poll_at=timezone.now() - timedelta(seconds=1))
    engine.submit(generation.pk)  # redelivered while running, its poll due
    assert len(submits(fresh_sandbox, "pixeldojo")) == 1
    drain.queue.append(("sweep", ()))
    drain()
    generation.refresh_from_db()
    assert generation.status == "succeeded"
    engine.submit(generation.pk)  # redelivered after it finished
    assert len(submits(fresh_sandbox, "pixeldojo")) == 1


def test_submits_stop_at_the_attempt_cap(bob, accounts, drain, mock_http):
    calls = []

    def unavailable(req):
        calls.append(req)
        return httpx.Response(503, json={"error": "busy"})

    mock_http(unavailable)
    generation, _ = engine.create(bob, request(), provider="sb-vtrix")
    drain.queue.clear()
    for _ in range(engine.MAX_SUBMIT_ATTEMPTS + 3):
        Generation.objects.filter(pk=generation.pk, status="queued").update(next_poll_at=timezone.now())
        engine.submit(generation.pk)
    assert len(calls) == engine.MAX_SUBMIT_ATTEMPTS
    assert_refunded(generation)


def test_two_sweepers_never_run_at_once(bob, accounts, drain, fresh_sandbox):
    generation, _ = engine.create(bob, request(), provider="sb-vtrix")
    drain.queue.clear()
    engine.submit(generation.pk)
    Generation.objects.filter(pk=generation.pk).update(next_poll_at=timezone.now())
    assert sweeper.acquire_lease("first")
    assert not sweeper.acquire_lease("second")
    polls_before = len([r for r in fresh_sandbox.requests if r.method == "GET"])
    assert sweeper.sweep(seconds=1) == 0  # the lease is held elsewhere: no poll
    assert len([r for r in fresh_sandbox.requests if r.method == "GET"]) == polls_before
    sweeper.release_lease("first")
    assert sweeper.acquire_lease("second")


# -- the books: reconcile sees what the defects left behind -----------------------------------------------------
def test_reconcile_reports_a_hold_past_its_deadline(bob, accounts, drain):
    generation, _ = engine.create(bob, request(), provider="sb-vtrix")
    Generation.objects.filter(pk=generation.pk).update(deadline_at=timezone.now() - timedelta(minutes=14))
    assert any(
        f"generation {generation.pk}: queued" in p and "past its deadline" in p for p in credits.reconcile()
    )


def test_reconcile_reports_images_kept_on_a_job_that_was_not_charged(bob, accounts, drain):
    canceled, _ = engine.create(bob, request(), provider="sb-vtrix")
    engine.cancel(canceled, bob)
    media.record(canceled, saved_files(1)[0])  # defect 1's outcome, planted
    problems = credits.reconcile()
    assert f"generation {canceled.pk}: canceled but keeps 1 image(s)" in problems
    succeeded, _ = engine.create(bob, request(), provider="sb-vtrix")
    Generation.objects.filter(pk=succeeded.pk).update(status="succeeded")
    media.record(succeeded, saved_files(1)[0])
    assert f"generation {succeeded.pk}: keeps 1 image(s) but charged nothing" in credits.reconcile()


def test_the_studio_card_offers_no_cancel_once_the_provider_has_finished(bob, accounts, drain, client):
    generation = provider_done(bob, drain)
    client.force_login(bob)
    card = client.get(f"/jobs/{generation.pk}/card").content.decode()
    assert "saving the images" in card and ">Cancel<" not in card
    # A cancel sent from a card rendered a moment earlier is refused and answers with the current card.
    answer = client.post(f"/jobs/{generation.pk}/cancel", HTTP_HX_REQUEST="true")
    assert answer.status_code == 200 and "saving the images" in answer.content.decode()
    generation.refresh_from_db()
    assert generation.status == "running"
