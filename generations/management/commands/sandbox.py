import argparse

from django.core.management.base import BaseCommand

from generations.providers.sandbox import FAULT_KINDS, Sandbox, parse_fault, parse_latency


def _checked(parse):
    def convert(value):
        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


class Command(BaseCommand):
    help = "Serve every emulated provider on one loopback port, each under /<kind>."
    requires_system_checks = []  # the sandbox touches neither models nor the database

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8765)
        parser.add_argument(
            "--fault",
            action="append",
            default=[],
            type=_checked(parse_fault),
            metavar="KIND:RATE",
            help=f"[provider.][poll.|any.]KIND:RATE, repeatable; kinds: {', '.join(FAULT_KINDS)}",
        )
        parser.add_argument(
            "--latency",
            type=_checked(parse_latency),
            default=(1.0, 2.0),
            metavar="SPEC",
            help="job latency in seconds: 5 or MIN:MAX (default 1:2)",
        )
        parser.add_argument(
            "--url-ttl", type=float, default=600, help="seconds result URLs live (default 600)"
        )

    def handle(self, *args, host, port, fault, latency, url_ttl, **options):
        sandbox = Sandbox(host=host, port=port, latency=latency, faults=dict(fault), url_ttl=url_ttl).start()
        for name, url in sandbox.base_urls.items():
            self.stdout.write(f"{name:<10} {url}")
        self.stdout.write(f"control    {sandbox.url}/_sandbox/health   (Ctrl-C to stop)")
        sandbox.run()
