"""Job logs: byte-offset appends from the agent, bounded per job (read by ``selectors``)."""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Min
from django.utils import timezone

from core.errors import Conflict, SuanliError
from marketplace.models import Job, JobLogChunk
from marketplace.services.jobs import job_for_node
from providers.models import Node

log = logging.getLogger(__name__)

LOG_CHUNK_MAX_BYTES = 64 * 1024
# Per job; past it the oldest chunks are dropped (the tail of a log is what people read).
LOG_MAX_BYTES = 16 * 1024 * 1024


class LogChunkTooLarge(SuanliError):
    code = "log_chunk_too_large"
    status_code = 413


class LogOffsetGap(Conflict):
    code = "log_offset_gap"


def job_log_append(*, node: Node, job_id: int, offset: int, data: str) -> int:
    """Append ``data`` (UTF-8) at byte ``offset`` of the node's job log; return the next offset.

    Contract: offsets are bytes of UTF-8. A chunk that overlaps what the server has (a resend
    after a crash) stores only its new tail; a repeated one stores nothing; one starting past
    the end is refused (``LogOffsetGap``, carrying the server's offset in ``fields.next_offset``)
    so the agent resends from there. Serialised per job by a row lock. At most
    ``LOG_MAX_BYTES`` per job are kept, dropping the oldest chunks.
    """
    raw = data.encode("utf-8")
    if len(raw) > LOG_CHUNK_MAX_BYTES:
        raise LogChunkTooLarge(
            f"A log chunk is at most {LOG_CHUNK_MAX_BYTES} bytes of UTF-8; this one is {len(raw)}.",
            fields={"data": f"At most {LOG_CHUNK_MAX_BYTES} bytes."},
        )
    with transaction.atomic():
        job = job_for_node(node=node, job_id=job_id, lock=True)
        size = job.log_size
        if offset > size:
            raise LogOffsetGap(
                f"Log offset {offset} is past the end of the log ({size}); resend from {size}.",
                fields={"offset": f"Resend from {size}.", "next_offset": str(size)},
            )
        new = raw[size - offset :]
        if not new:
            return size
        end = size + len(new)
        JobLogChunk.objects.create(job=job, offset=size, end_offset=end, data=new)
        changes: dict[str, int] = {"log_size": end}
        if end - job.log_start > LOG_MAX_BYTES:
            dropped, _ = JobLogChunk.objects.filter(job=job, offset__lt=end - LOG_MAX_BYTES).delete()
            if dropped:
                start = JobLogChunk.objects.filter(job=job).aggregate(start=Min("offset"))["start"]
                changes["log_start"] = start if start is not None else end
                log.info("job.log_trimmed job_id=%s log_start=%s", job.pk, changes["log_start"])
        Job.objects.filter(pk=job.pk).update(updated_at=timezone.now(), **changes)
    return end
