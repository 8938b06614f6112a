"""Usage samples from agents, checked against the node's jobs and stored by billing."""

from __future__ import annotations

from collections.abc import Sequence

from django.utils import timezone
from django.utils.translation import gettext as _

from billing.services import UsageRecordResult, UsageSampleIn, usage_samples_record
from core.errors import NotFound, ValidationFailed
from marketplace.models import Job
from marketplace.services.jobs import max_clock_skew
from providers.models import Node

USAGE_BATCH_MAX = 500


def agent_usage_record(*, node: Node, samples: Sequence[UsageSampleIn]) -> UsageRecordResult:
    """Store a batch of the node's usage samples (idempotent per ``(job_id, seq)``).

    Contract: all or nothing: if any sample names a job that is not this node's, the whole
    batch is refused (``NotFound``) and nothing is stored. A sample must lie within its job's
    running interval (from ``started_at`` to ``ended_at``, or now while it runs, give or take
    the clock skew allowance) and count no more devices than the job has; otherwise the whole
    batch is refused (``ValidationFailed``, the fields name each bad sample) and nothing is
    stored: energy and utilisation shown to buyers are derived from these windows.
    """
    if len(samples) > USAGE_BATCH_MAX:
        raise ValidationFailed(
            f"At most {USAGE_BATCH_MAX} samples per batch.", fields={"samples": f"At most {USAGE_BATCH_MAX}."}
        )
    job_ids = {sample.job_id for sample in samples}
    jobs = Job.objects.filter(node_id=node.pk, pk__in=job_ids).only(
        "pk", "device_indexes", "started_at", "ended_at"
    )
    mine = {job.pk: job for job in jobs}
    foreign = sorted(job_ids - set(mine))
    if foreign:
        raise NotFound(f"Job {foreign[0]} is not a job of this node; nothing was stored.")
    now = timezone.now()
    skew = max_clock_skew()
    fields: dict[str, str] = {}
    for index, sample in enumerate(samples):
        job = mine[sample.job_id]
        prefix = f"samples.{index}"
        if sample.device_count > len(job.device_indexes):
            fields[f"{prefix}.device_count"] = _("The job has %(count)s device(s).") % {
                "count": len(job.device_indexes)
            }
        if job.started_at is None:
            fields[f"{prefix}.window_start"] = _("Job %(job)s has not started running.") % {"job": job.pk}
            continue
        if sample.window_start < job.started_at - skew:
            fields[f"{prefix}.window_start"] = _("Before job %(job)s started running (%(at)s).") % {
                "job": job.pk,
                "at": job.started_at.isoformat(),
            }
        end = job.ended_at or now
        if sample.window_end > end + skew:
            fields[f"{prefix}.window_end"] = (
                _("After job %(job)s ended (%(at)s).") % {"job": job.pk, "at": end.isoformat()}
                if job.ended_at is not None
                else _("In the future.")
            )
    if fields:
        first = next(iter(fields))
        raise ValidationFailed(
            _("A sample lies outside its job's running interval or devices (%(field)s); nothing was stored.")
            % {"field": first},
            fields=fields,
        )
    return usage_samples_record(samples=samples)
