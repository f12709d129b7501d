"""Default prices (providers.md section 8) and the sweeper's safety-net schedule."""

from django.db import migrations


def add_defaults(apps, schema_editor):
    # The default prices the adapters declare (issue 9.1), read when this runs, so a fresh install lists
    # every provider's defaults without a migration per provider. Safe to read live code here: a database
    # that ran this keeps its rows whatever the code says later, `credits.price_table` falls back to the
    # same adapter defaults for any tier without a row (so an older install without a new provider's rows
    # prices it the same), and get_or_create never changes a row an admin edited.
    from generations.providers import PROVIDERS

    Price = apps.get_model("generations", "Price")
    for kind, adapter in PROVIDERS.items():
        for model, tiers in adapter.default_prices.items():
            for tier, amount in tiers.items():
                Price.objects.get_or_create(
                    kind=kind,
                    model=model,
                    tier=tier,
                    defaults={"credits": amount, "effective_from": "2026-01-01T00:00:00Z"},
                )
    Schedule = apps.get_model("django_q", "Schedule")
    # The scheduler ticks every ~30 s: this only restarts a sweeper that died; it is not the poll clock.
    Schedule.objects.update_or_create(
        name="fluxweb-sweeper",
        defaults={"func": "generations.tasks.sweep", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


class Migration(migrations.Migration):
    dependencies = [("generations", "0001_initial"), ("django_q", "0018_task_success_index")]
    operations = [migrations.RunPython(add_defaults, migrations.RunPython.noop)]
