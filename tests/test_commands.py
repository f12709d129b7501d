"""The management commands contract.md names: provider, apitoken, quota, demo, credits."""

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from generations import credits
from generations.models import LedgerEntry, ProviderAccount, Quota

from .conftest import KEYS


def run(*args) -> str:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


# -- provider ------------------------------------------------------------------------------------------------
def test_it_lists_provider_accounts_without_their_keys(accounts):
    accounts["vtrix"].enabled = False
    accounts["vtrix"].save()
    ProviderAccount.objects.create(slug="keyless", kind="maxapi", base_url="https://api.maxapi.ai")

    output = run("provider", "list")

    lines = {line.split("\t")[0]: line for line in output.splitlines()}
    assert set(lines) == {"sb-apiframe", "sb-vtrix", "sb-pixeldojo", "sb-maxapi", "keyless"}
    apiframe = lines["sb-apiframe"].split("\t")
    assert apiframe[:4] == ["sb-apiframe", "apiframe", accounts["apiframe"].base_url, "enabled"]
    assert "key set" in lines["sb-apiframe"]
    assert "disabled" in lines["sb-vtrix"]
    assert "no key" in lines["keyless"]
    for kind, key in KEYS.items():
        assert key not in output
        assert key[-4:] not in output
        assert accounts[kind].api_key_encrypted not in output


def test_it_creates_an_account_without_printing_the_key(db):
    output = run(
        "provider",
        "set",
        "af-main",
        "--kind",
        "apiframe",
        "--base-url",
        "http://127.0.0.1:8765/apiframe/",
        "--api-key",
        "afk_live_SECRET_4321",
        "--priority",
        "5",
    )

    account = ProviderAccount.objects.get(slug="af-main")
    assert (account.kind, account.base_url, account.priority, account.enabled) == (
        "apiframe",
        "http://127.0.0.1:8765/apiframe",
        5,
        True,
    )
    assert account.api_key == "afk_live_SECRET_4321"
    assert account.api_key_encrypted.startswith("gAAAA")
    assert "SECRET" not in output and "4321" not in output
    assert "af-main" in output and "key set" in output


def test_it_creates_an_account_at_the_providers_default_url(db):
    run("provider", "set", "vx", "--kind", "vtrix")
    account = ProviderAccount.objects.get(slug="vx")
    assert account.base_url.startswith("https://") and not account.has_key


def test_it_creates_a_bfl_account_at_bfl_s_global_endpoint(db):
    run("provider", "set", "acme-bfl", "--kind", "bfl", "--api-key", "bfl_live_0001")
    account = ProviderAccount.objects.get(slug="acme-bfl")
    assert (account.kind, account.base_url, account.api_key) == ("bfl", "https://api.bfl.ai", "bfl_live_0001")


def test_it_updates_an_account_and_keeps_what_is_not_given(accounts):
    run("provider", "set", "sb-apiframe", "--disable", "--priority", "42")
    account = ProviderAccount.objects.get(slug="sb-apiframe")
    assert (account.enabled, account.priority, account.kind) == (False, 42, "apiframe")
    assert account.api_key == KEYS["apiframe"]  # no --api-key: the key stays

    run("provider", "set", "sb-apiframe", "--enable", "--api-key", "afk_rotated_0001")
    account.refresh_from_db()
    assert account.enabled and account.priority == 42
    assert account.api_key == "afk_rotated_0001"


def test_it_refuses_a_new_account_without_a_kind(db):
    with pytest.raises(CommandError, match="--kind"):
        run("provider", "set", "nobody-yet")
    assert not ProviderAccount.objects.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--kind", "sandbox"],  # the sandbox is not a kind
        ["--enable", "--disable"],
    ],
)
def test_it_refuses_bad_provider_arguments(db, args):
    with pytest.raises(CommandError):
        run("provider", "set", "x", *args)
    assert not ProviderAccount.objects.exists()


def test_it_refuses_an_empty_key_and_a_bad_url(accounts):
    with pytest.raises(CommandError):
        run("provider", "set", "sb-apiframe", "--api-key", "")
    with pytest.raises(CommandError, match="base_url"):
        run("provider", "set", "sb-apiframe", "--base-url", "not a url")
    account = ProviderAccount.objects.get(slug="sb-apiframe")
    assert account.api_key == KEYS["apiframe"]
    assert account.base_url == accounts["apiframe"].base_url


# -- apitoken ------------------------------------------------------------------------------------------------
def test_it_creates_a_token_printed_alone_on_the_last_line(bob):
    output = run("apitoken", "create", "bob")

    token = output.rstrip("\n").splitlines()[-1]
    assert token == token.strip() and " " not in token
    me = Client(HTTP_AUTHORIZATION=f"Bearer {token}").get("/api/v1/me")
    assert me.status_code == 200 and me.json()["username"] == "bob"


def test_it_refuses_a_token_for_an_unknown_user(db):
    with pytest.raises(CommandError):
        run("apitoken", "create", "nobody")


# -- quota --------------------------------------------------------------------------------------------------------
def test_it_sets_a_users_quota_and_the_team_default(bob, carol):
    run("quota", "set", "bob", "--concurrent", "2", "--daily-images", "40")
    run("quota", "set", "--default", "--monthly-credits", "5000", "--concurrent", "4")

    assert Quota.objects.get(user=bob).concurrent == 2
    assert credits.limits_for(bob) == {"concurrent": 2, "daily_images": 40, "monthly_credits": 5000}
    assert credits.limits_for(carol) == {"concurrent": 4, "daily_images": None, "monthly_credits": 5000}

    run("quota", "set", "bob", "--daily-images", "0")  # 0 clears the override
    assert credits.limits_for(bob)["daily_images"] is None
    assert Quota.objects.filter(user=None).count() == 1


@pytest.mark.parametrize(
    "args",
    [
        ["quota", "set"],
        ["quota", "set", "bob", "--default"],
        ["quota", "set", "nobody", "--concurrent", "1"],
        ["quota", "set", "bob", "--concurrent", "-1"],
    ],
)
def test_it_refuses_bad_quota_arguments(bob, args):
    with pytest.raises(CommandError):
        run(*args)
    assert not Quota.objects.exists()


# -- credits ----------------------------------------------------------------------------------------------------
def test_it_grants_credits_with_a_note(bob):
    output = run("credits", "grant", "bob", "250", "--note", "hackathon")

    entry = LedgerEntry.objects.filter(user=bob).latest("id")
    assert (entry.kind, entry.amount, entry.note) == ("grant", 250, "hackathon")
    assert credits.account_for(bob).balance == 1250
    assert "balance 1250" in output


def test_it_shows_balance_reserved_and_quota_use(bob, accounts):
    from generations import engine
    from generations.providers import GenerationRequest

    Quota.objects.create(user=bob, daily_images=10)
    engine.create(bob, GenerationRequest(prompt="a harbour", model="flux-2-max"), provider="sb-apiframe")

    output = run("credits", "show", "bob")

    assert "balance 930" in output and "reserved 70" in output
    assert "daily_images 1/10" in output


@pytest.mark.parametrize(
    "args",
    [
        ["credits", "grant", "bob", "0"],
        ["credits", "grant", "bob", "-5"],
        ["credits", "grant", "nobody", "5"],
        ["credits", "show", "nobody"],
    ],
)
def test_it_refuses_bad_credit_arguments(bob, args):
    with pytest.raises(CommandError):
        run(*args)
    assert credits.account_for(bob).balance == 1000


# -- demo -----------------------------------------------------------------------------------------------------------
def test_it_sets_up_the_demo_idempotently(db, settings):
    first = run("demo", "--sandbox-url", "http://127.0.0.1:8765")
    second = run("demo", "--sandbox-url", "http://127.0.0.1:8765")

    users = get_user_model().objects.order_by("username")
    assert [u.username for u in users] == ["alice", "bob", "carol"]
    assert users.get(username="alice").is_superuser and not users.get(username="bob").is_staff
    assert users.get(username="bob").check_password("fluxweb-demo")
    assert LedgerEntry.objects.filter(kind="grant").count() == 2  # alice and bob, once each
    assert credits.account_for(users.get(username="bob")).balance == 2000
    accounts = ProviderAccount.objects.order_by("priority")
    # One sandbox account per adapter, BFL's included, in the registry's order.
    assert [a.kind for a in accounts] == ["apiframe", "vtrix", "pixeldojo", "maxapi", "bfl"]
    assert all(a.base_url == f"http://127.0.0.1:8765/{a.kind}" and a.has_key for a in accounts)
    bfl = accounts.get(kind="bfl")
    assert (bfl.slug, bfl.api_key) == ("sandbox-bfl", "bfl_sandbox_demo")
    for output in (first, second):
        for username in ("alice", "bob", "carol"):
            assert username in output
        assert "fluxweb-demo" in output
    assert credits.reconcile() == []


def test_it_leaves_existing_users_and_keys_alone_in_the_demo(bob):
    bob.set_password("my-own-password")
    bob.save()
    ProviderAccount.objects.create(
        slug="sandbox-apiframe", kind="apiframe", base_url="https://api.apiframe.ai"
    )
    account = ProviderAccount.objects.get(slug="sandbox-apiframe")
    account.set_api_key("afk_real_key_kept")
    account.save()

    run("demo")

    bob.refresh_from_db()
    assert bob.check_password("my-own-password")
    account.refresh_from_db()
    assert account.api_key == "afk_real_key_kept"
    assert LedgerEntry.objects.filter(user=bob, kind="grant").count() == 1  # the fixture's, not a second
