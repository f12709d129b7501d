import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("generations", "0008_image_prompt"),
    ]

    operations = [
        migrations.AlterField(
            model_name="image",
            name="prompt",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="images",
                to="generations.prompt",
            ),
        ),
    ]
