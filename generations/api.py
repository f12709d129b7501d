"""JSON API v1 (contract.md): token or session auth, one error shape, the generation object."""

from __future__ import annotations

import base64
import functools
import json

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Prefetch, Subquery
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt

from accounts import access

from . import credits, engine, media, sweeper
from .catalog import catalog
from .forms import (
    GenerationForm,
    check_upload_storage,
    clean_idempotency_key,
    discard_uploads,
    first_error,
    parse_id,
    upload_storage_used,
)
from .models import ApiToken, Generation, Image, ProviderAccount, Reference
from .refusal import Refusal

PAGE = 50
User = get_user_model()
# The JSON type each create field must have (contract.md). The form alone would coerce: a list prompt to its
# repr, "yes" to True for a boolean. null means "not given".
FIELD_TYPES = {
    "prompt": str,
    "model": str,
    "provider": str,
    "n": int,
    "aspect_ratio": str,
    "megapixels": (int, float),
    "width": int,
    "height": int,
    "seed": int,
    "output_format": str,
    "safety_tolerance": int,
    "prompt_upsampling": bool,
    "reference_images": list,
    "reference_uploads": list,
}


def error(status: int, code: str, message: str, field: str | None = None, **headers) -> JsonResponse:
    body = {"code": code, "message": message}
    if field:
        body["field"] = field
    response = JsonResponse({"error": body}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = str(value)
    return response


def refused(refusal: Refusal, field: str | None = None) -> JsonResponse:
    """A Refusal as the contract's JSON error, with Retry-After when it says when to try again."""
    headers = {"Retry_After": refusal.retry_after} if refusal.retry_after else {}
    return error(refusal.status, refusal.code, refusal.message, field or refusal.field, **headers)


def api_view(*methods: str):
    """Allow `methods`; authenticate by `Authorization: Bearer <token>`, or by the session (whose unsafe
    requests keep Django's CSRF check); answer JSON errors, never HTML."""

    def decorate(view):
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs):
            if request.method not in methods:
                return error(
                    405, "method_not_allowed", f"Use {' or '.join(methods)}.", Allow=", ".join(methods)
                )
            return authenticated(view, request, *args, **kwargs)

        return wrapper

    return decorate


def authenticated(view, request: HttpRequest, *args, **kwargs):
    """Run `view` for a token holder or a session user; anyone else gets a JSON 401."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        user = ApiToken.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            return error(401, "unauthorized", "The API token is missing, malformed or revoked.")
        request.user = user
    elif request.user.is_authenticated:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            from django.middleware.csrf import CsrfViewMiddleware

            reason = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
            if reason is not None:
                return error(403, "csrf", "CSRF check failed; send the X-CSRFToken header.")
    else:
        return error(401, "unauthorized", "Send Authorization: Bearer <token>.")
    if request.method not in access.SAFE_METHODS and not access.may_spend(request.user):
        return error(403, "forbidden", access.VIEWER_REFUSAL)
    try:
        return view(request, *args, **kwargs)
    except Http404:
        return error(404, "not_found", "Not found.")
    except Refusal as refusal:
        return refused(refusal)


def not_found(request, path: str = ""):
    return error(404, "not_found", f"There is no API endpoint /api/v1/{path}.")


def me_payload(user) -> dict:
    account = credits.account_for(user)
    limits = credits.limits_for(user)
    from django.utils import timezone

    from .models import Usage

    now = timezone.now()
    day = Usage.objects.filter(user=user, account=None, window=credits.day_window(now)).first()
    month = Usage.objects.filter(user=user, account=None, window=credits.month_window(now)).first()
    return {
        "username": user.get_username(),
        "role": access.role_of(user),
        "credits": {"balance": account.available, "reserved": account.reserved},
        "quota": {
            "concurrent": {
                "limit": limits["concurrent"],
                "used": Generation.objects.for_user(user).in_flight().count(),
            },
            "daily_images": {"limit": limits["daily_images"], "used": day.images if day else 0},
            "monthly_credits": {"limit": limits["monthly_credits"], "used": month.credits if month else 0},
        },
    }


def generation_payload(generation: Generation, request: HttpRequest, images_url: str = "") -> dict:
    """The generation object (contract.md). A list passes `images_url`, the absolute address of
    /api/v1/images/, built once for the page (each build checks the host against ALLOWED_HOSTS)."""
    images_url = images_url or request.build_absolute_uri("/api/v1/images/")
    error_body = (
        {"code": generation.error_code, "message": generation.error_message}
        if generation.status == "failed"
        else None
    )
    return {
        "id": generation.pk,
        "status": generation.status,
        "prompt": generation.prompt.text,
        "model": generation.model,
        "provider": generation.account.slug,
        "user": generation.user.get_username(),
        "params": {k: v for k, v in generation.params.items() if k != "reference_urls"},
        "n": generation.n,
        "seed": generation.seed,
        "progress": generation.progress,
        "created_at": generation.created_at.isoformat(),
        "started_at": generation.started_at.isoformat() if generation.started_at else None,
        "finished_at": generation.finished_at.isoformat() if generation.finished_at else None,
        "credits": {
            "reserved": generation.credits_reserved,
            "charged": generation.credits_charged,
            "refunded": generation.credits_refunded,
        },
        "provider_cost": generation.provider_cost or None,
        "error": error_body,
        "images": [image_payload(image, images_url) for image in generation.shown_images],
    }


def image_payload(image: Image, images_url: str) -> dict:
    return {
        "id": image.pk,
        "url": f"{images_url}{image.pk}/file",
        "thumbnail_url": f"{images_url}{image.pk}/thumbnail",
        "width": image.width,
        "height": image.height,
        "seed": image.seed,
        "format": image.format,
        "bytes": image.bytes,
    }


# What a generation object reads (generation_payload), for a list to load nothing else: a job row also holds
# the engine's timestamps, leases and provider URLs, a user row the password hash, an account row its key.
PAYLOAD_FIELDS = (
    *("status", "model", "params", "n", "seed", "progress", "created_at", "started_at", "finished_at"),
    *("credits_reserved", "credits_charged", "credits_refunded", "provider_cost", "error_code"),
    *("error_message", "prompt__text", "account__slug", "user__username"),
)
IMAGE_FIELDS = ("generation_id", "index", "width", "height", "seed", "format", "bytes")


def generations_qs():
    """Generations with what their payload needs; soft-deleted images are left out. The images are put in
    a list (`shown_images`) rather than the related manager's cache, which builds a QuerySet per job."""
    images = Image.objects.visible().order_by("index")
    return Generation.objects.select_related("prompt", "account", "user").prefetch_related(
        Prefetch("images", queryset=images, to_attr="shown_images")
    )


def listed_qs():
    """generations_qs loading only what a generation object shows (a page of 50 spent as long converting
    and building what it never read as building its JSON)."""
    images = Image.objects.visible().order_by("index").only(*IMAGE_FIELDS)
    return (
        Generation.objects.select_related("prompt", "account", "user")
        .only(*PAYLOAD_FIELDS)
        .prefetch_related(Prefetch("images", queryset=images, to_attr="shown_images"))
    )


@api_view("GET")
def me(request):
    return JsonResponse(me_payload(request.user))


@api_view("GET")
def models(request):
    return JsonResponse(catalog(), safe=False)


@api_view("GET", "POST")
def generations(request):
    return create(request) if request.method == "POST" else listing(request)


def listing(request):
    """Newest first, by keyset (`?cursor=`), never OFFSET. Every filter is one condition that an index of
    its own serves (models.py), and a name given (?user=, ?provider=) is matched in a subquery, not looked
    up first: any page is the token check, the page (`newest`) and its images, 3 queries."""
    rows = listed_qs()
    truthy = ("1", "true")
    if request.GET.get("mine") in truthy:
        rows = rows.filter(user=request.user)
    if status := request.GET.get("status"):
        rows = rows.filter(status=status)
    if username := request.GET.get("user"):
        rows = rows.filter(user=Subquery(User.objects.filter(username=username).values("pk")[:1]))
    if model := request.GET.get("model"):
        rows = rows.filter(model=model)
    if provider := request.GET.get("provider"):
        rows = rows.filter(account=Subquery(ProviderAccount.objects.filter(slug=provider).values("pk")[:1]))
    if request.GET.get("favorite") in truthy:
        liked = Image.objects.visible().filter(favorited_by__user=request.user)
        rows = rows.filter(pk__in=liked.values("generation_id"))
    if "collection" in request.GET:
        collection = parse_id(request.GET["collection"])
        if collection is None:
            return error(400, "invalid", "collection must be a collection id.", "collection")
        kept = Image.objects.visible().filter(collection_items__collection=collection)
        rows = rows.filter(pk__in=kept.values("generation_id"))
    if q := request.GET.get("q"):
        rows = rows.search(q)  # last: newest() pages a search best when nothing is filtered after it
    before = None
    if cursor := request.GET.get("cursor"):
        try:
            before = parse_id(base64.urlsafe_b64decode(cursor.encode()).decode("ascii"))
        except ValueError:  # not base64, or not ASCII inside
            before = None
        if before is None:
            return error(400, "invalid", "The cursor is not one this API gave out.", "cursor")
    page = list(rows.newest(PAGE + 1, before))
    more = len(page) > PAGE
    page = page[:PAGE]
    cursor = base64.urlsafe_b64encode(str(page[-1].pk).encode()).decode() if more else None
    images_url = request.build_absolute_uri("/api/v1/images/")
    results = [generation_payload(g, request, images_url) for g in page]
    return JsonResponse({"results": results, "next": cursor})


def json_type(expected) -> str:
    names = {str: "string", int: "integer", bool: "boolean", list: "array"}
    return "number" if isinstance(expected, tuple) else names[expected]


def is_json(request: HttpRequest) -> bool:
    return request.content_type.lower() == "application/json"


def create(request):
    if request.body and not is_json(request):
        return error(
            415,
            "unsupported_media_type",
            f"Send the body as Content-Type: application/json, not {request.content_type or 'none'}.",
        )
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:  # not JSON, or not UTF-8
        return error(400, "invalid", "The body is not JSON.")
    except RecursionError:
        return error(400, "invalid", "The body is nested too deeply.")
    if not isinstance(data, dict):
        return error(400, "invalid", "The body must be a JSON object.")
    unknown = set(data) - set(GenerationForm.base_fields)
    if unknown:
        return error(400, "invalid", f"Unknown field {sorted(unknown)[0]!r}.", sorted(unknown)[0])
    for name, value in data.items():
        expected = FIELD_TYPES.get(name)
        if value is None or expected is None:
            continue
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            return error(400, "invalid", f"{name} must be a JSON {json_type(expected)}.", name)
    data = {name: value for name, value in data.items() if value is not None}
    form = GenerationForm(data, user=request.user)  # the studio's form: one create path, one set of checks
    if not form.is_valid():
        field, message = first_error(form)
        return error(400, "invalid", message, field)
    key = clean_idempotency_key(request.headers.get("Idempotency-Key", ""))
    if key is None:
        return error(400, "invalid", "Idempotency-Key is at most 255 printable characters.")
    generation, created = engine.create(  # a Refusal is answered by `authenticated`
        request.user,
        form.to_request(),
        provider=form.cleaned_data.get("provider") or None,
        idempotency_key=key,
    )
    if created:
        generation.shown_images = []  # as created: its prompt, account and user are the ones in hand
    else:
        generation = generations_qs().get(pk=generation.pk)  # a replay answers with the job as it is now
    return JsonResponse(generation_payload(generation, request), status=202)


@api_view("GET")
def generation(request, pk: int):
    found = get_object_or_404(generations_qs(), pk=pk)
    sweeper.nudge([found])
    return JsonResponse(generation_payload(found, request))


@api_view("POST")
def cancel(request, pk: int):
    rows = generations_qs() if request.user.is_staff else generations_qs().filter(user=request.user)
    generation = get_object_or_404(rows, pk=pk)
    if not engine.cancel(generation, request.user):
        return error(409, "conflict", engine.cancel_refusal(generation))
    return JsonResponse(generation_payload(generations_qs().get(pk=pk), request))


@api_view("GET")
def image_file(request, pk: int, variant: str):
    return serve_image(get_object_or_404(Image, pk=pk), variant)


def serve_image(image: Image, variant: str, redirect: bool = True) -> HttpResponse:
    """The bytes, after the caller's access was checked, from disk or a bucket (`media.serve`)."""
    field = image.thumbnail if variant == "thumbnail" else image.file
    content_type = "image/jpeg" if variant == "thumbnail" else image.content_type
    extension = "jpg" if variant == "thumbnail" or image.format == "jpeg" else image.format
    suffix = "-thumbnail" if variant == "thumbnail" else ""
    filename = f"fluxweb-{image.generation_id}-{image.index}{suffix}.{extension}"
    return media.serve(field, content_type, filename, redirect=redirect)


def reference_payload(reference: Reference) -> dict:
    return {
        "id": reference.pk,
        "width": reference.width,
        "height": reference.height,
        "format": reference.format,
        "created_at": reference.created_at.isoformat(),
    }


@api_view("GET", "POST")
def references(request):
    """GET /api/v1/references: the caller's uploads and the storage they take against the limit.
    POST (multipart, field "file"): a reference image for later generations."""
    if request.method == "GET":
        uploads = Reference.objects.filter(user=request.user).order_by("-id")
        return JsonResponse(
            {
                "results": [reference_payload(r) for r in uploads],
                "storage": {
                    "used": upload_storage_used(request.user),
                    "limit": settings.FLUXWEB_MAX_UPLOAD_STORAGE_BYTES,
                },
            }
        )
    upload = request.FILES.get("file")
    if upload is None:
        return error(400, "invalid", 'Send the image as multipart form field "file".', "file")
    try:
        check_upload_storage(request.user, upload.size)
        reference = media.store_reference(upload, request.user)
    except media.MediaError as exc:
        return refused(exc, field="file")
    return JsonResponse(reference_payload(reference), status=201)


def upload_in_use(upload: Reference) -> int | None:
    """The id of a job of the upload's owner in flight that uses it (its file must stay until the job
    ends), or None. The API's DELETE and the studio's Delete upload both ask this."""
    key = f"upload:{upload.pk}"
    for generation in Generation.objects.for_user(upload.user_id).in_flight().only("params"):
        if key in (generation.params.get("reference_urls") or []):
            return generation.pk
    return None


@api_view("DELETE")
def reference(request, pk: int):
    """DELETE /api/v1/references/{id}: free the storage of one's own upload, unless a job in flight uses it."""
    upload = get_object_or_404(Reference, pk=pk, user=request.user)
    in_use = upload_in_use(upload)
    if in_use:
        return error(409, "conflict", f"Generation {in_use} in flight uses this upload; try once it ends.")
    discard_uploads([upload])
    return HttpResponse(status=204)
