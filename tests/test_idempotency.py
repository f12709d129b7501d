"""Idempotent creates: the API's `Idempotency-Key` and the studio form's per-render key make a retried or
double-clicked create return the first job instead of holding credits for a second one."""

import threading

import httpx
import pytest

from generations import credits, engine
from generations.models import ApiToken, Generation, LedgerEntry, Quota
from generations.providers import GenerationRequest
from generations.refusal import Refusal

BODY = {"prompt": "a lighthouse at dusk", "model": "flux-2-max", "provider": "sb-apiframe"}


@pytest.fixture(autouse=True)
def no_submit(monkeypatch, settings):
    """Creates hold credits but start no provider work; personas hash their passwords quickly."""
    monkeypatch.setattr(engine, "enqueue", lambda *args: None)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def post(client, bob):
    _, token = ApiToken.issue(bob)

    def post(body=BODY, key: str | None = "retry-me", token: str = token):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
        if key is not None:
            headers["HTTP_IDEMPOTENCY_KEY"] = key
        return client.post("/api/v1/generations", body, "application/json", **headers)

    return post


def reserves() -> list[int]:
    return list(LedgerEntry.objects.filter(kind="reserve").values_list("amount", flat=True))


# -- one client, one after the other ----------------------------------------------------------------------
def test_it_returns_the_first_job_for_a_repeated_key(post, accounts):
    first, second = post(), post()
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["id"] == second.json()["id"]
    assert Generation.objects.count() == 1
    assert reserves() == [70]


def test_it_refuses_a_repeated_key_with_a_different_request(post, accounts):
    first = post()
    other = post(BODY | {"prompt": "a lighthouse at dawn"})
    assert first.status_code == 202
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_mismatch"
    assert Generation.objects.count() == 1
    assert reserves() == [70]


def test_it_makes_a_job_per_request_without_a_key(post, accounts):
    assert post(key=None).json()["id"] != post(key=None).json()["id"]
    assert reserves() == [70, 70]


def test_it_scopes_keys_to_their_user(post, accounts, alice):
    credits.grant(alice, 100)
    _, alices = ApiToken.issue(alice)
    mine, hers = post(), post(token=alices)
    assert (mine.status_code, hers.status_code) == (202, 202)
    assert mine.json()["id"] != hers.json()["id"]
    assert Generation.objects.filter(user=alice).count() == 1


def test_it_refuses_an_overlong_key(post, accounts):
    response = post(key="k" * 256)
    assert response.status_code == 400
    assert not Generation.objects.exists()


def test_it_keeps_nothing_under_the_key_of_a_refused_request(client, carol, accounts):
    _, token = ApiToken.issue(carol)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}", "HTTP_IDEMPOTENCY_KEY": "after-top-up"}
    refused = client.post("/api/v1/generations", BODY, "application/json", **headers)
    assert refused.status_code == 402
    credits.grant(carol, 70)
    retried = client.post("/api/v1/generations", BODY, "application/json", **headers)
    assert retried.status_code == 202
    assert reserves() == [70]


def test_it_replays_through_the_engine(bob, accounts):
    asked = GenerationRequest(prompt="a lighthouse at dusk", model="flux-2-max")
    first, created = engine.create(bob, asked, provider="sb-apiframe", idempotency_key="k1")
    again, created_again = engine.create(bob, asked, provider="sb-apiframe", idempotency_key="k1")
    assert (created, created_again) == (True, False)
    assert again.pk == first.pk
    with pytest.raises(Refusal) as refused:
        engine.create(bob, asked, provider="sb-vtrix", idempotency_key="k1")
    assert refused.value.status == 422


# -- the studio form --------------------------------------------------------------------------------------
def test_it_makes_one_job_when_the_form_is_posted_twice(client, bob, accounts):
    client.force_login(bob)
    form = BODY | {"n": 1, "aspect_ratio": "1:1", "output_format": "jpeg", "idempotency_key": "render-7f3a"}
    first = client.post("/generate", form, HTTP_HX_REQUEST="true")
    second = client.post("/generate", form, HTTP_HX_REQUEST="true")
    assert (first.status_code, second.status_code) == (200, 200)
    assert "HX-Reswap" not in first
    assert second["HX-Reswap"] == "none"  # the first click's card is already on the page
    assert Generation.objects.count() == 1
    assert reserves() == [70]
    # Without htmx, both posts land back on the studio, still with one job.
    assert client.post("/generate", form)["Location"] == "/"
    assert Generation.objects.count() == 1


def test_it_makes_a_job_per_rendered_form(client, bob, accounts):
    client.force_login(bob)
    form = BODY | {"n": 1, "aspect_ratio": "1:1", "output_format": "jpeg"}
    client.post("/generate", form | {"idempotency_key": "render-1"}, HTTP_HX_REQUEST="true")
    client.post("/generate", form | {"idempotency_key": "render-2"}, HTTP_HX_REQUEST="true")
    assert Generation.objects.count() == 2


# -- many at once, over real HTTP and real transactions ---------------------------------------------------
def post_together(base_url: str, token: str, bodies: list[dict], key: str) -> list[tuple[int, dict]]:
    """POST every body at once from its own thread and connection, released together by a barrier."""
    barrier = threading.Barrier(len(bodies))
    results: list = [None] * len(bodies)

    def one(i: int) -> None:
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
        try:
            with httpx.Client(base_url=base_url, headers=headers, timeout=60) as http:
                http.get("/api/v1/models")  # connect first, so the posts really start together
                barrier.wait()
                response = http.post("/api/v1/generations", json=bodies[i])
                results[i] = (response.status_code, response.json())
        except Exception as exc:  # reported below; a thread's exception would otherwise vanish
            results[i] = (None, repr(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    return results


@pytest.mark.django_db(transaction=True)
def test_it_makes_one_job_from_ten_parallel_retries(live_server, carol, accounts):
    # Credits and quota for one job: a duplicate must get the first job, never a refusal for want of either.
    credits.grant(carol, 70)
    Quota.objects.create(user=carol, concurrent=1, daily_images=1)
    _, token = ApiToken.issue(carol)
    results = post_together(live_server.url, token, [BODY] * 10, key="parallel-1")
    ids = {body["id"] for status, body in results if status == 202}
    assert len(ids) == 1, results
    assert all(status in (202, 409) for status, _ in results), results
    assert Generation.objects.count() == 1
    assert reserves() == [70]
    assert credits.reconcile() == []


@pytest.mark.django_db(transaction=True)
def test_it_answers_parallel_different_requests_under_one_key_with_one_job(live_server, bob, accounts):
    _, token = ApiToken.issue(bob)
    other = BODY | {"prompt": "a lighthouse at dawn"}
    results = post_together(live_server.url, token, [BODY, other] * 5, key="parallel-2")
    generation = Generation.objects.get()
    winner = [BODY, other][generation.prompt.text.endswith("dawn")]
    for (status, body), sent in zip(results, [BODY, other] * 5, strict=True):
        if sent is winner:
            assert (status, body["id"]) == (202, generation.pk)
        else:
            assert status in (409, 422), (status, body)
    assert reserves() == [70]
    assert credits.reconcile() == []
