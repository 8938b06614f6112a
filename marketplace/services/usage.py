"""Usage samples from agents, checked against the node's jobs and stored by billing."""

from __future__ import annotations

from collections.abc import Sequence

from billing.services import UsageRecordResult, UsageSampleIn, usage_samples_record
from core.errors import NotFound, ValidationFailed
from marketplace.models import Job
from providers.models import Node

USAGE_BATCH_MAX = 500


def agent_usage_record(*, node: Node, samples: Sequence[UsageSampleIn]) -> UsageRecordResult:
    """Store a batch of the node's usage samples (idempotent per ``(job_id, seq)``).

    Contract: all or nothing: if any sample names a job that is not this node's, the whole
    batch is refused (``NotFound``) and nothing is stored.
    """
    if len(samples) > USAGE_BATCH_MAX:
        raise ValidationFailed(
            f"At most {USAGE_BATCH_MAX} samples per batch.", fields={"samples": f"At most {USAGE_BATCH_MAX}."}
        )
    job_ids = {sample.job_id for sample in samples}
    mine = set(Job.objects.filter(node_id=node.pk, pk__in=job_ids).values_list("pk", flat=True))
    foreign = sorted(job_ids - mine)
    if foreign:
        raise NotFound(f"Job {foreign[0]} is not a job of this node; nothing was stored.")
    return usage_samples_record(samples=samples)
