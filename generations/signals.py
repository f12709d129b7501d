"""Every user has a credit account from the moment they exist, so an admin can grant credits to a member
created in the admin before their first login (issue 8, bug 12)."""

from __future__ import annotations

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from .models import CreditAccount


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="fluxweb-credit-account")
def open_credit_account(sender, instance, created: bool, raw: bool = False, **kwargs) -> None:
    if created and not raw:  # not while loading fixtures
        CreditAccount.objects.get_or_create(user=instance)
