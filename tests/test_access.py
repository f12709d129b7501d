"""Who may see what in the browser views and htmx endpoints: login everywhere, a shared team gallery, one's
own jobs to cancel, private no-store fragments, signed reference links, escaped prompts, CSRF."""

import io
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from django.conf import settings
from django.core import signing
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from PIL import Image as PILImage

from generations import credits, media
from generations.models import Generation, Image, Reference
from generations.urls import urlpatterns

from .conftest import make_job, row_image

PUBLIC = {"reference", "reference-upload", "webhook"}  # the signature or the unguessable token is the key
HOSTILE = '<script>alert(1)</script><i hx-get="/admin/" hx-trigger="load">x</i>'


def png(width: int = 96, height: int = 64) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), (40, 90, 200)).save(out, "PNG")
    return out.getvalue()


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
    # One poll per page watches every running card (views.job_updates); a finished card leaves the watch.
    assert f'name="watch" value="{running.pk}:' in running_card
    assert 'name="watch"' not in done_card and "Apiframe failed the job." in done_card


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


# -- the studio's reference uploads ---------------------------------------------------------------------------
FORM = {"prompt": "a red kite", "model": "flux-2-max", "provider": "sb-apiframe", "idempotency_key": "up1"}


def noise_png(side: int = 64) -> bytes:
    """A PNG that does not compress: about side * side * 3 bytes."""
    out = io.BytesIO()
    PILImage.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    return out.getvalue()


def attached(data: bytes, name: str = "ref.png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, "image/png")


def reference_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT) / "references"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def form_error(response) -> str:
    assert response.status_code == 200 and response["HX-Retarget"] == "#form-error", response.content[:300]
    return response.content.decode()


def test_generate_sends_an_upload_as_a_reference(bob, accounts):
    response = logged_in(bob).post(
        "/generate", FORM | {"reference_files": attached(png())}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200 and "HX-Retarget" not in response
    upload = Reference.objects.get(user=bob)
    assert Generation.objects.get().params["reference_urls"] == [f"upload:{upload.pk}"]


def test_generate_refuses_an_upload_over_the_size_cap(bob, accounts, settings):
    settings.FLUXWEB_MAX_UPLOAD_BYTES = 4000
    before = reference_files()

    response = logged_in(bob).post(
        "/generate", FORM | {"reference_files": attached(noise_png(), "big.png")}, HTTP_HX_REQUEST="true"
    )

    assert "big.png is larger than" in form_error(response)
    assert not Generation.objects.exists() and credits.account_for(bob).reserved == 0
    assert not Reference.objects.exists() and reference_files() == before


def test_generate_refuses_another_users_upload_as_a_reference(bob, carol, accounts):
    carols = media.store_reference(attached(png()), carol)

    response = logged_in(bob).post(
        "/generate", FORM | {"reference_uploads": [carols.pk]}, HTTP_HX_REQUEST="true"
    )

    assert f"No upload with id {carols.pk}" in form_error(response)
    assert not Generation.objects.exists() and credits.account_for(bob).reserved == 0
    bobs = media.store_reference(attached(png()), bob)
    made = logged_in(bob).post("/generate", FORM | {"reference_uploads": [bobs.pk]}, HTTP_HX_REQUEST="true")
    assert "HX-Retarget" not in made
    assert Generation.objects.get().params["reference_urls"] == [f"upload:{bobs.pk}"]


@pytest.mark.parametrize("htmx", [True, False])
def test_a_refused_generate_deletes_the_uploads_it_made_and_only_those(carol, accounts, htmx):
    kept = media.store_reference(attached(png()), carol)  # from an earlier request: not this one's to delete
    before = reference_files()
    extra = {"HTTP_HX_REQUEST": "true"} if htmx else {}

    response = logged_in(carol).post(  # carol has no credits: the create is refused
        "/generate",
        FORM | {"reference_files": [attached(png()), attached(png())], "reference_uploads": [kept.pk]},
        **extra,
    )

    assert response.status_code in (200, 302)
    assert not Generation.objects.exists()
    assert list(Reference.objects.all()) == [kept] and reference_files() == before
    assert kept.file.storage.exists(kept.file.name)


def test_generate_keeps_uploads_within_the_users_storage_limit(bob, carol, accounts, settings):
    earlier = noise_png()
    media.store_reference(attached(earlier), bob)
    settings.FLUXWEB_MAX_UPLOAD_STORAGE_BYTES = len(earlier) + 1000
    before = reference_files()

    response = logged_in(bob).post(
        "/generate", FORM | {"reference_files": attached(noise_png())}, HTTP_HX_REQUEST="true"
    )

    assert "Your reference uploads already take" in form_error(response)
    assert not Generation.objects.exists() and Reference.objects.count() == 1 and reference_files() == before
    credits.grant(carol, 1000, note="test credits")
    made = logged_in(carol).post(
        "/generate", FORM | {"reference_files": attached(noise_png())}, HTTP_HX_REQUEST="true"
    )
    assert "HX-Retarget" not in made and Reference.objects.filter(user=carol).count() == 1


# -- the form's idempotency key -----------------------------------------------------------------------------------
KEY_INPUT = re.compile(r'<input type="hidden" name="idempotency_key" id="idempotency-key" value="([^"]*)"')


def test_each_studio_page_carries_a_fresh_idempotency_key(bob, accounts):
    client = logged_in(bob)
    keys = {KEY_INPUT.search(client.get("/").content.decode()).group(1) for _ in range(3)}
    assert len(keys) == 3 and "" not in keys


def test_a_second_generate_after_a_successful_one_makes_a_second_job(bob, accounts):
    client = logged_in(bob)
    key = KEY_INPUT.search(client.get("/").content.decode()).group(1)

    first = client.post("/generate", FORM | {"idempotency_key": key}, HTTP_HX_REQUEST="true")
    refreshed = KEY_INPUT.search(first.content.decode())
    assert (
        refreshed and 'hx-swap-oob="true"' in first.content.decode()[refreshed.start() : refreshed.end() + 40]
    )
    assert refreshed.group(1) not in ("", key)
    second = client.post("/generate", FORM | {"idempotency_key": refreshed.group(1)}, HTTP_HX_REQUEST="true")

    assert Generation.objects.filter(user=bob).count() == 2
    assert "HX-Reswap" not in second  # the second card is shown, not swallowed as a double click
    again = client.post("/generate", FORM | {"idempotency_key": refreshed.group(1)}, HTTP_HX_REQUEST="true")
    assert again["HX-Reswap"] == "none" and Generation.objects.filter(user=bob).count() == 2


# -- queries do not grow with the rows ------------------------------------------------------------------------------
def add_images(users, account, jobs: int, per_job: int = 3) -> None:
    for i in range(jobs):
        job = make_job(users[i % len(users)], account, f"prompt {i}", status="succeeded")
        for index in range(per_job):
            row_image(job, index)


@pytest.mark.parametrize("path", ["/", "/gallery", "/gallery?after=0", "/gallery?before=999999"])
def test_the_studio_and_gallery_take_a_fixed_number_of_queries(
    alice, bob, carol, accounts, path, django_assert_max_num_queries
):
    users = [alice, bob, carol]
    client = logged_in(bob)
    add_images(users, accounts["apiframe"], jobs=3, per_job=1)  # a job each, so every prefetch runs already
    client.get(path, HTTP_HX_REQUEST="true")  # warm the session and the account rows
    with django_assert_max_num_queries(20) as few:
        assert client.get(path, HTTP_HX_REQUEST="true").status_code == 200

    add_images(users, accounts["apiframe"], jobs=10, per_job=3)  # 30 more images, 10 jobs, 3 users
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = client.get(path, HTTP_HX_REQUEST="true")
    assert response.content.decode().count('class="tile"') == 33


@pytest.mark.parametrize("htmx", [True, False])
def test_a_double_submit_with_a_file_makes_one_job_and_keeps_one_upload(bob, accounts, htmx):
    client = logged_in(bob)
    extra = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    before = reference_files()

    first = client.post("/generate", FORM | {"reference_files": attached(png())}, **extra)
    second = client.post("/generate", FORM | {"reference_files": attached(png())}, **extra)

    assert Generation.objects.filter(user=bob).count() == 1
    assert Reference.objects.filter(user=bob).count() == 1 and len(reference_files()) == len(before) + 1
    if htmx:
        assert "HX-Retarget" not in first and "HX-Retarget" not in second
        assert second["HX-Reswap"] == "none"  # the first click's card is already on the page
    else:
        assert first.status_code == second.status_code == 302
        assert not list(client.get("/").context["messages"])  # no error shown for the double submit
