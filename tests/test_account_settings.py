"""The settings page (issue 11): API tokens made with a name, their last use shown, revoked at once;
whether downloads keep the embedded metadata; job notifications on or off."""

import re

from django.test import Client

from accounts.models import Profile
from generations.models import ApiToken

from .test_access import logged_in, make_image, make_job

SETTINGS = "/account/settings/"


def test_it_sends_anonymous_visitors_to_log_in(client, bob):
    token, _ = ApiToken.issue(bob, "ci")
    for method, path in (
        ("get", SETTINGS),
        ("post", "/account/settings/tokens"),
        ("post", f"/account/settings/tokens/{token.pk}/revoke"),
        ("post", "/account/settings/preferences"),
    ):
        response = getattr(client, method)(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next="), path
    assert ApiToken.objects.filter(pk=token.pk).exists()


def test_it_makes_a_named_token_shown_once_that_works(bob):
    client = logged_in(bob)
    made = client.post("/account/settings/tokens", {"name": "nightly batch"})
    page = made.content.decode()
    secret = re.search(r'data-testid="new-token">([^<]+)<', page).group(1)
    assert made.status_code == 200 and "no-store" in made["Cache-Control"]
    assert ApiToken.objects.get(user=bob).name == "nightly batch"

    me = Client(HTTP_AUTHORIZATION=f"Bearer {secret}").get("/api/v1/me")
    assert me.status_code == 200 and me.json()["username"] == "bob"
    listing = client.get(SETTINGS).content.decode()
    assert "nightly batch" in listing and secret not in listing and "never" not in listing
    assert secret[:10] in listing  # its first characters, to tell tokens apart


def test_it_refuses_a_token_without_a_name(bob):
    response = logged_in(bob).post("/account/settings/tokens", {"name": ""})
    assert response.status_code == 400 and 'id="token-name-error"' in response.content.decode()
    assert not ApiToken.objects.exists()


def test_a_revoked_token_stops_working_at_once(bob, accounts):
    token, secret = ApiToken.issue(bob, "laptop")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get("/api/v1/me").status_code == 200  # used once: it is remembered, not cached

    response = logged_in(bob).post(f"/account/settings/tokens/{token.pk}/revoke", follow=True)

    assert "revoked" in response.content.decode()
    refused = api.get("/api/v1/me")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    create = api.post(
        "/api/v1/generations", {"prompt": "a kite", "model": "flux-2-max"}, content_type="application/json"
    )
    assert create.status_code == 401


def test_nobody_revokes_someone_elses_token(bob, carol):
    token, _ = ApiToken.issue(bob, "bob's")
    assert logged_in(carol).post(f"/account/settings/tokens/{token.pk}/revoke").status_code == 404
    assert ApiToken.objects.filter(pk=token.pk).exists()
    assert "bob&#x27;s" not in logged_in(carol).get(SETTINGS).content.decode()


def test_it_shows_when_a_token_was_last_used(bob):
    token, secret = ApiToken.issue(bob, "ci")
    Client(HTTP_AUTHORIZATION=f"Bearer {secret}").get("/api/v1/me")
    token.refresh_from_db()
    page = logged_in(bob).get(SETTINGS).content.decode()
    row = page[page.index(f'id="token-{token.pk}"') :]
    assert token.last_used_at.strftime("%Y-%m-%d %H:%M") in row.split("</tr>")[0]


def test_a_viewer_manages_settings_too(vera):
    client = logged_in(vera)
    assert client.get(SETTINGS).status_code == 200
    assert "Viewer" in client.get(SETTINGS).content.decode()
    assert client.post("/account/settings/tokens", {"name": "read-only"}).status_code == 200


def test_downloads_follow_the_metadata_setting(bob, accounts):
    image = make_image(make_job(bob, accounts["apiframe"], "a secret prompt", status="succeeded"))
    client = logged_in(bob)
    kept = client.get(f"/images/{image.pk}/download")
    assert b"secret prompt" in b"".join(kept.streaming_content)

    client.post("/account/settings/preferences", {"notifications": "on"})  # keep_metadata unticked
    assert Profile.objects.get(user=bob).keep_metadata is False
    bare = client.get(f"/images/{image.pk}/download")
    assert bare.status_code == 200 and b"secret prompt" not in bare.content
    asked = client.get(f"/images/{image.pk}/download?metadata=1")  # an explicit choice still wins
    assert b"secret prompt" in b"".join(asked.streaming_content)


def test_the_studio_follows_the_notifications_setting(bob, accounts):
    client = logged_in(bob)
    assert 'data-notifications="on"' in client.get("/").content.decode()
    client.post("/account/settings/preferences", {"keep_metadata": "on"})
    page = client.get("/").content.decode()
    assert 'data-notifications="off"' in page and 'id="notify-button"' not in page
    profile = Profile.objects.get(user=bob)
    assert profile.keep_metadata is True and profile.notifications is False
