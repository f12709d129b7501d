"""The pages work under FluxWeb's strict Content-Security-Policy (issue 10, item 3): no inline script or
style, no eval. Chromium reports each violation on the console; none may appear, nor any other error
(htmx reports an out-of-band swap whose target is gone there too)."""

import pytest

from generations import credits

from .conftest import open_page

pytestmark = pytest.mark.browser


def test_the_studio_gallery_and_admin_run_under_the_policy(browser, live_server, alice, accounts, worker):
    credits.grant(alice, 1000)
    context, page = open_page(browser, live_server, bypass_csp=False)
    violations = []
    page.on(
        "console",
        lambda message: message.type == "error" and violations.append(message.text),
    )
    # A request replaced by a newer one (hx-sync) or cut by leaving the page is aborted, and htmx reports
    # that on the console too: not an error.
    aborted = (
        "htmx:sendAbort",
        "htmx:afterRequest",
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
    # The job finishes while the page watches: the card, the gallery tile and the toast arrive by swaps.
    page.locator("#jobs article.job .images img").first.wait_for(timeout=30000)
    page.locator("figure.tile").first.wait_for(timeout=30000)
    # A second job, with a card already on the page.
    page.fill("textarea[name=prompt]", "a paper boat at night")
    page.click("button[type=submit]")
    page.locator("#jobs article.job").nth(1).wait_for()
    page.wait_for_load_state("networkidle")
    assert [text for text in violations if not text.startswith(aborted)] == []
    for path in ("/gallery", "/history/", "/admin/", "/admin/generations/generation/"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
    context.close()

    assert [text for text in violations if not text.startswith(aborted)] == []
