"""Issue 3: for each provider kind and each of its models, a generation created through the JSON API with
each documented option succeeds against an independent emulator (tests/emulators, written from
providers.md and the seed pages), and the request the emulator received matches the documentation field
for field. The same lifecycle against the project's own sandbox agrees. Requests a provider cannot serve
are refused with 400 before any credit moves or any provider request.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from PIL import Image as PILImage

from generations import credits, media
from generations.models import Generation, LedgerEntry
from tests.emulators import EMULATORS, implied_size
from tests.emulators.harness import Api, account_for, fast_engine, run

PROMPT = "a lighthouse at dusk, volumetric fog"
MP = 1024 * 1024
SEED, WEBHOOK = "<seed>", "<webhook>"
MAXAPI_PRICE = {"flux-plus": 3, "flux-pro-2": 6}  # per image up to 1024x1024, x2 above [S000], providers.md 8
MAX_TIERS = {1.0: 70, 2.0: 100, 4.0: 160}  # flux-2-max: 70 first MP + 30 per extra MP, providers.md 8
INPUT_MP = 30  # flux-2-max: per reference-image megapixel, providers.md 8


def ref(i: int) -> str:
    return f"<ref{i}>"


class PriceMismatch(AssertionError):
    """The hold differs from the documented price for the size tier the user picked."""


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    model: str
    options: dict
    sent: dict  # the provider's request body, with placeholders for values known only after the create
    size: tuple[int, int]
    fmt: str
    per_image: int  # the documented price, in credits
    n: int = 1
    refs: int = 0


def max_price(options: dict, size: tuple[int, int]) -> int:
    """flux-2-max's documented price for the tier the user picked (explicit sizes: by area)."""
    width, height = size
    picked = options.get("megapixels") or (width * height / MP if "width" in options else 1.0)
    return MAX_TIERS[next(t for t in MAX_TIERS if picked <= t + 1e-9)]


def sent_size(ratio: str, megapixels: float) -> tuple[int, int]:
    """The pixels FluxWeb sends for a ratio at a tier to a provider that takes pixels (MaxAPI, Vtrix): sides in
    multiples of 16 [B1], rounded down so the area never passes the tier the user picked and pays for."""
    w, h = (int(part) for part in ratio.split(":"))
    unit = math.sqrt(megapixels * MP / (w * h))
    return max(16, int(w * unit // 16) * 16), max(16, int(h * unit // 16) * 16)


def maxapi(model: str, name: str, options: dict, size: tuple[int, int], n: int = 1) -> Case:
    """MaxAPI bills what it renders: the price doubles "for resolutions above 1024*1024" [S000], which its
    newest material reads per side: any side past 1024 px is billed double (providers.md, first section)."""
    w, h = size
    sent = {"model": model, "prompt": PROMPT, "n": n, "size": f"{w}x{h}"}
    price = MAXAPI_PRICE[model] * (1 if max(w, h) <= 1024 else 2)
    return Case(name, "maxapi", model, options, sent, size, "jpeg", price, n, 0)


def vtrix(name: str, options: dict, size: tuple[int, int], refs: int = 0, **extra) -> Case:
    fmt = options.get("output_format", "jpeg")
    params = {
        "prompt": PROMPT,
        "width": size[0],
        "height": size[1],
        "output_format": fmt,
        "seed": options.get("seed", SEED),
        **extra,
    }
    params.update({slot: ref(i) for i, slot in enumerate(SLOTS[:refs])})
    sent = {"model": "flux_2_max", "input": [{"params": params}]}
    return Case(name, "vtrix", "flux-2-max", options, sent, size, fmt, max_price(options, size), 1, refs)


def apiframe(name: str, options: dict, refs: int = 0) -> Case:
    fmt = options.get("output_format", "jpeg")
    mp = options.get("megapixels", 1.0)
    ratio = options.get("aspect_ratio", "1:1")
    params = {
        "resolution": f"{mp:g}MP",
        "aspect_ratio": ratio,
        "output_format": "jpg" if fmt == "jpeg" else fmt,
        "prompt_upsampling": options.get("prompt_upsampling", False),
        "seed": options.get("seed", SEED),
    }
    if fmt != "png":
        params["output_quality"] = 90  # 0-100, "irrelevant for png" [A7]
    if refs:
        params["input_images"] = [ref(i) for i in range(refs)]
    sent = {
        "prompt": PROMPT,
        "model": "flux-2-max",
        "fluxParams": params,
        "webhookUrl": WEBHOOK,
        "webhookEvents": ["completed", "failed"],
    }
    size = implied_size(ratio, mp)
    return Case(name, "apiframe", "flux-2-max", options, sent, size, fmt, max_price(options, size), 1, refs)


def pixeldojo(name: str, options: dict, n: int = 1, **extra) -> Case:
    fmt = options.get("output_format", "jpeg")
    mp = options.get("megapixels", 1.0)
    ratio = options.get("aspect_ratio", "1:1")
    sent = {
        "prompt": PROMPT,
        "aspect_ratio": ratio,
        "resolution": f"{mp:g} MP",
        "num_outputs": n,
        "output_format": "jpg" if fmt == "jpeg" else fmt,
        "prompt_upsampling": options.get("prompt_upsampling", False),
        "seed": options.get("seed", SEED),
        **extra,
    }
    size = implied_size(ratio, mp)
    return Case(name, "pixeldojo", "flux-2-max", options, sent, size, fmt, max_price(options, size), n)


SLOTS = ("input_image", *(f"input_image_{k}" for k in range(2, 9)))  # [S001]
# Each group is one test: its generations are created through the API together and run by the engine at once.
GROUPS: dict[str, list[Case]] = {
    **{
        f"maxapi-{model}-{name}": cases
        for model in ("flux-plus", "flux-pro-2")
        for name, cases in {
            "n-and-sizes": [
                maxapi(model, "defaults", {}, (1024, 1024)),
                maxapi(model, "n=4", {"n": 4}, (1024, 1024), n=4),
                maxapi(model, "n=2 16:9", {"n": 2, "aspect_ratio": "16:9"}, (1360, 768), n=2),
                maxapi(model, "0.25 MP", {"megapixels": 0.25}, (512, 512)),
                maxapi(model, "2 MP 3:2", {"megapixels": 2, "aspect_ratio": "3:2"}, sent_size("3:2", 2)),
                maxapi(model, "800x600", {"width": 800, "height": 600}, (800, 600)),
                maxapi(model, "256x256", {"width": 256, "height": 256}, (256, 256)),
            ],
            # 4:5 at 1 MP stays within 1024*1024 pixels, but its long side (1136) passes 1024: doubled.
            "4:5-within-1024x1024": [maxapi(model, "4:5", {"aspect_ratio": "4:5"}, sent_size("4:5", 1))],
        }.items()
    },
    "vtrix-sizes": [
        vtrix("defaults", {}, (1024, 1024)),
        vtrix("9:16", {"aspect_ratio": "9:16"}, (768, 1360)),
        vtrix("21:9", {"aspect_ratio": "21:9"}, sent_size("21:9", 1)),
        vtrix("0.5 MP", {"megapixels": 0.5}, (720, 720)),
        vtrix("2 MP", {"megapixels": 2}, sent_size("1:1", 2)),
        vtrix("4 MP", {"megapixels": 4}, (2048, 2048)),
        vtrix("1024x768", {"width": 1024, "height": 768}, (1024, 768)),
        vtrix("512x2048", {"width": 512, "height": 2048}, (512, 2048)),
    ],
    "vtrix-options": [
        vtrix(
            "seed png safety 0",
            {"seed": 42, "output_format": "png", "safety_tolerance": 0},
            (1024, 1024),
            safety_tolerance=0,
        ),
        vtrix("safety 5", {"safety_tolerance": 5}, (1024, 1024), safety_tolerance=5),
    ],
    "vtrix-references": [
        vtrix("1 reference", {}, (1024, 1024), refs=1),
        vtrix("8 references", {}, (1024, 1024), refs=8),
    ],
    "apiframe-ratios": [apiframe("defaults", {})]
    + [apiframe(ratio, {"aspect_ratio": ratio}) for ratio in ("3:4", "4:3", "9:16", "16:9")]
    # Pixels become the reduced ratio at its tier (fluxParams has no width/height): 1024x1024 is 1:1 at 1 MP.
    + [apiframe("1024x1024", {"width": 1024, "height": 1024})],
    "apiframe-tiers": [apiframe(f"{mp:g} MP", {"megapixels": mp}) for mp in (0.5, 2, 4)]
    + [apiframe("4 MP 16:9", {"megapixels": 4, "aspect_ratio": "16:9"})],
    "apiframe-options": [
        apiframe("seed png upsampling", {"seed": 7, "output_format": "png", "prompt_upsampling": True}),
        apiframe("webp", {"output_format": "webp"}),
    ],
    "apiframe-references": [apiframe("2 references", {}, refs=2), apiframe("8 references", {}, refs=8)],
    "pixeldojo-n": [
        pixeldojo("defaults", {}),
        pixeldojo("n=2", {"n": 2}, n=2),
        pixeldojo("n=4 16:9", {"n": 4, "aspect_ratio": "16:9"}, n=4),
    ],
    "pixeldojo-ratios": [
        pixeldojo(ratio, {"aspect_ratio": ratio})
        for ratio in ("16:9", "9:16", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3")
    ],
    "pixeldojo-tiers": [pixeldojo(f"{mp:g} MP", {"megapixels": mp}) for mp in (0.5, 2, 4)],
    "pixeldojo-options": [
        pixeldojo(
            "png safety 1 upsampling seed",
            {"output_format": "png", "safety_tolerance": 1, "prompt_upsampling": True, "seed": 123},
            safety_tolerance=1,
        ),
        pixeldojo("webp safety 5", {"output_format": "webp", "safety_tolerance": 5}, safety_tolerance=5),
    ],
}


def group_param(name: str, cases: list[Case]):
    return pytest.param(cases, id=name)


@pytest.fixture(scope="session")
def servers():
    started = {kind: cls(delay=0.05).start() for kind, cls in EMULATORS.items()}
    yield started
    for emulator in started.values():
        emulator.stop()


@pytest.fixture
def emulators(servers, db, monkeypatch):
    fast_engine(monkeypatch)
    for kind, emulator in servers.items():
        emulator.reset()
        account_for(kind, emulator)
    return servers


@pytest.fixture
def api(django_user_model):
    """A user with 1000 credits and no password (hashing one costs ~0.6 s per test)."""
    user = django_user_model.objects.create_user("dora")
    credits.grant(user, 1000, note="test credits")
    return Api(user)


def fill(template, values: dict):
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, values) for v in template]
    return values.get(template, template) if isinstance(template, str) else template


def make_images(api, drain, count: int) -> list[int]:
    """Gallery images to use as references: MaxAPI generations through the API (1024x1024, 1 MP each)."""
    ids = []
    while len(ids) < count:
        status, body = api.create(
            prompt="reference", model="flux-plus", provider="emu-maxapi", n=min(4, count - len(ids))
        )
        assert status == 202, body
        run(drain, body["id"])
        generation = api.generation(body["id"])
        assert generation["status"] == "succeeded", generation["error"]
        ids += [image["id"] for image in sorted(generation["images"], key=lambda i: i["id"])]
    return ids


def reference_links(kind: str, body: dict) -> list[str]:
    """Where the docs put reference URLs: input_image, input_image_2.. (Vtrix), fluxParams.input_images
    (Apiframe)."""
    if kind == "vtrix":
        params = body["input"][0]["params"]
        return [params[slot] for slot in SLOTS if slot in params]
    if kind == "apiframe":
        return body["fluxParams"].get("input_images", [])
    return []


def check_auth(kind: str, emulator, request, what: str) -> None:
    if request.body:
        assert request.header("Content-Type") == "application/json", what
    if kind == "apiframe":
        assert request.header("X-API-Key") == emulator.api_key, what
        assert request.header("Authorization") is None, what
    else:
        assert request.header("Authorization") == f"Bearer {emulator.api_key}", what


@pytest.mark.parametrize("cases", [group_param(name, cases) for name, cases in GROUPS.items()])
def test_each_documented_option_succeeds_and_is_sent_as_documented(cases: list[Case], api, emulators, drain):
    kind = cases[0].kind
    emulator = emulators[kind]
    references = {case.id: make_images(api, drain, case.refs) for case in cases if case.refs}
    emulator.reset()
    balance = api.me()["credits"]["balance"]
    created = []
    for case in cases:
        body = {"prompt": PROMPT, "model": case.model, "provider": f"emu-{kind}", **case.options}
        if references.get(case.id):
            body["reference_images"] = references[case.id]
        status, answer = api.create(**body)
        assert status == 202, (case.id, answer)
        assert answer["status"] == "queued", case.id
        created.append(answer["id"])
    run(drain, *created)

    assert len(emulator.calls("POST")) == len(cases)  # one submit each, no retries
    spent, mismatches = 0, []
    for case, pk in zip(cases, created, strict=True):
        spent += check_generation(
            case, api.generation(pk), references.get(case.id, []), api, emulator, mismatches
        )
    me = api.me()["credits"]
    assert (me["balance"], me["reserved"]) == (balance - spent, 0)
    assert credits.reconcile() == []
    if mismatches:
        raise PriceMismatch("; ".join(mismatches))


def check_generation(case: Case, generation: dict, references: list[int], api, emulator, mismatches) -> int:
    """Everything about one finished generation; returns the credits it cost."""
    what = f"{case.kind} {case.model} {case.id}"
    assert generation["status"] == "succeeded", (what, generation["error"])
    assert generation["error"] is None, what
    row = Generation.objects.get(pk=generation["id"])

    # What the provider received, field for field.
    job = emulator.job_for(row.image_urls)
    assert job is not None and job.request is not None, what
    submit = job.request
    assert submit.method == "POST", what
    check_auth(case.kind, emulator, submit, what)
    links = reference_links(case.kind, submit.json)
    assert len(links) == len(references), what
    for link, image_id in zip(links, references, strict=True):
        assert link.startswith(f"{settings.SITE_URL}/r/"), (what, link)
        assert media.reference_from_token(urlsplit(link).path.rsplit("/", 1)[1]) == image_id, what
        # The provider can fetch it without a login.
        assert Client().get(urlsplit(link).path).status_code == 200, what
    values = {
        SEED: generation["seed"],
        WEBHOOK: settings.SITE_URL + reverse("webhook", args=[row.webhook_token]),
    }
    values |= {ref(i): link for i, link in enumerate(links)}
    assert submit.json == fill(case.sent, values), what
    if case.kind == "apiframe":
        assert submit.header("Idempotency-Key").startswith(f"fluxweb-{row.pk}-"), what
    if case.kind == "maxapi":
        # MaxAPI takes no seed but reports the one it used.
        assert generation["seed"] == job.extra["seed"], what
    else:
        assert row.provider_job_id == job.id, what
        polls = [r for r in emulator.calls("GET") if r.path.endswith(job.id)]
        assert polls, what
        for poll in polls:
            check_auth(case.kind, emulator, poll, what)
    assert sorted(
        urlsplit(r.path).path for r in emulator.downloads() if urlsplit(r.path).path in job.files
    ) == sorted(job.files), what

    # The images, stored as delivered.
    assert len(generation["images"]) == case.n, what
    for image in generation["images"]:
        assert (image["width"], image["height"], image["format"]) == (*case.size, case.fmt), what
        assert image["seed"] == generation["seed"] is not None, what
        stored = PILImage.open(io.BytesIO(api.file(image)))  # FluxWeb decoded it fully before keeping it
        assert (stored.size, stored.format.lower()) == (case.size, case.fmt), what

    # The money: the hold charged in full, the ledger one reserve and one settle.
    held = generation["credits"]["reserved"]
    assert generation["credits"] == {"reserved": held, "charged": held, "refunded": 0}, what
    assert list(row.ledger.order_by("id").values_list("kind", "amount")) == [
        ("reserve", held),
        ("settle", held),
    ], what
    expected = case.per_image * case.n + INPUT_MP * len(references)
    if held != expected:
        mismatches.append(f"{what}: held {held} credits, the documented price is {expected}")
    return held


@pytest.mark.parametrize(
    "kind, walk",
    [
        ("vtrix", ["in_progress", "completed"]),  # [V3][V5]
        ("apiframe", ["QUEUED", "PROCESSING", "COMPLETED"]),  # [A1][A7]
        ("pixeldojo", ["pending", "completed"]),  # [S004]
    ],
)
def test_the_engine_polls_through_the_documented_statuses(kind, walk, api, emulators, drain):
    emulator = emulators[kind]
    emulator.delay = 1.0  # long enough for the polls (0.1 s, then every 0.35 s) to see the job in progress
    try:
        status, created = api.create(prompt=PROMPT, model="flux-2-max", provider=f"emu-{kind}")
        assert status == 202, created
        run(drain, created["id"])
    finally:
        emulator.delay = 0.05
    generation = api.generation(created["id"])
    assert generation["status"] == "succeeded", generation["error"]
    assert generation["progress"] == 1.0
    seen = list(
        dict.fromkeys(emulator.jobs[Generation.objects.get(pk=created["id"]).provider_job_id].extra["seen"])
    )
    # Polled while in progress, then done; in the documented order (a poll may fall between two statuses).
    assert (
        len(seen) >= 2 and seen[-1] == walk[-1] and seen == [status for status in walk if status in seen]
    ), seen


def test_an_apiframe_result_given_as_a_bare_url_is_accepted(api, emulators, drain):
    """`result` is a bare URL string in the older docs and the SDK tests, {"images": [...]} now [A1 vs A2]."""
    emulators["apiframe"].result_as_string = True
    try:
        status, created = api.create(
            prompt=PROMPT, model="flux-2-max", provider="emu-apiframe", aspect_ratio="16:9"
        )
        assert status == 202, created
        run(drain, created["id"])
    finally:
        del emulators["apiframe"].result_as_string
    generation = api.generation(created["id"])
    assert generation["status"] == "succeeded", generation["error"]
    assert [(i["width"], i["height"]) for i in generation["images"]] == [(1360, 768)]


# -- the project's own sandbox agrees ---------------------------------------------------------------------------
SANDBOX_CASES = {
    "maxapi": ("flux-pro-2", {"n": 2, "aspect_ratio": "16:9"}),
    "vtrix": (
        "flux-2-max",
        {"aspect_ratio": "3:2", "seed": 5, "output_format": "png", "safety_tolerance": 3},
    ),
    "apiframe": (
        "flux-2-max",
        {
            "aspect_ratio": "4:3",
            "megapixels": 0.5,
            "seed": 5,
            "output_format": "webp",
            "prompt_upsampling": True,
        },
    ),
    "pixeldojo": (
        "flux-2-max",
        {"n": 2, "aspect_ratio": "2:3", "seed": 5, "output_format": "png", "safety_tolerance": 1},
    ),
}


@pytest.mark.parametrize("kind", list(SANDBOX_CASES))
def test_the_projects_sandbox_and_the_emulator_agree(kind, api, emulators, accounts, fresh_sandbox, drain):
    model, options = SANDBOX_CASES[kind]
    ids = {}
    for slug in (f"sb-{kind}", f"emu-{kind}"):
        status, created = api.create(prompt=PROMPT, model=model, provider=slug, **options)
        assert status == 202, created
        ids[slug] = created["id"]
    run(drain, *ids.values())
    done = {slug: api.generation(pk) for slug, pk in ids.items()}
    for slug, generation in done.items():
        assert generation["status"] == "succeeded", (slug, generation["error"])
    sandbox, emulator = done[f"sb-{kind}"], done[f"emu-{kind}"]
    assert [(i["width"], i["height"], i["format"]) for i in sandbox["images"]] == [
        (i["width"], i["height"], i["format"]) for i in emulator["images"]
    ]
    assert sandbox["credits"] == emulator["credits"]

    def sent(body: dict) -> dict:
        return {k: v for k, v in body.items() if k != "webhookUrl"}

    to_sandbox = [r for r in fresh_sandbox.requests if r.method == "POST" and r.provider == kind]
    to_emulator = [r for r in emulators[kind].calls() if r.method == "POST"]
    assert len(to_sandbox) == len(to_emulator) == 1
    assert sent(to_sandbox[0].json) == sent(to_emulator[0].json)
    assert credits.reconcile() == []


# -- requests a provider cannot serve -----------------------------------------------------------------------------
REFUSALS = [
    # kind, model, options, references, field, words the message must contain
    ("maxapi", "flux-plus", {"n": 5}, 0, "n", "at most 4 images"),
    ("maxapi", "flux-pro-2", {"prompt": "x" * 1001}, 0, "prompt", "at most 1000 characters"),
    ("maxapi", "flux-plus", {"output_format": "png"}, 0, "output_format", "jpeg"),
    ("maxapi", "flux-plus", {"seed": 1}, 0, "seed", "does not take a seed"),
    ("maxapi", "flux-plus", {"safety_tolerance": 2}, 0, "safety_tolerance", "no safety tolerance"),
    ("maxapi", "flux-plus", {"width": 4096, "height": 1024}, 0, "width", "between 256 and 2048"),
    ("maxapi", "flux-plus", {"aspect_ratio": "4:1", "megapixels": 2}, 0, None, "2048"),
    ("maxapi", "flux-plus", {}, 1, "reference_images", "no reference images"),
    ("vtrix", "flux-2-max", {"n": 2}, 0, "n", "at most 1 image"),
    ("vtrix", "flux-2-max", {"width": 1000, "height": 1000}, 0, "width", "multiples of 16; try 1008x1008"),
    ("vtrix", "flux-2-max", {"width": 2048, "height": 2064}, 0, "width", "between 64 and 2048"),
    ("vtrix", "flux-2-max", {"aspect_ratio": "16:9", "megapixels": 4}, 0, "megapixels", "smaller resolution"),
    ("vtrix", "flux-2-max", {"safety_tolerance": 6}, 0, "safety_tolerance", "between 0 and 5"),
    ("vtrix", "flux-2-max", {"prompt_upsampling": True}, 0, "prompt_upsampling", "no prompt upsampling"),
    ("vtrix", "flux-2-max", {"output_format": "webp"}, 0, "output_format", "jpeg, png"),
    ("vtrix", "flux-2-max", {}, 9, "reference_images", "at most 8 reference images"),
    ("apiframe", "flux-2-max", {"aspect_ratio": "2:3"}, 0, "aspect_ratio", "1:1, 3:4, 4:3, 9:16, 16:9"),
    ("apiframe", "flux-2-max", {"safety_tolerance": 2}, 0, "safety_tolerance", "no safety tolerance"),
    ("apiframe", "flux-2-max", {"n": 2}, 0, "n", "at most 1 image"),
    ("apiframe", "flux-2-max", {"prompt": "x" * 2001}, 0, "prompt", "at most 2000 characters"),
    ("apiframe", "flux-2-max", {"megapixels": 3}, 0, "megapixels", "0.5 MP, 1 MP, 2 MP, 4 MP"),
    ("apiframe", "flux-2-max", {}, 9, "reference_images", "at most 8 reference images"),
    ("pixeldojo", "flux-2-max", {"aspect_ratio": "21:9"}, 0, "aspect_ratio", "1:1, 16:9, 9:16"),
    ("pixeldojo", "flux-2-max", {"n": 5}, 0, "n", "at most 4 images"),
    ("pixeldojo", "flux-2-max", {"width": 1024, "height": 768}, 0, "width", "pick an aspect ratio"),
    ("pixeldojo", "flux-2-max", {"safety_tolerance": 0}, 0, "safety_tolerance", "between 1 and 5"),
    ("pixeldojo", "flux-2-max", {"prompt": "x" * 5001}, 0, "prompt", "at most 5000 characters"),
    ("pixeldojo", "flux-2-max", {}, 1, "reference_images", "no reference images"),
]


@pytest.mark.parametrize(
    "kind, model, options, references, field_name, words",
    [pytest.param(*r, id=f"{r[0]}-{r[4]}-{i}") for i, r in enumerate(REFUSALS)],
)
def test_a_request_the_provider_cannot_serve_is_refused_before_money_or_network(
    kind, model, options, references, field_name, words, api, emulators, drain
):
    # Distinct images: the same one picked twice counts once.
    image_ids = make_images(api, drain, references) if references else []
    for emulator in emulators.values():
        emulator.reset()
    generations, entries = Generation.objects.count(), LedgerEntry.objects.count()
    balance = api.me()["credits"]

    body = {"prompt": PROMPT, "model": model, "provider": f"emu-{kind}", **options}
    if image_ids:
        body["reference_images"] = image_ids
    status, answer = api.create(**body)

    assert status == 400, answer
    error = answer["error"]
    assert words in error["message"], error
    if field_name:
        assert error.get("field") == field_name, error
    assert Generation.objects.count() == generations
    assert LedgerEntry.objects.count() == entries
    assert api.me()["credits"] == balance
    assert all(emulator.requests == [] for emulator in emulators.values())
    assert not drain.queue


def test_the_emulators_size_arithmetic_matches_the_documented_examples():
    """A check on the emulators themselves: BFL-style sizes in multiples of 16."""
    assert implied_size("16:9", 1) == (1360, 768)  # the project's end-to-end example
    assert implied_size("1:1", 4) == (2048, 2048)
    assert implied_size("1:1", 0.5) == (720, 720)
    assert all(side % 16 == 0 for ratio in ("3:2", "21:9", "4:5") for side in implied_size(ratio, 1))
    assert math.isclose(implied_size("1:1", 1)[0] ** 2 / MP, 1.0)


# -- the emulators are as strict as the documentation ----------------------------------------------------------
def bearer(kind: str) -> dict:
    return {"Authorization": f"Bearer {EMULATORS[kind].api_key}"}


AF_KEY = {"X-API-Key": EMULATORS["apiframe"].api_key}
MAX_OK = {"model": "flux-plus", "prompt": "p", "n": 1, "size": "1024x1024"}
VX_OK = {"prompt": "p", "width": 1024, "height": 1024}
AF_OK = {"prompt": "p", "model": "flux-2-max", "fluxParams": {"resolution": "1MP", "aspect_ratio": "1:1"}}
PD_OK = {"prompt": "p", "aspect_ratio": "1:1", "resolution": "1 MP"}
MAX_PATH, VX_PATH = "/v1/images/generations", "/model/v1/generation"
AF_PATH, PD_PATH = "/v2/images/generate", "/api/v1/models/flux-2-max/run"
STRICT = [
    # kind, path, headers, body, expected HTTP status
    ("maxapi", MAX_PATH, {}, MAX_OK, 401),
    ("maxapi", MAX_PATH, {"Authorization": "Bearer sk-wrong"}, MAX_OK, 401),
    ("maxapi", MAX_PATH, bearer("maxapi"), MAX_OK | {"quality": "hd"}, 400),
    ("maxapi", MAX_PATH, bearer("maxapi"), MAX_OK | {"n": 11}, 400),
    ("maxapi", MAX_PATH, bearer("maxapi"), MAX_OK | {"size": "1024*1024"}, 400),
    ("maxapi", MAX_PATH, bearer("maxapi"), MAX_OK | {"prompt": "x" * 1001}, 400),
    ("maxapi", MAX_PATH, bearer("maxapi"), MAX_OK | {"n": "2"}, 200),  # n documented as a string
    ("vtrix", VX_PATH, bearer("vtrix"), {"model": "flux_2_max", **VX_OK}, 400),  # flat, no input wrapper
    ("vtrix", VX_PATH, {"X-API-Key": "vtrix"}, {"model": "flux_2_max", "input": [{"params": VX_OK}]}, 401),
    *(
        ("vtrix", VX_PATH, bearer("vtrix"), {"model": "flux_2_max", "input": [{"params": VX_OK | bad}]}, 400)
        for bad in (
            {"width": 1000},
            {"width": 32},
            {"width": 2048, "height": 4096},
            {"output_format": "webp"},
            {"prompt_upsampling": True},
            {"input_image_9": "http://x/y.png"},
            {"safety_tolerance": 6},
            {"seed": "42"},
        )
    ),
    ("vtrix", VX_PATH, bearer("vtrix"), {"model": "flux_2_max", "input": [{"params": VX_OK}]}, 200),
    ("apiframe", AF_PATH, bearer("apiframe"), AF_OK, 401),  # X-API-Key, not Bearer
    *(
        ("apiframe", AF_PATH, AF_KEY, AF_OK | {"fluxParams": AF_OK["fluxParams"] | bad}, 400)
        for bad in (
            {"resolution": "2 MP"},
            {"aspect_ratio": "16/9"},
            {"output_format": "jpeg"},
            {"safety_tolerance": 2},
            {"input_images": ["not a url"]},
            {"width": 4096},
        )
    ),
    ("apiframe", AF_PATH, AF_KEY, AF_OK | {"webhook_url": "http://127.0.0.1:8000/hooks/x"}, 400),
    ("apiframe", AF_PATH, AF_KEY, AF_OK | {"webhookEvents": []}, 400),
    ("apiframe", AF_PATH, AF_KEY, AF_OK, 202),
    ("pixeldojo", PD_PATH, {}, PD_OK, 401),
    *(
        ("pixeldojo", PD_PATH, bearer("pixeldojo"), PD_OK | bad, 400)
        for bad in (
            {"aspect_ratio": "21:9"},
            {"resolution": "1MP"},
            {"output_format": "jpeg"},
            {"width": 1024},
            {"num_outputs": 0},
        )
    ),
    ("pixeldojo", PD_PATH, bearer("pixeldojo"), PD_OK, 202),
]


@pytest.mark.parametrize("kind, path, headers, body, expected", STRICT)
def test_the_emulators_hold_requests_to_the_documentation(kind, path, headers, body, expected, servers):
    response = httpx.post(servers[kind].url + path, headers=headers, json=body)
    assert response.status_code == expected, response.text
    if expected >= 400:
        assert response.json()  # an error body in the provider's shape


def test_the_apiframe_emulator_replays_idempotency_keys_and_checks_job_ids(servers):
    url, key = servers["apiframe"].url, {**AF_KEY, "Idempotency-Key": "k-1"}
    first = httpx.post(url + AF_PATH, headers=key, json=AF_OK)
    again = httpx.post(url + AF_PATH, headers=key, json=AF_OK)
    assert first.status_code == again.status_code == 202 and first.json()["jobId"] == again.json()["jobId"]
    assert httpx.post(url + AF_PATH, headers=key, json=AF_OK | {"prompt": "q"}).status_code == 409
    assert httpx.get(url + "/v2/jobs/not-a-uuid", headers=AF_KEY).status_code == 400
    job = httpx.get(f"{url}/v2/jobs/{first.json()['jobId']}", headers=AF_KEY).json()
    assert job["status"] in ("QUEUED", "PROCESSING", "COMPLETED") and job["model"] == "flux-2-max"
