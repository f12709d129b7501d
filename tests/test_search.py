"""Search over the prompt history (issue 8): one QuerySet method, full-text on both databases. The suite runs on
SQLite and on PostgreSQL (`DATABASE_URL=postgres://...`), so every test here runs on each."""

from __future__ import annotations

import pytest
from django.db import connection

from generations.models import Generation, Image, Prompt, ProviderAccount

PROMPTS = [
    "A lighthouse at dusk, oil painting",
    "Neon city street in the rain",
    "Portrait of an old fisherman near the lighthouse",
    "Watercolour fox in a snowy forest",
    "lighthouses of Brittany",
]


@pytest.fixture
def prompts(bob) -> dict[str, Prompt]:
    return {text: Prompt.remember(text, bob) for text in PROMPTS}


def found(query: str) -> set[str]:
    return set(Prompt.objects.search(query).values_list("text", flat=True))


@pytest.mark.parametrize(
    "query, expected",
    [
        ("lighthouse", {PROMPTS[0], PROMPTS[2], PROMPTS[4]}),  # the last word is a prefix
        ("dusk lighthouse", {PROMPTS[0]}),  # every word, in any order
        ("LIGHTHOUSE Dusk", {PROMPTS[0]}),  # whatever the case
        ("light", {PROMPTS[0], PROMPTS[2], PROMPTS[4]}),
        ("fisherman lig", {PROMPTS[2]}),
        ("rain neon", {PROMPTS[1]}),
        ("  fox,   forest!  ", {PROMPTS[3]}),  # punctuation separates words
        ("lighthouse submarine", set()),
    ],
)
def test_it_finds_prompts_by_every_word_in_any_order(prompts, query, expected):
    assert found(query) == expected


def test_only_the_last_word_is_a_prefix(prompts):
    assert found("light dusk") == set()
    assert found("dusk light") == {PROMPTS[0]}


def test_a_query_without_words_finds_nothing(prompts):
    assert found("") == set()
    assert found("   ") == set()
    assert found("*:&|!") == set()


@pytest.mark.parametrize(
    "query",
    [
        '"',
        "'",
        'lighthouse"',
        "lighthouse OR fox",
        "lighthouse AND fox",
        "NOT fox",
        "NEAR(lighthouse fox)",
        "text:lighthouse",
        "lighthouse*",
        "^lighthouse",
        "lighthouse & fox",
        "lighthouse | fox",
        "!fox",
        "lighthouse:*",
        "light\\house",
        "(lighthouse",
        "fox' | 'rain",
        "-fox",
        "{text}: fox",
    ],
)
def test_search_syntax_in_the_query_is_only_text(prompts, query):
    """An operator typed by a user is never obeyed, and never an error: `lighthouse OR fox` wants every word
    (there is no prompt with "or" in it)."""
    result = found(query)
    assert result <= set(PROMPTS)
    assert not ({PROMPTS[1], PROMPTS[3]} <= result)  # no OR took effect


def test_operator_words_are_searched_as_words(bob):
    Prompt.remember("cats OR dogs near the sea", bob)
    Prompt.remember("cats and dogs", bob)
    assert found("cats or") == {"cats OR dogs near the sea"}
    assert found("near cats") == {"cats OR dogs near the sea"}
    assert found("and cats") == {"cats and dogs"}


def test_it_follows_edits_and_deletions_of_prompts(prompts):
    prompt = prompts[PROMPTS[3]]
    Prompt.objects.filter(pk=prompt.pk).update(text="Watercolour wolf in a snowy forest")
    assert found("fox") == set()
    assert found("wolf") == {"Watercolour wolf in a snowy forest"}
    Prompt.objects.filter(pk=prompt.pk).delete()
    assert found("wolf") == set()
    assert found("watercolour") == set()


def test_it_reads_words_beyond_ascii(bob):
    Prompt.remember("Café au lait sur la Côte d'Azur", bob)
    Prompt.remember("東京 夜景", bob)
    assert found("côte café") == {"Café au lait sur la Côte d'Azur"}
    assert found("CÔTE") == {"Café au lait sur la Côte d'Azur"}
    assert found("東京") == {"東京 夜景"}


def test_generations_and_images_are_searched_by_their_prompt(bob, prompts):
    account = ProviderAccount.objects.create(slug="acme", kind="apiframe", base_url="http://127.0.0.1:9/a")
    jobs = {
        text: Generation.objects.create(user=bob, prompt=prompt, model="flux-2-max", account=account)
        for text, prompt in prompts.items()
    }
    for index, job in enumerate(jobs.values()):
        Image.objects.create(
            generation=job, file="x", thumbnail="y", width=1, height=1, format="png", bytes=1, index=index
        )
    assert set(Generation.objects.search("lighthouse dusk")) == {jobs[PROMPTS[0]]}
    assert {i.generation for i in Image.objects.search("lighth")} == {
        jobs[PROMPTS[0]],
        jobs[PROMPTS[2]],
        jobs[PROMPTS[4]],
    }
    # It chains with the rest of a QuerySet, the gallery included.
    assert [i.generation.prompt.text for i in Image.objects.gallery().search("fox")] == [PROMPTS[3]]
    assert not Image.objects.gallery().search("").exists()


def test_the_query_is_answered_from_the_full_text_index(prompts):
    sql, params = Prompt.objects.search("dusk lighth").query.sql_with_params()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # With a handful of rows a scan is cheaper; forbid it to see that the GIN index serves the query.
            cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(("EXPLAIN QUERY PLAN " if connection.vendor == "sqlite" else "EXPLAIN ") + sql, params)
        plan = " ".join(str(row) for row in cursor.fetchall())
    if connection.vendor == "sqlite":
        assert "generations_prompt_fts VIRTUAL TABLE INDEX" in plan
    else:
        assert "generations_prompt_document" in plan  # the stored column's GIN index (migration 0013)
    assert "LIKE" not in sql.upper()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's stored search column")
def test_postgresql_tests_each_prompt_against_its_stored_document_not_a_rebuilt_one(bob, prompts):
    """Walking the history in order tests each prompt; that reads the stored tsvector (a generated column,
    kept by PostgreSQL through edits) instead of running to_tsvector on its text per row."""
    history = Prompt.objects.search("lighth").recent(40)
    sql, params = history.query.sql_with_params()
    assert '"search_document" @@' in sql and "to_tsvector" not in sql
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_bitmapscan = off")  # the walk in order, as at 100,000 prompts
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert "search_document @@" in plan and "to_tsvector" not in plan
    edited = prompts[PROMPTS[3]]
    Prompt.objects.filter(pk=edited.pk).update(text="Watercolour wolf")
    with connection.cursor() as cursor:
        cursor.execute("SELECT search_document::text FROM generations_prompt WHERE id = %s", [edited.pk])
        assert cursor.fetchone()[0] == "'watercolour':1 'wolf':2"
    # Through a subquery too (the table is aliased there): the gallery's and the API's search.
    assert [g.prompt.text for g in Generation.objects.search("wolf")] == []


def test_the_api_lists_by_q_with_full_text_search(bob, prompts):
    from django.test import Client

    from generations.models import ApiToken

    account = ProviderAccount.objects.create(slug="acme", kind="apiframe", base_url="http://127.0.0.1:9/a")
    jobs = {
        text: Generation.objects.create(user=bob, prompt=prompt, model="flux-2-max", account=account)
        for text, prompt in prompts.items()
    }
    _, token = ApiToken.issue(bob)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")

    def listed(q: str) -> list[int]:
        response = client.get("/api/v1/generations", {"q": q})
        assert response.status_code == 200
        return [g["id"] for g in response.json()["results"]]

    assert listed("LIGHTHOUSE dusk") == [jobs[PROMPTS[0]].pk]
    assert listed("lighth") == [jobs[PROMPTS[4]].pk, jobs[PROMPTS[2]].pk, jobs[PROMPTS[0]].pk]
    assert listed("house") == []  # words, not substrings (a LIKE '%house%' would find the lighthouses)
    assert listed('fox" OR "rain') == []


def test_recent_pages_prompts_by_last_use_and_keeps_annotations_to_the_page(bob):
    from datetime import timedelta

    from django.db.models import Value
    from django.utils import timezone

    now = timezone.now()
    made = []
    for i in range(7):
        prompt = Prompt.remember(f"red fox number {i}", bob)
        Prompt.objects.filter(pk=prompt.pk).update(last_used_at=now - timedelta(minutes=i // 2))
        made.append(Prompt.objects.get(pk=prompt.pk))
    Prompt.remember("blue whale", bob)
    expected = sorted(made, key=lambda p: (p.last_used_at, p.pk), reverse=True)
    page = list(Prompt.objects.search("red fox").recent(3).annotate(tag=Value("x")))
    assert page == expected[:3] and {p.tag for p in page} == {"x"}
    cursor = (page[-1].last_used_at, page[-1].pk)
    assert list(Prompt.objects.search("fox").recent(10, before=cursor)) == expected[3:]
    sql = str(Prompt.objects.search("fox").recent(3).query)
    assert "LIMIT 3" in sql[sql.index("IN (SELECT") :]
