"""The studio: the prompt form, self-updating job cards, the shared gallery, the balance badge."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import trigger_client_event

from . import credits, engine, media
from .api import serve_image
from .catalog import NAMES, model_ids
from .forms import (
    GenerationForm,
    check_upload_storage,
    clean_idempotency_key,
    discard_uploads,
    first_error,
    parse_id,
    reference_images,
    reference_uploads,
)
from .models import Generation, Image, LedgerEntry, Reference
from .providers import Unsupported

GALLERY_PAGE = 60
JOBS_SHOWN = 12


def visible_generations():
    """Everything the team made: the history and gallery are shared by design."""
    return Generation.objects.select_related("prompt", "account", "user").prefetch_related("images")


def own_generation(request, pk: int) -> Generation:
    return get_object_or_404(visible_generations().filter(user=request.user), pk=pk)


def no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "private, no-store"
    response["Vary"] = "HX-Request, Cookie"
    return response


def studio_context(request) -> dict:
    initial = remix_of(request)
    model = initial.get("model") or (model_ids()[-1] if model_ids() else "")
    return {
        "initial": initial,
        "jobs": visible_generations().filter(user=request.user)[:JOBS_SHOWN],
        "gallery": Image.objects.gallery()[:GALLERY_PAGE],
        "account": credits.account_for(request.user),
        "idempotency_key": uuid.uuid4().hex,
        **options_context(model, initial.get("provider", ""), initial),
    }


def remix_of(request) -> dict:
    """`?remix=<id>`: the form filled from a team generation: same prompt, model, options and seed."""
    pk = parse_id(request.GET.get("remix", ""))
    source = visible_generations().filter(pk=pk).first() if pk else None
    if source is None:
        return {}
    params = source.params
    return {
        "prompt": source.prompt.text,
        "model": source.model,
        "provider": source.account.slug,
        "seed": source.seed,
        "aspect_ratio": params.get("aspect_ratio") or "1:1",
        "megapixels": params.get("megapixels") or 1.0,
        "output_format": params.get("output_format") or "jpeg",
        "n": source.n,
    }


def options_context(model: str, provider: str = "", initial: dict | None = None) -> dict:
    """What the form offers for one model: the accounts that serve it and the union of their options
    (or one account's, when the user picked it)."""
    accounts = engine.accounts_serving(model)
    chosen = [a for a in accounts if a.slug == provider] or accounts
    specs = [a.adapter_class.models[model] for a in chosen]
    union = lambda attr: sorted({v for s in specs for v in getattr(s, attr)}, key=str)  # noqa: E731
    ratios = (
        union("aspect_ratios")
        if all(s.aspect_ratios for s in specs)
        else ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "4:5", "5:4"]
    )
    safety = [s.safety_tolerance for s in specs if s.safety_tolerance]
    return {
        "initial": initial or {"aspect_ratio": "1:1", "megapixels": 1.0, "output_format": "jpeg", "n": 1},
        "model": model,
        "model_names": [(m, NAMES.get(m, m)) for m in model_ids()],
        "accounts": accounts,
        "provider": provider if provider in {a.slug for a in accounts} else "",
        "ratios": ratios,
        "megapixels": sorted({mp for s in specs for mp in s.megapixels}),
        "formats": union("output_formats"),
        "max_n": max((s.max_n for s in specs), default=1),
        "max_refs": max((s.max_reference_images for s in specs), default=0),
        "safety": (min(lo for lo, _ in safety), max(hi for _, hi in safety)) if safety else None,
        "upsampling": any(s.prompt_upsampling for s in specs),
        "seeded": any(s.seed for s in specs),
    }


@require_GET
@login_required
def studio(request):
    return no_store(render(request, "generations/studio.html", studio_context(request)))


@require_GET
@login_required
def model_options(request):
    model = request.GET.get("model", "")
    if model not in model_ids():
        raise Http404
    context = options_context(model, request.GET.get("provider", ""))
    return no_store(render(request, "generations/studio.html#model-options", context))


@require_GET
@login_required
def quote(request):
    """The price of what the form says now, and what would remain: shown live under the button."""
    data = request.GET.copy()
    data["prompt"] = data.get("prompt") or "price check"  # the price does not depend on the words
    form = GenerationForm(data)
    context = {"account": credits.account_for(request.user)}
    if form.is_valid():
        try:
            picked = reference_images(request.GET.getlist("reference_images"))
            own = reference_uploads(request.GET.getlist("reference_uploads"), request.user)
            generation_request = form.to_request(*media.reference_keys(picked, own))
            account, price = engine.choose_account(
                generation_request, form.cleaned_data.get("provider") or None
            )
            remaining = context["account"].available - price.total
            context.update(price=price.total, via=account.slug, remaining=remaining, shortfall=-remaining)
        except credits.Refusal as refusal:
            context["problem"] = refusal.message
        except Unsupported as exc:
            context["problem"] = exc.message
    else:
        context["problem"] = first_error(form)[1]
    return no_store(render(request, "generations/studio.html#quote", context))


@require_POST
@login_required
def generate(request):
    """Create from the studio form. Uploads are stored only once everything else checked out, and deleted
    again when the create is refused, so a refused Generate leaves no files behind."""
    form = GenerationForm(request.POST)
    key = clean_idempotency_key(request.POST.get("idempotency_key", ""))
    problem = None
    if key is None:
        problem = "The form is out of date: reload the page and try again."
    elif not form.is_valid():
        problem = first_error(form)[1]
    else:
        files = request.FILES.getlist("reference_files")
        stored = []
        try:
            picked = reference_images(request.POST.getlist("reference_images"))
            kept = reference_uploads(request.POST.getlist("reference_uploads"), request.user)
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
                    form.to_request(*media.reference_keys(picked, kept + stored)),
                    provider=form.cleaned_data.get("provider") or None,
                    idempotency_key=key,
                )
        except (Unsupported, media.MediaError) as exc:
            problem = exc.message
        except engine.CreateError as exc:
            problem = exc.refusal.message
        else:
            if not created:  # the first request's job stands, with the first request's uploads
                discard_uploads(stored)
        if problem:
            discard_uploads(stored)
    if problem:
        if not request.htmx:
            messages.error(request, problem)
            return HttpResponseRedirect(reverse("studio"))
        response = render(request, "generations/studio.html#form-error", {"problem": problem})
        response["HX-Retarget"] = "#form-error"
        response["HX-Reswap"] = "outerHTML"
        return response
    if not request.htmx:
        return HttpResponseRedirect(reverse("studio"))
    response = render(
        request,
        "generations/studio.html#created",
        {"job": visible_generations().get(pk=generation.pk), "idempotency_key": uuid.uuid4().hex},
    )
    if not created:  # a double click: the first click's card is already on the page
        response["HX-Reswap"] = "none"
    return trigger_client_event(no_store(response), "credits-changed")


@require_GET
@login_required
def job_card(request, pk: int):
    job = get_object_or_404(visible_generations(), pk=pk)
    response = no_store(render(request, "generations/studio.html#job-card", {"job": job}))
    if job.is_terminal and request.GET.get("was") != "terminal":
        # The job just finished: the gallery and the balance change with it.
        trigger_client_event(response, "gallery-changed")
        trigger_client_event(response, "credits-changed")
    return response


@require_POST
@login_required
def cancel(request, pk: int):
    job = own_generation(request, pk)
    engine.cancel(job, request.user)
    job = visible_generations().get(pk=pk)
    if not request.htmx:
        return HttpResponseRedirect(reverse("studio"))
    return trigger_client_event(
        no_store(render(request, "generations/studio.html#job-card", {"job": job})), "credits-changed"
    )


@require_GET
@login_required
def gallery(request):
    """New gallery images since `after` (204 when none), or an older page `before`."""
    images = Image.objects.gallery()
    after = parse_id(request.GET.get("after", ""), minimum=0)
    before = parse_id(request.GET.get("before", ""))
    if after is not None:
        new = list(images.filter(id__gt=after)[:GALLERY_PAGE])
        if not new:
            return no_store(HttpResponse(status=204))
        return no_store(
            render(request, "generations/studio.html#gallery-new", {"gallery": new, "newest": new[0].pk})
        )
    if before:
        images = images.filter(id__lt=before)
    return no_store(
        render(request, "generations/studio.html#gallery-page", {"gallery": images[:GALLERY_PAGE]})
    )


@require_GET
@login_required
def credit_badge(request):
    return no_store(
        render(
            request, "generations/studio.html#credit-badge", {"account": credits.account_for(request.user)}
        )
    )


@require_GET
@login_required
def credits_page(request):
    entries = LedgerEntry.objects.filter(user=request.user).select_related("generation__prompt", "admin")[
        :200
    ]
    context = {"entries": entries, "account": credits.account_for(request.user)}
    return no_store(render(request, "generations/credits.html", context))


@require_GET
@login_required
def generation_page(request, pk: int):
    job = get_object_or_404(visible_generations().prefetch_related("events"), pk=pk)
    return no_store(
        render(
            request, "generations/generation.html", {"job": job, "account": credits.account_for(request.user)}
        )
    )


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
    return serve_image(get_object_or_404(Image, pk=pk), "file")


@require_GET
def reference_upload(request, token: str):
    """An uploaded reference image for a provider, by signed short-lived link."""
    pk = media.upload_from_token(token)
    if pk is None:
        raise Http404
    upload = get_object_or_404(Reference, pk=pk)
    response = FileResponse(upload.file.open("rb"), content_type=f"image/{upload.format}")
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_GET
@login_required
def reference_chip(request, pk: int):
    """ "Use as reference" on a gallery image: a removable chip carrying the image id into the form."""
    return no_store(
        render(request, "generations/studio.html#reference-chip", {"image": get_object_or_404(Image, pk=pk)})
    )
