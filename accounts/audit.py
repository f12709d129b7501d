"""The audit log: `record()` one admin action; `by_command()`, under which a management command's changes
are recorded as the OS user's, in the command's transaction; `AuditedAdmin`, a ModelAdmin mixin that records
every save and delete of its model with the values before and after; `ReadOnlyAdmin` for logs."""

from __future__ import annotations

import contextlib
import contextvars
import getpass
import hashlib
import json
import os

from django.db import transaction

from .models import AuditEntry

COMMAND_LINE = "manage.py"
# The management command in progress, set by `by_command()`: ("command:<OS user>", its contract.md name).
_command: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("audit_command", default=("", ""))


def command_actor() -> str:
    """Who runs the command, as far as the machine knows: "command:<OS user>"."""
    try:
        name = getpass.getuser()
    except Exception:  # no login name in the environment nor in the password database (a bare container)
        name = f"uid {os.getuid()}"
    return f"command:{name}"


@contextlib.contextmanager
def by_command(command: str):
    """One transaction for a command's changes and their audit entries. An entry recorded inside with no
    actor (a credit grant's, through accounts.signals, too) names the OS user ("command:alice") and, when it
    has no note of its own, the command as contract.md writes it ("quota set")."""
    token = _command.set((command_actor(), command))
    try:
        with transaction.atomic():
            yield
    finally:
        _command.reset(token)


def record(
    actor, action: str, target, *, before=None, after=None, note: str = "", via: str = ""
) -> AuditEntry:
    """`actor` is a user, or None: then `via` says how it was done ("oidc"), or else the command running
    under `by_command()` names its OS user."""
    if actor is not None:
        name = actor.get_username()
    else:
        command_user, command = _command.get()
        name = via or command_user or COMMAND_LINE
        note = note or command
    return AuditEntry.objects.create(
        actor=actor,
        actor_name=name,
        action=action,
        target=str(target)[:200],
        before=before,
        after=after,
        note=note[:500],
    )


def summary(before, after, width: int = 100) -> str:
    """One line for the log's list: each value that changed as "key: old → new", or each value an add or a
    delete recorded, cut to `width` characters."""

    def short(value) -> str:
        text = value if isinstance(value, str) else json.dumps(value)
        return text if len(text) <= 40 else text[:39] + "…"

    if isinstance(before, dict) and isinstance(after, dict):
        parts = [
            f"{key}: {short(before.get(key))} → {short(after.get(key))}"
            for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key)
        ]
    elif isinstance(after if after is not None else before, dict):
        parts = [f"{key}: {short(value)}" for key, value in (after if after is not None else before).items()]
    else:
        parts = [short(value) for value in (before, after) if value is not None]
    text = "; ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def snapshot(obj, hidden=()) -> dict:
    """The model's fields as JSON-safe values. A `hidden` field (an encrypted key) shows only whether it
    is set and a short fingerprint of the stored ciphertext, which changes when the key is replaced."""
    values = {}
    for field in obj._meta.concrete_fields:
        if field.primary_key:
            continue
        value = field.value_from_object(obj)
        if field.name in hidden:
            value = f"set ({hashlib.sha256(value.encode()).hexdigest()[:8]})" if value else "not set"
        elif not isinstance(value, (str, int, float, bool, type(None))):
            value = str(value)
        values[field.attname] = value
    return values


class AuditedAdmin:
    """Record each add, change and delete made through this ModelAdmin (list_editable rows included)."""

    audit_action = ""  # e.g. "quota": recorded as quota.add / quota.change / quota.delete
    audit_hidden: tuple[str, ...] = ()

    def audit_snapshot(self, obj) -> dict:
        return snapshot(obj, self.audit_hidden)

    def save_model(self, request, obj, form, change):
        before = None
        if change and obj.pk:
            stored = type(obj)._default_manager.filter(pk=obj.pk).first()
            before = self.audit_snapshot(stored) if stored is not None else None
        super().save_model(request, obj, form, change)
        after = self.audit_snapshot(obj)
        if before != after:
            verb = "change" if change else "add"
            record(request.user, f"{self.audit_action}.{verb}", obj, before=before, after=after)

    def delete_model(self, request, obj):
        before = self.audit_snapshot(obj)
        label = str(obj)
        super().delete_model(request, obj)
        record(request.user, f"{self.audit_action}.delete", label, before=before)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():  # the "delete selected" action runs outside the admin's transaction
            gone = [(str(obj), self.audit_snapshot(obj)) for obj in queryset]
            super().delete_queryset(request, queryset)
            for label, before in gone:
                record(request.user, f"{self.audit_action}.delete", label, before=before)


class ReadOnlyAdmin:
    """A log in the admin: listed and opened, never added to, changed or deleted."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
