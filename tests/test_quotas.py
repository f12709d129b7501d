"""Quotas: team defaults and per-user overrides, daily images and monthly credits that hold across their
window's end, jobs in flight, a provider account's monthly spend cap, and the `quota` command. Refusals
name the limit and when it resets."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.management import CommandError, call_command

from generations import credits, engine
from generations.models import ApiToken, Quota, Usage
from generations.providers import GenerationRequest
from generations.refusal import Refusal
from tests.conftest import saved_files

NIGHT = datetime(2026, 3, 10, 23, 59, 59, tzinfo=UTC)
MIDNIGHT = datetime(2026, 3, 11, tzinfo=UTC)
TICK = timedelta(microseconds=1)


def request(**overrides) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "a lighthouse at dusk", "model": "flux-2-max"} | overrides))


@pytest.fixture(autouse=True)
def no_submit(monkeypatch, settings):
    """Creates hold credits but start no provider work; personas hash their passwords quickly."""
    monkeypatch.setattr(engine, "enqueue", lambda *args: None)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make(user, **overrides):
    return engine.create(user, request(**overrides), provider="sb-pixeldojo")[0]


def refusal(user, **overrides) -> Refusal:
    with pytest.raises(Refusal) as refused:
        make(user, **overrides)
    return refused.value


def used(user, when: datetime) -> tuple[int, int]:
    day = Usage.objects.filter(user=user, account=None, window=credits.day_window(when)).first()
    month = Usage.objects.filter(user=user, account=None, window=credits.month_window(when)).first()
    return (day.images if day else 0), (month.credits if month else 0)


# -- which limit applies ------------------------------------------------------------------------------------
def test_it_has_no_limits_until_someone_sets_them(bob, carol):
    assert credits.limits_for(bob) == {"concurrent": None, "daily_images": None, "monthly_credits": None}


def test_it_prefers_a_users_own_limit_to_the_team_default(bob, carol):
    Quota.objects.create(user=None, concurrent=3, daily_images=10, monthly_credits=5000)
    Quota.objects.create(user=bob, daily_images=2)
    assert credits.limits_for(bob) == {"concurrent": 3, "daily_images": 2, "monthly_credits": 5000}
    assert credits.limits_for(carol) == {"concurrent": 3, "daily_images": 10, "monthly_credits": 5000}


def test_it_lets_a_user_override_raise_the_team_default(bob, accounts):
    Quota.objects.create(user=None, daily_images=1)
    Quota.objects.create(user=bob, daily_images=3)
    make(bob, n=3)
    assert refusal(bob).code == "quota_daily_images"


# -- daily images -------------------------------------------------------------------------------------------
def test_it_limits_daily_images_until_midnight_utc(bob, accounts):
    Quota.objects.create(user=None, daily_images=2)
    with time_machine.travel(NIGHT, tick=False) as clock:
        make(bob, n=2)
        refused = refusal(bob)
        assert (refused.status, refused.code, refused.retry_after) == (429, "quota_daily_images", 1)
        assert (
            refused.message
            == "Your limit is 2 images a day and 2 are used; it resets at 2026-03-11 00:00 UTC."
        )
        clock.move_to(MIDNIGHT - TICK)
        assert refusal(bob).code == "quota_daily_images"
        clock.move_to(MIDNIGHT)
        make(bob, n=2)
        assert refusal(bob).message.endswith("it resets at 2026-03-12 00:00 UTC.")
    assert used(bob, NIGHT) == (2, 280)
    assert used(bob, MIDNIGHT) == (2, 280)  # a day each, one month


def test_it_counts_a_request_for_several_images_against_what_is_left(bob, accounts):
    Quota.objects.create(user=bob, daily_images=3)
    make(bob, n=2)
    assert refusal(bob, n=2).message.startswith("Your limit is 3 images a day and 2 are used")
    make(bob, n=1)


# -- monthly credits ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("last_second", "resets"),
    [
        (datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC), "2026-04-01"),
        (datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), "2027-01-01"),
        (datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC), "2028-03-01"),
    ],
)
def test_it_limits_monthly_credits_until_the_first_of_the_month(bob, accounts, last_second, resets):
    Quota.objects.create(user=None, monthly_credits=140)
    first = last_second + timedelta(seconds=1)
    with time_machine.travel(last_second, tick=False) as clock:
        make(bob)
        make(bob)
        refused = refusal(bob)
        assert (refused.status, refused.code, refused.retry_after) == (429, "quota_monthly_credits", 1)
        assert refused.message == (
            f"Your limit is 140 credits a month and 140 are spent or held; this needs 70. It resets on {resets} UTC."
        )
        clock.move_to(first - TICK)
        assert refusal(bob).code == "quota_monthly_credits"
        clock.move_to(first)
        make(bob)
        make(bob)
        assert refusal(bob).code == "quota_monthly_credits"
    assert credits.account_for(bob).reserved == 280


def test_it_counts_the_full_hold_against_the_month(bob, accounts):
    Quota.objects.create(user=bob, monthly_credits=250)
    make(bob, n=2, megapixels=2.0)  # holds 200
    refused = refusal(bob)
    assert "200 are spent or held; this needs 70" in refused.message


# -- generations in flight ----------------------------------------------------------------------------------
def test_it_limits_generations_in_flight(bob, accounts):
    Quota.objects.create(user=bob, concurrent=2)
    first, _ = make(bob), make(bob)
    refused = refusal(bob)
    assert (refused.status, refused.code) == (429, "quota_concurrent")
    assert refused.message == (
        "You already have 2 generations in flight, your limit; a new one can start when one of them finishes."
    )
    assert refused.retry_after
    engine.cancel(first, bob)
    make(bob)


# -- usage comes back when credits do -----------------------------------------------------------------------
@pytest.mark.parametrize("end", ["fail", "cancel"])
def test_it_gives_back_the_usage_of_a_refunded_generation(bob, accounts, end):
    Quota.objects.create(user=None, daily_images=2, monthly_credits=140)
    generation = make(bob, n=2)
    assert refusal(bob).code == "quota_daily_images"
    if end == "fail":
        engine.fail(generation, "moderation", "refused by the provider")
    else:
        engine.cancel(generation, bob)
    assert used(bob, generation.created_at) == (0, 0)
    make(bob, n=2)


def test_it_keeps_the_usage_of_delivered_images_only(bob, accounts):
    Quota.objects.create(user=None, daily_images=3, monthly_credits=1000)
    generation = make(bob, n=3)
    assert generation.mark_submitted("job-1", "", 1.0)
    engine.finish(generation, saved_files(1), None)
    assert used(bob, generation.created_at) == (1, 70)
    make(bob, n=2)
    assert refusal(bob).code == "quota_daily_images"


def test_it_does_not_give_usage_back_twice(bob, accounts):
    Quota.objects.create(user=None, daily_images=2)
    generation, other = make(bob), make(bob)
    engine.fail(generation, "moderation", "refused")
    engine.fail(generation, "moderation", "refused")
    engine.cancel(generation, bob)
    assert used(bob, other.created_at)[0] == 1


def test_it_gives_usage_back_to_the_window_it_was_counted_in(bob, accounts, monkeypatch):
    """A create that starts a hair before midnight and saves the job after it still counts and releases
    in the same day's row."""
    Quota.objects.create(user=None, daily_images=5)
    with time_machine.travel(MIDNIGHT - timedelta(milliseconds=1), tick=False) as clock:
        hold_quotas = credits.hold_quotas

        def slow_hold_quotas(*args):
            hold_quotas(*args)
            clock.move_to(MIDNIGHT)  # midnight passes while the create is still saving the job

        monkeypatch.setattr(credits, "hold_quotas", slow_hold_quotas)
        generation = make(bob)
        engine.fail(generation, "moderation", "refused")
    assert used(bob, NIGHT) == (0, 0)
    assert used(bob, MIDNIGHT) == (0, 0)
    assert credits.reconcile() == []


# -- a provider account's monthly spend cap -----------------------------------------------------------------
def test_it_caps_a_provider_accounts_monthly_spend(bob, accounts):
    accounts["pixeldojo"].monthly_spend_cap = 150
    accounts["pixeldojo"].save()
    with time_machine.travel(NIGHT, tick=False):
        first = make(bob, n=2)
        refused = refusal(bob)
        assert (refused.status, refused.code, refused.retry_after) == (
            429,
            "quota_provider_cap",
            21 * 86400 + 1,
        )
        assert refused.message == (
            "The sb-pixeldojo provider account has reached its monthly spend cap of 150 credits; "
            "it resets on 2026-04-01 UTC. Try another provider."
        )
        # Other accounts are not capped, and a refund gives the spend back.
        engine.create(bob, request(), provider="sb-apiframe")
        engine.fail(first, "moderation", "refused")
        make(bob, n=2)


def test_it_counts_provider_spend_before_a_cap_is_set(bob, accounts):
    """A cap set mid-month must see the holds made before it, and refunds of those holds must not
    take a newer job's spend off the count (or fail on a counter below zero)."""
    before_cap = make(bob, n=2)
    accounts["pixeldojo"].monthly_spend_cap = 300
    accounts["pixeldojo"].save()
    after_cap = make(bob, n=2)
    assert refusal(bob, n=2).code == "quota_provider_cap"
    engine.fail(before_cap, "moderation", "refused")
    spent = Usage.objects.get(account=accounts["pixeldojo"], user=None)
    assert spent.credits == 140
    assert engine.fail(after_cap, "moderation", "refused")
    spent.refresh_from_db()
    assert spent.credits == 0
    assert credits.account_for(bob).reserved == 0
    assert credits.reconcile() == []


# -- through the API ----------------------------------------------------------------------------------------
def test_it_answers_429_with_retry_after_through_the_api(bob, accounts, client):
    Quota.objects.create(user=bob, daily_images=1)
    _, token = ApiToken.issue(bob)
    body = {"prompt": "a lighthouse at dusk", "model": "flux-2-max", "provider": "sb-pixeldojo"}
    with time_machine.travel(NIGHT - timedelta(seconds=59), tick=False):
        first = client.post(
            "/api/v1/generations", body, "application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
        )
        second = client.post(
            "/api/v1/generations", body, "application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
        )
    assert first.status_code == 202
    assert second.status_code == 429
    assert second["Retry-After"] == "60"
    assert second.json() == {
        "error": {
            "code": "quota_daily_images",
            "message": "Your limit is 1 images a day and 1 are used; it resets at 2026-03-11 00:00 UTC.",
        }
    }
    with time_machine.travel(MIDNIGHT, tick=False):
        third = client.post(
            "/api/v1/generations", body, "application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
        )
    assert third.status_code == 202


def test_it_shows_quota_use_in_the_api(bob, accounts, client):
    Quota.objects.create(user=None, concurrent=4, daily_images=10)
    make(bob, n=2)
    _, token = ApiToken.issue(bob)
    me = client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert me["quota"] == {
        "concurrent": {"limit": 4, "used": 1},
        "daily_images": {"limit": 10, "used": 2},
        "monthly_credits": {"limit": None, "used": 140},
    }


# -- the quota command --------------------------------------------------------------------------------------
def test_it_sets_team_defaults_and_user_overrides_from_the_command_line(bob, carol, capsys):
    call_command("quota", "set", "--default", "--concurrent", "4", "--daily-images", "100")
    assert (
        capsys.readouterr().out.strip()
        == "team default: concurrent 4, daily images 100, monthly credits unlimited"
    )
    call_command("quota", "set", "bob", "--monthly-credits", "5000", "--daily-images", "20")
    assert (
        capsys.readouterr().out.strip() == "bob: concurrent unlimited, daily images 20, monthly credits 5000"
    )
    assert credits.limits_for(bob) == {"concurrent": 4, "daily_images": 20, "monthly_credits": 5000}
    assert credits.limits_for(carol) == {"concurrent": 4, "daily_images": 100, "monthly_credits": None}
    # 0 clears an override, so the team default applies again.
    call_command("quota", "set", "bob", "--daily-images", "0")
    assert credits.limits_for(bob)["daily_images"] == 100
    assert Quota.objects.count() == 2


@pytest.mark.parametrize(
    "args",
    [
        ["set"],
        ["set", "bob", "--default"],
        ["set", "nobody", "--concurrent", "1"],
        ["set", "bob", "--concurrent", "-1"],
    ],
)
def test_it_refuses_bad_quota_commands(bob, args):
    with pytest.raises(CommandError):
        call_command("quota", *args)
    assert credits.limits_for(bob) == {"concurrent": None, "daily_images": None, "monthly_credits": None}
