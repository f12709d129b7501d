"""Vtrix `flux_2_max`: async task gateway, create then poll (providers.md 2)."""

from __future__ import annotations

import random
import re
import secrets
import string
import uuid
from typing import Any

from .base import ProviderApp, Route, is_int, route
from .state import Job
from .wire import Request, Response, json_response

MODEL = "flux_2_max"
ID_ALPHABET = string.ascii_lowercase + string.digits
MAX_PIXELS = 4 * 1024 * 1024  # BFL: at most 4 MP [B1]
INPUT_IMAGES = ("input_image",) + tuple(f"input_image_{i}" for i in range(2, 9))

# Moderation vs generic failure codes; the seed's only example code is 002014001 [S001][V3].
FAILURES = {
    "moderation": ("002014002", 2014002, "Content moderation failed: the output violates the content policy"),
    "failure": ("002014001", 2014001, "Image generation failed"),
}


def new_task_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(20))  # d758n65e878c73cmdg20 [V5]


def usage_cost(width: int, height: int, inputs: int) -> str:
    # BFL list price as the stand-in [INFERRED]: $0.07 first output MP + $0.03 per extra MP and per
    # input image (counted at 1 MP each). A STRING in USD [S001].
    megapixels = width * height / (1024 * 1024)
    return f"{0.07 + 0.03 * max(0.0, megapixels - 1) + 0.03 * inputs:.4f}"


class Vtrix(ProviderApp):
    name = "vtrix"

    def routes(self) -> list[Route]:
        return [
            route("POST", r"/model/v1/generation", self.create, "submit"),  # [V2][V8]
            route("GET", r"/model/v1/generation/task/(?P<id>[^/]+)", self.task),  # [V5][V8]
        ]

    # HTTP errors: the SeaCloud gateway envelope (same platform) [V7-errors].
    def error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
        return json_response(
            status, {"error": {"code": code, "message": message}, "request_id": uuid.uuid4().hex}, headers
        )

    def unauthorized(self, req: Request, missing: bool) -> Response:
        message = "Authorization Bearer or Key token is required" if missing else "API key is invalid"
        return self.error(401, "UNAUTHORIZED", message)

    def not_found(self, req: Request) -> Response:
        return json_response(404, {"detail": "Not Found"})

    def server_error(self, status: int) -> Response:
        return self.error(status, "INTERNAL_ERROR", "Internal server error")

    def rate_limited(self) -> Response:
        return self.error(
            429, "RATE_LIMIT_EXCEEDED", "Rate limit exceeded, please try again later", {"Retry-After": "1"}
        )

    def insufficient_credit(self, req: Request) -> Response:
        # [V1] 403 "Insufficient balance or permission denied".
        return self.error(403, "INSUFFICIENT_BALANCE", "Insufficient balance or permission denied")

    def invalid(self, message: str) -> Response:
        return self.error(400, "INVALID_PARAMETER", message)

    def create(self, req: Request, match: re.Match[str]) -> Response:
        try:
            body = req.json()
        except ValueError:
            return self.invalid("request body is not valid JSON")
        if not isinstance(body, dict):
            return self.invalid("request body must be a JSON object")
        if body.get("model") != MODEL:
            return json_response(404, {"detail": f"App not found: {body.get('model')}"})  # [V7-errors]
        # [CONFLICT] adapters send {"model", "input":[{"params":{...}}]} [V5][V8]; the doc page reads flat [V1].
        if "input" in body:
            entries = body["input"]
            if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
                return self.invalid("input must be a non-empty array of {params: {...}}")
            params = entries[0].get("params")
            if not isinstance(params, dict):
                return self.invalid("input[0].params must be an object")
        else:
            params = {k: v for k, v in body.items() if k not in ("model", "moderation")}
        problem, size = self.validate(params)
        if problem:
            return problem
        width, height = size
        seed = params.get("seed")
        task_id = new_task_id()
        fmt = params.get("output_format") or "jpeg"
        job = self.new_job(
            job_id=task_id,
            owner=self.credential(req) or "",
            prompt=params["prompt"],
            width=width,
            height=height,
            fmt=fmt,
            seed=seed if is_int(seed) else random.randrange(2**31),
            count=1,
            name_for=lambda i: f"{task_id}-output.{fmt}",
        )
        job.extra["inputs"] = sum(1 for key in INPUT_IMAGES if params.get(key))
        # webhook_url / webhook_secret are BFL schema leftovers with no documented delivery: ignored [V7-errors].
        status = self.sandbox.options["vtrix_status_word"]  # fixture: in_progress [V8]
        return json_response(
            200, {"id": task_id, "status": status, "model": MODEL, "created_at": int(job.created)}
        )

    def validate(self, params: dict[str, Any]) -> tuple[Response | None, tuple[int, int]]:
        prompt = params.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return self.invalid("prompt is required"), (0, 0)
        for key in INPUT_IMAGES:
            if params.get(key) is not None and not isinstance(params[key], str):
                return self.invalid(f"{key} must be a string or null"), (0, 0)
        if params.get("seed") is not None and not is_int(params["seed"]):
            return self.invalid("seed must be an integer or null"), (0, 0)
        sides = []
        for key in ("width", "height"):
            value = params.get(key)
            if value in (None, 0):
                sides.append(1024)  # default 0 = the model's own size [S001][INFERRED: 1024]
                continue
            # [CONFLICT] multiple of 32 [V6] vs 16 [B1]: the BFL rule, since Vtrix passes BFL params through.
            if not is_int(value) or value < 64 or value % 16:
                return self.invalid(f"{key} must be an integer >= 64 and a multiple of 16"), (0, 0)
            sides.append(value)
        if sides[0] * sides[1] > MAX_PIXELS:
            return self.invalid("width * height must be at most 4 megapixels"), (0, 0)
        tolerance = params.get("safety_tolerance", 2)
        if not is_int(tolerance) or not 0 <= tolerance <= 5:  # [S001] range 0..5
            return self.invalid("safety_tolerance must be an integer between 0 and 5"), (0, 0)
        if params.get("output_format") not in (None, "jpeg", "png"):
            return self.invalid("output_format must be one of jpeg, png"), (0, 0)
        hook = params.get("webhook_url")
        if hook is not None and (not isinstance(hook, str) or not 1 <= len(hook) <= 2083):
            return self.invalid("webhook_url must be a URI of 1 to 2083 characters"), (0, 0)
        return None, (sides[0], sides[1])

    def task(self, req: Request, match: re.Match[str]) -> Response:
        job = self.sandbox.store.job(self.name, match["id"])
        if job is None:
            return self.error(404, "TASK_NOT_FOUND", f"task {match['id']} not found")
        return json_response(200, self.task_body(req, job))

    def task_body(self, req: Request, job: Job) -> dict[str, Any]:
        options = self.sandbox.options
        body: dict[str, Any] = {"id": job.id, "model": MODEL, "created_at": int(job.created)}
        if not job.is_done():
            # [CONFLICT] in_progress [V3][V5] vs pending/processing [V4]: configurable.
            body.update(status=options["vtrix_status_word"], progress=round(min(job.fraction(), 0.99), 2))
            return body
        if not job.succeeded:
            code, number, message = FAILURES[job.outcome]
            shape = options["vtrix_error_shape"]
            # [CONFLICT] error as {code,message} [S001], a string, or {code:int,error_message} [V5][V8].
            error: Any = {"code": code, "message": message}
            if shape == "string":
                error = message
            elif shape == "numeric":
                error = {"code": number, "error_message": message}
            if job.extra.get("error_object"):
                # The message, documented as a string [S001], given as an object.
                error = {"code": code, "message": {"message": message, "type": "provider_error"}}
            body.update(status="failed", error=error)
            return body
        cost = usage_cost(job.width, job.height, job.extra.get("inputs", 0))
        body.update(
            status=options["vtrix_done_word"],
            output=[{"content": [{"type": "image", "url": url} for url in job.urls(req.base_url)]}],
            # cost and unit_price are STRINGS [S001][V5].
            usage={
                "cost": cost,
                "discount": 0,
                "quantity": len(job.files),
                "unit_price": cost,
                "extra_info": {},
            },
            metadata={},
        )
        return body
