"""Bulk actions on selected images (issue 8, item 7): favorite, add to a collection, delete one's own only,
and a zip of the originals with manifest.csv, streamed and capped."""

from __future__ import annotations

import csv
import io
import os
import tracemalloc
import zipfile

import pytest
from django.core.files.base import ContentFile

from generations import archive
from generations.models import Collection, Favorite, Image

from .test_gallery import HX, fresh_cache, logged_in, make_image, make_many, tiles  # noqa: F401 (fresh_cache: autouse)


@pytest.fixture
def team(bob, carol, accounts):
    a = make_image(bob, accounts["apiframe"], "a lighthouse at dusk")
    b = make_image(bob, accounts["vtrix"], 'a fox, "quoted", in the snow', fmt="JPEG")
    c = make_image(carol, accounts["apiframe"], "a red lighthouse by the sea")
    return a, b, c


def unzip(response) -> zipfile.ZipFile:
    assert response.streaming, "the zip must be streamed, not built in memory"
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def test_it_downloads_a_zip_of_the_selected_originals_with_a_manifest(bob, team):
    a, b, c = team
    response = logged_in(bob).post("/gallery/bulk", {"image": [a.pk, b.pk, c.pk], "action": "zip"})

    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].startswith('attachment; filename="fluxweb-')
    archive_ = unzip(response)
    assert archive_.testzip() is None
    names = archive_.namelist()
    expected = {archive.file_name(i): i for i in (a, b, c)}
    assert sorted(names) == sorted([*expected, "manifest.csv"])
    for name, image in expected.items():
        with image.file.open("rb") as stored:
            assert archive_.read(name) == stored.read()
    rows = list(csv.DictReader(io.StringIO(archive_.read("manifest.csv").decode())))
    assert [r["file"] for r in rows] == [archive.file_name(i) for i in (c, b, a)]
    fox = rows[1]
    assert fox == {
        "file": archive.file_name(b),
        "prompt": 'a fox, "quoted", in the snow',
        "seed": "1234",
        "model": "flux-2-max",
        "provider": "sb-vtrix",
        "size": f"{b.width}x{b.height}",
        "cost": "70",
        "author": "bob",
        "created": fox["created"],
    }
    assert fox["created"].startswith(str(b.created_at.year))


def test_the_zip_is_refused_past_the_cap_in_words(bob, team, settings):
    settings.FLUXWEB_ZIP_MAX_IMAGES = 2
    ids = [i.pk for i in team]
    response = logged_in(bob).post("/gallery/bulk", {"image": ids, "action": "zip"})
    assert response.status_code == 400 and not response.streaming
    assert "at most 2 images" in response.content.decode() and "you selected 3" in response.content.decode()
    htmx = logged_in(bob).post("/gallery/bulk", {"image": ids, "action": "zip"}, **HX)
    assert "at most 2 images" in htmx.content.decode() and "<html" not in htmx.content.decode()
    assert logged_in(bob).post("/gallery/bulk", {"image": ids[:2], "action": "zip"}).streaming


def test_the_zip_streams_chunk_by_chunk(bob, accounts):
    rows = make_many(bob, accounts["apiframe"], 30)
    response = logged_in(bob).post("/gallery/bulk", {"image": [r.pk for r in rows], "action": "zip"})
    chunks = iter(response.streaming_content)
    first = next(chunks)
    assert first.startswith(b"PK\x03\x04") and len(first) < 2 * archive.CHUNK
    rest = b"".join(chunks)
    assert len(zipfile.ZipFile(io.BytesIO(first + rest)).namelist()) == 31


def test_the_zip_holds_one_chunk_in_memory_not_the_archive(bob, accounts):
    """Twenty 1 MB originals: the stream's peak memory stays near one chunk, far below the 20 MB archive."""
    rows = make_many(bob, accounts["apiframe"], 20)
    rows[0].file.save("big.png", ContentFile(os.urandom(1024 * 1024)), save=True)
    Image.objects.filter(pk__in=[r.pk for r in rows]).update(file=rows[0].file.name)
    images = list(Image.objects.gallery().filter(pk__in=[r.pk for r in rows]))
    tracemalloc.start()
    total = 0
    for chunk in archive.zip_stream(images):
        total += len(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total > 20 * 1024 * 1024
    assert peak < 4 * 1024 * 1024


def test_bulk_favorite_and_unfavorite(bob, team):
    ids = [i.pk for i in team]
    response = logged_in(bob).post("/gallery/bulk", {"image": ids, "do": "favorite"}, **HX)
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html and "3 images" in html
    assert html.count('aria-pressed="true"') == 3  # each card's toggle follows, out of band
    assert Favorite.objects.filter(user=bob).count() == 3
    logged_in(bob).post("/gallery/bulk", {"image": ids[:2], "do": "unfavorite"}, **HX)
    assert list(Favorite.objects.values_list("image_id", flat=True)) == ids[2:]


def test_bulk_add_to_a_collection(bob, carol, team):
    made = Collection.objects.create(name="Picks", created_by=carol)
    ids = [i.pk for i in team]
    response = logged_in(bob).post(
        "/gallery/bulk", {"image": ids, "do": "collect", "collection": made.pk}, **HX
    )
    assert "Added 3 images" in response.content.decode()
    assert set(made.items.values_list("image_id", flat=True)) == set(ids)
    again = logged_in(bob).post("/gallery/bulk", {"image": ids, "do": "collect", "collection": made.pk}, **HX)
    assert (
        "Added 0 images" in again.content.decode() and made.items.count() == 3
    )  # already there: not doubled
    missing = logged_in(bob).post("/gallery/bulk", {"image": ids, "do": "collect", "collection": "²"}, **HX)
    assert "Choose a collection" in missing.content.decode()


def test_bulk_delete_deletes_only_ones_own_images(bob, carol, team):
    a, b, c = team
    response = logged_in(carol).post("/gallery/bulk", {"image": [a.pk, b.pk, c.pk], "do": "delete"}, **HX)
    html = response.content.decode()
    assert "Deleted 1 image." in html and "2 made by other members were left alone" in html
    assert f'id="image-{c.pk}" hx-swap-oob="delete"' in html
    assert f'id="image-{a.pk}" hx-swap-oob="delete"' not in html
    assert list(Image.objects.visible().values_list("pk", flat=True).order_by("pk")) == [a.pk, b.pk]
    assert tiles(logged_in(bob).get("/gallery")) == [b.pk, a.pk]


def test_bulk_without_a_selection_or_an_action_says_so(bob, team):
    client = logged_in(bob)
    assert "Select one or more" in client.post("/gallery/bulk", {"do": "favorite"}, **HX).content.decode()
    assert client.post("/gallery/bulk", {"image": [team[0].pk], "do": "nuke"}, **HX).status_code == 200
    response = client.post(
        "/gallery/bulk", {"image": [team[0].pk], "do": "favorite", "next": "/gallery?view=favorites"}
    )
    assert response.status_code == 302 and response["Location"] == "/gallery?view=favorites"
    assert client.post("/gallery/bulk", {"image": ["²", "-1"], "action": "zip"}).status_code == 400


def test_a_deleted_image_is_left_out_of_a_zip(bob, team):
    a, b, c = team
    logged_in(bob).post(f"/images/{a.pk}/delete", **HX)
    archive_ = unzip(logged_in(bob).post("/gallery/bulk", {"image": [a.pk, b.pk], "action": "zip"}))
    assert archive_.namelist() == [archive.file_name(b), "manifest.csv"]
