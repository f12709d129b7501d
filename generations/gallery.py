"""The team gallery (its page, and the same section on the studio), the lightbox, favorites, collections,
bulk actions and the zip (issue 8, items 3-5 and 7). The actions that make new jobs from an image are in
remakes.py, the prompt history in history.py.

Every list is a keyset over `Image.id` (or `Prompt.last_used_at, id`), never an OFFSET, so the thousandth
page costs what the first does; a page of cards is one query (the viewer's favorites and the lightbox's
neighbours are subqueries of it). What the viewer looks at (a view and its filters) is a `Scope`, read from the query string and written
back into every link, so the lightbox's arrows, the new-image poll and the next page all stay in the view.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, fields, replace
from datetime import date, datetime, time, timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import CharField, Count, Exists, OuterRef, Q, Subquery, Value
from django.db.models.signals import post_delete, post_save
from django.http import Http404, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import trigger_client_event

from accounts.access import keeps_metadata, may_spend, members_only
from accounts.access import refusal as access_refusal

from . import archive, media
from .catalog import NAMES, model_ids
from .forms import is_text, parse_id
from .login import login_required
from .models import (
    Collection,
    CollectionItem,
    Favorite,
    Generation,
    Image,
    Prompt,
    ProviderAccount,
)
from .shared import SharedList

PAGE = 40
MAX_SELECTED = 1000  # ids one bulk action reads; a zip holds at most FLUXWEB_ZIP_MAX_IMAGES of them
MAX_TEXT = 200
FORMATS = ("jpeg", "png", "webp")
SLUG = re.compile(r"[-a-zA-Z0-9_]{1,50}")


def count(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def zip_cap() -> int:
    return settings.FLUXWEB_ZIP_MAX_IMAGES


def no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "private, no-store"
    response["Vary"] = "HX-Request, HX-Target, Cookie"
    return response


def clean_text(value) -> str:
    if not isinstance(value, str) or not is_text(value) or "\x00" in value:
        return ""
    return value.strip()[:MAX_TEXT]


def clean_date(value) -> date | None:
    """A YYYY-MM-DD within years 1900-9000 (so a day's end never overflows), or None."""
    try:
        day = date.fromisoformat(value) if isinstance(value, str) and len(value) == 10 else None
    except ValueError:
        return None
    return day if day and 1900 <= day.year <= 9000 else None


def start_of(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


# -- what the viewer looks at ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scope:
    """A view (team, mine, favorites or one collection) and its filters; `embed` is the studio's copy."""

    view: str = "team"
    collection: int | None = None
    q: str = ""
    member: int | None = None
    model: str = ""
    provider: str = ""
    start: date | None = None
    end: date | None = None
    status: str = ""
    format: str = ""
    embed: bool = False

    PARAMS = {"start": "from", "end": "to"}  # the query string's names where they differ

    @classmethod
    def from_query(cls, query) -> Scope:
        collection = parse_id(query.get("collection", ""))
        view = query.get("view", "")
        if collection:
            view = "collection"
        elif view not in ("team", "mine", "favorites"):
            view = "team"
        model = clean_text(query.get("model", ""))
        provider = clean_text(query.get("provider", ""))
        status = query.get("status", "")
        fmt = query.get("format", "")
        return cls(
            view=view,
            collection=collection,
            q=clean_text(query.get("q", "")),
            member=parse_id(query.get("member", "")),
            model=model if model in model_ids() else "",
            provider=provider if SLUG.fullmatch(provider) else "",
            start=clean_date(query.get("from")),
            end=clean_date(query.get("to")),
            status=status if status in Generation.Status.values else "",
            format=fmt if fmt in FORMATS else "",
            embed=query.get("embed") == "studio",
        )

    def params(self) -> dict[str, str]:
        """The query string that shows this scope again: only what differs from the team's gallery."""
        out = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "view" and (value == "team" or self.collection):
                continue
            if value in (None, "", False):
                continue
            if field.name == "embed":
                value = "studio"
            out[self.PARAMS.get(field.name, field.name)] = str(value)
        return out

    @property
    def query(self) -> str:
        return urlencode(self.params())

    @property
    def filtered(self) -> bool:
        return any(
            (self.q, self.member, self.model, self.provider, self.start, self.end, self.status, self.format)
        )

    def images(self, user):
        rows = Image.objects.gallery()
        if self.view == "mine":
            rows = rows.filter(user=user)
        elif self.view == "favorites":
            rows = rows.filter(favorited_by__user=user)
        elif self.view == "collection":
            rows = rows.filter(collection_items__collection_id=self.collection)
        if self.member:
            rows = rows.filter(user_id=self.member)
        if self.model:
            rows = rows.filter(model=self.model)
        if self.provider:
            # The account's id as a value (a scalar subquery), not a join: PostgreSQL joined, then sorted
            # every image of the account, where with a value it reads (account, created_at, id) in order.
            account = ProviderAccount.objects.filter(slug=self.provider).order_by().values("pk")[:1]
            rows = rows.filter(account=Subquery(account))
        if self.start:
            rows = rows.filter(created_at__gte=start_of(self.start))
        if self.end:
            rows = rows.filter(created_at__lt=start_of(self.end + timedelta(days=1)))
        if self.start or self.end:
            rows = rows.by_time()  # a date range pages by (created_at, id), inside the range from the start
        if self.status:
            rows = rows.of_status(self.status)
        if self.format:
            rows = rows.filter(format=self.format)
        if self.q:
            rows = rows.search(self.q)
        return rows


def cards(rows, user, limit: int, before: int | None = None) -> list[Image]:
    """The `limit` newest of `rows` after the image `before` (by id, or by time and id in a date range:
    ImageQuerySet.by_time), with what a card shows, in one query:
    ImageQuerySet.newest picks the page's ids from the filtered table alone and joins only those rows to
    their prompt, author and account (SQLite joins every match before it sorts: a common search word took
    390 ms at 100,000 images that way)."""
    page = with_favorite(rows.newest(limit, before), user)
    if rows._by_time:  # the poll's mark: any image newer than the page (ids need not follow created_at)
        page = page.annotate(mark=Subquery(Image.objects.order_by("-pk").values("pk")[:1]))
    return priced(list(page))


def newest_mark(images: list[Image]) -> int:
    """What the new-image poll asks to be after (`?after=`): the newest id on the page, or in a date range
    (whose page order is by time) the newest id of all when the page was made, so that no image already
    in the range comes back as new."""
    return max((getattr(image, "mark", image.pk) for image in images), default=0)


def with_favorite(rows, user):
    """Each row says whether `user` favorited it, in the same query."""
    return rows.annotate(is_favorite=Exists(Favorite.objects.filter(user=user, image=OuterRef("pk"))))


@dataclass(frozen=True)
class Option:
    pk: int
    name: str


def filter_options() -> dict[str, list[Option]]:
    """The members, provider accounts and collections the filters, the view tabs and the lightbox offer,
    from the cache every process shares (shared.SharedList), so that a gallery page is its cards' one
    query (issue 8: <= 3 with the session and the user). Any save or delete of those rows, in any process,
    makes every process load them again."""
    return OPTIONS.get()


def forget_options(**kwargs) -> None:
    OPTIONS.forget()


def load_options() -> dict[str, list[Option]]:
    """The options, in one query (a UNION)."""
    label = lambda kind: Value(kind, output_field=CharField())  # noqa: E731
    members = (
        get_user_model()
        .objects.filter(is_active=True)
        .order_by()
        .annotate(option_of=label("member"))
        .values_list("option_of", "pk", "username")
    )
    accounts = (
        ProviderAccount.objects.order_by()
        .annotate(option_of=label("provider"))
        .values_list("option_of", "pk", "slug")
    )
    collections = (
        Collection.objects.order_by()
        .annotate(option_of=label("collection"))
        .values_list("option_of", "pk", "name")
    )
    found: dict[str, list[Option]] = {"member": [], "provider": [], "collection": []}
    for kind, pk, name in members.union(accounts, collections, all=True):
        found[kind].append(Option(pk, name))
    for options in found.values():
        options.sort(key=lambda o: (o.name.lower(), o.pk))
    return found


OPTIONS = SharedList("gallery:options", load_options)
for sender in (Collection, ProviderAccount, get_user_model()):
    post_save.connect(forget_options, sender=sender, dispatch_uid=f"gallery-options-save-{sender.__name__}")
    post_delete.connect(
        forget_options, sender=sender, dispatch_uid=f"gallery-options-delete-{sender.__name__}"
    )


def priced(images: list) -> list:
    for image in images:
        image.cost = archive.cost_of(image)
    return images


def page_context(request, scope: Scope, before: int | None = None) -> dict:
    images = cards(scope.images(request.user), request.user, PAGE + 1, before)
    more = len(images) > PAGE
    images = images[:PAGE]
    return {
        "scope": scope,
        "images": images,
        "next_before": images[-1].pk if more else None,
        "newest": newest_mark(images),
    }


def section_context(request, scope: Scope, before: int | None = None) -> dict:
    """The whole gallery section: views, filters, bulk bar, a page of images and the lightbox."""
    context = page_context(request, scope, before)
    options = filter_options()
    collections = options["collection"]
    context.update(
        collections=collections,
        collection=next((c for c in collections if c.pk == scope.collection), None),
        members=options["member"],
        models=[(m, NAMES.get(m, m)) for m in model_ids()],
        providers=options["provider"],
        statuses=Generation.Status.choices,
        formats=FORMATS,
        zip_cap=zip_cap(),
    )
    context["tabs"] = [
        ("Team", "", scope.view == "team"),
        ("Mine", "view=mine", scope.view == "mine"),
        ("Favorites", "view=favorites", scope.view == "favorites"),
        *[(c.name, f"collection={c.pk}", c.pk == scope.collection) for c in collections],
    ]
    if scope.view == "collection" and context["collection"] is None:
        raise Http404
    return context


def studio_section(request) -> str:
    """The gallery section as the studio shows it (templatetags/gallery_tags.py)."""
    scope = Scope.from_query(request.GET)
    scope = replace(scope, embed=True)
    return render_to_string(
        "generations/gallery.html#section", section_context(request, scope), request=request
    )


@require_GET
@login_required
def gallery(request):
    """The page; for htmx, the part asked for: images newer than `after` (204 when none), the page older
    than `before`, the results of changed filters, or the whole section (a view tab on the studio)."""
    scope = Scope.from_query(request.GET)
    user = request.user
    if "after" in request.GET:
        after = parse_id(request.GET.get("after", ""), minimum=0) or 0
        new = cards(scope.images(user).filter(id__gt=after), user, PAGE)
        if not new:
            return no_store(HttpResponse(status=204))
        context = {"scope": scope, "images": new, "newest": newest_mark(new)}
        return no_store(render(request, "generations/gallery.html#new", context))
    before = parse_id(request.GET.get("before", ""))
    if request.htmx and before:
        context = page_context(request, scope, before)
        return no_store(render(request, "generations/gallery.html#cards", context))
    if request.htmx and request.htmx.target == "gallery-section":
        return no_store(render(request, "generations/gallery.html#section", section_context(request, scope)))
    if request.htmx:  # the filters' results (or any other fragment asked for: never the whole page)
        context = page_context(request, scope)
        response = render(request, "generations/gallery.html#results", context)
        if not scope.embed:  # the address holds the filters set, so a reload or a shared link shows them
            response["HX-Push-Url"] = reverse("gallery") + (f"?{scope.query}" if scope.query else "")
        return no_store(response)
    return no_store(render(request, "generations/gallery.html", section_context(request, scope, before)))


# -- the lightbox ---------------------------------------------------------------------------------------------
def visible_image(pk: int) -> Image:
    return get_object_or_404(Image.objects.gallery().select_related("generation__account"), pk=pk)


def lightbox_image(request, pk: int, scope: Scope) -> Image:
    """The image with, in the same query, whether the viewer favorited it and its neighbours in the scope:
    the next newer and the next older image of the same view and filters (keyset, never OFFSET)."""
    rows = scope.images(request.user).order_by()
    here = {"pk": OuterRef("pk"), "moment": OuterRef("created_at")}
    found = with_favorite(Image.objects.gallery(), request.user).annotate(
        newer=Subquery(rows.newer_than(**here).order_by(*rows.oldest_first).values("pk")[:1]),
        older=Subquery(rows.older_than(**here).order_by(*rows.keyset).values("pk")[:1]),
    )
    return get_object_or_404(found, pk=pk)


def lightbox_context(request, image: Image, scope: Scope) -> dict:
    generation = image.generation
    taken = (
        (generation.finished_at - generation.created_at).total_seconds() if generation.finished_at else None
    )
    return {
        "scope": scope,
        "image": image,
        "generation": generation,
        "seed": archive.seed_of(image),
        "cost": archive.cost_of(image),
        "taken": taken,
        "newer": image.newer,
        "older": image.older,
        "favorite": image.is_favorite,
        "collections": filter_options()["collection"],
        "own": image.user_id == request.user.pk,
        "idempotency_key": uuid.uuid4().hex,
    }


@require_GET
@login_required
def lightbox(request, pk: int):
    """One image large, with its metadata and actions; prev/next are its neighbours in the scope."""
    scope = Scope.from_query(request.GET)
    context = lightbox_context(request, lightbox_image(request, pk, scope), scope)
    template = "generations/lightbox.html#body" if request.htmx else "generations/lightbox.html"
    return no_store(render(request, template, context))


@require_GET
@login_required
def download(request, pk: int):
    """The original as stored, our metadata embedded (sent like any image, by the web server when
    FLUXWEB_SENDFILE_HEADER is set), or with `?metadata=0` the same bytes without our metadata. With no
    `metadata` asked for, the person's setting decides (accounts: "Downloads keep the embedded metadata")."""
    image = visible_image(pk)
    wanted = request.GET.get("metadata")
    if wanted != "0" and (wanted is not None or keeps_metadata(request.user)):
        return media.serve(image.file, image.content_type, archive.file_name(image), attachment=True)
    data = archive.strip_metadata(media.read_bytes(image.file), image.format)
    response = HttpResponse(data, content_type=image.content_type)
    response["Cache-Control"] = "private, no-store"
    return media.as_media(response, archive.file_name(image), attachment=True)


# -- favorites ------------------------------------------------------------------------------------------------
def back(request, fallback: str = "") -> HttpResponseRedirect:
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = ""
    return HttpResponseRedirect(target or fallback or reverse("gallery"))


def set_favorite(user, image_ids: list[int], on: bool) -> None:
    if on:
        Favorite.objects.bulk_create(
            [Favorite(user=user, image_id=pk) for pk in image_ids], ignore_conflicts=True
        )
    else:
        Favorite.objects.filter(user=user, image_id__in=image_ids).delete()


@require_POST
@login_required
@members_only
def favorite(request, pk: int):
    """Toggle the viewer's favorite; the button comes back with aria-pressed set."""
    image = get_object_or_404(Image.objects.visible(), pk=pk)
    pressed = not Favorite.objects.filter(user=request.user, image=image).exists()
    set_favorite(request.user, [image.pk], pressed)
    if not request.htmx:
        return back(request)
    where = "lightbox" if request.POST.get("where") == "lightbox" else "card"
    context = {"image": image, "pressed": pressed, "where": where}
    return no_store(render(request, "generations/gallery.html#favorite-toggled", context))


# -- delete own -----------------------------------------------------------------------------------------------
def soft_delete(user, image_ids: list[int]) -> list[int]:
    """Soft-delete those of `image_ids` that `user` made (ImageQuerySet.soft_delete); returns their ids."""
    return Image.objects.filter(pk__in=image_ids).soft_delete(user)


@require_POST
@login_required
@members_only
def delete(request, pk: int):
    image = get_object_or_404(Image.objects.visible().filter(user=request.user), pk=pk)
    soft_delete(request.user, [image.pk])
    if not request.htmx:
        messages.success(request, "Image deleted.")
        return back(request)
    response = render(request, "generations/gallery.html#deleted", {"deleted": [image.pk], "one": True})
    return trigger_client_event(no_store(response), "image-deleted")


# -- collections ----------------------------------------------------------------------------------------------
def clean_name(value) -> str:
    name = clean_text(value)
    return name[:100]


@require_http_methods(["GET", "POST"])
@login_required
@members_only
def collections(request):
    """The team's collections, and a new one (any member may make one)."""
    problem = ""
    if request.method == "POST":
        name = clean_name(request.POST.get("name"))
        if not name:
            problem = "Give the collection a name."
        else:
            try:
                with transaction.atomic():
                    made = Collection.objects.create(name=name, created_by=request.user)
            except IntegrityError:
                problem = f"There is already a collection named “{name}”."
            else:
                ids = clean_ids(request.POST.getlist("image"))
                add_to(made, ids, request.user)
                if request.htmx and request.htmx.target != "collections-list":
                    return no_store(bulk_done(request, f"Made “{made.name}” with {count(len(ids))}.", {}))
                if not request.htmx:
                    return HttpResponseRedirect(f"{reverse('gallery')}?collection={made.pk}")
    rows = Collection.objects.select_related("created_by").order_by("name")
    context = {"collections": counted(rows), "problem": problem}
    template = "generations/collections.html#list" if request.htmx else "generations/collections.html"
    # htmx swaps only 2xx answers: the fragment carries the problem in words.
    return no_store(render(request, template, context, status=400 if problem and not request.htmx else 200))


def counted(rows):
    return rows.annotate(size=Count("items", filter=Q(items__image__deleted_at=None)))


@require_POST
@login_required
@members_only
def rename_collection(request, pk: int):
    collection = get_object_or_404(Collection, pk=pk)
    name = clean_name(request.POST.get("name"))
    problem = "" if name else "Give the collection a name."
    if name:
        try:
            with transaction.atomic():
                Collection.objects.filter(pk=pk).update(name=name, updated_at=timezone.now())
            forget_options()
        except IntegrityError:
            problem = f"There is already a collection named “{name}”."
    collection.refresh_from_db()
    if not request.htmx:
        if problem:
            messages.error(request, problem)
        return back(request, reverse("collections"))
    context = {"collection": collection, "problem": problem}
    return no_store(render(request, "generations/collections.html#row", context))


def add_to(collection: Collection, image_ids: list[int], user) -> int:
    """Add the visible ones of `image_ids`; returns how many were not in the collection yet."""
    present = set(Image.objects.visible().filter(pk__in=image_ids).values_list("pk", flat=True))
    present -= set(collection.items.filter(image_id__in=present).values_list("image_id", flat=True))
    new = [
        CollectionItem(collection=collection, image_id=pk, added_by=user) for pk in image_ids if pk in present
    ]
    CollectionItem.objects.bulk_create(new, ignore_conflicts=True)  # ignore: a concurrent add of the same
    return len(new)


def clean_ids(values) -> list[int]:
    ids = []
    for value in values[:MAX_SELECTED]:
        pk = parse_id(value)
        if pk is not None and pk not in ids:
            ids.append(pk)
    return ids


@require_POST
@login_required
@members_only
def collection_items(request, pk: int, op: str):
    """Add images to a collection, or take them out (the images themselves stay)."""
    collection = get_object_or_404(Collection, pk=pk)
    ids = clean_ids(request.POST.getlist("image"))
    if op == "add":
        add_to(collection, ids, request.user)
        text = f"Added to “{collection.name}”."
        context = {}
    else:
        CollectionItem.objects.filter(collection=collection, image_id__in=ids).delete()
        text = f"Removed from “{collection.name}”."
        scope = Scope.from_query(request.POST)
        context = {"deleted": ids} if scope.collection == collection.pk else {}
    if not request.htmx:
        messages.success(request, text)
        return back(request)
    return no_store(bulk_done(request, text, context))


# -- bulk -----------------------------------------------------------------------------------------------------
def bulk_done(request, text: str, extra: dict) -> HttpResponse:
    target = "lightbox-status" if request.htmx and request.htmx.target == "lightbox-status" else "bulk-status"
    return render(request, "generations/gallery.html#status", {"text": text, "status_id": target, **extra})


@require_POST
@login_required
def bulk(request):
    """Selected images: favorite, unfavorite, add to a collection, delete (one's own), or download a zip."""
    ids = clean_ids(request.POST.getlist("image"))
    action = request.POST.get("action") or request.POST.get("do", "")
    if not ids:
        return refuse(request, "Select one or more images first.")
    if action == "zip":
        return zip_download(request, ids)
    if not may_spend(request.user):  # a zip is a read; everything else here changes the team's images
        return access_refusal(request)
    if action in ("favorite", "unfavorite"):
        present = list(Image.objects.visible().filter(pk__in=ids).values_list("pk", flat=True))
        set_favorite(request.user, present, action == "favorite")
        verb = "Added to" if action == "favorite" else "Removed from"
        text, context = f"{verb} your favorites: {count(len(present))}.", {}
        context["toggled"] = [Option(pk, "") for pk in present]  # each card's toggle follows, out of band
        context["pressed"] = action == "favorite"
    elif action == "collect":
        collection = Collection.objects.filter(pk=parse_id(request.POST.get("collection", ""))).first()
        if collection is None:
            return refuse(request, "Choose a collection to add the images to.")
        added = add_to(collection, ids, request.user)
        text, context = f"Added {count(added)} to “{collection.name}”.", {}
    elif action == "delete":
        deleted = soft_delete(request.user, ids)
        kept = len(ids) - len(deleted)
        text = f"Deleted {count(len(deleted))}."
        if kept:
            text += f" {kept} made by other members were left alone: only their authors can delete them."
        context = {"deleted": deleted}
    else:
        return refuse(request, "Choose what to do with the selected images.")
    if not request.htmx:
        messages.success(request, text)
        return back(request)
    return no_store(bulk_done(request, text, context))


def refuse(request, text: str, status: int = 400) -> HttpResponse:
    if request.htmx:
        response = bulk_done(request, text, {"problem": True})
        response.status_code = 200  # htmx swaps only 2xx; the words say it was refused
        return no_store(response)
    return no_store(render(request, "generations/gallery_refused.html", {"text": text}, status=status))


def zip_download(request, ids: list[int]) -> HttpResponse:
    cap = zip_cap()
    if len(ids) > cap:
        return refuse(request, f"A zip holds at most {cap} images; you selected {len(ids)}. Select fewer.")
    images = list(Image.objects.gallery().filter(pk__in=ids))
    if not images:
        return refuse(request, "None of the selected images exists any more.", status=404)
    response = StreamingHttpResponse(archive.zip_stream(images), content_type="application/zip")
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M")
    media.as_media(response, f"fluxweb-{stamp}-{len(images)}-images.zip", attachment=True)
    response["Cache-Control"] = "private, no-store"
    return response


def prefill(request) -> dict:
    """What the studio's form starts with for `?use_prompt=<prompt id>` (history's Use) or
    `?reference=<image id>` (the gallery page's Use as reference). views.studio_context calls it:
    `initial = remix_of(request) or gallery.prefill(request)`."""
    initial = {}
    prompt = Prompt.objects.filter(pk=parse_id(request.GET.get("use_prompt", ""))).first()
    if prompt is not None:
        initial["prompt"] = prompt.text
    reference = Image.objects.visible().filter(pk=parse_id(request.GET.get("reference", ""))).first()
    if reference is not None:
        initial["reference_images"] = [reference]
    return initial
