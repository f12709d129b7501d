"""Who may do what. Admin: everything, the Django admin included. Member: generate, collections, their own
images. Viewer: sees the team gallery and history, and can neither generate nor spend.

Reads (GET) are open to every role, so the gallery, lightbox and history take no query for the role; every
unsafe request that could spend, create or change the team's images goes through `members_only` (browser
views) or the API's check (generations/api.py), and `credits.reserve` refuses a viewer as a last line."""

from __future__ import annotations

import functools
import json

from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import render

from .models import Profile, Role

VIEWER_REFUSAL = "Viewers can look at the team's images and history but cannot generate or spend credits. Ask an admin for the member role."
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def role_of(user) -> str:
    """The user's role; a user with no profile row yet (made before this app) counts as the data
    migration would map them: staff and superusers admin, everyone else member."""
    if not user.is_authenticated:
        return ""
    try:
        return user.profile.role
    except Profile.DoesNotExist:
        return Role.ADMIN if user.is_staff or user.is_superuser else Role.MEMBER


def may_spend(user) -> bool:
    return role_of(user) in (Role.ADMIN, Role.MEMBER)


def set_role(user, role: str, *, by=None, via: str = "") -> bool:
    """Give `user` the role, keeping Django's flags in step (admin: staff and superuser, so the whole Django
    admin; others: neither), and record the change. Returns False when the role was already that."""
    from . import audit

    if role not in Role.values:
        raise ValueError(f"Unknown role {role!r}: use one of {', '.join(Role.values)}.")
    with transaction.atomic():
        profile, _ = Profile.objects.select_for_update().get_or_create(user=user)
        before = {"role": profile.role, "is_staff": user.is_staff, "is_superuser": user.is_superuser}
        profile.role = role
        profile.save(update_fields=["role"])
        user.is_staff = user.is_superuser = role == Role.ADMIN
        user.save(update_fields=["is_staff", "is_superuser"])
        user.profile = profile  # the caller's user object answers with the new role from now on
        after = {"role": role, "is_staff": user.is_staff, "is_superuser": user.is_superuser}
        if before == after:
            return False
        audit.record(by, "role.change", user.get_username(), before=before, after=after, via=via)
    return True


def refusal(request) -> HttpResponse:
    """403 for a viewer's unsafe request: a page, or for htmx the words as a toast and no swap."""
    if request.htmx:
        response = HttpResponse(VIEWER_REFUSAL, status=403, content_type="text/plain; charset=utf-8")
        response["HX-Trigger"] = json.dumps({"access-refused": {"text": VIEWER_REFUSAL}})
        response["HX-Reswap"] = "none"
    else:
        response = render(request, "accounts/refused.html", {"text": VIEWER_REFUSAL}, status=403)
    response["Cache-Control"] = "private, no-store"
    return response


def members_only(view):
    """Refuse a viewer's unsafe requests (POST, DELETE...) to `view`; reads pass. Put it under
    `login_required`, so an anonymous visitor is still sent to log in."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if request.method not in SAFE_METHODS and not may_spend(request.user):
            return refusal(request)
        return view(request, *args, **kwargs)

    return wrapper


def keeps_metadata(user) -> bool:
    """Whether the person's downloads keep the embedded parameters (their setting; on by default)."""
    profile = Profile.objects.filter(user=user).only("keep_metadata").first()
    return profile.keep_metadata if profile is not None else True


def profile_of(user) -> Profile:
    """The person's profile, or an unsaved one with the defaults (and the role `role_of` gives)."""
    try:
        return user.profile
    except Profile.DoesNotExist:
        return Profile(user=user, role=role_of(user))
