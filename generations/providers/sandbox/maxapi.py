"""MaxAPI `POST /v1/images/generations`: synchronous, the 200 carries the image URLs (providers.md 1)."""

from __future__ import annotations

import random
import re
import time
import uuid
from typing import Any

from .base import ProviderApp, Route, is_int, route
from .wire import Request, Response, json_response

MODELS = ("flux-plus", "flux-pro-2")
SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")


class MaxAPI(ProviderApp):
    name = "maxapi"

    def routes(self) -> list[Route]:
        return [
            route("POST", r"/v1/images/generations", self.generate, "submit"),
            # Not on the Flux page; an OpenAI-compatible gateway lists models here [INFERRED] - a cheap
            # authenticated call for "test connection".
            route("GET", r"/v1/models", self.models),
        ]

    # Error bodies: OpenAI / new-api style, as the gateway MaxAPI resembles produces them [INFERRED][X2].
    def error(
        self,
        status: int,
        message: str,
        code: str,
        *,
        kind: str = "new_api_error",
        param: str = "",
        headers: dict[str, str] | None = None,
    ) -> Response:
        return json_response(
            status, {"error": {"message": message, "type": kind, "param": param, "code": code}}, headers
        )

    def invalid(self, message: str, param: str) -> Response:
        return self.error(400, message, "invalid_request", kind="invalid_request_error", param=param)

    def unauthorized(self, req: Request, missing: bool) -> Response:
        # [M3] 401 = key missing / invalid / revoked; body as in the new-api example [X2].
        return self.error(401, "Invalid token" if not missing else "No token provided", "invalid_request")

    def not_found(self, req: Request) -> Response:
        return self.error(404, f"Invalid URL ({req.method} {req.path})", "", kind="invalid_request_error")

    def server_error(self, status: int) -> Response:
        return self.error(status, "upstream provider error, please retry later", "upstream_error")

    def rate_limited(self) -> Response:
        # [M2-errors] 429 = rate limit OR insufficient credit; clients tell them apart by the message only.
        return self.error(
            429, "Rate limit reached, please retry later", "rate_limit_exceeded", headers={"Retry-After": "1"}
        )

    def insufficient_credit(self, req: Request) -> Response:
        return self.error(
            429,
            "Insufficient credit: your account balance is too low for this request",
            "insufficient_user_quota",
        )

    def models(self, req: Request, match: re.Match[str]) -> Response:
        data = [{"id": m, "object": "model", "created": 1725098966, "owned_by": "maxapi"} for m in MODELS]
        return json_response(200, {"object": "list", "data": data})

    def generate(self, req: Request, match: re.Match[str]) -> Response:
        try:
            body = req.json()
        except ValueError:
            return self.invalid("Invalid request body: not JSON", "")
        problem = self.validate(body)
        if problem:
            return problem
        n = int(body["n"])
        width, height = (int(x) for x in SIZE.match(body["size"]).groups())  # type: ignore[union-attr]
        job_id = str(uuid.uuid4())
        job = self.new_job(
            job_id=job_id,
            owner=self.credential(req) or "",
            prompt=body["prompt"],
            width=width,
            height=height,
            # [S000] the example says content_type image/jpeg while the URL ends `.png`: serve JPEG bytes
            # under a .png name, so clients must trust the bytes, not the extension.
            fmt="jpeg",
            seed=random.randrange(2**31),
            count=n,
            name_for=lambda i: f"{job_id}_{i}.png",  # [S000] `<uuid>_<index>.png`
        )
        # Synchronous: hold the request for the job's latency [S000].
        if self.sandbox.wait(job.done_at - time.monotonic()):
            return self.server_error(503)
        if job.outcome == "moderation":
            # [M2-errors] 403 covers content policy.
            return self.error(
                403,
                "Your request was rejected as a result of our safety system (content policy violation)",
                "content_policy_violation",
                param="prompt",
            )
        if job.outcome == "failure" and job.extra.get("error_object"):
            # The new-api body with objects where its strings belong.
            return json_response(
                400,
                {
                    "error": {
                        "message": {
                            "message": "Image generation failed: invalid prompt",
                            "type": "bad_prompt",
                        },
                        "type": {"name": "new_api_error"},
                        "code": {"value": "generation_failed"},
                    }
                },
            )
        if job.outcome == "failure":
            return self.error(500, "Image generation failed upstream, please retry", "generation_failed")
        return json_response(200, self.result(req, job, body))

    def result(self, req: Request, job: Any, body: dict[str, Any]) -> dict[str, Any]:
        images = [
            {"url": url, "width": str(job.width), "height": str(job.height), "content_type": "image/jpeg"}
            for url in job.urls(req.base_url)
        ]
        return {
            "images": images,  # width/height are STRINGS [S000]
            "timings": {"inference": round(job.done_at - job.start, 6)},
            "seed": job.seed,
            # [S000] 2 entries for 1 image: emit n + 1 so clients never index by it.
            "has_nsfw_concepts": [False] * (len(images) + 1),
            "prompt": job.prompt,
        }

    def validate(self, body: Any) -> Response | None:
        if not isinstance(body, dict):
            return self.invalid("Request body must be a JSON object", "")
        if body.get("model") not in MODELS:
            return self.invalid(f"Invalid model: must be one of {', '.join(MODELS)}", "model")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return self.invalid("prompt is required", "prompt")
        if len(prompt) > 1000:  # [S000] "Maximum length is 1000 characters"
            return self.invalid("prompt must be at most 1000 characters", "prompt")
        # [S000][CONFLICT] `n` is documented as a string but the example sends an integer; range "1-10" vs
        # "official release will support 1-4": accept both spellings, allow 1..4.
        n = body.get("n", 1)
        if isinstance(n, str) and n.strip().isdigit():
            n = int(n)
        if not is_int(n) or not 1 <= n <= 4:
            return self.invalid("n must be an integer between 1 and 4", "n")
        body["n"] = n
        # [S000][CONFLICT] "one of 256x256, 512x512 or 1024x1024" vs "Size: Customizable": accept any WxH
        # with sides 64..2048.
        size = body.get("size", "1024x1024")
        match = SIZE.match(size) if isinstance(size, str) else None
        if not match or not all(64 <= int(side) <= 2048 for side in match.groups()):
            return self.invalid("size must be WIDTHxHEIGHT with sides between 64 and 2048", "size")
        body["size"] = size
        return None
