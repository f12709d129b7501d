from django.db import migrations
from django.db.models import OuterRef, Subquery

FTS_TABLE = "generations_prompt_fts"
CONFIG = "simple"
PG_INDEX = "generations_prompt_text_fts"
PG_INDEX_SQL = (
    f"CREATE INDEX IF NOT EXISTS {PG_INDEX} ON generations_prompt "
    f"USING gin (to_tsvector('{CONFIG}'::regconfig, COALESCE(text, '')))"
)
SQLITE_SQL = [
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5("
    "text, content='generations_prompt', content_rowid='id')",
    f"""CREATE TRIGGER IF NOT EXISTS generations_prompt_fts_insert AFTER INSERT ON generations_prompt BEGIN
        INSERT INTO {FTS_TABLE}(rowid, text) VALUES (new.id, new.text);
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS generations_prompt_fts_delete AFTER DELETE ON generations_prompt BEGIN
        INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text) VALUES ('delete', old.id, old.text);
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS generations_prompt_fts_update AFTER UPDATE OF text ON generations_prompt
    BEGIN
        INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO {FTS_TABLE}(rowid, text) VALUES (new.id, new.text);
    END""",
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')",
]
SQLITE_DROP_SQL = [
    "DROP TRIGGER IF EXISTS generations_prompt_fts_insert",
    "DROP TRIGGER IF EXISTS generations_prompt_fts_delete",
    "DROP TRIGGER IF EXISTS generations_prompt_fts_update",
    f"DROP TABLE IF EXISTS {FTS_TABLE}",
]


def copy_owners(apps, schema_editor):
    """Each existing image takes its generation's user, model and provider account."""
    Generation = apps.get_model("generations", "Generation")
    Image = apps.get_model("generations", "Image")
    source = Generation.objects.filter(pk=OuterRef("generation_id"))
    Image.objects.using(schema_editor.connection.alias).update(
        user_id=Subquery(source.values("user_id")[:1]),
        model=Subquery(source.values("model")[:1]),
        account_id=Subquery(source.values("account_id")[:1]),
    )


def create_search_index(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "sqlite":
        for sql in SQLITE_SQL:
            schema_editor.execute(sql)
    elif vendor == "postgresql":
        schema_editor.execute(PG_INDEX_SQL)


def drop_search(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "sqlite":
        for sql in SQLITE_DROP_SQL:
            schema_editor.execute(sql)
    elif vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {PG_INDEX}")


class Migration(migrations.Migration):
    dependencies = [
        ("generations", "0005_team_studio"),
    ]

    operations = [
        migrations.RunPython(copy_owners, migrations.RunPython.noop),
        migrations.RunPython(create_search_index, drop_search),
    ]
