"""Roles (issue 11): a viewer sees the team's gallery and history and can spend nothing anywhere, by any
URL of the studio or the API; members generate; only admins enter the Django admin; `/api/v1/me` says which."""

import importlib
import io
import json
import re

import pytest
from django.apps import apps
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image as PILImage

from accounts.access import role_of, set_role
from accounts.models import AuditEntry, Profile
from generations import credits
from generations.api_urls import urlpatterns as api_patterns
from generations.models import (
    ApiToken,
    Collection,
    CollectionItem,
    Favorite,
    Generation,
    Image,
    LedgerEntry,
    Reference,
)
from generations.refusal import Refusal
from generations.urls import urlpatterns

from .test_access import PUBLIC, logged_in, make_image, make_job

UNSAFE = ("post", "put", "patch", "delete")


def png() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (32, 32), (200, 90, 40)).save(out, "PNG")
    return out.getvalue()


def everything_a_member_could_send(image, collection) -> dict:
    """One form that would make each unsafe endpoint act for a member: a generate form, an image picked,
    a bulk action, a collection and its name, an upload."""
    return {
        "prompt": "a red kite",
        "model": "flux-2-max",
        "provider": "sb-apiframe",
        "idempotency_key": "viewer-try",
        "image": [image.pk],
        "action": "favorite",
        "collection": collection.pk,
        "name": "viewer's collection",
        "reference_files": SimpleUploadedFile("ref.png", png(), "image/png"),
    }


def books(user) -> tuple:
    account = credits.account_for(user)
    return (
        account.balance,
        account.reserved,
        LedgerEntry.objects.count(),
        Generation.objects.count(),
        Reference.objects.count(),
        Favorite.objects.count(),
        Collection.objects.count(),
        CollectionItem.objects.count(),
        Image.objects.visible().count(),
    )


def path_for(route: str, image, job, token: str = "not-a-token") -> str:
    route = re.sub(r"<str:\w+>", token, route)
    return "/" + re.sub(r"<int:\w+>", str(image.pk if "image" in route else job.pk), route)


@pytest.fixture
def team(bob, accounts):
    job = make_job(bob, accounts["apiframe"], status="failed")  # failed: Retry would make a new job
    done = make_job(bob, accounts["apiframe"], "a finished one", status="succeeded")
    image = make_image(done)
    collection = Collection.objects.create(name="Team picks", created_by=bob)
    return job, image, collection


# -- the studio's URLs, walked -------------------------------------------------------------------------------
def test_it_lets_a_viewer_spend_or_change_nothing_through_any_url(vera, team):
    job, image, collection = team
    client = logged_in(vera)
    before = books(vera)
    walked = set()
    for pattern in urlpatterns:
        if pattern.name in PUBLIC:
            continue
        walked.add(pattern.name)
        route = str(pattern.pattern)
        path = path_for(route, image, job)
        for htmx in (False, True):
            extra = {"HTTP_HX_REQUEST": "true"} if htmx else {}
            for method in UNSAFE:
                data = everything_a_member_could_send(image, collection) if method == "post" else None
                response = getattr(client, method)(path, data, **extra)
                assert response.status_code in (403, 405), (path, method, htmx, response.status_code)
                if response.status_code == 403 and htmx:
                    assert "access-refused" in response["HX-Trigger"] and response["HX-Reswap"] == "none"
        assert client.get(path).status_code in (200, 204, 302, 400, 404, 405), path
    assert walked >= {
        "generate",
        "retry",
        "rerun",
        "variations",
        "compare-providers",
        "studio-upload",
        "bulk",
    }
    assert books(vera) == before
    assert not Generation.objects.filter(user=vera).exists()


def test_it_shows_a_viewer_a_page_saying_why_without_htmx(vera, team):
    _, image, _ = team
    response = logged_in(vera).post(f"/images/{image.pk}/rerun")
    assert response.status_code == 403
    assert "Viewers can look" in response.content.decode() and "<html" in response.content.decode()


def test_it_lets_a_viewer_see_the_team_gallery_history_and_jobs(vera, team):
    job, image, _ = team
    client = logged_in(vera)
    for path in ("/gallery", "/history/", f"/jobs/{job.pk}/", f"/gallery/images/{image.pk}"):
        assert client.get(path).status_code == 200, path
    assert f'id="image-{image.pk}"' in client.get("/gallery", HTTP_HX_REQUEST="true").content.decode()
    assert client.get(f"/images/{image.pk}/download").status_code == 200
    zipped = client.post("/gallery/bulk", {"image": [image.pk], "action": "zip"})
    assert zipped.status_code == 200 and zipped["Content-Type"] == "application/zip"


def test_the_studio_hides_generate_from_a_viewer_and_says_why(vera, bob, accounts):
    page = logged_in(vera).get("/").content.decode()
    assert 'id="generate-form"' not in page and 'id="generate-button"' not in page
    assert 'id="viewer-notice"' in page and "not generate or spend credits" in page.replace("\n", " ")
    assert 'id="generate-form"' in logged_in(bob).get("/").content.decode()


def test_a_member_still_generates(bob, accounts):
    response = logged_in(bob).post(
        "/generate",
        {"prompt": "a fox", "model": "flux-2-max", "provider": "sb-apiframe", "idempotency_key": "m1"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200 and Generation.objects.filter(user=bob).count() == 1


# -- the JSON API ---------------------------------------------------------------------------------------------
def bearer(user) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(user)[1]}"}


def test_it_refuses_every_unsafe_api_call_of_a_viewer_with_the_error_shape(vera, team):
    job, image, _ = team
    auth = bearer(vera)
    client = Client()
    before = books(vera)
    for pattern in api_patterns:
        route = str(pattern.pattern)
        if route.startswith("^"):
            continue  # the catch-all 404
        path = "/api/v1/" + path_for(route, image, job).lstrip("/")
        for method in UNSAFE:
            response = getattr(client, method)(
                path,
                json.dumps({"prompt": "a kite", "model": "flux-2-max"}),
                content_type="application/json",
                **auth,
            )
            assert response.status_code in (403, 405), (path, method)
            body = response.json()
            assert set(body) == {"error"} and body["error"]["code"] in ("forbidden", "method_not_allowed")
            if response.status_code == 403:
                assert "Viewers" in body["error"]["message"]
    upload = Client().post("/api/v1/references", {"file": SimpleUploadedFile("r.png", png())}, **auth)
    assert upload.status_code == 403 and upload.json()["error"]["code"] == "forbidden"
    assert books(vera) == before


def test_a_viewers_session_cannot_create_through_the_api_either(vera, accounts):
    client = logged_in(vera)
    response = client.post(
        "/api/v1/generations", {"prompt": "a kite", "model": "flux-2-max"}, content_type="application/json"
    )
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"


def test_the_ledger_refuses_a_viewer_even_past_the_views(vera, accounts):
    from generations import engine
    from generations.providers import GenerationRequest

    with pytest.raises(Refusal) as refused:
        engine.create(vera, GenerationRequest(prompt="a kite", model="flux-2-max"), provider="sb-apiframe")
    assert refused.value.status == 403 and refused.value.code == "forbidden"
    assert credits.account_for(vera).reserved == 0 and not Generation.objects.exists()


@pytest.mark.parametrize("who, role", [("alice", "admin"), ("bob", "member"), ("vera", "viewer")])
def test_me_says_the_role(request, who, role):
    user = request.getfixturevalue(who)
    response = Client().get("/api/v1/me", **bearer(user))
    assert response.status_code == 200 and response.json()["role"] == role


# -- the Django admin -----------------------------------------------------------------------------------------
def test_only_admins_enter_the_django_admin(alice, bob, vera, django_user_model):
    staff_member = django_user_model.objects.create_user("sam", password="pw-sam-123", is_staff=True)
    set_role(staff_member, "member")
    staff_member.is_staff = True  # ticked by hand somewhere: the role still keeps them out
    staff_member.save()
    assert logged_in(alice).get("/admin/").status_code == 200
    for user in (bob, vera, staff_member):
        response = logged_in(user).get("/admin/")
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), user


def test_set_role_keeps_djangos_flags_in_step_and_is_audited(alice, bob):
    assert set_role(bob, "admin", by=alice)
    bob.refresh_from_db()
    assert bob.is_staff and bob.is_superuser and role_of(bob) == "admin"
    assert set_role(bob, "viewer", by=alice)
    bob.refresh_from_db()
    assert not bob.is_staff and not bob.is_superuser and Profile.objects.get(user=bob).role == "viewer"
    assert not set_role(bob, "viewer", by=alice)  # no change, no entry
    entries = list(AuditEntry.objects.filter(action="role.change").order_by("id"))
    assert [(e.actor_name, e.target, e.before["role"], e.after["role"]) for e in entries] == [
        ("alice", "bob", "member", "admin"),
        ("alice", "bob", "admin", "viewer"),
    ]
    with pytest.raises(ValueError):
        set_role(bob, "owner")


def test_the_user_list_sets_roles_with_an_audited_action(admin_client, bob):
    response = admin_client.post(
        "/admin/auth/user/", {"action": "make_viewer", "_selected_action": [bob.pk]}, follow=True
    )
    assert response.status_code == 200 and role_of(type(bob).objects.get(pk=bob.pk)) == "viewer"
    entry = AuditEntry.objects.get(action="role.change")
    assert entry.actor_name == "admin" and entry.after["role"] == "viewer"
    page = admin_client.get("/admin/auth/user/").content.decode()
    assert "viewer" in page


# -- existing users ------------------------------------------------------------------------------------------
def test_the_data_migration_makes_staff_admins_and_everyone_else_members(django_user_model):
    staff = django_user_model.objects.create_user("old-staff", is_staff=True)
    root = django_user_model.objects.create_superuser("old-root")
    plain = django_user_model.objects.create_user("old-plain")
    Profile.objects.all().delete()  # as before accounts existed
    assert role_of(django_user_model.objects.get(pk=plain.pk)) == "member"  # the fallback agrees

    migration = importlib.import_module("accounts.migrations.0002_roles_for_existing_users")
    migration.give_roles(apps, None)

    roles = dict(Profile.objects.values_list("user__username", "role"))
    assert roles == {staff.username: "admin", root.username: "admin", plain.username: "member"}
