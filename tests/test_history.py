"""The prompt history page (issue 8, item 6): every prompt the team used, searchable over all of history,
with its use count, last use, who used it, its newest image and a Use link into the studio's prompt."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from generations import history, search
from generations.models import Generation, Image, Prompt

from .test_gallery import HX, fresh_cache, logged_in, make_image  # noqa: F401 (fresh_cache: autouse)


def rows(response) -> list[int]:
    return [
        int(pk) for pk in re.findall(r'<li class="prompt-row" id="prompt-(\d+)"', response.content.decode())
    ]


@pytest.fixture
def used(bob, carol, accounts):
    """Three prompts: a lighthouse used twice (bob, carol), a fox once (bob), a castle with no image."""
    first = make_image(bob, accounts["apiframe"], "a lighthouse at dusk")
    newest = make_image(carol, accounts["vtrix"], "a lighthouse at dusk")
    fox = make_image(bob, accounts["apiframe"], "a fox in the snow")
    castle = Prompt.remember("an old castle", carol)
    return first, newest, fox, castle


def test_it_lists_every_prompt_with_uses_last_use_who_and_its_newest_image(carol, used):
    first, newest, fox, castle = used
    response = logged_in(carol).get("/history/")
    html = response.content.decode()
    lighthouse = first.generation.prompt

    assert response.status_code == 200 and '<h1 id="history-heading">Prompt history</h1>' in html
    assert rows(response) == [castle.pk, fox.generation.prompt_id, lighthouse.pk]
    row = html[html.index(f'id="prompt-{lighthouse.pk}"') :]
    row = row[: row.index("</li>")]
    assert "Used <strong>2</strong> times" in row and "by bob, carol" in row
    assert f"/images/{newest.pk}/thumbnail" in row and f"/images/{first.pk}/thumbnail" not in row
    assert f'href="/?use_prompt={lighthouse.pk}"' in row and ">Use</a>" in row
    assert 'type="search"' in html and '<label for="history-q">Search</label>' in html
    castle_row = html[html.index(f'id="prompt-{castle.pk}"') :]
    assert "no image" in castle_row[: castle_row.index("</li>")]


def test_search_covers_the_whole_history(bob, used):
    first, newest, fox, castle = used
    client = logged_in(bob)
    response = client.get("/history/?q=lightho", HTTP_HX_TARGET="history-results", **HX)
    assert response.status_code == 200 and "<html" not in response.content.decode()
    assert rows(response) == [first.generation.prompt_id]
    assert rows(client.get("/history/?q=snow+fox")) == [fox.generation.prompt_id]
    assert "No prompt matches" in client.get("/history/?q=zeppelin").content.decode()


def test_the_newest_image_skips_deleted_ones(bob, used):
    first, newest, fox, castle = used
    Image.objects.filter(pk=newest.pk).update(deleted_at=timezone.now())
    html = logged_in(bob).get("/history/").content.decode()
    assert f"/images/{newest.pk}/thumbnail" not in html


def test_it_pages_by_keyset_on_last_use(bob, accounts):
    now = timezone.now()
    made = []
    for i in range(history.PAGE + 3):
        prompt = Prompt.remember(f"prompt number {i}", bob)
        Prompt.objects.filter(pk=prompt.pk).update(last_used_at=now - timedelta(minutes=i // 2))  # ties too
        made.append(prompt.pk)
    client = logged_in(bob)
    page = client.get("/history/")
    shown = rows(page)
    assert len(shown) == history.PAGE and 'hx-trigger="revealed"' in page.content.decode()
    cursor = re.search(r"before=([^\"&]+)", page.content.decode()).group(1)
    more = client.get(f"/history/?before={cursor}".replace("&amp;", "&"), **HX)
    assert "<html" not in more.content.decode()
    assert sorted(shown + rows(more)) == sorted(made) and not set(shown) & set(rows(more))


def test_hostile_cursors_and_searches_are_harmless(bob, used):
    client = logged_in(bob)
    for query in (
        "before=x",
        "before=2026-01-01_²",
        "before=2026-01-01T00:00:00_5",
        "q=%22*OR",
        "q=" + "a" * 500,
    ):
        assert client.get(f"/history/?{query}", **HX).status_code == 200, query


def test_history_queries_do_not_grow_with_the_rows(bob, carol, accounts, django_assert_max_num_queries):
    client = logged_in(bob)
    make_image(bob, accounts["apiframe"], "prompt zero")
    with django_assert_max_num_queries(3) as few:  # session, user, prompts (newest image and who: subqueries)
        client.get("/history/")
    for i in range(35):
        image = make_image(carol if i % 2 else bob, accounts["apiframe"], f"prompt {i}")
        Generation.objects.create(
            user=bob, prompt=image.generation.prompt, model="flux-2-max", account=accounts["apiframe"]
        )
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert client.get("/history/").status_code == 200
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert client.get("/history/?q=prompt", **HX).status_code == 200


@pytest.mark.parametrize("window", [search.WINDOW, 3, 50])
def test_a_search_pages_in_last_use_order_across_pages_with_no_duplicate_or_gap(
    bob, accounts, monkeypatch, window
):
    """Three pages of a search over prompts whose last uses tie and do not follow their ids, whether the
    page comes from the window of most recent uses, from the older matches, or from both (SQLite)."""
    monkeypatch.setattr(search, "WINDOW", window)
    now = timezone.now()
    made = []
    for i in range(history.PAGE * 2 + 5):
        prompt = Prompt.remember(f"a lighthouse number {i}", bob)
        moment = now - timedelta(minutes=(i * 7) % 31)
        Prompt.objects.filter(pk=prompt.pk).update(last_used_at=moment)
        made.append((moment, prompt.pk))
    Prompt.remember("a fox in the snow", bob)  # not a match, and the newest
    expected = [pk for _, pk in sorted(made, reverse=True)]
    client = logged_in(bob)

    response = client.get("/history/?q=lighth")
    shown, pages = rows(response), 1
    while 'hx-trigger="revealed"' in response.content.decode():
        cursor = re.search(r"before=([^\"&]+)", response.content.decode()).group(1)
        response = client.get(f"/history/?q=lighth&before={cursor}", **HX)
        shown, pages = shown + rows(response), pages + 1
    assert pages == 3 and shown == expected


def test_a_page_reverses_each_address_once_not_once_a_row(bob, accounts, monkeypatch):
    """Three {% url %} tags a row were a quarter of the page's time at 40 rows: each address is reversed
    once for the page (history.address) and formatted per row."""
    import django.urls
    from django.urls import reverse

    client = logged_in(bob)
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0])
        return reverse(*args, **kwargs)

    monkeypatch.setattr(django.urls, "reverse", counting)  # what {% url %} imports when it renders
    monkeypatch.setattr(history, "reverse", counting, raising=False)

    def reversed_for_a_page() -> int:
        calls.clear()
        assert client.get("/history/").status_code == 200
        return len(calls)

    image = make_image(bob, accounts["apiframe"], "prompt zero")
    few = reversed_for_a_page()
    for i in range(30):
        make_image(bob, accounts["apiframe"], f"prompt {i}")
    assert reversed_for_a_page() == few
    html = client.get("/history/").content.decode()
    assert f'href="/gallery/images/{image.pk}"' in html and f'src="/images/{image.pk}/thumbnail"' in html
    assert f'href="/?use_prompt={image.prompt_id}"' in html
