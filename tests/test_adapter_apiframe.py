"""Apiframe adapter: request building, the documented job states, errors, webhook signatures. Pure; no database."""

import hashlib
import hmac
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generations.providers import PROVIDERS, Apiframe
from generations.providers import http as provider_http
from generations.providers.base import GenerationRequest, ProviderError, Unsupported

from .conftest import reply
from .emulators import garbage

JOB_ID = "a1b2c3d4-e5f6-7890-abcd-ef1234567890"
# Job states from providers.md section 3, verbatim.
QUEUED = '{"id":"a1b2c3d4-e5f6-7890-abcd-ef1234567890","status":"QUEUED","model":"flux-2-max","progress":0,"result":null,"error":null,"creditCost":10,"webhookStatus":null,"createdAt":"2026-03-15T10:00:00.000Z","completedAt":null}'
PROCESSING = '{"id":"…","status":"PROCESSING","model":"flux-2-max","progress":65,"result":null,"error":null,"creditCost":10,"webhookStatus":null,"createdAt":"…","completedAt":null}'
COMPLETED = '{"id":"…","status":"COMPLETED","model":"flux-2-max","progress":100,"result":{"images":["https://cdn2.apiframe.ai/images/a1b2c3d4-e5f6-7890-abcd-ef1234567890-1.png"]},"error":null,"creditCost":10,"webhookStatus":"delivered","createdAt":"…","completedAt":"2026-03-15T10:00:32.000Z","expired":false}'
FAILED = '{"id":"…","status":"FAILED","model":"flux-2-max","progress":0,"result":null,"error":"Provider returned an error: content policy violation","creditCost":0,"webhookStatus":"delivered","createdAt":"…","completedAt":"2026-03-15T10:00:05.000Z"}'
BARE_RESULT = "https://cdn.apiframe.ai/results/a1b2c3d4.png"
# Webhook events, verbatim.
EVENT_COMPLETED = '{"event":"completed","jobId":"…","status":"COMPLETED","progress":100,"result":"https://cdn.apiframe.ai/results/a1b2c3d4.png","model":"midjourney","creditCost":10,"completedAt":"2026-03-15T10:00:32.000Z"}'
EVENT_FAILED = '{"event":"failed","jobId":"…","status":"FAILED","error":"Provider returned an error: content policy violation","model":"midjourney"}'
EVENT_PROGRESS = '{"event":"progress","jobId":"…","status":"PROCESSING","progress":45,"model":"midjourney"}'
API_KEY = "afk_test_key"


@pytest.fixture
def adapter():
    return Apiframe("https://api.apiframe.ai", API_KEY)


def req(**kwargs) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red fox", "model": "flux-2-max", **kwargs})


def sign(body: bytes, api_key: str = API_KEY) -> str:
    return hmac.new(hashlib.sha256(api_key.encode()).digest(), body, hashlib.sha256).hexdigest()


def test_it_is_registered():
    assert PROVIDERS["apiframe"] is Apiframe
    assert Apiframe.webhooks


def test_it_builds_the_generate_request(adapter):
    call = adapter.build_submit(req())
    assert call.method == "POST"
    assert call.path == "/v2/images/generate"
    assert call.headers == {"X-API-Key": API_KEY, "Accept": "application/json"}
    assert call.json == {
        "prompt": "a red fox",
        "model": "flux-2-max",
        "fluxParams": {
            "resolution": "1MP",
            "aspect_ratio": "1:1",
            "output_format": "jpg",
            "prompt_upsampling": False,
            "output_quality": 90,
        },
    }


@pytest.mark.parametrize("megapixels,resolution", [(0.5, "0.5MP"), (1.0, "1MP"), (2.0, "2MP"), (4.0, "4MP")])
def test_it_sends_the_resolution_without_a_space(adapter, megapixels, resolution):
    assert adapter.build_submit(req(megapixels=megapixels)).json["fluxParams"]["resolution"] == resolution


@pytest.mark.parametrize("ratio", ["1:1", "3:4", "4:3", "9:16", "16:9"])
def test_it_sends_each_aspect_ratio(adapter, ratio):
    adapter.validate(req(aspect_ratio=ratio))
    assert adapter.build_submit(req(aspect_ratio=ratio)).json["fluxParams"]["aspect_ratio"] == ratio


@pytest.mark.parametrize(
    "fmt,sent,quality", [("jpeg", "jpg", 90), ("webp", "webp", 90), ("png", "png", None)]
)
def test_it_sends_the_format_and_quality(adapter, fmt, sent, quality):
    params = adapter.build_submit(req(output_format=fmt)).json["fluxParams"]
    assert params["output_format"] == sent
    assert params.get("output_quality") == quality


def test_it_sends_seed_upsampling_and_reference_images(adapter):
    refs = tuple(f"https://example.com/{i}.png" for i in range(8))
    request = req(seed=7, prompt_upsampling=True, reference_urls=refs)
    adapter.validate(request)
    params = adapter.build_submit(request).json["fluxParams"]
    assert params["seed"] == 7
    assert params["prompt_upsampling"] is True
    assert params["input_images"] == list(refs)


def test_it_asks_for_a_webhook_with_the_schema_key(adapter):
    body = adapter.build_submit(req(webhook_url="https://fluxweb.example/hooks/apiframe")).json
    assert body["webhookUrl"] == "https://fluxweb.example/hooks/apiframe"
    assert body["webhookEvents"] == ["completed", "failed"]
    assert "webhook_url" not in body


def test_it_sends_the_idempotency_key_capped_at_255(adapter):
    assert adapter.build_submit(req(idempotency_key="gen-42")).headers["Idempotency-Key"] == "gen-42"
    assert len(adapter.build_submit(req(idempotency_key="k" * 300)).headers["Idempotency-Key"]) == 255
    assert "Idempotency-Key" not in adapter.build_submit(req()).headers


def test_it_parses_the_202_accepted_reply(adapter):
    outcome = adapter.parse_submit(reply(202, {"jobId": JOB_ID, "status": "QUEUED"}))
    assert outcome.state == "pending"
    assert outcome.job_id == JOB_ID
    assert outcome.raw_status == "QUEUED"


def test_it_calls_an_accepted_reply_without_job_id_malformed(adapter):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(reply(202, {"status": "QUEUED"}))
    assert caught.value.code == ProviderError.MALFORMED


def test_it_polls_the_job(adapter):
    call = adapter.build_poll(JOB_ID)
    assert (call.method, call.path) == ("GET", f"/v2/jobs/{JOB_ID}")
    assert call.headers["X-API-Key"] == API_KEY


@pytest.mark.parametrize("body,progress,status", [(QUEUED, 0.0, "QUEUED"), (PROCESSING, 0.65, "PROCESSING")])
def test_it_keeps_polling_queued_and_processing_jobs(adapter, body, progress, status):
    outcome = adapter.parse_poll(reply(200, body))
    assert outcome.state == "pending"
    assert outcome.progress == progress
    assert outcome.raw_status == status


def test_it_parses_a_completed_job_with_a_result_object(adapter):
    outcome = adapter.parse_poll(reply(200, COMPLETED))
    assert outcome.state == "succeeded"
    assert outcome.image_urls == (
        "https://cdn2.apiframe.ai/images/a1b2c3d4-e5f6-7890-abcd-ef1234567890-1.png",
    )
    assert outcome.cost == "10"
    assert outcome.raw_status == "COMPLETED"


def test_it_parses_a_completed_job_with_a_bare_string_result(adapter):
    data = json.loads(COMPLETED) | {"result": BARE_RESULT}
    assert adapter.parse_poll(reply(200, data)).image_urls == (BARE_RESULT,)


def test_it_calls_a_completed_job_without_result_malformed(adapter):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_poll(reply(200, json.loads(COMPLETED) | {"result": None}))
    assert caught.value.code == ProviderError.MALFORMED


def test_it_fails_a_completed_job_whose_images_expired(adapter):
    outcome = adapter.parse_poll(reply(200, json.loads(COMPLETED) | {"expired": True}))
    assert outcome.state == "failed"
    assert outcome.error.code == ProviderError.EXPIRED


def test_it_parses_the_failed_job_as_moderation(adapter):
    outcome = adapter.parse_poll(reply(200, FAILED))
    assert outcome.state == "failed"
    assert outcome.error.code == ProviderError.MODERATION
    assert outcome.error.message == "Provider returned an error: content policy violation"
    assert outcome.cost == "0"


def test_it_parses_a_plain_failure(adapter):
    outcome = adapter.parse_poll(
        reply(200, json.loads(FAILED) | {"error": "Provider returned an error: timeout"})
    )
    assert outcome.error.code == ProviderError.FAILED


def test_it_parses_a_cancelled_job(adapter):
    outcome = adapter.parse_poll(reply(200, json.loads(QUEUED) | {"status": "CANCELLED"}))
    assert outcome.state == "failed"
    assert outcome.error.message == "The job was cancelled at Apiframe."
    assert outcome.raw_status == "CANCELLED"


def test_it_calls_a_job_without_status_malformed(adapter):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_poll(reply(200, {"id": JOB_ID}))
    assert caught.value.code == ProviderError.MALFORMED


def test_it_parses_webhook_events(adapter):
    done = adapter.parse_job(json.loads(EVENT_COMPLETED))
    assert (done.state, done.image_urls, done.job_id) == ("succeeded", (BARE_RESULT,), "…")
    assert adapter.parse_job(json.loads(EVENT_FAILED)).error.code == ProviderError.MODERATION
    progress = adapter.parse_job(json.loads(EVENT_PROGRESS))
    assert (progress.state, progress.progress) == ("pending", 0.45)


@pytest.mark.parametrize(
    "status,body,code",
    [
        (
            400,
            {"error": "Invalid request body", "details": {"fluxParams.resolution": ["Invalid enum value"]}},
            ProviderError.INVALID,
        ),
        (401, {"error": "API key is required"}, ProviderError.AUTH),
        (401, {"error": "Invalid API key"}, ProviderError.AUTH),
        (
            402,
            {"error": "Insufficient credits", "creditsRequired": 10, "creditsAvailable": 2},
            ProviderError.PROVIDER_CREDIT,
        ),
        (403, {"error": "API key is inactive"}, ProviderError.AUTH),
        (404, {"error": "Job not found"}, ProviderError.NOT_FOUND),
        (409, {"error": "Idempotency-Key reused with a different request body"}, ProviderError.INVALID),
        (503, {"error": "Service temporarily unavailable"}, ProviderError.SERVER),
    ],
)
def test_it_maps_http_errors(adapter, status, body, code):
    err = adapter.error_for(reply(status, body))
    assert err.code == code
    assert err.status == status
    assert body["error"] in err.message


def test_it_maps_429_with_retry_after(adapter):
    err = adapter.error_for(reply(429, {"error": "Too many requests"}, {"Retry-After": "5"}))
    assert err.code == ProviderError.RATE_LIMITED
    assert err.retry_after == 5.0
    assert not err.permanent


def test_it_raises_errors_from_parse_and_non_json(adapter):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(
            reply(402, {"error": "Insufficient credits", "creditsRequired": 10, "creditsAvailable": 2})
        )
    assert caught.value.code == ProviderError.PROVIDER_CREDIT
    with pytest.raises(ProviderError) as caught:
        adapter.parse_poll(reply(200, b"<html>gateway</html>"))
    assert caught.value.code == ProviderError.MALFORMED


def test_it_checks_the_key_on_me(adapter):
    call = adapter.build_check()
    assert (call.method, call.path) == ("GET", "/v2/me")
    adapter.parse_check(reply(200, {"id": "user"}))


@pytest.mark.parametrize(
    "kwargs,field,words",
    [
        ({"n": 2}, "n", "1 to 1 images"),
        ({"aspect_ratio": "21:9"}, "aspect_ratio", "1:1, 3:4, 4:3, 9:16, 16:9"),
        (
            {"reference_urls": tuple(f"https://e.com/{i}.png" for i in range(9))},
            "reference_images",
            "at most 8",
        ),
        ({"safety_tolerance": 2}, "safety_tolerance", "no safety tolerance"),
        # Sizes go as a ratio at a tier: one that is not near a ratio at a tier is refused, with the
        # nearest it makes; the schema's 256-2048 bounds and our 4:1 still hold.
        ({"width": 1000, "height": 1000}, "width", "The nearest it makes is 1024x1024"),
        ({"width": 1024, "height": 1024, "megapixels": 3.0}, "megapixels", "offers 0.5 MP"),
        ({"width": 2304, "height": 1024}, "width", "between 256 and 2048"),
        ({"width": 2048, "height": 256}, "aspect_ratio", "at most 4:1"),
        ({"prompt": "x" * 2001}, "prompt", "at most 2000 characters"),
    ],
)
def test_it_refuses_what_apiframe_cannot_do(adapter, kwargs, field, words):
    with pytest.raises(Unsupported) as caught:
        adapter.validate(req(**kwargs))
    assert caught.value.field == field
    assert words in caught.value.message


def test_it_verifies_a_prefixed_signature(adapter):
    body = EVENT_COMPLETED.encode()
    assert adapter.verify_webhook({"X-Webhook-Signature": f"sha256={sign(body)}"}, body)


def test_it_verifies_a_bare_hex_signature_in_any_header_case(adapter):
    body = EVENT_FAILED.encode()
    assert adapter.verify_webhook({"x-webhook-signature": sign(body).upper()}, body)


def test_it_rejects_a_tampered_body(adapter):
    body = EVENT_COMPLETED.encode()
    assert not adapter.verify_webhook(
        {"X-Webhook-Signature": f"sha256={sign(body)}"}, body.replace(b"10", b"0")
    )


def test_it_rejects_a_signature_made_with_another_key(adapter):
    body = EVENT_COMPLETED.encode()
    assert not adapter.verify_webhook({"X-Webhook-Signature": f"sha256={sign(body, 'afk_other')}"}, body)


def test_it_rejects_a_signature_keyed_with_the_hex_digest(adapter):
    body = EVENT_COMPLETED.encode()
    hex_key = hashlib.sha256(API_KEY.encode()).hexdigest().encode()
    wrong = hmac.new(hex_key, body, hashlib.sha256).hexdigest()
    assert not adapter.verify_webhook({"X-Webhook-Signature": wrong}, body)


@pytest.mark.parametrize("headers", [{}, {"X-Webhook-Signature": ""}, {"X-Webhook-Signature": "sha256="}])
def test_it_rejects_a_missing_signature(adapter, headers):
    assert not adapter.verify_webhook(headers, EVENT_COMPLETED.encode())


def test_it_rejects_everything_without_an_api_key():
    body = EVENT_COMPLETED.encode()
    assert not Apiframe("https://api.apiframe.ai", "").verify_webhook(
        {"X-Webhook-Signature": sign(body, "")}, body
    )


def test_it_generates_end_to_end_through_the_http_seam(mock_http):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(202, json={"jobId": JOB_ID, "status": "QUEUED"})
        return httpx.Response(200, content=COMPLETED.encode())

    mock_http(handler)
    adapter = Apiframe("http://127.0.0.1:8000/apiframe", "afk_loopback")
    submitted = adapter.parse_submit(
        provider_http.send(adapter, adapter.build_submit(req(idempotency_key="gen-1")))
    )
    finished = adapter.parse_poll(provider_http.send(adapter, adapter.build_poll(submitted.job_id)))
    assert finished.state == "succeeded"
    assert [str(r.url) for r in seen] == [
        "http://127.0.0.1:8000/apiframe/v2/images/generate",
        f"http://127.0.0.1:8000/apiframe/v2/jobs/{JOB_ID}",
    ]
    assert seen[0].headers["x-api-key"] == "afk_loopback"
    assert seen[0].headers["idempotency-key"] == "gen-1"


# -- hostile replies (issue 7, defect 3): only a ProviderError ever comes out of a parser ------------------------
DOCUMENTED = [json.loads(body) for body in (QUEUED, PROCESSING, COMPLETED, FAILED, EVENT_COMPLETED)]
SUBMITTED = {"jobId": JOB_ID, "status": "QUEUED"}


def test_no_hostile_poll_reply_escapes_as_anything_but_a_provider_error(adapter):
    assert garbage.escapes(adapter.parse_poll, DOCUMENTED) == []


def test_no_hostile_submit_reply_escapes_as_anything_but_a_provider_error(adapter):
    assert garbage.escapes(adapter.parse_submit, [SUBMITTED]) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=garbage.json_values(), status=st.sampled_from([200, 202, 400, 402, 404, 429, 500]))
def test_any_json_at_all_is_parsed_or_refused(body, status):
    adapter = Apiframe("https://api.apiframe.ai", API_KEY)
    for parse in (adapter.parse_poll, adapter.parse_submit):
        garbage.assert_parsed_or_refused(parse, garbage.as_reply(body, status))
    if isinstance(body, dict):
        try:
            garbage.assert_parsed_or_refused(lambda _: adapter.parse_job(body), garbage.as_reply(body))
        except ProviderError:
            pass


def test_an_error_object_where_the_string_belongs_fails_the_job_with_its_words(adapter):
    # Apiframe's parser called .lower() on it: the exception stopped the sweep for every job.
    body = {
        **json.loads(FAILED),
        "error": {"code": "E42", "message": "Provider returned an error: content policy"},
    }
    outcome = adapter.parse_poll(reply(200, body))
    assert outcome.state == "failed"
    assert outcome.error.code == ProviderError.MODERATION
    assert outcome.error.message == "Provider returned an error: content policy"


def test_an_error_object_without_words_still_fails_the_job(adapter):
    outcome = adapter.parse_poll(reply(200, {**json.loads(FAILED), "error": {"code": 7}}))
    assert (outcome.state, outcome.error.code, outcome.error.message) == (
        "failed",
        ProviderError.FAILED,
        "Apiframe failed the job.",
    )


@pytest.mark.parametrize("status", [12, None, ["COMPLETED"], {"value": "COMPLETED"}, ""])
def test_a_status_that_is_not_a_word_is_malformed_not_a_reason_to_keep_polling(adapter, status):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_poll(reply(200, {**json.loads(COMPLETED), "status": status}))
    assert caught.value.code == ProviderError.MALFORMED


@pytest.mark.parametrize("url", garbage.BAD_URLS[:2])
def test_a_result_link_that_cannot_be_requested_fails_the_job_at_once(adapter, url):
    outcome = adapter.parse_poll(reply(200, {**json.loads(COMPLETED), "result": {"images": [url]}}))
    assert outcome.state == "failed"
    assert outcome.error.code == ProviderError.MALFORMED
    assert outcome.error.message == "Apiframe finished the job but its image link cannot be used."


def test_usable_links_are_kept_beside_unusable_ones(adapter):
    result = {"images": ["http://[::1/x.png", BARE_RESULT, 7, {"url": None}]}
    outcome = adapter.parse_poll(reply(200, {**json.loads(COMPLETED), "result": result}))
    assert (outcome.state, outcome.image_urls) == ("succeeded", (BARE_RESULT,))


@pytest.mark.parametrize("job_id", [{"id": 1}, ["x"], True, "", "x" * 201, "a\x01b"])
def test_a_submit_reply_with_an_unusable_job_id_is_malformed(adapter, job_id):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(reply(202, {"jobId": job_id, "status": "QUEUED"}))
    assert caught.value.code == ProviderError.MALFORMED


def test_it_escapes_the_job_id_in_the_poll_path(adapter):
    assert adapter.build_poll("a/../b?c").path == "/v2/jobs/a%2F..%2Fb%3Fc"


def test_a_huge_error_string_is_cut_to_a_readable_length(adapter):
    outcome = adapter.parse_poll(reply(200, {**json.loads(FAILED), "error": "policy\n" + "x" * 10_000}))
    assert len(outcome.error.message) <= 300
    assert "\n" not in outcome.error.message


# -- the providers' newest material (issue 7, defect 10) ------------------------------------------------------
@pytest.mark.parametrize(
    "result",
    [
        {"images": [{"url": BARE_RESULT}]},
        {"images": [{"url": BARE_RESULT, "width": 1024}]},
        [{"url": BARE_RESULT}],
        {"url": BARE_RESULT},
    ],
)
def test_it_accepts_image_items_given_as_url_objects(adapter, result):
    # [AF-OAS]: image items are strings or {url} objects.
    outcome = adapter.parse_poll(reply(200, {**json.loads(COMPLETED), "result": result}))
    assert (outcome.state, outcome.image_urls) == ("succeeded", (BARE_RESULT,))


# -- sizes (issue 7, defect 11): width and height as the reduced ratio at their tier --------------------------
@pytest.mark.parametrize(
    ("size", "ratio", "resolution"),
    [
        ((1024, 1024), "1:1", "1MP"),
        ((1360, 768), "85:48", "1MP"),
        ((896, 1152), "7:9", "1MP"),
        ((1440, 1440), "1:1", "2MP"),
        ((1456, 1456), "1:1", "2MP"),
        ((720, 720), "1:1", "0.5MP"),
        ((2048, 2048), "1:1", "4MP"),
        ((2048, 512), "4:1", "1MP"),
    ],
)
def test_it_sends_width_and_height_as_the_reduced_ratio_at_their_tier(adapter, size, ratio, resolution):
    request = req(width=size[0], height=size[1])
    adapter.validate(request)
    params = adapter.build_submit(request).json["fluxParams"]
    assert (params["aspect_ratio"], params["resolution"]) == (ratio, resolution)
    assert "width" not in params and "height" not in params


def test_a_custom_size_is_offered_to_the_form():
    assert Apiframe.models["flux-2-max"].options()["custom_size"] == [256, 2048]


def test_ratios_at_4_mp_are_still_sent_as_before(adapter):
    # 16:9 at 4 MP is 2720x1536 in pixels, past the schema's 2048 a side: a ratio is never held to it.
    request = req(aspect_ratio="16:9", megapixels=4.0)
    adapter.validate(request)
    assert adapter.build_submit(request).json["fluxParams"]["resolution"] == "4MP"


@pytest.mark.parametrize(("size", "price"), [((1024, 1024), 70), ((1456, 1456), 100), ((1360, 768), 70)])
def test_a_custom_size_is_priced_at_the_tier_it_is_sent_as(db, size, price):
    from generations import credits

    # 1456x1456 is 2.02 MP of area, but Apiframe makes and bills it as 1:1 at 2 MP.
    assert credits.quote("apiframe", req(width=size[0], height=size[1])).total == price


def test_a_gateways_html_error_page_is_stored_as_words_not_markup():
    adapter = Apiframe("https://api.apiframe.ai", "afk")
    page = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>502</h1></body></html>"
    error = adapter.error_for(reply(502, page))
    assert "<" not in error.message and "502 Bad Gateway" in error.message
    bare = adapter.error_for(reply(502, b"<html><body><p>oops</p></body></html>"))
    assert "<" not in bare.message and "oops" in bare.message
    scripted = adapter.error_for(reply(502, b"<html><script>var x = 1;</script><p>down &amp; out</p></html>"))
    assert "var x" not in scripted.message and "down & out" in scripted.message
