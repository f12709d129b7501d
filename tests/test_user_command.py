"""`manage.py user add | set-role | invite`, exactly as contract.md names them."""

import getpass
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from accounts.access import role_of
from accounts.models import AuditEntry, Invitation
from generations.models import CreditAccount

from .conftest import password_logs_in


def run(*args) -> str:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


def user(username: str):
    return get_user_model().objects.get(username=username)


def test_it_adds_a_member_by_default_with_a_credit_account(db):
    output = run("user", "add", "dana", "--email", "dana@example.com", "--password", "pw-dana-123")

    dana = user("dana")
    assert "dana: created as member" in output
    assert role_of(dana) == "member" and dana.email == "dana@example.com" and not dana.is_staff
    assert CreditAccount.objects.filter(user=dana).exists()
    assert password_logs_in("dana", "pw-dana-123")
    added = AuditEntry.objects.get(action="user.add")
    assert (added.actor_name, added.note) == (f"command:{getpass.getuser()}", "user add")


@pytest.mark.parametrize("role, staff", [("admin", True), ("member", False), ("viewer", False)])
def test_it_adds_each_role(db, role, staff):
    run("user", "add", "erin", "--role", role)
    erin = user("erin")
    assert role_of(erin) == role and erin.is_staff is staff and erin.is_superuser is staff
    assert not erin.has_usable_password()  # no --password: a reset or an admin sets one


def test_it_sets_a_role_and_records_it(bob):
    assert "bob: now viewer" in run("user", "set-role", "bob", "viewer")
    assert role_of(user("bob")) == "viewer"
    assert "bob: already viewer" in run("user", "set-role", "bob", "viewer")
    entry = AuditEntry.objects.get(action="role.change")
    assert (entry.actor, entry.actor_name, entry.note, entry.before["role"], entry.after["role"]) == (
        None,
        f"command:{getpass.getuser()}",
        "user set-role",
        "member",
        "viewer",
    )
    run("user", "set-role", "bob", "admin")
    assert user("bob").is_superuser


def test_it_prints_an_invitation_link_alone_on_the_last_line(db, settings):
    output = run("user", "invite", "fay@example.com", "--role", "member")

    link = output.rstrip("\n").splitlines()[-1]
    assert link.startswith(settings.SITE_URL + "/account/invite/") and " " not in link
    invitation = Invitation.objects.get()
    assert invitation.email == "fay@example.com" and invitation.role == "member"
    assert invitation.state == "open"
    path = link.removeprefix(settings.SITE_URL)
    assert Client().get(path).status_code == 200
    assert AuditEntry.objects.filter(action="invitation.create", target="fay@example.com").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["user", "add", "bob"],  # exists
        ["user", "add", "gil", "--role", "owner"],
        ["user", "add", "gil", "--email", "not-an-address"],
        ["user", "add", "gil", "--password", "short"],
        ["user", "set-role", "nobody", "member"],
        ["user", "set-role", "bob", "owner"],
        ["user", "invite", "not-an-address"],
        ["user"],
    ],
)
def test_it_refuses_bad_arguments(bob, args):
    with pytest.raises((CommandError, SystemExit)):
        run(*args)
    assert not get_user_model().objects.filter(username="gil").exists()
    assert role_of(user("bob")) == "member"
