"""The studio: the prompt form with its live price, job cards kept current by one poll per page, the shared
gallery, the balance badge and the credits ledger."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.http import Http404, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import trigger_client_event

from accounts.access import members_only, profile_of
from accounts.models import Role

from . import cadence, credits, engine, gallery, media, sweeper
from .api import serve_image, upload_in_use
from .catalog import NAMES, model_ids
from .estimate import Estimate, estimate
from .forms import (
    GenerationForm,
    check_upload_storage,
    clean_idempotency_key,
    discard_uploads,
    field_errors,
    first_error,
    parse_id,
)
from .login import login_required
from .models import Generation, Image, LedgerEntry, ProviderAccount, Reference
from .providers import GenerationRequest, ProviderError, Unsupported
from .refusal import Refusal
from .shared import SharedList

JOBS_SHOWN = 12
WATCHED_MOST = 50  # the cards one poll looks at; a page shows 12 at a time
LOW_BALANCE = 150  # credits: about two FLUX.2 [max] images; below it the badge warns
# The form fields whose errors are shown beside them (the rest go to the line under the button).
SHOWN_FIELDS = ("prompt", "model", "provider", "n", "seed", "aspect_ratio", "megapixels", "output_format")
SHOWN_FIELDS += ("safety_tolerance", "references")


def load_accounts() -> list:
    return list(ProviderAccount.objects.filter(enabled=True).exclude(api_key_encrypted=""))


ACCOUNTS = SharedList("studio:accounts", load_accounts)


def enabled_accounts() -> list:
    """The enabled provider accounts with a key, from the cache every process shares (shared.SharedList):
    the studio page renders its options without a query (issue 8 asks <= 3 with the session and the user).
    Any save or delete of an account, in any process, makes every process load them again
    (signals.forget_accounts). The create reads the database, so a stale copy could show an option, never
    use an account."""
    return ACCOUNTS.get()


def accounts_serving(model: str) -> list:
    """catalog.accounts_serving, from the cached accounts."""
    return [account for account in enabled_accounts() if model in account.adapter_class.models]


def visible_generations():
    """Everything the team made: the history and gallery are shared by design."""
    return Generation.objects.select_related("prompt", "account", "user").prefetch_related("images")


def own_generation(request, pk: int) -> Generation:
    return get_object_or_404(visible_generations().filter(user=request.user), pk=pk)


def no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "private, no-store"
    response["Vary"] = "HX-Request, Cookie"
    return response


# -- the form -------------------------------------------------------------------------------------------------
def settings_of(generation: Generation, user) -> dict:
    """A job's settings as the form's values: what Remix fills in and Retry sends again. References come
    along; another member's upload cannot (it is theirs), and is counted in `dropped`."""
    params = generation.params
    images, uploads, dropped = [], [], 0
    for key in params.get("reference_urls") or []:
        kind, _, pk = str(key).partition(":")
        if kind == "image":
            images.append(pk)
        elif kind == "upload" and generation.user_id == user.pk:
            uploads.append(pk)
        else:
            dropped += 1
    values = {
        "prompt": generation.prompt.text,
        "model": generation.model,
        "provider": generation.account.slug,
        "n": generation.n,
        "seed": generation.seed,
        "aspect_ratio": params.get("aspect_ratio"),
        "width": params.get("width"),
        "height": params.get("height"),
        "megapixels": params.get("megapixels"),
        "output_format": params.get("output_format") or "jpeg",
        "safety_tolerance": params.get("safety_tolerance"),
        "prompt_upsampling": bool(params.get("prompt_upsampling")),
        "reference_images": images,
        "reference_uploads": uploads,
    }
    values = {k: v for k, v in values.items() if v is not None and v != "" and v is not False}
    values["dropped"] = dropped
    return values


def remix_of(request) -> dict:
    """`?remix=<id>`: the form filled from a team generation: prompt, model, provider, options, seed and
    references, an exact rerun."""
    pk = parse_id(request.GET.get("remix", ""))
    source = visible_generations().filter(pk=pk).first() if pk else None
    return settings_of(source, request.user) if source else {}


def picked_references(values, user) -> tuple[list[Image], list[Reference]]:
    """The references a form carries (or a remix brings), each once; unknown ids are left out here (the
    form refuses them on submit)."""
    image_ids = [i for i in dict.fromkeys(parse_id(v) for v in values.get("reference_images", [])) if i]
    upload_ids = [i for i in dict.fromkeys(parse_id(v) for v in values.get("reference_uploads", [])) if i]
    images = Image.objects.visible().select_related("generation__prompt").in_bulk(image_ids)
    uploads = Reference.objects.filter(user=user).in_bulk(upload_ids)
    return [images[i] for i in image_ids if i in images], [uploads[i] for i in upload_ids if i in uploads]


def best_for(model: str, accounts: list, values: dict):
    """The account "Best available" would name for these values: catalog.choose_account's first pick (by
    priority) among the accounts that take the request, from the cached accounts and without a query. It
    is a first guess (references are not counted here): the quote names the account for certain, and sends
    that account's options when it is another (`quote`)."""
    n = parse_id(str(values.get("n") or 1)) or 1
    try:
        megapixels = float(values.get("megapixels") or 1.0)
    except (TypeError, ValueError):
        megapixels = 1.0
    request = GenerationRequest(
        prompt="price check",
        model=model,
        n=n,
        aspect_ratio=values.get("aspect_ratio") or "1:1",
        megapixels=megapixels,
        output_format=values.get("output_format") or "jpeg",
    )
    takers = []
    for account in accounts:
        try:
            account.adapter_class("", "").validate(request)
        except Unsupported:
            continue
        takers.append(account)
    # By priority alone (prices are a query away; between equal priorities the quote settles it).
    return min(takers or accounts, key=lambda a: (a.priority, a.slug)) if accounts else None


def options_context(
    model: str, provider: str = "", initial: dict | None = None, user=None, best: str = ""
) -> dict:
    """What the form offers for one model: the options of one account: the one the user picked, or with
    "Best available" the one the price names (`best`, from the quote, else `best_for`'s guess), never a
    union of accounts whose limits differ. Only the image count reaches to the largest any serving account
    makes, as n is what sends Best available to an account that makes several images a request.
    `initial` keeps the user's values where the new options allow them."""
    accounts = accounts_serving(model)
    values = {"aspect_ratio": "1:1", "megapixels": 1.0, "output_format": "jpeg", "n": 1} | (initial or {})
    picked = [a for a in accounts if a.slug == provider]
    if picked:
        chosen = picked
    else:
        named = [a for a in accounts if a.slug == best] or [
            a for a in [best_for(model, accounts, values)] if a
        ]
        chosen = named
    specs = [a.adapter_class.models[model] for a in chosen]
    spec = specs[0] if specs else None
    ratios = (
        sorted(spec.aspect_ratios, key=str)
        if spec and spec.aspect_ratios
        else ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "4:5", "5:4"]
    )
    megapixels = sorted(spec.megapixels) if spec else []
    formats = sorted(spec.output_formats, key=str) if spec else []
    serving = specs if picked else [a.adapter_class.models[model] for a in accounts]
    max_n = max((s.max_n for s in serving), default=1)
    # A value the new model or provider does not offer falls back to its default; one it does is kept.
    if values.get("aspect_ratio") not in ratios:
        values["aspect_ratio"] = "1:1" if "1:1" in ratios else ratios[0]
    try:
        values["megapixels"] = float(values.get("megapixels") or 1.0)
    except (TypeError, ValueError):
        values["megapixels"] = 1.0
    if values["megapixels"] not in megapixels and megapixels:
        values["megapixels"] = 1.0 if 1.0 in megapixels else megapixels[0]
    if values.get("output_format") not in formats and formats:
        values["output_format"] = formats[0]
    n = parse_id(str(values.get("n") or 1)) or 1
    values["n"] = min(n, max_n)
    images, uploads = picked_references(values, user) if user else ([], [])
    return {
        "initial": values,
        "model": model,
        "model_names": [(m, NAMES.get(m, m)) for m in model_ids()],
        "accounts": accounts,
        "provider": provider if picked else "",
        "options_for": chosen[0].slug if chosen and not picked else "",
        "ratios": ratios,
        "megapixels": megapixels,
        "formats": formats,
        "max_n": max_n,
        "max_refs": spec.max_reference_images if spec else 0,
        "safety": spec.safety_tolerance if spec and spec.safety_tolerance else None,
        "upsampling": bool(spec and spec.prompt_upsampling),
        "seeded": bool(spec and spec.seed),
        "picked_images": images,
        "picked_uploads": uploads,
        "dropped": (initial or {}).get("dropped", 0),
    }


def form_values(query: QueryDict) -> dict:
    """The form as the page has it now (a GET of its fields), for re-rendering the options."""
    values = {k: query.get(k) for k in query if k not in ("reference_images", "reference_uploads")}
    values["reference_images"] = query.getlist("reference_images")
    values["reference_uploads"] = query.getlist("reference_uploads")
    return values


# -- job cards --------------------------------------------------------------------------------------------------
def card_version(job: Generation) -> str:
    """What a card shows that can change while it runs; the page sends it back so a poll returns only the
    cards that changed."""
    return f"{job.status}.{round((job.progress or 0) * 100)}.{int(bool(job.provider_done_at))}"


READABLE = {
    ProviderError.AUTH: "{label} refused FluxWeb's key for this account; an admin must fix it.",
    ProviderError.INVALID: "{label} refused the request.",
    ProviderError.MODERATION: "{label} refused the prompt under its content rules.",
    ProviderError.PROVIDER_CREDIT: "The {label} account is out of credit; an admin must top it up.",
    ProviderError.RATE_LIMITED: "{label} was too busy to take the job in time.",
    ProviderError.SERVER: "{label} had a server error and did not finish the job.",
    ProviderError.TIMEOUT: "{label} did not finish the job in time.",
    ProviderError.MALFORMED: "{label} sent a reply FluxWeb could not read.",
    ProviderError.EXPIRED: "{label}'s result links expired before the images could be saved.",
    ProviderError.FAILED: "{label} could not make this image.",
    ProviderError.NOT_FOUND: "{label} lost track of the job.",
}


def looks_like_markup(text: str) -> bool:
    lowered = text.lower()
    return any(
        tag in lowered for tag in ("<html", "<!doctype", "<body", "<head", "<title", "</", "<div", "<h1")
    )


def reason(job: Generation) -> str:
    """Why a job failed, in words a member can act on. The provider's own words when they are words; a
    markup reply (a proxy's 502 page) becomes the sentence for its kind of failure. The raw reply stays in
    the job's timeline, shown to admins."""
    message = (job.error_message or "").strip()
    if message and not looks_like_markup(message):
        return message
    label = job.account.adapter_class.label if job.account_id else "The provider"
    return READABLE.get(job.error_code, "{label} could not make this image.").format(label=label)


def eta(job: Generation, latencies: dict) -> tuple[float, float] | None:
    """(low, high) seconds this account usually takes, from its recent jobs (one query per account)."""
    if job.account_id not in latencies:
        latencies[job.account_id] = cadence.expected_latency(job.account)
    return latencies[job.account_id]


def card_context(job: Generation, latencies: dict | None = None) -> dict:
    """What the job-card partial shows: the job, its reason in words, its ETA and version, a Retry key."""
    latencies = {} if latencies is None else latencies
    return {
        "job": job,
        "reason": reason(job) if job.status == Generation.Status.FAILED else "",
        "eta": eta(job, latencies) if not job.is_terminal else None,
        "version": card_version(job),
        "retry_key": uuid.uuid4().hex,
    }


def render_card(request, job: Generation, oob: bool = False, latencies: dict | None = None) -> str:
    context = card_context(job, latencies) | {"oob": oob}
    return render_to_string("generations/studio.html#job-card", context, request)


def finished_notice(job: Generation) -> dict:
    """The toast (and browser notification) for one of your jobs that just ended."""
    prompt = job.prompt.text if len(job.prompt.text) <= 60 else job.prompt.text[:59] + "…"
    if job.status == Generation.Status.SUCCEEDED:
        count = len(job.images.all())
        text = f"Done: {count} image{'s' if count != 1 else ''} for “{prompt}”."
    elif job.status == Generation.Status.FAILED:
        text = f"Failed: “{prompt}”. {reason(job)}"
        if job.credits_refunded:
            text += f" {job.credits_refunded} credits refunded."
    else:
        text = f"Canceled: “{prompt}”."
    return {"id": job.pk, "status": job.status, "text": text, "url": reverse("generation", args=[job.pk])}


# -- pages ---------------------------------------------------------------------------------------------------------
def jobs_page(user, before: int | None = None) -> tuple[list[Generation], int | None]:
    """One page of the user's jobs, newest first, and the id to continue before (None at the end). Keyset on
    id: jobs are numbered in the order they were made."""
    rows = visible_generations().filter(user=user).order_by("-id")
    if before:
        rows = rows.filter(pk__lt=before)
    page = list(rows[: JOBS_SHOWN + 1])
    more = page[JOBS_SHOWN - 1].pk if len(page) > JOBS_SHOWN else None
    return page[:JOBS_SHOWN], more


def studio_context(request) -> dict:
    """The page itself takes no query of its own (the session, the user and the gallery's cards are the
    three): the options come from cached accounts, and the jobs column and the balance load right after
    (`jobs`, `credit_badge`), as they refresh anyway."""
    initial = remix_of(request)
    if not initial and ("use_prompt" in request.GET or "reference" in request.GET):
        initial = gallery.prefill(request)
    initial["reference_images"] = [getattr(i, "pk", i) for i in initial.get("reference_images", [])]
    model = initial.get("model") or (model_ids()[-1] if model_ids() else "")
    profile = profile_of(request.user)
    return {
        "idempotency_key": uuid.uuid4().hex,
        "remixed": bool(initial),
        "may_generate": profile.role != Role.VIEWER,
        "notifications": profile.notifications,
        **options_context(model, initial.get("provider", ""), initial, request.user),
    }


@require_GET
@login_required
def studio(request):
    return no_store(render(request, "generations/studio.html", studio_context(request)))


@require_GET
@login_required
def model_options(request):
    """The options for the model (and provider) now chosen, keeping the user's other values and references
    where the new choice allows them; the price is asked again once they are on the page."""
    model = request.GET.get("model", "")
    if model not in model_ids():
        raise Http404
    values = form_values(request.GET)
    context = options_context(model, request.GET.get("provider", ""), values, request.user)
    response = no_store(render(request, "generations/studio.html#model-options", context))
    response["HX-Trigger-After-Settle"] = "form-changed"
    return response


def estimate_form(request, data: QueryDict) -> tuple[GenerationForm, Estimate | None]:
    """The form and what it would cost now (None while the form itself is invalid)."""
    form = GenerationForm(data, user=request.user)
    if not form.is_valid():
        return form, None
    return form, estimate(request.user, form.to_request(), form.cleaned_data.get("provider") or None)


def quote_context(request, form: GenerationForm, price: Estimate | None) -> dict:
    account = credits.account_for(request.user)
    context = {"account": account, "estimate": price, "problem": "", "field": "", "low_balance": LOW_BALANCE}
    if price is None:
        context["field"], context["problem"] = first_error(form)
    else:
        context["problem"], context["field"] = price.problem, price.field or ""
    return context


@require_GET
@login_required
def quote(request):
    """The price of what the form says now, what would remain, and anything that would refuse it (an
    option, the balance, a quota): shown live under the button, in the one place messages appear."""
    data = request.GET.copy()
    data["prompt"] = data.get("prompt") or "price check"  # the price does not depend on the words
    form, price = estimate_form(request, data)
    context = quote_context(request, form, price)
    named = price.account.slug if price is not None and price.account is not None else ""
    best_available = not data.get("provider") and data.get("model") in model_ids()
    if best_available and named and named != data.get("options_for", ""):
        # Best available now means another account (n, references, a format): its options, not the last one's.
        options = options_context(data["model"], "", form_values(data), request.user, best=named)
        context["options"] = render_to_string(
            "generations/studio.html#model-options", options | {"options_oob": True}, request
        )
    response = no_store(render(request, "generations/studio.html#quote-response", context))
    if context.get("options"):
        response["HX-Trigger-After-Settle"] = "form-changed"
    return response


def refused(
    request, problem: str, form: GenerationForm | None = None, field: str | None = None
) -> HttpResponse:
    """A Generate that made nothing: the reason under the button, field errors beside their fields (a
    refusal that names a field, such as an option the provider cannot serve, beside that one too), and
    the price line with the price only, so the reason is not shown twice."""
    if not request.htmx:
        messages.error(request, problem)
        return HttpResponseRedirect(reverse("studio"))
    errors = field_errors(form) if form is not None else {}
    if field:
        errors.setdefault(field, problem)
    for name in ("reference_images", "reference_uploads", "reference_files", "file"):
        if name in errors:
            errors.setdefault("references", errors.pop(name))
    price = None
    if form is not None and form.is_valid():
        price = estimate(request.user, form.to_request(), form.cleaned_data.get("provider") or None)
    context = {
        "problem": problem,
        "errors": [(f, errors.get(f, "")) for f in SHOWN_FIELDS],
        "estimate": price if price is not None and price.price is not None else None,
    }
    response = render(request, "generations/studio.html#form-error", context)
    response["HX-Retarget"] = "#form-error"
    response["HX-Reswap"] = "outerHTML"
    return no_store(response)


@require_POST
@login_required
@members_only
def generate(request):
    """Create from the studio form. Uploads are stored only once everything else checked out, and deleted
    again when the create is refused, so a refused Generate leaves no files behind."""
    form = GenerationForm(request.POST, user=request.user)
    key = clean_idempotency_key(request.POST.get("idempotency_key", ""))
    if key is None:
        return refused(request, "The form is out of date: reload the page and try again.")
    if not form.is_valid():
        return refused(request, first_error(form)[1], form)
    files = request.FILES.getlist("reference_files")
    stored: list[Reference] = []
    try:
        first = Generation.objects.filter(user=request.user, idempotency_key=key).first() if key else None
        if files and first is not None:
            # The same form sent twice (a double click): its files would be new uploads, so the engine
            # would see a different request. The first submit's job stands and nothing is stored.
            generation, created = first, False
        else:
            if files:
                check_upload_storage(request.user, sum(f.size for f in files))
                for f in files:
                    stored.append(media.store_reference(f, request.user))
            generation, created = engine.create(
                request.user,
                form.to_request(stored),
                provider=form.cleaned_data.get("provider") or None,
                idempotency_key=key,
            )
    except Refusal as exc:
        discard_uploads(stored)
        return refused(request, exc.message, form, exc.field)
    if not created:  # the first request's job stands, with the first request's uploads
        discard_uploads(stored)
    if not request.htmx:
        return HttpResponseRedirect(reverse("studio"))
    job = visible_generations().get(pk=generation.pk)
    context = card_context(job) | {"idempotency_key": uuid.uuid4().hex, "watching": True}
    response = render(request, "generations/studio.html#created", context)
    if not created:  # a double click: the first click's card is already on the page
        response["HX-Reswap"] = "none"
    return trigger_client_event(no_store(response), "credits-changed")


@require_GET
@login_required
def job_card(request, pk: int):
    """One card, current (a link target and a fallback; the studio keeps cards current with `job_updates`)."""
    job = get_object_or_404(visible_generations(), pk=pk)
    response = no_store(render(request, "generations/studio.html#job-card", card_context(job)))
    if job.is_terminal and request.GET.get("was") != "terminal":
        # The job just finished: the gallery and the balance change with it.
        trigger_client_event(response, "gallery-changed")
        trigger_client_event(response, "credits-changed")
    return response


def watched(request) -> dict[int, str]:
    """`?watch=<id>:<version>` for each running card on the page: id -> the version the page shows."""
    result = {}
    for value in request.GET.getlist("watch")[:WATCHED_MOST]:
        pk, _, version = value.partition(":")
        if (pk := parse_id(pk)) is not None:
            result[pk] = version
    return result


@require_GET
@login_required
def job_updates(request):
    """The one poll of an open page: every watched card that changed since the page's version of it, as
    out-of-band swaps, and the poller again while any is still running. A card that ended tells the page
    (`job-finished`, with a toast's words for the user's own jobs) and refreshes the balance and gallery."""
    versions = watched(request)
    jobs = list(visible_generations().filter(pk__in=versions)) if versions else []
    sweeper.nudge(jobs)
    latencies: dict = {}
    changed = [job for job in jobs if card_version(job) != versions[job.pk]]
    ended = [job for job in changed if job.is_terminal]
    context = {
        "cards": [render_card(request, job, oob=True, latencies=latencies) for job in changed],
        # Still watching while a watched card runs, or while one of the user's jobs does that this poll did
        # not know of (a Generate answered while the poll was on its way: its card is on the page now).
        "watching": any(not job.is_terminal for job in jobs)
        or Generation.objects.for_user(request.user).in_flight().exclude(pk__in=versions).exists(),
    }
    response = no_store(render(request, "generations/studio.html#job-updates", context))
    if ended:
        own = [finished_notice(job) for job in ended if job.user_id == request.user.pk]
        if own:
            trigger_client_event(response, "job-finished", {"jobs": own})
        trigger_client_event(response, "gallery-changed")
        trigger_client_event(response, "credits-changed")
        if own and credits.account_for(request.user).available < LOW_BALANCE:
            trigger_client_event(response, "balance-low", {"text": low_balance_text(request.user)})
    return response


def low_balance_text(user) -> str:
    return (
        f"Your balance is low: {credits.account_for(user).available:,} credits left. Ask an admin for more."
    )


@require_GET
@login_required
def jobs(request):
    """ "Your jobs": the newest page (loaded by the studio, with the poller when one runs), or with
    `?before=<id>` the next older page; each ends with its own "Older jobs" button (keyset, never OFFSET)."""
    if "ids" in request.GET:
        return added_jobs(request)
    before = None
    if "before" in request.GET and (before := parse_id(request.GET["before"])) is None:
        raise Http404
    page, more = jobs_page(request.user, before)
    latencies: dict = {}
    context = {
        "jobs": [card_context(job, latencies) for job in page],
        "more": more,
        "first": before is None,
        "watching": any(not job.is_terminal for job in page),
    }
    return no_store(render(request, "generations/studio.html#jobs-page", context))


def added_jobs(request):
    """`?ids=<id>&ids=<id>`: the cards of jobs made elsewhere on the page (Rerun, Variations or Compare in the
    lightbox answer with a `jobs-created` event naming them; studio.js asks for them here), the user's own
    only, newest first, put at the top of "Your jobs" and watched by the one poll."""
    ids = [pk for pk in (parse_id(v) for v in request.GET.getlist("ids")[:WATCHED_MOST]) if pk]
    rows = visible_generations().filter(user=request.user, pk__in=ids).order_by("-id") if ids else []
    latencies: dict = {}
    context = {"jobs": [card_context(job, latencies) for job in rows], "more": None, "watching": True}
    return no_store(render(request, "generations/studio.html#jobs-added", context))


@require_POST
@login_required
@members_only
def cancel(request, pk: int):
    job = own_generation(request, pk)
    engine.cancel(job, request.user)
    job = visible_generations().get(pk=pk)
    if not request.htmx:
        return HttpResponseRedirect(reverse("studio"))
    return trigger_client_event(
        no_store(render(request, "generations/studio.html#job-card", card_context(job))),
        "credits-changed",
    )


@require_POST
@login_required
@members_only
def retry(request, pk: int):
    """A failed or canceled job again: a new job with the same settings, through the same form as Generate
    (so the same checks and price), and the same seed."""
    job = own_generation(request, pk)
    if not job.is_terminal or job.status == Generation.Status.SUCCEEDED:
        raise Http404
    values = settings_of(job, request.user)
    values.pop("dropped")
    data = QueryDict(mutable=True)
    for name, value in values.items():
        data.setlist(name, value if isinstance(value, list) else [value])
    form = GenerationForm(data, user=request.user)
    key = clean_idempotency_key(request.POST.get("idempotency_key", "")) or ""
    problem = None
    if not form.is_valid():
        problem = first_error(form)[1]
    else:
        try:
            generation, created = engine.create(
                request.user,
                form.to_request(),
                provider=form.cleaned_data.get("provider") or None,
                idempotency_key=f"retry:{pk}:{key}" if key else "",
            )
        except Refusal as exc:
            problem = exc.message
    if not request.htmx:
        if problem:
            messages.error(request, problem)
        return HttpResponseRedirect(reverse("studio"))
    if problem:
        response = render(request, "generations/studio.html#retry-error", {"job": job, "problem": problem})
        response["HX-Retarget"] = f"#retry-error-{job.pk}"
        response["HX-Reswap"] = "outerHTML"
        return no_store(response)
    new = visible_generations().get(pk=generation.pk)
    response = render(request, "generations/studio.html#retried", card_context(new) | {"watching": True})
    if not created:
        response["HX-Reswap"] = "none"
    return trigger_client_event(no_store(response), "credits-changed")


@require_POST
@login_required
@members_only
def upload_references(request):
    """Reference files chosen in the form, stored at once so the price counts them and Generate sends them
    as uploads: chips like a gallery pick's, and the file input emptied."""
    files = request.FILES.getlist("reference_files")
    problem = ""
    stored: list[Reference] = []
    try:
        if files:
            check_upload_storage(request.user, sum(f.size for f in files))
            for f in files:
                stored.append(media.store_reference(f, request.user))
    except Refusal as exc:
        discard_uploads(stored)
        stored, problem = [], exc.message
    context = {"picked_uploads": stored, "upload_problem": problem}
    response = no_store(render(request, "generations/studio.html#uploaded", context))
    if stored:
        trigger_client_event(response, "uploads-changed", after="settle")
    return trigger_client_event(response, "form-changed", after="settle")


UPLOADS_SHOWN = 20


@require_GET
@login_required
def uploads(request):
    """ "Your uploads" on the reference fieldset: the newest of one's uploaded reference files, each with
    Delete (loaded after the options, so the page itself takes no query for it)."""
    rows = list(Reference.objects.filter(user=request.user).order_by("-id")[: UPLOADS_SHOWN + 1])
    context = {"uploads": rows[:UPLOADS_SHOWN], "more_uploads": len(rows) > UPLOADS_SHOWN}
    return no_store(render(request, "generations/studio.html#uploads", context))


@require_POST
@login_required
@members_only
def delete_upload(request, pk: int):
    """Delete one's own upload and its file, refused while a job in flight uses it (the API's check); its
    chip leaves the form, and the price is asked again."""
    upload = get_object_or_404(Reference, pk=pk, user=request.user)
    in_use = upload_in_use(upload)
    if in_use:
        problem = f"Job #{in_use} is still running with this upload; delete it once that job ends."
        if not request.htmx:
            messages.error(request, problem)
            return HttpResponseRedirect(reverse("studio"))
        context = {"upload": upload, "problem": problem}
        return no_store(render(request, "generations/studio.html#upload-row", context))
    discard_uploads([upload])
    if not request.htmx:
        messages.success(request, "Upload deleted.")
        return HttpResponseRedirect(reverse("studio"))
    response = no_store(render(request, "generations/studio.html#upload-deleted", {"pk": pk}))
    return trigger_client_event(response, "form-changed", after="settle")


@require_GET
@login_required
def credit_badge(request):
    account = credits.account_for(request.user)
    context = {"account": account, "low": account.available < LOW_BALANCE}
    return no_store(render(request, "generations/studio.html#credit-badge", context))


# -- credits --------------------------------------------------------------------------------------------------------
# How each ledger entry moves the credits a member can spend (balance minus holds): a hold takes them, a
# charge spends from the hold (nothing more leaves), a refund gives the held rest back.
LEDGER_WORDS = {
    "grant": "granted",
    "reserve": "held",
    "rehold": "hold moved",
    "settle": "charged",
    "refund": "refunded",
}


def available_change(entry: LedgerEntry) -> int:
    if entry.kind in ("grant", "adjust", "refund"):
        return entry.amount
    if entry.kind in ("reserve", "rehold"):  # a failover's rehold grows (or shrinks) the hold
        return -entry.amount
    return 0


def ledger_rows(entries: list[LedgerEntry], available: int) -> list[dict]:
    """Entries newest first, each with its signed change and the credits available after it (worked back
    from today's figure, so the newest row's balance is the one on the badge)."""
    rows = []
    after = available
    for entry in entries:
        change = available_change(entry)
        rows.append(
            {
                "entry": entry,
                "change": change,
                "size": abs(change),
                "after": after,
                "what": LEDGER_WORDS.get(entry.kind),
            }
        )
        after -= change
    return rows


@require_GET
@login_required
def credits_page(request):
    entries = list(
        LedgerEntry.objects.filter(user=request.user)
        .select_related("generation__prompt", "admin")
        .order_by("-created_at", "-id")[:200]
    )
    account = credits.account_for(request.user)
    context = {
        "rows": ledger_rows(entries, account.available),
        "account": account,
        "low": account.available < LOW_BALANCE,
    }
    return no_store(render(request, "generations/credits.html", context))


@require_GET
@login_required
def generation_page(request, pk: int):
    job = get_object_or_404(visible_generations().prefetch_related("events"), pk=pk)
    account = credits.account_for(request.user)
    from .usage import cost_unit

    context = card_context(job) | {
        "account": account,
        # The provider's own figure, in its own unit: for admins, who know what the account is billed in.
        "cost_shown": bool(job.provider_cost) and request.user.is_staff,
        "cost_unit": cost_unit(job.account.kind),
        "low": account.available < LOW_BALANCE,
        "watching": not job.is_terminal,
        "events": [
            (event, event.detail if request.user.is_staff or not looks_like_markup(event.detail) else "")
            for event in job.events.all()
        ],
    }
    return no_store(render(request, "generations/generation.html", context))


# -- images and references --------------------------------------------------------------------------------------------
@require_GET
@login_required
def image(request, pk: int, variant: str):
    return serve_image(get_object_or_404(Image, pk=pk), variant)


@require_GET
def reference(request, token: str):
    """A gallery image for a provider, by signed short-lived link (no login: the signature is the key)."""
    pk = media.reference_from_token(token)
    if pk is None:
        raise Http404
    return serve_image(get_object_or_404(Image, pk=pk), "file", redirect=False)


@require_GET
def reference_upload(request, token: str):
    """An uploaded reference image for a provider, by signed short-lived link."""
    pk = media.upload_from_token(token)
    if pk is None:
        raise Http404
    upload = get_object_or_404(Reference, pk=pk)
    filename = f"fluxweb-reference-{upload.pk}.{upload.format}"
    return media.serve(upload.file, f"image/{upload.format}", filename, redirect=False)


@require_GET
@login_required
def reference_chip(request, pk: int):
    """ "Use as reference" on a gallery image: a removable chip carrying the image id into the form, unless
    the form already has it (`hx-include="#references"` sends the picks): then nothing changes (204)."""
    image = get_object_or_404(Image.objects.select_related("generation__prompt"), pk=pk)
    if str(pk) in request.GET.getlist("reference_images"):
        return no_store(HttpResponse(status=204))
    response = no_store(render(request, "generations/studio.html#reference-chip", {"image": image}))
    return trigger_client_event(response, "form-changed", after="settle")
