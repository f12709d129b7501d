"""The generation lifecycle: create, submit, sweep (the one async poller), ingest, finish, cancel.

Tasks, views, the API and webhooks all call these functions. The job row is the source of truth and the
queue only a wake-up call: every step is idempotent, claims its work with a conditional UPDATE, and can be
re-run after a crash or a duplicate delivery without moving money twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from dataclasses import replace
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from . import credits, crypto, media
from .models import Generation, Lease, Prompt, ProviderAccount, digest
from .providers import GenerationRequest, Outcome, ProviderError, Unsupported
from .providers import http as provider_http

log = logging.getLogger(__name__)

MAX_SUBMIT_ATTEMPTS = 4
SWEEP_SECONDS = 50  # one sweep task's lifetime; well under Q_CLUSTER["timeout"], which is under "retry"
LEASE_SECONDS = 75
SWEEP_TICK = 0.2  # how often an idle sweeper looks for newly due jobs: one indexed query
# A claimed submit is not handed out again for this long: longer than the slowest synchronous call (MaxAPI
# holds the request until the image is made; see synchronous_timeout).
SUBMIT_LEASE_SECONDS = 135


class CreateError(Exception):
    """A create refused before any money moved; `refusal` carries the code, message and HTTP status."""

    def __init__(self, refusal: credits.Refusal):
        super().__init__(refusal.message)
        self.refusal = refusal


# -- choosing a provider ----------------------------------------------------------------------------------
def accounts_serving(model: str) -> list[ProviderAccount]:
    return [
        account
        for account in ProviderAccount.objects.filter(enabled=True).exclude(api_key_encrypted="")
        if model in account.adapter_class.models
    ]


def choose_account(request: GenerationRequest, slug: str | None) -> tuple[ProviderAccount, credits.Quote]:
    """The named account, or the enabled accounts that serve the request by priority, then price."""
    if slug:
        account = ProviderAccount.objects.filter(slug=slug).first()
        if account is None or not account.enabled or not account.has_key:
            raise credits.Refusal(
                "unknown_provider",
                f"There is no enabled provider account {slug!r}.",
                status=400,
                field="provider",
            )
        candidates = [account]
    else:
        candidates = accounts_serving(request.model)
        if not candidates:
            raise credits.Refusal(
                "no_provider",
                f"No enabled provider account serves {request.model}; ask an admin.",
                status=400,
                field="model",
            )
    refusals: list[Unsupported] = []
    choices = []
    for account in candidates:
        try:
            account.adapter_class("", "").validate(request)
        except Unsupported as exc:
            refusals.append(exc)
            continue
        choices.append((account.priority, credits.quote(account.kind, request), account))
    if not choices:
        first = refusals[0]
        raise credits.Refusal("unsupported", first.message, status=400, field=first.field)
    _, price, account = min(choices, key=lambda c: (c[0], c[1].total, c[2].slug))
    return account, price


# -- create -------------------------------------------------------------------------------------------------
def request_digest(request: GenerationRequest, slug: str | None) -> str:
    return digest(repr((request, slug or "")))


def create(
    user, request: GenerationRequest, *, provider: str | None = None, idempotency_key: str = ""
) -> tuple[Generation, bool]:
    """Validate, price, hold credits, check quotas and save in one transaction; enqueue the submit on
    commit. Returns (generation, created): a repeated idempotency key returns the first generation."""
    fingerprint = request_digest(request, provider)
    if idempotency_key:
        existing = Generation.objects.filter(user=user, idempotency_key=idempotency_key).first()
        if existing:
            return replay(existing, fingerprint), False
    try:
        account, price = choose_account(request, provider)
        if request.seed is None and account.adapter_class.models[request.model].seed:
            # Pick the seed ourselves so every image can be re-run exactly.
            request = replace(request, seed=random.randrange(2**31))
        with transaction.atomic():
            credit_account = credits.account_for(user, lock=True)
            if idempotency_key:
                # The credit row lock serializes this user's creates, so a duplicate that passed the check
                # above while the first was saving finds it here, before quotas or credits refuse it.
                existing = Generation.objects.filter(user=user, idempotency_key=idempotency_key).first()
                if existing:
                    return replay(existing, fingerprint), False
            # One moment for the quota windows and the job's created_at, so a refund releases its usage
            # from the windows it was counted in, even when midnight passes during the create.
            now = timezone.now()
            credits.hold_quotas(user, account, request.n, price.total, now)
            generation = Generation.objects.create(
                created_at=now,
                user=user,
                prompt=Prompt.remember(request.prompt, user),
                model=request.model,
                account=account,
                n=request.n,
                seed=request.seed,
                params=params_of(request) | {"credits_per_image": price.per_image},
                credits_reserved=price.total,
                idempotency_key=idempotency_key,
                request_digest=fingerprint if idempotency_key else "",
                deadline_at=now + timedelta(seconds=settings.FLUXWEB_JOB_DEADLINE),
            )
            credits.reserve(generation, price.total, credit_account)
            generation.events.create(what="created", detail=f"{price.total} credits held on {account.slug}")
            transaction.on_commit(lambda: enqueue("submit", generation.pk))
    except credits.Refusal as refusal:
        raise CreateError(refusal) from None
    except IntegrityError:
        # A concurrent request with the same idempotency key won the insert.
        existing = (
            Generation.objects.filter(user=user, idempotency_key=idempotency_key).first()
            if idempotency_key
            else None
        )
        if existing is None:
            raise
        return replay(existing, fingerprint), False
    return generation, True


def replay(existing: Generation, fingerprint: str) -> Generation:
    if existing.request_digest != fingerprint:
        raise CreateError(
            credits.Refusal(
                "idempotency_mismatch",
                "This Idempotency-Key was already used with a different request.",
                status=422,
            )
        )
    return existing


def params_of(request: GenerationRequest) -> dict:
    return {
        "aspect_ratio": request.aspect_ratio,
        "width": request.width,
        "height": request.height,
        "megapixels": request.megapixels,
        "output_format": request.output_format,
        "safety_tolerance": request.safety_tolerance,
        "prompt_upsampling": request.prompt_upsampling,
        "reference_urls": list(request.reference_urls),
    }


def request_of(generation: Generation) -> GenerationRequest:
    params = {k: v for k, v in generation.params.items() if k in GenerationRequest.__dataclass_fields__}
    params["reference_urls"] = tuple(params.get("reference_urls") or ())
    return GenerationRequest(
        prompt=generation.prompt.text, model=generation.model, n=generation.n, seed=generation.seed, **params
    )


def enqueue(task: str, *args) -> None:
    from django_q.tasks import async_task

    async_task(f"generations.tasks.{task}", *args, task_name=f"{task}-{args[0] if args else ''}")


# -- submit --------------------------------------------------------------------------------------------------
def submit(generation_id: int) -> None:
    """Send a queued generation to its provider. Claims the job first; a job whose earlier submit died
    mid-call is only re-sent where the provider deduplicates (Idempotency-Key), otherwise refunded."""
    now = timezone.now()
    claimed = Generation.objects.filter(
        Q(next_poll_at__isnull=True) | Q(next_poll_at__lte=now),
        pk=generation_id,
        status=Generation.Status.QUEUED,
    ).update(attempts=F("attempts") + 1, next_poll_at=now + timedelta(seconds=SUBMIT_LEASE_SECONDS))
    if not claimed:
        return
    generation = Generation.objects.select_related("account", "prompt").get(pk=generation_id)
    try:
        adapter = generation.account.adapter()
    except crypto.KeyUnavailable as error:
        fail(
            generation,
            ProviderError.AUTH,
            f"The {generation.account.slug} provider account is misconfigured: {error}",
        )
        return
    crashed_before = generation.attempts > 1 and not generation.error_code
    if crashed_before and not adapter.idempotent_submit:
        fail(
            generation,
            "submit_lost",
            "The worker stopped while sending this job; it was not retried so it "
            "cannot run twice. Your credits are back.",
        )
        return
    if generation.attempts > MAX_SUBMIT_ATTEMPTS or timezone.now() >= generation.deadline_at:
        fail(
            generation,
            generation.error_code or ProviderError.TIMEOUT,
            generation.error_message or "The provider could not be reached in time.",
        )
        return
    Generation.objects.filter(pk=generation.pk).update(error_code="", error_message="")
    request = request_of(generation)
    request = replace(
        request,
        # Links live until the job's deadline plus an hour, the same on every attempt.
        reference_urls=tuple(
            media.signed_link(key, generation.deadline_at.timestamp() + media.REFERENCE_MAX_AGE)
            for key in request.reference_urls
        ),
        webhook_url=webhook_url(generation) if adapter.webhooks else None,
        idempotency_key=f"fluxweb-{generation.pk}-{generation.webhook_token[:16]}",
    )
    try:
        outcome = adapter.parse_submit(
            provider_http.send(adapter, adapter.build_submit(request), timeout=synchronous_timeout(adapter))
        )
    except ProviderError as error:
        if error.permanent:
            fail(generation, error.code, error.message)
        elif safe_to_resend(adapter, error):
            retry_submit(generation, error)
        else:
            fail(
                generation,
                error.code,
                f"{error.message} It was not sent again, because {adapter.label} cannot "
                "tell a repeat from a new paid job. Your credits are back; try again.",
            )
        return
    if outcome.state == "succeeded":  # synchronous provider: the images are here now
        if generation.transition(
            [Generation.Status.QUEUED],
            Generation.Status.RUNNING,
            event="generated",
            started_at=timezone.now(),
            next_poll_at=None,
            image_urls=list(outcome.image_urls),
            provider_cost=outcome.cost or "",
            seed=generation.seed or outcome.seed,
        ):
            enqueue("ingest", generation.pk)
        return
    if outcome.state == "failed":
        fail(generation, outcome.error.code, outcome.error.message)
        return
    # Store the provider's job id before anything waits on it: a worker killed now loses nothing.
    generation.mark_submitted(outcome.job_id, outcome.poll_url or "", first_poll_delay(generation.account))
    if outcome.cost:
        Generation.objects.filter(pk=generation.pk).update(provider_cost=outcome.cost)
    transaction.on_commit(kick_sweeper)


def safe_to_resend(adapter, error: ProviderError) -> bool:
    """A transient submit error may be retried only when a retry cannot create a second paid job: the
    provider deduplicates, the request never left, or the provider said it did not take it (429, 503).
    MaxAPI's guide: back off on 429/502/503/504, but no blind retry of create calls [M2-errors]."""
    return adapter.idempotent_submit or error.unsent or error.status in (429, 503)


def synchronous_timeout(adapter) -> float:
    return 120.0 if adapter.synchronous else 30.0


def retry_submit(generation: Generation, error: ProviderError) -> None:
    delay = (
        error.retry_after
        if error.retry_after is not None
        else (min(30.0, 2.0**generation.attempts) * (0.5 + random.random() / 2))
    )
    Generation.objects.filter(pk=generation.pk, status=Generation.Status.QUEUED).update(
        error_code=error.code,
        error_message=error.message,
        next_poll_at=timezone.now() + timedelta(seconds=delay),
    )
    generation.events.create(what="submit retry", detail=f"{error.message} (again in {delay:.1f} s)")
    kick_sweeper()


def webhook_url(generation: Generation) -> str:
    return settings.SITE_URL + reverse("webhook", args=[generation.webhook_token])


# -- polling cadence -----------------------------------------------------------------------------------------
def expected_latency(account: ProviderAccount) -> tuple[float, float] | None:
    """(low, high): the 10th and 90th percentile of this account's last 20 submit-to-done times, or None
    before it has finished three jobs."""
    durations = sorted(
        (done - started).total_seconds()
        for started, done in Generation.objects.filter(account=account, provider_done_at__isnull=False)
        .order_by("-id")
        .values_list("started_at", "provider_done_at")[:20]
        if started and done
    )
    if len(durations) < 3:
        return None
    return durations[len(durations) // 10], durations[min(len(durations) - 1, len(durations) * 9 // 10)]


def first_poll_delay(account: ProviderAccount) -> float:
    history = expected_latency(account)
    # Without history, look early: the first answer usually carries progress to time the rest by.
    return max(0.5, history[0] - 0.2) if history else 1.0


def next_poll_delay(
    generation: Generation, progress: float | None, history: tuple[float, float] | None
) -> float:
    """When to ask again: just after the provider's own progress says it will be done; else through the
    spread of recent completion times; else backing off. Low detection lag AND few provider calls."""
    elapsed = (timezone.now() - (generation.started_at or generation.created_at)).total_seconds()
    if progress is not None and 0.05 <= progress < 1:
        remaining = elapsed / progress - elapsed
        return min(5.0, max(0.25, remaining))
    if history:
        low, high = history
        if elapsed < low:
            return max(0.25, low - elapsed)
        if elapsed < high * 1.2:
            return 0.3
        return min(5.0, 0.5 + elapsed * 0.1)
    return min(5.0, max(0.5, elapsed * 0.3))


# -- the sweeper -----------------------------------------------------------------------------------------------
def kick_sweeper() -> None:
    """Start a sweep unless one is running; it picks up every due job."""
    lease = Lease.objects.filter(name="sweeper").first()
    if lease is None or lease.expires_at <= timezone.now():
        enqueue("sweep")


def acquire_lease(holder: str) -> bool:
    now = timezone.now()
    expires = now + timedelta(seconds=LEASE_SECONDS)
    if Lease.objects.filter(Q(expires_at__lte=now) | Q(holder=holder), name="sweeper").update(
        holder=holder, expires_at=expires
    ):
        return True
    try:
        with transaction.atomic():
            Lease.objects.create(name="sweeper", holder=holder, expires_at=expires)
        return True
    except IntegrityError:
        return False


def release_lease(holder: str) -> None:
    Lease.objects.filter(name="sweeper", holder=holder).update(expires_at=timezone.now())


def sweep(seconds: float = SWEEP_SECONDS) -> int:
    """Poll every due in-flight job concurrently, write results back, and look again every tick (a new
    submit or a webhook can make a job due at any moment); for at most `seconds`, then hand over to a fresh
    task if work remains. Returns the number of polls made."""
    holder = secrets.token_hex(8)
    if not acquire_lease(holder):
        return 0
    polls = 0
    started = time.monotonic()
    renew_at = started + LEASE_SECONDS / 3
    poller = Poller(settings.FLUXWEB_POLL_CONCURRENCY)
    try:
        while True:
            expire_overdue()
            resubmit_due()
            due = list(Generation.objects.due().select_related("account")[:500])
            if due:
                polls += poll_batch(due, poller)
            wait = seconds_until_next()
            if wait is None:
                release_lease(holder)
                # A job submitted between our last look and the release found the lease held; look again.
                if seconds_until_next() is None or not acquire_lease(holder):
                    return polls
                continue
            now = time.monotonic()
            if now - started > seconds:
                release_lease(holder)
                enqueue("sweep")
                return polls
            if now > renew_at:
                acquire_lease(holder)
                renew_at = now + LEASE_SECONDS / 3
            time.sleep(min(SWEEP_TICK, max(0.02, wait)))
    except BaseException:
        release_lease(holder)
        raise
    finally:
        poller.close()


def seconds_until_next() -> float | None:
    nxt = (
        Generation.objects.filter(status__in=Generation.IN_FLIGHT, next_poll_at__isnull=False)
        .order_by("next_poll_at")
        .values_list("next_poll_at", flat=True)
        .first()
    )
    if nxt is None:
        return None
    return max(0.0, (nxt - timezone.now()).total_seconds())


def resubmit_due() -> None:
    for pk in Generation.objects.filter(
        status=Generation.Status.QUEUED, next_poll_at__lte=timezone.now()
    ).values_list("pk", flat=True)[:100]:
        # Clear the retry time first: the next loop will not enqueue it again, and the submit task's claim
        # (which takes a job whose next_poll_at is empty or past) still succeeds.
        Generation.objects.filter(pk=pk, status=Generation.Status.QUEUED).update(next_poll_at=None)
        enqueue("submit", pk)


def expire_overdue() -> None:
    for generation in (
        Generation.objects.in_flight()
        .filter(deadline_at__lte=timezone.now())
        .exclude(status=Generation.Status.RUNNING, next_poll_at__isnull=True)
    ):
        fail(generation, ProviderError.TIMEOUT, "The provider did not finish in time. Your credits are back.")


class Poller:
    """One event loop and one AsyncClient for a whole sweep, so connections and TLS set-up are reused from
    round to round (a client costs ~18 ms to build, performance.md). Each round polls every due job at
    once, bounded by a semaphore (httpx degrades past ~10 in flight). Network inside the loop, ORM outside."""

    def __init__(self, limit: int):
        self.limit = limit
        self.loop = asyncio.new_event_loop()
        self.client = None

    def poll(self, calls: list) -> list:
        return self.loop.run_until_complete(self.round(calls))

    async def round(self, calls: list) -> list:
        if self.client is None:
            self.client = provider_http.async_client(self.limit)
        semaphore = asyncio.Semaphore(self.limit)

        async def one(adapter, call):
            async with semaphore:
                try:
                    return adapter.parse_poll(await provider_http.send_async(self.client, adapter, call))
                except ProviderError as error:
                    return error

        return await asyncio.gather(*(one(adapter, call) for adapter, call in calls))

    def close(self) -> None:
        if self.client is not None:
            self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


def poll_batch(due: list[Generation], poller: Poller) -> int:
    adapters = {}
    for account in {g.account_id: g.account for g in due}.values():
        try:
            adapters[account.pk] = account.adapter()
        except crypto.KeyUnavailable as error:
            log.error("provider account %s: %s", account.slug, error)
    for generation in [g for g in due if g.account_id not in adapters]:
        # One account with an unreadable key must not stop polling for the others.
        fail(
            generation,
            ProviderError.AUTH,
            f"The {generation.account.slug} provider account is misconfigured: "
            "its API key cannot be decrypted. Your credits are back.",
        )
    due = [g for g in due if g.account_id in adapters]
    calls = [
        (adapters[g.account_id], adapters[g.account_id].build_poll(g.provider_job_id, g.poll_url or None))
        for g in due
    ]
    results = poller.poll(calls)
    histories = {}
    for generation, result in zip(due, results, strict=True):
        if generation.account_id not in histories:
            histories[generation.account_id] = expected_latency(generation.account)
        apply_poll(generation, result, histories[generation.account_id])
    return len(calls)


def apply_poll(
    generation: Generation, result: Outcome | ProviderError, history: tuple[float, float] | None
) -> None:
    if isinstance(result, ProviderError):
        if result.permanent:
            fail(generation, result.code, result.message)
        else:
            generation.schedule_poll(2.0 if result.retry_after is None else result.retry_after)
        return
    if result.state == "pending":
        generation.schedule_poll(next_poll_delay(generation, result.progress, history))
        if result.progress is not None:
            Generation.objects.filter(pk=generation.pk).update(progress=result.progress)
        return
    if result.state == "failed":
        fail(generation, result.error.code, result.error.message)
        return
    provider_done(generation, result)


def provider_done(generation: Generation, outcome: Outcome) -> None:
    """The provider has the images: stop polling and hand the download to the ingest task, once."""
    won = Generation.objects.filter(
        pk=generation.pk, status=Generation.Status.RUNNING, next_poll_at__isnull=False
    ).update(
        next_poll_at=None,
        image_urls=list(outcome.image_urls),
        provider_done_at=timezone.now(),
        progress=1.0,
        **({"provider_cost": outcome.cost} if outcome.cost else {}),
    )
    if won:
        generation.events.create(what="provider done", detail=f"{len(outcome.image_urls)} image(s) ready")
        enqueue("ingest", generation.pk)


# -- ingest -------------------------------------------------------------------------------------------------------
def ingest(generation_id: int) -> None:
    """Download, verify and store every result image, then settle. Safe to run twice: stored indexes are
    skipped and the settlement happens once."""
    generation = Generation.objects.select_related("account", "prompt", "user").get(pk=generation_id)
    if generation.status != Generation.Status.RUNNING or not generation.image_urls:
        return
    stored = set(generation.images.values_list("index", flat=True))
    problem: media.MediaError | None = None
    for index, url in enumerate(generation.image_urls[: generation.n]):
        if index in stored:
            continue
        try:
            checked = media.check_image(
                media.download(url, generation.account.kind, generation.account.base_url)
            )
            media.store_image(generation, index, checked, metadata_of(generation, index), generation.seed)
            stored.add(index)
        except media.MediaError as error:
            problem = problem or error
        except IntegrityError:
            stored.add(index)  # a concurrent ingest stored it first
    finish(generation, len(stored), problem)


def metadata_of(generation: Generation, index: int) -> dict:
    return {
        "prompt": generation.prompt.text,
        "model": generation.model,
        "provider": generation.account.kind,
        "seed": generation.seed,
        "params": {k: v for k, v in generation.params.items() if v not in (None, [], False)},
        "generation": generation.pk,
        "index": index,
    }


def finish(generation: Generation, stored: int, problem: media.MediaError | None) -> None:
    if stored == 0:
        fail(
            generation,
            problem.code if problem else "no_images",
            problem.message if problem else "No image arrived.",
        )
        return
    # The hold is n images plus the reference images; what was not delivered goes back.
    per_image = generation.params.get("credits_per_image", 0)
    charge = generation.credits_reserved - per_image * (generation.n - stored)
    with transaction.atomic():
        if not generation.transition(
            [Generation.Status.RUNNING],
            Generation.Status.SUCCEEDED,
            event="succeeded",
            detail=f"{stored} image(s) stored" + (f"; {problem.message}" if problem else ""),
            finished_at=timezone.now(),
        ):
            return
        credits.settle(generation, charge, images=stored, note=f"{stored} of {generation.n} image(s)")


# -- failure and cancel -------------------------------------------------------------------------------------------
def fail(generation: Generation, code: str, message: str) -> bool:
    with transaction.atomic():
        if not generation.transition(
            Generation.IN_FLIGHT,
            Generation.Status.FAILED,
            event="failed",
            detail=message,
            finished_at=timezone.now(),
            error_code=code,
            error_message=message,
            next_poll_at=None,
        ):
            return False
        credits.refund(generation, note=message[:500])
    return True


def cancel(generation: Generation, by) -> bool:
    with transaction.atomic():
        if not generation.transition(
            Generation.IN_FLIGHT,
            Generation.Status.CANCELED,
            event="canceled",
            detail=f"by {by}",
            finished_at=timezone.now(),
            next_poll_at=None,
        ):
            return False
        credits.refund(generation, note="canceled")
    return True


# -- webhooks -------------------------------------------------------------------------------------------------------
def webhook_hint(generation: Generation) -> None:
    """A verified webhook says the job changed: ask the provider now, in this request, rather than trust
    the body (reliability.md 3). If that poll fails, the job is due for the sweeper at once."""
    generation.events.create(what="webhook", detail="provider notified us; polling now")
    Generation.objects.filter(
        pk=generation.pk, status=Generation.Status.RUNNING, next_poll_at__isnull=False
    ).update(next_poll_at=timezone.now())
    generation.refresh_from_db()
    if generation.status != Generation.Status.RUNNING or generation.next_poll_at is None:
        return
    try:
        adapter = generation.account.adapter()
        result = adapter.parse_poll(
            provider_http.send(
                adapter, adapter.build_poll(generation.provider_job_id, generation.poll_url or None)
            )
        )
    except ProviderError as error:
        result = error
    except crypto.KeyUnavailable:
        kick_sweeper()
        return
    apply_poll(generation, result, expected_latency(generation.account))
    kick_sweeper()
