"""Provider facts live on the adapter (issue 9.1): each adapter declares its result hosts, cost unit, default
prices, minimum poll interval and request budget next to its capability flags, and credits, admin, catalog,
the price migration, `demo`, the poll cadence, redaction and the account kinds read them from there."""

import importlib
from datetime import timedelta

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.utils import timezone

from generations import cadence, catalog, credits, engine, usage
from generations.models import Generation, Price, Prompt, ProviderAccount
from generations.providers import PROVIDERS, Adapter, Apiframe, Bfl, MaxApi, Vtrix, kind_choices
from generations.providers.base import MEGAPIXEL

TIERS = {"1MP", "2MP", "4MP"}


@pytest.mark.parametrize("kind", list(PROVIDERS))
def test_every_adapter_declares_its_facts(kind):
    adapter = PROVIDERS[kind]
    assert adapter.result_hosts and all(h == h.lower() and "." in h for h in adapter.result_hosts)
    assert isinstance(adapter.cost_unit, str)
    assert set(adapter.default_prices) == set(adapter.models), "a price for every model it serves"
    for tiers in adapter.default_prices.values():
        assert TIERS <= set(tiers) and all(isinstance(v, int) and v > 0 for v in tiers.values())
    assert 0 < adapter.min_poll_interval <= 5
    assert isinstance(adapter.default_max_rpm, int) and adapter.default_max_rpm > 0


def test_the_documented_budgets_and_units():
    assert PROVIDERS["pixeldojo"].default_max_rpm == 60  # [P7][P8]
    assert {kind: cls.cost_unit for kind, cls in PROVIDERS.items()} == {
        "apiframe": "Apiframe credits",
        "vtrix": "USD",
        "pixeldojo": "PixelDojo credits",
        "maxapi": "",
        "bfl": "BFL credits",
    }


class Fake(Adapter):
    kind = "fakeprov"
    label = "Fake Provider"
    default_base_url = "https://api.fake.example"
    models = dict(Vtrix.models)
    result_hosts = frozenset({"files.fake.example"})
    cost_unit = "fake coins"
    default_prices = {"flux-2-max": {"1MP": 11, "2MP": 22, "4MP": 44}}
    min_poll_interval = 3.0
    default_max_rpm = 7
    key_prefix = "fk_"


@pytest.fixture
def fake_provider(monkeypatch):
    monkeypatch.setitem(PROVIDERS, Fake.kind, Fake)
    return Fake


def test_a_new_adapter_is_an_account_kind_without_a_migration(db, fake_provider):
    # The kinds are a callable the migration state names (0014), so the list comes from the registry.
    assert ("fakeprov", "Fake Provider") in kind_choices()
    assert ("bfl", "BFL") in kind_choices()
    for model in (ProviderAccount, Price):
        field = model._meta.get_field("kind")
        assert "fakeprov" in dict(field.choices)
    account = ProviderAccount(slug="fake", kind="fakeprov", base_url="https://api.fake.example")
    account.full_clean(exclude=["api_key_encrypted"])
    with pytest.raises(ValidationError):
        ProviderAccount(slug="nope", kind="nope", base_url="https://x.example").full_clean()


@pytest.mark.django_db
def test_prices_default_to_what_the_adapter_declares(fake_provider):
    assert credits.price_table("fakeprov", "flux-2-max") == {"1MP": 11, "2MP": 22, "4MP": 44}
    assert credits.price_table("bfl", "flux-pro-2") == {"1MP": 30, "2MP": 45, "4MP": 75, "input_mp": 15}
    Price.objects.create(kind="fakeprov", model="flux-2-max", tier="2MP", credits=25)
    assert credits.price_table("fakeprov", "flux-2-max") == {"1MP": 11, "2MP": 25, "4MP": 44}
    assert credits.price_table("fakeprov", "flux-plus") == {}


@pytest.mark.django_db
def test_the_price_migration_seeds_every_adapter_s_defaults():
    seed = importlib.import_module("generations.migrations.0002_defaults").add_defaults
    Price.objects.all().delete()
    seed(apps, None)
    seeded = {(p.kind, p.model, p.tier): p.credits for p in Price.objects.all()}
    assert seeded[("bfl", "flux-2-max", "1MP")] == 70
    assert seeded[("bfl", "flux-pro-2", "input_mp")] == 15
    # The four original kinds seed exactly what the migration's old copy held.
    assert seeded[("maxapi", "flux-plus", "2MP")] == 6 and seeded[("maxapi", "flux-pro-2", "4MP")] == 12
    for kind in ("vtrix", "apiframe", "pixeldojo"):
        assert [seeded[(kind, "flux-2-max", t)] for t in ("1MP", "2MP", "4MP", "input_mp")] == [
            70,
            100,
            160,
            30,
        ]
    assert len(seeded) == sum(len(t) for t in credits.DEFAULT_PRICES.values())


def test_the_usage_report_names_the_adapter_s_cost_unit(fake_provider):
    assert usage.cost_unit("fakeprov") == "fake coins"
    assert usage.cost_unit("vtrix") == "USD"
    assert usage.cost_unit("gone") == ""


@pytest.mark.django_db
def test_the_catalog_offers_a_bfl_account_at_bfl_s_prices():
    account = ProviderAccount(slug="acme-bfl", kind="bfl", base_url="https://api.bfl.ai")
    account.set_api_key("bfl_live_key_1")
    account.save()
    models = {m["id"]: m for m in catalog.catalog()}
    assert models["flux-2-max"]["providers"] == ["acme-bfl"]
    assert models["flux-pro-2"]["providers"] == ["acme-bfl"]
    assert models["flux-2-max"]["price"]["acme-bfl"]["1MP"] == 70
    assert models["flux-2-max"]["options"]["acme-bfl"]["reference_images"] == 8


def running(account: ProviderAccount, bob, seconds_ago: float) -> Generation:
    now = timezone.now()
    return Generation.objects.create(
        user=bob,
        prompt=Prompt.remember("a fox", bob),
        model="flux-2-max",
        account=account,
        status=Generation.Status.RUNNING,
        started_at=now - timedelta(seconds=seconds_ago),
        deadline_at=now + timedelta(seconds=600),
    )


@pytest.fixture
def two_accounts(db):
    made = {}
    for kind in ("apiframe", "bfl"):
        made[kind] = ProviderAccount.objects.create(
            slug=f"x-{kind}", kind=kind, base_url="http://127.0.0.1:1"
        )
    return made


def test_the_poll_cadence_never_polls_sooner_than_the_adapter_allows(two_accounts, bob, monkeypatch):
    apiframe = running(two_accounts["apiframe"], bob, 4.9)
    bfl = running(two_accounts["bfl"], bob, 4.9)
    history = (4.0, 6.0)  # inside the spread of recent completions: the fastest polls
    assert cadence.next_poll_delay(apiframe, None, history) == pytest.approx(0.3)
    assert cadence.next_poll_delay(bfl, None, history) == pytest.approx(Bfl.min_poll_interval) == 0.5
    assert cadence.next_poll_delay(bfl, 0.99, None) == 0.5  # progress says done any moment
    monkeypatch.setattr(Apiframe, "min_poll_interval", 2.0)
    assert cadence.next_poll_delay(apiframe, 0.99, None) == 2.0
    assert cadence.next_poll_delay(apiframe, None, None) == 2.0
    assert cadence.first_poll_delay(two_accounts["apiframe"]) == 2.0
    assert cadence.first_poll_delay(two_accounts["bfl"]) == 1.0  # no history: look after a second


def test_a_key_in_an_adapter_s_shape_is_masked_in_error_texts(fake_provider):
    assert (
        engine.redact("BFL said: key bfl_a1b2c3d4e5f6 is not valid")
        == "BFL said: key [redacted] is not valid"
    )
    assert "afk_" not in engine.redact("Apiframe: afk_0123456789 revoked")
    assert MaxApi.key_prefix == "sk-" and Bfl.key_prefix == "bfl_"


def test_explicit_sizes_follow_the_model_s_size_rules():
    spec = Vtrix.models["flux-2-max"]
    assert (spec.size_multiple, spec.max_pixels) == (16, 4 * MEGAPIXEL)
    assert Bfl.models["flux-2-max"].size_multiple == 16
