#!/usr/bin/env python
"""FluxWeb benchmark: the real engine, a real `qcluster`, the provider sandbox, all on loopback.

    .venv/bin/python bench/run.py [--jobs N] [--quick] [--redis] [--pg] [--keep] [--json PATH]
                                  [--only engine,gallery,issue9,...] [--sizes 1000,10000,100000] [--reps N]
                                  [--workers 2] [--burst 100] [--inflight 500,1000,2000] [--clients 20]

From nothing: a temp data dir and SQLite DB (migrated), the provider sandbox in this process (Apiframe,
latency uniform 4..6 s), a user with credits and an Apiframe account pointed at the sandbox, and a
`manage.py qcluster` subprocess (ORM broker; the Redis broker with --redis when 127.0.0.1:6379 answers,
under a unique FLUXWEB_Q_NAME). Then, with the real engine:

1. polling cold: N jobs 0.25 s apart on an empty history, webhooks sent to a closed loopback port so every
   delivery fails: sandbox job ready -> `provider_done_at` and -> `finished_at` (succeeded in the API),
   provider polls per job (the sandbox's recorded GET /v2/jobs/<id>);
2. polling warm: the same again, now with the cold run as the account's history;
3. webhooks: N jobs through the JSON API of the Django app, served by a threaded wsgiref server in this
   process, so the sandbox's signed webhook reaches /hooks/<token> (qcluster restarted with that site URL);
4. create -> provider submit: from engine.create returning (1, 2) and from the API POST (3) until the
   sandbox recorded the submit;
5. `generations.media` thumbnail() and embed_metadata() on 2048x2048 JPEG, WebP and PNG made with Pillow,
   and the peak RSS one thumbnail adds.

6. the gallery and lists (bench/gallery.py, issue 8): `seed_images` grows the database to each of --sizes
   images, a copy kept at each; every gallery page and fragment, the prompt history and each variant of
   `GET /api/v1/generations` is timed in-process on every copy, in rounds alternating between the sizes:
   queries, p50 and p95 side by side.

7. issue 9.8 (bench/burst.py, `--only issue9` or any of burst,inflight,budget,clients,ingest): jobs created
   together on a fresh 2-worker cluster (a burst of 100; 500/1,000/2,000 in flight: wall against ideal,
   sweeper CPU), a 60/min budget with 40 jobs, concurrent API clients through gunicorn, ingest CPU per format;
   `--pg` runs on the local PostgreSQL.

Prints one table, figure | measured | target | ok?, against performance.md's targets, and the gallery's table;
exits 1 when a target is missed. `--only` runs one section. Connects only to 127.0.0.1. Removes the subprocess, the temp dir and (with --redis) its Redis keys
on exit, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import burst  # noqa: E402  (bench/burst.py, beside this file: issue 9.8)
import gallery  # noqa: E402  (bench/gallery.py, beside this file)

PROVIDER = "apiframe"
ACCOUNT = "bench-apiframe"
API_KEY = "afk_bench_key_0001"
MODEL = "flux-2-max"
LATENCY = (4.0, 6.0)  # 5 s +- 1 s, uniform
SPACING = 0.25  # seconds between submits
SUBMIT_PATH = "/v2/images/generate"
POLL_PREFIX = "/v2/jobs/"
REDIS = ("127.0.0.1", 6379)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- statistics and the table ------------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float:
    """Percentile with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@dataclass
class Row:
    figure: str
    measured: str
    target: str = "-"
    ok: bool | None = None  # None: for information, no target

    @property
    def verdict(self) -> str:
        return "info" if self.ok is None else ("yes" if self.ok else "NO")


def secs(x: float) -> str:
    return f"{x:.3f} s"


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def print_table(rows: list[Row], header: str) -> None:
    cols = ["figure", "measured", "target", "ok?"]
    data = [[r.figure, r.measured, r.target, r.verdict] for r in rows]
    widths = [max(len(c), *(len(d[i]) for d in data)) for i, c in enumerate(cols)]
    print()
    print(header)
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for d in data:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(d, widths, strict=True)) + " |")
    print(flush=True)


# -- loopback helpers --------------------------------------------------------------------------------------
def redis_answers() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def closed_port() -> socket.socket:
    """A loopback port that is bound but never listens: every connection to it is refused at once, and
    nothing else can take it while we hold it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s


class QuietHandler(WSGIRequestHandler):
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002
        pass


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 256


# -- the run ----------------------------------------------------------------------------------------------------
@dataclass
class Job:
    phase: str
    pk: int
    t_create: float  # wall clock when create (or the POST) started
    t_created: float  # wall clock when it returned
    job_id: str = ""
    ready: float = 0.0  # wall clock the sandbox job became ready
    submit_seen: float = 0.0
    polls: list[float] = field(default_factory=list)
    status: str = ""
    started_at: float = 0.0
    provider_done_at: float = 0.0
    finished_at: float = 0.0
    warm: bool = False  # >= 3 finished jobs were in the account's history when this one was submitted
    webhook_at: float = 0.0


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="fluxweb-bench-"))
        self.qcluster: subprocess.Popen | None = None
        self.qlog = None
        self.sandbox = None
        self.httpd: ThreadingWSGIServer | None = None
        self.dead_port = closed_port()
        self.redis = False
        self.q_name = f"fluxweb-bench-{os.getpid()}-{secrets.token_hex(3)}"
        self.env: dict[str, str] = {}
        self.rows: list[Row] = []
        self.jobs: list[Job] = []
        self.load: list[tuple[float, ...]] = []

    # -- set-up --------------------------------------------------------------------------------------------
    def database_url(self) -> str:
        """SQLite in the temp dir, or with --pg a fresh database on the local PostgreSQL (dropped on exit)."""
        if not self.args.pg:
            return f"sqlite:///{self.tmp / 'bench.sqlite3'}"
        import psycopg

        self.pg_name = f"fluxweb_bench_{os.getpid()}"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.pg_name}"')
        return f"postgres://postgres@127.0.0.1:5432/{self.pg_name}"

    def drop_pg(self) -> None:
        if not getattr(self, "pg_name", None):
            return
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')

    def configure(self) -> None:
        if self.args.redis:
            self.redis = redis_answers()
            if not self.redis:
                log("--redis given but nothing answers PING on 127.0.0.1:6379: using the ORM broker")
        env = {
            "DJANGO_SETTINGS_MODULE": "fluxweb.settings",
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "fluxweb-bench-" + secrets.token_urlsafe(32),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "FLUXWEB_FERNET_KEYS": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "FLUXWEB_DATA_DIR": str(self.tmp),
            "DATABASE_URL": self.database_url(),
            "FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS": "1",
            "FLUXWEB_SITE_URL": f"http://127.0.0.1:{self.dead_port.getsockname()[1]}",
            "FLUXWEB_SANDBOX_URL": "http://127.0.0.1:9",  # unused; never the default 8765 of a running studio
            "FLUXWEB_Q_NAME": self.q_name,
            "FLUXWEB_LOG_LEVEL": "WARNING",
        }
        os.environ.pop("REDIS_URL", None)
        if self.redis:
            env["REDIS_URL"] = f"redis://{REDIS[0]}:{REDIS[1]}/0"
        os.environ.update(env)
        self.env = dict(os.environ)

        import django

        django.setup()
        logging.getLogger("django-q").setLevel(logging.WARNING)
        from django.core.management import call_command

        t = time.perf_counter()
        call_command("migrate", verbosity=0, interactive=False)
        log(f"migrated {self.tmp / 'bench.sqlite3'} in {time.perf_counter() - t:.1f} s")

        from django.contrib.auth import get_user_model

        from generations import credits
        from generations.models import ApiToken, ProviderAccount
        from generations.providers.sandbox import Sandbox

        self.sandbox = Sandbox(host="127.0.0.1", latency=LATENCY).start()
        self.sandbox.set_latency(*LATENCY)
        log(f"sandbox on {self.sandbox.url}, latency uniform {LATENCY[0]:g}..{LATENCY[1]:g} s")

        self.user = get_user_model().objects.create_user(
            "bench", "bench@example.invalid", secrets.token_urlsafe(16)
        )
        credits.grant(self.user, 10_000_000, note="bench credits")
        # The request budget lifted: the engine phases measure FluxWeb's own lag. At Apiframe's default of
        # 120/min the two polling phases (40 submits, 80 polls) spend it, and the webhook phase's submits
        # waited ~38 s for it: the budget working, not the engine lagging (`--only budget` measures that).
        account = ProviderAccount(
            slug=ACCOUNT,
            kind=PROVIDER,
            base_url=self.sandbox.base_url(PROVIDER),
            priority=0,
            max_rpm=1_000_000,
        )
        account.set_api_key(API_KEY)
        account.save()
        self.account = account
        _, self.token = ApiToken.issue(self.user, "bench")

    def start_web(self) -> str:
        from django.core.wsgi import get_wsgi_application

        self.httpd = make_server(
            "127.0.0.1",
            0,
            get_wsgi_application(),
            server_class=ThreadingWSGIServer,
            handler_class=QuietHandler,
        )
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="bench-wsgi", daemon=True
        ).start()
        url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        log(f"Django app (wsgiref, threaded) on {url}")
        return url

    def start_qcluster(self, site_url: str) -> None:
        env = dict(self.env, FLUXWEB_SITE_URL=site_url)
        self.qlog = open(self.tmp / "qcluster.log", "a")  # noqa: SIM115
        t = time.perf_counter()
        self.qcluster = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "qcluster"],
            env=env,
            cwd=ROOT,
            stdout=self.qlog,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Ready when it has run a task: enqueue a no-op and wait for its result.
        from django_q.tasks import async_task, result

        task_id = async_task("os.getpid", task_name="bench-probe", save=True)  # successes are not kept
        deadline = time.monotonic() + 30
        while result(task_id) is None:
            if self.qcluster.poll() is not None:
                raise RuntimeError(
                    f"qcluster exited with {self.qcluster.returncode}; see {self.tmp / 'qcluster.log'}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError("qcluster did not run a task within 30 s")
            time.sleep(0.05)
        broker = "Redis" if self.redis else "ORM"
        log(
            f"qcluster pid {self.qcluster.pid} ({broker} broker, webhooks to {site_url}) ready in {time.perf_counter() - t:.1f} s"
        )

    def stop_qcluster(self) -> None:
        proc, self.qcluster = self.qcluster, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log("qcluster did not stop in 15 s: killing its process group")
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what we started
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        if self.qlog:
            self.qlog.close()
            self.qlog = None

    def wait_sweeper_idle(self, timeout: float = 10.0) -> None:
        """A sweeper stopped while holding the lease would keep the next one out until it expires."""
        from django.utils import timezone

        from generations.models import Lease

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not Lease.objects.filter(name="sweeper", expires_at__gt=timezone.now()).exists():
                return
            time.sleep(0.05)
        log("the sweeper still holds its lease")

    def cleanup(self) -> None:
        try:
            self.stop_qcluster()
        except Exception as exc:  # noqa: BLE001 - keep cleaning up
            log(f"stopping qcluster: {exc!r}")
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        if self.sandbox is not None:
            self.sandbox.stop()
        self.dead_port.close()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: BLE001
            pass
        if self.redis:
            try:
                import redis

                client = redis.Redis(host=REDIS[0], port=REDIS[1], socket_timeout=2)
                keys = list(client.scan_iter(f"django_q:{self.q_name}*"))
                if keys:
                    client.delete(*keys)
            except Exception as exc:  # noqa: BLE001
                log(f"could not delete this run's Redis keys: {exc!r}")
        try:
            self.drop_pg()
        except Exception as exc:  # noqa: BLE001
            log(f"could not drop the bench database: {exc!r}")
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- generating -----------------------------------------------------------------------------------------
    def request(self, prompt: str):
        from generations.providers import GenerationRequest

        return GenerationRequest(
            prompt=prompt, model=MODEL, aspect_ratio="1:1", megapixels=1.0, output_format="jpeg"
        )

    def create_engine(self, phase: str, i: int) -> Job:
        from generations import engine

        t0 = time.time()
        generation, _ = engine.create(
            self.user, self.request(f"bench {phase} job {i}: a lighthouse at dusk"), provider=ACCOUNT
        )
        return Job(phase, generation.pk, t0, time.time())

    def create_api(self, client, web: str, phase: str, i: int) -> Job:
        body = {
            "prompt": f"bench {phase} job {i}: a lighthouse at dusk",
            "model": MODEL,
            "aspect_ratio": "1:1",
            "megapixels": 1.0,
            "output_format": "jpeg",
            "provider": ACCOUNT,
        }
        t0 = time.time()
        response = client.post(
            f"{web}/api/v1/generations", json=body, headers={"Authorization": f"Bearer {self.token}"}
        )
        t1 = time.time()
        if response.status_code != 202:
            raise RuntimeError(f"API create answered {response.status_code}: {response.text[:300]}")
        return Job(phase, response.json()["id"], t0, t1)

    def run_jobs(self, phase: str, make) -> list[Job]:
        from generations.models import Generation

        n = self.args.jobs
        jobs = []
        start = time.monotonic()
        for i in range(n):
            jobs.append(make(i))
            pause = start + (i + 1) * SPACING - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        log(f"{phase}: {n} jobs created in {time.monotonic() - start:.1f} s; waiting for them to finish")
        pks = [j.pk for j in jobs]
        deadline = time.monotonic() + LATENCY[1] + 45
        while time.monotonic() < deadline:
            if not Generation.objects.filter(pk__in=pks, status__in=Generation.IN_FLIGHT).exists():
                break
            time.sleep(0.1)
        else:
            log(f"{phase}: some jobs still in flight after the deadline")
        self.collect(jobs)
        return jobs

    def collect(self, jobs: list[Job]) -> None:
        from generations.models import Generation

        requests = [r for r in self.sandbox.requests if r.provider == PROVIDER]
        deliveries = {
            d["job"]: d
            for d in self.sandbox.deliveries
            if d["provider"] == PROVIDER and d["event"] == "completed"
        }
        history = list(
            Generation.objects.filter(account=self.account, provider_done_at__isnull=False).values_list(
                "provider_done_at", flat=True
            )
        )
        for job in jobs:
            g = Generation.objects.get(pk=job.pk)
            job.status = g.status
            job.job_id = g.provider_job_id
            job.started_at = g.started_at.timestamp() if g.started_at else 0.0
            job.provider_done_at = g.provider_done_at.timestamp() if g.provider_done_at else 0.0
            job.finished_at = g.finished_at.timestamp() if g.finished_at and g.status == "succeeded" else 0.0
            sandbox_job = self.sandbox.job(PROVIDER, g.provider_job_id) if g.provider_job_id else None
            if sandbox_job is not None:
                job.ready = sandbox_job.completed_wall
            prefix = f"fluxweb-{g.pk}-"
            submits = [
                r.time
                for r in requests
                if r.method == "POST"
                and r.path == SUBMIT_PATH
                and (r.headers.get("idempotency-key") or "").startswith(prefix)
            ]
            job.submit_seen = min(submits) if submits else 0.0
            job.polls = sorted(
                r.time
                for r in requests
                if r.method == "GET" and g.provider_job_id and r.path == POLL_PREFIX + g.provider_job_id
            )
            job.warm = g.started_at is not None and sum(1 for d in history if d < g.started_at) >= 3
            if g.provider_job_id in deliveries:
                job.webhook_at = deliveries[g.provider_job_id]["time"]

    # -- the measurements ---------------------------------------------------------------------------------
    def lag_rows(self, jobs: list[Job], label: str, p50_target: float | None, p95_target: float) -> None:
        ok_jobs = [j for j in jobs if j.status == "succeeded" and j.ready and j.finished_at]
        failed = [j for j in jobs if j.status != "succeeded"]
        if failed:
            self.rows.append(
                Row(
                    f"{label}: jobs not succeeded",
                    f"{len(failed)} of {len(jobs)} ({', '.join(sorted({j.status for j in failed}))})",
                    "0",
                    False,
                )
            )
        done = [j.provider_done_at - j.ready for j in ok_jobs if j.provider_done_at]
        fin = [j.finished_at - j.ready for j in ok_jobs]
        if fin:
            p50, p95 = pct(fin, 50), pct(fin, 95)
            if p50_target is not None:
                self.rows.append(
                    Row(
                        f"{label}: ready -> succeeded p50",
                        secs(p50),
                        f"<= {p50_target:g} s",
                        p50 <= p50_target,
                    )
                )
            self.rows.append(
                Row(f"{label}: ready -> succeeded p95", secs(p95), f"<= {p95_target:g} s", p95 <= p95_target)
            )
        if done:
            self.rows.append(
                Row(
                    f"{label}:   detected (ready -> provider_done_at) p50 / p95",
                    f"{secs(pct(done, 50))} / {secs(pct(done, 95))}",
                )
            )
            ingest = [j.finished_at - j.provider_done_at for j in ok_jobs if j.provider_done_at]
            self.rows.append(
                Row(
                    f"{label}:   ingest (provider_done_at -> succeeded) p50 / p95",
                    f"{secs(pct(ingest, 50))} / {secs(pct(ingest, 95))}",
                )
            )

    def poll_rows(self, jobs: list[Job], label: str, judged: bool) -> None:
        done = [j for j in jobs if j.status == "succeeded"]
        if not done:
            return
        polls = [len(j.polls) for j in done]
        avg = mean(polls)
        figure = f"{label}: provider polls per job, average (max)"
        measured = f"{avg:.2f} ({max(polls)})"
        self.rows.append(Row(figure, measured, "<= 5 avg", avg <= 5) if judged else Row(figure, measured))
        first = [j.polls[0] - j.submit_seen for j in done if j.polls and j.submit_seen]
        # Gaps between polls of one job that end before it was ready: the engine's "likely" cadence asks 0.35 s.
        gaps = [b - a for j in done for a, b in zip(j.polls, j.polls[1:], strict=False) if b <= j.ready]
        cold = sum(1 for j in done if not j.warm)
        self.rows.append(
            Row(
                f"{label}:   first poll after submit p50 / poll gap p50 / cold-submitted jobs",
                f"{secs(pct(first, 50))} / {secs(pct(gaps, 50)) if gaps else '-'} / {cold} of {len(done)}",
            )
        )

    def phase_polling(self, label: str) -> list[Job]:
        log(
            f"{label}: polling only, {self.args.jobs} jobs {SPACING:g} s apart (webhooks go to a closed port)"
        )
        jobs = self.run_jobs(label, lambda i: self.create_engine(label, i))
        self.lag_rows(jobs, label, 0.4, 1.0)
        self.poll_rows(jobs, label, judged=True)
        return jobs

    def phase_webhooks(self, web: str) -> list[Job]:
        import httpx

        label = "webhooks"
        log(f"{label}: webhooks to {web}, {self.args.jobs} jobs via the API, {SPACING:g} s apart")
        with httpx.Client(timeout=30, trust_env=False) as client:
            jobs = self.run_jobs(label, lambda i: self.create_api(client, web, label, i))
        self.lag_rows(jobs, label, None, 0.3)
        delivered = [j.webhook_at - j.ready for j in jobs if j.webhook_at and j.ready]
        if delivered:
            self.rows.append(
                Row(
                    f"{label}:   webhook answered (ready -> 204 at the sandbox) p50 / p95",
                    f"{secs(pct(delivered, 50))} / {secs(pct(delivered, 95))}",
                )
            )
        self.poll_rows(jobs, label, judged=False)
        return jobs

    def submit_rows(self, jobs: list[Job], how: str, from_return: bool, cluster_start: int = 0) -> None:
        """`cluster_start`: the index in `jobs` of the first job after each qcluster start (one start here)."""
        lags = [j.submit_seen - (j.t_created if from_return else j.t_create) for j in jobs if j.submit_seen]
        if not lags:
            return
        broker = "Redis" if self.redis else "ORM"
        target = 0.030 if self.redis else 0.150
        p50 = pct(lags, 50)
        self.rows.append(
            Row(
                f"create -> submit ({how} -> sandbox saw the POST), {broker} broker, p50 / p95",
                f"{ms(p50)} / {ms(pct(lags, 95))}",
                f"p50 <= {target * 1000:.0f} ms",
                p50 <= target,
            )
        )
        returned = [j.t_created - j.t_create for j in jobs]
        self.rows.append(
            Row(
                f"  {how.split(' ')[0]} call itself p50 / p95",
                f"{ms(pct(returned, 50))} / {ms(pct(returned, 95))}",
            )
        )
        # A fresh worker process pays one-time costs on its first task (task import, the httpx client and its
        # CA bundle, a DB connection): show the figure without the first Q_WORKERS jobs after the start.
        from django.conf import settings

        skip = range(cluster_start, cluster_start + settings.Q_WORKERS)
        later = [
            j.submit_seen - (j.t_created if from_return else j.t_create)
            for i, j in enumerate(jobs)
            if j.submit_seen and i not in skip
        ]
        if later:
            self.rows.append(
                Row(
                    f"  without the first {settings.Q_WORKERS} jobs after the qcluster start (fresh workers) "
                    "p50 / p95",
                    f"{ms(pct(later, 50))} / {ms(pct(later, 95))}",
                )
            )

    # -- media micro-benchmarks -------------------------------------------------------------------------------
    def media_rows(self) -> None:
        from generations.providers.sandbox import images as sandbox_images

        log("media: thumbnail and metadata micro-benchmarks, 2048x2048")
        encoded = self.photos_encoded(2048)
        for fmt, data in encoded.items():
            (self.tmp / f"bench.{fmt}").write_bytes(data)
        reps = 7 if self.args.quick else 15
        self.media_set("photo-like", encoded, reps, judged=True)
        # What the sandbox serves (a smooth gradient with a caption): what the ingest in phases 1-2 handled.
        rendered = {
            fmt: sandbox_images.render(2048, 2048, fmt, "a lighthouse at dusk", 42)
            for fmt in ("jpeg", "webp", "png")
        }
        self.media_set("sandbox-rendered", rendered, reps, judged=False)
        self.rss_row()

    @classmethod
    def photos_encoded(cls, size: int) -> dict[str, bytes]:
        """One photo-like picture as each format is delivered: JPEG q90, WebP q90, PNG level 6."""
        photo, encoded = cls.photo_like(size), {}
        for fmt, kwargs in (
            ("jpeg", {"quality": 90}),
            ("webp", {"quality": 90, "method": 4}),
            ("png", {"compress_level": 6}),
        ):
            out = io.BytesIO()
            photo.save(out, fmt.upper(), **kwargs)
            encoded[fmt] = out.getvalue()
        return encoded

    @staticmethod
    def photo_like(size: int):
        """Smooth colour fields, edges and a fine grain: pure gradients decode unrealistically fast and
        compress to nothing, pure noise is unrealistically slow."""
        from PIL import Image, ImageDraw, ImageFilter

        r = Image.linear_gradient("L").resize((size, size))
        g = Image.radial_gradient("L").resize((size, size))
        b = Image.effect_mandelbrot((size, size), (-2.0, -1.25, 0.75, 1.25), 64)
        image = Image.merge("RGB", (r, g, b))
        draw = ImageDraw.Draw(image)
        for k in range(40):
            x, y = (k * 397) % size, (k * 911) % size
            draw.ellipse((x, y, x + 300, y + 200), fill=((k * 53) % 256, (k * 97) % 256, (k * 31) % 256))
        image = image.filter(ImageFilter.GaussianBlur(3))
        grain = Image.merge("RGB", [Image.effect_noise((size, size), 12)] * 3)
        return Image.blend(image, grain, 0.15)

    def media_set(self, kind: str, encoded: dict[str, bytes], reps: int, judged: bool) -> None:
        from generations import media

        metadata = {
            "prompt": "a lighthouse at dusk, " * 10,
            "model": MODEL,
            "provider": PROVIDER,
            "seed": 123456789,
            "params": {"aspect_ratio": "1:1", "megapixels": 1.0, "output_format": "jpeg"},
            "generation": 1,
            "index": 0,
        }
        targets = {"jpeg": 0.050, "webp": 0.050, "png": 0.200}
        embed_all = []
        for fmt, data in encoded.items():
            checked = media.check_image(data)
            media.thumbnail(data)  # warm-up: codec set-up, first allocations
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                media.thumbnail(data)
                times.append(time.perf_counter() - t)
            p50 = pct(times, 50)
            figure = f"thumbnail 2048² {fmt.upper()} ({kind}, {len(data) // 1024} KiB) -> 512 px, p50 (min)"
            measured = f"{ms(p50)} ({ms(min(times))})"
            if judged:
                self.rows.append(
                    Row(figure, measured, f"p50 <= {targets[fmt] * 1000:.0f} ms", p50 <= targets[fmt])
                )
            else:
                self.rows.append(Row(figure, measured))
            embed = []
            for _ in range(reps * 4):
                t = time.perf_counter()
                out = media.embed_metadata(checked, metadata)
                embed.append(time.perf_counter() - t)
            if fmt != "webp":
                media.check_image(out)  # the spliced file still decodes
            embed_all.append((fmt, pct(embed, 50)))
        worst = max(v for _, v in embed_all)
        figure = (
            f"metadata embedding p50, {kind} ("
            + ", ".join(f"{f.upper()} {ms(v)}" for f, v in embed_all)
            + ")"
        )
        self.rows.append(
            Row(figure, ms(worst) + " worst", "<= 5 ms", worst <= 0.005)
            if judged
            else Row(figure, ms(worst) + " worst")
        )

    def rss_row(self) -> None:
        """Peak RSS one thumbnail adds, per format, each in a fresh process so no other heap hides it.
        VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would report our peak."""
        script = (
            "import sys, django; django.setup()\n"
            "from pathlib import Path; from generations import media\n"
            "data = Path(sys.argv[1]).read_bytes()\n"
            "def hwm():\n"
            "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "before = hwm(); media.thumbnail(data); print(hwm() - before)\n"
        )
        grown = {}
        for fmt in ("jpeg", "webp", "png"):
            try:
                done = subprocess.run(
                    [sys.executable, "-c", script, str(self.tmp / f"bench.{fmt}")],
                    env=self.env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                )
                grown[fmt] = int(done.stdout.strip().splitlines()[-1]) / 1024
            except (subprocess.SubprocessError, ValueError, IndexError) as exc:
                self.rows.append(Row(f"thumbnail extra peak RSS, {fmt.upper()}", f"not measured ({exc!r})"))
        for fmt, mib in grown.items():
            self.rows.append(
                Row(
                    f"thumbnail extra peak RSS, 2048² {fmt.upper()} (photo-like, fresh process)",
                    f"{mib:.1f} MiB",
                    "<= 35 MiB",
                    mib <= 35,
                )
            )

    # -- main ---------------------------------------------------------------------------------------------------
    def run(self) -> int:
        t_all = time.monotonic()
        self.load.append(os.getloadavg())
        self.configure()
        gallery_ok = True
        only = self.args.only
        scenarios = only & burst.SCENARIOS
        if "engine" in only:
            self.run_engine()
        if scenarios:
            self.rows += burst.BurstBench(self, self.args, log, Row, pct, secs, ms).run(scenarios)
        if "gallery" in only:
            gallery_ok = self.run_gallery()
        took = time.monotonic() - t_all
        self.load.append(os.getloadavg())
        if only - {"gallery"}:
            broker = "Redis" if self.redis else "ORM"
            database = "PostgreSQL" if self.args.pg else "SQLite WAL"
            header = (
                f"FluxWeb bench ({', '.join(sorted(only - {'gallery'}))}): "
                + (f"{self.args.jobs} jobs per phase {SPACING:g} s apart, " if "engine" in only else "")
                + (f"{self.args.workers}-worker cluster for the issue 9.8 scenarios, " if scenarios else "")
                + f"sandbox latency uniform {LATENCY[0]:g}..{LATENCY[1]:g} s, {broker} broker, {database}, "
                f"{os.cpu_count()} CPUs, {took:.0f} s; 1-min load average {self.load[0][0]:.2f} before, "
                f"{self.load[1][0]:.2f} after"
            )
            print_table(self.rows, header)
        if "gallery" in only:
            columns, rows, _ = self.gallery.table()
            header = (
                f"FluxWeb bench, gallery and lists: server time in-process (Django test client), "
                f"{self.args.reps} requests per endpoint and size, SQLite WAL, {os.cpu_count()} CPUs, "
                f"{took:.0f} s ({self.gallery.seconds_seeding:.0f} s of seed_images); 1-min load average "
                f"{self.load[0][0]:.2f} before, {self.load[1][0]:.2f} after; targets: <= 3 queries, "
                f"p95 <= 50 ms at {self.args.sizes[-1]:,}, p50 there <= 2x p50 at {self.args.sizes[0]:,}"
            )
            gallery.print_table(columns, rows, header)
        if self.args.json:
            raw = {
                "rows": [r.__dict__ | {"ok": r.verdict} for r in self.rows],
                "load": self.load,
                "jobs": [j.__dict__ for j in self.jobs],
            }
            if "gallery" in only:
                raw["gallery"] = {
                    name: {size: self.gallery.result(name, size).__dict__ for size in self.args.sizes}
                    for name in self.gallery.order
                }
            Path(self.args.json).write_text(json.dumps(raw, indent=1))
        return 0 if gallery_ok and all(r.ok is not False for r in self.rows) else 1

    def run_engine(self) -> None:
        web = self.start_web()
        self.start_qcluster(self.env["FLUXWEB_SITE_URL"])  # webhooks fail: a closed port
        cold = self.phase_polling("polling cold")
        warm = self.phase_polling("polling warm")
        self.wait_sweeper_idle()
        self.stop_qcluster()
        self.start_qcluster(web)
        hooked = self.phase_webhooks(web)
        self.wait_sweeper_idle()
        self.stop_qcluster()
        self.submit_rows(cold + warm, "engine.create returned", from_return=True)
        self.submit_rows(hooked, "API POST sent", from_return=False)
        self.jobs = cold + warm + hooked
        self.media_rows()

    def run_gallery(self) -> bool:
        """Issue 8: the gallery, the history and the API list at each of --sizes images (bench/gallery.py)."""
        self.gallery = gallery.GalleryBench(self.args.sizes, self.args.reps, self.tmp, log)
        self.gallery.run(self.user)
        return self.gallery.table()[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs per phase (default 20; 5 with --quick)")
    parser.add_argument(
        "--quick", action="store_true", help="5 jobs per phase and fewer micro-benchmark repeats"
    )
    parser.add_argument(
        "--redis", action="store_true", help="use the Redis broker when 127.0.0.1:6379 answers"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (DB, qcluster.log) for a post-mortem"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        default={"engine", "gallery"},
        help="sections to run, comma-separated: engine, gallery (the default: both), and the issue 9.8 "
        "scenarios burst, inflight, budget, clients, ingest (all five: `issue9`)",
    )
    parser.add_argument("--workers", type=int, default=2, help="qcluster workers for the 9.8 scenarios")
    parser.add_argument("--burst", type=int, default=100, help="jobs created together in the burst scenario")
    parser.add_argument(
        "--inflight",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[500],
        help="sizes of the in-flight scenario, e.g. 500,1000,2000 (default 500)",
    )
    parser.add_argument("--clients", type=int, default=20, help="concurrent API clients (default 20)")
    parser.add_argument("--client-jobs", type=int, default=10, help="creates per API client (default 10)")
    parser.add_argument(
        "--client-interval",
        type=float,
        default=1.0,
        help="seconds between a paced API client's creates (default 1: 20 clients offer 20 creates a second)",
    )
    parser.add_argument("--pg", action="store_true", help="PostgreSQL on 127.0.0.1:5432 instead of SQLite")
    parser.add_argument(
        "--sizes",
        type=lambda text: sorted(int(n) for n in text.split(",")),
        default=[1_000, 10_000, 100_000],
        help="image counts the gallery section measures at (default 1000,10000,100000)",
    )
    parser.add_argument("--reps", type=int, default=40, help="timed requests per gallery endpoint and size")
    args = parser.parse_args()
    if "issue9" in args.only:
        args.only = (args.only - {"issue9"}) | burst.SCENARIOS
    unknown = args.only - {"engine", "gallery"} - burst.SCENARIOS
    if unknown:
        parser.error(f"unknown --only section(s): {', '.join(sorted(unknown))}")
    if args.jobs is None:
        args.jobs = 5 if args.quick else 20
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    bench = Bench(args)
    try:
        return bench.run()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
