"""The gallery and list section of the bench (issue 8, performance.md): every gallery page and fragment, the
prompt history and `GET /api/v1/generations` at 1,000, 10,000 and 100,000 images, side by side in one run.

The images come from `manage.py seed_images` (grown in place from one size to the next, a copy kept at each),
plus favorites and a collection for the viewer in proportion. Each endpoint is requested through Django's
test client in this process, so the time is the server's alone (middleware, view, queries, template, no
network): `reps` timed requests per endpoint and size, in rounds that alternate between the sizes, for
p50/p95, and one more under CaptureQueriesContext for the query count.
Targets: <= 3 queries, p95 <= 50 ms at the largest size, and time at the largest <= 2x time at the smallest.
"""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TARGET_QUERIES = 3
TARGET_P95 = 0.050
TARGET_RATIO = 2.0


@dataclass
class Endpoint:
    name: str
    path: str  # may hold {deep}, {deep_cursor}, {image}, {collection}, {member}, {newest}, {history}, ...
    headers: dict = field(default_factory=dict)
    api: bool = False


HX = {"HTTP_HX_REQUEST": "true"}


def endpoints(have: Callable[[str], bool]) -> list[Endpoint]:
    """What exists now: the API always; each page or fragment when its URL name is there.

    Each list is asked for something that fills a whole page at every size, so that the sizes compare like
    with like: a search word or filter that finds 8 rows at 1,000 images and a full page at 100,000 measures
    the cost of 42 more rows, not of a bigger history (the table's "rows" column shows it). The seeded
    prompts are "<Adjective> <subject> <place>, <style>, #<n>" (seed_images): "the sea" (by the sea: a
    tenth of the jobs, 74 at 1,000 images) for two words, not "fox dusk" (a two-hundredth: 8); "at" (at dusk,
    at sunrise: a fifth of the prompts, 49 at 1,000) for the history's rarer word, not "lighthouse" (8);
    and a date range combined with a member, model, provider or format spans the past quarter, not
    11 days, so each of them still fills the gallery's 40 cards at 1,000 images."""
    found = [
        Endpoint("API list, first page", "/api/v1/generations", api=True),
        Endpoint("API list, deep cursor", "/api/v1/generations?cursor={deep_cursor}", api=True),
        Endpoint("API ?q= common word", "/api/v1/generations?q=in", api=True),
        Endpoint("API ?q= two words", "/api/v1/generations?q=the+sea", api=True),
        Endpoint("API ?q= no match", "/api/v1/generations?q=zebra", api=True),
        Endpoint("API ?mine=1", "/api/v1/generations?mine=1", api=True),
        Endpoint("API ?mine=1 deep cursor", "/api/v1/generations?mine=1&cursor={deep_cursor}", api=True),
        Endpoint("API ?status=succeeded", "/api/v1/generations?status=succeeded", api=True),
        Endpoint("API ?status=failed", "/api/v1/generations?status=failed", api=True),
        Endpoint("API ?user=", "/api/v1/generations?user={member}", api=True),
        Endpoint("API ?model=", "/api/v1/generations?model=flux-plus", api=True),
        Endpoint("API ?provider=", "/api/v1/generations?provider=bench-vtrix", api=True),
        Endpoint("API ?favorite=1", "/api/v1/generations?favorite=1", api=True),
        Endpoint("API ?collection=", "/api/v1/generations?collection={collection}", api=True),
    ]
    if have("studio"):
        found.append(Endpoint("studio page", "/"))
    if have("gallery"):
        results = HX | {"HTTP_HX_TARGET": "gallery-results"}
        found += [
            Endpoint("gallery page", "/gallery"),
            Endpoint("gallery next page (htmx)", "/gallery?before={deep}", HX),
            Endpoint("gallery new images, none (htmx)", "/gallery?after={newest}", HX),
            Endpoint("gallery ?q= common word (htmx)", "/gallery?q=in", results),
            Endpoint("gallery ?q= no match (htmx)", "/gallery?q=zebra", results),
            Endpoint("gallery Mine (htmx)", "/gallery?view=mine", results),
            Endpoint("gallery Favorites (htmx)", "/gallery?view=favorites", results),
            Endpoint("gallery collection (htmx)", "/gallery?collection={collection}", results),
            Endpoint("gallery member (htmx)", "/gallery?member={member_id}", results),
            Endpoint("gallery model (htmx)", "/gallery?model=flux-plus", results),
            Endpoint("gallery provider (htmx)", "/gallery?provider=bench-vtrix", results),
            Endpoint("gallery format (htmx)", "/gallery?format=webp", results),
            Endpoint("gallery status=failed (htmx)", "/gallery?status=failed", results),
            Endpoint("gallery last month (htmx)", "/gallery?from={month_ago}", results),
            Endpoint(
                "gallery half a year ago (htmx)", "/gallery?from={half_year}&to={half_year_end}", results
            ),
            Endpoint(
                "gallery half a year ago, deeper (htmx)",
                "/gallery?from={half_year}&to={half_year_end}&before={half_year_next}",
                HX,
            ),
            Endpoint(
                "gallery past year, deep page (htmx)", "/gallery?from={year_ago}&before={deep_by_time}", HX
            ),
            # A date range with another filter: each needs its own (filter, created_at, id) index.
            Endpoint(
                "gallery past quarter + member (htmx)",
                "/gallery?from={quarter_ago}&member={member_id}",
                results,
            ),
            Endpoint(
                "gallery past quarter + model (htmx)", "/gallery?from={quarter_ago}&model=flux-plus", results
            ),
            Endpoint(
                "gallery past quarter + provider (htmx)",
                "/gallery?from={quarter_ago}&provider=bench-vtrix",
                results,
            ),
            Endpoint(
                "gallery past quarter + format (htmx)", "/gallery?from={quarter_ago}&format=webp", results
            ),
            Endpoint(
                "gallery past quarter + format, deeper (htmx)",
                "/gallery?from={quarter_ago}&format=webp&before={quarter_webp_next}",
                HX,
            ),
        ]
    if have("lightbox"):
        found.append(Endpoint("lightbox (htmx)", "/gallery/images/{image}", HX))
    if have("history"):
        found += [
            Endpoint("history page", "/history/"),
            Endpoint("history ?q= common word", "/history/?q=in"),
            Endpoint("history ?q= rarer word", "/history/?q=at"),
            Endpoint("history next page", "/history/?before={history}"),
        ]
    return found


def rows_in(response, endpoint: Endpoint) -> int | None:
    """How many rows a list answered with (generations, gallery cards, history prompts); None for the rest."""
    if response.status_code != 200:
        return None
    if endpoint.api:
        return len(response.json()["results"])
    html = response.content.decode()
    found = html.count('<figure class="tile"') + html.count('<li class="prompt-row"')
    return found or None


def percentile(values: list[float], p: float) -> float:
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass
class Measure:
    status: int
    queries: int
    p50: float
    p95: float


class GalleryBench:
    """Seeds one database up to each size and keeps a copy of it at each; then measures every endpoint on
    every copy in interleaved rounds (a few requests per endpoint on 1k, then on 10k, then on 100k, again),
    so the load other processes put on the machine falls on every size alike and the ratios hold."""

    def __init__(
        self, sizes: list[int], reps: int, folder, log: Callable[[str], None], rounds: int = 5
    ) -> None:
        self.sizes = sizes
        self.reps = reps
        self.rounds = max(1, min(rounds, reps))
        self.folder = folder
        self.log = log
        self.times: dict[str, dict[int, list[float]]] = {}
        self.counts: dict[str, dict[int, tuple[int, int]]] = {}
        self.rows: dict[str, dict[int, int | None]] = {}
        self.order: list[str] = []
        self.seconds_seeding = 0.0
        self.copies: dict[int, str] = {}
        self.values: dict[int, dict] = {}

    def setup(self, user) -> None:
        from django.contrib.auth import get_user_model
        from django.test import Client

        from generations.models import ApiToken, Collection, ProviderAccount

        User = get_user_model()
        self.viewer = user
        self.member = User.objects.get_or_create(username="bench-member")[0]
        for kind in ("vtrix", "maxapi"):
            ProviderAccount.objects.get_or_create(
                slug=f"bench-{kind}", defaults={"kind": kind, "base_url": f"http://127.0.0.1:9/{kind}"}
            )
        self.collection = Collection.objects.get_or_create(name="bench collection")[0]
        self.web = Client(HTTP_HOST="127.0.0.1")
        self.web.force_login(user)
        _, token = ApiToken.issue(user, "bench gallery")
        self.api = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {token}")

    def grow(self, size: int) -> None:
        """Seed up to `size` images; the viewer favorites 2 % of them and the collection holds 1 % (200 each
        at least)."""
        from django.core.management import call_command

        from generations.models import CollectionItem, Favorite, Image

        missing = size - Image.objects.count()
        if missing > 0:
            t = time.perf_counter()
            call_command("seed_images", str(missing), verbosity=0)
            took = time.perf_counter() - t
            self.seconds_seeding += took
            self.log(f"seed_images {missing}: {took:.1f} s")
        rng = random.Random(size)
        ids = list(Image.objects.values_list("pk", flat=True))
        # At least a few pages of each even at the smallest size, so every size shows full pages.
        Favorite.objects.bulk_create(
            [Favorite(user=self.viewer, image_id=pk) for pk in rng.sample(ids, max(size // 50, 200))],
            ignore_conflicts=True,
        )
        CollectionItem.objects.bulk_create(
            [
                CollectionItem(collection=self.collection, image_id=pk)
                for pk in rng.sample(ids, max(size // 100, 200))
            ],
            ignore_conflicts=True,
        )

    def snapshot(self, size: int) -> None:
        """A copy of the database as it is now, through SQLite's backup API (consistent, WAL included)."""
        import sqlite3

        from django.db import connection

        path = str(self.folder / f"gallery-{size}.sqlite3")
        connection.ensure_connection()
        target = sqlite3.connect(path)
        with target:
            connection.connection.backup(target)
        target.close()
        self.copies[size] = path

    def use(self, size: int | None) -> None:
        """Point the default connection at the copy for `size` (None: back to the bench database)."""
        from django.db import connection

        connection.close()
        if size is None:
            connection.settings_dict["NAME"] = self.original
        else:
            connection.settings_dict["NAME"] = self.copies[size]
        connection.ensure_connection()

    def point(self) -> dict:
        from datetime import datetime, timedelta
        from datetime import time as clock

        from django.utils import timezone

        from generations.models import Generation, Image, Prompt

        now = timezone.now()
        deep = Image.objects.order_by("-id").values_list("pk", flat=True)[Image.objects.count() // 2]
        deep_job = Generation.objects.order_by("-id").values_list("pk", flat=True)[
            Generation.objects.count() // 2
        ]
        newest = Image.objects.order_by("-id").values_list("pk", flat=True).first()
        middle = Prompt.objects.order_by("-last_used_at", "-id")[Prompt.objects.count() // 2]
        # Date ranges page by (created_at, id): a cursor a quarter of the way into "half a year ago", and one
        # halfway down the whole year by time.
        half_year = (now - timedelta(days=190)).date()
        by_time = Image.objects.order_by("-created_at", "-id").values_list("pk", flat=True)
        in_range = by_time.filter(
            created_at__gte=timezone.make_aware(datetime.combine(half_year, clock.min)),
            created_at__lt=timezone.make_aware(datetime.combine(half_year + timedelta(days=11), clock.min)),
        )
        quarter = (now - timedelta(days=91)).date()
        webp_in_quarter = by_time.filter(
            format="webp", created_at__gte=timezone.make_aware(datetime.combine(quarter, clock.min))
        )
        return {
            "deep": deep,
            "deep_cursor": base64.urlsafe_b64encode(str(deep_job).encode()).decode(),
            "newest": newest,
            "image": deep,
            "collection": self.collection.pk,
            "member": self.member.username,
            "member_id": self.member.pk,
            "history": f"{middle.last_used_at.isoformat()}_{middle.pk}",
            "month_ago": (now - timedelta(days=30)).date().isoformat(),
            "half_year": half_year.isoformat(),
            "half_year_end": (now - timedelta(days=180)).date().isoformat(),
            "half_year_next": in_range[in_range.count() // 4],
            "year_ago": (now - timedelta(days=366)).date().isoformat(),
            "deep_by_time": by_time[Image.objects.count() // 2],
            "quarter_ago": quarter.isoformat(),
            "quarter_webp_next": webp_in_quarter[webp_in_quarter.count() // 2],
        }

    def measure(self, endpoint: Endpoint, size: int, count: int) -> None:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        client = self.api if endpoint.api else self.web
        path = endpoint.path.format(**self.values[size])
        client.get(path, **endpoint.headers)  # warm: this copy's pages for this query into the cache
        times = self.times.setdefault(endpoint.name, {}).setdefault(size, [])
        for _ in range(count):
            t = time.perf_counter()
            client.get(path, **endpoint.headers)
            times.append(time.perf_counter() - t)
        if size not in self.counts.setdefault(endpoint.name, {}):
            with CaptureQueriesContext(connection) as queries:
                response = client.get(path, **endpoint.headers)
            self.counts[endpoint.name][size] = (response.status_code, len(queries))
            self.rows.setdefault(endpoint.name, {})[size] = rows_in(response, endpoint)

    def run(self, user) -> None:
        from django.db import connection
        from django.urls import NoReverseMatch, reverse

        def have(name: str) -> bool:
            try:
                reverse(name) if name in ("studio", "gallery", "history") else reverse(name, args=[1])
            except NoReverseMatch:
                return False
            return True

        self.original = connection.settings_dict["NAME"]
        self.setup(user)
        found = endpoints(have)
        self.order = [e.name for e in found]
        for size in self.sizes:
            self.grow(size)
            self.values[size] = self.point()
            self.snapshot(size)
        t = time.perf_counter()
        try:
            per_round = [self.reps // self.rounds + (i < self.reps % self.rounds) for i in range(self.rounds)]
            for count in per_round:
                for size in self.sizes:
                    self.use(size)
                    for endpoint in found:
                        self.measure(endpoint, size, count)
        finally:
            self.use(None)
        self.log(
            f"measured {len(found)} endpoints at {len(self.sizes)} sizes, {self.reps} requests each in "
            f"{self.rounds} interleaved rounds, in {time.perf_counter() - t:.0f} s"
        )

    def result(self, name: str, size: int) -> Measure:
        status, queries = self.counts[name][size]
        times = self.times[name][size]
        return Measure(status, queries, percentile(times, 50), percentile(times, 95))

    def table(self) -> tuple[list[str], list[list[str]], bool]:
        """Columns and rows: per endpoint, queries, p50 and p95 at each size, the ratio largest/smallest."""
        small, large = self.sizes[0], self.sizes[-1]
        sizes = " / ".join(f"{s // 1000}k" for s in self.sizes)
        columns = [
            "endpoint",
            f"rows {sizes}",
            f"queries {sizes}",
            f"p50 ms {sizes}",
            f"p95 ms {sizes}",
            f"p50 {large // 1000}k/{small // 1000}k",
            "ok?",
        ]
        rows, all_ok = [], True
        for name in self.order:
            at = {size: self.result(name, size) for size in self.sizes}
            ratio = at[large].p50 / at[small].p50 if at[small].p50 else float("nan")
            bad = [s for s in self.sizes if at[s].status >= 400]
            ok = (
                not bad
                and all(at[s].queries <= TARGET_QUERIES for s in self.sizes)
                and at[large].p95 <= TARGET_P95
                and ratio <= TARGET_RATIO
            )
            all_ok &= ok
            rows.append(
                [
                    name + (f" (HTTP {at[bad[0]].status})" if bad else ""),
                    " / ".join(
                        str(self.rows[name][s] if self.rows[name][s] is not None else "-") for s in self.sizes
                    ),
                    " / ".join(str(at[s].queries) for s in self.sizes),
                    " / ".join(f"{at[s].p50 * 1000:.1f}" for s in self.sizes),
                    " / ".join(f"{at[s].p95 * 1000:.1f}" for s in self.sizes),
                    f"{ratio:.2f}",
                    "yes" if ok else "NO",
                ]
            )
        return columns, rows, all_ok


def print_table(columns: list[str], rows: list[list[str]], header: str) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    print()
    print(header)
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    print(flush=True)
