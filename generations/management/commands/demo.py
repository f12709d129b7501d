from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from accounts import audit
from generations import credits
from generations.models import LedgerEntry, ProviderAccount
from generations.providers import PROVIDERS

USERS = [("alice", True, 5000), ("bob", False, 2000), ("carol", False, 0)]


def sandbox_accounts() -> list[tuple[str, str, str, int]]:
    """(slug, kind, key, priority) for one sandbox account of every adapter, ranked in registry order; the
    key is made up in the shape of the provider's own (the sandbox takes any key not starting "bad")."""
    return [
        (f"sandbox-{kind}", kind, f"{adapter.key_prefix or kind + '_'}sandbox_demo", 10 * rank)
        for rank, (kind, adapter) in enumerate(PROVIDERS.items(), start=1)
    ]


class Command(BaseCommand):
    help = "Create the demo users (printing their logins) and point one account of every kind at the sandbox."

    def add_arguments(self, parser):
        parser.add_argument("--sandbox-url", default=settings.FLUXWEB_SANDBOX_URL)
        parser.add_argument("--password", default="fluxweb-demo")

    def handle(self, *args, sandbox_url, password, **options):
        with audit.by_command("demo"):  # its grants and accounts are audited as the OS user's
            self.make(sandbox_url, password)
        self.stdout.write(f"Demo logins (password for all: {password}):")
        for username, admin, grant in USERS:
            self.stdout.write(f"  {username:6} {'admin' if admin else 'member'}, {grant} credits at start")
        self.stdout.write(f"Provider accounts point at the sandbox on {sandbox_url}.")

    def make(self, sandbox_url: str, password: str) -> None:
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
        for slug, kind, key, priority in sandbox_accounts():
            account, created = ProviderAccount.objects.get_or_create(
                slug=slug,
                defaults={
                    "kind": kind,
                    "base_url": f"{sandbox_url.rstrip('/')}/{kind}",
                    "priority": priority,
                },
            )
            if created or not account.has_key:
                before = None if created else audit.snapshot(account, ("api_key_encrypted",))
                account.set_api_key(key)
                account.save()
                after = audit.snapshot(account, ("api_key_encrypted",))
                audit.record(
                    None,
                    "provider.add" if created else "provider.change",
                    account,
                    before=before,
                    after=after,
                )
