"""docs/operations.md's backup and restore (issue 10, item 7): the database dumped with `dumpdata`, the media
folder copied, then restored on a fresh data folder: every image is found, file and thumbnail, and opens."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.management import call_command
from PIL import Image as PILImage

from generations import media
from generations.models import Generation, Image, Prompt

# As docs/operations.md says: rows that migrate makes again, sessions and login attempts stay out.
DUMP_EXCLUDES = ["-e", "contenttypes", "-e", "auth.permission", "-e", "sessions", "-e", "axes"]
ROOT = Path(__file__).resolve().parent.parent
CHECK = """
import django; django.setup()
import json
from PIL import Image as PILImage
from generations.models import Image
found = []
for image in Image.objects.all():
    for field in (image.file, image.thumbnail):
        with field.open("rb") as f:
            PILImage.open(f).verify()
    found.append([image.pk, image.generation.prompt.text])
print(json.dumps(found))
"""


def png(colour: str) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (16, 12), colour).save(out, "PNG")
    return out.getvalue()


@pytest.mark.slow
def test_a_restored_backup_finds_every_image(bob, accounts, tmp_path):
    for n, colour in enumerate(["teal", "orange", "navy"]):
        generation = Generation.objects.create(
            user=bob,
            prompt=Prompt.remember(f"backup {colour}", bob),
            model="flux-2-max",
            account=accounts["apiframe"],
            status="succeeded",
        )
        media.store_image(generation, 0, media.check_image(png(colour)), {"prompt": colour}, seed=n)
    expected = sorted([image.pk, image.generation.prompt.text] for image in Image.objects.all())

    # Backup: the database as JSON, the media folder as files.
    dump = tmp_path / "fluxweb.json"
    call_command("dumpdata", *DUMP_EXCLUDES, "--natural-foreign", "--output", str(dump), verbosity=0)
    restored = tmp_path / "restored"
    shutil.copytree(settings.MEDIA_ROOT, restored / "media")

    # Restore on a fresh machine: migrate an empty database, load the dump, read every image.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "fluxweb.settings",
        "DJANGO_SECRET_KEY": "s" * 50,
        "FLUXWEB_FERNET_KEYS": Fernet.generate_key().decode(),
        "FLUXWEB_DATA_DIR": str(restored),
    }

    def run(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    run("manage.py", "migrate", "--no-input", "-v0")
    run("manage.py", "loaddata", str(dump), "-v0")
    found = json.loads(run("-c", CHECK))

    assert sorted(found) == expected and len(found) == 3
