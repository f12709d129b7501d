"""What a create would cost and whether it would be refused, without holding or counting anything: the
studio's live price. It runs the create's own choice of account and price (`catalog.choose_account`) and the
quota checks of `credits.hold_quotas` read-only, so the price shown is the hold and a refusal is known before
the button is pressed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q
from django.utils import timezone

from . import catalog, credits
from .models import Generation, ProviderAccount, Usage
from .providers import GenerationRequest
from .refusal import Refusal


@dataclass(frozen=True)
class Estimate:
    available: int
    account: ProviderAccount | None = None
    price: int | None = None
    problem: str = ""
    field: str | None = None

    @property
    def remaining(self) -> int | None:
        return None if self.price is None else self.available - self.price

    @property
    def shortfall(self) -> int:
        return max(0, -(self.remaining or 0))


def estimate(user, request: GenerationRequest, provider: str | None) -> Estimate:
    available = credits.account_for(user).available
    try:
        account, price = catalog.choose_account(request, provider or None)
    except Refusal as refusal:
        return Estimate(available, problem=refusal.message, field=refusal.field)
    refusal = quota_refusal(user, account, request.n, price.total, timezone.now())
    return Estimate(
        available,
        account=account,
        price=price.total,
        problem=refusal.message if refusal else "",
        field=refusal.field if refusal else None,
    )


def quota_refusal(user, account: ProviderAccount, n: int, amount: int, now: datetime) -> Refusal | None:
    """The refusal `credits.hold_quotas` would raise for this create now, in its words, or None."""
    limits = credits.limits_for(user)
    if limits["concurrent"] is not None:
        running = Generation.objects.filter(user=user, status__in=Generation.IN_FLIGHT).count()
        if running >= limits["concurrent"]:
            return credits.concurrent_refusal(running)
    usage = {
        (row.account_id, row.window): row
        for row in Usage.objects.filter(
            Q(user=user, account=None, window__in=[credits.day_window(now), credits.month_window(now)])
            | Q(user=None, account=account, window=credits.month_window(now))
        )
    }
    day = usage.get((None, credits.day_window(now)))
    used = day.images if day else 0
    if limits["daily_images"] is not None and used + n > limits["daily_images"]:
        return with_field(credits.daily_refusal(limits["daily_images"], used, now), "n")
    month = usage.get((None, credits.month_window(now)))
    spent = month.credits if month else 0
    if limits["monthly_credits"] is not None and spent + amount > limits["monthly_credits"]:
        return credits.monthly_refusal(limits["monthly_credits"], spent, amount, now)
    provider_month = usage.get((account.pk, credits.month_window(now)))
    if account.monthly_spend_cap is not None and (
        (provider_month.credits if provider_month else 0) + amount > account.monthly_spend_cap
    ):
        return with_field(credits.cap_refusal(account, now), "provider")
    return None


def with_field(refusal: Refusal, field: str) -> Refusal:
    """The studio shows these beside the field the user can change to get past them."""
    refusal.field = field
    return refusal
