"""Vtrix `flux_2_max` (providers.md section 2, seeds 001/002): an async task gateway passing BFL's params.

`POST /model/v1/generation` with `Authorization: Bearer <key>` and `{"model": "flux_2_max", "input":
[{"params": {...}}]}` (the wrapper vtrix-cli sends [V5]; a flat body is refused unless `accept_flat`) answers
`{"id", "status": "in_progress", "model", "created_at"}`; `GET /model/v1/generation/task/{id}` answers
`in_progress` (with `progress` 0-1) until `delay` has passed, then `completed` with
`output[].content[].url`, `usage` (cost a USD string) and `metadata`, or `failed` with `error`.
Params are checked as documented: width/height ints >= 64 (multiples of 16 and at most 4 MP, BFL's rule
[B1]), safety_tolerance 0-5, output_format jpeg|png, input_image .. input_image_8.
"""

from __future__ import annotations

import time

from .base import MEGAPIXEL, NOT_JSON, Answer, Emulator, Recorded, is_int, new_id

CREATE = "/model/v1/generation"
TASK = "/model/v1/generation/task/"
SLOTS = ("input_image", *(f"input_image_{i}" for i in range(2, 9)))
PARAMS = {
    "prompt",
    *SLOTS,
    "seed",
    "width",
    "height",
    "safety_tolerance",
    "output_format",
    "webhook_url",
    "webhook_secret",
}
ENDINGS = {
    "failed": {"code": "002014001", "message": "Image generation failed"},
    "moderation": {"code": "002014002", "message": "The input was flagged by content moderation"},
    # error as a plain string, or {code: int, error_message} [V5]
    "failed_text": "Image generation failed",
    "failed_legacy": {"code": 500123, "error_message": "Upstream model error"},
}


class VtrixEmulator(Emulator):
    name = "vtrix"
    api_key = "vtrix-emulator-key-0001"
    FAULTS = {
        "auth": (401, "Authorization Bearer or Key token is required", "UNAUTHORIZED"),
        "invalid": (400, "Invalid parameters", "INVALID_PARAMS"),
        "credit": (403, "Insufficient balance", "INSUFFICIENT_BALANCE"),
        "forbidden": (403, "Permission denied", "FORBIDDEN"),
        "not_found": (404, "Task not found", "NOT_FOUND"),
        "rate_limit": (429, "Rate limit exceeded, please try again later", "RATE_LIMIT_EXCEEDED"),
        "server": (500, "Internal server error", "INTERNAL_ERROR"),
        "unavailable": (503, "Service unavailable", "SERVICE_UNAVAILABLE"),
    }
    accept_flat = False  # the doc page lists params flat [S001]; clients wrap them [V5] [CONFLICT]

    def error(self, status, message, code=None) -> Answer:
        return Answer(status, {"error": {"code": code, "message": message}, "request_id": new_id(16)})

    def stage_of(self, request: Recorded) -> str | None:
        if request.method == "POST" and request.path == CREATE:
            return "submit"
        return "poll" if request.method == "GET" and request.path.startswith(TASK) else None

    def route(self, request: Recorded) -> Answer:
        if request.header("Authorization") != f"Bearer {self.api_key}":
            return self.error(401, "Authorization Bearer or Key token is required", "UNAUTHORIZED")
        if request.method == "POST" and request.path == CREATE:
            return self.create(request.json)
        if request.method == "GET" and request.path.startswith(TASK):
            job = self.jobs.get(request.path[len(TASK) :])
            return (
                Answer(200, self.answered(job, self.task(job)))
                if job
                else Answer(404, {"detail": "Task not found"})
            )
        return Answer(404, {"detail": "Not Found"})

    def create(self, body) -> Answer:
        params, problem = self.params_of(body)
        problem = problem or self.problem(params)
        if problem:
            return self.error(400, problem, "INVALID_PARAMS")
        width, height = params.get("width") or 1024, params.get("height") or 1024  # 0: the model's default
        fmt = params.get("output_format") or "jpeg"
        job = self.new_job(new_id(), body, 1, width, height, fmt, "/outputs/{id}/output-{i}." + fmt)
        job.extra["created_at"] = int(time.time())
        return Answer(
            200,
            {
                "id": job.id,
                "status": "in_progress",
                "model": "flux_2_max",
                "created_at": job.extra["created_at"],
            },
        )

    def params_of(self, body) -> tuple[dict, str | None]:
        if body is NOT_JSON or not isinstance(body, dict):
            return {}, "The request body must be a JSON object."
        if body.get("model") != "flux_2_max":
            return {}, f"App not found: {body.get('model')}"
        if "input" not in body and self.accept_flat:
            return {k: v for k, v in body.items() if k != "model"}, None
        unknown = sorted(set(body) - {"model", "input", "moderation"})
        if unknown:
            return {}, f"Unknown field: {unknown[0]}"
        wrapper = body.get("input")
        if not (
            isinstance(wrapper, list)
            and len(wrapper) == 1
            and isinstance(wrapper[0], dict)
            and set(wrapper[0]) == {"params"}
            and isinstance(wrapper[0]["params"], dict)
        ):
            return {}, 'input must be [{"params": {...}}]'
        return wrapper[0]["params"], None

    def problem(self, params: dict) -> str | None:
        unknown = sorted(set(params) - PARAMS)
        if unknown:
            return f"Unknown parameter: {unknown[0]}"
        if not isinstance(params.get("prompt"), str) or not params["prompt"].strip():
            return "prompt is required"
        for side in ("width", "height"):
            value = params.get(side)
            if value is None or value == 0:
                continue
            if not is_int(value) or value < 64 or value % 16:
                return f"{side} must be an integer >= 64 and a multiple of 16"
        if (params.get("width") or 1024) * (params.get("height") or 1024) > 4 * MEGAPIXEL:
            return "width x height must be at most 4 megapixels"
        tolerance = params.get("safety_tolerance", 2)
        if not is_int(tolerance) or not 0 <= tolerance <= 5:
            return "safety_tolerance must be an integer between 0 and 5"
        if params.get("seed") is not None and not is_int(params["seed"]):
            return "seed must be an integer"
        if params.get("output_format") not in (None, "jpeg", "png"):
            return "output_format must be one of jpeg, png"
        for slot in SLOTS:
            if params.get(slot) is not None and (not isinstance(params[slot], str) or not params[slot]):
                return f"{slot} must be a string"
        return None

    def task(self, job) -> dict:
        head = {"id": job.id, "model": "flux_2_max", "created_at": job.extra["created_at"]}
        if not self.done(job):
            return head | {"status": "in_progress", "progress": round(self.progress(job), 2)}
        if job.ending:
            return head | {"status": "failed", "error": ENDINGS[job.ending]}
        return head | {
            "status": "completed",
            "output": [{"content": [{"type": "image", "url": url} for url in self.file_urls(job)]}],
            "usage": {
                "cost": "0.0700",
                "discount": 0,
                "quantity": 1,
                "unit_price": "0.0700",
                "extra_info": {},
            },
            "metadata": {"timings": {"inference": self.delay}},
        }
