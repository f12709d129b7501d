"""No input reaches a 500 (issue 7, defect 6): ids that only look like numbers, numbers past the database's
range, lone surrogates, absurd nesting, oversized and mistyped bodies; then every URL pattern walked with
hostile query strings and bodies. Errors stay in the contract's JSON shape on /api/, friendly HTML elsewhere."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image as PILImage

from generations import credits, forms, media
from generations.api_urls import urlpatterns as api_patterns
from generations.models import ApiToken, Generation, Image, Prompt
from generations.urls import urlpatterns as page_patterns

HOSTILE_IDS = ["²", "١٢", "10" * 20, str(2**63), str(2**64), "-1", "0", "", " 1", "1 ", "+1", "1.5", "1e3"]
HOSTILE_JSON_IDS = [
    ["²"],
    [10**30],
    [2**63],
    [-1],
    [0],
    [1.5],
    [True],
    [None],
    [[1]],
    [{"id": 1}],
    ["\ud800"],
]


def png(width: int = 96, height: int = 64) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), (20, 140, 60)).save(out, "PNG")
    return out.getvalue()


def api(user) -> Client:
    _, token = ApiToken.issue(user)
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def session(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def create(client: Client, body, **extra):
    raw = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post("/api/v1/generations", raw, content_type="application/json", **extra)


def body(**overrides) -> dict:
    return {"prompt": "a lighthouse at dusk", "model": "flux-2-max", "provider": "sb-apiframe"} | overrides


def assert_json_error(response, status: int, code: str | None = None, field: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"] == "application/json", response["Content-Type"]
    error = response.json()["error"]
    assert error["code"] and error["message"], error
    if code:
        assert error["code"] == code, error
    if field:
        assert error["field"] == field, error
    return error


@pytest.fixture
def image(bob, accounts) -> Image:
    generation = Generation.objects.create(
        user=bob,
        prompt=Prompt.remember("a harbour", bob),
        model="flux-2-max",
        account=accounts["apiframe"],
        status="succeeded",
    )
    return media.store_image(generation, 0, media.check_image(png()), {"prompt": "a harbour"})


# -- the id helper ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", HOSTILE_IDS + [True, False, None, 1.0, 2**63, -5, [1], {"1": 1}])
def test_parse_id_refuses_what_is_not_a_database_id(value):
    assert forms.parse_id(value) is None


@pytest.mark.parametrize("value, expected", [("1", 1), (7, 7), ("0042", 42), (str(2**63 - 1), 2**63 - 1)])
def test_parse_id_accepts_ascii_digits_within_the_key_range(value, expected):
    assert forms.parse_id(value) == expected


def test_max_id_is_the_primary_keys_range():
    assert forms.MAX_ID == 2**63 - 1  # BigAutoField on SQLite and PostgreSQL


# -- the JSON create ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["reference_images", "reference_uploads"])
@pytest.mark.parametrize("ids", HOSTILE_JSON_IDS)
def test_the_api_refuses_hostile_reference_ids_with_a_field(bob, accounts, field, ids):
    response = create(api(bob), body(**{field: ids}))
    assert_json_error(response, 400, "invalid", field)
    assert not Generation.objects.exists() and credits.account_for(bob).reserved == 0


@pytest.mark.parametrize("text", ["\ud800", "a lighthouse \udfff at dusk", "\ud83d"])
def test_the_api_refuses_a_prompt_with_a_lone_surrogate(bob, accounts, text):
    raw = json.dumps(body(prompt=text))  # ensure_ascii: the surrogate travels as \\udXXX, valid JSON
    error = assert_json_error(create(api(bob), raw), 400, "invalid", "prompt")
    assert "Prompt" in error["message"]
    assert not Generation.objects.exists()


@pytest.mark.parametrize("field", ["provider", "aspect_ratio", "model", "output_format"])
def test_the_api_refuses_a_lone_surrogate_in_any_text_field(bob, accounts, field):
    assert_json_error(create(api(bob), json.dumps(body(**{field: "x\ud800"}))), 400, "invalid", field)


def test_the_api_refuses_json_nested_fifty_thousand_deep(bob, accounts):
    raw = "[" * 50_000 + "]" * 50_000
    assert_json_error(create(api(bob), raw), 400, "invalid")
    raw = '{"prompt": ' + "[" * 50_000 + "]" * 50_000 + "}"
    assert_json_error(create(api(bob), raw), 400, "invalid")


def test_the_api_answers_413_json_for_a_body_over_the_limit(bob, accounts, settings):
    raw = json.dumps(body(prompt="x" * (6 * 1024 * 1024)))
    assert_json_error(create(api(bob), raw), 413, "too_large")
    assert not Generation.objects.exists()


def test_the_api_answers_413_json_for_a_session_post_over_the_limit(bob, accounts):
    client = session(bob)
    response = client.post("/api/v1/generations", "x" * (6 * 1024 * 1024), content_type="application/json")
    assert_json_error(response, 413, "too_large")


def test_pages_answer_a_plain_413_for_a_body_over_the_limit(bob, accounts):
    client = session(bob)
    for path in ("/generate", "/login/"):
        response = client.post(
            path, "prompt=" + "x" * (6 * 1024 * 1024), content_type="application/x-www-form-urlencoded"
        )
        assert response.status_code == 413, path
        assert response["Content-Type"].startswith("text/html")
        assert b"too large" in response.content and b"Traceback" not in response.content


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/jsonp",
    ],
)
def test_the_api_answers_415_for_a_body_that_is_not_declared_json(bob, accounts, content_type):
    response = api(bob).post("/api/v1/generations", json.dumps(body()), content_type=content_type)
    assert_json_error(response, 415, "unsupported_media_type")
    assert not Generation.objects.exists()


def test_the_api_accepts_json_with_a_charset(bob, accounts):
    response = api(bob).post(
        "/api/v1/generations", json.dumps(body()), content_type="application/json; charset=utf-8"
    )
    assert response.status_code == 202, response.content


def test_the_api_refuses_a_body_that_is_not_utf8(bob, accounts):
    assert_json_error(create(api(bob), b'{"prompt": "\xff\xfe"}'), 400, "invalid")


@pytest.mark.parametrize("key", ["a\x00b", "k" * 256, "line\nbreak"])
def test_the_api_refuses_a_hostile_idempotency_key(bob, accounts, key):
    assert_json_error(create(api(bob), body(), HTTP_IDEMPOTENCY_KEY=key), 400, "invalid")
    assert not Generation.objects.exists()


@pytest.mark.parametrize(
    "cursor", ["²", "MTAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMA==", "LTE=", "wrMK", "%%%", "MA=="]
)
def test_the_api_refuses_a_hostile_cursor(bob, accounts, cursor):
    assert_json_error(api(bob).get("/api/v1/generations", {"cursor": cursor}), 400, "invalid", "cursor")


@pytest.mark.parametrize("path", ["/api/v1/generations/" + "9" * 30, "/api/v1/images/" + "9" * 30 + "/file"])
def test_the_api_answers_404_for_ids_past_the_range(bob, path):
    assert_json_error(api(bob).get(path), 404, "not_found")


# -- the studio ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", HOSTILE_IDS)
def test_the_studio_ignores_a_hostile_remix(bob, accounts, value):
    response = session(bob).get("/", {"remix": value})
    assert response.status_code == 200


@pytest.mark.parametrize("param", ["after", "before"])
@pytest.mark.parametrize("value", HOSTILE_IDS)
def test_the_gallery_ignores_hostile_cursors(bob, image, param, value):
    response = session(bob).get("/gallery", {param: value}, HTTP_HX_REQUEST="true")
    assert response.status_code in (200, 204)


@pytest.mark.parametrize("value", HOSTILE_IDS)
def test_the_quote_explains_hostile_reference_ids(bob, accounts, value):
    response = session(bob).get(
        "/studio/quote", {"model": "flux-2-max", "reference_images": value}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert 'class="error"' in response.content.decode()


@pytest.mark.parametrize("field", ["reference_images", "reference_uploads"])
@pytest.mark.parametrize("value", [*HOSTILE_IDS, "\x00"])
def test_generate_refuses_hostile_reference_ids(bob, accounts, field, value):
    if value == "":
        return  # an empty pick is no pick
    form = {"prompt": "a fox", "model": "flux-2-max", "provider": "sb-apiframe", "idempotency_key": "k1"}
    response = session(bob).post("/generate", form | {field: value}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Retarget"] == "#form-error"
    assert not Generation.objects.exists() and credits.account_for(bob).reserved == 0


def test_generate_refuses_a_hostile_idempotency_key(bob, accounts):
    form = {"prompt": "a fox", "model": "flux-2-max", "provider": "sb-apiframe", "idempotency_key": "a\x00b"}
    response = session(bob).post("/generate", form, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Retarget"] == "#form-error"
    assert not Generation.objects.exists()


# -- NUL characters: PostgreSQL refuses them in text, so they never reach a query ------------------------------
@pytest.mark.parametrize(
    "path", ["/api/v1/generations?q=a%00b", "/api/v1/generations?status=%00", "/api/v1/me?x%00=1"]
)
def test_the_api_refuses_a_nul_in_the_query_string(bob, path):
    assert_json_error(api(bob).get(path), 400, "invalid")


@pytest.mark.parametrize(
    "path", ["/?remix=%00", "/gallery?after=1%00", "/studio/quote?model=%00", "/admin/?q=%00"]
)
def test_pages_refuse_a_nul_in_the_query_string_in_words(alice, path):
    response = session(alice).get(path)
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")
    assert b"NUL" in response.content


# -- every URL pattern, walked with hostile input (test plan: no input reaches a 500) ----------------------------
# Query parameters any view reads, and the create body's fields: each request sets them all to one value.
PARAMS = [
    "remix", "after", "before", "model", "provider", "prompt", "reference_images", "reference_uploads",
    "cursor", "mine", "status", "q", "was", "n", "megapixels", "seed", "width", "height", "aspect_ratio",
    "output_format", "safety_tolerance", "prompt_upsampling", "idempotency_key", "user", "favorite",
]  # fmt: skip
VALID = {"model": "flux-2-max", "prompt": "a fox", "provider": "sb-apiframe"}
FIELDS = [  # the JSON create body's fields
    "prompt", "model", "provider", "n", "aspect_ratio", "megapixels", "width", "height", "seed", "output_format",
    "safety_tolerance", "prompt_upsampling", "reference_images", "reference_uploads",
]  # fmt: skip
QUERY_VALUES = [
    "²", "١٢", "9" * 30, str(2**63), "-1", "0", "", "1.5", "1e309", "NaN", "[1]", "a" * 6000, "../../../etc/passwd",
    "<script>", "%", "\u202e", "\U0001f600",
]  # fmt: skip
ID_VALUES = ["²", "9" * 30, "-1", "", "1.5", "\x00"]
JSON_VALUES = [
    "²", 10**30, -(2**63), -1, 0, 1.5, 1e308, "", None, True, [], ["²"], [10**30], [[1]], {}, {"a": 1}, "\ud800",
    "\x00", "a" * 6000, ["\ud800"],
]  # fmt: skip
ADMIN_PATHS = [
    "/admin/generations/generation/",
    "/admin/generations/provideraccount/",
    "/admin/generations/creditaccount/",
    "/admin/generations/ledgerentry/",
    "/admin/generations/price/",
    "/admin/generations/quota/",
    "/admin/generations/apitoken/",
    "/admin/generations/prompt/",
]
ADMIN_PARAMS = [
    "q",
    "p",
    "o",
    "e",
    "all",
    "id__exact",
    "status__exact",
    "user__id__exact",
    "_popup",
    "_to_field",
]


def walk_paths(job: Generation, image: Image) -> tuple[list[str], list[str]]:
    """Every page and API pattern: (paths with real ids, to try each parameter in turn; the same patterns
    with ids past the range and hostile strings where tokens go, to try once over)."""
    real, odd = [], []
    for prefix, patterns in (("/", page_patterns), ("/api/v1/", api_patterns)):
        for pattern in patterns:
            route = str(pattern.pattern)
            if route.startswith("^"):  # the API's catch-all
                odd += [prefix + "nothing/here", prefix + "generations/²", prefix + "generations/-1"]
                continue
            real.append(prefix + re.sub(r"<int:\w+>", str(image.pk if "image" in route else job.pk), route))
            values = ["0", "9" * 30, str(2**63)] if "<int:" in route else []
            values += ["not-a-token", "²", "%00", "a" * 300, "..%2F..%2Fetc"] if "<str:" in route else []
            odd += [prefix + re.sub(r"<(?:int|str):\w+>", value, route) for value in values]
    real = [re.sub(r"<str:\w+>", "not-a-token", path) for path in real]
    return [*dict.fromkeys(real), "/login/", "/logout/", "/admin/"], list(dict.fromkeys(odd))


SHARDS = 4  # the walk is the suite's longest test: in quarters, xdist's workers share it


@pytest.mark.parametrize("shard", range(SHARDS))
def test_no_hostile_input_reaches_a_500_on_any_url(bob, alice, accounts, image, shard):
    real, odd = walk_paths(image.generation, image)
    assert (
        len(real) >= len(page_patterns) + len(api_patterns) and len(odd) > 30
    )  # the walk covers the URL conf
    clients = {"session": session(bob), "token": api(bob)}
    for client in clients.values():
        client.raise_request_exception = False
    failures = []

    def check(client_name, method, path, response, what=""):
        where = f"{client_name} {method} {path[:100]} {what[:100]}"
        if response.status_code >= 500:
            failures.append(f"{where}: {response.status_code}")
        elif path.startswith("/api/") and response.status_code >= 400:
            if response["Content-Type"] != "application/json":
                failures.append(f"{where}: {response.status_code} not JSON")
        # Read streamed bodies through the client's wrapper, which closes them without closing the database.
        content = b"".join(response.streaming_content) if response.streaming else response.content
        if b"Traceback" in content:
            failures.append(f"{where}: traceback")

    def get(name, client, path, query):
        check(name, "GET", path, client.get(path, query, HTTP_HX_REQUEST="true"), repr(query))

    def post(name, client, path, form):
        check(name, "POST", path, client.post(path, form, HTTP_HX_REQUEST="true"), repr(form))

    def post_json(name, client, path, raw, content_type="application/json"):
        check(name, "POST json", path, client.post(path, raw, content_type=content_type), repr(raw))

    # Paths without an id in them get every parameter tried one at a time: deal those out first, so each
    # quarter takes its share of the slow ones.
    slow = [path for path in real if not re.search(r"/\d+(/|$)|not-a-token", path)]
    ordered = slow + [path for path in real + odd if path not in slow]
    for path in ordered[shard::SHARDS]:
        for name, client in clients.items():
            if name == "token" and not path.startswith("/api/"):
                continue
            if path in odd:  # the path itself is the hostile input
                for method in ("get", "post", "put", "delete"):
                    check(name, method.upper(), path, getattr(client, method)(path, HTTP_HX_REQUEST="true"))
                continue
            for value in QUERY_VALUES:  # every parameter hostile at once, with and without a valid form
                get(name, client, path, {param: value for param in PARAMS})
                get(name, client, path, {param: value for param in PARAMS} | VALID)
            for value in QUERY_VALUES[:8]:  # arrays where scalars belong
                post(name, client, path, {param: [value, value] for param in PARAMS})
            get(name, client, path + "?" + "&".join(f"{p}=1&{p}=²" for p in PARAMS), {})
            for raw in ("", "null", "[]", '"x"', "{", "[" * 5000, '{"prompt": 1e999}', "\x00", "\ufeff{}"):
                post_json(name, client, path, raw)
            post_json(name, client, path, json.dumps(VALID), content_type="text/plain")
            check(name, "PUT", path, client.put(path, "{}", content_type="application/json"))
            check(name, "DELETE", path, client.delete(path))
            if re.search(r"/\d+(/|$)|not-a-token", path):
                continue  # one object's page: its id is in the path, not the query
            # One hostile parameter at a time, the rest a valid create, so each gets past the form.
            for param in PARAMS:
                for value in ID_VALUES:
                    get(name, client, path, VALID | {param: value})
                    post(name, client, path, VALID | {"idempotency_key": "k"} | {param: value})
            if path.startswith("/api/"):
                for field in FIELDS:
                    for value in JSON_VALUES:
                        post_json(name, client, path, json.dumps(VALID | {field: value}))

    admin = session(alice)
    admin.raise_request_exception = False
    for path in ADMIN_PATHS[shard::SHARDS]:
        for value in QUERY_VALUES:
            get("admin", admin, path, {param: value for param in ADMIN_PARAMS})
        for value in ("²", "9" * 30, str(2**63), "-1", "0"):
            get("admin", admin, path + value + "/change/", {})

    assert not failures, "\n".join(failures[:40]) + f"\n({len(failures)} in all)"


# -- malformed requests, and failures, in the right shape ---------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/v1/generations", "/generate"])
def test_a_content_length_that_is_not_a_number_is_a_400(bob, accounts, path):
    client = session(bob)
    client.raise_request_exception = False
    response = client.post(path, "{}", content_type="application/json", CONTENT_LENGTH="lots")
    assert response.status_code == 400
    if path.startswith("/api/"):
        assert_json_error(response, 400, "invalid")


def test_a_multipart_body_past_its_files_allowance_is_a_413(bob, accounts, settings):
    settings.FLUXWEB_MAX_UPLOAD_BYTES = 1000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    big = SimpleUploadedFile("big.png", b"x" * 30_000, "image/png")  # past 10 000 + 8 files x 1000

    assert_json_error(api(bob).post("/api/v1/references", {"file": big}), 413, "too_large")
    big.seek(0)
    response = session(bob).post("/generate", {"prompt": "a fox", "reference_files": big})
    assert response.status_code == 413 and b"too large" in response.content


def test_too_many_fields_is_a_400_in_json_on_the_api(bob):
    query = "&".join(f"f{i}=1" for i in range(1100))  # past DATA_UPLOAD_MAX_NUMBER_FIELDS
    client = api(bob)
    client.raise_request_exception = False
    assert_json_error(client.get("/api/v1/generations?" + query), 400, "invalid")


def test_a_server_error_on_the_api_is_json_and_elsewhere_a_plain_page(bob, accounts, monkeypatch):
    from generations import api as api_module
    from generations import views

    def broken(*args, **kwargs):
        raise RuntimeError("boom: secret detail")

    monkeypatch.setattr(api_module, "me_payload", broken)
    monkeypatch.setattr(views, "studio_context", broken)
    client = api(bob)
    client.raise_request_exception = False
    error = assert_json_error(client.get("/api/v1/me"), 500, "server_error")
    assert "boom" not in error["message"]

    page = session(bob)
    page.raise_request_exception = False
    response = page.get("/")
    assert response.status_code == 500 and response["Content-Type"].startswith("text/html")
    assert b"boom" not in response.content and b"Traceback" not in response.content
