"""Every user has a credit account from the moment they exist, so an admin can grant credits to a member
created in the admin before their first login (issue 8, bug 12). A change to a provider account forgets
the studio's cached list of them."""

from __future__ import annotations

from django.conf import settings
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import CreditAccount, ProviderAccount


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="fluxweb-credit-account")
def open_credit_account(sender, instance, created: bool, raw: bool = False, **kwargs) -> None:
    if created and not raw:  # not while loading fixtures
        CreditAccount.objects.get_or_create(user=instance)


@receiver(post_save, sender=ProviderAccount, dispatch_uid="fluxweb-studio-accounts-save")
@receiver(post_delete, sender=ProviderAccount, dispatch_uid="fluxweb-studio-accounts-delete")
def forget_accounts(sender, **kwargs) -> None:
    from .views import ACCOUNTS

    ACCOUNTS.forget()
