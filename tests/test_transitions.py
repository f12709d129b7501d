"""Every status transition is a named verb on Generation (issue 9, item 7): one conditional UPDATE each,
returning whether this caller won, so of two racing callers exactly one moves the job (and the money)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from generations import engine
from generations.models import Generation
from generations.providers import GenerationRequest

LEASE = 30


@pytest.fixture
def queued(bob, accounts, monkeypatch) -> Generation:
    monkeypatch.setattr(engine, "enqueue", lambda *args: None)
    generation, _ = engine.create(
        bob, GenerationRequest(prompt="a lighthouse", model="flux-2-max"), provider="sb-vtrix"
    )
    return generation


def events(generation: Generation) -> list[str]:
    return list(generation.events.order_by("id").values_list("what", flat=True))


def test_a_submit_is_claimed_once_and_put_back_uncounted(queued):
    assert Generation.objects.claim_submit(queued.pk, LEASE)
    assert not Generation.objects.claim_submit(queued.pk, LEASE)  # the lease holds it
    queued.refresh_from_db()
    assert queued.attempts == 1 and queued.lease_until is not None
    assert queued.renew_submit_lease(1, LEASE)
    assert not queued.renew_submit_lease(2, LEASE)  # another attempt's heartbeat keeps nothing
    assert queued.postpone_submit(timezone.now())
    queued.refresh_from_db()
    assert (queued.attempts, queued.lease_until) == (0, None)
    assert Generation.objects.claim_submit(queued.pk, LEASE)


def test_a_retry_keeps_the_error_on_show_until_it_is_sent(queued):
    at = timezone.now() + timedelta(seconds=5)
    assert queued.schedule_submit_retry("rate_limited", "Slow down.", at)
    queued.refresh_from_db()
    assert (queued.error_code, queued.error_message, queued.next_poll_at) == (
        "rate_limited",
        "Slow down.",
        at,
    )
    assert not Generation.objects.claim_submit(queued.pk, LEASE)  # not before its time


def test_only_one_ending_wins(queued):
    assert queued.mark_failed("provider_failed", "It broke.")
    assert not queued.mark_failed("provider_failed", "It broke again.")
    assert not queued.mark_canceled("bob")
    assert not queued.postpone_submit(timezone.now())
    assert queued.status == Generation.Status.FAILED and queued.lease_until is None
    assert events(queued) == ["created", "failed"]


def test_a_cancel_loses_once_the_provider_has_finished(queued):
    assert queued.mark_generated(["https://cdn.vtrix.ai/1.jpeg"], "0.07", 7)
    assert not queued.mark_generated(["https://cdn.vtrix.ai/2.jpeg"], "", 8)
    assert not queued.mark_canceled("bob")
    assert queued.status == Generation.Status.RUNNING and queued.image_urls == ["https://cdn.vtrix.ai/1.jpeg"]
    assert queued.mark_failed("download_failed", "Gone.")


def test_an_ingest_is_claimed_once_and_a_stale_one_cannot_succeed(queued):
    assert queued.mark_generated(["https://cdn.vtrix.ai/1.jpeg"], "", 7)
    assert Generation.objects.claim_ingest(queued.pk, LEASE)
    assert not Generation.objects.claim_ingest(queued.pk, LEASE)
    stale = Generation.objects.get(pk=queued.pk)
    assert stale.renew_ingest_lease(1, LEASE)
    assert stale.schedule_download_retry("download_failed", -1)  # its lease ends now: the reaper may claim
    assert Generation.objects.claim_ingest(queued.pk, LEASE)
    assert not stale.renew_ingest_lease(1, LEASE)
    assert not stale.mark_succeeded("1 image(s) stored")  # the second download owns the job now
    fresh = Generation.objects.get(pk=queued.pk)
    assert fresh.mark_succeeded("1 image(s) stored")
    assert fresh.status == Generation.Status.SUCCEEDED and fresh.error_code == ""


def test_a_job_waiting_for_its_host_downloads_again_once_allowed(queued):
    assert queued.mark_generated(["https://elsewhere.example/1.jpeg"], "", 7)
    assert Generation.objects.claim_ingest(queued.pk, LEASE)
    queued.refresh_from_db()
    assert queued.mark_waiting_for_admin("elsewhere.example")
    assert not queued.mark_host_allowed("other.example")
    assert queued.mark_host_allowed("elsewhere.example")
    assert (queued.refused_host, queued.ingest_attempts, queued.lease_until) == ("", 0, None)
    assert not queued.mark_host_allowed("elsewhere.example")
