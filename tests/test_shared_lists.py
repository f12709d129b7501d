"""The lists every web process shows alike (the studio's provider accounts, the gallery's filter options) are
cached in the cache the processes share, under a version any change replaces (generations/shared.py): a
change made in one process shows in every other at once, not after the cache entry expires (issue 8).

"Another process" is a real one: a fork of the test process that does what that process's save signal does
(its write reaches the database; its word about it reaches only the shared cache)."""

from __future__ import annotations

import os

import pytest
from django.core.cache import cache

from generations import gallery, signals, views
from generations.models import Collection, ProviderAccount
from generations.shared import SharedList


@pytest.fixture
def shared_cache(settings, tmp_path):
    """The production default without Redis: files in the data dir, which every process reads."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(tmp_path / "cache"),
        }
    }


def in_another_process(work) -> None:
    pid = os.fork()
    if pid == 0:  # the child: no database, no test teardown; only the cache
        try:
            work()
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_collection_made_in_another_process_is_offered_here_at_once(db, shared_cache):
    assert gallery.filter_options()["collection"] == []
    Collection.objects.bulk_create([Collection(name="Moodboard")])  # its row, without a signal here
    assert gallery.filter_options()["collection"] == []  # this process's read is cached
    in_another_process(gallery.forget_options)  # what Collection's post_save does over there
    assert [c.name for c in gallery.filter_options()["collection"]] == ["Moodboard"]


def test_a_provider_account_disabled_in_another_process_leaves_the_studio_here_at_once(db, shared_cache):
    account = ProviderAccount(slug="sb-vtrix", kind="vtrix", base_url="http://127.0.0.1:9/vtrix")
    account.set_api_key("key-1234")
    account.save()
    assert [a.slug for a in views.enabled_accounts()] == ["sb-vtrix"]
    ProviderAccount.objects.filter(pk=account.pk).update(enabled=False)  # its write, without a signal here
    assert [a.slug for a in views.enabled_accounts()] == ["sb-vtrix"]  # cached
    in_another_process(lambda: signals.forget_accounts(ProviderAccount))  # its post_save over there
    assert views.enabled_accounts() == []


def test_a_list_read_before_a_change_and_stored_after_it_is_never_shown(shared_cache):
    """The race a plain delete loses: this process reads the old rows, another changes them and forgets the
    list, then this one stores what it read. Under a replaced version that copy is never read again."""
    reads = []

    def load():
        reads.append(len(reads) + 1)
        if len(reads) == 1:
            in_another_process(listing.forget)  # the change lands while this process is reading
        return reads[-1]

    listing = SharedList("test:race", load)
    assert listing.get() == 1
    assert listing.get() == 2 and listing.get() == 2


def test_a_change_inside_a_transaction_is_forgotten_again_when_it_commits(
    db, shared_cache, django_capture_on_commit_callbacks
):
    listing = SharedList("test:commit", lambda: "rows")
    listing.get()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        listing.forget()
        during = cache.get(listing.version_key)
    assert len(callbacks) == 1 and cache.get(listing.version_key) != during


def test_every_process_shares_the_cache_redis_when_set_else_files_in_the_data_dir(monkeypatch, tmp_path):
    from .test_settings import load

    files = load(monkeypatch, tmp_path)["CACHES"]["default"]
    assert files["BACKEND"].endswith("FileBasedCache") and files["LOCATION"] == tmp_path / "cache"
    redis = load(monkeypatch, tmp_path, REDIS_URL="redis://127.0.0.1:6379/8")["CACHES"]["default"]
    assert redis["BACKEND"].endswith("RedisCache") and redis["LOCATION"] == "redis://127.0.0.1:6379/8"
