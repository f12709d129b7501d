"""MaxAPI adapter: request building, the documented 200 body, error mapping and validation. Pure; no database."""

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generations.providers import PROVIDERS, MaxApi
from generations.providers import http as provider_http
from generations.providers.base import GenerationRequest, ProviderError, Unsupported

from .conftest import reply
from .emulators import garbage

# The example response on the Create Image page, verbatim [S000].
DOC_200 = """{
    "images": [
        {
            "url": "https://flux-images.maxapi.ai/outputs/686a7b08-c678-4020-ac3a-ce90ef508f34_0.png",
            "width": "1024",
            "height": "1024",
            "content_type": "image/jpeg"
        }
    ],
    "timings": {
        "inference": 0.725739479996264
    },
    "seed": 1118944383,
    "has_nsfw_concepts": [
        false,
        false
    ],
    "prompt": "couple before a kiss, blonde girl, brunette man, magic, evening, romance"
}"""
DOC_PROMPT = "couple before a kiss, blonde girl, brunette man, magic, evening, romance"


@pytest.fixture
def adapter():
    return MaxApi("https://api.maxapi.ai/", "sk-test")


def req(**kwargs) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a cat", "model": "flux-plus", **kwargs})


def error(adapter, status, body, headers=None) -> ProviderError:
    return adapter.error_for(reply(status, body, headers))


def test_it_is_registered():
    assert PROVIDERS["maxapi"] is MaxApi
    assert MaxApi.synchronous is True
    assert set(MaxApi.models) == {"flux-plus", "flux-pro-2"}


def test_it_builds_the_documented_example(adapter):
    call = adapter.build_submit(req(prompt=DOC_PROMPT))
    assert call.method == "POST"
    assert call.path == "/v1/images/generations"
    assert call.headers == {"Authorization": "Bearer sk-test", "Accept": "application/json"}
    assert call.json == {"prompt": DOC_PROMPT, "model": "flux-plus", "n": 1, "size": "1024x1024"}


def test_it_sends_n_as_an_integer(adapter):
    assert adapter.build_submit(req(n=4)).json["n"] == 4


def test_it_names_flux_pro_2(adapter):
    assert adapter.build_submit(req(model="flux-pro-2")).json["model"] == "flux-pro-2"


@pytest.mark.parametrize(
    "kwargs,size",
    [
        ({}, "1024x1024"),
        ({"megapixels": 0.25}, "512x512"),
        ({"megapixels": 2.0}, "1440x1440"),
        ({"aspect_ratio": "16:9"}, "1360x768"),
        ({"aspect_ratio": "4:1", "megapixels": 0.25}, "1024x256"),
        ({"width": 256, "height": 256}, "256x256"),
        ({"width": 1536, "height": 1024}, "1536x1024"),
    ],
)
def test_it_sends_the_size_as_w_x_h(adapter, kwargs, size):
    request = req(**kwargs)
    adapter.validate(request)
    assert adapter.build_submit(request).json["size"] == size


def test_it_sends_no_seed_format_or_safety_fields(adapter):
    assert set(adapter.build_submit(req()).json) == {"model", "prompt", "n", "size"}


def test_it_parses_the_documented_200_body(adapter):
    outcome = adapter.parse_submit(reply(200, DOC_200))
    assert outcome.state == "succeeded"
    assert outcome.terminal
    assert outcome.image_urls == (
        "https://flux-images.maxapi.ai/outputs/686a7b08-c678-4020-ac3a-ce90ef508f34_0.png",
    )
    assert outcome.seed == 1118944383
    assert outcome.raw_status == "200"
    assert outcome.error is None


def test_it_keeps_every_image_of_a_multi_image_reply(adapter):
    body = {
        "images": [
            {"url": f"https://flux-images.maxapi.ai/outputs/x_{i}.png", "width": "512", "height": "512"}
            for i in range(3)
        ],
        "seed": 7,
        "has_nsfw_concepts": [False, False, False, False],
    }
    assert adapter.parse_submit(reply(200, body)).image_urls == tuple(
        f"https://flux-images.maxapi.ai/outputs/x_{i}.png" for i in range(3)
    )


def test_it_fails_as_moderation_when_every_image_is_flagged(adapter):
    body = json.loads(DOC_200)
    body["has_nsfw_concepts"] = [True, False]  # the extra flag belongs to no image
    outcome = adapter.parse_submit(reply(200, body))
    assert outcome.state == "failed"
    assert outcome.error.code == ProviderError.MODERATION
    assert outcome.error.permanent


def test_it_drops_only_the_flagged_images(adapter):
    body = {
        "images": [{"url": "https://a/0.png"}, {"url": "https://a/1.png"}],
        "has_nsfw_concepts": [True, False],
    }
    assert adapter.parse_submit(reply(200, body)).image_urls == ("https://a/1.png",)


def test_it_treats_missing_flags_as_clean(adapter):
    body = {"images": [{"url": "https://a/0.png"}, {"url": "https://a/1.png"}], "has_nsfw_concepts": [False]}
    assert adapter.parse_submit(reply(200, body)).image_urls == ("https://a/0.png", "https://a/1.png")


def test_it_accepts_the_openai_data_shape(adapter):
    body = {"created": 1, "data": [{"url": "https://a/0.png"}]}
    outcome = adapter.parse_submit(reply(200, body))
    assert outcome.image_urls == ("https://a/0.png",)
    assert outcome.seed is None


@pytest.mark.parametrize("body", [{"images": []}, {"images": [{"width": "1024"}]}, {}, [], "<html>ok</html>"])
def test_it_calls_a_200_without_images_malformed(adapter, body):
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(reply(200, body))
    assert caught.value.code == ProviderError.MALFORMED
    assert not caught.value.permanent


def test_it_refuses_to_poll(adapter):
    with pytest.raises(ProviderError) as caught:
        adapter.build_poll("anything")
    assert caught.value.code == ProviderError.INVALID
    assert "synchronously" in caught.value.message


def test_it_checks_the_key_on_the_models_listing(adapter):
    call = adapter.build_check()
    assert (call.method, call.path) == ("GET", "/v1/models")
    assert call.headers["Authorization"] == "Bearer sk-test"
    adapter.parse_check(reply(200, {"object": "list", "data": []}))
    with pytest.raises(ProviderError) as caught:
        adapter.parse_check(
            reply(
                401,
                {
                    "error": {
                        "message": "Invalid token",
                        "type": "new_api_error",
                        "param": "",
                        "code": "invalid_request",
                    }
                },
            )
        )
    assert caught.value.code == ProviderError.AUTH


def test_it_maps_a_bad_request(adapter):
    body = {
        "error": {
            "message": "prompt is required",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": None,
        }
    }
    err = error(adapter, 400, body)
    assert err.code == ProviderError.INVALID
    assert "prompt is required" in err.message
    assert err.status == 400


def test_it_maps_the_new_api_invalid_token_body(adapter):
    err = error(
        adapter,
        401,
        {
            "error": {
                "message": "Invalid token",
                "type": "new_api_error",
                "param": "",
                "code": "invalid_request",
            }
        },
    )
    assert err.code == ProviderError.AUTH
    assert "Invalid token" in err.message


def test_it_maps_403_without_model_access_to_auth(adapter):
    err = error(
        adapter,
        403,
        {"error": {"message": "this key has no access to model flux-pro-2", "type": "new_api_error"}},
    )
    assert err.code == ProviderError.AUTH


def test_it_maps_403_content_policy_to_moderation(adapter):
    err = error(
        adapter, 403, {"error": {"message": "Rejected by content policy", "code": "content_policy_violation"}}
    )
    assert err.code == ProviderError.MODERATION


def test_it_maps_404(adapter):
    assert error(adapter, 404, {"error": {"message": "model not found"}}).code == ProviderError.NOT_FOUND


def test_it_maps_429_rate_limit_with_retry_after(adapter):
    err = error(
        adapter,
        429,
        {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}},
        {"retry-after": "7"},
    )
    assert err.code == ProviderError.RATE_LIMITED
    assert err.retry_after == 7.0
    assert not err.permanent


@pytest.mark.parametrize(
    "body",
    [
        {
            "error": {
                "message": "You exceeded your current quota, please check your plan and billing details.",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        },
        {
            "error": {
                "message": "用户额度不足, 剩余额度: $0.00",
                "type": "new_api_error",
                "param": "",
                "code": "insufficient_user_quota",
            }
        },
        {"error": {"message": "Insufficient balance"}},
    ],
)
def test_it_tells_429_out_of_credit_from_rate_limit(adapter, body):
    err = error(adapter, 429, body)
    assert err.code == ProviderError.PROVIDER_CREDIT
    assert err.permanent


@pytest.mark.parametrize("status", [500, 502, 503])
def test_it_maps_server_errors(adapter, status):
    err = error(adapter, status, b"<html><body>502 Bad Gateway</body></html>")
    assert err.code == ProviderError.SERVER
    assert "Bad Gateway" in err.message


def test_it_maps_a_gateway_timeout(adapter):
    assert error(adapter, 504, {"error": {"message": "upstream timed out"}}).code == ProviderError.TIMEOUT


@pytest.mark.parametrize(
    "kwargs,field,words",
    [
        ({"n": 5}, "n", "1 to 4 images"),
        ({"n": 0}, "n", "1 to 4 images"),
        ({"prompt": "x" * 1001}, "prompt", "at most 1000 characters"),
        ({"seed": 1}, "seed", "does not take a seed"),
        ({"reference_urls": ("https://a/ref.png",)}, "reference_images", "no reference images"),
        ({"safety_tolerance": 2}, "safety_tolerance", "no safety tolerance"),
        ({"prompt_upsampling": True}, "prompt_upsampling", "no prompt upsampling"),
        ({"output_format": "png"}, "output_format", "writes jpeg"),
        ({"megapixels": 4.0}, "megapixels", "0.25 MP, 1 MP, 2 MP"),
        ({"width": 128, "height": 128}, "width", "between 256 and 2048"),
        ({"width": 1024}, "width", "both width and height"),
        ({"aspect_ratio": "4:1", "megapixels": 2.0}, "megapixels", "2896x720"),
        ({"model": "flux-2-max"}, "model", "serves flux-plus, flux-pro-2"),
    ],
)
def test_it_refuses_what_maxapi_cannot_do(adapter, kwargs, field, words):
    with pytest.raises(Unsupported) as caught:
        adapter.validate(req(**kwargs))
    assert caught.value.field == field
    assert words in caught.value.message


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"n": 4, "model": "flux-pro-2"},
        {"prompt": "x" * 1000},
        {"aspect_ratio": "21:9"},
        {"megapixels": 2.0},
    ],
)
def test_it_accepts_what_maxapi_can_do(adapter, kwargs):
    adapter.validate(req(**kwargs))


def test_it_generates_end_to_end_through_the_http_seam(mock_http):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=DOC_200.encode(), headers={"content-type": "application/json"})

    mock_http(handler)
    adapter = MaxApi("http://127.0.0.1:8000/maxapi", "sk-loopback")
    outcome = adapter.parse_submit(
        provider_http.send(adapter, adapter.build_submit(req(n=2, model="flux-pro-2")))
    )
    assert outcome.state == "succeeded"
    assert outcome.seed == 1118944383
    (sent,) = seen
    assert str(sent.url) == "http://127.0.0.1:8000/maxapi/v1/images/generations"
    assert sent.headers["authorization"] == "Bearer sk-loopback"
    assert json.loads(sent.content) == {"model": "flux-pro-2", "prompt": "a cat", "n": 2, "size": "1024x1024"}


def test_it_maps_an_http_error_end_to_end(mock_http):
    mock_http(
        lambda request: httpx.Response(
            429, json={"error": {"message": "Too many requests"}}, headers={"Retry-After": "3"}
        )
    )
    adapter = MaxApi("http://127.0.0.1:8000/maxapi", "sk-loopback")
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(provider_http.send(adapter, adapter.build_submit(req())))
    assert caught.value.code == ProviderError.RATE_LIMITED
    assert caught.value.retry_after == 3.0


# -- hostile replies (issue 7, defect 3): only a ProviderError ever comes out of the parser ----------------------
def test_no_hostile_reply_escapes_as_anything_but_a_provider_error(adapter):
    assert garbage.escapes(adapter.parse_submit, [json.loads(DOC_200)]) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=garbage.json_values(), status=st.sampled_from([200, 400, 401, 403, 429, 500]))
def test_any_json_at_all_is_parsed_or_refused(body, status):
    garbage.assert_parsed_or_refused(
        MaxApi("https://api.maxapi.ai/", "sk-test").parse_submit, garbage.as_reply(body, status)
    )


@pytest.mark.parametrize("seed", ["²", "1" * 30, 2**70, {"s": 1}, 1.5, True])
def test_a_seed_it_cannot_store_is_dropped_not_fatal(adapter, seed):
    # "²".isdigit() is true but int("²") raises: the result, already paid for, was lost over a seed.
    outcome = adapter.parse_submit(reply(200, {**json.loads(DOC_200), "seed": seed}))
    assert outcome.state == "succeeded"
    assert outcome.seed is None


def test_a_numeric_string_seed_is_read(adapter):
    assert adapter.parse_submit(reply(200, {**json.loads(DOC_200), "seed": "42"})).seed == 42


@pytest.mark.parametrize("url", ["http://[::1/x.png", "https://flux-images.maxapi.ai/\x01.png"])
def test_an_image_link_that_cannot_be_requested_fails_the_job(adapter, url):
    outcome = adapter.parse_submit(reply(200, {**json.loads(DOC_200), "images": [{"url": url}]}))
    assert (outcome.state, outcome.error.code) == ("failed", ProviderError.MALFORMED)


def test_an_error_body_with_an_object_for_its_message_keeps_its_status_meaning(adapter):
    body = {"error": {"message": {"text": "Invalid token"}, "type": ["x"], "code": {"c": 1}}}
    with pytest.raises(ProviderError) as caught:
        adapter.parse_submit(reply(401, body))
    assert (caught.value.code, caught.value.message) == (
        ProviderError.AUTH,
        "MaxAPI refused the API key: HTTP 401",
    )


# -- prices that match the provider (issue 7, defect 11) ------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "price"),
    [
        ({}, 3),  # 1024x1024
        ({"width": 1024, "height": 1024}, 3),
        ({"megapixels": 0.25}, 3),  # 512x512
        ({"width": 256, "height": 1024}, 3),
        # A side past 1024 is "above 1024x1024" [S000] though the area is not: the doubled price.
        ({"aspect_ratio": "16:9"}, 6),  # 1360x768 = 0.996 MP
        ({"aspect_ratio": "9:16"}, 6),
        ({"aspect_ratio": "4:3"}, 6),  # 1168x880
        ({"width": 1100, "height": 900}, 6),
        ({"width": 1040, "height": 256}, 6),
        ({"megapixels": 2.0}, 6),
        ({"width": 2048, "height": 2048}, 6),
    ],
)
def test_it_charges_the_doubled_price_whenever_a_side_passes_1024(db, kwargs, price):
    from generations import credits

    request = req(**kwargs)
    MaxApi("https://api.maxapi.ai", "k").validate(request)
    assert credits.quote("maxapi", request).total == price
    assert credits.quote("maxapi", req(model="flux-pro-2", **kwargs)).total == 2 * price
