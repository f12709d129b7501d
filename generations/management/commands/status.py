"""`manage.py status`: what /healthz answers, as a table for a person; exits 1 when unhealthy."""

from django.core.management.base import BaseCommand, CommandError

from fluxweb import health


class Command(BaseCommand):
    help = "Check the database, the task broker, the sweeper and the provider circuits (as /healthz does)."

    def handle(self, *args, **options) -> None:
        report = health.report()
        rows = []
        for name, check in report["checks"].items():
            if name == "providers":
                rows += [(f"provider {slug}", state, "") for slug, state in check.items()]
                continue
            state = "ok" if check.get("ok") else "FAIL"
            detail = ", ".join(f"{key}={value}" for key, value in check.items() if key != "ok")
            rows.append((name, state, detail))
        width = max(len(row[0]) for row in rows)
        self.stdout.write(f"{'check':{width}}  state  detail")
        for name, state, detail in rows:
            self.stdout.write(f"{name:{width}}  {state:5}  {detail}".rstrip())
        self.stdout.write(f"overall: {report['status']}")
        if report["status"] != "ok":
            raise CommandError("FluxWeb is not healthy.")
