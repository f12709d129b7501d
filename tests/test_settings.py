"""Settings from the environment (contract.md), the django-q2 guard (reliability.md 8 item 11), SQLite
options, and the Fernet keys that encrypt provider API keys (reliability.md 5, test plan 29)."""

import importlib
import math
import os
import runpy
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from django.utils.module_loading import import_string

from fluxweb.settings import database_from_url
from generations import credits, crypto, engine, sweeper
from generations.models import Generation, LedgerEntry, ProviderAccount
from generations.providers import PROVIDERS, GenerationRequest

from .conftest import KEYS

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_FILE = ROOT / "fluxweb" / "settings.py"
TEST_KEY = django_settings.FERNET_KEYS[0]  # tests/settings.py's, which encrypts the `accounts` fixture's keys


# -- start-up refusals, in a clean process ---------------------------------------------------------------------
def import_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "FLUXWEB_DATA_DIR": str(tmp_path),
    } | env
    return subprocess.run(
        [sys.executable, "-c", "import fluxweb.settings"],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "env, complaint",
    [
        ({"DJANGO_DEBUG": "0"}, "DJANGO_SECRET_KEY is required"),
        ({}, "DJANGO_SECRET_KEY is required"),  # debug is off by default
        (
            {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "dev-only-fluxweb-secret-key-never-use-in-production"},
            "development secret key",
        ),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG must be 1 or 0"),
        ({"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "s" * 50}, "FLUXWEB_FERNET_KEYS is required"),
    ],
)
def test_it_refuses_to_start_misconfigured(tmp_path, env, complaint):
    result = import_settings(tmp_path, **env)
    assert result.returncode != 0
    assert "django.core.exceptions.ImproperlyConfigured" in result.stderr
    assert complaint in result.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"DJANGO_DEBUG": "1"},  # runserver needs no variables
        {
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "s" * 50,
            "FLUXWEB_FERNET_KEYS": Fernet.generate_key().decode(),
        },
    ],
)
def test_it_starts_configured(tmp_path, env):
    result = import_settings(tmp_path, **env)
    assert result.returncode == 0, result.stderr


# -- parsing, in this process ---------------------------------------------------------------------------------
ENV_NAMES = (
    "DJANGO_DEBUG",
    "DJANGO_SECRET_KEY",
    "DJANGO_ALLOWED_HOSTS",
    "DATABASE_URL",
    "REDIS_URL",
    "FLUXWEB_SITE_URL",
    "FLUXWEB_FERNET_KEYS",
    "FLUXWEB_JOB_DEADLINE",
    "FLUXWEB_Q_WORKERS",
    "FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS",
)


def load(monkeypatch, tmp_path, **env: str) -> dict:
    """The settings module run afresh under `env` (production defaults otherwise)."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLUXWEB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DJANGO_SECRET_KEY", "s" * 50)
    monkeypatch.setenv("FLUXWEB_FERNET_KEYS", Fernet.generate_key().decode())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS_FILE))


def test_it_defaults_to_production_values(monkeypatch, tmp_path):
    loaded = load(monkeypatch, tmp_path)
    assert loaded["DEBUG"] is False
    assert loaded["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1"]
    assert loaded["SITE_URL"] == "http://127.0.0.1:8000"
    assert loaded["DATABASES"]["default"]["NAME"] == tmp_path / "fluxweb.sqlite3"
    assert loaded["FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS"] is False  # only debug or an explicit opt-in


def test_it_reads_the_documented_variables(monkeypatch, tmp_path):
    loaded = load(
        monkeypatch,
        tmp_path,
        DJANGO_ALLOWED_HOSTS="studio.example, api.example",
        FLUXWEB_SITE_URL="https://studio.example/",
        FLUXWEB_FERNET_KEYS="k1,k2",
    )
    assert loaded["ALLOWED_HOSTS"] == ["studio.example", "api.example"]
    assert loaded["SITE_URL"] == "https://studio.example"
    assert loaded["CSRF_TRUSTED_ORIGINS"] == ["https://studio.example"]
    assert loaded["SESSION_COOKIE_SECURE"] and loaded["CSRF_COOKIE_SECURE"]
    assert loaded["FERNET_KEYS"] == ["k1", "k2"]


@pytest.mark.parametrize(
    "name, value",
    [("DJANGO_DEBUG", "yes please"), ("FLUXWEB_JOB_DEADLINE", "ten"), ("DATABASE_URL", "mysql://db/fluxweb")],
)
def test_it_refuses_a_malformed_value(monkeypatch, tmp_path, name, value):
    with pytest.raises(ImproperlyConfigured, match=name):
        load(monkeypatch, tmp_path, **{name: value})


def test_it_parses_a_sqlite_url(tmp_path):
    database = database_from_url(f"sqlite://{tmp_path}/data/fluxweb.sqlite3")
    assert database["ENGINE"] == "fluxweb.sqlite"  # SQLite with a fair queue for writers
    assert Path(database["NAME"]) == tmp_path / "data" / "fluxweb.sqlite3"


def test_it_parses_a_postgres_url():
    database = database_from_url("postgres://flux:p%40ss@db.internal:5432/fluxweb")
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["USER"], database["PASSWORD"], database["HOST"], database["PORT"], database["NAME"]) == (
        "flux",
        "p@ss",
        "db.internal",
        "5432",
        "fluxweb",
    )
    assert database_from_url("postgresql://flux@db/fluxweb")["PORT"] == ""


def test_it_reads_database_url_from_the_environment(monkeypatch, tmp_path):
    loaded = load(monkeypatch, tmp_path, DATABASE_URL="postgres://flux@db.internal:5433/fluxweb")
    assert loaded["DATABASES"]["default"]["HOST"] == "db.internal"
    assert loaded["DATABASES"]["default"]["PORT"] == "5433"


def test_it_configures_sqlite_for_concurrent_writers(tmp_path):
    """IMMEDIATE transactions wait for the lock instead of failing; WAL lets readers run beside the writer
    (reliability.md 1.4)."""
    options = database_from_url(f"sqlite://{tmp_path}/x.sqlite3")["OPTIONS"]
    assert options["transaction_mode"] == "IMMEDIATE"
    assert options["timeout"] >= 20
    assert "journal_mode=WAL" in options["init_command"]
    if django_settings.DATABASES["default"]["ENGINE"] == "fluxweb.sqlite":
        assert django_settings.DATABASES["default"]["OPTIONS"] == options


def test_it_uses_redis_for_the_queue_only_when_redis_url_is_set(monkeypatch, tmp_path):
    orm = load(monkeypatch, tmp_path)["Q_CLUSTER"]
    redis = load(monkeypatch, tmp_path, REDIS_URL="redis://127.0.0.1:6379/0")["Q_CLUSTER"]
    assert orm["orm"] == "default" and "redis" not in orm
    assert redis["redis"] == "redis://127.0.0.1:6379/0" and "orm" not in redis


# -- the django-q2 guard ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", ["1", "2", "8"])
def test_it_keeps_django_q_from_running_a_task_twice(monkeypatch, tmp_path, workers):
    """reliability.md 1.1/1.5 and test plan item 11: a task must finish, and a prefetched one must start, before
    the broker hands it out again (`retry`, counted from dequeue, includes the wait in the cluster's queue)."""
    q = load(monkeypatch, tmp_path, FLUXWEB_Q_WORKERS=workers)["Q_CLUSTER"]
    clusters = [q] + [q | alt for alt in q.get("ALT_CLUSTERS", {}).values()]
    for cluster in clusters:
        timeout, retry = cluster["timeout"], cluster["retry"]
        assert timeout, "a task without a timeout can hold a worker forever"
        # Each task fetched ahead of ours may take a worker for the full timeout: queue_limit of them in the
        # cluster's queue, and bulk - 1 more the pusher holds while it waits for room there.
        ahead = cluster["queue_limit"] + cluster.get("bulk", 1) - 1
        queue_wait = math.ceil(ahead / cluster["workers"]) * timeout
        assert retry >= timeout + 3 + queue_wait  # worker.py adds 3 s to the timer
        assert isinstance(cluster["max_attempts"], int) and cluster["max_attempts"] >= 1
    assert q["catch_up"] is False
    assert "orm" in q  # receipts: a task lost with its worker comes back (Redis would drop it)


@pytest.mark.parametrize("workers", ["1", "2", "8"])
def test_it_sizes_the_cluster_for_bursts(monkeypatch, tmp_path, workers):
    """Issue 9.5: the pusher fetches several tasks per query and keeps more than one per worker queued, and
    no successful task is stored (with save_limit 1000 the monitor read the stored results back on every
    save, 53 % of a core in a 2,000-job run), while a failed one still is."""
    q = load(monkeypatch, tmp_path, FLUXWEB_Q_WORKERS=workers)["Q_CLUSTER"]
    assert q["save_limit"] < 0
    assert q.get("ack_failures") is True
    assert q["queue_limit"] >= 2 * q["workers"]
    assert q["bulk"] >= q["workers"]
    assert q["timeout"] < q["retry"]


def test_it_gives_every_task_room_under_the_timeout():
    """The longest a task can legitimately take must fit in `timeout`, or django-q kills it mid-call."""
    timeout = django_settings.Q_CLUSTER["timeout"]
    read = engine.provider_http.TIMEOUT.read
    assert sweeper.SWEEP_SECONDS + read < timeout  # the last poll round of a sweep
    # A submit or ingest that carries the sweep on (sweeper.take_over) started it within TAKEOVER_WITHIN.
    assert sweeper.TAKEOVER_WITHIN + sweeper.SWEEP_SECONDS + read + sweeper.HELPERS_GRACE + 5 < timeout
    for adapter in PROVIDERS.values():
        assert engine.synchronous_timeout(adapter) + 5 < timeout  # one submit call, plus database work


@pytest.mark.parametrize(
    "migration, name, func",
    [
        ("0002_defaults", "fluxweb-sweeper", "generations.tasks.sweep"),
        ("0003_job_leases", "fluxweb-reaper", "generations.tasks.reap"),
    ],
)
def test_the_migrations_schedule_the_safety_nets(db, migration, name, func):
    """Run by the data migration itself, not found in the test database: a transactional test's flush
    deletes migration data, so a test that only looked for the row would pass only by running first."""
    from django.apps import apps
    from django_q.models import Schedule

    Schedule.objects.filter(name=name).delete()
    module = importlib.import_module(f"generations.migrations.{migration}")
    seed = module.add_defaults if migration == "0002_defaults" else module.add_reaper
    seed(apps, None)
    seed(apps, None)  # idempotent: a re-run keeps one schedule

    schedule = Schedule.objects.get(name=name)
    assert schedule.func == func
    assert schedule.repeats == -1
    assert (schedule.schedule_type, schedule.minutes) == (Schedule.MINUTES, 1)
    assert callable(import_string(func))


# -- Fernet keys ------------------------------------------------------------------------------------------------
@pytest.fixture
def fernet_keys(settings):
    def use(*keys: str) -> None:
        settings.FERNET_KEYS = list(keys)
        crypto.fernet.cache_clear()

    yield use
    crypto.fernet.cache_clear()


def rotate() -> str:
    out = StringIO()
    call_command("provider", "rotate-keys", stdout=out)
    return out.getvalue()


def stored(slug: str) -> ProviderAccount:
    return ProviderAccount.objects.get(slug=slug)


def test_it_rotates_keys_so_the_new_key_alone_decrypts(accounts, fernet_keys):
    old = TEST_KEY
    new = Fernet.generate_key().decode()
    before = {a.slug: a.api_key_encrypted for a in ProviderAccount.objects.all()}

    fernet_keys(new, old)
    assert all(
        stored(slug).api_key == KEYS[slug.removeprefix("sb-")] for slug in before
    )  # both open during rollout
    output = rotate()

    assert "re-encrypted 4 key(s)" in output
    fernet_keys(new)
    for slug, token in before.items():
        account = stored(slug)
        assert account.api_key_encrypted != token and account.api_key_encrypted.startswith("gAAAA")
        assert account.api_key == KEYS[slug.removeprefix("sb-")]
        assert Fernet(new.encode()).decrypt(account.api_key_encrypted.encode()).decode() == account.api_key
    fernet_keys(old)
    with pytest.raises(crypto.KeyUnavailable):
        _ = stored("sb-apiframe").api_key


def test_it_names_the_accounts_rotation_cannot_open(accounts, fernet_keys):
    stranger = Fernet.generate_key().decode()
    fernet_keys(stranger)
    lost = stored("sb-vtrix")
    lost.set_api_key("vtrix_from_a_lost_key")
    lost.save()
    new = Fernet.generate_key().decode()

    fernet_keys(new, TEST_KEY)
    with pytest.raises(CommandError, match="sb-vtrix"):
        rotate()

    fernet_keys(new)
    assert stored("sb-apiframe").api_key == KEYS["apiframe"]  # the others were rotated all the same


def test_it_fails_clearly_with_a_wrong_key_and_never_sends_ciphertext(
    bob, accounts, fresh_sandbox, fernet_keys, monkeypatch
):
    monkeypatch.setattr(engine, "enqueue", lambda *args: None)
    generation, _ = engine.create(
        bob, GenerationRequest(prompt="a lighthouse", model="flux-2-max"), provider="sb-apiframe"
    )
    fernet_keys(Fernet.generate_key().decode())  # the key that encrypted the stored keys is gone

    with pytest.raises(crypto.KeyUnavailable, match="FLUXWEB_FERNET_KEYS"):
        _ = stored("sb-apiframe").api_key
    held = generation.credits_reserved
    assert held > 0 and credits.account_for(bob).reserved == held

    engine.submit(generation.pk)  # the job fails; the worker does not crash

    failed = Generation.objects.get(pk=generation.pk)
    assert failed.status == Generation.Status.FAILED and failed.error_code == "auth"
    assert "sb-apiframe" in failed.error_message and "FLUXWEB_FERNET_KEYS" in failed.error_message
    assert (failed.credits_charged, failed.credits_refunded) == (0, held)
    account = credits.account_for(bob)
    assert (account.balance, account.reserved) == (1000, 0)  # bob's grant, whole again
    refunds = LedgerEntry.objects.filter(generation=failed, kind=LedgerEntry.Kind.REFUND)
    assert list(refunds.values_list("amount", flat=True)) == [held]
    assert fresh_sandbox.requests == []  # nothing at all reached the provider, let alone the ciphertext


def test_it_refuses_a_malformed_fernet_key_at_use(db, fernet_keys):
    fernet_keys("not-a-fernet-key")
    with pytest.raises(ImproperlyConfigured, match="FLUXWEB_FERNET_KEYS"):
        crypto.encrypt("x")


def test_it_reports_an_unreadable_key_in_the_admin_without_calling_the_provider(
    alice, accounts, fresh_sandbox, fernet_keys
):
    fernet_keys(Fernet.generate_key().decode())
    client = Client()
    client.force_login(alice)

    response = client.post(
        "/admin/generations/provideraccount/",
        {"action": "test_connection", "_selected_action": [accounts["apiframe"].pk]},
        follow=True,
    )

    shown = " | ".join(str(m) for m in response.context["messages"])
    assert "sb-apiframe: The stored API key cannot be decrypted" in shown
    assert fresh_sandbox.requests == []


def test_it_keeps_polling_other_accounts_when_one_key_is_unreadable(
    bob, accounts, fresh_sandbox, fernet_keys, monkeypatch
):
    monkeypatch.setattr(engine, "enqueue", lambda *args: None)
    fernet_keys(Fernet.generate_key().decode())
    lost = stored("sb-vtrix")
    lost.set_api_key("vtrix_under_a_lost_key")
    lost.save()
    fernet_keys(TEST_KEY)
    ok, _ = engine.create(
        bob, GenerationRequest(prompt="a lighthouse", model="flux-2-max"), provider="sb-apiframe"
    )
    engine.submit(ok.pk)
    Generation.objects.create(
        user=bob,
        prompt=ok.prompt,
        model="flux-2-max",
        account=lost,
        status="running",
        provider_job_id="vtrix-job",
        next_poll_at=timezone.now() - timedelta(seconds=1),
    )
    Generation.objects.filter(pk=ok.pk).update(next_poll_at=timezone.now())
    submitted = len(fresh_sandbox.requests)

    sweeper.sweep(seconds=0.5)

    assert any(r.provider == "apiframe" and r.method == "GET" for r in fresh_sandbox.requests[submitted:])
