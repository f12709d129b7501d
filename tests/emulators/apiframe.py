"""Apiframe v2, `flux-2-max` (providers.md section 3, seed 003, the SDK's openapi.json [A7]).

`POST /v2/images/generate` with `X-API-Key` answers 202 `{"jobId": <uuid>, "status": "QUEUED"}`; the body
is checked against the `GenerateImageRequest` branch for flux-2-max with `additionalProperties: false` at
both levels (enums, the aspect-ratio pattern, ranges). `Idempotency-Key` replays the first job for the same
body and answers 409 for a different one. `GET /v2/jobs/{uuid}` walks QUEUED -> PROCESSING -> COMPLETED with
`result: {"images": [...]}` (or a bare URL with `result_as_string`), or FAILED with `error`.
Errors: `{"error": "...", "details"?: {...}}`; 402 carries creditsRequired/creditsAvailable.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

from .base import NOT_JSON, Answer, Emulator, Recorded, implied_size, is_int

CREATE = "/v2/images/generate"
JOBS = "/v2/jobs/"
TOP = {"prompt", "model", "webhookUrl", "webhookEvents", "fluxParams"}
RESOLUTIONS = {"0.5MP": 0.5, "1MP": 1.0, "2MP": 2.0, "4MP": 4.0, "match_input_image": 1.0}
FORMATS = {"jpg": "jpeg", "png": "png", "webp": "webp"}
ENDINGS = {
    "failed": "Provider returned an error: upstream generation failed",
    "moderation": "Provider returned an error: content policy violation",
}


def is_uri(value) -> bool:
    parts = urlsplit(value) if isinstance(value, str) else None
    return bool(parts and parts.scheme in ("http", "https") and parts.netloc)


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# fluxParams key -> check, per the flux-2-max branch of the schema [A7]
FLUX_PARAMS = {
    "resolution": lambda v: v in RESOLUTIONS,
    "aspect_ratio": lambda v: isinstance(v, str) and re.fullmatch(r"\d+:\d+", v) is not None,
    "width": lambda v: is_int(v) and 256 <= v <= 2048,
    "height": lambda v: is_int(v) and 256 <= v <= 2048,
    "input_images": lambda v: isinstance(v, list) and len(v) <= 10 and all(is_uri(u) for u in v),
    "image_prompt": is_uri,
    "image_prompt_strength": lambda v: is_number(v) and 0 <= v <= 1,
    "output_format": lambda v: v in FORMATS,
    "output_quality": lambda v: is_int(v) and 0 <= v <= 100,
    "prompt_upsampling": lambda v: isinstance(v, bool),
    "seed": is_int,
    "steps": lambda v: is_int(v) and 1 <= v <= 50,
    "guidance": lambda v: is_number(v) and 1.5 <= v <= 10,
    "raw": lambda v: isinstance(v, bool),
    "go_fast": lambda v: isinstance(v, bool),
}


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class ApiframeEmulator(Emulator):
    name = "apiframe"
    api_key = "afk_emulator_key_0001"
    FAULTS = {
        "auth": (401, "Invalid API key", None),
        "inactive": (403, "API key is inactive", None),
        "invalid": (400, "Invalid request", None),
        "credit": (402, "Insufficient credits", None),
        "not_found": (404, "Job not found", None),
        "rate_limit": (429, "Too many requests", None),
        "server": (500, "Internal server error", None),
        "unavailable": (503, "Service temporarily unavailable", None),
    }
    result_as_string = False  # `result` is a bare URL in older docs, {"images": [...]} now [A1 vs A2]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.idempotency: dict[str, tuple[str, str]] = {}

    def reset(self) -> None:
        super().reset()
        self.idempotency = {}

    def error(self, status, message, code=None, **extra) -> Answer:
        if status == 402:
            extra = {"creditsRequired": 10, "creditsAvailable": 0} | extra
        return Answer(status, {"error": message, **extra}, headers={"x-request-id": str(uuid.uuid4())})

    def fault_answer(self, fault: str) -> Answer:
        if fault == "invalid":  # a Zod validation failure: details keyed by JSON path [A7]
            reason = "Invalid enum value. Expected '0.5MP' | '1MP' | '2MP' | '4MP' | 'match_input_image'"
            return self.error(400, "Validation failed", details={"fluxParams.resolution": [reason]})
        return super().fault_answer(fault)

    def stage_of(self, request: Recorded) -> str | None:
        if request.method == "POST" and request.path == CREATE:
            return "submit"
        return "poll" if request.method == "GET" and request.path.startswith(JOBS) else None

    def route(self, request: Recorded) -> Answer:
        key = request.header("X-API-Key")
        if not key:
            return self.error(401, "API key is required")
        if key != self.api_key:
            return self.error(401, "Invalid API key")
        if request.method == "POST" and request.path == CREATE:
            return self.create(request)
        if request.method == "GET" and request.path.startswith(JOBS):
            job_id = request.path[len(JOBS) :]
            try:
                uuid.UUID(job_id)
            except ValueError:
                return self.error(400, "Invalid job id", details={"id": ["Invalid uuid"]})
            job = self.jobs.get(job_id)
            return (
                Answer(200, self.answered(job, self.job_object(job)))
                if job
                else self.error(404, "Job not found")
            )
        return self.error(404, "Not found")

    def create(self, request: Recorded) -> Answer:
        body = request.json
        details = self.problems(body)
        if details:
            return self.error(400, "Validation failed", details=details)
        key = request.header("Idempotency-Key")
        fingerprint = json.dumps(body, sort_keys=True)
        if key:
            if len(key) > 255:
                return self.error(400, "Idempotency-Key is too long")
            if key in self.idempotency:
                first, job_id = self.idempotency[key]
                if first != fingerprint:
                    return self.error(409, "Idempotency-Key was already used with a different request body")
                return Answer(202, {"jobId": job_id, "status": self.job_object(self.jobs[job_id])["status"]})
        params = body.get("fluxParams") or {}
        if params.get("width") and params.get("height"):
            width, height = params["width"], params["height"]
        else:
            width, height = implied_size(
                params.get("aspect_ratio", "1:1"), RESOLUTIONS[params.get("resolution", "2MP")]
            )
        ext = params.get("output_format", "jpg")
        job_id = str(uuid.uuid4())
        job = self.new_job(job_id, body, 1, width, height, FORMATS[ext], "/images/{id}-{i}." + ext)
        job.extra["createdAt"] = stamp()
        if key:
            self.idempotency[key] = (fingerprint, job_id)
        return Answer(202, {"jobId": job_id, "status": "QUEUED"})

    def problems(self, body) -> dict[str, list[str]]:
        if body is NOT_JSON or not isinstance(body, dict):
            return {"": ["Expected object"]}
        found = {key: ["Unrecognized key"] for key in sorted(set(body) - TOP)}
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not 1 <= len(prompt) <= 2000:
            found["prompt"] = ["String must contain between 1 and 2000 characters"]
        if body.get("model") != "flux-2-max":
            found["model"] = ['Invalid literal value, expected "flux-2-max"']
        if "webhookUrl" in body and not is_uri(body["webhookUrl"]):
            found["webhookUrl"] = ["Invalid url"]
        events = body.get("webhookEvents", ["completed"])
        if not (
            isinstance(events, list)
            and events
            and all(e in ("progress", "completed", "failed") for e in events)
        ):
            found["webhookEvents"] = ["Invalid enum value. Expected 'progress' | 'completed' | 'failed'"]
        params = body.get("fluxParams", {})
        if not isinstance(params, dict):
            return found | {"fluxParams": ["Expected object"]}
        for key, value in params.items():
            check = FLUX_PARAMS.get(key)
            if check is None:
                found[f"fluxParams.{key}"] = ["Unrecognized key"]
            elif not check(value):
                found[f"fluxParams.{key}"] = [f"Invalid value {value!r}"]
        return found

    def job_object(self, job) -> dict:
        obj = {
            "id": job.id,
            "status": "QUEUED",
            "model": "flux-2-max",
            "progress": 0,
            "result": None,
            "error": None,
            "creditCost": 10,
            "webhookStatus": None,
            "createdAt": job.extra["createdAt"],
            "completedAt": None,
            "input": job.body,
        }
        if not self.done(job):
            progress = self.progress(job)
            return obj if progress < 0.5 else obj | {"status": "PROCESSING", "progress": int(progress * 100)}
        finished = {
            "completedAt": stamp(),
            "webhookStatus": "delivered" if "webhookUrl" in job.body else None,
        }
        if job.ending in ENDINGS:
            return obj | finished | {"status": "FAILED", "error": ENDINGS[job.ending], "creditCost": 0}
        urls = self.file_urls(job)
        result = urls[0] if self.result_as_string else {"images": urls}
        # `expired`: "true once a COMPLETED job's CDN assets have been purged ... result URLs may 404" [A7]
        expired = job.ending == "expired"
        return obj | finished | {"status": "COMPLETED", "progress": 100, "result": result, "expired": expired}
