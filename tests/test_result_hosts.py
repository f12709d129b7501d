"""Issue 9.2: a provider that delivers its results from a host nobody allowed has charged for them. The job
waits where an admin sees it, one click allows the host and fetches again; left alone, it fails at the
deadline, refunded, and the usage report counts a provider charge without an image."""

import re
from dataclasses import replace
from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.urls import reverse

from accounts.models import AuditEntry
from generations import credits, engine, sweeper
from generations.models import Generation, ProviderAccount
from generations.providers import GenerationRequest


@pytest.fixture
def new_host(monkeypatch):
    """The provider moves its result files to a host FluxWeb does not know: the sandbox's own files, named
    `localhost` instead of the account's `127.0.0.1` (loopback either way)."""
    original = sweeper.provider_done

    def moved(generation, outcome):
        urls = tuple(url.replace("//127.0.0.1:", "//localhost:") for url in outcome.image_urls)
        original(generation, replace(outcome, image_urls=urls))

    monkeypatch.setattr(sweeper, "provider_done", moved)


def waiting_job(bob, drain) -> Generation:
    job, _ = engine.create(
        bob, GenerationRequest(prompt="a red kite", model="flux-2-max"), provider="sb-apiframe"
    )
    drain()
    job.refresh_from_db()
    return job


def test_a_refused_host_is_never_refunded_silently_the_job_waits_for_an_admin(
    bob, accounts, drain, new_host, client
):
    job = waiting_job(bob, drain)

    assert job.status == "running"
    assert job.refused_host == "localhost"
    assert list(job.ledger.values_list("kind", flat=True)) == [
        "reserve"
    ]  # no refund while the provider charged
    assert job.events.filter(what="waiting for an admin", detail__contains="localhost").exists()
    sweeper.reap()  # the reaper leaves it be before its deadline
    job.refresh_from_db()
    assert job.status == "running" and job.refused_host == "localhost"

    client.force_login(bob)
    card = client.get(reverse("job-card", args=[job.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert "waiting for an admin" in card


def test_one_click_allows_the_host_and_fetches_again(bob, alice, accounts, drain, new_host, client):
    job = waiting_job(bob, drain)
    client.force_login(alice)
    page = client.get(reverse("admin:generations_provideraccount_changelist")).content.decode()
    allow = reverse("admin:generations_provideraccount_allow_host", args=[job.pk])
    assert f'formaction="{allow}"' in page and "localhost" in page

    response = client.post(allow)
    assert response.status_code == 302
    drain()

    job.refresh_from_db()
    assert job.status == "succeeded", job.error_message
    assert job.images.count() == 1
    assert ProviderAccount.objects.get(slug="sb-apiframe").extra_result_hosts == ("localhost",)
    assert [e.what for e in job.events.all()][-2:] == ["host allowed", "succeeded"]
    assert credits.reconcile() == []


def test_allowing_the_host_is_recorded_in_the_audit_log(bob, alice, accounts, drain, new_host, client):
    job = waiting_job(bob, drain)
    client.force_login(alice)
    client.post(reverse("admin:generations_provideraccount_allow_host", args=[job.pk]))

    entry = AuditEntry.objects.get(action="provider.change")
    assert (entry.actor, entry.target) == (alice, "sb-apiframe")
    assert (entry.before, entry.after) == ({"result_hosts": ""}, {"result_hosts": "localhost"})
    assert entry.note == f"allowed localhost for generation {job.pk}"


def test_the_allow_view_is_for_superusers_and_posts_only(
    bob, accounts, drain, new_host, client, django_user_model
):
    job = waiting_job(bob, drain)
    allow = reverse("admin:generations_provideraccount_allow_host", args=[job.pk])
    staff = django_user_model.objects.create_user("stan", password="pw-stan-123", is_staff=True)
    client.force_login(staff)
    assert client.post(allow).status_code == 403
    client.force_login(bob)
    assert client.post(allow).status_code == 302  # to the admin login
    job.refresh_from_db()
    assert job.refused_host == "localhost"
    assert not ProviderAccount.objects.get(slug="sb-apiframe").result_hosts


def test_left_alone_it_fails_at_the_deadline_refunded_and_counted_as_paid_without_an_image(
    bob, alice, accounts, drain, new_host, client
):
    job = waiting_job(bob, drain)
    with time_machine.travel(job.deadline_at + timedelta(seconds=1)):
        sweeper.reap()
    job.refresh_from_db()
    assert job.status == "failed" and job.error_code == "result_host_refused"
    assert "localhost" in job.error_message
    assert list(job.ledger.values_list("kind", "amount").order_by("id")) == [("reserve", 70), ("refund", 70)]
    assert credits.reconcile() == []
    client.force_login(alice)
    page = client.get("/admin/generations/generation/usage/").content.decode()
    assert "Provider charged, no image" in page
    # 1 job, 1 failed, no image, nothing charged by FluxWeb, and 1 the provider charged for without an image
    row = re.search(r"<tr[^>]*><td>[-\d]+</td><td>bob</td><td>sb-apiframe</td>.*?</tr>", page).group(0)
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert (cells[4:8], cells[-1]) == (["1", "1", "0", "0"], "1")
    csv = client.get("/admin/generations/generation/usage/", {"format": "csv"}).content.decode()
    assert csv.splitlines()[0].endswith(",provider_charged_no_image") and csv.splitlines()[1].endswith(",1")


def test_an_allowed_host_is_downloaded_from_at_once(bob, accounts, drain, new_host):
    ProviderAccount.objects.filter(slug="sb-apiframe").update(result_hosts="localhost")
    job = waiting_job(bob, drain)
    assert job.status == "succeeded", job.error_message


def test_a_private_address_is_still_refused_on_an_allowed_host(bob, accounts, drain, monkeypatch, settings):
    # Allowing a host name never allows the addresses behind it: loopback is refused outside the sandbox.
    ProviderAccount.objects.filter(slug="sb-apiframe").update(result_hosts="localhost")
    settings.FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS = False
    from generations import media

    with pytest.raises(media.MediaError) as refused:
        media.check_url("https://localhost/x.png", "apiframe", "https://api.apiframe.ai", ("localhost",))
    assert refused.value.code == "forbidden_url" and not refused.value.host


def test_provider_set_takes_result_hosts(accounts):
    out = StringIO()
    call_command(
        "provider", "set", "sb-vtrix", "--result-hosts", "CDN3.vtrix.ai, files.example.com", stdout=out
    )
    assert ProviderAccount.objects.get(slug="sb-vtrix").extra_result_hosts == (
        "cdn3.vtrix.ai",
        "files.example.com",
    )
    assert "result hosts cdn3.vtrix.ai, files.example.com" in out.getvalue()
    with pytest.raises(CommandError, match="not a host name"):
        call_command(
            "provider", "set", "sb-vtrix", "--result-hosts", "https://evil.example/x", stdout=StringIO()
        )
    call_command("provider", "set", "sb-vtrix", "--result-hosts", "", stdout=StringIO())
    assert ProviderAccount.objects.get(slug="sb-vtrix").extra_result_hosts == ()


def test_the_admin_edits_result_hosts_and_refuses_what_is_not_a_host(client, alice, accounts):
    client.force_login(alice)
    account = accounts["vtrix"]
    form = {
        "slug": account.slug,
        "kind": account.kind,
        "base_url": account.base_url,
        "api_key": "",
        "enabled": "on",
        "priority": "1",
        "max_rpm": "",
    }
    url = f"/admin/generations/provideraccount/{account.pk}/change/"
    refused = client.post(url, form | {"result_hosts": "cdn3.vtrix.ai, 10.0.0.1"})
    assert refused.status_code == 200 and "is not a host name" in refused.content.decode()
    assert client.post(url, form | {"result_hosts": "CDN3.vtrix.ai , cdn4.vtrix.ai"}).status_code == 302
    assert ProviderAccount.objects.get(pk=account.pk).result_hosts == "cdn3.vtrix.ai,cdn4.vtrix.ai"
