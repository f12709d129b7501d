"""What a person does in the studio, in Debian's Chromium driven by Playwright (never a downloaded browser)."""

import pytest

from generations import credits

from .conftest import choose_model

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def log_in(page, username: str, password: str) -> None:
    page.goto("/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/")


def card_status(page) -> str:
    return page.locator("#jobs article.job").first.get_attribute("data-status")


def test_it_logs_in_generates_and_shows_the_image_without_a_reload(page, bob, accounts, worker):
    log_in(page, "bob", "pw-bob-123")
    assert page.get_by_test_id("balance").inner_text() == "1,000"
    page.evaluate("window.__not_reloaded = true")

    page.fill("textarea[name=prompt]", "a paper boat on a quiet lake")
    choose_model(page, "flux-2-max")
    page.wait_for_selector("#quote [data-testid=price]")
    assert page.get_by_test_id("price").inner_text() == "70"
    page.click("button[type=submit]")

    card = page.locator("#jobs article.job").first
    card.locator(".images img").wait_for(timeout=30000)
    assert card.get_attribute("data-status") == "succeeded"
    page.locator("#gallery figure.tile img").first.wait_for()
    # The badge shows what bob can spend, so it says 930 as soon as the 70 are held: wait for the settled
    # balance, with nothing reserved any more.
    page.wait_for_function(
        "document.querySelector('[data-testid=balance]').innerText === '930'"
        " && !document.querySelector('#credit-badge .reserved')"
    )
    assert page.locator("#credit-badge").inner_text().strip() == "930 credits"
    assert page.evaluate("window.__not_reloaded") is True  # the page updated itself
    account = credits.account_for(bob)
    assert (account.balance, account.reserved) == (930, 0)
    image_status = page.evaluate("fetch(document.querySelector('#gallery img').src).then(r => r.status)")
    assert image_status == 200


def test_it_tells_a_user_without_credits_why(page, carol, accounts):
    log_in(page, "carol", "pw-carol-123")
    page.fill("textarea[name=prompt]", "a paper boat")
    page.click("button[type=submit]")
    error = page.locator("#form-error")
    error.filter(has_text="short").wait_for()
    assert "70 credits" in error.inner_text()
    assert page.locator("#jobs article.job").count() == 0
    # A price asked for after the refusal with the form unchanged (the typing pause's, or a balance change's)
    # leaves the reason where it is: in CI the pause's price landed after the refusal and wiped it.
    with page.expect_response("**/studio/quote?**"):
        page.evaluate("document.body.dispatchEvent(new Event('credits-changed'))")
    page.wait_for_timeout(100)  # the swap runs after the response's settle delay
    assert "short" in error.inner_text()
    # An edit asks for a fresh price, and that one clears it.
    with page.expect_response("**/studio/quote?**"):
        page.fill("textarea[name=prompt]", "a paper boat at dawn")
    page.wait_for_function("document.getElementById('form-error').textContent.trim() === ''")


def test_it_changes_the_form_with_the_model(page, bob, accounts):
    log_in(page, "bob", "pw-bob-123")
    choose_model(page, "flux-plus")
    page.wait_for_function(
        "document.querySelector('#model-options select[name=provider]').innerText.includes('sb-maxapi')"
    )
    assert page.locator("#model-options input[name=seed]").count() == 0  # MaxAPI takes no seed
    choose_model(page, "flux-2-max")
    page.wait_for_function(
        "document.querySelector('#model-options select[name=provider]').innerText.includes('sb-vtrix')"
    )
    assert page.locator("#model-options input[name=seed]").count() == 1


def test_it_sends_an_uploaded_reference_image_to_the_provider(
    page, bob, accounts, worker, tmp_path, fresh_sandbox
):
    from PIL import Image as PILImage

    picture = tmp_path / "reference.png"
    PILImage.new("RGB", (640, 480), "teal").save(picture)
    log_in(page, "bob", "pw-bob-123")
    page.fill("textarea[name=prompt]", "the same scene in winter")
    page.select_option("select[name=provider]", "sb-apiframe")
    # Choosing a provider re-renders the options (file input included): attach the file after that.
    page.wait_for_selector(
        "#model-options select[name=provider] option[value=sb-apiframe][selected]", state="attached"
    )
    page.set_input_files("input[name=reference_files]", str(picture))
    page.click("#generate-button")
    page.locator("#jobs article.job .images img").first.wait_for(timeout=30000)

    submitted = [r for r in fresh_sandbox.requests if r.provider == "apiframe" and r.method == "POST"]
    links = submitted[-1].json["fluxParams"]["input_images"]
    assert len(links) == 1 and links[0].startswith("http://127.0.0.1:8000/r/u/")
    # The link serves the uploaded picture to anyone holding it, with no login.
    path = links[0].removeprefix("http://127.0.0.1:8000")
    assert page.evaluate(f"fetch('{path}', {{credentials: 'omit'}}).then(r => r.status)") == 200
    assert card_status(page) == "succeeded"
    page.wait_for_function(
        "document.querySelector('[data-testid=balance]').innerText === '900'"
        " && !document.querySelector('#credit-badge .reserved')"
    )
    account = credits.account_for(bob)
    assert (account.balance, account.reserved) == (
        1000 - 100,
        0,
    )  # 70 for the image + 30 for a 0.3 MP reference
