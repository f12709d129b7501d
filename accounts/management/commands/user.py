"""`user add`, `user set-role` and `user invite` (contract.md), for operators' scripts."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email
from django.urls import reverse

from accounts import audit
from accounts.access import set_role
from accounts.models import Invitation, Role
from generations import credits


class Command(BaseCommand):
    help = "Add a user with a role, change a user's role, or invite someone by link."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="create a user with a role (default member) and its credit account")
        add.add_argument("username")
        add.add_argument("--email", default="")
        add.add_argument("--role", choices=Role.values, default=Role.MEMBER)
        add.add_argument("--password", help="without one the user cannot log in with a password until reset")
        set_role_parser = sub.add_parser("set-role", help="change a user's role")
        set_role_parser.add_argument("username")
        set_role_parser.add_argument("role", choices=Role.values)
        invite = sub.add_parser("invite", help="print a single-use, expiring invitation link (last line)")
        invite.add_argument("email")
        invite.add_argument("--role", choices=Role.values, default=Role.MEMBER)

    def handle(self, *args, action, **options):
        # Each change commits with its audit entry, which names the OS user and the command.
        with audit.by_command(f"user {action}"):
            getattr(self, action.replace("-", "_"))(**options)

    def add(self, username, email, role, password, **options):
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            raise CommandError(f"User {username!r} already exists; use `user set-role` to change the role.")
        if email:
            check_email(email)
        if password is not None:
            try:
                validate_password(password, User(username=username, email=email))
            except ValidationError as error:
                raise CommandError(" ".join(error.messages)) from None
        user = User.objects.create_user(username, email, password)
        if password is None:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        set_role(user, role)
        credits.account_for(user)
        audit.record(None, "user.add", username, after={"role": role, "email": email})
        self.stdout.write(f"{username}: created as {role}")

    def set_role(self, username, role, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        changed = set_role(user, role)
        self.stdout.write(f"{username}: {'now' if changed else 'already'} {role}")

    def invite(self, email, role, **options):
        check_email(email)
        invitation, token = Invitation.issue(email, role)
        audit.record(
            None,
            "invitation.create",
            email,
            after={"role": role, "expires_at": invitation.expires_at.isoformat()},
        )
        self.stdout.write(
            f"Invitation for {email} as {role}, valid until {invitation.expires_at:%Y-%m-%d %H:%M} UTC:"
        )
        self.stdout.write(settings.SITE_URL + reverse("invitation", args=[token]))


def check_email(email: str) -> None:
    try:
        validate_email(email)
    except ValidationError:
        raise CommandError(f"{email!r} is not an e-mail address.") from None
