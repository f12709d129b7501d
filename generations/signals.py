"""Every user has a credit account from the moment they exist, so an admin can grant credits to a member
created in the admin before their first login (issue 8, bug 12). A change to a provider account forgets
the studio's cached list of them. A django-q2 worker stops at once on SIGTERM or SIGINT (issue 10, bug 1)."""

from __future__ import annotations

import signal

from django.conf import settings
from django.core.cache import cache
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django_q.signals import post_spawn, pre_execute

from fluxweb import logs

from .models import CreditAccount, ProviderAccount


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="fluxweb-credit-account")
def open_credit_account(sender, instance, created: bool, raw: bool = False, **kwargs) -> None:
    if created and not raw:  # not while loading fixtures
        CreditAccount.objects.get_or_create(user=instance)


@receiver(post_save, sender=ProviderAccount, dispatch_uid="fluxweb-studio-accounts-save")
@receiver(post_delete, sender=ProviderAccount, dispatch_uid="fluxweb-studio-accounts-delete")
def forget_accounts(sender, **kwargs) -> None:
    from .views import ACCOUNTS_KEY

    cache.delete(ACCOUNTS_KEY)


@receiver(post_spawn, dispatch_uid="fluxweb-worker-stop")
def stop_worker_on_signal(sender, proc_name: str, **kwargs) -> None:
    """django-q2's workers inherit its sentinel's handlers: SIGTERM kills them where they stand, SIGINT is
    ignored, and the cluster's graceful stop waits for each running task (the sweeper keeps a worker up to
    50 s). SystemExit instead unwinds the task: a transaction rolls back, the sweeper lets its lease go, and
    the reaper picks up any job the worker held. bin/run stops a cluster with SIGINT to its process group."""

    def exit_now(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_now)
    signal.signal(signal.SIGINT, exit_now)


# Every log line a submit or ingest task writes carries its generation id (FLUXWEB_LOG_FORMAT=json).
pre_execute.connect(logs.task_started, dispatch_uid="fluxweb-log-generation")
