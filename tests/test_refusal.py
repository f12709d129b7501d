"""One refusal type (issue 9, item 7): everything FluxWeb refuses a user is a `Refusal(code, message, status,
field, retry_after)`, and the API renders any of them as its JSON error."""

import json
from datetime import date

import pytest

from generations import api, media, usage
from generations.forms import check_upload_storage
from generations.providers import PROVIDERS, GenerationRequest, Unsupported
from generations.refusal import Refusal


def test_it_makes_every_refusal_a_refusal():
    assert issubclass(Unsupported, Refusal)
    assert issubclass(media.MediaError, Refusal)
    refused = Unsupported("Write a prompt first.", "prompt")
    assert (refused.code, refused.message, refused.status, refused.field) == (
        "unsupported",
        "Write a prompt first.",
        400,
        "prompt",
    )
    assert str(refused) == "Write a prompt first."


def test_it_refuses_what_an_adapter_cannot_serve_as_a_refusal():
    adapter = PROVIDERS["bfl"]("", "")
    with pytest.raises(Refusal) as refused:
        adapter.validate(GenerationRequest(prompt="", model="flux-2-max"))
    assert (refused.value.code, refused.value.status, refused.value.field) == ("unsupported", 400, "prompt")


@pytest.mark.parametrize(
    "code, status", [("too_large", 413), ("storage_full", 413), ("not_image", 400), ("download_failed", 400)]
)
def test_it_gives_a_media_refusal_the_status_the_api_answers(code, status):
    assert media.MediaError(code, "words").status == status


def test_it_refuses_an_upload_past_the_storage_limit(bob, settings):
    settings.FLUXWEB_MAX_UPLOAD_STORAGE_BYTES = 10
    with pytest.raises(Refusal) as refused:
        check_upload_storage(bob, 11)
    assert (refused.value.code, refused.value.status) == ("storage_full", 413)


@pytest.mark.parametrize(
    "query, field",
    [({"start": "yesterday"}, "start"), ({"start": "2026-12-02", "end": "2026-12-01"}, "end")],
)
def test_it_refuses_a_usage_range_naming_the_field(query, field):
    with pytest.raises(Refusal) as refused:
        usage.parse_range(query, date(2026, 12, 7))
    assert (refused.value.status, refused.value.field) == (400, field)


def test_it_renders_a_refusal_as_the_api_error_with_retry_after():
    response = api.refused(Refusal("busy", "Try again.", status=503, retry_after=2))
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert json.loads(response.content) == {"error": {"code": "busy", "message": "Try again."}}
    response = api.refused(media.MediaError("too_large", "Too big."), field="file")
    assert response.status_code == 413
    assert "Retry-After" not in response
    assert json.loads(response.content) == {
        "error": {"code": "too_large", "message": "Too big.", "field": "file"}
    }


def test_it_answers_a_refusal_any_api_view_raises(bob, client, monkeypatch):
    def refuse(*args, **kwargs):
        raise Refusal("conflict", "Not now.", status=409, field="prompt")

    monkeypatch.setattr(api, "me_payload", refuse)
    client.force_login(bob)
    response = client.get("/api/v1/me")
    assert response.status_code == 409
    assert response.json() == {"error": {"code": "conflict", "message": "Not now.", "field": "prompt"}}
