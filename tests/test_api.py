"""The JSON API, version 1, as contract.md names it: shapes, errors, auth, CSRF, pagination, files."""

import io
import json
import os
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image as PILImage

from generations import credits, media
from generations.models import ApiToken, Generation, Image, Prompt, Quota, Reference

from .conftest import row_image

CONTRACT_FIELDS = {
    "id",
    "status",
    "prompt",
    "model",
    "provider",
    "params",
    "n",
    "created_at",
    "started_at",
    "finished_at",
    "credits",
    "error",
    "images",
}
IMAGE_FIELDS = {"id", "url", "thumbnail_url", "width", "height", "seed", "format", "bytes"}


def api(user) -> Client:
    _, token = ApiToken.issue(user)
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def post(client: Client, path: str, body=None, **extra):
    return client.post(
        path, json.dumps(body if body is not None else {}), content_type="application/json", **extra
    )


def body(**overrides) -> dict:
    return {"prompt": "a lighthouse at dusk", "model": "flux-2-max", "provider": "sb-apiframe"} | overrides


def png(width: int = 96, height: int = 64) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), (200, 80, 40)).save(out, "PNG")
    return out.getvalue()


def make_generation(user, account, prompt: str = "a lighthouse at dusk", **fields) -> Generation:
    return Generation.objects.create(
        user=user, prompt=Prompt.remember(prompt, user), model="flux-2-max", account=account, **fields
    )


def make_image(generation: Generation, index: int = 0) -> Image:
    checked = media.check_image(png())
    return media.store_image(generation, index, checked, {"prompt": generation.prompt.text}, seed=7)


# -- auth and the error shape ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/api/v1/me"),
        ("get", "/api/v1/models"),
        ("get", "/api/v1/generations"),
        ("post", "/api/v1/generations"),
        ("get", "/api/v1/generations/1"),
        ("post", "/api/v1/generations/1/cancel"),
        ("get", "/api/v1/images/1/file"),
        ("get", "/api/v1/images/1/thumbnail"),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer fw_not-a-token", "Token abc", "Bearer "])
def test_it_answers_401_json_without_a_valid_token(db, client, method, path, authorization):
    extra = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    response = getattr(client, method)(path, **extra)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "unauthorized" and error["message"]


def test_it_refuses_the_token_of_a_deactivated_user(bob):
    client = api(bob)
    bob.is_active = False
    bob.save()
    assert client.get("/api/v1/me").status_code == 401


# -- /me and /models --------------------------------------------------------------------------------------
def test_it_describes_me_with_spendable_balance_and_reserved(bob, accounts):
    client = api(bob)
    Quota.objects.create(user=bob, concurrent=5, daily_images=50)
    assert post(client, "/api/v1/generations", body()).status_code == 202

    me = client.get("/api/v1/me").json()

    assert me["username"] == "bob"
    assert me["credits"] == {"balance": 930, "reserved": 70}  # 1000 owned, 70 held: 930 spendable
    assert me["quota"]["concurrent"] == {"limit": 5, "used": 1}
    assert me["quota"]["daily_images"] == {"limit": 50, "used": 1}
    assert me["quota"]["monthly_credits"]["limit"] is None


def test_it_lists_models_with_their_providers_options_and_prices(bob, accounts):
    accounts["vtrix"].enabled = False
    accounts["vtrix"].save()

    models = {m["id"]: m for m in api(bob).get("/api/v1/models").json()}

    assert set(models) >= {"flux-2-max", "flux-plus", "flux-pro-2"}
    flux_max = models["flux-2-max"]
    assert set(flux_max) >= {"id", "name", "providers", "options", "price"}
    assert flux_max["providers"] == ["sb-apiframe", "sb-pixeldojo"]  # priority order; disabled vtrix absent
    assert set(flux_max["options"]) == {"sb-apiframe", "sb-pixeldojo"}
    assert "16:9" in flux_max["options"]["sb-apiframe"]["aspect_ratios"]
    assert flux_max["price"]["sb-apiframe"]["1MP"] == 70
    assert models["flux-plus"]["providers"] == ["sb-maxapi"]


# -- create -------------------------------------------------------------------------------------------------
def test_it_creates_a_generation_with_every_contract_field(bob, accounts):
    response = post(api(bob), "/api/v1/generations", body(aspect_ratio="16:9", seed=42, output_format="png"))

    assert response.status_code == 202
    generation = response.json()
    assert set(generation) >= CONTRACT_FIELDS
    assert generation["status"] == "queued"
    assert generation["prompt"] == "a lighthouse at dusk"
    assert (generation["model"], generation["provider"], generation["n"]) == ("flux-2-max", "sb-apiframe", 1)
    assert generation["params"]["aspect_ratio"] == "16:9"
    assert generation["params"]["output_format"] == "png"
    assert generation["credits"] == {"reserved": 70, "charged": 0, "refunded": 0}
    assert generation["error"] is None and generation["images"] == []
    assert generation["started_at"] is None and generation["finished_at"] is None
    assert Generation.objects.get(pk=generation["id"]).user == bob
    assert credits.account_for(bob).reserved == 70


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"prompt": ""}, "prompt"),
        ({"model": "flux-9000"}, "model"),
        ({"n": 0}, "n"),
        ({"n": 1.5}, "n"),
        ({"aspect_ratio": "wide"}, "aspect_ratio"),
        ({"output_format": "gif"}, "output_format"),
        ({"aspect_ratio": "21:9"}, "aspect_ratio"),  # a ratio, but not one Apiframe offers
        ({"provider": "nobody"}, "provider"),
        ({"reference_images": [999999]}, "reference_images"),
        ({"reference_images": "1"}, "reference_images"),
        ({"prompt": ["a", "list"]}, "prompt"),
        ({"n": True}, "n"),
        ({"prompt_upsampling": "yes"}, "prompt_upsampling"),
        ({"colour": "blue"}, "colour"),  # an unknown field is an error, not silently dropped
    ],
)
def test_it_refuses_an_invalid_create_with_a_field(bob, accounts, overrides, field):
    response = post(api(bob), "/api/v1/generations", body(**overrides))

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] and error["message"]
    assert error["field"] == field
    assert not Generation.objects.exists()
    assert credits.account_for(bob).reserved == 0


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"'])
def test_it_refuses_a_body_that_is_not_a_json_object(bob, accounts, raw):
    response = api(bob).post("/api/v1/generations", raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


def test_it_answers_402_when_credits_are_short(carol, accounts, fresh_sandbox):
    response = post(api(carol), "/api/v1/generations", body())

    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_credits"
    assert not Generation.objects.exists()
    assert fresh_sandbox.requests == []


def test_it_answers_429_with_retry_after_past_a_quota(bob, accounts):
    Quota.objects.create(user=bob, daily_images=1)
    client = api(bob)
    assert post(client, "/api/v1/generations", body()).status_code == 202

    response = post(client, "/api/v1/generations", body())

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "quota_daily_images"
    assert int(response["Retry-After"]) > 0


def test_it_returns_the_first_generation_for_a_repeated_idempotency_key(bob, accounts):
    client = api(bob)
    first = post(client, "/api/v1/generations", body(), HTTP_IDEMPOTENCY_KEY="k-1")
    again = post(client, "/api/v1/generations", body(), HTTP_IDEMPOTENCY_KEY="k-1")
    other = post(client, "/api/v1/generations", body(prompt="something else"), HTTP_IDEMPOTENCY_KEY="k-1")

    assert first.json()["id"] == again.json()["id"]
    assert Generation.objects.count() == 1
    assert credits.account_for(bob).reserved == 70
    assert other.status_code == 422


# -- get and list -------------------------------------------------------------------------------------------
def test_it_gets_one_generation_with_its_images(bob, carol, accounts):
    generation = make_generation(bob, accounts["apiframe"], status="succeeded")
    image = make_image(generation)

    response = api(carol).get(f"/api/v1/generations/{generation.pk}")  # the team's history is shared

    assert response.status_code == 200
    payload = response.json()
    assert set(payload) >= CONTRACT_FIELDS
    assert payload["user"] == "bob"
    [shown] = payload["images"]
    assert set(shown) >= IMAGE_FIELDS
    assert shown["url"] == f"http://testserver/api/v1/images/{image.pk}/file"
    assert shown["thumbnail_url"] == f"http://testserver/api/v1/images/{image.pk}/thumbnail"
    assert (shown["width"], shown["height"], shown["format"], shown["seed"]) == (96, 64, "png", 7)


def test_it_answers_404_json_for_a_missing_generation(bob):
    response = api(bob).get("/api/v1/generations/424242")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_it_lists_newest_first_and_filters(bob, carol, accounts):
    account = accounts["apiframe"]
    old = make_generation(bob, account, "an old red barn", status="succeeded")
    mid = make_generation(carol, account, "a red fox", status="failed")
    new = make_generation(bob, account, "a blue whale", status="queued")
    client = api(bob)

    def ids(query: str = "") -> list[int]:
        response = client.get("/api/v1/generations" + query)
        assert response.status_code == 200
        return [g["id"] for g in response.json()["results"]]

    assert ids() == [new.pk, mid.pk, old.pk]
    assert ids("?mine=1") == [new.pk, old.pk]
    assert ids("?status=failed") == [mid.pk]
    assert ids("?q=RED") == [mid.pk, old.pk]
    assert ids("?mine=1&q=red") == [old.pk]
    assert client.get("/api/v1/generations").json()["next"] is None


def test_it_filters_the_list_by_member_model_and_provider(bob, carol, accounts):
    apiframe, vtrix = accounts["apiframe"], accounts["vtrix"]
    first = make_generation(bob, apiframe, "a red barn", status="succeeded")
    second = make_generation(carol, vtrix, "a red fox", status="succeeded")
    Generation.objects.filter(pk=second.pk).update(model="flux-pro-2")
    client = api(bob)

    def ids(query: str) -> list[int]:
        return [g["id"] for g in client.get("/api/v1/generations" + query).json()["results"]]

    assert ids("?user=carol") == [second.pk]
    assert ids("?user=nobody") == []
    assert ids("?model=flux-pro-2") == [second.pk]
    assert ids(f"?provider={apiframe.slug}") == [first.pk]
    assert ids(f"?provider={vtrix.slug}&user=bob") == []


def test_it_pages_the_list_with_a_cursor(bob, accounts):
    prompt = Prompt.remember("a tide pool", bob)
    Generation.objects.bulk_create(
        Generation(
            user=bob, prompt=prompt, model="flux-2-max", account=accounts["apiframe"], webhook_token=f"t{i}"
        )
        for i in range(53)
    )
    expected = list(Generation.objects.order_by("-id").values_list("id", flat=True))
    client = api(bob)

    first = client.get("/api/v1/generations").json()
    second = client.get("/api/v1/generations", {"cursor": first["next"]}).json()

    assert len(first["results"]) == 50 and first["next"]
    assert [g["id"] for g in first["results"] + second["results"]] == expected
    assert second["next"] is None
    bad = client.get("/api/v1/generations", {"cursor": "!!not-ours"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "cursor"


def test_it_lists_in_a_constant_number_of_queries(bob, carol, accounts, django_assert_max_num_queries):
    client = api(bob)

    def add(count: int) -> None:
        for i in range(count):
            generation = make_generation(
                bob if i % 2 else carol, accounts["apiframe"], f"prompt {i}", status="succeeded"
            )
            row_image(generation)

    add(2)
    client.get("/api/v1/generations")  # warm: the token's last_used_at update happens once
    with django_assert_max_num_queries(5) as few:
        assert len(client.get("/api/v1/generations").json()["results"]) == 2
    add(30)
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert len(client.get("/api/v1/generations").json()["results"]) == 32


# -- cancel -----------------------------------------------------------------------------------------------------
def test_it_cancels_and_refunds_then_answers_409(bob, accounts):
    client = api(bob)
    created = post(client, "/api/v1/generations", body()).json()

    response = post(client, f"/api/v1/generations/{created['id']}/cancel")

    assert response.status_code == 200
    canceled = response.json()
    assert canceled["status"] == "canceled"
    assert canceled["credits"] == {"reserved": 70, "charged": 0, "refunded": 70}
    assert canceled["finished_at"]
    account = credits.account_for(bob)
    assert (account.balance, account.reserved) == (1000, 0)
    again = post(client, f"/api/v1/generations/{created['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert credits.reconcile() == []


def test_it_hides_another_users_job_from_cancel(bob, carol, accounts):
    created = post(api(bob), "/api/v1/generations", body()).json()

    response = post(api(carol), f"/api/v1/generations/{created['id']}/cancel")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert Generation.objects.get(pk=created["id"]).status == "queued"
    assert credits.account_for(bob).reserved == 70


def test_it_lets_an_admin_cancel_anyones_job(alice, bob, accounts):
    created = post(api(bob), "/api/v1/generations", body()).json()
    assert post(api(alice), f"/api/v1/generations/{created['id']}/cancel").json()["status"] == "canceled"
    assert credits.account_for(bob).reserved == 0


# -- image files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["token", "session"])
def test_it_serves_image_bytes_with_their_content_types(bob, carol, accounts, how):
    image = make_image(make_generation(bob, accounts["apiframe"], status="succeeded"))
    if how == "token":
        client = api(carol)
    else:
        client = Client()
        client.force_login(carol)

    original = client.get(f"/api/v1/images/{image.pk}/file")
    thumb = client.get(f"/api/v1/images/{image.pk}/thumbnail")

    assert original.status_code == 200 and original["Content-Type"] == "image/png"
    with image.file.open("rb") as f:
        assert b"".join(original.streaming_content) == f.read()
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/jpeg"
    assert PILImage.open(io.BytesIO(b"".join(thumb.streaming_content))).format == "JPEG"
    assert "private" in original["Cache-Control"]
    assert original["X-Content-Type-Options"] == "nosniff"
    assert client.get("/api/v1/images/999999/file").status_code == 404


def test_it_refuses_image_bytes_to_anonymous(client, bob, accounts):
    image = make_image(make_generation(bob, accounts["apiframe"], status="succeeded"))
    for variant in ("file", "thumbnail"):
        response = client.get(f"/api/v1/images/{image.pk}/{variant}")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


# -- session auth and CSRF ----------------------------------------------------------------------------------------
def csrf_client(user) -> tuple[Client, str]:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/login/")  # any page with a form sets the CSRF cookie
    return client, client.cookies["csrftoken"].value


def test_it_refuses_a_session_post_without_the_csrf_token(bob, accounts):
    client, _ = csrf_client(bob)

    created = post(client, "/api/v1/generations", body())

    assert created.status_code == 403
    assert created.json()["error"]["code"] == "csrf"
    assert not Generation.objects.exists()


def test_it_refuses_a_session_cancel_without_the_csrf_token(bob, accounts):
    created = post(api(bob), "/api/v1/generations", body()).json()
    client, _ = csrf_client(bob)

    response = post(client, f"/api/v1/generations/{created['id']}/cancel")

    assert response.status_code == 403 and response.json()["error"]["code"] == "csrf"
    assert Generation.objects.get(pk=created["id"]).status == "queued"


def test_it_accepts_a_session_post_with_the_csrf_header(bob, accounts):
    client, token = csrf_client(bob)

    created = post(client, "/api/v1/generations", body(), HTTP_X_CSRFTOKEN=token)
    canceled = post(client, f"/api/v1/generations/{created.json()['id']}/cancel", HTTP_X_CSRFTOKEN=token)

    assert created.status_code == 202
    assert canceled.status_code == 200
    assert client.get("/api/v1/me").json()["username"] == "bob"  # reads need no token


def test_it_needs_no_csrf_token_with_a_bearer_token(bob, accounts):
    _, token = ApiToken.issue(bob)
    client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert post(client, "/api/v1/generations", body()).status_code == 202


def test_it_answers_405_as_json_with_the_allowed_methods(bob):
    response = api(bob).delete("/api/v1/generations")
    assert response.status_code == 405
    assert response["Allow"] == "GET, POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_it_answers_an_unknown_endpoint_as_json(bob):
    response = api(bob).get("/api/v1/nothing/here")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "not_found",
        "message": "There is no API endpoint /api/v1/nothing/here.",
    }


@pytest.mark.parametrize("header", ["X-Accel-Redirect", "X-Sendfile"])
def test_it_lets_the_web_server_send_the_bytes_when_configured(bob, accounts, settings, header):
    settings.FLUXWEB_SENDFILE_HEADER = header
    image = make_image(make_generation(bob, accounts["apiframe"]))
    response = api(bob).get(f"/api/v1/images/{image.pk}/file")
    assert response.status_code == 200
    assert response.content == b""
    expected = f"/_media/{image.file.name}" if header == "X-Accel-Redirect" else image.file.path
    assert response[header] == expected
    assert response["Content-Type"] == "image/png"


# -- reference uploads ------------------------------------------------------------------------------------------
def noise_png(side: int = 64) -> bytes:
    """A PNG that does not compress: about side * side * 3 bytes."""
    out = io.BytesIO()
    PILImage.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    return out.getvalue()


def upload(client: Client, data: bytes, name: str = "ref.png"):
    return client.post("/api/v1/references", {"file": SimpleUploadedFile(name, data, "image/png")})


def reference_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT) / "references"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_it_uploads_a_reference_and_creates_with_it(bob, accounts):
    client = api(bob)
    made = upload(client, png())
    assert made.status_code == 201, made.content
    reference = Reference.objects.get(pk=made.json()["id"])
    assert reference.user == bob and (made.json()["width"], made.json()["height"]) == (96, 64)

    created = post(client, "/api/v1/generations", body(reference_uploads=[reference.pk]))

    assert created.status_code == 202, created.content
    assert Generation.objects.get().params["reference_urls"] == [f"upload:{reference.pk}"]


def test_it_refuses_an_upload_over_the_size_cap(bob, accounts, settings):
    settings.FLUXWEB_MAX_UPLOAD_BYTES = 4000
    files_before = reference_files()
    data = noise_png()
    assert len(data) > 4000

    response = upload(api(bob), data)

    assert response.status_code == 413, response.content
    error = response.json()["error"]
    assert error["code"] == "too_large" and error["field"] == "file" and "larger than" in error["message"]
    assert not Reference.objects.exists() and reference_files() == files_before
    assert upload(api(bob), png()).status_code == 201  # under the cap: accepted


@pytest.mark.parametrize(
    "data, name",
    [(b"", "empty.png"), (b"not an image", "text.png"), (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cut.png")],
)
def test_it_refuses_an_upload_that_is_not_an_image(bob, data, name):
    response = upload(api(bob), data, name)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["field"] == "file"
    assert not Reference.objects.exists()


def test_it_refuses_another_users_upload_as_a_reference(bob, carol, accounts):
    carols = upload(api(carol), png()).json()["id"]
    bobs = upload(api(bob), png()).json()["id"]
    client = api(bob)

    response = post(client, "/api/v1/generations", body(reference_uploads=[bobs, carols]))

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["field"] == "reference_uploads" and str(carols) in error["message"]
    assert not Generation.objects.exists() and credits.account_for(bob).reserved == 0
    assert post(client, "/api/v1/generations", body(reference_uploads=[bobs])).status_code == 202


def test_it_limits_the_storage_each_user_keeps_in_uploads(bob, carol, accounts, settings):
    first, second = noise_png(), noise_png()
    settings.FLUXWEB_MAX_UPLOAD_STORAGE_BYTES = len(first) + len(second) // 2
    files_before = reference_files()

    assert upload(api(bob), first).status_code == 201
    refused = upload(api(bob), second)

    assert refused.status_code == 413, refused.content
    error = refused.json()["error"]
    assert error["code"] == "storage_full" and error["field"] == "file" and "MB" in error["message"]
    assert Reference.objects.filter(user=bob).count() == 1 and len(reference_files()) == len(files_before) + 1
    assert upload(api(carol), second).status_code == 201  # the limit is each user's own


def test_it_lists_ones_uploads_with_the_storage_they_take_and_deletes_them(bob, carol, accounts, settings):
    settings.FLUXWEB_MAX_UPLOAD_STORAGE_BYTES = 10**6
    client = api(bob)
    data = png()
    mine = upload(client, data).json()["id"]
    carols = upload(api(carol), png()).json()["id"]
    files_before = reference_files()

    listed = client.get("/api/v1/references").json()
    assert [r["id"] for r in listed["results"]] == [mine]
    assert listed["storage"] == {"used": len(data), "limit": 10**6}

    assert client.delete(f"/api/v1/references/{carols}").status_code == 404  # not bob's
    created = post(client, "/api/v1/generations", body(reference_uploads=[mine])).json()
    busy = client.delete(f"/api/v1/references/{mine}")
    assert busy.status_code == 409 and str(created["id"]) in busy.json()["error"]["message"]

    assert post(client, f"/api/v1/generations/{created['id']}/cancel").status_code == 200
    assert client.delete(f"/api/v1/references/{mine}").status_code == 204
    assert not Reference.objects.filter(pk=mine).exists() and len(reference_files()) == len(files_before) - 1
    assert client.get("/api/v1/references").json()["storage"]["used"] == 0
    assert client.delete(f"/api/v1/references/{mine}").status_code == 404


def test_a_list_page_builds_nothing_per_job_and_reads_only_what_it_shows(bob, accounts, monkeypatch):
    """A page of 50 spent as long converting columns it never showed (a job's leases and provider
    addresses, the user's password hash, the account's key) and building a QuerySet per job for its images
    as it did making its JSON: the page loads the payload's fields, its images go to a list, and the work
    per page does not grow with the jobs on it."""
    from django.db import connection
    from django.db.models.query import QuerySet
    from django.test.utils import CaptureQueriesContext

    client = api(bob)
    built = []
    init = QuerySet.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        init(self, *args, **kwargs)

    def querysets_built() -> int:
        built.clear()
        monkeypatch.setattr(QuerySet, "__init__", counting)
        try:
            assert client.get("/api/v1/generations").status_code == 200
        finally:
            monkeypatch.setattr(QuerySet, "__init__", init)
        return len(built)

    row_image(make_generation(bob, accounts["apiframe"], status="succeeded"))
    client.get("/api/v1/generations")  # the token's first use writes
    few = querysets_built()
    for i in range(20):
        row_image(make_generation(bob, accounts["apiframe"], f"prompt {i}", status="succeeded"))
    assert querysets_built() == few
    with CaptureQueriesContext(connection) as queries:
        listed = client.get("/api/v1/generations").json()["results"]
    sql = " ".join(q["sql"] for q in queries.captured_queries if "apitoken" not in q["sql"])  # not the token
    for column in ("password", "api_key_encrypted", "image_urls", "webhook_token", "lease_until"):
        assert f'"{column}"' not in sql
    assert (
        len(listed) == 21
        and set(listed[0]) >= CONTRACT_FIELDS
        and set(listed[0]["images"][0]) == IMAGE_FIELDS
    )
    assert (
        listed[0]["images"][0]["url"]
        == f"http://testserver/api/v1/images/{listed[0]['images'][0]['id']}/file"
    )
