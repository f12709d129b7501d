"""Full-text search over the prompt history, one QuerySet method on either database (issue 8).

Every word of the query must appear in the prompt, in any order, case-insensitively; the last word may be
the start of a word, so results follow the user's typing. Words are taken from the text and each one is
quoted before it reaches the search syntax, so no operator a user types (`OR`, `NEAR`, `*`, `:`, `!`, `"`)
means anything.

- SQLite: an external-content FTS5 table `generations_prompt_fts` over `generations_prompt.text`, kept by
  triggers (migration 0006); the query matches it and takes the rowids.
  https://www.sqlite.org/fts5.html#external_content_tables
- PostgreSQL: `to_tsvector('simple', text)` with a GIN index on that very expression (migration 0006),
  matched by a tsquery of quoted prefix-capable lexemes. `simple` neither stems nor drops stop words, so
  both databases find the same prompts.
  https://www.postgresql.org/docs/current/textsearch-tables.html#TEXTSEARCH-TABLES-INDEX
"""

from __future__ import annotations

import re

from django.db import connections
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL

FTS_TABLE = "generations_prompt_fts"
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
        return rows.filter(
            pk__in=RawSQL(f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH %s", [fts5_query(found)])
        )
    if vendor == "postgresql":
        from django.contrib.postgres.search import SearchQuery, SearchVector

        return rows.annotate(_document=SearchVector("text", config=CONFIG)).filter(
            _document=SearchQuery(tsquery(found), config=CONFIG, search_type="raw")
        )
    # Any other database: every word as a substring (correct, not indexed).
    for word in found:
        rows = rows.filter(text__icontains=word)
    return rows


def by_prompt(rows: QuerySet, text: str, path: str) -> QuerySet:
    """Filter any QuerySet whose `path` leads to a Prompt by that prompt matching `text`."""
    from .models import Prompt

    matching = prompts(Prompt.objects.using(rows.db).order_by(), text)
    if not words(text):
        return rows.none()
    return rows.filter(**{f"{path}__in": matching.values("pk")})
