"""The audit log: `record()` one admin action, and `AuditedAdmin`, a ModelAdmin mixin that records every
save and delete of its model with the values before and after."""

from __future__ import annotations

import hashlib

from .models import AuditEntry

COMMAND_LINE = "manage.py"


def record(
    actor, action: str, target, *, before=None, after=None, note: str = "", via: str = ""
) -> AuditEntry:
    """`actor` is a user, or None for the command line (then `via` names the command)."""
    if actor is not None:
        name = actor.get_username()
    else:
        name = via or COMMAND_LINE
    return AuditEntry.objects.create(
        actor=actor,
        actor_name=name,
        action=action,
        target=str(target)[:200],
        before=before,
        after=after,
        note=note[:500],
    )


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
        gone = [(str(obj), self.audit_snapshot(obj)) for obj in queryset]
        super().delete_queryset(request, queryset)
        for label, before in gone:
            record(request.user, f"{self.audit_action}.delete", label, before=before)
