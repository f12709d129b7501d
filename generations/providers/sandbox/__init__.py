"""A faithful local emulator of the provider APIs, on one loopback port (architecture.md, "The sandbox").

    with Sandbox(latency=(0.1, 0.2)) as sandbox:
        base = sandbox.base_url("apiframe")   # http://127.0.0.1:PORT/apiframe
        sandbox.queue_fault("429", "apiframe")

Pure stdlib + Pillow: importing it never imports Django.
"""

from .faults import (
    FAULT_KINDS,
    FILE_FAULTS,
    HOSTILE_FAULTS,
    JOB_FAULTS,
    REQUEST_FAULTS,
    parse_fault,
    parse_latency,
)
from .server import Sandbox
from .state import DEFAULT_OPTIONS, OPTION_CHOICES
from .webhooks import apiframe_signature

__all__ = [
    "DEFAULT_OPTIONS",
    "FAULT_KINDS",
    "FILE_FAULTS",
    "HOSTILE_FAULTS",
    "JOB_FAULTS",
    "OPTION_CHOICES",
    "REQUEST_FAULTS",
    "Sandbox",
    "apiframe_signature",
    "parse_fault",
    "parse_latency",
]
