import django.db.models.deletion
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def copy_prompts(apps, schema_editor):
    """Each existing image takes its generation's prompt."""
    Generation = apps.get_model("generations", "Generation")
    Image = apps.get_model("generations", "Image")
    source = Generation.objects.filter(pk=OuterRef("generation_id"))
    Image.objects.using(schema_editor.connection.alias).update(
        prompt_id=Subquery(source.values("prompt_id")[:1])
    )


class Migration(migrations.Migration):
    dependencies = [
        ("generations", "0007_image_owners_required"),
    ]

    operations = [
        migrations.AddField(
            model_name="image",
            name="prompt",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="images",
                to="generations.prompt",
            ),
        ),
        migrations.RunPython(copy_prompts, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="prompt",
            index=models.Index(fields=["-last_used_at", "-id"], name="prompt_recent"),
        ),
    ]
