"""Issue 9.8: bursts and load on one cluster (bench/README.md). Used by bench/run.py (`--only burst,...`).

Scenarios, each on a fresh `qcluster` of --workers workers (default 2) with each sweep's CPU recorded
(bench/sweeper_cpu.py), the sandbox's Apiframe at 5 s +- 1 s:

- burst: --burst jobs (default 100) created together; ready -> succeeded p50/p95, polls per job;
- inflight: --inflight sizes (default 500; e.g. 500,1000,2000) created together; wall time against ideal,
  sweeper CPU as a share of one core, polls per job, detection lag;
- budget: the account at 60 requests/minute, the sandbox refusing the 61st request in any 60 s with a 429
  (its documented Retry-After: 1), 40 jobs created together: 429s, all done;
- clients: --clients API clients (default 20) creating through gunicorn (the repo's gunicorn.conf.py),
  each --client-jobs creates, back to back and then one every --client-interval seconds: errors, p50/p95;
- ingest: the media CPU of one 2048² image per format (check, thumbnail, metadata), the old path (check, then
  a second decode for the thumbnail) beside the new (one decode).

Ideal wall time: the time from the first create until the last job was ready at the provider, that is, what
the run would take if FluxWeb added nothing after the provider (the submits' own spread included).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

SCENARIOS = {"burst", "inflight", "budget", "clients", "ingest"}
ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent


def cluster_cpu(pid: int) -> float:
    """CPU seconds of the process group `pid` leads (the qcluster's session): live processes and the waited
    children each folded in."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) != pid:  # field 5, pgrp, after the name
            continue
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / tick


class BurstBench:
    def __init__(self, bench, args, log, Row, pct, secs, ms):
        self.bench = bench
        self.args = args
        self.log = log
        self.Row = Row
        self.pct = pct
        self.secs = secs
        self.ms = ms
        self.rows = []
        self.cpu_file = bench.tmp / "sweeps.txt"

    # -- the cluster, with its sweeps' CPU ------------------------------------------------------------------
    def start_cluster(self) -> None:
        b = self.bench
        env = dict(b.env, FLUXWEB_Q_WORKERS=str(self.args.workers))
        b.qlog = open(b.tmp / "qcluster.log", "a")  # noqa: SIM115
        b.qcluster = subprocess.Popen(
            [sys.executable, str(BENCH / "sweeper_cpu.py"), str(ROOT), str(self.cpu_file)],
            env=env,
            cwd=ROOT,
            stdout=b.qlog,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        from django_q.tasks import async_task, result

        task_id = async_task("os.getpid", task_name="bench-probe", save=True)
        deadline = time.monotonic() + 30
        while result(task_id) is None:
            if b.qcluster.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"qcluster did not start; see {b.tmp / 'qcluster.log'}")
            time.sleep(0.05)
        self.cpu_at_start = cluster_cpu(b.qcluster.pid)

    def stop_cluster(self) -> float:
        """Stop it; the cluster's CPU seconds since it was ready."""
        b = self.bench
        cpu = cluster_cpu(b.qcluster.pid) - self.cpu_at_start
        b.wait_sweeper_idle(15)
        b.stop_qcluster()
        return cpu

    def sweeps(self, start: float, end: float) -> tuple[float, int]:
        """CPU seconds of the sweeps that ran between `start` and `end` (wall clock), and how many."""
        cpu, count = 0.0, 0
        if self.cpu_file.exists():
            for line in self.cpu_file.read_text().splitlines():
                _, s, e, c = line.split()
                if float(e) >= start and float(s) <= end:
                    cpu += float(c)
                    count += 1
        return cpu, count

    def set_budget(self, rpm: int) -> None:
        """The account at `rpm`, its minute unspent: after the burst's 300 requests at a lifted budget, a
        60/min budget would otherwise start a minute in debt, its first submits waiting for that minute."""
        from generations.models import BudgetSpend, ProviderAccount

        ProviderAccount.objects.filter(pk=self.bench.account.pk).update(max_rpm=rpm)
        BudgetSpend.objects.filter(account=self.bench.account.pk).delete()

    # -- jobs created together -------------------------------------------------------------------------------
    def together(self, label: str, n: int, timeout: float) -> dict:
        from generations import engine
        from generations.models import Generation

        b = self.bench
        t0 = time.time()
        pks = []
        for i in range(n):
            generation, _ = engine.create(
                b.user, b.request(f"bench {label} job {i}: a lighthouse at dusk"), provider="bench-apiframe"
            )
            pks.append(generation.pk)
        created = time.time() - t0
        self.log(f"{label}: {n} jobs created in {created:.1f} s; waiting for them to finish")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not Generation.objects.filter(pk__in=pks, status__in=Generation.IN_FLIGHT).exists():
                break
            time.sleep(0.2)
        else:
            self.log(f"{label}: some jobs still in flight after {timeout:.0f} s")
        t_end = time.time()
        return self.measure(label, pks, t0, t_end, created)

    def measure(self, label: str, pks: list[int], t0: float, t_end: float, created: float) -> dict:
        from generations.models import Generation

        sandbox = self.bench.sandbox
        polls = defaultdict(int)
        for r in sandbox.requests:
            if r.provider == "apiframe" and r.method == "GET" and r.path.startswith("/v2/jobs/"):
                polls[r.path[len("/v2/jobs/") :]] += 1
        rows = Generation.objects.filter(pk__in=pks).values_list(
            "status", "provider_job_id", "provider_done_at", "finished_at"
        )
        lag, detect, n_polls, ready_all, finished_all = [], [], [], [], []
        statuses = defaultdict(int)
        for status, job_id, done_at, finished_at in rows:
            statuses[status] += 1
            job = sandbox.job("apiframe", job_id) if job_id else None
            ready = job.completed_wall if job is not None else 0.0
            if ready:
                ready_all.append(ready)
            if status == "succeeded" and ready and finished_at:
                finished_all.append(finished_at.timestamp())
                lag.append(finished_at.timestamp() - ready)
                if done_at:
                    detect.append(done_at.timestamp() - ready)
                n_polls.append(polls.get(job_id, 0))
        done = statuses.get("succeeded", 0)
        wall = (max(finished_all) - t0) if finished_all else float("nan")
        ideal = (max(ready_all) - t0) if ready_all else float("nan")
        return {
            "label": label,
            "n": len(pks),
            "done": done,
            "statuses": dict(statuses),
            "wall": wall,
            "ideal": ideal,
            "created": created,
            "lag": lag,
            "detect": detect,
            "polls": n_polls,
            "t0": t0,
            "t_end": t_end,
        }

    def job_rows(
        self, m: dict, *, lag_targets=None, poll_target=None, wall_target=None, cpu=None, cpu_target=None
    ) -> None:
        Row, pct, secs = self.Row, self.pct, self.secs
        label = m["label"]
        ok_all = m["done"] == m["n"]
        self.rows.append(
            Row(f"{label}: jobs succeeded", f"{m['done']} of {m['n']} {m['statuses']}", "all", ok_all)
        )
        if m["lag"]:
            p50, p95 = pct(m["lag"], 50), pct(m["lag"], 95)
            if lag_targets:
                self.rows.append(
                    Row(
                        f"{label}: ready -> succeeded p50",
                        secs(p50),
                        f"<= {lag_targets[0]:g} s",
                        p50 <= lag_targets[0],
                    )
                )
                self.rows.append(
                    Row(
                        f"{label}: ready -> succeeded p95",
                        secs(p95),
                        f"<= {lag_targets[1]:g} s",
                        p95 <= lag_targets[1],
                    )
                )
            else:
                self.rows.append(Row(f"{label}: ready -> succeeded p50 / p95", f"{secs(p50)} / {secs(p95)}"))
            self.rows.append(
                Row(
                    f"{label}:   detected (ready -> provider_done_at) p50 / p95",
                    f"{secs(pct(m['detect'], 50))} / {secs(pct(m['detect'], 95))}",
                )
            )
            ingest = [a - b for a, b in zip(m["lag"], m["detect"], strict=False)]
            self.rows.append(
                Row(
                    f"{label}:   after detection (provider_done_at -> succeeded) p50 / p95",
                    f"{secs(pct(ingest, 50))} / {secs(pct(ingest, 95))}",
                )
            )
        if m["polls"]:
            avg = sum(m["polls"]) / len(m["polls"])
            measured = f"{avg:.2f} ({max(m['polls'])})"
            figure = f"{label}: provider polls per job, average (max)"
            self.rows.append(
                Row(figure, measured, f"<= {poll_target:g}", avg <= poll_target)
                if poll_target
                else Row(figure, measured)
            )
        ratio = m["wall"] / m["ideal"] if m["ideal"] == m["ideal"] and m["ideal"] > 0 else float("nan")
        figure = f"{label}: wall / ideal (first create -> last succeeded / -> last ready); creates took"
        measured = f"{m['wall']:.1f} s / {m['ideal']:.1f} s = {ratio:.2f}x; {m['created']:.1f} s"
        self.rows.append(
            Row(figure, measured, f"<= {wall_target:g}x", ratio <= wall_target)
            if wall_target
            else Row(figure, measured)
        )
        if cpu is not None:
            sweep_cpu, sweeps, cluster = cpu
            span = m["t_end"] - m["t0"]
            share = sweep_cpu / span
            self.rows.append(
                Row(
                    f"{label}: sweeper CPU / one core over the run ({sweeps} sweeps); whole cluster",
                    f"{share * 100:.1f} %; {cluster / span * 100:.0f} %",
                    f"<= {cpu_target * 100:.0f} %" if cpu_target else "-",
                    share <= cpu_target if cpu_target else None,
                )
            )

    def scenario(self, label: str, n: int, **targets) -> None:
        self.set_budget(1_000_000)  # the engine's own cost, not the provider's budget
        self.start_cluster()
        m = self.together(label, n, timeout=120 + n * 0.25)
        cluster = self.stop_cluster()
        sweep_cpu, sweeps = self.sweeps(m["t0"], m["t_end"])
        self.job_rows(m, cpu=(sweep_cpu, sweeps, cluster), **targets)

    # -- the budget -------------------------------------------------------------------------------------------
    def budget(self, n: int = 40, rpm: int = 60) -> None:
        """The account at `rpm`; the sandbox's Apiframe refuses a submit or poll past `rpm` in any 60 s."""
        app = self.bench.sandbox.apps["apiframe"]
        real = app.dispatch
        sent: list[float] = []
        refused = [0]
        lock = threading.Lock()

        def dispatch(req):
            if req.path.startswith("/v2/"):  # submits and polls, not the result files
                now = time.monotonic()
                with lock:
                    while sent and sent[0] <= now - 60:
                        sent.pop(0)
                    if len(sent) >= rpm:
                        refused[0] += 1
                        return app.rate_limited()
                    sent.append(now)
            return real(req)

        app.dispatch = dispatch
        try:
            self.set_budget(rpm)
            self.start_cluster()
            m = self.together(f"budget {rpm}/min, {n} jobs", n, timeout=300)
            cluster = self.stop_cluster()
        finally:
            app.dispatch = real
            self.set_budget(1_000_000)
        self.job_rows(m, cpu=(*self.sweeps(m["t0"], m["t_end"]), cluster))
        self.rows.append(
            self.Row(
                f"budget {rpm}/min, {n} jobs: 429s from the provider",
                str(refused[0]),
                "<= 3",
                refused[0] <= 3,
            )
        )

    # -- concurrent API clients ------------------------------------------------------------------------------
    def clients(self, count: int, each: int) -> None:
        import httpx

        b = self.bench
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        web = f"http://127.0.0.1:{port}"
        access = b.tmp / "gunicorn-access.log"
        log = open(b.tmp / "gunicorn.log", "a")  # noqa: SIM115
        gunicorn = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "fluxweb.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--access-logfile",
                str(access),
                "--access-logformat",
                "%(m)s %(D)s",  # microseconds from the request read to the response sent
            ],
            env=b.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.set_budget(1_000_000)
        self.start_cluster()
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{web}/healthz", timeout=2, trust_env=False).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not answer in 30 s")
                time.sleep(0.2)
            engine = "SQLite" if "sqlite" in b.env["DATABASE_URL"] else "PostgreSQL"
            # Back to back, the clients measure the whole machine's throughput (the 2 cores also run the
            # cluster that submits, polls and ingests their jobs, and the sandbox): a create waits for the
            # ones before it. Paced, they measure what one create costs beside 19 others.
            for interval in (0.0, self.args.client_interval):
                self.client_load(web, access, count, each, interval, engine, gunicorn.pid)
        finally:
            self.stop_cluster()
            gunicorn.send_signal(signal.SIGTERM)
            try:
                gunicorn.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(gunicorn.pid, signal.SIGKILL)
            log.close()

    def client_load(
        self, web: str, access: Path, count: int, each: int, interval: float, engine: str, web_pid: int
    ) -> None:
        import resource

        from generations.models import Generation

        def cpu() -> tuple[float, ...]:
            here = resource.getrusage(resource.RUSAGE_SELF)
            clients = resource.getrusage(resource.RUSAGE_CHILDREN)
            return (
                cluster_cpu(web_pid),
                cluster_cpu(self.bench.qcluster.pid),
                here.ru_utime + here.ru_stime,  # this process: the sandbox, drawing the result files
                clients.ru_utime + clients.ru_stime,  # waited children: the clients' process
            )

        access.write_text("")
        cpu_before = cpu()
        # In a process of their own: in this one the sandbox draws result files and would hold the GIL
        # across the clients' timers.
        t0 = time.time()
        out = subprocess.run(
            [sys.executable, str(BENCH / "burst.py"), "clients", web, self.bench.token]
            + [str(count), str(each), str(interval)],
            capture_output=True,
            text=True,
            check=True,
        )
        took = time.time() - t0
        cpu_after = cpu()
        load = json.loads(out.stdout)
        times, errors, ids = load["times"], load["errors"], load["ids"]
        self.log(f"clients: {len(times)} creates by {count} clients in {took:.1f} s")
        served = [
            int(line.split()[1]) / 1e6 for line in access.read_text().splitlines() if line.startswith("POST ")
        ]
        pace = f"each every {interval:g} s" if interval else "back to back"
        label = f"{count} API clients x {each} creates, {pace} (gunicorn, {engine})"
        self.rows.append(
            self.Row(f"{label}: errors", f"{len(errors)} {sorted(set(errors))[:3]}", "0", not errors)
        )
        p50, p95 = self.pct(times, 50), self.pct(times, 95)
        # The target is for SQLite, the zero-setup default; on PostgreSQL the figure is information.
        on_sqlite = engine == "SQLite"
        self.rows.append(
            self.Row(
                f"{label}: create p50 / p95",
                f"{self.ms(p50)} / {self.ms(p95)}",
                "p95 <= 100 ms" if on_sqlite else "-",
                p95 <= 0.1 if on_sqlite else None,
            )
        )
        self.rows.append(
            self.Row(
                f"{label}: of which inside gunicorn, p50 / p95; creates a second",
                f"{self.ms(self.pct(served, 50))} / {self.ms(self.pct(served, 95))}; {len(times) / took:.0f}",
                "",
                None,
            )
        )
        deadline = time.monotonic() + 120
        while Generation.objects.filter(pk__in=ids, status__in=Generation.IN_FLIGHT).exists():
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        done = Generation.objects.filter(pk__in=ids, status="succeeded").count()
        self.rows.append(
            self.Row(f"{label}: their jobs succeeded", f"{done} of {len(ids)}", "all", done == len(ids))
        )
        if not interval and ids:
            # What each create cost the machine while the clients ran, process by process: the cluster
            # submitting the jobs, the sandbox accepting them (and drawing their files ahead), the clients
            # themselves. Back to back, the cores are the limit.
            web_cpu, cluster, sandbox, clients = (
                (after - before) / len(times) for before, after in zip(cpu_before, cpu_after, strict=True)
            )
            total = web_cpu + cluster + sandbox + clients
            self.rows.append(
                self.Row(
                    f"{label}: CPU per create while they ran: web + cluster + sandbox + clients",
                    f"{self.ms(web_cpu)} + {self.ms(cluster)} + {self.ms(sandbox)} + {self.ms(clients)} = "
                    f"{self.ms(total)}: {os.cpu_count() or 1} cores allow {(os.cpu_count() or 1) / total:.0f} a second",
                    "",
                    None,
                )
            )

    # -- ingest CPU per image --------------------------------------------------------------------------------
    def ingest(self) -> None:
        from generations import media

        metadata = {"prompt": "a lighthouse at dusk", "model": "flux-2-max", "seed": 1, "index": 0}
        targets = {"jpeg": 0.050, "webp": 0.050, "png": 0.200}
        reps = 5 if self.args.quick else 11
        for fmt, data in self.bench.photos_encoded(2048).items():

            def old(data=data):
                checked = media.check_image(data)
                media.thumbnail(data)
                media.embed_metadata(checked, metadata)

            def new(data=data):
                checked = media.check_image(data, thumbnail=True)
                media.embed_metadata(checked, metadata)

            figures = {}
            for name, work in (("two decodes (before)", old), ("one decode (after)", new)):
                work()
                cpu = []
                for _ in range(reps):
                    t = time.thread_time()
                    work()
                    cpu.append(time.thread_time() - t)
                figures[name] = self.pct(cpu, 50)
            after = figures["one decode (after)"]
            self.rows.append(
                self.Row(
                    f"ingest CPU per 2048² {fmt.upper()} ({len(data) // 1024} KiB, photo-like): check + thumbnail + metadata, p50; before -> after",
                    f"{self.ms(figures['two decodes (before)'])} -> {self.ms(after)}",
                    f"<= {targets[fmt] * 1000:.0f} ms",
                    after <= targets[fmt],
                )
            )

    def run(self, only: set[str]) -> list:
        if "ingest" in only:
            self.log("ingest: media CPU per image, two decodes against one")
            self.ingest()
        if "burst" in only:
            self.scenario(f"burst {self.args.burst}", self.args.burst, lag_targets=(0.4, 1.0), poll_target=5)
        if "budget" in only:
            self.budget()
        if "inflight" in only:
            for n in self.args.inflight:
                target = 1.1 if n <= 500 else (1.2 if n >= 2000 else None)
                cpu = 0.25 if n == 500 else None
                self.scenario(f"{n} in flight", n, wall_target=target, cpu_target=cpu)
        if "clients" in only:
            self.clients(self.args.clients, self.args.client_jobs)
        return self.rows


def api_clients(web: str, token: str, count: int, each: int, interval: float = 0.0) -> dict:
    """`count` clients, each on its own keep-alive connection, creating `each` jobs: back to back, or with
    `interval` each one starting a create every `interval` seconds (their starts spread across the first
    interval; a late create does not shift the ones after it). Every create's time as the client saw it,
    the refusals, and the new jobs' ids."""
    import httpx

    times: list[float] = []
    errors: list[str] = []
    ids: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def client(k: int) -> None:
        with httpx.Client(timeout=30, trust_env=False) as http:
            barrier.wait()
            start = time.perf_counter() + interval * k / count
            for i in range(each):
                if interval:
                    time.sleep(max(0.0, start + i * interval - time.perf_counter()))
                body = {
                    "prompt": f"bench client {k} job {i}: a lighthouse at dusk",
                    "model": "flux-2-max",
                    "aspect_ratio": "1:1",
                    "megapixels": 1.0,
                    "output_format": "jpeg",
                    "provider": "bench-apiframe",
                }
                t = time.perf_counter()
                try:
                    r = http.post(
                        f"{web}/api/v1/generations", json=body, headers={"Authorization": f"Bearer {token}"}
                    )
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = repr(exc)
                took = time.perf_counter() - t
                with lock:
                    times.append(took)
                    if status == 202:
                        ids.append(r.json()["id"])
                    else:
                        errors.append(str(status))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"times": times, "errors": errors, "ids": ids}


if __name__ == "__main__" and sys.argv[1:2] == ["clients"]:
    # The clients scenario's load, in a process of its own: `burst.py clients URL TOKEN COUNT EACH INTERVAL`.
    url, token, count, each, interval = sys.argv[2:7]
    print(json.dumps(api_clients(url, token, int(count), int(each), float(interval))))
