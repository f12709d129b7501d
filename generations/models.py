"""FluxWeb's data: prompts, generations and their images, provider accounts, credits, quotas, tokens.

State changes are verbs on the models; every status change is one conditional UPDATE that checks its row
count, so a worker, a webhook and a poll can race and exactly one wins.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import OperationalError, connections, models, transaction
from django.db.models import F, Min, Q, Subquery, Sum
from django.db.models.functions import Coalesce, Lower
from django.utils import timezone

from . import crypto, search
from .providers import PROVIDERS, Adapter, kind_choices

RECENT = ("-last_used_at", "-pk")  # the prompt history's order, newest use first


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class KeysetQuerySet(models.QuerySet):
    _prompt_search = None  # set by search.by_prompt; any filter after it clears it
    _by_time = False  # set by by_time(): pages follow (created_at, id) instead of id alone; filters keep it

    def _clone(self):
        clone = super()._clone()
        clone._prompt_search = self._prompt_search
        clone._by_time = self._by_time
        return clone

    def _filter_or_exclude(self, negate, args, kwargs):
        # A filter after a search (a member, a model, a date) is not part of the search's fast page path.
        clone = super()._filter_or_exclude(negate, args, kwargs)
        clone._prompt_search = None
        return clone

    def by_time(self):
        """Pages of this QuerySet newest first by (created_at, id), the cursor still an id: for a filter on
        `created_at` (a date range), whose rows an id walk reaches only after every newer row (half of the
        table for "half a year ago"), while a (-created_at, -id) index starts inside the range."""
        clone = self._chain()
        clone._by_time = True
        return clone

    @property
    def keyset(self) -> tuple[str, ...]:
        """The order of this QuerySet's pages, newest first."""
        return ("-created_at", "-pk") if self._by_time else ("-pk",)

    def moment_of(self, pk) -> Subquery:
        return Subquery(self.model._base_manager.using(self.db).filter(pk=pk).values("created_at")[:1])

    def older_than(self, pk, moment=None):
        """The rows after the row `pk` in page order. By time, `moment` is that row's created_at (read in
        the same query unless given, e.g. an OuterRef); `created_at <= moment` bounds the index range and
        the OR breaks ties by id. The bound goes first in the WHERE clause: SQLite ranges over the first
        upper bound of a column it meets, and a date range's own "to" would make every page below the
        cursor walk down from the range's end."""
        if not self._by_time:
            return self.filter(pk__lt=pk)
        moment = self.moment_of(pk) if moment is None else moment
        bound = self.model._default_manager.using(self.db).filter(created_at__lte=moment)
        return bound.filter(Q(created_at__lt=moment) | Q(pk__lt=pk)) & self

    def newer_than(self, pk, moment=None):
        """The rows before the row `pk` in page order (older_than's mirror, its bound first likewise)."""
        if not self._by_time:
            return self.filter(pk__gt=pk)
        moment = self.moment_of(pk) if moment is None else moment
        bound = self.model._default_manager.using(self.db).filter(created_at__gte=moment)
        return bound.filter(Q(created_at__gt=moment) | Q(pk__gt=pk)) & self

    @property
    def oldest_first(self) -> tuple[str, ...]:
        return tuple(field[1:] for field in self.keyset)

    def newest(self, size: int, before: int | None = None):
        """The `size` newest rows (after the row `before` in page order: `keyset`) as one query: their ids
        are picked from the filtered table alone, then those rows are loaded with this QuerySet's joins. When a filter matches much of the
        table (a common search word), SQLite sorts the matching ids instead of every matching row joined to
        its user, prompt and account (the API page for ?q=in at 100,000: 239 ms -> 23 ms). Slice for a
        page only where the filter is an index's prefix; call this anywhere."""
        rows = self if before is None else self.older_than(before)
        ids = rows.order_by(*self.keyset).values("pk")[:size]
        if self._prompt_search is not None and not self._by_time and connections[self.db].vendor == "sqlite":
            ids = search.recent_first(self, size, before)
        page = self.model._default_manager.filter(pk__in=ids).order_by(*self.keyset)
        page.query.select_related = self.query.select_related
        page.query.deferred_loading = self.query.deferred_loading
        page._prefetch_related_lookups = self._prefetch_related_lookups
        return page


class PromptQuerySet(models.QuerySet):
    _prompt_search = None  # set by search.prompts on SQLite; any filter after it clears it

    def _clone(self):
        clone = super()._clone()
        clone._prompt_search = self._prompt_search
        return clone

    def _filter_or_exclude(self, negate, args, kwargs):
        clone = super()._filter_or_exclude(negate, args, kwargs)
        clone._prompt_search = None
        return clone

    def below(self, before: tuple | None):
        """The rows after the `(last_used_at, id)` cursor `before` in the history's order (all: None)."""
        if before is None:
            return self
        moment, pk = before
        return self.filter(last_used_at__lte=moment).filter(Q(last_used_at__lt=moment) | Q(pk__lt=pk))

    def recent(self, size: int, before: tuple | None = None):
        """The `size` most recently used prompts of this QuerySet, below the `(last_used_at, id)` cursor
        `before`, newest use first, as a QuerySet over just their ids: what is annotated onto it (the
        history's newest image and who used it) runs for the page only, not for every match of a search
        (SQLite computes a row's subqueries before it sorts). A search on SQLite first walks the most
        recently used prompts in order (search.recent_prompts): sorting every match of a common word grew
        with the history (?q=in at 100,000 images: 7.2 ms for the ids, 2.1 ms walking)."""
        ids = self.below(before).order_by(*RECENT).values("pk")[:size]
        if self._prompt_search is not None:
            ids = search.recent_prompts(self, size, before)
        return self.model._default_manager.filter(pk__in=ids).order_by(*RECENT)

    def search(self, text: str):
        """Prompts holding every word of `text` in any order, the last one as a prefix (full-text: FTS5 on
        SQLite, a GIN-indexed tsvector on PostgreSQL; see search.py)."""
        return search.prompts(self, text)


class Prompt(models.Model):
    """The team's shared prompt history: one row per distinct text, however often it is used."""

    text = models.TextField()
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(default=timezone.now, db_index=True)
    uses = models.PositiveIntegerField(default=0)

    objects = PromptQuerySet.as_manager()

    # The full-text indexes are made by migration 0006 for the database in use (search.py): an FTS5 table
    # kept by triggers on SQLite, a GIN index on to_tsvector('simple', text) on PostgreSQL.
    class Meta:
        ordering = ["-last_used_at"]
        # The prompt history's keyset: newest use first, id breaking ties.
        indexes = [models.Index(fields=["-last_used_at", "-id"], name="prompt_recent")]

    def __str__(self) -> str:
        return self.text[:80]

    @classmethod
    def remember(cls, text: str, user) -> Prompt:
        text = text.strip()
        prompt, _ = cls.objects.get_or_create(
            digest=digest(text), defaults={"text": text, "created_by": user}
        )
        cls.objects.filter(pk=prompt.pk).update(uses=F("uses") + 1, last_used_at=timezone.now())
        return prompt


class ProviderAccount(models.Model):
    slug = models.SlugField(unique=True)
    kind = models.CharField(max_length=20, choices=kind_choices)  # the adapters' kinds (providers/__init__)
    base_url = models.URLField(max_length=500)
    api_key_encrypted = models.TextField(blank=True, editable=False)
    key_last4 = models.CharField(max_length=4, blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    priority = models.IntegerField(default=100, help_text="Lower goes first when FluxWeb chooses a provider.")
    monthly_spend_cap = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Credits this account may be charged per calendar month; empty: no cap.",
    )
    max_rpm = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="The most requests per minute FluxWeb sends this account (submits, polls and checks "
        "together); empty: the default for its kind.",
    )
    result_hosts = models.CharField(
        max_length=1000,
        blank=True,
        help_text="Extra hosts its result files may be downloaded from, comma-separated (HTTPS, port 443).",
    )
    # Health, written by the engine: a 429's pause, the circuit breaker, recent latency and error rate.
    paused_until = models.DateTimeField(null=True, blank=True, editable=False)
    breaker_failures = models.PositiveSmallIntegerField(default=0, editable=False)
    breaker_open_until = models.DateTimeField(null=True, blank=True, editable=False)
    latency_ms = models.FloatField(null=True, blank=True, editable=False)
    error_rate = models.FloatField(default=0.0, editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    # The request budget counts the requests granted in the last BUDGET_WINDOW seconds: the provider's
    # minute plus a second, because a granted request is sent a moment after the grant.
    BUDGET_WINDOW = 61.0
    # Consecutive failed calls that open the breaker, and how long it stays open before one trial call.
    BREAKER_THRESHOLD = 5
    BREAKER_COOLDOWN = 30.0

    class Meta:
        ordering = ["priority", "slug"]

    def __str__(self) -> str:
        return self.slug

    # -- the request budget (issue 9.3) ---------------------------------------------------------------------
    @property
    def budget(self) -> int:
        """Requests per minute: the account's own `max_rpm`, else its kind's default."""
        return self.max_rpm or default_max_rpm(self.kind)

    def budget_spent(self, now=None) -> int:
        since = (now or timezone.now()) - timedelta(seconds=self.BUDGET_WINDOW)
        return BudgetSpend.objects.filter(account=self, at__gt=since).aggregate(n=Sum("count"))["n"] or 0

    def budget_room(self, now=None) -> int:
        """How many requests the budget would grant now (0 while a 429's pause lasts)."""
        now = now or timezone.now()
        if self.paused_until and self.paused_until > now:
            return 0
        return max(0, self.budget - self.budget_spent(now))

    def take_requests(self, wanted: int, *, keep: int = 0, now=None) -> int:
        """Grant up to `wanted` requests from this account's budget, leaving `keep` for others (the queued
        submits), and record the grant; returns how many were granted (0 while the account is paused).
        The account row is locked while counting, so processes and clusters share one budget."""
        now = now or timezone.now()
        if wanted <= 0:
            return 0
        with transaction.atomic():
            row = (
                ProviderAccount.objects.select_for_update()
                .filter(pk=self.pk)
                .values("max_rpm", "kind", "paused_until")
                .first()
            )
            if row is None or (row["paused_until"] and row["paused_until"] > now):
                return 0
            self.max_rpm = row["max_rpm"]
            granted = min(wanted, self.budget - keep - self.budget_spent(now))
            if granted <= 0:
                return 0
            BudgetSpend.objects.create(account=self, at=now, count=granted)
            BudgetSpend.objects.filter(
                account=self, at__lte=now - timedelta(seconds=self.BUDGET_WINDOW)
            ).delete()
        return granted

    def budget_free_at(self, now=None, *, spent: bool = False):
        """When the next request may go: the end of a 429's pause, else when the oldest grant in the window
        leaves it (now if the budget has room, unless the caller is about to spend that room: `spent`)."""
        now = now or timezone.now()
        self.refresh_from_db(fields=["paused_until", "max_rpm"])
        if self.paused_until and self.paused_until > now:
            return self.paused_until
        if not spent and self.budget_spent(now) < self.budget:
            return now
        oldest = (
            BudgetSpend.objects.filter(account=self, at__gt=now - timedelta(seconds=self.BUDGET_WINDOW))
            .order_by("at")
            .values_list("at", flat=True)
            .first()
        )
        return (oldest or now) + timedelta(seconds=self.BUDGET_WINDOW)

    def pause(self, seconds: float) -> None:
        """The provider said 429 with Retry-After: send this account nothing for that long."""
        until = timezone.now() + timedelta(seconds=max(0.0, seconds))
        ProviderAccount.objects.filter(pk=self.pk).filter(
            Q(paused_until__isnull=True) | Q(paused_until__lt=until)
        ).update(paused_until=until)

    # -- health: the circuit breaker, latency, error rate (issue 9.4) -----------------------------------
    def breaker_state(self, now=None) -> str:
        now = now or timezone.now()
        if self.breaker_open_until and self.breaker_open_until > now:
            return "open"
        if self.breaker_failures >= self.BREAKER_THRESHOLD:
            return "half-open"
        return "closed"

    def claim_trial(self, now=None) -> bool:
        """Whether a call may go to this account now: always while closed; while half-open, only the one
        caller that wins this conditional UPDATE (the others see it open for another cool-down)."""
        now = now or timezone.now()
        state = self.breaker_state(now)
        if state == "closed":
            return True
        if state == "open":
            return False
        return bool(
            ProviderAccount.objects.filter(
                Q(breaker_open_until__isnull=True) | Q(breaker_open_until__lte=now),
                pk=self.pk,
                breaker_failures__gte=self.BREAKER_THRESHOLD,
            ).update(breaker_open_until=now + timedelta(seconds=self.BREAKER_COOLDOWN))
        )

    def record_calls(self, *, ok: int = 0, failed: int = 0, seconds: float | None = None) -> None:
        """Fold a round of calls into the health columns: a success closes the breaker, failures in a row
        open it for BREAKER_COOLDOWN; latency and error rate are moving averages of recent rounds."""
        if not (ok or failed):
            return
        fields: dict = {"error_rate": F("error_rate") * 0.8 + 0.2 * failed / (ok + failed)}
        if seconds is not None:
            ms = seconds * 1000
            fields["latency_ms"] = Coalesce(F("latency_ms"), ms) * 0.8 + 0.2 * ms
        if ok:
            fields |= {"breaker_failures": 0, "breaker_open_until": None}
            ProviderAccount.objects.filter(pk=self.pk).update(**fields)
            return
        rows = ProviderAccount.objects.filter(pk=self.pk)
        rows.update(breaker_failures=F("breaker_failures") + failed, **fields)
        rows.filter(breaker_failures__gte=self.BREAKER_THRESHOLD).update(
            breaker_open_until=timezone.now() + timedelta(seconds=self.BREAKER_COOLDOWN)
        )

    @property
    def extra_result_hosts(self) -> tuple[str, ...]:
        return tuple(host for host in (h.strip().lower() for h in self.result_hosts.split(",")) if host)

    def allow_result_host(self, host: str) -> None:
        host = host.strip().lower()
        if host and host not in self.extra_result_hosts:
            self.result_hosts = ",".join((*self.extra_result_hosts, host))
            ProviderAccount.objects.filter(pk=self.pk).update(result_hosts=self.result_hosts)

    def clean(self) -> None:
        try:
            self.result_hosts = ",".join(parse_hosts(self.result_hosts))
        except ValueError as error:
            raise ValidationError({"result_hosts": str(error)}) from None

    @property
    def has_key(self) -> bool:
        return bool(self.api_key_encrypted)

    def set_api_key(self, key: str) -> None:
        self.api_key_encrypted = crypto.encrypt(key)
        # The last four characters as a hint, only where they are a small part of the key (issue 10, bug 2).
        self.key_last4 = key[-4:] if len(key) >= 12 else ""

    @property
    def api_key(self) -> str:
        return crypto.decrypt(self.api_key_encrypted) if self.api_key_encrypted else ""

    def adapter(self) -> Adapter:
        return PROVIDERS[self.kind](self.base_url, self.api_key)

    @property
    def adapter_class(self) -> type[Adapter]:
        return PROVIDERS[self.kind]


HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def parse_hosts(text: str) -> list[str]:
    """Host names from "a.example, b.example": lower-cased, each a bare DNS name (no scheme, port, path or
    address: a result host is matched by name and its addresses are still checked at download)."""
    hosts = []
    for raw in text.split(","):
        host = raw.strip().lower().rstrip(".")
        if not host:
            continue
        if not HOST_NAME.match(host) or host.replace(".", "").isdigit():
            raise ValueError(f"{raw.strip()!r} is not a host name (give names like cdn.example.com).")
        if host not in hosts:
            hosts.append(host)
    return hosts


# Requests per minute when neither the account nor its adapter names a budget (issue 9.3). PixelDojo
# documents 60/min [P7][P8]; Apiframe and Vtrix publish no number, only a poll every 2-5 s per job
# (providers.md 6), so 120/min keeps 6-10 jobs at that cadence; MaxAPI answers synchronously (submits only).
def default_max_rpm(kind: str) -> int:
    """The kind's request budget: its adapter's `default_max_rpm` (documented there, per provider), or the
    base adapter's for a kind no adapter serves any more."""
    adapter = PROVIDERS.get(kind)
    return (adapter or Adapter).default_max_rpm


class BudgetSpend(models.Model):
    """Requests granted from an account's budget at one moment: the sliding window's log, in the database
    so every process and cluster spends one budget."""

    account = models.ForeignKey(ProviderAccount, on_delete=models.CASCADE, related_name="+")
    at = models.DateTimeField()
    count = models.PositiveIntegerField()

    class Meta:
        indexes = [models.Index(fields=["account", "at"], name="budget_account_at")]

    def __str__(self) -> str:
        return f"{self.count} request(s) on account {self.account_id} at {self.at:%H:%M:%S}"


def unleased(now) -> Q:
    """No task holds the job: it never had a lease, or the lease ran out by `now`."""
    return Q(lease_until__isnull=True) | Q(lease_until__lte=now)


class GenerationQuerySet(KeysetQuerySet):
    def in_flight(self):
        return self.filter(status__in=Generation.IN_FLIGHT)

    def due(self, now=None):
        """Running jobs whose poll time has come, the longest-waiting first (the (status, next_poll_at)
        index gives them in that order): a sweeper that takes the first few hundred never starves the
        oldest (issue 9.5: newest first, by the model's ordering, left the oldest unpolled)."""
        return (
            self.filter(status=Generation.Status.RUNNING, next_poll_at__lte=now or timezone.now())
            .exclude(provider_job_id="")
            .order_by("next_poll_at", "pk")
        )

    def next_wake(self):
        """The earliest poll, retry or task-lease time among in-flight jobs: when the sweeper has work
        next, or None when nothing waits on it. One query."""
        times = self.in_flight().aggregate(poll=Min("next_poll_at"), lease=Min("lease_until"))
        known = [t for t in times.values() if t is not None]
        return min(known) if known else None

    def submits_due(self, now=None):
        """Queued jobs whose retry time has come or whose submit lease ran out: their submit goes again."""
        now = now or timezone.now()
        return self.filter(
            unleased(now),
            status=Generation.Status.QUEUED,
            next_poll_at__lte=now,
        ).order_by("next_poll_at", "pk")

    def past_deadline(self, now=None):
        """In-flight jobs past their deadline that no task holds."""
        now = now or timezone.now()
        return self.in_flight().filter(unleased(now), deadline_at__lte=now).order_by("deadline_at", "pk")

    def lost_submits(self, now, stale):
        """Queued jobs no task took since `stale` (queued or re-driven before it), nothing scheduled."""
        return self.filter(
            unleased(now),
            Q(redriven_at__lte=stale) | Q(redriven_at__isnull=True, created_at__lte=stale),
            status=Generation.Status.QUEUED,
            next_poll_at__isnull=True,
        ).order_by("pk")

    def downloading(self):
        """Finished at the provider, its download not done: waiting for an ingest task (not for an admin)."""
        return self.filter(
            status=Generation.Status.RUNNING,
            next_poll_at__isnull=True,
            provider_done_at__isnull=False,
            refused_host="",  # waiting for an admin: downloaded again only when one allows the host
        )

    def lost_ingests(self, now, stale):
        """Downloads whose task's lease ran out, or that no task took since `stale`."""
        return (
            self.downloading()
            .filter(
                Q(lease_until__lte=now)
                | Q(
                    Q(redriven_at__lte=stale) | Q(redriven_at__isnull=True, provider_done_at__lte=stale),
                    lease_until__isnull=True,
                )
            )
            .order_by("pk")
        )

    def unpolled(self):
        """Running, not polled, nothing downloading: only a crash between two writes leaves this."""
        return self.filter(
            status=Generation.Status.RUNNING, next_poll_at__isnull=True, provider_done_at__isnull=True
        ).exclude(provider_job_id="")

    def awaiting_submit(self, account, now=None):
        """`account`'s queued jobs whose submit may go now or is on its way (not yet sent): the request
        budget keeps their share before it spends any on polls."""
        now = now or timezone.now()
        return self.filter(
            Q(next_poll_at__isnull=True) | Q(next_poll_at__lte=now),
            unleased(now),
            account=account,
            status=Generation.Status.QUEUED,
        )

    def for_user(self, user):
        return self.filter(user=user)

    # -- claims: one conditional UPDATE each, True for the one caller that won ------------------------------
    def claim_submit(self, pk: int, lease_seconds: float) -> bool:
        """Take queued job `pk` for one submit when its turn has come and no live task holds it: count the
        attempt and lease the job (next_poll_at too, so the sweeper does not queue it again meanwhile)."""
        now = timezone.now()
        lease = now + timedelta(seconds=lease_seconds)
        return (
            self.filter(
                Q(next_poll_at__isnull=True) | Q(next_poll_at__lte=now),
                unleased(now),
                pk=pk,
                status=Generation.Status.QUEUED,
            ).update(attempts=F("attempts") + 1, next_poll_at=lease, lease_until=lease)
            == 1
        )

    def claim_ingest(self, pk: int, lease_seconds: float) -> bool:
        """Take job `pk`, which the provider finished, for one download when no live task holds it: count
        the attempt and lease the job."""
        now = timezone.now()
        return (
            self.filter(
                unleased(now),
                pk=pk,
                status=Generation.Status.RUNNING,
                next_poll_at__isnull=True,
                provider_done_at__isnull=False,
            ).update(
                lease_until=now + timedelta(seconds=lease_seconds), ingest_attempts=F("ingest_attempts") + 1
            )
            == 1
        )

    def search(self, text: str):
        """Generations whose prompt matches `text` (Prompt.objects.search)."""
        return search.by_prompt(self, text, "prompt")


class Generation(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELED = "canceled"

    IN_FLIGHT = (Status.QUEUED, Status.RUNNING)
    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generations")
    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="generations")
    model = models.CharField(max_length=40)
    account = models.ForeignKey(ProviderAccount, on_delete=models.PROTECT, related_name="generations")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    n = models.PositiveSmallIntegerField(default=1)
    params = models.JSONField(default=dict, help_text="The provider-neutral request, as validated.")
    seed = models.BigIntegerField(null=True, blank=True)

    provider_job_id = models.CharField(max_length=200, blank=True, db_index=True)
    poll_url = models.URLField(max_length=1000, blank=True)
    provider_cost = models.CharField(max_length=40, blank=True, help_text="As the provider reported it.")
    webhook_token = models.CharField(
        max_length=64, unique=True, default=secrets.token_urlsafe, editable=False
    )
    image_urls = models.JSONField(default=list, blank=True, help_text="Provider result URLs awaiting ingest.")
    comparison = models.CharField(
        max_length=32, blank=True, db_index=True, help_text='Shared by the jobs one "Compare providers" made.'
    )
    failover = models.BooleanField(
        default=False, help_text="Made without a named provider: a submit refused before acceptance moves on."
    )
    tried_accounts = models.JSONField(
        default=list, blank=True, help_text="Accounts that refused this job's submit, in order (ids)."
    )
    refused_host = models.CharField(
        max_length=255,
        blank=True,
        help_text="The provider finished, but its result host is not allowed: the job waits for an admin.",
    )

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True)
    next_poll_at = models.DateTimeField(null=True, blank=True)
    provider_done_at = models.DateTimeField(null=True, blank=True)
    progress = models.FloatField(null=True, blank=True)
    polls = models.PositiveIntegerField(default=0)
    paced = models.BooleanField(
        default=False,
        help_text="A poll of it waited for the request budget: when it was seen done says nothing of the "
        "provider's speed, so the poll cadence does not learn from it.",
    )
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Submit attempts, counted by us.")
    ingest_attempts = models.PositiveSmallIntegerField(
        default=0, help_text="Download attempts, counted by us."
    )
    poll_errors = models.PositiveSmallIntegerField(
        default=0, help_text="Provider replies in a row that could not be read."
    )
    lease_until = models.DateTimeField(
        null=True, blank=True, help_text="A task is working on this job (submit or download) until then."
    )
    redriven_at = models.DateTimeField(
        null=True, blank=True, help_text="When the reaper last re-sent this job's task."
    )

    credits_reserved = models.PositiveIntegerField(default=0)
    credits_charged = models.PositiveIntegerField(default=0)
    credits_refunded = models.PositiveIntegerField(default=0)

    error_code = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)

    idempotency_key = models.CharField(max_length=255, blank=True)
    request_digest = models.CharField(max_length=64, blank=True)

    objects = GenerationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="generation_idempotency",
            ),
            models.CheckConstraint(
                condition=Q(credits_charged__lte=F("credits_reserved")), name="generation_charged_within_hold"
            ),
        ]
        # Keyset pages (newest first) of each filter: the studio's own jobs, ?status=, ?mine=/?user=,
        # ?model=, ?provider= (issue 8: without them a filter sorts every matching row).
        indexes = [
            models.Index(fields=["status", "next_poll_at"]),
            models.Index(fields=["user", "-created_at", "-id"], name="generation_user_recent"),
            models.Index(fields=["status", "-id"], name="generation_status_id"),
            models.Index(fields=["user", "-id"], name="generation_user_id"),
            models.Index(fields=["model", "-id"], name="generation_model_id"),
            models.Index(fields=["account", "-id"], name="generation_account_id"),
            # A prompt's newest finished job (the history): without it SQLite walks (status, -id) per prompt.
            models.Index(fields=["prompt", "status", "-id"], name="generation_prompt_status_id"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.model} {self.status}"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def elapsed(self) -> float:
        end = self.finished_at or timezone.now()
        return (end - self.created_at).total_seconds()

    # -- transitions: one conditional UPDATE each ---------------------------------------------------------
    def transition(
        self,
        sources,
        target: str | None = None,
        *,
        event: str,
        detail: str = "",
        where: Q | None = None,
        **fields,
    ) -> bool:
        """Move from one of `sources` to `target` (or just write `fields` while in `sources`), where the row
        also matches `where`. Returns whether this caller won; the instance is refreshed either way."""
        if target:
            fields["status"] = target
        if target in self.TERMINAL:
            fields.setdefault("lease_until", None)
        rows = Generation.objects.filter(pk=self.pk, status__in=list(sources))
        won = (rows.filter(where) if where is not None else rows).update(**fields) == 1
        if won:
            self.events.create(what=event, detail=detail[:2000])
        self.refresh_from_db()
        return won

    def mark_submitted(self, job_id: str, poll_url: str, first_poll_in: float) -> bool:
        now = timezone.now()
        return self.transition(
            [self.Status.QUEUED],
            self.Status.RUNNING,
            event="submitted",
            detail=f"provider job {job_id}",
            provider_job_id=job_id,
            poll_url=poll_url or "",
            started_at=now,
            next_poll_at=now + timedelta(seconds=first_poll_in),
            lease_until=None,
        )

    def renew_submit_lease(self, attempt: int, seconds: float) -> bool:
        """The submit task of `attempt` is still at work: keep its job for `seconds` more."""
        renewed = timezone.now() + timedelta(seconds=seconds)
        return (
            Generation.objects.filter(pk=self.pk, status=self.Status.QUEUED, attempts=attempt).update(
                next_poll_at=renewed, lease_until=renewed
            )
            == 1
        )

    def postpone_submit(self, until) -> bool:
        """Put a claimed submit back, unsent and uncounted, until `until`."""
        return (
            Generation.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
                attempts=F("attempts") - 1, next_poll_at=until, lease_until=None
            )
            == 1
        )

    def schedule_submit_retry(self, code: str, message: str, at) -> bool:
        """A submit that failed transiently, to be sent again at `at`; the error stays on show meanwhile."""
        return (
            Generation.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
                error_code=code, error_message=message, next_poll_at=at, lease_until=None
            )
            == 1
        )

    def mark_generated(self, image_urls, cost: str, seed: int | None) -> bool:
        """A synchronous provider answered the submit with the images: running, with nothing left to poll."""
        now = timezone.now()
        return self.transition(
            [self.Status.QUEUED],
            self.Status.RUNNING,
            event="generated",
            started_at=now,
            provider_done_at=now,
            progress=1.0,
            next_poll_at=None,
            lease_until=None,
            image_urls=list(image_urls),
            provider_cost=cost or "",
            seed=seed,
        )

    def renew_ingest_lease(self, attempt: int, seconds: float) -> bool:
        """The ingest task of `attempt` is still downloading: keep its job for `seconds` more."""
        return (
            Generation.objects.filter(pk=self.pk, status=self.Status.RUNNING, ingest_attempts=attempt).update(
                lease_until=timezone.now() + timedelta(seconds=seconds)
            )
            == 1
        )

    def schedule_download_retry(self, code: str, seconds: float) -> bool:
        """A download that failed, perhaps by a passing fault: the reaper may claim it again in `seconds`."""
        return (
            Generation.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(
                lease_until=timezone.now() + timedelta(seconds=seconds), error_code=code
            )
            == 1
        )

    def mark_succeeded(self, detail: str) -> bool:
        """The images are stored: succeeded, if no other task has meanwhile ended the job or downloaded
        again (the caller records the images and settles in the same transaction, only when this won)."""
        return self.transition(
            [self.Status.RUNNING],
            self.Status.SUCCEEDED,
            event="succeeded",
            detail=detail,
            where=Q(ingest_attempts=self.ingest_attempts),
            finished_at=timezone.now(),
            error_code="",
        )

    def mark_host_allowed(self, host: str) -> bool:
        """An admin allowed the refused result host: the job that waited for it downloads afresh."""
        return self.transition(
            [self.Status.RUNNING],
            event="host allowed",
            detail=f"{host} allowed for {self.account.slug}; downloading again",
            where=Q(refused_host=host),
            refused_host="",
            lease_until=None,
            ingest_attempts=0,
            error_code="",
        )

    def mark_failed(self, code: str, message: str) -> bool:
        """Failed from any state in flight; the caller refunds in the same transaction, only when this won."""
        return self.transition(
            self.IN_FLIGHT,
            self.Status.FAILED,
            event="failed",
            detail=message,
            finished_at=timezone.now(),
            error_code=code,
            error_message=message,
            next_poll_at=None,
        )

    def mark_canceled(self, by) -> bool:
        """Canceled while the provider has not finished (once it has, it has billed: no cancel); the caller
        refunds in the same transaction, only when this won."""
        return self.transition(
            self.IN_FLIGHT,
            self.Status.CANCELED,
            event="canceled",
            detail=f"by {by}",
            where=Q(provider_done_at__isnull=True),
            finished_at=timezone.now(),
            next_poll_at=None,
        )

    def mark_moved(
        self, account: ProviderAccount, reserved: int, per_image: int, tried: list, detail: str
    ) -> bool:
        """A failover: the queued job goes to `account` at its price, to be submitted afresh."""
        return self.transition(
            [self.Status.QUEUED],
            event="failover",
            detail=detail,
            where=Q(account_id=self.account_id),
            account=account,
            credits_reserved=reserved,
            params=self.params | {"credits_per_image": per_image},
            tried_accounts=tried,
            attempts=0,
            error_code="",
            error_message="",
            next_poll_at=None,
            lease_until=None,
            redriven_at=timezone.now(),
        )

    def mark_waiting_for_admin(self, host: str) -> bool:
        """The provider finished (and charged), but its result host is not allowed: the job stays running,
        flagged for an admin, nothing downloading, until one allows the host or the deadline ends it."""
        return self.transition(
            [self.Status.RUNNING],
            event="waiting for an admin",
            detail=f"the result files are on {host}, which is not an allowed host of "
            f"{self.account.slug}; an admin may allow it and fetch again",
            where=Q(ingest_attempts=self.ingest_attempts),
            refused_host=host[:255],
            lease_until=None,
            error_code="result_host_refused",
        )

    def schedule_poll(self, seconds: float, **fields) -> None:
        """Count a poll and set the next one, with any other `fields` of the answer, in one UPDATE."""
        Generation.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(
            next_poll_at=timezone.now() + timedelta(seconds=seconds), polls=F("polls") + 1, **fields
        )


class GenerationEvent(models.Model):
    """The job's timeline: what happened and when, shown on its page."""

    generation = models.ForeignKey(Generation, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    what = models.CharField(max_length=40)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.at:%H:%M:%S} {self.what}"


def image_path(instance: Image, filename: str) -> str:
    return f"images/{instance.created_at:%Y/%m}/{filename}"


class ImageQuerySet(KeysetQuerySet):
    def visible(self):
        """Not soft-deleted."""
        return self.filter(deleted_at=None)

    def gallery(self):
        """What a gallery page shows, newest first, with what each card needs in the same query: a card reads
        `image.user`, `image.model`, `image.account` and `image.generation.prompt` (not `generation.user`)."""
        return self.visible().select_related("generation__prompt", "user", "account").order_by("-id")

    def of_status(self, status: str):
        """Images of jobs in `status`, without a join: only a job that succeeded keeps images (they are
        recorded in the transaction that charges for them; `credits reconcile` reports any other), so any
        other status has none. A join to the job's status made SQLite sort every image (370 ms at 100,000)."""
        return self if status == Generation.Status.SUCCEEDED else self.none()

    def search(self, text: str):
        """Images whose prompt matches `text` (Prompt.objects.search)."""
        return search.by_prompt(self, text, "prompt")

    def soft_delete(self, user) -> list[int]:
        """Soft-delete the visible images of this QuerySet that `user` made; returns their ids. One
        conditional UPDATE (only rows still visible, so a racing delete keeps its own who and when). Nobody
        deletes another member's images here (an admin restores or removes them in the admin)."""
        ids = list(self.visible().filter(user=user).values_list("pk", flat=True))
        if ids:
            self.model._default_manager.filter(pk__in=ids, user=user, deleted_at=None).update(
                deleted_at=timezone.now(), deleted_by=user
            )
        return ids


class Image(models.Model):
    generation = models.ForeignKey(Generation, on_delete=models.CASCADE, related_name="images")
    # Copied from the generation so that each gallery filter is one flat keyset over this table's indexes.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="images")
    model = models.CharField(max_length=40)
    account = models.ForeignKey(ProviderAccount, on_delete=models.PROTECT, related_name="images")
    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="images")
    index = models.PositiveSmallIntegerField(default=0)
    file = models.FileField(upload_to=image_path, max_length=300)
    thumbnail = models.FileField(upload_to=image_path, max_length=300)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    format = models.CharField(max_length=10)
    bytes = models.PositiveIntegerField()
    seed = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = ImageQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["generation", "index"], name="image_once_per_index")]
        indexes = [
            models.Index(fields=["user", "-id"], name="image_user_id"),
            models.Index(fields=["model", "-id"], name="image_model_id"),
            models.Index(fields=["account", "-id"], name="image_account_id"),
            models.Index(fields=["format", "-id"], name="image_format_id"),
            # A date range's keyset (ImageQuerySet.by_time): its pages start inside the range.
            models.Index(fields=["-created_at", "-id"], name="image_created_id"),
            # A date range with a member, model, provider or format: without these, SQLite and PostgreSQL
            # took the filter's (x, -id) index and sorted every match in the range (issue 8).
            models.Index(fields=["user", "-created_at", "-id"], name="image_user_created_id"),
            models.Index(fields=["model", "-created_at", "-id"], name="image_model_created_id"),
            models.Index(fields=["account", "-created_at", "-id"], name="image_account_created_id"),
            models.Index(fields=["format", "-created_at", "-id"], name="image_format_created_id"),
            # A search's page (newest): the matching visible images' ids straight from the index, no row reads.
            models.Index(fields=["prompt", "-id"], condition=Q(deleted_at=None), name="image_prompt_visible"),
        ]

    def __str__(self) -> str:
        return f"image {self.pk} of generation {self.generation_id}"

    def save(self, *args, **kwargs):
        # The copies follow the generation unless given (media.record and seed_images give them).
        if None in (self.user_id, self.account_id, self.prompt_id) or not self.model:
            generation = self.generation
            self.user_id = self.user_id or generation.user_id
            self.account_id = self.account_id or generation.account_id
            self.prompt_id = self.prompt_id or generation.prompt_id
            self.model = self.model or generation.model
        super().save(*args, **kwargs)

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def content_type(self) -> str:
        return {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}[self.format]


class Favorite(models.Model):
    """One person's favorite image."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="favorites")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="favorited_by")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        # (user, image) also serves "my favorites, newest image first" as a keyset.
        constraints = [models.UniqueConstraint(fields=["user", "image"], name="favorite_once")]

    def __str__(self) -> str:
        return f"{self.user} likes image {self.image_id}"


class Collection(models.Model):
    """A team collection of images: anyone on the team may add to it, rename it or remove from it."""

    name = models.CharField(max_length=100)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = [Lower("name")]
        constraints = [models.UniqueConstraint(Lower("name"), name="collection_name_unique")]

    def __str__(self) -> str:
        return self.name


class CollectionItem(models.Model):
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="items")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="collection_items")
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    added_at = models.DateTimeField(default=timezone.now)

    class Meta:
        # (collection, image) also serves "this collection, newest image first" as a keyset.
        constraints = [models.UniqueConstraint(fields=["collection", "image"], name="collection_item_once")]

    def __str__(self) -> str:
        return f"image {self.image_id} in {self.collection_id}"


class Reference(models.Model):
    """An uploaded reference image, kept private and shown to providers through a short-lived signed URL."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="references")
    file = models.FileField(upload_to="references/%Y/%m/", max_length=300)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    format = models.CharField(max_length=10)
    bytes = models.PositiveIntegerField(
        default=0, help_text="Size in storage, counted against the user's limit."
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"reference {self.pk} of {self.user}"


class Price(models.Model):
    """Credits per image for a provider kind, model and size tier, from a date on. The newest row whose
    `effective_from` has passed wins. Tier `input_mp` prices each megapixel of reference image."""

    class Tier(models.TextChoices):
        MP1 = "1MP", "up to 1 MP"
        MP2 = "2MP", "up to 2 MP"
        MP4 = "4MP", "up to 4 MP"
        INPUT = "input_mp", "per reference-image megapixel"

    kind = models.CharField(max_length=20, choices=kind_choices)
    model = models.CharField(max_length=40)
    tier = models.CharField(max_length=10, choices=Tier.choices)
    credits = models.PositiveIntegerField()
    effective_from = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["kind", "model", "tier", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "model", "tier", "effective_from"], name="price_once_per_date"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.model} {self.tier}: {self.credits}"


class CreditAccount(models.Model):
    """`balance` is every credit the user owns, `reserved` the part in-flight jobs hold; the user can spend
    `balance - reserved`. The database refuses any row that breaks that arithmetic."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="credit_account"
    )
    balance = models.BigIntegerField(default=0)
    reserved = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(balance__gte=0), name="credit_balance_not_negative"),
            models.CheckConstraint(condition=Q(reserved__gte=0), name="credit_reserved_not_negative"),
            models.CheckConstraint(
                condition=Q(reserved__lte=F("balance")), name="credit_reserved_within_balance"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user}: {self.available} (+{self.reserved} reserved)"

    @property
    def available(self) -> int:
        return self.balance - self.reserved


class LedgerEntry(models.Model):
    """Append-only. Each credit movement is one row; balances are reconcilable from these sums."""

    class Kind(models.TextChoices):
        GRANT = "grant"
        RESERVE = "reserve"
        SETTLE = "settle"
        REFUND = "refund"
        ADJUST = "adjust"
        # A failover moved the job to an account with another price: the hold grows (+) or shrinks (-).
        REHOLD = "rehold"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="ledger")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    amount = models.BigIntegerField(
        help_text="Credits; positive, except an adjust or a rehold may be negative."
    )
    generation = models.ForeignKey(
        Generation, null=True, blank=True, on_delete=models.PROTECT, related_name="ledger"
    )
    admin = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    note = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"
        constraints = [
            models.UniqueConstraint(
                fields=["generation", "kind"],
                condition=Q(kind__in=["reserve", "settle", "refund"]),
                name="ledger_one_entry_per_kind_per_generation",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["adjust", "rehold"]) | Q(amount__gte=0), name="ledger_amount_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} for {self.user}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise ValueError("Ledger entries are append-only.")
        super().save(*args, **kwargs)


class Quota(models.Model):
    """Limits; the row with no user holds the team defaults, a user's row overrides the fields it sets."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE)
    concurrent = models.PositiveIntegerField(
        null=True, blank=True, help_text="Generations in flight at once."
    )
    daily_images = models.PositiveIntegerField(null=True, blank=True, help_text="Images per UTC day.")
    monthly_credits = models.PositiveIntegerField(
        null=True, blank=True, help_text="Credits per calendar month."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user"], condition=Q(user=None), name="one_default_quota")
        ]

    def __str__(self) -> str:
        return f"quota for {self.user or 'the team'}"


class Usage(models.Model):
    """Counters keyed by their window ("2026-11-25" for a day, "2026-11" for a month), incremented
    atomically: a new window is a new row, so nothing is ever reset-then-set."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE)
    account = models.ForeignKey(ProviderAccount, null=True, blank=True, on_delete=models.CASCADE)
    window = models.CharField(max_length=10)
    images = models.PositiveIntegerField(default=0)
    credits = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "window"], condition=Q(account=None), name="usage_per_user_window"
            ),
            models.UniqueConstraint(
                fields=["account", "window"], condition=Q(user=None), name="usage_per_account_window"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user or self.account} {self.window}: {self.images} images, {self.credits} credits"


class ApiToken(models.Model):
    """A personal API token; only its SHA-256 is stored, the token itself is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @classmethod
    def issue(cls, user, name: str = "") -> tuple[ApiToken, str]:
        token = "fw_" + secrets.token_urlsafe(32)
        return cls.objects.create(user=user, name=name, digest=digest(token), prefix=token[:10]), token

    @classmethod
    def authenticate(cls, token: str):
        found = cls.objects.select_related("user").filter(digest=digest(token), user__is_active=True).first()
        if found is None:
            return None
        if found.last_used_at is None or timezone.now() - found.last_used_at > timedelta(minutes=5):
            try:
                cls.objects.filter(pk=found.pk).update(last_used_at=timezone.now())
            except OperationalError:  # bookkeeping: a busy database must not refuse the request
                pass
        return found.user


class LeaseQuerySet(models.QuerySet):
    def named(self, name: str):
        return self.filter(name=name)

    def live(self, now=None):
        return self.filter(expires_at__gt=now or timezone.now())

    def lapsed(self, now=None):
        return self.filter(expires_at__lte=now or timezone.now())


class Lease(models.Model):
    """A named lease that keeps one sweeper running across any number of clusters."""

    name = models.CharField(max_length=40, unique=True)
    holder = models.CharField(max_length=64)
    expires_at = models.DateTimeField()

    objects = LeaseQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.name} held by {self.holder} until {self.expires_at}"
