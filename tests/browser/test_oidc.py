"""Sign-in with OpenID Connect in Chromium against the loopback provider (tests/oidc_provider): the first
sign-in creates the user with the role their group maps to; a disallowed domain gets a clear page."""

import pytest
from django.contrib.auth import get_user_model

from accounts.access import role_of

from ..test_oidc import PASSWORD, identity_provider, sign_in_with_idp  # noqa: F401 (fixtures)
from .conftest import open_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("sign_in_with_idp"),
]


def through_the_provider(page, username: str) -> None:
    page.goto("/login/")
    page.get_by_role("link", name="Sign in with Corp ID").click()
    page.get_by_role("heading", name="Corp ID sign-in").wait_for()
    page.get_by_label("User").fill(username)
    page.get_by_label("Secret").fill(PASSWORD)
    page.get_by_role("button", name="Sign in to Corp ID").click()


def test_the_first_sign_in_creates_the_user_with_the_mapped_role(browser, live_server):
    context, page = open_page(browser, live_server, viewport={"width": 390, "height": 844})
    try:
        through_the_provider(page, "ida")
        page.get_by_role("button", name="Generate").wait_for()
        assert page.locator(".username").inner_text() == "ida"
        assert page.get_by_role("link", name="Admin").is_visible()
        ida = get_user_model().objects.get(username="ida")
        assert ida.email == "ida@corp.example" and role_of(ida) == "admin"
    finally:
        context.close()


def test_a_disallowed_domain_is_refused_with_a_clear_page(browser, live_server):
    context, page = open_page(browser, live_server, color_scheme="dark")
    try:
        through_the_provider(page, "max")
        alert = page.get_by_role("alert")
        alert.wait_for()
        assert "max@elsewhere.example may not sign in" in alert.inner_text()
        assert "corp.example" in alert.inner_text()
        assert page.get_by_role("heading", name="You are not signed in").is_visible()
        assert not get_user_model().objects.filter(email="max@elsewhere.example").exists()
    finally:
        context.close()
