from django.db import migrations


def seed(apps, schema_editor):
    from providers.catalog import catalog_sync

    catalog_sync(apps.get_model("providers", "AcceleratorModel"))


class Migration(migrations.Migration):
    dependencies = [("providers", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
