"""The admin side of team accounts: roles on the user list, invitations that show their link once, and the
read-only audit log. Only admins (the role) enter the Django admin at all."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import Group
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from generations import credits

from . import audit
from .access import role_of, set_role
from .models import AuditEntry, Invitation, Profile, Role

User = get_user_model()


def admins_only(request) -> bool:
    """The admin site's gate: an active staff user whose role is admin (a member or viewer marked staff by
    hand still stays out)."""
    user = request.user
    return user.is_active and user.is_staff and role_of(user) == Role.ADMIN


admin.site.has_permission = admins_only


class ProfileInline(admin.StackedInline):
    model = Profile
    can_delete = False
    fields = ["role", "keep_metadata", "notifications"]
    readonly_fields = ["role"]
    verbose_name_plural = "team account (change the role with the actions on the user list)"


def role_action(role: str):
    def act(modeladmin, request, queryset):
        changed = [user.get_username() for user in queryset if set_role(user, role, by=request.user)]
        text = f"Now {role}: {', '.join(changed)}." if changed else f"Everyone selected was already {role}."
        modeladmin.message_user(request, text, messages.SUCCESS)

    act.__name__ = f"make_{role}"
    act.short_description = f"Make the selected users {role}s"
    return act


admin.site.unregister(User)
# FluxWeb's access is the role (admin, member, viewer), and an admin's account is a superuser: Django's groups
# and per-user permissions decide nothing here, so they are not offered where they would seem to.
admin.site.unregister(Group)


@admin.register(User)
class TeamUserAdmin(audit.AuditedAdmin, UserAdmin):
    """Django's user admin with the role shown and set by actions (each one audited); the staff and
    superuser flags follow the role, so they are not edited by hand. Adding a user, deleting one and
    ticking "active" by hand are audited too (user.add / user.change / user.delete), and so is setting a
    user's password (user.password, without the password or its hash)."""

    audit_action = "user"
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        ("Access", {"fields": ("is_active", "is_staff", "is_superuser")}),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    filter_horizontal = ()

    list_display = ["username", "email", "role", "is_active", "last_login", "date_joined"]
    list_filter = ["profile__role", "is_active"]
    list_select_related = ["profile"]
    readonly_fields = ["is_staff", "is_superuser", "last_login", "date_joined"]
    inlines = [ProfileInline]
    actions = [*(role_action(role) for role in Role.values), "approve"]

    def user_change_password(self, request, id, form_url=""):
        if request.method != "POST":
            return super().user_change_password(request, id, form_url)
        rows = User.objects.filter(pk=unquote(id))
        with transaction.atomic():  # the new password commits with its entry, or neither does
            before = rows.values_list("password", flat=True).first()
            response = super().user_change_password(request, id, form_url)
            user = rows.first()
            if user is not None and before is not None and user.password != before:
                audit.record(
                    request.user,
                    "user.password",
                    user.get_username(),
                    after={"usable_password": user.has_usable_password()},
                    note="set in the admin",
                )
        return response

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []  # a new user's profile comes from accounts.signals

    @admin.action(description="Approve the selected pending users (let them sign in)")
    def approve(self, request, queryset):
        approved = []
        for user in queryset.filter(is_active=False):
            with transaction.atomic():  # an admin action runs outside the admin's own transaction
                type(user).objects.filter(pk=user.pk).update(is_active=True)
                audit.record(
                    request.user,
                    "user.approve",
                    user.get_username(),
                    before={"is_active": False},
                    after={"is_active": True},
                )
                if settings.FLUXWEB_NEW_USER_CREDITS > 0:
                    credits.grant(
                        user, settings.FLUXWEB_NEW_USER_CREDITS, admin=request.user, note="Welcome credits"
                    )
            approved.append(user.get_username())
        text = f"Approved: {', '.join(approved)}." if approved else "No pending user was selected."
        self.message_user(request, text, messages.SUCCESS)

    @admin.display(ordering="profile__role")
    def role(self, user) -> str:
        return role_of(user)

    def audit_snapshot(self, user) -> dict:
        """What the audit keeps of a user: access, never the password hash or the names."""
        return {
            "role": role_of(user),
            "is_active": user.is_active,
            "is_staff": user.is_staff,
            "is_superuser": user.is_superuser,
            "email": user.email,
        }


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Add one to get its link (shown once, in the message); revoke open ones with the action."""

    list_display = ["email", "role", "state", "created_by", "created_at", "expires_at", "user"]
    list_select_related = ["created_by", "user"]
    fields = ["email", "role"]
    actions = ["revoke"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        token = obj.arm(request.user)
        super().save_model(request, obj, form, change)
        link = request.build_absolute_uri(reverse("invitation", args=[token]))
        audit.record(
            request.user,
            "invitation.create",
            obj.email,
            after={"role": obj.role, "expires_at": obj.expires_at.isoformat()},
        )
        self.message_user(request, f"Send this link to {obj.email} (shown only now): {link}")

    @admin.action(description="Revoke the selected open invitations")
    def revoke(self, request, queryset):
        for invitation in queryset.open():
            with transaction.atomic():  # an admin action runs outside the admin's own transaction
                Invitation.objects.filter(pk=invitation.pk).update(revoked_at=timezone.now())
                audit.record(
                    request.user,
                    "invitation.revoke",
                    invitation.email,
                    before={"state": "open"},
                    after={"state": "revoked"},
                )
        self.message_user(request, "Revoked.", messages.SUCCESS)


@admin.register(AuditEntry)
class AuditEntryAdmin(audit.ReadOnlyAdmin, admin.ModelAdmin):
    """The log, newest first: the list says what changed in a line (a provider account's whole row made its
    before and after columns run off the page); an entry's page keeps both in full."""

    list_display = ["at", "actor_name", "action", "target", "change", "note"]
    list_filter = ["action", "at"]
    search_fields = ["actor_name", "target", "note"]

    @admin.display(description="what changed")
    def change(self, entry: AuditEntry) -> str:
        return audit.summary(entry.before, entry.after)
