"""The provider sandbox over real loopback HTTP: shapes, lifecycles, images, faults, control API.

No Django settings or database needed: the sandbox is stdlib + Pillow.
"""

import hashlib
import hmac
import io
import json
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from generations.providers.sandbox import Sandbox

pytestmark = []

AF = {"X-API-Key": "afk_test"}
BEARER = {"Authorization": "Bearer sk-test"}


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(latency=(0.05, 0.15)) as sb:
        yield sb


@pytest.fixture(autouse=True)
def fresh(sandbox):
    sandbox.reset()


@pytest.fixture
def client():
    with httpx.Client(timeout=10) as c:
        yield c


def poll(client, url, headers, done, key="status", timeout=5.0):
    """Poll until body[key] is in `done`; returns the final body and every status seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        seen.append(body[key])
        if body[key] in done:
            return body, seen
        time.sleep(0.02)
    raise AssertionError(f"never reached {done}: {seen[-5:]}")


def open_image(client, url):
    r = client.get(url)
    assert r.status_code == 200
    return Image.open(io.BytesIO(r.content)), r


def af_submit(client, sandbox, body=None, headers=None, **params):
    payload = body or {"prompt": "a lighthouse in fog", "model": "flux-2-max", "fluxParams": params}
    return client.post(
        f"{sandbox.base_url('apiframe')}/v2/images/generate",
        json=payload,
        headers=AF if headers is None else headers,
    )


def af_job(client, sandbox, job_id):
    return client.get(f"{sandbox.base_url('apiframe')}/v2/jobs/{job_id}", headers=AF)


def pd_run(client, sandbox, **body):
    return client.post(
        f"{sandbox.base_url('pixeldojo')}/api/v1/models/flux-2-max/run",
        json={"prompt": "a koi pond", **body},
        headers=BEARER,
    )


def vx_create(client, sandbox, params, headers=BEARER):
    body = {"model": "flux_2_max", "input": [{"params": {"prompt": "a desert road", **params}}]}
    return client.post(f"{sandbox.base_url('vtrix')}/model/v1/generation", json=body, headers=headers)


# -- MaxAPI -------------------------------------------------------------------------------------


def test_it_rejects_a_bad_maxapi_key_in_new_api_shape(sandbox, client):
    url = f"{sandbox.base_url('maxapi')}/v1/images/generations"
    body = {"model": "flux-plus", "prompt": "cat", "n": 1, "size": "512x512"}
    for headers in ({}, {"Authorization": "Bearer bad-key"}):
        r = client.post(url, json=body, headers=headers)
        assert r.status_code == 401
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_it_validates_maxapi_bodies(sandbox, client):
    url = f"{sandbox.base_url('maxapi')}/v1/images/generations"
    base = {"model": "flux-plus", "prompt": "cat", "n": 1, "size": "512x512"}
    for change in ({"model": "dall-e-3"}, {"n": 5}, {"n": "two"}, {"size": "huge"}, {"prompt": "x" * 1001}):
        r = client.post(url, json={**base, **change}, headers=BEARER)
        assert r.status_code == 400, change
        assert r.json()["error"]["message"]


def test_it_holds_maxapi_requests_and_returns_fal_style_images(sandbox, client):
    sandbox.set_latency(0.2, 0.2)
    body = {
        "model": "flux-pro-2",
        "prompt": "couple before a kiss, magic, evening",
        "n": "2",
        "size": "512x384",
    }
    started = time.monotonic()
    r = client.post(f"{sandbox.base_url('maxapi')}/v1/images/generations", json=body, headers=BEARER)
    assert time.monotonic() - started >= 0.2
    assert r.status_code == 200
    data = r.json()
    assert len(data["images"]) == 2
    assert data["images"][0]["width"] == "512" and data["images"][0]["height"] == "384"  # strings [S000]
    assert len(data["has_nsfw_concepts"]) >= 2
    assert (
        isinstance(data["seed"], int) and data["prompt"] == body["prompt"] and "inference" in data["timings"]
    )
    for item in data["images"]:
        assert item["url"].startswith(f"{sandbox.url}/maxapi/_files/") and item["url"].endswith(".png")
        image, _ = open_image(client, item["url"])
        assert image.size == (512, 384)
        assert image.format == "JPEG"  # content_type says jpeg, the name says .png [S000]


def test_it_answers_maxapi_moderation_with_403_and_credit_with_429(sandbox, client):
    url = f"{sandbox.base_url('maxapi')}/v1/images/generations"
    body = {"model": "flux-plus", "prompt": "cat", "n": 1, "size": "256x256"}
    sandbox.queue_fault("moderation", "maxapi")
    r = client.post(url, json=body, headers=BEARER)
    assert r.status_code == 403 and "content policy" in r.json()["error"]["message"]
    sandbox.queue_fault("insufficient_credit", "maxapi")
    r = client.post(url, json=body, headers=BEARER)
    assert r.status_code == 429 and "Insufficient credit" in r.json()["error"]["message"]


# -- Vtrix --------------------------------------------------------------------------------------


def test_it_rejects_a_bad_vtrix_key(sandbox, client):
    r = vx_create(client, sandbox, {}, headers={"Authorization": "Bearer bad"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "UNAUTHORIZED" and "request_id" in r.json()


def test_it_runs_a_vtrix_task_to_completion(sandbox, client):
    sandbox.set_latency(0.3, 0.3)
    r = vx_create(client, sandbox, {"width": 640, "height": 448, "output_format": "png", "seed": 7})
    assert r.status_code == 200
    created = r.json()
    assert created["status"] == "in_progress" and created["model"] == "flux_2_max"
    assert len(created["id"]) == 20 and created["id"].isalnum() and created["id"].islower()
    task_url = f"{sandbox.base_url('vtrix')}/model/v1/generation/task/{created['id']}"
    body, seen = poll(client, task_url, BEARER, {"completed", "failed"})
    assert "in_progress" in seen
    assert body["status"] == "completed"
    assert body["usage"]["cost"] == "0.0700" and body["usage"]["unit_price"] == "0.0700"
    assert set(body["usage"]) == {"cost", "discount", "quantity", "unit_price", "extra_info"}
    urls = [c["url"] for group in body["output"] for c in group["content"]]
    image, response = open_image(client, urls[0])
    assert image.size == (640, 448) and image.format == "PNG"
    assert response.headers["content-type"] == "image/png"


def test_it_accepts_flat_vtrix_bodies_and_configured_words(sandbox, client):
    sandbox.set_latency(0.3, 0.3)
    sandbox.options.update(vtrix_status_word="pending", vtrix_done_word="done")
    url = f"{sandbox.base_url('vtrix')}/model/v1/generation"
    r = client.post(url, json={"model": "flux_2_max", "prompt": "flat"}, headers=BEARER)
    assert r.status_code == 200
    task_url = f"{url}/task/{r.json()['id']}"
    body, seen = poll(client, task_url, BEARER, {"done", "failed"})
    assert body["status"] == "done" and "pending" in seen
    image, _ = open_image(client, body["output"][0]["content"][0]["url"])
    assert image.size == (1024, 1024) and image.format == "JPEG"  # width/height 0 = default


def test_it_validates_vtrix_params(sandbox, client):
    for params in ({"width": 100}, {"height": 32}, {"safety_tolerance": 6}, {"output_format": "webp"}):
        r = vx_create(client, sandbox, params)
        assert r.status_code == 400, params
        assert r.json()["error"]["message"]
    r = client.post(
        f"{sandbox.base_url('vtrix')}/model/v1/generation", json={"model": "nope"}, headers=BEARER
    )
    assert r.status_code == 404 and r.json() == {"detail": "App not found: nope"}


@pytest.mark.parametrize(
    "shape, check",
    [
        ("object", lambda e: e["code"] == "002014002" and "moderation" in e["message"]),
        ("string", lambda e: isinstance(e, str)),
        ("numeric", lambda e: isinstance(e["code"], int) and e["error_message"]),
    ],
)
def test_it_fails_vtrix_tasks_in_each_error_shape(sandbox, client, shape, check):
    sandbox.options["vtrix_error_shape"] = shape
    sandbox.queue_fault("moderation", "vtrix")
    task_id = vx_create(client, sandbox, {}).json()["id"]
    body, _ = poll(
        client, f"{sandbox.base_url('vtrix')}/model/v1/generation/task/{task_id}", BEARER, {"failed"}
    )
    assert check(body["error"]) and "output" not in body


# -- Apiframe -----------------------------------------------------------------------------------


def test_it_rejects_missing_and_bad_apiframe_keys(sandbox, client):
    r = af_submit(client, sandbox, headers={})
    assert (r.status_code, r.json()) == (401, {"error": "API key is required"})
    r = af_submit(client, sandbox, headers={"X-API-Key": "bad_key"})
    assert (r.status_code, r.json()) == (401, {"error": "Invalid API key"})


def test_it_pins_exact_keys_when_configured(client):
    with Sandbox(latency=0.05, api_keys={"apiframe": "afk_x"}) as pinned:
        url = f"{pinned.base_url('apiframe')}/v2/me"
        assert client.get(url, headers={"X-API-Key": "afk_y"}).status_code == 401
        assert client.get(url, headers={"X-API-Key": "afk_x"}).status_code == 200


def test_it_rejects_unknown_apiframe_keys_at_both_levels(sandbox, client):
    r = af_submit(client, sandbox, foo=1)
    assert r.status_code == 400
    assert r.json() == {"error": "Validation failed", "details": {"fluxParams.foo": ["Unrecognized key"]}}
    r = af_submit(
        client, sandbox, body={"prompt": "x", "model": "flux-2-max", "webhook_url": "http://127.0.0.1/"}
    )
    assert r.status_code == 400 and r.json()["details"] == {"webhook_url": ["Unrecognized key"]}
    r = af_submit(client, sandbox, resolution="2 MP", output_quality=101)
    assert set(r.json()["details"]) == {"fluxParams.resolution", "fluxParams.output_quality"}


def test_it_runs_an_apiframe_job_to_completion(sandbox, client):
    sandbox.set_latency(0.3, 0.3)
    r = af_submit(client, sandbox, resolution="1MP", aspect_ratio="16:9", output_format="webp", seed=3)
    assert r.status_code == 202 and r.json()["status"] == "QUEUED"
    job_id = r.json()["jobId"]
    assert uuid.UUID(job_id).version == 4
    url = f"{sandbox.base_url('apiframe')}/v2/jobs/{job_id}"
    job, seen = poll(client, url, AF, {"COMPLETED", "FAILED"})
    assert "PROCESSING" in seen and job["status"] == "COMPLETED" and job["progress"] == 100
    assert job["expired"] is False and job["webhookStatus"] is None and isinstance(job["creditCost"], int)
    assert job["completedAt"].endswith("Z") and job["error"] is None
    image, _ = open_image(client, job["result"]["images"][0])
    assert image.size == (1360, 768) and image.format == "WEBP"  # 1 MP at 16:9, sides multiples of 16


def rendered_ahead():
    """Wait for the sandbox's render-ahead thread to finish what it was given (it takes work in order)."""
    from generations.providers.sandbox import images

    images._ahead.submit(lambda: None).result(timeout=10)


def test_it_renders_a_job_s_files_when_it_accepts_the_job_not_when_they_are_downloaded(
    sandbox, client, monkeypatch
):
    from generations.providers.sandbox import images

    images._cache.clear()
    sandbox.set_latency(0.3, 0.3)
    drawn = []
    real = images._render
    monkeypatch.setattr(
        images, "_render", lambda *a: drawn.append(threading.current_thread().name) or real(*a)
    )
    job_id = af_submit(client, sandbox, resolution="1MP", aspect_ratio="1:1", output_format="jpg", seed=7)
    assert job_id.status_code == 202, job_id.text
    job_id = job_id.json()["jobId"]
    rendered_ahead()
    ahead = list(drawn)
    job, _ = poll(client, f"{sandbox.base_url('apiframe')}/v2/jobs/{job_id}", AF, {"COMPLETED"})
    urls = job["result"]["images"]
    assert len(ahead) == len(urls) >= 1 and all(name.startswith("sandbox-render") for name in ahead)
    for url in urls:
        image, _ = open_image(client, url)
        assert image.format == "JPEG" and image.size == (1024, 1024)
    assert drawn == ahead  # every download was served from what was drawn ahead


def test_it_draws_nothing_ahead_for_a_failing_job_or_a_file_fault(sandbox, client, monkeypatch):
    from generations.providers.sandbox import images

    images._cache.clear()
    drawn = []
    monkeypatch.setattr(images, "_render", lambda *a: drawn.append(a) or b"")
    sandbox.queue_fault("moderation", "apiframe")
    af_submit(client, sandbox)
    sandbox.queue_fault("not_image", "apiframe")
    af_submit(client, sandbox)
    rendered_ahead()
    assert drawn == []


def test_it_uses_explicit_apiframe_width_and_height_and_string_results(sandbox, client):
    sandbox.options["apiframe_result_shape"] = "string"
    job_id = af_submit(client, sandbox, width=512, height=768, output_format="png").json()["jobId"]
    job, _ = poll(client, f"{sandbox.base_url('apiframe')}/v2/jobs/{job_id}", AF, {"COMPLETED"})
    image, _ = open_image(client, job["result"])
    assert image.size == (512, 768) and image.format == "PNG"


def test_it_checks_apiframe_job_ids(sandbox, client):
    r = af_job(client, sandbox, "not-a-uuid")
    assert r.status_code == 400
    r = af_job(client, sandbox, str(uuid.uuid4()))
    assert (r.status_code, r.json()) == (404, {"error": "Job not found"})
    job_id = af_submit(client, sandbox).json()["jobId"]
    other = client.get(f"{sandbox.base_url('apiframe')}/v2/jobs/{job_id}", headers={"X-API-Key": "afk_other"})
    assert other.status_code == 404  # another account's job


def test_it_replays_apiframe_idempotency_keys(sandbox, client):
    headers = {**AF, "Idempotency-Key": "gen-42"}
    first = af_submit(client, sandbox, headers=headers, seed=1)
    again = af_submit(client, sandbox, headers=headers, seed=1)
    assert first.status_code == again.status_code == 202
    assert again.json()["jobId"] == first.json()["jobId"]
    changed = af_submit(client, sandbox, headers=headers, seed=2)
    assert changed.status_code == 409 and changed.json()["error"]
    assert (
        af_submit(client, sandbox, headers={**AF, "Idempotency-Key": "gen-43"}, seed=1).json()["jobId"]
        != first.json()["jobId"]
    )


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), raw))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/apiframe", _Receiver.received
    server.shutdown()
    server.server_close()


def test_it_delivers_signed_apiframe_webhooks(sandbox, client, receiver):
    url, received = receiver
    body = {
        "prompt": "a harbour",
        "model": "flux-2-max",
        "webhookUrl": url,
        "fluxParams": {"resolution": "0.5MP"},
    }
    job_id = af_submit(client, sandbox, body=body).json()["jobId"]
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:
        time.sleep(0.02)
    headers, raw = received[0]
    payload = json.loads(raw)
    assert payload["event"] == "completed" and payload["jobId"] == job_id and payload["status"] == "COMPLETED"
    assert {"progress", "result", "model", "creditCost", "completedAt"} <= set(payload)
    assert headers["X-Webhook-Event"] == "completed"
    secret = hashlib.sha256(b"afk_test").digest()  # raw 32-byte digest as the HMAC key [A8]
    expected = "sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Webhook-Signature"], expected)
    deadline = time.monotonic() + 2
    while (
        af_job(client, sandbox, job_id).json()["webhookStatus"] != "delivered" and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    assert af_job(client, sandbox, job_id).json()["webhookStatus"] == "delivered"


def test_it_sends_failed_webhooks_and_refuses_non_loopback_hosts(sandbox, client, receiver):
    url, received = receiver
    sandbox.queue_fault("failure", "apiframe")
    af_submit(client, sandbox, body={"prompt": "x", "model": "flux-2-max", "webhookUrl": url})
    far = af_submit(
        client, sandbox, body={"prompt": "x", "model": "flux-2-max", "webhookUrl": "http://example.com/h"}
    )
    deadline = time.monotonic() + 5
    while len(sandbox.deliveries) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert json.loads(received[0][1])["event"] == "failed" and received[0][0]["X-Webhook-Event"] == "failed"
    refused = next(d for d in sandbox.deliveries if d["url"].startswith("http://example.com"))
    assert refused["refused"] and refused["status"] is None and not refused["delivered"]
    assert af_job(client, sandbox, far.json()["jobId"]).json()["webhookStatus"] == "failed"


def test_it_answers_apiframe_credit_and_rate_faults(sandbox, client):
    sandbox.queue_fault("insufficient_credit", "apiframe")
    r = af_submit(client, sandbox)
    assert r.status_code == 402
    assert r.json()["error"] == "Insufficient credits" and {"creditsRequired", "creditsAvailable"} <= set(
        r.json()
    )
    sandbox.queue_fault("429", "apiframe")
    r = af_submit(client, sandbox)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert af_submit(client, sandbox).status_code == 202  # a queued fault fires once


def test_it_expires_result_urls(sandbox, client):
    sandbox.queue_fault("expired", "apiframe")
    job_id = af_submit(client, sandbox).json()["jobId"]
    job, _ = poll(client, f"{sandbox.base_url('apiframe')}/v2/jobs/{job_id}", AF, {"COMPLETED"})
    assert job["expired"] is True
    assert client.get(job["result"]["images"][0]).status_code == 404


def test_it_expires_urls_after_the_ttl(client):
    with Sandbox(latency=0.05, url_ttl=0.2) as short:
        job_id = af_submit(client, short).json()["jobId"]
        job, _ = poll(client, f"{short.base_url('apiframe')}/v2/jobs/{job_id}", AF, {"COMPLETED"})
        assert client.get(job["result"]["images"][0]).status_code == 200
        time.sleep(0.25)
        assert client.get(job["result"]["images"][0]).status_code == 404
        assert af_job(client, short, job_id).json()["expired"] is True


def test_it_serves_html_as_an_image_and_oversized_bodies(sandbox, client):
    sandbox.queue_fault("not_image", "apiframe")
    job_id = af_submit(client, sandbox).json()["jobId"]
    job, _ = poll(client, f"{sandbox.base_url('apiframe')}/v2/jobs/{job_id}", AF, {"COMPLETED"})
    r = client.get(job["result"]["images"][0])
    assert r.headers["content-type"] == "image/png" and r.content.startswith(b"<!DOCTYPE html>")

    sandbox.queue_fault("oversized", "apiframe")
    job_id = af_submit(client, sandbox).json()["jobId"]
    job, _ = poll(client, f"{sandbox.base_url('apiframe')}/v2/jobs/{job_id}", AF, {"COMPLETED"})
    with client.stream("GET", job["result"]["images"][0]) as r:
        assert int(r.headers["content-length"]) == 60 * 1024 * 1024
        first = next(r.iter_bytes())
        assert first.startswith(b"\x89PNG\r\n\x1a\n")


def test_it_ends_apiframe_jobs_failed_for_moderation(sandbox, client):
    sandbox.queue_fault("moderation", "apiframe")
    job_id = af_submit(client, sandbox).json()["jobId"]
    job, _ = poll(client, f"{sandbox.base_url('apiframe')}/v2/jobs/{job_id}", AF, {"COMPLETED", "FAILED"})
    assert job["status"] == "FAILED" and "content policy" in job["error"] and job["result"] is None


# -- PixelDojo ----------------------------------------------------------------------------------


def test_it_rejects_a_bad_pixeldojo_key_in_legacy_shape(sandbox, client):
    r = client.get(f"{sandbox.base_url('pixeldojo')}/api/v1/models", headers={"Authorization": "Bearer bad"})
    assert r.status_code == 401
    assert r.json() == {"error": {"code": "invalid_api_key", "message": "Invalid API key", "status": 401}}
    assert client.get(f"{sandbox.base_url('pixeldojo')}/api/v1/models", headers=BEARER).json()["models"]


def test_it_rejects_unknown_pixeldojo_keys(sandbox, client):
    r = pd_run(client, sandbox, guidance=3)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_request" and "guidance" in r.json()["error"]["message"]
    assert pd_run(client, sandbox, resolution="1MP").status_code == 400  # the enum has a space
    assert pd_run(client, sandbox, image_url="http://127.0.0.1/x.png", input_images=[]).status_code == 202


def test_it_runs_a_pixeldojo_job_to_completion(sandbox, client):
    sandbox.set_latency(0.3, 0.3)
    r = pd_run(client, sandbox, aspect_ratio="3:2", resolution="0.5 MP", num_outputs=2, output_format="jpg")
    assert r.status_code == 202
    submit = r.json()
    assert submit["jobId"].startswith("job_") and submit["status"] == "pending"
    assert submit["statusUrl"] == f"{sandbox.url}/pixeldojo/api/v1/jobs/{submit['jobId']}"
    assert submit["creditCost"] == 4 and isinstance(submit["creditsRemaining"], int)
    assert submit["expiresAt"].endswith("Z")
    body, seen = poll(client, submit["statusUrl"], BEARER, {"completed", "failed"})
    assert body["status"] == "completed" and "pending" in seen and body["expiresAt"] == submit["expiresAt"]
    assert len(body["output"]["images"]) == 2
    for url in body["output"]["images"]:
        image, _ = open_image(client, url)
        assert image.size == (880, 592) and image.format == "JPEG"  # 0.5 MP at 3:2


def test_it_returns_a_single_pixeldojo_image_when_configured(sandbox, client):
    sandbox.options["pixeldojo_output_shape"] = "image"
    status_url = pd_run(client, sandbox, output_format="webp").json()["statusUrl"]
    body, _ = poll(client, status_url, BEARER, {"completed"})
    image, _ = open_image(client, body["output"]["image"])
    assert image.size == (1024, 1024) and image.format == "WEBP"


def test_it_answers_pixeldojo_faults(sandbox, client):
    sandbox.queue_fault("insufficient_credit", "pixeldojo")
    r = pd_run(client, sandbox)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_credits"
    sandbox.queue_fault("429", "pixeldojo")
    r = pd_run(client, sandbox)
    assert (
        r.status_code == 429
        and r.headers["Retry-After"] == "1"
        and r.json()["error"]["code"] == "quota_exceeded"
    )
    sandbox.queue_fault("failure", "pixeldojo")
    body, _ = poll(client, pd_run(client, sandbox).json()["statusUrl"], BEARER, {"completed", "failed"})
    assert body["status"] == "failed" and body["error"]


# -- BFL ----------------------------------------------------------------------------------------
XKEY = {"x-key": "bfl_test"}


def bfl_submit(client, sandbox, model="flux-2-max", headers=None, **body):
    return client.post(
        f"{sandbox.base_url('bfl')}/v1/{model}",
        json={"prompt": "a fox in snow", **body},
        headers=XKEY if headers is None else headers,
    )


def bfl_done(client, sandbox, fault=None, **body):
    if fault:
        sandbox.queue_fault(fault, "bfl")
    submitted = bfl_submit(client, sandbox, **body).json()
    final, seen = poll(
        client, submitted["polling_url"], XKEY, {"Ready", "Error", "Content Moderated", "Request Moderated"}
    )
    return submitted, final, seen


def test_it_rejects_missing_and_bad_bfl_keys(sandbox, client):
    r = bfl_submit(client, sandbox, headers={})
    assert (r.status_code, r.json()) == (403, {"detail": "Not authenticated"})  # FastAPI's header guard
    r = bfl_submit(client, sandbox, headers={"x-key": "bad_key"})
    assert (r.status_code, r.json()) == (401, {"detail": "Invalid API key"})
    r = bfl_submit(client, sandbox, headers={"Authorization": "Bearer bfl_test"})  # x-key, not Bearer
    assert r.status_code == 403


def test_it_runs_a_bfl_job_to_its_signed_sample(sandbox, client):
    submitted, final, seen = bfl_done(client, sandbox, width=1360, height=768, output_format="png", seed=7)
    assert set(submitted) == {"id", "polling_url", "cost", "input_mp", "output_mp"}
    assert submitted["polling_url"] == f"{sandbox.base_url('bfl')}/v1/get_result?id={submitted['id']}"
    assert submitted["cost"] == pytest.approx(7 + 3 * 0.04) and submitted["output_mp"] == 1.04
    assert seen[0] == "Pending" and seen[-1] == "Ready"
    assert final["id"] == submitted["id"] and final["result"]["seed"] == 7
    sample = final["result"]["sample"]
    assert "/bfl/_files/" in sample and "?se=" in sample and "&sig=" in sample
    image, r = open_image(client, sample)
    assert (image.format, image.size) == ("PNG", (1360, 768))


def test_it_prices_flux_2_pro_and_reference_images_at_bfl_s_list_price(sandbox, client):
    r = bfl_submit(
        client, sandbox, "flux-2-pro", width=1024, height=1024, input_image="https://example.com/a.png"
    )
    assert r.status_code == 200 and r.json()["cost"] == pytest.approx(3 + 1.5 * 0.05 + 1.5, abs=0.01)
    assert r.json()["input_mp"] == 1.0


def test_it_validates_bfl_bodies_as_fastapi_does(sandbox, client):
    r = bfl_submit(client, sandbox, width=1000, height=1024)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "width"]
    r = client.post(f"{sandbox.base_url('bfl')}/v1/flux-2-max", json={"width": 1024}, headers=XKEY)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "prompt"]
    assert bfl_submit(client, sandbox, width=2048, height=2560).status_code == 422  # past 4 MP
    assert bfl_submit(client, sandbox, safety_tolerance=6).status_code == 422
    assert bfl_submit(client, sandbox, output_format="webp").status_code == 422
    assert bfl_submit(client, sandbox, "flux-3-ultra").status_code == 404
    assert bfl_submit(client, sandbox, unknown_key=1).status_code == 200  # pydantic ignores extras


def test_it_answers_task_not_found_for_unknown_and_foreign_bfl_jobs(sandbox, client):
    job_id = bfl_submit(client, sandbox).json()["id"]
    url = f"{sandbox.base_url('bfl')}/v1/get_result"
    assert client.get(url, params={"id": "nope"}, headers=XKEY).json() == {
        "id": "nope",
        "status": "Task not found",
    }
    assert (
        client.get(url, params={"id": job_id}, headers={"x-key": "bfl_other"}).json()["status"]
        == "Task not found"
    )
    assert client.get(url, headers=XKEY).status_code == 422


def test_it_allows_24_active_bfl_tasks_per_key(sandbox, client):
    sandbox.set_latency(30, 30)
    assert all(bfl_submit(client, sandbox).status_code == 200 for _ in range(24))
    refused = bfl_submit(client, sandbox)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert refused.json()["message"] == "Too many concurrent requests"
    assert bfl_submit(client, sandbox, headers={"x-key": "bfl_other_team"}).status_code == 200


@pytest.mark.parametrize("word", ["Content Moderated", "Request Moderated"])
def test_it_ends_bfl_jobs_moderated(sandbox, client, word):
    sandbox.options["bfl_moderation_word"] = word
    _, final, _ = bfl_done(client, sandbox, "moderation")
    assert final["status"] == word and final["result"] is None


def test_it_ends_bfl_jobs_in_error_with_a_string_or_an_object(sandbox, client):
    _, final, _ = bfl_done(client, sandbox, "failure")
    assert final["status"] == "Error" and isinstance(final["error"], str)
    _, final, _ = bfl_done(client, sandbox, "error_object")
    assert isinstance(final["error"], dict) and final["error"]["message"]


def test_it_answers_bfl_credit_rate_and_server_faults(sandbox, client):
    sandbox.queue_fault("insufficient_credit", "bfl")
    assert bfl_submit(client, sandbox).status_code == 402
    sandbox.queue_fault("429", "bfl")
    assert bfl_submit(client, sandbox).headers["Retry-After"] == "1"
    sandbox.options["fault_5xx_status"] = 503
    sandbox.queue_fault("5xx", "bfl")
    r = bfl_submit(client, sandbox)
    assert (r.status_code, r.json()) == (503, {"detail": "Service Unavailable"})


def test_it_expires_bfl_samples(sandbox, client):
    _, final, _ = bfl_done(client, sandbox, "expired")
    assert client.get(final["result"]["sample"]).status_code == 404


def test_it_delivers_signed_bfl_webhooks_and_answers_without_a_polling_url(sandbox, client, receiver):
    url, received = receiver
    sandbox.queue_fault("moderation", "bfl")
    moderated = bfl_submit(client, sandbox, webhook_url=url).json()
    done = bfl_submit(client, sandbox, webhook_url=url, webhook_secret="whsec_1").json()
    assert set(done) == {"id", "status", "webhook_url"} and done["webhook_url"] == url  # AsyncWebhookResponse
    deadline = time.monotonic() + 5
    while len(received) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    bodies = {json.loads(raw)["id"]: (headers, raw) for headers, raw in received}
    headers, raw = bodies[done["id"]]
    expected = "sha256=" + hmac.new(b"whsec_1", raw, hashlib.sha256).hexdigest()
    assert headers["X-BFL-Signature"] == expected
    assert json.loads(raw)["status"] == "Ready" and "/bfl/_files/" in json.loads(raw)["result"]["sample"]
    headers, raw = bodies[moderated["id"]]
    assert "X-BFL-Signature" not in headers  # no secret, no signature
    assert json.loads(raw)["status"] == "Error" and json.loads(raw)["error"] == "Content Moderated"
    polled = client.get(f"{sandbox.base_url('bfl')}/v1/get_result", params={"id": done["id"]}, headers=XKEY)
    assert polled.json()["status"] == "Ready"  # polling still works beside the webhook


def test_it_never_sends_a_bfl_webhook_off_loopback(sandbox, client):
    job = bfl_submit(client, sandbox, webhook_url="https://example.com/hooks/bfl").json()
    deadline = time.monotonic() + 5
    while not sandbox.deliveries and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    assert [(d["job"], d["refused"], d["delivered"]) for d in sandbox.deliveries] == [
        (job["id"], True, False)
    ]


# -- request faults in general ------------------------------------------------------------------


def test_it_injects_5xx_malformed_auth_and_latency(sandbox, client):
    sandbox.options.update(fault_5xx_status=503, latency_fault_seconds=0.2)
    sandbox.queue_fault("5xx", "pixeldojo")
    assert pd_run(client, sandbox).status_code == 503
    sandbox.queue_fault("malformed", "pixeldojo")
    r = pd_run(client, sandbox)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    sandbox.queue_fault("auth", "pixeldojo")
    assert pd_run(client, sandbox).status_code == 401
    sandbox.queue_fault("latency", "pixeldojo")
    started = time.monotonic()
    assert pd_run(client, sandbox).status_code == 202
    assert time.monotonic() - started >= 0.2


def test_it_hangs_without_answering(sandbox, client):
    sandbox.options["hang_seconds"] = 0.2
    sandbox.queue_fault("hang", "apiframe")
    with pytest.raises(httpx.RemoteProtocolError):  # held, then closed unanswered
        af_submit(client, sandbox)
    sandbox.options["hang_seconds"] = 5
    sandbox.queue_fault("hang", "apiframe")
    url = f"{sandbox.base_url('apiframe')}/v2/images/generate"
    with pytest.raises(httpx.ReadTimeout):
        client.post(url, json={"prompt": "x", "model": "flux-2-max"}, headers=AF, timeout=0.2)


def test_it_scopes_faults_by_provider_and_phase(sandbox, client):
    sandbox.set_faults({"apiframe.429": 1.0})
    assert af_submit(client, sandbox).status_code == 429
    assert pd_run(client, sandbox).status_code == 202
    sandbox.set_faults({})
    task_id = vx_create(client, sandbox, {}).json()["id"]
    sandbox.queue_fault("5xx", "vtrix", phase="poll")
    assert vx_create(client, sandbox, {}).status_code == 200  # submits are untouched
    task_url = f"{sandbox.base_url('vtrix')}/model/v1/generation/task/{task_id}"
    assert client.get(task_url, headers=BEARER).status_code >= 500
    assert client.get(task_url, headers=BEARER).status_code == 200


# -- control API --------------------------------------------------------------------------------


def test_it_exposes_the_control_api_over_http(sandbox, client):
    control = f"{sandbox.url}/_sandbox"
    health = client.get(f"{control}/health").json()
    assert health["ok"] and health["providers"]["apiframe"] == sandbox.base_url("apiframe")

    assert client.post(f"{control}/queue", json={"kind": "429", "provider": "apiframe"}).status_code == 200
    assert af_submit(client, sandbox).status_code == 429
    assert client.post(f"{control}/queue", json={"kind": "nope"}).status_code == 400

    assert client.post(f"{control}/faults", json={"maxapi.5xx": 1.0}).json()["faults"] == {"maxapi.5xx": 1.0}
    body = {"model": "flux-plus", "prompt": "cat", "n": 1, "size": "256x256"}
    assert (
        client.post(
            f"{sandbox.base_url('maxapi')}/v1/images/generations", json=body, headers=BEARER
        ).status_code
        >= 500
    )
    client.post(f"{control}/faults", json={})

    assert client.post(f"{control}/latency", json={"min": 0.01, "max": 0.02}).json()["latency"] == [
        0.01,
        0.02,
    ]
    assert sandbox.latency == (0.01, 0.02)
    assert client.post(f"{control}/options", json={"vtrix_status_word": "processing"}).status_code == 200
    assert sandbox.options["vtrix_status_word"] == "processing"
    assert client.post(f"{control}/options", json={"vtrix_status_word": "busy"}).status_code == 400

    rows = client.get(f"{control}/requests").json()["requests"]
    submit = [r for r in rows if r["provider"] == "apiframe"][0]
    assert submit["method"] == "POST" and submit["path"] == "/v2/images/generate"
    assert submit["json"]["model"] == "flux-2-max" and submit["headers"]["x-api-key"] == "afk_test"
    assert (
        sandbox.requests[0]["provider"] == "apiframe"
        and sandbox.requests[0].headers["X-API-Key"] == "afk_test"
    )

    assert client.post(f"{control}/reset").json() == {"ok": True}
    assert client.get(f"{control}/requests").json()["requests"] == []
    assert sandbox.latency == (0.05, 0.15) and sandbox.options["vtrix_status_word"] == "in_progress"


def test_it_imports_without_django():
    code = "import sys, generations.providers.sandbox; sys.exit('django' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


# -- the hostile provider (issue 7) ---------------------------------------------------------------


def af_done(client, sandbox, fault):
    sandbox.queue_fault(fault, "apiframe")
    job_id = af_submit(client, sandbox).json()["jobId"]
    job, _ = poll(client, f"{sandbox.base_url('apiframe')}/v2/jobs/{job_id}", AF, {"COMPLETED", "FAILED"})
    return job


def test_it_gives_every_provider_s_error_as_an_object_where_a_string_belongs(sandbox, client):
    job = af_done(client, sandbox, "error_object")
    assert job["status"] == "FAILED" and isinstance(job["error"], dict) and job["error"]["message"]

    sandbox.queue_fault("error_object", "pixeldojo")
    job_id = pd_run(client, sandbox).json()["jobId"]
    body, _ = poll(client, f"{sandbox.base_url('pixeldojo')}/api/v1/jobs/{job_id}", BEARER, {"failed"})
    assert isinstance(body["error"], dict) and body["error"]["message"]

    sandbox.queue_fault("error_object", "vtrix")
    task_id = vx_create(client, sandbox, {}).json()["id"]
    body, _ = poll(
        client, f"{sandbox.base_url('vtrix')}/model/v1/generation/task/{task_id}", BEARER, {"failed"}
    )
    assert isinstance(body["error"]["message"], dict)

    sandbox.queue_fault("error_object", "maxapi")
    url = f"{sandbox.base_url('maxapi')}/v1/images/generations"
    r = client.post(
        url, json={"model": "flux-plus", "prompt": "cat", "n": 1, "size": "512x512"}, headers=BEARER
    )
    assert r.status_code == 400 and isinstance(r.json()["error"]["message"], dict)


def test_it_swaps_the_type_of_every_value_in_a_reply(sandbox, client):
    sandbox.queue_fault("wrong_types", "apiframe")
    submitted = af_submit(client, sandbox)
    assert submitted.status_code == 202
    assert submitted.json() == {
        "jobId": {"message": submitted.json()["jobId"]["message"]},
        "status": {"message": "QUEUED"},
    }
    job_id = submitted.json()["jobId"]["message"]  # the job exists: only its reply lied
    sandbox.queue_fault("wrong_types", "apiframe", phase="poll")
    job = af_job(client, sandbox, job_id).json()
    assert isinstance(job["status"], dict) and isinstance(job["progress"], str) and job["result"] == {}
    assert af_job(client, sandbox, job_id).json()["status"] in ("QUEUED", "PROCESSING", "COMPLETED")  # once


@pytest.mark.parametrize(
    ("fault", "url"), [("bad_url", "http://[::1/apiframe/_files/"), ("control_url", "/_files/\x01")]
)
def test_it_hands_out_result_links_no_client_can_request(sandbox, client, fault, url):
    link = af_done(client, sandbox, fault)["result"]["images"][0]
    assert url in link
    with pytest.raises(httpx.InvalidURL):
        client.get(link)


def test_it_serves_truncated_and_cut_off_images(sandbox, client):
    whole = client.get(af_done(client, sandbox, "truncated")["result"]["images"][0])
    assert whole.status_code == 200 and int(whole.headers["content-length"]) == len(whole.content)
    with pytest.raises(OSError):
        Image.open(io.BytesIO(whole.content)).load()

    with pytest.raises(httpx.RemoteProtocolError):  # the length promised more than came before the close
        client.get(af_done(client, sandbox, "cut_off")["result"]["images"][0])


def test_it_drips_an_image_one_byte_at_a_time(sandbox, client):
    sandbox.options["drip_seconds"] = 0.05
    link = af_done(client, sandbox, "slow_drip")["result"]["images"][0]
    started, chunks = time.monotonic(), []
    with client.stream("GET", link) as r:
        assert int(r.headers["content-length"]) > 1000
        for chunk in r.iter_raw():
            chunks.append(chunk)
            if sum(map(len, chunks)) >= 5:
                break
    # A byte at a time (a loaded machine may hand two or three dripped bytes over in one read), never the
    # body at once: five bytes take at least four pauses.
    assert sum(map(len, chunks)) <= 8 and max(map(len, chunks)) <= 4
    assert time.monotonic() - started >= 0.2


def test_the_hostile_faults_are_named_on_the_command_line():
    from generations.providers.sandbox import FAULT_KINDS, HOSTILE_FAULTS, parse_fault

    assert set(HOSTILE_FAULTS) <= set(FAULT_KINDS)
    assert parse_fault("vtrix.poll.wrong_types:0.5") == ("vtrix.poll.wrong_types", 0.5)
    assert parse_fault("pixeldojo.slow_drip") == ("pixeldojo.slow_drip", 1.0)
    with pytest.raises(ValueError):
        parse_fault("poll.bad_url:1")


def test_fault_scopes_name_every_emulated_provider_and_no_other():
    from generations.providers.sandbox import parse_fault
    from generations.providers.sandbox.server import APPS

    for app in APPS:
        assert parse_fault(f"{app.name}.poll.429:0.5") == (f"{app.name}.poll.429", 0.5)
    assert parse_fault("bfl.error_object") == ("bfl.error_object", 1.0)
    with pytest.raises(ValueError, match="unknown provider"):
        Sandbox().queue_fault("429", "acme")
