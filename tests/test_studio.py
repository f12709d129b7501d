"""The studio's htmx fragments (each asked with HX-Request, as the page asks) and the twelve bugs of issue 8
("Bugs found in today's studio"): a price that is the hold, references once, older jobs, an ended session,
the empty state, provider HTML, switching, quotas, remix, the phone, the theme and headings, credits."""

import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from generations import credits, engine
from generations.models import CreditAccount, Generation, LedgerEntry, Quota, Reference, Usage
from generations.providers import GenerationRequest
from tests.test_access import attached, logged_in, make_image, make_job, png

HX = {"HTTP_HX_REQUEST": "true"}
FORM = {"prompt": "a red kite", "model": "flux-2-max", "provider": "sb-apiframe"}


def post_generate(client, data: dict, key: str = "k1"):
    return client.post("/generate", data | {"idempotency_key": key}, **HX)


def price_in(response) -> int:
    return int(
        re.search(r'data-testid="price">([\d,]+)<', response.content.decode()).group(1).replace(",", "")
    )


@pytest.fixture
def picture(bob, accounts):
    """A team image bob can pick as a reference (96x64: one input megapixel, 30 credits on flux-2-max)."""
    return make_image(make_job(bob, accounts["apiframe"], status="succeeded"))


# -- bug 1: the price counts every reference and is what the create holds --------------------------------------
def test_it_stores_a_chosen_file_at_once_as_a_chip_the_price_counts(bob, accounts, picture):
    client = logged_in(bob)
    uploaded = client.post("/studio/references", {"reference_files": attached(png())}, **HX)
    upload = Reference.objects.get(user=bob)
    html = uploaded.content.decode()
    assert uploaded.status_code == 200 and "form-changed" in uploaded["HX-Trigger-After-Settle"]
    assert f'name="reference_uploads" value="{upload.pk}" checked' in html
    assert 'id="reference-files"' in html and 'hx-swap-oob="true"' in html  # the file input emptied

    chosen = FORM | {"reference_images": [picture.pk], "reference_uploads": [upload.pk]}
    quoted = price_in(client.get("/studio/quote", chosen, **HX))
    assert quoted == 70 + 30 + 30
    post_generate(client, chosen)
    assert Generation.objects.latest("id").credits_reserved == quoted


def test_it_refuses_a_file_past_the_storage_limit_beside_the_field(bob, accounts, settings):
    settings.FLUXWEB_MAX_UPLOAD_STORAGE_BYTES = 10
    response = logged_in(bob).post("/studio/references", {"reference_files": attached(png())}, **HX)
    assert 'id="error-references" hx-swap-oob="true">Your reference uploads' in response.content.decode()
    assert not Reference.objects.exists()


# -- bug 2: one image picked twice is one reference, charged once ---------------------------------------------
def test_it_takes_a_reference_picked_twice_once(bob, accounts, picture):
    client = logged_in(bob)
    twice = FORM | {"reference_images": [picture.pk, picture.pk]}
    assert price_in(client.get("/studio/quote", twice, **HX)) == 100
    post_generate(client, twice)
    job = Generation.objects.latest("id")
    assert job.params["reference_urls"] == [f"image:{picture.pk}"] and job.credits_reserved == 100


def test_it_adds_no_second_chip_for_an_image_already_picked(bob, accounts, picture):
    client = logged_in(bob)
    first = client.get(f"/studio/reference/{picture.pk}", **HX)
    again = client.get(f"/studio/reference/{picture.pk}", {"reference_images": [picture.pk]}, **HX)
    assert f'id="ref-image-{picture.pk}"' in first.content.decode()
    assert again.status_code == 204


# -- bug 3: "Your jobs" reaches older jobs ----------------------------------------------------------------------
def test_it_pages_through_older_jobs_by_keyset(bob, accounts):
    jobs = [make_job(bob, accounts["apiframe"], f"job {i}", status="succeeded") for i in range(15)]
    client = logged_in(bob)
    assert (
        'id="jobs" aria-live="polite" hx-get="/jobs/" hx-trigger="load"' in client.get("/").content.decode()
    )
    page = client.get("/jobs/", **HX).content.decode()
    assert page.count('class="job job-') == 12 and f'id="job-{jobs[0].pk}"' not in page
    more = re.search(r'hx-get="/jobs/\?before=(\d+)"', page)
    assert more and int(more.group(1)) == jobs[3].pk
    older = client.get(f"/jobs/?before={more.group(1)}", **HX).content.decode()
    assert [int(i) for i in re.findall(r'<article class="job [^"]*" id="job-(\d+)"', older)] == [
        jobs[2].pk,
        jobs[1].pk,
        jobs[0].pk,
    ]
    assert "?before=" not in older  # the end: no further button
    assert client.get("/jobs/?before=x", **HX).status_code == 404


def test_older_jobs_are_only_ones_own(bob, carol, accounts):
    make_job(bob, accounts["apiframe"], "bob's job", status="succeeded")
    older = logged_in(carol).get("/jobs/?before=999999", **HX).content.decode()
    assert "<article" not in older and "bob&#x27;s job" not in older


# -- bug 4: an ended session is one clear "log in again" --------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/studio/quote?model=flux-2-max", "/jobs/updates?watch=1:x", "/credits/badge", "/studio/options"]
)
def test_it_sends_an_htmx_request_without_a_session_to_log_in_with_a_401(client, path):
    response = client.get(path, HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL="http://testserver/?remix=3")
    assert response.status_code == 401
    assert response["HX-Redirect"].startswith("/login/?next=%2F&expired=1")
    assert "<html" not in response.content.decode()
    plain = client.get(path)
    assert plain.status_code == 302 and plain["Location"].startswith("/login/?next=")


def test_it_says_why_the_login_page_is_shown_after_a_session_ended(client):
    assert "Your session has ended" in client.get("/login/?next=/&expired=1").content.decode()
    assert "Your session has ended" not in client.get("/login/").content.decode()


def test_it_answers_401_to_an_htmx_post_after_logout(bob, accounts):
    client = logged_in(bob)
    client.post("/logout/")
    response = post_generate(client, FORM)
    assert response.status_code == 401 and "HX-Redirect" in response
    assert not Generation.objects.exists()


# -- bug 5: the empty state goes with the first job -------------------------------------------------------------
def test_it_removes_the_empty_state_with_the_first_job(bob, accounts):
    client = logged_in(bob)
    assert 'id="jobs-empty"' in client.get("/jobs/", **HX).content.decode()
    created = post_generate(client, FORM).content.decode()
    assert '<p id="jobs-empty" class="empty" hidden hx-swap-oob="true"></p>' in created
    later = client.get("/jobs/", **HX).content.decode()
    # Hidden, not gone: the next create's out-of-band swap finds its target (htmx:oobErrorNoTarget else).
    assert "Nothing yet" not in later and '<p id="jobs-empty" class="empty" hidden></p>' in later


# -- bug 6: a provider's HTML page is never the message ---------------------------------------------------------
BAD_GATEWAY = (
    "Apiframe had a server error: <html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
)


def test_it_shows_words_for_a_provider_html_error_and_keeps_the_raw_reply_for_admins(bob, alice, accounts):
    job = make_job(
        bob, accounts["apiframe"], status="failed", error_code="server_error", error_message=BAD_GATEWAY
    )
    job.events.create(what="failed", detail=BAD_GATEWAY)
    card = logged_in(bob).get(f"/jobs/{job.pk}/card", **HX).content.decode()
    assert "Apiframe had a server error and did not finish the job." in card
    assert "502 Bad Gateway" not in card and "&lt;html" not in card
    member_page = logged_in(bob).get(f"/jobs/{job.pk}/").content.decode()
    assert "&lt;html" not in member_page and "raw reply" in member_page
    admin_page = logged_in(alice).get(f"/jobs/{job.pk}/").content.decode()
    assert "&lt;title&gt;502 Bad Gateway" in admin_page


def test_it_keeps_a_providers_plain_words(bob, accounts):
    job = make_job(
        bob,
        accounts["apiframe"],
        status="failed",
        error_code="moderation",
        error_message="Flagged as unsafe.",
    )
    assert "Flagged as unsafe." in logged_in(bob).get(f"/jobs/{job.pk}/card", **HX).content.decode()


# -- bug 7: switching provider or model keeps the form; one message; the right limit; the right account --------
def test_it_keeps_picked_references_when_the_provider_changes(bob, accounts, picture):
    client = logged_in(bob)
    options = client.get(
        "/studio/options",
        {"model": "flux-2-max", "provider": "sb-vtrix", "reference_images": [picture.pk]},
        **HX,
    )
    assert f'name="reference_images" value="{picture.pk}" checked' in options.content.decode()
    assert options["HX-Trigger-After-Settle"] == "form-changed"  # the price is asked again after the swap
    plus = client.get("/studio/options", {"model": "flux-plus", "reference_images": [picture.pk]}, **HX)
    html = plus.content.decode()
    assert f'value="{picture.pk}" checked' in html and "takes no reference images" in html


def test_it_shows_a_message_in_one_place(bob, carol, accounts):
    quote = logged_in(bob).get("/studio/quote", FORM, **HX).content.decode()
    assert '<p id="form-error" hx-swap-oob="true"></p>' in quote  # a fresh price clears the submit's message
    refused = post_generate(logged_in(carol), FORM)
    html = refused.content.decode()
    assert refused["HX-Retarget"] == "#form-error" and "you are 70 short" in html
    # The price line comes back with the price alone: the reason is under the button, not twice.
    quote = re.search(r'<p id="quote"[^>]*hx-swap-oob="true">(.*?)</p>', html, re.S).group(1)
    assert "Costs" in quote and "short" not in quote and "error" not in quote


def test_it_names_the_account_the_price_uses_in_best_available(bob, accounts):
    two = {"prompt": "", "model": "flux-2-max", "provider": "", "n": "2"}
    quote = logged_in(bob).get("/studio/quote", two, **HX).content.decode()
    assert "via sb-pixeldojo" in quote  # apiframe and vtrix make one image a request
    assert (
        '<option value="" id="best-available" hx-swap-oob="true">Best available (sb-pixeldojo)</option>'
        in quote
    )
    page = logged_in(bob).get("/").content.decode()
    assert "Best available (sb-apiframe)" not in page


def test_it_gives_the_image_limit_of_the_chosen_provider_beside_the_field(bob, accounts):
    response = post_generate(logged_in(bob), FORM | {"provider": "sb-pixeldojo", "n": "6"})
    html = response.content.decode()
    assert 'id="error-n" hx-swap-oob="true">FLUX.2 [max] makes at most 4 images on sb-pixeldojo.' in html
    assert "10" not in html


# -- bug 8: the price knows the quotas ------------------------------------------------------------------------------
def test_it_warns_in_the_price_of_a_quota_the_create_would_hit(bob, accounts):
    Quota.objects.create(user=None, daily_images=18)
    Usage.objects.create(user=bob, window=credits.day_window(timezone.now()), images=16)
    client = logged_in(bob)
    quote = client.get("/studio/quote", FORM | {"provider": "sb-pixeldojo", "n": "3"}, **HX).content.decode()
    assert "Your limit is 18 images a day and 16 are used" in quote
    assert "You would have" not in quote
    refused = post_generate(client, FORM | {"provider": "sb-pixeldojo", "n": "3"}).content.decode()
    message = re.search(r"Your limit is[^<]*", quote).group(0).strip()
    assert message in refused  # the same words the create refuses with
    fits = client.get("/studio/quote", FORM | {"provider": "sb-pixeldojo", "n": "2"}, **HX).content.decode()
    assert "You would have" in fits


def test_it_warns_of_a_monthly_credit_quota_and_a_provider_cap(bob, accounts):
    Quota.objects.create(user=bob, monthly_credits=100)
    client = logged_in(bob)
    assert "You would have 930 left" in client.get("/studio/quote", FORM, **HX).content.decode()
    over = client.get("/studio/quote", FORM | {"provider": "sb-pixeldojo", "n": "2"}, **HX).content.decode()
    assert "Your limit is 100 credits a month and 0 are spent or held; this needs 140." in over
    accounts["vtrix"].monthly_spend_cap = 50
    accounts["vtrix"].save()
    capped = client.get("/studio/quote", FORM | {"provider": "sb-vtrix"}, **HX).content.decode()
    assert "monthly spend cap of 50 credits" in capped


# -- bug 9: remix is exact; the seed is not kept; a model change keeps n and format ------------------------------
def test_it_remixes_with_the_references_and_every_setting(bob, accounts, picture):
    upload = Reference.objects.create(
        user=bob, file="references/x.png", width=64, height=64, format="png", bytes=10
    )
    source = make_job(
        bob,
        accounts["pixeldojo"],
        status="succeeded",
        n=3,
        seed=1234,
        params={
            "aspect_ratio": "16:9",
            "megapixels": 2.0,
            "output_format": "png",
            "reference_urls": [f"image:{picture.pk}", f"upload:{upload.pk}"],
        },
    )
    page = logged_in(bob).get(f"/?remix={source.pk}").content.decode()
    assert f'name="reference_images" value="{picture.pk}" checked' in page
    assert f'name="reference_uploads" value="{upload.pk}" checked' in page
    assert 'name="n" id="n" value="3"' in page and 'value="1234"' in page
    assert '<option value="png" selected>' in page and "<option selected>16:9</option>" in page
    assert '<option value="sb-pixeldojo" selected>' in page


def test_it_remixes_a_custom_size(bob, accounts):
    source = make_job(bob, accounts["vtrix"], status="succeeded", params={"width": 1536, "height": 1024})
    page = logged_in(bob).get(f"/?remix={source.pk}").content.decode()
    assert 'name="width" min="16" max="8192" value="1536"' in page
    assert 'name="height" min="16" max="8192" value="1024"' in page


def test_a_remix_of_another_members_job_leaves_their_upload_out(bob, carol, accounts, picture):
    upload = Reference.objects.create(
        user=bob, file="references/x.png", width=64, height=64, format="png", bytes=1
    )
    source = make_job(
        bob, accounts["apiframe"], status="succeeded", params={"reference_urls": [f"upload:{upload.pk}"]}
    )
    page = logged_in(carol).get(f"/?remix={source.pk}").content.decode()
    assert 'name="reference_uploads"' not in page and "another member's upload" in page


def test_it_clears_the_seed_after_a_generate(bob, accounts):
    created = post_generate(logged_in(bob), FORM | {"seed": "42"}).content.decode()
    assert re.search(
        r'<input type="number" name="seed" id="seed"[^>]*value=""[^>]*hx-swap-oob="true">', created
    )


def test_it_keeps_n_and_format_when_the_model_changes(bob, accounts):
    options = logged_in(bob).get(
        "/studio/options", {"model": "flux-2-max", "n": "3", "output_format": "png", "provider": ""}, **HX
    )
    html = options.content.decode()
    assert 'name="n" id="n" value="3"' in html and '<option value="png" selected>' in html
    maxapi = logged_in(bob).get(
        "/studio/options", {"model": "flux-pro-2", "n": "3", "output_format": "png"}, **HX
    )
    assert 'name="n" id="n" value="3"' in maxapi.content.decode()  # MaxAPI writes JPEG only: that falls back
    too_many = logged_in(bob).get("/studio/options", {"model": "flux-2-max", "n": "9"}, **HX).content.decode()
    assert 'name="n" id="n" value="4"' in too_many  # kept within what the new model allows


# -- bug 10 and 11: phone, theme, headings, announcements ----------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/credits/", "/login/", "generation"])
def test_each_page_has_one_h1(bob, accounts, client, path):
    if path == "generation":
        path = f"/jobs/{make_job(bob, accounts['apiframe']).pk}/"
    if path != "/login/":
        client.force_login(bob)
    html = client.get(path).content.decode()
    assert html.count("<h1") == 1, path
    assert ' style="' not in html and "<script>" not in html and " onclick=" not in html


def test_the_running_card_announces_itself(bob, accounts):
    job = make_job(bob, accounts["apiframe"], status="running")
    card = logged_in(bob).get(f"/jobs/{job.pk}/card", **HX).content.decode()
    assert '<div class="spinner" role="status"><span class="visually-hidden">Running</span>' in card
    page = logged_in(bob).get("/").content.decode()
    assert (
        '<div id="jobs" aria-live="polite"' in page
        and 'id="quote" class="quote" role="status" aria-live="polite"' in page
    )
    assert 'id="toasts" class="toasts" role="status" aria-live="polite"' in page


def test_the_stylesheet_has_a_dark_theme_and_the_page_loads_our_script(bob, client):
    from django.contrib.staticfiles import finders

    css = open(finders.find("fluxweb/studio.css")).read()
    assert "@media (prefers-color-scheme: dark)" in css and "--surface:" in css
    js = open(finders.find("fluxweb/studio.js")).read()
    assert "ctrlKey" in js and "job-finished" in js and "Notification.requestPermission" in js
    client.force_login(bob)
    assert '<script src="/static/fluxweb/studio.js' in client.get("/").content.decode()


def test_it_says_near_the_button_that_the_job_started(bob, accounts):
    created = post_generate(logged_in(bob), FORM).content.decode()
    job = Generation.objects.get()
    assert f'<p id="form-status" role="status" hx-swap-oob="true">Job #{job.pk} started' in created


# -- item 2: one poll for every card -------------------------------------------------------------------------------
def test_the_poll_returns_only_the_cards_that_changed(bob, accounts):
    running = make_job(bob, accounts["apiframe"], "running one", status="running", progress=0.5)
    queued = make_job(bob, accounts["apiframe"], "queued one", status="queued")
    client = logged_in(bob)
    page = client.get("/jobs/", **HX).content.decode()
    watch = re.findall(r'name="watch" value="([^"]+)"', page)
    assert sorted(watch) == sorted([f"{running.pk}:running.50.0", f"{queued.pk}:queued.0.0"])
    assert 'hx-get="/jobs/updates"' in page and 'hx-get="/jobs/{running.pk}/card"' not in page

    same = client.get("/jobs/updates", {"watch": watch}, **HX)
    assert "<article" not in same.content.decode() and "HX-Trigger" not in same
    assert 'id="job-poller" hx-get="/jobs/updates"' in same.content.decode()  # still watching

    Generation.objects.filter(pk=running.pk).update(progress=0.8)
    moved = client.get("/jobs/updates", {"watch": watch}, **HX).content.decode()
    assert f'id="job-{running.pk}"' in moved and f'id="job-{queued.pk}"' not in moved
    assert (
        f'id="job-{running.pk}" data-status="running" aria-labelledby="job-{running.pk}-title" hx-swap-oob="true"'
        in moved
    )


def test_the_poll_tells_the_page_which_of_your_jobs_ended(bob, accounts):
    job, _ = engine.create(
        bob, GenerationRequest(prompt="a harbour at night", model="flux-2-max"), provider="sb-apiframe"
    )
    client = logged_in(bob)
    engine.fail(job, "server_error", BAD_GATEWAY)
    response = client.get("/jobs/updates", {"watch": f"{job.pk}:queued.0.0"}, **HX)
    events = json.loads(response["HX-Trigger"])
    assert {"gallery-changed", "credits-changed"} <= set(events)
    [notice] = events["job-finished"]["jobs"]
    assert notice["id"] == job.pk and notice["status"] == "failed"
    assert "did not finish the job" in notice["text"] and "70 credits refunded" in notice["text"]
    html = response.content.decode()
    assert "70 credits refunded" in html and "Retry" in html
    assert '<div id="job-poller" hx-swap-oob="true"></div>' in html  # nothing left to watch


def test_the_poll_warns_when_the_balance_runs_low(carol, accounts):
    credits.grant(carol, 100)
    job, _ = engine.create(carol, GenerationRequest(prompt="a", model="flux-2-max"), provider="sb-apiframe")
    engine.cancel(job, carol)
    response = logged_in(carol).get("/jobs/updates", {"watch": f"{job.pk}:queued.0.0"}, **HX)
    assert (
        "Your balance is low: 100 credits left" in json.loads(response["HX-Trigger"])["balance-low"]["text"]
    )
    assert 'class="badge low"' in logged_in(carol).get("/credits/badge", **HX).content.decode()


def test_the_poll_keeps_going_for_a_job_it_did_not_know_of(bob, accounts):
    """A Generate answered while a poll was on its way: that poll's answer must not stop the polling."""
    done = make_job(bob, accounts["apiframe"], status="succeeded")
    make_job(bob, accounts["apiframe"], "made meanwhile", status="queued")
    response = logged_in(bob).get("/jobs/updates", {"watch": f"{done.pk}:running.0.0"}, **HX)
    assert 'id="job-poller" hx-get="/jobs/updates"' in response.content.decode()


def test_another_members_job_ending_makes_no_toast_for_you(bob, carol, accounts):
    job = make_job(bob, accounts["apiframe"], status="succeeded")
    response = logged_in(carol).get("/jobs/updates", {"watch": f"{job.pk}:running.0.0"}, **HX)
    assert "job-finished" not in json.loads(response["HX-Trigger"])


def test_the_poll_takes_the_same_queries_for_two_cards_or_eight(bob, accounts, django_assert_max_num_queries):
    client = logged_in(bob)
    jobs = [make_job(bob, accounts["apiframe"], f"j{i}", status="running") for i in range(8)]
    client.get("/jobs/updates", {"watch": [f"{j.pk}:x" for j in jobs[:2]]}, **HX)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as two:
        assert (
            client.get("/jobs/updates", {"watch": [f"{j.pk}:x" for j in jobs[:2]]}, **HX).status_code == 200
        )
    with django_assert_max_num_queries(len(two.captured_queries)):
        eight = client.get("/jobs/updates", {"watch": [f"{j.pk}:x" for j in jobs]}, **HX)
    assert eight.content.decode().count('hx-swap-oob="true"') == 9  # eight cards and the poller


def test_a_card_shows_an_eta_from_the_accounts_recent_jobs(bob, accounts):
    now = timezone.now()
    for seconds in (10, 12, 14, 16):
        make_job(
            bob,
            accounts["apiframe"],
            status="succeeded",
            started_at=now - timedelta(seconds=60),
            provider_done_at=now - timedelta(seconds=60 - seconds),
        )
    job = make_job(bob, accounts["apiframe"], status="running")
    card = logged_in(bob).get(f"/jobs/{job.pk}/card", **HX).content.decode()
    assert re.search(r"usually 1\d–1\d s", card)


# -- cancel and retry ---------------------------------------------------------------------------------------------
def test_it_cancels_and_says_what_was_refunded(bob, accounts):
    job, _ = engine.create(bob, GenerationRequest(prompt="a", model="flux-2-max"), provider="sb-apiframe")
    card = logged_in(bob).post(f"/jobs/{job.pk}/cancel", **HX)
    assert (
        "Canceled; 70 credits refunded" in card.content.decode() and "credits-changed" in card["HX-Trigger"]
    )
    assert "Retry" in card.content.decode()


def test_it_retries_a_failed_job_with_the_same_settings(bob, accounts, picture):
    client = logged_in(bob)
    post_generate(client, FORM | {"seed": "77", "reference_images": [picture.pk], "output_format": "png"})
    first = Generation.objects.latest("id")
    engine.fail(first, "server_error", "Apiframe had a server error: HTTP 502")
    response = client.post(f"/jobs/{first.pk}/retry", {"idempotency_key": "r1"}, **HX)
    again = client.post(f"/jobs/{first.pk}/retry", {"idempotency_key": "r1"}, **HX)  # a double click
    second = Generation.objects.latest("id")
    assert f'id="job-{second.pk}"' in response.content.decode() and again["HX-Reswap"] == "none"
    assert (second.seed, second.account, second.params) == (first.seed, first.account, first.params)
    assert second.credits_reserved == first.credits_reserved == 100
    assert 'hx-get="/jobs/updates"' in response.content.decode()


def test_retry_is_for_ones_own_ended_job(bob, carol, accounts):
    failed = make_job(bob, accounts["apiframe"], status="failed")
    running = make_job(bob, accounts["apiframe"], status="running")
    assert logged_in(carol).post(f"/jobs/{failed.pk}/retry", **HX).status_code == 404
    assert logged_in(bob).post(f"/jobs/{running.pk}/retry", **HX).status_code == 404
    assert logged_in(bob).get(f"/jobs/{failed.pk}/retry", **HX).status_code == 405


def test_a_refused_retry_says_why_on_its_card(carol, accounts):
    failed = make_job(carol, accounts["apiframe"], status="failed")
    response = logged_in(carol).post(f"/jobs/{failed.pk}/retry", **HX)
    assert response["HX-Retarget"] == f"#retry-error-{failed.pk}"
    assert "short" in response.content.decode()


# -- bug 12: credits -----------------------------------------------------------------------------------------------
def test_a_user_made_in_the_admin_can_be_granted_credits_before_first_login(alice):
    admin = Client()
    admin.force_login(alice)
    made = admin.post(
        "/admin/auth/user/add/",
        {
            "username": "dave",
            "usable_password": "true",
            "password1": "pw-Dave-9871!",
            "password2": "pw-Dave-9871!",
        },
    )
    assert made.status_code == 302, made.content.decode()[:2000]
    dave = get_user_model().objects.get(username="dave")
    account = CreditAccount.objects.get(user=dave)  # there before dave ever logs in
    granted = admin.post(
        "/admin/generations/creditaccount/",
        {
            "action": "grant_credits",
            "_selected_action": [account.pk],
            "apply": "1",
            "amount": "50",
            "note": "welcome",
        },
    )
    assert granted.status_code == 302
    assert credits.account_for(dave).available == 50
    assert LedgerEntry.objects.get(user=dave).note == "welcome"


def test_the_ledger_shows_signs_and_the_balance_after_each_movement(bob, accounts):
    job, _ = engine.create(bob, GenerationRequest(prompt="a", model="flux-2-max"), provider="sb-apiframe")
    engine.cancel(job, bob)
    html = logged_in(bob).get("/credits/").content.decode()
    rows = re.findall(
        r'<td data-label="Credits" class="num[^"]*">([^<]*)</td>\s*<td data-label="Available after" class="num">([^<]*)</td>',
        html,
    )
    assert rows == [("+70", "1,000"), ("−70", "930"), ("+1,000", "1,000")]
    assert LedgerEntry.objects.filter(user=bob).count() == 3


def test_members_do_not_see_the_providers_cost_and_admins_see_its_unit(bob, alice, accounts):
    job = make_job(bob, accounts["vtrix"], status="succeeded", provider_cost="0.07")
    assert "provider cost" not in logged_in(bob).get(f"/jobs/{job.pk}/").content.decode()
    assert "provider cost 0.07 USD" in logged_in(alice).get(f"/jobs/{job.pk}/").content.decode()


def test_the_ledger_fits_a_phone(bob):
    html = logged_in(bob).get("/credits/").content.decode()
    assert '<div class="table-wrap">' in html and 'data-label="When"' in html


# -- the page's cost ---------------------------------------------------------------------------------------------
def test_the_studio_page_takes_three_queries_and_its_jobs_a_fixed_number(bob, accounts, picture):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = logged_in(bob)
    client.get("/")
    with CaptureQueriesContext(connection) as page:
        assert client.get("/").status_code == 200
    assert len(page) <= 3  # the session, the user and the gallery's cards: options from cached accounts
    client.get("/jobs/", **HX)
    with CaptureQueriesContext(connection) as few:
        client.get("/jobs/", **HX)
    for i in range(10):
        make_image(make_job(bob, accounts["apiframe"], f"more {i}", status="succeeded"))
    with CaptureQueriesContext(connection) as many:
        assert client.get("/jobs/", **HX).content.decode().count('class="job job-') == 11
    assert len(many) == len(few)


# -- issue 8, the gaps: jobs made in the lightbox, one's uploads, the badge on every page, Best available -------
def test_the_job_column_takes_the_cards_of_jobs_made_in_the_lightbox(bob, carol, accounts, picture):
    client = logged_in(bob)
    studio = client.get("/").content.decode()
    assert (
        'id="jobs"' in studio and 'data-added-url="/jobs/"' in studio
    )  # studio.js asks there on jobs-created
    rerun = client.post(f"/images/{picture.pk}/rerun", {"idempotency_key": "r1", "embed": "studio"}, **HX)
    new = json.loads(rerun["HX-Trigger"])["jobs-created"]["jobs"]
    theirs = make_job(carol, accounts["apiframe"], status="queued")
    added = client.get("/jobs/", {"ids": [*new, theirs.pk, "x"]}, **HX).content.decode()
    assert f'id="job-{new[0]}"' in added and f'name="watch" value="{new[0]}:' in added
    assert f'id="job-{theirs.pk}"' not in added  # the user's own jobs only
    assert 'id="jobs-empty" class="empty" hidden hx-swap-oob="true"' in added
    assert 'id="job-poller" hx-get="/jobs/updates"' in added and "Older jobs" not in added


def test_compare_from_the_lightbox_names_its_new_jobs(bob, accounts, picture):
    response = logged_in(bob).post(f"/images/{picture.pk}/compare", {"idempotency_key": "c1"}, **HX)
    made = json.loads(response["HX-Trigger"])["jobs-created"]["jobs"]
    assert sorted(made) == sorted(Generation.objects.filter(comparison__gt="").values_list("pk", flat=True))


def uploaded(client) -> Reference:
    client.post("/studio/references", {"reference_files": attached(png())}, **HX)
    return Reference.objects.latest("id")


def test_the_reference_fieldset_lists_ones_uploads_each_with_delete(bob, carol, accounts):
    client = logged_in(bob)
    upload = uploaded(client)
    logged_in(carol).post("/studio/references", {"reference_files": attached(png())}, **HX)
    options = client.get("/studio/options", {"model": "flux-2-max", "provider": "sb-apiframe"}, **HX)
    assert 'hx-get="/studio/uploads"' in options.content.decode()
    listed = client.get("/studio/uploads", **HX).content.decode()
    assert "Your uploads" in listed and listed.count('aria-label="Delete upload"') == 1
    assert f'hx-post="/studio/uploads/{upload.pk}/delete"' in listed
    path = upload.file.path
    deleted = client.post(f"/studio/uploads/{upload.pk}/delete", **HX)
    html = deleted.content.decode()
    assert deleted.status_code == 200 and "Upload deleted" in html
    assert f'id="ref-upload-{upload.pk}" hx-swap-oob="delete"' in html  # its chip leaves the form
    assert not Reference.objects.filter(pk=upload.pk).exists()
    import os

    assert not os.path.exists(path)


def test_it_asks_before_deleting_an_upload(bob, accounts):
    """Delete upload removes the file for good: htmx asks first (hx-confirm: window.confirm, no inline
    script), and the button keeps its accessible name."""
    client = logged_in(bob)
    upload = uploaded(client)
    listed = client.get("/studio/uploads", **HX).content.decode()
    button = re.search(r'<button[^>]*aria-label="Delete upload"[^>]*>', listed).group(0)
    assert f'hx-post="/studio/uploads/{upload.pk}/delete"' in button
    assert re.search(
        r'hx-confirm="Delete this uploaded file \(\d+×\d+ PNG\)\? It cannot be undone\."', button
    )


def test_an_upload_a_running_job_uses_is_not_deleted(bob, carol, accounts):
    client = logged_in(bob)
    upload = uploaded(client)
    job = make_job(
        bob, accounts["apiframe"], status="running", params={"reference_urls": [f"upload:{upload.pk}"]}
    )
    refused = client.post(f"/studio/uploads/{upload.pk}/delete", **HX).content.decode()
    assert f"Job #{job.pk} is still running with this upload" in refused and 'role="alert"' in refused
    assert Reference.objects.filter(pk=upload.pk).exists()
    assert logged_in(carol).post(f"/studio/uploads/{upload.pk}/delete", **HX).status_code == 404
    Generation.objects.filter(pk=job.pk).update(status="succeeded")
    client.post(f"/studio/uploads/{upload.pk}/delete", **HX)
    assert not Reference.objects.filter(pk=upload.pk).exists()


def test_every_page_has_the_credit_badge_in_its_header(bob, accounts, picture):
    make_job(bob, accounts["apiframe"], status="succeeded", comparison="a" * 32)
    client = logged_in(bob)
    for path in [
        "/",
        "/gallery",
        "/history/",
        f"/compare/{'a' * 32}",
        "/collections/",
        f"/gallery/images/{picture.pk}",
    ]:
        html = client.get(path).content.decode()
        header = html[html.index('<header class="bar">') : html.index("</header>")]
        assert 'id="credit-badge"' in header and 'hx-get="/credits/badge"' in header, path


def test_best_available_offers_the_options_of_the_account_the_price_names(bob, accounts):
    client = logged_in(bob)
    # One image of FLUX.2 [max]: Best available is sb-apiframe, which takes no safety tolerance (vtrix's is
    # 0-5, pixeldojo's 1-5: never their union).
    one = client.get("/studio/options", {"model": "flux-2-max", "provider": ""}, **HX).content.decode()
    assert 'name="options_for" value="sb-apiframe"' in one and "Safety tolerance" not in one
    assert (
        "via sb-apiframe"
        in client.get("/studio/quote", {"model": "flux-2-max", "provider": ""}, **HX).content.decode()
    )
    page = client.get("/").content.decode()
    assert "Safety tolerance" not in page and "0–5" not in page
    # Two images: the price names sb-pixeldojo, and the quote brings its options (1-5, no references).
    two = {"model": "flux-2-max", "provider": "", "n": "2", "options_for": "sb-apiframe"}
    quote = client.get("/studio/quote", two, **HX)
    html = quote.content.decode()
    assert "via sb-pixeldojo" in html
    assert '<div id="model-options" class="options" hx-swap-oob="true">' in html
    assert 'name="options_for" value="sb-pixeldojo"' in html and 'placeholder="1–5"' in html
    assert quote["HX-Trigger-After-Settle"] == "form-changed"
    settled = client.get("/studio/quote", two | {"options_for": "sb-pixeldojo"}, **HX).content.decode()
    assert "model-options" not in settled  # the options already are that account's: nothing swapped


def test_a_refusal_that_names_a_field_is_shown_beside_it(bob, accounts):
    """A Generate the engine refuses for one field's sake (here: the named provider account is failing)
    says so under the button and beside that field, as the form's own errors are."""
    from generations.models import ProviderAccount

    credits.grant(bob, 1000)
    apiframe = accounts["apiframe"]
    for _ in range(ProviderAccount.BREAKER_THRESHOLD):
        apiframe.record_calls(failed=1, seconds=0.2)
    client = logged_in(bob)

    page = post_generate(client, FORM).content.decode()

    beside = re.search(r'<p class="field-error" id="error-provider"[^>]*>([^<]*)</p>', page).group(1)
    assert "failing right now" in beside and not Generation.objects.exists()
