"""Marketplace reads."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from core.errors import NotFound
from marketplace.models import Job, JobLogChunk

LOG_READ_MAX_BYTES = 1024 * 1024


def job_get_for_buyer(*, user: AbstractBaseUser | AnonymousUser, job_id: int) -> Job:
    """The user's own job; anyone else's (or none) is ``NotFound``."""
    job = Job.objects.filter(pk=job_id, buyer_id=user.pk).first() if user.pk is not None else None
    if job is None:
        raise NotFound("No such job.")
    return job


@dataclass(frozen=True)
class LogSlice:
    offset: int  # where ``data`` starts (later than asked when older bytes were dropped)
    next_offset: int
    data: str
    log_size: int
    log_start: int


def job_log_read(*, job: Job, offset: int, limit: int = LOG_READ_MAX_BYTES) -> LogSlice:
    """Up to ``limit`` bytes of the log from ``offset`` (a cheap indexed range read)."""
    limit = max(1, min(limit, LOG_READ_MAX_BYTES))
    start = max(offset, job.log_start, 0)
    if start >= job.log_size:
        return LogSlice(offset=min(start, job.log_size), next_offset=min(start, job.log_size), data="",
                        log_size=job.log_size, log_start=job.log_start)  # fmt: skip
    pieces: list[bytes] = []
    taken = 0
    chunks = JobLogChunk.objects.filter(job=job, end_offset__gt=start, offset__lt=start + limit).order_by(
        "offset"
    )
    for chunk_offset, chunk_data in chunks.values_list("offset", "data").iterator(chunk_size=64):
        piece = bytes(chunk_data)[max(0, start - chunk_offset) :]
        piece = piece[: limit - taken]
        pieces.append(piece)
        taken += len(piece)
        if taken >= limit:
            break
    raw = b"".join(pieces)
    return LogSlice(
        offset=start,
        next_offset=start + len(raw),
        # A slice may start or end inside a multi-byte character; show it, do not fail.
        data=raw.decode("utf-8", "replace"),
        log_size=job.log_size,
        log_start=job.log_start,
    )
