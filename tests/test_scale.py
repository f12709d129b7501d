"""Issue 8, scale: at 10,000 seeded images every list of the API and every gallery page and fragment that
exists runs in <= 3 queries (the session and user lookups of a page included), deep pages as the first.
Time is the bench's business (bench/run.py --only gallery); this keeps the query counts from creeping up.

The rows are seeded once for the module with `seed_images` and committed (a test's own transaction would
roll them back after the first test), then deleted when the module ends."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from generations.models import (
    ApiToken,
    Collection,
    CollectionItem,
    CreditAccount,
    Favorite,
    Generation,
    GenerationEvent,
    Image,
    LedgerEntry,
    Prompt,
    ProviderAccount,
    Usage,
)

ROWS = 10_000
MAX_QUERIES = 3


@pytest.fixture(scope="module")
def seeded(django_db_setup, django_db_blocker):
    """10,000 images over two members and three accounts; the viewer has favorites and a collection."""
    User = get_user_model()
    with django_db_blocker.unblock():
        with transaction.atomic():
            viewer = User.objects.create_user("scale-viewer", password="pw-scale-1")
            other = User.objects.create_user("scale-other", password="pw-scale-2")
            for kind in ("apiframe", "vtrix", "maxapi"):
                ProviderAccount.objects.create(
                    slug=f"scale-{kind}", kind=kind, base_url=f"http://127.0.0.1:9/{kind}"
                )
        call_command("seed_images", str(ROWS), verbosity=0)
        with transaction.atomic():
            ids = list(Image.objects.order_by("id").values_list("pk", flat=True))
            Favorite.objects.bulk_create([Favorite(user=viewer, image_id=pk) for pk in ids[::50]])
            collection = Collection.objects.create(name="scale")
            CollectionItem.objects.bulk_create(
                [CollectionItem(collection=collection, image_id=pk) for pk in ids[::100]]
            )
            _, token = ApiToken.issue(viewer)
        middle_job = Generation.objects.order_by("-id").values_list("pk", flat=True)[ROWS // 2]
        middle_prompt = Prompt.objects.order_by("-last_used_at", "-id")[Prompt.objects.count() // 2]
        values = {
            "deep": ids[len(ids) // 2],
            "deep_cursor": base64.urlsafe_b64encode(str(middle_job).encode()).decode(),
            "newest": ids[-1],
            "collection": collection.pk,
            "member": other.username,
            "member_id": other.pk,
            "history": f"{middle_prompt.last_used_at.isoformat()}_{middle_prompt.pk}",
            "month_ago": (timezone.now() - timedelta(days=30)).date().isoformat(),
            "half_year": (timezone.now() - timedelta(days=190)).date().isoformat(),
            "half_year_end": (timezone.now() - timedelta(days=180)).date().isoformat(),
        }
        yield {"viewer": viewer, "token": token, "values": values}
        for model in (
            CollectionItem,
            Collection,
            Favorite,
            Image,
            GenerationEvent,
            LedgerEntry,
            Usage,
            Generation,
            Prompt,
            ApiToken,
            CreditAccount,
        ):
            model.objects.all().delete()
        ProviderAccount.objects.filter(slug__startswith="scale-").delete()
        User.objects.filter(username__startswith="scale-").delete()


def queries(client: Client, path: str, **headers) -> tuple[int, int]:
    client.get(path, **headers)  # once first: a token's or session's first use may write
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, **headers)
    return response.status_code, len(captured)


API = [
    "",
    "?cursor={deep_cursor}",
    "?q=in",
    "?q=fox+dusk",
    "?q=zebra",
    "?mine=1",
    "?mine=1&cursor={deep_cursor}",
    "?status=succeeded",
    "?status=failed",
    "?status=succeeded&cursor={deep_cursor}",
    "?user={member}",
    "?model=flux-plus",
    "?provider=scale-vtrix",
    "?favorite=1",
    "?collection={collection}",
    "?q=lighthouse&mine=1&provider=scale-apiframe",
]


@pytest.mark.django_db
@pytest.mark.parametrize("query", API)
def test_each_api_list_takes_at_most_3_queries_at_10000_images(seeded, query):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {seeded['token']}")
    status, count = queries(client, "/api/v1/generations" + query.format(**seeded["values"]))
    assert status == 200
    assert count <= MAX_QUERIES


HX = {"HTTP_HX_REQUEST": "true"}
RESULTS = HX | {"HTTP_HX_TARGET": "gallery-results"}
PAGES = [
    ("studio", "/", {}),
    ("gallery", "/gallery", {}),
    ("gallery", "/gallery?before={deep}", HX),
    ("gallery", "/gallery?after={newest}", HX),
    ("gallery", "/gallery?q=in", RESULTS),
    ("gallery", "/gallery?q=in&before={deep}", HX),
    ("gallery", "/gallery?view=mine", RESULTS),
    ("gallery", "/gallery?view=favorites", RESULTS),
    ("gallery", "/gallery?collection={collection}", RESULTS),
    ("gallery", "/gallery?member={member_id}&model=flux-plus", RESULTS),
    ("gallery", "/gallery?provider=scale-vtrix&format=webp", RESULTS),
    ("gallery", "/gallery?status=succeeded&from={month_ago}", RESULTS),
    ("gallery", "/gallery?from={half_year}&to={half_year_end}", RESULTS),
    ("gallery", "/gallery?from={half_year}&to={half_year_end}&before={deep}", HX),
    ("gallery", "/gallery?from={half_year}&after={newest}", HX),
    ("lightbox", "/gallery/images/{deep}", HX),
    ("lightbox", "/gallery/images/{deep}?from={half_year}", HX),
    ("history", "/history/", {}),
    ("history", "/history/?q=lighthouse", {}),
    ("history", "/history/?q=in", {}),
    ("history", "/history/?q=in&before={history}", HX),
    ("history", "/history/?before={history}", HX),
]


def exists(name: str) -> bool:
    """The UI engineers add these pages; a page not there yet is skipped, not failed."""
    try:
        reverse(name) if name != "lightbox" else reverse(name, args=[1])
    except NoReverseMatch:
        return False
    return True


@pytest.mark.django_db
@pytest.mark.parametrize("name, path, headers", PAGES, ids=[path for _, path, _ in PAGES])
def test_each_gallery_page_and_fragment_takes_at_most_3_queries_at_10000_images(seeded, name, path, headers):
    if not exists(name):
        pytest.skip(f"no {name!r} URL yet")
    client = Client()
    client.force_login(seeded["viewer"])
    status, count = queries(client, path.format(**seeded["values"]), **headers)
    assert status in (200, 204)
    assert count <= MAX_QUERIES


def steps(rows) -> int:
    """How much work SQLite does for a QuerySet: its virtual machine's instructions, in thousands."""
    sql, params = rows.query.sql_with_params()
    counted = [0]

    def tick() -> int:
        counted[0] += 1
        return 0

    connection.ensure_connection()
    connection.connection.set_progress_handler(tick, 1000)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params).fetchall()
    finally:
        connection.connection.set_progress_handler(None, 0)
    return counted[0]


@pytest.mark.django_db
def test_a_date_range_page_starts_inside_the_range_at_any_depth(seeded):
    """On SQLite, a date range's page, first or deep (a cursor near the range's end), costs about what the
    team's first page does: its ids come from the (created_at, id) index from the range's end, or from the
    cursor. Paged by id, "half a year ago" walked every newer image; with the range's "to" as the index's
    upper bound instead of the cursor, a deep page walked every image of the range above the cursor."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's virtual machine")
    from generations.gallery import Scope

    viewer, values = seeded["viewer"], seeded["values"]
    team = steps(Scope().images(viewer).newest(41))
    everything = {"from": "1901-01-01", "to": "2099-12-31"}
    deep = Image.objects.order_by("-created_at", "-id").values_list("pk", flat=True)[ROWS * 9 // 10]
    for query, before in (
        ({"from": values["half_year"], "to": values["half_year_end"]}, None),
        ({"from": values["half_year"]}, None),
        (everything, None),
        (everything, deep),
        ({"to": "2099-12-31"}, deep),
        ({"from": "1901-01-01"}, deep),
    ):
        page = Scope.from_query(query).images(viewer).newest(41, before)
        assert len(page) == 41
        assert steps(page) <= 2 * team + 2, (query, before)


INDEX_OF = {"member": "image_user_created_id", "model": "image_model_created_id"}
INDEX_OF |= {"provider": "image_account_created_id", "format": "image_format_created_id"}


@pytest.mark.django_db
@pytest.mark.parametrize("other", ["member", "model", "provider", "format"])
def test_a_date_range_with_another_filter_starts_inside_both_at_any_depth(seeded, other):
    """A date range with a member, model, provider or format reads its page's ids from a (filter,
    created_at, id) index, first page or deep. With only the filter's (filter, id) index, SQLite and
    PostgreSQL took every image of the filter in the range and sorted them: work that grew with history."""
    from generations.gallery import Scope

    viewer, values = seeded["viewer"], seeded["values"]
    value = {"member": values["member_id"], "model": "flux-plus", "provider": "scale-vtrix", "format": "webp"}
    rows = Scope.from_query({"from": "1901-01-01", other: str(value[other])}).images(viewer)
    in_order = rows.order_by(*rows.keyset).values_list("pk", flat=True)
    deep = in_order[in_order.count() * 9 // 10 - 50]
    for before in (None, deep):
        page = rows.newest(41, before)
        sql, params = page.query.sql_with_params()
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
                plan = [row[-1] for row in cursor.fetchall()]
                # One sort: the page's 41 rows, not every match of the filter in the range.
                assert plan.count("USE TEMP B-TREE FOR ORDER BY") == 1, plan
                assert INDEX_OF[other] in " ".join(plan), plan
            else:
                # PostgreSQL weighs its choices by the statistics (at 100,000 images it walks (created_at,
                # id) and tests a filter most rows pass): whichever index it takes, the range bounds it.
                cursor.execute("ANALYZE generations_image")  # what autovacuum does after a big insert
                cursor.execute("EXPLAIN " + sql, params)
                plan = [row[0] for row in cursor.fetchall()]
                bounded = [line for line in plan if "Index Cond" in line and "created_at >=" in line]
                assert bounded, "\n".join(plan)
        assert len(page) == 41
