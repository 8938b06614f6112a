"""Each node keeps its reliability score (until now only an offer had one), so a node without an
offer shows its score too. The marketplace copies existing offers' scores to their nodes."""

from decimal import Decimal

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("providers", "0002_seed_catalog"),
    ]

    operations = [
        migrations.AddField(
            model_name="node",
            name="reliability",
            field=models.DecimalField(decimal_places=3, default=Decimal("0.600"), max_digits=4),
        ),
    ]
