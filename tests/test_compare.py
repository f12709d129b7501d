"""Actions that make new jobs from an image (issue 8, item 5): rerun with the same seed, variations with new
seeds, and Compare providers: the same prompt and seed on every enabled account serving the model, grouped
by one `comparison` key and shown side by side with each one's cost and time, until every job has ended."""

from __future__ import annotations

import json
import re

import pytest

from generations import credits
from generations.models import Generation

from .test_gallery import HX, fresh_cache, logged_in, make_image  # noqa: F401 (fresh_cache: autouse)


@pytest.fixture
def image(carol, accounts):
    return make_image(carol, accounts["apiframe"], "a lighthouse at dusk")


def test_compare_sends_the_same_prompt_and_seed_to_every_account_serving_the_model(
    bob, image, accounts, drain
):
    client = logged_in(bob)
    response = client.post(f"/images/{image.pk}/compare", {"idempotency_key": "k" * 32}, **HX)

    assert response.status_code == 200 and response["HX-Redirect"].startswith("/compare/")
    token = response["HX-Redirect"].removeprefix("/compare/")
    jobs = list(Generation.objects.filter(comparison=token).select_related("account", "prompt"))
    assert sorted(j.account.slug for j in jobs) == ["sb-apiframe", "sb-pixeldojo", "sb-vtrix"]
    assert {j.prompt.text for j in jobs} == {"a lighthouse at dusk"} and {j.seed for j in jobs} == {1234}
    assert all(j.user == bob and j.n == 1 for j in jobs)
    assert credits.account_for(bob).reserved == sum(j.credits_reserved for j in jobs)

    page = client.get(f"/compare/{token}")
    html = page.content.decode()
    assert page.status_code == 200 and "<h1" in html and "Compare providers" in html
    assert 'hx-trigger="every 2s"' in html and html.count('class="compare-card') == 3
    assert "credits held" in html

    drain()
    grid = client.get(f"/compare/{token}", **HX)
    html = grid.content.decode()
    assert "<html" not in html and 'hx-trigger="every 2s"' not in html  # all ended: the poll stops
    for job in Generation.objects.filter(comparison=token):
        assert job.status == "succeeded", job.error_message
        card = html[html.index(f'id="compare-{job.pk}"') :]
        assert f"{job.credits_charged} credits" in card and " s</dd>" in card
        assert f"/images/{job.images.get().pk}/thumbnail" in card


def test_compare_twice_with_one_form_makes_one_set(bob, image, accounts):
    client = logged_in(bob)
    first = client.post(f"/images/{image.pk}/compare", {"idempotency_key": "a" * 32}, **HX)
    second = client.post(f"/images/{image.pk}/compare", {"idempotency_key": "a" * 32}, **HX)
    assert first["HX-Redirect"] == second["HX-Redirect"]
    assert Generation.objects.exclude(comparison="").count() == 3


def test_compare_on_the_studio_stays_and_its_jobs_join_your_jobs(bob, image, accounts):
    """From the studio's lightbox the jobs go to "Your jobs" live (jobs-created) instead of leaving the page;
    the comparison is a link in the lightbox's status."""
    data = {"idempotency_key": "s" * 32, "embed": "studio"}
    response = logged_in(bob).post(f"/images/{image.pk}/compare", data, **HX)
    html = response.content.decode()
    assert response.status_code == 200 and "HX-Redirect" not in response
    jobs = Generation.objects.exclude(comparison="")
    made = json.loads(response["HX-Trigger"])["jobs-created"]["jobs"]
    assert sorted(made) == sorted(jobs.values_list("pk", flat=True)) and len(made) == 3
    assert "credits-changed" in response["HX-Trigger"]
    assert 'id="lightbox-status"' in html and "Comparing on 3 provider accounts" in html
    assert f'href="/compare/{jobs[0].comparison}">See them side by side</a>' in html


def test_the_studios_lightbox_sends_compare_with_embed(bob, image, accounts):
    html = logged_in(bob).get(f"/gallery/images/{image.pk}?embed=studio", **HX).content.decode()
    form = re.search(r'<form[^>]*action="/images/\d+/compare".*?</form>', html, re.S).group(0)
    assert '<input type="hidden" name="embed" value="studio">' in form


def test_compare_says_which_accounts_refused(carol, image, accounts):
    response = logged_in(carol).post(f"/images/{image.pk}/compare", **HX)  # carol has no credits
    html = response.content.decode()
    assert response.status_code == 200 and "short" in html and 'id="lightbox-status"' in html
    assert not Generation.objects.exclude(comparison="").exists()


def test_the_compare_page_is_team_visible_and_refuses_odd_tokens(bob, carol, image, accounts):
    response = logged_in(bob).post(f"/images/{image.pk}/compare")
    assert response.status_code == 302
    assert logged_in(carol).get(response["Location"]).status_code == 200
    for token in ("x" * 32, "0" * 32, "../../etc"):
        assert logged_in(bob).get(f"/compare/{token}").status_code == 404
    assert logged_in(bob).get("/compare/%00").status_code == 400  # a NUL in any address, before the view


def test_rerun_keeps_the_seed_and_the_provider(bob, image, accounts):
    response = logged_in(bob).post(f"/images/{image.pk}/rerun", {"idempotency_key": "r" * 32}, **HX)
    html = response.content.decode()
    assert response.status_code == 200 and "Rerun queued with seed 1234" in html
    assert "credits-changed" in response["HX-Trigger"] and "jobs-created" in response["HX-Trigger"]
    job = Generation.objects.exclude(pk=image.generation_id).get()
    assert (job.user, job.seed, job.account.slug, job.prompt_id) == (
        bob,
        1234,
        "sb-apiframe",
        image.generation.prompt_id,
    )
    assert job.params["aspect_ratio"] == "16:9"
    assert re.search(rf'href="/jobs/{job.pk}/"', html)


def test_variations_make_n_jobs_each_with_a_new_seed(bob, image, accounts):
    response = logged_in(bob).post(f"/images/{image.pk}/variations", {"n": "3"}, **HX)
    assert "3 variations queued" in response.content.decode()
    jobs = list(Generation.objects.exclude(pk=image.generation_id))
    assert len(jobs) == 3 and len({j.seed for j in jobs}) == 3 and 1234 not in {j.seed for j in jobs}
    logged_in(bob).post(f"/images/{image.pk}/variations", {"n": "99"}, **HX)
    assert Generation.objects.count() == 1 + 3 + 4  # at most four at once


def test_actions_without_javascript_go_to_the_studio(bob, image, accounts):
    response = logged_in(bob).post(f"/images/{image.pk}/rerun")
    assert response.status_code == 302 and response["Location"] == "/"


def test_a_rerun_refused_for_money_says_why(carol, image, accounts):
    response = logged_in(carol).post(f"/images/{image.pk}/rerun", **HX)
    assert "short" in response.content.decode() and Generation.objects.count() == 1
