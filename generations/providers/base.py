"""The adapter protocol: a provider-neutral request and result, and one error taxonomy.

Adapters know nothing about Django models. Building a request and parsing a response are pure functions of
plain data, so each adapter is testable from the documented example JSON without any HTTP; `http.py` is the
one place that sends what an adapter builds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

MEGAPIXEL = 1024 * 1024


class ProviderError(Exception):
    """Everything that can go wrong with a provider, in one taxonomy.

    `permanent` errors fail the job at once with `message` shown to the user; transient ones are retried with
    backoff until the job's deadline (honouring `retry_after` seconds when the provider sent one).
    """

    AUTH = "auth"
    INVALID = "invalid_request"
    MODERATION = "moderation"
    PROVIDER_CREDIT = "provider_credit"
    RATE_LIMITED = "rate_limited"
    SERVER = "server_error"
    TIMEOUT = "timeout"
    MALFORMED = "malformed_response"
    EXPIRED = "expired_result"
    FAILED = "provider_failed"
    NOT_FOUND = "not_found"

    TRANSIENT: ClassVar[frozenset[str]] = frozenset({RATE_LIMITED, SERVER, TIMEOUT, MALFORMED})

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        unsent: bool = False,
    ):
        super().__init__(message)
        self.unsent = unsent  # the request never reached the provider, so resending it cannot double a job
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.status = status

    @property
    def permanent(self) -> bool:
        return self.code not in self.TRANSIENT

    def __repr__(self) -> str:
        return f"ProviderError({self.code!r}, {self.message!r})"


class Unsupported(ValueError):
    """A request this provider cannot serve; the message says what to change. Raised before any money moves."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class GenerationRequest:
    """What the user asked for, in FluxWeb's terms. Size is an aspect ratio, explicit width/height, or both
    with megapixels; adapters translate it to the provider's own fields."""

    prompt: str
    model: str
    n: int = 1
    aspect_ratio: str | None = None
    width: int | None = None
    height: int | None = None
    megapixels: float | None = None
    seed: int | None = None
    output_format: str = "jpeg"
    safety_tolerance: int | None = None
    prompt_upsampling: bool = False
    reference_urls: tuple[str, ...] = ()
    reference_megapixels: tuple[float, ...] = ()  # priced per input megapixel; never sent
    # Filled by the engine at submit time, never by the user.
    webhook_url: str | None = None
    idempotency_key: str | None = None

    @property
    def dimensions(self) -> tuple[int, int]:
        return resolve_dimensions(self.aspect_ratio, self.width, self.height, self.megapixels)

    @property
    def output_megapixels(self) -> float:
        width, height = self.dimensions
        return width * height / MEGAPIXEL


def parse_ratio(ratio: str) -> tuple[int, int]:
    try:
        w, h = (int(part) for part in ratio.split(":"))
    except ValueError:
        raise Unsupported(f"Aspect ratio {ratio!r} must look like 16:9.", "aspect_ratio") from None
    if w <= 0 or h <= 0 or max(w, h) / min(w, h) > 4:
        raise Unsupported(f"Aspect ratio {ratio} is out of range (at most 4:1).", "aspect_ratio")
    return w, h


def resolve_dimensions(
    aspect_ratio: str | None,
    width: int | None,
    height: int | None,
    megapixels: float | None,
    *,
    multiple: int = 16,
) -> tuple[int, int]:
    """Width and height in pixels: explicit ones win, otherwise the ratio at `megapixels` (default 1 MP),
    in multiples of `multiple` because BFL-family backends require multiples of 16 [B1]."""
    if width and height:
        return int(width), int(height)
    w, h = parse_ratio(aspect_ratio or "1:1")
    area = (megapixels or 1.0) * MEGAPIXEL
    unit = math.sqrt(area / (w * h))
    # Rounded down, so the area never passes the tier: providers that bill the pixels sent (MaxAPI doubles
    # above 1024x1024) charge the tier the user picked.
    return (
        max(multiple, math.floor(w * unit / multiple + 1e-9) * multiple),
        max(multiple, math.floor(h * unit / multiple + 1e-9) * multiple),
    )


@dataclass(frozen=True)
class ModelSpec:
    """What one provider can do with one FluxWeb model: the capability declaration the form, the models API
    and validation are built from."""

    id: str  # FluxWeb's model id: flux-plus, flux-pro-2, flux-2-max
    provider_model: str  # the provider's own name for it
    max_n: int = 1
    aspect_ratios: tuple[str, ...] = ()  # empty: any W:H ratio
    megapixels: tuple[float, ...] = (1.0,)  # the size tiers offered
    sizes: tuple[str, ...] = ()  # fixed WxH strings, when the provider takes only those
    custom_size: tuple[int, int] | None = None  # (min side, max side) for explicit width/height
    max_reference_images: int = 0
    output_formats: tuple[str, ...] = ("jpeg",)
    safety_tolerance: tuple[int, int] | None = None  # (min, max)
    prompt_upsampling: bool = False
    seed: bool = True
    max_prompt_chars: int = 2000

    def options(self) -> dict[str, Any]:
        return {
            "n": {"min": 1, "max": self.max_n},
            "aspect_ratios": list(self.aspect_ratios),
            "megapixels": list(self.megapixels),
            "sizes": list(self.sizes),
            "custom_size": list(self.custom_size) if self.custom_size else None,
            "reference_images": self.max_reference_images,
            "output_formats": list(self.output_formats),
            "safety_tolerance": list(self.safety_tolerance) if self.safety_tolerance else None,
            "prompt_upsampling": self.prompt_upsampling,
            "seed": self.seed,
            "max_prompt_chars": self.max_prompt_chars,
        }


@dataclass(frozen=True)
class HttpCall:
    """One HTTP request an adapter wants sent: a path relative to the account's base URL, or an absolute URL
    the provider handed us (PixelDojo's statusUrl)."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise ProviderError(
                ProviderError.MALFORMED, f"The provider sent a body that is not JSON (HTTP {self.status})."
            ) from None

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


State = Literal["pending", "succeeded", "failed"]


@dataclass(frozen=True)
class Outcome:
    """What a submit or a poll told us. A synchronous provider's submit is already `succeeded`."""

    state: State
    job_id: str | None = None
    image_urls: tuple[str, ...] = ()
    progress: float | None = None  # 0..1
    error: ProviderError | None = None
    cost: str | None = None  # provider-reported cost, as reported: USD string or provider credits
    seed: int | None = None
    poll_url: str | None = None  # where to poll, when the provider names it
    raw_status: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state != "pending"


class Adapter:
    """One provider's HTTP protocol. Subclasses set the class attributes and implement the four pure
    build/parse methods; `error_for` maps HTTP statuses once for all providers."""

    kind: ClassVar[str]
    label: ClassVar[str]
    default_base_url: ClassVar[str]
    synchronous: ClassVar[bool] = False
    webhooks: ClassVar[bool] = False
    # Whether re-sending a submit cannot create a second paid job (an Idempotency-Key the provider honours).
    idempotent_submit: ClassVar[bool] = False
    models: ClassVar[dict[str, ModelSpec]]
    # HTTP statuses that mean "your provider account is out of credit", per provider documentation.
    credit_statuses: ClassVar[tuple[int, ...]] = (402,)

    def __init__(self, base_url: str, api_key: str):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key

    # -- validation -------------------------------------------------------------------------------------
    def spec(self, model: str) -> ModelSpec:
        try:
            return self.models[model]
        except KeyError:
            served = ", ".join(sorted(self.models))
            raise Unsupported(f"{self.label} does not serve {model}; it serves {served}.", "model") from None

    def validate(self, request: GenerationRequest) -> None:
        """Refuse what this provider cannot do, with a message that says what to change."""
        spec = self.spec(request.model)
        if not request.prompt.strip():
            raise Unsupported("Write a prompt first.", "prompt")
        if len(request.prompt) > spec.max_prompt_chars:
            raise Unsupported(
                f"{self.label} takes prompts of at most {spec.max_prompt_chars} characters; "
                f"this one has {len(request.prompt)}.",
                "prompt",
            )
        if not 1 <= request.n <= spec.max_n:
            raise Unsupported(f"{self.label} makes 1 to {spec.max_n} images per request for {spec.id}.", "n")
        if request.output_format not in spec.output_formats:
            formats = ", ".join(spec.output_formats)
            raise Unsupported(
                f"{self.label} writes {formats} for {spec.id}, not {request.output_format}.", "output_format"
            )
        if request.width or request.height:
            if not (request.width and request.height):
                raise Unsupported("Give both width and height, or neither.", "width")
            if spec.custom_size is None:
                raise Unsupported(
                    f"{self.label} does not take a custom width and height; pick an aspect ratio.", "width"
                )
            low, high = spec.custom_size
            if not (low <= request.width <= high and low <= request.height <= high):
                raise Unsupported(f"Width and height must each be between {low} and {high} pixels.", "width")
        else:
            if request.aspect_ratio:
                parse_ratio(request.aspect_ratio)
                if spec.aspect_ratios and request.aspect_ratio not in spec.aspect_ratios:
                    ratios = ", ".join(spec.aspect_ratios)
                    raise Unsupported(f"{self.label} offers the aspect ratios {ratios}.", "aspect_ratio")
            if spec.custom_size:
                # The provider takes pixels: the size a ratio and tier work out to must be one it accepts.
                low, high = spec.custom_size
                width, height = request.dimensions
                if not (low <= width <= high and low <= height <= high):
                    raise Unsupported(
                        f"{request.aspect_ratio or '1:1'} at {request.megapixels or 1:g} MP is {width}x{height}, but "
                        f"{self.label} takes {low} to {high} pixels a side; pick a smaller resolution or a squarer ratio.",
                        "megapixels",
                    )
        if request.megapixels is not None and request.megapixels not in spec.megapixels:
            tiers = ", ".join(f"{mp:g} MP" for mp in spec.megapixels)
            raise Unsupported(f"{self.label} offers {tiers} for {spec.id}.", "megapixels")
        if spec.sizes and f"{request.dimensions[0]}x{request.dimensions[1]}" not in spec.sizes:
            raise Unsupported(
                f"{self.label} makes {spec.id} at {', '.join(spec.sizes)} only.", "aspect_ratio"
            )
        if request.safety_tolerance is not None:
            if spec.safety_tolerance is None:
                raise Unsupported(
                    f"{self.label} has no safety tolerance setting for {spec.id}.", "safety_tolerance"
                )
            low, high = spec.safety_tolerance
            if not low <= request.safety_tolerance <= high:
                raise Unsupported(f"Safety tolerance must be between {low} and {high}.", "safety_tolerance")
        if request.prompt_upsampling and not spec.prompt_upsampling:
            raise Unsupported(f"{self.label} has no prompt upsampling for {spec.id}.", "prompt_upsampling")
        if request.seed is not None and not spec.seed:
            raise Unsupported(f"{self.label} does not take a seed for {spec.id}.", "seed")
        if len(request.reference_urls) > spec.max_reference_images:
            if spec.max_reference_images == 0:
                raise Unsupported(
                    f"{self.label} takes no reference images for {spec.id}.", "reference_images"
                )
            raise Unsupported(
                f"{self.label} takes at most {spec.max_reference_images} reference images for {spec.id}.",
                "reference_images",
            )

    # -- the protocol, pure -----------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        """Bearer auth, as MaxAPI, Vtrix and PixelDojo document it; Apiframe overrides."""
        return {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}

    def build_submit(self, request: GenerationRequest) -> HttpCall:
        raise NotImplementedError

    def parse_submit(self, reply: Reply) -> Outcome:
        raise NotImplementedError

    def build_poll(self, job_id: str, poll_url: str | None = None) -> HttpCall:
        raise NotImplementedError

    def parse_poll(self, reply: Reply) -> Outcome:
        raise NotImplementedError

    def build_check(self) -> HttpCall:
        """One cheap authenticated call for the admin's "test connection"."""
        raise NotImplementedError

    def parse_check(self, reply: Reply) -> None:
        """Raise the mapped error unless the reply to `build_check` shows the key works. Adapters whose check
        call cannot succeed (Vtrix asks for a task that does not exist) override this."""
        self.check(reply)

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> bool:
        return False

    # -- errors, in one place ---------------------------------------------------------------------------
    def error_message(self, reply: Reply) -> str:
        """The provider's own words from an error body; adapters override for their shapes."""
        try:
            data = json.loads(reply.body)
        except ValueError:
            return reply.body[:200].decode("utf-8", "replace").strip()
        return extract_message(data)

    def error_for(self, reply: Reply) -> ProviderError:
        """Map an HTTP error reply to the taxonomy. One table for every provider; only the message and the
        credit statuses differ."""
        status = reply.status
        message = self.error_message(reply) or f"HTTP {status}"
        lowered = message.lower()
        retry_after = parse_retry_after(reply.header("Retry-After"))
        if any(word in lowered for word in ("insufficient", "balance", "credit", "quota exceeded")):
            if status in (402, 403, 429) or status in self.credit_statuses:
                return ProviderError(
                    ProviderError.PROVIDER_CREDIT,
                    f"The {self.label} account is out of credit: {message}",
                    status=status,
                )
        if status in self.credit_statuses:
            return ProviderError(
                ProviderError.PROVIDER_CREDIT,
                f"The {self.label} account is out of credit: {message}",
                status=status,
            )
        if status == 401:
            return ProviderError(
                ProviderError.AUTH, f"{self.label} refused the API key: {message}", status=status
            )
        if status == 403:
            if any(word in lowered for word in ("policy", "moderat", "nsfw", "safety", "content")):
                return ProviderError(
                    ProviderError.MODERATION, f"{self.label} refused the prompt: {message}", status=status
                )
            return ProviderError(ProviderError.AUTH, f"{self.label} denied access: {message}", status=status)
        if status == 429:
            return ProviderError(
                ProviderError.RATE_LIMITED,
                f"{self.label} is rate limiting: {message}",
                retry_after=retry_after,
                status=status,
            )
        if status == 404:
            return ProviderError(
                ProviderError.NOT_FOUND, f"{self.label} does not know this job: {message}", status=status
            )
        if status == 408 or status == 504:
            return ProviderError(ProviderError.TIMEOUT, f"{self.label} timed out: {message}", status=status)
        if status >= 500:
            return ProviderError(
                ProviderError.SERVER,
                f"{self.label} had a server error: {message}",
                retry_after=retry_after,
                status=status,
            )
        if any(word in lowered for word in ("policy", "moderat", "nsfw", "safety")):
            return ProviderError(
                ProviderError.MODERATION, f"{self.label} refused the prompt: {message}", status=status
            )
        return ProviderError(
            ProviderError.INVALID, f"{self.label} rejected the request: {message}", status=status
        )

    def check(self, reply: Reply) -> Any:
        """The JSON of a successful reply, or the mapped error."""
        if reply.status >= 400:
            raise self.error_for(reply)
        return reply.json()


def extract_message(data: Any) -> str:
    """Find the human words in the error shapes the four providers use: a string, {"error": str},
    {"error": {"message"|"error_message": str}}, {"message": str}, {"detail": str}."""
    if isinstance(data, str):
        return data
    if not isinstance(data, dict):
        return ""
    for key in ("error", "message", "detail", "error_message"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict):
            found = extract_message(value)
            if found:
                return found
    return ""


def with_error_code(message: str, reply: Reply) -> str:
    """`message` plus the body's `error.code`, for the OpenAI-style `{"error": {"code", "message"}}` bodies
    (MaxAPI, Vtrix, PixelDojo): the code often carries the words `error_for` looks for ("insufficient_quota",
    "insufficient_credits") when the message does not."""
    try:
        error = json.loads(reply.body).get("error")
    except (ValueError, AttributeError):
        return message
    code = error.get("code") if isinstance(error, dict) else None
    if not isinstance(code, str) or not code or code.lower() in message.lower():
        return message
    return f"{message} ({code})" if message else code


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def failed(code: str, message: str, raw_status: str | None = None) -> Outcome:
    return Outcome(state="failed", error=ProviderError(code, message), raw_status=raw_status)


def moderation_or_failure(label: str, message: str) -> str:
    """Providers report a refused prompt as an ordinary failure with words in it; tell the two apart."""
    lowered = message.lower()
    if any(word in lowered for word in ("policy", "moderat", "nsfw", "safety", "flagged")):
        return ProviderError.MODERATION
    return ProviderError.FAILED
