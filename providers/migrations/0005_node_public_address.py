"""Where buyers reach a node's jobs: the public address its agent reports (blank: not reported)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("providers", "0004_node_measured_power"),
    ]

    operations = [
        migrations.AddField(
            model_name="node",
            name="public_address",
            field=models.CharField(blank=True, max_length=253),
        ),
    ]
