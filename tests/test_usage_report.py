"""The admin's usage dashboard: spend per day by member, provider account and model over a chosen range, the
provider's reported cost beside FluxWeb's charge with differences flagged, SVG charts and a CSV of the rows."""

import csv
import io
import re
from datetime import date, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from generations import engine, usage
from generations.models import Generation, Prompt
from generations.providers import GenerationRequest

from .conftest import row_image

URL = "/admin/generations/generation/usage/"


def job(user, account, days_ago: int = 0, charged: int = 70, refunded: int = 0, cost: str = "", **fields):
    """A finished generation `days_ago` days back, its credits and provider cost as given."""
    generation = Generation.objects.create(
        user=user,
        prompt=Prompt.remember("a kite", user),
        model=fields.pop("model", "flux-2-max"),
        account=account,
        status="succeeded" if charged else "failed",
        credits_reserved=charged + refunded,
        credits_charged=charged,
        credits_refunded=refunded,
        provider_cost=cost,
        **fields,
    )
    Generation.objects.filter(pk=generation.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
    if charged:
        row_image(generation)
    return generation


def page(client, alice, **query) -> str:
    client.force_login(alice)
    response = client.get(URL, query)
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def test_it_reports_spend_per_day_member_provider_and_model(client, alice, bob, accounts, drain):
    for provider in ("sb-apiframe", "sb-vtrix"):
        engine.create(bob, GenerationRequest(prompt="a kite", model="flux-2-max"), provider=provider)
    drain()
    html = page(client, alice)
    today = timezone.localdate().isoformat()
    assert (
        f"<td>{today}</td><td>bob</td><td>sb-vtrix</td><td>flux-2-max</td><td>1</td><td>0</td><td>1</td>"
        "<td>70</td><td>0</td><td>$0.070</td><td>0.0700 USD</td><td></td>" in html
    )
    assert "<td>sb-apiframe</td><td>flux-2-max</td>" in html and "10 Apiframe credits" in html


def test_it_covers_the_chosen_range_not_only_this_month(client, alice, bob, accounts):
    job(bob, accounts["vtrix"], days_ago=45, charged=33)
    job(bob, accounts["vtrix"], days_ago=0, charged=44)
    default = page(client, alice)
    assert "<td>44</td>" in default and "<td>33</td>" not in default  # the last 30 days
    old = (timezone.localdate() - timedelta(days=45)).isoformat()
    chosen = page(client, alice, start=old, end=old)
    assert f"<td>{old}</td><td>bob</td>" in chosen and "<td>33</td>" in chosen and "<td>44</td>" not in chosen
    assert f"Usage {old} to {old}" in chosen


def test_its_title_appears_once(client, alice, bob, accounts):
    html = page(client, alice)
    today = timezone.localdate()
    assert re.findall(r"<h1[^>]*>(.*?)</h1>", html) == [f"Usage {today - timedelta(days=29)} to {today}"]


def test_it_flags_where_the_provider_cost_and_the_charge_differ(client, alice, bob, carol, accounts):
    job(bob, accounts["vtrix"], charged=70, cost="0.0700")  # agrees
    job(carol, accounts["vtrix"], charged=70, cost="0.2100")  # the provider took three times our charge
    job(bob, accounts["apiframe"], charged=0, refunded=70, cost="10")  # billed, yet refunded to the member
    rows = {(r.member, r.provider): r for r in usage.rows(timezone.localdate(), timezone.localdate())}
    assert rows["bob", "sb-vtrix"].difference == ""
    assert rows["carol", "sb-vtrix"].difference == "provider $0.210 vs charged $0.070"
    assert rows["bob", "sb-apiframe"].difference == "provider billed jobs FluxWeb refunded"
    html = page(client, alice)
    assert "2 rows where the provider's cost and FluxWeb's charge differ" in html
    assert html.count('class="usage-differs"') == 2


def test_it_draws_svg_charts_with_no_inline_script_or_style(client, alice, bob, carol, accounts):
    job(bob, accounts["vtrix"], days_ago=1, charged=70, cost="0.0700")
    job(carol, accounts["apiframe"], days_ago=2, charged=140, model="flux-2-max")
    html = page(client, alice)
    assert html.count('<svg class="usage-chart"') == 4  # per day, by member, by provider, by model
    assert '<rect class="s0"' in html and '<rect class="charged"' in html and '<rect class="provider"' in html
    assert "<title>carol: $0.140 charged</title>" in html
    assert "fluxweb/usage.css" in html
    # A strict Content-Security-Policy is coming: no inline script, no style attribute, nothing from a CDN.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert 'style="' not in html and "<style" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_the_csv_holds_the_same_rows(client, alice, bob, accounts, django_user_model):
    mallory = django_user_model.objects.create_user("=HYPERLINK(1)", password="x")
    job(bob, accounts["vtrix"], charged=70, cost="0.0700")
    job(mallory, accounts["pixeldojo"], charged=0, refunded=70, cost="2")
    client.force_login(alice)
    today = timezone.localdate().isoformat()
    response = client.get(URL, {"start": today, "end": today, "format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="fluxweb-usage-{today}-{today}.csv"'
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert list(rows[0]) == usage.CSV_FIELDS
    by_member = {row["member"]: row for row in rows}
    assert by_member["bob"] == {
        "day": today,
        "member": "bob",
        "provider": "sb-vtrix",
        "kind": "vtrix",
        "model": "flux-2-max",
        "jobs": "1",
        "failed": "0",
        "images": "1",
        "charged_credits": "70",
        "refunded_credits": "0",
        "charged_usd": "0.070",
        "provider_cost": "0.0700",
        "provider_cost_unit": "USD",
        "provider_usd": "0.070",
        "difference": "",
        "provider_charged_no_image": "0",
    }
    # A member's name never runs as a spreadsheet formula.
    flagged = by_member["'=HYPERLINK(1)"]
    assert (flagged["provider_cost"], flagged["provider_cost_unit"], flagged["difference"]) == (
        "2",
        "PixelDojo credits",
        "provider billed jobs FluxWeb refunded",
    )


@pytest.mark.parametrize(
    "query, words",
    [
        ({"start": "2026-13-01"}, "The start date must look like 2026-12-31, not &#x27;2026-13-01&#x27;."),
        ({"end": "yesterday"}, "The end date must look like 2026-12-31"),
        ({"start": "2026-05-02", "end": "2026-05-01"}, "The end date (2026-05-01) is before the start date"),
        ({"start": "2020-01-01", "end": "2026-01-01"}, "Choose at most 366 days"),
        ({"start": "x" * 5000}, "The start date must look like"),
    ],
)
def test_it_refuses_a_bad_range_in_words(client, alice, query, words):
    client.force_login(alice)
    response = client.get(URL, query)
    assert response.status_code == 400
    assert words in response.content.decode()
    assert 'class="errornote"' in response.content.decode()
    as_csv = client.get(URL, query | {"format": "csv"})
    assert as_csv.status_code == 400 and as_csv["Content-Type"].startswith("text/plain")


def test_it_parses_a_range_defaulting_to_the_last_30_days():
    today = date(2026, 12, 7)
    assert usage.parse_range({}, today) == (date(2026, 11, 8), today)
    assert usage.parse_range({"end": "2026-02-10"}, today) == (date(2026, 1, 12), date(2026, 2, 10))
    assert usage.parse_range({"start": " 2026-12-01 ", "end": ""}, today) == (date(2026, 12, 1), today)


def test_it_asks_the_database_the_same_few_queries_for_any_number_of_rows(
    client, alice, bob, carol, accounts
):
    def queries() -> int:
        client.force_login(alice)
        with CaptureQueriesContext(connection) as captured:
            assert client.get(URL).status_code == 200
        return len(captured)

    job(bob, accounts["vtrix"], cost="0.07")
    few = queries()
    for days_ago in range(12):
        for user in (bob, carol):
            for kind in ("vtrix", "apiframe", "pixeldojo"):
                job(user, accounts[kind], days_ago=days_ago, cost=str(days_ago))
    assert queries() == few


def test_it_is_for_those_who_may_see_generations(client, bob, django_user_model):
    client.force_login(bob)
    assert client.get(URL).status_code == 302  # not staff: the admin's login
    staff = django_user_model.objects.create_user("sam", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get(URL).status_code == 403  # staff, but no permission to see generations
