from cryptography.fernet import InvalidToken
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts import audit
from generations import crypto
from generations.models import ProviderAccount, parse_hosts
from generations.providers import PROVIDERS

HIDDEN = ("api_key_encrypted",)  # the audit log shows only a fingerprint of the stored key, as the admin does


class Command(BaseCommand):
    help = "List provider accounts, or create/update one. Keys are never printed."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="one line per account")
        setter = sub.add_parser("set", help="create or update an account")
        setter.add_argument("slug")
        setter.add_argument("--kind", choices=sorted(PROVIDERS))
        setter.add_argument("--base-url")
        setter.add_argument("--api-key")
        toggle = setter.add_mutually_exclusive_group()
        toggle.add_argument("--enable", action="store_true")
        toggle.add_argument("--disable", action="store_true")
        setter.add_argument("--priority", type=int)
        setter.add_argument("--monthly-spend-cap", type=int)
        setter.add_argument(
            "--max-rpm",
            type=int,
            help="requests per minute FluxWeb may send this account (submits, polls, checks); "
            "0: the default for its kind",
        )
        setter.add_argument(
            "--result-hosts",
            metavar="HOST,...",
            help="extra hosts its result files may be downloaded from (replaces the list; '' clears it)",
        )
        sub.add_parser(
            "rotate-keys", help="re-encrypt every stored key under the first FLUXWEB_FERNET_KEYS key"
        )

    def handle(self, *args, action, **options):
        getattr(self, action.replace("-", "_"))(**options)

    def list(self, **options):
        for account in ProviderAccount.objects.all():
            self.stdout.write(
                f"{account.slug}\t{account.kind}\t{account.base_url}\t"
                f"{'enabled' if account.enabled else 'disabled'}\tpriority {account.priority}\t"
                f"{'key set' if account.has_key else 'no key'}\t{account.budget}/min\t"
                f"breaker {account.breaker_state()}"
                + (f"\tresult hosts {','.join(account.extra_result_hosts)}" if account.result_hosts else "")
            )

    def set(self, **options):
        with audit.by_command("provider set"):  # the change and its audit entry commit together, or neither
            self.save_account(**options)

    def save_account(
        self,
        slug,
        kind,
        base_url,
        api_key,
        enable,
        disable,
        priority,
        monthly_spend_cap,
        max_rpm=None,
        result_hosts=None,
        **options,
    ):
        account = ProviderAccount.objects.select_for_update().filter(slug=slug).first()
        before = audit.snapshot(account, HIDDEN) if account is not None else None
        if account is None:
            if not kind:
                raise CommandError(f"{slug} is a new account: give --kind ({', '.join(sorted(PROVIDERS))}).")
            account = ProviderAccount(
                slug=slug, kind=kind, base_url=base_url or PROVIDERS[kind].default_base_url
            )
        elif kind:
            account.kind = kind
        if base_url:
            account.base_url = base_url.rstrip("/")
        if api_key is not None:
            if not api_key:
                raise CommandError("--api-key must not be empty.")
            account.set_api_key(api_key)
        if enable or disable:
            account.enabled = enable
        if priority is not None:
            account.priority = priority
        if monthly_spend_cap is not None:
            account.monthly_spend_cap = monthly_spend_cap or None
        if max_rpm is not None:
            if max_rpm < 0:
                raise CommandError("--max-rpm must be 0 (the kind's default) or more.")
            account.max_rpm = max_rpm or None
        if result_hosts is not None:
            try:
                account.result_hosts = ",".join(parse_hosts(result_hosts))
            except ValueError as error:
                raise CommandError(f"--result-hosts: {error}") from None
        try:
            account.full_clean(exclude=["api_key_encrypted", "key_last4"])
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())
            raise CommandError(problems) from None
        account.save()
        after = audit.snapshot(account, HIDDEN)
        if before != after:
            verb = "change" if before is not None else "add"
            audit.record(None, f"provider.{verb}", account, before=before, after=after)
        self.stdout.write(
            f"{account.slug}: {account.kind} at {account.base_url}, "
            f"{'enabled' if account.enabled else 'disabled'}, {'key set' if account.has_key else 'no key'}, "
            f"{account.budget} requests/min"
            + (f", result hosts {', '.join(account.extra_result_hosts)}" if account.result_hosts else "")
        )

    def rotate_keys(self, **options):
        count, unreadable = 0, []
        with audit.by_command("provider rotate-keys"):
            for account in ProviderAccount.objects.select_for_update().exclude(api_key_encrypted=""):
                before = audit.snapshot(account, HIDDEN)
                try:
                    account.api_key_encrypted = crypto.rotate(account.api_key_encrypted)
                except InvalidToken:
                    unreadable.append(account.slug)  # left as it is; rotating the others still helps
                    continue
                account.save(update_fields=["api_key_encrypted"])
                audit.record(
                    None,
                    "provider.rotate_key",
                    account,
                    before={"api_key_encrypted": before["api_key_encrypted"]},
                    after={"api_key_encrypted": audit.snapshot(account, HIDDEN)["api_key_encrypted"]},
                )
                count += 1
        self.stdout.write(f"re-encrypted {count} key(s)")
        if unreadable:
            raise CommandError(
                f"no FLUXWEB_FERNET_KEYS key opens the stored key of {', '.join(unreadable)}; "
                "set it again with `provider set SLUG --api-key ...`"
            )
