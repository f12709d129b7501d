"""PixelDojo adapter: request building, statusUrl handling, output shapes, errors, validation. Pure; no database."""

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generations.providers import PROVIDERS, PixelDojo
from generations.providers import http as provider_http
from generations.providers.base import GenerationRequest, ProviderError, Unsupported

from .conftest import reply
from .emulators import garbage

# The two examples on the model page, verbatim [S004].
SUBMITTED = """{
  "jobId": "job_abc123...",
  "status": "pending",
  "statusUrl": "https://pixeldojo.ai/api/v1/jobs/job_abc123...",
  "creditCost": 2,
  "creditsRemaining": 95,
  "expiresAt": "2025-01-23T12:00:00Z"
}"""
COMPLETED = """{
  "jobId": "job_abc123...",
  "status": "completed",
  "output": {
    "images": [
      "https://temp.pixeldojo.ai/pixeldojotemp/1705930123-456789.png"
    ]
  },
  "creditCost": 2,
  "expiresAt": "2025-01-23T12:00:00Z"
}"""
IMAGE = "https://temp.pixeldojo.ai/pixeldojotemp/1705930123-456789.png"
RATIOS = ("1:1", "16:9", "9:16", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3")


@pytest.fixture
def adapter():
    return PixelDojo("https://pixeldojo.ai", "pd_test")


def req(**kwargs) -> GenerationRequest:
    return GenerationRequest(
        **{"prompt": "A beautiful mountain landscape at golden hour", "model": "flux-2-max", **kwargs}
    )


def body(adapter, **kwargs) -> dict:
    request = req(**kwargs)
    adapter.validate(request)
    return adapter.build_submit(request).json


def test_it_is_registered():
    assert PROVIDERS["pixeldojo"] is PixelDojo


def test_it_builds_the_run_request(adapter):
    call = adapter.build_submit(req())
    assert call.method == "POST"
    assert call.path == "/api/v1/models/flux-2-max/run"
    assert call.headers == {"Authorization": "Bearer pd_test", "Accept": "application/json"}
    assert call.json == {
        "prompt": "A beautiful mountain landscape at golden hour",
        "aspect_ratio": "1:1",
        "resolution": "1 MP",
        "num_outputs": 1,
        "output_format": "jpg",
        "prompt_upsampling": False,
    }


@pytest.mark.parametrize("ratio", RATIOS)
def test_it_sends_each_aspect_ratio(adapter, ratio):
    assert body(adapter, aspect_ratio=ratio)["aspect_ratio"] == ratio


@pytest.mark.parametrize(
    "megapixels,resolution", [(0.5, "0.5 MP"), (1.0, "1 MP"), (2.0, "2 MP"), (4.0, "4 MP")]
)
def test_it_sends_the_resolution_with_a_space(adapter, megapixels, resolution):
    assert body(adapter, megapixels=megapixels)["resolution"] == resolution


@pytest.mark.parametrize("fmt,sent", [("jpeg", "jpg"), ("png", "png"), ("webp", "webp")])
def test_it_sends_the_output_format(adapter, fmt, sent):
    assert body(adapter, output_format=fmt)["output_format"] == sent


def test_it_sends_every_option(adapter):
    sent = body(
        adapter, n=4, seed=99, safety_tolerance=1, prompt_upsampling=True, aspect_ratio="4:5", megapixels=2.0
    )
    assert sent == {
        "prompt": "A beautiful mountain landscape at golden hour",
        "aspect_ratio": "4:5",
        "resolution": "2 MP",
        "num_outputs": 4,
        "output_format": "jpg",
        "prompt_upsampling": True,
        "seed": 99,
        "safety_tolerance": 1,
    }
    assert body(adapter, safety_tolerance=5)["safety_tolerance"] == 5


def test_it_leaves_seed_and_safety_to_the_provider_when_unset(adapter):
    sent = body(adapter)
    assert "seed" not in sent
    assert "safety_tolerance" not in sent


def test_it_never_sends_a_webhook(adapter):
    assert "webhook_url" not in adapter.build_submit(req(webhook_url="https://fluxweb.example/hooks/pd")).json


def test_it_parses_the_202_submit_reply(adapter):
    outcome = adapter.parse_submit(reply(202, SUBMITTED))
    assert outcome.state == "pending"
    assert outcome.job_id == "job_abc123..."
    assert outcome.poll_url == "https://pixeldojo.ai/api/v1/jobs/job_abc123..."
    assert outcome.cost == "2"
    assert outcome.raw_status == "pending"


def test_it_calls_a_submit_without_job_id_malformed(adapter):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(reply(202, {"status": "pending"}))
    assert caught.value.code == ProviderError.MALFORMED


def test_it_follows_a_status_url_on_the_accounts_own_host(adapter):
    call = adapter.build_poll("job_abc123...", "https://pixeldojo.ai/api/v1/jobs/job_abc123...")
    assert call.method == "GET"
    assert call.path == "https://pixeldojo.ai/api/v1/jobs/job_abc123..."
    assert call.headers["Authorization"] == "Bearer pd_test"


@pytest.mark.parametrize(
    "status_url",
    [
        "https://evil.example/api/v1/jobs/job_1",
        "http://pixeldojo.ai/api/v1/jobs/job_1",
        "https://pixeldojo.ai:8443/api/v1/jobs/job_1",
        "https://pixeldojo.ai.evil.example/api/v1/jobs/job_1",
        "https://pixeldojo.ai@evil.example/api/v1/jobs/job_1",
        "https://user:pw@pixeldojo.ai/api/v1/jobs/job_1",
        "https://pixeldojo.ai\\@evil.example/api/v1/jobs/job_1",
        "http://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
        "https://pixeldojo.ai:notaport/x",
        "//evil.example/api/v1/jobs/job_1",
        "",
    ],
)
def test_it_never_follows_a_status_url_elsewhere(adapter, status_url):
    assert adapter.build_poll("job_1", status_url).path == "/api/v1/jobs/job_1"


def test_it_builds_the_poll_path_without_a_status_url(adapter):
    assert adapter.build_poll("job_1").path == "/api/v1/jobs/job_1"
    assert adapter.build_poll("../models/x").path == "/api/v1/jobs/..%2Fmodels%2Fx"


def test_it_keeps_status_urls_under_the_base_path():
    adapter = PixelDojo("http://127.0.0.1:8000/pixeldojo", "k")
    inside = "http://127.0.0.1:8000/pixeldojo/api/v1/jobs/job_1"
    assert adapter.build_poll("job_1", inside).path == inside
    assert (
        adapter.build_poll("job_1", "http://127.0.0.1:8000/vtrix/api/v1/jobs/job_1").path
        == "/api/v1/jobs/job_1"
    )
    assert adapter.build_poll("job_1", "http://127.0.0.1:8000/pixeldojo-evil/x").path == "/api/v1/jobs/job_1"


def test_it_parses_the_completed_job(adapter):
    outcome = adapter.parse_poll(reply(200, COMPLETED))
    assert outcome.state == "succeeded"
    assert outcome.job_id == "job_abc123..."
    assert outcome.image_urls == (IMAGE,)
    assert outcome.cost == "2"
    assert outcome.raw_status == "completed"


@pytest.mark.parametrize(
    "extra",
    [
        {"output": {"image": IMAGE}},
        {"output": {"images": [{"url": IMAGE}]}},
        {"output": {"images": [IMAGE], "image": IMAGE}},
        {"output": {}, "assets": [{"url": IMAGE, "type": "image"}]},
        {"output": [IMAGE]},
        {"output": IMAGE},
    ],
)
def test_it_accepts_every_output_shape(adapter, extra):
    data = {"jobId": "job_1", "status": "completed", "creditCost": 2} | extra
    assert adapter.parse_poll(reply(200, data)).image_urls == (IMAGE,)


def test_it_keeps_every_image_in_order(adapter):
    images = [f"https://temp.pixeldojo.ai/pixeldojotemp/{i}.png" for i in range(4)]
    data = {"jobId": "job_1", "status": "completed", "output": {"images": images}}
    assert adapter.parse_poll(reply(200, data)).image_urls == tuple(images)


@pytest.mark.parametrize("output", [{}, {"images": []}, None, {"video": "https://x/v.mp4"}])
def test_it_calls_a_completed_job_without_images_malformed(adapter, output):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_poll(reply(200, {"jobId": "job_1", "status": "completed", "output": output}))
    assert caught.value.code == ProviderError.MALFORMED


def test_it_parses_a_failed_job(adapter):
    outcome = adapter.parse_poll(
        reply(200, {"jobId": "job_1", "status": "failed", "error": "Generation failed: upstream error"})
    )
    assert outcome.state == "failed"
    assert outcome.error.code == ProviderError.FAILED
    assert outcome.error.message == "Generation failed: upstream error"


def test_it_recognises_a_moderated_failure(adapter):
    outcome = adapter.parse_poll(
        reply(200, {"jobId": "job_1", "status": "failed", "error": {"message": "NSFW content detected"}})
    )
    assert outcome.error.code == ProviderError.MODERATION


def test_it_treats_cancelled_as_failed(adapter):
    outcome = adapter.parse_poll(reply(200, {"jobId": "job_1", "status": "cancelled"}))
    assert outcome.state == "failed"
    assert outcome.error.message == "The job was cancelled at PixelDojo."


@pytest.mark.parametrize("status", ["pending", "processing", "queued", "running"])
def test_it_keeps_polling_unfinished_jobs(adapter, status):
    outcome = adapter.parse_poll(reply(200, {"jobId": "job_1", "status": status}))
    assert outcome.state == "pending"
    assert outcome.job_id == "job_1"
    assert outcome.raw_status == status


@pytest.mark.parametrize("data", [{"jobId": "job_1"}, [], "oops"])
def test_it_calls_a_job_without_status_malformed(adapter, data):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_poll(reply(200, data))
    assert caught.value.code == ProviderError.MALFORMED


@pytest.mark.parametrize(
    "status,data",
    [
        (
            403,
            {
                "error": {
                    "code": "insufficient_credits",
                    "message": "Your account has insufficient credits",
                    "status": 403,
                }
            },
        ),
        (403, {"error": {"code": "insufficient_credits", "message": "Forbidden", "status": 403}}),
        (402, {"error": "Payment required"}),
        (
            402,
            {
                "error": {
                    "code": "insufficient_credits",
                    "message": "Your account has insufficient credits",
                    "status": 402,
                }
            },
        ),
    ],
)
def test_it_maps_402_and_403_insufficient_credits_alike(adapter, status, data):
    err = adapter.error_for(reply(status, data))
    assert err.code == ProviderError.PROVIDER_CREDIT
    assert err.permanent


@pytest.mark.parametrize(
    "status,data,code",
    [
        (
            401,
            {"error": {"code": "invalid_api_key", "message": "Invalid API key", "status": 401}},
            ProviderError.AUTH,
        ),
        (
            403,
            {"error": {"code": "forbidden", "message": "No permission", "status": 403}},
            ProviderError.AUTH,
        ),
        (
            400,
            {
                "error": {
                    "code": "invalid_request",
                    "message": "aspect_ratio must be one of ...",
                    "status": 400,
                }
            },
            ProviderError.INVALID,
        ),
        (
            404,
            {"error": {"code": "model_not_found", "message": "Model not found", "status": 404}},
            ProviderError.NOT_FOUND,
        ),
        (
            500,
            {"error": {"code": "server_error", "message": "Internal error", "status": 500}},
            ProviderError.SERVER,
        ),
        (503, b"Service Unavailable", ProviderError.SERVER),
    ],
)
def test_it_maps_http_errors(adapter, status, data, code):
    err = adapter.error_for(reply(status, data))
    assert err.code == code
    assert err.status == status


def test_it_maps_429_with_retry_after(adapter):
    err = adapter.error_for(
        reply(
            429,
            {"error": {"code": "rate_limited", "message": "Too many requests", "status": 429}},
            {"Retry-After": "30", "X-RateLimit-Remaining": "0"},
        )
    )
    assert err.code == ProviderError.RATE_LIMITED
    assert err.retry_after == 30.0


def test_it_checks_on_the_models_listing(adapter):
    call = adapter.build_check()
    assert (call.method, call.path) == ("GET", "/api/v1/models")
    assert call.headers["Authorization"] == "Bearer pd_test"
    adapter.parse_check(reply(200, {"models": []}))


@pytest.mark.parametrize(
    "kwargs,field,words",
    [
        ({"n": 5}, "n", "1 to 4 images"),
        (
            {"aspect_ratio": "21:9"},
            "aspect_ratio",
            "offers the aspect ratios 1:1, 16:9, 9:16, 3:2, 2:3, 4:5, 5:4, 3:4, 4:3",
        ),
        ({"width": 1024, "height": 1024}, "width", "does not take a custom width and height"),
        ({"reference_urls": ("https://example.com/a.png",)}, "reference_images", "no reference images"),
        ({"safety_tolerance": 6}, "safety_tolerance", "between 1 and 5"),
        # 1-5 [RP][PD-DOC]: 0 is not a PixelDojo setting.
        ({"safety_tolerance": 0}, "safety_tolerance", "between 1 and 5"),
        ({"megapixels": 3.0}, "megapixels", "0.5 MP, 1 MP, 2 MP, 4 MP"),
        ({"output_format": "gif"}, "output_format", "writes jpeg, png, webp"),
        ({"prompt": "   "}, "prompt", "Write a prompt"),
    ],
)
def test_it_refuses_what_pixeldojo_cannot_do(adapter, kwargs, field, words):
    with pytest.raises(Unsupported) as caught:
        adapter.validate(req(**kwargs))
    assert caught.value.field == field
    assert words in caught.value.message


def test_it_generates_end_to_end_through_the_http_seam(mock_http):
    seen = []
    base = "http://127.0.0.1:8000/pixeldojo"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            data = json.loads(SUBMITTED) | {"jobId": "job_9", "statusUrl": f"{base}/api/v1/jobs/job_9"}
            return httpx.Response(202, json=data)
        return httpx.Response(200, content=COMPLETED.encode())

    mock_http(handler)
    adapter = PixelDojo(base, "pd_loopback")
    submitted = adapter.parse_submit(provider_http.send(adapter, adapter.build_submit(req(n=2))))
    call = adapter.build_poll(submitted.job_id, submitted.poll_url)
    finished = adapter.parse_poll(provider_http.send(adapter, call))
    assert finished.image_urls == (IMAGE,)
    assert [str(r.url) for r in seen] == [f"{base}/api/v1/models/flux-2-max/run", f"{base}/api/v1/jobs/job_9"]
    assert all(r.headers["authorization"] == "Bearer pd_loopback" for r in seen)
    assert json.loads(seen[0].content)["num_outputs"] == 2


# -- hostile replies (issue 7, defect 3): only a ProviderError ever comes out of a parser ------------------------
DOCUMENTED = [
    json.loads(SUBMITTED),
    json.loads(COMPLETED),
    {"jobId": "job_1", "status": "failed", "error": "Generation failed"},
    {"jobId": "job_1", "status": "completed", "output": {"image": IMAGE}, "assets": [{"url": IMAGE}]},
]


def test_no_hostile_poll_reply_escapes_as_anything_but_a_provider_error(adapter):
    assert garbage.escapes(adapter.parse_poll, DOCUMENTED) == []


def test_no_hostile_submit_reply_escapes_as_anything_but_a_provider_error(adapter):
    assert garbage.escapes(adapter.parse_submit, DOCUMENTED) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=garbage.json_values(), status=st.sampled_from([200, 202, 400, 402, 403, 429, 500]))
def test_any_json_at_all_is_parsed_or_refused(body, status):
    adapter = PixelDojo("https://pixeldojo.ai", "pd_test")
    for parse in (adapter.parse_poll, adapter.parse_submit):
        garbage.assert_parsed_or_refused(parse, garbage.as_reply(body, status))


@pytest.mark.parametrize("status", [{"state": "completed"}, ["completed"], 1])
def test_a_status_that_is_not_a_word_is_malformed(adapter, status):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_poll(reply(200, {**json.loads(COMPLETED), "status": status}))
    assert caught.value.code == ProviderError.MALFORMED


def test_an_error_object_fails_the_job_with_its_words(adapter):
    body = {"jobId": "job_1", "status": "failed", "error": {"code": "server_error", "message": "GPU lost"}}
    outcome = adapter.parse_poll(reply(200, body))
    assert (outcome.state, outcome.error.message) == ("failed", "GPU lost")


@pytest.mark.parametrize(
    "status_url", ["http://[::1/x", "https://pixeldojo.ai/api/v1/jobs/\x01", 7, {"u": 1}]
)
def test_a_status_url_that_cannot_be_requested_is_not_followed(adapter, status_url):
    outcome = adapter.parse_submit(reply(202, {**json.loads(SUBMITTED), "statusUrl": status_url}))
    assert outcome.poll_url is None
    assert adapter.build_poll(outcome.job_id, outcome.poll_url).path == "/api/v1/jobs/job_abc123..."


def test_a_credit_cost_of_the_wrong_type_is_dropped_not_stored(adapter):
    outcome = adapter.parse_poll(reply(200, {**json.loads(COMPLETED), "creditCost": {"credits": 2}}))
    assert (outcome.state, outcome.cost) == ("succeeded", None)


# -- the providers' newest material (issue 7, defect 10) ------------------------------------------------------
@pytest.mark.parametrize("status", ["succeeded", "success", "SUCCEEDED"])
def test_other_success_words_end_the_job_with_its_images(adapter, status):
    outcome = adapter.parse_poll(reply(200, {**json.loads(COMPLETED), "status": status}))
    assert (outcome.state, outcome.image_urls) == ("succeeded", (IMAGE,))


@pytest.mark.parametrize(
    ("status", "code", "words"),
    [
        ("error", ProviderError.FAILED, "PixelDojo failed the job."),
        ("canceled", ProviderError.FAILED, "The job was cancelled at PixelDojo."),
        ("expired", ProviderError.EXPIRED, "PixelDojo let this job expire"),
    ],
)
def test_other_failure_words_end_the_job(adapter, status, code, words):
    # They were taken for "still running" and polled until the deadline.
    outcome = adapter.parse_poll(reply(200, {"jobId": "job_1", "status": status}))
    assert outcome.state == "failed"
    assert outcome.error.code == code
    assert outcome.error.message.startswith(words)
    assert outcome.error.permanent


def test_the_safety_tolerance_range_is_1_to_5():
    assert PixelDojo.models["flux-2-max"].options()["safety_tolerance"] == [1, 5]
