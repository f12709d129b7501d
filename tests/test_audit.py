"""The audit log (issue 11): every admin action on money, quotas, provider accounts, roles and invitations
says who, when, what, before and after, and the admin shows it read-only."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client

from accounts.models import AuditEntry
from generations.models import CreditAccount, ProviderAccount, Quota

from .test_admin import PROVIDERS, change_form

AUDIT = "/admin/accounts/auditentry/"


@pytest.fixture
def admin_client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def latest(action: str) -> AuditEntry:
    return AuditEntry.objects.filter(action=action).latest("id")


def test_it_records_a_grant_from_the_admin_with_the_balance_before_and_after(admin_client, alice, bob):
    account = CreditAccount.objects.get(user=bob)
    for amount, note in ((250, "conference budget"), (-100, "over-granted")):
        admin_client.post(
            "/admin/generations/creditaccount/",
            {
                "action": "grant_credits",
                "_selected_action": [account.pk],
                "apply": "Apply",
                "amount": amount,
                "note": note,
            },
        )
    grant, adjust = latest("credits.grant"), latest("credits.adjust")
    assert (grant.actor, grant.target, grant.before, grant.after, grant.note) == (
        alice,
        "bob",
        {"balance": 1000},
        {"balance": 1250},
        "conference budget",
    )
    assert (adjust.actor_name, adjust.before, adjust.after) == ("alice", {"balance": 1250}, {"balance": 1150})
    assert grant.at is not None


def test_it_records_a_grant_from_the_command_line(bob):
    call_command("credits", "grant", "bob", "40", "--note", "top-up", stdout=StringIO())
    entry = latest("credits.grant")
    assert (entry.actor, entry.actor_name, entry.after) == (None, "manage.py", {"balance": 1040})


def test_it_records_quota_changes_and_deletes(admin_client, alice, bob):
    base = "/admin/generations/quota/"
    admin_client.post(
        f"{base}add/", {"user": bob.pk, "concurrent": 2, "daily_images": "", "monthly_credits": ""}
    )
    quota = Quota.objects.get(user=bob)
    admin_client.post(
        f"{base}{quota.pk}/change/",
        {"user": bob.pk, "concurrent": 5, "daily_images": 40, "monthly_credits": ""},
    )
    admin_client.post(f"{base}{quota.pk}/delete/", {"post": "yes"})

    added, changed, deleted = (latest(f"quota.{verb}") for verb in ("add", "change", "delete"))
    assert added.before is None and added.after["concurrent"] == 2 and added.actor == alice
    assert changed.before["concurrent"] == 2 and changed.after == changed.before | {
        "concurrent": 5,
        "daily_images": 40,
    }
    assert deleted.before["concurrent"] == 5 and deleted.after is None and not Quota.objects.exists()


def test_it_records_provider_changes_without_the_key(admin_client, alice, accounts):
    account = accounts["apiframe"]
    admin_client.post(
        f"{PROVIDERS}{account.pk}/change/", change_form(account, priority=7, api_key="afk_new_secret_9876")
    )
    entry = latest("provider.change")
    assert entry.before["priority"] == 0 and entry.after["priority"] == 7
    assert entry.before["api_key_encrypted"] != entry.after["api_key_encrypted"]  # the key changed...
    text = str(entry.before) + str(entry.after)
    assert "afk_new_secret_9876" not in text and "afk_test_key_1234" not in text  # ...but is never shown
    assert ProviderAccount.objects.get(pk=account.pk).api_key_encrypted not in text

    admin_client.post(
        PROVIDERS,
        {"action": "delete_selected", "_selected_action": [accounts["vtrix"].pk], "post": "yes"},
    )
    gone = latest("provider.delete")
    assert gone.target == "sb-vtrix" and gone.before["kind"] == "vtrix"


def test_an_unchanged_save_records_nothing(admin_client, accounts):
    account = accounts["apiframe"]
    admin_client.post(f"{PROVIDERS}{account.pk}/change/", change_form(account))
    assert not AuditEntry.objects.filter(action="provider.change").exists()


def test_the_admin_shows_the_log_read_only(admin_client, bob):
    entry = latest("credits.grant")  # bob's test credits
    listing = admin_client.get(AUDIT)
    assert listing.status_code == 200 and "credits.grant" in listing.content.decode()
    assert f'href="{AUDIT}add/"' not in listing.content.decode()
    assert admin_client.get(f"{AUDIT}add/").status_code == 403
    page = admin_client.get(f"{AUDIT}{entry.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert admin_client.post(f"{AUDIT}{entry.pk}/change/", {"target": "x"}).status_code == 403
    assert admin_client.get(f"{AUDIT}{entry.pk}/delete/").status_code == 403
    assert AuditEntry.objects.get(pk=entry.pk).target == "bob"
