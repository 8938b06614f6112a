"""A node's measured device power under load (from heartbeats), used instead of the catalog TDP
for its offer's carbon estimate and TOPS/W once known. Nullable: no node has been measured yet."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("providers", "0003_node_reliability"),
    ]

    operations = [
        migrations.AddField(
            model_name="node",
            name="measured_power_w",
            field=models.DecimalField(
                blank=True,
                decimal_places=1,
                help_text="Measured mean power of one device under load, W (None: not measured yet).",
                max_digits=7,
                null=True,
            ),
        ),
    ]
