"""Default prices (providers.md section 8) and the sweeper's safety-net schedule."""

from django.db import migrations


# A copy, not an import: a migration must not change when the code does.
DEFAULT_PRICES = {
    ("maxapi", "flux-plus"): {"1MP": 3, "2MP": 6, "4MP": 6},
    ("maxapi", "flux-pro-2"): {"1MP": 6, "2MP": 12, "4MP": 12},
    **{(kind, "flux-2-max"): {"1MP": 70, "2MP": 100, "4MP": 160, "input_mp": 30} for kind in ("vtrix", "apiframe", "pixeldojo")},
}


def add_defaults(apps, schema_editor):
    Price = apps.get_model("generations", "Price")
    for (kind, model), tiers in DEFAULT_PRICES.items():
        for tier, amount in tiers.items():
            Price.objects.get_or_create(kind=kind, model=model, tier=tier, defaults={"credits": amount,
                                        "effective_from": "2026-01-01T00:00:00Z"})
    Schedule = apps.get_model("django_q", "Schedule")
    # The scheduler ticks every ~30 s: this only restarts a sweeper that died; it is not the poll clock.
    Schedule.objects.update_or_create(
        name="fluxweb-sweeper",
        defaults={"func": "generations.tasks.sweep", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


class Migration(migrations.Migration):
    dependencies = [("generations", "0001_initial"), ("django_q", "0018_task_success_index")]
    operations = [migrations.RunPython(add_defaults, migrations.RunPython.noop)]
