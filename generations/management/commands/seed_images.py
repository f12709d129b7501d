"""`seed_images N [--user USERNAME]` (contract.md): N finished generations of one image each, for trying and
benchmarking the gallery at scale.

The rows are spread over the existing users, the provider accounts with the models each serves, the three
formats and the past year (ids grow with time, as in real use). Every row points at one small real file per
format, written once and shared. No credit moves: each job is free (nothing reserved, nothing charged) and
leaves no ledger entry, and its params say `"seeded": true`.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from datetime import datetime, timedelta
from typing import NamedTuple

from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, models, transaction
from django.utils import timezone
from PIL import Image as PILImage
from PIL import ImageDraw

from generations import media
from generations.models import Generation, Image, Prompt, ProviderAccount, digest

BATCH = 2000
# One small real file per format, shared by every seeded row: (width, height, colour).
FILES = {"jpeg": (96, 64, "steelblue"), "png": (64, 64, "seagreen"), "webp": (64, 96, "indianred")}
ADJECTIVES = (
    "misty golden ancient quiet neon frozen sunlit crumbling floating tiny vast lonely bright".split()
)
SUBJECTS = (
    "lighthouse fox castle robot harbour forest cathedral astronaut dragon teapot bicycle whale owl garden "
    "tram library volcano samurai greenhouse violinist"
).split()
PLACES = [
    "at dusk",
    "in the rain",
    "on a snowy hill",
    "under a full moon",
    "by the sea",
    "in a busy market",
    "inside a glass dome",
    "at sunrise",
    "in the desert",
    "on Mars",
]
STYLES = [
    "oil painting",
    "watercolour",
    "35mm photograph",
    "isometric render",
    "ink sketch",
    "studio portrait",
    "cinematic still",
    "low-poly 3D",
    "ukiyo-e print",
    "pastel illustration",
]


class Command(BaseCommand):
    help = "Add N finished generations with images (shared small files) over the existing users, models, "
    help += "providers, formats and the past year, moving no credits."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("count", type=int, help="how many generations (one image each)")
        parser.add_argument("--user", help="give every row to this user instead of spreading them")

    def handle(self, *args, count: int, user: str | None, **options) -> None:
        if count < 1:
            raise CommandError("N must be at least 1.")
        users = self.users(user)
        pairs = [
            (account, model)
            for account in ProviderAccount.objects.order_by("pk")
            for model in account.adapter_class.models
        ]
        if not pairs:
            raise CommandError(
                "There is no provider account to attribute images to: add one with "
                "`manage.py provider set SLUG --kind KIND` (or `manage.py demo`)."
            )
        files = shared_files()
        rng = random.Random(count + Generation.objects.count())
        now = timezone.now()
        texts = list({prompt_text(rng) for _ in range(max(1, count // 4))})  # a team reuses its prompts
        rows = [
            Row(moment, rng.choice(users), *rng.choice(pairs), rng.choice(list(files)), rng.choice(texts))
            for moment in sorted(now - timedelta(seconds=rng.uniform(60, 365 * 86400)) for _ in range(count))
        ]
        prompts = remember(rows)
        for start in range(0, count, BATCH):
            with transaction.atomic():
                batch = rows[start : start + BATCH]
                jobs = [job(row, prompts[row.text], files[row.format], rng) for row in batch]
                ids = insert(Generation, jobs)
                insert(Image, [image(pk, job, files) for pk, job in zip(ids, jobs, strict=True)])
        if options.get("verbosity", 1):
            self.stdout.write(
                f"Added {count} generations with one image each ({Image.objects.count()} images now)."
            )

    def users(self, username: str | None) -> list:
        User = get_user_model()
        if username:
            found = User.objects.filter(username=username).first()
            if found is None:
                raise CommandError(f"No user {username!r}.")
            return [found]
        found = list(User.objects.filter(is_active=True).order_by("pk"))
        if not found:
            raise CommandError(
                "There is no user to attribute images to: add one with `manage.py user add USERNAME` "
                "(or `manage.py demo`)."
            )
        return found


def prompt_text(rng: random.Random) -> str:
    return (
        f"{rng.choice(ADJECTIVES).capitalize()} {rng.choice(SUBJECTS)} {rng.choice(PLACES)}, "
        f"{rng.choice(STYLES)}, #{rng.randrange(1000)}"
    )


def shared_files() -> dict[str, tuple[str, str, int, int, int]]:
    """The seeded originals and thumbnails, written once: format -> (file, thumbnail, width, height, bytes)."""
    found = {}
    for fmt, (width, height, colour) in FILES.items():
        name, thumb = (
            f"images/seed/seed-{fmt}.{'jpg' if fmt == 'jpeg' else fmt}",
            f"images/seed/seed-{fmt}_t.jpg",
        )
        if not (default_storage.exists(name) and default_storage.exists(thumb)):
            picture = PILImage.new("RGB", (width, height), colour)
            ImageDraw.Draw(picture).ellipse((8, 8, width - 8, height - 8), outline="white", width=3)
            out = io.BytesIO()
            picture.save(out, fmt.upper())
            checked = media.check_image(out.getvalue())
            for path, data in ((name, checked.data), (thumb, media.thumbnail(checked.data))):
                if default_storage.exists(path):
                    default_storage.delete(path)
                default_storage.save(path, ContentFile(data))
        found[fmt] = (name, thumb, width, height, default_storage.size(name))
    return found


class Row(NamedTuple):
    moment: datetime
    user: object
    account: ProviderAccount
    model: str
    format: str
    text: str


def remember(rows: list[Row]) -> dict[str, int]:
    """Each prompt text stored once, with its use count, first and last use: text -> prompt id."""
    uses, first, last = Counter(), {}, {}
    for row in rows:  # in time order
        uses[row.text] += 1
        first.setdefault(row.text, row)
        last[row.text] = row.moment
    by_digest = {digest(text): text for text in uses}
    known: dict[str, Prompt] = {}
    keys = list(by_digest)
    for start in range(0, len(keys), BATCH):
        known.update({p.digest: p for p in Prompt.objects.filter(digest__in=keys[start : start + BATCH])})
    for prompt in known.values():  # texts an earlier run made: their history grows
        text = by_digest[prompt.digest]
        prompt.uses += uses[text]
        prompt.last_used_at = max(prompt.last_used_at, last[text])
    Prompt.objects.bulk_update(known.values(), ["uses", "last_used_at"], batch_size=500)
    Prompt.objects.bulk_create(
        [
            Prompt(
                text=text,
                digest=key,
                created_by=first[text].user,
                created_at=first[text].moment,
                last_used_at=last[text],
                uses=uses[text],
            )
            for key, text in by_digest.items()
            if key not in known
        ],
        batch_size=BATCH,
    )
    ids = {}
    for start in range(0, len(keys), BATCH):
        chunk = keys[start : start + BATCH]
        ids.update(Prompt.objects.filter(digest__in=chunk).values_list("digest", "pk"))
    return {text: ids[key] for key, text in by_digest.items()}


def next_ids(model, count: int) -> list[int]:
    """Ids for `count` new rows, taken inside the caller's transaction (SQLite's is IMMEDIATE: it holds
    the write lock, so nobody else inserts meanwhile; PostgreSQL hands them out from the sequence)."""
    table = model._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", [table, count]
            )
            return [pk for (pk,) in cursor.fetchall()]
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {connection.ops.quote_name(table)}")
        top = cursor.fetchone()[0]
    return list(range(top + 1, top + 1 + count))


def insert(model, rows: list[dict]) -> list[int]:
    """Insert `rows` (attname -> value; the field's default for the rest) with one executemany. A
    bulk_create spends most of its time preparing each value in Python: this is ~5x faster at 100,000."""
    fields = model._meta.concrete_fields
    ids = next_ids(model, len(rows))
    prepared = [f for f in fields if isinstance(f, (models.DateTimeField, models.JSONField))]
    values = []
    for pk, given in zip(ids, rows, strict=True):
        row = given | {"id": pk}
        for field in fields:
            if field.attname not in row:
                row[field.attname] = field.get_default()
        for field in prepared:
            if row[field.attname] is not None:
                row[field.attname] = field.get_db_prep_save(row[field.attname], connection)
        values.append([row[field.attname] for field in fields])
    quote = connection.ops.quote_name
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        quote(model._meta.db_table),
        ", ".join(quote(field.column) for field in fields),
        ", ".join(["%s"] * len(fields)),
    )
    with connection.cursor() as cursor:
        cursor.executemany(sql, values)
    return ids


def job(row: Row, prompt_id: int, file: tuple, rng: random.Random) -> dict:
    width, height = file[2], file[3]
    took = timedelta(seconds=rng.uniform(3, 40))
    return {
        "user_id": row.user.pk,
        "prompt_id": prompt_id,
        "model": row.model,
        "account_id": row.account.pk,
        "status": Generation.Status.SUCCEEDED.value,
        "n": 1,
        "seed": rng.randrange(2**32),
        "params": {
            "aspect_ratio": None,
            "width": width,
            "height": height,
            "megapixels": None,
            "output_format": row.format,
            "safety_tolerance": None,
            "prompt_upsampling": False,
            "reference_urls": [],
            "seeded": True,
        },
        "created_at": row.moment,
        "started_at": row.moment + timedelta(seconds=1),
        "provider_done_at": row.moment + took,
        "finished_at": row.moment + took + timedelta(seconds=1),
        "progress": 1.0,
        "attempts": 1,
    }


def image(generation_id: int, job: dict, files: dict) -> dict:
    fmt = job["params"]["output_format"]
    name, thumb, width, height, size = files[fmt]
    return {
        "generation_id": generation_id,
        "user_id": job["user_id"],
        "model": job["model"],
        "account_id": job["account_id"],
        "prompt_id": job["prompt_id"],
        "index": 0,
        "file": name,
        "thumbnail": thumb,
        "width": width,
        "height": height,
        "format": fmt,
        "bytes": size,
        "seed": job["seed"],
        "created_at": job["finished_at"],
    }
