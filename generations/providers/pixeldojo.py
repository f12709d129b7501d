"""PixelDojo, model flux-2-max: async jobs on the v1 API platform, polled through statusUrl.

Docs: providers.md section 4 ([S004] the model page, [P3] llm.txt, [P7]/[P8] legacy v1 docs, [P9]/[P10] helpers).
"""

from __future__ import annotations

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
    finished_without_images,
    job_id_text,
    moderation_or_failure,
    same_site,
    status_word,
    usable_url,
    usable_urls,
    with_error_code,
)

# The page shows the default as "1 MP", with a space [S004]; it lists no other values, so we assume
# flux-2-flex's 0.5/1/2/4 MP tiers [P3][INFERRED] in the same spelling.
RESOLUTIONS = {0.5: "0.5 MP", 1.0: "1 MP", 2.0: "2 MP", 4.0: "4 MP"}
FORMATS = {"jpeg": "jpg", "png": "png", "webp": "webp"}  # legacy v1 spelling [P8]


class PixelDojo(Adapter):
    kind = "pixeldojo"
    label = "PixelDojo"
    default_base_url = "https://pixeldojo.ai"
    result_hosts = frozenset({"temp.pixeldojo.ai"})  # [S004][P7]
    cost_unit = "PixelDojo credits"  # creditCost [S004]
    default_prices = {"flux-2-max": FLUX_2_MAX_LIST_PRICE}  # 2 PixelDojo credits an image [P1]; $ [UNKNOWN]
    min_poll_interval = 0.25
    # 60 requests a minute with X-RateLimit headers [P7][P8] (one skill doc says 10 [P9] [CONFLICT]).
    default_max_rpm = 60
    typical_seconds = 44.0  # example generations took 43.6 s and 44.2 s (providers.md)
    key_prefix = "pd_"  # [P2][P5]
    # pending/completed [S004], failed [P10]; the others are what PixelDojo's newer material and its SDK use
    # for the same ends [PD-DOC][INFERRED].
    statuses = {
        "pending": PENDING,
        "processing": PENDING,  # [INFERRED]
        "queued": PENDING,  # [INFERRED]
        "completed": SUCCEEDED,
        "succeeded": SUCCEEDED,
        "success": SUCCEEDED,
        "failed": ProviderError.FAILED,
        "error": ProviderError.FAILED,
        "cancelled": CANCELED,
        "canceled": CANCELED,
        "expired": ProviderError.EXPIRED,
    }
    models = {
        "flux-2-max": ModelSpec(
            id="flux-2-max",
            provider_model="flux-2-max",
            max_n=4,  # num_outputs has no documented maximum [S004]; legacy v1 allowed 4 [P7]
            aspect_ratios=("1:1", "16:9", "9:16", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3"),  # [S004]
            megapixels=tuple(RESOLUTIONS),
            output_formats=("jpeg", "png", "webp"),
            # 1-5 with the default 5: Replicate's flux-2-max schema, which PixelDojo's parameters mirror
            # [RP][PD-DOC]. Unset, the field is omitted and PixelDojo's 5 applies.
            safety_tolerance=(1, 5),
            prompt_upsampling=True,
            max_prompt_chars=5000,  # no limit documented [UNKNOWN]; bounds what we store and send
            # The image-input field name is not documented [S004][UNKNOWN], so no reference images.
        )
    }

    def build_submit(self, request: GenerationRequest) -> HttpCall:
        # The model schema rejects unknown keys [P4], so only the page's parameters; webhook_url is accepted
        # [P5] but its payload and signing are not documented, so we poll.
        body: dict = {
            "prompt": request.prompt,
            "aspect_ratio": request.aspect_ratio or "1:1",
            "resolution": RESOLUTIONS[request.megapixels or 1.0],
            "num_outputs": request.n,
            "output_format": FORMATS[request.output_format],
            "prompt_upsampling": request.prompt_upsampling,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.safety_tolerance is not None:
            body["safety_tolerance"] = request.safety_tolerance
        model = quote(self.spec(request.model).provider_model, safe="")
        return HttpCall("POST", f"/api/v1/models/{model}/run", self.headers(), body)

    def parse_submit(self, reply: Reply) -> Outcome:
        data = self.check(reply)
        if not isinstance(data, dict) or not job_id_text(data.get("jobId")):
            raise ProviderError(ProviderError.MALFORMED, "PixelDojo accepted the job but sent no jobId.")
        return self.parse_job(data)

    def build_poll(self, job_id: str, poll_url: str | None = None) -> HttpCall:
        # statusUrl comes from the provider's reply and the call carries our key: follow it only to where the
        # account already points, never elsewhere (SSRF, key leak) [S004].
        if poll_url and same_site(poll_url, self.base_url):
            return HttpCall("GET", poll_url, self.headers())
        return HttpCall("GET", f"/api/v1/jobs/{quote(job_id, safe='')}", self.headers())

    def parse_poll(self, reply: Reply) -> Outcome:
        data = self.check(reply)
        if not isinstance(data, dict):
            raise ProviderError(ProviderError.MALFORMED, "PixelDojo sent a job without a status.")
        return self.parse_job(data)

    def parse_job(self, data: dict) -> Outcome:
        raw = status_word(self.label, data)
        meaning = self.meaning(raw)
        job_id = job_id_text(data.get("jobId")) or job_id_text(data.get("id"))
        cost = credit_cost(data.get("creditCost"))  # PixelDojo credits [S004]
        if meaning == SUCCEEDED:
            candidates = output_items(data)
            urls = usable_urls(candidates)
            if not urls:
                return finished_without_images(
                    self.label, candidates, job_id=job_id, cost=cost, raw_status=raw
                )
            return Outcome(
                state="succeeded", job_id=job_id, image_urls=urls, progress=1.0, cost=cost, raw_status=raw
            )
        if meaning in (ProviderError.FAILED, CANCELED, ProviderError.EXPIRED):
            message = extract_message(data.get("error")).strip()
            if meaning == ProviderError.EXPIRED:
                message = message or "PixelDojo let this job expire before its images were fetched."
                error = ProviderError(ProviderError.EXPIRED, message)
            else:
                message = message or (
                    "The job was cancelled at PixelDojo."
                    if meaning == CANCELED
                    else "PixelDojo failed the job."
                )
                error = ProviderError(moderation_or_failure(self.label, message), message)
            return Outcome(state="failed", job_id=job_id, error=error, cost=cost, raw_status=raw)
        poll_url = data.get("statusUrl") if usable_url(data.get("statusUrl")) else None
        return Outcome(state="pending", job_id=job_id, poll_url=poll_url, cost=cost, raw_status=raw)

    def build_check(self) -> HttpCall:
        # The documented listing is public [P2], so it proves PixelDojo answers rather than that the key works;
        # the key is sent anyway, which is harmless.
        return HttpCall("GET", "/api/v1/models", self.headers())

    def error_message(self, reply: Reply) -> str:
        # Legacy v1 says 403 {"error": {"code": "insufficient_credits", ...}}; the async API may use 402 [P7]
        # [UNKNOWN]. With the code in the message base.error_for maps both to PROVIDER_CREDIT.
        return with_error_code(super().error_message(reply), reply)


def output_urls(data: dict) -> tuple[str, ...]:
    return usable_urls(output_items(data))


def output_items(data: dict) -> list:
    """`output.images[]` [S004], `output.image` [P9], `output.images[0]` objects and `assets[].url` [P5][P10]."""
    output = data.get("output")
    found: list[object] = []
    if isinstance(output, dict):
        images = output.get("images")
        found += images if isinstance(images, list) else [images]
        found.append(output.get("image"))
    elif isinstance(output, list):
        found += output
    else:
        found.append(output)
    assets = data.get("assets")
    found += assets if isinstance(assets, list) else []
    return [item for item in found if item is not None]
