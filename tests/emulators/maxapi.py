"""MaxAPI "Flux API / Create Image" (providers.md section 1, seed 000): one synchronous call.

`POST /v1/images/generations` with `Authorization: Bearer <key>` and `{"model", "prompt", "n", "size"}`; the
request is held while the images are made, then HTTP 200 carries the fal-style body of the example:
`images[{url, width: str, height: str, content_type}]`, `timings`, `seed`, `has_nsfw_concepts`, `prompt`.
Errors use the OpenAI/new-api shape `{"error": {"message", "type", "param", "code"}}` [X2]; 429 means rate
limit or insufficient credit [M2-errors].
"""

from __future__ import annotations

import re
import secrets
import time
import uuid

from .base import NOT_JSON, Answer, Emulator, Recorded, is_int

PATH = "/v1/images/generations"
FIELDS = {"model", "prompt", "n", "size"}  # the four documented body fields, all required [S000]
MODELS = ("flux-plus", "flux-pro-2")
DOCUMENTED_SIZES = ("256x256", "512x512", "1024x1024")


class MaxApiEmulator(Emulator):
    name = "maxapi"
    api_key = "sk-emulator-maxapi-0001"
    FAULTS = {
        "auth": (401, "Invalid token (request id: 2024083110292600000001)", "invalid_api_key"),
        "invalid": (400, "Invalid request: the model is temporarily unavailable", "invalid_request"),
        "forbidden": (403, "This key has no access to this model", "model_not_allowed"),
        "moderation": (403, "Your request was rejected by the content policy", "content_policy_violation"),
        "credit": (429, "user quota is not enough", "insufficient_user_quota"),
        "rate_limit": (429, "Rate limit reached for requests", "rate_limit_exceeded"),
        "server": (500, "upstream error: do request failed", "do_request_failed"),
        "bad_gateway": (502, "Bad gateway", "bad_gateway"),
        "unavailable": (503, "The service is temporarily unavailable", "service_unavailable"),
    }

    # "Must be one of 256x256, 512x512 or 1024x1024" vs "Size: Customizable" [S000 CONFLICT]: customizable
    # unless a test asks for the narrow reading.
    strict_sizes = False
    # The example's content_type says image/jpeg while its URL ends .png [S000]: the file is a JPEG.
    image_format = "jpeg"

    def error(self, status, message, code=None) -> Answer:
        return Answer(
            status, {"error": {"message": message, "type": "new_api_error", "param": "", "code": code}}
        )

    def stage_of(self, request: Recorded) -> str | None:
        return "submit" if request.method == "POST" and request.path == PATH else None

    def route(self, request: Recorded) -> Answer:
        if request.path != PATH or request.method != "POST":
            return self.error(404, f"Invalid URL ({request.method} {request.path})", "not_found")
        if request.header("Authorization") != f"Bearer {self.api_key}":
            return self.error(401, "Invalid token", "invalid_api_key")
        problem = self.problem(request.json)
        if problem:
            return self.error(400, problem, "invalid_request")
        body = request.json
        n = int(body["n"])
        width, height = (int(side) for side in body["size"].split("x"))
        time.sleep(self.delay)  # synchronous: the answer waits for the images
        job = self.new_job(
            uuid.uuid4().hex, body, n, width, height, self.image_format, "/outputs/{id}_{i}.png"
        )
        # `moderation`: every image flagged; `moderation_first`: only the first
        flags = [
            job.ending == "moderation" or (job.ending == "moderation_first" and i == 0) for i in range(n)
        ]
        job.extra["seed"] = secrets.randbelow(2**31)
        return Answer(
            200,
            {
                "images": [
                    {"url": url, "width": str(width), "height": str(height), "content_type": "image/jpeg"}
                    for url in self.file_urls(job)
                ],
                "timings": {"inference": self.delay},
                "seed": job.extra["seed"],
                # One flag per image, and one more: the example has two flags for one image [S000].
                "has_nsfw_concepts": [*flags, False],
                "prompt": body["prompt"],
            },
        )

    def problem(self, body) -> str | None:
        if body is NOT_JSON or not isinstance(body, dict):
            return "The request body must be a JSON object."
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            return f"Unknown parameter: {unknown[0]}"
        missing = sorted(FIELDS - set(body))
        if missing:
            return f"Missing required parameter: {missing[0]}"
        if body["model"] not in MODELS:
            return f"Invalid model: {body['model']}"
        prompt = body["prompt"]
        if not isinstance(prompt, str) or not prompt or len(prompt) > 1000:
            return "prompt must be a string of at most 1000 characters"
        n = body["n"]  # documented as a string, sent as an integer in the example [S000 CONFLICT]: both
        if not (is_int(n) or (isinstance(n, str) and n.isdigit())) or not 1 <= int(n) <= 10:
            return "n must be between 1 and 10"
        size = body["size"]
        if not isinstance(size, str) or not re.fullmatch(r"[1-9]\d*x[1-9]\d*", size):
            return "size must look like 1024x1024"
        if self.strict_sizes and size not in DOCUMENTED_SIZES:
            return "size must be one of 256x256, 512x512 or 1024x1024"
        return None
