"""PixelDojo `flux-2-max` (providers.md section 4, seed 004): async jobs polled through statusUrl.

`POST /api/v1/models/flux-2-max/run` with `Authorization: Bearer <key>` answers 202 `{"jobId": "job_...",
"status": "pending", "statusUrl", "creditCost", "creditsRemaining", "expiresAt"}`; the body may hold only the
page's parameters (the model schema has `additionalProperties: false` [P4]): prompt, aspect_ratio (the nine
listed), resolution, num_outputs, safety_tolerance, prompt_upsampling, seed, output_format, webhook_url.
`GET /api/v1/jobs/{jobId}` answers `pending` until `delay` has passed, then `completed` with
`output.images[]` or `failed` with `error`. Errors use the legacy shape `{"error": {"code", "message",
"status"}}` [P7][P8]; insufficient credits is 403 `insufficient_credits` (or 402 with `credit_402`).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from .base import NOT_JSON, Answer, Emulator, Recorded, implied_size, is_int

RUN = "/api/v1/models/flux-2-max/run"
JOBS = "/api/v1/jobs/"
RATIOS = ("1:1", "16:9", "9:16", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3")  # [S004]
# Only "1 MP" (the default) is shown [S004]; flux-2-flex's 0.5/1/2/4 MP tiers are assumed [P3][INFERRED].
RESOLUTIONS = {"0.5 MP": 0.5, "1 MP": 1.0, "2 MP": 2.0, "4 MP": 4.0}
FORMATS = {"png": "png", "jpg": "jpeg", "webp": "webp"}  # legacy spelling [P8]
FIELDS = {
    "prompt": lambda v: isinstance(v, str) and v.strip() != "",
    "aspect_ratio": lambda v: v in RATIOS,
    "resolution": lambda v: v in RESOLUTIONS,
    "num_outputs": lambda v: is_int(v) and 1 <= v <= 4,  # max undocumented; legacy v1 allowed 4 [P7]
    "safety_tolerance": lambda v: is_int(v) and 0 <= v <= 5,  # range undocumented; BFL's 0-5 [B2]
    "prompt_upsampling": lambda v: isinstance(v, bool),
    "seed": is_int,
    "output_format": lambda v: v in FORMATS,
    "webhook_url": lambda v: isinstance(v, str) and v.startswith(("http://", "https://")),
}
ENDINGS = {
    "failed": "Generation failed: the upstream model returned an error",
    "moderation": "NSFW content detected in the output",
}


class PixelDojoEmulator(Emulator):
    name = "pixeldojo"
    api_key = "pd_emulator_key_0001"
    FAULTS = {
        "auth": (401, "Invalid API key", "invalid_api_key"),
        "invalid": (400, "Invalid request", "invalid_request"),
        "credit": (403, "Your account has insufficient credits", "insufficient_credits"),
        "credit_402": (402, "Your account has insufficient credits", "insufficient_credits"),
        "forbidden": (403, "You do not have permission to use this model", "forbidden"),
        "not_found": (404, "Job not found", "not_found"),
        "rate_limit": (429, "Rate limit exceeded", "rate_limit_exceeded"),
        "server": (500, "Internal server error", "server_error"),
        "unavailable": (503, "Service temporarily unavailable", "server_error"),
    }

    def error(self, status, message, code=None) -> Answer:
        return Answer(status, {"error": {"code": code, "message": message, "status": status}})

    def stage_of(self, request: Recorded) -> str | None:
        if request.method == "POST" and request.path == RUN:
            return "submit"
        return "poll" if request.method == "GET" and request.path.startswith(JOBS) else None

    def route(self, request: Recorded) -> Answer:
        if request.header("Authorization") != f"Bearer {self.api_key}":
            return self.error(401, "Missing or invalid API key", "invalid_api_key")
        if request.method == "POST" and request.path == RUN:
            return self.run(request.json)
        if request.method == "GET" and request.path.startswith(JOBS):
            job = self.jobs.get(request.path[len(JOBS) :])
            return (
                Answer(200, self.answered(job, self.job_object(job)))
                if job
                else self.error(404, "Job not found", "not_found")
            )
        return self.error(404, "Model not found", "model_not_found")

    def run(self, body) -> Answer:
        if body is NOT_JSON or not isinstance(body, dict):
            return self.error(400, "The request body must be a JSON object", "invalid_request")
        for key, value in body.items():
            check = FIELDS.get(key)
            if check is None:
                return self.error(400, f"Unknown parameter: {key}", "invalid_request")
            if not check(value):
                return self.error(400, f"Invalid value for {key}: {value!r}", "invalid_request")
        if "prompt" not in body:
            return self.error(400, "prompt is required", "invalid_request")
        count = body.get("num_outputs", 1)
        width, height = implied_size(
            body.get("aspect_ratio", "1:1"), RESOLUTIONS[body.get("resolution", "1 MP")]
        )
        ext = body.get("output_format", "png")
        job_id = "job_" + secrets.token_hex(12)
        job = self.new_job(job_id, body, count, width, height, FORMATS[ext], "/pixeldojotemp/{id}-{i}." + ext)
        job.extra["expiresAt"] = (datetime.now(UTC) + timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Answer(
            202,
            {
                "jobId": job_id,
                "status": "pending",
                "statusUrl": f"{self.url}{JOBS}{job_id}",
                "creditCost": 2 * count,
                "creditsRemaining": 95,
                "expiresAt": job.extra["expiresAt"],
            },
        )

    def job_object(self, job) -> dict:
        head = {"jobId": job.id, "creditCost": 2 * len(job.files), "expiresAt": job.extra["expiresAt"]}
        if not self.done(job):
            return head | {"status": "pending"}
        if job.ending:
            return head | {"status": "failed", "error": ENDINGS[job.ending]}
        return head | {"status": "completed", "output": {"images": self.file_urls(job)}}
