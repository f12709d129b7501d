"""Sign-in with OpenID Connect (issue 11) against a real provider: django-oauth-toolkit in its OIDC mode, a
small Django project of its own (tests/oidc_provider) served on loopback in a subprocess. Nothing of
mozilla-django-oidc is mocked: discovery, the authorization redirect, the code exchange, the ID token's
RS256 signature against the provider's JWKS, and userinfo all happen over loopback HTTP."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from django.contrib.auth import get_user_model
from django.test import Client

from accounts import oidc
from accounts.access import role_of
from accounts.models import AuditEntry, Profile
from generations import credits

from .conftest import password_logs_in

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "idp-pass-123"
CALLBACK = "/account/oidc/callback/"


class Provider:
    def __init__(self, url: str, process: subprocess.Popen):
        self.url, self.process = url, process
        self.issuer = f"{url}/o"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def identity_provider(live_server, tmp_path_factory):
    port = free_port()
    env = dict(os.environ, OIDC_PROVIDER_DB=str(tmp_path_factory.mktemp("idp") / "idp.sqlite3"))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    uris = [f"http://testserver{CALLBACK}", f"{live_server.url}{CALLBACK}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.oidc_provider.serve", str(port), *uris],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in process.stdout:  # migrate, people and client made: then it serves
        lines.append(line)
        if line.strip() == "ready":
            break
    else:
        raise AssertionError("the identity provider did not start:\n" + "".join(lines))
    provider = Provider(f"http://127.0.0.1:{port}", process)
    for _ in range(200):  # the socket opens just after "ready"
        try:
            requests.get(f"{provider.issuer}/.well-known/openid-configuration", timeout=5)
            break
        except requests.ConnectionError:
            time.sleep(0.05)
    yield provider
    process.terminate()
    process.wait(timeout=15)


@pytest.fixture
def sign_in_with_idp(settings, identity_provider, db):
    """FluxWeb configured for the provider as a team would be: issuer, client id and secret; groups mapped
    to roles; only corp.example addresses."""
    settings.FLUXWEB_OIDC_ISSUER = identity_provider.issuer
    settings.FLUXWEB_OIDC_NAME = "Corp ID"
    settings.OIDC_RP_CLIENT_ID = "fluxweb"
    settings.OIDC_RP_CLIENT_SECRET = "fluxweb-secret"
    settings.FLUXWEB_OIDC_GROUPS_CLAIM = "groups"
    settings.FLUXWEB_OIDC_ADMIN_GROUPS = ["fluxweb-admins"]
    settings.FLUXWEB_OIDC_MEMBER_GROUPS = ["designers"]
    settings.FLUXWEB_OIDC_VIEWER_GROUPS = []
    settings.FLUXWEB_OIDC_ALLOWED_DOMAINS = ["corp.example"]
    oidc._documents.clear()
    yield identity_provider
    oidc._documents.clear()


def sign_in(client: Client, provider: Provider, username: str):
    """The whole code flow: FluxWeb sends the browser to the provider, the person logs in there, the
    provider sends them back with a code, and FluxWeb's callback finishes it server to server."""
    start = client.get("/account/oidc/authenticate/")
    assert start.status_code == 302 and start["Location"].startswith(provider.issuer + "/authorize/")
    idp = requests.Session()
    to_login = idp.get(start["Location"], allow_redirects=False)
    login_url = urljoin(provider.url, to_login.headers["Location"])
    idp.get(login_url)
    back = idp.post(
        login_url,
        data={
            "username": username,
            "password": PASSWORD,
            "csrfmiddlewaretoken": idp.cookies["idp_csrftoken"],
            "next": parse_qs(urlsplit(login_url).query)["next"][0],
        },
        allow_redirects=False,
    )
    authorized = idp.get(urljoin(provider.url, back.headers["Location"]), allow_redirects=False)
    callback = authorized.headers["Location"]
    assert callback.startswith(f"http://testserver{CALLBACK}?"), callback
    return client.get(callback.removeprefix("http://testserver"))


def test_the_first_sign_in_makes_the_user_with_the_mapped_role(sign_in_with_idp):
    client = Client()
    page = client.get("/login/").content.decode()
    assert "Sign in with Corp ID" in page and 'name="password"' in page

    response = sign_in(client, sign_in_with_idp, "ida")

    assert response.status_code == 302 and response["Location"] == "/"
    ida = get_user_model().objects.get(username="ida")
    assert ida.email == "ida@corp.example" and role_of(ida) == "admin" and ida.is_superuser
    assert not ida.has_usable_password() and Profile.objects.get(user=ida).oidc_subject
    assert client.get("/").status_code == 200 and client.get("/admin/").status_code == 200
    assert AuditEntry.objects.get(action="user.add").actor_name == "oidc"

    again = Client()
    assert sign_in(again, sign_in_with_idp, "ida")["Location"] == "/"
    assert get_user_model().objects.filter(email="ida@corp.example").count() == 1  # the same person


def test_a_member_group_makes_a_member_with_the_welcome_credits(sign_in_with_idp, settings):
    settings.FLUXWEB_NEW_USER_CREDITS = 300
    sign_in(Client(), sign_in_with_idp, "mo")
    mo = get_user_model().objects.get(username="mo")
    assert role_of(mo) == "member" and credits.account_for(mo).balance == 300


def test_the_groups_claim_sets_the_role_at_every_sign_in(sign_in_with_idp, settings):
    sign_in(Client(), sign_in_with_idp, "ida")
    settings.FLUXWEB_OIDC_ADMIN_GROUPS = []
    settings.FLUXWEB_OIDC_VIEWER_GROUPS = ["fluxweb-admins"]  # the team moved ida's group to viewers
    sign_in(Client(), sign_in_with_idp, "ida")
    ida = get_user_model().objects.get(username="ida")
    assert role_of(ida) == "viewer" and not ida.is_staff
    assert AuditEntry.objects.filter(action="role.change", target="ida", actor_name="oidc").count() == 2


def test_a_disallowed_domain_is_refused_with_a_clear_page(sign_in_with_idp):
    client = Client()
    response = sign_in(client, sign_in_with_idp, "max")
    assert response.status_code == 302
    page = client.get(response["Location"])
    text = page.content.decode()
    assert page.status_code == 403 and "max@elsewhere.example may not sign in" in text
    assert "corp.example" in text
    assert not get_user_model().objects.filter(email="max@elsewhere.example").exists()
    assert client.get("/").status_code == 302  # not logged in


def test_new_people_wait_for_approval_when_the_setting_says_pending(sign_in_with_idp, settings, alice):
    settings.FLUXWEB_OIDC_NEW_USERS = "pending"
    settings.FLUXWEB_OIDC_GROUPS_CLAIM = ""
    client = Client()
    response = sign_in(client, sign_in_with_idp, "mo")
    assert "waits for an admin" in client.get(response["Location"]).content.decode()
    mo = get_user_model().objects.get(username="mo")
    assert not mo.is_active and role_of(mo) == "member"

    admin = Client()
    admin.force_login(alice)
    admin.post("/admin/auth/user/", {"action": "approve", "_selected_action": [mo.pk]})
    assert get_user_model().objects.get(pk=mo.pk).is_active
    assert AuditEntry.objects.get(action="user.approve").actor == alice
    assert sign_in(Client(), sign_in_with_idp, "mo")["Location"] == "/"


def test_an_invited_person_signs_in_later_through_the_provider(sign_in_with_idp, django_user_model):
    invited = django_user_model.objects.create_user("mo-local", "mo@corp.example", "pw-mo-123")
    sign_in(Client(), sign_in_with_idp, "mo")
    assert django_user_model.objects.filter(email="mo@corp.example").count() == 1
    assert Profile.objects.get(user=invited).oidc_subject


def test_local_passwords_can_be_turned_off(sign_in_with_idp, settings, bob):
    settings.FLUXWEB_PASSWORD_LOGIN = False
    client = Client()
    page = client.get("/login/").content.decode()
    assert "Sign in with Corp ID" in page and 'name="password"' not in page
    assert client.post("/login/", {"username": "bob", "password": "pw-bob-123"}).status_code == 403
    assert not password_logs_in("bob", "pw-bob-123")
    assert client.get("/account/password-reset/").status_code == 404
    assert sign_in(client, sign_in_with_idp, "ida")["Location"] == "/"


def test_sign_in_is_off_without_an_issuer(db, settings):
    settings.FLUXWEB_OIDC_ISSUER = ""
    assert Client().get("/account/oidc/authenticate/").status_code == 404
    assert Client().get(f"{CALLBACK}?code=x&state=y").status_code == 404
    assert "Sign in with" not in Client().get("/login/").content.decode()


@pytest.mark.parametrize(
    "env, complaint",
    [
        ({"FLUXWEB_OIDC_ISSUER": "https://id.example"}, "needs FLUXWEB_OIDC_CLIENT_ID"),
        ({"FLUXWEB_PASSWORD_LOGIN": "0"}, "nobody could log in"),
        ({"FLUXWEB_OIDC_NEW_USERS": "admin"}, "member or pending"),
    ],
)
def test_it_refuses_to_start_with_a_sign_in_setting_that_cannot_work(tmp_path, env, complaint):
    from .test_settings import import_settings

    result = import_settings(tmp_path, DJANGO_DEBUG="1", **env)
    assert result.returncode != 0 and complaint in result.stderr


def test_it_starts_with_the_provider_configured_by_environment_alone(tmp_path):
    from .test_settings import import_settings

    env = {
        "DJANGO_DEBUG": "1",
        "FLUXWEB_OIDC_ISSUER": "https://id.example/",
        "FLUXWEB_OIDC_CLIENT_ID": "fluxweb",
        "FLUXWEB_OIDC_CLIENT_SECRET": "s3cret",
        "FLUXWEB_PASSWORD_LOGIN": "0",
    }
    assert import_settings(tmp_path, **env).returncode == 0
