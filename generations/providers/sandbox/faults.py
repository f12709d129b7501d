"""Fault kinds, their scopes, and the plan that decides which request, job or file gets one.

A fault is named `[provider.][phase.]KIND`, e.g. `5xx`, `apiframe.5xx`, `vtrix.poll.429`.
- Request faults hit an HTTP call to the provider API. By default only the submit call
  ("submit-time faults"); the phase `poll` (every other API call: job status, /me, /models) or
  `any` widens that.
- Job faults decide, at submit, how the job ends.
- File faults decide, at submit, how the job's result URLs behave.
A queued fault (`queue`) goes to the next matching request or job exactly once, before any rate.

The kinds:
- request: `latency` (answers `latency_fault_seconds` late), `hang` (never answers), `auth`, `5xx`, `429`,
  `malformed` (a truncated JSON body), `insufficient_credit` (submit only), and the hostile `wrong_types`: the
  real answer with every value swapped for one of another type (a string becomes an object, a number a
  string, a list an object, null an object), keys kept.
- job: `moderation`, `failure`, and the hostile `error_object`: the job fails with its error given as an
  object where the provider documents a string (MaxAPI: an error body whose message is an object).
- file: `expired` (404 from the start), `oversized` (a 60 MB PNG), `not_image` (HTML served as image/png), and
  the hostile `bad_url` (links like `http://[::1/x.png`, which no client can request), `control_url` (links
  holding `\x01`), `slow_drip` (the image one byte at a time, `drip_seconds` apart), `truncated` (half the
  image, its length honest) and `cut_off` (the full length announced, half sent, the connection closed).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

REQUEST_FAULTS = ("latency", "hang", "auth", "5xx", "429", "malformed", "insufficient_credit", "wrong_types")
JOB_FAULTS = ("moderation", "failure", "error_object")
FILE_FAULTS = (
    "expired",
    "oversized",
    "not_image",
    "bad_url",
    "control_url",
    "slow_drip",
    "truncated",
    "cut_off",
)
# The hostile provider (issue 7): replies and files no provider documents, for the robustness matrix.
HOSTILE_FAULTS = (
    "wrong_types",
    "error_object",
    "bad_url",
    "control_url",
    "slow_drip",
    "truncated",
    "cut_off",
)
FAULT_KINDS = REQUEST_FAULTS + JOB_FAULTS + FILE_FAULTS
PHASES = ("submit", "poll", "any")


def providers() -> tuple[str, ...]:
    """The emulated providers' names: the server's one list, imported late because the server imports this."""
    from .server import APPS

    return tuple(app.name for app in APPS)


@dataclass(frozen=True)
class Scope:
    kind: str
    provider: str | None = None
    phase: str | None = None  # request faults only: submit | poll | any

    @property
    def key(self) -> str:
        phase = None if self.phase == "submit" else self.phase  # the default phase goes unsaid
        return ".".join(p for p in (self.provider, phase, self.kind) if p)

    def matches(self, provider: str, phase: str | None) -> bool:
        if self.provider not in (None, provider):
            return False
        return self.phase in (None, "any", phase)


def make_scope(kind: str, provider: str | None = None, phase: str | None = None) -> Scope:
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
    if provider is not None and provider not in providers():
        raise ValueError(f"unknown provider {provider!r}; one of {', '.join(providers())}")
    if phase is not None and phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")
    if kind in REQUEST_FAULTS:
        phase = phase or "submit"
        if kind == "insufficient_credit" and phase != "submit":
            raise ValueError("insufficient_credit only happens at submit")
    elif phase is not None:
        raise ValueError(f"{kind} is decided per job, it takes no phase")
    return Scope(kind, provider, phase)


def parse_scope(key: str) -> Scope:
    *qualifiers, kind = key.strip().split(".")
    provider = phase = None
    for part in qualifiers:
        if part in providers() and provider is None:
            provider = part
        elif part in PHASES and phase is None:
            phase = part
        else:
            raise ValueError(f"bad fault scope {key!r}: expected [provider.][phase.]KIND")
    return make_scope(kind, provider, phase)


def parse_rate(value: object) -> float:
    rate = float(value)  # type: ignore[arg-type]
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"fault rate must be within 0..1, got {rate}")
    return rate


def parse_fault(spec: str) -> tuple[str, float]:
    """`KIND:RATE` from the command line (`apiframe.5xx:0.5`); a bare KIND means always."""
    key, sep, rate = spec.partition(":")
    return parse_scope(key).key, parse_rate(rate) if sep else 1.0


def parse_latency(spec: str) -> tuple[float, float]:
    """`5` (fixed) or `4:6` (uniform range), in seconds."""
    low, sep, high = spec.partition(":")
    lo, hi = float(low), float(high) if sep else float(low)
    if lo < 0 or hi < lo:
        raise ValueError(f"bad latency {spec!r}: expected SECONDS or MIN:MAX with 0 <= MIN <= MAX")
    return lo, hi


class FaultPlan:
    def __init__(self, rates: Mapping[str, float] | None = None, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        self._rng = rng or random.Random()
        self._rates: dict[Scope, float] = {}
        self._queue: list[Scope] = []
        self.set_rates(rates or {})

    def set_rates(self, rates: Mapping[str, float]) -> None:
        parsed = {parse_scope(key): parse_rate(rate) for key, rate in rates.items()}
        with self._lock:
            self._rates = parsed

    def rates(self) -> dict[str, float]:
        with self._lock:
            return {scope.key: rate for scope, rate in self._rates.items()}

    def queued(self) -> list[str]:
        with self._lock:
            return [scope.key for scope in self._queue]

    def queue(self, kind: str, provider: str | None = None, phase: str | None = None) -> None:
        scope = make_scope(kind, provider, phase)
        with self._lock:
            self._queue.append(scope)

    def clear(self, rates: Mapping[str, float]) -> None:
        self.set_rates(rates)
        with self._lock:
            self._queue.clear()

    def draw(self, kinds: Iterable[str], provider: str, phase: str | None = None) -> str | None:
        """The fault (one of `kinds`) this request or job gets, or None."""
        kinds = tuple(kinds)
        with self._lock:
            for i, scope in enumerate(self._queue):
                if scope.kind in kinds and scope.matches(provider, phase):
                    del self._queue[i]
                    return scope.kind
            for kind in kinds:
                rate = self._rate(kind, provider, phase)
                if rate and self._rng.random() < rate:
                    return kind
        return None

    def _rate(self, kind: str, provider: str, phase: str | None) -> float:
        # The most specific scope wins: a provider-scoped rate overrides the global one.
        candidates = [(s, r) for s, r in self._rates.items() if s.kind == kind and s.matches(provider, phase)]
        scoped = [r for s, r in candidates if s.provider == provider]
        chosen = scoped or [r for _, r in candidates]
        return max(chosen, default=0.0)

    def choice(self, options: list[int]) -> int:
        with self._lock:
            return self._rng.choice(options)
