"""docs/operations.md's nginx site, run as written (issue 10, item 7). The example is read from the docs,
pointed at loopback ports, a test certificate and the test media folder, and must pass `nginx -t` on the
nginx Debian ships; then nginx ends TLS in front of the live server and sends an image itself through
X-Accel-Redirect once Django has checked access. `bin/setup --test` unpacks Debian's nginx into .venv when
the machine has none; where neither is found the test skips, except in CI."""

from __future__ import annotations

import datetime
import io
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.conf import settings as django_settings
from PIL import Image as PILImage

from generations import media
from generations.models import ApiToken

from .conftest import ROOT, make_job

HOST = "studio.example.com"  # sent as the Host header only: every connection goes to 127.0.0.1


def png(colour: str) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (16, 12), colour).save(out, "PNG")
    return out.getvalue()


def nginx_binary() -> str | None:
    bundled = ROOT / ".venv" / "nginx" / "usr" / "sbin" / "nginx"
    return shutil.which("nginx") or (str(bundled) if bundled.exists() else None)


NGINX = nginx_binary()
pytestmark = pytest.mark.skipif(
    NGINX is None and os.environ.get("CI") != "true",
    reason="no nginx on this machine (bin/setup --test unpacks Debian's into .venv/nginx)",
)


def site_from_docs() -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### nginx", 1)[1]
    return re.search(r"```nginx\n(.*?)```", section, re.S).group(1)


def replace_once(text: str, old: str, new: str) -> str:
    # The docs changed under the test: say which line is gone rather than test something else.
    assert text.count(old) == 1, f"docs/operations.md's nginx site no longer has {old!r} once"
    return text.replace(old, new)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def configure(folder: Path, upstream: int, http_port: int, https_port: int) -> Path:
    """The docs' site on loopback, inside a minimal main config (the one a distribution ships)."""
    cert, key = self_signed(folder)
    site = site_from_docs()
    site = replace_once(site, "server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};")
    site = replace_once(site, "listen 80;", f"listen 127.0.0.1:{http_port};")
    site = replace_once(site, "listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    site = replace_once(site, f"/etc/letsencrypt/live/{HOST}/fullchain.pem", str(cert))
    site = replace_once(site, f"/etc/letsencrypt/live/{HOST}/privkey.pem", str(key))
    site = replace_once(site, "alias /srv/fluxweb/data/media/;", f"alias {django_settings.MEDIA_ROOT}/;")
    (folder / "site.conf").write_text(site)
    temp = {name: folder / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    main = folder / "nginx.conf"
    main.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")  # workers read the test's media folder
        + f"""daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {folder}/access.log;
    types {{ image/png png; image/jpeg jpg; text/html html; }}
    default_type application/octet-stream;
"""
        + "".join(f"    {name}_temp_path {path};\n" for name, path in temp.items()).replace(
            "body_temp_path", "client_body_temp_path"
        )
        + f"    include {folder}/site.conf;\n}}\n"
    )
    return main


@pytest.fixture
def nginx(live_server, tmp_path, settings):
    if NGINX is None:
        pytest.fail("CI needs nginx: bin/setup --test unpacks Debian's into .venv/nginx")
    settings.FLUXWEB_SENDFILE_HEADER = "X-Accel-Redirect"
    settings.ALLOWED_HOSTS = [HOST]
    upstream = int(live_server.url.rsplit(":", 1)[1])
    http_port, https_port = free_port(), free_port()
    conf = configure(tmp_path, upstream, http_port, https_port)
    check = subprocess.run(
        [NGINX, "-t", "-q", "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr + (tmp_path / "error.log").read_text()
    process = subprocess.Popen([NGINX, "-e", str(tmp_path / "error.log"), "-c", str(conf)])
    client = httpx.Client(verify=False, headers={"Host": HOST}, timeout=10)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.get(f"https://127.0.0.1:{https_port}/healthz")
            break
        except httpx.TransportError:
            assert process.poll() is None, (tmp_path / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not answer within 10 s"
            time.sleep(0.1)
    yield client, f"http://127.0.0.1:{http_port}", f"https://127.0.0.1:{https_port}"
    client.close()
    process.terminate()
    process.wait(10)


@pytest.mark.slow
def test_the_documented_nginx_site_sends_images_itself_after_django_checked_access(
    transactional_db, nginx, bob, accounts
):
    client, http_url, https_url = nginx
    generation = make_job(bob, accounts["apiframe"], status="succeeded")
    image = media.store_image(generation, 0, media.check_image(png("teal")), {"prompt": "x"}, seed=1)
    on_disk = Path(image.file.path).read_bytes()
    token = ApiToken.issue(bob)[1]

    sent = client.get(
        f"{https_url}/api/v1/images/{image.pk}/file", headers={"Authorization": f"Bearer {token}"}
    )

    # Django answered with an empty body and X-Accel-Redirect; nginx sent the file and kept the safe headers.
    assert sent.status_code == 200, (sent.status_code, sent.headers)
    assert sent.content == on_disk
    assert sent.headers["content-type"] == "image/png"
    assert sent.headers["x-content-type-options"] == "nosniff"
    assert sent.headers["content-disposition"].startswith("inline; filename=")
    assert "x-accel-redirect" not in sent.headers
    # No token: Django refuses, and nginx sends nothing of the file.
    refused = client.get(f"{https_url}/api/v1/images/{image.pk}/file")
    assert refused.status_code == 401 and on_disk not in refused.content
    # The internal location is reached only through Django, never by a client's own request.
    assert client.get(f"{https_url}/_media/{image.file.name}").status_code == 404
    # Plain http: a redirect to https, except the load balancer's health probe, which reaches Django.
    redirect = client.get(f"{http_url}/studio/")
    assert redirect.status_code == 301 and redirect.headers["location"] == f"https://{HOST}/studio/"
    assert "checks" in client.get(f"{http_url}/healthz").json()
