"""Every user has a credit account from the moment they exist, so an admin can grant credits to a member
created in the admin before their first login (issue 8, bug 12). A change to a provider account forgets
the studio's cached list of them. A django-q2 worker stops at once on SIGTERM or SIGINT (issue 10, bug 1)."""

from __future__ import annotations

import signal

from django.conf import settings
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
    from .views import ACCOUNTS

    ACCOUNTS.forget()


class WorkerStop:
    """A django-q2 worker process told to stop (issue 10, bug 1): SIGINT (bin/run, systemd's KillSignal) or
    SIGTERM. django-q2's workers inherit its sentinel's handlers: SIGTERM killed them where they stood and
    SIGINT was ignored, so the cluster's stop waited for every running and prefetched task, the sweeper's
    50 s included. Now the sweeper ends at its next tick (it lets its lease go), a submit or download running
    finishes, every task fetched after the signal returns at once (tasks.py; the reaper re-drives its job),
    and the worker leaves on the cluster's STOP like any other. No worker exits early: one that did would
    leave the cluster's bounded task queue without its reader, and the cluster's stop waiting for good to
    queue STOP behind the tasks left in it."""

    stopping = False


class InWorker:
    """Set in a django-q2 worker process: a task there may carry the sweep on (sweeper.take_over)."""

    active = False


@receiver(post_spawn, dispatch_uid="fluxweb-in-worker")
def mark_worker(sender, proc_name: str, **kwargs) -> None:
    InWorker.active = True


@receiver(post_spawn, dispatch_uid="fluxweb-worker-stop")
def stop_worker_on_signal(sender, proc_name: str, **kwargs) -> None:
    def stop(signum, frame):
        WorkerStop.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


# Every log line a submit or ingest task writes carries its generation id (FLUXWEB_LOG_FORMAT=json).
pre_execute.connect(logs.task_started, dispatch_uid="fluxweb-log-generation")
