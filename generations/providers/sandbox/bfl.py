"""BFL's own API: POST /v1/<model> -> id + polling_url, GET /v1/get_result?id= until Ready (providers.md 5).

Errors are FastAPI's (`{"detail": ...}`, 422 with a list for validation [B7]); at most 24 active tasks per
key, then 429 with Retry-After [B1 rate-limiting.md]; result.sample is a signed link that expires with the
sandbox's URL TTL (10 minutes at BFL [B1]). A `webhook_url` gets the job's end POSTed to it (loopback only),
signed with `webhook_secret` in X-BFL-Signature, retried after 1, 5 and 30 s [B1 webhook-integration.md].
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import time
import uuid
from typing import Any

from . import webhooks
from .base import ProviderApp, Route, error_value, is_int, route
from .state import Job, iso
from .wire import Request, Response, json_response

# FLUX.2 endpoints and their list prices in BFL credits (1 credit = $0.01): first MP, each further MP [B1].
MODELS = {
    "flux-2-max": (7.0, 3.0),
    "flux-2-pro": (3.0, 1.5),
    "flux-2-flex": (5.0, 5.0),
    "flux-2-klein-4b": (1.4, 0.1),
    "flux-2-klein-9b": (1.5, 0.2),
}
INPUT_IMAGES = ("input_image",) + tuple(f"input_image_{i}" for i in range(2, 9))  # [B2]
MAX_ACTIVE = 24  # concurrent active tasks per key [B1 rate-limiting.md]
MAX_PIXELS = 4 * 1024 * 1024  # [B1]
FAILURE = "Generation failed: the model returned an error"
RETRIES = (1.0, 5.0, 30.0)  # seconds before each further webhook attempt [B1 webhook-integration.md]


def megapixels(width: int, height: int) -> float:
    return round(width * height / 1_000_000, 2)  # 1024x1024 is "output_mp": 1.05 [B2]


def signature(name: str, expires: str) -> str:
    return hmac.new(b"fluxweb-sandbox", f"{name}|{expires}".encode(), hashlib.sha256).hexdigest()[:43]


class Bfl(ProviderApp):
    name = "bfl"

    def routes(self) -> list[Route]:
        return [
            route("POST", r"/v1/(?P<model>[a-z0-9.\-]+)", self.submit, "submit"),  # [B1][B2]
            route("GET", r"/v1/get_result", self.get_result),  # [B3][B7]
        ]

    def credential(self, req: Request) -> str | None:
        return req.headers.get("x-key") or None  # [B1]

    def unauthorized(self, req: Request, missing: bool) -> Response:
        # FastAPI's API-key header guard: 403 "Not authenticated" without one [B1 SKILL]; 401 for a bad one.
        if missing:
            return json_response(403, {"detail": "Not authenticated"})
        return json_response(401, {"detail": "Invalid API key"})

    def not_found(self, req: Request) -> Response:
        return json_response(404, {"detail": "Not Found"})

    def server_error(self, status: int) -> Response:
        return json_response(
            status, {"detail": "Service Unavailable" if status == 503 else "Internal Server Error"}
        )

    def rate_limited(self) -> Response:
        # [B1 rate-limiting.md]: the body's words beside a code, and Retry-After.
        body = {"error": "rate_limit_exceeded", "message": "Too many concurrent requests", "retry_after": 1}
        return json_response(429, body, {"Retry-After": "1"})

    def insufficient_credit(self, req: Request) -> Response:
        return json_response(402, {"detail": "Insufficient credits"})  # 402 [B1 error-handling.md]

    def submit(self, req: Request, match: re.Match[str]) -> Response:
        if match["model"] not in MODELS:
            return self.not_found(req)
        try:
            body = req.json()
        except ValueError:
            return invalid([("body",), "JSON decode error", "json_invalid"])
        problems = validate(body)
        if problems:
            return invalid(*problems)
        owner = self.credential(req) or ""
        store = self.sandbox.store
        width, height = body.get("width") or 1024, body.get("height") or 1024  # 0 means the default [B2]
        inputs = sum(1 for key in INPUT_IMAGES if body.get(key))
        first, extra = MODELS[match["model"]]
        out_mp = megapixels(width, height)
        cost = round(first + extra * max(0.0, out_mp - 1) + extra * inputs, 2)  # inputs counted at 1 MP
        with store.lock:
            active = sum(
                1
                for job in store.jobs.values()
                if job.provider == self.name and job.owner == owner and not job.is_done()
            )
            if active >= MAX_ACTIVE:
                return self.rate_limited()
            if store.charge(self.name, int(cost * 100)) is None:
                return self.insufficient_credit(req)
            job_id = str(uuid.uuid4())
            fmt = body.get("output_format") or "jpeg"
            job = self.new_job(
                job_id=job_id,
                owner=owner,
                prompt=body["prompt"],
                width=width,
                height=height,
                fmt=fmt,
                seed=body["seed"] if is_int(body.get("seed")) else random.randrange(2**31),
                count=1,
                name_for=lambda i: f"{job_id.replace('-', '')}_sample.{fmt}",
            )
        job.extra.update(base_url=req.base_url, model=match["model"])
        if isinstance(body.get("webhook_url"), str):
            # With a webhook the reply is AsyncWebhookResponse, without polling_url [B2][B7].
            self.sandbox.scheduler.at(
                job.done_at, lambda: self.deliver(job, body["webhook_url"], body.get("webhook_secret"), 0)
            )
            return json_response(200, {"id": job.id, "status": "Pending", "webhook_url": body["webhook_url"]})
        return json_response(
            200,
            {
                "id": job.id,
                # The job's own cluster's address [B3][B5]; always polled as given.
                "polling_url": f"{req.base_url}/{self.name}/v1/get_result?id={job.id}",
                "cost": cost,
                "input_mp": float(inputs),
                "output_mp": out_mp,
            },
        )

    def get_result(self, req: Request, match: re.Match[str]) -> Response:
        job_id = req.query.get("id")
        if not job_id:
            return invalid([("query", "id"), "Field required", "missing"])
        job = self.sandbox.store.job(self.name, job_id)
        if job is None or job.owner != self.credential(req):
            return json_response(200, {"id": job_id, "status": "Task not found"})  # [B7]
        return json_response(200, self.result(job))

    def result(self, job: Job) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": job.id,
            "result": None,
            "progress": None,
            "details": None,
            "preview": None,
        }
        if not job.is_done():
            return body | {"status": "Pending", "progress": round(job.fraction(), 2)}
        if job.outcome == "moderation":
            word = self.sandbox.options["bfl_moderation_word"]
            return body | {"status": word, "details": {"Moderation Reasons": ["Derivative Works Filter"]}}
        if not job.succeeded:
            return body | {"status": "Error", "error": error_value(job, FAILURE)}
        expires = iso(time.time() + max(0.0, job.urls_expire_at() - time.monotonic()), millis=False)
        url = job.urls(job.extra["base_url"])[0]
        sample = f"{url}?se={expires}&sp=r&sig={signature(url, expires)}"  # a signed link [B1]
        return body | {
            "status": "Ready",
            "progress": 1.0,
            "result": {
                "sample": sample,
                "prompt": job.prompt,
                "seed": job.seed,
                "start_time": job.created,
                "end_time": job.completed_wall,
                "duration": round(job.done_at - job.start, 3),
            },
        }

    # -- webhooks [B1 webhook-integration.md] ------------------------------------------------------
    def deliver(self, job: Job, url: str, secret: str | None, attempt: int) -> None:
        """POST the job's end to `url`, signed with `secret` when one was given; retried after 1, 5 and 30 s
        while it fails, then abandoned."""
        payload: dict[str, Any] = {"id": job.id, "status": "Ready", "result": self.result(job)["result"]}
        if job.outcome == "moderation":
            word = self.sandbox.options["bfl_moderation_word"]
            payload = {
                "id": job.id,
                "status": "Error",
                "error": word,
                "message": f"{word} by the safety filter",
            }
        elif not job.succeeded:
            payload = {
                "id": job.id,
                "status": "Error",
                "error": error_value(job, FAILURE),
                "message": FAILURE,
            }
        raw = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"X-BFL-Signature": webhooks.bfl_signature(secret, raw)} if secret else {}
        code = webhooks.post(url, raw, headers, timeout=float(self.sandbox.options["webhook_timeout"]))
        delivered = code is not None and 200 <= code < 300
        self.sandbox.store.deliveries.append(
            {
                "provider": self.name,
                "job": job.id,
                "event": payload["status"],
                "url": url,
                "status": code,
                "delivered": delivered,
                "refused": not webhooks.is_loopback_url(url),
                "attempt": attempt,
                "time": time.time(),
                "json": payload,
            }
        )
        if not delivered and attempt < len(RETRIES) and webhooks.is_loopback_url(url):
            self.sandbox.scheduler.at(
                time.monotonic() + RETRIES[attempt], lambda: self.deliver(job, url, secret, attempt + 1)
            )


def invalid(*problems: tuple[tuple[str, ...], str, str]) -> Response:
    """FastAPI's validation error: 422 with `detail` a list of {loc, msg, type} [B7]."""
    detail = [{"loc": list(loc), "msg": msg, "type": kind} for loc, msg, kind in problems]
    return json_response(422, {"detail": detail})


def validate(body: Any) -> list[tuple[tuple[str, ...], str, str]]:
    """The request schema of /v1/flux-2-max [B2]: unknown keys are ignored, as pydantic does by default."""
    if not isinstance(body, dict):
        return [(("body",), "Input should be a valid dictionary", "dict_type")]
    problems = []
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append((("body", "prompt"), "Field required", "missing"))
    for side in ("width", "height"):
        value = body.get(side)
        if value is None or value == 0:
            continue
        if not is_int(value):
            problems.append((("body", side), "Input should be a valid integer", "int_type"))
        elif value < 64:
            problems.append(
                (("body", side), "Input should be greater than or equal to 64", "greater_than_equal")
            )
        elif value % 16:
            problems.append((("body", side), "Value error, must be a multiple of 16", "value_error"))
    width, height = body.get("width") or 1024, body.get("height") or 1024
    if is_int(width) and is_int(height) and width * height > MAX_PIXELS:
        problems.append((("body",), "Value error, the image may have at most 4 megapixels", "value_error"))
    tolerance = body.get("safety_tolerance", 2)
    if not is_int(tolerance) or not 0 <= tolerance <= 5:
        problems.append((("body", "safety_tolerance"), "Input should be between 0 and 5", "less_than_equal"))
    if body.get("output_format", "jpeg") not in ("jpeg", "png", None):
        problems.append((("body", "output_format"), "Input should be 'jpeg' or 'png'", "enum"))
    if "seed" in body and body["seed"] is not None and not is_int(body["seed"]):
        problems.append((("body", "seed"), "Input should be a valid integer", "int_type"))
    for key in ("webhook_url", "webhook_secret"):
        if body.get(key) is not None and not isinstance(body[key], str):
            problems.append((("body", key), "Input should be a valid string", "string_type"))
    if isinstance(body.get("webhook_url"), str) and not 1 <= len(body["webhook_url"]) <= 2083:
        problems.append((("body", "webhook_url"), "URL should have at most 2083 characters", "url_too_long"))
    for key in INPUT_IMAGES:
        if body.get(key) is not None and not isinstance(body[key], str):
            problems.append((("body", key), "Input should be a valid string", "string_type"))
    return problems
