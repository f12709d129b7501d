"""Every user made before team accounts gets a profile: staff and superusers become admins, everyone else a
member (issue 11). Users made later get theirs from accounts.signals."""

from django.conf import settings
from django.db import migrations


def give_roles(apps, schema_editor):
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    Profile = apps.get_model("accounts", "Profile")
    have = set(Profile.objects.values_list("user_id", flat=True))
    Profile.objects.bulk_create(
        [
            Profile(user_id=pk, role="admin" if staff or superuser else "member")
            for pk, staff, superuser in User.objects.values_list("pk", "is_staff", "is_superuser")
            if pk not in have
        ]
    )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(give_roles, migrations.RunPython.noop)]
