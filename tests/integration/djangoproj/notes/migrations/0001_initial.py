"""Creates the ``notes_note`` table."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []  # noqa: RUF012 - Django's own layout
    operations = [  # noqa: RUF012
        migrations.CreateModel(
            name="Note",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("run", models.CharField(db_index=True, max_length=40)),
                ("text", models.CharField(max_length=200)),
            ],
        ),
    ]
