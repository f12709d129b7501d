"""Full-text search over the prompt history, one QuerySet method on either database (issue 8).

Every word of the query must appear in the prompt, in any order, case-insensitively; the last word may be
the start of a word, so results follow the user's typing. Words are taken from the text and each one is
quoted before it reaches the search syntax, so no operator a user types (`OR`, `NEAR`, `*`, `:`, `!`, `"`)
means anything.

- SQLite: an external-content FTS5 table `generations_prompt_fts` over `generations_prompt.text`, kept by
  triggers (migration 0006); the query matches it and takes the rowids.
  https://www.sqlite.org/fts5.html#external_content_tables
- PostgreSQL: the stored column `search_document`, generated as `to_tsvector('simple', text)`, with a GIN
  index of its own (migration 0013, replacing 0006's index on the expression), matched by a tsquery of
  quoted prefix-capable lexemes. Stored, because a plan that walks the prompts in the history's order tests
  each row, and testing the expression built each row's tsvector again from its text. `simple` neither
  stems nor drops stop words, so both databases find the same prompts.
  https://www.postgresql.org/docs/current/textsearch-tables.html#TEXTSEARCH-TABLES-INDEX
"""

from __future__ import annotations

import re

from django.db import connections
from django.db.models import F, Func, QuerySet
from django.db.models.expressions import RawSQL

FTS_TABLE = "generations_prompt_fts"
DOCUMENT = "search_document"  # PostgreSQL
CONFIG = "simple"
MAX_WORDS = 16
WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The searchable words of `text`, lower-cased, as both tokenizers split them (letters, digits, _)."""
    return [word.lower() for word in WORD.findall(text or "")][:MAX_WORDS]


def fts5_query(found: list[str]) -> str:
    """`"sunset" "lighth"*`: each word a quoted FTS5 string (a `"` inside doubled), implicitly ANDed."""
    quoted = ['"' + word.replace('"', '""') + '"' for word in found]
    quoted[-1] += "*"
    return " ".join(quoted)


def tsquery(found: list[str]) -> str:
    """`'sunset' & 'lighth':*`: each word a quoted lexeme (a `'` or `\\` inside escaped)."""
    quoted = ["'" + word.replace("\\", "\\\\").replace("'", "''") + "'" for word in found]
    quoted[-1] += ":*"
    return " & ".join(quoted)


def prompts(rows: QuerySet, text: str) -> QuerySet:
    """Filter a Prompt QuerySet by `text`. No words at all (blank, or only punctuation) match nothing."""
    found = words(text)
    if not found:
        return rows.none()
    vendor = connections[rows.db].vendor
    if vendor == "sqlite":
        matching = fts5_rowids(found)
        result = rows.filter(pk__in=matching)
        result._prompt_search = (rows, matching)  # for PromptQuerySet.recent (recent_prompts)
        return result
    if vendor == "postgresql":
        from django.contrib.postgres.search import SearchQuery

        return rows.alias(_document=Document()).filter(
            _document=SearchQuery(tsquery(found), config=CONFIG, search_type="raw")
        )
    # Any other database: every word as a substring (correct, not indexed).
    for word in found:
        rows = rows.filter(text__icontains=word)
    return rows


class Document(Func):
    """The prompt table's stored tsvector column (PostgreSQL only, made by migration 0013, so no model
    field), under whatever alias the query gives the table (`U0` in a subquery): compiled from the text
    column's reference, the column's name swapped."""

    def __init__(self) -> None:
        from django.contrib.postgres.search import SearchVectorField

        super().__init__(F("text"), output_field=SearchVectorField())

    def as_sql(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.source_expressions[0])
        table, _, column = sql.rpartition(".")
        assert column == connection.ops.quote_name("text"), sql
        return f"{table}.{connection.ops.quote_name(DOCUMENT)}", params


def fts5_rowids(found: list[str]) -> RawSQL:
    """The ids of the prompts matching `found`: the FTS table's rowids are the prompts' ids."""
    return RawSQL(f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH %s", [fts5_query(found)])


def by_prompt(rows: QuerySet, text: str, path: str) -> QuerySet:
    """Filter any QuerySet whose `path` leads to a Prompt by that prompt matching `text`."""
    from .models import Prompt

    found = words(text)
    if not found:
        return rows.none()
    if connections[rows.db].vendor == "sqlite":
        matching = fts5_rowids(found)  # straight from the index, no read of the prompt rows
    else:
        matching = prompts(Prompt.objects.using(rows.db).order_by(), text).values("pk")
    result = rows.filter(**{f"{path}__in": matching})
    # For KeysetQuerySet.newest(): what the rows were before the search, and how to test the prompt.
    result._prompt_search = (rows, path, matching)
    return result


# How many of the newest ids a page of search results first looks through in order (see recent_first).
WINDOW = 2000


def recent_first(rows: QuerySet, size: int, before: int | None) -> RawSQL | None:
    """The ids of a page of `rows` (a search made by `by_prompt`, and nothing filtered after it), newest
    first, on SQLite, in two steps of one query: the newest WINDOW ids in order, each row's prompt tested
    against the matches, and only when that finds fewer than `size`, the older rows through the prompt
    index. SQLite always takes the index, and for a common word ("in" matches ~45 % of the prompts) it
    then sorts every matching id: the window finds a page in ~100 rows instead. UNION ALL runs its second
    SELECT only when the first left the LIMIT unfilled."""
    from django.db.models import BigIntegerField, ExpressionWrapper, F, Subquery, Value

    base, path, matching = rows._prompt_search
    model = rows.model
    if before is None:
        newest = Subquery(model._default_manager.using(rows.db).order_by("-pk").values("pk")[:1])
        floor = ExpressionWrapper(newest - Value(WINDOW), output_field=BigIntegerField())
    else:
        base = base.filter(pk__lt=before)
        rows = rows.filter(pk__lt=before)
        floor = before - WINDOW
    # `prompt_id + 0` can use no index, so SQLite walks the window by id, newest first.
    tested = ExpressionWrapper(F(f"{path}_id") + 0, output_field=BigIntegerField())
    window = (
        base.alias(_prompt=tested).filter(_prompt__in=matching, pk__gte=floor).order_by("-pk").values("pk")
    )
    older = rows.filter(pk__lt=floor).order_by("-pk").values("pk")
    window_sql, window_params = window[:size].query.sql_with_params()
    older_sql, older_params = older[:size].query.sql_with_params()
    return RawSQL(
        f"SELECT * FROM ({window_sql}) UNION ALL SELECT * FROM ({older_sql}) LIMIT {int(size)}",
        (*window_params, *older_params),
    )


def recent_prompts(rows: QuerySet, size: int, before: tuple | None) -> RawSQL:
    """The ids of a page of `rows` (a prompt search made by `prompts` on SQLite, nothing filtered after it)
    in the history's order below the cursor `before`, in two steps of one query, as `recent_first` does for
    images: the WINDOW most recently used prompts walked in order through the (last_used_at, id) index,
    each tested against the matches, and only when that finds fewer than `size`, the older matches, sorted.
    Sorting every match of a common word ("in": 11,000 of 25,000 prompts at 100,000 images) grew with the
    history: 5.9 ms for a page's ids, 2.1 ms through the window (most of it reading the matches)."""
    from datetime import UTC, datetime

    from django.db.models import BigIntegerField, DateTimeField, ExpressionWrapper, F, Subquery, Value
    from django.db.models.functions import Coalesce

    from .models import RECENT

    base, matching = rows._prompt_search
    base = base.below(before)
    # The last use of the WINDOW-th prompt below the cursor (all of them when there are fewer).
    floor = Coalesce(
        Subquery(base.order_by(*RECENT).values("last_used_at")[WINDOW - 1 : WINDOW]),
        Value(datetime(1, 1, 1, tzinfo=UTC)),
        output_field=DateTimeField(),
    )
    # `id + 0` can use no index, so SQLite walks the window by last use, newest first.
    tested = ExpressionWrapper(F("pk") + 0, output_field=BigIntegerField())
    window = base.alias(_id=tested).filter(_id__in=matching, last_used_at__gte=floor)
    older = base.filter(pk__in=matching, last_used_at__lt=floor)
    window_sql, window_params = window.order_by(*RECENT).values("pk")[:size].query.sql_with_params()
    older_sql, older_params = older.order_by(*RECENT).values("pk")[:size].query.sql_with_params()
    return RawSQL(
        f"SELECT * FROM ({window_sql}) UNION ALL SELECT * FROM ({older_sql}) LIMIT {int(size)}",
        (*window_params, *older_params),
    )
