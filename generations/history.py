"""The prompt history page (issue 8, item 6): every prompt the team used, newest use first, searchable over all
of history, with its use count, last use, who used it and its newest image, in one query per page (a keyset on
`last_used_at, id`); Use puts a prompt in the studio's field (`/?use_prompt=<id>`, gallery.prefill)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from django.db.models import Aggregate, CharField, OuterRef, Subquery
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from .forms import parse_id
from .gallery import clean_text, no_store
from .login import login_required
from .models import Generation, Image, Prompt

PAGE = 40


class Names(Aggregate):
    """Distinct values joined by commas (usernames hold none): GROUP_CONCAT on SQLite, STRING_AGG on
    PostgreSQL; Django 5.2 has no aggregate for both."""

    function = "GROUP_CONCAT"
    template = "%(function)s(%(distinct)s%(expressions)s)"
    allow_distinct = True
    output_field = CharField()

    def as_postgresql(self, compiler, connection, **extra_context):
        return self.as_sql(
            compiler,
            connection,
            function="STRING_AGG",
            template="%(function)s(%(distinct)s%(expressions)s::text, ',')",
            **extra_context,
        )


SENTINEL = 918273645


def address(name: str) -> Callable[[int], str]:
    """The address of the URL `name` for any id, reversed once for a page instead of once a row: three
    `{% url %}` tags a row were a quarter of the history page's time (40 rows)."""
    before, _, after = reverse(name, args=[SENTINEL]).partition(str(SENTINEL))
    return lambda pk: f"{before}{int(pk)}{after}"


def history_cursor(value) -> tuple[datetime, int] | None:
    if not isinstance(value, str) or "_" not in value:
        return None
    stamp, _, pk = value.rpartition("_")
    pk = parse_id(pk)
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if pk is None or moment.tzinfo is None:
        return None
    return moment, pk


@require_GET
@login_required
def history(request):
    """Every prompt the team used, newest use first: uses, last use, who, its newest image, and Use."""
    q = clean_text(request.GET.get("q", ""))
    matching = Prompt.objects.search(q) if q else Prompt.objects.all()
    # The page's prompts are picked by id first (Prompt.objects.recent), so the subqueries below run for the
    # page only, not for every match of a search.
    rows = matching.recent(PAGE + 1, history_cursor(request.GET.get("before")))
    # The newest image: of the prompt's newest finished job, its first image still shown (indexed lookups).
    newest = Generation.objects.filter(prompt=OuterRef(OuterRef("pk")), status=Generation.Status.SUCCEEDED)
    image = Image.objects.visible().filter(generation_id=Subquery(newest.order_by("-id").values("pk")[:1]))
    who = (
        Generation.objects.filter(prompt=OuterRef("pk"))
        .order_by()
        .values("prompt")
        .annotate(names=Names("user__username", distinct=True))
        .values("names")
    )
    rows = rows.annotate(
        newest_image=Subquery(image.order_by("index").values("pk")[:1]), user_names=Subquery(who[:1])
    )
    prompts = list(rows[: PAGE + 1])
    more = len(prompts) > PAGE
    prompts = prompts[:PAGE]
    lightbox, thumbnail = address("lightbox"), address("image-thumbnail")
    use = reverse("studio") + "?use_prompt="
    for prompt in prompts:
        prompt.users = sorted(set((prompt.user_names or "").split(",")) - {""}, key=str.lower)
        prompt.use_url = f"{use}{prompt.pk}"
        if prompt.newest_image:
            prompt.image_url = lightbox(prompt.newest_image)
            prompt.thumbnail_url = thumbnail(prompt.newest_image)
    last = prompts[-1] if more else None
    context = {
        "q": q,
        "prompts": prompts,
        "next_before": f"{last.last_used_at.isoformat()}_{last.pk}" if last else "",
    }
    if request.htmx and request.GET.get("before"):
        return no_store(render(request, "generations/history.html#rows", context))
    if request.htmx:
        return no_store(render(request, "generations/history.html#results", context))
    return no_store(render(request, "generations/history.html", context))
