"""The test suite's settings: production settings (debug off) with test-only secrets, so the suite needs
no environment variables. The values go into the environment so a `qcluster` subprocess shares them."""

import os
import tempfile

os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("FLUXWEB_FERNET_KEYS", "dGVzdC1mZXJuZXQta2V5LTMyLWJ5dGVzLWxvbmctLS0=")
os.environ.setdefault("FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS", "1")
if "FLUXWEB_DATA_DIR" not in os.environ:
    os.environ["FLUXWEB_DATA_DIR"] = os.environ["FLUXWEB_TEST_SHARED_DIR"] = tempfile.mkdtemp(
        prefix="fluxweb-test-"
    )
# Each xdist worker keeps its media in a folder of its own under the session's (tests count the files they
# write); a process given a folder of its own (a test's qcluster subprocess) keeps that one.
worker = os.environ.get("PYTEST_XDIST_WORKER")
if worker and os.environ["FLUXWEB_DATA_DIR"] == os.environ.get("FLUXWEB_TEST_SHARED_DIR"):
    os.environ["FLUXWEB_DATA_DIR"] = os.path.join(os.environ["FLUXWEB_DATA_DIR"], worker)
os.environ.setdefault("FLUXWEB_Q_NAME", f"fluxweb-test-{os.getpid()}")

from fluxweb.settings import *  # noqa: E402, F403

# Hashing each persona's password with the production hasher costs ~0.6 s a test.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Each test process keeps its own cache: tests clear it (on Redis, clear() empties the whole database,
# the broker's queues included), and xdist workers each have a database of their own.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
