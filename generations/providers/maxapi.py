"""MaxAPI "Flux API / Create Image": an OpenAI-style path that answers synchronously with a fal-style body.

Docs: providers.md section 1 ([S000] the Create Image page, [M2]/[M3] MaxAPI's general guides).
"""

from __future__ import annotations

from .base import (
    Adapter,
    GenerationRequest,
    HttpCall,
    ModelSpec,
    Outcome,
    ProviderError,
    Reply,
    failed,
    finished_without_images,
    is_int,
    usable_urls,
    with_error_code,
)

# "<=1024x1024: $0.003/image ... above 1024x1024: price x 2" [S000]. Whether "above" means the area or either
# side is not said [UNKNOWN]: a side past 1024 pays double, so we never bill less than MaxAPI may.
FULL_PRICE_SIDE = 1024


def flux_spec(model: str) -> ModelSpec:
    return ModelSpec(
        id=model,
        provider_model=model,
        # "Must be between 1 and 10" vs "official release will support 1-4" [S000 CONFLICT]: the narrower.
        max_n=4,
        # "Must be one of 256x256, 512x512 or 1024x1024" vs "Size: Customizable" [S000 CONFLICT]: we send any WxH.
        # The tiers are the documented 512x512 and 1024x1024 at 1:1, plus 2 MP for the "above 1024*1024:
        # price * 2" band the pricing text implies exists; 256x256 stays reachable as a custom size.
        megapixels=(0.25, 1.0, 2.0),
        custom_size=(256, 2048),  # 256 is the smallest documented size; 2048 a side is our bound [INFERRED]
        seed=False,  # the request has no seed field; the reply reports the seed used [S000]
        max_prompt_chars=1000,  # "Maximum length is 1000 characters" [S000]
    )


class MaxApi(Adapter):
    kind = "maxapi"
    label = "MaxAPI"
    default_base_url = "https://api.maxapi.ai"
    synchronous = True  # the 200 reply carries the images; async callbacks are only "Update Preview" [S000]
    models = {model: flux_spec(model) for model in ("flux-plus", "flux-pro-2")}
    # The only host a result URL was ever seen on (a 2024 example [S000]); not reliably known [MX-DOC2], so
    # an admin adds the host a refused download names.
    result_hosts = frozenset({"flux-images.maxapi.ai"})
    # "$0.003/image (flux-plus), $0.006 (flux-pro-2), above 1024x1024: price x 2" [S000]; the 4 MP tier is
    # above 1024x1024 too. The reply reports no cost.
    default_prices = {
        "flux-plus": {"1MP": 3, "2MP": 6, "4MP": 6},
        "flux-pro-2": {"1MP": 6, "2MP": 12, "4MP": 12},
    }
    # No polls (synchronous). MaxAPI documents no request limit, only "back off on 429" [M2-errors]: 60 a
    # minute is a conservative default for a gateway that answers 429 for rate and for credit alike.
    default_max_rpm = 60
    key_prefix = "sk-"  # `Authorization: Bearer sk-xxxxxxxx` [S000][M3]

    def billed_megapixels(self, request: GenerationRequest) -> float:
        megapixels = super().billed_megapixels(request)
        if max(request.dimensions) > FULL_PRICE_SIDE:
            megapixels = max(megapixels, 2.0)  # the doubled price is the 2 MP tier's
        return megapixels

    def build_submit(self, request: GenerationRequest) -> HttpCall:
        width, height = request.dimensions
        body = {
            "model": self.spec(request.model).provider_model,
            "prompt": request.prompt,
            # The field table says string, the example sends 1 [S000 CONFLICT]: we send what the example sends.
            "n": request.n,
            "size": f"{width}x{height}",
        }
        return HttpCall("POST", "/v1/images/generations", self.headers(), body)

    def parse_submit(self, reply: Reply) -> Outcome:
        data = self.check(reply)
        if not isinstance(data, dict):
            raise ProviderError(
                ProviderError.MALFORMED, "MaxAPI answered with something other than an object."
            )
        # The fal-style body of the example [S000]; the OpenAI `data` list the path's name promises is accepted
        # in case MaxAPI ever switches [INFERRED].
        images = data.get("images") if data.get("images") is not None else data.get("data")
        images = images if isinstance(images, list) else []
        urls = [(usable_urls([image]) or (None,))[0] for image in images]
        if not any(urls):
            if not images:
                raise ProviderError(ProviderError.MALFORMED, "MaxAPI answered 200 but listed no image.")
            return finished_without_images(self.label, images, raw_status="200")
        # One flag per image, yet the example has two flags for one image [S000]: pair by index, ignore extras,
        # and treat a missing flag as clean. A flagged image is a black placeholder on fal-style backends.
        flags = data.get("has_nsfw_concepts") if isinstance(data.get("has_nsfw_concepts"), list) else []
        kept = tuple(
            dict.fromkeys(
                url for i, url in enumerate(urls) if url and not (i < len(flags) and flags[i] is True)
            )
        )
        if not kept:
            return failed(
                ProviderError.MODERATION,
                "MaxAPI's safety checker flagged every image; rephrase the prompt.",
                "200",
            )
        seed = data.get("seed")
        if isinstance(seed, str) and seed.isascii() and seed.isdecimal():
            seed = int(seed)
        return Outcome(
            state="succeeded",
            image_urls=kept,
            seed=seed if is_int(seed) else None,  # out of a BIGINT's range, `checked` drops it
            progress=1.0,
            raw_status="200",
        )

    def build_poll(self, job_id: str, poll_url: str | None = None) -> HttpCall:
        raise ProviderError(ProviderError.INVALID, "MaxAPI answers synchronously; there is no job to poll.")

    def parse_poll(self, reply: Reply) -> Outcome:
        raise ProviderError(ProviderError.INVALID, "MaxAPI answers synchronously; there is no job to poll.")

    def build_check(self) -> HttpCall:
        # MaxAPI documents no cheap image call; /v1/models is the OpenAI-compatible listing its gateway should
        # serve to any valid key [INFERRED].
        return HttpCall("GET", "/v1/models", self.headers())

    def error_message(self, reply: Reply) -> str:
        # 429 means rate limit OR insufficient credit [M2-errors]; OpenAI-style gateways tell them apart in
        # `error.code` ("insufficient_quota", "insufficient_user_quota") more reliably than in the message [X2].
        return with_error_code(super().error_message(reply), reply)
