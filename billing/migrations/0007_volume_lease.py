# Leases of persistent volumes (kind "volume": device_count is GiB, the rate per GiB-hour).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0006_lease_opening_rate'),
    ]

    operations = [
        migrations.AlterField(
            model_name='lease',
            name='kind',
            field=models.CharField(choices=[('on_demand', 'On-demand'), ('spot', 'Spot'), ('reserved', 'Reserved'), ('volume', 'Volume')], default='on_demand', max_length=12),
        ),
    ]
