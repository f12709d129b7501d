"""PixelDojo `flux-2-max`: POST .../run -> 202 + jobId, poll /api/v1/jobs/{id} (providers.md 4)."""

from __future__ import annotations

import random
import re
import secrets
import time
from typing import Any

from .base import ProviderApp, Route, error_value, is_int, route
from .images import normalize_format, size_for
from .state import Job, iso
from .wire import Request, Response, json_response

MODEL = "flux-2-max"
CREDITS_PER_IMAGE = 2  # [P1][S004]
EXPIRY = 24 * 3600  # temp files are deleted after 24 h [P7][P8]; expiresAt = submit + 24 h [S004][INFERRED]
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3")  # [P1]
# Values not listed for flux-2-max; the flux-2-flex tiers [P3][INFERRED].
RESOLUTIONS = {"0.5 MP": 0.5, "1 MP": 1.0, "2 MP": 2.0, "4 MP": 4.0}
FORMATS = ("png", "jpg", "webp")  # legacy docs [P8]
KEYS = (
    "prompt",
    "aspect_ratio",
    "resolution",
    "num_outputs",
    "safety_tolerance",
    "prompt_upsampling",
    "seed",
    "output_format",
    "image_url",
    "input_images",
    "webhook_url",
)
FAILURES = {
    "moderation": "Generation blocked: the output was flagged by the safety filter",
    "failure": "Generation failed: the model returned an error",
}


class PixelDojo(ProviderApp):
    name = "pixeldojo"

    def routes(self) -> list[Route]:
        return [
            route("POST", r"/api/v1/models/(?P<model>[^/]+)/run", self.run, "submit"),  # [S004][P1]
            route("GET", r"/api/v1/jobs/(?P<id>[^/]+)", self.job),  # [S004][P3]
            # Public on the real API [P2]; authenticated here so "test connection" proves the key.
            route("GET", r"/api/v1/models", self.models),
            route("GET", r"/api/v1/models/(?P<model>[^/]+)", self.model),
        ]

    # Error bodies: the legacy v1 shape, the only one documented [P7][P8] [CONFLICT: async API unknown].
    def error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
        return json_response(status, {"error": {"code": code, "message": message, "status": status}}, headers)

    def unauthorized(self, req: Request, missing: bool) -> Response:
        return self.error(401, "invalid_api_key", "Missing API key" if missing else "Invalid API key")

    def not_found(self, req: Request) -> Response:
        return self.error(404, "not_found", f"No route for {req.method} {req.path}")

    def server_error(self, status: int) -> Response:
        return self.error(status, "server_error", "Internal server error")

    def rate_limited(self) -> Response:
        reset = str(int(time.time()) + 1)
        headers = {
            "Retry-After": "1",
            "X-RateLimit-Limit": "60",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": reset,
        }
        return self.error(429, "quota_exceeded", "Rate limit exceeded", headers)  # 60 rpm + headers [P8]

    def insufficient_credit(self, req: Request) -> Response:
        # [P7][P8] 403, verbatim body of the legacy docs.
        return self.error(403, "insufficient_credits", "Your account has insufficient credits")

    def models(self, req: Request, match: re.Match[str]) -> Response:
        return json_response(200, {"models": [self.model_entry()]})

    def model(self, req: Request, match: re.Match[str]) -> Response:
        if match["model"] != MODEL:
            return self.error(404, "model_not_found", f"Model {match['model']} not found")
        return json_response(200, self.model_entry())

    def model_entry(self) -> dict[str, Any]:
        return {
            "apiId": MODEL,
            "name": "Flux 2 Max",
            "type": "image",
            "creditCost": CREDITS_PER_IMAGE,
            "aspectRatios": list(ASPECT_RATIOS),
            "resolutions": list(RESOLUTIONS),
        }

    def run(self, req: Request, match: re.Match[str]) -> Response:
        if match["model"] != MODEL:
            return self.error(404, "model_not_found", f"Model {match['model']} not found")
        try:
            body = req.json()
        except ValueError:
            return self.error(400, "invalid_request", "Request body is not valid JSON")
        problems = self.validate(body)
        if problems:
            return self.error(400, "invalid_request", "; ".join(problems))
        count = body.get("num_outputs", 1)
        cost = CREDITS_PER_IMAGE * count
        remaining = self.sandbox.store.charge(self.name, cost)
        if remaining is None:
            return self.insufficient_credit(req)
        width, height = size_for(
            RESOLUTIONS[body.get("resolution", "1 MP")],
            *(int(x) for x in body.get("aspect_ratio", "1:1").split(":")),
        )
        fmt = normalize_format(body.get("output_format", "png"))
        ext = "jpg" if fmt == "jpeg" else fmt
        stamp = int(time.time())  # names like pixeldojotemp/1705930123-456789.png [S004]
        job = self.new_job(
            job_id="job_" + secrets.token_hex(12),
            owner=self.credential(req) or "",
            prompt=body["prompt"],
            width=width,
            height=height,
            fmt=fmt,
            seed=body["seed"] if "seed" in body else random.randrange(2**31),
            count=count,
            name_for=lambda i: f"{stamp}-{secrets.token_hex(8)}.{ext}",
        )
        # webhook_url is accepted [P5]; its payload and signature are [UNKNOWN], so nothing is sent.
        job.extra.update(
            base_url=req.base_url, credit_cost=cost, expires_at=iso(job.created + EXPIRY, millis=False)
        )
        return json_response(
            202,
            {
                "jobId": job.id,
                "status": "pending",
                "statusUrl": f"{req.base_url}/pixeldojo/api/v1/jobs/{job.id}",
                "creditCost": cost,
                "creditsRemaining": remaining,
                "expiresAt": job.extra["expires_at"],
            },
        )

    def validate(self, body: Any) -> list[str]:
        if not isinstance(body, dict):
            return ["body must be a JSON object"]
        # The model's requestSchema has additionalProperties:false [P4].
        problems = [f"Unrecognized key: '{key}'" for key in body if key not in KEYS]
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append("prompt is required")
        if body.get("aspect_ratio", "1:1") not in ASPECT_RATIOS:
            problems.append(f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}")
        if body.get("resolution", "1 MP") not in RESOLUTIONS:
            problems.append(f"resolution must be one of {', '.join(RESOLUTIONS)}")
        count = body.get("num_outputs", 1)
        if not is_int(count) or not 1 <= count <= 4:  # max 4 (legacy v1) [P7]
            problems.append("num_outputs must be an integer between 1 and 4")
        tolerance = body.get("safety_tolerance", 5)
        if not is_int(tolerance) or not 0 <= tolerance <= 6:
            problems.append("safety_tolerance must be an integer between 0 and 6")
        if not isinstance(body.get("prompt_upsampling", False), bool):
            problems.append("prompt_upsampling must be a boolean")
        if "seed" in body and not is_int(body["seed"]):
            problems.append("seed must be an integer")
        if body.get("output_format", "png") not in FORMATS:
            problems.append(f"output_format must be one of {', '.join(FORMATS)}")
        if "image_url" in body and not isinstance(body["image_url"], str):
            problems.append("image_url must be a string")
        images = body.get("input_images", [])
        if not isinstance(images, list) or not all(isinstance(u, str) for u in images):
            problems.append("input_images must be an array of strings")
        if "webhook_url" in body and not isinstance(body["webhook_url"], str):
            problems.append("webhook_url must be a string")
        return problems

    def job(self, req: Request, match: re.Match[str]) -> Response:
        job = self.sandbox.store.job(self.name, match["id"])
        if job is None:
            return self.error(404, "job_not_found", "Job not found")
        return json_response(200, self.job_body(job))

    def job_body(self, job: Job) -> dict[str, Any]:
        body: dict[str, Any] = {"jobId": job.id}
        if not job.is_done():
            # Documented: pending [S004]; processing [INFERRED].
            body["status"] = "pending" if job.fraction() < 0.3 else "processing"
        elif not job.succeeded:
            body.update(status="failed", error=error_value(job, FAILURES[job.outcome]))  # .error [P10]
        else:
            urls = job.urls(job.extra["base_url"])
            # [CONFLICT] {"images": [...]} [S004] vs {"image": url} [P9]: configurable.
            single = self.sandbox.options["pixeldojo_output_shape"] == "image"
            body.update(status="completed", output={"image": urls[0]} if single else {"images": urls})
        body.update(creditCost=job.extra["credit_cost"], expiresAt=job.extra["expires_at"])
        return body
