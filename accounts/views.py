"""A person's own settings (API tokens, downloads' metadata, notifications) and accepting an invitation."""

from __future__ import annotations

import functools

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.views import LoginView
from django.db import transaction
from django.http import Http404, HttpResponseForbidden, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from generations import credits
from generations.login import login_required
from generations.models import ApiToken

from . import audit
from .access import profile_of
from .models import Invitation, Profile

TOKENS_SHOWN = 50


def passwords_on(view):
    """Password reset exists only while local passwords do (FLUXWEB_PASSWORD_LOGIN)."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if not settings.FLUXWEB_PASSWORD_LOGIN:
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


class LogIn(LoginView):
    """Django's log-in, offering "Sign in with ..." when an identity provider is set, and only that when
    local passwords are off."""

    def get_context_data(self, **kwargs):
        return super().get_context_data(
            oidc_name=settings.FLUXWEB_OIDC_NAME if settings.FLUXWEB_OIDC_ISSUER else "",
            password_login=settings.FLUXWEB_PASSWORD_LOGIN,
            **kwargs,
        )

    def post(self, request, *args, **kwargs):
        if not settings.FLUXWEB_PASSWORD_LOGIN:
            return HttpResponseForbidden("Local passwords are off: sign in through the identity provider.")
        return super().post(request, *args, **kwargs)


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. “nightly batch”.")


class PreferencesForm(forms.ModelForm):
    class Meta:
        model = Profile
        fields = ["keep_metadata", "notifications"]
        labels = {
            "keep_metadata": "Downloads keep the embedded prompt and settings",
            "notifications": "Notify me when my jobs end",
        }


def settings_context(request, **extra) -> dict:
    tokens = ApiToken.objects.filter(user=request.user).order_by("-created_at")[:TOKENS_SHOWN]
    return {
        "tokens": tokens,
        "token_form": TokenForm(),
        "preferences": PreferencesForm(instance=profile_of(request.user)),
        "role": profile_of(request.user).get_role_display(),
        **extra,
    }


@never_cache
@require_GET
@login_required
def account_settings(request):
    return render(request, "accounts/settings.html", settings_context(request))


@never_cache
@require_POST
@login_required
def create_token(request):
    """A new token, shown once on the page that answers (never again: only its digest is kept)."""
    form = TokenForm(request.POST)
    if not form.is_valid():
        context = settings_context(request, token_form=form)
        return render(request, "accounts/settings.html", context, status=400)
    token, secret = ApiToken.issue(request.user, form.cleaned_data["name"])
    return render(request, "accounts/settings.html", settings_context(request, new_token=secret, made=token))


@require_POST
@login_required
def revoke_token(request, pk: int):
    """Deleting the row is the revocation: the API looks the token up on every request, so the next
    request with it is refused."""
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    token.delete()
    messages.success(request, f"Token “{token.name or token.prefix}” revoked; it no longer works.")
    return HttpResponseRedirect(reverse("account-settings"))


@require_POST
@login_required
def save_preferences(request):
    profile = profile_of(request.user)
    form = PreferencesForm(request.POST, instance=profile)
    if form.is_valid():
        form.save()
        messages.success(request, "Settings saved.")
    return HttpResponseRedirect(reverse("account-settings"))


# -- invitations ------------------------------------------------------------------------------------------
def welcome(user, invitation: Invitation) -> None:
    """What every invited person starts with: the invited role and the team's credits for newcomers (the
    team's default quota applies to everyone already)."""
    from .access import set_role

    set_role(user, invitation.role, by=invitation.created_by, via="invitation")
    if settings.FLUXWEB_NEW_USER_CREDITS > 0:
        credits.grant(
            user,
            settings.FLUXWEB_NEW_USER_CREDITS,
            admin=invitation.created_by,
            note=f"Welcome credits (invitation {invitation.pk})",
        )


@never_cache
@require_http_methods(["GET", "POST"])
def accept_invitation(request, token: str):
    invitation = Invitation.find(token)
    if invitation is None:
        return render(request, "accounts/invitation_gone.html", {"state": "unknown"}, status=404)
    if invitation.state != "open":
        return render(request, "accounts/invitation_gone.html", {"state": invitation.state}, status=410)
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            user = form.save(commit=False)
            user.email = invitation.email
            user.save()
            if not invitation.claim(user):  # used in another tab a moment ago: make nobody
                transaction.set_rollback(True)
                return render(request, "accounts/invitation_gone.html", {"state": "used"}, status=410)
            welcome(user, invitation)
            audit.record(
                invitation.created_by,
                "invitation.accept",
                invitation.email,
                after={"username": user.get_username(), "role": invitation.role},
                via="invitation",
            )
        login(request, user, backend="accounts.backends.ProfileBackend")
        messages.success(request, f"Welcome to FluxWeb, {user.get_username()}.")
        return HttpResponseRedirect(reverse("studio"))
    return render(request, "accounts/accept.html", {"form": form, "invitation": invitation})
