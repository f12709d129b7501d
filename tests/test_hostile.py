"""A hostile provider on loopback (issue 7, "Proving it"): with each hostile fault of the sandbox, on each of the
five providers, the job ends exactly once within its deadline (failed in words with an exact refund, or
succeeded and charged), the books reconcile, and a healthy job on another provider, running beside it in the
same sweeps, is untouched. Also the HTTP seam's own bounds: a reply that drips, one far too large, a job
address no client can request.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import pytest

from generations import credits, engine, media
from generations.models import Generation, ProviderAccount
from generations.providers import PROVIDERS, GenerationRequest
from generations.providers import http as provider_http
from generations.providers.base import HttpCall, ProviderError
from generations.providers.sandbox import HOSTILE_FAULTS

from .emulators.harness import fast_engine, run

KINDS = ("apiframe", "vtrix", "pixeldojo", "maxapi", "bfl")
MODEL = {"maxapi": "flux-plus", **{k: "flux-2-max" for k in ("vtrix", "apiframe", "pixeldojo", "bfl")}}
PRICE = {"maxapi": 3, "vtrix": 70, "apiframe": 70, "pixeldojo": 70, "bfl": 70}
LABEL = {"maxapi": "MaxAPI", "vtrix": "Vtrix", "apiframe": "Apiframe", "pixeldojo": "PixelDojo", "bfl": "BFL"}
BESIDE = {
    "apiframe": "vtrix",
    "vtrix": "pixeldojo",
    "pixeldojo": "maxapi",
    "maxapi": "bfl",
    "bfl": "apiframe",
}
DEADLINE = 12  # seconds: every job must end well inside it; a job left to its deadline fails the budget
BUDGET = 14.0
NOT_RESENT = "It was not sent again"
UNUSABLE_LINK = "finished the job but its image link cannot be used"

# fault -> how it is set -> what the hostile job must end as, per provider: ("failed", code, words) or
# ("succeeded",). "submit"/"poll" scope a request fault to that phase; "job" queues a job or file fault.
FAILED = "failed"
MATRIX: dict[str, tuple[str, dict[str, tuple]]] = {
    # The submit's reply with every value of the wrong type, once. Apiframe's submit carries an idempotency key, so it is
    # re-sent and the same job comes back; the others cannot tell a repeat from a new paid job.
    "wrong_types@submit": (
        "submit",
        {
            "apiframe": ("succeeded",),
            **{
                k: (FAILED, "malformed_response", NOT_RESENT) for k in ("vtrix", "pixeldojo", "maxapi", "bfl")
            },
        },
    ),
    # Every poll reply garbled: the job fails on its own after a few in a row; MaxAPI never polls.
    "wrong_types@poll": (
        "poll",
        {
            **{
                k: (FAILED, "malformed_response", f"{LABEL[k]} sent a job without a readable status")
                for k in ("apiframe", "pixeldojo", "bfl")
            },
            "vtrix": (FAILED, "malformed_response", "Vtrix sent"),
            "maxapi": ("succeeded",),
        },
    ),
    # The error as an object where a string belongs: the job fails with the provider's words.
    "error_object": (
        "job",
        {
            "apiframe": (FAILED, "provider_failed", "Provider returned an error: generation failed"),
            "vtrix": (FAILED, "provider_failed", "Image generation failed (code 002014001)"),
            "pixeldojo": (FAILED, "provider_failed", "Generation failed: the model returned an error"),
            "bfl": (FAILED, "provider_failed", "Generation failed: the model returned an error"),
            "maxapi": (FAILED, "invalid_request", "MaxAPI rejected the request: Image generation failed"),
        },
    ),
    "bad_url": ("job", {k: (FAILED, "malformed_response", f"{LABEL[k]} {UNUSABLE_LINK}") for k in KINDS}),
    "control_url": ("job", {k: (FAILED, "malformed_response", f"{LABEL[k]} {UNUSABLE_LINK}") for k in KINDS}),
    "slow_drip": ("job", {k: (FAILED, "download_failed", "took too long") for k in KINDS}),
    "truncated": ("job", {k: (FAILED, "not_image", "not a valid PNG, JPEG or WebP image") for k in KINDS}),
    "cut_off": (
        "job",
        {k: (FAILED, "download_failed", "closed before a complete answer arrived") for k in KINDS},
    ),
}
CASES = [(fault, kind) for fault in MATRIX for kind in KINDS]
# ReadError, RemoteProtocolError, ...
EXCEPTION_NAME = re.compile(r"\b(?:[A-Z][a-z]+)+(?:Error|Exception|Timeout)\b")


def test_the_matrix_covers_every_hostile_fault():
    assert {fault.split("@")[0] for fault in MATRIX} == set(HOSTILE_FAULTS)


@pytest.fixture
def bfl_account(accounts, fresh_sandbox) -> ProviderAccount:
    """A fifth account, BFL's, beside the four of `accounts`, on the sandbox's /bfl."""
    account = ProviderAccount(slug="sb-bfl", kind="bfl", base_url=f"{fresh_sandbox.url}/bfl", priority=4)
    account.set_api_key("bfl_test_key")
    account.save()
    return account


@pytest.fixture
def hostile(accounts, bfl_account, fresh_sandbox, drain, monkeypatch, settings):
    """The engine and the sandbox at test pace: short latencies, short retry pauses, a short download
    deadline and a one-byte-per-20-ms drip. Pacing only; no behaviour is replaced."""
    fast_engine(monkeypatch, sweep_slice=0.2, first_poll=0.05)
    original = Generation.schedule_poll
    monkeypatch.setattr(
        Generation,
        "schedule_poll",
        lambda self, seconds, **fields: original(self, min(seconds, 0.1), **fields),
    )
    monkeypatch.setattr(engine, "INGEST_RETRY_PAUSE", 0.05)
    monkeypatch.setattr(media, "DOWNLOAD_DEADLINE", 0.5)
    settings.FLUXWEB_JOB_DEADLINE = DEADLINE
    fresh_sandbox.set_latency(0.05, 0.1)
    fresh_sandbox.options["drip_seconds"] = 0.02
    return fresh_sandbox


def create(user, kind: str) -> Generation:
    request = GenerationRequest(
        prompt="a lighthouse at dusk", model=MODEL[kind], megapixels=0.5 if kind != "maxapi" else 0.25
    )
    generation, created = engine.create(user, request, provider=f"sb-{kind}")
    assert created
    return generation


def assert_clear(message: str) -> None:
    """Words for a person: short, one line, no exception names, reprs or code."""
    assert message and message.strip() == message and len(message) < 500, message
    assert not re.search(r"[\x00-\x1f]", message), message
    for bad in ("Traceback", 'File "', "Error(", "Exception", "httpx", "None", "object at", "{", "["):
        assert bad not in message, message
    assert not EXCEPTION_NAME.search(message), message


def assert_ended(generation: Generation, kind: str, expected: tuple) -> None:
    generation.refresh_from_db()
    assert generation.status in Generation.TERMINAL, (generation.status, generation.error_message)
    assert generation.finished_at is not None and generation.finished_at <= generation.deadline_at
    assert generation.next_poll_at is None
    held = generation.credits_reserved
    assert held == PRICE[kind]
    ledger = list(generation.ledger.order_by("id").values_list("kind", "amount"))
    if expected[0] == "succeeded":
        assert generation.status == "succeeded", (generation.error_code, generation.error_message)
        assert generation.images.count() == 1
        assert (generation.credits_charged, generation.credits_refunded) == (held, 0)
        assert ledger == [("reserve", held), ("settle", held)]
        return
    _, code, words = expected
    assert (generation.status, generation.error_code) == ("failed", code), generation.error_message
    assert words in generation.error_message, generation.error_message
    assert_clear(generation.error_message)
    assert not generation.images.exists()
    assert (generation.credits_charged, generation.credits_refunded) == (0, held)
    assert ledger == [("reserve", held), ("refund", held)]


@pytest.mark.parametrize(("fault", "kind"), CASES, ids=[f"{kind}-{fault}" for fault, kind in CASES])
def test_a_hostile_provider_ends_its_own_job_exactly_and_no_other(fault, kind, hostile, bob, drain):
    name, _, phase = fault.partition("@")
    how, expected = MATRIX[fault]
    if how == "job":
        hostile.queue_fault(name, kind)
    elif how == "submit":
        hostile.queue_fault(name, kind, phase="submit")  # once: the resend is answered truly
    else:
        hostile.set_faults({f"{kind}.{phase}.{name}": 1.0})  # every poll
    beside = BESIDE[kind]
    bad, good = create(bob, kind), create(bob, beside)

    started = time.monotonic()
    run(drain, bad.pk, good.pk, budget=BUDGET)
    took = time.monotonic() - started

    assert_ended(bad, kind, expected[kind])
    assert_ended(good, beside, ("succeeded",))
    spent = PRICE[beside] + (PRICE[kind] if expected[kind][0] == "succeeded" else 0)
    account = credits.account_for(bob)
    assert (account.balance, account.reserved) == (1000 - spent, 0)
    assert credits.reconcile() == []
    assert took < DEADLINE, f"took {took:.1f} s"


def test_a_provider_whose_every_submit_reply_is_garbled_fails_the_job_before_its_deadline(
    hostile, bob, drain, settings
):
    # Three garbled replies end it (sweeper.MAX_MALFORMED_POLLS), resent after 1-2 s and 2-4 s: well inside 10 s.
    settings.FLUXWEB_JOB_DEADLINE = 10
    hostile.set_faults({"apiframe.submit.wrong_types": 1.0})
    bad, good = create(bob, "apiframe"), create(bob, "vtrix")
    run(drain, bad.pk, good.pk, budget=12)
    assert_ended(good, "vtrix", ("succeeded",))
    assert credits.reconcile() == []
    assert_ended(
        bad, "apiframe", (FAILED, "malformed_response", "Apiframe accepted the job but sent no jobId")
    )


# -- the HTTP seam's own bounds -----------------------------------------------------------------------------------
def dripping_link(sandbox) -> str:
    """A result link on the sandbox that serves its file one byte every `drip_seconds`."""
    sandbox.queue_fault("slow_drip", "pixeldojo")
    sandbox.set_latency(0.01, 0.01)
    with httpx.Client() as client:
        job = client.post(
            f"{sandbox.base_url('pixeldojo')}/api/v1/models/flux-2-max/run",
            json={"prompt": "drip"},
            headers={"Authorization": "Bearer pd_test"},
        ).json()
        time.sleep(0.05)
        body = client.get(job["statusUrl"], headers={"Authorization": "Bearer pd_test"}).json()
    return body["output"]["images"][0]


def within(seconds: float, call):
    """`call()`'s result or exception, or an AssertionError if it has not returned in `seconds` (the thread
    is left to end with the sandbox: a daemon)."""
    box: dict = {}

    def target():
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_a_reply_that_drips_is_cut_at_the_call_deadline(fresh_sandbox, monkeypatch):
    fresh_sandbox.options["drip_seconds"] = 0.05
    link = dripping_link(fresh_sandbox)
    adapter = PROVIDERS["pixeldojo"](fresh_sandbox.base_url("pixeldojo"), "pd_test")
    monkeypatch.setattr(provider_http, "DEADLINE", 0.3)
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        within(5, lambda: provider_http.send(adapter, HttpCall("GET", link)))
    assert caught.value.code == ProviderError.TIMEOUT
    assert time.monotonic() - started < 2


def test_a_poll_that_drips_is_cut_at_the_poll_deadline(fresh_sandbox, monkeypatch):
    fresh_sandbox.options["drip_seconds"] = 0.05
    link = dripping_link(fresh_sandbox)
    adapter = PROVIDERS["pixeldojo"](fresh_sandbox.base_url("pixeldojo"), "pd_test")
    monkeypatch.setattr(provider_http, "POLL_DEADLINE", 0.3)

    async def poll():
        async with httpx.AsyncClient() as http:
            return await provider_http.send_async(http, adapter, HttpCall("GET", link))

    with pytest.raises(ProviderError) as caught:
        within(5, lambda: asyncio.run(poll()))
    assert caught.value.code == ProviderError.TIMEOUT


def test_a_reply_far_larger_than_any_answer_is_malformed(mock_http):
    mock_http(lambda request: httpx.Response(200, content=b"[" + b"0," * 2_000_000 + b"0]"))
    adapter = PROVIDERS["vtrix"]("https://cloud.vtrix.ai", "k")
    with pytest.raises(ProviderError) as caught:
        provider_http.send(adapter, adapter.build_poll("t"))
    assert caught.value.code == ProviderError.MALFORMED


@pytest.mark.parametrize("url", ["http://[::1/jobs/1", "https://pixeldojo.ai/api/v1/jobs/\x01"])
def test_a_job_address_no_client_can_request_is_this_job_s_malformed_reply(url, mock_http):
    mock_http(lambda request: httpx.Response(200, json={}))
    adapter = PROVIDERS["pixeldojo"]("https://pixeldojo.ai", "k")

    async def poll():
        async with httpx.AsyncClient() as http:
            return await provider_http.send_async(http, adapter, HttpCall("GET", url))

    for call in (lambda: provider_http.send(adapter, HttpCall("GET", url)), lambda: asyncio.run(poll())):
        with pytest.raises(ProviderError) as caught:
            call()
        assert (caught.value.code, caught.value.unsent) == (ProviderError.MALFORMED, True)
