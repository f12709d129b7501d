"""Debian's Chromium driven by Playwright, for every browser test: never a downloaded browser, and no traffic
but loopback."""

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[2] / "docs"  # screenshots for the README
# Chromium's own background traffic is refused on these machines; keep it from trying (loopback only).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (bin/setup --browser installs it)")
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop shares the test thread
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


def open_page(browser, live_server, **options):
    """A fresh context (its own cookies) and page on the live server; `options` go to the context.
    Playwright's wait_for_function evaluates its predicate with eval in the page, which FluxWeb's
    Content-Security-Policy forbids: these contexts bypass it, and test_csp.py checks the pages under it."""
    defaults = {"viewport": {"width": 1280, "height": 900}, "accept_downloads": True, "bypass_csp": True}
    context = browser.new_context(base_url=live_server.url, **(defaults | options))
    page = context.new_page()
    page.set_default_timeout(15000)
    return context, page


@pytest.fixture
def page(browser, live_server):
    context, page = open_page(browser, live_server)
    yield page
    context.close()


def choose_model(page, model: str) -> None:
    """Pick a model and wait until its options have been swapped in and settled: a provider picked before
    that lands on the old select, which the swap then replaces with "Best available"."""
    page.evaluate("document.getElementById('model-options').dataset.stale = 'yes'")
    page.select_option("select[name=model]", model)
    page.wait_for_function(
        "document.getElementById('model-options') && !document.querySelector('#model-options[data-stale]')"
        " && !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')"
    )
