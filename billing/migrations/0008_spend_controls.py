"""Spend controls per buyer: a monthly cap and a low-balance alert threshold (issue 13, item 3)."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0007_volume_lease"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="SpendControl",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("monthly_cap_micros", models.BigIntegerField(blank=True, null=True)),
                ("low_balance_threshold_micros", models.BigIntegerField(blank=True, null=True)),
                ("low_balance_alerted_at", models.DateTimeField(blank=True, null=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "user",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="spend_control",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(
                            ("monthly_cap_micros__isnull", True),
                            ("monthly_cap_micros__gte", 0),
                            _connector="OR",
                        ),
                        name="spend_cap_nonnegative",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(
                            ("low_balance_threshold_micros__isnull", True),
                            ("low_balance_threshold_micros__gte", 0),
                            _connector="OR",
                        ),
                        name="low_balance_threshold_nonnegative",
                    ),
                ],
            },
        ),
    ]
