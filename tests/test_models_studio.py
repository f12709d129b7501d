"""The team studio's data (issue 8): images carry their owner, model and account for flat gallery filters,
soft delete, favorites, team collections, comparison groups, and the migration that fills existing rows."""

from __future__ import annotations

import io

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from PIL import Image as PILImage

from generations import media
from generations.models import (
    Collection,
    CollectionItem,
    Favorite,
    Generation,
    Image,
    Prompt,
    ProviderAccount,
)


@pytest.fixture
def account(db) -> ProviderAccount:
    return ProviderAccount.objects.create(
        slug="acme", kind="apiframe", base_url="http://127.0.0.1:9/apiframe"
    )


def make_job(user, account, prompt: str = "a lighthouse at dusk", **fields) -> Generation:
    return Generation.objects.create(
        user=user, prompt=Prompt.remember(prompt, user), model="flux-2-max", account=account, **fields
    )


def png() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (8, 8), "teal").save(out, "PNG")
    return out.getvalue()


def stored(generation: Generation, index: int = 0) -> Image:
    return media.store_image(generation, index, media.check_image(png()), {"prompt": "x"})


def bare_image(generation: Generation, index: int = 0, **fields) -> Image:
    return Image.objects.create(
        generation=generation,
        index=index,
        file="images/x.png",
        thumbnail="images/x_t.jpg",
        width=8,
        height=8,
        format="png",
        bytes=1,
        **fields,
    )


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
