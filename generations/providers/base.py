"""The adapter protocol: a provider-neutral request and result, and one error taxonomy.

Adapters know nothing about Django models. Building a request and parsing a response are pure functions of
plain data, so each adapter is testable from the documented example JSON without any HTTP; `http.py` is the
one place that sends what an adapter builds.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx

from ..refusal import Refusal

MEGAPIXEL = 1024 * 1024
# BFL's list price for FLUX.2 [max]: 7 c for the first output megapixel and 3 c for each further one and for
# each input megapixel [B1], in credits of $0.001 (providers.md 8). Aggregators serving BFL's model default
# to it too, since none publishes a price of its own for it.
FLUX_2_MAX_LIST_PRICE = {"1MP": 70, "2MP": 100, "4MP": 160, "input_mp": 30}
log = logging.getLogger("generations")


HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def plain_text(body: bytes) -> str:
    """Words from a non-JSON error body: a gateway's HTML page becomes its <title> (or nothing), never
    markup shown to a person."""
    head = body[:4096].decode("utf-8", "replace")
    if "<" in head and re.search(r"<(!doctype|html|head|body|title|h1|p|div)\b", head, re.IGNORECASE):
        found = HTML_TITLE.search(head)
        if not found:  # no title: the page's visible text
            head = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", head)
        text = found.group(1) if found else head
        return " ".join(html.unescape(re.sub(r"<[^>]*>?", " ", text)).split())[:200]
    return head[:200].strip()


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


class Unsupported(Refusal):
    """A request this provider cannot serve; the message says what to change. Raised before any money moves."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__("unsupported", message, status=400, field=field)


# What a job's status word means. Each adapter declares `statuses`, one table from every word its provider
# sends (lower-cased, each listed once) to one of these or to the taxonomy's code for a failed job; its parser
# reads the word's meaning there and nowhere else. A word no table lists keeps polling: providers add words
# (BFL's Generating [X6]) before they document them.
SUCCEEDED = "succeeded"  # finished: the images are listed
PENDING = "pending"  # still on its way: poll again
CANCELED = "canceled"  # ended at the provider by a cancel: a failure, unless its words say moderation
# Words in an error's message that mean the provider account is out of credit (on a credit-like HTTP
# status), and words in a failed job's message that mean moderation refused it: any provider, each once.
CREDIT_WORDS = ("insufficient", "balance", "credit", "quota exceeded")
MODERATION_WORDS = ("policy", "moderat", "nsfw", "safety", "flagged")


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
    # The provider takes a size as a ratio and one of `megapixels`, never as pixels: explicit width/height
    # are sent as their reduced W:H ratio at the tier whose size they are (Apiframe's fluxParams).
    size_by_tier: bool = False
    # Explicit width and height must be multiples of this and make at most `max_pixels` (BFL's rules [B1]).
    size_multiple: int = 1
    max_pixels: int | None = None
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
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past what Python parses
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


# -- hostile replies --------------------------------------------------------------------------------------
# A provider reply is untrusted input. Every parser an adapter defines is wrapped (Adapter.__init_subclass__)
# so that whatever it raises on a reply it did not expect (an object where a string belongs, a number where a
# list belongs, a missing key) comes out as this job's malformed-response ProviderError, never as an exception
# that escapes into the sweeper and stops polling for everyone else. What it returns is checked too: the engine
# stores job ids, URLs, costs and seeds in bounded columns and requests the URLs later.
PARSERS = ("parse_submit", "parse_poll", "parse_job")
MAX_JOB_ID = 200  # Generation.provider_job_id
MAX_POLL_URL = 1000  # Generation.poll_url
MAX_URL = 8192
MAX_COST = 40  # Generation.provider_cost
MAX_MESSAGE = 300
BIGINT = 2**63
DEFAULT_PORTS = {"http": 80, "https": 443}
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def malformed(label: str, what: str = "a reply FluxWeb cannot read") -> ProviderError:
    return ProviderError(ProviderError.MALFORMED, f"{label} sent {what}.")


def guarded(method):
    """`method` (a parser), with anything but a ProviderError turned into a malformed-response one, and its
    Outcome checked. Unexpected exceptions are logged with their traceback: they are either a hostile reply
    or a parser bug, and the log tells the two apart."""
    if getattr(method, "malformed_guard", False):
        return method

    @functools.wraps(method)
    def parse(self, *args, **kwargs):
        try:
            outcome = method(self, *args, **kwargs)
        except ProviderError:
            raise
        except Exception:
            log.warning("%s: %s could not read a reply", self.label, method.__name__, exc_info=True)
            raise malformed(self.label) from None
        return checked(self.label, outcome)

    parse.malformed_guard = True
    return parse


def checked(label: str, outcome: Outcome) -> Outcome:
    """`outcome` with every field of the type and size the engine stores, or a malformed-response error.
    What only informs (cost, progress, seed, a poll URL we can do without) is dropped when unusable; what the
    job depends on (its id, its image URLs) makes the reply malformed."""
    if not isinstance(outcome, Outcome) or outcome.state not in ("pending", "succeeded", "failed"):
        raise malformed(label)
    if outcome.job_id is not None and job_id_text(outcome.job_id) is None:
        raise malformed(label, "a job id FluxWeb cannot use")
    urls = outcome.image_urls
    if not isinstance(urls, tuple) or not all(isinstance(u, str) and usable_url(u) for u in urls):
        raise malformed(label, "an image link FluxWeb cannot use")
    if outcome.state == "failed" and not isinstance(outcome.error, ProviderError):
        raise malformed(label)
    error = outcome.error
    if isinstance(error, ProviderError):
        error = ProviderError(
            error.code,
            words(error.message) or f"{label} failed the job.",
            retry_after=error.retry_after,
            status=error.status,
            unsent=error.unsent,
        )
    progress = outcome.progress
    if not (isinstance(progress, float | int) and not isinstance(progress, bool) and math.isfinite(progress)):
        progress = None
    else:
        progress = min(1.0, max(0.0, float(progress)))
    cost = outcome.cost if isinstance(outcome.cost, str) and 0 < len(outcome.cost) <= MAX_COST else None
    if cost is not None and CONTROL.search(cost):
        cost = None
    seed = outcome.seed if is_int(outcome.seed) and -BIGINT <= outcome.seed < BIGINT else None
    poll_url = outcome.poll_url
    if not (isinstance(poll_url, str) and len(poll_url) <= MAX_POLL_URL and usable_url(poll_url)):
        poll_url = None
    raw = outcome.raw_status if isinstance(outcome.raw_status, str) else None
    return replace(
        outcome,
        error=error,
        progress=progress,
        cost=cost,
        seed=seed,
        poll_url=poll_url,
        raw_status=raw[:40] if raw else raw,
    )


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def job_id_text(value: object) -> str | None:
    """A provider's job id as text, when it is one: a non-empty string (or an integer) of at most 200
    printable characters. Anything else (an object, a list, a bool) is not an id."""
    if is_int(value):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_JOB_ID or CONTROL.search(value):
        return None
    return value


def usable_url(value: object) -> str | None:
    """`value` when it is an http(s) URL with a host that can be requested as it stands (httpx refuses
    `http://[::1/x.png` and URLs holding control characters), else None."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL or CONTROL.search(value):
        return None
    try:
        url = httpx.URL(value)
        parts = urlsplit(value)
        port = parts.port
    except (ValueError, TypeError, httpx.InvalidURL):  # InvalidURL is not a ValueError
        return None
    if url.scheme not in ("http", "https") or not url.host or not parts.hostname:
        return None
    if port is not None and not 0 < port < 65536:
        return None
    return value


def same_site(url: str, base_url: str) -> bool:
    """True when `url` has the scheme, host and port of `base_url` and lies under its path."""
    try:
        target, base = urlsplit(url), urlsplit(base_url)
        ports = target.port or DEFAULT_PORTS.get(target.scheme), base.port or DEFAULT_PORTS.get(base.scheme)
    except ValueError:
        return False
    return (
        target.scheme in DEFAULT_PORTS
        and not (target.username or target.password)
        and (target.scheme, target.hostname) == (base.scheme, base.hostname)
        and ports[0] == ports[1]
        and (target.path + "/").startswith(base.path.rstrip("/") + "/")
    )


def usable_urls(items: object) -> tuple[str, ...]:
    """The usable URLs among `items` (strings or `{"url": ...}` objects), in order, without repeats."""
    if not isinstance(items, list | tuple):
        items = [items]
    found = (
        item if isinstance(item, str) else item.get("url") if isinstance(item, dict) else None
        for item in items
    )
    return tuple(dict.fromkeys(url for url in found if usable_url(url)))


def words(text: object, limit: int = MAX_MESSAGE) -> str:
    """A provider's text, fit to show a person and to store: control characters and runs of whitespace
    become one space, and it is cut at `limit` characters."""
    if not isinstance(text, str):
        return ""
    text = " ".join(CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


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
    # The provider's job status words, lower-cased, each once -> SUCCEEDED, PENDING, CANCELED or a
    # ProviderError code (see SUCCEEDED above). Empty for a synchronous provider, which has no job to poll.
    statuses: ClassVar[Mapping[str, str]] = {}

    # -- provider facts: media, credits, admin, catalog, the migrations, `demo` and the sweeper read these,
    # so a new provider is its adapter, its sandbox emulator, its tests and a README line (issue 9.1).
    # Hosts its result files are delivered from, on HTTPS port 443 (the account's own API host is always
    # allowed too; an admin adds more per account). Never the provider's whole cloud domain.
    result_hosts: ClassVar[frozenset[str]] = frozenset()
    # What the cost the provider reports with a job (Outcome.cost) is counted in, for the usage report;
    # empty when it reports none.
    cost_unit: ClassVar[str] = ""
    # What one of those units is worth in US dollars, where that is published, so the usage report can set the
    # provider's cost beside FluxWeb's charge; None when the unit is the provider's own credit of no fixed price.
    cost_unit_usd: ClassVar[str | None] = None
    # Default prices, per FluxWeb model id: size tier ("1MP", "2MP", "4MP", and "input_mp" per reference
    # megapixel) -> credits (1 credit = $0.001, providers.md 8). Admin Price rows override them per tier.
    default_prices: ClassVar[dict[str, dict[str, int]]] = {}
    # The shortest gap, in seconds, the poll cadence leaves between two polls of one job. Fast polls near
    # the expected completion are fine; the account's request budget keeps the steady rate down
    # (providers.md, corrections 6).
    min_poll_interval: ClassVar[float] = 0.25
    # Seconds a job of this provider typically takes from submit to done (providers.md), for when neither
    # the provider's progress nor the account's recent completion times say: a budget too small to ask every
    # job waits this long before it spends a poll on one (sweeper.spend_budgets).
    typical_seconds: ClassVar[float] = 10.0
    # Requests per minute FluxWeb sends one account of this kind unless its admin sets another budget
    # (submits, polls and checks together).
    default_max_rpm: ClassVar[int] = 60
    # How this provider's API keys begin, so error texts that echo one are masked; and the shape of the
    # made-up key `demo` gives the sandbox account.
    key_prefix: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in PARSERS:
            if name in cls.__dict__:
                setattr(cls, name, guarded(cls.__dict__[name]))

    def __init__(self, base_url: str, api_key: str):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key

    def meaning(self, word: str) -> str:
        """What the status `word` says about a job, by `statuses`; a word it does not list keeps polling."""
        return self.statuses.get(word.lower(), PENDING)

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
            self.check_pixels(spec, int(request.width), int(request.height))
            if spec.size_by_tier:
                self.ratio_and_tier(request)
        else:
            if request.aspect_ratio:
                parse_ratio(request.aspect_ratio)
                if spec.aspect_ratios and request.aspect_ratio not in spec.aspect_ratios:
                    ratios = ", ".join(spec.aspect_ratios)
                    raise Unsupported(f"{self.label} offers the aspect ratios {ratios}.", "aspect_ratio")
            if spec.custom_size and not spec.size_by_tier:
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

    def check_pixels(self, spec: ModelSpec, width: int, height: int) -> None:
        """Explicit sizes the provider would refuse: not multiples of `size_multiple`, or past `max_pixels`.
        (Sizes from a ratio and a tier are multiples of 16 and within the tier already.)"""
        multiple = spec.size_multiple
        if multiple > 1 and (width % multiple or height % multiple):
            low, high = spec.custom_size or (multiple, max(width, height))
            suggestion = "x".join(
                str(min(high, max(low, (side + multiple // 2) // multiple * multiple)))
                for side in (width, height)
            )
            raise Unsupported(
                f"{self.label} needs width and height in multiples of {multiple}; try {suggestion}.", "width"
            )
        if spec.max_pixels and width * height > spec.max_pixels:
            raise Unsupported(
                f"{self.label} makes at most {spec.max_pixels / MEGAPIXEL:g} MP; {width}x{height} is "
                f"{width * height / MEGAPIXEL:.1f} MP. Make it smaller.",
                "width",
            )

    def ratio_and_tier(self, request: GenerationRequest) -> tuple[str, float]:
        """Explicit width and height as the reduced W:H ratio and the size tier they are (1024x1024 is 1:1 at
        1 MP), for a provider that takes only those; Unsupported, with the nearest size it can make, when the
        ratio at that tier is not within 16 px a side of what was asked (the provider rounds to 16 px)."""
        spec = self.spec(request.model)
        width, height = int(request.width or 0), int(request.height or 0)
        divisor = math.gcd(width, height) or 1
        ratio = f"{width // divisor}:{height // divisor}"
        parse_ratio(ratio)  # at most 4:1
        area = width * height / MEGAPIXEL
        tier = min(spec.megapixels, key=lambda mp: abs(math.log(area / mp)))
        made = resolve_dimensions(ratio, None, None, tier)
        if abs(made[0] - width) > 16 or abs(made[1] - height) > 16:
            raise Unsupported(
                f"{self.label} makes sizes as a ratio at {', '.join(f'{mp:g}' for mp in spec.megapixels)} MP; "
                f"{width}x{height} is {ratio} at {area:.2f} MP. The nearest it makes is {made[0]}x{made[1]}.",
                "width",
            )
        return ratio, tier

    def billed_megapixels(self, request: GenerationRequest) -> float:
        """The size the price is for. A ratio at a chosen tier is rounded to multiples of 16 px, which can
        land a hair above the tier (1:1 at 2 MP is 1456x1456 = 2.02 MP, 5:4 at 1 MP is 1.002 MP); providers
        render and bill the tier asked for, so that tier is the price. Explicit pixel sizes pay for their area,
        or for the tier they are sent as."""
        if request.width and request.height:
            if self.spec(request.model).size_by_tier:
                return self.ratio_and_tier(request)[1]
            return request.output_megapixels
        return request.megapixels or 1.0

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
            return plain_text(reply.body)
        return extract_message(data)

    def error_for(self, reply: Reply) -> ProviderError:
        """Map an HTTP error reply to the taxonomy. One table for every provider; only the message and the
        credit statuses differ."""
        status = reply.status
        try:
            message = words(self.error_message(reply))
        except Exception:  # a hostile error body still gets the mapping its HTTP status earns
            message = ""
        message = message or f"HTTP {status}"
        lowered = message.lower()
        retry_after = parse_retry_after(reply.header("Retry-After"))
        if any(word in lowered for word in CREDIT_WORDS):
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


def loads(body: bytes) -> Any:
    """The JSON in `body`, or None when it is not JSON (or nested past what Python parses)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def extract_message(data: Any, depth: int = 3) -> str:
    """Find the human words in the error shapes the four providers use: a string, {"error": str},
    {"error": {"message"|"error_message": str}}, {"message": str}, {"detail": str}. Anything else (a number,
    a list, an object nested deeper than any provider nests one) has no words."""
    if isinstance(data, str):
        return data
    if not isinstance(data, dict) or depth <= 0:
        return ""
    for key in ("error", "message", "detail", "error_message"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, dict):
            found = extract_message(value, depth - 1)
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


def status_word(label: str, data: dict, key: str = "status") -> str:
    """A job's status, which must be a string: anything else (an object, a number) is a malformed reply,
    not a new status word to keep polling on."""
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ProviderError(ProviderError.MALFORMED, f"{label} sent a job without a readable status.")
    return value.strip()


def fraction(value: object, scale: float = 1.0) -> float | None:
    """Progress reported on `scale` (1 or 100) as 0..1, or None when it is not a finite number."""
    if not (is_int(value) or isinstance(value, float)):
        return None
    try:
        result = float(value) / scale
    except OverflowError:
        return None
    return min(1.0, max(0.0, result)) if math.isfinite(result) else None


def credit_cost(value: object) -> str | None:
    """A provider-reported cost as text: a number or a numeric string, else nothing (it only informs)."""
    if is_int(value) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def finished_without_images(label: str, candidates: object, **fields: Any) -> Outcome:
    """A finished job with no usable image link. Links that are there but cannot be requested will not get
    better by asking again: the job fails now, as a malformed reply. No link at all may be the provider
    still filling it in: a malformed reply, retried."""
    items = candidates if isinstance(candidates, list | tuple) else [candidates]
    if any(
        isinstance(item, str) and item.strip() or isinstance(item, dict) and isinstance(item.get("url"), str)
        for item in items
    ):
        return Outcome(
            state="failed",
            error=ProviderError(
                ProviderError.MALFORMED, f"{label} finished the job but its image link cannot be used."
            ),
            **fields,
        )
    raise ProviderError(ProviderError.MALFORMED, f"{label} finished the job but listed no image.")


def moderation_or_failure(label: str, message: str) -> str:
    """Providers report a refused prompt as an ordinary failure with words in it; tell the two apart."""
    lowered = message.lower() if isinstance(message, str) else ""
    if any(word in lowered for word in MODERATION_WORDS):
        return ProviderError.MODERATION
    return ProviderError.FAILED
