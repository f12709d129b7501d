"""One prompt to one stored image, through the real engine and the sandbox over loopback HTTP."""

import io

import pytest
from PIL import Image as PILImage

from generations import credits, engine
from generations.models import Generation, LedgerEntry, ProviderAccount
from generations.providers import GenerationRequest
from generations.refusal import Refusal

from .conftest import wait_for


def request(**overrides) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "a lighthouse at dusk", "model": "flux-2-max"} | overrides))


def test_it_generates_stores_and_settles_through_the_engine(bob, accounts, drain):
    generation, created = engine.create(bob, request(aspect_ratio="16:9"), provider="sb-apiframe")
    assert created and generation.status == "queued"
    assert credits.account_for(bob).reserved == 70

    drain()

    generation.refresh_from_db()
    assert generation.status == "succeeded", generation.error_message
    assert generation.provider_job_id
    image = generation.images.get()
    assert (image.width, image.height) == (1360, 768)
    with image.file.open("rb") as f:
        stored = PILImage.open(io.BytesIO(f.read()))
        stored.load()
    assert stored.size == (1360, 768)
    with image.thumbnail.open("rb") as f:
        assert max(PILImage.open(f).size) == 512
    account = credits.account_for(bob)
    assert (account.balance, account.reserved) == (930, 0)
    assert (generation.credits_charged, generation.credits_refunded) == (70, 0)
    assert list(generation.ledger.values_list("kind", "amount").order_by("id")) == [
        ("reserve", 70),
        ("settle", 70),
    ]
    assert credits.reconcile() == []
    assert [e.what for e in generation.events.all()] == ["created", "submitted", "provider done", "succeeded"]


@pytest.fixture
def bfl_account(accounts, fresh_sandbox) -> ProviderAccount:
    account = ProviderAccount(slug="sb-bfl", kind="bfl", base_url=f"{fresh_sandbox.url}/bfl", priority=4)
    account.set_api_key("bfl_test_key")
    account.save()
    return account


def test_it_generates_through_bfl_s_own_api(bob, bfl_account, drain, fresh_sandbox):
    generation, _ = engine.create(
        bob, request(aspect_ratio="16:9", seed=7, output_format="png"), provider="sb-bfl"
    )
    assert credits.account_for(bob).reserved == 70

    drain()

    generation.refresh_from_db()
    assert generation.status == "succeeded", generation.error_message
    image = generation.images.get()
    assert (image.width, image.height, image.format, image.seed) == (1360, 768, "png", 7)
    assert generation.provider_cost == "7.12"  # BFL credits, from the submit's `cost`
    assert (generation.credits_charged, generation.credits_refunded) == (70, 0)
    assert credits.reconcile() == []
    calls = [r for r in fresh_sandbox.requests if r.provider == "bfl" and "/_files/" not in r.path]
    submit, polls = calls[0], calls[1:]
    assert (submit.method, submit.path, submit.headers["x-key"]) == ("POST", "/v1/flux-2-max", "bfl_test_key")
    assert submit.json == {
        "prompt": "a lighthouse at dusk",
        "width": 1360,
        "height": 768,
        "output_format": "png",
        "seed": 7,
    }
    assert polls and all(
        (r.method, r.path, r.query) == ("GET", "/v1/get_result", {"id": generation.provider_job_id})
        for r in polls
    )
    assert generation.poll_url.endswith(f"/bfl/v1/get_result?id={generation.provider_job_id}")
    assert [e.what for e in generation.events.all()] == ["created", "submitted", "provider done", "succeeded"]


def test_it_refunds_a_job_bfl_s_moderation_refused(bob, bfl_account, drain, fresh_sandbox):
    fresh_sandbox.queue_fault("moderation", "bfl")
    generation, _ = engine.create(bob, request(), provider="sb-bfl")
    drain()
    generation.refresh_from_db()
    assert (generation.status, generation.error_code) == ("failed", "moderation")
    assert "BFL's moderation refused the image it made." in generation.error_message
    assert (generation.credits_charged, generation.credits_refunded) == (0, 70)
    assert credits.reconcile() == []


def test_it_sends_what_the_user_chose_to_apiframe(bob, accounts, drain, fresh_sandbox):
    engine.create(
        bob,
        request(aspect_ratio="3:4", megapixels=2.0, seed=42, output_format="png", prompt_upsampling=True),
        provider="sb-apiframe",
    )
    drain()
    sent = [r for r in fresh_sandbox.requests if r.method == "POST" and r.provider == "apiframe"][0]
    assert sent.headers["X-API-Key"] == "afk_test_key_1234"
    assert sent.json["fluxParams"] == {
        "resolution": "2MP",
        "aspect_ratio": "3:4",
        "output_format": "png",
        "prompt_upsampling": True,
        "seed": 42,
    }
    assert sent.headers["Idempotency-Key"].startswith("fluxweb-")


def test_it_refunds_a_job_the_provider_fails(bob, accounts, drain, fresh_sandbox):
    fresh_sandbox.queue_fault("moderation", "apiframe")
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    drain()
    generation.refresh_from_db()
    assert generation.status == "failed"
    assert generation.error_code == "moderation"
    assert (generation.credits_charged, generation.credits_refunded) == (0, 70)
    account = credits.account_for(bob)
    assert (account.balance, account.reserved) == (1000, 0)
    assert credits.reconcile() == []


@pytest.mark.parametrize(
    "provider, model, held, message",
    [
        # Apiframe's poll says the images are purged: the job fails there, nothing is downloaded.
        ("apiframe", "flux-2-max", 70, "Apiframe has already purged this job's images (24 h retention)."),
        # MaxAPI answers with the link at once; the file server then refuses it: the download fails.
        (
            "maxapi",
            "flux-plus",
            3,
            "The provider's image link has expired or vanished. Your credits are back.",
        ),
    ],
)
def test_it_refunds_when_the_result_link_has_expired(
    bob, accounts, drain, fresh_sandbox, provider, model, held, message
):
    fresh_sandbox.queue_fault("expired", provider)
    generation, _ = engine.create(bob, request(model=model), provider=f"sb-{provider}")
    assert generation.credits_reserved == held
    drain()
    generation.refresh_from_db()
    assert (generation.status, generation.error_code, generation.error_message) == (
        "failed",
        "expired_result",
        message,
    )
    assert not generation.images.exists()
    downloads = [r for r in fresh_sandbox.requests if "/_files/" in r.path]
    assert len(downloads) == (provider == "maxapi")
    assert (generation.credits_charged, generation.credits_refunded) == (0, held)
    account = credits.account_for(bob)
    assert (account.balance, account.reserved) == (1000, 0)
    assert credits.reconcile() == []


def test_it_refuses_a_file_that_is_not_an_image(bob, accounts, drain, fresh_sandbox):
    fresh_sandbox.queue_fault("not_image", "apiframe")
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    drain()
    generation.refresh_from_db()
    assert generation.status == "failed"
    assert generation.error_code == "not_image"
    assert not generation.images.exists()
    assert credits.account_for(bob).balance == 1000


def test_it_refuses_a_user_without_credits_before_any_provider_call(carol, accounts, fresh_sandbox):
    with pytest.raises(Refusal) as refused:
        engine.create(carol, request(), provider="sb-apiframe")
    assert refused.value.status == 402
    assert "70" in refused.value.message
    assert not Generation.objects.exists()
    assert fresh_sandbox.requests == []


def test_it_settles_once_when_ingest_runs_twice(bob, accounts, drain):
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    drain()
    engine.ingest(generation.pk)
    generation.refresh_from_db()
    assert generation.images.count() == 1
    assert LedgerEntry.objects.filter(generation=generation, kind="settle").count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_runs_on_a_real_qcluster(bob, accounts, worker):
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    wait_for(lambda: Generation.objects.get(pk=generation.pk).is_terminal, timeout=30)
    generation.refresh_from_db()
    assert generation.status == "succeeded", generation.error_message
    assert generation.images.count() == 1
    assert credits.account_for(bob).balance == 930
    assert credits.reconcile() == []
