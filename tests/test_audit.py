"""The audit log (issue 11): every admin action on money, quotas, provider accounts, roles and invitations
says who, when, what, before and after, and the admin shows it read-only."""

import getpass
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.test import Client

from accounts import audit
from accounts.models import AuditEntry
from generations import crypto
from generations.models import CreditAccount, ProviderAccount, Quota

from .test_admin import PROVIDERS, change_form

AUDIT = "/admin/accounts/auditentry/"


def by_command() -> str:
    """Who a management command's entries name: the OS user running it."""
    return f"command:{getpass.getuser()}"


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


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
    assert (entry.actor, entry.actor_name, entry.before, entry.after, entry.note) == (
        None,
        by_command(),
        {"balance": 1000},
        {"balance": 1040},
        "top-up",
    )
    run("credits", "grant", "bob", "2")
    assert latest("credits.grant").note == "granted from the command line"


# -- management commands (contract.md): who is the OS user, in the change's own transaction ----------------
def test_quota_set_records_the_team_default_and_a_users_override_before_and_after(bob):
    run("quota", "set", "--default", "--concurrent", "3")
    run("quota", "set", "bob", "--daily-images", "50")
    run("quota", "set", "bob", "--daily-images", "0", "--monthly-credits", "900")
    run("quota", "set", "bob", "--monthly-credits", "900")  # no change: no entry

    team, added = AuditEntry.objects.filter(action="quota.add").order_by("id")
    assert (team.actor, team.actor_name, team.target, team.note) == (
        None,
        by_command(),
        "quota for the team",
        "quota set",
    )
    assert team.before is None and team.after["concurrent"] == 3 and team.after["user_id"] is None
    assert added.target == "quota for bob" and added.after["daily_images"] == 50
    changed = AuditEntry.objects.get(action="quota.change")
    assert (changed.actor_name, changed.note) == (by_command(), "quota set")
    assert changed.before == added.after
    assert changed.after == added.after | {"daily_images": None, "monthly_credits": 900}


def test_quota_set_and_its_entry_commit_together(bob, monkeypatch):
    run("quota", "set", "bob", "--concurrent", "2")

    def broken(*args, **kwargs):
        raise RuntimeError("the audit log is unwritable")

    monkeypatch.setattr(AuditEntry.objects, "create", broken)
    with pytest.raises(RuntimeError):
        run("quota", "set", "bob", "--concurrent", "9")
    assert Quota.objects.get(user=bob).concurrent == 2  # no change without its entry


def test_provider_set_records_an_add_and_a_change_without_the_key(db):
    run(
        "provider",
        "set",
        "acme",
        "--kind",
        "apiframe",
        "--api-key",
        "afk_first_secret_1111",
        "--priority",
        "5",
    )
    run(
        "provider", "set", "acme", "--priority", "2", "--max-rpm", "30", "--api-key", "afk_second_secret_2222"
    )
    run("provider", "set", "acme", "--priority", "2")  # no change: no entry

    added, changed = latest("provider.add"), latest("provider.change")
    assert (added.actor, added.actor_name, added.target, added.note) == (
        None,
        by_command(),
        "acme",
        "provider set",
    )
    assert added.before is None and added.after["kind"] == "apiframe" and added.after["priority"] == 5
    assert changed.actor_name == by_command()
    assert (changed.before["priority"], changed.after["priority"]) == (5, 2)
    assert (changed.before["max_rpm"], changed.after["max_rpm"]) == (None, 30)
    assert changed.before["api_key_encrypted"] != changed.after["api_key_encrypted"]  # the key changed...
    text = str(added.before) + str(added.after) + str(changed.before) + str(changed.after)
    assert "afk_first_secret_1111" not in text and "afk_second_secret_2222" not in text  # ...unshown
    assert ProviderAccount.objects.get(slug="acme").api_key_encrypted not in text
    assert AuditEntry.objects.filter(action__startswith="provider.").count() == 2


def test_provider_set_and_its_entry_commit_together(accounts, monkeypatch):
    monkeypatch.setattr(audit, "record", lambda *args, **kwargs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run("provider", "set", "sb-apiframe", "--disable", "--priority", "40")
    account = ProviderAccount.objects.get(slug="sb-apiframe")
    assert account.enabled and account.priority == 0


def test_provider_rotate_keys_records_each_key_it_re_encrypts(accounts, settings):
    settings.FERNET_KEYS = [Fernet.generate_key().decode(), django_settings.FERNET_KEYS[0]]
    crypto.fernet.cache_clear()
    try:
        run("provider", "rotate-keys")
    finally:
        crypto.fernet.cache_clear()
    entries = AuditEntry.objects.filter(action="provider.rotate_key").order_by("target")
    assert [e.target for e in entries] == sorted(a.slug for a in accounts.values())
    for entry in entries:
        assert (entry.actor_name, entry.note) == (by_command(), "provider rotate-keys")
        assert entry.before["api_key_encrypted"] != entry.after["api_key_encrypted"]
        assert entry.after["api_key_encrypted"].startswith("set (")


def test_the_demo_records_its_grants_and_accounts_as_the_os_users(db):
    run("demo", "--sandbox-url", "http://127.0.0.1:8765")
    run("demo", "--sandbox-url", "http://127.0.0.1:8765")  # nothing new the second time

    grants = AuditEntry.objects.filter(action="credits.grant").order_by("target")
    assert [(e.target, e.actor_name, e.after) for e in grants] == [
        ("alice", by_command(), {"balance": 5000}),
        ("bob", by_command(), {"balance": 2000}),
    ]
    added = AuditEntry.objects.filter(action="provider.add")
    assert added.count() == ProviderAccount.objects.count() == 5
    assert {(e.actor_name, e.note) for e in added} == {(by_command(), "demo")}
    assert all(e.after["api_key_encrypted"].startswith("set (") for e in added)
    assert not AuditEntry.objects.filter(action="provider.change").exists()


def test_a_failed_command_records_nothing(bob):
    with pytest.raises(CommandError):
        run("provider", "set", "nokind")
    with pytest.raises(CommandError):
        run("quota", "set", "nobody", "--concurrent", "1")
    assert not AuditEntry.objects.filter(action__startswith=("provider.")).exists()
    assert not AuditEntry.objects.filter(action__startswith=("quota.")).exists()


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
