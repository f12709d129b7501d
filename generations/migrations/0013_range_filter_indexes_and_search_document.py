from django.db import migrations, models

# PostgreSQL: each prompt's tsvector stored in a generated column with its own GIN index (search.py). The
# expression index of 0006 found the matches, but a plan that walks the prompts in the history's order
# (newest use first) tested each row by building its tsvector again from the text; a stored one is read.
# https://www.postgresql.org/docs/current/textsearch-tables.html#TEXTSEARCH-TABLES-INDEX
# SQLite keeps its FTS5 table (0006).
DOCUMENT = "search_document"
PG_OLD_INDEX = "generations_prompt_text_fts"
PG_INDEX = "generations_prompt_document"
PG_SQL = [
    f"ALTER TABLE generations_prompt ADD COLUMN IF NOT EXISTS {DOCUMENT} tsvector "
    "GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, COALESCE(text, ''))) STORED",
    f"CREATE INDEX IF NOT EXISTS {PG_INDEX} ON generations_prompt USING gin ({DOCUMENT})",
    f"DROP INDEX IF EXISTS {PG_OLD_INDEX}",
]
PG_REVERSE_SQL = [
    f"CREATE INDEX IF NOT EXISTS {PG_OLD_INDEX} ON generations_prompt "
    "USING gin (to_tsvector('simple'::regconfig, COALESCE(text, '')))",
    f"DROP INDEX IF EXISTS {PG_INDEX}",
    f"ALTER TABLE generations_prompt DROP COLUMN IF EXISTS {DOCUMENT}",
]


def add_document(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in PG_SQL:
            schema_editor.execute(sql)


def drop_document(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in PG_REVERSE_SQL:
            schema_editor.execute(sql)


class Migration(migrations.Migration):
    dependencies = [
        ("generations", "0012_image_created_id"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="image",
            index=models.Index(fields=["user", "-created_at", "-id"], name="image_user_created_id"),
        ),
        migrations.AddIndex(
            model_name="image",
            index=models.Index(fields=["model", "-created_at", "-id"], name="image_model_created_id"),
        ),
        migrations.AddIndex(
            model_name="image",
            index=models.Index(fields=["account", "-created_at", "-id"], name="image_account_created_id"),
        ),
        migrations.AddIndex(
            model_name="image",
            index=models.Index(fields=["format", "-created_at", "-id"], name="image_format_created_id"),
        ),
        migrations.RunPython(add_document, drop_document),
    ]
