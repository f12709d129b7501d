"""Provider kinds come from the adapters (generations.providers.kind_choices), so adding one (BFL, issue 9)
needs no migration of its own. Choices live in Python only: the database is untouched."""

from django.db import migrations, models

import generations.providers


class Migration(migrations.Migration):
    dependencies = [("generations", "0013_range_filter_indexes_and_search_document")]

    operations = [
        migrations.AlterField(
            model_name="price",
            name="kind",
            field=models.CharField(choices=generations.providers.kind_choices, max_length=20),
        ),
        migrations.AlterField(
            model_name="provideraccount",
            name="kind",
            field=models.CharField(choices=generations.providers.kind_choices, max_length=20),
        ),
    ]
