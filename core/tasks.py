"""The task base every Suanli task uses.

Dispatch is deferred to after the surrounding transaction commits (a worker must never look for a
row that is not committed yet, nor act on one that was rolled back); outside a transaction it is
immediate. Tasks are thin adapters with stable names that take JSON ids only and are safe to run
twice.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from django.db import transaction


class SuanliTask(Task):
    abstract = True
    acks_late = True
    # Bounded, jittered retries for the errors a task declares in autoretry_for.
    retry_backoff = 2
    retry_backoff_max = 120
    retry_jitter = True
    max_retries = 5

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:  # type: ignore[override]
        connection = transaction.get_connection()
        if connection.in_atomic_block and not self.app.conf.task_always_eager:
            transaction.on_commit(lambda: super(SuanliTask, self).apply_async(args, kwargs, **options))
            return None
        return super().apply_async(args, kwargs, **options)


@shared_task(base=SuanliTask, name="core.idempotency.purge", soft_time_limit=60, time_limit=90)
def idempotent_requests_purge() -> int:
    """Forget Idempotency-Keys older than their 24-hour retention."""
    from core.services import idempotent_requests_purge as purge

    return purge()
