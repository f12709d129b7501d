"""The money: prices, holds, settlement, refunds, quotas and the reconcile check.

Rules (architecture.md, reliability.md 2): integer credits; a create holds the full estimate or is refused;
success charges what was stored and releases the rest; anything else releases everything. Every movement
is an append-only ledger entry written in the same transaction as the balance row, which the database
keeps consistent with CHECK constraints. Callers run these inside `transaction.atomic()`; each function
locks the user's credit row first so concurrent money moves on PostgreSQL queue behind each other
(SQLite's IMMEDIATE transactions already serialize writers).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Greatest
from django.utils import timezone

from .models import CreditAccount, Generation, LedgerEntry, Price, ProviderAccount, Quota, Usage
from .providers import PROVIDERS, GenerationRequest
from .refusal import Refusal


def default_prices(kind: str, model: str) -> dict[str, int]:
    """The adapter's default prices for `model` (tier -> credits of $0.001, providers.md 8), or none."""
    adapter = PROVIDERS.get(kind)
    return dict(adapter.default_prices.get(model, {})) if adapter is not None else {}


# Every (kind, model) default, as the adapters declare them: what the data migration seeds.
DEFAULT_PRICES: dict[tuple[str, str], dict[str, int]] = {
    (kind, model): dict(tiers)
    for kind, cls in PROVIDERS.items()
    for model, tiers in cls.default_prices.items()
}


# -- prices ---------------------------------------------------------------------------------------------
def tier_for(megapixels: float) -> str:
    if megapixels <= 1.0 + 1e-9:
        return "1MP"
    if megapixels <= 2.0 + 1e-9:
        return "2MP"
    return "4MP"


def price_table(kind: str, model: str, at: datetime | None = None) -> dict[str, int]:
    """The prices in force for one provider kind and model: tier -> credits. Per tier the newest row whose
    date has passed wins; a tier no row names keeps its default, so a row for one tier cannot make the
    others unpriced (and every create at those sizes refused)."""
    at = at or timezone.now()
    table = default_prices(kind, model)
    for price in Price.objects.filter(kind=kind, model=model, effective_from__lte=at).order_by(
        "effective_from"
    ):
        table[price.tier] = price.credits
    return table


@dataclass(frozen=True)
class Quote:
    per_image: int
    references: int
    n: int

    @property
    def total(self) -> int:
        return self.per_image * self.n + self.references

    def for_images(self, stored: int) -> int:
        return self.per_image * stored + (self.references if stored else 0)


def billed_megapixels(request: GenerationRequest, kind: str | None = None) -> float:
    """The size the price is for, as the provider bills it (`Adapter.billed_megapixels`): the tier chosen for a
    ratio, the area of explicit pixels, the tier Apiframe sends them as, MaxAPI's double price past 1024 px."""
    adapter = PROVIDERS.get(kind or "")
    if adapter is not None and request.model in adapter.models:
        return adapter("", "").billed_megapixels(request)
    if request.width and request.height:
        return request.output_megapixels
    return request.megapixels or 1.0


def quote(kind: str, request: GenerationRequest, table=None) -> Quote:
    table = table if table is not None else price_table(kind, request.model)
    tier = tier_for(billed_megapixels(request, kind))
    if tier not in table:
        raise Refusal(
            "no_price", f"No price is set for {request.model} at {tier} on {kind}; ask an admin.", status=400
        )
    per_input_mp = table.get("input_mp", 0)
    references = sum(per_input_mp * max(1, math.ceil(mp - 1e-9)) for mp in request.reference_megapixels)
    return Quote(per_image=table[tier], references=references, n=request.n)


# -- accounts -------------------------------------------------------------------------------------------
def account_for(user, *, lock: bool = False) -> CreditAccount:
    """The user's credit row (locked with `lock`, inside a transaction), created on first use. Concurrent
    first requests race on the unique user id and the loser reads the winner's row, so a brand-new user
    is limited like any other (litellm#40095). One query when the row exists, as it nearly always does."""
    rows = CreditAccount.objects.select_for_update() if lock else CreditAccount.objects.all()
    account = rows.filter(user=user).first()
    if account is None:
        try:
            with transaction.atomic():
                CreditAccount.objects.create(user=user)
        except IntegrityError:
            pass  # a concurrent first request created it
        account = rows.get(user=user)
    return account


def grant(user, amount: int, *, admin=None, note: str = "") -> LedgerEntry:
    if amount <= 0:
        raise ValueError("A grant must be a positive number of credits.")
    with transaction.atomic():
        account = account_for(user, lock=True)
        CreditAccount.objects.filter(pk=account.pk).update(balance=F("balance") + amount)
        return LedgerEntry.objects.create(
            user=user, kind=LedgerEntry.Kind.GRANT, amount=amount, admin=admin, note=note
        )


def adjust(user, amount: int, *, admin, note: str) -> LedgerEntry:
    """An admin correction, up or down; it cannot take away credits that are held or already gone."""
    if not amount:
        raise ValueError("An adjustment must move some credits.")
    if not note.strip():
        raise ValueError("An adjustment needs a note saying why; the ledger keeps it.")
    with transaction.atomic():
        account = account_for(user, lock=True)
        if amount < 0 and account.available < -amount:
            raise ValueError(f"{user} has only {account.available} credits available to take away.")
        CreditAccount.objects.filter(pk=account.pk).update(balance=F("balance") + amount)
        return LedgerEntry.objects.create(
            user=user, kind=LedgerEntry.Kind.ADJUST, amount=amount, admin=admin, note=note
        )


# -- quotas ---------------------------------------------------------------------------------------------
def day_window(now: datetime) -> str:
    return now.strftime("%Y-%m-%d")


def month_window(now: datetime) -> str:
    return now.strftime("%Y-%m")


def next_day(now: datetime) -> datetime:
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def next_month(now: datetime) -> datetime:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)


def limits_for(user) -> dict[str, int | None]:
    rows = {q.user_id: q for q in Quota.objects.filter(Q(user=None) | Q(user=user))}
    team, own = rows.get(None), rows.get(user.pk)
    result = {}
    for name in ("concurrent", "daily_images", "monthly_credits"):
        value = getattr(own, name, None) if own else None
        result[name] = value if value is not None else (getattr(team, name, None) if team else None)
    return result


def usage_row(*, user=None, account=None, window: str) -> Usage:
    """A window's counters, created on first use; like `account_for`, a concurrent first use reads the
    winner's row."""
    row = Usage.objects.filter(user=user, account=account, window=window).first()
    if row is None:
        try:
            with transaction.atomic():
                row = Usage.objects.create(user=user, account=account, window=window)
        except IntegrityError:
            row = Usage.objects.get(user=user, account=account, window=window)
    return row


def count_usage(
    *,
    user=None,
    account=None,
    window: str,
    images: int = 0,
    credits: int = 0,
    image_limit=None,
    credit_limit=None,
) -> bool:
    """Add to a window's counters only if that keeps them within the limits: one conditional UPDATE, and
    the window's row made on its first use. False when a limit refuses; `usage_row` then reads the counts."""
    key = {"user": user, "account": account, "window": window}

    def add() -> bool:
        rows = Usage.objects.filter(**key)
        if image_limit is not None:
            rows = rows.filter(images__lte=image_limit - images)
        if credit_limit is not None:
            rows = rows.filter(credits__lte=credit_limit - credits)
        return rows.update(images=F("images") + images, credits=F("credits") + credits) == 1

    if add():
        return True
    if Usage.objects.filter(**key).exists():
        return False  # the row is there: a limit refused
    usage_row(**key)
    return add()


def until(moment: datetime, now: datetime) -> int:
    return max(1, int((moment - now).total_seconds()))


def concurrent_refusal(running: int) -> Refusal:
    return Refusal(
        "quota_concurrent",
        f"You already have {running} generations in flight, your limit; "
        "a new one can start when one of them finishes.",
        status=429,
        retry_after=5,
    )


def daily_refusal(limit: int, used: int, now: datetime) -> Refusal:
    resets = next_day(now)
    return Refusal(
        "quota_daily_images",
        f"Your limit is {limit} images a day and {used} are used; it resets at {resets:%Y-%m-%d %H:%M} UTC.",
        status=429,
        retry_after=until(resets, now),
    )


def monthly_refusal(limit: int, spent: int, amount: int, now: datetime) -> Refusal:
    resets = next_month(now)
    return Refusal(
        "quota_monthly_credits",
        f"Your limit is {limit} credits a month and {spent} are spent or held; "
        f"this needs {amount}. It resets on {resets:%Y-%m-%d} UTC.",
        status=429,
        retry_after=until(resets, now),
    )


def cap_refusal(account: ProviderAccount, now: datetime) -> Refusal:
    resets = next_month(now)
    return Refusal(
        "quota_provider_cap",
        f"The {account.slug} provider account has reached its monthly spend cap of "
        f"{account.monthly_spend_cap} credits; it resets on {resets:%Y-%m-%d} UTC. Try another provider.",
        status=429,
        retry_after=until(resets, now),
    )


def hold_quotas(user, account: ProviderAccount, n: int, amount: int, now: datetime) -> None:
    """Check and count every quota for a new generation. Call inside the create transaction, after the
    user's credit row is locked. (`estimate.quota_refusal` asks the same questions without counting.)"""
    limits = limits_for(user)
    if limits["concurrent"] is not None:
        running = Generation.objects.filter(user=user, status__in=Generation.IN_FLIGHT).count()
        if running >= limits["concurrent"]:
            raise concurrent_refusal(running)
    day, month = day_window(now), month_window(now)
    if not count_usage(user=user, window=day, images=n, image_limit=limits["daily_images"]):
        raise daily_refusal(limits["daily_images"], usage_row(user=user, window=day).images, now)
    if not count_usage(user=user, window=month, credits=amount, credit_limit=limits["monthly_credits"]):
        spent = usage_row(user=user, window=month).credits
        raise monthly_refusal(limits["monthly_credits"], spent, amount, now)
    # Counted with or without a cap: refunds give spend back to this row, so a cap set mid-month must
    # find every hold in it (otherwise an older job's refund takes a newer one's spend off, or below 0).
    if not count_usage(account=account, window=month, credits=amount, credit_limit=account.monthly_spend_cap):
        raise cap_refusal(account, now)


def release_usage(generation: Generation, *, images: int, credits: int) -> None:
    """Give back the part of a generation's counted usage that was not delivered, in the windows it was
    counted in (engine.create stamps `created_at` with the moment it counted). Counters stop at zero: a
    usage row must never be able to make a refund fail."""
    if not (images or credits):
        return
    when = generation.created_at
    Usage.objects.filter(user=generation.user_id, account=None, window=day_window(when)).update(
        images=Greatest(F("images") - images, 0)
    )
    Usage.objects.filter(user=generation.user_id, account=None, window=month_window(when)).update(
        credits=Greatest(F("credits") - credits, 0)
    )
    Usage.objects.filter(account=generation.account_id, user=None, window=month_window(when)).update(
        credits=Greatest(F("credits") - credits, 0)
    )


# -- the hold and its end ---------------------------------------------------------------------------------
def reserve(generation: Generation, amount: int, account: CreditAccount) -> None:
    """Hold `amount` of the (locked) account for `generation`, or refuse with the shortfall."""
    from accounts.access import VIEWER_REFUSAL, may_spend

    if not may_spend(generation.user):  # the views and the API refuse first; this is the last line
        raise Refusal("forbidden", VIEWER_REFUSAL, status=403)
    held = CreditAccount.objects.filter(pk=account.pk, balance__gte=F("reserved") + amount).update(
        reserved=F("reserved") + amount
    )
    if not held:
        account.refresh_from_db()
        shortfall = amount - account.available
        raise Refusal(
            "insufficient_credits",
            f"This costs {amount} credits and you have {account.available} available; "
            f"you are {shortfall} short. Ask an admin for more credits.",
            status=402,
        )
    LedgerEntry.objects.create(
        user_id=generation.user_id, kind=LedgerEntry.Kind.RESERVE, amount=amount, generation=generation
    )


def rehold(generation: Generation, account: ProviderAccount, amount: int, *, note: str = "") -> None:
    """Move a queued generation's hold to `amount` on `account` (a failover), or refuse: inside the
    caller's transaction, which then moves the job. The difference is one signed `rehold` entry; the
    account's monthly spend moves with the job (the new account's cap applies), and the user's monthly
    credits count the difference."""
    with transaction.atomic():
        credit_account = account_for(generation.user, lock=True)
        row = (
            Generation.objects.select_for_update()
            .filter(pk=generation.pk, status=Generation.Status.QUEUED)
            .values("credits_reserved", "account_id", "created_at")
            .first()
        )
        if row is None:
            raise Refusal("not_queued", f"Generation {generation.pk} is no longer queued.", status=409)
        held, window = row["credits_reserved"], month_window(row["created_at"])
        difference = amount - held
        if not count_usage(
            account=account, window=window, credits=amount, credit_limit=account.monthly_spend_cap
        ):
            raise cap_refusal(account, row["created_at"])
        Usage.objects.filter(account=row["account_id"], user=None, window=window).update(
            credits=Greatest(F("credits") - held, 0)
        )
        month = usage_row(user=generation.user, window=window)
        if difference > 0:
            limit = limits_for(generation.user)["monthly_credits"]
            if not count_usage(user=generation.user, window=window, credits=difference, credit_limit=limit):
                raise monthly_refusal(limit, month.credits, difference, row["created_at"])
            if not CreditAccount.objects.filter(
                pk=credit_account.pk, balance__gte=F("reserved") + difference
            ).update(reserved=F("reserved") + difference):
                raise Refusal("insufficient_credits", "Not enough credits for the other account.", status=402)
        elif difference < 0:
            Usage.objects.filter(pk=month.pk).update(credits=Greatest(F("credits") + difference, 0))
            CreditAccount.objects.filter(pk=credit_account.pk).update(reserved=F("reserved") + difference)
        if difference:
            LedgerEntry.objects.create(
                user_id=generation.user_id,
                kind=LedgerEntry.Kind.REHOLD,
                amount=difference,
                generation=generation,
                note=note[:500],
            )


def settle(generation: Generation, charge: int, *, images: int = 0, note: str = "") -> bool:
    """End a generation's hold: charge `charge` (at most the hold) and release the rest. Runs once per
    generation whatever calls it, however often; returns whether this call did the work."""
    with transaction.atomic():
        account = account_for(generation.user, lock=True)
        if LedgerEntry.objects.filter(generation=generation, kind__in=["settle", "refund"]).exists():
            return False
        # The hold ends with the job: callers make the terminal transition first, in this transaction.
        # Ending it while the job is in flight would leave a queued job holding nothing.
        status, held = (
            Generation.objects.filter(pk=generation.pk).values_list("status", "credits_reserved").get()
        )
        if status not in Generation.TERMINAL:
            raise ValueError(f"Generation {generation.pk} is still {status}; its hold ends when it does.")
        # The hold as stored now: a failover may have moved it since this instance was read.
        generation.credits_reserved = held
        charge = max(0, min(charge, held))
        released = held - charge
        CreditAccount.objects.filter(pk=account.pk).update(
            balance=F("balance") - charge, reserved=F("reserved") - held
        )
        if charge:
            LedgerEntry.objects.create(
                user_id=generation.user_id,
                kind=LedgerEntry.Kind.SETTLE,
                amount=charge,
                generation=generation,
                note=note,
            )
        if released or not charge:
            LedgerEntry.objects.create(
                user_id=generation.user_id,
                kind=LedgerEntry.Kind.REFUND,
                amount=released,
                generation=generation,
                note=note,
            )
        Generation.objects.filter(pk=generation.pk).update(credits_charged=charge, credits_refunded=released)
        release_usage(generation, images=max(0, generation.n - images), credits=released)
        generation.credits_charged, generation.credits_refunded = charge, released
        return True


def refund(generation: Generation, note: str = "") -> bool:
    return settle(generation, 0, note=note)


# -- audit ------------------------------------------------------------------------------------------------
def reconcile() -> list[str]:
    """Every way the balances disagree with the ledger; empty when the books are clean. Three plain
    queries (ledger sums per user, generation and kind; the generations; the accounts) compared here."""
    problems = []
    per_user: dict[int, Counter] = defaultdict(Counter)
    per_job: dict[int, Counter] = defaultdict(Counter)
    for user_id, generation_id, kind, total in (
        LedgerEntry.objects.order_by().values_list("user_id", "generation_id", "kind").annotate(Sum("amount"))
    ):
        per_user[user_id][kind] += total
        if generation_id is not None:
            per_job[generation_id][kind] = total  # one entry per kind and generation (a unique constraint)
    open_holds: Counter = Counter()
    jobs = Generation.objects.order_by("pk").values_list(
        "pk", "user_id", "status", "credits_reserved", "credits_charged", "credits_refunded"
    )
    for pk, user_id, status, reserved, charged, refunded in jobs:
        ledger = per_job.get(pk, Counter())
        ends = ledger.keys() & {"settle", "refund"}
        hold = ledger["reserve"] + ledger["rehold"]  # a failover's rehold moves the hold up or down
        if status in Generation.IN_FLIGHT:
            open_holds[user_id] += hold
        if not reserved and not ledger:
            continue  # made without money (`seed_images`): nothing held, nothing to settle
        if hold != reserved:
            problems.append(f"generation {pk}: holds {reserved} but the ledger reserved {hold}")
        elif status in Generation.IN_FLIGHT:
            if ends:
                problems.append(f"generation {pk}: {status} but its hold has ended")
        elif not ends or ledger["settle"] + ledger["refund"] != reserved:
            problems.append(
                f"generation {pk}: settled {ledger['settle'] + ledger['refund']} of a {reserved} hold"
            )
        elif (charged, refunded) != (ledger["settle"], ledger["refund"]):
            problems.append(
                f"generation {pk}: charged {charged} and refunded {refunded} "
                f"but the ledger says {ledger['settle']} and {ledger['refund']}"
            )
    accounts = CreditAccount.objects.values_list("user_id", "user__username", "balance", "reserved")
    for user_id, username, balance, reserved in accounts:
        kinds = per_user.pop(user_id, Counter())
        owned = kinds["grant"] + kinds["adjust"] - kinds["settle"]
        held = kinds["reserve"] + kinds["rehold"] - kinds["settle"] - kinds["refund"]
        if balance != owned:
            problems.append(f"{username}: balance {balance} but the ledger says {owned}")
        if reserved != held:
            problems.append(f"{username}: reserved {reserved} but the ledger says {held}")
        if reserved != open_holds[user_id]:
            problems.append(
                f"{username}: reserved {reserved} but in-flight holds add up to {open_holds[user_id]}"
            )
    for user_id in per_user:
        problems.append(f"user {user_id}: has ledger entries but no credit account")
    return problems + overdue_holds() + unpaid_images()


# A job may still be finishing its download this long after its deadline (engine.INGEST_GRACE_SECONDS plus a
# lease and a reaper period); past it, a job still in flight holds credits nothing will release.
OVERDUE_AFTER = timedelta(minutes=5)


def overdue_holds(now: datetime | None = None) -> list[str]:
    """In-flight jobs still holding credits well past their deadline: something failed to end them."""
    now = now or timezone.now()
    return [
        f"generation {pk}: {status} {int((now - deadline).total_seconds())} s past its deadline, "
        f"holding {reserved} credits"
        for pk, status, deadline, reserved in Generation.objects.in_flight()
        .filter(deadline_at__lt=now - OVERDUE_AFTER)
        .order_by("pk")
        .values_list("pk", "status", "deadline_at", "credits_reserved")
    ]


def unpaid_images() -> list[str]:
    """Images kept on jobs that were not charged for them: a job that did not succeed, that charged
    nothing, or that keeps more images than it was made for."""
    from .models import Image

    problems = []
    rows = (
        Image.objects.order_by()
        .values(
            "generation_id",
            "generation__status",
            "generation__n",
            "generation__credits_charged",
            "generation__credits_reserved",
        )
        .annotate(count=Count("id"))
        .order_by("generation_id")
    )
    for row in rows:
        pk, status, count = row["generation_id"], row["generation__status"], row["count"]
        if status != Generation.Status.SUCCEEDED:
            problems.append(f"generation {pk}: {status} but keeps {count} image(s)")
        elif row["generation__credits_charged"] == 0 < row["generation__credits_reserved"]:
            problems.append(f"generation {pk}: keeps {count} image(s) but charged nothing")
        elif count > row["generation__n"]:
            problems.append(f"generation {pk}: keeps {count} image(s) of {row['generation__n']}")
    return problems
