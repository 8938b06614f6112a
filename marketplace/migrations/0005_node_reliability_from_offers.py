"""Nodes now keep their reliability score (providers 0003); existing nodes take their offer's."""

from django.db import migrations


def copy_offer_scores(apps, schema_editor):
    Node = apps.get_model("providers", "Node")
    Offer = apps.get_model("marketplace", "Offer")
    for node_id, reliability in Offer.objects.values_list("node_id", "reliability").iterator():
        Node.objects.filter(pk=node_id).update(reliability=reliability)


class Migration(migrations.Migration):
    dependencies = [
        ("marketplace", "0004_order_status_reason_codes"),
        ("providers", "0003_node_reliability"),
    ]

    operations = [
        migrations.RunPython(copy_offer_scores, migrations.RunPython.noop),
    ]
