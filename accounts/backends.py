"""Django's ModelBackend, loading each request's user with its profile in the same query: the role decides
what every page shows (the studio's Generate), and the studio page stays at three queries."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend


class ProfileBackend(ModelBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        if not settings.FLUXWEB_PASSWORD_LOGIN:
            return None  # local passwords turned off: sign in through the identity provider
        return super().authenticate(request, username, password, **kwargs)

    def get_user(self, user_id):
        user = get_user_model()._default_manager.select_related("profile").filter(pk=user_id).first()
        return user if user is not None and self.user_can_authenticate(user) else None
