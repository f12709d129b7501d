"""`seed_images N [--user USERNAME]` (contract.md): N finished generations with images, spread over the team, the
providers, the formats and the past year, moving no credits."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db.models import Count, F
from django.utils import timezone
from PIL import Image as PILImage

from generations import credits
from generations.models import CreditAccount, Generation, Image, LedgerEntry, Prompt, ProviderAccount


@pytest.fixture
def team_accounts(db) -> list[ProviderAccount]:
    return [
        ProviderAccount.objects.create(slug=f"acme-{kind}", kind=kind, base_url=f"http://127.0.0.1:9/{kind}")
        for kind in ("apiframe", "maxapi")
    ]


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_images", *args, stdout=out)
    return out.getvalue()


def test_it_adds_finished_generations_with_an_image_each(alice, bob, carol, team_accounts):
    assert "Added 300 generations" in seed("300")
    assert Generation.objects.filter(status="succeeded").count() == 300
    assert Image.objects.count() == 300
    assert not Image.objects.exclude(
        user=F("generation__user"), model=F("generation__model"), account=F("generation__account")
    ).exists()


def test_it_spreads_the_rows_over_users_accounts_models_formats_and_the_past_year(
    alice, bob, carol, team_accounts
):
    seed("600")
    images = Image.objects.all()
    assert set(images.values_list("user__username", flat=True)) == {"alice", "bob", "carol"}
    assert set(images.values_list("account__slug", flat=True)) == {"acme-apiframe", "acme-maxapi"}
    assert set(images.values_list("format", flat=True)) == {"jpeg", "png", "webp"}
    for account in team_accounts:  # every model its account serves, and only those
        served = set(images.filter(account=account).values_list("model", flat=True))
        assert served == set(account.adapter_class.models)
    assert len(set(images.values_list("model", flat=True))) > 1
    now = timezone.now()
    oldest, newest = images.order_by("created_at")[0].created_at, images.order_by("-created_at")[0].created_at
    assert now - timedelta(days=366) < oldest < now - timedelta(days=300)
    assert now - timedelta(days=60) < newest <= now
    # Ids grow with time, as they do in use: the newest id is the newest image.
    assert list(images.order_by("-id").values_list("pk", flat=True)[:50]) == list(
        images.order_by("-created_at").values_list("pk", flat=True)[:50]
    )


def test_the_files_are_small_real_images_shared_by_every_row(bob, team_accounts):
    seed("60")
    files = set(Image.objects.values_list("format", "file", "thumbnail", "width", "height", "bytes"))
    assert len(files) == 3
    for fmt, name, thumb, width, height, size in files:
        with default_storage.open(name) as f, PILImage.open(f) as picture:
            assert (picture.format.lower(), picture.size) == (fmt, (width, height))
        assert default_storage.size(name) == size < 10_000
        with default_storage.open(thumb) as f, PILImage.open(f) as picture:
            assert picture.format == "JPEG"
    seed("10")  # a second run reuses them
    assert Image.objects.values("file").distinct().count() == 3


def test_it_moves_no_credits(bob, team_accounts):
    before = list(CreditAccount.objects.values_list("user", "balance", "reserved"))
    entries = LedgerEntry.objects.count()
    seed("100")
    assert list(CreditAccount.objects.values_list("user", "balance", "reserved")) == before
    assert LedgerEntry.objects.count() == entries
    assert not Generation.objects.exclude(credits_reserved=0, credits_charged=0, credits_refunded=0).exists()
    assert all(params["seeded"] for params in Generation.objects.values_list("params", flat=True))
    assert credits.reconcile() == []  # nothing held, nothing owed: the books stay clean


def test_the_prompts_are_a_searchable_history_with_their_use_counts(bob, carol, team_accounts):
    seed("400")
    assert 50 <= Prompt.objects.count() <= 100
    counted = dict(Generation.objects.values_list("prompt").annotate(n=Count("id")))
    assert dict(Prompt.objects.values_list("pk", "uses")) == counted
    newest = dict(Generation.objects.order_by("created_at").values_list("prompt", "created_at"))
    assert dict(Prompt.objects.values_list("pk", "last_used_at")) == newest
    some = Prompt.objects.first()
    first_word, last_word = some.text.split()[0], some.text.split()[1]
    assert some in Prompt.objects.search(f"{last_word} {first_word[:3]}")
    assert Generation.objects.search(some.text).filter(prompt=some).count() == some.uses


def test_a_second_run_adds_to_the_history_it_shares(bob, team_accounts):
    seed("200")
    seed("200")
    assert Generation.objects.count() == Image.objects.count() == 400
    counted = dict(Generation.objects.values_list("prompt").annotate(n=Count("id")))
    assert dict(Prompt.objects.values_list("pk", "uses")) == counted


def test_user_gives_every_row_to_that_user(alice, bob, carol, team_accounts):
    seed("50", "--user", "carol")
    assert set(Image.objects.values_list("user__username", flat=True)) == {"carol"}
    assert set(Generation.objects.values_list("user__username", flat=True)) == {"carol"}


def test_it_refuses_an_unknown_user(bob, team_accounts):
    with pytest.raises(CommandError, match="No user 'nobody'"):
        seed("5", "--user", "nobody")
    assert not Generation.objects.exists()


def test_it_refuses_clearly_when_there_is_no_user(db, team_accounts):
    with pytest.raises(CommandError, match="no user"):
        seed("5")
    assert not Generation.objects.exists()


def test_it_refuses_clearly_when_there_is_no_provider_account(bob):
    with pytest.raises(CommandError, match="no provider account"):
        seed("5")
    assert not Generation.objects.exists()


def test_it_refuses_a_count_below_one(bob, team_accounts):
    with pytest.raises(CommandError):
        seed("0")


def test_it_is_quiet_at_verbosity_0(bob, team_accounts):
    out = StringIO()
    call_command("seed_images", "5", verbosity=0, stdout=out)
    assert out.getvalue() == "" and Image.objects.count() == 5
