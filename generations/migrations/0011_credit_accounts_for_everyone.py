"""Every user has a credit account (new users get theirs from generations.signals): one for each existing
user who has none, so an admin can grant credits before that person's first login."""

from django.conf import settings
from django.db import migrations


def add_accounts(apps, schema_editor):
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    CreditAccount = apps.get_model("generations", "CreditAccount")
    missing = User.objects.filter(credit_account__isnull=True).values_list("pk", flat=True)
    CreditAccount.objects.bulk_create(
        [CreditAccount(user_id=pk) for pk in missing.iterator()], batch_size=500, ignore_conflicts=True
    )


class Migration(migrations.Migration):
    dependencies = [
        ("generations", "0010_search_and_history_indexes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]
    operations = [migrations.RunPython(add_accounts, migrations.RunPython.noop)]
