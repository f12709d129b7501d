"""Team accounts in Debian's Chromium: a viewer's studio and a refused click, the settings page and an
invitation on a 390 px phone in light and dark, every control named for assistive tech."""

import pytest

from accounts.models import Invitation
from generations.models import ApiToken, Favorite

from ..test_access import make_image, make_job
from .conftest import open_page
from .test_studio import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PHONE = {"viewport": {"width": 390, "height": 844}}


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_a_viewer_sees_why_there_is_no_generate_and_a_refused_click_says_so(page, vera, bob, accounts):
    image = make_image(make_job(bob, accounts["apiframe"], "a lighthouse", status="succeeded"))
    log_in(page, "vera", "pw-vera-123")

    note = page.get_by_role("note")
    assert "viewer" in note.inner_text() and "not generate or spend" in note.inner_text()
    assert page.get_by_role("button", name="Generate").count() == 0
    page.locator(f"#image-{image.pk}").wait_for()

    page.locator(f"#image-{image.pk}").get_by_role("button", name="Favorite").click()
    toast = page.locator("#toasts .toast.warning")
    toast.wait_for()
    assert "Viewers can look" in toast.inner_text()
    assert not Favorite.objects.exists()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_settings_page_on_a_phone(browser, live_server, bob, scheme):
    context, page = open_page(browser, live_server, color_scheme=scheme, **PHONE)
    try:
        log_in(page, "bob", "pw-bob-123")
        page.get_by_role("link", name="Settings").click()
        page.get_by_role("heading", name="Your settings").wait_for()

        form = page.get_by_role("form", name="Create an API token")
        form.get_by_role("textbox", name="Name").fill("phone script")
        form.get_by_role("button", name="Create token").click()
        secret = page.get_by_test_id("new-token").inner_text()
        assert secret.startswith("fw_") and ApiToken.objects.get(user=bob).name == "phone script"
        assert no_horizontal_scroll(page)

        box = page.get_by_role("checkbox", name="Downloads keep the embedded prompt and settings")
        assert box.is_checked()
        box.uncheck()
        page.get_by_role("checkbox", name="Notify me when my jobs end").wait_for()
        page.get_by_role("button", name="Save settings").click()
        page.get_by_text("Settings saved.").wait_for()
        assert not page.get_by_role(
            "checkbox", name="Downloads keep the embedded prompt and settings"
        ).is_checked()

        page.get_by_role("button", name="Revoke token phone script").click()
        page.get_by_text("no longer works").wait_for()
        assert not ApiToken.objects.exists()
        assert no_horizontal_scroll(page)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(18, 19, 23)") is (scheme == "dark")
    finally:
        context.close()


def test_an_invitee_joins_on_a_phone_in_the_dark_and_lands_in_the_studio(browser, live_server, db):
    _, token = Invitation.issue("fay@example.com", "member")
    context, page = open_page(browser, live_server, color_scheme="dark", **PHONE)
    try:
        page.goto(f"/account/invite/{token}")
        page.get_by_role("heading", name="Join FluxWeb").wait_for()
        assert no_horizontal_scroll(page)
        page.get_by_role("textbox", name="Username").fill("fay")
        page.get_by_label("Password", exact=True).fill("pw-fay-12345")
        page.get_by_label("Password confirmation").fill("pw-fay-12345")
        page.get_by_role("button", name="Join").click()
        page.get_by_role("button", name="Generate").wait_for()
        assert page.locator(".username").inner_text() == "fay"
        assert no_horizontal_scroll(page)
    finally:
        context.close()
