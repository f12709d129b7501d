from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from generations.models import ApiToken


class Command(BaseCommand):
    help = "Create a personal API token; the token alone is the last line printed."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create")
        create.add_argument("username")
        create.add_argument("--name", default="")

    def handle(self, *args, action, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        token, secret = ApiToken.issue(user, name)
        self.stdout.write(f"Token {token.prefix}… for {username}; it is shown once, store it now:")
        self.stdout.write(secret)
