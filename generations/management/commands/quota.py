from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts import audit
from generations.models import Quota


class Command(BaseCommand):
    help = "Set a user's quota overrides, or the team defaults (--default). 0 clears a limit."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        setter = sub.add_parser("set")
        setter.add_argument("username", nargs="?")
        setter.add_argument("--default", action="store_true")
        setter.add_argument("--concurrent", type=int)
        setter.add_argument("--daily-images", type=int)
        setter.add_argument("--monthly-credits", type=int)

    def handle(self, *args, action, username, default, **options):
        if bool(username) == bool(default):
            raise CommandError("Name a USERNAME or give --default.")
        user = None
        if username:
            user = get_user_model().objects.filter(username=username).first()
            if user is None:
                raise CommandError(f"No user {username!r}.")
        names = ("concurrent", "daily_images", "monthly_credits")
        for name in names:
            if options[name] is not None and options[name] < 0:
                raise CommandError(f"--{name.replace('_', '-')} must be 0 or more.")
        with audit.by_command("quota set"):
            quota = Quota.objects.select_for_update().filter(user=user).first()
            before = audit.snapshot(quota) if quota is not None else None
            if quota is None:
                quota = Quota(user=user)
            for name in names:
                if options[name] is not None:
                    setattr(quota, name, options[name] or None)
            quota.save()
            after = audit.snapshot(quota)
            if before != after:
                verb = "change" if before is not None else "add"
                audit.record(None, f"quota.{verb}", quota, before=before, after=after)
        shown = lambda v: "unlimited" if v is None else v  # noqa: E731
        self.stdout.write(
            f"{'team default' if user is None else user.username}: concurrent {shown(quota.concurrent)}, "
            f"daily images {shown(quota.daily_images)}, monthly credits {shown(quota.monthly_credits)}"
        )
