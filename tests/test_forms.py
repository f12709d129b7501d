"""The create path is written once: the studio's Generate and the JSON API both go through GenerationForm
(references resolved in clean(), the request built by to_request()), so for the same input they send the
engine the same request or refuse it with the same words."""

import json
import uuid

import pytest

from generations import engine, media
from generations.forms import GenerationForm
from tests.test_access import attached, logged_in, make_image, make_job, png


@pytest.fixture
def world(bob, carol, accounts):
    image = make_image(make_job(bob, accounts["apiframe"], status="succeeded"))
    own = media.store_reference(attached(png()), bob)
    carols = media.store_reference(attached(png()), carol)
    return {"image": image.pk, "own": own.pk, "carols": carols.pk}


# Each case: the input (JSON types, as the API takes it) and, for a refusal, words the message must hold.
CASES = [
    ({"prompt": "a fox", "model": "flux-2-max"}, None),
    (
        {
            "prompt": "a fox at dawn",
            "model": "flux-2-max",
            "provider": "sb-pixeldojo",
            "n": 2,
            "seed": 7,
            "aspect_ratio": "16:9",
            "megapixels": 2.0,
            "output_format": "png",
        },
        None,
    ),
    ({"prompt": "a fox", "model": "flux-2-max", "reference_images": ["image", "image"]}, None),
    ({"prompt": "a fox", "model": "flux-2-max", "reference_uploads": ["own"]}, None),
    ({"prompt": "a fox", "model": "flux-2-max", "reference_uploads": ["carols"]}, "No upload with id"),
    ({"prompt": "a fox", "model": "flux-2-max", "reference_images": [99999]}, "No image with id 99999"),
    ({"prompt": "a fox", "model": "flux-2-max", "n": 5}, "at most 4 images"),
    ({"prompt": "a fox", "model": "flux-2-max", "n": 2, "provider": "sb-apiframe"}, "on sb-apiframe"),
    ({"prompt": "a fox", "model": "flux-2-max", "provider": "nope"}, "no enabled provider account"),
    ({"prompt": "", "model": "flux-2-max"}, "required"),
    ({"prompt": "a fox", "model": "flux-2-max", "aspect_ratio": "7:0"}, "Aspect ratio"),
    ({"prompt": "a fox", "model": "flux-plus", "reference_images": ["image"]}, "reference image"),
]


def resolved(value, world):
    if isinstance(value, list):
        return [world.get(v, v) for v in value]
    return value


def as_form(data: dict) -> dict:
    """The same input as the studio's form posts it: strings, one value per list item."""
    return {k: ([str(i) for i in v] if isinstance(v, list) else str(v)) for k, v in data.items()}


@pytest.fixture
def sent(monkeypatch):
    """Every request the engine is asked to create, with its provider."""
    calls = []
    real = engine.create

    def spy(user, request, **kwargs):
        calls.append((request, kwargs.get("provider")))
        return real(user, request, **kwargs)

    monkeypatch.setattr(engine, "create", spy)
    return calls


@pytest.mark.parametrize(("case", "refusal"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_it_sends_the_same_request_or_refusal_from_the_studio_and_the_api(world, bob, sent, case, refusal):
    data = {k: resolved(v, world) for k, v in case.items()}
    client = logged_in(bob)

    studio = client.post(
        "/generate", as_form(data) | {"idempotency_key": uuid.uuid4().hex}, HTTP_HX_REQUEST="true"
    )
    studio_sent = list(sent)
    sent.clear()
    api = client.post("/api/v1/generations", json.dumps(data), content_type="application/json")
    api_sent = list(sent)

    if refusal is None:
        assert "HX-Retarget" not in studio, studio.content.decode()
        assert api.status_code == 202, api.content
        assert studio_sent == api_sent and len(studio_sent) == 1
    else:
        assert studio["HX-Retarget"] == "#form-error"
        message = api.json()["error"]["message"]
        assert refusal.lower() in message.lower()
        assert message in studio.content.decode().replace("&#x27;", "'")
        # A refusal the form makes never reaches the engine; one the engine makes reaches it from both.
        assert len(studio_sent) == len(api_sent)


def test_it_resolves_each_reference_once_and_prices_it_once(world, bob):
    form = GenerationForm(
        {"prompt": "a fox", "model": "flux-2-max", "reference_images": [world["image"]] * 3}, user=bob
    )
    assert form.is_valid(), form.errors
    request = form.to_request()
    assert request.reference_urls == (f"image:{world['image']}",)
    assert len(request.reference_megapixels) == 1


def test_it_knows_only_the_users_own_uploads(world, bob, carol):
    assert GenerationForm(
        {"prompt": "a", "model": "flux-2-max", "reference_uploads": [world["own"]]}, user=bob
    ).is_valid()
    refused = GenerationForm(
        {"prompt": "a", "model": "flux-2-max", "reference_uploads": [world["own"]]}, user=carol
    )
    assert not refused.is_valid()
    assert refused.errors["reference_uploads"] == [f"No upload with id {world['own']}."]


def test_it_states_the_image_limit_of_the_provider_picked_not_the_fields_bound(bob, accounts):
    form = GenerationForm({"prompt": "a", "model": "flux-2-max", "n": "5"}, user=bob)
    assert not form.is_valid()
    message = form.errors["n"][0]
    assert message == "FLUX.2 [max] makes at most 4 images on any provider serving it."
    picked = GenerationForm(
        {"prompt": "a", "model": "flux-2-max", "n": "3", "provider": "sb-vtrix"}, user=bob
    )
    assert not picked.is_valid()
    assert "sb-vtrix" in picked.errors["n"][0] and "apiframe" not in picked.errors["n"][0].lower()
