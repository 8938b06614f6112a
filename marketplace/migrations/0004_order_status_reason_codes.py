"""``Order.status_reason`` holds a stable code (``OrderReason``) instead of English words, with its
details in the new ``status_params``; the words are chosen when a page or the API renders it.

Existing rows are converted from the sentences the services used to store. A sentence this
migration does not know is the message of a failed job (the only free text ever stored there).
The reverse writes the English sentences back.
"""

import re

from django.db import migrations, models

FIXED = {
    "cancelled by buyer": "cancelled_by_buyer",
    "stopping at the buyer's request": "stopping_for_buyer",
    "no capacity was found before the reserved window passed": "reserved_window_passed",
    "re-queued: node did not respond": "requeued_no_ack",
    "node lost; waiting for capacity again": "requeued_node_lost",
    "wallet cannot cover a restart": "restart_unfunded",
    "wallet cannot cover a retry": "retry_unfunded",
    "job failed": "job_failed",
    "stopped": "job_stopped",
    "the node went offline": "node_lost",
}
EXITED = re.compile(r"job exited with code (-?\d+|None)")
PREEMPTED = re.compile(r"preempted \((.*)\)")


CODES = {*FIXED.values(), "job_exited", "job_preempted"}


def to_code(text):
    if text in CODES:
        return text, {}
    if text in FIXED:
        return FIXED[text], {}
    exited = EXITED.fullmatch(text)
    if exited:
        code = exited.group(1)
        return "job_exited", {"exit_code": None if code == "None" else int(code)}
    preempted = PREEMPTED.fullmatch(text)
    if preempted:
        reason = preempted.group(1)
        return "job_preempted", {"preemption": "" if reason == "capacity needed" else reason}
    return "job_failed", {"message": text}


def to_text(code, params):
    english = {value: text for text, value in FIXED.items()}
    if code == "job_exited":
        return f"job exited with code {params.get('exit_code')}"
    if code == "job_preempted":
        return f"preempted ({params.get('preemption') or 'capacity needed'})"
    if code == "job_failed" and params.get("message"):
        return str(params["message"])[:200]
    return english.get(code, code)


def forwards(apps, schema_editor):
    Order = apps.get_model("marketplace", "Order")
    for order in Order.objects.exclude(status_reason="").only("pk", "status_reason").iterator():
        code, params = to_code(order.status_reason)
        Order.objects.filter(pk=order.pk).update(status_reason=code, status_params=params)


def backwards(apps, schema_editor):
    Order = apps.get_model("marketplace", "Order")
    for order in (
        Order.objects.exclude(status_reason="").only("pk", "status_reason", "status_params").iterator()
    ):
        Order.objects.filter(pk=order.pk).update(
            status_reason=to_text(order.status_reason, order.status_params)
        )


class Migration(migrations.Migration):
    dependencies = [
        ("marketplace", "0003_market_orders"),
    ]

    operations = [
        migrations.AddField(
            model_name="order",
            name="status_params",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.RunPython(forwards, backwards),
    ]
