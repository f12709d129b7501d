"""Media through Django's storage API (issue 10, item 2): on disk by default, or in a private S3-compatible
bucket with FLUXWEB_STORAGE=s3. The bucket is a moto S3 server this module starts on 127.0.0.1 (a free port);
without moto the tests skip, except in CI (CI=true), where that is a failure."""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image as PILImage

from fluxweb.settings import media_storage
from generations import archive, credits, media
from generations.models import ApiToken, Generation, Reference

from .conftest import services_required

ENV = {"AWS_ACCESS_KEY_ID": "fluxweb-test", "AWS_SECRET_ACCESS_KEY": "fluxweb-test-secret"}


# -- the setting ------------------------------------------------------------------------------------------------
def test_it_keeps_media_on_disk_by_default(tmp_path):
    assert media_storage({}, tmp_path) == {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": tmp_path},
    }


def test_it_reads_the_bucket_from_the_environment(tmp_path):
    config = media_storage(
        {
            "FLUXWEB_STORAGE": "s3",
            "FLUXWEB_S3_BUCKET": "studio-media",
            "FLUXWEB_S3_ENDPOINT_URL": "https://s3.example.test",
            "FLUXWEB_S3_REGION": "eu-central-1",
            "FLUXWEB_S3_PREFIX": "/fluxweb/",
        },
        tmp_path,
    )
    assert config["BACKEND"] == "storages.backends.s3.S3Storage"
    options = config["OPTIONS"]
    assert (options["bucket_name"], options["endpoint_url"], options["region_name"], options["location"]) == (
        "studio-media",
        "https://s3.example.test",
        "eu-central-1",
        "fluxweb",
    )
    # Private: no ACL of ours, signed URLs only, five minutes by default; no key is ever a setting.
    assert (options["default_acl"], options["querystring_auth"], options["querystring_expire"]) == (
        None,
        True,
        300,
    )
    assert not {"access_key", "secret_key"} & set(options)


@pytest.mark.parametrize(
    "env, words",
    [
        ({"FLUXWEB_STORAGE": "ftp"}, "FLUXWEB_STORAGE must be local or s3"),
        ({"FLUXWEB_STORAGE": "s3"}, "needs FLUXWEB_S3_BUCKET"),
        ({"FLUXWEB_STORAGE": "s3", "FLUXWEB_S3_BUCKET": "b", "FLUXWEB_S3_URL_EXPIRE": "1h"}, "1 to 3600"),
        ({"FLUXWEB_STORAGE": "s3", "FLUXWEB_S3_BUCKET": "b", "FLUXWEB_S3_URL_EXPIRE": "86400"}, "1 to 3600"),
        (
            {"FLUXWEB_STORAGE": "s3", "FLUXWEB_S3_BUCKET": "b", "FLUXWEB_SENDFILE_HEADER": "X-Sendfile"},
            "X-Accel",
        ),
    ],
)
def test_it_refuses_a_storage_setting_it_cannot_use(tmp_path, env, words):
    with pytest.raises(ImproperlyConfigured, match=words):
        media_storage(env, tmp_path)


# -- a moto S3 server on loopback -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_server():
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        if services_required():
            pytest.fail("CI needs moto[server] for the S3 storage tests (pip install -e '.[test]').")
        pytest.skip("moto[server] is not installed: pip install -e '.[test]' to run the S3 storage tests")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_server, settings, monkeypatch, tmp_path):
    """A fresh private bucket as the default storage, configured as an operator would: environment only.
    MEDIA_ROOT points at an empty folder, to prove nothing lands on disk."""
    import boto3

    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    name = f"fluxweb-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", **_keys())
    s3.create_bucket(Bucket=name)
    env = {"FLUXWEB_STORAGE": "s3", "FLUXWEB_S3_BUCKET": name, "FLUXWEB_S3_ENDPOINT_URL": s3_server}
    env["FLUXWEB_S3_REGION"] = "us-east-1"
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.STORAGES = settings.STORAGES | {"default": media_storage(env, settings.MEDIA_ROOT)}
    s3.name = name
    yield s3
    from django.core.files.storage import default_storage

    assert type(default_storage._wrapped).__name__ == "S3Storage"
    assert not Path(settings.MEDIA_ROOT).exists(), "a file reached the disk"


def _keys() -> dict:
    return {
        "aws_access_key_id": ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": ENV["AWS_SECRET_ACCESS_KEY"],
    }


def keys_in(s3) -> set[str]:
    return {item["Key"] for item in s3.list_objects_v2(Bucket=s3.name).get("Contents", [])}


def fetch(url: str) -> httpx.Response:
    """What a browser following the redirect gets from the bucket."""
    return httpx.get(url, timeout=10)


def api(user) -> Client:
    _, token = ApiToken.issue(user)
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def png(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), (30, 120, 200)).save(out, "PNG")
    return out.getvalue()


# -- end to end -------------------------------------------------------------------------------------------------
def test_a_generation_is_stored_in_the_bucket_and_downloaded(bob, accounts, drain, bucket, client):
    """Create through the API, run through the sandbox, store in the bucket; then the file, its thumbnail,
    the download with and without our metadata, and the zip, each read back through the storage API."""
    created = api(bob).post(
        "/api/v1/generations",
        json.dumps({"prompt": "a lighthouse at dusk", "model": "flux-2-max", "provider": "sb-apiframe"}),
        content_type="application/json",
    )
    assert created.status_code == 202, created.content
    drain()
    generation = Generation.objects.get(pk=created.json()["id"])
    assert generation.status == "succeeded", generation.error_message
    image = generation.images.get()
    assert keys_in(bucket) == {image.file.name, image.thumbnail.name}
    assert credits.reconcile() == []
    # Private: the objects carry no grant beyond the bucket owner's.
    grants = bucket.get_object_acl(Bucket=bucket.name, Key=image.file.name)["Grants"]
    assert all("URI" not in grant["Grantee"] for grant in grants), grants

    client.force_login(bob)
    response = client.get(f"/images/{image.pk}/file")
    assert response.status_code == 302
    assert response["Cache-Control"] == "private, max-age=150"
    signed = urlsplit(response["Location"])
    query = parse_qs(signed.query)
    assert signed.netloc == urlsplit(bucket.meta.endpoint_url).netloc
    assert query["X-Amz-Expires"] == ["300"] and "X-Amz-Signature" in query
    original = fetch(response["Location"])
    assert original.status_code == 200
    assert original.headers["Content-Type"] == "image/jpeg" == image.content_type
    assert original.headers["Content-Disposition"].startswith("inline;")
    assert original.headers["Cache-Control"] == "private, max-age=86400"
    with PILImage.open(io.BytesIO(original.content)) as decoded:
        assert decoded.size == (image.width, image.height)
    assert b'"prompt":"a lighthouse at dusk"' in original.content  # our metadata, embedded

    thumbnail = fetch(api(bob).get(f"/api/v1/images/{image.pk}/thumbnail")["Location"])
    with PILImage.open(io.BytesIO(thumbnail.content)) as decoded:
        assert max(decoded.size) == 512

    attachment = fetch(client.get(f"/images/{image.pk}/download")["Location"])
    assert attachment.headers["Content-Disposition"] == f'attachment; filename="{archive.file_name(image)}"'
    assert attachment.content == original.content
    stripped = client.get(f"/images/{image.pk}/download?metadata=0")
    assert stripped.status_code == 200 and stripped["Content-Disposition"].startswith("attachment;")
    assert stripped.content == archive.strip_metadata(original.content, image.format)
    assert b"lighthouse" not in stripped.content

    zipped = client.post("/gallery/bulk", {"image": [image.pk], "action": "zip"})
    assert zipped.status_code == 200 and zipped.streaming
    with zipfile.ZipFile(io.BytesIO(b"".join(zipped.streaming_content))) as archive_:
        assert archive_.read(archive.file_name(image)) == original.content
        rows = list(csv.DictReader(io.StringIO(archive_.read("manifest.csv").decode())))
    assert [row["prompt"] for row in rows] == ["a lighthouse at dusk"]

    # Access is checked before any URL is signed.
    client.logout()
    refused = client.get(f"/images/{image.pk}/file")
    assert refused.status_code == 302 and "amz" not in refused["Location"].lower()


def test_an_upload_goes_to_the_bucket_and_reaches_the_provider_by_its_signed_link(
    bob, accounts, bucket, client
):
    made = api(bob).post("/api/v1/references", {"file": SimpleUploadedFile("ref.png", png(), "image/png")})
    assert made.status_code == 201, made.content
    reference = Reference.objects.get(pk=made.json()["id"])
    assert reference.file.name in keys_in(bucket)

    # A provider fetching a reference may not follow a redirect: the bytes come through FluxWeb.
    response = client.get(urlsplit(media.upload_url(reference)).path)
    assert response.status_code == 200 and response.streaming
    assert b"".join(response.streaming_content) == png()
    assert response["Content-Length"] == str(len(png()))
    assert response["Content-Type"] == "image/png"


def test_nginx_can_send_a_bucket_file_through_x_accel_redirect(
    bob, accounts, drain, bucket, client, settings
):
    from generations import engine
    from generations.providers import GenerationRequest

    generation, _ = engine.create(
        bob, GenerationRequest(prompt="a fox", model="flux-2-max"), provider="sb-apiframe"
    )
    drain()
    image = Generation.objects.get(pk=generation.pk).images.get()
    settings.FLUXWEB_SENDFILE_HEADER = "X-Accel-Redirect"
    client.force_login(bob)
    response = client.get(f"/images/{image.pk}/file")
    assert response.status_code == 200 and response.content == b""
    target = response["X-Accel-Redirect"]
    host = urlsplit(bucket.meta.endpoint_url).netloc
    assert target.startswith(f"/_s3/{host}/{bucket.name}/{image.file.name}?")
    # The internal location proxies the signed URL as it is: it answers with the file.
    assert fetch("http://" + target.removeprefix("/_s3/")).content == media.read_bytes(image.file)


def test_the_default_stays_on_disk(bob, accounts, drain, settings):
    from django.core.files.storage import default_storage

    from generations import engine
    from generations.providers import GenerationRequest

    assert os.environ.get("FLUXWEB_STORAGE", "local") == "local"
    generation, _ = engine.create(
        bob, GenerationRequest(prompt="a fox", model="flux-2-max"), provider="sb-apiframe"
    )
    drain()
    image = Generation.objects.get(pk=generation.pk).images.get()
    assert Path(default_storage.path(image.file.name)).is_file()


def test_a_bucket_error_while_cleaning_up_is_logged_not_raised(bucket, monkeypatch, caplog):
    """The ingest deletes the files of a job it could not record; a bucket that fails then (not an OSError)
    must not turn the clean-up into a second failure."""
    from botocore.exceptions import EndpointConnectionError
    from django.core.files.storage import default_storage

    from .conftest import saved_files

    saved = saved_files(1)
    assert {saved[0].file, saved[0].thumbnail} <= keys_in(bucket)

    def unreachable(storage, name):
        raise EndpointConnectionError(endpoint_url=bucket.meta.endpoint_url)

    monkeypatch.setattr(type(default_storage._wrapped), "delete", unreachable)
    media.delete_files(saved)
    assert caplog.text.count("could not delete") == 2
