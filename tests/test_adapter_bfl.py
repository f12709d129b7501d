"""BFL adapter: x-key, POST /v1/<model>, the returned polling_url, every status of the enum, FastAPI errors,
validation. Pure; no database."""

import httpx
import pytest

from generations.providers import PROVIDERS, Bfl
from generations.providers import http as provider_http
from generations.providers.base import GenerationRequest, ProviderError, Unsupported

from .conftest import reply

# Examples from providers.md section 5 and BFL's skills repository [B1], verbatim.
CREATED = (
    '{"id":"d5ba37dc-2f5e-4a3b-9c5c-1a2b3c4d5e6f",'
    '"polling_url":"https://api.eu2.bfl.ai/v1/get_result?id=d5ba37dc-2f5e-4a3b-9c5c-1a2b3c4d5e6f",'
    '"cost":3.0,"input_mp":0.0,"output_mp":0.0}'
)
JOB_ID = "d5ba37dc-2f5e-4a3b-9c5c-1a2b3c4d5e6f"
POLLING_URL = f"https://api.eu2.bfl.ai/v1/get_result?id={JOB_ID}"
SAMPLE = (
    "https://delivery-eu1.bfl.ai/results/a2605d8fe8954dc581a87cabacd43815/sample.jpeg"
    "?se=2025-01-07T08%3A46%3A02Z&sp=r&sv=2024-11-04&sr=b&rsct=image/jpeg&sig=Y7EYAPPTG6rTIC"
)
READY = {"id": JOB_ID, "status": "Ready", "result": {"sample": SAMPLE, "seed": 1234}}
REFS = tuple(f"https://example.com/ref{i}.png" for i in range(1, 9))


@pytest.fixture
def adapter():
    return Bfl("https://api.bfl.ai", "bfl_test_key")


def req(**kwargs) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a lighthouse", "model": "flux-2-max", **kwargs})


def body(adapter, **kwargs) -> dict:
    request = req(**kwargs)
    adapter.validate(request)
    return adapter.build_submit(request).json


def test_it_is_registered_with_its_facts():
    assert PROVIDERS["bfl"] is Bfl
    assert not Bfl.synchronous and not Bfl.webhooks
    assert Bfl.default_base_url == "https://api.bfl.ai"
    assert "delivery-eu1.bfl.ai" in Bfl.result_hosts
    assert Bfl.cost_unit == "BFL credits"
    assert Bfl.default_prices["flux-2-max"] == {"1MP": 70, "2MP": 100, "4MP": 160, "input_mp": 30}
    assert set(Bfl.default_prices) == set(Bfl.models)
    assert Bfl.min_poll_interval == 0.5


def test_it_builds_the_request_with_the_x_key_header(adapter):
    call = adapter.build_submit(req())
    assert (call.method, call.path) == ("POST", "/v1/flux-2-max")
    assert call.headers == {"x-key": "bfl_test_key", "Accept": "application/json"}
    assert call.json == {"prompt": "a lighthouse", "width": 1024, "height": 1024, "output_format": "jpeg"}


def test_it_sends_flux_pro_2_to_the_flux_2_pro_endpoint(adapter):
    assert adapter.build_submit(req(model="flux-pro-2")).path == "/v1/flux-2-pro"


def test_it_sends_seed_safety_format_and_every_reference_slot(adapter):
    sent = body(adapter, seed=42, safety_tolerance=0, output_format="png", reference_urls=REFS)
    assert (sent["seed"], sent["safety_tolerance"], sent["output_format"]) == (42, 0, "png")
    assert sent["input_image"] == REFS[0]
    assert [sent[f"input_image_{i}"] for i in range(2, 9)] == list(REFS[1:])


def test_it_never_asks_for_a_webhook(adapter):
    assert "webhook_url" not in adapter.build_submit(req(webhook_url="https://fluxweb.example/h/1")).json


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"width": 1000, "height": 1024}, "width"),  # multiples of 16 [B1]
        ({"width": 2048, "height": 2048 + 16}, "width"),  # past 2048 a side
        ({"n": 2}, "n"),
        ({"output_format": "webp"}, "output_format"),
        ({"safety_tolerance": 6}, "safety_tolerance"),
        ({"prompt_upsampling": True}, "prompt_upsampling"),
        ({"reference_urls": (*REFS, "https://example.com/9.png")}, "reference_images"),
    ],
)
def test_it_refuses_what_bfl_would_refuse(adapter, kwargs, field):
    with pytest.raises(Unsupported) as refused:
        adapter.validate(req(**kwargs))
    assert refused.value.field == field


def test_it_suggests_the_nearest_size_in_multiples_of_16(adapter):
    with pytest.raises(Unsupported, match="multiples of 16; try 1008x1024"):
        adapter.validate(req(width=1000, height=1024))


def test_it_parses_the_submit_reply_with_its_polling_url_and_cost(adapter):
    outcome = adapter.parse_submit(reply(200, CREATED))
    assert (outcome.state, outcome.job_id, outcome.poll_url, outcome.cost) == (
        "pending",
        JOB_ID,
        POLLING_URL,
        "3.0",
    )


@pytest.mark.parametrize("data", [{}, {"polling_url": POLLING_URL}, {"id": {"x": 1}}, [], "ok"])
def test_a_submit_reply_without_an_id_is_malformed(adapter, data):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(reply(200, data))
    assert caught.value.code == ProviderError.MALFORMED


def test_it_polls_the_returned_polling_url_on_bfl_s_regional_host(adapter):
    call = adapter.build_poll(JOB_ID, POLLING_URL)
    assert (call.method, call.path) == ("GET", POLLING_URL)
    assert call.headers["x-key"] == "bfl_test_key"


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/v1/get_result?id=1",
        "https://bfl.ai.evil.example/v1/get_result?id=1",
        "https://notbfl.ai/v1/get_result?id=1",
        "http://api.eu2.bfl.ai/v1/get_result?id=1",  # the key never goes over plain http
        "https://api.eu2.bfl.ai:8443/v1/get_result?id=1",
        "https://user:pw@api.eu2.bfl.ai/v1/get_result?id=1",
    ],
)
def test_it_never_sends_the_key_to_a_polling_url_off_bfl(adapter, url):
    call = adapter.build_poll(JOB_ID, url)
    assert call.path == f"/v1/get_result?id={JOB_ID}"  # the account's own host instead


def test_it_follows_a_polling_url_on_the_account_s_own_host():
    adapter = Bfl("http://127.0.0.1:8765/bfl", "bfl_k")
    url = "http://127.0.0.1:8765/bfl/v1/get_result?id=abc"
    assert adapter.build_poll("abc", url).path == url
    assert adapter.build_poll("a b", None).path == "/v1/get_result?id=a%20b"


def test_it_reads_a_ready_job_s_signed_sample(adapter):
    outcome = adapter.parse_poll(reply(200, READY))
    assert (outcome.state, outcome.image_urls, outcome.seed) == ("succeeded", (SAMPLE,), 1234)


@pytest.mark.parametrize("word", ["Pending", "Generating", "Reasoning", "Queued"])
def test_it_keeps_polling_while_pending(adapter, word):
    outcome = adapter.parse_poll(reply(200, {"id": JOB_ID, "status": word, "progress": 0.4}))
    assert (outcome.state, outcome.progress) == ("pending", 0.4)


@pytest.mark.parametrize(
    "word,what", [("Request Moderated", "the prompt"), ("Content Moderated", "the image it made")]
)
def test_a_moderated_job_fails_as_moderation(adapter, word, what):
    outcome = adapter.parse_poll(
        reply(200, {"id": JOB_ID, "status": word, "details": {"Moderation Reasons": []}})
    )
    assert (outcome.state, outcome.error.code) == ("failed", ProviderError.MODERATION)
    assert outcome.error.message == f"BFL's moderation refused {what}."


@pytest.mark.parametrize(
    "data,words",
    [
        ({"status": "Error", "error": "CUDA out of memory"}, "CUDA out of memory"),
        ({"status": "Error", "error": {"message": "Generation failed", "code": "x"}}, "Generation failed"),
        ({"status": "Failed"}, "BFL failed the job."),
        ({"status": "Error", "details": {"message": "bad input image"}}, "bad input image"),
    ],
)
def test_an_error_fails_the_job_in_bfl_s_words(adapter, data, words):
    outcome = adapter.parse_poll(reply(200, {"id": JOB_ID, **data}))
    assert (outcome.state, outcome.error.code, outcome.error.message) == (
        "failed",
        ProviderError.FAILED,
        words,
    )


def test_task_not_found_is_retried_a_few_times_not_failed_at_once(adapter):
    # Clients retry it briefly right after a submit [X6]: an unreadable reply counts towards the engine's
    # three-in-a-row limit instead of failing a paid job on the first one.
    with pytest.raises(ProviderError) as caught:
        adapter.parse_poll(reply(200, {"id": JOB_ID, "status": "Task not found"}))
    assert (caught.value.code, caught.value.permanent) == (ProviderError.MALFORMED, False)


@pytest.mark.parametrize(
    "result", [None, {}, {"sample": None}, {"sample": ["x"]}, "https://delivery-eu1.bfl.ai/x.jpeg"]
)
def test_a_ready_job_without_a_sample_is_malformed(adapter, result):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_poll(reply(200, {"id": JOB_ID, "status": "Ready", "result": result}))
    assert caught.value.code == ProviderError.MALFORMED


def test_a_ready_job_whose_sample_cannot_be_requested_fails_now(adapter):
    outcome = adapter.parse_poll(reply(200, {"status": "Ready", "result": {"sample": "http://[::1/x.jpeg"}}))
    assert (outcome.state, outcome.error.code) == ("failed", ProviderError.MALFORMED)


@pytest.mark.parametrize(
    "status,data,code,words",
    [
        (401, {"detail": "Invalid API key"}, ProviderError.AUTH, "BFL refused the API key: Invalid API key"),
        (403, {"detail": "Not authenticated"}, ProviderError.AUTH, "Not authenticated"),
        (402, {"detail": "Insufficient credits"}, ProviderError.PROVIDER_CREDIT, "out of credit"),
        (
            422,
            {
                "detail": [
                    {"loc": ["body", "width"], "msg": "must be a multiple of 16", "type": "value_error"}
                ]
            },
            ProviderError.INVALID,
            "BFL rejected the request: width: must be a multiple of 16",
        ),
        (
            429,
            {"error": "rate_limit_exceeded", "message": "Too many concurrent requests", "retry_after": 5},
            ProviderError.RATE_LIMITED,
            "Too many concurrent requests (rate_limit_exceeded)",
        ),
        (503, {"detail": "Service Unavailable"}, ProviderError.SERVER, "server error"),
    ],
)
def test_it_maps_bfl_s_error_replies(adapter, status, data, code, words):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(reply(status, data, {"Retry-After": "5"} if status == 429 else None))
    assert caught.value.code == code
    assert words in caught.value.message
    if status == 429:
        assert caught.value.retry_after == 5.0


@pytest.mark.parametrize("status,data", [(404, {"detail": "Not Found"}), (200, {"status": "Task not found"})])
def test_the_connection_check_passes_a_key_bfl_accepts(adapter, status, data):
    call = adapter.build_check()
    assert call.path == "/v1/get_result?id=fluxweb-check" and call.headers["x-key"] == "bfl_test_key"
    adapter.parse_check(reply(status, data))


def test_the_connection_check_fails_a_key_bfl_refuses(adapter):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_check(reply(401, {"detail": "Invalid API key"}))
    assert caught.value.code == ProviderError.AUTH


def test_it_sends_through_the_one_seam(adapter, mock_http):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=CREATED)

    mock_http(handler)
    outcome = adapter.parse_submit(provider_http.send(adapter, adapter.build_submit(req())))
    assert outcome.job_id == JOB_ID
    assert str(seen[0].url) == "https://api.bfl.ai/v1/flux-2-max"
    assert seen[0].headers["x-key"] == "bfl_test_key"
