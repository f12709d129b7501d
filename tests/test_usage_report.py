"""The admin's usage report: spend this month per user and per provider, beside the provider's own figure."""

from generations import engine
from generations.providers import GenerationRequest


def test_it_reports_spend_per_user_and_provider(client, alice, bob, accounts, drain):
    for provider in ("sb-apiframe", "sb-vtrix"):
        engine.create(bob, GenerationRequest(prompt="a kite", model="flux-2-max"), provider=provider)
    drain()
    client.force_login(alice)
    page = client.get("/admin/generations/generation/usage/").content.decode()
    assert "<td>bob</td><td>2</td><td>0</td><td>2</td><td>140</td><td>0</td>" in page
    assert (
        "<td>sb-vtrix</td><td>vtrix</td><td>1</td><td>0</td><td>70</td><td>$0.070</td><td>0.0700 USD</td>"
        in page
    )
    assert "10 Apiframe credits" in page


def test_it_is_for_superusers_only(client, bob):
    client.force_login(bob)
    assert client.get("/admin/generations/generation/usage/").status_code == 302
