"""The team studio's data (issue 8): images carry their owner, model and account for flat gallery filters,
soft delete, favorites, team collections, comparison groups, and the migration that fills existing rows."""

from __future__ import annotations

import io

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.utils import timezone
from PIL import Image as PILImage

from generations import media
from generations.models import (
    ApiToken,
    Collection,
    CollectionItem,
    Favorite,
    Generation,
    Image,
    ProviderAccount,
)

from .conftest import make_job, row_image


@pytest.fixture
def account(db) -> ProviderAccount:
    return ProviderAccount.objects.create(
        slug="acme", kind="apiframe", base_url="http://127.0.0.1:9/apiframe"
    )


def png() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (8, 8), "teal").save(out, "PNG")
    return out.getvalue()


def stored(generation: Generation, index: int = 0) -> Image:
    return media.store_image(generation, index, media.check_image(png()), {"prompt": "x"})


bare_image = row_image


def test_it_records_the_owner_model_and_account_of_a_stored_image(bob, account):
    image = stored(make_job(bob, account, status="succeeded"))
    image.refresh_from_db()
    assert (image.user, image.model, image.account) == (bob, "flux-2-max", account)


def test_it_fills_the_copies_from_the_generation_when_an_image_is_saved_without_them(bob, account):
    image = bare_image(make_job(bob, account))
    image.refresh_from_db()
    assert (image.user_id, image.model, image.account_id) == (bob.pk, "flux-2-max", account.pk)


def test_visible_leaves_out_soft_deleted_images(bob, carol, account):
    job = make_job(bob, account)
    kept, gone = bare_image(job, 0), bare_image(job, 1, deleted_at=timezone.now(), deleted_by=carol)
    assert list(Image.objects.visible()) == [kept]
    assert gone.is_deleted and not kept.is_deleted
    assert Image.objects.filter(pk=gone.pk).exists()  # soft: the row and its files stay for a restore


def test_the_gallery_is_newest_first_and_needs_one_query_for_its_cards(
    bob, carol, account, django_assert_num_queries
):
    first = bare_image(make_job(bob, account, "one"))
    second = bare_image(make_job(carol, account, "two"))
    bare_image(make_job(carol, account, "three"), deleted_at=timezone.now())
    with django_assert_num_queries(1):
        cards = [
            (i.pk, i.user.username, i.account.slug, i.generation.prompt.text) for i in Image.objects.gallery()
        ]
    assert cards == [(second.pk, "carol", "acme", "two"), (first.pk, "bob", "acme", "one")]


def test_a_favorite_is_once_per_person_and_image(bob, carol, account):
    image = bare_image(make_job(bob, account))
    Favorite.objects.create(user=bob, image=image)
    Favorite.objects.create(user=carol, image=image)
    assert set(image.favorited_by.values_list("user__username", flat=True)) == {"bob", "carol"}
    assert list(bob.favorites.values_list("image", flat=True)) == [image.pk]
    with pytest.raises(IntegrityError), transaction.atomic():
        Favorite.objects.create(user=bob, image=image)


def test_collection_names_are_unique_whatever_their_case(bob):
    Collection.objects.create(name="Moodboard", created_by=bob)
    with pytest.raises(IntegrityError), transaction.atomic():
        Collection.objects.create(name="moodBOARD")
    assert Collection.objects.create(name="Moodboard 2").pk


def test_an_image_is_once_in_a_collection_and_may_be_in_many(bob, account):
    image = bare_image(make_job(bob, account))
    one, two = Collection.objects.create(name="one"), Collection.objects.create(name="two")
    CollectionItem.objects.create(collection=one, image=image, added_by=bob)
    CollectionItem.objects.create(collection=two, image=image)
    assert list(one.items.values_list("image", flat=True)) == [image.pk]
    assert image.collection_items.count() == 2
    with pytest.raises(IntegrityError), transaction.atomic():
        CollectionItem.objects.create(collection=one, image=image)


def test_collections_and_favorites_outlive_the_people_who_made_them(bob, carol, account):
    image = bare_image(make_job(bob, account))
    collection = Collection.objects.create(name="keep", created_by=carol)
    item = CollectionItem.objects.create(collection=collection, image=image, added_by=carol)
    Favorite.objects.create(user=carol, image=image)
    carol.delete()
    collection.refresh_from_db()
    item.refresh_from_db()
    assert collection.created_by is None and item.added_by is None
    assert not Favorite.objects.exists()


def test_the_jobs_of_one_comparison_share_its_key(bob, account):
    a = make_job(bob, account, comparison="cmp1")
    b = make_job(bob, account, comparison="cmp1")
    make_job(bob, account)
    assert set(Generation.objects.filter(comparison="cmp1")) == {a, b}
    assert Generation._meta.get_field("comparison").db_index


@pytest.mark.parametrize(
    "model, columns",
    [
        (Generation, ["user_id", "created_at", "id"]),
        (Generation, ["status", "id"]),
        (Image, ["user_id", "id"]),
        (Image, ["model", "id"]),
        (Image, ["account_id", "id"]),
        (Image, ["format", "id"]),
        (Image, ["prompt_id", "id"]),  # partial: visible images only
        (Generation, ["prompt_id", "status", "id"]),
    ],
)
def test_each_keyset_filter_has_its_index(db, model, columns):
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, model._meta.db_table)
    assert any(c["index"] and c["columns"] == columns for c in found.values()), columns


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_existing_images_their_generations_owner_model_and_account():
    executor = MigrationExecutor(connection)
    executor.migrate([("generations", "0005_team_studio")])
    old = executor.loader.project_state([("generations", "0005_team_studio")]).apps
    User = old.get_model("auth", "User")
    user = User.objects.create(username="dora")
    account = old.get_model("generations", "ProviderAccount").objects.create(
        slug="old", kind="vtrix", base_url="http://127.0.0.1:9/vtrix"
    )
    prompt = old.get_model("generations", "Prompt").objects.create(text="old", digest="d" * 64)
    job = old.get_model("generations", "Generation").objects.create(
        user=user, prompt=prompt, model="flux-plus", account=account, webhook_token="t"
    )
    old.get_model("generations", "Image").objects.create(
        generation=job, file="x", thumbnail="y", width=1, height=1, format="png", bytes=1
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    image = Image.objects.get()
    assert (image.user_id, image.model, image.account_id) == (user.pk, "flux-plus", account.pk)


def test_an_image_takes_its_generations_prompt(bob, account):
    job = make_job(bob, account, "a red kite")
    assert bare_image(job).prompt == job.prompt
    assert stored(make_job(bob, account, "a blue kite")).prompt.text == "a blue kite"


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_existing_images_their_generations_prompt():
    executor = MigrationExecutor(connection)
    executor.migrate([("generations", "0007_image_owners_required")])
    old = executor.loader.project_state([("generations", "0007_image_owners_required")]).apps
    user = old.get_model("auth", "User").objects.create(username="dora")
    account = old.get_model("generations", "ProviderAccount").objects.create(
        slug="old", kind="vtrix", base_url="http://127.0.0.1:9/vtrix"
    )
    prompt = old.get_model("generations", "Prompt").objects.create(text="old", digest="d" * 64)
    job = old.get_model("generations", "Generation").objects.create(
        user=user, prompt=prompt, model="flux-plus", account=account, webhook_token="t"
    )
    old.get_model("generations", "Image").objects.create(
        generation=job,
        user=user,
        model="flux-plus",
        account=account,
        file="x",
        thumbnail="y",
        width=1,
        height=1,
        format="png",
        bytes=1,
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert Image.objects.get().prompt_id == prompt.pk


# -- newest(): a keyset page whose ids are picked before any join ----------------------------------------------
def test_newest_is_a_keyset_page_that_keeps_the_querysets_joins(
    bob, carol, account, django_assert_num_queries
):
    images = [bare_image(make_job(bob if i % 2 else carol, account, f"kite {i}")) for i in range(7)]
    rows = Image.objects.gallery().filter(user=bob)
    bobs = [image.pk for image in reversed(images) if image.user_id == bob.pk]
    with django_assert_num_queries(1):
        page = [(i.pk, i.user.username, i.account.slug, i.generation.prompt.text) for i in rows.newest(2)]
    assert [pk for pk, *_ in page] == bobs[:2] and {u for _, u, *_ in page} == {"bob"}
    assert [i.pk for i in rows.newest(2, before=bobs[1])] == bobs[2:]
    assert [i.pk for i in rows.search("kite").newest(50)] == bobs


def test_newest_picks_ids_in_a_subquery_before_the_joins(bob, account):
    bare_image(make_job(bob, account))
    sql = str(Image.objects.gallery().search("lighthouse").newest(10).query).upper()
    inner = sql[sql.index("IN (SELECT") :]
    assert "LIMIT 10" in inner and "AUTH_USER" not in inner.split("LIMIT 10")[0]


def test_generations_have_newest_too(bob, account):
    jobs = [make_job(bob, account, f"p{i}") for i in range(3)]
    assert list(Generation.objects.newest(2)) == [jobs[2], jobs[1]]
    assert list(Generation.objects.newest(5, before=jobs[1].pk)) == [jobs[0]]


# -- the API's list filters: ?favorite=1 and ?collection= (contract.md) -----------------------------------------
def api(user) -> Client:
    _, token = ApiToken.issue(user)
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def listed(client: Client, query: str = "") -> list[int]:
    response = client.get("/api/v1/generations" + query)
    assert response.status_code == 200, response.content
    return [g["id"] for g in response.json()["results"]]


def test_favorite_lists_the_callers_favorites_only(bob, carol, account):
    jobs = [make_job(bob, account, f"p{i}") for i in range(4)]
    images = [bare_image(job) for job in jobs]
    Favorite.objects.create(user=bob, image=images[0])
    Favorite.objects.create(user=bob, image=images[2])
    Favorite.objects.create(user=carol, image=images[3])
    assert listed(api(bob), "?favorite=1") == [jobs[2].pk, jobs[0].pk]
    assert listed(api(carol), "?favorite=true") == [jobs[3].pk]
    assert listed(api(bob), "?favorite=0") == [job.pk for job in reversed(jobs)]


def test_collection_lists_the_generations_of_its_images(bob, carol, account):
    jobs = [make_job(bob, account, f"p{i}") for i in range(3)]
    images = [bare_image(job) for job in jobs]
    mood, other = Collection.objects.create(name="mood"), Collection.objects.create(name="other")
    CollectionItem.objects.create(collection=mood, image=images[0])
    CollectionItem.objects.create(collection=mood, image=images[1])
    CollectionItem.objects.create(collection=other, image=images[2])
    assert listed(api(carol), f"?collection={mood.pk}") == [jobs[1].pk, jobs[0].pk]  # team-wide
    assert listed(api(bob), f"?collection={mood.pk}&cursor=" + cursor_for(jobs[1].pk)) == [jobs[0].pk]
    assert listed(api(bob), "?collection=999999") == []


def cursor_for(pk: int) -> str:
    import base64

    return base64.urlsafe_b64encode(str(pk).encode()).decode()


@pytest.mark.parametrize("value", ["x", "", "-1", "0", "1.5", "²"])
def test_a_collection_that_is_not_an_id_is_refused(bob, value):
    response = api(bob).get("/api/v1/generations", {"collection": value})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "collection"


def test_soft_deleted_images_leave_the_api_and_its_filters(bob, account):
    job = make_job(bob, account)
    kept, gone = bare_image(job, 0), bare_image(job, 1, deleted_at=timezone.now())
    Favorite.objects.create(user=bob, image=gone)
    collection = Collection.objects.create(name="c")
    CollectionItem.objects.create(collection=collection, image=gone)
    client = api(bob)
    assert [i["id"] for i in client.get(f"/api/v1/generations/{job.pk}").json()["images"]] == [kept.pk]
    assert [i["id"] for i in client.get("/api/v1/generations").json()["results"][0]["images"]] == [kept.pk]
    assert listed(client, "?favorite=1") == []
    assert listed(client, f"?collection={collection.pk}") == []


def test_the_filters_combine(bob, carol, account):
    other = ProviderAccount.objects.create(slug="other", kind="vtrix", base_url="http://127.0.0.1:9/vtrix")
    a = make_job(bob, account, "red fox", status="succeeded")
    b = make_job(carol, account, "red fox", status="succeeded")
    c = make_job(bob, other, "red fox", status="failed")
    d = make_job(bob, account, "blue whale", status="succeeded")
    for job in (a, b, c, d):
        Favorite.objects.create(user=bob, image=bare_image(job))
    client = api(bob)
    assert listed(client, "?favorite=1&q=fox&user=bob") == [c.pk, a.pk]
    assert listed(client, "?favorite=1&q=fox&provider=acme&status=succeeded") == [b.pk, a.pk]
    assert listed(client, "?mine=1&provider=other") == [c.pk]
    assert listed(client, "?user=nobody") == [] and listed(client, "?provider=nothing") == []


# -- the admin: restore soft-deleted images; team collections --------------------------------------------------
IMAGES = "/admin/generations/image/"
COLLECTIONS = "/admin/generations/collection/"


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_image_admin_filters_deleted_images(alice, bob, account):
    job = make_job(bob, account)
    kept, gone = bare_image(job, 0), bare_image(job, 1, deleted_at=timezone.now(), deleted_by=bob)
    client = logged_in(alice)
    deleted = client.get(IMAGES, {"deleted": "yes"})
    assert deleted.status_code == 200
    assert list(deleted.context["cl"].queryset) == [gone]
    assert list(client.get(IMAGES, {"deleted": "no"}).context["cl"].queryset) == [kept]
    assert set(client.get(IMAGES).context["cl"].queryset) == {kept, gone}


def test_an_admin_restores_soft_deleted_images(alice, bob, account):
    job = make_job(bob, account)
    kept = bare_image(job, 0)
    gone = [bare_image(job, i, deleted_at=timezone.now(), deleted_by=bob) for i in (1, 2)]
    response = logged_in(alice).post(
        IMAGES,
        {"action": "restore", "_selected_action": [kept.pk, gone[0].pk, gone[1].pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Restored 2 image(s)." in response.content.decode()
    assert Image.objects.visible().count() == 3
    assert not Image.objects.exclude(deleted_by=None).exists()


def test_members_cannot_reach_the_image_or_collection_admin(bob, account):
    client = logged_in(bob)
    for path in (IMAGES, COLLECTIONS):
        assert client.get(path).status_code == 302  # to the admin login
    gone = bare_image(make_job(bob, account), deleted_at=timezone.now())
    client.post(IMAGES, {"action": "restore", "_selected_action": [gone.pk]})
    gone.refresh_from_db()
    assert gone.is_deleted


def test_the_collection_admin_lists_counts_and_records_who_made_and_added(alice, bob, account):
    image = bare_image(make_job(bob, account))
    client = logged_in(alice)
    response = client.post(
        f"{COLLECTIONS}add/",
        {
            "name": "Moodboard",
            "items-TOTAL_FORMS": "1",
            "items-INITIAL_FORMS": "0",
            "items-0-image": str(image.pk),
        },
    )
    assert response.status_code == 302, response.content
    collection = Collection.objects.get()
    assert collection.created_by == alice
    assert [(i.image, i.added_by) for i in collection.items.all()] == [(image, alice)]
    listing = client.get(COLLECTIONS)
    assert [(c.name, c.image_count) for c in listing.context["cl"].queryset] == [("Moodboard", 1)]
    duplicate = client.post(
        f"{COLLECTIONS}add/", {"name": "moodboard", "items-TOTAL_FORMS": "0", "items-INITIAL_FORMS": "0"}
    )
    assert duplicate.status_code == 200 and Collection.objects.count() == 1  # the form says why


def test_of_status_needs_no_join_because_only_succeeded_jobs_keep_images(
    bob, account, django_assert_num_queries
):
    image = bare_image(make_job(bob, account, status="succeeded"))
    assert list(Image.objects.gallery().of_status("succeeded")) == [image]
    with django_assert_num_queries(0):
        assert list(Image.objects.gallery().of_status("failed")) == []
    assert "generations_generation" not in str(Image.objects.visible().of_status("succeeded").query)


# -- newest() of a search: the newest ids in order first, the prompt index only for what is older ----------------
@pytest.mark.parametrize("window", [1, 3, 7, 100])
def test_a_search_page_is_the_same_whichever_way_it_is_found(bob, carol, account, monkeypatch, window):
    from generations import search

    monkeypatch.setattr(search, "WINDOW", window)
    texts = ["red fox", "blue whale", "red kite", "green fox", "red fox"]
    jobs = [make_job(bob if i % 2 else carol, account, texts[i % 5]) for i in range(23)]
    images = [bare_image(job) for job in jobs]
    for model, rows in ((Generation, jobs), (Image, images)):
        matching = [r.pk for r in reversed(rows) if "red" in (r.prompt.text)]
        for before in (None, matching[2], matching[-1], rows[0].pk):
            expected = [pk for pk in matching if before is None or pk < before][:4]
            assert [r.pk for r in model.objects.search("red").newest(4, before)] == expected
        assert [r.pk for r in model.objects.search("zebra").newest(4)] == []
        # A filter after the search is kept (and the page found the plain way).
        bobs = [r.pk for r in reversed(rows) if "red" in r.prompt.text and r.user_id == bob.pk][:4]
        assert [r.pk for r in model.objects.search("red").filter(user=bob).newest(4)] == bobs


def test_on_sqlite_a_search_page_walks_the_newest_ids_before_the_prompt_index(bob, account):
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL plans a search page from its statistics")
    bare_image(make_job(bob, account, "red fox"))
    sql = str(Image.objects.gallery().search("red").newest(40).query)
    assert "UNION ALL" in sql and '"prompt_id" + ' in sql
    assert "UNION ALL" not in str(Image.objects.gallery().search("red").filter(user=bob).newest(40).query)
