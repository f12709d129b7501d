"""The studio's flows as a person meets them, in Debian's Chromium driven by Playwright: generate and watch
the card finish (one poll for the page, a toast, the settled balance), Ctrl+Enter, cancel and retry, a
phone in light and dark, and a session that ends in another tab. Writes docs/studio.png and
docs/studio-phone.png."""

import pytest

from generations import credits
from generations.models import Generation

from .conftest import DOCS, choose_model, open_page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def log_in(page, username: str, password: str) -> None:
    page.goto("/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/")


def requests_to(page, fragment: str) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url) if fragment in request.url else None)
    return seen


def test_it_generates_watches_the_card_finish_with_one_poll_and_a_toast(page, bob, accounts, worker):
    log_in(page, "bob", "pw-bob-123")
    polls = requests_to(page, "/jobs/")
    page.get_by_label("Prompt", exact=True).fill("a paper boat on a quiet lake")
    choose_model(page, "flux-2-max")
    page.wait_for_selector("#quote [data-testid=price]")
    assert page.get_by_test_id("price").inner_text() == "70"
    page.wait_for_function("document.querySelector('#best-available').textContent.includes('sb-apiframe')")
    assert "You would have 930 left" in page.locator("#quote").inner_text()

    page.get_by_role("button", name="Generate").click()
    page.locator("#form-status").filter(has_text="its card is at the top").wait_for()
    assert page.locator("#jobs-empty").is_hidden()
    card = page.locator("#jobs article.job").first
    card.locator(".images img").wait_for(timeout=30000)
    assert card.get_attribute("data-status") == "succeeded"

    # The settled balance, after the card finished: 70 held, 70 charged, nothing reserved.
    page.wait_for_function("document.querySelector('[data-testid=balance]').innerText === '930'")
    assert page.locator("#credit-badge .reserved").count() == 0
    account = credits.account_for(bob)
    assert (account.balance, account.reserved) == (930, 0)
    assert page.locator("#toasts .toast").filter(has_text="Done: 1 image").count() == 1
    # One poll for the page, never a request per card.
    assert polls and all("/jobs/updates" in url for url in polls), polls
    assert page.get_by_label("Seed").input_value() == ""  # cleared: the next Generate is a new image
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "studio.png"), full_page=True)


def test_ctrl_enter_generates(page, bob, accounts):
    log_in(page, "bob", "pw-bob-123")
    prompt = page.get_by_label("Prompt", exact=True)
    prompt.fill("a heron in the reeds")
    prompt.press("Control+Enter")
    page.locator("#jobs article.job").first.wait_for()
    assert Generation.objects.get().prompt.text == "a heron in the reeds"


def test_it_cancels_a_running_job_then_retries_it(page, bob, accounts, worker, fresh_sandbox):
    fresh_sandbox.set_latency(30, 30)
    log_in(page, "bob", "pw-bob-123")
    page.get_by_label("Prompt", exact=True).fill("a slow sunrise")
    page.select_option("select[name=provider]", "sb-apiframe")
    page.get_by_role("button", name="Generate").click()
    card = page.locator("#jobs article.job").first
    card.locator("[data-status=running], .status").first.wait_for()
    page.wait_for_function("document.querySelector('#jobs article.job').dataset.status === 'running'")
    card.get_by_role("button", name="Cancel").click()
    page.locator("#jobs article.job[data-status=canceled]").filter(has_text="70 credits refunded").wait_for()
    page.wait_for_function("document.querySelector('[data-testid=balance]').innerText === '1,000'")

    fresh_sandbox.set_latency(0.2, 0.3)
    page.locator("#jobs article.job[data-status=canceled]").get_by_role("button", name="Retry").click()
    page.locator("#jobs article.job").nth(1).wait_for()
    newest = page.locator("#jobs article.job").first
    newest.locator(".images img").wait_for(timeout=30000)
    first, second = Generation.objects.order_by("id")
    assert (first.status, second.status) == ("canceled", "succeeded")
    assert (second.seed, second.params) == (first.seed, first.params)


def test_it_says_why_a_job_failed_and_toasts_it(page, bob, accounts, worker, fresh_sandbox):
    fresh_sandbox.queue_fault("failure", "apiframe")
    log_in(page, "bob", "pw-bob-123")
    page.get_by_label("Prompt", exact=True).fill("a storm over the sea")
    page.select_option("select[name=provider]", "sb-apiframe")
    page.get_by_role("button", name="Generate").click()
    failed = page.locator("#jobs article.job[data-status=failed]")
    failed.wait_for(timeout=30000)
    assert (
        "credits refunded" in failed.inner_text() and failed.get_by_role("button", name="Retry").count() == 1
    )
    page.locator("#toasts .toast.failed").wait_for()
    assert "<" not in failed.locator(".reason").inner_text()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_390_px_phone_scrolls_only_down(browser, live_server, bob, accounts, scheme):
    credits.grant(bob, 5, note="a note long enough to need wrapping on a phone, which it must not widen")
    context, page = open_page(
        browser, live_server, viewport={"width": 390, "height": 844}, color_scheme=scheme, is_mobile=True
    )
    log_in(page, "bob", "pw-bob-123")
    for path in ("/", "/credits/", "/login/"):
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (path, scheme, width)
        assert page.locator("h1").count() == 1, path
    page.goto("/")
    page.wait_for_selector("#quote [data-testid=price]")
    assert page.get_by_role("button", name="Log out").is_visible()
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == ("rgb(18, 19, 23)" if scheme == "dark" else "rgb(248, 248, 251)")
    if scheme == "light":
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "studio-phone.png"), full_page=False)
    context.close()


def test_an_ended_session_asks_to_log_in_again_once(browser, live_server, bob, accounts):
    context, page = open_page(browser, live_server)
    log_in(page, "bob", "pw-bob-123")
    other = context.new_page()  # another tab of the same browser logs out
    other.goto(live_server.url + "/")
    other.get_by_role("button", name="Log out").click()
    other.wait_for_url("**/login/")

    page.get_by_label("Prompt", exact=True).fill("a price check after logout")
    page.wait_for_url("**/login/?next=*expired=1*")
    assert "Your session has ended" in page.locator("main").inner_text()
    assert page.locator("#quote").count() == 0 and page.locator("h1").count() == 1
    context.close()


# A stand-in for the browser's Notification API (headless Chromium has no notification centre) and a tab
# that can be told it is hidden: what studio.js does with them is what is tested.
FAKE_NOTIFICATIONS = """
window.__shown = [];
window.__hidden = false;
Object.defineProperty(document, "hidden", { get: () => window.__hidden });
class FakeNotification {
  constructor(title, options) { window.__shown.push(options.body); }
  close() {}
}
FakeNotification.permission = "default";
FakeNotification.requestPermission = () => { FakeNotification.permission = "granted"; return Promise.resolve("granted"); };
window.Notification = FakeNotification;
"""


def test_a_browser_notification_only_after_the_user_allows_it_and_only_when_hidden(
    browser, live_server, bob, accounts, worker
):
    context, page = open_page(browser, live_server)
    page.add_init_script(FAKE_NOTIFICATIONS)
    log_in(page, "bob", "pw-bob-123")
    allow = page.get_by_role("button", name="Notify me when jobs finish")
    assert allow.is_visible()  # offered, never asked for on load

    page.get_by_label("Prompt", exact=True).fill("a visible tab gets a toast only")
    page.get_by_role("button", name="Generate").click()
    page.locator("#toasts .toast").first.wait_for(timeout=30000)
    assert page.evaluate("window.__shown") == []  # not allowed yet

    allow.click()
    page.locator("#toasts .toast").filter(has_text="You will be notified").wait_for()
    assert not allow.is_visible()
    page.evaluate("window.__hidden = true")
    page.get_by_label("Prompt", exact=True).fill("a hidden tab gets a notification")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("window.__shown.length === 1", timeout=30000)
    assert page.evaluate("window.__shown")[0].startswith("Done: 1 image for “a hidden tab")
    context.close()


# -- jobs made in the lightbox, one's uploads, Best available's options -------------------------------------------
def test_jobs_made_in_the_lightbox_join_your_jobs_and_finish_there(page, bob, accounts, worker):
    from tests.test_access import make_image, make_job

    source = make_image(
        make_job(bob, accounts["apiframe"], "a paper boat on a quiet lake", status="succeeded")
    )
    log_in(page, "bob", "pw-bob-123")
    polls = requests_to(page, "/jobs/updates")
    page.locator(f"#image-{source.pk} a.open").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="Rerun same seed").click()
    dialog.locator("#lightbox-status").filter(has_text="Rerun queued").wait_for()
    rerun = Generation.objects.exclude(pk=source.generation_id).latest("id")
    page.locator(f"#jobs #job-{rerun.pk}").wait_for()
    dialog.get_by_role("button", name="Variations").click()
    dialog.locator("#lightbox-status").filter(has_text="variations queued").wait_for()
    made = list(Generation.objects.filter(pk__gt=rerun.pk).values_list("pk", flat=True))
    assert len(made) == 2
    for pk in made:
        page.locator(f"#jobs #job-{pk}").wait_for()
    assert page.locator(f"#jobs #job-{rerun.pk}").count() == 1  # each card once
    # The one poll watches them until they finish, without a reload.
    for pk in [rerun.pk, *made]:
        page.locator(f'#job-{pk}[data-status="succeeded"]').wait_for(timeout=30000)
    assert polls


def test_compare_providers_on_the_studio_puts_its_jobs_in_your_jobs_live(page, bob, accounts):
    from tests.test_access import make_image, make_job

    source = make_image(
        make_job(bob, accounts["apiframe"], "a paper boat on a quiet lake", status="succeeded", seed=7)
    )
    log_in(page, "bob", "pw-bob-123")
    page.locator(f"#image-{source.pk} a.open").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="Compare providers").click()
    dialog.locator("#lightbox-status").filter(has_text="Comparing on 3 provider accounts").wait_for()
    jobs = list(Generation.objects.exclude(comparison="").values_list("pk", "comparison"))
    assert len(jobs) == 3
    for pk, _ in jobs:  # each card arrives without a reload, as the studio's jobs-created asks for it
        page.locator(f"#jobs #job-{pk}").wait_for()
    assert "/compare/" not in page.url  # the studio stayed
    link = dialog.get_by_role("link", name="See them side by side")
    assert link.get_attribute("href") == f"/compare/{jobs[0][1]}"


def test_ones_uploads_are_listed_and_deleted_unless_a_running_job_uses_them(page, bob, accounts, tmp_path):
    from PIL import Image as PILImage

    from generations.models import Reference
    from tests.test_access import make_job

    picture = tmp_path / "ref.png"
    PILImage.new("RGB", (96, 64), "#3b82f6").save(picture)
    log_in(page, "bob", "pw-bob-123")
    choose_model(page, "flux-2-max")
    page.select_option("select[name=provider]", "sb-apiframe")
    page.wait_for_function("document.querySelector('#quote').textContent.includes('via sb-apiframe')")
    page.wait_for_function("!document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')")
    page.set_input_files("#reference-files", [str(picture)])
    page.locator("#references .chip").wait_for()
    delete = page.get_by_role("button", name="Delete upload")
    delete.wait_for()
    assert delete.count() == 1 and "Your uploads" in page.locator("#your-uploads").inner_text()
    upload = Reference.objects.get(user=bob)
    job = make_job(
        bob, accounts["apiframe"], status="running", params={"reference_urls": [f"upload:{upload.pk}"]}
    )

    # Delete asks first (hx-confirm): declined, nothing is sent and the upload stays.
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    delete.click()
    page.wait_for_function("!document.querySelector('.htmx-request')")
    assert asked and asked[0].startswith("Delete this uploaded file (96×64 PNG)?")
    assert Reference.objects.filter(pk=upload.pk).exists() and delete.is_visible()

    page.once("dialog", lambda dialog: dialog.accept())
    delete.click()
    page.get_by_role("alert").filter(has_text=f"Job #{job.pk} is still running with this upload").wait_for()
    assert Reference.objects.filter(pk=upload.pk).exists()

    Generation.objects.filter(pk=job.pk).update(status="succeeded")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete upload").click()
    page.locator("#your-uploads").filter(has_text="Upload deleted").wait_for()
    assert not Reference.objects.filter(pk=upload.pk).exists()
    assert page.locator(f"#ref-upload-{upload.pk}").count() == 0  # its chip left the form too
    # Priced without it again (70 credits, not 100).
    page.wait_for_function("document.querySelector('[data-testid=price]').innerText === '70'")


def test_best_available_shows_the_options_of_the_account_the_price_names(page, bob, accounts):
    log_in(page, "bob", "pw-bob-123")
    choose_model(page, "flux-2-max")
    page.wait_for_function("document.querySelector('#quote').textContent.includes('via sb-apiframe')")
    assert page.locator("input[name=safety_tolerance]").count() == 0  # apiframe takes none; not 0-5
    page.select_option("select[name=provider]", "sb-vtrix")
    page.wait_for_function("document.querySelector('#quote').textContent.includes('via sb-vtrix')")
    assert page.locator("input[name=safety_tolerance]").get_attribute("placeholder") == "0–5"
    page.select_option("select[name=provider]", "")
    page.wait_for_function("document.querySelector('#quote').textContent.includes('via sb-apiframe')")
    page.get_by_label("Images (1–4)").fill("2")
    page.wait_for_function("document.querySelector('#quote').textContent.includes('via sb-pixeldojo')")
    page.wait_for_function(
        "document.querySelector('input[name=safety_tolerance]')?.placeholder === '1–5'"
        " && document.querySelector('input[name=options_for]').value === 'sb-pixeldojo'"
    )
    assert page.get_by_label("Images (1–4)").input_value() == "2"
    assert "sb-pixeldojo" in page.locator("#best-available").inner_text()
