"""Who may see what in the browser views and htmx endpoints: login everywhere, a shared team gallery, one's
own jobs to cancel, private no-store fragments, signed reference links, escaped prompts, CSRF."""

import io
import re
from datetime import timedelta

import pytest
import time_machine
from django.core import signing
from django.test import Client
from django.utils import timezone
from PIL import Image as PILImage

from generations import credits, media
from generations.models import Generation, Image, Prompt
from generations.urls import urlpatterns

PUBLIC = {"reference", "reference-upload", "webhook"}  # the signature or the unguessable token is the key
HOSTILE = '<script>alert(1)</script><i hx-get="/admin/" hx-trigger="load">x</i>'


def png(width: int = 96, height: int = 64) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), (40, 90, 200)).save(out, "PNG")
    return out.getvalue()


def make_job(user, account, prompt: str = "a lighthouse at dusk", **fields) -> Generation:
    return Generation.objects.create(
        user=user, prompt=Prompt.remember(prompt, user), model="flux-2-max", account=account, **fields
    )


def make_image(generation: Generation) -> Image:
    return media.store_image(generation, 0, media.check_image(png()), {"prompt": generation.prompt.text})


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def held_job(user) -> Generation:
    """A queued job holding real credits, as a create leaves it."""
    from generations import engine
    from generations.providers import GenerationRequest

    job, _ = engine.create(
        user, GenerationRequest(prompt="a harbour at night", model="flux-2-max"), provider="sb-apiframe"
    )
    return job


@pytest.fixture
def bobs(bob, accounts):
    job = make_job(bob, accounts["apiframe"], status="succeeded")
    return job, make_image(job)


# -- anonymous ----------------------------------------------------------------------------------------------
def test_it_sends_anonymous_visitors_to_log_in_everywhere(client, bobs):
    job, image = bobs
    names = set()
    for pattern in urlpatterns:
        names.add(pattern.name)
        route = str(pattern.pattern)
        path = "/" + re.sub(
            r"<int:\w+>",
            str(image.pk if "image" in route else job.pk),
            re.sub(r"<str:\w+>", "not-a-token", route),
        )
        statuses = []
        for method in ("get", "post"):
            response = getattr(client, method)(path)
            statuses.append(response.status_code)
            if pattern.name in PUBLIC:
                assert response.status_code in (404, 405), (path, method)
            elif response.status_code != 405:
                assert response.status_code == 302, (path, method)
                assert response["Location"].startswith("/login/?next="), (path, method)
        if pattern.name not in PUBLIC:
            assert 302 in statuses, path
    assert names >= {
        "studio",
        "model-options",
        "quote",
        "generate",
        "job-card",
        "cancel",
        "generation",
        "gallery",
        "credits",
        "credit-badge",
        "image-file",
        "image-thumbnail",
        "reference",
    }
    assert Generation.objects.get(pk=job.pk).status == "succeeded"


# -- members: a shared gallery, one's own jobs ------------------------------------------------------------------
def test_it_shows_the_team_its_images_and_job_cards(carol, bobs):
    job, image = bobs
    client = logged_in(carol)

    assert client.get(f"/jobs/{job.pk}/card", HTTP_HX_REQUEST="true").status_code == 200
    assert client.get(f"/jobs/{job.pk}/").status_code == 200
    original = client.get(f"/images/{image.pk}/file")
    assert original.status_code == 200 and original["Content-Type"] == "image/png"
    thumb = client.get(f"/images/{image.pk}/thumbnail")
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/jpeg"
    assert f'id="image-{image.pk}"' in client.get("/gallery", HTTP_HX_REQUEST="true").content.decode()


def test_it_answers_404_for_what_does_not_exist(bob):
    client = logged_in(bob)
    for path in ("/jobs/424242/card", "/jobs/424242/", "/images/424242/file", "/images/424242/thumbnail"):
        assert client.get(path).status_code == 404, path
    assert client.post("/jobs/424242/cancel").status_code == 404


@pytest.mark.parametrize("htmx", [True, False])
def test_it_lets_nobody_cancel_another_users_job(bob, carol, alice, accounts, htmx):
    job = held_job(bob)
    extra = {"HTTP_HX_REQUEST": "true"} if htmx else {}

    for other in (carol, alice):  # the admin cancels in the admin or the API, not through bob's card
        assert logged_in(other).post(f"/jobs/{job.pk}/cancel", **extra).status_code == 404

    job.refresh_from_db()
    assert job.status == "queued"
    assert credits.account_for(bob).reserved == 70


def test_it_cancels_ones_own_job_and_returns_the_card(bob, accounts):
    job = held_job(bob)

    response = logged_in(bob).post(f"/jobs/{job.pk}/cancel", HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    assert f'id="job-{job.pk}"' in response.content.decode() and "<html" not in response.content.decode()
    assert "credits-changed" in response["HX-Trigger"]
    job.refresh_from_db()
    assert job.status == "canceled"
    assert credits.account_for(bob).reserved == 0


def test_it_redirects_a_cancel_without_htmx(bob, accounts):
    job = held_job(bob)
    response = logged_in(bob).post(f"/jobs/{job.pk}/cancel")
    assert response.status_code == 302 and response["Location"] == "/"
    assert Generation.objects.get(pk=job.pk).status == "canceled"


def test_it_shows_only_ones_own_ledger(bob, carol):
    credits.grant(carol, 5, note="carol's private note")
    page = logged_in(bob).get("/credits/").content.decode()
    assert (
        "test credits" in page
        and "carol&#x27;s private note" not in page
        and "carol's private note" not in page
    )


# -- htmx fragments -------------------------------------------------------------------------------------------------
def test_it_serves_htmx_fragments_private_and_uncached(bob, bobs):
    job, image = bobs
    client = logged_in(bob)
    paths = [
        "/studio/options?model=flux-2-max",
        "/studio/quote?model=flux-2-max&provider=sb-apiframe",
        f"/jobs/{job.pk}/card",
        "/gallery",
        f"/gallery?after={image.pk - 1}",
        f"/gallery?before={image.pk + 1}",
        "/credits/badge",
    ]
    for path in paths:
        response = client.get(path, HTTP_HX_REQUEST="true")
        assert response.status_code == 200, path
        assert {"private", "no-store"} <= {part.strip() for part in response["Cache-Control"].split(",")}, (
            path
        )
        assert "HX-Request" in response["Vary"], path
        assert "<html" not in response.content.decode(), path


def test_it_serves_mutation_fragments_uncached(bob, accounts):
    client = logged_in(bob)
    created = client.post(
        "/generate",
        {"prompt": "a fox", "model": "flux-2-max", "provider": "sb-apiframe", "idempotency_key": "k1"},
        HTTP_HX_REQUEST="true",
    )
    job = Generation.objects.get()
    canceled = client.post(f"/jobs/{job.pk}/cancel", HTTP_HX_REQUEST="true")
    for response in (created, canceled):
        assert "no-store" in response.get("Cache-Control", "")


def test_it_marks_the_studio_page_uncached(bob, accounts):
    response = logged_in(bob).get("/")
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]


def test_it_answers_204_when_the_gallery_has_nothing_new(bob, bobs):
    _, image = bobs
    client = logged_in(bob)

    nothing = client.get(f"/gallery?after={image.pk}", HTTP_HX_REQUEST="true")
    assert nothing.status_code == 204 and nothing.content == b""
    assert "no-store" in nothing["Cache-Control"]

    newer = make_image(make_job(bob, image.generation.account, "a second image", status="succeeded"))
    fresh = client.get(f"/gallery?after={image.pk}", HTTP_HX_REQUEST="true").content.decode()
    assert f'id="image-{newer.pk}"' in fresh and f'id="image-{image.pk}"' not in fresh


def test_it_tells_the_page_when_a_job_card_turns_terminal(bob, bobs):
    job, _ = bobs
    client = logged_in(bob)
    finished = client.get(f"/jobs/{job.pk}/card", HTTP_HX_REQUEST="true")
    assert {"gallery-changed", "credits-changed"} <= set(re.findall(r"[a-z-]+", finished["HX-Trigger"]))
    again = client.get(f"/jobs/{job.pk}/card?was=terminal", HTTP_HX_REQUEST="true")
    assert "HX-Trigger" not in again


def test_it_keeps_polling_a_running_card_and_stops_a_finished_one(bob, accounts):
    client = logged_in(bob)
    running = make_job(bob, accounts["apiframe"], status="running")
    done = make_job(
        bob, accounts["apiframe"], "done", status="failed", error_message="Apiframe failed the job."
    )
    running_card = client.get(f"/jobs/{running.pk}/card", HTTP_HX_REQUEST="true").content.decode()
    done_card = client.get(f"/jobs/{done.pk}/card", HTTP_HX_REQUEST="true").content.decode()
    assert f'hx-get="/jobs/{running.pk}/card' in running_card
    assert "hx-get" not in done_card.split("<header>")[0] and "Apiframe failed the job." in done_card


def test_it_creates_through_htmx_with_a_card_or_an_error(bob, carol, accounts):
    form = {
        "prompt": "a red kite",
        "model": "flux-2-max",
        "provider": "sb-apiframe",
        "idempotency_key": "abc",
    }

    made = logged_in(bob).post("/generate", form, HTTP_HX_REQUEST="true")
    refused = logged_in(carol).post("/generate", form, HTTP_HX_REQUEST="true")

    job = Generation.objects.get()
    assert made.status_code == 200 and f'id="job-{job.pk}"' in made.content.decode()
    assert "credits-changed" in made["HX-Trigger"]
    assert refused.status_code == 200 and refused["HX-Retarget"] == "#form-error"
    assert "70" in refused.content.decode()
    assert Generation.objects.filter(user=carol).count() == 0


def test_it_redirects_a_create_without_htmx(bob, accounts):
    form = {
        "prompt": "a red kite",
        "model": "flux-2-max",
        "provider": "sb-apiframe",
        "idempotency_key": "abc",
    }
    response = logged_in(bob).post("/generate", form)
    assert response.status_code == 302 and response["Location"] == "/"
    assert Generation.objects.filter(user=bob).count() == 1


# -- CSRF on the browser's unsafe requests (test plan 33) -------------------------------------------------------------
def test_it_refuses_browser_posts_without_the_csrf_token(bob, accounts):
    job = held_job(bob)
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    client.get("/login/")
    token = client.cookies["csrftoken"].value
    form = {"prompt": "a red kite", "model": "flux-2-max", "provider": "sb-apiframe", "idempotency_key": "c1"}

    assert client.post("/generate", form, HTTP_HX_REQUEST="true").status_code == 403
    assert client.post(f"/jobs/{job.pk}/cancel", HTTP_HX_REQUEST="true").status_code == 403
    assert Generation.objects.count() == 1 and Generation.objects.get().status == "queued"

    assert client.post("/generate", form, HTTP_HX_REQUEST="true", HTTP_X_CSRFTOKEN=token).status_code == 200
    assert (
        client.post(f"/jobs/{job.pk}/cancel", HTTP_HX_REQUEST="true", HTTP_X_CSRFTOKEN=token).status_code
        == 200
    )
    assert Generation.objects.count() == 2


def test_it_changes_nothing_on_a_get(bob, bobs):
    job, image = bobs
    client = logged_in(bob)
    before = (credits.account_for(bob).balance, Generation.objects.count(), Image.objects.count())
    for path in (
        "/",
        f"/jobs/{job.pk}/card",
        f"/jobs/{job.pk}/",
        "/gallery",
        "/credits/",
        "/credits/badge",
        "/studio/quote?model=flux-2-max",
        "/generate",
        f"/jobs/{job.pk}/cancel",
    ):
        client.get(path, HTTP_HX_REQUEST="true")
    assert (credits.account_for(bob).balance, Generation.objects.count(), Image.objects.count()) == before


# -- signed reference links ---------------------------------------------------------------------------------------
def test_it_serves_a_reference_image_only_by_a_valid_unexpired_signature(client, bobs):
    _, image = bobs
    path = media.reference_url(image).split("://", 1)[1].split("/", 1)[1]
    path = "/" + path
    assert path.startswith("/r/")

    response = client.get(path)  # anonymous: the provider fetching it has no session
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    with image.file.open("rb") as f:
        assert b"".join(response.streaming_content) == f.read()

    with time_machine.travel(timezone.now() + timedelta(seconds=media.REFERENCE_MAX_AGE + 5)):
        assert client.get(path).status_code == 404
    token = path.removeprefix("/r/")
    assert client.get("/r/" + token[:-2] + ("AA" if token[-2:] != "AA" else "BB")).status_code == 404
    assert client.get("/r/" + signing.dumps(image.pk)).status_code == 404  # signed, but not for this purpose
    assert client.get("/r/" + signing.dumps(image.pk + 1000, salt=media.REFERENCE_SALT)).status_code == 404
    assert client.post(path).status_code == 405


# -- escaping ----------------------------------------------------------------------------------------------------------
def test_it_escapes_prompts_in_every_fragment(bob, carol, accounts):
    job = make_job(bob, accounts["apiframe"], HOSTILE, status="succeeded")
    image = make_image(job)
    client = logged_in(carol)

    pages = {
        "gallery": client.get("/gallery", HTTP_HX_REQUEST="true"),
        "gallery-new": client.get(f"/gallery?after={image.pk - 1}", HTTP_HX_REQUEST="true"),
        "job card": client.get(f"/jobs/{job.pk}/card", HTTP_HX_REQUEST="true"),
        "job page": client.get(f"/jobs/{job.pk}/"),
        "studio": client.get("/"),
    }
    for name, response in pages.items():
        html = response.content.decode()
        assert response.status_code == 200, name
        assert "<script>alert(1)" not in html, name
        assert 'hx-get="/admin/"' not in html, name
        assert "&lt;script&gt;" in html, name


def test_it_prices_live_and_explains_what_it_cannot_price(bob, accounts):
    client = logged_in(bob)
    priced = client.get("/studio/quote", {"model": "flux-2-max", "megapixels": "2"}, HTTP_HX_REQUEST="true")
    assert 'data-testid="price">100<' in priced.content.decode()
    assert "You would have 900 left" in priced.content.decode()
    unknown = client.get(
        "/studio/quote", {"model": "flux-2-max", "reference_images": "999"}, HTTP_HX_REQUEST="true"
    )
    assert unknown.status_code == 200
    assert "No image with id 999" in unknown.content.decode()
