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
from generations.models import CreditAccount, Price, ProviderAccount, Quota

from .test_admin import PROVIDERS, change_form

AUDIT = "/admin/accounts/auditentry/"
USERS = "/admin/auth/user/"


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


# -- the admin's other paths ----------------------------------------------------------------------------------
def change_page_data(response, **overrides) -> dict:
    """What the browser posts back from an admin change page as it was served (inlines included)."""
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        forms += [inline.formset.management_form, *inline.formset.forms]
    return form_data(forms, _save="Save", **overrides)


def form_data(forms, **overrides) -> dict:
    """The forms' current values as a browser posts them (an unticked box: absent)."""
    data: dict = {}
    for form in forms:
        for name, field in form.fields.items():
            if field.disabled:
                continue
            value = form[name].value()
            if value is True:
                data[form.add_prefix(name)] = "on"
            elif value is not False and value is not None:  # 0 is a value
                data[form.add_prefix(name)] = value
    for key, value in overrides.items():
        if value is False:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def test_ticking_active_by_hand_on_the_user_page_is_recorded(admin_client, alice, carol):
    page = admin_client.get(f"{USERS}{carol.pk}/change/")
    response = admin_client.post(f"{USERS}{carol.pk}/change/", change_page_data(page, is_active=False))
    assert response.status_code == 302
    carol.refresh_from_db()
    assert not carol.is_active

    entry = latest("user.change")
    assert (entry.actor, entry.target) == (alice, "carol")
    assert (entry.before["is_active"], entry.after["is_active"]) == (True, False)
    assert entry.before["role"] == entry.after["role"] == "member"
    assert (entry.after["is_staff"], entry.after["is_superuser"]) == (False, False)

    page = admin_client.get(f"{USERS}{carol.pk}/change/")
    admin_client.post(f"{USERS}{carol.pk}/change/", change_page_data(page, is_active="on"))
    assert (latest("user.change").before["is_active"], latest("user.change").after["is_active"]) == (
        False,
        True,
    )
    page = admin_client.get(f"{USERS}{carol.pk}/change/")
    admin_client.post(f"{USERS}{carol.pk}/change/", change_page_data(page, first_name="Carol"))
    assert AuditEntry.objects.filter(action="user.change").count() == 2  # a name alone is not access


def test_adding_and_deleting_a_user_in_the_admin_is_recorded(admin_client, alice):
    admin_client.post(
        f"{USERS}add/",
        {"username": "dora", "password1": "pw-dora-xy-123", "password2": "pw-dora-xy-123", "_save": "Save"},
    )
    added = latest("user.add")
    assert (added.actor, added.target, added.before) == (alice, "dora", None)
    assert added.after["role"] == "member" and added.after["is_active"] is True
    assert "password" not in str(added.after)

    dora = added.target
    pk = type(alice).objects.get(username=dora).pk
    admin_client.post(USERS, {"action": "delete_selected", "_selected_action": [pk], "post": "yes"})
    gone = latest("user.delete")
    assert (gone.target, gone.before["role"], gone.after) == ("dora", "member", None)


def test_the_provider_lists_editable_rows_are_recorded(admin_client, alice, accounts):
    page = admin_client.get(PROVIDERS)
    formset = page.context["cl"].formset
    data = form_data([formset.management_form, *formset.forms], _save="Save")
    row = next(f for f in formset.forms if f.instance.slug == "sb-vtrix")
    data[row.add_prefix("priority")] = 33
    data.pop(row.add_prefix("enabled"))
    assert admin_client.post(PROVIDERS, data).status_code == 302

    entry = latest("provider.change")
    assert (entry.actor, entry.target) == (alice, "sb-vtrix")
    assert (entry.before["priority"], entry.after["priority"]) == (1, 33)
    assert (entry.before["enabled"], entry.after["enabled"]) == (True, False)
    assert AuditEntry.objects.filter(action="provider.change").count() == 1  # the untouched rows: none


def test_prices_are_audited(admin_client, alice):
    base = "/admin/generations/price/"
    admin_client.post(
        f"{base}add/",
        {
            "kind": "apiframe",
            "model": "flux-2-max",
            "tier": "1MP",
            "credits": 70,
            "effective_from_0": "2031-01-02",
            "effective_from_1": "00:00:00",
        },
    )
    price = Price.objects.get(kind="apiframe", model="flux-2-max", effective_from__year=2031)
    admin_client.post(
        f"{base}{price.pk}/change/",
        {
            "kind": "apiframe",
            "model": "flux-2-max",
            "tier": "1MP",
            "credits": 90,
            "effective_from_0": "2031-01-02",
            "effective_from_1": "00:00:00",
        },
    )
    admin_client.post(f"{base}{price.pk}/delete/", {"post": "yes"})
    added, changed, deleted = (latest(f"price.{verb}") for verb in ("add", "change", "delete"))
    assert added.actor == alice and added.after["credits"] == 70
    assert (changed.before["credits"], changed.after["credits"]) == (70, 90)
    assert deleted.before["credits"] == 90 and not Price.objects.filter(pk=price.pk).exists()


def test_a_credit_account_with_credits_cannot_be_deleted_in_the_admin(admin_client, bob, carol):
    """Deleting the row took the balance with it, off the ledger and unaudited; credits leave by an adjust."""
    base = "/admin/generations/creditaccount/"
    funded = CreditAccount.objects.get(user=bob)
    assert admin_client.get(f"{base}{funded.pk}/delete/").status_code == 403
    admin_client.post(base, {"action": "delete_selected", "_selected_action": [funded.pk], "post": "yes"})
    assert CreditAccount.objects.filter(pk=funded.pk, balance=1000).exists()
    assert "delete_selected" not in admin_client.get(base).content.decode()


def test_admin_actions_commit_with_their_entries_or_not_at_all(admin_client, bob, carol, monkeypatch):
    """Admin actions run outside the transaction Django gives its add, change and delete pages."""
    from accounts.models import Invitation

    carol.is_active = False
    carol.save()
    invitation, _ = Invitation.issue("ivy@example.com", "member")
    quota = Quota.objects.create(user=bob, concurrent=2)

    def broken(*args, **kwargs):
        raise RuntimeError("the audit log is unwritable")

    monkeypatch.setattr(audit, "record", broken)
    for url, action, pk in (
        (USERS, "approve", carol.pk),
        ("/admin/accounts/invitation/", "revoke", invitation.pk),
        ("/admin/generations/quota/", "delete_selected", quota.pk),
    ):
        with pytest.raises(RuntimeError):
            admin_client.post(url, {"action": action, "_selected_action": [pk], "post": "yes"})
    carol.refresh_from_db()
    invitation.refresh_from_db()
    assert (
        not carol.is_active and invitation.revoked_at is None and Quota.objects.filter(pk=quota.pk).exists()
    )


def test_setting_a_password_in_the_admin_is_recorded_without_the_password(admin_client, alice, carol):
    old = carol.password
    page = f"{USERS}{carol.pk}/password/"
    assert admin_client.get(page).status_code == 200
    assert not AuditEntry.objects.filter(action="user.password").exists()  # looking is not setting
    new = "a-new-pw-for-carol-42"
    response = admin_client.post(page, {"password1": new, "password2": new, "set_usable_password": "true"})
    assert response.status_code == 302
    carol.refresh_from_db()
    assert carol.password != old and carol.check_password(new)
    entry = latest("user.password")
    assert (entry.actor, entry.target, entry.after) == (alice, "carol", {"usable_password": True})
    assert new not in str(entry.__dict__) and carol.password not in str(entry.__dict__)

    # A refused form (the two passwords differ) changes nothing and records nothing.
    admin_client.post(page, {"password1": "x-one-9", "password2": "x-two-9", "set_usable_password": "true"})
    assert AuditEntry.objects.filter(action="user.password").count() == 1


def test_the_user_page_offers_no_groups_or_permissions_that_would_decide_nothing(admin_client, carol):
    page = admin_client.get(f"{USERS}{carol.pk}/change/").content.decode()
    assert 'name="groups"' not in page and 'name="user_permissions"' not in page
    assert admin_client.get("/admin/auth/group/").status_code == 404
    assert 'name="is_active"' in page  # the rest of the page is as it was


def test_createsuperuser_is_recorded_as_the_os_user_s(db, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "pw-for-root-admin-7")
    run("createsuperuser", "--noinput", "--username", "root", "--email", "root@example.invalid")
    entry = latest("user.add")
    assert (entry.actor, entry.actor_name, entry.target, entry.note) == (
        None,
        by_command(),
        "root",
        "createsuperuser",
    )
    assert entry.after["role"] == "admin" and entry.after["is_superuser"] is True
    assert "pw-for-root" not in str(entry.__dict__)


def test_the_log_s_list_says_what_changed_in_a_line(admin_client, bob):
    listing = admin_client.get(AUDIT).content.decode()
    assert "balance: 0 → " in listing  # bob's test credits: before and after, only what differs

    assert audit.summary({"a": 1, "b": "x"}, {"a": 2, "b": "x"}) == "a: 1 → 2"
    assert audit.summary(None, {"slug": "s", "enabled": True}) == "slug: s; enabled: true"
    assert audit.summary({"role": "member"}, None) == "role: member"
    assert audit.summary(None, None) == ""
    long = audit.summary(None, {f"key{i}": "v" * 60 for i in range(10)})
    assert len(long) == 100 and long.endswith("…") and "v" * 40 not in long
