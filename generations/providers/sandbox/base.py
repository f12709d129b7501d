"""What every emulated provider shares: routing, the auth gate, request faults, job creation."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from .faults import FILE_FAULTS, JOB_FAULTS
from .images import render_ahead
from .state import Job
from .wire import Request, Response

if TYPE_CHECKING:
    from .server import Sandbox

Handler = Callable[[Request, re.Match[str]], Response]
# (method, path pattern, handler, phase): phase "submit" is the create call, "poll" every other call.
Route = tuple[str, re.Pattern[str], Handler, str]

BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def route(method: str, pattern: str, handler: Handler, phase: str = "poll") -> Route:
    return method, re.compile(pattern + r"/?\Z"), handler, phase


class ProviderApp:
    name: ClassVar[str]

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._routes = self.routes()

    # -- what each provider defines -------------------------------------------------------------
    def routes(self) -> list[Route]:
        raise NotImplementedError

    def credential(self, req: Request) -> str | None:
        return req.bearer()

    def unauthorized(self, req: Request, missing: bool) -> Response:
        raise NotImplementedError

    def not_found(self, req: Request) -> Response:
        raise NotImplementedError

    def server_error(self, status: int) -> Response:
        raise NotImplementedError

    def rate_limited(self) -> Response:
        raise NotImplementedError

    def insufficient_credit(self, req: Request) -> Response:
        raise NotImplementedError

    # -- shared machinery -------------------------------------------------------------------------
    def match(self, req: Request) -> tuple[Handler, re.Match[str], str] | None:
        for method, pattern, handler, phase in self._routes:
            found = pattern.match(req.path)
            if found and method == req.method:
                return handler, found, phase
        return None

    def dispatch(self, req: Request) -> Response:
        matched = self.match(req)
        if matched is None:
            return self.not_found(req)
        handler, match, phase = matched

        key = self.credential(req)
        if not self.sandbox.key_ok(self.name, key):
            return self.unauthorized(req, missing=not key)

        plan = self.sandbox.fault_plan
        if plan.draw(("latency",), self.name, phase):
            self.sandbox.wait(self.sandbox.options["latency_fault_seconds"])
        kind = plan.draw(
            ("hang", "auth", "5xx", "429", "malformed", "insufficient_credit", "wrong_types"),
            self.name,
            phase,
        )
        if kind == "hang":
            return Response(0, hang=True)
        if kind == "auth":
            return self.unauthorized(req, missing=False)
        if kind == "5xx":
            status = self.sandbox.options["fault_5xx_status"] or plan.choice([500, 502, 503])
            if status == 502:
                # A gateway in front of the provider answers, not the provider: HTML, not JSON.
                return Response(502, BAD_GATEWAY_HTML, {"Content-Type": "text/html"})
            return self.server_error(status)
        if kind == "429":
            return self.rate_limited()
        if kind == "malformed":
            return Response(200, b'{"id":"sandbox-truncat', {"Content-Type": "application/json"})
        if kind == "insufficient_credit":
            return self.insufficient_credit(req)
        if kind == "wrong_types":
            return wrong_types(handler(req, match))
        return handler(req, match)

    def new_job(
        self,
        *,
        job_id: str,
        owner: str,
        prompt: str,
        width: int,
        height: int,
        fmt: str,
        seed: int,
        count: int,
        name_for: Callable[[int], str],
    ) -> Job:
        """A job ending `latency` seconds from now, with its outcome and file faults drawn now."""
        plan = self.sandbox.fault_plan
        job_fault = plan.draw(JOB_FAULTS, self.name)
        outcome = {"moderation": "moderation", "failure": "failure", "error_object": "failure"}.get(
            job_fault or "", "completed"
        )
        now = time.monotonic()
        job = Job(
            id=job_id,
            provider=self.name,
            owner=owner,
            prompt=prompt,
            width=width,
            height=height,
            fmt=fmt,
            seed=seed,
            start=now,
            done_at=now + self.sandbox.draw_latency(),
            created=time.time(),
            url_ttl=self.sandbox.url_ttl,
            outcome=outcome,
            file_fault=plan.draw(FILE_FAULTS, self.name) if outcome == "completed" else None,
        )
        job.extra["error_object"] = job_fault == "error_object"
        if job.succeeded:
            job.add_files(count, name_for)
            if job.file_fault is None:
                for entry in job.files:
                    render_ahead(entry.width, entry.height, entry.fmt, prompt, entry.seed)
        self.sandbox.store.add_job(job)
        return job


def error_value(job: Job, message: str, code: str = "generation_failed") -> object:
    """A failed job's error as documented (a string), or as an object where the string belongs (the
    `error_object` fault)."""
    if job.extra.get("error_object"):
        return {"message": message, "code": code, "type": "provider_error"}
    return message


def swapped(value: object) -> object:
    """`value` as another JSON type, all the way down: a string becomes an object holding it (an error object
    where a string belongs), a number or a boolean a string, null an object, a list an object; an object keeps
    its keys with every value swapped."""
    if isinstance(value, dict):
        return {key: swapped(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return {"items": [swapped(inner) for inner in value]}
    if isinstance(value, str):
        return {"message": value}
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return {}
    return str(value)


def wrong_types(response: Response) -> Response:
    """The `wrong_types` fault: the real answer, same status and headers, with every JSON value swapped."""
    try:
        body = json.loads(response.body) if response.body and response.stream is None else None
    except ValueError:
        return response
    if body is None:
        return response
    response.body = json.dumps(swapped(body), separators=(",", ":")).encode()
    return response


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
