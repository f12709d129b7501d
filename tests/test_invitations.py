"""Invitations (issue 11): an admin makes a single-use, expiring link; the invitee chooses a username and
password and lands in the studio with the invited role, the team's welcome credits and its default quota.
Password reset by e-mail through Django's views."""

import re
from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.utils import timezone

from accounts.access import role_of
from accounts.models import AuditEntry, Invitation
from generations import credits
from generations.models import Quota

from .conftest import password_logs_in

JOIN = {"username": "fay", "password1": "pw-fay-12345", "password2": "pw-fay-12345"}


def invite(role: str = "member", by=None) -> str:
    _, token = Invitation.issue("fay@example.com", role, by=by)
    return f"/account/invite/{token}"


@pytest.fixture
def admin_client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def test_an_admin_makes_an_invitation_and_sees_its_link_once(admin_client, alice):
    response = admin_client.post(
        "/admin/accounts/invitation/add/", {"email": "fay@example.com", "role": "viewer"}, follow=True
    )
    text = " ".join(str(m) for m in response.context["messages"])
    link = re.search(r"http://testserver(/account/invite/\S+)", text).group(1)
    invitation = Invitation.objects.get()
    assert (invitation.email, invitation.role, invitation.created_by) == ("fay@example.com", "viewer", alice)
    assert link.rsplit("/", 1)[1] not in admin_client.get("/admin/accounts/invitation/").content.decode()
    assert AuditEntry.objects.get(action="invitation.create").actor == alice

    client = Client()
    assert client.get(link).status_code == 200
    client.post(link, JOIN)
    assert role_of(get_user_model().objects.get(username="fay")) == "viewer"


def test_the_invitee_lands_in_the_studio_with_role_credits_and_quota(alice, settings, db):
    settings.FLUXWEB_NEW_USER_CREDITS = 500
    Quota.objects.create(user=None, concurrent=3, daily_images=50)
    client = Client()
    link = invite("member", by=alice)
    page = client.get(link)
    assert page.status_code == 200 and "fay@example.com" in page.content.decode()

    response = client.post(link, JOIN)

    assert response.status_code == 302 and response["Location"] == "/"
    fay = get_user_model().objects.get(username="fay")
    assert fay.email == "fay@example.com" and role_of(fay) == "member" and not fay.is_staff
    assert credits.account_for(fay).balance == 500
    assert credits.limits_for(fay)["concurrent"] == 3  # the team default
    studio = client.get("/")
    assert studio.status_code == 200 and 'id="generate-form"' in studio.content.decode()
    assert Invitation.objects.get().user == fay
    grant = AuditEntry.objects.get(action="credits.grant", target="fay")
    assert grant.actor == alice and grant.after == {"balance": 500}


def test_an_invitation_works_once(db):
    link = invite()
    assert Client().post(link, JOIN).status_code == 302
    again = Client().post(link, JOIN | {"username": "fay2"})
    assert again.status_code == 410 and "already been used" in again.content.decode()
    assert Client().get(link).status_code == 410
    assert not get_user_model().objects.filter(username="fay2").exists()


def test_an_invitation_expires(db, settings):
    settings.FLUXWEB_INVITE_DAYS = 2
    link = invite()
    with time_machine.travel(timezone.now() + timedelta(days=2, seconds=1)):
        response = Client().post(link, JOIN)
    assert response.status_code == 410 and "expired" in response.content.decode()
    assert not get_user_model().objects.filter(username="fay").exists()
    with time_machine.travel(timezone.now() + timedelta(days=1)):
        assert Client().post(link, JOIN).status_code == 302


def test_a_revoked_or_unknown_invitation_is_refused(admin_client, db):
    link = invite()
    invitation = Invitation.objects.get()
    admin_client.post(
        "/admin/accounts/invitation/", {"action": "revoke", "_selected_action": [invitation.pk]}
    )
    assert Client().post(link, JOIN).status_code == 410
    assert AuditEntry.objects.filter(action="invitation.revoke").exists()
    assert Client().get("/account/invite/not-a-token").status_code == 404


def test_a_bad_form_makes_nobody_and_keeps_the_invitation(db):
    link = invite()
    response = Client().post(link, JOIN | {"password2": "something-else"})
    assert response.status_code == 200 and 'role="alert"' in response.content.decode()
    assert Invitation.objects.get().state == "open"
    assert not get_user_model().objects.filter(username="fay").exists()


# -- password reset -------------------------------------------------------------------------------------------
def test_a_password_is_reset_by_an_emailed_link(bob):
    client = Client()
    assert "Forgot your password?" in client.get("/login/").content.decode()
    sent = client.post("/account/password-reset/", {"email": "bob@example.com"})
    assert sent.status_code == 302 and sent["Location"] == "/account/password-reset/sent"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["bob@example.com"]
    link = re.search(r"http://testserver(/account/password-reset/\S+)", mail.outbox[0].body).group(1)

    form = client.get(link, follow=True)
    assert form.status_code == 200 and 'name="new_password1"' in form.content.decode()
    done = client.post(
        form.redirect_chain[-1][0], {"new_password1": "new-pw-bob-456", "new_password2": "new-pw-bob-456"}
    )
    assert done.status_code == 302 and done["Location"] == "/account/password-reset/done"
    assert password_logs_in("bob", "new-pw-bob-456")
    assert not password_logs_in("bob", "pw-bob-123")
    used = client.get(link, follow=True)
    assert "already been used or has expired" in used.content.decode()


def test_a_reset_for_an_unknown_address_sends_nothing_and_says_the_same(db):
    response = Client().post("/account/password-reset/", {"email": "nobody@example.com"})
    assert response.status_code == 302 and not mail.outbox


@pytest.mark.parametrize(
    "env, backend",
    [
        ({}, "django.core.mail.backends.console.EmailBackend 25 None"),
        (
            {"FLUXWEB_SMTP_HOST": "smtp.example", "FLUXWEB_SMTP_PORT": "2525", "FLUXWEB_SMTP_USER": "fw"},
            "django.core.mail.backends.smtp.EmailBackend 2525 fw",
        ),
    ],
)
def test_mail_goes_to_the_console_unless_an_smtp_host_is_set(tmp_path, env, backend):
    import os
    import subprocess
    import sys

    from .test_settings import ROOT

    clean = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "FLUXWEB_DATA_DIR": str(tmp_path)}
    code = (
        "import fluxweb.settings as s; "
        "print(s.EMAIL_BACKEND, getattr(s, 'EMAIL_PORT', 25), getattr(s, 'EMAIL_HOST_USER', None))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=clean | {"DJANGO_DEBUG": "1"} | env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == backend, result.stderr
