"""Actions that make new jobs from a gallery image (issue 8, item 5): Rerun with the same seed, Variations
with new seeds, and Compare providers: the same prompt and seed on every enabled account serving the model,
grouped by one `Generation.comparison` key, and the page that shows them side by side until all have ended.
Every create goes through `engine.create` with the form's idempotency key, so a double click makes one set."""

from __future__ import annotations

import random
import re
import secrets
from dataclasses import replace

from django.contrib import messages
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from accounts.access import members_only

from . import archive, catalog, engine
from .forms import clean_idempotency_key, parse_id
from .gallery import Scope, no_store, visible_image
from .login import login_required
from .models import Generation, Image, Reference
from .providers import Unsupported
from .refusal import Refusal

MAX_VARIATIONS = 4
COMPARISON = re.compile(r"[0-9a-f]{32}")


def reference_megapixels(keys) -> tuple[float, ...]:
    """The priced size of each reference key ("image:12", "upload:3") of a job being made again."""
    wanted = {"image": [], "upload": []}
    for key in keys:
        kind, _, pk = str(key).partition(":")
        if kind in wanted and parse_id(pk):
            wanted[kind].append(int(pk))
        else:
            raise Unsupported("A reference image of this job can no longer be read.", "reference_images")
    sizes = {f"image:{i.pk}": i for i in Image.objects.filter(pk__in=wanted["image"])}
    sizes |= {f"upload:{r.pk}": r for r in Reference.objects.filter(pk__in=wanted["upload"])}
    if len(sizes) < len(set(keys)):
        raise Unsupported("A reference image of this job no longer exists.", "reference_images")
    return tuple(sizes[k].width * sizes[k].height / (1024 * 1024) for k in keys)


def again(image: Image, *, seed: int | None, n: int = 1):
    """The request that made `image`, to be made again with `seed` and `n` images."""
    request = engine.request_of(image.generation)
    return replace(request, seed=seed, n=n, reference_megapixels=reference_megapixels(request.reference_urls))


def make(request, generation_request, provider: str | None, key: str):
    return engine.create(request.user, generation_request, provider=provider, idempotency_key=key)


def action_done(request, jobs: list, text: str, compare_url: str = "") -> HttpResponse:
    if not request.htmx:
        messages.success(request, text)
        return HttpResponseRedirect(reverse("studio"))
    scope = Scope.from_query(request.POST)
    response = render(
        request,
        "generations/lightbox.html#made",
        {"jobs": jobs, "text": text, "on_studio": scope.embed, "compare_url": compare_url},
    )
    trigger_client_event(response, "jobs-created", {"jobs": [job.pk for job in jobs]})
    return trigger_client_event(no_store(response), "credits-changed")


def action_refused(request, text: str) -> HttpResponse:
    if not request.htmx:
        messages.error(request, text)
        return HttpResponseRedirect(reverse("lightbox", args=[request.resolver_match.kwargs["pk"]]))
    return no_store(
        render(
            request,
            "generations/gallery.html#status",
            {"text": text, "problem": True, "status_id": "lightbox-status"},
        )
    )


def same_provider(image: Image) -> str | None:
    account = image.generation.account
    return account.slug if account.enabled and account.has_key else None


@require_POST
@login_required
@members_only
def rerun(request, pk: int):
    """The same request with the same seed on the same provider account (when it still serves)."""
    image = visible_image(pk)
    key = clean_idempotency_key(request.POST.get("idempotency_key", "")) or ""
    try:
        seed = archive.seed_of(image)
        job, _ = make(request, again(image, seed=seed), same_provider(image), key)
    except Refusal as exc:
        return action_refused(request, exc.message)
    return action_done(request, [job], f"Rerun queued with seed {seed if seed is not None else 'random'}.")


@require_POST
@login_required
@members_only
def variations(request, pk: int):
    """N images of the same request with new seeds: one job per seed, so each can be rerun exactly."""
    image = visible_image(pk)
    n = parse_id(request.POST.get("n", "")) or 1
    n = min(n, MAX_VARIATIONS)
    key = clean_idempotency_key(request.POST.get("idempotency_key", "")) or ""
    provider = same_provider(image)
    jobs = []
    try:
        for i in range(n):
            seed = random.randrange(2**31)
            job, _ = make(request, again(image, seed=seed), provider, f"{key}-v{i}" if key else "")
            jobs.append(job)
    except Refusal as exc:
        if not jobs:
            return action_refused(request, exc.message)
        return action_done(request, jobs, f"{len(jobs)} of {n} variations queued; {exc.message}")
    return action_done(request, jobs, f"{n} variations queued, each with a new seed.")


@require_POST
@login_required
@members_only
def compare_providers(request, pk: int):
    """The same prompt and seed sent to every enabled account serving the model, one job each, grouped by
    a shared `comparison` key; the compare page shows them side by side."""
    image = visible_image(pk)
    generation = image.generation
    key = clean_idempotency_key(request.POST.get("idempotency_key", "")) or ""
    seed = archive.seed_of(image)
    if seed is None:
        seed = random.randrange(2**31)
    try:
        base = again(image, seed=seed)
    except Refusal as exc:
        return action_refused(request, exc.message)
    jobs, problems = [], []
    for account in catalog.accounts_serving(generation.model):
        spec = account.adapter_class.models[generation.model]
        wanted = base if spec.seed else replace(base, seed=None)
        try:
            job, _ = make(request, wanted, account.slug, f"{key}-{account.slug}"[:255] if key else "")
        except Refusal as exc:
            problems.append(f"{account.slug}: {exc.message}")
        else:
            jobs.append(job)
    if not jobs:
        return action_refused(request, " ".join(problems) or "No enabled provider account serves this model.")
    token = next((job.comparison for job in jobs if job.comparison), "") or secrets.token_hex(16)
    Generation.objects.filter(pk__in=[job.pk for job in jobs], user=request.user, comparison="").update(
        comparison=token
    )
    url = reverse("compare", args=[token])
    if request.htmx and Scope.from_query(request.POST).embed:
        # On the studio the jobs join "Your jobs" live (jobs-created) and the page stays; the comparison is
        # a link away. Elsewhere the compare page opens.
        text = f"Comparing on {len(jobs)} provider account{'s' if len(jobs) != 1 else ''}."
        if problems:
            text += " Not sent to " + "; ".join(problems) + "."
        return action_done(request, jobs, text, compare_url=url)
    for problem in problems:
        messages.warning(request, f"Not sent to {problem}")
    response = HttpResponseClientRedirect(url) if request.htmx else HttpResponseRedirect(url)
    if not request.htmx:
        return response
    trigger_client_event(response, "jobs-created", {"jobs": [job.pk for job in jobs]})
    return trigger_client_event(response, "credits-changed")


@require_GET
@login_required
def compare(request, token: str):
    """The jobs of one comparison side by side; the grid re-requests itself until every job has ended."""
    if not COMPARISON.fullmatch(token):
        raise Http404
    jobs = list(
        Generation.objects.filter(comparison=token)
        .select_related("prompt", "account", "user")
        .prefetch_related("images")
        .order_by("account__priority", "id")
    )
    if not jobs:
        raise Http404
    for job in jobs:
        job.visible_images = [i for i in job.images.all() if i.deleted_at is None]
        job.taken = (job.finished_at - job.created_at).total_seconds() if job.finished_at else None
    context = {
        "token": token,
        "jobs": jobs,
        "first": jobs[0],
        "running": any(not job.is_terminal for job in jobs),
    }
    template = "generations/compare.html#grid" if request.htmx else "generations/compare.html"
    return no_store(render(request, template, context))
