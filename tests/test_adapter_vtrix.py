"""Vtrix adapter: the input[0].params wrapper, every status word and error shape, validation. Pure; no database."""

import json
from dataclasses import replace

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generations.providers import PROVIDERS, Vtrix
from generations.providers import http as provider_http
from generations.providers.base import GenerationRequest, ProviderError, Unsupported

from .conftest import reply
from .emulators import garbage

# Examples from providers.md section 2, verbatim.
CREATED = '{"id":"d758n65e878c73cmdg20","status":"in_progress","model":"flux_2_max","created_at":1765432100}'
LEGACY_CREATED = '{"id":"task-legacy","status":"in_progress","model":"legacy_image"}'
COMPLETED = """{"id":"d758n65e878c73cmdg20","status":"completed","model":"flux_2_max","created_at":1765432100,
 "output":[{"content":[{"type":"image","url":"https://cdn.vtrix.ai/outputs/d758n65e878c73cmdg20/output.jpeg"}]}],
 "usage":{"cost":"0.0700","discount":0},
 "metadata":{}}"""
FAILED = """{"id":"d758n65e878c73cmdg20","status":"failed","model":"flux_2_max","created_at":1765432100,
 "error":{"code":"002014001","message":"Video generation failed"}}"""
OUTPUT_URL = "https://cdn.vtrix.ai/outputs/d758n65e878c73cmdg20/output.jpeg"
REFS = tuple(f"https://example.com/ref{i}.png" for i in range(1, 9))


@pytest.fixture
def adapter():
    return Vtrix("https://cloud.vtrix.ai", "vtrix-key")


def req(**kwargs) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a lighthouse", "model": "flux-2-max", **kwargs})


def params(adapter, **kwargs) -> dict:
    request = req(**kwargs)
    adapter.validate(request)
    return adapter.build_submit(request).json["input"][0]["params"]


def test_it_is_registered():
    assert PROVIDERS["vtrix"] is Vtrix
    assert not Vtrix.synchronous


def test_it_builds_the_wrapped_request(adapter):
    call = adapter.build_submit(req())
    assert call.method == "POST"
    assert call.path == "/model/v1/generation"
    assert call.headers == {"Authorization": "Bearer vtrix-key", "Accept": "application/json"}
    assert call.json == {
        "model": "flux_2_max",
        "input": [
            {"params": {"prompt": "a lighthouse", "width": 1024, "height": 1024, "output_format": "jpeg"}}
        ],
    }


@pytest.mark.parametrize(
    "kwargs,size",
    [
        ({"megapixels": 0.5, "aspect_ratio": "3:2"}, (880, 576)),
        ({"aspect_ratio": "16:9"}, (1360, 768)),
        ({"megapixels": 2.0, "aspect_ratio": "9:16"}, (1072, 1920)),
        ({"megapixels": 4.0}, (2048, 2048)),
        ({"width": 1024, "height": 768}, (1024, 768)),
        ({"width": 64, "height": 2048}, (64, 2048)),
    ],
)
def test_it_sends_width_and_height(adapter, kwargs, size):
    sent = params(adapter, **kwargs)
    assert (sent["width"], sent["height"]) == size


def test_it_sends_seed_safety_and_format(adapter):
    sent = params(adapter, seed=42, safety_tolerance=0, output_format="png")
    assert sent == {
        "prompt": "a lighthouse",
        "width": 1024,
        "height": 1024,
        "output_format": "png",
        "seed": 42,
        "safety_tolerance": 0,
    }
    assert params(adapter, safety_tolerance=5)["safety_tolerance"] == 5


def test_it_leaves_unset_options_to_the_provider(adapter):
    assert set(params(adapter)) == {"prompt", "width", "height", "output_format"}


def test_it_fills_every_reference_slot(adapter):
    sent = params(adapter, reference_urls=REFS)
    assert sent["input_image"] == REFS[0]
    assert [sent[f"input_image_{i}"] for i in range(2, 9)] == list(REFS[1:])
    assert "input_image_1" not in sent


@pytest.mark.parametrize("count", range(1, 9))
def test_it_fills_only_as_many_slots_as_images(adapter, count):
    slots = ["input_image", *(f"input_image_{i}" for i in range(2, 9))]
    sent = params(adapter, reference_urls=REFS[:count])
    assert [slot for slot in slots if slot in sent] == slots[:count]


def test_it_never_sends_a_webhook(adapter):
    call = adapter.build_submit(req(webhook_url="https://fluxweb.example/hooks/vtrix"))
    assert "webhook_url" not in call.json["input"][0]["params"]
    assert "webhook_url" not in call.json


@pytest.mark.parametrize("body,job_id", [(CREATED, "d758n65e878c73cmdg20"), (LEGACY_CREATED, "task-legacy")])
def test_it_parses_the_create_reply(adapter, body, job_id):
    outcome = adapter.parse_submit(reply(200, body))
    assert outcome.state == "pending"
    assert outcome.job_id == job_id
    assert outcome.raw_status == "in_progress"


def test_it_calls_a_create_reply_without_id_malformed_and_shows_the_error(adapter):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(reply(200, {"error": "model flux_2_max is busy"}))
    assert caught.value.code == ProviderError.MALFORMED
    assert "model flux_2_max is busy" in caught.value.message
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(reply(200, {"status": "in_progress"}))
    assert caught.value.code == ProviderError.MALFORMED


def test_it_polls_the_task(adapter):
    call = adapter.build_poll("d758n65e878c73cmdg20")
    assert (call.method, call.path) == ("GET", "/model/v1/generation/task/d758n65e878c73cmdg20")
    assert call.headers["Authorization"] == "Bearer vtrix-key"


def test_it_escapes_the_task_id_in_the_path(adapter):
    assert adapter.build_poll("../../llm/x?y").path == "/model/v1/generation/task/..%2F..%2Fllm%2Fx%3Fy"


def test_it_parses_the_completed_task(adapter):
    outcome = adapter.parse_poll(reply(200, COMPLETED))
    assert outcome.state == "succeeded"
    assert outcome.job_id == "d758n65e878c73cmdg20"
    assert outcome.image_urls == (OUTPUT_URL,)
    assert outcome.cost == "0.0700"
    assert outcome.raw_status == "completed"


def test_it_flattens_every_output_group(adapter):
    body = {
        "id": "t",
        "status": "completed",
        "output": [
            {
                "content": [
                    {"type": "image", "url": "https://cdn.vtrix.ai/1.jpeg"},
                    {"type": "image", "url": "https://cdn.vtrix.ai/2.jpeg"},
                ]
            },
            {"content": [{"type": "image", "url": "https://cdn.vtrix.ai/3.jpeg", "img_id": 3}]},
        ],
        "usage": {"cost": "0.21", "discount": 0, "quantity": 3, "unit_price": "0.07", "extra_info": {}},
    }
    outcome = adapter.parse_poll(reply(200, body))
    assert outcome.image_urls == (
        "https://cdn.vtrix.ai/1.jpeg",
        "https://cdn.vtrix.ai/2.jpeg",
        "https://cdn.vtrix.ai/3.jpeg",
    )
    assert outcome.cost == "0.21"


def test_it_treats_done_as_completed(adapter):
    body = json.loads(COMPLETED) | {"status": "done"}
    outcome = adapter.parse_poll(reply(200, body))
    assert outcome.state == "succeeded"
    assert outcome.raw_status == "done"


def test_it_calls_a_completed_task_without_output_malformed(adapter):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_poll(reply(200, {"id": "t", "status": "completed", "output": [{"content": []}]}))
    assert caught.value.code == ProviderError.MALFORMED


def test_it_parses_the_failed_task_with_code_and_message(adapter):
    outcome = adapter.parse_poll(reply(200, FAILED))
    assert outcome.state == "failed"
    assert outcome.error.code == ProviderError.FAILED
    assert outcome.error.message == "Video generation failed (code 002014001)"
    assert outcome.error.permanent


def test_it_parses_the_failed_task_with_a_plain_string(adapter):
    outcome = adapter.parse_poll(reply(200, {"id": "t", "status": "failed", "error": "upstream timeout"}))
    assert outcome.state == "failed"
    assert outcome.error.message == "upstream timeout"


def test_it_parses_the_failed_task_with_error_message_and_numeric_code(adapter):
    outcome = adapter.parse_poll(
        reply(
            200, {"id": "t", "status": "failed", "error": {"code": 123, "error_message": "bad input image"}}
        )
    )
    assert outcome.error.message == "bad input image (code 123)"


def test_it_recognises_a_moderated_failure(adapter):
    body = {
        "id": "t",
        "status": "failed",
        "error": {"code": "MODERATION", "message": "Prompt flagged by content moderation"},
    }
    assert adapter.parse_poll(reply(200, body)).error.code == ProviderError.MODERATION


def test_it_fails_without_an_error_body(adapter):
    outcome = adapter.parse_poll(reply(200, {"id": "t", "status": "failed"}))
    assert outcome.error.message == "Vtrix failed the task."


@pytest.mark.parametrize(
    "status,progress,expected",
    [
        ("in_progress", 0.42, 0.42),
        ("pending", None, None),
        ("processing", 0.9, 0.9),
        ("queued", 0, 0.0),
        ("IN_PROGRESS", 1.7, 1.0),
        ("something_new", "half", None),
    ],
)
def test_it_keeps_polling_every_other_status(adapter, status, progress, expected):
    body = {"id": "d758n65e878c73cmdg20", "status": status, "model": "flux_2_max", "created_at": 1765432100}
    if progress is not None:
        body["progress"] = progress
    outcome = adapter.parse_poll(reply(200, body))
    assert outcome.state == "pending"
    assert not outcome.terminal
    assert outcome.progress == expected
    assert outcome.raw_status == status


@pytest.mark.parametrize("body", [{"id": "t"}, [], "not json", b"\x00"])
def test_it_calls_a_task_without_status_malformed(adapter, body):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_poll(reply(200, body))
    assert caught.value.code == ProviderError.MALFORMED


@pytest.mark.parametrize(
    "status,body,code",
    [
        (
            401,
            {
                "error": {"code": "UNAUTHORIZED", "message": "Authorization Bearer or Key token is required"},
                "request_id": "r1",
            },
            ProviderError.AUTH,
        ),
        (401, {"message": "API key is missing or invalid"}, ProviderError.AUTH),
        (403, {"message": "Insufficient balance"}, ProviderError.PROVIDER_CREDIT),
        (403, {"error": "Insufficient balance or permission denied"}, ProviderError.PROVIDER_CREDIT),
        (
            403,
            {"error": {"code": "INSUFFICIENT_BALANCE", "message": "Please top up"}, "request_id": "r2"},
            ProviderError.PROVIDER_CREDIT,
        ),
        (403, {"detail": "Model not allowed for this user"}, ProviderError.AUTH),
        (404, {"detail": "App not found: flux_2_max"}, ProviderError.NOT_FOUND),
        (400, {"detail": "webhook not supported"}, ProviderError.INVALID),
        (500, {"error": "Internal server error"}, ProviderError.SERVER),
        (502, b"Bad Gateway", ProviderError.SERVER),
    ],
)
def test_it_maps_http_errors(adapter, status, body, code):
    err = adapter.error_for(reply(status, body))
    assert err.code == code
    assert err.status == status


def test_it_maps_429_with_retry_after(adapter):
    body = {
        "error": {"code": "RATE_LIMIT_EXCEEDED", "message": "Rate limit exceeded, please try again later"},
        "request_id": "r3",
    }
    err = adapter.error_for(reply(429, body, {"Retry-After": "12"}))
    assert err.code == ProviderError.RATE_LIMITED
    assert err.retry_after == 12.0
    assert "Rate limit exceeded" in err.message


def test_it_raises_http_errors_from_parse(adapter):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(reply(401, {"message": "API key is missing or invalid"}))
    assert caught.value.code == ProviderError.AUTH


def test_it_checks_the_key_with_an_unknown_task(adapter):
    call = adapter.build_check()
    assert call.method == "GET"
    assert call.path.startswith("/model/v1/generation/task/")
    assert call.headers["Authorization"] == "Bearer vtrix-key"
    adapter.parse_check(reply(404, {"detail": "Task not found"}))
    with pytest.raises(ProviderError) as caught:
        adapter.parse_check(reply(401, {"message": "API key is missing or invalid"}))
    assert caught.value.code == ProviderError.AUTH
    with pytest.raises(ProviderError) as caught:
        adapter.parse_check(reply(500, {"error": "Internal server error"}))
    assert caught.value.code == ProviderError.SERVER


@pytest.mark.parametrize(
    "kwargs,field,words",
    [
        ({"n": 2}, "n", "1 to 1 images"),
        (
            {"reference_urls": (*REFS, "https://example.com/ref9.png")},
            "reference_images",
            "at most 8 reference images",
        ),
        ({"safety_tolerance": 6}, "safety_tolerance", "between 0 and 5"),
        ({"safety_tolerance": -1}, "safety_tolerance", "between 0 and 5"),
        ({"aspect_ratio": "5:1"}, "aspect_ratio", "at most 4:1"),
        ({"output_format": "webp"}, "output_format", "writes jpeg, png"),
        ({"prompt_upsampling": True}, "prompt_upsampling", "no prompt upsampling"),
        ({"megapixels": 3.0}, "megapixels", "0.5 MP, 1 MP, 2 MP, 4 MP"),
        ({"width": 32, "height": 1024}, "width", "between 64 and 2048"),
        ({"width": 1000, "height": 770}, "width", "multiples of 16; try 1008x768"),
        ({"width": 2047, "height": 65}, "width", "try 2048x64"),
        ({"prompt": "x" * 5001}, "prompt", "at most 5000 characters"),
    ],
)
def test_it_refuses_what_vtrix_cannot_do(adapter, kwargs, field, words):
    with pytest.raises(Unsupported) as caught:
        adapter.validate(req(**kwargs))
    assert caught.value.field == field
    assert words in caught.value.message


def test_it_refuses_more_than_4_mp_of_custom_size():
    class WideVtrix(Vtrix):
        models = {"flux-2-max": replace(Vtrix.models["flux-2-max"], custom_size=(64, 4096))}

    adapter = WideVtrix("https://cloud.vtrix.ai", "k")
    with pytest.raises(Unsupported) as caught:
        adapter.validate(req(width=4096, height=1040))
    assert caught.value.message == "Vtrix makes at most 4 MP; 4096x1040 is 4.1 MP. Make it smaller."
    adapter.validate(req(width=4096, height=1024))


def test_it_accepts_a_full_request(adapter):
    adapter.validate(
        req(seed=1, safety_tolerance=5, output_format="png", reference_urls=REFS, width=2048, height=2048)
    )


def test_it_generates_end_to_end_through_the_http_seam(mock_http):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, content=CREATED.encode())
        return httpx.Response(200, content=COMPLETED.encode())

    mock_http(handler)
    adapter = Vtrix("http://127.0.0.1:8000/vtrix/", "vtrix-loopback")
    submitted = adapter.parse_submit(provider_http.send(adapter, adapter.build_submit(req(seed=5))))
    finished = adapter.parse_poll(provider_http.send(adapter, adapter.build_poll(submitted.job_id)))
    assert finished.image_urls == (OUTPUT_URL,)
    assert [str(r.url) for r in seen] == [
        "http://127.0.0.1:8000/vtrix/model/v1/generation",
        "http://127.0.0.1:8000/vtrix/model/v1/generation/task/d758n65e878c73cmdg20",
    ]
    assert all(r.headers["authorization"] == "Bearer vtrix-loopback" for r in seen)
    assert json.loads(seen[0].content)["input"][0]["params"]["seed"] == 5


# -- hostile replies (issue 7, defect 3): only a ProviderError ever comes out of a parser ------------------------
DOCUMENTED = [json.loads(body) for body in (CREATED, COMPLETED, FAILED)]


def test_no_hostile_poll_reply_escapes_as_anything_but_a_provider_error(adapter):
    assert garbage.escapes(adapter.parse_poll, DOCUMENTED) == []


def test_no_hostile_submit_reply_escapes_as_anything_but_a_provider_error(adapter):
    assert garbage.escapes(adapter.parse_submit, DOCUMENTED) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=garbage.json_values(), status=st.sampled_from([200, 400, 402, 403, 429, 500]))
def test_any_json_at_all_is_parsed_or_refused(body, status):
    adapter = Vtrix("https://cloud.vtrix.ai", "vtrix-key")
    for parse in (adapter.parse_poll, adapter.parse_submit):
        garbage.assert_parsed_or_refused(parse, garbage.as_reply(body, status))


@pytest.mark.parametrize("output", [5, "https://cdn.vtrix.ai/o.jpeg", {"content": []}, [{"content": 5}], [7]])
def test_a_completed_task_whose_output_is_not_a_list_of_groups_is_malformed(adapter, output):
    # A non-list `output` raised TypeError inside the sweep, which stopped polling for every job.
    with pytest.raises(ProviderError) as caught:
        adapter.parse_poll(reply(200, {"id": "t", "status": "completed", "output": output}))
    assert caught.value.code == ProviderError.MALFORMED


@pytest.mark.parametrize("status", [{"code": "completed"}, ["completed"], 3, True])
def test_a_status_that_is_not_a_word_is_malformed(adapter, status):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_poll(reply(200, {**json.loads(COMPLETED), "status": status}))
    assert caught.value.code == ProviderError.MALFORMED


def test_an_error_whose_message_is_an_object_still_fails_with_its_code(adapter):
    body = {"id": "t", "status": "failed", "error": {"code": {"x": 1}, "message": {"text": "no"}}}
    outcome = adapter.parse_poll(reply(200, body))
    assert (outcome.state, outcome.error.message) == ("failed", "Vtrix failed the task.")


def test_a_task_id_that_is_an_object_is_no_task_id(adapter):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(reply(200, {"id": {"value": "t"}, "status": "in_progress"}))
    assert caught.value.code == ProviderError.MALFORMED


# -- the providers' newest material (issue 7, defect 10) ------------------------------------------------------
@pytest.mark.parametrize(
    "error",
    [
        "Image generation failed",
        {"code": "002014001", "message": "Image generation failed"},
        {"code": 500, "error_message": "Image generation failed"},
    ],
)
@pytest.mark.parametrize("output", [None, [], [{"content": []}]])
def test_a_completed_task_with_an_error_and_no_output_is_a_failure(adapter, error, output):
    # SeaCloud's own client turns COMPLETED+error into failed [SC-CLI]; it was retried as malformed until
    # the deadline.
    body = {"id": "t", "status": "completed", "error": error}
    if output is not None:
        body["output"] = output
    outcome = adapter.parse_poll(reply(200, body))
    assert outcome.state == "failed"
    assert outcome.error.code == ProviderError.FAILED
    assert outcome.error.message.startswith("Image generation failed")


def test_a_completed_task_with_an_error_and_its_images_succeeds(adapter):
    body = {**json.loads(COMPLETED), "error": {"code": "W1", "message": "upscaler skipped"}}
    assert adapter.parse_poll(reply(200, body)).image_urls == (OUTPUT_URL,)


ENVELOPE_402 = {"status": {"code": 402, "message": "Insufficient credits", "error_code": 40201}, "data": None}


@pytest.mark.parametrize(
    ("status", "envelope", "code", "words"),
    [
        # The SeaCloud envelope on a 402 from submit [SC-CLI]: its words, not "HTTP 402".
        (
            402,
            ENVELOPE_402,
            ProviderError.PROVIDER_CREDIT,
            "out of credit: Insufficient credits (error code 40201)",
        ),
        # Codes 40201-40208 mean no balance whatever the HTTP status says.
        (
            400,
            {"status": {"code": 400, "message": "Account frozen", "error_code": 40208}, "data": None},
            ProviderError.PROVIDER_CREDIT,
            "out of credit: Account frozen (error code 40208)",
        ),
        (
            403,
            {"status": {"code": 403, "message": "Quota", "error_code": "40203"}, "data": None},
            ProviderError.PROVIDER_CREDIT,
            "out of credit",
        ),
        # 403 "insufficient balance" is the account's credit, not its key [providers.md, corrections 2].
        (
            403,
            {"status": {"code": 403, "message": "insufficient balance"}, "data": None},
            ProviderError.PROVIDER_CREDIT,
            "out of credit: insufficient balance",
        ),
        # Other envelopes keep the status's meaning, with their words.
        (
            403,
            {"status": {"code": 403, "message": "permission denied", "error_code": 40301}, "data": None},
            ProviderError.AUTH,
            "denied access: permission denied (error code 40301)",
        ),
        (
            401,
            {"status": {"code": 401, "message": "invalid api key"}, "data": None},
            ProviderError.AUTH,
            "refused the API key: invalid api key",
        ),
        (
            400,
            {"status": {"code": 400, "message": "bad width", "error_code": 40001}, "data": None},
            ProviderError.INVALID,
            "rejected the request: bad width (error code 40001)",
        ),
    ],
)
def test_it_reads_the_seacloud_status_envelope(adapter, status, envelope, code, words):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(reply(status, envelope))
    assert caught.value.code == code
    assert words in caught.value.message


def test_an_error_envelope_on_a_200_is_an_error_not_a_task_to_keep_polling(adapter):
    # Its `status` was an object, which the parser took for an unknown status word and kept polling on.
    for parse in (adapter.parse_submit, adapter.parse_poll):
        with pytest.raises(ProviderError) as caught:
            parse(reply(200, ENVELOPE_402))
        assert caught.value.code == ProviderError.PROVIDER_CREDIT


def test_a_task_wrapped_in_a_successful_envelope_is_read(adapter):
    body = {"status": {"code": 200, "message": "ok"}, "data": json.loads(CREATED)}
    outcome = adapter.parse_submit(reply(200, body))
    assert (outcome.state, outcome.job_id) == ("pending", "d758n65e878c73cmdg20")
