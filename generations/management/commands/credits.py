from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts import audit
from generations import credits
from generations.api import me_payload


class Command(BaseCommand):
    help = "Grant credits, show a user's balance, or reconcile balances with the ledger."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        grant = sub.add_parser("grant")
        grant.add_argument("username")
        grant.add_argument("amount", type=int)
        grant.add_argument("--note", default="")
        show = sub.add_parser("show")
        show.add_argument("username")
        sub.add_parser("reconcile", help="check that every balance equals its ledger sums")

    def handle(self, *args, action, **options):
        if action == "reconcile":
            problems = credits.reconcile()
            for problem in problems:
                self.stderr.write(problem)
            if problems:
                raise CommandError(f"{len(problems)} problem(s) found")
            self.stdout.write("ok: every balance equals its ledger")
            return
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user {options['username']!r}.")
        if action == "grant":
            if options["amount"] <= 0:
                raise CommandError("AMOUNT must be a positive number of credits.")
            note = options["note"] or "granted from the command line"
            # The grant's audit entry (written by accounts.signals) names the OS user, in its transaction.
            with audit.by_command("credits grant"):
                credits.grant(user, options["amount"], note=note)
        me = me_payload(user)
        quota = ", ".join(
            f"{name} {value['used']}/{value['limit'] if value['limit'] is not None else 'unlimited'}"
            for name, value in me["quota"].items()
        )
        self.stdout.write(
            f"{user.username}: balance {me['credits']['balance']}, reserved {me['credits']['reserved']}; {quota}"
        )
