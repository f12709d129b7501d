"""Sign-in with OpenID Connect through mozilla-django-oidc, configured from the issuer alone: its endpoints
come from the provider's discovery document (fetched once per process, when someone first signs in), so a
team sets an issuer, a client id and a secret and nothing else (README "Team accounts").

Who may come in, and as what: an e-mail address is required, and with FLUXWEB_OIDC_ALLOWED_DOMAINS only
those domains; the role comes from the groups claim when FLUXWEB_OIDC_GROUPS_CLAIM is set (synced at each
sign-in), else new people arrive as FLUXWEB_OIDC_NEW_USERS says: members, or pending until an admin
approves them. Every refusal leaves its reason for the page the callback sends the person to."""

from __future__ import annotations

import logging
import re
import threading

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.http import Http404
from django.shortcuts import render
from django.urls import reverse
from django.views.generic import View
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from generations import credits

from . import audit
from .access import set_role
from .backends import ProfileBackend
from .models import Profile, Role

log = logging.getLogger("accounts")
REFUSAL_KEY = "oidc_refusal"
ENDPOINTS = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}
_documents: dict[str, dict] = {}
_lock = threading.Lock()


class DiscoveryError(Exception):
    pass


def enabled() -> bool:
    return bool(settings.FLUXWEB_OIDC_ISSUER)


def discovery() -> dict:
    """The issuer's /.well-known/openid-configuration, checked to name the same issuer (OIDC Discovery 4.3)."""
    issuer = settings.FLUXWEB_OIDC_ISSUER.rstrip("/")
    with _lock:
        if issuer not in _documents:
            try:
                response = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=10)
                response.raise_for_status()
                document = response.json()
            except (requests.RequestException, ValueError) as error:
                raise DiscoveryError(f"The identity provider at {issuer} did not answer: {error}") from None
            if str(document.get("issuer", "")).rstrip("/") != issuer:
                raise DiscoveryError(
                    f"The identity provider calls itself {document.get('issuer')!r}, not {issuer}."
                )
            _documents[issuer] = document
        return _documents[issuer]


def oidc_setting(attr: str, *args):
    """mozilla-django-oidc's settings lookup, with the provider's endpoints from discovery."""
    if attr in ENDPOINTS:
        return discovery()[ENDPOINTS[attr]]
    return import_from_settings(attr, *args)


def role_from_groups(claims: dict) -> str | None:
    """The role the groups claim maps to (admin before member before viewer), or None when the claim is not
    configured or names none of the mapped groups."""
    claim = settings.FLUXWEB_OIDC_GROUPS_CLAIM
    if not claim:
        return None
    groups = claims.get(claim) or []
    groups = {groups} if isinstance(groups, str) else set(groups)
    for role, mapped in (
        (Role.ADMIN, settings.FLUXWEB_OIDC_ADMIN_GROUPS),
        (Role.MEMBER, settings.FLUXWEB_OIDC_MEMBER_GROUPS),
        (Role.VIEWER, settings.FLUXWEB_OIDC_VIEWER_GROUPS),
    ):
        if groups & set(mapped):
            return role
    return None


def free_username(claims: dict) -> str:
    """preferred_username, else the e-mail's local part, made valid and unique (ida, ida-2, ...)."""
    wanted = claims.get("preferred_username") or claims["email"].split("@")[0]
    base = re.sub(r"[^\w.@+-]", "-", wanted)[:140] or "user"
    User = get_user_model()
    name, n = base, 1
    while User.objects.filter(username__iexact=name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


class Backend(ProfileBackend, OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend, reading the endpoints from discovery only when someone signs in through
    the provider (a password log-in never waits on it), and loading users with their profile."""

    get_settings = staticmethod(oidc_setting)

    def __init__(self, *args, **kwargs):
        self.UserModel = get_user_model()
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None

    def __getattr__(self, name: str):
        if name in ENDPOINTS:  # OIDC_OP_TOKEN_ENDPOINT and the like, asked for during a sign-in
            return discovery()[ENDPOINTS[name]]
        raise AttributeError(name)

    def authenticate(self, request, **kwargs):
        if not enabled() or request is None or "code" not in request.GET:
            return None  # a password log-in, or sign-in turned off
        try:
            user = OIDCAuthenticationBackend.authenticate(self, request, **kwargs)
        except (requests.RequestException, DiscoveryError) as error:
            log.warning("OIDC sign-in failed: %s", error)
            self.refuse("The identity provider could not be reached or refused the sign-in. Try again.")
            return None
        if user is not None and not user.is_active:
            self.refuse("Your account waits for an admin's approval. You can sign in once it is approved.")
        return user

    def refuse(self, reason: str) -> None:
        self.request.session[REFUSAL_KEY] = reason

    def verify_claims(self, claims: dict) -> bool:
        email = claims.get("email") or ""
        if not email or claims.get("email_verified") is False:
            self.refuse("The identity provider did not give a verified e-mail address, which FluxWeb needs.")
            return False
        domain = email.rsplit("@", 1)[-1].lower()
        allowed = [d.lower() for d in settings.FLUXWEB_OIDC_ALLOWED_DOMAINS]
        if allowed and domain not in allowed:
            self.refuse(
                f"{email} may not sign in to FluxWeb: only addresses at {', '.join(allowed)} may. "
                "Ask an admin for an invitation."
            )
            return False
        return True

    def filter_users_by_claims(self, claims: dict):
        """The person this subject signed in as before; else an account with the same e-mail (an invited
        person, or one an admin made), which the subject is then tied to."""
        subject = str(claims.get("sub", ""))
        known = self.UserModel.objects.filter(profile__oidc_subject=subject) if subject else None
        if known is not None and known.exists():
            return known
        return self.UserModel.objects.filter(email__iexact=claims["email"], profile__oidc_subject="")

    def create_user(self, claims: dict):
        mapped = role_from_groups(claims)
        pending = settings.FLUXWEB_OIDC_NEW_USERS == "pending"
        role = mapped or Role.MEMBER
        with transaction.atomic():
            user = self.UserModel.objects.create_user(free_username(claims), email=claims["email"])
            user.set_unusable_password()
            user.is_active = not pending
            user.save(update_fields=["password", "is_active"])
            Profile.objects.filter(user=user).update(oidc_subject=str(claims.get("sub", "")))
            set_role(user, role, via="oidc")
            if settings.FLUXWEB_NEW_USER_CREDITS > 0 and not pending:
                credits.grant(user, settings.FLUXWEB_NEW_USER_CREDITS, note="Welcome credits (first sign-in)")
            audit.record(
                None,
                "user.add",
                user.get_username(),
                after={"role": role, "email": user.email, "pending": pending},
                via="oidc",
            )
        return user

    def update_user(self, user, claims: dict):
        subject = str(claims.get("sub", ""))
        if subject:
            try:
                with transaction.atomic():
                    Profile.objects.filter(user=user, oidc_subject="").update(oidc_subject=subject)
            except IntegrityError:  # another account holds this subject already
                pass
        mapped = role_from_groups(claims)
        if mapped:
            set_role(user, mapped, via="oidc")
        return user


class SignIn(OIDCAuthenticationRequestView):
    """/oidc/authenticate/: off (404) without an issuer; the endpoint from discovery, asked for only here."""

    get_settings = staticmethod(oidc_setting)

    def __init__(self, **kwargs):
        View.__init__(self, **kwargs)
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID

    def get(self, request):
        if not enabled():
            raise Http404
        try:
            self.OIDC_OP_AUTH_ENDPOINT = discovery()["authorization_endpoint"]
        except DiscoveryError as error:
            log.warning("OIDC discovery failed: %s", error)
            text = "The identity provider could not be reached. Try again in a moment."
            return render(request, "accounts/sign_in_refused.html", {"text": text}, status=502)
        return super().get(request)


class Callback(OIDCAuthenticationCallbackView):
    get_settings = staticmethod(oidc_setting)

    @property
    def failure_url(self) -> str:
        return reverse("sign-in-refused")

    def get(self, request):
        if not enabled():
            raise Http404
        return super().get(request)


def sign_in_refused(request):
    """Where a refused sign-in lands: the reason the backend left, or a general one."""
    text = request.session.pop(REFUSAL_KEY, "") or "The sign-in did not complete. Try again."
    return render(request, "accounts/sign_in_refused.html", {"text": text}, status=403)
