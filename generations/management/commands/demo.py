from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from generations import credits
from generations.models import LedgerEntry, ProviderAccount

USERS = [("alice", True, 5000), ("bob", False, 2000), ("carol", False, 0)]
SANDBOX_ACCOUNTS = [
    ("sandbox-apiframe", "apiframe", "afk_sandbox_demo", 10),
    ("sandbox-vtrix", "vtrix", "vtrix_sandbox_demo", 20),
    ("sandbox-pixeldojo", "pixeldojo", "pd_sandbox_demo", 30),
    ("sandbox-maxapi", "maxapi", "sk-sandbox-demo", 40),
]


class Command(BaseCommand):
    help = "Create the demo users (printing their logins) and point one account of every kind at the sandbox."

    def add_arguments(self, parser):
        parser.add_argument("--sandbox-url", default=settings.FLUXWEB_SANDBOX_URL)
        parser.add_argument("--password", default="fluxweb-demo")

    def handle(self, *args, sandbox_url, password, **options):
        User = get_user_model()
        for username, admin, grant in USERS:
            user, created = User.objects.get_or_create(
                username=username, defaults={"is_staff": admin, "is_superuser": admin}
            )
            if created:
                user.set_password(password)
                user.save()
            if grant and not LedgerEntry.objects.filter(user=user, kind="grant").exists():
                credits.grant(user, grant, note="demo credits")
        for slug, kind, key, priority in SANDBOX_ACCOUNTS:
            account, created = ProviderAccount.objects.get_or_create(
                slug=slug,
                defaults={
                    "kind": kind,
                    "base_url": f"{sandbox_url.rstrip('/')}/{kind}",
                    "priority": priority,
                },
            )
            if created or not account.has_key:
                account.set_api_key(key)
                account.save()
        self.stdout.write(f"Demo logins (password for all: {password}):")
        for username, admin, grant in USERS:
            self.stdout.write(f"  {username:6} {'admin' if admin else 'member'}, {grant} credits at start")
        self.stdout.write(f"Provider accounts point at the sandbox on {sandbox_url}.")
