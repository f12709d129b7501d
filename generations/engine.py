"""The generation lifecycle with money: create, submit, ingest, finish, fail, cancel.

Tasks, views, the API and webhooks all call these functions. The job row is the source of truth and the
queue only a wake-up call: every step is idempotent, claims its work with a conditional UPDATE, and can be
re-run after a crash or a duplicate delivery without moving money twice.
"""

from __future__ import annotations

import logging
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from . import cadence, catalog, credits, crypto, media, sweeper
from .models import Generation, Prompt, ProviderAccount, digest
from .providers import PROVIDERS, GenerationRequest, ProviderError
from .providers import http as provider_http
from .refusal import Refusal

log = logging.getLogger(__name__)

MAX_SUBMIT_ATTEMPTS = 4
# A task working on a job (a submit, a download) holds it for TASK_LEASE_SECONDS and renews that every
# HEARTBEAT_SECONDS while its network call runs, however long the call (MaxAPI holds a submit until the image
# is made). A killed worker stops renewing, so the reaper finds its job within a lease.
TASK_LEASE_SECONDS = 30
HEARTBEAT_SECONDS = 10
MAX_INGEST_ATTEMPTS = 3
INGEST_RETRY_PAUSE = 2.0  # seconds before the second download try, doubling after
# A download that the provider finished before the deadline may still be saved this long after it.
INGEST_GRACE_SECONDS = 120


# -- create -------------------------------------------------------------------------------------------------
def request_digest(request: GenerationRequest, slug: str | None) -> str:
    return digest(repr((request, slug or "")))


# Pauses before a create tries again after SQLite's write lock outlasted its busy timeout (issue 10, bug 4).
LOCKED_RETRY_PAUSES = (0.1, 0.3, 0.8, 1.5)


def create(
    user, request: GenerationRequest, *, provider: str | None = None, idempotency_key: str = ""
) -> tuple[Generation, bool]:
    """Validate, price, hold credits, check quotas and save in one transaction; enqueue the submit on
    commit. Returns (generation, created): a repeated idempotency key returns the first generation; a
    create refused before any money moved raises a Refusal.
    A transaction that found the database locked rolled back whole, so it is tried again."""
    for pause in (*LOCKED_RETRY_PAUSES, None):
        try:
            return create_once(user, request, provider=provider, idempotency_key=idempotency_key)
        except IntegrityError:
            raise
        except DatabaseError as error:
            if pause is not None and "locked" in str(error):
                time.sleep(pause * random.uniform(0.5, 1.5))
                continue
            # The transaction rolled back, so no job and no hold exist.
            log.warning("create for %s rolled back", user, exc_info=True)
            raise Refusal(
                "busy",
                "FluxWeb is busy right now; nothing was charged. Try again.",
                status=503,
                retry_after=2,
            ) from None


def create_once(
    user, request: GenerationRequest, *, provider: str | None, idempotency_key: str
) -> tuple[Generation, bool]:
    fingerprint = request_digest(request, provider)
    if idempotency_key:
        existing = Generation.objects.filter(user=user, idempotency_key=idempotency_key).first()
        if existing:
            return replay(existing, fingerprint), False
    try:
        account, price = catalog.choose_account(request, provider)
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
                failover=not provider,
                deadline_at=now + timedelta(seconds=settings.FLUXWEB_JOB_DEADLINE),
            )
            credits.reserve(generation, price.total, credit_account)
            generation.events.create(what="created", detail=f"{price.total} credits held on {account.slug}")
            enqueue_with(generation.pk)
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


def enqueue_with(generation_id: int) -> None:
    """Queue the submit of a job being created. On the ORM broker the task row is written in the job's own
    transaction, so a committed job always has its task; another broker is told after the commit, and a
    job whose task never arrives is queued again by the reaper."""
    if "orm" in settings.Q_CLUSTER:
        enqueue("submit", generation_id)
    else:
        transaction.on_commit(lambda: enqueue_safely("submit", generation_id))


def replay(existing: Generation, fingerprint: str) -> Generation:
    if existing.request_digest != fingerprint:
        raise Refusal(
            "idempotency_mismatch",
            "This Idempotency-Key was already used with a different request.",
            status=422,
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


def enqueue_safely(task: str, *args) -> None:
    """Queue a task whose loss the reaper repairs: a broker error is logged, never raised to the caller."""
    try:
        enqueue(task, *args)
    except Exception:
        log.exception("could not queue %s%s; the reaper will", task, args)


def with_heartbeat(work, beat, every: float | None = None):
    """Run `work()` (network and files only, never the database) in a thread, while this thread calls
    `beat()` every `every` seconds to renew the job's lease. Returns what `work` returns."""
    every = HEARTBEAT_SECONDS if every is None else every
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fluxweb-work")
    try:
        future = pool.submit(work)
        while True:
            try:
                return future.result(timeout=every)
            except FutureTimeout:
                try:
                    beat()
                except DatabaseError:
                    log.warning("could not renew a job lease", exc_info=True)
    finally:
        pool.shutdown(wait=False)


# Provider error texts are shown to the whole team and written into the ledger: never with a credential.
# Key-shaped words: common prefixes, and each adapter's own (`key_prefix`: afk_, pd_, bfl_, ...).
KEY_PREFIXES = sorted(
    {"sk", "pk", "rk", "fw", "vtrix", "key"}
    | {cls.key_prefix.rstrip("-_") for cls in PROVIDERS.values() if cls.key_prefix}
)
CREDENTIAL = re.compile(
    r"(?i)(bearer|token|x-key|api[ _-]?key|apikey|authorization|secret|password)(['\"]?\s*[:=]?\s*)"
    r"(?!\[redacted\])['\"]?(?=[^\s'\",;]*\d)[^\s'\",;]{6,}"
    rf"|\b(?:{'|'.join(map(re.escape, KEY_PREFIXES))})[-_][A-Za-z0-9_\-]{{6,}}"
)


def redact(text: str, account: ProviderAccount | None = None) -> str:
    """`text` without the account's API key or anything that looks like a credential."""
    if not text:
        return text
    if account is not None:
        try:
            key = account.api_key
        except crypto.KeyUnavailable:
            key = ""
        if len(key) >= 4:
            text = text.replace(key, "[redacted]")
    return CREDENTIAL.sub(
        lambda m: f"{m.group(1)}{m.group(2)}[redacted]" if m.group(1) else "[redacted]", text
    )


# -- submit --------------------------------------------------------------------------------------------------
def submit(generation_id: int) -> None:
    """Send a queued generation to its provider. Claims the job first; a job whose earlier submit died
    mid-call is only re-sent where the provider deduplicates (Idempotency-Key), otherwise refunded."""
    if not Generation.objects.claim_submit(generation_id, TASK_LEASE_SECONDS):
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
    account = generation.account
    if not account.claim_trial():
        # Its circuit breaker is open (or another job is the half-open trial): nothing is sent to it.
        if not move_on(generation, "its circuit breaker is open after repeated failures"):
            postpone_submit(generation, account.breaker_open_until, "its circuit breaker is open")
        return
    if not account.take_requests(1):
        postpone_submit(generation, account.budget_free_at(), "its request budget is spent")
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
    attempt = generation.attempts

    def beat() -> None:
        generation.renew_submit_lease(attempt, TASK_LEASE_SECONDS)

    def send():
        return adapter.parse_submit(
            provider_http.send(adapter, adapter.build_submit(request), timeout=synchronous_timeout(adapter))
        )

    sent_at = time.monotonic()
    try:
        try:
            outcome = with_heartbeat(send, beat)
        except ProviderError:
            raise
        except Exception as exc:
            log.exception("submit of generation %s: unreadable reply", generation.pk)
            raise ProviderError(
                ProviderError.MALFORMED, f"{adapter.label} sent a reply FluxWeb could not read."
            ) from exc
    except ProviderError as error:
        record_health(account, [error], time.monotonic() - sent_at)
        if refused_before_acceptance(error) and move_on(generation, redact(error.message, account)):
            return
        if error.permanent:
            fail(generation, error.code, error.message)
        elif error.code == ProviderError.MALFORMED and generation.attempts >= sweeper.MAX_MALFORMED_POLLS:
            fail(
                generation,
                error.code,
                f"{error.message} It did so {generation.attempts} times in a row. Your credits are back.",
            )
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
    record_health(account, [outcome], time.monotonic() - sent_at)
    if outcome.state == "succeeded":  # synchronous provider: the images are here now
        if generation.mark_generated(outcome.image_urls, outcome.cost or "", generation.seed or outcome.seed):
            enqueue_safely("ingest", generation.pk)
        return
    if outcome.state == "failed":
        fail(generation, outcome.error.code, outcome.error.message)
        return
    # Store the provider's job id before anything waits on it: a worker killed now loses nothing.
    generation.mark_submitted(
        outcome.job_id, outcome.poll_url or "", cadence.first_poll_delay(generation.account)
    )
    if outcome.cost:
        Generation.objects.filter(pk=generation.pk).update(provider_cost=outcome.cost)
    transaction.on_commit(sweeper.kick_sweeper)


def postpone_submit(generation: Generation, until, why: str) -> None:
    """Put a claimed submit back, unsent and uncounted, until `until`; the sweeper queues it again then."""
    until = max(until or timezone.now(), timezone.now() + timedelta(seconds=0.2))
    if generation.postpone_submit(until):
        wait = (until - timezone.now()).total_seconds()
        generation.events.create(
            what="submit waits", detail=f"{generation.account.slug}: {why} ({wait:.1f} s)"
        )
        transaction.on_commit(sweeper.kick_sweeper)


# -- failover and health (issue 9.4) ------------------------------------------------------------------------
# Codes of a call that says the account is unwell (its breaker counts them); a moderation, an invalid
# request or a job the provider failed is a healthy provider's answer. A 429 pauses the account instead.
UNHEALTHY = frozenset(
    {ProviderError.SERVER, ProviderError.TIMEOUT, ProviderError.AUTH, ProviderError.PROVIDER_CREDIT}
)


def record_health(account: ProviderAccount, results: list, seconds: float | None) -> None:
    """Fold one call's (or one poll round's) results into the account's breaker, latency and error rate,
    and pause the account for a 429's Retry-After."""
    errors = [r for r in results if isinstance(r, ProviderError)]
    failed = sum(1 for e in errors if e.code in UNHEALTHY)
    pauses = [e.retry_after for e in errors if e.code == ProviderError.RATE_LIMITED and e.retry_after]
    if pauses:
        account.pause(max(pauses))
    try:
        account.record_calls(ok=len(results) - failed - len(pauses), failed=failed, seconds=seconds)
    except DatabaseError:
        log.warning("could not record the health of %s", account.slug, exc_info=True)


def refused_before_acceptance(error: ProviderError) -> bool:
    """The provider certainly did not take the job: the request never arrived (connection refused, DNS),
    or it answered 503, 429 (no job id), or refused the key or the account's credit (401/402/403)."""
    return (
        error.unsent
        or error.status in (429, 503)
        or error.code
        in (
            ProviderError.AUTH,
            ProviderError.PROVIDER_CREDIT,
        )
    )


def move_on(generation: Generation, reason: str) -> bool:
    """A "Best available" job its account refused before accepting: move it to the next account that serves
    the model, at that account's price, the hold adjusted in the same transaction. Never for a named
    provider, never after acceptance (callers only ask while the job is queued). Returns whether it moved."""
    if not generation.failover:
        return False
    request = request_of(generation)
    old = generation.account
    tried = [*generation.tried_accounts, old.pk]
    # The references' price is per input megapixel: the units the old hold paid for, at the new price.
    old_input = credits.price_table(old.kind, generation.model).get("input_mp", 0)
    per_image = generation.params.get("credits_per_image", 0)
    reference_credits = generation.credits_reserved - per_image * generation.n
    units = reference_credits // old_input if old_input else len(request.reference_urls)
    priced = replace(request, reference_megapixels=(float(units),) if units else ())
    choices = []
    for account in catalog.accounts_serving(generation.model):
        if account.pk in tried or account.breaker_state() == "open":
            continue
        try:
            account.adapter_class("", "").validate(request)
            price = credits.quote(account.kind, priced)
        except Refusal:
            continue
        choices.append((account.priority, price.total, account.slug, account, price))
    for *_, account, price in sorted(choices, key=lambda c: c[:3]):
        detail = (
            f"{old.slug}: {reason}; it never accepted the job, so it moved to {account.slug} "
            f"at {price.total} credits"
            + (
                f" (the hold was {generation.credits_reserved})"
                if price.total != generation.credits_reserved
                else ""
            )
        )
        try:
            with transaction.atomic():
                credits.rehold(
                    generation, account, price.total, note=f"failover {old.slug} -> {account.slug}"
                )
                if not generation.mark_moved(account, price.total, price.per_image, tried, detail):
                    raise Refusal("moved", "The job is no longer queued.", status=409)
        except Refusal as refusal:
            log.info("generation %s: not moved to %s: %s", generation.pk, account.slug, refusal.message)
            continue
        transaction.on_commit(lambda pk=generation.pk: enqueue_safely("submit", pk))
        return True
    return False


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
    if timezone.now() + timedelta(seconds=delay) >= generation.deadline_at:
        # The next try would come after the deadline: end it now, with the provider's reason.
        fail(
            generation,
            error.code,
            f"{error.message} It could not be sent before the job's deadline. Your credits are back.",
        )
        return
    message = redact(error.message, generation.account)
    generation.schedule_submit_retry(error.code, message, timezone.now() + timedelta(seconds=delay))
    generation.events.create(what="submit retry", detail=f"{message} (again in {delay:.1f} s)")
    sweeper.kick_sweeper()


def webhook_url(generation: Generation) -> str:
    return settings.SITE_URL + reverse("webhook", args=[generation.webhook_token])


# -- polling cadence -----------------------------------------------------------------------------------------


# -- the sweeper -----------------------------------------------------------------------------------------------


# -- the reaper ----------------------------------------------------------------------------------------------


# -- ingest -------------------------------------------------------------------------------------------------------
def ingest(generation_id: int) -> None:
    """Download, verify and store every result image, then settle. The task claims the job with a lease it
    renews while it works; the images are recorded in the transaction that settles the job, or not at all,
    so a job that was meanwhile failed, canceled or settled by another task keeps no image and no file."""
    now = timezone.now()
    if not Generation.objects.claim_ingest(generation_id, TASK_LEASE_SECONDS):
        return
    generation = Generation.objects.select_related("account", "prompt", "user").get(pk=generation_id)
    if not generation.image_urls:
        fail(
            generation, "no_images", "The provider reported success but sent no image. Your credits are back."
        )
        return
    late = now >= generation.deadline_at + timedelta(seconds=INGEST_GRACE_SECONDS)
    if generation.ingest_attempts > MAX_INGEST_ATTEMPTS or late:
        fail(
            generation,
            generation.error_code or "download_failed",
            "The images could not be downloaded in time. Your credits are back.",
        )
        return
    attempt = generation.ingest_attempts

    def beat() -> None:
        generation.renew_ingest_lease(attempt, TASK_LEASE_SECONDS)

    saved, problem = with_heartbeat(lambda: fetch_images(generation), beat)
    finish(generation, saved, problem)


def fetch_images(generation: Generation) -> tuple[list[media.Saved], media.MediaError | None]:
    """Download, check and write each result file; no database. Any failure is a MediaError for that image."""
    saved: list[media.Saved] = []
    problem: media.MediaError | None = None
    for index, url in enumerate(generation.image_urls[: generation.n]):
        try:
            if not isinstance(url, str):
                raise media.MediaError("forbidden_url", "The provider sent a result link that is not a URL.")
            # Extra hosts only when the account has some, so a stand-in for `download` keeps its signature.
            extra = generation.account.extra_result_hosts
            checked = media.check_image(
                media.download(
                    url,
                    generation.account.kind,
                    generation.account.base_url,
                    **({"extra_hosts": extra} if extra else {}),
                ),
                thumbnail=True,  # one decode checks the file and makes its thumbnail
            )
            saved.append(media.save_files(index, checked, metadata_of(generation, index)))
        except media.MediaError as error:
            problem = problem or error
        except Exception:
            log.exception("generation %s: image %s could not be stored", generation.pk, index)
            problem = problem or media.MediaError("download_failed", "An image could not be downloaded.")
    return saved, problem


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


def finish(generation: Generation, saved: list[media.Saved], problem: media.MediaError | None) -> None:
    if not saved and problem and problem.host:
        # The provider has charged for images on a host nobody allowed: never refund that silently. The job
        # waits, the admin sees the host and may allow it; the reaper ends it at the deadline otherwise.
        generation.mark_waiting_for_admin(problem.host)
        return
    if not saved:
        if problem and problem.code == "download_failed" and generation.ingest_attempts < MAX_INGEST_ATTEMPTS:
            # Perhaps a passing network fault: let the reaper download again after a short pause.
            pause = INGEST_RETRY_PAUSE * 2 ** (generation.ingest_attempts - 1)
            if generation.schedule_download_retry(problem.code, pause):
                generation.events.create(
                    what="download retry", detail=f"{problem.message} (again in {pause:.0f} s)"
                )
                sweeper.kick_sweeper()
            return
        fail(
            generation,
            problem.code if problem else "no_images",
            f"{problem.message if problem else 'No image arrived.'} Your credits are back.",
        )
        return
    # The hold is n images plus the reference images; what was not delivered goes back.
    per_image = generation.params.get("credits_per_image", 0)
    charge = generation.credits_reserved - per_image * (generation.n - len(saved))
    won = False
    try:
        with transaction.atomic():
            won = generation.mark_succeeded(
                f"{len(saved)} image(s) stored" + (f"; {problem.message}" if problem else "")
            )
            if won:
                for item in saved:
                    media.record(generation, item, generation.seed)
                credits.settle(
                    generation, charge, images=len(saved), note=f"{len(saved)} of {generation.n} image(s)"
                )
    finally:
        if not won:
            media.delete_files(saved)


def allow_host_and_fetch(generation: Generation, host: str) -> bool:
    """The admin's one click: allow `host` for the job's account and download again, while the job still
    waits (and before its deadline: the links expire with it)."""
    if generation.refused_host != host or generation.status != Generation.Status.RUNNING:
        return False
    generation.account.allow_result_host(host)
    if not generation.mark_host_allowed(host):
        return False
    transaction.on_commit(lambda: enqueue_safely("ingest", generation.pk))
    return True


# -- failure and cancel -------------------------------------------------------------------------------------------
def fail(generation: Generation, code: str, message: str) -> bool:
    message = redact(message, generation.account)
    with transaction.atomic():
        if not generation.mark_failed(code, message):
            return False
        credits.refund(generation, note=message[:500])
    return True


def cancel(generation: Generation, by) -> bool:
    """Cancel a job the provider has not finished. Once it has, the provider has billed and the images are
    on their way: the cancel is refused (never a refund and the images both)."""
    with transaction.atomic():
        if not generation.mark_canceled(by):
            return False
        credits.refund(generation, note="canceled")
    return True


def cancel_refusal(generation: Generation) -> str:
    """Why `cancel` said no, in words."""
    if generation.is_terminal:
        return f"Generation {generation.pk} is already {generation.status}."
    return (
        f"Generation {generation.pk} is already finished at the provider, which has charged for it; "
        "its images are being saved."
    )


# -- webhooks -------------------------------------------------------------------------------------------------------
