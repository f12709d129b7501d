"""The production profile (issue 10, item 3 and bug 3): `check --deploy` clean with production variables,
HTTPS settings, a strict Content-Security-Policy, login throttling that is right behind a proxy, and safe
headers on every media response."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.test import Client

from generations.models import Image

from .conftest import make_job, row_image
from .test_settings import load

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "right-password-123"


def production_env(tmp_path: Path, **extra: str) -> dict:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "fluxweb.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "k3y-" + "".join(f"{n:02x}" for n in os.urandom(30)),
        "FLUXWEB_FERNET_KEYS": Fernet.generate_key().decode(),
        "DJANGO_ALLOWED_HOSTS": "studio.example",
        "FLUXWEB_SITE_URL": "https://studio.example",
        "FLUXWEB_PROXY_SSL_HEADER": "X-Forwarded-Proto",
        "FLUXWEB_DATA_DIR": str(tmp_path),
    } | extra


def check_deploy(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_passes_check_deploy_with_production_variables(tmp_path):
    result = check_deploy(production_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_still_names_a_plain_http_site(tmp_path):
    """The check is not silenced wholesale: a site without https is still reported."""
    result = check_deploy(production_env(tmp_path, FLUXWEB_SITE_URL="http://studio.example"))
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr


def test_it_reads_the_https_variables(monkeypatch, tmp_path):
    https = load(
        monkeypatch,
        tmp_path,
        FLUXWEB_SITE_URL="https://studio.example",
        FLUXWEB_PROXY_SSL_HEADER="X-Forwarded-Proto",
    )
    assert https["SECURE_SSL_REDIRECT"] and https["SECURE_HSTS_SECONDS"] >= 31536000
    assert https["SECURE_HSTS_INCLUDE_SUBDOMAINS"]
    assert https["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert https["SESSION_COOKIE_SECURE"] and https["CSRF_COOKIE_SECURE"]

    monkeypatch.delenv("FLUXWEB_PROXY_SSL_HEADER")
    plain = load(monkeypatch, tmp_path)  # bin/run on a laptop: http on loopback
    assert not plain["SECURE_SSL_REDIRECT"] and plain["SECURE_HSTS_SECONDS"] == 0
    assert "SECURE_PROXY_SSL_HEADER" not in plain

    chosen = load(monkeypatch, tmp_path, FLUXWEB_HSTS_SECONDS="600", FLUXWEB_SSL_REDIRECT="0")
    assert chosen["SECURE_HSTS_SECONDS"] == 600 and not chosen["SECURE_SSL_REDIRECT"]


def test_it_keeps_an_old_secret_key_as_a_fallback_while_rotating(monkeypatch, tmp_path):
    loaded = load(monkeypatch, tmp_path, DJANGO_SECRET_KEY_FALLBACKS="o" * 50)
    assert loaded["SECRET_KEY_FALLBACKS"] == ["o" * 50]


# -- Content-Security-Policy -----------------------------------------------------------------------------------
def test_it_sends_a_strict_content_security_policy(client, bob):
    client.force_login(bob)
    policy = client.get("/")["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy


@pytest.mark.parametrize("path", ["/", "/gallery", "/history/", "/credits/", "/login/"])
def test_no_page_carries_inline_script_or_style(client, bob, path):
    client.force_login(bob)
    html = client.get(path).content.decode()
    assert "<script>" not in html and "<style" not in html and " style=" not in html
    assert " onclick=" not in html and " onload=" not in html and "javascript:" not in html


# -- login throttling -------------------------------------------------------------------------------------------
@pytest.fixture
def dave(django_user_model):
    return django_user_model.objects.create_user("dave", password=PASSWORD)


def log_in(client: Client, password: str, **meta: str):
    return client.post("/login/", {"username": "dave", "password": password}, **meta)


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_thirty_wrong_passwords_lock_the_right_one_out(client, dave):
    """Issue 10, bug 3: 30 wrong passwords in 17 s, then the right one logged in."""
    for _ in range(30):
        log_in(client, "wrong")

    response = log_in(client, PASSWORD)

    assert response.status_code == 429
    assert not logged_in(client)
    assert "Too many wrong passwords" in response.content.decode()  # a page saying why and for how long


def test_it_counts_wrong_passwords_per_client_behind_a_trusted_proxy(settings, dave):
    """Behind the proxy every request comes from its address: X-Forwarded-For names the client."""
    settings.FLUXWEB_TRUSTED_PROXIES = ["10.0.0.0/8"]
    attacker = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}
    member = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "198.51.100.4"}
    for _ in range(10):
        log_in(Client(), "wrong", **attacker)

    locked, member_client = Client(), Client()
    assert log_in(locked, PASSWORD, **attacker).status_code == 429
    assert log_in(member_client, PASSWORD, **member).status_code == 302
    assert logged_in(member_client) and not logged_in(locked)


def test_a_client_cannot_escape_the_lock_by_naming_another_address(dave):
    """Without a trusted proxy, X-Forwarded-For is the client's own claim and ignored."""
    for n in range(10):
        log_in(Client(), "wrong", REMOTE_ADDR="192.0.2.7", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}")

    client = Client()
    response = log_in(client, PASSWORD, REMOTE_ADDR="192.0.2.7", HTTP_X_FORWARDED_FOR="203.0.113.200")
    assert response.status_code == 429 and not logged_in(client)


def test_a_few_typos_do_not_lock_a_member_out(client, dave):
    for _ in range(3):
        log_in(client, "wrong")
    assert log_in(client, PASSWORD).status_code == 302 and logged_in(client)


# -- media responses --------------------------------------------------------------------------------------------
@pytest.fixture
def image(bob, accounts) -> Image:
    return row_image(make_job(bob, accounts["apiframe"], status="succeeded"))  # a PNG, its thumbnail a JPEG


@pytest.mark.parametrize(
    "path, disposition, content_type",
    [
        ("/images/{pk}/file", 'inline; filename="fluxweb-{g}-0.png"', "image/png"),
        ("/images/{pk}/thumbnail", 'inline; filename="fluxweb-{g}-0-thumbnail.jpg"', "image/jpeg"),
        ("/images/{pk}/download", 'attachment; filename="fluxweb-{g}-0.png"', "image/png"),
        ("/api/v1/images/{pk}/file", 'inline; filename="fluxweb-{g}-0.png"', "image/png"),
        ("/api/v1/images/{pk}/thumbnail", 'inline; filename="fluxweb-{g}-0-thumbnail.jpg"', "image/jpeg"),
    ],
)
def test_every_media_response_is_nosniff_with_a_safe_file_name(
    client, bob, image, settings, path, disposition, content_type
):
    settings.FLUXWEB_SENDFILE_HEADER = "X-Accel-Redirect"  # the web server sends the bytes
    client.force_login(bob)

    response = client.get(path.format(pk=image.pk))

    assert response.status_code == 200
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Disposition"] == disposition.format(g=image.generation_id)
    assert response["Content-Type"] == content_type
