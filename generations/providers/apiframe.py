"""Apiframe v2, model flux-2-max: job polling, idempotency keys and signed webhooks.

Docs: providers.md section 3 ([S003] model page, [A7] the SDK's openapi.json, [A8] the SDK).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from urllib.parse import quote

from .base import (
    CANCELED,
    FLUX_2_MAX_LIST_PRICE,
    PENDING,
    SUCCEEDED,
    Adapter,
    GenerationRequest,
    HttpCall,
    ModelSpec,
    Outcome,
    ProviderError,
    Reply,
    credit_cost,
    extract_message,
    failed,
    finished_without_images,
    fraction,
    job_id_text,
    moderation_or_failure,
    status_word,
    usable_urls,
)

# fluxParams.resolution is an enum; the docs page writes "2 MP" with a space, which the schema rejects
# [A6 vs A7 CONFLICT]: we send the schema's spelling.
RESOLUTIONS = {0.5: "0.5MP", 1.0: "1MP", 2.0: "2MP", 4.0: "4MP"}
FORMATS = {"jpeg": "jpg", "png": "png", "webp": "webp"}


class Apiframe(Adapter):
    kind = "apiframe"
    label = "Apiframe"
    default_base_url = "https://api.apiframe.ai"
    webhooks = True
    idempotent_submit = True  # Idempotency-Key: same key within 24 h returns the same job [A7]
    result_hosts = frozenset({"cdn.apiframe.ai", "cdn2.apiframe.ai"})  # [A1][A2][A8 tests]
    cost_unit = "Apiframe credits"  # creditCost [A7]
    default_prices = {"flux-2-max": FLUX_2_MAX_LIST_PRICE}  # flux-2-max credit cost [UNKNOWN]
    # "Poll every 2-3 s for images" [A1]; the SDK waits 2 s, x1.5, at most 5 s [A8]. It publishes no limit
    # (a course note's 500/min is low confidence [X3]): 120 a minute keeps 4-6 jobs at that pace. Its jobs
    # report progress, so the cadence aims its fast polls at the end (corrections 6).
    min_poll_interval = 0.25
    default_max_rpm = 120
    typical_seconds = 20.0  # ~20 s (providers.md, emulator notes)
    key_prefix = "afk_"  # [A4]
    # Job statuses [A7]: QUEUED and PROCESSING keep polling, like any word not listed.
    statuses = {
        "queued": PENDING,
        "processing": PENDING,
        "completed": SUCCEEDED,  # or expired: `expired: true` once the images are purged
        "failed": ProviderError.FAILED,
        "cancelled": CANCELED,
        "canceled": CANCELED,
    }
    models = {
        "flux-2-max": ModelSpec(
            id="flux-2-max",
            provider_model="flux-2-max",
            aspect_ratios=("1:1", "3:4", "4:3", "9:16", "16:9"),  # the five the model page lists [A9]
            megapixels=(0.5, 1.0, 2.0, 4.0),
            # fluxParams.width/height are "only used when aspect_ratio is custom" [A6], a value the schema does
            # not have [A7]: a width and height go as their reduced ratio (pattern ^\d+:\d+$) at their tier.
            custom_size=(256, 2048),  # width/height 256-2048 [A7]
            size_by_tier=True,
            max_reference_images=8,  # "up to 8" [A6]; the schema allows 10 [A7]
            output_formats=("jpeg", "png", "webp"),
            prompt_upsampling=True,
            max_prompt_chars=2000,
        )
    }

    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key, "Accept": "application/json"}

    def build_submit(self, request: GenerationRequest) -> HttpCall:
        ratio, megapixels = request.aspect_ratio or "1:1", request.megapixels or 1.0
        if request.width and request.height:
            ratio, megapixels = self.ratio_and_tier(request)
        params: dict = {
            "resolution": RESOLUTIONS[megapixels],
            "aspect_ratio": ratio,
            "output_format": FORMATS[request.output_format],
            "prompt_upsampling": request.prompt_upsampling,
        }
        if request.output_format != "png":
            params["output_quality"] = 90
        if request.seed is not None:
            params["seed"] = request.seed
        if request.reference_urls:
            params["input_images"] = list(request.reference_urls)
        body: dict = {
            "prompt": request.prompt,
            "model": self.spec(request.model).provider_model,
            "fluxParams": params,
        }
        if request.webhook_url:
            # The schema key is webhookUrl; the FAQ's "webhook_url" would be rejected as unknown [S003 vs A7].
            body["webhookUrl"] = request.webhook_url
            body["webhookEvents"] = ["completed", "failed"]
        headers = self.headers()
        if request.idempotency_key:
            headers["Idempotency-Key"] = request.idempotency_key[:255]
        return HttpCall("POST", "/v2/images/generate", headers, body)

    def parse_submit(self, reply: Reply) -> Outcome:
        data = self.check(reply)
        job_id = job_id_text(data.get("jobId")) if isinstance(data, dict) else None
        if not job_id:
            raise ProviderError(ProviderError.MALFORMED, "Apiframe accepted the job but sent no jobId.")
        status = data.get("status")
        return Outcome(state="pending", job_id=job_id, raw_status=status if isinstance(status, str) else None)

    def build_poll(self, job_id: str, poll_url: str | None = None) -> HttpCall:
        return HttpCall("GET", f"/v2/jobs/{quote(job_id, safe='')}", self.headers())

    def parse_poll(self, reply: Reply) -> Outcome:
        data = self.check(reply)
        if not isinstance(data, dict):
            raise ProviderError(ProviderError.MALFORMED, "Apiframe sent a job without a status.")
        return self.parse_job(data)

    def parse_job(self, data: dict) -> Outcome:
        """A job object or a webhook event: the same fields [A7][A3]."""
        if not isinstance(data, dict):
            raise ProviderError(ProviderError.MALFORMED, "Apiframe sent a job without a status.")
        status = status_word(self.label, data).upper()
        meaning = self.meaning(status)
        cost = credit_cost(data.get("creditCost"))
        job_id = job_id_text(data.get("id")) or job_id_text(data.get("jobId"))
        if meaning == SUCCEEDED:
            if data.get("expired") is True:
                return failed(
                    ProviderError.EXPIRED,
                    "Apiframe has already purged this job's images (24 h retention).",
                    status,
                )
            urls = usable_urls(result_items(data.get("result")))
            if not urls:
                return finished_without_images(
                    self.label, result_items(data.get("result")), job_id=job_id, cost=cost, raw_status=status
                )
            return Outcome(
                state="succeeded", job_id=job_id, image_urls=urls, cost=cost, raw_status=status, progress=1.0
            )
        if meaning in (ProviderError.FAILED, CANCELED):
            # `error` is a string in the schema [A7]; an object carrying a message is read for its words.
            message = extract_message(data.get("error")).strip() or (
                "The job was cancelled at Apiframe." if meaning == CANCELED else "Apiframe failed the job."
            )
            error = ProviderError(moderation_or_failure(self.label, message), message)
            return Outcome(state="failed", job_id=job_id, error=error, cost=cost, raw_status=status)
        return Outcome(
            state="pending",
            job_id=job_id,
            progress=fraction(data.get("progress"), 100),
            raw_status=status,
        )

    def build_check(self) -> HttpCall:
        return HttpCall("GET", "/v2/me", self.headers())

    def error_message(self, reply: Reply) -> str:
        """A 400 names what is wrong in `details`, keyed by JSON path [A7][A8 errors.ts]; `error` alone is
        only "Validation failed", which tells nobody what to change."""
        message = super().error_message(reply)
        try:
            details = json.loads(reply.body).get("details")
        except (ValueError, AttributeError):
            return message
        if not isinstance(details, dict) or not details:
            return message
        parts = [
            f"{path}: {'; '.join(str(p) for p in problems) if isinstance(problems, list) else problems}"
            for path, problems in list(details.items())[:3]
        ]
        return f"{message} ({', '.join(parts)})"

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> bool:
        """HMAC-SHA256 over the raw body keyed with the raw SHA-256 digest of the API key; the header is
        `sha256=<hex>` or bare hex [A8 webhooks.ts]. Compared in constant time."""
        signature = next((v for k, v in headers.items() if k.lower() == "x-webhook-signature"), "")
        signature = signature.strip()
        if signature.startswith("sha256="):
            signature = signature[len("sha256=") :]
        if not signature or not self.api_key:
            return False
        key = hashlib.sha256(self.api_key.encode()).digest()
        expected = hmac.new(key, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected.encode(), signature.lower().encode())


def result_items(result) -> list:
    """`result` is a bare URL in older docs and the SDK tests, `{"images": [...]}` in the current docs
    [A1/A8 vs A2 CONFLICT], and image items are strings or `{"url": ...}` objects [AF-OAS]: accept all."""
    if isinstance(result, dict):
        result = result.get("images") if "images" in result else result.get("url")
    if isinstance(result, list):
        return result
    return [] if result is None else [result]


def result_urls(result) -> tuple[str, ...]:
    return usable_urls(result_items(result))
