"""The admin: write-only provider keys stored encrypted, the connection test, credit grants, a read-only
ledger, and superuser-only provider accounts (reliability.md 5, test plan 29-31)."""

import importlib
import re

import pytest
from django.apps import apps
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client

from generations import credits
from generations.models import CreditAccount, Generation, LedgerEntry, Price, Prompt, ProviderAccount

from .conftest import KEYS

PROVIDERS = "/admin/generations/provideraccount/"


@pytest.fixture
def admin_client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def raw_key_column(account: ProviderAccount) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT api_key_encrypted FROM generations_provideraccount WHERE id = %s", [account.pk]
        )
        return cursor.fetchone()[0]


def change_form(account: ProviderAccount, **overrides) -> dict:
    return {
        "slug": account.slug,
        "kind": account.kind,
        "base_url": account.base_url,
        "api_key": "",
        "enabled": "on" if account.enabled else "",
        "priority": account.priority,
        "monthly_spend_cap": "",
        "_save": "Save",
    } | overrides


def messages_of(response) -> str:
    return " | ".join(str(m) for m in response.context["messages"])


def test_it_never_renders_the_api_key_on_the_change_form(admin_client, accounts):
    account = accounts["apiframe"]

    html = admin_client.get(f"{PROVIDERS}{account.pk}/change/").content.decode()

    [key_input] = re.findall(r'<input[^>]*name="api_key"[^>]*>', html)
    assert 'type="password"' in key_input and "value=" not in key_input
    assert KEYS["apiframe"] not in html
    assert account.api_key_encrypted not in html
    assert "…" + account.key_last4 not in html  # not even the masked hint on the form
    assert "api_key_encrypted" not in html


def test_it_shows_only_the_last_four_in_the_list(admin_client, accounts):
    html = admin_client.get(PROVIDERS).content.decode()
    assert "…1234" in html  # afk_test_key_1234
    for kind, key in KEYS.items():
        assert key not in html
        assert accounts[kind].api_key_encrypted not in html


def test_it_keeps_the_old_key_when_the_field_is_blank(admin_client, accounts):
    account = accounts["apiframe"]
    stored = raw_key_column(account)

    response = admin_client.post(f"{PROVIDERS}{account.pk}/change/", change_form(account, priority=7))

    assert response.status_code == 302
    account.refresh_from_db()
    assert account.priority == 7
    assert raw_key_column(account) == stored
    assert account.api_key == KEYS["apiframe"]


def test_it_stores_a_new_key_encrypted(admin_client, accounts):
    account = accounts["apiframe"]
    new_key = "afk_brand_new_key_9876"

    response = admin_client.post(f"{PROVIDERS}{account.pk}/change/", change_form(account, api_key=new_key))

    assert response.status_code == 302
    account.refresh_from_db()
    raw = raw_key_column(account)
    assert raw != new_key and new_key not in raw
    assert raw.startswith("gAAAA")  # a Fernet token
    assert account.api_key == new_key
    assert account.key_last4 == "9876"
    assert new_key not in LogEntry.objects.latest("action_time").change_message


def test_it_adds_an_account_with_an_encrypted_key(admin_client, db):
    response = admin_client.post(
        f"{PROVIDERS}add/",
        {
            "slug": "af-two",
            "kind": "apiframe",
            "base_url": "https://api.apiframe.ai",
            "api_key": "afk_added_5555",
            "enabled": "on",
            "priority": 3,
            "monthly_spend_cap": "",
            "_save": "Save",
        },
    )
    assert response.status_code == 302
    account = ProviderAccount.objects.get(slug="af-two")
    assert raw_key_column(account).startswith("gAAAA")
    assert account.api_key == "afk_added_5555"


def test_it_tests_the_connection_against_the_sandbox(admin_client, accounts, fresh_sandbox):
    good, bad = accounts["apiframe"], accounts["vtrix"]
    bad.set_api_key("bad-key-for-vtrix")
    bad.save()

    response = admin_client.post(
        PROVIDERS, {"action": "test_connection", "_selected_action": [good.pk, bad.pk]}, follow=True
    )

    shown = messages_of(response)
    assert "sb-apiframe: connected, key accepted." in shown
    assert "sb-vtrix: Vtrix refused the API key" in shown
    assert "bad-key-for-vtrix" not in response.content.decode()
    sent = {r.provider: r for r in fresh_sandbox.requests}
    assert set(sent) == {"apiframe", "vtrix"}
    assert all(r.method == "GET" for r in fresh_sandbox.requests)  # a cheap check, never a paid generation


def test_it_hides_provider_accounts_from_staff_who_are_not_superusers(django_user_model, accounts):
    dave = django_user_model.objects.create_user("dave", password="pw-dave-123", is_staff=True)
    dave.user_permissions.set(Permission.objects.filter(content_type__app_label="generations"))
    client = Client()
    client.force_login(dave)
    account = accounts["apiframe"]

    assert client.get(PROVIDERS).status_code == 403
    assert client.get(f"{PROVIDERS}{account.pk}/change/").status_code == 403
    assert client.get(f"{PROVIDERS}add/").status_code == 403
    assert (
        client.post(f"{PROVIDERS}{account.pk}/change/", change_form(account, api_key="stolen")).status_code
        == 403
    )
    assert "provideraccount" not in client.get("/admin/").content.decode()
    assert (
        client.get("/admin/generations/generation/").status_code == 200
    )  # the rest of the admin still works
    account.refresh_from_db()
    assert account.api_key == KEYS["apiframe"]


def test_it_keeps_members_out_of_the_admin(client, bob):
    client.force_login(bob)
    response = client.get(PROVIDERS)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_it_grants_credits_with_a_ledger_entry_naming_the_admin(admin_client, alice, bob):
    account = CreditAccount.objects.get(user=bob)

    asked = admin_client.post(
        "/admin/generations/creditaccount/",
        {
            "action": "grant_credits",
            "_selected_action": [account.pk],
        },
    )
    assert asked.status_code == 200 and b'name="amount"' in asked.content
    response = admin_client.post(
        "/admin/generations/creditaccount/",
        {
            "action": "grant_credits",
            "_selected_action": [account.pk],
            "apply": "Apply",
            "amount": 250,
            "note": "conference budget",
        },
        follow=True,
    )

    assert response.status_code == 200
    entry = LedgerEntry.objects.filter(user=bob).latest("id")
    assert (entry.kind, entry.amount, entry.admin, entry.note) == ("grant", 250, alice, "conference budget")
    assert credits.account_for(bob).balance == 1250
    assert "+250 credits" in messages_of(response)


def test_it_takes_credits_back_as_an_adjust_entry(admin_client, alice, bob):
    account = CreditAccount.objects.get(user=bob)
    admin_client.post(
        "/admin/generations/creditaccount/",
        {
            "action": "grant_credits",
            "_selected_action": [account.pk],
            "apply": "Apply",
            "amount": -100,
            "note": "over-granted",
        },
    )
    entry = LedgerEntry.objects.filter(user=bob).latest("id")
    assert (entry.kind, entry.amount, entry.admin) == ("adjust", -100, alice)
    assert credits.reconcile() == []


def test_it_keeps_the_ledger_read_only(admin_client, bob):
    entry = LedgerEntry.objects.get(user=bob)
    base = "/admin/generations/ledgerentry/"

    listing = admin_client.get(base)
    assert listing.status_code == 200 and "test credits" in listing.content.decode()
    assert f'href="{base}add/"' not in listing.content.decode()
    assert admin_client.get(f"{base}add/").status_code == 403
    view = admin_client.get(f"{base}{entry.pk}/change/")
    assert view.status_code == 200 and b'name="_save"' not in view.content
    assert (
        admin_client.post(f"{base}{entry.pk}/change/", {"amount": 1_000_000, "note": "x"}).status_code == 403
    )
    assert admin_client.get(f"{base}{entry.pk}/delete/").status_code == 403
    assert admin_client.post(f"{base}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    deleted = admin_client.post(
        base, {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"}
    )
    assert deleted.status_code in (200, 302)
    entry.refresh_from_db()
    assert entry.amount == 1000


def test_it_lists_generations(admin_client, bob, accounts):
    generation = Generation.objects.create(
        user=bob,
        prompt=Prompt.remember("a quiet harbour", bob),
        model="flux-2-max",
        account=accounts["apiframe"],
    )
    response = admin_client.get("/admin/generations/generation/", {"q": "harbour"})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [generation]
    assert admin_client.get("/admin/generations/generation/add/").status_code == 403
    assert admin_client.get(f"/admin/generations/generation/{generation.pk}/change/").status_code == 200


def test_it_lists_the_default_prices(admin_client):
    # The rows the data migration seeds, seeded here: a transactional test's flush deletes migration data, so
    # a test that only found them would pass or fail by the order tests run in.
    seed = importlib.import_module("generations.migrations.0002_defaults").add_defaults
    Price.objects.all().delete()
    seed(apps, None)
    seed(apps, None)  # idempotent: a re-run adds nothing
    assert Price.objects.count() == sum(len(tiers) for tiers in credits.DEFAULT_PRICES.values())

    response = admin_client.get("/admin/generations/price/")
    assert response.status_code == 200
    assert response.context["cl"].result_count == Price.objects.count() > 0
    html = response.content.decode()
    for kind in ("apiframe", "vtrix", "pixeldojo", "maxapi"):
        assert kind in html
    assert Price.objects.get(kind="apiframe", model="flux-2-max", tier="1MP").credits == 70
