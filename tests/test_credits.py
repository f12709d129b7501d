"""The money: prices and their effective dates, the hold and how it ends, grants and adjustments, the
database's own backstops, and the `credits` command. No provider is called: the submit task is stubbed."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.management import call_command, execute_from_command_line
from django.db import IntegrityError, connection, transaction
from django.db.migrations.loader import MigrationLoader
from django.db.models import F

from generations import credits, engine, sweeper
from generations.models import CreditAccount, Generation, LedgerEntry, Price, Usage
from generations.providers import GenerationRequest
from generations.refusal import Refusal
from tests.conftest import saved_files

SPRING = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)  # after the seeded prices' 2026-01-01


def request(**overrides) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "a lighthouse at dusk", "model": "flux-2-max"} | overrides))


@pytest.fixture(autouse=True)
def no_submit(monkeypatch, settings):
    """Creates hold credits but start no provider work. (And the personas' passwords need not resist
    brute force here: PBKDF2's million rounds cost half a second a persona.)"""
    monkeypatch.setattr(engine, "enqueue", lambda *args: None)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def running(generation: Generation) -> Generation:
    assert generation.mark_submitted("job-1", "", 1.0)
    return generation


def ledger(generation: Generation) -> list[tuple[str, int]]:
    return list(generation.ledger.order_by("id").values_list("kind", "amount"))


def balance(user) -> tuple[int, int]:
    account = credits.account_for(user)
    return account.balance, account.reserved


# -- prices -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["vtrix", "apiframe", "pixeldojo"])
@pytest.mark.parametrize(
    ("megapixels", "ratio", "price"),
    [
        (0.5, "1:1", 70),
        (1.0, "1:1", 70),
        (1.0, "4:3", 70),
        (2.0, "1:1", 100),
        (2.0, "16:9", 100),
        (4.0, "1:1", 160),
    ],
)
def test_it_prices_flux_2_max_by_the_megapixel_tier_chosen(db, kind, megapixels, ratio, price):
    # Sizes are rounded down to 16 px, so a ratio at a tier never lands above it.
    assert credits.quote(kind, request(megapixels=megapixels, aspect_ratio=ratio)).total == price


def test_it_prices_a_1_mp_5_by_4_image_at_the_1_mp_price(db):
    # 5:4 at 1 MP is 1136x912 (0.99 MP): rounded down to 16 px, never past the tier that is billed.
    assert request(aspect_ratio="5:4").output_megapixels <= 1.0
    assert credits.quote("pixeldojo", request(aspect_ratio="5:4")).total == 70


def test_it_prices_explicit_pixel_sizes_by_their_area(db):
    assert credits.quote("vtrix", request(width=1024, height=1024)).total == 70
    assert credits.quote("vtrix", request(width=1024, height=1040)).total == 100
    assert credits.quote("vtrix", request(width=2048, height=2048)).total == 160


def test_it_adds_30_per_reference_megapixel_and_multiplies_by_n(db):
    quote = credits.quote("pixeldojo", request(n=3, reference_megapixels=(0.3, 1.0, 1.5)))
    assert (quote.per_image, quote.references) == (70, 30 + 30 + 60)
    assert quote.total == 3 * 70 + 120
    assert quote.for_images(1) == 70 + 120
    assert quote.for_images(0) == 0


@pytest.mark.parametrize(
    ("model", "size", "price"),
    [
        ("flux-plus", (512, 512), 3),
        ("flux-plus", (1024, 1024), 3),
        ("flux-plus", (1024, 1536), 6),
        ("flux-pro-2", (1024, 1024), 6),
        ("flux-pro-2", (1536, 1536), 12),
    ],
)
def test_it_prices_maxapi_per_image_doubling_above_1024_squared(db, model, size, price):
    assert credits.quote("maxapi", request(model=model, width=size[0], height=size[1])).total == price
    assert (
        credits.quote("maxapi", request(model=model, width=size[0], height=size[1], n=4)).total == 4 * price
    )


def test_it_applies_a_new_price_only_from_its_date(db):
    with time_machine.travel(SPRING, tick=False) as clock:
        Price.objects.create(
            kind="apiframe",
            model="flux-2-max",
            tier="1MP",
            credits=90,
            effective_from=SPRING + timedelta(days=1),
        )
        assert credits.quote("apiframe", request()).total == 70
        clock.move_to(SPRING + timedelta(days=1) - timedelta(microseconds=1))
        assert credits.quote("apiframe", request()).total == 70
        clock.move_to(SPRING + timedelta(days=1))
        assert credits.quote("apiframe", request()).total == 90
        # The other tiers keep their prices, and other providers are untouched.
        assert credits.quote("apiframe", request(megapixels=2.0)).total == 100
        assert credits.quote("vtrix", request()).total == 70


def test_it_keeps_the_default_for_tiers_a_price_row_does_not_name(db):
    Price.objects.all().delete()  # as in a database where the seeded rows are gone
    Price.objects.create(kind="apiframe", model="flux-2-max", tier="1MP", credits=90)
    assert credits.price_table("apiframe", "flux-2-max") == {
        "1MP": 90,
        "2MP": 100,
        "4MP": 160,
        "input_mp": 30,
    }
    assert credits.quote("apiframe", request(megapixels=2.0)).total == 100


def test_it_holds_the_price_in_force_when_the_job_was_created(bob, accounts):
    with time_machine.travel(SPRING, tick=False) as clock:
        Price.objects.create(
            kind="apiframe",
            model="flux-2-max",
            tier="1MP",
            credits=90,
            effective_from=SPRING + timedelta(hours=1),
        )
        generation, _ = engine.create(bob, request(), provider="sb-apiframe")
        clock.move_to(SPRING + timedelta(hours=2))
        engine.finish(running(generation), saved_files(1), None)
    generation.refresh_from_db()
    assert (generation.credits_reserved, generation.credits_charged) == (70, 70)


def test_it_refuses_a_model_without_a_price(db):
    with pytest.raises(Refusal) as refused:
        credits.quote("apiframe", request(model="no-such-model"))
    assert refused.value.status == 400
    assert "No price" in refused.value.message


# -- the hold and how it ends -------------------------------------------------------------------------------
def test_it_holds_the_full_estimate_at_create(bob, accounts):
    generation, created = engine.create(bob, request(n=3), provider="sb-pixeldojo")
    assert created
    assert generation.credits_reserved == 210
    assert balance(bob) == (1000, 210)
    assert credits.account_for(bob).available == 790
    assert ledger(generation) == [("reserve", 210)]
    assert credits.reconcile() == []


def test_it_refuses_with_the_shortfall_and_moves_nothing(carol, accounts):
    credits.grant(carol, 50)
    with pytest.raises(Refusal) as refused:
        engine.create(carol, request(), provider="sb-apiframe")
    assert refused.value.status == 402
    assert refused.value.message == (
        "This costs 70 credits and you have 50 available; you are 20 short. Ask an admin for more credits."
    )
    assert balance(carol) == (50, 0)
    assert not Generation.objects.exists()
    assert list(LedgerEntry.objects.values_list("kind", flat=True)) == ["grant"]
    assert not Usage.objects.filter(images__gt=0).exists()  # the refused create counted no quota either


def test_it_settles_only_the_delivered_images_and_releases_the_rest(bob, accounts):
    generation, _ = engine.create(bob, request(n=3), provider="sb-pixeldojo")
    engine.finish(running(generation), saved_files(2), None)
    generation.refresh_from_db()
    assert generation.status == "succeeded"
    assert (generation.credits_reserved, generation.credits_charged, generation.credits_refunded) == (
        210,
        140,
        70,
    )
    assert ledger(generation) == [("reserve", 210), ("settle", 140), ("refund", 70)]
    assert balance(bob) == (860, 0)
    assert Usage.objects.get(user=bob, window=credits.day_window(generation.created_at)).images == 2
    assert credits.reconcile() == []


def test_it_charges_the_reference_megapixels_with_the_image(bob, accounts):
    generation, _ = engine.create(bob, request(reference_megapixels=(1.0, 0.2)), provider="sb-vtrix")
    assert generation.credits_reserved == 70 + 30 + 30
    engine.finish(running(generation), saved_files(1), None)
    generation.refresh_from_db()
    assert (generation.credits_charged, generation.credits_refunded) == (130, 0)
    assert credits.reconcile() == []


def test_it_settles_in_full_without_a_refund_entry(bob, accounts):
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    engine.finish(running(generation), saved_files(1), None)
    assert ledger(generation) == [("reserve", 70), ("settle", 70)]
    assert balance(bob) == (930, 0)


@pytest.mark.parametrize("end", ["fail", "cancel", "timeout", "no_images"])
def test_it_refunds_exactly_what_was_held(bob, accounts, end):
    generation, _ = engine.create(bob, request(n=2, megapixels=2.0), provider="sb-pixeldojo")
    assert balance(bob) == (1000, 200)
    if end == "fail":
        assert engine.fail(generation, "moderation", "The provider's moderation refused this prompt.")
    elif end == "cancel":
        assert engine.cancel(generation, bob)
    elif end == "timeout":
        Generation.objects.filter(pk=generation.pk).update(deadline_at=F("created_at"))
        sweeper.reap()
    else:
        engine.finish(running(generation), saved_files(0), None)
    generation.refresh_from_db()
    assert generation.status == ("canceled" if end == "cancel" else "failed")
    assert (generation.credits_charged, generation.credits_refunded) == (0, 200)
    assert ledger(generation) == [("reserve", 200), ("refund", 200)]
    assert balance(bob) == (1000, 0)
    assert Usage.objects.get(user=bob, window=credits.day_window(generation.created_at)).images == 0
    assert credits.reconcile() == []


def test_it_ends_a_hold_once_however_often_it_is_asked(bob, accounts):
    generation, _ = engine.create(bob, request(n=2), provider="sb-pixeldojo")
    engine.finish(running(generation), saved_files(1), None)
    before = ledger(generation)
    # Redelivered ingest, a duplicate webhook, a late failure, a cancel click and direct calls.
    engine.finish(generation, saved_files(2), None)
    assert not engine.fail(generation, "timeout", "late")
    assert not engine.cancel(generation, bob)
    assert not credits.settle(generation, 140, images=2)
    assert not credits.refund(generation)
    generation.refresh_from_db()
    assert ledger(generation) == before == [("reserve", 140), ("settle", 70), ("refund", 70)]
    assert (generation.status, generation.credits_charged, generation.credits_refunded) == (
        "succeeded",
        70,
        70,
    )
    assert balance(bob) == (930, 0)
    assert credits.reconcile() == []


def test_it_refunds_once_when_failed_twice(bob, accounts):
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    assert engine.fail(generation, "moderation", "refused")
    for _ in range(3):
        assert not engine.fail(generation, "moderation", "refused")
    assert ledger(generation) == [("reserve", 70), ("refund", 70)]


def test_it_will_not_end_the_hold_of_a_job_still_in_flight(bob, accounts):
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    with pytest.raises(ValueError, match="still queued"):
        credits.refund(generation)
    with pytest.raises(ValueError, match="still running"):
        credits.settle(running(generation), 70, images=1)
    assert ledger(generation) == [("reserve", 70)]
    assert credits.reconcile() == []


def test_it_never_charges_more_than_the_hold(bob, accounts):
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    running(generation).transition(["running"], "succeeded", event="succeeded")
    assert credits.settle(generation, 10_000, images=1)
    assert ledger(generation) == [("reserve", 70), ("settle", 70)]
    assert balance(bob) == (930, 0)


# -- grants and adjustments ---------------------------------------------------------------------------------
def test_it_records_who_granted_and_why(alice, carol):
    entry = credits.grant(carol, 500, admin=alice, note="welcome")
    assert (entry.kind, entry.amount, entry.admin, entry.note, entry.generation) == (
        "grant",
        500,
        alice,
        "welcome",
        None,
    )
    assert balance(carol) == (500, 0)
    assert credits.reconcile() == []


@pytest.mark.parametrize("amount", [0, -5])
def test_it_refuses_a_grant_that_is_not_positive(carol, amount):
    with pytest.raises(ValueError):
        credits.grant(carol, amount)
    assert not LedgerEntry.objects.exists()


def test_it_adjusts_up_and_down_with_the_admin_and_a_note(alice, bob):
    up = credits.adjust(bob, 25, admin=alice, note="refund for a bad render")
    down = credits.adjust(bob, -100, admin=alice, note="duplicate grant")
    assert [(e.kind, e.amount, e.admin, e.note) for e in (up, down)] == [
        ("adjust", 25, alice, "refund for a bad render"),
        ("adjust", -100, alice, "duplicate grant"),
    ]
    assert balance(bob) == (925, 0)
    assert credits.reconcile() == []


def test_it_refuses_an_adjustment_without_a_note_or_amount(alice, bob):
    with pytest.raises(ValueError, match="note"):
        credits.adjust(bob, -10, admin=alice, note="  ")
    with pytest.raises(ValueError):
        credits.adjust(bob, 0, admin=alice, note="nothing")
    assert balance(bob) == (1000, 0)


def test_it_cannot_take_away_held_credits(alice, bob, accounts):
    engine.create(bob, request(n=2), provider="sb-pixeldojo")  # holds 140 of 1000
    with pytest.raises(ValueError, match="860"):
        credits.adjust(bob, -861, admin=alice, note="too much")
    credits.adjust(bob, -860, admin=alice, note="all that is free")
    assert balance(bob) == (140, 140)
    assert credits.reconcile() == []


# -- the database's backstops -------------------------------------------------------------------------------
def rejected(update) -> bool:
    try:
        with transaction.atomic():
            update()
    except IntegrityError:
        return True
    return False


def test_it_has_the_database_refuse_a_negative_balance(carol):
    credits.grant(carol, 10)
    rows = CreditAccount.objects.filter(user=carol)
    assert rejected(lambda: rows.update(balance=F("balance") - 999))
    assert rejected(lambda: rows.update(reserved=-1))
    assert balance(carol) == (10, 0)


def test_it_has_the_database_refuse_a_hold_above_the_balance(bob, accounts):
    engine.create(bob, request(), provider="sb-apiframe")
    rows = CreditAccount.objects.filter(user=bob)
    assert rejected(lambda: rows.update(reserved=F("balance") + 1))
    assert rejected(lambda: rows.update(balance=F("reserved") - 1))
    # Taking 999 of 1000 would leave 1, below the 70 held.
    assert rejected(lambda: rows.update(balance=F("balance") - 999))
    assert balance(bob) == (1000, 70)


def test_it_has_the_check_constraints_in_the_database_and_the_migrations(db):
    names = {"credit_balance_not_negative", "credit_reserved_not_negative", "credit_reserved_within_balance"}
    state = MigrationLoader(connection).project_state()
    assert names <= {c.name for c in state.models["generations", "creditaccount"].options["constraints"]}
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, CreditAccount._meta.db_table)
    checks = {name for name, info in found.items() if info["check"]}
    assert names <= checks


def test_it_never_saves_a_ledger_entry_twice(bob):
    entry = LedgerEntry.objects.filter(user=bob).get()
    entry.amount = 1
    with pytest.raises(ValueError, match="append-only"):
        entry.save()
    assert LedgerEntry.objects.get(pk=entry.pk).amount == 1000


def test_it_has_the_database_refuse_a_second_entry_of_a_kind_for_a_generation(bob, accounts):
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    for kind in ("reserve", "settle", "refund"):
        if kind != "reserve":
            LedgerEntry.objects.create(user=bob, kind=kind, amount=0, generation=generation)
        assert rejected(
            lambda kind=kind: LedgerEntry.objects.create(user=bob, kind=kind, amount=0, generation=generation)
        )
    # Grants and adjustments are not per generation: any number is fine.
    credits.grant(bob, 1)
    credits.grant(bob, 1)


def test_it_has_the_database_refuse_a_negative_entry_other_than_an_adjustment(bob):
    assert rejected(lambda: LedgerEntry.objects.create(user=bob, kind="grant", amount=-1))


# -- the credits command ------------------------------------------------------------------------------------
def test_it_reconciles_clean_books(bob, accounts, capsys):
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    engine.finish(running(generation), saved_files(1), None)
    call_command("credits", "reconcile")
    assert "ok" in capsys.readouterr().out


def test_it_exits_non_zero_on_a_tampered_balance(bob, capsys):
    CreditAccount.objects.filter(user=bob).update(balance=F("balance") + 5)
    with pytest.raises(SystemExit) as exited:
        execute_from_command_line(["manage.py", "credits", "reconcile"])
    assert exited.value.code != 0
    err = capsys.readouterr().err
    assert "bob: balance 1005 but the ledger says 1000" in err
    assert "1 problem(s) found" in err


def test_it_reports_a_tampered_generation(bob, accounts):
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    engine.finish(running(generation), saved_files(1), None)
    Generation.objects.filter(pk=generation.pk).update(credits_charged=0, credits_refunded=0)
    assert credits.reconcile() == [
        f"generation {generation.pk}: charged 0 and refunded 0 but the ledger says 70 and 0",
        f"generation {generation.pk}: keeps 1 image(s) but charged nothing",
    ]


def test_it_reports_a_job_that_ended_without_ending_its_hold(bob, accounts):
    generation, _ = engine.create(bob, request(), provider="sb-apiframe")
    Generation.objects.filter(pk=generation.pk).update(status="failed")
    assert credits.reconcile() == [
        f"generation {generation.pk}: settled 0 of a 70 hold",
        "bob: reserved 70 but in-flight holds add up to 0",
    ]


def test_it_grants_and_shows_from_the_command_line(bob, capsys):
    call_command("credits", "grant", "bob", "250", "--note", "quarterly budget")
    entry = LedgerEntry.objects.filter(user=bob).first()
    assert (entry.kind, entry.amount, entry.note) == ("grant", 250, "quarterly budget")
    assert "bob: balance 1250, reserved 0" in capsys.readouterr().out
    call_command("credits", "show", "bob")
    out = capsys.readouterr().out
    assert out.startswith("bob: balance 1250, reserved 0; ")
    assert "daily_images 0/unlimited" in out
    assert LedgerEntry.objects.filter(user=bob).count() == 2


@pytest.mark.parametrize("args", [["grant", "nobody", "5"], ["grant", "bob", "0"], ["show", "nobody"]])
def test_it_refuses_bad_command_input(bob, args):
    from django.core.management import CommandError

    with pytest.raises(CommandError):
        call_command("credits", *args)
    assert LedgerEntry.objects.filter(user=bob).count() == 1
