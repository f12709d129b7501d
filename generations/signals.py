"""Every user has a credit account from the moment they exist, so an admin can grant credits to a member
created in the admin before their first login (issue 8, bug 12). A change to a provider account forgets
the studio's cached list of them. A django-q2 worker stops at once on SIGTERM or SIGINT (issue 10, bug 1)."""

from __future__ import annotations

import signal

from django.conf import settings
from django.core.cache import cache
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django_q.signals import post_execute_in_worker, post_spawn, pre_execute

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


SWEEP = "generations.tasks.sweep"


class WorkerStop:
    """A django-q2 worker process's state for a stop signal: whether one came, and the task running."""

    stopping = False
    task: str | None = None


def function_name(func) -> str:
    return (
        func
        if isinstance(func, str)
        else f"{getattr(func, '__module__', '')}.{getattr(func, '__name__', '')}"
    )


@receiver(post_spawn, dispatch_uid="fluxweb-worker-stop")
def stop_worker_on_signal(sender, proc_name: str, **kwargs) -> None:
    """django-q2's workers inherit its sentinel's handlers: SIGTERM killed them where they stood, SIGINT was
    ignored, and the cluster's graceful stop waited for every running and prefetched task (the sweeper keeps
    a worker up to 50 s). Now an idle worker, or one running the sweeper (which lets its lease go), leaves at
    once through SystemExit; a submit or download finishes first (bin/run's grace bounds it) and is acked,
    and no further task starts (a prefetched one stays in the broker, and the reaper covers its job). bin/run
    stops a cluster with SIGINT to its process group."""

    def stop(signum, frame):
        WorkerStop.stopping = True
        if WorkerStop.task in (None, SWEEP):
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


@receiver(pre_execute, dispatch_uid="fluxweb-worker-task-started")
def refuse_tasks_once_stopping(sender, func, task: dict, **kwargs) -> None:
    if WorkerStop.stopping:
        raise SystemExit(0)
    WorkerStop.task = function_name(func)


@receiver(post_execute_in_worker, dispatch_uid="fluxweb-worker-task-done")
def forget_the_task(sender, func, task: dict, **kwargs) -> None:
    WorkerStop.task = None


# Every log line a submit or ingest task writes carries its generation id (FLUXWEB_LOG_FORMAT=json).
pre_execute.connect(logs.task_started, dispatch_uid="fluxweb-log-generation")
