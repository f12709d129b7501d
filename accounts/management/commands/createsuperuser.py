"""Django's `createsuperuser`, with the new account in the audit log (user.add, as the OS user's, like `user
add`). accounts.signals makes a superuser's profile an admin's."""

from django.contrib.auth import get_user_model
from django.contrib.auth.management.commands import createsuperuser
from django.db.models import Max

from accounts import audit
from accounts.access import role_of


class Command(createsuperuser.Command):
    def handle(self, *args, **options):
        users = get_user_model()._default_manager.db_manager(options["database"])
        last = users.aggregate(last=Max("pk"))["last"] or 0
        # Not inside the audit's transaction: the interactive prompts come first, and a transaction open
        # across them would hold SQLite's write lock while someone types.
        super().handle(*args, **options)
        with audit.by_command("createsuperuser"):
            for user in users.filter(pk__gt=last):
                audit.record(
                    None,
                    "user.add",
                    user.get_username(),
                    after={
                        "role": role_of(user),
                        "is_active": user.is_active,
                        "is_staff": user.is_staff,
                        "is_superuser": user.is_superuser,
                        "email": user.email,
                    },
                )
