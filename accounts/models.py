"""Team accounts: each person's role and preferences, invitations by link, and the audit log of what admins
did to money, quotas, provider accounts, roles and invitations."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


class Profile(models.Model):
    """One row per person. The role is a field, not a Django group: a person has exactly one role, the
    database refuses any other value, and it is read with the user in one join (groups are many-to-many,
    their names editable, and Django's model permissions cannot say "may spend")."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    keep_metadata = models.BooleanField(
        default=True, help_text="Downloads keep the prompt and settings embedded in the file."
    )
    notifications = models.BooleanField(default=True, help_text="Say when one of your jobs ends.")
    oidc_subject = models.CharField(
        max_length=255, blank=True, default="", help_text="The identity provider's `sub` for this person."
    )

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(role__in=Role.values), name="profile_role_known"),
            models.UniqueConstraint(
                fields=["oidc_subject"], condition=~Q(oidc_subject=""), name="profile_one_user_per_subject"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.role})"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class InvitationQuerySet(models.QuerySet):
    def open(self):
        return self.filter(used_at=None, revoked_at=None, expires_at__gt=timezone.now())


class Invitation(models.Model):
    """A single-use, expiring link; only the token's SHA-256 is stored, the link is shown once."""

    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="invitations_accepted",
        help_text="Who accepted it.",
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = InvitationQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(role__in=Role.values), name="invitation_role_known"),
        ]

    def __str__(self) -> str:
        return f"{self.email} as {self.role}"

    @classmethod
    def issue(cls, email: str, role: str, *, by=None) -> tuple[Invitation, str]:
        invitation = cls(email=email, role=role)
        token = invitation.arm(by)
        invitation.save()
        return invitation, token

    def arm(self, by=None) -> str:
        """Give a new (unsaved) invitation its token, creator and expiry; returns the token."""
        token = secrets.token_urlsafe(32)
        self.digest = token_digest(token)
        self.created_by = by
        self.expires_at = timezone.now() + timedelta(days=settings.FLUXWEB_INVITE_DAYS)
        return token

    @classmethod
    def find(cls, token: str) -> Invitation | None:
        return cls.objects.filter(digest=token_digest(token)).first()

    @property
    def state(self) -> str:
        if self.used_at:
            return "used"
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "open"

    def claim(self, user) -> bool:
        """Mark the invitation used by `user`: one conditional UPDATE, so of two tabs one wins."""
        return bool(Invitation.objects.open().filter(pk=self.pk).update(used_at=timezone.now(), user=user))


class AuditEntry(models.Model):
    """Append-only: who did what to which thing, with the values before and after."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(
        max_length=150, help_text="The username at the time, or how it was done (manage.py)."
    )
    action = models.CharField(max_length=40, db_index=True)
    target = models.CharField(max_length=200)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    note = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name} {self.action} {self.target}"
