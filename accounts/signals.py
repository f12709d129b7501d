"""A profile for every new user (staff and superusers as admins, as the data migration maps existing ones),
and an audit entry for every credit grant or adjustment, whether from the admin, a command or an invitation."""

from __future__ import annotations

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from generations.models import CreditAccount, LedgerEntry

from .models import Profile, Role


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def give_a_profile(sender, instance, created: bool, raw: bool = False, **kwargs) -> None:
    if created and not raw:
        role = Role.ADMIN if instance.is_staff or instance.is_superuser else Role.MEMBER
        Profile.objects.get_or_create(user=instance, defaults={"role": role})


@receiver(post_save, sender=LedgerEntry)
def audit_money(sender, instance: LedgerEntry, created: bool, raw: bool = False, **kwargs) -> None:
    if not created or raw or instance.kind not in (LedgerEntry.Kind.GRANT, LedgerEntry.Kind.ADJUST):
        return
    from . import audit

    balance = CreditAccount.objects.filter(user=instance.user_id).values_list("balance", flat=True).first()
    balance = balance or 0
    audit.record(
        instance.admin,
        f"credits.{instance.kind}",
        instance.user.get_username(),
        before={"balance": balance - instance.amount},
        after={"balance": balance},
        note=instance.note,
    )
