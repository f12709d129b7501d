"""The pages work under FluxWeb's strict Content-Security-Policy (issue 10, item 3): no inline script or
style, no eval. Chromium reports each violation on the console; none may appear."""

import pytest

from generations import credits

from .conftest import open_page

pytestmark = pytest.mark.browser


def test_the_studio_gallery_and_admin_run_under_the_policy(browser, live_server, alice, accounts):
    credits.grant(alice, 1000)
    context, page = open_page(browser, live_server, bypass_csp=False)
    violations = []
    page.on(
        "console",
        lambda message: "Content Security Policy" in message.text and violations.append(message.text),
    )
    page.on("pageerror", lambda error: violations.append(str(error)))

    page.goto("/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "pw-alice-123")
    page.click("button[type=submit]")
    page.wait_for_url("**/")
    page.fill("textarea[name=prompt]", "a paper boat on a quiet lake")
    page.select_option("select[name=model]", "flux-2-max")
    page.wait_for_selector("#quote [data-testid=price]")
    page.click("button[type=submit]")
    page.locator("#jobs article.job").first.wait_for()
    for path in ("/gallery", "/history/", "/admin/", "/admin/generations/generation/"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
    context.close()

    assert violations == []
