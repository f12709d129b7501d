"""Black Forest Labs' own API (api.bfl.ai): where every Flux model is born. Async: submit, then poll the
`polling_url` the submit names until `Ready`, and download the signed `result.sample` within 10 minutes.

Docs: providers.md section 5 ([B1] BFL's skills repository, [B2]/[B3] docs.bfl.ai, [B7] the generated
OpenAPI excerpts, [X6] other BFL clients).
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit

from .base import (
    FLUX_2_MAX_LIST_PRICE,
    MEGAPIXEL,
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
    fraction,
    is_int,
    job_id_text,
    same_site,
    status_word,
    usable_url,
    usable_urls,
)

REFERENCE_SLOTS = ("input_image", *(f"input_image_{i}" for i in range(2, 9)))  # [B2]
# The id "test connection" asks about: no job has it, so a key that works gets "Task not found".
CHECK_TASK_ID = "fluxweb-check"


def flux_2(model: str, endpoint: str) -> ModelSpec:
    return ModelSpec(
        id=model,
        provider_model=endpoint,
        megapixels=(0.5, 1.0, 2.0, 4.0),
        # min 64 a side, multiples of 16, at most 4 MP [B1]; 2048 a side keeps a square within 4 MP.
        custom_size=(64, 2048),
        size_multiple=16,
        max_pixels=4 * MEGAPIXEL,
        max_reference_images=8,  # input_image .. input_image_8 for pro/max/flex [B1]
        output_formats=("jpeg", "png"),  # [B2]
        safety_tolerance=(0, 5),  # default 2 [B2]
        max_prompt_chars=5000,  # "up to 32K tokens" [B1]; bounds what we store and send
    )


class Bfl(Adapter):
    kind = "bfl"
    label = "BFL"
    # The global endpoint fails over between regions [B3][B4]; api.eu.bfl.ai and api.us.bfl.ai pin one.
    default_base_url = "https://api.bfl.ai"
    # POST /v1/flux-2-max and friends [B1 endpoints.md]: FLUX.2 [pro] is FluxWeb's flux-pro-2.
    models = {
        "flux-2-max": flux_2("flux-2-max", "flux-2-max"),
        "flux-pro-2": flux_2("flux-pro-2", "flux-2-pro"),
    }
    # result.sample is a signed URL on BFL's delivery hosts: the docs' example [B1 endpoints.md] and the
    # regional ones its clients meet [X6]. Others appear; an admin allows them per account.
    result_hosts = frozenset(
        {
            "delivery-eu1.bfl.ai",
            "delivery-us1.bfl.ai",
            "bfldeliveryprod.blob.core.windows.net",
            "bfldeliveryprodeu4.blob.core.windows.net",
        }
    )
    cost_unit = "BFL credits"  # the submit's `cost`, in credits of $0.01 [B1][B2]
    cost_unit_usd = "0.01"
    # List prices [B1]: FLUX.2 [max] 7 c + 3 c per further MP; FLUX.2 [pro] 3 c + 1.5 c; inputs at the MP price.
    default_prices = {
        "flux-2-max": FLUX_2_MAX_LIST_PRICE,
        "flux-pro-2": {"1MP": 30, "2MP": 45, "4MP": 75, "input_mp": 15},
    }
    min_poll_interval = 0.5  # BFL's own examples poll every 0.5 s [B3]
    # BFL limits active tasks (24 at once, 429 past it [B1 rate-limiting.md]), not requests a minute: 24 jobs
    # polled every 2 s, as its rate-limiting example does, is 720 a minute.
    default_max_rpm = 720
    typical_seconds = 10.0  # 10-40 s (providers.md, emulator notes)
    key_prefix = "bfl_"  # [B1]
    # The status enum [B7], where all but Pending are terminal, and the words clients meet beside it [X6].
    statuses = {
        "pending": PENDING,
        "generating": PENDING,  # [X6]
        "reasoning": PENDING,  # [X6]
        "queued": PENDING,  # [X6]
        "ready": SUCCEEDED,
        "request moderated": ProviderError.MODERATION,
        "content moderated": ProviderError.MODERATION,
        "error": ProviderError.FAILED,
        "failed": ProviderError.FAILED,  # [X6], not in the enum: an Error
        # Terminal in the enum, but clients retry it briefly right after a submit [X6]: an unreadable
        # answer a few times in a row before the job fails, never a lost paid job on the first.
        "task not found": ProviderError.MALFORMED,
    }
    # No webhooks: a submit that names one answers without polling_url [B2][B7], and the job lives on the
    # regional cluster polling_url names [B5][B6]; polling is what confirms a job anyway, so FluxWeb polls.

    def headers(self) -> dict[str, str]:
        return {"x-key": self.api_key, "Accept": "application/json"}

    def build_submit(self, request: GenerationRequest) -> HttpCall:
        width, height = request.dimensions
        body: dict = {
            "prompt": request.prompt,
            "width": width,
            "height": height,
            "output_format": request.output_format,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.safety_tolerance is not None:
            body["safety_tolerance"] = request.safety_tolerance
        body.update(zip(REFERENCE_SLOTS, request.reference_urls, strict=False))
        endpoint = quote(self.spec(request.model).provider_model, safe="")
        return HttpCall("POST", f"/v1/{endpoint}", self.headers(), body)

    def parse_submit(self, reply: Reply) -> Outcome:
        data = self.check(reply)
        job_id = job_id_text(data.get("id")) if isinstance(data, dict) else None
        if not job_id:
            raise ProviderError(ProviderError.MALFORMED, "BFL accepted the job but sent no id.")
        poll_url = data.get("polling_url")
        return Outcome(
            state="pending",
            job_id=job_id,
            poll_url=poll_url if usable_url(poll_url) else None,
            cost=credit_cost(data.get("cost")),
        )

    def build_poll(self, job_id: str, poll_url: str | None = None) -> HttpCall:
        # Always poll the returned polling_url: the job lives on the regional cluster it names [B3][B5][B6].
        # The call carries our key, so only to BFL's own hosts or where the account already points.
        if poll_url and (same_site(poll_url, self.base_url) or bfl_host(poll_url)):
            return HttpCall("GET", poll_url, self.headers())
        return HttpCall("GET", f"/v1/get_result?id={quote(job_id, safe='')}", self.headers())

    def parse_poll(self, reply: Reply) -> Outcome:
        data = self.check(reply)
        if not isinstance(data, dict):
            raise ProviderError(ProviderError.MALFORMED, "BFL sent a job without a status.")
        return self.parse_job(data)

    def parse_job(self, data: dict) -> Outcome:
        raw = status_word(self.label, data)
        meaning = self.meaning(raw)
        job_id = job_id_text(data.get("id"))
        result = data.get("result")
        if meaning == SUCCEEDED:
            sample = result.get("sample") if isinstance(result, dict) else None
            urls = usable_urls([sample])
            if not urls:
                return finished_without_images(self.label, [sample], job_id=job_id, raw_status=raw)
            seed = result.get("seed")
            return Outcome(
                state="succeeded",
                job_id=job_id,
                image_urls=urls,
                seed=seed if is_int(seed) else None,
                progress=1.0,
                raw_status=raw,
            )
        if meaning == ProviderError.MODERATION:
            what = "the prompt" if raw.lower().startswith("request") else "the image it made"
            error = ProviderError(ProviderError.MODERATION, f"BFL's moderation refused {what}.")
            return Outcome(state="failed", job_id=job_id, error=error, raw_status=raw)
        if meaning == ProviderError.FAILED:
            message = (
                extract_message(data.get("error")).strip()
                or extract_message(data.get("details")).strip()
                or "BFL failed the job."
            )
            return Outcome(
                state="failed",
                job_id=job_id,
                error=ProviderError(ProviderError.FAILED, message),
                raw_status=raw,
            )
        if meaning == ProviderError.MALFORMED:
            raise ProviderError(ProviderError.MALFORMED, "BFL did not know this job (Task not found).")
        return Outcome(
            state="pending", job_id=job_id, progress=fraction(data.get("progress")), raw_status=raw
        )

    def build_check(self) -> HttpCall:
        # BFL documents no account call [B1]; asking for a job nobody has passes authentication first.
        return HttpCall("GET", f"/v1/get_result?id={CHECK_TASK_ID}", self.headers())

    def parse_check(self, reply: Reply) -> None:
        if reply.status == 404:
            return  # the key got past authentication; the job is unknown, as intended
        self.check(reply)

    def error_message(self, reply: Reply) -> str:
        """FastAPI's 422 `{"detail": [{"loc", "msg"}]}` [B7] names what is wrong; the rate limit's
        `{"error": "rate_limit_exceeded", "message": ...}` [B1] has words beside a code."""
        try:
            data = json.loads(reply.body)
        except ValueError:
            return super().error_message(reply)
        detail = data.get("detail") if isinstance(data, dict) else None
        if isinstance(detail, list):
            parts = [
                f"{'.'.join(str(p) for p in item.get('loc', [])[-1:])}: {item.get('msg')}"
                for item in detail[:3]
                if isinstance(item, dict)
                and isinstance(item.get("msg"), str)
                and isinstance(item.get("loc", []), list)
            ]
            if parts:
                return "; ".join(parts)
        if (
            isinstance(data, dict)
            and isinstance(data.get("message"), str)
            and isinstance(data.get("error"), str)
        ):
            return f"{data['message']} ({data['error']})"
        return super().error_message(reply)


def bfl_host(url: str) -> bool:
    """True for https on port 443 of bfl.ai or one of its subdomains (api.eu2.bfl.ai), with no credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    return (
        parts.scheme == "https"
        and port in (None, 443)
        and not (parts.username or parts.password)
        and (host == "bfl.ai" or host.endswith(".bfl.ai"))
    )
