"""Apiframe v2 `flux-2-max`: 202 + jobId, poll /v2/jobs/{id}, idempotency keys, signed webhooks (providers.md 3)."""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from . import webhooks
from .base import ProviderApp, Route, error_value, is_int, is_number, route
from .images import normalize_format, size_for
from .state import Job, iso
from .wire import Request, Response, json_response

MODEL = "flux-2-max"
CREDIT_COST = 10  # flux-2-max price [UNKNOWN]; the docs' examples show creditCost 10 [A1]
IDEMPOTENCY_TTL = 24 * 3600  # [A7]
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# match_input_image: the sandbox never fetches input images, so it renders 1 MP [INFERRED].
RESOLUTIONS = {"0.5MP": 0.5, "1MP": 1.0, "2MP": 2.0, "4MP": 4.0, "match_input_image": 1.0}
EVENTS = ("progress", "completed", "failed")
TOP_KEYS = ("prompt", "model", "webhookUrl", "webhookEvents", "fluxParams")
FAILURES = {
    "moderation": "Provider returned an error: content policy violation",  # [A1]
    "failure": "Provider returned an error: generation failed",
}

Details = dict[str, list[str]]


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def is_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return bool(parts.scheme and parts.netloc)


def _check_number(
    details: Details, path: str, value: Any, lo: float, hi: float, integer: bool = False
) -> None:
    if not is_number(value):
        details[path] = [f"Expected number, received {type_name(value)}"]
    elif integer and not is_int(value) and not float(value).is_integer():
        details[path] = ["Expected integer, received float"]
    elif value < lo:
        details[path] = [f"Number must be greater than or equal to {lo:g}"]
    elif value > hi:
        details[path] = [f"Number must be less than or equal to {hi:g}"]


def validate(body: Any) -> Details:
    """Zod-style issues keyed by JSON path; `additionalProperties:false` at both levels [A7]."""
    details: Details = {}
    if not isinstance(body, dict):
        return {"": [f"Expected object, received {type_name(body)}"]}
    for key in body:
        if key not in TOP_KEYS:
            # [S003] says `webhook_url`, but the schema key is `webhookUrl` and unknown keys are rejected [A7].
            details[key] = ["Unrecognized key"]
    prompt = body.get("prompt")
    if prompt is None:
        details["prompt"] = ["Required"]
    elif not isinstance(prompt, str):
        details["prompt"] = [f"Expected string, received {type_name(prompt)}"]
    elif not 1 <= len(prompt) <= 2000:
        details["prompt"] = ["String must contain at least 1 and at most 2000 character(s)"]
    if body.get("model") != MODEL:
        details["model"] = (
            ["Required"] if "model" not in body else [f'Invalid literal value, expected "{MODEL}"']
        )
    if "webhookUrl" in body and not is_url(body["webhookUrl"]):
        details["webhookUrl"] = ["Invalid url"]
    if "webhookEvents" in body:
        events = body["webhookEvents"]
        if not isinstance(events, list) or not events:
            details["webhookEvents"] = ["Array must contain at least 1 element(s)"]
        elif any(e not in EVENTS for e in events):
            details["webhookEvents"] = ["Invalid enum value. Expected 'progress' | 'completed' | 'failed'"]
    params = body.get("fluxParams", {})
    if not isinstance(params, dict):
        details["fluxParams"] = [f"Expected object, received {type_name(params)}"]
        return details
    validate_params(params, details)
    return details


ENUMS = {"resolution": tuple(RESOLUTIONS), "output_format": ("jpg", "png", "webp")}
NUMBERS = {  # key: (min, max, integer)
    "width": (256, 2048, True),
    "height": (256, 2048, True),
    "image_prompt_strength": (0, 1, False),
    "output_quality": (0, 100, True),
    "seed": (-(2**63), 2**63, True),
    "steps": (1, 50, True),
    "guidance": (1.5, 10, False),
}
BOOLEANS = ("prompt_upsampling", "raw", "go_fast")


def validate_params(params: dict[str, Any], details: Details) -> None:
    for key, value in params.items():
        path = f"fluxParams.{key}"
        if key in ENUMS:
            if value not in ENUMS[key]:
                expected = " | ".join(f"'{v}'" for v in ENUMS[key])
                details[path] = [f"Invalid enum value. Expected {expected}, received '{value}'"]
        elif key in NUMBERS:
            _check_number(details, path, value, *NUMBERS[key])
        elif key in BOOLEANS:
            if not isinstance(value, bool):
                details[path] = [f"Expected boolean, received {type_name(value)}"]
        elif key == "aspect_ratio":
            if not (isinstance(value, str) and re.fullmatch(r"\d+:\d+", value) and _sane_ratio(value)):
                details[path] = ["Invalid"]
        elif key == "image_prompt":
            if not is_url(value):
                details[path] = ["Invalid url"]
        elif key == "input_images":
            if not isinstance(value, list) or not all(map(is_url, value)):
                details[path] = ["Expected an array of URLs"]
            elif len(value) > 10:
                details[path] = ["Array must contain at most 10 element(s)"]
        else:
            details[path] = ["Unrecognized key"]


def _sane_ratio(value: str) -> bool:
    # Keeps rendered images bounded; no documented limit [INFERRED].
    w, h = (int(x) for x in value.split(":"))
    return w > 0 and h > 0 and 1 / 16 <= w / h <= 16


def output_size(params: dict[str, Any]) -> tuple[int, int]:
    # width/height are "only used when aspect_ratio is custom" [A6]; the schema has no "custom" value, so
    # both given and no aspect_ratio means custom [INFERRED]. Default resolution 2MP [S003].
    if "width" in params and "height" in params and "aspect_ratio" not in params:
        return int(params["width"]), int(params["height"])
    w, h = (int(x) for x in params.get("aspect_ratio", "1:1").split(":"))
    return size_for(RESOLUTIONS[params.get("resolution", "2MP")], w, h)


def fingerprint(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Apiframe(ProviderApp):
    name = "apiframe"

    def routes(self) -> list[Route]:
        return [
            route("POST", r"/v2/images/generate", self.generate, "submit"),  # [S003][A7]
            route("GET", r"/v2/jobs/(?P<id>[^/]+)", self.job),  # [A1][A7]
            route("GET", r"/v2/me", self.me),  # [A4][A7]
        ]

    def credential(self, req: Request) -> str | None:
        return req.headers.get("x-api-key") or None  # [A4] X-API-Key: afk_...

    def dispatch(self, req: Request) -> Response:
        response = super().dispatch(req)
        response.headers.setdefault("x-request-id", str(uuid.uuid4()))  # every response carries one [A7]
        return response

    def error(
        self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> Response:
        return json_response(status, {"error": message, **extra}, headers)

    def unauthorized(self, req: Request, missing: bool) -> Response:
        return self.error(401, "API key is required" if missing else "Invalid API key")  # [A7][A8]

    def not_found(self, req: Request) -> Response:
        return self.error(404, "Not found")

    def server_error(self, status: int) -> Response:
        return self.error(
            status, "Service temporarily unavailable" if status == 503 else "Internal server error"
        )

    def rate_limited(self) -> Response:
        return self.error(429, "Rate limit exceeded", {"Retry-After": "1"})

    def insufficient_credit(self, req: Request) -> Response:
        # [A7] 402 with both credit figures.
        return self.error(402, "Insufficient credits", creditsRequired=CREDIT_COST, creditsAvailable=0)

    def me(self, req: Request, match: re.Match[str]) -> Response:
        # Account object shape [UNKNOWN]: a small plausible one for "test connection".
        return json_response(
            200,
            {
                "id": "user_sandbox",
                "email": "sandbox@apiframe.local",
                "plan": "pay-as-you-go",
                "credits": self.sandbox.store.balance(self.name),
            },
        )

    def generate(self, req: Request, match: re.Match[str]) -> Response:
        try:
            body = req.json()
        except ValueError:
            return self.error(400, "Invalid JSON body")
        details = validate(body)
        idem_key = req.headers.get("idempotency-key")
        if idem_key is not None and not 1 <= len(idem_key) <= 255:
            details["Idempotency-Key"] = ["String must contain at least 1 and at most 255 character(s)"]
        if details:
            return self.error(400, "Validation failed", details=details)
        owner = self.credential(req) or ""
        store = self.sandbox.store
        with store.lock:
            if idem_key is not None:
                seen = store.idempotency.get((owner, idem_key))
                if seen and time.time() - seen[2] < IDEMPOTENCY_TTL:
                    if seen[0] != fingerprint(body):
                        return self.error(
                            409, "Idempotency-Key was already used with a different request body"
                        )
                    original = store.job(self.name, seen[1])
                    status = self.status(original)[0] if original else "QUEUED"
                    return json_response(202, {"jobId": seen[1], "status": status})  # replay [A7]
            if store.charge(self.name, CREDIT_COST) is None:
                return self.error(
                    402,
                    "Insufficient credits",
                    creditsRequired=CREDIT_COST,
                    creditsAvailable=store.balance(self.name),
                )
            job = self.create(req, body, owner)
            if idem_key is not None:
                store.idempotency[(owner, idem_key)] = (fingerprint(body), job.id, time.time())
        return json_response(202, {"jobId": job.id, "status": "QUEUED"})

    def create(self, req: Request, body: dict[str, Any], owner: str) -> Job:
        params = body.get("fluxParams", {})
        width, height = output_size(params)
        fmt = normalize_format(params.get("output_format", "jpg"))  # default jpg [S003]
        job_id = str(uuid.uuid4())
        ext = "jpg" if fmt == "jpeg" else fmt
        job = self.new_job(
            job_id=job_id,
            owner=owner,
            prompt=body["prompt"],
            width=width,
            height=height,
            fmt=fmt,
            seed=int(params["seed"]) if "seed" in params else random.randrange(2**31),
            count=1,
            name_for=lambda i: f"{job_id}-{i + 1}.{ext}",  # cdn2.apiframe.ai/images/<id>-1.png [A1]
        )
        job.extra.update(base_url=req.base_url, input={"prompt": body["prompt"], "fluxParams": params})
        if "webhookUrl" in body:
            self.schedule_webhooks(
                job, body["webhookUrl"], body.get("webhookEvents") or ["completed", "failed"]
            )
        return job

    def status(self, job: Job) -> tuple[str, int]:
        if job.is_done():
            return ("COMPLETED", 100) if job.succeeded else ("FAILED", 0)
        fraction = job.fraction()
        if fraction < 0.15:
            return "QUEUED", 0
        return "PROCESSING", max(1, min(99, int(fraction * 100)))

    def result(self, job: Job) -> Any:
        urls = job.urls(job.extra["base_url"])
        # [CONFLICT] bare string [A1][A8] vs {"images": [...]} [A2][A10]: configurable.
        return urls[0] if self.sandbox.options["apiframe_result_shape"] == "string" else {"images": urls}

    def job(self, req: Request, match: re.Match[str]) -> Response:
        if not UUID.match(match["id"]):
            return self.error(400, "Invalid job id", details={"id": ["Invalid uuid"]})
        job = self.sandbox.store.job(self.name, match["id"].lower())
        if job is None or job.owner != self.credential(req):
            return self.error(404, "Job not found")  # not found or owned by another key [A7]
        return json_response(200, self.job_object(job))

    def job_object(self, job: Job) -> dict[str, Any]:
        status, progress = self.status(job)
        done = status in ("COMPLETED", "FAILED")
        body: dict[str, Any] = {
            "id": job.id,
            "status": status,
            "model": MODEL,
            "progress": progress,
            "result": self.result(job) if status == "COMPLETED" else None,
            "error": error_value(job, FAILURES[job.outcome]) if status == "FAILED" else None,
            "creditCost": 0 if status == "FAILED" else CREDIT_COST,  # FAILED => refunded [A1]
            "webhookStatus": job.extra.get("webhook_status"),
            "createdAt": iso(job.created),
            "completedAt": iso(job.completed_wall) if done else None,
            "input": job.extra.get("input"),
        }
        if status == "COMPLETED":
            body["expired"] = job.urls_expired()  # true once result URLs are purged [A7]
        return body

    # -- webhooks [A3][A8 webhooks.ts] ------------------------------------------------------------
    def schedule_webhooks(self, job: Job, url: str, events: list[str]) -> None:
        scheduler = self.sandbox.scheduler
        terminal = "completed" if job.succeeded else "failed"
        if "progress" in events:
            scheduler.at(
                job.start + (job.done_at - job.start) / 2, lambda: self.deliver(job, url, "progress")
            )
        if terminal in events:
            job.extra["webhook_status"] = "pending"
            scheduler.at(job.done_at, lambda: self.deliver(job, url, terminal))

    def deliver(self, job: Job, url: str, event: str) -> None:
        if event == "progress":
            payload: dict[str, Any] = {
                "event": "progress",
                "jobId": job.id,
                "status": "PROCESSING",
                "progress": self.status(job)[1],
                "model": MODEL,
            }
        elif event == "completed":
            payload = {
                "event": "completed",
                "jobId": job.id,
                "status": "COMPLETED",
                "progress": 100,
                "result": self.result(job),
                "model": MODEL,
                "creditCost": CREDIT_COST,
                "completedAt": iso(job.completed_wall),
            }
        else:
            payload = {
                "event": "failed",
                "jobId": job.id,
                "status": "FAILED",
                "error": error_value(job, FAILURES[job.outcome]),
                "model": MODEL,
            }
        raw = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "X-Webhook-Event": event,
            "X-Webhook-Signature": webhooks.apiframe_signature(job.owner, raw),
        }
        code = webhooks.post(url, raw, headers, timeout=float(self.sandbox.options["webhook_timeout"]))
        delivered = code is not None and 200 <= code < 300
        if event != "progress":
            job.extra["webhook_status"] = "delivered" if delivered else "failed"
        self.sandbox.store.deliveries.append(
            {
                "provider": self.name,
                "job": job.id,
                "event": event,
                "url": url,
                "status": code,
                "delivered": delivered,
                "refused": not webhooks.is_loopback_url(url),
                "time": time.time(),
                "json": payload,
            }
        )
