"""Run the test identity provider: migrate its own database, make its people and the FluxWeb client, and
serve on loopback until killed. Usage: python -m tests.oidc_provider.serve PORT REDIRECT_URI [...]

People: ida (ida@corp.example, group fluxweb-admins), mo (mo@corp.example, group designers), max
(max@elsewhere.example); every password is "idp-pass-123". The client is `fluxweb` / `fluxweb-secret`."""

import os
import sys

CLIENT_ID, CLIENT_SECRET, PASSWORD = "fluxweb", "fluxweb-secret", "idp-pass-123"
PEOPLE = [
    ("ida", "ida@corp.example", "fluxweb-admins"),
    ("mo", "mo@corp.example", "designers"),
    ("max", "max@elsewhere.example", ""),
]


def main(port: int, redirect_uris: list[str]) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.oidc_provider.settings"
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.core.servers.basehttp import run
    from django.core.wsgi import get_wsgi_application
    from oauth2_provider.models import Application

    call_command("migrate", verbosity=0)
    for username, email, group in PEOPLE:
        user = User.objects.create_user(username, email, PASSWORD)
        if group:
            user.groups.add(Group.objects.get_or_create(name=group)[0])
    Application.objects.create(
        name="FluxWeb",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris=" ".join(redirect_uris),
        skip_authorization=True,
        algorithm=Application.RS256_ALGORITHM,
    )
    print("ready", flush=True)
    run("127.0.0.1", port, get_wsgi_application(), threading=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
