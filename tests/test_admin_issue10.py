"""Admin bugs found by a new user (issue 10, bugs 2 and 3): a refused take-back reported as done, an enabled
account with no key, a short key shown in full, an addable read-only timeline, no favicon, a usage page for
any staff member, and an API token added with an empty digest."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from generations import credits
from generations.models import ApiToken, CreditAccount, Generation, LedgerEntry, Prompt, ProviderAccount

from .test_admin import PROVIDERS, messages_of


@pytest.fixture
def admin_client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def test_a_refused_take_back_is_not_also_reported_as_done(admin_client, bob):
    account = CreditAccount.objects.get(user=bob)
    available = credits.account_for(bob).available

    response = admin_client.post(
        "/admin/generations/creditaccount/",
        {
            "action": "grant_credits",
            "_selected_action": [account.pk],
            "apply": "Apply",
            "amount": -5000,
            "note": "too much",
        },
        follow=True,
    )

    shown = messages_of(response)
    assert f"only {available} credits available" in shown
    assert "-5000 credits for" not in shown
    assert not LedgerEntry.objects.filter(user=bob, kind="adjust").exists()


def new_account(**overrides) -> dict:
    return {
        "slug": "af-keyless",
        "kind": "apiframe",
        "base_url": "https://api.apiframe.ai",
        "api_key": "",
        "enabled": "on",
        "priority": 3,
        "monthly_spend_cap": "",
        "_save": "Save",
    } | overrides


def test_an_account_without_a_key_cannot_be_enabled(admin_client, db):
    refused = admin_client.post(f"{PROVIDERS}add/", new_account())
    assert refused.status_code == 200
    assert "needs an API key before it can be enabled" in refused.content.decode()
    assert not ProviderAccount.objects.filter(slug="af-keyless").exists()

    saved = admin_client.post(f"{PROVIDERS}add/", new_account(enabled=""))
    assert saved.status_code == 302
    assert ProviderAccount.objects.get(slug="af-keyless").enabled is False


def test_an_account_keeping_its_key_stays_enableable(admin_client, accounts):
    account = accounts["apiframe"]
    form = new_account(slug=account.slug, priority=9)
    assert admin_client.post(f"{PROVIDERS}{account.pk}/change/", form).status_code == 302


@pytest.mark.parametrize("key", ["abcd", "k3y", "shortkey9"])
def test_a_short_key_shows_nothing_of_itself(admin_client, db, key):
    admin_client.post(f"{PROVIDERS}add/", new_account(api_key=key))
    account = ProviderAccount.objects.get(slug="af-keyless")
    assert account.api_key == key and account.key_last4 == ""

    html = admin_client.get(PROVIDERS).content.decode()
    assert key not in html and key[-4:] not in html


def test_a_generation_timeline_offers_no_add(admin_client, bob, accounts):
    generation = Generation.objects.create(
        user=bob,
        prompt=Prompt.remember("a lighthouse", bob),
        model="flux-2-max",
        account=accounts["apiframe"],
    )
    html = admin_client.get(f"/admin/generations/generation/{generation.pk}/change/").content.decode()
    # The admin's script offers "Add another" while the formset may grow past its forms.
    assert 'name="events-MAX_NUM_FORMS" value="0"' in html or 'MAX_NUM_FORMS" value="0"' in html


def test_every_admin_page_names_a_favicon_that_exists(admin_client):
    html = admin_client.get("/admin/").content.decode()
    assert 'rel="icon" href="/static/fluxweb/favicon.svg"' in html
    assert admin_client.get("/static/fluxweb/favicon.svg").status_code == 200
    assert admin_client.get("/favicon.ico")["Location"] == "/static/fluxweb/favicon.svg"


def test_the_usage_page_needs_a_permission_not_only_staff_status(django_user_model, alice):
    staff = django_user_model.objects.create_user("sam", password="x", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get("/admin/generations/generation/usage/").status_code == 403

    staff.user_permissions.add(Permission.objects.get(codename="view_ledgerentry"))
    assert client.get("/admin/generations/generation/usage/").status_code == 200


def test_adding_an_api_token_issues_one_shown_once(admin_client, bob):
    for name in ("laptop", "ci"):
        response = admin_client.post(
            "/admin/generations/apitoken/add/", {"user": bob.pk, "name": name, "_save": "Save"}, follow=True
        )
        assert response.status_code == 200
        [token] = [word for word in messages_of(response).split() if word.startswith("fw_")]
        assert ApiToken.authenticate(token) == bob

    digests = list(ApiToken.objects.filter(user=bob).values_list("digest", flat=True))
    assert len(digests) == 2 and all(len(digest) == 64 for digest in digests)
