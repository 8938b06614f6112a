# Persistent volumes (issue 13 item 2): the offer's volume price, an order's volumes, the Volume model.

import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('marketplace', '0006_offer_free_devices'),
        ('providers', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='offer',
            name='volume_price_micros',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='order',
            name='volumes',
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.CreateModel(
            name='Volume',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('name', models.CharField(max_length=63)),
                ('size_gib', models.PositiveIntegerField(validators=[django.core.validators.MinValueValidator(1)])),
                ('price_micros', models.BigIntegerField()),
                ('status', models.CharField(choices=[('ready', 'Ready'), ('deleted', 'Deleted')], default='ready', max_length=10)),
                ('lease_id', models.BigIntegerField(blank=True, null=True)),
                ('deleted_at', models.DateTimeField(blank=True, null=True)),
                ('idempotency_key', models.CharField(max_length=128)),
                ('request_hash', models.CharField(default='', max_length=64)),
                ('buyer', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='volumes', to=settings.AUTH_USER_MODEL)),
                ('node', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='volumes', to='providers.node')),
            ],
            options={
                'ordering': ['-id'],
                'indexes': [models.Index(fields=['node', 'status'], name='volume_node_status')],
                'constraints': [models.UniqueConstraint(fields=('buyer', 'idempotency_key'), name='volume_idempotency_unique'), models.UniqueConstraint(condition=models.Q(('status', 'ready')), fields=('buyer', 'name'), name='volume_live_name_unique'), models.CheckConstraint(condition=models.Q(('size_gib__gte', 1)), name='volume_size_positive'), models.CheckConstraint(condition=models.Q(('price_micros__gte', 0)), name='volume_price_nonnegative')],
            },
        ),
    ]
