"""Small lists every web process shows alike (the studio's provider accounts, the gallery's filter options),
kept in Django's cache so that a page renders them without a query (issue 8: <= 3 queries a page).

The cache is shared between processes (settings.CACHES: Redis with REDIS_URL, else files in the data dir),
and a list is stored under a version that any change replaces, on the spot and again when the change
commits. Deleting the key instead would race: a process that read the old rows just before the change
could store them again just after the delete, and every process would show them until they expired; under
a replaced version that late copy is never read. A version is a random token, not a counter, so a version
key the cache evicted cannot come back as an old number whose list is still stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.core.cache import cache
from django.db import transaction


class SharedList:
    def __init__(self, name: str, load: Callable[[], object], seconds: int = 60) -> None:
        self.name = name
        self.load = load
        self.seconds = seconds  # a bound on what a lost change can leave behind (a cache that fell over)

    @property
    def version_key(self) -> str:
        return f"fluxweb:{self.name}:version"

    def get(self):
        version = cache.get(self.version_key)
        if version is None:
            version = uuid.uuid4().hex
            if not cache.add(self.version_key, version, None):
                version = cache.get(self.version_key) or version
        key = f"fluxweb:{self.name}:{version}"
        found = cache.get(key)
        if found is None:
            found = self.load()
            cache.set(key, found, self.seconds)
        return found

    def forget(self, **kwargs) -> None:
        """A row behind the list changed: every process reloads it. Usable as a signal receiver."""
        self.bump()
        if transaction.get_connection().in_atomic_block:
            # A process that reloads before the change commits reads the old rows: bump once more after.
            transaction.on_commit(self.bump)

    def bump(self) -> None:
        cache.set(self.version_key, uuid.uuid4().hex, None)
